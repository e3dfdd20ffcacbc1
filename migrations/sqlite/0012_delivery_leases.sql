-- Issue 20, measured with `bench webhooks`: a claim no longer rewrites its deliveries. A claimed
-- delivery is a row of webhook_leases (its attempt's number and lease), inserted by the claim and
-- deleted with the answer; the delivery row itself is written only when an attempt fails (its
-- attempts, back-off, last answer) and deleted once delivered. Each delivered event now costs a
-- delivery row and a lease row inserted and deleted, instead of an insert, an update that rewrote
-- the row and its four index entries (the state and the lease were indexed), and a delete.
-- A delivery is being sent while it holds a lease. The endpoint's in_flight counts its leases
-- (kept by the statements that insert and delete them, under the endpoint's row lock): counting
-- the leases themselves walked every dead index entry of a table that churns at the delivery rate.
CREATE TABLE webhook_leases (
    endpoint_id  BLOB NOT NULL,
    seq          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    claimed_at   TEXT NOT NULL,
    lease_until  TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, seq)
);
-- Deliveries that were being sent go again (at least once; they were due when claimed).
UPDATE webhook_deliveries SET state = 'pending' WHERE state = 'sending';
DROP INDEX webhook_deliveries_sending;
-- Its readers (pruning, the fan-out's dead-letter check) look deliveries up per endpoint by the
-- primary key instead: one index fewer to write per delivery.
DROP INDEX webhook_deliveries_seq;
ALTER TABLE webhook_deliveries DROP COLUMN lease_until;
ALTER TABLE webhook_endpoints ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0;
