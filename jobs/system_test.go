package jobs_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/receiver"
)

const secret = "polar_whs_jobs_test_secret"

// system is relay end to end: the HTTP receiver in front, real River
// clients working the queue behind, one real database.
type system struct {
	pool    *pgxpool.Pool
	url     string
	reg     *prometheus.Registry
	clients []*river.Client[pgx.Tx]
}

type systemOpts struct {
	clients     int // River clients working the same queue; default 1
	maxAttempts int // default 5
}

func startSystem(t *testing.T, pool *pgxpool.Pool, o systemOpts) *system {
	t.Helper()
	o.clients = max(o.clients, 1)
	if o.maxAttempts == 0 {
		o.maxAttempts = 5
	}
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	s := &system{pool: pool, reg: prometheus.NewRegistry()}
	jobMetrics, err := jobs.NewMetrics(s.reg)
	if err != nil {
		t.Fatal(err)
	}
	for range o.clients {
		workers := river.NewWorkers()
		river.AddWorker(workers, jobs.NewEventWorker(pool, jobMetrics, jobs.Options{Logger: logger, RetryBase: 20 * time.Millisecond}))
		client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{
			Logger:            logger,
			MaxAttempts:       o.maxAttempts,
			Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 10}},
			Workers:           workers,
			FetchPollInterval: 50 * time.Millisecond,
			FetchCooldown:     5 * time.Millisecond,
			TestOnly:          true,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := client.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := client.Stop(ctx); err != nil {
				t.Errorf("stop river client: %v", err)
			}
		})
		s.clients = append(s.clients, client)
	}
	verifier, err := polar.NewVerifier([]string{secret})
	if err != nil {
		t.Fatal(err)
	}
	recvMetrics, err := receiver.NewMetrics(s.reg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(receiver.New(pool, s.clients[0], verifier, recvMetrics, receiver.Options{Logger: logger}))
	t.Cleanup(srv.Close)
	s.url = srv.URL
	return s
}

// send delivers body as Polar would and fails the test unless it gets 200.
func (s *system) send(t *testing.T, webhookID string, body []byte) {
	t.Helper()
	if code := s.post(t, webhookID, body); code != http.StatusOK {
		t.Fatalf("delivery %s: status %d, want 200", webhookID, code)
	}
}

func (s *system) post(t *testing.T, webhookID string, body []byte) int {
	req, err := http.NewRequest(http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		t.Error(err)
		return 0
	}
	for k, v := range polar.SignedHeaders(secret, webhookID, time.Now(), body) {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("post %s: %v", webhookID, err)
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// waitJobs polls until every job of the webhook ids is in a final state
// (completed, discarded or cancelled) and returns those states by webhook id.
func (s *system) waitJobs(t *testing.T, webhookIDs ...string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		states := map[string]string{}
		rows, err := s.pool.Query(context.Background(), `
			SELECT args->>'webhook_id', state::text FROM river_job
			WHERE args->>'webhook_id' = ANY($1) ORDER BY id`, webhookIDs)
		if err != nil {
			t.Fatal(err)
		}
		final := true
		for rows.Next() {
			var id, state string
			if err := rows.Scan(&id, &state); err != nil {
				t.Fatal(err)
			}
			states[id] = state
			if state != "completed" && state != "discarded" && state != "cancelled" {
				final = false
			}
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		if final && len(states) == len(uniq(webhookIDs)) {
			return states
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs not finished after 30s: %v", states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func uniq(ids []string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// metric returns the value of a counter series, 0 when absent.
func (s *system) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := s.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}

// shop is one storefront workspace with a wallet, a category, products and
// a reserved checkout session for two of them.
type shop struct {
	ws, wallet, category, product, session, polarCheckout string
}

type shopOpts struct {
	noWallet       bool
	walletCurrency string // default "USD"
	mixedCategory  bool   // the second line's product has another category
}

func seedShop(t *testing.T, pool *pgxpool.Pool, o shopOpts) shop {
	t.Helper()
	ctx := context.Background()
	if o.walletCurrency == "" {
		o.walletCurrency = "USD"
	}
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
	s.wallet = q(`INSERT INTO workspace_wallets (ws_id, name, currency) VALUES ($1, 'Main', $2) RETURNING id::text`, s.ws, o.walletCurrency)
	if !o.noWallet {
		q(`INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2) RETURNING id`, s.ws, s.wallet)
	}
	s.category = q(`INSERT INTO transaction_categories (ws_id, name) VALUES ($1, 'Sales') RETURNING id::text`, s.ws)
	s.product = q(`INSERT INTO workspace_products (ws_id, name, finance_category_id) VALUES ($1, 'Ceramic mug', $2) RETURNING id::text`, s.ws, s.category)
	second := s.product
	if o.mixedCategory {
		other := q(`INSERT INTO transaction_categories (ws_id, name) VALUES ($1, 'Other') RETURNING id::text`, s.ws)
		second = q(`INSERT INTO workspace_products (ws_id, name, finance_category_id) VALUES ($1, 'Tea', $2) RETURNING id::text`, s.ws, other)
	}
	s.session = q(`INSERT INTO inventory_checkout_sessions (ws_id, status, total_amount, currency, polar_checkout_id)
		VALUES ($1, 'reserved', 4950, 'usd', $2) RETURNING id::text`, s.ws, s.polarCheckout)
	q(`INSERT INTO inventory_checkout_lines (checkout_session_id, product_id, quantity, unit_amount) VALUES ($1, $2, 2, 1500) RETURNING id::text`, s.session, s.product)
	q(`INSERT INTO inventory_checkout_lines (checkout_session_id, product_id, quantity, unit_amount) VALUES ($1, $2, 1, 1500) RETURNING id::text`, s.session, second)
	return s
}

// event loads a Polar fixture and points it at the shop's session and the
// given order id; edit may change the data further.
func event(t *testing.T, fixture string, s shop, orderID string, edit func(data map[string]any)) []byte {
	t.Helper()
	raw, err := os.ReadFile("../testdata/events/" + fixture)
	if err != nil {
		t.Fatal(err)
	}
	var env map[string]any
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatal(err)
	}
	data := env["data"].(map[string]any)
	if md, ok := data["metadata"].(map[string]any); ok && md["kind"] != nil {
		md["checkoutId"] = s.session
		md["wsId"] = s.ws
	}
	switch {
	case strings.HasPrefix(fixture, "order."):
		data["id"] = orderID
		data["checkout_id"] = s.polarCheckout
	case strings.HasPrefix(fixture, "checkout."):
		data["id"] = s.polarCheckout
	case strings.HasPrefix(fixture, "refund."):
		data["order_id"] = orderID
	}
	if edit != nil {
		edit(data)
	}
	b, err := json.Marshal(env)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// booking is one wallet_transactions row.
type booking struct {
	wallet, currency, description string
	category                      *string
	amount                        int64
	reverses                      *string
}

func bookings(t *testing.T, pool *pgxpool.Pool, s shop) []booking {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT t.wallet_id::text, t.category_id::text, t.amount, t.currency, t.description, t.reverses_id::text
		FROM wallet_transactions t JOIN workspace_wallets w ON w.id = t.wallet_id
		WHERE w.ws_id = $1 ORDER BY t.created_at, t.amount DESC`, s.ws)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []booking
	for rows.Next() {
		var b booking
		if err := rows.Scan(&b.wallet, &b.category, &b.amount, &b.currency, &b.description, &b.reverses); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

type sessionRow struct {
	status, polarStatus string
	polarOrder, txID    *string
	completedAt         *time.Time
}

func session(t *testing.T, pool *pgxpool.Pool, s shop) sessionRow {
	t.Helper()
	var r sessionRow
	if err := pool.QueryRow(context.Background(), `
		SELECT status, coalesce(polar_status, ''), polar_order_id, finance_transaction_id::text, completed_at
		FROM inventory_checkout_sessions WHERE id = $1`, s.session).
		Scan(&r.status, &r.polarStatus, &r.polarOrder, &r.txID, &r.completedAt); err != nil {
		t.Fatal(err)
	}
	return r
}
