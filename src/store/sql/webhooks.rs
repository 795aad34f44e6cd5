//! The SQL of webhook delivery state.

use async_trait::async_trait;

use super::{Backend, SqlStore};
use crate::store::webhooks::*;
use crate::store::Result;

const LEASE: &str = "INSERT INTO webhook_cursors (url, last_seq, leased_by, leased_until) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (url) DO UPDATE SET leased_by = $3, leased_until = $4 \
     WHERE webhook_cursors.leased_until < $5 OR webhook_cursors.leased_by = $3 \
     RETURNING last_seq";

const ADVANCE: &str = "UPDATE webhook_cursors SET last_seq = $2 \
     WHERE url = $1 AND leased_by = $3 AND last_seq < $2";

const RECORD: &str = "INSERT INTO webhook_deliveries \
     (url, audit_seq, event, attempt, at, status_code, error, delivered) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

const SELECT: &str =
    "SELECT id, url, audit_seq, event, attempt, at, status_code, error, delivered \
     FROM webhook_deliveries ORDER BY id DESC LIMIT $1";

#[async_trait]
impl<B: Backend> WebhookReads for SqlStore<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    for<'q> &'q str: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<String>: sqlx::Encode<'q, B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B>,
    for<'q, 'r> String: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> i64: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> bool: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'r> Option<String>: sqlx::Decode<'r, B>,
    for<'r> Option<i64>: sqlx::Decode<'r, B>,
    for<'r> &'r str: sqlx::ColumnIndex<B::Row>,
    usize: sqlx::ColumnIndex<B::Row>,
{
    async fn deliveries(&self, limit: i64) -> Result<Vec<DeliveryRecord>> {
        Ok(sqlx::query_as(SELECT)
            .bind(limit)
            .fetch_all(&self.read)
            .await?)
    }

    async fn certificate_contacts(&self, serial: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let email: Option<(Option<String>,)> = sqlx::query_as(
            "SELECT a.email FROM certificates c JOIN accounts a ON a.id = c.account_id \
             WHERE c.serial = $1",
        )
        .bind(serial)
        .fetch_optional(&self.read)
        .await?;
        out.extend(email.and_then(|(e,)| e));
        let acme: Option<(String,)> = sqlx::query_as(
            "SELECT aa.contact FROM certificates c JOIN orders o ON o.id = c.order_id \
             JOIN acme_accounts aa ON aa.id = o.acme_account_id WHERE c.serial = $1",
        )
        .bind(serial)
        .fetch_optional(&self.read)
        .await?;
        if let Some((contact,)) = acme {
            let contacts: Vec<String> = serde_json::from_str(&contact).unwrap_or_default();
            out.extend(
                contacts
                    .iter()
                    .filter_map(|c| c.strip_prefix("mailto:"))
                    // A mailto: URI may carry ?subject=… after the address.
                    .filter_map(|c| c.split('?').next())
                    .map(str::to_owned),
            );
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

#[async_trait]
impl<B: Backend> WebhookWrites for SqlStore<B>
where
    for<'c> &'c mut B::Connection: sqlx::Executor<'c, Database = B>,
    for<'q> B::Arguments<'q>: sqlx::IntoArguments<'q, B>,
    for<'q> &'q str: sqlx::Encode<'q, B> + sqlx::Type<B>,
    for<'q> Option<String>: sqlx::Encode<'q, B>,
    for<'q> Option<i64>: sqlx::Encode<'q, B>,
    for<'q, 'r> String: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> i64: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'q, 'r> bool: sqlx::Encode<'q, B> + sqlx::Decode<'r, B> + sqlx::Type<B>,
    for<'r> &'r str: sqlx::ColumnIndex<B::Row>,
    usize: sqlx::ColumnIndex<B::Row>,
{
    async fn lease_webhook(
        &self,
        url: &str,
        holder: &str,
        now: i64,
        until: i64,
        start: i64,
    ) -> Result<Option<i64>> {
        let row: Option<(i64,)> = sqlx::query_as(LEASE)
            .bind(url)
            .bind(start)
            .bind(holder)
            .bind(until)
            .bind(now)
            .fetch_optional(&self.write)
            .await?;
        Ok(row.map(|(seq,)| seq))
    }

    async fn advance_webhook(&self, url: &str, holder: &str, seq: i64) -> Result<()> {
        sqlx::query(ADVANCE)
            .bind(url)
            .bind(seq)
            .bind(holder)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn record_delivery(&self, d: &NewDelivery<'_>) -> Result<()> {
        sqlx::query(RECORD)
            .bind(d.url)
            .bind(d.audit_seq)
            .bind(d.event)
            .bind(d.attempt)
            .bind(d.at)
            .bind(d.status_code)
            .bind(d.error.clone())
            .bind(d.delivered)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
