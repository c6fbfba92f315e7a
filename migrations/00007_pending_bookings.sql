-- +goose Up
-- A paid sale that cannot be booked yet (no usable default wallet, or
-- another currency) is kept here, in the transaction that completes its
-- session, until relay can post it. The primary key makes it one row per
-- sale, however often the event is redelivered or replayed; a posted row
-- stays, with the booking it became.
--
-- No foreign keys: deleting the session or its workspace must neither fail
-- nor take the row with it, so a sale that can never post stays visible.
-- What the listing needs is copied (amount, currency, category).
CREATE TABLE pending_bookings (
    session_id         uuid NOT NULL,
    ws_id              uuid NOT NULL,
    amount             bigint NOT NULL CHECK (amount >= 0),
    currency           text NOT NULL,
    -- The currency the sale was paid in; another than the session's can never post.
    payment_currency   text NOT NULL,
    category_id        uuid,
    reason             text NOT NULL,
    -- Why, in words, as of the last attempt (no customer data).
    note               text NOT NULL DEFAULT '',
    -- The booking's description and date, and the description of reversals.
    description        text NOT NULL DEFAULT '',
    refund_description text NOT NULL DEFAULT '',
    paid_at            timestamptz NOT NULL,
    -- The refunded total (tax included) recorded while the sale was pending.
    refunded_amount    bigint NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0),
    first_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_attempt_at    timestamptz NOT NULL DEFAULT now(),
    attempts           integer NOT NULL DEFAULT 1,
    posted_at          timestamptz,
    transaction_id     uuid,
    CONSTRAINT pending_bookings_session_key PRIMARY KEY (session_id),
    CONSTRAINT pending_bookings_reason_check CHECK (reason IN ('no_wallet', 'wallet_workspace', 'currency')),
    CONSTRAINT pending_bookings_posted_check CHECK ((posted_at IS NULL) = (transaction_id IS NULL))
);
-- What is still pending: the poster's and the metrics' one query each.
CREATE INDEX pending_bookings_unposted_idx ON pending_bookings (last_attempt_at, session_id)
    WHERE posted_at IS NULL;

-- +goose Down
DROP TABLE pending_bookings;
