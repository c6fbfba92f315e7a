package ledger

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/relayhq/relay/internal/text"
)

// Payment is the payment provider's latest word on the order that pays a
// checkout session. Words may arrive late, twice or out of order: applying
// an older one after a newer one changes nothing that matters.
type Payment struct {
	Session         SessionRef
	ExternalOrderID string
	ExternalStatus  string
	// Paid is true once the order is paid, also after refunds.
	Paid bool
	// Currency of the payment; a sale is booked only in the session's currency.
	Currency string
	// RefundedAmount is the cumulative refunded total, tax included.
	RefundedAmount int64
	// Description of the sale's booking, and of reversals.
	Description       string
	RefundDescription string
	// At is when the payment happened, for completed_at and taken_at.
	At time.Time
}

// Refund is one succeeded refund of the order that paid a session.
type Refund struct {
	ExternalOrderID  string
	ExternalRefundID string
	Amount           int64 // tax included
	Currency         string
	Description      string
	At               time.Time
	// Scope, when set, limits the sessions the refund may change.
	Scope *Scope
}

// Outcome says what a call changed.
type Outcome struct {
	Session *Session
	// Completed is true when the session became completed in this call.
	Completed bool
	// Booking is one of the booking results (Booked, AlreadyBooked,
	// PostedPending, ...).
	Booking string
	// Reversed is the amount reversed in this call, as a positive number.
	Reversed int64
}

// ApplyPayment records the order on its session; when the order is paid it
// completes the session and books the sale once into the workspace's default
// wallet, then books reversals up to the refunded total. A paid sale that
// cannot be booked (no usable default wallet, another currency) is kept as
// a pending booking, which PostPending books once it can. An order is
// recorded on one session only: one that names another session than the
// one recording it, or a session that records another order, is refused
// with ErrOrderConflict.
func ApplyPayment(ctx context.Context, db DB, p Payment) (Outcome, error) {
	if p.RefundedAmount < 0 {
		return Outcome{}, fmt.Errorf("%w: negative refunded amount", ErrInvalidInput)
	}
	if p.At.IsZero() {
		p.At = time.Now()
	}
	s, err := lockSession(ctx, db, p.Session, p.ExternalOrderID)
	if err != nil {
		return Outcome{}, err
	}
	out := Outcome{Session: s, Booking: NotPaid}

	// Decide the booking first, so that one statement books the sale and
	// records everything on the session.
	var sold sale
	switch {
	case !p.Paid:
	case s.FinanceTransactionID != nil:
		out.Booking = AlreadyBooked
	default:
		if sold, err = decideSale(ctx, db, s, p.Currency); err != nil {
			return Outcome{}, err
		}
	}

	// The provider's status only moves forward: once paid, an unpaid word is
	// stale, and a smaller refunded total is older than the one recorded.
	statusIsNewer := (p.Paid || s.Status != StatusCompleted) && p.RefundedAmount >= s.RefundedAmount
	completeNow := p.Paid && s.Status != StatusCompleted
	if err := recordPayment(ctx, db, s, p, statusIsNewer, completeNow, &sold); err != nil {
		if isOrderTaken(err) {
			// A concurrent call recorded the order on another session and
			// committed; this transaction is aborted and keeps nothing.
			return Outcome{}, fmt.Errorf("%w: order %s was recorded on another checkout session than %s", ErrOrderConflict, text.Cut(p.ExternalOrderID, 64), s.ID)
		}
		return Outcome{}, err
	}
	out.Booking = cmp.Or(sold.result, out.Booking)
	if completeNow {
		s.Status, out.Completed = StatusCompleted, true
	}
	s.RefundedAmount = max(s.RefundedAmount, p.RefundedAmount)
	if s.ExternalOrderID == nil && p.ExternalOrderID != "" {
		s.ExternalOrderID = &p.ExternalOrderID
	}

	// A sale that cannot be booked is kept, in this transaction, until it
	// can; one that was kept and is booked now is no longer pending.
	switch {
	case skipped(out.Booking):
		if _, err := recordPending(ctx, db, s, pendingSale{
			paymentCurrency: cmp.Or(p.Currency, s.Currency), description: p.Description,
			refundDescription: p.RefundDescription, paidAt: p.At,
		}, sold); err != nil {
			return Outcome{}, err
		}
	case sold.pending:
		if _, err := closePending(ctx, db, s.ID, *s.FinanceTransactionID); err != nil {
			return Outcome{}, err
		}
		if out.Booking == Booked {
			out.Booking = PostedPending
		}
	}

	// Reverse what is refunded: refunds recorded while the sale was unbooked
	// once it is booked, and after that whatever a larger total adds.
	if s.FinanceTransactionID != nil && (sold.refundsRecorded || s.RefundedAmount > 0) {
		if out.Reversed, err = reconcileRefunds(ctx, db, s, p.RefundDescription, p.At); err != nil {
			return Outcome{}, err
		}
	}
	return out, nil
}

// ApplyRefund records one succeeded refund of the order that paid a session
// and books reversals up to the refunded total. A refund seen before changes
// nothing.
func ApplyRefund(ctx context.Context, db DB, r Refund) (Outcome, error) {
	if r.Amount < 0 {
		return Outcome{}, fmt.Errorf("%w: negative refund amount", ErrInvalidInput)
	}
	if r.ExternalOrderID == "" || r.ExternalRefundID == "" {
		return Outcome{}, fmt.Errorf("%w: refund without order or refund id", ErrInvalidInput)
	}
	if r.At.IsZero() {
		r.At = time.Now()
	}
	s, err := scanSession(db.QueryRow(ctx, `SELECT `+sessionColumns+` FROM inventory_checkout_sessions
		WHERE polar_order_id = $1 FOR UPDATE`, r.ExternalOrderID)) // unique: orderKey
	if err != nil {
		if errors.Is(err, ErrSessionNotFound) {
			return Outcome{}, err
		}
		return Outcome{}, fmt.Errorf("find checkout session by order: %w", err)
	}
	if err := r.Scope.check(s); err != nil {
		return Outcome{}, err
	}
	if !strings.EqualFold(r.Currency, s.Currency) {
		return Outcome{}, fmt.Errorf("%w: refund currency differs from the sale's", ErrInvalidInput)
	}
	if _, err := db.Exec(ctx, `
		INSERT INTO checkout_session_refunds (checkout_session_id, external_refund_id, amount, currency)
		VALUES ($1, $2, $3, $4) ON CONFLICT (external_refund_id) DO NOTHING`,
		s.ID, r.ExternalRefundID, r.Amount, strings.ToUpper(r.Currency)); err != nil {
		return Outcome{}, fmt.Errorf("record refund for session %s: %w", s.ID, err)
	}
	out := Outcome{Session: s, Booking: AlreadyBooked}
	if s.FinanceTransactionID == nil {
		out.Booking = NotPaid // reversed once the sale is booked
		return out, notePendingRefunds(ctx, db, s)
	}
	if out.Reversed, err = reconcileRefunds(ctx, db, s, r.Description, r.At); err != nil {
		return Outcome{}, err
	}
	return out, nil
}

// ExpireSession marks a still-reserved session expired and reports whether
// it did; a session in any other status is left alone.
func ExpireSession(ctx context.Context, db DB, ref SessionRef) (bool, error) {
	s, err := lockSession(ctx, db, ref, "")
	if err != nil {
		return false, err
	}
	if s.Status != StatusReserved {
		return false, nil
	}
	if _, err := db.Exec(ctx, `UPDATE inventory_checkout_sessions SET status = 'expired', updated_at = now()
		WHERE id = $1`, s.ID); err != nil {
		return false, fmt.Errorf("expire checkout session %s: %w", s.ID, err)
	}
	return true, nil
}

// sale is what decideSale found, and what was booked of it.
type sale struct {
	result          string  // Booked, AlreadyBooked (relinked), or the Skipped* result that says why not
	note            string  // why not, in words for an operator
	walletID        string  // the wallet booked into
	categoryID      *string // the booking's category, booked or not
	refundsRecorded bool    // refunds of the session were recorded before
	pending         bool    // the session has a pending booking not posted yet
}

// decideSale decides where the session's total, paid in currency (empty:
// the session's), is booked: result Booked with the workspace's default
// wallet and the category, AlreadyBooked when a booking under the sale's
// source key exists (by relay or by hand; s.FinanceTransactionID is set to
// it and the caller relinks the session), or the Skipped* result that says
// why it cannot be. It books nothing; bookSales does.
// The session must be locked, and locked before this statement began: it
// must see what the lock's previous holder committed.
func decideSale(ctx context.Context, db DB, s *Session, currency string) (sale, error) {
	var f saleFacts
	err := db.QueryRow(ctx, `SELECT `+saleFactsColumns+`
		FROM (SELECT $1::uuid AS id, $2::uuid AS ws_id) x `+saleFactsJoins, s.ID, s.WorkspaceID).
		Scan(&f.walletID, &f.walletWS, &f.walletCurrency, &f.categoryID, &f.refundsRecorded, &f.booked, &f.pending)
	if err != nil {
		return sale{}, fmt.Errorf("read default wallet of workspace %s: %w", s.WorkspaceID, err)
	}
	return f.decide(s, currency), nil
}

// saleFacts is what deciding a session's sale needs to know, read in one
// round trip: the wallet setting, the wallet, the category (the lines'
// products' finance category, when they all share one of the workspace's
// categories; otherwise none), an earlier booking of the sale, and what
// the session has recorded meanwhile.
type saleFacts struct {
	walletID, walletWS, walletCurrency *string
	categoryID                         *string
	refundsRecorded                    bool
	booked                             *string
	pending                            bool
}

// saleFactsColumns and saleFactsJoins read saleFacts for the rows of x (id:
// a session, ws_id: its workspace), in the order of saleFacts' fields.
const (
	saleFactsColumns = `cfg.value, w.ws_id::text, w.currency,
		(SELECT CASE WHEN count(*) > 0 AND count(c.id) = count(*) AND count(DISTINCT c.id) = 1
		             THEN min(c.id::text) END
		 FROM inventory_checkout_lines l
		 LEFT JOIN workspace_products p ON p.id = l.product_id AND p.ws_id = x.ws_id
		 LEFT JOIN transaction_categories c ON c.id = p.finance_category_id AND c.ws_id = x.ws_id
		 WHERE l.checkout_session_id = x.id),
		EXISTS (SELECT 1 FROM checkout_session_refunds f WHERE f.checkout_session_id = x.id),
		(SELECT t.id::text FROM wallet_transactions t WHERE t.source_kind = 'sale' AND t.source_ref = x.id::text),
		EXISTS (SELECT 1 FROM pending_bookings b WHERE b.session_id = x.id AND b.posted_at IS NULL)`
	saleFactsJoins = `
		LEFT JOIN workspace_configs cfg ON cfg.ws_id = x.ws_id AND cfg.id = 'default_wallet_id'
		LEFT JOIN workspace_wallets w ON w.id = CASE WHEN btrim(cfg.value) ~ '^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$'
		                                       THEN btrim(cfg.value)::uuid END`
)

// decide is decideSale's decision from the facts.
func (f saleFacts) decide(s *Session, currency string) sale {
	out := sale{categoryID: f.categoryID, refundsRecorded: f.refundsRecorded, pending: f.pending}
	switch {
	case f.booked != nil:
		// Booked before, though the session lost its link: relink, book nothing.
		s.FinanceTransactionID, out.result = f.booked, AlreadyBooked
	case currency != "" && !strings.EqualFold(currency, s.Currency):
		out.result = SkippedCurrency
		out.note = fmt.Sprintf("paid in %s, the sale is in %s: it can never be booked by relay", strings.ToUpper(currency), strings.ToUpper(s.Currency))
	case f.walletWS == nil:
		out.result, out.note = SkippedNoWallet, "no default wallet is set (workspace_configs default_wallet_id), or it names no wallet"
	case !strings.EqualFold(*f.walletWS, s.WorkspaceID):
		out.result, out.note = SkippedWalletWorkspace, "the default wallet belongs to another workspace"
	case !strings.EqualFold(*f.walletCurrency, s.Currency):
		out.result = SkippedCurrency
		out.note = fmt.Sprintf("the default wallet is in %s, the sale in %s", strings.ToUpper(*f.walletCurrency), strings.ToUpper(s.Currency))
	default:
		out.walletID, out.result = strings.TrimSpace(*f.walletID), Booked
	}
	return out
}

// recordPayment updates the locked session with the payment. When sold is
// a sale to book (result Booked), bookSales books it in the same statement;
// if its source key is taken meanwhile, nothing is booked, the session is
// relinked to that booking and sold.result becomes AlreadyBooked.
// s.FinanceTransactionID is the session's booking afterwards.
func recordPayment(ctx context.Context, db DB, s *Session, p Payment, statusIsNewer, completeNow bool, sold *sale) error {
	if sold.result == Booked {
		_, err := bookSales(ctx, db, []saleBooking{{
			s: s, sold: sold, description: p.Description, at: p.At,
			order: p.ExternalOrderID, status: p.ExternalStatus, statusIsNewer: statusIsNewer, completeNow: completeNow,
			refunded: p.RefundedAmount,
		}})
		return err
	}
	// Nothing to book: the session's update alone (bookSales' without the
	// INSERT), with its booking if decideSale found one to relink.
	if _, err := db.Exec(ctx, `UPDATE inventory_checkout_sessions s SET `+sessionSet("i.booking")+`
		FROM (SELECT $1::uuid AS session_id, $2::text AS order_id, $3::bool AS status_is_newer, $4::text AS status,
		             $5::bool AS complete_now, $6::timestamptz AS at, $7::bigint AS refunded, $8::uuid AS booking) i
		WHERE s.id = i.session_id`,
		s.ID, p.ExternalOrderID, statusIsNewer, p.ExternalStatus, completeNow, p.At, p.RefundedAmount, s.FinanceTransactionID); err != nil {
		return fmt.Errorf("update checkout session %s: %w", s.ID, err)
	}
	return nil
}

// reconcileRefunds books one reversal that brings the sale's reversed total
// up to the refunded total (the larger of the provider's cumulative figure
// and the sum of individual refunds, never more than the sale). A stale or
// repeated word finds nothing left to book.
//
// The reversal's source key is the sale and the reversed total it starts
// from, so that the unique key alone bounds the reversals even without the
// session's lock: two reconciles that read the same reversed total collide
// and one books nothing, and every reversal stops at the sale. Rows booked
// before this keying ("<sale>:<target>") count in the reversed total like
// any other, so upgrading books no level twice.
func reconcileRefunds(ctx context.Context, db DB, s *Session, description string, at time.Time) (int64, error) {
	saleID := *s.FinanceTransactionID
	var sale, reversed, refunds int64
	var walletID, currency string
	var categoryID *string
	if err := db.QueryRow(ctx, `
		SELECT t.amount, t.wallet_id::text, t.category_id::text, t.currency,
		       coalesce((SELECT -sum(r.amount) FROM wallet_transactions r WHERE r.reverses_id = t.id), 0),
		       coalesce((SELECT sum(f.amount) FROM checkout_session_refunds f WHERE f.checkout_session_id = $2), 0)
		FROM wallet_transactions t WHERE t.id = $1`, saleID, s.ID).
		Scan(&sale, &walletID, &categoryID, &currency, &reversed, &refunds); err != nil {
		return 0, fmt.Errorf("read booking %s of session %s: %w", saleID, s.ID, err)
	}
	target := min(max(s.RefundedAmount, refunds), sale)
	if target <= reversed {
		return 0, nil
	}
	amount := target - reversed
	tag, err := db.Exec(ctx, `
		INSERT INTO wallet_transactions (wallet_id, category_id, amount, currency, description, taken_at, source_kind, source_ref, reverses_id)
		VALUES ($1, $2, $3, $4, $5, $6, 'reversal', $7, $8)
		ON CONFLICT (source_kind, source_ref) DO NOTHING`,
		walletID, categoryID, -amount, currency, description, at, reversalRef(saleID, reversed), saleID)
	if err != nil {
		return 0, fmt.Errorf("book reversal of session %s: %w", s.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return 0, nil
	}
	return amount, nil
}

// reversalRef is the source key of the reversal of sale that starts from
// the reversed total from.
func reversalRef(sale string, from int64) string {
	return fmt.Sprintf("%s:from:%d", sale, from)
}
