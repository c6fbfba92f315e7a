-- +goose NO TRANSACTION
-- +goose Up
-- A webhook id is unique per endpoint, not across them: the platform's
-- endpoint, and each workspace's in each environment, are Polar endpoints
-- of their own, and a workspace that signs with its own secret chooses its
-- webhook ids. With one global key, a tenant could send the id of a
-- delivery another endpoint receives later, and that real delivery was
-- answered as a duplicate and never stored. The key is now the endpoint
-- (workspace and environment, both NULL for the platform, which NULLS NOT
-- DISTINCT makes one endpoint) and the webhook id; Polar's redeliveries
-- come to the endpoint they were sent to, and stay exactly-once there.
-- webhook_id leads, so a look-up by id alone (relay inbox show) still uses it.
-- CONCURRENTLY: the receiver keeps inserting while the index builds.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS webhook_inbox_endpoint_webhook_id_key
    ON webhook_inbox (webhook_id, workspace_id, environment) NULLS NOT DISTINCT;
-- Replicas of an older relay insert ON CONFLICT (webhook_id): from here on
-- those inserts fail (503, or spooled) until the replica is replaced.
ALTER TABLE webhook_inbox DROP CONSTRAINT IF EXISTS webhook_inbox_webhook_id_key;
-- Jobs not yet finished name their delivery by webhook id alone; they now
-- name its endpoint too (null for the platform), as new jobs do. No older
-- replica can insert since the constraint went, and no newer one runs before
-- this migration is done, so every webhook id still has one row here.
-- Unfinished jobs by state: River's fetch index leads with it, so finished
-- jobs River keeps are not read.
UPDATE river_job j SET args = j.args || jsonb_build_object('workspace_id', i.workspace_id, 'environment', i.environment)
FROM webhook_inbox i
WHERE j.state IN ('available', 'pending', 'retryable', 'running', 'scheduled') AND j.kind = 'polar_event'
  AND NOT j.args ? 'environment'
  AND i.webhook_id = j.args->>'webhook_id';
UPDATE river_job j SET args = jsonb_set(j.args, '{events}', (
    SELECT jsonb_agg(e || jsonb_build_object('workspace_id', i.workspace_id, 'environment', i.environment) ORDER BY n)
    FROM jsonb_array_elements(j.args->'events') WITH ORDINALITY AS x(e, n)
    LEFT JOIN webhook_inbox i ON i.webhook_id = x.e->>'webhook_id'))
WHERE j.state IN ('available', 'pending', 'retryable', 'running', 'scheduled') AND j.kind = 'polar_event_batch'
  AND jsonb_typeof(j.args->'events') = 'array' AND jsonb_array_length(j.args->'events') > 0;

-- +goose Down
-- Fails if two endpoints have stored one webhook id since.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS webhook_inbox_webhook_id_key ON webhook_inbox (webhook_id);
ALTER TABLE webhook_inbox ADD CONSTRAINT webhook_inbox_webhook_id_key UNIQUE USING INDEX webhook_inbox_webhook_id_key;
DROP INDEX CONCURRENTLY IF EXISTS webhook_inbox_endpoint_webhook_id_key;
