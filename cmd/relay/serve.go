package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/migrations"
	"github.com/relayhq/relay/opsmetrics"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/receiver"
	"github.com/relayhq/relay/retention"
)

func serve(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stdout)
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
	logger := newLogger(cfg, stdout)
	tuneGC(getenv)

	pool, err := openPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	if pending, err := migrations.Pending(ctx, pool); err != nil {
		return fmt.Errorf("check migrations: %w", err)
	} else if pending {
		return errors.New("the database has pending migrations: run `relay migrate` first")
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(opsmetrics.NewCollector(pool, logger))
	receiverMetrics, err := receiver.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("register receiver metrics: %w", err)
	}
	jobMetrics, err := jobs.NewMetrics(reg)
	if err != nil {
		return fmt.Errorf("register job metrics: %w", err)
	}

	riverClient, err := newRiverClient(cfg, pool, jobMetrics, logger)
	if err != nil {
		return err
	}

	admin := http.NewServeMux()
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	admin.Handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	}))
	admin.Handle("GET /readyz", readyHandler(pool))
	if err := mountAdmin(ctx, admin, cfg, pool, riverClient, jobMetrics, logger); err != nil {
		return err
	}
	servers := []*namedServer{{name: "admin", addr: cfg.AdminAddr, srv: newServer(admin, cfg, logger)}}

	// A worker-only replica serves no public listener.
	var rc *receiver.Receiver
	if cfg.Role != roleWorker {
		verifier, err := polar.NewVerifier(cfg.Secrets)
		if err != nil {
			return err
		}
		rc = receiver.New(pool, riverClient, verifier, receiverMetrics, receiver.Options{
			MaxBodyBytes:   cfg.MaxBodyBytes,
			AckTimeout:     cfg.AckTimeout,
			AllowedCIDRs:   cfg.AllowedCIDRs,
			TrustedProxies: cfg.TrustedProxies,
			Logger:         logger,
			GroupCommit:    cfg.GroupCommit,
			MaxBatch:       cfg.MaxBatch,
			Committers:     cfg.Committers,
		})
		defer rc.Close() // after the servers have shut down: in-flight requests need it
		webhooks := http.NewServeMux()
		webhooks.Handle(cfg.WebhookPath, rc)
		servers = append(servers, &namedServer{name: "webhooks", addr: cfg.HTTPAddr, srv: newServer(webhooks, cfg, logger)})
	}
	for _, s := range servers {
		if s.ln, err = net.Listen("tcp", s.addr); err != nil {
			closeListeners(servers)
			return fmt.Errorf("listen on %s for %s: %w", s.addr, s.name, err)
		}
	}

	// A receiver-only replica inserts jobs but works none: its client is
	// insert-only and is never started.
	works := cfg.Role != roleReceiver
	if works {
		if err := riverClient.Start(ctx); err != nil {
			closeListeners(servers)
			return fmt.Errorf("start workers: %w", err)
		}
	}

	serveErr := make(chan error, len(servers))
	for _, s := range servers {
		logger.Info("listening", "server", s.name, "addr", s.ln.Addr().String())
		go func() {
			if err := s.srv.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
				serveErr <- fmt.Errorf("%s server: %w", s.name, err)
			}
		}()
	}
	logger.Info("relay started", "role", cfg.Role, "webhook_path", cfg.WebhookPath, "workers", cfg.Workers,
		"group_commit", cfg.GroupCommit, "secrets", len(cfg.Secrets))

	var runErr error
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case runErr = <-serveErr:
		logger.Error("server failed, shutting down", "error", runErr)
	}
	if !works {
		riverClient = nil
	}
	return errors.Join(runErr, shutdown(servers, riverClient, cfg.ShutdownTimeout, logger))
}

// newRiverClient returns the River client of the configured role: working
// the queue (all, worker) or insert-only (receiver).
func newRiverClient(cfg *config, pool *pgxpool.Pool, jobMetrics *jobs.Metrics, logger *slog.Logger) (*river.Client[pgx.Tx], error) {
	riverCfg := &river.Config{
		Logger:      logger.With("component", "river"),
		MaxAttempts: cfg.MaxAttempts,
		// Behind PgBouncer in transaction mode LISTEN cannot work: poll.
		PollOnly: cfg.PollOnly,
	}
	if cfg.Role != roleReceiver {
		workers := river.NewWorkers()
		eventWorker := jobs.NewEventWorker(pool, jobMetrics, jobs.Options{
			Logger: logger, RetryBase: cfg.RetryBase, Timeout: cfg.JobTimeout,
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
		riverCfg.PeriodicJobs = []*river.PeriodicJob{retention.PeriodicJob(), jobs.PendingPeriodicJob()}
	}
	client, err := river.NewClient(riverpgxv5.New(pool), riverCfg)
	if err != nil {
		return nil, fmt.Errorf("create river client: %w", err)
	}
	return client, nil
}

type namedServer struct {
	name, addr string
	srv        *http.Server
	ln         net.Listener
}

func newServer(h http.Handler, cfg *config, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler: h,
		// Slow clients must not hold connections: headers and body each get
		// a bound, and the answer is due within the ack timeout after that.
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout,
		WriteTimeout:      cfg.ReadTimeout + cfg.AckTimeout,
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

func openPool(ctx context.Context, cfg *config) (*pgxpool.Pool, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("DATABASE_URL: %w", err)
	}
	if cfg.DBMaxConns > 0 {
		pcfg.MaxConns = cfg.DBMaxConns
	} else {
		// Workers, River's own queries and concurrent webhook requests all
		// need connections.
		pcfg.MaxConns = max(pcfg.MaxConns, int32(cfg.Workers)+10)
	}
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("database unreachable (%s): %w", redactURL(cfg.DatabaseURL), err)
	}
	return pool, nil
}

// readyHandler answers 200 when the database is reachable and migrated.
func readyHandler(pool *pgxpool.Pool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		pending, err := migrations.Pending(ctx, pool)
		switch {
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
