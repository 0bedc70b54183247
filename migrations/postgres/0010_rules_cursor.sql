-- How far each consumer of the events table has read (the rules runner; later the
-- webhook dispatcher), committed in the same transaction as what it did with them,
-- so that a crash neither loses nor repeats a rule.
--
-- On PostgreSQL ids are handed out before commit, so a reader walking ids could pass
-- an event whose transaction commits later with a smaller id. Each event therefore
-- carries the id of the transaction that wrote it (`tx`), and consumers read in
-- (tx, id) order only transactions older than every one still running (the
-- snapshot's xmin): those are all committed or rolled back, and nothing can appear
-- behind the cursor. (Transaction ids are the server's: a long transaction in any
-- database of the server delays the consumers until it ends; it never loses an event.)
CREATE TABLE cursors (
    name       TEXT PRIMARY KEY,
    tx         BIGINT NOT NULL,
    position   BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
ALTER TABLE events ADD COLUMN tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint);
CREATE INDEX events_cursor ON events (tx, id);

-- Events recorded before the runner existed had their rules applied as they happened;
-- they were all written by this transaction's ALTER, so the cursor starts after them.
INSERT INTO cursors (name, tx, position, updated_at)
SELECT 'rules', pg_current_xact_id()::text::bigint, COALESCE(max(id), 0), 0 FROM events;
