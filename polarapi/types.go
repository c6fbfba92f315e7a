package polarapi

import (
	"encoding/json"
	"time"
)

// The shapes below are the fields relay reads of Polar's objects (checked
// against Polar's SDK schemas: internal/polarfake/testdata/api). Raw keeps
// each object as Polar sent it: an order from the API has the fields of an
// order webhook's data, so reconciliation can hand it on unchanged.

// Order is one of GET /v1/orders/.
type Order struct {
	ID                string         `json:"id"`
	CreatedAt         time.Time      `json:"created_at"`
	ModifiedAt        *time.Time     `json:"modified_at"`
	Status            string         `json:"status"`
	Paid              bool           `json:"paid"`
	SubtotalAmount    int64          `json:"subtotal_amount"`
	DiscountAmount    int64          `json:"discount_amount"`
	NetAmount         int64          `json:"net_amount"`
	TaxAmount         int64          `json:"tax_amount"`
	TotalAmount       int64          `json:"total_amount"`
	RefundedAmount    int64          `json:"refunded_amount"`
	RefundedTaxAmount int64          `json:"refunded_tax_amount"`
	Currency          string         `json:"currency"`
	BillingReason     string         `json:"billing_reason"`
	CustomerID        string         `json:"customer_id"`
	ProductID         *string        `json:"product_id"`
	SubscriptionID    *string        `json:"subscription_id"`
	CheckoutID        *string        `json:"checkout_id"`
	Metadata          map[string]any `json:"metadata"`

	Raw json.RawMessage `json:"-"`
}

// Refund is one of GET /v1/refunds/.
type Refund struct {
	ID             string         `json:"id"`
	CreatedAt      time.Time      `json:"created_at"`
	ModifiedAt     *time.Time     `json:"modified_at"`
	Status         string         `json:"status"` // pending, succeeded, failed, canceled
	Reason         string         `json:"reason"`
	Amount         int64          `json:"amount"`
	TaxAmount      int64          `json:"tax_amount"`
	Currency       string         `json:"currency"`
	OrganizationID string         `json:"organization_id"`
	OrderID        *string        `json:"order_id"`
	SubscriptionID *string        `json:"subscription_id"`
	CustomerID     string         `json:"customer_id"`
	RevokeBenefits bool           `json:"revoke_benefits"`
	Metadata       map[string]any `json:"metadata"`

	Raw json.RawMessage `json:"-"`
}

// Product is one of GET /v1/products/.
type Product struct {
	ID             string         `json:"id"`
	CreatedAt      time.Time      `json:"created_at"`
	ModifiedAt     *time.Time     `json:"modified_at"`
	Name           string         `json:"name"`
	Description    *string        `json:"description"`
	Visibility     string         `json:"visibility"`
	IsRecurring    bool           `json:"is_recurring"`
	IsArchived     bool           `json:"is_archived"`
	OrganizationID string         `json:"organization_id"`
	Metadata       map[string]any `json:"metadata"`
	Prices         []Price        `json:"prices"`

	Raw json.RawMessage `json:"-"`
}

// Price is one of a product's prices. Which amounts are set depends on
// AmountType: fixed has PriceAmount, custom the minimum, maximum and preset.
type Price struct {
	ID            string `json:"id"`
	Source        string `json:"source"`
	AmountType    string `json:"amount_type"`
	PriceCurrency string `json:"price_currency"`
	IsArchived    bool   `json:"is_archived"`
	ProductID     string `json:"product_id"`
	PriceAmount   *int64 `json:"price_amount,omitempty"`
	MinimumAmount *int64 `json:"minimum_amount,omitempty"`
	MaximumAmount *int64 `json:"maximum_amount,omitempty"`
	PresetAmount  *int64 `json:"preset_amount,omitempty"`
}

// WebhookEndpoint is one of GET /v1/webhooks/endpoints. Secret signs its
// deliveries: it is a secret like a token and is never logged.
type WebhookEndpoint struct {
	ID             string     `json:"id"`
	CreatedAt      time.Time  `json:"created_at"`
	ModifiedAt     *time.Time `json:"modified_at"`
	URL            string     `json:"url"`
	Name           *string    `json:"name"`
	Format         string     `json:"format"`
	Secret         string     `json:"secret"`
	OrganizationID string     `json:"organization_id"`
	Events         []string   `json:"events"`
	Enabled        bool       `json:"enabled"`
}

// WebhookEndpointCreate is the body of POST /v1/webhooks/endpoints.
type WebhookEndpointCreate struct {
	URL    string   `json:"url"`
	Format string   `json:"format"`
	Events []string `json:"events"`
	Name   *string  `json:"name,omitempty"`
}

// WebhookEndpointUpdate is the body of PATCH /v1/webhooks/endpoints/{id}:
// nil fields are left as they are.
type WebhookEndpointUpdate struct {
	URL     *string  `json:"url,omitempty"`
	Format  *string  `json:"format,omitempty"`
	Events  []string `json:"events,omitempty"`
	Name    *string  `json:"name,omitempty"`
	Enabled *bool    `json:"enabled,omitempty"`
}

// Pagination is what every list answers with its items.
type Pagination struct {
	TotalCount int `json:"total_count"`
	MaxPage    int `json:"max_page"`
}

// Page is one answer of a list endpoint.
type Page[T any] struct {
	Items      []T        `json:"items"`
	Pagination Pagination `json:"pagination"`
}

// RelayEvents are the event types relay acts on, those its endpoint at
// Polar subscribes to: orders, checkouts and refunds for sales, products
// for the catalogue.
var RelayEvents = []string{
	"checkout.created", "checkout.expired", "checkout.updated",
	"order.created", "order.paid", "order.refunded", "order.updated",
	"product.created", "product.updated",
	"refund.created", "refund.updated",
}
