-- When the last failed sign-in was: failures further apart than the lock
-- time do not add up, so a rare wrong password never locks a user out.
ALTER TABLE users ADD COLUMN last_failed_at BIGINT;
