package main

import (
	"context"
	"fmt"
	"log"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/text"
)

// Which writes each processed event costs: pg_stat_statements (when the
// cluster preloads it; scripts/bench.sh does) and pg_stat_user_tables, both
// reset when a processing run starts and read when it ends.

// stmtCost is one statement's share of a run.
type stmtCost struct {
	Query                string
	Calls, Rows          int64
	WALBytes, WALFPI     int64
	ExecMS               float64
	SharedDirtied, Reads int64
}

// tableCost is one table's row changes in a run.
type tableCost struct {
	Table                 string
	Ins, Upd, HotUpd, Del int64
}

// pgStats reads and resets the statistics; ok is false without
// pg_stat_statements, whose figures are then left out.
type pgStats struct{ statements bool }

func newPGStats(ctx context.Context, pool *pgxpool.Pool) *pgStats {
	_, err := pool.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`)
	if err == nil {
		_, err = pool.Exec(ctx, `SELECT pg_stat_statements_reset()`)
	}
	if err != nil {
		log.Printf("pg_stat_statements unavailable, statements' costs left out: %v", err)
	}
	return &pgStats{statements: err == nil}
}

func (p *pgStats) reset(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, `SELECT pg_stat_reset()`); err != nil {
		return fmt.Errorf("reset statistics: %w", err)
	}
	if p.statements {
		if _, err := pool.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
			return fmt.Errorf("reset pg_stat_statements: %w", err)
		}
	}
	return nil
}

// maxStatements bounds the statements reported per run: the costliest by
// WAL, then by execution time.
const maxStatements = 12

func (p *pgStats) read(ctx context.Context, pool *pgxpool.Pool) ([]stmtCost, []tableCost, error) {
	var stmts []stmtCost
	if p.statements {
		rows, err := pool.Query(ctx, `
			SELECT query, calls, rows, wal_bytes::bigint, wal_fpi, total_exec_time, shared_blks_dirtied, shared_blks_read
			FROM pg_stat_statements
			WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
			  AND query !~* '^\s*(begin|commit|rollback|select pg_stat|set |show |vacuum|checkpoint|truncate)'
			  AND query !~ 'inventory_checkout_sessions WHERE status = .completed. AND finance_transaction_id IS NOT NULL'
			ORDER BY wal_bytes DESC, total_exec_time DESC LIMIT $1`, maxStatements)
		if err != nil {
			return nil, nil, fmt.Errorf("read pg_stat_statements: %w", err)
		}
		for rows.Next() {
			var s stmtCost
			if err := rows.Scan(&s.Query, &s.Calls, &s.Rows, &s.WALBytes, &s.WALFPI, &s.ExecMS, &s.SharedDirtied, &s.Reads); err != nil {
				rows.Close()
				return nil, nil, err
			}
			stmts = append(stmts, s)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return nil, nil, err
		}
	}
	rows, err := pool.Query(ctx, `
		SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
		WHERE n_tup_ins + n_tup_upd + n_tup_del > 0 ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC`)
	if err != nil {
		return nil, nil, fmt.Errorf("read pg_stat_user_tables: %w", err)
	}
	defer rows.Close()
	var tables []tableCost
	for rows.Next() {
		var t tableCost
		if err := rows.Scan(&t.Table, &t.Ins, &t.Upd, &t.HotUpd, &t.Del); err != nil {
			return nil, nil, err
		}
		tables = append(tables, t)
	}
	return stmts, tables, rows.Err()
}

var spaceRE = regexp.MustCompile(`\s+`)

// shortQuery is a statement's first words, one line, for a table cell.
func shortQuery(q string) string {
	q = strings.TrimSpace(spaceRE.ReplaceAllString(q, " "))
	q = strings.ReplaceAll(q, "|", "\\|")
	return "`" + text.Abbrev(q, 110) + "`"
}

// perEvent is the statements' and tables' costs of one processing run,
// divided by its events, in Markdown.
func (p *processResult) perEvent() string {
	if p.Sent == 0 {
		return ""
	}
	n := float64(p.Sent)
	var b strings.Builder
	if len(p.Statements) > 0 {
		b.WriteString("| Statement | calls/event | rows/call | WAL bytes/event | full-page images/event | exec µs/event |\n|---|---:|---:|---:|---:|---:|\n")
		for _, s := range p.Statements {
			rows := 0.0
			if s.Calls > 0 {
				rows = float64(s.Rows) / float64(s.Calls)
			}
			fmt.Fprintf(&b, "| %s | %.3f | %.1f | %.0f | %.3f | %.1f |\n", shortQuery(s.Query), float64(s.Calls)/n, rows,
				float64(s.WALBytes)/n, float64(s.WALFPI)/n, s.ExecMS*1000/n)
		}
		b.WriteString("\n")
	}
	if len(p.Tables) > 0 {
		b.WriteString("| Table | inserts/event | updates/event | of which HOT | deletes/event |\n|---|---:|---:|---:|---:|\n")
		for _, t := range p.Tables {
			hot := "–"
			if t.Upd > 0 {
				hot = fmt.Sprintf("%.0f%%", 100*float64(t.HotUpd)/float64(t.Upd))
			}
			fmt.Fprintf(&b, "| %s | %.3f | %.3f | %s | %.3f |\n", t.Table, float64(t.Ins)/n, float64(t.Upd)/n, hot, float64(t.Del)/n)
		}
	}
	return b.String()
}
