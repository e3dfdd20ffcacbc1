-- How an endpoint's answers have gone: its last delivered event, since when its answers fail
-- (NULL while the last one succeeded) and how many failed in a row. Written with the leases'
-- release, once per batch of answers; read to flag an endpoint that keeps failing.
ALTER TABLE webhook_endpoints ADD COLUMN last_success_at timestamptz;
ALTER TABLE webhook_endpoints ADD COLUMN failing_since timestamptz;
ALTER TABLE webhook_endpoints ADD COLUMN failures_in_a_row bigint NOT NULL DEFAULT 0;
