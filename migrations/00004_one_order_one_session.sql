-- +goose Up
-- A Polar order pays one checkout session. Recorded on two, both could
-- complete and book from one payment; the unique index makes that
-- impossible, and the ledger refuses an order that names another session
-- than the one recording it.
--
-- A database that already records an order on several sessions is not
-- repaired here: which session the order paid, and what was booked, is for
-- a person to decide, and a payment system must not rewrite its history
-- silently. The migration stops with the orders' ids instead; clear
-- polar_order_id on the sessions the order did not pay and run it again.
-- The SHARE lock keeps the check and the index build on the same rows.
LOCK TABLE inventory_checkout_sessions IN SHARE MODE;

-- +goose StatementBegin
DO $$
DECLARE
    n        bigint;
    examples text;
BEGIN
    SELECT count(*), string_agg(polar_order_id, ', ' ORDER BY polar_order_id) FILTER (WHERE rn <= 5)
    INTO n, examples
    FROM (SELECT polar_order_id, row_number() OVER (ORDER BY polar_order_id) AS rn
          FROM inventory_checkout_sessions
          WHERE polar_order_id IS NOT NULL
          GROUP BY polar_order_id HAVING count(*) > 1) d;
    IF n > 0 THEN
        RAISE EXCEPTION 'relay migration 00004: % Polar order(s) are recorded on more than one checkout session (e.g. %); decide which session each paid, clear polar_order_id on the others, and migrate again', n, examples
            USING HINT = 'SELECT polar_order_id, array_agg(id ORDER BY created_at) FROM inventory_checkout_sessions WHERE polar_order_id IS NOT NULL GROUP BY 1 HAVING count(*) > 1';
    END IF;
END
$$;
-- +goose StatementEnd

DROP INDEX inventory_checkout_sessions_polar_order_idx;
CREATE UNIQUE INDEX inventory_checkout_sessions_polar_order_key
    ON inventory_checkout_sessions (polar_order_id) WHERE polar_order_id IS NOT NULL;

-- +goose Down
DROP INDEX inventory_checkout_sessions_polar_order_key;
CREATE INDEX inventory_checkout_sessions_polar_order_idx
    ON inventory_checkout_sessions (polar_order_id) WHERE polar_order_id IS NOT NULL;
