-- Scheduling and recording state of a call.
ALTER TABLE calls ADD COLUMN retry_delay_ms INTEGER;
ALTER TABLE calls ADD COLUMN queued_at TEXT;
