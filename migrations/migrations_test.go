package migrations_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/testdb"
)

// TestRiverGINIndexesHaveNoPendingList checks that River's GIN indexes are
// updated in place, so that no job insert has to merge a pending list while
// webhooks wait for their 200 (00003_river_gin_fastupdate.sql).
func TestRiverGINIndexesHaveNoPendingList(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	rows, err := pool.Query(ctx, `
		SELECT c.relname, coalesce(array_to_string(c.reloptions, ','), '')
		FROM pg_index i
		JOIN pg_class c ON c.oid = i.indexrelid
		JOIN pg_am am ON am.oid = c.relam
		WHERE i.indrelid = 'river_job'::regclass AND am.amname = 'gin'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var name, opts string
		if err := rows.Scan(&name, &opts); err != nil {
			t.Fatal(err)
		}
		n++
		if opts != "fastupdate=off" {
			t.Errorf("GIN index %s has options %q, want fastupdate=off", name, opts)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("river_job has no GIN index: did River's schema change?")
	}
}
