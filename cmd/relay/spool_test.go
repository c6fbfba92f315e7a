package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/spool"
)

// pgGate stands between relay and PostgreSQL: while shut its address
// refuses connections, as a stopped server's does; while open it forwards
// them to the server.
type pgGate struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        []net.Conn
}

// newGate returns a shut gate to the server of dbURL, and dbURL through it.
func newGate(t *testing.T, dbURL string) (*pgGate, string) {
	t.Helper()
	u, err := url.Parse(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	g := &pgGate{addr: testkit.FreeAddr(t), target: u.Host}
	u.Host = g.addr
	t.Cleanup(g.shut)
	return g, u.String()
}

func (g *pgGate) open(t *testing.T) {
	t.Helper()
	ln, err := net.Listen("tcp", g.addr)
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	g.ln = ln
	g.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // shut
			}
			s, err := net.Dial("tcp", g.target)
			if err != nil {
				c.Close()
				continue
			}
			g.mu.Lock()
			g.conns = append(g.conns, c, s)
			g.mu.Unlock()
			go func() { io.Copy(s, c); s.Close() }() //nolint:errcheck // a copy ends when either side closes
			go func() { io.Copy(c, s); c.Close() }() //nolint:errcheck
		}
	}()
}

// shut stops listening and cuts every forwarded connection.
func (g *pgGate) shut() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ln != nil {
		g.ln.Close()
		g.ln = nil
	}
	for _, c := range g.conns {
		c.Close()
	}
	g.conns = nil
}

// With a spool, relay serve starts while PostgreSQL refuses connections: it
// is ready ("degraded: spooling"), acknowledges a webhook from the spool,
// and once the database answers it checks the migrations, starts the
// workers and moves the spooled webhook into the inbox, where it is worked.
func TestServeWithSpoolStartsWhileTheDatabaseIsDown(t *testing.T) {
	dbURL := testdb.New(t)
	gate, gatedURL := newGate(t, dbURL)
	p := startRelay(t, map[string]string{
		"DATABASE_URL":       gatedURL,
		"RELAY_SPOOL_DIR":    t.TempDir(),
		"RELAY_MAX_ATTEMPTS": "12",
	})
	if code, body := get(t, p.admin+"/readyz"); code != http.StatusOK || !strings.Contains(body, "degraded: spooling") {
		t.Fatalf("/readyz while the database is down = %d %q, want 200 degraded: spooling", code, body)
	}
	deliver(t, p.hook, testSecret, "msg_spooled", testkit.Fixture(t, "order.updated.paid.json"))
	_, metrics := get(t, p.admin+"/metrics")
	for _, want := range []string{
		`relay_webhooks_received_total{event_type="order.updated",outcome="spooled"} 1`,
		"relay_spool_events 1",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	gate.open(t)
	// Worked means the workers started: the demo payload's session is not
	// in this database, so its job is scheduled to retry.
	worked := `relay_events_processed_total{event_type="order.updated",result="retry"} 1`
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, m := get(t, p.admin+"/metrics")
		if strings.Contains(m, worked) && strings.Contains(m, "relay_spool_events 0") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spooled webhook was not drained and worked within 30s of the database answering:\n%s", p.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var rows int
	if err := p.pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox WHERE webhook_id = 'msg_spooled'`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Errorf("inbox rows for msg_spooled = %d, want 1", rows)
	}
	if code, body := get(t, p.admin+"/readyz"); code != http.StatusOK || strings.TrimSpace(body) != "ready" {
		t.Errorf("/readyz once the database answers = %d %q, want 200 ready", code, body)
	}
	for _, want := range []string{"database unreachable at start", "database answers: migrations checked, workers started", "spool: drained"} {
		if !strings.Contains(p.logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, p.logs.String())
		}
	}
}

// While the database is down, /readyz is 200 "degraded: spooling" only as
// long as the spool can write: once its disk stalls (HoldWrites, standing
// for an fsync that does not return) for the spool's default 2 s, it is
// 503, and 200 again once the disk returns.
func TestReadyzIsNotReadyWhileTheSpoolStalls(t *testing.T) {
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	srv := httptest.NewServer(readyHandler(pool, sp, 1<<20))
	t.Cleanup(srv.Close)

	if code, body := get(t, srv.URL); code != http.StatusOK || !strings.Contains(body, "degraded: spooling") {
		t.Fatalf("/readyz with the database down = %d %q, want 200 degraded: spooling", code, body)
	}
	release, err := sp.HoldWrites()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release) // before the spool closes
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := sp.Append(ctx, &inbox.Event{WebhookID: "msg_stalled", Status: inbox.StatusIgnored}); err == nil {
		t.Fatal("an append to a stalled disk returned nil")
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := get(t, srv.URL)
		if code == http.StatusServiceUnavailable && strings.Contains(body, "spool stalled") {
			break
		}
		if code != http.StatusOK || time.Now().After(deadline) {
			t.Fatalf("/readyz while the spool's disk stalls = %d %q, want 200 and then 503 spool stalled within 10s", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	release()
	for {
		code, body := get(t, srv.URL)
		if code == http.StatusOK && strings.Contains(body, "degraded: spooling") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz once the disk returned = %d %q, want 200 degraded: spooling", code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
