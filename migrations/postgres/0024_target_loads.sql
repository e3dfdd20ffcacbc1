-- Issue 34: a large campaign's targets are loaded by several connections at once, each part in
-- its own transaction, and the campaign's row is inserted last (one transaction with its stats,
-- its `created` event and this row's removal): until then nothing reads the loaded rows (every
-- reader starts from a campaign), and a load that never finished (its process killed) is found
-- here and its rows deleted by the reaper.
CREATE TABLE target_loads (
    campaign_id  uuid PRIMARY KEY,
    started_at   timestamptz NOT NULL
);
