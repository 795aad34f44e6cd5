//! Every ACME request's checks: nonces (made without the database, used once after the signature verifies), the JWS `url`, key and signature (`verify`), per-address limits, and the headers every answer carries (`respond`).

use super::*;

/// A fresh nonce, made without touching the database (`workflow/nonces.rs`).
pub(super) fn fresh_nonce(state: &AppState) -> String {
    state
        .acme_nonces
        .fresh(time::OffsetDateTime::now_utc().unix_timestamp())
}

/// Adds `Replay-Nonce`, `Link: rel="index"` and `Cache-Control: no-store`.
pub(super) async fn finish(state: &AppState, mut response: Response) -> Response {
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

/// A per-address limit's refusal.
pub(super) fn too_many(what: &str, retry_after_secs: u64) -> Problem {
    Problem::rate_limited(
        retry_after_secs,
        format!("too many {what} from your address; retry after {retry_after_secs} seconds"),
    )
}

pub(super) async fn new_nonce(
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
pub(super) struct Verified {
    pub(super) jws: Jws,
    pub(super) account: Option<AcmeAccountRecord>,
}

impl Verified {
    pub(super) fn account(&self) -> &AcmeAccountRecord {
        self.account.as_ref().expect("kid requests have an account")
    }

    /// The hallmark account acting, as the order workflow sees it.
    pub(super) fn caller(&self) -> Caller {
        let a = self.account();
        Caller {
            account_id: a.account_id.clone(),
            name: format!("acme:{}", a.id),
            role: Role::Requester,
            actor: format!("acme:{}", a.id),
        }
    }

    /// The JSON payload, or a `malformed` problem.
    pub(super) fn payload(&self) -> Result<Value, Problem> {
        self.jws.json().map_err(|e| {
            Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, e.to_string())
        })
    }

    pub(super) fn is_post_as_get(&self) -> bool {
        self.jws.payload.is_empty()
    }
}

/// Test-only (`danger_acme_chaos`): whether to refuse this valid nonce.
pub(super) fn refused_by_chaos(state: &AppState) -> bool {
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
pub(super) async fn verify(
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
    let checked = state.acme_nonces.check(&nonce, now).ok_or_else(bad_nonce)?;
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
    let fresh = state.acme_nonces.take(checked).await?;
    if !fresh || refused_by_chaos(state) {
        return Err(bad_nonce());
    }
    Ok(verified)
}

/// The key and signature of a JWS whose nonce and url were checked.
pub(super) async fn verify_signature(
    state: &AppState,
    jws: Jws,
    jwk_ok: bool,
) -> Result<Verified, Problem> {
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
            if account.status != AcmeAccountStatus::Valid {
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

/// The DER bytes of a base64url member of a payload (`csr`,
/// `certificate`), or a `malformed` problem saying `what` is needed.
pub(super) fn der_member(payload: &Value, name: &str, what: &str) -> Result<Vec<u8>, Problem> {
    payload
        .get(name)
        .and_then(Value::as_str)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c.trim_end_matches('=')).ok())
        .ok_or_else(|| Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, what))
}

/// A POST signed by an existing, valid account (`kid`), checked by
/// [`verify`] before the handler runs: handlers that take it say only what
/// is their own. Its refusals are ACME problems; the ACME headers are added
/// to every answer by the layer in [`super::router`].
pub(super) struct Signed(pub(super) Verified);

impl axum::extract::FromRequest<Arc<AppState>> for Signed {
    type Rejection = Problem;

    async fn from_request(
        request: axum::extract::Request,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let uri = request.uri().clone();
        let body = Bytes::from_request(request, state).await.map_err(|e| {
            Problem::acme(StatusCode::BAD_REQUEST, AcmeError::Malformed, e.body_text())
        })?;
        verify(state, &uri, &body, false).await.map(Signed)
    }
}

/// The ACME headers (`Replay-Nonce`, the directory link, `no-store`) on
/// every answer of the layered routes, problems included.
pub(super) async fn acme_headers(
    State(state): State<Arc<AppState>>,
    response: Response,
) -> Response {
    finish(&state, response).await
}

/// Runs a handler body after verification, adding the ACME headers to
/// whatever it answers (problems included).
pub(super) async fn respond(state: &AppState, result: Result<Response, Problem>) -> Response {
    let response = match result {
        Ok(r) => r,
        Err(p) => p.into_response(),
    };
    finish(state, response).await
}
