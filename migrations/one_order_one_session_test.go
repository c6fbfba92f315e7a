package migrations_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestOneOrderOneSessionRefusesDuplicates migrates a database that records
// one order on two sessions: 00004 stops, names the order and changes
// nothing; once a person has cleared the wrong session it applies, and the
// database refuses a second session for an order from then on.
func TestOneOrderOneSessionRefusesDuplicates(t *testing.T) {
	pool, provider := migratedTo(t, 3)
	ctx := t.Context()

	var ws, keep, wrong string
	if err := pool.QueryRow(ctx, `INSERT INTO workspaces (name) VALUES ('Shop') RETURNING id::text`).Scan(&ws); err != nil {
		t.Fatal(err)
	}
	insert := `INSERT INTO inventory_checkout_sessions (ws_id, total_amount, currency, polar_order_id)
		VALUES ($1, 4950, 'usd', $2) RETURNING id::text`
	for _, s := range []struct {
		id    *string
		order string
	}{{&keep, "ord_dup"}, {&wrong, "ord_dup"}, {new(string), "ord_single"}} {
		if err := pool.QueryRow(ctx, insert, ws, s.order).Scan(s.id); err != nil {
			t.Fatal(err)
		}
	}

	_, err := provider.Up(ctx)
	if err == nil || !strings.Contains(err.Error(), "1 Polar order(s) are recorded on more than one checkout session (e.g. ord_dup)") {
		t.Fatalf("migrate up with an order on two sessions: err = %v, want the order named", err)
	}
	t.Logf("refused: %v", err)
	if v, err := provider.GetDBVersion(ctx); err != nil || v != 3 {
		t.Fatalf("version after the refusal = %d, %v; want 3", v, err)
	}
	var sessions int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inventory_checkout_sessions WHERE polar_order_id = 'ord_dup'`).Scan(&sessions); err != nil {
		t.Fatal(err)
	}
	if sessions != 2 {
		t.Fatalf("%d sessions record ord_dup after the refusal, want both still", sessions)
	}

	if _, err := pool.Exec(ctx, `UPDATE inventory_checkout_sessions SET polar_order_id = NULL WHERE id = $1`, wrong); err != nil {
		t.Fatal(err)
	}
	if _, err := provider.Up(ctx); err != nil {
		t.Fatalf("migrate up once cleared: %v", err)
	}
	_, err = pool.Exec(ctx, `UPDATE inventory_checkout_sessions SET polar_order_id = 'ord_dup' WHERE id = $1`, wrong)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" || pgErr.ConstraintName != "inventory_checkout_sessions_polar_order_key" {
		t.Fatalf("a second session for ord_dup: err = %v, want a unique violation of inventory_checkout_sessions_polar_order_key", err)
	}
}
