-- Issue 34: see the PostgreSQL migration 0024. SQLite loads a campaign in one transaction (one
-- writer at a time), so this table stays empty there; it exists so that the reaper's sweep of
-- unfinished loads reads the same schema on both stores.
CREATE TABLE target_loads (
    campaign_id  BLOB PRIMARY KEY,
    started_at   TEXT NOT NULL
);
