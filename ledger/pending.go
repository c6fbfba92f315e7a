package ledger

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/relayhq/relay/internal/text"
)

// PostedPending is the booking result of a pending sale booked now, by
// PostPending or by its event applied again.
const PostedPending = "posted_pending"

// Why a sale is pending: the pending_bookings.reason values, one per Skipped*
// booking result.
const (
	ReasonNoWallet        = "no_wallet"
	ReasonWalletWorkspace = "wallet_workspace"
	ReasonCurrency        = "currency"
)

// Reasons lists the reasons a sale can be pending for.
func Reasons() []string { return []string{ReasonNoWallet, ReasonWalletWorkspace, ReasonCurrency} }

var reasonOfResult = map[string]string{
	SkippedNoWallet:        ReasonNoWallet,
	SkippedWalletWorkspace: ReasonWalletWorkspace,
	SkippedCurrency:        ReasonCurrency,
}

// skipped reports whether a booking result says the sale could not be booked.
func skipped(result string) bool { return reasonOfResult[result] != "" }

// resultOfReason is the Skipped* booking result of a pending reason.
func resultOfReason(reason string) string {
	for result, r := range reasonOfResult {
		if r == reason {
			return result
		}
	}
	return ""
}

// PendingBooking is a paid sale that could not be booked when it was paid,
// kept until it can be. Amount, currency and category are copies: a sale
// whose session was deleted stays listed.
type PendingBooking struct {
	SessionID   string `json:"session_id"`
	WorkspaceID string `json:"workspace_id"`
	Amount      int64  `json:"amount"`
	Currency    string `json:"currency"`
	// PaymentCurrency is what the sale was paid in; another than Currency
	// can never be booked by relay.
	PaymentCurrency string  `json:"payment_currency"`
	CategoryID      *string `json:"category_id,omitempty"`
	Reason          string  `json:"reason"`
	// Note says why, in words, as of the last attempt.
	Note string `json:"note"`
	// RefundedAmount is the refunded total recorded while pending; posting
	// reverses it.
	RefundedAmount int64     `json:"refunded_amount"`
	FirstAttemptAt time.Time `json:"first_attempt_at"`
	LastAttemptAt  time.Time `json:"last_attempt_at"`
	// NextAttemptAt is when the periodic pass tries it again (backoff).
	NextAttemptAt time.Time `json:"next_attempt_at"`
	Attempts      int       `json:"attempts"`
	// SessionDeleted is true when the checkout session no longer exists:
	// the sale can never be posted by relay.
	SessionDeleted bool       `json:"session_deleted"`
	PostedAt       *time.Time `json:"posted_at,omitempty"`
	TransactionID  *string    `json:"transaction_id,omitempty"`
}

// pendingColumns read a pending_bookings row b as scanPending scans it.
const pendingColumns = `b.session_id::text, b.ws_id::text, b.amount, b.currency, b.payment_currency,
	b.category_id::text, b.reason, b.note, b.refunded_amount, b.first_attempt_at, b.last_attempt_at, b.next_attempt_at, b.attempts,
	NOT EXISTS (SELECT 1 FROM inventory_checkout_sessions s WHERE s.id = b.session_id),
	b.posted_at, b.transaction_id::text`

func scanPending(row pgx.Row, extra ...any) (PendingBooking, error) {
	var b PendingBooking
	err := row.Scan(append([]any{&b.SessionID, &b.WorkspaceID, &b.Amount, &b.Currency, &b.PaymentCurrency,
		&b.CategoryID, &b.Reason, &b.Note, &b.RefundedAmount, &b.FirstAttemptAt, &b.LastAttemptAt, &b.NextAttemptAt, &b.Attempts,
		&b.SessionDeleted, &b.PostedAt, &b.TransactionID}, extra...)...)
	if b.SessionDeleted && b.PostedAt == nil {
		b.Note = sessionDeletedNote
	}
	return b, err
}

// sessionDeletedNote is the note of a pending sale whose session is gone.
const sessionDeletedNote = "the checkout session was deleted: relay can never book it"

// pendingSale is what posting a pending sale needs besides the session.
type pendingSale struct {
	paymentCurrency, description, refundDescription string
	paidAt                                          time.Time
}

// refundedTotal is the larger of the session's recorded refunded total
// ($2) and the sum of its recorded refunds, as reconcileRefunds reverses.
const refundedTotal = `greatest($2::bigint,
	(SELECT coalesce(sum(f.amount), 0) FROM checkout_session_refunds f WHERE f.checkout_session_id = $1))`

// recordPending keeps the locked session's sale, which decideSale found cannot be
// booked (sold says why), as pending, or records one more attempt on the row
// that keeps it, and when the pass tries it next (nextAttempt). The primary
// key keeps one row per sale.
func recordPending(ctx context.Context, db DB, s *Session, ps pendingSale, sold sale) (PendingBooking, error) {
	// Paid in another currency than the sale's: no wallet setting can fix it.
	never := sold.result == SkippedCurrency && !strings.EqualFold(ps.paymentCurrency, s.Currency)
	b, err := scanPending(db.QueryRow(ctx, `
		INSERT INTO pending_bookings AS b (session_id, ws_id, amount, currency, payment_currency, category_id,
			reason, note, description, refund_description, paid_at, refunded_amount, first_attempt_at, last_attempt_at, next_attempt_at)
		VALUES ($1, $3, $4, upper($5), upper($6), $7, $8, $9, $10, $11, $12, `+refundedTotal+`, clock_timestamp(), clock_timestamp(),
			`+nextAttempt("1", "$13")+`)
		ON CONFLICT (session_id) DO UPDATE SET
			amount          = EXCLUDED.amount,
			category_id     = EXCLUDED.category_id,
			reason          = EXCLUDED.reason,
			note            = EXCLUDED.note,
			refunded_amount = greatest(b.refunded_amount, EXCLUDED.refunded_amount),
			last_attempt_at = clock_timestamp(),
			next_attempt_at = `+nextAttempt("b.attempts + 1", "$13")+`,
			attempts        = b.attempts + 1
		WHERE b.posted_at IS NULL
		RETURNING `+pendingColumns,
		s.ID, s.RefundedAmount, s.WorkspaceID, s.TotalAmount, s.Currency, ps.paymentCurrency, sold.categoryID,
		reasonOfResult[sold.result], sold.note, ps.description, ps.refundDescription, ps.paidAt, never))
	if errors.Is(err, pgx.ErrNoRows) {
		// Posted before, and its booking deleted since by someone who
		// meant to: that is theirs to redo, not a sale to keep again.
		return PendingBooking{}, nil
	}
	if err != nil {
		return PendingBooking{}, fmt.Errorf("record pending booking of session %s: %w", s.ID, err)
	}
	return b, nil
}

// How long a sale that still cannot be booked waits for its next try by
// the periodic pass (PostDue): RetryBase after its first attempt, twice as
// long after each further one, up to RetryFixable while it waits on the
// workspace's wallet setting (an operator fixes that and expects the sale
// booked within a minute: RetryFixable and a pass interval), up to
// RetryNever once relay can never book it (paid in another currency than
// its session's, or its session deleted: a person books it by hand, and
// the pass only looks for that booking).
// PostPending, an operator's "try now", ignores the wait.
const (
	RetryBase    = 10 * time.Second
	RetryFixable = 50 * time.Second
	RetryNever   = time.Hour
)

// nextAttempt is the SQL of when a sale is tried next: attempts is the SQL
// of its attempts including this one, never the SQL of whether relay can
// never book it.
func nextAttempt(attempts, never string) string {
	return fmt.Sprintf(`clock_timestamp() + least(
		make_interval(secs => %d * power(2, least(greatest((%s) - 1, 0), 16))),
		CASE WHEN %s THEN make_interval(secs => %d) ELSE make_interval(secs => %d) END)`,
		int(RetryBase.Seconds()), attempts, never, int(RetryNever.Seconds()), int(RetryFixable.Seconds()))
}

// notePendingRefunds records the locked, unbooked session's refunded total on
// its pending booking, if it has one: what posting will reverse.
func notePendingRefunds(ctx context.Context, db DB, s *Session) error {
	if _, err := db.Exec(ctx, `UPDATE pending_bookings SET refunded_amount = greatest(refunded_amount, `+refundedTotal+`)
		WHERE session_id = $1 AND posted_at IS NULL`, s.ID, s.RefundedAmount); err != nil {
		return fmt.Errorf("record refunds on the pending booking of session %s: %w", s.ID, err)
	}
	return nil
}

// closePending marks the session's pending booking, which the caller has
// found unposted under the session's lock, posted as transaction txID.
func closePending(ctx context.Context, db DB, sessionID, txID string) (postedAt time.Time, err error) {
	if err := db.QueryRow(ctx, `UPDATE pending_bookings SET posted_at = clock_timestamp(), transaction_id = $2
		WHERE session_id = $1 AND posted_at IS NULL RETURNING posted_at`, sessionID, txID).Scan(&postedAt); err != nil {
		return time.Time{}, fmt.Errorf("close pending booking of session %s: %w", sessionID, err)
	}
	return postedAt, nil
}

// PendingFilter selects pending bookings. Zero values select all.
type PendingFilter struct {
	WorkspaceID string
	Reason      string // one of Reasons()
	Limit       int    // at most this many; 0: all
}

func (f PendingFilter) check() error {
	if f.WorkspaceID != "" && !text.IsUUID(f.WorkspaceID) {
		return fmt.Errorf("%w: workspace id %q is not a UUID", ErrInvalidInput, text.Cut(f.WorkspaceID, 64))
	}
	if f.Reason != "" && !slices.Contains(Reasons(), f.Reason) {
		return fmt.Errorf("%w: unknown pending reason %q (want one of %s)", ErrInvalidInput, text.Cut(f.Reason, 64), strings.Join(Reasons(), ", "))
	}
	if f.Limit < 0 {
		return fmt.Errorf("%w: negative limit", ErrInvalidInput)
	}
	return nil
}

// ListPending returns the pending bookings the filter selects, oldest
// first, and how many it selects without the limit.
func ListPending(ctx context.Context, db DB, f PendingFilter) ([]PendingBooking, int, error) {
	if err := f.check(); err != nil {
		return nil, 0, err
	}
	var limit *int
	if f.Limit > 0 {
		limit = &f.Limit
	}
	rows, err := db.Query(ctx, `SELECT `+pendingColumns+`, count(*) OVER ()
		FROM pending_bookings b
		WHERE b.posted_at IS NULL AND ($1::uuid IS NULL OR b.ws_id = $1) AND ($2::text IS NULL OR b.reason = $2)
		ORDER BY b.first_attempt_at, b.session_id
		LIMIT $3`, text.NullIfEmpty(f.WorkspaceID), text.NullIfEmpty(f.Reason), limit)
	if err != nil {
		return nil, 0, fmt.Errorf("list pending bookings: %w", err)
	}
	var total int
	list, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (PendingBooking, error) {
		return scanPending(row, &total)
	})
	if err != nil {
		return nil, 0, fmt.Errorf("list pending bookings: %w", err)
	}
	return list, total, nil
}

// PostResult is what PostPending did with one pending booking.
type PostResult struct {
	PendingBooking
	// Result is PostedPending (booked now), AlreadyBooked (booked before,
	// by hand under the sale's source key or by a path that left the row
	// open: the row is closed, nothing is booked) or the Skipped* result of
	// the reason it is still pending for.
	Result string `json:"result"`
	// WalletID is the wallet a posted sale was booked into.
	WalletID string `json:"wallet_id,omitempty"`
	// Reversed is the refunded total reversed when it was posted.
	Reversed int64 `json:"reversed"`
}

// Posted reports whether the booking is no longer pending.
func (r PostResult) Posted() bool { return r.Result == PostedPending || r.Result == AlreadyBooked }

// Conn runs statements and transactions: in practice a *pgxpool.Pool.
type Conn interface {
	DB
	Begin(ctx context.Context) (pgx.Tx, error)
}

// maxPostBatch bounds the sales one call reads; those due longest go
// first, so a larger backlog is worked through over several calls.
const maxPostBatch = 10_000

// PostPending tries to book every pending sale of the workspace (empty: of
// all workspaces) now, whether its next attempt is due or not, each in a
// transaction of its own, through the booking path a timely sale takes: the
// same source key, then reversals for the refunds recorded meanwhile. A
// sale that still cannot be booked records the attempt and why. A failure
// on one sale does not stop the others; the errors are returned together
// with the results.
//
// Each attempt holds the session's row lock, as the event's own processing
// does, and re-reads the pending row under it: posters running at once, or
// an event replayed while it posts, book a sale once.
func PostPending(ctx context.Context, db Conn, workspaceID string) ([]PostResult, error) {
	if err := (PendingFilter{WorkspaceID: workspaceID}).check(); err != nil {
		return nil, err
	}
	results, _, err := post(ctx, db, workspaceID, false, time.Time{})
	return results, err
}

// PostDue is the periodic pass: as PostPending, it tries the pending sales
// of every workspace, but only those whose next attempt is due, longest due
// first, and takes no new sale after until. more reports that due
// sales were left: they are the first the next pass takes, since every sale
// tried has its next attempt moved on (nextAttempt), or booked.
func PostDue(ctx context.Context, db Conn, until time.Time) (results []PostResult, more bool, err error) {
	return post(ctx, db, "", true, until)
}

func post(ctx context.Context, db Conn, workspaceID string, dueOnly bool, until time.Time) ([]PostResult, bool, error) {
	query, args := `SELECT session_id::text FROM pending_bookings
		WHERE posted_at IS NULL AND ($1::uuid IS NULL OR ws_id = $1)
		ORDER BY next_attempt_at, session_id LIMIT $2`, []any{text.NullIfEmpty(workspaceID), maxPostBatch}
	if dueOnly {
		// A range of pending_bookings_unposted_idx: nothing due, nothing read.
		query, args = `SELECT session_id::text FROM pending_bookings
			WHERE posted_at IS NULL AND next_attempt_at <= now()
			ORDER BY next_attempt_at, session_id LIMIT $1`, []any{maxPostBatch}
	}
	rows, err := db.Query(ctx, query, args...)
	if err != nil {
		return nil, false, fmt.Errorf("find pending bookings: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, false, fmt.Errorf("find pending bookings: %w", err)
	}
	var (
		out  []PostResult
		errs []error
	)
	for n, id := range ids {
		if !until.IsZero() && !time.Now().Before(until) {
			return out, true, errors.Join(errs...)
		}
		var (
			r  PostResult
			ok bool
		)
		err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) (err error) {
			r, ok, err = postOne(ctx, tx, id)
			return err
		})
		switch {
		case ctx.Err() != nil:
			return out, n < len(ids), errors.Join(append(errs, ctx.Err())...)
		case err != nil:
			// Rolled back: the attempt is recorded on its own, so that a
			// sale that fails every time waits its turn as the others do.
			errs = append(errs, err)
			if err := deferPending(ctx, db, id); err != nil {
				errs = append(errs, err)
			}
		case ok:
			out = append(out, r)
		}
	}
	return out, len(ids) == maxPostBatch, errors.Join(errs...)
}

// deferPending records a failed attempt on a pending sale.
func deferPending(ctx context.Context, db DB, sessionID string) error {
	if _, err := db.Exec(ctx, `UPDATE pending_bookings b SET
			last_attempt_at = clock_timestamp(),
			next_attempt_at = `+nextAttempt("b.attempts + 1", "false")+`,
			attempts        = b.attempts + 1
		WHERE b.session_id = $1 AND b.posted_at IS NULL`, sessionID); err != nil {
		return fmt.Errorf("record failed attempt on pending booking of session %s: %w", sessionID, err)
	}
	return nil
}

// postOne tries to book one pending sale in tx. ok is false when the sale
// is no longer pending: posted meanwhile by someone else.
func postOne(ctx context.Context, tx DB, sessionID string) (r PostResult, ok bool, err error) {
	s, err := lockSession(ctx, tx, SessionRef{SessionID: sessionID}, "")
	if errors.Is(err, ErrSessionNotFound) {
		return postOrphan(ctx, tx, sessionID)
	}
	if err != nil {
		return PostResult{}, false, fmt.Errorf("post pending booking of session %s: %w", sessionID, err)
	}
	var ps pendingSale
	b, err := scanPending(tx.QueryRow(ctx, `SELECT `+pendingColumns+`, b.description, b.refund_description, b.paid_at
		FROM pending_bookings b WHERE b.session_id = $1 AND b.posted_at IS NULL FOR UPDATE`, s.ID),
		&ps.description, &ps.refundDescription, &ps.paidAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return PostResult{}, false, nil
	}
	if err != nil {
		return PostResult{}, false, fmt.Errorf("read pending booking of session %s: %w", s.ID, err)
	}
	r = PostResult{PendingBooking: b, Result: AlreadyBooked}
	if s.FinanceTransactionID == nil {
		sold, err := decideSale(ctx, tx, s, b.PaymentCurrency)
		if err != nil {
			return PostResult{}, false, err
		}
		switch {
		case skipped(sold.result):
			r.PendingBooking, err = recordPending(ctx, tx, s, ps, sold)
			r.Result = sold.result
			return r, err == nil, err
		case sold.result == Booked:
			// Booked the way a paid order is; the session, completed
			// when it was paid, records no payment now.
			if _, err := bookSales(ctx, tx, []saleBooking{{
				s: s, sold: &sold, description: ps.description, at: ps.paidAt, refunded: s.RefundedAmount,
			}}); err != nil {
				return PostResult{}, false, err
			}
			if sold.result == Booked {
				r.Result, r.WalletID = PostedPending, sold.walletID
			}
		default: // booked before under its source key: link the session to it
			if err := linkSale(ctx, tx, s, *s.FinanceTransactionID); err != nil {
				return PostResult{}, false, err
			}
		}
	}
	if r.Reversed, err = reconcileRefunds(ctx, tx, s, ps.refundDescription, time.Now()); err != nil {
		return PostResult{}, false, err
	}
	postedAt, err := closePending(ctx, tx, s.ID, *s.FinanceTransactionID)
	if err != nil {
		return PostResult{}, false, err
	}
	r.PostedAt, r.TransactionID = &postedAt, s.FinanceTransactionID
	return r, true, nil
}

// postOrphan records an attempt on a pending sale whose session was
// deleted: it can never be booked by relay, and stays listed. A sale an
// operator booked by hand under its source key ('sale', session id) is
// closed.
func postOrphan(ctx context.Context, tx DB, sessionID string) (PostResult, bool, error) {
	b, err := scanPending(tx.QueryRow(ctx, `
		WITH booked AS (SELECT (SELECT t.id FROM wallet_transactions t
		                        WHERE t.source_kind = 'sale' AND t.source_ref = $1::uuid::text) AS id)
		UPDATE pending_bookings b SET
			last_attempt_at = clock_timestamp(),
			next_attempt_at = `+nextAttempt("b.attempts + 1", "true")+`,
			attempts        = b.attempts + 1,
			note            = CASE WHEN booked.id IS NULL THEN $2 ELSE b.note END,
			posted_at       = CASE WHEN booked.id IS NOT NULL THEN clock_timestamp() END,
			transaction_id  = booked.id
		FROM booked
		WHERE b.session_id = $1 AND b.posted_at IS NULL
		RETURNING `+pendingColumns,
		sessionID, sessionDeletedNote))
	if errors.Is(err, pgx.ErrNoRows) {
		return PostResult{}, false, nil
	}
	if err != nil {
		return PostResult{}, false, fmt.Errorf("record attempt on pending booking of deleted session %s: %w", sessionID, err)
	}
	r := PostResult{PendingBooking: b, Result: resultOfReason(b.Reason)}
	if b.PostedAt != nil {
		r.Result = AlreadyBooked
	}
	return r, true, nil
}
