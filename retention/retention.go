// Package retention deletes old, finished webhook_inbox rows on a River
// periodic job, so the inbox keeps what replays and audits need and no more.
package retention

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/relayhq/relay/inbox"
)

// Defaults.
const (
	DefaultKeep  = 30 * 24 * time.Hour
	DefaultBatch = 1000
	// Interval is how often the sweep runs.
	Interval = time.Hour
)

// Args asks for one sweep of the inbox.
type Args struct{}

// Kind is the River job kind of Args.
func (Args) Kind() string { return "inbox_retention" }

// InsertOpts: one sweep at a time is enough, whichever relay instance
// enqueues it.
func (Args) InsertOpts() river.InsertOpts {
	return river.InsertOpts{UniqueOpts: river.UniqueOpts{ByPeriod: Interval / 2}}
}

// Options tune the Worker.
type Options struct {
	Keep   time.Duration // rows received longer ago than this go; default 30 days
	Batch  int           // rows per DELETE; default 1000
	Logger *slog.Logger
}

// Worker runs a sweep.
type Worker struct {
	river.WorkerDefaults[Args]
	pool *pgxpool.Pool
	opts Options
}

// NewWorker returns the worker for Args.
func NewWorker(pool *pgxpool.Pool, opts Options) *Worker {
	if opts.Keep <= 0 {
		opts.Keep = DefaultKeep
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultBatch
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Worker{pool: pool, opts: opts}
}

// Timeout: a first sweep over a large backlog takes a while; it is batched,
// so a timeout loses nothing.
func (w *Worker) Timeout(*river.Job[Args]) time.Duration { return 10 * time.Minute }

// Work deletes old finished rows.
func (w *Worker) Work(ctx context.Context, job *river.Job[Args]) error {
	n, err := Sweep(ctx, w.pool, w.opts.Keep, w.opts.Batch)
	if err != nil {
		return err
	}
	w.opts.Logger.Info("inbox retention sweep", "deleted", n, "keep", w.opts.Keep.String())
	// The inbox's counts by status take the sweep's deletions in as
	// changes; folding them here keeps those few where no scrape folds them.
	if err := inbox.FoldCounts(ctx, w.pool); err != nil {
		w.opts.Logger.Warn("inbox retention sweep: could not fold the inbox counts", "error", err)
	}
	return nil
}

// PeriodicJob runs the sweep every Interval, and once at start so a
// restart never postpones it by a whole interval.
func PeriodicJob() *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(Interval),
		func() (river.JobArgs, *river.InsertOpts) { return Args{}, nil },
		&river.PeriodicJobOpts{RunOnStart: true})
}

// Sweep deletes, batch rows per statement, inbox rows received more than
// keep ago whose processing is over: status processed, ignored, invalid or
// refused, and no unfinished River job. Pending rows, and rows whose job may
// still run (a replay in flight), are kept. It returns how many rows it
// deleted.
func Sweep(ctx context.Context, pool *pgxpool.Pool, keep time.Duration, batch int) (int64, error) {
	var total int64
	for {
		// SKIP LOCKED: a row a worker holds is being processed right now.
		tag, err := pool.Exec(ctx, `
			WITH doomed AS (
				SELECT i.id FROM webhook_inbox i
				WHERE i.status IN ('processed', 'ignored', 'invalid', 'refused')
				  AND i.received_at < now() - make_interval(secs => $1)
				  AND NOT EXISTS (
					SELECT 1 FROM river_job j
					WHERE j.id = i.job_id
					  AND j.state IN ('available', 'running', 'retryable', 'scheduled', 'pending'))
				ORDER BY i.id
				LIMIT $2
				FOR UPDATE OF i SKIP LOCKED)
			DELETE FROM webhook_inbox w USING doomed WHERE w.id = doomed.id`,
			keep.Seconds(), batch)
		if err != nil {
			return total, fmt.Errorf("delete old inbox rows: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < int64(batch) {
			return total, nil
		}
	}
}
