// Package inbox stores every verified webhook delivery, byte-exact, keyed by
// the endpoint that verified it and its delivery id. It is the receiver's
// durable record and the workers' source of truth for an event's body.
package inbox

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relayhq/relay/internal/text"
)

// Status of an inbox row.
const (
	StatusPending   = "pending"   // a job will process it
	StatusProcessed = "processed" // its job finished
	StatusIgnored   = "ignored"   // a type relay does not act on, or nothing it could apply to
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
	// Source is SourceWebhook for a delivery Polar sent, or
	// SourceReconciliation for a sale reconciliation recovered from Polar's
	// API under a synthetic webhook id.
	Source string
}

// Sources of inbox rows (the source column, migration 00016).
const (
	SourceWebhook        = "webhook"
	SourceReconciliation = "reconciliation"
)

// Key identifies a stored delivery: Polar's webhook id is unique per
// endpoint, the platform's or a workspace's in one environment, not across
// them (a workspace signing with its own secret picks its ids).
type Key struct {
	WebhookID   string
	WorkspaceID string // "" for the platform's endpoint
	Environment string // "" for the platform's endpoint
}

// Key is the event's key.
func (e *Event) Key() Key {
	return Key{WebhookID: e.WebhookID, WorkspaceID: e.WorkspaceID, Environment: e.Environment}
}

// Platform names the platform's own endpoint in Endpoint and ParseEndpoint.
const Platform = "platform"

// Endpoint names the endpoint that verified the event: "platform", or
// "<workspace id>/<environment>".
func (e *Event) Endpoint() string { return endpointName(e.WorkspaceID, e.Environment) }

func endpointName(workspaceID, environment string) string {
	if workspaceID == "" {
		return Platform
	}
	return workspaceID + "/" + environment
}

// ParseEndpoint reads an endpoint as Endpoint writes it. A workspace id
// that is not one names an endpoint that has stored nothing.
func ParseEndpoint(s string) (workspaceID, environment string, err error) {
	if s == Platform {
		return "", "", nil
	}
	ws, env, ok := strings.Cut(s, "/")
	if !ok || ws == "" || (env != "production" && env != "sandbox") {
		return "", "", fmt.Errorf("endpoint %q: want %q or <workspace id>/production or <workspace id>/sandbox", s, Platform)
	}
	return strings.ToLower(ws), env, nil
}

// DB is what the inbox runs its statements on: a pool, a connection or a
// transaction.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Insert stores events, each unless a row with its key (endpoint and webhook
// id) exists, and reports per event whether it inserted it; the ids and
// received times of the inserted ones are set, and those of the others
// zeroed. Of several events with one key, the first is inserted. An insert
// racing a concurrent transaction's insert of the same key waits for it,
// then reports false, or inserts if that transaction rolled back.
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

// InsertRecovered is Insert for events reconciliation recovered from
// Polar's API: the rows are marked SourceReconciliation. Their synthetic
// webhook ids are deterministic, so the unique key makes two passes, or
// two replicas racing, store one row.
func InsertRecovered(ctx context.Context, db DB, events ...*Event) ([]bool, error) {
	rows, err := db.Query(ctx, insertRecoveredSQL, insertArgs(events)...)
	if err != nil {
		return nil, fmt.Errorf("insert %d recovered inbox rows: %w", len(events), err)
	}
	for _, e := range events {
		e.Source = SourceReconciliation
	}
	return readInserted(rows, events)
}

const insertRecoveredSQL = `
	INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, event_timestamp, body, error, workspace_id, environment, source)
	SELECT *, 'reconciliation' FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bytea[], $7::text[], $8::uuid[], $9::text[])
	ON CONFLICT (webhook_id, workspace_id, environment) DO NOTHING
	RETURNING id, webhook_id, coalesce(workspace_id::text, ''), coalesce(environment, ''), received_at`

const insertSQL = `
	INSERT INTO webhook_inbox (webhook_id, event_type, status, webhook_timestamp, event_timestamp, body, error, workspace_id, environment)
	SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::bytea[], $7::text[], $8::uuid[], $9::text[])
	ON CONFLICT (webhook_id, workspace_id, environment) DO NOTHING
	RETURNING id, webhook_id, coalesce(workspace_id::text, ''), coalesce(environment, ''), received_at`

func insertArgs(events []*Event) []any {
	n := len(events)
	ids, types, statuses := make([]string, n), make([]string, n), make([]string, n)
	hookTimes, eventTimes := make([]time.Time, n), make([]*time.Time, n)
	bodies, notes := make([][]byte, n), make([]*string, n)
	workspaces, environments := make([]*string, n), make([]*string, n)
	for i, e := range events {
		ids[i], types[i], statuses[i] = e.WebhookID, e.EventType, e.Status
		hookTimes[i], eventTimes[i], bodies[i], notes[i] = e.WebhookTimestamp, e.EventTimestamp, e.Body, e.Error
		workspaces[i], environments[i] = text.NullIfEmpty(e.WorkspaceID), text.NullIfEmpty(e.Environment)
	}
	return []any{ids, types, statuses, hookTimes, eventTimes, bodies, notes, workspaces, environments}
}

// readInserted reads insertSQL's rows into the events they belong to.
func readInserted(rows pgx.Rows, events []*Event) ([]bool, error) {
	defer rows.Close()
	type insertedRow struct {
		id         int64
		receivedAt time.Time
	}
	inserted := make(map[Key]insertedRow, len(events))
	for rows.Next() {
		var (
			r insertedRow
			k Key
		)
		if err := rows.Scan(&r.id, &k.WebhookID, &k.WorkspaceID, &k.Environment, &r.receivedAt); err != nil {
			return nil, fmt.Errorf("insert inbox rows: %w", err)
		}
		inserted[k] = r
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("insert %d inbox rows: %w", len(events), err)
	}
	out := make([]bool, len(events))
	for i, e := range events {
		r, ok := inserted[e.Key()]
		e.ID, e.ReceivedAt, out[i] = r.id, r.receivedAt, ok // zero for a duplicate
		delete(inserted, e.Key())                           // later events with this key are duplicates
	}
	return out, nil
}

// JobOf is an SQL expression for the newest job carrying the delivery whose
// webhook id, workspace id and environment are the SQL expressions given,
// alone or in a batch. A row's job is recorded when the job processes it (or
// a replay makes a new one); until then it is found by its key in the job's
// arguments, so that storing a webhook costs no second write. Jobs name the
// platform's endpoint with nulls (jobs.EventArgs), so a key matches exactly.
func JobOf(webhookID, workspaceID, environment string) string {
	return `(SELECT max(j.id) FROM river_job j
		WHERE ` + Carries("j.args", KeyJSON(webhookID, workspaceID, environment)) + `)`
}

// KeyJSON is an SQL expression for the key of a delivery, given its webhook
// id, workspace id and environment as SQL expressions, in JSON as its job's
// arguments hold it.
func KeyJSON(webhookID, workspaceID, environment string) string {
	return `jsonb_build_object('webhook_id', ` + webhookID + `, 'workspace_id', ` + workspaceID + `, 'environment', ` + environment + `)`
}

// Carries is an SQL condition: the job arguments args (jsonb) carry a
// delivery that key (a jsonb object, KeyJSON or part of it) matches, alone
// or in a batch. Both forms are containment, which river_job's GIN index on
// args answers.
func Carries(args, key string) string {
	return `(` + args + ` @> ` + key + ` OR ` + args + ` @> jsonb_build_object('events', jsonb_build_array(` + key + `)))`
}

// columns reads a row with its job, recorded or found by JobOf.
var columns = `id, webhook_id, event_type, status, webhook_timestamp, event_timestamp,
	received_at, processed_at, body, coalesce(workspace_id::text, ''), coalesce(environment, ''),
	coalesce(job_id, ` + JobOf("webhook_id", "workspace_id", "environment") + `),
	error, source`

// storedColumns reads a row as stored, without looking for its job.
const storedColumns = `id, webhook_id, event_type, status, webhook_timestamp, event_timestamp,
	received_at, processed_at, body, coalesce(workspace_id::text, ''), coalesce(environment, ''), job_id, error, source`

func scan(row pgx.Row) (*Event, error) {
	var e Event
	err := row.Scan(&e.ID, &e.WebhookID, &e.EventType, &e.Status, &e.WebhookTimestamp, &e.EventTimestamp,
		&e.ReceivedAt, &e.ProcessedAt, &e.Body, &e.WorkspaceID, &e.Environment, &e.JobID, &e.Error, &e.Source)
	return &e, err
}

// ErrNotFound means no row has the webhook id (at the endpoint asked for).
var ErrNotFound = errors.New("inbox: no such webhook")

// ErrAmbiguous means several endpoints have stored the webhook id, and the
// caller named none of them.
var ErrAmbiguous = errors.New("inbox: several endpoints stored this webhook id; name one")

// keyMatch selects the row of key ($1, $2, $3); webhook_id leads the unique
// index, so it is one index look-up. The workspace is compared as text: one
// that is not a UUID matches nothing rather than failing the statement.
const keyMatch = `webhook_id = $1 AND workspace_id::text IS NOT DISTINCT FROM $2::text AND environment IS NOT DISTINCT FROM $3`

// Find returns the rows of a webhook id, oldest first: one per endpoint
// that stored it, or, when endpoint is not empty (as Endpoint writes it),
// that endpoint's row only. It fails with ErrNotFound when there is none.
func Find(ctx context.Context, db DB, webhookID, endpoint string) ([]*Event, error) {
	var (
		rows pgx.Rows
		err  error
	)
	if endpoint == "" {
		rows, err = db.Query(ctx, `SELECT `+columns+` FROM webhook_inbox WHERE webhook_id = $1 ORDER BY id`, webhookID)
	} else {
		ws, env, perr := ParseEndpoint(endpoint)
		if perr != nil {
			return nil, fmt.Errorf("find inbox row %q: %w", webhookID, perr)
		}
		rows, err = db.Query(ctx, `SELECT `+columns+` FROM webhook_inbox WHERE `+keyMatch, webhookID, text.NullIfEmpty(ws), text.NullIfEmpty(env))
	}
	if err != nil {
		return nil, fmt.Errorf("find inbox row %q: %w", webhookID, err)
	}
	out, err := collect(rows)
	if err != nil {
		return nil, fmt.Errorf("find inbox row %q: %w", webhookID, err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("find inbox row %q: %w", webhookID, ErrNotFound)
	}
	return out, nil
}

// Get returns the one row of a webhook id at endpoint (see Find); with no
// endpoint named, it fails with ErrAmbiguous, naming the endpoints, when
// several have stored the id.
func Get(ctx context.Context, db DB, webhookID, endpoint string) (*Event, error) {
	found, err := Find(ctx, db, webhookID, endpoint)
	if err != nil {
		return nil, err
	}
	if len(found) > 1 {
		names := make([]string, len(found))
		for i, e := range found {
			names[i] = e.Endpoint()
		}
		return nil, fmt.Errorf("get inbox row %q: %w (%s)", webhookID, ErrAmbiguous, strings.Join(names, ", "))
	}
	return found[0], nil
}

// GetStored returns the row of a key as stored: JobID is set only once a
// job has processed it. It is what a worker needs, at one index lookup.
func GetStored(ctx context.Context, db DB, k Key) (*Event, error) {
	e, err := scan(db.QueryRow(ctx, `SELECT `+storedColumns+` FROM webhook_inbox WHERE `+keyMatch,
		k.WebhookID, text.NullIfEmpty(k.WorkspaceID), text.NullIfEmpty(k.Environment)))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, fmt.Errorf("get inbox row %q at %s: %w", k.WebhookID, endpointName(k.WorkspaceID, k.Environment), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("get inbox row %q: %w", k.WebhookID, err)
	}
	return e, nil
}

// GetStoredMany is GetStored for several keys in one statement; the events
// come back in the order of the keys. A key without a row fails the whole
// call with ErrNotFound.
func GetStoredMany(ctx context.Context, db DB, keys []Key) ([]*Event, error) {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.WebhookID
	}
	// By webhook id, the unique index's first column; the rows of the same
	// ids at other endpoints, rare, are read and left.
	rows, err := db.Query(ctx, `SELECT `+storedColumns+` FROM webhook_inbox WHERE webhook_id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("get %d inbox rows: %w", len(keys), err)
	}
	found, err := collect(rows)
	if err != nil {
		return nil, fmt.Errorf("get %d inbox rows: %w", len(keys), err)
	}
	byKey := make(map[Key]*Event, len(found))
	for _, e := range found {
		byKey[e.Key()] = e
	}
	out := make([]*Event, len(keys))
	for i, k := range keys {
		if out[i] = byKey[k]; out[i] == nil {
			return nil, fmt.Errorf("get inbox row %q at %s: %w", k.WebhookID, endpointName(k.WorkspaceID, k.Environment), ErrNotFound)
		}
	}
	return out, nil
}

func collect(rows pgx.Rows) ([]*Event, error) {
	defer rows.Close()
	var out []*Event
	for rows.Next() {
		e, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// MarkProcessed records that job processed the row's event; note is an
// optional short outcome ("no session", "not a storefront sale").
func MarkProcessed(ctx context.Context, db DB, id, jobID int64, note string) error {
	return MarkProcessedMany(ctx, db, jobID, []int64{id}, []string{note})
}

// MarkProcessedMany records that job processed the rows' events, in one
// statement; notes[i] is the note of ids[i].
func MarkProcessedMany(ctx context.Context, db DB, jobID int64, ids []int64, notes []string) error {
	statuses := make([]string, len(ids))
	for i := range statuses {
		statuses[i] = StatusProcessed
	}
	return MarkDone(ctx, db, jobID, ids, statuses, notes)
}

// MarkDone records that job worked the rows' events, in one statement:
// statuses[i] (StatusProcessed, or StatusIgnored when the event found
// nothing to apply to) and notes[i] are those of ids[i].
func MarkDone(ctx context.Context, db DB, jobID int64, ids []int64, statuses, notes []string) error {
	jobIDs := make([]int64, len(ids))
	for i := range jobIDs {
		jobIDs[i] = jobID
	}
	return MarkDoneEach(ctx, db, jobIDs, ids, statuses, notes)
}

// MarkDoneEach is MarkDone for rows worked by several jobs in one
// transaction: jobIDs[i] worked ids[i]. Still one statement.
func MarkDoneEach(ctx context.Context, db DB, jobIDs, ids []int64, statuses, notes []string) error {
	if len(ids) != len(notes) || len(ids) != len(statuses) || len(ids) != len(jobIDs) {
		return fmt.Errorf("mark %d inbox rows processed: %d jobs, %d statuses, %d notes", len(ids), len(jobIDs), len(statuses), len(notes))
	}
	errTexts := make([]*string, len(notes))
	for i := range notes {
		if notes[i] != "" {
			errTexts[i] = &notes[i]
		}
	}
	if _, err := db.Exec(ctx, `
		UPDATE webhook_inbox i SET status = m.status, processed_at = now(), job_id = m.job_id, error = m.note
		FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) m(job_id, id, note, status)
		WHERE i.id = m.id`, jobIDs, ids, errTexts, statuses); err != nil {
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
func MarkRefused(ctx context.Context, db DB, k Key, jobID int64, reason string) error {
	if _, err := db.Exec(ctx, `
		UPDATE webhook_inbox SET status = 'refused', processed_at = now(), job_id = $4, error = $5
		WHERE `+keyMatch+` AND status = 'pending'`, k.WebhookID, text.NullIfEmpty(k.WorkspaceID), text.NullIfEmpty(k.Environment), jobID, reason); err != nil {
		return fmt.Errorf("mark inbox row %q refused: %w", k.WebhookID, err)
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
