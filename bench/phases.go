package main

import (
	"bufio"
	"context"
	_ "embed"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	//go:embed webhook_tx.sql
	webhookTxSQL []byte
	//go:embed inbox_only_tx.sql
	inboxOnlyTxSQL []byte
)

// relayDefaultPoolAckConns is how many connections relay's receiver can get
// by default with RELAY_WORKERS=1: the pool is max(4, min(workers, 50)+10) = 11, and
// River's notifier holds one for LISTEN.
const relayDefaultPoolAckConns = 10

// row is one measurement.
type row struct {
	Name               string
	Rate               float64 // acked/s, or committed transactions/s
	Offered            float64 // open loop: offered rate
	Count              int
	P50, P95, P99, Max time.Duration
	Errors             int
	ErrorDetail        string
	Ratio              bool // compare Rate with the ceiling
	CPU                cpuSplit
	WAL                walStats
}

// measure runs load against relay r and records its CPU and WAL costs.
func measure(ctx context.Context, pool *pgxpool.Pool, cpu *cpuMeter, r *relayProc, name string, load func() (*loadResult, error)) (row, error) {
	log.Printf("%s", name)
	w0, err := readWAL(ctx, pool)
	if err != nil {
		return row{}, err
	}
	c0 := cpu.snap(r.pid())
	res, err := load()
	if err != nil {
		return row{}, err
	}
	c1 := cpu.snap(r.pid())
	time.Sleep(statsSettle)
	w1, err := readWAL(ctx, pool)
	if err != nil {
		return row{}, err
	}
	out := row{
		Name: name, Rate: res.rate(), Count: res.ok,
		P50: pct(res.lat, 0.50), P95: pct(res.lat, 0.95), P99: pct(res.lat, 0.99), Max: pct(res.lat, 1),
		Errors: res.errors(), ErrorDetail: res.errorDetail(),
		CPU: split(c0, c1), WAL: w1.sub(w0),
	}
	log.Printf("  %.0f acked/s, p50 %s p99 %s, errors %d %s", out.Rate, ms(out.P50), ms(out.P99), out.Errors, out.ErrorDetail)
	return out, nil
}

var (
	tpsRE    = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)
	failedRE = regexp.MustCompile(`number of failed transactions: (\d+)`)
)

// runPgbench runs the receiver's transaction in pgbench with c clients.
func runPgbench(ctx context.Context, o options, pool *pgxpool.Pool, cpu *cpuMeter, script string, body []byte, c int, d time.Duration) (row, error) {
	prefix := filepath.Join(o.tmpDir, fmt.Sprintf("pgbench-%s-c%d", strings.TrimSuffix(filepath.Base(script), ".sql"), c))
	args := []string{
		"-n", "-M", "prepared", "-c", strconv.Itoa(c), "-j", strconv.Itoa(min(o.pgbThreads, c)),
		"-T", strconv.Itoa(int(d.Seconds())), "-f", script, "-D", "body=" + string(body),
		"-l", "--log-prefix=" + prefix, o.dbURL,
	}
	w0, err := readWAL(ctx, pool)
	if err != nil {
		return row{}, err
	}
	c0 := cpu.snap(0)
	cmd := exec.CommandContext(ctx, o.pgbenchBin, args...)
	cmd.Dir = o.tmpDir
	out, err := cmd.CombinedOutput()
	c1 := cpu.snap(0)
	if err != nil {
		return row{}, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	time.Sleep(statsSettle)
	w1, err := readWAL(ctx, pool)
	if err != nil {
		return row{}, err
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		return row{}, fmt.Errorf("pgbench: no tps in its output:\n%s", out)
	}
	tps, _ := strconv.ParseFloat(string(m[1]), 64)
	failed := 0
	if m := failedRE.FindSubmatch(out); m != nil {
		failed, _ = strconv.Atoi(string(m[1]))
	}
	lat, err := pgbenchLatencies(prefix)
	if err != nil {
		return row{}, err
	}
	r := row{
		Name: fmt.Sprintf("pgbench ceiling: receiver tx, c=%d", c), Rate: tps, Count: len(lat),
		P50: pct(lat, 0.50), P95: pct(lat, 0.95), P99: pct(lat, 0.99), Max: pct(lat, 1),
		Errors: failed, CPU: split(c0, c1), WAL: w1.sub(w0),
	}
	if failed > 0 {
		r.ErrorDetail = fmt.Sprintf("%d failed transactions", failed)
	}
	log.Printf("  %.0f tps, p50 %s p99 %s", r.Rate, ms(r.P50), ms(r.P99))
	return r, nil
}

// pgbenchLatencies reads pgbench's per-transaction logs (-l): the third
// field is the latency in microseconds.
func pgbenchLatencies(prefix string) ([]time.Duration, error) {
	files, err := filepath.Glob(prefix + ".*")
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("pgbench: no transaction logs at %s.*", prefix)
	}
	var lat []time.Duration
	for _, path := range files {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			if us, err := strconv.ParseInt(fields[2], 10, 64); err == nil {
				lat = append(lat, time.Duration(us)*time.Microsecond)
			}
		}
		f.Close()
		os.Remove(path)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	return lat, nil
}

// processResult is the end-to-end run: paid orders in, bookings out.
type processResult struct {
	Name          string // what sets the run apart, if anything
	Offered       int    // events per second sent (open loop)
	Senders       int    // closed loop: senders, each waiting for its answer
	Workers       int
	Sessions      int
	Ack           row     // the sending side
	Sent          int     // acked events
	Processed     int     // sessions completed with a booking
	Duration      float64 // first send to last booking seen, seconds
	DuringSend    float64 // bookings per second while sending
	Rate          float64 // Processed / Duration
	PeakRate      float64 // best one-second window
	Lag           [4]time.Duration
	LagFromHook   time.Duration // p99 from the webhook-timestamp header (1 s resolution)
	JobStates     string
	Drained       bool
	ProcessCPU    cpuSplit
	ProcessWALs   walStats
	ProcessWindow float64
	QueueWait     [2]time.Duration // p50, p99: job created → first attempt
	Work          [2]time.Duration // p50, p99: first attempt → completed
	Statements    []stmtCost
	Tables        []tableCost
	Throttled     float64 // seconds relay's pace limit spent below its maximum (relay_pace_throttled_seconds_total)
	Shrinks       float64 // steps that shrank it (relay_pace_shrinks_total)
}

// processRun sends paid order events for seeded sessions at rate (open
// loop) or, with senders > 0, from that many closed-loop senders until
// every session has been paid, and polls the database until every acked
// event has been booked.
func processRun(ctx context.Context, o options, rate, senders, workers int, pool *pgxpool.Pool, cpu *cpuMeter, stats *pgStats, r *relayProc, gen *generator, sessions []session) (*processResult, error) {
	gen.reset(r.webhookURL)
	gen.sessions = sessions
	defer func() { gen.sessions = nil }()
	res := &processResult{Workers: workers, Sessions: len(sessions), Offered: rate, Senders: senders}

	// The poll counts sales booked: a worker books a sale and completes its
	// session in one transaction, so this is the number of sessions
	// completed with a booking, read from a table that holds only this
	// run's bookings rather than every seeded session (each poll's scan is
	// PostgreSQL CPU charged to the run). The sessions themselves are
	// counted once, at the end.
	const booked = `SELECT count(*) FROM wallet_transactions WHERE source_kind = 'sale'`
	const completed = `SELECT count(*) FROM inventory_checkout_sessions WHERE status = 'completed' AND finance_transaction_id IS NOT NULL`
	type point struct {
		at time.Duration
		n  int
	}
	var (
		series []point
		start  = time.Now()
		stopCh = make(chan struct{})
		doneCh = make(chan error, 1)
	)
	sentCh := make(chan int, 1)
	if err := stats.reset(ctx, pool); err != nil {
		return nil, err
	}
	c0 := cpu.snap(r.pid())
	w0, err := readWAL(ctx, pool)
	if err != nil {
		return nil, err
	}
	go func() {
		// The poller: bounded by drainMax after sending ends.
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		sent := -1
		var sendEnd time.Time
		lastChange := time.Now()
		last := -1
		for {
			select {
			case <-stopCh:
				doneCh <- nil
				return
			case s := <-sentCh:
				sent, sendEnd = s, time.Now()
			case <-tick.C:
			}
			var n int
			if err := pool.QueryRow(ctx, booked).Scan(&n); err != nil {
				doneCh <- fmt.Errorf("poll bookings: %w", err)
				return
			}
			series = append(series, point{time.Since(start), n})
			if n != last {
				last, lastChange = n, time.Now()
			}
			if sent >= 0 {
				switch {
				case n >= sent:
					res.Drained = true
					doneCh <- nil
					return
				case time.Since(sendEnd) > o.drainMax:
					log.Printf("  gave up waiting: %d of %d booked %s after sending", n, sent, o.drainMax)
					doneCh <- nil
					return
				case time.Since(lastChange) > 20*time.Second:
					log.Printf("  no progress for 20s: %d of %d booked", n, sent)
					doneCh <- nil
					return
				}
			}
		}
	}()

	var load *loadResult
	if senders > 0 {
		log.Printf("processing run: %d closed-loop senders paying %d sessions (at most %s), RELAY_WORKERS=%d", senders, len(sessions), o.closedMax, workers)
		load, err = gen.closedN(ctx, senders, len(sessions), o.closedMax)
	} else {
		log.Printf("processing run: %d paid orders/s for %s, RELAY_WORKERS=%d", rate, o.procDur, workers)
		load, err = gen.open(ctx, float64(rate), o.procDur, "process")
	}
	if err != nil {
		close(stopCh)
		<-doneCh
		return nil, err
	}
	sendWindow := time.Since(start)
	sentCh <- load.ok
	if err := <-doneCh; err != nil {
		return nil, err
	}
	c1 := cpu.snap(r.pid())
	time.Sleep(statsSettle)
	w1, err := readWAL(ctx, pool)
	if err != nil {
		return nil, err
	}
	res.ProcessCPU, res.ProcessWALs = split(c0, c1), w1.sub(w0)
	if res.Statements, res.Tables, err = stats.read(ctx, pool); err != nil {
		return nil, err
	}
	res.ProcessWindow = c1.at.Sub(c0.at).Seconds()
	ackName := fmt.Sprintf("relay acks during processing (%d/s offered)", rate)
	if senders > 0 {
		ackName = fmt.Sprintf("relay acks during processing (closed loop, %d senders)", senders)
	}
	res.Ack = row{
		Name: ackName, Rate: load.rate(),
		Offered: float64(rate), Count: load.ok,
		P50: pct(load.lat, 0.50), P95: pct(load.lat, 0.95), P99: pct(load.lat, 0.99), Max: pct(load.lat, 1),
		Errors: load.errors(), ErrorDetail: load.errorDetail(), Ratio: true,
	}
	res.Sent = load.ok

	if len(series) > 0 {
		final := series[len(series)-1].n
		if err := pool.QueryRow(ctx, completed).Scan(&res.Processed); err != nil {
			return nil, fmt.Errorf("count completed sessions: %w", err)
		}
		if res.Processed != final {
			log.Printf("  %d sessions completed with a booking, but %d sales booked", res.Processed, final)
		}
		for _, p := range series {
			if p.n == final {
				res.Duration = p.at.Seconds()
				break
			}
		}
		if res.Duration > 0 {
			res.Rate = float64(res.Processed) / res.Duration
		}
		for i, p := range series {
			if p.at <= sendWindow {
				res.DuringSend = float64(p.n) / sendWindow.Seconds()
			}
			for j := i + 1; j < len(series); j++ {
				if w := series[j].at - p.at; w >= time.Second {
					res.PeakRate = max(res.PeakRate, float64(series[j].n-p.n)/w.Seconds())
					break
				}
			}
		}
	}
	var lag [4]float64
	if err := pool.QueryRow(ctx, `
		SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY d), 0),
		       coalesce(percentile_cont(0.95) WITHIN GROUP (ORDER BY d), 0),
		       coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY d), 0),
		       coalesce(max(d), 0)
		FROM (SELECT extract(epoch FROM processed_at - received_at)::float8 AS d
		      FROM webhook_inbox WHERE processed_at IS NOT NULL) x`).Scan(&lag[0], &lag[1], &lag[2], &lag[3]); err != nil {
		return nil, fmt.Errorf("lag: %w", err)
	}
	for i, s := range lag {
		res.Lag[i] = time.Duration(s * float64(time.Second))
	}
	var hookP99 float64
	if err := pool.QueryRow(ctx, `
		SELECT coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM processed_at - webhook_timestamp)::float8), 0)
		FROM webhook_inbox WHERE processed_at IS NOT NULL`).Scan(&hookP99); err != nil {
		return nil, fmt.Errorf("lag: %w", err)
	}
	res.LagFromHook = time.Duration(hookP99 * float64(time.Second))
	rows, err := pool.Query(ctx, `SELECT state::text, count(*) FROM river_job WHERE kind IN ('polar_event', 'polar_event_batch') GROUP BY 1 ORDER BY 1`)
	if err != nil {
		return nil, err
	}
	var states []string
	for rows.Next() {
		var s string
		var n int
		if err := rows.Scan(&s, &n); err != nil {
			rows.Close()
			return nil, err
		}
		states = append(states, fmt.Sprintf("%s %d", s, n))
	}
	rows.Close()
	res.JobStates = "polar_event and polar_event_batch jobs: " + strings.Join(states, ", ")
	// Where a job's time goes: waiting to be fetched, then being worked.
	var wait50, wait99, work50, work99 float64
	if err := pool.QueryRow(ctx, `
		SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY w), 0), coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY w), 0),
		       coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY k), 0), coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY k), 0)
		FROM (SELECT extract(epoch FROM attempted_at - created_at)::float8 AS w,
		             extract(epoch FROM finalized_at - attempted_at)::float8 AS k
		      FROM river_job WHERE kind IN ('polar_event', 'polar_event_batch') AND state = 'completed') x`).Scan(&wait50, &wait99, &work50, &work99); err != nil {
		return nil, fmt.Errorf("job timings: %w", err)
	}
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	res.QueueWait = [2]time.Duration{sec(wait50), sec(wait99)}
	res.Work = [2]time.Duration{sec(work50), sec(work99)}
	res.Throttled, res.Shrinks = r.metric("relay_pace_throttled_seconds_total"), r.metric("relay_pace_shrinks_total")
	log.Printf("  %d/%d booked in %.1fs: %.0f/s end to end, lag p99 %s; jobs: %s; pace limit throttled %.1f s, %0.f shrinks",
		res.Processed, res.Sent, res.Duration, res.Rate, ms(res.Lag[2]), res.JobStates, res.Throttled, res.Shrinks)
	return res, nil
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
}
