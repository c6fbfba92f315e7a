-- +goose Up
-- What relay keeps of a storefront product's Polar side, from Polar's
-- product.created and product.updated events. relay writes these columns
-- and name; the storefront's own columns (ws_id, finance_category_id and
-- any it adds) are never touched.
--
-- polar_environment is the Polar environment the product lives in, written
-- by the storefront as for checkout sessions: a delivery verified by a
-- sandbox secret never changes a production product. polar_modified_at is
-- the version applied last (Polar's modified_at, or created_at for a version
-- never modified): an older one changes nothing.
ALTER TABLE workspace_products
    ADD COLUMN polar_environment text NOT NULL DEFAULT 'production',
    ADD COLUMN polar_product_id  text,
    ADD COLUMN polar_price_id    text,
    ADD COLUMN description       text,
    ADD COLUMN price_amount      bigint,
    ADD COLUMN price_currency    text,
    ADD COLUMN polar_archived    boolean NOT NULL DEFAULT false,
    ADD COLUMN polar_modified_at timestamptz,
    ADD COLUMN polar_synced_at   timestamptz,
    ADD CONSTRAINT workspace_products_polar_environment_check
        CHECK (polar_environment IN ('production', 'sandbox')),
    ADD CONSTRAINT workspace_products_price_check
        CHECK (price_amount IS NULL OR price_amount >= 0);

-- A Polar product is one storefront product at most: the second way to find
-- a product, and the guard against two rows claiming one Polar product.
CREATE UNIQUE INDEX workspace_products_polar_product_key
    ON workspace_products (polar_product_id) WHERE polar_product_id IS NOT NULL;

-- +goose Down
DROP INDEX workspace_products_polar_product_key;
ALTER TABLE workspace_products
    DROP COLUMN polar_synced_at,
    DROP COLUMN polar_modified_at,
    DROP COLUMN polar_archived,
    DROP COLUMN price_currency,
    DROP COLUMN price_amount,
    DROP COLUMN description,
    DROP COLUMN polar_price_id,
    DROP COLUMN polar_product_id,
    DROP COLUMN polar_environment;
