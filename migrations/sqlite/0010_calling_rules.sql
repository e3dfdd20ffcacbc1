-- Issue 19: the recipient's calling rules.
-- A campaign's own rules (JSON, dialer_domain::rules::CallingRules); NULL = the process's
-- [calling_rules].
ALTER TABLE campaigns ADD COLUMN calling_rules TEXT;
-- Each call's zone key (dialer_domain::recipient: "regions|zones" from its number and postal
-- code; "" = nothing maps). NULL = not located yet: the scheduler locates such calls in batches.
ALTER TABLE calls ADD COLUMN zone TEXT;
-- Claims read one zone's pending calls in (next_attempt_at, id) order, and the distinct zones of
-- a campaign's pending calls by a skip scan: a claim costs the zones and the rows it takes, never
-- the calls of closed zones. Replaces calls_pending.
CREATE INDEX calls_pending_zone ON calls (campaign_id, zone, next_attempt_at, id) WHERE status = 'pending';
DROP INDEX calls_pending;
CREATE INDEX calls_unzoned ON calls (campaign_id) WHERE status = 'pending' AND zone IS NULL;
-- Do-not-call lists: the global list under the nil id, a campaign's under its id. `announced`:
-- the scheduler has told the data plane (queued calls to the number are not dialled).
CREATE TABLE dnc_entries (
    campaign_id   BLOB NOT NULL,
    phone_number  TEXT NOT NULL,
    reason        TEXT,
    source        TEXT,
    expires_at    TEXT,
    created_at    TEXT NOT NULL,
    announced     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, phone_number)
);
CREATE INDEX dnc_unannounced ON dnc_entries (created_at) WHERE announced = false;
-- Every dispatched attempt per number, across campaigns, for the contact-attempt limits; rows
-- older than 25 hours are pruned.
CREATE TABLE contact_attempts (
    phone_number  TEXT NOT NULL,
    call_id       BLOB NOT NULL,
    attempt       integer NOT NULL,
    campaign_id   BLOB NOT NULL,
    at            TEXT NOT NULL,
    PRIMARY KEY (phone_number, call_id, attempt)
);
CREATE INDEX contact_attempts_at ON contact_attempts (at);
-- Calls that ended without a dial (status 'skipped'), by reason.
ALTER TABLE campaign_stats ADD COLUMN skipped_calls bigint NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN skipped_dnc bigint NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN skipped_no_zone bigint NOT NULL DEFAULT 0;
