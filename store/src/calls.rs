//! Calls: queued for registered numbers (one live call per number), created one by one or in a
//! batch of requests, listed, read with their attempts, and found stale by the reaper.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use dialer_api::views::{Call, CallAttempt, CallDetail, QueueTargetsResponse};
use dialer_domain::FieldError;
use dialer_domain::campaign::{CallStatus, CampaignStatus};
use serde_json::{Value, json};
use sqlx::QueryBuilder;
use sqlx::types::Json;
use uuid::Uuid;

use crate::campaigns::{campaign_status, insert_event, open_status};
use crate::dialect::{Bind, Dialect, PushArg, PushList, QueryExt, RowExt};
use crate::model::{CallAnswer, CallQuery, LiveCall, NewCall};
use crate::stats::add_pending;
use crate::{CHUNK_ROWS, LOOKUP_CHUNK};
use crate::{Conflict, Corrupt, StoreError, now};

pub(crate) const CALL_COLUMNS: &str = "id, campaign_id, phone_number, metadata, status, attempt_count, next_attempt_at, last_error, created_at, updated_at, zone, hold";
pub(crate) const LIVE_CALL_CONFLICT: &str =
    "ON CONFLICT (campaign_id, phone_number) WHERE status IN ('pending', 'queued', 'in_progress') DO NOTHING";

fn call_from_row<R: RowExt>(row: &R) -> Result<Call, StoreError> {
    let s: String = row.col("status")?;
    Ok(Call {
        id: row.col("id")?,
        campaign_id: row.col("campaign_id")?,
        phone_number: row.col("phone_number")?,
        metadata: row.col::<Json<Value>>("metadata")?.0,
        status: CallStatus::parse(&s)
            .ok_or_else(|| StoreError::from(Corrupt::Value { what: "call status", value: s.clone() }))?,
        attempt_count: row.col::<i32>("attempt_count")? as u32,
        next_attempt_at: row.col("next_attempt_at")?,
        last_error: row.col("last_error")?,
        created_at: row.col("created_at")?,
        updated_at: row.col("updated_at")?,
        hold: None,
        zone: row.col("zone")?,
        held_for: row.col("hold")?,
    })
}

/// Inserts pending calls (`(id, number, metadata)`); returns how many were created (live
/// duplicates are skipped).
pub(crate) async fn insert_pending_calls<'a, D: Dialect>(
    conn: &mut D::Connection,
    campaign_id: Uuid,
    rows: &[(Uuid, &'a str, &'a Value)],
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let mut created = 0;
    for chunk in rows.chunks(CHUNK_ROWS) {
        let mut q = QueryBuilder::<D>::new(
            "INSERT INTO calls (campaign_id, id, phone_number, metadata, status, attempt_count, created_at, updated_at, zone) ",
        );
        q.push_values(chunk, |mut b, (id, phone, meta)| {
            b.push_arg(campaign_id)
                .push_arg(*id)
                .push_arg(*phone)
                .push_arg(Json(*meta))
                .push_arg(CallStatus::Pending.as_str())
                .push_arg(0i32)
                .push_arg(at)
                .push_arg(at)
                .push_arg(dialer_domain::recipient::zone_key(phone, meta));
        });
        q.push(" ").push(LIVE_CALL_CONFLICT);
        created += q.build().run(&mut *conn).await?;
    }
    Ok(created)
}

#[tracing::instrument(name = "store.queue_targets", level = "debug", skip_all)]
pub async fn queue_targets<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    targets: &[(String, Option<Value>)],
) -> Result<QueueTargetsResponse, StoreError> {
    let at = now();
    let mut tx = D::begin(pool).await?;
    open_status::<D>(&mut tx, campaign_id).await?;
    let mut queued = 0;
    for (chunk_no, chunk) in targets.chunks(LOOKUP_CHUNK).enumerate() {
        let mut q = QueryBuilder::<D>::new("SELECT phone_number, metadata FROM campaign_targets WHERE campaign_id = ");
        q.push_arg(campaign_id).push(" AND phone_number IN (");
        q.push_list(chunk.iter().map(|(phone, _)| phone.as_str()));
        q.push(")");
        let mut registered: HashMap<String, Value> = HashMap::with_capacity(chunk.len());
        for row in q.build().rows(&mut **tx).await? {
            registered.insert(row.col("phone_number")?, row.col::<Json<Value>>("metadata")?.0);
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
            rows.push((Uuid::now_v7(), phone.as_str(), meta.as_ref().unwrap_or(reg)));
        }
        queued += insert_pending_calls::<D>(&mut tx, campaign_id, &rows, at).await?;
    }
    add_pending::<D>(&mut tx, campaign_id, queued).await?;
    let already_queued = targets.len() as u64 - queued;
    insert_event::<D>(
        &mut tx,
        campaign_id,
        "targets_queued",
        json!({"queued": queued, "already_queued": already_queued}),
        at,
    )
    .await?;
    tx.commit().await?;
    Ok(QueueTargetsResponse { queued, already_queued, duplicates_merged: 0 })
}

#[tracing::instrument(name = "store.registered_numbers", level = "debug", skip_all)]
pub async fn registered_numbers<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    numbers: &[&str],
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut conn = pool.acquire().await?;
    let mut found = std::collections::HashSet::with_capacity(numbers.len());
    for chunk in numbers.chunks(LOOKUP_CHUNK) {
        let mut q = QueryBuilder::<D>::new("SELECT phone_number FROM campaign_targets WHERE campaign_id = ");
        q.push_arg(campaign_id).push(" AND phone_number IN (");
        q.push_list(chunk.iter().copied());
        q.push(")");
        for row in q.build().rows(&mut *conn).await? {
            found.insert(row.col("phone_number")?);
        }
    }
    Ok(found)
}

#[tracing::instrument(name = "store.create_call", level = "debug", skip_all)]
pub async fn create_call<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    phone_number: &str,
    metadata: Option<&Value>,
) -> Result<(Call, bool), StoreError> {
    if D::WRITING_CTES {
        // The batch statement with one request: one round trip.
        let one = [NewCall { campaign_id, phone_number: phone_number.into(), metadata: metadata.cloned() }];
        let answer = create_calls_statement(pool, &one).await?.pop();
        return answer.unwrap_or_else(|| Err(Corrupt::Broken("the batch of one gave no answer").into()));
    }
    create_call_in_transaction(pool, campaign_id, phone_number, metadata).await
}

/// [`create_call`] where writing CTEs do not exist (SQLite, one writer).
async fn create_call_in_transaction<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    phone_number: &str,
    metadata: Option<&Value>,
) -> CallAnswer {
    let at = now();
    // Few round trips, and the campaign's stats row (every new call of the campaign
    // updates it) locked only from its update to the commit.
    let mut tx = D::begin(pool).await?;
    let row = sqlx::query::<D>(
        "SELECT status, metadata FROM campaigns LEFT JOIN campaign_targets \
         ON campaign_id = id AND phone_number = $2 WHERE id = $1",
    )
    .arg(campaign_id)
    .arg(phone_number)
    .maybe_row(&mut **tx)
    .await?
    .ok_or(StoreError::NotFound("campaign"))?;
    if campaign_status(&row)? == CampaignStatus::Completed {
        return Err(StoreError::from(Conflict::CampaignCompleted));
    }
    let registered: Value = row
        .col::<Option<Json<Value>>>("metadata")?
        .ok_or_else(|| {
            FieldError::new(
                "phone_number",
                format!("{phone_number} is not registered with this campaign; only numbers listed when the campaign was created can be called"),
            )
        })?
        .0;
    let inserted = sqlx::query::<D>(&format!(
        "INSERT INTO calls (campaign_id, id, phone_number, metadata, status, attempt_count, created_at, updated_at, zone) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, $6, $7) {LIVE_CALL_CONFLICT} RETURNING {CALL_COLUMNS}"
    ))
    .arg(campaign_id)
    .arg(Uuid::now_v7())
    .arg(phone_number)
    .arg(Json(metadata.unwrap_or(&registered)))
    .arg(CallStatus::Pending.as_str())
    .arg(at)
    .arg(dialer_domain::recipient::zone_key(phone_number, metadata.unwrap_or(&registered)))
    .maybe_row(&mut **tx)
    .await?;
    let (call, created) = match inserted {
        Some(row) => {
            add_pending::<D>(&mut tx, campaign_id, 1).await?;
            (call_from_row(&row)?, true)
        }
        // The insert met the number's live call (one writer: it is there).
        None => match live_call::<D>(&mut tx, campaign_id, phone_number).await? {
            Some(call) => (call, false),
            None => return Err(Corrupt::Broken("a live call conflicted and then was not found").into()),
        },
    };
    tx.commit().await?;
    Ok((call, created))
}

/// A number's live call (pending, queued or in progress), if it has one.
async fn live_call<D: Dialect>(
    conn: &mut D::Connection,
    campaign_id: Uuid,
    phone_number: &str,
) -> Result<Option<Call>, StoreError> {
    sqlx::query::<D>(&format!(
        "SELECT {CALL_COLUMNS} FROM calls WHERE campaign_id = $1 AND phone_number = $2 \
         AND status IN ('pending', 'queued', 'in_progress')"
    ))
    .arg(campaign_id)
    .arg(phone_number)
    .maybe_row(&mut *conn)
    .await?
    .as_ref()
    .map(call_from_row)
    .transpose()
}

/// Calls for many requests at once (group commit for `POST /calls`, see
/// [`crate::CallBatcher`]; on PostgreSQL [`create_call`] is a batch of one) in
/// one statement: it locks the campaigns, inserts the new calls, updates each
/// campaign's stats row once and reads the numbers' live calls. Requests must name
/// distinct (campaign, number) pairs. An item whose live call the statement could
/// not see (committed by another transaction meanwhile) is read again after it.
/// `Err` means the batch failed as a whole (nothing written): do the items alone.
#[tracing::instrument(name = "store.create_calls", level = "debug", skip_all)]
pub async fn create_calls<D: Dialect>(pool: &sqlx::Pool<D>, reqs: &[NewCall]) -> Result<Vec<CallAnswer>, StoreError> {
    if !D::WRITING_CTES {
        let mut out = Vec::with_capacity(reqs.len());
        for r in reqs {
            out.push(create_call_in_transaction(pool, r.campaign_id, &r.phone_number, r.metadata.as_ref()).await);
        }
        return Ok(out);
    }
    create_calls_statement(pool, reqs).await
}

/// [`create_calls`] in one statement (PostgreSQL).
async fn create_calls_statement<D: Dialect>(
    pool: &sqlx::Pool<D>,
    reqs: &[NewCall],
) -> Result<Vec<CallAnswer>, StoreError> {
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
    let rows = sqlx::query::<D>(&format!(
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
        D::FOR_SHARE, D::FOR_UPDATE
    ))
    .arg(Value::Array(items).to_string())
    .arg(CallStatus::Pending.as_str())
    .arg(at)
    .rows(&mut *pool.acquire().await?)
    .await?;
    let mut by_idx: Vec<Option<D::Row>> = (0..reqs.len()).map(|_| None).collect();
    for row in rows {
        let i = row.col::<i32>("idx")? as usize;
        if let Some(slot) = by_idx.get_mut(i) {
            *slot = Some(row);
        }
    }
    let mut out = Vec::with_capacity(reqs.len());
    for (i, (r, row)) in reqs.iter().zip(by_idx).enumerate() {
        let Some(row) = row else {
            return Err(Corrupt::NoRow(i).into());
        };
        let status: Option<String> = row.col("campaign_status")?;
        out.push(match status.as_deref() {
            None => Err(StoreError::NotFound("campaign")),
            Some("completed") => {
                Err(StoreError::from(Conflict::CampaignCompleted))
            }
            Some(_) if !row.col::<bool>("registered")? => Err(FieldError::new(
                "phone_number",
                format!("{} is not registered with this campaign; only numbers listed when the campaign was created can be called", r.phone_number),
            )
            .into()),
            Some(_) => match row.col::<Option<Uuid>>("id")? {
                Some(id) => Ok((call_from_row(&row)?, id == ids[i])),
                // The live call was committed by another transaction after this
                // statement's snapshot: a new statement sees it.
                None => match live_call::<D>(&mut *pool.acquire().await?, r.campaign_id, &r.phone_number).await {
                    Ok(Some(call)) => Ok((call, false)),
                    Ok(None) => Err(StoreError::from(Conflict::OpenCallChanged)),
                    Err(e) => Err(e),
                },
            },
        });
    }
    Ok(out)
}

#[tracing::instrument(name = "store.list_calls", level = "debug", skip_all)]
pub async fn list_calls<D: Dialect>(
    pool: &sqlx::Pool<D>,
    campaign_id: Uuid,
    cq: &CallQuery,
) -> Result<Vec<Call>, StoreError> {
    let mut conn = pool.acquire().await?;
    sqlx::query::<D>("SELECT id FROM campaigns WHERE id = $1")
        .arg(campaign_id)
        .maybe_row(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("campaign"))?;
    let mut q = QueryBuilder::<D>::new(format!("SELECT {CALL_COLUMNS} FROM calls WHERE campaign_id = "));
    q.push_arg(campaign_id);
    if let Some(a) = cq.after {
        q.push(" AND id > ").push_arg(a);
    }
    if let Some(s) = cq.status {
        q.push(" AND status = ").push_arg(s.as_str());
    }
    q.push(" ORDER BY id LIMIT ").push_arg(i64::from(cq.limit));
    q.build().rows(&mut *conn).await?.iter().map(call_from_row).collect()
}

#[tracing::instrument(name = "store.get_call", level = "debug", skip_all)]
pub async fn get_call<D: Dialect>(pool: &sqlx::Pool<D>, id: Uuid) -> Result<CallDetail, StoreError> {
    let mut conn = pool.acquire().await?;
    let row = sqlx::query::<D>(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE id = $1"))
        .arg(id)
        .maybe_row(&mut *conn)
        .await?
        .ok_or(StoreError::NotFound("call"))?;
    let call = call_from_row(&row)?;
    let attempts = sqlx::query::<D>(
        "SELECT attempt, outcome, started_at, answered_at, ended_at, duration_ms, reason, retryable, \
         sip_code, sip_reason, media FROM call_attempts WHERE campaign_id = $1 AND call_id = $2 ORDER BY attempt",
    )
    .arg(call.campaign_id)
    .arg(id)
    .rows(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(CallAttempt {
            attempt: r.col::<i32>("attempt")? as u32,
            outcome: r.col("outcome")?,
            started_at: r.col("started_at")?,
            answered_at: r.col("answered_at")?,
            ended_at: r.col("ended_at")?,
            duration_ms: r.col("duration_ms")?,
            reason: r.col("reason")?,
            retryable: r.col("retryable")?,
            sip_code: r.col::<Option<i32>>("sip_code")?.map(|c| c.clamp(0, 999) as u16),
            sip_reason: r.col("sip_reason")?,
            media: r.col::<Option<String>>("media")?.and_then(|m| serde_json::from_str(&m).ok()),
        })
    })
    .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(CallDetail { call, attempts })
}

pub(crate) fn ms_to_time(ms: u64) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// Applies a batch of status events: call rows, the timeline, the aggregates, in one
/// transaction and a handful of statements (not a round trip per event).
/// Calls still queued or in progress whose attempt may be abandoned: queued (not
/// reported started) and dispatched before `queued_before`, or reported started
/// before `started_before` (dispatched before it too); oldest dispatch first.
#[tracing::instrument(name = "store.stale_calls", level = "debug", skip_all)]
pub async fn stale_calls<D: Dialect>(
    pool: &sqlx::Pool<D>,
    queued_before: DateTime<Utc>,
    started_before: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<LiveCall>, StoreError> {
    let rows = sqlx::query::<D>(
        "SELECT campaign_id, id, status, attempt_count FROM calls \
         WHERE status IN ('queued', 'in_progress') AND queued_at < $2 \
         AND ((status = 'queued' AND queued_at < $1) OR (status = 'in_progress' AND updated_at < $2)) \
         ORDER BY queued_at LIMIT $3",
    )
    .arg(queued_before)
    .arg(started_before)
    .arg(limit as i64)
    .rows(&mut *pool.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| {
            let s: String = r.col("status")?;
            Ok(LiveCall {
                campaign_id: r.col("campaign_id")?,
                id: r.col("id")?,
                started: s == "in_progress",
                attempt: r.col::<i32>("attempt_count")? as u32,
            })
        })
        .collect()
}
