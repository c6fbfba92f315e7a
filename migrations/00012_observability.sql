-- +goose NO TRANSACTION
-- +goose Up
-- relay_inbox_events counted webhook_inbox by status with a scan of the
-- whole table: at 30 days of retention (10 million rows, half-empty pages
-- by design, 00010) that read 3.5 GB and took 1.9 s, near the scrape's 2 s
-- limit. An index on status cannot help: any index on a column the worker's
-- update changes makes that update non-HOT again, which 00010 removed.
-- Instead every statement that writes webhook_inbox appends what it changed
-- per status to webhook_inbox_count_changes (a statement trigger over its
-- transition table: one small row per status the statement touched, never
-- one per webhook, and no row two writers update), and the counts are
-- webhook_inbox_counts plus the changes not folded into it yet. Exact, and
-- a read of a few rows at any size (docs/performance.md).
--
-- The counts start from one count of the table, taken after the triggers
-- exist, without blocking the receiver meanwhile: since is that count's
-- snapshot, and a change whose transaction it already saw is not added
-- again.
CREATE TABLE IF NOT EXISTS webhook_inbox_counts (
    status text   PRIMARY KEY,
    n      bigint NOT NULL,
    since  pg_snapshot NOT NULL
);

CREATE TABLE IF NOT EXISTS webhook_inbox_count_changes (
    status text   NOT NULL,
    n      bigint NOT NULL,
    xid    xid8   NOT NULL DEFAULT pg_current_xact_id()
);

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION webhook_inbox_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO webhook_inbox_count_changes (status, n)
        SELECT status, count(*) FROM new_rows GROUP BY status;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO webhook_inbox_count_changes (status, n)
        SELECT status, sum(n) FROM (SELECT status, -1 AS n FROM old_rows UNION ALL SELECT status, 1 FROM new_rows) d
        GROUP BY status HAVING sum(n) <> 0;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO webhook_inbox_count_changes (status, n)
        SELECT status, -count(*) FROM old_rows GROUP BY status;
    ELSE -- TRUNCATE: every count is 0 as of now
        UPDATE webhook_inbox_counts SET n = 0, since = pg_current_snapshot();
    END IF;
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- A trigger with transition tables fires for one kind of statement only.
CREATE OR REPLACE TRIGGER webhook_inbox_count_insert AFTER INSERT ON webhook_inbox
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_inbox_count_change();
CREATE OR REPLACE TRIGGER webhook_inbox_count_update AFTER UPDATE ON webhook_inbox
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_inbox_count_change();
CREATE OR REPLACE TRIGGER webhook_inbox_count_delete AFTER DELETE ON webhook_inbox
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION webhook_inbox_count_change();
CREATE OR REPLACE TRIGGER webhook_inbox_count_truncate AFTER TRUNCATE ON webhook_inbox
    FOR EACH STATEMENT EXECUTE FUNCTION webhook_inbox_count_change();

-- The one count, in one statement: pg_current_snapshot() is the snapshot
-- it counts in. Every status of webhook_inbox_status_check has a row; a
-- migration that adds a status adds its row.
INSERT INTO webhook_inbox_counts (status, n, since)
SELECT s.status, count(i.status), pg_current_snapshot()
FROM (VALUES ('pending'), ('processed'), ('ignored'), ('invalid'), ('refused')) s(status)
LEFT JOIN webhook_inbox i ON i.status = s.status
GROUP BY s.status
ON CONFLICT (status) DO NOTHING;

-- The console's search found a delivery by an id its body carries with
-- position() over every stored body: a scan of the table and its TOAST,
-- bounded only by the search's timeout. It now looks the id up in an index
-- of each body's subject: the id of the order, checkout, customer... the
-- event is about (data.id), and for a refund the order it refunds
-- (data.order_id). A session id or a checkout id reaches an order's events
-- through the session that records them (console/store.go). One key per
-- row: an index of every id a body carries (GIN, pg_trgm) cost each insert
-- several entries, and one of the ids thousands of rows share (a product,
-- a customer) rewrote long entries: 90 ms and 460 KB of WAL for 32
-- webhooks against 1.7 ms and 63 KB. This one costs about 0.03 ms and 100
-- bytes of WAL per webhook (docs/performance.md). A body that is not UTF-8
-- JSON (an invalid delivery is kept byte-exact) has no subject rather than
-- failing its insert; catching that takes a subtransaction, which a
-- parallel worker cannot start: PARALLEL UNSAFE, so the index is built by
-- one process. body never changes once stored, so the worker's update
-- stays HOT.
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION webhook_inbox_subject(body bytea) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL UNSAFE AS $$
DECLARE
    e  jsonb;
    id text;
BEGIN
    BEGIN
        e := convert_from(body, 'UTF8')::jsonb;
    EXCEPTION WHEN others THEN
        RETURN NULL;
    END;
    id := CASE WHEN e ->> 'type' LIKE 'refund.%' THEN e -> 'data' ->> 'order_id' ELSE e -> 'data' ->> 'id' END;
    RETURN CASE WHEN length(id) <= 200 THEN id END;
END
$$;
-- +goose StatementEnd
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_inbox_subject_idx ON webhook_inbox (webhook_inbox_subject(body));

-- +goose Down
DROP INDEX CONCURRENTLY IF EXISTS webhook_inbox_subject_idx;
DROP FUNCTION IF EXISTS webhook_inbox_subject(bytea);
DROP TRIGGER IF EXISTS webhook_inbox_count_insert ON webhook_inbox;
DROP TRIGGER IF EXISTS webhook_inbox_count_update ON webhook_inbox;
DROP TRIGGER IF EXISTS webhook_inbox_count_delete ON webhook_inbox;
DROP TRIGGER IF EXISTS webhook_inbox_count_truncate ON webhook_inbox;
DROP FUNCTION IF EXISTS webhook_inbox_count_change();
DROP TABLE IF EXISTS webhook_inbox_count_changes;
DROP TABLE IF EXISTS webhook_inbox_counts;
