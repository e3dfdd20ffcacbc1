//! The SQL of the store, written once and expanded for each backend by `sql_store!`.

/// Rows per multi-row INSERT: under both backends' bind-parameter limits (PostgreSQL 65535,
/// SQLite 32766) with up to 10 columns.
const CHUNK_ROWS: usize = 2000;
/// Numbers per `IN (…)` look-up.
const LOOKUP_CHUNK: usize = 1000;

const CAMPAIGN_COLUMNS: &str = "id, name, description, time_zone, max_concurrent_calls, weight, retry_max_attempts, \
     retry_base_delay_ms, retry_max_delay_ms, retry_jitter, status, target_count, created_at, updated_at, \
     started_at, completed_at, retry_on, telephony, calling_rules";
const CALL_COLUMNS: &str = "id, campaign_id, phone_number, metadata, status, attempt_count, next_attempt_at, last_error, created_at, updated_at";
/// `last_error` of calls cancelled because their campaign was completed.
use crate::store::record::CANCELLED;

/// The distinct ids, sorted (rows are locked in id order: no deadlock between writers).
fn sorted_unique(ids: impl Iterator<Item = uuid::Uuid>) -> Vec<uuid::Uuid> {
    let mut v: Vec<uuid::Uuid> = ids.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// An attempt's timeline row from the event that says most about it.
fn timeline_row(
    campaign_id: uuid::Uuid,
    e: &dialer_domain::messages::StatusEvent,
    outcome: &str,
) -> crate::timeline::TimelineRow {
    use dialer_domain::messages::EventKind;
    crate::timeline::TimelineRow {
        campaign_id,
        call_id: e.call_id,
        attempt: e.attempt,
        outcome: outcome.to_string(),
        started_at_ms: e.started_at_ms.or((e.kind == EventKind::Started).then_some(e.at_ms)),
        answered_at_ms: e.answered_at_ms,
        ended_at_ms: (e.kind != EventKind::Started).then_some(e.at_ms),
        duration_ms: e.duration_ms,
        reason: e.reason.clone(),
        retryable: e.retryable,
        sip_code: e.sip.as_ref().and_then(|s| s.code),
        sip_reason: e.sip.as_ref().map(|s| s.phrase.clone()),
    }
}
const LIVE_CALL_CONFLICT: &str =
    "ON CONFLICT (campaign_id, phone_number) WHERE status IN ('pending', 'queued', 'in_progress') DO NOTHING";

pub(crate) fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    // Both backends keep microseconds; answer with what a later read returns.
    chrono::Utc::now().trunc_subsecs(6)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// PostgreSQL locks rows: its writers need no gate.
async fn no_gate(_: &sqlx::PgPool) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    None
}

/// SQLite has one writer at a time, and a writer that finds the database locked polls it with
/// sleeps of up to 100 ms (its busy handler). Under load the scheduler's claims, polling while
/// the recorder's batches held the lock, took a second per tick. So this process's writers of
/// one database file queue on an async mutex instead (FIFO, woken at once); the file's lock
/// still guards against other processes.
async fn write_gate(pool: &sqlx::SqlitePool) -> Option<tokio::sync::OwnedMutexGuard<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    static GATES: LazyLock<Mutex<HashMap<std::path::PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let file = pool.connect_options().get_filename().to_path_buf();
    let gate = GATES.lock().unwrap_or_else(|p| p.into_inner()).entry(file).or_default().clone();
    Some(gate.lock_owned().await)
}

macro_rules! sql_store {
    (
        $module:ident,
        $db:ty,
        begin = $begin:literal,
        gate = $gate:path,
        skip_locked = $skip_locked:literal,
        claim_in = $claim_in:expr,
        for_share = $for_share:literal,
        for_update = $for_update:literal,
        writing_ctes = $writing_ctes:literal,
        row_locks = $row_locks:literal
    ) => {
        pub(crate) mod $module {
            use std::collections::HashMap;
            use std::time::Duration;

            use chrono::{DateTime, Utc};
            use dialer_domain::campaign::{CallStatus, CampaignAction, CampaignStatus};
            use dialer_domain::hours::Window;
            use dialer_domain::retry::RetryPolicy;
            use dialer_domain::validate::{
                Call, CallAttempt, CallDetail, Campaign, CampaignSettings, CampaignStats, FieldError, NewCampaign,
                QueueTargetsResponse, Timestamps, UpdateCampaignRequest,
            };
            use serde_json::{json, Value};
            use sqlx::types::Json;
            use sqlx::{QueryBuilder, Row};
            use uuid::Uuid;

            use super::{
                is_unique_violation, now, sorted_unique, timeline_row, CALL_COLUMNS, CAMPAIGN_COLUMNS, CANCELLED, CHUNK_ROWS, LIVE_CALL_CONFLICT,
                LOOKUP_CHUNK,
            };
            use crate::store::{ActiveCampaign, CallAnswer, CallQuery, ClaimedCall, LiveCall, NewCall, RecordReport, Screened, StoreError};
            use dialer_domain::lifecycle::{self, CallState};
            use crate::store::record::{Delta, Known, TimelineEntry};
            use dialer_domain::messages::StatusEvent;

            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type Conn = <Db as sqlx::Database>::Connection;
            type DbRow = <Db as sqlx::Database>::Row;

            /// A write transaction, begun once this process's other writers of the database are
            /// done ([`super::write_gate`]).
            pub(crate) struct Tx {
                inner: sqlx::Transaction<'static, Db>,
                _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
            }

            impl std::ops::Deref for Tx {
                type Target = sqlx::Transaction<'static, Db>;
                fn deref(&self) -> &Self::Target {
                    &self.inner
                }
            }

            impl std::ops::DerefMut for Tx {
                fn deref_mut(&mut self) -> &mut Self::Target {
                    &mut self.inner
                }
            }

            impl Tx {
                pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
                    self.inner.commit().await
                }
            }

            pub(crate) async fn begin(pool: &Pool) -> Result<Tx, StoreError> {
                let gate = $gate(pool).await;
                Ok(Tx { inner: pool.begin_with($begin).await?, _gate: gate })
            }

            fn ms(d: Duration) -> i64 {
                i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
            }

            fn settings_from_row(row: &DbRow, hours: Vec<Window>) -> Result<CampaignSettings, StoreError> {
                Ok(CampaignSettings {
                    name: row.try_get("name")?,
                    description: row.try_get("description")?,
                    time_zone: row.try_get("time_zone")?,
                    max_concurrent_calls: row.try_get::<i32, _>("max_concurrent_calls")? as u32,
                    weight: row.try_get::<i32, _>("weight")? as u32,
                    retry_policy: RetryPolicy {
                        max_attempts: row.try_get::<i32, _>("retry_max_attempts")? as u32,
                        base_delay: Duration::from_millis(row.try_get::<i64, _>("retry_base_delay_ms")? as u64),
                        max_delay: Duration::from_millis(row.try_get::<i64, _>("retry_max_delay_ms")? as u64),
                        jitter: row.try_get("retry_jitter")?,
                        retry_on: dialer_domain::outcome::OutcomeSet::from_csv(&row.try_get::<String, _>("retry_on")?),
                    },
                    business_hours: hours,
                    telephony: telephony_from(row.try_get("telephony")?)?,
                    calling_rules: rules_from(row.try_get("calling_rules")?)?,
                })
            }

            fn rules_json(r: &Option<dialer_domain::rules::CallingRules>) -> Option<String> {
                r.as_ref().map(|r| serde_json::to_string(r).unwrap_or_default())
            }

            fn rules_from(json: Option<String>) -> Result<Option<dialer_domain::rules::CallingRules>, StoreError> {
                json.map(|j| serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(format!("campaign calling_rules {j:?}: {e}"))))
                    .transpose()
            }

            /// NULL for the provider's settings, else the JSON of the campaign's own.
            fn telephony_json(t: &dialer_domain::validate::Telephony) -> Option<String> {
                (!t.is_empty()).then(|| serde_json::to_string(t).unwrap_or_default())
            }

            fn telephony_from(json: Option<String>) -> Result<dialer_domain::validate::Telephony, StoreError> {
                json.map_or(Ok(Default::default()), |j| {
                    serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(format!("campaign telephony {j:?}: {e}")))
                })
            }

            fn campaign_status(row: &DbRow) -> Result<CampaignStatus, StoreError> {
                let s: String = row.try_get("status")?;
                CampaignStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("campaign status {s:?}")))
            }

            fn campaign_from_row(row: &DbRow, hours: Vec<Window>) -> Result<Campaign, StoreError> {
                let settings = settings_from_row(row, hours)?;
                Ok(Campaign::new(
                    row.try_get("id")?,
                    &settings,
                    campaign_status(row)?,
                    row.try_get("target_count")?,
                    Timestamps {
                        created_at: row.try_get("created_at")?,
                        updated_at: row.try_get("updated_at")?,
                        started_at: row.try_get("started_at")?,
                        completed_at: row.try_get("completed_at")?,
                    },
                ))
            }

            fn call_from_row(row: &DbRow) -> Result<Call, StoreError> {
                let s: String = row.try_get("status")?;
                Ok(Call {
                    id: row.try_get("id")?,
                    campaign_id: row.try_get("campaign_id")?,
                    phone_number: row.try_get("phone_number")?,
                    metadata: row.try_get::<Json<Value>, _>("metadata")?.0,
                    status: CallStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("call status {s:?}")))?,
                    attempt_count: row.try_get::<i32, _>("attempt_count")? as u32,
                    next_attempt_at: row.try_get("next_attempt_at")?,
                    last_error: row.try_get("last_error")?,
                    created_at: row.try_get("created_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }

            /// Business hours of several campaigns, in position order.
            async fn load_hours(conn: &mut Conn, ids: &[Uuid]) -> Result<HashMap<Uuid, Vec<Window>>, StoreError> {
                let mut out: HashMap<Uuid, Vec<Window>> = HashMap::new();
                if ids.is_empty() {
                    return Ok(out);
                }
                let mut q = QueryBuilder::<Db>::new(
                    "SELECT campaign_id, day_of_week, start_minute, end_minute FROM campaign_business_hours WHERE campaign_id IN (",
                );
                let mut sep = q.separated(", ");
                for id in ids {
                    sep.push_bind(*id);
                }
                q.push(") ORDER BY campaign_id, position");
                for row in q.build().fetch_all(&mut *conn).await? {
                    out.entry(row.try_get("campaign_id")?).or_default().push(Window {
                        day_of_week: row.try_get::<i32, _>("day_of_week")? as u8,
                        start: row.try_get::<i32, _>("start_minute")? as u16,
                        end: row.try_get::<i32, _>("end_minute")? as u16,
                    });
                }
                Ok(out)
            }

            async fn insert_hours(conn: &mut Conn, id: Uuid, hours: &[Window]) -> Result<(), StoreError> {
                if hours.is_empty() {
                    return Ok(());
                }
                let mut q = QueryBuilder::<Db>::new(
                    "INSERT INTO campaign_business_hours (campaign_id, position, day_of_week, start_minute, end_minute) ",
                );
                q.push_values(hours.iter().enumerate(), |mut b, (i, w)| {
                    b.push_bind(id)
                        .push_bind(i as i32)
                        .push_bind(i32::from(w.day_of_week))
                        .push_bind(i32::from(w.start))
                        .push_bind(i32::from(w.end));
                });
                q.build().execute(&mut *conn).await?;
                Ok(())
            }

            async fn insert_event(conn: &mut Conn, id: Uuid, kind: &str, detail: Value, at: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query("INSERT INTO campaign_events (campaign_id, kind, detail, at) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(kind)
                    .bind(Json(detail))
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            }

            /// Inserts pending calls; returns how many were created (live duplicates are skipped).
            async fn insert_pending_calls<'a>(
                conn: &mut Conn,
                campaign_id: Uuid,
                rows: &[(&'a str, &'a Value)],
                at: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                let mut created = 0;
                for chunk in rows.chunks(CHUNK_ROWS) {
                    let mut q = QueryBuilder::<Db>::new(
                        "INSERT INTO calls (campaign_id, id, phone_number, metadata, status, attempt_count, created_at, updated_at, zone) ",
                    );
                    q.push_values(chunk, |mut b, (phone, meta)| {
                        b.push_bind(campaign_id)
                            .push_bind(Uuid::now_v7())
                            .push_bind(*phone)
                            .push_bind(Json(*meta))
                            .push_bind(CallStatus::Pending.as_str())
                            .push_bind(0i32)
                            .push_bind(at)
                            .push_bind(at)
                            .push_bind(dialer_domain::recipient::zone_key(phone, meta));
                    });
                    q.push(" ").push(LIVE_CALL_CONFLICT);
                    created += q.build().execute(&mut *conn).await?.rows_affected();
                }
                Ok(created)
            }

            async fn add_pending(conn: &mut Conn, campaign_id: Uuid, n: u64) -> Result<(), StoreError> {
                if n > 0 {
                    sqlx::query(
                        "UPDATE campaign_stats SET total_calls = total_calls + $1, pending_calls = pending_calls + $1 WHERE campaign_id = $2",
                    )
                    .bind(n as i64)
                    .bind(campaign_id)
                    .execute(&mut *conn)
                    .await?;
                }
                Ok(())
            }

            /// The campaign's status, for writes that need it open.
            /// A campaign's status, read `FOR SHARE` where rows lock: a status change (pause,
            /// complete) waits for this transaction, and this one sees a change that committed.
            async fn locked_status(conn: &mut Conn, id: Uuid) -> Result<Option<CampaignStatus>, StoreError> {
                sqlx::query(concat!("SELECT status FROM campaigns WHERE id = $1", $for_share))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .map(|r| campaign_status(&r))
                    .transpose()
            }

            /// The status of a campaign that takes new calls (locked, see [`locked_status`]).
            async fn open_status(conn: &mut Conn, id: Uuid) -> Result<CampaignStatus, StoreError> {
                let status = locked_status(conn, id).await?.ok_or(StoreError::NotFound("campaign"))?;
                if status == CampaignStatus::Completed {
                    return Err(StoreError::Conflict("the campaign is completed; it takes no new calls".into()));
                }
                Ok(status)
            }

            /// One round trip: the campaign's row repeated once per business-hours window.
            async fn fetch_campaign(conn: &mut Conn, id: Uuid) -> Result<Campaign, StoreError> {
                let rows = sqlx::query(&format!(
                    "SELECT {CAMPAIGN_COLUMNS}, day_of_week, start_minute, end_minute FROM campaigns \
                     LEFT JOIN campaign_business_hours ON campaign_id = id WHERE id = $1 ORDER BY position"
                ))
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
                let first = rows.first().ok_or(StoreError::NotFound("campaign"))?;
                let mut hours = Vec::with_capacity(rows.len());
                for row in &rows {
                    if let Some(day) = row.try_get::<Option<i32>, _>("day_of_week")? {
                        hours.push(Window {
                            day_of_week: day as u8,
                            start: row.try_get::<i32, _>("start_minute")? as u16,
                            end: row.try_get::<i32, _>("end_minute")? as u16,
                        });
                    }
                }
                campaign_from_row(first, hours)
            }

            pub async fn create_campaign(pool: &Pool, c: &NewCampaign) -> Result<Campaign, StoreError> {
                let s = &c.settings;
                let at = now();
                let id = Uuid::now_v7();
                let mut tx = begin(pool).await?;
                let inserted = sqlx::query(
                    "INSERT INTO campaigns (id, name, name_key, description, time_zone, max_concurrent_calls, \
                     retry_max_attempts, retry_base_delay_ms, retry_max_delay_ms, retry_jitter, status, target_count, \
                     created_at, updated_at, weight, retry_on, telephony, calling_rules) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14, $15, $16, $17)",
                )
                .bind(id)
                .bind(&s.name)
                .bind(s.name.to_lowercase())
                .bind(&s.description)
                .bind(&s.time_zone)
                .bind(s.max_concurrent_calls as i32)
                .bind(s.retry_policy.max_attempts as i32)
                .bind(ms(s.retry_policy.base_delay))
                .bind(ms(s.retry_policy.max_delay))
                .bind(s.retry_policy.jitter)
                .bind(CampaignStatus::Pending.as_str())
                .bind(c.targets.len() as i64)
                .bind(at)
                .bind(s.weight as i32)
                .bind(s.retry_policy.retry_on.to_csv())
                .bind(telephony_json(&s.telephony))
                .bind(rules_json(&s.calling_rules))
                .execute(&mut **tx)
                .await;
                match inserted {
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::Conflict(format!(
                            "a campaign named {:?} already exists (names are unique, ignoring case)",
                            s.name
                        )));
                    }
                    r => r?,
                };
                insert_hours(&mut tx, id, &s.business_hours).await?;
                for chunk in c.targets.chunks(CHUNK_ROWS) {
                    let mut q = QueryBuilder::<Db>::new(
                        "INSERT INTO campaign_targets (campaign_id, phone_number, metadata, created_at) ",
                    );
                    q.push_values(chunk, |mut b, t| {
                        b.push_bind(id).push_bind(&t.phone_number).push_bind(Json(&t.metadata)).push_bind(at);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                sqlx::query("INSERT INTO campaign_stats (campaign_id) VALUES ($1)").bind(id).execute(&mut **tx).await?;
                let rows: Vec<(&str, &Value)> = c.targets.iter().map(|t| (t.phone_number.as_str(), &t.metadata)).collect();
                let created = insert_pending_calls(&mut tx, id, &rows, at).await?;
                add_pending(&mut tx, id, created).await?;
                insert_event(&mut tx, id, "created", json!({"targets": c.targets.len()}), at).await?;
                let campaign = fetch_campaign(&mut tx, id).await?;
                tx.commit().await?;
                Ok(campaign)
            }

            pub async fn get_campaign(pool: &Pool, id: Uuid) -> Result<Campaign, StoreError> {
                let mut conn = pool.acquire().await?;
                fetch_campaign(&mut conn, id).await
            }

            pub async fn list_campaigns(pool: &Pool, after: Option<Uuid>, limit: u32) -> Result<Vec<Campaign>, StoreError> {
                let mut conn = pool.acquire().await?;
                let mut q = QueryBuilder::<Db>::new(format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns"));
                if let Some(a) = after {
                    q.push(" WHERE id > ").push_bind(a);
                }
                q.push(" ORDER BY id LIMIT ").push_bind(i64::from(limit));
                let rows = q.build().fetch_all(&mut *conn).await?;
                let ids: Vec<Uuid> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
                let mut hours = load_hours(&mut conn, &ids).await?;
                rows.iter()
                    .zip(&ids)
                    .map(|(r, id)| campaign_from_row(r, hours.remove(id).unwrap_or_default()))
                    .collect()
            }

            pub async fn update_campaign(pool: &Pool, id: Uuid, patch: &UpdateCampaignRequest) -> Result<Campaign, StoreError> {
                let mut tx = begin(pool).await?;
                let row = sqlx::query(&format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or(StoreError::NotFound("campaign"))?;
                let hours = load_hours(&mut tx, &[id]).await?.remove(&id).unwrap_or_default();
                let settings = settings_from_row(&row, hours)?;
                let next: CampaignSettings = patch.apply(&settings).map_err(StoreError::Invalid)?;
                let at = now();
                let updated = sqlx::query(
                    "UPDATE campaigns SET name = $1, name_key = $2, description = $3, time_zone = $4, \
                     max_concurrent_calls = $5, retry_max_attempts = $6, retry_base_delay_ms = $7, \
                     retry_max_delay_ms = $8, retry_jitter = $9, updated_at = $10, weight = $12, retry_on = $13, \
                     telephony = $14, calling_rules = $15 WHERE id = $11",
                )
                .bind(&next.name)
                .bind(next.name.to_lowercase())
                .bind(&next.description)
                .bind(&next.time_zone)
                .bind(next.max_concurrent_calls as i32)
                .bind(next.retry_policy.max_attempts as i32)
                .bind(ms(next.retry_policy.base_delay))
                .bind(ms(next.retry_policy.max_delay))
                .bind(next.retry_policy.jitter)
                .bind(at)
                .bind(id)
                .bind(next.weight as i32)
                .bind(next.retry_policy.retry_on.to_csv())
                .bind(telephony_json(&next.telephony))
                .bind(rules_json(&next.calling_rules))
                .execute(&mut **tx)
                .await;
                match updated {
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::Conflict(format!(
                            "a campaign named {:?} already exists (names are unique, ignoring case)",
                            next.name
                        )));
                    }
                    r => r?,
                };
                if next.business_hours != settings.business_hours {
                    sqlx::query("DELETE FROM campaign_business_hours WHERE campaign_id = $1").bind(id).execute(&mut **tx).await?;
                    insert_hours(&mut tx, id, &next.business_hours).await?;
                }
                let changed: Vec<&str> = [
                    ("name", patch.name.is_some()),
                    ("description", patch.description.is_some()),
                    ("time_zone", patch.time_zone.is_some()),
                    ("max_concurrent_calls", patch.max_concurrent_calls.is_some()),
                    ("weight", patch.weight.is_some()),
                    ("retry_policy", patch.retry_policy.is_some()),
                    ("business_hours", patch.business_hours.is_some()),
                    ("telephony", patch.telephony.is_some()),
                    ("calling_rules", patch.calling_rules.is_some()),
                ]
                .into_iter()
                .filter_map(|(k, set)| set.then_some(k))
                .collect();
                insert_event(&mut tx, id, "updated", json!({"fields": changed}), at).await?;
                let campaign = fetch_campaign(&mut tx, id).await?;
                tx.commit().await?;
                Ok(campaign)
            }

            pub async fn transition(pool: &Pool, id: Uuid, action: CampaignAction) -> Result<Campaign, StoreError> {
                let sources = CampaignStatus::sources(action);
                let next = sources.first().map(|s| s.apply(action)).transpose()?.unwrap_or(CampaignStatus::Completed);
                let at = now();
                let mut tx = begin(pool).await?;
                let mut q = QueryBuilder::<Db>::new("UPDATE campaigns SET status = ");
                q.push_bind(next.as_str()).push(", updated_at = ").push_bind(at);
                // Two events for a completion (the change, then the final stats), one otherwise.
                q.push(", event_seq = event_seq + ").push_bind(if next == CampaignStatus::Completed { 2i32 } else { 1 });
                match next {
                    CampaignStatus::InProgress => {
                        q.push(", started_at = COALESCE(started_at, ").push_bind(at).push(")");
                    }
                    CampaignStatus::Completed => {
                        q.push(", completed_at = ").push_bind(at);
                    }
                    _ => {}
                }
                q.push(" WHERE id = ").push_bind(id).push(" AND status IN (");
                let mut sep = q.separated(", ");
                for s in &sources {
                    sep.push_bind(s.as_str());
                }
                q.push(")");
                if q.build().execute(&mut **tx).await?.rows_affected() == 0 {
                    let current = fetch_campaign(&mut tx, id).await?;
                    return Err(match current.status.apply(action) {
                        Err(e) => e.into(),
                        Ok(_) => StoreError::Conflict("the campaign changed while this request ran; send it again".into()),
                    });
                }
                let mut cancelled = 0u64;
                if next == CampaignStatus::Completed {
                    cancelled = cancel_pending(&mut tx, id, at).await?;
                }
                let detail = json!({"status": next.as_str(), "cancelled_calls": cancelled});
                insert_event(&mut tx, id, action.as_str(), detail.clone(), at).await?;
                log_campaign(&mut tx, id, action.as_str(), next, detail, at).await?;
                let campaign = fetch_campaign(&mut tx, id).await?;
                tx.commit().await?;
                Ok(campaign)
            }

            fn stats_from_row(id: Uuid, row: &DbRow) -> Result<CampaignStats, StoreError> {
                Ok(CampaignStats {
                    campaign_id: id,
                    total_calls: row.try_get("total_calls")?,
                    pending_calls: row.try_get("pending_calls")?,
                    queued_calls: row.try_get("queued_calls")?,
                    in_progress_calls: row.try_get("in_progress_calls")?,
                    completed_calls: row.try_get("completed_calls")?,
                    failed_calls: row.try_get("failed_calls")?,
                    retries_attempted: row.try_get("retries_attempted")?,
                    attempts_total: row.try_get("attempts_total")?,
                    failed_by_outcome: dialer_domain::validate::FailedByOutcome {
                        busy: row.try_get("failed_busy")?,
                        no_answer: row.try_get("failed_no_answer")?,
                        rejected: row.try_get("failed_rejected")?,
                        invalid_number: row.try_get("failed_invalid_number")?,
                        failed: row.try_get("failed_failed")?,
                        unknown_outcome: row.try_get("failed_unknown_outcome")?,
                    },
                    skipped_calls: row.try_get("skipped_calls")?,
                    skipped_by_reason: dialer_domain::validate::SkippedByReason {
                        dnc: row.try_get("skipped_dnc")?,
                        no_zone: row.try_get("skipped_no_zone")?,
                    },
                })
            }

            pub async fn stats(pool: &Pool, id: Uuid) -> Result<CampaignStats, StoreError> {
                let mut conn = pool.acquire().await?;
                read_stats(&mut conn, id).await
            }

            async fn read_stats(conn: &mut Conn, id: Uuid) -> Result<CampaignStats, StoreError> {
                let row = sqlx::query(
                    "SELECT total_calls, pending_calls, queued_calls, in_progress_calls, completed_calls, failed_calls, \
                     retries_attempted, attempts_total, failed_busy, failed_no_answer, failed_rejected, \
                     failed_invalid_number, failed_failed, failed_unknown_outcome, skipped_calls, skipped_dnc, skipped_no_zone \
                     FROM campaign_stats WHERE campaign_id = $1",
                )
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?
                .ok_or(StoreError::NotFound("campaign"))?;
                stats_from_row(id, &row)
            }

            pub async fn recount_stats(pool: &Pool, id: Uuid) -> Result<CampaignStats, StoreError> {
                let row = sqlx::query(
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
                     COALESCE(SUM(CASE WHEN status = 'skipped' AND last_error = 'no_zone' THEN 1 ELSE 0 END), 0) AS skipped_no_zone \
                     FROM calls WHERE campaign_id = $1",
                )
                .bind(id)
                .fetch_one(pool)
                .await?;
                stats_from_row(id, &row)
            }

            pub async fn queue_targets(
                pool: &Pool,
                campaign_id: Uuid,
                targets: &[(String, Option<Value>)],
            ) -> Result<QueueTargetsResponse, StoreError> {
                let at = now();
                let mut tx = begin(pool).await?;
                open_status(&mut tx, campaign_id).await?;
                let mut queued = 0;
                for (chunk_no, chunk) in targets.chunks(LOOKUP_CHUNK).enumerate() {
                    let mut q = QueryBuilder::<Db>::new(
                        "SELECT phone_number, metadata FROM campaign_targets WHERE campaign_id = ",
                    );
                    q.push_bind(campaign_id).push(" AND phone_number IN (");
                    let mut sep = q.separated(", ");
                    for (phone, _) in chunk {
                        sep.push_bind(phone.as_str());
                    }
                    q.push(")");
                    let mut registered: HashMap<String, Value> = HashMap::with_capacity(chunk.len());
                    for row in q.build().fetch_all(&mut **tx).await? {
                        registered.insert(row.try_get("phone_number")?, row.try_get::<Json<Value>, _>("metadata")?.0);
                    }
                    let mut rows = Vec::with_capacity(chunk.len());
                    for (i, (phone, meta)) in chunk.iter().enumerate() {
                        let Some(reg) = registered.get(phone) else {
                            return Err(FieldError::new(
                                format!("targets[{}].phone_number", chunk_no * LOOKUP_CHUNK + i),
                                format!("{phone} is not registered with this campaign; only numbers listed when the campaign was created can be called"),
                            )
                            .into());
                        };
                        rows.push((phone.as_str(), meta.as_ref().unwrap_or(reg)));
                    }
                    queued += insert_pending_calls(&mut tx, campaign_id, &rows, at).await?;
                }
                add_pending(&mut tx, campaign_id, queued).await?;
                let already_queued = targets.len() as u64 - queued;
                insert_event(&mut tx, campaign_id, "targets_queued", json!({"queued": queued, "already_queued": already_queued}), at).await?;
                tx.commit().await?;
                Ok(QueueTargetsResponse { queued, already_queued, duplicates_merged: 0 })
            }

            pub async fn create_call(
                pool: &Pool,
                campaign_id: Uuid,
                phone_number: &str,
                metadata: Option<&Value>,
            ) -> Result<(Call, bool), StoreError> {
                if $writing_ctes {
                    // The batch statement with one request: one round trip.
                    let one = [NewCall { campaign_id, phone_number: phone_number.into(), metadata: metadata.cloned() }];
                    let answer = create_calls_statement(pool, &one).await?.pop();
                    return answer.unwrap_or_else(|| Err(StoreError::Corrupt("the batch of one gave no answer".into())));
                }
                create_call_in_transaction(pool, campaign_id, phone_number, metadata).await
            }

            /// [`create_call`] where writing CTEs do not exist (SQLite, one writer).
            async fn create_call_in_transaction(
                pool: &Pool,
                campaign_id: Uuid,
                phone_number: &str,
                metadata: Option<&Value>,
            ) -> CallAnswer {
                let at = now();
                // Few round trips, and the campaign's stats row (every new call of the campaign
                // updates it) locked only from its update to the commit.
                let mut tx = begin(pool).await?;
                let row = sqlx::query(
                    "SELECT status, metadata FROM campaigns LEFT JOIN campaign_targets \
                     ON campaign_id = id AND phone_number = $2 WHERE id = $1",
                )
                .bind(campaign_id)
                .bind(phone_number)
                .fetch_optional(&mut **tx)
                .await?
                .ok_or(StoreError::NotFound("campaign"))?;
                if campaign_status(&row)? == CampaignStatus::Completed {
                    return Err(StoreError::Conflict("the campaign is completed; it takes no new calls".into()));
                }
                let registered: Value = row
                    .try_get::<Option<Json<Value>>, _>("metadata")?
                    .ok_or_else(|| {
                        FieldError::new(
                            "phone_number",
                            format!("{phone_number} is not registered with this campaign; only numbers listed when the campaign was created can be called"),
                        )
                    })?
                    .0;
                let inserted = sqlx::query(&format!(
                    "INSERT INTO calls (campaign_id, id, phone_number, metadata, status, attempt_count, created_at, updated_at, zone) \
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $6, $7) {LIVE_CALL_CONFLICT} RETURNING {CALL_COLUMNS}"
                ))
                .bind(campaign_id)
                .bind(Uuid::now_v7())
                .bind(phone_number)
                .bind(Json(metadata.unwrap_or(&registered)))
                .bind(CallStatus::Pending.as_str())
                .bind(at)
                .bind(dialer_domain::recipient::zone_key(phone_number, metadata.unwrap_or(&registered)))
                .fetch_optional(&mut **tx)
                .await?;
                let (call, created) = match inserted {
                    Some(row) => {
                        add_pending(&mut tx, campaign_id, 1).await?;
                        (call_from_row(&row)?, true)
                    }
                    // The insert met the number's live call (one writer: it is there).
                    None => match live_call(&mut tx, campaign_id, phone_number).await? {
                        Some(call) => (call, false),
                        None => return Err(StoreError::Corrupt("a live call conflicted and then was not found".into())),
                    },
                };
                tx.commit().await?;
                Ok((call, created))
            }

            /// A number's live call (pending, queued or in progress), if it has one.
            async fn live_call(conn: &mut Conn, campaign_id: Uuid, phone_number: &str) -> Result<Option<Call>, StoreError> {
                sqlx::query(&format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE campaign_id = $1 AND phone_number = $2 \
                     AND status IN ('pending', 'queued', 'in_progress')"
                ))
                .bind(campaign_id)
                .bind(phone_number)
                .fetch_optional(&mut *conn)
                .await?
                .as_ref()
                .map(call_from_row)
                .transpose()
            }

            /// Calls for many requests at once (group commit for `POST /calls`, see
            /// [`crate::store::CallBatcher`]; on PostgreSQL [`create_call`] is a batch of one) in
            /// one statement: it locks the campaigns, inserts the new calls, updates each
            /// campaign's stats row once and reads the numbers' live calls. Requests must name
            /// distinct (campaign, number) pairs. An item whose live call the statement could
            /// not see (committed by another transaction meanwhile) is read again after it.
            /// `Err` means the batch failed as a whole (nothing written): do the items alone.
            pub async fn create_calls(
                pool: &Pool,
                reqs: &[NewCall],
            ) -> Result<Vec<CallAnswer>, StoreError> {
                if !$writing_ctes {
                    let mut out = Vec::with_capacity(reqs.len());
                    for r in reqs {
                        out.push(create_call_in_transaction(pool, r.campaign_id, &r.phone_number, r.metadata.as_ref()).await);
                    }
                    return Ok(out);
                }
                create_calls_statement(pool, reqs).await
            }

            /// [`create_calls`] in one statement (PostgreSQL).
            async fn create_calls_statement(pool: &Pool, reqs: &[NewCall]) -> Result<Vec<CallAnswer>, StoreError> {
                let at = now();
                let ids: Vec<Uuid> = reqs.iter().map(|_| Uuid::now_v7()).collect();
                // Absent `meta` is SQL NULL (a JSON null would be kept as jsonb 'null').
                let items: Vec<Value> = reqs
                    .iter()
                    .zip(&ids)
                    .enumerate()
                    .map(|(i, (r, id))| {
                        let mut o = json!({"idx": i, "cid": r.campaign_id, "id": id, "phone": r.phone_number});
                        if let Some(m) = &r.metadata {
                            o["meta"] = m.clone();
                        }
                        o
                    })
                    .collect();
                // One statement, so one round trip and no lock held between statements: the
                // campaigns are locked (shared) first, then the calls inserted in (campaign,
                // number) order, then the stats rows locked in campaign order and updated: two
                // batches, or a batch and the recorder, always wait for each other in one order.
                let rows = sqlx::query(&format!(
                    "WITH req AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS r(idx int, cid uuid, id uuid, phone text, meta jsonb)), \
                     camp AS (SELECT id AS cid, status AS campaign_status FROM campaigns \
                        WHERE id IN (SELECT cid FROM req) ORDER BY id{}), \
                     tgt AS (SELECT r.idx, t.metadata AS registered FROM req r \
                        JOIN campaign_targets t ON t.campaign_id = r.cid AND t.phone_number = r.phone), \
                     ins AS (INSERT INTO calls (campaign_id, id, phone_number, metadata, status, attempt_count, created_at, updated_at) \
                        SELECT r.cid, r.id, r.phone, COALESCE(r.meta, tgt.registered), $2, 0, $3, $3 \
                        FROM req r JOIN tgt ON tgt.idx = r.idx JOIN camp ON camp.cid = r.cid \
                        WHERE camp.campaign_status <> 'completed' ORDER BY r.cid, r.phone \
                        {LIVE_CALL_CONFLICT} RETURNING {CALL_COLUMNS}), \
                     cnt AS (SELECT campaign_id AS cid, count(*) AS n FROM ins GROUP BY campaign_id), \
                     lk AS (SELECT campaign_id FROM campaign_stats WHERE campaign_id IN (SELECT cid FROM cnt) \
                        ORDER BY campaign_id{}), \
                     upd AS (UPDATE campaign_stats s SET total_calls = s.total_calls + cnt.n, pending_calls = s.pending_calls + cnt.n \
                        FROM lk JOIN cnt ON cnt.cid = lk.campaign_id WHERE s.campaign_id = lk.campaign_id), \
                     live AS (SELECT {CALL_COLUMNS} FROM calls WHERE (campaign_id, phone_number) IN (SELECT cid, phone FROM req) \
                        AND status IN ('pending', 'queued', 'in_progress')) \
                     SELECT r.idx, camp.campaign_status, tgt.idx IS NOT NULL AS registered, x.* FROM req r \
                     LEFT JOIN camp ON camp.cid = r.cid LEFT JOIN tgt ON tgt.idx = r.idx \
                     LEFT JOIN (SELECT * FROM ins UNION ALL SELECT * FROM live) x \
                        ON x.campaign_id = r.cid AND x.phone_number = r.phone",
                    $for_share, $for_update
                ))
                .bind(Value::Array(items).to_string())
                .bind(CallStatus::Pending.as_str())
                .bind(at)
                .fetch_all(pool)
                .await?;
                let mut by_idx: Vec<Option<DbRow>> = (0..reqs.len()).map(|_| None).collect();
                for row in rows {
                    let i = row.try_get::<i32, _>("idx")? as usize;
                    if let Some(slot) = by_idx.get_mut(i) {
                        *slot = Some(row);
                    }
                }
                let mut out = Vec::with_capacity(reqs.len());
                for (i, (r, row)) in reqs.iter().zip(by_idx).enumerate() {
                    let Some(row) = row else {
                        return Err(StoreError::Corrupt(format!("the batch of new calls returned no row for item {i}")));
                    };
                    let status: Option<String> = row.try_get("campaign_status")?;
                    out.push(match status.as_deref() {
                        None => Err(StoreError::NotFound("campaign")),
                        Some("completed") => {
                            Err(StoreError::Conflict("the campaign is completed; it takes no new calls".into()))
                        }
                        Some(_) if !row.try_get::<bool, _>("registered")? => Err(FieldError::new(
                            "phone_number",
                            format!("{} is not registered with this campaign; only numbers listed when the campaign was created can be called", r.phone_number),
                        )
                        .into()),
                        Some(_) => match row.try_get::<Option<Uuid>, _>("id")? {
                            Some(id) => Ok((call_from_row(&row)?, id == ids[i])),
                            // The live call was committed by another transaction after this
                            // statement's snapshot: a new statement sees it.
                            None => match live_call(&mut *pool.acquire().await?, r.campaign_id, &r.phone_number).await {
                                Ok(Some(call)) => Ok((call, false)),
                                Ok(None) => Err(StoreError::Conflict(
                                    "the number's open call changed meanwhile; retry the request".into(),
                                )),
                                Err(e) => Err(e),
                            },
                        },
                    });
                }
                Ok(out)
            }

            pub async fn list_calls(pool: &Pool, campaign_id: Uuid, cq: &CallQuery) -> Result<Vec<Call>, StoreError> {
                let mut conn = pool.acquire().await?;
                sqlx::query("SELECT id FROM campaigns WHERE id = $1")
                    .bind(campaign_id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or(StoreError::NotFound("campaign"))?;
                let mut q = QueryBuilder::<Db>::new(format!("SELECT {CALL_COLUMNS} FROM calls WHERE campaign_id = "));
                q.push_bind(campaign_id);
                if let Some(a) = cq.after {
                    q.push(" AND id > ").push_bind(a);
                }
                if let Some(s) = cq.status {
                    q.push(" AND status = ").push_bind(s.as_str());
                }
                q.push(" ORDER BY id LIMIT ").push_bind(i64::from(cq.limit));
                q.build().fetch_all(&mut *conn).await?.iter().map(call_from_row).collect()
            }

            pub async fn get_call(pool: &Pool, id: Uuid) -> Result<CallDetail, StoreError> {
                let mut conn = pool.acquire().await?;
                let row = sqlx::query(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or(StoreError::NotFound("call"))?;
                let call = call_from_row(&row)?;
                let attempts = sqlx::query(
                    "SELECT attempt, outcome, started_at, answered_at, ended_at, duration_ms, reason, retryable, \
                     sip_code, sip_reason FROM call_attempts WHERE campaign_id = $1 AND call_id = $2 ORDER BY attempt",
                )
                .bind(call.campaign_id)
                .bind(id)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|r| {
                    Ok(CallAttempt {
                        attempt: r.try_get::<i32, _>("attempt")? as u32,
                        outcome: r.try_get("outcome")?,
                        started_at: r.try_get("started_at")?,
                        answered_at: r.try_get("answered_at")?,
                        ended_at: r.try_get("ended_at")?,
                        duration_ms: r.try_get("duration_ms")?,
                        reason: r.try_get("reason")?,
                        retryable: r.try_get("retryable")?,
                        sip_code: r.try_get::<Option<i32>, _>("sip_code")?.map(|c| c.clamp(0, 999) as u16),
                        sip_reason: r.try_get("sip_reason")?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(CallDetail { call, attempts })
            }

            fn ms_to_time(ms: u64) -> DateTime<Utc> {
                DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default()
            }

            /// In-progress campaigns with their schedule, cap and live counts.
            pub async fn active_campaigns(pool: &Pool) -> Result<Vec<ActiveCampaign>, StoreError> {
                let mut conn = pool.acquire().await?;
                let rows = sqlx::query(
                    "SELECT c.id, c.time_zone, c.max_concurrent_calls, c.weight, c.telephony, c.calling_rules, s.pending_calls, s.queued_calls, \
                     s.in_progress_calls \
                     FROM campaigns c JOIN campaign_stats s ON s.campaign_id = c.id WHERE c.status = 'in_progress' ORDER BY c.id",
                )
                .fetch_all(&mut *conn)
                .await?;
                let ids: Vec<Uuid> = rows.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
                let mut hours = load_hours(&mut conn, &ids).await?;
                rows.iter()
                    .zip(&ids)
                    .map(|(r, id)| {
                        Ok(ActiveCampaign {
                            id: *id,
                            time_zone: r.try_get("time_zone")?,
                            business_hours: hours.remove(id).unwrap_or_default(),
                            max_concurrent_calls: r.try_get::<i32, _>("max_concurrent_calls")? as u32,
                            weight: r.try_get::<i32, _>("weight")? as u32,
                            telephony: telephony_from(r.try_get("telephony")?)?,
                            calling_rules: rules_from(r.try_get("calling_rules")?)?,
                            pending: r.try_get("pending_calls")?,
                            queued: r.try_get("queued_calls")?,
                            in_progress: r.try_get("in_progress_calls")?,
                        })
                    })
                    .collect()
            }

            async fn claim_some(
                conn: &mut Conn,
                campaign_id: Uuid,
                zone: &str,
                retries: bool,
                limit: usize,
                at: DateTime<Utc>,
            ) -> Result<Vec<ClaimedCall>, StoreError> {
                if limit == 0 {
                    return Ok(vec![]);
                }
                let cond = if retries {
                    "next_attempt_at IS NOT NULL AND next_attempt_at <= $2"
                } else {
                    "next_attempt_at IS NULL"
                };
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
                    "UPDATE calls SET status = 'queued', attempt_count = attempt_count + 1, event_seq = event_seq + 1, queued_at = $2, updated_at = $2 \
                     WHERE id {}SELECT id FROM calls \
                     WHERE campaign_id = $1 AND status = 'pending' AND zone = $4 AND {cond} \
                     ORDER BY next_attempt_at, id LIMIT $3{}{} \
                     RETURNING id, phone_number, attempt_count, zone, event_seq",
                    $claim_in.0,
                    $skip_locked,
                    $claim_in.1,
                );
                let rows = sqlx::query(&sql).bind(campaign_id).bind(at).bind(limit as i64).bind(zone).fetch_all(&mut *conn).await?;
                rows.iter()
                    .map(|r| {
                        Ok(ClaimedCall {
                            id: r.try_get("id")?,
                            phone_number: r.try_get("phone_number")?,
                            attempt: r.try_get::<i32, _>("attempt_count")? as u32,
                            zone: r.try_get::<Option<String>, _>("zone")?.unwrap_or_default(),
                            event_seq: r.try_get::<i32, _>("event_seq")? as u32,
                        })
                    })
                    .collect()
            }

            /// Up to `n` due calls of one zone, retries and new calls side by side (half each
            /// when both wait).
            async fn claim_zone(conn: &mut Conn, campaign_id: Uuid, zone: &str, n: usize, at: DateTime<Utc>) -> Result<Vec<ClaimedCall>, StoreError> {
                let mut out = claim_some(conn, campaign_id, zone, true, n.div_ceil(2), at).await?;
                let fresh = claim_some(conn, campaign_id, zone, false, n.saturating_sub(out.len()), at).await?;
                out.extend(fresh);
                if out.len() < n {
                    let more = claim_some(conn, campaign_id, zone, true, n - out.len(), at).await?;
                    out.extend(more);
                }
                Ok(out)
            }

            /// Moves up to `n` due calls of a campaign from pending to queued, zone by zone in
            /// the order given (the scheduler passes the open ones, soonest to close first), and
            /// screens them by the recipient's rules: the calls to dial are returned and counted
            /// as attempts; skipped ones end, held ones wait.
            pub async fn claim_calls(
                pool: &Pool,
                campaign_id: Uuid,
                n: usize,
                at: DateTime<Utc>,
                zones: &[String],
                rules: &dialer_domain::rules::Rules,
            ) -> Result<Screened, StoreError> {
                let mut tx = begin(pool).await?;
                if $row_locks {
                    // PostgreSQL: stale statistics (a campaign just loaded looks empty) made the
                    // planner read every pending call of the campaign through another index and
                    // sort them, per zone; without sorts it reads `calls_pending_zone` in its order.
                    // Likewise a do-not-call list just imported looked empty: a sequential scan of
                    // a million entries per claim (`bench rules`). Every statement of a claim is a
                    // look-up by key: no sort and no table scan is ever the right plan here.
                    sqlx::query("SET LOCAL enable_sort = off").execute(&mut **tx).await?;
                    sqlx::query("SET LOCAL enable_seqscan = off").execute(&mut **tx).await?;
                }
                // Nothing is claimed for a campaign paused or completed since the scheduler listed it.
                if locked_status(&mut tx, campaign_id).await? != Some(CampaignStatus::InProgress) {
                    return Ok(Screened::default());
                }
                let mut out = Vec::new();
                for zone in zones {
                    if out.len() >= n {
                        break;
                    }
                    let more = claim_zone(&mut tx, campaign_id, zone, n - out.len(), at).await?;
                    out.extend(more);
                }
                if out.is_empty() {
                    return Ok(Screened::default());
                }
                let screened = super::super::rules::$module::screen(&mut tx, campaign_id, out, rules, at).await?;
                claim_stats(&mut tx, campaign_id, &screened).await?;
                let skipped: Vec<(ClaimedCall, &str)> = screened.skipped.iter().map(|(c, r)| (c.clone(), r.as_str())).collect();
                let events = super::super::outbox::claimed(campaign_id, &screened.dial, &skipped, at);
                super::super::events::$module::append(&mut tx, &events).await?;
                tx.commit().await?;
                Ok(screened)
            }

            /// A claim's effect on the aggregates: dialled calls pending → queued (attempts
            /// counted), skipped ones pending → skipped by reason, held ones stay pending.
            async fn claim_stats(conn: &mut Conn, campaign_id: Uuid, s: &Screened) -> Result<(), StoreError> {
                let k = s.dial.len() as i64;
                let retries = s.dial.iter().filter(|c| c.attempt > 1).count() as i64;
                let skipped = |r| s.skipped.iter().filter(|(_, why)| *why == r).count() as i64;
                let (dnc, no_zone) = (skipped(dialer_domain::rules::SkipReason::Dnc), skipped(dialer_domain::rules::SkipReason::NoZone));
                if k + dnc + no_zone == 0 {
                    return Ok(());
                }
                sqlx::query(
                    "UPDATE campaign_stats SET pending_calls = pending_calls - $1 - $4 - $5, queued_calls = queued_calls + $1, \
                     attempts_total = attempts_total + $1, retries_attempted = retries_attempted + $2, \
                     skipped_calls = skipped_calls + $4 + $5, skipped_dnc = skipped_dnc + $4, skipped_no_zone = skipped_no_zone + $5 \
                     WHERE campaign_id = $3",
                )
                .bind(k)
                .bind(retries)
                .bind(campaign_id)
                .bind(dnc)
                .bind(no_zone)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// Gives claimed calls back (their dispatch failed): queued → pending, attempt undone;
            /// cancelled instead (failed, never placed) if the campaign was completed meanwhile.
            pub async fn unclaim_calls(pool: &Pool, campaign_id: Uuid, calls: &[ClaimedCall]) -> Result<(), StoreError> {
                if calls.is_empty() {
                    return Ok(());
                }
                let mut tx = begin(pool).await?;
                let completed = locked_status(&mut tx, campaign_id).await? == Some(CampaignStatus::Completed);
                let (to, error) = if completed { ("failed", Some(CANCELLED)) } else { ("pending", None) };
                let mut n = 0i64;
                let mut retries = 0i64;
                let mut events = Vec::new();
                for c in calls {
                    // A cancelled call logs its end (its `queued` stands: the claim committed it).
                    let r = sqlx::query(
                        "UPDATE calls SET status = $4, last_error = COALESCE($5, last_error), \
                         attempt_count = attempt_count - 1, queued_at = NULL, event_seq = event_seq + $6 \
                         WHERE campaign_id = $1 AND id = $2 AND status = 'queued' AND attempt_count = $3 RETURNING event_seq",
                    )
                    .bind(campaign_id)
                    .bind(c.id)
                    .bind(c.attempt as i32)
                    .bind(to)
                    .bind(error)
                    .bind(i32::from(completed))
                    .fetch_optional(&mut **tx)
                    .await?;
                    if let Some(r) = r {
                        n += 1;
                        retries += i64::from(c.attempt > 1);
                        if completed {
                            let seq = r.try_get::<i32, _>("event_seq")? as u32;
                            let stream = super::super::outbox::CallStream { campaign: campaign_id, call: c.id, phone_number: c.phone_number.clone(), seq };
                            super::super::outbox::cancelled(stream, c.attempt - 1, now(), &mut events);
                        }
                    }
                }
                super::super::events::$module::append(&mut tx, &events).await?;
                let (pending, failed) = if completed { (0, n) } else { (n, 0) };
                sqlx::query(
                    "UPDATE campaign_stats SET pending_calls = pending_calls + $1, failed_calls = failed_calls + $2, \
                     queued_calls = queued_calls - $3, attempts_total = attempts_total - $3, \
                     retries_attempted = retries_attempted - $4 WHERE campaign_id = $5",
                )
                .bind(pending)
                .bind(failed)
                .bind(n)
                .bind(retries)
                .bind(campaign_id)
                .execute(&mut **tx)
                .await?;
                tx.commit().await?;
                Ok(())
            }

            /// Complete stops everything: the calls of a just-completed campaign still waiting are
            /// cancelled. Runs after the campaign row's update, in its transaction: writers that
            /// read the campaign `FOR SHARE` have committed by then and their calls are seen.
            async fn cancel_pending(conn: &mut Conn, id: Uuid, at: DateTime<Utc>) -> Result<u64, StoreError> {
                let rows = sqlx::query(
                    "UPDATE calls SET status = 'failed', last_error = $1, next_attempt_at = NULL, updated_at = $2, \
                     event_seq = event_seq + 1 WHERE campaign_id = $3 AND status = 'pending' \
                     RETURNING id, phone_number, attempt_count, event_seq",
                )
                .bind(CANCELLED)
                .bind(at)
                .bind(id)
                .fetch_all(&mut *conn)
                .await?;
                let cancelled = rows.len() as u64;
                if cancelled > 0 {
                    sqlx::query(
                        "UPDATE campaign_stats SET pending_calls = pending_calls - $1, failed_calls = failed_calls + $1 \
                         WHERE campaign_id = $2",
                    )
                    .bind(cancelled as i64)
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                }
                let mut events = Vec::with_capacity(rows.len());
                for r in &rows {
                    let stream = super::super::outbox::CallStream {
                        campaign: id,
                        call: r.try_get("id")?,
                        phone_number: r.try_get("phone_number")?,
                        seq: r.try_get::<i32, _>("event_seq")? as u32,
                    };
                    super::super::outbox::cancelled(stream, r.try_get::<i32, _>("attempt_count")? as u32, at, &mut events);
                }
                super::super::events::$module::append(conn, &events).await?;
                Ok(cancelled)
            }

            /// Logs a campaign's status change (and, completed, its final stats) in its transaction.
            async fn log_campaign(conn: &mut Conn, id: Uuid, action: &str, status: CampaignStatus, detail: Value, at: DateTime<Utc>) -> Result<(), StoreError> {
                let seq: i32 = sqlx::query_scalar("SELECT event_seq FROM campaigns WHERE id = $1").bind(id).fetch_one(&mut *conn).await?;
                let stats = if status == CampaignStatus::Completed {
                    Some(serde_json::to_value(read_stats(conn, id).await?).map_err(|e| StoreError::Corrupt(e.to_string()))?)
                } else {
                    None
                };
                let events = super::super::outbox::campaign_changed(id, seq as u32, action, status.as_str(), detail, stats, at);
                super::super::events::$module::append(conn, &events).await
            }

            /// Completes in-progress campaigns whose every call is terminal; returns their ids. A
            /// call created meanwhile (the totals were read before it) is cancelled with them.
            pub async fn complete_finished(pool: &Pool) -> Result<Vec<Uuid>, StoreError> {
                let at = now();
                let mut tx = begin(pool).await?;
                let ids: Vec<Uuid> = sqlx::query_scalar(
                    "UPDATE campaigns SET status = 'completed', completed_at = $1, updated_at = $1, event_seq = event_seq + 2 \
                     WHERE status = 'in_progress' AND id IN (SELECT campaign_id FROM campaign_stats \
                     WHERE pending_calls = 0 AND queued_calls = 0 AND in_progress_calls = 0) RETURNING id",
                )
                .bind(at)
                .fetch_all(&mut **tx)
                .await?;
                for id in &ids {
                    let cancelled = cancel_pending(&mut tx, *id, at).await?;
                    let detail = json!({"status": "completed", "by": "scheduler: every call is terminal", "cancelled_calls": cancelled});
                    insert_event(&mut tx, *id, "complete", detail.clone(), at).await?;
                    log_campaign(&mut tx, *id, "complete", CampaignStatus::Completed, detail, at).await?;
                }
                tx.commit().await?;
                Ok(ids)
            }

            /// Reads the retry policy and completion of campaigns, `FOR SHARE` where rows lock.
            async fn load_campaigns(
                conn: &mut Conn,
                ids: &[Uuid],
                policies: &mut HashMap<Uuid, RetryPolicy>,
                completed: &mut std::collections::HashSet<Uuid>,
            ) -> Result<(), StoreError> {
                for chunk in ids.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new(format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id IN ("));
                    let mut sep = q.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    q.push(") ORDER BY id");
                    q.push($for_share);
                    for r in q.build().fetch_all(&mut *conn).await? {
                        let id: Uuid = r.try_get("id")?;
                        if campaign_status(&r)? == CampaignStatus::Completed {
                            completed.insert(id);
                        }
                        policies.insert(id, settings_from_row(&r, vec![])?.retry_policy);
                    }
                }
                Ok(())
            }

            /// Applies a batch of status events: call rows, the timeline, the aggregates, in one
            /// transaction and a handful of statements (not a round trip per event).
            /// Calls still queued or in progress whose attempt may be abandoned: queued (not
            /// reported started) and dispatched before `queued_before`, or reported started
            /// before `started_before` (dispatched before it too); oldest dispatch first.
            pub async fn stale_calls(
                pool: &Pool,
                queued_before: DateTime<Utc>,
                started_before: DateTime<Utc>,
                limit: usize,
            ) -> Result<Vec<LiveCall>, StoreError> {
                let rows = sqlx::query(
                    "SELECT campaign_id, id, status, attempt_count FROM calls \
                     WHERE status IN ('queued', 'in_progress') AND queued_at < $2 \
                     AND ((status = 'queued' AND queued_at < $1) OR (status = 'in_progress' AND updated_at < $2)) \
                     ORDER BY queued_at LIMIT $3",
                )
                .bind(queued_before)
                .bind(started_before)
                .bind(limit as i64)
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let s: String = r.try_get("status")?;
                        Ok(LiveCall {
                            campaign_id: r.try_get("campaign_id")?,
                            id: r.try_get("id")?,
                            started: s == "in_progress",
                            attempt: r.try_get::<i32, _>("attempt_count")? as u32,
                        })
                    })
                    .collect()
            }

            /// Records a batch of status events in one transaction: the campaigns read `FOR
            /// SHARE` first (a campaign being completed is either completed before this batch
            /// reads it or after it commits), the calls locked in id order, the changes decided
            /// ([`crate::store::record::decide`]), then calls, timeline and stats written.
            pub async fn record_events(
                pool: &Pool,
                events: &[StatusEvent],
                samples: &mut (dyn FnMut() -> f64 + Send),
                cql: Option<&crate::timeline::CqlTimeline>,
                retry_not_before_ms: u64,
            ) -> Result<RecordReport, StoreError> {
                if events.is_empty() {
                    return Ok(RecordReport::default());
                }
                let now_ms = chrono::Utc::now().timestamp_millis() as u64;
                let mut tx = begin(pool).await?;
                let mut known = Known::default();
                let campaigns = sorted_unique(events.iter().map(|e| e.campaign_id));
                load_campaigns(&mut tx, &campaigns, &mut known.policies, &mut known.completed).await?;
                (known.calls, known.streams) = lock_calls(&mut tx, &sorted_unique(events.iter().map(|e| e.call_id))).await?;
                // An event naming another campaign than its call's: the call's campaign rules.
                let others = sorted_unique(known.calls.values().map(|(c, _)| *c).filter(|c| !known.policies.contains_key(c)));
                load_campaigns(&mut tx, &others, &mut known.policies, &mut known.completed).await?;
                let d = crate::store::record::decide(events, &mut known, now_ms, retry_not_before_ms, samples);
                write_calls(&mut tx, &d.changed, &d.event_seqs).await?;
                write_timeline(&mut tx, cql, &d.timeline).await?;
                write_stats(&mut tx, &d.deltas).await?;
                super::super::events::$module::append(&mut tx, &d.events).await?;
                tx.commit().await?;
                Ok(d.report)
            }

            /// The batch's calls, locked in id order: the reaper and a recorder resolving the
            /// same call serialize (the second sees the first's answer), and never deadlock.
            async fn lock_calls(
                tx: &mut sqlx::Transaction<'static, Db>,
                call_ids: &[Uuid],
            ) -> Result<(HashMap<Uuid, (Uuid, CallState)>, HashMap<Uuid, (String, u32)>), StoreError> {
                let mut states = HashMap::new();
                let mut streams = HashMap::new();
                for chunk in call_ids.chunks(LOOKUP_CHUNK) {
                    let mut q = QueryBuilder::<Db>::new(
                        "SELECT campaign_id, id, status, attempt_count, retry_delay_ms, phone_number, event_seq FROM calls WHERE id IN (",
                    );
                    let mut sep = q.separated(", ");
                    for id in chunk {
                        sep.push_bind(*id);
                    }
                    q.push(") ORDER BY id");
                    q.push($for_update);
                    for r in q.build().fetch_all(&mut **tx).await? {
                        let s: String = r.try_get("status")?;
                        let state = CallState {
                            status: CallStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("call status {s:?}")))?,
                            attempt_count: r.try_get::<i32, _>("attempt_count")? as u32,
                            retry_delay_ms: r.try_get::<Option<i64>, _>("retry_delay_ms")?.map(|v| v.max(0) as u64),
                        };
                        states.insert(r.try_get("id")?, (r.try_get("campaign_id")?, state));
                        streams.insert(r.try_get("id")?, (r.try_get("phone_number")?, r.try_get::<i32, _>("event_seq")? as u32));
                    }
                }
                Ok((states, streams))
            }

            async fn write_calls(
                tx: &mut sqlx::Transaction<'static, Db>,
                changed: &HashMap<Uuid, (Uuid, lifecycle::Change)>,
                event_seqs: &HashMap<Uuid, u32>,
            ) -> Result<(), StoreError> {
                let rows: Vec<(&Uuid, &(Uuid, lifecycle::Change))> = changed.iter().collect();
                for chunk in rows.chunks(CHUNK_ROWS / 4) {
                    let mut q = QueryBuilder::<Db>::new("WITH v(cid, id, status, attempts, next_at, delay, err, eseq) AS (");
                    q.push_values(chunk, |mut b, (id, (cid, c))| {
                        b.push_bind(*cid)
                            .push_bind(**id)
                            .push_bind(c.status.as_str())
                            .push_bind(c.attempt_count as i32)
                            .push_bind(c.next_attempt_at_ms.map(ms_to_time))
                            .push_bind(c.retry_delay_ms.map(|v| v as i64))
                            .push_bind(c.last_error.clone())
                            .push_bind(event_seqs.get(*id).map(|s| *s as i32));
                    });
                    q.push(
                        ") UPDATE calls SET status = v.status, attempt_count = v.attempts, next_attempt_at = v.next_at, \
                         retry_delay_ms = v.delay, last_error = v.err, event_seq = COALESCE(v.eseq, calls.event_seq), updated_at = ",
                    );
                    q.push_bind(now());
                    q.push(" FROM v WHERE calls.campaign_id = v.cid AND calls.id = v.id");
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// The timeline: on the CQL store (before the commit, so a failure retries the whole
            /// batch), or in the SQL table.
            async fn write_timeline(
                tx: &mut sqlx::Transaction<'static, Db>,
                cql: Option<&crate::timeline::CqlTimeline>,
                timeline: &HashMap<(Uuid, u32), TimelineEntry<'_>>,
            ) -> Result<(), StoreError> {
                let tl: Vec<&TimelineEntry<'_>> = timeline.values().collect();
                if let Some(cql) = cql {
                    let rows: Vec<crate::timeline::TimelineRow> = tl.iter().map(|(cid, e, outcome)| timeline_row(*cid, e, outcome)).collect();
                    return cql.write(&rows).await.map_err(StoreError::Timeline);
                }
                for chunk in tl.chunks(CHUNK_ROWS / 5) {
                    let mut q = QueryBuilder::<Db>::new(
                        "INSERT INTO call_attempts (campaign_id, call_id, attempt, outcome, started_at, answered_at, ended_at, \
                         duration_ms, reason, retryable, sip_code, sip_reason) ",
                    );
                    q.push_values(chunk, |mut b, (cid, e, outcome)| {
                        let r = timeline_row(*cid, e, outcome);
                        b.push_bind(r.campaign_id)
                            .push_bind(r.call_id)
                            .push_bind(r.attempt as i32)
                            .push_bind(*outcome)
                            .push_bind(r.started_at_ms.map(ms_to_time))
                            .push_bind(r.answered_at_ms.map(ms_to_time))
                            .push_bind(r.ended_at_ms.map(ms_to_time))
                            .push_bind(r.duration_ms.map(|v| v as i64))
                            .push_bind(r.reason)
                            .push_bind(r.retryable)
                            .push_bind(r.sip_code.map(i32::from))
                            .push_bind(r.sip_reason);
                    });
                    q.push(
                        " ON CONFLICT (campaign_id, call_id, attempt) DO UPDATE SET \
                         outcome = CASE WHEN excluded.outcome = 'started' THEN call_attempts.outcome ELSE excluded.outcome END, \
                         started_at = COALESCE(call_attempts.started_at, excluded.started_at), \
                         answered_at = COALESCE(excluded.answered_at, call_attempts.answered_at), \
                         ended_at = COALESCE(excluded.ended_at, call_attempts.ended_at), \
                         duration_ms = COALESCE(excluded.duration_ms, call_attempts.duration_ms), \
                         reason = COALESCE(excluded.reason, call_attempts.reason), \
                         retryable = COALESCE(excluded.retryable, call_attempts.retryable), \
                         sip_code = COALESCE(excluded.sip_code, call_attempts.sip_code), \
                         sip_reason = COALESCE(excluded.sip_reason, call_attempts.sip_reason)",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// The aggregates: the batch's stats rows locked in campaign-id order (two recorders
            /// never deadlock), then moved in one statement per chunk, not one per campaign: a
            /// batch of events of 1,000 campaigns was 1,000 round trips, with the first rows
            /// locked all the while (`bench e2e --campaigns 1000`).
            async fn write_stats(
                tx: &mut sqlx::Transaction<'static, Db>,
                deltas: &std::collections::BTreeMap<Uuid, Delta>,
            ) -> Result<(), StoreError> {
                let rows: Vec<(&Uuid, &Delta)> = deltas.iter().collect();
                for chunk in rows.chunks(CHUNK_ROWS / 8) {
                    // SQLite has one writer at a time and no row locks: nothing to order.
                    if $row_locks {
                        let mut q = QueryBuilder::<Db>::new("SELECT campaign_id FROM campaign_stats WHERE campaign_id IN (");
                        let mut sep = q.separated(", ");
                        for (id, _) in chunk {
                            sep.push_bind(**id);
                        }
                        q.push(") ORDER BY campaign_id");
                        q.push($for_update);
                        q.build().execute(&mut **tx).await?;
                    }
                    let mut q = QueryBuilder::<Db>::new(
                        "WITH v(cid, p, q, ip, c, f, a, r, f_busy, f_no_answer, f_rejected, f_invalid, f_failed, f_unknown) AS (",
                    );
                    q.push_values(chunk, |mut b, (id, d)| {
                        b.push_bind(**id)
                            .push_bind(d.pending)
                            .push_bind(d.queued)
                            .push_bind(d.in_progress)
                            .push_bind(d.completed)
                            .push_bind(d.failed)
                            .push_bind(d.attempts)
                            .push_bind(d.retries);
                        for n in d.failed_by {
                            b.push_bind(n);
                        }
                    });
                    q.push(
                        ") UPDATE campaign_stats SET pending_calls = pending_calls + v.p, queued_calls = queued_calls + v.q, \
                         in_progress_calls = in_progress_calls + v.ip, completed_calls = completed_calls + v.c, \
                         failed_calls = failed_calls + v.f, attempts_total = attempts_total + v.a, \
                         retries_attempted = retries_attempted + v.r, failed_busy = failed_busy + v.f_busy, \
                         failed_no_answer = failed_no_answer + v.f_no_answer, failed_rejected = failed_rejected + v.f_rejected, \
                         failed_invalid_number = failed_invalid_number + v.f_invalid, failed_failed = failed_failed + v.f_failed, \
                         failed_unknown_outcome = failed_unknown_outcome + v.f_unknown \
                         FROM v WHERE campaign_stats.campaign_id = v.cid",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }
        }
    };
}

// A campaign's status is read `FOR SHARE` by every writer that must not act on a campaign
// changing under it (calls created or re-queued, an outcome recorded, calls claimed or given
// back as the campaign is completed or paused): the status change waits for them, they wait
// for it and see it.
sql_store!(
    pg,
    sqlx::Postgres,
    begin = "BEGIN",
    gate = super::no_gate,
    skip_locked = " FOR UPDATE SKIP LOCKED",
    claim_in = ("= ANY (ARRAY(", "))"),
    for_share = " FOR SHARE",
    for_update = " FOR UPDATE",
    writing_ctes = true,
    row_locks = true
);
// SQLite has one writer at a time (BEGIN IMMEDIATE): claims cannot overlap without row locks.
sql_store!(
    lite,
    sqlx::Sqlite,
    begin = "BEGIN IMMEDIATE",
    gate = super::write_gate,
    skip_locked = "",
    claim_in = ("IN (", ")"),
    for_share = "",
    for_update = "",
    writing_ctes = false,
    row_locks = false
);
