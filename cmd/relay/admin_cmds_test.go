package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
)

const (
	testSecret   = "polar_whs_admin_test"
	testToken    = "admin-token-0123456789abcdef"
	testUser     = "ops"
	testPassword = "correct horse battery staple"
)

// relayProc is relay serve running in-process against its own database.
type relayProc struct {
	env   map[string]string
	pool  *pgxpool.Pool
	admin string // base URL of the admin listener
	hook  string // webhook URL
	logs  *testkit.SyncBuffer
}

func startRelay(t *testing.T, extra map[string]string) *relayProc {
	t.Helper()
	dbURL := extra["DATABASE_URL"] // a second replica on the same database
	if dbURL == "" {
		dbURL = testdb.New(t)
	}
	env := map[string]string{
		"DATABASE_URL":         dbURL,
		"POLAR_WEBHOOK_SECRET": testSecret,
		"RELAY_HTTP_ADDR":      testkit.FreeAddr(t),
		"RELAY_ADMIN_ADDR":     testkit.FreeAddr(t),
		"LOG_FORMAT":           "text",
		// One attempt: a paid order whose session is missing is discarded
		// at once, ready for an operator to retry.
		"RELAY_MAX_ATTEMPTS": "1",
	}
	for k, v := range extra {
		env[k] = v
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)

	ctx, stop := context.WithCancel(context.Background())
	p := &relayProc{env: env, pool: pool, logs: &testkit.SyncBuffer{},
		admin: "http://" + env["RELAY_ADMIN_ADDR"], hook: "http://" + env["RELAY_HTTP_ADDR"] + "/webhooks/polar"}
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, envFunc(env), p.logs) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("serve did not stop within 30s")
		}
	})
	waitFor(t, done, p.admin+"/readyz")
	return p
}

// cli runs a relay command the way a script would.
func (p *relayProc) cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := run(context.Background(), args, envFunc(p.env), &out)
	return out.String(), err
}

// discarded delivers a paid order for a shop whose session does not exist
// yet, waits for its job to be discarded, then writes the session.
func (p *relayProc) discarded(t *testing.T, webhookID string) (testkit.Shop, int64) {
	t.Helper()
	s := testkit.SeedShop(t, p.pool, testkit.ShopOptions{LateSession: true})
	deliver(t, p.hook, testSecret, webhookID, testkit.Event(t, "order.updated.paid.json", s.Sale("ord_"+webhookID), nil))
	id := waitJob(t, p.pool, webhookID, "discarded")
	if status, n := shopState(t, p.pool, s); status != "absent" || n != 0 {
		t.Fatalf("before the session exists: session %s, %d bookings", status, n)
	}
	s.OpenSession(t, p.pool)
	return s, id
}

// processedOnce checks the retried job completed on its second attempt and
// the order was booked exactly once.
func (p *relayProc) processedOnce(t *testing.T, s testkit.Shop, webhookID string, jobID int64) {
	t.Helper()
	if got := waitJob(t, p.pool, webhookID, "completed"); got != jobID {
		t.Fatalf("completed job of %s is %d, want the retried %d", webhookID, got, jobID)
	}
	var attempt, jobs int
	if err := p.pool.QueryRow(context.Background(), `SELECT max(attempt), count(*) FROM river_job WHERE args->>'webhook_id' = $1`, webhookID).Scan(&attempt, &jobs); err != nil {
		t.Fatal(err)
	}
	if attempt != 2 || jobs != 1 {
		t.Errorf("%s: %d job(s), attempt %d; want one job on its second attempt", webhookID, jobs, attempt)
	}
	if status, n := shopState(t, p.pool, s); status != "completed" || n != 1 {
		t.Errorf("%s after retry: session %s with %d bookings, want completed with exactly 1", webhookID, status, n)
	}
}

// insertJob writes a polar_event job for webhookID in the given state, as
// River would have left it; an unfinished one is due in an hour, so that no
// worker takes it meanwhile.
func insertJob(t *testing.T, pool *pgxpool.Pool, webhookID, state string) int64 {
	t.Helper()
	var id int64
	err := pool.QueryRow(context.Background(), `INSERT INTO river_job
			(kind, args, state, attempt, attempted_at, scheduled_at, finalized_at, max_attempts, queue, priority)
		VALUES ('polar_event', jsonb_build_object('webhook_id', $1::text, 'event_type', 'order.paid'), $2::river_job_state,
			1, now(), now() + interval '1 hour', CASE WHEN $2 IN ('completed', 'discarded', 'cancelled') THEN now() END, 1, 'default', 1)
		RETURNING id`, webhookID, state).Scan(&id)
	if err != nil {
		t.Fatalf("insert %s job: %v", state, err)
	}
	return id
}

// jobState returns the job's state, or "absent".
func jobState(t *testing.T, pool *pgxpool.Pool, id int64) string {
	t.Helper()
	var state string
	if err := pool.QueryRow(context.Background(), `SELECT coalesce((SELECT state::text FROM river_job WHERE id = $1), 'absent')`, id).Scan(&state); err != nil {
		t.Fatal(err)
	}
	return state
}

// rowLockWaiters counts the statements in the test's database that wait
// for a row lock taken FOR UPDATE.
func rowLockWaiters(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%FOR UPDATE%'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// waitLockWait polls until a session of this database waits in a SELECT ...
// FOR UPDATE for a lock another transaction holds.
func waitLockWait(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if rowLockWaiters(t, pool) > 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no session waited for the job's row lock within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestAdminRetryReplayAndAuth(t *testing.T) {
	p := startRelay(t, map[string]string{
		"RELAY_ADMIN_TOKEN": testToken, "RELAY_ADMIN_USER": testUser, "RELAY_ADMIN_PASSWORD": testPassword,
	})

	t.Run("every admin route refuses missing or wrong credentials", func(t *testing.T) {
		routes := []struct{ method, path, body string }{
			{"GET", "/admin/api/jobs", ""},
			{"POST", "/admin/api/jobs/1/retry", ""},
			{"POST", "/admin/api/jobs/1/cancel", ""},
			{"DELETE", "/admin/api/jobs/1", ""},
			{"GET", "/admin/api/inbox", ""},
			{"GET", "/admin/api/inbox/msg_x", ""},
			{"POST", "/admin/api/inbox/msg_x/replay", ""},
			{"GET", "/admin/api/nonexistent", ""},
			{"GET", "/riverui/", ""},
			{"GET", "/riverui/jobs", ""},
			{"GET", "/riverui/api/jobs", ""},
			{"POST", "/riverui/api/jobs/retry", `{"ids":["1"]}`},
		}
		auths := map[string]func(*http.Request){
			"none":                nil,
			"wrong token":         bearer(testToken + "x"),
			"token prefix":        bearer(testToken[:10]),
			"wrong password":      basic(testUser, testPassword+"x"),
			"wrong user":          basic("root", testPassword),
			"token as basic pass": basic(testUser, testToken),
			"password as token":   bearer(testPassword),
		}
		for _, r := range routes {
			for name, auth := range auths {
				code, body, hdr := doReq(t, r.method, p.admin+r.path, auth, r.body)
				challenge := strings.Join(hdr.Values("WWW-Authenticate"), ", ")
				if code != http.StatusUnauthorized || !strings.Contains(challenge, "Basic") {
					t.Errorf("%s %s with %s credentials: %d (WWW-Authenticate %q), want 401 with a challenge; %s", r.method, r.path, name, code, challenge, body)
				}
			}
		}
		// The right credentials get through, both ways.
		for name, auth := range map[string]func(*http.Request){"token": bearer(testToken), "basic": basic(testUser, testPassword)} {
			for _, path := range []string{"/admin/api/jobs", "/riverui/", "/riverui/api/jobs?state=available"} {
				if code, body, _ := doReq(t, "GET", p.admin+path, auth, ""); code != http.StatusOK {
					t.Errorf("GET %s with the %s: %d %s", path, name, code, body)
				}
			}
		}
		for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
			if code, _, _ := doReq(t, "GET", p.admin+path, nil, ""); code != http.StatusOK {
				t.Errorf("GET %s without credentials: %d, want 200", path, code)
			}
		}
	})

	t.Run("retry with the CLI", func(t *testing.T) {
		s, id := p.discarded(t, "msg_cli")
		out, err := p.cli(t, "jobs", "list", "--state", "discarded")
		if err != nil || !strings.Contains(out, strconv.FormatInt(id, 10)) || !strings.Contains(out, "msg_cli") || !strings.Contains(out, "1/1") {
			t.Fatalf("jobs list: %v\n%s", err, out)
		}
		out, err = p.cli(t, "jobs", "retry", strconv.FormatInt(id, 10))
		if err != nil || !strings.Contains(out, fmt.Sprintf("retried job %d", id)) {
			t.Fatalf("jobs retry: %v\n%s", err, out)
		}
		p.processedOnce(t, s, "msg_cli", id)
	})

	t.Run("retry with the admin API", func(t *testing.T) {
		s, id := p.discarded(t, "msg_api")
		code, body, _ := doReq(t, "GET", p.admin+"/admin/api/jobs?state=discarded&kind=polar_event&limit=10", bearer(testToken), "")
		var list struct{ Jobs []struct{ ID int64 } }
		if err := json.Unmarshal([]byte(body), &list); code != http.StatusOK || err != nil || len(list.Jobs) != 1 || list.Jobs[0].ID != id {
			t.Fatalf("list discarded: %d %s", code, body)
		}
		code, body, _ = doReq(t, "POST", fmt.Sprintf("%s/admin/api/jobs/%d/retry", p.admin, id), bearer(testToken), "")
		if code != http.StatusOK || !strings.Contains(body, `"state": "available"`) {
			t.Fatalf("retry: %d %s", code, body)
		}
		p.processedOnce(t, s, "msg_api", id)
	})

	t.Run("retry with River UI's API", func(t *testing.T) {
		s, id := p.discarded(t, "msg_ui")
		code, body, _ := doReq(t, "POST", p.admin+"/riverui/api/jobs/retry", basic(testUser, testPassword), fmt.Sprintf(`{"ids":["%d"]}`, id))
		if code != http.StatusOK {
			t.Fatalf("River UI retry: %d %s", code, body)
		}
		p.processedOnce(t, s, "msg_ui", id)
	})

	t.Run("bulk retry of discarded jobs", func(t *testing.T) {
		s1, id1 := p.discarded(t, "msg_bulk1")
		s2, id2 := p.discarded(t, "msg_bulk2")
		out, err := p.cli(t, "jobs", "retry", "--state", "discarded", "--since", "1h", "--dry-run")
		if err != nil || !strings.Contains(out, "would retry 2 job(s)") {
			t.Fatalf("dry run: %v\n%s", err, out)
		}
		out, err = p.cli(t, "jobs", "retry", "--state", "discarded", "--since", "1h")
		if err != nil || !strings.Contains(out, "retried 2 job(s)") {
			t.Fatalf("bulk retry: %v\n%s", err, out)
		}
		p.processedOnce(t, s1, "msg_bulk1", id1)
		p.processedOnce(t, s2, "msg_bulk2", id2)
	})

	t.Run("admin API errors", func(t *testing.T) {
		for _, c := range []struct {
			method, path string
			want         int
			msg, allow   string // the error says msg; a 405 names the allowed methods
		}{
			{"POST", "/admin/api/jobs/999999/retry", http.StatusNotFound, "job 999999 not found", ""},
			{"POST", "/admin/api/jobs/999999/cancel", http.StatusNotFound, "job 999999 not found", ""},
			{"DELETE", "/admin/api/jobs/999999", http.StatusNotFound, "job 999999 not found", ""},
			{"POST", "/admin/api/jobs/abc/retry", http.StatusBadRequest, "not a positive integer", ""},
			{"DELETE", "/admin/api/jobs/abc", http.StatusBadRequest, "not a positive integer", ""},
			{"GET", "/admin/api/jobs?state=dead", http.StatusBadRequest, "unknown job state", ""},
			{"GET", "/admin/api/jobs?limit=0x", http.StatusBadRequest, "not a whole number", ""},
			{"GET", "/admin/api/jobs?limit=100000", http.StatusBadRequest, "want 1 to", ""},
			{"GET", "/admin/api/inbox?status=lost", http.StatusBadRequest, "unknown inbox status", ""},
			{"GET", "/admin/api/inbox/msg_unknown", http.StatusNotFound, `webhook "msg_unknown" not found`, ""},
			{"POST", "/admin/api/inbox/msg_unknown/replay", http.StatusNotFound, `webhook "msg_unknown" not found`, ""},
			{"GET", "/admin/api/nonexistent", http.StatusNotFound, "no such admin route", ""},
			{"DELETE", "/admin/api/nonexistent", http.StatusNotFound, "no such admin route", ""},
			// A known route asked with another method.
			{"GET", "/admin/api/jobs/1/retry", http.StatusMethodNotAllowed, "GET is not allowed", "POST"},
			{"DELETE", "/admin/api/jobs/1/cancel", http.StatusMethodNotAllowed, "DELETE is not allowed", "POST"},
			{"GET", "/admin/api/jobs/1", http.StatusMethodNotAllowed, "GET is not allowed", "DELETE"},
			{"POST", "/admin/api/jobs", http.StatusMethodNotAllowed, "POST is not allowed", "GET, HEAD"},
			{"DELETE", "/admin/api/inbox/msg_x", http.StatusMethodNotAllowed, "DELETE is not allowed", "GET, HEAD"},
			{"GET", "/admin/api/inbox/msg_x/replay", http.StatusMethodNotAllowed, "GET is not allowed", "POST"},
		} {
			code, body, hdr := doReq(t, c.method, p.admin+c.path, bearer(testToken), "")
			var e struct{ Error string }
			if code != c.want || json.Unmarshal([]byte(body), &e) != nil || !strings.Contains(e.Error, c.msg) {
				t.Errorf("%s %s: %d %s, want %d with a JSON error saying %q", c.method, c.path, code, body, c.want, c.msg)
			}
			if strings.Contains(e.Error, "not found: not found") {
				t.Errorf("%s %s: error %q says it twice", c.method, c.path, e.Error)
			}
			if got := hdr.Get("Allow"); got != c.allow {
				t.Errorf("%s %s: Allow %q, want %q", c.method, c.path, got, c.allow)
			}
		}
	})

	t.Run("inbox show masks, replay stays exactly-once", func(t *testing.T) {
		pii := []string{"Sam Shopper", "shopper@example.com", "1 Harbour St", "Sydney"}
		out, err := p.cli(t, "inbox", "show", "msg_cli")
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range pii {
			if strings.Contains(out, s) {
				t.Errorf("inbox show prints %q:\n%s", s, out)
			}
		}
		for _, want := range []string{"msg_cli", "order.updated", "processed", `"***"`, `"total_amount": 4950`} {
			if !strings.Contains(out, want) {
				t.Errorf("inbox show lacks %q:\n%s", want, out)
			}
		}
		out, err = p.cli(t, "inbox", "show", "msg_cli", "--unmasked")
		if err != nil || !strings.Contains(out, "shopper@example.com") || !strings.Contains(out, "UNMASKED") {
			t.Errorf("inbox show --unmasked: %v\n%s", err, out)
		}
		code, body, _ := doReq(t, "GET", p.admin+"/admin/api/inbox/msg_cli", bearer(testToken), "")
		if code != http.StatusOK || !strings.Contains(body, `"masked": true`) || !strings.Contains(body, "msg_cli") {
			t.Errorf("API show: %d %s", code, body)
		}
		for _, s := range pii {
			if strings.Contains(body, s) {
				t.Errorf("API show returns %q", s)
			}
		}
		out, err = p.cli(t, "inbox", "list", "--status", "processed", "--type", "order.updated")
		if err != nil || !strings.Contains(out, "msg_cli") || !strings.Contains(out, "msg_api") {
			t.Errorf("inbox list: %v\n%s", err, out)
		}

		s := testkit.SeedShop(t, p.pool, testkit.ShopOptions{})
		deliver(t, p.hook, testSecret, "msg_replay", testkit.Event(t, "order.updated.paid.json", s.Sale("ord_replay"), nil))
		first := waitJob(t, p.pool, "msg_replay", "completed")
		out, err = p.cli(t, "inbox", "replay", "msg_replay")
		if err != nil || !strings.Contains(out, "replaying msg_replay as job") {
			t.Fatalf("inbox replay: %v\n%s", err, out)
		}
		second := waitJob(t, p.pool, "msg_replay", "completed")
		code, body, _ = doReq(t, "POST", p.admin+"/admin/api/inbox/msg_replay/replay", bearer(testToken), "")
		if code != http.StatusAccepted {
			t.Fatalf("API replay: %d %s", code, body)
		}
		third := waitJob(t, p.pool, "msg_replay", "completed")
		if first == second || second == third {
			t.Errorf("replays reused jobs: %d, %d, %d", first, second, third)
		}
		if status, n := shopState(t, p.pool, s); status != "completed" || n != 1 {
			t.Errorf("after two replays: session %s with %d bookings, want completed with exactly 1", status, n)
		}

		// Another endpoint (the shop's own, in production) stores the same
		// webhook id: show and replay must be told which one they mean.
		other := &inbox.Event{WebhookID: "msg_replay", EventType: "order.updated", Status: inbox.StatusProcessed,
			WebhookTimestamp: time.Now(), Body: testkit.Event(t, "order.updated.paid.json", s.Sale("ord_replay"), nil),
			WorkspaceID: s.WS, Environment: "production"}
		if _, err := inbox.Insert(t.Context(), p.pool, other); err != nil {
			t.Fatal(err)
		}
		if _, err := p.cli(t, "inbox", "show", "msg_replay"); err == nil || !strings.Contains(err.Error(), "several endpoints") ||
			!strings.Contains(err.Error(), "platform") || !strings.Contains(err.Error(), s.WS+"/production") {
			t.Errorf("inbox show of an id two endpoints stored: %v, want an error naming both", err)
		}
		out, err = p.cli(t, "inbox", "show", "--endpoint", strings.ToUpper(s.WS)+"/production", "msg_replay")
		if err != nil || !strings.Contains(out, "endpoint:     "+s.WS+"/production") {
			t.Errorf("inbox show --endpoint: %v\n%s", err, out)
		}
		if code, body, _ := doReq(t, "GET", p.admin+"/admin/api/inbox/msg_replay?endpoint=shop/production", bearer(testToken), ""); code != http.StatusNotFound {
			t.Errorf("API show at a workspace that is not a UUID: %d %s, want 404", code, body)
		}
		if code, body, _ := doReq(t, "GET", p.admin+"/admin/api/inbox/msg_replay?endpoint=shop", bearer(testToken), ""); code != http.StatusBadRequest {
			t.Errorf("API show at a malformed endpoint: %d %s, want 400", code, body)
		}
		if code, body, _ := doReq(t, "GET", p.admin+"/admin/api/inbox/msg_replay", bearer(testToken), ""); code != http.StatusConflict {
			t.Errorf("API show of an id two endpoints stored: %d %s, want 409", code, body)
		}
		if code, body, _ := doReq(t, "GET", p.admin+"/admin/api/inbox/msg_replay?endpoint=platform", bearer(testToken), ""); code != http.StatusOK ||
			!strings.Contains(body, `"endpoint": "platform"`) {
			t.Errorf("API show ?endpoint=platform: %d %s", code, body)
		}
		out, err = p.cli(t, "inbox", "list", "--type", "order.updated")
		if err != nil || !regexp.MustCompile(`msg_replay +`+s.WS+`/production `).MatchString(out) || !regexp.MustCompile(`msg_replay +platform `).MatchString(out) {
			t.Errorf("inbox list does not name both endpoints of msg_replay: %v\n%s", err, out)
		}
		if _, err := p.cli(t, "inbox", "replay", "msg_replay"); err == nil || !strings.Contains(err.Error(), "several endpoints") {
			t.Errorf("inbox replay of an id two endpoints stored: %v, want an error", err)
		}
		out, err = p.cli(t, "inbox", "replay", "--endpoint", s.WS+"/production", "msg_replay")
		if err != nil || !strings.Contains(out, "replaying msg_replay as job") {
			t.Fatalf("inbox replay --endpoint: %v\n%s", err, out)
		}
		var replayed jobs.EventArgs
		if err := p.pool.QueryRow(t.Context(), `SELECT args FROM river_job WHERE kind = 'polar_event' ORDER BY id DESC LIMIT 1`).Scan(&replayed); err != nil {
			t.Fatal(err)
		}
		if replayed.WorkspaceID != s.WS || replayed.Environment != "production" {
			t.Errorf("the replay's job = %+v, want the workspace's production endpoint's row", replayed)
		}

		// customer.created is stored but never acted on: nothing to replay.
		deliver(t, p.hook, testSecret, "msg_customer", []byte(`{"type":"customer.created","timestamp":"2026-11-20T10:00:00Z","data":{"id":"c1","email":"x@example.com"}}`))
		code, body, _ = doReq(t, "POST", p.admin+"/admin/api/inbox/msg_customer/replay", bearer(testToken), "")
		if code != http.StatusConflict {
			t.Errorf("API replay of an ignored type: %d %s, want 409", code, body)
		}
		if _, err := p.cli(t, "inbox", "replay", "msg_customer"); err == nil || !strings.Contains(err.Error(), "does not act on") {
			t.Errorf("CLI replay of an ignored type: %v, want an error", err)
		}
	})

	t.Run("cancel", func(t *testing.T) {
		id := insertJob(t, p.pool, "msg_later", "scheduled")
		out, err := p.cli(t, "jobs", "cancel", strconv.FormatInt(id, 10), "999999")
		if err == nil || err.Error() != "job 999999 not found" || !strings.Contains(out, fmt.Sprintf("cancelled job %d (polar_event msg_later): now cancelled", id)) {
			t.Fatalf("jobs cancel: %v (want \"job 999999 not found\" for the unknown id)\n%s", err, out)
		}
		waitJob(t, p.pool, "msg_later", "cancelled")
	})

	t.Run("retry, cancel and delete refuse what the job's state rules out", func(t *testing.T) {
		done := insertJob(t, p.pool, "msg_done", "completed")
		running := insertJob(t, p.pool, "msg_running", "running")
		later := insertJob(t, p.pool, "msg_sched", "scheduled")
		dead := insertJob(t, p.pool, "msg_dead", "discarded")
		gone := insertJob(t, p.pool, "msg_gone", "cancelled")
		states := map[int64]string{done: "completed", running: "running", later: "scheduled", dead: "discarded", gone: "cancelled"}
		n := func(id int64) string { return strconv.FormatInt(id, 10) }
		for _, c := range []struct {
			args []string
			err  string
		}{
			{[]string{"jobs", "retry", n(done)}, fmt.Sprintf("job %d already completed, not retried; to apply its event again, replay its webhook: relay inbox replay msg_done", done)},
			{[]string{"jobs", "retry", n(running)}, fmt.Sprintf("job %d is running; it cannot be retried before it finishes", running)},
			{[]string{"jobs", "cancel", n(done)}, fmt.Sprintf("job %d already completed, nothing to cancel", done)},
			{[]string{"jobs", "cancel", n(dead)}, fmt.Sprintf("job %d already discarded, nothing to cancel", dead)},
			{[]string{"jobs", "cancel", n(gone)}, fmt.Sprintf("job %d already cancelled, nothing to cancel", gone)},
			{[]string{"jobs", "delete", n(running)}, fmt.Sprintf("job %d is running; it cannot be deleted (cancel it, or wait for it to finish)", running)},
			{[]string{"jobs", "delete", n(later)}, fmt.Sprintf("job %d is scheduled and would still run; cancel it before deleting it", later)},
			{[]string{"jobs", "retry", "999999"}, "job 999999 not found"},
			{[]string{"jobs", "delete", "999999"}, "job 999999 not found"},
			{[]string{"jobs", "retry", "--state", "completed"}, "bad request: completed jobs are not retried; replay their webhooks (relay inbox replay)"},
			{[]string{"jobs", "retry", "--state", "discarded,running"}, "bad request: running jobs cannot be retried"},
			{[]string{"jobs", "delete", "--state", "discarded,scheduled"}, "bad request: scheduled jobs would still run and are not deleted; cancel them first"},
		} {
			out, err := p.cli(t, c.args...)
			if err == nil || err.Error() != c.err || out != "" {
				t.Errorf("relay %v: error %v, printed %q; want exactly the error %q", c.args, err, out, c.err)
			}
		}
		api := []struct{ method, path, err string }{
			{"POST", fmt.Sprintf("/admin/api/jobs/%d/retry", done), "already completed, not retried"},
			{"POST", fmt.Sprintf("/admin/api/jobs/%d/cancel", dead), "already discarded, nothing to cancel"},
			{"DELETE", fmt.Sprintf("/admin/api/jobs/%d", later), "would still run"},
			{"DELETE", fmt.Sprintf("/admin/api/jobs/%d", running), "is running"},
		}
		for _, c := range api {
			code, body, _ := doReq(t, c.method, p.admin+c.path, bearer(testToken), "")
			if code != http.StatusConflict || !strings.Contains(body, c.err) {
				t.Errorf("%s %s: %d %s, want 409 saying %q", c.method, c.path, code, body, c.err)
			}
		}
		for id, want := range states {
			if got := jobState(t, p.pool, id); got != want {
				t.Errorf("job %d is %s after the refusals, want it left %s", id, got, want)
			}
		}

		// What the states allow: a running job is asked to stop, a finished
		// one can be deleted, an unfinished one once it is cancelled.
		out, err := p.cli(t, "jobs", "cancel", n(running))
		if err != nil || !strings.Contains(out, fmt.Sprintf("cancel requested for job %d (polar_event msg_running): it is running", running)) {
			t.Errorf("cancel a running job: %v\n%s", err, out)
		}
		for _, c := range [][]string{{"delete", n(dead)}, {"cancel", n(later)}, {"delete", n(later)}} {
			if out, err := p.cli(t, append([]string{"jobs"}, c...)...); err != nil {
				t.Errorf("jobs %v: %v\n%s", c, err, out)
			}
		}
		for _, id := range []int64{dead, later} {
			if got := jobState(t, p.pool, id); got != "absent" {
				t.Errorf("job %d is %s, want it deleted", id, got)
			}
		}
	})

	t.Run("a job that finishes meanwhile is neither retried over nor said to be cancelled", func(t *testing.T) {
		for _, sub := range []string{"retry", "cancel"} {
			id := insertJob(t, p.pool, "msg_race_"+sub, "scheduled")
			ctx := context.Background()
			tx, err := p.pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// As a worker completing the job does, hold its row until commit.
			if _, err := tx.Exec(ctx, `UPDATE river_job SET state = 'completed', finalized_at = now() WHERE id = $1`, id); err != nil {
				t.Fatal(err)
			}
			type result struct {
				out string
				err error
			}
			res := make(chan result, 1)
			go func() {
				var out bytes.Buffer
				err := run(ctx, []string{"jobs", sub, strconv.FormatInt(id, 10)}, envFunc(p.env), &out)
				res <- result{out.String(), err}
			}()
			waitLockWait(t, p.pool)
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			var r result
			select {
			case r = <-res:
			case <-time.After(30 * time.Second):
				t.Fatalf("jobs %s did not return within 30s of the commit", sub)
			}
			if r.err == nil || !strings.Contains(r.err.Error(), fmt.Sprintf("job %d already completed", id)) {
				t.Errorf("jobs %s of a job completed meanwhile: error %v, printed %q; want \"already completed\"", sub, r.err, r.out)
			}
			if got := jobState(t, p.pool, id); got != "completed" {
				t.Errorf("jobs %s of a job completed meanwhile left it %s, want completed", sub, got)
			}
		}
	})

	t.Run("delete acknowledges dead jobs handled by other means", func(t *testing.T) {
		s, id := p.discarded(t, "msg_del_cli")
		out, err := p.cli(t, "jobs", "delete", strconv.FormatInt(id, 10))
		if err != nil || !strings.Contains(out, fmt.Sprintf("deleted job %d (polar_event msg_del_cli): was discarded", id)) {
			t.Fatalf("jobs delete: %v\n%s", err, out)
		}
		if got := jobState(t, p.pool, id); got != "absent" {
			t.Fatalf("deleted job %d is %s", id, got)
		}
		// The stored webhook stays: replaying it still books the sale, once.
		if out, err := p.cli(t, "inbox", "replay", "msg_del_cli"); err != nil {
			t.Fatalf("replay after delete: %v\n%s", err, out)
		}
		waitJob(t, p.pool, "msg_del_cli", "completed")
		if status, n := shopState(t, p.pool, s); status != "completed" || n != 1 {
			t.Errorf("replay after delete: session %s with %d bookings, want completed with exactly 1", status, n)
		}

		_, id = p.discarded(t, "msg_del_api")
		path := fmt.Sprintf("%s/admin/api/jobs/%d", p.admin, id)
		code, body, _ := doReq(t, "DELETE", path, bearer(testToken), "")
		if code != http.StatusOK || !strings.Contains(body, `"state": "discarded"`) || !strings.Contains(body, "msg_del_api") {
			t.Fatalf("API delete: %d %s", code, body)
		}
		if code, body, _ = doReq(t, "DELETE", path, bearer(testToken), ""); code != http.StatusNotFound || !strings.Contains(body, fmt.Sprintf("job %d not found", id)) {
			t.Errorf("API delete again: %d %s, want 404", code, body)
		}

		_, id1 := p.discarded(t, "msg_del_bulk1")
		_, id2 := p.discarded(t, "msg_del_bulk2")
		out, err = p.cli(t, "jobs", "delete", "--state", "discarded", "--since", "1h", "--dry-run")
		if err != nil || !strings.Contains(out, "would delete 2 job(s)") || jobState(t, p.pool, id1) != "discarded" {
			t.Fatalf("dry run: %v\n%s", err, out)
		}
		out, err = p.cli(t, "jobs", "delete", "--state", "discarded", "--since", "1h")
		if err != nil || !strings.Contains(out, "deleted 2 job(s)") {
			t.Fatalf("bulk delete: %v\n%s", err, out)
		}
		for _, id := range []int64{id1, id2} {
			if got := jobState(t, p.pool, id); got != "absent" {
				t.Errorf("job %d is %s after the bulk delete", id, got)
			}
		}
	})

	for _, s := range []string{"Sam Shopper", "shopper@example.com", "x@example.com", testToken, testPassword} {
		if strings.Contains(p.logs.String(), s) {
			t.Errorf("logs contain %q", s)
		}
	}
}

func TestAdminRoutesAbsentWithoutCredentials(t *testing.T) {
	p := startRelay(t, nil)
	for _, path := range []string{"/admin/api/jobs", "/admin/api/inbox", "/riverui/", "/riverui/api/jobs"} {
		if code, _, _ := doReq(t, "GET", p.admin+path, bearer(testToken), ""); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404 when no admin credentials are configured", path, code)
		}
	}
	if code, _, _ := doReq(t, "POST", p.admin+"/admin/api/jobs/1/retry", nil, ""); code != http.StatusNotFound {
		t.Errorf("POST retry: %d, want 404", code)
	}
	for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
		if code, _, _ := doReq(t, "GET", p.admin+path, nil, ""); code != http.StatusOK {
			t.Errorf("GET %s: %d, want 200", path, code)
		}
	}
	if !strings.Contains(p.logs.String(), "admin API and River UI are disabled") {
		t.Errorf("serve did not warn that the admin routes are off:\n%s", p.logs.String())
	}
}

func TestAdminConfig(t *testing.T) {
	for name, env := range map[string]map[string]string{
		"user without password": {"RELAY_ADMIN_USER": "ops"},
		"short token":           {"RELAY_ADMIN_TOKEN": "short"},
		"bad retention":         {"RELAY_INBOX_RETENTION": "30d"},
	} {
		env["DATABASE_URL"] = "postgres://x"
		if _, err := parseConfig(envFunc(env), false); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	cfg, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x"}), false)
	if err != nil || cfg.InboxRetention != 720*time.Hour {
		t.Errorf("default retention: %v, %v", cfg, err)
	}
	for _, args := range [][]string{{"jobs"}, {"jobs", "retry"}, {"jobs", "retry", "1", "--state", "discarded"}, {"jobs", "cancel"},
		{"jobs", "delete"}, {"jobs", "delete", "1", "--state", "discarded"}, {"jobs", "delete", "1", "--dry-run"},
		{"jobs", "list", "--state", "dead"}, {"inbox", "show"}, {"inbox", "replay"}, {"inbox", "frob"}} {
		var out bytes.Buffer
		if err := run(context.Background(), args, envFunc(nil), &out); err == nil {
			t.Errorf("relay %v: no error", args)
		}
	}
}
