package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/polar"
)

// shop is a storefront workspace with a default wallet; its checkout
// session id is chosen up front and the session created only on demand, as
// when a storefront's write lags behind Polar's event.
type shop struct {
	ws, wallet, session, polarCheckout string
}

func seedShop(t *testing.T, pool *pgxpool.Pool) shop {
	t.Helper()
	ctx := context.Background()
	var s shop
	s.polarCheckout = fmt.Sprintf("chk_%d", time.Now().UnixNano())
	q := func(sql string, args ...any) string {
		t.Helper()
		var id string
		if err := pool.QueryRow(ctx, sql, args...).Scan(&id); err != nil {
			t.Fatalf("seed: %s: %v", sql, err)
		}
		return id
	}
	s.ws = q(`INSERT INTO workspaces (name) VALUES ('Demo shop') RETURNING id::text`)
	s.wallet = q(`INSERT INTO workspace_wallets (ws_id, name, currency) VALUES ($1, 'Main', 'USD') RETURNING id::text`, s.ws)
	q(`INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2) RETURNING id`, s.ws, s.wallet)
	s.session = q(`SELECT gen_random_uuid()::text`)
	return s
}

// openSession writes the checkout session the storefront was late with.
func (s shop) openSession(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	var category, product string
	if err := pool.QueryRow(ctx, `INSERT INTO transaction_categories (ws_id, name) VALUES ($1, 'Sales') RETURNING id::text`, s.ws).Scan(&category); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO workspace_products (ws_id, name, finance_category_id) VALUES ($1, 'Mug', $2) RETURNING id::text`, s.ws, category).Scan(&product); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO inventory_checkout_sessions (id, ws_id, status, total_amount, currency, polar_checkout_id)
		VALUES ($1, $2, 'reserved', 4950, 'usd', $3)`, s.session, s.ws, s.polarCheckout); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO inventory_checkout_lines (checkout_session_id, product_id, quantity, unit_amount) VALUES ($1, $2, 3, 1500)`, s.session, product); err != nil {
		t.Fatal(err)
	}
}

// state returns the session's status and how many bookings the shop has.
func (s shop) state(t *testing.T, pool *pgxpool.Pool) (status string, bookings int) {
	t.Helper()
	ctx := context.Background()
	if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT status FROM inventory_checkout_sessions WHERE id = $1), 'absent')`, s.session).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions t JOIN workspace_wallets w ON w.id = t.wallet_id WHERE w.ws_id = $1`, s.ws).Scan(&bookings); err != nil {
		t.Fatal(err)
	}
	return status, bookings
}

// paidOrder is a paid order.updated event for the shop's session.
func paidOrder(t *testing.T, s shop, orderID string) []byte {
	t.Helper()
	raw, err := os.ReadFile("../../testdata/events/order.updated.paid.json")
	if err != nil {
		t.Fatal(err)
	}
	var env map[string]any
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	data := env["data"].(map[string]any)
	md := data["metadata"].(map[string]any)
	md["checkoutId"], md["wsId"] = s.session, s.ws
	data["id"], data["checkout_id"] = orderID, s.polarCheckout
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// deliver posts body as Polar would and fails the test unless it gets 200.
func deliver(t *testing.T, url, secret, webhookID string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range polar.SignedHeaders(secret, webhookID, time.Now(), body) {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("deliver %s: %v", webhookID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("deliver %s: %d %s", webhookID, resp.StatusCode, b)
	}
}

// waitJob polls until the newest job of the webhook id is in one of the
// states, and returns its id.
func waitJob(t *testing.T, pool *pgxpool.Pool, webhookID string, states ...string) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var (
		id    int64
		state string
	)
	for {
		err := pool.QueryRow(context.Background(), `SELECT id, state::text FROM river_job
			WHERE args->>'webhook_id' = $1 ORDER BY id DESC LIMIT 1`, webhookID).Scan(&id, &state)
		if err == nil {
			for _, s := range states {
				if state == s {
					return id
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("job of %s is %q (err %v) after 30s, want one of %v", webhookID, state, err, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// doReq sends a request with optional auth and JSON body, returning status,
// body and the WWW-Authenticate header.
func doReq(t *testing.T, method, url string, auth func(*http.Request), body string) (int, string, string) {
	t.Helper()
	var r io.Reader
	if body != "" {
		r = bytes.NewBufferString(body)
	}
	req, err := http.NewRequest(method, url, r)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != nil {
		auth(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), strings.Join(resp.Header.Values("WWW-Authenticate"), ", ")
}

func bearer(token string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func basic(user, pass string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(user, pass) }
}
