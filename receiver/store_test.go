package receiver

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// storeDeps is what commitEvents needs: a fresh database and an
// insert-only River client on it.
func storeDeps(t *testing.T) (*pgxpool.Pool, *river.Client[pgx.Tx]) {
	t.Helper()
	pool := testdb.NewPool(t)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return pool, client
}

// TestCommitEventsWithDuplicatesEnqueuesOnlyNewEvents commits a batch whose
// jobs went out before the inbox said which events were new: one event was
// stored before, one comes twice in the batch. The batch must fall back to
// inserting first, so that exactly the new pending events get jobs.
func TestCommitEventsWithDuplicatesEnqueuesOnlyNewEvents(t *testing.T) {
	ctx := context.Background()
	pool, client := storeDeps(t)
	event := func(id, status string) *inbox.Event {
		return &inbox.Event{WebhookID: id, EventType: "order.paid", Status: status, WebhookTimestamp: time.Now(), Body: []byte(`{}`)}
	}
	if _, err := commitEvents(ctx, pool, client, []*inbox.Event{event("msg_old", inbox.StatusPending)}); err != nil {
		t.Fatal(err)
	}

	batch := []*inbox.Event{
		event("msg_new", inbox.StatusPending),
		event("msg_old", inbox.StatusPending),
		event("msg_ignored", inbox.StatusIgnored),
		event("msg_new", inbox.StatusPending),
		event("msg_other", inbox.StatusPending),
	}
	inserted, err := commitEvents(ctx, pool, client, batch)
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, false, true, false, true}; !slices.Equal(inserted, want) {
		t.Fatalf("inserted = %v, want %v", inserted, want)
	}
	var rows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 4 {
		t.Errorf("%d inbox rows, want 4", rows)
	}
	// One job event each for msg_old (from the first commit), msg_new and
	// msg_other; none for the ignored event or the duplicates.
	if n := testkit.EnqueuedEvents(t, pool); n != 3 {
		t.Errorf("jobs carry %d events, want 3", n)
	}
	if stat := pool.Stat(); stat.AcquiredConns() != 0 {
		t.Errorf("%d connections still acquired", stat.AcquiredConns())
	}
}

// TestCommitEventsWithoutPendingEvents stores events that get no job: the
// transaction is begun by the commit itself.
func TestCommitEventsWithoutPendingEvents(t *testing.T) {
	ctx := context.Background()
	pool, client := storeDeps(t)
	e := &inbox.Event{WebhookID: "msg_ignored", EventType: "customer.created", Status: inbox.StatusIgnored, WebhookTimestamp: time.Now(), Body: []byte(`{}`)}
	for i, want := range []bool{true, false} {
		inserted, err := commitEvents(ctx, pool, client, []*inbox.Event{e})
		if err != nil {
			t.Fatal(err)
		}
		if inserted[0] != want {
			t.Fatalf("commit %d: inserted = %v, want %v", i, inserted[0], want)
		}
	}
	if n := testkit.EnqueuedEvents(t, pool); n != 0 {
		t.Errorf("jobs carry %d events, want none", n)
	}
	if stat := pool.Stat(); stat.AcquiredConns() != 0 {
		t.Errorf("%d connections still acquired", stat.AcquiredConns())
	}
}
