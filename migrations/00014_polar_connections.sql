-- +goose Up
-- Each workspace's connection to its Polar organization, per environment:
-- the organization access token relay reads orders, refunds and webhook
-- endpoints with, and what relay last saw of its endpoint at Polar. The
-- token is stored as endpoint secrets are (00005): AES-256-GCM under
-- RELAY_SECRETS_KEY, the row's id, workspace and environment bound as
-- additional data, key_id naming the key; `relay endpoints rekey`
-- re-encrypts these rows too.
CREATE TABLE polar_connections (
    id                    uuid        PRIMARY KEY,
    workspace_id          uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    environment           text        NOT NULL,
    token_ciphertext      bytea       NOT NULL,
    key_id                text        NOT NULL,
    token_last4           text        NOT NULL,
    -- Polar's organization, once an answer named it.
    organization_id       uuid,
    -- relay's webhook endpoint at Polar: its id, the URL it was found or
    -- created with, its state when last looked at (unknown until then or
    -- when the token may not read endpoints; unauthorized when Polar
    -- rejected the token), and whether relay created it (and so may
    -- re-create it).
    endpoint_id           uuid,
    endpoint_url          text,
    state                 text        NOT NULL DEFAULT 'unknown',
    endpoint_registered   boolean     NOT NULL DEFAULT false,
    state_checked_at      timestamptz,
    -- The last reconciliation pass: when it ended, how (ok, failed,
    -- unauthorized, forbidden), how many findings, and its error if any.
    last_reconciled_at    timestamptz,
    last_reconcile_result text,
    last_reconcile_findings integer,
    last_reconcile_error  text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT polar_connections_workspace_environment_key UNIQUE (workspace_id, environment),
    CONSTRAINT polar_connections_environment_check CHECK (environment IN ('production', 'sandbox')),
    CONSTRAINT polar_connections_state_check
        CHECK (state IN ('enabled', 'disabled', 'missing', 'unknown', 'unauthorized')),
    -- A 12-byte nonce and a 16-byte tag at least: never a plaintext.
    CONSTRAINT polar_connections_token_ciphertext_check CHECK (length(token_ciphertext) > 28)
);

-- +goose Down
DROP TABLE polar_connections;
