-- Issue 20: the event log (an outbox), webhooks and the live stream.
-- Each call and campaign counts its events: the next event of a stream takes event_seq + 1, in
-- the statement that changes the row, so a stream's events are numbered in the order its row
-- changed, with no gap.
ALTER TABLE calls ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaigns ADD COLUMN event_seq INTEGER NOT NULL DEFAULT 0;
-- The log. Rows are written by the transactions that change calls and campaigns (seq NULL), and
-- numbered after they commit by the one sequencer (seq: 1, 2, … in commit order, no gap), which
-- also fans them out to the webhook endpoints that want them. Readers (the live stream, the
-- delivery of webhooks) read numbered rows only, in seq order (a campaign's stream too: a client
-- resuming reads what was logged since its last id, no index per campaign to keep on every event).
-- Pruned after events.keep_hours, once no delivery needs them. `n`: the row's insertion number (the
-- sequencer's handle; the event's own id is in its body, and nothing looks it up).
CREATE TABLE events (
    n            INTEGER PRIMARY KEY,
    seq          INTEGER,
    campaign_id  BLOB NOT NULL,
    stream_id    BLOB NOT NULL,
    stream_seq   INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE UNIQUE INDEX events_seq ON events (seq) WHERE seq IS NOT NULL;
CREATE INDEX events_unsequenced ON events (n) WHERE seq IS NULL;
CREATE INDEX events_created ON events (created_at) WHERE seq IS NOT NULL;
-- The sequencer's next number; its row lock makes one sequencer run at a time across replicas.
CREATE TABLE event_sequencer (
    id        INTEGER PRIMARY KEY,
    next_seq  INTEGER NOT NULL
);
INSERT INTO event_sequencer (id, next_seq) VALUES (1, 1);
-- Webhook endpoints. Two secrets are active during a rotation (previous_secret until
-- previous_expires_at). event_types: comma-separated, '' = all. rate_tokens/rate_at: the
-- endpoint's token bucket, updated by the claim that locks the row.
CREATE TABLE webhook_endpoints (
    id                   BLOB PRIMARY KEY,
    url                  TEXT NOT NULL,
    description          TEXT NOT NULL DEFAULT '',
    secret               TEXT NOT NULL,
    previous_secret      TEXT,
    previous_expires_at  TEXT,
    event_types          TEXT NOT NULL,
    campaign_id          BLOB,
    enabled              INTEGER NOT NULL,
    disabled_reason      TEXT,
    max_concurrency      INTEGER NOT NULL,
    rate_per_sec         INTEGER NOT NULL,
    rate_tokens          REAL NOT NULL,
    rate_at              TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);
-- One row per (endpoint, event): pending → sending (claimed with a lease) → deleted once
-- delivered, or dead (the dead-letter store) after the retry window, a 410, or when an earlier
-- event of its stream died. window_start: the first attempt's time (a replay restarts it).
CREATE TABLE webhook_deliveries (
    endpoint_id      BLOB NOT NULL,
    seq              INTEGER NOT NULL,
    stream_id        BLOB NOT NULL,
    stream_seq       INTEGER NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL,
    window_start     TEXT,
    lease_until      TEXT,
    last_code        INTEGER,
    last_error       TEXT,
    dead_at          TEXT,
    PRIMARY KEY (endpoint_id, seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (endpoint_id, next_attempt_at, seq) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_stream ON webhook_deliveries (endpoint_id, stream_id, stream_seq);
CREATE INDEX webhook_deliveries_sending ON webhook_deliveries (endpoint_id, lease_until) WHERE state = 'sending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (endpoint_id, seq) WHERE state = 'dead';
CREATE INDEX webhook_deliveries_seq ON webhook_deliveries (seq);
