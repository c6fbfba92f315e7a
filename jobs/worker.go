package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/pace"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/products"
)

// Results of working an event, as metric labels.
const (
	ResultOK        = "ok"        // applied to the ledger
	ResultNoop      = "noop"      // nothing to do: not a storefront sale, or not a status relay acts on, or a stale or unknown product
	ResultRetry     = "retry"     // the session is not there yet; River retries with backoff
	ResultDiscarded = "discarded" // out of attempts: dead, for an admin to look at
	ResultRefused   = "refused"   // can never apply (another workspace, malformed data): cancelled
	ResultError     = "error"     // anything else; River retries
)

// Options tune an EventWorker.
type Options struct {
	Logger *slog.Logger
	// RetryBase is the first retry's delay; each further one doubles, up to
	// ten minutes. Default 1 s.
	RetryBase time.Duration
	// Timeout bounds one attempt. Default 30 s.
	Timeout time.Duration
	// BatchTransactions bounds the event transactions that run at once in
	// this process: groups (group.go: batch jobs and first attempts of
	// single-event jobs, worked together) and retries, worked alone. More
	// wait for a turn (not counted against Timeout; after a second they go
	// back to the queue). Each locks up to 256 events' sessions and,
	// through the bookings' foreign keys, their wallets and categories:
	// dozens at once only make PostgreSQL work harder per event (make bench
	// on 2 cores: 20-30% more CPU per event with 50 than with 12). Default
	// 12.
	BatchTransactions int
	// Pace, when set, is the limit on event transactions at once instead of
	// BatchTransactions: one that shrinks while the receiver's stores are
	// slow (relay serve's, RELAY_PACE_TARGET), so that processing yields
	// the database to acknowledging. Every job worked tells it how long
	// the job waited (pace.Limiter.ObserveLag), so that it grows again
	// while processing falls behind.
	Pace *pace.Limiter
}

// EventWorker processes one stored webhook: it applies the event to the
// ledger, marks the inbox row processed and completes its own job, all in
// one transaction, so a crash can never leave a booking without a completed
// job or the other way round.
type EventWorker struct {
	river.WorkerDefaults[EventArgs]
	pool    *pgxpool.Pool
	metrics *Metrics
	opts    Options
	groups  *BatchWorker // first attempts join its groups; nil: each works alone
}

// NewEventWorker returns the worker for EventArgs.
func NewEventWorker(pool *pgxpool.Pool, metrics *Metrics, opts Options) *EventWorker {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = time.Second
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.BatchTransactions <= 0 {
		opts.BatchTransactions = 12
	}
	return &EventWorker{pool: pool, metrics: metrics, opts: opts}
}

// NextRetry backs off exponentially: the storefront's write of a session may
// lag behind Polar's event for a while.
func (w *EventWorker) NextRetry(job *river.Job[EventArgs]) time.Time {
	delay := w.opts.RetryBase << min(max(job.Attempt-1, 0), 20)
	return time.Now().Add(min(delay, 10*time.Minute))
}

// Timeout bounds one attempt: Options.Timeout, after the wait for a turn
// when the job joins a group.
func (w *EventWorker) Timeout(*river.Job[EventArgs]) time.Duration {
	if w.groups != nil {
		return maxTurnWait + w.opts.Timeout
	}
	return w.opts.Timeout
}

// applied is what one event did, reported after its transaction commits.
type applied struct {
	result    string
	note      string // short, no PII: stored on the inbox row and logged
	sessionID string
	bookings  []string // ledger results to count
	hookTime  time.Time
	// ignored marks the inbox row ignored rather than processed: there was
	// nothing for the event to apply to (an unknown product).
	ignored bool
	product string // a product event's outcome (products.Applied, ...), counted
}

// inboxStatus is the status the event's inbox row gets.
func (a applied) inboxStatus() string {
	if a.ignored {
		return inbox.StatusIgnored
	}
	return inbox.StatusProcessed
}

// process applies one stored event in tx and marks its inbox row processed
// by job jobID.
func (w *EventWorker) process(ctx context.Context, tx pgx.Tx, key inbox.Key, jobID int64) (applied, error) {
	event, err := inbox.GetStored(ctx, tx, key)
	if err != nil {
		return applied{}, err
	}
	st, err := prepare(event)
	if err != nil {
		return applied{}, err
	}
	res, err := st.apply(ctx, tx)
	if err != nil {
		return applied{}, err
	}
	res.hookTime = event.WebhookTimestamp
	if err := inbox.MarkDone(ctx, tx, jobID, []int64{event.ID}, []string{res.inboxStatus()}, []string{res.note}); err != nil {
		return applied{}, err
	}
	return res, nil
}

// Work applies the event and completes the job in one transaction: on a
// first attempt, the transaction of the group it joins (group.go).
func (w *EventWorker) Work(ctx context.Context, job *river.Job[EventArgs]) error {
	if w.groups == nil {
		return w.work(ctx, job)
	}
	// Under the same turns as the groups, so that however many jobs River
	// hands out, the workers' transactions at once stay bounded and the
	// receiver finds connections.
	alone := func(ctx context.Context, haveTurn bool) error {
		if haveTurn {
			return w.work(ctx, job)
		}
		return w.groups.withTurn(ctx, func() error { return w.work(ctx, job) })
	}
	// A first attempt is worked with the jobs that arrive with it; a retry
	// (its session was not there, it failed) alone, so that it cannot make
	// groups fail again and again.
	if job.Attempt == 1 {
		asBatch := &river.Job[EventBatchArgs]{JobRow: job.JobRow, Args: EventBatchArgs{Events: []EventArgs{job.Args}}}
		return w.groups.inGroup(ctx, asBatch, alone)
	}
	return alone(ctx, false)
}

// work applies one event in a transaction of its own.
func (w *EventWorker) work(ctx context.Context, job *river.Job[EventArgs]) error {
	start := time.Now()
	var res applied
	err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) (err error) {
		if res, err = w.process(ctx, tx, job.Args.Key(), job.ID); err != nil {
			return err
		}
		return completeTx(ctx, tx, job)
	})

	errResult := ResultError
	switch {
	case err == nil:
	case errors.Is(err, ledger.ErrSessionNotFound):
		errResult = ResultRetry
		if job.Attempt >= job.MaxAttempts {
			errResult = ResultDiscarded
		}
		err = fmt.Errorf("no checkout session yet for this storefront order (attempt %d of %d): %w", job.Attempt, job.MaxAttempts, err)
	case permanent(err):
		errResult = ResultRefused
		w.refuse(ctx, job, err)
		err = river.JobCancel(err)
	}
	w.report(ctx, job.JobRow, job.Args, res, time.Since(start), errResult, err)
	// A retry waited for its backoff, not for the workers: only a first
	// attempt tells the pace limit whether processing keeps up.
	if err == nil && job.Attempt == 1 && w.opts.Pace != nil {
		w.opts.Pace.ObserveLag(time.Since(job.CreatedAt))
	}
	if err != nil {
		return fmt.Errorf("process webhook %s: %w", job.Args.WebhookID, err)
	}
	return nil
}

// permanent reports whether an event can never apply, however often retried.
func permanent(err error) bool {
	return errors.Is(err, ledger.ErrWorkspaceMismatch) || errors.Is(err, ledger.ErrInvalidInput) ||
		errors.Is(err, ledger.ErrForeignWorkspace) || errors.Is(err, ledger.ErrForeignEnvironment) ||
		errors.Is(err, products.ErrForeignWorkspace) || errors.Is(err, products.ErrForeignEnvironment) ||
		errors.Is(err, errMalformed) || errors.Is(err, inbox.ErrNotFound)
}

// refuse records a refusal on the event's inbox row, where an admin sees it,
// and counts an event that reached across its endpoint's workspace or
// environment. The job's transaction has rolled back: this is a statement
// of its own, and the job is cancelled whether or not it succeeds.
func (w *EventWorker) refuse(ctx context.Context, job *river.Job[EventArgs], err error) {
	switch {
	case errors.Is(err, ledger.ErrForeignWorkspace), errors.Is(err, products.ErrForeignWorkspace):
		w.metrics.foreign.WithLabelValues(boundaryWorkspace).Inc()
	case errors.Is(err, ledger.ErrForeignEnvironment), errors.Is(err, products.ErrForeignEnvironment):
		w.metrics.foreign.WithLabelValues(boundaryEnvironment).Inc()
	}
	if err := inbox.MarkRefused(ctx, w.pool, job.Args.Key(), job.ID, refusalNote(err)); err != nil {
		w.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "could not record a refusal on the inbox row",
			slog.Int64("job_id", job.ID), slog.String("webhook_id", job.Args.WebhookID), slog.String("error", err.Error()))
	}
}

// refusalNote is the inbox note of a refusal: storable text of at most 500
// bytes, cut between characters.
func refusalNote(err error) string {
	return text.Storable("refused: "+err.Error(), 500)
}

// completeTx completes job in tx, with the effects of its work.
func completeTx[T river.JobArgs](ctx context.Context, tx pgx.Tx, job *river.Job[T]) error {
	if _, err := river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job); err != nil {
		return fmt.Errorf("complete job %d: %w", job.ID, err)
	}
	return nil
}

// completeAllTx completes jobs in tx as completeTx does each, in one
// statement: River's JobCompleteTx takes one job, but the pilot's
// JobSetStateIfRunningMany, which it calls with that one, takes many. The
// jobs end as JobCompleteTx leaves one (completed, finalized_at set) in the
// caller's transaction: TestWaitingBatchesRideAlong and
// TestSingleEventJobsArrivingTogetherShareATransaction pin it.
func completeAllTx[T river.JobArgs](ctx context.Context, tx pgx.Tx, jobs []*river.Job[T]) error {
	if len(jobs) == 1 {
		return completeTx(ctx, tx, jobs[0])
	}
	client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
	if err != nil {
		return fmt.Errorf("complete %d jobs: %w", len(jobs), err)
	}
	now := time.Now()
	n := len(jobs)
	params := &riverdriver.JobSetStateIfRunningManyParams{
		ID: make([]int64, n), Attempt: make([]*int, n), ErrData: make([][]byte, n),
		FinalizedAt: make([]*time.Time, n), MetadataDoMerge: make([]bool, n), MetadataUpdates: make([][]byte, n),
		ScheduledAt: make([]*time.Time, n), State: make([]rivertype.JobState, n),
	}
	for i, job := range jobs {
		if job.State != rivertype.JobStateRunning {
			return fmt.Errorf("complete job %d: it is %s, not running", job.ID, job.State)
		}
		p := riverdriver.JobSetStateCompleted(job.ID, now, nil)
		params.ID[i], params.Attempt[i], params.ErrData[i], params.FinalizedAt[i] = p.ID, p.Attempt, p.ErrData, p.FinalizedAt
		params.ScheduledAt[i], params.State[i] = p.ScheduledAt, p.State
	}
	rows, err := client.Pilot().JobSetStateIfRunningMany(ctx, client.Driver().UnwrapExecutor(tx), params)
	if err != nil {
		return fmt.Errorf("complete %d jobs: %w", n, err)
	}
	completed := 0
	for _, row := range rows {
		if row.State == rivertype.JobStateCompleted {
			completed++
		}
	}
	if completed != n {
		return fmt.Errorf("complete %d jobs: %d completed (a job no longer running?)", n, completed)
	}
	return nil
}

// report counts and logs one event's processing: what it applied, or why not.
func (w *EventWorker) report(ctx context.Context, job *rivertype.JobRow, ev EventArgs, res applied, elapsed time.Duration, errResult string, err error) {
	label := polar.LabelFor(ev.EventType)
	w.metrics.duration.WithLabelValues(label).Observe(elapsed.Seconds())
	attrs := []slog.Attr{
		slog.Int64("job_id", job.ID),
		slog.String("webhook_id", ev.WebhookID),
		slog.String("event_type", label),
		slog.Int("attempt", job.Attempt),
		slog.Duration("duration", elapsed),
	}
	if err != nil {
		w.metrics.processed.WithLabelValues(label, errResult).Inc()
		if errResult == ResultRefused && isProductEvent(ev.EventType) {
			w.metrics.products.WithLabelValues(productRefused).Inc()
		}
		w.opts.Logger.LogAttrs(ctx, slog.LevelWarn, "event not processed",
			append(attrs, slog.String("result", errResult), slog.String("error", err.Error()))...)
		return
	}
	w.metrics.processed.WithLabelValues(label, res.result).Inc()
	if !res.hookTime.IsZero() {
		w.metrics.lag.WithLabelValues(label).Observe(time.Since(res.hookTime).Seconds())
	}
	for _, b := range res.bookings {
		w.metrics.bookings.WithLabelValues(b).Inc()
	}
	if res.product != "" {
		w.metrics.products.WithLabelValues(res.product).Inc()
	}
	attrs = append(attrs, slog.String("result", res.result))
	if res.sessionID != "" {
		attrs = append(attrs, slog.String("session_id", res.sessionID))
	}
	if res.note != "" {
		attrs = append(attrs, slog.String("note", res.note))
	}
	w.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "event processed", attrs...)
}

// errMalformed marks event data that can never be applied.
var errMalformed = errors.New("malformed event")

// step is one event's work, read from its body: a payment for the ledger,
// which a batch applies together with its other events' payments, or
// other work, or nothing to do.
type step struct {
	payment *ledger.Payment
	paid    bool // the payment is of a paid order: its booking result is counted
	run     func(ctx context.Context, tx pgx.Tx) (applied, error)
	done    applied // the result when there is nothing to do
	// The session run may lock, by reference or by the order it records:
	// a batch locks every session of its events first (applyAll).
	lockRef   *ledger.SessionRef
	lockOrder string
	// The product version run applies: a batch locks every product of its
	// events first, in one id-ordered step.
	product *products.Version
}

// prepare reads the event's body into the step that applies it.
func prepare(event *inbox.Event) (step, error) {
	env, err := polar.ParseEnvelope(event.Body)
	if err != nil {
		return step{}, fmt.Errorf("%w: %w", errMalformed, err)
	}
	// A delivery to a workspace's own endpoint may change only that
	// workspace's sessions of the environment whose secret verified it.
	var scope *ledger.Scope
	if event.WorkspaceID != "" {
		scope = &ledger.Scope{WorkspaceID: event.WorkspaceID, Environment: event.Environment}
	}
	switch env.Type {
	case "order.created", "order.updated", "order.paid", "order.refunded":
		order, err := polar.ParseOrder(env.Data)
		if err != nil {
			return step{}, fmt.Errorf("%w: %w", errMalformed, err)
		}
		return orderStep(order, scope), nil
	case "checkout.created", "checkout.updated", "checkout.expired":
		checkout, err := polar.ParseCheckout(env.Data)
		if err != nil {
			return step{}, fmt.Errorf("%w: %w", errMalformed, err)
		}
		st := step{run: func(ctx context.Context, tx pgx.Tx) (applied, error) { return applyCheckout(ctx, tx, checkout, scope) }}
		if ref, ok := checkout.Metadata.Storefront(); ok {
			st.lockRef = &ledger.SessionRef{SessionID: ref.CheckoutSessionID, ExternalCheckoutID: checkout.ID}
		}
		return st, nil
	case "refund.created", "refund.updated":
		refund, err := polar.ParseRefund(env.Data)
		if err != nil {
			return step{}, fmt.Errorf("%w: %w", errMalformed, err)
		}
		return step{run: func(ctx context.Context, tx pgx.Tx) (applied, error) { return applyRefund(ctx, tx, refund, scope) },
			lockOrder: refund.OrderID}, nil
	case "product.created", "product.updated":
		product, err := polar.ParseProduct(env.Data)
		if err != nil {
			return step{}, fmt.Errorf("%w: %w", errMalformed, err)
		}
		v := productVersion(product, scope)
		return step{run: func(ctx context.Context, tx pgx.Tx) (applied, error) { return applyProduct(ctx, tx, v) }, product: &v}, nil
	}
	return step{done: applied{result: ResultNoop, note: "event type not acted on"}}, nil
}

// apply runs the step alone in tx.
func (st step) apply(ctx context.Context, tx pgx.Tx) (applied, error) {
	switch {
	case st.payment != nil:
		out, err := ledger.ApplyPayment(ctx, tx, *st.payment)
		if err != nil {
			return applied{}, err
		}
		return orderApplied(out, st.paid), nil
	case st.run != nil:
		return st.run(ctx, tx)
	}
	return st.done, nil
}

// orderStep is the payment an order event makes, if it is a storefront sale.
func orderStep(order polar.Order, scope *ledger.Scope) step {
	ref, ok := order.Metadata.Storefront()
	if !ok {
		return step{done: applied{result: ResultNoop, note: "not a storefront sale"}}
	}
	session := ledger.SessionRef{SessionID: ref.CheckoutSessionID, WorkspaceID: ref.WorkspaceID, Scope: scope}
	if order.CheckoutID != nil {
		session.ExternalCheckoutID = *order.CheckoutID
	}
	paid := order.Paid || order.Status == "paid" || order.Status == "partially_refunded" || order.Status == "refunded"
	return step{paid: paid, payment: &ledger.Payment{
		Session:           session,
		ExternalOrderID:   order.ID,
		ExternalStatus:    order.Status,
		Paid:              paid,
		Currency:          order.Currency,
		RefundedAmount:    order.RefundedTotal(),
		Description:       "Polar order " + order.ID,
		RefundDescription: "Refund of Polar order " + order.ID,
		At:                time.Now(),
	}}
}

// orderApplied is what an order event's payment did.
func orderApplied(out ledger.Outcome, paid bool) applied {
	res := applied{result: ResultOK, sessionID: out.Session.ID, note: out.Booking}
	if paid {
		res.bookings = append(res.bookings, out.Booking)
	}
	if out.Reversed > 0 {
		res.bookings = append(res.bookings, BookingReversed)
		res.note += reversalNote(out)
	}
	return res
}

// reversalNote says on an inbox row what reversal its event booked, after
// the booking result: "already_booked; reversed 1650 USD".
func reversalNote(out ledger.Outcome) string {
	return fmt.Sprintf("; reversed %d %s", out.Reversed, strings.ToUpper(out.Session.Currency))
}

func applyCheckout(ctx context.Context, tx pgx.Tx, checkout polar.Checkout, scope *ledger.Scope) (applied, error) {
	ref, ok := checkout.Metadata.Storefront()
	if !ok {
		return applied{result: ResultNoop, note: "not a storefront checkout"}, nil
	}
	if checkout.Status != "expired" && checkout.Status != "failed" {
		return applied{result: ResultNoop, note: "checkout status not acted on"}, nil
	}
	expired, err := ledger.ExpireSession(ctx, tx, ledger.SessionRef{
		SessionID: ref.CheckoutSessionID, WorkspaceID: ref.WorkspaceID, ExternalCheckoutID: checkout.ID, Scope: scope,
	})
	if errors.Is(err, ledger.ErrSessionNotFound) {
		// A checkout that never became a session has nothing to expire.
		return applied{result: ResultNoop, note: "no session for this checkout"}, nil
	}
	if err != nil {
		return applied{}, err
	}
	if !expired {
		return applied{result: ResultNoop, note: "session no longer reserved"}, nil
	}
	return applied{result: ResultOK, note: "session expired"}, nil
}

func applyRefund(ctx context.Context, tx pgx.Tx, refund polar.Refund, scope *ledger.Scope) (applied, error) {
	if refund.Status != "succeeded" {
		return applied{result: ResultNoop, note: "refund not succeeded"}, nil
	}
	out, err := ledger.ApplyRefund(ctx, tx, ledger.Refund{
		ExternalOrderID:  refund.OrderID,
		ExternalRefundID: refund.ID,
		Amount:           refund.Amount + refund.TaxAmount,
		Currency:         refund.Currency,
		Description:      "Refund of Polar order " + refund.OrderID,
		At:               time.Now(),
		Scope:            scope,
	})
	if errors.Is(err, ledger.ErrSessionNotFound) {
		// Refunds carry no storefront metadata; the order's own events carry
		// the refunded total too, so nothing is lost by not waiting here.
		return applied{result: ResultNoop, note: "no storefront sale for this order"}, nil
	}
	if err != nil {
		return applied{}, err
	}
	res := applied{result: ResultOK, sessionID: out.Session.ID, note: "refund recorded"}
	if out.Reversed > 0 {
		res.bookings = append(res.bookings, BookingReversed)
		res.note += reversalNote(out)
	}
	return res, nil
}
