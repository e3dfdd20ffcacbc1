-- The SIP final response of an attempt (provider.kind = "sip"): status code and reason phrase,
-- shown by GET /api/v1/calls/{id}.
ALTER TABLE call_attempts ADD COLUMN sip_code INTEGER;
ALTER TABLE call_attempts ADD COLUMN sip_reason TEXT;
