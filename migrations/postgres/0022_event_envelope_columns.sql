-- Issue 34: an event's body repeated its row's columns (campaign, call, sequence, type, time) and
-- its id: ~230 of its ~350 bytes, the largest share of a dial's WAL (the inbox wrote 238 of ~530 MB
-- in a `bench e2e` run). New rows keep the id in a column and only the event's `data` in body;
-- readers wrap it in the envelope (`dialer_domain::events::envelope`). Rows written before keep
-- their whole body and no event_id.
ALTER TABLE event_inbox ADD COLUMN event_id uuid;
ALTER TABLE events ADD COLUMN event_id uuid;
