package admin_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
)

const token = "admin-endpoints-test-token"

func TestEndpointsAPI(t *testing.T) {
	pool := testdb.NewPool(t)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{}) // insert-only, as the CLI's
	if err != nil {
		t.Fatal(err)
	}
	key := base64.StdEncoding.EncodeToString([]byte("relay-admin-test-key-number-1-01"))
	keys, err := endpoints.ParseKeyring(func(k string) string { return map[string]string{endpoints.EnvKey: key}[k] })
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.SyncBuffer{}
	serve := func(store *endpoints.Store) *httptest.Server {
		h, err := admin.NewHandler(pool, client, admin.Options{Credentials: admin.Credentials{Token: token},
			Logger: slog.New(slog.NewTextHandler(logs, nil)), Endpoints: store})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		t.Cleanup(srv.Close)
		return srv
	}
	srv := serve(endpoints.NewStore(pool, keys))
	ws1 := testkit.SeedShop(t, pool, testkit.ShopOptions{}).WS
	ws2 := testkit.SeedShop(t, pool, testkit.ShopOptions{}).WS
	const secret1, secret2 = "polar_whs_admin_api_secret_one_AbCd", "whsec_adminApiSecretTwoNotBase64AtAllWxYz"

	call := func(method, path, body string, auth bool) (int, string) {
		t.Helper()
		code, b, _ := apiRequest(t, srv, method, path, body, auth)
		for _, s := range []string{secret1, secret2} {
			if strings.Contains(b, s) || strings.Contains(b, s[:len(s)-4]) {
				t.Errorf("%s %s answers with a secret: %s", method, path, b)
			}
		}
		return code, b
	}
	addBody := func(ws, env, secret string) string {
		b, _ := json.Marshal(map[string]string{"workspace": ws, "environment": env, "secret": secret})
		return string(b)
	}

	for _, r := range []struct{ method, path, body string }{
		{"GET", "/admin/api/endpoints", ""},
		{"POST", "/admin/api/endpoints", addBody(ws1, "production", secret1)},
		{"DELETE", "/admin/api/endpoints/00000000-0000-4000-8000-000000000000", ""},
	} {
		if code, body := call(r.method, r.path, r.body, false); code != http.StatusUnauthorized {
			t.Errorf("%s %s without credentials: %d %s", r.method, r.path, code, body)
		}
	}
	if n, _ := endpoints.NewStore(pool, keys).List(context.Background(), ""); len(n) != 0 {
		t.Fatalf("an unauthenticated POST stored %d secrets", len(n))
	}

	var created []endpoints.Secret
	for _, c := range []struct{ ws, env, secret string }{{ws1, "production", secret1}, {ws2, "sandbox", secret2}} {
		code, body := call("POST", "/admin/api/endpoints", addBody(c.ws, c.env, c.secret), true)
		var sec endpoints.Secret
		if err := json.Unmarshal([]byte(body), &sec); code != http.StatusCreated || err != nil ||
			sec.Workspace != c.ws || sec.Environment != c.env || sec.Last4 != c.secret[len(c.secret)-4:] || sec.ID == "" || sec.CreatedAt.IsZero() {
			t.Fatalf("POST %s secret: %d %s", c.env, code, body)
		}
		created = append(created, sec)
	}

	code, body := call("GET", "/admin/api/endpoints", "", true)
	var list struct{ Endpoints []endpoints.Secret }
	if err := json.Unmarshal([]byte(body), &list); code != http.StatusOK || err != nil || len(list.Endpoints) != 2 {
		t.Fatalf("GET: %d %s", code, body)
	}
	code, body = call("GET", "/admin/api/endpoints?workspace="+ws2, "", true)
	if err := json.Unmarshal([]byte(body), &list); code != http.StatusOK || err != nil || len(list.Endpoints) != 1 || list.Endpoints[0].ID != created[1].ID {
		t.Errorf("GET ?workspace=: %d %s", code, body)
	}
	ws3 := testkit.SeedShop(t, pool, testkit.ShopOptions{}).WS
	if code, body := call("GET", "/admin/api/endpoints?workspace="+ws3, "", true); code != http.StatusOK || !strings.Contains(body, `"endpoints": []`) {
		t.Errorf("GET for a workspace without secrets: %d %s", code, body)
	}

	for _, c := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/admin/api/endpoints", addBody(ws1, "live", secret1), http.StatusBadRequest},
		{"POST", "/admin/api/endpoints", addBody(ws1, "sandbox", secret1), http.StatusBadRequest}, // production's secret, for sandbox
		{"POST", "/admin/api/endpoints", addBody("shop", "sandbox", secret1), http.StatusBadRequest},
		{"POST", "/admin/api/endpoints", addBody(ws1, "sandbox", ""), http.StatusBadRequest},
		{"POST", "/admin/api/endpoints", addBody(ws1, "sandbox", secret1+"\n"), http.StatusBadRequest},
		{"POST", "/admin/api/endpoints", addBody("00000000-0000-4000-8000-000000000000", "sandbox", secret1), http.StatusNotFound},
		{"POST", "/admin/api/endpoints", `{"workspace":"` + ws1 + `","environment":"sandbox","secret":"` + secret1 + `","extra":1}`, http.StatusBadRequest},
		{"POST", "/admin/api/endpoints", `{"secret":"` + secret1 + `"`, http.StatusBadRequest},
		{"POST", "/admin/api/endpoints", addBody(ws1, "sandbox", secret1) + addBody(ws1, "sandbox", secret2), http.StatusBadRequest},
		{"POST", "/admin/api/endpoints", `{"secret":"` + strings.Repeat("x", 70<<10) + `"}`, http.StatusBadRequest},
		{"GET", "/admin/api/endpoints?workspace=shop", "", http.StatusBadRequest},
		{"DELETE", "/admin/api/endpoints/not-a-uuid", "", http.StatusBadRequest},
		{"DELETE", "/admin/api/endpoints/00000000-0000-4000-8000-000000000000", "", http.StatusNotFound},
	} {
		code, body := call(c.method, c.path, c.body, true)
		var e struct{ Error string }
		if code != c.want || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s %s %.80s: %d %s, want %d with a JSON error", c.method, c.path, c.body, code, body, c.want)
		}
	}

	code, body = call("DELETE", "/admin/api/endpoints/"+created[0].ID, "", true)
	if code != http.StatusOK || !strings.Contains(body, created[0].ID) {
		t.Fatalf("DELETE: %d %s", code, body)
	}
	if code, _ := call("DELETE", "/admin/api/endpoints/"+created[0].ID, "", true); code != http.StatusNotFound {
		t.Errorf("DELETE again: %d, want 404", code)
	}
	if left, _ := endpoints.NewStore(pool, keys).List(context.Background(), ""); len(left) != 1 || left[0].ID != created[1].ID {
		t.Errorf("left after DELETE: %+v", left)
	}

	// Without a key the API still lists, and says why it cannot add.
	keyless := serve(endpoints.NewStore(pool, nil))
	srv = keyless
	if code, body := call("POST", "/admin/api/endpoints", addBody(ws1, "production", secret1), true); code != http.StatusServiceUnavailable || !strings.Contains(body, "RELAY_SECRETS_KEY") {
		t.Errorf("POST without a key: %d %s", code, body)
	}
	if code, _ := call("GET", "/admin/api/endpoints", "", true); code != http.StatusOK {
		t.Errorf("GET without a key: %d", code)
	}
	// Without a store the routes are not there.
	srv = serve(nil)
	if code, _ := call("GET", "/admin/api/endpoints", "", true); code != http.StatusNotFound {
		t.Errorf("GET without a store: %d, want 404", code)
	}
	for _, s := range []string{secret1, secret2, token} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("the log contains %q", s)
		}
	}
}
