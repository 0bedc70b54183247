-- Claim leases in a table of their own. A lease written into each claimed enrollment's
-- row touched 1,000 pages spread over a large file per claim of 1,000, and a claim had
-- to read every row that earlier batches still held to skip it. Here a claim adds 1,000
-- short rows side by side, and skips held enrollments by primary-key look-ups.
CREATE TABLE claims (
    enrollment_id BIGINT PRIMARY KEY,
    owner         TEXT NOT NULL,
    until         BIGINT NOT NULL
);
CREATE INDEX claims_owner ON claims (owner);
ALTER TABLE enrollments DROP COLUMN locked_until;
ALTER TABLE enrollments DROP COLUMN locked_by;
