package polarfake_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relayhq/relay/internal/polarfake"
)

type page struct {
	Items      []map[string]any
	Pagination struct {
		TotalCount int `json:"total_count"`
		MaxPage    int `json:"max_page"`
	}
}

func get(t *testing.T, srv *httptest.Server, token, path string) (int, page, http.Header) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p page
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&p); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode, p, resp.Header
}

// TestFakeAnswersAsPolar pins what the fake promises of Polar's API.
func TestFakeAnswersAsPolar(t *testing.T) {
	f := polarfake.New("sandbox")
	clock := polarfake.NewClock(time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC))
	f.SetClock(clock.Now)
	srv := httptest.NewServer(f)
	defer srv.Close()
	org := f.AddOrganization()
	tok := f.AddToken(org)
	t0 := clock.Now()
	for i := range 250 {
		md := map[string]any{"kind": "inventory_checkout"}
		if i%5 == 0 {
			md = map[string]any{"kind": "other"}
		}
		f.AddOrder(org, polarfake.Order{CreatedAt: t0.Add(time.Duration(i) * time.Minute), Metadata: md})
	}

	if code, _, _ := get(t, srv, "polar_oat_unknown", "/v1/orders/"); code != http.StatusUnauthorized {
		t.Errorf("unknown token: %d", code)
	}
	code, p, _ := get(t, srv, tok, "/v1/orders/")
	if code != 200 || len(p.Items) != 10 || p.Pagination.TotalCount != 250 || p.Pagination.MaxPage != 25 {
		t.Errorf("default page: %d, %d items, %+v", code, len(p.Items), p.Pagination)
	}
	if p.Items[0]["created_at"].(string) <= p.Items[1]["created_at"].(string) {
		t.Error("the default sorting is not newest first")
	}
	if code, _, _ := get(t, srv, tok, "/v1/orders/?limit=101"); code != http.StatusUnprocessableEntity {
		t.Errorf("limit=101: %d, want 422", code)
	}
	after := url.QueryEscape(t0.Add(99 * time.Minute).Format(time.RFC3339))
	code, p, _ = get(t, srv, tok, "/v1/orders/?limit=100&sorting=created_at&metadata%5Bkind%5D=inventory_checkout&created_after="+after)
	if code != 200 || p.Pagination.TotalCount != 120 || len(p.Items) != 100 || p.Items[0]["created_at"] != t0.Add(101*time.Minute).Format("2006-01-02T15:04:05.000000Z") {
		t.Errorf("filtered: %d, %+v, first %v", code, p.Pagination, p.Items[0]["created_at"])
	}

	// Scopes: a read-only token may list endpoints but not create one.
	ro := f.AddToken(org, polarfake.ScopeWebhooksRead)
	if code, _, _ := get(t, srv, ro, "/v1/orders/"); code != http.StatusForbidden {
		t.Errorf("orders without orders:read: %d", code)
	}
	post := func(token string) (int, map[string]any) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/webhooks/endpoints",
			strings.NewReader(`{"url":"https://relay.example/webhooks/polar/x","format":"raw","events":["order.paid"]}`))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	if code, _ := post(ro); code != http.StatusForbidden {
		t.Errorf("create without webhooks:write: %d", code)
	}
	code, ep := post(tok)
	if code != http.StatusCreated || !regexp.MustCompile(`^whsec_[A-Za-z0-9]{43}$`).MatchString(fmt.Sprint(ep["secret"])) || ep["enabled"] != true {
		t.Errorf("create: %d %v", code, ep)
	}
	f.DisableEndpoint(org, ep["id"].(string))
	if _, p, _ := get(t, srv, ro, "/v1/webhooks/endpoints"); len(p.Items) != 1 || p.Items[0]["enabled"] != false {
		t.Errorf("after DisableEndpoint: %v", p.Items)
	}

	// The rate limit: 429 with the seconds until a request is allowed.
	f.SetRateLimit(org, 3)
	clock.Advance(time.Minute)
	for i := range 3 {
		if code, _, _ := get(t, srv, tok, "/v1/products/"); code != 200 {
			t.Fatalf("request %d within the limit: %d", i, code)
		}
		clock.Advance(10 * time.Second)
	}
	if code, _, h := get(t, srv, tok, "/v1/products/"); code != http.StatusTooManyRequests || h.Get("Retry-After") != "30" {
		t.Errorf("over the limit: %d, Retry-After %q, want 429 and 30", code, h.Get("Retry-After"))
	}
	if n := f.Requests("GET /v1/products/"); n != 4 {
		t.Errorf("%d product requests counted, want 4", n)
	}
}
