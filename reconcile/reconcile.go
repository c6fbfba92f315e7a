// Package reconcile compares what Polar's API says was sold and refunded
// with what relay booked, for every connected workspace, and repairs what
// no webhook brought through the path a webhook takes: an inbox row (marked
// as recovered by reconciliation, under a synthetic webhook id that is the
// same on every pass and every replica), a River job in the same
// transaction, the workers and the ledger. The inbox's unique key and the
// ledger's source keys make a repair exactly-once, however many passes race
// and whether or not the real webhook arrives later. What relay must not
// fix by itself (amounts that differ, a booking of an order Polar says is
// not paid, a session relay does not have, another workspace's sale) is
// reported, never changed.
package reconcile

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/connections"
	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/polarapi"
)

// Defaults of RELAY_RECONCILE_INTERVAL and RELAY_RECONCILE_LOOKBACK.
const (
	DefaultInterval = 10 * time.Minute
	DefaultLookback = 72 * time.Hour
	// DefaultPassTimeout bounds one connection's pass: a slow or failing
	// organization's API ends its own pass, never another's.
	DefaultPassTimeout = 5 * time.Minute
)

// Finding kinds, bounded: they are metric labels.
const (
	KindBooked             = "booked"              // paid at Polar, never booked by relay: recovered
	KindReversed           = "reversed"            // refunded at Polar, not reversed by relay: recovered
	KindPending            = "pending"             // paid, held by relay as a pending booking: reported
	KindMismatch           = "mismatch"            // relay's booking differs from Polar's order: reported
	KindUnknownSession     = "unknown_session"     // the order names a session relay does not have: reported
	KindForeignWorkspace   = "foreign_workspace"   // the order names another workspace than the connection's: refused
	KindForeignEnvironment = "foreign_environment" // the order's session was created in the other environment: refused
	KindEndpointDisabled   = "endpoint_disabled"   // Polar disabled relay's endpoint
	KindEndpointMissing    = "endpoint_missing"    // no endpoint at Polar delivers to relay
	KindUnauthorized       = "unauthorized"        // Polar rejected the token (401)
	KindForbidden          = "forbidden"           // the token lacks a scope (403): named in the detail
	KindProduct            = "product"             // a product version at Polar relay never applied: recovered
)

// Kinds lists every finding kind, for metrics.
func Kinds() []string {
	return []string{KindBooked, KindReversed, KindPending, KindMismatch, KindUnknownSession, KindForeignWorkspace,
		KindForeignEnvironment, KindEndpointDisabled, KindEndpointMissing, KindUnauthorized, KindForbidden, KindProduct}
}

// Pass results, bounded: metric labels and connections' last result.
const (
	ResultOK           = "ok"
	ResultFailed       = "failed"
	ResultUnauthorized = "unauthorized"
	ResultForbidden    = "forbidden"
)

// Finding is one thing a pass found, and what it did about it.
type Finding struct {
	Kind        string `json:"kind"`
	Workspace   string `json:"workspace"`
	Environment string `json:"environment"`
	OrderID     string `json:"order_id,omitempty"`
	RefundID    string `json:"refund_id,omitempty"`
	SessionID   string `json:"session_id,omitempty"`
	ProductID   string `json:"product_id,omitempty"` // Polar's
	// Polar's figures, and relay's where it has any (minor units).
	PolarStatus   string `json:"polar_status,omitempty"`
	PolarAmount   int64  `json:"polar_amount,omitempty"`
	PolarRefunded int64  `json:"polar_refunded,omitempty"`
	Currency      string `json:"currency,omitempty"`
	RelayAmount   *int64 `json:"relay_amount,omitempty"`
	RelayCurrency string `json:"relay_currency,omitempty"`
	RelayRefunded int64  `json:"relay_refunded,omitempty"`
	// Detail says what differs, in words (no customer data).
	Detail string `json:"detail,omitempty"`
	// Action is what the pass did: recovered, already recovered, would
	// recover (dry run), re-enabled, re-created, reported.
	Action string `json:"action"`
	// WebhookID is the synthetic webhook id a recovery is stored under.
	WebhookID string `json:"webhook_id,omitempty"`
	// InboxID is the inbox row a recovery stored.
	InboxID int64 `json:"inbox_id,omitempty"`
}

// Actions.
const (
	ActionRecovered        = "recovered"
	ActionAlreadyRecovered = "already recovered"
	ActionWouldRecover     = "would recover (dry run)"
	ActionReported         = "reported"
	ActionReenabled        = "re-enabled"
	ActionWouldReenable    = "would re-enable (dry run)"
	ActionRecreated        = "re-created"
)

// String is the finding on one line, as relay reconcile prints it.
func (f Finding) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-19s", f.Kind)
	field := func(name, v string) {
		if v != "" {
			fmt.Fprintf(&b, " %s=%s", name, v)
		}
	}
	field("order", f.OrderID)
	field("refund", f.RefundID)
	field("session", f.SessionID)
	field("product", f.ProductID)
	field("polar_status", f.PolarStatus)
	if f.OrderID != "" || f.RefundID != "" {
		fmt.Fprintf(&b, " polar=%d/%d %s", f.PolarAmount, f.PolarRefunded, strings.ToUpper(f.Currency))
		if f.RelayAmount != nil {
			fmt.Fprintf(&b, " relay=%d/%d %s", *f.RelayAmount, f.RelayRefunded, strings.ToUpper(f.RelayCurrency))
		} else {
			b.WriteString(" relay=none")
		}
	}
	fmt.Fprintf(&b, " -> %s", f.Action)
	if f.InboxID != 0 {
		fmt.Fprintf(&b, " (inbox row %d, %s)", f.InboxID, f.WebhookID)
	} else if f.WebhookID != "" {
		fmt.Fprintf(&b, " (%s)", f.WebhookID)
	}
	if f.Detail != "" {
		fmt.Fprintf(&b, ": %s", f.Detail)
	}
	return b.String()
}

// Report is one connection's pass.
type Report struct {
	Workspace   string    `json:"workspace"`
	Environment string    `json:"environment"`
	Since       time.Time `json:"since"`
	Started     time.Time `json:"started"`
	Took        string    `json:"took"`
	DryRun      bool      `json:"dry_run"`
	Result      string    `json:"result"`
	Error       string    `json:"error,omitempty"`
	Orders      int       `json:"orders"`
	Refunds     int       `json:"refunds"`
	Products    int       `json:"products"`
	Findings    []Finding `json:"findings"`
}

// Config is what a Reconciler works with.
type Config struct {
	Pool        *pgxpool.Pool
	Connections *connections.Store
	Secrets     *endpoints.Store // whether relay can verify a workspace's deliveries, and where a re-created endpoint's secret goes
	Inserter    jobs.Inserter    // inserts the recoveries' jobs in their inbox rows' transaction
	API         polarapi.Config
	// Clients, when set, hands out the clients (relay connect's too, so
	// that they share each organization's budget); else the Reconciler
	// keeps its own, made from API.
	Clients     *polarapi.Clients
	Lookback    time.Duration // DefaultLookback when 0
	PassTimeout time.Duration // DefaultPassTimeout when 0
	// Reenable re-enables relay's endpoint at Polar once relay can take
	// the workspace's deliveries again (RELAY_POLAR_REENABLE, on by default).
	Reenable    bool
	PublicURL   string // RELAY_PUBLIC_URL: relay's endpoint is PublicURL + WebhookPath + /WS
	WebhookPath string
	Metrics     *Metrics // nil: not counted
	Logger      *slog.Logger
	Now         func() time.Time
}

// Reconciler runs passes. It keeps one API client per connection across
// passes, so that each organization's request budget holds between them.
type Reconciler struct {
	cfg     Config
	mu      sync.Mutex
	clients map[string]*clientEntry // by connection id
}

type clientEntry struct {
	token  [32]byte // the token's hash: a new token gets a new client
	client *polarapi.Client
}

// New returns a Reconciler.
func New(cfg Config) *Reconciler {
	cfg.Lookback = cmp.Or(cfg.Lookback, DefaultLookback)
	cfg.PassTimeout = cmp.Or(cfg.PassTimeout, DefaultPassTimeout)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Reconciler{cfg: cfg, clients: make(map[string]*clientEntry)}
}

// Options vary one pass.
type Options struct {
	// Since is how far back orders and refunds are read; the Reconciler's
	// Lookback when 0.
	Since time.Duration
	// DryRun reports what a pass would do and changes nothing: no inbox
	// row, no job, no booking, nothing at Polar.
	DryRun bool
}

func (r *Reconciler) client(cred connections.Credentials) (*polarapi.Client, error) {
	if r.cfg.Clients != nil {
		return r.cfg.Clients.Get(cred.Environment, cred.Token)
	}
	sum := sha256.Sum256([]byte(cred.Token))
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.clients[cred.ID]; ok && e.token == sum {
		return e.client, nil
	}
	c, err := polarapi.New(r.cfg.API, cred.Environment, cred.Token)
	if err != nil {
		return nil, err
	}
	r.clients[cred.ID] = &clientEntry{token: sum, client: c}
	return c, nil
}

// Reconcile runs one pass for workspace's connection in environment.
func (r *Reconciler) Reconcile(ctx context.Context, workspace, environment string, opts Options) (Report, error) {
	cred, err := r.cfg.Connections.Credentials(ctx, workspace, environment)
	if err != nil {
		return Report{}, err
	}
	return r.pass(ctx, cred, opts), nil
}

// MaxConcurrentPasses bounds the connections All passes at once: each
// holds a database connection while it compares and recovers.
const MaxConcurrentPasses = 8

// All runs one pass per connection, up to MaxConcurrentPasses at once,
// each with its own deadline: one organization's slow API never holds up
// another's.
func (r *Reconciler) All(ctx context.Context, opts Options) ([]Report, error) {
	creds, err := r.cfg.Connections.AllCredentials(ctx)
	if err != nil {
		return nil, err
	}
	reports := make([]Report, len(creds))
	slots := make(chan struct{}, MaxConcurrentPasses)
	var wg sync.WaitGroup
	for i, cred := range creds {
		wg.Go(func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			reports[i] = r.pass(ctx, cred, opts) // its deadline starts with its turn
		})
	}
	wg.Wait()
	if r.cfg.Metrics != nil {
		r.cfg.Metrics.observeConnections(ctx, r.cfg.Connections)
	}
	return reports, nil
}

// pass is one connection's pass; its failure is in the report.
func (r *Reconciler) pass(ctx context.Context, cred connections.Credentials, opts Options) Report {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.PassTimeout)
	defer cancel()
	start := r.cfg.Now()
	since := cmp.Or(opts.Since, r.cfg.Lookback)
	metrics := r.cfg.Metrics
	if opts.DryRun {
		metrics = nil
	}
	p := &passRun{r: r, metrics: metrics, cred: cred, opts: opts, rep: Report{
		Workspace: cred.Workspace, Environment: cred.Environment, Since: start.Add(-since).UTC(),
		Started: start.UTC(), DryRun: opts.DryRun, Result: ResultOK, Findings: []Finding{},
	}}
	err := p.run(ctx)
	rep := p.rep
	rep.Took = time.Since(start).Round(time.Millisecond).String()
	var fe *polarapi.ForbiddenError
	switch {
	case err == nil:
	case errors.Is(err, polarapi.ErrUnauthorized):
		rep.Result = ResultUnauthorized
		rep.Error = err.Error()
		rep.Findings = append(rep.Findings, p.finding(Finding{Kind: KindUnauthorized, Action: ActionReported,
			Detail: "Polar rejected the token (401): connect the workspace again with a valid token (relay connect)"}))
	case errors.As(err, &fe):
		rep.Result = ResultForbidden
		rep.Error = err.Error()
		rep.Findings = append(rep.Findings, p.finding(Finding{Kind: KindForbidden, Action: ActionReported,
			Detail: fmt.Sprintf("the token lacks the %s scope (403 on %s)", fe.Scope, fe.Endpoint)}))
	default:
		rep.Result = ResultFailed
		rep.Error = err.Error()
	}
	if !opts.DryRun {
		bg := context.WithoutCancel(ctx)
		if rep.Result == ResultUnauthorized {
			if err := r.cfg.Connections.SetState(bg, cred.ID, connections.StateUnauthorized); err != nil {
				r.cfg.Logger.Warn("reconciliation: cannot record the connection as unauthorized", "workspace_id", cred.Workspace, "environment", cred.Environment, "error", err)
			}
		}
		if err := r.cfg.Connections.RecordReconciliation(bg, cred.ID, connections.Reconciliation{
			At: r.cfg.Now(), Result: rep.Result, Findings: len(rep.Findings), Error: rep.Error,
		}); err != nil {
			r.cfg.Logger.Warn("reconciliation: cannot record the pass", "workspace_id", cred.Workspace, "environment", cred.Environment, "error", err)
		}
	}
	metrics.observePass(rep, r.cfg.Now())
	level := slog.LevelInfo
	if rep.Result != ResultOK {
		level = slog.LevelWarn
	}
	r.cfg.Logger.LogAttrs(ctx, level, "reconciliation pass", slog.String("workspace_id", cred.Workspace),
		slog.String("environment", cred.Environment), slog.String("result", rep.Result), slog.Int("orders", rep.Orders),
		slog.Int("refunds", rep.Refunds), slog.Int("findings", len(rep.Findings)), slog.Bool("dry_run", opts.DryRun),
		slog.String("took", rep.Took), slog.String("error", rep.Error))
	return rep
}

// passRun is one pass's state.
type passRun struct {
	r       *Reconciler
	metrics *Metrics // nil on a dry run: it counts nothing
	cred    connections.Credentials
	opts    Options
	client  *polarapi.Client
	rep     Report
}

func (p *passRun) finding(f Finding) Finding {
	f.Workspace, f.Environment = p.cred.Workspace, p.cred.Environment
	return f
}

func (p *passRun) add(f Finding) {
	f = p.finding(f)
	p.rep.Findings = append(p.rep.Findings, f)
	p.metrics.observeFinding(f)
}

// chunk is how many orders are compared with relay's books in one query
// (and recovered in one transaction).
const chunk = 500

func (p *passRun) run(ctx context.Context) error {
	var err error
	if p.client, err = p.r.client(p.cred); err != nil {
		return err
	}
	if err := p.checkEndpoint(ctx); err != nil {
		return err
	}
	seen := make(map[string]bool)
	var batch []polarapi.Order
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		err := p.compareOrders(ctx, batch)
		batch = batch[:0]
		return err
	}
	for o, err := range p.client.Orders(ctx, polarapi.OrderQuery{
		CreatedAfter: p.rep.Since, Metadata: map[string]string{"kind": "inventory_checkout"}, Sorting: "created_at",
	}) {
		if err != nil {
			return fmt.Errorf("list orders: %w", err)
		}
		if seen[o.ID] {
			continue
		}
		seen[o.ID] = true
		p.rep.Orders++
		if batch = append(batch, o); len(batch) == chunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	// Refunds made within the lookback on orders older than it: Polar has
	// no "modified since" for orders, so they come from the refunds list.
	succeeded := true
	var older []polarapi.Refund
	for rf, err := range p.client.Refunds(ctx, polarapi.RefundQuery{Since: p.rep.Since, Succeeded: &succeeded}) {
		if err != nil {
			return fmt.Errorf("list refunds: %w", err)
		}
		if rf.Status != "succeeded" || rf.OrderID == nil {
			continue
		}
		p.rep.Refunds++
		if !seen[*rf.OrderID] {
			older = append(older, rf)
		}
	}
	if err := p.compareRefunds(ctx, older); err != nil {
		return err
	}
	return p.compareProducts(ctx)
}

// compareProducts reads the organization's products and recovers each
// storefront product of this workspace and environment whose version at
// Polar is newer than the one relay applied (its last product.updated never
// arrived), as the product.updated webhook Polar would have sent. Products
// relay has no row for are left alone: a webhook would only mark them
// ignored. A token without products:read is reported, and the pass goes on.
func (p *passRun) compareProducts(ctx context.Context) error {
	var recover []recovery
	for pr, err := range p.client.Products(ctx, polarapi.ProductQuery{}) {
		var fe *polarapi.ForbiddenError
		if errors.As(err, &fe) {
			p.add(Finding{Kind: KindForbidden, Action: ActionReported,
				Detail: fmt.Sprintf("the token lacks the %s scope: relay cannot check its products", fe.Scope)})
			return nil
		}
		if err != nil {
			return fmt.Errorf("list products: %w", err)
		}
		p.rep.Products++
		parsed, err := polar.ParseProduct(pr.Raw)
		if err != nil {
			continue // not a product relay could apply
		}
		ref, ok := parsed.Metadata.StorefrontProduct()
		if !ok || ref.WorkspaceID != p.cred.Workspace {
			continue
		}
		var rowID *string
		if text.IsUUID(ref.ProductID) {
			rowID = &ref.ProductID
		}
		var applied *time.Time
		err = p.r.cfg.Pool.QueryRow(ctx, `
			SELECT polar_modified_at FROM workspace_products
			WHERE ws_id = $1 AND polar_environment = $2 AND (id = $3::uuid OR polar_product_id = $4)
			ORDER BY id = $3::uuid DESC LIMIT 1`,
			p.cred.Workspace, p.cred.Environment, rowID, parsed.ID).Scan(&applied)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read product %s: %w", parsed.ID, err)
		}
		if applied != nil && !applied.Before(parsed.Version()) {
			continue
		}
		detail := "Polar's version " + parsed.Version().UTC().Format(time.RFC3339) + ", relay's "
		if applied != nil {
			detail += applied.UTC().Format(time.RFC3339)
		} else {
			detail += "none"
		}
		p.rep.Findings = append(p.rep.Findings, p.finding(Finding{Kind: KindProduct, ProductID: parsed.ID, Detail: detail}))
		pr := pr
		recover = append(recover, recovery{finding: len(p.rep.Findings) - 1, product: &pr})
	}
	return p.recover(ctx, recover)
}

// EndpointURL is relay's endpoint for workspace at Polar ("" without a
// public URL).
func (r *Reconciler) EndpointURL(workspace string) string {
	return (&connections.Connector{PublicURL: r.cfg.PublicURL, WebhookPath: r.cfg.WebhookPath}).EndpointURL(workspace)
}

// checkEndpoint reads the organization's webhook endpoints, reports relay's
// disabled or missing, re-enables or re-creates it when it may, and records
// its state on the connection.
func (p *passRun) checkEndpoint(ctx context.Context) error {
	want := cmp.Or(p.r.EndpointURL(p.cred.Workspace), p.cred.EndpointURL)
	var found, byPath *polarapi.WebhookEndpoint
	for e, err := range p.client.WebhookEndpoints(ctx) {
		var fe *polarapi.ForbiddenError
		if errors.As(err, &fe) {
			p.add(Finding{Kind: KindForbidden, Action: ActionReported,
				Detail: fmt.Sprintf("the token lacks the %s scope: relay cannot watch its webhook endpoint at Polar", fe.Scope)})
			return p.setEndpoint(ctx, connections.Endpoint{ID: p.cred.EndpointID, URL: p.cred.EndpointURL, State: connections.StateUnknown, Registered: p.cred.Registered})
		}
		if err != nil {
			return fmt.Errorf("list webhook endpoints: %w", err)
		}
		switch {
		case p.cred.EndpointID != "" && e.ID == p.cred.EndpointID, want != "" && e.URL == want:
			found = &e
		case byPath == nil && relayPath(e.URL, p.r.cfg.WebhookPath, p.cred.Workspace):
			byPath = &e
		}
		if found != nil {
			break
		}
	}
	found = cmp.Or(found, byPath)
	if found == nil {
		return p.missingEndpoint(ctx, want)
	}
	ep := connections.Endpoint{ID: found.ID, URL: found.URL, State: connections.StateEnabled, Registered: p.cred.Registered}
	if !found.Enabled {
		ep.State = connections.StateDisabled
		f := Finding{Kind: KindEndpointDisabled, Action: ActionReported, Detail: "Polar disabled relay's endpoint " + found.URL + " and creates no events for it"}
		switch why := p.cannotReceive(ctx); {
		case !p.r.cfg.Reenable:
			f.Detail += "; RELAY_POLAR_REENABLE=off: re-enable it in Polar's dashboard"
		case why != "":
			f.Detail += "; not re-enabled: " + why
		case p.opts.DryRun:
			f.Action = ActionWouldReenable
		default:
			enabled := true
			if _, err := p.client.UpdateWebhookEndpoint(ctx, found.ID, polarapi.WebhookEndpointUpdate{Enabled: &enabled}); err != nil {
				var fe *polarapi.ForbiddenError
				if !errors.As(err, &fe) {
					return fmt.Errorf("re-enable the webhook endpoint: %w", err)
				}
				f.Detail += fmt.Sprintf("; not re-enabled: the token lacks the %s scope", fe.Scope)
			} else {
				f.Action, ep.State = ActionReenabled, connections.StateEnabled
				f.Detail += "; the next pass recovers what Polar did not send meanwhile"
			}
		}
		p.add(f)
	}
	return p.setEndpoint(ctx, ep)
}

func (p *passRun) missingEndpoint(ctx context.Context, want string) error {
	f := Finding{Kind: KindEndpointMissing, Action: ActionReported, Detail: "no webhook endpoint at Polar delivers to relay"}
	ep := connections.Endpoint{URL: want, State: connections.StateMissing, Registered: p.cred.Registered}
	switch {
	case !p.cred.Registered || want == "":
		f.Detail += ": register " + cmp.Or(want, "relay's URL") + " in Polar's dashboard, or run relay connect with RELAY_PUBLIC_URL set"
	case p.opts.DryRun:
		f.Action = "would re-create (dry run)"
	default:
		e, err := p.client.CreateWebhookEndpoint(ctx, polarapi.WebhookEndpointCreate{URL: want, Format: "raw", Events: polarapi.RelayEvents})
		var fe *polarapi.ForbiddenError
		switch {
		case errors.As(err, &fe):
			f.Detail += fmt.Sprintf("; not re-created: the token lacks the %s scope", fe.Scope)
		case err != nil:
			return fmt.Errorf("re-create the webhook endpoint: %w", err)
		default:
			if _, _, err := p.storeSecret(ctx, e.Secret); err != nil {
				return err
			}
			f.Action, ep = ActionRecreated, connections.Endpoint{ID: e.ID, URL: e.URL, State: connections.StateEnabled, Registered: true}
			f.Detail = "relay had registered it; re-created it and stored its new secret"
		}
	}
	p.add(f)
	return p.setEndpoint(ctx, ep)
}

func (p *passRun) storeSecret(ctx context.Context, secret string) (endpoints.Secret, bool, error) {
	if p.r.cfg.Secrets == nil {
		return endpoints.Secret{}, false, errors.New("store the re-created endpoint's secret: no secrets store")
	}
	if sec, ok, err := p.r.cfg.Secrets.Find(ctx, p.cred.Workspace, p.cred.Environment, secret); err != nil || ok {
		return sec, ok, err
	}
	sec, err := p.r.cfg.Secrets.Add(ctx, p.cred.Workspace, p.cred.Environment, secret)
	if err != nil {
		return endpoints.Secret{}, false, fmt.Errorf("store the re-created endpoint's secret: %w", err)
	}
	return sec, true, nil
}

// cannotReceive says why relay could not verify and store the workspace's
// deliveries now ("" when it can): no secret for the workspace in this
// environment, or a database that does not answer.
func (p *passRun) cannotReceive(ctx context.Context) string {
	if p.r.cfg.Secrets == nil {
		return "relay has no secrets store"
	}
	secrets, err := p.r.cfg.Secrets.List(ctx, p.cred.Workspace)
	if err != nil {
		return "the database does not answer"
	}
	for _, s := range secrets {
		if s.Environment == p.cred.Environment {
			return ""
		}
	}
	return "relay has no webhook secret for this workspace in " + p.cred.Environment + " (relay connect, or relay endpoints add)"
}

func (p *passRun) setEndpoint(ctx context.Context, ep connections.Endpoint) error {
	if p.opts.DryRun {
		return nil
	}
	if err := p.r.cfg.Connections.SetEndpoint(ctx, p.cred.ID, ep); err != nil {
		return fmt.Errorf("record the endpoint's state: %w", err)
	}
	return nil
}

// relayPath reports whether rawURL's path is relay's webhook path for
// workspace (relay moved hosts since).
func relayPath(rawURL, webhookPath, workspace string) bool {
	u, err := url.Parse(rawURL)
	if err != nil {
		return false
	}
	p := cmp.Or(webhookPath, "/webhooks/polar")
	return u.Path == strings.TrimSuffix(p, "/")+"/"+workspace
}

// booking is what relay has of one order's sale.
type booking struct {
	sessionID, sessionWS, sessionEnv, status string
	total                                    int64
	currency                                 string
	orderID                                  *string
	refunded, recordedRefunds                int64
	saleAmount                               *int64
	saleCurrency                             *string
	pending, inFlight                        bool
}

// booksSQL reads relay's side of orders $1 (with the session ids $2 their
// metadata names and their checkout ids $3): the session that records the
// order, else the named one, else the newest with the checkout id; its
// sale's booking, pending booking and refunds; and whether a delivery about
// the order is stored and not processed yet at this endpoint ($4, $5).
const booksSQL = `
	SELECT o.order_id, s.id::text, s.ws_id::text, s.polar_environment, s.status, s.total_amount, s.currency,
	       s.polar_order_id, s.refunded_amount,
	       coalesce((SELECT sum(f.amount) FROM checkout_session_refunds f WHERE f.checkout_session_id = s.id), 0),
	       t.amount, t.currency,
	       EXISTS (SELECT 1 FROM pending_bookings b WHERE b.session_id = s.id AND b.posted_at IS NULL),
	       EXISTS (SELECT 1 FROM webhook_inbox i WHERE webhook_inbox_subject(i.body) = o.order_id
	               AND i.status = 'pending' AND i.workspace_id = $4::uuid AND i.environment = $5)
	FROM unnest($1::text[], $2::uuid[], $3::text[]) AS o(order_id, session_id, checkout_id)
	LEFT JOIN LATERAL (
		SELECT x.* FROM (
			SELECT s.*, 1 AS pref FROM inventory_checkout_sessions s WHERE s.polar_order_id = o.order_id
			UNION ALL
			SELECT s.*, 2 FROM inventory_checkout_sessions s WHERE s.id = o.session_id
			UNION ALL
			(SELECT s.*, 3 FROM inventory_checkout_sessions s WHERE s.polar_checkout_id = o.checkout_id
			 ORDER BY s.created_at DESC, s.id DESC LIMIT 1)
		) x ORDER BY x.pref LIMIT 1) s ON true
	LEFT JOIN wallet_transactions t ON t.source_kind = 'sale' AND t.source_ref = s.id::text`

func (p *passRun) books(ctx context.Context, orderIDs []string, sessionIDs []*string, checkoutIDs []*string) (map[string]*booking, error) {
	rows, err := p.r.cfg.Pool.Query(ctx, booksSQL, orderIDs, sessionIDs, checkoutIDs, p.cred.Workspace, p.cred.Environment)
	if err != nil {
		return nil, fmt.Errorf("read relay's books: %w", err)
	}
	defer rows.Close()
	out := make(map[string]*booking, len(orderIDs))
	for rows.Next() {
		var (
			order               string
			id, ws, env, status *string
			total, refunded     *int64
			currency            *string
			b                   booking
		)
		if err := rows.Scan(&order, &id, &ws, &env, &status, &total, &currency, &b.orderID, &refunded,
			&b.recordedRefunds, &b.saleAmount, &b.saleCurrency, &b.pending, &b.inFlight); err != nil {
			return nil, fmt.Errorf("read relay's books: %w", err)
		}
		if id == nil {
			out[order] = &booking{inFlight: b.inFlight}
			continue
		}
		b.sessionID, b.sessionWS, b.sessionEnv, b.status = *id, *ws, *env, *status
		b.total, b.currency, b.refunded = *total, *currency, *refunded
		out[order] = &b
	}
	return out, rows.Err()
}

func metaString(m map[string]any, key string) string {
	s, _ := m[key].(string)
	return s
}

// paid is true for an order Polar counts as paid, also after refunds.
func paid(o polarapi.Order) bool {
	return o.Paid || o.Status == "paid" || o.Status == "partially_refunded" || o.Status == "refunded"
}

// compareOrders compares a chunk of Polar's storefront orders with relay's
// books and recovers, in one transaction, what is missing.
func (p *passRun) compareOrders(ctx context.Context, orders []polarapi.Order) error {
	ids := make([]string, len(orders))
	sessions := make([]*string, len(orders))
	checkouts := make([]*string, len(orders))
	for i, o := range orders {
		ids[i] = o.ID
		if s := metaString(o.Metadata, "checkoutId"); text.IsUUID(s) {
			sessions[i] = &s
		}
		checkouts[i] = o.CheckoutID
	}
	books, err := p.books(ctx, ids, sessions, checkouts)
	if err != nil {
		return err
	}
	var recover []recovery
	for _, o := range orders {
		b := books[o.ID]
		f := Finding{OrderID: o.ID, PolarStatus: o.Status, PolarAmount: o.TotalAmount,
			PolarRefunded: o.RefundedAmount + o.RefundedTaxAmount, Currency: o.Currency, Action: ActionReported}
		if b != nil && b.sessionID != "" {
			f.SessionID, f.RelayRefunded = b.sessionID, b.refunded
			if b.saleAmount != nil {
				f.RelayAmount, f.RelayCurrency = b.saleAmount, *b.saleCurrency
			}
		} else {
			f.SessionID = metaString(o.Metadata, "checkoutId")
		}
		ws, env := metaString(o.Metadata, "wsId"), metaString(o.Metadata, "environment")
		switch {
		case ws != "" && !strings.EqualFold(ws, p.cred.Workspace):
			f.Kind, f.Detail = KindForeignWorkspace, "the order's metadata names another workspace than this connection's: refused"
		case env != "" && env != p.cred.Environment:
			f.Kind, f.Detail = KindForeignEnvironment, "the order's metadata names the "+env+" environment: refused"
		case b == nil || b.inFlight:
			continue // a delivery about it is stored and waits for its job
		case b.sessionID == "":
			f.Kind, f.Detail = KindUnknownSession, "relay has no checkout session for this storefront order"
		case !strings.EqualFold(b.sessionWS, p.cred.Workspace):
			f.Kind, f.Detail = KindForeignWorkspace, "the order's session belongs to another workspace: refused"
		case b.sessionEnv != p.cred.Environment:
			f.Kind, f.Detail = KindForeignEnvironment, "the order's session was created in "+b.sessionEnv+": refused"
		case b.orderID != nil && *b.orderID != o.ID:
			if !paid(o) {
				continue // an unpaid attempt on a session another order paid
			}
			f.Kind, f.Detail = KindMismatch, "Polar's paid order names a session relay completed with another order ("+*b.orderID+")"
		case !paid(o):
			if b.saleAmount == nil && b.status != "completed" {
				continue // not paid, nothing booked: in agreement
			}
			f.Kind, f.Detail = KindMismatch, "relay completed or booked a sale Polar says is "+o.Status
		case b.saleAmount != nil && (*b.saleAmount != o.TotalAmount || !strings.EqualFold(*b.saleCurrency, o.Currency)):
			f.Kind = KindMismatch
			f.Detail = fmt.Sprintf("relay booked %d %s, Polar's order is %d %s", *b.saleAmount, strings.ToUpper(*b.saleCurrency), o.TotalAmount, strings.ToUpper(o.Currency))
		case b.saleAmount == nil && b.pending:
			f.Kind, f.Detail = KindPending, "relay holds the sale as a pending booking (relay bookings pending)"
		case b.saleAmount == nil:
			f.Kind = KindBooked
		case f.PolarRefunded > max(b.refunded, b.recordedRefunds):
			f.Kind = KindReversed
		case b.refunded > f.PolarRefunded:
			f.Kind = KindMismatch
			f.Detail = fmt.Sprintf("relay recorded %d refunded, Polar %d", b.refunded, f.PolarRefunded)
		default:
			continue // in agreement
		}
		if f.Kind != KindBooked && f.Kind != KindReversed {
			p.add(f)
			continue
		}
		recover = append(recover, recovery{finding: len(p.rep.Findings), order: o})
		p.rep.Findings = append(p.rep.Findings, p.finding(f)) // counted once recover knows what it did
	}
	return p.recover(ctx, recover)
}

// recovery is one finding to repair: an order's latest state, or a refund.
type recovery struct {
	finding int // index into the report's findings
	order   polarapi.Order
	refund  *polarapi.Refund
	product *polarapi.Product
}

// WebhookID is the synthetic webhook id of a recovered order's state: the
// same on every pass and every replica, so that the inbox's unique key
// stores it once; a later refund is another state, another id.
func WebhookID(o polarapi.Order) string {
	return fmt.Sprintf("reconcile:%s:%s:%d", o.ID, o.Status, o.RefundedAmount+o.RefundedTaxAmount)
}

// RefundWebhookID is the synthetic webhook id of a recovered refund.
func RefundWebhookID(rf polarapi.Refund) string { return "reconcile:refund:" + rf.ID }

// envelope is a Polar webhook's body around an API object.
func envelope(eventType string, at time.Time, data json.RawMessage) ([]byte, error) {
	return json.Marshal(struct {
		Type      string          `json:"type"`
		Timestamp string          `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}{eventType, at.UTC().Format("2006-01-02T15:04:05.000000Z"), data})
}

// recover stores the recoveries as inbox rows marked as recovered by
// reconciliation, with their jobs, in one transaction: exactly what the
// receiver does with a delivery. A row already stored (an earlier pass,
// another replica) is left, and gets no second job.
func (p *passRun) recover(ctx context.Context, rs []recovery) error {
	if len(rs) == 0 {
		return nil
	}
	now := p.r.cfg.Now()
	events := make([]*inbox.Event, len(rs))
	for i, rc := range rs {
		if rc.product != nil {
			event, err := jobs.ProductVersionEvent(rc.product.Raw, p.cred.Workspace, p.cred.Environment, now)
			if err != nil {
				return fmt.Errorf("recover product %s: %w", rc.product.ID, err)
			}
			events[i] = event
			p.rep.Findings[rc.finding].WebhookID = event.WebhookID
			continue
		}
		eventType, data, id := "order.updated", rc.order.Raw, WebhookID(rc.order)
		if rc.refund != nil {
			eventType, data, id = "refund.created", rc.refund.Raw, RefundWebhookID(*rc.refund)
		}
		body, err := envelope(eventType, now, data)
		if err != nil {
			return fmt.Errorf("recover %s: %w", id, err)
		}
		at := now
		events[i] = &inbox.Event{WebhookID: id, EventType: eventType, Status: inbox.StatusPending, WebhookTimestamp: now,
			EventTimestamp: &at, Body: body, WorkspaceID: p.cred.Workspace, Environment: p.cred.Environment}
		p.rep.Findings[rc.finding].WebhookID = id
	}
	if p.opts.DryRun {
		for _, rc := range rs {
			p.rep.Findings[rc.finding].Action = ActionWouldRecover
		}
		return nil
	}
	var inserted []bool
	err := pgx.BeginFunc(ctx, p.r.cfg.Pool, func(tx pgx.Tx) error {
		var err error
		if inserted, err = inbox.InsertRecovered(ctx, tx, events...); err != nil {
			return err
		}
		var fresh []*inbox.Event
		for i, e := range events {
			if inserted[i] {
				fresh = append(fresh, e)
			}
		}
		return jobs.EnqueueTx(ctx, tx, p.r.cfg.Inserter, fresh...)
	})
	if err != nil {
		return fmt.Errorf("store %d recovered sales: %w", len(events), err)
	}
	for i, rc := range rs {
		f := &p.rep.Findings[rc.finding]
		if inserted[i] {
			f.Action, f.InboxID = ActionRecovered, events[i].ID
			p.metrics.recovered(f.Environment, f.Kind)
		} else {
			f.Action = ActionAlreadyRecovered
		}
		p.metrics.observeFinding(*f)
	}
	return nil
}

// compareRefunds checks succeeded refunds of orders older than the lookback
// against relay's books: one relay has not recorded, while the session's
// refunded total is short of what Polar refunded, is recovered as the
// refund.created webhook Polar would have sent. Refunds carry no storefront
// metadata: an order relay has no session for is not a storefront sale.
func (p *passRun) compareRefunds(ctx context.Context, refunds []polarapi.Refund) error {
	if len(refunds) == 0 {
		return nil
	}
	byOrder := make(map[string][]polarapi.Refund)
	var orders []string
	for _, rf := range refunds {
		if byOrder[*rf.OrderID] == nil {
			orders = append(orders, *rf.OrderID)
		}
		byOrder[*rf.OrderID] = append(byOrder[*rf.OrderID], rf)
	}
	rows, err := p.r.cfg.Pool.Query(ctx, `
		SELECT s.polar_order_id, s.id::text, s.ws_id::text, s.polar_environment, s.refunded_amount,
		       coalesce(array_agg(f.external_refund_id) FILTER (WHERE f.id IS NOT NULL), '{}'),
		       coalesce(sum(f.amount), 0), t.amount, t.currency
		FROM inventory_checkout_sessions s
		LEFT JOIN checkout_session_refunds f ON f.checkout_session_id = s.id
		LEFT JOIN wallet_transactions t ON t.source_kind = 'sale' AND t.source_ref = s.id::text
		WHERE s.polar_order_id = ANY($1)
		GROUP BY s.id, t.amount, t.currency`, orders)
	if err != nil {
		return fmt.Errorf("read relay's refunds: %w", err)
	}
	type sessionRefunds struct {
		id, ws, env   string
		refunded, sum int64
		known         map[string]bool
		sale          *int64
		saleCurrency  *string
	}
	sessions := make(map[string]*sessionRefunds)
	for rows.Next() {
		var order string
		var s sessionRefunds
		var known []string
		if err := rows.Scan(&order, &s.id, &s.ws, &s.env, &s.refunded, &known, &s.sum, &s.sale, &s.saleCurrency); err != nil {
			rows.Close()
			return fmt.Errorf("read relay's refunds: %w", err)
		}
		s.known = make(map[string]bool, len(known))
		for _, k := range known {
			s.known[k] = true
		}
		sessions[order] = &s
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read relay's refunds: %w", err)
	}
	var recover []recovery
	for _, order := range orders {
		s := sessions[order]
		if s == nil || !strings.EqualFold(s.ws, p.cred.Workspace) || s.env != p.cred.Environment {
			continue // not this workspace's storefront sale, as far as relay knows
		}
		var polarTotal int64
		for _, rf := range byOrder[order] {
			polarTotal += rf.Amount + rf.TaxAmount
		}
		if max(s.refunded, s.sum) >= polarTotal {
			continue // relay has reversed as much
		}
		for _, rf := range byOrder[order] {
			if s.known[rf.ID] {
				continue
			}
			f := Finding{Kind: KindReversed, OrderID: order, RefundID: rf.ID, SessionID: s.id,
				PolarAmount: rf.Amount + rf.TaxAmount, PolarRefunded: polarTotal, Currency: rf.Currency,
				RelayRefunded: max(s.refunded, s.sum), Action: ActionReported,
				Detail: "a refund of an order older than the lookback"}
			if s.sale != nil {
				f.RelayAmount, f.RelayCurrency = s.sale, *s.saleCurrency
			}
			p.rep.Findings = append(p.rep.Findings, p.finding(f))
			rf := rf
			recover = append(recover, recovery{finding: len(p.rep.Findings) - 1, refund: &rf})
		}
	}
	return p.recover(ctx, recover)
}
