// Package opsmetrics exports what an operator watches besides the request
// and worker metrics: River's job queue, the webhook inbox, pending bookings
// and the database connection pool. The values are read from the database
// by one scrape at a time, and scrapes within maxAge of a collection share
// it: however many scrapers there are, they cost the database one
// collection's queries at a time.
package opsmetrics

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/ledger"
)

// scrapeTimeout bounds the database queries of one scrape. A scrape never
// fails: a query that errs or runs out of time leaves its series out and
// counts in relay_scrape_db_errors_total.
const scrapeTimeout = 2 * time.Second

// maxAge is how long a collection's values are served to the scrapes that
// follow it. Prometheus scrapes every 15 s or so; the values are counts an
// alert reads over minutes.
const maxAge = time.Second

// Names of the queries, as values of relay_scrape_db_errors_total's label.
const (
	queryJobs            = "jobs"
	queryOldestAvailable = "oldest_available"
	queryInbox           = "inbox"
	queryPendingBookings = "pending_bookings"
)

const (
	// Counts every job by state and kind. River's cleaner deletes completed,
	// cancelled and discarded jobs after a while, so the table stays small.
	jobsQuery = `SELECT state::text, kind, count(*) FROM river_job GROUP BY 1, 2`
	// Uses River's (state, queue, priority, scheduled_at, id) index.
	oldestAvailableQuery = `SELECT coalesce(extract(epoch FROM now() - min(scheduled_at)), 0)::float8
		FROM river_job WHERE state = 'available' AND scheduled_at <= now()`
	// Reads pending_bookings_unposted_idx: only what is still pending.
	pendingBookingsQuery = `SELECT reason, count(*), extract(epoch FROM now() - min(first_attempt_at))::float8
		FROM pending_bookings WHERE posted_at IS NULL GROUP BY reason`
)

// Collector is a prometheus.Collector of relay's operational state.
type Collector struct {
	pool   *pgxpool.Pool // whose statistics are exported
	query  *pgxpool.Pool // what the queries run on
	logger *slog.Logger
	kind   string
	now    func() time.Time

	// mu is held by the scrape that collects; the scrapes that arrive
	// meanwhile wait for it and share its values.
	mu          sync.Mutex
	collected   []prometheus.Metric
	collectedAt time.Time // zero: never

	// jobStates are River's job states always exported for kind, so that an
	// alert on one of them has a series to read even at 0.
	jobStates []string
	// inboxStatuses are webhook_inbox's statuses (its CHECK constraint),
	// exported even at 0.
	inboxStatuses []string
	// pendingReasons are the reasons a booking can be pending for.
	pendingReasons []string
	queryNames     []string
	errors         map[string]*atomic.Uint64 // by query name; never written after NewCollector

	jobs            *prometheus.Desc
	oldestAvailable *prometheus.Desc
	inbox           *prometheus.Desc
	pending         *prometheus.Desc
	pendingOldest   *prometheus.Desc
	scrapeErrors    *prometheus.Desc

	poolAcquired        *prometheus.Desc
	poolIdle            *prometheus.Desc
	poolTotal           *prometheus.Desc
	poolMax             *prometheus.Desc
	poolAcquire         *prometheus.Desc
	poolEmptyAcquire    *prometheus.Desc
	poolAcquireWait     *prometheus.Desc
	poolCanceledAcquire *prometheus.Desc
}

// NewCollector returns a collector that exports pool's statistics and reads
// River's jobs, the webhook inbox and pending bookings through query: a pool
// of its own (one or two connections), so that scrapes never take the
// connections webhooks need. query may be pool. Query errors are logged to
// logger at warn level.
func NewCollector(pool, query *pgxpool.Pool, logger *slog.Logger) *Collector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Collector{
		pool:   pool,
		query:  query,
		logger: logger,
		kind:   jobs.EventArgs{}.Kind(),
		now:    time.Now,

		jobStates:      []string{"available", "running", "retryable", "scheduled", "discarded", "cancelled", "completed"},
		inboxStatuses:  []string{inbox.StatusPending, inbox.StatusProcessed, inbox.StatusIgnored, inbox.StatusInvalid, inbox.StatusRefused},
		pendingReasons: ledger.Reasons(),
		queryNames:     []string{queryJobs, queryOldestAvailable, queryInbox, queryPendingBookings},
		errors:         make(map[string]*atomic.Uint64),

		jobs: prometheus.NewDesc("relay_jobs",
			"River jobs by state and kind.", []string{"state", "kind"}, nil),
		oldestAvailable: prometheus.NewDesc("relay_job_oldest_available_age_seconds",
			"Age of the oldest job that is due to run and waits for a worker (0 when none waits).", nil, nil),
		inbox: prometheus.NewDesc("relay_inbox_events",
			"Stored webhooks by inbox status.", []string{"status"}, nil),
		pending: prometheus.NewDesc("relay_pending_bookings",
			"Paid sales not booked yet, by why (no_wallet, wallet_workspace, currency).", []string{"reason"}, nil),
		pendingOldest: prometheus.NewDesc("relay_pending_booking_oldest_age_seconds",
			"How long the oldest pending booking has waited since it was first tried (0 when none).", nil, nil),
		scrapeErrors: prometheus.NewDesc("relay_scrape_db_errors_total",
			"Database queries of a metrics scrape that failed, by query.", []string{"query"}, nil),

		poolAcquired: prometheus.NewDesc("relay_db_pool_acquired_connections",
			"Database connections currently in use.", nil, nil),
		poolIdle: prometheus.NewDesc("relay_db_pool_idle_connections",
			"Idle database connections in the pool.", nil, nil),
		poolTotal: prometheus.NewDesc("relay_db_pool_total_connections",
			"Database connections in the pool: acquired, idle and being opened.", nil, nil),
		poolMax: prometheus.NewDesc("relay_db_pool_max_connections",
			"Largest number of connections the pool opens.", nil, nil),
		poolAcquire: prometheus.NewDesc("relay_db_pool_acquire_total",
			"Successful connection acquisitions from the pool.", nil, nil),
		poolEmptyAcquire: prometheus.NewDesc("relay_db_pool_empty_acquire_total",
			"Successful acquisitions that had to wait for a connection because none was idle.", nil, nil),
		poolAcquireWait: prometheus.NewDesc("relay_db_pool_acquire_wait_seconds_total",
			"Total time spent acquiring connections from the pool.", nil, nil),
		poolCanceledAcquire: prometheus.NewDesc("relay_db_pool_canceled_acquire_total",
			"Acquisitions given up because their context ended.", nil, nil),
	}
	for _, q := range c.queryNames {
		c.errors[q] = new(atomic.Uint64)
	}
	return c
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.jobs, c.oldestAvailable, c.inbox, c.pending, c.pendingOldest, c.scrapeErrors,
		c.poolAcquired, c.poolIdle, c.poolTotal, c.poolMax,
		c.poolAcquire, c.poolEmptyAcquire, c.poolAcquireWait, c.poolCanceledAcquire,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector. The pool's statistics are read
// on every scrape; the database's values come from the latest collection.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.collectPool(ch)
	for _, m := range c.queried() {
		ch <- m
	}
	for _, q := range c.queryNames {
		ch <- prometheus.MustNewConstMetric(c.scrapeErrors, prometheus.CounterValue, float64(c.errors[q].Load()), q)
	}
}

// queried returns the values read from the database: those of a collection
// less than maxAge old, else of a new one. A failed query's series are left
// out of the collection, and its error is counted once for all the scrapes
// that share it.
func (c *Collector) queried() []prometheus.Metric {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.collectedAt.IsZero() && c.now().Sub(c.collectedAt) < maxAge {
		return c.collected
	}
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	var out []prometheus.Metric
	add := func(m prometheus.Metric) { out = append(out, m) }
	c.run(ctx, queryJobs, func() error { return c.collectJobs(ctx, add) })
	c.run(ctx, queryOldestAvailable, func() error { return c.collectOldestAvailable(ctx, add) })
	c.run(ctx, queryInbox, func() error { return c.collectInbox(ctx, add) })
	c.run(ctx, queryPendingBookings, func() error { return c.collectPendingBookings(ctx, add) })
	c.collected, c.collectedAt = out, c.now()
	return out
}

// run runs one query's collection, counting and logging its failure.
func (c *Collector) run(ctx context.Context, name string, collect func() error) {
	if err := collect(); err != nil {
		c.errors[name].Add(1)
		c.logger.LogAttrs(ctx, slog.LevelWarn, "metrics scrape: database query failed",
			slog.String("query", name), slog.Any("error", err))
	}
}

func (c *Collector) collectPool(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v)
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.poolAcquired, float64(s.AcquiredConns()))
	gauge(c.poolIdle, float64(s.IdleConns()))
	gauge(c.poolTotal, float64(s.TotalConns()))
	gauge(c.poolMax, float64(s.MaxConns()))
	counter(c.poolAcquire, float64(s.AcquireCount()))
	counter(c.poolEmptyAcquire, float64(s.EmptyAcquireCount()))
	counter(c.poolAcquireWait, s.AcquireDuration().Seconds())
	counter(c.poolCanceledAcquire, float64(s.CanceledAcquireCount()))
}

type jobKey struct{ state, kind string }

// collectJobs reads all counts before sending any, so that a failed query
// sends nothing rather than part of the states.
func (c *Collector) collectJobs(ctx context.Context, add func(prometheus.Metric)) error {
	counts := make(map[jobKey]int64, len(c.jobStates))
	for _, s := range c.jobStates {
		counts[jobKey{s, c.kind}] = 0
	}
	rows, err := c.query.Query(ctx, jobsQuery)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var k jobKey
		var n int64
		if err := rows.Scan(&k.state, &k.kind, &n); err != nil {
			return err
		}
		counts[k] = n
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for k, n := range counts {
		add(prometheus.MustNewConstMetric(c.jobs, prometheus.GaugeValue, float64(n), k.state, k.kind))
	}
	return nil
}

func (c *Collector) collectOldestAvailable(ctx context.Context, add func(prometheus.Metric)) error {
	var age float64
	if err := c.query.QueryRow(ctx, oldestAvailableQuery).Scan(&age); err != nil {
		return err
	}
	add(prometheus.MustNewConstMetric(c.oldestAvailable, prometheus.GaugeValue, max(age, 0)))
	return nil
}

func (c *Collector) collectInbox(ctx context.Context, add func(prometheus.Metric)) error {
	counts, err := inbox.Counts(ctx, c.query)
	if err != nil {
		return err
	}
	for _, s := range c.inboxStatuses {
		add(prometheus.MustNewConstMetric(c.inbox, prometheus.GaugeValue, float64(counts[s]), s))
	}
	return nil
}

// collectPendingBookings exports every reason, at 0 when none is pending
// for it, so that the alert and dashboard always have a series.
func (c *Collector) collectPendingBookings(ctx context.Context, add func(prometheus.Metric)) error {
	counts := make(map[string]int64, len(c.pendingReasons))
	for _, r := range c.pendingReasons {
		counts[r] = 0
	}
	var oldest float64
	rows, err := c.query.Query(ctx, pendingBookingsQuery)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var reason string
		var n int64
		var age float64
		if err := rows.Scan(&reason, &n, &age); err != nil {
			return err
		}
		counts[reason] = n
		oldest = max(oldest, age)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	for r, n := range counts {
		add(prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(n), r))
	}
	add(prometheus.MustNewConstMetric(c.pendingOldest, prometheus.GaugeValue, oldest))
	return nil
}
