package jobs

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/relayhq/relay/ledger"
)

// PendingInterval is how often a pass looks for pending bookings that are
// due. A sale is due again ledger.RetryBase after an attempt, doubling,
// up to ledger.RetryFixable while a wallet setting could fix it: a sale
// whose wallet is fixed is booked within a minute. River's leader alone
// enqueues periodic jobs; if its replica dies, another is elected within
// about 20 seconds (its lease's TTL plus an election attempt) and runs a
// pass at once (RunOnStart).
const PendingInterval = 10 * time.Second

// PostPendingArgs asks for one pass over the pending bookings.
type PostPendingArgs struct{}

// Kind is the River job kind of PostPendingArgs.
func (PostPendingArgs) Kind() string { return "post_pending_bookings" }

// PendingPassBudget is how long one pass takes new sales for. A backlog
// larger than a pass gets through (thousands of sales, at about a
// millisecond each) is worked through over several passes: each takes the
// sales due longest first, and every sale it tried waits for its next
// attempt (ledger.RetryBase and on), so the next pass goes on where this
// one stopped.
const PendingPassBudget = 3 * time.Second

// pendingPassTimeout bounds a pass: its budget, then room for the sale it
// is booking when the budget runs out (a session lock held elsewhere).
const pendingPassTimeout = 30 * time.Second

// pendingPassLock is the PostgreSQL advisory lock a pass holds while it
// runs: one pass at a time among all replicas.
const pendingPassLock = 7_305_146_302

// PendingPeriodicJob runs a pass every PendingInterval, and one at start.
// River runs periodic jobs on its elected leader only, so several replicas
// enqueue one pass between them. Passes are not unique jobs: a pass left
// running by a crashed replica would hold up every later one until River
// rescues it. They do not overlap either: a pass that finds another
// holding pendingPassLock (a slow one, or one River rescued and runs
// again) ends at once, and PostgreSQL releases the lock of a replica that
// died with its connection.
func PendingPeriodicJob() *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(PendingInterval),
		func() (river.JobArgs, *river.InsertOpts) { return PostPendingArgs{}, nil },
		&river.PeriodicJobOpts{RunOnStart: true})
}

// PendingWorker posts the pending bookings that are due.
type PendingWorker struct {
	river.WorkerDefaults[PostPendingArgs]
	pool    *pgxpool.Pool
	metrics *Metrics
	logger  *slog.Logger
}

// NewPendingWorker returns the worker for PostPendingArgs.
func NewPendingWorker(pool *pgxpool.Pool, metrics *Metrics, logger *slog.Logger) *PendingWorker {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &PendingWorker{pool: pool, metrics: metrics, logger: logger}
}

// Timeout is the pass's own, not the event jobs' (RELAY_JOB_TIMEOUT): the
// pass stops by itself well before it.
func (w *PendingWorker) Timeout(*river.Job[PostPendingArgs]) time.Duration {
	return pendingPassTimeout
}

// Work runs one pass of at most PendingPassBudget. When nothing is due it
// is one indexed query. It always returns nil: a pass that fails, or
// stops, is logged, not retried, as the next one, a few seconds on, goes
// on from where it stopped, and a retry backing off would only linger as
// an unfinished job or end discarded. Every failed sale's attempt is on its
// row, and RelayPendingBookingStuck fires if one stays pending.
func (w *PendingWorker) Work(ctx context.Context, job *river.Job[PostPendingArgs]) error {
	start := time.Now()
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		w.logger.LogAttrs(ctx, slog.LevelWarn, "pending bookings pass: no database connection", slog.Any("error", err))
		return nil
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, pendingPassLock).Scan(&locked); err != nil {
		w.logger.LogAttrs(ctx, slog.LevelWarn, "pending bookings pass: cannot take its lock", slog.Any("error", err))
		return nil
	}
	if !locked {
		w.logger.LogAttrs(ctx, slog.LevelDebug, "pending bookings pass skipped: another pass runs")
		return nil
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, pendingPassLock); err != nil {
			conn.Conn().Close(context.WithoutCancel(ctx)) //nolint:errcheck // closing the session releases the lock
		}
	}()
	results, more, err := ledger.PostDue(ctx, conn, start.Add(PendingPassBudget))
	report(ctx, w.metrics, w.logger, results, err)
	if more {
		w.logger.LogAttrs(ctx, slog.LevelInfo, "pending bookings pass stopped at its budget; the next one goes on",
			slog.Int("tried", len(results)), slog.Duration("took", time.Since(start)))
	}
	return nil
}

// PostPending posts the pending bookings of workspace (empty: all) that can
// be booked now (ledger.PostPending), counts what it booked in metrics
// (nil: not counted) and logs it to logger (nil: not logged). The admin API
// and CLI post through it too.
func PostPending(ctx context.Context, pool *pgxpool.Pool, metrics *Metrics, logger *slog.Logger, workspace string) ([]ledger.PostResult, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	results, err := ledger.PostPending(ctx, pool, workspace)
	report(ctx, metrics, logger, results, err)
	return results, err
}

// report counts what a post booked in metrics (nil: not counted) and logs
// it to logger.
func report(ctx context.Context, metrics *Metrics, logger *slog.Logger, results []ledger.PostResult, err error) {
	for _, r := range results {
		attrs := []slog.Attr{
			slog.String("session_id", r.SessionID), slog.String("workspace_id", r.WorkspaceID),
			slog.Int64("amount", r.Amount), slog.String("currency", r.Currency), slog.String("result", r.Result),
		}
		switch {
		case r.Result == ledger.PostedPending:
			metrics.countBooking(ledger.PostedPending)
			if r.Reversed > 0 {
				metrics.countBooking(BookingReversed)
			}
			logger.LogAttrs(ctx, slog.LevelInfo, "pending booking posted", append(attrs,
				slog.String("transaction_id", *r.TransactionID), slog.Int64("reversed", r.Reversed),
				slog.Duration("pending_for", r.PostedAt.Sub(r.FirstAttemptAt)))...)
		case r.Posted(): // booked before: closed, nothing booked now
			logger.LogAttrs(ctx, slog.LevelInfo, "pending booking closed: the sale was booked before", append(attrs,
				slog.String("transaction_id", *r.TransactionID))...)
		default:
			// Tried again and again, if less and less often: at debug.
			// relay_pending_bookings and its alert watch it.
			logger.LogAttrs(ctx, slog.LevelDebug, "pending booking still pending", append(attrs,
				slog.String("reason", r.Reason), slog.String("note", r.Note))...)
		}
	}
	if err != nil {
		logger.LogAttrs(ctx, slog.LevelWarn, "posting pending bookings failed", slog.Any("error", err))
	}
}
