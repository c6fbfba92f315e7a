package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/spool"
)

func envFunc(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestServeSendAndShutDown(t *testing.T) {
	dbURL := testdb.New(t)
	env := map[string]string{
		"DATABASE_URL":         dbURL,
		"POLAR_WEBHOOK_SECRET": "polar_whs_old, whsec_rotatedSecretThatIsNotBase64AtAll0123456",
		"RELAY_HTTP_ADDR":      testkit.FreeAddr(t),
		"RELAY_ADMIN_ADDR":     testkit.FreeAddr(t),
		"LOG_FORMAT":           "text",
	}
	ctx := context.Background()

	// Migrating twice is a no-op the second time.
	for i := range 2 {
		var out bytes.Buffer
		if err := run(ctx, []string{"migrate"}, envFunc(env), &out); err != nil {
			t.Fatalf("migrate #%d: %v", i+1, err)
		}
	}

	serveCtx, stop := context.WithCancel(ctx)
	defer stop()
	logs := &testkit.SyncBuffer{}
	done := make(chan error, 1)
	go func() { done <- run(serveCtx, []string{"serve"}, envFunc(env), logs) }()

	admin := "http://" + env["RELAY_ADMIN_ADDR"]
	waitFor(t, done, admin+"/readyz")
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, _ := get(t, admin+path); code != http.StatusOK {
			t.Errorf("GET %s = %d, want 200", path, code)
		}
	}

	hook := "http://" + env["RELAY_HTTP_ADDR"] + "/webhooks/polar"
	var out bytes.Buffer
	err := run(ctx, []string{"send", "--url", hook, "--secret", "whsec_rotatedSecretThatIsNotBase64AtAll0123456",
		"--id", "msg_cli", "../../testdata/events/order.updated.paid.json"}, envFunc(nil), &out)
	if err != nil || !strings.HasPrefix(out.String(), "200 OK") {
		t.Fatalf("send: %v; printed %q", err, out.String())
	}
	out.Reset()
	err = run(ctx, []string{"send", "--url", hook, "--secret", "polar_whs_wrong", "../../testdata/events/order.paid.json"}, envFunc(nil), &out)
	if err == nil || !strings.HasPrefix(out.String(), "401 Unauthorized") {
		t.Fatalf("send with a wrong secret: %v; printed %q, want a 401 and an error", err, out.String())
	}
	out.Reset()
	err = run(ctx, []string{"send", "--url", hook, "--type", "customer.created", "../../testdata/events/customer.created.json"},
		envFunc(map[string]string{"POLAR_WEBHOOK_SECRET": "polar_whs_old"}), &out)
	if err != nil {
		t.Fatalf("send with the secret from the environment: %v (%s)", err, out.String())
	}

	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var rows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 2 {
		t.Errorf("inbox rows = %d, want 2", rows)
	}
	// The worker pool runs in the same process: it works the job. The demo
	// payload names a checkout session this database lacks, so the worker
	// schedules a retry, as it does while a storefront's write lags.
	worked := `relay_events_processed_total{event_type="order.updated",result="retry"} 1`
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, m := get(t, admin+"/metrics"); strings.Contains(m, worked) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("msg_cli's job not worked after 20s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	code, metrics := get(t, admin+"/metrics")
	for _, want := range []string{
		`relay_webhooks_received_total{event_type="order.updated",outcome="accepted"} 1`,
		`relay_webhooks_received_total{event_type="unverified",outcome="unauthorized"} 1`,
		`relay_webhooks_received_total{event_type="customer.created",outcome="ignored"} 1`,
		`relay_webhook_ack_duration_seconds_bucket{outcome="accepted"`,
		`go_goroutines`, `process_resident_memory_bytes`,
		// No spool here: its gauges read 0 rather than vanish.
		"relay_spool_events 0", "relay_spool_max_bytes 0", "relay_spool_set_aside_events 0",
		// The pace limiter is wired: a few webhooks leave it at its maximum.
		"relay_pace_limit 12", "relay_pace_throttled_seconds_total",
	} {
		if code != http.StatusOK || !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	stop() // what SIGTERM does in main
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve returned %v after shutdown, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop within 30s")
	}
	for _, secretPart := range []string{"polar_whs_old", "rotatedSecret", "Sam Shopper", "shopper@example.com"} {
		if strings.Contains(logs.String(), secretPart) {
			t.Errorf("logs contain %q", secretPart)
		}
	}
	if !strings.Contains(logs.String(), "msg=stopped") {
		t.Errorf("logs do not say the server stopped:\n%s", logs.String())
	}
}

func waitFor(t *testing.T, done <-chan error, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("serve exited early: %v", err)
		default:
		}
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s not ready after 20s", url)
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServeRefusesToStartHalfConfigured(t *testing.T) {
	dbURL := testdb.New(t)
	unmigrated := testdb.URL(t) // the server's maintenance database: no relay tables
	cases := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"no secret", map[string]string{"DATABASE_URL": dbURL}, "no webhook secret"},
		{"no database", map[string]string{"POLAR_WEBHOOK_SECRET": "s"}, "DATABASE_URL is not set"},
		{"unreachable database", map[string]string{"POLAR_WEBHOOK_SECRET": "s",
			"DATABASE_URL": "postgres://postgres@127.0.0.1:1/x?connect_timeout=2"}, "database unreachable"},
		{"unmigrated database", map[string]string{"POLAR_WEBHOOK_SECRET": "s", "DATABASE_URL": unmigrated}, "relay migrate"},
		{"bad duration", map[string]string{"POLAR_WEBHOOK_SECRET": "s", "DATABASE_URL": dbURL, "RELAY_ACK_TIMEOUT": "5"}, "RELAY_ACK_TIMEOUT"},
		{"bad CIDR", map[string]string{"POLAR_WEBHOOK_SECRET": "s", "DATABASE_URL": dbURL, "RELAY_ALLOWED_CIDRS": "polar"}, "RELAY_ALLOWED_CIDRS"},
		{"missing secret file", map[string]string{"POLAR_WEBHOOK_SECRET_FILE": "/nonexistent", "DATABASE_URL": dbURL}, "POLAR_WEBHOOK_SECRET_FILE"},
		{"rescue before the job timeout", map[string]string{"POLAR_WEBHOOK_SECRET": "s", "DATABASE_URL": dbURL, "RELAY_RESCUE_AFTER": "4s"}, "RELAY_RESCUE_AFTER"},
		{"bad spool limit", map[string]string{"POLAR_WEBHOOK_SECRET": "s", "DATABASE_URL": dbURL, "RELAY_SPOOL_DIR": t.TempDir(), "RELAY_SPOOL_MAX_BYTES": "0"}, "RELAY_SPOOL_MAX_BYTES"},
		{"spool of another process", map[string]string{"POLAR_WEBHOOK_SECRET": "s", "DATABASE_URL": dbURL, "RELAY_SPOOL_DIR": lockedSpool(t)}, "in use by another process"},
		{"unmigrated database with a spool", map[string]string{"POLAR_WEBHOOK_SECRET": "s", "DATABASE_URL": unmigrated, "RELAY_SPOOL_DIR": t.TempDir()}, "relay migrate"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tc.env["RELAY_HTTP_ADDR"] = testkit.FreeAddr(t)
			tc.env["RELAY_ADMIN_ADDR"] = testkit.FreeAddr(t)
			err := run(ctx, []string{"serve"}, envFunc(tc.env), io.Discard)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("serve: %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

// lockedSpool is a spool directory another process (this test) has open.
func lockedSpool(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	sp, err := spool.Open(dir, spool.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sp.Close() })
	return dir
}

func TestSecretFileAndUsage(t *testing.T) {
	path := t.TempDir() + "/secret"
	if err := writeFile(path, "polar_whs_a\npolar_whs_b\n"); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseConfig(envFunc(map[string]string{"DATABASE_URL": "postgres://x", "POLAR_WEBHOOK_SECRET_FILE": path}), true)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(cfg.Secrets) != "[polar_whs_a polar_whs_b]" {
		t.Errorf("secrets = %q", cfg.Secrets)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"frobnicate"}, envFunc(nil), &out); err == nil || !strings.Contains(out.String(), "usage: relay") {
		t.Errorf("unknown command: %v, printed %q", err, out.String())
	}
}

// TestSlowClientsAreCutOff holds a connection open with headers, then a
// body, that never finish: the server must close it after its read timeouts
// and store nothing.
func TestSlowClientsAreCutOff(t *testing.T) {
	dbURL := testdb.New(t)
	env := map[string]string{
		"DATABASE_URL":              dbURL,
		"POLAR_WEBHOOK_SECRET":      "polar_whs_slow",
		"RELAY_HTTP_ADDR":           testkit.FreeAddr(t),
		"RELAY_ADMIN_ADDR":          testkit.FreeAddr(t),
		"RELAY_READ_HEADER_TIMEOUT": "300ms",
		"RELAY_READ_TIMEOUT":        "600ms",
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"serve"}, envFunc(env), io.Discard) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitFor(t, done, "http://"+env["RELAY_ADMIN_ADDR"]+"/readyz")

	cases := map[string]string{
		"slow headers": "POST /webhooks/polar HTTP/1.1\r\nHost: x\r\nwebhook-id: msg_slow",
		"slow body":    "POST /webhooks/polar HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"type\":",
	}
	for name, partial := range cases {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", env["RELAY_HTTP_ADDR"])
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			if _, err := conn.Write([]byte(partial)); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(5 * time.Second))
			// The server answers 4xx or just hangs up; either way the
			// connection ends well before our 5 s deadline.
			rest, err := io.ReadAll(conn)
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatalf("connection still open after 5s (read %q)", rest)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("cut off after %v, want about the read timeout", d)
			}
			if len(rest) > 0 && !strings.HasPrefix(string(rest), "HTTP/1.1 4") {
				t.Errorf("answer %q, want a 4xx or none", rest)
			}
		})
	}
	conn, err := pgx.Connect(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rows int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Errorf("stored %d rows from slow clients, want none", rows)
	}
}
