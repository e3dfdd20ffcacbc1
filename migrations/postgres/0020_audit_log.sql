-- Who changed what, when: every request that may change something through the API or the
-- console, with the id of the key behind it (never the key), and for settings changes the
-- settings before and after (JSON text).
CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL,
    key_id  text NOT NULL,
    method  text NOT NULL,
    path    text NOT NULL,
    status  integer NOT NULL,
    before  text,
    after   text
);
