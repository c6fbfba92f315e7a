package main

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/polarfake"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polarapi"
)

// TestConnect connects workspaces through `relay connect` against fakes of
// Polar's production and sandbox APIs, with relay serve running: a token
// Polar rejects stores nothing; a good one registers the workspace's
// endpoint at Polar, and a delivery signed with the secret Polar handed
// out is then verified and stored by relay; connecting again stores
// nothing twice and re-enables an endpoint Polar disabled; a token that
// may not write webhooks is stored with the `relay endpoints add` hint.
// Then connections list, the admin API, rekey and disconnect.
func TestConnect(t *testing.T) {
	const key = "cmVsYXktY21kLXRlc3Qtc2VjcmV0cy1rZXktMDAwMDE="
	const newKey = "cmVsYXktY21kLXRlc3Qtc2VjcmV0cy1rZXktMDAwMDI="
	prod, sandbox := polarfake.New(polarapi.Production), polarfake.New(polarapi.Sandbox)
	prodSrv, sandboxSrv := httptest.NewServer(prod), httptest.NewServer(sandbox)
	t.Cleanup(prodSrv.Close)
	t.Cleanup(sandboxSrv.Close)
	httpAddr := testkit.FreeAddr(t)
	p := startRelay(t, map[string]string{
		"RELAY_SECRETS_KEY": key, "RELAY_ADMIN_TOKEN": testToken, "RELAY_HTTP_ADDR": httpAddr,
		"RELAY_POLAR_API_URL": prodSrv.URL, "RELAY_POLAR_SANDBOX_API_URL": sandboxSrv.URL,
		"RELAY_PUBLIC_URL": "http://" + httpAddr + "/",
	})
	shop := testkit.SeedShop(t, p.pool, testkit.ShopOptions{})
	ws := shop.WS
	sbOrg, prodOrg := sandbox.AddOrganization(), prod.AddOrganization()
	sbTok := sandbox.AddToken(sbOrg)
	prodTok := prod.AddToken(prodOrg, polarfake.ScopeOrdersRead, polarfake.ScopeRefundsRead, polarfake.ScopeWebhooksRead)
	tokens := []string{sbTok, prodTok}
	connect := func(env, token string) (string, error) {
		t.Helper()
		out, err := relayStdin(t, p.env, token+"\n", "connect", "--workspace", ws, "--environment", env)
		for _, tok := range tokens {
			if strings.Contains(out, tok) || (err != nil && strings.Contains(err.Error(), tok)) {
				t.Errorf("connect prints the token:\n%s\n%v", out, err)
			}
		}
		return out, err
	}
	count := func(table string) int {
		t.Helper()
		var n int
		if err := p.pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	// Refused: a token Polar does not know, and a production token for sandbox.
	for _, tc := range []struct{ env, token string }{{"sandbox", "polar_oat_NotATokenPolarKnows0123456789"}, {"sandbox", prodTok}} {
		out, err := connect(tc.env, tc.token)
		if err == nil || !strings.Contains(err.Error(), "rejected the token (401)") || !strings.Contains(err.Error(), "nothing was stored") {
			t.Errorf("a token Polar rejects: %v\n%s", err, out)
		}
	}
	if n := prod.TokenRequests(prodTok); n != 0 {
		t.Errorf("the production token was sent to production %d times while connecting sandbox", n)
	}
	if count("polar_connections") != 0 || count("endpoint_secrets") != 0 || len(sandbox.Endpoints(sbOrg)) != 0 {
		t.Fatal("a refused token left something behind")
	}

	// Connected: the endpoint is registered and its secret verifies.
	out, err := connect("sandbox", sbTok)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, out)
	}
	t.Logf("relay connect (sandbox):\n%s", out)
	want := "http://" + httpAddr + "/webhooks/polar/" + ws
	eps := sandbox.Endpoints(sbOrg)
	if len(eps) != 1 || eps[0].URL != want || eps[0].Format != "raw" || !slices.Equal(eps[0].Events, polarapi.RelayEvents) || !eps[0].Enabled {
		t.Fatalf("endpoints at Polar: %+v, want one at %s", eps, want)
	}
	if !strings.Contains(out, "created relay's webhook endpoint at Polar: "+want) || !strings.Contains(out, "stored the endpoint's secret") ||
		strings.Contains(out, eps[0].Secret) {
		t.Errorf("connect's output:\n%s", out)
	}
	body := testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_connect"), nil)
	start := time.Now()
	for {
		code, err := testkit.Post(http.DefaultClient, p.hook+"/"+ws, eps[0].Secret, "msg_connect", body)
		if err != nil {
			t.Fatal(err)
		}
		if code == http.StatusOK {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("a delivery signed with the secret Polar handed out: %d after 5 s, want 200", code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var stored string
	if err := p.pool.QueryRow(context.Background(), `SELECT environment FROM webhook_inbox WHERE webhook_id = 'msg_connect' AND workspace_id = $1`, ws).Scan(&stored); err != nil || stored != "sandbox" {
		t.Fatalf("the delivery is not stored as the workspace's sandbox delivery: %v %q", err, stored)
	}

	// The reconciliation pass connect asked for has run (else it could
	// re-enable the endpoint disabled below before connect does).
	for deadline := time.Now().Add(10 * time.Second); count("polar_connections WHERE last_reconciled_at IS NOT NULL") != 1; {
		if time.Now().After(deadline) {
			t.Fatal("no reconciliation pass within 10 s of connect")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Again, after Polar disabled the endpoint: updated and re-enabled, the
	// secret not stored twice.
	sandbox.DisableEndpoint(sbOrg, eps[0].ID)
	out, err = connect("sandbox", sbTok)
	if err != nil || !strings.Contains(out, "re-enabled") || !strings.Contains(out, "stored already") {
		t.Fatalf("connect again: %v\n%s", err, out)
	}
	if eps := sandbox.Endpoints(sbOrg); len(eps) != 1 || !eps[0].Enabled || count("endpoint_secrets") != 1 || count("polar_connections") != 1 {
		t.Fatalf("after connecting twice: %+v, %d secrets, %d connections", eps, count("endpoint_secrets"), count("polar_connections"))
	}

	// A token that may not write webhooks: stored, with the hint.
	out, err = connect("production", prodTok)
	if err != nil || !strings.Contains(out, "relay endpoints add --workspace "+ws+" --environment production") || !strings.Contains(out, "webhooks:write") {
		t.Fatalf("connect without webhooks:write: %v\n%s", err, out)
	}
	t.Logf("relay connect (production, no webhooks:write):\n%s", out)
	if len(prod.Endpoints(prodOrg)) != 0 || count("endpoint_secrets") != 1 || count("polar_connections") != 2 {
		t.Fatal("connect without webhooks:write registered or stored a secret")
	}

	// Without RELAY_PUBLIC_URL: the token is stored, nothing registered, and
	// the hint says how to finish.
	noURL := maps.Clone(p.env)
	delete(noURL, "RELAY_PUBLIC_URL")
	ws2 := testkit.SeedShop(t, p.pool, testkit.ShopOptions{}).WS
	sb2 := sandbox.AddToken(sandbox.AddOrganization())
	out, err = relayStdin(t, noURL, sb2+"\n", "connect", "--workspace", ws2, "--environment", "sandbox")
	if err != nil || !strings.Contains(out, "RELAY_PUBLIC_URL is not set") || !strings.Contains(out, "relay endpoints add --workspace "+ws2+" --environment sandbox") ||
		strings.Contains(out, sb2) || count("polar_connections") != 3 || count("endpoint_secrets") != 1 {
		t.Fatalf("connect without RELAY_PUBLIC_URL: %v\n%s", err, out)
	}

	// connections list.
	out, err = relayStdin(t, p.env, "", "connections", "list", "--workspace", ws)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("relay connections list:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 || !strings.Contains(lines[1], "production") || !strings.Contains(lines[1], "…"+prodTok[len(prodTok)-4:]) ||
		!strings.Contains(lines[1], "missing") || !strings.Contains(lines[2], "sandbox") || !strings.Contains(lines[2], "enabled") ||
		!strings.Contains(lines[2], " ok ") { // the pass connect asked for

		t.Errorf("connections list:\n%s", out)
	}

	// The admin API: list (no token in it), a refused connect, a remove.
	code, body2, _ := doReq(t, http.MethodGet, p.admin+"/admin/api/connections?workspace="+ws, bearer(testToken), "")
	var listed struct {
		Connections []struct{ Environment, State string }
	}
	if code != http.StatusOK || json.Unmarshal([]byte(body2), &listed) != nil || len(listed.Connections) != 2 || strings.Contains(body2, sbTok) {
		t.Errorf("GET /admin/api/connections: %d %s", code, body2)
	}
	code, body2, _ = doReq(t, http.MethodPost, p.admin+"/admin/api/connections", bearer(testToken),
		`{"workspace":"`+ws+`","environment":"production","token":"polar_oat_NotATokenPolarKnows0123456789"}`)
	if code != http.StatusUnprocessableEntity || !strings.Contains(body2, "401") {
		t.Errorf("POST /admin/api/connections with a bad token: %d %s", code, body2)
	}
	if code, body2, _ := doReq(t, http.MethodDelete, p.admin+"/admin/api/connections/"+ws+"/production", bearer(testToken), ""); code != http.StatusOK {
		t.Errorf("DELETE /admin/api/connections: %d %s", code, body2)
	}
	code, body2, _ = doReq(t, http.MethodPost, p.admin+"/admin/api/connections", bearer(testToken),
		`{"workspace":"`+ws+`","environment":"production","token":"`+prodTok+`"}`)
	if code != http.StatusCreated || strings.Contains(body2, prodTok) || !strings.Contains(body2, "relay endpoints add") {
		t.Errorf("POST /admin/api/connections: %d %s", code, body2)
	}

	// rekey covers the tokens; disconnect removes one.
	rekeyEnv := map[string]string{"DATABASE_URL": p.env["DATABASE_URL"], "RELAY_SECRETS_KEY": newKey + "," + key}
	if out, err := relayStdin(t, rekeyEnv, "", "endpoints", "rekey"); err != nil || !strings.Contains(out, "re-encrypted 3 Polar connection token(s)") {
		t.Fatalf("rekey: %v\n%s", err, out)
	}
	newOnly := map[string]string{"DATABASE_URL": p.env["DATABASE_URL"], "RELAY_SECRETS_KEY": newKey}
	keys, err := endpoints.ParseKeyring(envFunc(newOnly))
	if err != nil {
		t.Fatal(err)
	}
	if err := connections.NewStore(p.pool, keys).Check(context.Background()); err != nil {
		t.Errorf("after rekey, the new key alone: %v", err)
	}
	if out, err := relayStdin(t, p.env, "", "disconnect", "--workspace", ws, "--environment", "sandbox"); err != nil || !strings.Contains(out, "removed the sandbox Polar token") {
		t.Fatalf("disconnect: %v\n%s", err, out)
	}
	if count("polar_connections") != 2 {
		t.Errorf("%d connections after disconnecting one of three", count("polar_connections"))
	}
}

// TestServeRefusesUnreadableTokens: a stored Polar token the configured
// key cannot decrypt stops relay serve at start, naming the connection,
// never the token.
func TestServeRefusesUnreadableTokens(t *testing.T) {
	const key = "cmVsYXktY21kLXRlc3Qtc2VjcmV0cy1rZXktMDAwMDE="
	const otherKey = "b3RoZXItY21kLXRlc3Qtc2VjcmV0cy1rZXktMDAwMDE="
	const token = "polar_oat_ServeRefusesUnreadableTokens0123"
	dbURL := testdb.New(t)
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ws := testkit.SeedShop(t, pool, testkit.ShopOptions{}).WS
	keys, err := endpoints.ParseKeyring(envFunc(map[string]string{"RELAY_SECRETS_KEY": key}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connections.NewStore(pool, keys).Put(context.Background(), ws, "production", token, "", connections.Endpoint{}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"DATABASE_URL": dbURL, "POLAR_WEBHOOK_SECRET": testSecret, "RELAY_SECRETS_KEY": otherKey,
		"RELAY_HTTP_ADDR": testkit.FreeAddr(t), "RELAY_ADMIN_ADDR": testkit.FreeAddr(t)}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = run(ctx, []string{"serve"}, envFunc(env), &testkit.SyncBuffer{})
	if err == nil || !strings.Contains(err.Error(), "cannot decrypt the Polar token of connection") || strings.Contains(err.Error(), token) {
		t.Errorf("serve with a key that cannot read the stored token: %v", err)
	}
}
