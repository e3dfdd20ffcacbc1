//! SQLite: one writer at a time (`BEGIN IMMEDIATE`, queued on this process's write gate), no
//! row locks, and bulk writes as multi-row `VALUES` (it has no arrays).

use chrono::{DateTime, Utc};
use dialer_domain::settings::NewTarget;
use futures::stream::BoxStream;
use sqlx::query_builder::Separated;
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{Arg, CallWrite, ClaimAsk, ClaimedRow, Col, Dialect, Q, Tx};
use crate::StoreError;
use crate::events::{CHUNK, EVENT_CHUNK, InboxEvent};
use crate::model::ClaimedCall;
use crate::timeline::TimelineRow;

impl Dialect for Sqlite {
    const BEGIN: &'static str = "BEGIN IMMEDIATE";
    const SKIP_LOCKED: &'static str = "";
    const CLAIM_IN: (&'static str, &'static str) = ("IN (", ")");
    const FOR_SHARE: &'static str = "";
    const FOR_UPDATE: &'static str = "";
    const WRITING_CTES: bool = false;
    const ROW_LOCKS: bool = false;
    const IS_POSTGRES: bool = false;

    async fn begin(pool: &sqlx::SqlitePool) -> Result<Tx<Sqlite>, StoreError> {
        let gate = write_gate(pool).await;
        Ok(Tx::new(pool.begin_with(Self::BEGIN).await?, Some(gate)))
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

    fn get<T: Col>(row: &sqlx::sqlite::SqliteRow, column: &str) -> Result<T, sqlx::Error> {
        row.try_get(column)
    }

    fn get_at<T: Col>(row: &sqlx::sqlite::SqliteRow, index: usize) -> Result<T, sqlx::Error> {
        row.try_get(index)
    }

    async fn execute<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::SqliteConnection,
    ) -> Result<u64, sqlx::Error> {
        Ok(q.execute(c).await?.rows_affected())
    }

    async fn fetch_all<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::SqliteConnection,
    ) -> Result<Vec<sqlx::sqlite::SqliteRow>, sqlx::Error> {
        q.fetch_all(c).await
    }

    async fn fetch_optional<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::SqliteConnection,
    ) -> Result<Option<sqlx::sqlite::SqliteRow>, sqlx::Error> {
        q.fetch_optional(c).await
    }

    fn fetch<'c, 'q: 'c, 'a: 'q>(
        q: Q<'q, 'a, Self>,
        c: &'c mut sqlx::SqliteConnection,
    ) -> BoxStream<'c, Result<sqlx::sqlite::SqliteRow, sqlx::Error>> {
        q.fetch(c)
    }

    fn insert_events<'c>(
        c: &'c mut sqlx::SqliteConnection,
        numbered: &'c [(i64, &'c InboxEvent<'c>)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        insert_events(c, numbered)
    }

    fn insert_deliveries<'c>(
        c: &'c mut sqlx::SqliteConnection,
        endpoint: Uuid,
        rows: &'c [(i64, Uuid, i32)],
        at: DateTime<Utc>,
        buried: Option<&'c str>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        deliveries(c, endpoint, rows, at, buried)
    }

    fn claimed_rows<'c>(
        c: &'c mut sqlx::SqliteConnection,
        endpoint: Uuid,
        seqs: &'c [i64],
    ) -> impl Future<Output = Result<Vec<ClaimedRow>, StoreError>> + Send + 'c {
        claimed(c, endpoint, seqs)
    }

    fn release_leases<'c>(
        c: &'c mut sqlx::SqliteConnection,
        attempts: &'c [(Uuid, i64, i32)],
    ) -> impl Future<Output = Result<Vec<(Uuid, i64, i32)>, StoreError>> + Send + 'c {
        release(c, attempts)
    }

    fn delete_delivered<'c>(
        c: &'c mut sqlx::SqliteConnection,
        rows: &'c [(Uuid, i64)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        delivered(c, rows)
    }

    fn register_targets<'c>(
        c: &'c mut sqlx::SqliteConnection,
        campaign_id: Uuid,
        targets: &'c [NewTarget],
        call_ids: &'c [Uuid],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'c {
        crate::campaigns::insert_targets::<Sqlite>(c, campaign_id, targets, call_ids, at)
    }

    fn lock_calls<'c>(
        c: &'c mut sqlx::SqliteConnection,
        ids: &'c [Uuid],
    ) -> impl Future<Output = Result<Vec<sqlx::sqlite::SqliteRow>, StoreError>> + Send + 'c {
        crate::recording::lock_calls_listed::<Sqlite>(c, ids)
    }

    fn write_calls<'c>(
        c: &'c mut sqlx::SqliteConnection,
        rows: &'c [CallWrite],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        crate::recording::write_calls_listed::<Sqlite>(c, rows, at)
    }

    fn upsert_attempts<'c>(
        c: &'c mut sqlx::SqliteConnection,
        rows: &'c [TimelineRow],
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        crate::recording::upsert_attempts_listed::<Sqlite>(c, rows)
    }

    fn insert_contacts<'c>(
        c: &'c mut sqlx::SqliteConnection,
        calls: &'c [(Uuid, &'c ClaimedCall)],
        at: DateTime<Utc>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'c {
        crate::rules::insert_contacts_listed::<Sqlite>(c, calls, at)
    }

    async fn claim_round<'c>(
        c: &'c mut sqlx::SqliteConnection,
        retries: bool,
        asks: &'c [ClaimAsk<'c>],
        at: DateTime<Utc>,
    ) -> Result<Vec<(Uuid, ClaimedCall)>, StoreError> {
        let mut out = Vec::new();
        for a in asks {
            let taken = crate::claims::claim_some::<Sqlite>(c, a, retries, at).await?;
            out.extend(taken.into_iter().map(|k| (a.campaign_id, k)));
        }
        Ok(out)
    }
}

/// SQLite has one writer at a time, and a writer that finds the database locked polls it with
/// sleeps of up to 100 ms (its busy handler). Under load the scheduler's claims, polling while
/// the recorder's batches held the lock, took a second per tick. So this process's writers of
/// one database file queue on an async mutex instead (FIFO, woken at once); the file's lock
/// still guards against other processes.
async fn write_gate(pool: &sqlx::SqlitePool) -> tokio::sync::OwnedMutexGuard<()> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex};
    static GATES: LazyLock<Mutex<HashMap<std::path::PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let file = pool.connect_options().get_filename().to_path_buf();
    let gate = GATES.lock().unwrap_or_else(|p| p.into_inner()).entry(file).or_default().clone();
    gate.lock_owned().await
}

/// Numbered events into the log, by multi-row `VALUES`.
async fn insert_events(
    conn: &mut sqlx::SqliteConnection,
    numbered: &[(i64, &InboxEvent<'_>)],
) -> Result<(), StoreError> {
    for chunk in numbered.chunks(EVENT_CHUNK) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO events (seq, campaign_id, stream_id, stream_seq, kind, body, created_at, event_id) ",
        );
        q.push_values(chunk, |mut b, (seq, e)| {
            b.push_bind(*seq)
                .push_bind(e.c)
                .push_bind(e.s)
                .push_bind(e.q as i32)
                .push_bind(e.k.to_string())
                .push_bind(e.b.to_string())
                .push_bind(e.t)
                .push_bind(e.e);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Runs `WITH v(<cols>) AS (VALUES …) <stmt>` on SQLite for each chunk of `rows`.
async fn pairs<A, B>(
    conn: &mut sqlx::SqliteConnection,
    rows: &[(A, B)],
    cols: &str,
    stmt: &str,
) -> Result<(), StoreError>
where
    A: Copy + Send + for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + 'static,
    B: Copy + Send + for<'q> sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite> + 'static,
{
    for chunk in rows.chunks(CHUNK) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(format!("WITH v({cols}) AS ("));
        q.push_values(chunk, |mut b, (x, y)| {
            b.push_bind(*x).push_bind(*y);
        });
        q.push(") ").push(stmt);
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn claimed(
    conn: &mut sqlx::SqliteConnection,
    endpoint: Uuid,
    seqs: &[i64],
) -> Result<Vec<ClaimedRow>, StoreError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(CHUNK) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT d.seq, d.stream_id, d.stream_seq, d.attempts, d.window_start, e.body, e.created_at, e.event_id, \
             e.campaign_id, e.kind FROM webhook_deliveries d JOIN events e ON e.seq = d.seq WHERE d.endpoint_id = ",
        );
        q.push_bind(endpoint).push(" AND d.seq IN (");
        let mut sep = q.separated(", ");
        for s in chunk {
            sep.push_bind(*s);
        }
        q.push(")");
        out.extend(q.build_query_as::<ClaimedRow>().fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

async fn release(
    conn: &mut sqlx::SqliteConnection,
    attempts: &[(Uuid, i64, i32)],
) -> Result<Vec<(Uuid, i64, i32)>, StoreError> {
    let mut held = Vec::with_capacity(attempts.len());
    for chunk in attempts.chunks(CHUNK) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new("WITH v(e, s, a) AS (");
        q.push_values(chunk, |mut b, (e, s, a)| {
            b.push_bind(*e).push_bind(*s).push_bind(*a);
        });
        q.push(") DELETE FROM webhook_leases WHERE (endpoint_id, seq, attempt) IN (SELECT e, s, a FROM v) RETURNING endpoint_id, seq, attempt");
        held.extend(q.build_query_as::<(Uuid, i64, i32)>().fetch_all(&mut *conn).await?);
    }
    Ok(held)
}

async fn delivered(conn: &mut sqlx::SqliteConnection, rows: &[(Uuid, i64)]) -> Result<(), StoreError> {
    pairs(conn, rows, "e, s", "DELETE FROM webhook_deliveries WHERE (endpoint_id, seq) IN (SELECT e, s FROM v)").await
}

async fn deliveries(
    conn: &mut sqlx::SqliteConnection,
    endpoint: Uuid,
    rows: &[(i64, Uuid, i32)],
    at: DateTime<Utc>,
    buried: Option<&str>,
) -> Result<(), StoreError> {
    let state = if buried.is_some() { "dead" } else { "pending" };
    for chunk in rows.chunks(CHUNK / 2) {
        let mut q = QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO webhook_deliveries (endpoint_id, seq, stream_id, stream_seq, state, attempts, next_attempt_at, dead_at, last_error) ",
        );
        q.push_values(chunk, |mut b, (seq, s, ss)| {
            b.push_bind(endpoint)
                .push_bind(*seq)
                .push_bind(*s)
                .push_bind(*ss)
                .push_bind(state)
                .push_bind(0i32)
                .push_bind(at)
                .push_bind(buried.map(|_| at))
                .push_bind(buried);
        });
        q.push(" ON CONFLICT (endpoint_id, seq) DO NOTHING");
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}
