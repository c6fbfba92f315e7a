package spool

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// inboxCommit stores events in pool's inbox in one transaction, as the
// receiver's does (without its jobs): a webhook id stored already is dropped.
func inboxCommit(pool *pgxpool.Pool) CommitFunc {
	return func(ctx context.Context, events []*inbox.Event) error {
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := inbox.Insert(ctx, tx, events...)
			return err
		})
	}
}

// inboxBodies are the stored bodies by webhook id, and how many rows there are.
func inboxBodies(t *testing.T, pool *pgxpool.Pool) (map[string][]byte, int) {
	t.Helper()
	rows, err := pool.Query(t.Context(), `SELECT webhook_id, body FROM webhook_inbox`)
	if err != nil {
		t.Fatal(err)
	}
	bodies := make(map[string][]byte)
	n := 0
	for rows.Next() {
		var id string
		var body []byte
		if err := rows.Scan(&id, &body); err != nil {
			t.Fatal(err)
		}
		bodies[id] = body
		n++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return bodies, n
}

// A delivery spooled twice, and one spooled and also redelivered straight
// into the inbox once the database was back, are each stored once; every
// other spooled one is stored too.
func TestDrainIntoInboxStoresEachWebhookOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	s := open(t, t.TempDir(), Options{})
	spooled := []*inbox.Event{event("msg_a", 300), event("msg_b", 300), event("msg_b", 300),
		event("msg_c", 300), event("msg_d", 300), event("msg_e", 300)}
	spooled[0].Body = append(spooled[0].Body, "\x00\xff bytes as signed"...)
	appendAll(t, s, spooled...)
	direct := event("msg_c", 300)
	direct.Body = append(direct.Body, "delivered directly"...)
	if _, err := inbox.Insert(t.Context(), pool, direct); err != nil {
		t.Fatal(err)
	}

	total := 0
	for {
		n, err := s.Drain(t.Context(), inboxCommit(pool), 2)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		total += n
	}
	bodies, rows := inboxBodies(t, pool)
	want := map[string][]byte{"msg_a": spooled[0].Body, "msg_b": spooled[1].Body, "msg_c": direct.Body,
		"msg_d": spooled[4].Body, "msg_e": spooled[5].Body}
	if total != len(spooled) || rows != len(want) {
		t.Fatalf("drained %d of %d spooled into %d inbox rows, want %d", total, len(spooled), rows, len(want))
	}
	for id, body := range want {
		if !bytes.Equal(bodies[id], body) {
			t.Errorf("inbox body of %s is %q, want %q", id, bodies[id], body)
		}
	}
	if left := storedIDs(t, s); len(left) != 0 {
		t.Fatalf("committed events still spooled: %v", left)
	}
}

// Run drains what an earlier process spooled, retries while the database
// fails, logging that once, drains as soon as it works again, and then
// drains each new append.
func TestRunDrainsWhenTheDatabaseWorksAgain(t *testing.T) {
	pool := testdb.NewPool(t)
	dir := t.TempDir()
	const pii = "customer@example.com"
	earlier := open(t, dir, Options{})
	for i := range 5 {
		e := event(fmt.Sprintf("earlier_%d", i), 200)
		e.Body = append(e.Body, pii...)
		appendAll(t, earlier, e)
	}
	earlier.Close()

	// The inbox table is gone: every commit fails in the database.
	if _, err := pool.Exec(t.Context(), `ALTER TABLE webhook_inbox RENAME TO webhook_inbox_away`); err != nil {
		t.Fatal(err)
	}
	var logs testkit.SyncBuffer
	s := open(t, dir, Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	var attempts atomic.Int64
	commit := func(ctx context.Context, events []*inbox.Event) error {
		attempts.Add(1)
		return inboxCommit(pool)(ctx, events)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx, commit, RunOptions{MaxEvents: 2, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	}()
	defer func() { cancel(); <-done }()

	testkit.Within(t, 10*time.Second, "retries", func() bool { return attempts.Load() >= 4 })
	if st := stats(t, s); st.Events != 5 {
		t.Fatalf("while the database fails the spool holds %d events, want 5", st.Events)
	}
	if got := strings.Count(logs.String(), "cannot drain"); got != 1 {
		t.Fatalf("%d failures logged %d times, want once:\n%s", attempts.Load(), got, logs.String())
	}

	if _, err := pool.Exec(t.Context(), `ALTER TABLE webhook_inbox_away RENAME TO webhook_inbox`); err != nil {
		t.Fatal(err)
	}
	testkit.Within(t, 10*time.Second, "the spool to drain", func() bool { return stats(t, s).Events == 0 })
	if _, rows := inboxBodies(t, pool); rows != 5 {
		t.Fatalf("%d inbox rows after draining 5", rows)
	}

	// Now Run waits for appends, and only for them: no timer is running.
	appendAll(t, s, event("later", 200))
	testkit.Within(t, 10*time.Second, "the new append to drain", func() bool { return stats(t, s).Events == 0 })
	if bodies, rows := inboxBodies(t, pool); rows != 6 || bodies["later"] == nil {
		t.Fatalf("%d inbox rows, later stored %v; want 6 with later", rows, bodies["later"] != nil)
	}
	log := logs.String()
	if strings.Count(log, "draining again") != 1 || !strings.Contains(log, "spool: drained") {
		t.Errorf("want one recovery and a drained line in the log:\n%s", log)
	}
	if strings.Contains(log, pii) {
		t.Errorf("the log holds payload data:\n%s", log)
	}
}
