package jobs_test

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/ledger"
)

// TestPendingPassOverThousandsOfSales: 5,300 pending sales, every one due,
// under relay's job timeout (RELAY_JOB_TIMEOUT, 5 s) and the pass's own
// default budget. A pass ends within its budget, completed at its first
// attempt with no error (never retried, never discarded); the next pass
// goes on with the sales the first did not reach and tries none of those
// the first did; every sale tried waits for its next attempt, doubling,
// up to 50 s while a wallet setting could fix it and up to an hour when
// nothing can (paid in another currency, session deleted). While another
// pass holds the lock, a pass does nothing.
func TestPendingPassOverThousandsOfSales(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := context.Background()
	shop := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	const sales = 5300
	// Every tenth sale was paid in GBP, one in fifty lost its session; each
	// has been tried 1 to 10 times before, and is due.
	if _, err := pool.Exec(ctx, `
		WITH s AS (
			INSERT INTO inventory_checkout_sessions (id, ws_id, status, total_amount, currency, polar_environment)
			SELECT gen_random_uuid(), $1, 'completed', 4950, 'usd', 'production' FROM generate_series(1, $2)
			RETURNING id),
		n AS (SELECT id, row_number() OVER () AS i FROM s)
		INSERT INTO pending_bookings (session_id, ws_id, amount, currency, payment_currency, reason, note, paid_at,
			attempts, first_attempt_at, last_attempt_at, next_attempt_at)
		SELECT id, $1, 4950, 'USD', CASE WHEN i % 10 = 0 THEN 'GBP' ELSE 'USD' END,
			CASE WHEN i % 10 = 0 THEN 'currency' ELSE 'no_wallet' END, '', now() - interval '1 day',
			1 + i % 10, now() - interval '1 day', now() - interval '1 hour', now() - interval '1 minute' + i * interval '1 millisecond'
		FROM n`, shop.WS, sales); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM inventory_checkout_sessions
		WHERE id IN (SELECT session_id FROM pending_bookings WHERE payment_currency = 'USD' ORDER BY next_attempt_at LIMIT $1 OFFSET 1000)`, sales/50); err != nil {
		t.Fatal(err)
	}

	logs := &testkit.SyncBuffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	workers := river.NewWorkers()
	river.AddWorker(workers, jobs.NewPendingWorker(pool, nil, logger))
	client := testkit.StartRiver(t, pool, &river.Config{
		Logger:  logger,
		Queues:  map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 2}},
		Workers: workers,
		// relay serve's defaults (RELAY_JOB_TIMEOUT, RELAY_RESCUE_AFTER,
		// RELAY_MAX_ATTEMPTS).
		JobTimeout:           5 * time.Second,
		RescueStuckJobsAfter: 6 * time.Second,
		MaxAttempts:          12,
	})

	tried := func(since time.Time) (n int) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pending_bookings WHERE last_attempt_at >= $1`, since).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	pass := func() (time.Time, *rivertype.JobRow) {
		t.Helper()
		start := time.Now()
		res, err := client.Insert(ctx, jobs.PostPendingArgs{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Until it is finished, or has failed once.
		var job *rivertype.JobRow
		testkit.Within(t, 30*time.Second, "the pass to finish", func() bool {
			job, err = client.JobGet(ctx, res.Job.ID)
			return err == nil && (job.FinalizedAt != nil || len(job.Errors) > 0)
		})
		return start, job
	}

	// Another pass runs: this one does nothing.
	func() {
		holder, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer holder.Release()
		if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, jobs.PendingPassLock); err != nil {
			t.Fatal(err)
		}
		defer holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, jobs.PendingPassLock) //nolint:errcheck
		start, job := pass()
		if n := tried(start); n != 0 || job.State != rivertype.JobStateCompleted {
			t.Fatalf("a pass while another holds the lock tried %d sales and ended %s (errors %v), want none, completed", n, job.State, job.Errors)
		}
	}()

	start, job := pass()
	took := job.FinalizedAt.Sub(*job.AttemptedAt)
	first := tried(start)
	t.Logf("first pass: %d of %d sales in %v (budget %v)", first, sales, took.Round(time.Millisecond), jobs.PendingPassBudget)
	if job.State != rivertype.JobStateCompleted || job.Attempt != 1 || len(job.Errors) != 0 {
		t.Fatalf("first pass ended %s at attempt %d with errors %v, want completed at its first attempt without any", job.State, job.Attempt, job.Errors)
	}
	if took > jobs.PendingPassBudget+time.Second {
		t.Errorf("first pass took %v, want within its budget (%v) and the sale it was on", took, jobs.PendingPassBudget)
	}
	if first == 0 {
		t.Fatal("first pass tried no sale")
	}
	var firstIDs []string
	if err := pool.QueryRow(ctx, `SELECT array_agg(session_id::text) FROM pending_bookings WHERE last_attempt_at >= $1`, start).Scan(&firstIDs); err != nil {
		t.Fatal(err)
	}

	between := time.Now()
	_, job = pass()
	second := tried(between)
	if job.State != rivertype.JobStateCompleted || job.Attempt != 1 || len(job.Errors) != 0 {
		t.Fatalf("second pass ended %s at attempt %d with errors %v, want completed at its first attempt without any", job.State, job.Attempt, job.Errors)
	}
	// Tried by both passes: none.
	var twice int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM pending_bookings WHERE last_attempt_at >= $1 AND session_id = ANY($2::uuid[])`,
		between, firstIDs).Scan(&twice); err != nil {
		t.Fatal(err)
	}
	if twice != 0 {
		t.Errorf("second pass tried %d of the sales the first had tried, want none: they are not due", twice)
	}
	t.Logf("second pass: %d sales", second)
	switch {
	case first == sales && second != 0:
		t.Errorf("second pass tried %d sales, want none: the first tried them all and none is due", second)
	case first < sales && (second == 0 || first+second > sales):
		t.Errorf("second pass tried %d sales after the first's %d of %d, want it to go on with the others only", second, first, sales)
	}

	// Every sale tried waits for its next attempt as its kind allows.
	rows, err := pool.Query(ctx, `
		SELECT b.attempts, b.payment_currency <> b.currency OR NOT EXISTS (SELECT 1 FROM inventory_checkout_sessions s WHERE s.id = b.session_id),
			extract(epoch FROM b.next_attempt_at - b.last_attempt_at)::float8
		FROM pending_bookings b WHERE b.last_attempt_at >= $1`, start)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	capped := map[bool]int{}
	n := 0
	for rows.Next() {
		var (
			attempts int
			never    bool
			secs     float64
		)
		if err := rows.Scan(&attempts, &never, &secs); err != nil {
			t.Fatal(err)
		}
		n++
		ceiling := ledger.RetryFixable
		if never {
			ceiling = ledger.RetryNever
		}
		want := min(ledger.RetryBase<<(attempts-1), ceiling)
		if got := time.Duration(secs * float64(time.Second)); got < want-time.Second || got > want+time.Second {
			t.Fatalf("a sale tried %d times (never bookable: %v) waits %v for its next attempt, want %v", attempts, never, got, want)
		}
		if want == ceiling {
			capped[never]++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n != first+second || capped[true] == 0 || capped[false] == 0 {
		t.Errorf("%d sales checked (want %d), %d capped at %v, %d at %v: want some of each", n, first+second,
			capped[false], ledger.RetryFixable, capped[true], ledger.RetryNever)
	}
}
