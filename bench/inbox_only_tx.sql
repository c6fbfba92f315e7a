-- pgbench script, diagnostic: webhook_tx.sql without River (no job insert
-- or notify), so the difference is what the River job
-- costs inside the receiver's transaction. Run with -M prepared -D body=...
\set r random(1, 9223372036854775806)
BEGIN;
INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, event_timestamp, body, error, workspace_id, environment)
VALUES ('msg_pgbench_' || :client_id || '_' || :r, 'order.updated', 'pending', now(), now() - interval '1 second',
        convert_to(:body, 'UTF8'), NULL, NULL, NULL)
ON CONFLICT (webhook_id, workspace_id, environment) DO NOTHING
RETURNING id AS inbox_id, webhook_id AS inbox_webhook_id, coalesce(workspace_id::text, '') AS inbox_workspace,
          coalesce(environment, '') AS inbox_environment, received_at \gset
COMMIT;
