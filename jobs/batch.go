package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/riverqueue/river"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/pace"
	"github.com/relayhq/relay/products"
)

// BatchWorker processes the events of an EventBatchArgs job in one
// transaction with the job's completion. If any event cannot be applied
// (its session is not there yet, it is refused, the database aborts on
// it), nothing of the batch is kept: each event gets a job of its own
// instead, with the retries, discards and refusals single events have.
//
// Batch jobs, and the first attempts of single-event jobs, that arrive
// together are worked together, in groups (see group.go).
type BatchWorker struct {
	river.WorkerDefaults[EventBatchArgs]
	w     *EventWorker
	turns *pace.Limiter // the group transactions allowed at once

	mu      sync.Mutex
	forming *group // the group jobs join, nil when none is forming
}

// NewBatchWorker returns the worker for EventBatchArgs; it applies events
// as w does, as many groups at once as w's Options.Pace allows, else at
// most Options.BatchTransactions. From then on w's first attempts join its
// groups too.
func NewBatchWorker(w *EventWorker) *BatchWorker {
	turns := w.opts.Pace
	if turns == nil {
		turns = pace.Fixed(w.opts.BatchTransactions)
	}
	b := &BatchWorker{w: w, turns: turns}
	w.groups = b
	return b
}

// maxTurnWait bounds how long a job waits for a turn before it goes back
// to the queue (snoozed: no attempt used) for a turn later.
const maxTurnWait = time.Second

// Timeout bounds one attempt: the wait for a turn, then Options.Timeout for
// the transaction, which starts once the batch has its turn. River rescues
// a batch left running by a crashed process only after this.
func (b *BatchWorker) Timeout(*river.Job[EventBatchArgs]) time.Duration {
	return maxTurnWait + b.w.opts.Timeout
}

// NextRetry backs off as for single events.
func (b *BatchWorker) NextRetry(job *river.Job[EventBatchArgs]) time.Time {
	return b.w.NextRetry(&river.Job[EventArgs]{JobRow: job.JobRow})
}

// Work applies every event and completes the job, in a group or alone, or
// hands each event a job of its own.
func (b *BatchWorker) Work(ctx context.Context, job *river.Job[EventBatchArgs]) error {
	return b.inGroup(ctx, job, func(ctx context.Context, haveTurn bool) error {
		if haveTurn {
			return b.work(ctx, job)
		}
		return b.alone(ctx, job)
	})
}

// alone works a batch whose group's transaction failed: it waits for a
// turn of its own (and joins no group), then works as Work.
func (b *BatchWorker) alone(ctx context.Context, job *river.Job[EventBatchArgs]) error {
	if err := b.turns.Acquire(ctx); err != nil {
		return fmt.Errorf("process batch of %d webhooks: waiting for a turn: %w", len(job.Args.Events), err)
	}
	defer b.turns.Release()
	return b.work(ctx, job)
}

// work applies a batch in a transaction of its own or, failing that, splits
// it into single jobs.
func (b *BatchWorker) work(ctx context.Context, job *river.Job[EventBatchArgs]) error {
	err := b.apply(ctx, []*river.Job[EventBatchArgs]{job})
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("process batch of %d webhooks: %w", len(job.Args.Events), err)
	}

	split := pgx.BeginFunc(ctx, b.w.pool, func(tx pgx.Tx) error {
		client, err := river.ClientFromContextSafely[pgx.Tx](ctx)
		if err != nil {
			return err
		}
		params := make([]river.InsertManyParams, len(job.Args.Events))
		for i, ev := range job.Args.Events {
			params[i].Args = ev
		}
		if _, err := client.InsertManyFastTx(ctx, tx, params); err != nil {
			return fmt.Errorf("insert single jobs: %w", err)
		}
		return completeTx(ctx, tx, job)
	})
	if split != nil {
		return fmt.Errorf("process batch of %d webhooks: %w", len(job.Args.Events), errors.Join(err, split))
	}
	b.w.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "batch split into single jobs",
		slog.Int64("job_id", job.ID), slog.Int("events", len(job.Args.Events)), slog.String("reason", err.Error()))
	return nil
}

// apply applies the events of jobs, marks their inbox rows processed and
// completes the jobs, all in one transaction, and reports each event once
// it has committed.
func (b *BatchWorker) apply(ctx context.Context, jobs []*river.Job[EventBatchArgs]) error {
	start := time.Now()
	var all []EventArgs
	for _, job := range jobs {
		all = append(all, job.Args.Events...)
	}
	results := make([]applied, len(all))
	// The inbox rows are read in one statement and marked processed in
	// another, and the jobs completed in a third: not one per event or job.
	err := pgx.BeginFunc(ctx, b.w.pool, func(tx pgx.Tx) error {
		keys := make([]inbox.Key, len(all))
		for i, ev := range all {
			keys[i] = ev.Key()
		}
		events, err := inbox.GetStoredMany(ctx, tx, keys)
		if err != nil {
			return err
		}
		if err := applyAll(ctx, tx, events, results); err != nil {
			return err
		}
		n := len(all)
		jobIDs, rowIDs, statuses, notes := make([]int64, 0, n), make([]int64, n), make([]string, n), make([]string, n)
		for _, job := range jobs {
			for range job.Args.Events {
				jobIDs = append(jobIDs, job.ID)
			}
		}
		for i, event := range events {
			results[i].hookTime = event.WebhookTimestamp
			rowIDs[i], statuses[i], notes[i] = event.ID, results[i].inboxStatus(), results[i].note
		}
		if err := inbox.MarkDoneEach(ctx, tx, jobIDs, rowIDs, statuses, notes); err != nil {
			return err
		}
		return completeAllTx(ctx, tx, jobs)
	})
	if err != nil {
		return err
	}
	each := time.Since(start) / time.Duration(max(len(all), 1))
	at := 0
	for _, job := range jobs {
		// How long its work waited tells the pace limit whether processing
		// is falling behind.
		b.turns.ObserveLag(time.Since(job.CreatedAt))
		for _, ev := range job.Args.Events {
			b.w.report(ctx, job.JobRow, ev, results[at], each, "", nil)
			at++
		}
	}
	return nil
}

// applyAll applies the events in tx and writes what each did into results.
// The order events' payments go to the ledger together (ledger.ApplyPayments:
// a batch of paid orders costs three statements, not three per order), then
// the other events apply one by one. Events of a batch arrived concurrently,
// and the ledger's result does not depend on their order.
func applyAll(ctx context.Context, tx pgx.Tx, events []*inbox.Event, results []applied) error {
	steps := make([]step, len(events))
	var (
		payments []ledger.Payment
		of       []int // the event of each payment
		refs     []ledger.SessionRef
		orders   []string
		others   bool // events other than payments lock sessions
		versions []products.Version
	)
	for i, event := range events {
		st, err := prepare(event)
		if err != nil {
			return fmt.Errorf("webhook %s: %w", event.WebhookID, err)
		}
		steps[i] = st
		if st.payment != nil {
			payments, of = append(payments, *st.payment), append(of, i)
			refs = append(refs, st.payment.Session)
			if st.payment.ExternalOrderID != "" {
				orders = append(orders, st.payment.ExternalOrderID)
			}
		}
		if st.lockRef != nil {
			refs, others = append(refs, *st.lockRef), true
		}
		if st.lockOrder != "" {
			orders, others = append(orders, st.lockOrder), true
		}
		if st.product != nil {
			versions = append(versions, *st.product)
		}
	}
	// Every session the batch touches, locked in one id-ordered step before
	// any is changed: two batches naming the same sessions in other orders
	// (a refund here, its order's payment there) cannot deadlock. Payments
	// alone are locked so by ApplyPayments.
	if others {
		if err := ledger.LockSessions(ctx, tx, refs, orders); err != nil {
			return err
		}
	}
	outs, err := ledger.ApplyPayments(ctx, tx, payments)
	if err != nil {
		if pe, ok := errors.AsType[*ledger.PaymentError](err); ok {
			return fmt.Errorf("webhook %s: %w", events[of[pe.Index]].WebhookID, pe.Err)
		}
		return err
	}
	for k, i := range of {
		results[i] = orderApplied(outs[k], steps[i].paid)
	}
	// Products after sessions, as every job takes them: several of them, in
	// one id-ordered step, before any is changed.
	if len(versions) > 1 {
		if err := products.Lock(ctx, tx, versions); err != nil {
			return err
		}
	}
	for i, st := range steps {
		if st.payment != nil {
			continue
		}
		if results[i], err = st.apply(ctx, tx); err != nil {
			return fmt.Errorf("webhook %s: %w", events[i].WebhookID, err)
		}
	}
	return nil
}
