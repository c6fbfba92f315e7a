package main

import (
	"fmt"
	"testing"
)

// TestMixSessionsPaysEachSessionOnce: the flash-sale run sends one event
// per session, so the mix must hold as many distinct sessions as events.
func TestMixSessionsPaysEachSessionOnce(t *testing.T) {
	mk := func(prefix string, n int) []session {
		out := make([]session, n)
		for i := range out {
			out[i] = session{id: fmt.Sprintf("%s%d", prefix, i)}
		}
		return out
	}
	const n = 30000
	got := mixSessions(mk("f", n*9/10+1), mk("s", n), 0.9, n)
	if len(got) != n {
		t.Fatalf("%d sessions, want %d", len(got), n)
	}
	seen, flash := map[string]bool{}, 0
	for _, s := range got {
		if seen[s.id] {
			t.Fatalf("session %s twice", s.id)
		}
		seen[s.id] = true
		if s.id[0] == 'f' {
			flash++
		}
	}
	if share := float64(flash) / n; share < 0.89 || share > 0.91 {
		t.Errorf("flash share %.3f, want 0.9", share)
	}
}
