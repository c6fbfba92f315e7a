package spool

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relayhq/relay/internal/testkit"
)

// While the disk stalls (HoldWrites: a commit whose fsync does not return
// holds bbolt's writer lock the same way), appends whose callers gave up
// keep writing, but never more than MaxAppends: past it an append waits for
// a slot within its deadline instead of adding a goroutine and a body. Once
// appends have waited StallAfter with none finishing the spool is stalled,
// and refuses appends at once; once the disk returns, the writes finish and
// it is not stalled any more. Defaults throughout.
func TestAppendsInFlightAreBoundedWhileTheDiskStalls(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	release, err := s.HoldWrites()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(release) // before the spool closes

	var peak atomic.Int64
	stop := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		for {
			if n := int64(s.Appending()); n > peak.Load() {
				peak.Store(n)
			}
			select {
			case <-stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	})

	// Requests keep coming, each giving up after 50ms.
	start := time.Now()
	var wg sync.WaitGroup
	var timedOut atomic.Int64
	for i := range 3 * DefaultMaxAppends {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			defer cancel()
			if err := s.Append(ctx, event(fmt.Sprintf("msg_%d", i), 1000)); errors.Is(err, context.DeadlineExceeded) {
				timedOut.Add(1)
			} else {
				t.Errorf("append to a stalled disk = %v, want its deadline", err)
			}
		})
	}
	wg.Wait()
	if n := s.Appending(); timedOut.Load() != 3*DefaultMaxAppends || n != DefaultMaxAppends {
		t.Fatalf("%d appends timed out, %d still writing; want %d and the bound %d", timedOut.Load(), n, 3*DefaultMaxAppends, DefaultMaxAppends)
	}
	if s.Stalled() && time.Since(start) < DefaultStallAfter {
		t.Fatal("stalled before StallAfter")
	}
	testkit.Within(t, 10*time.Second, "the spool to say it is stalled", s.Stalled)
	// Refused at once, not after the caller's deadline.
	before := time.Now()
	if err := s.Append(context.Background(), event("one_more", 10)); !errors.Is(err, ErrStalled) {
		t.Fatalf("append to a stalled spool = %v, want ErrStalled", err)
	}
	if took := time.Since(before); took > time.Second {
		t.Errorf("an append to a stalled spool took %s to be refused", took)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(s))
	if got := gauge(t, reg, "relay_spool_appends_in_flight"); got != DefaultMaxAppends {
		t.Errorf("relay_spool_appends_in_flight = %v, want %d", got, DefaultMaxAppends)
	}

	release()
	testkit.Within(t, 10*time.Second, "the held appends to finish", func() bool { return s.Appending() == 0 })
	close(stop)
	watch.Wait()
	if p := peak.Load(); p != DefaultMaxAppends {
		t.Errorf("at most %d appends were writing at once, want the bound %d", p, DefaultMaxAppends)
	}
	if s.Stalled() {
		t.Error("stalled after the disk returned")
	}
	// The writes whose callers gave up are stored (the drain drops any
	// redelivery of them as a duplicate), and appends work again.
	if st := stats(t, s); st.Events != DefaultMaxAppends {
		t.Errorf("%d events stored, want the %d that were writing", st.Events, DefaultMaxAppends)
	}
	if err := s.Append(t.Context(), event("after", 10)); err != nil {
		t.Fatalf("append after the stall: %v", err)
	}
}
