package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/riverqueue/river/rivertype"

	"github.com/relayhq/relay/admin"
	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/internal/httpjson"
	"github.com/relayhq/relay/ledger"
	"github.com/relayhq/relay/polar"
)

// page is a template set: the layout and one page's content.
type page struct{ t *template.Template }

var funcs = template.FuncMap{
	"money": Money,
	"when": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			return v.UTC().Format("2006-01-02 15:04:05Z")
		case *time.Time:
			if v != nil {
				return v.UTC().Format("2006-01-02 15:04:05Z")
			}
		}
		return ""
	},
	"seg":   url.PathEscape,
	"short": func(s string) string { return s[:min(len(s), 8)] },
	"retryable": func(state string) bool {
		return slices.Contains([]string{"discarded", "cancelled", "retryable", "scheduled", "available"}, state)
	},
	"handled": polar.Handled,
	"lower":   strings.ToLower,
	"reason":  reason,
	"table": func(base string, rows []*Delivery) any {
		return struct {
			Base string
			Rows []*Delivery
		}{base, rows}
	},
	"pending": func(base string, rows []ledger.PendingBooking) any {
		return struct {
			Base string
			Rows []ledger.PendingBooking
		}{base, rows}
	},
	"jobs": func(base string, jobs []*Job) any {
		return struct {
			Base string
			Jobs []*Job
		}{base, jobs}
	},
}

func parsePages() (map[string]*page, error) {
	out := make(map[string]*page)
	for _, name := range []string{"deliveries", "delivery", "attention"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(files, "templates/layout.html", "templates/rows.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("parse console template %s: %w", name, err)
		}
		out[name] = &page{t: t}
	}
	return out, nil
}

// view is what every page gets.
type view struct {
	Title string
	// Base leads from the page to /admin/, wherever a proxy mounted it:
	// every link is relative.
	Base string
	Nav  string
	Data any
}

// base is the relative path from r's page to /admin/.
func base(r *http.Request) string {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), "/admin/")
	if n := strings.Count(rest, "/"); n > 0 {
		return strings.Repeat("../", n)
	}
	return "./"
}

func (c *Console) render(w http.ResponseWriter, r *http.Request, name string, v view) {
	v.Base = base(r)
	var buf bytes.Buffer
	if err := c.pages[name].t.Execute(&buf, v); err != nil {
		c.fail(w, r, fmt.Errorf("render %s: %w", name, err))
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	buf.WriteTo(w) //nolint:errcheck // the client went away
}

// fail answers a page request with an error page (a short text: the
// console's pages show their errors as text, without detail for the
// unexpected ones, which are logged).
func (c *Console) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := statusOf(err)
	if status == http.StatusInternalServerError {
		c.opts.Logger.Error("console request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	}
	if r.Method == http.MethodPost || strings.HasPrefix(r.Header.Get("Accept"), "application/json") {
		httpjson.Write(w, status, map[string]string{"error": msg})
		return
	}
	http.Error(w, msg, status)
}

func statusOf(err error) (int, string) {
	switch {
	case errors.Is(err, admin.ErrBadRequest), errors.Is(err, errSearchTimeout):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, admin.ErrNotFound):
		return http.StatusNotFound, err.Error()
	case errors.Is(err, admin.ErrConflict), errors.Is(err, admin.ErrNotReplayable):
		return http.StatusConflict, err.Error()
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, "request cancelled"
	}
	return http.StatusInternalServerError, "internal error; see the server log"
}

type option struct{ Value, Label string }

type deliveriesData struct {
	Filter     Filter
	Rows       []*Delivery
	Next       template.URL // the next page, "" on the last page
	Statuses   []string
	EventTypes []string
	Workspaces []option
}

func (c *Console) deliveries(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f := Filter{Status: q.Get("status"), EventType: q.Get("type"), Workspace: q.Get("workspace"),
		Search: strings.TrimSpace(q.Get("q")), Limit: 50}
	if b := q.Get("before"); b != "" {
		n, err := strconv.ParseInt(b, 10, 64)
		if err != nil || n <= 0 {
			c.fail(w, r, fmt.Errorf("%w: before %q is not a positive integer", admin.ErrBadRequest, b))
			return
		}
		f.Before = n
	}
	rows, err := c.store.list(r.Context(), f)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	workspaces, err := c.store.workspaces(r.Context())
	if err != nil {
		c.fail(w, r, err)
		return
	}
	types := polar.EventTypes()
	slices.Sort(types)
	d := deliveriesData{Filter: f, Rows: rows, Statuses: []string{"pending", "processed", "ignored", "invalid"},
		EventTypes: types, Workspaces: workspaces}
	if len(rows) == f.Limit {
		next := url.Values{"before": {strconv.FormatInt(rows[len(rows)-1].ID, 10)}}
		for k, v := range map[string]string{"status": f.Status, "type": f.EventType, "workspace": f.Workspace, "q": f.Search} {
			if v != "" {
				next.Set(k, v)
			}
		}
		d.Next = template.URL(base(r) + "?" + next.Encode()) // built from escaped parts
	}
	c.render(w, r, "deliveries", view{Title: "Deliveries", Nav: "deliveries", Data: d})
}

type deliveryData struct {
	*Delivery
	Detail  *admin.InboxDetail
	Jobs    []*Job
	Related []*Delivery // other deliveries of the same sale
}

func (c *Console) delivery(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("webhook_id")
	ds, err := c.store.byWebhookIDs(r.Context(), []string{id})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	ds = pickEndpoint(ds, r.URL.Query().Get("endpoint"))
	if len(ds) == 0 {
		c.fail(w, r, fmt.Errorf("%w: webhook %q not found in the inbox", admin.ErrNotFound, id))
		return
	}
	d := deliveryData{Delivery: ds[0]}
	// Always masked: unmasked payloads are for the CLI, which needs the
	// database's credentials, not for a browser.
	if d.Detail, err = c.ops.ShowInbox(r.Context(), id, ds[0].Endpoint(), false); err != nil {
		c.fail(w, r, err)
		return
	}
	if d.Jobs, err = c.store.jobsOf(r.Context(), ds[0]); err != nil {
		c.fail(w, r, err)
		return
	}
	if s := d.Sale; s != nil {
		related, err := c.store.list(r.Context(), Filter{Search: cmpOr(s.PolarOrder, s.SessionID), Limit: 20})
		if err != nil && !errors.Is(err, errSearchTimeout) {
			c.fail(w, r, err)
			return
		}
		for _, x := range related {
			if x.WebhookID != id || x.Endpoint() != d.Endpoint() {
				d.Related = append(d.Related, x)
			}
		}
	}
	c.render(w, r, "delivery", view{Title: "Delivery " + id, Nav: "deliveries", Data: d})
}

// pickEndpoint keeps the delivery of the endpoint named (a webhook id is
// unique per endpoint, inbox.Event.Endpoint), or with none named the
// platform's, which the console's links name by no endpoint, else the
// newest; ds is newest first.
func pickEndpoint(ds []*Delivery, endpoint string) []*Delivery {
	if endpoint == "" {
		i := slices.IndexFunc(ds, func(d *Delivery) bool { return d.WorkspaceID == "" })
		if i < 0 {
			i = 0
		}
		return ds[min(i, len(ds)):min(i+1, len(ds))]
	}
	return slices.DeleteFunc(ds, func(d *Delivery) bool { return d.Endpoint() != endpoint })
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// Section is one list of the Needs attention page. A new kind of problem
// (pending bookings, say) is one more entry in attentionSections.
type Section struct {
	Key, Title, Hint string
	Total            int
	Jobs             []*Job                   // job sections
	Deliveries       []*Delivery              // delivery sections
	Pending          []ledger.PendingBooking  // pending bookings
	Connections      []connections.Connection // Polar connections
	BulkRetry        bool                     // its jobs can be retried together
}

// More reports whether the section shows only the newest of its rows.
func (s Section) More() bool {
	return s.Total > len(s.Jobs)+len(s.Deliveries)+len(s.Pending)+len(s.Connections)
}

// attentionSections are the Needs attention page's lists, in order.
var attentionSections = []func(ctx context.Context, s *store, since time.Time) (Section, error){
	func(ctx context.Context, s *store, since time.Time) (Section, error) {
		js, n, err := s.jobsIn(ctx, string(rivertype.JobStateDiscarded), since, 100, false)
		return Section{Key: "discarded", Title: "Discarded jobs", Total: n, Jobs: js, BulkRetry: true,
			Hint: "Out of attempts. Fix the cause (a session the storefront wrote late, say), then retry: each gets one more attempt."}, err
	},
	func(ctx context.Context, s *store, since time.Time) (Section, error) {
		js, n, err := s.jobsIn(ctx, string(rivertype.JobStateCancelled), since, 100, true)
		return Section{Key: "refused", Title: "Refused events", Total: n, Jobs: js,
			Hint: "Events that can never apply as sent (another workspace, conflicting order): nothing was changed."}, err
	},
	func(ctx context.Context, s *store, _ time.Time) (Section, error) {
		// Every sale still pending, however old: money that moved and is
		// not in the ledger yet.
		ps, n, err := ledger.ListPending(ctx, s.pool, ledger.PendingFilter{Limit: 100})
		return Section{Key: "pending", Title: "Pending bookings", Total: n, Pending: ps,
			Hint: "Paid sales that could not be booked yet: no default wallet, another workspace's wallet, or another currency. " +
				"Fix the setting and each books itself within a minute, with its refunds reversed (relay bookings post tries now)."}, err
	},
	func(ctx context.Context, s *store, _ time.Time) (Section, error) {
		// Every connection that needs an operator now, however long ago
		// it went wrong: a workspace whose sales Polar may not be sending.
		all, err := connections.NewStore(s.pool, nil).List(ctx, "")
		var bad []connections.Connection
		for _, c := range all {
			failed := c.LastReconcile != nil && c.LastReconcile.Result != "ok"
			if failed || c.State == connections.StateDisabled || c.State == connections.StateMissing || c.State == connections.StateUnauthorized {
				bad = append(bad, c)
			}
		}
		return Section{Key: "connections", Title: "Polar connections", Total: len(bad), Connections: bad,
			Hint: "Endpoints Polar disabled (it then sends that workspace nothing) or that are missing, tokens Polar rejects, passes that failed. " +
				"relay connections list and relay reconcile --workspace WS --environment E --dry-run say more; relay connect with a new token fixes a rejected one."}, err
	},
}

type attentionData struct {
	Since, SinceLabel string
	Choices           []option
	Sections          []Section
}

var sinceChoices = []option{{"1h", "1 h"}, {"24h", "24 h"}, {"168h", "7 days"}, {"all", "all time"}}

// parseSince reads the since parameter: a duration back from now, or "all".
func parseSince(s string) (time.Time, string, error) {
	if s == "" {
		s = "24h"
	}
	if s == "all" {
		return time.Time{}, "all", nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, "", fmt.Errorf("%w: since %q: want a positive duration like 24h, or all", admin.ErrBadRequest, s)
	}
	return time.Now().Add(-d), s, nil
}

func sinceLabel(s string) string {
	for _, o := range sinceChoices {
		if o.Value == s {
			return o.Label
		}
	}
	return s
}

func (c *Console) attention(w http.ResponseWriter, r *http.Request) {
	since, key, err := parseSince(r.URL.Query().Get("since"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	d := attentionData{Since: key, SinceLabel: sinceLabel(key), Choices: sinceChoices}
	for _, load := range attentionSections {
		s, err := load(r.Context(), c.store, since)
		if err != nil {
			c.fail(w, r, err)
			return
		}
		d.Sections = append(d.Sections, s)
	}
	c.render(w, r, "attention", view{Title: "Needs attention", Nav: "attention", Data: d})
}

var discarded = admin.JobFilter{States: []rivertype.JobState{rivertype.JobStateDiscarded}}

// previewRetry counts what a bulk retry would retry, and asks.
func (c *Console) previewRetry(w http.ResponseWriter, r *http.Request) {
	since, key, err := parseSince(r.URL.Query().Get("since"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	n, err := c.ops.RetryMatching(r.Context(), discarded, since, true, func(admin.Job) {})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	q := fmt.Sprintf("Retry %d discarded %s since %s?", n, plural(n, "job", "jobs"), sinceLabel(key))
	if key == "all" {
		q = fmt.Sprintf("Retry all %d discarded %s?", n, plural(n, "job", "jobs"))
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"count": n, "question": q})
}

func (c *Console) bulkRetry(w http.ResponseWriter, r *http.Request) {
	since, key, err := parseSince(r.FormValue("since"))
	if err != nil {
		c.fail(w, r, err)
		return
	}
	n, err := c.ops.RetryMatching(r.Context(), discarded, since, false, func(admin.Job) {})
	c.opts.Logger.Info("console: discarded jobs retried", "count", n, "since", key, "remote", r.RemoteAddr)
	if err != nil {
		c.fail(w, r, fmt.Errorf("after retrying %d: %w", n, err))
		return
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"count": n,
		"message": fmt.Sprintf("Retried %d discarded %s; each gets one more attempt.", n, plural(n, "job", "jobs"))})
}

func (c *Console) replay(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("webhook_id")
	ds, err := c.store.byWebhookIDs(r.Context(), []string{id})
	if err != nil {
		c.fail(w, r, err)
		return
	}
	endpoint := r.URL.Query().Get("endpoint")
	if picked := pickEndpoint(ds, endpoint); len(picked) == 1 {
		endpoint = picked[0].Endpoint()
	}
	jobID, err := c.ops.Replay(r.Context(), id, endpoint)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.opts.Logger.Info("console: webhook replayed", "webhook_id", id, "job_id", jobID, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusAccepted, map[string]any{"job_id": jobID,
		"message": fmt.Sprintf("Replayed: job %d will apply the event again.", jobID)})
}

func (c *Console) retryJob(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		c.fail(w, r, fmt.Errorf("%w: job id %q is not a positive integer", admin.ErrBadRequest, r.PathValue("id")))
		return
	}
	job, err := c.ops.RetryJob(r.Context(), id)
	if err != nil {
		c.fail(w, r, err)
		return
	}
	c.opts.Logger.Info("console: job retried", "job_id", id, "webhook_id", job.WebhookID, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusOK, map[string]any{"job_id": id, "state": job.State,
		"message": fmt.Sprintf("Job %d is %s: it runs again now.", id, job.State)})
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
