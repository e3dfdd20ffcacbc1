-- What one status change of a call costs PostgreSQL, per row, on an idle server: run with
--   psql -X -f bench/pg_update_costs.sql URL
-- on the database a `bench e2e --database-url URL` run left (its calls all ended). Each step
-- changes 3,000 calls the way the product does (the claim: pending -> queued; the recorder:
-- queued -> in_progress, in_progress -> completed) and prints its EXPLAIN ANALYZE time and WAL;
-- then the claim again without the unique live-call index, and with only the primary key, to
-- show what the indexes cost. Divide the times by 3,000 for a row. It vacuums `calls` first (as
-- autovacuum would have by then: the run's dead versions do not count); the rest runs in
-- transactions that are rolled back, so the database keeps its rows.
\set ON_ERROR_STOP on
\pset pager off
VACUUM (ANALYZE) calls;
SET jit = off;
SET enable_seqscan = off;
SET enable_hashjoin = off;
SET enable_mergejoin = off;
-- 3,000 calls (from the `:skip`th), set back to pending; then a change of them, measured.
\set pick 'CREATE TEMP TABLE picked ON COMMIT DROP AS SELECT campaign_id, id FROM calls ORDER BY id OFFSET :skip LIMIT 3000; ANALYZE picked; UPDATE calls SET status = \'pending\', next_attempt_at = NULL FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;'
\set change 'EXPLAIN (ANALYZE, WAL, COSTS OFF, SUMMARY ON) UPDATE calls SET event_seq = event_seq + 1, updated_at = now(), status = '
\set these ' FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;'
\set claim :change '\'queued\', attempt_count = attempt_count + 1, queued_at = now()' :these
\set progress :change '\'in_progress\'' :these
\set complete :change '\'completed\'' :these

BEGIN;
\set skip 0
:pick
\echo '== the claim: pending -> queued'
:claim
\echo '== the recorder: queued -> in_progress'
:progress
\echo '== the recorder: in_progress -> completed'
:complete
ROLLBACK;

BEGIN;
\set skip 3000
:pick
DROP INDEX calls_one_live_per_number;
\echo '== the claim without the unique live-call index'
:claim
ROLLBACK;

BEGIN;
\set skip 6000
:pick
DROP INDEX calls_one_live_per_number, calls_id, calls_live, calls_pending_zone, calls_unzoned;
\echo '== the claim with the primary key alone'
:claim
ROLLBACK;
