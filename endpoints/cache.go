package endpoints

import (
	"cmp"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/polar"
)

// Reasons Verify refuses a delivery. Their texts are short and safe to show
// the caller.
var (
	// ErrNoSecret is matched by errors.Is when the workspace has no secret.
	// The error's text is that of a secret that does not verify, for the
	// caller must not learn which workspaces are connected.
	ErrNoSecret = errors.New("no webhook secret configured for this workspace")
	// ErrUnverified is matched by errors.Is on every verification failure;
	// the error's text is polar's reason (e.g. "no matching signature"),
	// which errors.Is also matches.
	ErrUnverified = errors.New("webhook does not verify")
	// ErrNotReady means the cache has not loaded yet: answer 503, Polar
	// retries.
	ErrNotReady = errors.New("endpoint secrets are not loaded yet")
)

// unverified carries polar's reason under ErrUnverified.
type unverified struct{ reason error }

func (e unverified) Error() string        { return e.reason.Error() }
func (e unverified) Unwrap() error        { return e.reason }
func (e unverified) Is(target error) bool { return target == ErrUnverified }

// noSecret is unverified for a workspace without secrets: the same text,
// and ErrNoSecret for relay's own use.
type noSecret struct{ unverified }

func (e noSecret) Is(target error) bool { return target == ErrUnverified || target == ErrNoSecret }

// channel is what the trigger of 00005_endpoint_secrets.sql notifies.
const channel = "relay_endpoint_secrets"

// DefaultPollInterval is how often a Cache polls the generation. A change
// reaches every replica within it (LISTEN makes it sooner), well inside the
// promised 5 seconds.
const DefaultPollInterval = time.Second

// CacheOptions configure NewCache.
type CacheOptions struct {
	// PollOnly leaves LISTEN out (PgBouncer in transaction mode): changes
	// are seen by polling alone.
	PollOnly bool
	// PollInterval defaults to DefaultPollInterval.
	PollInterval time.Duration
	Logger       *slog.Logger
	// Registerer takes the cache's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Cache holds every workspace's secrets, decrypted, in memory: Verify makes
// no database query. A background loop reloads them whenever the
// generation in endpoint_secrets_generation changes, woken by NOTIFY and
// by a poll, so a change made anywhere is honoured within PollInterval.
type Cache struct {
	pool    *pgxpool.Pool
	keys    *Keyring
	opts    CacheOptions
	logger  *slog.Logger
	metrics cacheMetrics

	state   atomic.Pointer[snapshot]
	failing bool // the last refresh failed; only the loop touches it

	// unknown verifies the deliveries of a workspace without secrets, with
	// a random secret nobody has: such a request costs the HMAC and gets
	// the answer a wrong signature gets, so neither tells an unconnected
	// workspace from a connected one.
	unknown *polar.Verifier
	// verifications counts verifier calls (tests hold both kinds of
	// workspace to the same work).
	verifications atomic.Int64

	mu      sync.Mutex
	started bool
	stop    context.CancelFunc
	done    chan struct{}
}

type snapshot struct {
	generation int64
	workspaces map[string][]envVerifier
	// plain is every secret verified with, by row id: a row the keys cannot
	// open any more keeps the secret it held when they could (reload).
	plain map[string]string
}

// envVerifier checks a workspace's deliveries with one environment's
// secrets.
type envVerifier struct {
	environment string
	verifier    *polar.Verifier
}

type cacheMetrics struct {
	secrets    *prometheus.GaugeVec
	unreadable prometheus.Gauge
	kept       prometheus.Gauge
	reloads    *prometheus.CounterVec
	checked    prometheus.Gauge
}

// NewCache returns a Cache that reads secrets through pool and decrypts
// them with keys. Start it before calling Verify.
func NewCache(pool *pgxpool.Pool, keys *Keyring, opts CacheOptions) (*Cache, error) {
	opts.PollInterval = cmp.Or(opts.PollInterval, DefaultPollInterval)
	if opts.PollInterval < 0 {
		return nil, errors.New("endpoint cache: negative poll interval")
	}
	c := &Cache{pool: pool, keys: keys, opts: opts, logger: cmp.Or(opts.Logger, slog.Default())}
	unknown, err := polar.NewVerifier([]string{"polar_whs_" + rand.Text()})
	if err != nil {
		return nil, fmt.Errorf("endpoint cache: %w", err)
	}
	c.unknown = unknown
	c.metrics = cacheMetrics{
		secrets: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "relay_endpoint_secrets",
			Help: "Workspace endpoint secrets loaded for verification, by environment.",
		}, []string{"environment"}),
		unreadable: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_endpoint_secrets_unreadable",
			Help: "Stored workspace endpoint secrets the configured keys cannot decrypt (their workspace's deliveries may fail).",
		}),
		kept: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_endpoint_secrets_unreadable_kept",
			Help: "Of the unreadable secrets, those still verified with as this replica decrypted them before (typically re-encrypted by a rekey to a key it lacks).",
		}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_endpoint_cache_reloads_total",
			Help: "Refreshes of the endpoint secret cache: loads, and checks that failed, by result (ok, error).",
		}, []string{"result"}),
		checked: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_endpoint_cache_checked_timestamp_seconds",
			Help: "When the endpoint secret cache last confirmed it is current (Unix seconds).",
		}),
	}
	for _, env := range []string{Production, Sandbox} {
		c.metrics.secrets.WithLabelValues(env)
	}
	for _, r := range []string{"ok", "error"} {
		c.metrics.reloads.WithLabelValues(r)
	}
	if opts.Registerer != nil {
		for _, col := range []prometheus.Collector{c.metrics.secrets, c.metrics.unreadable, c.metrics.kept, c.metrics.reloads, c.metrics.checked} {
			if err := opts.Registerer.Register(col); err != nil {
				return nil, fmt.Errorf("endpoint cache metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Start loads every secret, then keeps them fresh in the background until
// ctx ends or Close is called. When it returns nil the cache is ready.
func (c *Cache) Start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.started {
		return errors.New("endpoint cache: already started")
	}
	if err := c.reload(ctx); err != nil {
		c.metrics.reloads.WithLabelValues("error").Inc()
		return fmt.Errorf("load endpoint secrets: %w", err)
	}
	c.metrics.reloads.WithLabelValues("ok").Inc()
	c.started = true
	ctx, c.stop = context.WithCancel(ctx)
	c.done = make(chan struct{})
	go c.run(ctx)
	return nil
}

// Close stops the background refresh and waits for it. Verify keeps
// answering from the last state.
func (c *Cache) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stop != nil {
		c.stop()
		<-c.done
		c.stop = nil
	}
}

// Verify checks a delivery to workspaceID's endpoint against that
// workspace's secrets. It passes if any of them verifies it, and returns
// the environment of the secret that did. Failures are ErrNotReady, or
// match ErrUnverified (with polar's reason as text); for a workspace without
// secrets, verified against a secret nobody has, they also match
// ErrNoSecret, with the same text.
func (c *Cache) Verify(workspaceID string, body []byte, header http.Header) (polar.Delivery, string, error) {
	snap := c.state.Load()
	if snap == nil {
		return polar.Delivery{}, "", ErrNotReady
	}
	var envs []envVerifier
	if text.IsUUID(workspaceID) {
		envs = snap.workspaces[strings.ToLower(workspaceID)]
	}
	if len(envs) == 0 {
		c.verifications.Add(1)
		_, err := c.unknown.Verify(body, header)
		if err == nil { // nobody has the secret: cannot happen
			err = polar.ErrSignatureMismatch
		}
		return polar.Delivery{}, "", noSecret{unverified{err}}
	}
	var last error
	for _, ev := range envs {
		c.verifications.Add(1)
		d, err := ev.verifier.Verify(body, header)
		if err == nil {
			return d, ev.environment, nil
		}
		last = err
		if !errors.Is(err, polar.ErrSignatureMismatch) {
			break // headers and timestamp are the same whichever the key
		}
	}
	return polar.Delivery{}, "", unverified{last}
}

func (c *Cache) run(ctx context.Context) {
	defer close(c.done)
	wake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	defer wg.Wait()
	if !c.opts.PollOnly {
		wg.Go(func() { c.listen(ctx, wake) })
	}
	ticker := time.NewTicker(c.opts.PollInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		case <-wake:
		}
		c.refresh(ctx)
	}
}

// listen wakes the loop on every notification. The poll stays on as well:
// it catches what a broken connection missed before the error shows.
func (c *Cache) listen(ctx context.Context, wake chan<- struct{}) {
	for {
		err := c.listenOnce(ctx, wake)
		if ctx.Err() != nil {
			return
		}
		c.logger.Warn("endpoint secrets: LISTEN failed; polling until it reconnects", "error", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * c.opts.PollInterval):
		}
	}
}

func (c *Cache) listenOnce(ctx context.Context, wake chan<- struct{}) error {
	conn, err := pgx.ConnectConfig(ctx, c.pool.Config().ConnConfig)
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		conn.Close(ctx) //nolint:errcheck // closing after an error or at shutdown
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return err
	}
	for {
		signal(wake) // the first time: whatever changed while not listening
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
	}
}

func signal(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// refresh reloads when the generation moved. A failure keeps the last
// state, and is logged when it starts and when it ends, not every poll.
func (c *Cache) refresh(ctx context.Context) {
	err := c.refreshOnce(ctx)
	if ctx.Err() != nil {
		return
	}
	switch {
	case err != nil && !c.failing:
		c.logger.Error("endpoint secrets: refresh failed; verifying with the last loaded secrets", "error", err)
	case err == nil && c.failing:
		c.logger.Info("endpoint secrets: refresh works again")
	}
	c.failing = err != nil
	if err != nil {
		c.metrics.reloads.WithLabelValues("error").Inc()
	}
}

func (c *Cache) refreshOnce(ctx context.Context) error {
	var gen int64
	if err := c.pool.QueryRow(ctx, `SELECT generation FROM endpoint_secrets_generation`).Scan(&gen); err != nil {
		return fmt.Errorf("read generation: %w", err)
	}
	if gen == c.state.Load().generation {
		c.metrics.checked.SetToCurrentTime()
		return nil
	}
	if err := c.reload(ctx); err != nil {
		return err
	}
	c.metrics.reloads.WithLabelValues("ok").Inc()
	return nil
}

// reload reads the generation and every secret from one snapshot of the
// database, so the state never claims a generation its rows are not from.
func (c *Cache) reload(ctx context.Context) error {
	var (
		gen  int64
		rows []stored
	)
	err := pgx.BeginTxFunc(ctx, c.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT generation FROM endpoint_secrets_generation`).Scan(&gen); err != nil {
			return fmt.Errorf("read generation: %w", err)
		}
		r, err := tx.Query(ctx, selectStored+` ORDER BY workspace_id, environment, created_at, id`)
		if err != nil {
			return err
		}
		rows, err = pgx.CollectRows(r, scanStored)
		return err
	})
	if err != nil {
		return fmt.Errorf("read endpoint secrets: %w", err)
	}

	// A row's secret never changes (a new secret is a new row; rekey only
	// re-encrypts): what this replica decrypted before is still the row's
	// secret when a rekey to a key it lacks makes the row unreadable here.
	var before map[string]string
	if prev := c.state.Load(); prev != nil {
		before = prev.plain
	}
	plain := map[[2]string][]string{}
	byRow := make(map[string]string, len(rows))
	counts := map[string]int{}
	unreadable, kept := 0, 0
	for _, st := range rows {
		p, err := c.keys.open(st.ID, st.Workspace, st.Environment, st.keyID, st.ciphertext)
		secret := string(p)
		if err != nil {
			// One bad row must not stop every other workspace's updates.
			unreadable++
			attrs := []any{"secret_id", st.ID, "workspace", st.Workspace, "environment", st.Environment,
				"error", fmt.Sprintf("%s cannot decrypt it: wrong key?", c.keys.Source())}
			var ok bool
			if secret, ok = before[st.ID]; !ok {
				c.logger.Error("endpoint secrets: cannot decrypt a secret; its workspace's deliveries will not verify with it", attrs...)
				continue
			}
			kept++
			c.logger.Error("endpoint secrets: cannot decrypt a secret (rekeyed to a key this replica lacks?); "+
				"verifying with it as decrypted before, until this replica restarts", attrs...)
		}
		k := [2]string{st.Workspace, st.Environment}
		plain[k] = append(plain[k], secret)
		byRow[st.ID] = secret
		counts[st.Environment]++
	}
	snap := &snapshot{generation: gen, workspaces: make(map[string][]envVerifier, len(plain)), plain: byRow}
	for _, env := range []string{Production, Sandbox} { // production is tried first
		for k, secrets := range plain {
			if k[1] != env {
				continue
			}
			v, err := polar.NewVerifier(secrets)
			if err != nil {
				return fmt.Errorf("verifier for workspace %s (%s): %w", k[0], env, err)
			}
			snap.workspaces[k[0]] = append(snap.workspaces[k[0]], envVerifier{environment: env, verifier: v})
		}
	}
	c.state.Store(snap)
	for _, env := range []string{Production, Sandbox} {
		c.metrics.secrets.WithLabelValues(env).Set(float64(counts[env]))
	}
	c.metrics.unreadable.Set(float64(unreadable))
	c.metrics.kept.Set(float64(kept))
	c.metrics.checked.SetToCurrentTime()
	c.logger.Debug("endpoint secrets loaded", "generation", gen, "secrets", len(rows)-unreadable+kept, "unreadable", unreadable, "kept", kept)
	return nil
}
