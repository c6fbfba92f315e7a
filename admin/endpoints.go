package admin

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/httpjson"
)

// maxEndpointBody bounds a POST /admin/api/endpoints body.
const maxEndpointBody = 64 << 10

// endpointsAPI serves workspace endpoint secrets: the same operations as
// `relay endpoints`, and like it, never answers with a secret.
type endpointsAPI struct {
	*api
	store *endpoints.Store
}

// mountEndpoints adds the endpoint secret routes; without a store there
// are none.
func mountEndpoints(mux *http.ServeMux, a *api, store *endpoints.Store) {
	if store == nil {
		return
	}
	e := &endpointsAPI{api: a, store: store}
	mux.HandleFunc("GET /admin/api/endpoints", e.list)
	mux.HandleFunc("POST /admin/api/endpoints", e.add)
	mux.HandleFunc("DELETE /admin/api/endpoints/{id}", e.remove)
}

func (e *endpointsAPI) list(w http.ResponseWriter, r *http.Request) {
	list, err := e.store.List(r.Context(), r.URL.Query().Get("workspace"))
	if err != nil {
		e.failEndpoint(w, r, err)
		return
	}
	if list == nil {
		list = []endpoints.Secret{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"endpoints": list})
}

func (e *endpointsAPI) add(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Workspace   string `json:"workspace"`
		Environment string `json:"environment"`
		Secret      string `json:"secret"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxEndpointBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		// The decoder's message may quote the body, which holds the secret.
		writeError(w, http.StatusBadRequest, `request body must be one JSON object {"workspace", "environment", "secret"}`)
		return
	}
	sec, err := e.store.Add(r.Context(), req.Workspace, req.Environment, req.Secret)
	if err != nil {
		e.failEndpoint(w, r, err)
		return
	}
	e.logger.Info("admin: endpoint secret added", "secret_id", sec.ID, "workspace", sec.Workspace, "environment", sec.Environment, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusCreated, sec)
}

func (e *endpointsAPI) remove(w http.ResponseWriter, r *http.Request) {
	removed, err := e.store.Remove(r.Context(), r.PathValue("id"))
	if err != nil {
		e.failEndpoint(w, r, err)
		return
	}
	sec := removed[0]
	e.logger.Info("admin: endpoint secret removed", "secret_id", sec.ID, "workspace", sec.Workspace, "environment", sec.Environment, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusOK, map[string]any{"endpoint": sec})
}

// failEndpoint answers the store's errors with the API's statuses; the
// store's messages never hold a secret.
func (e *endpointsAPI) failEndpoint(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, endpoints.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, endpoints.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, endpoints.ErrNoKey):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		e.fail(w, r, err)
	}
}
