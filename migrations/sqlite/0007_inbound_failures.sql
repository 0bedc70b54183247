-- Messages the reply watcher failed to process. Each failure is counted here in a
-- transaction of its own; after a bounded number the message is set aside (set_aside_at)
-- in the same transaction that moves the folder's checkpoint past it, so that one
-- poisoned message can never stop the messages after it from being read. `status`
-- lists what was set aside, with the UID and the last error.
CREATE TABLE inbound_failures (
    mailbox      TEXT NOT NULL,
    folder       TEXT NOT NULL,
    uidvalidity  INTEGER NOT NULL,
    uid          INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    error        TEXT NOT NULL,
    first_at     INTEGER NOT NULL,
    last_at      INTEGER NOT NULL,
    set_aside_at INTEGER,
    PRIMARY KEY (mailbox, folder, uidvalidity, uid)
);
