package retention_test

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/retention"
)

// row inserts an inbox row received age ago, linked to a River job in
// jobState unless that is empty ("gone" links to a job River cleaned up).
func row(t *testing.T, pool *pgxpool.Pool, webhookID, status string, age time.Duration, jobState string) {
	t.Helper()
	ctx := context.Background()
	var jobID *int64
	switch jobState {
	case "":
	case "gone":
		gone := int64(987654321)
		jobID = &gone
	default:
		var id int64
		if err := pool.QueryRow(ctx, `INSERT INTO river_job (kind, args, state, max_attempts, queue, priority, finalized_at)
			VALUES ('polar_event', '{}', $1::river_job_state, 5, 'not_worked_here', 1,
			        CASE WHEN $1 IN ('completed', 'cancelled', 'discarded') THEN now() END) RETURNING id`, jobState).Scan(&id); err != nil {
			t.Fatal(err)
		}
		jobID = &id
	}
	if _, err := pool.Exec(ctx, `INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, received_at, body, job_id)
		VALUES ($1, 'order.paid', $2, now(), now() - make_interval(secs => $3), '{}', $4)`,
		webhookID, status, age.Seconds(), jobID); err != nil {
		t.Fatal(err)
	}
}

func remaining(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT webhook_id FROM webhook_inbox WHERE webhook_id NOT LIKE 'bulk_%'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

const day = 24 * time.Hour

func seed(t *testing.T, pool *pgxpool.Pool) {
	old := 31 * day
	row(t, pool, "old_processed", "processed", old, "completed")
	row(t, pool, "old_ignored", "ignored", old, "")
	row(t, pool, "old_invalid", "invalid", old, "")
	row(t, pool, "old_refused", "refused", old, "cancelled") // a job refused it for good
	row(t, pool, "old_job_cleaned", "processed", old, "gone")
	row(t, pool, "old_discarded", "processed", old, "discarded")
	row(t, pool, "keep_pending", "pending", old, "discarded")
	row(t, pool, "keep_pending_nojob", "pending", old, "")
	row(t, pool, "keep_recent", "processed", 29*day, "completed")
	for _, st := range []string{"available", "running", "retryable", "scheduled", "pending"} {
		row(t, pool, "keep_job_"+st, "processed", old, st)
	}
}

var kept = []string{"keep_job_available", "keep_job_pending", "keep_job_retryable", "keep_job_running",
	"keep_job_scheduled", "keep_pending", "keep_pending_nojob", "keep_recent"}

func TestSweepDeletesOnlyOldFinishedRows(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := context.Background()
	seed(t, pool)
	// More than two batches of deletable rows.
	if _, err := pool.Exec(ctx, `INSERT INTO webhook_inbox (webhook_id, status, webhook_timestamp, received_at, body)
		SELECT 'bulk_' || g, 'processed', now(), now() - interval '40 days', '{}' FROM generate_series(1, 2500) g`); err != nil {
		t.Fatal(err)
	}
	n, err := retention.Sweep(ctx, pool, 30*day, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if n != 2506 {
		t.Errorf("deleted %d rows, want 2506", n)
	}
	if got := remaining(t, pool); !equal(got, kept) {
		t.Errorf("remaining rows = %v, want %v", got, kept)
	}
	var bulk int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox WHERE webhook_id LIKE 'bulk_%'`).Scan(&bulk); err != nil {
		t.Fatal(err)
	}
	if bulk != 0 {
		t.Errorf("%d bulk rows left", bulk)
	}
	if n, err := retention.Sweep(ctx, pool, 30*day, 1000); err != nil || n != 0 {
		t.Errorf("second sweep: %d, %v; want nothing left to delete", n, err)
	}
}

// TestPeriodicJobRunsOnStart registers the sweep as relay serve does and
// waits for the run at start to delete the old rows.
func TestPeriodicJobRunsOnStart(t *testing.T) {
	pool := testdb.NewPool(t)
	seed(t, pool)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	workers := river.NewWorkers()
	river.AddWorker(workers, retention.NewWorker(pool, retention.Options{Keep: 30 * day, Logger: logger}))
	testkit.StartRiver(t, pool, &river.Config{
		Logger:       logger,
		Queues:       map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 2}},
		Workers:      workers,
		PeriodicJobs: []*river.PeriodicJob{retention.PeriodicJob()},
	})
	deadline := time.Now().Add(30 * time.Second)
	for !equal(remaining(t, pool), kept) {
		if time.Now().After(deadline) {
			t.Fatalf("after 30s remaining rows = %v, want %v", remaining(t, pool), kept)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
