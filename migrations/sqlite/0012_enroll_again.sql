-- A contact may be enrolled in a sequence again on purpose (`enroll --again`) once its
-- earlier enrollment there stopped or finished; the old row stays, with its messages
-- and events, as history. So (contact_id, sequence) is unique only among live
-- enrollments (active, paused, held). SQLite cannot drop the table's own
-- UNIQUE (contact_id, sequence): after the migrations, `Store::migrate` rebuilds the
-- table without it, whatever columns it has by then (see store/schema.rs).
CREATE INDEX enrollments_contact ON enrollments (contact_id, sequence);
CREATE UNIQUE INDEX enrollments_live ON enrollments (contact_id, sequence)
    WHERE state IN ('active', 'paused', 'held');
