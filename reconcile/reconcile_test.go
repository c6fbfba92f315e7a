package reconcile_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/polarfake"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polarapi"
	"github.com/relayhq/relay/reconcile"
)

const secretsKey = "cmVsYXktcmVjb25jaWxlLXRlc3Qtc2VjcmV0cy1rZXk="

const publicURL = "https://relay.example"

// world is one relay (database, workers) and one fake Polar per
// environment, with a workspace's shop connected in production.
type world struct {
	pool     *pgxpool.Pool
	fakes    map[string]*polarfake.Fake
	api      polarapi.Config
	store    *connections.Store
	secrets  *endpoints.Store
	inserter jobs.Inserter
	shop     testkit.Shop
	org      string // the shop's production organization
	token    string
	reg      *prometheus.Registry
	metrics  *reconcile.Metrics
	logs     *testkit.SyncBuffer
}

type worldOpts struct {
	workers  bool // run River workers that process the recoveries
	noSecret bool // the workspace has no webhook secret at relay
}

func newWorld(t *testing.T, o worldOpts) *world {
	t.Helper()
	// Room for the workers, a pass and a test's own connection at once.
	pool := testdb.NewPoolWith(t, func(c *pgxpool.Config) { c.MaxConns = 12 })
	w := &world{pool: pool, fakes: map[string]*polarfake.Fake{}, reg: prometheus.NewRegistry(), logs: &testkit.SyncBuffer{}}
	for _, env := range []string{polarapi.Production, polarapi.Sandbox} {
		f := polarfake.New(env)
		srv := httptest.NewServer(f)
		t.Cleanup(srv.Close)
		w.fakes[env] = f
		if env == polarapi.Production {
			w.api.ProductionURL = srv.URL
		} else {
			w.api.SandboxURL = srv.URL
		}
	}
	var err error
	if w.metrics, err = reconcile.NewMetrics(w.reg); err != nil {
		t.Fatal(err)
	}
	w.api.Observe = w.metrics.Observe
	keys, err := endpoints.ParseKeyring(func(k string) string {
		if k == endpoints.EnvKey {
			return secretsKey
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	w.store, w.secrets = connections.NewStore(w.pool, keys), endpoints.NewStore(w.pool, keys)
	w.shop = testkit.SeedShop(t, w.pool, testkit.ShopOptions{})
	w.org = w.fakes[polarapi.Production].AddOrganization()
	w.token = w.fakes[polarapi.Production].AddToken(w.org)
	w.connect(t, polarapi.Production, w.org, w.token, !o.noSecret)

	var logs io.Writer = w.logs
	if testing.Verbose() {
		logs = io.MultiWriter(logs, os.Stderr)
	}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	cfg := &river.Config{Logger: logger, MaxAttempts: 5}
	if o.workers {
		jobMetrics, err := jobs.NewMetrics(w.reg)
		if err != nil {
			t.Fatal(err)
		}
		workers := river.NewWorkers()
		ew := jobs.NewEventWorker(w.pool, jobMetrics, jobs.Options{Logger: logger, RetryBase: 20 * time.Millisecond})
		river.AddWorker(workers, ew)
		river.AddWorker(workers, jobs.NewBatchWorker(ew))
		cfg.Workers = workers
		cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}}
		w.inserter = testkit.StartRiver(t, w.pool, cfg)
	} else {
		client, err := river.NewClient(riverpgxv5.New(w.pool), cfg)
		if err != nil {
			t.Fatal(err)
		}
		w.inserter = client
	}
	return w
}

// connect records a connection of the shop's workspace in env, with relay's
// endpoint at that fake, and its secret at relay when withSecret.
func (w *world) connect(t *testing.T, env, org, token string, withSecret bool) {
	t.Helper()
	ctx := context.Background()
	url := publicURL + "/webhooks/polar/" + w.shop.WS
	ep := w.fakes[env].AddEndpoint(org, url)
	if _, err := w.store.Put(ctx, w.shop.WS, env, token, org, connections.Endpoint{ID: ep.ID, URL: url, State: connections.StateEnabled, Registered: true}); err != nil {
		t.Fatal(err)
	}
	if withSecret {
		if _, err := w.secrets.Add(ctx, w.shop.WS, env, ep.Secret); err != nil {
			t.Fatal(err)
		}
	}
}

func (w *world) reconciler(edit func(*reconcile.Config)) *reconcile.Reconciler {
	cfg := reconcile.Config{
		Pool: w.pool, Connections: w.store, Secrets: w.secrets, Inserter: w.inserter, API: w.api,
		Reenable: true, PublicURL: publicURL, Metrics: w.metrics,
		Logger: slog.New(slog.NewTextHandler(w.logs, nil)),
	}
	if edit != nil {
		edit(&cfg)
	}
	return reconcile.New(cfg)
}

// order is a storefront order at Polar for the shop's session.
func (w *world) order(id string, edit func(*polarfake.Order)) polarfake.Order {
	o := polarfake.Order{ID: id, CheckoutID: w.shop.PolarCheckout, Metadata: map[string]any{
		"kind": "inventory_checkout", "checkoutId": w.shop.Session, "wsId": w.shop.WS, "environment": "production", "storefrontSlug": "demo",
	}}
	if edit != nil {
		edit(&o)
	}
	return o
}

func pass(t *testing.T, r *reconcile.Reconciler, w *world, env string, opts reconcile.Options) reconcile.Report {
	t.Helper()
	rep, err := r.Reconcile(context.Background(), w.shop.WS, env, opts)
	if err != nil {
		t.Fatal(err)
	}
	if testing.Verbose() {
		for _, f := range rep.Findings {
			t.Log(f)
		}
	}
	return rep
}

func kinds(rep reconcile.Report) map[string][]reconcile.Finding {
	out := map[string][]reconcile.Finding{}
	for _, f := range rep.Findings {
		out[f.Kind] = append(out[f.Kind], f)
	}
	return out
}

func (w *world) count(t *testing.T, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := w.pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func (w *world) recoveredRows(t *testing.T) int {
	return w.count(t, `SELECT count(*) FROM webhook_inbox WHERE source = 'reconciliation'`)
}

// settled waits until no inbox row is pending.
func (w *world) settled(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for w.count(t, `SELECT count(*) FROM webhook_inbox WHERE status = 'pending'`) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("inbox rows still pending after 20 s; logs:\n%s", w.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// bookings are the shop's wallet transactions: sales and reversals.
func (w *world) bookings(t *testing.T) (sales, reversals int, reversed int64) {
	t.Helper()
	if err := w.pool.QueryRow(context.Background(), `
		SELECT count(*) FILTER (WHERE source_kind = 'sale'), count(*) FILTER (WHERE source_kind = 'reversal'),
		       coalesce(-sum(amount) FILTER (WHERE source_kind = 'reversal'), 0)
		FROM wallet_transactions WHERE wallet_id = $1`, w.shop.Wallet).Scan(&sales, &reversals, &reversed); err != nil {
		t.Fatal(err)
	}
	return
}

// deliver stores a real webhook as the receiver does (inbox row and job in
// one transaction), for the late webhook that follows a recovery.
func (w *world) deliver(t *testing.T, webhookID, fixture, order string, edit func(map[string]any)) {
	t.Helper()
	w.deliverSale(t, webhookID, fixture, w.shop.Sale(order), edit)
}

func (w *world) deliverSale(t *testing.T, webhookID, fixture string, sale testkit.Sale, edit func(map[string]any)) {
	t.Helper()
	body := testkit.Event(t, fixture, sale, edit)
	eventType := strings.SplitN(strings.TrimSuffix(fixture, ".json"), ".", 3)
	e := &inbox.Event{WebhookID: webhookID, EventType: eventType[0] + "." + eventType[1], Status: inbox.StatusPending,
		WebhookTimestamp: time.Now(), Body: body, WorkspaceID: w.shop.WS, Environment: polarapi.Production}
	err := pgx.BeginFunc(context.Background(), w.pool, func(tx pgx.Tx) error {
		if _, err := inbox.Insert(context.Background(), tx, e); err != nil {
			return err
		}
		return jobs.EnqueueTx(context.Background(), tx, w.inserter, e)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMissedSaleIsBookedOnceAndItsLateWebhookBooksNothing: a paid order
// whose webhooks never reached relay is booked by one pass, through an
// inbox row of source reconciliation and a job; the next pass finds
// nothing; the webhook arriving late after all books nothing.
func TestMissedSaleIsBookedOnceAndItsLateWebhookBooksNothing(t *testing.T) {
	w := newWorld(t, worldOpts{workers: true})
	prod := w.fakes[polarapi.Production]
	prod.AddOrder(w.org, w.order("ord_missed", nil))
	prod.AddOrder(w.org, w.order("ord_unpaid", func(o *polarfake.Order) {
		o.Status = "pending"
		o.Metadata = map[string]any{"kind": "inventory_checkout", "checkoutId": "2b7a1c4e-0000-4000-8000-000000000001", "wsId": w.shop.WS}
	}))
	r := w.reconciler(nil)

	rep := pass(t, r, w, polarapi.Production, reconcile.Options{})
	k := kinds(rep)
	if rep.Result != reconcile.ResultOK || len(k[reconcile.KindBooked]) != 1 || len(rep.Findings) != 1 {
		t.Fatalf("first pass: %+v", rep)
	}
	if f := k[reconcile.KindBooked][0]; f.Action != reconcile.ActionRecovered || f.OrderID != "ord_missed" || f.SessionID != w.shop.Session ||
		f.WebhookID != "reconcile:ord_missed:paid:0" || f.InboxID == 0 {
		t.Fatalf("booked finding: %+v", f)
	}
	w.settled(t)
	if sales, reversals, _ := w.bookings(t); sales != 1 || reversals != 0 {
		t.Fatalf("after the recovery: %d sales, %d reversals, want 1 and 0", sales, reversals)
	}
	var status string
	var amount int64
	if err := w.pool.QueryRow(context.Background(), `SELECT s.status, t.amount FROM inventory_checkout_sessions s
		JOIN wallet_transactions t ON t.id = s.finance_transaction_id WHERE s.id = $1`, w.shop.Session).Scan(&status, &amount); err != nil {
		t.Fatal(err)
	}
	if status != "completed" || amount != 4950 {
		t.Fatalf("session %s booked %d, want completed and 4950", status, amount)
	}
	if n := testkit.Metric(t, w.reg, "relay_reconcile_recovered_total", map[string]string{"environment": "production", "kind": "booked"}); n != 1 {
		t.Errorf("relay_reconcile_recovered_total{booked} = %v, want 1", n)
	}

	if rep := pass(t, r, w, polarapi.Production, reconcile.Options{}); len(rep.Findings) != 0 {
		t.Fatalf("second pass found %v, want nothing", rep.Findings)
	}
	w.deliver(t, "msg_late_paid", "order.updated.paid.json", "ord_missed", nil)
	w.deliver(t, "msg_late_order_paid", "order.paid.json", "ord_missed", nil)
	w.settled(t)
	if sales, reversals, _ := w.bookings(t); sales != 1 || reversals != 0 {
		t.Fatalf("after the late webhooks: %d sales, %d reversals, want 1 and 0", sales, reversals)
	}
	if n := w.recoveredRows(t); n != 1 {
		t.Fatalf("%d inbox rows of source reconciliation, want 1", n)
	}
}

// TestMissedRefundIsReversedOnce: a refund whose webhooks never arrived is
// reversed once (from the order's refunded amount), a refund made now of
// an order older than the lookback once (from the refunds list), and the
// late webhooks reverse nothing more.
func TestMissedRefundIsReversedOnce(t *testing.T) {
	w := newWorld(t, worldOpts{workers: true})
	prod := w.fakes[polarapi.Production]
	prod.AddOrder(w.org, w.order("ord_refunded", nil))
	w.deliver(t, "msg_paid", "order.updated.paid.json", "ord_refunded", nil)
	w.settled(t)

	prod.SetOrder(w.org, "ord_refunded", map[string]any{"status": "partially_refunded", "refunded_amount": 1500, "refunded_tax_amount": 150})
	prod.AddRefund(w.org, polarfake.Refund{OrderID: "ord_refunded", Amount: 1500, TaxAmount: 150})
	r := w.reconciler(nil)
	rep := pass(t, r, w, polarapi.Production, reconcile.Options{})
	k := kinds(rep)
	if len(k[reconcile.KindReversed]) != 1 || len(rep.Findings) != 1 || k[reconcile.KindReversed][0].WebhookID != "reconcile:ord_refunded:partially_refunded:1650" {
		t.Fatalf("pass after the refund: %+v", rep.Findings)
	}
	w.settled(t)
	if sales, reversals, reversed := w.bookings(t); sales != 1 || reversals != 1 || reversed != 1650 {
		t.Fatalf("%d sales, %d reversals of %d, want 1, 1 of 1650", sales, reversals, reversed)
	}
	if rep := pass(t, r, w, polarapi.Production, reconcile.Options{}); len(rep.Findings) != 0 {
		t.Fatalf("pass after the recovery found %v", rep.Findings)
	}
	w.deliver(t, "msg_late_refund", "order.updated.partially_refunded.json", "ord_refunded", nil)
	w.settled(t)
	if _, reversals, reversed := w.bookings(t); reversals != 1 || reversed != 1650 {
		t.Fatalf("after the late webhook: %d reversals of %d, want 1 of 1650", reversals, reversed)
	}

	// A refund today of an order made before the lookback: not in the
	// orders listed, found in the refunds list.
	var oldSession string
	if err := w.pool.QueryRow(context.Background(), `INSERT INTO inventory_checkout_sessions (ws_id, total_amount, currency, polar_checkout_id, polar_environment)
		VALUES ($1, 4950, 'usd', 'chk_old', 'production') RETURNING id::text`, w.shop.WS).Scan(&oldSession); err != nil {
		t.Fatal(err)
	}
	prod.AddOrder(w.org, w.order("ord_old", func(o *polarfake.Order) {
		o.CreatedAt, o.CheckoutID, o.Metadata["checkoutId"] = time.Now().Add(-100*time.Hour), "chk_old", oldSession
	}))
	w.deliverSale(t, "msg_old_paid", "order.updated.paid.json", testkit.Sale{Workspace: w.shop.WS, Session: oldSession, PolarCheckout: "chk_old", Order: "ord_old"}, nil)
	w.settled(t)
	prod.AddRefund(w.org, polarfake.Refund{ID: "ref_old", OrderID: "ord_old", Amount: 2000})
	rep = pass(t, r, w, polarapi.Production, reconcile.Options{})
	k = kinds(rep)
	if len(k[reconcile.KindReversed]) != 1 || k[reconcile.KindReversed][0].RefundID != "ref_old" || k[reconcile.KindReversed][0].WebhookID != "reconcile:refund:ref_old" {
		t.Fatalf("pass after the old order's refund: %+v", rep.Findings)
	}
	w.settled(t)
	if rep := pass(t, r, w, polarapi.Production, reconcile.Options{}); len(rep.Findings) != 0 {
		t.Fatalf("pass after the old refund's recovery found %v", rep.Findings)
	}
}

// TestReportedNeverChanged: amounts that differ, a booking of an order
// Polar says is not paid, an unknown session and another workspace's
// order are reported, and nothing is stored for them.
func TestReportedNeverChanged(t *testing.T) {
	w := newWorld(t, worldOpts{workers: true})
	prod := w.fakes[polarapi.Production]
	// Booked by a webhook at 4950; Polar now says 5950.
	prod.AddOrder(w.org, w.order("ord_booked", func(o *polarfake.Order) { o.TotalAmount, o.TaxAmount = 5950, 0 }))
	w.deliver(t, "msg_booked", "order.updated.paid.json", "ord_booked", nil)
	w.settled(t)
	other := testkit.SeedShop(t, w.pool, testkit.ShopOptions{})
	prod.AddOrders(w.org,
		w.order("ord_unknown", func(o *polarfake.Order) {
			o.CheckoutID = "chk_nobody"
			o.Metadata["checkoutId"] = "2b7a1c4e-0000-4000-8000-00000000beef"
		}),
		w.order("ord_foreign", func(o *polarfake.Order) {
			o.CheckoutID = other.PolarCheckout
			o.Metadata["checkoutId"], o.Metadata["wsId"] = other.Session, other.WS
		}),
		w.order("ord_foreign_session", func(o *polarfake.Order) {
			o.CheckoutID = other.PolarCheckout
			o.Metadata["checkoutId"] = other.Session // names this workspace, but the session is another's
		}),
	)
	r := w.reconciler(nil)
	rep := pass(t, r, w, polarapi.Production, reconcile.Options{})
	k := kinds(rep)
	if len(k[reconcile.KindMismatch]) != 1 || len(k[reconcile.KindUnknownSession]) != 1 || len(k[reconcile.KindForeignWorkspace]) != 2 || len(rep.Findings) != 4 {
		t.Fatalf("findings: %v", rep.Findings)
	}
	if f := k[reconcile.KindMismatch][0]; !strings.Contains(f.Detail, "relay booked 4950 USD, Polar's order is 5950 USD") || f.Action != reconcile.ActionReported {
		t.Errorf("mismatch: %s", f)
	}
	// Polar says the booked order is void now.
	prod.SetOrder(w.org, "ord_booked", map[string]any{"status": "void", "paid": false, "total_amount": 4950})
	rep = pass(t, r, w, polarapi.Production, reconcile.Options{})
	if m := kinds(rep)[reconcile.KindMismatch]; len(m) != 1 || !strings.Contains(m[0].Detail, "Polar says is void") {
		t.Fatalf("a booked order Polar says is void: %v", rep.Findings)
	}
	if n := w.recoveredRows(t); n != 0 {
		t.Fatalf("%d inbox rows stored for what is only to be reported", n)
	}
	if sales, reversals, _ := w.bookings(t); sales != 1 || reversals != 0 {
		t.Fatalf("%d sales, %d reversals, want 1 and 0", sales, reversals)
	}
}

// TestThousandsOfOrdersWhileOrdersArriveNoneDoubled: 2,000 paid orders over
// 20 pages, 100 more arriving while the pass walks them, and two passes
// (two replicas) racing: every order is stored once, with one job.
func TestThousandsOfOrdersWhileOrdersArriveNoneDoubled(t *testing.T) {
	w := newWorld(t, worldOpts{})
	prod := w.fakes[polarapi.Production]
	ctx := context.Background()
	const n, arriving = 2000, 100
	rows, err := w.pool.Query(ctx, `
		INSERT INTO inventory_checkout_sessions (ws_id, status, total_amount, currency, polar_checkout_id, polar_environment)
		SELECT $1, 'reserved', 4950, 'usd', 'chk_bulk_' || g, 'production' FROM generate_series(1, $2) g
		RETURNING id::text, polar_checkout_id`, w.shop.WS, n+arriving)
	if err != nil {
		t.Fatal(err)
	}
	type sess struct{ id, checkout string }
	var sessions []sess
	for rows.Next() {
		var s sess
		if err := rows.Scan(&s.id, &s.checkout); err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	orderFor := func(i int, s sess, at time.Time) polarfake.Order {
		return polarfake.Order{ID: fmt.Sprintf("ord_bulk_%05d", i), CreatedAt: at, CheckoutID: s.checkout, Metadata: map[string]any{
			"kind": "inventory_checkout", "checkoutId": s.id, "wsId": w.shop.WS, "environment": "production"}}
	}
	start := time.Now().Add(-48 * time.Hour)
	var orders []polarfake.Order
	for i, s := range sessions[:n] {
		orders = append(orders, orderFor(i, s, start.Add(time.Duration(i)*time.Minute)))
	}
	prod.AddOrders(w.org, orders...)
	var mu sync.Mutex
	next := n
	prod.SetHook(func(r *http.Request) {
		if r.URL.Path != "/v1/orders/" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for range 10 {
			if next < n+arriving {
				prod.AddOrder(w.org, orderFor(next, sessions[next], time.Now()))
				next++
			}
		}
	})

	var wg sync.WaitGroup
	reports := make([]reconcile.Report, 2)
	for i := range reports {
		r := w.reconciler(nil) // a replica of its own
		wg.Go(func() { reports[i] = pass(t, r, w, polarapi.Production, reconcile.Options{}) })
	}
	wg.Wait()
	recovered := 0
	for _, rep := range reports {
		if rep.Result != reconcile.ResultOK {
			t.Fatalf("pass: %s %s", rep.Result, rep.Error)
		}
		for _, f := range rep.Findings {
			if f.Kind == reconcile.KindBooked && f.Action == reconcile.ActionRecovered {
				recovered++
			}
		}
	}
	// A third pass after the walk sees every order that arrived.
	rep := pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{})
	for _, f := range rep.Findings {
		if f.Kind == reconcile.KindBooked && f.Action == reconcile.ActionRecovered {
			recovered++
		}
	}
	if rows := w.recoveredRows(t); rows != n+arriving || recovered != n+arriving {
		t.Fatalf("%d recovered inbox rows, %d recovered findings, want %d each", rows, recovered, n+arriving)
	}
	if jobs := testkit.EnqueuedEvents(t, w.pool); jobs != n+arriving {
		t.Fatalf("%d events in jobs, want %d", jobs, n+arriving)
	}
	if d := w.count(t, `SELECT count(*) FROM (SELECT webhook_inbox_subject(body) FROM webhook_inbox GROUP BY 1 HAVING count(*) > 1) d`); d != 0 {
		t.Fatalf("%d orders stored twice", d)
	}
}

// TestRequestBudgetKeptAcrossPassesAndRetryAfter: one client per
// connection across passes, so that its request budget holds between
// them; a 429 waits its Retry-After.
func TestRequestBudgetKeptAcrossPassesAndRetryAfter(t *testing.T) {
	w := newWorld(t, worldOpts{})
	prod := w.fakes[polarapi.Production]
	clock := polarfake.NewClock(time.Now())
	prod.SetClock(clock.Now)
	api := w.api
	api.Clock, api.RPM = clock, 4
	r := w.reconciler(func(c *reconcile.Config) { c.API, c.Now = api, clock.Now })
	before := prod.TokenRequests(w.token)
	for range 3 { // 4 requests each: endpoints, orders, refunds, products
		if rep := pass(t, r, w, polarapi.Production, reconcile.Options{}); rep.Result != reconcile.ResultOK {
			t.Fatalf("pass: %s %s", rep.Result, rep.Error)
		}
	}
	if got := prod.TokenRequests(w.token) - before; got != 12 {
		t.Fatalf("%d requests for 3 passes, want 12", got)
	}
	var slept time.Duration
	for _, d := range clock.Slept() {
		slept += d
	}
	if slept < time.Minute {
		t.Fatalf("12 requests at 4 a minute over one client waited %v, want at least a minute", slept)
	}

	// Polar's own limit: 429 with Retry-After.
	prod.SetRateLimit(w.org, 2)
	before, sleeps := prod.TokenRequests(w.token), len(clock.Slept())
	r2 := w.reconciler(func(c *reconcile.Config) { c.API, c.Now = api, clock.Now })
	if rep := pass(t, r2, w, polarapi.Production, reconcile.Options{}); rep.Result != reconcile.ResultOK {
		t.Fatalf("pass under Polar's 429s: %s %s", rep.Result, rep.Error)
	}
	waited := false
	for _, d := range clock.Slept()[sleeps:] {
		if d >= 20*time.Second {
			waited = true
		}
	}
	if !waited || prod.TokenRequests(w.token)-before < 4 {
		t.Fatalf("no wait of Polar's Retry-After (%v), %d requests", clock.Slept()[sleeps:], prod.TokenRequests(w.token)-before)
	}
}

// TestRejectedTokenMarksUnauthorizedWithoutRetries: a revoked token costs
// one request a pass, marks the connection unauthorized and is reported.
func TestRejectedTokenMarksUnauthorizedWithoutRetries(t *testing.T) {
	w := newWorld(t, worldOpts{})
	prod := w.fakes[polarapi.Production]
	prod.RevokeToken(w.token)
	before := prod.TokenRequests(w.token)
	rep := pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{})
	if rep.Result != reconcile.ResultUnauthorized || len(kinds(rep)[reconcile.KindUnauthorized]) != 1 {
		t.Fatalf("pass with a revoked token: %+v", rep)
	}
	if n := prod.TokenRequests(w.token) - before; n != 1 {
		t.Fatalf("%d requests with a rejected token, want 1", n)
	}
	c, err := w.store.Get(context.Background(), w.shop.WS, polarapi.Production)
	if err != nil {
		t.Fatal(err)
	}
	if c.State != connections.StateUnauthorized || c.LastReconcile == nil || c.LastReconcile.Result != reconcile.ResultUnauthorized {
		t.Fatalf("connection after a rejected token: %+v", c)
	}
	if n := testkit.Metric(t, w.reg, "relay_reconcile_passes_total", map[string]string{"environment": "production", "result": "unauthorized"}); n != 1 {
		t.Errorf("relay_reconcile_passes_total{unauthorized} = %v", n)
	}
	// A token without refunds:read: the scope is named.
	tok := prod.AddToken(w.org, polarfake.ScopeOrdersRead, polarfake.ScopeWebhooksRead)
	if _, err := w.store.Put(context.Background(), w.shop.WS, polarapi.Production, tok, w.org, connections.Endpoint{State: connections.StateUnknown}); err != nil {
		t.Fatal(err)
	}
	rep = pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{})
	if f := kinds(rep)[reconcile.KindForbidden]; rep.Result != reconcile.ResultForbidden || len(f) != 1 || !strings.Contains(f[0].Detail, "refunds:read") {
		t.Fatalf("pass with a token without refunds:read: %+v", rep)
	}
}

// TestSandboxAndProductionKeptApart: each connection's token goes to its
// own environment's API only, and an order for a session of the other
// environment is refused.
func TestSandboxAndProductionKeptApart(t *testing.T) {
	w := newWorld(t, worldOpts{})
	sb := w.fakes[polarapi.Sandbox]
	sbOrg := sb.AddOrganization()
	sbTok := sb.AddToken(sbOrg)
	w.connect(t, polarapi.Sandbox, sbOrg, sbTok, true)
	// A sandbox order for the shop's production session.
	sb.AddOrder(sbOrg, w.order("ord_sandbox", func(o *polarfake.Order) { delete(o.Metadata, "environment") }))
	prodBefore := w.fakes[polarapi.Production].Requests("")
	rep := pass(t, w.reconciler(nil), w, polarapi.Sandbox, reconcile.Options{})
	if f := kinds(rep)[reconcile.KindForeignEnvironment]; len(f) != 1 || len(rep.Findings) != 1 {
		t.Fatalf("sandbox pass: %v", rep.Findings)
	}
	if n := w.fakes[polarapi.Production].Requests("") - prodBefore; n != 0 {
		t.Fatalf("a sandbox pass sent %d requests to production", n)
	}
	if n := w.fakes[polarapi.Production].TokenRequests(sbTok); n != 0 {
		t.Fatalf("the sandbox token reached production %d times", n)
	}
	if n := w.recoveredRows(t); n != 0 {
		t.Fatalf("%d rows recovered across environments", n)
	}
	rep = pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{})
	if len(rep.Findings) != 0 {
		t.Fatalf("production pass saw the sandbox order: %v", rep.Findings)
	}
}

// TestDisabledEndpointReportedAndReenabled: Polar disabled relay's
// endpoint; a pass reports it and, relay holding the workspace's secret,
// re-enables it; with RELAY_POLAR_REENABLE=off, or without a secret, it
// only reports. A missing endpoint relay registered is re-created.
func TestDisabledEndpointReportedAndReenabled(t *testing.T) {
	w := newWorld(t, worldOpts{})
	prod := w.fakes[polarapi.Production]
	ep := prod.Endpoints(w.org)[0]
	prod.DisableEndpoint(w.org, ep.ID)
	enabled := func() bool { return prod.Endpoints(w.org)[0].Enabled }

	rep := pass(t, w.reconciler(func(c *reconcile.Config) { c.Reenable = false }), w, polarapi.Production, reconcile.Options{})
	if f := kinds(rep)[reconcile.KindEndpointDisabled]; len(f) != 1 || f[0].Action != reconcile.ActionReported || enabled() {
		t.Fatalf("with re-enabling off: %v, enabled %v", rep.Findings, enabled())
	}
	if c, _ := w.store.Get(context.Background(), w.shop.WS, polarapi.Production); c.State != connections.StateDisabled {
		t.Fatalf("connection state %q, want disabled", c.State)
	}
	if n := testkit.Metric(t, w.reg, "relay_reconcile_findings_total", map[string]string{"environment": "production", "kind": "endpoint_disabled"}); n != 1 {
		t.Errorf("relay_reconcile_findings_total{endpoint_disabled} = %v", n)
	}
	rep = pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{})
	if f := kinds(rep)[reconcile.KindEndpointDisabled]; len(f) != 1 || f[0].Action != reconcile.ActionReenabled || !enabled() {
		t.Fatalf("re-enabling: %v, enabled %v", rep.Findings, enabled())
	}
	if c, _ := w.store.Get(context.Background(), w.shop.WS, polarapi.Production); c.State != connections.StateEnabled {
		t.Fatalf("connection state %q, want enabled", c.State)
	}

	// Deleted at Polar: relay registered it, so it is re-created, and its
	// new secret stored.
	prod.DeleteEndpoint(w.org, ep.ID)
	rep = pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{})
	if f := kinds(rep)[reconcile.KindEndpointMissing]; len(f) != 1 || f[0].Action != reconcile.ActionRecreated || len(prod.Endpoints(w.org)) != 1 {
		t.Fatalf("missing endpoint: %v", rep.Findings)
	}
	if _, ok, err := w.secrets.Find(context.Background(), w.shop.WS, polarapi.Production, prod.Endpoints(w.org)[0].Secret); err != nil || !ok {
		t.Fatalf("the re-created endpoint's secret is not stored: %v", err)
	}
}

// TestNoSecretNoReenabling: relay cannot verify the workspace's deliveries
// (no secret): the endpoint stays disabled and the finding says why.
func TestNoSecretNoReenabling(t *testing.T) {
	w := newWorld(t, worldOpts{noSecret: true})
	prod := w.fakes[polarapi.Production]
	prod.DisableEndpoint(w.org, prod.Endpoints(w.org)[0].ID)
	rep := pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{})
	if f := kinds(rep)[reconcile.KindEndpointDisabled]; len(f) != 1 || f[0].Action != reconcile.ActionReported ||
		!strings.Contains(f[0].Detail, "no webhook secret") || prod.Endpoints(w.org)[0].Enabled {
		t.Fatalf("without a secret: %v", rep.Findings)
	}
}

// TestDryRunChangesNothing: a dry run reports what a pass would do and
// stores no inbox row, no job, no booking, changes nothing at Polar.
func TestDryRunChangesNothing(t *testing.T) {
	w := newWorld(t, worldOpts{workers: true})
	prod := w.fakes[polarapi.Production]
	prod.AddOrder(w.org, w.order("ord_dry", nil))
	prod.DisableEndpoint(w.org, prod.Endpoints(w.org)[0].ID)
	before, err := w.store.Get(context.Background(), w.shop.WS, polarapi.Production)
	if err != nil {
		t.Fatal(err)
	}
	rep := pass(t, w.reconciler(nil), w, polarapi.Production, reconcile.Options{DryRun: true})
	k := kinds(rep)
	if len(k[reconcile.KindBooked]) != 1 || k[reconcile.KindBooked][0].Action != reconcile.ActionWouldRecover ||
		len(k[reconcile.KindEndpointDisabled]) != 1 || k[reconcile.KindEndpointDisabled][0].Action != reconcile.ActionWouldReenable {
		t.Fatalf("dry run: %v", rep.Findings)
	}
	if n := w.count(t, `SELECT count(*) FROM webhook_inbox`); n != 0 {
		t.Fatalf("dry run stored %d inbox rows", n)
	}
	if n := w.count(t, `SELECT count(*) FROM river_job WHERE kind IN ('polar_event', 'polar_event_batch')`); n != 0 {
		t.Fatalf("dry run enqueued %d jobs", n)
	}
	if sales, _, _ := w.bookings(t); sales != 0 {
		t.Fatalf("dry run booked %d sales", sales)
	}
	if prod.Endpoints(w.org)[0].Enabled {
		t.Fatal("dry run re-enabled the endpoint")
	}
	after, _ := w.store.Get(context.Background(), w.shop.WS, polarapi.Production)
	if after.State != before.State || after.LastReconcile != nil {
		t.Fatalf("dry run changed the connection: %+v", after)
	}
}

// TestEveryConnectionPassesOnItsOwn: All passes every connection
// concurrently, each with its own deadline: an organization whose API
// hangs fails its own pass only.
func TestEveryConnectionPassesOnItsOwn(t *testing.T) {
	w := newWorld(t, worldOpts{})
	sb := w.fakes[polarapi.Sandbox]
	sbOrg := sb.AddOrganization()
	w.connect(t, polarapi.Sandbox, sbOrg, sb.AddToken(sbOrg), true)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	w.fakes[polarapi.Production].SetHook(func(*http.Request) { <-release })
	w.fakes[polarapi.Production].AddOrder(w.org, w.order("ord_slow", nil))
	sb.AddOrder(sbOrg, w.order("ord_fast", func(o *polarfake.Order) { o.Metadata["environment"] = "sandbox" }))
	api := w.api
	api.RequestTimeout, api.MaxAttempts = 200*time.Millisecond, 1
	r := w.reconciler(func(c *reconcile.Config) { c.PassTimeout, c.API = time.Second, api })
	start := time.Now()
	reports, err := r.All(context.Background(), reconcile.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("All took %v with one organization hanging", took)
	}
	got := map[string]string{}
	for _, rep := range reports {
		got[rep.Environment] = rep.Result
	}
	// The two passes ran at the same time: neither waited for the other.
	var lastStart, firstEnd time.Time
	for _, rep := range reports {
		took, err := time.ParseDuration(rep.Took)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Started.After(lastStart) {
			lastStart = rep.Started
		}
		if end := rep.Started.Add(took); firstEnd.IsZero() || end.Before(firstEnd) {
			firstEnd = end
		}
	}
	if !lastStart.Before(firstEnd) {
		t.Errorf("the passes ran one after the other (the last started %v after the first ended)", lastStart.Sub(firstEnd))
	}
	if got[polarapi.Production] != reconcile.ResultFailed || got[polarapi.Sandbox] != reconcile.ResultOK {
		t.Fatalf("results %v, want production failed and sandbox ok", got)
	}
}

// TestMissedSaleWithoutWalletBecomesPending: a sale no webhook brought, in
// a workspace with no default wallet, becomes a pending booking as its
// webhook would have made it; the next pass reports it as pending and
// stores nothing more.
func TestMissedSaleWithoutWalletBecomesPending(t *testing.T) {
	w := newWorld(t, worldOpts{workers: true})
	if _, err := w.pool.Exec(context.Background(), `DELETE FROM workspace_configs WHERE ws_id = $1`, w.shop.WS); err != nil {
		t.Fatal(err)
	}
	w.fakes[polarapi.Production].AddOrder(w.org, w.order("ord_no_wallet", nil))
	r := w.reconciler(nil)
	if rep := pass(t, r, w, polarapi.Production, reconcile.Options{}); len(kinds(rep)[reconcile.KindBooked]) != 1 {
		t.Fatalf("first pass: %v", rep.Findings)
	}
	w.settled(t)
	if n := w.count(t, `SELECT count(*) FROM pending_bookings WHERE session_id = $1 AND posted_at IS NULL`, w.shop.Session); n != 1 {
		t.Fatalf("%d pending bookings, want 1", n)
	}
	rep := pass(t, r, w, polarapi.Production, reconcile.Options{})
	if p := kinds(rep)[reconcile.KindPending]; len(p) != 1 || len(rep.Findings) != 1 || p[0].Action != reconcile.ActionReported {
		t.Fatalf("second pass: %v", rep.Findings)
	}
	if n := w.recoveredRows(t); n != 1 {
		t.Fatalf("%d recovered rows, want 1", n)
	}
}

// A product whose last product.updated never arrived is applied through the
// inbox once, as the webhook would have been; products relay has no row for,
// or another workspace's, are left alone.
func TestProductUpdateNeverDeliveredIsApplied(t *testing.T) {
	w := newWorld(t, worldOpts{workers: true})
	prod := w.fakes[polarapi.Production]
	id := prod.AddProduct(w.org, polarfake.Product{Name: "Ceramic mug, large", PriceAmount: 5950, Metadata: map[string]any{
		"kind": "inventory_product", "rowId": w.shop.Product, "wsId": w.shop.WS,
	}})["id"].(string)
	prod.AddProduct(w.org, polarfake.Product{Metadata: map[string]any{ // no such row at relay
		"kind": "inventory_product", "rowId": "7e6d5c4b-3a29-4180-9f8e-000000000000", "wsId": w.shop.WS,
	}})
	prod.AddProduct(w.org, polarfake.Product{Metadata: map[string]any{ // another workspace's
		"kind": "inventory_product", "rowId": w.shop.Product, "wsId": "00000000-0000-4000-8000-00000000ffff",
	}})
	r := w.reconciler(nil)
	product := func() (polarID *string, name string, price *int64) {
		t.Helper()
		if err := w.pool.QueryRow(context.Background(), `SELECT polar_product_id, name, price_amount FROM workspace_products WHERE id = $1`,
			w.shop.Product).Scan(&polarID, &name, &price); err != nil {
			t.Fatal(err)
		}
		return
	}

	rep := pass(t, r, w, polarapi.Production, reconcile.Options{DryRun: true})
	if k := kinds(rep); len(k[reconcile.KindProduct]) != 1 || k[reconcile.KindProduct][0].Action != reconcile.ActionWouldRecover || rep.Products != 3 {
		t.Fatalf("dry run: %d products read, findings %v; want 3 read and the shop's product to be recovered", rep.Products, rep.Findings)
	}
	if n := w.recoveredRows(t); n != 0 {
		t.Fatalf("the dry run stored %d rows", n)
	}

	rep = pass(t, r, w, polarapi.Production, reconcile.Options{})
	k := kinds(rep)
	if len(k[reconcile.KindProduct]) != 1 || len(rep.Findings) != 1 {
		t.Fatalf("first pass: %v, want the shop's product only", rep.Findings)
	}
	if f := k[reconcile.KindProduct][0]; f.Action != reconcile.ActionRecovered || f.ProductID != id || f.InboxID == 0 {
		t.Fatalf("product finding: %+v", f)
	}
	w.settled(t)
	if polarID, name, price := product(); polarID == nil || *polarID != id || name != "Ceramic mug, large" || price == nil || *price != 5950 {
		t.Fatalf("product after the recovery: polar id %v, %q, price %v; want %s, the version at Polar, 5950", polarID, name, price, id)
	}
	if rep := pass(t, r, w, polarapi.Production, reconcile.Options{}); len(rep.Findings) != 0 {
		t.Fatalf("second pass found %v, want nothing: the version is applied", rep.Findings)
	}
	if n := w.recoveredRows(t); n != 1 {
		t.Fatalf("%d inbox rows of source reconciliation, want 1", n)
	}
}
