package console_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/relayhq/relay/internal/testkit"
)

// TestProductDeliveriesShowTheirEffect: a product event's delivery says in
// words what it changed, or why nothing, and its page shows the storefront
// product's Polar state.
func TestProductDeliveriesShowTheirEffect(t *testing.T) {
	s := startSystem(t, 3)
	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{})
	const polarID = "7e6d5c4b-3a29-4180-9f8e-7d6c5b4a3928"
	s.send(t, "msg_prod_created", testkit.ProductEvent(t, "product.created.json", shop.WS, shop.Product, polarID, nil))
	waitPage(t, s.admin.URL+"/admin/deliveries/msg_prod_created", "linked to Polar product "+polarID+", price 49.50 USD")
	s.send(t, "msg_prod_updated", testkit.ProductEvent(t, "product.updated.json", shop.WS, shop.Product, polarID, nil))
	s.send(t, "msg_prod_unknown", testkit.ProductEvent(t, "product.created.json", shop.WS, "", "prod_by_hand", nil))

	waitPage(t, s.admin.URL+"/admin/", "price 49.50 → 59.50 USD, renamed “Ceramic mug, large”",
		"ignored: no storefront product linked to Polar product prod_by_hand, and its metadata names none")
	page := waitPage(t, s.admin.URL+"/admin/deliveries/msg_prod_updated", `id="product"`)
	for _, want := range []string{"Ceramic mug, large", "59.50 USD", "<code>" + polarID + "</code>", "2026-11-02 09:30:00Z", "production"} {
		if !strings.Contains(page, want) {
			t.Errorf("the product event's page lacks %q", want)
		}
	}
	if strings.Contains(page, "archived at Polar") {
		t.Error("the page says the product is archived; it is not")
	}
	s.send(t, "msg_prod_archived", testkit.ProductEvent(t, "product.updated.archived.json", shop.WS, shop.Product, polarID, nil))
	waitPage(t, s.admin.URL+"/admin/deliveries/msg_prod_archived", "archived at Polar", "renamed “Ceramic mug”, archived")
	if code, _, _ := do(t, http.MethodGet, s.admin.URL+"/admin/deliveries/msg_prod_unknown", nil, ""); code != http.StatusOK {
		t.Errorf("the unknown product's page: %d", code)
	}
}
