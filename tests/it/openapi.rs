//! `GET /api/openapi.json` describes what the server really does: every
//! documented operation answers with a documented status, and real
//! answers match the documented schemas — no field missing, none extra.

use hallmark::workflow::accounts::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::dv::DvLab;
use crate::support::*;

/// Checks `value` against a JSON Schema subset (`$ref`, `type`, `enum`,
/// `required`, `properties`, `additionalProperties: false`, `items`).
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        return check(doc, target, value, at, errors);
    }
    if let Some(types) = match &schema["type"] {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    } {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let ok = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !ok {
            errors.push(format!("{at}: {actual} where the schema says {types:?}"));
            return;
        }
    }
    if let (Some(allowed), false) = (schema["enum"].as_array(), value.is_null()) {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} is not one of {allowed:?}"));
        }
    }
    if let Value::Object(map) = value {
        for field in schema["required"].as_array().into_iter().flatten() {
            let field = field.as_str().unwrap();
            if !map.contains_key(field) {
                errors.push(format!("{at}: required field {field:?} is missing"));
            }
        }
        let properties = schema["properties"].as_object();
        for (key, v) in map {
            match properties.and_then(|p| p.get(key)) {
                Some(sub) => check(doc, sub, v, &format!("{at}.{key}"), errors),
                None if schema["additionalProperties"] == false => {
                    errors.push(format!("{at}: field {key:?} is not documented"))
                }
                None => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, v) in items.iter().enumerate() {
            check(doc, item_schema, v, &format!("{at}[{i}]"), errors);
        }
    }
}

fn assert_matches(doc: &Value, schema_name: &str, value: &Value) {
    let mut errors = Vec::new();
    check(
        doc,
        &json!({"$ref": format!("#/components/schemas/{schema_name}")}),
        value,
        schema_name,
        &mut errors,
    );
    assert!(errors.is_empty(), "{errors:#?}\nin {value:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_server() {
    for backend in backends() {
        let lab = DvLab::new(backend, &[]).await;
        let key = lab.account("team docs", Role::Requester).await;
        let reviewer = lab.account("reviewers", Role::Reviewer).await;
        let client = lab.running.client();

        let r = client
            .get(format!("{}/api/openapi.json", lab.running.https_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "application/json");
        let doc: Value = r.json().await.unwrap();
        assert_eq!(doc["openapi"], "3.1.0");

        // Every documented operation exists and answers a documented status.
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" {
                    continue;
                }
                operations += 1;
                let url = format!(
                    "{}{}",
                    lab.running.https_url,
                    path.replace("{id}", "ord_missing")
                        .replace("{challenge_id}", "chall_missing")
                        .replace("{serial}", &"0".repeat(32))
                );
                let request = match method.as_str() {
                    "get" => client.get(&url),
                    "post" => client.post(&url).json(&json!({})),
                    other => panic!("unexpected method {other}"),
                };
                let r = request.bearer_auth(&key).send().await.unwrap();
                let status = r.status();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                assert!(
                    op["responses"].get(status.as_str()).is_some(),
                    "{method} {path} answered {status}, which is not documented: {body}"
                );
                if status.is_client_error() {
                    assert_ne!(
                        body["detail"], "there is nothing at this path",
                        "{method} {path} is documented but not routed"
                    );
                    assert_matches(&doc, "Problem", &body);
                }
            }
        }
        assert!(operations >= 9, "{operations}");

        // Real answers match their schemas.
        let (_, account) = lab.get(&key, "/account").await;
        assert_matches(&doc, "Account", &account);
        let dir = lab.ca.dir.path();
        let pem = String::from_utf8(openssl_csr(
            dir,
            "docs",
            P256,
            "/CN=web.internal",
            Some("DNS:web.internal,IP:127.0.0.1,DNS:*.apps.internal"),
        ))
        .unwrap();
        let (status, order) = lab
            .post(&key, "/orders", json!({"csr": pem, "validation": "dv"}))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_matches(&doc, "Order", &order);
        // A failed validation: the error documents match too.
        let c = order["authorizations"][0]["challenges"][0].clone();
        let url = c["url"].as_str().unwrap();
        let path = &url[url.find("/api/v1").unwrap() + 7..];
        let (status, accepted) = lab.post(&key, path, json!({})).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_matches(&doc, "Order", &accepted);
        let failed = lab.settle(&key, order["id"].as_str().unwrap()).await;
        assert_eq!(failed["status"], "invalid");
        assert_matches(&doc, "Order", &failed);

        // A valid OV order with its certificate, and the lists.
        let pem = String::from_utf8(openssl_csr(
            dir,
            "docs-ov",
            P256,
            "/CN=ov.internal",
            Some("DNS:ov.internal"),
        ))
        .unwrap();
        let (_, ov) = lab
            .post(
                &key,
                "/orders",
                json!({"csr": pem, "validation": "ov", "organization": {"name": "Docs Ltd", "country": "GB"}}),
            )
            .await;
        lab.answer_http01(&key, &ov).await;
        let id = ov["id"].as_str().unwrap();
        let waiting = lab.settle(&key, id).await;
        assert_eq!(waiting["status"], "awaiting_approval");
        let (status, approved) = lab
            .post(&reviewer, &format!("/orders/{id}/approve"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{approved}");
        assert_matches(&doc, "Order", &approved);
        let serial = approved["certificate_serial"].as_str().unwrap();
        let (_, cert) = lab.get(&key, &format!("/certificates/{serial}")).await;
        assert_matches(&doc, "Certificate", &cert);
        let (_, certs) = lab.get(&key, "/certificates?status=valid").await;
        assert_matches(&doc, "CertificateList", &certs);
        assert_eq!(certs["certificates"][0]["serial"], serial);
        let (status, revoked) = lab
            .post(
                &key,
                &format!("/certificates/{serial}/revoke"),
                json!({"reason": "superseded"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{revoked}");
        assert_matches(&doc, "Certificate", &revoked);
        let (status, again) = lab
            .post(&key, &format!("/certificates/{serial}/revoke"), json!({}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_matches(&doc, "Problem", &again);
        let (_, list) = lab.get(&key, "/orders?limit=1").await;
        assert_matches(&doc, "OrderList", &list);
        assert!(list["next"].is_string());
        lab.finish().await;
    }
}
