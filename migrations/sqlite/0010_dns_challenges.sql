-- dns-account-01 (draft-ietf-acme-dns-account-label) and dns-persist-01
-- (draft-ietf-acme-dns-persist) join the challenge
-- types. SQLite cannot change a CHECK constraint in place, so the table is
-- rebuilt (nothing references it) with its rows and indexes.
CREATE TABLE challenges_new (
    id              TEXT PRIMARY KEY,
    authorization_id TEXT NOT NULL REFERENCES authorizations(id),
    type            TEXT NOT NULL CHECK (type IN ('http-01', 'dns-01', 'tls-alpn-01', 'dns-account-01', 'dns-persist-01')),
    token           TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    error           TEXT,
    attempted_at    INTEGER,
    validated_at    INTEGER,
    created_at      INTEGER NOT NULL
);
INSERT INTO challenges_new (id, authorization_id, type, token, status, error,
                            attempted_at, validated_at, created_at)
    SELECT id, authorization_id, type, token, status, error,
           attempted_at, validated_at, created_at
    FROM challenges;
DROP TABLE challenges;
ALTER TABLE challenges_new RENAME TO challenges;
CREATE INDEX challenges_authorization ON challenges (authorization_id);
CREATE INDEX challenges_processing ON challenges (status) WHERE status = 'processing';
