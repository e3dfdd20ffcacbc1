-- Issue 20, measured with `bench webhooks`: numbering an event moves it instead of rewriting it.
-- The transactions that change calls and campaigns append to event_inbox (insert-only, one index:
-- the row's insertion number); the sequencer moves a batch from the inbox into the log (events,
-- keyed by its number seq), in commit order as before. Numbering used to update the row in place:
-- a new version of the whole row and three index entries (n, seq, created_at), after the
-- recorder's insert had written two (n, and the unnumbered rows' index).
-- The log is pruned in seq order (commit order): no index on created_at to keep.
CREATE TABLE event_inbox (
    n            INTEGER PRIMARY KEY,
    campaign_id  BLOB NOT NULL,
    stream_id    BLOB NOT NULL,
    stream_seq   INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
INSERT INTO event_inbox (campaign_id, stream_id, stream_seq, kind, body, created_at)
    SELECT campaign_id, stream_id, stream_seq, kind, body, created_at FROM events WHERE seq IS NULL ORDER BY n;
CREATE TABLE event_log (
    seq          INTEGER PRIMARY KEY,
    campaign_id  BLOB NOT NULL,
    stream_id    BLOB NOT NULL,
    stream_seq   INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
INSERT INTO event_log (seq, campaign_id, stream_id, stream_seq, kind, body, created_at)
    SELECT seq, campaign_id, stream_id, stream_seq, kind, body, created_at FROM events WHERE seq IS NOT NULL;
DROP TABLE events;
ALTER TABLE event_log RENAME TO events;
