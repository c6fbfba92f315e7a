// Package receiver is relay's HTTP way in: it verifies a Polar webhook,
// commits it to the inbox together with the job that will process it, and
// only then answers 200.
package receiver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polar"
)

// Options tune a receiver. The zero value of each field takes its default.
type Options struct {
	// MaxBodyBytes bounds a request body; larger ones get 413. Default 1 MiB.
	MaxBodyBytes int64
	// MaxUnverifiedBytes bounds the memory that requests not verified yet
	// hold together: each takes 64 KiB of it when admitted, its body grows
	// within it as bytes arrive, and it gives it all back once verified.
	// A request that would go past it gets 503, whoever sent it. Default
	// DefaultMaxUnverifiedBytes(MaxBodyBytes).
	MaxUnverifiedBytes int64
	// AckTimeout bounds the store; past it the answer is 503. Default 5 s.
	AckTimeout time.Duration
	// AllowedCIDRs, when set, are the only client addresses served; others get 403.
	AllowedCIDRs []netip.Prefix
	// TrustedProxies are the peers whose X-Forwarded-For names the client.
	TrustedProxies []netip.Prefix
	// Logger gets one line per request. Default slog.Default().
	Logger *slog.Logger
	// GroupCommit coalesces concurrent requests into shared transactions of
	// up to MaxBatch events, run by Committers goroutines. Off: one
	// transaction per request.
	GroupCommit bool
	MaxBatch    int // default 128
	Committers  int // default 4
	// Spool, when set, takes a verified delivery whose transaction could not
	// commit (the database is unreachable, failing, or slower than
	// AckTimeout); the answer is then 200 once the spool has it on disk.
	// Without it such a delivery gets 503.
	Spool Spool
	// SpoolTimeout bounds a spool append, which starts once the store has
	// failed, possibly at AckTimeout: the answer comes within AckTimeout +
	// SpoolTimeout. Default 2 s.
	SpoolTimeout time.Duration
	// StoreObserver, when set, is told how long each verified delivery's
	// store took (queue and commit, failures included): relay serve's
	// *pace.Limiter, which slows processing down while stores are slow.
	// The body's upload and verification are left out, so that a slow or
	// hostile caller cannot throttle processing.
	StoreObserver StoreObserver
}

// StoreObserver is told each store's latency; *pace.Limiter is one.
type StoreObserver interface {
	Observe(time.Duration)
}

// Spool is a local durable store of deliveries (*spool.Spool): Append
// returns nil only once the delivery is on disk.
type Spool interface {
	Append(ctx context.Context, event *inbox.Event) error
}

// Receiver is the webhook endpoint.
type Receiver struct {
	pool     *pgxpool.Pool
	jobs     jobs.Inserter
	verifier *polar.Verifier
	metrics  *Metrics
	opts     Options
	group    *groupCommitter
	budget   *unverifiedBudget
}

// New returns the webhook endpoint. It stores into pool and enqueues with jobs.
func New(pool *pgxpool.Pool, inserter jobs.Inserter, verifier *polar.Verifier, metrics *Metrics, opts Options) *Receiver {
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	if opts.MaxUnverifiedBytes <= 0 {
		opts.MaxUnverifiedBytes = DefaultMaxUnverifiedBytes(opts.MaxBodyBytes)
	}
	if opts.AckTimeout <= 0 {
		opts.AckTimeout = 5 * time.Second
	}
	if opts.SpoolTimeout <= 0 {
		opts.SpoolTimeout = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	rc := &Receiver{pool: pool, jobs: inserter, verifier: verifier, metrics: metrics, opts: opts,
		budget: &unverifiedBudget{max: opts.MaxUnverifiedBytes, requests: metrics.unverifiedRequests, bytes: metrics.unverifiedBytes}}
	if opts.GroupCommit {
		rc.group = newGroupCommitter(pool, inserter, cmp.Or(opts.Committers, 4), cmp.Or(opts.MaxBatch, 128), opts.Logger)
	}
	return rc
}

// result is what one request came to, for the answer, the metrics and the log.
type result struct {
	status    int
	outcome   string
	eventType string // a bounded label
	webhookID string
	workspace string // of a workspace endpoint's verified delivery
	reason    string // short, safe to show the caller
	err       error  // internal detail, logged only
}

// WorkspaceVerifier verifies a delivery to a workspace's own endpoint with
// that workspace's secrets, and says which environment's secret did;
// *endpoints.Cache is one.
type WorkspaceVerifier interface {
	Verify(workspaceID string, body []byte, header http.Header) (polar.Delivery, string, error)
}

// verifyFunc verifies a request's body; it returns the delivery and, for a
// workspace's endpoint, the workspace and environment it was verified for.
// A failure's status is 401 unless it says otherwise.
type verifyFunc func(r *http.Request, body []byte) (polar.Delivery, string, string, error)

// ServeHTTP is the platform's endpoint, verified with its own secrets.
func (rc *Receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rc.serve(w, r, func(r *http.Request, body []byte) (polar.Delivery, string, string, error) {
		d, err := rc.verifier.Verify(body, r.Header)
		return d, "", "", err
	})
}

// Workspaces returns the endpoint of every workspace, at a pattern with a
// {workspace_id} wildcard: each delivery is verified with that workspace's
// secrets only, and stored with the workspace and the environment whose
// secret verified it. A workspace id that is not a UUID gets 404.
func (rc *Receiver) Workspaces(v WorkspaceVerifier) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc.serve(w, r, func(r *http.Request, body []byte) (polar.Delivery, string, string, error) {
			ws, err := endpoints.ParseWorkspace(r.PathValue("workspace_id"))
			if err != nil {
				return polar.Delivery{}, "", "", errUnknownEndpoint
			}
			d, env, err := v.Verify(ws, body, r.Header)
			return d, ws, env, err
		})
	})
}

// errUnknownEndpoint answers 404: the path names no workspace.
var errUnknownEndpoint = errors.New("no such endpoint")

func (rc *Receiver) serve(w http.ResponseWriter, r *http.Request, verify verifyFunc) {
	start := time.Now()
	res := rc.handle(w, r, verify)
	elapsed := time.Since(start)

	rc.metrics.received.WithLabelValues(res.eventType, res.outcome).Inc()
	rc.metrics.ackDuration.WithLabelValues(res.outcome).Observe(elapsed.Seconds())

	if res.status != http.StatusOK {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
	}
	w.WriteHeader(res.status)
	if res.reason != "" {
		fmt.Fprintln(w, res.reason)
	}

	level := slog.LevelInfo
	if res.status >= 500 && res.outcome != OutcomeOverloaded { // a refusal is not relay failing
		level = slog.LevelError
	} else if res.status >= 400 || res.outcome == OutcomeSpooled {
		level = slog.LevelWarn
	}
	attrs := []slog.Attr{
		slog.String("webhook_id", text.Cut(res.webhookID, 128)),
		slog.String("event_type", res.eventType),
		slog.String("outcome", res.outcome),
		slog.Int("status", res.status),
		slog.Duration("duration", elapsed),
	}
	if res.workspace != "" {
		attrs = append(attrs, slog.String("workspace_id", res.workspace))
	}
	if res.err != nil {
		attrs = append(attrs, slog.String("error", res.err.Error()))
	}
	rc.opts.Logger.LogAttrs(r.Context(), level, "webhook", attrs...)
}

func (rc *Receiver) handle(w http.ResponseWriter, r *http.Request, verify verifyFunc) result {
	res := result{eventType: labelUnverified, webhookID: r.Header.Get(polar.HeaderID)}
	fail := func(status int, outcome, reason string, err error) result {
		res.status, res.outcome, res.reason, res.err = status, outcome, reason, err
		return res
	}

	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return fail(http.StatusMethodNotAllowed, OutcomeMethodNotAllowed, "method not allowed", nil)
	}
	if len(rc.opts.AllowedCIDRs) > 0 {
		client, ok := clientAddr(r, rc.opts.TrustedProxies)
		if !ok || !containsAddr(rc.opts.AllowedCIDRs, client) {
			return fail(http.StatusForbidden, OutcomeForbidden, "forbidden", fmt.Errorf("client %s not in RELAY_ALLOWED_CIDRS", client))
		}
	}
	if r.ContentLength > rc.opts.MaxBodyBytes {
		return fail(http.StatusRequestEntityTooLarge, OutcomeTooLarge, "body too large", nil)
	}
	// Until it is verified, a request could be anyone's: what it holds is
	// bounded, and past the bound it is refused like everyone else's.
	lease, ok := rc.budget.admit()
	if !ok {
		return rc.overloaded(w, res)
	}
	defer lease.release()
	body, err := readBody(http.MaxBytesReader(w, r.Body, rc.opts.MaxBodyBytes), r.ContentLength, rc.opts.MaxBodyBytes, &lease)
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return fail(http.StatusRequestEntityTooLarge, OutcomeTooLarge, "body too large", nil)
		}
		if errors.Is(err, errOverBudget) {
			return rc.overloaded(w, res)
		}
		return fail(http.StatusBadRequest, OutcomeBadRequest, "could not read body", fmt.Errorf("read body: %w", err))
	}

	delivery, workspace, environment, err := verify(r, body)
	lease.release()
	res.workspace = workspace // logged, also when it does not verify
	switch {
	case errors.Is(err, errUnknownEndpoint):
		return fail(http.StatusNotFound, OutcomeNotFound, err.Error(), nil)
	case errors.Is(err, endpoints.ErrNotReady):
		return fail(http.StatusServiceUnavailable, OutcomeUnavailable, "temporarily unavailable", err)
	case errors.Is(err, endpoints.ErrNoSecret):
		// Answered as a wrong signature is; only the log says why.
		return fail(http.StatusUnauthorized, OutcomeUnauthorized, err.Error(), endpoints.ErrNoSecret)
	case err != nil:
		return fail(http.StatusUnauthorized, OutcomeUnauthorized, err.Error(), nil)
	}
	if len(delivery.ID) > 255 || !utf8.ValidString(delivery.ID) || strings.ContainsRune(delivery.ID, 0) {
		return fail(http.StatusBadRequest, OutcomeBadRequest, "malformed webhook-id", nil)
	}

	// From here on the sender is Polar: a body it signed is stored whatever it
	// says, since a retry of the same bytes cannot fix it.
	event := &inbox.Event{WebhookID: delivery.ID, WebhookTimestamp: delivery.Timestamp, Body: body,
		WorkspaceID: workspace, Environment: environment}
	env, perr := polar.ParseEnvelope(body)
	switch {
	case perr != nil:
		res.eventType, res.outcome = labelOther, OutcomeInvalid
		event.Status = inbox.StatusInvalid
		note := text.Storable("unreadable event: "+perr.Error(), 500)
		event.Error = &note
		res.err = perr
	case polar.Handled(env.Type):
		res.eventType, res.outcome = polar.LabelFor(env.Type), OutcomeAccepted
		event.Status = inbox.StatusPending
	default:
		res.eventType, res.outcome = polar.LabelFor(env.Type), OutcomeIgnored
		event.Status = inbox.StatusIgnored
	}
	if perr == nil {
		event.EventType = text.Storable(env.Type, 200)
		if !env.Timestamp.IsZero() {
			ts := env.Timestamp
			event.EventTimestamp = &ts
		}
	}

	stored, err := rc.store(r.Context(), event)
	if errors.Is(err, errClientGone) {
		res.eventType = polar.LabelFor(event.EventType)
		return fail(statusClientGone, OutcomeClientGone, "", err)
	}
	if err != nil {
		res.eventType = polar.LabelFor(event.EventType)
		return fail(http.StatusServiceUnavailable, OutcomeUnavailable, "temporarily unavailable", err)
	}
	switch {
	case stored.spooled:
		res.outcome, res.err = OutcomeSpooled, stored.err
	case !stored.inserted:
		res.outcome = OutcomeDuplicate
	}
	res.status = http.StatusOK
	return res
}

// overloaded answers a request refused for the unverified requests' memory
// budget: 503, which Polar retries, with Retry-After as a hint (the budget
// frees as requests in flight are verified, or cut off at the server's read
// timeout). 429 would blame this sender, which nothing was checked about.
// The connection is closed rather than drained of a body that may trickle.
func (rc *Receiver) overloaded(w http.ResponseWriter, res result) result {
	w.Header().Set("Retry-After", "5")
	w.Header().Set("Connection", "close")
	res.status, res.outcome, res.reason = http.StatusServiceUnavailable, OutcomeOverloaded, "temporarily unavailable"
	res.err = errOverBudget
	return res
}

// errClientGone means the client hung up before its webhook was stored.
var errClientGone = errors.New("client gone before the webhook was stored")

// statusClientGone is logged for a request whose client hung up (nginx's
// 499); nobody receives it.
const statusClientGone = 499

// stored is what store did with an event.
type stored struct {
	inserted bool  // committed to the database; false for a duplicate
	spooled  bool  // on the spool's disk instead: the database did not commit it
	err      error // when spooled, why the database did not
}

// store commits the inbox row and, for a pending event, its job in one
// transaction, shared with concurrent requests when group commit is on. It
// returns within AckTimeout: a store that takes longer is abandoned (its
// transaction rolls back or, if it commits late, Polar's retry finds a
// duplicate), so the caller is never left hanging. When the transaction
// fails or is abandoned and a spool is configured, the event is appended to
// the spool instead, within SpoolTimeout, unless ctx ended (the client hung
// up: errClientGone); a copy spooled for a transaction that committed late
// after all is a duplicate the drain drops.
func (rc *Receiver) store(ctx context.Context, event *inbox.Event) (stored, error) {
	inserted, err := rc.commit(ctx, event)
	if err == nil {
		return stored{inserted: inserted}, nil
	}
	if ctx.Err() != nil {
		// The request's own context ended, not the ack timeout: the client
		// hung up, and nobody waits for a 200. Polar retries what it did
		// not get an answer for; spooling it would only hide a failure the
		// database never had.
		return stored{}, fmt.Errorf("%w: %w", errClientGone, err)
	}
	if rc.opts.Spool == nil || refusedForItsData(err) {
		return stored{}, err
	}
	// The request's context may have expired with the ack timeout: the
	// append gets a bound of its own.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rc.opts.SpoolTimeout)
	defer cancel()
	if serr := rc.opts.Spool.Append(sctx, event); serr != nil {
		return stored{}, fmt.Errorf("%w; spooling it failed too: %w", err, serr)
	}
	return stored{spooled: true, err: err}, nil
}

// commit is store's database half, bounded by AckTimeout.
func (rc *Receiver) commit(ctx context.Context, event *inbox.Event) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, rc.opts.AckTimeout)
	defer cancel()
	if o := rc.opts.StoreObserver; o != nil {
		start := time.Now()
		defer func() { o.Observe(time.Since(start)) }()
	}
	if rc.group != nil {
		r := rc.group.submit(ctx, event)
		return r.inserted, r.err
	}
	done := make(chan storeResult, 1)
	go func() {
		inserted, err := commitEvents(ctx, rc.pool, rc.jobs, []*inbox.Event{event})
		if err != nil {
			done <- storeResult{err: err}
			return
		}
		done <- storeResult{inserted: inserted[0]}
	}()
	select {
	case r := <-done:
		return r.inserted, r.err
	case <-ctx.Done():
		return false, fmt.Errorf("store webhook: %w", ctx.Err())
	}
}

// CommitEvents stores events as webhook requests do: their inbox rows and
// the jobs of the pending ones in one transaction, dropping each event whose
// webhook id is stored already. It returns nil only once that transaction
// has committed. It is the spool's drain (a spool.CommitFunc), so that a
// spooled delivery is committed exactly as it would have been.
func (rc *Receiver) CommitEvents(ctx context.Context, events []*inbox.Event) error {
	return Commit(ctx, rc.pool, rc.jobs, events)
}

// Close stops the group committers after answering the requests they hold.
// Call it after the HTTP server has shut down.
func (rc *Receiver) Close() {
	if rc.group != nil {
		rc.group.close()
	}
}
