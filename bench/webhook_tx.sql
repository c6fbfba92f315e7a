-- pgbench script: the transaction relay's receiver commits for one accepted
-- webhook without group commit (receiver.commitEvents with one event),
-- statement for statement, as River v0.51 and relay's inbox package send it
-- (captured with log_statement=all): BEGIN; River's JobInsertFastMany;
-- INSERT INTO webhook_inbox ... RETURNING; (sometimes) River's PGNotifyMany;
-- COMMIT. The job's args name the webhook id, not the inbox row, so the job
-- can go first; the inbox row's job id is recorded later, by the worker.
-- pgbench sends one statement per round trip. relay sends BEGIN, the job
-- insert and the inbox insert in one (a pgx batch), then COMMIT: the ceiling
-- is the plain transaction, and saving those round trips is part of what
-- relay is measured on.
-- Run it with -M prepared (pgx caches prepared statements too) and
-- -D body=<the event JSON>, so the stored body is the one relay stores.
-- River rate-limits its insert notification to one per queue per
-- FetchCooldown (relay sets 20 ms) per client, i.e. about 50 a second: at
-- the rates measured here that is ~1% of transactions.
\set r random(1, 9223372036854775806)
\set notify random(1, 100)
BEGIN;
WITH raw_job_data AS (
    SELECT
        unnest(ARRAY[0]::bigint[]) AS id,
        unnest(ARRAY[json_build_object('webhook_id', 'msg_pgbench_' || :client_id || '_' || :r,
                                       'event_type', 'order.updated',
                                       'workspace_id', NULL, 'environment', NULL)::jsonb]) AS args,
        unnest(ARRAY[clock_timestamp()]::timestamptz[]) AS created_at,
        unnest(ARRAY['polar_event']::text[]) AS kind,
        unnest(ARRAY[12]::smallint[]) AS max_attempts,
        unnest(ARRAY['{}']::jsonb[]) AS metadata,
        unnest(ARRAY[1]::smallint[]) AS priority,
        unnest(ARRAY['default']::text[]) AS queue,
        unnest(ARRAY[clock_timestamp()]::timestamptz[]) AS scheduled_at,
        unnest(ARRAY['available']::text[]) AS state,
        unnest(ARRAY['']::text[]) AS tags,
        unnest(ARRAY[NULL]::bytea[]) AS unique_key,
        unnest(ARRAY[0]::integer[]) AS unique_states
)
INSERT INTO river_job(
    id, args, created_at, kind, max_attempts, metadata, priority, queue, scheduled_at, state, tags, unique_key, unique_states
) SELECT
    coalesce(nullif(id, 0), nextval('river_job_id_seq'::regclass)),
    args,
    coalesce(nullif(created_at, '0001-01-01 00:00:00 +0000'), now()) AS created_at,
    kind,
    max_attempts,
    coalesce(metadata, '{}'::jsonb) AS metadata,
    priority,
    queue,
    coalesce(nullif(scheduled_at, '0001-01-01 00:00:00 +0000'), now()) AS scheduled_at,
    state::river_job_state,
    string_to_array(tags, ',')::varchar(255)[],
    nullif(unique_key, '')::bytea,
    nullif(unique_states::integer, 0)::bit(8)
FROM raw_job_data
ON CONFLICT (unique_key)
    WHERE unique_key IS NOT NULL
        AND unique_states IS NOT NULL
        AND river_job_state_in_bitmask(unique_states, state)
    DO UPDATE SET kind = river_job.kind
RETURNING
    river_job.id AS job_id, river_job.args, river_job.attempt, river_job.attempted_at, river_job.attempted_by,
    river_job.created_at, river_job.errors, river_job.finalized_at, river_job.kind, river_job.max_attempts,
    river_job.metadata, river_job.priority, river_job.queue, river_job.state, river_job.scheduled_at, river_job.tags,
    river_job.unique_key, river_job.unique_states, (xmax != 0) AS unique_skipped_as_duplicate \gset j_
INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, event_timestamp, body, error, workspace_id, environment)
VALUES ('msg_pgbench_' || :client_id || '_' || :r, 'order.updated', 'pending', now(), now() - interval '1 second',
        convert_to(:body, 'UTF8'), NULL, NULL, NULL)
ON CONFLICT (webhook_id, workspace_id, environment) DO NOTHING
RETURNING id AS inbox_id, webhook_id AS inbox_webhook_id, coalesce(workspace_id::text, '') AS inbox_workspace,
          coalesce(environment, '') AS inbox_environment, received_at \gset
\if :notify = 1
WITH topic_to_notify AS (
    SELECT concat(current_schema(), '.', 'river_insert') AS topic, unnest(ARRAY['{"queue": "default"}']::text[]) AS payload
)
SELECT pg_notify(topic_to_notify.topic, topic_to_notify.payload) FROM topic_to_notify;
\endif
COMMIT;
