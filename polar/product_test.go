package polar_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/relayhq/relay/polar"
)

func productOf(t *testing.T, fixture string) polar.Product {
	t.Helper()
	body, err := os.ReadFile(filepath.Join("..", "testdata", "events", fixture))
	if err != nil {
		t.Fatal(err)
	}
	env, err := polar.ParseEnvelope(body)
	if err != nil {
		t.Fatal(err)
	}
	p, err := polar.ParseProduct(env.Data)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseProductFixtures(t *testing.T) {
	for _, c := range []struct {
		fixture  string
		version  time.Time
		amount   int64
		archived bool
	}{
		{"product.created.json", time.Date(2026, 10, 1, 8, 0, 0, 0, time.UTC), 4950, false}, // modified_at null: created_at
		{"product.updated.json", time.Date(2026, 11, 2, 9, 30, 0, 0, time.UTC), 5950, false},
		{"product.updated.archived.json", time.Date(2026, 11, 3, 12, 0, 0, 0, time.UTC), 4950, true},
	} {
		p := productOf(t, c.fixture)
		price, ok := p.FixedPrice()
		ref, isStorefront := p.Metadata.StorefrontProduct()
		switch {
		case !p.Version().Equal(c.version):
			t.Errorf("%s: version %s, want %s", c.fixture, p.Version(), c.version)
		case !ok || *price.PriceAmount != c.amount || price.Currency != "usd" || price.ID != "c1d2e3f4-a5b6-4c7d-8e9f-a0b1c2d3e4f5":
			t.Errorf("%s: fixed price %+v (%v), want %d usd", c.fixture, price, ok, c.amount)
		case p.IsArchived != c.archived:
			t.Errorf("%s: archived %v, want %v", c.fixture, p.IsArchived, c.archived)
		case !isStorefront || ref.ProductID != "00000000-0000-4000-8000-0000000000a1" || ref.WorkspaceID != "00000000-0000-4000-8000-000000000001":
			t.Errorf("%s: storefront ref %+v (%v)", c.fixture, ref, isStorefront)
		}
	}
}

func TestProductFixedPriceAndKinds(t *testing.T) {
	data := []byte(`{"id":"p1","created_at":"2026-10-01T08:00:00Z","modified_at":null,"name":"Mug",
		"metadata":{"kind":"inventory_listing","rowId":"r1","wsId":"w1"},
		"prices":[
			{"id":"custom","amount_type":"custom","price_currency":"usd","is_archived":false,"minimum_amount":100},
			{"id":"old","amount_type":"fixed","price_currency":"usd","is_archived":true,"price_amount":100},
			{"id":"now","amount_type":"fixed","price_currency":"eur","is_archived":false,"price_amount":250}]}`)
	p, err := polar.ParseProduct(data)
	if err != nil {
		t.Fatal(err)
	}
	if price, ok := p.FixedPrice(); !ok || price.ID != "now" || *price.PriceAmount != 250 {
		t.Errorf("fixed price = %+v (%v), want the first fixed one not archived (now, 250)", price, ok)
	}
	if ref, ok := p.Metadata.StorefrontProduct(); !ok || ref.ProductID != "r1" {
		t.Errorf("inventory_listing: ref %+v (%v), want r1", ref, ok)
	}
	var noFixed map[string]any
	if err := json.Unmarshal(data, &noFixed); err != nil {
		t.Fatal(err)
	}
	noFixed["prices"] = noFixed["prices"].([]any)[:2]
	noFixed["metadata"] = map[string]any{"kind": "inventory_checkout", "rowId": "r1"}
	b, _ := json.Marshal(noFixed)
	if p, err = polar.ParseProduct(b); err != nil {
		t.Fatal(err)
	}
	if price, ok := p.FixedPrice(); ok {
		t.Errorf("custom and archived prices only: fixed price %+v, want none", price)
	}
	if _, ok := p.Metadata.StorefrontProduct(); ok {
		t.Error("a checkout's kind was taken for a storefront product")
	}
	for name, bad := range map[string]string{
		"no id":             `{"created_at":"2026-10-01T08:00:00Z"}`,
		"no time":           `{"id":"p1"}`,
		"negative price":    `{"id":"p1","created_at":"2026-10-01T08:00:00Z","prices":[{"id":"x","amount_type":"fixed","price_currency":"usd","price_amount":-1}]}`,
		"price no currency": `{"id":"p1","created_at":"2026-10-01T08:00:00Z","prices":[{"id":"x","amount_type":"fixed","price_amount":1}]}`,
		"not an object":     `[]`,
	} {
		if _, err := polar.ParseProduct([]byte(bad)); err == nil {
			t.Errorf("%s: parsed, want an error", name)
		}
	}
}
