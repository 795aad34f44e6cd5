-- CRL publication: which audit sequence number a CRL's contents were read
-- at (a CRL is only published if none newer was read later; see
-- docs/ARCHITECTURE.md), and how many entries it holds.
ALTER TABLE crls ADD COLUMN snapshot_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE crls ADD COLUMN entries BIGINT NOT NULL DEFAULT 0;
-- Revocation time order for delta CRLs and the dashboard.
CREATE INDEX certificates_revoked_at ON certificates (issuer_id, revoked_at) WHERE revoked_at IS NOT NULL;
