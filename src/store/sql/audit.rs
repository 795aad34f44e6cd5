//! The SQL of the audit log.

use async_trait::async_trait;

use super::{Backend, SqlStore, Statement};
use crate::store::*;

const SELECT_AUDIT_PAGE: &str = "SELECT seq, at, actor, action, subject, details, prev_hash, hash \
     FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2";

#[async_trait]
impl<B: Backend> AuditReads for SqlStore<B>
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
    async fn audit_head(&self) -> Result<(i64, Vec<u8>)> {
        Ok(
            sqlx::query_as("SELECT seq, hash FROM audit_head WHERE id = 1")
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn audit_page(&self, after: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        Ok(sqlx::query_as(SELECT_AUDIT_PAGE)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.read)
            .await?)
    }

    async fn audit_search(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let mut q = Statement::new(
            "SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_log WHERE 1 = 1",
        );
        if let Some(actor) = &query.actor {
            q.push(" AND actor = ").bind(actor.clone());
        }
        if let Some(action) = &query.action {
            q.push(" AND action LIKE ")
                .bind(format!("{}%", super::certificates::like_escape(action)))
                .push(" ESCAPE '\\'");
        }
        if let Some(subject) = &query.subject {
            q.push(" AND subject = ").bind(subject.clone());
        }
        if let Some(before) = query.before {
            q.push(" AND seq < ").bind(before);
        }
        q.push(" ORDER BY seq DESC LIMIT ").bind(query.limit);
        let rows = q.query_as::<B, _>()?.fetch_all(&self.read).await?;
        Ok(rows)
    }
}

#[async_trait]
impl<B: Backend> AuditWrites for SqlStore<B>
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
    async fn append_audit(&self, event: AuditEvent) -> Result<()> {
        let mut tx = self.write.begin().await?;
        Self::append_audit_tx(&mut tx, &[&event]).await?;
        tx.commit().await?;
        Ok(())
    }
}
