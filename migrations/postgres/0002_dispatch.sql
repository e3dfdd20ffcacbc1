-- Scheduling and recording state of a call.
ALTER TABLE calls ADD COLUMN retry_delay_ms bigint;      -- backoff before the current attempt
ALTER TABLE calls ADD COLUMN queued_at timestamptz;      -- when the current attempt was dispatched
