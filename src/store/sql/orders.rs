//! The SQL of orders, authorizations and challenges.

use async_trait::async_trait;

use super::{Backend, SqlStore, Statement, ROWS_PER_INSERT};
use crate::store::*;

const ORDER_COLUMNS: &str =
    "SELECT id, account_id, status, validation, source, profile, validity_days, csr_der, \
     organization, error, rejection_reason, approval_reason, certificate_serial, created_at, \
     updated_at, expires_at, not_after, acme_account_id, issue_attempts FROM orders";

/// An order with its authorizations and their challenges, in one
/// statement (a statement is a hand-off to the database driver and back;
/// an ACME client reads its order three or four times per certificate):
/// one row per challenge, the order's columns by their own names on each,
/// the authorization's prefixed `a_`, the challenge's `c_` (none for an
/// authorization without challenges). Authorizations that reuse an
/// earlier proof are in the order's own `reused_authorizations` (see
/// [`Reused`]).
const SELECT_ORDER_BUNDLE: &str =
    "SELECT o.id, o.account_id, o.status, o.validation, o.source, o.profile, o.validity_days, \
     o.csr_der, o.organization, o.error, o.rejection_reason, o.approval_reason, \
     o.certificate_serial, o.created_at, o.updated_at, o.expires_at, o.not_after, \
     o.acme_account_id, o.issue_attempts, o.reused_authorizations, \
     a.id AS a_id, a.account_id AS a_account_id, a.identifier_type AS a_identifier_type, \
     a.identifier_value AS a_identifier_value, a.wildcard AS a_wildcard, \
     a.status AS a_status, a.validated_at AS a_validated_at, a.expires_at AS a_expires_at, \
     a.created_at AS a_created_at, \
     c.id AS c_id, c.type AS c_type, c.token AS c_token, c.status AS c_status, \
     c.error AS c_error, c.attempted_at AS c_attempted_at, c.validated_at AS c_validated_at, \
     c.created_at AS c_created_at \
     FROM orders o LEFT JOIN authorizations a ON a.order_id = o.id \
     LEFT JOIN challenges c ON c.authorization_id = a.id \
     WHERE o.id = $1 ORDER BY a.id, c.id";

/// The view of an order a write leaves, as far as the writer knows it.
pub(in crate::store) enum After<'a> {
    /// Not known here whole: the next read fetches it.
    Unknown,
    /// This order, if written (a new order).
    Whole(&'a OrderBundle),
    /// The view held before, changed thus, if the (guarded) write moved:
    /// what its SQL does, in memory.
    Change(&'a (dyn Fn(&mut OrderBundle) + Sync)),
    /// The view held before, changed by what the write did (its
    /// [`batch::Done`]); the closure gives false, and no view is kept,
    /// where that is not known here.
    Outcome(&'a (dyn Fn(&mut OrderBundle, batch::Done) -> bool + Sync)),
}

/// `bundle` as [`SELECT_ORDER_BUNDLE`] reads it back once written: its
/// authorizations and their challenges in the order of their ids.
fn as_stored(bundle: &OrderBundle) -> OrderBundle {
    let mut bundle = bundle.clone();
    bundle
        .authorizations
        .sort_by(|a, b| a.authorization.id.cmp(&b.authorization.id));
    for a in &mut bundle.authorizations {
        a.challenges.sort_by(|x, y| x.id.cmp(&y.id));
    }
    bundle
}

/// One row of [`SELECT_ORDER_BUNDLE`].
#[derive(sqlx::FromRow)]
struct OrderBundleRow {
    #[sqlx(flatten)]
    order: OrderRecord,
    reused_authorizations: Option<String>,
    a_id: Option<String>,
    a_account_id: Option<String>,
    a_identifier_type: Option<IdentifierKind>,
    a_identifier_value: Option<String>,
    a_wildcard: Option<bool>,
    a_status: Option<AuthorizationStatus>,
    a_validated_at: Option<i64>,
    a_expires_at: Option<i64>,
    a_created_at: Option<i64>,
    c_id: Option<String>,
    c_type: Option<ChallengeKind>,
    c_token: Option<String>,
    c_status: Option<ChallengeStatus>,
    c_error: Option<Failure>,
    c_attempted_at: Option<i64>,
    c_validated_at: Option<i64>,
    c_created_at: Option<i64>,
}

impl OrderBundleRow {
    /// The row's authorization, if it has one.
    fn authorization(&self) -> Option<AuthorizationRecord> {
        Some(AuthorizationRecord {
            id: self.a_id.clone()?,
            order_id: self.order.id.clone(),
            account_id: self.a_account_id.clone()?,
            identifier_type: self.a_identifier_type?,
            identifier_value: self.a_identifier_value.clone()?,
            wildcard: self.a_wildcard?,
            status: self.a_status?,
            validated_at: self.a_validated_at,
            expires_at: self.a_expires_at?,
            created_at: self.a_created_at?,
        })
    }
}

/// An authorization that reuses an earlier proof of control, as its
/// order's row keeps it (`orders.reused_authorizations`, a JSON array).
///
/// Such an authorization is valid from the start, has no challenges and
/// is never changed, and reuse looks up the proofs themselves (the rows
/// of `authorizations` with challenges), never a copy: so it needs no
/// row of its own. Kept in the order, a renewal writes one row where it
/// wrote two, and none of the five B-trees of `authorizations` (its
/// table, its key and three indexes) on SQLite, nor on PostgreSQL their
/// inserts and foreign-key checks.
#[derive(serde::Serialize, serde::Deserialize)]
struct Reused {
    id: String,
    #[serde(rename = "type")]
    kind: IdentifierKind,
    value: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    wildcard: bool,
    validated_at: Option<i64>,
    expires_at: i64,
}

impl Reused {
    /// Whether `authz` is kept in `order`'s row: a reused one that reads
    /// back the same from there (its order's account and creation time).
    fn kept_in(order: &OrderRecord, authz: &AuthorizationBundle) -> bool {
        let a = &authz.authorization;
        authz.challenges.is_empty()
            && a.status == AuthorizationStatus::Valid
            && a.order_id == order.id
            && a.account_id == order.account_id
            && a.created_at == order.created_at
    }

    /// `authz` as its order keeps it, if [`Reused::kept_in`] it.
    fn of(order: &OrderRecord, authz: &AuthorizationBundle) -> Option<Reused> {
        let a = &authz.authorization;
        Self::kept_in(order, authz).then(|| Reused {
            id: a.id.clone(),
            kind: a.identifier_type,
            value: a.identifier_value.clone(),
            wildcard: a.wildcard,
            validated_at: a.validated_at,
            expires_at: a.expires_at,
        })
    }

    /// The JSON of `bundle`'s reused authorizations (none if it has none).
    fn column(bundle: &OrderBundle) -> Option<String> {
        let reused: Vec<Reused> = bundle
            .authorizations
            .iter()
            .filter_map(|a| Reused::of(&bundle.order, a))
            .collect();
        // Serialising strings and numbers cannot fail.
        (!reused.is_empty()).then(|| serde_json::to_string(&reused).unwrap_or_default())
    }

    /// The authorizations `column` holds for `order`.
    fn read(order: &OrderRecord, column: &str) -> Result<Vec<AuthorizationBundle>> {
        let reused: Vec<Reused> = serde_json::from_str(column).map_err(|e| {
            StoreError::Corrupt(format!(
                "order {} has unreadable reused authorizations: {e}",
                order.id
            ))
        })?;
        Ok(reused
            .into_iter()
            .map(|r| AuthorizationBundle {
                authorization: AuthorizationRecord {
                    id: r.id,
                    order_id: order.id.clone(),
                    account_id: order.account_id.clone(),
                    identifier_type: r.kind,
                    identifier_value: r.value,
                    wildcard: r.wildcard,
                    status: AuthorizationStatus::Valid,
                    validated_at: r.validated_at,
                    expires_at: r.expires_at,
                    created_at: order.created_at,
                },
                challenges: Vec::new(),
            })
            .collect())
    }
}

/// Puts an order together from its rows (none if there is no such
/// order). Authorizations keep the order their ids were created in (the
/// workflow makes them sortable), wherever they are kept.
fn order_bundle(rows: Vec<OrderBundleRow>) -> Result<OrderBundle> {
    let Some(first) = rows.first() else {
        return Err(StoreError::NotFound);
    };
    let order = first.order.clone();
    let mut bundles: Vec<AuthorizationBundle> = match &first.reused_authorizations {
        Some(column) => Reused::read(&order, column)?,
        None => Vec::new(),
    };
    let inline = bundles.len();
    for row in rows {
        let Some(authorization) = row.authorization() else {
            continue; // an order without authorizations
        };
        if bundles
            .last()
            .is_none_or(|b| b.authorization.id != authorization.id)
        {
            bundles.push(AuthorizationBundle {
                authorization: authorization.clone(),
                challenges: Vec::new(),
            });
        }
        let (Some(id), Some(kind), Some(token), Some(status), Some(created_at)) = (
            row.c_id,
            row.c_type,
            row.c_token,
            row.c_status,
            row.c_created_at,
        ) else {
            continue; // an authorization without challenges
        };
        if let Some(owner) = bundles.last_mut() {
            owner.challenges.push(ChallengeRecord {
                id,
                authorization_id: authorization.id,
                kind,
                token,
                status,
                error: row.c_error,
                attempted_at: row.c_attempted_at,
                validated_at: row.c_validated_at,
                created_at,
            });
        }
    }
    if inline > 0 {
        bundles.sort_by(|a, b| a.authorization.id.cmp(&b.authorization.id));
    }
    Ok(OrderBundle {
        order,
        authorizations: bundles,
    })
}

/// Followed by `VALUES (…), (…)`.
const INSERT_ORDER_PREFIX: &str =
    "INSERT INTO orders (id, account_id, status, validation, source, profile, validity_days, \
     csr_der, organization, error, rejection_reason, certificate_serial, created_at, updated_at, \
     expires_at, not_after, acme_account_id, reused_authorizations) ";

/// Followed by `VALUES (…), (…)`.
const INSERT_AUTHORIZATION_PREFIX: &str =
    "INSERT INTO authorizations (id, order_id, account_id, identifier_type, identifier_value, \
     wildcard, status, validated_at, expires_at, created_at) ";

/// Followed by `VALUES (…), (…)`.
const INSERT_CHALLENGE_PREFIX: &str =
    "INSERT INTO challenges (id, authorization_id, type, token, status, error, attempted_at, \
     validated_at, created_at) ";

/// The newest proof of control by this account: one backward probe of
/// the index `authorizations_reuse` (a `MAX()` would scan every earlier
/// authorization of the name, and reuse adds one per order).
const SELECT_LAST_VALIDATION: &str =
    "SELECT validated_at FROM authorizations WHERE account_id = $1 \
     AND identifier_type = $2 AND identifier_value = $3 AND status = 'valid' \
     AND validated_at >= $4 ORDER BY validated_at DESC LIMIT 1";

/// A challenge is claimed only while it, its authorization and its order
/// are all pending.
const CLAIM_CHALLENGE: &str =
    "UPDATE challenges SET status = 'processing', attempted_at = $3, error = NULL \
     WHERE id = $1 AND status = 'pending' AND authorization_id IN \
     (SELECT a.id FROM authorizations a JOIN orders o ON o.id = a.order_id \
      WHERE a.order_id = $2 AND a.status = 'pending' AND o.status = 'pending')";

const SELECT_STALE_CHALLENGES: &str = "SELECT c.id, a.order_id, c.attempted_at FROM challenges c \
     JOIN authorizations a ON a.id = c.authorization_id \
     WHERE c.status = 'processing' AND c.attempted_at < $1 ORDER BY c.attempted_at LIMIT $2";

const RECLAIM_CHALLENGE: &str = "UPDATE challenges SET attempted_at = $3 \
     WHERE id = $1 AND status = 'processing' AND attempted_at = $2";

const FINISH_CHALLENGE: &str = "UPDATE challenges SET status = $2, error = $3, validated_at = $4 \
     WHERE id = $1 AND status = 'processing'";

const FINISH_AUTHORIZATION: &str =
    "UPDATE authorizations SET status = $2, validated_at = $3 WHERE id = $1 AND status = 'pending'";

/// A validation's result in one statement, for a backend that runs writes
/// as CTEs (PostgreSQL: one round trip instead of up to six; the writer
/// is the serial step, measured busy 94 % of a new-name run). The same
/// moves as the statements [`SqlStore::finish_challenge_tx`] runs one by
/// one: the claim, if `$5` (its time) is set, folded into the result's
/// condition; the authorization; the order's move when this failed (`$8`)
/// or no other authorization is left unfinished. Every part reads the
/// statement's snapshot, so this authorization counts as finished by its
/// own update and the challenge's earlier status is read from `prev`.
/// Gives (claimed, finished, order moved).
const FINISH_CHALLENGE_AT_ONCE: &str = "WITH prev AS (SELECT status FROM challenges WHERE id = $1),      ch AS (UPDATE challenges SET status = $2, error = $3, validated_at = $4,        attempted_at = CASE WHEN status = 'pending' THEN $5 ELSE attempted_at END        WHERE id = $1 AND (status = 'processing' OR ($5 IS NOT NULL AND status = 'pending'          AND authorization_id IN (SELECT a.id FROM authorizations a JOIN orders o ON o.id = a.order_id            WHERE a.order_id = $7 AND a.status = 'pending' AND o.status = 'pending')))        RETURNING id),      az AS (UPDATE authorizations SET status = $6, validated_at = $4        WHERE id = $9 AND status = 'pending' AND EXISTS (SELECT 1 FROM ch) RETURNING id),      od AS (UPDATE orders SET status = $11, updated_at = $12, error = COALESCE($13, error)        WHERE id = $7 AND status = $10 AND EXISTS (SELECT 1 FROM ch)        AND ($8 OR NOT EXISTS (SELECT 1 FROM authorizations WHERE order_id = $7          AND status <> 'valid' AND NOT (id = $9 AND status = 'pending')))        RETURNING id)      SELECT COALESCE((SELECT status FROM prev) = 'pending', FALSE) AND EXISTS (SELECT 1 FROM ch),        EXISTS (SELECT 1 FROM ch), EXISTS (SELECT 1 FROM od)";

const COUNT_UNFINISHED_AUTHORIZATIONS: &str =
    "SELECT COUNT(*) FROM authorizations WHERE order_id = $1 AND status <> 'valid'";

/// Followed by optional conditions; `$1` id, `$2` from, `$3` to, `$4` at,
/// `$5` error, `$6` rejection reason, `$7` organisation, `$8` CSR, `$9`
/// attempts to add, `$10` approval note.
const TRANSITION_ORDER: &str =
    "UPDATE orders SET status = $3, updated_at = $4, error = COALESCE($5, error), \
     rejection_reason = COALESCE($6, rejection_reason), \
     organization = COALESCE($7, organization), csr_der = COALESCE($8, csr_der), \
     issue_attempts = issue_attempts + $9, approval_reason = COALESCE($10, approval_reason) \
     WHERE id = $1 AND status = $2";

/// Issuances' orders made `valid` with their certificates (and the CSR
/// of an ACME finalize), each only from the status its transition starts
/// at: the time, then rows of (order, serial, CSR, from) between
/// [`COMPLETE_ORDERS_VALUES`] and [`COMPLETE_ORDERS_SUFFIX`]. `VALUES`
/// columns are `column1…` on both backends.
const COMPLETE_ORDERS_PREFIX: &str =
    "UPDATE orders SET status = 'valid', certificate_serial = v.column2, \
     csr_der = COALESCE(v.column3, csr_der), updated_at = v.column5 FROM (";
const COMPLETE_ORDERS_SUFFIX: &str =
    ") AS v WHERE orders.id = v.column1 AND orders.status = v.column4 RETURNING id";

/// An issuance's order to make `valid` ([`SqlStore::complete_orders_tx`]).
pub(in crate::store) struct Completion<'a> {
    pub order_id: &'a str,
    pub transition: Transition,
    pub serial: String,
    pub csr_der: Option<&'a [u8]>,
    pub at: i64,
}

impl<'a> Completion<'a> {
    /// The completion `issuance` asks for, if it completes an order.
    pub(in crate::store) fn of(issuance: &'a Issuance) -> Option<Self> {
        match &issuance.order {
            Some(IssuanceOrder::Complete {
                order_id,
                transition,
                csr_der,
                at,
            }) => Some(Completion {
                order_id,
                transition: *transition,
                serial: issuance.certificate.serial.to_hex(),
                csr_der: csr_der.as_deref(),
                at: *at,
            }),
            _ => None,
        }
    }

    /// Whether its transition is a legal one that ends `valid`.
    pub(in crate::store) fn is_legal(&self) -> bool {
        self.transition.to() == OrderStatus::Valid && self.transition.is_legal()
    }
}

/// The term that lets a query of unfinished orders use the partial index
/// `orders_status`, which leaves valid orders out (migration 0016).
pub(super) const NOT_VALID: &str = "status <> 'valid'";

const SELECT_ORDERS_TO_RESUME: &str = " WHERE status <> 'valid' \
     AND ((status = 'ready' AND source = 'rest' AND validation = 'dv' AND updated_at < $1) \
     OR (status = 'processing' AND updated_at < $2)) ORDER BY updated_at LIMIT $3";

const SELECT_EXPIRED_ORDERS: &str = " WHERE status <> 'valid' \
     AND status IN ('pending', 'ready', 'awaiting_approval') AND expires_at < $1 \
     ORDER BY expires_at LIMIT $2";

/// The orders `query` asks for, newest first.
fn list_orders(query: &OrderQuery) -> Statement<'_> {
    let mut q = Statement::new(ORDER_COLUMNS);
    q.push(" WHERE 1 = 1");
    if let Some(account) = &query.account_id {
        q.push(" AND account_id = ").bind(account);
    }
    if let Some(status) = query.status {
        if status != OrderStatus::Valid {
            q.push(" AND ").push(NOT_VALID);
        }
        q.push(" AND status = ").bind(status.as_str());
    }
    q.newest_first("id", &query.before, query.limit);
    q
}

impl<B: Backend> SqlStore<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    for<'q> &'q str: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> &'q [u8]: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, B>,
    for<'q> Option<String>: sqlx::Encode<'q, B>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B>,
    for<'q> Option<bool>: sqlx::Encode<'q, B>,
    for<'q, 'r> String: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> Vec<u8>: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> i64: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> bool: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'r> &'r str: sqlx::ColumnIndex<B::Row>,
    usize: sqlx::ColumnIndex<B::Row>,
{
    /// Submits a workflow write to order `order_id`: the order's kept view
    /// is dropped before it goes and no read of it is kept while it is in
    /// flight; once written, `after` says what view it leaves.
    pub(in crate::store) async fn submit_order_write(
        &self,
        order_id: &str,
        write: batch::Write,
        after: After<'_>,
    ) -> Result<batch::Done> {
        let guard = self.recent.orders.writing(&order_id.to_owned());
        let done = self.batcher.submit(write).await?;
        match after {
            After::Whole(bundle) if done == batch::Done::Written => {
                guard.committed(Some(as_stored(bundle)))
            }
            After::Change(change) if done == batch::Done::Moved(true) => {
                guard.committed_change(change)
            }
            After::Outcome(change) => guard.committed_change_if(|v| change(v, done)),
            _ => guard.committed(None),
        }
        Ok(done)
    }

    /// Makes `transition` (checked legal) on `order_id` in `tx`, setting
    /// `update`'s fields: false if the order was not where it starts.
    pub(in crate::store) async fn move_order_tx(
        tx: &mut super::Tx<B>,
        order_id: &str,
        transition: Transition,
        update: &OrderUpdate,
        at: i64,
    ) -> Result<bool> {
        let (from, to) = (transition.from(), transition.to());
        // The statement's own $1…$10 first, in order.
        let mut q = Statement::new(TRANSITION_ORDER);
        q.arg(order_id)
            .arg(from.as_str())
            .arg(to.as_str())
            .arg(at)
            .arg(&update.error)
            .arg(&update.rejection_reason)
            .arg(&update.organization)
            .arg(&update.csr_der)
            .arg(i64::from(update.count_issue_attempt))
            .arg(&update.approval_reason);
        if let Some(before) = update.updated_before {
            q.push(" AND updated_at < ").bind(before);
        }
        let done = q.query::<B>()?.execute(&mut **tx).await?;
        Ok(B::rows_affected(&done) == 1)
    }

    /// Makes issuances' orders `valid` in `tx`, each by its transition
    /// (one that ends `valid`), recording its serial and CSR: one
    /// statement for up to [`ROWS_PER_INSERT`] orders (a round trip per
    /// order made the writer, the serial step, wait on PostgreSQL). Whether
    /// each moved (false: the order was not where its transition starts).
    /// An order named twice is completed by its first issuance only.
    pub(in crate::store) async fn complete_orders_tx(
        tx: &mut super::Tx<B>,
        completions: &[&Completion<'_>],
    ) -> Result<Vec<bool>> {
        if let Some(c) = completions.iter().find(|c| !c.is_legal()) {
            return Err(StoreError::Conflict(Conflict::IllegalTransition {
                order_id: c.order_id.to_owned(),
                transition: c.transition,
            }));
        }
        let mut seen = std::collections::HashSet::new();
        let firsts: Vec<&Completion> = completions
            .iter()
            .copied()
            .filter(|c| seen.insert(c.order_id))
            .collect();
        let mut moved = std::collections::HashSet::new();
        for chunk in firsts.chunks(ROWS_PER_INSERT) {
            let mut q = Statement::new(COMPLETE_ORDERS_PREFIX);
            Self::complete_orders_rest(&mut q, chunk);
            let ids: Vec<(String,)> = q.query_as::<B, (String,)>()?.fetch_all(&mut **tx).await?;
            moved.extend(ids.into_iter().map(|(id,)| id));
        }
        let mut first = std::collections::HashSet::new();
        Ok(completions
            .iter()
            .map(|c| first.insert(c.order_id) && moved.contains(c.order_id))
            .collect())
    }

    /// The rest of a [`COMPLETE_ORDERS_PREFIX`] statement: one row per
    /// completion.
    fn complete_orders_rest<'a>(q: &mut Statement<'a>, chunk: &[&'a Completion<'a>]) {
        for c in chunk {
            q.row()
                .bind(c.order_id)
                .bind(c.serial.as_str())
                .bind(c.csr_der)
                .bind(c.transition.from())
                .bind(c.at);
        }
        q.push(COMPLETE_ORDERS_SUFFIX);
    }

    /// Adds to `script` the moves of `completions` to `valid`, checked
    /// ([`super::Script::check_last`]) to move every order they name: for
    /// a statement that runs without taking the audit head first, and
    /// fails whole if an order had moved on (or is named twice), to be
    /// committed the ordinary way.
    pub(in crate::store) fn push_completions<'a>(
        script: &mut super::Script<'a>,
        completions: &'a [Completion<'a>],
    ) {
        let all: Vec<&Completion> = completions.iter().collect();
        for chunk in all.chunks(ROWS_PER_INSERT) {
            Self::complete_orders_rest(script.write(COMPLETE_ORDERS_PREFIX), chunk);
            script.check_last(chunk.len());
        }
    }

    /// Claims a challenge in `tx` (see [`CLAIM_CHALLENGE`]): whether it
    /// was still claimable.
    pub(in crate::store) async fn claim_challenge_tx(
        tx: &mut super::Tx<B>,
        challenge_id: &str,
        order_id: &str,
        at: i64,
    ) -> Result<bool> {
        let done = sqlx::query(CLAIM_CHALLENGE)
            .bind(challenge_id)
            .bind(order_id)
            .bind(at)
            .execute(&mut **tx)
            .await?;
        Ok(B::rows_affected(&done) == 1)
    }

    /// Records a validation's result in `tx`: the challenge and its
    /// authorization become valid or invalid, and the order moves if this
    /// failed or was its last pending authorization. The caller holds the
    /// audit head, which serialises this with every other writer, so the
    /// count of unfinished authorizations sees the others' state (and an
    /// earlier result of the same batch).
    pub(in crate::store) async fn finish_challenge_tx(
        tx: &mut super::Tx<B>,
        outcome: &ChallengeOutcome,
    ) -> Result<batch::Done> {
        if B::WRITES_AS_CTES {
            return Self::finish_challenge_at_once(tx, outcome).await;
        }
        let claimed = match &outcome.claim {
            Some(event) => {
                Self::claim_challenge_tx(
                    tx,
                    &outcome.challenge_id,
                    &outcome.order_id,
                    event.at.unix_timestamp(),
                )
                .await?
            }
            None => false,
        };
        let (status, authz_status) = if outcome.error.is_some() {
            (ChallengeStatus::Invalid, AuthorizationStatus::Invalid)
        } else {
            (ChallengeStatus::Valid, AuthorizationStatus::Valid)
        };
        let error = outcome.error.as_ref().map(Failure::to_json);
        let validated_at = outcome.error.is_none().then_some(outcome.at);
        let done = sqlx::query(FINISH_CHALLENGE)
            .bind(&outcome.challenge_id)
            .bind(status.as_str())
            .bind(&error)
            .bind(validated_at)
            .execute(&mut **tx)
            .await?;
        if B::rows_affected(&done) != 1 {
            return Ok(batch::Done::NotProcessing);
        }
        sqlx::query(FINISH_AUTHORIZATION)
            .bind(&outcome.authorization_id)
            .bind(authz_status.as_str())
            .bind(validated_at)
            .execute(&mut **tx)
            .await?;
        let next = if outcome.error.is_some() {
            Transition::Fail(OrderStatus::Pending)
        } else {
            let (left,): (i64,) = sqlx::query_as(COUNT_UNFINISHED_AUTHORIZATIONS)
                .bind(&outcome.order_id)
                .fetch_one(&mut **tx)
                .await?;
            if left > 0 {
                return Ok(batch::Done::Finished {
                    order: None,
                    claimed,
                });
            }
            outcome.when_all_valid
        };
        let update = OrderUpdate {
            error: outcome.error.clone(),
            ..OrderUpdate::default()
        };
        let moved = Self::move_order_tx(tx, &outcome.order_id, next, &update, outcome.at).await?;
        Ok(batch::Done::Finished {
            order: moved.then_some(next.to()),
            claimed,
        })
    }

    /// [`Self::finish_challenge_tx`] as one statement
    /// ([`FINISH_CHALLENGE_AT_ONCE`]).
    async fn finish_challenge_at_once(
        tx: &mut super::Tx<B>,
        outcome: &ChallengeOutcome,
    ) -> Result<batch::Done> {
        let failed = outcome.error.is_some();
        let (status, authz_status, next) = if failed {
            (
                ChallengeStatus::Invalid,
                AuthorizationStatus::Invalid,
                Transition::Fail(OrderStatus::Pending),
            )
        } else {
            (
                ChallengeStatus::Valid,
                AuthorizationStatus::Valid,
                outcome.when_all_valid,
            )
        };
        let error = outcome.error.as_ref().map(Failure::to_json);
        let validated_at = (!failed).then_some(outcome.at);
        let claim_at = outcome.claim.as_ref().map(|e| e.at.unix_timestamp());
        let (claimed, finished, moved): (bool, bool, bool) =
            sqlx::query_as(FINISH_CHALLENGE_AT_ONCE)
                .bind(&outcome.challenge_id)
                .bind(status.as_str())
                .bind(&error)
                .bind(validated_at)
                .bind(claim_at)
                .bind(authz_status.as_str())
                .bind(&outcome.order_id)
                .bind(failed)
                .bind(&outcome.authorization_id)
                .bind(next.from().as_str())
                .bind(next.to().as_str())
                .bind(outcome.at)
                .bind(&error)
                .fetch_one(&mut **tx)
                .await?;
        if !finished {
            return Ok(batch::Done::NotProcessing);
        }
        Ok(batch::Done::Finished {
            order: moved.then_some(next.to()),
            claimed,
        })
    }

    /// Adds to `script` the INSERTs of orders with their authorizations
    /// and challenges, multi-row (a batch of issuances brings many).
    pub(in crate::store) fn push_orders<'a>(
        script: &mut super::Script<'a>,
        bundles: &[&'a OrderBundle],
    ) {
        for chunk in bundles.chunks(ROWS_PER_INSERT) {
            let q = script.write(INSERT_ORDER_PREFIX);
            for bundle in chunk {
                let o = &bundle.order;
                q.row()
                    .bind(&o.id)
                    .bind(&o.account_id)
                    .bind(o.status.as_str())
                    .bind(o.validation)
                    .bind(o.source)
                    .bind(&o.profile)
                    .bind(o.validity_days)
                    .bind(&o.csr_der)
                    .bind(&o.organization)
                    .bind(&o.error)
                    .bind(&o.rejection_reason)
                    .bind(&o.certificate_serial)
                    .bind(o.created_at)
                    .bind(o.updated_at)
                    .bind(o.expires_at)
                    .bind(o.not_after)
                    .bind(&o.acme_account_id)
                    .bind(Reused::column(bundle));
            }
        }
        // Reused authorizations went into their order's row.
        let authorizations: Vec<&AuthorizationBundle> = bundles
            .iter()
            .flat_map(|b| {
                b.authorizations
                    .iter()
                    .filter(|a| !Reused::kept_in(&b.order, a))
            })
            .collect();
        for chunk in authorizations.chunks(ROWS_PER_INSERT) {
            let q = script.write(INSERT_AUTHORIZATION_PREFIX);
            for authz in chunk {
                let a = &authz.authorization;
                q.row()
                    .bind(&a.id)
                    .bind(&a.order_id)
                    .bind(&a.account_id)
                    .bind(a.identifier_type)
                    .bind(&a.identifier_value)
                    .bind(a.wildcard)
                    .bind(a.status)
                    .bind(a.validated_at)
                    .bind(a.expires_at)
                    .bind(a.created_at);
            }
        }
        let challenges: Vec<&ChallengeRecord> = authorizations
            .iter()
            .flat_map(|a| a.challenges.iter())
            .collect();
        for chunk in challenges.chunks(ROWS_PER_INSERT) {
            let q = script.write(INSERT_CHALLENGE_PREFIX);
            for c in chunk {
                q.row()
                    .bind(&c.id)
                    .bind(&c.authorization_id)
                    .bind(c.kind)
                    .bind(&c.token)
                    .bind(c.status)
                    .bind(&c.error)
                    .bind(c.attempted_at)
                    .bind(c.validated_at)
                    .bind(c.created_at);
            }
        }
    }
}

#[async_trait]
impl<B: Backend> OrderReads for SqlStore<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    for<'q> &'q str: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> &'q [u8]: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, B>,
    for<'q> Option<String>: sqlx::Encode<'q, B>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B>,
    for<'q> Option<bool>: sqlx::Encode<'q, B>,
    for<'q, 'r> String: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> Vec<u8>: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> i64: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> bool: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'r> &'r str: sqlx::ColumnIndex<B::Row>,
    usize: sqlx::ColumnIndex<B::Row>,
{
    async fn order(&self, id: &str) -> Result<OrderBundle> {
        // Where other instances may move orders, only a view of a
        // finished order (valid or invalid, which no write moves again)
        // is answered from memory: never an earlier status than the
        // database's.
        let alone = self.answers_from_memory();
        match self.recent.orders.get(&id.to_owned()) {
            Some(view) if alone || finished(&view) => Ok(view),
            _ => self.order_now(id).await,
        }
    }

    fn order_seen(&self, id: &str) -> Option<OrderBundle> {
        self.recent.orders.get(&id.to_owned())
    }

    async fn order_now(&self, id: &str) -> Result<OrderBundle> {
        let key = id.to_owned();
        let version = self.recent.orders.before_read(&key);
        let rows: Vec<OrderBundleRow> = sqlx::query_as(SELECT_ORDER_BUNDLE)
            .bind(id)
            .fetch_all(&self.read)
            .await?;
        let bundle = order_bundle(rows)?;
        if self.one_server || finished(&bundle) {
            self.recent.orders.keep(&key, version, bundle.clone());
        }
        Ok(bundle)
    }

    async fn orders(&self, query: &OrderQuery) -> Result<Vec<OrderRecord>> {
        let mut q = list_orders(query);
        let rows = q.query_as::<B, _>()?.fetch_all(&self.read).await?;
        Ok(rows)
    }

    async fn last_validation(
        &self,
        account_id: &str,
        identifier_type: IdentifierKind,
        identifier_value: &str,
        since: i64,
    ) -> Result<Option<i64>> {
        let changes = self.recent.changes.now();
        let key = (
            account_id.to_owned(),
            identifier_type,
            identifier_value.to_owned(),
        );
        if let Some(at) = self.recent.proofs.get(&key, changes) {
            if at >= since {
                return Ok(Some(at));
            }
        }
        let row: Option<(Option<i64>,)> = sqlx::query_as(SELECT_LAST_VALIDATION)
            .bind(account_id)
            .bind(identifier_type.as_str())
            .bind(identifier_value)
            .bind(since)
            .fetch_optional(&self.read)
            .await?;
        let found = row.and_then(|(at,)| at);
        if let Some(at) = found {
            self.recent.proofs.keep(key, changes, at);
        }
        Ok(found)
    }

    async fn pending_authorizations(&self, account_id: &str, now: i64) -> Result<i64> {
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
    ) -> Result<Vec<(String, String, i64)>> {
        Ok(sqlx::query_as(SELECT_STALE_CHALLENGES)
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
    ) -> Result<Vec<OrderRecord>> {
        Ok(
            sqlx::query_as(&format!("{ORDER_COLUMNS}{SELECT_ORDERS_TO_RESUME}"))
                .bind(ready_before)
                .bind(processing_before)
                .bind(limit)
                .fetch_all(&self.read)
                .await?,
        )
    }

    async fn expired_orders(&self, now: i64, limit: i64) -> Result<Vec<OrderRecord>> {
        Ok(
            sqlx::query_as(&format!("{ORDER_COLUMNS}{SELECT_EXPIRED_ORDERS}"))
                .bind(now)
                .bind(limit)
                .fetch_all(&self.read)
                .await?,
        )
    }
}

#[async_trait]
impl<B: Backend> OrderWrites for SqlStore<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    for<'q> &'q str: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> &'q [u8]: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, B>,
    for<'q> Option<&'q [u8]>: sqlx::Encode<'q, B>,
    for<'q> Option<String>: sqlx::Encode<'q, B>,
    for<'q> Option<Vec<u8>>: sqlx::Encode<'q, B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B>,
    for<'q> Option<bool>: sqlx::Encode<'q, B>,
    for<'q, 'r> String: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> Vec<u8>: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> i64: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> bool: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'r> &'r str: sqlx::ColumnIndex<B::Row>,
    usize: sqlx::ColumnIndex<B::Row>,
{
    async fn create_order(&self, bundle: &OrderBundle, events: Vec<AuditEvent>) -> Result<()> {
        let open = batch::Write::Open {
            bundle: Box::new(bundle.clone()),
            events,
        };
        self.submit_order_write(&bundle.order.id, open, After::Whole(bundle))
            .await?;
        Ok(())
    }

    async fn claim_challenge(
        &self,
        challenge_id: &str,
        order_id: &str,
        at: i64,
        event: AuditEvent,
    ) -> Result<bool> {
        let claim = batch::Write::Claim {
            challenge_id: challenge_id.to_owned(),
            order_id: order_id.to_owned(),
            at,
            event,
        };
        // What CLAIM_CHALLENGE does.
        let claimed = |b: &mut OrderBundle| {
            for c in b.authorizations.iter_mut().flat_map(|a| &mut a.challenges) {
                if c.id == challenge_id {
                    c.status = ChallengeStatus::Processing;
                    c.attempted_at = Some(at);
                    c.error = None;
                }
            }
        };
        let done = self
            .submit_order_write(order_id, claim, After::Change(&claimed))
            .await?;
        Ok(done == batch::Done::Moved(true))
    }

    async fn reclaim_challenge(
        &self,
        challenge_id: &str,
        attempted_at_was: i64,
        at: i64,
    ) -> Result<bool> {
        let done = sqlx::query(RECLAIM_CHALLENGE)
            .bind(challenge_id)
            .bind(attempted_at_was)
            .bind(at)
            .execute(&self.write)
            .await;
        // Rare (a validator's process died): rather than name the order,
        // every kept order view is dropped.
        self.recent.orders.forget_all();
        Ok(B::rows_affected(&done?) == 1)
    }

    async fn finish_challenge(
        &self,
        outcome: &ChallengeOutcome,
        events: Vec<AuditEvent>,
        on_order_change: Vec<AuditEvent>,
    ) -> Result<Option<OrderStatus>> {
        let finish = batch::Write::Finish {
            outcome: Box::new(outcome.clone()),
            events,
            on_order_change,
        };
        let order_id = outcome.order_id.clone();
        let after = |b: &mut OrderBundle, done: batch::Done| succeeded(b, outcome, done);
        match self
            .submit_order_write(&order_id, finish, After::Outcome(&after))
            .await?
        {
            batch::Done::Finished { order, .. } => Ok(order),
            _ => Err(StoreError::Conflict(Conflict::ChallengeNotProcessing(
                outcome.challenge_id.clone(),
            ))),
        }
    }

    async fn transition_order(
        &self,
        order_id: &str,
        transition: Transition,
        update: &OrderUpdate,
        at: i64,
        events: Vec<AuditEvent>,
    ) -> Result<bool> {
        if !transition.is_legal() {
            return Err(StoreError::Conflict(Conflict::IllegalTransition {
                order_id: order_id.to_owned(),
                transition,
            }));
        }
        let step = batch::Write::Move {
            order_id: order_id.to_owned(),
            transition,
            update: Box::new(update.clone()),
            at,
            events,
        };
        // What TRANSITION_ORDER does.
        let moved = |b: &mut OrderBundle| b.order = b.order.moved(transition, update, at);
        let done = self
            .submit_order_write(order_id, step, After::Change(&moved))
            .await?;
        Ok(done == batch::Done::Moved(true))
    }
}

/// What a successful validation's result (`outcome`, which did `done`)
/// made of the order `bundle` was a view of, as FINISH_CHALLENGE,
/// FINISH_AUTHORIZATION and the order's move (or FINISH_CHALLENGE_AT_ONCE)
/// write it: false where that is not known here — a failure (its error
/// as stored is the database's), a result not recorded, a claim made
/// elsewhere (its time), a move the view cannot account for.
fn succeeded(bundle: &mut OrderBundle, outcome: &ChallengeOutcome, done: batch::Done) -> bool {
    let batch::Done::Finished { order, claimed } = done else {
        return false;
    };
    if outcome.error.is_some() {
        return false;
    }
    let claim_at = outcome.claim.as_ref().map(|e| e.at.unix_timestamp());
    let Some(authz) = bundle
        .authorizations
        .iter_mut()
        .find(|a| a.authorization.id == outcome.authorization_id)
    else {
        return false;
    };
    let Some(challenge) = authz
        .challenges
        .iter_mut()
        .find(|c| c.id == outcome.challenge_id)
    else {
        return false;
    };
    match (claimed, challenge.status, claim_at) {
        (true, ChallengeStatus::Pending, Some(at)) => challenge.attempted_at = Some(at),
        (false, ChallengeStatus::Processing, _) => {}
        _ => return false,
    }
    challenge.status = ChallengeStatus::Valid;
    challenge.error = None;
    challenge.validated_at = Some(outcome.at);
    if authz.authorization.status != AuthorizationStatus::Pending {
        return false;
    }
    authz.authorization.status = AuthorizationStatus::Valid;
    authz.authorization.validated_at = Some(outcome.at);
    let all_valid = bundle
        .authorizations
        .iter()
        .all(|a| a.authorization.status == AuthorizationStatus::Valid);
    match order {
        Some(status)
            if all_valid
                && bundle.order.status == outcome.when_all_valid.from()
                && status == outcome.when_all_valid.to() =>
        {
            bundle.order.status = status;
            bundle.order.updated_at = outcome.at;
            true
        }
        None => !all_valid,
        Some(_) => false,
    }
}

/// Whether `bundle`'s order is finished (valid or invalid): no write moves
/// it again, so any instance may answer it from memory.
fn finished(bundle: &OrderBundle) -> bool {
    matches!(
        bundle.order.status,
        OrderStatus::Valid | OrderStatus::Invalid
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQLite's plan for `sql` with every parameter bound to 0.
    async fn plan(pool: &sqlx::SqlitePool, sql: &str) -> String {
        let text = format!("EXPLAIN QUERY PLAN {sql}");
        let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(&text);
        for _ in 0..sql.matches(['$', '?']).count() {
            query = query.bind(0_i64);
        }
        let rows = query.fetch_all(pool).await.unwrap();
        rows.into_iter()
            .map(|(_, _, _, detail)| detail)
            .collect::<Vec<_>>()
            .join("; ")
    }

    #[tokio::test]
    async fn the_queues_and_the_expiry_queries_use_the_indexes_left_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let _store = crate::store::connect(&url).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        for (what, sql) in [
            ("expired", format!("{ORDER_COLUMNS}{SELECT_EXPIRED_ORDERS}")),
            (
                "to resume",
                format!("{ORDER_COLUMNS}{SELECT_ORDERS_TO_RESUME}"),
            ),
            (
                "awaiting approval",
                list_orders(&OrderQuery {
                    account_id: None,
                    status: Some(OrderStatus::AwaitingApproval),
                    before: None,
                    limit: 50,
                })
                .sql,
            ),
        ] {
            let plan = plan(&pool, &sql).await;
            assert!(plan.contains("orders_status"), "{what}: {plan}");
        }
        // The queries over certificates' expiry use the issuer's index.
        for (what, sql) in [
            ("expiring", super::super::certificates::COUNT_EXPIRING),
            ("expiry notices", super::super::certificates::EXPIRING_DUE),
        ] {
            let plan = plan(&pool, sql).await;
            assert!(
                plan.contains("certificates_issuer_not_after"),
                "{what}: {plan}"
            );
        }
        // A valid order is in no queue and not in the index.
        let (indexed,): (String,) =
            sqlx::query_as("SELECT sql FROM sqlite_master WHERE name = 'orders_status'")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert!(indexed.contains("WHERE status <> 'valid'"), "{indexed}");
    }
}
