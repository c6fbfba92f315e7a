package admin

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/relayhq/relay/internal/httpjson"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/ledger"
)

// PendingList is a page of pending bookings.
type PendingList struct {
	Pending []ledger.PendingBooking `json:"pending"`
	// Total is how many the filter selects without the limit.
	Total int `json:"total"`
}

// ListPending returns pending bookings, oldest first; Limit defaults to 50.
func (o *Ops) ListPending(ctx context.Context, f ledger.PendingFilter) (PendingList, error) {
	limit, err := CheckLimit(f.Limit)
	if err != nil {
		return PendingList{}, err
	}
	f.Limit = limit
	list, total, err := ledger.ListPending(ctx, o.Pool, f)
	if err != nil {
		return PendingList{}, badInput(err)
	}
	if list == nil {
		list = []ledger.PendingBooking{}
	}
	return PendingList{Pending: list, Total: total}, nil
}

// PostReport is what a post did: the sales it booked (or closed, booked
// before) and those still pending, with why.
type PostReport struct {
	Posted  []ledger.PostResult `json:"posted"`
	Pending []ledger.PostResult `json:"pending"`
}

// PostPending tries now to book the pending sales of workspace (empty: of
// all workspaces), as relay's periodic job does (jobs.PostPending). The
// report holds what was done also when some sales failed.
func (o *Ops) PostPending(ctx context.Context, workspace string) (PostReport, error) {
	results, err := jobs.PostPending(ctx, o.Pool, o.Metrics, o.Logger, workspace)
	r := PostReport{Posted: []ledger.PostResult{}, Pending: []ledger.PostResult{}}
	for _, res := range results {
		if res.Posted() {
			r.Posted = append(r.Posted, res)
		} else {
			r.Pending = append(r.Pending, res)
		}
	}
	return r, badInput(err)
}

// badInput makes the ledger's invalid input a bad request.
func badInput(err error) error {
	if errors.Is(err, ledger.ErrInvalidInput) {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return err
}

// mountBookings adds the pending bookings routes: the same operations as
// `relay bookings`.
func mountBookings(mux *http.ServeMux, a *api) {
	mux.HandleFunc("GET /admin/api/bookings/pending", a.listPending)
	mux.HandleFunc("POST /admin/api/bookings/post", a.postPending)
}

func (a *api) listPending(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, err := queryInt(q.Get("limit"))
	if err != nil {
		a.fail(w, r, err)
		return
	}
	list, err := a.ops.ListPending(r.Context(), ledger.PendingFilter{WorkspaceID: q.Get("workspace"), Reason: q.Get("reason"), Limit: limit})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	httpjson.Write(w, http.StatusOK, list)
}

func (a *api) postPending(w http.ResponseWriter, r *http.Request) {
	workspace := r.URL.Query().Get("workspace")
	report, err := a.ops.PostPending(r.Context(), workspace)
	if err != nil {
		// Sales posted before the failure stay posted; the log has them.
		a.fail(w, r, err)
		return
	}
	a.logger.Info("admin: pending bookings posted", "workspace", workspace, "posted", len(report.Posted),
		"still_pending", len(report.Pending), "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusOK, report)
}
