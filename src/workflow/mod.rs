//! The workflow: the only writer of certificate (and, later, order) state.
//! It combines CSR intake, policy, the signer and the store, and writes an
//! audit record with every change in the same transaction.

pub mod accounts;
pub mod acme_accounts;
pub mod audit;
pub mod crl;
mod error;
pub mod limits;
pub mod nonces;
pub mod ocsp;
pub mod orders;
pub mod revocation;
pub mod users;
pub mod webhooks;

pub use error::{Clash, Missing, NotAllowed, WorkflowError};

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use time::OffsetDateTime;

use crate::pki::profile::LeafRequest;
use crate::pki::{
    CaCertificate, Csr, Identifier, IssuedCertificate, Issuer, Profile, Serial, Shape, Subject,
    UnverifiedCsr,
};
use crate::policy::{Policy, ProfileSpec};
use crate::store::{AuditEvent, Issuance, IssuanceOrder, NewCertificate, OrderStatus, Store};

/// Unix seconds as RFC 3339 UTC (`2026-01-02T03:04:05Z`).
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
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
    /// Its issuer's certificate, PEM (shared, not encoded per issuance).
    issuer_pem: Arc<str>,
}

impl Signed {
    /// Leaf then intermediate, PEM: made when asked for (the REST and
    /// ACME answers name the certificate's URL instead).
    pub fn chain_pem(&self) -> String {
        let mut chain = self.certificate.pem();
        chain.push_str(&self.issuer_pem);
        chain
    }
}

/// Where an issuer that no longer issues came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// An intermediate of this CA that `hallmark ca rotate` replaced: its
    /// certificates point at its partitioned CRLs and delta, as the
    /// current one's do.
    Rotated,
    /// A CA brought in by `hallmark import openssl`: one complete CRL.
    Imported,
}

/// An issuer that no longer issues but still answers for what it issued
/// (CRLs and OCSP signed with its own key) until its last certificate
/// expires.
pub struct RetiredIssuer {
    /// The CA certificate and key.
    pub issuer: Issuer,
    /// Where it came from.
    pub kind: Retirement,
    /// The latest notAfter of its certificates: it serves until then.
    pub serves_until: i64,
}

/// The certificate authority: policy, issuer and store together.
pub struct Authority {
    store: Arc<dyn Store>,
    policy: Policy,
    issuer: Issuer,
    /// The issuing CA's certificate, PEM, for the chains of what it signs.
    issuer_pem: Arc<str>,
    retired: Vec<RetiredIssuer>,
    root: CaCertificate,
    /// The root's and the issuing CA's public key bits, which no CSR may
    /// carry (taken once here, not per CSR).
    ca_keys: [Vec<u8>; 2],
    issued: AtomicU64,
    crl_partitions: u32,
    revocations: tokio::sync::watch::Sender<u64>,
    /// The newest revocation mark (audit sequence number) seen in the
    /// database, from any process.
    newest_mark_seen: AtomicI64,
}

/// The CRL partition a new certificate goes into: none (0) when CRLs are
/// not partitioned, else 1..=`partitions`, spread by the random serial.
pub fn crl_partition_of(serial: &Serial, partitions: u32) -> u32 {
    if partitions == 0 {
        return 0;
    }
    // The last four bytes (random in every serial hallmark makes; a
    // shorter imported one is padded with zeros in front).
    let mut low = [0u8; 4];
    let b = serial.as_bytes();
    let n = b.len().min(4);
    low[4 - n..].copy_from_slice(&b[b.len() - n..]);
    1 + u32::from_be_bytes(low) % partitions
}

impl Authority {
    /// Puts the parts together.
    pub fn new(store: Arc<dyn Store>, policy: Policy, issuer: Issuer, root: CaCertificate) -> Self {
        let ca_keys = [
            key_bits(root.spki()).to_vec(),
            key_bits(issuer.certificate().spki()).to_vec(),
        ];
        Authority {
            store,
            policy,
            issuer_pem: issuer.certificate().pem().into(),
            issuer,
            retired: Vec::new(),
            root,
            ca_keys,
            issued: AtomicU64::new(0),
            crl_partitions: 0,
            revocations: tokio::sync::watch::channel(0).0,
            newest_mark_seen: AtomicI64::new(0),
        }
    }

    /// Spreads new certificates over `partitions` CRL partitions (0: one
    /// complete CRL per issuer).
    pub fn with_crl_partitions(mut self, partitions: u32) -> Self {
        self.crl_partitions = partitions;
        self
    }

    /// Adds the issuers that no longer issue but still publish CRLs and
    /// answer OCSP for their certificates.
    pub fn with_retired(mut self, retired: Vec<RetiredIssuer>) -> Self {
        self.retired = retired;
        self
    }

    /// The issuers that no longer issue.
    pub fn retired(&self) -> &[RetiredIssuer] {
        &self.retired
    }

    /// The issuer with URL id `id`: the current one or a retired one.
    pub fn issuer_by_id(&self, id: &str) -> Option<&Issuer> {
        if self.issuer.certificate().id() == id {
            return Some(&self.issuer);
        }
        self.retired
            .iter()
            .map(|r| &r.issuer)
            .find(|i| i.certificate().id() == id)
    }

    /// Every issuer that signs CRLs and OCSP answers: the current one
    /// first, then the retired ones.
    pub fn issuers(&self) -> impl Iterator<Item = &Issuer> {
        std::iter::once(&self.issuer).chain(self.retired.iter().map(|r| &r.issuer))
    }

    /// The PEM chain of a certificate issued by `issuer_id` (the leaf,
    /// then its issuer unless that issuer is self-signed); the leaf alone
    /// if its issuer is not one this instance holds.
    pub fn chain_pem(&self, leaf_der: &[u8], issuer_id: &str) -> String {
        let mut chain = crate::pki::pem_encode("CERTIFICATE", leaf_der);
        if let Some(issuer) = self.issuer_by_id(issuer_id) {
            if !issuer.certificate().is_self_signed() {
                chain.push_str(&issuer.certificate().pem());
            }
        }
        chain
    }

    /// How many CRL partitions new certificates are spread over.
    pub fn crl_partitions(&self) -> u32 {
        self.crl_partitions
    }

    /// The whole store: for the workflow, and for edges to hand to
    /// workflow functions. Edges read through [`Authority::reads`].
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The read side of the store: what the HTTP layer may ask directly.
    pub fn reads(&self) -> &dyn crate::store::StoreRead {
        self.store.as_ref()
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

    /// CSR intake: parses the CSR, refuses a key the policy does not allow
    /// (before spending a signature verification on it), verifies proof of
    /// possession, and checks every name against policy.
    pub fn check_csr(&self, csr: &[u8]) -> Result<CheckedCsr, WorkflowError> {
        let unverified = UnverifiedCsr::parse(csr)?;
        self.policy.check_unverified(&unverified)?;
        let csr = unverified.verify()?;
        let identifiers = self.policy.check_csr(&csr)?;
        let bits = key_bits(csr.spki_der());
        if self.ca_keys.iter().any(|ca| ca.as_slice() == bits) {
            return Err(WorkflowError::CaKey);
        }
        Ok(CheckedCsr { csr, identifiers })
    }

    /// [`Authority::check_csr`], then refuses a key that was revoked for
    /// keyCompromise. Every path that accepts a CSR (REST orders, ACME
    /// finalize, `hallmark sign`, issuance itself) comes through here.
    pub async fn intake(&self, csr: &[u8]) -> Result<CheckedCsr, WorkflowError> {
        let checked = self.check_csr(csr)?;
        use sha2::Digest;
        let spki_sha256 = sha2::Sha256::digest(checked.csr.spki_der());
        if self.store.key_blocked(&spki_sha256).await? {
            return Err(WorkflowError::CompromisedKey);
        }
        Ok(checked)
    }

    /// Signs a CSR under policy without domain validation — the operator's
    /// `hallmark sign`. Nothing is written unless the certificate is issued;
    /// the certificate and its audit record are committed together.
    pub async fn sign_csr(
        &self,
        csr: &[u8],
        options: SignOptions,
        actor: &str,
    ) -> Result<Signed, WorkflowError> {
        let checked = self.intake(csr).await?;
        let spec = self
            .policy
            .profile(options.profile.as_deref().unwrap_or("server"))?;
        self.policy.check_profile_key(spec, checked.csr.key())?;
        let validity_days = self
            .policy
            .validity_days_within(options.validity_days, spec.cap())?;
        self.issue(
            checked.issue_request(
                &options.subject,
                spec,
                validity_days,
                options.account_id,
                actor,
            ),
            None,
            Vec::new(),
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
        self.issue(
            IssueRequest {
                spki_der,
                key_is_rsa: false,
                identifiers,
                subject: &Subject::default(),
                profile: Profile::Server.as_str(),
                shape: Profile::Server.shape(),
                validity_days,
                not_after: None,
                account_id: None,
                actor: "system",
                now: OffsetDateTime::now_utc(),
            },
            None,
            Vec::new(),
        )
        .await
    }

    /// Signs and records one certificate. `order` is created (already
    /// valid) or completed in the same transaction, after the audit records
    /// in `before`; an `order.valid` record follows the certificate's.
    pub(crate) async fn issue(
        &self,
        req: IssueRequest<'_>,
        mut order: Option<IssuanceOrder>,
        before: Vec<AuditEvent>,
    ) -> Result<Signed, WorkflowError> {
        // In the issuing CA's last months, certificates end with it (the
        // profile's validity is cut); in its last day it issues nothing.
        let issuer_end = self.issuer.certificate().not_after();
        if issuer_end - req.now < time::Duration::days(1) {
            return Err(WorkflowError::IssuerExpiring {
                id: self.issuer.certificate().id().to_owned(),
                not_after: issuer_end.unix_timestamp(),
            });
        }
        let not_after = Some(req.not_after.map_or(issuer_end, |t| t.min(issuer_end)));
        let serial = Serial::time_ordered(
            (req.now.unix_timestamp_nanos() / 1_000_000) as i64,
            &mut rand::thread_rng(),
        );
        let leaf_partition = crl_partition_of(&serial, self.crl_partitions);
        let leaf = LeafRequest {
            spki_der: req.spki_der,
            key_is_rsa: req.key_is_rsa,
            identifiers: req.identifiers,
            subject: req.subject,
            shape: req.shape,
            serial,
            now: req.now,
            validity_days: req.validity_days,
            not_after,
            crl_partition: leaf_partition,
        };
        let cert = self
            .issuer
            .issue_leaf(&leaf, self.policy.max_validity_days.max(req.validity_days))?;
        let serial = cert.serial.to_hex();
        let names: Vec<String> = cert.identifiers.iter().map(Identifier::value).collect();
        let logged = (names.join(","), req.account_id.clone());
        let order_id = match &mut order {
            None => None,
            Some(IssuanceOrder::Complete { order_id, .. }) => Some(order_id.clone()),
            Some(IssuanceOrder::Create(bundle)) => {
                bundle.order.status = OrderStatus::Valid;
                bundle.order.certificate_serial = Some(serial.clone());
                Some(bundle.order.id.clone())
            }
        };
        let mut events = before;
        events.push(AuditEvent {
            at: req.now,
            actor: req.actor.to_owned(),
            action: "certificate.issue".into(),
            subject: serial.clone(),
            details: serde_json::json!({
                "issuer": self.issuer.certificate().id(),
                "names": names,
                "profile": req.profile,
                "not_after": cert.not_after.unix_timestamp(),
                "order": order_id,
            }),
        });
        if let Some(id) = &order_id {
            events.push(AuditEvent {
                at: req.now,
                actor: req.actor.to_owned(),
                action: "order.valid".into(),
                subject: id.clone(),
                details: serde_json::json!({ "certificate": serial }),
            });
        }
        self.store
            .insert_issuance(Issuance {
                certificate: NewCertificate {
                    serial: cert.serial,
                    issuer_id: self.issuer.certificate().id().to_owned(),
                    account_id: req.account_id,
                    order_id,
                    subject: cert.subject.clone(),
                    identifiers: names,
                    profile: req.profile.to_owned(),
                    requested_by: req.actor.to_owned(),
                    not_before: cert.not_before,
                    not_after: cert.not_after,
                    der: cert.der.clone(),
                    crl_partition: i64::from(leaf_partition),
                },
                events,
                order,
            })
            .await?;
        self.issued.fetch_add(1, Ordering::Relaxed);
        crate::metrics::METRICS
            .issued
            .inc(&[req.profile, if req.key_is_rsa { "rsa" } else { "ecdsa" }]);
        // One line per issuance: what, for whom, by whom; never key material.
        tracing::info!(
            serial = %cert.serial,
            names = %logged.0,
            profile = req.profile,
            account = logged.1.as_deref().unwrap_or("-"),
            actor = req.actor,
            not_after = cert.not_after.unix_timestamp(),
            "certificate issued"
        );
        Ok(Signed {
            certificate: cert,
            issuer_pem: self.issuer_pem.clone(),
        })
    }
}

/// A CSR that passed intake and policy, with the identifiers to certify.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The verified CSR.
    pub csr: Csr,
    /// Its names, checked against policy, in CSR order.
    pub identifiers: Vec<Identifier>,
}

impl CheckedCsr {
    /// What to issue for this CSR: its key and checked names, with the
    /// rest from the caller.
    pub(crate) fn issue_request<'a>(
        &'a self,
        subject: &'a Subject,
        profile: &'a ProfileSpec,
        validity_days: u32,
        account_id: Option<String>,
        actor: &'a str,
    ) -> IssueRequest<'a> {
        IssueRequest {
            spki_der: self.csr.spki_der(),
            key_is_rsa: self.csr.key().is_rsa(),
            identifiers: &self.identifiers,
            subject,
            profile: &profile.name,
            shape: profile.shape,
            validity_days,
            not_after: None,
            account_id,
            actor,
            now: OffsetDateTime::now_utc(),
        }
    }
}

/// What to put in one certificate.
pub(crate) struct IssueRequest<'a> {
    pub spki_der: &'a [u8],
    pub key_is_rsa: bool,
    pub identifiers: &'a [Identifier],
    pub subject: &'a Subject,
    /// The profile's name, recorded with the certificate.
    pub profile: &'a str,
    pub shape: Shape,
    pub validity_days: u32,
    pub not_after: Option<OffsetDateTime>,
    pub account_id: Option<String>,
    pub actor: &'a str,
    pub now: OffsetDateTime,
}

/// The key bits of a SubjectPublicKeyInfo (whatever it says about its
/// algorithm's parameters); the whole DER if it does not parse.
fn key_bits(spki: &[u8]) -> &[u8] {
    use x509_parser::prelude::FromDer;
    use x509_parser::x509::SubjectPublicKeyInfo;
    match SubjectPublicKeyInfo::from_der(spki) {
        Ok((_, parsed)) => match parsed.subject_public_key.data {
            std::borrow::Cow::Borrowed(bits) => bits,
            std::borrow::Cow::Owned(_) => spki,
        },
        Err(_) => spki,
    }
}
