package faults

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testkit"
)

const ackTimeout = 2 * time.Second

// checkPatience fails when any answer took longer than the ack timeout
// allows: Polar gives up after 10 s, relay must answer well before.
func checkPatience(t *testing.T, s *sender, bound time.Duration) {
	t.Helper()
	if d := time.Duration(s.tally.maxLatency.Load()); d > bound {
		t.Errorf("slowest answer took %v, want under %v", d, bound)
	}
}

// riverDefaults undo the suite's short job timeout and rescue delay: the
// scenario runs with what relay ships.
var riverDefaults = []string{"RELAY_JOB_TIMEOUT=", "RELAY_RESCUE_AFTER="}

// One of two replicas is killed with jobs in flight; the other keeps working
// and, being River's leader, hands the dead one's jobs out again. The killed
// replica is deliberately not the leader: its jobs then wait for the
// leader's rescuer, which runs every 30 s, the slower of the two cases. With
// the default settings the last sale must be booked within 45 s of the kill.
func TestKill9MidLoad(t *testing.T) {
	db := newDatabase(t, "fault_kill")
	sales := seedSales(t, db, "kill", 80*scale())
	ctx := context.Background()
	conn := connect(t, db)

	b := startRelay(t, "relay-b", db, riverDefaults...)
	leader := waitLeader(t, conn)
	// While b is frozen, a is the only worker: the first sale's jobs run on
	// a, and wait there for its session row, which the test holds locked.
	b.signal(t, syscall.SIGSTOP)
	a := startRelay(t, "relay-a", db, riverDefaults...)
	lock, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, `SELECT 1 FROM inventory_checkout_sessions WHERE id = $1 FOR UPDATE`, sales[0][0].session); err != nil {
		t.Fatal(err)
	}
	first := newSender(a)
	<-first.start(sales[:1], 1, 3)
	killedID := waitRunningOn(t, db, sales[0][0].id)
	for _, d := range sales[0][1:] {
		if id := waitRunningOn(t, db, d.id); id != killedID {
			t.Fatalf("the first sale's jobs run on %s and %s, want relay-a alone", killedID, id)
		}
	}
	b.signal(t, syscall.SIGCONT)
	if killedID == leader {
		t.Fatalf("relay-a (%s) is River's leader; the scenario needs relay-b to be", killedID)
	}

	s := newSender(a, b)
	s.tally.acked = first.tally.acked // the first sale, acknowledged by a
	done := s.start(sales[1:], 1, 16)
	s.waitCount(t, &s.tally.requests, int64(len(sales)), "requests")
	a.kill9(t)
	var killedAt time.Time
	var held []int64
	if err := conn.QueryRow(ctx, `SELECT now()`).Scan(&killedAt); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(id), '{}') FROM river_job
		WHERE state = 'running' AND attempted_by[array_length(attempted_by, 1)] = $1`, killedID).Scan(&held); err != nil {
		t.Fatal(err)
	}
	if err := lock.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	<-done

	settle(t, fmt.Sprintf("kill -9 (%d jobs held)", len(held)), db, s, sales)
	var heldDone, heldSale, last float64
	if err := conn.QueryRow(ctx, `SELECT extract(epoch FROM max(finalized_at) - $2) FROM river_job WHERE id = ANY($1)`,
		held, killedAt).Scan(&heldDone); err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `
		SELECT extract(epoch FROM w.created_at - $2),
		       (SELECT extract(epoch FROM max(created_at) - $2) FROM wallet_transactions WHERE source_kind = 'sale')
		FROM inventory_checkout_sessions c JOIN wallet_transactions w ON w.id = c.finance_transaction_id
		WHERE c.id = $1`, sales[0][0].session, killedAt).Scan(&heldSale, &last); err != nil {
		t.Fatalf("the held sale's booking: %v", err)
	}
	report(t, fmt.Sprintf("%-24s kill_to_last_booking=%.1fs held_sale_booked_after=%.1fs held_jobs_done_after=%.1fs jobs_held_by_killed=%d killed_was_leader=false settings=defaults",
		"kill -9 recovery", last, heldSale, heldDone, len(held)))
	if heldSale > 45 || heldDone > 45 {
		t.Errorf("the killed replica's sale was booked %.1fs, its last job done %.1fs after the kill; want both within 45s", heldSale, heldDone)
	}
	checkPatience(t, s, ackTimeout+time.Second)
	b.terminate(t)
}

// waitLeader polls until a River client is the elected leader and returns
// its id.
func waitLeader(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var id string
		err := conn.QueryRow(context.Background(), `SELECT leader_id FROM river_leader WHERE expires_at > now()`).Scan(&id)
		if err == nil {
			return id
		}
		if !errors.Is(err, pgx.ErrNoRows) || time.Now().After(deadline) {
			t.Fatalf("no River leader within 20s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRunningOn polls until a job carrying webhookID is running and returns
// the id of the River client running it.
func waitRunningOn(t *testing.T, db, webhookID string) string {
	t.Helper()
	conn := connect(t, db)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var client string
		err := conn.QueryRow(context.Background(), `SELECT attempted_by[array_length(attempted_by, 1)] FROM river_job
			WHERE state = 'running' AND `+inbox.Carries("args", testkit.WebhookKey)+`
			LIMIT 1`, webhookID).Scan(&client)
		if err == nil {
			return client
		}
		if !errors.Is(err, pgx.ErrNoRows) || time.Now().After(deadline) {
			t.Fatalf("the job of %s is not running within 20s: %v", webhookID, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPostgresCrashMidLoad(t *testing.T) {
	db := newDatabase(t, "fault_pgcrash")
	sales := seedSales(t, db, "pg", 40*scale())
	p := startRelay(t, "relay", db)
	s := newSender(p)
	// A third of the sales go through first; the rest are sent into the
	// outage, however fast relay took the first third, and are retried by
	// the sender (as Polar would) until the database is back.
	<-s.start(sales[:len(sales)/3], 1, 16)
	crashPostgres(t)
	done := s.start(sales[len(sales)/3:], 1, 16)
	s.waitCount(t, &s.tally.unavailable, 1, "503 answers")
	startPostgres(t)
	<-done

	f := settle(t, "postgres crash", db, s, sales)
	if f.unavailable == 0 {
		t.Error("no request got 503 during the database outage: the fault was not exercised")
	}
	if f.transport != 0 || f.other != 0 {
		t.Errorf("during the outage: %d transport errors, %d other answers; want only 503s", f.transport, f.other)
	}
	checkPatience(t, s, ackTimeout+time.Second)
	p.terminate(t)
}

func TestTwoProcessesAlternating(t *testing.T) {
	db := newDatabase(t, "fault_two")
	sales := seedSales(t, db, "two", 40*scale())
	a := startRelay(t, "relay-a", db)
	b := startRelay(t, "relay-b", db)
	s := newSender(a, b)
	<-s.start(sales, 1, 16)

	settle(t, "two processes", db, s, sales)
	checkPatience(t, s, ackTimeout+time.Second)
	a.terminate(t)
	b.terminate(t)
}

func TestDuplicateStormAcrossProcesses(t *testing.T) {
	db := newDatabase(t, "fault_storm")
	sales := seedSales(t, db, "storm", 10*scale())
	a := startRelay(t, "relay-a", db)
	b := startRelay(t, "relay-b", db)
	s := newSender(a, b)
	<-s.start(sales, 20, 32)

	f := settle(t, "duplicate storm x20", db, s, sales)
	if f.inbox != 3*len(sales) {
		t.Errorf("inbox rows = %d, want one per distinct delivery (%d)", f.inbox, 3*len(sales))
	}
	checkPatience(t, s, ackTimeout+time.Second)
	a.terminate(t)
	b.terminate(t)
}

func TestSlowDatabaseMidLoad(t *testing.T) {
	db := newDatabase(t, "fault_slow")
	sales := seedSales(t, db, "slow", 40*scale())
	p := startRelay(t, "relay", db, "RELAY_ACK_TIMEOUT=1s")
	s := newSender(p)
	// A third of the sales go through a healthy database first. The rest are
	// sent while the inbox is locked, so that the fault meets load however
	// fast relay took the first third.
	<-s.start(sales[:len(sales)/3], 1, 16)

	// Hold the inbox locked for 3 s: every store in that window waits.
	ctx := context.Background()
	conn := connect(t, db)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `LOCK TABLE webhook_inbox IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	before := s.tally.unavailable.Load()
	done := s.start(sales[len(sales)/3:], 1, 16)
	time.Sleep(3 * time.Second) // the fault itself: a database that is slow for 3 s
	during := s.tally.unavailable.Load() - before
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	<-done

	settle(t, "slow database", db, s, sales)
	if during == 0 {
		t.Error("no request got 503 while the inbox was locked")
	}
	checkPatience(t, s, time.Second+time.Second)
	p.terminate(t)
}

func TestReceiverAndWorkerReplicas(t *testing.T) {
	db := newDatabase(t, "fault_roles")
	sales := seedSales(t, db, "roles", 40*scale())
	receivers := []*process{
		startRelay(t, "receiver-a", db, "RELAY_ROLE=receiver"),
		startRelay(t, "receiver-b", db, "RELAY_ROLE=receiver"),
	}
	worker := startRelay(t, "worker", db, "RELAY_ROLE=worker", "POLAR_WEBHOOK_SECRET=")
	if resp, err := http.Post(worker.hookURL, "application/json", nil); err == nil {
		resp.Body.Close()
		t.Fatalf("the worker replica serves webhooks (status %d)", resp.StatusCode)
	}
	s := newSender(receivers...)
	<-s.start(sales, 2, 16)

	settle(t, "receivers + worker", db, s, sales)
	for _, r := range receivers {
		if n := processedCount(t, r); n != 0 {
			t.Errorf("%s worked %v events, want none", r.name, n)
		}
	}
	if n := processedCount(t, worker); n != float64(3*len(sales)) {
		t.Errorf("the worker processed %v events, want %d", n, 3*len(sales))
	}
	for _, p := range append(receivers, worker) {
		p.terminate(t)
	}
}

// processedCount sums relay_events_processed_total on a process.
func processedCount(t *testing.T, p *process) float64 {
	t.Helper()
	return metricSum(t, p, "relay_events_processed_total", "")
}

// metricSum sums the series of metric on a process whose labels contain
// labels (every series when empty).
func metricSum(t *testing.T, p *process, metric, labels string) float64 {
	t.Helper()
	_, body := get(t, p.adminURL+"/metrics")
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, metric+" ") || strings.HasPrefix(line, metric+"{") && strings.Contains(line, labels) {
			v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}
