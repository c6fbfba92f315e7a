package polarfake

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/relayhq/relay/internal/httpjson"
)

// ServeHTTP answers as Polar's API does.
func (f *Fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	route, scopes := f.route(r)
	f.mu.Lock()
	f.counts[r.Method+" "+r.URL.Path]++
	bearer, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if bearer != "" {
		f.seen[bearer]++
	}
	hook := f.hook
	f.mu.Unlock()
	if hook != nil {
		hook(r)
	}

	f.mu.Lock()
	defer f.mu.Unlock()
	if route == nil {
		httpjson.Write(w, http.StatusNotFound, map[string]any{"detail": "Not Found"})
		return
	}
	tok, ok := f.tokens[bearer]
	if !ok {
		w.Header().Set("WWW-Authenticate", "Bearer")
		httpjson.Write(w, http.StatusUnauthorized, map[string]any{"error": "Unauthorized", "detail": "Unauthorized"})
		return
	}
	or := f.orgs[tok.org]
	if or.rpm > 0 {
		now := f.now()
		cut := now.Add(-time.Minute)
		or.starts = slices.DeleteFunc(or.starts, func(t time.Time) bool { return !t.After(cut) })
		if len(or.starts) >= or.rpm {
			wait := or.starts[0].Add(time.Minute).Sub(now)
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			httpjson.Write(w, http.StatusTooManyRequests, map[string]any{"error": "TooManyRequests", "detail": "Rate limit exceeded"})
			return
		}
		or.starts = append(or.starts, now)
	}
	if !slices.ContainsFunc(scopes, func(s string) bool { return slices.Contains(tok.scopes, s) }) {
		httpjson.Write(w, http.StatusForbidden, map[string]any{"error": "InsufficientScope",
			"detail": "The access token does not have the required scope: " + strings.Join(scopes, " or ")})
		return
	}
	if len(f.fail) > 0 {
		status := f.fail[0]
		f.fail = f.fail[1:]
		httpjson.Write(w, status, map[string]any{"detail": http.StatusText(status)})
		return
	}
	route(w, r, or)
}

type handler func(w http.ResponseWriter, r *http.Request, or *org)

// route finds the handler for r and the scopes any one of which allows it
// (a write scope allows reading, as at Polar).
func (f *Fake) route(r *http.Request) (handler, []string) {
	p := r.URL.Path
	switch {
	case r.Method == http.MethodGet && p == "/v1/orders/":
		return f.listOrders, []string{ScopeOrdersRead}
	case r.Method == http.MethodGet && p == "/v1/refunds/":
		return f.listRefunds, []string{ScopeRefundsRead}
	case r.Method == http.MethodGet && p == "/v1/products/":
		return f.listProducts, []string{ScopeProductsRead}
	case r.Method == http.MethodGet && p == "/v1/webhooks/endpoints":
		return f.listEndpoints, []string{ScopeWebhooksRead, ScopeWebhooksWrite}
	case r.Method == http.MethodPost && p == "/v1/webhooks/endpoints":
		return f.createEndpoint, []string{ScopeWebhooksWrite}
	case strings.HasPrefix(p, "/v1/webhooks/endpoints/") && !strings.Contains(strings.TrimPrefix(p, "/v1/webhooks/endpoints/"), "/"):
		switch r.Method {
		case http.MethodGet:
			return f.getEndpoint, []string{ScopeWebhooksRead, ScopeWebhooksWrite}
		case http.MethodPatch:
			return f.updateEndpoint, []string{ScopeWebhooksWrite}
		case http.MethodDelete:
			return f.deleteEndpoint, []string{ScopeWebhooksWrite}
		}
	}
	return nil, nil
}

// validation answers 422 as FastAPI does.
func validation(w http.ResponseWriter, loc, msg string) {
	httpjson.Write(w, http.StatusUnprocessableEntity, map[string]any{"detail": []any{
		map[string]any{"loc": []any{"query", loc}, "msg": msg, "type": "value_error"},
	}})
}

// page applies page and limit: limit 1 to 100 (10 by default), page from 1.
func page(w http.ResponseWriter, q url.Values, items []map[string]any) {
	pg, limit := 1, 10
	if v := q.Get("page"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			validation(w, "page", "Input should be greater than 0")
			return
		}
		pg = n
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			validation(w, "limit", "Input should be greater than 0 and less than or equal to 100")
			return
		}
		limit = n
	}
	start := min((pg-1)*limit, len(items))
	end := min(start+limit, len(items))
	// Encoded under the fake's lock: no copy needed.
	out := items[start:end:end]
	httpjson.Write(w, http.StatusOK, map[string]any{
		"items":      out,
		"pagination": map[string]any{"total_count": len(items), "max_page": int(math.Ceil(float64(len(items)) / float64(limit)))},
	})
}

// filterCreated applies created_after and created_before (exclusive).
func filterCreated(w http.ResponseWriter, q url.Values, items []map[string]any) ([]map[string]any, bool) {
	var after, before time.Time
	for _, b := range []struct {
		name string
		t    *time.Time
	}{{"created_after", &after}, {"created_before", &before}} {
		if v := q.Get(b.name); v != "" {
			t, err := time.Parse(time.RFC3339Nano, v)
			if err != nil {
				validation(w, b.name, "Input should be a valid datetime")
				return nil, false
			}
			*b.t = t
		}
	}
	return slices.DeleteFunc(items, func(m map[string]any) bool {
		c := created(m)
		return (!after.IsZero() && !c.After(after)) || (!before.IsZero() && !c.Before(before))
	}), true
}

// filterMetadata applies metadata[key]=value (several values of one key:
// any of them).
func filterMetadata(q url.Values, items []map[string]any) []map[string]any {
	for k, vals := range q {
		key, ok := strings.CutPrefix(k, "metadata[")
		if !ok || !strings.HasSuffix(key, "]") {
			continue
		}
		key = strings.TrimSuffix(key, "]")
		items = slices.DeleteFunc(items, func(m map[string]any) bool {
			md, _ := m["metadata"].(map[string]any)
			v, ok := md[key]
			return !ok || !slices.Contains(vals, fmt.Sprint(v))
		})
	}
	return items
}

func filterField(q url.Values, param, field string, items []map[string]any) []map[string]any {
	vals, ok := q[param]
	if !ok {
		return items
	}
	return slices.DeleteFunc(items, func(m map[string]any) bool { return !slices.Contains(vals, fmt.Sprint(m[field])) })
}

func created(m map[string]any) time.Time {
	t, _ := time.Parse(time.RFC3339Nano, m["created_at"].(string))
	return t
}

// sortBy sorts by created_at, newest first unless sorting=created_at; ties
// by id so that pages are stable.
func sortBy(w http.ResponseWriter, q url.Values, items []map[string]any) bool {
	desc := true
	switch q.Get("sorting") {
	case "", "-created_at":
	case "created_at":
		desc = false
	default:
		validation(w, "sorting", "Input should be 'created_at' or '-created_at'")
		return false
	}
	type keyed struct {
		at time.Time
		id string
		m  map[string]any
	}
	ks := make([]keyed, len(items))
	for i, m := range items {
		ks[i] = keyed{created(m), m["id"].(string), m}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		c := a.at.Compare(b.at)
		if c == 0 {
			c = strings.Compare(a.id, b.id)
		}
		if desc {
			c = -c
		}
		return c
	})
	for i, k := range ks {
		items[i] = k.m
	}
	return true
}

func (f *Fake) listOrders(w http.ResponseWriter, r *http.Request, or *org) {
	q := r.URL.Query()
	items, ok := filterCreated(w, q, slices.Clone(or.orders))
	if !ok {
		return
	}
	items = filterMetadata(q, items)
	items = filterField(q, "status", "status", items)
	items = filterField(q, "checkout_id", "checkout_id", items)
	if sortBy(w, q, items) {
		page(w, q, items)
	}
}

func (f *Fake) listRefunds(w http.ResponseWriter, r *http.Request, or *org) {
	q := r.URL.Query()
	items := filterField(q, "order_id", "order_id", slices.Clone(or.refunds))
	if v := q.Get("succeeded"); v != "" {
		want := v == "true"
		items = slices.DeleteFunc(items, func(m map[string]any) bool { return (m["status"] == "succeeded") != want })
	}
	if sortBy(w, q, items) {
		page(w, q, items)
	}
}

func (f *Fake) listProducts(w http.ResponseWriter, r *http.Request, or *org) {
	q := r.URL.Query()
	items := filterMetadata(q, slices.Clone(or.products))
	if v := q.Get("is_archived"); v != "" {
		items = slices.DeleteFunc(items, func(m map[string]any) bool { return fmt.Sprint(m["is_archived"]) != v })
	}
	if sortBy(w, q, items) {
		page(w, q, items)
	}
}

func (f *Fake) listEndpoints(w http.ResponseWriter, r *http.Request, or *org) {
	items := slices.Clone(or.endpoints)
	page(w, r.URL.Query(), items)
}

func (f *Fake) findEndpoint(w http.ResponseWriter, r *http.Request, or *org) map[string]any {
	id := strings.TrimPrefix(r.URL.Path, "/v1/webhooks/endpoints/")
	for _, m := range or.endpoints {
		if m["id"] == id {
			return m
		}
	}
	httpjson.Write(w, http.StatusNotFound, map[string]any{"error": "ResourceNotFound", "detail": "Not found"})
	return nil
}

func (f *Fake) getEndpoint(w http.ResponseWriter, r *http.Request, or *org) {
	if m := f.findEndpoint(w, r, or); m != nil {
		httpjson.Write(w, http.StatusOK, m)
	}
}

type endpointBody struct {
	URL     *string   `json:"url"`
	Format  *string   `json:"format"`
	Events  *[]string `json:"events"`
	Name    *string   `json:"name"`
	Enabled *bool     `json:"enabled"`
}

func readBody(w http.ResponseWriter, r *http.Request) (endpointBody, bool) {
	var b endpointBody
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err == nil {
		err = json.Unmarshal(raw, &b)
	}
	if err != nil {
		httpjson.Write(w, http.StatusUnprocessableEntity, map[string]any{"detail": "invalid JSON body"})
		return b, false
	}
	if b.URL != nil {
		u, err := url.Parse(*b.URL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			httpjson.Write(w, http.StatusUnprocessableEntity, map[string]any{"detail": "url: not a valid URL"})
			return b, false
		}
	}
	if b.Format != nil && *b.Format != "raw" && *b.Format != "discord" && *b.Format != "slack" {
		httpjson.Write(w, http.StatusUnprocessableEntity, map[string]any{"detail": "format: want raw, discord or slack"})
		return b, false
	}
	return b, true
}

func (f *Fake) createEndpoint(w http.ResponseWriter, r *http.Request, or *org) {
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	if b.URL == nil || b.Format == nil || b.Events == nil {
		httpjson.Write(w, http.StatusUnprocessableEntity, map[string]any{"detail": "url, format and events are required"})
		return
	}
	var name any
	if b.Name != nil {
		name = *b.Name
	}
	m := f.addEndpointLocked(or.id, *b.URL, *b.Format, *b.Events, name)
	httpjson.Write(w, http.StatusCreated, m)
}

func (f *Fake) updateEndpoint(w http.ResponseWriter, r *http.Request, or *org) {
	m := f.findEndpoint(w, r, or)
	if m == nil {
		return
	}
	b, ok := readBody(w, r)
	if !ok {
		return
	}
	if b.URL != nil {
		m["url"] = *b.URL
	}
	if b.Format != nil {
		m["format"] = *b.Format
	}
	if b.Events != nil {
		evs := make([]any, len(*b.Events))
		for i, e := range *b.Events {
			evs[i] = e
		}
		m["events"] = evs
	}
	if b.Name != nil {
		m["name"] = *b.Name
	}
	if b.Enabled != nil {
		m["enabled"] = *b.Enabled
	}
	m["modified_at"] = ts(f.now())
	httpjson.Write(w, http.StatusOK, m)
}

func (f *Fake) deleteEndpoint(w http.ResponseWriter, r *http.Request, or *org) {
	if m := f.findEndpoint(w, r, or); m != nil {
		or.endpoints = slices.DeleteFunc(or.endpoints, func(e map[string]any) bool { return e["id"] == m["id"] })
		w.WriteHeader(http.StatusNoContent)
	}
}
