//! Webhook endpoints: created with a secret, read, updated (pausing writes what the endpoint had
//! not read as pending rows; resuming starts at the log's head), deleted, secrets rotated.

use chrono::{DateTime, Utc};
use dialer_api::webhooks::{EndpointHealth, Webhook};
use dialer_domain::events::{EndpointSettings, EventType, Subscription};
use uuid::Uuid;

use super::ActiveEndpoint;
use super::deliveries::unread_to_rows;
use crate::dialect::{Bind, Dialect, QueryExt, RowExt};
use crate::{StoreError, now};

const ENDPOINT_COLUMNS: &str = "id, url, description, secret, previous_secret, previous_expires_at, event_types, \
    campaign_id, enabled, disabled_reason, max_concurrency, rate_per_sec, created_at, updated_at, \
    last_success_at, failing_since, failures_in_a_row";

/// An endpoint's health as stored, flagged or not now.
fn health_from_row<R: RowExt>(r: &R) -> Result<EndpointHealth, StoreError> {
    Ok(EndpointHealth::at(r.col("last_success_at")?, r.col("failing_since")?, r.col("failures_in_a_row")?, now()))
}

/// Types as stored: comma-separated names, `""` = all.
pub(crate) fn types_column(types: &[EventType]) -> String {
    types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
}

/// [`types_column`] read back; unknown names (a newer version's) are dropped.
pub(crate) fn types_from_column(s: &str) -> Vec<EventType> {
    s.split(',').filter_map(EventType::parse).collect()
}

fn webhook_from_row<R: RowExt>(r: &R, with_secret: bool) -> Result<Webhook, StoreError> {
    let types: String = r.col("event_types")?;
    let expires: Option<DateTime<Utc>> = r.col("previous_expires_at")?;
    Ok(Webhook {
        id: r.col("id")?,
        url: r.col("url")?,
        description: r.col("description")?,
        event_types: types_from_column(&types).iter().map(|t| t.as_str().to_string()).collect(),
        campaign_id: r.col("campaign_id")?,
        max_concurrency: r.col::<i32>("max_concurrency")? as u32,
        rate_per_sec: r.col::<i32>("rate_per_sec")? as u32,
        enabled: r.col("enabled")?,
        disabled_reason: r.col("disabled_reason")?,
        secret: if with_secret { Some(r.col("secret")?) } else { None },
        previous_secret_expires_at: expires.filter(|t| *t > now()),
        created_at: r.col("created_at")?,
        updated_at: r.col("updated_at")?,
        health: health_from_row(r)?,
    })
}

async fn campaign_exists<D: Dialect>(conn: &mut D::Connection, id: Option<Uuid>) -> Result<(), StoreError> {
    let Some(id) = id else { return Ok(()) };
    match sqlx::query::<D>("SELECT id FROM campaigns WHERE id = $1").arg(id).maybe_row(&mut *conn).await? {
        Some(_) => Ok(()),
        None => Err(dialer_domain::FieldError::new("campaign_id", "no such campaign").into()),
    }
}

pub async fn create_endpoint<D: Dialect>(
    pool: &sqlx::Pool<D>,
    s: &EndpointSettings,
    secret: &str,
) -> Result<Webhook, StoreError> {
    let (id, at) = (Uuid::now_v7(), now());
    let mut tx = D::begin(pool).await?;
    campaign_exists::<D>(&mut tx, s.subscription.campaign).await?;
    sqlx::query::<D>(
        "INSERT INTO webhook_endpoints (id, url, description, secret, event_types, campaign_id, enabled, \
         max_concurrency, rate_per_sec, rate_tokens, rate_at, created_at, updated_at, log_cursor) \
         VALUES ($1, $2, $3, $4, $5, $6, true, $7, $8, $9, $10, $10, $10, \
         (SELECT next_seq - 1 FROM event_sequencer WHERE id = 1))",
    )
    .arg(id)
    .arg(&s.url)
    .arg(&s.description)
    .arg(secret)
    .arg(types_column(&s.subscription.types))
    .arg(s.subscription.campaign)
    .arg(s.max_concurrency as i32)
    .arg(s.rate_per_sec as i32)
    .arg(f64::from(s.rate_per_sec))
    .arg(at)
    .run(&mut **tx)
    .await?;
    let w = fetch_endpoint::<D>(&mut tx, id, true).await?;
    tx.commit().await?;
    Ok(w)
}

async fn fetch_endpoint<D: Dialect>(
    conn: &mut D::Connection,
    id: Uuid,
    with_secret: bool,
) -> Result<Webhook, StoreError> {
    let r = sqlx::query::<D>(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"))
        .arg(id)
        .maybe_row(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("webhook"))?;
    webhook_from_row(&r, with_secret)
}

pub async fn get_endpoint<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<Webhook, StoreError> {
    let mut conn = pool.acquire().await?;
    fetch_endpoint::<D>(&mut conn, id, false).await
}

pub async fn list_endpoints<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<Vec<Webhook>, StoreError> {
    sqlx::query::<D>(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id"))
        .rows(&mut *pool.acquire().await?)
        .await?
        .iter()
        .map(|r| webhook_from_row(r, false))
        .collect()
}

/// Applies `patch` to the endpoint's settings (read and written under its row lock).
pub async fn update_endpoint<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    patch: &dialer_api::webhooks::UpdateWebhookRequest,
) -> Result<Webhook, StoreError> {
    let mut tx = D::begin(pool).await?;
    let r =
        sqlx::query::<D>(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1{}", D::FOR_UPDATE))
            .arg(id)
            .maybe_row(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("webhook"))?;
    let w = webhook_from_row(&r, false)?;
    let current = EndpointSettings {
        url: w.url,
        description: w.description,
        subscription: Subscription {
            types: types_from_column(&r.col::<String>("event_types")?),
            campaign: w.campaign_id,
        },
        max_concurrency: w.max_concurrency,
        rate_per_sec: w.rate_per_sec,
    };
    let s = patch.apply(&current)?;
    campaign_exists::<D>(&mut tx, patch.campaign_id).await?;
    let enabled = patch.enabled.unwrap_or(w.enabled);
    // Paused: what it had not read yet waits in delivery rows (as the eager fan-out left it);
    // resumed: it reads from the log's head (what was logged meanwhile is not its).
    if w.enabled && !enabled {
        unread_to_rows::<D>(&mut tx, id, None, now()).await?;
    }
    sqlx::query::<D>(
        "UPDATE webhook_endpoints SET url = $2, description = $3, event_types = $4, campaign_id = $5, \
         max_concurrency = $6, rate_per_sec = $7, enabled = $8, \
         disabled_reason = CASE WHEN $8 THEN NULL ELSE disabled_reason END, updated_at = $9, \
         log_cursor = CASE WHEN $10 THEN (SELECT next_seq - 1 FROM event_sequencer WHERE id = 1) ELSE log_cursor END \
         WHERE id = $1",
    )
    .arg(id)
    .arg(&s.url)
    .arg(&s.description)
    .arg(types_column(&s.subscription.types))
    .arg(s.subscription.campaign)
    .arg(s.max_concurrency as i32)
    .arg(s.rate_per_sec as i32)
    .arg(enabled)
    .arg(now())
    .arg(enabled && !w.enabled)
    .run(&mut **tx)
    .await?;
    let w = fetch_endpoint::<D>(&mut tx, id, false).await?;
    tx.commit().await?;
    Ok(w)
}

/// Deletes an endpoint and its deliveries (dead letters too); `false`: no such endpoint.
pub async fn delete_endpoint<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<bool, StoreError> {
    let mut tx = D::begin(pool).await?;
    // Leases, deliveries, then the endpoint: the order an answer's transaction locks them
    // in, so deleting an endpoint with answers being written cannot deadlock.
    sqlx::query::<D>("DELETE FROM webhook_leases WHERE endpoint_id = $1").arg(id).run(&mut **tx).await?;
    sqlx::query::<D>("DELETE FROM webhook_deliveries WHERE endpoint_id = $1").arg(id).run(&mut **tx).await?;
    let n = sqlx::query::<D>("DELETE FROM webhook_endpoints WHERE id = $1").arg(id).run(&mut **tx).await?;
    tx.commit().await?;
    Ok(n == 1)
}

/// A new signing secret; the current one keeps signing until `keep_old_until`.
pub async fn rotate_secret<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    secret: &str,
    keep_old_until: DateTime<Utc>,
) -> Result<Webhook, StoreError> {
    let mut tx = D::begin(pool).await?;
    let n = sqlx::query::<D>(
        "UPDATE webhook_endpoints SET previous_secret = secret, previous_expires_at = $3, secret = $2, updated_at = $4 \
         WHERE id = $1",
    )
    .arg(id)
    .arg(secret)
    .arg(keep_old_until)
    .arg(now())
    .run(&mut **tx)
    .await?;
    if n == 0 {
        return Err(StoreError::NotFound("webhook"));
    }
    let w = fetch_endpoint::<D>(&mut tx, id, true).await?;
    tx.commit().await?;
    Ok(w)
}

/// The enabled endpoints and their concurrency.
pub async fn active_endpoints<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<Vec<ActiveEndpoint>, StoreError> {
    sqlx::query::<D>(
        "SELECT id, max_concurrency, last_success_at, failing_since, failures_in_a_row FROM webhook_endpoints WHERE enabled",
    )
    .rows(&mut *pool.acquire().await?)
    .await?
    .iter()
    .map(|r| {
        Ok(ActiveEndpoint {
            id: r.col("id")?,
            max_concurrency: r.col::<i32>("max_concurrency")? as u32,
            health: health_from_row(r)?,
        })
    })
    .collect()
}

/// Every endpoint's stored secrets (id, secret, previous secret).
pub async fn secrets<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<Vec<(Uuid, String, Option<String>)>, StoreError> {
    sqlx::query::<D>("SELECT id, secret, previous_secret FROM webhook_endpoints ORDER BY id")
        .rows(&mut *pool.acquire().await?)
        .await?
        .iter()
        .map(|r| Ok((r.col("id")?, r.col("secret")?, r.col("previous_secret")?)))
        .collect()
}

/// Replaces an endpoint's stored secrets (the same secrets, sealed).
pub async fn set_secrets<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    secret: &str,
    previous: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query::<D>("UPDATE webhook_endpoints SET secret = $2, previous_secret = $3 WHERE id = $1")
        .arg(id)
        .arg(secret)
        .arg(previous)
        .run(&mut *pool.acquire().await?)
        .await?;
    Ok(())
}

/// Whether an enabled endpoint exists (then events must be numbered for it to read).
pub async fn any_endpoint<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<bool, StoreError> {
    Ok(sqlx::query::<D>("SELECT id FROM webhook_endpoints WHERE enabled LIMIT 1")
        .maybe_row(&mut *pool.acquire().await?)
        .await?
        .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_read_back_as_written() {
        let types = vec![EventType::CallFailed, EventType::CallCompleted];
        assert_eq!(types_from_column(&types_column(&types)), types);
        assert!(types_from_column("").is_empty(), "empty = all");
        assert_eq!(types_from_column("call.failed,call.newer_kind"), vec![EventType::CallFailed], "unknown dropped");
    }
}
