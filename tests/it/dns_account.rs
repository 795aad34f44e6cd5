//! dns-account-01 (draft-ietf-acme-dns-account-label): the TXT record lives
//! at `_<label>._acme-challenge.<name>`, the label made from the account's
//! URL, so two accounts validate one name at once without touching each
//! other's records. Over REST and ACME, against the test DNS server.

use hallmark::validation::dns01::{account_record_name, txt_value};
use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::acme::Client;
use crate::support::dv::{csr, DvLab};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_account_01_validates_at_the_account_labelled_name_over_rest_and_acme() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let https = lab.running.https_url.clone();

        // REST: two accounts order the same name; each publishes only its
        // own labelled record.
        let mut orders = Vec::new();
        for team in ["blue", "green"] {
            let key = lab.account(team, Role::Requester).await;
            let pem = csr(
                lab.ca.dir.path(),
                team,
                "api.internal",
                "DNS:api.internal,DNS:*.api.internal",
            );
            let (status, order) = lab
                .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
                .await;
            assert_eq!(status, StatusCode::CREATED, "{order}");
            orders.push((key, order));
        }
        let (blue_key, blue) = &orders[0];
        let (green_key, green) = &orders[1];
        // The authorization of the name, or of its wildcard.
        let name_of = |order: &Value, id: &str| {
            let authz = order["authorizations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["identifier"]["value"] == id)
                .unwrap_or_else(|| panic!("no authorization for {id}: {order}"));
            let c = authz["challenges"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "dns-account-01")
                .unwrap_or_else(|| panic!("no dns-account-01 for {id}: {order}"));
            (
                c["dns_name"].as_str().unwrap().to_owned(),
                c["dns_txt"].as_str().unwrap().to_owned(),
                c["url"].as_str().unwrap().to_owned(),
            )
        };
        let (blue_name, blue_txt, blue_url) = name_of(blue, "api.internal");
        let account_url = format!(
            "{https}/api/v1/accounts/{}",
            blue["account"].as_str().unwrap()
        );
        assert_eq!(blue_name, account_record_name("api.internal", &account_url));
        let (green_name, _, green_url) = name_of(green, "api.internal");
        assert_ne!(blue_name, green_name, "each account has its own label");
        // The wildcard's challenge is at the base name, labelled the same.
        let (wild_name, wild_txt, wild_url) = name_of(blue, "*.api.internal");
        assert_eq!(wild_name, blue_name);

        lab.dns.add_txt(&blue_name, &blue_txt).await;
        lab.dns.add_txt(&wild_name, &wild_txt).await;
        for url in [&blue_url, &wild_url] {
            let path = &url[url.find("/api/v1").unwrap() + 7..];
            let (status, body) = lab.post(blue_key, path, json!({})).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
        let done = lab.settle(blue_key, blue["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "valid", "{done}");

        // Green's label has no record: blue's record does not prove it.
        let path = &green_url[green_url.find("/api/v1").unwrap() + 7..];
        let (status, _) = lab.post(green_key, path, json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let failed = lab.settle(green_key, green["id"].as_str().unwrap()).await;
        assert_eq!(failed["status"], "invalid", "{failed}");
        assert!(
            failed["error"].to_string().contains(&green_name),
            "{failed}"
        );

        // ACME: the label comes from the account URL the client knows.
        let mut acme = Client::discover(lab.running.client(), &format!("{https}/acme/directory"))
            .await
            .unwrap();
        acme.register().await;
        let kid = acme.kid.clone().unwrap();
        let order = acme
            .post(
                &acme.urls[2].clone(),
                Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}]})),
            )
            .await;
        assert_eq!(order.status, 201, "{}", order.body);
        let authz = acme
            .post(order.body["authorizations"][0].as_str().unwrap(), None)
            .await;
        let chall = authz.body["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "dns-account-01")
            .expect("dns-account-01 is offered")
            .clone();
        let token = chall["token"].as_str().unwrap();
        let key_authorization = format!("{token}.{}", acme.thumbprint());
        lab.dns
            .add_txt(
                &account_record_name("web.internal", &kid),
                &txt_value(&key_authorization),
            )
            .await;
        let answered = acme
            .post(chall["url"].as_str().unwrap(), Some(&json!({})))
            .await;
        assert_eq!(answered.status, 200, "{}", answered.body);
        let order_url = order.location();
        let ready = acme.poll(&order_url, &["pending"]).await;
        assert_eq!(ready.body["status"], "ready", "{}", ready.body);
        lab.finish().await;
    }
}

/// dns-persist-01 (draft-ietf-acme-dns-persist): one standing record at
/// `_validation-persist.<name>` naming this CA and the account authorises
/// every later order without a DNS change; a wildcard needs
/// `policy=wildcard`; another account's record proves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_persist_01_lets_a_standing_record_authorise_repeated_issuance() {
    for backend in backends() {
        let lab = DvLab::new(
            backend,
            &[
                ("HALLMARK_ACME__CAA_IDENTITIES", r#"["ca.internal"]"#.into()),
                // No reuse of earlier validations: each order validates.
                ("HALLMARK_ORDERS__REUSE_DAYS", "0".into()),
            ],
        )
        .await;
        let key = lab.account("team", Role::Requester).await;
        let order_for = |san: &'static str| {
            let pem = csr(lab.ca.dir.path(), "p", "ov.internal", san);
            let lab = &lab;
            let key = key.clone();
            async move {
                let (status, order) = lab
                    .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{order}");
                order
            }
        };
        let persist = |order: &Value, id: &str| {
            order["authorizations"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["identifier"]["value"] == id)
                .unwrap()["challenges"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "dns-persist-01")
                .unwrap_or_else(|| panic!("dns-persist-01 offered: {order}"))
                .clone()
        };
        let answer = |c: &Value| {
            let url = c["url"].as_str().unwrap().to_owned();
            let lab = &lab;
            let key = key.clone();
            async move {
                let path = &url[url.find("/api/v1").unwrap() + 7..];
                let (status, body) = lab.post(&key, path, json!({})).await;
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            }
        };

        // The record the API suggests, published once.
        let first = order_for("DNS:ov.internal").await;
        let c = persist(&first, "ov.internal");
        assert_eq!(c["dns_name"], "_validation-persist.ov.internal");
        let value = c["dns_txt"].as_str().unwrap().to_owned();
        assert!(
            value.starts_with("ca.internal; accounturi=https://"),
            "{value}"
        );
        lab.dns
            .add_txt("_validation-persist.ov.internal", &value)
            .await;
        answer(&c).await;
        let done = lab.settle(&key, first["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "valid", "{done}");

        // A second order: the same record, no DNS change.
        let second = order_for("DNS:ov.internal").await;
        answer(&persist(&second, "ov.internal")).await;
        let done = lab.settle(&key, second["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "valid", "{done}");

        // A wildcard: the record lacks policy=wildcard.
        let wild = order_for("DNS:ov.internal,DNS:*.ov.internal").await;
        answer(&persist(&wild, "*.ov.internal")).await;
        let done = lab.settle(&key, wild["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "invalid", "{done}");
        assert!(
            done["error"]
                .to_string()
                .contains("a wildcard needs policy=wildcard"),
            "{done}"
        );

        // Another account: the record names the first one.
        let other = lab.account("other", Role::Requester).await;
        let pem = csr(lab.ca.dir.path(), "o", "ov.internal", "DNS:ov.internal");
        let (_, theirs) = lab
            .post(&other, "/orders", json!({"csr": pem, "validation": "dv"}))
            .await;
        let c = persist(&theirs, "ov.internal");
        let url = c["url"].as_str().unwrap();
        lab.post(&other, &url[url.find("/api/v1").unwrap() + 7..], json!({}))
            .await;
        let done = lab.settle(&other, theirs["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "invalid", "{done}");
        assert!(
            done["error"].to_string().contains("it names the account"),
            "{done}"
        );

        // ACME: the challenge carries issuer-domain-names.
        let mut acme = Client::discover(
            lab.running.client(),
            &format!("{}/acme/directory", lab.running.https_url),
        )
        .await
        .unwrap();
        acme.register().await;
        let order = acme
            .post(
                &acme.urls[2].clone(),
                Some(&json!({"identifiers": [{"type": "dns", "value": "web.internal"}]})),
            )
            .await;
        let authz = acme
            .post(order.body["authorizations"][0].as_str().unwrap(), None)
            .await;
        let chall = authz.body["challenges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "dns-persist-01")
            .unwrap()
            .clone();
        assert_eq!(chall["issuer-domain-names"], json!(["ca.internal"]));
        let kid = acme.kid.clone().unwrap();
        lab.dns
            .add_txt(
                "_validation-persist.web.internal",
                &hallmark::validation::dns01::persist_value("ca.internal", &kid, false),
            )
            .await;
        let answered = acme
            .post(chall["url"].as_str().unwrap(), Some(&json!({})))
            .await;
        assert_eq!(answered.status, 200, "{}", answered.body);
        let ready = acme.poll(&order.location(), &["pending"]).await;
        assert_eq!(ready.body["status"], "ready", "{}", ready.body);
        lab.finish().await;
    }
}
