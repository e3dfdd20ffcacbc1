-- Issue 35: see migrations/postgres/0023_dispatch_deadline.sql (the embedded bus never strands a
-- claim, so nothing republishes here; the columns keep the two schemas alike).
ALTER TABLE calls ADD COLUMN dispatch_deadline TEXT;
ALTER TABLE calls ADD COLUMN republish_at TEXT;
