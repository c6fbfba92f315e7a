package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/ledger"
)

// batchCase is one payment of a batch, on a shop of its own, with what
// happened to that shop before the batch.
type batchCase struct {
	name  string
	opts  testkit.ShopOptions
	setup func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop)
	// pay is the batch's payments for the shop (default: paid once).
	pay func(s testkit.Shop) []ledger.Payment
}

func orderOf(s testkit.Shop) string { return "ord_" + s.Session }

// batchCases are plain sales, which a batch books together, and every case
// that takes ApplyPayment's own path.
var batchCases = []batchCase{
	{name: "plain sale"},
	{name: "another plain sale"},
	{name: "plain sale, lines of two categories", opts: testkit.ShopOptions{MixedCategory: true}},
	{name: "plain sale without an order id", pay: func(s testkit.Shop) []ledger.Payment {
		p := paid(s, "")
		return []ledger.Payment{p}
	}},
	{name: "no default wallet", opts: testkit.ShopOptions{NoWallet: true}},
	{name: "wallet in another currency", opts: testkit.ShopOptions{WalletCurrency: "EUR"}},
	{name: "paid in another currency", pay: func(s testkit.Shop) []ledger.Payment {
		p := paid(s, orderOf(s))
		p.Currency = "gbp"
		return []ledger.Payment{p}
	}},
	{name: "refund recorded before the sale", setup: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		unpaid := paid(s, orderOf(s))
		unpaid.Paid, unpaid.ExternalStatus = false, "pending"
		mustPay(t, pool, unpaid)
		mustRefund(t, pool, refundOf(orderOf(s), "re_"+s.Session, 1000))
	}},
	{name: "paid and partly refunded", pay: func(s testkit.Shop) []ledger.Payment {
		return []ledger.Payment{refundedTo(s, orderOf(s), 1650)}
	}},
	{name: "booked before", setup: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		mustPay(t, pool, paid(s, orderOf(s)))
	}},
	{name: "pending, wallet set since", opts: testkit.ShopOptions{NoWallet: true}, setup: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		mustPay(t, pool, paid(s, orderOf(s)))
		exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
	}},
	{name: "booked by hand, session not linked", setup: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		exec(t, pool, `INSERT INTO wallet_transactions (wallet_id, amount, currency, description, taken_at, source_kind, source_ref)
			VALUES ($1, 4950, 'USD', 'by hand', now(), 'sale', $2)`, s.Wallet, s.Session)
	}},
	{name: "two words on one session", pay: func(s testkit.Shop) []ledger.Payment {
		unpaid := paid(s, orderOf(s))
		unpaid.Paid, unpaid.ExternalStatus = false, "pending"
		return []ledger.Payment{unpaid, paid(s, orderOf(s))}
	}},
	{name: "found by checkout id only", pay: func(s testkit.Shop) []ledger.Payment {
		return []ledger.Payment{byCheckout(paid(s, orderOf(s)))}
	}},
	{name: "not paid yet", pay: func(s testkit.Shop) []ledger.Payment {
		p := paid(s, orderOf(s))
		p.Paid, p.ExternalStatus = false, "pending"
		return []ledger.Payment{p}
	}},
	{name: "completed before, unbooked", setup: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		exec(t, pool, `UPDATE inventory_checkout_sessions SET status = 'completed' WHERE id = $1`, s.Session)
	}},
	{name: "yet another plain sale"},
}

// batchWorld seeds every case and returns its shops and the batch.
func batchWorld(t *testing.T, pool *pgxpool.Pool) ([]testkit.Shop, []ledger.Payment, []int) {
	t.Helper()
	var (
		shops []testkit.Shop
		batch []ledger.Payment
		of    []int // the case of each payment
	)
	for i, c := range batchCases {
		s := testkit.SeedShop(t, pool, c.opts)
		if c.setup != nil {
			c.setup(t, pool, s)
		}
		ps := []ledger.Payment{paid(s, orderOf(s))}
		if c.pay != nil {
			ps = c.pay(s)
		}
		shops = append(shops, s)
		for _, p := range ps {
			batch, of = append(batch, p), append(of, i)
		}
	}
	return shops, batch, of
}

// shopResult is what a shop's session and ledger look like, in terms that
// compare across two seedings.
func shopResult(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) string {
	t.Helper()
	st := sessionOf(t, pool, s.Session)
	order := "<none>"
	if st.order != nil {
		order = strings.ReplaceAll(*st.order, s.Session, "S")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "session %s %s order=%s refunded=%d linked=%v completed_at=%v;", st.status, st.polarStatus, order, st.refunded,
		st.booking != nil, st.completedAt != nil)
	for _, e := range ledgerOf(t, pool, s.WS) {
		fmt.Fprintf(&b, " %s %d %s category=%v own_wallet=%v %q;", e.kind, e.amount, e.currency, e.category != nil, e.wallet == s.Wallet,
			strings.ReplaceAll(e.description, s.Session, "S"))
		if e.kind == "sale" && (st.booking == nil || *st.booking != e.id) {
			b.WriteString(" (the session links another booking)")
		}
	}
	if pb, n := pendingOf(t, pool, s.Session); n > 0 {
		fmt.Fprintf(&b, " pending %s posted=%v refunded=%d", pb.Reason, pb.PostedAt != nil, pb.RefundedAmount)
	}
	return b.String()
}

// TestApplyPaymentsAsApplyPaymentEach seeds every case twice: one copy gets
// its batch through ApplyPayment one by one, the other through
// ApplyPayments. Outcomes, sessions, bookings and pending rows must agree.
func TestApplyPaymentsAsApplyPaymentEach(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	oneShops, oneBatch, of := batchWorld(t, pool)
	allShops, allBatch, _ := batchWorld(t, pool)

	one, err := inTx(ctx, pool, func(tx pgx.Tx) ([]ledger.Outcome, error) {
		var outs []ledger.Outcome
		for _, p := range oneBatch {
			out, err := ledger.ApplyPayment(ctx, tx, p)
			if err != nil {
				return nil, err
			}
			outs = append(outs, out)
		}
		return outs, nil
	})
	if err != nil {
		t.Fatalf("one by one: %v", err)
	}
	all, err := inTx(ctx, pool, func(tx pgx.Tx) ([]ledger.Outcome, error) { return ledger.ApplyPayments(ctx, tx, allBatch) })
	if err != nil {
		t.Fatalf("together: %v", err)
	}
	if len(all) != len(one) {
		t.Fatalf("%d outcomes, want %d", len(all), len(one))
	}
	for i := range one {
		name := batchCases[of[i]].name
		o, a := one[i], all[i]
		if a.Session == nil || a.Session.ID != allShops[of[i]].Session {
			t.Errorf("%s: outcome's session %+v, want %s", name, a.Session, allShops[of[i]].Session)
			continue
		}
		if o.Booking != a.Booking || o.Completed != a.Completed || o.Reversed != a.Reversed {
			t.Errorf("%s: together %s completed=%v reversed=%d; one by one %s completed=%v reversed=%d",
				name, a.Booking, a.Completed, a.Reversed, o.Booking, o.Completed, o.Reversed)
		}
		if (o.Session.FinanceTransactionID == nil) != (a.Session.FinanceTransactionID == nil) || o.Session.Status != a.Session.Status ||
			(o.Session.ExternalOrderID == nil) != (a.Session.ExternalOrderID == nil) {
			t.Errorf("%s: outcome's session together %+v, one by one %+v", name, *a.Session, *o.Session)
		}
	}
	for i := range batchCases {
		if want, got := shopResult(t, pool, oneShops[i]), shopResult(t, pool, allShops[i]); got != want {
			t.Errorf("%s:\n together:   %s\n one by one: %s", batchCases[i].name, got, want)
		}
	}
	// The plain sales are booked (the comparison above is no proof of
	// that if both paths booked nothing).
	for i, c := range batchCases {
		if strings.Contains(c.name, "plain sale") && all[slices.Index(of, i)].Booking != ledger.Booked {
			t.Errorf("%s: %s, want booked", c.name, all[slices.Index(of, i)].Booking)
		}
	}
}

// countingDB counts the statements sent through it.
type countingDB struct {
	ledger.DB
	n int
}

func (c *countingDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	c.n++
	return c.DB.Exec(ctx, sql, args...)
}

func (c *countingDB) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	c.n++
	return c.DB.Query(ctx, sql, args...)
}

func (c *countingDB) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	c.n++
	return c.DB.QueryRow(ctx, sql, args...)
}

// TestApplyPaymentsBooksPlainSalesInThreeStatements: what the batch path is
// for. 32 paid orders of fresh sessions, in several workspaces, cost three
// statements together (ApplyPayment alone: three each).
func TestApplyPaymentsBooksPlainSalesInThreeStatements(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	var batch []ledger.Payment
	var shops []testkit.Shop
	for range 32 {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		shops, batch = append(shops, s), append(batch, paid(s, orderOf(s)))
	}
	counted := &countingDB{}
	outs, err := inTx(ctx, pool, func(tx pgx.Tx) ([]ledger.Outcome, error) {
		counted.DB = tx
		return ledger.ApplyPayments(ctx, counted, batch)
	})
	if err != nil {
		t.Fatal(err)
	}
	if counted.n != 3 {
		t.Errorf("%d statements for 32 plain sales, want 3", counted.n)
	}
	for i, out := range outs {
		if out.Booking != ledger.Booked || !out.Completed {
			t.Errorf("payment %d: %+v, want completed and booked", i, out)
		}
		if got := shopResult(t, pool, shops[i]); !strings.HasPrefix(got, "session completed paid order=ord_S refunded=0 linked=true completed_at=true; sale 4950 USD category=true own_wallet=true") {
			t.Errorf("shop %d: %s", i, got)
		}
	}
}

// TestApplyPaymentsRacingBookEachSaleOnce: batches of the same payments in
// different orders, and single payments, at once. Every sale is booked
// once, every session linked to it, and nothing deadlocks.
func TestApplyPaymentsRacingBookEachSaleOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	var batch []ledger.Payment
	var shops []testkit.Shop
	for range 24 {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
		shops, batch = append(shops, s), append(batch, paid(s, orderOf(s)))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	booked := make(chan int, 64)
	for r := range 6 {
		wg.Go(func() {
			mine := slices.Clone(batch)
			rand.New(rand.NewPCG(uint64(r), 1)).Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
			outs, err := inTx(ctx, pool, func(tx pgx.Tx) ([]ledger.Outcome, error) { return ledger.ApplyPayments(ctx, tx, mine) })
			if err != nil {
				errs <- fmt.Errorf("batch %d: %w", r, err)
				return
			}
			n := 0
			for _, o := range outs {
				if o.Booking == ledger.Booked {
					n++
				}
			}
			booked <- n
		})
	}
	for i := range 6 {
		wg.Go(func() {
			out, err := pay(ctx, pool, batch[i*4])
			if err != nil {
				errs <- fmt.Errorf("single %d: %w", i, err)
				return
			}
			if out.Booking == ledger.Booked {
				booked <- 1
			}
		})
	}
	wg.Wait()
	close(errs)
	close(booked)
	for err := range errs {
		t.Error(err)
	}
	total := 0
	for n := range booked {
		total += n
	}
	if total != len(shops) {
		t.Errorf("%d payments said booked, want %d: one per sale", total, len(shops))
	}
	for i, s := range shops {
		if got := sales(t, pool, s.WS); len(got) != 1 || got[s.Session] != 1 {
			t.Errorf("shop %d: sales %v, want one", i, got)
		}
		if st := sessionOf(t, pool, s.Session); st.status != ledger.StatusCompleted || st.booking == nil {
			t.Errorf("shop %d: session %+v, want completed and linked", i, st)
		}
	}
}

// TestCrossedBatchesDoNotDeadlock runs, many times, two batches of the same
// sales at once: one with their order.paid in ascending session order
// (booked together), the other with a later order.updated (partly refunded,
// applied one by one) in descending order. Every session either batch
// touches is locked in one id-ordered step, so neither waits for the other
// in a circle: no deadlock (40P01), every sale booked once and its refund
// reversed once.
func TestCrossedBatchesDoNotDeadlock(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	const rounds, perBatch = 12, 8
	for round := range rounds {
		shops := make([]testkit.Shop, perBatch)
		for i := range shops {
			shops[i] = testkit.SeedShop(t, pool, testkit.ShopOptions{})
		}
		slices.SortFunc(shops, func(a, b testkit.Shop) int { return strings.Compare(a.Session, b.Session) })
		var paidBatch, updatedBatch []ledger.Payment
		for i, s := range shops {
			paidBatch = append(paidBatch, paid(s, orderOf(s)))
			r := shops[len(shops)-1-i]
			updatedBatch = append(updatedBatch, refundedTo(r, orderOf(r), 1650))
		}
		errs := atOnce(ctx, pool,
			func(tx pgx.Tx) error { _, err := ledger.ApplyPayments(ctx, tx, paidBatch); return err },
			func(tx pgx.Tx) error { _, err := ledger.ApplyPayments(ctx, tx, updatedBatch); return err })
		for i, err := range errs {
			if err != nil {
				var pgErr *pgconn.PgError
				if errors.As(err, &pgErr) && pgErr.Code == "40P01" {
					t.Fatalf("round %d: batch %d deadlocked: %v", round, i, err)
				}
				t.Fatalf("round %d: batch %d: %v", round, i, err)
			}
		}
		for i, s := range shops {
			if got := sales(t, pool, s.WS); len(got) != 1 || got[s.Session] != 1 {
				t.Fatalf("round %d, shop %d: sales %v, want one", round, i, got)
			}
			if reversed, n := reversedOf(ledgerOf(t, pool, s.WS)); reversed != 1650 || n != 1 {
				t.Fatalf("round %d, shop %d: reversed %d in %d bookings, want 1650 in one", round, i, reversed, n)
			}
		}
	}
}
