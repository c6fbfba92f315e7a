package jobs

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/products"
)

// productRefused counts a product event refused for good, next to the
// products package's results, in relay_product_events_total.
const productRefused = "refused"

func isProductEvent(eventType string) bool {
	return eventType == "product.created" || eventType == "product.updated"
}

// productVersion is the version of a storefront product a Polar product
// event carries.
func productVersion(p polar.Product, scope *ledger.Scope) products.Version {
	v := products.Version{
		ExternalProductID: p.ID,
		Name:              p.Name,
		Description:       p.Description,
		Archived:          p.IsArchived,
		ModifiedAt:        p.Version(),
		Scope:             scope,
	}
	if ref, ok := p.Metadata.StorefrontProduct(); ok {
		v.ProductID, v.WorkspaceID = ref.ProductID, ref.WorkspaceID
	}
	if price, ok := p.FixedPrice(); ok {
		v.Price = &products.Price{ExternalID: price.ID, Amount: *price.PriceAmount, Currency: price.Currency}
	}
	return v
}

// applyProduct applies a product event to its storefront product. A product
// relay finds no storefront product for (the merchant made it by hand at
// Polar) leaves its inbox row ignored, with the reason: no retry can find one.
func applyProduct(ctx context.Context, tx pgx.Tx, v products.Version) (applied, error) {
	out, err := products.Apply(ctx, tx, v)
	if err != nil {
		return applied{}, err
	}
	res := applied{result: ResultNoop, note: out.Note(), product: out.Result}
	switch out.Result {
	case products.Applied:
		res.result = ResultOK
	case products.Unknown:
		res.ignored = true
	}
	return res, nil
}

// ProductVersionEvent returns the inbox event that applies one version of a
// Polar product read from Polar's API (an item of GET /v1/products/) through
// the path a webhook takes: commit it as the receiver does
// (receiver.Commit: the inbox row and its polar_event job in one
// transaction) and the event worker applies it, with the same matching,
// ordering and boundaries as a product.updated delivery. workspaceID and
// environment name the connection the product was read with (both empty for
// the platform's). Its webhook id is made of the product's id and version,
// so a pass that reads the same version again stores nothing new.
func ProductVersionEvent(product json.RawMessage, workspaceID, environment string, now time.Time) (*inbox.Event, error) {
	p, err := polar.ParseProduct(product)
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(struct {
		Type      string          `json:"type"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}{"product.updated", now.UTC(), product})
	if err != nil {
		return nil, fmt.Errorf("product %s: %w", p.ID, err)
	}
	ts := now.UTC()
	return &inbox.Event{
		WebhookID:        "reconcile_product_" + p.ID + "_" + p.Version().UTC().Format(time.RFC3339Nano),
		WebhookTimestamp: ts,
		EventTimestamp:   &ts,
		EventType:        "product.updated",
		Status:           inbox.StatusPending,
		Body:             body,
		WorkspaceID:      workspaceID,
		Environment:      environment,
	}, nil
}
