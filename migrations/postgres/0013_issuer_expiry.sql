-- A retired intermediate or imported CA answers for its certificates until
-- the last of them expires: one probe of this index finds when.
CREATE INDEX certificates_issuer_not_after ON certificates (issuer_id, not_after);
