package opsmetrics_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/opsmetrics"
)

// gather registers c alone and returns its families by name.
func gather(t *testing.T, c prometheus.Collector) map[string]*dto.MetricFamily {
	t.Helper()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(families))
	for _, f := range families {
		out[f.GetName()] = f
	}
	return out
}

// value returns the value of the series of name whose labels include want,
// and whether there is one.
func value(families map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := families[name]
	if !ok {
		return 0, false
	}
next:
	for _, m := range f.GetMetric() {
		labels := make(map[string]string)
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if labels[k] != v {
				continue next
			}
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

func mustValue(t *testing.T, families map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	t.Helper()
	v, ok := value(families, name, labels)
	if !ok {
		t.Fatalf("no series %s%v", name, labels)
	}
	return v
}

func TestCollector(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	var logs bytes.Buffer
	c := opsmetrics.NewCollector(pool, pool, slog.New(slog.NewTextHandler(&logs, nil)))
	clock := newClock()
	opsmetrics.SetClock(c, clock.now)

	// An empty database: every state and status is there, at 0.
	got := gather(t, c)
	for _, state := range []string{"available", "running", "retryable", "scheduled", "discarded", "cancelled", "completed"} {
		if v := mustValue(t, got, "relay_jobs", map[string]string{"state": state, "kind": "polar_event"}); v != 0 {
			t.Errorf("empty database: relay_jobs{state=%q} = %v, want 0", state, v)
		}
	}
	for _, status := range []string{"pending", "processed", "ignored", "invalid", "refused"} {
		if v := mustValue(t, got, "relay_inbox_events", map[string]string{"status": status}); v != 0 {
			t.Errorf("empty database: relay_inbox_events{status=%q} = %v, want 0", status, v)
		}
	}
	if v := mustValue(t, got, "relay_job_oldest_available_age_seconds", nil); v != 0 {
		t.Errorf("empty database: oldest available age = %v, want 0", v)
	}
	for _, reason := range []string{"no_wallet", "wallet_workspace", "currency"} {
		if v := mustValue(t, got, "relay_pending_bookings", map[string]string{"reason": reason}); v != 0 {
			t.Errorf("empty database: relay_pending_bookings{reason=%q} = %v, want 0", reason, v)
		}
	}
	if v := mustValue(t, got, "relay_pending_booking_oldest_age_seconds", nil); v != 0 {
		t.Errorf("empty database: oldest pending booking age = %v, want 0", v)
	}

	// Two available jobs, one of them due 30 seconds ago, one scheduled job,
	// and inbox rows of two statuses.
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	args := jobs.EventArgs{WebhookID: "x", EventType: "order.paid"}
	// River inserts a job with a ScheduledAt as scheduled, even in the past,
	// until its scheduler makes it available, so this one is backdated.
	old, err := client.InsertTx(ctx, tx, args, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `UPDATE river_job SET scheduled_at = now() - interval '30 seconds' WHERE id = $1`, old.Job.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := client.InsertTx(ctx, tx, args, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := client.InsertTx(ctx, tx, args, &river.InsertOpts{ScheduledAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, body)
		VALUES ('a', 'order.paid', 'pending', now(), '{}'), ('b', 'order.paid', 'pending', now(), '{}'),
		       ('c', 'customer.created', 'ignored', now(), '{}')`); err != nil {
		t.Fatal(err)
	}
	// Pending bookings: two for no_wallet, the older first tried two hours
	// ago, one for currency, and one posted, which counts for nothing.
	if _, err := tx.Exec(ctx, `INSERT INTO pending_bookings (session_id, ws_id, amount, currency, payment_currency, reason,
			paid_at, first_attempt_at, posted_at, transaction_id)
		SELECT gen_random_uuid(), gen_random_uuid(), 4950, 'USD', 'USD', reason, now(), now() - make_interval(secs => age),
		       CASE WHEN posted THEN now() END, CASE WHEN posted THEN gen_random_uuid() END
		FROM (VALUES ('no_wallet', 7200, false), ('no_wallet', 60, false), ('currency', 600, false), ('currency', 90000, true)) v(reason, age, posted)`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	clock.advance(opsmetrics.MaxAge)
	got = gather(t, c)
	for state, want := range map[string]float64{"available": 2, "scheduled": 1, "discarded": 0, "running": 0} {
		if v := mustValue(t, got, "relay_jobs", map[string]string{"state": state, "kind": "polar_event"}); v != want {
			t.Errorf("relay_jobs{state=%q} = %v, want %v", state, v, want)
		}
	}
	for status, want := range map[string]float64{"pending": 2, "ignored": 1, "processed": 0, "invalid": 0} {
		if v := mustValue(t, got, "relay_inbox_events", map[string]string{"status": status}); v != want {
			t.Errorf("relay_inbox_events{status=%q} = %v, want %v", status, v, want)
		}
	}
	for reason, want := range map[string]float64{"no_wallet": 2, "wallet_workspace": 0, "currency": 1} {
		if v := mustValue(t, got, "relay_pending_bookings", map[string]string{"reason": reason}); v != want {
			t.Errorf("relay_pending_bookings{reason=%q} = %v, want %v", reason, v, want)
		}
	}
	if v := mustValue(t, got, "relay_pending_booking_oldest_age_seconds", nil); v < 7199 || v > 7500 {
		t.Errorf("oldest pending booking age = %v, want about 7200 (the posted one does not count)", v)
	}
	// The job due 30 s ago is the oldest; the scheduled one does not count.
	if v := mustValue(t, got, "relay_job_oldest_available_age_seconds", nil); v < 29 || v > 300 {
		t.Errorf("oldest available age = %v, want about 30", v)
	}

	// Pool statistics: the scrapes above acquired connections.
	if v := mustValue(t, got, "relay_db_pool_max_connections", nil); v != float64(pool.Config().MaxConns) {
		t.Errorf("relay_db_pool_max_connections = %v, want %d", v, pool.Config().MaxConns)
	}
	if v := mustValue(t, got, "relay_db_pool_acquire_total", nil); v < 1 {
		t.Errorf("relay_db_pool_acquire_total = %v, want > 0", v)
	}
	if v := mustValue(t, got, "relay_db_pool_total_connections", nil); v < 1 {
		t.Errorf("relay_db_pool_total_connections = %v, want > 0", v)
	}
	for _, name := range []string{
		"relay_db_pool_acquired_connections", "relay_db_pool_idle_connections",
		"relay_db_pool_empty_acquire_total", "relay_db_pool_acquire_wait_seconds_total",
		"relay_db_pool_canceled_acquire_total",
	} {
		mustValue(t, got, name, nil)
	}
	for _, q := range []string{"jobs", "oldest_available", "inbox", "pending_bookings"} {
		if v := mustValue(t, got, "relay_scrape_db_errors_total", map[string]string{"query": q}); v != 0 {
			t.Errorf("relay_scrape_db_errors_total{query=%q} = %v, want 0", q, v)
		}
	}
	if logs.Len() > 0 {
		t.Errorf("unexpected logs: %s", logs.String())
	}
}

// TestCollectorDatabaseDown checks that a scrape without a database still
// succeeds: pool statistics are there, the query series are not, and the
// errors are counted and logged.
func TestCollectorDatabaseDown(t *testing.T) {
	pool := testdb.NewPool(t)
	var logs bytes.Buffer
	c := opsmetrics.NewCollector(pool, pool, slog.New(slog.NewTextHandler(&logs, nil)))
	clock := newClock()
	opsmetrics.SetClock(c, clock.now)
	pool.Close()

	for scrape := 1; scrape <= 2; scrape++ {
		if scrape > 1 {
			clock.advance(opsmetrics.MaxAge)
		}
		got := gather(t, c)
		for _, name := range []string{"relay_jobs", "relay_inbox_events", "relay_job_oldest_available_age_seconds",
			"relay_pending_bookings", "relay_pending_booking_oldest_age_seconds"} {
			if _, ok := got[name]; ok {
				t.Errorf("scrape %d: %s exported without a database", scrape, name)
			}
		}
		mustValue(t, got, "relay_db_pool_total_connections", nil)
		for _, q := range []string{"jobs", "oldest_available", "inbox", "pending_bookings"} {
			if v := mustValue(t, got, "relay_scrape_db_errors_total", map[string]string{"query": q}); v != float64(scrape) {
				t.Errorf("scrape %d: relay_scrape_db_errors_total{query=%q} = %v, want %d", scrape, q, v, scrape)
			}
		}
	}
	// A scrape that shares the last collection does not count its errors again.
	got := gather(t, c)
	if v := mustValue(t, got, "relay_scrape_db_errors_total", map[string]string{"query": "jobs"}); v != 2 {
		t.Errorf("a scrape within %s of the last: relay_scrape_db_errors_total{query=\"jobs\"} = %v, want 2 (shared)", opsmetrics.MaxAge, v)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "query=jobs") {
		t.Errorf("want a warning per failed query, logs:\n%s", logs.String())
	}
}

// clock is a time that moves only when a test says so.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// queryCounter is a pgx tracer that counts the queries a pool runs and the
// most it ran at once.
type queryCounter struct {
	mu               sync.Mutex
	total, now, most int
}

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.total++
	q.now++
	q.most = max(q.most, q.now)
	return ctx
}

func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.now--
}

func (q *queryCounter) counts() (total, most int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.total, q.most
}

// TestConcurrentScrapesShareOneCollection checks that a hundred scrapes at
// once cost the database one collection's queries, one at a time, on
// the pool the collector was given for them, and that a scrape once the
// values are MaxAge old collects again.
func TestConcurrentScrapesShareOneCollection(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPool(t)
	cfg := pool.Config()
	counter := &queryCounter{}
	cfg.ConnConfig.Tracer = counter
	cfg.MaxConns = 2
	query, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer query.Close()
	c := opsmetrics.NewCollector(pool, query, nil)
	clock := newClock()
	opsmetrics.SetClock(c, clock.now)
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)

	acquired := pool.Stat().AcquireCount()
	const scrapers = 100
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, scrapers)
	for range scrapers {
		wg.Go(func() {
			<-start
			families, err := reg.Gather()
			if err == nil && len(families) == 0 {
				err = errors.New("no metrics")
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("gather: %v", err)
		}
	}
	// One collection: jobs, oldest available, the inbox counts' fold and
	// read, pending bookings.
	const collection = 5
	if total, most := counter.counts(); total != collection || most != 1 {
		t.Errorf("%d concurrent scrapes ran %d queries, at most %d at once; want one collection: %d queries, 1 at a time", scrapers, total, most, collection)
	}
	if n := pool.Stat().AcquireCount() - acquired; n != 0 {
		t.Errorf("the scrapes acquired %d connections from the pool whose statistics they export, want 0", n)
	}
	got := gather(t, c)
	mustValue(t, got, "relay_inbox_events", map[string]string{"status": "pending"})
	if total, _ := counter.counts(); total != collection {
		t.Errorf("a scrape within %s of the collection ran queries (%d in all), want it to share the collection", opsmetrics.MaxAge, total)
	}

	clock.advance(opsmetrics.MaxAge)
	gather(t, c)
	if total, _ := counter.counts(); total != 2*collection {
		t.Errorf("a scrape %s after the collection: %d queries in all, want %d (a second collection)", opsmetrics.MaxAge, total, 2*collection)
	}
}
