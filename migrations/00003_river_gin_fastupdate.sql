-- +goose Up
-- River indexes every job's args and metadata with GIN. With GIN's default
-- fastupdate, inserts append to a pending list that the insert which finds
-- it past gin_pending_list_limit (4 MB) must merge into the index: under
-- load, one job insert in a few thousand then takes 300-600 ms, and every
-- webhook committed with it waits that long for its 200 (make bench showed
-- such stalls in pgbench and in relay alike). Without fastupdate each
-- insert updates the index itself: a little more work each time, no stalls.
-- If a later River migration rebuilds these indexes, this migration's effect
-- is lost: migrations_test.go checks it.
ALTER INDEX river_job_args_index SET (fastupdate = off);
ALTER INDEX river_job_metadata_index SET (fastupdate = off);

-- +goose Down
ALTER INDEX river_job_args_index RESET (fastupdate);
ALTER INDEX river_job_metadata_index RESET (fastupdate);
