package main

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// completeUnbooked writes what relay leaves when a paid sale cannot be
// booked: the session completed, unbooked, and its pending row.
func completeUnbooked(t *testing.T, pool *pgxpool.Pool, s testkit.Shop, paymentCurrency, reason string) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), `
		WITH done AS (UPDATE inventory_checkout_sessions SET status = 'completed', completed_at = now() WHERE id = $1 RETURNING id)
		INSERT INTO pending_bookings (session_id, ws_id, amount, currency, payment_currency, reason, note, description, paid_at)
		SELECT id, $2, 4950, 'USD', $3, $4, 'as the ledger left it', 'Sale', now() FROM done`,
		s.Session, s.WS, paymentCurrency, reason); err != nil {
		t.Fatal(err)
	}
}

func TestBookingsCommands(t *testing.T) {
	dbURL := testdb.New(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	env := map[string]string{"DATABASE_URL": dbURL}
	cli := func(args ...string) (string, error) {
		t.Helper()
		var out strings.Builder
		err := run(context.Background(), args, envFunc(env), &out)
		return out.String(), err
	}
	fixable := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	never := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	completeUnbooked(t, pool, fixable, "USD", "no_wallet")
	completeUnbooked(t, pool, never, "GBP", "currency")

	out, err := cli("bookings", "pending")
	if err != nil || !regexp.MustCompile(`(?m)^`+fixable.Session+` +`+fixable.WS+` +4950 USD +0 +no_wallet +1 `).MatchString(out) ||
		!strings.Contains(out, never.Session) || !strings.HasPrefix(out, "SESSION") {
		t.Fatalf("bookings pending: %v\n%s", err, out)
	}
	for _, c := range []struct {
		args       []string
		want, lack string
	}{
		{[]string{"bookings", "pending", "--reason", "currency"}, never.Session, fixable.Session},
		{[]string{"bookings", "pending", "--workspace", fixable.WS}, fixable.Session, never.Session},
		{[]string{"bookings", "pending", "--limit", "1"}, "(1 of 2 shown; --limit shows more)", never.Session},
	} {
		if out, err := cli(c.args...); err != nil || !strings.Contains(out, c.want) || strings.Contains(out, c.lack) {
			t.Errorf("%s: %v\n%s", strings.Join(c.args, " "), err, out)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"bookings"}, "no subcommand"},
		{[]string{"bookings", "frob"}, `unknown bookings subcommand "frob"`},
		{[]string{"bookings", "pending", "--reason", "skipped_currency"}, `unknown pending reason "skipped_currency"`},
		{[]string{"bookings", "pending", "--workspace", "shop"}, `workspace id "shop" is not a UUID`},
		{[]string{"bookings", "post", "--workspace", "shop"}, `workspace id "shop" is not a UUID`},
		{[]string{"bookings", "post", "now"}, "takes no arguments"},
	} {
		if _, err := cli(c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", strings.Join(c.args, " "), err, c.want)
		}
	}

	out, err = cli("bookings", "post")
	if err != nil || !strings.Contains(out, "still pending session "+fixable.Session+" (4950 USD, workspace "+fixable.WS+"): no_wallet: no default wallet") ||
		!strings.Contains(out, "still pending session "+never.Session) || !strings.Contains(out, "paid in GBP") ||
		!strings.HasSuffix(out, "posted 0, still pending 2\n") {
		t.Fatalf("bookings post before the fix: %v\n%s", err, out)
	}
	if _, err := pool.Exec(context.Background(), `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, fixable.WS, fixable.Wallet); err != nil {
		t.Fatal(err)
	}
	out, err = cli("bookings", "post", "--workspace", fixable.WS)
	if err != nil || !regexp.MustCompile(`^booked session `+fixable.Session+`: 4950 USD into wallet `+fixable.Wallet+` as transaction [0-9a-f-]{36}\n`).MatchString(out) ||
		!strings.HasSuffix(out, "posted 1, still pending 0\n") {
		t.Fatalf("bookings post after the fix: %v\n%s", err, out)
	}
	if status, n := shopState(t, pool, fixable); status != "completed" || n != 1 {
		t.Errorf("after posting: session %s, %d bookings; want completed, 1", status, n)
	}
	if out, err := cli("bookings", "pending"); err != nil || strings.Contains(out, fixable.Session) || !strings.Contains(out, never.Session) {
		t.Errorf("bookings pending after posting: %v\n%s", err, out)
	}
}

// TestServePostsPendingBookings checks relay serve's own poster: a sale paid
// while its workspace had no default wallet is booked once the wallet is
// set, with no command, and the admin API and /metrics show it.
func TestServePostsPendingBookings(t *testing.T) {
	p := startRelay(t, map[string]string{"RELAY_ADMIN_TOKEN": testToken})
	s := testkit.SeedShop(t, p.pool, testkit.ShopOptions{NoWallet: true})
	deliver(t, p.hook, testSecret, "msg_pending", testkit.Event(t, "order.updated.paid.json", s.Sale("ord_pending"), nil))
	waitJob(t, p.pool, "msg_pending", "completed")

	code, body, _ := doReq(t, "GET", p.admin+"/admin/api/bookings/pending", bearer(testToken), "")
	if code != http.StatusOK || !strings.Contains(body, s.Session) || !strings.Contains(body, `"reason": "no_wallet"`) {
		t.Fatalf("GET pending: %d %s", code, body)
	}
	metric := func(series string) bool {
		_, body, _ := doReq(t, "GET", p.admin+"/metrics", nil, "")
		return strings.Contains(body, "\n"+series+"\n")
	}
	if !metric(`relay_pending_bookings{reason="no_wallet"} 1`) {
		t.Error(`/metrics lacks relay_pending_bookings{reason="no_wallet"} 1`)
	}

	if _, err := p.pool.Exec(context.Background(), `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet); err != nil {
		t.Fatal(err)
	}
	fixed := time.Now()
	for {
		if _, n := shopState(t, p.pool, s); n == 1 {
			break
		}
		if time.Since(fixed) > time.Minute {
			t.Fatal("not booked a minute after the wallet was set")
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("booked %v after the wallet was set", time.Since(fixed).Round(100*time.Millisecond))
	for _, series := range []string{`relay_ledger_bookings_total{result="posted_pending"} 1`, `relay_pending_bookings{reason="no_wallet"} 0`, `relay_pending_booking_oldest_age_seconds 0`} {
		if !metric(series) {
			t.Errorf("/metrics lacks %s", series)
		}
	}
	if !strings.Contains(p.logs.String(), "pending booking posted") {
		t.Errorf("serve's log does not say it posted the sale")
	}
}
