package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// pgbouncerPoolSize is each pool's server connections: fewer than relay's
// own pool, so that its clients really share them. PgBouncer hands them out
// round robin, so that even one client's consecutive transactions run on
// different ones.
const pgbouncerPoolSize = 2

// TestThroughPgBouncer runs relay serve behind a real PgBouncer in
// transaction pooling, in the query modes the README recommends there, and
// requires a paid order and its duplicates to complete the session with
// exactly one booking, every one of relay's connections to PostgreSQL being
// PgBouncer's.
func TestThroughPgBouncer(t *testing.T) {
	bin := pgbouncerBinary(t)
	for _, mode := range []string{"exec", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			direct := testdb.New(t)
			bouncer := startPgBouncer(t, bin, direct)
			ctx := context.Background()

			// The README's deployment: migrate directly, serve through the pool.
			if err := run(ctx, []string{"migrate"}, envFunc(map[string]string{"DATABASE_URL": direct}), io.Discard); err != nil {
				t.Fatalf("relay migrate against PostgreSQL: %v", err)
			}
			pcfg, err := pgxpool.ParseConfig(direct)
			if err != nil {
				t.Fatal(err)
			}
			pcfg.ConnConfig.RuntimeParams["application_name"] = "relay_test_direct"
			pool, err := pgxpool.NewWithConfig(ctx, pcfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(pool.Close)

			env := map[string]string{
				"DATABASE_URL":              bouncer.url("default_query_exec_mode=" + mode),
				"POLAR_WEBHOOK_SECRET":      testSecret,
				"RELAY_HTTP_ADDR":           testkit.FreeAddr(t),
				"RELAY_ADMIN_ADDR":          testkit.FreeAddr(t),
				"RELAY_POLL_ONLY":           "on",
				"RELAY_WORKERS":             "4",
				"RELAY_DB_MAX_CONNS":        strconv.Itoa(2 * pgbouncerPoolSize),
				"RELAY_FETCH_POLL_INTERVAL": "100ms",
				"LOG_FORMAT":                "text",
			}
			logs := serveInProcess(t, env)

			// A paid order, its redelivery, and the same sale announced by a
			// second event.
			s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
			hook := "http://" + env["RELAY_HTTP_ADDR"] + "/webhooks/polar"
			sale := s.Sale("ord_bouncer")
			deliver(t, hook, testSecret, "msg_bouncer_paid", testkit.Event(t, "order.updated.paid.json", sale, nil))
			deliver(t, hook, testSecret, "msg_bouncer_paid", testkit.Event(t, "order.updated.paid.json", sale, nil))
			deliver(t, hook, testSecret, "msg_bouncer_paid_again", testkit.Event(t, "order.paid.json", sale, nil))
			for _, id := range []string{"msg_bouncer_paid", "msg_bouncer_paid_again"} {
				waitJob(t, pool, id, "completed")
			}
			if status, n := shopState(t, pool, s); status != "completed" || n != 1 {
				t.Errorf("session %s with %d bookings, want completed with exactly 1", status, n)
			}
			var inboxRows int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox`).Scan(&inboxRows); err != nil {
				t.Fatal(err)
			}
			if inboxRows != 2 {
				t.Errorf("inbox rows = %d, want 2 (the redelivery stores nothing)", inboxRows)
			}

			bouncer.requireOnlyPath(t, pool)
			// A mode PgBouncer breaks can still get there through retries
			// (describe_exec does): it must not have needed any.
			if strings.Contains(logs.String(), "level=ERROR") {
				t.Error("relay logged errors")
			}
		})
	}
}

// pgbouncerBinary finds PgBouncer. make test installs it; run by hand
// without it, the test is skipped.
func pgbouncerBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	const how = "pgbouncer not found: `make test` installs it as root (scripts/apt-install.sh pgbouncer), or apt-get install pgbouncer"
	if os.Getenv("RELAY_TEST_PGDATA") != "" { // under scripts/with-test-postgres.sh, as make test runs
		t.Fatal(how)
	}
	t.Skip(how)
	return ""
}

// pgBouncer is a PgBouncer in transaction pooling in front of one test
// database.
type pgBouncer struct {
	addr, db string
}

// url is the DATABASE_URL of the pooled database, with query parameters.
func (b *pgBouncer) url(query string) string {
	return "postgres://postgres@" + b.addr + "/" + b.db + "?sslmode=disable&" + query
}

// startPgBouncer starts PgBouncer for the database of direct, as the
// postgres user when root (PgBouncer refuses to run as root), and stops it
// when t ends.
func startPgBouncer(t *testing.T, bin, direct string) *pgBouncer {
	t.Helper()
	u, err := url.Parse(direct)
	if err != nil {
		t.Fatal(err)
	}
	b := &pgBouncer{addr: testkit.FreeAddr(t), db: u.Path[1:]}
	host, port, err := net.SplitHostPort(b.addr)
	if err != nil {
		t.Fatal(err)
	}
	// t.TempDir's parents are private; the postgres user must read this.
	dir, err := os.MkdirTemp("", "relay-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ini := fmt.Sprintf(`[databases]
%s = host=%s port=%s dbname=%s

[pgbouncer]
listen_addr = %s
listen_port = %s
unix_socket_dir =
auth_type = trust
auth_file = %s
admin_users = postgres
pool_mode = transaction
default_pool_size = %d
max_client_conn = 100
server_round_robin = 1
ignore_startup_parameters = extra_float_digits
`, b.db, u.Hostname(), u.Port(), b.db, host, port, filepath.Join(dir, "userlist.txt"), pgbouncerPoolSize)
	for name, content := range map[string]string{"pgbouncer.ini": ini, "userlist.txt": `"postgres" ""` + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	args := []string{bin, filepath.Join(dir, "pgbouncer.ini")}
	if os.Geteuid() == 0 {
		args = append([]string{"runuser", "-u", "postgres", "--"}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	logs := &testkit.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // runuser and PgBouncer, stopped together
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
			t.Error("pgbouncer did not stop within 10s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("pgbouncer's log:\n%s", logs.String())
		}
	})

	deadline := time.Now().Add(10 * time.Second)
	for {
		select {
		case err := <-exited:
			t.Fatalf("pgbouncer exited: %v\n%s", err, logs.String())
		default:
		}
		conn, err := b.admin(context.Background())
		if err == nil {
			conn.Close(context.Background())
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer not accepting connections after 10s: %v\n%s", err, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// admin connects to PgBouncer's admin console, which speaks only the simple
// query protocol.
func (b *pgBouncer) admin(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, "postgres://postgres@"+b.addr+"/pgbouncer?sslmode=disable&default_query_exec_mode=simple_protocol")
}

// show runs an admin console SHOW and returns its rows by column name.
func (b *pgBouncer) show(t *testing.T, what string) []map[string]string {
	t.Helper()
	ctx := context.Background()
	conn, err := b.admin(ctx)
	if err != nil {
		t.Fatalf("pgbouncer admin console: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SHOW "+what)
	if err != nil {
		t.Fatalf("SHOW %s: %v", what, err)
	}
	defer rows.Close()
	var out []map[string]string
	for rows.Next() {
		row := map[string]string{}
		for i, v := range rows.RawValues() {
			row[rows.FieldDescriptions()[i].Name] = string(v)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("SHOW %s: %v", what, err)
	}
	return out
}

// requireOnlyPath checks that relay reached its database through PgBouncer
// only: every backend on it but the test's own is one of PgBouncer's server
// connections, and PgBouncer carried relay's transactions.
func (b *pgBouncer) requireOnlyPath(t *testing.T, direct *pgxpool.Pool) {
	t.Helper()
	rows, err := direct.Query(context.Background(), `SELECT client_port FROM pg_stat_activity
		WHERE datname = current_database() AND backend_type = 'client backend' AND application_name <> 'relay_test_direct'`)
	if err != nil {
		t.Fatal(err)
	}
	ports, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	servers := map[string]bool{}
	for _, s := range b.show(t, "SERVERS") {
		if s["database"] == b.db {
			servers[s["local_port"]] = true
		}
	}
	if len(ports) == 0 || len(servers) == 0 || len(servers) > pgbouncerPoolSize {
		t.Errorf("%d backends besides the test's, %d PgBouncer server connections; want some, at most %d", len(ports), len(servers), pgbouncerPoolSize)
	}
	for _, p := range ports {
		if !servers[strconv.Itoa(int(p))] {
			t.Errorf("a backend from port %d is none of PgBouncer's server connections %v: relay connected directly", p, servers)
		}
	}
	var clients int
	for _, c := range b.show(t, "CLIENTS") {
		if c["database"] == b.db {
			clients++
		}
	}
	for _, s := range b.show(t, "STATS") {
		if s["database"] == b.db {
			t.Logf("PgBouncer: %d relay clients on %d server connections; %s transactions, %s queries", clients, len(servers), s["total_xact_count"], s["total_query_count"])
			if n, _ := strconv.Atoi(s["total_xact_count"]); n < 3 {
				t.Errorf("PgBouncer carried %d transactions, want at least the three webhooks'", n)
			}
			return
		}
	}
	t.Errorf("SHOW STATS has no row for %s", b.db)
}
