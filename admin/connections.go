package admin

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/httpjson"
)

// connectionsAPI serves workspaces' Polar connections: the same operations
// as `relay connect`, `relay connections list` and `relay disconnect`, and
// like them, never answers with a token or a secret.
type connectionsAPI struct {
	*api
	conn *connections.Connector
}

func mountConnections(mux *http.ServeMux, a *api, conn *connections.Connector) {
	if conn == nil {
		return
	}
	c := &connectionsAPI{api: a, conn: conn}
	mux.HandleFunc("GET /admin/api/connections", c.list)
	mux.HandleFunc("POST /admin/api/connections", c.connect)
	mux.HandleFunc("DELETE /admin/api/connections/{workspace}/{environment}", c.remove)
}

func (c *connectionsAPI) list(w http.ResponseWriter, r *http.Request) {
	list, err := c.conn.Store.List(r.Context(), r.URL.Query().Get("workspace"))
	if err != nil {
		c.failConnection(w, r, err)
		return
	}
	if list == nil {
		list = []connections.Connection{}
	}
	httpjson.Write(w, http.StatusOK, map[string]any{"connections": list})
}

func (c *connectionsAPI) connect(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Workspace   string `json:"workspace"`
		Environment string `json:"environment"`
		Token       string `json:"token"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxEndpointBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil || dec.More() {
		// The decoder's message may quote the body, which holds the token.
		writeError(w, http.StatusBadRequest, `request body must be one JSON object {"workspace", "environment", "token"}`)
		return
	}
	res, err := c.conn.Connect(r.Context(), req.Workspace, req.Environment, req.Token)
	if err != nil {
		c.failConnection(w, r, err)
		return
	}
	cn := res.Connection
	c.logger.Info("admin: workspace connected to Polar", "workspace", cn.Workspace, "environment", cn.Environment,
		"endpoint_action", res.Endpoint, "endpoint_state", cn.State, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusCreated, res)
}

func (c *connectionsAPI) remove(w http.ResponseWriter, r *http.Request) {
	cn, err := c.conn.Store.Remove(r.Context(), r.PathValue("workspace"), r.PathValue("environment"))
	if err != nil {
		c.failConnection(w, r, err)
		return
	}
	c.logger.Info("admin: workspace disconnected from Polar", "workspace", cn.Workspace, "environment", cn.Environment, "remote", r.RemoteAddr)
	httpjson.Write(w, http.StatusOK, map[string]any{"connection": cn})
}

// failConnection answers with the API's statuses: a token Polar refuses
// is the caller's to fix (422); anything else is relay's (500).
func (c *connectionsAPI) failConnection(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, connections.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, connections.ErrNotFound):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, connections.ErrTokenRefused):
		writeError(w, http.StatusUnprocessableEntity, err.Error())
	case errors.Is(err, endpoints.ErrNoKey):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		c.fail(w, r, err)
	}
}
