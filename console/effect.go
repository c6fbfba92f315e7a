package console

import (
	"fmt"
	"strings"

	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/ledger"
)

// describe says in words what a delivery did to the ledger, or why it did
// nothing yet, and whether an operator should look at it. It reads only
// what relay stored: the inbox row's status and note, its job, its sale.
func describe(d *Delivery) (effect string, attention bool) {
	switch d.Status {
	case "ignored":
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

// minorDigits are ISO 4217's currencies without two minor digits.
var minorDigits = map[string]int{
	"BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
	"PYG": 0, "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
	"BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}

// Money writes an amount in minor units with its currency's decimals:
// Money(4950, "usd") is "49.50 USD". Integer arithmetic only.
func Money(minor int64, currency string) string {
	currency = strings.ToUpper(currency)
	digits, ok := minorDigits[currency]
	if !ok {
		digits = 2
	}
	sign := ""
	u := uint64(minor)
	if minor < 0 {
		sign, u = "-", uint64(-minor) // -MinInt64 wraps to itself, which uint64 reads right
	}
	if digits == 0 {
		return fmt.Sprintf("%s%d %s", sign, u, currency)
	}
	div := uint64(1)
	for range digits {
		div *= 10
	}
	return fmt.Sprintf("%s%d.%0*d %s", sign, u/div, digits, u%div, currency)
}
