package jobs_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/receiver"
)

var productEvent = testkit.ProductEvent

// version sets a product's modified_at and its fixed price.
func version(modified time.Time, amount int64) func(map[string]any) {
	return func(data map[string]any) {
		data["modified_at"] = modified.Format(time.RFC3339Nano)
		data["prices"].([]any)[0].(map[string]any)["price_amount"] = amount
	}
}

type productRow struct {
	name, description, polarID, priceID, currency string
	amount                                        int64
	archived                                      bool
	modified                                      *time.Time
}

func (r productRow) String() string {
	m := "<nil>"
	if r.modified != nil {
		m = r.modified.UTC().Format(time.RFC3339)
	}
	return fmt.Sprintf("{%q %d %s price %s polar %s archived %t modified %s}", r.name, r.amount, r.currency, r.priceID, r.polarID, r.archived, m)
}

func productOf(t *testing.T, pool *pgxpool.Pool, id string) productRow {
	t.Helper()
	var r productRow
	if err := pool.QueryRow(context.Background(), `
		SELECT name, coalesce(description, ''), coalesce(polar_product_id, ''), coalesce(polar_price_id, ''),
		       coalesce(price_currency, ''), coalesce(price_amount, 0), polar_archived, polar_modified_at
		FROM workspace_products WHERE id = $1`, id).
		Scan(&r.name, &r.description, &r.polarID, &r.priceID, &r.currency, &r.amount, &r.archived, &r.modified); err != nil {
		t.Fatal(err)
	}
	return r
}

func newID(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var id string
	if err := pool.QueryRow(context.Background(), `SELECT gen_random_uuid()::text`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

var (
	created  = time.Date(2026, 10, 1, 8, 0, 0, 0, time.UTC)  // product.created.json's created_at (modified_at null)
	renamed  = time.Date(2026, 11, 2, 9, 30, 0, 0, time.UTC) // product.updated.json's modified_at
	archived = time.Date(2026, 11, 3, 12, 0, 0, 0, time.UTC) // product.updated.archived.json's
)

// productMetrics reads relay_product_events_total by outcome.
func (s *system) productMetrics(t *testing.T) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, o := range []string{"applied", "unchanged", "stale", "unknown", "refused"} {
		out[o] = s.metric(t, "relay_product_events_total", map[string]string{"outcome": o})
	}
	return out
}

// delta is what each outcome's count grew by since before.
func (s *system) productDelta(t *testing.T, before map[string]float64) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for o, n := range s.productMetrics(t) {
		if d := n - before[o]; d != 0 {
			out[o] = d
		}
	}
	return out
}

func wantDelta(t *testing.T, got map[string]float64, want map[string]float64) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("relay_product_events_total grew by %v, want %v", got, want)
	}
}

// TestProductEvents delivers Polar's product events over HTTP to relay's
// endpoints, worked by a real River client, and reads the storefront's
// products back. The subtests share one running relay; each has its own
// workspace and Polar product.
func TestProductEvents(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})

	t.Run("create then update applies both", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		sys.addSecret(t, s.WS, endpoints.Production, secretA)
		polarID := newID(t, pool)
		before := sys.productMetrics(t)

		if state := sys.deliverTo(t, s.WS, secretA, "msg_p1_created", productEvent(t, "product.created.json", s.WS, s.Product, polarID, nil)); state != "completed" {
			t.Fatalf("created: job %s, want completed", state)
		}
		got := productOf(t, pool, s.Product)
		if got.name != "Ceramic mug" || got.description != "Hand-thrown, 350 ml." || got.polarID != polarID ||
			got.priceID != "c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5" || got.amount != 4950 || got.currency != "usd" ||
			got.archived || got.modified == nil || !got.modified.Equal(created) {
			t.Errorf("after product.created: %v, want Ceramic mug 4950 usd, linked, version %s", got, created)
		}
		row, _ := inboxOf(t, sys, "msg_p1_created")
		if row.status != "processed" || row.note != "linked to Polar product "+polarID+", price 49.50 USD, description changed" {
			t.Errorf("created's inbox row = %+v", row)
		}

		if state := sys.deliverTo(t, s.WS, secretA, "msg_p1_updated", productEvent(t, "product.updated.json", s.WS, s.Product, polarID, nil)); state != "completed" {
			t.Fatalf("updated: job %s, want completed", state)
		}
		got = productOf(t, pool, s.Product)
		if got.name != "Ceramic mug, large" || got.amount != 5950 || got.archived || !got.modified.Equal(renamed) {
			t.Errorf("after product.updated: %v, want Ceramic mug, large 5950, version %s", got, renamed)
		}
		if row, _ := inboxOf(t, sys, "msg_p1_updated"); row.note != "price 49.50 → 59.50 USD, renamed “Ceramic mug, large”" {
			t.Errorf("updated's inbox note = %q", row.note)
		}
		wantDelta(t, sys.productDelta(t, before), map[string]float64{"applied": 2})
		if n := sys.metric(t, "relay_events_processed_total", map[string]string{"event_type": "product.updated", "result": "ok"}); n < 1 {
			t.Errorf("relay_events_processed_total{product.updated,ok} = %v, want at least 1", n)
		}

		// A stale redelivery: the same webhook id is a duplicate; the older
		// version under another webhook id (a resend) changes nothing.
		if code := sys.postTo(t, s.WS, secretA, "msg_p1_created", productEvent(t, "product.created.json", s.WS, s.Product, polarID, nil)); code != http.StatusOK {
			t.Fatalf("redelivery: status %d", code)
		}
		if state := sys.deliverTo(t, s.WS, secretA, "msg_p1_created_again", productEvent(t, "product.created.json", s.WS, s.Product, polarID, nil)); state != "completed" {
			t.Fatalf("stale version: job %s, want completed", state)
		}
		if after := productOf(t, pool, s.Product); after.String() != got.String() {
			t.Errorf("a stale version changed the product: %v, was %v", after, got)
		}
		row, _ = inboxOf(t, sys, "msg_p1_created_again")
		if row.status != "processed" || !strings.HasPrefix(row.note, "stale: version of 2026-10-01T08:00:00Z is older than the applied one of 2026-11-02T09:30:00Z") {
			t.Errorf("stale version's inbox row = %+v", row)
		}
		// The same version again under another webhook id: nothing new.
		if state := sys.deliverTo(t, s.WS, secretA, "msg_p1_updated_again", productEvent(t, "product.updated.json", s.WS, s.Product, polarID, nil)); state != "completed" {
			t.Fatalf("same version: job %s, want completed", state)
		}
		wantDelta(t, sys.productDelta(t, before), map[string]float64{"applied": 2, "stale": 1, "unchanged": 1})
	})

	t.Run("update delivered before create ends at the update", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		polarID := newID(t, pool)
		sys.send(t, "msg_p2_updated", productEvent(t, "product.updated.json", s.WS, s.Product, polarID, nil))
		sys.waitJobs(t, "msg_p2_updated")
		sys.send(t, "msg_p2_created", productEvent(t, "product.created.json", s.WS, s.Product, polarID, nil))
		if state := sys.waitJobs(t, "msg_p2_created")["msg_p2_created"]; state != "completed" {
			t.Fatalf("created: job %s, want completed", state)
		}
		if got := productOf(t, pool, s.Product); got.name != "Ceramic mug, large" || got.amount != 5950 || !got.modified.Equal(renamed) {
			t.Errorf("product = %v, want the update's (Ceramic mug, large, 5950, %s)", got, renamed)
		}
	})

	t.Run("20 concurrent deliveries of mixed versions end at the newest", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		sys.addSecret(t, s.WS, endpoints.Production, secretA)
		polarID := newID(t, pool)
		// 20 versions a minute apart, priced 1000 + their rank, the newest
		// archived; product.created (no modified_at) among them.
		bodies := map[string][]byte{"msg_p3_created": productEvent(t, "product.created.json", s.WS, s.Product, polarID, nil)}
		newest := renamed.Add(19 * time.Minute)
		for i := range 19 {
			fixture := "product.updated.json"
			if i == 18 {
				fixture = "product.updated.archived.json"
			}
			at := renamed.Add(time.Duration(i+1) * time.Minute)
			bodies[fmt.Sprintf("msg_p3_v%02d", i+1)] = productEvent(t, fixture, s.WS, s.Product, polarID, version(at, int64(1001+i)))
		}
		// The product's row is held while the deliveries arrive, so that
		// the jobs pile up on it, as many at once as there are workers, and
		// then race for it.
		ctx := context.Background()
		hold, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer hold.Rollback(ctx) //nolint:errcheck // released below
		if _, err := hold.Exec(ctx, `SELECT 1 FROM workspace_products WHERE id = $1 FOR UPDATE`, s.Product); err != nil {
			t.Fatal(err)
		}
		var ids []string
		var wg sync.WaitGroup
		start := make(chan struct{})
		for id, body := range bodies {
			ids = append(ids, id)
			wg.Go(func() {
				<-start
				if code := sys.postTo(t, s.WS, secretA, id, body); code != http.StatusOK {
					t.Errorf("delivery %s: status %d", id, code)
				}
			})
		}
		close(start)
		wg.Wait()
		testkit.Within(t, 30*time.Second, "10 product jobs running at once", func() bool {
			var n int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'running' AND kind = 'polar_event'`).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n >= 10
		})
		if err := hold.Rollback(ctx); err != nil {
			t.Fatal(err)
		}
		for id, state := range sys.waitJobs(t, ids...) {
			if state != "completed" {
				t.Errorf("job of %s: %s, want completed", id, state)
			}
		}
		if got := productOf(t, pool, s.Product); got.amount != 1019 || !got.archived || !got.modified.Equal(newest) {
			t.Errorf("product = %v, want the newest version (1019, archived, %s)", got, newest)
		}
	})

	t.Run("archive and un-archive; reserved sessions untouched; a paid order for an archived product books", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		polarID := newID(t, pool)
		sys.send(t, "msg_p4_created", productEvent(t, "product.created.json", s.WS, s.Product, polarID, nil))
		sys.send(t, "msg_p4_archived", productEvent(t, "product.updated.archived.json", s.WS, s.Product, polarID, nil))
		sys.waitJobs(t, "msg_p4_created", "msg_p4_archived")
		if got := productOf(t, pool, s.Product); !got.archived || !got.modified.Equal(archived) {
			t.Errorf("product = %v, want archived at %s", got, archived)
		}
		if row, _ := inboxOf(t, sys, "msg_p4_archived"); row.note != "archived" {
			t.Errorf("archive's inbox note = %q, want archived", row.note)
		}
		if got := session(t, pool, s); got.status != "reserved" {
			t.Errorf("the reserved session of the archived product = %+v, want reserved still", got)
		}

		unarchived := archived.Add(time.Hour)
		sys.send(t, "msg_p4_unarchived", productEvent(t, "product.updated.json", s.WS, s.Product, polarID, version(unarchived, 4950)))
		sys.waitJobs(t, "msg_p4_unarchived")
		if got := productOf(t, pool, s.Product); got.archived || got.name != "Ceramic mug, large" || !got.modified.Equal(unarchived) {
			t.Errorf("product = %v, want un-archived at %s", got, unarchived)
		}
		if row, _ := inboxOf(t, sys, "msg_p4_unarchived"); row.note != "renamed “Ceramic mug, large”, un-archived" {
			t.Errorf("un-archive's inbox note = %q", row.note)
		}
		sys.send(t, "msg_p4_rearchived", productEvent(t, "product.updated.archived.json", s.WS, s.Product, polarID, version(unarchived.Add(time.Hour), 4950)))
		sys.waitJobs(t, "msg_p4_rearchived")
		if got := productOf(t, pool, s.Product); !got.archived {
			t.Fatalf("product = %v, want archived again", got)
		}

		// The money moved: the archived product's sale books, in its category.
		sys.send(t, "msg_p4_paid", event(t, "order.updated.paid.json", s, "ord_p4", nil))
		if state := sys.waitJobs(t, "msg_p4_paid")["msg_p4_paid"]; state != "completed" {
			t.Fatalf("paid order: job %s, want completed", state)
		}
		if got := session(t, pool, s); got.status != "completed" || got.txID == nil {
			t.Errorf("session = %+v, want completed and booked", got)
		}
		if bk := bookings(t, pool, s); len(bk) != 1 || bk[0].amount != 4950 || bk[0].category == nil || *bk[0].category != s.Category {
			t.Errorf("bookings = %+v, want one of 4950 in the archived product's category", bk)
		}
	})

	t.Run("A's secret cannot touch B's product", func(t *testing.T) {
		a := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		b := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		sys.addSecret(t, a.WS, endpoints.Production, secretA)
		before := sys.productMetrics(t)
		boundary := sys.metric(t, "relay_boundary_refusals_total", map[string]string{"reason": "workspace"})
		was := productOf(t, pool, b.Product)

		forged := productEvent(t, "product.updated.json", b.WS, b.Product, newID(t, pool), nil) // B's wsId and row
		if state := sys.deliverTo(t, a.WS, secretA, "msg_p5_forged", forged); state != "cancelled" {
			t.Fatalf("job: %s, want cancelled (refused)", state)
		}
		if got := productOf(t, pool, b.Product); got.String() != was.String() {
			t.Errorf("B's product changed: %v, was %v", got, was)
		}
		row, _ := inboxOf(t, sys, "msg_p5_forged")
		if row.status != "refused" || !strings.Contains(row.note, "another workspace") || !strings.Contains(row.note, a.WS) || !strings.Contains(row.note, b.WS) {
			t.Errorf("inbox row = %+v, want refused, naming both workspaces", row)
		}
		if n := sys.metric(t, "relay_boundary_refusals_total", map[string]string{"reason": "workspace"}); n != boundary+1 {
			t.Errorf("relay_boundary_refusals_total{reason=workspace} = %v, want %v", n, boundary+1)
		}
		wantDelta(t, sys.productDelta(t, before), map[string]float64{"refused": 1})
		var line string
		for l := range strings.SplitSeq(sys.logs.String(), "\n") {
			if strings.Contains(l, "msg_p5_forged") && strings.Contains(l, "result=refused") {
				line = l
			}
		}
		if !strings.Contains(line, a.WS) || !strings.Contains(line, b.WS) {
			t.Errorf("no log line of the refusal names both workspaces: %q", line)
		}
	})

	t.Run("sandbox cannot touch production", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		sys.addSecret(t, s.WS, endpoints.Sandbox, secretASandbox)
		boundary := sys.metric(t, "relay_boundary_refusals_total", map[string]string{"reason": "environment"})
		was := productOf(t, pool, s.Product)
		if state := sys.deliverTo(t, s.WS, secretASandbox, "msg_p6_sandbox", productEvent(t, "product.updated.json", s.WS, s.Product, newID(t, pool), nil)); state != "cancelled" {
			t.Fatalf("job: %s, want cancelled (refused)", state)
		}
		if got := productOf(t, pool, s.Product); got.String() != was.String() {
			t.Errorf("the production product changed: %v, was %v", got, was)
		}
		if row, _ := inboxOf(t, sys, "msg_p6_sandbox"); row.status != "refused" || !strings.Contains(row.note, "another environment") {
			t.Errorf("inbox row = %+v, want refused for the environment", row)
		}
		if n := sys.metric(t, "relay_boundary_refusals_total", map[string]string{"reason": "environment"}); n != boundary+1 {
			t.Errorf("relay_boundary_refusals_total{reason=environment} = %v, want %v", n, boundary+1)
		}
		// A sandbox product is the sandbox secret's to change.
		if _, err := pool.Exec(context.Background(), `UPDATE workspace_products SET polar_environment = 'sandbox' WHERE id = $1`, s.Product); err != nil {
			t.Fatal(err)
		}
		if state := sys.deliverTo(t, s.WS, secretASandbox, "msg_p6_sandbox_ok", productEvent(t, "product.updated.json", s.WS, s.Product, newID(t, pool), nil)); state != "completed" {
			t.Fatalf("job: %s, want completed", state)
		}
		if got := productOf(t, pool, s.Product); got.amount != 5950 {
			t.Errorf("the sandbox product = %v, want 5950", got)
		}
	})

	t.Run("an unknown product is ignored once with a reason", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		before := sys.productMetrics(t)
		missing, polarID := newID(t, pool), newID(t, pool)
		body := productEvent(t, "product.updated.json", s.WS, missing, polarID, nil)
		for range 3 { // Polar's retries of one delivery
			sys.send(t, "msg_p7_unknown", body)
		}
		sys.send(t, "msg_p7_by_hand", productEvent(t, "product.created.json", s.WS, "", newID(t, pool), nil))
		for id, state := range sys.waitJobs(t, "msg_p7_unknown", "msg_p7_by_hand") {
			if state != "completed" {
				t.Errorf("job of %s: %s, want completed", id, state)
			}
		}
		var rows, attempts int
		if err := pool.QueryRow(context.Background(), `SELECT count(*), max(j.attempt) FROM webhook_inbox i JOIN river_job j ON j.id = i.job_id
			WHERE i.webhook_id = 'msg_p7_unknown'`).Scan(&rows, &attempts); err != nil {
			t.Fatal(err)
		}
		if rows != 1 || attempts != 1 {
			t.Errorf("%d inbox rows, job attempts %d, want 1 row worked in 1 attempt", rows, attempts)
		}
		row, _ := inboxOf(t, sys, "msg_p7_unknown")
		if row.status != "ignored" || row.note != "no storefront product "+missing+", none linked to Polar product "+polarID {
			t.Errorf("inbox row = %+v, want ignored with the reason", row)
		}
		if row, _ := inboxOf(t, sys, "msg_p7_by_hand"); row.status != "ignored" || !strings.Contains(row.note, "its metadata names none") {
			t.Errorf("a product made by hand at Polar: inbox row = %+v, want ignored with the reason", row)
		}
		wantDelta(t, sys.productDelta(t, before), map[string]float64{"unknown": 2})
	})

	t.Run("reconciliation's seam: a product from Polar's API applies through the inbox", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		var list struct{ Items []map[string]any }
		if err := json.Unmarshal(testkit.APIFixture(t, "products.list.json"), &list); err != nil {
			t.Fatal(err)
		}
		item := list.Items[0]
		polarID := newID(t, pool)
		item["id"], item["metadata"].(map[string]any)["rowId"], item["metadata"].(map[string]any)["wsId"] = polarID, s.Product, s.WS
		product, err := json.Marshal(item)
		if err != nil {
			t.Fatal(err)
		}
		unknown := map[string]any{}
		for k, v := range item {
			unknown[k] = v
		}
		unknown["id"], unknown["metadata"] = newID(t, pool), map[string]any{}
		other, err := json.Marshal(unknown)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for range 2 { // a second pass finds the same versions: nothing new
			var events []*inbox.Event
			for _, p := range [][]byte{product, other} {
				e, err := jobs.ProductVersionEvent(p, "", "", time.Now())
				if err != nil {
					t.Fatal(err)
				}
				events = append(events, e)
			}
			ids = []string{events[0].WebhookID, events[1].WebhookID}
			// Two events committed together make a batch job.
			if err := receiver.Commit(context.Background(), pool, sys.clients[0], events); err != nil {
				t.Fatal(err)
			}
		}
		for id, state := range sys.waitJobs(t, ids...) {
			if state != "completed" {
				t.Errorf("job of %s: %s, want completed", id, state)
			}
		}
		if got := productOf(t, pool, s.Product); got.polarID != polarID || got.amount != 4950 || !got.modified.Equal(created) {
			t.Errorf("product = %v, want linked to %s at 4950", got, polarID)
		}
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox WHERE webhook_id = ANY($1)`, ids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Errorf("%d inbox rows for two versions read twice, want 2", n)
		}
		if row, _ := inboxOf(t, sys, ids[0]); row.status != "processed" {
			t.Errorf("the product's inbox row = %+v, want processed", row)
		}
		if row, _ := inboxOf(t, sys, ids[1]); row.status != "ignored" {
			t.Errorf("the unknown product's inbox row = %+v, want ignored", row)
		}
	})
}

// TestCrossedProductBatchesDoNotDeadlock runs, several times, two batch
// jobs at once over the same eight products, each with a version of every
// product: a batch locks all its products in one id-ordered step before it
// changes any, so neither waits for the other in a circle, nothing is split
// into single jobs, and every product ends at its newer version.
func TestCrossedProductBatchesDoNotDeadlock(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	const rounds, n = 5, 8
	for round := range rounds {
		rows := make([]string, n)
		a, b := map[string][]byte{}, map[string][]byte{}
		for i := range rows {
			rows[i] = newID(t, pool)
			if _, err := pool.Exec(context.Background(), `INSERT INTO workspace_products (id, ws_id, name) VALUES ($1, $2, 'p')`, rows[i], s.WS); err != nil {
				t.Fatal(err)
			}
			polarID := newID(t, pool)
			older := productEvent(t, "product.updated.json", s.WS, rows[i], polarID, version(renamed, 100))
			newer := productEvent(t, "product.updated.json", s.WS, rows[i], polarID, version(renamed.Add(time.Minute), 200))
			if i%2 == 0 {
				older, newer = newer, older
			}
			a[fmt.Sprintf("msg_x%d_%d_a", round, i)] = older
			b[fmt.Sprintf("msg_x%d_%d_b", round, i)] = newer
		}
		storeBatches(t, sys, a, b)
		waitEventJobs(t, pool)
		if logs := sys.logs.String(); strings.Contains(logs, "batch split into single jobs") {
			for line := range strings.Lines(logs) {
				if strings.Contains(line, "batch split") {
					t.Errorf("round %d: %s", round, strings.TrimSpace(line))
				}
			}
			t.FailNow()
		}
		for i, row := range rows {
			if got := productOf(t, pool, row); got.amount != 200 {
				t.Fatalf("round %d, product %d: %v, want the newer version (200)", round, i, got)
			}
		}
	}
}
