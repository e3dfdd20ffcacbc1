-- What one status change of a call costs PostgreSQL, per row, on an idle server: run with
--   psql -X -f bench/pg_update_costs.sql URL
-- on the database a `bench e2e --database-url URL` run left (its calls all ended). Everything
-- runs in transactions that are rolled back, so the database is left as it was. Each step
-- changes 3,000 calls the way the product does (the claim: pending -> queued; the recorder:
-- queued -> in_progress, in_progress -> completed) and prints its EXPLAIN ANALYZE time and WAL;
-- then the claim again without the unique live-call index, and with only the primary key,
-- to show what the indexes cost. Divide the times by 3,000 for a row.
\set ON_ERROR_STOP on
\pset pager off
SET enable_seqscan = off;
SET enable_hashjoin = off;
SET enable_mergejoin = off;

BEGIN;
CREATE TEMP TABLE picked ON COMMIT DROP AS
    SELECT campaign_id, id FROM calls ORDER BY id LIMIT 3000;
UPDATE calls SET status = 'pending', next_attempt_at = NULL
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
\echo '== the claim: pending -> queued'
EXPLAIN (ANALYZE, WAL, COSTS OFF, SUMMARY ON) UPDATE calls SET status = 'queued',
    attempt_count = attempt_count + 1, event_seq = event_seq + 1, queued_at = now(), updated_at = now()
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
\echo '== the recorder: queued -> in_progress'
EXPLAIN (ANALYZE, WAL, COSTS OFF, SUMMARY ON) UPDATE calls SET status = 'in_progress',
    event_seq = event_seq + 1, updated_at = now()
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
\echo '== the recorder: in_progress -> completed'
EXPLAIN (ANALYZE, WAL, COSTS OFF, SUMMARY ON) UPDATE calls SET status = 'completed',
    event_seq = event_seq + 1, updated_at = now()
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
ROLLBACK;

BEGIN;
CREATE TEMP TABLE picked ON COMMIT DROP AS
    SELECT campaign_id, id FROM calls ORDER BY id OFFSET 3000 LIMIT 3000;
UPDATE calls SET status = 'pending', next_attempt_at = NULL
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
DROP INDEX calls_one_live_per_number;
\echo '== the claim without the unique live-call index'
EXPLAIN (ANALYZE, WAL, COSTS OFF, SUMMARY ON) UPDATE calls SET status = 'queued',
    attempt_count = attempt_count + 1, event_seq = event_seq + 1, queued_at = now(), updated_at = now()
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
ROLLBACK;

BEGIN;
CREATE TEMP TABLE picked ON COMMIT DROP AS
    SELECT campaign_id, id FROM calls ORDER BY id OFFSET 6000 LIMIT 3000;
UPDATE calls SET status = 'pending', next_attempt_at = NULL
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
DROP INDEX calls_one_live_per_number, calls_id, calls_live, calls_pending_zone, calls_unzoned;
\echo '== the claim with the primary key alone'
EXPLAIN (ANALYZE, WAL, COSTS OFF, SUMMARY ON) UPDATE calls SET status = 'queued',
    attempt_count = attempt_count + 1, event_seq = event_seq + 1, queued_at = now(), updated_at = now()
    FROM picked p WHERE calls.campaign_id = p.campaign_id AND calls.id = p.id;
ROLLBACK;
