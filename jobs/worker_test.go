package jobs_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/polar"
)

func TestPaidOrderCompletesSessionAndBooksOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})

	sys.send(t, "msg_paid", event(t, "order.updated.paid.json", s, "ord_1", nil))
	if st := sys.waitJobs(t, "msg_paid"); st["msg_paid"] != "completed" {
		t.Fatalf("job state = %q, want completed", st["msg_paid"])
	}

	got := session(t, pool, s)
	if got.status != "completed" || got.completedAt == nil || got.polarStatus != "paid" ||
		got.polarOrder == nil || *got.polarOrder != "ord_1" || got.txID == nil {
		t.Fatalf("session = %+v, want completed, paid, order ord_1, linked booking", got)
	}
	b := bookings(t, pool, s)
	if len(b) != 1 {
		t.Fatalf("bookings = %+v, want exactly one", b)
	}
	if b[0].amount != 4950 || b[0].currency != "USD" || b[0].wallet != s.Wallet ||
		b[0].category == nil || *b[0].category != s.Category || b[0].description != "Polar order ord_1" {
		t.Fatalf("booking = %+v, want 4950 USD into %s, category %s, naming the order", b[0], s.Wallet, s.Category)
	}
	var inboxStatus string
	if err := pool.QueryRow(context.Background(), `SELECT status FROM webhook_inbox WHERE webhook_id = 'msg_paid'`).Scan(&inboxStatus); err != nil {
		t.Fatal(err)
	}
	if inboxStatus != "processed" {
		t.Errorf("inbox status = %q, want processed", inboxStatus)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "booked"}); v != 1 {
		t.Errorf("booked counter = %v, want 1", v)
	}
	if v := sys.metric(t, "relay_events_processed_total", map[string]string{"event_type": "order.updated", "result": "ok"}); v != 1 {
		t.Errorf("processed counter = %v, want 1", v)
	}
	if v := sys.metric(t, "relay_event_lag_seconds", map[string]string{"event_type": "order.updated"}); v != 1 {
		t.Errorf("lag observations = %v, want 1", v)
	}
}

// storm sends, all at once: n copies of one order.updated delivery plus
// order.created, order.updated and order.paid (each also n times) for the
// same order, and returns their webhook ids.
func storm(t *testing.T, sys *system, s shop, n int) []string {
	t.Helper()
	deliveries := map[string][]byte{
		"msg_created": event(t, "order.created.pending.json", s, "ord_storm", nil),
		"msg_updated": event(t, "order.updated.paid.json", s, "ord_storm", nil),
		"msg_paid":    event(t, "order.paid.json", s, "ord_storm", nil),
	}
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		ids   []string
	)
	for id, body := range deliveries {
		ids = append(ids, id)
		for range n {
			wg.Go(func() {
				<-start
				if code := sys.post(t, id, body); code != http.StatusOK {
					t.Errorf("delivery %s: status %d, want 200", id, code)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	return ids
}

func TestConcurrentDuplicatesAndAllOrderEventsBookOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})

	ids := storm(t, sys, s, 50)
	for id, state := range sys.waitJobs(t, ids...) {
		if state != "completed" {
			t.Errorf("job of %s: %s, want completed", id, state)
		}
	}
	if n := testkit.EnqueuedEvents(t, pool); n != 3 {
		t.Errorf("jobs carry %d events for 3 distinct deliveries sent 50 times each, want 3", n)
	}
	if b := bookings(t, pool, s); len(b) != 1 || b[0].amount != 4950 {
		t.Fatalf("bookings = %+v, want exactly one of 4950", b)
	}
	if got := session(t, pool, s); got.status != "completed" || got.polarStatus != "paid" {
		t.Errorf("session = %+v, want completed and paid (a pending event must not move it back)", got)
	}
}

// TestTwoRiverClientsBookOnce works one queue with two River clients. The
// shops' sessions are locked while the jobs arrive, so that every job a
// client takes waits: a client holds at most its two workers' worth, and
// the other client must take the rest. Then both have worked jobs for
// certain, and each sale is still booked once.
func TestTwoRiverClientsBookOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{clients: 2, maxWorkers: 2})
	ctx := context.Background()
	var shops []shop
	var sessions []string
	for range 5 {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		shops = append(shops, s)
		sessions = append(sessions, s.Session)
	}
	lock, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx) //nolint:errcheck // released below
	if _, err := lock.Exec(ctx, `SELECT 1 FROM inventory_checkout_sessions WHERE id = ANY($1::uuid[]) FOR UPDATE`, sessions); err != nil {
		t.Fatal(err)
	}

	var ids []string
	for i, s := range shops {
		for _, f := range []string{"order.created.pending.json", "order.updated.paid.json", "order.paid.json"} {
			id := fmt.Sprintf("msg_%d_%s", i, f)
			body := event(t, f, s, fmt.Sprintf("ord_two_%d", i), nil)
			ids = append(ids, id)
			var wg sync.WaitGroup
			for range 10 {
				wg.Go(func() {
					if code := sys.post(t, id, body); code != http.StatusOK {
						t.Errorf("delivery %s: status %d, want 200", id, code)
					}
				})
			}
			wg.Wait()
		}
	}
	workingClients := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(DISTINCT attempted_by[array_length(attempted_by, 1)])
			FROM river_job WHERE state = 'running'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	deadline := time.Now().Add(30 * time.Second)
	for workingClients() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s, jobs are running on %d client(s), want both", workingClients())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	for id, state := range sys.waitJobs(t, ids...) {
		if state != "completed" {
			t.Errorf("job of %s: %s, want completed", id, state)
		}
	}
	for i, s := range shops {
		if b := bookings(t, pool, s); len(b) != 1 || b[0].amount != 4950 {
			t.Errorf("shop %d: bookings = %+v, want exactly one of 4950", i, b)
		}
	}
	var workers int
	if err := pool.QueryRow(ctx, `SELECT count(DISTINCT attempted_by[1]) FROM river_job`).Scan(&workers); err != nil {
		t.Fatal(err)
	}
	if workers != 2 {
		t.Errorf("jobs were first worked by %d distinct clients, want 2", workers)
	}
}

// TestEveryQueryModeReceivesAndBooks runs the receiver and a worker in each
// of pgx's query modes (DATABASE_URL's default_query_exec_mode): a paid
// order and its duplicate are stored, worked and booked once.
func TestEveryQueryModeReceivesAndBooks(t *testing.T) {
	for name, mode := range testdb.QueryExecModes() {
		t.Run(name, func(t *testing.T) {
			pool := testdb.NewPoolWith(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = mode })
			sys := startSystem(t, pool, systemOpts{})
			s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
			body := event(t, "order.updated.paid.json", s, "ord_mode", nil)
			sys.send(t, "msg_mode", body)
			sys.send(t, "msg_mode", body)
			if state := sys.waitJobs(t, "msg_mode")["msg_mode"]; state != "completed" {
				t.Fatalf("job: %s, want completed", state)
			}
			if b := bookings(t, pool, s); len(b) != 1 || b[0].amount != 4950 {
				t.Errorf("bookings = %+v, want exactly one of 4950", b)
			}
			if got := session(t, pool, s); got.status != "completed" {
				t.Errorf("session = %+v, want completed", got)
			}
		})
	}
}

func TestNoDefaultWalletCompletesUnbookedThenReplayBooks(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := unbookedSale(t, sys, "msg_nowallet")
	if got := session(t, pool, s); got.status != "completed" || got.txID != nil {
		t.Fatalf("session = %+v, want completed without a booking", got)
	}
	if b := bookings(t, pool, s); len(b) != 0 {
		t.Fatalf("bookings = %+v, want none", b)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "skipped_no_wallet"}); v != 1 {
		t.Errorf("skipped_no_wallet counter = %v, want 1", v)
	}
	if p := pendingOf(t, pool, s); p.reason != "no_wallet" || p.posted {
		t.Fatalf("pending = %+v, want kept for no_wallet", p)
	}

	// The admin sets the default wallet, then replays the stored event:
	// whichever of the replay and the poster comes first books the sale.
	setDefaultWallet(t, pool, s)
	for range 2 { // a second replay books nothing more
		if _, err := jobs.Replay(context.Background(), pool, sys.clients[0], "msg_nowallet", ""); err != nil {
			t.Fatal(err)
		}
		sys.waitJobs(t, "msg_nowallet")
	}
	if b := bookings(t, pool, s); len(b) != 1 || b[0].amount != 4950 || b[0].wallet != s.Wallet {
		t.Fatalf("bookings after replay = %+v, want one of 4950 into the wallet", b)
	}
	if got := session(t, pool, s); got.txID == nil {
		t.Error("session not linked to its booking after replay")
	}
	if p := pendingOf(t, pool, s); !p.posted {
		t.Errorf("pending = %+v, want posted", p)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "posted_pending"}); v != 1 {
		t.Errorf("posted_pending counter = %v, want 1", v)
	}
}

func TestWalletProblemsSkipBooking(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	ctx := context.Background()

	otherCurrency := testkit.SeedShop(t, pool, testkit.ShopOptions{WalletCurrency: "EUR"})
	sys.send(t, "msg_eur", event(t, "order.updated.paid.json", otherCurrency, "ord_eur", nil))

	otherWorkspace := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	foreign := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	if _, err := pool.Exec(ctx, `UPDATE workspace_configs SET value = $2 WHERE ws_id = $1`, otherWorkspace.WS, foreign.Wallet); err != nil {
		t.Fatal(err)
	}
	sys.send(t, "msg_foreign", event(t, "order.updated.paid.json", otherWorkspace, "ord_foreign", nil))

	paidInOther := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.send(t, "msg_gbp", event(t, "order.updated.paid.json", paidInOther, "ord_gbp", func(d map[string]any) { d["currency"] = "gbp" }))

	sys.waitJobs(t, "msg_eur", "msg_foreign", "msg_gbp")
	for name, c := range map[string]struct {
		s      shop
		reason string
	}{
		"wallet in EUR":               {otherCurrency, "currency"},
		"wallet of another workspace": {otherWorkspace, "wallet_workspace"},
		"paid in GBP":                 {paidInOther, "currency"},
	} {
		if got := session(t, pool, c.s); got.status != "completed" || got.txID != nil {
			t.Errorf("%s: session = %+v, want completed, unbooked", name, got)
		}
		if p := pendingOf(t, pool, c.s); p.reason != c.reason || p.posted {
			t.Errorf("%s: pending = %+v, want kept for %s", name, p, c.reason)
		}
	}
	var total int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions`).Scan(&total); err != nil {
		t.Fatal(err)
	}
	if total != 0 {
		t.Errorf("%d bookings, want none", total)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "skipped_currency"}); v != 2 {
		t.Errorf("skipped_currency = %v, want 2", v)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "skipped_wallet_workspace"}); v != 1 {
		t.Errorf("skipped_wallet_workspace = %v, want 1", v)
	}
}

func TestMixedCategoriesBookWithoutCategory(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{MixedCategory: true})
	sys.send(t, "msg_mixed", event(t, "order.paid.json", s, "ord_mixed", nil))
	sys.waitJobs(t, "msg_mixed")
	if b := bookings(t, pool, s); len(b) != 1 || b[0].category != nil {
		t.Fatalf("bookings = %+v, want one without a category", b)
	}
}

func TestRefundsReverseOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})

	sys.send(t, "msg_paid", event(t, "order.updated.paid.json", s, "ord_r", nil))
	sys.waitJobs(t, "msg_paid")
	sys.send(t, "msg_partial", event(t, "order.updated.partially_refunded.json", s, "ord_r", nil))
	sys.waitJobs(t, "msg_partial")
	if b := bookings(t, pool, s); len(b) != 2 || b[1].amount != -1650 || b[1].reverses == nil {
		t.Fatalf("after a partial refund of 1500+150: bookings = %+v, want the sale and a reversal of -1650", b)
	}
	var note string
	if err := pool.QueryRow(context.Background(), `SELECT error FROM webhook_inbox WHERE webhook_id = 'msg_partial'`).Scan(&note); err != nil {
		t.Fatal(err)
	}
	if note != "already_booked; reversed 1650 USD" {
		t.Errorf("the refund's inbox note = %q, want it to name the reversal it booked", note)
	}

	// The full refund arrives three ways, some twice; and the stale partial again.
	sys.send(t, "msg_full", event(t, "order.updated.refunded.json", s, "ord_r", nil))
	sys.send(t, "msg_refunded", event(t, "order.refunded.json", s, "ord_r", nil))
	sys.send(t, "msg_refund_obj", event(t, "refund.updated.json", s, "ord_r", nil))
	sys.send(t, "msg_refund_created", event(t, "refund.created.json", s, "ord_r", nil))
	sys.send(t, "msg_full", event(t, "order.updated.refunded.json", s, "ord_r", nil))
	sys.send(t, "msg_partial_late", event(t, "order.updated.partially_refunded.json", s, "ord_r", nil))
	sys.waitJobs(t, "msg_full", "msg_refunded", "msg_refund_obj", "msg_refund_created", "msg_partial_late")

	b := bookings(t, pool, s)
	var sum, reversals int64
	for _, row := range b {
		sum += row.amount
		if row.amount < 0 {
			reversals += row.amount
		}
	}
	if len(b) != 3 || reversals != -4950 || sum != 0 {
		t.Fatalf("bookings = %+v: %d rows, reversals %d, sum %d; want sale + two reversals summing to -4950", b, len(b), reversals, sum)
	}
	if got := session(t, pool, s); got.status != "completed" || got.polarStatus != "refunded" {
		t.Errorf("session = %+v, want completed and refunded (a late partial must not move it back)", got)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "reversed"}); v != 2 {
		t.Errorf("reversed counter = %v, want 2", v)
	}
}

func TestRefundBeforeItsPartialReversesOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	// Reordered: the refund object and the full refund come before the sale's
	// paid event, the partial refund last.
	sys.send(t, "msg_refund_obj", event(t, "refund.updated.json", s, "ord_o", nil))
	sys.send(t, "msg_full", event(t, "order.updated.refunded.json", s, "ord_o", nil))
	sys.waitJobs(t, "msg_refund_obj", "msg_full")
	sys.send(t, "msg_paid", event(t, "order.updated.paid.json", s, "ord_o", nil))
	sys.send(t, "msg_partial", event(t, "order.updated.partially_refunded.json", s, "ord_o", nil))
	sys.waitJobs(t, "msg_paid", "msg_partial")
	var sum int64
	b := bookings(t, pool, s)
	for _, row := range b {
		sum += row.amount
	}
	if len(b) != 2 || sum != 0 {
		t.Fatalf("bookings = %+v, want the sale and one reversal of all of it", b)
	}
}

func TestExpiredCheckoutExpiresSession(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	done := testkit.SeedShop(t, pool, testkit.ShopOptions{})

	sys.send(t, "msg_succeeded", event(t, "checkout.updated.succeeded.json", s, "", nil))
	sys.waitJobs(t, "msg_succeeded")
	if got := session(t, pool, s); got.status != "reserved" {
		t.Fatalf("after a succeeded checkout: %q, want still reserved", got.status)
	}
	sys.send(t, "msg_expired", event(t, "checkout.expired.json", s, "", nil))
	sys.send(t, "msg_failed", event(t, "checkout.updated.succeeded.json", s, "", func(d map[string]any) { d["status"] = "failed" }))
	sys.waitJobs(t, "msg_expired", "msg_failed")
	if got := session(t, pool, s); got.status != "expired" {
		t.Fatalf("after checkout.expired: %q, want expired", got.status)
	}

	// A completed session is never expired by a late checkout event.
	sys.send(t, "msg_done_paid", event(t, "order.paid.json", done, "ord_done", nil))
	sys.waitJobs(t, "msg_done_paid")
	sys.send(t, "msg_done_expired", event(t, "checkout.expired.json", done, "", nil))
	sys.waitJobs(t, "msg_done_expired")
	if got := session(t, pool, done); got.status != "completed" {
		t.Fatalf("completed session became %q after a late expiry", got.status)
	}
}

func TestUnknownSessionRetriesThenDiscards(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{maxAttempts: 3})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	if _, err := pool.Exec(context.Background(), `DELETE FROM inventory_checkout_sessions WHERE id = $1`, s.Session); err != nil {
		t.Fatal(err)
	}
	sys.send(t, "msg_lost", event(t, "order.updated.paid.json", s, "ord_lost", nil))
	if st := sys.waitJobs(t, "msg_lost"); st["msg_lost"] != "discarded" {
		t.Fatalf("job state = %q, want discarded", st["msg_lost"])
	}
	var attempts, errs int
	if err := pool.QueryRow(context.Background(), `SELECT attempt, coalesce(array_length(errors, 1), 0) FROM river_job WHERE args->>'webhook_id' = 'msg_lost'`).Scan(&attempts, &errs); err != nil {
		t.Fatal(err)
	}
	if attempts != 3 || errs != 3 {
		t.Errorf("attempts = %d, errors = %d, want 3 of each", attempts, errs)
	}
	if v := sys.metric(t, "relay_events_processed_total", map[string]string{"event_type": "order.updated", "result": "retry"}); v != 2 {
		t.Errorf("retry counter = %v, want 2", v)
	}
	if v := sys.metric(t, "relay_events_processed_total", map[string]string{"event_type": "order.updated", "result": "discarded"}); v != 1 {
		t.Errorf("discarded counter = %v, want 1", v)
	}
}

func TestOtherWorkspaceInMetadataIsRefused(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	other := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.send(t, "msg_cross", event(t, "order.updated.paid.json", s, "ord_cross", func(d map[string]any) {
		d["metadata"].(map[string]any)["wsId"] = other.WS
	}))
	if st := sys.waitJobs(t, "msg_cross"); st["msg_cross"] != "cancelled" {
		t.Fatalf("job state = %q, want cancelled", st["msg_cross"])
	}
	if got := session(t, pool, s); got.status != "reserved" || got.txID != nil {
		t.Fatalf("session = %+v, want untouched", got)
	}
	if b := bookings(t, pool, s); len(b) != 0 {
		t.Fatalf("bookings = %+v, want none", b)
	}
}

func TestNonStorefrontEventsAreNoops(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.send(t, "msg_sub", event(t, "order.updated.paid.json", s, "ord_sub", func(d map[string]any) {
		d["metadata"] = map[string]any{}
		d["checkout_id"] = nil
	}))
	if st := sys.waitJobs(t, "msg_sub"); st["msg_sub"] != "completed" {
		t.Fatalf("job state = %q, want completed", st["msg_sub"])
	}
	if got := session(t, pool, s); got.status != "reserved" {
		t.Fatalf("session = %+v, want untouched", got)
	}
	if v := sys.metric(t, "relay_events_processed_total", map[string]string{"event_type": "order.updated", "result": "noop"}); v != 1 {
		t.Errorf("noop counter = %v, want 1", v)
	}
}

// TestBookingAndJobCompletionShareOneTransaction makes the job's completion
// fail after the booking was written in the same transaction: nothing of the
// booking may survive, and the retry books exactly once.
func TestBookingAndJobCompletionShareOneTransaction(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
		-- A sequence, unlike a table, does not roll back: the crash happens once.
		CREATE SEQUENCE completion_attempts;
		CREATE FUNCTION fail_completion() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.kind = 'polar_event' AND NEW.state = 'completed' AND nextval('completion_attempts') = 1 THEN
				RAISE EXCEPTION 'simulated crash between booking and job completion';
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER fail_completion BEFORE UPDATE ON river_job
			FOR EACH ROW EXECUTE FUNCTION fail_completion();`); err != nil {
		t.Fatal(err)
	}
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.send(t, "msg_crash", event(t, "order.updated.paid.json", s, "ord_crash", nil))
	if st := sys.waitJobs(t, "msg_crash"); st["msg_crash"] != "completed" {
		t.Fatalf("job state = %q, want completed on the retry", st["msg_crash"])
	}
	var attempts int
	var lastErr string
	if err := pool.QueryRow(ctx, `SELECT attempt, errors[1]->>'error' FROM river_job WHERE args->>'webhook_id' = 'msg_crash'`).Scan(&attempts, &lastErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || !strings.Contains(lastErr, "simulated crash") {
		t.Fatalf("attempts = %d (first error %q), want 2: the first must have failed at completion", attempts, lastErr)
	}
	if b := bookings(t, pool, s); len(b) != 1 {
		t.Fatalf("bookings = %+v, want exactly one: the failed attempt's booking must have rolled back", b)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "booked"}); v != 1 {
		t.Errorf("booked counter = %v, want 1 (the rolled-back attempt is not counted)", v)
	}
}

// A job whose transaction meets a read-only server (SQLSTATE 25006: the
// primary was demoted under the worker's connection) failed for the
// database, not for its event: it is retried, not refused or cancelled,
// and books once.
func TestReadOnlyServerIsRetriedNotRefused(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
		CREATE SEQUENCE booking_attempts;
		CREATE FUNCTION demoted_once() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF nextval('booking_attempts') = 1 THEN
				RAISE EXCEPTION 'cannot execute INSERT in a read-only transaction' USING ERRCODE = 'read_only_sql_transaction';
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER demoted_once BEFORE INSERT ON wallet_transactions
			FOR EACH ROW EXECUTE FUNCTION demoted_once();`); err != nil {
		t.Fatal(err)
	}
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.send(t, "msg_demoted", event(t, "order.updated.paid.json", s, "ord_demoted", nil))
	if st := sys.waitJobs(t, "msg_demoted"); st["msg_demoted"] != "completed" {
		t.Fatalf("job state = %q, want completed on the retry", st["msg_demoted"])
	}
	var attempts int
	var firstErr string
	if err := pool.QueryRow(ctx, `SELECT attempt, errors[1]->>'error' FROM river_job WHERE args->>'webhook_id' = 'msg_demoted'`).Scan(&attempts, &firstErr); err != nil {
		t.Fatal(err)
	}
	if attempts != 2 || !strings.Contains(firstErr, "25006") {
		t.Fatalf("attempts = %d (first error %q), want 2, the first failing with SQLSTATE 25006", attempts, firstErr)
	}
	if b := bookings(t, pool, s); len(b) != 1 {
		t.Fatalf("bookings = %+v, want exactly one", b)
	}
}

func TestImpossibleAmountsAreRefused(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	raw := func(fixture string, replace map[string]string) []byte {
		b := string(event(t, fixture, s, "ord_bad", nil))
		for from, to := range replace {
			if !strings.Contains(b, from) {
				t.Fatalf("fixture lacks %q", from)
			}
			b = strings.Replace(b, from, to, 1)
		}
		return []byte(b)
	}
	sys.send(t, "msg_overflow", raw("order.updated.paid.json", map[string]string{`"total_amount":4950`: `"total_amount":100000000000000000000000000000`}))
	sys.send(t, "msg_negative", raw("order.updated.paid.json", map[string]string{`"refunded_amount":0`: `"refunded_amount":-500`}))
	sys.send(t, "msg_sum_overflow", raw("order.updated.paid.json", map[string]string{
		`"refunded_amount":0`: `"refunded_amount":9223372036854775807`, `"refunded_tax_amount":0`: `"refunded_tax_amount":1`}))
	sys.send(t, "msg_bad_uuid", event(t, "order.updated.paid.json", s, "ord_bad", func(d map[string]any) {
		d["metadata"].(map[string]any)["checkoutId"] = "'; DROP TABLE x; --"
	}))
	for id, state := range sys.waitJobs(t, "msg_overflow", "msg_negative", "msg_sum_overflow", "msg_bad_uuid") {
		if state != "cancelled" {
			t.Errorf("%s: job %s, want cancelled", id, state)
		}
	}
	if got := session(t, pool, s); got.status != "reserved" {
		t.Errorf("session = %+v, want untouched", got)
	}
	if v := sys.metric(t, "relay_events_processed_total", map[string]string{"event_type": "order.updated", "result": "refused"}); v != 4 {
		t.Errorf("refused counter = %v, want 4", v)
	}
}

func TestLatePendingAfterPaidChangesNothing(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.send(t, "msg_paid", event(t, "order.paid.json", s, "ord_late", nil))
	sys.waitJobs(t, "msg_paid")
	before := session(t, pool, s)

	// Polar's retry of the older order.created arrives last.
	sys.send(t, "msg_created", event(t, "order.created.pending.json", s, "ord_late", nil))
	sys.waitJobs(t, "msg_created")
	after := session(t, pool, s)
	if after.status != "completed" || after.polarStatus != "paid" || after.txID == nil ||
		*after.txID != *before.txID || !after.completedAt.Equal(*before.completedAt) {
		t.Fatalf("after a late pending event: %+v, want it as before: %+v", after, before)
	}
	if b := bookings(t, pool, s); len(b) != 1 {
		t.Fatalf("bookings = %+v, want one", b)
	}
}

// storeBatches stores each group of events as the receiver's group commit
// does, inbox rows and one batch job for the group, all groups in one
// transaction: River hands their jobs out together.
func storeBatches(t *testing.T, sys *system, groups ...map[string][]byte) {
	t.Helper()
	ctx := context.Background()
	err := pgx.BeginFunc(ctx, sys.pool, func(tx pgx.Tx) error {
		for _, events := range groups {
			var stored []*inbox.Event
			for id, body := range events {
				env, err := polar.ParseEnvelope(body)
				if err != nil {
					return err
				}
				stored = append(stored, &inbox.Event{WebhookID: id, EventType: env.Type, Status: inbox.StatusPending,
					WebhookTimestamp: time.Now(), Body: body})
			}
			if _, err := inbox.Insert(ctx, tx, stored...); err != nil {
				return err
			}
			if err := jobs.EnqueueTx(ctx, tx, sys.clients[0], stored...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestBatchJobAppliesEveryEventInOneTransaction(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	a := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	b := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	storeBatches(t, sys, map[string][]byte{
		"msg_a_created": event(t, "order.created.pending.json", a, "ord_a", nil),
		"msg_a_paid":    event(t, "order.paid.json", a, "ord_a", nil),
		"msg_b_paid":    event(t, "order.updated.paid.json", b, "ord_b", nil),
	})
	var batchID int64
	if err := pool.QueryRow(context.Background(), `SELECT id FROM river_job WHERE kind = 'polar_event_batch'`).Scan(&batchID); err != nil {
		t.Fatalf("no batch job: %v", err)
	}
	for id, state := range sys.waitJobs(t, "msg_a_created", "msg_a_paid", "msg_b_paid") {
		if state != "completed" {
			t.Errorf("%s: %s, want completed", id, state)
		}
	}
	var rows int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox WHERE status = 'processed' AND job_id = $1`, batchID).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 3 {
		t.Errorf("%d rows processed by the batch job, want 3", rows)
	}
	// One statement marks the batch's rows: each with its own outcome.
	notes := map[string]string{}
	rs, err := pool.Query(context.Background(), `SELECT webhook_id, coalesce(error, '') FROM webhook_inbox WHERE job_id = $1`, batchID)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var id, note string
		if err := rs.Scan(&id, &note); err != nil {
			t.Fatal(err)
		}
		notes[id] = note
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]string{"msg_a_created": ledger.NotPaid, "msg_a_paid": ledger.Booked, "msg_b_paid": ledger.Booked} {
		if notes[id] != want {
			t.Errorf("%s: note %q, want %q", id, notes[id], want)
		}
	}
	for _, s := range []testkit.Shop{a, b} {
		if n := len(bookings(t, pool, s)); n != 1 {
			t.Errorf("shop %s: %d bookings, want 1", s.WS, n)
		}
	}
	if n := testkit.EnqueuedEvents(t, pool); n != 3 {
		t.Errorf("jobs carry %d events, want 3: the batch did not split", n)
	}
}

func TestBatchWithAFailingEventSplitsIntoSingleJobs(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{maxAttempts: 2})
	good := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	late := testkit.SeedShop(t, pool, testkit.ShopOptions{LateSession: true})
	other := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	// Two plain sales, which the batch books together before the failing
	// events fail: that booking is rolled back with the batch, and each is
	// booked once by its own job.
	plain1 := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	plain2 := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	storeBatches(t, sys, map[string][]byte{
		"msg_good":   event(t, "order.paid.json", good, "ord_good", nil),
		"msg_late":   event(t, "order.paid.json", late, "ord_late", nil),
		"msg_cross":  event(t, "order.paid.json", good, "ord_cross", func(d map[string]any) { d["metadata"].(map[string]any)["wsId"] = other.WS }),
		"msg_plain1": event(t, "order.paid.json", plain1, "ord_plain1", nil),
		"msg_plain2": event(t, "order.updated.paid.json", plain2, "ord_plain2", nil),
	})
	states := sys.waitJobs(t, "msg_good", "msg_late", "msg_cross", "msg_plain1", "msg_plain2")
	want := map[string]string{"msg_good": "completed", "msg_late": "discarded", "msg_cross": "cancelled", "msg_plain1": "completed", "msg_plain2": "completed"}
	for id, w := range want {
		if states[id] != w {
			t.Errorf("%s: job %s, want %s (its own job after the batch split)", id, states[id], w)
		}
	}
	for name, s := range map[string]testkit.Shop{"good": good, "plain1": plain1, "plain2": plain2} {
		if n := len(bookings(t, pool, s)); n != 1 {
			t.Errorf("%d bookings for the %s sale, want 1", n, name)
		}
	}
	if n := len(bookings(t, pool, late)) + len(bookings(t, pool, other)); n != 0 {
		t.Errorf("%d bookings for the failing events, want none", n)
	}
	var batchState string
	if err := pool.QueryRow(context.Background(), `SELECT state::text FROM river_job WHERE kind = 'polar_event_batch'`).Scan(&batchState); err != nil {
		t.Fatal(err)
	}
	if batchState != "completed" {
		t.Errorf("batch job %s, want completed once split", batchState)
	}
}

func TestBatchTransactionsAtOnceAreBounded(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{batchTx: 1})
	ctx := context.Background()
	var s [4]testkit.Shop
	for i := range s {
		s[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	}
	// The first batch waits, inside its transaction, for a session the
	// test holds.
	blocker, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer blocker.Rollback(ctx) //nolint:errcheck
	if _, err := blocker.Exec(ctx, `SELECT 1 FROM inventory_checkout_sessions WHERE id = $1 FOR UPDATE`, s[0].Session); err != nil {
		t.Fatal(err)
	}
	storeBatches(t, sys, map[string][]byte{
		"msg_0": event(t, "order.paid.json", s[0], "ord_0", nil),
		"msg_1": event(t, "order.paid.json", s[1], "ord_1", nil),
	})
	testkit.Within(t, 30*time.Second, "the first batch to wait for the held session", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return err == nil && n > 0
	})
	storeBatches(t, sys, map[string][]byte{
		"msg_2": event(t, "order.paid.json", s[2], "ord_2", nil),
		"msg_3": event(t, "order.paid.json", s[3], "ord_3", nil),
	})
	testkit.Within(t, 30*time.Second, "River to start both batch jobs", func() bool {
		var n int
		err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'polar_event_batch' AND state = 'running'`).Scan(&n)
		return err == nil && n == 2
	})
	// A negative can only be watched for a while: unbounded, the second
	// batch commits within milliseconds.
	time.Sleep(500 * time.Millisecond)
	if n := len(bookings(t, pool, s[2])) + len(bookings(t, pool, s[3])); n != 0 {
		t.Fatalf("%d bookings of the second batch while the first holds the only turn, want none", n)
	}
	if err := blocker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	for id, state := range sys.waitJobs(t, "msg_0", "msg_1", "msg_2", "msg_3") {
		if state != "completed" {
			t.Errorf("%s: %s, want completed", id, state)
		}
	}
	for i, shop := range s {
		if n := len(bookings(t, pool, shop)); n != 1 {
			t.Errorf("shop %d: %d bookings, want 1", i, n)
		}
	}
}

// TestBatchWaitingForATurnIsNotFailed holds every batch turn for three
// times the job timeout: a batch waiting for one meanwhile is neither
// failed nor discarded (waiting is not working; it goes back to the queue
// without using an attempt) and completes once a turn is free. The job
// timeout is 1 s here, not relay's 5 s, to keep the test short; the
// relation between the wait and the timeout is what is tested.
func TestBatchWaitingForATurnIsNotFailed(t *testing.T) {
	pool := testdb.NewPool(t)
	const timeout = time.Second
	sys := startSystem(t, pool, systemOpts{batchTx: 1, jobTimeout: timeout, maxAttempts: 2})
	ctx := context.Background()
	var s [2]testkit.Shop
	for i := range s {
		s[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	}
	release := sys.batches[0].HoldTurns()
	held := time.Now()
	storeBatches(t, sys, map[string][]byte{
		"msg_0": event(t, "order.paid.json", s[0], "ord_0", nil),
		"msg_1": event(t, "order.paid.json", s[1], "ord_1", nil),
	})
	jobErrors := func() (state string, errs int) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT state::text, coalesce(array_length(errors, 1), 0) FROM river_job
			WHERE kind = 'polar_event_batch'`).Scan(&state, &errs); err != nil {
			t.Fatal(err)
		}
		return state, errs
	}
	for time.Since(held) < 3*timeout {
		if state, errs := jobErrors(); errs > 0 || state == "discarded" {
			t.Fatalf("batch job %s with %d error(s) after waiting %v for a turn, want neither failed nor discarded",
				state, errs, time.Since(held).Round(time.Millisecond))
		}
		time.Sleep(50 * time.Millisecond)
	}
	release()
	for id, state := range sys.waitJobs(t, "msg_0", "msg_1") {
		if state != "completed" {
			t.Errorf("%s: %s, want completed", id, state)
		}
	}
	if state, errs := jobErrors(); state != "completed" || errs != 0 {
		t.Errorf("batch job %s with %d error(s), want completed without any", state, errs)
	}
	for i, shop := range s {
		if n := len(bookings(t, pool, shop)); n != 1 {
			t.Errorf("shop %d: %d bookings, want 1", i, n)
		}
	}
}
