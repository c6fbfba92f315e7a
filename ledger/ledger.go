// Package ledger is relay's domain: storefront checkout sessions, workspace
// wallets and the bookings that turn a paid checkout into revenue. It runs
// plain SQL inside the caller's transaction and knows nothing of HTTP, job
// queues or payment providers: callers translate their events into the
// calls here.
//
// Every function locks the checkout session it changes (SELECT … FOR
// UPDATE), so concurrent calls for one sale apply one after another. The
// database's unique keys alone guarantee the following, even if that
// serialisation were bypassed:
//
//   - a provider's order is recorded on at most one session, so one payment
//     completes and books at most one session;
//   - a sale is booked once per session (source key "sale", session id);
//   - a reversal is keyed by its sale and the reversed total it starts from,
//     and reverses at most the rest of the sale, so no two reversals start
//     from one level and together they never exceed the sale. Without the
//     lock, a reconcile that read a reversed total which another one has
//     since moved past books nothing: the reversals can then lag the
//     refunds until the next call, never overshoot them.
//   - a paid sale that cannot be booked yet is kept as one pending booking
//     per session (its primary key), in the transaction that completes
//     the session, and is posted through the same source key.
package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/relayhq/relay/internal/text"
)

// DB runs statements: in practice the caller's pgx.Tx.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Session statuses.
const (
	StatusReserved  = "reserved"
	StatusCompleted = "completed"
	StatusExpired   = "expired"
	StatusCancelled = "cancelled"
)

// Booking results, bounded so that they can be metric labels.
const (
	Booked                 = "booked"                   // the sale was booked now
	AlreadyBooked          = "already_booked"           // booked before; nothing new
	NotPaid                = "not_paid"                 // nothing to book yet
	SkippedNoWallet        = "skipped_no_wallet"        // no default wallet configured, or it does not exist
	SkippedWalletWorkspace = "skipped_wallet_workspace" // the default wallet belongs to another workspace
	SkippedCurrency        = "skipped_currency"         // wallet or payment in another currency than the sale
	// A skipped sale is kept as a pending booking and posted once it can
	// be: then its result is PostedPending (pending.go).
)

var (
	// ErrSessionNotFound means no checkout session matches the reference.
	ErrSessionNotFound = errors.New("ledger: checkout session not found")
	// ErrWorkspaceMismatch means the reference names another workspace than
	// the session's. Nothing is changed.
	ErrWorkspaceMismatch = errors.New("ledger: reference names another workspace than the session's")
	// ErrInvalidInput means the call's data cannot be right (a malformed id,
	// a negative amount); retrying it cannot help.
	ErrInvalidInput = errors.New("ledger: invalid input")
	// ErrOrderConflict means the provider's order is recorded on another
	// session than the one the reference finds, or that session records
	// another order. Nothing is changed. It wraps ErrInvalidInput.
	ErrOrderConflict = fmt.Errorf("%w: order and session do not match", ErrInvalidInput)
	// ErrForeignWorkspace means the session belongs to another workspace than
	// the call's Scope: whatever the reference says, the caller may not
	// change it. Nothing is changed.
	ErrForeignWorkspace = errors.New("ledger: session of another workspace than the caller's")
	// ErrForeignEnvironment means the session was created in another
	// environment than the call's Scope (a sandbox payment for a production
	// session). Nothing is changed.
	ErrForeignEnvironment = errors.New("ledger: session of another environment than the caller's")
)

// Environments a session is created in.
const (
	Production = "production"
	Sandbox    = "sandbox"
)

// Scope is the authority a call comes with: it may change only sessions of
// WorkspaceID created in Environment. A nil Scope checks neither.
type Scope struct {
	WorkspaceID string
	Environment string
}

// check refuses a session outside the scope.
func (sc *Scope) check(s *Session) error {
	switch {
	case sc == nil:
		return nil
	case !strings.EqualFold(sc.WorkspaceID, s.WorkspaceID):
		return fmt.Errorf("%w: checkout session %s belongs to workspace %s, the call may change workspace %s only",
			ErrForeignWorkspace, s.ID, s.WorkspaceID, sc.WorkspaceID)
	case sc.Environment != s.Environment:
		return fmt.Errorf("%w: checkout session %s of workspace %s was created in %s, the call comes from %s",
			ErrForeignEnvironment, s.ID, s.WorkspaceID, s.Environment, sc.Environment)
	}
	return nil
}

// orderKey is the unique index that records an order on one session at most.
const orderKey = "inventory_checkout_sessions_polar_order_key"

// isOrderTaken reports whether err is the violation of orderKey: another
// transaction recorded the order on another session first.
func isOrderTaken(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == orderKey
}

// SessionRef says how to find a checkout session: by its own id (checked
// against WorkspaceID when both are given), else, for a payment, the session
// that records its order, else the newest with the payment provider's
// checkout id.
type SessionRef struct {
	SessionID          string
	WorkspaceID        string
	ExternalCheckoutID string
	// Scope, when set, limits the sessions the call may change, however
	// the session was found.
	Scope *Scope
}

// Session is a checkout session as the ledger sees it.
type Session struct {
	ID                   string
	WorkspaceID          string
	Status               string
	TotalAmount          int64
	Currency             string
	ExternalCheckoutID   *string
	ExternalOrderID      *string
	ExternalStatus       *string
	FinanceTransactionID *string
	RefundedAmount       int64
	CompletedAt          *time.Time
	Environment          string // Production or Sandbox
}

const sessionColumns = `id::text, ws_id::text, status, total_amount, currency, polar_checkout_id,
	polar_order_id, polar_status, finance_transaction_id::text, refunded_amount, completed_at, polar_environment`

func scanSession(row pgx.Row) (*Session, error) {
	var s Session
	err := row.Scan(&s.ID, &s.WorkspaceID, &s.Status, &s.TotalAmount, &s.Currency, &s.ExternalCheckoutID,
		&s.ExternalOrderID, &s.ExternalStatus, &s.FinanceTransactionID, &s.RefundedAmount, &s.CompletedAt, &s.Environment)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrSessionNotFound
	}
	return &s, err
}

// lockSession finds the session ref names and locks it for the rest of the
// transaction. When order is not empty the call is about that provider
// order, and the session must be the one that records it, or one that
// records no order yet: the session ref names wins, else the session that
// records the order, else the newest with ref's external checkout id.
func lockSession(ctx context.Context, db DB, ref SessionRef, order string) (*Session, error) {
	if ref.SessionID != "" && !text.IsUUID(ref.SessionID) {
		return nil, fmt.Errorf("%w: session id %q is not a UUID", ErrInvalidInput, text.Cut(ref.SessionID, 64))
	}
	if ref.WorkspaceID != "" && !text.IsUUID(ref.WorkspaceID) {
		return nil, fmt.Errorf("%w: workspace id %q is not a UUID", ErrInvalidInput, text.Cut(ref.WorkspaceID, 64))
	}
	// One round trip finds both the named session and the order's, locked
	// in id order so that two calls never wait for each other in a circle.
	var named, owner *Session
	if ref.SessionID != "" || order != "" {
		rows, err := db.Query(ctx, `SELECT `+sessionColumns+` FROM inventory_checkout_sessions
			WHERE id = $1::uuid OR polar_order_id = $2 ORDER BY id FOR UPDATE`, text.NullIfEmpty(ref.SessionID), text.NullIfEmpty(order))
		if err != nil {
			return nil, fmt.Errorf("find checkout session: %w", err)
		}
		for rows.Next() {
			s, err := scanSession(rows)
			if err != nil {
				rows.Close()
				return nil, fmt.Errorf("find checkout session: %w", err)
			}
			if strings.EqualFold(s.ID, ref.SessionID) {
				named = s
			}
			if order != "" && s.ExternalOrderID != nil && *s.ExternalOrderID == order {
				owner = s
			}
		}
		if err := rows.Err(); err != nil {
			return nil, fmt.Errorf("find checkout session: %w", err)
		}
	}
	s := cmp.Or(named, owner)
	if s == nil {
		if ref.ExternalCheckoutID == "" {
			return nil, ErrSessionNotFound
		}
		var err error
		s, err = scanSession(db.QueryRow(ctx, `SELECT `+sessionColumns+` FROM inventory_checkout_sessions
			WHERE polar_checkout_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1 FOR UPDATE`, ref.ExternalCheckoutID))
		if err != nil {
			if errors.Is(err, ErrSessionNotFound) {
				return nil, err
			}
			return nil, fmt.Errorf("find checkout session by checkout id: %w", err)
		}
	}
	if err := checkLocked(ref, order, s, owner); err != nil {
		return nil, err
	}
	return s, nil
}

// checkLocked refuses the session s that ref found for a call about order
// (empty: none), owner being the session that records order, if any.
func checkLocked(ref SessionRef, order string, s, owner *Session) error {
	if err := ref.Scope.check(s); err != nil {
		return err
	}
	if ref.WorkspaceID != "" && !strings.EqualFold(ref.WorkspaceID, s.WorkspaceID) {
		return ErrWorkspaceMismatch
	}
	switch {
	case order == "":
	case owner != nil && owner.ID != s.ID:
		return fmt.Errorf("%w: order %s is recorded on checkout session %s, not on %s", ErrOrderConflict, text.Cut(order, 64), owner.ID, s.ID)
	case s.ExternalOrderID != nil && *s.ExternalOrderID != order:
		return fmt.Errorf("%w: checkout session %s records another order than %s", ErrOrderConflict, s.ID, text.Cut(order, 64))
	}
	return nil
}
