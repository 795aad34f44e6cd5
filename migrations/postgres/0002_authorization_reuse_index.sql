-- Reuse lookups ask for the newest proof of an identifier by an account:
-- with validated_at last in the index, MAX(validated_at) is one index probe
-- instead of a scan of every earlier authorization for the name.
DROP INDEX authorizations_reuse;
CREATE INDEX authorizations_reuse ON authorizations (account_id, identifier_type, identifier_value, status, validated_at);
