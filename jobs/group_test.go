package jobs_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// TestSingleEventJobsArrivingTogetherShareATransaction: the first attempts
// of single-event jobs (a group commit of one webhook) that arrive while
// every turn is taken are worked as one group: one transaction books every
// sale, completes every job and marks every inbox row, each by its own
// job. Without groups, five jobs are five transactions.
func TestSingleEventJobsArrivingTogetherShareATransaction(t *testing.T) {
	pool := testdb.NewPool(t)
	sys, shops := startSystem(t, pool, systemOpts{batchTx: 1}), seedShops(t, pool, 5)
	ctx := context.Background()
	release := sys.batches[0].HoldTurns()
	var ids []string
	var singles []map[string][]byte
	for i, s := range shops {
		id := fmt.Sprintf("msg_%d", i)
		ids = append(ids, id)
		singles = append(singles, map[string][]byte{id: event(t, "order.paid.json", s, fmt.Sprintf("ord_%d", i), nil)})
	}
	storeBatches(t, sys, singles...)
	testkit.Within(t, 30*time.Second, "the five single-event jobs running", func() bool {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'polar_event' AND state = 'running'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == len(shops)
	})
	release()
	wantBookedOnce(t, sys, ids, shops[:])
	wantOneTransaction(t, pool, "polar_event")
}

// wantBookedOnce checks that the jobs of the webhooks ids completed and
// that every shop's sale was booked once.
func wantBookedOnce(t *testing.T, sys *system, ids []string, shops []testkit.Shop) {
	t.Helper()
	for id, state := range sys.waitJobs(t, ids...) {
		if state != "completed" {
			t.Errorf("%s: %s, want completed", id, state)
		}
	}
	for i, s := range shops {
		if n := len(bookings(t, sys.pool, s)); n != 1 {
			t.Errorf("shop %d: %d bookings, want 1", i, n)
		}
	}
}

// wantOneTransaction checks that every booking, every job of kind and every
// inbox row was written by one and the same transaction (one xmin), each
// inbox row marked by a job that carried it, and each job finalized.
func wantOneTransaction(t *testing.T, pool *pgxpool.Pool, kind string) {
	t.Helper()
	var txs, jobTxs, inboxTxs, unfinalized, misfiled int
	if err := pool.QueryRow(context.Background(), `SELECT
			(SELECT count(DISTINCT xmin::text) FROM wallet_transactions),
			(SELECT count(DISTINCT xmin::text) FROM river_job WHERE kind = $1),
			(SELECT count(DISTINCT xmin::text) FROM webhook_inbox),
			(SELECT count(*) FROM river_job WHERE kind = $1 AND finalized_at IS NULL),
			(SELECT count(*) FROM webhook_inbox i LEFT JOIN river_job j ON j.id = i.job_id
				WHERE j.id IS NULL OR NOT j.args::text LIKE '%"' || i.webhook_id || '"%')`, kind).Scan(&txs, &jobTxs, &inboxTxs, &unfinalized, &misfiled); err != nil {
		t.Fatal(err)
	}
	if txs != 1 || jobTxs != 1 || inboxTxs != 1 {
		t.Errorf("sales booked in %d transactions, %s jobs completed in %d and inbox rows marked in %d; want 1, the same", txs, kind, jobTxs, inboxTxs)
	}
	if unfinalized != 0 || misfiled != 0 {
		t.Errorf("%d completed jobs without finalized_at, %d inbox rows not marked by a job that carried them; want none", unfinalized, misfiled)
	}
	var same bool
	if err := pool.QueryRow(context.Background(), `SELECT
			(SELECT min(xmin::text) FROM wallet_transactions) = (SELECT min(xmin::text) FROM river_job WHERE kind = $1)`, kind).Scan(&same); err != nil {
		t.Fatal(err)
	}
	if !same {
		t.Errorf("the sales were booked and the %s jobs completed in different transactions, want the same", kind)
	}
}

// seedShops seeds n shops, each with a reserved session.
func seedShops(t *testing.T, pool *pgxpool.Pool, n int) []testkit.Shop {
	t.Helper()
	shops := make([]testkit.Shop, n)
	for i := range shops {
		shops[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	}
	return shops
}

// TestRetriesTakeTurns: a single-event job's retry is worked alone, but
// under the same turns as the groups, so that however many jobs River
// hands out at once, the workers' transactions stay bounded. Its session
// missing, the first attempt fails; while the test holds every turn, the
// retry (its session now there) books nothing; once released, it books.
func TestRetriesTakeTurns(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{batchTx: 1})
	ctx := context.Background()
	late := testkit.SeedShop(t, pool, testkit.ShopOptions{LateSession: true})
	storeBatches(t, sys, map[string][]byte{"msg_late": event(t, "order.paid.json", late, "ord_late", nil)})
	attempted := func() (attempt int, state string) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT attempt, state::text FROM river_job WHERE kind = 'polar_event'`).Scan(&attempt, &state); err != nil {
			t.Fatal(err)
		}
		return attempt, state
	}
	testkit.Within(t, 30*time.Second, "the first attempt to fail", func() bool {
		attempt, state := attempted()
		return attempt == 1 && (state == "retryable" || state == "available")
	})
	release := sys.batches[0].HoldTurns()
	late.OpenSession(t, pool)
	testkit.Within(t, 30*time.Second, "the retry to start", func() bool {
		attempt, state := attempted()
		return attempt == 2 && state == "running"
	})
	// A negative can only be watched for a while: unbounded, the retry
	// books within milliseconds.
	time.Sleep(300 * time.Millisecond)
	if n := len(bookings(t, pool, late)); n != 0 {
		t.Fatalf("%d bookings by the retry while the test holds every turn, want none", n)
	}
	release()
	for id, state := range sys.waitJobs(t, "msg_late") {
		if state != "completed" {
			t.Errorf("%s: %s, want completed", id, state)
		}
	}
	if n := len(bookings(t, pool, late)); n != 1 {
		t.Errorf("%d bookings, want 1", n)
	}
}
