//! ACME pieces beyond the client: external account binding JWSs and
//! renewal-information ids.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};

/// The `externalAccountBinding` member for `jwk`, MACed with `key`.
pub fn binding(kid: &str, key: &[u8], url: &str, jwk: &Value) -> Value {
    let protected =
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "kid": kid, "url": url}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(jwk.to_string());
    let mac = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        format!("{protected}.{payload}").as_bytes(),
    );
    json!({"protected": protected, "payload": payload, "signature": URL_SAFE_NO_PAD.encode(mac.as_ref())})
}

/// The ARI certificate id of a PEM certificate.
pub fn ari_id(pem: &str) -> String {
    hallmark::client::renewal_id(pem).unwrap()
}
