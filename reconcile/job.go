package reconcile

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
)

// PassArgs asks for a reconciliation pass: of every connection when
// Workspace is empty (the periodic pass), or of one connection (the pass
// relay connect asks for).
type PassArgs struct {
	Workspace   string `json:"workspace,omitempty"`
	Environment string `json:"environment,omitempty"`
}

// Kind is the River job kind of PassArgs.
func (PassArgs) Kind() string { return "reconcile_polar" }

// passLock is the PostgreSQL advisory lock the periodic pass holds while it
// runs: one at a time among all replicas.
const passLock = 7_305_146_303

// PeriodicJob runs a pass over every connection every interval, and one at
// start. River runs periodic jobs on its elected leader only.
func PeriodicJob(interval time.Duration) *river.PeriodicJob {
	return river.NewPeriodicJob(river.PeriodicInterval(interval),
		func() (river.JobArgs, *river.InsertOpts) { return PassArgs{}, nil },
		&river.PeriodicJobOpts{RunOnStart: true})
}

// Worker runs passes. Like the pending bookings' pass, it never fails: a
// pass's failure is in its report, on the connection (relay connections
// list), in the metrics and the log; the next interval tries again, and a
// job that retried or ended discarded would only linger.
type Worker struct {
	river.WorkerDefaults[PassArgs]
	r      *Reconciler
	pool   *pgxpool.Pool
	logger *slog.Logger
}

// NewWorker returns the worker for PassArgs.
func NewWorker(r *Reconciler, pool *pgxpool.Pool, logger *slog.Logger) *Worker {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Worker{r: r, pool: pool, logger: logger}
}

// Timeout is the pass's own: each connection's pass ends at its own
// deadline (Config.PassTimeout), the job a minute later.
func (w *Worker) Timeout(*river.Job[PassArgs]) time.Duration {
	return w.r.cfg.PassTimeout + time.Minute
}

// Work runs the pass. The periodic pass holds passLock: one that finds
// another running (a slow one, or one River rescued from a dead replica)
// ends at once. Passes that race anyway (relay reconcile by hand, a pass
// after connect) store each recovery once: its synthetic webhook id is the
// inbox's key.
func (w *Worker) Work(ctx context.Context, job *river.Job[PassArgs]) error {
	if job.Args.Workspace != "" {
		if _, err := w.r.Reconcile(ctx, job.Args.Workspace, job.Args.Environment, Options{}); err != nil {
			w.logger.LogAttrs(ctx, slog.LevelWarn, "reconciliation pass after connect failed", slog.String("workspace_id", job.Args.Workspace),
				slog.String("environment", job.Args.Environment), slog.Any("error", err))
		}
		return nil
	}
	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		w.logger.LogAttrs(ctx, slog.LevelWarn, "reconciliation: no database connection", slog.Any("error", err))
		return nil
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, passLock).Scan(&locked); err != nil {
		w.logger.LogAttrs(ctx, slog.LevelWarn, "reconciliation: cannot take its lock", slog.Any("error", err))
		return nil
	}
	if !locked {
		w.logger.LogAttrs(ctx, slog.LevelInfo, "reconciliation pass skipped: another pass runs")
		return nil
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, passLock); err != nil {
			conn.Conn().Close(context.WithoutCancel(ctx)) //nolint:errcheck // closing the session releases the lock
		}
	}()
	if _, err := w.r.All(ctx, Options{}); err != nil {
		w.logger.LogAttrs(ctx, slog.LevelWarn, "reconciliation: cannot read the connections", slog.Any("error", err))
	}
	return nil
}
