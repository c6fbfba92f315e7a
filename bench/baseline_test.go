package main

import (
	"strings"
	"testing"
	"time"
)

// TestBeforeAfterShowsThisRunBesideTheBaselines: every make bench writes
// the before and after side by side, this run's figures from its own rows.
func TestBeforeAfterShowsThisRunBesideTheBaselines(t *testing.T) {
	r := &report{Ceiling: 1857}
	r.add(row{Name: "pgbench diagnostic: inbox insert only, no River job, c=32", Rate: 2764, Count: 1000, WAL: walStats{bytes: 2_130_000}})
	r.add(row{Name: "relay closed loop, c=32, group commit (default)", Rate: 2636, Count: 1000, WAL: walStats{bytes: 2_794_000}})
	at := &processResult{Offered: 2000, Rate: 1110, Sent: 20000, Lag: [4]time.Duration{0, 0, 7319 * time.Millisecond}}
	at.Ack.P99 = 1466 * time.Millisecond
	capacity := &processResult{Offered: 3000, Rate: 1281, Sent: 30000, ProcessWindow: 23.4,
		ProcessCPU: cpuSplit{Postgres: 1.16, Relay: 0.56}, ProcessWALs: walStats{bytes: 30000 * 5245}}
	flash := &processResult{Offered: 3000, Rate: 1102, Sent: 30000, ProcessWALs: walStats{bytes: 30000 * 5038}}
	r.Process = []*processResult{at, capacity, flash}

	got := r.beforeAfter()
	for _, want := range []string{
		"| Measurement | f01d6f1 | af25d73 | this run |",
		"| sustained end to end, capacity run | 1,115/s (1,250/s offered) | 669/s (3,000/s offered) | 1,281/s (3,000/s offered) |",
		"| lag p99, lag run | 166 ms | 19832 ms | 7319 ms |",
		"| ack p99 while processing, lag run | 108 ms | 2613 ms | 1466 ms |",
		"| WAL per processed event (receive + process), capacity run | 7428 B | 6512 B | 5245 B |",
		"| WAL per processed event, flash sale | – | 6531 B | 5038 B |",
		"| PostgreSQL CPU per processed event, capacity run | 1.066 ms | 1.997 ms | 0.905 ms |",
		"| pgbench ceiling, receiver tx, c=32 | 3658 tps | 2140 tps | 1857 tps |",
		"| pgbench diagnostic, inbox insert only, c=32 | 5450 tps, 1842 B/tx | 4030 tps, 1844 B/tx | 2764 tps, 2130 B/tx |",
		"| relay closed loop acks, c=32 | 4088/s, 2419 B/tx | 3330/s, 2584 B/tx | 2636/s, 2794 B/tx |",
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("missing line %q in:\n%s", want, got)
		}
	}
}
