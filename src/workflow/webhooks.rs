//! Webhooks: every change hallmark makes is written, in its own
//! transaction, to the audit log — which is therefore the webhooks' outbox.
//! One task per configured hook reads the log past the hook's cursor,
//! POSTs each record it subscribes to as signed JSON, records every
//! attempt, and moves the cursor on. Nothing acknowledged is lost (the
//! record is durable before the answer), a crash re-sends at most the
//! record in flight (receivers deduplicate by `X-Hallmark-Delivery`), and
//! with several instances one holds each hook's lease at a time.
//!
//! Expiry mail (`[smtp]`) is one more target read the same way: its
//! cursor is keyed `smtp://host:port`, its attempts are in the same
//! delivery log, and each `certificate.expiring_soon` becomes one message
//! to the certificate's account's email and its ACME account's contacts
//! (and `smtp.also_to`).

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

/// Expiry mail: the server, and what the messages point to.
pub struct Mailer {
    /// `[smtp]`.
    pub settings: crate::smtp::SmtpSettings,
    /// TLS trust: the system's roots and this CA's root.
    pub tls: Arc<rustls::ClientConfig>,
    /// The name this host says in EHLO.
    pub helo: String,
    /// `public_https_url`, for links in the messages.
    pub public_url: String,
}

/// Where the dispatcher delivers events.
pub enum Target {
    /// An HTTP endpoint.
    Hook(Webhook),
    /// Expiry mail.
    Mail(Arc<Mailer>),
}

impl Target {
    /// The key of its cursor and of its attempts in the delivery log.
    pub fn key(&self) -> String {
        match self {
            Target::Hook(h) => h.url.clone(),
            Target::Mail(m) => format!("smtp://{}:{}", m.settings.host, m.settings.port),
        }
    }

    fn wants(&self, event: &str) -> bool {
        match self {
            Target::Hook(h) => h.events.contains(&event),
            Target::Mail(_) => event == "certificate.expiring_soon",
        }
    }
}

/// The message for an "expiring soon" record, to `to`.
pub fn expiry_mail(mailer: &Mailer, record: &AuditRecord, to: Vec<String>) -> crate::smtp::Mail {
    let details: serde_json::Value =
        serde_json::from_str(&record.details).unwrap_or(serde_json::Value::Null);
    let names: Vec<String> = details["names"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let not_after = details["not_after"].as_i64().unwrap_or(0);
    let first = names
        .first()
        .cloned()
        .unwrap_or_else(|| record.subject.clone());
    let more = match names.len() {
        0 | 1 => String::new(),
        n => format!(" and {} more", n - 1),
    };
    let when = super::rfc3339(not_after);
    let day = when.get(..10).unwrap_or_default();
    let body = format!(
        "The certificate for {names} expires on {when}, and no renewal has been issued.\n\
         \n\
         Serial:  {serial}\n\
         Names:   {names}\n\
         Details: {url}/api/v1/certificates/{serial}\n\
         \n\
         Renew it where it is installed: `hallmark renew --out DIR` for a\n\
         certificate `hallmark request` wrote, or your ACME client (certbot renew,\n\
         lego renew, cert-manager and Caddy renew on their own when they run).\n\
         \n\
         -- \n\
         hallmark, {url}\n",
        names = names.join(", "),
        serial = record.subject,
        url = mailer.public_url,
    );
    crate::smtp::Mail {
        to,
        subject: format!("Certificate for {first}{more} expires on {day}"),
        body,
        message_id: format!("expiring.{}.{}@{}", record.seq, record.subject, mailer.helo),
    }
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

    /// Runs one task per target until `shutdown` turns true. A target seen
    /// for the first time starts after audit record `start` (no history is
    /// replayed).
    pub async fn run(
        self: Arc<Self>,
        targets: Vec<Target>,
        start: i64,
        shutdown: watch::Receiver<bool>,
    ) {
        let tasks: Vec<_> = targets
            .into_iter()
            .map(|hook| {
                let me = self.clone();
                let mut stop = shutdown.clone();
                tokio::spawn(async move {
                    loop {
                        let idle = match me.pump(&hook, start, &stop).await {
                            Ok(delivered) => !delivered,
                            Err(e) => {
                                tracing::warn!(target = %crate::workflow::webhooks::display_url(&hook.key()), error = %e, "webhook delivery paused");
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
        hook: &Target,
        start: i64,
        stop: &watch::Receiver<bool>,
    ) -> Result<bool, crate::store::StoreError> {
        let key = hook.key();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let Some(last) = self
            .store
            .lease_webhook(&key, &self.holder, now, now + LEASE_SECS, start)
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
                .filter(|event| hook.wants(event));
            if let Some(event) = event {
                self.deliver(hook, &record, event, stop).await?;
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            // Renew the lease as the cursor moves; stop if another
            // instance took it over meanwhile.
            let renewed = self
                .store
                .lease_webhook(&key, &self.holder, now, now + LEASE_SECS, start)
                .await?;
            if renewed.is_none() {
                return Ok(moved);
            }
            self.store
                .advance_webhook(&key, &self.holder, record.seq)
                .await?;
        }
        Ok(moved)
    }

    /// One attempt at delivering to a target: the HTTP status if there
    /// was an answer, and why it failed if it did.
    async fn attempt(
        &self,
        target: &Target,
        record: &AuditRecord,
        event: &str,
        mail_to: &[String],
    ) -> (Option<i64>, Option<String>) {
        let hook = match target {
            Target::Hook(hook) => hook,
            Target::Mail(mailer) => {
                let mail = expiry_mail(mailer, record, mail_to.to_vec());
                return match crate::smtp::send(&mailer.settings, &mailer.tls, &mailer.helo, &mail)
                    .await
                {
                    Ok(()) => (None, None),
                    Err(e) => (None, Some(e.to_string())),
                };
            }
        };
        let body = payload(record, event);
        let at = time::OffsetDateTime::now_utc().unix_timestamp();
        let request = self
            .client
            .post(&hook.url)
            .header("content-type", "application/json")
            .header("x-hallmark-event", event)
            .header("x-hallmark-delivery", record.seq.to_string())
            .header("x-hallmark-timestamp", at.to_string())
            .header("x-hallmark-signature", signature(&hook.secret, at, &body))
            .body(body);
        match request.send().await {
            Ok(r) if r.status().is_success() => (Some(i64::from(r.status().as_u16())), None),
            Ok(r) => (
                Some(i64::from(r.status().as_u16())),
                Some(format!("the hook answered {}", r.status())),
            ),
            Err(e) => (None, Some(error_chain(&e))),
        }
    }

    /// Delivers one record, retrying with backoff; every attempt is
    /// recorded.
    async fn deliver(
        &self,
        hook: &Target,
        record: &AuditRecord,
        event: &str,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), crate::store::StoreError> {
        let key = hook.key();
        // Mail goes to the certificate's contacts and `also_to`; with
        // none, there is nobody to tell.
        let mut mail_to = Vec::new();
        if let Target::Mail(mailer) = hook {
            mail_to = self.store.certificate_contacts(&record.subject).await?;
            mail_to.retain(|a| crate::smtp::plausible_address(a));
            mail_to.extend(mailer.settings.also_to.iter().cloned());
            mail_to.sort();
            mail_to.dedup();
            if mail_to.is_empty() {
                tracing::debug!(serial = %record.subject, "no contact to mail about an expiring certificate");
                return Ok(());
            }
        }
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=MAX_ATTEMPTS {
            let at = time::OffsetDateTime::now_utc().unix_timestamp();
            let (status_code, error) = self.attempt(hook, record, event, &mail_to).await;
            let delivered = error.is_none();
            crate::metrics::METRICS
                .webhook_deliveries
                .inc(&[event, if delivered { "delivered" } else { "failed" }]);
            self.store
                .record_delivery(&NewDelivery {
                    url: &key,
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
                target = %display_url(&key), event, delivery = record.seq, attempt,
                error = error.as_deref().unwrap_or_default(),
                "webhook delivery failed"
            );
            if attempt == MAX_ATTEMPTS || *stop.borrow() {
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        tracing::error!(target = %display_url(&key), event, delivery = record.seq, "webhook event given up after {MAX_ATTEMPTS} attempts");
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
    if url.starts_with("smtp://") {
        return url.to_owned(); // the mail target: host and port only
    }
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
