package receiver_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/receiver"
	"github.com/relayhq/relay/spool"
)

func openSpool(t *testing.T, dir string, opts spool.Options) *spool.Spool {
	t.Helper()
	sp, err := spool.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return sp
}

// downPool is a pool whose every connection attempt is refused.
func downPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// spooledIDs drains sp without a database and returns the webhook ids it
// held, oldest first.
func spooledIDs(t *testing.T, sp *spool.Spool) []string {
	t.Helper()
	var ids []string
	for {
		n, err := sp.Drain(t.Context(), func(_ context.Context, events []*inbox.Event) error {
			for _, e := range events {
				ids = append(ids, e.WebhookID)
			}
			return nil
		}, 0)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return ids
		}
	}
}

func spoolStats(t *testing.T, sp *spool.Spool) spool.Stats {
	t.Helper()
	st, err := sp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// gatedSpool holds each append until release is closed, then appends to the
// real spool.
type gatedSpool struct {
	*spool.Spool
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func (g *gatedSpool) Append(ctx context.Context, e *inbox.Event) error {
	g.once.Do(func() { close(g.entered) })
	<-g.release
	return g.Spool.Append(ctx, e)
}

// With the database unreachable a verified delivery goes to the spool, and
// the answer, 200, waits for the append to be on disk.
func TestDatabaseDownSpoolsAndAnswersAfterTheAppend(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		sp := openSpool(t, t.TempDir(), spool.Options{})
		gate := &gatedSpool{Spool: sp, entered: make(chan struct{}), release: make(chan struct{})}
		h := newHarness(t, setup{perRequest: perRequest, pool: downPool(t),
			opts: receiver.Options{AckTimeout: 2 * time.Second, Spool: gate}})

		type answer struct {
			code int
			err  error
		}
		answered := make(chan answer, 1)
		go func() {
			code, err := testkit.Post(http.DefaultClient, h.srv.URL, secret, "msg_down", fixture(t, "order.paid.json"))
			answered <- answer{code, err}
		}()
		select {
		case <-gate.entered:
		case a := <-answered:
			t.Fatalf("answered %d (%v) without appending to the spool", a.code, a.err)
		case <-time.After(10 * time.Second):
			t.Fatal("no append within 10s")
		}
		// The append is held: no answer may come until it returns.
		select {
		case a := <-answered:
			t.Fatalf("answered %d (%v) while the append was still running", a.code, a.err)
		case <-time.After(200 * time.Millisecond):
		}
		close(gate.release)
		if a := <-answered; a.err != nil || a.code != http.StatusOK {
			t.Fatalf("answer = %d, %v; want 200", a.code, a.err)
		}
		if st := spoolStats(t, sp); st.Events != 1 {
			t.Fatalf("the spool holds %d events after the 200, want 1", st.Events)
		}
		if v := h.count(t, "order.paid", receiver.OutcomeSpooled); v != 1 {
			t.Errorf("spooled counter = %v, want 1", v)
		}
		if ids := spooledIDs(t, sp); len(ids) != 1 || ids[0] != "msg_down" {
			t.Errorf("spooled %v, want [msg_down]", ids)
		}
	})
}

// Once the spool is full, deliveries get 503 as they do without one, and
// every one answered 200 is in it.
func TestFullSpoolAnswers503(t *testing.T) {
	sp := openSpool(t, t.TempDir(), spool.Options{MaxBytes: 16 << 10})
	h := newHarness(t, setup{pool: downPool(t), opts: receiver.Options{Spool: sp}})
	body := fixture(t, "order.paid.json")
	var acked []string
	refused := 0
	for i := range 10 {
		id := fmt.Sprintf("msg_full_%d", i)
		switch code, _ := h.post(t, id, body, nil); code {
		case http.StatusOK:
			if refused > 0 {
				t.Fatalf("%s: 200 after a 503 with nothing drained", id)
			}
			acked = append(acked, id)
		case http.StatusServiceUnavailable:
			refused++
		default:
			t.Fatalf("%s: status %d", id, code)
		}
	}
	if len(acked) == 0 || refused == 0 {
		t.Fatalf("%d spooled, %d refused: want the 16 KiB spool to take some of ten 3.6 KB events and refuse the rest", len(acked), refused)
	}
	if st := spoolStats(t, sp); st.Events != int64(len(acked)) || st.Bytes > st.MaxBytes {
		t.Fatalf("spool stats %+v after %d acknowledgements", st, len(acked))
	}
	if v := h.count(t, "order.paid", receiver.OutcomeUnavailable); v != float64(refused) {
		t.Errorf("unavailable counter = %v, want %d", v, refused)
	}
	if ids := spooledIDs(t, sp); strings.Join(ids, ",") != strings.Join(acked, ",") {
		t.Errorf("spooled %v, acknowledged %v", ids, acked)
	}
}

// A disk that fails the spool's write gets 503, never 200: the test mounts a
// small tmpfs (it needs root, as CI has) and fills it.
func TestSpoolDiskErrorAnswers503(t *testing.T) {
	dir, err := testkit.Tmpfs(t, "512k")
	if err != nil {
		t.Skipf("cannot mount a tmpfs to fill (%v): this test needs root", err)
	}
	sp := openSpool(t, dir, spool.Options{})
	h := newHarness(t, setup{pool: downPool(t), opts: receiver.Options{Spool: sp}})
	body := []byte(`{"type":"order.paid","data":{"pad":"` + strings.Repeat("x", 100<<10) + `"}}`)
	var acked []string
	refused := 0
	for i := 0; i < 20 && refused == 0; i++ {
		id := fmt.Sprintf("msg_disk_%d", i)
		switch code, _ := h.post(t, id, body, nil); code {
		case http.StatusOK:
			acked = append(acked, id)
		case http.StatusServiceUnavailable:
			refused++
		default:
			t.Fatalf("%s: status %d", id, code)
		}
	}
	if refused == 0 {
		t.Fatalf("20 appends of 100 KiB fit on a 512 KiB disk")
	}
	if st := spoolStats(t, sp); st.Events != int64(len(acked)) {
		t.Fatalf("spool stats %+v after %d acknowledgements", st, len(acked))
	}
	if ids := spooledIDs(t, sp); strings.Join(ids, ",") != strings.Join(acked, ",") {
		t.Fatalf("spooled %v, acknowledged %v", ids, acked)
	}
	t.Logf("%d acknowledged before the disk filled", len(acked))
}

// Deliveries spooled while the inbox could not be written, one of them
// twice and one also redelivered once the database works again, are each
// stored once, with one job, by the drain.
func TestSpooledAndRedeliveredAreStoredOnce(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		sp := openSpool(t, t.TempDir(), spool.Options{})
		h := newHarness(t, setup{perRequest: perRequest, opts: receiver.Options{Spool: sp}})
		ctx := context.Background()
		if _, err := h.pool.Exec(ctx, `ALTER TABLE webhook_inbox RENAME TO webhook_inbox_away`); err != nil {
			t.Fatal(err)
		}
		body := fixture(t, "order.paid.json")
		for _, id := range []string{"msg_a", "msg_a", "msg_b"} {
			if code, _ := h.post(t, id, body, nil); code != http.StatusOK {
				t.Fatalf("%s while the inbox is away: status %d, want 200 from the spool", id, code)
			}
		}
		if v := h.count(t, "order.paid", receiver.OutcomeSpooled); v != 3 {
			t.Fatalf("spooled counter = %v, want 3", v)
		}
		if _, err := h.pool.Exec(ctx, `ALTER TABLE webhook_inbox_away RENAME TO webhook_inbox`); err != nil {
			t.Fatal(err)
		}
		if code, _ := h.post(t, "msg_b", body, nil); code != http.StatusOK {
			t.Fatalf("msg_b redelivered: status %d", code)
		}
		if v := h.count(t, "order.paid", receiver.OutcomeAccepted); v != 1 {
			t.Fatalf("accepted counter = %v, want 1 (msg_b straight into the inbox)", v)
		}

		n, err := sp.Drain(ctx, h.rc.CommitEvents, 0)
		if err != nil || n != 3 {
			t.Fatalf("drain = %d, %v; want the 3 spooled", n, err)
		}
		for _, id := range []string{"msg_a", "msg_b"} {
			if got := h.stored(t, id); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
				t.Errorf("%s: stored = %+v, want one row and one job", id, got)
			}
		}
		if rows, jobs := h.totals(t); rows != 2 || jobs != 2 {
			t.Errorf("%d rows, %d job events; want 2 of each", rows, jobs)
		}
		if st := spoolStats(t, sp); st.Events != 0 {
			t.Errorf("%d events left in the spool", st.Events)
		}
	})
}

// A store slower than the ack timeout is spooled, and answered just after
// the timeout; the abandoned transaction and the drain together store the
// delivery once.
func TestSlowDatabaseSpoolsWithinAckTimeout(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		const ackTimeout = 400 * time.Millisecond
		sp := openSpool(t, t.TempDir(), spool.Options{})
		h := newHarness(t, setup{perRequest: perRequest, opts: receiver.Options{AckTimeout: ackTimeout, Spool: sp}})
		if code := h.postIntoLockedInbox(t, "msg_slow", ackTimeout); code != http.StatusOK {
			t.Fatalf("status = %d, want 200 from the spool", code)
		}
		if n, err := sp.Drain(context.Background(), h.rc.CommitEvents, 0); err != nil || n != 1 {
			t.Fatalf("drain = %d, %v; want 1", n, err)
		}
		if got := h.stored(t, "msg_slow"); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
			t.Fatalf("stored = %+v, want one row and one job", got)
		}
	})
}

// An event the database refuses for what it holds is not spooled: the drain
// would be refused too. It gets 503; its neighbours are stored directly.
func TestRefusedEventIsNotSpooled(t *testing.T) {
	sp := openSpool(t, t.TempDir(), spool.Options{})
	h := newHarness(t, setup{opts: receiver.Options{Spool: sp}})
	h.poison(t)
	body := fixture(t, "order.paid.json")
	if code, _ := h.post(t, "msg_poison", body, nil); code != http.StatusServiceUnavailable {
		t.Fatalf("refused event: status %d, want 503", code)
	}
	if code, _ := h.post(t, "msg_fine", body, nil); code != http.StatusOK {
		t.Fatalf("fine event: status %d, want 200", code)
	}
	if st := spoolStats(t, sp); st.Events != 0 {
		t.Fatalf("the spool holds %d events, want none", st.Events)
	}
	if got := h.stored(t, "msg_fine"); got.rows != 1 || got.jobs != 1 {
		t.Fatalf("msg_fine stored = %+v", got)
	}
}

// The drain's commit (CommitEvents) tells a refusal from a failure: spooled
// deliveries the database refuses for what they hold are set aside and the
// rest are stored, each with its job, while an inbox the database cannot
// write (the table away) or a database that is down stops the drain with
// nothing set aside. A refused delivery set aside is stored by a retry once
// the database takes it.
func TestDrainSetsAsideWhatTheDatabaseRefuses(t *testing.T) {
	dir := t.TempDir()
	sp := openSpool(t, dir, spool.Options{})
	h := newHarness(t, setup{opts: receiver.Options{Spool: sp}})
	ctx := context.Background()
	body := fixture(t, "order.paid.json")
	for _, id := range []string{"msg_a", "msg_poison", "msg_b"} {
		e := &inbox.Event{WebhookID: id, EventType: "order.paid", Status: inbox.StatusPending, WebhookTimestamp: time.Now(), Body: body}
		if err := sp.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	h.poison(t)

	down := newHarness(t, setup{pool: downPool(t)})
	if n, err := sp.Drain(ctx, down.rc.CommitEvents, 0); err == nil || n != 0 {
		t.Fatalf("drain with the database down = %d, %v; want an error", n, err)
	}
	if _, err := h.pool.Exec(ctx, `ALTER TABLE webhook_inbox RENAME TO webhook_inbox_away`); err != nil {
		t.Fatal(err)
	}
	if n, err := sp.Drain(ctx, h.rc.CommitEvents, 0); err == nil || n != 0 {
		t.Fatalf("drain with the inbox away = %d, %v; want an error", n, err)
	}
	if _, err := h.pool.Exec(ctx, `ALTER TABLE webhook_inbox_away RENAME TO webhook_inbox`); err != nil {
		t.Fatal(err)
	}
	if st := spoolStats(t, sp); st.Events != 3 || st.SetAside != 0 {
		t.Fatalf("after failed drains: %+v, want 3 spooled and none set aside", st)
	}

	if n, err := sp.Drain(ctx, h.rc.CommitEvents, 0); err != nil || n != 3 {
		t.Fatalf("drain = %d, %v; want the 3 out of the spool", n, err)
	}
	for _, id := range []string{"msg_a", "msg_b"} {
		if got := h.stored(t, id); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
			t.Errorf("%s: stored = %+v, want one row and one job", id, got)
		}
	}
	aside, err := spool.SetAside(dir)
	if err != nil || len(aside) != 1 || aside[0].WebhookID != "msg_poison" || !strings.Contains(aside[0].Reason, "poisoned row") {
		t.Fatalf("set aside: %+v, %v; want msg_poison, refused as a poisoned row", aside, err)
	}
	if st := spoolStats(t, sp); st.Events != 0 || st.SetAside != 1 {
		t.Fatalf("stats %+v, want none spooled, 1 set aside", st)
	}

	if _, err := h.pool.Exec(ctx, `DROP TRIGGER poison ON webhook_inbox`); err != nil {
		t.Fatal(err)
	}
	ev, err := aside[0].Event()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.rc.CommitEvents(ctx, []*inbox.Event{ev}); err != nil {
		t.Fatalf("retry: %v", err)
	}
	if got := h.stored(t, "msg_poison"); got != (stored{rows: 1, jobs: 1, status: "pending"}) {
		t.Errorf("msg_poison retried: stored = %+v, want one row and one job", got)
	}
}

// A client that hangs up while its webhook waits for the database is not
// a database failure: nothing is spooled, nothing counted unavailable; the
// request is logged and counted as client_gone, and Polar's retry brings
// the webhook again.
func TestClientGoneIsNotSpooled(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		sp := openSpool(t, t.TempDir(), spool.Options{})
		logs := &testkit.SyncBuffer{}
		h := newHarness(t, setup{perRequest: perRequest, logs: logs, opts: receiver.Options{Spool: sp}})
		ctx := context.Background()
		locker, err := h.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer locker.Rollback(ctx) //nolint:errcheck // released at the end
		if _, err := locker.Exec(ctx, "LOCK TABLE webhook_inbox IN ACCESS EXCLUSIVE MODE"); err != nil {
			t.Fatal(err)
		}

		body := fixture(t, "order.paid.json")
		hangUp, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		req, err := http.NewRequestWithContext(hangUp, http.MethodPost, h.srv.URL, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range polar.SignedHeaders(secret, "msg_gone", time.Now(), body) {
			req.Header[k] = v
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("answered %d before the client hung up", resp.StatusCode)
		}
		deadline := time.Now().Add(10 * time.Second)
		for h.count(t, "order.paid", receiver.OutcomeClientGone)+h.count(t, "order.paid", receiver.OutcomeSpooled)+
			h.count(t, "order.paid", receiver.OutcomeUnavailable) == 0 {
			if time.Now().After(deadline) {
				t.Fatal("the request was not counted within 10s of the client hanging up")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if gone, spooled := h.count(t, "order.paid", receiver.OutcomeClientGone), h.count(t, "order.paid", receiver.OutcomeSpooled); gone != 1 || spooled != 0 {
			t.Errorf("counted %v client_gone and %v spooled, want 1 and 0", gone, spooled)
		}
		if st := spoolStats(t, sp); st.Events != 0 {
			t.Errorf("the spool holds %d events, want none", st.Events)
		}
		if log := logs.String(); !strings.Contains(log, "outcome=client_gone") || !strings.Contains(log, "client gone") {
			t.Errorf("want the request logged as client_gone:\n%s", log)
		}
	})
}

// With the database down and the spool's disk stalled (HoldWrites stands
// for an fsync that does not return), a delivery waits for the spool's
// timeout and gets 503; once the spool is stalled, deliveries get 503 at
// once instead of each adding a write that waits. Default timeouts.
func TestStalledSpoolAnswers503AtOnce(t *testing.T) {
	sp := openSpool(t, t.TempDir(), spool.Options{})
	release, err := sp.HoldWrites()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release) // before the spool closes
	h := newHarness(t, setup{pool: downPool(t), opts: receiver.Options{Spool: sp}})
	body := fixture(t, "order.paid.json")

	if code, _ := h.post(t, "msg_waits", body, nil); code != http.StatusServiceUnavailable {
		t.Fatalf("first delivery to a stalled spool: %d, want 503", code)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !sp.Stalled() {
		if time.Now().After(deadline) {
			t.Fatal("the spool does not say it is stalled")
		}
		time.Sleep(10 * time.Millisecond)
	}
	start := time.Now()
	for i := range 20 {
		if code, _ := h.post(t, fmt.Sprintf("msg_stalled_%d", i), body, nil); code != http.StatusServiceUnavailable {
			t.Fatalf("delivery to a stalled spool: %d, want 503", code)
		}
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("20 deliveries to a stalled spool took %s, want 503 at once (the spool's timeout is 2s)", took)
	}
	if n := sp.Appending(); n != 1 {
		t.Errorf("%d appends writing, want the first one only", n)
	}
	release()
	for sp.Appending() > 0 { // the held write finishes
		if time.Now().After(deadline) {
			t.Fatal("the held write did not finish once the disk returned")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _ := h.post(t, "msg_after", body, nil); code != http.StatusOK {
		t.Fatalf("delivery once the disk returned: %d, want 200 from the spool", code)
	}
}
