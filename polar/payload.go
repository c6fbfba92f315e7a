package polar

import (
	"encoding/json"
	"fmt"
	"time"
)

// Metadata is the key-value metadata Polar copies from a checkout onto its
// order. Values are strings, integers or booleans.
type Metadata map[string]json.RawMessage

// String returns a metadata value that is a JSON string, else "".
func (m Metadata) String(key string) string {
	var s string
	if raw, ok := m[key]; ok && json.Unmarshal(raw, &s) == nil {
		return s
	}
	return ""
}

// StorefrontRef is what the storefront put into a checkout's metadata.
type StorefrontRef struct {
	CheckoutSessionID string
	WorkspaceID       string
}

// Storefront returns the storefront's ids when the metadata marks a storefront
// sale (kind "inventory_checkout"); ok is false for anything else.
func (m Metadata) Storefront() (ref StorefrontRef, ok bool) {
	if m.String("kind") != "inventory_checkout" {
		return StorefrontRef{}, false
	}
	return StorefrontRef{CheckoutSessionID: m.String("checkoutId"), WorkspaceID: m.String("wsId")}, true
}

// Order is the part of Polar's order schema relay reads.
type Order struct {
	ID                string    `json:"id"`
	CreatedAt         time.Time `json:"created_at"`
	Status            string    `json:"status"`
	Paid              bool      `json:"paid"`
	TotalAmount       int64     `json:"total_amount"`
	RefundedAmount    int64     `json:"refunded_amount"`
	RefundedTaxAmount int64     `json:"refunded_tax_amount"`
	Currency          string    `json:"currency"`
	CheckoutID        *string   `json:"checkout_id"`
	Metadata          Metadata  `json:"metadata"`
}

// RefundedTotal is the cumulative refunded amount, tax included, in the
// order's minor units.
func (o Order) RefundedTotal() int64 { return o.RefundedAmount + o.RefundedTaxAmount }

// Checkout is the part of Polar's checkout schema relay reads.
type Checkout struct {
	ID       string   `json:"id"`
	Status   string   `json:"status"`
	Metadata Metadata `json:"metadata"`
}

// Refund is the part of Polar's refund schema relay reads.
type Refund struct {
	ID        string `json:"id"`
	Status    string `json:"status"`
	OrderID   string `json:"order_id"`
	Amount    int64  `json:"amount"`
	TaxAmount int64  `json:"tax_amount"`
	Currency  string `json:"currency"`
}

// ParseOrder reads an order event's data and checks what relay relies on.
func ParseOrder(data json.RawMessage) (Order, error) {
	var o Order
	if err := json.Unmarshal(data, &o); err != nil {
		return Order{}, fmt.Errorf("parse order: %w", err)
	}
	switch {
	case o.ID == "":
		return Order{}, fmt.Errorf("parse order: no id")
	case o.TotalAmount < 0 || o.RefundedAmount < 0 || o.RefundedTaxAmount < 0:
		return Order{}, fmt.Errorf("parse order %s: negative amount", o.ID)
	case o.RefundedTotal() < 0: // overflowed
		return Order{}, fmt.Errorf("parse order %s: refunded total overflows", o.ID)
	}
	return o, nil
}

// ParseCheckout reads a checkout event's data.
func ParseCheckout(data json.RawMessage) (Checkout, error) {
	var c Checkout
	if err := json.Unmarshal(data, &c); err != nil {
		return Checkout{}, fmt.Errorf("parse checkout: %w", err)
	}
	if c.ID == "" {
		return Checkout{}, fmt.Errorf("parse checkout: no id")
	}
	return c, nil
}

// ParseRefund reads a refund event's data.
func ParseRefund(data json.RawMessage) (Refund, error) {
	var r Refund
	if err := json.Unmarshal(data, &r); err != nil {
		return Refund{}, fmt.Errorf("parse refund: %w", err)
	}
	switch {
	case r.ID == "" || r.OrderID == "":
		return Refund{}, fmt.Errorf("parse refund: no id or order id")
	case r.Amount < 0 || r.TaxAmount < 0 || r.Amount+r.TaxAmount < 0:
		return Refund{}, fmt.Errorf("parse refund %s: negative or overflowing amount", r.ID)
	}
	return r, nil
}
