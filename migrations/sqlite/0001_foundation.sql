-- followup's data model (SQLite). Times are Unix milliseconds (INTEGER) so that the
-- same SQL runs on SQLite and PostgreSQL; JSON is stored as TEXT.

-- A person we write to. `email` is normalised (see contacts::normalise); `domain` is its
-- part after '@', kept for domain suppressions and company-wide reply matching.
CREATE TABLE contacts (
    id                INTEGER PRIMARY KEY,
    email             TEXT NOT NULL UNIQUE,
    domain            TEXT NOT NULL,
    name              TEXT,
    fields            TEXT NOT NULL DEFAULT '{}',
    timezone          TEXT,
    country           TEXT,
    stage             TEXT NOT NULL DEFAULT 'lead',
    tags              TEXT NOT NULL DEFAULT '[]',
    owner_mailbox     TEXT,
    suppressed_reason TEXT,
    suppressed_at     INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE INDEX contacts_domain ON contacts (domain);

-- Addresses ('a@b.com') and whole domains ('@b.com') never to be mailed.
CREATE TABLE suppressions (
    pattern TEXT PRIMARY KEY,
    reason  TEXT NOT NULL,
    at      INTEGER NOT NULL
);

-- A contact in a sequence (at most once). `state`: active, paused, held (waits for a
-- person: missing field, message in doubt), stopped (with reason), finished.
-- `priority` is 0 for follow-ups and 1 for first steps: when a daily limit binds,
-- follow-ups go first. `locked_until`/`locked_by` are the claim lease of one daemon.
CREATE TABLE enrollments (
    id                INTEGER PRIMARY KEY,
    contact_id        INTEGER NOT NULL REFERENCES contacts (id),
    sequence          TEXT NOT NULL,
    mailbox           TEXT NOT NULL,
    state             TEXT NOT NULL,
    reason            TEXT,
    step_index        INTEGER NOT NULL DEFAULT 0,
    step_id           TEXT NOT NULL,
    priority          INTEGER NOT NULL DEFAULT 1,
    next_run_at       INTEGER,
    paused_until      INTEGER,
    attempts          INTEGER NOT NULL DEFAULT 0,
    locked_until      INTEGER,
    locked_by         TEXT,
    thread_message_id TEXT,
    thread_subject    TEXT,
    last_sent_at      INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    UNIQUE (contact_id, sequence)
);
CREATE INDEX enrollments_due ON enrollments (mailbox, priority, next_run_at) WHERE state = 'active';
CREATE INDEX enrollments_sequence ON enrollments (sequence, state);

-- Every outbound mail. One row per enrollment and step: a retry after a 4xx reuses the
-- row and its Message-ID, so a step can never be sent under two identities.
-- `status`: sending (committed before SMTP), deferred (4xx, will retry), sent, failed,
-- in_doubt (was `sending` when its daemon died: SMTP may or may not have accepted it).
CREATE TABLE messages (
    id            INTEGER PRIMARY KEY,
    message_id    TEXT NOT NULL UNIQUE,
    enrollment_id INTEGER NOT NULL REFERENCES enrollments (id),
    contact_id    INTEGER NOT NULL REFERENCES contacts (id),
    sequence      TEXT NOT NULL,
    step_id       TEXT NOT NULL,
    step_index    INTEGER NOT NULL,
    variant       TEXT,
    mailbox       TEXT NOT NULL,
    subject       TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    status        TEXT NOT NULL,
    smtp_reply    TEXT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER,
    created_at    INTEGER NOT NULL,
    sent_at       INTEGER,
    updated_at    INTEGER NOT NULL,
    UNIQUE (enrollment_id, step_id)
);
CREATE INDEX messages_mailbox_sent ON messages (mailbox, sent_at);
CREATE INDEX messages_status ON messages (status, locked_until);
CREATE INDEX messages_sequence ON messages (sequence, step_id, status);

-- The history, append-only. Statistics, timelines, rules and webhooks read it.
CREATE TABLE events (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    contact_id    INTEGER,
    enrollment_id INTEGER,
    message_id    INTEGER,
    kind          TEXT NOT NULL,
    data          TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_contact ON events (contact_id, at);
CREATE INDEX events_message ON events (message_id);
CREATE INDEX events_kind ON events (kind, at);
