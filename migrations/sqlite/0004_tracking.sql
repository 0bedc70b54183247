-- Tracking, unsubscribe, variants and branches.

-- Each message's random tracking key (16 hex digits): tokens name it, never the row id.
-- A retry after a 4xx gets a fresh key: the deferred attempt never reached anyone.
ALTER TABLE messages ADD COLUMN track_key TEXT;
CREATE UNIQUE INDEX messages_track_key ON messages (track_key);

-- The original URL of each tracked link, by its index in the message: the only places a
-- click can lead. Written with the message row, before SMTP.
CREATE TABLE links (
    message_id INTEGER NOT NULL REFERENCES messages (id),
    idx        INTEGER NOT NULL,
    url        TEXT NOT NULL,
    PRIMARY KEY (message_id, idx)
);

-- Opens and clicks: the link clicked, and why a hit is a machine's (image proxy, link
-- scanner); NULL is a person. Statistics show both; only people drive branches and rules.
ALTER TABLE events ADD COLUMN link INTEGER;
ALTER TABLE events ADD COLUMN machine TEXT;
CREATE INDEX events_enrollment ON events (enrollment_id, kind);
