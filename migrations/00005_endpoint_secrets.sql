-- +goose Up
-- Each workspace's Polar webhook signing secrets, per environment, several
-- while one is rotated. Only ciphertext is stored: AES-256-GCM under a key
-- from relay's environment (package endpoints), the row's id, workspace and
-- environment bound as additional data, so a ciphertext copied onto another
-- row does not decrypt. key_id names the key that encrypted the row (a hash
-- of it, never the key), so startup checks and rekeying can tell which rows
-- a key can open without trying every key.
CREATE TABLE endpoint_secrets (
    id           uuid        PRIMARY KEY,
    workspace_id uuid        NOT NULL REFERENCES workspaces (id) ON DELETE CASCADE,
    environment  text        NOT NULL,
    ciphertext   bytea       NOT NULL,
    key_id       text        NOT NULL,
    last4        text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT endpoint_secrets_environment_check CHECK (environment IN ('production', 'sandbox')),
    -- A 12-byte nonce and a 16-byte tag at least: never a plaintext.
    CONSTRAINT endpoint_secrets_ciphertext_check CHECK (length(ciphertext) > 28)
);
CREATE INDEX endpoint_secrets_workspace_idx ON endpoint_secrets (workspace_id);

-- Every change to endpoint_secrets bumps the generation and notifies
-- relay_endpoint_secrets, so that every replica's cache reloads. Caches
-- LISTEN for speed and poll the generation (one tiny row) for safety and
-- behind PgBouncer in transaction mode, where LISTEN cannot work.
CREATE TABLE endpoint_secrets_generation (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    generation bigint  NOT NULL
);
INSERT INTO endpoint_secrets_generation (singleton, generation) VALUES (true, 0);

-- +goose StatementBegin
CREATE FUNCTION endpoint_secrets_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE endpoint_secrets_generation SET generation = generation + 1;
    PERFORM pg_notify('relay_endpoint_secrets', '');
    RETURN NULL;
END
$$;
-- +goose StatementEnd

-- Per statement: a rekey of every row bumps the generation once. Deletes
-- cascading from workspaces fire it too.
CREATE TRIGGER endpoint_secrets_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON endpoint_secrets
    FOR EACH STATEMENT EXECUTE FUNCTION endpoint_secrets_changed();

-- +goose Down
DROP TABLE endpoint_secrets;
DROP FUNCTION endpoint_secrets_changed();
DROP TABLE endpoint_secrets_generation;
