-- +goose Up
-- The storefront's tables, shared with relay. The storefront writes the
-- columns named in its runbook; every other column is nullable or defaulted.
CREATE TABLE workspaces (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The finance setting is the row with id = 'default_wallet_id'.
CREATE TABLE workspace_configs (
    ws_id      uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    id         text NOT NULL,
    value      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ws_id, id)
);

CREATE TABLE workspace_wallets (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ws_id      uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name       text NOT NULL,
    currency   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workspace_wallets_ws_idx ON workspace_wallets (ws_id);

CREATE TABLE transaction_categories (
    id    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ws_id uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name  text NOT NULL
);

CREATE TABLE workspace_products (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ws_id               uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    name                text NOT NULL,
    finance_category_id uuid REFERENCES transaction_categories (id) ON DELETE SET NULL
);

-- Money is integer minor units with an ISO 4217 code, compared
-- case-insensitively.
CREATE TABLE wallet_transactions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    wallet_id   uuid NOT NULL REFERENCES workspace_wallets (id),
    category_id uuid REFERENCES transaction_categories (id) ON DELETE SET NULL,
    amount      bigint NOT NULL,
    currency    text NOT NULL,
    description text NOT NULL DEFAULT '',
    taken_at    timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- What the row books. A sale is booked once per checkout session and a
    -- reversal once per refunded level, whatever is redelivered: the unique
    -- key makes a second booking impossible, not merely unlikely.
    source_kind text,
    source_ref  text,
    -- A reversal points at the sale it reverses.
    reverses_id uuid REFERENCES wallet_transactions (id),
    CONSTRAINT wallet_transactions_source_key UNIQUE (source_kind, source_ref)
);
CREATE INDEX wallet_transactions_wallet_idx ON wallet_transactions (wallet_id, taken_at);
CREATE INDEX wallet_transactions_reverses_idx ON wallet_transactions (reverses_id) WHERE reverses_id IS NOT NULL;

CREATE TABLE inventory_checkout_sessions (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    ws_id                  uuid NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    status                 text NOT NULL DEFAULT 'reserved',
    total_amount           bigint NOT NULL,
    currency               text NOT NULL,
    polar_checkout_id      text,
    polar_order_id         text,
    polar_status           text,
    finance_transaction_id uuid REFERENCES wallet_transactions (id),
    -- The refunded total (tax included) the payment provider last reported.
    refunded_amount        bigint NOT NULL DEFAULT 0,
    completed_at           timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT inventory_checkout_sessions_status_check
        CHECK (status IN ('reserved', 'completed', 'expired', 'cancelled')),
    CONSTRAINT inventory_checkout_sessions_amount_check CHECK (total_amount >= 0)
);
CREATE INDEX inventory_checkout_sessions_polar_checkout_idx
    ON inventory_checkout_sessions (polar_checkout_id) WHERE polar_checkout_id IS NOT NULL;
CREATE INDEX inventory_checkout_sessions_polar_order_idx
    ON inventory_checkout_sessions (polar_order_id) WHERE polar_order_id IS NOT NULL;

CREATE TABLE inventory_checkout_lines (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    checkout_session_id uuid NOT NULL REFERENCES inventory_checkout_sessions (id) ON DELETE CASCADE,
    product_id          uuid REFERENCES workspace_products (id),
    quantity            integer NOT NULL DEFAULT 1 CHECK (quantity > 0),
    unit_amount         bigint NOT NULL DEFAULT 0 CHECK (unit_amount >= 0)
);
CREATE INDEX inventory_checkout_lines_session_idx ON inventory_checkout_lines (checkout_session_id);

-- Individual refunds the payment provider reported as succeeded, once each.
CREATE TABLE checkout_session_refunds (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    checkout_session_id uuid NOT NULL REFERENCES inventory_checkout_sessions (id) ON DELETE CASCADE,
    external_refund_id  text NOT NULL UNIQUE,
    amount              bigint NOT NULL CHECK (amount >= 0),
    currency            text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE checkout_session_refunds;
DROP TABLE inventory_checkout_lines;
DROP TABLE inventory_checkout_sessions;
DROP TABLE wallet_transactions;
DROP TABLE workspace_products;
DROP TABLE transaction_categories;
DROP TABLE workspace_wallets;
DROP TABLE workspace_configs;
DROP TABLE workspaces;
