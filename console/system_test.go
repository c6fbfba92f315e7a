package console_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/console"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/receiver"
)

const (
	secret         = "polar_whs_console_test_secret"
	user, password = "operator", "console-test-password"
)

// system is relay's handler stack on one real database: the receiver, a
// River client working the queue, and the admin handler with the console.
type system struct {
	pool    *pgxpool.Pool
	client  *river.Client[pgx.Tx]
	hookURL string
	admin   *httptest.Server // replica 1's admin listener
	logger  *slog.Logger
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startSystem starts relay with jobs that get maxAttempts attempts.
func startSystem(t *testing.T, maxAttempts int) *system {
	t.Helper()
	s := &system{pool: testdb.NewPool(t), logger: testLogger()}
	reg := prometheus.NewRegistry()
	jobMetrics, err := jobs.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	workers := river.NewWorkers()
	eventWorker := jobs.NewEventWorker(s.pool, jobMetrics, jobs.Options{Logger: s.logger, RetryBase: 20 * time.Millisecond})
	river.AddWorker(workers, eventWorker)
	river.AddWorker(workers, jobs.NewBatchWorker(eventWorker))
	s.client = testkit.StartRiver(t, s.pool, &river.Config{
		Logger:      s.logger,
		MaxAttempts: maxAttempts,
		Queues:      map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 4}},
		Workers:     workers,
	})
	verifier, err := polar.NewVerifier([]string{secret})
	if err != nil {
		t.Fatal(err)
	}
	recvMetrics, err := receiver.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	hooks := httptest.NewServer(receiver.New(s.pool, s.client, verifier, recvMetrics, receiver.Options{Logger: s.logger}))
	t.Cleanup(hooks.Close)
	s.hookURL = hooks.URL
	s.admin = httptest.NewServer(s.replica(t, console.Options{}))
	t.Cleanup(s.admin.Close)
	return s
}

// replica returns another replica's admin handler with its own console
// and poller on the same database, as another relay process has.
func (s *system) replica(t *testing.T, opts console.Options) http.Handler {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = s.logger
	}
	if opts.PollInterval == 0 {
		opts.PollInterval = 100 * time.Millisecond
	}
	con, err := console.New(&admin.Ops{Pool: s.pool, Client: s.client}, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); con.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	h, err := admin.NewHandler(s.pool, s.client, admin.Options{
		Credentials: admin.Credentials{User: user, Password: password}, Logger: s.logger, Console: con})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// send delivers body as Polar would, as `relay send` does.
func (s *system) send(t *testing.T, webhookID string, body []byte) {
	t.Helper()
	code, err := testkit.Post(http.DefaultClient, s.hookURL, secret, webhookID, body)
	if err != nil || code != http.StatusOK {
		t.Fatalf("deliver %s: status %d, error %v; want 200", webhookID, code, err)
	}
}

// do sends an authenticated request to the admin server at base.
func do(t *testing.T, method, url string, header http.Header, body string) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, password)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// sse is a stream subscription read line by line on its own goroutine.
type sse struct {
	lines  chan string
	cancel func()
}

func subscribe(t *testing.T, url, lastEventID string) *sse {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(user, password)
	if lastEventID != "" {
		req.Header.Set("Last-Event-ID", lastEventID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("subscribe: %v", err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		cancel()
		t.Fatalf("subscribe: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	s := &sse{lines: make(chan string, 1024), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		defer close(s.lines)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			s.lines <- sc.Text()
		}
	}()
	t.Cleanup(cancel)
	return s
}

// waitLine returns the first line for which ok is true, and the id: line
// that came last before it.
func (s *sse) waitLine(t *testing.T, what string, ok func(string) bool) (line, lastID string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, open := <-s.lines:
			if !open {
				t.Fatalf("stream ended before %s", what)
			}
			if id, found := strings.CutPrefix(l, "id: "); found {
				lastID = id
			}
			if ok(l) {
				return l, lastID
			}
		case <-deadline:
			t.Fatalf("no %s on the stream after 20s", what)
		}
	}
}
