// Package primary keeps a pgx pool on a writable PostgreSQL primary across a
// failover or a switchover.
//
// With several hosts in DATABASE_URL and target_session_attrs=read-write,
// pgx connects to the first host that accepts writes. That choice is made
// once per connection: a pooled connection to a server that later stops
// accepting writes (a former primary turned standby, or one set read-only)
// would go on failing every write with SQLSTATE 25006 "cannot execute ... in
// a read-only transaction" for as long as it lives. Follow makes the pool
// drop such a connection, so that the next one is made to the host that
// accepts writes now.
//
// PostgreSQL 14 and later report in_hot_standby and
// default_transaction_read_only to the client whenever they change
// (ParameterStatus), so the check costs no round trip: pgx keeps the last
// reported values on the connection.
package primary

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// ReadOnly reports whether the server of conn said it no longer takes
// writes: it is a hot standby, or it makes transactions read-only by
// default.
func ReadOnly(conn *pgconn.PgConn) bool {
	return conn.ParameterStatus("in_hot_standby") == "on" ||
		conn.ParameterStatus("default_transaction_read_only") == "on"
}

// Follow sets cfg's pool to destroy a connection whose server reports it
// is read-only: when it is released (after the statement that failed on it,
// whose answer carried the server's new state), and before it is handed out
// (pgxpool pings a connection idle for a second first, which brings the new
// state too). Hooks cfg already has still run.
func Follow(cfg *pgxpool.Config) {
	prepare, release := cfg.PrepareConn, cfg.AfterRelease
	if prepare == nil && cfg.BeforeAcquire != nil {
		before := cfg.BeforeAcquire
		prepare = func(ctx context.Context, c *pgx.Conn) (bool, error) { return before(ctx, c), nil }
	}
	cfg.PrepareConn = func(ctx context.Context, c *pgx.Conn) (bool, error) {
		if ReadOnly(c.PgConn()) {
			return false, nil // destroyed; the acquire goes on with another connection
		}
		if prepare != nil {
			return prepare(ctx, c)
		}
		return true, nil
	}
	cfg.AfterRelease = func(c *pgx.Conn) bool {
		if ReadOnly(c.PgConn()) {
			return false
		}
		return release == nil || release(c)
	}
}
