package console_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/relayhq/relay/internal/testkit"
)

// chromium is Debian's package, which make test installs when it is
// missing (scripts/apt-install.sh chromium, which make test runs).
const chromium = "/usr/bin/chromium"

// browser starts a headless chromium that sends the admin credentials with
// every request, and returns its tab.
func browser(t *testing.T) context.Context {
	t.Helper()
	if _, err := os.Stat(chromium); err != nil {
		t.Fatalf("%s: %v: the console's browser test needs Debian's chromium (make test installs it: scripts/apt-install.sh chromium)", chromium, err)
	}
	// The machine may have no outside network: without these flags
	// chromium keeps trying to reach Google's services.
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true), // tests run as root
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.WindowSize(1280, 640),
	)
	ctx, cancel := chromedp.NewContext(allocCtx, chromedp.WithLogf(t.Logf))
	t.Cleanup(func() { cancel(); cancelAlloc() })
	auth := "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
		Headers: network.Headers{"Authorization": auth}}); err != nil {
		t.Fatalf("set the credentials: %v", err)
	}
	return ctx
}

// step runs browser actions, failing the test with what it was doing.
func step(t *testing.T, ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		html, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
		t.Fatalf("%s: %v\npage text:\n%s", what, err, html)
	}
}

// until waits for a JavaScript condition on the page, also across a
// navigation, which ends the page's JavaScript context under a poll: it
// polls again until its time is up.
func until(expr string) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		deadline := time.Now().Add(25 * time.Second)
		for {
			_, err := chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(time.Until(deadline)))(ctx, t)
			switch {
			case err == nil:
				return chromedp.Void{}, nil
			case time.Now().After(deadline) || ctx.Err() != nil:
				return chromedp.Void{}, fmt.Errorf("waiting for %s: %w", expr, err)
			}
			time.Sleep(50 * time.Millisecond) // the next page is loading
		}
	}
}

// click clicks the element once it is there and the page's script has
// run (console.js is deferred: a fresh page's buttons exist before their
// handler does, and a click then is lost). Live regions are swapped when
// the stream says something changed, so the element is found and clicked
// in one step in the page.
func click(selector string) chromedp.Action[chromedp.Void] {
	return until(fmt.Sprintf(`(() => {
		if (document.body?.dataset.ready !== 'true') return false;
		const el = document.querySelector(%q);
		if (el) el.click();
		return el !== null;
	})()`, selector))
}

// textIn is a JavaScript condition: the element has the text.
func textIn(selector, text string) string {
	return fmt.Sprintf(`(document.querySelector(%q)?.textContent ?? '').includes(%q)`, selector, text)
}

// screenshot saves the page to docs/ when RELAY_UPDATE_SCREENSHOTS=1, so
// that the suite does not change the tree.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if os.Getenv("RELAY_UPDATE_SCREENSHOTS") != "1" {
		return
	}
	if err := os.WriteFile(filepath.Join(testkit.RepoRoot(), "docs", name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The issue's own steps, in a real browser behind a proxy that mounts the
// admin listener under /relay/: open the console, see a paid order arrive
// live with its booking, replay it and see the outcome, find discarded jobs
// under Needs attention and retry them, one by its button, one in bulk.
func TestBrowser(t *testing.T) {
	s := startSystem(t, 1) // one attempt: an order without its session is discarded at once
	target, err := url.Parse(s.admin.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) {
		r.SetURL(target)
		r.SetXForwarded()
		r.Out.Header.Set("X-Forwarded-Prefix", "/relay")
	}}
	front := httptest.NewServer(http.StripPrefix("/relay", proxy))
	t.Cleanup(front.Close)
	console := front.URL + "/relay/admin/"

	shop := testkit.SeedShop(t, s.pool, testkit.ShopOptions{})
	late1 := testkit.SeedShop(t, s.pool, testkit.ShopOptions{LateSession: true})
	late2 := testkit.SeedShop(t, s.pool, testkit.ShopOptions{LateSession: true})
	s.send(t, "msg_late_1", testkit.Event(t, "order.paid.json", late1.Sale("ord_late_1"), nil))
	s.send(t, "msg_late_2", testkit.Event(t, "order.paid.json", late2.Sale("ord_late_2"), nil))
	s.send(t, "msg_customer", testkit.Fixture(t, "customer.created.json"))
	waitPage(t, s.admin.URL+"/admin/attention", "deliveries/msg_late_1", "deliveries/msg_late_2")

	ctx := browser(t)
	step(t, ctx, "open the console",
		chromedp.Navigate(console),
		chromedp.WaitVisible(chromedp.CSS(`tr[data-key="msg_customer"]`)),
		until(`document.querySelector('#live.on') !== null`))

	// A paid order sent now, with `relay send`, appears without a reload,
	// with its booking.
	relaySend(t, s.hookURL, "msg_paid", testkit.Event(t, "order.updated.paid.json", shop.Sale("ord_browser"), nil))
	step(t, ctx, "see the paid order appear live",
		until(textIn(`tr[data-key="msg_paid"] td.effect`, "session completed, 49.50 USD booked")))
	screenshot(t, ctx, "console-deliveries.png")

	step(t, ctx, "open the delivery",
		click(`tr[data-key="msg_paid"] a`),
		until(textIn("#effect", "session completed, 49.50 USD booked")),
		until(textIn("#sale", "49.50 USD")),
		until(textIn("#sale", "Polar order ord_browser")),
		until(textIn("#payload", `"email": "***"`)))
	page, err := chromedp.Run(ctx, chromedp.Evaluate[string]("document.documentElement.outerHTML"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(page, "shopper@example.com") {
		t.Error("the delivery page shows the customer's e-mail address")
	}
	if u, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("location.pathname")); u != "/relay/admin/deliveries/msg_paid" {
		t.Errorf("the delivery's link led to %s, want /relay/admin/deliveries/msg_paid", u)
	}

	step(t, ctx, "replay it and see the outcome",
		click("#replay"),
		until(textIn("#confirm-question", "Replay msg_paid?")),
		click("#confirm-ok"),
		until(textIn("#outcome", "Replayed: job")),
		until(`document.querySelectorAll('#jobs tr[data-key^="job-"]').length === 2`),
		until(textIn("#effect", "already booked (49.50 USD), nothing new")))
	screenshot(t, ctx, "console-delivery.png")

	// Needs attention: the discarded jobs; their sessions arrive late.
	late1.OpenSession(t, s.pool)
	late2.OpenSession(t, s.pool)
	step(t, ctx, "find the discarded jobs",
		click(`nav a[href$="attention"]`),
		until(textIn("#sec-discarded", "msg_late_1")),
		until(textIn("#sec-discarded", "msg_late_2")))
	step(t, ctx, "retry one with its button",
		click(`#sec-discarded tr:has(a[href$="msg_late_1"]) button`),
		until(textIn("#confirm-question", "with one more attempt")),
		click("#confirm-ok"),
		until(textIn("#outcome", "runs again now")),
		until(`!`+textIn("#sec-discarded", "msg_late_1")))
	step(t, ctx, "retry the rest in bulk after the count",
		click("#retry-discarded"),
		until(textIn("#confirm-question", "Retry 1 discarded job since 24 h?")),
		click("#confirm-ok"),
		until(textIn("#outcome", "Retried 1 discarded job")),
		until(textIn("#sec-discarded", "None")))
	for _, id := range []string{"msg_late_1", "msg_late_2"} {
		step(t, ctx, "see "+id+" booked",
			chromedp.Navigate(console+"deliveries/"+id),
			until(textIn("#effect", "session completed, 49.50 USD booked")))
	}
}

// relaySend delivers body with the relay binary's own `relay send`, as an
// admin following the README would.
func relaySend(t *testing.T, hookURL, webhookID string, body []byte) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "relay")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/relayhq/relay/cmd/relay").CombinedOutput(); err != nil {
		t.Fatalf("build relay: %v\n%s", err, out)
	}
	file := filepath.Join(dir, "order.json")
	if err := os.WriteFile(file, body, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "send", "--url", hookURL, "--secret", secret, "--id", webhookID, file).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "200") {
		t.Fatalf("relay send: %v\n%s", err, out)
	}
}
