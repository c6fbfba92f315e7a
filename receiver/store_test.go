package receiver

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/spool"
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

// A read-only server (a primary demoted to standby by a switchover, or one
// set default_transaction_read_only) fails a commit with SQLSTATE 25006.
// That is the database being unavailable, not the events being bad: Commit
// must not say spool.ErrRefused, which would set the events aside for an
// operator instead of keeping them for the primary. A data exception is
// refused, as before.
func TestReadOnlyDatabaseIsUnavailableNotRefusal(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPoolWith(t, func(cfg *pgxpool.Config) {
		cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	})
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	event := &inbox.Event{WebhookID: "msg_demoted", EventType: "order.paid", Status: inbox.StatusPending, WebhookTimestamp: time.Now(), Body: []byte(`{}`)}
	err = Commit(ctx, pool, client, []*inbox.Event{event})
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("Commit on a read-only server: %v, want SQLSTATE 25006", err)
	}
	if errors.Is(err, spool.ErrRefused) {
		t.Errorf("Commit on a read-only server is refused for its data (%v): the spool would set it aside", err)
	}
	for code, refused := range map[string]bool{
		"25006": false, // read_only_sql_transaction
		"57P01": false, // admin_shutdown: the server stops, or a switchover restarts it
		"57P03": false, // cannot_connect_now: starting up, or a standby not yet accepting connections
		"08006": false, // connection_failure
		"40001": false, // serialization_failure
		"22P02": true,  // invalid_text_representation
		"23514": true,  // check_violation
	} {
		if got := refusedForItsData(fmt.Errorf("commit: %w", &pgconn.PgError{Code: code})); got != refused {
			t.Errorf("refusedForItsData(SQLSTATE %s) = %v, want %v", code, got, refused)
		}
	}
}
