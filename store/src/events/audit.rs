//! The audit log: appended in batches, read in pages.

use dialer_api::views::AuditEntry;
use sqlx::QueryBuilder;

use crate::StoreError;
use crate::dialect::{Bind, Dialect, PushArg, QueryExt, RowExt};

/// Appends `entries` in one transaction (one commit however many statements).
pub async fn append<D: Dialect>(pool: &sqlx::Pool<D>, entries: &[AuditEntry]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    for chunk in entries.chunks(super::CHUNK / 8) {
        let mut q = QueryBuilder::<D>::new("INSERT INTO audit_log (at, key_id, method, path, status, before, after) ");
        q.push_values(chunk, |mut b, e| {
            let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
            b.push_arg(e.at)
                .push_arg(e.key_id.as_str())
                .push_arg(e.method.as_str())
                .push_arg(e.path.as_str())
                .push_arg(i32::from(e.status))
                .push_arg(json(&e.before))
                .push_arg(json(&e.after));
        });
        q.build().run(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

pub async fn read<D: Dialect>(pool: &sqlx::Pool<D>, after: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
    sqlx::query::<D>(
        "SELECT id, at, key_id, method, path, status, before, after FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .arg(after)
    .arg(i64::from(limit))
    .rows(&mut *pool.acquire().await?)
    .await?
    .iter()
    .map(|r| {
        let json = |c: &str| -> Result<Option<serde_json::Value>, StoreError> {
            let text: Option<String> = r.col(c)?;
            Ok(text.and_then(|t| serde_json::from_str(&t).ok()))
        };
        Ok(AuditEntry {
            id: r.col("id")?,
            at: r.col("at")?,
            key_id: r.col("key_id")?,
            method: r.col("method")?,
            path: r.col("path")?,
            status: r.col::<i32>("status")?.clamp(0, 999) as u16,
            before: json("before")?,
            after: json("after")?,
        })
    })
    .collect()
}
