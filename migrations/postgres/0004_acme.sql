-- ACME: which ACME account opened an order (its key signs the key
-- authorizations; other ACME accounts of the same hallmark account do not
-- see it), and the external account binding keys' use.
ALTER TABLE orders ADD COLUMN acme_account_id TEXT;
CREATE INDEX acme_accounts_owner ON acme_accounts (account_id);
CREATE INDEX eab_keys_account ON eab_keys (account_id, created_at);
ALTER TABLE eab_keys ADD COLUMN acme_account_id TEXT;
-- Nonces are made without a write (an HMAC over their expiry under this
-- key, shared by every instance); acme_nonces now holds the used ones.
CREATE TABLE acme_nonce_key (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    hmac_key  BYTEA NOT NULL
);
