package products_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/products"
)

var t0 = time.Date(2026, 11, 2, 9, 30, 0, 0, time.UTC)

func apply(t *testing.T, pool *pgxpool.Pool, v products.Version) (products.Outcome, error) {
	t.Helper()
	var out products.Outcome
	err := pgx.BeginFunc(context.Background(), pool, func(tx pgx.Tx) (err error) {
		out, err = products.Apply(context.Background(), tx, v)
		return err
	})
	return out, err
}

func mug(s testkit.Shop, polarID string, at time.Time, amount int64, currency string) products.Version {
	v := products.Version{ExternalProductID: polarID, ProductID: s.Product, WorkspaceID: s.WS, Name: "Ceramic mug", ModifiedAt: at}
	if amount >= 0 {
		v.Price = &products.Price{ExternalID: "price_1", Amount: amount, Currency: currency}
	}
	return v
}

func TestApplyNotesWhatChanged(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	steps := []struct {
		v    products.Version
		want string
	}{
		{mug(s, "prod_1", t0, 4950, "usd"), "linked to Polar product prod_1, price 49.50 USD"},
		{mug(s, "prod_1", t0.Add(time.Minute), 5950, "usd"), "price 49.50 → 59.50 USD"},
		{mug(s, "prod_1", t0.Add(2*time.Minute), 5000, "jpy"), "price 59.50 USD → 5000 JPY"},
		// No fixed price: the price stays, and the note says why.
		{mug(s, "prod_1", t0.Add(3*time.Minute), -1, ""), "price kept: no fixed, non-archived price at Polar"},
		{mug(s, "prod_1", t0.Add(4*time.Minute), 5000, "jpy"), "version of 2026-11-02T09:34:00Z applied, no change"},
		{mug(s, "prod_1", t0.Add(4*time.Minute), 5000, "jpy"), "version of 2026-11-02T09:34:00Z applied already, nothing changed"},
		{mug(s, "prod_1", t0, 4950, "usd"), "stale: version of 2026-11-02T09:30:00Z is older than the applied one of 2026-11-02T09:34:00Z, nothing changed"},
	}
	for i, st := range steps {
		out, err := apply(t, pool, st.v)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got := out.Note(); got != st.want {
			t.Errorf("step %d: note %q, want %q", i, got, st.want)
		}
	}
	var amount int64
	var currency string
	if err := pool.QueryRow(context.Background(), `SELECT price_amount, price_currency FROM workspace_products WHERE id = $1`, s.Product).Scan(&amount, &currency); err != nil {
		t.Fatal(err)
	}
	if amount != 5000 || currency != "jpy" {
		t.Errorf("price = %d %s, want 5000 jpy (kept through the version without a fixed price)", amount, currency)
	}
}

func TestApplyRefusesWhatDoesNotMatch(t *testing.T) {
	pool := testdb.NewPool(t)
	a := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	b := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	if _, err := apply(t, pool, mug(a, "prod_a", t0, 4950, "usd")); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		v    products.Version
		want error
	}{
		{"the metadata names another workspace than the row's", func() products.Version {
			v := mug(a, "prod_a", t0.Add(time.Hour), 1, "usd")
			v.WorkspaceID = b.WS
			return v
		}(), ledger.ErrWorkspaceMismatch},
		{"the row is linked to another Polar product", mug(a, "prod_other", t0.Add(time.Hour), 1, "usd"), products.ErrConflict},
		{"the Polar product is linked to another row", mug(b, "prod_a", t0.Add(time.Hour), 1, "usd"), products.ErrConflict},
		{"a row id that is not a UUID", func() products.Version {
			v := mug(a, "prod_a", t0.Add(time.Hour), 1, "usd")
			v.ProductID = "row-1"
			return v
		}(), ledger.ErrInvalidInput},
		{"another workspace's scope", func() products.Version {
			v := mug(a, "prod_a", t0.Add(time.Hour), 1, "usd")
			v.Scope = &ledger.Scope{WorkspaceID: b.WS, Environment: ledger.Production}
			return v
		}(), products.ErrForeignWorkspace},
		{"the sandbox's scope", func() products.Version {
			v := mug(a, "prod_a", t0.Add(time.Hour), 1, "usd")
			v.Scope = &ledger.Scope{WorkspaceID: a.WS, Environment: ledger.Sandbox}
			return v
		}(), products.ErrForeignEnvironment},
	}
	for _, c := range cases {
		if _, err := apply(t, pool, c.v); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", c.name, err, c.want)
		}
	}
	var amount int64
	if err := pool.QueryRow(context.Background(), `SELECT price_amount FROM workspace_products WHERE id = $1`, a.Product).Scan(&amount); err != nil {
		t.Fatal(err)
	}
	if amount != 4950 {
		t.Errorf("A's price = %d after refused versions, want 4950", amount)
	}
}

// TestApplyLeavesCheckoutsFree: while a version is being applied, the
// storefront still opens checkouts with lines of the product (their foreign
// key takes a key-share lock on its row, which FOR UPDATE would block).
func TestApplyLeavesCheckoutsFree(t *testing.T) {
	pool := testdb.NewPool(t)
	s := testkit.SeedShop(t, pool, testkit.ShopOptions{LateSession: true})
	ctx := context.Background()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck // the test's end
	if _, err := products.Apply(ctx, tx, mug(s, "prod_1", t0, 4950, "usd")); err != nil {
		t.Fatal(err)
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SET lock_timeout = '2s'`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `
		WITH session AS (INSERT INTO inventory_checkout_sessions (ws_id, total_amount, currency) VALUES ($1, 4950, 'usd') RETURNING id)
		INSERT INTO inventory_checkout_lines (checkout_session_id, product_id) SELECT id, $2 FROM session`, s.WS, s.Product); err != nil {
		t.Errorf("a checkout line of the product while a version is applied: %v", err)
	}
	if _, err := conn.Exec(ctx, `RESET lock_timeout`); err != nil && !strings.Contains(err.Error(), "closed") {
		t.Fatal(err)
	}
}
