package faults

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testkit"
)

// outage is how long TestPostgresOutageWithSpool keeps PostgreSQL down: 3
// minutes, standing in for the 30 that would exhaust Polar's retries;
// RELAY_FAULT_OUTAGE changes it.
func outage(t *testing.T) time.Duration {
	if v := os.Getenv("RELAY_FAULT_OUTAGE"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 10*time.Second {
			t.Fatalf("RELAY_FAULT_OUTAGE=%q: want a duration of 10s or more", v)
		}
		return d
	}
	return 3 * time.Minute
}

// PostgreSQL is stopped for minutes while a Polar-like sender delivers 20
// events a second to a relay with a spool, which is killed with SIGKILL and
// started again (without its database) in the middle of the outage. No
// answer during the outage may be anything but 200; within 60 s of the
// database's return every acknowledged delivery must be processed, each
// once.
func TestPostgresOutageWithSpool(t *testing.T) {
	const rate = 20 // events a second
	down := outage(t)
	lead, tail := 10*time.Second, 10*time.Second
	events := int((lead + down + tail).Seconds()) * rate
	db := newDatabase(t, "fault_outage")
	sales := seedSales(t, db, "outage", (events+2)/3)
	spoolDir := t.TempDir()
	p := startRelay(t, "relay", db, append([]string{"RELAY_SPOOL_DIR=" + spoolDir}, riverDefaults...)...)
	s := newSender(p)
	done := s.pace(sales, rate)

	time.Sleep(lead) // the load's schedule: the outage begins 10 s in
	before := s.answers()
	stopPostgres(t)
	stopped := time.Now()
	time.Sleep(down / 3)
	spooled := metricSum(t, p, "relay_webhooks_received_total", `outcome="spooled"`)
	p.kill9(t)
	p.restart(t) // without its database: ready, and degraded
	if code, body := get(t, p.adminURL+"/readyz"); code != http.StatusOK || !strings.Contains(body, "degraded: spooling") {
		t.Errorf("/readyz of the relay started during the outage = %d %q, want 200 degraded: spooling", code, body)
	}
	time.Sleep(time.Until(stopped.Add(down)))
	during := s.answers().minus(before)
	waiting := metricSum(t, p, "relay_spool_events", "")
	startPostgres(t)
	back := time.Now()
	acked := s.ackedIDs()

	// Every delivery acknowledged by then, from the spool or before the
	// outage, is processed within 60 s.
	conn := connect(t, db)
	var drained, processed time.Duration
	for {
		if drained == 0 && metricSum(t, p, "relay_spool_events", "") == 0 {
			drained = time.Since(back)
		}
		var n int
		if err := conn.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox
			WHERE webhook_id = ANY($1) AND status = 'processed'`, acked).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == len(acked) && drained > 0 {
			processed = time.Since(back)
			break
		}
		if time.Since(back) > 90*time.Second {
			t.Fatalf("%d of %d acknowledged deliveries processed 90s after the database returned (spool drained: %v)", n, len(acked), drained > 0)
		}
		time.Sleep(100 * time.Millisecond)
	}
	<-done
	spooled += metricSum(t, p, "relay_webhooks_received_total", `outcome="spooled"`)

	f := settle(t, fmt.Sprintf("postgres outage %v", down), db, s, sales)
	report(t, fmt.Sprintf("%-24s outage=%v rate=%d/s requests_during=%d non_2xx_during=%d transport_errors_during=%d (kill -9 + restart) spooled=%.0f spooled_at_return=%.0f drained_after=%.1fs all_acked_processed_after=%.1fs lost=%d double=%d",
		"outage recovery", down, rate, during.requests, during.unavailable+during.other, during.transport, spooled, waiting,
		drained.Seconds(), processed.Seconds(), f.lost, f.double))
	if during.unavailable+during.other != 0 {
		t.Errorf("%d answers during the outage were not 2xx (%d 503s)", during.unavailable+during.other, during.unavailable)
	}
	if during.ok == 0 || spooled == 0 {
		t.Errorf("%d acknowledgements during the outage, %.0f spooled: the spool was not exercised", during.ok, spooled)
	}
	if processed > 60*time.Second {
		t.Errorf("acknowledged deliveries all processed %v after the database returned, want within 60s", processed)
	}
	checkPatience(t, s, ackTimeout+time.Second)
	p.terminate(t)
}

// The spool is bounded and honest: once it reaches RELAY_SPOOL_MAX_BYTES, or
// its disk is full, webhooks get 503; a relay killed while appending loses
// none it acknowledged; and once the database takes webhooks again, each
// spooled one is processed once.
func TestSpoolFullAndKilledMidAppend(t *testing.T) {
	db := newDatabase(t, "fault_spoolfull")
	sales := seedSales(t, db, "full", 40*scale())
	ctx := context.Background()
	conn := connect(t, db)
	// With the inbox table away every store fails, as with the database
	// down, and the spool takes the webhooks.
	if _, err := conn.Exec(ctx, `ALTER TABLE webhook_inbox RENAME TO webhook_inbox_away`); err != nil {
		t.Fatal(err)
	}
	half := len(sales) / 2

	// A 64 KiB limit holds about fifteen of these events. The relay is
	// killed while concurrent appends are in flight, then fills up.
	limited := startRelay(t, "relay-limit", db, "RELAY_SPOOL_DIR="+t.TempDir(), "RELAY_SPOOL_MAX_BYTES=65536")
	s := newSender(limited)
	blast := make(chan struct{})
	go func() {
		defer close(blast)
		s.once(sales[:half], 32)
	}()
	s.waitCount(t, &s.tally.ok, 5, "spooled acknowledgements")
	limited.kill9(t)
	<-blast
	limited.restart(t)
	s.once(sales[:half], 32)
	atLimit := s.answers()
	if atLimit.ok == 0 || atLimit.unavailable == 0 || atLimit.other != 0 {
		t.Errorf("at the spool limit: %d 200s, %d 503s, %d other answers; want some 200s, then 503s", atLimit.ok, atLimit.unavailable, atLimit.other)
	}
	if b := metricSum(t, limited, "relay_spool_bytes", ""); b > 65536 {
		t.Errorf("relay_spool_bytes = %v, over the 64 KiB limit", b)
	}

	// A full disk: a 128 KiB tmpfs, with the default limit far above it.
	diskFull := -1.0
	if dir, err := testkit.Tmpfs(t, "128k"); err != nil {
		t.Logf("no full-disk case: cannot mount a tmpfs (%v); it needs root", err)
	} else {
		full := startRelay(t, "relay-disk", db, "RELAY_SPOOL_DIR="+dir)
		s.targets = []*process{full}
		before := s.answers()
		s.once(sales[half:], 16)
		onDisk := s.answers().minus(before)
		if onDisk.ok == 0 || onDisk.unavailable == 0 || onDisk.other != 0 {
			t.Errorf("on a full disk: %d 200s, %d 503s, %d other answers; want some 200s, then 503s", onDisk.ok, onDisk.unavailable, onDisk.other)
		}
		diskFull = float64(onDisk.unavailable)
		s.targets = []*process{limited, full}
		defer full.terminate(t)
	}

	// The inbox is back: the spools drain by themselves, and every
	// acknowledged delivery, the killed relay's too, is in the inbox before
	// anything is sent again. Then Polar's retries of what got 503 are
	// stored directly.
	refused := s.answers()
	acked := s.ackedIDs()
	if _, err := conn.Exec(ctx, `ALTER TABLE webhook_inbox_away RENAME TO webhook_inbox`); err != nil {
		t.Fatal(err)
	}
	for _, p := range s.targets {
		deadline := time.Now().Add(30 * time.Second)
		for metricSum(t, p, "relay_spool_events", "") != 0 {
			if time.Now().After(deadline) {
				t.Fatalf("%s's spool not drained within 30s of the inbox's return", p.name)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	var stored int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM webhook_inbox WHERE webhook_id = ANY($1)`, acked).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != len(acked) {
		t.Fatalf("%d of the %d deliveries acknowledged from the spools are in the inbox once they drained", stored, len(acked))
	}
	<-s.start(sales, 1, 16)
	f := settle(t, "spool full + kill -9", db, s, sales)
	report(t, fmt.Sprintf("%-24s limit_relay: 200s=%d 503s=%d (killed mid-append, restarted) disk_full_relay_503s=%.0f (-1: no tmpfs) acked_while_failing=%d lost=%d double=%d",
		"spool full", atLimit.ok, atLimit.unavailable, diskFull, refused.ok, f.lost, f.double))
	limited.terminate(t)
}

// get fetches url and returns the answer's status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}
