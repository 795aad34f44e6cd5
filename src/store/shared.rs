//! SQL shared by both backends. Both dialects accept the same statements
//! (`$n` parameters, `RETURNING`, the same column types as seen from Rust),
//! so the statements live once, here; `sqlite.rs` and `postgres.rs` add
//! what differs (connection set-up, pools, migrations).

use super::{
    AuthorizationBundle, AuthorizationRecord, CertificateRecord, ChallengeRecord, IssuerKind,
    IssuerRecord, OrderBundle, OrderRecord, Result, StoreError,
};

#[derive(sqlx::FromRow)]
pub(super) struct IssuerRow {
    id: String,
    kind: String,
    subject: String,
    cert_der: Vec<u8>,
    key_id: Vec<u8>,
    not_before: i64,
    not_after: i64,
}

impl IssuerRow {
    pub(super) fn into_record(self) -> Result<IssuerRecord> {
        let kind = match self.kind.as_str() {
            "root" => IssuerKind::Root,
            "intermediate" => IssuerKind::Intermediate,
            other => return Err(StoreError::Corrupt(format!("issuer kind {other:?}"))),
        };
        Ok(IssuerRecord {
            id: self.id,
            kind,
            subject: self.subject,
            cert_der: self.cert_der,
            key_id: self.key_id,
            not_before: self.not_before,
            not_after: self.not_after,
        })
    }
}

pub(super) const SELECT_ISSUERS: &str =
    "SELECT id, kind, subject, cert_der, key_id, not_before, not_after \
     FROM issuers ORDER BY CASE kind WHEN 'root' THEN 0 ELSE 1 END, not_before";

pub(super) const UPSERT_ISSUER: &str =
    "INSERT INTO issuers (id, kind, subject, cert_der, key_id, not_before, not_after, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (id) DO UPDATE SET subject = excluded.subject, cert_der = excluded.cert_der, \
     key_id = excluded.key_id, not_before = excluded.not_before, not_after = excluded.not_after";

#[derive(sqlx::FromRow)]
pub(super) struct CertificateRow {
    serial: String,
    issuer_id: String,
    account_id: Option<String>,
    order_id: Option<String>,
    subject: String,
    identifiers: String,
    profile: String,
    requested_by: String,
    not_before: i64,
    not_after: i64,
    der: Vec<u8>,
    revoked_at: Option<i64>,
    revocation_reason: Option<i64>,
    invalidity_date: Option<i64>,
    crl_partition: i64,
    created_at: i64,
}

impl CertificateRow {
    pub(super) fn into_record(self) -> Result<CertificateRecord> {
        Ok(CertificateRecord {
            serial: self
                .serial
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("serial {:?}", self.serial)))?,
            issuer_id: self.issuer_id,
            account_id: self.account_id,
            order_id: self.order_id,
            subject: self.subject,
            identifiers: serde_json::from_str(&self.identifiers)
                .map_err(|e| StoreError::Corrupt(format!("identifiers: {e}")))?,
            profile: self.profile,
            requested_by: self.requested_by,
            not_before: self.not_before,
            not_after: self.not_after,
            der: self.der,
            revoked_at: self.revoked_at,
            revocation_reason: self.revocation_reason,
            invalidity_date: self.invalidity_date,
            crl_partition: self.crl_partition,
            created_at: self.created_at,
        })
    }
}

pub(super) const SELECT_CERTIFICATE: &str =
    "SELECT serial, issuer_id, account_id, order_id, subject, identifiers, profile, \
     requested_by, not_before, not_after, der, revoked_at, revocation_reason, invalidity_date, \
     crl_partition, created_at FROM certificates WHERE serial = $1";

/// Rows per multi-row INSERT: 128 rows of 12 parameters stay far below
/// SQLite's and PostgreSQL's bound-parameter limits.
pub(super) const ROWS_PER_INSERT: usize = 128;

/// Followed by `VALUES (…), (…)` for a batch.
pub(super) const INSERT_CERTIFICATE_PREFIX: &str =
    "INSERT INTO certificates (serial, issuer_id, account_id, order_id, subject, identifiers, \
     profile, requested_by, not_before, not_after, der, created_at, crl_partition) ";

/// Taking the audit head first both reads the chain's end and, by writing,
/// serialises every audit-writing transaction: a row lock on PostgreSQL
/// (across instances), the write lock on SQLite (across processes).
pub(super) const LOCK_AUDIT_HEAD: &str =
    "UPDATE audit_head SET seq = seq WHERE id = 1 RETURNING seq, hash";

pub(super) const SET_AUDIT_HEAD: &str = "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1";

/// Followed by `VALUES (…), (…)` for a batch.
pub(super) const INSERT_AUDIT_PREFIX: &str =
    "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) ";

#[derive(sqlx::FromRow)]
pub(super) struct AuditRow {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditRow {
    pub(super) fn into_record(self) -> super::AuditRecord {
        super::AuditRecord {
            seq: self.seq,
            at: self.at,
            actor: self.actor,
            action: self.action,
            subject: self.subject,
            details: self.details,
            prev_hash: self.prev_hash,
            hash: self.hash,
        }
    }
}

pub(super) const SELECT_AUDIT_PAGE: &str =
    "SELECT seq, at, actor, action, subject, details, prev_hash, hash \
     FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";

pub(super) const INSERT_USER: &str = "INSERT INTO users (id, username, password_hash, role, must_change_password, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $6)";

pub(super) const INSERT_ACCOUNT: &str =
    "INSERT INTO accounts (id, name, role, disabled, created_at) VALUES ($1, $2, $3, $4, $5)";

pub(super) const INSERT_API_KEY: &str =
    "INSERT INTO api_keys (id, account_id, key_hash, created_at) VALUES ($1, $2, $3, $4)";

#[derive(sqlx::FromRow)]
pub(super) struct AccountKeyRow {
    pub id: String,
    pub name: String,
    pub role: String,
    pub disabled: bool,
    pub created_at: i64,
    pub key_hash: Vec<u8>,
}

/// Looked up by the key's hash (unique index): one indexed read per request.
pub(super) const SELECT_ACCOUNT_BY_KEY: &str =
    "SELECT a.id, a.name, a.role, a.disabled, a.created_at, k.key_hash \
     FROM api_keys k JOIN accounts a ON a.id = k.account_id \
     WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND NOT a.disabled";

#[derive(sqlx::FromRow)]
pub(super) struct OrderRow {
    id: String,
    account_id: String,
    status: String,
    validation: String,
    source: String,
    profile: String,
    validity_days: Option<i64>,
    csr_der: Option<Vec<u8>>,
    organization: Option<String>,
    error: Option<String>,
    rejection_reason: Option<String>,
    approval_reason: Option<String>,
    certificate_serial: Option<String>,
    created_at: i64,
    updated_at: i64,
    expires_at: i64,
    not_after: Option<i64>,
    acme_account_id: Option<String>,
    issue_attempts: i64,
}

impl OrderRow {
    pub(super) fn into_record(self) -> Result<OrderRecord> {
        Ok(OrderRecord {
            id: self.id,
            account_id: self.account_id,
            status: self.status.parse()?,
            validation: self.validation,
            source: self.source,
            profile: self.profile,
            validity_days: self.validity_days,
            csr_der: self.csr_der,
            organization: self.organization,
            error: self.error,
            rejection_reason: self.rejection_reason,
            approval_reason: self.approval_reason,
            certificate_serial: self.certificate_serial,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            not_after: self.not_after,
            acme_account_id: self.acme_account_id,
            issue_attempts: self.issue_attempts,
        })
    }
}

pub(super) const ORDER_COLUMNS: &str =
    "SELECT id, account_id, status, validation, source, profile, validity_days, csr_der, \
     organization, error, rejection_reason, approval_reason, certificate_serial, created_at, \
     updated_at, expires_at, not_after, acme_account_id, issue_attempts FROM orders";

#[derive(sqlx::FromRow)]
pub(super) struct AuthorizationRow {
    id: String,
    order_id: String,
    account_id: String,
    identifier_type: String,
    identifier_value: String,
    wildcard: bool,
    status: String,
    validated_at: Option<i64>,
    expires_at: i64,
    created_at: i64,
}

pub(super) const SELECT_AUTHORIZATIONS: &str =
    "SELECT id, order_id, account_id, identifier_type, identifier_value, wildcard, status, \
     validated_at, expires_at, created_at FROM authorizations WHERE order_id = $1 ORDER BY id";

#[derive(sqlx::FromRow)]
pub(super) struct ChallengeRow {
    id: String,
    authorization_id: String,
    #[sqlx(rename = "type")]
    kind: String,
    token: String,
    status: String,
    error: Option<String>,
    attempted_at: Option<i64>,
    validated_at: Option<i64>,
    created_at: i64,
}

pub(super) const SELECT_CHALLENGES: &str =
    "SELECT c.id, c.authorization_id, c.type, c.token, c.status, c.error, c.attempted_at, \
     c.validated_at, c.created_at FROM challenges c \
     JOIN authorizations a ON a.id = c.authorization_id WHERE a.order_id = $1 \
     ORDER BY c.id";

/// Puts an order together from its rows. Authorizations keep the order
/// their ids were created in (the workflow makes them sortable).
pub(super) fn order_bundle(
    order: OrderRow,
    authorizations: Vec<AuthorizationRow>,
    challenges: Vec<ChallengeRow>,
) -> Result<OrderBundle> {
    let mut bundles: Vec<AuthorizationBundle> = authorizations
        .into_iter()
        .map(|a| AuthorizationBundle {
            authorization: AuthorizationRecord {
                id: a.id,
                order_id: a.order_id,
                account_id: a.account_id,
                identifier_type: a.identifier_type,
                identifier_value: a.identifier_value,
                wildcard: a.wildcard,
                status: a.status,
                validated_at: a.validated_at,
                expires_at: a.expires_at,
                created_at: a.created_at,
            },
            challenges: Vec::new(),
        })
        .collect();
    for c in challenges {
        let owner = bundles
            .iter_mut()
            .find(|b| b.authorization.id == c.authorization_id)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("challenge {} has no authorization", c.id))
            })?;
        owner.challenges.push(ChallengeRecord {
            id: c.id,
            authorization_id: c.authorization_id,
            kind: c.kind,
            token: c.token,
            status: c.status,
            error: c.error,
            attempted_at: c.attempted_at,
            validated_at: c.validated_at,
            created_at: c.created_at,
        });
    }
    Ok(OrderBundle {
        order: order.into_record()?,
        authorizations: bundles,
    })
}

/// Followed by `VALUES (…), (…)`.
pub(super) const INSERT_ORDER_PREFIX: &str =
    "INSERT INTO orders (id, account_id, status, validation, source, profile, validity_days, \
     csr_der, organization, error, rejection_reason, certificate_serial, created_at, updated_at, \
     expires_at, not_after, acme_account_id) ";

/// Followed by `VALUES (…), (…)`.
pub(super) const INSERT_AUTHORIZATION_PREFIX: &str =
    "INSERT INTO authorizations (id, order_id, account_id, identifier_type, identifier_value, \
     wildcard, status, validated_at, expires_at, created_at) ";

/// Followed by `VALUES (…), (…)`.
pub(super) const INSERT_CHALLENGE_PREFIX: &str =
    "INSERT INTO challenges (id, authorization_id, type, token, status, error, attempted_at, \
     validated_at, created_at) ";

/// The newest proof of control by this account: one backward probe of
/// the index `authorizations_reuse` (a `MAX()` would scan every earlier
/// authorization of the name, and reuse adds one per order).
pub(super) const SELECT_LAST_VALIDATION: &str =
    "SELECT validated_at FROM authorizations WHERE account_id = $1 \
     AND identifier_type = $2 AND identifier_value = $3 AND status = 'valid' \
     AND validated_at >= $4 ORDER BY validated_at DESC LIMIT 1";

/// A challenge is claimed only while it, its authorization and its order
/// are all pending.
pub(super) const CLAIM_CHALLENGE: &str =
    "UPDATE challenges SET status = 'processing', attempted_at = $3, error = NULL \
     WHERE id = $1 AND status = 'pending' AND authorization_id IN \
     (SELECT a.id FROM authorizations a JOIN orders o ON o.id = a.order_id \
      WHERE a.order_id = $2 AND a.status = 'pending' AND o.status = 'pending')";

pub(super) const SELECT_STALE_CHALLENGES: &str =
    "SELECT c.id, a.order_id, c.attempted_at FROM challenges c \
     JOIN authorizations a ON a.id = c.authorization_id \
     WHERE c.status = 'processing' AND c.attempted_at < $1 ORDER BY c.attempted_at LIMIT $2";

pub(super) const RECLAIM_CHALLENGE: &str = "UPDATE challenges SET attempted_at = $3 \
     WHERE id = $1 AND status = 'processing' AND attempted_at = $2";

pub(super) const FINISH_CHALLENGE: &str =
    "UPDATE challenges SET status = $2, error = $3, validated_at = $4 \
     WHERE id = $1 AND status = 'processing'";

pub(super) const FINISH_AUTHORIZATION: &str =
    "UPDATE authorizations SET status = $2, validated_at = $3 WHERE id = $1 AND status = 'pending'";

pub(super) const COUNT_UNFINISHED_AUTHORIZATIONS: &str =
    "SELECT COUNT(*) FROM authorizations WHERE order_id = $1 AND status <> 'valid'";

/// Followed by optional conditions; `$1` id, `$2` from, `$3` to, `$4` at,
/// `$5` error, `$6` rejection reason, `$7` organisation, `$8` CSR, `$9`
/// attempts to add, `$10` approval note.
pub(super) const TRANSITION_ORDER: &str =
    "UPDATE orders SET status = $3, updated_at = $4, error = COALESCE($5, error), \
     rejection_reason = COALESCE($6, rejection_reason), \
     organization = COALESCE($7, organization), csr_der = COALESCE($8, csr_der), \
     issue_attempts = issue_attempts + $9, approval_reason = COALESCE($10, approval_reason) \
     WHERE id = $1 AND status = $2";

pub(super) const COMPLETE_ORDER: &str =
    "UPDATE orders SET status = 'valid', certificate_serial = $2, updated_at = $3 \
     WHERE id = $1 AND status = 'processing'";

pub(super) const SELECT_ORDERS_TO_RESUME: &str =
    " WHERE (status = 'ready' AND source = 'rest' AND validation = 'dv' AND updated_at < $1) \
     OR (status = 'processing' AND updated_at < $2) ORDER BY updated_at LIMIT $3";

pub(super) const SELECT_EXPIRED_ORDERS: &str =
    " WHERE status IN ('pending', 'ready', 'awaiting_approval') AND expires_at < $1 \
     ORDER BY expires_at LIMIT $2";

/// Implements [`super::Store`] for a backend struct with `read` and `write`
/// pools of `$db` and a `batcher`, using the shared statements above.
macro_rules! impl_sql_store {
    ($store:ty, $db:ty, $name:literal) => {
        impl $store {
            /// Appends audit records inside `tx`, extending the hash chain,
            /// with one multi-row INSERT.
            async fn append_audit_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                events: &[&$crate::store::AuditEvent],
            ) -> $crate::store::Result<()> {
                let head = Self::lock_audit_tx(tx).await?;
                Self::write_audit_tx(tx, head, events).await
            }

            /// Takes the audit head (serialising this transaction with every
            /// other writer) and returns the chain's end.
            async fn lock_audit_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
            ) -> $crate::store::Result<(i64, Vec<u8>)> {
                Ok(sqlx::query_as($crate::store::shared::LOCK_AUDIT_HEAD)
                    .fetch_one(&mut **tx)
                    .await?)
            }

            /// Appends audit records after `head` (from [`Self::lock_audit_tx`]).
            async fn write_audit_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                head: (i64, Vec<u8>),
                events: &[&$crate::store::AuditEvent],
            ) -> $crate::store::Result<()> {
                if events.is_empty() {
                    return Ok(());
                }
                let (mut seq, mut prev) = head;
                let mut rows = Vec::with_capacity(events.len());
                for event in events {
                    seq += 1;
                    let at = event.at.unix_timestamp();
                    let details = event.details.to_string();
                    let hash = $crate::store::audit_hash(
                        &prev,
                        seq,
                        at,
                        &event.actor,
                        &event.action,
                        &event.subject,
                        &details,
                    );
                    let prev_hash = std::mem::replace(&mut prev, hash.clone());
                    rows.push((seq, at, *event, details, prev_hash, hash));
                }
                for chunk in rows.chunks($crate::store::shared::ROWS_PER_INSERT) {
                    let mut insert =
                        sqlx::QueryBuilder::<$db>::new($crate::store::shared::INSERT_AUDIT_PREFIX);
                    insert.push_values(
                        chunk,
                        |mut b, (seq, at, event, details, prev_hash, hash)| {
                            b.push_bind(*seq)
                                .push_bind(*at)
                                .push_bind(event.actor.clone())
                                .push_bind(event.action.clone())
                                .push_bind(event.subject.clone())
                                .push_bind(details.clone())
                                .push_bind(prev_hash.clone())
                                .push_bind(hash.clone());
                        },
                    );
                    insert.build().execute(&mut **tx).await?;
                }
                sqlx::query($crate::store::shared::SET_AUDIT_HEAD)
                    .bind(seq)
                    .bind(&prev)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            /// Inserts orders with their authorizations and challenges in
            /// `tx`, with multi-row INSERTs (a batch of issuances brings
            /// many).
            async fn insert_orders_tx(
                tx: &mut sqlx::Transaction<'_, $db>,
                bundles: &[&$crate::store::OrderBundle],
            ) -> $crate::store::Result<()> {
                use $crate::store::shared::ROWS_PER_INSERT;
                for chunk in bundles.chunks(ROWS_PER_INSERT) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        $crate::store::shared::INSERT_ORDER_PREFIX,
                    );
                    q.push_values(chunk, |mut b, bundle| {
                        let o = &bundle.order;
                        b.push_bind(o.id.clone())
                            .push_bind(o.account_id.clone())
                            .push_bind(o.status.as_str())
                            .push_bind(o.validation.clone())
                            .push_bind(o.source.clone())
                            .push_bind(o.profile.clone())
                            .push_bind(o.validity_days)
                            .push_bind(o.csr_der.clone())
                            .push_bind(o.organization.clone())
                            .push_bind(o.error.clone())
                            .push_bind(o.rejection_reason.clone())
                            .push_bind(o.certificate_serial.clone())
                            .push_bind(o.created_at)
                            .push_bind(o.updated_at)
                            .push_bind(o.expires_at)
                            .push_bind(o.not_after)
                            .push_bind(o.acme_account_id.clone());
                    });
                    q.build().execute(&mut **tx).await?;
                }
                let authorizations: Vec<&$crate::store::AuthorizationBundle> =
                    bundles.iter().flat_map(|b| b.authorizations.iter()).collect();
                for chunk in authorizations.chunks(ROWS_PER_INSERT) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        $crate::store::shared::INSERT_AUTHORIZATION_PREFIX,
                    );
                    q.push_values(chunk, |mut b, authz| {
                        let a = &authz.authorization;
                        b.push_bind(a.id.clone())
                            .push_bind(a.order_id.clone())
                            .push_bind(a.account_id.clone())
                            .push_bind(a.identifier_type.clone())
                            .push_bind(a.identifier_value.clone())
                            .push_bind(a.wildcard)
                            .push_bind(a.status.clone())
                            .push_bind(a.validated_at)
                            .push_bind(a.expires_at)
                            .push_bind(a.created_at);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                let challenges: Vec<&$crate::store::ChallengeRecord> = authorizations
                    .iter()
                    .flat_map(|a| a.challenges.iter())
                    .collect();
                for chunk in challenges.chunks(ROWS_PER_INSERT) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        $crate::store::shared::INSERT_CHALLENGE_PREFIX,
                    );
                    q.push_values(chunk, |mut b, c| {
                        b.push_bind(c.id.clone())
                            .push_bind(c.authorization_id.clone())
                            .push_bind(c.kind.clone())
                            .push_bind(c.token.clone())
                            .push_bind(c.status.clone())
                            .push_bind(c.error.clone())
                            .push_bind(c.attempted_at)
                            .push_bind(c.validated_at)
                            .push_bind(c.created_at);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Commits a batch of issuances in one transaction.
            async fn commit_certificates(
                pool: sqlx::Pool<$db>,
                items: std::sync::Arc<Vec<$crate::store::batch::Item>>,
            ) -> $crate::store::Result<()> {
                let mut tx = pool.begin().await?;
                let events: Vec<&$crate::store::AuditEvent> =
                    items.iter().flat_map(|i| i.events.iter()).collect();
                Self::append_audit_tx(&mut tx, &events).await?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                // Orders first: certificates refer to them.
                let created: Vec<&$crate::store::OrderBundle> = items
                    .iter()
                    .filter_map(|i| match &i.order {
                        Some($crate::store::IssuanceOrder::Create(bundle)) => Some(&**bundle),
                        _ => None,
                    })
                    .collect();
                Self::insert_orders_tx(&mut tx, &created).await?;
                for chunk in items.chunks($crate::store::shared::ROWS_PER_INSERT) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        $crate::store::shared::INSERT_CERTIFICATE_PREFIX,
                    );
                    let mut encode_error = None;
                    insert.push_values(chunk, |mut b, item| {
                        let cert = &item.certificate;
                        let identifiers =
                            serde_json::to_string(&cert.identifiers).unwrap_or_else(|e| {
                                encode_error = Some(e.to_string());
                                String::new()
                            });
                        b.push_bind(cert.serial.to_hex())
                            .push_bind(cert.issuer_id.clone())
                            .push_bind(cert.account_id.clone())
                            .push_bind(cert.order_id.clone())
                            .push_bind(cert.subject.clone())
                            .push_bind(identifiers)
                            .push_bind(cert.profile.clone())
                            .push_bind(cert.requested_by.clone())
                            .push_bind(cert.not_before.unix_timestamp())
                            .push_bind(cert.not_after.unix_timestamp())
                            .push_bind(cert.der.clone())
                            .push_bind(now)
                            .push_bind(cert.crl_partition);
                    });
                    if let Some(e) = encode_error {
                        return Err($crate::store::StoreError::Database(e));
                    }
                    insert.build().execute(&mut *tx).await?;
                }
                for item in items.iter() {
                    if let Some($crate::store::IssuanceOrder::Complete { order_id }) = &item.order {
                        let done = sqlx::query($crate::store::shared::COMPLETE_ORDER)
                            .bind(order_id)
                            .bind(item.certificate.serial.to_hex())
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        if done.rows_affected() != 1 {
                            return Err($crate::store::StoreError::Conflict(format!(
                                "order {order_id} is no longer processing"
                            )));
                        }
                    }
                }
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::StoreRead for $store {
            fn backend(&self) -> &'static str {
                $name
            }

            async fn ping(&self) -> $crate::store::Result<()> {
                sqlx::query("SELECT 1").execute(&self.read).await?;
                Ok(())
            }

            async fn check_durable(&self) -> $crate::store::Result<()> {
                self.check_durable_impl().await
            }

            async fn issuers(&self) -> $crate::store::Result<Vec<$crate::store::IssuerRecord>> {
                let rows: Vec<$crate::store::shared::IssuerRow> =
                    sqlx::query_as($crate::store::shared::SELECT_ISSUERS)
                        .fetch_all(&self.read)
                        .await?;
                rows.into_iter().map(|r| r.into_record()).collect()
            }

            async fn order(&self, id: &str) -> $crate::store::Result<$crate::store::OrderBundle> {
                let order: $crate::store::shared::OrderRow = sqlx::query_as(&format!(
                    "{} WHERE id = $1",
                    $crate::store::shared::ORDER_COLUMNS
                ))
                .bind(id)
                .fetch_one(&self.read)
                .await?;
                let authorizations: Vec<$crate::store::shared::AuthorizationRow> =
                    sqlx::query_as($crate::store::shared::SELECT_AUTHORIZATIONS)
                        .bind(id)
                        .fetch_all(&self.read)
                        .await?;
                let challenges: Vec<$crate::store::shared::ChallengeRow> =
                    sqlx::query_as($crate::store::shared::SELECT_CHALLENGES)
                        .bind(id)
                        .fetch_all(&self.read)
                        .await?;
                $crate::store::shared::order_bundle(order, authorizations, challenges)
            }

            async fn orders(
                &self,
                query: &$crate::store::OrderQuery,
            ) -> $crate::store::Result<Vec<$crate::store::OrderRecord>> {
                let mut q = sqlx::QueryBuilder::<$db>::new($crate::store::shared::ORDER_COLUMNS);
                q.push(" WHERE 1 = 1");
                if let Some(account) = &query.account_id {
                    q.push(" AND account_id = ").push_bind(account.clone());
                }
                if let Some(status) = query.status {
                    q.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some((created, id)) = &query.before {
                    q.push(" AND (created_at < ")
                        .push_bind(*created)
                        .push(" OR (created_at = ")
                        .push_bind(*created)
                        .push(" AND id < ")
                        .push_bind(id.clone())
                        .push("))");
                }
                q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                    .push_bind(query.limit);
                let rows: Vec<$crate::store::shared::OrderRow> =
                    q.build_query_as().fetch_all(&self.read).await?;
                rows.into_iter().map(|r| r.into_record()).collect()
            }

            async fn last_validation(
                &self,
                account_id: &str,
                identifier_type: &str,
                identifier_value: &str,
                since: i64,
            ) -> $crate::store::Result<Option<i64>> {
                let row: Option<(Option<i64>,)> =
                    sqlx::query_as($crate::store::shared::SELECT_LAST_VALIDATION)
                        .bind(account_id)
                        .bind(identifier_type)
                        .bind(identifier_value)
                        .bind(since)
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.and_then(|(at,)| at))
            }

            async fn pending_authorizations(
                &self,
                account_id: &str,
                now: i64,
            ) -> $crate::store::Result<i64> {
                let (count,): (i64,) = sqlx::query_as(
                    "SELECT COUNT(*) FROM authorizations \
                     WHERE account_id = $1 AND status = 'pending' AND expires_at > $2",
                )
                .bind(account_id)
                .bind(now)
                .fetch_one(&self.read)
                .await?;
                Ok(count)
            }

            async fn stale_challenges(
                &self,
                attempted_before: i64,
                limit: i64,
            ) -> $crate::store::Result<Vec<(String, String, i64)>> {
                Ok(sqlx::query_as($crate::store::shared::SELECT_STALE_CHALLENGES)
                    .bind(attempted_before)
                    .bind(limit)
                    .fetch_all(&self.read)
                    .await?)
            }

            async fn orders_to_resume(
                &self,
                ready_before: i64,
                processing_before: i64,
                limit: i64,
            ) -> $crate::store::Result<Vec<$crate::store::OrderRecord>> {
                let rows: Vec<$crate::store::shared::OrderRow> = sqlx::query_as(&format!(
                    "{}{}",
                    $crate::store::shared::ORDER_COLUMNS,
                    $crate::store::shared::SELECT_ORDERS_TO_RESUME
                ))
                .bind(ready_before)
                .bind(processing_before)
                .bind(limit)
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_record()).collect()
            }

            async fn expired_orders(
                &self,
                now: i64,
                limit: i64,
            ) -> $crate::store::Result<Vec<$crate::store::OrderRecord>> {
                let rows: Vec<$crate::store::shared::OrderRow> = sqlx::query_as(&format!(
                    "{}{}",
                    $crate::store::shared::ORDER_COLUMNS,
                    $crate::store::shared::SELECT_EXPIRED_ORDERS
                ))
                .bind(now)
                .bind(limit)
                .fetch_all(&self.read)
                .await?;
                rows.into_iter().map(|r| r.into_record()).collect()
            }

            async fn certificate(
                &self,
                serial: &$crate::pki::Serial,
            ) -> $crate::store::Result<$crate::store::CertificateRecord> {
                let row: $crate::store::shared::CertificateRow =
                    sqlx::query_as($crate::store::shared::SELECT_CERTIFICATE)
                        .bind(serial.to_hex())
                        .fetch_one(&self.read)
                        .await?;
                row.into_record()
            }

            async fn count_certificates(&self) -> $crate::store::Result<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM certificates")
                    .fetch_one(&self.read)
                    .await?;
                Ok(n)
            }

            async fn audit_head(&self) -> $crate::store::Result<(i64, Vec<u8>)> {
                Ok(
                    sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                        .fetch_one(&self.read)
                        .await?,
                )
            }

            async fn audit_page(
                &self,
                after: i64,
                limit: i64,
            ) -> $crate::store::Result<Vec<$crate::store::AuditRecord>> {
                let rows: Vec<$crate::store::shared::AuditRow> =
                    sqlx::query_as($crate::store::shared::SELECT_AUDIT_PAGE)
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.read)
                        .await?;
                Ok(rows.into_iter().map(|r| r.into_record()).collect())
            }

            async fn account_by_api_key(
                &self,
                key_hash: &[u8; 32],
            ) -> $crate::store::Result<Option<($crate::store::AccountRecord, Vec<u8>)>> {
                let row: Option<$crate::store::shared::AccountKeyRow> =
                    sqlx::query_as($crate::store::shared::SELECT_ACCOUNT_BY_KEY)
                        .bind(key_hash.to_vec())
                        .fetch_optional(&self.read)
                        .await?;
                Ok(row.map(|r| {
                    (
                        $crate::store::AccountRecord {
                            id: r.id,
                            name: r.name,
                            role: r.role,
                            disabled: r.disabled,
                            created_at: r.created_at,
                        },
                        r.key_hash,
                    )
                }))
            }

            async fn certificate_status(
                &self,
                serial: &$crate::pki::Serial,
            ) -> $crate::store::Result<Option<$crate::store::StatusRecord>> {
                self.certificate_status_impl(serial).await
            }

            async fn certificates(
                &self,
                query: &$crate::store::CertificateQuery,
            ) -> $crate::store::Result<Vec<$crate::store::CertificateRecord>> {
                self.certificates_impl(query).await
            }

            async fn scan_revoked(
                &self,
                scan: &$crate::store::RevokedScan,
                sink: &mut (dyn FnMut($crate::store::RevokedRow) + Send),
            ) -> $crate::store::Result<i64> {
                self.scan_revoked_impl(scan, sink).await
            }

            async fn crl_heads(&self) -> $crate::store::Result<Vec<$crate::store::CrlRecord>> {
                self.crl_heads_impl().await
            }

            async fn key_blocked(&self, spki_sha256: &[u8]) -> $crate::store::Result<bool> {
                self.key_blocked_impl(spki_sha256).await
            }

            async fn crl_marks(&self) -> $crate::store::Result<Vec<$crate::store::CrlMark>> {
                self.crl_marks_impl().await
            }

            async fn crl_der(
                &self,
                head: &$crate::store::CrlRecord,
            ) -> $crate::store::Result<Vec<u8>> {
                self.crl_der_impl(head).await
            }

            async fn revoked_partitions(
                &self,
                issuer_id: &str,
            ) -> $crate::store::Result<Vec<i64>> {
                self.revoked_partitions_impl(issuer_id).await
            }

            async fn user_by_name(
                &self,
                username: &str,
            ) -> $crate::store::Result<Option<$crate::store::UserRecord>> {
                self.user_by_name_impl(username).await
            }

            async fn users(&self) -> $crate::store::Result<Vec<$crate::store::UserRecord>> {
                self.users_impl().await
            }

            async fn session(
                &self,
                id_hash: &[u8],
            ) -> $crate::store::Result<
                Option<($crate::store::SessionRecord, $crate::store::UserRecord)>,
            > {
                self.session_impl(id_hash).await
            }

            async fn accounts(&self) -> $crate::store::Result<Vec<$crate::store::AccountRecord>> {
                self.accounts_impl().await
            }

            async fn audit_search(
                &self,
                query: &$crate::store::AuditQuery,
            ) -> $crate::store::Result<Vec<$crate::store::AuditRecord>> {
                self.audit_search_impl(query).await
            }

            async fn overview(&self, now: i64) -> $crate::store::Result<$crate::store::Overview> {
                self.overview_impl(now).await
            }

            async fn eab_key(
                &self,
                kid: &str,
            ) -> $crate::store::Result<Option<$crate::store::EabKeyRecord>> {
                Ok(self.eab_keys_impl(Some(kid), None).await?.pop())
            }

            async fn eab_keys_of(
                &self,
                account_id: &str,
            ) -> $crate::store::Result<Vec<$crate::store::EabKeyRecord>> {
                self.eab_keys_impl(None, Some(account_id)).await
            }

            async fn acme_account(
                &self,
                id: &str,
            ) -> $crate::store::Result<Option<$crate::store::AcmeAccountRecord>> {
                self.acme_account_impl(Some(id), None, None).await
            }

            async fn acme_account_by_key(
                &self,
                thumbprint: &str,
            ) -> $crate::store::Result<Option<$crate::store::AcmeAccountRecord>> {
                self.acme_account_impl(None, Some(thumbprint), None).await
            }

            async fn acme_account_of(
                &self,
                account_id: &str,
            ) -> $crate::store::Result<Option<$crate::store::AcmeAccountRecord>> {
                self.acme_account_impl(None, None, Some(account_id)).await
            }

            async fn count_users(&self) -> $crate::store::Result<i64> {
                let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM users")
                    .fetch_one(&self.read)
                    .await?;
                Ok(n)
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {

            async fn upsert_issuer(
                &self,
                issuer: &$crate::store::IssuerRecord,
            ) -> $crate::store::Result<()> {
                sqlx::query($crate::store::shared::UPSERT_ISSUER)
                    .bind(&issuer.id)
                    .bind(issuer.kind.as_str())
                    .bind(&issuer.subject)
                    .bind(&issuer.cert_der)
                    .bind(&issuer.key_id)
                    .bind(issuer.not_before)
                    .bind(issuer.not_after)
                    .bind(time::OffsetDateTime::now_utc().unix_timestamp())
                    .execute(&self.write)
                    .await?;
                Ok(())
            }

            async fn insert_issuance(
                &self,
                issuance: $crate::store::Issuance,
            ) -> $crate::store::Result<()> {
                self.batcher.submit(issuance).await
            }

            async fn create_order(
                &self,
                bundle: &$crate::store::OrderBundle,
                events: Vec<$crate::store::AuditEvent>,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                let refs: Vec<&$crate::store::AuditEvent> = events.iter().collect();
                Self::append_audit_tx(&mut tx, &refs).await?;
                Self::insert_orders_tx(&mut tx, &[bundle]).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn claim_challenge(
                &self,
                challenge_id: &str,
                order_id: &str,
                at: i64,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<bool> {
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                let done = sqlx::query($crate::store::shared::CLAIM_CHALLENGE)
                    .bind(challenge_id)
                    .bind(order_id)
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                Self::write_audit_tx(&mut tx, head, &[&event]).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn reclaim_challenge(
                &self,
                challenge_id: &str,
                attempted_at_was: i64,
                at: i64,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query($crate::store::shared::RECLAIM_CHALLENGE)
                    .bind(challenge_id)
                    .bind(attempted_at_was)
                    .bind(at)
                    .execute(&self.write)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn finish_challenge(
                &self,
                outcome: &$crate::store::ChallengeOutcome,
                events: Vec<$crate::store::AuditEvent>,
                on_order_change: Vec<$crate::store::AuditEvent>,
            ) -> $crate::store::Result<Option<$crate::store::OrderStatus>> {
                use $crate::store::OrderStatus;
                let mut tx = self.write.begin().await?;
                // The audit head first: it serialises this with every other
                // writer, so the count below sees the other authorizations'
                // committed state.
                let head = Self::lock_audit_tx(&mut tx).await?;
                let status = if outcome.error.is_some() { "invalid" } else { "valid" };
                let validated_at = outcome.error.is_none().then_some(outcome.at);
                let done = sqlx::query($crate::store::shared::FINISH_CHALLENGE)
                    .bind(&outcome.challenge_id)
                    .bind(status)
                    .bind(&outcome.error)
                    .bind(validated_at)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() != 1 {
                    return Err($crate::store::StoreError::Conflict(format!(
                        "challenge {} is not being validated",
                        outcome.challenge_id
                    )));
                }
                sqlx::query($crate::store::shared::FINISH_AUTHORIZATION)
                    .bind(&outcome.authorization_id)
                    .bind(status)
                    .bind(validated_at)
                    .execute(&mut *tx)
                    .await?;
                let mut refs: Vec<&$crate::store::AuditEvent> = events.iter().collect();
                let next = if outcome.error.is_some() {
                    Some(OrderStatus::Invalid)
                } else {
                    let (left,): (i64,) =
                        sqlx::query_as($crate::store::shared::COUNT_UNFINISHED_AUTHORIZATIONS)
                            .bind(&outcome.order_id)
                            .fetch_one(&mut *tx)
                            .await?;
                    (left == 0).then_some(outcome.when_all_valid)
                };
                let mut changed = None;
                if let Some(next) = next {
                    let moved = sqlx::query($crate::store::shared::TRANSITION_ORDER)
                        .bind(&outcome.order_id)
                        .bind(OrderStatus::Pending.as_str())
                        .bind(next.as_str())
                        .bind(outcome.at)
                        .bind(&outcome.error)
                        .bind(None::<String>)
                        .bind(None::<String>)
                        .bind(None::<Vec<u8>>)
                        .bind(0_i64)
                        .bind(None::<String>)
                        .execute(&mut *tx)
                        .await?;
                    if moved.rows_affected() == 1 {
                        changed = Some(next);
                        refs.extend(on_order_change.iter());
                    }
                }
                Self::write_audit_tx(&mut tx, head, &refs).await?;
                tx.commit().await?;
                Ok(changed)
            }

            async fn transition_order(
                &self,
                order_id: &str,
                transition: $crate::store::Transition,
                update: &$crate::store::OrderUpdate,
                at: i64,
                events: Vec<$crate::store::AuditEvent>,
            ) -> $crate::store::Result<bool> {
                if !transition.is_legal() {
                    return Err($crate::store::StoreError::Conflict(format!(
                        "order {order_id}: {transition} is not a transition an order can make"
                    )));
                }
                let (from, to) = (transition.from(), transition.to());
                let mut tx = self.write.begin().await?;
                let head = Self::lock_audit_tx(&mut tx).await?;
                let mut q = sqlx::QueryBuilder::<$db>::new("");
                q.push($crate::store::shared::TRANSITION_ORDER);
                if update.updated_before.is_some() {
                    // Numbered by hand: the statement's own $1…$10 come first
                    // (a pushed bind would be numbered $1 on PostgreSQL).
                    q.push(" AND updated_at < $11");
                }
                // The statement's own $1…$9 come first, in order.
                let sql = q.sql().to_owned();
                let mut query = sqlx::query(&sql)
                    .bind(order_id)
                    .bind(from.as_str())
                    .bind(to.as_str())
                    .bind(at)
                    .bind(&update.error)
                    .bind(&update.rejection_reason)
                    .bind(&update.organization)
                    .bind(&update.csr_der)
                    .bind(i64::from(update.count_issue_attempt))
                    .bind(&update.approval_reason);
                if let Some(before) = update.updated_before {
                    query = query.bind(before);
                }
                let done = query.execute(&mut *tx).await?;
                if done.rows_affected() != 1 {
                    return Ok(false);
                }
                let refs: Vec<&$crate::store::AuditEvent> = events.iter().collect();
                Self::write_audit_tx(&mut tx, head, &refs).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn append_audit(
                &self,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_user(
                &self,
                user: $crate::store::NewUser,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                sqlx::query($crate::store::shared::INSERT_USER)
                    .bind(&user.id)
                    .bind(&user.username)
                    .bind(&user.password_hash)
                    .bind(&user.role)
                    .bind(user.must_change_password)
                    .bind(event.at.unix_timestamp())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn create_account(
                &self,
                account: $crate::store::AccountRecord,
                key: $crate::store::NewApiKey,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                sqlx::query($crate::store::shared::INSERT_ACCOUNT)
                    .bind(&account.id)
                    .bind(&account.name)
                    .bind(&account.role)
                    .bind(account.disabled)
                    .bind(account.created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::store::shared::INSERT_API_KEY)
                    .bind(&key.id)
                    .bind(&account.id)
                    .bind(key.key_hash.to_vec())
                    .bind(account.created_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn revoke_api_key(
                &self,
                key_id: &str,
                at: i64,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                let done = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                    .bind(at)
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err($crate::store::StoreError::NotFound);
                }
                tx.commit().await?;
                Ok(())
            }

            async fn rotate_api_key(
                &self,
                account_id: &str,
                key: $crate::store::NewApiKey,
                at: i64,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                let mut tx = self.write.begin().await?;
                Self::append_audit_tx(&mut tx, &[&event]).await?;
                let exists: Option<(String,)> = sqlx::query_as("SELECT id FROM accounts WHERE id = $1")
                    .bind(account_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err($crate::store::StoreError::NotFound);
                }
                sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE account_id = $2 AND revoked_at IS NULL")
                    .bind(at)
                    .bind(account_id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query($crate::store::shared::INSERT_API_KEY)
                    .bind(&key.id)
                    .bind(account_id)
                    .bind(key.key_hash.to_vec())
                    .bind(at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn revoke_certificate(
                &self,
                revocation: &$crate::store::Revocation,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.revoke_certificate_impl(revocation, event).await
            }

            async fn publish_crl(
                &self,
                crl: &$crate::store::NewCrl,
                sign: &mut (dyn FnMut(i64) -> std::result::Result<Vec<u8>, String> + Send),
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<Option<$crate::store::CrlRecord>> {
                self.publish_crl_impl(crl, sign, event).await
            }

            async fn record_failed_sign_in(
                &self,
                user_id: &str,
                now: i64,
                policy: $crate::store::SignInLimits,
                failed: $crate::store::AuditEvent,
                locked: $crate::store::AuditEvent,
            ) -> $crate::store::Result<(i64, Option<i64>)> {
                self.record_failed_sign_in_impl(user_id, now, policy, failed, locked)
                    .await
            }

            async fn update_user(
                &self,
                user_id: &str,
                update: &$crate::store::UserUpdate,
                at: i64,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.update_user_impl(user_id, update, at, event).await
            }

            async fn create_session(
                &self,
                session: &$crate::store::SessionRecord,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.create_session_impl(session, event).await
            }

            async fn touch_session(&self, id_hash: &[u8], at: i64) -> $crate::store::Result<()> {
                self.touch_session_impl(id_hash, at).await
            }

            async fn delete_session(&self, id_hash: &[u8]) -> $crate::store::Result<()> {
                self.delete_session_impl(id_hash).await
            }

            async fn set_account_disabled(
                &self,
                account_id: &str,
                disabled: bool,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.set_account_disabled_impl(account_id, disabled, event).await
            }

            async fn acme_nonce_key(&self, candidate: &[u8]) -> $crate::store::Result<Vec<u8>> {
                self.nonce_key_impl(candidate).await
            }

            async fn use_nonce(
                &self,
                nonce: &str,
                expires_at: i64,
                now: i64,
            ) -> $crate::store::Result<bool> {
                self.use_nonce_impl(nonce, expires_at, now).await
            }

            async fn create_acme_account(
                &self,
                acme: &$crate::store::AcmeAccountRecord,
                owner: Option<&$crate::store::AccountRecord>,
                eab_kid: Option<&str>,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.create_acme_account_impl(acme, owner, eab_kid, event).await
            }

            async fn create_eab_key(
                &self,
                key: &$crate::store::EabKeyRecord,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.create_eab_key_impl(key, event).await
            }

            async fn update_acme_account(
                &self,
                id: &str,
                contact: Option<&str>,
                status: Option<&str>,
                key: Option<(&str, &str)>,
                event: $crate::store::AuditEvent,
            ) -> $crate::store::Result<()> {
                self.update_acme_account_impl(id, contact, status, key, event).await
            }
        }
    };
}

pub(super) use impl_sql_store;
