// Package jobs works the events the receiver stored: River job arguments and
// workers that translate Polar events into ledger calls.
package jobs

import (
	"encoding/json"

	"github.com/relayhq/relay/inbox"
)

// EventArgs asks for one stored webhook to be processed. The body stays in
// the inbox; the job carries only what identifies it, known before the inbox
// row is written: the webhook id and the endpoint that verified it (jobs
// written before this version also carry an inbox_id, which nothing reads).
type EventArgs struct {
	WebhookID string `json:"webhook_id"`
	EventType string `json:"event_type"`
	// WorkspaceID and Environment name the workspace endpoint; both empty
	// for the platform's.
	WorkspaceID string `json:"workspace_id"`
	Environment string `json:"environment"`
}

// MarshalJSON writes the platform's endpoint as nulls, as the inbox's
// columns hold it, so that a row's key in JSON (inbox.JobOf) matches its
// job's arguments exactly, alone or in a batch.
func (a EventArgs) MarshalJSON() ([]byte, error) {
	type plain EventArgs
	if a.WorkspaceID != "" {
		return json.Marshal(plain(a))
	}
	return json.Marshal(struct {
		WebhookID   string  `json:"webhook_id"`
		EventType   string  `json:"event_type"`
		WorkspaceID *string `json:"workspace_id"`
		Environment *string `json:"environment"`
	}{WebhookID: a.WebhookID, EventType: a.EventType})
}

// Key is the inbox key of the event.
func (a EventArgs) Key() inbox.Key {
	return inbox.Key{WebhookID: a.WebhookID, WorkspaceID: a.WorkspaceID, Environment: a.Environment}
}

// Kind is the River job kind of EventArgs.
func (EventArgs) Kind() string { return "polar_event" }

// EventBatchArgs asks for several stored webhooks, committed together by the
// receiver, to be processed in one transaction. Under load this spares River
// an insert, a fetch and a completion per event.
type EventBatchArgs struct {
	Events []EventArgs `json:"events"`
}

// Kind is the River job kind of EventBatchArgs.
func (EventBatchArgs) Kind() string { return "polar_event_batch" }
