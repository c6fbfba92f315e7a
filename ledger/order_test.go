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

// twoSessions seeds a shop whose reserved session a and a newer one, b,
// share one Polar checkout id, as when the storefront opens a second session
// for a checkout.
func twoSessions(t *testing.T, pool *pgxpool.Pool) (a, b testkit.Shop) {
	t.Helper()
	a = testkit.SeedShop(t, pool, testkit.ShopOptions{})
	b = a
	if err := pool.QueryRow(t.Context(), `SELECT gen_random_uuid()::text`).Scan(&b.Session); err != nil {
		t.Fatal(err)
	}
	b.OpenSession(t, pool)
	exec(t, pool, `UPDATE inventory_checkout_sessions SET created_at = created_at + interval '1 minute' WHERE id = $1`, b.Session)
	return a, b
}

// byCheckout is p found through Polar's checkout id only: the session the
// metadata names does not exist.
func byCheckout(p ledger.Payment) ledger.Payment {
	p.Session.SessionID = "00000000-0000-4000-8000-000000000000"
	return p
}

// sales returns the sessions booked in ws, by session id.
func sales(t *testing.T, pool *pgxpool.Pool, ws string) map[string]int {
	t.Helper()
	got := map[string]int{}
	for _, e := range ledgerOf(t, pool, ws) {
		if e.kind == "sale" {
			got[e.ref]++
		}
	}
	return got
}

func TestOneOrderOneSession(t *testing.T) {
	pool := testdb.NewPool(t)
	a, b := twoSessions(t, pool)
	ctx := t.Context()

	// Found through the checkout id, the order goes to the newest session.
	out := mustPay(t, pool, byCheckout(paid(a, "ord_1")))
	if out.Session.ID != b.Session || out.Booking != ledger.Booked {
		t.Fatalf("by checkout id: outcome = %+v, want session %s booked", out, b.Session)
	}

	// The order is b's now: an event naming a refuses, changing nothing.
	_, err := pay(ctx, pool, paid(a, "ord_1"))
	if !errors.Is(err, ledger.ErrOrderConflict) || !errors.Is(err, ledger.ErrInvalidInput) {
		t.Fatalf("order of b naming a: err = %v, want ErrOrderConflict (an ErrInvalidInput)", err)
	}
	if !strings.Contains(err.Error(), "recorded on checkout session "+b.Session) {
		t.Errorf("refusal %q does not say which session records the order", err)
	}
	t.Logf("refused: %v", err)
	if got := sessionOf(t, pool, a.Session); got.status != ledger.StatusReserved || got.order != nil || got.booking != nil {
		t.Fatalf("session a = %+v, want untouched", got)
	}

	// A second order on the same checkout id is not given to a, the older
	// session, because b, the newest, already has an order.
	if _, err := pay(ctx, pool, byCheckout(paid(a, "ord_2"))); !errors.Is(err, ledger.ErrOrderConflict) {
		t.Fatalf("second order by checkout id: err = %v, want ErrOrderConflict", err)
	}
	// Nor may it complete b again by naming it.
	if _, err := pay(ctx, pool, paid(b, "ord_2")); !errors.Is(err, ledger.ErrOrderConflict) {
		t.Fatalf("second order naming b: err = %v, want ErrOrderConflict", err)
	}
	// Named, a takes it.
	if out := mustPay(t, pool, paid(a, "ord_2")); out.Session.ID != a.Session || out.Booking != ledger.Booked {
		t.Fatalf("second order naming a: outcome = %+v, want a booked", out)
	}

	// The session that records an order wins over the checkout id, however
	// the event finds it: both orders keep their session.
	for _, c := range []struct {
		p    ledger.Payment
		want string
	}{
		{byCheckout(paid(a, "ord_2")), a.Session},
		{byCheckout(paid(a, "ord_1")), b.Session},
		{func() ledger.Payment { p := paid(a, "ord_2"); p.Session.SessionID = ""; return p }(), a.Session},
		{refundedTo(b, "ord_1", 1650), b.Session},
	} {
		out, err := pay(ctx, pool, c.p)
		if err != nil || out.Session.ID != c.want || out.Booking != ledger.AlreadyBooked {
			t.Fatalf("%s via %+v: outcome %+v, %v; want session %s, already booked", c.p.ExternalOrderID, c.p.Session, out, err, c.want)
		}
	}
	if got := sales(t, pool, a.WS); len(got) != 2 || got[a.Session] != 1 || got[b.Session] != 1 {
		t.Fatalf("sales = %v, want one of each session", got)
	}
	if out := mustRefund(t, pool, refundOf("ord_1", "re_1", 100)); out.Session.ID != b.Session || out.Reversed != 0 {
		t.Fatalf("refund of ord_1: outcome = %+v, want b's, nothing more to reverse", out)
	}
}

// TestOrderRecordedConcurrentlyOnAnotherSession holds a transaction that
// records an order on session a open while another one records it on b:
// neither sees the other's write, and only the unique index stops b.
func TestOrderRecordedConcurrentlyOnAnotherSession(t *testing.T) {
	pool := testdb.NewPool(t)
	a, b := twoSessions(t, pool)
	ctx := t.Context()

	first, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Rollback(ctx) //nolint:errcheck // committed below
	if out, err := ledger.ApplyPayment(ctx, first, paid(a, "ord_race")); err != nil || out.Booking != ledger.Booked {
		t.Fatalf("first: %+v, %v; want booked", out, err)
	}

	type result struct {
		out ledger.Outcome
		err error
	}
	second := make(chan result, 1)
	go func() {
		out, err := pay(ctx, pool, paid(b, "ord_race"))
		second <- result{out, err}
	}()
	// The second transaction must be waiting for the first before it commits.
	var r *result
	for deadline := time.Now().Add(10 * time.Second); r == nil; {
		if lockWaiters(t, pool) > 0 {
			break
		}
		select {
		case got := <-second:
			r = &got // finished without waiting: nothing stopped it
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the second transaction neither waits nor finishes")
		}
		time.Sleep(2 * time.Millisecond) // poll interval
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if r == nil {
		got := <-second
		r = &got
	}
	if !errors.Is(r.err, ledger.ErrOrderConflict) {
		t.Fatalf("second: %+v, %v; want ErrOrderConflict", r.out, r.err)
	}
	t.Logf("refused: %v", r.err)
	if got := sessionOf(t, pool, b.Session); got.status != ledger.StatusReserved || got.order != nil {
		t.Fatalf("session b = %+v, want untouched", got)
	}
	if got := sales(t, pool, a.WS); len(got) != 1 || got[a.Session] != 1 {
		t.Fatalf("sales = %v, want a's only", got)
	}
}

// TestConcurrentPaymentsOfOneOrderNamingTwoSessions races events of one
// order that name two sessions: one session gets the order, once.
func TestConcurrentPaymentsOfOneOrderNamingTwoSessions(t *testing.T) {
	pool := testdb.NewPool(t)
	a, b := twoSessions(t, pool)
	ctx := t.Context()

	const n = 12
	var (
		wg    sync.WaitGroup
		start = make(chan struct{})
		named [n]string
		errs  [n]error
	)
	for i := range n {
		s := []testkit.Shop{a, b}[i%2]
		named[i] = s.Session
		wg.Go(func() {
			<-start
			_, errs[i] = pay(ctx, pool, paid(s, "ord_both"))
		})
	}
	close(start)
	wg.Wait()

	var owner string
	if err := pool.QueryRow(ctx, `SELECT id::text FROM inventory_checkout_sessions WHERE polar_order_id = 'ord_both'`).Scan(&owner); err != nil {
		t.Fatalf("the session recording the order: %v", err)
	}
	for i, err := range errs {
		switch {
		case named[i] == owner && err != nil:
			t.Errorf("payment %d naming the order's session: %v", i, err)
		case named[i] != owner && !errors.Is(err, ledger.ErrOrderConflict):
			t.Errorf("payment %d naming the other session: err = %v, want ErrOrderConflict", i, err)
		}
	}
	if got := sales(t, pool, a.WS); len(got) != 1 || got[owner] != 1 {
		t.Fatalf("sales = %v, want one, of %s", got, owner)
	}
	loser := a.Session
	if owner == a.Session {
		loser = b.Session
	}
	if got := sessionOf(t, pool, loser); got.status != ledger.StatusReserved || got.order != nil {
		t.Fatalf("the other session = %+v, want untouched", got)
	}
}

// TestSaleBookedMeanwhileWithoutTheSessionLock: a booking under the sale's
// source key made by a transaction that does not lock the session (an
// operator booking by hand) after the booking path looked for one is not
// booked again: the path's booking, made in the same statement as the
// session's update, yields to the source key, and the session is linked to
// the booking that won. The same for each path that books a sale: a paid
// order, a batch's plain sales, a pending sale posted.
func TestSaleBookedMeanwhileWithoutTheSessionLock(t *testing.T) {
	pool := testdb.NewPool(t)
	for _, c := range []struct {
		name string
		opts testkit.ShopOptions
		// before readies the sale; book books it (with other, a plain
		// sale of another shop, if it will) and returns its result.
		before func(t *testing.T, s testkit.Shop)
		book   func(ctx context.Context, s, other testkit.Shop) (string, error)
	}{{
		name: "paid order",
		book: func(ctx context.Context, s, other testkit.Shop) (string, error) {
			out, err := pay(ctx, pool, paid(s, orderOf(s)))
			if err == nil && !out.Completed {
				err = fmt.Errorf("outcome %+v, want the session completed", out)
			}
			return out.Booking, err
		},
	}, {
		name: "batch of plain sales",
		book: func(ctx context.Context, s, other testkit.Shop) (string, error) {
			outs, err := inTx(ctx, pool, func(tx pgx.Tx) ([]ledger.Outcome, error) {
				return ledger.ApplyPayments(ctx, tx, []ledger.Payment{paid(s, orderOf(s)), paid(other, orderOf(other))})
			})
			if err != nil {
				return "", err
			}
			if !outs[0].Completed || outs[1].Booking != ledger.Booked {
				return "", fmt.Errorf("outcomes %+v, want the session completed and the other sale booked", outs)
			}
			return outs[0].Booking, nil
		},
	}, {
		name: "pending sale posted",
		opts: testkit.ShopOptions{NoWallet: true},
		before: func(t *testing.T, s testkit.Shop) {
			mustPay(t, pool, paid(s, orderOf(s)))
			exec(t, pool, `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, s.WS, s.Wallet)
		},
		book: func(ctx context.Context, s, other testkit.Shop) (string, error) {
			rs, err := ledger.PostPending(ctx, pool, s.WS)
			if err != nil {
				return "", err
			}
			if len(rs) != 1 || rs[0].TransactionID == nil {
				return "", fmt.Errorf("post = %+v, want the sale posted", rs)
			}
			return rs[0].Result, nil
		},
	}} {
		t.Run(c.name, func(t *testing.T) {
			s, other := testkit.SeedShop(t, pool, c.opts), testkit.SeedShop(t, pool, testkit.ShopOptions{})
			ctx := t.Context()
			if c.before != nil {
				c.before(t, s)
			}

			byHand, err := pool.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer byHand.Rollback(ctx) //nolint:errcheck // committed below
			var handID string
			if err := byHand.QueryRow(ctx, `INSERT INTO wallet_transactions (wallet_id, amount, currency, description, taken_at, source_kind, source_ref)
				VALUES ($1, 4950, 'USD', 'booked by hand', now(), 'sale', $2) RETURNING id::text`, s.Wallet, s.Session).Scan(&handID); err != nil {
				t.Fatal(err)
			}

			type result struct {
				booking string
				err     error
			}
			done := make(chan result, 1)
			go func() {
				booking, err := c.book(ctx, s, other)
				done <- result{booking, err}
			}()
			// The path has looked for a booking, found none (the hand
			// booking is not committed) and now waits on the source key.
			for deadline := time.Now().Add(10 * time.Second); ; {
				if lockWaiters(t, pool) > 0 {
					break
				}
				select {
				case r := <-done:
					t.Fatalf("booked without waiting for the hand booking: %s, %v", r.booking, r.err)
				default:
				}
				if time.Now().After(deadline) {
					t.Fatal("the booking neither waits nor finishes")
				}
				time.Sleep(2 * time.Millisecond) // poll interval
			}
			if err := byHand.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if r := <-done; r.err != nil || r.booking != ledger.AlreadyBooked {
				t.Fatalf("booking: %s, %v; want %s", r.booking, r.err, ledger.AlreadyBooked)
			}
			if got := sales(t, pool, s.WS); len(got) != 1 || got[s.Session] != 1 {
				t.Fatalf("sales = %v, want the hand booking only", got)
			}
			if got := sessionOf(t, pool, s.Session); got.status != ledger.StatusCompleted || got.booking == nil || *got.booking != handID {
				t.Fatalf("session = %+v, want completed and linked to the hand booking %s", got, handID)
			}
		})
	}
}

// lockWaiters counts the transactions in the test's database that wait for
// a lock.
func lockWaiters(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM pg_stat_activity
		WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
