-- ACME: which ACME account opened an order (its key signs the key
-- authorizations; other ACME accounts of the same hallmark account do not
-- see it), and the external account binding keys' use.
ALTER TABLE orders ADD COLUMN acme_account_id TEXT;
CREATE INDEX acme_accounts_owner ON acme_accounts (account_id);
CREATE INDEX eab_keys_account ON eab_keys (account_id, created_at);
ALTER TABLE eab_keys ADD COLUMN acme_account_id TEXT;
