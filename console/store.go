package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/inbox"
	"github.com/relayhq/relay/internal/text"
	"github.com/relayhq/relay/jobs"
	"github.com/relayhq/relay/polar"
	"github.com/relayhq/relay/products"
)

// The console's reads. They only SELECT: every change goes through
// admin.Ops, which applies relay's rules.

// Delivery is one stored webhook as the console lists it: what came in,
// what its newest job is doing, and the sale it concerns.
type Delivery struct {
	ID          int64  `json:"id"`
	WebhookID   string `json:"webhook_id"`
	EventType   string `json:"event_type"`
	Status      string `json:"status"`
	WorkspaceID string `json:"workspace_id,omitempty"` // the endpoint's; empty: the platform's
	Workspace   string `json:"workspace"`              // its name, or "platform"
	Environment string `json:"environment,omitempty"`
	// Source is webhook, or reconciliation for a sale reconciliation
	// recovered from Polar's API (no webhook brought it).
	Source      string     `json:"source"`
	ReceivedAt  time.Time  `json:"received_at"`
	ProcessedAt *time.Time `json:"processed_at,omitempty"`
	Note        string     `json:"note,omitempty"`
	Job         *Job       `json:"job,omitempty"`
	Sale        *Sale      `json:"sale,omitempty"`
	// Product is the storefront product a product event is about, with its
	// Polar state as relay last applied it.
	Product *products.Product `json:"product,omitempty"`
	// Effect is what the delivery did to the ledger, in words.
	Effect string `json:"effect"`
	// Attention is true when an operator should look: a dead or refused job.
	Attention bool `json:"attention"`

	refs    saleRefs
	product productRefs
}

// Endpoint names the endpoint that stored the delivery (inbox.Event.Endpoint).
func (d *Delivery) Endpoint() string {
	return (&inbox.Event{WorkspaceID: d.WorkspaceID, Environment: d.Environment}).Endpoint()
}

// Job is a River job with every attempt's error.
type Job struct {
	ID          int64          `json:"id"`
	Kind        string         `json:"kind"`
	State       string         `json:"state"`
	Attempt     int            `json:"attempt"`
	MaxAttempts int            `json:"max_attempts"`
	CreatedAt   time.Time      `json:"created_at"`
	FinalizedAt *time.Time     `json:"finalized_at,omitempty"`
	LastError   string         `json:"last_error,omitempty"`
	Errors      []AttemptError `json:"-"`
	WebhookID   string         `json:"-"` // the first event's, for a batch
	EventType   string         `json:"-"`
	Events      int            `json:"-"` // events the job carries
}

// AttemptError is one failed attempt of a job.
type AttemptError struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error"`
}

// Sale is the checkout session a delivery concerns, with its bookings.
type Sale struct {
	SessionID     string     `json:"session_id"`
	WorkspaceID   string     `json:"workspace_id"`
	Workspace     string     `json:"workspace"`
	Status        string     `json:"status"`
	Amount        int64      `json:"amount"`
	Currency      string     `json:"currency"`
	Environment   string     `json:"environment"`
	PolarCheckout string     `json:"polar_checkout_id,omitempty"`
	PolarOrder    string     `json:"polar_order_id,omitempty"`
	PolarStatus   string     `json:"polar_status,omitempty"`
	Refunded      int64      `json:"refunded_amount"`
	CompletedAt   *time.Time `json:"completed_at,omitempty"`
	Booking       *Booking   `json:"booking,omitempty"`
	Reversals     []Booking  `json:"reversals,omitempty"`

	financeTxn string
	createdAt  time.Time
}

// Reversed is the total of the sale's reversals, as a positive amount.
func (s *Sale) Reversed() int64 {
	var n int64
	for _, r := range s.Reversals {
		n -= r.Amount
	}
	return n
}

// Booking is a wallet transaction: a sale's booking or a reversal.
type Booking struct {
	ID          string    `json:"id"`
	Wallet      string    `json:"wallet"`
	Amount      int64     `json:"amount"`
	Currency    string    `json:"currency"`
	Description string    `json:"description"`
	TakenAt     time.Time `json:"taken_at"`
	Reverses    string    `json:"reverses,omitempty"`
}

// saleRefs are the ids in a body that lead to its checkout session, found
// as the ledger finds it: the session id, else the order, else the checkout.
type saleRefs struct{ session, order, checkout string }

func refsOf(eventType string, body []byte) saleRefs {
	if len(body) == 0 || !polar.Handled(eventType) {
		return saleRefs{}
	}
	env, err := polar.ParseEnvelope(body)
	if err != nil {
		return saleRefs{}
	}
	var data struct {
		ID         string         `json:"id"`
		CheckoutID string         `json:"checkout_id"`
		OrderID    string         `json:"order_id"`
		Metadata   polar.Metadata `json:"metadata"`
	}
	if json.Unmarshal(env.Data, &data) != nil {
		return saleRefs{}
	}
	var r saleRefs
	if ref, ok := data.Metadata.Storefront(); ok && text.IsUUID(ref.CheckoutSessionID) {
		r.session = strings.ToLower(ref.CheckoutSessionID)
	}
	switch {
	case strings.HasPrefix(eventType, "order."):
		r.order, r.checkout = data.ID, data.CheckoutID
	case strings.HasPrefix(eventType, "checkout."):
		r.checkout = data.ID
	case strings.HasPrefix(eventType, "refund."):
		r.order = data.OrderID
	}
	return r
}

// productRefs are the ids in a product event that lead to its storefront
// product, found as products.Apply finds it: the row its metadata names,
// else the row linked to the Polar product.
type productRefs struct{ row, polar string }

func productRefsOf(eventType string, body []byte) productRefs {
	if len(body) == 0 || !strings.HasPrefix(eventType, "product.") || !polar.Handled(eventType) {
		return productRefs{}
	}
	env, err := polar.ParseEnvelope(body)
	if err != nil {
		return productRefs{}
	}
	p, err := polar.ParseProduct(env.Data)
	if err != nil {
		return productRefs{}
	}
	r := productRefs{polar: p.ID}
	if ref, ok := p.Metadata.StorefrontProduct(); ok && text.IsUUID(ref.ProductID) {
		r.row = strings.ToLower(ref.ProductID)
	}
	return r
}

// attachProducts finds each product event's storefront product, in one
// query for all of them.
func (s *store) attachProducts(ctx context.Context, ds []*Delivery) error {
	var rowIDs, polarIDs []string
	for _, d := range ds {
		if d.product.row != "" {
			rowIDs = append(rowIDs, d.product.row)
		}
		if d.product.polar != "" {
			polarIDs = append(polarIDs, d.product.polar)
		}
	}
	if len(rowIDs)+len(polarIDs) == 0 {
		return nil
	}
	rows, err := s.pool.Query(ctx, `SELECT `+products.Columns+` FROM workspace_products
		WHERE id = ANY($1::uuid[]) OR polar_product_id = ANY($2)`, rowIDs, polarIDs)
	if err != nil {
		return fmt.Errorf("find products: %w", err)
	}
	defer rows.Close()
	var found []*products.Product
	for rows.Next() {
		p, err := products.Scan(rows)
		if err != nil {
			return fmt.Errorf("find products: %w", err)
		}
		found = append(found, p)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("find products: %w", err)
	}
	for _, d := range ds {
		for _, p := range found {
			if d.product.row != "" && p.ID == d.product.row {
				d.Product = p
				break
			}
			if p.ExternalProductID != nil && *p.ExternalProductID == d.product.polar {
				d.Product = p
			}
		}
	}
	return nil
}

// store runs the console's reads.
type store struct {
	pool *pgxpool.Pool
}

// eventKinds are the job kinds that carry webhooks.
var eventKinds = []string{jobs.EventArgs{}.Kind(), jobs.EventBatchArgs{}.Kind()}

// jobColumns read a river_job row aliased j; errors come as one JSON array.
const jobColumns = `j.id, j.kind, j.state, j.attempt, j.max_attempts, j.created_at, j.finalized_at,
	coalesce(to_jsonb(j.errors), '[]'::jsonb),
	coalesce(j.args->>'webhook_id', j.args->'events'->0->>'webhook_id', ''),
	coalesce(j.args->>'event_type', j.args->'events'->0->>'event_type', ''),
	coalesce(jsonb_array_length(CASE WHEN jsonb_typeof(j.args->'events') = 'array' THEN j.args->'events' END), 1)`

func scanJob(row pgx.Row) (*Job, error) {
	var j Job
	var errs []byte
	if err := row.Scan(&j.ID, &j.Kind, &j.State, &j.Attempt, &j.MaxAttempts, &j.CreatedAt, &j.FinalizedAt,
		&errs, &j.WebhookID, &j.EventType, &j.Events); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(errs, &j.Errors); err != nil {
		return nil, fmt.Errorf("read errors of job %d: %w", j.ID, err)
	}
	if n := len(j.Errors); n > 0 {
		j.LastError = j.Errors[n-1].Error
	}
	return &j, nil
}

// deliveryColumns read an inbox row aliased i with its newest job: the one
// recorded on it, else, while it is pending, the newest job that carries it
// (a row learns its job only when the job processes it).
var deliveryColumns = `i.id, i.webhook_id, i.event_type, i.status, i.received_at, i.processed_at,
	coalesce(i.error, ''), coalesce(i.workspace_id::text, ''), coalesce(i.environment, ''), coalesce(w.name, ''), i.source,
	CASE WHEN i.status IN ('pending', 'processed') THEN i.body END,
	j.id IS NOT NULL, ` + jobColumns + `
	FROM webhook_inbox i
	LEFT JOIN workspaces w ON w.id = i.workspace_id
	LEFT JOIN LATERAL (SELECT * FROM river_job j WHERE j.id = coalesce(i.job_id, CASE WHEN i.status = 'pending' THEN
		` + inbox.JobOf("i.webhook_id", "i.workspace_id", "i.environment") + ` END)) j ON true`

func (s *store) queryDeliveries(ctx context.Context, where string, args ...any) ([]*Delivery, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+deliveryColumns+` `+where, args...)
	if err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	defer rows.Close()
	var out []*Delivery
	for rows.Next() {
		var (
			d      Delivery
			body   []byte
			hasJob bool
			j      Job
			errs   []byte
		)
		// The job's columns may all be NULL: scan them into nullable holders.
		var (
			jid, jattempt, jmax, jevents *int64
			jkind, jstate, jhook, jtype  *string
			jcreated, jfinal             *time.Time
		)
		if err := rows.Scan(&d.ID, &d.WebhookID, &d.EventType, &d.Status, &d.ReceivedAt, &d.ProcessedAt,
			&d.Note, &d.WorkspaceID, &d.Environment, &d.Workspace, &d.Source, &body, &hasJob,
			&jid, &jkind, &jstate, &jattempt, &jmax, &jcreated, &jfinal, &errs, &jhook, &jtype, &jevents); err != nil {
			return nil, fmt.Errorf("list deliveries: %w", err)
		}
		if d.WorkspaceID == "" {
			d.Workspace = "platform"
		} else if d.Workspace == "" {
			d.Workspace = d.WorkspaceID
		}
		if hasJob {
			j = Job{ID: *jid, Kind: *jkind, State: *jstate, Attempt: int(*jattempt), MaxAttempts: int(*jmax),
				CreatedAt: *jcreated, FinalizedAt: jfinal, WebhookID: *jhook, EventType: *jtype, Events: int(*jevents)}
			if err := json.Unmarshal(errs, &j.Errors); err != nil {
				return nil, fmt.Errorf("read errors of job %d: %w", j.ID, err)
			}
			if n := len(j.Errors); n > 0 {
				j.LastError = j.Errors[n-1].Error
			}
			d.Job = &j
		}
		d.refs = refsOf(d.EventType, body)
		d.product = productRefsOf(d.EventType, body)
		out = append(out, &d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list deliveries: %w", err)
	}
	if err := s.attachSales(ctx, out); err != nil {
		return nil, err
	}
	if err := s.attachProducts(ctx, out); err != nil {
		return nil, err
	}
	for _, d := range out {
		d.Effect, d.Attention = describe(d)
	}
	return out, nil
}

// Filter selects deliveries. Zero values mean no filter.
type Filter struct {
	Status    string
	EventType string
	Workspace string // a workspace id, or "platform"
	// Search is a webhook id, or the id of what a delivery is about (a Polar
	// order, checkout, customer...; a refund is about its order), or a
	// checkout session id, which finds the events of the order and checkout
	// the session records.
	Search string
	Before int64 // rows older than this inbox id: the next page
	Limit  int
}

// searchTimeout bounds a search; it reads indexes only (migration 00012),
// so it takes milliseconds at any size of the inbox.
const searchTimeout = 5 * time.Second

// maxSearchKeys bounds the subjects one search looks up.
const maxSearchKeys = 20

func (s *store) list(ctx context.Context, f Filter) ([]*Delivery, error) {
	if f.Search != "" {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, searchTimeout)
		defer cancel()
	}
	where, args, err := s.listQuery(ctx, f)
	if err != nil {
		return nil, err
	}
	out, err := s.queryDeliveries(ctx, where, args...)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return nil, fmt.Errorf("%w: searching for %q took longer than %s; filter by status or type too", errSearchTimeout, f.Search, searchTimeout)
	}
	return out, err
}

// listQuery returns the rest of list's statement after its columns, and
// its arguments.
func (s *store) listQuery(ctx context.Context, f Filter) (string, []any, error) {
	if f.Limit <= 0 {
		f.Limit = 50
	}
	where := `WHERE ($1 = '' OR i.status = $1) AND ($2 = '' OR i.event_type = $2)
		  AND ($3 = '' OR ($3 = 'platform' AND i.workspace_id IS NULL) OR i.workspace_id::text = $3)
		  AND ($4 = 0 OR i.id < $4)`
	args := []any{f.Status, f.EventType, strings.ToLower(f.Workspace), f.Before, f.Limit}
	if f.Search != "" {
		subjects, err := s.searchSubjects(ctx, f.Search)
		if err != nil {
			return "", nil, err
		}
		// Each side on its own index (the webhook id's, the subject's):
		// the search reads what it finds, not the inbox.
		where += ` AND (i.webhook_id = $6 OR webhook_inbox_subject(i.body) = ANY($7))`
		args = append(args, f.Search, subjects)
	}
	return where + ` ORDER BY i.id DESC LIMIT $5`, args, nil
}

// searchSubjects returns the subjects a search for id looks up: id itself,
// and the Polar order and checkout ids of the checkout sessions id names,
// records as its order, or records as its checkout.
func (s *store) searchSubjects(ctx context.Context, id string) ([]string, error) {
	var session *string
	if text.IsUUID(id) {
		session = &id
	}
	var more []string
	if err := s.pool.QueryRow(ctx, `
		SELECT coalesce(array_agg(DISTINCT k), '{}') FROM (
			SELECT unnest(ARRAY[s.polar_order_id, s.polar_checkout_id]) k
			FROM inventory_checkout_sessions s
			WHERE s.id = $1::uuid OR s.polar_order_id = $2 OR s.polar_checkout_id = $2
			LIMIT $3) x
		WHERE k IS NOT NULL`, session, id, maxSearchKeys).Scan(&more); err != nil {
		return nil, fmt.Errorf("search checkout sessions for %q: %w", id, err)
	}
	return append([]string{id}, more...), nil
}

var errSearchTimeout = errors.New("search timed out")

// byWebhookIDs returns the deliveries of the ids that exist, newest first.
func (s *store) byWebhookIDs(ctx context.Context, ids []string) ([]*Delivery, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	return s.queryDeliveries(ctx, `WHERE i.webhook_id = ANY($1) ORDER BY i.id DESC`, ids)
}

// attachSales finds each delivery's checkout session and its bookings, in
// two queries for all of them.
func (s *store) attachSales(ctx context.Context, ds []*Delivery) error {
	var sessions, orders, checkouts []string
	for _, d := range ds {
		if d.refs.session != "" {
			sessions = append(sessions, d.refs.session)
		}
		if d.refs.order != "" {
			orders = append(orders, d.refs.order)
		}
		if d.refs.checkout != "" {
			checkouts = append(checkouts, d.refs.checkout)
		}
	}
	if len(sessions)+len(orders)+len(checkouts) == 0 {
		return nil
	}
	rows, err := s.pool.Query(ctx, `
		SELECT s.id::text, s.ws_id::text, w.name, s.status, s.total_amount, s.currency, s.polar_environment,
		       coalesce(s.polar_checkout_id, ''), coalesce(s.polar_order_id, ''), coalesce(s.polar_status, ''),
		       coalesce(s.finance_transaction_id::text, ''), s.refunded_amount, s.completed_at, s.created_at
		FROM inventory_checkout_sessions s JOIN workspaces w ON w.id = s.ws_id
		WHERE s.id = ANY($1::uuid[]) OR s.polar_order_id = ANY($2) OR s.polar_checkout_id = ANY($3)`,
		sessions, orders, checkouts)
	if err != nil {
		return fmt.Errorf("find checkout sessions: %w", err)
	}
	var found []*Sale
	for rows.Next() {
		var x Sale
		if err := rows.Scan(&x.SessionID, &x.WorkspaceID, &x.Workspace, &x.Status, &x.Amount, &x.Currency, &x.Environment,
			&x.PolarCheckout, &x.PolarOrder, &x.PolarStatus, &x.financeTxn, &x.Refunded, &x.CompletedAt, &x.createdAt); err != nil {
			rows.Close()
			return fmt.Errorf("find checkout sessions: %w", err)
		}
		x.Currency = strings.ToUpper(x.Currency)
		found = append(found, &x)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("find checkout sessions: %w", err)
	}
	if err := s.attachBookings(ctx, found); err != nil {
		return err
	}
	for _, d := range ds {
		d.Sale = matchSale(d.refs, found)
	}
	return nil
}

// matchSale picks the session as the ledger does: named, else recording
// the order, else the newest with the checkout id.
func matchSale(r saleRefs, sales []*Sale) *Sale {
	var byOrder, byCheckout *Sale
	for _, x := range sales {
		switch {
		case r.session != "" && x.SessionID == r.session:
			return x
		case r.order != "" && x.PolarOrder == r.order:
			byOrder = x
		case r.checkout != "" && x.PolarCheckout == r.checkout:
			if byCheckout == nil || x.createdAt.After(byCheckout.createdAt) {
				byCheckout = x
			}
		}
	}
	if byOrder != nil {
		return byOrder
	}
	return byCheckout
}

func (s *store) attachBookings(ctx context.Context, sales []*Sale) error {
	var ids []string
	for _, x := range sales {
		if x.financeTxn != "" {
			ids = append(ids, x.financeTxn)
		}
	}
	if len(ids) == 0 {
		return nil
	}
	rows, err := s.pool.Query(ctx, `
		SELECT t.id::text, wl.name, t.amount, t.currency, t.description, t.taken_at, coalesce(t.reverses_id::text, '')
		FROM wallet_transactions t JOIN workspace_wallets wl ON wl.id = t.wallet_id
		WHERE t.id = ANY($1::uuid[]) OR t.reverses_id = ANY($1::uuid[])
		ORDER BY t.created_at, t.id`, ids)
	if err != nil {
		return fmt.Errorf("find bookings: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var b Booking
		if err := rows.Scan(&b.ID, &b.Wallet, &b.Amount, &b.Currency, &b.Description, &b.TakenAt, &b.Reverses); err != nil {
			return fmt.Errorf("find bookings: %w", err)
		}
		b.Currency = strings.ToUpper(b.Currency)
		for _, x := range sales {
			switch {
			case b.ID == x.financeTxn:
				x.Booking = &b
			case b.Reverses != "" && b.Reverses == x.financeTxn:
				x.Reversals = append(x.Reversals, b)
			}
		}
	}
	return rows.Err()
}

// jobsOf returns every job that carries the delivery, alone or in a batch,
// oldest first.
func (s *store) jobsOf(ctx context.Context, d *Delivery) ([]*Job, error) {
	webhookID := d.WebhookID
	rows, err := s.pool.Query(ctx, `SELECT `+jobColumns+` FROM river_job j,
		`+inbox.KeyJSON("$1::text", "$2::uuid", "$3::text")+` k
		WHERE `+inbox.Carries("j.args", "k")+`
		ORDER BY j.id`, webhookID, text.NullIfEmpty(d.WorkspaceID), text.NullIfEmpty(d.Environment))
	if err != nil {
		return nil, fmt.Errorf("jobs of %q: %w", webhookID, err)
	}
	defer rows.Close()
	var out []*Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, fmt.Errorf("jobs of %q: %w", webhookID, err)
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// jobsIn returns the newest jobs in state finalized (or, unfinished,
// created) at or after since, and how many there are in all; refusedOnly
// keeps those that failed with an error (relay's refusals, not an
// operator's cancel).
func (s *store) jobsIn(ctx context.Context, state string, since time.Time, limit int, withErrorOnly bool) ([]*Job, int, error) {
	const where = ` FROM river_job j WHERE j.state = $1 AND coalesce(j.finalized_at, j.created_at) >= $2
		AND (NOT $3 OR (j.kind = ANY($4) AND cardinality(j.errors) > 0))`
	var total int
	if err := s.pool.QueryRow(ctx, `SELECT count(*)`+where, state, since, withErrorOnly, eventKinds).Scan(&total); err != nil {
		return nil, 0, fmt.Errorf("count %s jobs: %w", state, err)
	}
	rows, err := s.pool.Query(ctx, `SELECT `+jobColumns+where+` ORDER BY j.id DESC LIMIT $5`, state, since, withErrorOnly, eventKinds, limit)
	if err != nil {
		return nil, 0, fmt.Errorf("list %s jobs: %w", state, err)
	}
	defer rows.Close()
	var out []*Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, 0, fmt.Errorf("list %s jobs: %w", state, err)
		}
		out = append(out, j)
	}
	return out, total, rows.Err()
}

// clock returns the database's time: the same clock on every replica.
func (s *store) clock(ctx context.Context) (time.Time, error) {
	var now time.Time
	if err := s.pool.QueryRow(ctx, `SELECT clock_timestamp()`).Scan(&now); err != nil {
		return time.Time{}, fmt.Errorf("read the database clock: %w", err)
	}
	return now, nil
}

// changesSQL finds what changed after $1, each branch limited to $2 rows
// on its own: the database stops reading at the limit however much
// changed, where a UNION had to read everything to remove duplicates first.
const changesSQL = `
	(SELECT 1, webhook_id FROM webhook_inbox
	 WHERE status IN ('pending', 'processed', 'ignored', 'invalid') AND received_at > $1
	 LIMIT $2)
	UNION ALL
	-- Each job branch on an index of River's whose first column is the
	-- state, so a poll reads what changed, not every job kept.
	(SELECT 2, coalesce(j.args->>'webhook_id', e->>'webhook_id') FROM (
		SELECT args FROM river_job
		WHERE state IN ('completed', 'discarded', 'cancelled') AND finalized_at > $1 AND kind = ANY($3)) j
	 LEFT JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(j.args->'events') = 'array' THEN j.args->'events' END) e ON true
	 LIMIT $2)
	UNION ALL
	(SELECT 3, coalesce(j.args->>'webhook_id', e->>'webhook_id') FROM (
		SELECT args FROM river_job
		WHERE state IN ('available', 'pending', 'retryable', 'running', 'scheduled') AND kind = ANY($3)
		  AND (created_at > $1 OR attempted_at > $1 OR (scheduled_at > $1 AND scheduled_at <= now()))) j
	 LEFT JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof(j.args->'events') = 'array' THEN j.args->'events' END) e ON true
	 LIMIT $2)`

// changes returns the webhook ids whose delivery or job changed after since
// (by the database's clock), at most limit, and whether there were more.
// It reads at most limit+1 rows of each kind of change, however many there
// are. Row times are those of their transactions' starts, so a caller asks
// again from a little before the database's time before the call, and sees
// some changes twice.
func (s *store) changes(ctx context.Context, since time.Time, limit int) (ids []string, more bool, err error) {
	rows, err := s.pool.Query(ctx, changesSQL, since, limit+1, eventKinds)
	if err != nil {
		return nil, false, fmt.Errorf("find changes: %w", err)
	}
	defer rows.Close()
	perBranch := make(map[int]int)
	seen := make(map[string]bool)
	for rows.Next() {
		var branch int
		var id *string
		if err := rows.Scan(&branch, &id); err != nil {
			return nil, false, fmt.Errorf("find changes: %w", err)
		}
		if perBranch[branch]++; perBranch[branch] > limit {
			more = true
		}
		if id != nil && !seen[*id] {
			seen[*id] = true
			ids = append(ids, *id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, false, fmt.Errorf("find changes: %w", err)
	}
	if len(ids) > limit {
		ids, more = ids[:limit], true
	}
	return ids, more, nil
}

// workspaces are the filter's choices: the platform's endpoint, then every
// workspace by name.
func (s *store) workspaces(ctx context.Context) ([]option, error) {
	rows, err := s.pool.Query(ctx, `SELECT id::text, name FROM workspaces ORDER BY name, id LIMIT 500`)
	if err != nil {
		return nil, fmt.Errorf("list workspaces: %w", err)
	}
	defer rows.Close()
	out := []option{{Value: "platform", Label: "platform"}}
	for rows.Next() {
		var o option
		if err := rows.Scan(&o.Value, &o.Label); err != nil {
			return nil, fmt.Errorf("list workspaces: %w", err)
		}
		o.Label += " (" + o.Value[:8] + ")"
		out = append(out, o)
	}
	return out, rows.Err()
}
