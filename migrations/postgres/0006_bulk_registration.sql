-- Registering targets in bulk (issue 17): PostgreSQL checks a foreign key with one query per
-- inserted row, run at the end of the statement. Those checks were 46 % of the time of creating
-- a 1M-target campaign (`perf` of the backend: `AfterTriggerEndQuery`). Both keys are kept by
-- construction instead: a campaign's targets are inserted with it or after it, campaigns are
-- never deleted, and calls are created only from targets read or written in the same
-- transaction (the tests recount every campaign's rows). SQLite keeps its keys (checked by an
-- index probe per row, not a query); its migrations are numbered on their own.
ALTER TABLE calls DROP CONSTRAINT calls_campaign_id_phone_number_fkey;
ALTER TABLE campaign_targets DROP CONSTRAINT campaign_targets_campaign_id_fkey;
