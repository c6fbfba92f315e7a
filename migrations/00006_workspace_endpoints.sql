-- +goose Up
-- A refused event (it can never apply: another workspace's session, a
-- sandbox payment for a production session, malformed data) is kept as such.
ALTER TABLE webhook_inbox
    DROP CONSTRAINT webhook_inbox_status_check,
    ADD CONSTRAINT webhook_inbox_status_check
        CHECK (status IN ('pending', 'processed', 'ignored', 'invalid', 'refused'));

-- Which workspace's endpoint a delivery came through and the environment of
-- the secret that verified it; both NULL for the platform's own endpoint.
ALTER TABLE webhook_inbox
    ADD COLUMN workspace_id uuid,
    ADD COLUMN environment  text,
    ADD CONSTRAINT webhook_inbox_environment_check
        CHECK (environment IN ('production', 'sandbox')),
    ADD CONSTRAINT webhook_inbox_workspace_environment_check
        CHECK ((workspace_id IS NULL) = (environment IS NULL));

-- The Polar environment a checkout session was created in, written by the
-- storefront. A delivery verified by a sandbox secret (test cards) never
-- completes or books a production session.
ALTER TABLE inventory_checkout_sessions
    ADD COLUMN polar_environment text NOT NULL DEFAULT 'production',
    ADD CONSTRAINT inventory_checkout_sessions_polar_environment_check
        CHECK (polar_environment IN ('production', 'sandbox'));

-- +goose Down
ALTER TABLE inventory_checkout_sessions DROP COLUMN polar_environment;
ALTER TABLE webhook_inbox DROP COLUMN environment, DROP COLUMN workspace_id;
UPDATE webhook_inbox SET status = 'processed' WHERE status = 'refused';
ALTER TABLE webhook_inbox
    DROP CONSTRAINT webhook_inbox_status_check,
    ADD CONSTRAINT webhook_inbox_status_check
        CHECK (status IN ('pending', 'processed', 'ignored', 'invalid'));
