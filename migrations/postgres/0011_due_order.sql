-- The claim walks the due index in the order it asks for (priority, next_run_at, id).
-- Without `id` in the index, PostgreSQL sorts every due row of the mailbox whenever
-- many share one next_run_at (a bulk import enrolls them all at the same instant):
-- 57 ms a claim with 10,000 due, against 1.4 ms walking this index, which stops after
-- LIMIT rows. (SQLite needs no change: its indexes end with the rowid, which is `id`.)
DROP INDEX enrollments_due;
CREATE INDEX enrollments_due ON enrollments (mailbox, priority, next_run_at, id) WHERE state = 'active';
