//! The OCSP responder (RFC 6960 / RFC 5019): answers good, revoked or
//! unknown for the issuing intermediate's certificates, signed by a
//! delegated responder certificate hallmark issues itself and renews at
//! half-life (or by the intermediate's key, with `ocsp.signer = "issuer"`).
//! It also answers for retired issuers (rotated intermediates, imported
//! CAs), each answer signed by that issuer's own key.
//! Answers without a nonce are kept for `ocsp.cache_secs`, and dropped at
//! once when this instance records a revocation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use time::OffsetDateTime;
use tokio::sync::watch;

use super::{Authority, WorkflowError};
use crate::config::OcspSection;
use crate::pki::ca::CaError;
use crate::pki::ocsp::{
    self, CertStatus, ErrorStatus, IssuerHashes, OcspRequest, ResponderSigner, SingleResponse,
};
use crate::pki::{KeySigner, PrivateKey, Serial};
use crate::store::{AuditEvent, NewCertificate};

/// Most cached answers (about 1 KiB each); the cache is emptied when it
/// is full.
const CACHE_LIMIT: usize = 10_000;

/// How often the delegated certificate's age is checked.
const ROTATE_CHECK: Duration = Duration::from_secs(600);

/// The key that signs answers and the certificates sent with them.
struct SigningIdentity {
    key: Arc<dyn KeySigner>,
    certs: Vec<Vec<u8>>,
    not_before: i64,
    not_after: i64,
}

/// One answer.
#[derive(Debug, Clone)]
pub struct OcspAnswer {
    /// The DER OCSPResponse.
    pub der: Bytes,
    /// thisUpdate and nextUpdate of a successful answer (for HTTP caching).
    pub validity: Option<(i64, i64)>,
}

struct CachedAnswer {
    answer: OcspAnswer,
    until: Instant,
    generation: u64,
}

/// Answers OCSP requests.
pub struct OcspResponder {
    authority: Arc<Authority>,
    config: OcspSection,
    hashes: IssuerHashes,
    /// Retired issuers: their id, hashes and key.
    retired: Vec<(String, IssuerHashes, Arc<SigningIdentity>)>,
    identity: RwLock<Arc<SigningIdentity>>,
    cache: Mutex<HashMap<Vec<u8>, CachedAnswer>>,
}

impl OcspResponder {
    /// Sets up the responder; with the delegated signer this issues (and
    /// records) a responder certificate.
    pub async fn new(
        authority: Arc<Authority>,
        config: OcspSection,
    ) -> Result<Arc<Self>, WorkflowError> {
        let hashes = IssuerHashes::new(authority.issuer().certificate()).map_err(|e| {
            WorkflowError::Malformed(format!("the issuing CA certificate cannot be hashed: {e}"))
        })?;
        let identity = Self::new_identity(&authority, &config).await?;
        let mut retired = Vec::new();
        for r in authority.retired() {
            let cert = r.issuer.certificate();
            let hashes = IssuerHashes::new(cert).map_err(|e| {
                WorkflowError::Malformed(format!(
                    "the CA certificate {} cannot be hashed: {e}",
                    cert.id()
                ))
            })?;
            retired.push((
                cert.id().to_owned(),
                hashes,
                Arc::new(SigningIdentity {
                    key: r.issuer.key().clone(),
                    certs: Vec::new(),
                    not_before: cert.not_before().unix_timestamp(),
                    not_after: cert.not_after().unix_timestamp(),
                }),
            ));
        }
        Ok(Arc::new(OcspResponder {
            authority,
            config,
            hashes,
            retired,
            identity: RwLock::new(Arc::new(identity)),
            cache: Mutex::new(HashMap::new()),
        }))
    }

    async fn new_identity(
        authority: &Authority,
        config: &OcspSection,
    ) -> Result<SigningIdentity, WorkflowError> {
        let issuer = authority.issuer();
        if config.signer == "issuer" {
            return Ok(SigningIdentity {
                key: issuer.key().clone(),
                certs: Vec::new(),
                not_before: issuer.certificate().not_before().unix_timestamp(),
                not_after: issuer.certificate().not_after().unix_timestamp(),
            });
        }
        let key_type = issuer.key().scheme().key_type();
        let key = tokio::task::spawn_blocking(move || PrivateKey::generate(key_type))
            .await
            .map_err(|e| WorkflowError::Ca(CaError::Sign(format!("key generation stopped: {e}"))))?
            .map_err(|e| WorkflowError::Ca(CaError::Sign(e.to_string())))?
            .into_signer();
        let now = OffsetDateTime::now_utc();
        let serial = Serial::random(&mut rand::thread_rng());
        let cert = issuer.issue_ocsp_responder(
            &key,
            now,
            time::Duration::days(i64::from(config.responder_validity_days)),
            serial,
        )?;
        authority
            .store()
            .insert_certificate(
                NewCertificate {
                    serial,
                    issuer_id: issuer.certificate().id().to_owned(),
                    account_id: None,
                    order_id: None,
                    subject: cert.subject.clone(),
                    identifiers: Vec::new(),
                    profile: "ocsp-responder".into(),
                    requested_by: "system".into(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                    der: cert.der.clone(),
                    crl_partition: 0,
                },
                AuditEvent {
                    at: now,
                    actor: "system".into(),
                    action: "certificate.issue".into(),
                    subject: serial.to_hex(),
                    details: serde_json::json!({
                        "issuer": issuer.certificate().id(),
                        "profile": "ocsp-responder",
                        "not_after": cert.not_after.unix_timestamp(),
                    }),
                },
            )
            .await?;
        tracing::info!(serial = %serial, not_after = %cert.not_after, "issued a delegated OCSP responder certificate");
        Ok(SigningIdentity {
            key,
            certs: vec![cert.der],
            not_before: cert.not_before.unix_timestamp(),
            not_after: cert.not_after.unix_timestamp(),
        })
    }

    fn identity(&self) -> Arc<SigningIdentity> {
        match self.identity.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The delegated responder certificate in use, if any (DER).
    pub fn responder_certificate(&self) -> Option<Vec<u8>> {
        self.identity().certs.first().cloned()
    }

    /// Replaces the delegated certificate when half its life has passed.
    pub async fn rotate_if_due(&self) -> Result<bool, WorkflowError> {
        let current = self.identity();
        if current.certs.is_empty() {
            return Ok(false);
        }
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let half = current.not_before + (current.not_after - current.not_before) / 2;
        if now < half {
            return Ok(false);
        }
        let fresh = Self::new_identity(&self.authority, &self.config).await?;
        if let Ok(mut g) = self.identity.write() {
            *g = Arc::new(fresh);
        }
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
        Ok(true)
    }

    /// Renews the delegated certificate in the background until shutdown.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(ROTATE_CHECK);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.rotate_if_due().await {
                        tracing::error!(error = %e, "renewing the OCSP responder certificate failed; will retry");
                    }
                }
            }
        }
    }

    /// Answers a DER OCSPRequest. Never fails: problems become OCSP error
    /// statuses (`malformedRequest`, `unauthorized`, `internalError`).
    pub async fn answer(&self, request: &[u8]) -> OcspAnswer {
        let metrics = &crate::metrics::METRICS;
        let error = |status: ErrorStatus| {
            metrics.ocsp.inc(&[match status {
                ErrorStatus::MalformedRequest => "malformedRequest",
                ErrorStatus::Unauthorized => "unauthorized",
                ErrorStatus::TryLater => "tryLater",
                ErrorStatus::InternalError => "internalError",
            }]);
            OcspAnswer {
                der: Bytes::from(ocsp::error_response(status)),
                validity: None,
            }
        };
        let parsed = match OcspRequest::parse(request) {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "malformed OCSP request");
                return error(ErrorStatus::MalformedRequest);
            }
        };
        if !parsed
            .cert_ids
            .iter()
            .any(|id| self.responder_for(id).is_some())
        {
            return error(ErrorStatus::Unauthorized);
        }
        let generation = self.authority.revocation_count();
        let cache_key = (parsed.nonce.is_none() && self.config.cache_secs > 0).then(|| {
            parsed
                .cert_ids
                .iter()
                .flat_map(|c| c.raw.iter().copied())
                .collect::<Vec<u8>>()
        });
        if let Some(key) = &cache_key {
            if let Ok(cache) = self.cache.lock() {
                if let Some(hit) = cache.get(key) {
                    if hit.until > Instant::now() && hit.generation == generation {
                        metrics.ocsp_cache_hits.inc(&[]);
                        return hit.answer.clone();
                    }
                }
            }
        }
        match self.sign_answer(&parsed).await {
            Ok(answer) => {
                if let Some(key) = cache_key {
                    if let Ok(mut cache) = self.cache.lock() {
                        if cache.len() >= CACHE_LIMIT {
                            cache.clear();
                        }
                        cache.insert(
                            key,
                            CachedAnswer {
                                answer: answer.clone(),
                                until: Instant::now()
                                    + Duration::from_secs(u64::from(self.config.cache_secs)),
                                generation,
                            },
                        );
                    }
                }
                answer
            }
            Err(WorkflowError::Store(
                e @ (crate::store::StoreError::Unavailable(_)
                | crate::store::StoreError::DiskFull(_)),
            )) => {
                tracing::warn!(error = %e, "OCSP: the database is unavailable; answering tryLater");
                error(ErrorStatus::TryLater)
            }
            Err(e) => {
                tracing::error!(error = %e, "answering an OCSP request failed");
                error(ErrorStatus::InternalError)
            }
        }
    }

    /// The issuer a CertID names and the identity that signs for it: the
    /// current intermediate's responder, or a retired issuer's own key.
    fn responder_for(&self, id: &ocsp::CertId) -> Option<(&str, Option<Arc<SigningIdentity>>)> {
        if self.hashes.matches(id) {
            return Some((self.authority.issuer().certificate().id(), None));
        }
        self.retired
            .iter()
            .find(|(_, hashes, _)| hashes.matches(id))
            .map(|(issuer_id, _, identity)| (issuer_id.as_str(), Some(identity.clone())))
    }

    async fn sign_answer(&self, request: &OcspRequest) -> Result<OcspAnswer, WorkflowError> {
        let now = OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::now_utc());
        // One signer per answer: that of the first CertID this responder
        // knows; a CertID of another issuer in the same request is
        // answered unknown.
        let (issuer_id, retired_identity) = request
            .cert_ids
            .iter()
            .find_map(|id| self.responder_for(id))
            .ok_or_else(|| WorkflowError::Malformed("no CertID names a known issuer".into()))?;
        let identity = retired_identity.unwrap_or_else(|| self.identity());
        let validity = time::Duration::minutes(i64::from(self.config.validity_minutes));
        // Never promise beyond the responder certificate's own life.
        let next_update = (now + validity)
            .min(OffsetDateTime::from_unix_timestamp(identity.not_after).unwrap_or(now + validity));
        let mut statuses = Vec::with_capacity(request.cert_ids.len());
        for id in &request.cert_ids {
            let serial = Serial::from_magnitude(&id.serial);
            let ours = self.responder_for(id).is_some_and(|(i, _)| i == issuer_id);
            let status = match serial.filter(|_| ours) {
                None => CertStatus::Unknown,
                Some(serial) => match self.authority.store().certificate_status(&serial).await? {
                    Some(rec) if rec.issuer_id == issuer_id => match rec.revoked_at {
                        Some(at) => CertStatus::Revoked {
                            at: OffsetDateTime::from_unix_timestamp(at).unwrap_or(now),
                            reason: rec.revocation_reason.filter(|r| *r != 0).map(|r| r as u8),
                        },
                        None => CertStatus::Good,
                    },
                    _ => CertStatus::Unknown,
                },
            };
            crate::metrics::METRICS.ocsp.inc(&[match status {
                CertStatus::Good => "good",
                CertStatus::Revoked { .. } => "revoked",
                CertStatus::Unknown => "unknown",
            }]);
            statuses.push(status);
        }
        let responses: Vec<SingleResponse<'_>> = request
            .cert_ids
            .iter()
            .zip(statuses)
            .map(|(cert_id, status)| SingleResponse {
                cert_id,
                status,
                this_update: now,
                next_update,
            })
            .collect();
        let der = ocsp::signed_response(
            &ResponderSigner {
                key: identity.key.as_ref(),
                certs: &identity.certs,
            },
            now,
            &responses,
            request.nonce.as_deref(),
        )
        .map_err(|e| WorkflowError::Ca(CaError::Sign(e.to_string())))?;
        Ok(OcspAnswer {
            der: Bytes::from(der),
            validity: Some((now.unix_timestamp(), next_update.unix_timestamp())),
        })
    }
}
