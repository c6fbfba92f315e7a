package main

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// TestShutdownLetsARunningJobFinish: SIGTERM stops relay softly. A job
// running when it arrives keeps its transaction and finishes within
// RELAY_SHUTDOWN_TIMEOUT; it is neither cancelled nor left for another
// replica to redo after River's rescue.
func TestShutdownLetsARunningJobFinish(t *testing.T) {
	dbURL := testdb.New(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	shop := testkit.SeedShop(t, pool, testkit.ShopOptions{})

	// The storefront holds the session's row: the job that books it waits.
	storefront, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer storefront.Rollback(ctx) //nolint:errcheck // ended below
	if _, err := storefront.Exec(ctx, `SELECT 1 FROM inventory_checkout_sessions WHERE id = $1 FOR UPDATE`, shop.Session); err != nil {
		t.Fatal(err)
	}

	env := map[string]string{
		"DATABASE_URL":         dbURL,
		"POLAR_WEBHOOK_SECRET": testSecret,
		"RELAY_HTTP_ADDR":      testkit.FreeAddr(t),
		"RELAY_ADMIN_ADDR":     testkit.FreeAddr(t),
		"LOG_FORMAT":           "text",
	}
	serveCtx, sigterm := context.WithCancel(ctx)
	defer sigterm()
	logs := &testkit.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(serveCtx, []string{"serve"}, envFunc(env), logs) }()
	defer func() {
		if t.Failed() {
			t.Logf("relay's log:\n%s", logs.String())
		}
	}()
	waitFor(t, done, "http://"+env["RELAY_ADMIN_ADDR"]+"/readyz")
	deliver(t, "http://"+env["RELAY_HTTP_ADDR"]+"/webhooks/polar", testSecret, "msg_shutdown",
		testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_shutdown"), nil))
	waitLockWait(t, pool)

	sigterm()
	// For a second into the shutdown (well inside RELAY_JOB_TIMEOUT's 5 s),
	// relay keeps running and its job keeps waiting for the row.
	for until := time.Now().Add(time.Second); time.Now().Before(until); {
		select {
		case err := <-done:
			t.Fatalf("serve returned %v while its job was still running", err)
		default:
		}
		if rowLockWaiters(t, pool) == 0 {
			t.Fatal("the running job stopped waiting for the session when shutdown began: it was cancelled")
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	if err := storefront.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s")
	}
	if status, bookings := shopState(t, pool, shop); status != "completed" || bookings != 1 {
		t.Fatalf("session %s with %d booking(s), want completed with 1", status, bookings)
	}
	if _, state, _ := testkit.JobOf(t, pool, "msg_shutdown"); state != "completed" {
		t.Fatalf("job %s, want completed by the stopping relay", state)
	}
}
