package admin

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/relayhq/relay/internal/httpjson"
	"github.com/relayhq/relay/reconcile"
)

// reconcileAPI runs a reconciliation pass on demand, as `relay reconcile`.
type reconcileAPI struct {
	*api
	r *reconcile.Reconciler
}

func mountReconcile(mux *http.ServeMux, a *api, r *reconcile.Reconciler) {
	if r == nil {
		return
	}
	c := &reconcileAPI{api: a, r: r}
	mux.HandleFunc("POST /admin/api/reconcile", c.reconcile)
}

// reconcile runs one pass of a connection now: {"workspace", "environment",
// "since" (a duration, optional), "dry_run"}; it answers the pass's report.
func (c *reconcileAPI) reconcile(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Workspace   string `json:"workspace"`
		Environment string `json:"environment"`
		Since       string `json:"since"`
		DryRun      bool   `json:"dry_run"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 4<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		writeError(w, http.StatusBadRequest, `request body must be one JSON object {"workspace", "environment", "since", "dry_run"}`)
		return
	}
	var since time.Duration
	if req.Since != "" {
		d, err := time.ParseDuration(req.Since)
		if err != nil || d <= 0 {
			writeError(w, http.StatusBadRequest, `"since" must be a positive duration such as 72h`)
			return
		}
		since = d
	}
	rep, err := c.r.Reconcile(r.Context(), req.Workspace, req.Environment, reconcile.Options{Since: since, DryRun: req.DryRun})
	if err != nil {
		(&connectionsAPI{api: c.api}).failConnection(w, r, err)
		return
	}
	c.logger.Info("admin: reconciliation pass", "workspace", rep.Workspace, "environment", rep.Environment,
		"result", rep.Result, "findings", len(rep.Findings), "dry_run", rep.DryRun, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusOK, rep)
}
