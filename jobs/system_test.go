package jobs_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/pace"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/receiver"
)

const secret = "polar_whs_jobs_test_secret"

// testSecretsKey is RELAY_SECRETS_KEY for the workspace endpoints' secrets.
const testSecretsKey = "cmVsYXktam9icy10ZXN0LXNlY3JldHMta2V5LTAwMDE="

// system is relay end to end: the HTTP receiver in front, real River
// clients working the queue behind, one real database.
type system struct {
	pool    *pgxpool.Pool
	url     string // the platform's endpoint
	wsURL   string // + "/" + workspace id: a workspace's endpoint
	secrets *endpoints.Store
	cache   *endpoints.Cache
	logs    *testkit.SyncBuffer
	reg     *prometheus.Registry
	clients []*river.Client[pgx.Tx]
	batches []*jobs.BatchWorker // each client's
}

type systemOpts struct {
	clients     int           // River clients working the same queue; default 1
	maxAttempts int           // default 5
	maxWorkers  int           // per client; default 10
	batchTx     int           // jobs.Options.BatchTransactions; default the default
	jobTimeout  time.Duration // jobs.Options.Timeout; default the default
	pace        *pace.Limiter // jobs.Options.Pace and the receiver's StoreObserver; default none
}

func startSystem(t *testing.T, pool *pgxpool.Pool, o systemOpts) *system {
	t.Helper()
	o.clients = max(o.clients, 1)
	if o.maxAttempts == 0 {
		o.maxAttempts = 5
	}
	if o.maxWorkers == 0 {
		o.maxWorkers = 10
	}
	s := &system{pool: pool, reg: prometheus.NewRegistry(), logs: &testkit.SyncBuffer{}}
	var logs io.Writer = s.logs
	if testing.Verbose() {
		logs = io.MultiWriter(logs, os.Stderr)
	}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	jobMetrics, err := jobs.NewMetrics(s.reg)
	if err != nil {
		t.Fatal(err)
	}
	for i := range o.clients {
		workers := river.NewWorkers()
		eventWorker := jobs.NewEventWorker(pool, jobMetrics, jobs.Options{Logger: logger, RetryBase: 20 * time.Millisecond,
			BatchTransactions: o.batchTx, Timeout: o.jobTimeout, Pace: o.pace})
		river.AddWorker(workers, eventWorker)
		batches := jobs.NewBatchWorker(eventWorker)
		river.AddWorker(workers, batches)
		s.batches = append(s.batches, batches)
		river.AddWorker(workers, jobs.NewPendingWorker(pool, jobMetrics, logger))
		client := testkit.StartRiver(t, pool, &river.Config{
			ID:           fmt.Sprintf("client_%d", i),
			Logger:       logger,
			MaxAttempts:  o.maxAttempts,
			Queues:       map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: o.maxWorkers}},
			Workers:      workers,
			PeriodicJobs: []*river.PeriodicJob{jobs.PendingPeriodicJob()}, // as relay serve has it
		})
		s.clients = append(s.clients, client)
	}
	verifier, err := polar.NewVerifier([]string{secret})
	if err != nil {
		t.Fatal(err)
	}
	recvMetrics, err := receiver.NewMetrics(s.reg)
	if err != nil {
		t.Fatal(err)
	}
	recvOpts := receiver.Options{Logger: logger}
	if o.pace != nil {
		recvOpts.StoreObserver = o.pace
	}
	rc := receiver.New(pool, s.clients[0], verifier, recvMetrics, recvOpts)
	t.Cleanup(rc.Close)
	keys, err := endpoints.ParseKeyring(func(k string) string {
		if k == endpoints.EnvKey {
			return testSecretsKey
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	s.secrets = endpoints.NewStore(pool, keys)
	cache, err := endpoints.NewCache(pool, keys, endpoints.CacheOptions{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cache.Close)
	s.cache = cache
	mux := http.NewServeMux()
	mux.Handle("/", rc)
	mux.Handle("/webhooks/polar/{workspace_id}", rc.Workspaces(cache))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	s.url, s.wsURL = srv.URL, srv.URL+"/webhooks/polar"
	return s
}

// send delivers body as Polar would and fails the test unless it gets 200.
func (s *system) send(t *testing.T, webhookID string, body []byte) {
	t.Helper()
	if code := s.post(t, webhookID, body); code != http.StatusOK {
		t.Fatalf("delivery %s: status %d, want 200", webhookID, code)
	}
}

func (s *system) post(t *testing.T, webhookID string, body []byte) int {
	code, err := testkit.Post(http.DefaultClient, s.url, secret, webhookID, body)
	if err != nil {
		t.Errorf("post %s: %v", webhookID, err)
	}
	return code
}

// waitJobs polls until the newest job of each webhook id, its own or a
// batch's, is in a final state (completed, discarded or cancelled) and
// returns those states by webhook id.
func (s *system) waitJobs(t *testing.T, webhookIDs ...string) map[string]string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		states := map[string]string{}
		final := true
		for id := range uniq(webhookIDs) {
			_, state, ok := testkit.JobOf(t, s.pool, id)
			if ok {
				states[id] = state
			}
			if state != "completed" && state != "discarded" && state != "cancelled" {
				final = false
			}
		}
		if final {
			return states
		}
		if time.Now().After(deadline) {
			t.Fatalf("jobs not finished after 30s: %v", states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func uniq(ids []string) map[string]bool {
	m := map[string]bool{}
	for _, id := range ids {
		m[id] = true
	}
	return m
}

// metric returns the value of a counter series, 0 when absent.
func (s *system) metric(t *testing.T, name string, labels map[string]string) float64 {
	t.Helper()
	return testkit.Metric(t, s.reg, name, labels)
}

type shop = testkit.Shop

// event is testkit.Event for the shop's session sold as orderID.
func event(t *testing.T, fixture string, s shop, orderID string, edit func(data map[string]any)) []byte {
	t.Helper()
	return testkit.Event(t, fixture, s.Sale(orderID), edit)
}

// booking is one wallet_transactions row.
type booking struct {
	wallet, currency, description string
	category                      *string
	amount                        int64
	reverses                      *string
}

func bookings(t *testing.T, pool *pgxpool.Pool, s shop) []booking {
	t.Helper()
	rows, err := pool.Query(context.Background(), `
		SELECT t.wallet_id::text, t.category_id::text, t.amount, t.currency, t.description, t.reverses_id::text
		FROM wallet_transactions t JOIN workspace_wallets w ON w.id = t.wallet_id
		WHERE w.ws_id = $1 ORDER BY t.created_at, t.amount DESC`, s.WS)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []booking
	for rows.Next() {
		var b booking
		if err := rows.Scan(&b.wallet, &b.category, &b.amount, &b.currency, &b.description, &b.reverses); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

type sessionRow struct {
	status, polarStatus string
	polarOrder, txID    *string
	completedAt         *time.Time
}

func session(t *testing.T, pool *pgxpool.Pool, s shop) sessionRow {
	t.Helper()
	var r sessionRow
	if err := pool.QueryRow(context.Background(), `
		SELECT status, coalesce(polar_status, ''), polar_order_id, finance_transaction_id::text, completed_at
		FROM inventory_checkout_sessions WHERE id = $1`, s.Session).
		Scan(&r.status, &r.polarStatus, &r.polarOrder, &r.txID, &r.completedAt); err != nil {
		t.Fatal(err)
	}
	return r
}
