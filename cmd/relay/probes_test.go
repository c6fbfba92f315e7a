package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/testkit"
)

// TestScrapesDoNotStarveWebhooks scrapes /metrics and /readyz from 80
// clients at once while their queries are stuck behind a lock (a slow
// database, a long migration), and posts webhooks meanwhile: every webhook
// gets 200, and the database never sees more than the probe pool's
// connections running the probes' queries.
func TestScrapesDoNotStarveWebhooks(t *testing.T) {
	ctx := context.Background()
	p := startRelay(t, nil)

	// Holding these locks, the collector's pending bookings query and
	// /readyz's migration check wait until their 2 s timeouts.
	locker, err := p.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer locker.Rollback(ctx) //nolint:errcheck
	if _, err := locker.Exec(ctx, `LOCK TABLE pending_bookings, goose_db_version IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var scrapers sync.WaitGroup
	var scrapes atomic.Int64
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 100}, Timeout: 30 * time.Second}
	for i := range 80 {
		url := p.admin + "/metrics"
		if i%2 == 1 {
			url = p.admin + "/readyz"
		}
		scrapers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if resp, err := client.Get(url); err == nil {
					io.Copy(io.Discard, resp.Body) //nolint:errcheck
					resp.Body.Close()
					scrapes.Add(1)
				}
				time.Sleep(20 * time.Millisecond) // 80 at once, not a CPU hog
			}
		})
	}

	// Probes' queries the database runs at once, sampled until stopped.
	var most atomic.Int64
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			var n int64
			err := p.pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
				WHERE datname = current_database() AND state = 'active' AND pid <> pg_backend_pid()
				  AND query ~ '(pending_bookings WHERE posted_at IS NULL|webhook_inbox_count|GROUP BY status|FROM river_job GROUP BY|river_migration|goose_db_version)'`).Scan(&n)
			if err == nil && n > most.Load() {
				most.Store(n)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()

	// Six seconds of webhooks, longer than RELAY_ACK_TIMEOUT's 5 s, while
	// the probes pile up.
	body := testkit.Fixture(t, "customer.created.json")
	var codes []string
	deadline := time.Now().Add(6 * time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		id := fmt.Sprintf("msg_scrape_%d", i)
		code, err := testkit.Post(http.DefaultClient, p.hook, testSecret, id, body)
		if err != nil || code != http.StatusOK {
			codes = append(codes, fmt.Sprintf("%s: %d %v", id, code, err))
		}
		time.Sleep(50 * time.Millisecond)
	}
	close(stop)
	scrapers.Wait()
	<-sampled
	if err := locker.Rollback(ctx); err != nil {
		t.Fatal(err)
	}

	if len(codes) > 0 {
		t.Errorf("webhooks not answered 200 while scrapes ran: %v", codes)
	}
	if n := most.Load(); n > probeConns {
		t.Errorf("the database ran up to %d probe queries at once, want at most %d (the probe pool)", n, probeConns)
	}
	if scrapes.Load() < 80 {
		t.Errorf("only %d scrapes answered in 6 s; want every scraper answered at least once", scrapes.Load())
	}
	t.Logf("%d scrapes answered; at most %d probe queries at once", scrapes.Load(), most.Load())
}
