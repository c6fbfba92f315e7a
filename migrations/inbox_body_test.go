package migrations_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// TestInboxUpdateLeavesTheBody checks that marking a stored Polar order
// processed, as the workers do, writes a new row version without its body
// (00009_inbox_body_out_of_line.sql): the update's WAL stays far below the
// body's compressed size, and the body reads back byte-exact.
func TestInboxUpdateLeavesTheBody(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()

	body := testkit.Event(t, "order.updated.paid.json", testkit.Sale{
		Workspace: "8b1c3f6e-2d4a-4f5b-9c7d-1e2f3a4b5c6d", Session: "0f9e8d7c-6b5a-4c3d-8e2f-1a0b9c8d7e6f",
		PolarCheckout: "chk_1", Order: "ord_1",
	}, nil)
	// Least of three: a checkpoint between insert and update would add a
	// full-page image to one of them.
	least := int64(1 << 30)
	for i := range 3 {
		e := &inbox.Event{WebhookID: fmt.Sprintf("msg_body_%d", i), EventType: "order.updated", Status: inbox.StatusPending,
			WebhookTimestamp: time.Now(), Body: body}
		if _, err := inbox.Insert(ctx, conn, e); err != nil {
			t.Fatal(err)
		}
		// EXPLAIN's WAL figures are this statement's own, whatever else the
		// cluster writes meanwhile.
		var plan []struct {
			Plan struct {
				WALBytes int64 `json:"WAL Bytes"`
			}
		}
		var raw []byte
		if err := conn.QueryRow(ctx, `EXPLAIN (ANALYZE, WAL, FORMAT JSON)
			UPDATE webhook_inbox SET status = 'processed', processed_at = now(), job_id = 1, error = 'booked' WHERE id = $1`, e.ID).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &plan); err != nil || len(plan) != 1 {
			t.Fatalf("EXPLAIN output %s: %v", raw, err)
		}
		wal := plan[0].Plan.WALBytes
		least = min(least, wal)
		got, err := inbox.GetStored(ctx, conn, e.Key())
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Body) != string(body) || got.Status != inbox.StatusProcessed {
			t.Fatalf("row %d read back with status %q and a body of %d bytes, want processed and the %d bytes stored", e.ID, got.Status, len(got.Body), len(body))
		}
	}
	t.Logf("body %d bytes; marking its row processed wrote %d bytes of WAL", len(body), least)
	if limit := int64(len(body)) / 4; least > limit {
		t.Errorf("marking a row processed wrote %d bytes of WAL, want at most %d: is the %d-byte body rewritten with the row?", least, limit, len(body))
	}
}

// TestInboxUpdateIsHOT checks that marking rows processed changes no
// indexed column and finds room on their pages (00010_inbox_hot_updates.sql):
// the updates are HOT and touch no index.
func TestInboxUpdateIsHOT(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	// More rows than one half-filled page holds.
	const n = 40
	ids := make([]int64, n)
	notes := make([]string, n)
	for i := range n {
		e := &inbox.Event{WebhookID: fmt.Sprintf("msg_hot_%d", i), EventType: "order.updated", Status: inbox.StatusPending,
			WebhookTimestamp: time.Now(), Body: []byte(`{"type":"order.updated","data":{}}`)}
		if _, err := inbox.Insert(ctx, tx, e); err != nil {
			t.Fatal(err)
		}
		ids[i], notes[i] = e.ID, "booked"
	}
	if err := inbox.MarkProcessedMany(ctx, tx, 1, ids, notes); err != nil {
		t.Fatal(err)
	}
	var updated, hot int
	if err := tx.QueryRow(ctx, `SELECT pg_stat_get_xact_tuples_updated('webhook_inbox'::regclass),
		pg_stat_get_xact_tuples_hot_updated('webhook_inbox'::regclass)`).Scan(&updated, &hot); err != nil {
		t.Fatal(err)
	}
	// Within one transaction no old version can be pruned to make room, so
	// a full page's last rows may not fit; with an index on status none is
	// HOT.
	if updated != n || hot < n*3/4 {
		t.Errorf("%d of %d rows updated, %d of them HOT; want at least %d HOT", updated, n, hot, n*3/4)
	}
}
