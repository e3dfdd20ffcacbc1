-- Issue 35: a claim whose messages were never acknowledged (its control plane killed between the
-- claim's commit and the broker's acknowledgement, or a delivery in doubt) is published again,
-- same attempt and same deadline, by any control plane. The deadline is kept with the call (the
-- data plane's journal remembers a resolved attempt until its message's deadline, so a second
-- message of it is never dialled), and republish_at is when it may be published again.
ALTER TABLE calls ADD COLUMN dispatch_deadline timestamptz;
ALTER TABLE calls ADD COLUMN republish_at timestamptz;
