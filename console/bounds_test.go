package console

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/internal/testdb"
)

// statements is a pgx tracer that keeps the statements a pool runs.
type statements struct {
	mu  sync.Mutex
	sql []string
}

func (s *statements) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sql = append(s.sql, d.SQL)
	return ctx
}

func (s *statements) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (s *statements) reset() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := s.sql
	s.sql = nil
	return out
}

// testConsole returns a console on a database of its own whose statements
// seen records.
func testConsole(t *testing.T) (*Console, *pgxpool.Pool, *statements) {
	t.Helper()
	seen := &statements{}
	pool := testdb.NewPoolWith(t, func(c *pgxpool.Config) { c.ConnConfig.Tracer = seen })
	c, err := New(&admin.Ops{Pool: pool}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c, pool, seen
}

// insertPending stores n pending deliveries received age ago, with no job:
// unsettled until something happens to them.
func insertPending(t *testing.T, pool *pgxpool.Pool, prefix string, n int, age time.Duration) []string {
	t.Helper()
	var ids []string
	err := pool.QueryRow(context.Background(), `
		WITH ins AS (
			INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, received_at, body)
			SELECT $1 || g, 'order.paid', 'pending', now(), now() - make_interval(secs => $3), '{}'
			FROM generate_series(1, $2) g RETURNING webhook_id)
		SELECT array_agg(webhook_id) FROM ins`, prefix, n, age.Seconds()).Scan(&ids)
	if err != nil {
		t.Fatal(err)
	}
	return ids
}

func names(evs []event) string {
	var out []string
	for _, e := range evs {
		out = append(out, e.name)
	}
	return strings.Join(out, ",")
}

// TestStreamCatchUpIsBounded: a client that comes back after a day is told
// to reload without the changes of that day being read; one that missed
// more deliveries than the stream catches up on is told so after the
// database read maxChanges+1 of them, not all.
func TestStreamCatchUpIsBounded(t *testing.T) {
	ctx := context.Background()
	c, pool, seen := testConsole(t)
	insertPending(t, pool, "msg_burst_", 3*maxChanges, time.Minute)

	seen.reset()
	evs, err := c.catchUp(ctx, cursorOf(time.Now().Add(-24*time.Hour)))
	if err != nil {
		t.Fatal(err)
	}
	if got := names(evs); got != "reset,ready" {
		t.Errorf("a day behind: events %s, want reset,ready", got)
	}
	for _, q := range seen.reset() {
		if strings.Contains(q, "webhook_inbox") {
			t.Errorf("a day behind: the catch-up read the inbox before telling the client to reload:\n%s", q)
		}
	}

	since := time.Now().Add(-2 * time.Minute)
	evs, err = c.catchUp(ctx, cursorOf(since))
	if err != nil {
		t.Fatal(err)
	}
	if got := names(evs); got != "reset,ready" {
		t.Errorf("%d deliveries behind: events %s, want reset,ready", 3*maxChanges, got)
	}
	var raw []byte
	if err := pool.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) `+changesSQL,
		since.Add(-c.opts.Lookback), maxChanges+1, eventKinds).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var plan []struct{ Plan planNode }
	if err := json.Unmarshal(raw, &plan); err != nil || len(plan) != 1 {
		t.Fatalf("EXPLAIN output %s: %v", raw, err)
	}
	if read := plan[0].Plan.rowsOf("webhook_inbox"); read > maxChanges+1 {
		t.Errorf("finding the changes read %.0f inbox rows, want at most %d (maxChanges+1)", read, maxChanges+1)
	}
}

type planNode struct {
	Type     string     `json:"Node Type"`
	Relation string     `json:"Relation Name"`
	Index    string     `json:"Index Name"`
	Rows     float64    `json:"Actual Rows"`
	Loops    float64    `json:"Actual Loops"`
	Removed  float64    `json:"Rows Removed by Filter"`
	Plans    []planNode `json:"Plans"`
}

// find returns the plan's nodes for which ok is true.
func (n planNode) find(ok func(planNode) bool) []planNode {
	var out []planNode
	if ok(n) {
		out = append(out, n)
	}
	for _, p := range n.Plans {
		out = append(out, p.find(ok)...)
	}
	return out
}

// removedFrom returns the rows the plan's scans of relation read and
// filtered out.
func (n planNode) removedFrom(relation string) float64 {
	var sum float64
	if n.Relation == relation {
		sum += n.Removed * n.Loops
	}
	for _, p := range n.Plans {
		sum += p.removedFrom(relation)
	}
	return sum
}

// rowsOf returns the rows the plan's scans of relation returned.
func (n planNode) rowsOf(relation string) float64 {
	var sum float64
	if n.Relation == relation {
		sum += n.Rows * n.Loops
	}
	for _, p := range n.Plans {
		sum += p.rowsOf(relation)
	}
	return sum
}

// TestEveryUnsettledDeliveryKeepsUpdating: with four times as many
// unsettled deliveries as a poll reads again, every one of them is read
// again, and would show its change, within as many polls.
func TestEveryUnsettledDeliveryKeepsUpdating(t *testing.T) {
	ctx := context.Background()
	c, pool, _ := testConsole(t)
	const unsettled = 4 * maxChanges
	ids := insertPending(t, pool, "msg_unsettled_", unsettled, time.Minute)

	// Seen before, unsettled, and since changed (their sums differ); no
	// change is new enough for the poll's own query to find it.
	p := poller{since: time.Now().Add(time.Minute), seen: make(map[string]seenDelivery)}
	for _, id := range ids {
		p.seen[seenKey(&Delivery{WebhookID: id})] = seenDelivery{webhookID: id, at: time.Now().Add(-time.Minute)}
	}
	updated := make(map[string]bool)
	for poll := 1; poll <= unsettled/maxChanges; poll++ {
		batch, err := c.poll(ctx, &p)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range batch {
			var d struct {
				WebhookID string `json:"webhook_id"`
			}
			if err := json.Unmarshal(e.data, &d); err != nil {
				t.Fatal(err)
			}
			updated[d.WebhookID] = true
		}
	}
	var missed []string
	for _, id := range ids {
		if !updated[id] {
			missed = append(missed, id)
		}
	}
	if len(missed) > 0 {
		t.Errorf("%d of %d unsettled deliveries not updated after %d polls (e.g. %s); want every one",
			len(missed), unsettled, unsettled/maxChanges, strings.Join(missed[:min(3, len(missed))], ", "))
	}
}

// TestSearchReadsIndexes: a search by an order id, a checkout id or a
// session id finds the sale's deliveries (the refund by the order it
// refunds, the checkout's events through the session), and its plan reads
// the inbox through the subject index, never a scan of every body.
func TestSearchReadsIndexes(t *testing.T) {
	ctx := context.Background()
	c, pool, _ := testConsole(t)
	var session string
	if err := pool.QueryRow(ctx, `
		WITH ws AS (INSERT INTO workspaces (name) VALUES ('Shop') RETURNING id)
		INSERT INTO inventory_checkout_sessions (ws_id, total_amount, currency, polar_checkout_id, polar_order_id)
		SELECT id, 4950, 'usd', 'chk_search', 'ord_search' FROM ws RETURNING id::text`).Scan(&session); err != nil {
		t.Fatal(err)
	}
	// Ten thousand other orders, so that the planner's choice is the one it
	// makes on a real inbox, and the sale's four deliveries.
	if _, err := pool.Exec(ctx, `
		INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, body)
		SELECT 'msg_other_' || g, 'order.paid', 'processed', now(),
		       convert_to(jsonb_build_object('type', 'order.paid', 'data', jsonb_build_object('id', 'ord_' || g, 'checkout_id', 'chk_' || g))::text, 'UTF8')
		FROM generate_series(1, 10000) g;
		INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, body) VALUES
			('msg_s_checkout', 'checkout.updated', 'processed', now(), convert_to('{"type":"checkout.updated","data":{"id":"chk_search"}}', 'UTF8')),
			('msg_s_order', 'order.paid', 'processed', now(), convert_to('{"type":"order.paid","data":{"id":"ord_search","checkout_id":"chk_search"}}', 'UTF8')),
			('msg_s_refund', 'refund.created', 'processed', now(), convert_to('{"type":"refund.created","data":{"id":"re_1","order_id":"ord_search"}}', 'UTF8')),
			('msg_s_garbage', 'order.paid', 'invalid', now(), '\xfffe7b2264617461223a'),
			('msg_s_other', 'order.paid', 'processed', now(), convert_to('{"type":"order.paid","data":{"id":"ord_other","customer_id":"ord_search"}}', 'UTF8'));
		ANALYZE webhook_inbox`); err != nil {
		t.Fatal(err)
	}
	want := "msg_s_refund,msg_s_order,msg_s_checkout"
	for _, q := range []string{"ord_search", "chk_search", session, strings.ToUpper(session)} {
		ds, err := c.store.list(ctx, Filter{Search: q})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range ds {
			got = append(got, d.WebhookID)
		}
		if strings.Join(got, ",") != want {
			t.Errorf("search %q found %v, want %s", q, got, want)
		}
	}
	if ds, err := c.store.list(ctx, Filter{Search: "msg_s_garbage"}); err != nil || len(ds) != 1 {
		t.Errorf("search by webhook id msg_s_garbage: %d deliveries, %v; want it", len(ds), err)
	}

	where, args, err := c.store.listQuery(ctx, Filter{Search: "ord_search"})
	if err != nil {
		t.Fatal(err)
	}
	var raw []byte
	if err := pool.QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON) SELECT `+deliveryColumns+` `+where, args...).Scan(&raw); err != nil {
		t.Fatal(err)
	}
	var plan []struct{ Plan planNode }
	if err := json.Unmarshal(raw, &plan); err != nil || len(plan) != 1 {
		t.Fatalf("EXPLAIN output %s: %v", raw, err)
	}
	if scans := plan[0].Plan.find(func(n planNode) bool { return n.Relation == "webhook_inbox" && n.Type == "Seq Scan" }); len(scans) > 0 {
		t.Errorf("the search scans webhook_inbox: %s", raw)
	}
	if uses := plan[0].Plan.find(func(n planNode) bool { return n.Index == "webhook_inbox_subject_idx" }); len(uses) == 0 {
		t.Errorf("the search does not read webhook_inbox_subject_idx: %s", raw)
	}
	if read := plan[0].Plan.rowsOf("webhook_inbox") + plan[0].Plan.removedFrom("webhook_inbox"); read > 10 {
		t.Errorf("the search read %.0f inbox rows to find 3", read)
	}
}
