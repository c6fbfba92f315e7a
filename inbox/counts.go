package inbox

import (
	"context"
	"fmt"
)

// The rows by status are counted by the database as they are written
// (migration 00012): webhook_inbox_counts holds the counts as of a
// snapshot, and every statement that writes webhook_inbox appends its change
// per status to webhook_inbox_count_changes. Reading them costs the same
// at ten rows and at ten million.

// foldSQL moves the changes into the counts, in one statement, so that
// they stay a few rows. A change whose transaction the counts' snapshot
// had seen is in the counts already and is dropped.
const foldSQL = `
	WITH gone AS (
		DELETE FROM webhook_inbox_count_changes c
		USING webhook_inbox_counts s
		WHERE c.status = s.status
		RETURNING c.status, c.n, pg_visible_in_snapshot(c.xid, s.since) AS counted)
	UPDATE webhook_inbox_counts s SET n = s.n + g.n
	FROM (SELECT status, sum(n) AS n FROM gone WHERE NOT counted GROUP BY status) g
	WHERE s.status = g.status`

// countsSQL reads the counts with the changes not folded yet.
const countsSQL = `
	SELECT s.status, s.n + coalesce(sum(c.n) FILTER (WHERE NOT pg_visible_in_snapshot(c.xid, s.since)), 0)
	FROM webhook_inbox_counts s
	LEFT JOIN webhook_inbox_count_changes c ON c.status = s.status
	GROUP BY s.status, s.n`

// FoldCounts folds the changes counted since the last fold into the
// counts. Counts folds too; the retention sweep calls it as well, so that
// the changes stay few where nothing scrapes the metrics.
func FoldCounts(ctx context.Context, db DB) error {
	if _, err := db.Exec(ctx, foldSQL); err != nil {
		return fmt.Errorf("fold inbox counts: %w", err)
	}
	return nil
}

// Counts returns how many rows have each status, exactly, after folding.
func Counts(ctx context.Context, db DB) (map[string]int64, error) {
	if err := FoldCounts(ctx, db); err != nil {
		return nil, err
	}
	rows, err := db.Query(ctx, countsSQL)
	if err != nil {
		return nil, fmt.Errorf("count inbox rows: %w", err)
	}
	defer rows.Close()
	out := make(map[string]int64)
	for rows.Next() {
		var status string
		var n int64
		if err := rows.Scan(&status, &n); err != nil {
			return nil, fmt.Errorf("count inbox rows: %w", err)
		}
		out[status] = n
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("count inbox rows: %w", err)
	}
	return out, nil
}
