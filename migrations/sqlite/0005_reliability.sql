-- Durable CRL staleness: each revocation records, in its own transaction,
-- the audit sequence number it was written at for its issuer's complete
-- CRL (partition 0) and for its partition. A CRL whose snapshot_seq is
-- below its scope's mark is stale, whichever process or instance made the
-- revocation, and every instance's publisher republishes it.
CREATE TABLE crl_marks (
    issuer_id   TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (issuer_id, partition)
);
-- How often issuance of an order was taken over after its claim went
-- stale; past a bound the order becomes invalid instead of retried.
ALTER TABLE orders ADD COLUMN issue_attempts INTEGER NOT NULL DEFAULT 0;
-- Used ACME nonces now live in the file `<database>-nonces`, attached by
-- every write connection without disk flushes for it alone (see
-- src/store/sqlite.rs); the table here is no longer read.
DROP TABLE acme_nonces;
