package ledger_test

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/ledger"
)

// wantReversed fails t unless the reversals in ws sum to want, each of them
// reversing sale, and the ledger's sum for the sale is what was kept.
func wantReversed(t *testing.T, es []entry, sale string, want int64) {
	t.Helper()
	reversed, _ := reversedOf(es)
	var sum int64
	for _, e := range es {
		sum += e.amount
		if e.kind == "reversal" && (e.reverses == nil || *e.reverses != sale || e.amount >= 0) {
			t.Errorf("reversal %+v: want a negative amount reversing %s", e, sale)
		}
	}
	if reversed != want || sum != 4950-want {
		t.Fatalf("ledger = %+v: reversed %d, sum %d; want reversed %d, sum %d", es, reversed, sum, want, 4950-want)
	}
}

func TestRefundedTotalsReverseEachLevelOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sale := *mustPay(t, pool, paid(s, "ord_r")).Session.FinanceTransactionID

	for i, step := range []struct {
		total, reversed int64
	}{
		{1650, 1650}, // partial refund
		{1650, 0},    // the same again
		{4950, 3300}, // then the rest
		{1650, 0},    // a stale partial, late
		{4950, 0},
		{6000, 0}, // more than the sale: nothing beyond it
	} {
		if out := mustPay(t, pool, refundedTo(s, "ord_r", step.total)); out.Reversed != step.reversed || out.Booking != ledger.AlreadyBooked {
			t.Fatalf("step %d, refunded %d: outcome = %+v, want %d reversed", i, step.total, out, step.reversed)
		}
	}
	es := ledgerOf(t, pool, s.WS)
	wantReversed(t, es, sale, 4950)
	if len(es) != 3 || es[1].amount != -1650 || es[2].amount != -3300 {
		t.Fatalf("ledger = %+v, want the sale, -1650, -3300", es)
	}
	for _, e := range es[1:] {
		if e.wallet != s.Wallet || e.currency != "USD" || e.category == nil || *e.category != s.Category ||
			e.description != "Refund of ord_r" || !e.takenAt.Equal(at) {
			t.Errorf("reversal %+v: want the sale's wallet, currency and category, described as the refund", e)
		}
	}
	if got := sessionOf(t, pool, s.Session); got.refunded != 6000 || got.status != ledger.StatusCompleted {
		t.Errorf("session = %+v, want completed, largest refunded total recorded", got)
	}
}

func TestApplyRefund(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sale := *mustPay(t, pool, paid(s, "ord_f")).Session.FinanceTransactionID

	for _, step := range []struct {
		r        ledger.Refund
		reversed int64
	}{
		{refundOf("ord_f", "re_1", 1000), 1000},
		{refundOf("ord_f", "re_1", 1000), 0}, // redelivered
		{refundOf("ord_f", "re_2", 650), 650},
		{refundOf("ord_f", "re_3", 5000), 3300}, // no more than the sale
	} {
		if out := mustRefund(t, pool, step.r); out.Reversed != step.reversed || out.Session.ID != s.Session {
			t.Fatalf("refund %s: outcome = %+v, want %d reversed on %s", step.r.ExternalRefundID, out, step.reversed, s.Session)
		}
	}
	// The order's cumulative figure agrees: nothing more.
	if out := mustPay(t, pool, refundedTo(s, "ord_f", 4950)); out.Reversed != 0 {
		t.Fatalf("refunded total after the refunds: reversed %d, want 0", out.Reversed)
	}
	wantReversed(t, ledgerOf(t, pool, s.WS), sale, 4950)
	var recorded int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM checkout_session_refunds WHERE checkout_session_id = $1`, s.Session).Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	if recorded != 3 {
		t.Errorf("%d refunds recorded, want 3", recorded)
	}

	for _, c := range []struct {
		name string
		r    ledger.Refund
		want error
	}{
		{"another currency", func() ledger.Refund { r := refundOf("ord_f", "re_eur", 1); r.Currency = "eur"; return r }(), ledger.ErrInvalidInput},
		{"negative amount", refundOf("ord_f", "re_neg", -1), ledger.ErrInvalidInput},
		{"no refund id", refundOf("ord_f", "", 1), ledger.ErrInvalidInput},
		{"no order id", refundOf("", "re_x", 1), ledger.ErrInvalidInput},
		{"unknown order", refundOf("ord_unknown", "re_u", 1), ledger.ErrSessionNotFound},
	} {
		if _, err := refund(ctx, pool, c.r); !errors.Is(err, c.want) {
			t.Errorf("%s: err = %v, want %v", c.name, err, c.want)
		}
	}
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM checkout_session_refunds`).Scan(&recorded); err != nil {
		t.Fatal(err)
	}
	if recorded != 3 {
		t.Errorf("refused refunds were recorded: %d refunds, want 3", recorded)
	}
}

func TestRefundsBeforeTheSaleAreReversedOnceBooked(t *testing.T) {
	pool := testdb.NewPool(t)

	t.Run("refund events", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		pending := paid(s, "ord_early")
		pending.Paid, pending.ExternalStatus = false, "pending"
		mustPay(t, pool, pending) // records the order
		if out := mustRefund(t, pool, refundOf("ord_early", "re_early", 1650)); out.Booking != ledger.NotPaid || out.Reversed != 0 {
			t.Fatalf("refund before the sale: outcome = %+v, want not paid, nothing reversed", out)
		}
		if es := ledgerOf(t, pool, s.WS); len(es) != 0 {
			t.Fatalf("ledger = %+v, want empty before the sale", es)
		}
		out := mustPay(t, pool, paid(s, "ord_early"))
		if out.Booking != ledger.Booked || out.Reversed != 1650 {
			t.Fatalf("sale: outcome = %+v, want booked and 1650 reversed", out)
		}
		if out := mustPay(t, pool, paid(s, "ord_early")); out.Reversed != 0 {
			t.Fatalf("sale again: reversed %d, want 0", out.Reversed)
		}
		wantReversed(t, ledgerOf(t, pool, s.WS), *out.Session.FinanceTransactionID, 1650)
	})

	t.Run("refunded total while unbooked", func(t *testing.T) {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
		if out := mustPay(t, pool, refundedTo(s, "ord_nw", 1650)); out.Booking != ledger.SkippedNoWallet {
			t.Fatalf("without a wallet: booking %q, want %q", out.Booking, ledger.SkippedNoWallet)
		}
		exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
		out := mustPay(t, pool, paid(s, "ord_nw")) // a replay of an older word, refunded 0
		if out.Booking != ledger.PostedPending || out.Reversed != 1650 {
			t.Fatalf("after the wallet is set: outcome = %+v, want the pending sale posted and the recorded 1650 reversed", out)
		}
		wantReversed(t, ledgerOf(t, pool, s.WS), *out.Session.FinanceTransactionID, 1650)
	})
}

// TestConcurrentRefundsOfOneSale applies many refund words for one sale at
// once, each in its own transaction: the reversals add up to the refunded
// total, capped at the sale, whatever order they commit in.
func TestConcurrentRefundsOfOneSale(t *testing.T) {
	pool := testdb.NewPool(t)
	cases := []struct {
		name    string
		totals  []int64 // order events' cumulative refunded totals
		refunds []int64 // refund events, one id each
		want    int64
	}{
		{name: "refunded totals", totals: []int64{400, 800, 1200, 1650, 2000, 2400, 2800, 3200, 3600, 4000, 4400, 4800, 5200}, want: 4950},
		{name: "refunds beyond the sale", refunds: []int64{600, 600, 600, 600, 600, 600, 600, 600, 600, 600}, want: 4950},
		{name: "refunds within the sale", refunds: []int64{300, 300, 300, 300, 300, 300, 300}, want: 2100},
		{name: "both", totals: []int64{1000, 1650, 1200}, refunds: []int64{300, 300, 300, 300, 300}, want: 1650},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
			order := "ord_" + s.Session
			sale := *mustPay(t, pool, paid(s, order)).Session.FinanceTransactionID

			// Every transaction is open before any applies its word, so that
			// they run together rather than in the order they connect.
			var (
				wg, ready sync.WaitGroup
				start     = make(chan struct{})
				mu        sync.Mutex
				reported  int64
			)
			apply := func(fn func(tx pgx.Tx) (ledger.Outcome, error)) {
				ready.Add(1)
				wg.Go(func() {
					out, err := func() (ledger.Outcome, error) {
						tx, err := pool.Begin(ctx)
						ready.Done()
						if err != nil {
							return ledger.Outcome{}, err
						}
						defer tx.Rollback(ctx) //nolint:errcheck // after Commit, a no-op
						<-start
						out, err := fn(tx)
						if err != nil {
							return out, err
						}
						return out, tx.Commit(ctx)
					}()
					if err != nil {
						t.Errorf("apply: %v", err)
						return
					}
					mu.Lock()
					reported += out.Reversed
					mu.Unlock()
				})
			}
			for _, total := range c.totals {
				apply(func(tx pgx.Tx) (ledger.Outcome, error) {
					return ledger.ApplyPayment(ctx, tx, refundedTo(s, order, total))
				})
			}
			for i, amount := range c.refunds {
				apply(func(tx pgx.Tx) (ledger.Outcome, error) {
					return ledger.ApplyRefund(ctx, tx, refundOf(order, fmt.Sprintf("re_%s_%d", s.Session, i), amount))
				})
			}
			ready.Wait()
			close(start)
			wg.Wait()

			wantReversed(t, ledgerOf(t, pool, s.WS), sale, c.want)
			if reported != c.want {
				t.Errorf("outcomes report %d reversed, want %d", reported, c.want)
			}
		})
	}
}

// TestReversalsBookedBeforeTheNewKeysCount starts from a ledger written by
// an earlier relay, whose reversals were keyed "<sale>:<target level>": the
// level they reached is not booked again.
func TestReversalsBookedBeforeTheNewKeysCount(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	sale := *mustPay(t, pool, paid(s, "ord_old")).Session.FinanceTransactionID
	exec(t, pool, `
		INSERT INTO wallet_transactions (wallet_id, category_id, amount, currency, description, source_kind, source_ref, reverses_id)
		VALUES ($1, $2, -1650, 'USD', 'Refund of ord_old', 'reversal', $3::text || ':1650', $3::uuid)`, s.Wallet, s.Category, sale)
	exec(t, pool, `UPDATE inventory_checkout_sessions SET refunded_amount = 1650 WHERE id = $1`, s.Session)

	for i, step := range []struct {
		p        ledger.Payment
		reversed int64
	}{
		{refundedTo(s, "ord_old", 1650), 0},
		{refundedTo(s, "ord_old", 4950), 3300},
		{refundedTo(s, "ord_old", 4950), 0},
	} {
		if out := mustPay(t, pool, step.p); out.Reversed != step.reversed {
			t.Fatalf("step %d: reversed %d, want %d", i, out.Reversed, step.reversed)
		}
	}
	if out := mustRefund(t, pool, refundOf("ord_old", "re_old", 1650)); out.Reversed != 0 {
		t.Fatalf("refund event: reversed %d, want 0", out.Reversed)
	}
	es := ledgerOf(t, pool, s.WS)
	wantReversed(t, es, sale, 4950)
	if len(es) != 3 || es[2].ref != sale+":from:1650" {
		t.Fatalf("ledger = %+v, want the old reversal and one keyed %s:from:1650", es, sale)
	}
}
