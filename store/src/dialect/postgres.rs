//! PostgreSQL: row locks, writing CTEs, and bulk writes with one array per column (`UNNEST`): a
//! statement of a few parameters whatever the batch, where a multi-row `VALUES` list is
//! parsed and planned anew for every batch size (`bench webhooks` measures the recorder with
//! them).

use chrono::{DateTime, Utc};
use dialer_domain::settings::NewTarget;
use futures::stream::BoxStream;
use sqlx::query_builder::Separated;
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::{Arg, CallWrite, ClaimAsk, ClaimedRow, Col, Dialect, Q, Tx};
use crate::StoreError;
use crate::events::InboxEvent;
use crate::model::ClaimedCall;
use crate::timeline::TimelineRow;

impl Dialect for Postgres {
    const BEGIN: &'static str = "BEGIN";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    const CLAIM_IN: (&'static str, &'static str) = ("= ANY (ARRAY(", "))");
    const FOR_SHARE: &'static str = " FOR SHARE";
    const FOR_UPDATE: &'static str = " FOR UPDATE";
    const WRITING_CTES: bool = true;
    const ROW_LOCKS: bool = true;
    const IS_POSTGRES: bool = true;

    async fn begin(pool: &sqlx::PgPool) -> Result<Tx<Postgres>, StoreError> {
        Ok(Tx::new(pool.begin_with(Self::BEGIN).await?, None))
    }

    fn bind<'q, T: Arg<'q>>(q: Q<'q, 'q, Self>, v: T) -> Q<'q, 'q, Self> {
        q.bind(v)
    }

    fn push_bind<'q, T: Arg<'q>>(qb: &mut QueryBuilder<'q, Self>, v: T) {
        qb.push_bind(v);
    }

    fn push_bind_separated<'qb, 'q, S: std::fmt::Display, T: Arg<'q>>(sep: &mut Separated<'qb, 'q, Self, S>, v: T) {
        sep.push_bind(v);
    }

    fn get<T: Col>(row: &sqlx::postgres::PgRow, column: &str) -> Result<T, sqlx::Error> {
        row.try_get(column)
    }

    fn get_at<T: Col>(row: &sqlx::postgres::PgRow, index: usize) -> Result<T, sqlx::Error> {
        row.try_get(index)
    }

    async fn execute<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::PgConnection,
    ) -> Result<u64, sqlx::Error> {
        Ok(q.execute(c).await?.rows_affected())
    }

    async fn fetch_all<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::PgConnection,
    ) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        q.fetch_all(c).await
    }

    async fn fetch_optional<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::PgConnection,
    ) -> Result<Option<sqlx::postgres::PgRow>, sqlx::Error> {
        q.fetch_optional(c).await
    }

    fn fetch<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::PgConnection,
    ) -> BoxStream<'c, Result<sqlx::postgres::PgRow, sqlx::Error>> {
        q.fetch(c)
    }

    fn insert_events<'c>(
        c: &'c mut sqlx::PgConnection,
        numbered: &'c [(i64, &'c InboxEvent<'c>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        insert_events(c, numbered)
    }

    fn insert_deliveries<'c>(
        c: &'c mut sqlx::PgConnection,
        endpoint: Uuid,
        rows: &'c [(i64, Uuid, i32)],
        at: DateTime<Utc>,
        buried: Option<&'c str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        deliveries(c, endpoint, rows, at, buried)
    }

    fn claimed_rows<'c>(
        c: &'c mut sqlx::PgConnection,
        endpoint: Uuid,
        seqs: &'c [i64],
    ) -> impl Future<Output = Result<Vec<ClaimedRow>, StoreError>> + Send + 'c {
        claimed(c, endpoint, seqs)
    }

    fn release_leases<'c>(
        c: &'c mut sqlx::PgConnection,
        attempts: &'c [(Uuid, i64, i32)],
    ) -> impl Future<Output = Result<Vec<(Uuid, i64, i32)>, StoreError>> + Send + 'c {
        release(c, attempts)
    }

    fn delete_delivered<'c>(
        c: &'c mut sqlx::PgConnection,
        rows: &'c [(Uuid, i64)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        delivered(c, rows)
    }

    fn register_targets<'c>(
        c: &'c mut sqlx::PgConnection,
        campaign_id: Uuid,
        targets: &'c [NewTarget],
        call_ids: &'c [Uuid],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'c {
        copy_targets(c, campaign_id, targets, call_ids, at)
    }

    fn lock_calls<'c>(
        c: &'c mut sqlx::PgConnection,
        ids: &'c [Uuid],
    ) -> impl Future<Output = Result<Vec<sqlx::postgres::PgRow>, StoreError>> + Send + 'c {
        lock_calls(c, ids)
    }

    fn write_calls<'c>(
        c: &'c mut sqlx::PgConnection,
        rows: &'c [CallWrite],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        write_calls(c, rows, at)
    }

    fn upsert_attempts<'c>(
        c: &'c mut sqlx::PgConnection,
        rows: &'c [TimelineRow],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        upsert_attempts(c, rows)
    }

    fn insert_contacts<'c>(
        c: &'c mut sqlx::PgConnection,
        calls: &'c [(Uuid, &'c ClaimedCall)],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        insert_contacts(c, calls, at)
    }

    fn claim_round<'c>(
        c: &'c mut sqlx::PgConnection,
        retries: bool,
        asks: &'c [ClaimAsk<'c>],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<Vec<(Uuid, ClaimedCall)>, StoreError>> + Send + 'c {
        claim_round(c, retries, asks, at)
    }
}

/// [`Dialect::claim_round`]: every ask in one statement. Each ask's ids are taken by its own
/// look-up of `calls_pending_zone` in the index's order (`LATERAL`, `SKIP LOCKED`), once (a
/// materialized CTE: a join could rescan it and claim more than the limit), then updated by `id`.
async fn claim_round(
    conn: &mut sqlx::PgConnection,
    retries: bool,
    asks: &[ClaimAsk<'_>],
    at: DateTime<Utc>,
) -> Result<Vec<(Uuid, ClaimedCall)>, StoreError> {
    if asks.is_empty() {
        return Ok(vec![]);
    }
    let cond =
        if retries { "next_attempt_at IS NOT NULL AND next_attempt_at <= $5" } else { "next_attempt_at IS NULL" };
    let sql = format!(
        "WITH asks AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[]) AS a(campaign, zone, lim, deadline)), \
         picked AS MATERIALIZED (SELECT p.id, asks.deadline FROM asks CROSS JOIN LATERAL ( \
           SELECT id FROM calls WHERE campaign_id = asks.campaign AND status = 'pending' AND zone = asks.zone AND {cond} \
           ORDER BY next_attempt_at, id LIMIT asks.lim FOR UPDATE SKIP LOCKED) p) \
         UPDATE calls SET status = 'queued', attempt_count = attempt_count + 1, event_seq = event_seq + 1, queued_at = $5, \
         updated_at = $5, dispatch_deadline = picked.deadline, republish_at = NULL \
         FROM picked WHERE calls.id = picked.id \
         RETURNING calls.campaign_id, calls.id, calls.phone_number, calls.attempt_count, calls.zone, calls.event_seq, picked.deadline"
    );
    let rows = sqlx::query(&sql)
        .bind(asks.iter().map(|a| a.campaign_id).collect::<Vec<_>>())
        .bind(asks.iter().map(|a| a.zone).collect::<Vec<_>>())
        .bind(asks.iter().map(|a| a.limit as i64).collect::<Vec<_>>())
        .bind(asks.iter().map(|a| a.deadline).collect::<Vec<_>>())
        .bind(at)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("campaign_id")?, crate::claims::claimed_call(r, r.try_get("deadline")?)?)))
        .collect()
}

/// The targets and their pending calls by `COPY … FROM STDIN` (text format): several times the
/// rows per second of multi-row `INSERT`s, which bind every value. The rows go in pieces of
/// [`COPY_PIECE_ROWS`], each sent as soon as it is written, so PostgreSQL parses and indexes one
/// piece while the next is written (one string of a million rows would keep it idle meanwhile).
async fn copy_targets(
    conn: &mut sqlx::PgConnection,
    campaign_id: Uuid,
    targets: &[NewTarget],
    call_ids: &[Uuid],
    at: DateTime<Utc>,
) -> Result<u64, StoreError> {
    if targets.is_empty() {
        return Ok(0);
    }
    let (at, campaign) = (at.format("%Y-%m-%d %H:%M:%S%.6f+00").to_string(), campaign_id.to_string());
    let metadata: Vec<String> = targets.iter().map(|t| t.metadata.to_string()).collect();
    let statement = "COPY campaign_targets (campaign_id, phone_number, metadata, created_at) FROM STDIN";
    copy(conn, statement, targets.len(), |i, out| {
        copy_row(out, &[&campaign, &targets[i].phone_number, &metadata[i], &at]);
    })
    .await?;
    let statement = "COPY calls (campaign_id, id, phone_number, metadata, status, attempt_count, created_at, \
                     updated_at, zone) FROM STDIN";
    copy(conn, statement, targets.len(), |i, out| {
        let t = &targets[i];
        let zone = dialer_domain::recipient::zone_key(&t.phone_number, &t.metadata);
        let id = call_ids[i].to_string();
        copy_row(out, &[&campaign, &id, &t.phone_number, &metadata[i], "pending", "0", &at, &at, &zone]);
    })
    .await
}

/// Rows a piece of a `COPY` carries (about 1–2 MB of text).
const COPY_PIECE_ROWS: usize = 8192;

/// Runs `statement` (a `COPY … FROM STDIN`) with rows `0..rows`, `row(i, out)` writing row `i`.
async fn copy(
    conn: &mut sqlx::PgConnection,
    statement: &str,
    rows: usize,
    mut row: impl FnMut(usize, &mut String),
) -> Result<u64, StoreError> {
    let mut sink = conn.copy_in_raw(statement).await?;
    let mut piece = String::with_capacity(COPY_PIECE_ROWS * 192);
    for start in (0..rows).step_by(COPY_PIECE_ROWS) {
        piece.clear();
        for i in start..rows.min(start + COPY_PIECE_ROWS) {
            row(i, &mut piece);
        }
        sink.send(piece.as_bytes()).await?;
    }
    Ok(sink.finish().await?)
}

/// One row of `COPY`'s text format: fields tab-separated, backslash, tab and line ends escaped.
fn copy_row(out: &mut String, fields: &[&str]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        for c in f.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                c => out.push(c),
            }
        }
    }
    out.push('\n');
}

/// Numbered events into the log: one array per column.
async fn insert_events(conn: &mut sqlx::PgConnection, numbered: &[(i64, &InboxEvent<'_>)]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (seq, campaign_id, stream_id, stream_seq, kind, body, created_at, event_id) \
         SELECT * FROM UNNEST($1::int8[], $2::uuid[], $3::uuid[], $4::int4[], $5::text[], $6::text[], \
         $7::timestamptz[], $8::uuid[])",
    )
    .bind(numbered.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
    .bind(numbered.iter().map(|(_, e)| e.c).collect::<Vec<_>>())
    .bind(numbered.iter().map(|(_, e)| e.s).collect::<Vec<_>>())
    .bind(numbered.iter().map(|(_, e)| e.q as i32).collect::<Vec<_>>())
    .bind(numbered.iter().map(|(_, e)| e.k.as_ref()).collect::<Vec<&str>>())
    .bind(numbered.iter().map(|(_, e)| e.b.as_ref()).collect::<Vec<&str>>())
    .bind(numbered.iter().map(|(_, e)| e.t).collect::<Vec<_>>())
    .bind(numbered.iter().map(|(_, e)| e.e).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs `stmt` on PostgreSQL with `rows` bound as two arrays ($1: the firsts, $2: the seconds).
async fn pairs<A, B>(conn: &mut sqlx::PgConnection, rows: &[(A, B)], stmt: &str) -> Result<(), StoreError>
where
    A: Copy,
    B: Copy,
    Vec<A>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    Vec<B>: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let firsts: Vec<A> = rows.iter().map(|r| r.0).collect();
    let seconds: Vec<B> = rows.iter().map(|r| r.1).collect();
    sqlx::query(stmt).bind(firsts).bind(seconds).execute(conn).await?;
    Ok(())
}

/// The claimed deliveries of an endpoint with their events. PostgreSQL is driven by the array
/// of positions (a nested loop of key look-ups): with `IN (…)`, statistics older than the
/// backlog made it scan the endpoint's deliveries per claim (`bench webhooks`).
async fn claimed(conn: &mut sqlx::PgConnection, endpoint: Uuid, seqs: &[i64]) -> Result<Vec<ClaimedRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT d.seq, d.stream_id, d.stream_seq, d.attempts, d.window_start, e.body, e.created_at, e.event_id, \
         e.campaign_id, e.kind FROM UNNEST($2::int8[]) AS c(seq) JOIN webhook_deliveries d ON d.endpoint_id = $1 AND d.seq = c.seq \
         JOIN events e ON e.seq = c.seq",
    )
    .bind(endpoint)
    .bind(seqs)
    .fetch_all(conn)
    .await?)
}

/// Deletes the leases of these attempts (endpoint, seq, attempt); those that were still held.
/// PostgreSQL joins the arrays by key: a `VALUES` list of a batch of answers can be planned as
/// a scan of the endpoint's rows once statistics lag.
async fn release(
    conn: &mut sqlx::PgConnection,
    attempts: &[(Uuid, i64, i32)],
) -> Result<Vec<(Uuid, i64, i32)>, StoreError> {
    let (e, s, a) = unzip3(attempts);
    Ok(sqlx::query_as(
        "DELETE FROM webhook_leases l USING UNNEST($1::uuid[], $2::int8[], $3::int4[]) AS v(e, s, a) \
         WHERE l.endpoint_id = v.e AND l.seq = v.s AND l.attempt = v.a RETURNING l.endpoint_id, l.seq, l.attempt",
    )
    .bind(e)
    .bind(s)
    .bind(a)
    .fetch_all(conn)
    .await?)
}

/// Deletes delivered deliveries (endpoint, seq), by key.
async fn delivered(conn: &mut sqlx::PgConnection, rows: &[(Uuid, i64)]) -> Result<(), StoreError> {
    pairs(
        conn,
        rows,
        "DELETE FROM webhook_deliveries d USING UNNEST($1::uuid[], $2::int8[]) AS v(e, s) WHERE d.endpoint_id = v.e AND d.seq = v.s",
    )
    .await
}

/// New delivery rows of one endpoint, (seq, stream, stream_seq): pending and due at `at`, or
/// dead for `buried` (the reason).
async fn deliveries(
    conn: &mut sqlx::PgConnection,
    endpoint: Uuid,
    rows: &[(i64, Uuid, i32)],
    at: DateTime<Utc>,
    buried: Option<&str>,
) -> Result<(), StoreError> {
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let streams: Vec<Uuid> = rows.iter().map(|r| r.1).collect();
    let stream_seqs: Vec<i32> = rows.iter().map(|r| r.2).collect();
    sqlx::query(
        "INSERT INTO webhook_deliveries (endpoint_id, seq, stream_id, stream_seq, state, attempts, next_attempt_at, dead_at, last_error) \
         SELECT $1, s, st, ss, CASE WHEN $6::text IS NULL THEN 'pending' ELSE 'dead' END, 0, $5, \
         CASE WHEN $6::text IS NULL THEN NULL ELSE $5 END, $6 \
         FROM UNNEST($2::int8[], $3::uuid[], $4::int4[]) AS v(s, st, ss) ON CONFLICT (endpoint_id, seq) DO NOTHING",
    )
    .bind(endpoint)
    .bind(seqs)
    .bind(streams)
    .bind(stream_seqs)
    .bind(at)
    .bind(buried)
    .execute(conn)
    .await?;
    Ok(())
}

fn unzip3(rows: &[(Uuid, i64, i32)]) -> (Vec<Uuid>, Vec<i64>, Vec<i32>) {
    (rows.iter().map(|r| r.0).collect(), rows.iter().map(|r| r.1).collect(), rows.iter().map(|r| r.2).collect())
}

/// The recorder's calls, locked in id order: one array of ids, read through the index on `id`.
async fn lock_calls(conn: &mut sqlx::PgConnection, ids: &[Uuid]) -> Result<Vec<sqlx::postgres::PgRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT campaign_id, id, status, attempt_count, retry_delay_ms, phone_number, event_seq FROM calls \
         WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// The recorder's call rows: one array per column, joined to the calls by key.
async fn write_calls(conn: &mut sqlx::PgConnection, rows: &[CallWrite], at: DateTime<Utc>) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "WITH v AS (SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::int4[], $5::timestamptz[], \
         $6::int8[], $7::text[], $8::int4[]) AS v(cid, id, status, attempts, next_at, delay, err, eseq)){}$9 \
         FROM v WHERE calls.campaign_id = v.cid AND calls.id = v.id",
        crate::recording::CALLS_SET
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.campaign_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.status).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempt_count).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.next_attempt_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.retry_delay_ms).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.last_error.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.event_seq).collect::<Vec<_>>())
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Attempt rows of the SQL timeline: one array per column, merged on conflict.
async fn upsert_attempts(conn: &mut sqlx::PgConnection, rows: &[TimelineRow]) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let time = |f: fn(&TimelineRow) -> Option<u64>| {
        rows.iter().map(|r| f(r).map(crate::calls::ms_to_time)).collect::<Vec<_>>()
    };
    let sql = format!(
        "{}SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::timestamptz[], $6::timestamptz[], \
         $7::timestamptz[], $8::int8[], $9::text[], $10::bool[], $11::int4[], $12::text[], $13::text[]){}",
        crate::recording::ATTEMPT_INSERT,
        crate::recording::ATTEMPT_MERGE
    );
    sqlx::query(&sql)
        .bind(rows.iter().map(|r| r.campaign_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.call_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.attempt as i32).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
        .bind(time(|r| r.started_at_ms))
        .bind(time(|r| r.answered_at_ms))
        .bind(time(|r| r.ended_at_ms))
        .bind(rows.iter().map(|r| r.duration_ms.map(|v| v as i64)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.reason.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.retryable).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sip_code.map(i32::from)).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sip_reason.as_deref()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.media.as_deref()).collect::<Vec<_>>())
        .execute(conn)
        .await?;
    Ok(())
}

/// The recipient's ledger of attempts: one array per column.
async fn insert_contacts(
    conn: &mut sqlx::PgConnection,
    calls: &[(Uuid, &ClaimedCall)],
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    if calls.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO contact_attempts (phone_number, call_id, attempt, campaign_id, at) \
         SELECT n, id, a, cid, $5 FROM UNNEST($1::text[], $2::uuid[], $3::int4[], $4::uuid[]) AS v(n, id, a, cid) \
         ON CONFLICT (phone_number, call_id, attempt) DO NOTHING",
    )
    .bind(calls.iter().map(|(_, c)| c.phone_number.as_str()).collect::<Vec<_>>())
    .bind(calls.iter().map(|(_, c)| c.id).collect::<Vec<_>>())
    .bind(calls.iter().map(|(_, c)| c.attempt as i32).collect::<Vec<_>>())
    .bind(calls.iter().map(|(campaign, _)| *campaign).collect::<Vec<_>>())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(())
}
