-- What an answered attempt's media came to (a campaign with telephony.media): who answered,
-- detection's reason, the key pressed, the voicemail left, as JSON (MediaResult); shown by
-- GET /api/v1/calls/{id}.
ALTER TABLE call_attempts ADD COLUMN media TEXT;
