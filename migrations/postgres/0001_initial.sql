-- Control-plane schema (PostgreSQL). Never edit an applied migration: add a new file.
-- Large tables lead with campaign_id so they can be distributed by it (Citus) later.

CREATE TABLE campaigns (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL,
    name_key              text NOT NULL,          -- lower-cased name, unique
    description           text NOT NULL DEFAULT '',
    time_zone             text NOT NULL,
    max_concurrent_calls  integer NOT NULL CHECK (max_concurrent_calls > 0),
    retry_max_attempts    integer NOT NULL CHECK (retry_max_attempts > 0),
    retry_base_delay_ms   bigint NOT NULL,
    retry_max_delay_ms    bigint NOT NULL,
    retry_jitter          double precision NOT NULL,
    status                text NOT NULL,
    target_count          bigint NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL,
    updated_at            timestamptz NOT NULL,
    started_at            timestamptz,
    completed_at          timestamptz
);
CREATE UNIQUE INDEX campaigns_name_key ON campaigns (name_key);
CREATE INDEX campaigns_status ON campaigns (status);

CREATE TABLE campaign_business_hours (
    campaign_id   uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    position      integer NOT NULL,
    day_of_week   integer NOT NULL CHECK (day_of_week BETWEEN 0 AND 6),
    start_minute  integer NOT NULL,
    end_minute    integer NOT NULL,
    PRIMARY KEY (campaign_id, position)
);

-- The registered numbers of each campaign: the only numbers it may ever call.
CREATE TABLE campaign_targets (
    campaign_id   uuid NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    phone_number  text NOT NULL,
    metadata      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, phone_number)
);

CREATE TABLE calls (
    campaign_id      uuid NOT NULL,
    id               uuid NOT NULL,
    phone_number     text NOT NULL,
    metadata         jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL,
    attempt_count    integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, id),
    FOREIGN KEY (campaign_id, phone_number) REFERENCES campaign_targets (campaign_id, phone_number)
);
CREATE INDEX calls_id ON calls (id);
CREATE INDEX calls_due ON calls (campaign_id, status, next_attempt_at);
-- At most one live (not terminal) call per number and campaign: a person is never queued twice.
CREATE UNIQUE INDEX calls_one_live_per_number ON calls (campaign_id, phone_number)
    WHERE status IN ('pending', 'queued', 'in_progress');

-- The call-attempt timeline when no CQL store is configured.
CREATE TABLE call_attempts (
    campaign_id   uuid NOT NULL,
    call_id       uuid NOT NULL,
    attempt       integer NOT NULL,
    outcome       text NOT NULL,
    started_at    timestamptz,
    answered_at   timestamptz,
    ended_at      timestamptz,
    duration_ms   bigint,
    reason        text,
    retryable     boolean,
    PRIMARY KEY (campaign_id, call_id, attempt)
);

-- Aggregates kept in step with the call rows, in the same transactions that change them.
CREATE TABLE campaign_stats (
    campaign_id        uuid PRIMARY KEY REFERENCES campaigns (id) ON DELETE CASCADE,
    total_calls        bigint NOT NULL DEFAULT 0,
    pending_calls      bigint NOT NULL DEFAULT 0,
    queued_calls       bigint NOT NULL DEFAULT 0,
    in_progress_calls  bigint NOT NULL DEFAULT 0,
    completed_calls    bigint NOT NULL DEFAULT 0,
    failed_calls       bigint NOT NULL DEFAULT 0,
    retries_attempted  bigint NOT NULL DEFAULT 0,
    attempts_total     bigint NOT NULL DEFAULT 0
);

CREATE TABLE campaign_events (
    campaign_id  uuid NOT NULL,
    id           bigint GENERATED ALWAYS AS IDENTITY,
    kind         text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}',
    at           timestamptz NOT NULL,
    PRIMARY KEY (campaign_id, id)
);
