package polar

// eventTypes are the event types Polar emits (SDK 1.0.1). Only these names
// become metric labels, so that a sender cannot mint label values.
var eventTypes = map[string]bool{
	"benefit.created": true, "benefit.updated": true,
	"benefit_grant.created": true, "benefit_grant.cycled": true, "benefit_grant.revoked": true, "benefit_grant.updated": true,
	"checkout.created": true, "checkout.expired": true, "checkout.updated": true,
	"customer.created": true, "customer.deleted": true, "customer.state_changed": true, "customer.updated": true,
	"customer_seat.assigned": true, "customer_seat.claimed": true, "customer_seat.revoked": true,
	"discount.created": true, "discount.deleted": true, "discount.updated": true,
	"member.created": true, "member.deleted": true, "member.updated": true,
	"order.created": true, "order.paid": true, "order.refunded": true, "order.updated": true,
	"organization.updated": true,
	"product.created":      true, "product.updated": true,
	"refund.created": true, "refund.updated": true,
	"subscription.active": true, "subscription.canceled": true, "subscription.created": true,
	"subscription.cycled": true, "subscription.migrated": true, "subscription.past_due": true,
	"subscription.paused": true, "subscription.resumed": true, "subscription.revoked": true,
	"subscription.uncanceled": true, "subscription.updated": true,
}

// EventTypes lists every known event type, for pre-declaring metric series.
func EventTypes() []string {
	out := make([]string, 0, len(eventTypes))
	for t := range eventTypes {
		out = append(out, t)
	}
	return out
}

// LabelFor returns a bounded metric label for an event type: its own name
// when Polar emits it, "other" for anything else.
func LabelFor(eventType string) string {
	if eventTypes[eventType] {
		return eventType
	}
	return "other"
}

// Handled reports whether relay acts on an event type (orders, checkouts,
// refunds, products). Every other event is stored but not processed.
func Handled(eventType string) bool {
	switch eventType {
	case "order.created", "order.updated", "order.paid", "order.refunded",
		"checkout.created", "checkout.updated", "checkout.expired",
		"refund.created", "refund.updated",
		"product.created", "product.updated":
		return true
	}
	return false
}
