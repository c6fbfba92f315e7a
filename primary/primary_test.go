package primary_test

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/primary"
)

// A connection whose server turns read-only under it fails a write with
// SQLSTATE 25006; the pool must not hand it out again, or every write on it
// fails the same way for as long as it lives. The session is made read-only
// from within (SET), which PostgreSQL reports like an ALTER SYSTEM reload or
// a demotion to standby.
func TestReadOnlyConnectionIsNotReused(t *testing.T) {
	ctx := context.Background()
	pool := testdb.NewPoolWith(t, func(cfg *pgxpool.Config) {
		cfg.MaxConns = 1
		primary.Follow(cfg)
	})
	var before uint32
	if err := pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		before = c.Conn().PgConn().PID()
		if _, err := c.Exec(ctx, `SET default_transaction_read_only = on`); err != nil {
			return err
		}
		_, err := c.Exec(ctx, `CREATE TABLE demoted (id int)`)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
			t.Errorf("a write on the read-only session: %v, want SQLSTATE 25006", err)
		}
		if !primary.ReadOnly(c.Conn().PgConn()) {
			t.Error("ReadOnly = false for a session the server reported read-only")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE written (id int)`); err != nil {
		t.Errorf("the write after the read-only connection was released: %v", err)
	}
	var after uint32
	if err := pool.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		after = c.Conn().PgConn().PID()
		if primary.ReadOnly(c.Conn().PgConn()) {
			t.Error("ReadOnly = true for a fresh connection to a writable server")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if after == before {
		t.Errorf("the pool handed out the read-only connection (backend %d) again", before)
	}
}
