// Package testdb gives each test its own freshly migrated PostgreSQL
// database on the server named by DATABASE_URL (make test starts one).
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/migrations"
)

// templateName is per set of migrations: a server reused across changes to
// them never hands out a stale schema.
var templateName = "relay_test_template_" + migrations.Fingerprint()

var templateOnce struct {
	sync.Once
	err error
}

// URL returns the server's DATABASE_URL or fails the test: these tests need
// a real PostgreSQL and never pass without one.
func URL(tb testing.TB) string {
	tb.Helper()
	u := os.Getenv("DATABASE_URL")
	if u == "" {
		tb.Fatal("DATABASE_URL is not set: run the tests with `make test`, which starts PostgreSQL")
	}
	return u
}

// New creates a migrated database for tb, dropped when tb ends, and returns
// its URL.
func New(tb testing.TB) string {
	tb.Helper()
	return newDatabase(tb, true)
}

// NewEmpty creates an empty database for tb, never migrated, dropped when
// tb ends, and returns its URL.
func NewEmpty(tb testing.TB) string {
	tb.Helper()
	return newDatabase(tb, false)
}

func newDatabase(tb testing.TB, migrated bool) string {
	tb.Helper()
	base := URL(tb)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		tb.Fatalf("connect to test server: %v", err)
	}
	defer admin.Close(ctx)

	options := ""
	if migrated {
		templateOnce.Do(func() { templateOnce.err = makeTemplate(ctx, admin, base) })
		if templateOnce.err != nil {
			tb.Fatalf("create template database: %v", templateOnce.err)
		}
		options = " TEMPLATE " + templateName
	}
	name := "relay_test_" + randomHex(6)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name+options); err != nil {
		tb.Fatalf("create test database: %v", err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			tb.Logf("drop test database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Logf("drop test database %s: %v", name, err)
		}
	})
	return withDatabase(tb, base, name)
}

// NewPool is New with a connection pool that closes when tb ends.
func NewPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	return NewPoolWith(tb, nil)
}

// NewPoolWith is NewPool with the pool's configuration changed by edit first.
func NewPoolWith(tb testing.TB, edit func(*pgxpool.Config)) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(New(tb))
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = 40
	if edit != nil {
		edit(cfg)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("open test pool: %v", err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// makeTemplate migrates a template database once per server; test binaries
// run in parallel, so they take turns under an advisory lock.
// QueryExecModes are pgx's query modes, by the names DATABASE_URL's
// default_query_exec_mode takes; relay works in each.
func QueryExecModes() map[string]pgx.QueryExecMode {
	return map[string]pgx.QueryExecMode{
		"cache_statement": pgx.QueryExecModeCacheStatement,
		"cache_describe":  pgx.QueryExecModeCacheDescribe,
		"describe_exec":   pgx.QueryExecModeDescribeExec,
		"exec":            pgx.QueryExecModeExec,
		"simple_protocol": pgx.QueryExecModeSimpleProtocol,
	}
}

func makeTemplate(ctx context.Context, admin *pgx.Conn, base string) error {
	if _, err := admin.Exec(ctx, "SELECT pg_advisory_lock(4242)"); err != nil {
		return err
	}
	defer admin.Exec(ctx, "SELECT pg_advisory_unlock(4242)") //nolint:errcheck

	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", templateName).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	building := templateName + "_building"
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+building); err != nil {
		return err
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+building); err != nil {
		return err
	}
	u, err := urlWithDatabase(base, building)
	if err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		return err
	}
	err = migrations.Up(ctx, pool)
	pool.Close()
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	_, err = admin.Exec(ctx, "ALTER DATABASE "+building+" RENAME TO "+templateName)
	return err
}

func withDatabase(tb testing.TB, base, name string) string {
	tb.Helper()
	u, err := urlWithDatabase(base, name)
	if err != nil {
		tb.Fatal(err)
	}
	return u
}

func urlWithDatabase(base, name string) (string, error) {
	u, err := url.Parse(base)
	if err != nil || !strings.HasPrefix(u.Scheme, "postgres") {
		return "", fmt.Errorf("DATABASE_URL must be a postgres:// URL")
	}
	u.Path = "/" + name
	return u.String(), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
