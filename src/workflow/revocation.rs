//! Revocation: by the owning account, by a reviewer or admin, by the
//! operator, or by whoever holds the certificate's private key (a signed
//! proof, for a holder who lost their API key). Each revocation and its
//! audit record commit together; revoking twice changes nothing.

use time::OffsetDateTime;
use x509_parser::prelude::FromDer;

use super::accounts::{Caller, Role};
use super::{Authority, Clash, Missing, NotAllowed, WorkflowError};
use crate::pki::crl::RevocationReason;
use crate::pki::Serial;
use crate::store::{AuditEvent, CertificateRecord, Conflict, Revocation, StoreError};

/// How far `signed_at` of a key proof may be from now (seconds).
pub const PROOF_WINDOW_SECS: i64 = 600;

/// Who asks for a revocation.
#[derive(Debug, Clone, Copy)]
pub enum Revoker<'a> {
    /// An API account: its own certificates, or any as reviewer or admin.
    Account(&'a Caller),
    /// The operator or a dashboard user, named for the audit log.
    Operator(&'a str),
}

/// What to revoke with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevokeRequest {
    /// Why.
    pub reason: RevocationReason,
    /// When the key was (suspected to be) compromised.
    pub invalidity_date: Option<OffsetDateTime>,
}

/// A signature by the certificate's own key over
/// [`key_proof_message`]: possession of the key is the authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProof {
    /// Unix seconds the holder signed at (within 10 minutes of now).
    pub signed_at: i64,
    /// The signature: DER ECDSA (SHA-256 for P-256, SHA-384 for P-384),
    /// RSA PKCS#1 v1.5 with SHA-256, or Ed25519, as `openssl dgst -sign`
    /// (or `openssl pkeyutl -sign -rawin` for Ed25519) makes it.
    pub signature: Vec<u8>,
}

/// The exact bytes a key proof signs: `hallmark-revoke-v1`, the serial in
/// lower-case hex, the reason name and `signed_at`, one per line.
pub fn key_proof_message(serial: &Serial, reason: RevocationReason, signed_at: i64) -> String {
    format!(
        "hallmark-revoke-v1\n{serial}\n{}\n{signed_at}\n",
        reason.as_str()
    )
}

impl Authority {
    /// Revokes a certificate for an account or the operator.
    pub async fn revoke(
        &self,
        revoker: Revoker<'_>,
        serial: &Serial,
        request: RevokeRequest,
    ) -> Result<CertificateRecord, WorkflowError> {
        let cert = self.revocable(serial).await?;
        let actor = match revoker {
            Revoker::Account(caller) => {
                let owns = cert.account_id.as_deref() == Some(caller.account_id.as_str());
                if !owns && caller.role == Role::Requester {
                    // Another account's certificate does not exist for it.
                    return Err(not_found(serial));
                }
                if !owns && caller.role == Role::Reviewer {
                    return Err(NotAllowed::NotCertificateOwner.into());
                }
                caller.actor.clone()
            }
            Revoker::Operator(name) => name.to_owned(),
        };
        self.record_revocation(cert, &actor, "account", request)
            .await
    }

    /// Revokes a certificate whose holder proves possession of its key.
    pub async fn revoke_with_key_proof(
        &self,
        serial: &Serial,
        request: RevokeRequest,
        proof: &KeyProof,
    ) -> Result<CertificateRecord, WorkflowError> {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if (proof.signed_at - now).abs() > PROOF_WINDOW_SECS {
            return Err(WorkflowError::Malformed(format!(
                "the proof's signed_at ({}) is more than {} minutes from the server's time ({now})",
                proof.signed_at,
                PROOF_WINDOW_SECS / 60
            )));
        }
        let cert = self.revocable(serial).await?;
        let message = key_proof_message(serial, request.reason, proof.signed_at);
        verify_with_certificate_key(&cert.der, message.as_bytes(), &proof.signature)?;
        self.record_revocation(cert, "key-holder", "key", request)
            .await
    }

    /// Revokes a certificate for a caller who proved possession of its key
    /// some other way (an ACME revokeCert JWS signed by the certificate's
    /// key, checked by the caller against the certificate).
    pub async fn revoke_as_key_holder(
        &self,
        serial: &Serial,
        request: RevokeRequest,
        actor: &str,
    ) -> Result<CertificateRecord, WorkflowError> {
        let cert = self.revocable(serial).await?;
        self.record_revocation(cert, actor, "key", request).await
    }

    /// The certificate, if it exists and can still be revoked.
    async fn revocable(&self, serial: &Serial) -> Result<CertificateRecord, WorkflowError> {
        let cert = match self.store.certificate(serial).await {
            Err(StoreError::NotFound) => return Err(not_found(serial)),
            other => other?,
        };
        if let (Some(at), reason) = (cert.revoked_at, cert.revocation_reason) {
            return Err(already_revoked(serial, at, reason));
        }
        Ok(cert)
    }

    async fn record_revocation(
        &self,
        mut cert: CertificateRecord,
        actor: &str,
        method: &str,
        request: RevokeRequest,
    ) -> Result<CertificateRecord, WorkflowError> {
        let now = OffsetDateTime::now_utc();
        if cert.not_after < now.unix_timestamp() {
            return Err(Clash::CertificateExpired {
                serial: cert.serial,
                not_after: cert.not_after,
            }
            .into());
        }
        let invalidity = request.invalidity_date.map(|t| t.unix_timestamp());
        if invalidity.is_some_and(|t| t > now.unix_timestamp()) {
            return Err(WorkflowError::Malformed(
                "invalidity_date must not be in the future".into(),
            ));
        }
        let blocked_key = (request.reason == RevocationReason::KeyCompromise)
            .then(|| spki_sha256_of(&cert.der))
            .transpose()?;
        let revocation = Revocation {
            serial: cert.serial,
            at: now.unix_timestamp(),
            reason: i64::from(request.reason.code()),
            invalidity_date: invalidity,
            blocked_key,
        };
        let event = AuditEvent {
            at: now,
            actor: actor.to_owned(),
            action: "certificate.revoke".into(),
            subject: cert.serial.to_hex(),
            details: serde_json::json!({
                "reason": request.reason.as_str(),
                "invalidity_date": invalidity,
                "method": method,
                "issuer": cert.issuer_id,
            }),
        };
        match self.store.revoke_certificate(&revocation, event).await {
            Ok(()) => {}
            Err(StoreError::Conflict(Conflict::AlreadyRevoked(_))) => {
                // Revoked by someone else between our read and our write.
                let now_cert = self.store.certificate(&cert.serial).await?;
                return Err(already_revoked(
                    &cert.serial,
                    now_cert.revoked_at.unwrap_or(revocation.at),
                    now_cert.revocation_reason,
                ));
            }
            Err(e) => return Err(e.into()),
        }
        cert.revoked_at = Some(revocation.at);
        cert.revocation_reason = Some(revocation.reason);
        cert.invalidity_date = revocation.invalidity_date;
        self.revocations.send_modify(|n| *n += 1);
        crate::metrics::METRICS
            .revoked
            .inc(&[&request.reason.to_string()]);
        tracing::info!(
            serial = %cert.serial,
            names = %cert.identifiers.join(","),
            account = cert.account_id.as_deref().unwrap_or("-"),
            reason = %request.reason,
            actor,
            "certificate revoked"
        );
        Ok(cert)
    }

    /// A number that changes whenever a revocation is recorded: by this
    /// process at once, by other processes and instances once the CRL
    /// publisher's poll has seen their durable mark (see
    /// [`Authority::saw_revocation_marks`]). The OCSP cache is tagged with it.
    pub fn revocation_count(&self) -> u64 {
        *self.revocations.borrow()
    }

    /// Tells the authority the newest revocation mark in the database; if
    /// it is newer than any seen before, the revocation count changes (so
    /// cached OCSP answers made before it are dropped). Returns whether it
    /// was new.
    pub fn saw_revocation_marks(&self, newest_seq: i64) -> bool {
        let before = self
            .newest_mark_seen
            .fetch_max(newest_seq, std::sync::atomic::Ordering::AcqRel);
        if newest_seq > before {
            self.revocations.send_modify(|n| *n += 1);
            return true;
        }
        false
    }

    /// Changes whenever this process records a revocation (the CRL
    /// publisher and the OCSP cache watch it).
    pub fn revocations(&self) -> tokio::sync::watch::Receiver<u64> {
        self.revocations.subscribe()
    }
}

fn not_found(serial: &Serial) -> WorkflowError {
    Missing::Certificate(*serial).into()
}

fn already_revoked(serial: &Serial, at: i64, reason: Option<i64>) -> WorkflowError {
    WorkflowError::AlreadyRevoked {
        serial: *serial,
        at,
        reason: reason
            .and_then(RevocationReason::from_code)
            .unwrap_or(RevocationReason::Unspecified),
    }
}

/// SHA-256 of the SubjectPublicKeyInfo of the certificate `der`.
fn spki_sha256_of(der: &[u8]) -> Result<Vec<u8>, WorkflowError> {
    use sha2::Digest;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| WorkflowError::Store(StoreError::Corrupt(e.to_string())))?;
    Ok(sha2::Sha256::digest(cert.public_key().raw).to_vec())
}

/// Verifies `signature` over `message` with the public key of the
/// certificate `der`.
fn verify_with_certificate_key(
    der: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), WorkflowError> {
    use ring::signature as sig;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| WorkflowError::Store(StoreError::Corrupt(e.to_string())))?;
    let spki = cert.public_key();
    let key = spki.subject_public_key.data.as_ref();
    let alg_oid = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let algorithm: &dyn sig::VerificationAlgorithm = match (alg_oid.as_str(), curve.as_deref()) {
        ("1.2.840.10045.2.1", Some("1.2.840.10045.3.1.7")) => &sig::ECDSA_P256_SHA256_ASN1,
        ("1.2.840.10045.2.1", Some("1.3.132.0.34")) => &sig::ECDSA_P384_SHA384_ASN1,
        ("1.2.840.113549.1.1.1", _) => &sig::RSA_PKCS1_2048_8192_SHA256,
        ("1.3.101.112", _) => &sig::ED25519,
        _ => {
            return Err(WorkflowError::Malformed(
                "the certificate's key type cannot sign a revocation proof".into(),
            ))
        }
    };
    sig::UnparsedPublicKey::new(algorithm, key)
        .verify(message, signature)
        .map_err(|_| WorkflowError::from(NotAllowed::ProofSignature))
}
