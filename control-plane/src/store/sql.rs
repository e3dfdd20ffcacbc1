//! The SQL of the store, written once and expanded for each backend by `sql_store!`.

/// Rows per multi-row INSERT: under both backends' bind-parameter limits (PostgreSQL 65535,
/// SQLite 32766) with up to 10 columns.
const CHUNK_ROWS: usize = 2000;
/// Numbers per `IN (…)` look-up.
const LOOKUP_CHUNK: usize = 1000;

const CAMPAIGN_COLUMNS: &str = "id, name, description, time_zone, max_concurrent_calls, retry_max_attempts, \
     retry_base_delay_ms, retry_max_delay_ms, retry_jitter, status, target_count, created_at, updated_at, \
     started_at, completed_at";
const CALL_COLUMNS: &str = "id, campaign_id, phone_number, metadata, status, attempt_count, next_attempt_at, last_error, created_at, updated_at";
const LIVE_CALL_CONFLICT: &str =
    "ON CONFLICT (campaign_id, phone_number) WHERE status IN ('pending', 'queued', 'in_progress') DO NOTHING";

fn now() -> chrono::DateTime<chrono::Utc> {
    use chrono::SubsecRound;
    // Both backends keep microseconds; answer with what a later read returns.
    chrono::Utc::now().trunc_subsecs(6)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

macro_rules! sql_store {
    ($module:ident, $db:ty, begin = $begin:literal) => {
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
                is_unique_violation, now, CALL_COLUMNS, CAMPAIGN_COLUMNS, CHUNK_ROWS, LIVE_CALL_CONFLICT, LOOKUP_CHUNK,
            };
            use crate::store::{CallQuery, StoreError};

            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type Conn = <Db as sqlx::Database>::Connection;
            type DbRow = <Db as sqlx::Database>::Row;

            async fn begin(pool: &Pool) -> Result<sqlx::Transaction<'static, Db>, StoreError> {
                Ok(pool.begin_with($begin).await?)
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
                    retry_policy: RetryPolicy {
                        max_attempts: row.try_get::<i32, _>("retry_max_attempts")? as u32,
                        base_delay: Duration::from_millis(row.try_get::<i64, _>("retry_base_delay_ms")? as u64),
                        max_delay: Duration::from_millis(row.try_get::<i64, _>("retry_max_delay_ms")? as u64),
                        jitter: row.try_get("retry_jitter")?,
                    },
                    business_hours: hours,
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
                        "INSERT INTO calls (campaign_id, id, phone_number, metadata, status, attempt_count, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut b, (phone, meta)| {
                        b.push_bind(campaign_id)
                            .push_bind(Uuid::now_v7())
                            .push_bind(*phone)
                            .push_bind(Json(*meta))
                            .push_bind(CallStatus::Pending.as_str())
                            .push_bind(0i32)
                            .push_bind(at)
                            .push_bind(at);
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
            async fn open_status(conn: &mut Conn, id: Uuid) -> Result<CampaignStatus, StoreError> {
                let row = sqlx::query("SELECT status FROM campaigns WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or(StoreError::NotFound("campaign"))?;
                let status = campaign_status(&row)?;
                if status == CampaignStatus::Completed {
                    return Err(StoreError::Conflict("the campaign is completed; it takes no new calls".into()));
                }
                Ok(status)
            }

            async fn fetch_campaign(conn: &mut Conn, id: Uuid) -> Result<Campaign, StoreError> {
                let row = sqlx::query(&format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or(StoreError::NotFound("campaign"))?;
                let mut hours = load_hours(conn, &[id]).await?;
                campaign_from_row(&row, hours.remove(&id).unwrap_or_default())
            }

            pub async fn create_campaign(pool: &Pool, c: &NewCampaign) -> Result<Campaign, StoreError> {
                let s = &c.settings;
                let at = now();
                let id = Uuid::now_v7();
                let mut tx = begin(pool).await?;
                let inserted = sqlx::query(
                    "INSERT INTO campaigns (id, name, name_key, description, time_zone, max_concurrent_calls, \
                     retry_max_attempts, retry_base_delay_ms, retry_max_delay_ms, retry_jitter, status, target_count, \
                     created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)",
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
                .execute(&mut *tx)
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
                    q.build().execute(&mut *tx).await?;
                }
                sqlx::query("INSERT INTO campaign_stats (campaign_id) VALUES ($1)").bind(id).execute(&mut *tx).await?;
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
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound("campaign"))?;
                let hours = load_hours(&mut tx, &[id]).await?.remove(&id).unwrap_or_default();
                let settings = settings_from_row(&row, hours)?;
                let next: CampaignSettings = patch.apply(&settings).map_err(StoreError::Invalid)?;
                let at = now();
                let updated = sqlx::query(
                    "UPDATE campaigns SET name = $1, name_key = $2, description = $3, time_zone = $4, \
                     max_concurrent_calls = $5, retry_max_attempts = $6, retry_base_delay_ms = $7, \
                     retry_max_delay_ms = $8, retry_jitter = $9, updated_at = $10 WHERE id = $11",
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
                .execute(&mut *tx)
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
                    sqlx::query("DELETE FROM campaign_business_hours WHERE campaign_id = $1").bind(id).execute(&mut *tx).await?;
                    insert_hours(&mut tx, id, &next.business_hours).await?;
                }
                let changed: Vec<&str> = [
                    ("name", patch.name.is_some()),
                    ("description", patch.description.is_some()),
                    ("time_zone", patch.time_zone.is_some()),
                    ("max_concurrent_calls", patch.max_concurrent_calls.is_some()),
                    ("retry_policy", patch.retry_policy.is_some()),
                    ("business_hours", patch.business_hours.is_some()),
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
                if q.build().execute(&mut *tx).await?.rows_affected() == 0 {
                    let current = fetch_campaign(&mut tx, id).await?;
                    return Err(match current.status.apply(action) {
                        Err(e) => e.into(),
                        Ok(_) => StoreError::Conflict("the campaign changed while this request ran; send it again".into()),
                    });
                }
                insert_event(&mut tx, id, action.as_str(), json!({"status": next.as_str()}), at).await?;
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
                })
            }

            pub async fn stats(pool: &Pool, id: Uuid) -> Result<CampaignStats, StoreError> {
                let row = sqlx::query(
                    "SELECT total_calls, pending_calls, queued_calls, in_progress_calls, completed_calls, failed_calls, \
                     retries_attempted, attempts_total FROM campaign_stats WHERE campaign_id = $1",
                )
                .bind(id)
                .fetch_optional(pool)
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
                     COALESCE(SUM(attempt_count), 0) AS attempts_total \
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
                    for row in q.build().fetch_all(&mut *tx).await? {
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
                Ok(QueueTargetsResponse { queued, already_queued })
            }

            pub async fn create_call(
                pool: &Pool,
                campaign_id: Uuid,
                phone_number: &str,
                metadata: Option<&Value>,
            ) -> Result<(Call, bool), StoreError> {
                let at = now();
                let mut tx = begin(pool).await?;
                open_status(&mut tx, campaign_id).await?;
                let registered: Value = sqlx::query(
                    "SELECT metadata FROM campaign_targets WHERE campaign_id = $1 AND phone_number = $2",
                )
                .bind(campaign_id)
                .bind(phone_number)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or_else(|| {
                    FieldError::new(
                        "phone_number",
                        format!("{phone_number} is not registered with this campaign; only numbers listed when the campaign was created can be called"),
                    )
                })?
                .try_get::<Json<Value>, _>("metadata")?
                .0;
                let created = insert_pending_calls(&mut tx, campaign_id, &[(phone_number, metadata.unwrap_or(&registered))], at).await?;
                add_pending(&mut tx, campaign_id, created).await?;
                let row = sqlx::query(&format!(
                    "SELECT {CALL_COLUMNS} FROM calls WHERE campaign_id = $1 AND phone_number = $2 \
                     AND status IN ('pending', 'queued', 'in_progress')"
                ))
                .bind(campaign_id)
                .bind(phone_number)
                .fetch_one(&mut *tx)
                .await?;
                let call = call_from_row(&row)?;
                tx.commit().await?;
                Ok((call, created == 1))
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
                    "SELECT attempt, outcome, started_at, answered_at, ended_at, duration_ms, reason, retryable \
                     FROM call_attempts WHERE campaign_id = $1 AND call_id = $2 ORDER BY attempt",
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
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
                Ok(CallDetail { call, attempts })
            }
        }
    };
}

sql_store!(pg, sqlx::Postgres, begin = "BEGIN");
sql_store!(lite, sqlx::Sqlite, begin = "BEGIN IMMEDIATE");
