-- Issue 18: failed calls counted by their last attempt's outcome (GET …/stats failed_by_outcome),
-- kept by the recorder in the same transactions as the rows; existing rows are counted once here.
ALTER TABLE campaign_stats ADD COLUMN failed_busy INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN failed_no_answer INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN failed_rejected INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN failed_invalid_number INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN failed_failed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN failed_unknown_outcome INTEGER NOT NULL DEFAULT 0;
UPDATE campaign_stats SET
    failed_busy = (SELECT count(*) FROM calls WHERE calls.campaign_id = campaign_stats.campaign_id AND calls.status = 'failed' AND calls.last_error = 'busy'),
    failed_no_answer = (SELECT count(*) FROM calls WHERE calls.campaign_id = campaign_stats.campaign_id AND calls.status = 'failed' AND calls.last_error = 'no_answer'),
    failed_rejected = (SELECT count(*) FROM calls WHERE calls.campaign_id = campaign_stats.campaign_id AND calls.status = 'failed' AND calls.last_error = 'rejected'),
    failed_invalid_number = (SELECT count(*) FROM calls WHERE calls.campaign_id = campaign_stats.campaign_id AND calls.status = 'failed' AND calls.last_error = 'invalid_number'),
    failed_failed = (SELECT count(*) FROM calls WHERE calls.campaign_id = campaign_stats.campaign_id AND calls.status = 'failed' AND calls.last_error = 'failed'),
    failed_unknown_outcome = (SELECT count(*) FROM calls WHERE calls.campaign_id = campaign_stats.campaign_id AND calls.status = 'failed' AND calls.last_error = 'unknown_outcome');
