package receiver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/jobs"
)

// A first statement on a deferredTx, and what it must leave in probe
// together with the queued statement (which inserts 100), as any pgx.Tx
// would: the same case runs on a transaction begun the ordinary way.
type txCase struct {
	name string
	do   func(ctx context.Context, tx pgx.Tx) error
	want []int // probe's rows after commit
}

var txCases = []txCase{
	{"Query", func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `INSERT INTO probe VALUES (1) RETURNING n`)
		if err != nil {
			return err
		}
		ns, err := pgx.CollectRows(rows, pgx.RowTo[int])
		if err == nil && !slices.Equal(ns, []int{1}) {
			err = fmt.Errorf("returned %v, want [1]", ns)
		}
		return err
	}, []int{1, 100}},
	{"QueryRow", func(ctx context.Context, tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `INSERT INTO probe VALUES (1) RETURNING n`).Scan(&n); err != nil {
			return err
		}
		if n != 1 {
			return fmt.Errorf("returned %d, want 1", n)
		}
		return nil
	}, []int{1, 100}},
	{"QueryRow no rows", func(ctx context.Context, tx pgx.Tx) error {
		var n int
		if err := tx.QueryRow(ctx, `SELECT n FROM probe WHERE false`).Scan(&n); !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("Scan = %v, want pgx.ErrNoRows", err)
		}
		return nil
	}, []int{100}},
	{"Exec", func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO probe VALUES (1)`)
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("%d rows affected, want 1", tag.RowsAffected())
		}
		return err
	}, []int{1, 100}},
	{"Begin", func(ctx context.Context, tx pgx.Tx) error {
		sp, err := tx.Begin(ctx)
		if err != nil {
			return err
		}
		if _, err := sp.Exec(ctx, `INSERT INTO probe VALUES (1)`); err != nil {
			return err
		}
		if err := sp.Rollback(ctx); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO probe VALUES (2)`)
		return err
	}, []int{2, 100}},
	{"CopyFrom", func(ctx context.Context, tx pgx.Tx) error {
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"probe"}, []string{"n"}, pgx.CopyFromRows([][]any{{1}, {2}}))
		if err == nil && n != 2 {
			err = fmt.Errorf("copied %d rows, want 2", n)
		}
		return err
	}, []int{1, 2, 100}},
	{"SendBatch", func(ctx context.Context, tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`INSERT INTO probe VALUES (1)`)
		b.Queue(`INSERT INTO probe VALUES (2)`)
		return tx.SendBatch(ctx, b).Close()
	}, []int{1, 2, 100}},
	{"Prepare", func(ctx context.Context, tx pgx.Tx) error {
		sd, err := tx.Prepare(ctx, "probe_insert", `INSERT INTO probe VALUES ($1)`)
		if err != nil {
			return err
		}
		if len(sd.ParamOIDs) != 1 {
			return fmt.Errorf("prepared %d parameters, want 1", len(sd.ParamOIDs))
		}
		_, err = tx.Exec(ctx, sd.SQL, 1)
		return err
	}, []int{1, 100}},
	{"LargeObjects", func(ctx context.Context, tx pgx.Tx) error {
		los := tx.LargeObjects()
		oid, err := los.Create(ctx, 0)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO probe SELECT count(*) FROM pg_largeobject_metadata WHERE oid = $1`, oid)
		return err
	}, []int{1, 100}},
	{"Commit only", func(context.Context, pgx.Tx) error { return nil }, []int{100}},
}

// probePool is a fresh database in mode with an empty probe table.
func probePool(t *testing.T, mode pgx.QueryExecMode) *pgxpool.Pool {
	t.Helper()
	pool := testdb.NewPoolWith(t, func(c *pgxpool.Config) { c.ConnConfig.DefaultQueryExecMode = mode })
	if _, err := pool.Exec(context.Background(), `CREATE TABLE probe (n int)`); err != nil {
		t.Fatal(err)
	}
	return pool
}

func probeRows(t *testing.T, pool *pgxpool.Pool) []int {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT n FROM probe ORDER BY n`)
	if err != nil {
		t.Fatal(err)
	}
	ns, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(context.Background(), `TRUNCATE probe`); err != nil {
		t.Fatal(err)
	}
	return ns
}

func queueProbe(b *pgx.Batch) { b.Queue(`INSERT INTO probe VALUES (100)`) }

// TestDeferredTxBeforeBegin calls each pgx.Tx method first on a deferredTx,
// in every pgx query mode, and requires what a transaction begun the
// ordinary way does with the same calls.
func TestDeferredTxBeforeBegin(t *testing.T) {
	ctx := context.Background()
	for name, mode := range testdb.QueryExecModes() {
		t.Run(name, func(t *testing.T) {
			pool := probePool(t, mode)
			for _, c := range txCases {
				t.Run(c.name, func(t *testing.T) {
					// The ordinary way, for reference.
					ref, err := pool.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if err := c.do(ctx, ref); err != nil {
						t.Fatalf("on a pgx transaction: %v", err)
					}
					if _, err := ref.Exec(ctx, `INSERT INTO probe VALUES (100)`); err != nil {
						t.Fatal(err)
					}
					if err := ref.Commit(ctx); err != nil {
						t.Fatal(err)
					}
					if got := probeRows(t, pool); !slices.Equal(got, c.want) {
						t.Fatalf("case is wrong: a pgx transaction left %v, want %v", got, c.want)
					}

					tx, err := beginDeferred(ctx, pool, queueProbe)
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback(ctx) //nolint:errcheck // gives the connection back should the case fail
					if err := c.do(ctx, tx); err != nil {
						t.Fatalf("on a deferred transaction: %v", err)
					}
					if err := tx.Commit(ctx); err != nil {
						t.Fatal(err)
					}
					if got := probeRows(t, pool); !slices.Equal(got, c.want) {
						t.Errorf("a deferred transaction left %v, want %v", got, c.want)
					}
					if err := tx.Commit(ctx); !errors.Is(err, pgx.ErrTxClosed) {
						t.Errorf("second Commit = %v, want pgx.ErrTxClosed", err)
					}
					if _, err := tx.Exec(ctx, `SELECT 1`); !errors.Is(err, pgx.ErrTxClosed) {
						t.Errorf("Exec after Commit = %v, want pgx.ErrTxClosed", err)
					}
					if n := pool.Stat().AcquiredConns(); n != 0 {
						t.Errorf("%d connections still acquired", n)
					}
				})
			}

			t.Run("Conn", func(t *testing.T) {
				tx, err := beginDeferred(ctx, pool, queueProbe)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx) //nolint:errcheck // gives the connection back should the test fail
				// River's driver reads the query mode from here before it
				// sends anything.
				if conn := tx.Conn(); conn == nil || conn.Config().DefaultQueryExecMode != mode {
					t.Fatalf("Conn() before BEGIN = %v, want the connection, in mode %v", conn, mode)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				if tx.Conn() != nil {
					t.Error("Conn() after Rollback is not nil")
				}
			})

			t.Run("Rollback", func(t *testing.T) {
				for _, first := range []bool{false, true} {
					tx, err := beginDeferred(ctx, pool, queueProbe)
					if err != nil {
						t.Fatal(err)
					}
					defer tx.Rollback(ctx) //nolint:errcheck // gives the connection back should the case fail
					if first {
						if _, err := tx.Exec(ctx, `INSERT INTO probe VALUES (1)`); err != nil {
							t.Fatal(err)
						}
					}
					if err := tx.Rollback(ctx); err != nil {
						t.Fatalf("Rollback (after a statement: %v): %v", first, err)
					}
					if got := probeRows(t, pool); len(got) != 0 {
						t.Errorf("rolled back (after a statement: %v), probe has %v", first, got)
					}
					if err := tx.Rollback(ctx); !errors.Is(err, pgx.ErrTxClosed) {
						t.Errorf("second Rollback = %v, want pgx.ErrTxClosed", err)
					}
				}
				if n := pool.Stat().AcquiredConns(); n != 0 {
					t.Errorf("%d connections still acquired", n)
				}
			})

			t.Run("failing queued statement", func(t *testing.T) {
				tx, err := beginDeferred(ctx, pool, func(b *pgx.Batch) {
					queueProbe(b)
					b.Queue(`INSERT INTO no_such_table VALUES (1)`)
				})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(ctx, `INSERT INTO probe VALUES (1)`); err == nil {
					// The queued statements' error may come with the first
					// statement or with the commit; never a commit.
					if err := tx.Commit(ctx); err == nil {
						t.Fatal("Commit succeeded although a queued statement failed")
					}
				}
				tx.Rollback(ctx) //nolint:errcheck // ErrTxClosed after Commit
				if got := probeRows(t, pool); len(got) != 0 {
					t.Errorf("a failed transaction left %v", got)
				}
				if n := pool.Stat().AcquiredConns(); n != 0 {
					t.Errorf("%d connections still acquired", n)
				}
			})
		})
	}
}

// tripCounter counts round trips on the connections it wraps: every write
// that follows a read (or opens the connection) starts one.
type tripCounter struct {
	mu       sync.Mutex
	trips    int
	readLast bool
}

func (c *tripCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.readLast = true
	c.mu.Unlock()
	return &countedConn{Conn: conn, c: c}, nil
}

func (c *tripCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trips
}

type countedConn struct {
	net.Conn
	c *tripCounter
}

func (cc *countedConn) Write(b []byte) (int, error) {
	cc.c.mu.Lock()
	if cc.c.readLast {
		cc.c.trips++
	}
	cc.c.readLast = false
	cc.c.mu.Unlock()
	return cc.Conn.Write(b)
}

func (cc *countedConn) Read(b []byte) (int, error) {
	n, err := cc.Conn.Read(b)
	if n > 0 {
		cc.c.mu.Lock()
		cc.c.readLast = true
		cc.c.mu.Unlock()
	}
	return n, err
}

// TestWebhookTransactionRoundTrips counts the round trips of one webhook's
// transaction on a warm connection, in every pgx query mode: River's job
// insert must travel with BEGIN and the inbox insert. It fails when River
// starts sending something else first, or sends its insert another way.
func TestWebhookTransactionRoundTrips(t *testing.T) {
	// Round trips per transaction, and those River's NOTIFY adds, by mode.
	want := map[string]struct{ tx, notify int }{
		"cache_statement": {2, 1},
		"cache_describe":  {2, 1},
		"describe_exec":   {3, 2}, // pgx describes every statement before it runs it
		"exec":            {2, 1},
		"simple_protocol": {2, 1},
	}
	ctx := context.Background()
	for name, mode := range testdb.QueryExecModes() {
		t.Run(name, func(t *testing.T) {
			counter := &tripCounter{}
			pool := testdb.NewPoolWith(t, func(c *pgxpool.Config) {
				c.ConnConfig.DefaultQueryExecMode = mode
				c.ConnConfig.DialFunc = counter.dial
				c.MaxConns = 1 // every statement on the counted connection
				c.ShouldPing = func(context.Context, pgxpool.ShouldPingParams) bool { return false }
			})
			// An insert-only client that notifies of new jobs once an hour
			// at most: after its first insert, no NOTIFY rides along.
			quiet, err := river.NewClient(riverpgxv5.New(pool), &river.Config{FetchCooldown: time.Hour, FetchPollInterval: time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			commit := func(inserter *river.Client[pgx.Tx], events int) int {
				t.Helper()
				batch := make([]*inbox.Event, events)
				for i := range batch {
					n++
					batch[i] = &inbox.Event{WebhookID: fmt.Sprintf("msg_trips_%d", n), EventType: "order.paid",
						Status: inbox.StatusPending, WebhookTimestamp: time.Now(), Body: []byte(`{}`)}
				}
				before := counter.count()
				if _, err := commitEvents(ctx, pool, inserter, batch); err != nil {
					t.Fatal(err)
				}
				return counter.count() - before
			}
			commit(quiet, 1) // warms the connection: prepares or describes, and notifies once
			commit(quiet, 3)
			w := want[name]
			if got := commit(quiet, 1); got != w.tx {
				t.Errorf("one webhook: %d round trips, want %d", got, w.tx)
			}
			if got := commit(quiet, 5); got != w.tx {
				t.Errorf("five webhooks, one transaction: %d round trips, want %d", got, w.tx)
			}
			// A client that has not notified yet sends River's NOTIFY with
			// its first insert of an available job: one more. (A client's
			// very first insert also asks for the server's version first,
			// once; a scheduled job, which notifies nobody, gets that over.)
			notifying, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := notifying.Insert(ctx, jobs.EventArgs{WebhookID: "msg_later"}, &river.InsertOpts{ScheduledAt: time.Now().Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			if got := commit(notifying, 1); got != w.tx+w.notify {
				t.Errorf("one webhook with River's NOTIFY: %d round trips, want %d", got, w.tx+w.notify)
			}
		})
	}
}

// freezingProxy forwards TCP connections to a server until told to freeze
// the ones open: from then on they forward nothing and stay open, like a
// peer that vanished without a FIN. Later connections flow.
type freezingProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	open   []chan struct{} // closed to freeze a connection
	conns  []net.Conn
	closed chan struct{}
}

// close ends every connection, frozen or not.
func (p *freezingProxy) close() {
	close(p.closed)
	p.ln.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
}

func newFreezingProxy(t *testing.T, target string) *freezingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezingProxy{ln: ln, target: target, closed: make(chan struct{})}
	go func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			frozen := make(chan struct{})
			p.mu.Lock()
			p.open = append(p.open, frozen)
			p.conns = append(p.conns, client, server)
			p.mu.Unlock()
			go p.pipe(server, client, frozen)
			go p.pipe(client, server, frozen)
		}
	}()
	return p
}

func (p *freezingProxy) pipe(dst, src net.Conn, frozen chan struct{}) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		select {
		case <-frozen:
			<-p.closed // hold the connection open, silent, until the test ends
			return
		default:
		}
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

// freeze silences every connection open now.
func (p *freezingProxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, f := range p.open {
		close(f)
	}
	p.open = nil
}

// freezeAfterInsert inserts jobs, then freezes the proxy and fails, so that
// the transaction's rollback meets a connection that no longer answers.
type freezeAfterInsert struct {
	*river.Client[pgx.Tx]
	proxy *freezingProxy
}

func (f freezeAfterInsert) InsertManyTx(ctx context.Context, tx pgx.Tx, params []river.InsertManyParams) ([]*rivertype.JobInsertResult, error) {
	if _, err := f.Client.InsertManyTx(ctx, tx, params); err != nil {
		return nil, err
	}
	f.proxy.freeze()
	return nil, errors.New("the job insert failed after the connection stopped answering")
}

// TestRollbackOnAConnectionThatStopsAnsweringIsBounded rolls back a webhook
// transaction whose connection has gone silent mid-transaction: the store
// must give up within cleanupTimeout, however long its own deadline, and
// the next store must work on a new connection.
func TestRollbackOnAConnectionThatStopsAnsweringIsBounded(t *testing.T) {
	u, err := url.Parse(testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := newFreezingProxy(t, u.Host)
	u.Host = proxy.ln.Addr().String()
	cfg, err := pgxpool.ParseConfig(u.String())
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	// First, so that pgx's goodbye to the silent connection (it waits up to
	// 15 s for the server to close it) does not hold up the pool's Close.
	t.Cleanup(proxy.close)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	event := func(id string) []*inbox.Event {
		return []*inbox.Event{{WebhookID: id, EventType: "order.paid", Status: inbox.StatusPending, WebhookTimestamp: time.Now(), Body: []byte(`{}`)}}
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := commitEvents(ctx, pool, freezeAfterInsert{client, proxy}, event("msg_frozen"))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("the store succeeded although its job insert failed")
		}
		if elapsed := time.Since(start); elapsed > cleanupTimeout+2*time.Second {
			t.Errorf("the store took %v to give up, want about cleanupTimeout (%v)", elapsed, cleanupTimeout)
		}
	case <-time.After(cleanupTimeout + 10*time.Second):
		t.Fatalf("the store still waits on a silent connection %v later", time.Since(start))
	}
	// The silent connection must not go back to the pool: the next store,
	// with a deadline far shorter than the test's, would wait on it.
	next, cancelNext := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelNext()
	if _, err := commitEvents(next, pool, client, event("msg_after")); err != nil {
		t.Fatalf("the next store failed: %v", err)
	}
}

// TestSubmitRacingCloseIsAnsweredAtOnce submits webhooks while the group
// committer closes: each is committed or refused at once, none waits out
// its deadline in a queue nobody reads.
func TestSubmitRacingCloseIsAnsweredAtOnce(t *testing.T) {
	pool, client := storeDeps(t)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	const rounds, submitters = 60, 8
	var stored, refused int
	for round := range rounds {
		g := newGroupCommitter(pool, client, 2, 4, logger)
		results := make([]storeResult, submitters)
		took := make([]time.Duration, submitters)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range submitters {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()
				e := &inbox.Event{WebhookID: fmt.Sprintf("msg_race_%d_%d", round, i), EventType: "order.paid",
					Status: inbox.StatusPending, WebhookTimestamp: time.Now(), Body: []byte(`{}`)}
				<-start
				begun := time.Now()
				results[i] = g.submit(ctx, e)
				took[i] = time.Since(begun)
			})
		}
		close(start)
		g.close()
		wg.Wait()
		for i, r := range results {
			if took[i] > 5*time.Second {
				t.Fatalf("round %d: a submit racing close was answered after %v (%v)", round, took[i], r.err)
			}
			switch {
			case r.err == nil && r.inserted:
				stored++
			case errors.Is(r.err, errClosed):
				refused++
			default:
				t.Fatalf("round %d: submit = %+v, want stored or refused as closed", round, r)
			}
		}
	}
	var rows int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM webhook_inbox`).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != stored {
		t.Errorf("%d inbox rows, but %d submits were told stored", rows, stored)
	}
	t.Logf("%d stored, %d refused as closed", stored, refused)
}
