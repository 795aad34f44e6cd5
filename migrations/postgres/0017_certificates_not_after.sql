-- One index on the certificates' expiry instead of two: the queries that
-- range over `not_after` (expiring counts, expiry notices) say
-- `issuer_id IN (SELECT id FROM issuers)`, which every certificate
-- matches, and use `certificates_issuer_not_after` (0013) an issuer at a
-- time, so an issuance writes one B-tree fewer (docs/BENCHMARKS.md).
DROP INDEX certificates_not_after;
