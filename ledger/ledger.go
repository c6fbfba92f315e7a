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
//   - a sale is booked once per session (source key "sale", session id);
//   - a reversal is keyed by its sale and the reversed total it starts from,
//     and reverses at most the rest of the sale, so no two reversals start
//     from one level and together they never exceed the sale. Without the
//     lock, a reconcile that read a reversed total which another one has
//     since moved past books nothing: the reversals can then lag the
//     refunds until the next call, never overshoot them.
package ledger

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
)

// SessionRef says how to find a checkout session: by its own id (checked
// against WorkspaceID when both are given), else by the payment provider's
// checkout id.
type SessionRef struct {
	SessionID          string
	WorkspaceID        string
	ExternalCheckoutID string
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
}

const sessionColumns = `id::text, ws_id::text, status, total_amount, currency, polar_checkout_id,
	polar_order_id, polar_status, finance_transaction_id::text, refunded_amount, completed_at`

func scanSession(row pgx.Row) (*Session, error) {
	var s Session
	err := row.Scan(&s.ID, &s.WorkspaceID, &s.Status, &s.TotalAmount, &s.Currency, &s.ExternalCheckoutID,
		&s.ExternalOrderID, &s.ExternalStatus, &s.FinanceTransactionID, &s.RefundedAmount, &s.CompletedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrSessionNotFound
	}
	return &s, err
}

// lockSession finds the session ref names and locks it for the rest of the
// transaction.
func lockSession(ctx context.Context, db DB, ref SessionRef) (*Session, error) {
	if ref.SessionID != "" && !isUUID(ref.SessionID) {
		return nil, fmt.Errorf("%w: session id %q is not a UUID", ErrInvalidInput, truncate(ref.SessionID, 64))
	}
	if ref.WorkspaceID != "" && !isUUID(ref.WorkspaceID) {
		return nil, fmt.Errorf("%w: workspace id %q is not a UUID", ErrInvalidInput, truncate(ref.WorkspaceID, 64))
	}
	if ref.SessionID != "" {
		s, err := scanSession(db.QueryRow(ctx,
			`SELECT `+sessionColumns+` FROM inventory_checkout_sessions WHERE id = $1 FOR UPDATE`, ref.SessionID))
		switch {
		case err == nil:
			if ref.WorkspaceID != "" && !strings.EqualFold(ref.WorkspaceID, s.WorkspaceID) {
				return nil, ErrWorkspaceMismatch
			}
			return s, nil
		case !errors.Is(err, ErrSessionNotFound):
			return nil, fmt.Errorf("find checkout session %s: %w", ref.SessionID, err)
		}
	}
	if ref.ExternalCheckoutID == "" {
		return nil, ErrSessionNotFound
	}
	s, err := scanSession(db.QueryRow(ctx, `SELECT `+sessionColumns+` FROM inventory_checkout_sessions
		WHERE polar_checkout_id = $1 ORDER BY created_at DESC LIMIT 1 FOR UPDATE`, ref.ExternalCheckoutID))
	if err != nil {
		if errors.Is(err, ErrSessionNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("find checkout session by checkout id: %w", err)
	}
	if ref.WorkspaceID != "" && !strings.EqualFold(ref.WorkspaceID, s.WorkspaceID) {
		return nil, ErrWorkspaceMismatch
	}
	return s, nil
}

func isUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i, c := range s {
		switch {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'):
		default:
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
