-- pgbench script, diagnostic: webhook_tx.sql without River (no job insert
-- or notify), so the difference is what the River job
-- costs inside the receiver's transaction. Run with -M prepared -D body=...
\set r random(1, 9223372036854775806)
BEGIN;
INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, event_timestamp, body, error)
VALUES ('msg_pgbench_' || :client_id || '_' || :r, 'order.updated', 'pending', now(), now() - interval '1 second',
        convert_to(:body, 'UTF8'), NULL)
ON CONFLICT (webhook_id) DO NOTHING
RETURNING id AS inbox_id, received_at \gset
COMMIT;
