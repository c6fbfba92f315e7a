// Command bench measures relay against the ceiling of its own database
// transaction: pgbench running the receiver's transaction, then relay under
// closed- and open-loop webhook load, then end-to-end order processing.
// scripts/bench.sh (make bench) prepares a throwaway PostgreSQL cluster with
// default durability, builds relay, migrates and runs this; it only reports,
// it never fails because a target is missed.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

type options struct {
	relayBin         string
	pgbenchBin       string
	dbURL            string
	pgData           string
	tmpDir           string
	out              string
	fixture          string
	revision         string
	concurrency      int
	pgbThreads       int
	ceilingDur       time.Duration
	closedDur        time.Duration
	openDur          time.Duration
	warmup           time.Duration
	procRate         int
	procCapacityRate int
	procDur          time.Duration
	flashShare       float64
	phases           string
	procWorkers      int
	sessions         int
	workspaces       int
	tenants          int
	drainMax         time.Duration
	closedOrders     int
	closedWorkspaces int
	closedMax        time.Duration
	relayEnv         envList
}

// envList is a repeatable KEY=VALUE flag.
type envList []string

func (e *envList) String() string { return strings.Join(*e, " ") }

func (e *envList) Set(kv string) error {
	if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
		return fmt.Errorf("want KEY=VALUE, got %q", kv)
	}
	*e = append(*e, kv)
	return nil
}

func main() {
	var o options
	flag.StringVar(&o.relayBin, "relay", "", "relay binary (required)")
	flag.StringVar(&o.pgbenchBin, "pgbench", "pgbench", "pgbench binary")
	flag.StringVar(&o.dbURL, "db", os.Getenv("DATABASE_URL"), "database URL of a migrated, otherwise empty database")
	flag.StringVar(&o.pgData, "pgdata", "", "the cluster's data directory, to find its processes (optional)")
	flag.StringVar(&o.tmpDir, "tmp", os.TempDir(), "scratch directory for logs and scripts")
	flag.StringVar(&o.out, "out", "bench/RESULTS.md", "results file to write")
	flag.StringVar(&o.revision, "revision", "", "relay's source revision, for the results")
	flag.StringVar(&o.fixture, "fixture", "testdata/events/order.updated.paid.json", "order event used as the template")
	flag.IntVar(&o.concurrency, "c", 32, "concurrent senders and pgbench clients")
	flag.IntVar(&o.pgbThreads, "j", 2, "pgbench threads")
	flag.DurationVar(&o.ceilingDur, "ceiling-duration", 15*time.Second, "pgbench run length")
	flag.DurationVar(&o.closedDur, "closed-duration", 15*time.Second, "closed-loop run length")
	flag.DurationVar(&o.openDur, "open-duration", 15*time.Second, "length of each open-loop rate")
	flag.DurationVar(&o.warmup, "warmup", 2*time.Second, "unmeasured closed-loop warm-up after relay starts")
	flag.IntVar(&o.procRate, "process-rate", 2000, "order events per second offered in the lag run (lag p99 < 1 s at 2,000/s is the target)")
	flag.IntVar(&o.procCapacityRate, "process-capacity-rate", 3000, "order events per second offered in the capacity and flash-sale runs: above the 2,500/s target, so that the rate measured is what relay sustains, not what was sent")
	flag.Float64Var(&o.flashShare, "flash-share", 0.9, "share of the flash-sale run's events that pay sessions of one workspace (0: no flash-sale run)")
	flag.StringVar(&o.phases, "phases", "ceiling,ack,process,closed,reconcile", "comma-separated phases to run: ceiling (pgbench), ack (relay's receiver alone), process (end to end, open loop), closed (end to end, closed loop, default settings), reconcile (a reconciliation pass over 10,000 orders at a fake of Polar's API, acks meanwhile)")
	flag.IntVar(&o.closedOrders, "closed-orders", 30000, "paid orders the closed-loop end-to-end run sends, one per reserved session")
	flag.IntVar(&o.closedWorkspaces, "closed-workspaces", 20, "workspaces the closed-loop run's sessions belong to")
	flag.DurationVar(&o.closedMax, "closed-max-duration", 60*time.Second, "the closed-loop run's sending stops after this even if orders are left")
	flag.DurationVar(&o.procDur, "process-duration", 10*time.Second, "sending time of the processing run")
	flag.IntVar(&o.procWorkers, "process-workers", 0, "RELAY_WORKERS in the processing runs (0: relay's default)")
	flag.IntVar(&o.sessions, "sessions", 20000, "checkout sessions seeded for the processing run")
	flag.IntVar(&o.workspaces, "workspaces", 100, "storefront workspaces the sessions belong to")
	flag.IntVar(&o.tenants, "tenants", 1000, "workspaces with endpoints of their own in the multi-tenant ack run")
	flag.DurationVar(&o.drainMax, "drain-max", 60*time.Second, "how long processing may lag behind sending before giving up")
	flag.Var(&o.relayEnv, "relay-env", "KEY=VALUE added to the environment of every relay started, after the harness's own (repeatable), e.g. RELAY_GROUP_COMMITTERS=2")
	flag.Parse()
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	if o.relayBin == "" || o.dbURL == "" {
		log.Fatal("-relay and -db (or DATABASE_URL) are required")
	}
	if need := max(o.procRate, o.procCapacityRate) * int(o.procDur/time.Second); o.sessions < need {
		o.sessions = need
	}
	if o.flashShare < 0 || o.flashShare >= 1 {
		log.Fatal("-flash-share must be in [0, 1)")
	}
	for p := range strings.SplitSeq(o.phases, ",") {
		if p != "ceiling" && p != "ack" && p != "process" && p != "closed" && p != "reconcile" {
			log.Fatalf("-phases: unknown phase %q", p)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, o options) error {
	pool, err := pgxpool.New(ctx, o.dbURL)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("database: %w", err)
	}
	// WAL flush timing is diagnostic only; it changes nothing about durability.
	if _, err := pool.Exec(ctx, `ALTER SYSTEM SET track_wal_io_timing = on`); err != nil {
		return err
	}
	if _, err := pool.Exec(ctx, `SELECT pg_reload_conf()`); err != nil {
		return err
	}

	rep := &report{Started: time.Now(), Concurrency: o.concurrency, Revision: cmp.Or(o.revision, "an unknown revision"), RelayEnv: o.relayEnv}
	if rep.Machine, err = machineInfo(ctx, pool, o.tmpDir); err != nil {
		return err
	}
	tmpl, err := loadTemplate(o.fixture)
	if err != nil {
		return err
	}
	rep.BodyBytes = tmpl.size()
	cpu := newCPUMeter(o.pgData)

	// 1. The ceiling: the receiver's transaction, alone, in pgbench.
	script := filepath.Join(o.tmpDir, "webhook_tx.sql")
	if err := os.WriteFile(script, webhookTxSQL, 0o644); err != nil {
		return err
	}
	inboxOnly := filepath.Join(o.tmpDir, "inbox_only_tx.sql")
	if err := os.WriteFile(inboxOnly, inboxOnlyTxSQL, 0o644); err != nil {
		return err
	}
	body := tmpl.sample()
	pgbench := func(name, script string, c int, d time.Duration) (row, error) {
		if err := resetTables(ctx, pool); err != nil {
			return row{}, err
		}
		log.Printf("%s, for %s", name, d)
		r, err := runPgbench(ctx, o, pool, cpu, script, body, c, d)
		if err != nil {
			return row{}, err
		}
		r.Name = name
		rep.add(r)
		return r, nil
	}
	// The ceiling is measured again after relay's ack runs, and relay is
	// compared with the higher of the two: a ceiling run slowed by the
	// machine's neighbours must not flatter relay.
	ceiling := func(name string) error {
		r, err := pgbench(name, script, o.concurrency, o.ceilingDur)
		rep.Ceiling = max(rep.Ceiling, r.Rate)
		return err
	}
	if o.has("ceiling") {
		if err := ceiling(fmt.Sprintf("pgbench ceiling: receiver tx, c=%d", o.concurrency)); err != nil {
			return err
		}
		if _, err := pgbench(fmt.Sprintf("pgbench: receiver tx, c=%d (≈ relay's default pool)", relayDefaultPoolAckConns), script, relayDefaultPoolAckConns, o.openDur); err != nil {
			return err
		}
		if _, err := pgbench(fmt.Sprintf("pgbench diagnostic: inbox insert only, no River job, c=%d", o.concurrency), inboxOnly, o.concurrency, o.openDur); err != nil {
			return err
		}
	}

	gen := newGenerator(tmpl)
	if o.has("ack") {
		// 2. Acks: relay with its queue paused, so only the receiver works.
		if err := resetTables(ctx, pool); err != nil {
			return err
		}
		if err := pauseQueue(ctx, pool, true); err != nil {
			return err
		}
		ack := func(label string, env map[string]string, openLoop bool) (float64, error) {
			r, err := startRelay(ctx, o, label, env)
			if err != nil {
				return 0, err
			}
			defer r.stop()
			gen.reset(r.webhookURL)
			if _, err := gen.closed(ctx, o.concurrency, o.warmup, "warmup"); err != nil {
				return 0, err
			}
			row, err := measure(ctx, pool, cpu, r, fmt.Sprintf("relay closed loop, c=%d, %s", o.concurrency, label), func() (*loadResult, error) {
				return gen.closed(ctx, o.concurrency, o.closedDur, "closed")
			})
			if err != nil {
				return 0, err
			}
			row.Ratio = true
			rep.add(row)
			maxRate := row.Rate
			if openLoop {
				for _, pct := range []int{25, 50, 75} {
					rate := maxRate * float64(pct) / 100
					row, err := measure(ctx, pool, cpu, r, fmt.Sprintf("relay open loop %d%% of max (%.0f/s offered)", pct, rate), func() (*loadResult, error) {
						return gen.open(ctx, rate, o.openDur, fmt.Sprintf("open%d", pct))
					})
					if err != nil {
						return 0, err
					}
					row.Ratio = true
					row.Offered = rate
					if pct == 50 {
						rep.P99At50 = row.P99
						rep.P99At50Set = true
					}
					rep.add(row)
				}
			}
			rep.rss(label, r.peakRSS())
			return maxRate, nil
		}
		// Group commit is relay's default; the same closed loop with one
		// transaction per webhook shows what it buys.
		relayMax, err := ack("group commit (default)", map[string]string{"RELAY_WORKERS": "1"}, true)
		if err != nil {
			return err
		}
		rep.RelayMax = relayMax
		// The same closed loop spread over many workspaces' endpoints, each
		// verified with its own secret from the endpoints cache.
		tenants, err := seedTenants(ctx, pool, o.tenants)
		if err != nil {
			return err
		}
		gen.tenants = tenants
		if rep.MultiTenant, err = ack(fmt.Sprintf("%d workspaces' endpoints", len(tenants)), map[string]string{
			"RELAY_WORKERS": "1",
		}, false); err != nil {
			return err
		}
		rep.Tenants = len(tenants)
		gen.tenants = nil
		// The single endpoint once more, right after: closed loops on this
		// machine vary by ±15% from one run to the next, so the multi-tenant
		// run is compared with the mean of the runs on either side of it.
		again, err := ack("group commit (default), again after the workspaces' run", map[string]string{"RELAY_WORKERS": "1"}, false)
		if err != nil {
			return err
		}
		rep.SingleAround = (relayMax + again) / 2
		if _, err := ack("RELAY_GROUP_COMMIT=off", map[string]string{
			"RELAY_WORKERS": "1", "RELAY_GROUP_COMMIT": "off",
		}, false); err != nil {
			return err
		}
	}
	if o.has("ceiling") && o.has("ack") {
		if err := ceiling(fmt.Sprintf("pgbench ceiling again, after relay's ack runs, c=%d", o.concurrency)); err != nil {
			return err
		}
	}

	// 3. Processing: paid orders for seeded sessions, workers on; once at
	// the target rate for the lag, once above it for the rate sustained,
	// and once more above it with most sales in one workspace, a flash
	// sale in one shop, where bookings meet on one wallet.
	if o.has("process") {
		if err := processPhase(ctx, o, pool, cpu, gen, rep); err != nil {
			return err
		}
	}
	// 4. End to end as a sender with a fixed number of delivery workers
	// sees it: closed-loop senders, relay with every default.
	if o.has("closed") {
		if err := closedPhase(ctx, o, pool, cpu, gen, rep); err != nil {
			return err
		}
	}

	// 5. Reconciliation: one pass over 10,000 orders no webhook brought.
	if o.has("reconcile") {
		if err := reconcilePhase(ctx, o, pool, cpu, gen, rep); err != nil {
			return err
		}
	}

	rep.Finished = time.Now()
	md := rep.markdown()
	if err := os.WriteFile(o.out, []byte(md), 0o644); err != nil {
		return err
	}
	fmt.Println()
	fmt.Println(rep.table())
	fmt.Println(rep.targets())
	if w := rep.interference(); w != "" {
		fmt.Println("Warning: " + w)
	}
	log.Printf("wrote %s in %s", o.out, time.Since(rep.Started).Round(time.Second))
	return nil
}

// has reports whether phase is among those to run.
func (o options) has(phase string) bool {
	return slices.Contains(strings.Split(o.phases, ","), phase)
}

// processPhase runs the end-to-end processing runs.
func processPhase(ctx context.Context, o options, pool *pgxpool.Pool, cpu *cpuMeter, gen *generator, rep *report) error {
	if err := resetTables(ctx, pool); err != nil {
		return err
	}
	if err := pauseQueue(ctx, pool, false); err != nil {
		return err
	}
	log.Printf("seeding %d checkout sessions in %d workspaces", o.sessions, o.workspaces)
	sessions, err := seed(ctx, pool, o.sessions, o.workspaces)
	if err != nil {
		return err
	}
	stats := newPGStats(ctx, pool)
	type procSpec struct {
		name     string
		rate     int
		sessions []session
	}
	specs := []procSpec{{"", o.procRate, sessions}, {"", o.procCapacityRate, sessions}}
	if o.flashShare > 0 {
		specs = append(specs, procSpec{fmt.Sprintf("flash sale, %.0f%% in one workspace", o.flashShare*100), o.procCapacityRate, nil})
	}
	for _, spec := range specs {
		if spec.sessions == nil {
			// Seeded only now, so that the runs before scan no more sessions.
			n := int(float64(spec.rate)*o.procDur.Seconds()*o.flashShare) + 1
			log.Printf("seeding %d more checkout sessions in one workspace for the flash sale", n)
			flash, err := seedFlash(ctx, pool, n)
			if err != nil {
				return err
			}
			spec.sessions = mixSessions(flash, sessions, o.flashShare, spec.rate*int(o.procDur/time.Second))
		}
		if err := resetSales(ctx, pool); err != nil {
			return err
		}
		if err := resetTables(ctx, pool); err != nil {
			return err
		}
		workers, env := defaultWorkers, map[string]string{}
		if o.procWorkers > 0 {
			workers, env["RELAY_WORKERS"] = o.procWorkers, fmt.Sprint(o.procWorkers)
		}
		label := fmt.Sprintf("RELAY_WORKERS=%d, %d/s offered", workers, spec.rate)
		if spec.name != "" {
			label += ", " + spec.name
		}
		r, err := startRelay(ctx, o, label, env)
		if err != nil {
			return err
		}
		proc, err := processRun(ctx, o, spec.rate, 0, workers, pool, cpu, stats, r, gen, spec.sessions)
		rss := r.peakRSS()
		r.stop()
		if err != nil {
			return err
		}
		proc.Name = spec.name
		rep.Process = append(rep.Process, proc)
		rep.rss(label, rss)
	}
	return nil
}

// closedPhase is the closed-loop end-to-end run: o.concurrency senders,
// each sending its next paid order once the last is answered, pay
// o.closedOrders reserved sessions over o.closedWorkspaces workspaces, while
// relay, started with every default, acknowledges and books them.
func closedPhase(ctx context.Context, o options, pool *pgxpool.Pool, cpu *cpuMeter, gen *generator, rep *report) error {
	if err := resetSales(ctx, pool); err != nil {
		return err
	}
	if err := resetTables(ctx, pool); err != nil {
		return err
	}
	if err := pauseQueue(ctx, pool, false); err != nil {
		return err
	}
	log.Printf("seeding %d checkout sessions in %d workspaces for the closed loop", o.closedOrders, o.closedWorkspaces)
	sessions, err := seedClosed(ctx, pool, o.closedOrders, o.closedWorkspaces)
	if err != nil {
		return err
	}
	if err := checkpoint(ctx, pool); err != nil {
		return err
	}
	stats := newPGStats(ctx, pool)
	label := "defaults, closed loop"
	r, err := startRelay(ctx, o, label, nil)
	if err != nil {
		return err
	}
	proc, err := processRun(ctx, o, 0, o.concurrency, defaultWorkers, pool, cpu, stats, r, gen, sessions)
	rss := r.peakRSS()
	r.stop()
	if err != nil {
		return err
	}
	proc.Name = fmt.Sprintf("%d workspaces, defaults", o.closedWorkspaces)
	rep.Closed = proc
	rep.rss(label, rss)
	return nil
}

// defaultWorkers is relay's RELAY_WORKERS default, which the closed-loop
// run leaves alone.
const defaultWorkers = 500

// mixSessions interleaves n sessions, share of them (of any run of them)
// from flash and the rest from spread.
func mixSessions(flash, spread []session, share float64, n int) []session {
	out := make([]session, 0, n)
	f, s := 0, 0
	for len(out) < n && (f < len(flash) || s < len(spread)) {
		if s == len(spread) || (f < len(flash) && float64(f) < share*float64(len(out)+1)) {
			out = append(out, flash[f])
			f++
			continue
		}
		out = append(out, spread[s])
		s++
	}
	return out
}
