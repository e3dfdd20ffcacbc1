-- Prompts: audio an answered call plays (telephony.media of a campaign), uploaded through
-- POST /api/v1/prompts. Stored as 8 kHz mono 16-bit PCM WAV; never changed once written (a new
-- recording is a new prompt), so data planes cache them by id.
CREATE TABLE prompts (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    duration_ms  bigint NOT NULL,
    sha256       text NOT NULL,
    audio        bytea NOT NULL,
    created_at   timestamptz NOT NULL
);
