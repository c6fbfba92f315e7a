package migrations_test

import (
	"testing"

	"github.com/relayhq/relay/jobs"
)

// TestDedupPerEndpointNamesTheEndpointInUnfinishedJobs migrates a database
// whose unfinished jobs name their deliveries by webhook id alone (before
// 00011): each then names its delivery's endpoint too, so that workers find
// the row by its key, and the same webhook id can be stored by another
// endpoint from then on, but not twice by one.
func TestDedupPerEndpointNamesTheEndpointInUnfinishedJobs(t *testing.T) {
	pool, provider := migratedTo(t, 10)
	ctx := t.Context()
	var ws string
	if err := pool.QueryRow(ctx, `INSERT INTO workspaces (name) VALUES ('Shop') RETURNING id::text`).Scan(&ws); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO webhook_inbox (webhook_id, status, webhook_timestamp, body, workspace_id, environment)
		VALUES ('msg_ws', 'pending', now(), '{}', $1, 'sandbox'), ('msg_platform', 'pending', now(), '{}', NULL, NULL),
		       ('msg_batch_ws', 'pending', now(), '{}', $1, 'production'), ('msg_batch_platform', 'pending', now(), '{}', NULL, NULL)`, ws); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		INSERT INTO river_job (kind, args, queue, state, max_attempts, priority) VALUES
		('polar_event', '{"webhook_id": "msg_ws", "event_type": "order.paid"}', 'default', 'available', 25, 1),
		('polar_event', '{"webhook_id": "msg_platform", "event_type": "order.paid"}', 'default', 'available', 25, 1),
		('polar_event_batch', '{"events": [{"webhook_id": "msg_batch_ws", "event_type": "order.paid"},
			{"webhook_id": "msg_batch_platform", "event_type": "order.paid"}]}', 'default', 'available', 25, 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := provider.Up(ctx); err != nil {
		t.Fatalf("migrate up: %v", err)
	}

	var single []jobs.EventArgs
	var batch jobs.EventBatchArgs
	rows, err := pool.Query(ctx, `SELECT args FROM river_job WHERE kind = 'polar_event' ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var a jobs.EventArgs
		if err := rows.Scan(&a); err != nil {
			t.Fatal(err)
		}
		single = append(single, a)
	}
	if err := pool.QueryRow(ctx, `SELECT args FROM river_job WHERE kind = 'polar_event_batch'`).Scan(&batch); err != nil {
		t.Fatal(err)
	}
	got := append(single, batch.Events...)
	want := []jobs.EventArgs{
		{WebhookID: "msg_ws", EventType: "order.paid", WorkspaceID: ws, Environment: "sandbox"},
		{WebhookID: "msg_platform", EventType: "order.paid"},
		{WebhookID: "msg_batch_ws", EventType: "order.paid", WorkspaceID: ws, Environment: "production"},
		{WebhookID: "msg_batch_platform", EventType: "order.paid"},
	}
	if len(got) != len(want) {
		t.Fatalf("jobs' events = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("event %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	// The platform's jobs name it with nulls, as new jobs do.
	var nulls int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job
		WHERE args @> '{"webhook_id": "msg_platform", "workspace_id": null, "environment": null}'
		   OR args @> '{"events": [{"webhook_id": "msg_batch_platform", "workspace_id": null, "environment": null}]}'`).Scan(&nulls); err != nil {
		t.Fatal(err)
	}
	if nulls != 2 {
		t.Errorf("%d jobs name the platform's endpoint with nulls, want 2", nulls)
	}

	// One webhook id, another endpoint: stored. The same endpoint: refused.
	insert := `INSERT INTO webhook_inbox (webhook_id, status, webhook_timestamp, body, workspace_id, environment)
		VALUES ($1, 'pending', now(), '{}', $2, $3) ON CONFLICT (webhook_id, workspace_id, environment) DO NOTHING`
	for _, c := range []struct {
		id, env string
		ws      *string
		stored  bool
	}{
		{"msg_ws", "production", &ws, true},
		{"msg_ws", "", nil, true},
		{"msg_ws", "sandbox", &ws, false},
		{"msg_platform", "", nil, false},
	} {
		var env *string
		if c.env != "" {
			env = &c.env
		}
		tag, err := pool.Exec(ctx, insert, c.id, c.ws, env)
		if err != nil {
			t.Fatal(err)
		}
		if stored := tag.RowsAffected() == 1; stored != c.stored {
			t.Errorf("insert %s at %v/%q: stored %v, want %v", c.id, c.ws != nil, c.env, stored, c.stored)
		}
	}
}
