package migrations_test

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/migrations"
)

// TestInboxCountsStayExact migrates 00012 in (its index built in parallel)
// while writers insert, mark, refuse, replay and delete inbox rows and the
// counts are folded, and
// checks that the counts then equal a count of the table: the first count
// neither misses nor doubles what the writers did around it. After a
// TRUNCATE they start again from 0. Reading them does not read
// webhook_inbox.
func TestInboxCountsStayExact(t *testing.T) {
	pool := testdb.NewPoolWith(t, func(c *pgxpool.Config) {
		c.MaxConns = 10
		// Indexes on the inbox are built in parallel, as a large inbox's
		// would be: an index function a parallel worker cannot run fails.
		for k, v := range map[string]string{"min_parallel_table_scan_size": "0",
			"max_parallel_maintenance_workers": "2", "maintenance_work_mem": "256MB"} {
			c.ConnConfig.RuntimeParams[k] = v
		}
	})
	ctx := t.Context()
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	provider, err := migrations.NewProvider(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provider.DownTo(ctx, 11); err != nil {
		t.Fatalf("migrate down to 11: %v", err)
	}

	var seq atomic.Int64
	insert := func(status string, n int) {
		var events []*inbox.Event
		for range n {
			id := fmt.Sprintf("msg_count_%d", seq.Add(1))
			events = append(events, &inbox.Event{WebhookID: id, EventType: "order.paid", Status: status,
				WebhookTimestamp: time.Now(), Body: []byte(`{}`)})
		}
		events = append(events, events[0]) // a duplicate: not inserted
		if _, err := inbox.Insert(ctx, pool, events...); err != nil {
			t.Error(err)
		}
	}
	insert(inbox.StatusPending, 300)
	insert(inbox.StatusIgnored, 100)

	// What the receiver, the workers, replays and the retention sweep do,
	// each in its own statements, until stopped.
	stop := make(chan struct{})
	var writers sync.WaitGroup
	write := func(step func() error) {
		writers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := step(); err != nil && ctx.Err() == nil {
					t.Error(err)
					return
				}
			}
		})
	}
	write(func() error { insert(inbox.StatusPending, 5); insert(inbox.StatusInvalid, 1); return nil })
	write(func() error {
		var ids []int64
		rows, err := pool.Query(ctx, `SELECT id FROM webhook_inbox WHERE status = 'pending' ORDER BY random() LIMIT 4`)
		if err == nil {
			for rows.Next() {
				var id int64
				if err := rows.Scan(&id); err != nil {
					return err
				}
				ids = append(ids, id)
			}
			err = rows.Err()
		}
		if err != nil || len(ids) == 0 {
			return err
		}
		return inbox.MarkProcessedMany(ctx, pool, 1, ids, make([]string, len(ids)))
	})
	write(func() error {
		_, err := pool.Exec(ctx, `UPDATE webhook_inbox SET status = CASE WHEN status = 'pending' THEN 'refused' ELSE 'pending' END
			WHERE id IN (SELECT id FROM webhook_inbox WHERE status IN ('pending', 'processed') ORDER BY random() LIMIT 2)`)
		return err
	})
	write(func() error {
		_, err := pool.Exec(ctx, `DELETE FROM webhook_inbox WHERE id IN (SELECT id FROM webhook_inbox WHERE status <> 'pending' ORDER BY random() LIMIT 3)`)
		return err
	})
	var migrated atomic.Bool
	write(func() error {
		if !migrated.Load() {
			return nil
		}
		return inbox.FoldCounts(ctx, pool)
	})

	time.Sleep(200 * time.Millisecond) // the writers are under way
	_, upErr := provider.Up(ctx)
	migrated.Store(upErr == nil)
	time.Sleep(300 * time.Millisecond) // and go on with the triggers in place
	close(stop)
	writers.Wait()
	if upErr != nil {
		t.Fatalf("migrate up: %v", upErr)
	}

	check := func(when string) {
		t.Helper()
		got, err := inbox.Counts(ctx, pool)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]int64{}
		rows, err := pool.Query(ctx, `SELECT status, count(*) FROM webhook_inbox GROUP BY status`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var s string
			var n int64
			if err := rows.Scan(&s, &n); err != nil {
				t.Fatal(err)
			}
			want[s] = n
		}
		for _, s := range []string{inbox.StatusPending, inbox.StatusProcessed, inbox.StatusIgnored, inbox.StatusInvalid, inbox.StatusRefused} {
			if got[s] != want[s] {
				t.Errorf("%s: inbox.Counts()[%q] = %d, want %d (count(*))", when, s, got[s], want[s])
			}
		}
		t.Logf("%s: %v", when, got)
		var changes int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox_count_changes`).Scan(&changes); err != nil {
			t.Fatal(err)
		}
		if changes != 0 {
			t.Errorf("%s: %d changes left after Counts, want all folded", when, changes)
		}
	}
	check("after the migration under writes")

	if _, err := pool.Exec(ctx, `TRUNCATE webhook_inbox`); err != nil {
		t.Fatal(err)
	}
	insert(inbox.StatusPending, 3)
	check("after TRUNCATE")

	// The counts are read without touching webhook_inbox, whatever its size.
	cfg := pool.Config()
	seen := &testkit.Statements{}
	cfg.ConnConfig.Tracer = seen
	traced, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer traced.Close()
	if _, err := inbox.Counts(ctx, traced); err != nil {
		t.Fatal(err)
	}
	for _, q := range seen.Reset() {
		if strings.HasPrefix(strings.TrimSpace(q), "SELECT") {
			var plan strings.Builder
			rows, err := pool.Query(ctx, `EXPLAIN `+q)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var line string
				if err := rows.Scan(&line); err != nil {
					t.Fatal(err)
				}
				plan.WriteString(line + "\n")
			}
			if strings.Contains(plan.String(), " on webhook_inbox ") {
				t.Errorf("reading the inbox counts scans webhook_inbox:\n%s", plan.String())
			}
		}
	}
}

// TestInboxUpdatesStayHOT checks that the worker's update of inbox rows
// stays HOT, touching no index (00010): the subject index 00012 adds is on
// the body, which the update leaves, and the counts are kept by triggers,
// not an index on status.
func TestInboxUpdatesStayHOT(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	body := testkit.Event(t, "order.updated.paid.json", testkit.Sale{
		Workspace: "8b1c3f6e-2d4a-4f5b-9c7d-1e2f3a4b5c6d", Session: "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f",
		PolarCheckout: "chk_hot", Order: "ord_hot",
	}, nil)
	var events []*inbox.Event
	for i := range 100 {
		events = append(events, &inbox.Event{WebhookID: fmt.Sprintf("msg_hot_%d", i), EventType: "order.updated",
			Status: inbox.StatusPending, WebhookTimestamp: time.Now(), Body: body})
	}
	if _, err := inbox.Insert(ctx, pool, events...); err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	for _, e := range events {
		if err := inbox.MarkProcessed(ctx, tx, e.ID, 1, "booked"); err != nil {
			t.Fatal(err)
		}
	}
	var updated, hot int64
	if err := tx.QueryRow(ctx, `SELECT pg_stat_get_xact_tuples_updated('webhook_inbox'::regclass),
		pg_stat_get_xact_tuples_hot_updated('webhook_inbox'::regclass)`).Scan(&updated, &hot); err != nil {
		t.Fatal(err)
	}
	// An index on a column the update changes makes none HOT; a row whose
	// page is full moves (about one in ten here, as in make bench).
	if updated != int64(len(events)) || hot < updated*3/4 {
		t.Errorf("marking %d rows processed: %d updates, %d of them HOT; want most HOT", len(events), updated, hot)
	}
}
