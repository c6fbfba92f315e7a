package ledger

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

// pausingDB calls before ahead of each statement that writes.
type pausingDB struct {
	DB
	before func()
}

func (d pausingDB) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	d.before()
	return d.DB.Exec(ctx, sql, args...)
}

// TestReversalKeyAloneBoundsReversals bypasses the session lock: two
// transactions reconcile different refunded totals of one sale, both reading
// the reversed total before either books. Only the unique source key stands
// between them and reversing more than the sale.
func TestReversalKeyAloneBoundsReversals(t *testing.T) {
	pool := testdb.NewPool(t)
	at := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name   string
		before int64 // reversed by an earlier relay, keyed "<sale>:<level>"
		totals [2]int64
	}{
		{name: "from nothing", totals: [2]int64{1500, 4950}},
		{name: "after an old-format reversal", before: 1650, totals: [2]int64{3000, 4950}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := t.Context()
			s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
			var sale string
			err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				out, err := ApplyPayment(ctx, tx, Payment{Session: SessionRef{SessionID: s.Session}, ExternalOrderID: "ord_" + s.Session, Paid: true, At: at})
				if err == nil {
					sale = *out.Session.FinanceTransactionID
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if c.before > 0 {
				if _, err := pool.Exec(ctx, `
					INSERT INTO wallet_transactions (wallet_id, amount, currency, source_kind, source_ref, reverses_id)
					VALUES ($1, $2, 'USD', 'reversal', $3::text || ':' || $4::bigint, $3::uuid)`, s.Wallet, -c.before, sale, c.before); err != nil {
					t.Fatal(err)
				}
			}

			var (
				wg       sync.WaitGroup
				read     sync.WaitGroup // both have read the reversed total
				reversed [2]int64
			)
			read.Add(2)
			for i, total := range c.totals {
				wg.Go(func() {
					arrive := sync.OnceFunc(read.Done)
					defer arrive() // also when reconciling fails before it writes
					err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) (err error) {
						db := pausingDB{DB: tx, before: func() { arrive(); read.Wait() }}
						session := &Session{ID: s.Session, FinanceTransactionID: &sale, RefundedAmount: total}
						reversed[i], err = reconcileRefunds(ctx, db, session, "bypass", at)
						return err
					})
					if err != nil {
						t.Errorf("reconcile %d: %v", total, err)
					}
				})
			}
			wg.Wait()

			var sum int64
			var rows int
			if err := pool.QueryRow(ctx, `SELECT coalesce(-sum(amount), 0), count(*) FROM wallet_transactions WHERE reverses_id = $1`, sale).
				Scan(&sum, &rows); err != nil {
				t.Fatal(err)
			}
			if sum > 4950 {
				t.Fatalf("reversed %d of a sale of 4950 (%d rows)", sum, rows)
			}
			wantRows := 1
			if c.before > 0 {
				wantRows = 2
			}
			if rows != wantRows || sum != c.before+reversed[0]+reversed[1] || (reversed[0] != 0) == (reversed[1] != 0) {
				t.Fatalf("reversed %d in %d rows, reconciles booked %v; want one of them to book, once", sum, rows, reversed)
			}
		})
	}
}
