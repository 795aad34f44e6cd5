//! The authorization matrix: every route of the REST API, the dashboard,
//! ACME and the public listener, called with every kind of credential,
//! and the outcome of each cell asserted exactly. The tables below are the
//! policy, readable by a reviewer; docs/SECURITY.md repeats them.
//!
//! Outcomes: `OK` the request was authorized (whatever it then said about
//! its body or the resource's state); `401` no valid credential; `403` a
//! valid credential without the right; `404` the resource is hidden from
//! this caller; `LOGIN` the dashboard sends the browser to sign in;
//! `NOPE` the dashboard accepted the request but the workflow refused it
//! for this user (a flash "Not …"); `BAD` an ACME request refused before
//! any account was identified (no JWS, a malformed one, or an unknown
//! account).

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::acme::Client;
use crate::support::browser::{ov_order, Browser, PASSWORD};
use crate::support::dv::{challenge, csr, DvLab};
use crate::support::*;
use hallmark::workflow::accounts::{create_account, revoke_key, Role};
use hallmark::workflow::users::{self, UserRole};

const OK: &str = "OK";
const U: &str = "401";
const F: &str = "403";
const H: &str = "404";
const LOGIN: &str = "LOGIN";
const NOPE: &str = "NOPE";
const BAD: &str = "BAD";

/// What a cell's request points at; made fresh where a call uses it up.
#[derive(Clone, Copy, Debug)]
enum Target {
    Nothing,
    /// The owner's pending DV order (and its http-01 challenge).
    OwnOrder,
    /// A fresh OV order of the owner, awaiting approval.
    FreshOv,
    /// A fresh certificate of the owner.
    FreshCert,
    /// A certificate of the owner that stays valid.
    OwnCert,
    /// An account nobody uses as a credential.
    Victim,
    /// A dashboard user nobody signs in as.
    VictimUser,
}

// ----------------------------------------------------------------- REST

/// REST credentials, in column order.
const REST_CREDENTIALS: [&str; 7] = [
    "none",
    "malformed",
    "revoked key",
    "requester (owner)",
    "other requester",
    "reviewer",
    "admin",
];

/// A REST row: method, route, target, body, outcome per credential.
type RestRow = (
    &'static str,
    &'static str,
    Target,
    Option<Value>,
    [&'static str; 7],
);

/// A dashboard row: method, route, target, form, outcome per credential.
type DashboardRow = (
    &'static str,
    &'static str,
    Target,
    Vec<(&'static str, &'static str)>,
    [&'static str; 6],
);

/// REST: route, target, body, outcome per credential (columns above).
#[rustfmt::skip]
fn rest_matrix() -> Vec<RestRow> {
    use Target::*;
    vec![
        //                                                             none malf revk owner other revw admin
        ("GET",  "/api/openapi.json",               Nothing,   None,                    [OK, OK, OK, OK, OK, OK, OK]),
        ("GET",  "/api/v1/account",                 Nothing,   None,                    [U,  U,  U,  OK, OK, OK, OK]),
        ("POST", "/api/v1/orders",                  Nothing,   Some(json!({})),         [U,  U,  U,  OK, OK, OK, OK]),
        ("GET",  "/api/v1/orders",                  Nothing,   None,                    [U,  U,  U,  OK, OK, OK, OK]),
        ("GET",  "/api/v1/orders/{order}",          OwnOrder,  None,                    [U,  U,  U,  OK, H,  OK, OK]),
        ("POST", "/api/v1/orders/{order}/challenges/{challenge}", OwnOrder, Some(json!({})), [U, U, U, OK, H, F, F]),
        ("POST", "/api/v1/orders/{order}/approve",  FreshOv,   Some(json!({})),         [U,  U,  U,  F,  F,  OK, OK]),
        ("POST", "/api/v1/orders/{order}/reject",   FreshOv,   Some(json!({"reason": "no"})), [U, U, U, F, F, OK, OK]),
        ("GET",  "/api/v1/certificates",            Nothing,   None,                    [U,  U,  U,  OK, OK, OK, OK]),
        ("GET",  "/api/v1/certificates/{serial}",   OwnCert,   None,                    [U,  U,  U,  OK, H,  OK, OK]),
        ("POST", "/api/v1/certificates/{serial}/revoke", FreshCert, Some(json!({})),   [U,  U,  U,  OK, H,  F,  OK]),
        ("GET",  "/api/v1/webhooks/deliveries",     Nothing,   None,                    [U,  U,  U,  F,  F,  F,  OK]),
    ]
}

/// The outcome class of a REST answer.
fn rest_outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => U,
        403 => F,
        404 => H,
        _ => OK,
    }
}

// ------------------------------------------------------------ dashboard

/// Dashboard credentials, in column order.
const DASHBOARD_CREDENTIALS: [&str; 6] = [
    "none",
    "expired session",
    "wrong CSRF (admin)",
    "auditor",
    "reviewer",
    "admin",
];

/// Dashboard: route, target, form, outcome per credential. GETs need no
/// CSRF token, so the wrong-CSRF column is an ordinary admin there.
#[rustfmt::skip]
fn dashboard_matrix() -> Vec<DashboardRow> {
    use Target::*;
    vec![
        //                                                                          none   expd   csrf  audt revw  admin
        ("GET",  "/admin",                               Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/requests",                      Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/requests/{order}",              OwnOrder, vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/certificates",                  Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/certificates/{serial}",         OwnCert,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/certificates/{serial}/chain.pem", OwnCert, vec![],                  [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/accounts",                      Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/users",                         Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/audit",                         Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/crl",                           Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/webhooks",                      Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("GET",  "/admin/password",                      Nothing,  vec![],                   [LOGIN, LOGIN, OK, OK, OK,   OK]),
        ("POST", "/admin/requests/{order}/approve",      FreshOv,  vec![],                   [LOGIN, LOGIN, F,  F,  OK,   OK]),
        ("POST", "/admin/requests/{order}/reject",       FreshOv,  vec![("reason", "no")],   [LOGIN, LOGIN, F,  F,  OK,   OK]),
        ("POST", "/admin/certificates/{serial}/revoke",  FreshCert, vec![("reason", "superseded")], [LOGIN, LOGIN, F, F, NOPE, OK]),
        ("POST", "/admin/crl/regenerate",                Nothing,  vec![],                   [LOGIN, LOGIN, F,  F,  F,    OK]),
        ("POST", "/admin/accounts",                      Nothing,  vec![("name", "new team"), ("role", "requester")], [LOGIN, LOGIN, F, F, F, OK]),
        ("POST", "/admin/accounts/{account}/rotate",     Victim,   vec![],                   [LOGIN, LOGIN, F,  F,  F,    OK]),
        ("POST", "/admin/accounts/{account}/eab",        Victim,   vec![],                   [LOGIN, LOGIN, F,  F,  F,    OK]),
        ("POST", "/admin/accounts/{account}/disable",    Victim,   vec![],                   [LOGIN, LOGIN, F,  F,  F,    OK]),
        ("POST", "/admin/accounts/{account}/enable",     Victim,   vec![],                   [LOGIN, LOGIN, F,  F,  F,    OK]),
        ("POST", "/admin/users",                         Nothing,  vec![("username", "newuser"), ("role", "auditor"), ("password", "a long first password")], [LOGIN, LOGIN, F, F, F, OK]),
        ("POST", "/admin/users/{user}/role",             VictimUser, vec![("role", "reviewer")], [LOGIN, LOGIN, F, F,  F,    OK]),
        ("POST", "/admin/users/{user}/account",          VictimUser, vec![("account", "")],  [LOGIN, LOGIN, F,  F,  F,    OK]),
        ("POST", "/admin/users/{user}/disable",          VictimUser, vec![],                 [LOGIN, LOGIN, F,  F,  F,    OK]),
        ("POST", "/admin/users/{user}/enable",           VictimUser, vec![],                 [LOGIN, LOGIN, F,  F,  F,    OK]),
        // A wrong current password: every signed-in user may try.
        ("POST", "/admin/password",                      Nothing,  vec![("current_password", "wrong one here"), ("new_password", "another long password"), ("confirm", "another long password")], [LOGIN, LOGIN, F, OK, OK, OK]),
        // Last: it ends the session it is sent with, sending the browser to
        // sign in (checked below: the session is gone).
        ("POST", "/admin/logout",                        Nothing,  vec![],                   [LOGIN, LOGIN, F,  LOGIN, LOGIN, LOGIN]),
    ]
}

// ----------------------------------------------------------------- ACME

/// ACME credentials, in column order.
const ACME_CREDENTIALS: [&str; 5] = [
    "no JWS",
    "malformed JWS",
    "unknown account",
    "owner's ACME account",
    "another ACME account",
];

/// ACME: route (POST unless GET), target, outcome per credential.
#[rustfmt::skip]
fn acme_matrix() -> Vec<(&'static str, &'static str, [&'static str; 5])> {
    vec![
        //                                                  nojws malf unkn owner other
        ("GET",  "/acme/directory",                         [OK,  OK,  OK,  OK,  OK]),
        ("GET",  "/acme/new-nonce",                         [OK,  OK,  OK,  OK,  OK]),
        ("GET",  "/acme/renewal-info/{ari}",                [OK,  OK,  OK,  OK,  OK]),
        // newAccount is signed with a key, never a kid.
        ("POST", "/acme/new-account",                       [BAD, BAD, BAD, OK,  OK]),
        ("POST", "/acme/account/{acct}",                    [BAD, BAD, BAD, OK,  F]),
        ("POST", "/acme/account/{acct}/orders",             [BAD, BAD, BAD, OK,  F]),
        ("POST", "/acme/new-order",                         [BAD, BAD, BAD, OK,  OK]),
        ("POST", "/acme/order/{order}",                     [BAD, BAD, BAD, OK,  H]),
        ("POST", "/acme/order/{order}/finalize",            [BAD, BAD, BAD, OK,  H]),
        ("POST", "/acme/authz/{authz}",                     [BAD, BAD, BAD, OK,  H]),
        ("POST", "/acme/chall/{chall}",                     [BAD, BAD, BAD, OK,  H]),
        ("POST", "/acme/cert/{serial}",                     [BAD, BAD, BAD, OK,  H]),
        ("POST", "/acme/revoke-cert",                       [BAD, BAD, BAD, OK,  F]),
        // Each account changes its own key (last: the key is gone after).
        ("POST", "/acme/key-change",                        [BAD, BAD, BAD, OK,  OK]),
    ]
}

/// The outcome class of an ACME answer.
fn acme_outcome(status: u16, body: &Value) -> &'static str {
    let kind = body["type"].as_str().unwrap_or("");
    match status {
        401 | 403 if kind.ends_with(":unauthorized") => F,
        404 => H,
        400 if kind.ends_with(":accountDoesNotExist")
            || (kind.ends_with(":malformed")
                && body["detail"].as_str().unwrap_or("").contains("JWS"))
            || kind.ends_with(":badNonce") =>
        {
            BAD
        }
        _ => OK,
    }
}

/// The dashboard outcome of an answer (following a redirect to read its
/// flash).
async fn dashboard_outcome(
    browser: &mut Browser,
    page: crate::support::browser::Page,
) -> &'static str {
    match page.status.as_u16() {
        403 => F,
        404 => H,
        303 | 302 if page.location == "/admin/login" => LOGIN,
        303 | 302 => {
            let next = browser.get(&page.location).await;
            let flash = next
                .body
                .split("class=\"flash\" role=\"status\">")
                .nth(1)
                .unwrap_or("");
            if flash.starts_with("Not ") {
                NOPE
            } else {
                OK
            }
        }
        _ => OK,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_with_every_credential_gets_exactly_the_allowed_outcome() {
    for backend in backends() {
        let lab = DvLab::new(
            backend,
            &[("HALLMARK_LIMITS__SIGN_IN_PER_MINUTE", "0".into())],
        )
        .await;
        let store = lab.running.authority.store().clone();
        let dir = lab.ca.dir.path().to_path_buf();
        let make = |name: &'static str, role: Role| {
            let store = store.clone();
            async move {
                create_account(store.as_ref(), name, role, "test")
                    .await
                    .unwrap()
            }
        };
        let owner = make("owner", Role::Requester).await;
        let other = make("other", Role::Requester).await;
        let reviewer = make("reviewer", Role::Reviewer).await;
        let admin = make("admin keys", Role::Admin).await;
        let victim = make("victim", Role::Requester).await;
        let revoked = make("revoked", Role::Requester).await;
        revoke_key(store.as_ref(), &revoked.key_id, "test")
            .await
            .unwrap();
        let owner_key = owner.api_key.to_string();
        let rest_keys: [Option<String>; 7] = [
            None,
            Some("hm_not-a-real-key".into()),
            Some(revoked.api_key.to_string()),
            Some(owner_key.clone()),
            Some(other.api_key.to_string()),
            Some(reviewer.api_key.to_string()),
            Some(admin.api_key.to_string()),
        ];

        // Targets that stay.
        let pem = csr(&dir, "own", "stay.internal", "DNS:stay.internal");
        let (status, own_order) = lab
            .post(
                &owner_key,
                "/orders",
                json!({"csr": pem, "validation": "dv"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{own_order}");
        let order_id = own_order["id"].as_str().unwrap().to_owned();
        let challenge_id = challenge(&own_order, "stay.internal", "dns-01")["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (own_serial, _) = crate::support::pki::issue(
            &lab.running.authority,
            &dir,
            "kept",
            "kept.internal",
            &owner.account.id,
        )
        .await;
        let mut fresh = 0;
        let mut target = |t: Target| {
            fresh += 1;
            let n = fresh;
            let (lab, dir, owner_key, order_id, challenge_id, own_serial, owner_id) = (
                &lab,
                &dir,
                owner_key.clone(),
                order_id.clone(),
                challenge_id.clone(),
                own_serial.clone(),
                owner.account.id.clone(),
            );
            let victim = victim.account.id.clone();
            async move {
                let mut vars: Vec<(&'static str, String)> = Vec::new();
                match t {
                    Target::Nothing => {}
                    Target::OwnOrder => {
                        vars.push(("{order}", order_id));
                        vars.push(("{challenge}", challenge_id));
                    }
                    Target::FreshOv => {
                        vars.push(("{order}", ov_order(lab, &owner_key, "Org").await))
                    }
                    Target::FreshCert => {
                        let (serial, _) = crate::support::pki::issue(
                            &lab.running.authority,
                            dir,
                            &format!("fresh{n}"),
                            &format!("fresh{n}.internal"),
                            &owner_id,
                        )
                        .await;
                        vars.push(("{serial}", serial));
                    }
                    Target::OwnCert => vars.push(("{serial}", own_serial)),
                    Target::Victim => vars.push(("{account}", victim)),
                    Target::VictimUser => vars.push(("{user}", "victimuser".into())),
                }
                vars
            }
        };

        // ---- REST
        let client = lab.running.client();
        let mut mismatches = Vec::new();
        for (method, route, t, body, expected) in rest_matrix() {
            for (col, key) in rest_keys.iter().enumerate() {
                let mut path = route.to_owned();
                for (k, v) in target(t).await {
                    path = path.replace(k, &v);
                }
                let url = format!("{}{path}", lab.running.https_url);
                let mut req = if method == "GET" {
                    client.get(&url)
                } else {
                    client.post(&url)
                };
                if let Some(key) = key {
                    req = req.bearer_auth(key);
                }
                if let Some(b) = &body {
                    req = req.json(b);
                }
                let got = rest_outcome(req.send().await.unwrap().status());
                if got != expected[col] {
                    mismatches.push(format!(
                        "REST {method} {route} as {}: expected {}, got {got}",
                        REST_CREDENTIALS[col], expected[col]
                    ));
                }
            }
        }

        // ---- dashboard
        for (name, role) in [
            ("auditor", UserRole::Auditor),
            ("reviewer", UserRole::Reviewer),
            ("boss", UserRole::Admin),
            ("expiring", UserRole::Admin),
            ("victimuser", UserRole::Auditor),
        ] {
            users::add_user(store.as_ref(), name, role, PASSWORD, false, "test")
                .await
                .unwrap();
        }
        for (method, route, t, form, expected) in dashboard_matrix() {
            for (col, who) in DASHBOARD_CREDENTIALS.iter().enumerate() {
                let mut path = route.to_owned();
                for (k, v) in target(t).await {
                    path = path.replace(k, &v);
                }
                // A fresh browser per cell: some cells end their session.
                let mut browser = Browser::new(&lab.running);
                let user = match col {
                    1 => Some("expiring"),
                    2 | 5 => Some("boss"),
                    3 => Some("auditor"),
                    4 => Some("reviewer"),
                    _ => None,
                };
                let mut token = String::from("no-session");
                if let Some(user) = user {
                    browser.sign_in(user, PASSWORD).await;
                    token = browser.get("/admin").await.csrf();
                }
                if col == 1 {
                    lab.ca
                        .db
                        .execute("UPDATE sessions SET last_seen_at = last_seen_at - 7200, expires_at = expires_at - 100000")
                        .await;
                }
                if col == 2 {
                    token = "wrong".into();
                }
                let page = if method == "GET" {
                    browser.get(&path).await
                } else {
                    let mut fields = vec![("csrf", token.as_str())];
                    fields.extend(form.iter().copied());
                    browser.post(&path, &fields).await
                };
                let got = dashboard_outcome(&mut browser, page).await;
                if route == "/admin/logout" && col >= 3 {
                    assert_eq!(
                        browser.get("/admin").await.location,
                        "/admin/login",
                        "signing out ends the session"
                    );
                }
                if got != expected[col] {
                    mismatches.push(format!(
                        "dashboard {method} {route} as {who}: expected {}, got {got}",
                        expected[col]
                    ));
                }
            }
        }

        // ---- ACME: the owner's ACME account is bound to the owner.
        let base = format!("{}/acme", lab.running.https_url);
        let mut mine = Client::with(client.clone(), base.clone());
        mine.register().await;
        let mut theirs = Client::with(client.clone(), base.clone());
        theirs.register().await;
        let stranger = {
            let mut c = Client::with(client.clone(), base.clone());
            c.register().await;
            c
        };
        let publish = |token: &str, body: &str| {
            lab.http01
                .publish(&format!("/.well-known/acme-challenge/{token}"), body)
        };
        let pem = mine
            .issue(&["web.internal"], json!({}), &publish)
            .await
            .unwrap_or_else(|a| panic!("{}", a.body));
        let der = hallmark::pki::pem_decode_all(&pem, "CERTIFICATE").remove(0);
        let serial = {
            use x509_parser::prelude::FromDer;
            let (_, c) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
            hex::encode(c.raw_serial())
        };
        let order = mine
            .post(
                &format!("{base}/new-order"),
                Some(&json!({"identifiers": [{"type": "dns", "value": "api.internal"}]})),
            )
            .await;
        let order_url = order.location();
        let authz_url = order.body["authorizations"][0].as_str().unwrap().to_owned();
        let authz = mine.post(&authz_url, None).await;
        let chall_url = authz.body["challenges"][0]["url"]
            .as_str()
            .unwrap()
            .to_owned();
        let acct_url = mine.kid.clone().unwrap();
        let ari = crate::support::eab::ari_id(&pem);
        let cert_b64 = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&der)
        };
        let unknown_kid = format!("{base}/account/acct_does_not_exist");
        for (method, route, expected) in acme_matrix() {
            let url = format!(
                "{}{}",
                lab.running.https_url,
                route
                    .replace("{acct}", acct_url.rsplit('/').next().unwrap())
                    .replace("{order}", order_url.rsplit('/').next().unwrap())
                    .replace("{authz}", authz_url.rsplit('/').next().unwrap())
                    .replace("{chall}", chall_url.rsplit('/').next().unwrap())
                    .replace("{serial}", &serial)
                    .replace("{ari}", &ari)
            );
            // Finalize and revocation take bodies; the rest POST-as-GET.
            let payload = match route {
                "/acme/new-account" => Some(json!({"termsOfServiceAgreed": true})),
                "/acme/new-order" => {
                    Some(json!({"identifiers": [{"type": "dns", "value": "new.internal"}]}))
                }
                "/acme/order/{order}/finalize" => Some(json!({"csr": "AAAA"})),
                "/acme/revoke-cert" => Some(json!({"certificate": cert_b64, "reason": 4})),
                "/acme/key-change" => {
                    Some(json!({"protected": "e30", "payload": "e30", "signature": "AAAA"}))
                }
                "/acme/chall/{chall}" => Some(json!({})),
                _ => None,
            };
            for (col, who) in ACME_CREDENTIALS.iter().enumerate() {
                let got = if method == "GET" {
                    let r = client.get(&url).send().await.unwrap();
                    if r.status().is_success() {
                        OK
                    } else {
                        acme_outcome(r.status().as_u16(), &Value::Null)
                    }
                } else {
                    let answer = match col {
                        0 => mine.post_body(&url, &json!({"hello": "world"})).await,
                        1 => {
                            mine.post_body(
                                &url,
                                &json!({"protected": "!!", "payload": "", "signature": ""}),
                            )
                            .await
                        }
                        2 => {
                            let nonce = stranger.nonce().await;
                            let body = stranger.sign(
                                &url,
                                &nonce,
                                payload.as_ref(),
                                json!({"kid": unknown_kid, "jwk": null}),
                            );
                            stranger.post_body(&url, &body).await
                        }
                        _ => {
                            let signer = if col == 3 { &mine } else { &theirs };
                            let payload = if route == "/acme/key-change" {
                                let new_key = crate::support::acme::new_p256_key();
                                Some(crate::support::acme::jws(
                                    &new_key,
                                    &json!({"alg": "ES256", "jwk": crate::support::acme::p256_jwk(&new_key), "url": url}),
                                    Some(
                                        &json!({"account": signer.kid.clone().unwrap(), "oldKey": signer.jwk()}),
                                    ),
                                ))
                            } else {
                                payload.clone()
                            };
                            signer.post(&url, payload.as_ref()).await
                        }
                    };
                    acme_outcome(answer.status, &answer.body)
                };
                if got != expected[col] {
                    mismatches.push(format!(
                        "ACME {method} {route} as {who}: expected {}, got {got}",
                        expected[col]
                    ));
                }
            }
        }

        // ---- public listener: everyone, no credential needed.
        let plain = reqwest::Client::new();
        for path in [
            "/ca/root.crt",
            "/ca/root.pem",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            let r = plain
                .get(format!("{}{path}", lab.running.http_url))
                .send()
                .await
                .unwrap();
            if !r.status().is_success() {
                mismatches.push(format!("public GET {path}: {}", r.status()));
            }
            let r = plain
                .get(format!("{}{path}", lab.running.http_url))
                .bearer_auth("hm_garbage")
                .send()
                .await
                .unwrap();
            if !r.status().is_success() {
                mismatches.push(format!("public GET {path} with a bad key: {}", r.status()));
            }
        }
        assert!(
            mismatches.is_empty(),
            "{backend:?}: {} cells differ from the matrix:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
        lab.finish().await;
    }
}

/// The account behind an API key is kept in memory for
/// `store::recent::FRESH_FOR` (the hot path makes no read for it): a key
/// revoked or an account disabled through one instance stops working there
/// at once, and on another instance of the same database within that bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_or_disabled_account_stops_working_here_at_once_and_elsewhere_within_the_bound(
) {
    use hallmark::store::recent::FRESH_FOR;
    use hallmark::workflow::accounts::{authenticate, set_disabled};
    use std::time::{Duration, Instant};

    for backend in backends() {
        let mut ca = TestCa::new(backend).await;
        let here = ca.start().await;
        let elsewhere = ca.authority().await; // a second instance's store
        let (a, b) = (here.authority.store(), elsewhere.store());
        let keyed = create_account(a.as_ref(), "cached", Role::Requester, "test")
            .await
            .unwrap();
        let disabled = create_account(a.as_ref(), "to disable", Role::Requester, "test")
            .await
            .unwrap();
        for store in [a, b] {
            for key in [&keyed.api_key, &disabled.api_key] {
                authenticate(store.as_ref(), key).await.expect("known key");
            }
        }

        revoke_key(a.as_ref(), &keyed.key_id, "test").await.unwrap();
        set_disabled(a.as_ref(), &disabled.account.id, true, "test")
            .await
            .unwrap();
        let changed = Instant::now();
        for key in [&keyed.api_key, &disabled.api_key] {
            assert!(
                authenticate(a.as_ref(), key).await.is_err(),
                "{backend:?}: the instance that made the change refuses at once"
            );
            // The other instance still has the answer it read (this is
            // the cache at work), but only within the bound.
            assert!(
                authenticate(b.as_ref(), key).await.is_ok(),
                "{backend:?}: the other instance answers from memory"
            );
        }
        let refused = loop {
            let results = [
                authenticate(b.as_ref(), &keyed.api_key).await.is_err(),
                authenticate(b.as_ref(), &disabled.api_key).await.is_err(),
            ];
            if results == [true, true] {
                break changed.elapsed();
            }
            assert!(
                changed.elapsed() < FRESH_FOR + Duration::from_secs(2),
                "{backend:?}: still accepted after {:?}",
                changed.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            refused <= FRESH_FOR + Duration::from_millis(250),
            "{backend:?}: refused only after {refused:?}"
        );
        here.stop().await;
        ca.cleanup().await;
    }
}
