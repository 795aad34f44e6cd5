//! CAA (RFC 8659 / RFC 8657) checked after each successful challenge,
//! against records in the test DNS server: a record naming another CA, one
//! allowing this CA only by another validation method or for another
//! account, and `;` refuse the order with `caa`; a record naming this CA,
//! or none, lets it issue. With no `acme.caa_identities`, CAA is off.

use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::dv::{csr, DvLab};
use crate::support::*;

/// Orders `name` over REST, answers http-01 and returns the settled order.
async fn order_for(lab: &DvLab, key: &str, name: &str) -> serde_json::Value {
    let fqdn = format!("{name}.internal");
    let pem = csr(lab.ca.dir.path(), name, &fqdn, &format!("DNS:{fqdn}"));
    let (status, order) = lab
        .post(key, "/orders", json!({"csr": pem, "validation": "dv"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    lab.answer_http01(key, &order).await;
    lab.settle(key, order["id"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caa_records_decide_whether_this_ca_may_issue_after_validation() {
    let backend = backends().remove(0);
    let lab = DvLab::new(
        backend,
        &[("HALLMARK_ACME__CAA_IDENTITIES", r#"["ca.internal"]"#.into())],
    )
    .await;
    let key = lab.account("team", Role::Requester).await;

    // Naming this CA: issued.
    lab.dns
        .add_caa("web.internal", false, "ca.internal", &[])
        .await;
    let order = order_for(&lab, &key, "web").await;
    assert_eq!(order["status"], "valid", "{order}");

    // Reused at once (the CAA check is recent)...
    let pem = csr(
        lab.ca.dir.path(),
        "again",
        "web.internal",
        "DNS:web.internal",
    );
    let (_, again) = lab
        .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
        .await;
    assert_eq!(again["status"], "valid", "{again}");
    // ...but not once the validation is older than the 8-hour CAA bound:
    // the name is validated, and CAA-checked, again.
    lab.ca
        .db
        .execute("UPDATE authorizations SET validated_at = validated_at - 9 * 3600")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let (_, stale) = lab
        .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
        .await;
    assert_eq!(stale["status"], "pending", "{stale}");

    for (name, issuer, parameters, why) in [
        (
            "api",
            "otherca.example",
            vec![],
            "CAA names \"otherca.example\", not this CA",
        ),
        (
            "ov",
            "ca.internal",
            vec![("validationmethods", "dns-01")],
            "CAA allows this CA only by dns-01, not http-01",
        ),
        (
            "alpn",
            "ca.internal",
            vec![("accounturi", "https://elsewhere.internal/acme/account/1")],
            "CAA allows this CA only for the account https://elsewhere.internal/acme/account/1",
        ),
    ] {
        lab.dns
            .add_caa(&format!("{name}.internal"), false, issuer, &parameters)
            .await;
        let order = order_for(&lab, &key, name).await;
        assert_eq!(order["status"], "invalid", "{name}: {order}");
        let error = &order["error"];
        assert_eq!(error["type"], "urn:ietf:params:acme:error:caa", "{error}");
        let detail = error["detail"].as_str().unwrap_or("");
        assert!(
            detail.contains(why) && detail.contains(&format!("{name}.internal")),
            "{name}: {detail}"
        );
    }
    lab.finish().await;

    // Without caa_identities, CAA is not consulted.
    let lab = DvLab::new(backend, &[]).await;
    let key = lab.account("team", Role::Requester).await;
    lab.dns
        .add_caa("api.internal", false, "otherca.example", &[])
        .await;
    let order = order_for(&lab, &key, "api").await;
    assert_eq!(order["status"], "valid", "{order}");
    lab.finish().await;
}
