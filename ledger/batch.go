package ledger

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/relayhq/relay/internal/text"
)

// PaymentError is ApplyPayments' error: which payment failed, and why.
type PaymentError struct {
	Index int
	Err   error
}

func (e *PaymentError) Error() string { return fmt.Sprintf("payment %d: %v", e.Index, e.Err) }
func (e *PaymentError) Unwrap() error { return e.Err }

// ApplyPayments applies the payments in one transaction with the effects
// of ApplyPayment applied to each, and returns their outcomes in order.
// The common case, a paid order for a session found by its id, unbooked,
// with nothing refunded or pending, is applied for all such payments
// together: one statement locks every session the payments name, one reads
// what booking them needs, and one books every sale and completes every
// session. That is three statements for the lot instead of three for each.
// Every other payment, and every one whose session or order another payment
// of the call also names, is applied afterwards, one by one, by
// ApplyPayment. Payments of one call arrive concurrently, in no order the
// provider promises; the ledger's result does not depend on their order.
//
// An error is a *PaymentError; the caller must roll the transaction back,
// as after ApplyPayment's.
func ApplyPayments(ctx context.Context, db DB, ps []Payment) ([]Outcome, error) {
	out := make([]Outcome, len(ps))
	together, err := lockTogether(ctx, db, ps)
	if err != nil {
		return nil, err
	}
	if err := bookTogether(ctx, db, ps, together, out); err != nil {
		return nil, err
	}
	for i, p := range ps {
		if _, done := together[i]; done {
			continue
		}
		if out[i], err = ApplyPayment(ctx, db, p); err != nil {
			return nil, &PaymentError{Index: i, Err: err}
		}
	}
	return out, nil
}

// lockTogether locks every session the payments can touch, named by id,
// by order or by checkout id, in one statement and in id order, and
// returns the payments that can be applied together, by index, each with
// its session. Taking them all at once, in the order every caller takes
// them, is what keeps two batches naming the same sessions from waiting
// for each other in a circle (a deadlock, 40P01); ApplyPayment, which the
// other payments go through afterwards, then finds its sessions already
// held by this transaction.
func lockTogether(ctx context.Context, db DB, ps []Payment) (map[int]*Session, error) {
	if len(ps) < 2 {
		return nil, nil // nothing to gain: ApplyPayment does it, in one step too
	}
	// A session or an order named twice is left to ApplyPayment: its
	// payments then apply one after another.
	bySession, byOrder := map[string]int{}, map[string]int{}
	var ids, orders, checkouts []string
	for _, p := range ps {
		if id := strings.ToLower(p.Session.SessionID); text.IsUUID(id) {
			bySession[id]++
			ids = append(ids, id)
		}
		if p.ExternalOrderID != "" {
			byOrder[p.ExternalOrderID]++
			orders = append(orders, p.ExternalOrderID)
		}
		if p.Session.ExternalCheckoutID != "" {
			checkouts = append(checkouts, p.Session.ExternalCheckoutID)
		}
	}
	candidates := make([]int, 0, len(ps))
	for i, p := range ps {
		id := strings.ToLower(p.Session.SessionID)
		if !p.Paid || p.RefundedAmount != 0 || !text.IsUUID(id) || bySession[id] != 1 ||
			(p.Session.WorkspaceID != "" && !text.IsUUID(p.Session.WorkspaceID)) ||
			(p.ExternalOrderID != "" && byOrder[p.ExternalOrderID] != 1) {
			continue
		}
		candidates = append(candidates, i)
	}

	named, owners, err := lockAll(ctx, db, ids, orders, checkouts)
	if err != nil {
		return nil, err
	}
	if len(candidates) < 2 {
		return nil, nil // nothing to gain: ApplyPayment does it
	}

	together := make(map[int]*Session, len(candidates))
	for _, i := range candidates {
		p := ps[i]
		s := named[strings.ToLower(p.Session.SessionID)]
		if s == nil || s.FinanceTransactionID != nil || s.RefundedAmount != 0 {
			continue
		}
		var owner *Session
		if p.ExternalOrderID != "" {
			owner = owners[p.ExternalOrderID]
		}
		if checkLocked(p.Session, p.ExternalOrderID, s, owner) != nil {
			continue // ApplyPayment says why
		}
		together[i] = s
	}
	return together, nil
}

// LockSessions locks every checkout session that refs (by id or checkout
// id) and orders name, in one statement and in id order, for the rest of
// the transaction. A transaction that applies several events, a batch,
// takes every session it will touch this way first: it then never waits
// for a session while holding another taken in another order, and two
// such transactions cannot deadlock. References that are not well formed
// are left to the calls that refuse them.
func LockSessions(ctx context.Context, db DB, refs []SessionRef, orders []string) error {
	var ids, checkouts []string
	for _, r := range refs {
		if id := strings.ToLower(r.SessionID); text.IsUUID(id) {
			ids = append(ids, id)
		}
		if r.ExternalCheckoutID != "" {
			checkouts = append(checkouts, r.ExternalCheckoutID)
		}
	}
	if len(ids)+len(orders)+len(checkouts) == 0 {
		return nil
	}
	_, _, err := lockAll(ctx, db, ids, orders, checkouts)
	return err
}

// lockAll locks the sessions of ids, of orders and of checkouts in id
// order and returns them by id, and by the order they record.
func lockAll(ctx context.Context, db DB, ids, orders, checkouts []string) (named, owners map[string]*Session, err error) {
	rows, err := db.Query(ctx, `SELECT `+sessionColumns+` FROM inventory_checkout_sessions
		WHERE id = ANY($1::uuid[]) OR polar_order_id = ANY($2::text[]) OR polar_checkout_id = ANY($3::text[])
		ORDER BY id FOR UPDATE`, ids, orders, checkouts)
	if err != nil {
		return nil, nil, fmt.Errorf("lock checkout sessions: %w", err)
	}
	named, owners = map[string]*Session{}, map[string]*Session{}
	for rows.Next() {
		s, err := scanSession(rows)
		if err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("lock checkout sessions: %w", err)
		}
		named[s.ID] = s
		if s.ExternalOrderID != nil {
			owners[*s.ExternalOrderID] = s
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("lock checkout sessions: %w", err)
	}
	return named, owners, nil
}

// bookTogether decides the sales of the payments in together and books
// those that book plainly (a wallet, nothing refunded or pending), with
// every session's completion, in one statement; it writes their outcomes
// into out. The others are taken out of together, for ApplyPayment.
func bookTogether(ctx context.Context, db DB, ps []Payment, together map[int]*Session, out []Outcome) error {
	if len(together) == 0 {
		return nil
	}
	// The sessions are locked: this statement sees what their lock's
	// previous holders committed.
	order := make([]int, 0, len(together))
	ids, workspaces := make([]string, 0, len(together)), make([]string, 0, len(together))
	for i := range ps {
		if s, ok := together[i]; ok {
			order = append(order, i)
			ids, workspaces = append(ids, s.ID), append(workspaces, s.WorkspaceID)
		}
	}
	rows, err := db.Query(ctx, `SELECT x.id::text, `+saleFactsColumns+`
		FROM unnest($1::uuid[], $2::uuid[]) AS x(id, ws_id) `+saleFactsJoins, ids, workspaces)
	if err != nil {
		return fmt.Errorf("read default wallets: %w", err)
	}
	facts := make(map[string]saleFacts, len(ids))
	for rows.Next() {
		var (
			id string
			f  saleFacts
		)
		if err := rows.Scan(&id, &f.walletID, &f.walletWS, &f.walletCurrency, &f.categoryID, &f.refundsRecorded, &f.booked, &f.pending); err != nil {
			rows.Close()
			return fmt.Errorf("read default wallets: %w", err)
		}
		facts[id] = f
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read default wallets: %w", err)
	}

	var (
		book []int
		bs   []saleBooking
	)
	for _, i := range order {
		s, p := together[i], ps[i]
		f, ok := facts[s.ID]
		if !ok || f.booked != nil || f.refundsRecorded || f.pending {
			delete(together, i)
			continue
		}
		sold := f.decide(s, p.Currency)
		if sold.result != Booked {
			delete(together, i)
			continue
		}
		at := p.At
		if at.IsZero() {
			at = time.Now()
		}
		// As recordPayment: the status is newer (paid, nothing refunded)
		// and the session completes unless it had.
		book = append(book, i)
		bs = append(bs, saleBooking{
			s: s, sold: &sold, description: p.Description, at: at,
			order: p.ExternalOrderID, status: p.ExternalStatus, statusIsNewer: true, completeNow: s.Status != StatusCompleted,
		})
	}
	if len(book) == 0 {
		return nil
	}
	if failed, err := bookSales(ctx, db, bs); err != nil {
		if failed >= 0 {
			return &PaymentError{Index: book[failed], Err: err}
		}
		return bookTogetherError(err, book)
	}

	// The outcomes and sessions as ApplyPayment leaves them.
	for j, i := range book {
		s, p, b := together[i], ps[i], bs[j]
		o := Outcome{Session: s, Completed: b.completeNow, Booking: b.sold.result}
		s.Status = StatusCompleted
		if s.ExternalOrderID == nil && p.ExternalOrderID != "" {
			s.ExternalOrderID = &p.ExternalOrderID
		}
		out[i] = o
	}
	return nil
}

// bookTogetherError names the payment whose order another session took
// meanwhile, when that is what failed; else the first of the statement's.
func bookTogetherError(err error, book []int) error {
	if isOrderTaken(err) {
		return &PaymentError{Index: book[0], Err: fmt.Errorf("%w: an order of these payments was recorded on another checkout session meanwhile", ErrOrderConflict)}
	}
	return &PaymentError{Index: book[0], Err: err}
}
