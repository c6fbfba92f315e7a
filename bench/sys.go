package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/endpoints"
)

// clkTck is USER_HZ, the unit of /proc's CPU times; 100 on every mainstream
// Linux build.
const clkTck = 100

// machine is what the results were measured on.
type machine struct {
	CPUs       int
	CPUModel   string
	MemTotal   string
	Kernel     string
	GoVersion  string
	PGVersion  string
	PGSettings [][2]string
	FsyncUS    float64 // one 8 KiB write + fdatasync in the scratch directory
	LoadAvg    string  // at the start: other work on the machine skews results
}

var pgSettingNames = []string{
	"fsync", "synchronous_commit", "full_page_writes", "wal_sync_method", "wal_level",
	"shared_buffers", "wal_buffers", "max_wal_size", "checkpoint_timeout", "commit_delay",
	"commit_siblings", "wal_writer_delay", "max_connections", "track_wal_io_timing",
}

func machineInfo(ctx context.Context, pool *pgxpool.Pool, dir string) (machine, error) {
	m := machine{CPUs: runtime.NumCPU(), GoVersion: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
				m.MemTotal = fmt.Sprintf("%.1f GiB", kb/1024/1024)
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		m.LoadAvg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	if err := pool.QueryRow(ctx, `SELECT version()`).Scan(&m.PGVersion); err != nil {
		return m, err
	}
	if i := strings.Index(m.PGVersion, " on "); i > 0 {
		m.PGVersion = m.PGVersion[:i]
	}
	for _, name := range pgSettingNames {
		var v string
		if err := pool.QueryRow(ctx, `SELECT current_setting($1)`, name).Scan(&v); err != nil {
			return m, fmt.Errorf("setting %s: %w", name, err)
		}
		m.PGSettings = append(m.PGSettings, [2]string{name, v})
	}
	us, err := fsyncProbe(dir)
	if err != nil {
		return m, fmt.Errorf("fsync probe: %w", err)
	}
	m.FsyncUS = us
	return m, nil
}

// fsyncProbe times an 8 KiB write followed by fdatasync, as a WAL flush is.
func fsyncProbe(dir string) (float64, error) {
	f, err := os.CreateTemp(dir, "fsync-probe")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := bytes.Repeat([]byte{'x'}, 8192)
	const n = 200
	start := time.Now()
	for i := range n {
		if _, err := f.WriteAt(buf, int64(i%16)*8192); err != nil {
			return 0, err
		}
		if err := syscall.Fdatasync(int(f.Fd())); err != nil {
			return 0, err
		}
	}
	return float64(time.Since(start).Microseconds()) / n, nil
}

// procTimes returns a process's user+system CPU time in clock ticks, and
// the time of its reaped children.
func procTimes(pid int) (self, children int64, ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, 0, false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, 0, 0, false
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3, the state
	if len(f) < 15 {
		return 0, 0, 0, false
	}
	num := func(k int) int64 { n, _ := strconv.ParseInt(f[k-3], 10, 64); return n }
	return num(14) + num(15), num(16) + num(17), int(num(4)), true
}

// cpuMeter splits the machine's CPU time between relay, PostgreSQL, the
// load generator, pgbench and everything else.
type cpuMeter struct {
	pgData string
}

type cpuSnap struct {
	at       time.Time
	total    int64 // all CPUs, busy ticks, steal included
	steal    int64 // ticks the hypervisor gave to other guests
	relay    int64
	postgres int64
	self     time.Duration
	children time.Duration // reaped children: pgbench
}

type cpuSplit struct {
	Relay, Postgres, Gen, Pgbench, Other, Steal, Idle float64 // in cores
}

func newCPUMeter(pgData string) *cpuMeter { return &cpuMeter{pgData: pgData} }

func (m *cpuMeter) postmaster() int {
	if m.pgData == "" {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(m.pgData, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

func (m *cpuMeter) snap(relayPID int) cpuSnap {
	s := cpuSnap{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		for k := 1; k < len(f) && k <= 8; k++ {
			n, _ := strconv.ParseInt(f[k], 10, 64)
			if k != 4 && k != 5 { // idle, iowait
				s.total += n
			}
			if k == 8 {
				s.steal = n
			}
		}
	}
	if relayPID > 0 {
		s.relay, _, _, _ = procTimes(relayPID)
	}
	if pm := m.postmaster(); pm > 0 {
		own, reaped, _, _ := procTimes(pm)
		s.postgres = own + reaped
		if ents, err := os.ReadDir("/proc"); err == nil {
			for _, e := range ents {
				pid, err := strconv.Atoi(e.Name())
				if err != nil {
					continue
				}
				if t, _, ppid, ok := procTimes(pid); ok && ppid == pm {
					s.postgres += t
				}
			}
		}
	}
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru) == nil {
		s.children = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return s
}

func split(a, b cpuSnap) cpuSplit {
	wall := b.at.Sub(a.at).Seconds()
	if wall <= 0 {
		return cpuSplit{}
	}
	ticks := func(d int64) float64 { return float64(d) / clkTck / wall }
	c := cpuSplit{
		Relay:    ticks(b.relay - a.relay),
		Postgres: ticks(b.postgres - a.postgres),
		Gen:      (b.self - a.self).Seconds() / wall,
		Pgbench:  (b.children - a.children).Seconds() / wall,
	}
	busy := ticks(b.total - a.total)
	c.Steal = ticks(b.steal - a.steal)
	c.Other = max(busy-c.Steal-c.Relay-c.Postgres-c.Gen-c.Pgbench, 0)
	c.Idle = max(float64(runtime.NumCPU())-busy, 0)
	return c
}

func (c cpuSplit) String() string {
	s := fmt.Sprintf("relay %.2f, postgres %.2f, loadgen %.2f", c.Relay, c.Postgres, c.Gen)
	if c.Pgbench > 0.005 {
		s += fmt.Sprintf(", pgbench %.2f", c.Pgbench)
	}
	return s + fmt.Sprintf(", other %.2f, stolen %.2f, idle %.2f", c.Other, c.Steal, c.Idle)
}

// walStats is pg_stat_wal plus the commit counter.
type walStats struct {
	records, fpi, bytes, writes, syncs int64
	syncMS                             float64
	commits                            int64
}

func readWAL(ctx context.Context, pool *pgxpool.Pool) (walStats, error) {
	var w walStats
	err := pool.QueryRow(ctx, `
		SELECT wal_records, wal_fpi, wal_bytes::bigint, wal_write, wal_sync, wal_sync_time,
		       (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database())
		FROM pg_stat_wal`).Scan(&w.records, &w.fpi, &w.bytes, &w.writes, &w.syncs, &w.syncMS, &w.commits)
	if err != nil {
		return w, fmt.Errorf("read pg_stat_wal: %w", err)
	}
	return w, nil
}

func (w walStats) sub(o walStats) walStats {
	return walStats{w.records - o.records, w.fpi - o.fpi, w.bytes - o.bytes, w.writes - o.writes,
		w.syncs - o.syncs, w.syncMS - o.syncMS, w.commits - o.commits}
}

// statsSettle lets backends publish their statistics (PostgreSQL 15 flushes
// them at most once a second).
const statsSettle = 1100 * time.Millisecond

// relayProc is one running `relay serve`.
type relayProc struct {
	cmd        *exec.Cmd
	webhookURL string
	adminURL   string
	pidFile    string
	done       chan struct{}
	logPath    string
}

func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

const benchSecret = "polar_whs_bench_secret_not_for_production"

// benchSecretsKey is RELAY_SECRETS_KEY for the multi-tenant run's secrets.
const benchSecretsKey = "rjB2P68PGi7ybnJOEAhh/KgLJcFxFqaWugQTp2FLGgA="

var relayRuns int

func startRelay(ctx context.Context, o options, label string, extra map[string]string) (*relayProc, error) {
	relayRuns++
	httpAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	adminAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "RELAY_") || strings.HasPrefix(k, "POLAR_") || strings.HasPrefix(k, "LOG_") || k == "DATABASE_URL" {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"DATABASE_URL="+o.dbURL,
		"POLAR_WEBHOOK_SECRET="+benchSecret,
		"RELAY_SECRETS_KEY="+benchSecretsKey, // the multi-tenant run's secrets stay stored
		"RELAY_HTTP_ADDR="+httpAddr,
		"RELAY_ADMIN_ADDR="+adminAddr,
		"RELAY_SHUTDOWN_TIMEOUT=5s",
		"LOG_LEVEL=warn",
		"LOG_FORMAT=json",
	)
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	env = append(env, o.relayEnv...) // the last of repeated keys wins
	r := &relayProc{
		webhookURL: "http://" + httpAddr + "/webhooks/polar",
		adminURL:   "http://" + adminAddr,
		pidFile:    filepath.Join(o.tmpDir, "relay.pid"),
		done:       make(chan struct{}),
		logPath:    filepath.Join(o.tmpDir, fmt.Sprintf("relay-%d.log", relayRuns)),
	}
	logf, err := os.Create(r.logPath)
	if err != nil {
		return nil, err
	}
	r.cmd = exec.Command(o.relayBin, "serve")
	r.cmd.Env = env
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	log.Printf("starting relay (%s)", label)
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start relay: %w", err)
	}
	go func() { r.cmd.Wait(); logf.Close(); close(r.done) }() //nolint:errcheck // exit status is in the log
	if err := os.WriteFile(r.pidFile, []byte(strconv.Itoa(r.cmd.Process.Pid)), 0o644); err != nil {
		r.stop()
		return nil, err
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-r.done:
			return nil, fmt.Errorf("relay exited during start-up:\n%s", tail(r.logPath))
		case <-ctx.Done():
			r.stop()
			return nil, ctx.Err()
		default:
		}
		resp, err := http.Get(r.adminURL + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return r, nil
			}
		}
		if time.Now().After(deadline) {
			r.stop()
			return nil, fmt.Errorf("relay not ready after 30s:\n%s", tail(r.logPath))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *relayProc) pid() int { return r.cmd.Process.Pid }

// metric reads an unlabelled metric from relay's /metrics; 0 when absent.
func (r *relayProc) metric(name string) float64 {
	resp, err := http.Get(r.adminURL + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// peakRSS is the process's high-water resident set, in bytes.
func (r *relayProc) peakRSS() int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", r.pid()))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// stop sends SIGTERM and, if relay has not stopped 15 s later, SIGKILL.
func (r *relayProc) stop() {
	defer os.Remove(r.pidFile)
	select {
	case <-r.done:
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-r.done:
	case <-time.After(15 * time.Second):
		log.Printf("relay did not stop in 15s; killing it")
		r.cmd.Process.Kill() //nolint:errcheck
		<-r.done
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Database set-up between runs.

func resetTables(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `TRUNCATE webhook_inbox, river_job`); err != nil {
		return fmt.Errorf("reset tables: %w", err)
	}
	return checkpoint(ctx, pool)
}

// resetSales puts every seeded session back to reserved and unbooked, so
// that the next processing run starts from the same state.
func resetSales(ctx context.Context, pool *pgxpool.Pool) error {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if _, err := tx.Exec(ctx, `
		UPDATE inventory_checkout_sessions SET status = 'reserved', finance_transaction_id = NULL,
			polar_order_id = NULL, polar_status = NULL, refunded_amount = 0, completed_at = NULL
		WHERE status <> 'reserved' OR finance_transaction_id IS NOT NULL`); err != nil {
		return fmt.Errorf("reset sessions: %w", err)
	}
	// No session points at a booking any more: without the foreign key's
	// check, which scans the sessions for each booking deleted (their
	// finance_transaction_id has no index), tens of thousands delete in
	// moments rather than minutes.
	if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
		return fmt.Errorf("reset bookings: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM wallet_transactions`); err != nil {
		return fmt.Errorf("reset bookings: %w", err)
	}
	return tx.Commit(ctx)
}

// checkpoint starts every run just after a checkpoint, so each pays the same
// full-page writes.
func checkpoint(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `VACUUM ANALYZE`); err != nil {
		return fmt.Errorf("vacuum: %w", err)
	}
	if _, err := pool.Exec(ctx, `CHECKPOINT`); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// pauseQueue pauses River's default queue before relay starts (a producer
// reads the pause at start), so the ack runs measure the receiver alone.
func pauseQueue(ctx context.Context, pool *pgxpool.Pool, paused bool) error {
	var err error
	if paused {
		_, err = pool.Exec(ctx, `
			INSERT INTO river_queue (name, created_at, metadata, paused_at, updated_at)
			VALUES ('default', now(), '{}', now(), now())
			ON CONFLICT (name) DO UPDATE SET paused_at = now(), updated_at = now()`)
	} else {
		_, err = pool.Exec(ctx, `UPDATE river_queue SET paused_at = NULL, updated_at = now()`)
	}
	if err != nil {
		return fmt.Errorf("pause queue: %w", err)
	}
	return nil
}

type session struct{ id, ws, checkout string }

// seed creates storefront workspaces with a default wallet, a category and
// a product, and n reserved checkout sessions of two lines each, spread
// over them.
func seed(ctx context.Context, pool *pgxpool.Pool, n, workspaces int) ([]session, error) {
	stmts := []string{
		`INSERT INTO workspaces (name) SELECT 'Bench shop ' || g FROM generate_series(1, $1::int) g`,
		`INSERT INTO workspace_wallets (ws_id, name, currency) SELECT id, 'Main', 'USD' FROM workspaces`,
		`INSERT INTO workspace_configs (ws_id, id, value) SELECT ws_id, 'default_wallet_id', id::text FROM workspace_wallets`,
		`INSERT INTO transaction_categories (ws_id, name) SELECT id, 'Sales' FROM workspaces`,
		`INSERT INTO workspace_products (ws_id, name, finance_category_id) SELECT ws_id, 'Ceramic mug', id FROM transaction_categories`,
		`INSERT INTO inventory_checkout_sessions (ws_id, status, total_amount, currency, polar_checkout_id)
		 SELECT w.id, 'reserved', 4950, 'usd', 'chk_bench_' || g
		 FROM generate_series(1, $2::int) g
		 JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM workspaces) w ON w.n = g % $1::int`,
		`INSERT INTO inventory_checkout_lines (checkout_session_id, product_id, quantity, unit_amount)
		 SELECT s.id, p.id, q.qty, 1500
		 FROM inventory_checkout_sessions s JOIN workspace_products p ON p.ws_id = s.ws_id
		 CROSS JOIN (VALUES (2), (1)) q(qty)`,
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	for i, sql := range stmts {
		var args []any
		switch i {
		case 0:
			args = []any{workspaces}
		case 5:
			args = []any{workspaces, n}
		}
		if _, err := tx.Exec(ctx, sql, args...); err != nil {
			return nil, fmt.Errorf("seed: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	rows, err := pool.Query(ctx, `SELECT id::text, ws_id::text, polar_checkout_id FROM inventory_checkout_sessions ORDER BY created_at, id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []session
	for rows.Next() {
		var s session
		if err := rows.Scan(&s.id, &s.ws, &s.checkout); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(out) != n {
		return nil, errors.New("seed: wrong number of sessions")
	}
	return out, nil
}

// seedFlash adds n reserved sessions, like seed's, all in the first
// workspace seed made: the shop of a flash sale.
func seedFlash(ctx context.Context, pool *pgxpool.Pool, n int) ([]session, error) {
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	rows, err := tx.Query(ctx, `
		WITH ws AS (SELECT id FROM workspaces WHERE name LIKE 'Bench shop %' ORDER BY id LIMIT 1),
		s AS (
			INSERT INTO inventory_checkout_sessions (ws_id, status, total_amount, currency, polar_checkout_id)
			SELECT ws.id, 'reserved', 4950, 'usd', 'chk_bench_flash_' || g FROM ws, generate_series(1, $1::int) g
			RETURNING id, ws_id, polar_checkout_id)
		SELECT id::text, ws_id::text, polar_checkout_id FROM s`, n)
	if err != nil {
		return nil, fmt.Errorf("seed flash sale: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (session, error) {
		var s session
		err := row.Scan(&s.id, &s.ws, &s.checkout)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("seed flash sale: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO inventory_checkout_lines (checkout_session_id, product_id, quantity, unit_amount)
		SELECT s.id, p.id, q.qty, 1500
		FROM inventory_checkout_sessions s JOIN workspace_products p ON p.ws_id = s.ws_id
		CROSS JOIN (VALUES (2), (1)) q(qty)
		WHERE s.polar_checkout_id LIKE 'chk_bench_flash_%'`); err != nil {
		return nil, fmt.Errorf("seed flash sale lines: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	if len(out) != n {
		return nil, errors.New("seed flash sale: wrong number of sessions")
	}
	return out, nil
}

// seedClosed adds n reserved sessions, like seed's, spread over the first
// k workspaces seed made (seeding them first if the processing runs did
// not): the closed-loop run's.
func seedClosed(ctx context.Context, pool *pgxpool.Pool, n, k int) ([]session, error) {
	var shops int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM workspaces WHERE name LIKE 'Bench shop %'`).Scan(&shops); err != nil {
		return nil, err
	}
	if shops < k {
		if _, err := seed(ctx, pool, k, k); err != nil {
			return nil, err
		}
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	rows, err := tx.Query(ctx, `
		WITH ws AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM workspaces WHERE name LIKE 'Bench shop %' ORDER BY id LIMIT $2),
		s AS (
			INSERT INTO inventory_checkout_sessions (ws_id, status, total_amount, currency, polar_checkout_id)
			SELECT ws.id, 'reserved', 4950, 'usd', 'chk_bench_closed_' || g
			FROM generate_series(1, $1::int) g JOIN ws ON ws.n = g % $2::int
			RETURNING id, ws_id, polar_checkout_id)
		SELECT id::text, ws_id::text, polar_checkout_id FROM s`, n, k)
	if err != nil {
		return nil, fmt.Errorf("seed closed loop: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (session, error) {
		var s session
		err := row.Scan(&s.id, &s.ws, &s.checkout)
		return s, err
	})
	if err != nil {
		return nil, fmt.Errorf("seed closed loop: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO inventory_checkout_lines (checkout_session_id, product_id, quantity, unit_amount)
		SELECT s.id, p.id, q.qty, 1500
		FROM inventory_checkout_sessions s JOIN workspace_products p ON p.ws_id = s.ws_id
		CROSS JOIN (VALUES (2), (1)) q(qty)
		WHERE s.polar_checkout_id LIKE 'chk_bench_closed_%'`); err != nil {
		return nil, fmt.Errorf("seed closed loop lines: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	if len(out) != n {
		return nil, errors.New("seed closed loop: wrong number of sessions")
	}
	return out, nil
}

// seedTenants creates n workspaces, each with a production secret of its
// own stored as relay stores one (encrypted with benchSecretsKey).
func seedTenants(ctx context.Context, pool *pgxpool.Pool, n int) ([]tenant, error) {
	keys, err := endpoints.ParseKeyring(func(k string) string {
		if k == endpoints.EnvKey {
			return benchSecretsKey
		}
		return ""
	})
	if err != nil {
		return nil, err
	}
	store := endpoints.NewStore(pool, keys)
	rows, err := pool.Query(ctx, `INSERT INTO workspaces (name) SELECT 'Bench tenant ' || g FROM generate_series(1, $1::int) g RETURNING id::text`, n)
	if err != nil {
		return nil, fmt.Errorf("seed tenants: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("seed tenants: %w", err)
	}
	log.Printf("seeding %d workspaces with endpoint secrets of their own", n)
	out := make([]tenant, len(ids))
	for i, ws := range ids {
		out[i] = tenant{ws: ws, secret: fmt.Sprintf("polar_whs_bench_tenant_%06d_secret", i)}
		if _, err := store.Add(ctx, ws, endpoints.Production, out[i].secret); err != nil {
			return nil, fmt.Errorf("seed tenant secret: %w", err)
		}
	}
	return out, nil
}
