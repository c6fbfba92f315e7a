// Package console is relay's web console on the admin listener: the
// deliveries relay received, what each did to the ledger, the jobs that
// need an operator, and a live stream of changes. It answers "Polar says it
// delivered order X: what did relay do with it?" on one page.
//
// Pages are rendered on the server with html/template; one small script
// (no build step) keeps them live over server-sent events and asks before
// every action. Actions go through admin.Ops, so they follow the same rules
// as the CLI and the admin API. The console renders no secret and only
// masked payloads.
package console

import (
	"embed"
	"io/fs"
	"log/slog"
	"net/http"
	"time"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/internal/httpjson"
)

//go:embed templates/*.html static/*
var files embed.FS

// Options tune a Console. Zero values take the defaults.
type Options struct {
	Logger *slog.Logger
	// PollInterval is how often the stream looks for changes. Default 1 s.
	PollInterval time.Duration
	// Heartbeat is how often an idle stream sends a comment line, so that
	// proxies keep it open. Default 15 s.
	Heartbeat time.Duration
	// Lookback is how far before the previous poll each poll looks again:
	// rows carry their transaction's start time and commit later. Default 5 s.
	Lookback time.Duration
	// WriteTimeout bounds each write to a stream; a client that does not
	// read within it is disconnected. Default 10 s.
	WriteTimeout time.Duration
}

// Console serves the console's pages and stream. Mount it on the admin
// handler's mux, behind the admin credentials, and Run it.
type Console struct {
	ops   *admin.Ops
	store *store
	opts  Options
	hub   *hub
	pages map[string]*page
	files fs.FS
}

// New returns a console that acts through ops and reads ops.Pool.
func New(ops *admin.Ops, opts Options) (*Console, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	defaults := []struct {
		v *time.Duration
		d time.Duration
	}{{&opts.PollInterval, time.Second}, {&opts.Heartbeat, 15 * time.Second}, {&opts.Lookback, 5 * time.Second}, {&opts.WriteTimeout, 10 * time.Second}}
	for _, d := range defaults {
		if *d.v <= 0 {
			*d.v = d.d
		}
	}
	pages, err := parsePages()
	if err != nil {
		return nil, err
	}
	static, err := fs.Sub(files, "static")
	if err != nil {
		return nil, err
	}
	return &Console{ops: ops, store: &store{pool: ops.Pool}, opts: opts, hub: newHub(), pages: pages, files: static}, nil
}

// Mount adds the console's routes to mux: the pages under /admin/ and the
// stream at /admin/api/stream. The caller puts mux behind the admin
// credentials.
func (c *Console) Mount(mux *http.ServeMux) {
	get := func(pattern string, h http.HandlerFunc) { mux.Handle("GET "+pattern, secure(h)) }
	post := func(pattern string, h http.HandlerFunc) { mux.Handle("POST "+pattern, secure(guard(h))) }
	get("/admin/{$}", c.deliveries)
	get("/admin/deliveries/{webhook_id}", c.delivery)
	get("/admin/attention", c.attention)
	get("/admin/attention/retry", c.previewRetry)
	get("/admin/static/", http.StripPrefix("/admin/static/", http.FileServerFS(c.files)).ServeHTTP)
	get("/admin/api/stream", c.stream)
	post("/admin/deliveries/{webhook_id}/replay", c.replay)
	post("/admin/jobs/{id}/retry", c.retryJob)
	post("/admin/attention/retry", c.bulkRetry)
}

// ContentSecurityPolicy is sent with every console response: the console's
// own script and style only, nothing inline, no framing.
const ContentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// ActionHeader must be on every POST to the console. The console's script
// sets it; a cross-site form cannot, and a cross-site script could only
// after a CORS preflight that relay never answers.
const ActionHeader = "X-Relay-Console"

func secure(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", ContentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// guard refuses cross-site POSTs: by the browser's Sec-Fetch-Site or Origin
// (net/http's CrossOriginProtection), and unless the console's header is
// set. Browsers send basic credentials by themselves, so without this a
// page elsewhere could replay or retry on an operator's behalf.
func guard(next http.Handler) http.Handler {
	cop := http.NewCrossOriginProtection()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := cop.Check(r); err != nil {
			httpjson.Write(w, http.StatusForbidden, map[string]string{"error": "cross-origin request refused"})
			return
		}
		if r.Header.Get(ActionHeader) != "1" {
			httpjson.Write(w, http.StatusForbidden, map[string]string{"error": "missing " + ActionHeader + " header: use the console's buttons"})
			return
		}
		next.ServeHTTP(w, r)
	})
}
