-- hallmark schema, SQLite. Times are Unix seconds (UTC); serials are
-- lower-case hex; ids are random text ids. Keep in step with ../postgres.

CREATE TABLE issuers (
    id          TEXT PRIMARY KEY,            -- 'root' or 'int-<key id prefix>'
    kind        TEXT NOT NULL CHECK (kind IN ('root', 'intermediate')),
    subject     TEXT NOT NULL,
    cert_der    BLOB NOT NULL,
    key_id      BLOB NOT NULL,
    not_before  INTEGER NOT NULL,
    not_after   INTEGER NOT NULL,
    active      BOOLEAN NOT NULL DEFAULT TRUE,
    created_at  INTEGER NOT NULL
);

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('requester', 'reviewer', 'admin')),
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  INTEGER NOT NULL
);

-- API keys are high-entropy random tokens stored only as their SHA-256.
CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    key_hash    BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER,
    last_used_at INTEGER
);
CREATE INDEX api_keys_account ON api_keys (account_id);

-- Dashboard users; passwords are argon2id PHC strings.
CREATE TABLE users (
    id              TEXT PRIMARY KEY,
    username        TEXT NOT NULL UNIQUE,
    password_hash   TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'reviewer', 'auditor')),
    must_change_password BOOLEAN NOT NULL DEFAULT FALSE,
    disabled        BOOLEAN NOT NULL DEFAULT FALSE,
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

CREATE TABLE sessions (
    id_hash     BLOB PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users(id),
    csrf_token  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE orders (
    id              TEXT PRIMARY KEY,
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    status          TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'processing', 'awaiting_approval', 'valid', 'invalid', 'rejected')),
    validation      TEXT NOT NULL CHECK (validation IN ('dv', 'ov')),
    source          TEXT NOT NULL DEFAULT 'rest' CHECK (source IN ('rest', 'acme')),
    profile         TEXT NOT NULL,
    validity_days   INTEGER,
    csr_der         BLOB,
    organization    TEXT,                    -- JSON {name, locality, state, country}
    not_before      INTEGER,
    not_after       INTEGER,
    error           TEXT,                    -- JSON problem when invalid
    rejection_reason TEXT,
    certificate_serial TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
);
CREATE INDEX orders_account ON orders (account_id, created_at);
CREATE INDEX orders_status ON orders (status, created_at);

CREATE TABLE authorizations (
    id              TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL REFERENCES orders(id),
    account_id      TEXT NOT NULL REFERENCES accounts(id),
    identifier_type TEXT NOT NULL CHECK (identifier_type IN ('dns', 'ip')),
    identifier_value TEXT NOT NULL,
    wildcard        BOOLEAN NOT NULL DEFAULT FALSE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'valid', 'invalid', 'deactivated', 'expired', 'revoked')),
    validated_at    INTEGER,
    expires_at      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL
);
CREATE INDEX authorizations_order ON authorizations (order_id);
CREATE INDEX authorizations_reuse ON authorizations (account_id, identifier_type, identifier_value, status);

CREATE TABLE challenges (
    id              TEXT PRIMARY KEY,
    authorization_id TEXT NOT NULL REFERENCES authorizations(id),
    type            TEXT NOT NULL CHECK (type IN ('http-01', 'dns-01', 'tls-alpn-01')),
    token           TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'processing', 'valid', 'invalid')),
    error           TEXT,
    attempted_at    INTEGER,
    validated_at    INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX challenges_authorization ON challenges (authorization_id);
CREATE INDEX challenges_processing ON challenges (status) WHERE status = 'processing';

CREATE TABLE certificates (
    serial          TEXT PRIMARY KEY,        -- 32 lower-case hex digits
    issuer_id       TEXT NOT NULL REFERENCES issuers(id),
    account_id      TEXT REFERENCES accounts(id),
    order_id        TEXT REFERENCES orders(id),
    subject         TEXT NOT NULL,
    identifiers     TEXT NOT NULL,           -- JSON array of names
    profile         TEXT NOT NULL,
    requested_by    TEXT NOT NULL,           -- audit actor
    not_before      INTEGER NOT NULL,
    not_after       INTEGER NOT NULL,
    der             BLOB NOT NULL,
    crl_partition   INTEGER NOT NULL DEFAULT 0,
    revoked_at      INTEGER,
    revocation_reason INTEGER,
    invalidity_date INTEGER,
    created_at      INTEGER NOT NULL
);
CREATE INDEX certificates_account ON certificates (account_id, created_at);
CREATE INDEX certificates_created ON certificates (created_at);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_revoked ON certificates (issuer_id, crl_partition, revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE crls (
    issuer_id   TEXT NOT NULL REFERENCES issuers(id),
    partition   INTEGER NOT NULL DEFAULT 0,
    delta       BOOLEAN NOT NULL DEFAULT FALSE,
    number      INTEGER NOT NULL,
    this_update INTEGER NOT NULL,
    next_update INTEGER NOT NULL,
    der         BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (issuer_id, partition, delta, number)
);

-- One CRL number sequence per issuer, shared by full and delta CRLs.
CREATE TABLE crl_numbers (
    issuer_id   TEXT PRIMARY KEY REFERENCES issuers(id),
    last_number INTEGER NOT NULL
);

-- Hash-chained audit log: each record carries the hash of the one before.
CREATE TABLE audit_log (
    seq         INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    details     TEXT NOT NULL,               -- JSON
    prev_hash   BLOB NOT NULL,
    hash        BLOB NOT NULL
);
CREATE INDEX audit_log_subject ON audit_log (subject);

-- The head of the audit chain; updating it first serialises writers
-- across processes and instances.
CREATE TABLE audit_head (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    seq     INTEGER NOT NULL,
    hash    BLOB NOT NULL
);
INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, X'0000000000000000000000000000000000000000000000000000000000000000');

CREATE TABLE acme_nonces (
    nonce       TEXT PRIMARY KEY,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE acme_accounts (
    id              TEXT PRIMARY KEY,
    account_id      TEXT REFERENCES accounts(id),
    jwk_thumbprint  TEXT NOT NULL UNIQUE,
    jwk             TEXT NOT NULL,
    contact         TEXT NOT NULL DEFAULT '[]',
    status          TEXT NOT NULL CHECK (status IN ('valid', 'deactivated', 'revoked')),
    created_at      INTEGER NOT NULL
);

CREATE TABLE eab_keys (
    kid         TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts(id),
    hmac_key    BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    used_at     INTEGER
);
