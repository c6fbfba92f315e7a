package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/ledger"
)

// atOnce runs each fn in a transaction of its own, every one opened before
// any runs, so that they contend rather than run in the order they
// connect. It returns each fn's error, or its commit's, by index.
func atOnce(ctx context.Context, pool *pgxpool.Pool, fns ...func(tx pgx.Tx) error) []error {
	var (
		wg, ready sync.WaitGroup
		start     = make(chan struct{})
		errs      = make([]error, len(fns))
	)
	for i, fn := range fns {
		ready.Add(1)
		wg.Go(func() {
			tx, err := pool.Begin(ctx)
			ready.Done()
			if err != nil {
				errs[i] = err
				return
			}
			defer tx.Rollback(ctx) //nolint:errcheck // after Commit, a no-op
			<-start
			if errs[i] = fn(tx); errs[i] == nil {
				errs[i] = tx.Commit(ctx)
			}
		})
	}
	ready.Wait()
	close(start)
	wg.Wait()
	return errs
}

// noErrors fails t with every error in errs.
func noErrors(t *testing.T, errs []error) {
	t.Helper()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

// post runs ledger.PostPending for workspace ws (empty: all) and fails t on
// an error.
func post(t *testing.T, pool *pgxpool.Pool, ws string) []ledger.PostResult {
	t.Helper()
	rs, err := ledger.PostPending(t.Context(), pool, ws)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// pendingOf returns the session's pending booking as listed, whether still
// pending or posted.
func pendingOf(t *testing.T, pool *pgxpool.Pool, session string) (b ledger.PendingBooking, rows int) {
	t.Helper()
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pending_bookings WHERE session_id = $1`, session).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	list, _, err := ledger.ListPending(t.Context(), pool, ledger.PendingFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range list {
		if b.SessionID == session {
			return b, rows
		}
	}
	var posted *time.Time
	var tx *string
	if rows > 0 {
		if err := pool.QueryRow(t.Context(), `SELECT posted_at, transaction_id::text FROM pending_bookings WHERE session_id = $1`, session).Scan(&posted, &tx); err != nil {
			t.Fatal(err)
		}
	}
	return ledger.PendingBooking{SessionID: session, PostedAt: posted, TransactionID: tx}, rows
}

// pendingCase is a wallet problem a paid sale can be pending for.
type pendingCase struct {
	name   string
	opts   testkit.ShopOptions
	setup  func(t *testing.T, pool *pgxpool.Pool, s, foreign testkit.Shop)
	pay    func(p ledger.Payment) ledger.Payment
	reason string
	result string // the booking result of the skip
	note   string
	fix    func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) // nil: can never post
}

// sale seeds the case's shop, foreign being another workspace, and returns
// it with the payment that cannot be booked.
func (c pendingCase) sale(t *testing.T, pool *pgxpool.Pool, foreign testkit.Shop) (testkit.Shop, ledger.Payment) {
	t.Helper()
	s := testkit.SeedShop(t, pool, c.opts)
	if c.setup != nil {
		c.setup(t, pool, s, foreign)
	}
	p := paid(s, "ord_"+s.Session)
	if c.pay != nil {
		p = c.pay(p)
	}
	return s, p
}

// pendingCases are each reason a sale can be pending for; all can be fixed
// but one.
var pendingCases = []pendingCase{{
	name: "no default wallet", opts: testkit.ShopOptions{NoWallet: true},
	reason: ledger.ReasonNoWallet, result: ledger.SkippedNoWallet, note: "no default wallet",
	fix: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
	},
}, {
	name: "wallet of another workspace",
	setup: func(t *testing.T, pool *pgxpool.Pool, s, foreign testkit.Shop) {
		exec(t, pool, `UPDATE workspace_configs SET value = $2 WHERE ws_id = $1`, s.WS, foreign.Wallet)
	},
	reason: ledger.ReasonWalletWorkspace, result: ledger.SkippedWalletWorkspace, note: "another workspace",
	fix: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		exec(t, pool, `UPDATE workspace_configs SET value = $2 WHERE ws_id = $1`, s.WS, s.Wallet)
	},
}, {
	name: "wallet in another currency", opts: testkit.ShopOptions{WalletCurrency: "EUR"},
	reason: ledger.ReasonCurrency, result: ledger.SkippedCurrency, note: "wallet is in EUR, the sale in USD",
	fix: func(t *testing.T, pool *pgxpool.Pool, s testkit.Shop) {
		var usd string
		if err := pool.QueryRow(t.Context(), `INSERT INTO workspace_wallets (ws_id, name, currency) VALUES ($1, 'Dollars', 'USD') RETURNING id::text`, s.WS).Scan(&usd); err != nil {
			t.Fatal(err)
		}
		exec(t, pool, `UPDATE workspace_configs SET value = $2 WHERE ws_id = $1`, s.WS, usd)
	},
}, {
	name: "paid in another currency",
	pay:  func(p ledger.Payment) ledger.Payment { p.Currency = "gbp"; return p },
	// The payment's currency is the provider's word: nothing fixes it.
	reason: ledger.ReasonCurrency, result: ledger.SkippedCurrency, note: "paid in GBP, the sale is in USD: it can never be booked",
}}

// TestSkippedSaleIsPendingOnce redelivers each kind of unbookable sale 20
// times at once: one pending row per sale, with its reason, counting every
// attempt, and nothing booked.
func TestSkippedSaleIsPendingOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	foreign := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	for _, c := range pendingCases {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			s, p := c.sale(t, pool, foreign)
			fns := make([]func(pgx.Tx) error, 20)
			for i := range fns {
				fns[i] = func(tx pgx.Tx) error {
					out, err := ledger.ApplyPayment(ctx, tx, p)
					if err == nil && out.Booking != c.result {
						err = fmt.Errorf("booking %q, want %q", out.Booking, c.result)
					}
					return err
				}
			}
			noErrors(t, atOnce(ctx, pool, fns...))

			b, rows := pendingOf(t, pool, s.Session)
			if rows != 1 {
				t.Fatalf("%d pending rows for the sale, want 1", rows)
			}
			if b.Reason != c.reason || b.WorkspaceID != s.WS || b.Amount != 4950 || b.Currency != "USD" ||
				b.CategoryID == nil || *b.CategoryID != s.Category || b.Attempts != 20 || b.PostedAt != nil ||
				!strings.Contains(b.Note, c.note) || b.SessionDeleted || b.LastAttemptAt.Before(b.FirstAttemptAt) {
				t.Errorf("pending = %+v; want reason %s (%q), 4950 USD of %s, category %s, 20 attempts, not posted",
					b, c.reason, c.note, s.WS, s.Category)
			}
			if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusCompleted || got.booking != nil {
				t.Errorf("session = %+v, want completed, unbooked", got)
			}
			if es := append(ledgerOf(t, pool, s.WS), ledgerOf(t, pool, foreign.WS)...); len(es) != 0 {
				t.Errorf("ledger = %+v, want nothing booked", es)
			}
		})
	}
}

// TestPostPendingBooksWhatWasPending fixes each cause and posts: the sale
// is booked as a timely one is, once, and a replay of its event afterwards
// books nothing more.
func TestPostPendingBooksWhatWasPending(t *testing.T) {
	pool := testdb.NewPool(t)
	foreign := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	for _, c := range pendingCases {
		t.Run(c.name, func(t *testing.T) {
			s, p := c.sale(t, pool, foreign)
			p.At = at.Add(-time.Hour) // when it was paid; posting is later
			mustPay(t, pool, p)
			before, _ := pendingOf(t, pool, s.Session)
			paidSession := sessionOf(t, pool, s.Session)

			if c.fix == nil {
				rs := post(t, pool, s.WS)
				after, _ := pendingOf(t, pool, s.Session)
				if len(rs) != 1 || rs[0].Result != ledger.SkippedCurrency || rs[0].Posted() || after.Attempts != 2 ||
					!after.LastAttemptAt.After(before.LastAttemptAt) || after.PostedAt != nil {
					t.Fatalf("post = %+v, pending after = %+v; want still pending for its currency, the attempt recorded", rs, after)
				}
				if es := ledgerOf(t, pool, s.WS); len(es) != 0 {
					t.Fatalf("ledger = %+v, want nothing booked", es)
				}
				return
			}

			c.fix(t, pool, s)
			rs := post(t, pool, s.WS)
			if len(rs) != 1 || rs[0].Result != ledger.PostedPending || !rs[0].Posted() || rs[0].SessionID != s.Session {
				t.Fatalf("post = %+v, want the sale posted", rs)
			}
			es := ledgerOf(t, pool, s.WS)
			if len(es) != 1 {
				t.Fatalf("ledger = %+v, want one sale", es)
			}
			sale := es[0]
			if sale.kind != "sale" || sale.ref != s.Session || sale.amount != 4950 || sale.currency != "USD" ||
				sale.wallet != rs[0].WalletID || sale.category == nil || *sale.category != s.Category ||
				sale.description != p.Description || !sale.takenAt.Equal(p.At) {
				t.Fatalf("sale = %+v, want the booking a timely sale gets: keyed by the session, 4950 USD, category, described and dated as paid", sale)
			}
			got := sessionOf(t, pool, s.Session)
			if got.booking == nil || *got.booking != sale.id {
				t.Fatalf("session booking = %v, want linked to %s", got.booking, sale.id)
			}
			// Posting books the sale as a paid order does, and records no
			// payment on the session.
			if got.status != paidSession.status || got.polarStatus != paidSession.polarStatus || *got.order != *paidSession.order ||
				got.refunded != paidSession.refunded || !got.completedAt.Equal(*paidSession.completedAt) {
				t.Fatalf("session after posting = %+v, want as the payment left it: %+v", got, paidSession)
			}
			after, rows := pendingOf(t, pool, s.Session)
			if rows != 1 || after.PostedAt == nil || after.TransactionID == nil || *after.TransactionID != sale.id {
				t.Fatalf("pending row after posting = %+v (%d rows), want kept, posted as %s", after, rows, sale.id)
			}
			if list, _, err := ledger.ListPending(t.Context(), pool, ledger.PendingFilter{WorkspaceID: s.WS}); err != nil || len(list) != 0 {
				t.Fatalf("still listed as pending: %+v, %v", list, err)
			}

			if rs := post(t, pool, s.WS); len(rs) != 0 {
				t.Fatalf("second post = %+v, want nothing to do", rs)
			}
			if out := mustPay(t, pool, p); out.Booking != ledger.AlreadyBooked {
				t.Fatalf("replay after posting: booking %q, want %q", out.Booking, ledger.AlreadyBooked)
			}
			if es := ledgerOf(t, pool, s.WS); len(es) != 1 {
				t.Fatalf("after a replay: ledger = %+v, want the one sale", es)
			}
		})
	}
}

// TestPendingReasonFollowsTheSetting: an attempt that fails for another
// reason than the first records the new one.
func TestPendingReasonFollowsTheSetting(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true, WalletCurrency: "EUR"})
	mustPay(t, pool, paid(s, "ord_reason"))
	exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
	rs := post(t, pool, "")
	if len(rs) != 1 || rs[0].Result != ledger.SkippedCurrency || rs[0].Reason != ledger.ReasonCurrency || rs[0].Attempts != 2 {
		t.Fatalf("post = %+v, want still pending, now for the wallet's currency", rs)
	}
	byReason := func(r string) int {
		list, total, err := ledger.ListPending(t.Context(), pool, ledger.PendingFilter{Reason: r})
		if err != nil || total != len(list) {
			t.Fatalf("list %s: %d of %d, %v", r, len(list), total, err)
		}
		return len(list)
	}
	if byReason(ledger.ReasonCurrency) != 1 || byReason(ledger.ReasonNoWallet) != 0 {
		t.Fatal("listing by reason does not follow the last attempt")
	}
}

// TestRefundsRecordedWhilePendingAreReversedWhenPosted: a refund and a
// larger refunded total arrive while the sale is pending; posting books the
// sale and one reversal of what was refunded.
func TestRefundsRecordedWhilePendingAreReversedWhenPosted(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	order := "ord_refunded"
	mustPay(t, pool, paid(s, order))
	if out := mustRefund(t, pool, refundOf(order, "re_1", 1000)); out.Reversed != 0 {
		t.Fatalf("refund while pending reversed %d", out.Reversed)
	}
	if b, _ := pendingOf(t, pool, s.Session); b.RefundedAmount != 1000 {
		t.Fatalf("pending refunded = %d after a refund of 1000", b.RefundedAmount)
	}
	mustPay(t, pool, refundedTo(s, order, 1650))
	if b, _ := pendingOf(t, pool, s.Session); b.RefundedAmount != 1650 {
		t.Fatalf("pending refunded = %d after a refunded total of 1650", b.RefundedAmount)
	}

	exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
	rs := post(t, pool, "")
	if len(rs) != 1 || rs[0].Result != ledger.PostedPending || rs[0].Reversed != 1650 {
		t.Fatalf("post = %+v, want posted with 1650 reversed", rs)
	}
	es := ledgerOf(t, pool, s.WS)
	wantReversed(t, es, es[0].id, 1650)
	for _, e := range es {
		if e.kind == "reversal" && e.description != "Refund of "+order {
			t.Errorf("reversal described %q, want the refund's description", e.description)
		}
	}
	mustPay(t, pool, refundedTo(s, order, 1650))
	mustRefund(t, pool, refundOf(order, "re_1", 1000))
	wantReversed(t, ledgerOf(t, pool, s.WS), es[0].id, 1650)
}

// TestPostingWhileTheEventIsReplayed posts while the sale's event is
// applied again, many of each at once: one sale, one set of reversals, and
// exactly one of them reports the posting.
func TestPostingWhileTheEventIsReplayed(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	for round := range 3 {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
		order := fmt.Sprintf("ord_race_%d", round)
		mustPay(t, pool, refundedTo(s, order, 700))
		exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)

		var (
			mu     sync.Mutex
			posted int
			errs   []error
			wg     sync.WaitGroup
			start  = make(chan struct{})
		)
		count := func(n int, err error) {
			mu.Lock()
			defer mu.Unlock()
			posted += n
			if err != nil {
				errs = append(errs, err)
			}
		}
		for range 10 {
			wg.Go(func() {
				<-start
				rs, err := ledger.PostPending(ctx, pool, s.WS)
				n := 0
				for _, r := range rs {
					if r.Result == ledger.PostedPending {
						n++
					}
				}
				count(n, err)
			})
			wg.Go(func() {
				<-start
				out, err := pay(ctx, pool, refundedTo(s, order, 700))
				n := 0
				if out.Booking == ledger.PostedPending {
					n = 1
				}
				count(n, err)
			})
		}
		close(start)
		wg.Wait()
		noErrors(t, errs)

		es := ledgerOf(t, pool, s.WS)
		if n := len(sales(t, pool, s.WS)); n != 1 {
			t.Fatalf("round %d: %d sales booked, want 1 (ledger %+v)", round, n, es)
		}
		wantReversed(t, es, es[0].id, 700)
		if posted != 1 {
			t.Errorf("round %d: %d calls report posting the sale, want exactly 1", round, posted)
		}
		if b, _ := pendingOf(t, pool, s.Session); b.PostedAt == nil || b.TransactionID == nil || *b.TransactionID != es[0].id {
			t.Errorf("round %d: pending row = %+v, want posted as %s", round, b, es[0].id)
		}
	}
}

// afterFinding is a poster's database whose first transaction waits until
// every poster has run its first query: the one that finds what is pending.
type afterFinding struct {
	*pgxpool.Pool
	found *sync.WaitGroup
	once  sync.Once
}

func (c *afterFinding) Begin(ctx context.Context) (pgx.Tx, error) {
	c.once.Do(func() { c.found.Done(); c.found.Wait() })
	return c.Pool.Begin(ctx)
}

// TestTwoPostersBookOnce runs two posters at once over the same pending
// sales, as two replicas would: each sale is booked once and reported
// posted by one of them.
func TestTwoPostersBookOnce(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	var shops []testkit.Shop
	for i := range 8 {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
		mustPay(t, pool, paid(s, fmt.Sprintf("ord_two_%d", i)))
		exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
		shops = append(shops, s)
	}
	// Each poster has found the pending sales before either posts one.
	results := make([][]ledger.PostResult, 2)
	errs := make([]error, 2)
	var wg, found sync.WaitGroup
	found.Add(len(results))
	for i := range results {
		wg.Go(func() {
			results[i], errs[i] = ledger.PostPending(ctx, &afterFinding{Pool: pool, found: &found}, "")
		})
	}
	wg.Wait()
	noErrors(t, errs)

	reported := map[string]int{}
	for _, rs := range results {
		for _, r := range rs {
			if !r.Posted() || r.Result != ledger.PostedPending {
				t.Errorf("result %+v, want posted", r)
			}
			reported[r.SessionID]++
		}
	}
	for i, s := range shops {
		if n := sales(t, pool, s.WS)[s.Session]; n != 1 || reported[s.Session] != 1 {
			t.Errorf("sale %d: booked %d times, reported posted %d times; want 1 and 1", i, n, reported[s.Session])
		}
	}
	t.Logf("posters posted %d and %d", len(results[0]), len(results[1]))
}

// TestPendingThatCanNeverPostStaysVisible deletes a pending sale's session,
// and another's workspace: both stay listed with their reason, attempts are
// recorded, and an operator's booking by hand under the sale's source key
// closes one.
func TestPendingThatCanNeverPostStaysVisible(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	gone := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	mustPay(t, pool, paid(s, "ord_deleted"))
	mustPay(t, pool, paid(gone, "ord_ws_deleted"))
	exec(t, pool, `DELETE FROM inventory_checkout_sessions WHERE id = $1`, s.Session)
	exec(t, pool, `DELETE FROM inventory_checkout_sessions WHERE ws_id = $1`, gone.WS) // its lines hold its products
	exec(t, pool, `DELETE FROM workspaces WHERE id = $1`, gone.WS)

	list, total, err := ledger.ListPending(ctx, pool, ledger.PendingFilter{})
	if err != nil || total != 2 || len(list) != 2 {
		t.Fatalf("list = %+v (%d), %v; want both sales", list, total, err)
	}
	for _, b := range list {
		if !b.SessionDeleted || b.Reason != ledger.ReasonNoWallet || b.Amount != 4950 || b.Currency != "USD" {
			t.Errorf("listed %+v, want the deleted session's sale of 4950 USD, pending for no_wallet", b)
		}
	}

	for attempt := 2; attempt <= 3; attempt++ {
		rs := post(t, pool, "")
		if len(rs) != 2 {
			t.Fatalf("post = %+v, want both still pending", rs)
		}
		for _, r := range rs {
			if r.Posted() || r.Result != ledger.SkippedNoWallet || r.Attempts != attempt || !strings.Contains(r.Note, "deleted") {
				t.Errorf("post result %+v, want still pending for no_wallet, attempt %d recorded, saying the session was deleted", r, attempt)
			}
		}
	}

	// Booked by hand under the sale's source key, as the runbook says.
	var byHand string
	if err := pool.QueryRow(ctx, `INSERT INTO wallet_transactions (wallet_id, amount, currency, source_kind, source_ref)
		VALUES ($1, 4950, 'USD', 'sale', $2) RETURNING id::text`, s.Wallet, s.Session).Scan(&byHand); err != nil {
		t.Fatal(err)
	}
	rs := post(t, pool, s.WS)
	if len(rs) != 1 || rs[0].Result != ledger.AlreadyBooked || rs[0].TransactionID == nil || *rs[0].TransactionID != byHand {
		t.Fatalf("post after booking by hand = %+v, want closed as %s", rs, byHand)
	}
	if list, _, _ := ledger.ListPending(ctx, pool, ledger.PendingFilter{}); len(list) != 1 || list[0].SessionID != gone.Session {
		t.Fatalf("still pending: %+v, want only the sale of the deleted workspace", list)
	}
}

func TestPendingFilterRefusesBadInput(t *testing.T) {
	pool := testdb.NewPool(t)
	ctx := t.Context()
	for _, f := range []ledger.PendingFilter{{WorkspaceID: "ws_1"}, {Reason: "skipped_no_wallet"}, {Limit: -1}} {
		if _, _, err := ledger.ListPending(ctx, pool, f); !errors.Is(err, ledger.ErrInvalidInput) {
			t.Errorf("list %+v: err = %v, want ErrInvalidInput", f, err)
		}
	}
	if _, err := ledger.PostPending(ctx, pool, "'; DROP TABLE x"); !errors.Is(err, ledger.ErrInvalidInput) {
		t.Errorf("post with a malformed workspace: err = %v, want ErrInvalidInput", err)
	}
	var shops []testkit.Shop
	for range 3 {
		s := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
		mustPay(t, pool, paid(s, "ord_"+s.Session))
		shops = append(shops, s)
	}
	list, total, err := ledger.ListPending(ctx, pool, ledger.PendingFilter{Limit: 2})
	if err != nil || len(list) != 2 || total != 3 || list[0].SessionID != shops[0].Session {
		t.Fatalf("list with limit 2 = %+v of %d, %v; want the 2 oldest of 3", list, total, err)
	}
	if list, _, err := ledger.ListPending(ctx, pool, ledger.PendingFilter{WorkspaceID: shops[1].WS}); err != nil || len(list) != 1 || list[0].SessionID != shops[1].Session {
		t.Fatalf("list by workspace = %+v, %v; want its one sale", list, err)
	}
}

// TestOneFailingSaleDoesNotStopThePass makes booking one of two pending
// sales fail: the other is posted, and the error names the one that failed.
func TestOneFailingSaleDoesNotStopThePass(t *testing.T) {
	pool := testdb.NewPool(t)
	failing := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	fine := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	for _, s := range []testkit.Shop{failing, fine} {
		mustPay(t, pool, paid(s, "ord_"+s.Session))
		exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
	}
	exec(t, pool, `CREATE FUNCTION refuse_booking() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'simulated failure booking %', NEW.source_ref; END $$`)
	exec(t, pool, `CREATE TRIGGER refuse_booking BEFORE INSERT ON wallet_transactions FOR EACH ROW
		WHEN (NEW.source_ref = '`+failing.Session+`') EXECUTE FUNCTION refuse_booking()`)

	rs, err := ledger.PostPending(t.Context(), pool, "")
	if err == nil || !strings.Contains(err.Error(), failing.Session) {
		t.Fatalf("err = %v, want the failing sale's error", err)
	}
	if len(rs) != 1 || rs[0].SessionID != fine.Session || rs[0].Result != ledger.PostedPending {
		t.Fatalf("results = %+v, want the other sale posted", rs)
	}
	if b, _ := pendingOf(t, pool, failing.Session); b.PostedAt != nil || b.Reason != ledger.ReasonNoWallet {
		t.Fatalf("failing sale = %+v, want still pending as it was", b)
	}
}
