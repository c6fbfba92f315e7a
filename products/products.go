// Package products keeps the storefront's products (workspace_products) in
// step with the payment provider's versions of them: name, description,
// price and whether the product is archived there. It runs plain SQL inside
// the caller's transaction and knows nothing of HTTP, job queues or the
// provider's payloads: callers translate a product event into a Version.
//
// Versions arrive late, twice and out of order. Apply locks the product's
// row and changes it only with a version newer than the one it applied last,
// in one conditional UPDATE: whatever order concurrent calls commit in, the
// row ends at the newest version.
package products

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
	"github.com/relayhq/relay/ledger"
)

// Results of Apply, bounded so that they can be metric labels.
const (
	Applied   = "applied"   // the version is now the product's
	Unchanged = "unchanged" // this version was applied before: a redelivery
	Stale     = "stale"     // older than the version applied: nothing changed
	Unknown   = "unknown"   // no storefront product matches: nothing changed
)

var (
	// ErrForeignWorkspace means the product belongs to another workspace
	// than the call's Scope. Nothing is changed.
	ErrForeignWorkspace = errors.New("products: product of another workspace than the caller's")
	// ErrForeignEnvironment means the product lives in another environment
	// than the call's Scope (a sandbox version for a production product).
	// Nothing is changed.
	ErrForeignEnvironment = errors.New("products: product of another environment than the caller's")
	// ErrConflict means the version's storefront ids and its provider id
	// lead to different rows, or the row is linked to another provider
	// product. Nothing is changed. It wraps ledger.ErrInvalidInput.
	ErrConflict = fmt.Errorf("%w: storefront product and provider product do not match", ledger.ErrInvalidInput)
)

// Version is one version of a product at the payment provider.
type Version struct {
	// ExternalProductID is the provider's id of the product.
	ExternalProductID string
	// ProductID and WorkspaceID are the storefront's ids the product's
	// metadata names; either may be empty.
	ProductID   string
	WorkspaceID string
	Name        string
	Description *string
	// Price is the product's first fixed price that is not archived; nil
	// when it has none, and the product keeps the price it has.
	Price    *Price
	Archived bool
	// ModifiedAt orders the versions of one product.
	ModifiedAt time.Time
	// Scope, when set, limits the products the call may change.
	Scope *ledger.Scope
}

// Price is a fixed price at the provider.
type Price struct {
	ExternalID string
	Amount     int64 // minor units
	Currency   string
}

// Product is a storefront product as this package sees it.
type Product struct {
	ID                string     `json:"id"`
	WorkspaceID       string     `json:"workspace_id"`
	Environment       string     `json:"environment"`
	Name              string     `json:"name"`
	Description       *string    `json:"description,omitempty"`
	ExternalProductID *string    `json:"polar_product_id,omitempty"`
	ExternalPriceID   *string    `json:"polar_price_id,omitempty"`
	PriceAmount       *int64     `json:"price_amount,omitempty"`
	PriceCurrency     *string    `json:"price_currency,omitempty"`
	Archived          bool       `json:"archived"`
	ModifiedAt        *time.Time `json:"polar_modified_at,omitempty"`
	SyncedAt          *time.Time `json:"polar_synced_at,omitempty"`
}

// Price writes the product's price, "49.50 USD"; "" when it has none.
func (p *Product) Price() string {
	if p.PriceAmount == nil || p.PriceCurrency == nil {
		return ""
	}
	return ledger.Money(*p.PriceAmount, *p.PriceCurrency)
}

// Columns read a workspace_products row in Scan's order.
const Columns = `id::text, ws_id::text, polar_environment, name, description, polar_product_id, polar_price_id,
	price_amount, price_currency, polar_archived, polar_modified_at, polar_synced_at`

// Scan reads a row of Columns.
func Scan(row pgx.Row) (*Product, error) {
	var p Product
	if err := row.Scan(&p.ID, &p.WorkspaceID, &p.Environment, &p.Name, &p.Description, &p.ExternalProductID,
		&p.ExternalPriceID, &p.PriceAmount, &p.PriceCurrency, &p.Archived, &p.ModifiedAt, &p.SyncedAt); err != nil {
		return nil, err
	}
	return &p, nil
}

// Outcome is what Apply did.
type Outcome struct {
	Result string
	// Before is the product as it was (nil when Unknown); After as it is
	// now (Before's when nothing changed).
	Before, After *Product
	// PriceKept is true when the version had no fixed price.
	PriceKept bool
	version   Version
}

// Apply makes v the product's version unless the product has a newer or
// the same one. The product is the storefront product the version's
// metadata names, else the one linked to its provider id; when there is
// none, nothing changes and the result is Unknown. A product outside the
// call's scope is refused (ErrForeignWorkspace, ErrForeignEnvironment), as
// is one whose ids disagree (ErrConflict, ledger.ErrWorkspaceMismatch).
func Apply(ctx context.Context, db ledger.DB, v Version) (Outcome, error) {
	out := Outcome{version: v, PriceKept: v.Price == nil}
	if err := v.check(); err != nil {
		return out, err
	}
	p, err := lock(ctx, db, v)
	if err != nil || p == nil {
		out.Result = Unknown
		return out, err
	}
	out.Before, out.After = p, p
	var amount *int64
	var currency, priceID *string
	if v.Price != nil {
		amount, currency, priceID = &v.Price.Amount, &v.Price.Currency, &v.Price.ExternalID
	}
	// The version check is the statement's own, under the row's lock: an
	// older version finds no row to update, whatever was read before.
	after, err := Scan(db.QueryRow(ctx, `
		UPDATE workspace_products SET
			polar_product_id = $2, name = coalesce(nullif($3, ''), name), description = $4,
			polar_price_id = coalesce($5, polar_price_id), price_amount = coalesce($6, price_amount),
			price_currency = coalesce($7, price_currency), polar_archived = $8,
			polar_modified_at = $9, polar_synced_at = now()
		WHERE id = $1 AND (polar_modified_at IS NULL OR polar_modified_at < $9)
		RETURNING `+Columns, p.ID, v.ExternalProductID, v.Name, v.Description, priceID, amount, currency, v.Archived, v.ModifiedAt))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		out.Result = Stale
		if p.ModifiedAt != nil && p.ModifiedAt.Equal(v.ModifiedAt) {
			out.Result = Unchanged
		}
		return out, nil
	case isProductTaken(err):
		return out, fmt.Errorf("%w: provider product %s was linked to another storefront product than %s", ErrConflict, text.Cut(v.ExternalProductID, 64), p.ID)
	case err != nil:
		return out, fmt.Errorf("update product %s: %w", p.ID, err)
	}
	out.Result, out.After = Applied, after
	return out, nil
}

func (v Version) check() error {
	switch {
	case v.ExternalProductID == "":
		return fmt.Errorf("%w: no provider product id", ledger.ErrInvalidInput)
	case v.ModifiedAt.IsZero():
		return fmt.Errorf("%w: product %s has no version time", ledger.ErrInvalidInput, text.Cut(v.ExternalProductID, 64))
	case v.ProductID != "" && !text.IsUUID(v.ProductID):
		return fmt.Errorf("%w: storefront product id %q is not a UUID", ledger.ErrInvalidInput, text.Cut(v.ProductID, 64))
	case v.WorkspaceID != "" && !text.IsUUID(v.WorkspaceID):
		return fmt.Errorf("%w: workspace id %q is not a UUID", ledger.ErrInvalidInput, text.Cut(v.WorkspaceID, 64))
	case v.Price != nil && (v.Price.Amount < 0 || v.Price.Currency == ""):
		return fmt.Errorf("%w: product %s: price without a currency or negative", ledger.ErrInvalidInput, text.Cut(v.ExternalProductID, 64))
	}
	return nil
}

// Lock locks every product the versions may change, in one id-ordered
// statement, for the rest of the transaction: a caller that applies several
// versions in one transaction never waits in a circle with another that
// applies versions of the same products in another order.
func Lock(ctx context.Context, db ledger.DB, vs []Version) error {
	var rowIDs, externalIDs []string
	for _, v := range vs {
		if text.IsUUID(v.ProductID) {
			rowIDs = append(rowIDs, v.ProductID)
		}
		if v.ExternalProductID != "" {
			externalIDs = append(externalIDs, v.ExternalProductID)
		}
	}
	if len(rowIDs)+len(externalIDs) == 0 {
		return nil
	}
	if _, err := db.Exec(ctx, `SELECT 1 FROM workspace_products
		WHERE id = ANY($1::uuid[]) OR polar_product_id = ANY($2) ORDER BY id FOR NO KEY UPDATE`, rowIDs, externalIDs); err != nil {
		return fmt.Errorf("lock %d products: %w", len(vs), err)
	}
	return nil
}

// lock finds the product v is a version of and locks its row for the rest
// of the transaction: the row the metadata names, else the row linked to
// the provider's product; nil when neither exists. Both are read in one
// id-ordered statement, so two calls never wait for each other in a
// circle. FOR NO KEY UPDATE leaves the storefront free to insert checkout
// lines that reference the product meanwhile.
func lock(ctx context.Context, db ledger.DB, v Version) (*Product, error) {
	rows, err := db.Query(ctx, `SELECT `+Columns+` FROM workspace_products
		WHERE id = $1::uuid OR polar_product_id = $2 ORDER BY id FOR NO KEY UPDATE`, text.NullIfEmpty(v.ProductID), v.ExternalProductID)
	if err != nil {
		return nil, fmt.Errorf("find product: %w", err)
	}
	var named, linked *Product
	for rows.Next() {
		p, err := Scan(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("find product: %w", err)
		}
		if strings.EqualFold(p.ID, v.ProductID) {
			named = p
		}
		if p.ExternalProductID != nil && *p.ExternalProductID == v.ExternalProductID {
			linked = p
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find product: %w", err)
	}
	p := cmp.Or(named, linked)
	if p == nil {
		return nil, nil
	}
	if err := checkScope(v.Scope, p); err != nil {
		return nil, err
	}
	switch {
	case v.WorkspaceID != "" && !strings.EqualFold(v.WorkspaceID, p.WorkspaceID):
		return nil, fmt.Errorf("%w: product %s belongs to workspace %s, the version's metadata names %s",
			ledger.ErrWorkspaceMismatch, p.ID, p.WorkspaceID, v.WorkspaceID)
	case linked != nil && linked != p:
		return nil, fmt.Errorf("%w: provider product %s is linked to storefront product %s, not %s",
			ErrConflict, text.Cut(v.ExternalProductID, 64), linked.ID, p.ID)
	case p.ExternalProductID != nil && *p.ExternalProductID != v.ExternalProductID:
		return nil, fmt.Errorf("%w: storefront product %s is linked to another provider product than %s",
			ErrConflict, p.ID, text.Cut(v.ExternalProductID, 64))
	}
	return p, nil
}

// checkScope refuses a product outside sc.
func checkScope(sc *ledger.Scope, p *Product) error {
	switch {
	case sc == nil:
		return nil
	case !strings.EqualFold(sc.WorkspaceID, p.WorkspaceID):
		return fmt.Errorf("%w: product %s belongs to workspace %s, the call may change workspace %s only",
			ErrForeignWorkspace, p.ID, p.WorkspaceID, sc.WorkspaceID)
	case sc.Environment != p.Environment:
		return fmt.Errorf("%w: product %s of workspace %s lives in %s, the call comes from %s",
			ErrForeignEnvironment, p.ID, p.WorkspaceID, p.Environment, sc.Environment)
	}
	return nil
}

// Note says in a few words what the outcome changed, or why nothing: "price
// 49.50 → 59.50 USD, archived". It holds no customer data.
func (o Outcome) Note() string {
	v := o.version
	switch o.Result {
	case Unknown:
		if v.ProductID != "" {
			return fmt.Sprintf("no storefront product %s, none linked to Polar product %s", v.ProductID, text.Cut(v.ExternalProductID, 64))
		}
		return fmt.Sprintf("no storefront product linked to Polar product %s, and its metadata names none", text.Cut(v.ExternalProductID, 64))
	case Unchanged:
		return "version of " + stamp(v.ModifiedAt) + " applied already, nothing changed"
	case Stale:
		return fmt.Sprintf("stale: version of %s is older than the applied one of %s, nothing changed", stamp(v.ModifiedAt), stamp(*o.Before.ModifiedAt))
	}
	var words []string
	b, a := o.Before, o.After
	if b.ExternalProductID == nil {
		words = append(words, "linked to Polar product "+text.Cut(v.ExternalProductID, 64))
	}
	if a.PriceAmount != nil && a.PriceCurrency != nil {
		switch {
		case b.PriceAmount == nil || b.PriceCurrency == nil:
			words = append(words, "price "+ledger.Money(*a.PriceAmount, *a.PriceCurrency))
		case !strings.EqualFold(*b.PriceCurrency, *a.PriceCurrency):
			words = append(words, "price "+ledger.Money(*b.PriceAmount, *b.PriceCurrency)+" → "+ledger.Money(*a.PriceAmount, *a.PriceCurrency))
		case *b.PriceAmount != *a.PriceAmount:
			words = append(words, "price "+ledger.Amount(*b.PriceAmount, *b.PriceCurrency)+" → "+ledger.Money(*a.PriceAmount, *a.PriceCurrency))
		}
	}
	if b.Name != a.Name {
		words = append(words, "renamed “"+text.Cut(a.Name, 80)+"”")
	}
	if !equal(b.Description, a.Description) {
		words = append(words, "description changed")
	}
	switch {
	case a.Archived && !b.Archived:
		words = append(words, "archived")
	case !a.Archived && b.Archived:
		words = append(words, "un-archived")
	}
	if o.PriceKept {
		words = append(words, "price kept: no fixed, non-archived price at Polar")
	}
	if len(words) == 0 {
		return "version of " + stamp(v.ModifiedAt) + " applied, no change"
	}
	return strings.Join(words, ", ")
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func equal(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// productKey is the unique index that links a provider product to one
// storefront product at most.
const productKey = "workspace_products_polar_product_key"

func isProductTaken(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == productKey
}
