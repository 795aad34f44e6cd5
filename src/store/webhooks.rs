//! Webhook delivery state: how far each hook has delivered the audit log
//! (its outbox), which instance holds its lease, and every attempt.

use async_trait::async_trait;

use super::Result;

/// One delivery attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRecord {
    /// Row id (newest is highest).
    pub id: i64,
    /// The hook's URL.
    pub url: String,
    /// The audit record delivered (the delivery id receivers see).
    pub audit_seq: i64,
    /// The event type (`certificate.issued`, …).
    pub event: String,
    /// 1 for the first try.
    pub attempt: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// The HTTP status the hook answered, if it answered.
    pub status_code: Option<i64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Whether this attempt delivered it (a 2xx answer).
    pub delivered: bool,
}

/// A delivery attempt to record.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    /// The hook's URL.
    pub url: &'a str,
    /// The audit record delivered.
    pub audit_seq: i64,
    /// The event type.
    pub event: &'a str,
    /// 1 for the first try.
    pub attempt: i64,
    /// When (Unix seconds).
    pub at: i64,
    /// The HTTP status, if any.
    pub status_code: Option<i64>,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Whether it was delivered.
    pub delivered: bool,
}

/// What the dashboard and the API read.
#[async_trait]
pub trait WebhookReads: Send + Sync + 'static {
    /// The newest delivery attempts, newest first, at most `limit`.
    async fn deliveries(&self, limit: i64) -> Result<Vec<DeliveryRecord>>;

    /// Where notices about a certificate go: its account's email, and the
    /// `mailto:` contacts of the ACME account that ordered it.
    async fn certificate_contacts(&self, serial: &str) -> Result<Vec<String>>;
}

/// What the dispatcher writes.
#[async_trait]
pub trait WebhookWrites: Send + Sync + 'static {
    /// Takes or renews `holder`'s lease on `url` until `until`, if no other
    /// instance holds it at `now`. A hook seen for the first time starts
    /// at `start` (the audit head: no history is replayed). Returns the
    /// last audit sequence number delivered, or `None` when another
    /// instance holds the lease.
    async fn lease_webhook(
        &self,
        url: &str,
        holder: &str,
        now: i64,
        until: i64,
        start: i64,
    ) -> Result<Option<i64>>;

    /// Records that `url` has delivered through `seq` (only while `holder`
    /// holds the lease, and only forward).
    async fn advance_webhook(&self, url: &str, holder: &str, seq: i64) -> Result<()>;

    /// Records one attempt.
    async fn record_delivery(&self, delivery: &NewDelivery<'_>) -> Result<()>;
}
