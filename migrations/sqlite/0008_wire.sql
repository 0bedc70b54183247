-- Where a `sending` message stands on the wire, so that after a crash only what may
-- have reached the server is in doubt: NULL, its end of data has not been written
-- (after a crash it is simply sent again); 'left', its end of data may have reached
-- the server and no answer was recorded (in doubt); 'accepted', the server answered
-- 2xx and the outcome was not committed yet (counted as sent). Each connection marks
-- a message 'left' just before its end of data, in the same statement that tells how
-- the message before it ended: at most one message per connection is ever 'left'.
ALTER TABLE messages ADD COLUMN wire TEXT;

-- The daemon that began the message's current attempt: after it dies, only its own
-- messages that never left are sent again (a message another daemon began, and whose
-- claim it later took over, may have left under that other daemon).
ALTER TABLE messages ADD COLUMN began_by TEXT;
