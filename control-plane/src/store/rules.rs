//! The SQL of the recipient's calling rules (issue 19), written once and expanded for each
//! backend by `rules_store!`: do-not-call lists, the zones of a campaign's pending calls (a skip
//! scan of the index `calls_pending_zone`, so a claim never reads the calls of closed zones), the
//! screening of claimed calls (do-not-call, zone, attempt limits; [`dialer_domain::rules`]
//! decides), the numbers' recent attempts across campaigns, and the preview.

/// Numbers per `IN (…)` look-up.
const LOOKUP_CHUNK: usize = 1000;
/// Rows per multi-row INSERT of DNC entries (7 columns, under SQLite's 32,766 parameters).
const DNC_CHUNK: usize = 4000;
/// An import of at least this many entries refreshes the table's statistics (PostgreSQL).
const ANALYZE_AFTER: usize = 10_000;
/// Attempt history read for the limits: a calendar day in any zone lies within 25 hours.
const HISTORY: chrono::TimeDelta = chrono::TimeDelta::hours(25);

macro_rules! rules_store {
    ($module:ident, $db:ty, $sql:ident, pg = $pg:literal) => {
        pub(crate) mod $module {
            use std::collections::{HashMap, HashSet};

            use chrono::{DateTime, Utc};
            use dialer_domain::dnc::{list_name, DncEntry, DncView, GLOBAL_LIST};
            use dialer_domain::rules::{HoldRule, Rules, SkipReason, Verdict};
            use futures::TryStreamExt;
            use sqlx::{QueryBuilder, Row};
            use uuid::Uuid;

            use super::{ANALYZE_AFTER, DNC_CHUNK, HISTORY, LOOKUP_CHUNK};
            use crate::store::sql::$sql::begin;
            use crate::store::sql::now;
            use crate::store::{ClaimedCall, Preview, Screened, StoreError, Suppression};

            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type Conn = <Db as sqlx::Database>::Connection;

            /// Adds or replaces entries of a list; `announce`: the scheduler tells the data plane
            /// of each at its next tick. Returns how many rows were written.
            pub async fn dnc_add(pool: &Pool, list: Uuid, entries: &[DncEntry], announce: bool) -> Result<u64, StoreError> {
                let at = now();
                let mut tx = begin(pool).await?;
                if list != GLOBAL_LIST {
                    sqlx::query("SELECT id FROM campaigns WHERE id = $1")
                        .bind(list)
                        .fetch_optional(&mut **tx)
                        .await?
                        .ok_or(StoreError::NotFound("campaign"))?;
                }
                let mut written = 0;
                for chunk in entries.chunks(DNC_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new(
                        "INSERT INTO dnc_entries (campaign_id, phone_number, reason, source, expires_at, created_at, announced) ",
                    );
                    q.push_values(chunk, |mut b, e| {
                        b.push_bind(list)
                            .push_bind(e.phone_number.as_str())
                            .push_bind(e.reason.as_deref())
                            .push_bind(e.source.as_deref())
                            .push_bind(e.expires_at)
                            .push_bind(at)
                            .push_bind(!announce);
                    });
                    q.push(
                        " ON CONFLICT (campaign_id, phone_number) DO UPDATE SET reason = excluded.reason, \
                         source = excluded.source, expires_at = excluded.expires_at, announced = excluded.announced",
                    );
                    written += q.build().execute(&mut **tx).await?.rows_affected();
                }
                tx.commit().await?;
                if $pg && entries.len() >= ANALYZE_AFTER {
                    // Fresh statistics for the planners of other statements (the preview, the API's
                    // look-ups); claims do not depend on them.
                    sqlx::query("ANALYZE dnc_entries").execute(pool).await?;
                }
                Ok(written)
            }

            /// Removes a number from a list; `false` when it was not on it.
            pub async fn dnc_remove(pool: &Pool, list: Uuid, number: &str) -> Result<bool, StoreError> {
                let mut tx = begin(pool).await?;
                let n = sqlx::query("DELETE FROM dnc_entries WHERE campaign_id = $1 AND phone_number = $2")
                    .bind(list)
                    .bind(number)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(n > 0)
            }

            /// A number's entry on a list (expired ones included, with their expiry).
            pub async fn dnc_get(pool: &Pool, list: Uuid, number: &str) -> Result<Option<DncView>, StoreError> {
                let row = sqlx::query(
                    "SELECT phone_number, reason, source, expires_at, created_at FROM dnc_entries \
                     WHERE campaign_id = $1 AND phone_number = $2",
                )
                .bind(list)
                .bind(number)
                .fetch_optional(pool)
                .await?;
                row.map(|r| {
                    Ok(DncView {
                        list: list_name(list),
                        phone_number: r.try_get("phone_number")?,
                        reason: r.try_get("reason")?,
                        source: r.try_get("source")?,
                        expires_at: r.try_get("expires_at")?,
                        created_at: r.try_get("created_at")?,
                    })
                })
                .transpose()
            }

            /// The list a number is on for a campaign now (the global list first), if any.
            pub async fn dnc_check(pool: &Pool, campaign_id: Uuid, number: &str) -> Result<Option<Uuid>, StoreError> {
                let hits = dnc_hits(&mut *pool.acquire().await?, campaign_id, &[number], now()).await?;
                Ok(hits.get(number).copied())
            }

            /// Which of `numbers` are on the global or the campaign's list at `at`, and which list.
            async fn dnc_hits(
                conn: &mut Conn,
                campaign_id: Uuid,
                numbers: &[&str],
                at: DateTime<Utc>,
            ) -> Result<HashMap<String, Uuid>, StoreError> {
                let mut hits = HashMap::new();
                for chunk in numbers.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("SELECT campaign_id, phone_number FROM dnc_entries WHERE campaign_id IN (");
                    q.push_bind(GLOBAL_LIST).push(", ").push_bind(campaign_id).push(") AND phone_number IN (");
                    let mut sep = q.separated(", ");
                    for n in chunk {
                        sep.push_bind(*n);
                    }
                    q.push(") AND (expires_at IS NULL OR expires_at > ").push_bind(at).push(")");
                    for r in q.build().fetch_all(&mut *conn).await? {
                        let list: Uuid = r.try_get("campaign_id")?;
                        let slot = hits.entry(r.try_get("phone_number")?).or_insert(list);
                        if list == GLOBAL_LIST {
                            *slot = list;
                        }
                    }
                }
                Ok(hits)
            }

            /// Each number's attempts (any campaign) since `since`.
            async fn recent_attempts(
                conn: &mut Conn,
                numbers: &[&str],
                since: DateTime<Utc>,
            ) -> Result<HashMap<String, Vec<DateTime<Utc>>>, StoreError> {
                let mut out: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
                for chunk in numbers.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("SELECT phone_number, at FROM contact_attempts WHERE phone_number IN (");
                    let mut sep = q.separated(", ");
                    for n in chunk {
                        sep.push_bind(*n);
                    }
                    q.push(") AND at > ").push_bind(since);
                    for r in q.build().fetch_all(&mut *conn).await? {
                        out.entry(r.try_get("phone_number")?).or_default().push(r.try_get("at")?);
                    }
                }
                Ok(out)
            }

            /// The distinct zone keys of a campaign's pending calls, one index probe each (a
            /// skip scan of `calls_pending_zone`: cost in the zones, not the calls). Calls not
            /// located yet are left out.
            pub async fn pending_zones(pool: &Pool, campaign_id: Uuid) -> Result<Vec<String>, StoreError> {
                let mut tx = pool.begin().await?;
                if $pg {
                    // Stale statistics (a campaign just loaded) made PostgreSQL read all of the
                    // campaign's calls through another index and sort them, for each probe.
                    sqlx::query("SET LOCAL enable_sort = off").execute(&mut *tx).await?;
                }
                let zones: Vec<Option<String>> = sqlx::query_scalar(
                    "WITH RECURSIVE z(zone) AS ( \
                       SELECT (SELECT zone FROM calls WHERE campaign_id = $1 AND status = 'pending' AND zone IS NOT NULL \
                               ORDER BY zone LIMIT 1) \
                       UNION ALL \
                       SELECT (SELECT c.zone FROM calls c WHERE c.campaign_id = $1 AND c.status = 'pending' AND c.zone > z.zone \
                               ORDER BY c.zone LIMIT 1) \
                       FROM z WHERE z.zone IS NOT NULL) \
                     SELECT zone FROM z WHERE zone IS NOT NULL",
                )
                .bind(campaign_id)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(zones.into_iter().flatten().collect())
            }

            /// Locates up to `limit` pending calls that have no zone key yet (created before the
            /// calling rules, or by a path that could not see the target's postal code).
            pub async fn locate_unzoned(pool: &Pool, limit: usize) -> Result<u64, StoreError> {
                let rows = sqlx::query(
                    "SELECT campaign_id, id, phone_number, metadata FROM calls WHERE status = 'pending' AND zone IS NULL LIMIT $1",
                )
                .bind(limit as i64)
                .fetch_all(pool)
                .await?;
                if rows.is_empty() {
                    return Ok(0);
                }
                let mut located = Vec::with_capacity(rows.len());
                for r in &rows {
                    let meta: sqlx::types::Json<serde_json::Value> = r.try_get("metadata")?;
                    let phone: String = r.try_get("phone_number")?;
                    located.push((r.try_get::<Uuid, _>("campaign_id")?, r.try_get::<Uuid, _>("id")?, dialer_domain::recipient::zone_key(&phone, &meta.0)));
                }
                let mut tx = begin(pool).await?;
                for chunk in located.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("WITH v(cid, id, zone) AS (");
                    q.push_values(chunk, |mut b, (cid, id, zone)| {
                        b.push_bind(*cid).push_bind(*id).push_bind(zone.as_str());
                    });
                    q.push(") UPDATE calls SET zone = v.zone FROM v WHERE calls.campaign_id = v.cid AND calls.id = v.id AND calls.zone IS NULL");
                    q.build().execute(&mut **tx).await?;
                }
                tx.commit().await?;
                Ok(located.len() as u64)
            }

            /// Decides each claimed call (inside the claim's transaction): skipped ones become
            /// terminal with their reason (and a timeline row), held ones go back to pending with
            /// their next attempt moved, and the dialled ones' attempts are recorded per number.
            pub async fn screen(
                conn: &mut Conn,
                campaign_id: Uuid,
                claimed: Vec<ClaimedCall>,
                rules: &Rules,
                at: DateTime<Utc>,
            ) -> Result<Screened, StoreError> {
                let numbers: Vec<&str> = claimed.iter().map(|c| c.phone_number.as_str()).collect();
                let dnc = dnc_hits(conn, campaign_id, &numbers, at).await?;
                let history = if rules.limits_attempts() { recent_attempts(conn, &numbers, at - HISTORY).await? } else { HashMap::new() };
                let mut s = Screened::default();
                for c in claimed {
                    let attempts = history.get(&c.phone_number).map(Vec::as_slice).unwrap_or(&[]);
                    match rules.verdict(&c.zone, dnc.contains_key(&c.phone_number), attempts, at) {
                        Verdict::Dial => s.dial.push(c),
                        Verdict::Skip(r) => s.skipped.push((c, r)),
                        Verdict::Hold { until, rule } => s.held.push((c, until, rule)),
                    }
                }
                write_skipped(conn, campaign_id, &s.skipped, at).await?;
                write_held(conn, campaign_id, &s.held, at).await?;
                write_attempts(conn, campaign_id, &s.dial, at).await?;
                Ok(s)
            }

            async fn write_skipped(conn: &mut Conn, campaign_id: Uuid, skipped: &[(ClaimedCall, SkipReason)], at: DateTime<Utc>) -> Result<(), StoreError> {
                for reason in SkipReason::ALL {
                    let ids: Vec<&ClaimedCall> = skipped.iter().filter(|(_, r)| *r == reason).map(|(c, _)| c).collect();
                    for chunk in ids.chunks(LOOKUP_CHUNK) {
                        let mut q = QueryBuilder::<Db>::new("UPDATE calls SET status = 'skipped', attempt_count = attempt_count - 1, \
                            queued_at = NULL, next_attempt_at = NULL, last_error = ");
                        q.push_bind(reason.as_str()).push(", updated_at = ").push_bind(at);
                        q.push(" WHERE campaign_id = ").push_bind(campaign_id).push(" AND id IN (");
                        let mut sep = q.separated(", ");
                        for c in chunk {
                            sep.push_bind(c.id);
                        }
                        q.push(")");
                        q.build().execute(&mut *conn).await?;
                        let mut t = QueryBuilder::<Db>::new("INSERT INTO call_attempts (campaign_id, call_id, attempt, outcome, ended_at, reason, retryable) ");
                        t.push_values(chunk, |mut b, c| {
                            b.push_bind(campaign_id).push_bind(c.id).push_bind(c.attempt as i32).push_bind("skipped")
                                .push_bind(at).push_bind(reason.as_str()).push_bind(false);
                        });
                        t.push(" ON CONFLICT (campaign_id, call_id, attempt) DO NOTHING");
                        t.build().execute(&mut *conn).await?;
                    }
                }
                Ok(())
            }

            async fn write_held(conn: &mut Conn, campaign_id: Uuid, held: &[(ClaimedCall, DateTime<Utc>, HoldRule)], at: DateTime<Utc>) -> Result<(), StoreError> {
                for chunk in held.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("WITH v(cid, id, next_at) AS (");
                    q.push_values(chunk, |mut b, (c, until, _)| {
                        b.push_bind(campaign_id).push_bind(c.id).push_bind(*until);
                    });
                    // The claim's event number is given back too: a held call logged nothing.
                    q.push(") UPDATE calls SET status = 'pending', attempt_count = attempt_count - 1, event_seq = event_seq - 1, queued_at = NULL, \
                        next_attempt_at = v.next_at, updated_at = ");
                    q.push_bind(at).push(" FROM v WHERE calls.campaign_id = v.cid AND calls.id = v.id");
                    q.build().execute(&mut *conn).await?;
                }
                Ok(())
            }

            async fn write_attempts(conn: &mut Conn, campaign_id: Uuid, dial: &[ClaimedCall], at: DateTime<Utc>) -> Result<(), StoreError> {
                for chunk in dial.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("INSERT INTO contact_attempts (phone_number, call_id, attempt, campaign_id, at) ");
                    q.push_values(chunk, |mut b, c| {
                        b.push_bind(c.phone_number.as_str()).push_bind(c.id).push_bind(c.attempt as i32).push_bind(campaign_id).push_bind(at);
                    });
                    q.push(" ON CONFLICT (phone_number, call_id, attempt) DO NOTHING");
                    q.build().execute(&mut *conn).await?;
                }
                Ok(())
            }

            /// Forgets up to `limit` attempts older than any limit can look back (bounded: one
            /// statement never holds the store for a whole backlog). The oldest rows are found in
            /// the index on `at` and deleted by their physical id, so neither a join nor stale
            /// statistics can turn it into a scan of the table.
            pub async fn prune_attempts(pool: &Pool, at: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
                let mut tx = begin(pool).await?;
                let sql = if $pg {
                    sqlx::query("SET LOCAL enable_sort = off").execute(&mut **tx).await?;
                    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut **tx).await?;
                    "DELETE FROM contact_attempts WHERE ctid = ANY (ARRAY(SELECT ctid FROM contact_attempts WHERE at < $1 ORDER BY at LIMIT $2))"
                } else {
                    "DELETE FROM contact_attempts WHERE rowid IN (SELECT rowid FROM contact_attempts WHERE at < $1 ORDER BY at LIMIT $2)"
                };
                let n = sqlx::query(sql).bind(at - HISTORY).bind(limit as i64).execute(&mut **tx).await?.rows_affected();
                tx.commit().await?;
                Ok(n)
            }

            /// Entries the data plane has not been told of yet, oldest first.
            pub async fn unannounced(pool: &Pool, limit: usize) -> Result<Vec<Suppression>, StoreError> {
                let rows = sqlx::query(
                    "SELECT campaign_id, phone_number, expires_at FROM dnc_entries WHERE announced = false ORDER BY created_at LIMIT $1",
                )
                .bind(limit as i64)
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| Ok(Suppression { list: r.try_get("campaign_id")?, phone_number: r.try_get("phone_number")?, expires_at: r.try_get("expires_at")? }))
                    .collect()
            }

            /// Marks entries told to the data plane.
            pub async fn mark_announced(pool: &Pool, done: &[Suppression]) -> Result<(), StoreError> {
                let mut tx = begin(pool).await?;
                for chunk in done.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("WITH v(cid, phone) AS (");
                    q.push_values(chunk, |mut b, s| {
                        b.push_bind(s.list).push_bind(s.phone_number.as_str());
                    });
                    q.push(") UPDATE dnc_entries SET announced = true FROM v WHERE dnc_entries.campaign_id = v.cid AND dnc_entries.phone_number = v.phone");
                    q.build().execute(&mut **tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            /// What the rules would do now to each of a campaign's pending calls (a scan of them:
            /// an operator's question before start, not a hot path).
            pub async fn preview(pool: &Pool, campaign_id: Uuid, rules: &Rules, at: DateTime<Utc>) -> Result<Preview, StoreError> {
                let mut conn = pool.acquire().await?;
                sqlx::query("SELECT id FROM campaigns WHERE id = $1").bind(campaign_id).fetch_optional(&mut *conn).await?
                    .ok_or(StoreError::NotFound("campaign"))?;
                let calls: Vec<(String, Option<String>, bool)> = {
                    let mut rows = sqlx::query(
                        "SELECT c.phone_number, c.zone, EXISTS (SELECT 1 FROM dnc_entries d WHERE d.campaign_id IN ($2, $1) \
                         AND d.phone_number = c.phone_number AND (d.expires_at IS NULL OR d.expires_at > $3)) AS dnc \
                         FROM calls c WHERE c.campaign_id = $1 AND c.status = 'pending'",
                    )
                    .bind(campaign_id)
                    .bind(GLOBAL_LIST)
                    .bind(at)
                    .fetch(&mut *conn);
                    let mut out = Vec::new();
                    while let Some(r) = rows.try_next().await? {
                        out.push((r.try_get("phone_number")?, r.try_get("zone")?, r.try_get("dnc")?));
                    }
                    out
                };
                let history = if rules.limits_attempts() {
                    let numbers: Vec<&str> = calls.iter().map(|c| c.0.as_str()).collect();
                    recent_attempts(&mut conn, &numbers, at - HISTORY).await?
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
        }
    };
}

rules_store!(pg, sqlx::Postgres, pg, pg = true);
rules_store!(lite, sqlx::Sqlite, lite, pg = false);
