//! ACME beyond the basics, against the real service with http-01 through
//! the test's own challenge server: the directory's `meta`, external
//! account binding (required), key rollover, renewal information (RFC
//! 9773) and `replaces`, and `notAfter`; on SQLite and PostgreSQL.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};
use x509_parser::prelude::*;

use crate::support::acme::{jws, new_p256_key, p256_jwk, Client};
use crate::support::dv::DvLab;
use crate::support::eab::{ari_id, binding};
use crate::support::*;
use hallmark::workflow::accounts::{create_account, create_eab_key, Role};

const EAB_REQUIRED: &str = "urn:ietf:params:acme:error:externalAccountRequired";
const UNAUTHORIZED: &str = "urn:ietf:params:acme:error:unauthorized";
const MALFORMED: &str = "urn:ietf:params:acme:error:malformed";

fn validity_of(pem: &str) -> (i64, i64) {
    let der = hallmark::pki::pem_decode_all(pem, "CERTIFICATE").remove(0);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    )
}

fn rfc3339_secs(t: &Value) -> i64 {
    ::time::OffsetDateTime::parse(
        t.as_str().unwrap(),
        &::time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eab_key_change_renewal_info_and_not_after() {
    for backend in backends() {
        let lab = DvLab::new(
            backend,
            &[
                ("HALLMARK_ACME__EAB_REQUIRED", "true".into()),
                (
                    "HALLMARK_ACME__TERMS_OF_SERVICE",
                    "https://ca.internal/terms".into(),
                ),
                ("HALLMARK_ACME__CAA_IDENTITIES", "[\"ca.internal\"]".into()),
            ],
        )
        .await;
        let run = &lab.running;
        let store = run.authority.store().clone();
        let base = format!("{}/acme", run.https_url);
        let new_account = format!("{base}/new-account");

        // The directory tells clients what this CA needs.
        let dir: Value = run
            .client()
            .get(format!("{base}/directory"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(dir["meta"]["externalAccountRequired"], true);
        assert_eq!(dir["meta"]["termsOfService"], "https://ca.internal/terms");
        assert_eq!(dir["meta"]["caaIdentities"], json!(["ca.internal"]));
        assert_eq!(dir["keyChange"], format!("{base}/key-change"));
        assert_eq!(dir["renewalInfo"], format!("{base}/renewal-info"));

        // Without a binding: externalAccountRequired; without agreeing to
        // the terms: malformed.
        let mut alice = Client::with(run.client(), base.clone());
        let a = alice
            .register_with(json!({"termsOfServiceAgreed": true}))
            .await;
        assert_eq!((a.status, a.problem()), (401, EAB_REQUIRED), "{}", a.body);
        let team = create_account(store.as_ref(), "team", Role::Requester, "test")
            .await
            .unwrap();
        let eab = create_eab_key(store.as_ref(), &team.account.id, "test")
            .await
            .unwrap();
        let hmac_key = URL_SAFE_NO_PAD.decode(eab.hmac_key.as_str()).unwrap();
        let good = binding(&eab.kid, &hmac_key, &new_account, &alice.jwk());
        let a = alice
            .register_with(json!({"externalAccountBinding": good}))
            .await;
        assert_eq!(a.problem(), MALFORMED, "{}", a.body);
        assert!(a.body["detail"].as_str().unwrap().contains("terms"));

        // Bindings that must not work: wrong MAC key, another key's JWK,
        // another URL, an unknown kid.
        for (what, bad) in [
            (
                "wrong MAC key",
                binding(&eab.kid, b"not the key", &new_account, &alice.jwk()),
            ),
            (
                "another JWK",
                binding(
                    &eab.kid,
                    &hmac_key,
                    &new_account,
                    &p256_jwk(&new_p256_key()),
                ),
            ),
            (
                "another URL",
                binding(
                    &eab.kid,
                    &hmac_key,
                    &format!("{base}/new-order"),
                    &alice.jwk(),
                ),
            ),
            (
                "unknown kid",
                binding("eab_nobody", &hmac_key, &new_account, &alice.jwk()),
            ),
        ] {
            let a = alice
                .register_with(json!({"termsOfServiceAgreed": true, "externalAccountBinding": bad}))
                .await;
            assert_eq!(
                (a.status, a.problem()),
                (401, UNAUTHORIZED),
                "{what}: {}",
                a.body
            );
        }
        let a = alice
            .register_with(json!({"termsOfServiceAgreed": true, "externalAccountBinding": good}))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let acme_id = a.location().rsplit('/').next().unwrap().to_owned();
        let bound = store.acme_account(&acme_id).await.unwrap().unwrap();
        assert_eq!(
            bound.account_id, team.account.id,
            "bound to the team's account"
        );
        let key = store.eab_key(&eab.kid).await.unwrap().unwrap();
        assert!(
            key.used_at.is_some() && key.hmac_key.is_empty(),
            "used and erased"
        );

        // The key is single use.
        let mut bob = Client::with(run.client(), base.clone());
        let again = binding(&eab.kid, &hmac_key, &new_account, &bob.jwk());
        let a = bob
            .register_with(json!({"termsOfServiceAgreed": true, "externalAccountBinding": again}))
            .await;
        assert_eq!(a.problem(), UNAUTHORIZED, "{}", a.body);

        // A certificate by http-01 belongs to the team.
        let http01 = lab.http01.clone();
        let publish = move |token: &str, body: &str| {
            http01.publish(&format!("/.well-known/acme-challenge/{token}"), body)
        };
        let chain = alice
            .issue(&["web.internal"], json!({}), &publish)
            .await
            .map_err(|a| a.body)
            .unwrap();
        assert_openssl_verifies(
            lab.ca.dir.path(),
            &run.root_pem,
            &chain[chain.find("-----END CERTIFICATE-----").unwrap() + 26..],
            &chain,
        );
        let leaf_der = hallmark::pki::pem_decode_all(&chain, "CERTIFICATE").remove(0);
        let serial = {
            let (_, c) = X509Certificate::from_der(&leaf_der).unwrap();
            hex::encode(c.raw_serial())
        };
        let record = store.certificate(&serial.parse().unwrap()).await.unwrap();
        assert_eq!(record.account_id.as_deref(), Some(team.account.id.as_str()));

        // Renewal information: a window in the certificate's last third.
        let id = ari_id(&chain);
        let r = run
            .client()
            .get(format!("{base}/renewal-info/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("retry-after"));
        let info: Value = r.json().await.unwrap();
        let (nb, na) = validity_of(&chain);
        let (start, end) = (
            rfc3339_secs(&info["suggestedWindow"]["start"]),
            rfc3339_secs(&info["suggestedWindow"]["end"]),
        );
        assert!(
            nb + (na - nb) / 2 < start && start < end && end < na,
            "{info}"
        );
        let r = run
            .client()
            .get(format!("{base}/renewal-info/AAAA.AAAA"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);

        // A renewal may say what it replaces, but only its own certificate.
        let a = alice
            .post(
                &format!("{base}/new-order"),
                Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}], "replaces": "bogus"})),
            )
            .await;
        assert_eq!(a.problem(), MALFORMED, "{}", a.body);
        let renewed = alice
            .issue(&["web.internal"], json!({"replaces": id}), &publish)
            .await
            .map_err(|a| a.body)
            .unwrap();
        assert_ne!(ari_id(&renewed), id);

        // notAfter is honoured to the second within policy; far-off
        // notBefore and too long a notAfter are refused.
        let wanted = ::time::OffsetDateTime::now_utc().unix_timestamp() + 10 * 86_400;
        let not_after = ::time::OffsetDateTime::from_unix_timestamp(wanted)
            .unwrap()
            .format(&::time::format_description::well_known::Rfc3339)
            .unwrap();
        let short = alice
            .issue(&["web.internal"], json!({"notAfter": not_after}), &publish)
            .await
            .map_err(|a| a.body)
            .unwrap();
        assert_eq!(validity_of(&short).1, wanted);
        let a = alice
            .post(
                &format!("{base}/new-order"),
                Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}], "notAfter": "2999-01-01T00:00:00Z"})),
            )
            .await;
        assert_eq!(a.status, 400, "{}", a.body);
        let a = alice
            .post(
                &format!("{base}/new-order"),
                Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}], "notBefore": "2999-01-01T00:00:00Z"})),
            )
            .await;
        assert_eq!(a.problem(), MALFORMED, "{}", a.body);

        // Key rollover: the inner JWS is signed by the new key.
        let key_change = format!("{base}/key-change");
        let new_key = new_p256_key();
        let inner = jws(
            &new_key,
            &json!({"alg": "ES256", "jwk": p256_jwk(&new_key), "url": key_change}),
            Some(&json!({"account": alice.kid, "oldKey": alice.jwk()})),
        );
        // Signed over the wrong old key: refused.
        let wrong = jws(
            &new_key,
            &json!({"alg": "ES256", "jwk": p256_jwk(&new_key), "url": key_change}),
            Some(&json!({"account": alice.kid, "oldKey": p256_jwk(&new_key)})),
        );
        let a = alice.post(&key_change, Some(&wrong)).await;
        assert_eq!(a.problem(), MALFORMED, "{}", a.body);
        let a = alice.post(&key_change, Some(&inner)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        // The old key no longer signs for the account; the new one does.
        let order_list = format!("{}/orders", alice.kid.clone().unwrap());
        let a = alice.post(&order_list, None).await;
        assert_eq!(a.problem(), MALFORMED, "{}", a.body);
        alice.key = new_key;
        let a = alice.post(&order_list, None).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["orders"].as_array().unwrap().len(), 3);
        let mut lookup = Client::with(run.client(), base.clone());
        std::mem::swap(&mut lookup.key, &mut alice.key);
        let a = lookup
            .register_with(json!({"onlyReturnExisting": true}))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(Some(a.location()), alice.kid);
        std::mem::swap(&mut lookup.key, &mut alice.key);
        // A key another account holds cannot be rolled to: 409 and where.
        let eab2 = create_eab_key(store.as_ref(), &team.account.id, "test")
            .await
            .unwrap();
        let mut carol = Client::with(run.client(), base.clone());
        let b = binding(
            &eab2.kid,
            &URL_SAFE_NO_PAD.decode(eab2.hmac_key.as_str()).unwrap(),
            &new_account,
            &carol.jwk(),
        );
        let a = carol
            .register_with(json!({"termsOfServiceAgreed": true, "externalAccountBinding": b}))
            .await;
        assert_eq!(a.status, 201, "{}", a.body);
        let taken = jws(
            &carol.key,
            &json!({"alg": "ES256", "jwk": carol.jwk(), "url": key_change}),
            Some(&json!({"account": alice.kid, "oldKey": alice.jwk()})),
        );
        let a = alice.post(&key_change, Some(&taken)).await;
        assert_eq!(a.status, 409, "{}", a.body);
        assert_eq!(Some(a.location()), carol.kid);
        // Carol is another ACME account of the same team: she does not
        // see Alice's orders.
        let alices_order = alice.post(&order_list, None).await.body["orders"][0]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(carol.post(&alices_order, None).await.status, 404);

        // Revoked: the window moves into the past (renew now).
        let a = alice
            .post(
                &format!("{base}/revoke-cert"),
                Some(&json!({"certificate": URL_SAFE_NO_PAD.encode(&leaf_der), "reason": 4})),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let info: Value = run
            .client()
            .get(format!("{base}/renewal-info/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            rfc3339_secs(&info["suggestedWindow"]["end"]) < now,
            "{info}"
        );

        // A disabled team's ACME accounts stop working.
        store
            .set_account_disabled(
                &team.account.id,
                true,
                hallmark::store::AuditEvent {
                    at: ::time::OffsetDateTime::now_utc(),
                    actor: "test".into(),
                    action: "account.disable".into(),
                    subject: team.account.id.clone(),
                    details: json!({}),
                },
            )
            .await
            .unwrap();
        let a = alice.post(&order_list, None).await;
        assert_eq!((a.status, a.problem()), (401, UNAUTHORIZED), "{}", a.body);
        lab.finish().await;
    }
}
