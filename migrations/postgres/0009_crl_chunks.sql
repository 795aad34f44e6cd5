-- A CRL is stored as chunks of at most 1 MiB, in order, instead of one
-- value: writing or reading a 47 MB CRL then never makes the database
-- driver hold whole-CRL copies of it (bound parameter, buffers).
CREATE TABLE crl_chunks (
    issuer_id   TEXT NOT NULL,
    partition   BIGINT NOT NULL,
    delta       BOOLEAN NOT NULL,
    number      BIGINT NOT NULL,
    seq         BIGINT NOT NULL,
    der         BYTEA NOT NULL,
    PRIMARY KEY (issuer_id, partition, delta, number, seq),
    FOREIGN KEY (issuer_id, partition, delta, number)
        REFERENCES crls (issuer_id, partition, delta, number) ON DELETE CASCADE
);

-- Signed DER barely compresses: store it out of line without trying.
ALTER TABLE crl_chunks ALTER COLUMN der SET STORAGE EXTERNAL;

INSERT INTO crl_chunks (issuer_id, partition, delta, number, seq, der)
    SELECT issuer_id, partition, delta, number, 0, der FROM crls;

ALTER TABLE crls DROP COLUMN der;
