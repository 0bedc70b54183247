-- Indexes that the send path no longer rewrites for every message.
--
-- An index over (status, locked_until) of every message took an entry per send and
-- moved it on every change of status, though only two statuses are ever looked up
-- by it: `sending` past its lease (a daemon died; the message becomes in doubt) and
-- `in_doubt` (the operator's list, the Sent-folder check). Partial indexes hold just
-- those rows: a send adds one entry to a small index and its outcome removes it.
-- Counts by status read messages_sequence, which holds the status too.
DROP INDEX messages_status;
CREATE INDEX messages_sending ON messages (locked_until) WHERE status = 'sending';
CREATE INDEX messages_in_doubt ON messages (id) WHERE status = 'in_doubt';

-- Events by kind and time were read only for skips (which carry no message).
DROP INDEX events_kind;
CREATE INDEX events_skipped ON events (id) WHERE kind = 'skipped';
