package receiver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/spool"
)

// storeResult is what committing one request's event came to.
type storeResult struct {
	inserted bool // false: a duplicate, nothing written
	err      error
}

// pendingStore is one request waiting for its event to be committed.
type pendingStore struct {
	ctx   context.Context // the request's, bounded by the ack timeout
	event *inbox.Event
	done  chan storeResult // buffered: the committer never blocks on it
}

// commitEvents stores events and, for the pending ones, their jobs, in one
// transaction, and returns a result per event. Either all of it commits or
// none of it does.
//
// It costs two round trips (TestWebhookTransactionRoundTrips counts them):
// BEGIN, the job insert and the inbox insert travel together (deferredTx),
// then COMMIT; River's NOTIFY of new jobs, when it sends one, adds a third. The jobs are inserted before the inbox
// says which events are new, so when one turns out to be a duplicate, whose
// job must not exist, that transaction is rolled back and the events are
// committed inbox-first instead: the inbox insert, then the new events' jobs.
func commitEvents(ctx context.Context, pool *pgxpool.Pool, inserter jobs.Inserter, events []*inbox.Event) ([]bool, error) {
	inserted, err := commitOnce(ctx, pool, inserter, events, true)
	if errors.Is(err, errJobForDuplicate) {
		return commitOnce(ctx, pool, inserter, events, false)
	}
	return inserted, err
}

// Commit is CommitEvents with the pool and job inserter given: what
// relay spool retry commits a set-aside webhook with. An error wraps
// spool.ErrRefused when the database refused the events for what they hold,
// so that the drain sets the refused one aside instead of retrying it.
func Commit(ctx context.Context, pool *pgxpool.Pool, inserter jobs.Inserter, events []*inbox.Event) error {
	_, err := commitEvents(ctx, pool, inserter, events)
	if refusedForItsData(err) {
		return fmt.Errorf("%w: %w", spool.ErrRefused, err)
	}
	return err
}

// refusedForItsData reports whether err is PostgreSQL refusing an event for
// what it holds (a data exception, a constraint, a trigger's RAISE) rather
// than failing to store it. Such an event gets 503 and is not spooled: the
// drain's commit would be refused the same way, and set it aside for an
// operator, while Polar's retry may yet succeed.
func refusedForItsData(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	switch pgErr.Code[:2] {
	case "22", "23", "P0": // data_exception, integrity_constraint_violation, plpgsql_error
		return true
	}
	return false
}

// errJobForDuplicate means a transaction that inserted jobs first found one
// of their events already stored; it has been rolled back.
var errJobForDuplicate = errors.New("a job was inserted for a duplicate")

// commitOnce is one transaction of commitEvents, inserting the jobs of all
// pending events ahead of the inbox rows (jobsFirst), or, after the rows,
// the jobs of the pending events that were new.
func commitOnce(ctx context.Context, pool *pgxpool.Pool, inserter jobs.Inserter, events []*inbox.Event, jobsFirst bool) ([]bool, error) {
	tx, err := beginDeferred(ctx, pool, func(b *pgx.Batch) { inbox.QueueInsert(b, events...) })
	if err != nil {
		return nil, fmt.Errorf("store %d webhooks: %w", len(events), err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // a no-op after commit; bounded even past ctx's deadline
	if jobsFirst {
		var pending []*inbox.Event
		for _, e := range events {
			if e.Status == inbox.StatusPending {
				pending = append(pending, e)
			}
		}
		if err := jobs.EnqueueTx(ctx, tx, inserter, pending...); err != nil {
			return nil, fmt.Errorf("store %d webhooks: %w", len(events), err)
		}
	}
	if _, err := tx.begun(ctx); err != nil {
		return nil, fmt.Errorf("store %d webhooks: %w", len(events), err)
	}
	inserted := make([]bool, len(events))
	var enqueue []*inbox.Event
	for i, e := range events {
		inserted[i] = e.ID != 0
		if e.Status != inbox.StatusPending {
			continue // no job either way
		}
		if inserted[i] {
			enqueue = append(enqueue, e)
		} else if jobsFirst {
			return nil, errJobForDuplicate // the deferred Rollback drops its job
		}
	}
	if !jobsFirst {
		if err := jobs.EnqueueTx(ctx, tx, inserter, enqueue...); err != nil {
			return nil, fmt.Errorf("store %d webhooks: %w", len(events), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, fmt.Errorf("commit %d webhooks: %w", len(events), err)
	}
	return inserted, nil
}

// groupCommitter coalesces the stores of concurrent requests into shared
// transactions: one commit, one WAL flush, for many acknowledgements. Each
// request is answered only after the transaction holding its event commits;
// a batch that fails is retried one event at a time, so one bad row fails
// only its own request, and nobody is answered 200 for a failed commit.
type groupCommitter struct {
	pool     *pgxpool.Pool
	inserter jobs.Inserter
	maxBatch int
	logger   *slog.Logger
	queue    chan *pendingStore
	stop     chan struct{}
	wg       sync.WaitGroup

	// mu makes closing and enqueueing exclusive: once close holds it, no
	// submit is between its check and its send, and none starts one after,
	// so the committers' final drain sees every request ever queued.
	mu     sync.RWMutex
	closed bool
}

func newGroupCommitter(pool *pgxpool.Pool, inserter jobs.Inserter, committers, maxBatch int, logger *slog.Logger) *groupCommitter {
	g := &groupCommitter{
		pool: pool, inserter: inserter, maxBatch: maxBatch, logger: logger,
		queue: make(chan *pendingStore, committers*maxBatch),
		stop:  make(chan struct{}),
	}
	for range committers {
		g.wg.Go(g.run)
	}
	return g
}

// submit hands a request's event to the committers and waits for its result
// or the request's deadline, whichever comes first.
func (g *groupCommitter) submit(ctx context.Context, event *inbox.Event) storeResult {
	p := &pendingStore{ctx: ctx, event: event, done: make(chan storeResult, 1)}
	if err := g.enqueue(p); err != nil {
		return storeResult{err: err}
	}
	select {
	case r := <-p.done:
		return r
	case <-ctx.Done():
		return storeResult{err: fmt.Errorf("store webhook: %w", ctx.Err())}
	}
}

// errClosed answers a request that arrives after close.
var errClosed = errors.New("store webhook: receiver closed")

// enqueue queues p for the committers unless they are closing. While the
// queue is full it waits, holding the read lock: the committers, still
// running, make room, and close waits for it.
func (g *groupCommitter) enqueue(p *pendingStore) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return errClosed
	}
	select {
	case g.queue <- p:
		return nil
	case <-p.ctx.Done():
		return fmt.Errorf("store webhook: queue full: %w", p.ctx.Err())
	}
}

// close stops the committers once the queued requests are answered; a
// request submitted after it began is answered errClosed at once.
func (g *groupCommitter) close() {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return
	}
	g.closed = true
	g.mu.Unlock()
	close(g.stop)
	g.wg.Wait()
}

func (g *groupCommitter) run() {
	for {
		var first *pendingStore
		select {
		case first = <-g.queue:
		case <-g.stop:
			// Answer whatever is still queued before leaving.
			for {
				select {
				case p := <-g.queue:
					g.commit([]*pendingStore{p})
				default:
					return
				}
			}
		}
		batch := []*pendingStore{first}
	fill:
		for len(batch) < g.maxBatch {
			select {
			case p := <-g.queue:
				batch = append(batch, p)
			default:
				break fill
			}
		}
		g.commit(batch)
	}
}

// commit commits a batch, skipping requests that have already given up, and
// answers each request in it.
func (g *groupCommitter) commit(batch []*pendingStore) {
	live := batch[:0]
	var deadline time.Time
	for _, p := range batch {
		if p.ctx.Err() != nil {
			continue // already answered 503; Polar will retry it
		}
		live = append(live, p)
		if d, ok := p.ctx.Deadline(); ok && d.After(deadline) {
			deadline = d
		}
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	events := make([]*inbox.Event, len(live))
	for i, p := range live {
		events[i] = p.event
	}
	inserted, err := commitEvents(ctx, g.pool, g.inserter, events)
	if err == nil {
		for i, p := range live {
			p.done <- storeResult{inserted: inserted[i]}
		}
		return
	}
	if len(live) == 1 {
		live[0].done <- storeResult{err: err}
		return
	}
	// Isolate the failure: one bad row must not fail its batch-mates.
	g.logger.Warn("group commit failed, retrying its events one by one", "events", len(live), "error", err)
	for _, p := range live {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		one, err := commitEvents(ctx, g.pool, g.inserter, []*inbox.Event{p.event})
		cancel()
		if err != nil {
			p.done <- storeResult{err: err}
			continue
		}
		p.done <- storeResult{inserted: one[0]}
	}
}
