//! Claims: the scheduler takes a campaign's due calls of open zones (pending → queued, the
//! attempt number bumped, each id once: `SKIP LOCKED`), screens them by the recipient's rules in
//! the same transaction, and gives back what the bus did not take.

use chrono::{DateTime, Utc};
use dialer_domain::campaign::CampaignStatus;
use uuid::Uuid;

use crate::campaigns::locked_status;
use crate::dialect::{Bind, Dialect, QueryExt, RowExt};
use crate::model::{ClaimedCall, Screened, UnconfirmedClaim};
use crate::record::CANCELLED;
use crate::{StoreError, now};

async fn claim_some<D: Dialect>(
    conn: &mut D::Connection,
    campaign_id: Uuid,
    zone: &str,
    retries: bool,
    limit: usize,
    at: DateTime<Utc>,
    deadline: DateTime<Utc>,
) -> Result<Vec<ClaimedCall>, StoreError> {
    if limit == 0 {
        return Ok(vec![]);
    }
    let cond =
        if retries { "next_attempt_at IS NOT NULL AND next_attempt_at <= $2" } else { "next_attempt_at IS NULL" };
    // Both kinds read the index `calls_pending_zone` in its order (zone, then
    // next_attempt_at, id; new calls last), so a claim costs the rows it takes, whatever
    // the statistics say, and never reads a closed zone's calls.
    // The ids are taken once (PostgreSQL: `= ANY (ARRAY(…))`, an init plan; a semi-join
    // `IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)` may be rescanned and claim more
    // than n), then updated through the index on `id` alone: with the campaign or the
    // status in the outer condition, stale statistics (a campaign just loaded) made
    // PostgreSQL scan every pending call of the campaign for each of the n ids.
    // The rows are locked and pending: nothing else can have changed them.
    let sql = format!(
        "UPDATE calls SET status = 'queued', attempt_count = attempt_count + 1, event_seq = event_seq + 1, queued_at = $2, updated_at = $2, \
         dispatch_deadline = $5, republish_at = NULL \
         WHERE id {}SELECT id FROM calls \
         WHERE campaign_id = $1 AND status = 'pending' AND zone = $4 AND {cond} \
         ORDER BY next_attempt_at, id LIMIT $3{}{} \
         RETURNING id, phone_number, attempt_count, zone, event_seq",
        D::CLAIM_IN.0,
        D::SKIP_LOCKED,
        D::CLAIM_IN.1,
    );
    let rows = sqlx::query::<D>(&sql)
        .arg(campaign_id)
        .arg(at)
        .arg(limit as i64)
        .arg(zone)
        .arg(deadline)
        .rows(&mut *conn)
        .await?;
    rows.iter().map(|r| claimed_call(r, deadline)).collect()
}

/// A claimed call from its row (`id, phone_number, attempt_count, zone, event_seq`).
fn claimed_call(r: &impl RowExt, deadline: DateTime<Utc>) -> Result<ClaimedCall, StoreError> {
    Ok(ClaimedCall {
        id: r.col("id")?,
        phone_number: r.col("phone_number")?,
        attempt: r.col::<i32>("attempt_count")? as u32,
        zone: r.col::<Option<String>>("zone")?.unwrap_or_default(),
        event_seq: r.col::<i32>("event_seq")? as u32,
        deadline,
    })
}

/// Up to `n` due calls of one zone, retries and new calls side by side (half each
/// when both wait).
async fn claim_zone<D: Dialect>(
    conn: &mut D::Connection,
    campaign_id: Uuid,
    (zone, deadline): &(String, DateTime<Utc>),
    n: usize,
    at: DateTime<Utc>,
) -> Result<Vec<ClaimedCall>, StoreError> {
    let (zone, d) = (zone.as_str(), *deadline);
    let mut out = claim_some::<D>(conn, campaign_id, zone, true, n.div_ceil(2), at, d).await?;
    let fresh = claim_some::<D>(conn, campaign_id, zone, false, n.saturating_sub(out.len()), at, d).await?;
    out.extend(fresh);
    if out.len() < n {
        let more = claim_some::<D>(conn, campaign_id, zone, true, n - out.len(), at, d).await?;
        out.extend(more);
    }
    Ok(out)
}

/// Moves up to `n` due calls of a campaign from pending to queued, zone by zone in
/// the order given (the scheduler passes the open ones, soonest to close first, each with its
/// calls' message deadline, kept with the call), and screens them by the recipient's rules: the
/// calls to dial are returned and counted as attempts; skipped ones end, held ones wait.
#[tracing::instrument(name = "store.claim_calls", level = "debug", skip_all)]
pub async fn claim_calls<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    n: usize,
    at: DateTime<Utc>,
    zones: &[(String, DateTime<Utc>)],
    rules: &dialer_domain::rules::Rules,
) -> Result<Screened, StoreError> {
    let mut tx = D::begin(pool).await?;
    if D::ROW_LOCKS {
        // PostgreSQL: stale statistics (a campaign just loaded looks empty) made the
        // planner read every pending call of the campaign through another index and
        // sort them, per zone; without sorts it reads `calls_pending_zone` in its order.
        // Likewise a do-not-call list just imported looked empty: a sequential scan of
        // a million entries per claim (`bench rules`). Every statement of a claim is a
        // look-up by key: no sort and no table scan is ever the right plan here.
        sqlx::query::<D>("SET LOCAL enable_sort = off").run(&mut **tx).await?;
        sqlx::query::<D>("SET LOCAL enable_seqscan = off").run(&mut **tx).await?;
    }
    // Nothing is claimed for a campaign paused or completed since the scheduler listed it.
    if locked_status::<D>(&mut tx, campaign_id).await? != Some(CampaignStatus::InProgress) {
        return Ok(Screened::default());
    }
    let mut out = Vec::new();
    for zone in zones {
        if out.len() >= n {
            break;
        }
        let more = claim_zone::<D>(&mut tx, campaign_id, zone, n - out.len(), at).await?;
        out.extend(more);
    }
    if out.is_empty() {
        return Ok(Screened::default());
    }
    let screened = crate::rules::screen::<D>(&mut tx, campaign_id, out, rules, at).await?;
    claim_stats::<D>(&mut tx, campaign_id, &screened).await?;
    let skipped: Vec<(ClaimedCall, &str)> = screened.skipped.iter().map(|(c, r)| (c.clone(), r.as_str())).collect();
    let events = crate::outbox::claimed(campaign_id, &screened.dial, &skipped, at);
    crate::events::log::append::<D>(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(screened)
}

/// A claim's effect on the aggregates: dialled calls pending → queued (attempts
/// counted), skipped ones pending → skipped by reason, held ones stay pending.
async fn claim_stats<D: Dialect>(conn: &mut D::Connection, campaign_id: Uuid, s: &Screened) -> Result<(), StoreError> {
    let k = s.dial.len() as i64;
    let retries = s.dial.iter().filter(|c| c.attempt > 1).count() as i64;
    let skipped = |r| s.skipped.iter().filter(|(_, why)| *why == r).count() as i64;
    let (dnc, no_zone) =
        (skipped(dialer_domain::rules::SkipReason::Dnc), skipped(dialer_domain::rules::SkipReason::NoZone));
    if k + dnc + no_zone == 0 {
        return Ok(());
    }
    sqlx::query::<D>(
        "UPDATE campaign_stats SET pending_calls = pending_calls - $1 - $4 - $5, queued_calls = queued_calls + $1, \
         attempts_total = attempts_total + $1, retries_attempted = retries_attempted + $2, \
         skipped_calls = skipped_calls + $4 + $5, skipped_dnc = skipped_dnc + $4, skipped_no_zone = skipped_no_zone + $5 \
         WHERE campaign_id = $3",
    )
    .arg(k)
    .arg(retries)
    .arg(campaign_id)
    .arg(dnc)
    .arg(no_zone)
    .run(&mut *conn)
    .await?;
    Ok(())
}

/// Gives claimed calls back (their dispatch failed): queued → pending, attempt undone;
/// cancelled instead (failed, never placed) if the campaign was completed meanwhile.
#[tracing::instrument(name = "store.unclaim_calls", level = "debug", skip_all)]
pub async fn unclaim_calls<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    calls: &[ClaimedCall],
) -> Result<(), StoreError> {
    if calls.is_empty() {
        return Ok(());
    }
    let mut tx = D::begin(pool).await?;
    let completed = locked_status::<D>(&mut tx, campaign_id).await? == Some(CampaignStatus::Completed);
    let (to, error) = if completed { ("failed", Some(CANCELLED)) } else { ("pending", None) };
    let mut n = 0i64;
    let mut retries = 0i64;
    let mut events = Vec::new();
    for c in calls {
        // A cancelled call logs its end (its `queued` stands: the claim committed it).
        let r = sqlx::query::<D>(
            "UPDATE calls SET status = $4, last_error = COALESCE($5, last_error), \
             attempt_count = attempt_count - 1, queued_at = NULL, event_seq = event_seq + $6 \
             WHERE campaign_id = $1 AND id = $2 AND status = 'queued' AND attempt_count = $3 RETURNING event_seq",
        )
        .arg(campaign_id)
        .arg(c.id)
        .arg(c.attempt as i32)
        .arg(to)
        .arg(error)
        .arg(i32::from(completed))
        .maybe_row(&mut **tx)
        .await?;
        if let Some(r) = r {
            n += 1;
            retries += i64::from(c.attempt > 1);
            if completed {
                let seq = r.col::<i32>("event_seq")? as u32;
                let stream = crate::outbox::CallStream {
                    campaign: campaign_id,
                    call: c.id,
                    phone_number: c.phone_number.clone(),
                    seq,
                };
                crate::outbox::cancelled(stream, c.attempt - 1, now(), &mut events);
            }
        }
    }
    crate::events::log::append::<D>(&mut tx, &events).await?;
    let (pending, failed) = if completed { (0, n) } else { (n, 0) };
    sqlx::query::<D>(
        "UPDATE campaign_stats SET pending_calls = pending_calls + $1, failed_calls = failed_calls + $2, \
         queued_calls = queued_calls - $3, attempts_total = attempts_total - $3, \
         retries_attempted = retries_attempted - $4 WHERE campaign_id = $5",
    )
    .arg(pending)
    .arg(failed)
    .arg(n)
    .arg(retries)
    .arg(campaign_id)
    .run(&mut **tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Queued calls claimed in `claimed` (after its start: no older claim's deadline can be ahead;
/// the bound keeps the index scan off older calls in progress) whose message deadline is still ahead of `now`
/// and that were not published again since `now` (oldest claim first): their messages may never
/// have reached the broker (see the scheduler's republishing). Each is marked not to be taken
/// again before `again_at`, so that control planes sweeping side by side take each once.
#[tracing::instrument(name = "store.unconfirmed_claims", level = "debug", skip_all)]
pub async fn unconfirmed_claims<D: Dialect>(
    pool: &sqlx::Pool<D>,
    claimed: std::ops::Range<DateTime<Utc>>,
    now: DateTime<Utc>,
    again_at: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<UnconfirmedClaim>, StoreError> {
    // `calls_live` (queued_at, for queued and dialling calls) finds them; the ids are taken
    // once and updated by `id`, as in a claim.
    let sql = format!(
        "UPDATE calls SET republish_at = $3 \
         WHERE id {}SELECT id FROM calls \
         WHERE status = 'queued' AND queued_at < $1 AND queued_at >= $5 AND dispatch_deadline > $2 \
         AND (republish_at IS NULL OR republish_at <= $2) \
         ORDER BY queued_at LIMIT $4{}{} \
         RETURNING campaign_id, id, phone_number, attempt_count, zone, event_seq, queued_at, dispatch_deadline",
        D::CLAIM_IN.0,
        D::SKIP_LOCKED,
        D::CLAIM_IN.1,
    );
    let rows = sqlx::query::<D>(&sql)
        .arg(claimed.end)
        .arg(now)
        .arg(again_at)
        .arg(limit as i64)
        .arg(claimed.start)
        .rows(&mut *pool.acquire().await?)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(UnconfirmedClaim {
                campaign_id: r.col("campaign_id")?,
                claimed_at: r.col("queued_at")?,
                call: claimed_call(r, r.col("dispatch_deadline")?)?,
            })
        })
        .collect()
}
