-- Issue 34, measured with `bench e2e` on a durable PostgreSQL: the inbox took a row per event
-- (3.8 a dial: a heap tuple, an index entry and ~300 bytes of WAL each), a third of the rows and
-- of the WAL a dial wrote. A transaction now appends one row holding all its events: `events`, a
-- JSON array (`dialer_store::events::InboxEvent`), compressed with lz4 where the server has it
-- (~50 bytes of WAL an event); `n_events`, their number (the sequencer sizes a batch without
-- reading the arrays); `created_at`, the newest event's time (pruning an inbox nobody reads).
-- The events already waiting keep their order, one a row.
CREATE TABLE event_inbox_packed (
    n            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    n_events     integer NOT NULL,
    created_at   timestamptz NOT NULL,
    events       text NOT NULL
);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)) THEN
        ALTER TABLE event_inbox_packed ALTER COLUMN events SET COMPRESSION lz4;
    END IF;
END
$$;
INSERT INTO event_inbox_packed (n_events, created_at, events)
    SELECT 1, created_at, json_build_array(json_build_object('c', campaign_id, 's', stream_id, 'q', stream_seq,
        'k', kind, 't', created_at, 'e', event_id, 'b', body))::text
    FROM event_inbox ORDER BY n;
DROP TABLE event_inbox;
ALTER TABLE event_inbox_packed RENAME TO event_inbox;
ALTER INDEX event_inbox_packed_pkey RENAME TO event_inbox_pkey;
ALTER SEQUENCE event_inbox_packed_n_seq RENAME TO event_inbox_n_seq;
