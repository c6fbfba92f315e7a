-- +goose Up
-- When the pending-bookings pass tries a sale next. A sale that still
-- cannot be booked is tried again after a delay that doubles with each
-- attempt: up to 50 s while it waits on the workspace's wallet setting
-- (which an operator fixes), up to an hour once it can never be booked by
-- relay (paid in another currency, session deleted). A pass takes the due
-- sales in this order and stops at its time budget; the next one goes on
-- from there. Existing rows are due at once (now() is evaluated once: no
-- table rewrite).
ALTER TABLE pending_bookings ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT now();
-- What is still pending, in the pass's order; the metrics' query reads it
-- for the unposted rows only, as before (same name).
DROP INDEX pending_bookings_unposted_idx;
CREATE INDEX pending_bookings_unposted_idx ON pending_bookings (next_attempt_at, session_id)
    WHERE posted_at IS NULL;

-- +goose Down
DROP INDEX pending_bookings_unposted_idx;
ALTER TABLE pending_bookings DROP COLUMN next_attempt_at;
CREATE INDEX pending_bookings_unposted_idx ON pending_bookings (last_attempt_at, session_id)
    WHERE posted_at IS NULL;
