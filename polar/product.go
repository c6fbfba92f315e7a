package polar

import (
	"encoding/json"
	"fmt"
	"time"
)

// Product is the part of Polar's product schema relay reads.
type Product struct {
	ID          string     `json:"id"`
	CreatedAt   time.Time  `json:"created_at"`
	ModifiedAt  *time.Time `json:"modified_at"` // null until the product is first modified
	Name        string     `json:"name"`
	Description *string    `json:"description"`
	IsArchived  bool       `json:"is_archived"`
	Metadata    Metadata   `json:"metadata"`
	Prices      []Price    `json:"prices"`
}

// Price is the part of Polar's product price schema relay reads. Only a
// fixed price has an amount.
type Price struct {
	ID          string `json:"id"`
	AmountType  string `json:"amount_type"`
	Currency    string `json:"price_currency"`
	IsArchived  bool   `json:"is_archived"`
	PriceAmount *int64 `json:"price_amount"`
}

// ProductRef is what the storefront put into a product's metadata.
type ProductRef struct {
	ProductID   string // the storefront product's id ("rowId")
	WorkspaceID string // "wsId"
}

// StorefrontProduct returns the storefront's ids when the metadata marks a
// storefront product (kind "inventory_product", or "inventory_listing" as
// the platform relay was modelled on spells it); ok is false otherwise.
func (m Metadata) StorefrontProduct() (ref ProductRef, ok bool) {
	switch m.String("kind") {
	case "inventory_product", "inventory_listing":
		return ProductRef{ProductID: m.String("rowId"), WorkspaceID: m.String("wsId")}, true
	}
	return ProductRef{}, false
}

// Version is when this version of the product was made: modified_at, or
// created_at for a product never modified. Versions of one product are
// ordered by it.
func (p Product) Version() time.Time {
	if p.ModifiedAt != nil && !p.ModifiedAt.IsZero() {
		return *p.ModifiedAt
	}
	return p.CreatedAt
}

// FixedPrice returns the product's first fixed price that is not archived;
// ok is false when it has none (custom, metered or seat-based prices only).
func (p Product) FixedPrice() (price Price, ok bool) {
	for _, pr := range p.Prices {
		if pr.AmountType == "fixed" && !pr.IsArchived && pr.PriceAmount != nil {
			return pr, true
		}
	}
	return Price{}, false
}

// ParseProduct reads a product event's data (or an item of GET
// /v1/products/) and checks what relay relies on.
func ParseProduct(data json.RawMessage) (Product, error) {
	var p Product
	if err := json.Unmarshal(data, &p); err != nil {
		return Product{}, fmt.Errorf("parse product: %w", err)
	}
	switch {
	case p.ID == "":
		return Product{}, fmt.Errorf("parse product: no id")
	case p.Version().IsZero():
		return Product{}, fmt.Errorf("parse product %s: neither modified_at nor created_at", p.ID)
	}
	if pr, ok := p.FixedPrice(); ok && (*pr.PriceAmount < 0 || pr.Currency == "") {
		return Product{}, fmt.Errorf("parse product %s: fixed price %s without a currency or with a negative amount", p.ID, pr.ID)
	}
	return p, nil
}
