-- dns-account-01 (draft-ietf-acme-dns-account-label) and dns-persist-01
-- (draft-ietf-acme-dns-persist) join the challenge types.
ALTER TABLE challenges DROP CONSTRAINT challenges_type_check;
ALTER TABLE challenges ADD CONSTRAINT challenges_type_check
    CHECK (type IN ('http-01', 'dns-01', 'tls-alpn-01', 'dns-account-01', 'dns-persist-01'));
