package receiver_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/receiver"
)

// serveLimited serves 200s on a listener holding at most limit connections,
// with a read header timeout long enough never to free a slot by itself.
func serveLimited(t *testing.T, limit int) (*receiver.ConnLimit, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	limited := receiver.LimitConnections(ln, limit)
	srv := &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) }),
		ReadHeaderTimeout: time.Minute,
		IdleTimeout:       time.Minute,
		ConnState:         limited.ConnState,
	}
	go srv.Serve(limited)
	t.Cleanup(func() { srv.Close() })
	return limited, ln.Addr().String()
}

// get sends one keep-alive request on c and reads its answer.
func get(c net.Conn, r *bufio.Reader) (int, error) {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: relay\r\n\r\n"); err != nil {
		return 0, err
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Connections that send half a request's headers hold a goroutine each
// until the read header timeout; past the limit they wait in the kernel's
// backlog and hold none. A waiting connection is served once a slot frees.
func TestConnectionsPastTheLimitHoldNoGoroutine(t *testing.T) {
	const limit, extra = 8, 300
	limited, addr := serveLimited(t, limit)
	before := runtime.NumGoroutine()

	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for range limit + extra {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte("POST /webhooks/polar HTTP/1.1\r\nHost: relay\r\n")); err != nil {
			t.Fatal(err)
		}
	}
	// Settled once the kernel's backlog holds every connection not accepted:
	// all but the one accepted and waiting for a slot, or none without a limit.
	waitFor(t, "the connections to be accepted or queued", func() bool {
		q := acceptQueue(t, addr)
		return limited.Open() >= limit && (q == extra-1 || q == 0)
	})
	if open := limited.Open(); open > limit {
		t.Fatalf("%d connections open, want at most %d", open, limit)
	}
	// Each accepted connection costs one goroutine; the rest must cost none.
	if grown := runtime.NumGoroutine() - before; grown > limit+10 {
		t.Fatalf("%d goroutines more with %d connections open and %d waiting, want at most %d", grown, limit, extra, limit+10)
	}

	// A slot freed by a sender that leaves lets a waiting connection in.
	last := conns[len(conns)-1]
	waiter, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer waiter.Close()
	for _, c := range conns[:len(conns)-1] {
		c.Close()
	}
	last.Close()
	if status, err := get(waiter, bufio.NewReader(waiter)); err != nil || status != http.StatusOK {
		t.Fatalf("a waiting connection once the others left: %d, %v; want 200", status, err)
	}
}

// Idle keep-alive connections give way: a sender parking connections
// between requests cannot lock a new one out.
func TestIdleConnectionsGiveWayToNewOnes(t *testing.T) {
	const limit = 4
	limited, addr := serveLimited(t, limit)
	for range limit {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if status, err := get(c, bufio.NewReader(c)); err != nil || status != http.StatusOK {
			t.Fatalf("request: %d, %v", status, err)
		}
	}
	if open := limited.Open(); open != limit {
		t.Fatalf("%d connections open, want the %d idle ones", open, limit)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	if status, err := get(c, bufio.NewReader(c)); err != nil || status != http.StatusOK {
		t.Fatalf("a new connection while %d idle ones held every slot: %d, %v; want 200", limit, status, err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("a new connection waited %v for idle ones", took)
	}
}

// acceptQueue returns how many connections wait in the kernel's accept queue
// of the listener at addr (127.0.0.1:port): /proc/net/tcp's rx_queue of a
// listening socket.
func acceptQueue(t *testing.T, addr string) int {
	t.Helper()
	_, port, _ := net.SplitHostPort(addr)
	p, _ := strconv.Atoi(port)
	local := fmt.Sprintf("0100007F:%04X", p)
	data, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 4 && f[1] == local && f[3] == "0A" { // LISTEN
			_, rx, _ := strings.Cut(f[4], ":")
			n, err := strconv.ParseInt(rx, 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatalf("no listening socket at %s in /proc/net/tcp", addr)
	return 0
}
