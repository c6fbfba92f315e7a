package ledger_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/ledger"
)

// at is when the tests' payments happen.
var at = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

// inTx runs fn in a transaction of its own, committed when fn succeeds. It
// touches no testing.T, so goroutines may call it.
func inTx[T any](ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) (T, error)) (T, error) {
	var out T
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) (err error) {
		out, err = fn(tx)
		return err
	})
	return out, err
}

func pay(ctx context.Context, pool *pgxpool.Pool, p ledger.Payment) (ledger.Outcome, error) {
	return inTx(ctx, pool, func(tx pgx.Tx) (ledger.Outcome, error) { return ledger.ApplyPayment(ctx, tx, p) })
}

func refund(ctx context.Context, pool *pgxpool.Pool, r ledger.Refund) (ledger.Outcome, error) {
	return inTx(ctx, pool, func(tx pgx.Tx) (ledger.Outcome, error) { return ledger.ApplyRefund(ctx, tx, r) })
}

func expire(ctx context.Context, pool *pgxpool.Pool, ref ledger.SessionRef) (bool, error) {
	return inTx(ctx, pool, func(tx pgx.Tx) (bool, error) { return ledger.ExpireSession(ctx, tx, ref) })
}

func mustPay(t *testing.T, pool *pgxpool.Pool, p ledger.Payment) ledger.Outcome {
	t.Helper()
	return must(t, pool, func(tx pgx.Tx) (ledger.Outcome, error) { return ledger.ApplyPayment(t.Context(), tx, p) })
}

func mustRefund(t *testing.T, pool *pgxpool.Pool, r ledger.Refund) ledger.Outcome {
	t.Helper()
	return must(t, pool, func(tx pgx.Tx) (ledger.Outcome, error) { return ledger.ApplyRefund(t.Context(), tx, r) })
}

// must applies fn in a transaction of its own and fails t on an error.
func must(t *testing.T, pool *pgxpool.Pool, fn func(tx pgx.Tx) (ledger.Outcome, error)) ledger.Outcome {
	t.Helper()
	out, err := inTx(t.Context(), pool, fn)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// exec runs one statement for a test's setup.
func exec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// ref is how the storefront's metadata and Polar's checkout id name s's session.
func ref(s testkit.Shop) ledger.SessionRef {
	return ledger.SessionRef{SessionID: s.Session, WorkspaceID: s.WS, ExternalCheckoutID: s.PolarCheckout}
}

// paid is Polar's word that order paid s's session.
func paid(s testkit.Shop, order string) ledger.Payment {
	return ledger.Payment{
		Session: ref(s), ExternalOrderID: order, ExternalStatus: "paid", Paid: true, Currency: "usd",
		Description: "Sale " + order, RefundDescription: "Refund of " + order, At: at,
	}
}

// refundedTo is paid with a cumulative refunded total.
func refundedTo(s testkit.Shop, order string, total int64) ledger.Payment {
	p := paid(s, order)
	p.ExternalStatus, p.RefundedAmount = "partially_refunded", total
	return p
}

// refundOf is one succeeded refund of order.
func refundOf(order, id string, amount int64) ledger.Refund {
	return ledger.Refund{ExternalOrderID: order, ExternalRefundID: id, Amount: amount, Currency: "USD",
		Description: "Refund " + id, At: at}
}

// sessionState is a checkout session's row as the tests check it.
type sessionState struct {
	status, polarStatus string
	order, booking      *string
	refunded            int64
	completedAt         *time.Time
}

func sessionOf(t *testing.T, pool *pgxpool.Pool, id string) sessionState {
	t.Helper()
	var s sessionState
	if err := pool.QueryRow(t.Context(), `
		SELECT status, coalesce(polar_status, ''), polar_order_id, finance_transaction_id::text, refunded_amount, completed_at
		FROM inventory_checkout_sessions WHERE id = $1`, id).
		Scan(&s.status, &s.polarStatus, &s.order, &s.booking, &s.refunded, &s.completedAt); err != nil {
		t.Fatalf("read session %s: %v", id, err)
	}
	return s
}

// entry is one wallet_transactions row.
type entry struct {
	id, kind, ref, wallet, currency, description string
	category, reverses                           *string
	amount                                       int64
	takenAt                                      time.Time
}

// ledgerOf returns the rows booked in the wallets of workspace ws: sales
// first, then reversals in the order they were booked.
func ledgerOf(t *testing.T, pool *pgxpool.Pool, ws string) []entry {
	t.Helper()
	rows, err := pool.Query(t.Context(), `
		SELECT t.id::text, t.source_kind, t.source_ref, t.wallet_id::text, t.currency, t.description,
		       t.category_id::text, t.reverses_id::text, t.amount, t.taken_at
		FROM wallet_transactions t WHERE t.wallet_id IN (SELECT id FROM workspace_wallets WHERE ws_id = $1)
		ORDER BY t.source_kind = 'reversal', t.created_at, t.id`, ws)
	if err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	es, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (e entry, err error) {
		err = row.Scan(&e.id, &e.kind, &e.ref, &e.wallet, &e.currency, &e.description, &e.category, &e.reverses, &e.amount, &e.takenAt)
		return e, err
	})
	if err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	return es
}

// reversedOf sums the reversals in es as a positive amount.
func reversedOf(es []entry) (reversed int64, n int) {
	for _, e := range es {
		if e.kind == "reversal" {
			reversed -= e.amount
			n++
		}
	}
	return reversed, n
}

func TestApplyPaymentCompletesAndBooksOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})

	pending := paid(s, "ord_1")
	pending.Paid, pending.ExternalStatus = false, "pending"
	out := mustPay(t, pool, pending)
	if out.Completed || out.Booking != ledger.NotPaid {
		t.Fatalf("pending order: completed %v, booking %q; want not completed, %q", out.Completed, out.Booking, ledger.NotPaid)
	}
	if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusReserved || got.polarStatus != "pending" ||
		got.order == nil || *got.order != "ord_1" || got.booking != nil {
		t.Fatalf("after a pending order: session = %+v, want reserved, pending, order ord_1 recorded, no booking", got)
	}

	out = mustPay(t, pool, paid(s, "ord_1"))
	if !out.Completed || out.Booking != ledger.Booked || out.Reversed != 0 || out.Session.Status != ledger.StatusCompleted {
		t.Fatalf("paid order: outcome = %+v, want completed now and booked", out)
	}
	es := ledgerOf(t, pool, s.WS)
	if len(es) != 1 {
		t.Fatalf("ledger = %+v, want one sale", es)
	}
	sale := es[0]
	if sale.kind != "sale" || sale.ref != s.Session || sale.amount != 4950 || sale.currency != "USD" ||
		sale.wallet != s.Wallet || sale.category == nil || *sale.category != s.Category ||
		sale.description != "Sale ord_1" || !sale.takenAt.Equal(at) || sale.reverses != nil {
		t.Fatalf("sale = %+v, want 4950 USD into wallet %s, category %s, taken at %v, keyed by the session", sale, s.Wallet, s.Category, at)
	}
	got := sessionOf(t, pool, s.Session)
	if got.status != ledger.StatusCompleted || got.polarStatus != "paid" || got.completedAt == nil || !got.completedAt.Equal(at) ||
		got.booking == nil || *got.booking != sale.id || out.Session.FinanceTransactionID == nil || *out.Session.FinanceTransactionID != sale.id {
		t.Fatalf("session = %+v, outcome's booking %v; want completed at %v, paid, linked to %s", got, out.Session.FinanceTransactionID, at, sale.id)
	}

	for range 2 {
		later := paid(s, "ord_1")
		later.At = at.Add(time.Hour)
		if out := mustPay(t, pool, later); out.Completed || out.Booking != ledger.AlreadyBooked {
			t.Fatalf("paid again: outcome = %+v, want already booked, not completed again", out)
		}
	}
	if es := ledgerOf(t, pool, s.WS); len(es) != 1 {
		t.Fatalf("after repeated payments: ledger = %+v, want the one sale", es)
	}
	if got := sessionOf(t, pool, s.Session); !got.completedAt.Equal(at) {
		t.Errorf("completed_at moved to %v, want the first payment's %v", got.completedAt, at)
	}

	// A session that lost its link is relinked to its booking, not booked again.
	exec(t, pool, `UPDATE inventory_checkout_sessions SET finance_transaction_id = NULL WHERE id = $1`, s.Session)
	if out := mustPay(t, pool, paid(s, "ord_1")); out.Booking != ledger.AlreadyBooked {
		t.Fatalf("unlinked session: booking %q, want %q", out.Booking, ledger.AlreadyBooked)
	}
	if got := sessionOf(t, pool, s.Session); got.booking == nil || *got.booking != sale.id {
		t.Fatalf("session booking = %v, want relinked to %s", got.booking, sale.id)
	}
	if es := ledgerOf(t, pool, s.WS); len(es) != 1 {
		t.Fatalf("after relinking: ledger = %+v, want the one sale", es)
	}
}

func TestApplyPaymentBooksCategoryOnlyWhenLinesShareOne(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{MixedCategory: true})
	mustPay(t, pool, paid(s, "ord_mixed"))
	if es := ledgerOf(t, pool, s.WS); len(es) != 1 || es[0].category != nil || es[0].amount != 4950 {
		t.Fatalf("ledger = %+v, want one sale of 4950 without a category", es)
	}
}

// TestApplyPaymentSkipsWhatItCannotBook covers each reason a paid session is
// completed unbooked and kept as pending, and that the same payment applied
// again once the reason is fixed books what was pending.
func TestApplyPaymentSkipsWhatItCannotBook(t *testing.T) {
	pool := testdb.NewPool(t)
	foreign := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	setting := func(t *testing.T, s testkit.Shop, value string) {
		exec(t, pool, `UPDATE workspace_configs SET value = $2 WHERE ws_id = $1`, s.WS, value)
	}
	cases := []struct {
		name  string
		opts  testkit.ShopOptions
		setup func(t *testing.T, s testkit.Shop)
		pay   func(s testkit.Shop) ledger.Payment
		want  string
		fix   func(t *testing.T, s testkit.Shop)
	}{{
		name: "no default wallet setting",
		opts: testkit.ShopOptions{NoWallet: true},
		want: ledger.SkippedNoWallet,
		fix: func(t *testing.T, s testkit.Shop) {
			exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, " "+s.Wallet+" ")
		},
	}, {
		name:  "setting that is no wallet id",
		setup: func(t *testing.T, s testkit.Shop) { setting(t, s, "main") },
		want:  ledger.SkippedNoWallet,
		fix:   func(t *testing.T, s testkit.Shop) { setting(t, s, s.Wallet) },
	}, {
		name:  "wallet of another workspace",
		setup: func(t *testing.T, s testkit.Shop) { setting(t, s, foreign.Wallet) },
		want:  ledger.SkippedWalletWorkspace,
		fix:   func(t *testing.T, s testkit.Shop) { setting(t, s, s.Wallet) },
	}, {
		name: "wallet in another currency",
		opts: testkit.ShopOptions{WalletCurrency: "EUR"},
		want: ledger.SkippedCurrency,
		fix: func(t *testing.T, s testkit.Shop) {
			exec(t, pool, `UPDATE workspace_wallets SET currency = 'usd' WHERE id = $1`, s.Wallet)
		},
	}, {
		name: "paid in another currency",
		pay: func(s testkit.Shop) ledger.Payment {
			p := paid(s, "ord_"+s.Session)
			p.Currency = "gbp"
			return p
		},
		want: ledger.SkippedCurrency,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := testkit.SeedShop(t, pool, c.opts)
			if c.setup != nil {
				c.setup(t, s)
			}
			p := paid(s, "ord_"+s.Session)
			if c.pay != nil {
				p = c.pay(s)
			}
			out := mustPay(t, pool, p)
			if !out.Completed || out.Booking != c.want {
				t.Fatalf("outcome = %+v, want completed, %q", out, c.want)
			}
			if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusCompleted || got.booking != nil {
				t.Fatalf("session = %+v, want completed, unbooked", got)
			}
			if es := append(ledgerOf(t, pool, s.WS), ledgerOf(t, pool, foreign.WS)...); len(es) != 0 {
				t.Fatalf("ledger = %+v, want nothing booked anywhere", es)
			}

			if b, rows := pendingOf(t, pool, s.Session); rows != 1 || b.Reason == "" || b.PostedAt != nil {
				t.Fatalf("pending = %+v (%d rows), want the sale kept as pending", b, rows)
			}

			if c.fix != nil {
				c.fix(t, s)
			} else {
				p.Currency = "USD"
			}
			// The event applied again books what was pending: PostedPending.
			if out := mustPay(t, pool, p); out.Booking != ledger.PostedPending || out.Completed {
				t.Fatalf("after the fix: outcome = %+v, want the pending sale posted, not completed again", out)
			}
			if b, _ := pendingOf(t, pool, s.Session); b.PostedAt == nil || b.TransactionID == nil {
				t.Fatalf("pending after the fix = %+v, want posted", b)
			}
			if es := ledgerOf(t, pool, s.WS); len(es) != 1 || es[0].amount != 4950 || es[0].wallet != s.Wallet {
				t.Fatalf("after the fix: ledger = %+v, want one sale of 4950 into %s", es, s.Wallet)
			}
		})
	}
}

func TestStatusNeverGoesBackwards(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	mustPay(t, pool, paid(s, "ord_1"))

	late := paid(s, "ord_1")
	late.Paid, late.ExternalStatus, late.At = false, "pending", at.Add(-time.Hour)
	if out := mustPay(t, pool, late); out.Completed || out.Booking != ledger.NotPaid {
		t.Fatalf("late pending: outcome = %+v, want nothing", out)
	}
	if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusCompleted || got.polarStatus != "paid" || !got.completedAt.Equal(at) {
		t.Fatalf("after a late pending: session = %+v, want still completed and paid", got)
	}

	mustPay(t, pool, refundedTo(s, "ord_1", 1650))
	stale := paid(s, "ord_1") // paid, refunded 0: older than the refund
	if out := mustPay(t, pool, stale); out.Reversed != 0 {
		t.Fatalf("stale paid: reversed %d, want 0", out.Reversed)
	}
	if got := sessionOf(t, pool, s.Session); got.polarStatus != "partially_refunded" || got.refunded != 1650 {
		t.Fatalf("after a stale paid: session = %+v, want partially_refunded, 1650 refunded", got)
	}
}

func TestExpireSession(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	byCheckout := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	done := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	other := testkit.SeedShop(t, pool, testkit.ShopOptions{})

	wrongWS := ref(s)
	wrongWS.WorkspaceID = other.WS
	if _, err := expire(ctx, pool, wrongWS); !errors.Is(err, ledger.ErrWorkspaceMismatch) {
		t.Fatalf("another workspace: err = %v, want ErrWorkspaceMismatch", err)
	}
	if _, err := expire(ctx, pool, ledger.SessionRef{SessionID: "nope"}); !errors.Is(err, ledger.ErrInvalidInput) {
		t.Fatalf("malformed id: err = %v, want ErrInvalidInput", err)
	}
	if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusReserved {
		t.Fatalf("refused expiries left status %q, want reserved", got.status)
	}

	for i, want := range []bool{true, false} {
		expired, err := expire(ctx, pool, ref(s))
		if err != nil || expired != want {
			t.Fatalf("expiry %d: %v, %v; want %v", i+1, expired, err, want)
		}
	}
	if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusExpired {
		t.Fatalf("status %q, want expired", got.status)
	}

	if expired, err := expire(ctx, pool, ledger.SessionRef{ExternalCheckoutID: byCheckout.PolarCheckout}); err != nil || !expired {
		t.Fatalf("by checkout id: %v, %v; want expired", expired, err)
	}

	mustPay(t, pool, paid(done, "ord_done"))
	if expired, err := expire(ctx, pool, ref(done)); err != nil || expired {
		t.Fatalf("completed session: %v, %v; want left alone", expired, err)
	}
	if got := sessionOf(t, pool, done.Session); got.status != ledger.StatusCompleted {
		t.Fatalf("completed session became %q", got.status)
	}

	unknown := ledger.SessionRef{SessionID: "00000000-0000-4000-8000-000000000000", ExternalCheckoutID: "chk_unknown"}
	if _, err := expire(ctx, pool, unknown); !errors.Is(err, ledger.ErrSessionNotFound) {
		t.Fatalf("unknown session: err = %v, want ErrSessionNotFound", err)
	}
}

// TestRefusedPaymentsChangeNothing covers the payments that can never apply.
func TestRefusedPaymentsChangeNothing(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	other := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	cases := []struct {
		name string
		edit func(p *ledger.Payment)
		want error
	}{
		{"session named in another workspace", func(p *ledger.Payment) { p.Session.WorkspaceID = other.WS }, ledger.ErrWorkspaceMismatch},
		{"session found by checkout in another workspace", func(p *ledger.Payment) {
			p.Session.SessionID, p.Session.WorkspaceID = "", other.WS
		}, ledger.ErrWorkspaceMismatch},
		{"malformed session id", func(p *ledger.Payment) { p.Session.SessionID = "'; DROP TABLE x" }, ledger.ErrInvalidInput},
		{"malformed workspace id", func(p *ledger.Payment) { p.Session.WorkspaceID = "ws_1" }, ledger.ErrInvalidInput},
		{"negative refunded amount", func(p *ledger.Payment) { p.RefundedAmount = -1 }, ledger.ErrInvalidInput},
		{"unknown session, unknown checkout", func(p *ledger.Payment) {
			p.Session.SessionID, p.Session.ExternalCheckoutID = "00000000-0000-4000-8000-000000000000", "chk_unknown"
		}, ledger.ErrSessionNotFound},
		{"no reference", func(p *ledger.Payment) { p.Session = ledger.SessionRef{} }, ledger.ErrSessionNotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := paid(s, "ord_refused")
			c.edit(&p)
			if _, err := pay(t.Context(), pool, p); !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusReserved || got.order != nil || got.polarStatus != "" {
				t.Fatalf("session = %+v, want untouched", got)
			}
			if es := ledgerOf(t, pool, s.WS); len(es) != 0 {
				t.Fatalf("ledger = %+v, want empty", es)
			}
		})
	}
}
