-- Issue 34 (see the PostgreSQL migration): a transaction's events are one inbox row, a JSON array
-- (`dialer_store::events::InboxEvent`), with their number and the newest event's time. The events
-- already waiting keep their order, one a row (ids as text, times as stored).
CREATE TABLE event_inbox_packed (
    n            INTEGER PRIMARY KEY,
    n_events     INTEGER NOT NULL,
    created_at   TEXT NOT NULL,
    events       TEXT NOT NULL
);
INSERT INTO event_inbox_packed (n_events, created_at, events)
    SELECT 1, created_at, json_array(json_object(
        'c', lower(substr(hex(campaign_id), 1, 8) || '-' || substr(hex(campaign_id), 9, 4) || '-' || substr(hex(campaign_id), 13, 4) || '-' || substr(hex(campaign_id), 17, 4) || '-' || substr(hex(campaign_id), 21)),
        's', lower(substr(hex(stream_id), 1, 8) || '-' || substr(hex(stream_id), 9, 4) || '-' || substr(hex(stream_id), 13, 4) || '-' || substr(hex(stream_id), 17, 4) || '-' || substr(hex(stream_id), 21)),
        'q', stream_seq,
        'k', kind,
        't', created_at,
        'e', CASE WHEN event_id IS NULL THEN NULL ELSE lower(substr(hex(event_id), 1, 8) || '-' || substr(hex(event_id), 9, 4) || '-' || substr(hex(event_id), 13, 4) || '-' || substr(hex(event_id), 17, 4) || '-' || substr(hex(event_id), 21)) END,
        'b', body))
    FROM event_inbox ORDER BY n;
DROP TABLE event_inbox;
ALTER TABLE event_inbox_packed RENAME TO event_inbox;
