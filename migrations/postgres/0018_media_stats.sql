-- Answered calls of a campaign with telephony.media: who answered (by detection), voicemails
-- left, keypress opt-outs, and abandoned calls (a person answered and their message started
-- more than 2 s after their greeting ended, or never: 47 CFR 64.1200(a)(7)).
ALTER TABLE campaign_stats ADD COLUMN answered_human BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN answered_machine BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN answered_unknown BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN voicemail_left BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN opted_out BIGINT NOT NULL DEFAULT 0;
ALTER TABLE campaign_stats ADD COLUMN abandoned BIGINT NOT NULL DEFAULT 0;
