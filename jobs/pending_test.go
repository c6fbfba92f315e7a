package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/ledger"
)

// pendingRow is a shop's row in pending_bookings.
type pendingRow struct {
	rows     int
	reason   string
	attempts int
	refunded int64
	posted   bool
}

func pendingOf(t *testing.T, pool *pgxpool.Pool, s shop) pendingRow {
	t.Helper()
	var p pendingRow
	err := pool.QueryRow(context.Background(), `
		SELECT count(*) OVER (), reason, attempts, refunded_amount, posted_at IS NOT NULL
		FROM pending_bookings WHERE session_id = $1`, s.Session).Scan(&p.rows, &p.reason, &p.attempts, &p.refunded, &p.posted)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		t.Fatal(err)
	}
	return p
}

// unbookedSale seeds a shop without a default wallet and has its paid order
// delivered (as webhookID) and worked: the sale is pending.
func unbookedSale(t *testing.T, sys *system, webhookID string) shop {
	t.Helper()
	s := testkit.SeedShop(t, sys.pool, testkit.ShopOptions{NoWallet: true})
	sys.send(t, webhookID, event(t, "order.updated.paid.json", s, "ord_"+webhookID, nil))
	sys.waitJobs(t, webhookID)
	return s
}

// setDefaultWallet sets the shop's own wallet as its default.
func setDefaultWallet(t *testing.T, pool *pgxpool.Pool, s shop) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet); err != nil {
		t.Fatal(err)
	}
}

// waitEventJobs polls until every event job, not just the newest of each
// webhook, is finished.
func waitEventJobs(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM river_job
			WHERE kind IN ('polar_event', 'polar_event_batch') AND finalized_at IS NULL`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d event jobs not finished after 30s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unbookable seeds one shop per reason a paid sale can be pending for.
func unbookable(t *testing.T, pool *pgxpool.Pool) (noWallet, foreignWallet, euroWallet shop) {
	t.Helper()
	noWallet = testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	foreignWallet = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	foreign := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	if _, err := pool.Exec(context.Background(), `UPDATE workspace_configs SET value = $2 WHERE ws_id = $1`, foreignWallet.WS, foreign.Wallet); err != nil {
		t.Fatal(err)
	}
	euroWallet = testkit.SeedShop(t, pool, testkit.ShopOptions{WalletCurrency: "EUR"})
	return noWallet, foreignWallet, euroWallet
}

// fixWallets does what the storefront's admin does: a default wallet where
// there was none, the workspace's own instead of another's, the wallet's
// currency corrected.
func fixWallets(t *testing.T, pool *pgxpool.Pool, noWallet, foreignWallet, euroWallet shop) {
	t.Helper()
	setDefaultWallet(t, pool, noWallet)
	ctx := context.Background()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`UPDATE workspace_configs SET value = $2, updated_at = now() WHERE ws_id = $1`, []any{foreignWallet.WS, foreignWallet.Wallet}},
		{`UPDATE workspace_wallets SET currency = 'USD' WHERE id = $1`, []any{euroWallet.Wallet}},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatal(err)
		}
	}
}

// TestPendingRecordedOnceUnderConcurrentRedelivery delivers each kind of
// unbookable sale 20 times at once under distinct webhook ids, and replays
// one of them 20 times at once: one pending row per sale, with its reason.
func TestPendingRecordedOnceUnderConcurrentRedelivery(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	noWallet, foreignWallet, euroWallet := unbookable(t, pool)
	shops := map[string]shop{"no_wallet": noWallet, "wallet_workspace": foreignWallet, "currency": euroWallet}

	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		ids   []string
	)
	for reason, s := range shops {
		body := event(t, "order.updated.paid.json", s, "ord_"+reason, nil)
		for i := range 20 {
			id := fmt.Sprintf("msg_%s_%d", reason, i)
			ids = append(ids, id)
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
	sys.waitJobs(t, ids...)

	start = make(chan struct{})
	for reason := range shops {
		for range 20 {
			wg.Go(func() {
				<-start
				if _, err := jobs.Replay(context.Background(), pool, sys.clients[0], "msg_"+reason+"_0", ""); err != nil {
					t.Errorf("replay: %v", err)
				}
			})
		}
	}
	close(start)
	wg.Wait()
	waitEventJobs(t, pool)

	for reason, s := range shops {
		p := pendingOf(t, pool, s)
		// The poster's passes add attempts of their own.
		if p.rows != 1 || p.reason != reason || p.attempts < 40 || p.posted {
			t.Errorf("%s: pending = %+v, want one row for %s with every attempt counted, not posted", reason, p, reason)
		}
		if b := bookings(t, pool, s); len(b) != 0 {
			t.Errorf("%s: bookings = %+v, want none", reason, b)
		}
		if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "skipped_" + reason}); v != 40 {
			t.Errorf("skipped_%s = %v, want 40: every delivery and replay counts", reason, v)
		}
	}
}

// TestFixingTheWalletPostsWithinAMinute runs two replicas with relay's
// periodic poster at its default interval. The wallets are fixed and
// nothing else is done: every fixable sale is booked within a minute, once,
// a refund recorded while it was pending reversed; a sale paid in another
// currency and one whose session was deleted stay pending.
func TestFixingTheWalletPostsWithinAMinute(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{clients: 2})
	noWallet, foreignWallet, euroWallet := unbookable(t, pool)
	paidInGBP := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	deleted := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})

	sys.send(t, "msg_nowallet", event(t, "order.updated.paid.json", noWallet, "ord_nowallet", nil))
	sys.send(t, "msg_foreign", event(t, "order.updated.paid.json", foreignWallet, "ord_foreign", nil))
	sys.send(t, "msg_eur", event(t, "order.updated.paid.json", euroWallet, "ord_eur", nil))
	sys.send(t, "msg_gbp", event(t, "order.updated.paid.json", paidInGBP, "ord_gbp", func(d map[string]any) { d["currency"] = "gbp" }))
	sys.send(t, "msg_deleted", event(t, "order.updated.paid.json", deleted, "ord_deleted", nil))
	sys.waitJobs(t, "msg_nowallet", "msg_foreign", "msg_eur", "msg_gbp", "msg_deleted")
	// A partial refund while the sale is pending.
	sys.send(t, "msg_refund", event(t, "refund.updated.json", noWallet, "ord_nowallet", func(d map[string]any) {
		d["amount"], d["tax_amount"] = 1000, 0
	}))
	sys.waitJobs(t, "msg_refund")
	if p := pendingOf(t, pool, noWallet); p.refunded != 1000 || p.posted {
		t.Fatalf("pending after the refund = %+v, want 1000 refunded recorded, not posted", p)
	}
	if _, err := pool.Exec(context.Background(), `DELETE FROM inventory_checkout_sessions WHERE id = $1`, deleted.Session); err != nil {
		t.Fatal(err)
	}
	setDefaultWallet(t, pool, deleted)

	fixed := time.Now()
	fixWallets(t, pool, noWallet, foreignWallet, euroWallet)
	deadline := fixed.Add(time.Minute)
	for {
		n := 0
		for _, s := range []shop{noWallet, foreignWallet, euroWallet} {
			if session(t, pool, s).txID != nil {
				n++
			}
		}
		if n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 3 sales booked a minute after their wallets were fixed", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("posted %v after the fix (interval %v)", time.Since(fixed).Round(100*time.Millisecond), jobs.PendingInterval)

	for _, c := range []struct {
		s     shop
		order string
		want  []int64 // the sale, then reversals
	}{{noWallet, "ord_nowallet", []int64{4950, -1000}}, {foreignWallet, "ord_foreign", []int64{4950}}, {euroWallet, "ord_eur", []int64{4950}}} {
		b := bookings(t, pool, c.s)
		var got []int64
		for _, e := range b {
			got = append(got, e.amount)
		}
		if fmt.Sprint(got) != fmt.Sprint(c.want) || b[0].wallet != c.s.Wallet || b[0].description != "Polar order "+c.order {
			t.Errorf("%s: bookings = %+v, want %v into its wallet, the sale described as its order", c.order, b, c.want)
		}
		if p := pendingOf(t, pool, c.s); !p.posted {
			t.Errorf("%s: pending = %+v, want posted", c.order, p)
		}
	}
	// A pass commits each sale on its own and counts what it posted once it
	// ends: the counters may trail the bookings seen above by the rest of it.
	passEnd := time.Now().Add(10 * time.Second)
	for sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "posted_pending"}) < 3 && time.Now().Before(passEnd) {
		time.Sleep(20 * time.Millisecond)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "posted_pending"}); v != 3 {
		t.Errorf("posted_pending = %v, want 3", v)
	}
	if v := sys.metric(t, "relay_ledger_bookings_total", map[string]string{"result": "reversed"}); v != 1 {
		t.Errorf("reversed = %v, want 1", v)
	}

	list, _, err := ledger.ListPending(context.Background(), pool, ledger.PendingFilter{})
	if err != nil {
		t.Fatal(err)
	}
	still := map[string]ledger.PendingBooking{}
	for _, b := range list {
		still[b.SessionID] = b
	}
	if b, ok := still[paidInGBP.Session]; len(still) != 2 || !ok || b.Reason != ledger.ReasonCurrency || b.PaymentCurrency != "GBP" {
		t.Errorf("still pending = %+v, want the GBP sale for its currency and the deleted session's", list)
	}
	if b, ok := still[deleted.Session]; !ok || !b.SessionDeleted || b.Reason != ledger.ReasonNoWallet {
		t.Errorf("deleted session's sale = %+v, want listed with its reason", b)
	}
}

// TestPostingWhileTheEventIsReplayedBooksOnce replays a pending sale's
// event many times while posting it many times: one booking.
func TestPostingWhileTheEventIsReplayedBooksOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{clients: 2})
	s := unbookedSale(t, sys, "msg_race")
	setDefaultWallet(t, pool, s)

	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
	)
	for i := range 10 {
		wg.Go(func() {
			<-start
			if _, err := jobs.Replay(context.Background(), pool, sys.clients[i%2], "msg_race", ""); err != nil {
				t.Errorf("replay: %v", err)
			}
		})
		wg.Go(func() {
			<-start
			if _, err := jobs.PostPending(context.Background(), pool, nil, nil, s.WS); err != nil {
				t.Errorf("post: %v", err)
			}
		})
	}
	close(start)
	wg.Wait()
	sys.waitJobs(t, "msg_race")
	if b := bookings(t, pool, s); len(b) != 1 || b[0].amount != 4950 {
		t.Fatalf("bookings = %+v, want exactly one of 4950", b)
	}
	if p := pendingOf(t, pool, s); !p.posted {
		t.Errorf("pending = %+v, want posted", p)
	}
}

// TestFailingPassIsLoggedNotRetried: a pass that cannot book a sale
// completes, logging why; the next pass tries again.
func TestFailingPassIsLoggedNotRetried(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := unbookedSale(t, sys, "msg_fails")
	setDefaultWallet(t, pool, s)
	ctx := context.Background()
	for _, q := range []string{
		`UPDATE pending_bookings SET next_attempt_at = now()`, // due
		`CREATE FUNCTION refuse_booking() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'simulated failure'; END $$`,
		`CREATE TRIGGER refuse_booking BEFORE INSERT ON wallet_transactions FOR EACH ROW EXECUTE FUNCTION refuse_booking()`,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	logs := &testkit.SyncBuffer{}
	w := jobs.NewPendingWorker(pool, nil, slog.New(slog.NewTextHandler(logs, nil)))
	if err := w.Work(ctx, &river.Job[jobs.PostPendingArgs]{JobRow: &rivertype.JobRow{ID: 1}}); err != nil {
		t.Fatalf("a failed pass returned %v, want nil: the next pass is its retry", err)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "simulated failure") {
		t.Errorf("log = %q, want a warning with the cause", logs.String())
	}
	if p := pendingOf(t, pool, s); p.posted || p.attempts != 2 {
		t.Errorf("pending = %+v, want still pending, the failed attempt counted", p)
	}
	var secs float64
	if err := pool.QueryRow(ctx, `SELECT extract(epoch FROM next_attempt_at - last_attempt_at)::float8 FROM pending_bookings`).Scan(&secs); err != nil {
		t.Fatal(err)
	}
	if wait := time.Duration(secs * float64(time.Second)); wait < 15*time.Second {
		t.Errorf("next attempt %v after the failed one, want it to wait its turn (2 × %v)", wait, ledger.RetryBase)
	}
}
