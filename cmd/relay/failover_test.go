package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// ownCluster starts a PostgreSQL server of the test's own (scripts/pg.sh),
// one the test may reconfigure, and returns its port; it is stopped and
// removed when t ends.
func ownCluster(t *testing.T) int {
	t.Helper()
	dir, err := os.MkdirTemp("", "relay-own-pg-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil { // the postgres user must reach its data directory
		t.Fatal(err)
	}
	pgsh := filepath.Join(testkit.RepoRoot(), "scripts", "pg.sh")
	data := filepath.Join(dir, "pg")
	port, err := strconv.Atoi(strings.TrimPrefix(testkit.FreeAddr(t), "127.0.0.1:"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pgsh, "start", data, strconv.Itoa(port))
	cmd.Env = append(os.Environ(), "PG_EXTRA_OPTS=-c fsync=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("pg.sh start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command(pgsh, "stop", data).CombinedOutput(); err != nil {
			t.Logf("pg.sh stop: %v\n%s", err, out)
		}
		os.RemoveAll(dir)
	})
	return port
}

// A DATABASE_URL naming two hosts with target_session_attrs=read-write, the
// first the primary. The primary turns read-only under relay's pooled
// connections, as a switchover's demotion does (ALTER SYSTEM
// default_transaction_read_only, reloaded: the same SQLSTATE 25006 on every
// write). Every webhook must still be answered 200, from the spool when its
// transaction fails, or 503, never 4xx; relay must drop the connections to
// the read-only server, store into the second host, drain its spool there,
// and then store directly again.
func TestDemotedPrimaryIsLeftForTheWritableHost(t *testing.T) {
	ctx := context.Background()
	newURL := testdb.New(t) // the host that becomes the primary
	u, err := url.Parse(newURL)
	if err != nil {
		t.Fatal(err)
	}
	name := strings.TrimPrefix(u.Path, "/")
	oldPort := ownCluster(t)
	oldURL := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", oldPort, name)
	admin, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", oldPort))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	if err := run(ctx, []string{"migrate"}, envFunc(map[string]string{"DATABASE_URL": oldURL}), io.Discard); err != nil {
		t.Fatalf("migrate the first host: %v", err)
	}
	both := *u
	both.Host = fmt.Sprintf("127.0.0.1:%d,%s", oldPort, u.Host)
	q := both.Query()
	q.Set("target_session_attrs", "read-write")
	both.RawQuery = q.Encode()

	p := startRelay(t, map[string]string{"DATABASE_URL": both.String(), "RELAY_SPOOL_DIR": t.TempDir()})
	body := testkit.Fixture(t, "order.updated.paid.json")
	deliver(t, p.hook, testSecret, "msg_before", body)
	old, err := pgx.Connect(ctx, oldURL)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close(ctx)
	if n := inboxRows(t, old, "msg_before"); n != 1 {
		t.Fatalf("msg_before is in the first host's inbox %d times, want 1: relay did not start on the primary", n)
	}

	if _, err := admin.Exec(ctx, `ALTER SYSTEM SET default_transaction_read_only = on`); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
		t.Fatal(err)
	}
	// pg_reload_conf only signals: once a new session sees the setting, the
	// postmaster has reloaded and signalled every backend, which applies it
	// before its next command. Until then a webhook could still commit on
	// the first host.
	testkit.Within(t, 10*time.Second, "the first host to turn read-only", func() bool {
		c, err := pgx.Connect(ctx, oldURL)
		if err != nil {
			return false
		}
		defer c.Close(ctx)
		var ro string
		return c.QueryRow(ctx, `SHOW default_transaction_read_only`).Scan(&ro) == nil && ro == "on"
	})

	// Polar's way: a webhook not answered 200 is sent again.
	send := func(id string) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			code, err := testkit.Post(http.DefaultClient, p.hook, testSecret, id, body)
			switch {
			case err != nil:
				t.Fatalf("deliver %s: %v", id, err)
			case code == http.StatusOK:
				return
			case code != http.StatusServiceUnavailable:
				t.Fatalf("deliver %s while the first host is read-only: status %d, want 200 or 503", id, code)
			case time.Now().After(deadline):
				t.Fatalf("deliver %s: still 503 after 30s", id)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var ids []string
	for i := range 20 {
		id := fmt.Sprintf("msg_after_%d", i)
		send(id)
		ids = append(ids, id)
	}
	spooled := spooledCount(t, p.admin)
	if spooled == 0 {
		t.Error("no webhook was spooled: the read-only primary's connections were never used")
	}

	newPrimary, err := pgx.Connect(ctx, newURL)
	if err != nil {
		t.Fatal(err)
	}
	defer newPrimary.Close(ctx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n int
		if err := newPrimary.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox WHERE webhook_id = ANY($1)`, ids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == len(ids) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of the %d webhooks acknowledged while the first host was read-only are in the writable host's inbox after 30s (%d spooled)",
				n, len(ids), spooled)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// Recovered: new webhooks are stored directly, none spooled.
	for i := range 10 {
		send(fmt.Sprintf("msg_later_%d", i))
	}
	if after := spooledCount(t, p.admin); after != spooled {
		t.Errorf("%d webhooks spooled after the writable host took the spool's: the pool still uses the read-only server", after-spooled)
	}
	if n := inboxRows(t, newPrimary, "msg_later_9"); n != 1 {
		t.Errorf("msg_later_9 is in the writable host's inbox %d times, want 1", n)
	}
}

func inboxRows(t *testing.T, conn *pgx.Conn, webhookID string) int {
	t.Helper()
	var n int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox WHERE webhook_id = $1`, webhookID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

var spooledLine = regexp.MustCompile(`(?m)^relay_webhooks_received_total\{[^}]*outcome="spooled"[^}]*\} (\d+)$`)

// spooledCount is how many webhooks relay has spooled, from its /metrics.
func spooledCount(t *testing.T, admin string) int {
	t.Helper()
	_, m := get(t, admin+"/metrics")
	n := 0
	for _, match := range spooledLine.FindAllStringSubmatch(m, -1) {
		v, _ := strconv.Atoi(match[1])
		n += v
	}
	return n
}
