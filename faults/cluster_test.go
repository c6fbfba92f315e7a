package faults

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/testkit"
)

// The suite's own PostgreSQL cluster and relay binary, shared by the
// scenarios, which run one after another: scenario 2 restarts the cluster.
var suite struct {
	root    string // repository root
	pgdata  string
	pgPort  int
	relay   string // built binary
	figures *os.File
}

func TestMain(m *testing.M) {
	code, err := runSuite(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func runSuite(m *testing.M) (int, error) {
	wd, err := os.Getwd()
	if err != nil {
		return 0, err
	}
	suite.root = filepath.Dir(wd)
	dir, err := os.MkdirTemp("", "relay-faults-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil { // the postgres user must reach its data directory
		return 0, err
	}

	suite.relay = filepath.Join(dir, "relay")
	build := exec.Command("go", "build", "-o", suite.relay, "./cmd/relay")
	build.Dir = suite.root
	if out, err := build.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("build relay: %v\n%s", err, out)
	}

	suite.pgdata = filepath.Join(dir, "pg")
	suite.pgPort = freePort()
	if err := pgctl("start", suite.pgdata, strconv.Itoa(suite.pgPort)); err != nil {
		return 0, err
	}
	defer pgctl("stop", suite.pgdata) //nolint:errcheck

	if path := os.Getenv("RELAY_FAULT_REPORT"); path != "" {
		if suite.figures, err = os.Create(path); err != nil {
			return 0, err
		}
		defer suite.figures.Close()
	}
	return m.Run(), nil
}

func pgctl(args ...string) error {
	cmd := exec.Command(filepath.Join(suite.root, "scripts", "pg.sh"), args...)
	cmd.Env = append(os.Environ(), "PG_EXTRA_OPTS=-c fsync=off -c full_page_writes=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func pgURL(database string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", suite.pgPort, database)
}

// crashPostgres stops the server the way a power cut of the database
// process would: no shutdown checkpoint, crash recovery at the next start.
func crashPostgres(t *testing.T) {
	t.Helper()
	if err := pgctl("crash", suite.pgdata); err != nil {
		t.Fatal(err)
	}
}

// stopPostgres shuts the server down as an operator or a failover would
// (pg_ctl stop -m fast): connections are cut, new ones refused.
func stopPostgres(t *testing.T) {
	t.Helper()
	if err := pgctl("stop", suite.pgdata); err != nil {
		t.Fatal(err)
	}
}

// startPostgres starts the server again, with the options it had.
func startPostgres(t *testing.T) {
	t.Helper()
	if err := pgctl("start", suite.pgdata, strconv.Itoa(suite.pgPort)); err != nil {
		t.Fatal(err)
	}
}

// newDatabase creates and migrates a database for one scenario.
func newDatabase(t *testing.T, name string) string {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, pgURL("postgres"))
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	url := pgURL(name)
	cmd := exec.Command(suite.relay, "migrate")
	cmd.Env = []string{"DATABASE_URL=" + url}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("relay migrate: %v\n%s", err, out)
	}
	return url
}

// connect opens a connection to url that closes when t ends.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func freePort() int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// process is one running `relay serve`.
type process struct {
	name      string
	cmd       *exec.Cmd
	env       []string
	hookURL   string
	adminURL  string
	logs      *testkit.SyncBuffer
	exited    chan struct{}
	exitErr   error
	restarted int
}

const secret = "polar_whs_fault_suite"

// startRelay runs `relay serve` with the suite's settings plus extra, and
// waits until it is ready.
func startRelay(t *testing.T, name, dbURL string, extra ...string) *process {
	t.Helper()
	httpAddr, adminAddr := testkit.FreeAddr(t), testkit.FreeAddr(t)
	p := &process{
		name:     name,
		hookURL:  "http://" + httpAddr + "/webhooks/polar",
		adminURL: "http://" + adminAddr,
		env: append([]string{
			"DATABASE_URL=" + dbURL,
			"POLAR_WEBHOOK_SECRET=" + secret,
			"RELAY_HTTP_ADDR=" + httpAddr,
			"RELAY_ADMIN_ADDR=" + adminAddr,
			"RELAY_ACK_TIMEOUT=2s",
			"RELAY_RETRY_BASE=100ms",
			"RELAY_JOB_TIMEOUT=2s",
			"RELAY_RESCUE_AFTER=3s",
			"RELAY_WORKERS=16",
			"RELAY_SHUTDOWN_TIMEOUT=10s",
			"LOG_LEVEL=warn",
			"LOG_FORMAT=text",
		}, extra...),
		logs: &testkit.SyncBuffer{},
	}
	p.start(t)
	t.Cleanup(func() {
		if p.running() {
			p.cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s logs:\n%s", p.name, tail(p.logs.String(), 60))
		}
	})
	return p
}

func (p *process) start(t *testing.T) {
	t.Helper()
	p.cmd = exec.Command(suite.relay, "serve")
	p.cmd.Env = p.env
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	// Should this test binary die (a timeout panic), its relays die with it.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.exited = make(chan struct{})
	go func() {
		p.exitErr = p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if !p.running() {
			t.Fatalf("%s exited at start: %v\n%s", p.name, p.exitErr, p.logs.String())
		}
		resp, err := http.Get(p.adminURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after 30s:\n%s", p.name, p.logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *process) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// kill9 ends the process the way a crash or an OOM kill does.
func (p *process) kill9(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.exited
}

// signal sends sig, e.g. SIGSTOP to freeze the process and SIGCONT to let
// it go on.
func (p *process) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
}

// restart starts the process again on the same addresses.
func (p *process) restart(t *testing.T) {
	t.Helper()
	p.restarted++
	p.start(t)
}

// terminate sends SIGTERM and requires a clean exit.
func (p *process) terminate(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not exit within 30s of SIGTERM", p.name)
	}
	if p.exitErr != nil {
		t.Errorf("%s exited with %v after SIGTERM, want status 0", p.name, p.exitErr)
	}
}

func tail(s string, lines int) string {
	parts := strings.Split(s, "\n")
	if len(parts) > lines {
		parts = parts[len(parts)-lines:]
	}
	return strings.Join(parts, "\n")
}
