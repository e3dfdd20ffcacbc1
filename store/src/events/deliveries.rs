//! Webhook deliveries: claims under the endpoint's row lock (its concurrency and token bucket hold
//! across replicas), leased from the endpoint's delivery rows and then straight from the log after
//! its cursor ([`dialer_domain::events::take_from_log`] decides), answers (delivered, retried,
//! dead, gone), expired leases, dead letters and their replay, and the queue's counts.

use std::collections::HashSet;

use super::endpoints::types_from_column;
use chrono::{DateTime, Utc};
use dialer_domain::events::{EventType, FromLog, Next, Subscription, Unread, take_from_log};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::log::log_head;
use super::{Attempt, CHUNK, Claim, ClaimedDelivery, DeadLetter, Finished, QueueCounts};
use crate::dialect::{Bind, Dialect, PushArg, PushList, QueryExt, RowExt, Tx};
use crate::{Conflict, Corrupt, StoreError, now};

/// The pending deliveries of an endpoint between log positions `first` and `last` that
/// are behind a dead letter of their stream join it in the dead-letter store (they would
/// otherwise wait for ever: nothing is sent before its stream's earlier events). One
/// probe of the dead letters' index decides first whether the endpoint has any.
async fn bury_behind_dead<D: Dialect>(
    conn: &mut D::Connection,
    endpoint: Uuid,
    first: i64,
    last: i64,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query::<D>(
        "UPDATE webhook_deliveries SET state = 'dead', dead_at = $3, last_error = $5 \
         WHERE endpoint_id = $4 AND seq BETWEEN $1 AND $2 AND state = 'pending' \
         AND EXISTS (SELECT 1 FROM webhook_deliveries x WHERE x.endpoint_id = $4 AND x.state = 'dead') \
         AND (SELECT min(p.stream_seq) FROM webhook_deliveries p WHERE p.endpoint_id = webhook_deliveries.endpoint_id \
         AND p.stream_id = webhook_deliveries.stream_id AND p.state = 'dead') < webhook_deliveries.stream_seq",
    )
    .arg(first)
    .arg(last)
    .arg(at)
    .arg(endpoint)
    .arg(super::BEHIND_DEAD)
    .run(&mut *conn)
    .await?;
    Ok(())
}

/// An endpoint's cursor in the log and what it subscribes to.
fn reader<R: RowExt>(r: &R) -> Result<(i64, Subscription), StoreError> {
    let types: String = r.col("event_types")?;
    Ok((r.col("log_cursor")?, Subscription { types: types_from_column(&types), campaign: r.col("campaign_id")? }))
}

/// Narrows a query on `events` to what `sub` takes.
fn push_subscription<D: Dialect>(q: &mut QueryBuilder<'_, D>, sub: &Subscription) {
    if let Some(c) = sub.campaign {
        q.push(" AND campaign_id = ").push_arg(c);
    }
    if !sub.types.is_empty() {
        q.push(" AND kind IN (");
        q.push_list(sub.types.iter().map(|t| t.as_str()));
        q.push(")");
    }
}

/// Called with the endpoint's row locked when it stops reading the log (paused, or a
/// 410): the events after its cursor up to the log's head that it takes get delivery
/// rows, pending or dead (`buried`: the reason), as the former eager fan-out gave them
/// before, and its cursor moves to the head.
pub(crate) async fn unread_to_rows<D: Dialect>(
    conn: &mut D::Connection,
    endpoint: Uuid,
    buried: Option<&str>,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let r = sqlx::query::<D>("SELECT log_cursor, event_types, campaign_id FROM webhook_endpoints WHERE id = $1")
        .arg(endpoint)
        .row(&mut *conn)
        .await?;
    let (cursor, sub) = reader(&r)?;
    let head = log_head::<D>(conn).await?;
    let mut q = QueryBuilder::<D>::new(
        "INSERT INTO webhook_deliveries (endpoint_id, seq, stream_id, stream_seq, state, attempts, next_attempt_at, dead_at, last_error) SELECT ",
    );
    q.push_arg(endpoint).push(", seq, stream_id, stream_seq, ").push_arg(if buried.is_some() {
        "dead"
    } else {
        "pending"
    });
    q.push(", 0, ").push_arg(at).push(", ").push_arg(buried.map(|_| at)).push(", ").push_arg(buried);
    q.push(" FROM events WHERE seq > ").push_arg(cursor).push(" AND seq <= ").push_arg(head);
    push_subscription(&mut q, &sub);
    q.push(" ON CONFLICT (endpoint_id, seq) DO NOTHING");
    q.build().run(&mut *conn).await?;
    sqlx::query::<D>("UPDATE webhook_endpoints SET log_cursor = $2 WHERE id = $1")
        .arg(endpoint)
        .arg(head)
        .run(&mut *conn)
        .await?;
    if buried.is_none() {
        bury_behind_dead::<D>(conn, endpoint, cursor + 1, head, at).await?;
    }
    Ok(())
}

/// Claims up to `max` due deliveries of an endpoint for one attempt each, within its
/// concurrency (its leases, held by any replica) and its token bucket (a second of its
/// rate at most), each at the head of its stream, leased until `lease_until`: first its
/// delivery rows that are due (retries, and events that waited behind their stream's),
/// then events from the log after its cursor (lazy fan-out, [`take_from_log`]).
#[tracing::instrument(name = "store.claim_deliveries", level = "debug", skip_all)]
pub async fn claim_deliveries<D: Dialect>(
    pool: &sqlx::Pool<D>,
    endpoint: Uuid,
    max: usize,
    lease_until: DateTime<Utc>,
) -> Result<Claim, StoreError> {
    let at = now();
    let mut tx = D::begin(pool).await?;
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
    sqlx::query::<D>(
        "UPDATE webhook_endpoints SET rate_tokens = $2, rate_at = $3, in_flight = in_flight + $4, log_cursor = $5 WHERE id = $1",
    )
    .arg(endpoint)
    .arg(c.tokens - deliveries.len() as f64)
    .arg(at)
    .arg(deliveries.len() as i32)
    .arg(cursor)
    .run(&mut **tx)
    .await?;
    deliveries.sort_by_key(|d| d.seq);
    tx.commit().await?;
    Ok(Claim { url: c.url, secrets: c.secrets, deliveries })
}

/// Leases up to `n` of the endpoint's due delivery rows, each the first row of its
/// stream, of a stream with nothing in flight.
async fn claim_rows<D: Dialect>(
    tx: &mut Tx<D>,
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
    let seqs: Vec<i64> = sqlx::query::<D>(
        "INSERT INTO webhook_leases (endpoint_id, seq, attempt, claimed_at, lease_until, stream_id, stream_seq) \
         SELECT d.endpoint_id, d.seq, d.attempts + 1, $2, $3, d.stream_id, d.stream_seq FROM webhook_deliveries d \
         WHERE d.endpoint_id = $1 AND d.state = 'pending' AND d.next_attempt_at <= $2 \
         AND d.stream_id NOT IN (SELECT l.stream_id FROM webhook_leases l WHERE l.endpoint_id = $1) \
         AND d.stream_seq = (SELECT min(p.stream_seq) FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id \
         AND p.stream_id = d.stream_id) \
         ORDER BY d.next_attempt_at, d.seq LIMIT $4 RETURNING seq",
    )
    .arg(endpoint)
    .arg(at)
    .arg(lease_until)
    .arg(n as i64)
    .scalars(&mut **tx)
    .await?;
    if seqs.is_empty() {
        return Ok(Vec::new());
    }
    let deliveries: Vec<ClaimedDelivery> = D::claimed_rows(&mut **tx, endpoint, &seqs)
        .await?
        .into_iter()
        .map(|r| super::claimed_delivery(endpoint, r, at))
        .collect();
    if deliveries.len() != seqs.len() {
        return Err(Corrupt::Claimed { found: deliveries.len(), claimed: seqs.len() }.into());
    }
    Ok(deliveries)
}

/// Reads the log after the endpoint's cursor and leases up to `room` events straight
/// from it; events that must wait or are buried get delivery rows
/// ([`take_from_log`]). Returns the leased deliveries and the last position handled.
async fn claim_from_log<D: Dialect>(
    tx: &mut Tx<D>,
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
        let log: Vec<LogRow> = sqlx::query::<D>(
            "SELECT seq, campaign_id, stream_id, stream_seq, kind FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .arg(cursor.unwrap_or(c.cursor))
        .arg(scan as i64)
        .tuples(&mut **tx)
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
async fn take_step<D: Dialect>(
    tx: &mut Tx<D>,
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
    let rows =
        |seqs: &[i64]| -> Vec<(i64, Uuid, i32)> { seqs.iter().map(|s| (*s, by_seq[s].2, by_seq[s].3)).collect() };
    for (seqs, buried) in [(&take.queued, None), (&take.buried, Some(super::BEHIND_DEAD))] {
        if !seqs.is_empty() {
            D::insert_deliveries(&mut **tx, endpoint, &rows(seqs), at, buried).await?;
        }
    }
    Ok(take)
}

/// The deliveries of events leased from the log (their first attempt), with their bodies.
async fn with_bodies<D: Dialect>(
    tx: &mut Tx<D>,
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
            let (body, created_at) = bodies.remove(&e.0).ok_or(Corrupt::NoBody(e.0))?;
            Ok(ClaimedDelivery {
                endpoint_id: endpoint,
                seq: e.0,
                stream_id: e.2,
                stream_seq: e.3,
                attempts: 1,
                window_start: at,
                created_at,
                body,
            })
        })
        .collect()
}

/// The bodies and times of these events of the log.
async fn bodies<D: Dialect>(tx: &mut Tx<D>, seqs: &[i64]) -> Result<Vec<(i64, String, DateTime<Utc>)>, StoreError> {
    let mut out = Vec::with_capacity(seqs.len());
    for chunk in seqs.chunks(CHUNK) {
        let mut q =
            QueryBuilder::<D>::new(format!("SELECT e.seq, {} FROM events e WHERE e.seq IN (", super::BODY_COLUMNS));
        q.push_list(chunk.iter().copied());
        q.push(")");
        for r in q.build().rows(&mut **tx).await? {
            out.push((r.col("seq")?, super::body_from_row(&r)?, r.col("created_at")?));
        }
    }
    Ok(out)
}

/// The streams of these events that are busy on the endpoint (a pending delivery row, or
/// a lease) and those with a dead letter there.
async fn stream_states<D: Dialect>(
    tx: &mut Tx<D>,
    endpoint: Uuid,
    unread: &[Unread],
) -> Result<(HashSet<Uuid>, HashSet<Uuid>), StoreError> {
    let streams: Vec<Uuid> =
        unread.iter().filter(|e| e.wanted).map(|e| e.stream).collect::<HashSet<_>>().into_iter().collect();
    let (mut busy, mut dead) = (HashSet::new(), HashSet::new());
    for chunk in streams.chunks(CHUNK) {
        let mut q =
            QueryBuilder::<D>::new("SELECT DISTINCT stream_id, state FROM webhook_deliveries WHERE endpoint_id = ");
        q.push_arg(endpoint).push(" AND stream_id IN (");
        q.push_list(chunk.iter().copied());
        q.push(")");
        for (stream, state) in q.build().tuples::<(Uuid, String)>(&mut **tx).await? {
            if state == "dead" {
                dead.insert(stream)
            } else {
                busy.insert(stream)
            };
        }
    }
    let leased: Vec<Uuid> = sqlx::query::<D>("SELECT stream_id FROM webhook_leases WHERE endpoint_id = $1")
        .arg(endpoint)
        .scalars(&mut **tx)
        .await?;
    busy.extend(leased);
    Ok((busy, dead))
}

/// The leases of deliveries taken from the log (their first attempt).
async fn insert_leases<D: Dialect>(
    tx: &mut Tx<D>,
    leased: &[ClaimedDelivery],
    at: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<(), StoreError> {
    for chunk in leased.chunks(CHUNK / 2) {
        let mut q = QueryBuilder::<D>::new(
            "INSERT INTO webhook_leases (endpoint_id, seq, attempt, claimed_at, lease_until, stream_id, stream_seq) ",
        );
        q.push_values(chunk, |mut b, d| {
            b.push_arg(d.endpoint_id)
                .push_arg(d.seq)
                .push_arg(d.attempts as i32)
                .push_arg(at)
                .push_arg(lease_until)
                .push_arg(d.stream_id)
                .push_arg(d.stream_seq);
        });
        q.build().run(&mut **tx).await?;
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
fn claim_settings<D: Dialect>() -> &'static str {
    if D::IS_POSTGRES {
        "set_config('enable_seqscan', 'off', true) AS s1, set_config('enable_sort', 'off', true) AS s2, \
         set_config('synchronous_commit', 'off', true) AS s3, "
    } else {
        ""
    }
}

/// Locks the endpoint's row: how many deliveries it may start now (`None`: none, or
/// disabled), its URL and the secrets that sign now.
async fn claimable<D: Dialect>(
    tx: &mut Tx<D>,
    endpoint: Uuid,
    max: usize,
    at: DateTime<Utc>,
) -> Result<Option<Claimable>, StoreError> {
    let Some(r) = sqlx::query::<D>(&format!(
        "SELECT {}enabled, max_concurrency, rate_per_sec, rate_tokens, rate_at, url, secret, \
         previous_secret, previous_expires_at, in_flight, log_cursor, event_types, campaign_id \
         FROM webhook_endpoints WHERE id = $1{}",
        claim_settings::<D>(),
        D::FOR_UPDATE
    ))
    .arg(endpoint)
    .maybe_row(&mut **tx)
    .await?
    else {
        return Ok(None);
    };
    if !r.col::<bool>("enabled")? {
        return Ok(None);
    }
    let rate = f64::from(r.col::<i32>("rate_per_sec")?);
    let since: DateTime<Utc> = r.col("rate_at")?;
    let elapsed = (at - since).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6;
    let tokens = (r.col::<f64>("rate_tokens")? + elapsed * rate).min(rate);
    let free = (r.col::<i32>("max_concurrency")? - r.col::<i32>("in_flight")?).max(0) as usize;
    let n = max.min(free).min(tokens.max(0.0).floor() as usize);
    if n == 0 {
        return Ok(None);
    }
    let (cursor, sub) = reader(&r)?;
    Ok(Some(Claimable { n, tokens, url: r.col("url")?, secrets: signing_secrets(&r, at), cursor, sub }))
}

/// The current secret, and the previous one while its rotation lasts.
fn signing_secrets<R: RowExt>(r: &R, at: DateTime<Utc>) -> Vec<String> {
    let mut secrets: Vec<String> = r.col("secret").into_iter().collect();
    let previous: Option<String> = r.col("previous_secret").ok().flatten();
    let expires: Option<DateTime<Utc>> = r.col("previous_expires_at").ok().flatten();
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
async fn at_least_once<D: Dialect>(tx: &mut Tx<D>) -> Result<(), StoreError> {
    if D::IS_POSTGRES {
        sqlx::query::<D>("SET LOCAL synchronous_commit = off").run(&mut **tx).await?;
    }
    Ok(())
}

/// Writes finished attempts in one transaction. An answer counts only while its
/// attempt still holds the lease (one that expired was given back, and may be another
/// replica's attempt now): the lease is deleted, then the delivery row deleted
/// (delivered) or updated (retry, dead).
#[tracing::instrument(name = "store.finish_deliveries", level = "debug", skip_all)]
pub async fn finish_deliveries<D: Dialect>(pool: &sqlx::Pool<D>, done: &[Finished]) -> Result<(), StoreError> {
    if done.is_empty() {
        return Ok(());
    }
    let at = now();
    let mut tx = D::begin(pool).await?;
    at_least_once(&mut tx).await?;
    let released = release_leases(&mut tx, done).await?;
    // By attempt: a late answer of an attempt whose lease expired, in the same batch as
    // the next attempt's, is dropped (one row is written once per batch).
    let held: Vec<&Finished> = done
        .iter()
        .filter(|f| released.contains(&(f.delivery.endpoint_id, f.delivery.seq, f.delivery.attempts as i32)))
        .collect();
    let tally: Tally = held.iter().map(|f| (f.delivery.endpoint_id, Some(f.next == Next::Delivered))).collect();
    let (delivered, others): (Vec<&Finished>, Vec<&Finished>) =
        held.into_iter().partition(|f| f.next == Next::Delivered);
    if !delivered.is_empty() {
        let keys: Vec<(Uuid, i64)> = delivered.iter().map(|f| (f.delivery.endpoint_id, f.delivery.seq)).collect();
        D::delete_delivered(&mut **tx, &keys).await?;
    }
    let attempts: Vec<Attempt> = others.iter().map(|f| Attempt::answered(f, at)).collect();
    record_attempts(&mut tx, &attempts).await?;
    for f in others {
        match f.next {
            Next::Dead => bury_stream::<D>(&mut tx, &f.delivery, at).await?,
            Next::Gone => disable::<D>(&mut tx, f.delivery.endpoint_id, at).await?,
            _ => {}
        }
    }
    // The endpoint's row last: leases, deliveries, endpoint is the order of every
    // transaction that writes more than one of them (reclaim, deleting an endpoint).
    settle(&mut tx, &tally, at).await?;
    tx.commit().await?;
    Ok(())
}

/// Per endpoint: (leases given back, answers delivered, answers failed).
struct Tally(std::collections::BTreeMap<Uuid, (i32, i64, i64)>);

/// From (endpoint, whether its answer delivered) per lease given back; `None`: the lease ran
/// out, which says nothing of the endpoint.
impl FromIterator<(Uuid, Option<bool>)> for Tally {
    fn from_iter<I: IntoIterator<Item = (Uuid, Option<bool>)>>(leases: I) -> Tally {
        let mut per_endpoint = std::collections::BTreeMap::new();
        for (endpoint, delivered) in leases {
            let t: &mut (i32, i64, i64) = per_endpoint.entry(endpoint).or_default();
            t.0 += 1;
            match delivered {
                Some(true) => t.1 += 1,
                Some(false) => t.2 += 1,
                None => {}
            }
        }
        Tally(per_endpoint)
    }
}

/// Deletes the leases of these answers' attempts; the (endpoint, seq, attempt) of those
/// that still held theirs.
async fn release_leases<D: Dialect>(
    tx: &mut Tx<D>,
    done: &[Finished],
) -> Result<HashSet<(Uuid, i64, i32)>, StoreError> {
    let attempts: Vec<(Uuid, i64, i32)> =
        done.iter().map(|f| (f.delivery.endpoint_id, f.delivery.seq, f.delivery.attempts as i32)).collect();
    Ok(D::release_leases(&mut **tx, &attempts).await?.into_iter().collect())
}

/// Lowers the endpoints' in-flight counts by their leases given back, and keeps their health:
/// a batch with a delivered answer clears the failures; one with failures only counts them
/// (and starts `failing_since` at the first).
async fn settle<D: Dialect>(tx: &mut Tx<D>, tally: &Tally, at: DateTime<Utc>) -> Result<(), StoreError> {
    for (endpoint, (released, ok, failed)) in &tally.0 {
        sqlx::query::<D>(
            "UPDATE webhook_endpoints SET in_flight = CASE WHEN in_flight > $2 THEN in_flight - $2 ELSE 0 END, \
             last_success_at = CASE WHEN $3 > 0 THEN $5 ELSE last_success_at END, \
             failing_since = CASE WHEN $3 > 0 THEN NULL WHEN $4 > 0 THEN COALESCE(failing_since, $5) ELSE failing_since END, \
             failures_in_a_row = CASE WHEN $3 > 0 THEN 0 ELSE failures_in_a_row + $4 END \
             WHERE id = $1",
        )
        .arg(*endpoint)
        .arg(*released)
        .arg(*ok)
        .arg(*failed)
        .arg(at)
        .run(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Writes attempts that did not deliver to their delivery rows (still pending, or dead),
/// inserting the row of one leased straight from the log. A row no longer pending (dead
/// meanwhile) is left as it is.
async fn record_attempts<D: Dialect>(tx: &mut Tx<D>, attempts: &[Attempt]) -> Result<(), StoreError> {
    for chunk in attempts.chunks(CHUNK / 2) {
        let mut q = QueryBuilder::<D>::new(
            "INSERT INTO webhook_deliveries (endpoint_id, seq, stream_id, stream_seq, state, attempts, window_start, \
             next_attempt_at, last_code, last_error, dead_at) ",
        );
        q.push_values(chunk, |mut b, a| {
            b.push_arg(a.endpoint)
                .push_arg(a.seq)
                .push_arg(a.stream)
                .push_arg(a.stream_seq)
                .push_arg(a.state)
                .push_arg(a.attempt)
                .push_arg(a.window_start)
                .push_arg(a.next_at)
                .push_arg(a.code)
                .push_arg(a.error.as_deref())
                .push_arg((a.state == "dead").then_some(a.next_at));
        });
        q.push(
            " ON CONFLICT (endpoint_id, seq) DO UPDATE SET state = excluded.state, attempts = excluded.attempts, \
             window_start = COALESCE(webhook_deliveries.window_start, excluded.window_start), \
             next_attempt_at = excluded.next_attempt_at, last_code = excluded.last_code, last_error = excluded.last_error, \
             dead_at = excluded.dead_at WHERE webhook_deliveries.state = 'pending'",
        );
        q.build().run(&mut **tx).await?;
    }
    Ok(())
}

/// The stream's later deliveries on that endpoint follow a dead one into the store.
async fn bury_stream<D: Dialect>(
    conn: &mut D::Connection,
    d: &ClaimedDelivery,
    at: DateTime<Utc>,
) -> Result<(), StoreError> {
    sqlx::query::<D>(
        "UPDATE webhook_deliveries SET state = 'dead', dead_at = $4, \
         last_error = 'an earlier event of its call or campaign is in the dead-letter store' \
         WHERE endpoint_id = $1 AND stream_id = $2 AND stream_seq > $3 AND state = 'pending'",
    )
    .arg(d.endpoint_id)
    .arg(d.stream_id)
    .arg(d.stream_seq)
    .arg(at)
    .run(&mut *conn)
    .await?;
    Ok(())
}

/// A 410 Gone: the endpoint is disabled and its undelivered events dead-lettered: its
/// pending rows, its other attempts in flight (their answers are dropped with their
/// leases) and what it had not read of the log yet.
async fn disable<D: Dialect>(conn: &mut D::Connection, endpoint: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
    // Leases, deliveries, then the endpoint (the order of every answer's transaction).
    let in_flight: Vec<(i64, Uuid, i32)> =
        sqlx::query::<D>("DELETE FROM webhook_leases WHERE endpoint_id = $1 RETURNING seq, stream_id, stream_seq")
            .arg(endpoint)
            .tuples(&mut *conn)
            .await?;
    if !in_flight.is_empty() {
        D::insert_deliveries(&mut *conn, endpoint, &in_flight, at, Some(super::GONE)).await?;
    }
    sqlx::query::<D>(
        "UPDATE webhook_deliveries SET state = 'dead', dead_at = $2, last_error = COALESCE(last_error, $3) \
         WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .arg(endpoint)
    .arg(at)
    .arg(super::GONE)
    .run(&mut *conn)
    .await?;
    let n = sqlx::query::<D>(
        "UPDATE webhook_endpoints SET enabled = false, updated_at = $2, in_flight = 0, \
         disabled_reason = 'the endpoint answered 410 Gone; PATCH enabled=true to resume' WHERE id = $1 AND enabled",
    )
    .arg(endpoint)
    .arg(at)
    .run(&mut *conn)
    .await?;
    if n == 1 {
        unread_to_rows::<D>(conn, endpoint, Some(super::GONE), at).await?;
    }
    Ok(())
}

/// Deliveries whose lease ran out (a replica stopped mid-send) are due again; the lost
/// attempt counts.
pub async fn reclaim_expired<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<u64, StoreError> {
    let at = now();
    let mut tx = D::begin(pool).await?;
    let expired: Vec<Attempt> = sqlx::query::<D>(
        "DELETE FROM webhook_leases WHERE lease_until < $1 RETURNING endpoint_id, seq, stream_id, stream_seq, attempt, claimed_at",
    )
    .arg(at)
    .tuples(&mut **tx)
    .await?
    .into_iter()
    .map(|l| Attempt::expired(l, at))
    .collect();
    record_attempts(&mut tx, &expired).await?;
    // A lease that ran out says nothing of the endpoint: released, neither success nor failure.
    settle(&mut tx, &expired.iter().map(|a| (a.endpoint, None)).collect(), at).await?;
    tx.commit().await?;
    Ok(expired.len() as u64)
}

/// An endpoint's dead letters after log position `after`, in log order.
pub async fn dead_letters<D: Dialect>(
    pool: &sqlx::Pool<D>,
    endpoint: Uuid,
    after: i64,
    limit: u32,
) -> Result<Vec<DeadLetter>, StoreError> {
    let rows = sqlx::query::<D>(&format!(
        "SELECT d.seq, d.attempts, d.last_code, d.last_error, d.window_start, d.dead_at, {} \
             FROM webhook_deliveries d JOIN events e ON e.seq = d.seq \
             WHERE d.endpoint_id = $1 AND d.state = 'dead' AND d.seq > $2 ORDER BY d.seq LIMIT $3",
        super::BODY_COLUMNS
    ))
    .arg(endpoint)
    .arg(after)
    .arg(i64::from(limit))
    .rows(&mut *pool.acquire().await?)
    .await?;
    rows.iter()
        .map(|r| {
            let body = super::body_from_row(r)?;
            Ok(DeadLetter {
                seq: r.col("seq")?,
                kind: r.col("kind")?,
                attempts: r.col::<i32>("attempts")? as u32,
                last_status_code: r.col("last_code")?,
                last_error: r.col("last_error")?,
                first_attempt_at: r.col("window_start")?,
                dead_at: r.col("dead_at")?,
                event: serde_json::from_str(&body).map_err(|source| Corrupt::Json { what: "event body", source })?,
            })
        })
        .collect()
}

/// Dead letters due again with a fresh retry window: all of the endpoint's, or the
/// streams of the given positions (a stream's dead letters go back together, so its
/// order holds). Refused while the endpoint is disabled.
pub async fn replay<D: Dialect>(pool: &sqlx::Pool<D>, endpoint: Uuid, seqs: Option<&[i64]>) -> Result<u64, StoreError> {
    let mut tx = D::begin(pool).await?;
    let enabled: Option<bool> = sqlx::query::<D>("SELECT enabled FROM webhook_endpoints WHERE id = $1")
        .arg(endpoint)
        .maybe_scalar(&mut **tx)
        .await?;
    match enabled {
        None => return Err(StoreError::NotFound("webhook")),
        Some(false) => return Err(StoreError::from(Conflict::EndpointDisabled)),
        Some(true) => {}
    }
    let mut q = QueryBuilder::<D>::new(
        "UPDATE webhook_deliveries SET state = 'pending', attempts = 0, window_start = NULL, dead_at = NULL, next_attempt_at = ",
    );
    q.push_arg(now()).push(" WHERE endpoint_id = ").push_arg(endpoint).push(" AND state = 'dead'");
    if let Some(seqs) = seqs {
        if seqs.is_empty() {
            return Ok(0);
        }
        q.push(" AND stream_id IN (SELECT stream_id FROM webhook_deliveries WHERE endpoint_id = ").push_arg(endpoint);
        q.push(" AND state = 'dead' AND seq IN (");
        q.push_list(seqs.iter().take(CHUNK).copied());
        q.push("))");
    }
    let n = q.build().run(&mut **tx).await?;
    tx.commit().await?;
    Ok(n)
}

/// The events of the log the enabled endpoints take and have not read yet.
async fn unread<D: Dialect>(tx: &mut Tx<D>) -> Result<i64, StoreError> {
    let readers = sqlx::query::<D>("SELECT log_cursor, event_types, campaign_id FROM webhook_endpoints WHERE enabled")
        .rows(&mut **tx)
        .await?;
    let mut n = 0;
    for r in &readers {
        let (cursor, sub) = reader(r)?;
        let mut q = QueryBuilder::<D>::new("SELECT count(*) FROM events WHERE seq > ");
        q.push_arg(cursor);
        push_subscription(&mut q, &sub);
        n += q.build().scalar::<i64>(&mut **tx).await?;
    }
    Ok(n)
}

/// Deliveries by state: the queue depth and the dead-letter store's size.
pub async fn queue_counts<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<QueueCounts, StoreError> {
    let mut c = QueueCounts::default();
    let mut tx = D::begin(pool).await?;
    for r in
        sqlx::query::<D>("SELECT state, count(*) AS n FROM webhook_deliveries GROUP BY state").rows(&mut **tx).await?
    {
        let n: i64 = r.col("n")?;
        match r.col::<String>("state")?.as_str() {
            "pending" => c.pending = n,
            "dead" => c.dead = n,
            _ => {}
        }
    }
    // Being sent: the leased ones, pending in their rows or taken from the log.
    c.sending = sqlx::query::<D>("SELECT count(*) FROM webhook_leases").scalar(&mut **tx).await?;
    let leased_rows: i64 = sqlx::query::<D>(
        "SELECT count(*) FROM webhook_leases l JOIN webhook_deliveries d ON d.endpoint_id = l.endpoint_id AND d.seq = l.seq",
    )
    .scalar(&mut **tx)
    .await?;
    c.pending = (c.pending - leased_rows).max(0) + unread(&mut tx).await?;
    tx.commit().await?;
    Ok(c)
}
