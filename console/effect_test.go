package console

import (
	"testing"
	"time"
)

func TestMoney(t *testing.T) {
	for _, c := range []struct {
		minor    int64
		currency string
		want     string
	}{
		{4950, "usd", "49.50 USD"},
		{5, "EUR", "0.05 EUR"},
		{-1000, "usd", "-10.00 USD"},
		{4950, "JPY", "4950 JPY"},
		{12345, "KWD", "12.345 KWD"},
		{-9223372036854775808, "USD", "-92233720368547758.08 USD"},
	} {
		if got := Money(c.minor, c.currency); got != c.want {
			t.Errorf("Money(%d, %q) = %q, want %q", c.minor, c.currency, got, c.want)
		}
	}
}

func TestDescribe(t *testing.T) {
	done := time.Now()
	sale := &Sale{Booking: &Booking{Amount: 4950, Currency: "USD"}}
	refunded := &Sale{Booking: &Booking{Amount: 4950, Currency: "USD"}, Reversals: []Booking{{Amount: -1000}, {Amount: -500}}}
	for _, c := range []struct {
		name      string
		d         Delivery
		want      string
		attention bool
	}{
		{"booked", Delivery{Status: "processed", Note: "booked", Sale: sale}, "session completed, 49.50 USD booked", false},
		{"already booked, refunded", Delivery{Status: "processed", Note: "already_booked", Sale: refunded}, "already booked (49.50 USD, 15.00 USD reversed), nothing new", false},
		{"refund", Delivery{Status: "processed", Sale: refunded}, "refund: 15.00 USD reversed of 49.50 USD", false},
		{"no wallet", Delivery{Status: "processed", Note: "skipped_no_wallet"}, "session completed, pending: no default wallet", false},
		{"not paid", Delivery{Status: "processed", Note: "not_paid", Sale: &Sale{PolarStatus: "pending"}}, "order recorded (pending), not paid: nothing booked", false},
		{"worker's note", Delivery{Status: "processed", Note: "not a storefront sale"}, "not a storefront sale", false},
		{"ignored", Delivery{Status: "ignored", EventType: "customer.created"}, "ignored: relay does not act on customer.created", false},
		{"unknown product", Delivery{Status: "ignored", EventType: "product.updated", Note: "no storefront product linked to Polar product p1, and its metadata names none"},
			"ignored: no storefront product linked to Polar product p1, and its metadata names none", false},
		{"product applied", Delivery{Status: "processed", EventType: "product.updated", Note: "price 49.50 → 59.50 USD, archived"}, "price 49.50 → 59.50 USD, archived", false},
		{"refused", Delivery{Status: "pending", Job: &Job{State: "cancelled", FinalizedAt: &done,
			LastError: "process webhook msg_1: JobCancelError: ledger: reference names another workspace than the session's"}}, "refused: workspace mismatch", true},
		{"cancelled by hand", Delivery{Status: "pending", Job: &Job{State: "cancelled", FinalizedAt: &done}}, "cancelled by an operator, not applied", true},
		{"dead", Delivery{Status: "pending", Job: &Job{State: "discarded", Attempt: 12,
			LastError: "process webhook msg_1: no checkout session yet for this storefront order (attempt 12 of 12): ledger: checkout session not found"}}, "dead after 12 attempts: no checkout session", true},
		{"waiting", Delivery{Status: "pending", Job: &Job{State: "retryable", Attempt: 2, MaxAttempts: 12,
			LastError: "ledger: checkout session not found"}}, "waiting, attempt 2 of 12: no checkout session", false},
		{"retried", Delivery{Status: "pending", Job: &Job{State: "available", Attempt: 12}}, "queued again after attempt 12", false},
		{"queued", Delivery{Status: "pending"}, "queued", false},
	} {
		got, attention := describe(&c.d)
		if got != c.want || attention != c.attention {
			t.Errorf("%s: describe = %q, %v; want %q, %v", c.name, got, attention, c.want, c.attention)
		}
	}
}
