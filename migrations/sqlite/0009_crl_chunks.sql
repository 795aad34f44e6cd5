-- A CRL is stored as chunks of at most 1 MiB, in order, instead of one
-- blob: writing or reading a 47 MB CRL then never makes the database
-- driver hold whole-CRL copies of it (bound parameter, record, buffers).
CREATE TABLE crl_chunks (
    issuer_id   TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    delta       BOOLEAN NOT NULL,
    number      INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    der         BLOB NOT NULL,
    PRIMARY KEY (issuer_id, partition, delta, number, seq),
    FOREIGN KEY (issuer_id, partition, delta, number)
        REFERENCES crls (issuer_id, partition, delta, number) ON DELETE CASCADE
);

INSERT INTO crl_chunks (issuer_id, partition, delta, number, seq, der)
    SELECT issuer_id, partition, delta, number, 0, der FROM crls;

ALTER TABLE crls DROP COLUMN der;
