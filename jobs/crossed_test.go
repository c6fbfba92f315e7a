package jobs_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// TestCrossedBatchesWithRefundsDoNotDeadlock runs, several times, two batch
// jobs at once over the same paid sales: one has the partial refund
// (order.updated) of the first half and the full refund (refund.updated)
// of the second, the other the reverse. A batch locks every session its
// events touch in one id-ordered step before it changes any, so neither
// waits for the other in a circle: no deadlock, no split into single jobs,
// and every sale is reversed once, in full.
func TestCrossedBatchesWithRefundsDoNotDeadlock(t *testing.T) {
	pool := testdb.NewPool(t)
	sys := startSystem(t, pool, systemOpts{})
	const rounds, half = 5, 4
	for round := range rounds {
		shops := make([]shop, 2*half)
		paid := map[string][]byte{}
		for i := range shops {
			shops[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
			paid[fmt.Sprintf("msg_%d_%d_paid", round, i)] = event(t, "order.updated.paid.json", shops[i], fmt.Sprintf("ord_%d_%d", round, i), nil)
		}
		storeBatches(t, sys, paid)
		waitEventJobs(t, pool)

		a, b := map[string][]byte{}, map[string][]byte{}
		for i, s := range shops {
			order := fmt.Sprintf("ord_%d_%d", round, i)
			partial := event(t, "order.updated.partially_refunded.json", s, order, nil)
			full := event(t, "refund.updated.json", s, order, func(d map[string]any) {
				d["id"], d["amount"], d["tax_amount"] = fmt.Sprintf("re_%d_%d", round, i), 4500, 450
			})
			if i < half {
				a[fmt.Sprintf("msg_%d_%d_partial", round, i)] = partial
				b[fmt.Sprintf("msg_%d_%d_full", round, i)] = full
			} else {
				b[fmt.Sprintf("msg_%d_%d_partial", round, i)] = partial
				a[fmt.Sprintf("msg_%d_%d_full", round, i)] = full
			}
		}
		storeBatches(t, sys, a, b)
		waitEventJobs(t, pool)
		if logs := sys.logs.String(); strings.Contains(logs, "deadlock detected") || strings.Contains(logs, "batch split into single jobs") {
			for line := range strings.Lines(logs) {
				if strings.Contains(line, "batch split") {
					t.Errorf("round %d: %s", round, strings.TrimSpace(line))
				}
			}
			t.FailNow()
		}
		for i, s := range shops {
			var sum, reversed int64
			for _, row := range bookings(t, pool, s) {
				sum += row.amount
				if row.amount < 0 {
					reversed -= row.amount
				}
			}
			if sum != 0 || reversed != 4950 {
				t.Fatalf("round %d, shop %d: reversed %d, balance %d; want the whole sale (4950) reversed once", round, i, reversed, sum)
			}
		}
	}
}
