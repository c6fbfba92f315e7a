package receiver

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// deferredTx is a transaction that begins with its first statement: BEGIN,
// that statement and the statements queued with it go to PostgreSQL in one
// round trip. The receiver hands one to River, so that River's job insert
// travels together with BEGIN and the inbox insert, and a webhook
// transaction costs two round trips (that and COMMIT) instead of four.
//
// It is a pgx.Tx for one goroutine. Once begun it is the pool's transaction;
// until then Conn returns nil and LargeObjects is unavailable.
type deferredTx struct {
	pool  *pgxpool.Pool
	queue func(*pgx.Batch) // queues what goes out after the first statement

	tx  pgx.Tx           // set once sent
	br  pgx.BatchResults // open while the first statement's rows are read
	err error            // of the statements queued after the first
}

var _ pgx.Tx = (*deferredTx)(nil)

// send sends BEGIN, first (when not empty) and the queued statements, reads
// BEGIN's result and returns the batch, positioned at first's result.
func (t *deferredTx) send(ctx context.Context, first string, args []any) error {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	if first != "" {
		b.Queue(first, args...)
	}
	if t.queue != nil {
		t.queue(b)
	}
	t.br = t.pool.SendBatch(ctx, b)
	t.tx = t.br.Tx()
	if _, err := t.br.Exec(); err != nil {
		t.closeBatch()
		return err
	}
	return nil
}

// closeBatch reads the rest of the batch, which runs the queued statements'
// callbacks, and keeps their error.
func (t *deferredTx) closeBatch() {
	if t.br == nil {
		return
	}
	if err := t.br.Close(); err != nil && t.err == nil {
		t.err = err
	}
	t.br = nil
}

// begun sends the transaction if it has not been, and returns it ready for
// the next statement.
func (t *deferredTx) begun(ctx context.Context) (pgx.Tx, error) {
	if t.tx == nil {
		if err := t.send(ctx, "", nil); err != nil {
			return nil, err
		}
	}
	t.closeBatch()
	if t.err != nil {
		return nil, t.err
	}
	return t.tx, nil
}

func (t *deferredTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.tx != nil {
		tx, err := t.begun(ctx)
		if err != nil {
			return nil, err
		}
		return tx.Query(ctx, sql, args...)
	}
	if err := t.send(ctx, sql, args); err != nil {
		return nil, err
	}
	rows, err := t.br.Query()
	if err != nil {
		t.closeBatch()
		return nil, err
	}
	return &batchRows{Rows: rows, t: t}, nil
}

// batchRows are the first statement's rows; closing them reads the rest of
// the batch, so that the connection is free for the next statement.
type batchRows struct {
	pgx.Rows
	t *deferredTx
}

func (r *batchRows) Close() {
	r.Rows.Close()
	r.t.closeBatch()
}

func (t *deferredTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tx, err := t.begun(ctx)
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	return tx.Exec(ctx, sql, args...)
}

func (t *deferredTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	tx, err := t.begun(ctx)
	if err != nil {
		return errRow{err}
	}
	return tx.QueryRow(ctx, sql, args...)
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

func (t *deferredTx) Begin(ctx context.Context) (pgx.Tx, error) {
	tx, err := t.begun(ctx)
	if err != nil {
		return nil, err
	}
	return tx.Begin(ctx)
}

func (t *deferredTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	tx, err := t.begun(ctx)
	if err != nil {
		return 0, err
	}
	return tx.CopyFrom(ctx, table, columns, src)
}

func (t *deferredTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	tx, err := t.begun(ctx)
	if err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return tx.SendBatch(ctx, b)
}

func (t *deferredTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	tx, err := t.begun(ctx)
	if err != nil {
		return nil, err
	}
	return tx.Prepare(ctx, name, sql)
}

func (t *deferredTx) LargeObjects() pgx.LargeObjects {
	if t.tx == nil {
		panic("receiver: LargeObjects of a deferred transaction not yet begun")
	}
	return t.tx.LargeObjects()
}

func (t *deferredTx) Conn() *pgx.Conn {
	if t.tx == nil {
		return nil
	}
	return t.tx.Conn()
}

// Commit sends the transaction if nothing has, and commits it unless a
// statement failed.
func (t *deferredTx) Commit(ctx context.Context) error {
	tx, err := t.begun(ctx)
	if err != nil {
		if t.tx != nil {
			t.tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // the statement's error says more
		}
		return err
	}
	return tx.Commit(ctx)
}

// Rollback rolls back what was sent; before that there is nothing to undo.
func (t *deferredTx) Rollback(ctx context.Context) error {
	if t.tx == nil {
		return nil
	}
	t.closeBatch()
	return t.tx.Rollback(ctx)
}
