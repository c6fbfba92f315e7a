package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/polarfake"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polarapi"
)

// childArgs, when set, makes this test binary run relay with those
// arguments instead of the tests: a relay process a test can kill -9.
const childArgs = "RELAY_TEST_CHILD_ARGS"

func TestMain(m *testing.M) {
	if args := os.Getenv(childArgs); args != "" {
		if err := run(context.Background(), strings.Fields(args), os.Getenv, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const reconcileKey = "cmVsYXktcmVjb25jaWxlLWNtZC10ZXN0LWtleS0wMDE="

// storefrontOrder is a paid storefront order at Polar for session.
func storefrontOrder(id, ws, session, checkout string) polarfake.Order {
	return polarfake.Order{ID: id, CheckoutID: checkout, Metadata: map[string]any{
		"kind": "inventory_checkout", "checkoutId": session, "wsId": ws, "environment": "production"}}
}

// TestReconcileCommands: relay connect asks for a pass, which relay serve
// runs at once and which books a sale no webhook brought, once (its late
// webhook books nothing); relay reconcile --dry-run reports a second one
// and a disabled endpoint and changes nothing; relay reconcile recovers
// and re-enables; relay connections list and POST /admin/api/reconcile;
// a revoked token fails the pass as unauthorized.
func TestReconcileCommands(t *testing.T) {
	prod := polarfake.New(polarapi.Production)
	srv := httptest.NewServer(prod)
	t.Cleanup(srv.Close)
	httpAddr := testkit.FreeAddr(t)
	p := startRelay(t, map[string]string{
		"RELAY_SECRETS_KEY": reconcileKey, "RELAY_ADMIN_TOKEN": testToken, "RELAY_HTTP_ADDR": httpAddr,
		"RELAY_POLAR_API_URL": srv.URL, "RELAY_PUBLIC_URL": "http://" + httpAddr, "RELAY_MAX_ATTEMPTS": "5",
	})
	ctx := context.Background()
	shop := testkit.SeedShop(t, p.pool, testkit.ShopOptions{})
	org := prod.AddOrganization()
	tok := prod.AddToken(org)
	prod.AddOrder(org, storefrontOrder("ord_never_delivered", shop.WS, shop.Session, shop.PolarCheckout))
	sales := func() int {
		var n int
		if err := p.pool.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions WHERE wallet_id = $1 AND source_kind = 'sale'`, shop.Wallet).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitSales := func(want int) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for sales() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%d sales booked after 15 s, want %d; logs:\n%s", sales(), want, p.logs.String())
			}
			time.Sleep(25 * time.Millisecond)
		}
	}

	out, err := relayStdin(t, p.env, tok+"\n", "connect", "--workspace", shop.WS, "--environment", "production")
	if err != nil || !strings.Contains(out, "asked for a reconciliation pass") {
		t.Fatalf("connect: %v\n%s", err, out)
	}
	t.Logf("relay connect:\n%s", out)
	waitSales(1) // the pass after connect recovered the sale
	secret := prod.Endpoints(org)[0].Secret
	body := testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_never_delivered"), nil)
	if code, err := testkit.Post(http.DefaultClient, p.hook+"/"+shop.WS, secret, "msg_late", body); err != nil || code != http.StatusOK {
		t.Fatalf("the late webhook: %d %v", code, err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		var status string
		if err := p.pool.QueryRow(ctx, `SELECT status FROM webhook_inbox WHERE webhook_id = 'msg_late'`).Scan(&status); err == nil && status == "processed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the late webhook was not processed within 15 s")
		}
		time.Sleep(25 * time.Millisecond)
	}
	if n := sales(); n != 1 {
		t.Fatalf("the late webhook booked again: %d sales", n)
	}

	// A second sale never delivered, and the endpoint disabled by Polar.
	var second string
	if err := p.pool.QueryRow(ctx, `INSERT INTO inventory_checkout_sessions (ws_id, total_amount, currency, polar_checkout_id, polar_environment)
		VALUES ($1, 4950, 'usd', 'chk_second', 'production') RETURNING id::text`, shop.WS).Scan(&second); err != nil {
		t.Fatal(err)
	}
	prod.AddOrder(org, storefrontOrder("ord_second", shop.WS, second, "chk_second"))
	prod.DisableEndpoint(org, prod.Endpoints(org)[0].ID)
	var rows int
	out, err = p.cli(t, "reconcile", "--workspace", shop.WS, "--environment", "production", "--dry-run")
	if err != nil || !strings.Contains(out, "booked") || !strings.Contains(out, "would recover (dry run)") || !strings.Contains(out, "would re-enable (dry run)") {
		t.Fatalf("reconcile --dry-run: %v\n%s", err, out)
	}
	t.Logf("relay reconcile --dry-run:\n%s", out)
	if err := p.pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox WHERE source = 'reconciliation'`).Scan(&rows); err != nil || rows != 1 {
		t.Fatalf("after the dry run: %d recovered rows (%v), want the first one only", rows, err)
	}
	if prod.Endpoints(org)[0].Enabled {
		t.Fatal("the dry run re-enabled the endpoint")
	}
	out, err = p.cli(t, "connections", "list")
	if err != nil || !strings.Contains(out, "enabled") { // as the pass after connect saw it: the dry run recorded nothing
		t.Fatalf("connections list: %v\n%s", err, out)
	}
	t.Logf("relay connections list:\n%s", out)

	out, err = p.cli(t, "reconcile", "--workspace", shop.WS, "--environment", "production")
	if err != nil || !strings.Contains(out, "recovered (inbox row") || !strings.Contains(out, "re-enabled") {
		t.Fatalf("reconcile: %v\n%s", err, out)
	}
	t.Logf("relay reconcile:\n%s", out)
	waitSales(2)
	if !prod.Endpoints(org)[0].Enabled {
		t.Fatal("the endpoint is still disabled")
	}
	out, err = p.cli(t, "connections", "list")
	if err != nil || !strings.Contains(out, "enabled") {
		t.Fatalf("connections list: %v\n%s", err, out)
	}
	t.Logf("relay connections list:\n%s", out)

	out, err = p.cli(t, "inbox", "list")
	if err != nil || !strings.Contains(out, "reconcile:ord_second:paid:0") || !strings.Contains(out, "reconciliation") || !strings.Contains(out, "msg_late") {
		t.Fatalf("inbox list: %v\n%s", err, out)
	}
	t.Logf("relay inbox list:\n%s", out)

	// The admin API: the same pass.
	req, _ := http.NewRequest(http.MethodPost, p.admin+"/admin/api/reconcile",
		strings.NewReader(`{"workspace":"`+shop.WS+`","environment":"production","dry_run":true}`))
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Result   string `json:"result"`
		Orders   int    `json:"orders"`
		Findings []any  `json:"findings"`
	}
	err = json.NewDecoder(resp.Body).Decode(&rep)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || rep.Result != "ok" || rep.Orders != 2 || len(rep.Findings) != 0 {
		t.Fatalf("POST /admin/api/reconcile: %d %v %+v", resp.StatusCode, err, rep)
	}

	if resp, err := http.Post(p.admin+"/admin/api/reconcile", "application/json",
		strings.NewReader(`{"workspace":"`+shop.WS+`","environment":"production"}`)); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("POST /admin/api/reconcile without credentials: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}

	prod.RevokeToken(tok)
	out, err = p.cli(t, "reconcile", "--workspace", shop.WS, "--environment", "production")
	if err == nil || !strings.Contains(err.Error(), "unauthorized") || !strings.Contains(out, "unauthorized") {
		t.Fatalf("reconcile with a revoked token: %v\n%s", err, out)
	}
	out, _ = p.cli(t, "connections", "list")
	if !strings.Contains(out, "unauthorized") {
		t.Fatalf("connections list after a rejected token:\n%s", out)
	}
	t.Logf("relay connections list after Polar rejected the token:\n%s", out)
}

// TestReconcileKilledMidPassNothingDoubled: relay reconcile is killed
// (SIGKILL) in the middle of a pass over 2,000 missed sales and run again:
// every sale is stored once, with one job.
func TestReconcileKilledMidPassNothingDoubled(t *testing.T) {
	prod := polarfake.New(polarapi.Production)
	srv := httptest.NewServer(prod)
	t.Cleanup(srv.Close)
	p := startRelay(t, map[string]string{"RELAY_SECRETS_KEY": reconcileKey, "RELAY_POLAR_API_URL": srv.URL,
		"RELAY_ROLE": "receiver"}) // no workers: the recoveries stay queued, to be counted
	ctx := context.Background()
	shop := testkit.SeedShop(t, p.pool, testkit.ShopOptions{})
	org := prod.AddOrganization()
	tok := prod.AddToken(org)
	if out, err := relayStdin(t, p.env, tok+"\n", "connect", "--workspace", shop.WS, "--environment", "production"); err != nil {
		t.Fatalf("connect: %v\n%s", err, out)
	}
	const n = 2000
	rows, err := p.pool.Query(ctx, `INSERT INTO inventory_checkout_sessions (ws_id, total_amount, currency, polar_checkout_id, polar_environment)
		SELECT $1, 4950, 'usd', 'chk_k' || g, 'production' FROM generate_series(1, $2) g RETURNING id::text, polar_checkout_id`, shop.WS, n)
	if err != nil {
		t.Fatal(err)
	}
	var orders []polarfake.Order
	for rows.Next() {
		var id, checkout string
		if err := rows.Scan(&id, &checkout); err != nil {
			t.Fatal(err)
		}
		o := storefrontOrder(fmt.Sprintf("ord_k%05d", len(orders)), shop.WS, id, checkout)
		o.CreatedAt = time.Now().Add(-time.Hour).Add(time.Duration(len(orders)) * time.Second) // one a second: Polar's created_at windows advance
		orders = append(orders, o)
	}
	prod.AddOrders(org, orders...)
	// Pages are slow, so that the kill lands between the first chunk
	// stored and the last.
	prod.SetHook(func(r *http.Request) {
		if r.URL.Path == "/v1/orders/" {
			time.Sleep(100 * time.Millisecond)
		}
	})
	recovered := func() int {
		var c int
		if err := p.pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox WHERE source = 'reconciliation'`).Scan(&c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childArgs+"=reconcile --workspace "+shop.WS+" --environment production")
	for k, v := range p.env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for recovered() == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("the pass stored nothing within 30 s:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait() //nolint:errcheck // killed
	mid := recovered()
	t.Logf("killed after %v with %d stored", time.Since(deadline.Add(-30*time.Second)), mid)
	if mid == 0 || mid >= n {
		t.Fatalf("killed with %d of %d stored: not mid-pass", mid, n)
	}
	prod.SetHook(nil)
	start := time.Now()
	defer func() { t.Logf("second pass: %v, %d requests", time.Since(start), prod.Requests("GET /v1/orders/")) }()
	out, err := p.cli(t, "reconcile", "--workspace", shop.WS, "--environment", "production")
	if err != nil {
		t.Fatalf("reconcile after the kill: %v\n%s", err, out)
	}
	if got := recovered(); got != n {
		t.Fatalf("%d recovered rows after the kill (%d before it) and a second pass, want %d", got, mid, n)
	}
	if got := testkit.EnqueuedEvents(t, p.pool); got != n {
		t.Fatalf("%d events in jobs, want %d", got, n)
	}
	if c := strings.Count(out, "recovered (inbox row"); c != n-mid {
		t.Fatalf("the second pass recovered %d, want the %d the killed one had not", c, n-mid)
	}
}

// TestServeReconcilesEveryInterval: relay serve's periodic pass (the
// interval shortened to 2 s from the default 10 minutes, so that the test
// waits seconds) books a sale of a connection stored after start, that no
// webhook brought, and counts it in its metrics.
func TestServeReconcilesEveryInterval(t *testing.T) {
	prod := polarfake.New(polarapi.Production)
	srv := httptest.NewServer(prod)
	t.Cleanup(srv.Close)
	p := startRelay(t, map[string]string{"RELAY_SECRETS_KEY": reconcileKey, "RELAY_POLAR_API_URL": srv.URL,
		"RELAY_RECONCILE_INTERVAL": "2s", "RELAY_MAX_ATTEMPTS": "5"})
	ctx := context.Background()
	shop := testkit.SeedShop(t, p.pool, testkit.ShopOptions{})
	org := prod.AddOrganization()
	tok := prod.AddToken(org)
	keys, err := endpoints.ParseKeyring(envFunc(map[string]string{endpoints.EnvKey: reconcileKey}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connections.NewStore(p.pool, keys).Put(ctx, shop.WS, polarapi.Production, tok, org, connections.Endpoint{}); err != nil {
		t.Fatal(err)
	}
	prod.AddOrder(org, storefrontOrder("ord_interval", shop.WS, shop.Session, shop.PolarCheckout))
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if err := p.pool.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions WHERE wallet_id = $1 AND source_kind = 'sale'`, shop.Wallet).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no sale booked within 20 s of 2 s intervals; logs:\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get(p.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	body.ReadFrom(resp.Body) //nolint:errcheck
	resp.Body.Close()
	for _, want := range []string{
		`relay_reconcile_recovered_total{environment="production",kind="booked"} 1`,
		`relay_polar_connections{state="missing"} 1`,
		`relay_polar_api_requests_total{endpoint="orders",status="2xx"}`,
		`relay_reconcile_passes_total{environment="production",result="ok"}`,
	} {
		if !strings.Contains(body.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
