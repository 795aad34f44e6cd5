-- Where an account's expiry notices go ([smtp]); ACME accounts have
-- their contacts already.
ALTER TABLE accounts ADD COLUMN email TEXT;
