// Package jobs works the events the receiver stored: River job arguments and
// workers that translate Polar events into ledger calls.
package jobs

// EventArgs asks for one stored webhook to be processed. The body stays in
// the inbox; the job carries only what identifies it, known before the inbox
// row is written (jobs written before this version also carry an inbox_id,
// which nothing reads).
type EventArgs struct {
	WebhookID string `json:"webhook_id"`
	EventType string `json:"event_type"`
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
