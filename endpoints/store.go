package endpoints

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/relayhq/relay/internal/text"
)

// Environments a workspace's Polar organization runs in.
const (
	Production = "production"
	Sandbox    = "sandbox"
)

// Errors callers map to statuses (400 and 404 in the admin API).
var (
	ErrInvalid  = errors.New("invalid")
	ErrNotFound = errors.New("not found")
)

// Limits on a secret as given. Polar's are some 50 characters; a short one
// would be half shown by its last 4.
const (
	minSecretLen = 16
	maxSecretLen = 1024
)

// Secret describes a stored endpoint secret; it never holds the secret.
type Secret struct {
	ID          string    `json:"id"`
	Workspace   string    `json:"workspace"`
	Environment string    `json:"environment"`
	Last4       string    `json:"last4"`
	CreatedAt   time.Time `json:"created_at"`
}

// Store administers endpoint secrets. Without keys it can list and remove
// them; adding, checking and rekeying need keys.
type Store struct {
	pool *pgxpool.Pool
	keys *Keyring
}

// NewStore returns a Store on pool that encrypts with keys.
func NewStore(pool *pgxpool.Pool, keys *Keyring) *Store {
	return &Store{pool: pool, keys: keys}
}

// ParseWorkspace returns s as a canonical (lower-case, hyphenated) UUID,
// or an error wrapping ErrInvalid.
func ParseWorkspace(s string) (string, error) {
	if !text.IsUUID(s) {
		return "", fmt.Errorf("%w: workspace %q is not a UUID", ErrInvalid, clip(s))
	}
	return strings.ToLower(s), nil
}

// clip keeps echoed input short and printable in error messages.
func clip(s string) string {
	return strings.ToValidUTF8(text.Abbrev(s, 40), "?")
}

func checkEnvironment(env string) error {
	if env != Production && env != Sandbox {
		return fmt.Errorf("%w: environment %q: want %s or %s", ErrInvalid, clip(env), Production, Sandbox)
	}
	return nil
}

// checkSecret refuses what cannot be a signing secret. Its messages never
// quote the secret.
func checkSecret(secret string) error {
	n := utf8.RuneCountInString(secret)
	switch {
	case secret == "":
		return fmt.Errorf("%w: the secret is empty", ErrInvalid)
	case !utf8.ValidString(secret):
		return fmt.Errorf("%w: the secret is not UTF-8", ErrInvalid)
	case n < minSecretLen || len(secret) > maxSecretLen:
		return fmt.Errorf("%w: the secret is %d characters, want %d to %d", ErrInvalid, n, minSecretLen, maxSecretLen)
	case strings.IndexFunc(secret, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("%w: the secret contains whitespace or control characters", ErrInvalid)
	}
	return nil
}

func last4(secret string) string {
	r := []rune(secret)
	return string(r[len(r)-4:])
}

// newID returns a random (version 4) UUID. The id is chosen before the row
// is written because the ciphertext is bound to it.
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

// Add stores secret for the workspace's environment and returns what
// describes it. The secret is encrypted before it leaves the process.
func (s *Store) Add(ctx context.Context, workspace, environment, secret string) (Secret, error) {
	ws, err := ParseWorkspace(workspace)
	if err != nil {
		return Secret{}, err
	}
	if err := checkEnvironment(environment); err != nil {
		return Secret{}, err
	}
	if err := checkSecret(secret); err != nil {
		return Secret{}, err
	}
	if !s.keys.Configured() {
		return Secret{}, ErrNoKey
	}
	id, err := newID()
	if err != nil {
		return Secret{}, err
	}
	ct, kid, err := s.keys.seal(id, ws, environment, []byte(secret))
	if err != nil {
		return Secret{}, err
	}
	out := Secret{ID: id, Workspace: ws, Environment: environment, Last4: last4(secret)}
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The lock rekey takes, and that adds take from one another: what
		// is checked below cannot change before the insert commits. Without
		// it, an add whose keyring lacks the key a concurrent rekey moved
		// every secret to stored its secret under the old key, and two adds
		// of one secret for both environments both passed.
		if _, err := tx.Exec(ctx, `LOCK TABLE endpoint_secrets IN SHARE ROW EXCLUSIVE MODE`); err != nil {
			return err
		}
		// A secret encrypted with a key the servers lack would not verify
		// there: refuse to add under a keyring that cannot open what exists.
		if err := s.checkKeyIDs(ctx, tx); err != nil {
			return err
		}
		if err := s.checkOtherEnvironment(ctx, tx, ws, environment, secret); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `
			INSERT INTO endpoint_secrets (id, workspace_id, environment, ciphertext, key_id, last4)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING created_at`,
			id, ws, environment, ct, kid, out.Last4).Scan(&out.CreatedAt)
	})
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "23503" {
		return Secret{}, fmt.Errorf("%w: workspace %s does not exist", ErrNotFound, ws)
	}
	if errors.Is(err, ErrInvalid) || errors.Is(err, errKeyring) {
		return Secret{}, err
	}
	if err != nil {
		return Secret{}, fmt.Errorf("add endpoint secret: %w", err)
	}
	return out, nil
}

// checkOtherEnvironment refuses a secret the workspace's other environment
// has: production's secrets are tried first, so a sandbox delivery (test
// cards) signed with it would verify as production and complete production
// sales.
func (s *Store) checkOtherEnvironment(ctx context.Context, tx pgx.Tx, ws, environment, secret string) error {
	rows, err := tx.Query(ctx, selectStored+` WHERE workspace_id = $1 AND environment <> $2`, ws, environment)
	if err != nil {
		return err
	}
	others, err := pgx.CollectRows(rows, scanStored)
	if err != nil {
		return err
	}
	for _, st := range others {
		plain, err := s.open(st)
		if err != nil {
			return err
		}
		if subtle.ConstantTimeCompare(plain, []byte(secret)) == 1 {
			return fmt.Errorf("%w: this secret is stored for %s of workspace %s already (secret %s, …%s): "+
				"a workspace's production and sandbox endpoints must have different secrets, "+
				"or sandbox deliveries would complete production sales", ErrInvalid, st.Environment, ws, st.ID, st.Last4)
		}
	}
	return nil
}

// checkKeyIDs fails if a stored secret was encrypted with a key this
// keyring lacks.
func (s *Store) checkKeyIDs(ctx context.Context, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) error {
	var id, ws string
	err := db.QueryRow(ctx, `SELECT id::text, workspace_id::text FROM endpoint_secrets
		WHERE key_id <> ALL($1) ORDER BY created_at LIMIT 1`, s.keyIDs()).Scan(&id, &ws)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("check endpoint secret keys: %w", err)
	}
	return s.cannotDecrypt(id, ws)
}

func (s *Store) keyIDs() []string {
	var ids []string
	if s.keys != nil {
		for _, k := range s.keys.keys {
			ids = append(ids, k.id)
		}
	}
	return ids
}

// errKeyring marks a keyring that cannot open a stored secret.
var errKeyring = errors.New("wrong key?")

func (s *Store) cannotDecrypt(id, ws string) error {
	return fmt.Errorf("%s cannot decrypt endpoint secret %s of workspace %s: %w", s.keys.Source(), id, ws, errKeyring)
}

// secretColumns are what scanSecret reads.
const secretColumns = `id::text, workspace_id::text, environment, last4, created_at`

func scanSecret(r pgx.CollectableRow) (Secret, error) {
	var sec Secret
	err := r.Scan(&sec.ID, &sec.Workspace, &sec.Environment, &sec.Last4, &sec.CreatedAt)
	return sec, err
}

// List returns the secrets of workspace, or of every workspace when it is
// "", by workspace and environment, oldest first.
func (s *Store) List(ctx context.Context, workspace string) ([]Secret, error) {
	var ws *string
	if workspace != "" {
		w, err := ParseWorkspace(workspace)
		if err != nil {
			return nil, err
		}
		ws = &w
	}
	rows, err := s.pool.Query(ctx, `
		SELECT `+secretColumns+` FROM endpoint_secrets
		WHERE $1::uuid IS NULL OR workspace_id = $1
		ORDER BY workspace_id, environment, created_at, id`, ws)
	if err != nil {
		return nil, fmt.Errorf("list endpoint secrets: %w", err)
	}
	list, err := pgx.CollectRows(rows, scanSecret)
	if err != nil {
		return nil, fmt.Errorf("list endpoint secrets: %w", err)
	}
	return list, nil
}

// Remove deletes the secrets with ids, all or none: an unknown id fails the
// whole call, so a typo never half-applies a rotation.
func (s *Store) Remove(ctx context.Context, ids ...string) ([]Secret, error) {
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: no endpoint secret id given", ErrInvalid)
	}
	want := make([]string, 0, len(ids))
	for _, id := range ids {
		if !text.IsUUID(id) {
			return nil, fmt.Errorf("%w: endpoint secret id %q is not a UUID", ErrInvalid, clip(id))
		}
		want = append(want, strings.ToLower(id))
	}
	slices.Sort(want)
	want = slices.Compact(want)

	var removed []Secret
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			DELETE FROM endpoint_secrets WHERE id = ANY($1::uuid[])
			RETURNING `+secretColumns, want)
		if err != nil {
			return err
		}
		removed, err = pgx.CollectRows(rows, scanSecret)
		if err != nil {
			return err
		}
		if len(removed) == len(want) {
			return nil
		}
		var missing []string
		for _, id := range want {
			if !slices.ContainsFunc(removed, func(sec Secret) bool { return sec.ID == id }) {
				missing = append(missing, id)
			}
		}
		return fmt.Errorf("%w: no endpoint secret %s (nothing removed)", ErrNotFound, strings.Join(missing, ", "))
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("remove endpoint secrets: %w", err)
	}
	slices.SortFunc(removed, func(a, b Secret) int { return strings.Compare(a.ID, b.ID) })
	return removed, nil
}

// stored is a row as read for decryption.
type stored struct {
	Secret
	keyID      string
	ciphertext []byte
}

const selectStored = `SELECT ` + secretColumns + `, key_id, ciphertext FROM endpoint_secrets`

func scanStored(r pgx.CollectableRow) (stored, error) {
	var st stored
	err := r.Scan(&st.ID, &st.Workspace, &st.Environment, &st.Last4, &st.CreatedAt, &st.keyID, &st.ciphertext)
	return st, err
}

func (s *Store) open(st stored) ([]byte, error) {
	plain, err := s.keys.open(st.ID, st.Workspace, st.Environment, st.keyID, st.ciphertext)
	if err != nil {
		return nil, s.cannotDecrypt(st.ID, st.Workspace)
	}
	return plain, nil
}

// Check is what relay serve calls at start: when any endpoint secret
// exists, it fails clearly unless a key is configured and every secret
// decrypts with the configured keys.
func (s *Store) Check(ctx context.Context) error {
	rows, err := s.pool.Query(ctx, selectStored+` ORDER BY created_at, id`)
	if err != nil {
		return fmt.Errorf("check endpoint secrets: %w", err)
	}
	all, err := pgx.CollectRows(rows, scanStored)
	if err != nil {
		return fmt.Errorf("check endpoint secrets: %w", err)
	}
	if len(all) == 0 {
		return nil
	}
	if !s.keys.Configured() {
		return fmt.Errorf("%d endpoint secret(s) are stored but %w", len(all), ErrNoKey)
	}
	for _, st := range all {
		if _, err := s.open(st); err != nil {
			return err
		}
	}
	return nil
}

// Rekey re-encrypts every secret with the first key, in one transaction,
// and reports how many it re-encrypted. A secret no configured key opens
// fails it and changes nothing.
func (s *Store) Rekey(ctx context.Context) (int, error) {
	if !s.keys.Configured() {
		return 0, ErrNoKey
	}
	n := 0
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Adds wait, so that none slips in under an old key mid-rekey.
		if _, err := tx.Exec(ctx, `LOCK TABLE endpoint_secrets IN SHARE ROW EXCLUSIVE MODE`); err != nil {
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
		ids := make([]string, len(all))
		cts := make([][]byte, len(all))
		kids := make([]string, len(all))
		for i, st := range all {
			plain, err := s.open(st)
			if err != nil {
				return err
			}
			ids[i] = st.ID
			if cts[i], kids[i], err = s.keys.seal(st.ID, st.Workspace, st.Environment, plain); err != nil {
				return err
			}
		}
		// One statement: caches see one change, not one per row.
		if _, err := tx.Exec(ctx, `
			UPDATE endpoint_secrets e SET ciphertext = v.ciphertext, key_id = v.key_id
			FROM unnest($1::uuid[], $2::bytea[], $3::text[]) AS v(id, ciphertext, key_id)
			WHERE e.id = v.id`, ids, cts, kids); err != nil {
			return err
		}
		n = len(all)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("rekey endpoint secrets: %w", err)
	}
	return n, nil
}
