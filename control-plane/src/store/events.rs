//! The SQL of the event log, the webhook endpoints and their deliveries (issue 20), written once
//! and expanded for each backend by `events_store!`.
//!
//! - [`append`](pg::append) runs inside the transactions that change calls and campaigns: an
//!   event exists exactly when its change committed (an outbox).
//! - [`sequence`](pg::sequence) numbers committed events (one sequencer at a time: the
//!   `event_sequencer` row lock), moving them from the inbox into the log.
//! - Deliveries are claimed per endpoint under the endpoint's row lock (its concurrency and token
//!   bucket hold across replicas), only at the head of their stream on that endpoint (an event is
//!   never sent before its stream's earlier events are delivered), with a lease: a row of
//!   `webhook_leases` (attempt number, stream, expiry).
//! - Fan-out is lazy: each endpoint keeps a cursor in the log, and a claim leases events straight
//!   from the log after it. A delivery row (`webhook_deliveries`) is written only for an event
//!   that must wait behind its stream's event in flight or retried, that failed, or that is dead;
//!   a delivered event with none leaves nothing but its lease, inserted and deleted.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use dialer_domain::events::{Answer, Next};
use uuid::Uuid;

/// Rows per multi-row INSERT into `events` (6 columns, under SQLite's 32,766 parameters).
const EVENT_CHUNK: usize = 2000;
/// Ids per `IN (…)` or VALUES list.
const CHUNK: usize = 1000;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether writers append events (`events.enabled`; on by default). Off, nothing is logged, so
/// neither webhooks nor the live stream see anything: for operators who want neither, and for
/// `bench webhooks` to measure what the log costs the recorder.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A numbered event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    pub seq: i64,
    pub campaign_id: Uuid,
    pub kind: String,
    pub body: String,
}

/// What one run of the sequencer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequenced {
    pub events: u64,
    /// The last number given (0: none).
    pub last_seq: i64,
}

/// An enabled endpoint as the delivery worker schedules it (its URL and secrets come with each
/// claim, [`Claim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveEndpoint {
    pub id: Uuid,
    pub max_concurrency: u32,
}

/// A delivery claimed for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub endpoint_id: Uuid,
    pub seq: i64,
    pub stream_id: Uuid,
    pub stream_seq: i32,
    /// This attempt's number (1 = first); the result is written only if it still matches.
    pub attempts: u32,
    pub window_start: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub body: String,
}

/// Deliveries claimed for an endpoint, with its URL and signing secrets as of the claim (a
/// rotation or a new URL applies from the next claim on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub url: String,
    pub secrets: Vec<String>,
    pub deliveries: Vec<ClaimedDelivery>,
}

/// A finished attempt and what follows from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub delivery: ClaimedDelivery,
    pub answer: Answer,
    pub next: Next,
}

/// A dead letter: an event an endpoint never took.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The event's log position (replay names it).
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempts: u32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
    /// The event as it would be delivered.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// Deliveries by state, for the queue-depth and dead-letter gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    pub pending: i64,
    pub sending: i64,
    pub dead: i64,
}

/// The stored form of [`dialer_domain::events::Next`] for a write.
fn state_of(next: &Next) -> &'static str {
    match next {
        Next::Delivered => "delivered",
        Next::Retry(_) => "pending",
        Next::Dead | Next::Gone => "dead",
    }
}

/// An attempt that did not deliver, as its delivery row records it (`record_attempts`).
struct Attempt {
    endpoint: Uuid,
    seq: i64,
    /// The event's stream: a lease taken from the log has no delivery row yet, and this writes it.
    stream: Uuid,
    stream_seq: i32,
    attempt: i32,
    /// The retry window's start, kept if the row has one already.
    window_start: DateTime<Utc>,
    state: &'static str,
    /// When it is due again (pending), or when it died (dead).
    next_at: DateTime<Utc>,
    code: Option<i32>,
    error: Option<String>,
}

impl Attempt {
    fn answered(f: &Finished, at: DateTime<Utc>) -> Attempt {
        Attempt {
            endpoint: f.delivery.endpoint_id,
            seq: f.delivery.seq,
            stream: f.delivery.stream_id,
            stream_seq: f.delivery.stream_seq,
            attempt: f.delivery.attempts as i32,
            window_start: f.delivery.window_start,
            state: state_of(&f.next),
            next_at: if let Next::Retry(t) = f.next { t } else { at },
            code: f.answer.code().map(i32::from),
            error: f.answer.error(),
        }
    }

    /// A lease that ran out: due again now.
    fn expired(lease: ExpiredLease, at: DateTime<Utc>) -> Attempt {
        let (endpoint, seq, stream, stream_seq, attempt, claimed_at) = lease;
        Attempt {
            endpoint,
            seq,
            stream,
            stream_seq,
            attempt,
            window_start: claimed_at,
            state: "pending",
            next_at: at,
            code: None,
            error: Some("lease expired: the sender stopped before it recorded an answer".into()),
        }
    }
}

/// A lease that ran out, as deleted: endpoint, seq, stream, stream_seq, attempt, claimed_at.
type ExpiredLease = (Uuid, i64, Uuid, i32, i32, DateTime<Utc>);

/// Why an event was buried behind its stream's dead letter (`last_error`).
const BEHIND_DEAD: &str = "an earlier event of its call or campaign is in the dead-letter store";
/// Why an endpoint's undelivered events were buried when it answered 410.
const GONE: &str = "the endpoint answered 410 Gone";

/// Bulk writes of the log, per backend: PostgreSQL binds one array per column (`UNNEST`), a
/// statement of 7 parameters whatever the batch; SQLite, which has no arrays, multi-row VALUES.
/// Measured with `bench webhooks` (PostgreSQL, 10,000 calls): multi-row VALUES of 2,000 rows × 7
/// parameters cost the recorder a third of its throughput; see the README's figures.
mod bulk {
    use chrono::{DateTime, Utc};
    use dialer_domain::events::NewEvent;
    use sqlx::QueryBuilder;
    use uuid::Uuid;

    use super::{CHUNK, EVENT_CHUNK};
    use crate::store::StoreError;

    pub(super) async fn pg_append(conn: &mut sqlx::PgConnection, events: &[NewEvent]) -> Result<(), StoreError> {
        let campaigns: Vec<Uuid> = events.iter().map(|e| e.campaign_id).collect();
        let streams: Vec<Uuid> = events.iter().map(|e| e.stream_id).collect();
        let seqs: Vec<i32> = events.iter().map(|e| e.stream_seq as i32).collect();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let bodies: Vec<&str> = events.iter().map(|e| e.body.as_str()).collect();
        let times: Vec<DateTime<Utc>> = events.iter().map(|e| e.created_at).collect();
        sqlx::query(
            "INSERT INTO event_inbox (campaign_id, stream_id, stream_seq, kind, body, created_at) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::text[], $6::timestamptz[])",
        )
        .bind(campaigns)
        .bind(streams)
        .bind(seqs)
        .bind(kinds)
        .bind(bodies)
        .bind(times)
        .execute(conn)
        .await?;
        Ok(())
    }

    pub(super) async fn lite_append(conn: &mut sqlx::SqliteConnection, events: &[NewEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks(EVENT_CHUNK) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO event_inbox (campaign_id, stream_id, stream_seq, kind, body, created_at) ",
            );
            q.push_values(chunk, |mut b, e| {
                b.push_bind(e.campaign_id)
                    .push_bind(e.stream_id)
                    .push_bind(e.stream_seq as i32)
                    .push_bind(e.kind.as_str())
                    .push_bind(e.body.as_str())
                    .push_bind(e.created_at);
            });
            q.build().execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// Numbers events, (inbox row `n`, seq) pairs: moves them from the inbox into the log (see
    /// `SEQUENCER_SETTINGS` for the plan).
    pub(super) async fn pg_number(conn: &mut sqlx::PgConnection, numbered: &[(i64, i64)]) -> Result<(), StoreError> {
        pg_pairs(
            conn,
            numbered,
            "WITH moved AS (DELETE FROM event_inbox WHERE n = ANY($1::int8[]) \
             RETURNING n, campaign_id, stream_id, stream_seq, kind, body, created_at) \
             INSERT INTO events (seq, campaign_id, stream_id, stream_seq, kind, body, created_at) \
             SELECT v.seq, m.campaign_id, m.stream_id, m.stream_seq, m.kind, m.body, m.created_at \
             FROM moved m JOIN UNNEST($1::int8[], $2::int8[]) AS v(n, seq) ON v.n = m.n",
        )
        .await
    }

    /// Runs `stmt` on PostgreSQL with `rows` bound as two arrays ($1: the firsts, $2: the seconds).
    async fn pg_pairs<A, B>(conn: &mut sqlx::PgConnection, rows: &[(A, B)], stmt: &str) -> Result<(), StoreError>
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

    pub(super) async fn lite_number(
        conn: &mut sqlx::SqliteConnection,
        numbered: &[(i64, i64)],
    ) -> Result<(), StoreError> {
        lite_pairs(
            conn,
            numbered,
            "n, seq",
            "INSERT INTO events (seq, campaign_id, stream_id, stream_seq, kind, body, created_at) \
             SELECT v.seq, i.campaign_id, i.stream_id, i.stream_seq, i.kind, i.body, i.created_at \
             FROM v JOIN event_inbox i ON i.n = v.n",
        )
        .await?;
        lite_pairs(conn, numbered, "n, seq", "DELETE FROM event_inbox WHERE n IN (SELECT n FROM v)").await
    }

    /// Runs `WITH v(<cols>) AS (VALUES …) <stmt>` on SQLite for each chunk of `rows`.
    async fn lite_pairs<A, B>(
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

    /// A claimed delivery and its event: seq, stream, stream_seq, attempts before this one,
    /// window_start, body, created_at.
    pub(super) type ClaimedRow = (i64, Uuid, i32, i32, Option<DateTime<Utc>>, String, DateTime<Utc>);

    /// A claimed row as the attempt it starts (its window starts now if this is the first).
    pub(super) fn claimed_delivery(endpoint: Uuid, r: ClaimedRow, at: DateTime<Utc>) -> super::ClaimedDelivery {
        let (seq, stream_id, stream_seq, attempts, window_start, body, created_at) = r;
        super::ClaimedDelivery {
            endpoint_id: endpoint,
            seq,
            stream_id,
            stream_seq,
            attempts: attempts as u32 + 1,
            window_start: window_start.unwrap_or(at),
            created_at,
            body,
        }
    }

    /// The claimed deliveries of an endpoint with their events. PostgreSQL is driven by the array
    /// of positions (a nested loop of key look-ups): with `IN (…)`, statistics older than the
    /// backlog made it scan the endpoint's deliveries per claim (`bench webhooks`).
    pub(super) async fn pg_claimed(
        conn: &mut sqlx::PgConnection,
        endpoint: Uuid,
        seqs: &[i64],
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT d.seq, d.stream_id, d.stream_seq, d.attempts, d.window_start, e.body, e.created_at \
             FROM UNNEST($2::int8[]) AS c(seq) JOIN webhook_deliveries d ON d.endpoint_id = $1 AND d.seq = c.seq \
             JOIN events e ON e.seq = c.seq",
        )
        .bind(endpoint)
        .bind(seqs)
        .fetch_all(conn)
        .await?)
    }

    pub(super) async fn lite_claimed(
        conn: &mut sqlx::SqliteConnection,
        endpoint: Uuid,
        seqs: &[i64],
    ) -> Result<Vec<ClaimedRow>, StoreError> {
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(CHUNK) {
            let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT d.seq, d.stream_id, d.stream_seq, d.attempts, d.window_start, e.body, e.created_at \
                 FROM webhook_deliveries d JOIN events e ON e.seq = d.seq WHERE d.endpoint_id = ",
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

    /// Deletes the leases of these attempts (endpoint, seq, attempt); those that were still held. PostgreSQL joins the arrays by key: a `VALUES` list of a batch of
    /// answers planned as a scan of the endpoint's rows once statistics lagged (`bench webhooks`).
    pub(super) async fn pg_release(
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

    fn unzip3(rows: &[(Uuid, i64, i32)]) -> (Vec<Uuid>, Vec<i64>, Vec<i32>) {
        (rows.iter().map(|r| r.0).collect(), rows.iter().map(|r| r.1).collect(), rows.iter().map(|r| r.2).collect())
    }

    pub(super) async fn lite_release(
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

    /// Deletes delivered deliveries (endpoint, seq), by key.
    pub(super) async fn pg_delivered(conn: &mut sqlx::PgConnection, rows: &[(Uuid, i64)]) -> Result<(), StoreError> {
        pg_pairs(
            conn,
            rows,
            "DELETE FROM webhook_deliveries d USING UNNEST($1::uuid[], $2::int8[]) AS v(e, s) WHERE d.endpoint_id = v.e AND d.seq = v.s",
        )
        .await
    }

    pub(super) async fn lite_delivered(
        conn: &mut sqlx::SqliteConnection,
        rows: &[(Uuid, i64)],
    ) -> Result<(), StoreError> {
        lite_pairs(
            conn,
            rows,
            "e, s",
            "DELETE FROM webhook_deliveries WHERE (endpoint_id, seq) IN (SELECT e, s FROM v)",
        )
        .await
    }

    /// New delivery rows of one endpoint, (seq, stream, stream_seq): pending and due at `at`, or
    /// dead for `buried` (the reason).
    pub(super) async fn pg_deliveries(
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

    pub(super) async fn lite_deliveries(
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
}

macro_rules! events_store {
    ($module:ident, $db:ty, $sql:ident, pg = $pg:literal, append = $append:path, number = $number:path, deliveries = $deliveries:path, claimed = $claimed:path, release = $release:path, delivered = $delivered:path) => {
        pub(crate) mod $module {
            use chrono::{DateTime, Utc};
            use std::collections::HashSet;

            use dialer_domain::events::{log_order, take_from_log, EventType, FromLog, NewEvent, Next, Subscription, Unread, Unsequenced};
            use dialer_domain::webhooks::{types_column, types_from_column, EndpointSettings, Webhook};
            use sqlx::{QueryBuilder, Row};
            use uuid::Uuid;

            use super::{
                enabled, ActiveEndpoint, Attempt, Claim, ClaimedDelivery, DeadLetter, Finished, LoggedEvent, QueueCounts, Sequenced,
                CHUNK,
            };
            use crate::store::sql::$sql::begin;
            use crate::store::sql::now;
            use crate::store::StoreError;

            type Db = $db;
            type Pool = sqlx::Pool<Db>;
            type Conn = <Db as sqlx::Database>::Connection;
            type DbRow = <Db as sqlx::Database>::Row;

            const FOR_UPDATE: &str = if $pg { " FOR UPDATE" } else { "" };

            /// Appends events in the caller's transaction (nothing when `events.enabled` is off).
            pub async fn append(conn: &mut Conn, events: &[NewEvent]) -> Result<(), StoreError> {
                if !enabled() || events.is_empty() {
                    return Ok(());
                }
                $append(conn, events).await
            }

            /// Numbers up to `limit` committed events after the last numbered one, in one
            /// transaction: moves them from the inbox into the log.
            pub async fn sequence(pool: &Pool, limit: usize) -> Result<Sequenced, StoreError> {
                let mut tx = begin(pool).await?;
                let next: i64 = sqlx::query(&format!("SELECT {SEQUENCER_SETTINGS}next_seq FROM event_sequencer WHERE id = 1{FOR_UPDATE}"))
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get("next_seq")?;
                let rows = sqlx::query(
                    "SELECT n, campaign_id, stream_id, stream_seq, kind FROM event_inbox ORDER BY n LIMIT $1",
                )
                .bind(limit as i64)
                .fetch_all(&mut **tx)
                .await?;
                if rows.is_empty() {
                    return Ok(Sequenced::default());
                }
                let batch: Vec<(i64, Uuid, Unsequenced, Option<EventType>)> = rows.iter().map(batch_row).collect::<Result<_, _>>()?;
                let order = log_order(&batch.iter().map(|b| b.2).collect::<Vec<_>>());
                let numbered: Vec<(i64, &(i64, Uuid, Unsequenced, Option<EventType>))> =
                    order.iter().enumerate().map(|(k, &i)| (next + k as i64, &batch[i])).collect();
                let pairs: Vec<(i64, i64)> = numbered.iter().map(|(seq, e)| (e.0, *seq)).collect();
                $number(&mut **tx, &pairs).await?;
                let last_seq = next + numbered.len() as i64 - 1;
                sqlx::query("UPDATE event_sequencer SET next_seq = $1 WHERE id = 1").bind(last_seq + 1).execute(&mut **tx).await?;
                tx.commit().await?;
                Ok(Sequenced { events: numbered.len() as u64, last_seq })
            }

            /// The sequencer's settings (PostgreSQL), set by its first statement. Its move must
            /// reach the inbox by key, whatever the statistics say: in `bench webhooks` a move
            /// joining the batch with an inbox that had filled with 200,000 events in seconds
            /// (nobody read the log) ran for over six minutes, its plan not captured. By key
            /// (`n = ANY`, never a scan), then a hash join of the moved rows with their numbers
            /// (never a nested loop over the batch): `EXPLAIN` with the statistics of an empty
            /// inbox shows both.
            const SEQUENCER_SETTINGS: &str = if $pg {
                "set_config('enable_seqscan', 'off', true) AS s1, set_config('enable_nestloop', 'off', true) AS s2, "
            } else {
                ""
            };

            fn batch_row(r: &DbRow) -> Result<(i64, Uuid, Unsequenced, Option<EventType>), StoreError> {
                let kind: String = r.try_get("kind")?;
                let u = Unsequenced { stream: r.try_get("stream_id")?, stream_seq: r.try_get::<i32, _>("stream_seq")? as u32 };
                Ok((r.try_get("n")?, r.try_get("campaign_id")?, u, EventType::parse(&kind)))
            }

            /// The pending deliveries of an endpoint between log positions `first` and `last` that
            /// are behind a dead letter of their stream join it in the dead-letter store (they would
            /// otherwise wait for ever: nothing is sent before its stream's earlier events). One
            /// probe of the dead letters' index decides first whether the endpoint has any.
            async fn bury_behind_dead(conn: &mut Conn, endpoint: Uuid, first: i64, last: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'dead', dead_at = $3, last_error = $5 \
                     WHERE endpoint_id = $4 AND seq BETWEEN $1 AND $2 AND state = 'pending' \
                     AND EXISTS (SELECT 1 FROM webhook_deliveries x WHERE x.endpoint_id = $4 AND x.state = 'dead') \
                     AND (SELECT min(p.stream_seq) FROM webhook_deliveries p WHERE p.endpoint_id = webhook_deliveries.endpoint_id \
                     AND p.stream_id = webhook_deliveries.stream_id AND p.state = 'dead') < webhook_deliveries.stream_seq",
                )
                .bind(first)
                .bind(last)
                .bind(at)
                .bind(endpoint)
                .bind(super::BEHIND_DEAD)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// An endpoint's cursor in the log and what it subscribes to.
            fn reader(r: &DbRow) -> Result<(i64, Subscription), StoreError> {
                let types: String = r.try_get("event_types")?;
                Ok((r.try_get("log_cursor")?, Subscription { types: types_from_column(&types), campaign: r.try_get("campaign_id")? }))
            }

            /// Narrows a query on `events` to what `sub` takes.
            fn push_subscription(q: &mut QueryBuilder<'_, Db>, sub: &Subscription) {
                if let Some(c) = sub.campaign {
                    q.push(" AND campaign_id = ").push_bind(c);
                }
                if !sub.types.is_empty() {
                    q.push(" AND kind IN (");
                    let mut sep = q.separated(", ");
                    for t in &sub.types {
                        sep.push_bind(t.as_str());
                    }
                    q.push(")");
                }
            }

            /// The last position numbered (what a reader starting now has seen).
            async fn log_head(conn: &mut Conn) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar::<_, i64>("SELECT next_seq FROM event_sequencer WHERE id = 1").fetch_one(&mut *conn).await? - 1)
            }

            /// Called with the endpoint's row locked when it stops reading the log (paused, or a
            /// 410): the events after its cursor up to the log's head that it takes get delivery
            /// rows, pending or dead (`buried`: the reason), as the former eager fan-out gave them
            /// before, and its cursor moves to the head.
            async fn unread_to_rows(conn: &mut Conn, endpoint: Uuid, buried: Option<&str>, at: DateTime<Utc>) -> Result<(), StoreError> {
                let r = sqlx::query("SELECT log_cursor, event_types, campaign_id FROM webhook_endpoints WHERE id = $1")
                    .bind(endpoint)
                    .fetch_one(&mut *conn)
                    .await?;
                let (cursor, sub) = reader(&r)?;
                let head = log_head(conn).await?;
                let mut q = QueryBuilder::<Db>::new(
                    "INSERT INTO webhook_deliveries (endpoint_id, seq, stream_id, stream_seq, state, attempts, next_attempt_at, dead_at, last_error) SELECT ",
                );
                q.push_bind(endpoint).push(", seq, stream_id, stream_seq, ").push_bind(if buried.is_some() { "dead" } else { "pending" });
                q.push(", 0, ").push_bind(at).push(", ").push_bind(buried.map(|_| at)).push(", ").push_bind(buried);
                q.push(" FROM events WHERE seq > ").push_bind(cursor).push(" AND seq <= ").push_bind(head);
                push_subscription(&mut q, &sub);
                q.push(" ON CONFLICT (endpoint_id, seq) DO NOTHING");
                q.build().execute(&mut *conn).await?;
                sqlx::query("UPDATE webhook_endpoints SET log_cursor = $2 WHERE id = $1").bind(endpoint).bind(head).execute(&mut *conn).await?;
                if buried.is_none() {
                    bury_behind_dead(conn, endpoint, cursor + 1, head, at).await?;
                }
                Ok(())
            }

            /// Numbered events after `after`, of one campaign or all, in log order.
            pub async fn read_events(pool: &Pool, after: i64, campaign: Option<Uuid>, limit: usize) -> Result<Vec<LoggedEvent>, StoreError> {
                let mut q = QueryBuilder::<Db>::new("SELECT seq, campaign_id, kind, body FROM events WHERE seq > ");
                q.push_bind(after);
                if let Some(c) = campaign {
                    q.push(" AND campaign_id = ").push_bind(c);
                }
                q.push(" ORDER BY seq LIMIT ").push_bind(limit as i64);
                q.build()
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(LoggedEvent {
                            seq: r.try_get("seq")?,
                            campaign_id: r.try_get("campaign_id")?,
                            kind: r.try_get("kind")?,
                            body: r.try_get("body")?,
                        })
                    })
                    .collect()
            }

            /// The first and last numbers the log still holds (`(0, 0)`: none yet).
            pub async fn log_bounds(pool: &Pool) -> Result<(i64, i64), StoreError> {
                let first: Option<i64> = sqlx::query_scalar("SELECT min(seq) FROM events").fetch_one(pool).await?;
                let next: i64 = sqlx::query_scalar("SELECT next_seq FROM event_sequencer WHERE id = 1").fetch_one(pool).await?;
                Ok((first.unwrap_or(next), next - 1))
            }

            /// Whether an enabled endpoint exists (then events must be numbered for it to read).
            pub async fn any_endpoint(pool: &Pool) -> Result<bool, StoreError> {
                Ok(sqlx::query("SELECT id FROM webhook_endpoints WHERE enabled LIMIT 1").fetch_optional(pool).await?.is_some())
            }

            /// Forgets up to `limit` events older than `before` that no delivery needs: numbered
            /// ones, oldest first, up to the lowest cursor of the enabled endpoints, with no
            /// delivery row or lease; and unnumbered ones (nobody read the log meanwhile: no
            /// endpoint, no live client) within the `limit` oldest, so each statement stays bounded.
            pub async fn prune_events(pool: &Pool, before: DateTime<Utc>, limit: usize) -> Result<u64, StoreError> {
                let mut tx = begin(pool).await?;
                let first: Option<i64> = sqlx::query_scalar("SELECT n FROM event_inbox ORDER BY n LIMIT 1").fetch_optional(&mut **tx).await?;
                let unnumbered = match first {
                    Some(first) => sqlx::query("DELETE FROM event_inbox WHERE n >= $1 AND n < $2 AND created_at < $3")
                        .bind(first)
                        .bind(first + limit as i64)
                        .bind(before)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected(),
                    None => 0,
                };
                // The log is in commit order, so what is older than `before` comes before its first
                // event that is not: found by walking the old ones, as an index on the time would.
                let end: Option<i64> = sqlx::query_scalar("SELECT seq FROM events WHERE created_at >= $1 ORDER BY seq LIMIT 1")
                    .bind(before)
                    .fetch_optional(&mut **tx)
                    .await?;
                // What an enabled endpoint has not read yet stays.
                let unread: Option<i64> =
                    sqlx::query_scalar("SELECT min(log_cursor) + 1 FROM webhook_endpoints WHERE enabled").fetch_one(&mut **tx).await?;
                let n = sqlx::query(
                    "DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE seq < $1 AND created_at < $2 \
                     AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w JOIN webhook_deliveries d ON d.endpoint_id = w.id AND d.seq = e.seq) \
                     AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w JOIN webhook_leases l ON l.endpoint_id = w.id AND l.seq = e.seq) \
                     ORDER BY seq LIMIT $3)",
                )
                .bind(end.unwrap_or(i64::MAX).min(unread.unwrap_or(i64::MAX)))
                .bind(before)
                .bind(limit as i64)
                .execute(&mut **tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(n + unnumbered)
            }

            const ENDPOINT_COLUMNS: &str = "id, url, description, secret, previous_secret, previous_expires_at, event_types, \
                campaign_id, enabled, disabled_reason, max_concurrency, rate_per_sec, created_at, updated_at";

            fn webhook_from_row(r: &DbRow, with_secret: bool) -> Result<Webhook, StoreError> {
                let types: String = r.try_get("event_types")?;
                let expires: Option<DateTime<Utc>> = r.try_get("previous_expires_at")?;
                Ok(Webhook {
                    id: r.try_get("id")?,
                    url: r.try_get("url")?,
                    description: r.try_get("description")?,
                    event_types: types_from_column(&types).iter().map(|t| t.as_str().to_string()).collect(),
                    campaign_id: r.try_get("campaign_id")?,
                    max_concurrency: r.try_get::<i32, _>("max_concurrency")? as u32,
                    rate_per_sec: r.try_get::<i32, _>("rate_per_sec")? as u32,
                    enabled: r.try_get("enabled")?,
                    disabled_reason: r.try_get("disabled_reason")?,
                    secret: if with_secret { Some(r.try_get("secret")?) } else { None },
                    previous_secret_expires_at: expires.filter(|t| *t > now()),
                    created_at: r.try_get("created_at")?,
                    updated_at: r.try_get("updated_at")?,
                })
            }

            async fn campaign_exists(conn: &mut Conn, id: Option<Uuid>) -> Result<(), StoreError> {
                let Some(id) = id else { return Ok(()) };
                match sqlx::query("SELECT id FROM campaigns WHERE id = $1").bind(id).fetch_optional(&mut *conn).await? {
                    Some(_) => Ok(()),
                    None => Err(dialer_domain::FieldError::new("campaign_id", "no such campaign").into()),
                }
            }

            pub async fn create_endpoint(pool: &Pool, s: &EndpointSettings, secret: &str) -> Result<Webhook, StoreError> {
                let (id, at) = (Uuid::now_v7(), now());
                let mut tx = begin(pool).await?;
                campaign_exists(&mut tx, s.subscription.campaign).await?;
                sqlx::query(
                    "INSERT INTO webhook_endpoints (id, url, description, secret, event_types, campaign_id, enabled, \
                     max_concurrency, rate_per_sec, rate_tokens, rate_at, created_at, updated_at, log_cursor) \
                     VALUES ($1, $2, $3, $4, $5, $6, true, $7, $8, $9, $10, $10, $10, \
                     (SELECT next_seq - 1 FROM event_sequencer WHERE id = 1))",
                )
                .bind(id)
                .bind(&s.url)
                .bind(&s.description)
                .bind(secret)
                .bind(types_column(&s.subscription.types))
                .bind(s.subscription.campaign)
                .bind(s.max_concurrency as i32)
                .bind(s.rate_per_sec as i32)
                .bind(f64::from(s.rate_per_sec))
                .bind(at)
                .execute(&mut **tx)
                .await?;
                let w = fetch_endpoint(&mut tx, id, true).await?;
                tx.commit().await?;
                Ok(w)
            }

            async fn fetch_endpoint(conn: &mut Conn, id: Uuid, with_secret: bool) -> Result<Webhook, StoreError> {
                let r = sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
                    .ok_or(StoreError::NotFound("webhook"))?;
                webhook_from_row(&r, with_secret)
            }

            pub async fn get_endpoint(pool: &Pool, id: Uuid) -> Result<Webhook, StoreError> {
                let mut conn = pool.acquire().await?;
                fetch_endpoint(&mut conn, id, false).await
            }

            pub async fn list_endpoints(pool: &Pool) -> Result<Vec<Webhook>, StoreError> {
                sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY id"))
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| webhook_from_row(r, false))
                    .collect()
            }

            /// Applies `patch` to the endpoint's settings (read and written under its row lock).
            pub async fn update_endpoint(
                pool: &Pool,
                id: Uuid,
                patch: &dialer_domain::webhooks::UpdateWebhookRequest,
            ) -> Result<Webhook, StoreError> {
                let mut tx = begin(pool).await?;
                let r = sqlx::query(&format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1{FOR_UPDATE}"))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or(StoreError::NotFound("webhook"))?;
                let w = webhook_from_row(&r, false)?;
                let current = EndpointSettings {
                    url: w.url,
                    description: w.description,
                    subscription: Subscription { types: types_from_column(&r.try_get::<String, _>("event_types")?), campaign: w.campaign_id },
                    max_concurrency: w.max_concurrency,
                    rate_per_sec: w.rate_per_sec,
                };
                let s = patch.apply(&current)?;
                campaign_exists(&mut tx, patch.campaign_id).await?;
                let enabled = patch.enabled.unwrap_or(w.enabled);
                // Paused: what it had not read yet waits in delivery rows (as the eager fan-out left it);
                // resumed: it reads from the log's head (what was logged meanwhile is not its).
                if w.enabled && !enabled {
                    unread_to_rows(&mut tx, id, None, now()).await?;
                }
                sqlx::query(
                    "UPDATE webhook_endpoints SET url = $2, description = $3, event_types = $4, campaign_id = $5, \
                     max_concurrency = $6, rate_per_sec = $7, enabled = $8, \
                     disabled_reason = CASE WHEN $8 THEN NULL ELSE disabled_reason END, updated_at = $9, \
                     log_cursor = CASE WHEN $10 THEN (SELECT next_seq - 1 FROM event_sequencer WHERE id = 1) ELSE log_cursor END \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(&s.url)
                .bind(&s.description)
                .bind(types_column(&s.subscription.types))
                .bind(s.subscription.campaign)
                .bind(s.max_concurrency as i32)
                .bind(s.rate_per_sec as i32)
                .bind(enabled)
                .bind(now())
                .bind(enabled && !w.enabled)
                .execute(&mut **tx)
                .await?;
                let w = fetch_endpoint(&mut tx, id, false).await?;
                tx.commit().await?;
                Ok(w)
            }

            /// Deletes an endpoint and its deliveries (dead letters too); `false`: no such endpoint.
            pub async fn delete_endpoint(pool: &Pool, id: Uuid) -> Result<bool, StoreError> {
                let mut tx = begin(pool).await?;
                // Leases, deliveries, then the endpoint: the order an answer's transaction locks them
                // in, so deleting an endpoint with answers being written cannot deadlock.
                sqlx::query("DELETE FROM webhook_leases WHERE endpoint_id = $1").bind(id).execute(&mut **tx).await?;
                sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1").bind(id).execute(&mut **tx).await?;
                let n = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1").bind(id).execute(&mut **tx).await?.rows_affected();
                tx.commit().await?;
                Ok(n == 1)
            }

            /// A new signing secret; the current one keeps signing until `keep_old_until`.
            pub async fn rotate_secret(pool: &Pool, id: Uuid, secret: &str, keep_old_until: DateTime<Utc>) -> Result<Webhook, StoreError> {
                let mut tx = begin(pool).await?;
                let n = sqlx::query(
                    "UPDATE webhook_endpoints SET previous_secret = secret, previous_expires_at = $3, secret = $2, updated_at = $4 \
                     WHERE id = $1",
                )
                .bind(id)
                .bind(secret)
                .bind(keep_old_until)
                .bind(now())
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if n == 0 {
                    return Err(StoreError::NotFound("webhook"));
                }
                let w = fetch_endpoint(&mut tx, id, true).await?;
                tx.commit().await?;
                Ok(w)
            }

            /// The enabled endpoints and their concurrency.
            pub async fn active_endpoints(pool: &Pool) -> Result<Vec<ActiveEndpoint>, StoreError> {
                sqlx::query("SELECT id, max_concurrency FROM webhook_endpoints WHERE enabled")
                    .fetch_all(pool)
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(ActiveEndpoint {
                            id: r.try_get("id")?,
                            max_concurrency: r.try_get::<i32, _>("max_concurrency")? as u32,
                        })
                    })
                    .collect()
            }

            /// Claims up to `max` due deliveries of an endpoint for one attempt each, within its
            /// concurrency (its leases, held by any replica) and its token bucket (a second of its
            /// rate at most), each at the head of its stream, leased until `lease_until`: first its
            /// delivery rows that are due (retries, and events that waited behind their stream's),
            /// then events from the log after its cursor (lazy fan-out, [`take_from_log`]).
            pub async fn claim_deliveries(
                pool: &Pool,
                endpoint: Uuid,
                max: usize,
                lease_until: DateTime<Utc>,
            ) -> Result<Claim, StoreError> {
                let at = now();
                let mut tx = begin(pool).await?;
                let Some(c) = claimable(&mut tx, endpoint, max, at).await? else {
                    return Ok(Claim::default());
                };
                let mut deliveries = claim_rows(&mut tx, endpoint, c.n, at, lease_until).await?;
                let mut cursor = c.cursor;
                if deliveries.len() < c.n {
                    let (from_log, read) = claim_from_log(&mut tx, endpoint, &c, c.n - deliveries.len(), at, lease_until).await?;
                    deliveries.extend(from_log);
                    cursor = read.unwrap_or(cursor);
                }
                sqlx::query(
                    "UPDATE webhook_endpoints SET rate_tokens = $2, rate_at = $3, in_flight = in_flight + $4, log_cursor = $5 WHERE id = $1",
                )
                .bind(endpoint)
                .bind(c.tokens - deliveries.len() as f64)
                .bind(at)
                .bind(deliveries.len() as i32)
                .bind(cursor)
                .execute(&mut **tx)
                .await?;
                deliveries.sort_by_key(|d| d.seq);
                tx.commit().await?;
                Ok(Claim { url: c.url, secrets: c.secrets, deliveries })
            }

            /// Leases up to `n` of the endpoint's due delivery rows, each the first row of its
            /// stream, of a stream with nothing in flight.
            async fn claim_rows(
                tx: &mut sqlx::Transaction<'static, Db>,
                endpoint: Uuid,
                n: usize,
                at: DateTime<Utc>,
                lease_until: DateTime<Utc>,
            ) -> Result<Vec<ClaimedDelivery>, StoreError> {
                // A row is due at the head of its stream: no earlier one of its stream is left
                // (delivered rows are deleted), found by a correlated look-up of the stream's first
                // row in `webhook_deliveries_stream`, one probe per candidate (as an anti-join,
                // PostgreSQL hashed every pending delivery per claim: 2.6 s a claim at 80,000
                // pending). Nothing of a stream with a lease goes: the endpoint's leases are read
                // once (a hashed subplan; at most its concurrency, plus dead index entries of a
                // table that churns at the delivery rate), which also excludes a leased row.
                // A claim writes leases only, never the delivery rows (migration 0012).
                let seqs: Vec<i64> = sqlx::query_scalar(
                    "INSERT INTO webhook_leases (endpoint_id, seq, attempt, claimed_at, lease_until, stream_id, stream_seq) \
                     SELECT d.endpoint_id, d.seq, d.attempts + 1, $2, $3, d.stream_id, d.stream_seq FROM webhook_deliveries d \
                     WHERE d.endpoint_id = $1 AND d.state = 'pending' AND d.next_attempt_at <= $2 \
                     AND d.stream_id NOT IN (SELECT l.stream_id FROM webhook_leases l WHERE l.endpoint_id = $1) \
                     AND d.stream_seq = (SELECT min(p.stream_seq) FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id \
                     AND p.stream_id = d.stream_id) \
                     ORDER BY d.next_attempt_at, d.seq LIMIT $4 RETURNING seq",
                )
                .bind(endpoint)
                .bind(at)
                .bind(lease_until)
                .bind(n as i64)
                .fetch_all(&mut **tx)
                .await?;
                if seqs.is_empty() {
                    return Ok(Vec::new());
                }
                let deliveries: Vec<ClaimedDelivery> =
                    $claimed(&mut **tx, endpoint, &seqs).await?.into_iter().map(|r| super::bulk::claimed_delivery(endpoint, r, at)).collect();
                if deliveries.len() != seqs.len() {
                    return Err(StoreError::Corrupt(format!("{} of {} claimed deliveries have their event", deliveries.len(), seqs.len())));
                }
                Ok(deliveries)
            }

            /// Reads the log after the endpoint's cursor and leases up to `room` events straight
            /// from it; events that must wait or are buried get delivery rows
            /// ([`take_from_log`]). Returns the leased deliveries and the last position handled.
            async fn claim_from_log(
                tx: &mut sqlx::Transaction<'static, Db>,
                endpoint: Uuid,
                c: &Claimable,
                room: usize,
                at: DateTime<Utc>,
                lease_until: DateTime<Utc>,
            ) -> Result<(Vec<ClaimedDelivery>, Option<i64>), StoreError> {
                // A few times the room: events that only queue or are passed over cost a row or
                // nothing. A scan that passed over all it read (an endpoint of some types or one
                // campaign, beside others' traffic) reads on, four times as far each time.
                let mut scan = (room * 4).clamp(64, MAX_SCAN);
                let (mut leased, mut cursor): (Vec<LogRow>, Option<i64>) = (Vec::new(), None);
                for _ in 0..8 {
                    let log: Vec<LogRow> = sqlx::query_as(
                        "SELECT seq, campaign_id, stream_id, stream_seq, kind FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                    )
                    .bind(cursor.unwrap_or(c.cursor))
                    .bind(scan as i64)
                    .fetch_all(&mut **tx)
                    .await?;
                    let take = take_step(tx, endpoint, c, &log, &leased, room - leased.len(), at).await?;
                    let read_all = take.cursor.is_some() && take.cursor == log.last().map(|e| e.0);
                    cursor = take.cursor.or(cursor);
                    leased.extend(log.iter().filter(|e| take.leased.contains(&e.0)).cloned());
                    if log.len() < scan || !read_all || leased.len() == room {
                        break;
                    }
                    scan = (scan * 4).min(MAX_SCAN);
                }
                let deliveries = with_bodies(tx, endpoint, &leased, at).await?;
                insert_leases(tx, &deliveries, at, lease_until).await?;
                Ok((deliveries, cursor))
            }

            /// Rows a claim reads of the log at most in one statement.
            const MAX_SCAN: usize = 2000;

            /// [`take_from_log`] on one scan of the log (`already`: the events leased by this
            /// claim's earlier scans), its waiting and buried events written as delivery rows.
            async fn take_step(
                tx: &mut sqlx::Transaction<'static, Db>,
                endpoint: Uuid,
                c: &Claimable,
                log: &[LogRow],
                already: &[LogRow],
                room: usize,
                at: DateTime<Utc>,
            ) -> Result<FromLog, StoreError> {
                if log.is_empty() {
                    return Ok(FromLog::default());
                }
                let unread: Vec<Unread> = log
                    .iter()
                    .map(|e| Unread { seq: e.0, stream: e.2, wanted: EventType::parse(&e.4).is_some_and(|k| c.sub.wants(k, e.1)) })
                    .collect();
                let (mut busy, dead) = stream_states(tx, endpoint, &unread).await?;
                busy.extend(already.iter().map(|e| e.2));
                let take = take_from_log(&unread, &busy, &dead, room);
                let by_seq: std::collections::HashMap<i64, &LogRow> = log.iter().map(|e| (e.0, e)).collect();
                let rows = |seqs: &[i64]| -> Vec<(i64, Uuid, i32)> { seqs.iter().map(|s| (*s, by_seq[s].2, by_seq[s].3)).collect() };
                for (seqs, buried) in [(&take.queued, None), (&take.buried, Some(super::BEHIND_DEAD))] {
                    if !seqs.is_empty() {
                        $deliveries(&mut **tx, endpoint, &rows(seqs), at, buried).await?;
                    }
                }
                Ok(take)
            }

            /// The deliveries of events leased from the log (their first attempt), with their bodies.
            async fn with_bodies(
                tx: &mut sqlx::Transaction<'static, Db>,
                endpoint: Uuid,
                leased: &[LogRow],
                at: DateTime<Utc>,
            ) -> Result<Vec<ClaimedDelivery>, StoreError> {
                let seqs: Vec<i64> = leased.iter().map(|e| e.0).collect();
                let mut bodies: std::collections::HashMap<i64, (String, DateTime<Utc>)> =
                    bodies(tx, &seqs).await?.into_iter().map(|(seq, body, t)| (seq, (body, t))).collect();
                leased
                    .iter()
                    .map(|e| {
                        let (body, created_at) = bodies.remove(&e.0).ok_or_else(|| StoreError::Corrupt(format!("event {} has no body", e.0)))?;
                        Ok(ClaimedDelivery { endpoint_id: endpoint, seq: e.0, stream_id: e.2, stream_seq: e.3, attempts: 1, window_start: at, created_at, body })
                    })
                    .collect()
            }

            /// The bodies and times of these events of the log.
            async fn bodies(tx: &mut sqlx::Transaction<'static, Db>, seqs: &[i64]) -> Result<Vec<(i64, String, DateTime<Utc>)>, StoreError> {
                let mut out = Vec::with_capacity(seqs.len());
                for chunk in seqs.chunks(CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("SELECT seq, body, created_at FROM events WHERE seq IN (");
                    let mut sep = q.separated(", ");
                    for s in chunk {
                        sep.push_bind(*s);
                    }
                    q.push(")");
                    out.extend(q.build_query_as::<(i64, String, DateTime<Utc>)>().fetch_all(&mut **tx).await?);
                }
                Ok(out)
            }

            /// The streams of these events that are busy on the endpoint (a pending delivery row, or
            /// a lease) and those with a dead letter there.
            async fn stream_states(
                tx: &mut sqlx::Transaction<'static, Db>,
                endpoint: Uuid,
                unread: &[Unread],
            ) -> Result<(HashSet<Uuid>, HashSet<Uuid>), StoreError> {
                let streams: Vec<Uuid> = unread.iter().filter(|e| e.wanted).map(|e| e.stream).collect::<HashSet<_>>().into_iter().collect();
                let (mut busy, mut dead) = (HashSet::new(), HashSet::new());
                for chunk in streams.chunks(CHUNK) {
                    let mut q = QueryBuilder::<Db>::new("SELECT DISTINCT stream_id, state FROM webhook_deliveries WHERE endpoint_id = ");
                    q.push_bind(endpoint).push(" AND stream_id IN (");
                    let mut sep = q.separated(", ");
                    for s in chunk {
                        sep.push_bind(*s);
                    }
                    q.push(")");
                    for (stream, state) in q.build_query_as::<(Uuid, String)>().fetch_all(&mut **tx).await? {
                        if state == "dead" { dead.insert(stream) } else { busy.insert(stream) };
                    }
                }
                let leased: Vec<Uuid> =
                    sqlx::query_scalar("SELECT stream_id FROM webhook_leases WHERE endpoint_id = $1").bind(endpoint).fetch_all(&mut **tx).await?;
                busy.extend(leased);
                Ok((busy, dead))
            }

            /// The leases of deliveries taken from the log (their first attempt).
            async fn insert_leases(
                tx: &mut sqlx::Transaction<'static, Db>,
                leased: &[ClaimedDelivery],
                at: DateTime<Utc>,
                lease_until: DateTime<Utc>,
            ) -> Result<(), StoreError> {
                for chunk in leased.chunks(CHUNK / 2) {
                    let mut q =
                        QueryBuilder::<Db>::new("INSERT INTO webhook_leases (endpoint_id, seq, attempt, claimed_at, lease_until, stream_id, stream_seq) ");
                    q.push_values(chunk, |mut b, d| {
                        b.push_bind(d.endpoint_id)
                            .push_bind(d.seq)
                            .push_bind(d.attempts as i32)
                            .push_bind(at)
                            .push_bind(lease_until)
                            .push_bind(d.stream_id)
                            .push_bind(d.stream_seq);
                    });
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// An event of the log as a claim reads it: seq, campaign, stream, stream_seq, kind.
            type LogRow = (i64, Uuid, Uuid, i32, String);

            /// What an endpoint may send now.
            struct Claimable {
                /// Deliveries it may start.
                n: usize,
                /// Its bucket, refilled to now.
                tokens: f64,
                url: String,
                secrets: Vec<String>,
                /// Its position in the log and what it takes from it.
                cursor: i64,
                sub: Subscription,
            }

            /// A claim's settings (PostgreSQL), set by its first statement. Every statement of a
            /// claim is a look-up by key: stale statistics (a backlog queued a moment ago) must
            /// not turn one into a scan. And see `at_least_once`.
            const CLAIM_SETTINGS: &str = if $pg {
                "set_config('enable_seqscan', 'off', true) AS s1, set_config('enable_sort', 'off', true) AS s2, \
                 set_config('synchronous_commit', 'off', true) AS s3, "
            } else {
                ""
            };

            /// Locks the endpoint's row: how many deliveries it may start now (`None`: none, or
            /// disabled), its URL and the secrets that sign now.
            async fn claimable(
                tx: &mut sqlx::Transaction<'static, Db>,
                endpoint: Uuid,
                max: usize,
                at: DateTime<Utc>,
            ) -> Result<Option<Claimable>, StoreError> {
                let Some(r) = sqlx::query(&format!(
                    "SELECT {CLAIM_SETTINGS}enabled, max_concurrency, rate_per_sec, rate_tokens, rate_at, url, secret, \
                     previous_secret, previous_expires_at, in_flight, log_cursor, event_types, campaign_id \
                     FROM webhook_endpoints WHERE id = $1{FOR_UPDATE}"
                ))
                .bind(endpoint)
                .fetch_optional(&mut **tx)
                .await?
                else {
                    return Ok(None);
                };
                if !r.try_get::<bool, _>("enabled")? {
                    return Ok(None);
                }
                let rate = f64::from(r.try_get::<i32, _>("rate_per_sec")?);
                let since: DateTime<Utc> = r.try_get("rate_at")?;
                let elapsed = (at - since).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6;
                let tokens = (r.try_get::<f64, _>("rate_tokens")? + elapsed * rate).min(rate);
                let free = (r.try_get::<i32, _>("max_concurrency")? - r.try_get::<i32, _>("in_flight")?).max(0) as usize;
                let n = max.min(free).min(tokens.max(0.0).floor() as usize);
                if n == 0 {
                    return Ok(None);
                }
                let (cursor, sub) = reader(&r)?;
                Ok(Some(Claimable { n, tokens, url: r.try_get("url")?, secrets: signing_secrets(&r, at), cursor, sub }))
            }

            /// The current secret, and the previous one while its rotation lasts.
            fn signing_secrets(r: &DbRow, at: DateTime<Utc>) -> Vec<String> {
                let mut secrets: Vec<String> = r.try_get("secret").into_iter().collect();
                let previous: Option<String> = r.try_get("previous_secret").ok().flatten();
                let expires: Option<DateTime<Utc>> = r.try_get("previous_expires_at").ok().flatten();
                if let (Some(p), Some(e)) = (previous, expires) {
                    if e > at {
                        secrets.push(p);
                    }
                }
                secrets
            }

            /// A claim's or an answer's transaction does not wait for its WAL flush (PostgreSQL):
            /// one lost in a crash only sends its events again, which at-least-once delivery
            /// allows, and the recorder's commits no longer queue behind a flush per claim and per
            /// batch of answers (`bench webhooks`). The sequencer's numbers are never written so:
            /// a reader may have seen them.
            async fn at_least_once(tx: &mut sqlx::Transaction<'static, Db>) -> Result<(), StoreError> {
                if $pg {
                    sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Writes finished attempts in one transaction. An answer counts only while its
            /// attempt still holds the lease (one that expired was given back, and may be another
            /// replica's attempt now): the lease is deleted, then the delivery row deleted
            /// (delivered) or updated (retry, dead).
            pub async fn finish_deliveries(pool: &Pool, done: &[Finished]) -> Result<(), StoreError> {
                if done.is_empty() {
                    return Ok(());
                }
                let at = now();
                let mut tx = begin(pool).await?;
                at_least_once(&mut tx).await?;
                let released = release_leases(&mut tx, done).await?;
                // By attempt: a late answer of an attempt whose lease expired, in the same batch as
                // the next attempt's, is dropped (one row is written once per batch).
                let held: Vec<&Finished> =
                    done.iter().filter(|f| released.contains(&(f.delivery.endpoint_id, f.delivery.seq, f.delivery.attempts as i32))).collect();
                let (delivered, others): (Vec<&Finished>, Vec<&Finished>) = held.into_iter().partition(|f| f.next == Next::Delivered);
                if !delivered.is_empty() {
                    let keys: Vec<(Uuid, i64)> = delivered.iter().map(|f| (f.delivery.endpoint_id, f.delivery.seq)).collect();
                    $delivered(&mut **tx, &keys).await?;
                }
                let attempts: Vec<Attempt> = others.iter().map(|f| Attempt::answered(f, at)).collect();
                record_attempts(&mut tx, &attempts).await?;
                for f in others {
                    match f.next {
                        Next::Dead => bury_stream(&mut tx, &f.delivery, at).await?,
                        Next::Gone => disable(&mut tx, f.delivery.endpoint_id, at).await?,
                        _ => {}
                    }
                }
                // The endpoint's row last: leases, deliveries, endpoint is the order of every
                // transaction that writes more than one of them (reclaim, deleting an endpoint).
                settle(&mut tx, released.iter().map(|h| h.0)).await?;
                tx.commit().await?;
                Ok(())
            }

            /// Deletes the leases of these answers' attempts; the (endpoint, seq, attempt) of those
            /// that still held theirs.
            async fn release_leases(
                tx: &mut sqlx::Transaction<'static, Db>,
                done: &[Finished],
            ) -> Result<HashSet<(Uuid, i64, i32)>, StoreError> {
                let attempts: Vec<(Uuid, i64, i32)> =
                    done.iter().map(|f| (f.delivery.endpoint_id, f.delivery.seq, f.delivery.attempts as i32)).collect();
                Ok($release(&mut **tx, &attempts).await?.into_iter().collect())
            }

            /// Lowers the endpoints' in-flight counts by their leases given back (one id per lease).
            async fn settle(tx: &mut sqlx::Transaction<'static, Db>, released: impl Iterator<Item = Uuid>) -> Result<(), StoreError> {
                let mut per_endpoint: std::collections::BTreeMap<Uuid, i32> = std::collections::BTreeMap::new();
                for e in released {
                    *per_endpoint.entry(e).or_default() += 1;
                }
                for (endpoint, n) in per_endpoint {
                    sqlx::query("UPDATE webhook_endpoints SET in_flight = CASE WHEN in_flight > $2 THEN in_flight - $2 ELSE 0 END WHERE id = $1")
                        .bind(endpoint)
                        .bind(n)
                        .execute(&mut **tx)
                        .await?;
                }
                Ok(())
            }

            /// Writes attempts that did not deliver to their delivery rows (still pending, or dead),
            /// inserting the row of one leased straight from the log. A row no longer pending (dead
            /// meanwhile) is left as it is.
            async fn record_attempts(tx: &mut sqlx::Transaction<'static, Db>, attempts: &[Attempt]) -> Result<(), StoreError> {
                for chunk in attempts.chunks(CHUNK / 2) {
                    let mut q = QueryBuilder::<Db>::new(
                        "INSERT INTO webhook_deliveries (endpoint_id, seq, stream_id, stream_seq, state, attempts, window_start, \
                         next_attempt_at, last_code, last_error, dead_at) ",
                    );
                    q.push_values(chunk, |mut b, a| {
                        b.push_bind(a.endpoint)
                            .push_bind(a.seq)
                            .push_bind(a.stream)
                            .push_bind(a.stream_seq)
                            .push_bind(a.state)
                            .push_bind(a.attempt)
                            .push_bind(a.window_start)
                            .push_bind(a.next_at)
                            .push_bind(a.code)
                            .push_bind(a.error.as_deref())
                            .push_bind((a.state == "dead").then_some(a.next_at));
                    });
                    q.push(
                        " ON CONFLICT (endpoint_id, seq) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, \
                         window_start = COALESCE(webhook_deliveries.window_start, excluded.window_start), \
                         next_attempt_at = excluded.next_attempt_at, last_code = excluded.last_code, last_error = excluded.last_error, \
                         dead_at = excluded.dead_at WHERE webhook_deliveries.state = 'pending'",
                    );
                    q.build().execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// The stream's later deliveries on that endpoint follow a dead one into the store.
            async fn bury_stream(conn: &mut Conn, d: &ClaimedDelivery, at: DateTime<Utc>) -> Result<(), StoreError> {
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'dead', dead_at = $4, \
                     last_error = 'an earlier event of its call or campaign is in the dead-letter store' \
                     WHERE endpoint_id = $1 AND stream_id = $2 AND stream_seq > $3 AND state = 'pending'",
                )
                .bind(d.endpoint_id)
                .bind(d.stream_id)
                .bind(d.stream_seq)
                .bind(at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// A 410 Gone: the endpoint is disabled and its undelivered events dead-lettered: its
            /// pending rows, its other attempts in flight (their answers are dropped with their
            /// leases) and what it had not read of the log yet.
            async fn disable(conn: &mut Conn, endpoint: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
                // Leases, deliveries, then the endpoint (the order of every answer's transaction).
                let in_flight: Vec<(i64, Uuid, i32)> =
                    sqlx::query_as("DELETE FROM webhook_leases WHERE endpoint_id = $1 RETURNING seq, stream_id, stream_seq")
                        .bind(endpoint)
                        .fetch_all(&mut *conn)
                        .await?;
                if !in_flight.is_empty() {
                    $deliveries(&mut *conn, endpoint, &in_flight, at, Some(super::GONE)).await?;
                }
                sqlx::query(
                    "UPDATE webhook_deliveries SET state = 'dead', dead_at = $2, last_error = COALESCE(last_error, $3) \
                     WHERE endpoint_id = $1 AND state = 'pending'",
                )
                .bind(endpoint)
                .bind(at)
                .bind(super::GONE)
                .execute(&mut *conn)
                .await?;
                let n = sqlx::query(
                    "UPDATE webhook_endpoints SET enabled = false, updated_at = $2, in_flight = 0, \
                     disabled_reason = 'the endpoint answered 410 Gone; PATCH enabled=true to resume' WHERE id = $1 AND enabled",
                )
                .bind(endpoint)
                .bind(at)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if n == 1 {
                    unread_to_rows(conn, endpoint, Some(super::GONE), at).await?;
                }
                Ok(())
            }

            /// Deliveries whose lease ran out (a replica stopped mid-send) are due again; the lost
            /// attempt counts.
            pub async fn reclaim_expired(pool: &Pool) -> Result<u64, StoreError> {
                let at = now();
                let mut tx = begin(pool).await?;
                let expired: Vec<Attempt> = sqlx::query_as(
                    "DELETE FROM webhook_leases WHERE lease_until < $1 RETURNING endpoint_id, seq, stream_id, stream_seq, attempt, claimed_at",
                )
                .bind(at)
                .fetch_all(&mut **tx)
                .await?
                .into_iter()
                .map(|l| Attempt::expired(l, at))
                .collect();
                record_attempts(&mut tx, &expired).await?;
                settle(&mut tx, expired.iter().map(|a| a.endpoint)).await?;
                tx.commit().await?;
                Ok(expired.len() as u64)
            }

            /// An endpoint's dead letters after log position `after`, in log order.
            pub async fn dead_letters(pool: &Pool, endpoint: Uuid, after: i64, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
                let rows = sqlx::query(
                    "SELECT d.seq, d.attempts, d.last_code, d.last_error, d.window_start, d.dead_at, e.kind, e.body \
                     FROM webhook_deliveries d JOIN events e ON e.seq = d.seq \
                     WHERE d.endpoint_id = $1 AND d.state = 'dead' AND d.seq > $2 ORDER BY d.seq LIMIT $3",
                )
                .bind(endpoint)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                rows.iter()
                    .map(|r| {
                        let body: String = r.try_get("body")?;
                        Ok(DeadLetter {
                            seq: r.try_get("seq")?,
                            kind: r.try_get("kind")?,
                            attempts: r.try_get::<i32, _>("attempts")? as u32,
                            last_status_code: r.try_get("last_code")?,
                            last_error: r.try_get("last_error")?,
                            first_attempt_at: r.try_get("window_start")?,
                            dead_at: r.try_get("dead_at")?,
                            event: serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                        })
                    })
                    .collect()
            }

            /// Dead letters due again with a fresh retry window: all of the endpoint's, or the
            /// streams of the given positions (a stream's dead letters go back together, so its
            /// order holds). Refused while the endpoint is disabled.
            pub async fn replay(pool: &Pool, endpoint: Uuid, seqs: Option<&[i64]>) -> Result<u64, StoreError> {
                let mut tx = begin(pool).await?;
                let enabled: Option<bool> =
                    sqlx::query_scalar("SELECT enabled FROM webhook_endpoints WHERE id = $1").bind(endpoint).fetch_optional(&mut **tx).await?;
                match enabled {
                    None => return Err(StoreError::NotFound("webhook")),
                    Some(false) => return Err(StoreError::Conflict("the endpoint is disabled; PATCH it with enabled=true, then replay".into())),
                    Some(true) => {}
                }
                let mut q = QueryBuilder::<Db>::new(
                    "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, window_start = NULL, dead_at = NULL, next_attempt_at = ",
                );
                q.push_bind(now()).push(" WHERE endpoint_id = ").push_bind(endpoint).push(" AND state = 'dead'");
                if let Some(seqs) = seqs {
                    if seqs.is_empty() {
                        return Ok(0);
                    }
                    q.push(" AND stream_id IN (SELECT stream_id FROM webhook_deliveries WHERE endpoint_id = ").push_bind(endpoint);
                    q.push(" AND state = 'dead' AND seq IN (");
                    let mut sep = q.separated(", ");
                    for s in seqs.iter().take(CHUNK) {
                        sep.push_bind(*s);
                    }
                    q.push("))");
                }
                let n = q.build().execute(&mut **tx).await?.rows_affected();
                tx.commit().await?;
                Ok(n)
            }

            /// The events of the log the enabled endpoints take and have not read yet.
            async fn unread(tx: &mut sqlx::Transaction<'static, Db>) -> Result<i64, StoreError> {
                let readers = sqlx::query("SELECT log_cursor, event_types, campaign_id FROM webhook_endpoints WHERE enabled")
                    .fetch_all(&mut **tx)
                    .await?;
                let mut n = 0;
                for r in &readers {
                    let (cursor, sub) = reader(r)?;
                    let mut q = QueryBuilder::<Db>::new("SELECT count(*) FROM events WHERE seq > ");
                    q.push_bind(cursor);
                    push_subscription(&mut q, &sub);
                    n += q.build_query_scalar::<i64>().fetch_one(&mut **tx).await?;
                }
                Ok(n)
            }

            /// Deliveries by state: the queue depth and the dead-letter store's size.
            pub async fn queue_counts(pool: &Pool) -> Result<QueueCounts, StoreError> {
                let mut c = QueueCounts::default();
                let mut tx = begin(pool).await?;
                for r in sqlx::query("SELECT state, count(*) AS n FROM webhook_deliveries GROUP BY state").fetch_all(&mut **tx).await? {
                    let n: i64 = r.try_get("n")?;
                    match r.try_get::<String, _>("state")?.as_str() {
                        "pending" => c.pending = n,
                        "dead" => c.dead = n,
                        _ => {}
                    }
                }
                // Being sent: the leased ones, pending in their rows or taken from the log.
                c.sending = sqlx::query_scalar("SELECT count(*) FROM webhook_leases").fetch_one(&mut **tx).await?;
                let leased_rows: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM webhook_leases l JOIN webhook_deliveries d ON d.endpoint_id = l.endpoint_id AND d.seq = l.seq",
                )
                .fetch_one(&mut **tx)
                .await?;
                c.pending = (c.pending - leased_rows).max(0) + unread(&mut tx).await?;
                tx.commit().await?;
                Ok(c)
            }
        }
    };
}

events_store!(
    pg,
    sqlx::Postgres,
    pg,
    pg = true,
    append = super::bulk::pg_append,
    number = super::bulk::pg_number,
    deliveries = super::bulk::pg_deliveries,
    claimed = super::bulk::pg_claimed,
    release = super::bulk::pg_release,
    delivered = super::bulk::pg_delivered
);
events_store!(
    lite,
    sqlx::Sqlite,
    lite,
    pg = false,
    append = super::bulk::lite_append,
    number = super::bulk::lite_number,
    deliveries = super::bulk::lite_deliveries,
    claimed = super::bulk::lite_claimed,
    release = super::bulk::lite_release,
    delivered = super::bulk::lite_delivered
);
