package console

import (
	"fmt"
	"strings"

	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/products"
)

// describe says in words what a delivery did to the ledger, or why it did
// nothing yet, and whether an operator should look at it. It reads only
// what relay stored: the inbox row's status and note, its job, its sale.
func describe(d *Delivery) (effect string, attention bool) {
	switch d.Status {
	case "ignored":
		if d.Note != "" { // its job found nothing to apply to: an unknown product
			return "ignored: " + d.Note, false
		}
		return "ignored: relay does not act on " + d.EventType, false
	case "invalid":
		return "invalid: not a readable event, nothing done", false
	case "refused":
		return "refused: " + reason(strings.TrimPrefix(d.Note, "refused: ")), true
	}
	if j := d.Job; j != nil && d.Status == "pending" {
		switch j.State {
		case "cancelled":
			if j.LastError == "" {
				return "cancelled by an operator, not applied", true
			}
			return "refused: " + reason(j.LastError), true
		case "discarded":
			return fmt.Sprintf("dead after %d %s: %s", j.Attempt, plural(j.Attempt, "attempt", "attempts"), reason(j.LastError)), true
		case "retryable":
			return fmt.Sprintf("waiting, attempt %d of %d: %s", j.Attempt, j.MaxAttempts, reason(j.LastError)), false
		case "running":
			return "processing", false
		case "available", "scheduled", "pending":
			if j.Attempt > 0 {
				return "queued again after attempt " + fmt.Sprint(j.Attempt), false
			}
			return "queued", false
		}
	}
	if d.Status == "pending" {
		return "queued", false
	}
	return processed(d), false
}

// processed describes a processed delivery by the outcome its job noted.
func processed(d *Delivery) string {
	s := d.Sale
	amount, reversed := "", ""
	if s != nil && s.Booking != nil {
		amount = Money(s.Booking.Amount, s.Booking.Currency)
		if r := s.Reversed(); r > 0 {
			reversed = ", " + Money(r, s.Booking.Currency) + " reversed"
		}
	}
	note, reversal, _ := strings.Cut(d.Note, "; ") // "already_booked; reversed 1650 USD"
	if reversal != "" && note == ledger.AlreadyBooked {
		if amount == "" {
			return "refund: " + reversal
		}
		return "refund: " + Money(s.Reversed(), s.Booking.Currency) + " reversed of " + amount
	}
	switch note {
	case ledger.Booked:
		if amount == "" {
			return "session completed, booked"
		}
		return "session completed, " + amount + " booked" + reversed
	case ledger.AlreadyBooked:
		if amount == "" {
			return "already booked, nothing new"
		}
		return "already booked (" + amount + reversed + "), nothing new"
	case ledger.NotPaid:
		status := ""
		if s != nil && s.PolarStatus != "" {
			status = " (" + s.PolarStatus + ")"
		}
		return "order recorded" + status + ", not paid: nothing booked"
	case ledger.SkippedNoWallet, ledger.SkippedWalletWorkspace, ledger.SkippedCurrency:
		if amount != "" { // its pending booking has posted since
			return "session completed, " + amount + " booked from pending" + reversed
		}
		return "session completed, pending: " + map[string]string{
			ledger.SkippedNoWallet:        "no default wallet",
			ledger.SkippedWalletWorkspace: "the default wallet is another workspace's",
			ledger.SkippedCurrency:        "the wallet's currency differs",
		}[note]
	case "":
		if s != nil && s.Booking != nil && len(s.Reversals) > 0 {
			return "refund: " + Money(s.Reversed(), s.Booking.Currency) + " reversed of " + Money(s.Booking.Amount, s.Booking.Currency)
		}
		return "processed, nothing to change"
	}
	return d.Note // the worker's own short words: "not a storefront sale", "session expired", ...
}

// reason shortens a job's error to what an operator acts on.
func reason(err string) string {
	switch {
	case err == "":
		return "no error recorded"
	case strings.Contains(err, ledger.ErrWorkspaceMismatch.Error()):
		return "workspace mismatch"
	case strings.Contains(err, ledger.ErrForeignWorkspace.Error()):
		return "another workspace's session than the verifying endpoint's"
	case strings.Contains(err, ledger.ErrForeignEnvironment.Error()):
		return "a session of another environment (sandbox/production) than the verifying secret's"
	case strings.Contains(err, products.ErrForeignWorkspace.Error()):
		return "another workspace's product than the verifying endpoint's"
	case strings.Contains(err, products.ErrForeignEnvironment.Error()):
		return "a product of another environment (sandbox/production) than the verifying secret's"
	case strings.Contains(err, products.ErrConflict.Error()):
		return "storefront product and Polar product do not match"
	case strings.Contains(err, ledger.ErrOrderConflict.Error()):
		return "order and session do not match"
	case strings.Contains(err, ledger.ErrSessionNotFound.Error()):
		return "no checkout session"
	case strings.Contains(err, "malformed event"):
		return "malformed event"
	case strings.Contains(err, ledger.ErrInvalidInput.Error()):
		return "invalid data"
	}
	return text.Abbrev(strings.TrimPrefix(err, "process webhook "), 120)
}

// Money writes an amount in minor units with its currency's decimals:
// Money(4950, "usd") is "49.50 USD".
func Money(minor int64, currency string) string { return ledger.Money(minor, currency) }
