-- Keys revoked for keyCompromise, by the SHA-256 of their
-- SubjectPublicKeyInfo: no later CSR with one of them is accepted.
CREATE TABLE blocked_keys (
    spki_sha256 BLOB PRIMARY KEY,
    serial      TEXT NOT NULL,
    blocked_at  INTEGER NOT NULL
);
