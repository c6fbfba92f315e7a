package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
	"riverqueue.com/riverui"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/httpjson"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/reconcile"
)

// UIPrefix is where River UI is mounted.
const UIPrefix = "/riverui"

// Credentials admit an operator: a bearer token, HTTP basic auth, or both.
type Credentials struct {
	Token    string
	User     string
	Password string
}

// Configured reports whether any credential is set; without one the admin
// routes must not be mounted at all.
func (c Credentials) Configured() bool {
	return c.Token != "" || (c.User != "" && c.Password != "")
}

// Options configure NewHandler.
type Options struct {
	Credentials Credentials
	Logger      *slog.Logger
	Endpoints   *endpoints.Store // nil: no /admin/api/endpoints routes
	// Connections connects workspaces to Polar; nil: no
	// /admin/api/connections routes.
	Connections *connections.Connector
	// Reconciler runs POST /admin/api/reconcile; nil: no such route.
	Reconciler *reconcile.Reconciler
	// Console adds its routes under /admin/ (package console), behind the
	// same credentials; nil: none.
	Console interface{ Mount(*http.ServeMux) }
	Metrics *jobs.Metrics // counts what POST /admin/api/bookings/post books; nil: not counted
}

// Handler serves the JSON API under /admin/api/ and River UI under
// /riverui/, all behind the credentials. Start it before serving.
type Handler struct {
	ui      *riverui.Handler
	handler http.Handler
}

// NewHandler builds the admin routes. It refuses to build them without
// credentials: River UI has no authentication of its own.
func NewHandler(pool *pgxpool.Pool, client *river.Client[pgx.Tx], opts Options) (*Handler, error) {
	if !opts.Credentials.Configured() {
		return nil, errors.New("admin handler: no credentials configured")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	ui, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints: riverui.NewEndpoints(client, nil),
		Logger:    opts.Logger.With("component", "riverui"),
		Prefix:    UIPrefix,
		DevMode:   false,
	})
	if err != nil {
		return nil, fmt.Errorf("create River UI: %w", err)
	}
	a := &api{ops: &Ops{Pool: pool, Client: client, Metrics: opts.Metrics, Logger: opts.Logger}, logger: opts.Logger}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /admin/api/jobs", a.listJobs)
	mux.HandleFunc("POST /admin/api/jobs/{id}/retry", a.retryJob)
	mux.HandleFunc("POST /admin/api/jobs/{id}/cancel", a.cancelJob)
	mux.HandleFunc("DELETE /admin/api/jobs/{id}", a.deleteJob)
	mux.HandleFunc("GET /admin/api/inbox", a.listInbox)
	mux.HandleFunc("GET /admin/api/inbox/{webhook_id}", a.showInbox)
	mux.HandleFunc("POST /admin/api/inbox/{webhook_id}/replay", a.replay)
	mountEndpoints(mux, a, opts.Endpoints)
	mountConnections(mux, a, opts.Connections)
	mountReconcile(mux, a, opts.Reconciler)
	if opts.Console != nil {
		opts.Console.Mount(mux)
	}
	mountBookings(mux, a)
	mux.HandleFunc("/admin/", func(w http.ResponseWriter, r *http.Request) {
		// This pattern matches every method, so ServeMux never answers 405
		// under /admin/ by itself: ask it which methods the path has.
		if allow := allowedMethods(mux, r); len(allow) > 0 {
			w.Header().Set("Allow", strings.Join(allow, ", "))
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s is not allowed here; allowed: %s", r.Method, strings.Join(allow, ", ")))
			return
		}
		writeError(w, http.StatusNotFound, "no such admin route")
	})
	// River UI strips its own prefix: no http.StripPrefix here.
	mux.Handle(UIPrefix+"/", ui)

	// Browsers send basic credentials on their own, so a cross-site form
	// could otherwise retry or cancel jobs on an operator's behalf.
	protected := http.NewCrossOriginProtection().Handler(mux)
	return &Handler{ui: ui, handler: requireAuth(opts.Credentials, protected)}, nil
}

// allowedMethods returns the methods that have a route for r's path on mux,
// other than the catch-all "/admin/".
func allowedMethods(mux *http.ServeMux, r *http.Request) []string {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodDelete} {
		probe := r.WithContext(r.Context()) // a shallow copy
		probe.Method = m
		if _, pattern := mux.Handler(probe); pattern != "" && pattern != "/admin/" {
			allow = append(allow, m)
		}
	}
	return allow
}

// Start starts River UI's background services; they stop with ctx.
func (h *Handler) Start(ctx context.Context) error {
	if err := h.ui.Start(ctx); err != nil {
		return fmt.Errorf("start River UI: %w", err)
	}
	return nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.handler.ServeHTTP(w, r) }

// requireAuth admits requests with the bearer token or the basic
// credentials. Hashes are compared so neither the content nor the length of
// a secret leaks through timing.
func requireAuth(c Credentials, next http.Handler) http.Handler {
	hash := func(s string) [32]byte { return sha256.Sum256([]byte(s)) }
	token, user, pass := hash(c.Token), hash(c.User), hash(c.Password)
	basicOn := c.User != "" && c.Password != ""
	var challenges []string
	if c.Token != "" {
		challenges = append(challenges, `Bearer realm="relay admin"`)
	}
	if basicOn {
		challenges = append(challenges, `Basic realm="relay admin", charset="UTF-8"`)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ok := false
		auth := r.Header.Get("Authorization")
		if scheme, cred, found := strings.Cut(auth, " "); found && strings.EqualFold(scheme, "Bearer") && c.Token != "" {
			got := hash(strings.TrimSpace(cred))
			ok = subtle.ConstantTimeCompare(got[:], token[:]) == 1
		} else if u, p, isBasic := r.BasicAuth(); isBasic && basicOn {
			gu, gp := hash(u), hash(p)
			ok = subtle.ConstantTimeCompare(gu[:], user[:])&subtle.ConstantTimeCompare(gp[:], pass[:]) == 1
		}
		if !ok {
			for _, ch := range challenges {
				w.Header().Add("WWW-Authenticate", ch)
			}
			writeError(w, http.StatusUnauthorized, "authentication required")
			return
		}
		next.ServeHTTP(w, r)
	})
}

type api struct {
	ops    *Ops
	logger *slog.Logger
}

func (a *api) listJobs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	states, err := ParseStates(q.Get("state"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	limit, err := queryInt(q.Get("limit"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var kinds []string
	for k := range strings.SplitSeq(q.Get("kind"), ",") {
		if k = strings.TrimSpace(k); k != "" {
			kinds = append(kinds, k)
		}
	}
	list, err := a.ops.ListJobs(r.Context(), JobFilter{States: states, Kinds: kinds, Limit: limit})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"jobs": list})
}

func (a *api) retryJob(w http.ResponseWriter, r *http.Request) {
	a.jobAction(w, r, "retried", a.ops.RetryJob)
}

func (a *api) cancelJob(w http.ResponseWriter, r *http.Request) {
	a.jobAction(w, r, "cancelled", a.ops.CancelJob)
}

func (a *api) deleteJob(w http.ResponseWriter, r *http.Request) {
	a.jobAction(w, r, "deleted", a.ops.DeleteJob)
}

func (a *api) jobAction(w http.ResponseWriter, r *http.Request, verb string, do func(context.Context, int64) (Job, error)) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		a.fail(w, r, fmt.Errorf("%w: job id %q is not a positive integer", ErrBadRequest, r.PathValue("id")))
		return
	}
	job, err := do(r.Context(), id)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.logger.Info("admin: job "+verb, "job_id", id, "state", job.State, "webhook_id", job.WebhookID, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusOK, map[string]any{"job": job})
}

func (a *api) listInbox(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := queryInt(q.Get("limit"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	list, err := a.ops.ListInbox(r.Context(), inbox.ListParams{Status: q.Get("status"), EventType: q.Get("type"), Limit: limit})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"events": list})
}

// showInbox always masks: unmasked payloads are for the CLI, which needs
// database credentials, not for a browser session.
func (a *api) showInbox(w http.ResponseWriter, r *http.Request) {
	d, err := a.ops.ShowInbox(r.Context(), r.PathValue("webhook_id"), r.URL.Query().Get("endpoint"), false)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, d)
}

func (a *api) replay(w http.ResponseWriter, r *http.Request) {
	webhookID := r.PathValue("webhook_id")
	jobID, err := a.ops.Replay(r.Context(), webhookID, r.URL.Query().Get("endpoint"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	a.logger.Info("admin: webhook replayed", "webhook_id", webhookID, "job_id", jobID, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusAccepted, map[string]any{"webhook_id": webhookID, "job_id": jobID})
}

// fail answers with the status the error calls for; unexpected errors are
// logged (they carry ids, never payloads) and answered without detail.
func (a *api) fail(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, ErrBadRequest):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrConflict), errors.Is(err, ErrNotReplayable):
		writeError(w, http.StatusConflict, err.Error())
	case r.Context().Err() != nil:
		writeError(w, http.StatusServiceUnavailable, "request cancelled")
	default:
		a.logger.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "error", err)
		writeError(w, http.StatusInternalServerError, "internal error; see the server log")
	}
}

func queryInt(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%w: limit %q is not a whole number", ErrBadRequest, s)
	}
	return n, nil
}

func writeError(w http.ResponseWriter, status int, msg string) {
	httpjson.Write(w, status, map[string]string{"error": msg})
}
