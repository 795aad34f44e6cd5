-- CRL publication: which audit sequence number a CRL's contents were read
-- at (a CRL is only published if none newer was read later; see
-- docs/ARCHITECTURE.md), and how many entries it holds.
ALTER TABLE crls ADD COLUMN snapshot_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE crls ADD COLUMN entries BIGINT NOT NULL DEFAULT 0;
-- CRL generation reads only this index (it covers every column a CRL
-- entry needs), in one pass, never the certificate rows themselves.
DROP INDEX certificates_revoked;
CREATE INDEX certificates_revoked ON certificates
    (issuer_id, crl_partition, revoked_at, not_after, serial, revocation_reason, invalidity_date)
    WHERE revoked_at IS NOT NULL;
