package jobs

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/riverqueue/river"
)

// Jobs that arrive together are worked together. The first to come leads a
// group, which the jobs coming while it gathers (a moment, and for as long
// as it waits for a turn) join; the group is applied in one transaction,
// every job completed in it. River fetches jobs in bursts (one fetch every
// few ms under load), so a burst costs one transaction rather than one per
// job; and while every turn is taken, the jobs waiting pile into one group
// instead of one transaction each. Per transaction, relay pays a fixed
// price (begin, read the inbox rows, lock and read the sessions, book,
// mark the rows, complete the jobs, commit) that this spreads over more
// events. A failed group leaves each job to itself, as if it had come
// alone: what a job does, and so exactly-once and durability, does not
// depend on its group.

// group is jobs worked in one transaction.
type group struct {
	started time.Time
	jobs    []*river.Job[EventBatchArgs] // the leader's first; under BatchWorker.mu until closed
	events  int

	done     chan struct{} // closed once the outcome is known
	finished sync.Once
	ok       bool // the group's transaction committed: every job applied and completed
	snooze   bool // no turn came in time: every job goes back to the queue
}

// maxGroupEvents bounds the events of a group: a larger transaction holds
// its sessions' locks longer.
const maxGroupEvents = 256

// gatherFor is how long a group's leader waits for other jobs before it
// works, even with a turn free: the jobs of one River fetch start within a
// fraction of it.
const gatherFor = 2 * time.Millisecond

// inGroup works job (a batch, or a single event as a batch of one) in a
// group: it leads one, or joins the one forming and waits for its outcome.
// alone works job as if it had never been grouped, when its group comes to
// nothing or fails: with the turn its caller holds, or taking one.
func (b *BatchWorker) inGroup(ctx context.Context, job *river.Job[EventBatchArgs], alone func(ctx context.Context, haveTurn bool) error) error {
	g, leader := b.join(job)
	if !leader {
		select {
		case <-g.done:
		case <-ctx.Done():
			return fmt.Errorf("process %d webhooks: grouped with other jobs: %w", len(job.Args.Events), ctx.Err())
		}
		switch {
		case g.ok:
			return nil
		case g.snooze:
			return river.JobSnooze(0)
		}
		// The group's transaction failed: this job alone.
		return alone(ctx, false)
	}

	// However the leader ends (a panic included), the others are told: a
	// group that did not commit leaves each to itself.
	defer g.finish(false, false)
	// Waiting for a turn is not working: it must not use up the time of
	// the attempt, nor the attempt, however long the others take.
	waitCtx, stopWaiting := context.WithTimeout(ctx, maxTurnWait)
	err := b.turns.Acquire(waitCtx)
	stopWaiting()
	if err == nil {
		if wait := gatherFor - time.Since(g.started); wait > 0 {
			gather := time.NewTimer(wait)
			select {
			case <-gather.C:
			case <-ctx.Done():
				gather.Stop()
			}
		}
	}
	jobs := b.close(g)
	switch {
	case err == nil:
		defer b.turns.Release()
	case ctx.Err() != nil:
		return fmt.Errorf("process %d webhooks: waiting for a turn: %w", len(job.Args.Events), ctx.Err())
	default:
		g.finish(false, true)
		return river.JobSnooze(0)
	}
	ctx, cancel := context.WithTimeout(ctx, b.w.opts.Timeout)
	defer cancel()
	if len(jobs) == 1 {
		return alone(ctx, true)
	}
	// In the order relay received them (River's ids grow with inserts),
	// not the order their goroutines happened to join in: a product's
	// versions, say, are then applied oldest first.
	slices.SortFunc(jobs, func(a, b *river.Job[EventBatchArgs]) int { return cmp.Compare(a.ID, b.ID) })
	err = b.apply(ctx, jobs)
	g.finish(err == nil, false)
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("process %d webhooks grouped with %d other jobs: %w", len(job.Args.Events), len(jobs)-1, err)
	}
	b.w.opts.Logger.LogAttrs(ctx, slog.LevelInfo, "group of jobs failed; each works alone",
		slog.Int64("job_id", job.ID), slog.Int("jobs", len(jobs)), slog.String("reason", err.Error()))
	return alone(ctx, true)
}

// withTurn runs fn with a turn, after waiting up to maxTurnWait for one;
// past that, the job goes back to the queue without using an attempt.
func (b *BatchWorker) withTurn(ctx context.Context, fn func() error) error {
	waitCtx, stopWaiting := context.WithTimeout(ctx, maxTurnWait)
	err := b.turns.Acquire(waitCtx)
	stopWaiting()
	switch {
	case err == nil:
		defer b.turns.Release()
		return fn()
	case ctx.Err() != nil:
		return fmt.Errorf("waiting for a turn: %w", ctx.Err())
	default:
		return river.JobSnooze(0)
	}
}

// join adds job to the group forming, or starts one that job leads.
func (b *BatchWorker) join(job *river.Job[EventBatchArgs]) (g *group, leader bool) {
	n := len(job.Args.Events)
	b.mu.Lock()
	defer b.mu.Unlock()
	if g := b.forming; g != nil && g.events+n <= maxGroupEvents {
		g.jobs, g.events = append(g.jobs, job), g.events+n
		return g, false
	}
	g = &group{started: time.Now(), jobs: []*river.Job[EventBatchArgs]{job}, events: n, done: make(chan struct{})}
	b.forming = g
	return g, true
}

// close ends g's forming: later jobs start another group. It returns g's
// jobs, its leader's first.
func (b *BatchWorker) close(g *group) []*river.Job[EventBatchArgs] {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.forming == g {
		b.forming = nil
	}
	return g.jobs
}

// finish tells g's other members its outcome; only its first call counts.
func (g *group) finish(ok, snooze bool) {
	g.finished.Do(func() {
		g.ok, g.snooze = ok, snooze
		close(g.done)
	})
}
