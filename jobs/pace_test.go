package jobs_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/pace"
)

// TestBatchConcurrencyFollowsTheReceiversStores: with the receiver's
// stores reported slow, the batch transactions running at once drop to
// one; once the receiver is idle they grow back to the maximum. Every
// batch waits, inside its transaction, for sessions the test holds, so
// the transactions at once are counted by PostgreSQL (backends waiting
// for a lock) as well as by the limiter. The limiter is stepped by the
// test, not by its clock.
func TestBatchConcurrencyFollowsTheReceiversStores(t *testing.T) {
	pool := testdb.NewPool(t)
	limiter, err := pace.New(pace.Options{Target: 25 * time.Millisecond, Min: 1, Max: 4})
	if err != nil {
		t.Fatal(err)
	}
	sys := startSystem(t, pool, systemOpts{pace: limiter, maxWorkers: 10})
	ctx := context.Background()

	// The receiver's stores are slow (over the 25 ms target): the limit
	// shrinks a step at a time, 4 → 3 → 2 → 1.
	now := time.Now()
	for _, want := range []int{3, 2, 1} {
		for range 20 {
			limiter.Observe(80 * time.Millisecond)
		}
		now = now.Add(100 * time.Millisecond)
		if got := limiter.Step(now); got != want {
			t.Fatalf("after slow stores: limit %d, want %d", got, want)
		}
	}

	var shops [8]testkit.Shop
	for i := range shops {
		shops[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	}
	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx) //nolint:errcheck
	for _, s := range shops {
		if _, err := blocker.Exec(ctx, `SELECT 1 FROM inventory_checkout_sessions WHERE id = $1 FOR UPDATE`, s.Session); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for b := range 4 { // four batch jobs of two paid orders each
		events := map[string][]byte{}
		for _, i := range []int{2 * b, 2*b + 1} {
			id := fmt.Sprintf("msg_%d", i)
			events[id] = event(t, "order.paid.json", shops[i], fmt.Sprintf("ord_%d", i), nil)
			ids = append(ids, id)
		}
		storeBatch(t, sys, events)
	}
	lockWaiters := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	poll(t, "one batch inside its transaction and others waiting for a turn", func() bool {
		n, st := lockWaiters(), limiter.State()
		if n > 1 || st.InFlight > 1 {
			t.Fatalf("limit 1: %d batch transactions waiting in PostgreSQL, %d turns held; want 1 at most", n, st.InFlight)
		}
		return n == 1 && st.InFlight == 1 && st.Waiting > 0
	})
	// A bound can only be watched for a while: past the turn wait (1 s),
	// the waiting batches go back to the queue and are fetched again.
	for watch := time.Now(); time.Since(watch) < 1500*time.Millisecond; {
		if n, st := lockWaiters(), limiter.State(); n > 1 || st.InFlight > 1 {
			t.Fatalf("limit 1: %d batch transactions waiting in PostgreSQL, %d turns held; want 1 at most", n, st.InFlight)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The receiver goes idle: the limit grows back by one a step, and the
	// waiting batches get their turns.
	for _, want := range []int{2, 3, 4, 4} {
		now = now.Add(100 * time.Millisecond)
		if got := limiter.Step(now); got != want {
			t.Fatalf("receiver idle: limit %d, want %d", got, want)
		}
	}
	poll(t, "all four batches inside their transactions at once", func() bool {
		return lockWaiters() == 4 && limiter.State().InFlight == 4
	})
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for id, state := range sys.waitJobs(t, ids...) {
		if state != "completed" {
			t.Errorf("%s: %s, want completed", id, state)
		}
	}
	for i, s := range shops {
		if n := len(bookings(t, pool, s)); n != 1 {
			t.Errorf("shop %d: %d bookings, want 1", i, n)
		}
	}
	if st := limiter.State(); st.Throttled <= 0 || st.Shrinks != 3 {
		t.Errorf("limiter state %+v: want some throttled time and 3 shrinks", st)
	}
}
