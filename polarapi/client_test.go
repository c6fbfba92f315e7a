package polarapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/polarfake"
	"github.com/relayhq/relay/polarapi"
)

// env is a production and a sandbox fake and a config pointing at them.
type env struct {
	prod, sandbox *polarfake.Fake
	cfg           polarapi.Config
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{prod: polarfake.New(polarapi.Production), sandbox: polarfake.New(polarapi.Sandbox)}
	ps, ss := httptest.NewServer(e.prod), httptest.NewServer(e.sandbox)
	t.Cleanup(ps.Close)
	t.Cleanup(ss.Close)
	e.cfg = polarapi.Config{ProductionURL: ps.URL, SandboxURL: ss.URL}
	return e
}

func newClient(t *testing.T, cfg polarapi.Config, environment, token string) *polarapi.Client {
	t.Helper()
	c, err := polarapi.New(cfg, environment, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestDecodesPolarsShapes decodes the shapes checked against Polar's SDK.
func TestDecodesPolarsShapes(t *testing.T) {
	read := func(name string, v any) {
		t.Helper()
		b, err := os.ReadFile(filepath.Join("..", "internal", "polarfake", "testdata", "api", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var orders polarapi.Page[polarapi.Order]
	read("orders.list.json", &orders)
	o := orders.Items[1]
	if len(orders.Items) != 2 || o.Status != "partially_refunded" || !o.Paid || o.TotalAmount != 4950 ||
		o.RefundedAmount != 1500 || o.Currency != "usd" || o.CheckoutID == nil || o.Metadata["kind"] != "inventory_checkout" ||
		o.CreatedAt.IsZero() || orders.Pagination.TotalCount != 2 || orders.Pagination.MaxPage != 1 {
		t.Errorf("orders: %+v", orders)
	}
	var refunds polarapi.Page[polarapi.Refund]
	read("refunds.list.json", &refunds)
	if r := refunds.Items[0]; r.Status != "succeeded" || r.Amount != 4500 || r.TaxAmount != 450 || r.OrderID == nil || *r.OrderID != orders.Items[0].ID {
		t.Errorf("refunds: %+v", refunds)
	}
	var products polarapi.Page[polarapi.Product]
	read("products.list.json", &products)
	if p := products.Items[0]; p.Name != "Ceramic mug" || len(p.Prices) != 1 || p.Prices[0].PriceAmount == nil ||
		*p.Prices[0].PriceAmount != 4950 || p.Prices[0].AmountType != "fixed" || p.Metadata["rowId"] == nil {
		t.Errorf("products: %+v", products)
	}
	var endpoints polarapi.Page[polarapi.WebhookEndpoint]
	read("webhook_endpoints.list.json", &endpoints)
	if e := endpoints.Items; len(e) != 2 || !e[0].Enabled || e[1].Enabled || e[0].Format != "raw" || e[0].Secret == "" || len(e[0].Events) != 10 {
		t.Errorf("endpoints: %+v", endpoints)
	}
}

// TestOrdersWalkWhileOrdersArrive walks 2,000 orders, 20 pages' worth,
// while every request of the walk sees 7 more orders arrive (some
// committed a moment out of created_at order): every order is read, none
// twice, and the walk filters by metadata as asked.
func TestOrdersWalkWhileOrdersArrive(t *testing.T) {
	e := newEnv(t)
	org := e.prod.AddOrganization()
	tok := e.prod.AddToken(org)
	storefront := map[string]any{"kind": "inventory_checkout", "checkoutId": "x"}
	start := time.Now().Add(-72 * time.Hour)
	var initial []polarfake.Order
	for i := range 2000 {
		initial = append(initial, polarfake.Order{CreatedAt: start.Add(time.Duration(i) * 2 * time.Minute), Metadata: storefront})
	}
	e.prod.AddOrders(org, initial...)
	// Not storefront orders: the filter leaves them out.
	e.prod.AddOrders(org, polarfake.Order{CreatedAt: start.Add(time.Hour), Metadata: map[string]any{"kind": "other"}},
		polarfake.Order{CreatedAt: start.Add(2 * time.Hour), Metadata: map[string]any{}})

	var mu sync.Mutex
	arrived, next := 0, start.Add(2000*2*time.Minute)
	e.prod.SetHook(func(r *http.Request) {
		if r.URL.Path != "/v1/orders/" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		var batch []polarfake.Order
		for i := range 7 {
			next = next.Add(10 * time.Second) // orders arriving every 10 s
			at := next
			if i%2 == 1 {
				at = next.Add(-time.Second) // committed after a newer one
			}
			batch = append(batch, polarfake.Order{CreatedAt: at, Metadata: storefront})
		}
		e.prod.AddOrders(org, batch...)
		arrived += len(batch)
	})

	c := newClient(t, polarapi.Config{ProductionURL: e.cfg.ProductionURL, RPM: 1000}, polarapi.Production, tok)
	seen := map[string]int{}
	walked := 0
	for o, err := range c.Orders(context.Background(), polarapi.OrderQuery{
		CreatedAfter: start.Add(-time.Minute), Metadata: map[string]string{"kind": "inventory_checkout"},
	}) {
		if err != nil {
			t.Fatal(err)
		}
		seen[o.ID]++
		walked++
		if o.Metadata["kind"] != "inventory_checkout" {
			t.Errorf("order %s is not a storefront order: %v", o.ID, o.Metadata)
		}
	}
	e.prod.SetHook(nil)
	requests := e.prod.Requests("GET /v1/orders/")
	for id, n := range seen {
		if n > 1 {
			t.Errorf("order %s read %d times", id, n)
		}
	}
	// Everything the fake holds now, storefront orders only.
	all := e.prod.OrderIDs(org, "inventory_checkout")
	missing := 0
	for _, id := range all {
		if seen[id] == 0 {
			missing++
		}
	}
	t.Logf("%d orders walked (%d arrived during the walk) in %d requests", walked, arrived, requests)
	if missing > 0 || walked != 2000+arrived || len(all) != walked {
		t.Errorf("walked %d distinct orders of %d (%d initial + %d arrived): %d missing", len(seen), len(all), 2000, arrived, missing)
	}
	if requests < 20 || requests > 30 {
		t.Errorf("%d requests for some %d orders in pages of 100", requests, walked)
	}
}

// TestRequestBudget makes 150 requests with the default budget (60 a
// minute) on virtual time: no minute sees more than 60, and the budget
// costs no more than it must (150 requests in a little over 2 minutes).
func TestRequestBudget(t *testing.T) {
	e := newEnv(t)
	clock := polarfake.NewClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	org := e.prod.AddOrganization()
	tok := e.prod.AddToken(org)
	var mu sync.Mutex
	var at []time.Time
	e.prod.SetHook(func(*http.Request) {
		mu.Lock()
		defer mu.Unlock()
		at = append(at, clock.Now())
	})
	cfg := e.cfg
	cfg.Clock = clock
	c := newClient(t, cfg, polarapi.Production, tok)
	for range 150 {
		if _, err := c.ListWebhookEndpoints(context.Background(), 1, 10); err != nil {
			t.Fatal(err)
		}
	}
	if len(at) != 150 {
		t.Fatalf("%d requests reached Polar, want 150", len(at))
	}
	for i := range at {
		n := 0
		for j := i; j < len(at) && at[j].Sub(at[i]) < time.Minute; j++ {
			n++
		}
		if n > polarapi.DefaultRPM {
			t.Fatalf("%d requests in the minute from %v, want at most %d", n, at[i].Sub(at[0]), polarapi.DefaultRPM)
		}
	}
	if took := at[len(at)-1].Sub(at[0]); took < 2*time.Minute || took > 2*time.Minute+time.Second {
		t.Errorf("150 requests took %v of virtual time, want 2m (60 a minute)", took)
	}
}

// TestRetryAfterHonoured: Polar allows this organization 5 requests a
// minute; 12 requests all succeed, and each 429 is followed by a wait of
// its Retry-After, not by a storm: one 429 a minute.
func TestRetryAfterHonoured(t *testing.T) {
	e := newEnv(t)
	clock := polarfake.NewClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	e.prod.SetClock(clock.Now)
	org := e.prod.AddOrganization()
	tok := e.prod.AddToken(org)
	e.prod.SetRateLimit(org, 5)
	cfg := e.cfg
	cfg.Clock = clock
	observed := map[string]int{}
	cfg.Observe = func(endpoint string, status int) { observed[fmt.Sprintf("%s %d", endpoint, status)]++ }
	c := newClient(t, cfg, polarapi.Production, tok)
	for i := range 12 {
		if _, err := c.ListWebhookEndpoints(context.Background(), 1, 10); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}
	if n := e.prod.Requests(""); n != 14 {
		t.Errorf("%d requests reached Polar for 12 answers, want 14 (two 429s, one per minute)", n)
	}
	slept := clock.Slept()
	if len(slept) != 2 || slept[0] != time.Minute || slept[1] != time.Minute {
		t.Errorf("waited %v, want the Retry-After of each 429 (1m, 1m)", slept)
	}
	if observed["webhook_endpoints 200"] != 12 || observed["webhook_endpoints 429"] != 2 || len(observed) != 2 {
		t.Errorf("Observe saw %v, want 12 answers 200 and two 429", observed)
	}
}

// TestRateLimitedGivesUp: a 429 that persists ends in ErrRateLimited
// after the bounded attempts.
func TestRateLimitedGivesUp(t *testing.T) {
	e := newEnv(t)
	clock := polarfake.NewClock(time.Now())
	org := e.prod.AddOrganization()
	tok := e.prod.AddToken(org)
	e.prod.FailNext(429, 429, 429, 429, 429, 429)
	cfg := e.cfg
	cfg.Clock = clock
	_, err := newClient(t, cfg, polarapi.Production, tok).ListWebhookEndpoints(context.Background(), 1, 10)
	if !errors.Is(err, polarapi.ErrRateLimited) || e.prod.Requests("") != 5 {
		t.Errorf("err %v after %d requests, want ErrRateLimited after 5", err, e.prod.Requests(""))
	}
}

// TestServerErrorsBackOff: 5xx are retried with a growing wait, a bounded
// number of times; a create is never retried (it may have been made).
func TestServerErrorsBackOff(t *testing.T) {
	e := newEnv(t)
	clock := polarfake.NewClock(time.Now())
	org := e.prod.AddOrganization()
	tok := e.prod.AddToken(org)
	cfg := e.cfg
	cfg.Clock = clock
	c := newClient(t, cfg, polarapi.Production, tok)

	e.prod.FailNext(502, 503)
	if _, err := c.ListWebhookEndpoints(context.Background(), 1, 10); err != nil {
		t.Fatalf("after two 5xx: %v", err)
	}
	slept := clock.Slept()
	if len(slept) != 2 || slept[0] <= 0 || slept[1] <= slept[0] {
		t.Errorf("waits %v, want two, growing", slept)
	}

	e.prod.FailNext(500, 500, 500, 500, 500)
	before := e.prod.Requests("")
	_, err := c.ListWebhookEndpoints(context.Background(), 1, 10)
	var se *polarapi.StatusError
	if !errors.As(err, &se) || se.Status != 500 || e.prod.Requests("")-before != 5 {
		t.Errorf("err %v after %d requests, want HTTP 500 after 5", err, e.prod.Requests("")-before)
	}

	before = e.prod.Requests("")
	e.prod.FailNext(502)
	_, err = c.CreateWebhookEndpoint(context.Background(), polarapi.WebhookEndpointCreate{URL: "https://relay.example/x", Format: "raw", Events: polarapi.RelayEvents})
	if !errors.As(err, &se) || se.Status != 502 || e.prod.Requests("")-before != 1 {
		t.Errorf("create: err %v after %d requests, want HTTP 502 after 1", err, e.prod.Requests("")-before)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.ListWebhookEndpoints(ctx, 1, 10); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled context: %v", err)
	}
}

// TestTokenErrorsTyped: a token Polar does not know is ErrUnauthorized,
// tried once; a missing scope is a ForbiddenError naming it.
func TestTokenErrorsTyped(t *testing.T) {
	e := newEnv(t)
	org := e.prod.AddOrganization()
	readOnly := e.prod.AddToken(org, polarfake.ScopeOrdersRead, polarfake.ScopeWebhooksRead)

	_, err := newClient(t, e.cfg, polarapi.Production, "polar_oat_unknown").ListOrders(context.Background(), polarapi.OrderQuery{})
	if !errors.Is(err, polarapi.ErrUnauthorized) || e.prod.Requests("") != 1 {
		t.Errorf("unknown token: %v after %d requests, want ErrUnauthorized after 1", err, e.prod.Requests(""))
	}

	c := newClient(t, e.cfg, polarapi.Production, readOnly)
	if _, err := c.ListWebhookEndpoints(context.Background(), 1, 10); err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateWebhookEndpoint(context.Background(), polarapi.WebhookEndpointCreate{URL: "https://relay.example/x", Format: "raw", Events: polarapi.RelayEvents})
	var fe *polarapi.ForbiddenError
	if !errors.As(err, &fe) || !errors.Is(err, polarapi.ErrForbidden) || fe.Scope != polarapi.ScopeWebhooksWrite || fe.Endpoint != "webhook_endpoint_create" {
		t.Errorf("create without webhooks:write: %v", err)
	}
	_, err = c.ListRefunds(context.Background(), polarapi.RefundQuery{})
	if !errors.As(err, &fe) || fe.Scope != polarapi.ScopeRefundsRead {
		t.Errorf("refunds without refunds:read: %v", err)
	}

	_, err = c.ListOrders(context.Background(), polarapi.OrderQuery{Limit: 101})
	var se *polarapi.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusUnprocessableEntity {
		t.Errorf("limit 101: %v, want 422 as Polar answers", err)
	}
}

// TestEnvironmentsKeptApart: a client is made for an environment and sends
// its token only to that environment's API; a sandbox token sent to
// production would be refused there anyway.
func TestEnvironmentsKeptApart(t *testing.T) {
	e := newEnv(t)
	sbOrg := e.sandbox.AddOrganization()
	sbTok := e.sandbox.AddToken(sbOrg)
	e.sandbox.AddOrder(sbOrg, polarfake.Order{})

	p, err := newClient(t, e.cfg, polarapi.Sandbox, sbTok).ListOrders(context.Background(), polarapi.OrderQuery{})
	if err != nil || len(p.Items) != 1 {
		t.Fatalf("sandbox token in sandbox: %v, %d orders", err, len(p.Items))
	}
	if n := e.prod.TokenRequests(sbTok); n != 0 {
		t.Errorf("production saw the sandbox token %d times", n)
	}
	// The fake is faithful: production does not know sandbox's tokens.
	_, err = newClient(t, e.cfg, polarapi.Production, sbTok).ListOrders(context.Background(), polarapi.OrderQuery{})
	if !errors.Is(err, polarapi.ErrUnauthorized) {
		t.Errorf("sandbox token in production: %v, want ErrUnauthorized", err)
	}
	if _, err := polarapi.New(e.cfg, "staging", sbTok); err == nil {
		t.Error("a client for an unknown environment was made")
	}
	if u, _ := (polarapi.Config{}).BaseURL(polarapi.Sandbox); u != "https://sandbox-api.polar.sh" {
		t.Errorf("default sandbox URL %q", u)
	}
	if u, _ := (polarapi.Config{}).BaseURL(polarapi.Production); u != "https://api.polar.sh" {
		t.Errorf("default production URL %q", u)
	}
}

// TestOrganizationsDoNotWaitForEachOther: one organization's API hanging
// and its budget spent never delay another's requests.
func TestOrganizationsDoNotWaitForEachOther(t *testing.T) {
	e := newEnv(t)
	slow, fast := e.prod.AddOrganization(), e.prod.AddOrganization()
	slowTok, fastTok := e.prod.AddToken(slow), e.prod.AddToken(fast)
	release := make(chan struct{})
	e.prod.SetHook(func(r *http.Request) {
		if r.Header.Get("Authorization") == "Bearer "+slowTok {
			<-release
		}
	})
	defer close(release)
	cfg := e.cfg
	cfg.RPM = 1
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	slowC := newClient(t, cfg, polarapi.Production, slowTok)
	for range 3 { // one hangs, the others wait for a budget spent for a minute
		go func() { _, _ = slowC.ListWebhookEndpoints(ctx, 1, 10) }()
	}
	for e.prod.TokenRequests(slowTok) == 0 {
		time.Sleep(time.Millisecond)
	}
	fastC := newClient(t, cfg, polarapi.Production, fastTok)
	began := time.Now()
	if _, err := fastC.ListWebhookEndpoints(context.Background(), 1, 10); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("the other organization's request took %v", d)
	}
}

func Example() {
	fake := polarfake.New(polarapi.Sandbox)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	org := fake.AddOrganization()
	fake.AddOrder(org, polarfake.Order{TotalAmount: 1200})
	c, _ := polarapi.New(polarapi.Config{SandboxURL: srv.URL}, polarapi.Sandbox, fake.AddToken(org))
	for o, err := range c.Orders(context.Background(), polarapi.OrderQuery{}) {
		fmt.Println(o.TotalAmount, o.Currency, err)
	}
	// Output: 1200 usd <nil>
}

// TestTimeoutsRetried: an attempt that outlasts RequestTimeout is given up
// and tried again.
func TestTimeoutsRetried(t *testing.T) {
	e := newEnv(t)
	org := e.prod.AddOrganization()
	tok := e.prod.AddToken(org)
	var mu sync.Mutex
	hung := false
	release := make(chan struct{})
	defer close(release)
	e.prod.SetHook(func(*http.Request) {
		mu.Lock()
		first := !hung
		hung = true
		mu.Unlock()
		if first {
			<-release
		}
	})
	cfg := e.cfg
	cfg.RequestTimeout = 200 * time.Millisecond
	cfg.Clock = polarfake.NewClock(time.Now()) // the backoff's wait is virtual; the timeout is real
	if _, err := newClient(t, cfg, polarapi.Production, tok).ListWebhookEndpoints(context.Background(), 1, 10); err != nil {
		t.Fatalf("after a timeout: %v", err)
	}
	if n := e.prod.Requests(""); n != 2 {
		t.Errorf("%d requests, want 2 (one timed out)", n)
	}
}

// TestRefundsWalkStopsAtSince reads refunds newest first across pages and
// stops at the first older than Since.
func TestRefundsWalkStopsAtSince(t *testing.T) {
	e := newEnv(t)
	org := e.prod.AddOrganization()
	tok := e.prod.AddToken(org)
	now := time.Now().Truncate(time.Second)
	for i := range 350 {
		e.prod.AddRefund(org, polarfake.Refund{CreatedAt: now.Add(-time.Duration(i) * time.Minute)})
	}
	c := newClient(t, polarapi.Config{ProductionURL: e.cfg.ProductionURL, RPM: 1000}, polarapi.Production, tok)
	n := 0
	for r, err := range c.Refunds(context.Background(), polarapi.RefundQuery{Since: now.Add(-149*time.Minute - time.Second)}) {
		if err != nil {
			t.Fatal(err)
		}
		if r.CreatedAt.Before(now.Add(-150 * time.Minute)) {
			t.Errorf("refund of %v is older than Since", r.CreatedAt)
		}
		n++
	}
	if n != 150 || e.prod.Requests("GET /v1/refunds/") != 2 {
		t.Errorf("%d refunds in %d requests, want 150 in 2", n, e.prod.Requests("GET /v1/refunds/"))
	}
}

// TestClientsShareABudget: the clients of one token share its budget,
// another token's have their own.
func TestClientsShareABudget(t *testing.T) {
	cs := polarapi.NewClients(polarapi.Config{RPM: 1})
	a1, err := cs.Get(polarapi.Sandbox, "polar_oat_aaaaaaaaaaaaaaaa")
	if err != nil {
		t.Fatal(err)
	}
	a2, _ := cs.Get(polarapi.Sandbox, "polar_oat_aaaaaaaaaaaaaaaa")
	b, _ := cs.Get(polarapi.Sandbox, "polar_oat_bbbbbbbbbbbbbbbb")
	p, _ := cs.Get(polarapi.Production, "polar_oat_aaaaaaaaaaaaaaaa")
	if a1 != a2 || a1 == b || a1 == p || a1.Environment() != polarapi.Sandbox || p.Environment() != polarapi.Production {
		t.Error("clients are not one per token and environment")
	}
	cs.Forget(polarapi.Sandbox, "polar_oat_aaaaaaaaaaaaaaaa")
	if a3, _ := cs.Get(polarapi.Sandbox, "polar_oat_aaaaaaaaaaaaaaaa"); a3 == a1 {
		t.Error("Forget kept the client")
	}
}
