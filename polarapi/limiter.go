package polarapi

import (
	"context"
	"sync"
	"time"
)

// limiter lets at most n requests start in any window (a minute): it keeps
// the start times of the last n and makes the next wait until the oldest
// is a window old. Unlike a refilling bucket, which starts full and lets
// twice its rate through in its first minute, no minute ever sees more
// than n.
type limiter struct {
	n      int
	window time.Duration
	clock  Clock

	mu     sync.Mutex
	starts []time.Time // ring of the last n starts, oldest at next
	next   int
}

func newLimiter(n int, window time.Duration, clock Clock) *limiter {
	return &limiter{n: n, window: window, clock: clock, starts: make([]time.Time, 0, n)}
}

// wait blocks until a request may start and counts it as started.
func (l *limiter) wait(ctx context.Context) error {
	for {
		l.mu.Lock()
		now := l.clock.Now()
		if len(l.starts) < l.n {
			l.starts = append(l.starts, now)
			l.mu.Unlock()
			return nil
		}
		oldest := l.starts[l.next]
		if d := oldest.Add(l.window).Sub(now); d > 0 {
			l.mu.Unlock()
			// Another waiter may take the slot first: look again after.
			if err := l.clock.Sleep(ctx, d); err != nil {
				return err
			}
			continue
		}
		l.starts[l.next] = now
		l.next = (l.next + 1) % l.n
		l.mu.Unlock()
		return nil
	}
}
