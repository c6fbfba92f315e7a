package polarfake

import (
	"slices"
	"time"
)

// Order is what a test sets of an order; the rest of Polar's order object
// comes from testdata/api/orders.list.json.
type Order struct {
	ID             string         // a new UUID when ""
	CreatedAt      time.Time      // the fake's now when zero
	Status         string         // paid when ""
	TotalAmount    int64          // 4950 when 0
	TaxAmount      int64          // included in TotalAmount
	RefundedAmount int64          //
	Currency       string         // usd when ""
	CheckoutID     string         // Polar's checkout id; null when ""
	Metadata       map[string]any // the fixture's storefront metadata when nil
}

// AddOrder adds an order to organization and returns Polar's JSON of it.
func (f *Fake) AddOrder(organization string, o Order) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	return clone(f.addOrderLocked(organization, o))
}

// AddOrders adds several orders at once (under one lock: fast for
// thousands).
func (f *Fake) AddOrders(organization string, orders ...Order) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range orders {
		f.addOrderLocked(organization, o)
	}
}

func (f *Fake) addOrderLocked(organization string, o Order) map[string]any {
	or := f.mustOrg(organization)
	m := fromTemplate(orderTemplate)
	if o.ID == "" {
		o.ID = newUUID()
	}
	if o.CreatedAt.IsZero() {
		o.CreatedAt = f.now()
	}
	if o.Status == "" {
		o.Status = "paid"
	}
	if o.TotalAmount == 0 {
		o.TotalAmount, o.TaxAmount = 4950, 450
	}
	if o.Currency == "" {
		o.Currency = "usd"
	}
	net := o.TotalAmount - o.TaxAmount
	m["id"] = o.ID
	m["created_at"] = ts(o.CreatedAt)
	m["modified_at"] = ts(o.CreatedAt)
	m["status"] = o.Status
	m["paid"] = o.Status == "paid" || o.Status == "refunded" || o.Status == "partially_refunded"
	m["subtotal_amount"], m["discount_amount"], m["net_amount"] = net, 0, net
	m["tax_amount"], m["total_amount"] = o.TaxAmount, o.TotalAmount
	m["refunded_amount"] = o.RefundedAmount
	m["refunded_tax_amount"] = 0
	m["refundable_amount"], m["refundable_tax_amount"] = max(net-o.RefundedAmount, 0), o.TaxAmount
	m["currency"] = o.Currency
	if o.CheckoutID != "" {
		m["checkout_id"] = o.CheckoutID
	} else {
		m["checkout_id"] = nil
	}
	if o.Metadata != nil {
		m["metadata"] = o.Metadata
	}
	for _, sub := range []string{"customer", "product"} {
		if s, ok := m[sub].(map[string]any); ok {
			s["organization_id"] = organization
		}
	}
	or.orders = append(or.orders, m)
	return m
}

// Refund is what a test sets of a refund.
type Refund struct {
	ID        string
	CreatedAt time.Time // the fake's now when zero
	OrderID   string
	Amount    int64  // 1500 when 0
	TaxAmount int64  //
	Currency  string // usd when ""
	Status    string // succeeded when ""
}

// AddRefund adds a refund to organization and returns Polar's JSON of it.
// The order it names is not changed: set its status and refunded amount
// with SetOrder, as Polar's order.updated would show them.
func (f *Fake) AddRefund(organization string, r Refund) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	or := f.mustOrg(organization)
	m := fromTemplate(refundTemplate)
	if r.ID == "" {
		r.ID = newUUID()
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = f.now()
	}
	if r.Amount == 0 {
		r.Amount = 1500
	}
	if r.Currency == "" {
		r.Currency = "usd"
	}
	if r.Status == "" {
		r.Status = "succeeded"
	}
	m["id"], m["created_at"], m["status"] = r.ID, ts(r.CreatedAt), r.Status
	m["amount"], m["tax_amount"], m["currency"] = r.Amount, r.TaxAmount, r.Currency
	m["order_id"], m["organization_id"] = r.OrderID, organization
	or.refunds = append(or.refunds, m)
	return clone(m)
}

// SetOrder changes fields of a stored order (e.g. status,
// refunded_amount), as Polar does when a refund is made.
func (f *Fake) SetOrder(organization, id string, fields map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.mustOrg(organization).orders {
		if m["id"] == id {
			for k, v := range fields {
				m[k] = v
			}
			m["modified_at"] = ts(f.now())
			return
		}
	}
	panic("polarfake: no order " + id)
}

// Product is what a test sets of a product with one fixed price.
type Product struct {
	ID          string
	CreatedAt   time.Time // the fake's now when zero
	Name        string    // the fixture's when ""
	PriceAmount int64     // 4950 when 0
	Currency    string    // usd when ""
	IsArchived  bool
	Metadata    map[string]any // the fixture's when nil
}

// AddProduct adds a product to organization and returns Polar's JSON of it.
func (f *Fake) AddProduct(organization string, p Product) map[string]any {
	f.mu.Lock()
	defer f.mu.Unlock()
	or := f.mustOrg(organization)
	m := fromTemplate(productTemplate)
	if p.ID == "" {
		p.ID = newUUID()
	}
	if p.CreatedAt.IsZero() {
		p.CreatedAt = f.now()
	}
	if p.PriceAmount == 0 {
		p.PriceAmount = 4950
	}
	if p.Currency == "" {
		p.Currency = "usd"
	}
	m["id"], m["created_at"], m["modified_at"] = p.ID, ts(p.CreatedAt), ts(p.CreatedAt)
	if p.Name != "" {
		m["name"] = p.Name
	}
	m["is_archived"], m["organization_id"] = p.IsArchived, organization
	if p.Metadata != nil {
		m["metadata"] = p.Metadata
	}
	if prices, ok := m["prices"].([]any); ok && len(prices) > 0 {
		pr := prices[0].(map[string]any)
		pr["id"], pr["product_id"] = newUUID(), p.ID
		pr["price_amount"], pr["price_currency"] = p.PriceAmount, p.Currency
	}
	or.products = append(or.products, m)
	return clone(m)
}

// Endpoint is a webhook endpoint as the fake holds it.
type Endpoint struct {
	ID      string
	URL     string
	Format  string
	Events  []string
	Enabled bool
	Secret  string
}

// AddEndpoint registers a webhook endpoint as a user would in Polar's
// dashboard; its secret is new (whsec_ and 43 alphanumerics).
func (f *Fake) AddEndpoint(organization, url string, events ...string) Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	m := f.addEndpointLocked(organization, url, "raw", events, nil)
	return endpointOf(m)
}

func (f *Fake) addEndpointLocked(organization, url, format string, events []string, name any) map[string]any {
	or := f.mustOrg(organization)
	m := fromTemplate(endpointTemplate)
	m["id"], m["created_at"], m["modified_at"] = newUUID(), ts(f.now()), nil
	m["url"], m["format"], m["name"] = url, format, name
	m["secret"] = "whsec_" + randomAlnum(43)
	m["organization_id"] = organization
	evs := make([]any, len(events))
	for i, e := range events {
		evs[i] = e
	}
	m["events"], m["enabled"] = evs, true
	or.endpoints = append(or.endpoints, m)
	return m
}

// Endpoints returns organization's webhook endpoints.
func (f *Fake) Endpoints(organization string) []Endpoint {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []Endpoint
	for _, m := range f.mustOrg(organization).endpoints {
		out = append(out, endpointOf(m))
	}
	return out
}

// DisableEndpoint disables an endpoint, as Polar does after 10
// consecutive failed events.
func (f *Fake) DisableEndpoint(organization, id string) { f.setEnabled(organization, id, false) }

func (f *Fake) setEnabled(organization, id string, enabled bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, m := range f.mustOrg(organization).endpoints {
		if m["id"] == id {
			m["enabled"] = enabled
			return
		}
	}
	panic("polarfake: no endpoint " + id)
}

// DeleteEndpoint removes an endpoint, as a user might in the dashboard.
func (f *Fake) DeleteEndpoint(organization, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	or := f.mustOrg(organization)
	or.endpoints = slices.DeleteFunc(or.endpoints, func(m map[string]any) bool { return m["id"] == id })
}

func endpointOf(m map[string]any) Endpoint {
	e := Endpoint{ID: m["id"].(string), URL: m["url"].(string), Format: m["format"].(string),
		Enabled: m["enabled"].(bool), Secret: m["secret"].(string)}
	for _, ev := range m["events"].([]any) {
		e.Events = append(e.Events, ev.(string))
	}
	return e
}

var (
	orderTemplate    = fixture("orders.list.json")
	refundTemplate   = fixture("refunds.list.json")
	productTemplate  = fixture("products.list.json")
	endpointTemplate = fixture("webhook_endpoints.list.json")
)

// OrderIDs returns the ids of organization's orders whose metadata kind is
// kind ("" for every order), as a test's ground truth.
func (f *Fake) OrderIDs(organization, kind string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for _, m := range f.mustOrg(organization).orders {
		if md, _ := m["metadata"].(map[string]any); kind == "" || md["kind"] == kind {
			ids = append(ids, m["id"].(string))
		}
	}
	return ids
}
