package polarapi

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// OrderQuery filters GET /v1/orders/.
type OrderQuery struct {
	CreatedAfter  time.Time         // zero: no bound
	CreatedBefore time.Time         // zero: no bound
	Metadata      map[string]string // e.g. {"kind": "inventory_checkout"}
	Status        string            // "" for every status
	Sorting       string            // created_at or -created_at (Polar's default)
	Page          int               // from 1; 1 when 0
	Limit         int               // at most 100; 100 when 0
}

func (q OrderQuery) values() url.Values {
	v := url.Values{}
	if !q.CreatedAfter.IsZero() {
		v.Set("created_after", q.CreatedAfter.UTC().Format(time.RFC3339Nano))
	}
	if !q.CreatedBefore.IsZero() {
		v.Set("created_before", q.CreatedBefore.UTC().Format(time.RFC3339Nano))
	}
	for k, val := range q.Metadata {
		v.Set("metadata["+k+"]", val)
	}
	if q.Status != "" {
		v.Set("status", q.Status)
	}
	if q.Sorting != "" {
		v.Set("sorting", q.Sorting)
	}
	setPage(v, q.Page, q.Limit)
	return v
}

func setPage(v url.Values, page, limit int) {
	v.Set("page", strconv.Itoa(max(page, 1)))
	if limit <= 0 {
		limit = PageLimit
	}
	v.Set("limit", strconv.Itoa(limit))
}

// The scopes each endpoint needs, named in ForbiddenError.
const (
	ScopeOrdersRead    = "orders:read"
	ScopeRefundsRead   = "refunds:read"
	ScopeProductsRead  = "products:read"
	ScopeWebhooksRead  = "webhooks:read"
	ScopeWebhooksWrite = "webhooks:write"
)

// rawPage decodes a page keeping each item's JSON.
type rawPage struct {
	Items      []json.RawMessage `json:"items"`
	Pagination Pagination        `json:"pagination"`
}

func decodeItems[T any](name string, p rawPage, raw func(*T, json.RawMessage)) (Page[T], error) {
	out := Page[T]{Items: make([]T, len(p.Items)), Pagination: p.Pagination}
	for i, b := range p.Items {
		if err := json.Unmarshal(b, &out.Items[i]); err != nil {
			return Page[T]{}, fmt.Errorf("polar %s: decode item %d: %w", name, i, err)
		}
		raw(&out.Items[i], b)
	}
	return out, nil
}

// ListOrders reads one page of orders.
func (c *Client) ListOrders(ctx context.Context, q OrderQuery) (Page[Order], error) {
	var p rawPage
	if err := c.do(ctx, call{name: "orders", scope: ScopeOrdersRead, method: http.MethodGet,
		path: "/v1/orders/", query: q.values(), idempotent: true}, &p); err != nil {
		return Page[Order]{}, err
	}
	return decodeItems("orders", p, func(o *Order, b json.RawMessage) { o.Raw = b })
}

// overlap is how far before the newest order of a window the next window
// starts: orders committed a little out of created_at order are read
// again rather than skipped; ids already read are dropped.
const overlap = 2 * time.Second

// Orders walks every order q selects, oldest first, each once, however
// orders arrive meanwhile. Polar's pages are offsets that shift as orders
// arrive, so it walks windows of created_at instead: each starts (by
// created_after) a little before the newest order the last one read, and
// only when a window cannot advance (a page of orders all created within
// the overlap) does it turn to the window's next page. Sorting, Page and
// Limit of q are its own.
func (c *Client) Orders(ctx context.Context, q OrderQuery) iter.Seq2[Order, error] {
	return func(yield func(Order, error) bool) {
		seen := make(map[string]struct{})
		q.Sorting, q.Limit = "created_at", PageLimit
		cursor, page := q.CreatedAfter, 1
		for {
			w := q
			w.CreatedAfter, w.Page = cursor, page
			p, err := c.ListOrders(ctx, w)
			if err != nil {
				yield(Order{}, err)
				return
			}
			newest := cursor
			for _, o := range p.Items {
				if o.CreatedAt.After(newest) {
					newest = o.CreatedAt
				}
				if _, ok := seen[o.ID]; ok {
					continue
				}
				seen[o.ID] = struct{}{}
				if !yield(o, nil) {
					return
				}
			}
			if len(p.Items) < PageLimit {
				return
			}
			if next := newest.Add(-overlap); next.After(cursor) {
				cursor, page = next, 1
			} else {
				page++
			}
		}
	}
}

// RefundQuery filters GET /v1/refunds/. Polar has no created_after for
// refunds: Refunds reads newest first and stops at Since.
type RefundQuery struct {
	Since     time.Time // zero: every refund
	OrderID   string
	Succeeded *bool
	Sorting   string // -created_at (Polar's default) or created_at
	Page      int
	Limit     int
}

func (q RefundQuery) values() url.Values {
	v := url.Values{}
	if q.OrderID != "" {
		v.Set("order_id", q.OrderID)
	}
	if q.Succeeded != nil {
		v.Set("succeeded", strconv.FormatBool(*q.Succeeded))
	}
	if q.Sorting != "" {
		v.Set("sorting", q.Sorting)
	}
	setPage(v, q.Page, q.Limit)
	return v
}

// ListRefunds reads one page of refunds.
func (c *Client) ListRefunds(ctx context.Context, q RefundQuery) (Page[Refund], error) {
	var p rawPage
	if err := c.do(ctx, call{name: "refunds", scope: ScopeRefundsRead, method: http.MethodGet,
		path: "/v1/refunds/", query: q.values(), idempotent: true}, &p); err != nil {
		return Page[Refund]{}, err
	}
	return decodeItems("refunds", p, func(r *Refund, b json.RawMessage) { r.Raw = b })
}

// Refunds walks the refunds created since q.Since, newest first, each
// once. Refunds arriving meanwhile push the others to later pages: they
// are read twice there and dropped the second time.
func (c *Client) Refunds(ctx context.Context, q RefundQuery) iter.Seq2[Refund, error] {
	return func(yield func(Refund, error) bool) {
		seen := make(map[string]struct{})
		q.Sorting, q.Limit = "-created_at", PageLimit
		for page := 1; ; page++ {
			q.Page = page
			p, err := c.ListRefunds(ctx, q)
			if err != nil {
				yield(Refund{}, err)
				return
			}
			for _, r := range p.Items {
				if r.CreatedAt.Before(q.Since) {
					return // newest first: the rest are older still
				}
				if _, ok := seen[r.ID]; ok {
					continue
				}
				seen[r.ID] = struct{}{}
				if !yield(r, nil) {
					return
				}
			}
			if len(p.Items) < PageLimit {
				return
			}
		}
	}
}

// ProductQuery filters GET /v1/products/.
type ProductQuery struct {
	IsArchived *bool
	Metadata   map[string]string
	Page       int
	Limit      int
}

func (q ProductQuery) values() url.Values {
	v := url.Values{}
	if q.IsArchived != nil {
		v.Set("is_archived", strconv.FormatBool(*q.IsArchived))
	}
	for k, val := range q.Metadata {
		v.Set("metadata["+k+"]", val)
	}
	setPage(v, q.Page, q.Limit)
	return v
}

// ListProducts reads one page of products.
func (c *Client) ListProducts(ctx context.Context, q ProductQuery) (Page[Product], error) {
	var p rawPage
	if err := c.do(ctx, call{name: "products", scope: ScopeProductsRead, method: http.MethodGet,
		path: "/v1/products/", query: q.values(), idempotent: true}, &p); err != nil {
		return Page[Product]{}, err
	}
	return decodeItems("products", p, func(pr *Product, b json.RawMessage) { pr.Raw = b })
}

// Products walks every product q selects, each once.
func (c *Client) Products(ctx context.Context, q ProductQuery) iter.Seq2[Product, error] {
	return walk(func(page int) (Page[Product], error) {
		q.Page, q.Limit = page, PageLimit
		return c.ListProducts(ctx, q)
	}, func(p Product) string { return p.ID })
}

// ListWebhookEndpoints reads one page of the organization's webhook
// endpoints (webhooks:read). It is also the cheapest check of a token.
func (c *Client) ListWebhookEndpoints(ctx context.Context, page, limit int) (Page[WebhookEndpoint], error) {
	v := url.Values{}
	setPage(v, page, limit)
	var p Page[WebhookEndpoint]
	err := c.do(ctx, call{name: "webhook_endpoints", scope: ScopeWebhooksRead, method: http.MethodGet,
		path: "/v1/webhooks/endpoints", query: v, idempotent: true}, &p)
	return p, err
}

// WebhookEndpoints walks every webhook endpoint of the organization.
func (c *Client) WebhookEndpoints(ctx context.Context) iter.Seq2[WebhookEndpoint, error] {
	return walk(func(page int) (Page[WebhookEndpoint], error) {
		return c.ListWebhookEndpoints(ctx, page, PageLimit)
	}, func(e WebhookEndpoint) string { return e.ID })
}

// CreateWebhookEndpoint registers an endpoint (webhooks:write). It is not
// retried after a 5xx or a timeout, which may have created it: the caller
// lists the endpoints and finds it by URL.
func (c *Client) CreateWebhookEndpoint(ctx context.Context, in WebhookEndpointCreate) (WebhookEndpoint, error) {
	var e WebhookEndpoint
	err := c.do(ctx, call{name: "webhook_endpoint_create", scope: ScopeWebhooksWrite, method: http.MethodPost,
		path: "/v1/webhooks/endpoints", body: in}, &e)
	return e, err
}

// UpdateWebhookEndpoint changes an endpoint (webhooks:write), e.g.
// re-enables one Polar disabled.
func (c *Client) UpdateWebhookEndpoint(ctx context.Context, id string, in WebhookEndpointUpdate) (WebhookEndpoint, error) {
	var e WebhookEndpoint
	err := c.do(ctx, call{name: "webhook_endpoint_update", scope: ScopeWebhooksWrite, method: http.MethodPatch,
		path: "/v1/webhooks/endpoints/" + url.PathEscape(id), body: in, idempotent: true}, &e)
	return e, err
}

// walk reads pages from 1 until a short one, yielding each id once.
func walk[T any](list func(page int) (Page[T], error), id func(T) string) iter.Seq2[T, error] {
	return func(yield func(T, error) bool) {
		seen := make(map[string]struct{})
		for page := 1; ; page++ {
			p, err := list(page)
			if err != nil {
				var zero T
				yield(zero, err)
				return
			}
			for _, it := range p.Items {
				if _, ok := seen[id(it)]; ok {
					continue
				}
				seen[id(it)] = struct{}{}
				if !yield(it, nil) {
					return
				}
			}
			if len(p.Items) < PageLimit {
				return
			}
		}
	}
}
