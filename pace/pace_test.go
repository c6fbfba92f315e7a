package pace_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/relayhq/relay/pace"
)

func newLimiter(t *testing.T, opts pace.Options) *pace.Limiter {
	t.Helper()
	l, err := pace.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// observe records n stores of d each.
func observe(l *pace.Limiter, n int, d time.Duration) {
	for range n {
		l.Observe(d)
	}
}

// TestLimitShrinksOnSlowStoresAndGrowsBack steps the limiter through a
// burst of slow stores and back: it starts at Max, shrinks to 3/4 a step
// (at least by one) while the p99 is past the target, never below Min,
// holds while only a few stores are slow, and grows by one a step while
// none is, or nothing arrives, never above Max.
func TestLimitShrinksOnSlowStoresAndGrowsBack(t *testing.T) {
	l := newLimiter(t, pace.Options{Target: 25 * time.Millisecond, Min: 1, Max: 12})
	now := time.Unix(0, 0)
	step := func(want int, why string) {
		t.Helper()
		now = now.Add(100 * time.Millisecond)
		if got := l.Step(now); got != want {
			t.Fatalf("%s: limit %d, want %d", why, got, want)
		}
	}
	step(12, "nothing observed at the start")
	// 2 slow stores in 100: the p99 is past the target.
	observe(l, 98, 5*time.Millisecond)
	observe(l, 2, 40*time.Millisecond)
	step(9, "2% of stores slow")
	for _, want := range []int{6, 4, 3, 2, 1, 1, 1} {
		observe(l, 50, 200*time.Millisecond)
		step(want, "every store slow")
	}
	// One slow store in 200: the p99 is within the target, but not every
	// store is: hold.
	observe(l, 199, 5*time.Millisecond)
	observe(l, 1, 30*time.Millisecond)
	step(1, "0.5% of stores slow")
	observe(l, 300, 24*time.Millisecond)
	step(2, "every store within the target")
	step(3, "no store at all (the receiver is idle)")
	for want := 4; want <= 12; want++ {
		observe(l, 10, time.Millisecond)
		step(want, "fast stores")
	}
	step(12, "Max reached")
	if st := l.State(); st.Shrinks != 6 {
		t.Errorf("%d shrinking steps counted, want 6", st.Shrinks)
	}
}

// TestLaggingWorkGrowsTheLimitWhateverTheStores: processing yields but is
// not starved. While finished work waited longer than MaxLag, the limit
// grows even though every store is slow; once work is on time again, slow
// stores shrink it again. Lag within MaxLag changes nothing.
func TestLaggingWorkGrowsTheLimitWhateverTheStores(t *testing.T) {
	l := newLimiter(t, pace.Options{Target: 25 * time.Millisecond, Min: 1, Max: 12, MaxLag: time.Second})
	now := time.Unix(0, 0)
	step := func(lag time.Duration, want int, why string) {
		t.Helper()
		observe(l, 100, 100*time.Millisecond) // every store slow
		l.ObserveLag(200 * time.Millisecond)
		l.ObserveLag(lag)
		now = now.Add(100 * time.Millisecond)
		if got := l.Step(now); got != want {
			t.Fatalf("%s: limit %d, want %d", why, got, want)
		}
	}
	for _, want := range []int{9, 6, 4, 3, 2, 1, 1} {
		step(time.Second, want, "slow stores, work within MaxLag")
	}
	for _, want := range []int{2, 3, 4} {
		step(1500*time.Millisecond, want, "slow stores, work past MaxLag")
	}
	step(900*time.Millisecond, 3, "slow stores, work back within MaxLag")
}

// TestThrottledTimeCountsStepsBelowMax: the throttled time is the time
// between steps that began below Max.
func TestThrottledTimeCountsStepsBelowMax(t *testing.T) {
	reg := prometheus.NewRegistry()
	l := newLimiter(t, pace.Options{Min: 2, Max: 4, Registerer: reg})
	t0 := time.Unix(100, 0)
	l.Step(t0)
	l.Step(t0.Add(time.Second)) // at Max: not throttled
	observe(l, 10, time.Second)
	l.Step(t0.Add(2 * time.Second)) // shrinks to 3
	l.Step(t0.Add(5 * time.Second)) // 3 s below Max, grows back to 4
	l.Step(t0.Add(9 * time.Second)) // at Max again
	if got := l.State().Throttled; got != 3*time.Second {
		t.Errorf("throttled %v, want 3s", got)
	}
	if got := gathered(t, reg, "relay_pace_throttled_seconds_total"); got != 3 {
		t.Errorf("relay_pace_throttled_seconds_total %v, want 3", got)
	}
	if got := gathered(t, reg, "relay_pace_limit"); got != 4 {
		t.Errorf("relay_pace_limit %v, want 4", got)
	}
}

// gathered is the value of the metric name, a gauge or a counter, in reg.
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			return m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestTurnsFollowTheLimit: no more turns are held than the limit allows; a
// shrink lets held turns finish and holds the waiters back, and a grow
// hands turns to the waiters in the order they came.
func TestTurnsFollowTheLimit(t *testing.T) {
	l := newLimiter(t, pace.Options{Target: 10 * time.Millisecond, Min: 1, Max: 3})
	ctx := context.Background()
	for range 3 {
		if err := l.Acquire(ctx); err != nil {
			t.Fatal(err)
		}
	}
	observe(l, 5, time.Second)
	l.Step(time.Now()) // 3 → 2
	observe(l, 5, time.Second)
	l.Step(time.Now()) // 2 → 1
	got := make(chan int, 3)
	for i := range 3 {
		go func() {
			if err := l.Acquire(ctx); err == nil {
				got <- i
			}
		}()
		waitFor(t, func() bool { return l.State().Waiting == i+1 })
	}
	l.Release()
	l.Release() // 1 held, limit 1: nobody may enter
	if st := l.State(); st.InFlight != 1 || st.Waiting != 3 {
		t.Fatalf("after two releases at limit 1: %+v, want 1 in flight, 3 waiting", st)
	}
	l.Step(time.Now()) // grows to 2: the first waiter enters
	if first := <-got; first != 0 {
		t.Fatalf("waiter %d entered first, want 0", first)
	}
	l.Release() // the second enters
	if second := <-got; second != 1 {
		t.Fatalf("waiter %d entered second, want 1", second)
	}
	l.Release() // the third enters
	if third := <-got; third != 2 {
		t.Fatalf("waiter %d entered third, want 2", third)
	}
	if st := l.State(); st.InFlight != 2 || st.Waiting != 0 {
		t.Fatalf("%+v, want 2 in flight, none waiting", st)
	}
}

// TestAcquireGivesUpWithItsContext: a waiter whose context ends leaves the
// queue without taking, or losing, a turn.
func TestAcquireGivesUpWithItsContext(t *testing.T) {
	l := pace.Fixed(1)
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := l.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire with every turn held: %v, want the deadline", err)
	}
	if st := l.State(); st.InFlight != 1 || st.Waiting != 0 {
		t.Fatalf("%+v, want 1 in flight, none waiting", st)
	}
	l.Release()
	if err := l.Acquire(context.Background()); err != nil {
		t.Fatal(err)
	}
	observe(l, 10, time.Hour)
	if got := l.Step(time.Now()); got != 1 {
		t.Fatalf("a fixed limiter adjusted to %d", got)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5 s")
		}
		time.Sleep(time.Millisecond)
	}
}
