package jobs

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/polar"
)

// Inserter inserts River jobs inside a caller's transaction;
// *river.Client[pgx.Tx] is one, and so is an insert-only client.
type Inserter interface {
	InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error)
}

// EnqueueTx inserts the job that will process a stored event and links the
// inbox row to it, in the caller's transaction.
func EnqueueTx(ctx context.Context, tx pgx.Tx, inserter Inserter, event *inbox.Event) (int64, error) {
	res, err := inserter.InsertTx(ctx, tx, EventArgs{
		InboxID: event.ID, WebhookID: event.WebhookID, EventType: event.EventType,
	}, nil)
	if err != nil {
		return 0, fmt.Errorf("insert job for %q: %w", event.WebhookID, err)
	}
	if err := inbox.SetJob(ctx, tx, event.ID, res.Job.ID); err != nil {
		return 0, err
	}
	return res.Job.ID, nil
}

// Replay enqueues a new job for a stored event, as an admin does after
// fixing what made it fail. Its effects stay exactly-once: the ledger
// ignores what it has already applied.
func Replay(ctx context.Context, pool *pgxpool.Pool, inserter Inserter, webhookID string) (int64, error) {
	var jobID int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		event, err := inbox.Get(ctx, tx, webhookID)
		if err != nil {
			return err
		}
		if !polar.Handled(event.EventType) {
			return fmt.Errorf("replay %q: relay does not act on %q events", webhookID, event.EventType)
		}
		if err := inbox.SetStatus(ctx, tx, event.ID, inbox.StatusPending); err != nil {
			return err
		}
		jobID, err = EnqueueTx(ctx, tx, inserter, event)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("replay webhook %q: %w", webhookID, err)
	}
	return jobID, nil
}
