-- Webhooks read the audit log, which every change writes in its own
-- transaction: it is their outbox. Each hook keeps how far it has
-- delivered, and which instance holds its lease (one delivers at a time).
CREATE TABLE webhook_cursors (
    url          TEXT PRIMARY KEY,
    last_seq     INTEGER NOT NULL,
    leased_by    TEXT,
    leased_until INTEGER NOT NULL DEFAULT 0
);

-- Every delivery attempt, for the dashboard and the API.
CREATE TABLE webhook_deliveries (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    url         TEXT NOT NULL,
    audit_seq   INTEGER NOT NULL,
    event       TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT,
    delivered   BOOLEAN NOT NULL
);
