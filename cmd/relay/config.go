package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/relayhq/relay/polarapi"
	"github.com/relayhq/relay/receiver"
	"github.com/relayhq/relay/reconcile"
	"github.com/relayhq/relay/spool"
)

// config is relay's environment, parsed and checked.
type config struct {
	DatabaseURL       string
	Secrets           []string
	HTTPAddr          string
	AdminAddr         string
	WebhookPath       string
	MaxBodyBytes      int64
	AckTimeout        time.Duration
	Workers           int
	MaxAttempts       int
	DBMaxConns        int32
	ShutdownTimeout   time.Duration
	RetryBase         time.Duration
	Role              string
	GroupCommit       bool
	MaxBatch          int
	Committers        int
	JobTimeout        time.Duration
	RescueAfter       time.Duration
	FetchCooldown     time.Duration
	FetchPollInterval time.Duration
	PollOnly          bool
	ReadHeaderTimeout time.Duration
	ReadTimeout       time.Duration
	AllowedCIDRs      []netip.Prefix
	TrustedProxies    []netip.Prefix
	LogLevel          slog.Level
	LogFormat         string
	// Admin routes beyond /metrics and the probes exist only with one of these.
	AdminToken     string
	AdminUser      string
	AdminPassword  string
	InboxRetention time.Duration
	// SpoolDir, when set, is where a receiver keeps webhooks the database
	// cannot take; SpoolMaxBytes bounds it.
	SpoolDir      string
	SpoolMaxBytes int64

	// MaxUnverifiedBytes bounds what webhook requests not verified yet hold
	// together (receiver.Options.MaxUnverifiedBytes).
	MaxUnverifiedBytes int64

	// Polar's API, for connections: each environment's base URL (a token
	// is only ever sent to its own), the request budget per organization,
	// and the base URL Polar reaches relay at (endpoints relay registers).
	PolarAPI  polarapi.Config
	PublicURL string
	// PaceTarget is the receiver's store latency past which the workers'
	// batch transactions at once shrink (pace.Options.Target); 0: a fixed
	// limit.
	PaceTarget time.Duration

	// Reconciliation (package reconcile): how often every connection is
	// reconciled, how far back, and whether relay re-enables its endpoint
	// at Polar once it can take the workspace's deliveries again.
	ReconcileInterval time.Duration
	ReconcileLookback time.Duration
	PolarReenable     bool
}

// Roles of a replica.
const (
	roleAll      = "all"      // receiver and workers
	roleReceiver = "receiver" // stores webhooks and inserts jobs, works none
	roleWorker   = "worker"   // works jobs, serves no webhook listener
)

// Defaults that relay send shares with relay serve.
const (
	defaultHTTPAddr    = ":8080"
	defaultWebhookPath = "/webhooks/polar"
)

// env reads one variable with a default.
type env func(string) string

func (e env) str(key, def string) string {
	if v := strings.TrimSpace(e(key)); v != "" {
		return v
	}
	return def
}

func parseConfig(getenv func(string) string, needSecret bool) (*config, error) {
	e := env(getenv)
	c := &config{
		DatabaseURL: e.str("DATABASE_URL", ""),
		HTTPAddr:    e.str("RELAY_HTTP_ADDR", defaultHTTPAddr),
		AdminAddr:   e.str("RELAY_ADMIN_ADDR", "127.0.0.1:9091"),
		WebhookPath: e.str("RELAY_WEBHOOK_PATH", defaultWebhookPath),
		LogFormat:   e.str("LOG_FORMAT", "json"),
	}
	var errs []error
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("DATABASE_URL is not set"))
	}
	if !strings.HasPrefix(c.WebhookPath, "/") {
		errs = append(errs, fmt.Errorf("RELAY_WEBHOOK_PATH %q must start with /", c.WebhookPath))
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("LOG_FORMAT %q: want json or text", c.LogFormat))
	}
	if err := c.LogLevel.UnmarshalText([]byte(e.str("LOG_LEVEL", "info"))); err != nil {
		errs = append(errs, fmt.Errorf("LOG_LEVEL: %w", err))
	}

	c.Role = e.str("RELAY_ROLE", roleAll)
	if c.Role != roleAll && c.Role != roleReceiver && c.Role != roleWorker {
		errs = append(errs, fmt.Errorf("RELAY_ROLE %q: want all, receiver or worker", c.Role))
	}
	secrets, err := readSecrets(e)
	if err != nil {
		errs = append(errs, err)
	} else if len(secrets) == 0 && needSecret && c.Role != roleWorker { // a worker verifies nothing
		errs = append(errs, errors.New("no webhook secret: set POLAR_WEBHOOK_SECRET or POLAR_WEBHOOK_SECRET_FILE"))
	}
	c.Secrets = secrets

	c.MaxBodyBytes = int64(intVar(e, "RELAY_MAX_BODY_BYTES", 1<<20, &errs))
	c.MaxUnverifiedBytes = int64(intVar(e, "RELAY_MAX_UNVERIFIED_BYTES", int(receiver.DefaultMaxUnverifiedBytes(c.MaxBodyBytes)), &errs))
	// A body of the largest size is held twice for a moment while its
	// buffer grows.
	if c.MaxBodyBytes > 0 && c.MaxUnverifiedBytes < 2*c.MaxBodyBytes {
		errs = append(errs, fmt.Errorf("RELAY_MAX_UNVERIFIED_BYTES (%d) must be at least twice RELAY_MAX_BODY_BYTES (%d)", c.MaxUnverifiedBytes, c.MaxBodyBytes))
	}
	// Jobs in flight, not transactions: the jobs fetched together wait in
	// groups, and at most 12 group transactions run at once (jobs.Options).
	// Each waiting job is a goroutine; the more River may fetch at once, the
	// bigger the groups and the cheaper each event (make bench: booked/s in
	// the closed loop 2,630 with 200, 2,883 with 500, on 2 cores).
	c.Workers = intVar(e, "RELAY_WORKERS", 500, &errs)
	c.MaxAttempts = intVar(e, "RELAY_MAX_ATTEMPTS", 12, &errs)
	c.DBMaxConns = int32(intVar(e, "RELAY_DB_MAX_CONNS", 0, &errs))
	c.AckTimeout = durationVar(e, "RELAY_ACK_TIMEOUT", 5*time.Second, &errs)
	c.ShutdownTimeout = durationVar(e, "RELAY_SHUTDOWN_TIMEOUT", 30*time.Second, &errs)
	c.RetryBase = durationVar(e, "RELAY_RETRY_BASE", time.Second, &errs)
	c.GroupCommit = boolVar(e, "RELAY_GROUP_COMMIT", true, &errs)
	c.PollOnly = boolVar(e, "RELAY_POLL_ONLY", false, &errs)
	c.MaxBatch = intVar(e, "RELAY_GROUP_COMMIT_MAX", 128, &errs)
	c.Committers = intVar(e, "RELAY_GROUP_COMMITTERS", 4, &errs)
	// A job left running by a crashed process is handed out again by River's
	// rescuer, which runs every 30 s on the leader (fixed in River v0.51.1),
	// once it has been running RELAY_RESCUE_AFTER and its own timeout: the
	// job is worked again within about RELAY_RESCUE_AFTER + 30 s + River's
	// 5 s scheduling interval of the crash. A ledger job takes milliseconds;
	// 5 s bounds one with room for lock waits, and handing out a job that is
	// in fact still running is safe, its effects being exactly-once.
	c.JobTimeout = durationVar(e, "RELAY_JOB_TIMEOUT", 5*time.Second, &errs)
	c.RescueAfter = durationVar(e, "RELAY_RESCUE_AFTER", 6*time.Second, &errs)
	c.FetchCooldown = durationVar(e, "RELAY_FETCH_COOLDOWN", 20*time.Millisecond, &errs)
	c.FetchPollInterval = durationVar(e, "RELAY_FETCH_POLL_INTERVAL", time.Second, &errs)
	// Off by default: on a quiet machine pacing made acks and lag worse at
	// 2,000/s (docs/performance.md); the pace package's DefaultTarget is the value to try.
	c.PaceTarget = durationVar(e, "RELAY_PACE_TARGET", 0, &errs)
	if c.PaceTarget < 0 {
		errs = append(errs, fmt.Errorf("RELAY_PACE_TARGET (%s) must be 0 (off) or positive", c.PaceTarget))
	}
	c.ReadHeaderTimeout = durationVar(e, "RELAY_READ_HEADER_TIMEOUT", 5*time.Second, &errs)
	c.ReadTimeout = durationVar(e, "RELAY_READ_TIMEOUT", 15*time.Second, &errs)
	if c.MaxBatch <= 0 || c.Committers <= 0 || c.JobTimeout <= 0 || c.FetchCooldown <= 0 ||
		c.FetchPollInterval <= 0 || c.ReadHeaderTimeout <= 0 || c.ReadTimeout <= 0 {
		errs = append(errs, errors.New("group commit, job, fetch and read settings must be positive"))
	}
	if c.RescueAfter < c.JobTimeout {
		errs = append(errs, errors.New("RELAY_RESCUE_AFTER must not be shorter than RELAY_JOB_TIMEOUT"))
	}
	c.InboxRetention = durationVar(e, "RELAY_INBOX_RETENTION", 720*time.Hour, &errs)
	c.AdminToken = e.str("RELAY_ADMIN_TOKEN", "")
	c.AdminUser = e.str("RELAY_ADMIN_USER", "")
	c.AdminPassword = e.str("RELAY_ADMIN_PASSWORD", "")
	if (c.AdminUser == "") != (c.AdminPassword == "") {
		errs = append(errs, errors.New("set both RELAY_ADMIN_USER and RELAY_ADMIN_PASSWORD, or neither"))
	}
	if c.AdminToken != "" && len(c.AdminToken) < 16 {
		errs = append(errs, errors.New("RELAY_ADMIN_TOKEN must be at least 16 characters"))
	}
	if c.InboxRetention <= 0 {
		errs = append(errs, errors.New("RELAY_INBOX_RETENTION must be positive"))
	}
	c.SpoolDir = e.str("RELAY_SPOOL_DIR", "")
	c.SpoolMaxBytes = int64(intVar(e, "RELAY_SPOOL_MAX_BYTES", int(spool.DefaultMaxBytes), &errs))
	if c.SpoolMaxBytes <= 0 {
		errs = append(errs, errors.New("RELAY_SPOOL_MAX_BYTES must be positive"))
	}
	c.PolarAPI = polarapi.Config{
		ProductionURL: urlVar(e, "RELAY_POLAR_API_URL", polarapi.DefaultProductionURL, &errs),
		SandboxURL:    urlVar(e, "RELAY_POLAR_SANDBOX_API_URL", polarapi.DefaultSandboxURL, &errs),
		RPM:           intVar(e, "RELAY_POLAR_API_RPM", polarapi.DefaultRPM, &errs),
	}
	if c.PolarAPI.RPM <= 0 {
		errs = append(errs, fmt.Errorf("RELAY_POLAR_API_RPM (%d) must be positive", c.PolarAPI.RPM))
	}
	c.PublicURL = urlVar(e, "RELAY_PUBLIC_URL", "", &errs)
	c.ReconcileInterval = durationVar(e, "RELAY_RECONCILE_INTERVAL", reconcile.DefaultInterval, &errs)
	c.ReconcileLookback = durationVar(e, "RELAY_RECONCILE_LOOKBACK", reconcile.DefaultLookback, &errs)
	c.PolarReenable = boolVar(e, "RELAY_POLAR_REENABLE", true, &errs)
	if c.ReconcileInterval < time.Second || c.ReconcileLookback < time.Minute {
		errs = append(errs, errors.New("RELAY_RECONCILE_INTERVAL must be at least 1s and RELAY_RECONCILE_LOOKBACK at least 1m"))
	}
	c.AllowedCIDRs = prefixesVar(e, "RELAY_ALLOWED_CIDRS", &errs)
	c.TrustedProxies = prefixesVar(e, "RELAY_TRUSTED_PROXIES", &errs)
	if c.MaxBodyBytes <= 0 || c.Workers <= 0 || c.MaxAttempts <= 0 || c.AckTimeout <= 0 || c.RetryBase <= 0 {
		errs = append(errs, errors.New("RELAY_MAX_BODY_BYTES, RELAY_WORKERS, RELAY_MAX_ATTEMPTS, RELAY_ACK_TIMEOUT and RELAY_RETRY_BASE must be positive"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("configuration: %w", err)
	}
	return c, nil
}

// readSecrets returns the configured webhook secrets, several when one is
// being rotated.
func readSecrets(e env) ([]string, error) {
	raw := e("POLAR_WEBHOOK_SECRET")
	if path := e.str("POLAR_WEBHOOK_SECRET_FILE", ""); path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("POLAR_WEBHOOK_SECRET_FILE: %w", err)
		}
		raw = strings.Join([]string{raw, strings.ReplaceAll(string(b), "\n", ",")}, ",")
	}
	var out []string
	for s := range strings.SplitSeq(raw, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out, nil
}

// intVar and durationVar return the default for a value they cannot parse,
// so that the range checks after them do not report it a second time.
func intVar(e env, key string, def int, errs *[]error) int {
	v := e.str(key, "")
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %q is not a whole number", key, v))
		return def
	}
	return n
}

func boolVar(e env, key string, def bool, errs *[]error) bool {
	switch v := e.str(key, ""); v {
	case "":
		return def
	case "on", "true", "1":
		return true
	case "off", "false", "0":
		return false
	default:
		*errs = append(*errs, fmt.Errorf("%s %q: want on or off", key, v))
		return def
	}
}

func durationVar(e env, key string, def time.Duration, errs *[]error) time.Duration {
	v := e.str(key, "")
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		*errs = append(*errs, fmt.Errorf("%s: %q is not a duration such as 5s", key, v))
		return def
	}
	return d
}

// urlVar reads an absolute http(s) URL with no query or fragment, without
// its trailing slash.
func urlVar(e env, key, def string, errs *[]error) string {
	v := e.str(key, def)
	if v == "" {
		return ""
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		*errs = append(*errs, fmt.Errorf("%s %q: want an absolute http(s) URL such as https://relay.example.com", key, v))
		return def
	}
	return strings.TrimSuffix(v, "/")
}

func prefixesVar(e env, key string, errs *[]error) []netip.Prefix {
	var out []netip.Prefix
	for s := range strings.SplitSeq(e(key), ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			addr, aerr := netip.ParseAddr(s)
			if aerr != nil {
				*errs = append(*errs, fmt.Errorf("%s: %q is neither an address nor a CIDR", key, s))
				continue
			}
			p = netip.PrefixFrom(addr, addr.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out
}

func newLogger(c *config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}
