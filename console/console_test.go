package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/console"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testkit"
)

// waitPage polls a console page until it contains every one of want.
func waitPage(t *testing.T, url string, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, body, _ := do(t, http.MethodGet, url, nil, "")
		missing := ""
		for _, w := range want {
			if !strings.Contains(body, w) {
				missing = w
				break
			}
		}
		if code == http.StatusOK && missing == "" {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %d, still without %q after 20s:\n%s", url, code, missing, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPagesShowWhatRelayDid(t *testing.T) {
	s := startSystem(t, 3)
	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{})
	s.send(t, "msg_paid", testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_console_1"), nil))
	s.send(t, "msg_customer", testkit.Fixture(t, "customer.created.json"))
	other := testkit.SeedShop(t, s.pool, testkit.ShopOptions{})
	wrong := shop.Sale("ord_console_2")
	wrong.Workspace = other.WS // names another workspace than the session's: refused
	s.send(t, "msg_refused", testkit.Event(t, "order.updated.paid.json", wrong, nil))

	list := waitPage(t, s.admin.URL+"/admin/", "session completed, 49.50 USD booked", "refused: workspace mismatch",
		"ignored: relay does not act on customer.created")
	for _, want := range []string{`href="./deliveries/msg_paid"`, "platform", `src="./static/console.js"`} {
		if !strings.Contains(list, want) {
			t.Errorf("deliveries page lacks %q", want)
		}
	}

	// Filters and search: by status, by type, by the Polar order id in the body.
	for query, want := range map[string][]string{
		"?status=ignored":              {"msg_customer"},
		"?type=order.updated":          {"msg_paid", "msg_refused"},
		"?q=ord_console_1":             {"msg_paid"},
		"?q=msg_refused":               {"msg_refused"},
		"?workspace=" + shop.WS:        {},
		"?workspace=platform&q=nobody": {},
	} {
		_, body, _ := do(t, http.MethodGet, s.admin.URL+"/admin/"+query, nil, "")
		for _, id := range []string{"msg_paid", "msg_customer", "msg_refused"} {
			shown := strings.Contains(body, "deliveries/"+id+`"`)
			if shown != contains(want, id) {
				t.Errorf("GET /admin/%s shows %s: %v, want %v", query, id, shown, !shown)
			}
		}
	}

	code, page, header := do(t, http.MethodGet, s.admin.URL+"/admin/deliveries/msg_paid", nil, "")
	if code != http.StatusOK {
		t.Fatalf("delivery page: %d %s", code, page)
	}
	if got := header.Get("Content-Security-Policy"); got != console.ContentSecurityPolicy {
		t.Errorf("Content-Security-Policy = %q, want %q", got, console.ContentSecurityPolicy)
	}
	for _, want := range []string{"session completed, 49.50 USD booked", shop.Session, "49.50 USD", "Polar order ord_console_1",
		`data-action="../deliveries/msg_paid/replay"`, `href="../static/console.css"`, `&#34;email&#34;: &#34;***&#34;`} {
		if !strings.Contains(page, want) {
			t.Errorf("delivery page lacks %q", want)
		}
	}
	for _, pii := range []string{"shopper@example.com", "<script>", "style="} {
		if strings.Contains(page, pii) {
			t.Errorf("delivery page contains %q", pii)
		}
	}
	if code, _, _ := do(t, http.MethodGet, s.admin.URL+"/admin/deliveries/msg_nope", nil, ""); code != http.StatusNotFound {
		t.Errorf("unknown delivery: %d, want 404", code)
	}

	attention := waitPage(t, s.admin.URL+"/admin/attention", "Refused events", "workspace mismatch", "deliveries/msg_refused")
	if strings.Contains(attention, `id="retry-discarded"`) {
		t.Error("Needs attention offers a bulk retry with no discarded job")
	}

	// Actions need the console's header and a same-origin request.
	replay := s.admin.URL + "/admin/deliveries/msg_paid/replay"
	for name, h := range map[string]http.Header{
		"no console header": {},
		"cross-site":        {"X-Relay-Console": {"1"}, "Sec-Fetch-Site": {"cross-site"}},
		"foreign origin":    {"X-Relay-Console": {"1"}, "Origin": {"https://evil.example"}},
	} {
		if code, body, _ := do(t, http.MethodPost, replay, h, ""); code != http.StatusForbidden {
			t.Errorf("replay with %s: %d %s, want 403", name, code, body)
		}
	}
	code, body, _ := do(t, http.MethodPost, replay, http.Header{"X-Relay-Console": {"1"}, "Sec-Fetch-Site": {"same-origin"}}, "")
	var out struct {
		JobID   int64  `json:"job_id"`
		Message string `json:"message"`
	}
	if code != http.StatusAccepted || json.Unmarshal([]byte(body), &out) != nil || out.JobID == 0 {
		t.Fatalf("replay: %d %s, want 202 with a job", code, body)
	}
	waitPage(t, s.admin.URL+"/admin/deliveries/msg_paid", "already booked (49.50 USD), nothing new")
	var bookings int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*) FROM wallet_transactions`).Scan(&bookings); err != nil || bookings != 1 {
		t.Errorf("bookings after a replay: %d (%v), want 1", bookings, err)
	}
	if code, body, _ := do(t, http.MethodPost, s.admin.URL+"/admin/deliveries/msg_customer/replay", http.Header{"X-Relay-Console": {"1"}}, ""); code != http.StatusConflict {
		t.Errorf("replay of an ignored type: %d %s, want 409", code, body)
	}

	// Without credentials there is nothing, not even the stylesheet.
	for _, path := range []string{"/admin/", "/admin/static/console.css", "/admin/api/stream"} {
		resp, err := http.Get(s.admin.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without credentials: %d, want 401", path, resp.StatusCode)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// A discarded job is listed under Needs attention; the bulk retry says how
// many it will retry, then retries them.
func TestBulkRetryOfDiscardedJobs(t *testing.T) {
	s := startSystem(t, 1)
	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{LateSession: true})
	s.send(t, "msg_late", testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_late"), nil))
	waitPage(t, s.admin.URL+"/admin/attention?since=1h", "Discarded jobs", "deliveries/msg_late", `id="retry-discarded"`)

	code, body, _ := do(t, http.MethodGet, s.admin.URL+"/admin/attention/retry?since=1h", nil, "")
	if code != http.StatusOK || !strings.Contains(body, `"question": "Retry 1 discarded job since 1 h?"`) {
		t.Fatalf("preview: %d %s", code, body)
	}
	shop.OpenSession(t, s.pool)
	code, body, _ = do(t, http.MethodPost, s.admin.URL+"/admin/attention/retry", http.Header{
		"X-Relay-Console": {"1"}, "Content-Type": {"application/x-www-form-urlencoded"}}, "since=1h")
	if code != http.StatusOK || !strings.Contains(body, "Retried 1 discarded job") {
		t.Fatalf("bulk retry: %d %s", code, body)
	}
	waitPage(t, s.admin.URL+"/admin/deliveries/msg_late", "session completed, 49.50 USD booked")
}

// The stream on one replica shows what is done through another, resumes
// from a client's last event id, and sends heartbeats.
func TestStreamAcrossReplicas(t *testing.T) {
	s := startSystem(t, 3)
	other := httptest.NewServer(s.replica(t, console.Options{Heartbeat: 100 * time.Millisecond}))
	t.Cleanup(other.Close)
	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{})

	stream := subscribe(t, other.URL+"/admin/api/stream", "")
	_, ready := stream.waitLine(t, "the ready event", func(l string) bool { return l == "event: ready" })
	if ready == "" {
		t.Fatal("the ready event has no id to resume from")
	}
	s.send(t, "msg_live", testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_live"), nil))
	booked := func(l string) bool {
		return strings.HasPrefix(l, "data: ") && strings.Contains(l, `"webhook_id":"msg_live"`) &&
			strings.Contains(l, `"effect":"session completed, 49.50 USD booked"`) && strings.Contains(l, `"amount":4950`)
	}
	stream.waitLine(t, "msg_live booked", booked)
	stream.waitLine(t, "a heartbeat", func(l string) bool { return l == ": heartbeat" })

	// Replayed through replica 1: the stream on replica 2 sees the new job.
	code, body, _ := do(t, http.MethodPost, s.admin.URL+"/admin/deliveries/msg_live/replay", http.Header{"X-Relay-Console": {"1"}}, "")
	if code != http.StatusAccepted {
		t.Fatalf("replay: %d %s", code, body)
	}
	stream.waitLine(t, "msg_live's replay applied", func(l string) bool {
		return strings.Contains(l, `"webhook_id":"msg_live"`) && strings.Contains(l, `"effect":"already booked (49.50 USD), nothing new"`)
	})
	stream.cancel()

	// A client that saw everything up to the ready event catches up on
	// reconnecting, to the delivery's current state.
	resumed := subscribe(t, other.URL+"/admin/api/stream", ready)
	resumed.waitLine(t, "msg_live caught up", func(l string) bool {
		return strings.Contains(l, `"webhook_id":"msg_live"`) && strings.Contains(l, "already booked")
	})
	resumed.waitLine(t, "the ready event after catching up", func(l string) bool { return l == "event: ready" })

	// One gone too long is told to reload.
	old := time.Now().Add(-time.Hour).UnixMicro()
	stale := subscribe(t, other.URL+"/admin/api/stream", strconv.FormatInt(old, 10))
	stale.waitLine(t, "a reset", func(l string) bool { return l == "event: reset" })
}

// The admin listener's read and write timeouts end ordinary requests; a
// stream outlives them, heartbeat after heartbeat.
func TestStreamOutlivesServerTimeouts(t *testing.T) {
	s := startSystem(t, 3)
	srv := httptest.NewUnstartedServer(s.replica(t, console.Options{Heartbeat: 100 * time.Millisecond}))
	srv.Config.ReadTimeout, srv.Config.WriteTimeout = 300*time.Millisecond, 300*time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	stream := subscribe(t, srv.URL+"/admin/api/stream", "")
	start := time.Now()
	for i := 0; time.Since(start) < time.Second; i++ {
		stream.waitLine(t, fmt.Sprintf("heartbeat %d after %s", i+1, time.Since(start).Round(time.Millisecond)),
			func(l string) bool { return l == ": heartbeat" })
	}
}

// TestNeedsAttentionListsPendingBookings: a paid sale whose workspace has no
// default wallet is listed under Needs attention as pending, with its
// amount and reason, and its delivery says so.
func TestNeedsAttentionListsPendingBookings(t *testing.T) {
	s := startSystem(t, 3)
	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{NoWallet: true})
	s.send(t, "msg_pending", testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_console_pending"), nil))
	waitPage(t, s.admin.URL+"/admin/", "session completed, pending: no default wallet")
	page := waitPage(t, s.admin.URL+"/admin/attention", "Pending bookings", "49.50 USD", shop.Session[:8])
	i := strings.Index(page, `id="sec-pending"`)
	if i < 0 || !strings.Contains(page[i:], "pending: no default wallet") {
		t.Errorf("the pending section does not show the sale with its reason:\n%s", page)
	}
}

// TestOneWebhookIDAtTwoEndpoints: a webhook id is unique per endpoint, so
// the console shows each endpoint's delivery of one id on its own page
// (the platform's without ?endpoint=), and replays the one it shows.
func TestOneWebhookIDAtTwoEndpoints(t *testing.T) {
	s := startSystem(t, 3)
	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{})
	s.send(t, "msg_twice", testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_twice"), nil))
	waitPage(t, s.admin.URL+"/admin/deliveries/msg_twice", "session completed, 49.50 USD booked")
	ws := &inbox.Event{WebhookID: "msg_twice", EventType: "customer.created", Status: inbox.StatusIgnored,
		WebhookTimestamp: time.Now(), Body: testkit.Fixture(t, "customer.created.json"),
		WorkspaceID: shop.WS, Environment: "sandbox"}
	if _, err := inbox.Insert(t.Context(), s.pool, ws); err != nil {
		t.Fatal(err)
	}
	endpoint := shop.WS + "/sandbox"

	waitPage(t, s.admin.URL+"/admin/?q=msg_twice", `href="./deliveries/msg_twice"`, `href="./deliveries/msg_twice?endpoint=`+shop.WS+`%2fsandbox"`)
	platform := waitPage(t, s.admin.URL+"/admin/deliveries/msg_twice", "order.updated", `data-action="../deliveries/msg_twice/replay"`)
	if strings.Contains(platform, "customer.created") {
		t.Error("the platform's delivery page shows the workspace's delivery of the same id")
	}
	theirs := waitPage(t, s.admin.URL+"/admin/deliveries/msg_twice?endpoint="+endpoint, "customer.created")
	if strings.Contains(theirs, "order.updated") {
		t.Error("the workspace's delivery page shows the platform's delivery of the same id")
	}
	code, body, _ := do(t, http.MethodPost, s.admin.URL+"/admin/deliveries/msg_twice/replay", http.Header{"X-Relay-Console": {"1"}}, "")
	if code != http.StatusAccepted {
		t.Errorf("replay of the platform's delivery: %d %s", code, body)
	}
	code, body, _ = do(t, http.MethodPost, s.admin.URL+"/admin/deliveries/msg_twice/replay?endpoint="+endpoint, http.Header{"X-Relay-Console": {"1"}}, "")
	if code != http.StatusConflict || !strings.Contains(body, "does not act on") {
		t.Errorf("replay of the workspace's customer.created: %d %s, want 409 (not replayable), not the platform's", code, body)
	}
}

// TestNeedsAttentionListsPolarConnectionsAndRecoveries: a connection whose
// endpoint Polar disabled is on the Needs attention page, and a delivery
// reconciliation recovered is marked as such in the list.
func TestNeedsAttentionListsPolarConnectionsAndRecoveries(t *testing.T) {
	s := startSystem(t, 1)
	ctx := context.Background()
	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{})
	if _, err := s.pool.Exec(ctx, `INSERT INTO polar_connections (id, workspace_id, environment, token_ciphertext, key_id, token_last4, state)
		VALUES (gen_random_uuid(), $1, 'production', decode(repeat('ab', 40), 'hex'), 'k1', 'abcd', 'disabled')`, shop.WS); err != nil {
		t.Fatal(err)
	}
	body := testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_recovered"), nil)
	if _, err := inbox.InsertRecovered(ctx, s.pool, &inbox.Event{WebhookID: "reconcile:ord_recovered:paid:0", EventType: "order.updated",
		Status: inbox.StatusIgnored, WebhookTimestamp: time.Now(), Body: body, WorkspaceID: shop.WS, Environment: "production"}); err != nil {
		t.Fatal(err)
	}
	page := waitPage(t, s.admin.URL+"/admin/attention", "Polar connections", shop.WS)
	i := strings.Index(page, `id="sec-connections"`)
	if i < 0 || !strings.Contains(page[i:], "conn-disabled") {
		t.Errorf("the connections section does not show the disabled endpoint:\n%s", page)
	}
	waitPage(t, s.admin.URL+"/admin/", "reconcile:ord_recovered:paid:0", "recovered by reconciliation")
}
