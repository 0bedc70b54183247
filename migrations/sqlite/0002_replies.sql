-- Reply detection: IMAP checkpoints and what arrived.

-- Per mailbox and IMAP folder: where the watcher is. UIDVALIDITY and the last UID
-- processed make a restart catch up exactly; `state` is shown by `followup status`.
CREATE TABLE mailbox_state (
    mailbox     TEXT NOT NULL,
    folder      TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL DEFAULT 0,
    last_uid    INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL DEFAULT 'starting',
    detail      TEXT,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (mailbox, folder)
);

-- Every message the watcher looked at, once per Message-ID and folder: a UIDVALIDITY
-- change (the folder renumbered) must not make old replies count again.
CREATE TABLE inbound (
    id            INTEGER PRIMARY KEY,
    mailbox       TEXT NOT NULL,
    folder        TEXT NOT NULL,
    uid           INTEGER NOT NULL,
    message_id    TEXT NOT NULL,
    kind          TEXT NOT NULL,
    from_addr     TEXT,
    contact_id    INTEGER,
    enrollment_id INTEGER,
    decision      TEXT NOT NULL,
    at            INTEGER NOT NULL,
    UNIQUE (mailbox, folder, message_id)
);

-- Soft bounces counted per contact; suppressed after a configurable number.
ALTER TABLE contacts ADD COLUMN soft_bounces INTEGER NOT NULL DEFAULT 0;

-- Mailboxes paused because too many of their recent sends bounced.
CREATE TABLE mailbox_pauses (
    mailbox TEXT PRIMARY KEY,
    reason  TEXT NOT NULL,
    at      INTEGER NOT NULL
);

-- Out-of-office pauses that end by themselves.
CREATE INDEX enrollments_paused ON enrollments (paused_until) WHERE state = 'paused';
