package jobs

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/relayhq/relay/ledger"
)

// PendingInterval is how often pending bookings are tried. A sale whose
// wallet is fixed is booked within about this long. River's leader alone
// enqueues periodic jobs; if its replica dies, another is elected within
// about 20 seconds (its lease's TTL plus an election attempt) and runs a
// pass at once (RunOnStart): inside the minute relay promises either way.
const PendingInterval = 10 * time.Second

// PostPendingArgs asks for one pass over the pending bookings.
type PostPendingArgs struct{}

// Kind is the River job kind of PostPendingArgs.
func (PostPendingArgs) Kind() string { return "post_pending_bookings" }

// PendingPeriodicJob runs a pass every PendingInterval, and one at start.
// River runs periodic jobs on its elected leader only, so several replicas
// enqueue one pass between them. Passes are not unique: one left running by
// a crashed replica must not hold up the next until it is rescued, and two
// passes at once still book each sale once (ledger.PostPending).
func PendingPeriodicJob() *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(PendingInterval),
		func() (river.JobArgs, *river.InsertOpts) { return PostPendingArgs{}, nil },
		&river.PeriodicJobOpts{RunOnStart: true})
}

// PendingWorker posts the pending bookings that can be booked now.
type PendingWorker struct {
	river.WorkerDefaults[PostPendingArgs]
	pool    *pgxpool.Pool
	metrics *Metrics
	logger  *slog.Logger
}

// NewPendingWorker returns the worker for PostPendingArgs.
func NewPendingWorker(pool *pgxpool.Pool, metrics *Metrics, logger *slog.Logger) *PendingWorker {
	return &PendingWorker{pool: pool, metrics: metrics, logger: logger}
}

// Work runs one pass. When nothing is pending it is one indexed query. A
// pass that fails is logged, not retried: the next one, a few seconds on,
// tries everything again, and a retry backing off would only linger as an
// unfinished job. Every failed sale's attempt is on its row, and
// RelayPendingBookingStuck fires if one stays pending.
func (w *PendingWorker) Work(ctx context.Context, job *river.Job[PostPendingArgs]) error {
	if _, err := PostPending(ctx, w.pool, w.metrics, w.logger, ""); err != nil && ctx.Err() != nil {
		return err // stopped: River puts the pass back
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
			// Tried every pass: at debug, or the log would repeat it every
			// few seconds. relay_pending_bookings and its alert watch it.
			logger.LogAttrs(ctx, slog.LevelDebug, "pending booking still pending", append(attrs,
				slog.String("reason", r.Reason), slog.String("note", r.Note))...)
		}
	}
	if err != nil {
		logger.LogAttrs(ctx, slog.LevelWarn, "posting pending bookings failed", slog.Any("error", err))
	}
	return results, err
}
