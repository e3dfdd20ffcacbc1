-- Control-plane schema (SQLite, embedded mode). Same tables and meaning as
-- migrations/postgres; ids are 16-byte BLOBs, timestamps RFC 3339 text, JSON text.
-- Never edit an applied migration: add a new file.

CREATE TABLE campaigns (
    id                    BLOB PRIMARY KEY,
    name                  TEXT NOT NULL,
    name_key              TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    time_zone             TEXT NOT NULL,
    max_concurrent_calls  INTEGER NOT NULL CHECK (max_concurrent_calls > 0),
    retry_max_attempts    INTEGER NOT NULL CHECK (retry_max_attempts > 0),
    retry_base_delay_ms   INTEGER NOT NULL,
    retry_max_delay_ms    INTEGER NOT NULL,
    retry_jitter          REAL NOT NULL,
    status                TEXT NOT NULL,
    target_count          INTEGER NOT NULL DEFAULT 0,
    created_at            TEXT NOT NULL,
    updated_at            TEXT NOT NULL,
    started_at            TEXT,
    completed_at          TEXT
);
CREATE UNIQUE INDEX campaigns_name_key ON campaigns (name_key);
CREATE INDEX campaigns_status ON campaigns (status);

CREATE TABLE campaign_business_hours (
    campaign_id   BLOB NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    position      INTEGER NOT NULL,
    day_of_week   INTEGER NOT NULL CHECK (day_of_week BETWEEN 0 AND 6),
    start_minute  INTEGER NOT NULL,
    end_minute    INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, position)
);

CREATE TABLE campaign_targets (
    campaign_id   BLOB NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    phone_number  TEXT NOT NULL,
    metadata      TEXT NOT NULL DEFAULT '{}',
    created_at    TEXT NOT NULL,
    PRIMARY KEY (campaign_id, phone_number)
) WITHOUT ROWID;

CREATE TABLE calls (
    campaign_id      BLOB NOT NULL,
    id               BLOB NOT NULL,
    phone_number     TEXT NOT NULL,
    metadata         TEXT NOT NULL DEFAULT '{}',
    status           TEXT NOT NULL,
    attempt_count    INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT,
    last_error       TEXT,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (campaign_id, id),
    FOREIGN KEY (campaign_id, phone_number) REFERENCES campaign_targets (campaign_id, phone_number)
);
CREATE INDEX calls_id ON calls (id);
CREATE INDEX calls_due ON calls (campaign_id, status, next_attempt_at);
CREATE UNIQUE INDEX calls_one_live_per_number ON calls (campaign_id, phone_number)
    WHERE status IN ('pending', 'queued', 'in_progress');

CREATE TABLE call_attempts (
    campaign_id   BLOB NOT NULL,
    call_id       BLOB NOT NULL,
    attempt       INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    started_at    TEXT,
    answered_at   TEXT,
    ended_at      TEXT,
    duration_ms   INTEGER,
    reason        TEXT,
    retryable     INTEGER,
    PRIMARY KEY (campaign_id, call_id, attempt)
);

CREATE TABLE campaign_stats (
    campaign_id        BLOB PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    total_calls        INTEGER NOT NULL DEFAULT 0,
    pending_calls      INTEGER NOT NULL DEFAULT 0,
    queued_calls       INTEGER NOT NULL DEFAULT 0,
    in_progress_calls  INTEGER NOT NULL DEFAULT 0,
    completed_calls    INTEGER NOT NULL DEFAULT 0,
    failed_calls       INTEGER NOT NULL DEFAULT 0,
    retries_attempted  INTEGER NOT NULL DEFAULT 0,
    attempts_total     INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE campaign_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_id  BLOB NOT NULL,
    kind         TEXT NOT NULL,
    detail       TEXT NOT NULL DEFAULT '{}',
    at           TEXT NOT NULL
);
CREATE INDEX campaign_events_campaign ON campaign_events (campaign_id, id);
