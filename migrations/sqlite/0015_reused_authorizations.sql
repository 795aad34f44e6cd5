-- An order's authorizations that reuse an earlier proof of control, as a
-- JSON array of {id, type, value, validated_at, expires_at}: kept in the
-- order's row, not as rows of `authorizations` (those hold the proofs
-- themselves, which are what reuse looks up). A renewal so writes no
-- authorization row, and none of that table's indexes (docs/ARCHITECTURE.md).
ALTER TABLE orders ADD COLUMN reused_authorizations TEXT;
