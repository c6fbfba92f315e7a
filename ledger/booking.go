package ledger

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// saleBooking is a sale decideSale decided to book (sold.result Booked),
// with what its locked session records in the same statement.
type saleBooking struct {
	s           *Session
	sold        *sale
	description string
	at          time.Time // the sale's taken_at, and completed_at if the session completes now
	// The session's update, as sessionSet reads it: the order, the
	// provider's status if it is newer, whether the session completes
	// now, its refunded total.
	order, status              string
	statusIsNewer, completeNow bool
	refunded                   int64
}

// sessionSet records a payment on a session s from the row i (order_id,
// status_is_newer, status, complete_now, at, refunded), and links it to
// booking, an expression for its sale's booking, unless it has one.
func sessionSet(booking string) string {
	return `
	polar_order_id         = coalesce(s.polar_order_id, nullif(i.order_id, '')),
	polar_status           = CASE WHEN i.status_is_newer THEN nullif(i.status, '') ELSE s.polar_status END,
	status                 = CASE WHEN i.complete_now THEN 'completed' ELSE s.status END,
	completed_at           = CASE WHEN i.complete_now THEN coalesce(s.completed_at, i.at) ELSE s.completed_at END,
	refunded_amount        = greatest(s.refunded_amount, i.refunded),
	finance_transaction_id = coalesce(s.finance_transaction_id, ` + booking + `),
	updated_at             = now()`
}

// bookSales books the sales and records each on its session in one
// statement, and sets each session's FinanceTransactionID. It is the one
// way relay books a sale: ApplyPayment and PostPending book one with it,
// ApplyPayments a batch's plain sales. Each sale's INSERT is a CTE of the
// sessions' UPDATE, which links each session to its booking: the booking,
// the costliest statement of a paid order, and the session's update take
// one round trip. A sale booked meanwhile under its source key by a
// transaction that did not hold the session's lock is not booked again:
// its session is relinked to that booking and its sold.result becomes
// AlreadyBooked. The sessions must be locked and unbooked. On an error,
// failed is the index of the sale it concerns, or -1 for the statement's.
func bookSales(ctx context.Context, db DB, bs []saleBooking) (failed int, err error) {
	var (
		what  = fmt.Sprintf("book %d sales and update their sessions", len(bs))
		input string
		args  []any
	)
	if len(bs) == 1 {
		// One sale comes as a row of parameters, not as arrays to unnest:
		// PostgreSQL plans a statement over unnest anew on every call (its
		// cached generic plan, blind to the arrays' length, never looks
		// cheaper than a call's own), 150-270 µs of planning per sale
		// measured; this one's plan is cached. Not materialized, the row
		// costs what parameters written into the INSERT and the UPDATE
		// did (materialized: 2-5% more per statement).
		b := bs[0]
		what = fmt.Sprintf("book sale of checkout session %s and update the session", b.s.ID)
		input = `NOT MATERIALIZED (SELECT $1::uuid, $2::text, $3::bool, $4::text, $5::bool, $6::timestamptz, $7::bigint,
			$8::uuid, $9::uuid, $10::bigint, $11::text, $12::text)`
		args = []any{b.s.ID, b.order, b.statusIsNewer, b.status, b.completeNow, b.at, b.refunded,
			b.sold.walletID, b.sold.categoryID, b.s.TotalAmount, strings.ToUpper(b.s.Currency), b.description}
	} else {
		var (
			sessions, orders, statuses        []string
			newer, complete                   []bool
			ats                               []time.Time
			refunded, amounts                 []int64
			wallets, currencies, descriptions []string
			categories                        []*string
		)
		for _, b := range bs {
			sessions, orders, statuses = append(sessions, b.s.ID), append(orders, b.order), append(statuses, b.status)
			newer, complete, ats, refunded = append(newer, b.statusIsNewer), append(complete, b.completeNow), append(ats, b.at), append(refunded, b.refunded)
			wallets, categories, amounts = append(wallets, b.sold.walletID), append(categories, b.sold.categoryID), append(amounts, b.s.TotalAmount)
			currencies, descriptions = append(currencies, strings.ToUpper(b.s.Currency)), append(descriptions, b.description)
		}
		input = `(SELECT * FROM unnest($1::uuid[], $2::text[], $3::bool[], $4::text[], $5::bool[], $6::timestamptz[], $7::bigint[],
			$8::uuid[], $9::uuid[], $10::bigint[], $11::text[], $12::text[]))`
		args = []any{sessions, orders, newer, statuses, complete, ats, refunded, wallets, categories, amounts, currencies, descriptions}
	}
	// A sale whose source key is taken gets no booking here: the statement
	// returns its session with a NULL booking.
	rows, err := db.Query(ctx, `
		WITH input (session_id, order_id, status_is_newer, status, complete_now, at, refunded,
		            wallet_id, category_id, amount, currency, description) AS `+input+`,
		sale AS (
			INSERT INTO wallet_transactions (wallet_id, category_id, amount, currency, description, taken_at, source_kind, source_ref)
			SELECT wallet_id, category_id, amount, currency, description, at, 'sale', session_id::text FROM input
			ON CONFLICT (source_kind, source_ref) DO NOTHING
			RETURNING id, source_ref)
		UPDATE inventory_checkout_sessions s SET `+sessionSet("sale.id")+`
		FROM input i LEFT JOIN sale ON sale.source_ref = i.session_id::text
		WHERE s.id = i.session_id
		RETURNING s.id::text, sale.id::text`, args...)
	if err != nil {
		return -1, fmt.Errorf("%s: %w", what, err)
	}
	booked := make(map[string]*string, len(bs)) // session → its new booking, nil if its source key was taken
	for rows.Next() {
		var (
			id   string
			txID *string
		)
		if err := rows.Scan(&id, &txID); err != nil {
			rows.Close()
			return -1, fmt.Errorf("%s: %w", what, err)
		}
		booked[id] = txID
	}
	if err := rows.Err(); err != nil {
		return -1, fmt.Errorf("%s: %w", what, err)
	}

	for i, b := range bs {
		txID, ok := booked[b.s.ID]
		switch {
		case !ok:
			return i, fmt.Errorf("book sale of checkout session %s: the session was not updated", b.s.ID)
		case txID != nil:
			b.s.FinanceTransactionID = txID
		default:
			// Booked meanwhile by a transaction that did not hold the
			// session's lock: the source key kept it to one booking. It is
			// linked by statements of their own: this statement's snapshot
			// was taken before it waited on the key and cannot see it.
			b.sold.result, b.sold.walletID = AlreadyBooked, ""
			if err := relinkSale(ctx, db, b.s); err != nil {
				return i, err
			}
		}
	}
	return -1, nil
}

// relinkSale links the locked session s to the booking under its sale's
// source key and sets s.FinanceTransactionID.
func relinkSale(ctx context.Context, db DB, s *Session) error {
	id, err := saleBookingOf(ctx, db, s.ID)
	if err != nil {
		return err
	}
	return linkSale(ctx, db, s, id)
}

// linkSale links the locked session s to its sale's booking txID and sets
// s.FinanceTransactionID.
func linkSale(ctx context.Context, db DB, s *Session, txID string) error {
	if _, err := db.Exec(ctx, `UPDATE inventory_checkout_sessions SET finance_transaction_id = $2, updated_at = now()
		WHERE id = $1`, s.ID, txID); err != nil {
		return fmt.Errorf("link checkout session %s to its booking: %w", s.ID, err)
	}
	s.FinanceTransactionID = &txID
	return nil
}

// saleBookingOf is the id of the booking under the sale's source key of
// the session.
func saleBookingOf(ctx context.Context, db DB, sessionID string) (string, error) {
	var id string
	if err := db.QueryRow(ctx, `SELECT id::text FROM wallet_transactions WHERE source_kind = 'sale' AND source_ref = $1`, sessionID).Scan(&id); err != nil {
		return "", fmt.Errorf("find the booking of session %s: %w", sessionID, err)
	}
	return id, nil
}
