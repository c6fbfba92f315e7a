package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
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

func TestKill9MidLoad(t *testing.T) {
	db := newDatabase(t, "fault_kill")
	sales := seedSales(t, db, "kill", 80*scale())
	p := startRelay(t, "relay", db)
	s := newSender(p)
	done := s.start(sales, 1, 16)

	// Kill it while it is working jobs: their transactions die with it and
	// the jobs stay running until the restarted process's River rescues them.
	s.waitCount(t, &s.tally.requests, int64(len(sales)), "requests")
	running := waitRunningJobs(t, db)
	p.kill9(t)
	p.restart(t)
	<-done

	settle(t, fmt.Sprintf("kill -9 (%d running)", running), db, s, sales)
	checkPatience(t, s, ackTimeout+time.Second)
	p.terminate(t)
}

// waitRunningJobs polls until some job is being worked and returns how many.
func waitRunningJobs(t *testing.T, db string) int {
	t.Helper()
	ctx := context.Background()
	conn := connect(t, db)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var n int
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE state = 'running'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n > 0 {
			return n
		}
		if time.Now().After(deadline) {
			t.Fatal("no job was running within 20s")
		}
		time.Sleep(time.Millisecond)
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
	resp, err := http.Get(p.adminURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "relay_events_processed_total{") {
			v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", line, err)
			}
			sum += v
		}
	}
	return sum
}
