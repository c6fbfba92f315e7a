package receiver_test

import (
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/relayhq/relay/receiver"
)

// storeLatencies records what the receiver reports of its stores.
type storeLatencies struct {
	mu   sync.Mutex
	seen []time.Duration
}

func (s *storeLatencies) Observe(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen = append(s.seen, d)
}

func (s *storeLatencies) take() []time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := s.seen
	s.seen = nil
	return seen
}

// TestStoresAreReportedToTheStoreObserver: every verified delivery's store
// is reported once, with how long it took (a store held up by a locked
// inbox as the time it was held, up to the ack timeout, failed or not);
// a request that fails verification reaches no store and is not reported,
// so that unauthenticated callers cannot slow processing down.
func TestStoresAreReportedToTheStoreObserver(t *testing.T) {
	bothModes(t, func(t *testing.T, perRequest bool) {
		const ackTimeout = 300 * time.Millisecond
		observer := &storeLatencies{}
		h := newHarness(t, setup{perRequest: perRequest, opts: receiver.Options{AckTimeout: ackTimeout, StoreObserver: observer}})
		if code, _ := h.post(t, "msg_fast", fixture(t, "order.paid.json"), nil); code != http.StatusOK {
			t.Fatalf("status = %d, want 200", code)
		}
		if seen := observer.take(); len(seen) != 1 || seen[0] <= 0 {
			t.Fatalf("stores reported for one delivery: %v, want one positive latency", seen)
		}
		if code, _ := h.post(t, "msg_forged", fixture(t, "order.paid.json"), func(r *http.Request) {
			r.Header.Set("webhook-signature", "v1,AAAA")
		}); code != http.StatusUnauthorized {
			t.Fatalf("forged delivery: status = %d, want 401", code)
		}
		if seen := observer.take(); len(seen) != 0 {
			t.Fatalf("stores reported for a forged delivery: %v, want none", seen)
		}
		h.postIntoLockedInbox(t, "msg_slow", ackTimeout)
		if seen := observer.take(); len(seen) != 1 || seen[0] < ackTimeout {
			t.Fatalf("stores reported for a delivery held by a locked inbox: %v, want one of at least %v", seen, ackTimeout)
		}
	})
}
