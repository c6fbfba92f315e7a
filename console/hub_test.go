package console

import (
	"testing"
	"time"
)

// A subscriber that does not read is dropped once its buffer is full; the
// publisher never waits for it, and the others keep getting everything.
func TestHubDropsSlowSubscribers(t *testing.T) {
	h := newHub()
	slow, leaveSlow := h.subscribe()
	defer leaveSlow()
	fast, leaveFast := h.subscribe()
	defer leaveFast()
	acked := make(chan struct{})
	got := make(chan int)
	go func() {
		n := 0
		for range fast {
			n++
			acked <- struct{}{}
		}
		got <- n
	}()

	start := time.Now()
	dropped := 0
	const batches = subBuffer + 5
	for i := range batches {
		dropped += h.publish([]event{{id: "1", name: "delivery", data: []byte{byte(i)}}})
		<-acked // the fast one keeps up
	}
	if elapsed := time.Since(start); elapsed > time.Second {
		t.Errorf("publishing %d batches took %s: the slow subscriber held it up", batches, elapsed)
	}
	if dropped != 1 || h.count() != 1 {
		t.Errorf("dropped %d subscribers, %d left; want the slow one dropped and the fast one left", dropped, h.count())
	}
	n := 0
	for range slow {
		n++
	}
	if n != subBuffer {
		t.Errorf("the slow subscriber got %d batches before its channel closed, want its buffer's %d", n, subBuffer)
	}
	h.close()
	if n := <-got; n != batches {
		t.Errorf("the fast subscriber got %d batches, want %d", n, batches)
	}
	if _, open := <-func() <-chan []event { c, _ := h.subscribe(); return c }(); open {
		t.Error("subscribing to a closed hub gives an open channel")
	}
}
