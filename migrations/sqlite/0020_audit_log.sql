-- Who changed what, when: every request that may change something through the API or the
-- console, with the id of the key behind it (never the key), and for settings changes the
-- settings before and after (JSON text).
CREATE TABLE audit_log (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    key_id  TEXT NOT NULL,
    method  TEXT NOT NULL,
    path    TEXT NOT NULL,
    status  INTEGER NOT NULL,
    before  TEXT,
    after   TEXT
);
