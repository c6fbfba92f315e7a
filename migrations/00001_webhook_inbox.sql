-- +goose Up
-- Every verified delivery, byte-exact, so its signature can be re-checked and
-- the event replayed. webhook_id is Polar's idempotency key for a delivery.
CREATE TABLE webhook_inbox (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id        text        NOT NULL,
    event_type        text        NOT NULL DEFAULT '',
    status            text        NOT NULL,
    webhook_timestamp timestamptz NOT NULL,
    event_timestamp   timestamptz,
    received_at       timestamptz NOT NULL DEFAULT now(),
    processed_at      timestamptz,
    body              bytea       NOT NULL,
    job_id            bigint,
    error             text,
    CONSTRAINT webhook_inbox_webhook_id_key UNIQUE (webhook_id),
    CONSTRAINT webhook_inbox_status_check
        CHECK (status IN ('pending', 'processed', 'ignored', 'invalid'))
);

CREATE INDEX webhook_inbox_status_received_idx ON webhook_inbox (status, received_at);

-- +goose Down
DROP TABLE webhook_inbox;
