-- +goose Up
-- Where an inbox row came from: a delivery Polar sent (webhook), or a sale
-- reconciliation found at Polar's API that no delivery brought
-- (reconciliation), stored under a synthetic webhook id so that it goes
-- through the same job, ledger and exactly-once keys as a delivery.
-- A constant default adds the column without rewriting the table; the check
-- is NOT VALID so that adding it reads no existing row (they all hold
-- 'webhook'), and every new row is checked.
ALTER TABLE webhook_inbox ADD COLUMN source text NOT NULL DEFAULT 'webhook';
ALTER TABLE webhook_inbox ADD CONSTRAINT webhook_inbox_source_check
    CHECK (source IN ('webhook', 'reconciliation')) NOT VALID;

-- +goose Down
ALTER TABLE webhook_inbox DROP COLUMN source;
