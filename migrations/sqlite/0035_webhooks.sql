-- The webhook queue. The dispatcher reads the events table through its cursor
-- ('webhooks' in `cursors`) and, in the transaction that moves the cursor, adds one row
-- here per event and webhook that wants it: nothing is lost or queued twice by a crash.
-- Rows are delivered in id order per (webhook, contact): a row waits while an earlier
-- one of the same contact is still pending. A delivered row keeps its time; one that
-- failed `attempts` times in a row is given up (state 'failed') and shown by `status`.
CREATE TABLE webhook_deliveries (
    id           INTEGER PRIMARY KEY,
    webhook      TEXT NOT NULL,
    event_id     INTEGER NOT NULL,
    contact_id   INTEGER,
    kind         TEXT NOT NULL,
    payload      TEXT NOT NULL,
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    delivered_at INTEGER
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at, id) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_order ON webhook_deliveries (webhook, contact_id, id) WHERE state = 'pending';

-- A dispatcher configured later starts at the events recorded from then on
-- (`followup webhooks replay --since` sends older ones).
INSERT OR IGNORE INTO cursors (name, tx, position, updated_at)
SELECT 'webhooks', COALESCE(max(tx), 0), COALESCE(max(id), 0), 0 FROM events;
