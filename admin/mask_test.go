package admin

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

func TestMaskPIIHidesCustomerDataAndKeepsTheRest(t *testing.T) {
	for _, fixture := range []string{"order.created.pending.json", "order.paid.json", "checkout.expired.json", "customer.created.json", "refund.created.json"} {
		t.Run(fixture, func(t *testing.T) {
			raw, err := os.ReadFile("../testdata/events/" + fixture)
			if err != nil {
				t.Fatal(err)
			}
			out, err := MaskPII(raw)
			if err != nil {
				t.Fatal(err)
			}
			for _, pii := range []string{"Sam Shopper", "shopper@example.com", "1 Harbour St", "Sydney", "AU-NSW", `"2000"`} {
				if strings.Contains(string(raw), pii) && strings.Contains(string(out), pii) {
					t.Errorf("masked payload still contains %q:\n%s", pii, out)
				}
			}
			if !json.Valid(out) {
				t.Fatalf("not JSON: %s", out)
			}
		})
	}

	in := `{"type":"checkout.updated","data":{"id":"chk_1","status":"succeeded","total_amount":4950,
		"customer_email":"a@b.c","customer_name":"A B","customer_ip_address":"192.0.2.1","customer_tax_id":["DE1","eu_vat"],
		"customer_billing_address":{"country":"DE","line1":"Str 1"},"customer_billing_name":"A B Corp",
		"custom_field_data":{"phone_slug":"+49 1","newsletter":true},"metadata":{"wsId":"ws_1","checkoutId":"cs_1"},
		"product":{"name":"Mug","id":"p1"},"products":[{"name":"Tea"}],"customer":{"name":"A B","avatar_url":"https://x/a.png","email":null},
		"billing_address":{"state":"Bayern","country":"DE","city":"Munich","postal_code":"80331"},"country":"DE",
		"amount":12345678901234567890}}`
	out, err := MaskPII([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	d := got.Data
	for _, key := range []string{"customer_email", "customer_name", "customer_ip_address", "customer_billing_name"} {
		if d[key] != Masked {
			t.Errorf("%s = %v, want masked", key, d[key])
		}
	}
	for _, s := range []string{"a@b.c", "192.0.2.1", "DE1", "Str 1", "+49 1", "Bayern", "Munich", "80331", "https://x/a.png", "A B"} {
		if strings.Contains(string(out), s) {
			t.Errorf("output contains %q:\n%s", s, out)
		}
	}
	cf := d["custom_field_data"].(map[string]any)
	if cf["phone_slug"] != Masked || cf["newsletter"] != Masked {
		t.Errorf("custom_field_data = %v, want keys kept, values masked", cf)
	}
	if d["customer"].(map[string]any)["email"] != nil {
		t.Error("a null email must stay null")
	}
	for _, s := range []string{`"chk_1"`, `"succeeded"`, `4950`, `"ws_1"`, `"cs_1"`, `"Mug"`, `"Tea"`, `12345678901234567890`, `"country": "DE"`} {
		if !strings.Contains(string(out), s) {
			t.Errorf("output lost %s:\n%s", s, out)
		}
	}
	if _, err := MaskPII([]byte("not json")); err == nil {
		t.Error("MaskPII accepted a body that is not JSON")
	}
}

func TestRequireAuth(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusTeapot) })
	tokenOnly := requireAuth(Credentials{Token: "tok_0123456789abcdef"}, ok)
	basicOnly := requireAuth(Credentials{User: "u", Password: "p"}, ok)
	cases := []struct {
		name string
		h    http.Handler
		set  func(*http.Request)
		want int
	}{
		{"token", tokenOnly, func(r *http.Request) { r.Header.Set("Authorization", "Bearer tok_0123456789abcdef") }, http.StatusTeapot},
		{"token, lower-case scheme", tokenOnly, func(r *http.Request) { r.Header.Set("Authorization", "bearer tok_0123456789abcdef") }, http.StatusTeapot},
		{"empty bearer", tokenOnly, func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") }, http.StatusUnauthorized},
		{"basic when only a token is set", tokenOnly, func(r *http.Request) { r.SetBasicAuth("", "") }, http.StatusUnauthorized},
		{"basic", basicOnly, func(r *http.Request) { r.SetBasicAuth("u", "p") }, http.StatusTeapot},
		{"empty bearer when only basic is set", basicOnly, func(r *http.Request) { r.Header.Set("Authorization", "Bearer ") }, http.StatusUnauthorized},
		{"nothing", basicOnly, func(*http.Request) {}, http.StatusUnauthorized},
	}
	for _, c := range cases {
		req := httptest.NewRequest("GET", "/admin/api/jobs", nil)
		c.set(req)
		rec := httptest.NewRecorder()
		c.h.ServeHTTP(rec, req)
		if rec.Code != c.want {
			t.Errorf("%s: %d, want %d", c.name, rec.Code, c.want)
		}
		if rec.Code == http.StatusUnauthorized && rec.Header().Get("WWW-Authenticate") == "" {
			t.Errorf("%s: 401 without WWW-Authenticate", c.name)
		}
	}
	if (Credentials{User: "u"}).Configured() || !(Credentials{Token: "t"}).Configured() {
		t.Error("Configured is wrong")
	}
}
