//! Claims: the scheduler takes a campaign's due calls of open zones (pending → queued, the
//! attempt number bumped, each id once: `SKIP LOCKED`), screens them by the recipient's rules in
//! the same transaction, and gives back what the bus did not take.

use chrono::{DateTime, Utc};
use dialer_domain::campaign::CampaignStatus;
use uuid::Uuid;

use std::collections::{HashMap, HashSet};

use sqlx::QueryBuilder;

use crate::campaigns::locked_status;
use crate::dialect::{Bind, ClaimAsk, Dialect, PushArg, PushList, QueryExt, RowExt};
use crate::model::{ClaimedCall, Screened, UnconfirmedClaim};
use crate::record::CANCELLED;
use crate::{StoreError, now};

/// Campaigns (or calls) per statement of a claim (5 parameters each, under SQLite's 32,766).
const CAMPAIGN_CHUNK: usize = 1000;

/// A step of a claim for one ask (SQLite's [`Dialect::claim_round`]).
pub(crate) async fn claim_some<D: Dialect>(
    conn: &mut D::Connection,
    ask: &ClaimAsk<'_>,
    retries: bool,
    at: DateTime<Utc>,
) -> Result<Vec<ClaimedCall>, StoreError> {
    let cond =
        if retries { "next_attempt_at IS NOT NULL AND next_attempt_at <= $2" } else { "next_attempt_at IS NULL" };
    // Both kinds read the index `calls_pending_zone` in its order (zone, then
    // next_attempt_at, id; new calls last), so a claim costs the rows it takes, whatever
    // the statistics say, and never reads a closed zone's calls.
    // The ids are taken once, then updated through the index on `id` alone (see the
    // PostgreSQL dialect's `claim_round` for why). The rows are locked and pending:
    // nothing else can have changed them.
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
        .arg(ask.campaign_id)
        .arg(at)
        .arg(ask.limit as i64)
        .arg(ask.zone)
        .arg(ask.deadline)
        .rows(&mut *conn)
        .await?;
    rows.iter().map(|r| claimed_call(r, ask.deadline)).collect()
}

/// A claimed call from its row (`id, phone_number, attempt_count, zone, event_seq`).
pub(crate) fn claimed_call(r: &impl RowExt, deadline: DateTime<Utc>) -> Result<ClaimedCall, StoreError> {
    Ok(ClaimedCall {
        id: r.col("id")?,
        phone_number: r.col("phone_number")?,
        attempt: r.col::<i32>("attempt_count")? as u32,
        zone: r.col::<Option<String>>("zone")?.unwrap_or_default(),
        event_seq: r.col::<i32>("event_seq")? as u32,
        deadline,
    })
}

/// One campaign's part of a claim: up to `n` due calls, zone by zone in the order given (the
/// scheduler passes the open ones, soonest to close first, each with its calls' message
/// deadline, kept with the call), screened by `rules`.
#[derive(Clone, Copy, Debug)]
pub struct ClaimJob<'a> {
    pub campaign_id: Uuid,
    pub n: usize,
    pub zones: &'a [(String, DateTime<Utc>)],
    pub rules: &'a dialer_domain::rules::Rules,
}

/// Moves up to `n` due calls of a campaign from pending to queued and screens them by the
/// recipient's rules: the calls to dial are returned and counted as attempts; skipped ones end,
/// held ones wait. [`claim_many`] for one campaign.
pub async fn claim_calls<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    n: usize,
    at: DateTime<Utc>,
    zones: &[(String, DateTime<Utc>)],
    rules: &dialer_domain::rules::Rules,
) -> Result<Screened, StoreError> {
    let job = ClaimJob { campaign_id, n, zones, rules };
    Ok(claim_many(pool, &[job], at).await?.pop().unwrap_or_default())
}

/// Claims for several campaigns (distinct) in one transaction and a few statements whatever
/// their number: the scheduler's tick of a thousand small campaigns is a few claims, not a
/// thousand. Each job gets what [`claim_calls`] would give it; the results are in the jobs'
/// order (nothing for a campaign no longer in progress).
#[tracing::instrument(name = "store.claim_many", level = "debug", skip_all, fields(campaigns = jobs.len()))]
pub async fn claim_many<D: Dialect>(
    pool: &sqlx::Pool<D>,
    jobs: &[ClaimJob<'_>],
    at: DateTime<Utc>,
) -> Result<Vec<Screened>, StoreError> {
    let nothing = || jobs.iter().map(|_| Screened::default()).collect();
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
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.campaign_id).collect();
    let open = in_progress::<D>(&mut tx, &ids).await?;
    let claimed = claim_zones::<D>(&mut tx, jobs, &open, at).await?;
    if claimed.iter().all(Vec::is_empty) {
        return Ok(nothing());
    }
    let screened = crate::rules::screen::<D>(&mut tx, jobs, claimed, at).await?;
    claim_stats::<D>(&mut tx, jobs, &screened).await?;
    let mut events = Vec::new();
    for (j, s) in jobs.iter().zip(&screened) {
        let skipped: Vec<(ClaimedCall, &str)> = s.skipped.iter().map(|(c, r)| (c.clone(), r.as_str())).collect();
        events.extend(crate::outbox::claimed(j.campaign_id, &s.dial, &skipped, at));
    }
    crate::events::log::append::<D>(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(screened)
}

/// Which of these campaigns are in progress, their rows locked against a change of status
/// until the claim commits (in id order: two claimers lock them alike).
async fn in_progress<D: Dialect>(conn: &mut D::Connection, ids: &[Uuid]) -> Result<HashSet<Uuid>, StoreError> {
    let mut open = HashSet::new();
    for chunk in ids.chunks(CAMPAIGN_CHUNK) {
        let mut q = QueryBuilder::<D>::new("SELECT id FROM campaigns WHERE status = 'in_progress' AND id IN (");
        q.push_list(chunk.iter().copied());
        q.push(") ORDER BY id").push(D::FOR_SHARE);
        for r in q.build().rows(&mut *conn).await? {
            open.insert(r.col("id")?);
        }
    }
    Ok(open)
}

/// The claim proper, zone by zone: in each round every open campaign still short of its `n`
/// asks its next zone for the rest (retries and new calls side by side: half each when both
/// wait), all campaigns in the same few statements.
async fn claim_zones<D: Dialect>(
    conn: &mut D::Connection,
    jobs: &[ClaimJob<'_>],
    open: &HashSet<Uuid>,
    at: DateTime<Utc>,
) -> Result<Vec<Vec<ClaimedCall>>, StoreError> {
    let mut got: Vec<Vec<ClaimedCall>> = jobs.iter().map(|_| Vec::new()).collect();
    let index: HashMap<Uuid, usize> = jobs.iter().enumerate().map(|(i, j)| (j.campaign_id, i)).collect();
    for round in 0.. {
        let asks: Vec<ClaimAsk<'_>> = jobs
            .iter()
            .zip(&got)
            .filter(|(j, g)| open.contains(&j.campaign_id) && g.len() < j.n)
            .filter_map(|(j, g)| {
                let (zone, deadline) = j.zones.get(round)?;
                Some(ClaimAsk { campaign_id: j.campaign_id, zone, limit: j.n - g.len(), deadline: *deadline })
            })
            .collect();
        if asks.is_empty() {
            break;
        }
        claim_zone_round::<D>(conn, &asks, at, &index, &mut got).await?;
    }
    Ok(got)
}

/// One zone per ask: retries up to half the ask, new calls for the rest, then retries again for
/// what new calls did not fill.
async fn claim_zone_round<D: Dialect>(
    conn: &mut D::Connection,
    asks: &[ClaimAsk<'_>],
    at: DateTime<Utc>,
    index: &HashMap<Uuid, usize>,
    got: &mut [Vec<ClaimedCall>],
) -> Result<(), StoreError> {
    let mut taken: HashMap<Uuid, usize> = HashMap::new();
    let steps = [(true, Step::Half), (false, Step::Rest), (true, Step::Rest)];
    for (retries, step) in steps {
        let round: Vec<ClaimAsk<'_>> = asks
            .iter()
            .filter_map(|a| {
                let so_far = taken.get(&a.campaign_id).copied().unwrap_or(0);
                let limit = match step {
                    Step::Half => a.limit.div_ceil(2),
                    Step::Rest => a.limit - so_far,
                };
                (limit > 0).then_some(ClaimAsk { limit, ..*a })
            })
            .collect();
        for (campaign, call) in D::claim_round(conn, retries, &round, at).await? {
            *taken.entry(campaign).or_default() += 1;
            got[index[&campaign]].push(call);
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Step {
    Half,
    Rest,
}

/// A claim's effect on the aggregates, every campaign in one statement: dialled calls pending
/// → queued (attempts counted), skipped ones pending → skipped by reason, held ones stay pending.
async fn claim_stats<D: Dialect>(
    conn: &mut D::Connection,
    jobs: &[ClaimJob<'_>],
    screened: &[Screened],
) -> Result<(), StoreError> {
    use dialer_domain::rules::SkipReason;
    let mut rows: Vec<(Uuid, [i64; 4])> = jobs
        .iter()
        .zip(screened)
        .map(|(j, s)| {
            let retries = s.dial.iter().filter(|c| c.attempt > 1).count() as i64;
            let skipped = |r| s.skipped.iter().filter(|(_, why)| *why == r).count() as i64;
            (j.campaign_id, [s.dial.len() as i64, retries, skipped(SkipReason::Dnc), skipped(SkipReason::NoZone)])
        })
        .filter(|(_, [k, _, dnc, no_zone])| k + dnc + no_zone > 0)
        .collect();
    // Locked in campaign-id order, as the recorder locks them: the update below takes its rows
    // in no set order, and a claim of a group and a recorder's batch share campaigns.
    rows.sort_unstable_by_key(|(id, _)| *id);
    // `VALUES` names its columns column1… in both databases.
    for chunk in rows.chunks(CAMPAIGN_CHUNK) {
        let ids: Vec<Uuid> = chunk.iter().map(|(id, _)| *id).collect();
        crate::stats::lock_stats::<D>(&mut *conn, &ids).await?;
        let mut q = QueryBuilder::<D>::new(
            "UPDATE campaign_stats SET pending_calls = pending_calls - v.column2 - v.column4 - v.column5, \
             queued_calls = queued_calls + v.column2, attempts_total = attempts_total + v.column2, \
             retries_attempted = retries_attempted + v.column3, skipped_calls = skipped_calls + v.column4 + v.column5, \
             skipped_dnc = skipped_dnc + v.column4, skipped_no_zone = skipped_no_zone + v.column5 FROM (",
        );
        q.push_values(chunk, |mut b, (id, [k, retries, dnc, no_zone])| {
            b.push_arg(*id).push_arg(*k).push_arg(*retries).push_arg(*dnc).push_arg(*no_zone);
        });
        q.push(") AS v WHERE campaign_stats.campaign_id = v.column1");
        q.build().run(&mut *conn).await?;
    }
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

/// Calls published again whose message the broker has acknowledged: their claim is confirmed, so
/// [`unconfirmed_claims`] takes them no more (`republish_at` moved to their deadline, past which it
/// takes none). Left queued: the data plane dials them, or the reaper resolves them.
#[tracing::instrument(name = "store.confirm_claims", level = "debug", skip_all)]
pub async fn confirm_claims<D: Dialect>(pool: &sqlx::Pool<D>, calls: &[Uuid]) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    for chunk in calls.chunks(CAMPAIGN_CHUNK) {
        let mut q = QueryBuilder::<D>::new(
            "UPDATE calls SET republish_at = dispatch_deadline WHERE status = 'queued' AND id IN (",
        );
        q.push_list(chunk.iter().copied());
        q.push(")");
        q.build().run(&mut *conn).await?;
    }
    Ok(())
}
