package connections

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/polarapi"
)

// Connector connects a workspace to its Polar organization: it checks the
// token with Polar, registers (or finds and updates) relay's webhook
// endpoint there when it can, stores the endpoint's secret as the
// workspace's webhook secret and the token as its connection. `relay
// connect` and POST /admin/api/connections both use it.
type Connector struct {
	Store   *Store
	Secrets *endpoints.Store // where the endpoint's secret goes, as `relay endpoints add` puts it
	API     polarapi.Config
	// Clients, when set, gives the client of a token (sharing its
	// organization's budget with the rest of the process); else one is
	// made from API.
	Clients *polarapi.Clients
	// PublicURL is the base URL Polar reaches relay at (RELAY_PUBLIC_URL);
	// without it relay registers no endpoint.
	PublicURL   string
	WebhookPath string // RELAY_WEBHOOK_PATH; /webhooks/polar when ""
	// AfterConnect, when set, runs once the connection is stored (relay
	// asks for a reconciliation pass of it); its line is one more step.
	// Its failure is told as a step: the connection is stored either way.
	AfterConnect func(ctx context.Context, c Connection) (string, error)
}

// ConnectResult says what Connect did, step by step.
type ConnectResult struct {
	Connection Connection `json:"connection"`
	// Endpoint is what was done at Polar: created, updated, or "" (none).
	Endpoint    string `json:"endpoint_action,omitempty"`
	EndpointURL string `json:"endpoint_url,omitempty"`
	// SecretID is the endpoint secret the endpoint's secret is stored as.
	SecretID string `json:"secret_id,omitempty"`
	// Steps are one line each of what was done, for people.
	Steps []string `json:"steps"`
	// Hint, when set, says what is left to do by hand.
	Hint string `json:"hint,omitempty"`
}

// EndpointURL is where Polar is to deliver the workspace's webhooks.
func (c *Connector) EndpointURL(workspace string) string {
	if c.PublicURL == "" {
		return ""
	}
	return strings.TrimSuffix(c.PublicURL, "/") + c.path(workspace)
}

func (c *Connector) path(workspace string) string {
	p := c.WebhookPath
	if p == "" {
		p = "/webhooks/polar"
	}
	return strings.TrimSuffix(p, "/") + "/" + workspace
}

// connectTimeout bounds one Connect: a handful of requests, and Polar's
// retries of them.
const connectTimeout = 2 * time.Minute

// ErrTokenRefused is a token Polar will not take (401), or one that may
// not read what reconciliation reads (403): nothing is stored.
var ErrTokenRefused = errors.New("token refused")

// Connect connects workspace's Polar organization in environment with
// token. A token Polar rejects, or one without orders:read and
// refunds:read, stores nothing.
func (c *Connector) Connect(ctx context.Context, workspace, environment, token string) (ConnectResult, error) {
	ws, err := endpoints.ParseWorkspace(workspace)
	if err != nil {
		return ConnectResult{}, err
	}
	if err := checkEnvironment(environment); err != nil {
		return ConnectResult{}, err
	}
	if err := CheckToken(token); err != nil {
		return ConnectResult{}, err
	}
	if err := c.Store.workspaceExists(ctx, ws); err != nil {
		return ConnectResult{}, err
	}
	if !c.Store.keys.Configured() {
		return ConnectResult{}, endpoints.ErrNoKey
	}
	// However Polar answers, a connect ends: a person or a request waits.
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var client *polarapi.Client
	if c.Clients != nil {
		client, err = c.Clients.Get(environment, token)
	} else {
		client, err = polarapi.New(c.API, environment, token)
	}
	if err != nil {
		return ConnectResult{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var res ConnectResult
	step := func(format string, args ...any) { res.Steps = append(res.Steps, fmt.Sprintf(format, args...)) }

	// What reconciliation needs: orders and refunds.
	if _, err := client.ListOrders(ctx, polarapi.OrderQuery{Limit: 1}); err != nil {
		return ConnectResult{}, refused(environment, err)
	}
	refunds, err := client.ListRefunds(ctx, polarapi.RefundQuery{Limit: 1})
	if err != nil {
		return ConnectResult{}, refused(environment, err)
	}
	var org string
	if len(refunds.Items) > 0 {
		org = refunds.Items[0].OrganizationID
	}
	step("Polar (%s) accepted the token: it may read orders and refunds", environment)

	// relay's endpoint at Polar.
	ep := Endpoint{State: StateUnknown}
	want := c.EndpointURL(ws)
	found, canRead, err := c.findEndpoint(ctx, client, ws, want)
	if err != nil {
		return ConnectResult{}, err
	}
	if found != nil && org == "" {
		org = found.OrganizationID
	}
	var endpoint *polarapi.WebhookEndpoint
	switch {
	case want == "":
		res.Hint = "RELAY_PUBLIC_URL is not set, so relay registered no webhook endpoint at Polar. Set it to the URL Polar reaches relay at and run relay connect again, or register " +
			c.path(ws) + " (format raw) in Polar's dashboard yourself and store its secret with `relay endpoints add --workspace " + ws + " --environment " + environment + "` (the secret on stdin)"
		if found != nil {
			ep = Endpoint{ID: found.ID, URL: found.URL, State: state(found)}
			step("found the workspace's endpoint at Polar: %s (%s)", found.URL, ep.State)
		}
	case !canRead:
		res.Hint = "the token may not read or write webhooks (scopes webhooks:read, webhooks:write), so relay registered no endpoint: register " + want +
			" (format raw) in Polar's dashboard and store its secret with `relay endpoints add --workspace " + ws + " --environment " + environment + "` (the secret on stdin), or connect with a token that has webhooks:write"
	default:
		endpoint, err = c.registerEndpoint(ctx, client, found, want, &res)
		var fe *polarapi.ForbiddenError
		switch {
		case errors.As(err, &fe):
			res.Hint = "the token lacks the webhooks:write scope, so relay registered no endpoint: register " + want +
				" (format raw) in Polar's dashboard and store its secret with `relay endpoints add --workspace " + ws + " --environment " + environment + "` (the secret on stdin), or connect with a token that has webhooks:write"
			if found != nil {
				ep = Endpoint{ID: found.ID, URL: found.URL, State: state(found)}
			}
		case err != nil:
			return ConnectResult{}, err
		default:
			ep = Endpoint{ID: endpoint.ID, URL: endpoint.URL, State: state(endpoint), Registered: res.Endpoint == "created"}
			if org == "" {
				org = endpoint.OrganizationID
			}
		}
	}
	if canRead && found == nil && endpoint == nil {
		ep.State = StateMissing
	}

	// The endpoint's secret, through the same store `relay endpoints add`
	// uses; once, however often relay connect runs.
	if endpoint != nil {
		sec, ok, err := c.Secrets.Find(ctx, ws, environment, endpoint.Secret)
		if err != nil {
			return ConnectResult{}, err
		}
		if ok {
			step("the endpoint's secret is stored already (endpoint secret %s, last4 %s)", sec.ID, sec.Last4)
		} else {
			if sec, err = c.Secrets.Add(ctx, ws, environment, endpoint.Secret); err != nil {
				return ConnectResult{}, fmt.Errorf("store the endpoint's secret: %w", err)
			}
			step("stored the endpoint's secret as endpoint secret %s (last4 %s): relay verifies its deliveries", sec.ID, sec.Last4)
		}
		res.SecretID = sec.ID
	}

	conn, err := c.Store.Put(ctx, ws, environment, token, org, ep)
	if err != nil {
		return ConnectResult{}, err
	}
	res.Connection = conn
	step("stored the token (encrypted, last4 %s) as workspace %s's %s connection", conn.TokenLast4, ws, environment)
	if c.AfterConnect != nil {
		line, err := c.AfterConnect(ctx, conn)
		if err != nil {
			line = "could not ask for a reconciliation pass now (" + err.Error() + "); the next periodic pass reconciles it"
		}
		step("%s", line)
	}
	return res, nil
}

// refused turns the token check's errors into what the user is told.
func refused(environment string, err error) error {
	var fe *polarapi.ForbiddenError
	switch {
	case errors.Is(err, polarapi.ErrUnauthorized):
		return fmt.Errorf("%w: Polar's %s API rejected the token (401): is it an organization access token of this environment, not revoked or expired? nothing was stored", ErrTokenRefused, environment)
	case errors.As(err, &fe):
		return fmt.Errorf("%w: the token lacks the %s scope, which reconciliation needs (create one with orders:read, refunds:read, webhooks:read and webhooks:write); nothing was stored", ErrTokenRefused, fe.Scope)
	}
	return fmt.Errorf("check the token with Polar: %w (nothing was stored)", err)
}

// findEndpoint looks for relay's endpoint among the organization's: the
// one with want's URL, or else one whose path is this workspace's (relay
// moved hosts). canRead is false when the token may not read endpoints.
func (c *Connector) findEndpoint(ctx context.Context, client *polarapi.Client, ws, want string) (*polarapi.WebhookEndpoint, bool, error) {
	var byPath *polarapi.WebhookEndpoint
	for e, err := range client.WebhookEndpoints(ctx) {
		if errors.Is(err, polarapi.ErrForbidden) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, fmt.Errorf("list webhook endpoints at Polar: %w", err)
		}
		if want != "" && e.URL == want {
			return &e, true, nil
		}
		if u, err := url.Parse(e.URL); err == nil && u.Path == c.path(ws) && byPath == nil {
			byPath = &e
		}
	}
	return byPath, true, nil
}

// registerEndpoint updates found to relay's settings (URL, raw format,
// relay's events, enabled) or creates the endpoint.
func (c *Connector) registerEndpoint(ctx context.Context, client *polarapi.Client, found *polarapi.WebhookEndpoint, want string, res *ConnectResult) (*polarapi.WebhookEndpoint, error) {
	res.EndpointURL = want
	if found == nil {
		e, err := client.CreateWebhookEndpoint(ctx, polarapi.WebhookEndpointCreate{URL: want, Format: "raw", Events: polarapi.RelayEvents})
		if err != nil {
			return nil, err
		}
		res.Endpoint = "created"
		res.Steps = append(res.Steps, fmt.Sprintf("created relay's webhook endpoint at Polar: %s (id %s, format raw, %d event types)", e.URL, e.ID, len(e.Events)))
		return &e, nil
	}
	format, enabled := "raw", true
	e, err := client.UpdateWebhookEndpoint(ctx, found.ID, polarapi.WebhookEndpointUpdate{URL: &want, Format: &format, Events: polarapi.RelayEvents, Enabled: &enabled})
	if err != nil {
		return nil, err
	}
	res.Endpoint = "updated"
	what := "found and updated"
	if !found.Enabled {
		what = "found (disabled by Polar), re-enabled and updated"
	}
	res.Steps = append(res.Steps, fmt.Sprintf("%s relay's webhook endpoint at Polar: %s (id %s, format raw, %d event types)", what, e.URL, e.ID, len(e.Events)))
	return &e, nil
}

func state(e *polarapi.WebhookEndpoint) string {
	if e.Enabled {
		return StateEnabled
	}
	return StateDisabled
}

func (s *Store) workspaceExists(ctx context.Context, ws string) error {
	var ok bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM workspaces WHERE id = $1)`, ws).Scan(&ok); err != nil {
		return fmt.Errorf("look up workspace: %w", err)
	}
	if !ok {
		return fmt.Errorf("%w: workspace %s does not exist", ErrNotFound, ws)
	}
	return nil
}
