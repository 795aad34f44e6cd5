-- Four-eyes: a dashboard user may belong to a requester account, so the
-- workflow knows whose orders that user must never approve; and a
-- reviewer's note on an approval is kept on the order.
ALTER TABLE users ADD COLUMN account_id TEXT REFERENCES accounts(id);
ALTER TABLE orders ADD COLUMN approval_reason TEXT;

-- The per-account limit on pending authorizations counts them by account
-- and status without visiting the account's finished ones.
CREATE INDEX authorizations_pending ON authorizations (account_id, status, expires_at);
