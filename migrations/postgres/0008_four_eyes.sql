-- Four-eyes: a dashboard user may belong to a requester account, so the
-- workflow knows whose orders that user must never approve; and a
-- reviewer's note on an approval is kept on the order.
ALTER TABLE users ADD COLUMN account_id TEXT REFERENCES accounts(id);
ALTER TABLE orders ADD COLUMN approval_reason TEXT;
