package receiver

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// cleanupTimeout bounds a rollback, which runs after its transaction's own
// deadline may have passed. A healthy server answers one in a round trip; a
// connection that has stopped answering is closed at this bound instead of
// holding its committer for ever.
const cleanupTimeout = 2 * time.Second

// deferredTx is a transaction that begins with its first statement: BEGIN,
// that statement and the statements queued with it go to PostgreSQL in one
// round trip (pgx's Batch.BeginTx). The receiver hands one to River, so that
// River's job insert travels together with BEGIN and the inbox insert, and a
// webhook transaction costs two round trips (that and COMMIT) instead of
// four in every pgx query mode but describe_exec, which describes the batch
// first; TestWebhookTransactionRoundTrips counts them.
//
// It is a pgx.Tx for one goroutine. Its connection is acquired when it is
// made, so that Conn, which River's driver reads to pick the query mode its
// JSON arguments are encoded for, is the real one from the start. Every
// method works before BEGIN has been sent; TestDeferredTxBeforeBegin holds
// each to what a pgx transaction does.
type deferredTx struct {
	conn  *pgxpool.Conn    // nil once the transaction has ended and the connection is back
	queue func(*pgx.Batch) // queues what goes out after the first statement

	tx  pgx.Tx           // set once sent
	br  pgx.BatchResults // open while the first statement's results are read
	err error            // of the statements queued after the first
}

var _ pgx.Tx = (*deferredTx)(nil)

// beginDeferred acquires a connection for a deferredTx; nothing is sent yet.
func beginDeferred(ctx context.Context, pool *pgxpool.Pool, queue func(*pgx.Batch)) (*deferredTx, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	return &deferredTx{conn: conn, queue: queue}, nil
}

// send sends BEGIN, first (when not empty) and the queued statements, reads
// BEGIN's result and leaves the batch positioned at first's result.
func (t *deferredTx) send(ctx context.Context, first string, args []any) error {
	if t.conn == nil {
		return pgx.ErrTxClosed
	}
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	if first != "" {
		b.Queue(first, args...)
	}
	if t.queue != nil {
		t.queue(b)
	}
	t.br = t.conn.SendBatch(ctx, b)
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
	if t.tx != nil {
		tx, err := t.begun(ctx)
		if err != nil {
			return pgconn.CommandTag{}, err
		}
		return tx.Exec(ctx, sql, args...)
	}
	if err := t.send(ctx, sql, args); err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := t.br.Exec()
	t.closeBatch()
	if err == nil {
		err = t.err
	}
	return tag, err
}

func (t *deferredTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := t.Query(ctx, sql, args...)
	if err != nil {
		return errRow{err}
	}
	return rowOf{rows}
}

type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// rowOf is pgx's QueryRow over Rows: the first row, or ErrNoRows.
type rowOf struct{ rows pgx.Rows }

func (r rowOf) Scan(dest ...any) error {
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}

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

// LargeObjects begins the transaction if nothing has (the method takes no
// context: the begin is bounded by cleanupTimeout); if that fails, the large
// objects it returns fail with the transaction closed.
func (t *deferredTx) LargeObjects() pgx.LargeObjects {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	tx, err := t.begun(ctx)
	if err != nil {
		return closedTx(err).LargeObjects()
	}
	return tx.LargeObjects()
}

// closedTx is a transaction whose every method fails with pgx.ErrTxClosed.
func closedTx(err error) pgx.Tx {
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	return pgx.FailedBatchResults(b, err).Tx()
}

// Conn is the connection the transaction runs on, also before BEGIN is sent;
// nil once the transaction has ended.
func (t *deferredTx) Conn() *pgx.Conn {
	if t.conn == nil {
		return nil
	}
	return t.conn.Conn()
}

// Commit sends the transaction if nothing has, and commits it unless a
// statement failed, in which case it is rolled back and that error returned.
func (t *deferredTx) Commit(ctx context.Context) error {
	if t.conn == nil {
		return pgx.ErrTxClosed
	}
	tx, err := t.begun(ctx)
	if err != nil {
		t.rollback(ctx)
		return err
	}
	err = tx.Commit(ctx)
	t.release()
	return err
}

// Rollback rolls back what was sent, bounded by cleanupTimeout past ctx's
// cancellation; before BEGIN there is nothing to undo. Either way the
// connection goes back to the pool (or, if it did not answer, is closed).
func (t *deferredTx) Rollback(ctx context.Context) error {
	if t.conn == nil {
		return pgx.ErrTxClosed
	}
	return t.rollback(ctx)
}

func (t *deferredTx) rollback(ctx context.Context) error {
	defer t.release()
	if t.tx == nil {
		return nil
	}
	t.closeBatch()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	err := t.tx.Rollback(ctx)
	if err == pgx.ErrTxClosed { //nolint:errorlint // pgx returns it unwrapped
		return nil // the batch failed at BEGIN: no transaction was open
	}
	return err
}

// release gives the connection back; the pool closes it if it is not idle.
func (t *deferredTx) release() {
	if t.conn != nil {
		t.conn.Release()
		t.conn = nil
	}
}
