-- +goose NO TRANSACTION
-- +goose Up
-- A worker's update of an inbox row (status, processed time, job id, note)
-- was never HOT: status was indexed, so every update added an entry to each
-- of the table's three indexes (make bench: about 300 bytes of WAL per
-- processed event, and the CPU of three index insertions, one of them a
-- unique check). Without an index on status, and with room left on each
-- page for the row's one new version, the update stays on its page and
-- touches no index (about 90% of them in make bench).
--
-- What the old index served: the retention sweep finds old rows by
-- received_at (the new index); the admin list reads newest first by id;
-- the inbox metric's count by status becomes a scan of the table, whose
-- rows are narrow now that bodies live out of line (00009).
-- CONCURRENTLY: the receiver keeps inserting while the index builds.
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_inbox_received_idx ON webhook_inbox (received_at);
DROP INDEX CONCURRENTLY IF EXISTS webhook_inbox_status_received_idx;
-- New pages are filled half, so that every row on one can be updated there
-- once.
ALTER TABLE webhook_inbox SET (fillfactor = 50);

-- +goose Down
CREATE INDEX CONCURRENTLY IF NOT EXISTS webhook_inbox_status_received_idx ON webhook_inbox (status, received_at);
DROP INDEX CONCURRENTLY IF EXISTS webhook_inbox_received_idx;
ALTER TABLE webhook_inbox RESET (fillfactor);
