package jobs

import (
	"context"
	"fmt"
	"slices"

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
	InsertManyTx(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error)
}

// maxBatchJob bounds the events of one batch job: the more sessions one
// transaction locks, the likelier it waits on, or deadlocks with, another.
const maxBatchJob = 32

// EnqueueTx inserts the jobs that will process stored events, in the
// caller's transaction: one job for a single event, one batch job per
// maxBatchJob events committed together, all in one statement. The inbox
// rows are not updated with their jobs' ids: that would be a second write
// per webhook, and a row learns its job from the job that processes it.
func EnqueueTx(ctx context.Context, tx pgx.Tx, inserter Inserter, events ...*inbox.Event) error {
	if len(events) == 0 {
		return nil
	}
	var params []river.InsertManyParams
	for chunk := range slices.Chunk(events, maxBatchJob) {
		if len(chunk) == 1 {
			params = append(params, river.InsertManyParams{Args: argsFor(chunk[0])})
			continue
		}
		batch := EventBatchArgs{Events: make([]EventArgs, len(chunk))}
		for i, e := range chunk {
			batch.Events[i] = argsFor(e)
		}
		params = append(params, river.InsertManyParams{Args: batch})
	}
	if _, err := inserter.InsertManyTx(ctx, tx, params); err != nil {
		return fmt.Errorf("insert jobs for %d events: %w", len(events), err)
	}
	return nil
}

func argsFor(e *inbox.Event) EventArgs {
	return EventArgs{WebhookID: e.WebhookID, EventType: e.EventType, WorkspaceID: e.WorkspaceID, Environment: e.Environment}
}

// Replay enqueues a new job for a stored event, as an admin does after
// fixing what made it fail. endpoint (inbox.Event.Endpoint) names the event
// when several endpoints have stored its webhook id; empty, it must be the
// only one. Its effects stay exactly-once: the ledger ignores what it has
// already applied.
func Replay(ctx context.Context, pool *pgxpool.Pool, inserter Inserter, webhookID, endpoint string) (int64, error) {
	var jobID int64
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		event, err := inbox.Get(ctx, tx, webhookID, endpoint)
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
