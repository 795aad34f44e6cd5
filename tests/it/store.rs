//! The store contract: the same test bodies on SQLite and PostgreSQL.

use hallmark::pki::Serial;
use hallmark::store::{
    self, AccountRecord, AuditEvent, Conflict, IssuerKind, IssuerRecord, NewApiKey, NewCertificate,
    NewUser, StoreError,
};
use hallmark::workflow::audit::{self, AuditError};
use time::OffsetDateTime;

use crate::support::*;

fn event(action: &str, subject: &str) -> AuditEvent {
    AuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: "test".into(),
        action: action.into(),
        subject: subject.into(),
        details: serde_json::json!({"k": "v"}),
    }
}

fn issuer(id: &str) -> IssuerRecord {
    IssuerRecord {
        active: true,
        id: id.into(),
        kind: IssuerKind::Intermediate,
        subject: "CN=x".into(),
        cert_der: vec![1, 2, 3],
        key_id: vec![4, 5],
        not_before: 1,
        not_after: 2,
    }
}

fn certificate(serial: Serial, issuer_id: &str) -> NewCertificate {
    let now = OffsetDateTime::now_utc();
    NewCertificate {
        serial,
        issuer_id: issuer_id.into(),
        account_id: None,
        order_id: None,
        subject: "CN=a.internal".into(),
        identifiers: vec!["a.internal".into()],
        profile: "server".into(),
        requested_by: "test".into(),
        not_before: now,
        not_after: now + time::Duration::days(1),
        der: vec![0x30, 0x00],
        crl_partition: 0,
    }
}

/// Requester account `acct_1` ("team") with API key `key_1` (hash 7…7).
fn team_account() -> (AccountRecord, NewApiKey) {
    let account = AccountRecord {
        id: "acct_1".into(),
        name: "team".into(),
        role: hallmark::store::Role::Requester,
        disabled: false,
        created_at: 1,
    };
    let key = NewApiKey {
        id: "key_1".into(),
        key_hash: [7u8; 32],
    };
    (account, key)
}

/// Stores a certificate of `int-1` with its audit record; its serial.
async fn issue(s: &dyn store::Store) -> Serial {
    let serial = Serial::random(&mut rand::thread_rng());
    s.insert_certificate(
        certificate(serial, "int-1"),
        event("certificate.issue", &serial.to_hex()),
    )
    .await
    .unwrap();
    serial
}

#[tokio::test]
async fn store_contract_holds_on_every_backend() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let s = store::connect(&db.url).await.expect("connect and migrate");
        // Migrating twice is harmless (a restart).
        store::connect(&db.url).await.expect("second start");
        s.ping().await.unwrap();

        // Issuers upsert and list root first.
        s.upsert_issuer(&issuer("int-1")).await.unwrap();
        let mut root = issuer("root");
        root.kind = IssuerKind::Root;
        s.upsert_issuer(&root).await.unwrap();
        let mut changed = issuer("int-1");
        changed.subject = "CN=y".into();
        s.upsert_issuer(&changed).await.unwrap();
        let all = s.issuers().await.unwrap();
        assert_eq!(
            all.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            vec!["root", "int-1"]
        );
        assert_eq!(all[1].subject, "CN=y");

        // Certificates: stored, read back, a serial cannot be used twice.
        let serial = issue(s.as_ref()).await;
        let got = s.certificate(&serial).await.unwrap();
        assert_eq!(got.serial, serial);
        assert_eq!(got.identifiers, vec!["a.internal".to_string()]);
        assert_eq!(got.revoked_at, None);
        let dup = s
            .insert_certificate(
                certificate(serial, "int-1"),
                event("certificate.issue", "dup"),
            )
            .await
            .unwrap_err();
        assert!(matches!(dup, StoreError::Conflict(_)), "{dup:?}");
        // A certificate naming an unknown issuer is refused and leaves nothing.
        let orphan = Serial::random(&mut rand::thread_rng());
        assert!(s
            .insert_certificate(certificate(orphan, "nope"), event("x", "y"))
            .await
            .is_err());
        assert!(matches!(
            s.certificate(&orphan).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(s.count_certificates().await.unwrap(), 1);

        // Concurrent inserts share commits and all land; a bad one among
        // them fails alone.
        let mut handles = Vec::new();
        for i in 0..64 {
            let s = s.clone();
            handles.push(tokio::spawn(async move {
                let issuer_id = if i == 17 { "nope" } else { "int-1" };
                let serial = Serial::random(&mut rand::thread_rng());
                s.insert_certificate(
                    certificate(serial, issuer_id),
                    event("certificate.issue", &serial.to_hex()),
                )
                .await
            }));
        }
        let mut failures = 0;
        for h in handles {
            if h.await.unwrap().is_err() {
                failures += 1;
            }
        }
        assert_eq!(failures, 1);
        assert_eq!(s.count_certificates().await.unwrap(), 64);

        // Users: names are unique.
        let user = NewUser {
            id: "u1".into(),
            username: "alice".into(),
            password_hash: "$argon2id$x".into(),
            role: hallmark::store::UserRole::Admin,
            must_change_password: true,
        };
        s.create_user(user.clone(), event("user.create", "alice"))
            .await
            .unwrap();
        let again = s
            .create_user(
                NewUser {
                    id: "u2".into(),
                    ..user
                },
                event("user.create", "alice"),
            )
            .await
            .unwrap_err();
        assert!(matches!(again, StoreError::Conflict(_)));
        assert_eq!(s.count_users().await.unwrap(), 1);

        // Accounts are found by the hash of an unrevoked key, and only then.
        let (account, key) = team_account();
        s.create_account(account.clone(), key, event("account.create", "acct_1"))
            .await
            .unwrap();
        let (found, hash) = s
            .account_by_api_key(&[7u8; 32])
            .await
            .unwrap()
            .expect("found by key hash");
        assert_eq!(found, account);
        assert_eq!(hash, vec![7u8; 32]);
        assert!(s.account_by_api_key(&[8u8; 32]).await.unwrap().is_none());
        // Revoked through this store, the key finds nothing at once (the
        // store keeps found keys in memory only until its next such write).
        s.revoke_api_key("key_1", 2, event("api_key.revoke", "key_1"))
            .await
            .unwrap();
        assert!(
            s.account_by_api_key(&[7u8; 32]).await.unwrap().is_none(),
            "a revoked key finds nothing"
        );

        // The audit chain: one record per successful write, nothing for the
        // failed ones, and it verifies.
        s.append_audit(event("crl.generate", "int-1"))
            .await
            .unwrap();
        let summary = audit::verify(s.as_ref()).await.unwrap();
        assert_eq!(summary.records, 1 + 63 + 1 + 1 + 1 + 1);
        let page = s.audit_page(0, 2).await.unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[1].prev_hash, page[0].hash);

        // Editing a record is detected, and so is removing the last one.
        db.execute("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3")
            .await;
        assert!(matches!(
            audit::verify(s.as_ref()).await,
            Err(AuditError::Altered(3))
        ));
        db.execute("UPDATE audit_log SET actor = 'test' WHERE seq = 3")
            .await;
        audit::verify(s.as_ref()).await.unwrap();
        db.execute("DELETE FROM audit_log WHERE seq = (SELECT MAX(seq) FROM audit_log)")
            .await;
        assert!(matches!(
            audit::verify(s.as_ref()).await,
            Err(AuditError::Truncated { .. })
        ));
        db.execute("DELETE FROM audit_log WHERE seq = 5").await;
        assert!(matches!(
            audit::verify(s.as_ref()).await,
            Err(AuditError::Gap { expected: 5, .. })
        ));

        drop(s);
        db.cleanup().await;
    }
}

/// Two instances on one database write the audit chain in turn (on
/// SQLite, as `serve` and a CLI command on one file do). Each writer
/// commits a batch that only adds rows as one statement after the head it
/// last wrote (on SQLite a text that is its own transaction); a write
/// through the other instance moves that head, and the statement must
/// then fail whole — on SQLite rolled back — and the batch be committed
/// the ordinary way: every issuance lands once, the chain stays one
/// chain.
#[tokio::test]
async fn issuances_through_two_instances_in_turn_keep_one_audit_chain() {
    let metrics = &hallmark::metrics::METRICS.store_one_statement_commits;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let a = store::connect(&db.url).await.unwrap();
        let b = store::connect(&db.url).await.unwrap();
        a.upsert_issuer(&issuer("int-1")).await.unwrap();
        let (committed, retried) = (metrics.get(&["committed"]), metrics.get(&["retried"]));
        // Alone, a writer's second batch follows the head its first left
        // (the first takes the head the ordinary way).
        let mut serials = vec![issue(a.as_ref()).await, issue(a.as_ref()).await];
        assert!(
            metrics.get(&["committed"]) > committed,
            "no batch was one statement on {backend:?}"
        );
        for round in 0..4 {
            // One at a time in turn (a's first batch here finds the head
            // moved by b), then both at once.
            for s in [&a, &b, &a, &b] {
                serials.push(issue(s.as_ref()).await);
            }
            let mut handles = Vec::new();
            for i in 0..32 {
                let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                let serial = Serial::random(&mut rand::thread_rng());
                serials.push(serial);
                handles.push(tokio::spawn(async move {
                    s.insert_certificate(
                        certificate(serial, "int-1"),
                        event("certificate.issue", &format!("{round}:{i}")),
                    )
                    .await
                }));
            }
            for h in handles {
                h.await.unwrap().unwrap();
            }
        }
        for serial in &serials {
            assert_eq!(a.certificate(serial).await.unwrap().serial, *serial);
        }
        assert_eq!(a.count_certificates().await.unwrap(), serials.len() as i64);
        let summary = audit::verify(b.as_ref()).await.unwrap();
        // The issuer's upsert writes no record; every issuance one.
        assert_eq!(summary.records, serials.len() as i64, "{backend:?}");
        assert!(
            metrics.get(&["retried"]) > retried,
            "no stale head was noticed on {backend:?}"
        );
        drop((a, b));
        db.cleanup().await;
    }
}

/// A batch the writer cannot commit (one issuance in it names an unknown
/// issuer) is retried a write at a time: the others are stored with their
/// audit records, the bad one is refused and leaves nothing, and the write
/// connection is left outside any transaction for what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_issuance_in_a_batch_is_refused_alone_and_leaves_no_trace() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let s = store::connect(&db.url).await.unwrap();
        s.upsert_issuer(&issuer("int-1")).await.unwrap();
        let mut good = vec![issue(s.as_ref()).await];
        for round in 0..3 {
            let bad = Serial::random(&mut rand::thread_rng());
            let mut handles = Vec::new();
            for i in 0..24 {
                let s = s.clone();
                let serial = if i == 12 {
                    bad
                } else {
                    Serial::random(&mut rand::thread_rng())
                };
                let issuer = if i == 12 { "nope" } else { "int-1" };
                handles.push(tokio::spawn(async move {
                    let stored = s
                        .insert_certificate(
                            certificate(serial, issuer),
                            event("certificate.issue", &serial.to_hex()),
                        )
                        .await;
                    (serial, stored)
                }));
            }
            for h in handles {
                let (serial, stored) = h.await.unwrap();
                if serial == bad {
                    assert!(stored.is_err(), "{backend:?}: an unknown issuer was stored");
                } else {
                    stored.unwrap_or_else(|e| panic!("{backend:?} round {round}: {e}"));
                    good.push(serial);
                }
            }
            assert!(
                matches!(s.certificate(&bad).await, Err(StoreError::NotFound)),
                "{backend:?}: the refused certificate is there"
            );
        }
        // Nothing was left open: a write after them commits, and so does
        // one of a second instance (SQLite's write lock was released).
        good.push(issue(s.as_ref()).await);
        let other = store::connect(&db.url).await.unwrap();
        good.push(issue(other.as_ref()).await);
        for serial in &good {
            assert_eq!(s.certificate(serial).await.unwrap().serial, *serial);
        }
        assert_eq!(s.count_certificates().await.unwrap(), good.len() as i64);
        let summary = audit::verify(s.as_ref()).await.unwrap();
        assert_eq!(summary.records, good.len() as i64, "{backend:?}");
        let log = s.audit_page(0, 1_000).await.unwrap();
        assert!(
            log.iter()
                .all(|r| r.action == "certificate.issue"
                    && good.iter().any(|g| g.to_hex() == r.subject)),
            "{backend:?}: a record of a refused write"
        );
        // On PostgreSQL the group commit writes through connections of
        // its own (its statements prepared once and planned once), which
        // carried every write above; on SQLite the workflow's is the one
        // write connection (used nonces are in `serve`'s memory). `/readyz`'s
        // durability check covers them too.
        let pools = s.pools();
        let own = |name: &str| pools.iter().find(|p| p.name == name);
        match backend {
            Backend::Postgres => {
                let writer = own("writer").expect("PostgreSQL: no writer pool");
                assert_eq!(
                    writer.max, 2,
                    "the writer's pool: two connections, used in turn"
                );
                assert!(
                    (1..=2).contains(&writer.size),
                    "the writer's pool carried the writes: {} connections",
                    writer.size
                );
                // Used nonces: a connection of their own (the only one
                // whose session does not wait for the WAL flush, so the
                // durability check below leaves it out).
                let nonces = own("nonces").expect("PostgreSQL: no nonce pool");
                assert_eq!(nonces.max, 1, "used nonces: one connection");
            }
            Backend::Sqlite => {
                assert!(own("writer").is_none(), "SQLite: a second writer pool");
                assert!(
                    own("nonces").is_none(),
                    "SQLite: used nonces are kept in memory, not in a pool of their own"
                );
            }
        }
        s.check_durable().await.unwrap();
    }
}

#[tokio::test]
async fn a_crl_larger_than_a_chunk_reads_back_whole_and_pruned_ones_are_gone() {
    use hallmark::store::NewCrl;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let s = store::connect(&db.url).await.unwrap();
        s.upsert_issuer(&issuer("int-1")).await.unwrap();
        // Stored as 1 MiB chunks: 2 full ones and a partial third.
        let content = |n: i64| -> Vec<u8> {
            (0..(2 << 20) + 4097)
                .map(|i: i64| (i.wrapping_mul(31) ^ n) as u8)
                .collect()
        };
        let mut heads = Vec::new();
        for snapshot in 1..=3 {
            let crl = NewCrl {
                issuer_id: "int-1".into(),
                partition: 0,
                delta: false,
                this_update: 10 * snapshot,
                next_update: 10 * snapshot + 5,
                snapshot_seq: snapshot,
                entries: 7,
                number: None,
            };
            let record = s
                .publish_crl(
                    &crl,
                    &mut |number| Ok(content(number)),
                    event("crl.publish", "int-1"),
                )
                .await
                .unwrap()
                .expect("published");
            assert_eq!(record.der, content(record.number), "{backend:?}");
            let head = s.crl_heads().await.unwrap().pop().unwrap();
            assert_eq!(head.number, record.number, "{backend:?}");
            assert_eq!(
                s.crl_der(&head).await.unwrap(),
                content(head.number),
                "{backend:?}: the chunks join in order"
            );
            heads.push(head);
        }
        // Two are kept; the first one's chunks went with it.
        let err = s.crl_der(&heads[0]).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{backend:?}: {err}");
        assert_eq!(
            s.crl_der(&heads[1]).await.unwrap(),
            content(heads[1].number)
        );

        // A CRL signed elsewhere keeps its own number, which must be above
        // the last; the store's own numbering then goes on above it.
        let last = heads[2].number;
        let signed_elsewhere = |number: i64, snapshot: i64| NewCrl {
            issuer_id: "int-1".into(),
            partition: 0,
            delta: false,
            this_update: 100,
            next_update: 200,
            snapshot_seq: snapshot,
            entries: 0,
            number: Some(number),
        };
        let err = s
            .publish_crl(
                &signed_elsewhere(last, 4),
                &mut |n| Ok(content(n)),
                event("crl.import", "int-1"),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "is not above the last one published for this issuer ({last})"
            )),
            "{backend:?}: {err}"
        );
        let imported = s
            .publish_crl(
                &signed_elsewhere(1_700_000_000, 4),
                &mut |n| Ok(content(n)),
                event("crl.import", "int-1"),
            )
            .await
            .unwrap()
            .expect("published");
        assert_eq!(imported.number, 1_700_000_000);
        let next = s
            .publish_crl(
                &NewCrl {
                    number: None,
                    ..signed_elsewhere(0, 5)
                },
                &mut |n| Ok(content(n)),
                event("crl.publish", "int-1"),
            )
            .await
            .unwrap()
            .expect("published");
        assert_eq!(next.number, 1_700_000_001, "{backend:?}");
        drop(s);
        db.cleanup().await;
    }
}

#[tokio::test]
async fn an_illegal_order_transition_is_refused_and_a_stale_one_writes_nothing() {
    use hallmark::store::{OrderStatus, OrderUpdate, StoreError, Transition};
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let store = hallmark::store::connect(&db.url).await.unwrap();
        let head = store.audit_head().await.unwrap();
        // Out of a final status: refused before the database is asked.
        let err = store
            .transition_order(
                "ord_x",
                Transition::Fail(OrderStatus::Valid),
                &OrderUpdate::default(),
                0,
                vec![event("order.invalid", "ord_x")],
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Conflict(Conflict::IllegalTransition {
                    transition: Transition::Fail(OrderStatus::Valid),
                    ..
                })
            ) && err.to_string().contains("valid → invalid"),
            "{backend:?}: {err}"
        );
        // A legal transition for an order not in its starting status: false,
        // and no audit record.
        let moved = store
            .transition_order(
                "ord_missing",
                Transition::Approve,
                &OrderUpdate::default(),
                0,
                vec![event("order.approve", "ord_missing")],
            )
            .await
            .unwrap();
        assert!(!moved, "{backend:?}");
        assert_eq!(store.audit_head().await.unwrap(), head, "{backend:?}");
        // An issuance completing an order that is not where its transition
        // starts stores nothing: no certificate, no audit record.
        store.upsert_issuer(&issuer("int-1")).await.unwrap();
        let serial = Serial::random(&mut rand::thread_rng());
        let err = store
            .insert_issuance(hallmark::store::Issuance {
                certificate: certificate(serial, "int-1"),
                events: vec![event("certificate.issue", &serial.to_hex())],
                order: Some(hallmark::store::IssuanceOrder::Complete {
                    order_id: "ord_missing".into(),
                    transition: Transition::IssueReady,
                    csr_der: Some(vec![0x30, 0x00]),
                    at: 1,
                }),
            })
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StoreError::Conflict(Conflict::OrderMovedOn(id, OrderStatus::Ready)) if id == "ord_missing")
                && err
                    .to_string()
                    .ends_with("order ord_missing is no longer ready"),
            "{backend:?}: {err}"
        );
        assert!(
            matches!(store.certificate(&serial).await, Err(StoreError::NotFound)),
            "{backend:?}"
        );
        assert!(
            matches!(
                store.certificate_body(&serial).await,
                Err(StoreError::NotFound)
            ),
            "{backend:?}: a refused issuance was kept in memory"
        );
        assert_eq!(store.audit_head().await.unwrap(), head, "{backend:?}");
        drop(store);
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issued_certificate_is_read_back_from_memory_here_and_from_the_database_elsewhere() {
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let here = store::connect(&db.url).await.unwrap();
        let elsewhere = store::connect(&db.url).await.unwrap();
        here.upsert_issuer(&issuer("int-1")).await.unwrap();
        let serial = Serial::random(&mut rand::thread_rng());
        let mut cert = certificate(serial, "int-1");
        cert.der = vec![0x30, 0x03, 0x02, 0x01, 0x07];
        here.insert_issuance(hallmark::store::Issuance {
            certificate: cert.clone(),
            events: vec![event("certificate.issue", &serial.to_hex())],
            order: None,
        })
        .await
        .unwrap();
        let body = hallmark::store::CertificateBody {
            account_id: None,
            issuer_id: "int-1".into(),
            der: cert.der.clone(),
        };
        assert_eq!(*here.certificate_body(&serial).await.unwrap(), body);
        assert_eq!(*elsewhere.certificate_body(&serial).await.unwrap(), body);
        // The row changed behind both (nothing in hallmark does: a
        // certificate never changes once issued): the instance that
        // issued it answers from memory, the other from the database.
        let tampered = match backend {
            Backend::Sqlite => "X'3000'",
            Backend::Postgres => "'\\x3000'::bytea",
        };
        db.execute(&format!(
            "UPDATE certificates SET der = {tampered} WHERE serial = '{}'",
            serial.to_hex()
        ))
        .await;
        assert_eq!(
            here.certificate_body(&serial).await.unwrap().der,
            cert.der,
            "{backend:?}: not answered from memory"
        );
        assert_eq!(
            elsewhere.certificate_body(&serial).await.unwrap().der,
            vec![0x30, 0x00],
            "{backend:?}"
        );
        let unknown = Serial::random(&mut rand::thread_rng());
        assert!(
            matches!(
                here.certificate_body(&unknown).await,
                Err(StoreError::NotFound)
            ),
            "{backend:?}"
        );
        drop((here, elsewhere));
        db.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_database_is_dropped_even_without_cleanup() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    drop(db); // as a panicking test would
    let admin = TestDb::new(Backend::Postgres, dir.path()).await;
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin.url).await.unwrap();
    let (left,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, 0, "{name} was left behind");
    drop(conn);
    admin.cleanup().await;
}

#[tokio::test]
async fn unsupported_database_urls_are_refused_clearly() {
    let err = match store::connect("mysql://localhost/x").await {
        Err(e) => e,
        Ok(_) => panic!("mysql is not supported"),
    };
    assert!(err.to_string().contains("sqlite://"), "{err}");
}

/// A new order of account `acct_1`: one IP authorization whose two
/// challenges are given out of the order of their ids.
/// Moves `order_id` from pending to ready at `at` through `s` (its
/// authorizations all validated); whether it moved.
async fn made_ready(s: &dyn store::Store, order_id: &str, at: i64) -> bool {
    s.transition_order(
        order_id,
        hallmark::store::Transition::Validated,
        &hallmark::store::OrderUpdate::default(),
        at,
        vec![event("order.ready", order_id)],
    )
    .await
    .unwrap()
}

fn new_order(id: &str) -> hallmark::store::OrderBundle {
    use hallmark::store::*;
    let authz = format!("authz_{id}_000");
    let challenge = |letter: &str, kind: ChallengeKind| ChallengeRecord {
        id: format!("chall_{id}_000_{letter}"),
        authorization_id: authz.clone(),
        kind,
        token: format!("token-{letter}"),
        status: ChallengeStatus::Pending,
        error: None,
        attempted_at: None,
        validated_at: None,
        created_at: 1,
    };
    OrderBundle {
        order: OrderRecord {
            id: format!("ord_{id}"),
            account_id: "acct_1".into(),
            status: OrderStatus::Pending,
            validation: Validation::Dv,
            source: OrderSource::Acme,
            profile: "server".into(),
            validity_days: Some(30),
            csr_der: None,
            organization: None,
            error: None,
            rejection_reason: None,
            approval_reason: None,
            certificate_serial: None,
            created_at: 1,
            updated_at: 1,
            expires_at: 4_000_000_000,
            not_after: None,
            acme_account_id: None,
            issue_attempts: 0,
        },
        authorizations: vec![AuthorizationBundle {
            authorization: AuthorizationRecord {
                id: authz.clone(),
                order_id: format!("ord_{id}"),
                account_id: "acct_1".into(),
                identifier_type: IdentifierKind::Ip,
                identifier_value: "10.0.0.1".into(),
                wildcard: false,
                status: AuthorizationStatus::Pending,
                validated_at: None,
                expires_at: 4_000_000_000,
                created_at: 1,
            },
            challenges: vec![
                challenge("t", ChallengeKind::TlsAlpn01),
                challenge("h", ChallengeKind::Http01),
            ],
        }],
    }
}

/// On SQLite (one server per database) orders are kept in memory by the
/// instance that reads or writes them (ACME clients poll them): a change
/// through this instance is seen at once, one through another process
/// within `store::recent::FRESH_FOR`, and the view kept of an order it
/// created or moved is the one the database gives back. On PostgreSQL,
/// where instances share a database behind a load balancer, every read
/// asks the database: a change anywhere is seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_changed_here_is_seen_at_once_and_one_changed_elsewhere_within_the_bound() {
    use hallmark::store::recent::FRESH_FOR;
    use hallmark::store::{ChallengeStatus, OrderStatus, OrderUpdate, Transition};
    use std::time::{Duration, Instant};
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let here = store::connect(&db.url).await.unwrap();
        let elsewhere = store::connect(&db.url).await.unwrap();
        let (account, key) = team_account();
        here.create_account(account, key, event("account.create", "acct_1"))
            .await
            .unwrap();
        let written = new_order("a");
        here.create_order(&written, vec![event("order.create", "ord_a")])
            .await
            .unwrap();
        let kept = here.order("ord_a").await.unwrap();
        let stored = elsewhere.order("ord_a").await.unwrap();
        assert_eq!(kept, stored, "{backend:?}: the view kept at the write");
        assert_eq!(
            stored.authorizations[0]
                .challenges
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            vec!["chall_a_000_h", "chall_a_000_t"],
            "{backend:?}"
        );

        // Through this instance: at once, read or not.
        assert!(here
            .claim_challenge("chall_a_000_h", "ord_a", 5, event("challenge.claim", "x"))
            .await
            .unwrap());
        let now = here.order("ord_a").await.unwrap();
        assert_eq!(
            now.authorizations[0].challenges[0].status,
            ChallengeStatus::Processing,
            "{backend:?}"
        );
        assert_eq!(now.authorizations[0].challenges[0].attempted_at, Some(5));
        let reader = store::connect(&db.url).await.unwrap();
        assert_eq!(now, reader.order("ord_a").await.unwrap(), "{backend:?}");
        assert!(made_ready(here.as_ref(), "ord_a", 6).await);
        let now = here.order("ord_a").await.unwrap();
        assert_eq!(now.order.status, OrderStatus::Ready, "{backend:?}");
        let reader = store::connect(&db.url).await.unwrap();
        assert_eq!(now, reader.order("ord_a").await.unwrap(), "{backend:?}");

        // Through another instance: this one still answers from memory
        // (the cache at work), but only within the bound.
        assert!(elsewhere
            .transition_order(
                "ord_a",
                Transition::Fail(OrderStatus::Ready),
                &OrderUpdate::default(),
                7,
                vec![event("order.invalid", "ord_a")],
            )
            .await
            .unwrap());
        let changed = Instant::now();
        if backend == Backend::Postgres {
            assert_eq!(
                here.order("ord_a").await.unwrap().order.status,
                OrderStatus::Invalid,
                "{backend:?}: another instance's change is seen at once"
            );
            // A finished order (valid or invalid) no write moves again:
            // once read, any instance answers it from memory. (Changed by
            // hand behind it, the view kept is what it answers; another
            // store reads the database.)
            let finished = here.order("ord_a").await.unwrap();
            db.execute(
                "UPDATE orders SET error = '{\"type\": \"urn:ietf:params:acme:error:malformed\", \"detail\": \"by hand\"}' WHERE id = 'ord_a'",
            )
            .await;
            assert_eq!(
                here.order("ord_a").await.unwrap(),
                finished,
                "{backend:?}: a finished order read again from the database"
            );
            let reader = store::connect(&db.url).await.unwrap();
            assert_ne!(reader.order("ord_a").await.unwrap(), finished);
            drop((here, elsewhere, reader));
            db.cleanup().await;
            continue;
        }
        assert_eq!(
            here.order("ord_a").await.unwrap().order.status,
            OrderStatus::Ready,
            "{backend:?}: the instance that read it answers from memory"
        );
        let seen = loop {
            if here.order("ord_a").await.unwrap().order.status == OrderStatus::Invalid {
                break changed.elapsed();
            }
            assert!(
                changed.elapsed() < FRESH_FOR + Duration::from_secs(2),
                "{backend:?}: still ready after {:?}",
                changed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            seen <= FRESH_FOR + Duration::from_millis(250),
            "{backend:?}: seen only after {seen:?}"
        );
        drop((here, elsewhere));
        db.cleanup().await;
    }
}

/// A validation's result on both stores: it claims the challenge itself
/// when asked (`ChallengeOutcome::claim`, an ACME POST that waited for its
/// result), recording the claim's event only if it made the claim; it
/// settles the authorization, and moves the order when it failed or was
/// the last authorization left; a result for a challenge nobody claimed,
/// or whose order moved on, writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_validation_result_claims_settles_and_moves_its_order_the_same_on_both_stores() {
    use hallmark::acme_error::AcmeError;
    use hallmark::store::*;
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let s = store::connect(&db.url).await.unwrap();
        let (account, key) = team_account();
        s.create_account(account, key, event("account.create", "acct_1"))
            .await
            .unwrap();
        // Orders "two" and "pair" have a second authorization, for
        // another address.
        let with_two = |id: &str| {
            let mut bundle = new_order(id);
            let mut second = bundle.authorizations[0].clone();
            second.authorization.id = format!("authz_{id}_001");
            second.authorization.identifier_value = "10.0.0.2".into();
            for c in &mut second.challenges {
                c.id = c.id.replace("_000_", "_001_");
                c.authorization_id = format!("authz_{id}_001");
            }
            bundle.authorizations.push(second);
            bundle
        };
        for bundle in [
            new_order("a"),
            new_order("b"),
            new_order("c"),
            with_two("two"),
            with_two("pair"),
        ] {
            s.create_order(&bundle, vec![event("order.create", &bundle.order.id)])
                .await
                .unwrap();
        }
        let attempt = |challenge: &str, at: i64| AuditEvent {
            at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            ..event("challenge.attempt", challenge)
        };
        let outcome = |order: &str, authz: &str, challenge: &str, claim: Option<AuditEvent>| {
            ChallengeOutcome {
                challenge_id: challenge.into(),
                authorization_id: authz.into(),
                order_id: order.into(),
                at: 1_000,
                error: None,
                when_all_valid: Transition::Validated,
                claim,
            }
        };
        let finish = |o: ChallengeOutcome| {
            let s = &s;
            async move {
                s.finish_challenge(
                    &o,
                    vec![event("challenge.settled", &o.challenge_id)],
                    vec![event("order.moved", &o.order_id)],
                )
                .await
            }
        };
        let not_processing = |r: Result<Option<OrderStatus>, StoreError>| {
            matches!(
                r,
                Err(StoreError::Conflict(Conflict::ChallengeNotProcessing(_)))
            )
        };

        // Unclaimed, with its claim: claimed, valid, the order ready.
        let moved = finish(outcome(
            "ord_a",
            "authz_a_000",
            "chall_a_000_h",
            Some(attempt("chall_a_000_h", 900)),
        ))
        .await
        .unwrap();
        assert_eq!(moved, Some(OrderStatus::Ready), "{backend:?}");
        let a = s.order("ord_a").await.unwrap();
        let (authz, challenge) = (&a.authorizations[0], &a.authorizations[0].challenges[0]);
        assert_eq!(challenge.status, ChallengeStatus::Valid, "{backend:?}");
        assert_eq!(challenge.attempted_at, Some(900), "{backend:?}");
        assert_eq!(challenge.validated_at, Some(1_000), "{backend:?}");
        assert_eq!(authz.authorization.status, AuthorizationStatus::Valid);
        assert_eq!(a.order.status, OrderStatus::Ready, "{backend:?}");
        // Asked again, nothing more is written.
        let again = finish(outcome(
            "ord_a",
            "authz_a_000",
            "chall_a_000_h",
            Some(attempt("chall_a_000_h", 901)),
        ))
        .await;
        assert!(not_processing(again), "{backend:?}");

        // Claimed first: the result's own claim is not made again.
        assert!(s
            .claim_challenge("chall_b_000_h", "ord_b", 800, attempt("chall_b_000_h", 800))
            .await
            .unwrap());
        let mut failed = outcome(
            "ord_b",
            "authz_b_000",
            "chall_b_000_h",
            Some(attempt("chall_b_000_h", 950)),
        );
        failed.error = Some(Failure::new(AcmeError::Connection, "no answer"));
        assert_eq!(
            finish(failed).await.unwrap(),
            Some(OrderStatus::Invalid),
            "{backend:?}"
        );
        let b = s.order("ord_b").await.unwrap();
        let challenge = &b.authorizations[0].challenges[0];
        assert_eq!(challenge.status, ChallengeStatus::Invalid, "{backend:?}");
        assert_eq!(
            challenge.attempted_at,
            Some(800),
            "{backend:?}: the first claim's"
        );
        assert_eq!(challenge.validated_at, None, "{backend:?}");
        assert_eq!(challenge.error.as_ref().unwrap().detail, "no answer");
        assert_eq!(
            b.authorizations[0].authorization.status,
            AuthorizationStatus::Invalid
        );
        assert_eq!(b.order.status, OrderStatus::Invalid, "{backend:?}");
        assert_eq!(b.order.error.as_ref().unwrap().detail, "no answer");

        // Unclaimed and without a claim: nothing written. Its order moved
        // on: its own claim is refused, nothing written.
        let c = || outcome("ord_c", "authz_c_000", "chall_c_000_t", None);
        assert!(not_processing(finish(c()).await), "{backend:?}");
        assert!(s
            .transition_order(
                "ord_c",
                Transition::Fail(OrderStatus::Pending),
                &OrderUpdate::default(),
                5,
                vec![event("order.invalid", "ord_c")],
            )
            .await
            .unwrap());
        let late = ChallengeOutcome {
            claim: Some(attempt("chall_c_000_t", 960)),
            ..c()
        };
        assert!(not_processing(finish(late).await), "{backend:?}");
        let c = s.order("ord_c").await.unwrap();
        assert_eq!(
            c.authorizations[0].challenges[1].status,
            ChallengeStatus::Pending,
            "{backend:?}"
        );
        assert_eq!(c.authorizations[0].challenges[1].attempted_at, None);

        // Two authorizations settled at once (most likely in one batch,
        // one after the other in its transaction): exactly one of them
        // moves the order.
        let (first, last) = tokio::join!(
            finish(outcome(
                "ord_pair",
                "authz_pair_000",
                "chall_pair_000_h",
                Some(attempt("chall_pair_000_h", 990)),
            )),
            finish(outcome(
                "ord_pair",
                "authz_pair_001",
                "chall_pair_001_h",
                Some(attempt("chall_pair_001_h", 990)),
            )),
        );
        let moves = [first.unwrap(), last.unwrap()];
        assert_eq!(
            moves
                .iter()
                .filter(|m| **m == Some(OrderStatus::Ready))
                .count(),
            1,
            "{backend:?}: {moves:?}"
        );
        assert!(moves.contains(&None), "{backend:?}: {moves:?}");
        assert_eq!(
            s.order("ord_pair").await.unwrap().order.status,
            OrderStatus::Ready,
            "{backend:?}"
        );

        // Two authorizations: the first settles alone, the last moves the
        // order.
        let first = outcome(
            "ord_two",
            "authz_two_000",
            "chall_two_000_h",
            Some(attempt("chall_two_000_h", 970)),
        );
        assert_eq!(finish(first).await.unwrap(), None, "{backend:?}");
        assert_eq!(
            s.order("ord_two").await.unwrap().order.status,
            OrderStatus::Pending
        );
        let last = outcome(
            "ord_two",
            "authz_two_001",
            "chall_two_001_h",
            Some(attempt("chall_two_001_h", 980)),
        );
        assert_eq!(
            finish(last).await.unwrap(),
            Some(OrderStatus::Ready),
            "{backend:?}"
        );

        // A successful result leaves the view it wrote, which is the
        // order as the database holds it; so is every view kept here.
        let e = new_order("e");
        s.create_order(&e, vec![event("order.create", "ord_e")])
            .await
            .unwrap();
        let done = finish(outcome(
            "ord_e",
            "authz_e_000",
            "chall_e_000_t",
            Some(attempt("chall_e_000_t", 995)),
        ))
        .await
        .unwrap();
        assert_eq!(done, Some(OrderStatus::Ready), "{backend:?}");
        assert!(s.order_seen("ord_e").is_some(), "{backend:?}: no view left");
        let reader = store::connect(&db.url).await.unwrap();
        for id in ["ord_a", "ord_b", "ord_c", "ord_pair", "ord_two", "ord_e"] {
            if let Some(view) = s.order_seen(id) {
                let stored = reader.order_now(id).await.unwrap();
                assert_eq!(view, stored, "{backend:?}: {id}");
            }
        }

        // One attempt recorded per claim made, each before its result.
        let log = s.audit_page(0, 1000).await.unwrap();
        let actions = |subject: &str| -> Vec<String> {
            log.iter()
                .filter(|r| r.subject == subject)
                .map(|r| r.action.clone())
                .collect()
        };
        for (challenge, expected) in [
            (
                "chall_a_000_h",
                vec!["challenge.attempt", "challenge.settled"],
            ),
            (
                "chall_b_000_h",
                vec!["challenge.attempt", "challenge.settled"],
            ),
            ("chall_c_000_t", vec![]),
            (
                "chall_two_000_h",
                vec!["challenge.attempt", "challenge.settled"],
            ),
            (
                "chall_two_001_h",
                vec!["challenge.attempt", "challenge.settled"],
            ),
        ] {
            assert_eq!(actions(challenge), expected, "{backend:?}: {challenge}");
        }
        for (order, moves) in [("ord_a", 1), ("ord_b", 1), ("ord_c", 0), ("ord_two", 1)] {
            let n = actions(order)
                .iter()
                .filter(|a| *a == "order.moved")
                .count();
            assert_eq!(n, moves, "{backend:?}: {order}");
        }
        audit::verify(s.as_ref()).await.expect("the chain verifies");
        drop(s);
        db.cleanup().await;
    }
}

/// An issuance that completes its order leaves the view it wrote, the
/// same as the database gives back (its time is the caller's), if the
/// view held before was where the completion starts; otherwise none, and
/// the next read asks the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_completed_here_is_kept_as_the_database_gives_it_back() {
    use hallmark::store::{AuthorizationStatus, IssuanceOrder, OrderStatus, Transition};
    for backend in backends() {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new(backend, dir.path()).await;
        let here = store::connect(&db.url).await.unwrap();
        let elsewhere = store::connect(&db.url).await.unwrap();
        let (account, key) = team_account();
        here.create_account(account, key, event("account.create", "acct_1"))
            .await
            .unwrap();
        here.upsert_issuer(&issuer("int-1")).await.unwrap();
        let complete = |id: &str, at: i64| {
            let serial = Serial::random(&mut rand::thread_rng());
            let mut cert = certificate(serial, "int-1");
            cert.order_id = Some(format!("ord_{id}"));
            cert.account_id = Some("acct_1".into());
            hallmark::store::Issuance {
                certificate: cert,
                events: vec![event("certificate.issue", &serial.to_hex())],
                order: Some(IssuanceOrder::Complete {
                    order_id: format!("ord_{id}"),
                    transition: Transition::IssueReady,
                    csr_der: Some(vec![0x30, 0x00]),
                    at,
                }),
            }
        };

        // Held ready here: completed, the view kept is the stored order.
        let mut ready = new_order("c");
        ready.order.status = OrderStatus::Ready;
        ready.authorizations[0].authorization.status = AuthorizationStatus::Valid;
        here.create_order(&ready, vec![event("order.create", "ord_c")])
            .await
            .unwrap();
        here.insert_issuance(complete("c", 1_234_567))
            .await
            .unwrap();
        let stored = elsewhere.order_now("ord_c").await.unwrap();
        assert_eq!(stored.order.status, OrderStatus::Valid, "{backend:?}");
        assert_eq!(stored.order.updated_at, 1_234_567, "{backend:?}");
        assert_eq!(stored.order.csr_der, Some(vec![0x30, 0x00]), "{backend:?}");
        assert_eq!(
            here.order_seen("ord_c"),
            Some(stored.clone()),
            "{backend:?}: the view left by the completion"
        );
        assert_eq!(here.order("ord_c").await.unwrap(), stored, "{backend:?}");

        // Held pending here, made ready elsewhere, completed here: the
        // view held was not where the completion starts, so none is kept.
        let pending = new_order("d");
        here.create_order(&pending, vec![event("order.create", "ord_d")])
            .await
            .unwrap();
        assert!(made_ready(elsewhere.as_ref(), "ord_d", 5).await);
        here.insert_issuance(complete("d", 1_234_568))
            .await
            .unwrap();
        assert_eq!(here.order_seen("ord_d"), None, "{backend:?}");
        let read = here.order("ord_d").await.unwrap();
        assert_eq!(
            read,
            elsewhere.order_now("ord_d").await.unwrap(),
            "{backend:?}"
        );
        assert_eq!(read.order.status, OrderStatus::Valid, "{backend:?}");
        drop((here, elsewhere));
        db.cleanup().await;
    }
}
