//! A campaign's aggregates, kept by every statement that moves its calls, and the same figures
//! counted afresh from the rows (which tests compare).

use chrono::{DateTime, Utc};
use dialer_api::views::CampaignStats;
use uuid::Uuid;

use crate::StoreError;
use crate::dialect::{Bind, Dialect, PushList, QueryExt, RowExt};

/// Locks these campaigns' stats rows in campaign-id order (`ids` sorted), before a statement that
/// updates them in no set order: writers of several campaigns' rows (the recorder, a claim of a
/// group of campaigns) wait for each other and never deadlock. SQLite has one writer at a time
/// and no row locks: nothing to order.
pub(crate) async fn lock_stats<D: Dialect>(conn: &mut D::Connection, ids: &[Uuid]) -> Result<(), StoreError> {
    if !D::ROW_LOCKS || ids.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::<D>::new("SELECT campaign_id FROM campaign_stats WHERE campaign_id IN (");
    q.push_list(ids.iter().copied());
    q.push(") ORDER BY campaign_id");
    q.push(D::FOR_UPDATE);
    q.build().run(&mut *conn).await?;
    Ok(())
}

fn stats_from_row<D: Dialect>(id: Uuid, row: &D::Row) -> Result<CampaignStats, StoreError> {
    Ok(CampaignStats {
        campaign_id: id,
        total_calls: row.col("total_calls")?,
        pending_calls: row.col("pending_calls")?,
        queued_calls: row.col("queued_calls")?,
        in_progress_calls: row.col("in_progress_calls")?,
        completed_calls: row.col("completed_calls")?,
        failed_calls: row.col("failed_calls")?,
        retries_attempted: row.col("retries_attempted")?,
        attempts_total: row.col("attempts_total")?,
        failed_by_outcome: dialer_api::views::FailedByOutcome {
            busy: row.col("failed_busy")?,
            no_answer: row.col("failed_no_answer")?,
            rejected: row.col("failed_rejected")?,
            invalid_number: row.col("failed_invalid_number")?,
            failed: row.col("failed_failed")?,
            unknown_outcome: row.col("failed_unknown_outcome")?,
        },
        skipped_calls: row.col("skipped_calls")?,
        skipped_by_reason: dialer_api::views::SkippedByReason {
            dnc: row.col("skipped_dnc")?,
            no_zone: row.col("skipped_no_zone")?,
        },
        media: dialer_api::views::MediaStats {
            answered_human: row.col("answered_human")?,
            answered_machine: row.col("answered_machine")?,
            answered_unknown: row.col("answered_unknown")?,
            voicemail_left: row.col("voicemail_left")?,
            opted_out: row.col("opted_out")?,
            abandoned: row.col("abandoned")?,
        },
    })
}

#[tracing::instrument(name = "store.stats", level = "debug", skip_all)]
pub async fn stats<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<CampaignStats, StoreError> {
    let mut conn = pool.acquire().await?;
    read_stats::<D>(&mut conn, id).await
}

pub(crate) async fn read_stats<D: Dialect>(conn: &mut D::Connection, id: Uuid) -> Result<CampaignStats, StoreError> {
    let row = sqlx::query::<D>(
        "SELECT total_calls, pending_calls, queued_calls, in_progress_calls, completed_calls, failed_calls, \
         retries_attempted, attempts_total, failed_busy, failed_no_answer, failed_rejected, \
         failed_invalid_number, failed_failed, failed_unknown_outcome, skipped_calls, skipped_dnc, skipped_no_zone, \
         answered_human, answered_machine, answered_unknown, voicemail_left, opted_out, abandoned \
         FROM campaign_stats WHERE campaign_id = $1",
    )
    .arg(id)
    .maybe_row(&mut *conn)
    .await?
    .ok_or(StoreError::NotFound("campaign"))?;
    stats_from_row::<D>(id, &row)
}

/// A campaign's pending calls grouped by what says why they wait: zone key, the rule of their
/// last hold, and whether their next attempt is after `at` (then the soonest of those).
#[derive(Clone, Debug, PartialEq)]
pub struct PendingGroup {
    pub zone: Option<String>,
    pub held_for: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub calls: u64,
}

/// [`PendingGroup`]s of a campaign (an index scan of its pending calls: a read, not a tick).
#[tracing::instrument(name = "store.pending_groups", level = "debug", skip_all)]
pub async fn pending_groups<D: Dialect>(
    pool: &sqlx::Pool<D>,
    id: Uuid,
    at: DateTime<Utc>,
) -> Result<Vec<PendingGroup>, StoreError> {
    let rows = sqlx::query::<D>(
        "SELECT zone, hold, CASE WHEN next_attempt_at > $2 THEN 1 ELSE 0 END AS later, \
         MIN(next_attempt_at) AS next_at, COUNT(*) AS n FROM calls \
         WHERE campaign_id = $1 AND status = 'pending' GROUP BY zone, hold, later",
    )
    .arg(id)
    .arg(at)
    .rows(&mut *pool.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| {
            let later = r.col::<i32>("later")? == 1;
            Ok(PendingGroup {
                zone: r.col("zone")?,
                held_for: r.col("hold")?,
                next_attempt_at: if later { r.col("next_at")? } else { None },
                calls: r.col::<i64>("n")? as u64,
            })
        })
        .collect()
}

/// Calls queued or in progress in every campaign (what the global cap counts).
pub async fn live_calls<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<u64, StoreError> {
    let row = sqlx::query::<D>(
        "SELECT CAST(COALESCE(SUM(queued_calls + in_progress_calls), 0) AS BIGINT) AS n FROM campaign_stats",
    )
    .maybe_row(&mut *pool.acquire().await?)
    .await?;
    Ok(row.map(|r| r.col::<i64>("n")).transpose()?.unwrap_or(0).max(0) as u64)
}

#[tracing::instrument(name = "store.recount_stats", level = "debug", skip_all)]
pub async fn recount_stats<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<CampaignStats, StoreError> {
    let row = sqlx::query::<D>(
        "SELECT count(*) AS total_calls, \
         COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS pending_calls, \
         COALESCE(SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END), 0) AS queued_calls, \
         COALESCE(SUM(CASE WHEN status = 'in_progress' THEN 1 ELSE 0 END), 0) AS in_progress_calls, \
         COALESCE(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), 0) AS completed_calls, \
         COALESCE(SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END), 0) AS failed_calls, \
         COALESCE(SUM(CASE WHEN attempt_count > 1 THEN attempt_count - 1 ELSE 0 END), 0) AS retries_attempted, \
         COALESCE(SUM(attempt_count), 0) AS attempts_total, \
         COALESCE(SUM(CASE WHEN status = 'failed' AND last_error = 'busy' THEN 1 ELSE 0 END), 0) AS failed_busy, \
         COALESCE(SUM(CASE WHEN status = 'failed' AND last_error = 'no_answer' THEN 1 ELSE 0 END), 0) AS failed_no_answer, \
         COALESCE(SUM(CASE WHEN status = 'failed' AND last_error = 'rejected' THEN 1 ELSE 0 END), 0) AS failed_rejected, \
         COALESCE(SUM(CASE WHEN status = 'failed' AND last_error = 'invalid_number' THEN 1 ELSE 0 END), 0) AS failed_invalid_number, \
         COALESCE(SUM(CASE WHEN status = 'failed' AND last_error = 'failed' THEN 1 ELSE 0 END), 0) AS failed_failed, \
         COALESCE(SUM(CASE WHEN status = 'failed' AND last_error = 'unknown_outcome' THEN 1 ELSE 0 END), 0) AS failed_unknown_outcome, \
         COALESCE(SUM(CASE WHEN status = 'skipped' THEN 1 ELSE 0 END), 0) AS skipped_calls, \
         COALESCE(SUM(CASE WHEN status = 'skipped' AND last_error = 'dnc' THEN 1 ELSE 0 END), 0) AS skipped_dnc, \
         COALESCE(SUM(CASE WHEN status = 'skipped' AND last_error = 'no_zone' THEN 1 ELSE 0 END), 0) AS skipped_no_zone, \
         (SELECT COUNT(*) FROM call_attempts a WHERE a.campaign_id = $1 AND a.media LIKE '%\"answered_by\":\"human\"%') AS answered_human, \
         (SELECT COUNT(*) FROM call_attempts a WHERE a.campaign_id = $1 AND a.media LIKE '%\"answered_by\":\"machine\"%') AS answered_machine, \
         (SELECT COUNT(*) FROM call_attempts a WHERE a.campaign_id = $1 AND a.media LIKE '%\"answered_by\":\"unknown\"%') AS answered_unknown, \
         (SELECT COUNT(*) FROM call_attempts a WHERE a.campaign_id = $1 AND a.media LIKE '%\"voicemail_left\":true%') AS voicemail_left, \
         (SELECT COUNT(*) FROM call_attempts a WHERE a.campaign_id = $1 AND a.media LIKE '%\"opted_out\":true%') AS opted_out, \
         (SELECT COUNT(*) FROM call_attempts a WHERE a.campaign_id = $1 AND a.media LIKE '%\"abandoned\":true%') AS abandoned \
         FROM calls WHERE campaign_id = $1",
    )
    .arg(id)
    .row(&mut *pool.acquire().await?)
    .await?;
    stats_from_row::<D>(id, &row)
}

pub(crate) async fn add_pending<D: Dialect>(
    conn: &mut D::Connection,
    campaign_id: Uuid,
    n: u64,
) -> Result<(), StoreError> {
    if n > 0 {
        sqlx::query::<D>(
            "UPDATE campaign_stats SET total_calls = total_calls + $1, pending_calls = pending_calls + $1 WHERE campaign_id = $2",
        )
        .arg(n as i64)
        .arg(campaign_id)
        .run(&mut *conn)
        .await?;
    }
    Ok(())
}
