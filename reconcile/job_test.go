package reconcile_test

import (
	"context"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/internal/polarfake"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polarapi"
	"github.com/relayhq/relay/reconcile"
)

// TestPeriodicPassBooksMissedSaleAndNeverOverlaps: the periodic job's pass
// (driven directly, not after RELAY_RECONCILE_INTERVAL) reconciles every
// connection and books a sale no webhook brought; while another pass holds
// the advisory lock it does nothing, and it never fails its job.
func TestPeriodicPassBooksMissedSaleAndNeverOverlaps(t *testing.T) {
	w := newWorld(t, worldOpts{workers: true})
	w.fakes[polarapi.Production].AddOrder(w.org, w.order("ord_periodic", func(o *polarfake.Order) {}))
	worker := reconcile.NewWorker(w.reconciler(nil), w.pool, nil)
	job := &river.Job[reconcile.PassArgs]{JobRow: &rivertype.JobRow{ID: 1}}
	ctx := context.Background()

	conn, err := w.pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	released := false
	t.Cleanup(func() {
		if !released {
			conn.Release()
			released = true
		}
	})
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(7305146303)`); err != nil {
		t.Fatal(err)
	}
	if err := worker.Work(ctx, job); err != nil {
		t.Fatalf("a pass while another runs: %v", err)
	}
	if n := w.recoveredRows(t); n != 0 {
		t.Fatalf("a pass ran while another held the lock: %d rows recovered", n)
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(7305146303)`); err != nil {
		t.Fatal(err)
	}
	conn.Release()
	released = true

	if err := worker.Work(ctx, job); err != nil {
		t.Fatalf("periodic pass: %v", err)
	}
	w.settled(t)
	if sales, _, _ := w.bookings(t); sales != 1 {
		t.Fatalf("%d sales booked by the periodic pass, want 1", sales)
	}
	c, err := w.store.Get(ctx, w.shop.WS, polarapi.Production)
	if err != nil {
		t.Fatal(err)
	}
	if c.LastReconcile == nil || c.LastReconcile.Result != reconcile.ResultOK || c.LastReconcile.Findings != 1 {
		t.Fatalf("connection after the periodic pass: %+v", c.LastReconcile)
	}
	if v := testkit.Metric(t, w.reg, "relay_polar_connections", map[string]string{"state": "enabled"}); v != 1 {
		t.Fatalf("relay_polar_connections{state=enabled} = %v, want 1", v)
	}

	// A revoked token: the job still succeeds (never retried, never
	// discarded), the pass is recorded as unauthorized.
	w.fakes[polarapi.Production].RevokeToken(w.token)
	if err := worker.Work(ctx, job); err != nil {
		t.Fatalf("periodic pass with a revoked token failed its job: %v", err)
	}
	if c, _ := w.store.Get(ctx, w.shop.WS, polarapi.Production); c.State != "unauthorized" {
		t.Fatalf("state %q after a revoked token", c.State)
	}
	if v := testkit.Metric(t, w.reg, "relay_polar_connections", map[string]string{"state": "unauthorized"}); v != 1 {
		t.Fatalf("relay_polar_connections{state=unauthorized} = %v, want 1", v)
	}
}
