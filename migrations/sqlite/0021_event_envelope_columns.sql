-- An event's row keeps its id; body holds only its `data` (readers wrap it in the envelope the
-- columns make). Rows written before keep their whole body and no event_id.
ALTER TABLE event_inbox ADD COLUMN event_id BLOB;
ALTER TABLE events ADD COLUMN event_id BLOB;
