-- +goose Up
-- A worker marks every inbox row processed (status, processed time, job id,
-- note). status is indexed, so that update is never HOT: it writes a whole
-- new row version to the table and the WAL. With the body inline (a Polar
-- order is 2-3 KB, about 1.3 KB compressed) the update wrote the body again
-- and cost as much WAL as storing the webhook (make bench: 1.9 KB of 6.5 KB
-- per processed event). With toast_tuple_target this low, a body that makes
-- its row too wide to keep (over about 2 KB) is compressed and moved out of
-- line once, when the row is inserted; an update copies an 18-byte pointer.
-- Rows stored before keep their bodies inline.
ALTER TABLE webhook_inbox SET (toast_tuple_target = 128);

-- +goose Down
ALTER TABLE webhook_inbox RESET (toast_tuple_target);
