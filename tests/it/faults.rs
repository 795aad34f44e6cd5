//! Fault injection with real processes and a real database: `hallmark
//! serve` killed with SIGKILL in the middle of a burst of issuances and
//! revocations; PostgreSQL refusing connections under load; graceful
//! shutdown under load. What a client saw acknowledged must be true
//! afterwards. (The long runs — soak, disk full, many kills — are
//! `scripts/faults.sh`, with figures in docs/RELIABILITY.md.)

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::dns::{self, Entry};
use crate::support::dv::{challenge, csr, DvLab, Http01Server};
use crate::support::node::*;
use crate::support::pki::{api_key, crl_contents};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_killed_mid_burst_loses_no_acknowledged_issuance_or_revocation() {
    for backend in backends() {
        let http01 = Http01Server::start().await;
        let dns = dns::serve(vec![Entry::A("web", "127.0.0.1".parse().unwrap())]).await;
        let (mut node, key, client) =
            Node::serving_with_a_proven_name(backend, &http01, &dns.addr).await;
        let csrs: Arc<Vec<String>> = Arc::new(
            (0..4)
                .map(|i| {
                    csr(
                        node.dir.path(),
                        &format!("b{i}"),
                        "web.internal",
                        "DNS:web.internal",
                    )
                })
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Acknowledged::default()));
        let mut acme =
            crate::support::acme::Client::with(client.clone(), format!("{}/acme", node.https));
        assert_eq!(acme.register().await.status, 201);
        let acme = Arc::new(acme);
        let kills = 3;
        for round in 0..kills {
            let stop = Arc::new(AtomicBool::new(false));
            let load = tokio::spawn(burst(
                client.clone(),
                node.https.clone(),
                key.clone(),
                csrs.clone(),
                6,
                stop.clone(),
                seen.clone(),
            ));
            let acme_load = tokio::spawn(acme_burst(
                acme.clone(),
                http01.clone(),
                stop.clone(),
                seen.clone(),
            ));
            // At a random moment of the burst.
            let at = 400 + rand::random::<u64>() % 1200;
            tokio::time::sleep(Duration::from_millis(at)).await;
            let status = node.signal("-KILL");
            assert!(!status.success(), "round {round}: killed, not exited");
            stop.store(true, Ordering::Relaxed);
            load.await.unwrap();
            acme_load.await.unwrap();
            node.start().await;
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(
            seen.issued.len() >= 10 && !seen.revoked.is_empty() && seen.acme > 0,
            "{backend:?}: the burst did too little: {} issued ({} by ACME), {} revoked",
            seen.issued.len(),
            seen.acme,
            seen.revoked.len()
        );

        // Every certificate a client received is on record, once; every
        // acknowledged revocation is recorded.
        let store = hallmark::store::connect(&node.db.url).await.unwrap();
        for serial in &seen.issued {
            let cert = store
                .certificate(&serial.parse().unwrap())
                .await
                .unwrap_or_else(|e| {
                    panic!("{backend:?}: {serial} was returned but is not stored: {e}")
                });
            if seen.revoked.contains(serial) {
                assert!(
                    cert.revoked_at.is_some(),
                    "{backend:?}: revocation of {serial} lost"
                );
            }
        }
        let log = store.audit_page(0, 1_000_000).await.unwrap();
        let issues: Vec<&str> = log
            .iter()
            .filter(|r| r.action == "certificate.issue")
            .map(|r| r.subject.as_str())
            .collect();
        let unique: BTreeSet<&str> = issues.iter().copied().collect();
        assert_eq!(
            issues.len(),
            unique.len(),
            "{backend:?}: a serial issued twice"
        );

        // The restarted instance publishes every acknowledged revocation
        // (its CRL within debounce + poll + generation).
        let issuer = store
            .issuers()
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.kind == hallmark::store::IssuerKind::Intermediate)
            .unwrap()
            .id;
        let started = Instant::now();
        let plain = reqwest::Client::new();
        loop {
            let der = plain
                .get(format!("{}/crl/{issuer}.crl", node.http))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let (_, listed) = crl_contents(&der);
            if seen.revoked.iter().all(|s| listed.contains(s)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(8),
                "{backend:?}: acknowledged revocations missing from the CRL"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        // No order is stuck: claims the dead processes left behind are
        // resumed by the worker, and ACME orders whose client was cut off
        // expire (both made due here instead of waiting minutes).
        node.db
            .execute("UPDATE orders SET updated_at = 0 WHERE status IN ('ready', 'processing')")
            .await;
        node.db
            .execute(
                "UPDATE orders SET expires_at = 1 WHERE source = 'acme' AND status IN ('pending', 'ready')",
            )
            .await;
        let started = Instant::now();
        loop {
            let open: Vec<_> = store
                .orders(&hallmark::store::OrderQuery {
                    limit: 10_000,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_iter()
                .filter(|o| {
                    matches!(
                        o.status,
                        hallmark::store::OrderStatus::Pending
                            | hallmark::store::OrderStatus::Ready
                            | hallmark::store::OrderStatus::Processing
                    )
                })
                .collect();
            if open.is_empty() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "{backend:?}: orders stuck: {:?}",
                open.iter().map(|o| (&o.id, o.status)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let (ok, out) = node.cli(&["audit", "verify"]);
        assert!(ok, "{backend:?}: audit verify: {out}");
        eprintln!(
            "{backend:?}: {kills} kills, {} requests, {} not completed (cut by the kills), {} issued ({} by ACME), {} revoked, 0 lost",
            seen.requests,
            seen.errors,
            seen.issued.len(),
            seen.acme,
            seen.revoked.len()
        );
        eprintln!("{backend:?}: not completed: {:?}", seen.failures);
        node.signal("-TERM");
        drop(store);
        node.finish().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_connections_gives_503s_and_the_service_recovers_by_itself() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let lab = DvLab::new(Backend::Postgres, &[]).await;
    let (owner, key) = api_key(&lab.running.authority, "team", Role::Requester).await;
    let client = lab.running.client();
    let name = lab.ca.db.url.rsplit('/').next().unwrap().to_owned();
    let admin = "postgres://postgres@127.0.0.1:5432/postgres";
    let admin_sql = |sql: String| async move {
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(admin).await.unwrap();
        sqlx::query(&sql).execute(&mut c).await.unwrap();
    };
    let pem = csr(lab.ca.dir.path(), "x", "web.internal", "DNS:web.internal");
    let order = |client: reqwest::Client, key: String, pem: String, url: String| async move {
        let started = Instant::now();
        let r = client
            .post(url)
            .bearer_auth(key)
            .json(&json!({"csr": pem, "validation": "dv"}))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let ctype = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (status, ctype, body, started.elapsed())
    };
    let (status, _, body, _) =
        order(client.clone(), key.clone(), pem.clone(), lab.url("/orders")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let dir = lab.ca.dir.path();
    let (_, leaf) =
        crate::support::pki::issue(&lab.running.authority, dir, "o", "o.internal", &owner).await;
    let (_, ocsp_url) = crate::support::pki::urls(&leaf);
    std::fs::write(dir.join("root.pem"), &lab.running.root_pem).unwrap();
    std::fs::write(
        dir.join("issuing.pem"),
        lab.running.authority.issuer().certificate().pem(),
    )
    .unwrap();
    let ocsp = || {
        openssl_status(
            dir,
            &[
                "ocsp",
                "-issuer",
                "issuing.pem",
                "-cert",
                "o.pem",
                "-url",
                &ocsp_url,
                "-CAfile",
                "root.pem",
            ],
        )
        .1
    };
    assert!(ocsp().contains("o.pem: good"));

    // The database goes away: no new connections, existing ones cut.
    admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
    admin_sql(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ))
    .await;
    let mut outage = Vec::new();
    for _ in 0..4 {
        outage.push(tokio::spawn(order(
            client.clone(),
            key.clone(),
            pem.clone(),
            lab.url("/orders"),
        )));
    }
    for t in outage {
        let (status, ctype, body, took) = t.await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(ctype.as_deref(), Some("application/problem+json"));
        assert_eq!(
            body["type"], "urn:hallmark:error:databaseUnavailable",
            "{body}"
        );
        assert!(took < Duration::from_secs(15), "a 503 took {took:?}");
    }
    let ready = reqwest::get(format!("{}/readyz", lab.running.http_url))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    // CRLs are still served from memory.
    let issuer = lab.running.authority.issuer().certificate().id().to_owned();
    let crl = reqwest::get(format!("{}/crl/{issuer}.crl", lab.running.http_url))
        .await
        .unwrap();
    assert_eq!(crl.status(), StatusCode::OK);

    // OCSP with a nonce (never cached) says "try later", as RFC 6960 has it.
    let answer = ocsp();
    assert!(answer.to_lowercase().contains("trylater"), "{answer}");

    // Nothing half-written: no order was recorded during the outage.
    admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let started = Instant::now();
    loop {
        let r = reqwest::get(format!("{}/readyz", lab.running.http_url))
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "never ready again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let recovered = started.elapsed();
    let (status, _, body, _) =
        order(client.clone(), key.clone(), pem.clone(), lab.url("/orders")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, list) = lab.get(&key, "/orders").await;
    assert_eq!(
        list["orders"].as_array().map(Vec::len),
        Some(2),
        "only the orders made while the database was up: {list}"
    );
    assert!(
        hallmark::workflow::audit::verify(lab.running.authority.store().as_ref())
            .await
            .is_ok()
    );
    eprintln!("PostgreSQL outage: 4 requests, 4 × 503, ready again {recovered:?} after the database returned");
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_the_requests_in_flight() {
    for backend in backends() {
        let http01 = Http01Server::start().await;
        let dns = dns::serve(vec![Entry::A("web", "127.0.0.1".parse().unwrap())]).await;
        let (mut node, key, client) =
            Node::serving_with_a_proven_name(backend, &http01, &dns.addr).await;
        let csrs = Arc::new(vec![csr(
            node.dir.path(),
            "g",
            "web.internal",
            "DNS:web.internal",
        )]);
        // Requests that were sent before SIGTERM all complete.
        let mut inflight = Vec::new();
        for _ in 0..32 {
            let (client, base, key, csr) = (
                client.clone(),
                node.https.clone(),
                key.clone(),
                csrs[0].clone(),
            );
            inflight.push(tokio::spawn(async move {
                client
                    .post(format!("{base}/api/v1/orders"))
                    .bearer_auth(key)
                    .json(&json!({"csr": csr, "validation": "dv"}))
                    .send()
                    .await
                    .map(|r| r.status())
            }));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        let status = node.signal("-TERM");
        assert!(
            status.success(),
            "{backend:?}: clean exit on SIGTERM: {status}"
        );
        let mut done = 0;
        let mut refused = 0;
        for t in inflight {
            match t.await.unwrap() {
                Ok(s) => {
                    assert_eq!(s, StatusCode::CREATED, "{backend:?}");
                    done += 1;
                }
                // Sent after the listener closed, or on a kept-alive
                // connection the server was closing as idle: never read by
                // the server (the count below proves it).
                Err(_) => refused += 1,
            }
        }
        assert!(done > 0, "{backend:?}: nothing was in flight");
        let store = hallmark::store::connect(&node.db.url).await.unwrap();
        let stored = store.count_certificates().await.unwrap();
        // Every stored certificate reached its client as a 201 (besides the
        // proof's, the HTTPS listener's and the OCSP responder's): none was
        // made by a request whose answer was cut.
        assert_eq!(stored as usize, done + 3, "{backend:?}: {refused} refused");
        eprintln!("{backend:?}: graceful shutdown: {done} finished, {refused} not read by the server, 0 cut");
        drop(store);
        node.finish().await;
    }
}

/// A listener on a free loopback port for a load balancer, and the public
/// HTTPS URL it makes.
async fn public_listener() -> (tokio::net::TcpListener, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, format!("https://localhost:{port}"))
}

/// A TCP load balancer on `listener` (TLS passes through): each new
/// connection goes to the loopback port `pick` chooses among `ports`,
/// given how many connections came before it.
fn balance(
    listener: tokio::net::TcpListener,
    ports: Vec<u16>,
    pick: impl Fn(usize) -> usize + Send + 'static,
) {
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut inbound, _)) = listener.accept().await {
            let port = ports[pick(next)];
            next += 1;
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
}

/// The port of an `https://host:port` URL.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// A client of `lab`'s CA that opens a new connection for every request,
/// so each one goes through the balancer afresh.
fn unpooled(lab: &DvLab) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(lab.running.root_pem.as_bytes()).unwrap(),
        )
        .tls_built_in_root_certs(false)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// Another instance of `lab`'s CA on the same database, on its own
/// listeners (as behind a load balancer: the same public URLs).
async fn another_instance(
    lab: &DvLab,
) -> (
    String,
    String,
    tokio::sync::watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let mut config = lab.ca.config.clone();
    let https = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    config.https_listen = https.local_addr().unwrap();
    config.http_listen = http.local_addr().unwrap();
    let https_url = format!("https://localhost:{}", config.https_listen.port());
    let http_url = format!("http://{}", config.http_listen);
    let service = hallmark::service::Service::start(config).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(service.run(https, http, stopped));
    (https_url, http_url, stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_one_database_issue_revoke_and_publish_as_one() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    // A round-robin TCP load balancer in front of the three (TLS passes
    // through): the public HTTPS URL every instance announces.
    let (balancer, public) = public_listener().await;
    let lab = DvLab::new(
        Backend::Postgres,
        &[
            ("HALLMARK_CRL__DEBOUNCE_SECS", "1".into()),
            ("HALLMARK_SERVER__PUBLIC_HTTPS_URL", public.clone()),
        ],
    )
    .await;
    let (b_https, b_http, stop_b, b) = another_instance(&lab).await;
    let (c_https, c_http, stop_c, c) = another_instance(&lab).await;
    let a_https = format!("https://localhost:{}", lab.ca.config.https_listen.port());
    let https = [a_https, b_https, c_https];
    let ports: Vec<u16> = https.iter().map(|u| port_of(u)).collect();
    balance(balancer, ports, |next| next % 3);
    let http = [lab.running.http_url.clone(), b_http, c_http];
    let store = lab.running.authority.store().clone();
    let (_, key) = api_key(&lab.running.authority, "team", Role::Requester).await;
    let client = lab.running.client();

    // Prove web.internal once (through the first), then issue through all
    // three at once, by REST and by ACME, and revoke every other one
    // through a different instance than the one that issued it.
    let http01 = lab.http01.clone();
    prove_rest(&lab, &key).await;
    let pem = csr(lab.ca.dir.path(), "m", "web.internal", "DNS:web.internal");
    let mut tasks = Vec::new();
    for i in 0..24usize {
        let (client, key, pem) = (client.clone(), key.clone(), pem.clone());
        let (at, revoke_at) = (https[i % 3].clone(), https[(i + 1) % 3].clone());
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(format!("{at}/api/v1/orders"))
                .bearer_auth(&key)
                .json(&json!({"csr": pem, "validation": "dv"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let order: Value = r.json().await.unwrap();
            assert_eq!(order["status"], "valid", "{order}");
            let serial = order["certificate_serial"].as_str().unwrap().to_owned();
            let revoked = i % 2 == 0;
            if revoked {
                let r = client
                    .post(format!("{revoke_at}/api/v1/certificates/{serial}/revoke"))
                    .bearer_auth(&key)
                    .json(&json!({"reason": "superseded"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
            }
            (serial, revoked)
        }));
    }
    // ACME clients through the balancer: each connection (and so each
    // nonce, order and finalize) may land on another instance.
    let mut acme = Vec::new();
    for i in 0..3 {
        let http01 = http01.clone();
        let mut acme_client =
            crate::support::acme::Client::with(unpooled(&lab), format!("{public}/acme"));
        acme.push(tokio::spawn(async move {
            assert_eq!(acme_client.register().await.status, 201);
            let publish = |token: &str, ka: &str| {
                http01.publish(&format!("/.well-known/acme-challenge/{token}"), ka)
            };
            let mut chains = Vec::new();
            for _ in 0..3 {
                let name = ["web.internal", "api.internal", "alpn.internal"][i];
                match acme_client.issue(&[name], json!({}), &publish).await {
                    Ok(chain) => chains.push(chain),
                    Err(a) => panic!("ACME through instance {i}: {} {}", a.status, a.body),
                }
            }
            chains
        }));
    }
    let mut serials = Vec::new();
    let mut revoked = BTreeSet::new();
    for t in tasks {
        let (serial, r) = t.await.unwrap();
        if r {
            revoked.insert(serial.clone());
        }
        serials.push(serial);
    }
    let mut acme_chains = 0;
    for t in acme {
        acme_chains += t.await.unwrap().len();
    }
    assert_eq!(acme_chains, 9);
    let unique: BTreeSet<&String> = serials.iter().collect();
    assert_eq!(unique.len(), serials.len(), "a serial issued twice");
    let issues = store
        .audit_page(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "certificate.issue")
        .map(|r| r.subject)
        .collect::<Vec<_>>();
    let unique_issues: BTreeSet<&String> = issues.iter().collect();
    assert_eq!(issues.len(), unique_issues.len());

    // Every instance serves a CRL with every revocation, and once the
    // dust settles the same newest number, within one poll (2 s).
    let issuer = lab.running.authority.issuer().certificate().id().to_owned();
    let plain = reqwest::Client::new();
    let crl_at = |base: String| {
        let plain = plain.clone();
        let issuer = issuer.clone();
        async move {
            let der = plain
                .get(format!("{base}/crl/{issuer}.crl"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            crl_contents(&der)
        }
    };
    let started = Instant::now();
    for base in &http {
        loop {
            let (_, listed) = crl_at(base.clone()).await;
            if revoked.iter().all(|s| listed.contains(s)) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{base} lacks revocations"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let newest = store
        .crl_heads()
        .await
        .unwrap()
        .into_iter()
        .find(|h| h.issuer_id == issuer && h.partition == 0 && !h.delta)
        .unwrap()
        .number as u64;
    tokio::time::sleep(hallmark::workflow::crl::POLL_INTERVAL + Duration::from_millis(500)).await;
    for base in &http {
        let (n, _) = crl_at(base.clone()).await;
        assert!(n >= newest, "{base} serves CRL {n}, the newest is {newest}");
    }
    // One content per CRL number.
    let numbers = crate::support::pki::published_crl_numbers(store.as_ref(), &issuer).await;
    let unique_numbers: BTreeSet<i64> = numbers.iter().copied().collect();
    assert_eq!(
        unique_numbers.len(),
        numbers.len(),
        "a CRL number published twice"
    );

    // A dashboard session made through one instance works at the others.
    hallmark::workflow::users::add_user(
        store.as_ref(),
        "ops",
        hallmark::workflow::users::UserRole::Admin,
        crate::support::browser::PASSWORD,
        false,
        "test",
    )
    .await
    .unwrap();
    let mut browser = crate::support::browser::Browser::new(&lab.running);
    browser
        .sign_in("ops", crate::support::browser::PASSWORD)
        .await;
    for base in &https[1..] {
        browser.base = base.clone();
        let page = browser.get("/admin/certificates").await;
        assert_eq!(page.status, StatusCode::OK, "{base}: {}", page.location);
    }
    assert!(hallmark::workflow::audit::verify(store.as_ref())
        .await
        .is_ok());
    eprintln!(
        "three instances: {} REST and {acme_chains} ACME issuances, {} revocations, {} CRLs published, numbers unique",
        serials.len(),
        revoked.len(),
        numbers.len()
    );
    for (stop, handle) in [(stop_b, b), (stop_c, c)] {
        let _ = stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(15), handle).await;
    }
    lab.finish().await;
}

/// Cuts the sessions holding the serve lock of the database at `url`, as a
/// database restart or a broken connection would.
async fn cut_serve_lock(db: &TestDb) {
    db.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'hallmark serve lock' AND datname = current_database()",
    )
    .await;
}

/// Waits up to `within` for `f` to hold.
async fn eventually(within: Duration, what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_keeps_its_postgres_database_to_itself_and_its_lock_through_a_cut() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let lab = DvLab::new(
        Backend::Postgres,
        &[("HALLMARK_DATABASE__SINGLE_INSTANCE", "true".into())],
    )
    .await;
    let store = lab.running.authority.store().clone();
    assert!(store.one_server() && store.alone());
    let metric = || async {
        let text = get_text(
            &lab.running.client(),
            format!("{}/metrics", lab.running.http_url),
        )
        .await;
        text.lines()
            .find_map(|l| l.strip_prefix("hallmark_database_one_server "))
            .map(str::to_owned)
    };
    assert_eq!(metric().await.as_deref(), Some("1"));

    // No other instance starts on its database, of either kind, and each
    // says why.
    for single in [true, false] {
        let mut config = lab.ca.config.clone();
        config.database_single_instance = single;
        config.https_listen = "127.0.0.1:0".parse().unwrap();
        config.http_listen = "127.0.0.1:0".parse().unwrap();
        match hallmark::service::Service::start(config).await {
            Ok(_) => panic!("a second instance (single_instance = {single}) started"),
            Err(e) => assert!(
                e.to_string().contains("database.single_instance"),
                "single_instance = {single}: {e}"
            ),
        }
    }
    // (The CLI's connections take no lock.)
    assert!(!hallmark::store::connect(&lab.ca.db.url)
        .await
        .unwrap()
        .one_server());

    // ACME, a new name and its renewal, with orders and nonces in memory.
    let mut client = crate::support::acme::Client::with(
        lab.running.client(),
        format!("{}/acme", lab.running.https_url),
    );
    assert_eq!(client.register().await.status, 201);
    let http01 = lab.http01.clone();
    let publish = move |token: &str, ka: &str| {
        http01.publish(&format!("/.well-known/acme-challenge/{token}"), ka)
    };
    let issue = |what: &'static str| {
        let (client, publish) = (&client, &publish);
        async move {
            let chain = client
                .issue(&["web.internal"], json!({}), publish)
                .await
                .unwrap_or_else(|a| panic!("{what}: {} {}", a.status, a.body));
            assert!(chain.contains("BEGIN CERTIFICATE"), "{what}");
        }
    };
    issue("new name").await;
    issue("renewal").await;

    // The lock's connection cut: the instance stops answering from memory
    // at once, says so in /metrics, takes the lock again by itself and
    // forgets what it kept.
    cut_serve_lock(&lab.ca.db).await;
    eventually(Duration::from_secs(5), "the cut is seen", || !store.alone()).await;
    assert_eq!(metric().await.as_deref(), Some("0"));
    eventually(Duration::from_secs(10), "the lock taken again", || {
        store.alone()
    })
    .await;
    assert_eq!(metric().await.as_deref(), Some("1"));
    issue("after the cut").await;

    // Another instance takes the lock while it is cut: the first reads
    // every order from the database for as long as the other runs, still
    // serving, and takes the lock back once the other has gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    let other = loop {
        cut_serve_lock(&lab.ca.db).await;
        if let Ok(other) = hallmark::store::connect_serving(&lab.ca.db.url, false).await {
            break other;
        }
        assert!(Instant::now() < deadline, "the other instance never got in");
    };
    eventually(Duration::from_secs(5), "the loss is seen", || {
        !store.alone()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!store.alone(), "took the lock back while another held it");
    assert_eq!(metric().await.as_deref(), Some("0"));
    issue("while another instance holds the lock").await;
    drop(other);
    eventually(Duration::from_secs(10), "the lock taken back", || {
        store.alone()
    })
    .await;
    issue("with the lock back").await;
    drop(store);
    lab.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_share_their_database_unless_one_is_single() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(Backend::Postgres, dir.path()).await;
    let serving = |single: bool| hallmark::store::connect_serving(&db.url, single);
    let refused = |r: Result<Arc<dyn hallmark::store::Store>, hallmark::store::StoreError>| match r
    {
        Ok(_) => panic!("started beside an instance of the other kind"),
        Err(e) => e.to_string(),
    };
    // Several instances sharing the database, none keeping orders.
    let a = serving(false).await.unwrap();
    let b = serving(false).await.unwrap();
    assert!(!a.one_server() && !a.alone() && !b.one_server());
    let why = refused(serving(true).await);
    assert!(
        why.contains("another hallmark instance is serving"),
        "{why}"
    );
    // Once they stop (their lock connections closed), a single one starts,
    // and keeps the others out.
    drop((a, b));
    let deadline = Instant::now() + Duration::from_secs(10);
    let single = loop {
        match serving(true).await {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "the shared locks stayed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(single.one_server() && single.alone());
    let why = refused(serving(false).await);
    assert!(why.contains("database.single_instance = true"), "{why}");
    drop(single);
    db.cleanup().await;
}

/// Proves `web.internal` for the account behind `key` through `lab`.
async fn prove_rest(lab: &DvLab, key: &str) {
    let pem = csr(lab.ca.dir.path(), "p", "web.internal", "DNS:web.internal");
    let (status, order) = lab
        .post(key, "/orders", json!({"csr": pem, "validation": "dv"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let c = challenge(&order, "web.internal", "http-01");
    lab.http01.publish(
        c["http_path"].as_str().unwrap(),
        c["http_body"].as_str().unwrap(),
    );
    let id = order["id"].as_str().unwrap();
    let (status, _) = lab
        .post(
            key,
            &format!("/orders/{id}/challenges/{}", c["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(lab.settle(key, id).await["status"], "valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_serving_when_its_log_cannot_be_written() {
    // A full log disk loses log lines; it never stops the CA.
    let http01 = Http01Server::start().await;
    let node = Node::new(Backend::Sqlite, &http01, "127.0.0.1:53").await;
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hallmark"))
        .arg("serve")
        .current_dir(node.dir.path())
        .env_remove("DATABASE_URL")
        .envs(node.env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(full)
        .spawn()
        .unwrap();
    let client = node.client();
    let mut ready = false;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(format!("{}/readyz", node.http)).await {
            ready = r.status() == StatusCode::OK;
            if ready {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "serve with an unwritable log never became ready");
    // Requests that log (a refusal, a warning) are still answered.
    for _ in 0..20 {
        let r = client
            .post(format!("{}/api/v1/orders", node.https))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(child.try_wait().unwrap().is_none(), "serve exited");
    let _ = child.kill();
    let _ = child.wait();
}

/// With several instances, an ACME finalize begins from the view of a
/// `ready` order its instance wrote a moment ago, and a valid
/// authorization is answered from that view: neither reads the database.
/// If another instance finalized the order meanwhile, the view is stale,
/// and the issuance's commit (guarded on `ready`) refuses it: the client
/// is told the order is not ready, and the order keeps one certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalize_begun_from_a_stale_view_on_another_instance_issues_nothing() {
    if !backends().contains(&Backend::Postgres) {
        return;
    }
    // One public URL in front of both (TLS passes through), sending each
    // new connection to the instance `to` names: 0 for A, 1 for B.
    let (balancer, public) = public_listener().await;
    let lab = DvLab::new(
        Backend::Postgres,
        &[("HALLMARK_SERVER__PUBLIC_HTTPS_URL", public.clone())],
    )
    .await;
    let store = lab.running.authority.store().clone();
    assert!(!store.one_server());
    let (b_https, _, stop_b, b) = another_instance(&lab).await;
    let ports = vec![lab.ca.config.https_listen.port(), port_of(&b_https)];
    let to = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let route = to.clone();
    balance(balancer, ports, move |_| route.load(Ordering::SeqCst));
    let through = |instance: usize| to.store(instance, Ordering::SeqCst);
    let mut client = crate::support::acme::Client::with(unpooled(&lab), format!("{public}/acme"));
    assert_eq!(client.register().await.status, 201);
    let http01 = lab.http01.clone();
    let publish = move |token: &str, ka: &str| {
        http01.publish(&format!("/.well-known/acme-challenge/{token}"), ka)
    };
    client
        .issue(&["web.internal"], json!({}), &publish)
        .await
        .unwrap_or_else(|a| panic!("new name: {} {}", a.status, a.body));

    let before = certificate_issues(&store).await;

    // A renewal's order, made through A: ready at once, its authorization
    // reused and valid, and A keeps the view it wrote.
    let order = client
        .post(
            &format!("{public}/acme/new-order"),
            Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}]})),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["status"], "ready");
    let order_url = order.location();
    let order_id = order_url.rsplit('/').next().unwrap().to_owned();
    let authz_url = order.body["authorizations"][0].as_str().unwrap().to_owned();
    assert_eq!(
        store.order_seen(&order_id).map(|b| b.order.status),
        Some(hallmark::store::OrderStatus::Ready)
    );
    // The authorization from A's view even once the row says otherwise
    // (changed by hand: nothing in hallmark moves a valid one), from the
    // database through B, which has no view of it.
    db_execute_reused(&lab, &order_id).await;
    let from_a = client.post(&authz_url, None).await;
    assert_eq!(from_a.status, 200, "{}", from_a.body);
    assert_eq!(from_a.body["status"], "valid");
    assert_ne!(
        from_a.body["expires"], "2001-09-09T01:46:40Z",
        "A read the row again"
    );
    through(1);
    let from_b = client.post(&authz_url, None).await;
    through(0);
    assert_eq!(from_b.status, 200, "{}", from_b.body);
    assert_eq!(from_b.body["expires"], "2001-09-09T01:46:40Z");
    db_restore_reused(&lab, &order_id).await;

    // Finalized through B; then again through A, whose view still says
    // ready: refused, and no second certificate.
    let finalize_url = order.body["finalize"].as_str().unwrap().to_owned();
    let csr = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let der = params.serialize_request(&key).unwrap().der().to_vec();
        json!({"csr": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, der)})
    };
    through(1);
    let through_b = client.post(&finalize_url, Some(&csr("web.internal"))).await;
    through(0);
    assert_eq!(through_b.status, 200, "{}", through_b.body);
    assert_eq!(through_b.body["status"], "valid");
    // (A's view is kept 2 s: on a machine so slow that it aged out, A
    // reads the order again and the answer is the same.)
    if let Some(view) = store.order_seen(&order_id) {
        assert_eq!(
            view.order.status,
            hallmark::store::OrderStatus::Ready,
            "stale"
        );
    }
    let through_a = client.post(&finalize_url, Some(&csr("web.internal"))).await;
    assert_eq!(through_a.status, 403, "{}", through_a.body);
    assert_eq!(
        through_a.body["type"], "urn:ietf:params:acme:error:orderNotReady",
        "{}",
        through_a.body
    );
    assert_eq!(
        certificate_issues(&store).await,
        before + 1,
        "the renewal's certificate, once"
    );

    let now = client.post(&order_url, None).await;
    assert_eq!(now.body["status"], "valid");
    assert_eq!(now.body["certificate"], through_b.body["certificate"]);
    let _ = stop_b.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), b).await;
    drop(store);
    lab.finish().await;
}

/// Gives the reused authorization of `order_id` an expiry of 1,000,000,000
/// (2001-09-09T01:46:40Z) in its row.
async fn db_execute_reused(lab: &DvLab, order_id: &str) {
    lab.ca
        .db
        .execute(&format!(
            "UPDATE orders SET reused_authorizations = \
             replace(reused_authorizations, '\"expires_at\":', '\"expires_at\":1000000000,\"was\":') \
             WHERE id = '{order_id}'"
        ))
        .await;
}

/// Undoes [`db_execute_reused`].
async fn db_restore_reused(lab: &DvLab, order_id: &str) {
    lab.ca
        .db
        .execute(&format!(
            "UPDATE orders SET reused_authorizations = \
             replace(reused_authorizations, '\"expires_at\":1000000000,\"was\":', '\"expires_at\":') \
             WHERE id = '{order_id}'"
        ))
        .await;
}

/// How many certificates the audit records say were issued.
async fn certificate_issues(store: &Arc<dyn hallmark::store::Store>) -> usize {
    store
        .audit_page(0, 1_000_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "certificate.issue")
        .count()
}
