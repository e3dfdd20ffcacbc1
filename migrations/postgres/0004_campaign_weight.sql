-- A campaign's weight in the fair division of a binding global cap (issue 14): campaigns share
-- the global cap max-min fair by demand, weighted by this.
ALTER TABLE campaigns ADD COLUMN weight INTEGER NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 1000);
