package receiver_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/receiver"
)

const secret = "polar_whs_test_secret_0123456789"

type harness struct {
	pool    *pgxpool.Pool
	rc      *receiver.Receiver
	srv     *httptest.Server
	reg     *prometheus.Registry
	secrets []string
}

type setup struct {
	opts       receiver.Options
	perRequest bool // one transaction per request instead of group commit
	secrets    []string
	inserter   func(river.JobArgs) error // fails the job insert after River made it
	pool       *pgxpool.Pool
	logs       io.Writer // the receiver's log, as text; default discarded
}

func newHarness(t *testing.T, s setup) *harness {
	t.Helper()
	pool := s.pool
	if pool == nil {
		pool = testdb.NewPool(t)
	}
	if s.secrets == nil {
		s.secrets = []string{secret}
	}
	verifier, err := polar.NewVerifier(s.secrets)
	if err != nil {
		t.Fatal(err)
	}
	// An insert-only River client: jobs stay in river_job for the test to see.
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics, err := receiver.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	var inserter jobs.Inserter = client
	if s.inserter != nil {
		inserter = failingInserter{client, s.inserter}
	}
	logs := s.logs
	if logs == nil {
		logs = io.Discard
	}
	if testing.Verbose() {
		logs = io.MultiWriter(logs, os.Stderr)
	}
	s.opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	s.opts.GroupCommit = !s.perRequest
	rc := receiver.New(pool, inserter, verifier, metrics, s.opts)
	t.Cleanup(rc.Close)
	srv := httptest.NewServer(rc)
	t.Cleanup(srv.Close)
	return &harness{rc: rc, pool: pool, srv: srv, reg: reg, secrets: s.secrets}
}

// bothModes runs a test with group commit and with a transaction per request.
func bothModes(t *testing.T, test func(t *testing.T, perRequest bool)) {
	t.Run("group commit", func(t *testing.T) { test(t, false) })
	t.Run("per request", func(t *testing.T) { test(t, true) })
}

type failingInserter struct {
	*river.Client[pgx.Tx]
	after func(river.JobArgs) error
}

func (f failingInserter) InsertManyTx(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error) {
	res, err := f.Client.InsertManyTx(ctx, tx, params)
	if err != nil {
		return nil, err
	}
	return res, f.after(params[0].Args)
}

func (f failingInserter) InsertTx(ctx context.Context, tx pgx.Tx, args river.JobArgs, opts *river.InsertOpts) (*rivertype.JobInsertResult, error) {
	res, err := f.Client.InsertTx(ctx, tx, args, opts)
	if err != nil {
		return nil, err
	}
	return res, f.after(args)
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("../testdata/events/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// post sends body with headers signed by secret at ts, after edit may change them.
func (h *harness) post(t *testing.T, id string, body []byte, edit func(*http.Request)) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range polar.SignedHeaders(secret, id, time.Now(), body) {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", "application/json")
	if edit != nil {
		edit(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("post: %v", err) // not Fatal: tests post from goroutines
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

type stored struct {
	rows, jobs int
	status     string
}

func (h *harness) stored(t *testing.T, id string) stored {
	t.Helper()
	ctx := context.Background()
	var s stored
	if err := h.pool.QueryRow(ctx, `SELECT count(*), coalesce(max(status), '') FROM webhook_inbox WHERE webhook_id = $1`, id).Scan(&s.rows, &s.status); err != nil {
		t.Fatal(err)
	}
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM river_job
		WHERE `+inbox.Carries("args", testkit.WebhookKey), id).Scan(&s.jobs); err != nil {
		t.Fatal(err)
	}
	return s
}

// totals counts inbox rows and the events jobs carry.
func (h *harness) totals(t *testing.T) (rows, jobs int) {
	t.Helper()
	ctx := context.Background()
	if err := h.pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	return rows, testkit.EnqueuedEvents(t, h.pool)
}

func TestAcceptedEventStoresRowAndJob(t *testing.T) {
	h := newHarness(t, setup{})
	body := fixture(t, "order.updated.paid.json")
	code, _ := h.post(t, "msg_paid_1", body, nil)
	if code != http.StatusOK {
		t.Fatalf("status = %d, want 200", code)
	}
	if got := h.stored(t, "msg_paid_1"); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
		t.Fatalf("stored = %+v, want one pending row and one job", got)
	}

	var (
		raw       []byte
		eventType string
		hookTS    time.Time
		jobID     *int64
		jobKind   string
	)
	err := h.pool.QueryRow(context.Background(), `
		SELECT i.body, i.event_type, i.webhook_timestamp, j.id, j.kind
		FROM webhook_inbox i JOIN river_job j ON j.args->>'webhook_id' = i.webhook_id
		WHERE i.webhook_id = 'msg_paid_1'`).
		Scan(&raw, &eventType, &hookTS, &jobID, &jobKind)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(raw, body) {
		t.Error("stored body differs from the bytes sent")
	}
	if eventType != "order.updated" || jobKind != "polar_event" || jobID == nil {
		t.Errorf("event_type=%q kind=%q job_id=%v", eventType, jobKind, jobID)
	}
	stored, err := inbox.Get(context.Background(), h.pool, "msg_paid_1", "")
	if err != nil {
		t.Fatal(err)
	}
	if stored.JobID == nil || jobID == nil || *stored.JobID != *jobID {
		t.Errorf("inbox row %d names job %v; the job for its webhook id is %v", stored.ID, stored.JobID, jobID)
	}
	if time.Since(hookTS) > time.Minute {
		t.Errorf("webhook_timestamp %v is not the header's", hookTS)
	}
	if v := h.count(t, "order.updated", receiver.OutcomeAccepted); v != 1 {
		t.Errorf("accepted counter = %v, want 1", v)
	}
}

// count reads relay_webhooks_received_total{event_type, outcome}.
func (h *harness) count(t *testing.T, eventType, outcome string) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "relay_webhooks_received_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["event_type"] == eventType && labels["outcome"] == outcome {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestIgnoredAndInvalidEventsAreStoredWithoutJob(t *testing.T) {
	h := newHarness(t, setup{})
	cases := []struct {
		name, id, status, label, outcome string
		body                             []byte
	}{
		{"other type", "msg_cust", "ignored", "customer.created", receiver.OutcomeIgnored, fixture(t, "customer.created.json")},
		{"unknown type", "msg_unknown", "ignored", "other", receiver.OutcomeIgnored, []byte(`{"type":"made.up","data":{}}`)},
		{"not json", "msg_notjson", "invalid", "other", receiver.OutcomeInvalid, []byte("this is not json")},
		{"no type", "msg_notype", "invalid", "other", receiver.OutcomeInvalid, []byte(`{"data":{}}`)},
		{"not utf-8", "msg_binary", "invalid", "other", receiver.OutcomeInvalid, []byte{0xff, 0xfe, 0x00, 0x01}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if code, _ := h.post(t, tc.id, tc.body, nil); code != http.StatusOK {
				t.Fatalf("status = %d, want 200", code)
			}
			if got := h.stored(t, tc.id); got != (stored{rows: 1, jobs: 0, status: tc.status}) {
				t.Fatalf("stored = %+v, want one %s row and no job", got, tc.status)
			}
		})
	}
	if v := h.count(t, "other", receiver.OutcomeInvalid); v != 3 {
		t.Errorf("invalid counter = %v, want 3", v)
	}
	if v := h.count(t, "customer.created", receiver.OutcomeIgnored); v != 1 {
		t.Errorf("ignored counter = %v, want 1", v)
	}
}

func TestDuplicateDeliveryIsAcknowledgedOnce(t *testing.T) {
	h := newHarness(t, setup{})
	body := fixture(t, "order.paid.json")
	for i := range 3 {
		if code, _ := h.post(t, "msg_dup", body, nil); code != http.StatusOK {
			t.Fatalf("delivery %d: status = %d, want 200", i, code)
		}
	}
	if got := h.stored(t, "msg_dup"); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
		t.Fatalf("stored = %+v, want one row and one job", got)
	}
	if v := h.count(t, "order.paid", receiver.OutcomeDuplicate); v != 2 {
		t.Errorf("duplicate counter = %v, want 2", v)
	}
}

func TestConcurrentDuplicatesStoreOnce(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		h := newHarness(t, setup{perRequest: perRequest})
		body := fixture(t, "order.updated.paid.json")
		const n = 50
		codes := make([]int, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				codes[i], _ = h.post(t, "msg_storm", body, nil)
			})
		}
		close(start)
		wg.Wait()
		for i, c := range codes {
			if c != http.StatusOK {
				t.Errorf("request %d: status = %d, want 200", i, c)
			}
		}
		if got := h.stored(t, "msg_storm"); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
			t.Fatalf("stored = %+v, want one row and one job", got)
		}
		accepted := h.count(t, "order.updated", receiver.OutcomeAccepted)
		dups := h.count(t, "order.updated", receiver.OutcomeDuplicate)
		if accepted != 1 || dups != n-1 {
			t.Errorf("accepted=%v duplicates=%v, want 1 and %d", accepted, dups, n-1)
		}
	})
}

func TestRejectedRequestsStoreNothing(t *testing.T) {
	h := newHarness(t, setup{opts: receiver.Options{MaxBodyBytes: 8 << 10}})
	body := fixture(t, "order.paid.json")
	resign := func(key string, ts time.Time) func(*http.Request) {
		return func(r *http.Request) {
			id := r.Header.Get(polar.HeaderID)
			r.Header.Set(polar.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
			r.Header.Set(polar.HeaderSignature, polar.Sign(key, id, ts, body))
		}
	}
	cases := []struct {
		name   string
		body   []byte
		edit   func(*http.Request)
		status int
		reason string
	}{
		{"missing webhook-id", body, func(r *http.Request) { r.Header.Del(polar.HeaderID) }, 401, "missing webhook headers"},
		{"missing timestamp", body, func(r *http.Request) { r.Header.Del(polar.HeaderTimestamp) }, 401, "missing webhook headers"},
		{"missing signature", body, func(r *http.Request) { r.Header.Del(polar.HeaderSignature) }, 401, "missing webhook headers"},
		{"malformed timestamp", body, func(r *http.Request) { r.Header.Set(polar.HeaderTimestamp, "soon") }, 401, "malformed webhook headers"},
		{"bad signature", body, func(r *http.Request) {
			r.Header.Set(polar.HeaderSignature, "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
		}, 401, "no matching signature"},
		{"wrong version tag", body, func(r *http.Request) {
			r.Header.Set(polar.HeaderSignature, strings.Replace(r.Header.Get(polar.HeaderSignature), "v1,", "v2,", 1))
		}, 401, "no matching signature"},
		{"tampered body", bytes.Replace(body, []byte("4950"), []byte("9950"), 1), nil, 401, "no matching signature"},
		{"unknown secret", body, resign("polar_whs_someone_else", time.Now()), 401, "no matching signature"},
		{"timestamp too old", body, resign(secret, time.Now().Add(-6*time.Minute)), 401, "webhook timestamp too old"},
		{"timestamp too new", body, resign(secret, time.Now().Add(6*time.Minute)), 401, "webhook timestamp too new"},
		{"body over limit", bytes.Repeat([]byte("x"), 9<<10), nil, 413, "body too large"},
		{"chunked body over limit", bytes.Repeat([]byte("x"), 9<<10), func(r *http.Request) {
			r.ContentLength = -1 // sent chunked: the limit holds without a declared length
		}, 413, "body too large"},
		{"GET", nil, func(r *http.Request) { r.Method = http.MethodGet }, 405, "method not allowed"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.body
			edit := tc.edit
			if tc.name == "tampered body" {
				// signed over the original, sent with a changed amount
				edit = func(r *http.Request) {
					r.Header.Set(polar.HeaderSignature, polar.Sign(secret, r.Header.Get(polar.HeaderID), time.Now(), body))
				}
			}
			code, reason := h.post(t, fmt.Sprintf("msg_reject_%d", i), b, edit)
			if code != tc.status || reason != tc.reason {
				t.Fatalf("answer = %d %q, want %d %q", code, reason, tc.status, tc.reason)
			}
		})
	}
	if rows, jobs := h.totals(t); rows != 0 || jobs != 0 {
		t.Fatalf("stored %d rows and %d jobs, want none", rows, jobs)
	}
	if v := h.count(t, "unverified", receiver.OutcomeUnauthorized); v != 10 {
		t.Errorf("unauthorized counter = %v, want 10", v)
	}
}

func TestPolarSecretConventionAndRotation(t *testing.T) {
	polarNew := "whsec_" + strings.Repeat("Ab3", 14) + "x" // 43 alphanumerics: not base64
	stdSecret := "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  // a true Standard Webhooks secret
	h := newHarness(t, setup{secrets: []string{"polar_whs_old_secret", polarNew, stdSecret}})
	body := fixture(t, "order.created.pending.json")

	sign := func(key []byte) func(*http.Request) {
		return func(r *http.Request) {
			id, ts := r.Header.Get(polar.HeaderID), time.Now()
			r.Header.Set(polar.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
			r.Header.Set(polar.HeaderSignature, polar.Sign(string(key), id, ts, body))
		}
	}
	keys := polar.Keys(stdSecret)
	if len(keys) != 2 {
		t.Fatalf("Keys(%q) = %d keys, want the raw and the decoded one", stdSecret, len(keys))
	}
	cases := map[string]func(*http.Request){
		"old polar_whs_ secret":                 sign([]byte("polar_whs_old_secret")),
		"rotated whsec_ secret, UTF-8 bytes":    sign([]byte(polarNew)),
		"standard webhooks secret, decoded key": sign(keys[1]),
		"several signatures, one matches": func(r *http.Request) {
			sign([]byte(polarNew))(r)
			r.Header.Set(polar.HeaderSignature, "v1,bm90IGl0 "+r.Header.Get(polar.HeaderSignature))
		},
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			id := "msg_" + strings.ReplaceAll(name, " ", "_")
			if code, reason := h.post(t, id, body, edit); code != http.StatusOK {
				t.Fatalf("answer = %d %q, want 200", code, reason)
			}
			if got := h.stored(t, id); got.rows != 1 || got.jobs != 1 {
				t.Fatalf("stored = %+v", got)
			}
		})
	}
	// The decoded form of a Polar whsec_ secret is not a key: it is not base64.
	if len(polar.Keys(polarNew)) != 1 {
		t.Errorf("Keys(%q) decoded a non-base64 secret", polarNew)
	}
}

func TestInboxRowAndJobCommitOrRollBackTogether(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		boom := errors.New("job store broke after the insert")
		h := newHarness(t, setup{perRequest: perRequest, inserter: func(river.JobArgs) error { return boom }})
		code, reason := h.post(t, "msg_atomic", fixture(t, "order.paid.json"), nil)
		if code != http.StatusServiceUnavailable || reason != "temporarily unavailable" {
			t.Fatalf("answer = %d %q, want 503", code, reason)
		}
		if rows, jobs := h.totals(t); rows != 0 || jobs != 0 {
			t.Fatalf("after a failed job insert: %d rows, %d jobs; want none of either", rows, jobs)
		}

		// The same delivery, retried by Polar against a healthy store, commits both.
		ok := newHarness(t, setup{perRequest: perRequest, pool: h.pool})
		if code, _ := ok.post(t, "msg_atomic", fixture(t, "order.paid.json"), nil); code != http.StatusOK {
			t.Fatalf("retry: status = %d, want 200", code)
		}
		if got := ok.stored(t, "msg_atomic"); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
			t.Fatalf("retry stored = %+v", got)
		}
	})
}

func TestDatabaseDownAnswers503(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		h := newHarness(t, setup{perRequest: perRequest, pool: pool, opts: receiver.Options{AckTimeout: 2 * time.Second}})
		start := time.Now()
		code, reason := h.post(t, "msg_down", fixture(t, "order.paid.json"), nil)
		if code != http.StatusServiceUnavailable || reason != "temporarily unavailable" {
			t.Fatalf("answer = %d %q, want 503", code, reason)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("503 took %v, want within the ack timeout", d)
		}
	})
}

func TestSlowDatabaseAnswers503WithinAckTimeout(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		const ackTimeout = 400 * time.Millisecond
		h := newHarness(t, setup{perRequest: perRequest, opts: receiver.Options{AckTimeout: ackTimeout}})
		if code := h.postIntoLockedInbox(t, "msg_slow", ackTimeout); code != http.StatusServiceUnavailable {
			t.Fatalf("status = %d, want 503", code)
		}
		// The abandoned transaction must not have committed once the lock was gone.
		if rows, jobs := h.totals(t); rows != 0 || jobs != 0 {
			t.Fatalf("after a timed-out store: %d rows, %d jobs; want none", rows, jobs)
		}
	})
}

// postIntoLockedInbox posts a delivery while the inbox table is locked, as
// in a stalled database, so that its store waits out ackTimeout; checks that
// the answer came just after it; releases the lock and waits up to 5 s for
// the abandoned transaction to end. It returns the answer's status.
func (h *harness) postIntoLockedInbox(t *testing.T, id string, ackTimeout time.Duration) int {
	t.Helper()
	ctx := context.Background()
	locker, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := locker.Exec(ctx, "LOCK TABLE webhook_inbox IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	code, _ := h.post(t, id, fixture(t, "order.paid.json"), nil)
	elapsed := time.Since(start)
	if err := locker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if elapsed < ackTimeout || elapsed > ackTimeout+time.Second {
		t.Errorf("answered after %v, want just after the %v ack timeout", elapsed, ackTimeout)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.pool.Stat().AcquiredConns() > 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	return code
}

func TestAllowedCIDRs(t *testing.T) {
	h := newHarness(t, setup{opts: receiver.Options{
		AllowedCIDRs:   []netip.Prefix{netip.MustParsePrefix("74.220.50.0/24")},
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
	}})
	body := fixture(t, "order.paid.json")
	xff := func(v string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Set("X-Forwarded-For", v) }
	}
	if code, _ := h.post(t, "msg_cidr_1", body, nil); code != http.StatusForbidden {
		t.Errorf("from loopback without X-Forwarded-For: %d, want 403", code)
	}
	if code, _ := h.post(t, "msg_cidr_2", body, xff("8.8.8.8")); code != http.StatusForbidden {
		t.Errorf("from a forwarded outside address: %d, want 403", code)
	}
	if code, _ := h.post(t, "msg_cidr_3", body, xff("74.220.50.7, 8.8.8.8")); code != http.StatusForbidden {
		t.Errorf("with a forged left-most hop: %d, want 403", code)
	}
	if code, _ := h.post(t, "msg_cidr_4", body, xff("8.8.8.8, 74.220.50.7")); code != http.StatusOK {
		t.Errorf("from Polar's range through the trusted proxy: %d, want 200", code)
	}
	if rows, _ := h.totals(t); rows != 1 {
		t.Errorf("stored %d rows, want only the allowed one", rows)
	}

	untrusted := newHarness(t, setup{pool: h.pool, opts: receiver.Options{
		AllowedCIDRs: []netip.Prefix{netip.MustParsePrefix("74.220.50.0/24")},
	}})
	if code, _ := untrusted.post(t, "msg_cidr_5", body, xff("74.220.50.7")); code != http.StatusForbidden {
		t.Errorf("X-Forwarded-For from an untrusted peer was believed: %d, want 403", code)
	}
}

// poison makes the database refuse the inbox row of msg_poison, as it would
// a row that breaks a constraint.
func (h *harness) poison(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if _, err := h.pool.Exec(ctx, `
		CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'poisoned row'; END $$;
		CREATE TRIGGER poison BEFORE INSERT ON webhook_inbox
			FOR EACH ROW WHEN (NEW.webhook_id = 'msg_poison') EXECUTE FUNCTION poison();`); err != nil {
		t.Fatal(err)
	}
}

// TestGroupCommitIsolatesABadRow makes a bad row share a transaction with
// good ones, for certain: the one committer is held on a table lock while
// the other requests queue behind it, so that they are committed as one
// batch. That batch fails; its events are retried one by one, the bad one
// alone answered 503.
func TestGroupCommitIsolatesABadRow(t *testing.T) {
	logs := &testkit.SyncBuffer{}
	h := newHarness(t, setup{opts: receiver.Options{Committers: 1, MaxBatch: 64}, logs: logs})
	h.poison(t)
	ctx := context.Background()
	lock, err := h.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(ctx) //nolint:errcheck // released below
	if _, err := lock.Exec(ctx, `LOCK TABLE webhook_inbox IN SHARE MODE`); err != nil {
		t.Fatal(err)
	}

	body := fixture(t, "order.paid.json")
	const n = 40 // the one held on the lock, then a batch of n-1 with the bad row in it
	codes := make(map[string]int)
	var mu sync.Mutex
	var wg sync.WaitGroup
	post := func(id string) {
		wg.Go(func() {
			code, _ := h.post(t, id, body, nil)
			mu.Lock()
			codes[id] = code
			mu.Unlock()
		})
	}
	post("msg_batch_lead")
	testkit.Within(t, 10*time.Second, "the committer waits on the lock", func() bool {
		var waiting int
		err := h.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting)
		return err == nil && waiting == 1
	})
	for i := range n - 1 {
		id := fmt.Sprintf("msg_batch_%d", i)
		if i == n/2 {
			id = "msg_poison"
		}
		post(id)
	}
	testkit.Within(t, 10*time.Second, "the other requests queue", func() bool { return receiver.QueuedStores(h.rc) == n-1 })
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	wg.Wait()

	for id, code := range codes {
		want := http.StatusOK
		if id == "msg_poison" {
			want = http.StatusServiceUnavailable
		}
		if code != want {
			t.Errorf("%s: status %d, want %d", id, code, want)
		}
	}
	if rows, jobs := h.totals(t); rows != n-1 || jobs != n-1 {
		t.Errorf("stored %d rows and %d jobs, want %d of each", rows, jobs, n-1)
	}
	// The batch of n-1 failed together, then each good event was committed
	// in a transaction of its own.
	if want := fmt.Sprintf("group commit failed, retrying its events one by one\" events=%d", n-1); !strings.Contains(logs.String(), want) {
		t.Errorf("the bad row did not fail a shared batch: no %q in the log:\n%s", want, logs.String())
	}
	var txs int
	if err := h.pool.QueryRow(ctx, `SELECT count(DISTINCT xmin::text) FROM webhook_inbox WHERE webhook_id <> 'msg_batch_lead'`).Scan(&txs); err != nil {
		t.Fatal(err)
	}
	if txs != n-2 {
		t.Errorf("the batch's %d good rows were committed in %d transactions, want one each", n-2, txs)
	}
	// The failed transactions gave their connections back.
	if acquired := h.pool.Stat().AcquiredConns(); acquired != 0 {
		t.Errorf("%d connections still acquired", acquired)
	}
}

func TestGroupCommitSharesTransactions(t *testing.T) {
	h := newHarness(t, setup{opts: receiver.Options{Committers: 1, MaxBatch: 128}})
	body := fixture(t, "order.paid.json")
	const n = 60
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			if code, _ := h.post(t, fmt.Sprintf("msg_shared_%d", i), body, nil); code != http.StatusOK {
				t.Errorf("status %d, want 200", code)
			}
		})
	}
	close(start)
	wg.Wait()
	// Rows committed together share their transaction's xmin.
	var rows, txs int
	if err := h.pool.QueryRow(context.Background(), `SELECT count(*), count(DISTINCT xmin::text) FROM webhook_inbox`).Scan(&rows, &txs); err != nil {
		t.Fatal(err)
	}
	if rows != n || txs >= n {
		t.Errorf("%d rows in %d transactions, want %d rows in fewer transactions", rows, txs, n)
	}
	t.Logf("%d rows committed in %d transactions", rows, txs)
}

func TestMalformedWebhookIDIsRejected(t *testing.T) {
	h := newHarness(t, setup{})
	long := strings.Repeat("x", 300)
	if code, reason := h.post(t, long, fixture(t, "order.paid.json"), nil); code != http.StatusBadRequest || reason != "malformed webhook-id" {
		t.Fatalf("answer = %d %q, want 400", code, reason)
	}
	if rows, _ := h.totals(t); rows != 0 {
		t.Fatalf("stored %d rows, want none", rows)
	}
}

// TestBadInputClasses covers the bad-input classes of docs/reliability.md
// that the table tests above do not.
func TestBadInputClasses(t *testing.T) {
	h := newHarness(t, setup{})
	paid := fixture(t, "order.paid.json")
	deep := []byte(`{"type":"order.paid","data":` + strings.Repeat("[", 20000) + strings.Repeat("]", 20000) + `}`)
	cases := []struct {
		name, id string
		body     []byte
		edit     func(*http.Request)
		status   int
		stored   string // inbox status, "" for nothing stored
	}{
		{"malformed signature header", "msg_bad_sig", paid, func(r *http.Request) { r.Header.Set(polar.HeaderSignature, "garbage") }, 401, ""},
		{"signature for a truncated body", "msg_truncated", paid[:len(paid)/2], func(r *http.Request) {
			r.Header.Set(polar.HeaderSignature, polar.Sign(secret, "msg_truncated", time.Now(), paid))
		}, 401, ""},
		{"deeply nested JSON", "msg_deep", deep, nil, 200, "invalid"},
		{"duplicate keys: the last wins", "msg_dupkeys", []byte(`{"type":"customer.created","type":"order.paid","data":{}}`), nil, 200, "pending"},
		{"wrong content type", "msg_ctype", paid, func(r *http.Request) { r.Header.Set("Content-Type", "text/plain") }, 200, "pending"},
		{"NUL in the event type", "msg_nul", []byte(`{"type":"order.paid\u0000x","data":{}}`), nil, 200, "ignored"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			edit := tc.edit
			code, reason := h.post(t, tc.id, tc.body, edit)
			if code != tc.status {
				t.Fatalf("answer = %d %q, want %d", code, reason, tc.status)
			}
			got := h.stored(t, tc.id)
			if tc.stored == "" && got.rows != 0 || tc.stored != "" && (got.rows != 1 || got.status != tc.stored) {
				t.Fatalf("stored = %+v, want %q", got, tc.stored)
			}
		})
	}

	// A captured valid request replayed later: within tolerance it is a
	// duplicate (nothing new); past it, refused.
	ts := time.Now().Add(-4 * time.Minute)
	replay := func(r *http.Request) {
		r.Header.Set(polar.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
		r.Header.Set(polar.HeaderSignature, polar.Sign(secret, "msg_replayed", ts, paid))
	}
	for range 2 {
		if code, _ := h.post(t, "msg_replayed", paid, replay); code != http.StatusOK {
			t.Fatalf("replay within tolerance: %d, want 200", code)
		}
	}
	if got := h.stored(t, "msg_replayed"); got.rows != 1 || got.jobs != 1 {
		t.Fatalf("replayed request stored %+v, want one row and one job", got)
	}
	ts = time.Now().Add(-6 * time.Minute)
	if code, _ := h.post(t, "msg_replayed_late", paid, func(r *http.Request) {
		r.Header.Set(polar.HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
		r.Header.Set(polar.HeaderSignature, polar.Sign(secret, "msg_replayed_late", ts, paid))
	}); code != http.StatusUnauthorized {
		t.Fatalf("replay past tolerance: %d, want 401", code)
	}
}

// TestBadInputLeavesNothingBehind sends a few hundred bad requests of every
// kind: afterwards no goroutine of theirs may remain and the heap must be
// back near where it was.
func TestBadInputLeavesNothingBehind(t *testing.T) {
	h := newHarness(t, setup{opts: receiver.Options{MaxBodyBytes: 4 << 10}})
	client := &http.Client{Transport: &http.Transport{}}
	paid := fixture(t, "order.paid.json")
	bad := []func(*http.Request){
		func(r *http.Request) { r.Header.Del(polar.HeaderSignature) },
		func(r *http.Request) { r.Header.Set(polar.HeaderSignature, "v1,garbage") },
		func(r *http.Request) { r.Header.Set(polar.HeaderTimestamp, "0") },
		func(r *http.Request) { r.Method = http.MethodPut },
		func(r *http.Request) {
			r.Body = io.NopCloser(bytes.NewReader(bytes.Repeat([]byte("x"), 8<<10)))
			r.ContentLength = -1
		},
	}
	send := func(i int) {
		req, _ := http.NewRequest(http.MethodPost, h.srv.URL, bytes.NewReader(paid))
		for k, v := range polar.SignedHeaders(secret, fmt.Sprintf("msg_leak_%d", i), time.Now(), paid) {
			req.Header[k] = v
		}
		bad[i%len(bad)](req)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatalf("request %d: status %d, want an error", i, resp.StatusCode)
		}
	}
	send(0) // warm up what stays: the server's and client's connection goroutines
	client.CloseIdleConnections()
	h.srv.CloseClientConnections()
	settle := func() (int, uint64) {
		var m runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&m)
		return runtime.NumGoroutine(), m.HeapAlloc
	}
	waitGoroutines := func(limit int) int {
		deadline := time.Now().Add(5 * time.Second)
		for {
			n, _ := settle()
			if n <= limit || time.Now().After(deadline) {
				return n
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	// The count settles as the closed connections' goroutines exit.
	baseGoroutines, _ := settle()
	for range 100 {
		time.Sleep(10 * time.Millisecond)
		n, _ := settle()
		if n == baseGoroutines {
			break
		}
		baseGoroutines = n
	}
	_, baseHeap := settle()

	for i := range 500 {
		send(i)
	}
	client.CloseIdleConnections()
	h.srv.CloseClientConnections()
	if n := waitGoroutines(baseGoroutines); n > baseGoroutines {
		t.Errorf("%d goroutines after 500 bad requests, %d before", n, baseGoroutines)
	}
	if _, heap := settle(); heap > baseHeap+8<<20 {
		t.Errorf("heap grew from %d to %d bytes over 500 bad requests", baseHeap, heap)
	}
	if rows, _ := h.totals(t); rows != 0 {
		t.Errorf("stored %d rows, want none", rows)
	}
}
