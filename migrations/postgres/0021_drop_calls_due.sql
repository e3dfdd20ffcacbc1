-- Issue 34: every status change of a call is a non-HOT update (status is in the partial indexes'
-- predicates), which writes a new entry in each of the table's indexes. calls_due (campaign_id,
-- status, next_attempt_at) was the first claim index; claims read calls_pending_zone since 0010,
-- a campaign's pending groups read it too (its predicate is status = 'pending'), and the lists by
-- campaign read the primary key (campaign_id, id). Measured with `bench e2e` on durable
-- PostgreSQL: 5 scans in a run of 116,000 dials, against an entry written by each of the 2.3
-- updates per dial.
DROP INDEX IF EXISTS calls_due;
