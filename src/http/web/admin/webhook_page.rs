//! The webhook delivery log: every attempt, newest first.

#![allow(clippy::result_large_err)]

use super::*;

/// One attempt as shown.
pub(super) struct DeliveryLine {
    delivery: i64,
    url: String,
    event: String,
    attempt: i64,
    at: When,
    outcome: String,
    delivered: bool,
}

#[derive(Template)]
#[template(path = "admin/webhooks.html")]
pub(super) struct WebhooksPage {
    chrome: Chrome,
    hooks: Vec<(String, String)>,
    deliveries: Vec<DeliveryLine>,
}

pub(super) async fn webhooks_page(
    State(state): State<Arc<AppState>>,
    who: Admin,
    headers: HeaderMap,
) -> Page {
    let deliveries = state
        .authority
        .reads()
        .deliveries(200)
        .await?
        .into_iter()
        .map(|d| DeliveryLine {
            delivery: d.audit_seq,
            url: crate::workflow::webhooks::display_url(&d.url),
            event: d.event,
            attempt: d.attempt,
            at: when(d.at),
            outcome: match (d.status_code, d.error) {
                (_, None) => format!("{}", d.status_code.unwrap_or(200)),
                (Some(code), Some(_)) => format!("{code}"),
                (None, Some(e)) => e,
            },
            delivered: d.delivered,
        })
        .collect();
    let hooks = state
        .webhooks
        .iter()
        .map(|h| {
            (
                crate::workflow::webhooks::display_url(&h.url),
                h.events.join(", "),
            )
        })
        .collect();
    Ok(render(&WebhooksPage {
        chrome: chrome(&who, &headers, "webhooks"),
        hooks,
        deliveries,
    }))
}
