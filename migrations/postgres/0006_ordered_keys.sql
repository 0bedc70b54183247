-- Claims are looked up by enrollment (their primary key) on every path that matters; by
-- owner only when a daemon releases its own at shutdown, over a table that holds just
-- the leases in flight. The owner index cost two index writes per message sent.
DROP INDEX claims_owner;

-- One row per scheduler start: its id (modulo 1024) is the node part of the tracking
-- keys that scheduler makes, so that keys ordered by time (cheap to index, unlike random
-- ones) stay unique across daemons that send at the same millisecond.
CREATE TABLE nodes (
    id         BIGSERIAL PRIMARY KEY,
    owner      TEXT NOT NULL,
    started_at BIGINT NOT NULL
);
