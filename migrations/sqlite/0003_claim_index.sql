-- Claims read a campaign's pending calls in (next_attempt_at, id) order, NULLs (new calls) last:
-- this index gives them in that order, holds only pending calls, and so costs a claim the rows it
-- takes rather than every call of the campaign.
CREATE INDEX calls_pending ON calls (campaign_id, next_attempt_at, id) WHERE status = 'pending';
