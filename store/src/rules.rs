//! The recipient's calling rules: do-not-call lists, the zones of a campaign's pending
//! calls (a skip scan of the index `calls_pending_zone`, so a claim never reads the calls of closed
//! zones), the screening of claimed calls (do-not-call, zone, attempt limits;
//! [`dialer_domain::rules`] decides), the numbers' recent attempts across campaigns, and the
//! preview.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use dialer_api::dnc::DncView;
use dialer_domain::dnc::{DncEntry, GLOBAL_LIST, list_name};
use dialer_domain::rules::{HoldRule, Rules, SkipReason, Verdict};
use futures::TryStreamExt;
use sqlx::QueryBuilder;
use uuid::Uuid;

use crate::claims::ClaimJob;
use crate::dialect::{Bind, Dialect, PushArg, PushList, QueryExt, RowExt};
use crate::model::{ClaimedCall, Preview, Screened, Suppression};
use crate::{StoreError, now};

/// Numbers per `IN (…)` look-up.
const LOOKUP_CHUNK: usize = 1000;
/// Rows per multi-row INSERT of DNC entries (7 columns, under SQLite's 32,766 parameters).
const DNC_CHUNK: usize = 4000;
/// An import of at least this many entries refreshes the table's statistics (PostgreSQL).
const ANALYZE_AFTER: usize = 10_000;
/// Attempt history read for the limits: a calendar day in any zone lies within 25 hours.
const HISTORY: chrono::TimeDelta = chrono::TimeDelta::hours(25);

/// Adds or replaces entries of a list; `announce`: the scheduler tells the data plane
/// of each at its next tick. Returns how many rows were written.
#[tracing::instrument(name = "store.dnc_add", level = "debug", skip_all)]
pub async fn dnc_add<D: Dialect>(
    pool: &sqlx::Pool<D>,
    list: Uuid,
    entries: &[DncEntry],
    announce: bool,
) -> Result<u64, StoreError> {
    let at = now();
    let mut tx = D::begin(pool).await?;
    if list != GLOBAL_LIST {
        sqlx::query::<D>("SELECT id FROM campaigns WHERE id = $1")
            .arg(list)
            .maybe_row(&mut **tx)
            .await?
            .ok_or(StoreError::NotFound("campaign"))?;
    }
    let mut written = 0;
    for chunk in entries.chunks(DNC_CHUNK) {
        let mut q = QueryBuilder::<D>::new(
            "INSERT INTO dnc_entries (campaign_id, phone_number, reason, source, expires_at, created_at, announced) ",
        );
        q.push_values(chunk, |mut b, e| {
            b.push_arg(list)
                .push_arg(e.phone_number.as_str())
                .push_arg(e.reason.as_deref())
                .push_arg(e.source.as_deref())
                .push_arg(e.expires_at)
                .push_arg(at)
                .push_arg(!announce);
        });
        q.push(
            " ON CONFLICT (campaign_id, phone_number) DO UPDATE SET reason = excluded.reason, \
             source = excluded.source, expires_at = excluded.expires_at, announced = excluded.announced",
        );
        written += q.build().run(&mut **tx).await?;
    }
    tx.commit().await?;
    if D::IS_POSTGRES && entries.len() >= ANALYZE_AFTER {
        // Fresh statistics for the planners of other statements (the preview, the API's
        // look-ups); claims do not depend on them.
        sqlx::query::<D>("ANALYZE dnc_entries").run(&mut *pool.acquire().await?).await?;
    }
    Ok(written)
}

/// Removes a number from a list; `false` when it was not on it.
#[tracing::instrument(name = "store.dnc_remove", level = "debug", skip_all)]
pub async fn dnc_remove<D: Dialect>(pool: &sqlx::Pool<D>, list: Uuid, number: &str) -> Result<bool, StoreError> {
    let mut tx = D::begin(pool).await?;
    let n = sqlx::query::<D>("DELETE FROM dnc_entries WHERE campaign_id = $1 AND phone_number = $2")
        .arg(list)
        .arg(number)
        .run(&mut **tx)
        .await?;
    tx.commit().await?;
    Ok(n > 0)
}

/// A number's entry on a list (expired ones included, with their expiry).
#[tracing::instrument(name = "store.dnc_get", level = "debug", skip_all)]
pub async fn dnc_get<D: Dialect>(
    pool: &sqlx::Pool<D>,
    list: Uuid,
    number: &str,
) -> Result<Option<DncView>, StoreError> {
    let row = sqlx::query::<D>(
        "SELECT phone_number, reason, source, expires_at, created_at FROM dnc_entries \
         WHERE campaign_id = $1 AND phone_number = $2",
    )
    .arg(list)
    .arg(number)
    .maybe_row(&mut *pool.acquire().await?)
    .await?;
    row.map(|r| {
        Ok(DncView {
            list: list_name(list),
            phone_number: r.col("phone_number")?,
            reason: r.col("reason")?,
            source: r.col("source")?,
            expires_at: r.col("expires_at")?,
            created_at: r.col("created_at")?,
        })
    })
    .transpose()
}

/// The list a number is on for a campaign now (the global list first), if any.
#[tracing::instrument(name = "store.dnc_check", level = "debug", skip_all)]
pub async fn dnc_check<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    number: &str,
) -> Result<Option<Uuid>, StoreError> {
    let hits = dnc_hits::<D>(&mut *pool.acquire().await?, &[(campaign_id, number)], now()).await?;
    Ok(hits.list(campaign_id, number))
}

/// The entries in force of the lists that calls' numbers were looked up on.
#[derive(Debug, Default)]
struct DncHits(HashSet<(Uuid, String)>);

impl DncHits {
    /// The list `number` is on for `campaign` (the global list first), if any.
    fn list(&self, campaign: Uuid, number: &str) -> Option<Uuid> {
        let on = |list: Uuid| self.0.contains(&(list, number.to_owned()));
        [GLOBAL_LIST, campaign].into_iter().find(|l| on(*l))
    }
}

/// Looks up each (campaign, number) on the global list and its campaign's, at `at`: one
/// statement per [`LOOKUP_CHUNK`] numbers, whatever their campaigns.
async fn dnc_hits<D: Dialect>(
    conn: &mut D::Connection,
    calls: &[(Uuid, &str)],
    at: DateTime<Utc>,
) -> Result<DncHits, StoreError> {
    let mut hits = DncHits::default();
    for chunk in calls.chunks(LOOKUP_CHUNK) {
        let lists: HashSet<Uuid> = chunk.iter().map(|(c, _)| *c).chain([GLOBAL_LIST]).collect();
        let numbers: HashSet<&str> = chunk.iter().map(|(_, n)| *n).collect();
        let mut q = QueryBuilder::<D>::new("SELECT campaign_id, phone_number FROM dnc_entries WHERE campaign_id IN (");
        q.push_list(lists);
        q.push(") AND phone_number IN (");
        q.push_list(numbers);
        q.push(") AND (expires_at IS NULL OR expires_at > ").push_arg(at).push(")");
        for r in q.build().rows(&mut *conn).await? {
            hits.0.insert((r.col("campaign_id")?, r.col("phone_number")?));
        }
    }
    Ok(hits)
}

/// Each number's attempts (any campaign) since `since`.
async fn recent_attempts<D: Dialect>(
    conn: &mut D::Connection,
    numbers: &[&str],
    since: DateTime<Utc>,
) -> Result<HashMap<String, Vec<DateTime<Utc>>>, StoreError> {
    let mut out: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    for chunk in numbers.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<D>::new("SELECT phone_number, at FROM contact_attempts WHERE phone_number IN (");
        q.push_list(chunk.iter().copied());
        q.push(") AND at > ").push_arg(since);
        for r in q.build().rows(&mut *conn).await? {
            out.entry(r.col("phone_number")?).or_default().push(r.col("at")?);
        }
    }
    Ok(out)
}

/// The distinct zone keys of each campaign's pending calls (in the order given), one index probe
/// each (a skip scan of `calls_pending_zone`: cost in the zones, not the calls), every campaign in
/// one statement. Calls not located yet are left out.
#[tracing::instrument(name = "store.pending_zones", level = "debug", skip_all, fields(campaigns = campaigns.len()))]
pub async fn pending_zones<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaigns: &[Uuid],
) -> Result<Vec<Vec<String>>, StoreError> {
    let mut zones: HashMap<Uuid, Vec<String>> = HashMap::new();
    let mut tx = pool.begin().await?;
    if D::IS_POSTGRES {
        // Stale statistics (a campaign just loaded) made PostgreSQL read all of the
        // campaign's calls through another index and sort them, for each probe.
        sqlx::query::<D>("SET LOCAL enable_sort = off").run(&mut *tx).await?;
    }
    for chunk in campaigns.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<D>::new("WITH RECURSIVE q(cid) AS (");
        q.push_values(chunk, |mut b, id| {
            b.push_arg(*id);
        });
        q.push(
            "), z(cid, zone) AS ( \
               SELECT q.cid, (SELECT zone FROM calls WHERE campaign_id = q.cid AND status = 'pending' AND zone IS NOT NULL \
                       ORDER BY zone LIMIT 1) FROM q \
               UNION ALL \
               SELECT z.cid, (SELECT c.zone FROM calls c WHERE c.campaign_id = z.cid AND c.status = 'pending' AND c.zone > z.zone \
                       ORDER BY c.zone LIMIT 1) \
               FROM z WHERE z.zone IS NOT NULL) \
             SELECT cid, zone FROM z WHERE zone IS NOT NULL",
        );
        for r in q.build().rows(&mut *tx).await? {
            zones.entry(r.col("cid")?).or_default().push(r.col("zone")?);
        }
    }
    tx.commit().await?;
    Ok(campaigns
        .iter()
        .map(|c| {
            let mut z = zones.remove(c).unwrap_or_default();
            z.sort_unstable();
            z
        })
        .collect())
}

/// Locates up to `limit` pending calls that have no zone key yet (created before the
/// calling rules, or by a path that could not see the target's postal code).
#[tracing::instrument(name = "store.locate_unzoned", level = "debug", skip_all)]
pub async fn locate_unzoned<D: Dialect>(pool: &sqlx::Pool<D>, limit: usize) -> Result<u64, StoreError> {
    let rows = sqlx::query::<D>(
        "SELECT campaign_id, id, phone_number, metadata FROM calls WHERE status = 'pending' AND zone IS NULL LIMIT $1",
    )
    .arg(limit as i64)
    .rows(&mut *pool.acquire().await?)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut located = Vec::with_capacity(rows.len());
    for r in &rows {
        let meta: sqlx::types::Json<serde_json::Value> = r.col("metadata")?;
        let phone: String = r.col("phone_number")?;
        located.push((
            r.col::<Uuid>("campaign_id")?,
            r.col::<Uuid>("id")?,
            dialer_domain::recipient::zone_key(&phone, &meta.0),
        ));
    }
    let mut tx = D::begin(pool).await?;
    for chunk in located.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<D>::new("WITH v(cid, id, zone) AS (");
        q.push_values(chunk, |mut b, (cid, id, zone)| {
            b.push_arg(*cid).push_arg(*id).push_arg(zone.as_str());
        });
        q.push(") UPDATE calls SET zone = v.zone FROM v WHERE calls.campaign_id = v.cid AND calls.id = v.id AND calls.zone IS NULL");
        q.build().run(&mut **tx).await?;
    }
    tx.commit().await?;
    Ok(located.len() as u64)
}

/// Decides each claimed call of each job (inside the claim's transaction; `claimed` in the
/// jobs' order): skipped ones become terminal with their reason (and a timeline row), held ones
/// go back to pending with their next attempt moved, and the dialled ones' attempts are recorded
/// per number. The look-ups and the ledger take a statement each for every campaign at once.
pub(crate) async fn screen<D: Dialect>(
    conn: &mut D::Connection,
    jobs: &[ClaimJob<'_>],
    claimed: Vec<Vec<ClaimedCall>>,
    at: DateTime<Utc>,
) -> Result<Vec<Screened>, StoreError> {
    let calls: Vec<(Uuid, &str)> = jobs
        .iter()
        .zip(&claimed)
        .flat_map(|(j, cs)| cs.iter().map(|c| (j.campaign_id, c.phone_number.as_str())))
        .collect();
    let dnc = dnc_hits::<D>(conn, &calls, at).await?;
    let limited: Vec<&str> = jobs
        .iter()
        .zip(&claimed)
        .filter(|(j, _)| j.rules.limits_attempts())
        .flat_map(|(_, cs)| cs.iter().map(|c| c.phone_number.as_str()))
        .collect();
    let counted = !limited.is_empty();
    let mut history = recent_attempts::<D>(conn, &limited, at - HISTORY).await?;
    let mut out = Vec::with_capacity(jobs.len());
    for (j, calls) in jobs.iter().zip(claimed) {
        let mut s = Screened::default();
        for c in calls {
            let attempts = history.get(&c.phone_number).map(Vec::as_slice).unwrap_or(&[]);
            let on_list = dnc.list(j.campaign_id, &c.phone_number).is_some();
            match j.rules.verdict(&c.zone, on_list, attempts, at) {
                Verdict::Dial => {
                    // A campaign later in this claim counts this attempt, as it would in a
                    // claim of its own after this one.
                    if counted {
                        history.entry(c.phone_number.clone()).or_default().push(at);
                    }
                    s.dial.push(c)
                }
                Verdict::Skip(r) => s.skipped.push((c, r)),
                Verdict::Hold { until, rule } => s.held.push((c, until, rule)),
            }
        }
        write_skipped::<D>(conn, j.campaign_id, &s.skipped, at).await?;
        write_held::<D>(conn, j.campaign_id, &s.held, at).await?;
        out.push(s);
    }
    let dialled: Vec<(Uuid, &ClaimedCall)> =
        jobs.iter().zip(&out).flat_map(|(j, s)| s.dial.iter().map(|c| (j.campaign_id, c))).collect();
    D::insert_contacts(conn, &dialled, at).await?;
    Ok(out)
}

async fn write_skipped<D: Dialect>(
    conn: &mut D::Connection,
    campaign_id: Uuid,
    skipped: &[(ClaimedCall, SkipReason)],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    for reason in SkipReason::ALL {
        let ids: Vec<&ClaimedCall> = skipped.iter().filter(|(_, r)| *r == reason).map(|(c, _)| c).collect();
        for chunk in ids.chunks(LOOKUP_CHUNK) {
            let mut q = QueryBuilder::<D>::new(
                "UPDATE calls SET status = 'skipped', attempt_count = attempt_count - 1, \
                queued_at = NULL, next_attempt_at = NULL, last_error = ",
            );
            q.push_arg(reason.as_str()).push(", updated_at = ").push_arg(at);
            q.push(" WHERE campaign_id = ").push_arg(campaign_id).push(" AND id IN (");
            q.push_list(chunk.iter().map(|c| c.id));
            q.push(")");
            q.build().run(&mut *conn).await?;
            let mut t = QueryBuilder::<D>::new(
                "INSERT INTO call_attempts (campaign_id, call_id, attempt, outcome, ended_at, reason, retryable) ",
            );
            t.push_values(chunk, |mut b, c| {
                b.push_arg(campaign_id)
                    .push_arg(c.id)
                    .push_arg(c.attempt as i32)
                    .push_arg("skipped")
                    .push_arg(at)
                    .push_arg(reason.as_str())
                    .push_arg(false);
            });
            t.push(" ON CONFLICT (campaign_id, call_id, attempt) DO NOTHING");
            t.build().run(&mut *conn).await?;
        }
    }
    Ok(())
}

async fn write_held<D: Dialect>(
    conn: &mut D::Connection,
    campaign_id: Uuid,
    held: &[(ClaimedCall, DateTime<Utc>, HoldRule)],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    for chunk in held.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<D>::new("WITH v(cid, id, next_at, rule) AS (");
        q.push_values(chunk, |mut b, (c, until, rule)| {
            b.push_arg(campaign_id).push_arg(c.id).push_arg(*until).push_arg(rule.as_str());
        });
        // The claim's event number is given back too: a held call logged nothing.
        q.push(") UPDATE calls SET status = 'pending', attempt_count = attempt_count - 1, event_seq = event_seq - 1, queued_at = NULL, \
            next_attempt_at = v.next_at, hold = v.rule, updated_at = ");
        q.push_arg(at).push(" FROM v WHERE calls.campaign_id = v.cid AND calls.id = v.id");
        q.build().run(&mut *conn).await?;
    }
    Ok(())
}

/// The recipient's ledger of attempts by multi-row `VALUES` (SQLite's
/// [`Dialect::insert_contacts`]).
pub(crate) async fn insert_contacts_listed<D: Dialect>(
    conn: &mut D::Connection,
    dial: &[(Uuid, &ClaimedCall)],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    for chunk in dial.chunks(LOOKUP_CHUNK) {
        let mut q =
            QueryBuilder::<D>::new("INSERT INTO contact_attempts (phone_number, call_id, attempt, campaign_id, at) ");
        q.push_values(chunk, |mut b, (campaign_id, c)| {
            b.push_arg(c.phone_number.as_str())
                .push_arg(c.id)
                .push_arg(c.attempt as i32)
                .push_arg(*campaign_id)
                .push_arg(at);
        });
        q.push(" ON CONFLICT (phone_number, call_id, attempt) DO NOTHING");
        q.build().run(&mut *conn).await?;
    }
    Ok(())
}

/// Forgets up to `limit` attempts older than any limit can look back (bounded: one
/// statement never holds the store for a whole backlog). The oldest rows are found in
/// the index on `at` and deleted by their physical id, so neither a join nor stale
/// statistics can turn it into a scan of the table.
#[tracing::instrument(name = "store.prune_attempts", level = "debug", skip_all)]
pub async fn prune_attempts<D: Dialect>(
    pool: &sqlx::Pool<D>,
    at: DateTime<Utc>,
    limit: usize,
) -> Result<u64, StoreError> {
    let mut tx = D::begin(pool).await?;
    let sql = if D::IS_POSTGRES {
        sqlx::query::<D>("SET LOCAL enable_sort = off").run(&mut **tx).await?;
        sqlx::query::<D>("SET LOCAL enable_seqscan = off").run(&mut **tx).await?;
        "DELETE FROM contact_attempts WHERE ctid = ANY (ARRAY(SELECT ctid FROM contact_attempts WHERE at < $1 ORDER BY at LIMIT $2))"
    } else {
        "DELETE FROM contact_attempts WHERE rowid IN (SELECT rowid FROM contact_attempts WHERE at < $1 ORDER BY at LIMIT $2)"
    };
    let n = sqlx::query::<D>(sql).arg(at - HISTORY).arg(limit as i64).run(&mut **tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// Entries the data plane has not been told of yet, oldest first.
#[tracing::instrument(name = "store.unannounced", level = "debug", skip_all)]
pub async fn unannounced<D: Dialect>(pool: &sqlx::Pool<D>, limit: usize) -> Result<Vec<Suppression>, StoreError> {
    let rows = sqlx::query::<D>(
        "SELECT campaign_id, phone_number, expires_at FROM dnc_entries WHERE announced = false ORDER BY created_at LIMIT $1",
    )
    .arg(limit as i64)
    .rows(&mut *pool.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Suppression {
                list: r.col("campaign_id")?,
                phone_number: r.col("phone_number")?,
                expires_at: r.col("expires_at")?,
            })
        })
        .collect()
}

/// Marks entries told to the data plane.
#[tracing::instrument(name = "store.mark_announced", level = "debug", skip_all)]
pub async fn mark_announced<D: Dialect>(pool: &sqlx::Pool<D>, done: &[Suppression]) -> Result<(), StoreError> {
    let mut tx = D::begin(pool).await?;
    for chunk in done.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<D>::new("WITH v(cid, phone) AS (");
        q.push_values(chunk, |mut b, s| {
            b.push_arg(s.list).push_arg(s.phone_number.as_str());
        });
        q.push(") UPDATE dnc_entries SET announced = true FROM v WHERE dnc_entries.campaign_id = v.cid AND dnc_entries.phone_number = v.phone");
        q.build().run(&mut **tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What the rules would do now to each of a campaign's pending calls (a scan of them:
/// an operator's question before start, not a hot path).
#[tracing::instrument(name = "store.preview", level = "debug", skip_all)]
pub async fn preview<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    rules: &Rules,
    at: DateTime<Utc>,
) -> Result<Preview, StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query::<D>("SELECT id FROM campaigns WHERE id = $1")
        .arg(campaign_id)
        .maybe_row(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("campaign"))?;
    let calls: Vec<(String, Option<String>, bool)> = {
        let mut rows = sqlx::query::<D>(
            "SELECT c.phone_number, c.zone, EXISTS (SELECT 1 FROM dnc_entries d WHERE d.campaign_id IN ($2, $1) \
             AND d.phone_number = c.phone_number AND (d.expires_at IS NULL OR d.expires_at > $3)) AS dnc \
             FROM calls c WHERE c.campaign_id = $1 AND c.status = 'pending'",
        )
        .arg(campaign_id)
        .arg(GLOBAL_LIST)
        .arg(at)
        .stream(&mut *conn);
        let mut out = Vec::new();
        while let Some(r) = rows.try_next().await? {
            out.push((r.col("phone_number")?, r.col("zone")?, r.col("dnc")?));
        }
        out
    };
    let history = if rules.limits_attempts() {
        let numbers: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
        recent_attempts::<D>(&mut conn, &numbers, at - HISTORY).await?
    } else {
        HashMap::new()
    };
    let mut p = Preview { campaign_id, at, ..Preview::default() };
    let mut zones: HashSet<String> = HashSet::new();
    for (phone, zone, dnc) in &calls {
        let zone = zone.clone().unwrap_or_else(|| dialer_domain::recipient::zone_key(phone, &serde_json::Value::Null));
        let attempts = history.get(phone).map(Vec::as_slice).unwrap_or(&[]);
        p.count(rules.verdict(&zone, *dnc, attempts, at));
        zones.insert(zone);
    }
    p.zones = zones.len() as u64;
    Ok(p)
}
