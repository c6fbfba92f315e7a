package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/testkit"
)

// haCluster is etcd and two Patroni-managed PostgreSQL 15 nodes on
// 127.0.0.1, with Patroni's default timings (ttl 30 s, loop_wait 10 s,
// retry_timeout 10 s). Every port is chosen at run time.
type haCluster struct {
	dir         string
	etcd        *exec.Cmd
	etcdClient  string
	nodes       []*haNode
	asPostgres  *syscall.Credential // nil when not root
	synchronous bool
}

// haNode is one Patroni process and the PostgreSQL server it manages.
type haNode struct {
	name     string
	config   string // patroni.yml
	data     string
	pgPort   int
	restPort int
	cmd      *exec.Cmd
	exited   chan struct{}
	logs     *testkit.SyncBuffer
}

// haTools are the programs the cluster needs: Debian's patroni and
// etcd-server packages (make test installs them).
var haTools = []string{"patroni", "patronictl", "etcd"}

// pgBinDir is PostgreSQL's server binaries directory.
func pgBinDir(t *testing.T) string {
	t.Helper()
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	if len(dirs) == 0 {
		t.Fatal("no PostgreSQL server binaries under /usr/lib/postgresql")
	}
	return filepath.Dir(dirs[len(dirs)-1])
}

// startHACluster starts etcd and the nodes, waits until the first is the
// leader and the second its synchronous standby, and stops all of it when t
// ends.
func startHACluster(t *testing.T, synchronous bool) *haCluster {
	t.Helper()
	for _, tool := range haTools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: make test installs Debian's patroni and etcd-server (scripts/apt-install.sh)", tool)
		}
	}
	dir, err := os.MkdirTemp("", "relay-ha-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := &haCluster{dir: dir, synchronous: synchronous}
	if os.Getuid() == 0 { // initdb refuses root: PostgreSQL and Patroni run as postgres
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatal(err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		c.asPostgres = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	t.Cleanup(c.stop)

	c.etcdClient = testkit.FreeAddr(t)
	peer := testkit.FreeAddr(t)
	c.etcd = exec.Command("etcd", "--name", "e0", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://"+c.etcdClient, "--advertise-client-urls", "http://"+c.etcdClient,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "e0=http://"+peer, "--log-level", "warn")
	etcdLogs := &testkit.SyncBuffer{}
	c.etcd.Stdout, c.etcd.Stderr = etcdLogs, etcdLogs
	c.etcd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := c.etcd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("etcd logs:\n%s", tail(etcdLogs.String(), 20))
		}
	})

	bin := pgBinDir(t)
	for i := range 2 {
		n := &haNode{name: fmt.Sprintf("pg%d", i), logs: &testkit.SyncBuffer{}}
		n.pgPort = freePort()
		n.restPort = freePort()
		home := filepath.Join(dir, n.name)
		if err := os.Mkdir(home, 0o700); err != nil {
			t.Fatal(err)
		}
		n.data = filepath.Join(home, "data")
		n.config = filepath.Join(home, "patroni.yml")
		if err := os.WriteFile(n.config, []byte(patroniConfig(n, home, bin, c.etcdClient, synchronous)), 0o600); err != nil {
			t.Fatal(err)
		}
		if c.asPostgres != nil {
			for _, p := range []string{home, n.config} {
				if err := os.Chown(p, int(c.asPostgres.Uid), int(c.asPostgres.Gid)); err != nil {
					t.Fatal(err)
				}
			}
		}
		c.nodes = append(c.nodes, n)
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("%s (patroni) logs:\n%s", n.name, tail(n.logs.String(), 30))
			}
		})
	}
	// The first node bootstraps the cluster; the second joins it as a
	// standby once there is a leader to copy.
	c.startNode(t, c.nodes[0])
	c.waitRole(t, c.nodes[0], "leader", 60*time.Second)
	c.startNode(t, c.nodes[1])
	c.waitRole(t, c.nodes[1], standbyRole(synchronous), 90*time.Second)
	return c
}

// standbyRole is Patroni's name for a streaming standby's role.
func standbyRole(synchronous bool) string {
	if synchronous {
		return "sync_standby"
	}
	return "replica"
}

// patroniConfig is a node's patroni.yml: Patroni's defaults, but for the
// addresses, the data directory and the replication mode. Passwords are set
// because Patroni requires them; pg_hba trusts 127.0.0.1.
func patroniConfig(n *haNode, home, bin, etcd string, synchronous bool) string {
	return fmt.Sprintf(`scope: relay-fault
name: %[1]s
restapi:
  listen: 127.0.0.1:%[2]d
  connect_address: 127.0.0.1:%[2]d
etcd3:
  hosts: %[3]s
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    synchronous_mode: %[4]t
    postgresql:
      use_pg_rewind: true
      parameters:
        max_connections: 300
        wal_log_hints: "on"
  initdb:
    - encoding: UTF8
    - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1:%[5]d
  connect_address: 127.0.0.1:%[5]d
  data_dir: %[6]s
  bin_dir: %[7]s
  pgpass: %[8]s/pgpass
  authentication:
    superuser:
      username: postgres
      password: postgres
    replication:
      username: replicator
      password: replicator
    rewind:
      username: postgres
      password: postgres
  parameters:
    unix_socket_directories: %[8]s
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 trust
    - host all all 127.0.0.1/32 trust
`, n.name, n.restPort, etcd, synchronous, n.pgPort, n.data, bin, home)
}

func (c *haCluster) startNode(t *testing.T, n *haNode) {
	t.Helper()
	n.cmd = exec.Command("patroni", n.config)
	n.cmd.Dir = filepath.Dir(n.config)
	n.cmd.Stdout, n.cmd.Stderr = n.logs, n.logs
	// Its own process group: kill -9 takes Patroni and what it runs.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: c.asPostgres}
	// PostgreSQL, which Patroni starts in a session of its own, holds
	// Patroni's output open: Patroni has exited once it has, not once the
	// server has too.
	n.cmd.WaitDelay = time.Second
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("start patroni %s: %v", n.name, err)
	}
	n.exited = make(chan struct{})
	go func() {
		n.cmd.Wait() //nolint:errcheck // a killed node's exit is expected
		close(n.exited)
	}()
}

// member is one node as Patroni's REST API describes the cluster.
type member struct {
	Name  string `json:"name"`
	Role  string `json:"role"`
	State string `json:"state"`
}

// members asks node n's REST API for the cluster's members.
func (c *haCluster) members(n *haNode) ([]member, error) {
	client := http.Client{Timeout: 2 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/cluster", n.restPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Members []member `json:"members"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	return body.Members, nil
}

// role is node n's role as a live node sees it ("" when unknown).
func (c *haCluster) role(n *haNode) string {
	for _, asked := range c.nodes {
		if !asked.alive() {
			continue
		}
		ms, err := c.members(asked)
		if err != nil {
			continue
		}
		for _, m := range ms {
			if m.Name == n.name && m.State != "stopped" && m.State != "starting" {
				return m.Role
			}
		}
		return ""
	}
	return ""
}

func (n *haNode) alive() bool {
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

// waitRole polls until n has role ("leader", "sync_standby", "replica").
func (c *haCluster) waitRole(t *testing.T, n *haNode, role string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for c.role(n) != role {
		if time.Now().After(deadline) {
			t.Fatalf("%s is not %s within %v (role %q)", n.name, role, within, c.role(n))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// leader is the node that is the leader now, or nil.
func (c *haCluster) leader() *haNode {
	for _, n := range c.nodes {
		if n.alive() && c.role(n) == "leader" {
			return n
		}
	}
	return nil
}

// other is the node that is not n.
func (c *haCluster) other(n *haNode) *haNode {
	if c.nodes[0] == n {
		return c.nodes[1]
	}
	return c.nodes[0]
}

// url is a DATABASE_URL naming both nodes, which connects to the one that
// takes writes.
func (c *haCluster) url(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d,127.0.0.1:%d/%s?sslmode=disable&target_session_attrs=read-write",
		c.nodes[0].pgPort, c.nodes[1].pgPort, database)
}

// nodeURL connects to node n only, whatever its role.
func (c *haCluster) nodeURL(n *haNode, database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", n.pgPort, database)
}

// newDatabase creates and migrates a database on the cluster.
func (c *haCluster) newDatabase(t *testing.T, name string) string {
	t.Helper()
	conn := connect(t, c.url("postgres"))
	if _, err := conn.Exec(context.Background(), "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	// pgx tries the hosts in order and gives up at one that lacks the
	// database: wait until each has replayed its creation.
	for _, n := range c.nodes {
		deadline := time.Now().Add(30 * time.Second)
		for n.alive() {
			conn, err := pgx.Connect(context.Background(), c.nodeURL(n, name))
			if err == nil {
				conn.Close(context.Background())
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("database %s not on %s within 30s: %v", name, n.name, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	url := c.url(name)
	cmd := exec.Command(suite.relay, "migrate")
	cmd.Env = []string{"DATABASE_URL=" + url}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("relay migrate: %v\n%s", err, out)
	}
	return url
}

// switchover asks Patroni to hand the leader's role to the other node, as
// an operator would for maintenance.
func (c *haCluster) switchover(t *testing.T, from, to *haNode) {
	t.Helper()
	out, err := exec.Command("patronictl", "-c", from.config, "switchover", "--force",
		"--leader", from.name, "--candidate", to.name).CombinedOutput()
	if err != nil {
		t.Fatalf("patronictl switchover: %v\n%s", err, out)
	}
}

// kill9 kills node n's Patroni and PostgreSQL together, every process of
// both, as when its machine dies: no shutdown, no handover.
func (c *haCluster) kill9(t *testing.T, n *haNode) {
	t.Helper()
	pids := []int{-n.cmd.Process.Pid} // Patroni's process group
	if pm := postmasterPID(n); pm > 0 {
		pids = append(pids, pm)
		pids = append(pids, children(pm)...)
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck // gone already is fine
	}
	<-n.exited
}

// postmasterPID reads the PostgreSQL server's pid from its data directory.
func postmasterPID(n *haNode) int {
	b, err := os.ReadFile(filepath.Join(n.data, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0])
	return pid
}

// children lists the processes whose parent is pid.
func children(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, s := range stats {
		b, err := os.ReadFile(s)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces, so read after ')'.
		fields := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(s)))
			out = append(out, child)
		}
	}
	return out
}

// stop kills everything the cluster started.
func (c *haCluster) stop() {
	for _, n := range c.nodes {
		if n.alive() {
			syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck
		}
		if pm := postmasterPID(n); pm > 0 {
			for _, pid := range append([]int{pm}, children(pm)...) {
				syscall.Kill(pid, syscall.SIGKILL) //nolint:errcheck
			}
		}
	}
	for _, n := range c.nodes {
		if n.cmd != nil {
			<-n.exited
		}
	}
	if c.etcd != nil && c.etcd.Process != nil {
		c.etcd.Process.Kill() //nolint:errcheck
		c.etcd.Wait()         //nolint:errcheck
	}
	os.RemoveAll(c.dir)
}

// relayDefaults undo every setting the suite shortens: the HA scenarios
// run relay as it ships, with the spool on.
var relayDefaults = append([]string{"RELAY_ACK_TIMEOUT=", "RELAY_RETRY_BASE=", "RELAY_WORKERS=", "RELAY_SHUTDOWN_TIMEOUT="}, riverDefaults...)

// Two relay replicas with their spools on, under a steady load of signed
// paid orders, on a two-node Patroni cluster with synchronous replication
// and Patroni's default timings: first a planned switchover, then the loss
// of the primary's machine (kill -9 of its Patroni and PostgreSQL). Neither
// may cost a non-2xx answer, a lost sale or a sale booked twice; each
// reports how long bookings stopped.
func TestPatroniFailovers(t *testing.T) {
	c := startHACluster(t, true)
	t.Run("switchover", func(t *testing.T) {
		haScenario(t, c, "switchover", func(t *testing.T, from, to *haNode) time.Time {
			at := time.Now()
			c.switchover(t, from, to)
			return at
		})
	})
	if t.Failed() {
		return
	}
	// The former primary rejoins as the synchronous standby, the one
	// Patroni may promote when the primary is lost.
	c.waitRole(t, c.other(c.leader()), "sync_standby", 90*time.Second)
	t.Run("primary lost", func(t *testing.T) {
		haScenario(t, c, "primary_lost", func(t *testing.T, from, _ *haNode) time.Time {
			c.kill9(t, from)
			return time.Now()
		})
	})
}

// haRate is the steady load, in events a second (a third of them create an
// order, two thirds pay it).
const haRate = 20

// haScenario runs the load on two relay replicas, applies fault to the
// leader (it returns the moment of the fault), and checks and reports what
// relay made of it.
func haScenario(t *testing.T, c *haCluster, name string, fault func(t *testing.T, from, to *haNode) time.Time) {
	ctx := context.Background()
	db := c.newDatabase(t, "ha_"+name)
	// Enough sales for two minutes of load; the load stops once the new
	// primary has booked for a few seconds.
	sales := seedSales(t, db, name, 2*60*haRate/3)
	from := c.leader()
	if from == nil {
		t.Fatal("no leader before the load")
	}
	to := c.other(from)
	// One sale's jobs are held running on the primary when the fault
	// strikes: the test locks its session row there, so its paid events'
	// jobs wait on the lock until the primary goes.
	held := sales[30]
	lock := connect(t, c.nodeURL(from, "ha_"+name))
	if _, err := lock.Exec(ctx, `BEGIN`); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `SELECT 1 FROM inventory_checkout_sessions WHERE id = $1 FOR UPDATE`, held[0].session); err != nil {
		t.Fatal(err)
	}
	var relays []*process
	for _, r := range []string{"relay-a", "relay-b"} {
		relays = append(relays, startRelay(t, r, db, append([]string{"RELAY_SPOOL_DIR=" + t.TempDir()}, relayDefaults...)...))
	}
	s := newSender(relays...)
	stop := make(chan struct{})
	done, sent := s.paceUntil(sales, haRate, stop)
	stopLoad := func() int {
		select {
		case <-stop:
		default:
			close(stop)
		}
		<-done
		return int(sent.Load())
	}
	defer stopLoad()

	// The fault comes about 5 s into the load, once the held sale's paid
	// event is being worked.
	waitRunningOn(t, db, held[1].id)
	standby := connect(t, c.nodeURL(to, "ha_"+name))
	// What the standby has of the jobs running on the primary, once it
	// has replayed the held one's start: the jobs the fault leaves
	// running, which the new primary must hand out again.
	var leftRunning int
	for deadline := time.Now().Add(5 * time.Second); ; {
		if err := standby.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'running'
			AND kind IN ('polar_event', 'polar_event_batch')`).Scan(&leftRunning); err != nil {
			t.Fatal(err)
		}
		if leftRunning > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	at := fault(t, from, to)

	// The standby is promoted, then books its first sale.
	var promoted, booked time.Duration
	var before int
	for booked == 0 {
		if time.Since(at) > 120*time.Second {
			t.Fatalf("%s: no booking on %s within 120s (promoted after %v)", name, to.name, promoted)
		}
		time.Sleep(50 * time.Millisecond)
		if promoted == 0 {
			var recovery bool
			if err := standby.QueryRow(ctx, `SELECT pg_is_in_recovery()`).Scan(&recovery); err != nil {
				t.Fatal(err)
			}
			if recovery {
				continue
			}
			promoted = time.Since(at)
			if err := standby.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions WHERE source_kind = 'sale'`).Scan(&before); err != nil {
				t.Fatal(err)
			}
			continue
		}
		var n int
		if err := standby.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions WHERE source_kind = 'sale'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > before {
			booked = time.Since(at)
		}
	}
	time.Sleep(5 * time.Second) // a tail of load on the new primary
	sales = sales[:stopLoad()]

	// River resumes on the new primary: a leader, whose periodic job (the
	// pending-bookings pass, every 10 s) is enqueued there.
	var leader, periodic time.Duration
	for leader == 0 || periodic == 0 {
		var leaders, passes int
		if err := standby.QueryRow(ctx, `SELECT (SELECT count(*) FROM river_leader WHERE expires_at > now()),
			(SELECT count(*) FROM river_job WHERE kind = 'post_pending_bookings' AND created_at > $1)`, at.Add(promoted)).Scan(&leaders, &passes); err != nil {
			t.Fatal(err)
		}
		if leaders > 0 && leader == 0 {
			leader = time.Since(at)
		}
		if passes > 0 && periodic == 0 {
			periodic = time.Since(at)
		}
		if time.Since(at) > 120*time.Second {
			t.Fatalf("%s: River on the new primary: leader=%v periodic job=%v within 120s", name, leader > 0, periodic > 0)
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, r := range relays {
		deadline := time.Now().Add(60 * time.Second)
		for metricSum(t, r, "relay_spool_events", "") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s's spool not drained within 60s", r.name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if !c.synchronous {
		reportAsyncLoss(t, name, db, s, relays, promoted)
		return
	}
	// The jobs left running on the old primary are worked again on the new
	// one (River's rescuer) and, with every other, complete once.
	f := settle(t, "patroni "+name, db, s, sales)
	if leftRunning == 0 {
		t.Errorf("no webhook job was running on the old primary at the %s, though the held sale's was", name)
	}
	var spooled float64
	for _, r := range relays {
		spooled += metricSum(t, r, "relay_webhooks_received_total", `outcome="spooled"`)
	}
	var retried int
	if err := standby.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind IN ('polar_event', 'polar_event_batch') AND attempt > 1`).Scan(&retried); err != nil {
		t.Fatal(err)
	}
	report(t, fmt.Sprintf("%-24s requests=%d non_2xx=%d transport_errors=%d spooled=%.0f lost=%d double=%d promoted_after=%.1fs first_booking_on_new_primary_after=%.1fs river_leader_after=%.1fs periodic_job_after=%.1fs webhook_jobs_running_at_fault=%d webhook_jobs_retried=%d slowest_answer=%.1fs settings=patroni defaults (ttl 30s, loop_wait 10s, retry_timeout 10s), synchronous_mode, relay defaults + spool, %d events/s",
		"patroni "+strings.ReplaceAll(name, "_", " "), f.requests, f.unavailable+f.other, f.transport, spooled, f.lost, f.double,
		promoted.Seconds(), booked.Seconds(), leader.Seconds(), periodic.Seconds(), leftRunning, retried,
		time.Duration(s.tally.maxLatency.Load()).Seconds(), haRate))
	if f.unavailable+f.other != 0 || f.transport != 0 {
		t.Errorf("%d answers were not 2xx (%d 503s), %d requests failed", f.unavailable+f.other, f.unavailable, f.transport)
	}
	// A 200 comes within the ack timeout (5 s) and the spool's append (2 s).
	checkPatience(t, s, 7*time.Second+time.Second)
	for _, r := range relays {
		r.terminate(t)
	}
}

// With asynchronous replication (synchronous_mode: false) PostgreSQL
// acknowledges a commit before the standby has it, so the commits of the
// last moment before the primary's machine dies are not on the standby
// Patroni promotes: relay answered 200 for webhooks that are gone, and no
// spool holds them. The window is milliseconds on one machine; here the
// primary's WAL sender is held for 2 s first (a slow link to the standby)
// so that the loss can be counted. The same fault with synchronous_mode
// loses nothing: the commits wait for the standby, fail with the primary,
// and relay spools them. Run with RELAY_FAULT_ASYNC=1; it is not part of
// make test, and docs/reliability.md records a run.
func TestPatroniAsyncFailoverLosesAcknowledged(t *testing.T) {
	if os.Getenv("RELAY_FAULT_ASYNC") == "" {
		t.Skip("RELAY_FAULT_ASYNC is not set: shows what asynchronous replication loses")
	}
	for _, synchronous := range []bool{false, true} {
		name := "async_held_primary_lost"
		if synchronous {
			name = "sync_held_primary_lost"
		}
		t.Run(name, func(t *testing.T) {
			c := startHACluster(t, synchronous)
			haScenario(t, c, name, func(t *testing.T, from, _ *haNode) time.Time {
				conn := connect(t, c.nodeURL(from, "postgres"))
				var sender int
				if err := conn.QueryRow(context.Background(), `SELECT pid FROM pg_stat_replication LIMIT 1`).Scan(&sender); err != nil {
					t.Fatalf("the primary's WAL sender: %v", err)
				}
				if err := syscall.Kill(sender, syscall.SIGSTOP); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * time.Second)
				c.kill9(t, from)
				return time.Now()
			})
		})
	}
}

// reportAsyncLoss counts the webhooks relay acknowledged that are not in
// the promoted primary's inbox, and the paid orders that are not booked.
func reportAsyncLoss(t *testing.T, name, db string, s *sender, relays []*process, promoted time.Duration) {
	t.Helper()
	conn := connect(t, db)
	acked := s.ackedIDs()
	var stored int
	if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox WHERE webhook_id = ANY($1)`, acked).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	var spooled float64
	for _, r := range relays {
		spooled += metricSum(t, r, "relay_webhooks_received_total", `outcome="spooled"`)
	}
	report(t, fmt.Sprintf("%-24s requests=%d acknowledged=%d acknowledged_but_lost=%d spooled=%.0f promoted_after=%.1fs settings=patroni defaults, synchronous_mode: false, WAL sender held 2 s before the kill",
		"patroni async lost", s.tally.requests.Load(), len(acked), len(acked)-stored, spooled, promoted.Seconds()))
	if len(acked) == stored {
		t.Error("nothing acknowledged was lost: the fault missed the window it shows")
	}
	for _, r := range relays {
		r.terminate(t)
	}
}
