package jobs

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/polar"
)

// EventWorker processes one stored webhook.
type EventWorker struct {
	river.WorkerDefaults[EventArgs]
	pool    *pgxpool.Pool
	metrics *Metrics
	logger  *slog.Logger
}

// NewEventWorker returns the worker for EventArgs.
func NewEventWorker(pool *pgxpool.Pool, metrics *Metrics, logger *slog.Logger) *EventWorker {
	return &EventWorker{pool: pool, metrics: metrics, logger: logger}
}

// Work applies the event and completes the job in one transaction.
func (w *EventWorker) Work(ctx context.Context, job *river.Job[EventArgs]) error {
	start := time.Now()
	label := polar.LabelFor(job.Args.EventType)
	err := pgx.BeginFunc(ctx, w.pool, func(tx pgx.Tx) error {
		event, err := inbox.Get(ctx, tx, job.Args.WebhookID)
		if err != nil {
			return err
		}
		if err := inbox.MarkProcessed(ctx, tx, event.ID, ""); err != nil {
			return err
		}
		_, err = river.JobCompleteTx[*riverpgxv5.Driver](ctx, tx, job)
		return err
	})
	w.metrics.duration.WithLabelValues(label).Observe(time.Since(start).Seconds())
	if err != nil {
		w.metrics.processed.WithLabelValues(label, "error").Inc()
		return fmt.Errorf("process webhook %s: %w", job.Args.WebhookID, err)
	}
	w.metrics.processed.WithLabelValues(label, "ok").Inc()
	return nil
}
