//! Orders, authorizations and challenges as the store keeps them. The
//! workflow decides every state change; the store applies each one as a
//! compare-and-set inside a transaction with its audit records, so two
//! instances can never both move the same order.

use async_trait::async_trait;

use super::{AuditEvent, Result};

use std::fmt;

use crate::acme_error::AcmeError;
use crate::pki::profile::Organization;
use crate::pki::Identifier;
use crate::words::words;

words! {
    /// Where an order is in its life (DESIGN §2).
    pub enum OrderStatus("order status") {
        /// Some identifier still needs a valid challenge.
        Pending = "pending",
        /// Every identifier is valid; issuance may start.
        Ready = "ready",
        /// Issuance has been claimed by an instance.
        Processing = "processing",
        /// OV: validated, waiting for a reviewer.
        AwaitingApproval = "awaiting_approval",
        /// The certificate is issued.
        Valid = "valid",
        /// A challenge failed, issuance failed, or the order expired.
        Invalid = "invalid",
        /// A reviewer said no.
        Rejected = "rejected",
    }
}

words! {
    /// Where an authorization is (RFC 8555 §7.1.6; hallmark never
    /// deactivates or revokes one).
    pub enum AuthorizationStatus("authorization status") {
        /// Its challenge has not succeeded yet.
        Pending = "pending",
        /// Control of the identifier is proven.
        Valid = "valid",
        /// Its challenge failed.
        Invalid = "invalid",
    }
}

words! {
    /// Where a challenge is (RFC 8555 §7.1.6).
    pub enum ChallengeStatus("challenge status") {
        /// Waiting for the client to ask for validation.
        Pending = "pending",
        /// A validator is at work.
        Processing = "processing",
        /// The validator saw the answer.
        Valid = "valid",
        /// The validator did not.
        Invalid = "invalid",
    }
}

words! {
    /// The challenge types (RFC 8555 §8.3, §8.4; RFC 8737;
    /// draft-ietf-acme-dns-account-label).
    pub enum ChallengeKind("challenge type") {
        /// An HTTP request to port 80.
        Http01 = "http-01",
        /// A TXT record under `_acme-challenge`.
        Dns01 = "dns-01",
        /// A TLS handshake on port 443 with the `acme-tls/1` protocol.
        TlsAlpn01 = "tls-alpn-01",
        /// A TXT record under `_<account label>._acme-challenge`, so
        /// several accounts can validate one name at once.
        DnsAccount01 = "dns-account-01",
        /// A standing TXT record at `_validation-persist` naming this CA
        /// and the account (offered when `acme.caa_identities` is set).
        DnsPersist01 = "dns-persist-01",
    }
}

impl ChallengeKind {
    /// The challenges offered for an identifier: wildcards only by the DNS
    /// challenges, IP addresses by http-01 and tls-alpn-01 (RFC 8738 §7).
    pub fn offered_for(identifier: &Identifier) -> &'static [ChallengeKind] {
        match identifier {
            Identifier::Dns(name) if name.starts_with("*.") => &[
                ChallengeKind::Dns01,
                ChallengeKind::DnsAccount01,
                ChallengeKind::DnsPersist01,
            ],
            Identifier::Dns(_) => &[
                ChallengeKind::Http01,
                ChallengeKind::Dns01,
                ChallengeKind::TlsAlpn01,
                ChallengeKind::DnsAccount01,
                ChallengeKind::DnsPersist01,
            ],
            Identifier::Ip(_) => &[ChallengeKind::Http01, ChallengeKind::TlsAlpn01],
        }
    }
}

words! {
    /// What an identifier is (RFC 8555 §9.7.7, RFC 8738).
    pub enum IdentifierKind("identifier type") {
        /// A DNS name (a wildcard keeps its `*.`).
        Dns = "dns",
        /// An IP address.
        Ip = "ip",
    }
}

impl IdentifierKind {
    /// What `identifier` is.
    pub fn of(identifier: &Identifier) -> Self {
        match identifier {
            Identifier::Dns(_) => IdentifierKind::Dns,
            Identifier::Ip(_) => IdentifierKind::Ip,
        }
    }
}

words! {
    /// DV (domain control only) or OV (also vetted by a reviewer).
    pub enum Validation("validation") {
        /// Domain validation.
        Dv = "dv",
        /// Organisation validation.
        Ov = "ov",
    }
}

words! {
    /// Which front door an order came through.
    pub enum OrderSource("order source") {
        /// The REST API.
        Rest = "rest",
        /// ACME.
        Acme = "acme",
    }
}

impl OrderStatus {
    /// Whether nothing more can happen to the order.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            OrderStatus::Valid | OrderStatus::Invalid | OrderStatus::Rejected
        )
    }
}

/// Every move an order can make (DESIGN §2), in one place. The workflow
/// names a transition and [`OrderWrites::transition_order`] applies
/// it (status checked and changed in one statement); the moves made inside
/// other store operations — a challenge result (`finish_challenge`), the
/// stored certificate (`complete_issuance`), a disabled account — are the
/// same edges, listed here so the whole machine is one table.
///
/// ```text
///  pending ──Validated──▶ ready ──IssueReady─────────────────────────────▶ valid
///     │                      └──ClaimIssuance──▶ processing ──Issue──▶ ┘
///     └──AwaitApproval──▶ awaiting_approval ──Approve──▶ ┘  ▲ └RetakeClaim┘
///                                └──Reject──▶ rejected
///  every unfinished status ──Fail──▶ invalid
/// ```
///
/// A `ready` order is issued in one commit (`IssueReady`: the certificate
/// and the move stored together, guarded on `ready`) by ACME finalize and
/// by the request that proved a REST order's last name; two that race
/// both sign, and only the first is stored. The worker, resuming a
/// `ready` order nobody issued, claims it first (`ClaimIssuance`), so an
/// order whose issuance kills its process is retried a bounded number of
/// times (`RetakeClaim` counts them), not forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// pending → ready: every identifier proven (DV).
    Validated,
    /// pending → awaiting_approval: every identifier proven (OV).
    AwaitApproval,
    /// ready → valid: the certificate stored with the move, in one commit
    /// (ACME finalize; a REST DV order once its last name is proven).
    IssueReady,
    /// ready → processing: the worker claims an issuance nobody made.
    ClaimIssuance,
    /// awaiting_approval → processing: a reviewer approved.
    Approve,
    /// awaiting_approval → rejected: a reviewer said no.
    Reject,
    /// processing → processing: a stale claim taken over.
    RetakeClaim,
    /// processing → valid: the certificate is stored.
    Issue,
    /// (an unfinished status) → invalid: a challenge or the issuance
    /// failed, the order expired, or its account was disabled.
    Fail(OrderStatus),
}

impl Transition {
    /// Every transition of the table (`Fail` from each unfinished status).
    pub const ALL: [Transition; 12] = [
        Transition::Validated,
        Transition::AwaitApproval,
        Transition::IssueReady,
        Transition::ClaimIssuance,
        Transition::Approve,
        Transition::Reject,
        Transition::RetakeClaim,
        Transition::Issue,
        Transition::Fail(OrderStatus::Pending),
        Transition::Fail(OrderStatus::Ready),
        Transition::Fail(OrderStatus::AwaitingApproval),
        Transition::Fail(OrderStatus::Processing),
    ];

    /// Where it starts.
    pub fn from(self) -> OrderStatus {
        match self {
            Transition::Validated | Transition::AwaitApproval => OrderStatus::Pending,
            Transition::IssueReady | Transition::ClaimIssuance => OrderStatus::Ready,
            Transition::Approve | Transition::Reject => OrderStatus::AwaitingApproval,
            Transition::RetakeClaim | Transition::Issue => OrderStatus::Processing,
            Transition::Fail(from) => from,
        }
    }

    /// Where it ends.
    pub fn to(self) -> OrderStatus {
        match self {
            Transition::Validated => OrderStatus::Ready,
            Transition::AwaitApproval => OrderStatus::AwaitingApproval,
            Transition::ClaimIssuance | Transition::Approve | Transition::RetakeClaim => {
                OrderStatus::Processing
            }
            Transition::Reject => OrderStatus::Rejected,
            Transition::IssueReady | Transition::Issue => OrderStatus::Valid,
            Transition::Fail(_) => OrderStatus::Invalid,
        }
    }

    /// The audit action it is recorded as (`order.<where it ends>`, or
    /// what a reviewer did); `None` for taking over a stale claim, which
    /// records nothing (the claim's first move was recorded).
    pub fn audit_action(self) -> Option<&'static str> {
        match self {
            Transition::Validated => Some("order.ready"),
            Transition::AwaitApproval => Some("order.awaiting_approval"),
            Transition::ClaimIssuance => Some("order.processing"),
            Transition::Approve => Some("order.approve"),
            Transition::Reject => Some("order.reject"),
            Transition::RetakeClaim => None,
            Transition::IssueReady | Transition::Issue => Some("order.valid"),
            Transition::Fail(_) => Some("order.invalid"),
        }
    }

    /// Whether it is in the table (`Fail` from a final status is not).
    pub fn is_legal(self) -> bool {
        !self.from().is_final()
    }

    /// The transition from `from` to `to`, if the table has one.
    pub fn between(from: OrderStatus, to: OrderStatus) -> Option<Transition> {
        Transition::ALL
            .into_iter()
            .find(|t| t.from() == from && t.to() == to)
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} → {}", self.from(), self.to())
    }
}

/// Why an order or a challenge failed: an ACME error type and one
/// sentence. Stored as the RFC 9457 problem document ACME clients are
/// shown (`{"type": urn, "detail": …}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The error type.
    pub kind: AcmeError,
    /// What went wrong, in one sentence.
    pub detail: String,
}

impl Failure {
    /// A failure of type `kind`.
    pub fn new(kind: AcmeError, detail: impl Into<String>) -> Self {
        Failure {
            kind,
            detail: detail.into(),
        }
    }

    /// The problem document ACME and the REST API show.
    pub fn document(&self) -> serde_json::Value {
        serde_json::json!({"type": self.kind.urn(), "detail": self.detail})
    }

    /// The stored text.
    pub fn to_json(&self) -> String {
        self.document().to_string()
    }

    /// Reads the stored text.
    pub fn from_json(text: &str) -> std::result::Result<Self, String> {
        #[derive(serde::Deserialize)]
        struct Doc {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            detail: String,
        }
        let doc: Doc = serde_json::from_str(text).map_err(|e| format!("problem {text:?}: {e}"))?;
        let kind =
            AcmeError::from_urn(&doc.kind).ok_or_else(|| format!("problem type {:?}", doc.kind))?;
        Ok(Failure::new(kind, doc.detail))
    }
}

/// Reads a text column into a type with `parse: fn(&str) -> Result<T, E>`
/// (a JSON document or a word), so `FromRow` records hold it typed.
macro_rules! text_column {
    ($t:ty, $parse:expr) => {
        impl<DB: sqlx::Database> sqlx::Type<DB> for $t
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }

            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $t
        where
            String: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: DB::ValueRef<'r>,
            ) -> std::result::Result<Self, sqlx::error::BoxDynError> {
                let text = <String as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok($parse(&text)?)
            }
        }
    };
}

text_column!(Failure, Failure::from_json);
text_column!(Organization, serde_json::from_str::<Organization>);

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OrderRecord {
    /// Random id (`ord_…`).
    pub id: String,
    /// Owning account.
    pub account_id: String,
    /// Where it is.
    pub status: OrderStatus,
    /// DV or OV.
    pub validation: Validation,
    /// REST or ACME.
    pub source: OrderSource,
    /// Certificate profile.
    pub profile: String,
    /// Requested validity, if any.
    pub validity_days: Option<i64>,
    /// The CSR (DER), once known.
    pub csr_der: Option<Vec<u8>>,
    /// OV organisation details (as requested, then as vetted).
    pub organization: Option<Organization>,
    /// Why it became invalid.
    pub error: Option<Failure>,
    /// Why a reviewer rejected it.
    pub rejection_reason: Option<String>,
    /// The note a reviewer approved it with.
    pub approval_reason: Option<String>,
    /// The issued certificate's serial (hex).
    pub certificate_serial: Option<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; also the claim time while `processing`.
    pub updated_at: i64,
    /// Unix seconds; an order not finished by then becomes invalid.
    pub expires_at: i64,
    /// The certificate's requested end (ACME `notAfter`), Unix seconds.
    pub not_after: Option<i64>,
    /// The ACME account that opened it (ACME orders only).
    pub acme_account_id: Option<String>,
    /// How often a stale `processing` claim on it was taken over.
    pub issue_attempts: i64,
}

impl OrderRecord {
    /// This order as the store holds it after `transition` with `update`
    /// at `at` succeeded: what the transition's UPDATE writes, so a caller
    /// that made the move needs no read to answer with the result.
    pub fn moved(&self, transition: Transition, update: &OrderUpdate, at: i64) -> OrderRecord {
        let keep = |new: &Option<String>, old: &Option<String>| new.clone().or(old.clone());
        OrderRecord {
            status: transition.to(),
            updated_at: at,
            error: update.error.clone().or(self.error.clone()),
            rejection_reason: keep(&update.rejection_reason, &self.rejection_reason),
            approval_reason: keep(&update.approval_reason, &self.approval_reason),
            organization: update.organization.clone().or(self.organization.clone()),
            csr_der: update.csr_der.clone().or(self.csr_der.clone()),
            issue_attempts: self.issue_attempts + i64::from(update.count_issue_attempt),
            ..self.clone()
        }
    }

    /// This `processing` order as the store holds it after the issuance
    /// of `serial` completed it at `at`.
    pub fn completed(&self, serial: &str, at: i64) -> OrderRecord {
        OrderRecord {
            status: OrderStatus::Valid,
            certificate_serial: Some(serial.to_owned()),
            updated_at: at,
            ..self.clone()
        }
    }
}

/// One identifier's authorization, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuthorizationRecord {
    /// Random id (`authz_…`).
    pub id: String,
    /// Its order.
    pub order_id: String,
    /// Owning account (for reuse across orders).
    pub account_id: String,
    /// DNS name or IP address.
    pub identifier_type: IdentifierKind,
    /// The name or address (wildcards keep their `*.`).
    pub identifier_value: String,
    /// Whether the identifier is a wildcard.
    pub wildcard: bool,
    /// Where it is.
    pub status: AuthorizationStatus,
    /// When control was proven (for a reused authorization, when it was
    /// first proven).
    pub validated_at: Option<i64>,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// One challenge, as stored.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChallengeRecord {
    /// Random id (`chall_…`).
    pub id: String,
    /// Its authorization.
    pub authorization_id: String,
    /// Its type (column `type`).
    #[sqlx(rename = "type")]
    pub kind: ChallengeKind,
    /// Random token (RFC 8555 §8.3: ≥ 128 bits, base64url).
    pub token: String,
    /// Where it is.
    pub status: ChallengeStatus,
    /// Why it failed.
    pub error: Option<Failure>,
    /// When validation was last started.
    pub attempted_at: Option<i64>,
    /// When it succeeded.
    pub validated_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
}

/// An authorization with its challenges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationBundle {
    /// The authorization.
    pub authorization: AuthorizationRecord,
    /// Its challenges (none for a reused authorization).
    pub challenges: Vec<ChallengeRecord>,
}

/// An order with everything under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBundle {
    /// The order.
    pub order: OrderRecord,
    /// One per identifier, in request order.
    pub authorizations: Vec<AuthorizationBundle>,
}

/// What a finished validation did to its challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeOutcome {
    /// The challenge.
    pub challenge_id: String,
    /// Its authorization.
    pub authorization_id: String,
    /// Its order.
    pub order_id: String,
    /// When it finished (Unix seconds).
    pub at: i64,
    /// The validator's error if it failed.
    pub error: Option<Failure>,
    /// The order's move once every authorization is valid
    /// ([`Transition::Validated`], or [`Transition::AwaitApproval`] for OV).
    pub when_all_valid: Transition,
    /// The claim this result makes itself, for a challenge validated
    /// before any claim of it was committed (an ACME challenge POST that
    /// waits for its result): in the same commit, the challenge moves
    /// `pending → processing` under the claim's conditions before the
    /// result is written, and this event (`challenge.attempt`, its time
    /// the claim's) is recorded only if that move happened. `None` when the
    /// challenge was claimed first.
    pub claim: Option<AuditEvent>,
}

/// Fields an order transition may set besides its status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderUpdate {
    /// Why it became invalid.
    pub error: Option<Failure>,
    /// Why it was rejected.
    pub rejection_reason: Option<String>,
    /// The reviewer's note on an approval.
    pub approval_reason: Option<String>,
    /// Vetted organisation, replacing the requested one.
    pub organization: Option<Organization>,
    /// The CSR an ACME order is finalized with.
    pub csr_der: Option<Vec<u8>>,
    /// Only if the order was last updated before this (to take over a
    /// stale `processing` claim).
    pub updated_before: Option<i64>,
    /// Count one more taken-over issuance attempt.
    pub count_issue_attempt: bool,
}

/// What an issuance does to an order, in the same transaction as the
/// certificate.
#[derive(Debug, Clone)]
pub enum IssuanceOrder {
    /// Creates the order (already valid: every identifier was authorised).
    Create(Box<OrderBundle>),
    /// Moves an existing order to `valid` by `transition` (`Issue` from
    /// `processing`, `IssueReady` from `ready`); nothing is stored if the
    /// order is no longer where the transition starts.
    Complete {
        /// The order.
        order_id: String,
        /// How it gets to `valid`.
        transition: Transition,
        /// The CSR to keep with the order (ACME finalize's).
        csr_der: Option<Vec<u8>>,
        /// When it is completed (its `updated_at`, Unix seconds): known
        /// to the caller, so the process that wrote it knows the order
        /// as stored.
        at: i64,
    },
}

/// A page of orders: newest first, keyed by `(created_at, id)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderQuery {
    /// Only this account's (none: every account's).
    pub account_id: Option<String>,
    /// Only orders in this status.
    pub status: Option<OrderStatus>,
    /// Only orders older than this `(created_at, id)`.
    pub before: Option<(i64, String)>,
    /// At most this many.
    pub limit: i64,
}

/// What can be read about orders, authorizations and challenges.
#[async_trait]
pub trait OrderReads: Send + Sync + 'static {
    /// One order with its authorizations and challenges. An instance
    /// that is its database's one server answers the orders it reads and
    /// writes from memory; where other instances may move orders, only a
    /// finished one (valid or invalid, which nothing moves again), so a
    /// client behind a load balancer never sees an earlier status than
    /// the one it was last given.
    async fn order(&self, id: &str) -> Result<OrderBundle>;

    /// The order as this instance last wrote or read it, at most
    /// `recent::FRESH_FOR` ago, even where another instance may have
    /// moved it since; `None` if there is no such view. Only for what no
    /// move changes once seen (an order's names and owners, an
    /// authorization that is valid or invalid with no challenge
    /// `processing`: hallmark never deactivates one) and for a write
    /// guarded on the status the view shows, which a stale view only gets
    /// refused. Never for answering an order's status.
    fn order_seen(&self, id: &str) -> Option<OrderBundle>;

    /// One order as the database holds it now, never a view kept here:
    /// for a refusal that rests on the order's status ("not ready yet"),
    /// which a view older than another instance's move would make wrongly.
    async fn order_now(&self, id: &str) -> Result<OrderBundle>;

    /// A page of orders, newest first.
    async fn orders(&self, query: &OrderQuery) -> Result<Vec<OrderRecord>>;

    /// When `account_id` last proved control of the identifier, if it did at
    /// or after `since` (Unix seconds).
    async fn last_validation(
        &self,
        account_id: &str,
        identifier_type: IdentifierKind,
        identifier_value: &str,
        since: i64,
    ) -> Result<Option<i64>>;

    /// How many unexpired `pending` authorizations `account_id` holds.
    async fn pending_authorizations(&self, account_id: &str, now: i64) -> Result<i64>;

    /// Challenges `processing` since before `attempted_before` (their
    /// validator died with its process): `(challenge, order, attempted_at)`.
    async fn stale_challenges(
        &self,
        attempted_before: i64,
        limit: i64,
    ) -> Result<Vec<(String, String, i64)>>;

    /// Orders whose issuance should be (re)started: REST DV orders `ready`
    /// since before `ready_before`, and orders `processing` since before
    /// `processing_before`.
    async fn orders_to_resume(
        &self,
        ready_before: i64,
        processing_before: i64,
        limit: i64,
    ) -> Result<Vec<OrderRecord>>;

    /// Unfinished orders (`pending`, `ready`, `awaiting_approval`) whose
    /// `expires_at` has passed.
    async fn expired_orders(&self, now: i64, limit: i64) -> Result<Vec<OrderRecord>>;
}

/// Every change to orders, authorizations and challenges.
#[async_trait]
pub trait OrderWrites: Send + Sync + 'static {
    /// Creates an order with its authorizations and challenges, and its
    /// audit records, in one transaction.
    async fn create_order(&self, bundle: &OrderBundle, events: Vec<AuditEvent>) -> Result<()>;

    /// Moves a challenge from `pending` to `processing` if it, its
    /// authorization and its order are all still `pending`; `false` if not.
    async fn claim_challenge(
        &self,
        challenge_id: &str,
        order_id: &str,
        at: i64,
        event: AuditEvent,
    ) -> Result<bool>;

    /// Takes over a stale `processing` challenge if nobody else has since
    /// (its `attempted_at` is still `attempted_at_was`).
    async fn reclaim_challenge(
        &self,
        challenge_id: &str,
        attempted_at_was: i64,
        at: i64,
    ) -> Result<bool>;

    /// Records a validation's result: the challenge and its authorization
    /// become valid or invalid; a failure makes the order invalid; the last
    /// valid authorization makes `outcome.when_all_valid`.
    /// `on_order_change` is written too if the order moved. Returns the
    /// order's new status if it changed; `Conflict` if the challenge was not
    /// `processing` (after the result's own claim, if it makes one:
    /// [`ChallengeOutcome::claim`]).
    async fn finish_challenge(
        &self,
        outcome: &ChallengeOutcome,
        events: Vec<AuditEvent>,
        on_order_change: Vec<AuditEvent>,
    ) -> Result<Option<OrderStatus>>;

    /// Makes `transition` (setting `update`'s fields) with its audit
    /// records; `false` (and nothing written) if the order was not in the
    /// transition's starting status. An illegal transition is refused.
    async fn transition_order(
        &self,
        order_id: &str,
        transition: Transition,
        update: &OrderUpdate,
        at: i64,
        events: Vec<AuditEvent>,
    ) -> Result<bool>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;
    use OrderStatus::*;

    #[test]
    fn a_failure_is_stored_as_the_problem_document_clients_see() {
        let f = Failure::new(
            AcmeError::Dns,
            "no TXT record at _acme-challenge.a.internal",
        );
        let text = f.to_json();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(doc["type"], "urn:ietf:params:acme:error:dns");
        assert_eq!(doc["detail"], f.detail);
        assert_eq!(Failure::from_json(&text), Ok(f));
        assert!(Failure::from_json(r#"{"type":"urn:x:nope","detail":"d"}"#)
            .unwrap_err()
            .contains("urn:x:nope"));
        assert!(Failure::from_json("not json").is_err());
    }

    fn bundle(id: &str) -> OrderBundle {
        let authz = format!("authz_{id}_000");
        OrderBundle {
            order: OrderRecord {
                id: format!("ord_{id}"),
                account_id: "acct_1".into(),
                status: Pending,
                validation: Validation::Ov,
                source: OrderSource::Rest,
                profile: "server".into(),
                validity_days: Some(30),
                csr_der: None,
                organization: Some(Organization {
                    name: "Example \"Ltd\"".into(),
                    locality: None,
                    state: Some("Bavaria".into()),
                    country: Some("DE".into()),
                }),
                error: Some(Failure::new(AcmeError::Caa, "a CAA record forbids it")),
                rejection_reason: None,
                approval_reason: None,
                certificate_serial: None,
                created_at: 1,
                updated_at: 1,
                expires_at: 4_000_000_000,
                not_after: None,
                acme_account_id: None,
                issue_attempts: 0,
            },
            authorizations: vec![AuthorizationBundle {
                authorization: AuthorizationRecord {
                    id: authz.clone(),
                    order_id: format!("ord_{id}"),
                    account_id: "acct_1".into(),
                    identifier_type: IdentifierKind::Ip,
                    identifier_value: "10.0.0.1".into(),
                    wildcard: false,
                    status: AuthorizationStatus::Pending,
                    validated_at: None,
                    expires_at: 4_000_000_000,
                    created_at: 1,
                },
                challenges: vec![ChallengeRecord {
                    id: format!("chall_{id}_000_t"),
                    authorization_id: authz,
                    kind: ChallengeKind::TlsAlpn01,
                    token: "tok".into(),
                    status: ChallengeStatus::Pending,
                    error: Some(Failure::new(AcmeError::Tls, "handshake failed")),
                    attempted_at: None,
                    validated_at: None,
                    created_at: 1,
                }],
            }],
        }
    }

    /// A SQLite store in `dir` with account `acct_1`: its URL, the store
    /// and a raw pool to look at or spoil its rows.
    async fn store_with_account(
        dir: &tempfile::TempDir,
    ) -> (
        String,
        std::sync::Arc<dyn crate::store::Store>,
        sqlx::SqlitePool,
    ) {
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let store = crate::store::connect(&url).await.unwrap();
        let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(
            "INSERT INTO accounts (id, name, role, created_at) VALUES ('acct_1', 't', 'requester', 1)",
        )
        .execute(&raw)
        .await
        .unwrap();
        (url, store, raw)
    }

    #[tokio::test]
    async fn typed_values_come_back_as_written_and_an_unreadable_one_is_a_corrupt_row() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store, raw) = store_with_account(&dir).await;
        let written = bundle("a");
        store.create_order(&written, Vec::new()).await.unwrap();
        assert_eq!(store.order("ord_a").await.unwrap(), written);
        // Read back by a store that did not write it (this one keeps what
        // it wrote).
        let reader = crate::store::connect(&url).await.unwrap();
        assert_eq!(reader.order("ord_a").await.unwrap(), written);

        // The schema's CHECKs keep words in their lists; JSON has no CHECK.
        sqlx::query("UPDATE challenges SET error = '{\"type\": \"urn:x:gone\"}'")
            .execute(&raw)
            .await
            .unwrap();
        let reader = crate::store::connect(&url).await.unwrap();
        match reader.order("ord_a").await {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("urn:x:gone"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_reused_authorization_is_kept_in_its_order_and_reads_back_in_id_order() {
        let dir = tempfile::tempdir().unwrap();
        let (url, store, raw) = store_with_account(&dir).await;
        // A fresh authorization (with a challenge) between two reused ones.
        let mut written = bundle("b");
        let mut fresh = written.authorizations[0].clone();
        let template = fresh.authorization.clone();
        let reused = |n: u32, value: &str, wildcard: bool| AuthorizationBundle {
            authorization: AuthorizationRecord {
                id: format!("authz_b_{n:03}"),
                identifier_type: IdentifierKind::Dns,
                identifier_value: value.into(),
                wildcard,
                status: AuthorizationStatus::Valid,
                validated_at: Some(1_700_000_000),
                expires_at: 1_702_592_000,
                ..template.clone()
            },
            challenges: Vec::new(),
        };
        fresh.authorization.id = "authz_b_001".into();
        fresh.challenges[0].id = "chall_b_001_t".into();
        fresh.challenges[0].authorization_id = "authz_b_001".into();
        written.authorizations = vec![
            reused(2, "*.b.internal", true),
            fresh,
            reused(0, "a.internal", false),
        ];
        store.create_order(&written, Vec::new()).await.unwrap();

        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT id FROM authorizations WHERE order_id = 'ord_b'")
                .fetch_all(&raw)
                .await
                .unwrap();
        assert_eq!(rows, vec![("authz_b_001".to_owned(),)]);
        let reader = crate::store::connect(&url).await.unwrap();
        let read = reader.order("ord_b").await.unwrap();
        let ids: Vec<&str> = read
            .authorizations
            .iter()
            .map(|a| a.authorization.id.as_str())
            .collect();
        assert_eq!(ids, ["authz_b_000", "authz_b_001", "authz_b_002"]);
        written
            .authorizations
            .sort_by(|a, b| a.authorization.id.cmp(&b.authorization.id));
        assert_eq!(read, written);
        assert_eq!(store.order("ord_b").await.unwrap(), written);

        sqlx::query("UPDATE orders SET reused_authorizations = '[{\"id\": 1}]'")
            .execute(&raw)
            .await
            .unwrap();
        let reader = crate::store::connect(&url).await.unwrap();
        match reader.order("ord_b").await {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("ord_b"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_transition_table_is_exactly_the_designed_machine() {
        let edges = [
            (Pending, Ready),
            (Pending, AwaitingApproval),
            (Pending, Invalid),
            (Ready, Processing),
            (Ready, Valid),
            (Ready, Invalid),
            (AwaitingApproval, Processing),
            (AwaitingApproval, Rejected),
            (AwaitingApproval, Invalid),
            (Processing, Processing),
            (Processing, Valid),
            (Processing, Invalid),
        ];
        for &from in OrderStatus::ALL {
            for &to in OrderStatus::ALL {
                assert_eq!(
                    Transition::between(from, to).is_some(),
                    edges.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
        }
        for t in Transition::ALL {
            assert!(t.is_legal(), "{t}");
            assert_eq!(Transition::between(t.from(), t.to()), Some(t));
        }
    }

    #[test]
    fn nothing_leaves_a_final_status_and_everything_else_can_fail() {
        for &status in OrderStatus::ALL {
            let outgoing = Transition::ALL
                .iter()
                .filter(|t| t.from() == status)
                .count();
            if status.is_final() {
                assert_eq!(outgoing, 0, "{status}");
                assert!(!Transition::Fail(status).is_legal(), "{status}");
            } else {
                assert!(Transition::Fail(status).is_legal(), "{status}");
                assert!(outgoing >= 2, "{status}");
            }
        }
        assert_eq!(
            Transition::Approve.to_string(),
            "awaiting_approval → processing"
        );
        for t in Transition::ALL {
            match t.audit_action() {
                Some(action) => assert!(action.starts_with("order."), "{t}"),
                None => assert_eq!(t, Transition::RetakeClaim),
            }
        }
        assert_eq!(Transition::Validated.audit_action(), Some("order.ready"));
    }
}
