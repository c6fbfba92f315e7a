package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/migrations"
	"github.com/relayhq/relay/opsmetrics"
	"github.com/relayhq/relay/pace"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/polarapi"
	"github.com/relayhq/relay/primary"
	"github.com/relayhq/relay/receiver"
	"github.com/relayhq/relay/reconcile"
	"github.com/relayhq/relay/retention"
	"github.com/relayhq/relay/spool"
)

func serve(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := subFlags("serve", "usage: relay serve [--role all|receiver|worker]\n", stdout)
	role := fs.String("role", "", "all, receiver or worker (default: RELAY_ROLE, else all)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("serve takes no arguments, got %q", fs.Args())
	}
	if *role != "" {
		env := getenv
		getenv = func(key string) string {
			if key == "RELAY_ROLE" {
				return *role
			}
			return env(key)
		}
	}
	cfg, err := parseConfig(getenv, true)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, newRedactingWriter(stdout, cfg.DatabaseURL))
	tuneGC(getenv)

	sp, err := openSpool(cfg, logger)
	if err != nil {
		return err
	}
	if sp != nil {
		defer sp.Close() // after the drainer and the receiver, deferred below
	}
	pool, err := newPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	// With a spool, a receiver starts without the database: the spool takes
	// the webhooks, and the workers start once the database answers.
	dbErr := checkDatabase(ctx, pool, cfg)
	if dbErr != nil && (sp == nil || !errors.Is(dbErr, errUnreachable)) {
		return dbErr
	}

	// Workspace endpoint secrets: a key that cannot read them stops relay
	// at start, not at the first delivery (or, started without its
	// database, once the database answers).
	keyring, err := endpoints.ParseKeyring(getenv)
	if err != nil {
		return err
	}
	secrets := endpoints.NewStore(pool, keyring)
	connector := newConnector(cfg, pool, keyring)
	if dbErr == nil {
		if err := secrets.Check(ctx); err != nil {
			return err
		}
		if err := connector.Store.Check(ctx); err != nil {
			return err
		}
	}

	probePool, err := newProbePool(ctx, cfg)
	if err != nil {
		return err
	}
	defer probePool.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(opsmetrics.NewCollector(pool, probePool, logger))
	// Without a spool its gauges read 0: the dashboard's spool row and its
	// alerts see 0, not no data.
	reg.MustRegister(spool.NewCollector(sp))
	receiverMetrics, err := receiver.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("register receiver metrics: %w", err)
	}
	jobMetrics, err := jobs.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("register job metrics: %w", err)
	}

	// With RELAY_PACE_TARGET set, processing yields the database to
	// acknowledging: the workers' batch transactions at once follow the
	// receiver's store latency. Unset (the default), or on a replica without
	// both halves (no signal), the limit is fixed.
	paceOpts := pace.Options{Target: cfg.PaceTarget, Registerer: reg}
	if cfg.PaceTarget == 0 || cfg.Role != roleAll {
		paceOpts.Min = pace.DefaultMax
	}
	limiter, err := pace.New(paceOpts)
	if err != nil {
		return fmt.Errorf("pace: %w", err)
	}
	go limiter.Run(ctx)

	recMetrics, err := reconcile.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("register reconciliation metrics: %w", err)
	}
	// Every request to Polar's API is counted: relay connect's through the
	// admin API and the passes', which share each organization's client.
	connector.API.Observe = recMetrics.Observe
	connector.Clients = polarapi.NewClients(connector.API)
	reconciler, err := newReconciler(cfg, pool, connector, recMetrics, logger)
	if err != nil {
		return err
	}
	riverClient, err := newRiverClient(cfg, pool, jobMetrics, limiter, reconciler, logger)
	if err != nil {
		return err
	}

	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	admin.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	admin.Handle("GET /readyz", readyHandler(probePool, sp, cfg.MaxBodyBytes))
	if err := mountAdmin(ctx, admin, cfg, pool, riverClient, secrets, connector, reconciler, jobMetrics, logger); err != nil {
		return err
	}
	servers := []*namedServer{{name: "admin", addrVar: "RELAY_ADMIN_ADDR", addr: cfg.AdminAddr, srv: newServer(admin, cfg, logger)}}

	// A worker-only replica serves no public listener.
	var rc *receiver.Receiver
	var cache *endpoints.Cache
	var startDrain, stopDrain func() // the spool's drain
	if cfg.Role != roleWorker {
		verifier, err := polar.NewVerifier(cfg.Secrets)
		if err != nil {
			return err
		}
		opts := receiver.Options{
			MaxBodyBytes:   cfg.MaxBodyBytes,
			AckTimeout:     cfg.AckTimeout,
			AllowedCIDRs:   cfg.AllowedCIDRs,
			TrustedProxies: cfg.TrustedProxies,
			Logger:         logger,
			GroupCommit:    cfg.GroupCommit,
			MaxBatch:       cfg.MaxBatch,
			Committers:     cfg.Committers,
			SpoolTimeout:   spoolTimeout,
			StoreObserver:  limiter,
		}
		opts.MaxUnverifiedBytes = cfg.MaxUnverifiedBytes
		if sp != nil {
			opts.Spool = sp
		}
		rc = receiver.New(pool, riverClient, verifier, receiverMetrics, opts)
		defer rc.Close() // after the servers have shut down: in-flight requests need it
		if cache, err = endpoints.NewCache(pool, keyring, endpoints.CacheOptions{PollOnly: cfg.PollOnly, Logger: logger, Registerer: reg}); err != nil {
			return fmt.Errorf("workspace endpoints: %w", err)
		}
		// Until it has loaded (a start without the database), workspaces'
		// endpoints answer 503 and Polar retries.
		if dbErr == nil {
			if err := cache.Start(ctx); err != nil {
				return fmt.Errorf("load workspace endpoint secrets: %w", err)
			}
		}
		defer cache.Close()
		if sp != nil {
			// Started without the database, the drain starts once the
			// database answers migrated: no spooled webhook goes into a
			// schema relay does not know.
			startDrain = func() { stopDrain = drainSpool(ctx, sp, rc) }
			defer func() { // before the spool closes; after the wait, which may start it
				if stopDrain != nil {
					stopDrain()
				}
			}()
			if dbErr == nil {
				startDrain()
			}
		}
		webhooks := http.NewServeMux()
		webhooks.Handle(cfg.WebhookPath, rc)
		webhooks.Handle(strings.TrimSuffix(cfg.WebhookPath, "/")+"/{workspace_id}", rc.Workspaces(cache))
		servers = append(servers, &namedServer{name: "webhooks", addrVar: "RELAY_HTTP_ADDR", addr: cfg.HTTPAddr, srv: newServer(webhooks, cfg, logger)})
	}
	for _, s := range servers {
		if s.ln, err = net.Listen("tcp", s.addr); err != nil {
			closeListeners(servers)
			return fmt.Errorf("listen on %s for %s (%s sets the address): %w", s.addr, s.name, s.addrVar, err)
		}
	}

	serveErr := make(chan error, len(servers)+1)

	// A receiver-only replica inserts jobs but works none: its client is
	// insert-only and is never started.
	works := cfg.Role != roleReceiver
	var startWorkers func() error // nil: nothing to start
	if works {
		// Not serve's own context: its cancellation (SIGTERM) would be
		// River's hard stop, cancelling running jobs. shutdown stops River
		// softly, letting them finish within RELAY_SHUTDOWN_TIMEOUT.
		startWorkers = func() error { return riverClient.Start(context.WithoutCancel(ctx)) }
	}
	if dbErr != nil {
		// Started without the database: once it answers migrated, the
		// secrets are checked and loaded first, then the spool's drain and
		// the workers start.
		workers, endpointsReady, stopping := startWorkers, false, false
		startWorkers = func() error {
			if !endpointsReady {
				if err := secrets.Check(ctx); err != nil {
					if !stopping { // the key cannot read them: stop, as at start
						stopping = true
						serveErr <- err
					}
					return err // nothing was started
				}
				if cache != nil {
					if err := cache.Start(ctx); err != nil {
						return fmt.Errorf("load workspace endpoint secrets: %w", err)
					}
				}
				endpointsReady = true
				if startDrain != nil {
					startDrain()
				}
			}
			if workers == nil {
				return nil
			}
			return workers()
		}
	}
	var waiting *databaseWait
	switch {
	case dbErr == nil && works:
		if err := startWorkers(); err != nil {
			closeListeners(servers)
			return fmt.Errorf("start workers: %w", err)
		}
	case dbErr != nil:
		logger.Warn("database unreachable at start: webhooks are spooled until it answers, then migrations are checked and the workers start",
			"spool", cfg.SpoolDir, "error", dbErr)
		waiting = waitForDatabase(ctx, pool, cfg, startWorkers, func(err error) { serveErr <- err }, logger)
	}

	for _, s := range servers {
		logger.Info("listening", "server", s.name, "addr", s.ln.Addr().String())
		go func() {
			if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("%s server: %w", s.name, err)
			}
		}()
	}
	logger.Info("relay started", "role", cfg.Role, "webhook_path", cfg.WebhookPath, "workers", cfg.Workers,
		"group_commit", cfg.GroupCommit, "secrets", len(cfg.Secrets), "spool", cfg.SpoolDir != "")

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case runErr = <-serveErr:
		logger.Error("server failed, shutting down", "error", runErr)
	}
	if started := waiting.stop(); !works || !started {
		riverClient = nil // never started
	}
	return errors.Join(runErr, shutdown(servers, riverClient, cfg.ShutdownTimeout, logger))
}

// newRiverClient returns the River client of the configured role: working
// the queue (all, worker) or insert-only (receiver).
func newRiverClient(cfg *config, pool *pgxpool.Pool, jobMetrics *jobs.Metrics, limiter *pace.Limiter, reconciler *reconcile.Reconciler, logger *slog.Logger) (*river.Client[pgx.Tx], error) {
	riverCfg := &river.Config{
		Logger:      logger.With("component", "river"),
		MaxAttempts: cfg.MaxAttempts,
		// Behind PgBouncer in transaction mode LISTEN cannot work: poll.
		PollOnly: cfg.PollOnly,
	}
	if cfg.Role != roleReceiver {
		workers := river.NewWorkers()
		eventWorker := jobs.NewEventWorker(pool, jobMetrics, jobs.Options{
			Logger: logger, RetryBase: cfg.RetryBase, Timeout: cfg.JobTimeout, Pace: limiter,
		})
		if err := river.AddWorkerSafely(workers, eventWorker); err != nil {
			return nil, fmt.Errorf("register workers: %w", err)
		}
		if err := river.AddWorkerSafely(workers, jobs.NewBatchWorker(eventWorker)); err != nil {
			return nil, fmt.Errorf("register workers: %w", err)
		}
		if err := river.AddWorkerSafely(workers, retention.NewWorker(pool, retention.Options{Keep: cfg.InboxRetention, Logger: logger})); err != nil {
			return nil, fmt.Errorf("register retention worker: %w", err)
		}
		if err := river.AddWorkerSafely(workers, jobs.NewPendingWorker(pool, jobMetrics, logger)); err != nil {
			return nil, fmt.Errorf("register pending bookings worker: %w", err)
		}
		if err := river.AddWorkerSafely(workers, reconcile.NewWorker(reconciler, pool, logger)); err != nil {
			return nil, fmt.Errorf("register reconciliation worker: %w", err)
		}
		riverCfg.Workers = workers
		riverCfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: cfg.Workers}}
		riverCfg.FetchCooldown = cfg.FetchCooldown
		riverCfg.FetchPollInterval = cfg.FetchPollInterval
		riverCfg.JobTimeout = cfg.JobTimeout
		// A job left running by a crashed process is worked again after this.
		riverCfg.RescueStuckJobsAfter = cfg.RescueAfter
		// River's own job cleanup keeps its defaults (completed and
		// cancelled 24 h, discarded 7 days); the inbox, which replays need,
		// is kept longer by the retention sweep.
		riverCfg.PeriodicJobs = []*river.PeriodicJob{retention.PeriodicJob(), jobs.PendingPeriodicJob(), reconcile.PeriodicJob(cfg.ReconcileInterval)}
	}
	client, err := river.NewClient(riverpgxv5.New(pool), riverCfg)
	if err != nil {
		return nil, fmt.Errorf("create river client: %w", err)
	}
	return client, nil
}

// spoolTimeout bounds a spool append (receiver.Options.SpoolTimeout), which
// starts once the store has failed, possibly at the ack timeout; writeMargin
// is left for writing the answer after it.
const (
	spoolTimeout = 2 * time.Second
	writeMargin  = time.Second
)

type namedServer struct {
	name, addr string
	addrVar    string // the variable that sets addr
	srv        *http.Server
	ln         net.Listener
}

func newServer(h http.Handler, cfg *config, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler: h,
		// Slow clients must not hold connections: headers and body each get
		// a bound. The answer is due once the body is read, the store has
		// committed or given up (the ack timeout), a spool append has
		// returned, and the answer is written: a 200 from the spool must
		// not be cut off.
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.ReadTimeout + cfg.AckTimeout + spoolTimeout + writeMargin,
		IdleTimeout:       90 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
}

func closeListeners(servers []*namedServer) {
	for _, s := range servers {
		if s.ln != nil {
			s.ln.Close()
		}
	}
}

// shutdown stops accepting requests, lets in-flight ones finish, then lets
// running jobs finish; past the timeout, jobs are cancelled and River puts
// them back for another worker.
func shutdown(servers []*namedServer, riverClient *river.Client[pgx.Tx], timeout time.Duration, logger *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	for _, s := range servers {
		if err := s.srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shut down %s server: %w", s.name, err))
		}
	}
	if riverClient == nil {
		logger.Info("stopped")
		return errors.Join(errs...)
	}
	if err := riverClient.Stop(ctx); err != nil {
		logger.Warn("jobs did not finish in time, cancelling them", "error", err)
		hardCtx, hardCancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer hardCancel()
		if err := riverClient.StopAndCancel(hardCtx); err != nil {
			errs = append(errs, fmt.Errorf("stop workers: %w", err))
		}
	}
	logger.Info("stopped")
	return errors.Join(errs...)
}

// openPool opens the database and checks that it answers.
func openPool(ctx context.Context, cfg *config) (*pgxpool.Pool, error) {
	pool, err := newPool(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if err := pingDatabase(ctx, pool, cfg); err != nil {
		pool.Close()
		return nil, err
	}
	return pool, nil
}

// maxPooledWorkers is the most workers the default pool has a connection
// for: past it, a worker that needs one waits for it.
const maxPooledWorkers = 50

// newPool makes the connection pool; it connects on first use.
func newPool(ctx context.Context, cfg *config) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", redactErr(err, cfg.DatabaseURL))
	}
	if cfg.DBMaxConns > 0 {
		pcfg.MaxConns = cfg.DBMaxConns
	} else {
		// Workers, River's own queries and concurrent webhook requests all
		// need connections. Most workers wait in groups, which use one
		// connection each, so the pool stops growing at 50 workers: 60.
		pcfg.MaxConns = max(pcfg.MaxConns, int32(min(cfg.Workers, maxPooledWorkers))+10)
	}
	// A switchover leaves pooled connections on a server that no longer
	// takes writes; they are dropped for new ones to the primary.
	primary.Follow(pcfg)
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	return pool, nil
}

// errNotMigrated is a database that answers with migrations pending: serve
// stops, at start or, started without its database, once it answers.
var errNotMigrated = errors.New("the database has pending migrations: run `relay migrate` first")

// errUnreachable marks a database that did not answer, as against one that
// answered wrongly.
var errUnreachable = errors.New("database unreachable")

func pingDatabase(ctx context.Context, pool *pgxpool.Pool, cfg *config) error {
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		return fmt.Errorf("%w (%s): %w", errUnreachable, redactDSN(cfg.DatabaseURL, cfg.DatabaseURL), redactErr(err, cfg.DatabaseURL))
	}
	return nil
}

// checkDatabase checks that the database answers and is migrated.
func checkDatabase(ctx context.Context, pool *pgxpool.Pool, cfg *config) error {
	if err := pingDatabase(ctx, pool, cfg); err != nil {
		return err
	}
	if pending, err := migrations.Pending(ctx, pool); err != nil {
		return fmt.Errorf("check migrations: %w", err)
	} else if pending {
		return errNotMigrated
	}
	return nil
}

// readyHandler answers 200 when the database is reachable and migrated. With
// a spool it also answers 200, "degraded: spooling", while the database is
// down and the spool has room for a webhook and is not stalled: the load
// balancer must keep sending, since the spool acknowledges what the database
// cannot take. Concurrent probes share one database check (migratedCheck) on
// pool, the probe pool.
func readyHandler(pool *pgxpool.Pool, sp *spool.Spool, maxBody int64) http.Handler {
	migrated := &migratedCheck{pool: pool}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pending, err := migrated.check(r.Context())
		switch {
		case err != nil && sp != nil:
			st, serr := sp.Stats()
			if serr != nil || st.Bytes+maxBody > st.MaxBytes {
				http.Error(w, "database unavailable, spool full or unreadable", http.StatusServiceUnavailable)
				return
			}
			if sp.Stalled() { // its disk does not finish writes: a webhook would get 503
				http.Error(w, "database unavailable, spool stalled (its disk does not finish writes)", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "degraded: spooling (database unavailable; %d webhooks spooled)\n", st.Events)
		case err != nil:
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
		case pending:
			http.Error(w, "database not migrated", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ready")
		}
	})
}

// tuneGC sets the garbage collector for relay's load, unless GOGC or
// GOMEMLIMIT say otherwise. What a webhook allocates is garbage as soon as it
// is answered and the live heap stays small, so letting the heap grow to 5×
// the live heap between collections instead of 2× takes about a tenth of
// relay's CPU back for some tens of MiB; the soft limit makes the collector
// work harder instead of letting a burst take relay past about 128 MiB.
func tuneGC(getenv func(string) string) {
	if getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(128 << 20)
	}
}
