-- The reaper (issue 15) reads calls still queued or in progress in the order they were
-- dispatched, oldest first: this index holds only those calls, so a sweep costs the stale calls
-- it finds, not the campaign's history.
CREATE INDEX calls_live ON calls (queued_at) WHERE status IN ('queued', 'in_progress');
