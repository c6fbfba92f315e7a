// Package inbox stores every verified webhook delivery, byte-exact, keyed by
// its delivery id. It is the receiver's durable record and the workers'
// source of truth for an event's body.
package inbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Status of an inbox row.
const (
	StatusPending   = "pending"   // a job will process it
	StatusProcessed = "processed" // its job finished
	StatusIgnored   = "ignored"   // a type relay does not act on
	StatusInvalid   = "invalid"   // verified, but not a readable event
	StatusRefused   = "refused"   // its job found it can never apply, and was cancelled
)

// Event is one stored delivery.
type Event struct {
	ID               int64
	WebhookID        string
	EventType        string
	Status           string
	WebhookTimestamp time.Time
	EventTimestamp   *time.Time
	ReceivedAt       time.Time
	ProcessedAt      *time.Time
	Body             []byte
	JobID            *int64
	Error            *string
	// WorkspaceID and Environment say whose endpoint secret verified the
	// delivery; both empty for the platform's own endpoint.
	WorkspaceID string
	Environment string
}

// DB is what the inbox runs its statements on: a pool, a connection or a
// transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Insert stores events, each unless a row with its webhook id exists, and
// reports per event whether it inserted it; the ids and received times of the
// inserted ones are set, and those of the others zeroed. Of several events with one webhook id, the first is
// inserted. An insert racing a concurrent transaction's insert of the same id
// waits for it, then reports false, or inserts if that transaction rolled back.
func Insert(ctx context.Context, db DB, events ...*Event) ([]bool, error) {
	rows, err := db.Query(ctx, insertSQL, insertArgs(events)...)
	if err != nil {
		return nil, fmt.Errorf("insert %d inbox rows: %w", len(events), err)
	}
	return readInserted(rows, events)
}

// QueueInsert queues Insert's statement on b, for a caller that sends it
// together with other statements in one round trip. Once b's results are
// closed without error, the events inserted have their ids and received
// times set, and the others, duplicates, a zero ID.
func QueueInsert(b *pgx.Batch, events ...*Event) {
	b.Queue(insertSQL, insertArgs(events)...).Query(func(rows pgx.Rows) error {
		_, err := readInserted(rows, events)
		return err
	})
}

const insertSQL = `
	INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, event_timestamp, body, error, workspace_id, environment)
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bytea[], $7::text[], $8::uuid[], $9::text[])
	ON CONFLICT (webhook_id) DO NOTHING
	RETURNING id, webhook_id, received_at`

func insertArgs(events []*Event) []any {
	n := len(events)
	ids, types, statuses := make([]string, n), make([]string, n), make([]string, n)
	hookTimes, eventTimes := make([]time.Time, n), make([]*time.Time, n)
	bodies, notes := make([][]byte, n), make([]*string, n)
	workspaces, environments := make([]*string, n), make([]*string, n)
	for i, e := range events {
		ids[i], types[i], statuses[i] = e.WebhookID, e.EventType, e.Status
		hookTimes[i], eventTimes[i], bodies[i], notes[i] = e.WebhookTimestamp, e.EventTimestamp, e.Body, e.Error
		workspaces[i], environments[i] = nullable(e.WorkspaceID), nullable(e.Environment)
	}
	return []any{ids, types, statuses, hookTimes, eventTimes, bodies, notes, workspaces, environments}
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// readInserted reads insertSQL's rows into the events they belong to.
func readInserted(rows pgx.Rows, events []*Event) ([]bool, error) {
	defer rows.Close()
	type insertedRow struct {
		id         int64
		receivedAt time.Time
	}
	inserted := make(map[string]insertedRow, len(events))
	for rows.Next() {
		var (
			r  insertedRow
			id string
		)
		if err := rows.Scan(&r.id, &id, &r.receivedAt); err != nil {
			return nil, fmt.Errorf("insert inbox rows: %w", err)
		}
		inserted[id] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("insert %d inbox rows: %w", len(events), err)
	}
	out := make([]bool, len(events))
	for i, e := range events {
		r, ok := inserted[e.WebhookID]
		e.ID, e.ReceivedAt, out[i] = r.id, r.receivedAt, ok // zero for a duplicate
		delete(inserted, e.WebhookID)                       // later events with this id are duplicates
	}
	return out, nil
}

// columns reads a row. Its job is recorded when the job processes it (or a
// replay makes a new one); until then it is found by the webhook id in the
// job's arguments, its own or a batch's, so that storing a webhook costs no
// second write.
const columns = `id, webhook_id, event_type, status, webhook_timestamp, event_timestamp,
	received_at, processed_at, body, coalesce(workspace_id::text, ''), coalesce(environment, ''),
	coalesce(job_id, (SELECT max(j.id) FROM river_job j
		WHERE j.args @> jsonb_build_object('webhook_id', webhook_id)
		   OR j.args @> jsonb_build_object('events', jsonb_build_array(jsonb_build_object('webhook_id', webhook_id))))),
	error`

// storedColumns reads a row as stored, without looking for its job.
const storedColumns = `id, webhook_id, event_type, status, webhook_timestamp, event_timestamp,
	received_at, processed_at, body, coalesce(workspace_id::text, ''), coalesce(environment, ''), job_id, error`

func scan(row pgx.Row) (*Event, error) {
	var e Event
	err := row.Scan(&e.ID, &e.WebhookID, &e.EventType, &e.Status, &e.WebhookTimestamp, &e.EventTimestamp,
		&e.ReceivedAt, &e.ProcessedAt, &e.Body, &e.WorkspaceID, &e.Environment, &e.JobID, &e.Error)
	return &e, err
}

// ErrNotFound means no row has the webhook id.
var ErrNotFound = errors.New("inbox: no such webhook")

// Get returns the row of a webhook id.
func Get(ctx context.Context, db DB, webhookID string) (*Event, error) {
	return get(ctx, db, columns, webhookID)
}

// GetStored returns the row of a webhook id as stored: JobID is set only once
// a job has processed it. It is what a worker needs, at one index lookup.
func GetStored(ctx context.Context, db DB, webhookID string) (*Event, error) {
	return get(ctx, db, storedColumns, webhookID)
}

func get(ctx context.Context, db DB, cols, webhookID string) (*Event, error) {
	e, err := scan(db.QueryRow(ctx, `SELECT `+cols+` FROM webhook_inbox WHERE webhook_id = $1`, webhookID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get inbox row %q: %w", webhookID, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get inbox row %q: %w", webhookID, err)
	}
	return e, nil
}

// GetStoredMany is GetStored for several webhook ids in one statement; the
// events come back in the order of the ids. An id without a row fails the
// whole call with ErrNotFound.
func GetStoredMany(ctx context.Context, db DB, webhookIDs []string) ([]*Event, error) {
	rows, err := db.Query(ctx, `SELECT `+storedColumns+` FROM webhook_inbox WHERE webhook_id = ANY($1)`, webhookIDs)
	if err != nil {
		return nil, fmt.Errorf("get %d inbox rows: %w", len(webhookIDs), err)
	}
	defer rows.Close()
	byID := make(map[string]*Event, len(webhookIDs))
	for rows.Next() {
		e, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("get %d inbox rows: %w", len(webhookIDs), err)
		}
		byID[e.WebhookID] = e
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("get %d inbox rows: %w", len(webhookIDs), err)
	}
	out := make([]*Event, len(webhookIDs))
	for i, id := range webhookIDs {
		if out[i] = byID[id]; out[i] == nil {
			return nil, fmt.Errorf("get inbox row %q: %w", id, ErrNotFound)
		}
	}
	return out, nil
}

// MarkProcessed records that job processed the row's event; note is an
// optional short outcome ("no session", "not a storefront sale").
func MarkProcessed(ctx context.Context, db DB, id, jobID int64, note string) error {
	return MarkProcessedMany(ctx, db, jobID, []int64{id}, []string{note})
}

// MarkProcessedMany records that job processed the rows' events, in one
// statement; notes[i] is the note of ids[i].
func MarkProcessedMany(ctx context.Context, db DB, jobID int64, ids []int64, notes []string) error {
	if len(ids) != len(notes) {
		return fmt.Errorf("mark %d inbox rows processed: %d notes", len(ids), len(notes))
	}
	errTexts := make([]*string, len(notes))
	for i := range notes {
		if notes[i] != "" {
			errTexts[i] = &notes[i]
		}
	}
	if _, err := db.Exec(ctx, `
		UPDATE webhook_inbox i SET status = 'processed', processed_at = now(), job_id = $1, error = m.note
		FROM unnest($2::bigint[], $3::text[]) m(id, note)
		WHERE i.id = m.id`, jobID, ids, errTexts); err != nil {
		if len(ids) == 1 {
			return fmt.Errorf("mark inbox row %d processed: %w", ids[0], err)
		}
		return fmt.Errorf("mark %d inbox rows processed: %w", len(ids), err)
	}
	return nil
}

// MarkRefused records that job refused the row's event for good, with a
// short reason (no payload data). It runs after the job's own transaction
// rolled back, so that the refusal is visible on the row.
func MarkRefused(ctx context.Context, db DB, webhookID string, jobID int64, reason string) error {
	if _, err := db.Exec(ctx, `
		UPDATE webhook_inbox SET status = 'refused', processed_at = now(), job_id = $2, error = $3
		WHERE webhook_id = $1 AND status = 'pending'`, webhookID, jobID, reason); err != nil {
		return fmt.Errorf("mark inbox row %q refused: %w", webhookID, err)
	}
	return nil
}

// ListParams filters List. Zero values mean no filter.
type ListParams struct {
	Status    string
	EventType string
	Limit     int
}

// List returns rows newest first.
func List(ctx context.Context, db DB, p ListParams) ([]*Event, error) {
	if p.Limit <= 0 {
		p.Limit = 50
	}
	rows, err := db.Query(ctx, `SELECT `+columns+` FROM webhook_inbox
		WHERE ($1 = '' OR status = $1) AND ($2 = '' OR event_type = $2)
		ORDER BY id DESC LIMIT $3`, p.Status, p.EventType, p.Limit)
	if err != nil {
		return nil, fmt.Errorf("list inbox: %w", err)
	}
	defer rows.Close()
	var out []*Event
	for rows.Next() {
		e, err := scan(rows)
		if err != nil {
			return nil, fmt.Errorf("list inbox: %w", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list inbox: %w", err)
	}
	return out, nil
}

// SetPending marks a row to be processed again by job, as a replay does.
func SetPending(ctx context.Context, db DB, id, jobID int64) error {
	if _, err := db.Exec(ctx, `UPDATE webhook_inbox SET status = 'pending', job_id = $2 WHERE id = $1`, id, jobID); err != nil {
		return fmt.Errorf("set inbox row %d pending for job %d: %w", id, jobID, err)
	}
	return nil
}
