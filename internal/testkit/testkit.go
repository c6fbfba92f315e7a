// Package testkit holds what relay's tests across packages share: Polar
// payloads pointed at storefront data, a seeded storefront, and small
// helpers for tests that run servers and processes.
package testkit

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/polar"
)

// SyncBuffer collects the output of a goroutine or a process for a test to
// read while it is still being written.
type SyncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *SyncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *SyncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// FreeAddr returns a loopback address with a port that was free a moment ago.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// RepoRoot is the repository's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// Fixture returns a Polar payload from testdata/events.
func Fixture(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(), "testdata", "events", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// APIFixture returns a Polar API answer from testdata/api.
func APIFixture(tb testing.TB, name string) []byte {
	tb.Helper()
	b, err := os.ReadFile(filepath.Join(RepoRoot(), "testdata", "api", name))
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Sale names what a storefront sale's Polar events refer to.
type Sale struct {
	Workspace, Session, PolarCheckout, Order string
}

// Event loads a Polar fixture and points it at sale: the storefront metadata,
// the order's and checkout's ids; edit may change the data further.
func Event(tb testing.TB, fixture string, sale Sale, edit func(data map[string]any)) []byte {
	tb.Helper()
	var env map[string]any
	if err := json.Unmarshal(Fixture(tb, fixture), &env); err != nil {
		tb.Fatal(err)
	}
	data := env["data"].(map[string]any)
	if md, ok := data["metadata"].(map[string]any); ok && md["kind"] != nil {
		md["checkoutId"], md["wsId"] = sale.Session, sale.Workspace
	}
	switch {
	case strings.HasPrefix(fixture, "order."):
		data["id"], data["checkout_id"] = sale.Order, sale.PolarCheckout
	case strings.HasPrefix(fixture, "checkout."):
		data["id"] = sale.PolarCheckout
	case strings.HasPrefix(fixture, "refund."):
		data["order_id"] = sale.Order
	}
	if edit != nil {
		edit(data)
	}
	b, err := json.Marshal(env)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// ProductEvent loads a Polar product fixture and points it at the
// storefront product row of workspace ws, as Polar product polarID; edit
// may change the data further. An empty row leaves the metadata naming no
// storefront product, as for a product made by hand at Polar.
func ProductEvent(tb testing.TB, fixture, ws, row, polarID string, edit func(data map[string]any)) []byte {
	tb.Helper()
	var env map[string]any
	if err := json.Unmarshal(Fixture(tb, fixture), &env); err != nil {
		tb.Fatal(err)
	}
	data := env["data"].(map[string]any)
	data["id"] = polarID
	for _, p := range data["prices"].([]any) {
		p.(map[string]any)["product_id"] = polarID
	}
	if row == "" {
		data["metadata"] = map[string]any{}
	} else {
		md := data["metadata"].(map[string]any)
		md["rowId"], md["wsId"] = row, ws
	}
	if edit != nil {
		edit(data)
	}
	b, err := json.Marshal(env)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// Shop is a storefront workspace with a wallet, a finance category, products
// and a reserved checkout session of two lines totalling 4950 USD.
type Shop struct {
	WS, Wallet, Category, Product, Session, PolarCheckout string
	second                                                string // the second line's product
	environment                                           string // the session's polar_environment
}

// ShopOptions vary a Shop.
type ShopOptions struct {
	NoWallet       bool   // no default wallet setting
	WalletCurrency string // default "USD"
	MixedCategory  bool   // the second line's product has another category
	LateSession    bool   // the session id is chosen but the session not written: OpenSession does
	Sandbox        bool   // the session was created in Polar's sandbox (polar_environment)
}

// SeedShop writes a Shop.
func SeedShop(tb testing.TB, pool *pgxpool.Pool, o ShopOptions) Shop {
	tb.Helper()
	if o.WalletCurrency == "" {
		o.WalletCurrency = "USD"
	}
	q := func(sql string, args ...any) string {
		tb.Helper()
		var id string
		if err := pool.QueryRow(context.Background(), sql, args...).Scan(&id); err != nil {
			tb.Fatalf("seed: %s: %v", sql, err)
		}
		return id
	}
	s := Shop{PolarCheckout: fmt.Sprintf("chk_%d", time.Now().UnixNano()), environment: "production"}
	if o.Sandbox {
		s.environment = "sandbox"
	}
	s.WS = q(`INSERT INTO workspaces (name) VALUES ('Demo shop') RETURNING id::text`)
	s.Wallet = q(`INSERT INTO workspace_wallets (ws_id, name, currency) VALUES ($1, 'Main', $2) RETURNING id::text`, s.WS, o.WalletCurrency)
	if !o.NoWallet {
		q(`INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2) RETURNING id`, s.WS, s.Wallet)
	}
	s.Category = q(`INSERT INTO transaction_categories (ws_id, name) VALUES ($1, 'Sales') RETURNING id::text`, s.WS)
	s.Product = q(`INSERT INTO workspace_products (ws_id, name, finance_category_id) VALUES ($1, 'Ceramic mug', $2) RETURNING id::text`, s.WS, s.Category)
	s.second = s.Product
	if o.MixedCategory {
		other := q(`INSERT INTO transaction_categories (ws_id, name) VALUES ($1, 'Other') RETURNING id::text`, s.WS)
		s.second = q(`INSERT INTO workspace_products (ws_id, name, finance_category_id) VALUES ($1, 'Tea', $2) RETURNING id::text`, s.WS, other)
	}
	s.Session = q(`SELECT gen_random_uuid()::text`)
	if !o.LateSession {
		s.OpenSession(tb, pool)
	}
	return s
}

// OpenSession writes the shop's reserved checkout session and its lines, as
// the storefront does before sending the shopper to Polar.
func (s Shop) OpenSession(tb testing.TB, pool *pgxpool.Pool) {
	tb.Helper()
	if _, err := pool.Exec(context.Background(), `
		WITH session AS (
			INSERT INTO inventory_checkout_sessions (id, ws_id, status, total_amount, currency, polar_checkout_id, polar_environment)
			VALUES ($1, $2, 'reserved', 4950, 'usd', $3, $6) RETURNING id)
		INSERT INTO inventory_checkout_lines (checkout_session_id, product_id, quantity, unit_amount)
		SELECT id, p.product, p.quantity, 1650 FROM session, (VALUES ($4::uuid, 2), ($5::uuid, 1)) AS p(product, quantity)`,
		s.Session, s.WS, s.PolarCheckout, s.Product, s.second, s.environment); err != nil {
		tb.Fatalf("open checkout session: %v", err)
	}
}

// Sale is the shop's session sold through Polar as order.
func (s Shop) Sale(order string) Sale {
	return Sale{Workspace: s.WS, Session: s.Session, PolarCheckout: s.PolarCheckout, Order: order}
}

// Post sends body to url signed with secret as Polar signs a delivery, and
// returns the answer's status.
func Post(client *http.Client, url, secret, webhookID string, body []byte) (int, error) {
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	for k, v := range polar.SignedHeaders(secret, webhookID, time.Now(), body) {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body) //nolint:errcheck // drained for reuse only
	resp.Body.Close()
	return resp.StatusCode, nil
}

// StartRiver starts a River client that works the queue as cfg says, polling
// fast as tests want, and stops it when tb ends.
func StartRiver(tb testing.TB, pool *pgxpool.Pool, cfg *river.Config) *river.Client[pgx.Tx] {
	tb.Helper()
	cfg.FetchPollInterval = cmp.Or(cfg.FetchPollInterval, 50*time.Millisecond)
	cfg.FetchCooldown = cmp.Or(cfg.FetchCooldown, 5*time.Millisecond)
	cfg.TestOnly = true
	client, err := river.NewClient(riverpgxv5.New(pool), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	if err := client.Start(context.Background()); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.Stop(ctx); err != nil {
			tb.Errorf("stop river client: %v", err)
		}
	})
	return client
}

// jobOfWebhook finds the newest job that carries webhook id $1 at any
// endpoint, alone or in a batch.
var jobOfWebhook = `SELECT id, state::text FROM river_job
	WHERE ` + inbox.Carries("args", WebhookKey) + `
	ORDER BY id DESC LIMIT 1`

// WebhookKey is the part of a delivery's key in its job's arguments
// (inbox.KeyJSON) that names webhook id $1, at any endpoint.
const WebhookKey = `jsonb_build_object('webhook_id', $1::text)`

// JobOf returns the id and state of the newest job that carries webhookID,
// alone or in a batch; ok is false when there is none.
func JobOf(tb testing.TB, pool *pgxpool.Pool, webhookID string) (id int64, state string, ok bool) {
	tb.Helper()
	err := pool.QueryRow(context.Background(), jobOfWebhook, webhookID).Scan(&id, &state)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, "", false
	}
	if err != nil {
		tb.Fatal(err)
	}
	return id, state, true
}

// EnqueuedEvents counts the events the jobs in river_job carry.
func EnqueuedEvents(tb testing.TB, pool *pgxpool.Pool) int {
	tb.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `
		SELECT coalesce(sum(CASE WHEN kind = 'polar_event_batch' THEN jsonb_array_length(args->'events') ELSE 1 END), 0)
		FROM river_job WHERE kind IN ('polar_event', 'polar_event_batch')`).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// Within polls cond until it holds, failing tb if d passes first, and
// returns how long it took.
func Within(tb testing.TB, d time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			tb.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// Statements is a pgx tracer (pgx.ConnConfig.Tracer) that keeps the SQL of
// every statement the connections it traces run.
type Statements struct {
	mu  sync.Mutex
	sql []string
}

func (s *Statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sql = append(s.sql, d.SQL)
	return ctx
}

func (s *Statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Reset returns the statements run since the last Reset and forgets them.
func (s *Statements) Reset() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.sql
	s.sql = nil
	return out
}
