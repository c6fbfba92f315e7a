// Package admin is relay's operator surface: listing, retrying and
// cancelling River jobs, inspecting and replaying stored webhooks, listing
// and posting pending bookings, and the authenticated HTTP API and River UI
// on the admin listener. The CLI in cmd/relay calls the same operations.
package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polar"
)

// MaxLimit bounds one listing; River refuses pages over 10,000.
const MaxLimit = 1000

// Errors the API maps to HTTP statuses. Errors of the operations match them
// with errors.Is; their messages say what happened ("job 12 not found").
var (
	ErrBadRequest    = errors.New("bad request")
	ErrNotFound      = errors.New("not found")
	ErrConflict      = errors.New("not possible in the job's state")
	ErrNotReplayable = errors.New("relay does not act on this event type")
)

// opError is an error with its own message that matches one of the errors
// above.
type opError struct {
	kind error
	msg  string
}

func (e *opError) Error() string { return e.msg }
func (e *opError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &opError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Ops are the admin operations. They need only the database and a River
// client; an insert-only client (no Workers, never started) is enough.
type Ops struct {
	Pool   *pgxpool.Pool
	Client *river.Client[pgx.Tx]
	// Metrics and Logger, when set, count and log the pending bookings
	// PostPending books, as relay's workers do.
	Metrics *jobs.Metrics
	Logger  *slog.Logger
}

// Job is a River job as operators see it.
type Job struct {
	ID          int64      `json:"id"`
	Kind        string     `json:"kind"`
	State       string     `json:"state"`
	Queue       string     `json:"queue"`
	Attempt     int        `json:"attempt"`
	MaxAttempts int        `json:"max_attempts"`
	WebhookID   string     `json:"webhook_id,omitempty"`
	EventType   string     `json:"event_type,omitempty"`
	LastError   string     `json:"last_error,omitempty"`
	CreatedAt   time.Time  `json:"created_at"`
	ScheduledAt time.Time  `json:"scheduled_at"`
	AttemptedAt *time.Time `json:"attempted_at,omitempty"`
	FinalizedAt *time.Time `json:"finalized_at,omitempty"`
}

func jobFromRow(r *rivertype.JobRow) Job {
	j := Job{
		ID: r.ID, Kind: r.Kind, State: string(r.State), Queue: r.Queue,
		Attempt: r.Attempt, MaxAttempts: r.MaxAttempts,
		CreatedAt: r.CreatedAt, ScheduledAt: r.ScheduledAt,
		AttemptedAt: r.AttemptedAt, FinalizedAt: r.FinalizedAt,
	}
	if len(r.Errors) > 0 {
		j.LastError = r.Errors[len(r.Errors)-1].Error
	}
	var args jobs.EventArgs
	var batch jobs.EventBatchArgs
	switch {
	case r.Kind == args.Kind() && json.Unmarshal(r.EncodedArgs, &args) == nil:
		j.WebhookID, j.EventType = args.WebhookID, args.EventType
	case r.Kind == batch.Kind() && json.Unmarshal(r.EncodedArgs, &batch) == nil && len(batch.Events) > 0:
		j.WebhookID = fmt.Sprintf("%s (+%d more)", batch.Events[0].WebhookID, len(batch.Events)-1)
	}
	return j
}

// JobFilter selects jobs. Zero values mean no filter; Limit defaults to 50.
type JobFilter struct {
	States []rivertype.JobState
	Kinds  []string
	Limit  int
}

// ParseStates reads a comma-separated list of River job states.
func ParseStates(s string) ([]rivertype.JobState, error) {
	var out []rivertype.JobState
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part == "" {
			continue
		}
		st := rivertype.JobState(part)
		if !slices.Contains(rivertype.JobStates(), st) {
			return nil, fmt.Errorf("%w: unknown job state %q (want one of %v)", ErrBadRequest, part, rivertype.JobStates())
		}
		out = append(out, st)
	}
	return out, nil
}

// CheckLimit returns the default for 0 and refuses what River would panic on.
func CheckLimit(n int) (int, error) {
	switch {
	case n == 0:
		return 50, nil
	case n < 0 || n > MaxLimit:
		return 0, fmt.Errorf("%w: limit %d: want 1 to %d", ErrBadRequest, n, MaxLimit)
	}
	return n, nil
}

func (f JobFilter) params() (*river.JobListParams, error) {
	limit, err := CheckLimit(f.Limit)
	if err != nil {
		return nil, err
	}
	p := river.NewJobListParams().First(limit)
	if len(f.States) > 0 {
		p = p.States(f.States...)
	}
	if len(f.Kinds) > 0 {
		p = p.Kinds(f.Kinds...)
	}
	return p, nil
}

// ListJobs returns jobs in River's order for the filter (oldest id first).
func (o *Ops) ListJobs(ctx context.Context, f JobFilter) ([]Job, error) {
	p, err := f.params()
	if err != nil {
		return nil, err
	}
	res, err := o.Client.JobList(ctx, p)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	out := make([]Job, 0, len(res.Jobs))
	for _, r := range res.Jobs {
		out = append(out, jobFromRow(r))
	}
	return out, nil
}

// RetryJob makes a job available to run now; one whose attempts are used up
// (discarded) gets one more. A running job cannot be retried, and a completed
// one is not: its effects are applied, and replaying its webhook (Replay)
// applies the event again with a new job, leaving the completed one's record.
func (o *Ops) RetryJob(ctx context.Context, id int64) (Job, error) {
	return o.jobAction(ctx, id, func(r *rivertype.JobRow) error {
		switch r.State {
		case rivertype.JobStateRunning:
			return errorf(ErrConflict, "job %d is running; it cannot be retried before it finishes", id)
		case rivertype.JobStateCompleted:
			return errorf(ErrConflict, "job %d already completed, not retried; to apply its event again, replay its webhook: relay inbox replay %s",
				id, replayHint(jobFromRow(r)))
		}
		return nil
	}, func(tx pgx.Tx) (*rivertype.JobRow, error) { return o.Client.JobRetryTx(ctx, tx, id) })
}

// CancelJob cancels a job that has not finished. A running job is asked to
// stop and stays running until its worker returns. A finished job is refused.
func (o *Ops) CancelJob(ctx context.Context, id int64) (Job, error) {
	return o.jobAction(ctx, id, func(r *rivertype.JobRow) error {
		if finished(r.State) {
			return errorf(ErrConflict, "job %d already %s, nothing to cancel", id, r.State)
		}
		return nil
	}, func(tx pgx.Tx) (*rivertype.JobRow, error) { return o.Client.JobCancelTx(ctx, tx, id) })
}

// DeleteJob deletes a finished job: the way to acknowledge a discarded job
// that was handled by other means. A job that would still run must be
// cancelled first, so that no event is dropped by a delete; its stored
// webhook stays in the inbox either way and can be replayed.
func (o *Ops) DeleteJob(ctx context.Context, id int64) (Job, error) {
	return o.jobAction(ctx, id, func(r *rivertype.JobRow) error {
		switch {
		case r.State == rivertype.JobStateRunning:
			return errorf(ErrConflict, "job %d is running; it cannot be deleted (cancel it, or wait for it to finish)", id)
		case !finished(r.State):
			return errorf(ErrConflict, "job %d is %s and would still run; cancel it before deleting it", id, r.State)
		}
		return nil
	}, func(tx pgx.Tx) (*rivertype.JobRow, error) {
		r, err := o.Client.JobDeleteTx(ctx, tx, id)
		if errors.Is(err, rivertype.ErrJobRunning) { // not while the row is locked; River's own guard
			return nil, errorf(ErrConflict, "job %d is running; it cannot be deleted", id)
		}
		return r, err
	})
}

// finished reports whether River is done with jobs in state s.
func finished(s rivertype.JobState) bool {
	return s == rivertype.JobStateCompleted || s == rivertype.JobStateDiscarded || s == rivertype.JobStateCancelled
}

// replayHint names the webhook to replay for a job, or a placeholder when
// the job is a batch of several.
func replayHint(j Job) string {
	var args jobs.EventArgs
	if j.Kind == args.Kind() && j.WebhookID != "" {
		return j.WebhookID
	}
	return "WEBHOOK_ID (relay inbox list shows them)"
}

// jobAction runs act on job id in a transaction that holds the job's row
// lock from the check on, so that the state check sees the state act
// changes: a worker finishing the job meanwhile waits for the commit rather
// than being retried, cancelled or deleted over.
func (o *Ops) jobAction(ctx context.Context, id int64, check func(*rivertype.JobRow) error, act func(pgx.Tx) (*rivertype.JobRow, error)) (Job, error) {
	var done *rivertype.JobRow
	err := pgx.BeginFunc(ctx, o.Pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `SELECT FROM river_job WHERE id = $1 FOR UPDATE`, id)
		if err != nil {
			return fmt.Errorf("lock job %d: %w", id, err)
		}
		if tag.RowsAffected() == 0 {
			return errorf(ErrNotFound, "job %d not found", id)
		}
		r, err := o.Client.JobGetTx(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("get job %d: %w", id, err)
		}
		if err := check(r); err != nil {
			return err
		}
		if done, err = act(tx); err != nil {
			var oe *opError
			if errors.As(err, &oe) {
				return err
			}
			return fmt.Errorf("job %d: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return Job{}, err
	}
	return jobFromRow(done), nil
}

// RetryMatching retries every job in the filter's states finalized, or for
// unfinished states created, at or after since (zero: any time), by
// RetryJob's rules; running and completed jobs are refused up front. It
// calls done after each retry and stops at the first error. dryRun only
// reports.
func (o *Ops) RetryMatching(ctx context.Context, f JobFilter, since time.Time, dryRun bool, done func(Job)) (int, error) {
	for _, s := range f.States {
		switch s {
		case rivertype.JobStateRunning:
			return 0, fmt.Errorf("%w: running jobs cannot be retried", ErrBadRequest)
		case rivertype.JobStateCompleted:
			return 0, fmt.Errorf("%w: completed jobs are not retried; replay their webhooks (relay inbox replay)", ErrBadRequest)
		}
	}
	return o.eachMatching(ctx, "retry", f, since, dryRun, o.RetryJob, done)
}

// DeleteMatching deletes every job in the filter's states finalized at or
// after since (zero: any time), by DeleteJob's rules; only the finished
// states (discarded, cancelled, completed) are accepted. It calls done after
// each delete and stops at the first error. dryRun only reports.
func (o *Ops) DeleteMatching(ctx context.Context, f JobFilter, since time.Time, dryRun bool, done func(Job)) (int, error) {
	for _, s := range f.States {
		if !finished(s) {
			return 0, fmt.Errorf("%w: %s jobs would still run and are not deleted; cancel them first", ErrBadRequest, s)
		}
	}
	return o.eachMatching(ctx, "delete", f, since, dryRun, o.DeleteJob, done)
}

// eachMatching pages through the jobs in the filter's states (all of them,
// Limit is the page size) and applies act to each one finalized, or for
// unfinished states created, at or after since.
func (o *Ops) eachMatching(ctx context.Context, verb string, f JobFilter, since time.Time, dryRun bool,
	act func(context.Context, int64) (Job, error), done func(Job)) (int, error) {
	if len(f.States) == 0 {
		return 0, fmt.Errorf("%w: a bulk %s needs a state", ErrBadRequest, verb)
	}
	if f.Limit == 0 {
		f.Limit = 500
	}
	p, err := f.params()
	if err != nil {
		return 0, err
	}
	n := 0
	for {
		res, err := o.Client.JobList(ctx, p)
		if err != nil {
			return n, fmt.Errorf("list jobs to %s: %w", verb, err)
		}
		for _, r := range res.Jobs {
			at := r.CreatedAt
			if r.FinalizedAt != nil {
				at = *r.FinalizedAt
			}
			if at.Before(since) {
				continue
			}
			j := jobFromRow(r)
			if !dryRun {
				if j, err = act(ctx, r.ID); err != nil {
					return n, err
				}
			}
			n++
			done(j)
		}
		if len(res.Jobs) == 0 || res.LastCursor == nil {
			return n, nil
		}
		// The cursor, not the state, moves the page on: jobs acted on leave
		// the state, ones that were passed over must not come back.
		p = p.After(res.LastCursor)
	}
}

// InboxEvent is a stored webhook without its body.
type InboxEvent struct {
	ID        int64  `json:"id"`
	WebhookID string `json:"webhook_id"`
	// Endpoint is the one that verified it: "platform", or
	// "<workspace id>/<environment>". A webhook id is unique per endpoint.
	Endpoint         string     `json:"endpoint"`
	EventType        string     `json:"event_type"`
	Status           string     `json:"status"`
	WebhookTimestamp time.Time  `json:"webhook_timestamp"`
	EventTimestamp   *time.Time `json:"event_timestamp,omitempty"`
	ReceivedAt       time.Time  `json:"received_at"`
	ProcessedAt      *time.Time `json:"processed_at,omitempty"`
	JobID            *int64     `json:"job_id,omitempty"`
	Note             *string    `json:"note,omitempty"`
	BodyBytes        int        `json:"body_bytes"`
	// Source is webhook, or reconciliation for a sale reconciliation
	// recovered from Polar's API.
	Source string `json:"source"`
}

func inboxEvent(e *inbox.Event) InboxEvent {
	return InboxEvent{
		ID: e.ID, WebhookID: e.WebhookID, Endpoint: e.Endpoint(), EventType: e.EventType, Status: e.Status,
		WebhookTimestamp: e.WebhookTimestamp, EventTimestamp: e.EventTimestamp,
		ReceivedAt: e.ReceivedAt, ProcessedAt: e.ProcessedAt, JobID: e.JobID,
		Note: e.Error, BodyBytes: len(e.Body), Source: e.Source,
	}
}

// ListInbox returns stored webhooks, newest first.
func (o *Ops) ListInbox(ctx context.Context, p inbox.ListParams) ([]InboxEvent, error) {
	limit, err := CheckLimit(p.Limit)
	if err != nil {
		return nil, err
	}
	p.Limit = limit
	if p.Status != "" && !slices.Contains([]string{inbox.StatusPending, inbox.StatusProcessed, inbox.StatusIgnored, inbox.StatusInvalid, inbox.StatusRefused}, p.Status) {
		return nil, fmt.Errorf("%w: unknown inbox status %q", ErrBadRequest, p.Status)
	}
	events, err := inbox.List(ctx, o.Pool, p)
	if err != nil {
		return nil, err
	}
	out := make([]InboxEvent, 0, len(events))
	for _, e := range events {
		out = append(out, inboxEvent(e))
	}
	return out, nil
}

// InboxDetail is a stored webhook with its payload.
type InboxDetail struct {
	InboxEvent
	Job *Job `json:"job,omitempty"`
	// Payload is the body, pretty printed, customer data masked unless asked.
	Payload json.RawMessage `json:"payload,omitempty"`
	// PayloadError says why Payload is missing: a body that is not JSON
	// cannot be masked, so it is not shown masked.
	PayloadError string `json:"payload_error,omitempty"`
	Masked       bool   `json:"masked"`
}

// ShowInbox returns one stored webhook; the payload is masked unless
// unmasked is set. A body that is not JSON is shown only unmasked. endpoint
// (InboxEvent.Endpoint) is needed only when several endpoints have stored
// the webhook id.
func (o *Ops) ShowInbox(ctx context.Context, webhookID, endpoint string, unmasked bool) (*InboxDetail, error) {
	e, err := o.getInbox(ctx, webhookID, endpoint)
	if err != nil {
		return nil, err
	}
	d := &InboxDetail{InboxEvent: inboxEvent(e), Masked: !unmasked}
	if e.JobID != nil {
		if r, err := o.Client.JobGet(ctx, *e.JobID); err == nil {
			j := jobFromRow(r)
			d.Job = &j
		} else if !errors.Is(err, river.ErrNotFound) { // River may have cleaned it up
			return nil, fmt.Errorf("get job %d of %q: %w", *e.JobID, webhookID, err)
		}
	}
	switch {
	case unmasked && json.Valid(e.Body):
		var buf bytes.Buffer
		if err := json.Indent(&buf, e.Body, "", "  "); err != nil {
			return nil, fmt.Errorf("indent payload of %q: %w", webhookID, err)
		}
		d.Payload = buf.Bytes()
	case unmasked:
		b, _ := json.Marshal(string(e.Body))
		d.Payload = b
	default:
		if masked, err := MaskPII(e.Body); err != nil {
			d.PayloadError = "the body is not JSON, so it cannot be masked; it is shown only unmasked"
		} else {
			d.Payload = masked
		}
	}
	return d, nil
}

// Replay enqueues a new job for a stored webhook (jobs.Replay). The ledger
// ignores what it has already applied, so replaying is always safe.
func (o *Ops) Replay(ctx context.Context, webhookID, endpoint string) (int64, error) {
	// Checked here too so the caller gets a clear error it can map to 409.
	e, err := o.getInbox(ctx, webhookID, endpoint)
	if err != nil {
		return 0, fmt.Errorf("replay: %w", err)
	}
	if !polar.Handled(e.EventType) {
		return 0, fmt.Errorf("replay %q (%q): %w", webhookID, e.EventType, ErrNotReplayable)
	}
	id, err := jobs.Replay(ctx, o.Pool, o.Client, webhookID, e.Endpoint())
	if errors.Is(err, inbox.ErrNotFound) { // deleted since the check above
		return 0, webhookNotFound(webhookID, endpoint)
	}
	return id, err
}

// getInbox is inbox.Get with its errors in the admin's kinds: an unknown
// id is not found, an id several endpoints stored (without one named) a
// conflict naming them, a malformed endpoint a bad request.
func (o *Ops) getInbox(ctx context.Context, webhookID, endpoint string) (*inbox.Event, error) {
	if endpoint != "" {
		if _, _, err := inbox.ParseEndpoint(endpoint); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
	}
	e, err := inbox.Get(ctx, o.Pool, webhookID, endpoint)
	switch {
	case errors.Is(err, inbox.ErrNotFound):
		return nil, webhookNotFound(webhookID, endpoint)
	case errors.Is(err, inbox.ErrAmbiguous):
		return nil, fmt.Errorf("%w: %w", ErrConflict, err)
	}
	return e, err
}

func webhookNotFound(webhookID, endpoint string) error {
	if endpoint != "" {
		return errorf(ErrNotFound, "webhook %q not found in the inbox at endpoint %s", webhookID, endpoint)
	}
	return errorf(ErrNotFound, "webhook %q not found in the inbox", webhookID)
}
