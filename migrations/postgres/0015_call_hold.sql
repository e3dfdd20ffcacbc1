-- Issue 32: why a pending call waits. The rule a claim last held the call back by (window,
-- blackout, attempt_limit) when it set next_attempt_at; NULL when the recorder set it (a retry's
-- back-off). Read with the call; the reasons themselves are worked out at read time.
ALTER TABLE calls ADD COLUMN hold text;
