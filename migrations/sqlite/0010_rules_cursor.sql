-- How far each consumer of the events table has read (the rules runner; later the
-- webhook dispatcher), committed in the same transaction as what it did with them,
-- so that a crash neither loses nor repeats a rule. Events are read in (tx, id)
-- order; on SQLite, whose one writer commits in id order, `tx` is always 0.
CREATE TABLE cursors (
    name       TEXT PRIMARY KEY,
    tx         INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
-- No index: with `tx` always 0 the order is the rowid's, which reading needs no index for
-- (and every send writes events: an index would cost each one).
ALTER TABLE events ADD COLUMN tx INTEGER NOT NULL DEFAULT 0;

-- Events recorded before the runner existed had their rules applied as they happened.
INSERT INTO cursors (name, tx, position, updated_at)
SELECT 'rules', 0, COALESCE(max(id), 0), 0 FROM events;
