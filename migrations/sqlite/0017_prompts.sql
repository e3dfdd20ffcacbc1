-- Prompts: audio an answered call plays (telephony.media of a campaign), uploaded through
-- POST /api/v1/prompts. Stored as 8 kHz mono 16-bit PCM WAV; never changed once written (a new
-- recording is a new prompt), so data planes cache them by id.
CREATE TABLE prompts (
    id           BLOB PRIMARY KEY,
    name         TEXT NOT NULL,
    duration_ms  INTEGER NOT NULL,
    sha256       TEXT NOT NULL,
    audio        BLOB NOT NULL,
    created_at   TEXT NOT NULL
);
