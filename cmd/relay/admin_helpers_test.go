package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testkit"
)

// shopState returns the session's status and how many bookings the shop has.
func shopState(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) (status string, bookings int) {
	t.Helper()
	ctx := context.Background()
	if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT status FROM inventory_checkout_sessions WHERE id = $1), 'absent')`, s.Session).Scan(&status); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions t JOIN workspace_wallets w ON w.id = t.wallet_id WHERE w.ws_id = $1`, s.WS).Scan(&bookings); err != nil {
		t.Fatal(err)
	}
	return status, bookings
}

// deliver posts body as Polar would and fails the test unless it gets 200.
func deliver(t *testing.T, url, secret, webhookID string, body []byte) {
	t.Helper()
	code, err := testkit.Post(http.DefaultClient, url, secret, webhookID, body)
	if err != nil || code != http.StatusOK {
		t.Fatalf("deliver %s: status %d, error %v; want 200", webhookID, code, err)
	}
}

// waitJob polls until the newest job of the webhook id is in one of the
// states, and returns its id.
func waitJob(t *testing.T, pool *pgxpool.Pool, webhookID string, states ...string) int64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		id, state, ok := testkit.JobOf(t, pool, webhookID)
		if ok && slices.Contains(states, state) {
			return id
		}
		if time.Now().After(deadline) {
			t.Fatalf("job of %s is %q after 30s, want one of %v", webhookID, state, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// doReq sends a request with optional auth and JSON body, returning status,
// body and headers.
func doReq(t *testing.T, method, url string, auth func(*http.Request), body string) (int, string, http.Header) {
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
	return resp.StatusCode, string(b), resp.Header
}

func bearer(token string) func(*http.Request) {
	return func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+token) }
}

func basic(user, pass string) func(*http.Request) {
	return func(r *http.Request) { r.SetBasicAuth(user, pass) }
}
