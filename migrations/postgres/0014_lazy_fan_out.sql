-- Issue 20, measured with `bench webhooks`: lazy fan-out. The sequencer no longer writes a
-- delivery row per (endpoint, event): each endpoint keeps a cursor in the log (log_cursor, the
-- last position its claims have handled), and a claim leases events straight from the log after
-- it. A delivery row is written only for an event that must wait (its call's earlier event is
-- still being sent or retried), that failed, or that is dead; a delivered event leaves nothing
-- behind but its lease, inserted and deleted.
-- Every numbered event was fanned out to the endpoints that exist, so their cursors start at the
-- log's head.
ALTER TABLE webhook_endpoints ADD COLUMN log_cursor bigint NOT NULL DEFAULT 0;
UPDATE webhook_endpoints SET log_cursor = (SELECT next_seq - 1 FROM event_sequencer WHERE id = 1);
-- A lease names its event's stream: a claim sends nothing of a stream that has an event in
-- flight, and a lease with no delivery row (taken from the log) that fails or expires writes one.
ALTER TABLE webhook_leases ADD COLUMN stream_id uuid;
ALTER TABLE webhook_leases ADD COLUMN stream_seq integer;
UPDATE webhook_leases l SET stream_id = d.stream_id, stream_seq = d.stream_seq
    FROM webhook_deliveries d WHERE d.endpoint_id = l.endpoint_id AND d.seq = l.seq;
DELETE FROM webhook_leases WHERE stream_id IS NULL;
ALTER TABLE webhook_leases ALTER COLUMN stream_id SET NOT NULL;
ALTER TABLE webhook_leases ALTER COLUMN stream_seq SET NOT NULL;
