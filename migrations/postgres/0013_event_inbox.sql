-- Issue 20, measured with `bench webhooks`: numbering an event moves it instead of rewriting it.
-- The transactions that change calls and campaigns append to event_inbox (insert-only, one index:
-- the row's insertion number); the sequencer moves a batch from the inbox into the log (events,
-- keyed by its number seq) in one statement, in commit order as before. Numbering used to update
-- the row in place: a new version of the whole row (body and all) and three index entries (n, seq,
-- created_at), after the recorder's insert had written two (n, and the unnumbered rows' index).
-- Now an event costs the recorder's transaction one index entry and the sequencer one.
-- The log is pruned in seq order (commit order, so time order within a transaction's length): no
-- index on created_at to keep.
CREATE TABLE event_inbox (
    n            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    campaign_id  uuid NOT NULL,
    stream_id    uuid NOT NULL,
    stream_seq   integer NOT NULL,
    kind         text NOT NULL,
    body         text NOT NULL,
    created_at   timestamptz NOT NULL
);
INSERT INTO event_inbox (campaign_id, stream_id, stream_seq, kind, body, created_at)
    SELECT campaign_id, stream_id, stream_seq, kind, body, created_at FROM events WHERE seq IS NULL ORDER BY n;
DELETE FROM events WHERE seq IS NULL;
DROP INDEX events_unsequenced;
DROP INDEX events_created;
DROP INDEX events_seq;
-- Dropping n drops its primary key.
ALTER TABLE events DROP COLUMN n;
ALTER TABLE events ALTER COLUMN seq SET NOT NULL;
ALTER TABLE events ADD PRIMARY KEY (seq);
