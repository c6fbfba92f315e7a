package main

import (
	"fmt"
	"strings"
	"time"
)

// baseline is an earlier run's figures, shown beside this run's in the
// "Before and after" table, so that every make bench says what changed
// since. Zero means "not measured then".
type baseline struct {
	Label, Note string

	Capacity, CapacityOffered float64 // sustained end to end, capacity run
	AtTarget, AtTargetOffered float64 // end to end at the lag run's rate
	Flash                     float64 // flash sale, 90% in one workspace
	LagP99MS, AckP99MS        float64 // lag run
	WAL, FlashWAL             float64 // bytes per processed event
	PGCPU, RelayCPU           float64 // ms per processed event, capacity run
	Ceiling                   float64 // pgbench, receiver tx, c=32, tps
	InboxOnly, InboxOnlyWAL   float64 // pgbench diagnostic, tps and bytes/tx
	ClosedLoop, ClosedLoopWAL float64 // relay closed loop acks/s and bytes/tx
}

// baselines are the runs issue 14 started from: bench/RESULTS.md at
// f01d6f1, where the figures came from, and the same harness as
// now at af25d73, on the machine of today's runs, before any of the
// processing changes.
var baselines = []baseline{
	{
		Label: "f01d6f1", Note: "2026-11-23, an Intel Xeon VM, fsync probe 195 µs, processing offered at 1,000/s and 1,250/s",
		Capacity: 1115, CapacityOffered: 1250, AtTarget: 961, AtTargetOffered: 1000,
		LagP99MS: 166, AckP99MS: 108, WAL: 7428, PGCPU: 1.066, RelayCPU: 0.439,
		Ceiling: 3658, InboxOnly: 5450, InboxOnlyWAL: 1842, ClosedLoop: 4088, ClosedLoopWAL: 2419,
	},
	{
		Label: "af25d73", Note: "2026-12-01 21:34 UTC, this harness on the AMD EPYC machine (fsync probe 358 µs), processing offered at 2,000/s and 3,000/s as now",
		Capacity: 669, CapacityOffered: 3000, AtTarget: 633, AtTargetOffered: 2000, Flash: 785,
		LagP99MS: 19832, AckP99MS: 2613, WAL: 6512, FlashWAL: 6531, PGCPU: 1.997, RelayCPU: 0.690,
		Ceiling: 2140, InboxOnly: 4030, InboxOnlyWAL: 1844, ClosedLoop: 3330, ClosedLoopWAL: 2584,
	},
}

// current is this run's figures in a baseline's shape.
func (r *report) current() baseline {
	c := baseline{Label: "this run", Ceiling: r.Ceiling} // the higher of the two ceiling runs
	for _, x := range r.Rows {
		switch {
		case strings.HasPrefix(x.Name, "pgbench diagnostic: inbox insert only") && c.InboxOnly == 0:
			c.InboxOnly, c.InboxOnlyWAL = x.Rate, perTx(x)
		case strings.HasSuffix(x.Name, "group commit (default)") && c.ClosedLoop == 0:
			c.ClosedLoop, c.ClosedLoopWAL = x.Rate, perTx(x)
		}
	}
	if len(r.Process) >= 2 {
		at, capacity := r.Process[0], r.Process[1]
		c.AtTarget, c.AtTargetOffered = at.Rate, float64(at.Offered)
		c.LagP99MS, c.AckP99MS = millis(at.Lag[2]), millis(at.Ack.P99)
		c.Capacity, c.CapacityOffered = capacity.Rate, float64(capacity.Offered)
		c.WAL, c.PGCPU = capacity.walPerEvent(), capacity.pgCPUPerEvent()
		c.RelayCPU = capacity.relayCPUPerEvent()
		if len(r.Process) >= 3 {
			c.Flash, c.FlashWAL = r.Process[2].Rate, r.Process[2].walPerEvent()
		}
	}
	return c
}

func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// perTx is a row's WAL bytes per transaction (or acked webhook).
func perTx(x row) float64 {
	if x.Count == 0 {
		return 0
	}
	return float64(x.WAL.bytes) / float64(x.Count)
}

// beforeAfter is the table of this run beside the baselines.
func (r *report) beforeAfter() string {
	cols := append(append([]baseline(nil), baselines...), r.current())
	var b strings.Builder
	b.WriteString("## Before and after (issue 14)\n\n")
	b.WriteString("This run beside the runs the processing work started from; the machine changed between the first two, so compare the last two columns. ")
	for _, c := range baselines {
		fmt.Fprintf(&b, "**%s**: %s. ", c.Label, c.Note)
	}
	b.WriteString("What each change bought, and what stands in the way of the targets: docs/performance.md.\n\n")
	b.WriteString("| Measurement |")
	for _, c := range cols {
		fmt.Fprintf(&b, " %s |", c.Label)
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(cols)) + "\n")
	line := func(name string, cell func(c baseline) string) {
		b.WriteString("| " + name + " |")
		for _, c := range cols {
			b.WriteString(" " + cell(c) + " |")
		}
		b.WriteString("\n")
	}
	num := func(v float64, format string) string {
		if v == 0 {
			return "–"
		}
		return fmt.Sprintf(format, v)
	}
	rate := func(v, offered float64) string {
		if v == 0 {
			return "–"
		}
		return fmt.Sprintf("%s/s (%s/s offered)", thousands(v), thousands(offered))
	}
	line("sustained end to end, capacity run", func(c baseline) string { return rate(c.Capacity, c.CapacityOffered) })
	line("end to end at the lag run's rate", func(c baseline) string { return rate(c.AtTarget, c.AtTargetOffered) })
	line("flash sale, 90% of sales in one workspace", func(c baseline) string { return num(c.Flash, "%.0f/s") })
	line("lag p99, lag run", func(c baseline) string { return num(c.LagP99MS, "%.0f ms") })
	line("ack p99 while processing, lag run", func(c baseline) string { return num(c.AckP99MS, "%.0f ms") })
	line("WAL per processed event (receive + process), capacity run", func(c baseline) string { return num(c.WAL, "%.0f B") })
	line("WAL per processed event, flash sale", func(c baseline) string { return num(c.FlashWAL, "%.0f B") })
	line("PostgreSQL CPU per processed event, capacity run", func(c baseline) string { return num(c.PGCPU, "%.3f ms") })
	line("relay CPU per processed event, capacity run", func(c baseline) string { return num(c.RelayCPU, "%.3f ms") })
	line("pgbench ceiling, receiver tx, c=32", func(c baseline) string { return num(c.Ceiling, "%.0f tps") })
	line("pgbench diagnostic, inbox insert only, c=32", func(c baseline) string {
		return num(c.InboxOnly, "%.0f tps") + ", " + num(c.InboxOnlyWAL, "%.0f B/tx")
	})
	line("relay closed loop acks, c=32", func(c baseline) string {
		return num(c.ClosedLoop, "%.0f/s") + ", " + num(c.ClosedLoopWAL, "%.0f B/tx")
	})
	return b.String()
}

// thousands formats v rounded, with a comma between thousands.
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	for i := len(s) - 3; i > 0 && s[i-1] != '-'; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
