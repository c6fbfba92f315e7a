package faults

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/testkit"
)

// scale multiplies the load; `make soak` raises it.
func scale() int {
	if n, err := strconv.Atoi(os.Getenv("RELAY_FAULT_SCALE")); err == nil && n > 0 {
		return n
	}
	return 1
}

// delivery is one webhook as Polar would deliver it.
type delivery struct {
	id      string
	body    []byte
	paid    bool   // the order is paid in this event
	session string // the checkout session it is about
}

// seedSales creates a storefront workspace with a default wallet and n
// reserved checkout sessions, and returns, per session, its order.created
// (pending), order.updated (paid) and order.paid deliveries.
func seedSales(t *testing.T, dbURL, prefix string, n int) [][]delivery {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, dbURL)
	var ws string
	if err := conn.QueryRow(ctx, `
		WITH w AS (INSERT INTO workspaces (name) VALUES ('Fault shop') RETURNING id),
		wallet AS (INSERT INTO workspace_wallets (ws_id, name, currency) SELECT id, 'Main', 'USD' FROM w RETURNING id, ws_id),
		cfg AS (INSERT INTO workspace_configs (ws_id, id, value) SELECT ws_id, 'default_wallet_id', id::text FROM wallet RETURNING ws_id)
		SELECT ws_id::text FROM cfg`).Scan(&ws); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `
		INSERT INTO inventory_checkout_sessions (ws_id, status, total_amount, currency, polar_checkout_id)
		SELECT $1, 'reserved', 4950, 'usd', $2 || '_chk_' || g FROM generate_series(1, $3) g
		RETURNING id::text, polar_checkout_id`, ws, prefix, n)
	if err != nil {
		t.Fatal(err)
	}
	type session struct{ id, checkout string }
	var sessions []session
	for rows.Next() {
		var s session
		if err := rows.Scan(&s.id, &s.checkout); err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}

	var out [][]delivery
	for i, s := range sessions {
		var ds []delivery
		for _, f := range []string{"order.created.pending.json", "order.updated.paid.json", "order.paid.json"} {
			ds = append(ds, delivery{
				id:      fmt.Sprintf("%s_%d_%s", prefix, i, f[:len(f)-5]),
				body:    testkit.Event(t, f, testkit.Sale{Workspace: ws, Session: s.id, PolarCheckout: s.checkout, Order: fmt.Sprintf("%s_ord_%d", prefix, i)}, nil),
				paid:    f != "order.created.pending.json",
				session: s.id,
			})
		}
		out = append(out, ds)
	}
	return out
}

// tally counts what the senders saw.
type tally struct {
	requests, ok, unavailable, other, transport atomic.Int64
	maxLatency                                  atomic.Int64 // nanoseconds, of any answer
	mu                                          sync.Mutex
	acked                                       map[string]bool
}

func (ty *tally) answered(d time.Duration) {
	for {
		cur := ty.maxLatency.Load()
		if int64(d) <= cur || ty.maxLatency.CompareAndSwap(cur, int64(d)) {
			return
		}
	}
}

// sender delivers like Polar: each attempt freshly signed; on anything but
// 200 the same webhook-id is retried with backoff. Attempts rotate over the
// targets, as a load balancer would.
type sender struct {
	targets []*process
	next    atomic.Int64
	client  *http.Client
	tally   *tally
}

func newSender(targets ...*process) *sender {
	return &sender{
		targets: targets,
		client: &http.Client{
			Timeout:   10 * time.Second, // Polar's patience
			Transport: &http.Transport{MaxIdleConnsPerHost: 64},
		},
		tally: &tally{acked: map[string]bool{}},
	}
}

// deliver tries one delivery until it is acknowledged or the attempts run out.
func (s *sender) deliver(d delivery) {
	backoff := 50 * time.Millisecond
	for range 15 {
		if s.attempt(d) {
			return
		}
		time.Sleep(backoff)
		backoff = min(2*backoff, time.Second)
	}
}

func (s *sender) attempt(d delivery) bool {
	target := s.targets[int(s.next.Add(1))%len(s.targets)]
	s.tally.requests.Add(1)
	start := time.Now()
	code, err := testkit.Post(s.client, target.hookURL, secret, d.id, d.body)
	if err != nil {
		s.tally.transport.Add(1)
		return false
	}
	s.tally.answered(time.Since(start))
	switch code {
	case http.StatusOK:
		s.tally.ok.Add(1)
		s.tally.mu.Lock()
		s.tally.acked[d.id] = true
		s.tally.mu.Unlock()
		return true
	case http.StatusServiceUnavailable:
		s.tally.unavailable.Add(1)
	default:
		s.tally.other.Add(1)
	}
	return false
}

// run sends every delivery copies times, concurrency at a time, and returns
// when all are done. Each copy is delivered independently, so copies of one
// delivery race each other.
func (s *sender) run(sales [][]delivery, copies, concurrency int) {
	spread(sales, copies, concurrency, s.deliver)
}

// spread hands every delivery, copies times, to send, concurrency at a
// time, and returns when all are done.
func spread(sales [][]delivery, copies, concurrency int, send func(delivery)) {
	work := make(chan delivery)
	var wg sync.WaitGroup
	for range concurrency {
		wg.Go(func() {
			for d := range work {
				send(d)
			}
		})
	}
	for _, sale := range sales {
		for _, d := range sale {
			for range copies {
				work <- d
			}
		}
	}
	close(work)
	wg.Wait()
}

// pace sends the deliveries one after another at perSecond, each with
// Polar-like retries of its own, however long earlier ones take: a steady
// stream like Polar's. The returned channel closes when all are done.
func (s *sender) pace(sales [][]delivery, perSecond int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / time.Duration(perSecond))
		defer tick.Stop()
		for _, sale := range sales {
			for _, d := range sale {
				<-tick.C
				wg.Go(func() { s.deliver(d) })
			}
		}
		wg.Wait()
	}()
	return done
}

// paceUntil is pace, stopping at the first whole sale once stop is closed.
// The returned channel closes when every delivery sent is done; sent counts
// the sales sent.
func (s *sender) paceUntil(sales [][]delivery, perSecond int, stop <-chan struct{}) (<-chan struct{}, *atomic.Int64) {
	done := make(chan struct{})
	sent := &atomic.Int64{}
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		tick := time.NewTicker(time.Second / time.Duration(perSecond))
		defer tick.Stop()
		for _, sale := range sales {
			select {
			case <-stop:
				wg.Wait()
				return
			default:
			}
			for _, d := range sale {
				<-tick.C
				wg.Go(func() { s.deliver(d) })
			}
			sent.Add(1)
		}
		wg.Wait()
	}()
	return done, sent
}

// once sends every delivery once, without retries, concurrency at a time:
// for counting what relay answers in a given state.
func (s *sender) once(sales [][]delivery, concurrency int) {
	spread(sales, 1, concurrency, func(d delivery) { s.attempt(d) })
}

// answers are the sender's counts at one moment.
type answers struct{ requests, ok, unavailable, other, transport int64 }

func (s *sender) answers() answers {
	return answers{s.tally.requests.Load(), s.tally.ok.Load(), s.tally.unavailable.Load(), s.tally.other.Load(), s.tally.transport.Load()}
}

func (a answers) minus(b answers) answers {
	return answers{a.requests - b.requests, a.ok - b.ok, a.unavailable - b.unavailable, a.other - b.other, a.transport - b.transport}
}

// ackedIDs are the webhook ids answered 200 so far.
func (s *sender) ackedIDs() []string {
	s.tally.mu.Lock()
	defer s.tally.mu.Unlock()
	ids := make([]string, 0, len(s.tally.acked))
	for id := range s.tally.acked {
		ids = append(ids, id)
	}
	return ids
}

// report logs a scenario's line of figures and adds it to the suite's
// report (RELAY_FAULT_REPORT).
func report(t *testing.T, line string) {
	t.Helper()
	t.Log(line)
	if suite.figures != nil {
		fmt.Fprintln(suite.figures, line)
	}
}

// start runs the load in the background; the returned channel closes when it
// is done.
func (s *sender) start(sales [][]delivery, copies, concurrency int) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.run(sales, copies, concurrency)
	}()
	return done
}

// waitCount polls until counter, one of s.tally's, reaches n: the moment
// to inject a fault "in the middle of the load", or to end one.
func (s *sender) waitCount(t *testing.T, counter *atomic.Int64, n int64, what string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for counter.Load() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d of %d within 60s (%d requests)", what, counter.Load(), n, s.tally.requests.Load())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// figures is what a scenario proved.
type figures struct {
	requests, ok, unavailable, other, transport int64
	inbox, processed, bookings, lost, double    int
	unfinished, missingAcked                    int
}

// settle waits until every job has finished, then checks the promises: every
// acknowledged webhook is stored and processed, every paid order is booked
// exactly once, nothing is left running.
func settle(t *testing.T, name, dbURL string, s *sender, sales [][]delivery) figures {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, dbURL)

	f := figures{
		requests: s.tally.requests.Load(), ok: s.tally.ok.Load(), unavailable: s.tally.unavailable.Load(),
		other: s.tally.other.Load(), transport: s.tally.transport.Load(),
	}
	deadline := time.Now().Add(90 * time.Second)
	for {
		// Webhook jobs only: a maintenance job (the retention sweep, a
		// pending-bookings pass) that a killed process was running waits
		// out its own timeout before River's rescuer hands it out again,
		// ten minutes for the sweep, and books nothing either way.
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled')
			AND kind IN ('polar_event', 'polar_event_batch')`).Scan(&f.unfinished); err != nil {
			t.Fatal(err)
		}
		if f.unfinished == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}

	acked := s.ackedIDs()

	var stored int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox WHERE webhook_id = ANY($1)`, acked).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	f.missingAcked = len(acked) - stored
	if err := conn.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE status = 'processed') FROM webhook_inbox`).Scan(&f.inbox, &f.processed); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM wallet_transactions WHERE source_kind = 'sale'`).Scan(&f.bookings); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `
		SELECT count(*) FROM (SELECT 1 FROM wallet_transactions WHERE source_kind = 'sale'
		GROUP BY source_ref HAVING count(*) > 1) d`).Scan(&f.double); err != nil {
		t.Fatal(err)
	}

	// A paid order is lost when one of its paid events was acknowledged and
	// its session has no booking.
	paidOrders := map[string]bool{}
	for _, sale := range sales {
		for _, d := range sale {
			if d.paid && s.tally.acked[d.id] {
				paidOrders[sale[0].id] = true
			}
		}
	}
	var booked int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM inventory_checkout_sessions
		WHERE status = 'completed' AND finance_transaction_id IS NOT NULL`).Scan(&booked); err != nil {
		t.Fatal(err)
	}
	f.lost = len(paidOrders) - booked + f.missingAcked + (f.inbox - f.processed)

	line := fmt.Sprintf("%-24s requests=%d 200s=%d 503s=%d other=%d transport_errors=%d inbox=%d processed=%d bookings=%d paid_orders=%d lost=%d double=%d",
		name, f.requests, f.ok, f.unavailable, f.other, f.transport, f.inbox, f.processed, f.bookings, len(paidOrders), f.lost, f.double)
	report(t, line)

	switch {
	case f.unfinished != 0:
		t.Errorf("%d webhook jobs still unfinished after 90s; every unfinished job:\n%s", f.unfinished, unfinishedJobs(t, conn))
	case f.missingAcked != 0:
		t.Errorf("%d webhooks answered 200 are not in the inbox", f.missingAcked)
	case f.inbox != f.processed:
		t.Errorf("%d of %d stored events are not processed", f.inbox-f.processed, f.inbox)
	case len(paidOrders) != len(sales):
		t.Errorf("only %d of %d paid orders were ever acknowledged", len(paidOrders), len(sales))
	case f.lost != 0 || f.double != 0 || f.bookings != len(sales):
		t.Errorf("bookings=%d for %d paid orders: lost=%d double=%d", f.bookings, len(sales), f.lost, f.double)
	}
	var failedJobs int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state IN ('discarded', 'cancelled')`).Scan(&failedJobs); err != nil {
		t.Fatal(err)
	}
	if failedJobs != 0 {
		t.Errorf("%d jobs discarded or cancelled", failedJobs)
	}
	return f
}

// unfinishedJobs describes the jobs not yet finished, one per line, with
// their last error, so a failure names what stayed behind.
func unfinishedJobs(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	rows, err := conn.Query(context.Background(), `
		SELECT id, kind, state, attempt, max_attempts, scheduled_at, coalesce(errors[array_length(errors, 1)]->>'error', '')
		FROM river_job WHERE state NOT IN ('completed', 'discarded', 'cancelled') ORDER BY id`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var (
			id                   int64
			kind, state, lastErr string
			attempt, maxAttempts int
			scheduledAt          time.Time
		)
		if err := rows.Scan(&id, &kind, &state, &attempt, &maxAttempts, &scheduledAt, &lastErr); err != nil {
			return err.Error()
		}
		fmt.Fprintf(&b, "  job %d %s %s attempt %d/%d scheduled %s: %s\n", id, kind, state, attempt, maxAttempts, scheduledAt.UTC().Format(time.RFC3339), lastErr)
	}
	if err := rows.Err(); err != nil {
		return err.Error()
	}
	return b.String()
}
