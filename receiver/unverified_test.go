package receiver_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/receiver"
)

// trickler is a connection that announced a body and sends it a byte at a
// time, as someone holding memory on the webhook endpoint would.
type trickler struct {
	conn net.Conn
}

// startTrickle opens a connection to url, sends the headers of a POST
// announcing contentLength bytes, then the body's first byte.
func startTrickle(t *testing.T, url string, contentLength int) *trickler {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if _, err := fmt.Fprintf(conn, "POST / HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nwebhook-id: msg_trickle\r\nContent-Length: %d\r\n\r\n{", contentLength); err != nil {
		t.Fatal(err)
	}
	return &trickler{conn: conn}
}

func (tr *trickler) send(t *testing.T, b byte) {
	t.Helper()
	if _, err := tr.conn.Write([]byte{b}); err != nil {
		t.Fatalf("trickle: %v", err)
	}
}

// answer reads the response the server sent before the body was complete.
func (tr *trickler) answer(t *testing.T) *http.Response {
	t.Helper()
	tr.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(tr.conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body was complete: %v", err)
	}
	return resp
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// liveHeap is the heap's live bytes after two collections (the second
// frees what sync.Pools kept through the first).
func liveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// TestTricklingBodiesHoldWhatTheySent opens hundreds of connections that
// announce a body of RELAY_MAX_BODY_BYTES and trickle it, with the default
// settings: the heap grows by what they sent (and the server's own
// per-connection buffers), not by the megabyte each announced, and a signed
// delivery is still stored meanwhile. Hanging up gives their share of the
// unverified budget back.
func TestTricklingBodiesHoldWhatTheySent(t *testing.T) {
	h := newHarness(t, setup{})
	paid := fixture(t, "order.paid.json")
	if code, _ := h.post(t, "msg_before_trickle", paid, nil); code != http.StatusOK {
		t.Fatalf("status %d, want 200", code)
	}
	http.DefaultClient.CloseIdleConnections()
	base := liveHeap()

	const n = 300
	tricklers := make([]*trickler, n)
	for i := range tricklers {
		tricklers[i] = startTrickle(t, h.srv.URL, 1<<20)
	}
	testkit.Within(t, 10*time.Second, fmt.Sprintf("%d requests read their body", n), func() bool {
		requests, _ := receiver.Unverified(h.rc)
		return requests == n
	})
	for _, tr := range tricklers {
		tr.send(t, '"')
	}
	// Each holds its first 4 KiB chunk; the server's buffers for its
	// connection are about as much again. Announced, they would hold 300 MiB.
	const perConnection = 32 << 10
	if grown := int64(liveHeap()) - int64(base); grown > n*perConnection {
		t.Errorf("the heap grew by %d KiB with %d connections trickling a 1 MiB body, want under %d KiB (%d KiB each)",
			grown>>10, n, n*perConnection>>10, perConnection>>10)
	} else {
		t.Logf("the heap grew by %d KiB with %d connections trickling (%d bytes each)", grown>>10, n, grown/n)
	}

	if code, body := h.post(t, "msg_during_trickle", paid, nil); code != http.StatusOK {
		t.Fatalf("a signed delivery among %d trickling connections: %d %q, want 200", n, code, body)
	}
	if got := h.stored(t, "msg_during_trickle"); got.rows != 1 || got.jobs != 1 {
		t.Fatalf("stored %+v, want one row and one job", got)
	}
	if requests, _ := receiver.Unverified(h.rc); requests != n {
		t.Fatalf("%d requests hold the budget after the delivery, want the %d trickling", requests, n)
	}

	for _, tr := range tricklers {
		tr.conn.Close()
	}
	testkit.Within(t, 10*time.Second, "the trickling requests give their budget back", func() bool {
		requests, bytes := receiver.Unverified(h.rc)
		return requests == 0 && bytes == 0
	})
}

// TestUnverifiedBudgetRefusesPastIt fills a budget shortened to 16 requests'
// shares (the default admits 1,024): past it every request gets the same
// 503 with Retry-After, a signed one as an anonymous one, and is counted;
// a body that would grow past it is refused too; refusals are warnings in
// the log; once a share is given back a delivery is stored again.
func TestUnverifiedBudgetRefusesPastIt(t *testing.T) {
	const shares = 16
	logs := &testkit.SyncBuffer{}
	h := newHarness(t, setup{opts: receiver.Options{MaxUnverifiedBytes: shares * 64 << 10}, logs: logs})
	paid := fixture(t, "order.paid.json")

	tricklers := make([]*trickler, shares-1)
	for i := range tricklers {
		tricklers[i] = startTrickle(t, h.srv.URL, 1<<20)
	}
	testkit.Within(t, 10*time.Second, "15 requests read their body", func() bool {
		requests, _ := receiver.Unverified(h.rc)
		return requests == shares-1
	})

	// One share is left: a body growing past it is refused.
	big := append([]byte(`{"type":"customer.created","data":{"pad":"`), strings.Repeat("x", 200<<10)...)
	big = append(big, `"}}`...)
	if code, body := h.post(t, "msg_big", big, nil); code != http.StatusServiceUnavailable || body != "temporarily unavailable" {
		t.Fatalf("a body growing past the budget: %d %q, want 503", code, body)
	}

	last := startTrickle(t, h.srv.URL, 1<<20)
	testkit.Within(t, 10*time.Second, "the budget is full", func() bool {
		requests, _ := receiver.Unverified(h.rc)
		return requests == shares
	})

	anonymous := startTrickle(t, h.srv.URL, 1<<20).answer(t)
	code, body := h.post(t, "msg_refused", paid, nil)
	if anonymous.StatusCode != http.StatusServiceUnavailable || code != http.StatusServiceUnavailable {
		t.Fatalf("past the budget: anonymous %d, signed %d, want 503 for both", anonymous.StatusCode, code)
	}
	if got := readAll(t, anonymous); got != body || got != "temporarily unavailable" {
		t.Errorf("answers differ: anonymous %q, signed %q", got, body)
	}
	if ra := anonymous.Header.Get("Retry-After"); ra != "5" {
		t.Errorf("Retry-After %q, want 5", ra)
	}
	if got := h.stored(t, "msg_refused"); got.rows != 0 {
		t.Errorf("a refused delivery was stored: %+v", got)
	}
	if v := h.count(t, "unverified", receiver.OutcomeOverloaded); v != 3 {
		t.Errorf("overloaded counter = %v, want 3 (the big body, the anonymous and the signed request)", v)
	}

	// Logged as a warning: a refusal is not relay failing, and an attack
	// must not fill the error log.
	refusals := func() (lines []string) {
		for line := range strings.Lines(logs.String()) {
			if strings.Contains(line, "outcome=overloaded") {
				lines = append(lines, line)
			}
		}
		return lines
	}
	testkit.Within(t, 10*time.Second, "the refusals are logged", func() bool { return len(refusals()) == 3 })
	for _, line := range refusals() {
		if !strings.Contains(line, "level=WARN") {
			t.Errorf("a refusal logged as %q, want a warning", line)
		}
	}

	last.conn.Close()
	testkit.Within(t, 10*time.Second, "a share is given back", func() bool {
		requests, _ := receiver.Unverified(h.rc)
		return requests == shares-1
	})
	if code, body := h.post(t, "msg_after", paid, nil); code != http.StatusOK {
		t.Fatalf("with a share free again: %d %q, want 200", code, body)
	}
}

// TestSlowBodyIsCutAtTheReadTimeout: a body trickling at 5 bytes a second
// is cut off when the server's read timeout (RELAY_READ_TIMEOUT, 15 s by
// default, 1 s here) runs out, counted from the request's start however
// steadily bytes arrive, and its share of the budget is given back.
func TestSlowBodyIsCutAtTheReadTimeout(t *testing.T) {
	h := newHarness(t, setup{})
	srv := httptest.NewUnstartedServer(h.rc)
	srv.Config.ReadTimeout = time.Second
	srv.Start()
	t.Cleanup(srv.Close)

	start := time.Now()
	tr := startTrickle(t, srv.URL, 1<<20)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := tr.conn.Write([]byte{' '}); err != nil {
					return
				}
			}
		}
	}()
	resp := tr.answer(t)
	cut := time.Since(start)
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("status %d, want 400 (could not read body)", resp.StatusCode)
	}
	if cut < time.Second || cut > 5*time.Second {
		t.Errorf("cut off after %v, want about the 1 s read timeout", cut)
	}
	testkit.Within(t, 10*time.Second, "the cut request gives its budget back", func() bool {
		requests, bytes := receiver.Unverified(h.rc)
		return requests == 0 && bytes == 0
	})
}
