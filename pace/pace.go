// Package pace holds the share of the database that processing may take
// while webhooks are being acknowledged: an adaptive limit on the worker
// transactions running at once, driven by how long the receiver's stores
// take. Acknowledging is the latency-critical path (Polar waits 10 s and
// retries what is late); processing is throughput work that can wait a
// little. When the receiver's stores slow past a target, the limit shrinks
// multiplicatively; while they are fast, or nothing arrives, it grows back
// by one a step (AIMD, as TCP and Netflix's concurrency-limits do).
//
// Processing yields, but is not starved: while the work it finishes waited
// longer than MaxLag (from its job's creation to its completion), the limit
// grows whatever the stores say, so that the backlog is worked down rather
// than left to grow for as long as acknowledging is slow.
//
// Only scheduling changes: what each transaction holds, and so exactly-once
// and durability, does not.
package pace

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of Options.
const (
	DefaultTarget   = 25 * time.Millisecond
	DefaultMin      = 1
	DefaultMax      = 12
	DefaultInterval = 100 * time.Millisecond
	DefaultMaxLag   = time.Second
)

// Options tune a Limiter. The zero value of each field takes its default.
type Options struct {
	// Target is the store latency the receiver should stay under: when more
	// than 1% of the stores observed in a step took longer (their p99 is
	// past it), the limit shrinks. Default 25 ms, half of the 50 ms ack
	// p99 relay aims for, the rest being HTTP and verification.
	Target time.Duration
	// Min and Max bound the limit. Min keeps processing going, however slow
	// acknowledging is, so that the backlog is still worked; Max is the
	// most transactions at once that help (jobs.Options.BatchTransactions).
	Min, Max int
	// Interval is the length of a step: how often the limit is adjusted.
	Interval time.Duration
	// MaxLag is the processing lag (ObserveLag) past which the limit grows
	// even while stores are slow. Default 1 s, relay's lag target.
	MaxLag time.Duration
	// Registerer, when set, gets the limiter's metrics.
	Registerer prometheus.Registerer
}

// Limiter is a semaphore whose size follows the receiver's store latency.
// Its zero value is not usable: use New or Fixed.
type Limiter struct {
	opts     Options
	adaptive bool

	// Observations since the last step; Observe is on every webhook's path.
	seen, slow atomic.Int64
	lagged     atomic.Bool // work finished past MaxLag since the last step

	mu        sync.Mutex
	limit     int
	inFlight  int
	waiters   []chan struct{} // FIFO; closed when granted a turn
	throttled time.Duration   // time spent with limit < Max
	lastStep  time.Time
	shrinks   int
}

// New returns an adaptive limiter starting at opts.Max.
func New(opts Options) (*Limiter, error) {
	if opts.Target <= 0 {
		opts.Target = DefaultTarget
	}
	if opts.Min <= 0 {
		opts.Min = DefaultMin
	}
	if opts.Max <= 0 {
		opts.Max = DefaultMax
	}
	if opts.Min > opts.Max {
		return nil, errors.New("pace: Min is greater than Max")
	}
	if opts.Interval <= 0 {
		opts.Interval = DefaultInterval
	}
	if opts.MaxLag <= 0 {
		opts.MaxLag = DefaultMaxLag
	}
	l := &Limiter{opts: opts, adaptive: true, limit: opts.Max}
	if opts.Registerer != nil {
		if err := l.register(opts.Registerer); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Fixed returns a limiter of n turns that never adjusts: what a process
// without a receiver (RELAY_ROLE=worker), or with pacing off, uses.
func Fixed(n int) *Limiter {
	n = max(n, 1)
	return &Limiter{opts: Options{Min: n, Max: n}, limit: n}
}

// Observe records how long one store took, from the request handing its
// event to the store to the store's answer, failures included.
func (l *Limiter) Observe(d time.Duration) {
	if !l.adaptive {
		return
	}
	l.seen.Add(1)
	if d > l.opts.Target {
		l.slow.Add(1)
	}
}

// ObserveLag records how long a piece of finished work waited, from its
// job's creation to its completion.
func (l *Limiter) ObserveLag(d time.Duration) {
	if l.adaptive && d > l.opts.MaxLag {
		l.lagged.Store(true)
	}
}

// Step adjusts the limit from what was observed since the last step, and
// returns the new limit: grow by one (to Max at most) when work finished
// past MaxLag, or when no store was slower than the target, or none came;
// else shrink to 3/4 (at least by one, to Min at least) when more than 1%
// of the stores were slower than the target; else hold. now is the step's
// time, for the throttled-time metric.
func (l *Limiter) Step(now time.Time) int {
	seen, slow, lagged := l.seen.Swap(0), l.slow.Swap(0), l.lagged.Swap(false)
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.lastStep.IsZero() && l.limit < l.opts.Max {
		l.throttled += now.Sub(l.lastStep)
	}
	l.lastStep = now
	if !l.adaptive {
		return l.limit
	}
	switch {
	case lagged || slow == 0:
		l.limit = min(l.limit+1, l.opts.Max)
		l.grant()
	case slow*100 > seen:
		next := max(min(l.limit-1, l.limit*3/4), l.opts.Min)
		if next < l.limit {
			l.shrinks++
		}
		l.limit = next
	}
	return l.limit
}

// Run steps the limiter every Interval until ctx ends.
func (l *Limiter) Run(ctx context.Context) {
	if !l.adaptive {
		return
	}
	tick := time.NewTicker(l.opts.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			l.Step(now)
		}
	}
}

// Acquire waits for a turn, first come first served, until ctx ends. A nil
// error means the caller holds a turn and must Release it.
func (l *Limiter) Acquire(ctx context.Context) error {
	l.mu.Lock()
	if l.inFlight < l.limit && len(l.waiters) == 0 {
		l.inFlight++
		l.mu.Unlock()
		return nil
	}
	ready := make(chan struct{})
	l.waiters = append(l.waiters, ready)
	l.mu.Unlock()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		l.mu.Lock()
		defer l.mu.Unlock()
		select {
		case <-ready: // granted meanwhile: hand the turn on
			l.inFlight--
			l.grant()
		default:
			for i, w := range l.waiters {
				if w == ready {
					l.waiters = append(l.waiters[:i], l.waiters[i+1:]...)
					break
				}
			}
		}
		return ctx.Err()
	}
}

// Release gives back a turn taken by Acquire.
func (l *Limiter) Release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.inFlight--
	l.grant()
}

// grant hands free turns to waiters, in order. l.mu is held.
func (l *Limiter) grant() {
	for l.inFlight < l.limit && len(l.waiters) > 0 {
		l.inFlight++
		close(l.waiters[0])
		l.waiters = l.waiters[1:]
	}
}

// State is a limiter's state at one moment.
type State struct {
	Limit     int           // turns allowed at once
	InFlight  int           // turns held; above Limit for a while after it shrank
	Waiting   int           // callers waiting for a turn
	Throttled time.Duration // time spent with Limit below Max, to the last step
	Shrinks   int           // steps that shrank the limit
}

// State returns the limiter's state.
func (l *Limiter) State() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	return State{Limit: l.limit, InFlight: l.inFlight, Waiting: len(l.waiters), Throttled: l.throttled, Shrinks: l.shrinks}
}

// Max is the most turns the limiter ever allows.
func (l *Limiter) Max() int { return l.opts.Max }

func (l *Limiter) register(reg prometheus.Registerer) error {
	gauge := func(name, help string, v func(State) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return v(l.State()) })
	}
	for _, c := range []prometheus.Collector{
		gauge("relay_pace_limit", "Worker event transactions (groups and retries) allowed at once now: between 1 and 12, lower while the receiver's stores are slower than RELAY_PACE_TARGET.",
			func(s State) float64 { return float64(s.Limit) }),
		gauge("relay_pace_in_flight", "Worker transactions running under the pace limit.",
			func(s State) float64 { return float64(s.InFlight) }),
		gauge("relay_pace_waiting", "Worker jobs waiting for a turn under the pace limit.",
			func(s State) float64 { return float64(s.Waiting) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "relay_pace_throttled_seconds_total",
			Help: "Time the pace limit spent below its maximum because acknowledgements were slow.",
		}, func() float64 { return l.State().Throttled.Seconds() }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "relay_pace_shrinks_total",
			Help: "Steps that shrank the pace limit because acknowledgements were slower than RELAY_PACE_TARGET.",
		}, func() float64 { return float64(l.State().Shrinks) }),
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}
