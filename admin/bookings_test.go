package admin_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/internal/testdb"
	"github.com/relayhq/relay/internal/testkit"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/ledger"
)

// pendingSale pays the shop's session, which its wallet setting keeps from
// being booked.
func pendingSale(t *testing.T, pool *pgxpool.Pool, s testkit.Shop, currency string) {
	t.Helper()
	err := pgx.BeginFunc(t.Context(), pool, func(tx pgx.Tx) error {
		_, err := ledger.ApplyPayment(t.Context(), tx, ledger.Payment{
			Session: ledger.SessionRef{SessionID: s.Session, WorkspaceID: s.WS}, ExternalOrderID: "ord_" + s.Session,
			Paid: true, Currency: currency, Description: "Sale", At: time.Now(),
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestBookingsAPI(t *testing.T) {
	pool := testdb.NewPool(t)
	client, err := river.NewClient(riverpgxv5.New(pool), &river.Config{})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	metrics, err := jobs.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	logs := &testkit.SyncBuffer{}
	h, err := admin.NewHandler(pool, client, admin.Options{Credentials: admin.Credentials{Token: token},
		Logger: slog.New(slog.NewTextHandler(logs, nil)), Metrics: metrics})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	call := func(method, path string, auth bool) (int, string, http.Header) {
		t.Helper()
		return apiRequest(t, srv, method, path, "", auth)
	}

	fixable := testkit.SeedShop(t, pool, testkit.ShopOptions{NoWallet: true})
	never := testkit.SeedShop(t, pool, testkit.ShopOptions{})
	pendingSale(t, pool, fixable, "USD")
	pendingSale(t, pool, never, "GBP")

	for _, r := range []struct{ method, path string }{{"GET", "/admin/api/bookings/pending"}, {"POST", "/admin/api/bookings/post"}} {
		if code, body, _ := call(r.method, r.path, false); code != http.StatusUnauthorized {
			t.Errorf("%s %s without credentials: %d %s", r.method, r.path, code, body)
		}
	}

	var list admin.PendingList
	code, body, _ := call("GET", "/admin/api/bookings/pending", true)
	if err := json.Unmarshal([]byte(body), &list); code != http.StatusOK || err != nil || list.Total != 2 || len(list.Pending) != 2 ||
		list.Pending[0].SessionID != fixable.Session || list.Pending[0].Reason != ledger.ReasonNoWallet ||
		list.Pending[1].Reason != ledger.ReasonCurrency || list.Pending[1].PaymentCurrency != "GBP" || list.Pending[1].Amount != 4950 {
		t.Fatalf("GET pending: %d %s", code, body)
	}
	for path, want := range map[string]int{
		"?reason=currency":         1,
		"?reason=wallet_workspace": 0,
		"?workspace=" + never.WS:   1,
		"?limit=1":                 1,
	} {
		code, body, _ := call("GET", "/admin/api/bookings/pending"+path, true)
		if err := json.Unmarshal([]byte(body), &list); code != http.StatusOK || err != nil || len(list.Pending) != want || !strings.Contains(body, `"pending": [`) {
			t.Errorf("GET pending%s: %d %s, want %d listed", path, code, body, want)
		}
	}
	for _, c := range []struct{ method, path string }{
		{"GET", "/admin/api/bookings/pending?workspace=shop"},
		{"GET", "/admin/api/bookings/pending?reason=skipped_currency"},
		{"GET", "/admin/api/bookings/pending?limit=x"},
		{"GET", "/admin/api/bookings/pending?limit=5000"},
		{"POST", "/admin/api/bookings/post?workspace=shop"},
	} {
		code, body, _ := call(c.method, c.path, true)
		var e struct{ Error string }
		if code != http.StatusBadRequest || json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
			t.Errorf("%s %s: %d %s, want 400 with a JSON error", c.method, c.path, code, body)
		}
	}
	if code, _, hdr := call("GET", "/admin/api/bookings/post", true); code != http.StatusMethodNotAllowed || hdr.Get("Allow") != "POST" {
		t.Errorf("GET post: %d, Allow %q; want 405, Allow POST", code, hdr.Get("Allow"))
	}

	if _, err := pool.Exec(context.Background(), `INSERT INTO workspace_configs (ws_id, id, value) VALUES ($1, 'default_wallet_id', $2)`, fixable.WS, fixable.Wallet); err != nil {
		t.Fatal(err)
	}
	var report admin.PostReport
	code, body, _ = call("POST", "/admin/api/bookings/post", true)
	if err := json.Unmarshal([]byte(body), &report); code != http.StatusOK || err != nil || len(report.Posted) != 1 || len(report.Pending) != 1 ||
		report.Posted[0].SessionID != fixable.Session || report.Posted[0].Result != ledger.PostedPending || report.Posted[0].WalletID != fixable.Wallet ||
		report.Posted[0].TransactionID == nil || report.Pending[0].SessionID != never.Session || !strings.Contains(report.Pending[0].Note, "paid in GBP") {
		t.Fatalf("POST post: %d %s; want the fixed sale booked and the GBP one still pending, saying why", code, body)
	}
	if v := bookingsCounted(t, reg, "posted_pending"); v != 1 {
		t.Errorf("relay_ledger_bookings_total{result=posted_pending} = %v, want 1", v)
	}
	code, body, _ = call("POST", "/admin/api/bookings/post?workspace="+fixable.WS, true)
	if err := json.Unmarshal([]byte(body), &report); code != http.StatusOK || err != nil || len(report.Posted) != 0 || len(report.Pending) != 0 {
		t.Errorf("POST post for a workspace with nothing pending: %d %s", code, body)
	}
	if !strings.Contains(logs.String(), "pending booking posted") || !strings.Contains(logs.String(), "admin: pending bookings posted") {
		t.Errorf("log lacks the posting:\n%s", logs.String())
	}
}

// apiRequest sends a request to the admin API at srv, with the test's
// bearer token when auth is set and body as JSON unless it is empty.
func apiRequest(t *testing.T, srv *httptest.Server, method, path, body string, auth bool) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if auth {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header
}

// bookingsCounted is relay_ledger_bookings_total{result} in reg.
func bookingsCounted(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if mf.GetName() == "relay_ledger_bookings_total" && l.GetName() == "result" && l.GetValue() == result {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no relay_ledger_bookings_total{result=%q}", result)
	return 0
}
