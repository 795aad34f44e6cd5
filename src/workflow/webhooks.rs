//! Webhooks: every change hallmark makes is written, in its own
//! transaction, to the audit log — which is therefore the webhooks' outbox.
//! One task per configured hook reads the log past the hook's cursor,
//! POSTs each record it subscribes to as signed JSON, records every
//! attempt, and moves the cursor on. Nothing acknowledged is lost (the
//! record is durable before the answer), a crash re-sends at most the
//! record in flight (receivers deduplicate by `X-Hallmark-Delivery`), and
//! with several instances one holds each hook's lease at a time.

use std::sync::Arc;
use std::time::Duration;

use ring::hmac;
use tokio::sync::watch;

use crate::config::Webhook;
use crate::store::webhooks::NewDelivery;
use crate::store::{AuditRecord, Store};

/// The audit actions webhooks carry, and the event each becomes.
pub const EVENTS: [(&str, &str); 6] = [
    ("certificate.issue", "certificate.issued"),
    ("certificate.revoke", "certificate.revoked"),
    ("certificate.expiring", "certificate.expiring_soon"),
    ("order.awaiting_approval", "order.awaiting_approval"),
    ("order.approve", "order.approved"),
    ("order.reject", "order.rejected"),
];

/// Attempts per event before it is recorded as failed and skipped.
pub const MAX_ATTEMPTS: u32 = 8;
/// The first retry waits this long; each later one twice as long.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long one POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a lease lasts; renewed before every delivery.
const LEASE_SECS: i64 = 600;
/// How often an idle hook looks for new records.
const POLL: Duration = Duration::from_secs(1);

/// Delivers to the configured hooks until shutdown.
pub struct WebhookDispatcher {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    holder: String,
}

impl WebhookDispatcher {
    /// A dispatcher that trusts the system's roots and this CA's root
    /// (`root_der`), so hooks on hallmark-certified servers work.
    pub fn new(store: Arc<dyn Store>, root_der: &[u8]) -> Result<Arc<Self>, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(POST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .add_root_certificate(reqwest::Certificate::from_der(root_der)?)
            .user_agent(concat!("hallmark/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Arc::new(WebhookDispatcher {
            store,
            client,
            holder: hex::encode(rand::random::<[u8; 8]>()),
        }))
    }

    /// Runs one task per hook until `shutdown` turns true. A hook seen for
    /// the first time starts after audit record `start` (no history is
    /// replayed).
    pub async fn run(
        self: Arc<Self>,
        hooks: Vec<Webhook>,
        start: i64,
        shutdown: watch::Receiver<bool>,
    ) {
        let tasks: Vec<_> = hooks
            .into_iter()
            .map(|hook| {
                let me = self.clone();
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        let idle = match me.pump(&hook, start, &stop).await {
                            Ok(delivered) => !delivered,
                            Err(e) => {
                                tracing::warn!(url = %hook.url, error = %e, "webhook delivery paused");
                                true
                            }
                        };
                        if *stop.borrow() {
                            return;
                        }
                        if idle {
                            tokio::select! {
                                _ = tokio::time::sleep(POLL) => {}
                                _ = stop.changed() => return,
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            let _ = t.await;
        }
    }

    /// Delivers what is due for `hook`; `Ok(true)` if it moved.
    async fn pump(
        &self,
        hook: &Webhook,
        start: i64,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool, crate::store::StoreError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Some(last) = self
            .store
            .lease_webhook(&hook.url, &self.holder, now, now + LEASE_SECS, start)
            .await?
        else {
            return Ok(false); // another instance delivers this hook
        };
        let page = self.store.audit_page(last, 100).await?;
        let moved = !page.is_empty();
        for record in page {
            if *stop.borrow() {
                break;
            }
            let event = EVENTS
                .iter()
                .find(|(action, _)| *action == record.action)
                .map(|(_, event)| *event)
                .filter(|event| hook.events.contains(event));
            if let Some(event) = event {
                self.deliver(hook, &record, event, stop).await?;
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            // Renew the lease as the cursor moves; stop if another
            // instance took it over meanwhile.
            let renewed = self
                .store
                .lease_webhook(&hook.url, &self.holder, now, now + LEASE_SECS, start)
                .await?;
            if renewed.is_none() {
                return Ok(moved);
            }
            self.store
                .advance_webhook(&hook.url, &self.holder, record.seq)
                .await?;
        }
        Ok(moved)
    }

    /// POSTs one record, retrying with backoff; every attempt is recorded.
    async fn deliver(
        &self,
        hook: &Webhook,
        record: &AuditRecord,
        event: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), crate::store::StoreError> {
        let body = payload(record, event);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let at = time::OffsetDateTime::now_utc().unix_timestamp();
            let request = self
                .client
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("x-hallmark-event", event)
                .header("x-hallmark-delivery", record.seq.to_string())
                .header("x-hallmark-timestamp", at.to_string())
                .header("x-hallmark-signature", signature(&hook.secret, at, &body))
                .body(body.clone());
            let (status_code, error) = match request.send().await {
                Ok(r) if r.status().is_success() => (Some(i64::from(r.status().as_u16())), None),
                Ok(r) => (
                    Some(i64::from(r.status().as_u16())),
                    Some(format!("the hook answered {}", r.status())),
                ),
                Err(e) => (None, Some(error_chain(&e))),
            };
            let delivered = error.is_none();
            crate::metrics::METRICS
                .webhook_deliveries
                .inc(&[event, if delivered { "delivered" } else { "failed" }]);
            self.store
                .record_delivery(&NewDelivery {
                    url: &hook.url,
                    audit_seq: record.seq,
                    event,
                    attempt: i64::from(attempt),
                    at,
                    status_code,
                    error: error.clone(),
                    delivered,
                })
                .await?;
            if delivered {
                return Ok(());
            }
            tracing::warn!(
                url = %hook.url, event, delivery = record.seq, attempt,
                error = error.as_deref().unwrap_or_default(),
                "webhook delivery failed"
            );
            if attempt == MAX_ATTEMPTS || *stop.borrow() {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        tracing::error!(url = %hook.url, event, delivery = record.seq, "webhook event given up after {MAX_ATTEMPTS} attempts");
        Ok(())
    }
}

/// Certificates this close to their end, unrenewed, get an "expiring
/// soon" notice.
pub const EXPIRING_NOTICE_DAYS: i64 = 7;
/// How often the notices are looked for.
pub const EXPIRING_SCAN: Duration = Duration::from_secs(3600);

/// Records "expiring soon" notices for certificates that end within
/// [`EXPIRING_NOTICE_DAYS`] and have no successor, in batches, at `now`;
/// returns their serials. Each notice is an audit record, so webhooks (and
/// anything else reading the log) see each once.
pub async fn notice_expiring(
    store: &dyn Store,
    now: i64,
) -> Result<Vec<String>, crate::store::StoreError> {
    let until = now + EXPIRING_NOTICE_DAYS * 86_400;
    let mut all = Vec::new();
    loop {
        let batch = store.notice_expiring(now, until, 500).await?;
        let done = batch.len() < 500;
        all.extend(batch);
        if done {
            return Ok(all);
        }
    }
}

/// Looks for expiring certificates at start and every
/// [`EXPIRING_SCAN`] until shutdown.
pub async fn run_expiry_notices(store: Arc<dyn Store>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match notice_expiring(store.as_ref(), now).await {
            Ok(serials) if !serials.is_empty() => {
                tracing::info!(
                    count = serials.len(),
                    "certificates expiring soon, unrenewed"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "looking for expiring certificates failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRING_SCAN) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A hook's URL as shown in the dashboard and the API: its origin and
/// first path segment, the rest elided — URLs such as chat webhooks carry
/// their credential in the path.
pub fn display_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let mut segments = u.path_segments().into_iter().flatten();
            let first = segments.next().unwrap_or_default();
            let more = segments.next().is_some() || u.query().is_some();
            format!(
                "{}/{first}{}",
                u.origin().ascii_serialization(),
                if more { "/…" } else { "" }
            )
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// The JSON body: the event, its delivery id (the audit sequence number),
/// when it happened, who did it, to what, and the audit record's details.
pub fn payload(record: &AuditRecord, event: &str) -> Vec<u8> {
    let data: serde_json::Value =
        serde_json::from_str(&record.details).unwrap_or(serde_json::Value::Null);
    serde_json::to_vec(&serde_json::json!({
        "id": record.seq,
        "type": event,
        "created_at": super::rfc3339(record.at),
        "actor": record.actor,
        "subject": record.subject,
        "data": data,
    }))
    .unwrap_or_default()
}

/// `sha256=` and the hex HMAC-SHA256, under the hook's secret, of
/// `"<timestamp>.<body>"` — the timestamp signed too, so an old delivery
/// replayed later is recognisable.
pub fn signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
