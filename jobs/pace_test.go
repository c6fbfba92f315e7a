package jobs_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/pace"
)

// TestBatchConcurrencyFollowsTheReceiversStores: with the receiver's
// stores reported slow, the batch transactions running at once drop to
// one; once the receiver is idle they grow back to the maximum (two here).
// Every batch waits, inside its transaction, for sessions the test holds,
// so the transactions at once are counted by PostgreSQL (backends waiting
// for a lock) as well as by the limiter. The limiter is stepped by the
// test, not by its clock.
func TestBatchConcurrencyFollowsTheReceiversStores(t *testing.T) {
	pool := testdb.NewPool(t)
	limiter, err := pace.New(pace.Options{Target: 25 * time.Millisecond, Min: 1, Max: 2})
	if err != nil {
		t.Fatal(err)
	}
	sys := startSystem(t, pool, systemOpts{pace: limiter, maxWorkers: 10})
	ctx := context.Background()

	// The receiver's stores are slow (over the 25 ms target): the limit
	// shrinks, 2 → 1.
	now := time.Now()
	for range 20 {
		limiter.Observe(80 * time.Millisecond)
	}
	now = now.Add(100 * time.Millisecond)
	if got := limiter.Step(now); got != 1 {
		t.Fatalf("after slow stores: limit %d, want 1", got)
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
	lockWaiters := func() int {
		t.Helper()
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	var ids []string
	store := func(b int) { // a batch job of two paid orders
		events := map[string][]byte{}
		for _, i := range []int{2 * b, 2*b + 1} {
			id := fmt.Sprintf("msg_%d", i)
			events[id] = event(t, "order.paid.json", shops[i], fmt.Sprintf("ord_%d", i), nil)
			ids = append(ids, id)
		}
		storeBatches(t, sys, events)
	}
	// The first batch is inside its transaction before the others come, so
	// that it groups none of them.
	store(0)
	testkit.Within(t, 30*time.Second, "the first batch inside its transaction", func() bool { return lockWaiters() == 1 })
	for b := 1; b < 4; b++ {
		store(b)
	}
	testkit.Within(t, 30*time.Second, "the other batches waiting for a turn", func() bool {
		n, st := lockWaiters(), limiter.State()
		if n > 1 || st.InFlight > 1 {
			t.Fatalf("limit 1: %d batch transactions waiting in PostgreSQL, %d turns held; want 1 at most", n, st.InFlight)
		}
		return st.Waiting > 0
	})
	// A bound can only be watched for a while: past the turn wait (1 s),
	// the waiting batches go back to the queue and are fetched again.
	for watch := time.Now(); time.Since(watch) < 1500*time.Millisecond; {
		if n, st := lockWaiters(), limiter.State(); n > 1 || st.InFlight > 1 {
			t.Fatalf("limit 1: %d batch transactions waiting in PostgreSQL, %d turns held; want 1 at most", n, st.InFlight)
		}
		time.Sleep(20 * time.Millisecond)
	}

	// The receiver goes idle: the limit grows back, and a waiting batch
	// gets the second turn.
	now = now.Add(100 * time.Millisecond)
	if got := limiter.Step(now); got != 2 {
		t.Fatalf("receiver idle: limit %d, want 2", got)
	}
	testkit.Within(t, 30*time.Second, "two batches inside their transactions at once", func() bool {
		return lockWaiters() == 2 && limiter.State().InFlight == 2
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
	if st := limiter.State(); st.Throttled <= 0 || st.Shrinks != 1 {
		t.Errorf("limiter state %+v: want some throttled time and 1 shrink", st)
	}
}

// TestWaitingBatchesRideAlong: while every turn is taken, the batches
// waiting for one form a group, worked in one transaction: every sale is
// booked once, every job completed and every inbox row marked by its own
// job, all in that one transaction (one xmin on every booking, job and
// inbox row).
func TestWaitingBatchesRideAlong(t *testing.T) {
	pool := testdb.NewPool(t)
	limiter, err := pace.New(pace.Options{Target: 25 * time.Millisecond, Min: 1, Max: 4})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // 4 → 3 → 2 → 1
		for range 20 {
			limiter.Observe(80 * time.Millisecond)
		}
		limiter.Step(time.Now())
	}
	if got := limiter.State().Limit; got != 1 {
		t.Fatalf("limit %d after slow stores, want 1", got)
	}
	sys := startSystem(t, pool, systemOpts{pace: limiter, maxWorkers: 10})
	ctx := context.Background()
	var shops [6]testkit.Shop
	for i := range shops {
		shops[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	}
	// The test holds the only turn while the batches come.
	if err := limiter.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for b := range 3 {
		events := map[string][]byte{}
		for _, i := range []int{2 * b, 2*b + 1} {
			id := fmt.Sprintf("msg_%d", i)
			events[id] = event(t, "order.paid.json", shops[i], fmt.Sprintf("ord_%d", i), nil)
			ids = append(ids, id)
		}
		storeBatches(t, sys, events)
	}
	waitGrouped(t, pool, limiter, 3)
	limiter.Release()
	wantBookedOnce(t, sys, ids, shops[:])
	wantOneTransaction(t, pool, "polar_event_batch")
}

// waitGrouped waits until n batch jobs are running and one of them waits
// for a turn: the others wait in its group.
func waitGrouped(t *testing.T, pool *pgxpool.Pool, limiter *pace.Limiter, n int) {
	t.Helper()
	testkit.Within(t, 30*time.Second, fmt.Sprintf("%d batches running, one waiting for the turn", n), func() bool {
		var running int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM river_job WHERE kind = 'polar_event_batch' AND state = 'running'`).Scan(&running); err != nil {
			t.Fatal(err)
		}
		return running == n && limiter.State().Waiting == 1
	})
}

// TestFailedGroupLeavesEachBatchToItself: when the transaction of a group
// of batches (and a single-event job) fails (one of them pays a session that is not there
// yet), nothing of it is kept; each batch is then worked alone, the good
// ones booked once in transactions of their own and the failing one split
// into single jobs, exactly as if each had come alone.
func TestFailedGroupLeavesEachBatchToItself(t *testing.T) {
	pool := testdb.NewPool(t)
	limiter, err := pace.New(pace.Options{Target: 25 * time.Millisecond, Min: 1, Max: 2})
	if err != nil {
		t.Fatal(err)
	}
	limiter.Observe(time.Second)
	if got := limiter.Step(time.Now()); got != 1 {
		t.Fatalf("limit %d after slow stores, want 1", got)
	}
	sys := startSystem(t, pool, systemOpts{pace: limiter, maxWorkers: 10, maxAttempts: 2})
	ctx := context.Background()
	var shops [6]testkit.Shop
	for i := range shops {
		shops[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	}
	late := testkit.SeedShop(t, pool, testkit.ShopOptions{LateSession: true})
	if err := limiter.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	batches := []map[string][]byte{
		{"msg_0": event(t, "order.paid.json", shops[0], "ord_0", nil), "msg_1": event(t, "order.paid.json", shops[1], "ord_1", nil)},
		{"msg_2": event(t, "order.paid.json", shops[2], "ord_2", nil), "msg_late": event(t, "order.paid.json", late, "ord_late", nil)},
		{"msg_3": event(t, "order.paid.json", shops[3], "ord_3", nil), "msg_4": event(t, "order.paid.json", shops[4], "ord_4", nil)},
		{"msg_5": event(t, "order.paid.json", shops[5], "ord_5", nil)}, // a single-event job
	}
	for _, b := range batches {
		storeBatches(t, sys, b)
	}
	waitGrouped(t, pool, limiter, 3)
	testkit.Within(t, 30*time.Second, "the single-event job running", func() bool {
		_, state, _ := testkit.JobOf(t, pool, "msg_5")
		return state == "running"
	})
	limiter.Release()
	states := sys.waitJobs(t, "msg_0", "msg_1", "msg_2", "msg_3", "msg_4", "msg_5", "msg_late")
	for id, state := range states {
		want := "completed"
		if id == "msg_late" {
			want = "discarded" // its own job, after the split, out of attempts
		}
		if state != want {
			t.Errorf("%s: job %s, want %s", id, state, want)
		}
	}
	for i, s := range shops {
		if n := len(bookings(t, pool, s)); n != 1 {
			t.Errorf("shop %d: %d bookings, want 1", i, n)
		}
	}
	var batchStates []string
	rows, err := pool.Query(ctx, `SELECT state::text FROM river_job WHERE kind = 'polar_event_batch' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		batchStates = append(batchStates, s)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if fmt.Sprint(batchStates) != "[completed completed completed]" {
		t.Errorf("batch jobs %v, want all three completed (the failing one once split)", batchStates)
	}
	for _, want := range []string{"group of jobs failed; each works alone", "batch split into single jobs"} {
		if !strings.Contains(sys.logs.String(), want) {
			t.Errorf("no %q logged", want)
		}
	}
}

// TestBatchesPastMaxLagGrowTheLimit: processing yields to slow stores but
// is not starved. A batch worked promptly leaves the limit shrunk while
// the stores stay slow; a batch that waited past MaxLag (the default, 1 s)
// before it was worked makes it grow, slow stores or not.
func TestBatchesPastMaxLagGrowTheLimit(t *testing.T) {
	pool := testdb.NewPool(t)
	limiter, err := pace.New(pace.Options{Target: 25 * time.Millisecond, Min: 1, Max: 4})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	slowStep := func() int {
		for range 20 {
			limiter.Observe(80 * time.Millisecond)
		}
		now = now.Add(100 * time.Millisecond)
		return limiter.Step(now)
	}
	for range 3 {
		slowStep()
	}
	if got := limiter.State().Limit; got != 1 {
		t.Fatalf("limit %d after slow stores, want 1", got)
	}
	sys := startSystem(t, pool, systemOpts{pace: limiter, maxWorkers: 10})
	ctx := context.Background()
	var shops [4]testkit.Shop
	for i := range shops {
		shops[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	}
	batch := func(a, b int) []string {
		storeBatches(t, sys, map[string][]byte{
			fmt.Sprintf("msg_%d", a): event(t, "order.paid.json", shops[a], fmt.Sprintf("ord_%d", a), nil),
			fmt.Sprintf("msg_%d", b): event(t, "order.paid.json", shops[b], fmt.Sprintf("ord_%d", b), nil),
		})
		return []string{fmt.Sprintf("msg_%d", a), fmt.Sprintf("msg_%d", b)}
	}

	// Worked promptly: slow stores keep the limit at 1.
	for id, state := range sys.waitJobs(t, batch(0, 1)...) {
		if state != "completed" {
			t.Fatalf("%s: %s, want completed", id, state)
		}
	}
	if got := slowStep(); got != 1 {
		t.Fatalf("slow stores after a prompt batch: limit %d, want 1", got)
	}

	// Held back past MaxLag: the test holds the only turn until the job
	// is more than a second old.
	if err := limiter.Acquire(ctx); err != nil {
		t.Fatal(err)
	}
	ids := batch(2, 3)
	testkit.Within(t, 30*time.Second, "the batch job to be more than a second old", func() bool {
		var old bool
		err := pool.QueryRow(ctx, `SELECT bool_and(created_at < now() - interval '1.1 seconds') FROM river_job WHERE kind = 'polar_event_batch' AND state <> 'completed'`).Scan(&old)
		return err == nil && old
	})
	limiter.Release()
	for id, state := range sys.waitJobs(t, ids...) {
		if state != "completed" {
			t.Fatalf("%s: %s, want completed", id, state)
		}
	}
	if got := slowStep(); got != 2 {
		t.Fatalf("slow stores after a batch that waited past MaxLag: limit %d, want 2", got)
	}
}
