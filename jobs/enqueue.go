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
	InsertManyFastTx(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) (int, error)
}

// EnqueueTx inserts the jobs that will process stored events, in the
// caller's transaction. It uses River's COPY-based insert: the jobs are not
// unique, so nothing can conflict, and their ids are not needed here (the
// inbox row learns its job from the job itself).
func EnqueueTx(ctx context.Context, tx pgx.Tx, inserter Inserter, events ...*inbox.Event) error {
	if len(events) == 0 {
		return nil
	}
	params := make([]river.InsertManyParams, len(events))
	for i, e := range events {
		params[i].Args = argsFor(e)
	}
	if _, err := inserter.InsertManyFastTx(ctx, tx, params); err != nil {
		return fmt.Errorf("insert %d jobs: %w", len(events), err)
	}
	return nil
}

func argsFor(e *inbox.Event) EventArgs {
	return EventArgs{InboxID: e.ID, WebhookID: e.WebhookID, EventType: e.EventType}
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
		res, err := inserter.InsertTx(ctx, tx, argsFor(event), nil)
		if err != nil {
			return fmt.Errorf("insert job: %w", err)
		}
		jobID = res.Job.ID
		return inbox.SetPending(ctx, tx, event.ID, jobID)
	})
	if err != nil {
		return 0, fmt.Errorf("replay webhook %q: %w", webhookID, err)
	}
	return jobID, nil
}
