-- Issue 18: which outcomes a campaign retries (comma-separated outcome names), and its SIP
-- settings (JSON: caller_id, ring_timeout_ms, media_endpoint, refer_to; NULL = the provider's).
ALTER TABLE campaigns ADD COLUMN retry_on TEXT NOT NULL DEFAULT 'busy,no_answer,failed,unknown_outcome';
ALTER TABLE campaigns ADD COLUMN telephony TEXT;
