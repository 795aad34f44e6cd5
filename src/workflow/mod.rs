//! The workflow: the only writer of certificate (and, later, order) state.
//! It combines CSR intake, policy, the signer and the store, and writes an
//! audit record with every change in the same transaction.

pub mod accounts;
pub mod audit;
pub mod users;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

use crate::pki::ca::CaError;
use crate::pki::profile::{LeafRequest, UnknownProfile};
use crate::pki::{
    CaCertificate, CsrError, Identifier, IssuedCertificate, Issuer, Profile, Serial, Subject,
    UnverifiedCsr,
};
use crate::policy::{Policy, PolicyError};
use crate::store::{AuditEvent, NewCertificate, Store, StoreError};

/// Why a request could not be fulfilled. Each refusal is its own kind.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The CSR could not be read or its signature does not verify.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The key or a name breaks policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// An unknown profile was asked for.
    #[error(transparent)]
    Profile(#[from] UnknownProfile),
    /// Signing failed or the certificate broke its profile.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Options for signing a CSR.
#[derive(Debug, Clone, Default)]
pub struct SignOptions {
    /// Validity in days; the policy default if none.
    pub validity_days: Option<u32>,
    /// Profile name; `server` if none.
    pub profile: Option<String>,
    /// Owning account.
    pub account_id: Option<String>,
    /// Subject organisation (OV).
    pub subject: Subject,
}

/// A certificate issued and recorded.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The certificate.
    pub certificate: IssuedCertificate,
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
}

/// The certificate authority: policy, issuer and store together.
pub struct Authority {
    store: Arc<dyn Store>,
    policy: Policy,
    issuer: Issuer,
    root: CaCertificate,
    issued: AtomicU64,
}

impl Authority {
    /// Puts the parts together.
    pub fn new(store: Arc<dyn Store>, policy: Policy, issuer: Issuer, root: CaCertificate) -> Self {
        Authority {
            store,
            policy,
            issuer,
            root,
            issued: AtomicU64::new(0),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The issuance policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The issuing intermediate.
    pub fn issuer(&self) -> &Issuer {
        &self.issuer
    }

    /// The root.
    pub fn root(&self) -> &CaCertificate {
        &self.root
    }

    /// Certificates this process has issued since it started (for metrics).
    pub fn issued_count(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }

    /// Signs a CSR under policy without domain validation — the operator's
    /// `hallmark sign`, and (after validation) the order workflow. Nothing
    /// is written unless the certificate is issued; the certificate and its
    /// audit record are committed together.
    pub async fn sign_csr(
        &self,
        csr: &[u8],
        options: SignOptions,
        actor: &str,
    ) -> Result<Signed, WorkflowError> {
        let unverified = UnverifiedCsr::parse(csr)?;
        self.policy.check_unverified(&unverified)?;
        let csr = unverified.verify()?;
        let identifiers = self.policy.check_csr(&csr)?;
        let validity_days = self.policy.validity_days(options.validity_days)?;
        let profile = match &options.profile {
            Some(name) => name.parse::<Profile>()?,
            None => Profile::Server,
        };
        let now = OffsetDateTime::now_utc();
        self.issue(
            csr.spki_der(),
            csr.key().is_rsa(),
            &identifiers,
            &options.subject,
            profile,
            validity_days,
            options.account_id,
            actor,
            now,
        )
        .await
    }

    /// Issues a certificate for the service itself (the HTTPS listener),
    /// outside the requester policy: names like `localhost` are allowed.
    pub async fn issue_service_certificate(
        &self,
        spki_der: &[u8],
        identifiers: &[Identifier],
        validity_days: u32,
    ) -> Result<Signed, WorkflowError> {
        let now = OffsetDateTime::now_utc();
        self.issue(
            spki_der,
            false,
            identifiers,
            &Subject::default(),
            Profile::Server,
            validity_days,
            None,
            "system",
            now,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn issue(
        &self,
        spki_der: &[u8],
        key_is_rsa: bool,
        identifiers: &[Identifier],
        subject: &Subject,
        profile: Profile,
        validity_days: u32,
        account_id: Option<String>,
        actor: &str,
        now: OffsetDateTime,
    ) -> Result<Signed, WorkflowError> {
        let req = LeafRequest {
            spki_der,
            key_is_rsa,
            identifiers,
            subject,
            profile,
            serial: Serial::random(&mut rand::thread_rng()),
            now,
            validity_days,
        };
        let cert = self
            .issuer
            .issue_leaf(&req, self.policy.max_validity_days.max(validity_days))?;
        let names: Vec<String> = cert.identifiers.iter().map(Identifier::value).collect();
        let event = AuditEvent {
            at: now,
            actor: actor.to_owned(),
            action: "certificate.issue".into(),
            subject: cert.serial.to_hex(),
            details: serde_json::json!({
                "issuer": self.issuer.certificate().id(),
                "names": names,
                "profile": profile.as_str(),
                "not_after": cert.not_after.unix_timestamp(),
            }),
        };
        self.store
            .insert_certificate(
                NewCertificate {
                    serial: cert.serial,
                    issuer_id: self.issuer.certificate().id().to_owned(),
                    account_id,
                    order_id: None,
                    subject: cert.subject.clone(),
                    identifiers: names,
                    profile: profile.as_str().to_owned(),
                    requested_by: actor.to_owned(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                    der: cert.der.clone(),
                },
                event,
            )
            .await?;
        self.issued.fetch_add(1, Ordering::Relaxed);
        let chain_pem = format!("{}{}", cert.pem(), self.issuer.certificate().pem());
        Ok(Signed {
            certificate: cert,
            chain_pem,
        })
    }
}
