package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/receiver"
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

// blackhole is a database address that accepts connections and never
// answers: every store waits out its deadline.
func blackhole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	return "postgres://postgres@" + ln.Addr().String() + "/relay?sslmode=disable"
}

// The server's write timeout leaves room for the slowest answer a webhook
// can get: a body read within RELAY_READ_TIMEOUT, a store that gives up at
// RELAY_ACK_TIMEOUT (the database does not answer), then a spool append
// that takes most of its own 2 s. That 200 reaches the client. The read
// and ack timeouts are shortened from 15 s and 5 s to 1 s each to keep the
// test short; the spool's timeout is the default.
func TestSpooledAnswerArrivesWithinTheWriteTimeout(t *testing.T) {
	cfg, err := parseConfig(envFunc(map[string]string{
		"DATABASE_URL": blackhole(t), "POLAR_WEBHOOK_SECRET": testSecret,
		"RELAY_READ_TIMEOUT": "1s", "RELAY_ACK_TIMEOUT": "1s",
	}), true)
	if err != nil {
		t.Fatal(err)
	}
	if defaults, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x", "POLAR_WEBHOOK_SECRET": "s"}), true); err != nil {
		t.Fatal(err)
	} else if wt := newServer(nil, defaults, slog.Default()).WriteTimeout; wt <= defaults.ReadTimeout+defaults.AckTimeout+spoolTimeout {
		t.Errorf("with the defaults WriteTimeout is %s, not past the %s read, %s ack and %s spool timeouts", wt, defaults.ReadTimeout, defaults.AckTimeout, spoolTimeout)
	}

	pool, err := newPool(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := polar.NewVerifier(cfg.Secrets)
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := receiver.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spool.Open(t.TempDir(), spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	rc := receiver.New(pool, client, verifier, metrics, receiver.Options{
		MaxBodyBytes: cfg.MaxBodyBytes, AckTimeout: cfg.AckTimeout, SpoolTimeout: spoolTimeout, Spool: sp, Logger: slog.New(slog.DiscardHandler),
	})
	t.Cleanup(rc.Close)
	srv := newServer(rc, cfg, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln) //nolint:errcheck // closed below
	t.Cleanup(func() { srv.Close() })

	// The spool's disk is slow: the append takes 1.2 s.
	release, err := sp.HoldWrites()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release)
	go func() {
		for sp.Appending() == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		time.Sleep(1200 * time.Millisecond)
		release()
	}()

	// The body comes in two halves 500 ms apart, within the read timeout.
	body := testkit.Fixture(t, "order.paid.json")
	pr, pw := io.Pipe()
	go func() {
		pw.Write(body[:len(body)/2]) //nolint:errcheck // the request fails if it does
		time.Sleep(500 * time.Millisecond)
		pw.Write(body[len(body)/2:]) //nolint:errcheck
		pw.Close()
	}()
	req, err := http.NewRequest(http.MethodPost, "http://"+ln.Addr().String()+"/", pr)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = int64(len(body))
	for k, v := range polar.SignedHeaders(testSecret, "msg_slow_spool", time.Now(), body) {
		req.Header[k] = v
	}
	start := time.Now()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("no answer after %s (write timeout %s): %v", time.Since(start).Round(time.Millisecond), srv.WriteTimeout, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d after %s, want 200 from the spool", resp.StatusCode, time.Since(start))
	}
	if st, err := sp.Stats(); err != nil || st.Events != 1 {
		t.Fatalf("spool stats %+v, %v; want the webhook in it", st, err)
	}
}

// Started with a spool while PostgreSQL is down, relay serve stops once the
// database answers with migrations pending, with the error that stops it at
// start, as a database never migrated or one an older relay migrated would;
// the webhook it spooled stays in the spool, not drained into that schema.
func TestServeStopsWhenTheDatabaseAnswersNotMigrated(t *testing.T) {
	for name, newDB := range map[string]func(tb testing.TB) string{
		"never migrated": testdb.NewEmpty,
		"a migration behind": func(t testing.TB) string {
			dbURL := testdb.New(t)
			conn, err := pgx.Connect(context.Background(), dbURL)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			// The schema stays whole: a drain that did not wait for the
			// check would store the webhook there.
			if _, err := conn.Exec(context.Background(),
				`DELETE FROM goose_db_version WHERE version_id = (SELECT max(version_id) FROM goose_db_version)`); err != nil {
				t.Fatal(err)
			}
			return dbURL
		},
	} {
		t.Run(name, func(t *testing.T) {
			dbURL := newDB(t)
			env := map[string]string{
				"DATABASE_URL":         dbURL,
				"POLAR_WEBHOOK_SECRET": testSecret,
				"RELAY_HTTP_ADDR":      testkit.FreeAddr(t),
				"RELAY_ADMIN_ADDR":     testkit.FreeAddr(t),
				"RELAY_SPOOL_DIR":      t.TempDir(),
				"LOG_FORMAT":           "text",
			}
			atStart := run(context.Background(), []string{"serve"}, envFunc(env), io.Discard)
			if !errors.Is(atStart, errNotMigrated) {
				t.Fatalf("serve on the database at start: %v, want %v", atStart, errNotMigrated)
			}

			gate, gatedURL := newGate(t, dbURL)
			env["DATABASE_URL"] = gatedURL
			ctx, stop := context.WithCancel(context.Background())
			defer stop()
			logs := &testkit.SyncBuffer{}
			done := make(chan error, 1)
			go func() { done <- run(ctx, []string{"serve"}, envFunc(env), logs) }()
			waitFor(t, done, "http://"+env["RELAY_ADMIN_ADDR"]+"/readyz")
			deliver(t, "http://"+env["RELAY_HTTP_ADDR"]+"/webhooks/polar", testSecret, "msg_spooled", testkit.Fixture(t, "order.updated.paid.json"))

			gate.open(t)
			select {
			case err := <-done:
				if err == nil || err.Error() != atStart.Error() {
					t.Fatalf("serve stopped with %v, want %v as at start", err, atStart)
				}
			case <-time.After(15 * time.Second):
				t.Fatalf("serve still runs 15s after the database answered with migrations pending:\n%s", logs.String())
			}
			sp, err := spool.Open(env["RELAY_SPOOL_DIR"], spool.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer sp.Close()
			if st, err := sp.Stats(); err != nil || st.Events != 1 {
				t.Errorf("spool after serve stopped: %+v, %v; want the webhook still in it", st, err)
			}
		})
	}
}
