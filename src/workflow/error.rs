//! The workflow's one error vocabulary: each refusal a variant carrying
//! the facts (which order, which status), its sentence made by `Display`.
//! The HTTP layer maps variants to problem types (`http/problem.rs`).

use crate::pki::ca::CaError;
use crate::pki::crl::RevocationReason;
use crate::pki::profile::UnknownProfile;
use crate::pki::{CsrError, Serial};
use crate::policy::PolicyError;
use crate::store::{OrderStatus, StoreError};

use super::rfc3339;

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
    /// The request is well-formed JSON but asks for something that makes
    /// no sense (the sentence says what).
    #[error("{0}")]
    Malformed(String),
    /// The account made too many orders recently.
    #[error(
        "this account has created too many orders recently; try again in {retry_after_secs} s"
    )]
    RateLimited {
        /// When to try again.
        retry_after_secs: u64,
    },
    /// The account holds too many unfinished authorizations.
    #[error(
        "this account has {pending} unfinished authorizations (at most {limit}); answer or let them expire before asking for new names"
    )]
    TooManyPending {
        /// How many it holds.
        pending: i64,
        /// `orders.max_pending_authorizations`.
        limit: u32,
    },
    /// The order, challenge or certificate does not exist or is not the
    /// caller's.
    #[error(transparent)]
    NotFound(#[from] Missing),
    /// The caller may see the thing but not do this to it.
    #[error(transparent)]
    Forbidden(#[from] NotAllowed),
    /// The thing is not in a state that allows this.
    #[error(transparent)]
    Conflict(#[from] Clash),
    /// The certificate was already revoked; nothing changed.
    #[error("certificate {serial} was already revoked at {} ({reason}); nothing was changed", rfc3339(*.at))]
    AlreadyRevoked {
        /// The certificate.
        serial: Serial,
        /// When it was revoked.
        at: i64,
        /// Why.
        reason: RevocationReason,
    },
    /// The issuing CA ends too soon to issue anything useful.
    #[error(
        "the issuing CA {id} expires at {}, within a day, so it issues nothing more; the operator must install its successor",
        rfc3339(*.not_after)
    )]
    IssuerExpiring {
        /// The issuer.
        id: String,
        /// Its notAfter (Unix seconds).
        not_after: i64,
    },
    /// An ACME order was finalized while not `ready`.
    #[error("order {order_id} is {status}; it can be finalized only when ready")]
    OrderNotReady {
        /// The order.
        order_id: String,
        /// Its status.
        status: OrderStatus,
    },
    /// A finalize CSR names other identifiers than its order (ACME
    /// `badCSR`).
    #[error("the CSR names {} but the order is for {}", .csr.join(", "), .order.join(", "))]
    CsrNamesDiffer {
        /// What the CSR names, sorted.
        csr: Vec<String>,
        /// What the order is for, sorted.
        order: Vec<String>,
    },
    /// The CSR's key was revoked for keyCompromise (ACME `badPublicKey`).
    #[error(
        "the CSR's public key belongs to a certificate revoked for keyCompromise; make a new key"
    )]
    CompromisedKey,
    /// The CSR's key is one of this CA's own (ACME `badPublicKey`).
    #[error("the CSR's public key is this CA's own key; make a new key")]
    CaKey,
}

/// What was looked for and does not exist (or is not the caller's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Missing {
    /// No such order.
    #[error("there is no order {0:?}")]
    Order(String),
    /// The order has no such challenge.
    #[error("order {order_id} has no challenge {challenge_id:?}")]
    Challenge {
        /// The order.
        order_id: String,
        /// The challenge asked for.
        challenge_id: String,
    },
    /// No such certificate.
    #[error("there is no certificate {0}")]
    Certificate(Serial),
}

/// What the caller may not do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    /// Only the owning account answers an order's challenges.
    #[error("only the account that owns an order can answer its challenges")]
    NotOrderOwner,
    /// Requester keys do not review.
    #[error("only reviewer and admin API keys may {0} orders")]
    NotReviewer(&'static str),
    /// Four-eyes: nobody reviews their own account's order.
    #[error("an account cannot {0} its own order; another reviewer must")]
    OwnOrder(&'static str),
    /// A reviewer revoking a certificate of another account.
    #[error("only the owning account or an admin may revoke this certificate")]
    NotCertificateOwner,
    /// A revocation proof not signed by the certificate's key.
    #[error("the proof's signature does not verify with the certificate's public key")]
    ProofSignature,
}

/// Why the thing's state does not allow the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Clash {
    /// The order moved on while the request ran.
    #[error("order {0} changed while this request ran; fetch it and try again")]
    OrderChanged(String),
    /// Challenges are answered only while the order is pending.
    #[error("order {order_id} is {status}; challenges can only be answered while it is pending")]
    OrderNotPending {
        /// The order.
        order_id: String,
        /// Its status.
        status: OrderStatus,
    },
    /// The name is proven (or failed) already.
    #[error(
        "the authorization for {identifier} is already {status}; no other challenge is needed"
    )]
    AuthorizationDone {
        /// The name.
        identifier: String,
        /// The authorization's status.
        status: crate::store::AuthorizationStatus,
    },
    /// Only an order awaiting approval is approved or rejected.
    #[error("order {order_id} is {status}; only an order awaiting approval can be {verb}d")]
    NotAwaitingApproval {
        /// The order.
        order_id: String,
        /// Its status.
        status: OrderStatus,
        /// `approve` or `reject`.
        verb: &'static str,
    },
    /// Revoking an expired certificate would change no CRL.
    #[error("certificate {serial} expired at {}; an expired certificate is no longer listed in CRLs, so revoking it has no effect", rfc3339(*.not_after))]
    CertificateExpired {
        /// The certificate.
        serial: Serial,
        /// Its notAfter.
        not_after: i64,
    },
    /// A delta CRL refers to a complete one.
    #[error("a delta CRL needs a complete CRL to refer to; generate the complete CRL first")]
    DeltaWithoutBase,
    /// Another instance published a CRL this one cannot read back.
    #[error("{0} was published elsewhere but cannot be read")]
    CrlUnreadable(String),
    /// A root CRL signed offline that cannot be published.
    #[error("the root CRL {0}")]
    BadRootCrl(String),
}
