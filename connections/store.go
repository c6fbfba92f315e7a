// Package connections holds each workspace's connection to its Polar
// organization, per environment: the organization access token, stored
// encrypted as endpoint secrets are (same RELAY_SECRETS_KEY keyring, the
// row's identity as additional data, re-encrypted by `relay endpoints
// rekey`), and what relay last saw of its webhook endpoint at Polar and of
// its last reconciliation pass.
package connections

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/endpoints"
	"github.com/relayhq/relay/internal/text"
)

// States of relay's endpoint at Polar, as last seen.
const (
	StateEnabled      = "enabled"      // Polar delivers to it
	StateDisabled     = "disabled"     // Polar disabled it (10 failed events in a row): it sends nothing
	StateMissing      = "missing"      // no endpoint at Polar has relay's URL
	StateUnknown      = "unknown"      // not looked at yet, or the token may not read endpoints
	StateUnauthorized = "unauthorized" // Polar rejected the token (401)
)

// Errors callers map to statuses (400 and 404 in the admin API).
var (
	ErrInvalid  = endpoints.ErrInvalid
	ErrNotFound = endpoints.ErrNotFound
)

// Reconciliation is what the last reconciliation pass left.
type Reconciliation struct {
	At       time.Time `json:"at"`
	Result   string    `json:"result"` // ok, failed, unauthorized, forbidden, ...
	Findings int       `json:"findings"`
	Error    string    `json:"error,omitempty"`
}

// Connection describes a stored connection; it never holds the token.
type Connection struct {
	ID             string          `json:"id"`
	Workspace      string          `json:"workspace"`
	Environment    string          `json:"environment"`
	TokenLast4     string          `json:"token_last4"`
	OrganizationID string          `json:"organization_id,omitempty"`
	EndpointID     string          `json:"endpoint_id,omitempty"`
	EndpointURL    string          `json:"endpoint_url,omitempty"`
	State          string          `json:"state"`
	Registered     bool            `json:"endpoint_registered"` // relay created the endpoint at Polar
	StateCheckedAt *time.Time      `json:"state_checked_at,omitempty"`
	LastReconcile  *Reconciliation `json:"last_reconciliation,omitempty"`
	CreatedAt      time.Time       `json:"created_at"`
	UpdatedAt      time.Time       `json:"updated_at"`
}

// Credentials is a connection with its token, for talking to Polar. Never
// log or serialise it.
type Credentials struct {
	Connection
	Token string `json:"-"`
}

// Endpoint is what is known of relay's endpoint at Polar.
type Endpoint struct {
	ID         string // Polar's id; "" when there is none
	URL        string
	State      string
	Registered bool // relay created it
}

// Store administers connections. Without keys it can list and remove
// them; storing and reading tokens need keys.
type Store struct {
	pool *pgxpool.Pool
	keys *endpoints.Keyring
}

// NewStore returns a Store on pool that encrypts with keys.
func NewStore(pool *pgxpool.Pool, keys *endpoints.Keyring) *Store {
	return &Store{pool: pool, keys: keys}
}

// purpose tells a token's ciphertext from an endpoint secret's.
const purpose = "polar token"

func identity(id, ws, env string) []string { return []string{id, ws, env} }

// CheckToken refuses what cannot be an organization access token. Its
// messages never quote the token.
func CheckToken(token string) error {
	switch {
	case token == "":
		return fmt.Errorf("%w: the token is empty", ErrInvalid)
	case len(token) < 16 || len(token) > 1024:
		return fmt.Errorf("%w: the token is %d bytes, want 16 to 1024", ErrInvalid, len(token))
	case strings.IndexFunc(token, func(r rune) bool { return r > unicode.MaxASCII || unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("%w: the token contains whitespace, control or non-ASCII characters", ErrInvalid)
	}
	return nil
}

func last4(s string) string { return s[len(s)-4:] }

func checkEnvironment(env string) error {
	if env != endpoints.Production && env != endpoints.Sandbox {
		return fmt.Errorf("%w: environment %q: want %s or %s", ErrInvalid, clip(env), endpoints.Production, endpoints.Sandbox)
	}
	return nil
}

func clip(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

func newID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

// Put stores token as the workspace's connection in environment, with what
// is known of its organization and endpoint, replacing the token and
// endpoint of an existing connection (its last reconciliation is kept).
// The token is encrypted before it leaves the process.
func (s *Store) Put(ctx context.Context, workspace, environment, token, organizationID string, ep Endpoint) (Connection, error) {
	ws, err := endpoints.ParseWorkspace(workspace)
	if err != nil {
		return Connection{}, err
	}
	if err := checkEnvironment(environment); err != nil {
		return Connection{}, err
	}
	if err := CheckToken(token); err != nil {
		return Connection{}, err
	}
	if ep.State == "" {
		ep.State = StateUnknown
	}
	if !s.keys.Configured() {
		return Connection{}, endpoints.ErrNoKey
	}
	var out Connection
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Rekey takes this lock: a token never lands under a key it moved
		// every other row away from.
		if _, err := tx.Exec(ctx, `LOCK TABLE polar_connections IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		if err := s.checkKeyIDs(ctx, tx); err != nil {
			return err
		}
		var id string
		err := tx.QueryRow(ctx, `SELECT id::text FROM polar_connections WHERE workspace_id = $1 AND environment = $2`, ws, environment).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			if id, err = newID(); err != nil {
				return err
			}
		} else if err != nil {
			return err
		}
		sealed, err := s.keys.SealFor(purpose, identity(id, ws, environment), []byte(token))
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `
			INSERT INTO polar_connections AS c (id, workspace_id, environment, token_ciphertext, key_id, token_last4,
				organization_id, endpoint_id, endpoint_url, state, endpoint_registered, state_checked_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, CASE WHEN $10 = 'unknown' THEN NULL ELSE now() END)
			ON CONFLICT (id) DO UPDATE SET
				token_ciphertext = EXCLUDED.token_ciphertext, key_id = EXCLUDED.key_id, token_last4 = EXCLUDED.token_last4,
				organization_id = coalesce(EXCLUDED.organization_id, c.organization_id),
				endpoint_id = EXCLUDED.endpoint_id, endpoint_url = EXCLUDED.endpoint_url, state = EXCLUDED.state,
				endpoint_registered = EXCLUDED.endpoint_registered OR (c.endpoint_registered AND coalesce(c.endpoint_id = EXCLUDED.endpoint_id, false)),
				state_checked_at = EXCLUDED.state_checked_at, updated_at = now()
			RETURNING `+columns,
			id, ws, environment, sealed.Ciphertext, sealed.KeyID, last4(token),
			text.NullIfEmpty(organizationID), text.NullIfEmpty(ep.ID), text.NullIfEmpty(ep.URL), ep.State, ep.Registered)
		if err != nil {
			return err
		}
		out, err = pgx.CollectExactlyOneRow(rows, scan)
		return err
	})
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "23503" {
		return Connection{}, fmt.Errorf("%w: workspace %s does not exist", ErrNotFound, ws)
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && (pgErr.Code == "22P02" || pgErr.Code == "23514") {
		return Connection{}, fmt.Errorf("%w: %s", ErrInvalid, pgErr.Message)
	}
	if errors.Is(err, errKeyring) {
		return Connection{}, err
	}
	if err != nil {
		return Connection{}, fmt.Errorf("store polar connection: %w", err)
	}
	return out, nil
}

const columns = `id::text, workspace_id::text, environment, token_last4, coalesce(organization_id::text, ''),
	coalesce(endpoint_id::text, ''), coalesce(endpoint_url, ''), state, endpoint_registered, state_checked_at,
	last_reconciled_at, coalesce(last_reconcile_result, ''), coalesce(last_reconcile_findings, 0),
	coalesce(last_reconcile_error, ''), created_at, updated_at`

func scan(r pgx.CollectableRow) (Connection, error) {
	var c Connection
	var at *time.Time
	var rec Reconciliation
	err := r.Scan(&c.ID, &c.Workspace, &c.Environment, &c.TokenLast4, &c.OrganizationID,
		&c.EndpointID, &c.EndpointURL, &c.State, &c.Registered, &c.StateCheckedAt,
		&at, &rec.Result, &rec.Findings, &rec.Error, &c.CreatedAt, &c.UpdatedAt)
	if at != nil {
		rec.At = *at
		c.LastReconcile = &rec
	}
	return c, err
}

// List returns the connections of workspace, or of every workspace when it
// is "", by workspace and environment.
func (s *Store) List(ctx context.Context, workspace string) ([]Connection, error) {
	var ws *string
	if workspace != "" {
		w, err := endpoints.ParseWorkspace(workspace)
		if err != nil {
			return nil, err
		}
		ws = &w
	}
	rows, err := s.pool.Query(ctx, `SELECT `+columns+` FROM polar_connections
		WHERE $1::uuid IS NULL OR workspace_id = $1 ORDER BY workspace_id, environment`, ws)
	if err != nil {
		return nil, fmt.Errorf("list polar connections: %w", err)
	}
	list, err := pgx.CollectRows(rows, scan)
	if err != nil {
		return nil, fmt.Errorf("list polar connections: %w", err)
	}
	return list, nil
}

// Get returns the workspace's connection in environment, or ErrNotFound.
func (s *Store) Get(ctx context.Context, workspace, environment string) (Connection, error) {
	c, err := s.get(ctx, workspace, environment)
	return c.Connection, err
}

// Credentials returns the connection with its token decrypted.
func (s *Store) Credentials(ctx context.Context, workspace, environment string) (Credentials, error) {
	c, err := s.get(ctx, workspace, environment)
	if err != nil {
		return Credentials{}, err
	}
	return s.open(c)
}

// AllCredentials returns every connection with its token, for the
// periodic reconciliation.
func (s *Store) AllCredentials(ctx context.Context) ([]Credentials, error) {
	rows, err := s.pool.Query(ctx, selectStored+` ORDER BY workspace_id, environment`)
	if err != nil {
		return nil, fmt.Errorf("read polar connections: %w", err)
	}
	all, err := pgx.CollectRows(rows, scanStored)
	if err != nil {
		return nil, fmt.Errorf("read polar connections: %w", err)
	}
	out := make([]Credentials, 0, len(all))
	for _, st := range all {
		c, err := s.open(st)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

type stored struct {
	Connection
	sealed endpoints.Sealed
}

const selectStored = `SELECT ` + columns + `, key_id, token_ciphertext FROM polar_connections`

func scanStored(r pgx.CollectableRow) (stored, error) {
	var st stored
	var at *time.Time
	var rec Reconciliation
	c := &st.Connection
	err := r.Scan(&c.ID, &c.Workspace, &c.Environment, &c.TokenLast4, &c.OrganizationID,
		&c.EndpointID, &c.EndpointURL, &c.State, &c.Registered, &c.StateCheckedAt,
		&at, &rec.Result, &rec.Findings, &rec.Error, &c.CreatedAt, &c.UpdatedAt,
		&st.sealed.KeyID, &st.sealed.Ciphertext)
	if at != nil {
		rec.At = *at
		c.LastReconcile = &rec
	}
	return st, err
}

func (s *Store) get(ctx context.Context, workspace, environment string) (stored, error) {
	ws, err := endpoints.ParseWorkspace(workspace)
	if err != nil {
		return stored{}, err
	}
	if err := checkEnvironment(environment); err != nil {
		return stored{}, err
	}
	rows, err := s.pool.Query(ctx, selectStored+` WHERE workspace_id = $1 AND environment = $2`, ws, environment)
	if err != nil {
		return stored{}, fmt.Errorf("read polar connection: %w", err)
	}
	st, err := pgx.CollectExactlyOneRow(rows, scanStored)
	if errors.Is(err, pgx.ErrNoRows) {
		return stored{}, fmt.Errorf("%w: workspace %s has no %s connection to Polar", ErrNotFound, ws, environment)
	}
	if err != nil {
		return stored{}, fmt.Errorf("read polar connection: %w", err)
	}
	return st, nil
}

// errKeyring marks a keyring that cannot open a stored token.
var errKeyring = errors.New("wrong key?")

func (s *Store) cannotDecrypt(id, ws string) error {
	return fmt.Errorf("%s cannot decrypt the Polar token of connection %s (workspace %s): %w", s.keys.Source(), id, ws, errKeyring)
}

func (s *Store) open(st stored) (Credentials, error) {
	plain, err := s.keys.OpenFor(purpose, identity(st.ID, st.Workspace, st.Environment), st.sealed)
	if errors.Is(err, endpoints.ErrNoKey) {
		return Credentials{}, err
	}
	if err != nil {
		return Credentials{}, s.cannotDecrypt(st.ID, st.Workspace)
	}
	return Credentials{Connection: st.Connection, Token: string(plain)}, nil
}

func (s *Store) checkKeyIDs(ctx context.Context, tx pgx.Tx) error {
	var id, ws string
	err := tx.QueryRow(ctx, `SELECT id::text, workspace_id::text FROM polar_connections
		WHERE key_id <> ALL($1) ORDER BY created_at LIMIT 1`, s.keys.KeyIDs()).Scan(&id, &ws)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("check polar token keys: %w", err)
	}
	return s.cannotDecrypt(id, ws)
}

// Remove deletes the workspace's connection in environment and returns it.
// The endpoint at Polar and the workspace's endpoint secrets stay.
func (s *Store) Remove(ctx context.Context, workspace, environment string) (Connection, error) {
	ws, err := endpoints.ParseWorkspace(workspace)
	if err != nil {
		return Connection{}, err
	}
	if err := checkEnvironment(environment); err != nil {
		return Connection{}, err
	}
	rows, err := s.pool.Query(ctx, `DELETE FROM polar_connections WHERE workspace_id = $1 AND environment = $2
		RETURNING `+columns, ws, environment)
	if err != nil {
		return Connection{}, fmt.Errorf("remove polar connection: %w", err)
	}
	c, err := pgx.CollectExactlyOneRow(rows, scan)
	if errors.Is(err, pgx.ErrNoRows) {
		return Connection{}, fmt.Errorf("%w: workspace %s has no %s connection to Polar", ErrNotFound, ws, environment)
	}
	if err != nil {
		return Connection{}, fmt.Errorf("remove polar connection: %w", err)
	}
	return c, nil
}

// SetEndpoint records what was seen of relay's endpoint at Polar.
func (s *Store) SetEndpoint(ctx context.Context, id string, ep Endpoint) error {
	if ep.State == "" {
		ep.State = StateUnknown
	}
	return s.update(ctx, id, `endpoint_id = $2, endpoint_url = coalesce($3, endpoint_url), state = $4,
		endpoint_registered = $5, state_checked_at = now()`, text.NullIfEmpty(ep.ID), text.NullIfEmpty(ep.URL), ep.State, ep.Registered)
}

// SetState records the endpoint's state alone (e.g. unauthorized when
// Polar rejected the token).
func (s *Store) SetState(ctx context.Context, id, state string) error {
	return s.update(ctx, id, `state = $2, state_checked_at = now()`, state)
}

// SetOrganization records the Polar organization the token belongs to.
func (s *Store) SetOrganization(ctx context.Context, id, organizationID string) error {
	return s.update(ctx, id, `organization_id = $2`, organizationID)
}

// RecordReconciliation records the end of a reconciliation pass.
func (s *Store) RecordReconciliation(ctx context.Context, id string, r Reconciliation) error {
	if r.At.IsZero() {
		r.At = time.Now()
	}
	return s.update(ctx, id, `last_reconciled_at = $2, last_reconcile_result = $3, last_reconcile_findings = $4,
		last_reconcile_error = $5`, r.At, r.Result, r.Findings, text.NullIfEmpty(r.Error))
}

func (s *Store) update(ctx context.Context, id, set string, args ...any) error {
	tag, err := s.pool.Exec(ctx, `UPDATE polar_connections SET `+set+`, updated_at = now() WHERE id = $1`,
		append([]any{id}, args...)...)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && (pgErr.Code == "22P02" || pgErr.Code == "23514") {
		return fmt.Errorf("%w: %s", ErrInvalid, pgErr.Message)
	}
	if err != nil {
		return fmt.Errorf("update polar connection %s: %w", id, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w: no polar connection %s", ErrNotFound, id)
	}
	return nil
}

// Check fails clearly unless every stored token decrypts with the
// configured keys (relay serve calls it at start).
func (s *Store) Check(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, selectStored+` ORDER BY created_at, id`)
	if err != nil {
		return fmt.Errorf("check polar connections: %w", err)
	}
	all, err := pgx.CollectRows(rows, scanStored)
	if err != nil {
		return fmt.Errorf("check polar connections: %w", err)
	}
	if len(all) > 0 && !s.keys.Configured() {
		return fmt.Errorf("%d Polar connection token(s) are stored but %w", len(all), endpoints.ErrNoKey)
	}
	for _, st := range all {
		if _, err := s.open(st); err != nil {
			return err
		}
	}
	return nil
}

// Rekey re-encrypts every token with the first key, in one transaction,
// and reports how many. A token no configured key opens fails it and
// changes nothing.
func (s *Store) Rekey(ctx context.Context) (int, error) {
	if !s.keys.Configured() {
		return 0, endpoints.ErrNoKey
	}
	n := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `LOCK TABLE polar_connections IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, selectStored+` ORDER BY id`)
		if err != nil {
			return err
		}
		all, err := pgx.CollectRows(rows, scanStored)
		if err != nil {
			return err
		}
		for _, st := range all {
			c, err := s.open(st)
			if err != nil {
				return err
			}
			sealed, err := s.keys.SealFor(purpose, identity(st.ID, st.Workspace, st.Environment), []byte(c.Token))
			if err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `UPDATE polar_connections SET token_ciphertext = $2, key_id = $3 WHERE id = $1`,
				st.ID, sealed.Ciphertext, sealed.KeyID); err != nil {
				return err
			}
		}
		n = len(all)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("rekey polar connection tokens: %w", err)
	}
	return n, nil
}
