package jobs_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polar"
)

const (
	secretA        = "polar_whs_workspace_a_production_1"
	secretA2       = "whsec_workspaceARotatedSecret0123456789abcdefgh"
	secretASandbox = "polar_whs_workspace_a_sandbox_0001"
	secretB        = "polar_whs_workspace_b_production_1"
)

// postTo delivers body to a workspace's endpoint signed with secret.
func (s *system) postTo(t *testing.T, workspace, secret, webhookID string, body []byte) int {
	t.Helper()
	code, err := testkit.Post(http.DefaultClient, s.wsURL+"/"+workspace, secret, webhookID, body)
	if err != nil {
		t.Errorf("post %s: %v", webhookID, err)
	}
	return code
}

// deliverTo posts to a workspace's endpoint, requires 200 and returns the
// final state of the delivery's job.
func (s *system) deliverTo(t *testing.T, workspace, secret, webhookID string, body []byte) string {
	t.Helper()
	if code := s.postTo(t, workspace, secret, webhookID, body); code != http.StatusOK {
		t.Fatalf("delivery %s: status %d, want 200", webhookID, code)
	}
	return s.waitJobs(t, webhookID)[webhookID]
}

func (s *system) addSecret(t *testing.T, workspace, environment, secret string) endpoints.Secret {
	t.Helper()
	sec, err := s.secrets.Add(context.Background(), workspace, environment, secret)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the cache to have it, as every replica will within 5 s.
	body := []byte(`{}`)
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, env, err := s.cache.Verify(workspace, body, polar.SignedHeaders(secret, "msg_probe", time.Now(), body))
		if err == nil && env == environment {
			return sec
		}
		if time.Now().After(deadline) {
			t.Fatalf("the cache does not verify with a secret added 5 s ago: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inboxRow is what the inbox holds of a delivery.
type inboxRow struct {
	status, workspace, environment, note string
}

func inboxOf(t *testing.T, s *system, webhookID string) (inboxRow, bool) {
	t.Helper()
	var r inboxRow
	err := s.pool.QueryRow(context.Background(), `
		SELECT status, coalesce(workspace_id::text, ''), coalesce(environment, ''), coalesce(error, '')
		FROM webhook_inbox WHERE webhook_id = $1`, webhookID).Scan(&r.status, &r.workspace, &r.environment, &r.note)
	if err != nil {
		return r, false
	}
	return r, true
}

// eventually polls post until it answers want, for at most the 5 seconds in
// which a change to the secrets must reach every replica.
func eventually(t *testing.T, what string, want int, post func() int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := post()
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %d 5 s after the change, want %d", what, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWorkspaceEndpointsVerifyWithTheirOwnSecretsOnly(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	a := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	b := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	oldA := sys.addSecret(t, a.WS, endpoints.Production, secretA)
	sys.addSecret(t, b.WS, endpoints.Production, secretB)
	body := event(t, "order.updated.paid.json", a, "ord_ws_a", nil)

	// Another workspace's secret, on either endpoint, stores nothing.
	if code := sys.postTo(t, a.WS, secretB, "msg_ws_wrong", body); code != http.StatusUnauthorized {
		t.Errorf("A's endpoint, B's secret: status %d, want 401", code)
	}
	if code := sys.postTo(t, b.WS, secretA, "msg_ws_wrong", body); code != http.StatusUnauthorized {
		t.Errorf("B's endpoint, A's secret: status %d, want 401", code)
	}
	if code := sys.postTo(t, a.WS, secret, "msg_ws_wrong", body); code != http.StatusUnauthorized {
		t.Errorf("A's endpoint, the platform's secret: status %d, want 401", code)
	}
	if _, ok := inboxOf(t, sys, "msg_ws_wrong"); ok {
		t.Error("a delivery that did not verify was stored")
	}

	// Its own secret passes, and the row says whose it was.
	if code := sys.postTo(t, a.WS, secretA, "msg_ws_a", body); code != http.StatusOK {
		t.Fatalf("A's endpoint, A's secret: status %d, want 200", code)
	}
	if state := sys.waitJobs(t, "msg_ws_a")["msg_ws_a"]; state != "completed" {
		t.Fatalf("job: %s, want completed", state)
	}
	if row, _ := inboxOf(t, sys, "msg_ws_a"); row.workspace != a.WS || row.environment != endpoints.Production {
		t.Errorf("inbox row = %+v, want workspace %s, production", row, a.WS)
	}
	if bk := bookings(t, pool, a); len(bk) != 1 || bk[0].amount != 4950 {
		t.Errorf("A's bookings = %+v, want one of 4950", bk)
	}

	// Rotation: old and new both pass, then the old one is removed and fails.
	sys.addSecret(t, a.WS, endpoints.Production, secretA2)
	eventually(t, "the new secret", http.StatusOK, func() int { return sys.postTo(t, a.WS, secretA2, "msg_ws_rot_new", body) })
	if code := sys.postTo(t, a.WS, secretA, "msg_ws_rot_old", body); code != http.StatusOK {
		t.Errorf("the old secret while rotating: status %d, want 200", code)
	}
	if _, err := sys.secrets.Remove(context.Background(), oldA.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the removed secret", http.StatusUnauthorized, func() int { return sys.postTo(t, a.WS, secretA, "msg_ws_rot_gone", body) })
	if code := sys.postTo(t, a.WS, secretA2, "msg_ws_rot_after", body); code != http.StatusOK {
		t.Errorf("the new secret after rotating: status %d, want 200", code)
	}

	// Not a UUID: no such endpoint. A workspace without secrets: 401.
	if code := sys.postTo(t, "shop-a", secretA, "msg_ws_404", body); code != http.StatusNotFound {
		t.Errorf("a workspace id that is not a UUID: status %d, want 404", code)
	}
	c := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	if code := sys.postTo(t, c.WS, secretA, "msg_ws_none", body); code != http.StatusUnauthorized {
		t.Errorf("a workspace without secrets: status %d, want 401", code)
	}
}

// TestWorkspaceSecretCannotReachAnotherWorkspace is the attack: workspace
// A's owner signs, with A's own secret, an order whose metadata names
// workspace B and B's session. Through A's endpoint it is stored, refused
// and visible; through B's it does not verify. B's session and ledger never
// change.
func TestWorkspaceSecretCannotReachAnotherWorkspace(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	a := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	b := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.addSecret(t, a.WS, endpoints.Production, secretA)
	sys.addSecret(t, b.WS, endpoints.Production, secretB)
	forged := event(t, "order.updated.paid.json", b, "ord_forged", nil) // B's wsId, checkoutId and Polar checkout

	if code := sys.postTo(t, b.WS, secretA, "msg_forged_b", forged); code != http.StatusUnauthorized {
		t.Errorf("to B's endpoint: status %d, want 401", code)
	}
	if _, ok := inboxOf(t, sys, "msg_forged_b"); ok {
		t.Error("the forgery posted to B's endpoint was stored")
	}

	sys.send(t, "msg_unrelated", event(t, "customer.created.json", a, "", nil)) // the platform endpoint still works
	if code := sys.postTo(t, a.WS, secretA, "msg_forged", forged); code != http.StatusOK {
		t.Fatalf("to A's endpoint: status %d, want 200 (verified, stored)", code)
	}
	if state := sys.waitJobs(t, "msg_forged")["msg_forged"]; state != "cancelled" {
		t.Fatalf("job: %s, want cancelled (refused)", state)
	}
	if got := session(t, pool, b); got.status != "reserved" || got.polarOrder != nil || got.txID != nil {
		t.Errorf("B's session changed: %+v", got)
	}
	if bk := bookings(t, pool, b); len(bk) != 0 {
		t.Errorf("B's ledger changed: %+v", bk)
	}
	row, _ := inboxOf(t, sys, "msg_forged")
	if row.status != "refused" || row.workspace != a.WS || !strings.Contains(row.note, b.WS) || !strings.Contains(row.note, a.WS) {
		t.Errorf("inbox row = %+v, want refused, workspace A, a note naming both workspaces", row)
	}
	if n := sys.metric(t, "relay_boundary_refusals_total", map[string]string{"reason": "workspace"}); n != 1 {
		t.Errorf("relay_boundary_refusals_total{reason=workspace} = %v, want 1", n)
	}
	logs := sys.logs.String()
	var line string
	for l := range strings.SplitSeq(logs, "\n") {
		if strings.Contains(l, "msg_forged") && strings.Contains(l, "result=refused") {
			line = l
		}
	}
	if !strings.Contains(line, a.WS) || !strings.Contains(line, b.WS) {
		t.Errorf("no log line of the refusal names both workspaces: %q", line)
	}
	for _, pii := range []string{"@", "Jane", "Doe"} {
		if strings.Contains(line, pii) {
			t.Errorf("the refusal's log line holds payload data %q: %s", pii, line)
		}
	}
}

// TestSandboxSecretNeverBooksAProductionSession: Polar's sandbox takes test
// cards, so a sale verified by a sandbox secret must not complete or book a
// production session; it does complete the sandbox session it was for.
func TestSandboxSecretNeverBooksAProductionSession(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	prod := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.addSecret(t, prod.WS, endpoints.Sandbox, secretASandbox)
	sys.addSecret(t, prod.WS, endpoints.Production, secretA)

	if state := sys.deliverTo(t, prod.WS, secretASandbox, "msg_sandbox_prod", event(t, "order.updated.paid.json", prod, "ord_sb", nil)); state != "cancelled" {
		t.Fatalf("job: %s, want cancelled (refused)", state)
	}
	if got := session(t, pool, prod); got.status != "reserved" || got.txID != nil {
		t.Errorf("the production session changed: %+v", got)
	}
	if row, _ := inboxOf(t, sys, "msg_sandbox_prod"); row.status != "refused" || row.environment != endpoints.Sandbox {
		t.Errorf("inbox row = %+v, want refused, sandbox", row)
	}
	if n := sys.metric(t, "relay_boundary_refusals_total", map[string]string{"reason": "environment"}); n != 1 {
		t.Errorf("relay_boundary_refusals_total{reason=environment} = %v, want 1", n)
	}

	// The same workspace's sandbox session is the sandbox secret's to complete.
	sandbox := testkit.SeedShop(t, pool, testkit.ShopOptions{Sandbox: true})
	sys.addSecret(t, sandbox.WS, endpoints.Sandbox, secretASandbox)
	if state := sys.deliverTo(t, sandbox.WS, secretASandbox, "msg_sandbox_ok", event(t, "order.updated.paid.json", sandbox, "ord_sb_ok", nil)); state != "completed" {
		t.Fatalf("job: %s, want completed", state)
	}
	if got := session(t, pool, sandbox); got.status != "completed" {
		t.Errorf("the sandbox session = %+v, want completed", got)
	}
	// And a production secret cannot complete a sandbox session either.
	other := testkit.SeedShop(t, pool, testkit.ShopOptions{Sandbox: true})
	sys.addSecret(t, other.WS, endpoints.Production, secretB)
	if state := sys.deliverTo(t, other.WS, secretB, "msg_prod_sandbox", event(t, "order.updated.paid.json", other, "ord_ps", nil)); state != "cancelled" {
		t.Errorf("job: %s, want cancelled (refused)", state)
	}
}

// TestWebhookIDIsUniquePerEndpoint is the attack on de-duplication: workspace
// A signs, with its own secret, a delivery whose webhook id is one that
// workspace B's endpoint and then the platform's receive later from Polar.
// Each real delivery is stored and booked; each, redelivered 20 times at
// once to its endpoint, is stored once and books once.
func TestWebhookIDIsUniquePerEndpoint(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	a := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	b := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	c := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.addSecret(t, a.WS, endpoints.Production, secretA)
	sys.addSecret(t, b.WS, endpoints.Production, secretB)
	const id = "msg_taken_by_a"

	if code := sys.postTo(t, a.WS, secretA, id, event(t, "order.updated.paid.json", a, "ord_a", nil)); code != http.StatusOK {
		t.Fatalf("A's delivery: status %d, want 200", code)
	}
	deliverAtOnce := func(what string, post func() int) {
		t.Helper()
		codes := make(chan int, 20)
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() { codes <- post() })
		}
		wg.Wait()
		close(codes)
		for code := range codes {
			if code != http.StatusOK {
				t.Errorf("%s: status %d, want 200", what, code)
			}
		}
	}
	bBody := event(t, "order.updated.paid.json", b, "ord_b", nil)
	deliverAtOnce("B's delivery", func() int { return sys.postTo(t, b.WS, secretB, id, bBody) })
	cBody := event(t, "order.updated.paid.json", c, "ord_c", nil)
	deliverAtOnce("the platform's delivery", func() int { return sys.post(t, id, cBody) })

	testkit.Within(t, 30*time.Second, "every job of the three deliveries to finish", func() bool {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM river_job
			WHERE kind IN ('polar_event', 'polar_event_batch') AND finalized_at IS NULL`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
	rows, err := pool.Query(context.Background(), `SELECT coalesce(workspace_id::text, 'platform'), status, count(*) OVER (PARTITION BY workspace_id)
		FROM webhook_inbox WHERE webhook_id = $1 ORDER BY id`, id)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var ws, status string
		var n int
		if err := rows.Scan(&ws, &status, &n); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %s ×%d", ws, status, n))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{a.WS + " processed ×1", b.WS + " processed ×1", "platform processed ×1"}
	if !slices.Equal(got, want) {
		t.Errorf("inbox rows of %s = %q, want %q", id, got, want)
	}
	for name, s := range map[string]shop{"A": a, "B": b, "C (the platform's)": c} {
		if bk := bookings(t, pool, s); len(bk) != 1 || bk[0].amount != 4950 {
			t.Errorf("%s's bookings = %+v, want one of 4950", name, bk)
		}
		if got := session(t, pool, s); got.status != "completed" {
			t.Errorf("%s's session = %+v, want completed", name, got)
		}
	}
}

// TestUnconnectedWorkspaceAnswersAsAConnectedOne: a bad signature gets the
// same bytes back (status, headers but the date, body) whether or not the
// workspace has connected its Polar organization, so that nobody can list
// the connected ones (endpoints' TestUnconnectedWorkspaceLooksConnected
// holds them to the same work).
func TestUnconnectedWorkspaceAnswersAsAConnectedOne(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	connected := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	unconnected := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sys.addSecret(t, connected.WS, endpoints.Production, secretA)
	body := []byte(`{"type":"order.paid","data":{}}`)

	answer := func(ws string) string {
		req, err := http.NewRequest(http.MethodPost, sys.wsURL+"/"+ws, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = polar.SignedHeaders("polar_whs_an_attackers_guess_01", "msg_probe", time.Now(), body)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		resp.Header.Del("Date")
		var b strings.Builder
		fmt.Fprintf(&b, "%s\n", resp.Status)
		if err := resp.Header.Write(&b); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(&b, resp.Body); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	got, want := answer(unconnected.WS), answer(connected.WS)
	if got != want {
		t.Errorf("an unconnected workspace's answer:\n%s\nwant a connected one's:\n%s", got, want)
	}
	if !strings.HasPrefix(want, "401 ") {
		t.Errorf("answer to a bad signature:\n%s\nwant 401", want)
	}
	// The operator's log says why, and whose endpoint it was.
	var line string
	for l := range strings.SplitSeq(sys.logs.String(), "\n") {
		if strings.Contains(l, "status=401") && strings.Contains(l, unconnected.WS) {
			line = l
		}
	}
	if !strings.Contains(line, "no webhook secret configured for this workspace") {
		t.Errorf("no log line of the unconnected workspace's 401 says it has no secret: %q", line)
	}
}
