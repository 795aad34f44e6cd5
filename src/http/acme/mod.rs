//! ACME (RFC 8555) on the HTTPS listener, sharing the order workflow and
//! validators with the REST API (one engine, two front doors).
//!
//! Every POST is a JWS checked here in one place (`verify`), cheapest
//! first: the nonce's MAC and expiry (nonces are made without the
//! database: expiry and random bits under an HMAC key every instance
//! shares), the `url` header equal to the URL requested, `kid` naming a
//! valid account (or `jwk` where the RFC allows it), the signature — and
//! only then the nonce's single use, recorded in the database so it holds
//! on every instance. Account changes go through
//! `workflow::acme_accounts`. Every answer carries a fresh `Replay-Nonce`
//! and `Link: <directory>;rel="index"`.

pub mod jws;

use crate::acme_error::AcmeError;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use self::jws::{thumbprint, ExternalBinding, Jws};
use super::problem::Problem;
use super::server::ClientAddr;
use super::AppState;
use crate::pki::crl::RevocationReason;
use crate::pki::{pem_encode, Identifier, Serial};
use crate::store::{AcmeAccountRecord, OrderBundle, OrderStatus, StoreError};
use crate::workflow::accounts::{Caller, Role};
use crate::workflow::acme_accounts::{self, AcmeAccountError, Registration};
use crate::workflow::limits::address_key;
use crate::workflow::revocation::{RevokeRequest, Revoker};

/// How long a nonce may wait for its request.
const NONCE_LIFETIME_SECS: i64 = 3600;

/// Routes under `/acme`.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/acme/directory", get(directory))
        .route("/acme/new-nonce", get(new_nonce).head(new_nonce))
        .route("/acme/new-account", post(new_account))
        .route("/acme/account/{id}", post(account))
        .route("/acme/account/{id}/orders", post(account_orders))
        .route("/acme/new-order", post(new_order))
        .route("/acme/order/{id}", post(order))
        .route("/acme/order/{id}/finalize", post(finalize))
        .route("/acme/authz/{id}", post(authorization))
        .route("/acme/chall/{id}", post(challenge))
        .route("/acme/cert/{serial}", post(certificate))
        .route("/acme/revoke-cert", post(revoke_cert))
        .route("/acme/key-change", post(key_change))
        .route("/acme/renewal-info/{id}", get(renewal_info))
}

fn base(state: &AppState) -> String {
    format!("{}/acme", state.public_https_url)
}

/// A fresh nonce, made without touching the database: its expiry and 64
/// random bits, MACed with the key every instance shares
/// (base64url of expiry ‖ random ‖ 128-bit HMAC-SHA256 tag). Any instance
/// can check it; [`check_nonce`] records its use so it works once.
fn fresh_nonce(state: &AppState) -> String {
    let expires = time::OffsetDateTime::now_utc().unix_timestamp() + NONCE_LIFETIME_SECS;
    let mut raw = [0u8; 32];
    raw[..8].copy_from_slice(&expires.to_be_bytes());
    raw[8..16].copy_from_slice(&rand::random::<[u8; 8]>());
    let tag = ring::hmac::sign(&state.acme_nonce_key, &raw[..16]);
    raw[16..].copy_from_slice(&tag.as_ref()[..16]);
    URL_SAFE_NO_PAD.encode(raw)
}

/// When `nonce` expires, if it is one of ours and unexpired: checked by
/// its MAC alone, without the database. Whether it was used before is
/// [`use_nonce`]'s question, asked only once the signature has verified.
fn nonce_expiry(state: &AppState, nonce: &str, now: i64) -> Option<i64> {
    use subtle::ConstantTimeEq;
    let raw = match URL_SAFE_NO_PAD.decode(nonce) {
        Ok(r) if r.len() == 32 => r,
        _ => return None,
    };
    let tag = ring::hmac::sign(&state.acme_nonce_key, &raw[..16]);
    if !bool::from(tag.as_ref()[..16].ct_eq(&raw[16..])) {
        return None;
    }
    let mut expiry = [0u8; 8];
    expiry.copy_from_slice(&raw[..8]);
    let expires = i64::from_be_bytes(expiry);
    (expires >= now).then_some(expires)
}

/// Records the use of a nonce [`nonce_expiry`] accepted; false if it was
/// used before (shared by every instance).
async fn use_nonce(
    state: &AppState,
    nonce: &str,
    expires: i64,
    now: i64,
) -> Result<bool, StoreError> {
    acme_accounts::use_nonce(state.authority.store().as_ref(), nonce, expires, now).await
}

/// Adds `Replay-Nonce`, `Link: rel="index"` and `Cache-Control: no-store`.
async fn finish(state: &AppState, mut response: Response) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&fresh_nonce(state)) {
        headers.insert("replay-nonce", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("<{}/directory>;rel=\"index\"", base(state))) {
        headers.append(header::LINK, v);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn directory(State(state): State<Arc<AppState>>) -> Response {
    let b = base(&state);
    let settings = &state.acme;
    let mut meta = json!({
        "website": if settings.website.is_empty() { &state.public_https_url } else { &settings.website },
        "externalAccountRequired": settings.eab_required,
    });
    if !settings.terms_of_service.is_empty() {
        meta["termsOfService"] = json!(settings.terms_of_service);
    }
    if !settings.caa_identities.is_empty() {
        meta["caaIdentities"] = json!(settings.caa_identities);
    }
    let body = json!({
        "newNonce": format!("{b}/new-nonce"),
        "newAccount": format!("{b}/new-account"),
        "newOrder": format!("{b}/new-order"),
        "revokeCert": format!("{b}/revoke-cert"),
        "keyChange": format!("{b}/key-change"),
        "renewalInfo": format!("{b}/renewal-info"),
        "meta": meta,
    });
    finish(&state, Json(body).into_response()).await
}

/// A per-address limit's refusal.
fn too_many(what: &str, retry_after_secs: u64) -> Problem {
    Problem::rate_limited(
        retry_after_secs,
        format!("too many {what} from your address; retry after {retry_after_secs} seconds"),
    )
}

async fn new_nonce(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    method: Method,
) -> Response {
    if let Err(secs) = state.limits.new_nonce.take(address_key(client)) {
        return too_many("newNonce requests", secs).into_response();
    }
    let status = if method == Method::HEAD {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    };
    finish(&state, status.into_response()).await
}

/// A verified request: its JWS and the account that signed it (none for
/// `jwk` requests).
struct Verified {
    jws: Jws,
    account: Option<AcmeAccountRecord>,
}

impl Verified {
    fn account(&self) -> &AcmeAccountRecord {
        self.account.as_ref().expect("kid requests have an account")
    }

    /// The hallmark account acting, as the order workflow sees it.
    fn caller(&self) -> Caller {
        let a = self.account();
        Caller {
            account_id: a.account_id.clone(),
            name: format!("acme:{}", a.id),
            role: Role::Requester,
            actor: format!("acme:{}", a.id),
        }
    }

    /// The JSON payload, or a `malformed` problem.
    fn payload(&self) -> Result<Value, Problem> {
        self.jws.json().map_err(|e| {
            Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, e.to_string())
        })
    }

    fn is_post_as_get(&self) -> bool {
        self.jws.payload.is_empty()
    }
}

/// Test-only (`danger_acme_chaos`): whether to refuse this valid nonce.
fn refused_by_chaos(state: &AppState) -> bool {
    let Some(every) = state
        .danger_acme_chaos
        .map(|c| u64::from(c.reject_every_nth_nonce))
        .filter(|n| *n > 0)
    else {
        return false;
    };
    let n = state
        .acme_nonce_uses
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (n + 1) % every == 0
}

/// Checks nonce, url, key and signature, cheapest first: the nonce's MAC
/// and the url cost nothing, the signature a verification, and only a
/// request whose signature verified uses up its nonce (a database write).
/// `jwk_ok`: this resource takes a `jwk` (newAccount) instead of a `kid`.
async fn verify(
    state: &AppState,
    uri: &Uri,
    body: &[u8],
    jwk_ok: bool,
) -> Result<Verified, Problem> {
    let bad = StatusCode::BAD_REQUEST;
    let jws = Jws::parse(body).map_err(|e| Problem::acme(bad, e.acme_code(), e.to_string()))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let bad_nonce = || {
        Problem::acme(
            bad,
            AcmeError::BadNonce,
            "the nonce is unknown, used or expired; retry with the one in this answer's Replay-Nonce",
        )
    };
    let nonce = jws.protected.nonce.clone().ok_or_else(|| {
        Problem::acme(bad, AcmeError::BadNonce, "the JWS header has no \"nonce\"")
    })?;
    let expires = nonce_expiry(state, &nonce, now).ok_or_else(bad_nonce)?;
    let expected = format!("{}{}", state.public_https_url, uri.path());
    if jws.protected.url != expected {
        return Err(Problem::acme(
            StatusCode::UNAUTHORIZED,
            AcmeError::Unauthorized,
            format!(
                "the JWS \"url\" is {:?} but the request went to {expected:?}",
                jws.protected.url
            ),
        ));
    }
    let verified = verify_signature(state, jws, jwk_ok).await?;
    if !use_nonce(state, &nonce, expires, now).await? || refused_by_chaos(state) {
        return Err(bad_nonce());
    }
    Ok(verified)
}

/// The key and signature of a JWS whose nonce and url were checked.
async fn verify_signature(state: &AppState, jws: Jws, jwk_ok: bool) -> Result<Verified, Problem> {
    let bad = StatusCode::BAD_REQUEST;
    let store = state.authority.reads();
    match (&jws.protected.kid, &jws.protected.jwk) {
        (Some(kid), None) => {
            let prefix = format!("{}/account/", base(state));
            let id = kid.strip_prefix(&prefix).unwrap_or("");
            let account = if id.is_empty() {
                None
            } else {
                store.acme_account(id).await?
            };
            let Some(account) = account else {
                return Err(Problem::acme(
                    bad,
                    AcmeError::AccountDoesNotExist,
                    format!("there is no account {kid:?}"),
                ));
            };
            if account.status != "valid" {
                return Err(Problem::acme(
                    StatusCode::UNAUTHORIZED,
                    AcmeError::Unauthorized,
                    format!("the account is {}", account.status),
                ));
            }
            if account.owner_disabled {
                return Err(Problem::acme(
                    StatusCode::UNAUTHORIZED,
                    AcmeError::Unauthorized,
                    "the hallmark account this ACME account belongs to is disabled",
                ));
            }
            let jwk: Value = serde_json::from_str(&account.jwk)
                .map_err(|e| Problem::internal(&StoreError::Corrupt(e.to_string())))?;
            jws.verify(&jwk)
                .map_err(|e| Problem::acme(bad, e.acme_code(), e.to_string()))?;
            Ok(Verified {
                jws,
                account: Some(account),
            })
        }
        (None, Some(jwk)) if jwk_ok => {
            jws.verify(jwk)
                .map_err(|e| Problem::acme(bad, e.acme_code(), e.to_string()))?;
            Ok(Verified { jws, account: None })
        }
        (None, Some(_)) => Err(Problem::acme(
            bad,
            AcmeError::Malformed,
            "this request must be signed with the account's \"kid\", not a \"jwk\"",
        )),
        _ => Err(Problem::acme(
            bad,
            AcmeError::Malformed,
            "the JWS header must have one of \"jwk\" and \"kid\"",
        )),
    }
}

/// Runs a handler body after verification, adding the ACME headers to
/// whatever it answers (problems included).
async fn respond(state: &AppState, result: Result<Response, Problem>) -> Response {
    let response = match result {
        Ok(r) => r,
        Err(p) => p.into_response(),
    };
    finish(state, response).await
}

/// The ACME problem for an account change the workflow refused.
fn account_problem(e: AcmeAccountError) -> Problem {
    match e {
        AcmeAccountError::BindingUsed => Problem::acme(
            StatusCode::UNAUTHORIZED,
            AcmeError::Unauthorized,
            e.to_string(),
        ),
        AcmeAccountError::Gone => Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::AccountDoesNotExist,
            e.to_string(),
        ),
        AcmeAccountError::Store(s) => s.into(),
    }
}

fn account_json(state: &AppState, a: &AcmeAccountRecord) -> Value {
    let contact: Value = serde_json::from_str(&a.contact).unwrap_or(json!([]));
    json!({
        "status": a.status,
        "contact": contact,
        "orders": format!("{}/account/{}/orders", base(state), a.id),
    })
}

fn with_location(status: StatusCode, location: &str, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn contacts(payload: &Value) -> Result<Option<String>, Problem> {
    let Some(c) = payload.get("contact") else {
        return Ok(None);
    };
    let list = c.as_array().ok_or_else(|| {
        Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::Malformed,
            "\"contact\" must be an array",
        )
    })?;
    for item in list {
        let ok = item
            .as_str()
            .is_some_and(|s| s.starts_with("mailto:") && s.len() <= 254 && !s.contains(','));
        if !ok {
            return Err(Problem::acme(
                StatusCode::BAD_REQUEST,
                AcmeError::InvalidContact,
                "each contact must be one mailto: URL",
            ));
        }
    }
    Ok(Some(c.to_string()))
}

/// Checks a newAccount's external account binding (RFC 8555 §7.3.4): the
/// EAB JWS names an unused key, is for this URL, covers the account's JWK
/// and carries a valid MAC. Returns the key, whose account will own the
/// new ACME account.
async fn check_binding(
    state: &AppState,
    uri: &Uri,
    eab: &Value,
    jwk: &Value,
) -> Result<crate::store::EabKeyRecord, Problem> {
    let refused =
        |detail: &str| Problem::acme(StatusCode::UNAUTHORIZED, AcmeError::Unauthorized, detail);
    let binding = ExternalBinding::parse(eab)
        .map_err(|e| Problem::acme(StatusCode::BAD_REQUEST, e.acme_code(), e.to_string()))?;
    let expected = format!("{}{}", state.public_https_url, uri.path());
    if binding.url != expected {
        return Err(refused(
            "the external account binding's \"url\" is not this newAccount URL",
        ));
    }
    if serde_json::from_slice::<Value>(&binding.payload)
        .ok()
        .as_ref()
        != Some(jwk)
    {
        return Err(refused(
            "the external account binding does not cover this account's key",
        ));
    }
    let key = state.authority.reads().eab_key(&binding.kid).await?;
    let Some(key) = key.filter(|k| k.used_at.is_none() && !k.hmac_key.is_empty()) else {
        return Err(refused(
            "the external account binding key is unknown or already used; ask an administrator for a new one",
        ));
    };
    binding
        .verify(&key.hmac_key)
        .map_err(|_| refused("the external account binding's MAC does not verify with its key"))?;
    Ok(key)
}

async fn new_account(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    body: Bytes,
) -> Response {
    let result = async {
        state
            .limits
            .new_account
            .take(address_key(client))
            .map_err(|secs| too_many("newAccount requests", secs))?;
        let v = verify(&state, &uri, &body, true).await?;
        let payload = v.payload()?;
        let jwk = v.jws.protected.jwk.clone().unwrap_or_default();
        let thumb = thumbprint(&jwk)
            .map_err(|e| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, e.to_string()))?;
        let store = state.authority.reads();
        if let Some(existing) = store.acme_account_by_key(&thumb).await? {
            let url = format!("{}/account/{}", base(&state), existing.id);
            return Ok(with_location(
                StatusCode::OK,
                &url,
                account_json(&state, &existing),
            ));
        }
        if payload.get("onlyReturnExisting").and_then(Value::as_bool) == Some(true) {
            return Err(Problem::acme(
                StatusCode::BAD_REQUEST,
                AcmeError::AccountDoesNotExist,
                "no account exists for this key",
            ));
        }
        let tos = &state.acme.terms_of_service;
        if !tos.is_empty()
            && payload.get("termsOfServiceAgreed").and_then(Value::as_bool) != Some(true)
        {
            return Err(Problem::acme(
                StatusCode::BAD_REQUEST,
                AcmeError::Malformed,
                format!("agree to the terms of service at {tos} (\"termsOfServiceAgreed\": true)"),
            ));
        }
        let binding = match payload.get("externalAccountBinding") {
            Some(eab) => Some(check_binding(&state, &uri, eab, &jwk).await?),
            None if state.acme.eab_required => {
                return Err(Problem::acme(
                    StatusCode::UNAUTHORIZED,
                    AcmeError::ExternalAccountRequired,
                    "this CA needs an external account binding: ask an administrator for a key (hallmark account eab-key) and pass its kid and HMAC key to your client",
                ))
            }
            None => None,
        };
        let contact = contacts(&payload)?.unwrap_or_else(|| "[]".into());
        let acme = acme_accounts::register(
            state.authority.store().as_ref(),
            Registration {
                jwk: jwk.to_string(),
                thumbprint: thumb,
                contact,
                binding: binding.map(|key| (key.kid, key.account_id)),
            },
        )
        .await
        .map_err(account_problem)?;
        let id = &acme.id;
        let url = format!("{}/account/{id}", base(&state));
        Ok(with_location(
            StatusCode::CREATED,
            &url,
            account_json(&state, &acme),
        ))
    }
    .await;
    respond(&state, result).await
}

async fn account(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let a = v.account();
        if a.id != id {
            return Err(Problem::acme(
                StatusCode::UNAUTHORIZED,
                AcmeError::Unauthorized,
                "this is not your account",
            ));
        }
        if v.is_post_as_get() {
            return Ok(Json(account_json(&state, a)).into_response());
        }
        let payload = v.payload()?;
        let contact = contacts(&payload)?;
        let deactivate = payload.get("status").and_then(Value::as_str) == Some("deactivated");
        let updated = acme_accounts::update(
            state.authority.store().as_ref(),
            &id,
            contact.as_deref(),
            deactivate,
        )
        .await
        .map_err(account_problem)?;
        Ok(Json(account_json(&state, &updated)).into_response())
    }
    .await;
    respond(&state, result).await
}

async fn account_orders(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        if v.account().id != id {
            return Err(Problem::acme(
                StatusCode::UNAUTHORIZED,
                AcmeError::Unauthorized,
                "this is not your account",
            ));
        }
        let orders = state
            .authority
            .reads()
            .orders(&crate::store::OrderQuery {
                account_id: Some(v.account().account_id.clone()),
                status: None,
                before: None,
                limit: 100,
            })
            .await?;
        let urls: Vec<String> = orders
            .iter()
            .filter(|o| o.source == "acme")
            .map(|o| format!("{}/order/{}", base(&state), o.id))
            .collect();
        Ok(Json(json!({ "orders": urls })).into_response())
    }
    .await;
    respond(&state, result).await
}

/// The ACME name of an order status (OV states never occur for ACME).
fn order_status(s: OrderStatus) -> &'static str {
    match s {
        OrderStatus::Pending => "pending",
        OrderStatus::Ready => "ready",
        OrderStatus::Processing => "processing",
        OrderStatus::Valid => "valid",
        _ => "invalid",
    }
}

fn rfc3339(t: i64) -> String {
    crate::workflow::rfc3339(t)
}

fn identifier_json(kind: &str, value: &str) -> Value {
    json!({"type": kind, "value": value})
}

fn order_json(state: &AppState, b: &OrderBundle) -> Value {
    let base = base(state);
    let o = &b.order;
    let mut v = json!({
        "status": order_status(o.status),
        "expires": rfc3339(o.expires_at),
        "identifiers": b.authorizations.iter().map(|a| identifier_json(&a.authorization.identifier_type, &a.authorization.identifier_value)).collect::<Vec<_>>(),
        "authorizations": b.authorizations.iter().map(|a| format!("{base}/authz/{}", a.authorization.id)).collect::<Vec<_>>(),
        "finalize": format!("{base}/order/{}/finalize", o.id),
    });
    if let Some(serial) = &o.certificate_serial {
        v["certificate"] = json!(format!("{base}/cert/{serial}"));
    }
    if let Some(t) = o.not_after {
        v["notAfter"] = json!(rfc3339(t));
    }
    if let Some(err) = o
        .error
        .as_deref()
        .and_then(|e| serde_json::from_str::<Value>(e).ok())
    {
        v["error"] = err;
    }
    v
}

fn order_response(state: &AppState, b: &OrderBundle, status: StatusCode) -> Response {
    let url = format!("{}/order/{}", base(state), b.order.id);
    let mut r = with_location(status, &url, order_json(state, b));
    if b.order.status == OrderStatus::Processing {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

fn parse_identifiers(payload: &Value) -> Result<Vec<Identifier>, Problem> {
    let bad = |d: &str| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, d);
    let list = payload
        .get("identifiers")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("a new order needs \"identifiers\""))?;
    list.iter()
        .map(|i| {
            let value = i
                .get("value")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("an identifier needs a \"value\""))?;
            match i.get("type").and_then(Value::as_str) {
                Some("dns") => Ok(Identifier::Dns(value.to_owned())),
                Some("ip") => value
                    .parse()
                    .map(Identifier::Ip)
                    .map_err(|_| bad(&format!("{value:?} is not an IP address"))),
                _ => Err(Problem::acme(
                    StatusCode::BAD_REQUEST,
                    AcmeError::UnsupportedIdentifier,
                    "identifiers are of type \"dns\" or \"ip\"",
                )),
            }
        })
        .collect()
}

async fn new_order(State(state): State<Arc<AppState>>, uri: Uri, body: Bytes) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let payload = v.payload()?;
        let bad = |d: String| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, d);
        let when = |key: &str| -> Result<Option<time::OffsetDateTime>, Problem> {
            match payload.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(t)) => time::OffsetDateTime::parse(
                    t,
                    &time::format_description::well_known::Rfc3339,
                )
                .map(Some)
                .map_err(|_| bad(format!("{key} {t:?} is not an RFC 3339 date-time"))),
                Some(_) => Err(bad(format!("{key} must be an RFC 3339 date-time string"))),
            }
        };
        // Certificates start now (backdated a minute for clock skew): a
        // notBefore is accepted only if it is about now.
        if let Some(nb) = when("notBefore")? {
            let skew = (nb - time::OffsetDateTime::now_utc()).abs();
            if skew > time::Duration::minutes(5) {
                return Err(bad(format!(
                    "notBefore must be now or left out (it is {}); hallmark neither back- nor post-dates certificates",
                    rfc3339(nb.unix_timestamp())
                )));
            }
        }
        let not_after = when("notAfter")?;
        if let Some(replaces) = payload.get("replaces") {
            let id = replaces.as_str().unwrap_or_default();
            let cert = renewal_target(&state, id).await?;
            if cert.account_id.as_deref() != Some(v.account().account_id.as_str()) {
                return Err(bad(format!(
                    "\"replaces\" names {id:?}, a certificate this account did not order"
                )));
            }
        }
        let identifiers = parse_identifiers(&payload)?;
        let bundle = state
            .orders
            .create_acme(&v.caller(), &v.account().id, &identifiers, not_after)
            .await?;
        Ok(order_response(&state, &bundle, StatusCode::CREATED))
    }
    .await;
    respond(&state, result).await
}

async fn order(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let bundle = acme_order(&state, &v, &id).await?;
        Ok(order_response(&state, &bundle, StatusCode::OK))
    }
    .await;
    respond(&state, result).await
}

async fn finalize(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let payload = v.payload()?;
        let csr = payload
            .get("csr")
            .and_then(Value::as_str)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c.trim_end_matches('=')).ok())
            .ok_or_else(|| {
                Problem::acme(
                    StatusCode::BAD_REQUEST,
                    AcmeError::Malformed,
                    "finalize needs \"csr\": the DER CSR in base64url",
                )
            })?;
        let bundle = state
            .orders
            .finalize(&v.caller(), &v.account().id, &id, &csr)
            .await?;
        Ok(order_response(&state, &bundle, StatusCode::OK))
    }
    .await;
    respond(&state, result).await
}

/// An order this ACME account opened; any other is a 404, even one of
/// another ACME account of the same hallmark account.
async fn acme_order(state: &AppState, v: &Verified, id: &str) -> Result<OrderBundle, Problem> {
    Ok(state
        .orders
        .get_acme(&v.caller(), &v.account().id, id)
        .await?)
}

/// `authz_<key>_<n>` and `chall_<key>_<n>_<x>` belong to `ord_<key>`
/// (the key is base64url and may itself hold `_`, so split from the end).
fn order_of(id: &str, prefix: &str) -> Option<String> {
    let rest = id.strip_prefix(prefix)?;
    let tail_segments = if prefix == "chall_" { 2 } else { 1 };
    let mut key = rest;
    for _ in 0..tail_segments {
        key = key.rsplit_once('_')?.0;
    }
    (!key.is_empty()).then(|| format!("ord_{key}"))
}

fn challenge_json(state: &AppState, c: &crate::store::ChallengeRecord) -> Value {
    let mut v = json!({
        "type": c.kind,
        "url": format!("{}/chall/{}", base(state), c.id),
        "token": c.token,
        "status": match c.status.as_str() { "processing" => "processing", s => s },
    });
    if let Some(t) = c.validated_at {
        v["validated"] = json!(rfc3339(t));
    }
    if let Some(err) = c
        .error
        .as_deref()
        .and_then(|e| serde_json::from_str::<Value>(e).ok())
    {
        v["error"] = err;
    }
    v
}

fn authz_json(state: &AppState, a: &crate::store::AuthorizationBundle) -> Value {
    let r = &a.authorization;
    let value = r
        .identifier_value
        .strip_prefix("*.")
        .unwrap_or(&r.identifier_value);
    let mut v = json!({
        "identifier": identifier_json(&r.identifier_type, value),
        "status": r.status,
        "expires": rfc3339(r.expires_at),
        "challenges": a.challenges.iter().map(|c| challenge_json(state, c)).collect::<Vec<_>>(),
    });
    if r.wildcard {
        v["wildcard"] = json!(true);
    }
    v
}

async fn authorization(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let not_found = || Problem::not_found(format!("there is no authorization {id:?}"));
        let order_id = order_of(&id, "authz_").ok_or_else(not_found)?;
        let bundle = acme_order(&state, &v, &order_id)
            .await
            .map_err(|_| not_found())?;
        let authz = bundle
            .authorizations
            .iter()
            .find(|a| a.authorization.id == id)
            .ok_or_else(not_found)?;
        Ok(Json(authz_json(&state, authz)).into_response())
    }
    .await;
    respond(&state, result).await
}

async fn challenge(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let not_found = || Problem::not_found(format!("there is no challenge {id:?}"));
        let order_id = order_of(&id, "chall_").ok_or_else(not_found)?;
        let caller = v.caller();
        let mut bundle = acme_order(&state, &v, &order_id)
            .await
            .map_err(|_| not_found())?;
        let find = |b: &OrderBundle| {
            b.authorizations
                .iter()
                .flat_map(|a| a.challenges.iter())
                .find(|c| c.id == id)
                .cloned()
        };
        let current = find(&bundle).ok_or_else(not_found)?;
        if !v.is_post_as_get() && current.status == "pending" {
            // The client says it is ready: validate (in the background).
            bundle = state.orders.respond(&caller, &order_id, &id).await?;
        }
        let c = find(&bundle).ok_or_else(not_found)?;
        let authz_url = format!("{}/authz/{}", base(&state), c.authorization_id);
        let mut r = Json(challenge_json(&state, &c)).into_response();
        if let Ok(link) = HeaderValue::from_str(&format!("<{authz_url}>;rel=\"up\"")) {
            r.headers_mut().append(header::LINK, link);
        }
        Ok(r)
    }
    .await;
    respond(&state, result).await
}

async fn certificate(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    Path(serial): Path<String>,
    _headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let not_found = || Problem::not_found(format!("there is no certificate {serial:?}"));
        let parsed: Serial = serial.parse().map_err(|_| not_found())?;
        let cert = match state.authority.reads().certificate(&parsed).await {
            Err(StoreError::NotFound) => return Err(not_found()),
            other => other?,
        };
        if cert.account_id.as_deref() != Some(v.account().account_id.as_str()) {
            return Err(not_found());
        }
        let issuer = state.authority.issuer().certificate();
        let chain = format!("{}{}", pem_encode("CERTIFICATE", &cert.der), issuer.pem());
        Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(crate::http::api::PEM_CHAIN),
            )],
            chain,
        )
            .into_response())
    }
    .await;
    respond(&state, result).await
}

/// Whether `jwk` is the public key of the certificate `der`.
fn jwk_matches_certificate(jwk: &Value, der: &[u8]) -> bool {
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::PublicKey;
    let Ok(key) = jws::PublicJwk::from_jwk(jwk) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(der) else {
        return false;
    };
    let spki = cert.public_key();
    let bits = spki.subject_public_key.data.as_ref();
    match key {
        jws::PublicJwk::P256(p) | jws::PublicJwk::P384(p) | jws::PublicJwk::Ed25519(p) => p == bits,
        jws::PublicJwk::Rsa { n, e } => match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => {
                let trim = |b: &[u8]| {
                    b.iter()
                        .skip_while(|x| **x == 0)
                        .copied()
                        .collect::<Vec<u8>>()
                };
                trim(rsa.modulus) == trim(&n) && trim(rsa.exponent) == trim(&e)
            }
            _ => false,
        },
    }
}

/// revokeCert (RFC 8555 §7.6): signed by the account that owns the
/// certificate (`kid`) or by the certificate's own key (`jwk`).
async fn revoke_cert(
    State(state): State<Arc<AppState>>,
    ClientAddr(client): ClientAddr,
    uri: Uri,
    body: Bytes,
) -> Response {
    let result = async {
        // Signed by a certificate's key, revocation needs no account: the
        // one unauthenticated write, limited per address.
        let by_certificate_key = Jws::parse(&body).is_ok_and(|j| j.protected.jwk.is_some());
        if by_certificate_key {
            state
                .limits
                .key_revocation
                .take(address_key(client))
                .map_err(|secs| too_many("revocations signed by a certificate key", secs))?;
        }
        let v = verify(&state, &uri, &body, true).await?;
        let payload = v.payload()?;
        let der = payload
            .get("certificate")
            .and_then(Value::as_str)
            .and_then(|c| URL_SAFE_NO_PAD.decode(c.trim_end_matches('=')).ok())
            .ok_or_else(|| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, "revokeCert needs \"certificate\": the DER certificate in base64url"))?;
        let reason = match payload.get("reason").and_then(Value::as_i64) {
            None => RevocationReason::Unspecified,
            Some(code) => RevocationReason::from_code(code).ok_or_else(|| {
                Problem::acme(
                    StatusCode::BAD_REQUEST,
                    AcmeError::BadRevocationReason,
                    format!("reason {code} is not offered; use 0-5 or 9 (certificateHold is not)"),
                )
            })?,
        };
        let serial: Option<Serial> = {
            use x509_parser::prelude::FromDer;
            x509_parser::certificate::X509Certificate::from_der(&der)
                .ok()
                .and_then(|(_, c)| hex::encode(c.raw_serial()).parse().ok())
        };
        let not_ours = || Problem::not_found("this CA did not issue that certificate");
        let serial = serial.ok_or_else(not_ours)?;
        let store = state.authority.reads();
        let cert = match store.certificate(&serial).await {
            Err(StoreError::NotFound) => return Err(not_ours()),
            other => other?,
        };
        if cert.der != der {
            return Err(not_ours());
        }
        let request = RevokeRequest { reason, invalidity_date: None };
        match &v.account {
            Some(a) => {
                if cert.account_id.as_deref() != Some(a.account_id.as_str()) {
                    return Err(Problem::acme(
                        StatusCode::FORBIDDEN,
                        AcmeError::Unauthorized,
                        "this account did not order that certificate; sign with the certificate's key instead",
                    ));
                }
                state.authority.revoke(Revoker::Account(&v.caller()), &serial, request).await?;
            }
            None => {
                let jwk = v.jws.protected.jwk.clone().unwrap_or_default();
                if !jwk_matches_certificate(&jwk, &cert.der) {
                    return Err(Problem::acme(
                        StatusCode::FORBIDDEN,
                        AcmeError::Unauthorized,
                        "the JWS key is neither an account's nor the certificate's",
                    ));
                }
                state
                    .authority
                    .revoke_as_key_holder(&serial, request, "acme:key-holder")
                    .await?;
            }
        }
        Ok(StatusCode::OK.into_response())
    }
    .await;
    respond(&state, result).await
}

/// keyChange (RFC 8555 §7.3.5): the outer JWS is signed by the account's
/// current key, the inner one (its payload) by the new key over
/// `{account, oldKey}`.
async fn key_change(State(state): State<Arc<AppState>>, uri: Uri, body: Bytes) -> Response {
    let result = async {
        let v = verify(&state, &uri, &body, false).await?;
        let bad = |d: &str| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, d);
        let inner = Jws::parse(&v.jws.payload).map_err(|e| {
            Problem::acme(
                StatusCode::BAD_REQUEST,
                e.acme_code(),
                format!("the inner JWS: {e}"),
            )
        })?;
        let Some(new_jwk) = inner.protected.jwk.clone() else {
            return Err(bad("the inner JWS must carry the new key as \"jwk\""));
        };
        if inner.protected.nonce.is_some() {
            return Err(bad("the inner JWS must not have a \"nonce\""));
        }
        if inner.protected.url != v.jws.protected.url {
            return Err(bad("the inner JWS \"url\" must equal the outer one"));
        }
        inner.verify(&new_jwk).map_err(|e| {
            Problem::acme(
                StatusCode::BAD_REQUEST,
                e.acme_code(),
                format!("the inner JWS: {e}"),
            )
        })?;
        let payload = inner.json().map_err(|e| bad(&e.to_string()))?;
        let account = v.account();
        if payload.get("account").and_then(Value::as_str) != v.jws.protected.kid.as_deref() {
            return Err(bad(
                "the inner payload's \"account\" must be the account URL that signed the request",
            ));
        }
        let old = payload
            .get("oldKey")
            .ok_or_else(|| bad("the inner payload needs \"oldKey\""))?;
        if thumbprint(old).ok().as_deref() != Some(account.jwk_thumbprint.as_str()) {
            return Err(bad("\"oldKey\" is not the account's current key"));
        }
        let new_thumb = thumbprint(&new_jwk).map_err(|e| bad(&e.to_string()))?;
        let store = state.authority.reads();
        if let Some(holder) = store.acme_account_by_key(&new_thumb).await? {
            let url = format!("{}/account/{}", base(&state), holder.id);
            let mut r = Problem::acme(
                StatusCode::CONFLICT,
                AcmeError::Malformed,
                "the new key already belongs to an account",
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&url) {
                r.headers_mut().insert(header::LOCATION, v);
            }
            return Ok(r);
        }
        let updated = acme_accounts::change_key(
            state.authority.store().as_ref(),
            account,
            &new_thumb,
            &new_jwk.to_string(),
        )
        .await
        .map_err(account_problem)?;
        Ok(Json(account_json(&state, &updated)).into_response())
    }
    .await;
    respond(&state, result).await
}

/// The certificate an ARI certificate id (RFC 9773 §4.1) names:
/// `base64url(AKI keyIdentifier) "." base64url(serial DER content)`.
async fn renewal_target(
    state: &AppState,
    id: &str,
) -> Result<crate::store::CertificateRecord, Problem> {
    let bad = || {
        Problem::acme(
            StatusCode::BAD_REQUEST,
            AcmeError::Malformed,
            format!(
                "{id:?} is not a certificate id: base64url(key identifier) \".\" base64url(serial)"
            ),
        )
    };
    let (aki, serial) = id.split_once('.').ok_or_else(bad)?;
    let aki = URL_SAFE_NO_PAD.decode(aki).map_err(|_| bad())?;
    let serial = URL_SAFE_NO_PAD.decode(serial).map_err(|_| bad())?;
    let not_ours = || Problem::not_found(format!("this CA issued no certificate {id:?}"));
    if aki != state.authority.issuer().certificate().key_id() {
        return Err(not_ours());
    }
    let serial: Serial = hex::encode(serial).parse().map_err(|_| not_ours())?;
    match state.authority.reads().certificate(&serial).await {
        Err(StoreError::NotFound) => Err(not_ours()),
        other => Ok(other?),
    }
}

/// How often clients should ask again about a certificate (seconds).
const RENEWAL_INFO_RETRY_SECS: i64 = 6 * 3600;

/// ARI (RFC 9773): when to renew. Normally within the third quarter of the
/// certificate's second half (2/3 to 5/6 of its lifetime); a revoked
/// certificate gets a window in the past, which means "now".
async fn renewal_info(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let result = async {
        let cert = renewal_target(&state, &id).await?;
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let (start, end) = if cert.revoked_at.is_some() {
            (now - 2 * 3600, now - 3600)
        } else {
            let life = cert.not_after - cert.not_before;
            (
                cert.not_before + life * 2 / 3,
                cert.not_before + life * 5 / 6,
            )
        };
        let body = json!({"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}});
        let mut r = Json(body).into_response();
        r.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(RENEWAL_INFO_RETRY_SECS),
        );
        Ok(r)
    }
    .await;
    let mut response = respond(&state, result).await;
    // Unlike the other ACME resources, this one may be cached.
    if response.status() == StatusCode::OK {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=3600"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::order_of;

    #[test]
    fn ids_lead_back_to_their_order_even_with_underscores_in_the_key() {
        assert_eq!(
            order_of("authz_01ab_c-d_000", "authz_").as_deref(),
            Some("ord_01ab_c-d")
        );
        assert_eq!(
            order_of("chall_01ab_c-d_002_h", "chall_").as_deref(),
            Some("ord_01ab_c-d")
        );
        assert_eq!(order_of("chall_x", "chall_"), None);
        assert_eq!(order_of("authz_", "authz_"), None);
    }
}
