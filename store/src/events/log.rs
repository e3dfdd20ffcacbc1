//! The event log: appends in the changes' own transactions (an outbox), numbering by one
//! sequencer at a time (the `event_sequencer` row lock) moving batches from the inbox into the
//! log, reads by position, and pruning in log order.

use chrono::{DateTime, Utc};
use dialer_domain::events::{NewEvent, Unsequenced, log_order};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{InboxEvent, LoggedEvent, Sequenced, enabled};
use crate::StoreError;
use crate::dialect::{Bind, Dialect, PushArg, PushList, QueryExt, RowExt};

/// Appends events in the caller's transaction (nothing when `events.enabled` is off): one inbox
/// row holding them all, in the order given.
pub async fn append<D: Dialect>(conn: &mut D::Connection, events: &[NewEvent]) -> Result<(), StoreError> {
    if !enabled() || events.is_empty() {
        return Ok(());
    }
    let newest = events.iter().map(|e| e.created_at).max();
    sqlx::query::<D>("INSERT INTO event_inbox (n_events, created_at, events) VALUES ($1, $2, $3)")
        .arg(events.len() as i32)
        .arg(newest)
        .arg(pack(events)?)
        .run(conn)
        .await?;
    Ok(())
}

/// The inbox's form of a transaction's events: a JSON array of [`InboxEvent`].
pub(crate) fn pack(events: &[NewEvent]) -> Result<String, StoreError> {
    let packed: Vec<InboxEvent<'_>> = events
        .iter()
        .map(|e| InboxEvent {
            c: e.campaign_id,
            s: e.stream_id,
            q: e.stream_seq,
            k: e.kind.as_str().into(),
            t: e.created_at,
            e: Some(e.id),
            b: e.data.as_str().into(),
        })
        .collect();
    serde_json::to_string(&packed)
        .map_err(|source| StoreError::from(crate::Corrupt::Json { what: "events for the inbox", source }))
}

/// The events of one inbox row, in the order they were appended.
pub(crate) fn unpack(n: i64, events: &str) -> Result<Vec<InboxEvent<'_>>, StoreError> {
    serde_json::from_str(events)
        .map_err(|e| StoreError::from(crate::Corrupt::Value { what: "event inbox row", value: format!("{n}: {e}") }))
}

/// Numbers at least one inbox row and, after the first, as many more as keep the count within
/// `limit` events, in one transaction: moves their events into the log.
#[tracing::instrument(name = "store.sequence_events", level = "debug", skip_all)]
pub async fn sequence<D: Dialect>(pool: &sqlx::Pool<D>, limit: usize) -> Result<Sequenced, StoreError> {
    let mut tx = D::begin(pool).await?;
    let next: i64 = sqlx::query::<D>(&format!(
        "SELECT {}next_seq FROM event_sequencer WHERE id = 1{}",
        sequencer_settings::<D>(),
        D::FOR_UPDATE
    ))
    .row(&mut **tx)
    .await?
    .col("next_seq")?;
    let sizes = sqlx::query::<D>("SELECT n, n_events FROM event_inbox ORDER BY n LIMIT $1")
        .arg(limit.max(1) as i64)
        .rows(&mut **tx)
        .await?
        .iter()
        .map(|r| Ok((r.col::<i64>("n")?, r.col::<i32>("n_events")?.max(0) as usize)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    let rows = inbox_rows::<D>(&mut tx, &within(&sizes, limit)).await?;
    if rows.is_empty() {
        return Ok(Sequenced::default());
    }
    let mut batch = Vec::new();
    for (n, events) in &rows {
        batch.extend(unpack(*n, events)?);
    }
    let order = log_order(&batch.iter().map(|e| Unsequenced { stream: e.s, stream_seq: e.q }).collect::<Vec<_>>());
    let numbered: Vec<(i64, &InboxEvent<'_>)> =
        order.iter().enumerate().map(|(k, &i)| (next + k as i64, &batch[i])).collect();
    D::insert_events(&mut **tx, &numbered).await?;
    let mut q = QueryBuilder::<D>::new("DELETE FROM event_inbox WHERE n IN (");
    q.push_list(rows.iter().map(|(n, _)| *n));
    q.push(")");
    q.build().run(&mut **tx).await?;
    let last_seq = next + numbered.len() as i64 - 1;
    sqlx::query::<D>("UPDATE event_sequencer SET next_seq = $1 WHERE id = 1").arg(last_seq + 1).run(&mut **tx).await?;
    tx.commit().await?;
    Ok(Sequenced { events: numbered.len() as u64, last_seq })
}

/// Inbox rows `taken`, (n, events) in order.
async fn inbox_rows<D: Dialect>(
    tx: &mut crate::dialect::Tx<D>,
    taken: &[i64],
) -> Result<Vec<(i64, String)>, StoreError> {
    if taken.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<D>::new("SELECT n, events FROM event_inbox WHERE n IN (");
    q.push_list(taken.iter().copied());
    q.push(") ORDER BY n");
    q.build().rows(&mut ***tx).await?.iter().map(|r| Ok((r.col("n")?, r.col("events")?))).collect()
}

/// The inbox rows that one numbering takes: the first, then each next
/// while the events stay within `limit`.
fn within(sizes: &[(i64, usize)], limit: usize) -> Vec<i64> {
    let mut total = 0;
    let mut taken = Vec::new();
    for &(n, count) in sizes {
        if !taken.is_empty() && total + count > limit {
            break;
        }
        total += count;
        taken.push(n);
    }
    taken
}

/// The sequencer's settings (PostgreSQL), set by its first statement: the inbox read by key
/// (`n IN …`, never a scan), whatever the statistics say (an inbox that filled in seconds
/// still looks empty to the planner).
fn sequencer_settings<D: Dialect>() -> &'static str {
    if D::IS_POSTGRES { "set_config('enable_seqscan', 'off', true) AS s1, " } else { "" }
}

/// The last position numbered (what a reader starting now has seen).
pub(crate) async fn log_head<D: Dialect>(conn: &mut D::Connection) -> Result<i64, StoreError> {
    Ok(sqlx::query::<D>("SELECT next_seq FROM event_sequencer WHERE id = 1").scalar::<i64>(&mut *conn).await? - 1)
}

/// Numbered events after `after`, of one campaign or all, in log order.
pub async fn read_events<D: Dialect>(
    pool: &sqlx::Pool<D>,
    after: i64,
    campaign: Option<Uuid>,
    limit: usize,
) -> Result<Vec<LoggedEvent>, StoreError> {
    let mut q = QueryBuilder::<D>::new(format!("SELECT e.seq, {} FROM events e WHERE e.seq > ", super::BODY_COLUMNS));
    q.push_arg(after);
    if let Some(c) = campaign {
        q.push(" AND e.campaign_id = ").push_arg(c);
    }
    q.push(" ORDER BY e.seq LIMIT ").push_arg(limit as i64);
    q.build()
        .rows(&mut *pool.acquire().await?)
        .await?
        .iter()
        .map(|r| {
            Ok(LoggedEvent {
                seq: r.col("seq")?,
                campaign_id: r.col("campaign_id")?,
                kind: r.col("kind")?,
                body: super::body_from_row(r)?,
            })
        })
        .collect()
}

/// The first and last numbers the log still holds (`(0, 0)`: none yet).
pub async fn log_bounds<D: Dialect>(pool: &sqlx::Pool<D>) -> Result<(i64, i64), StoreError> {
    let first: Option<i64> =
        sqlx::query::<D>("SELECT min(seq) FROM events").scalar(&mut *pool.acquire().await?).await?;
    let next: i64 = sqlx::query::<D>("SELECT next_seq FROM event_sequencer WHERE id = 1")
        .scalar(&mut *pool.acquire().await?)
        .await?;
    Ok((first.unwrap_or(next), next - 1))
}

/// Forgets events older than `before` that no delivery needs: up to `limit` numbered ones,
/// oldest first, up to the lowest cursor of the enabled endpoints, with no delivery row or
/// lease; and the unnumbered ones (nobody read the log meanwhile: no endpoint, no live client)
/// of inbox rows within the `limit` oldest, so each statement stays bounded. Returns how
/// many events it forgot.
pub async fn prune_events<D: Dialect>(
    pool: &sqlx::Pool<D>,
    before: DateTime<Utc>,
    limit: usize,
) -> Result<u64, StoreError> {
    let mut tx = D::begin(pool).await?;
    let first: Option<i64> =
        sqlx::query::<D>("SELECT n FROM event_inbox ORDER BY n LIMIT 1").maybe_scalar(&mut **tx).await?;
    let unnumbered = match first {
        Some(first) => {
            let rows = sqlx::query::<D>(
                "DELETE FROM event_inbox WHERE n >= $1 AND n < $2 AND created_at < $3 RETURNING n_events",
            )
            .arg(first)
            .arg(first + limit as i64)
            .arg(before)
            .rows(&mut **tx)
            .await?;
            rows.iter().map(|r| r.col::<i32>("n_events").map(|k| k.max(0) as u64)).sum::<Result<u64, _>>()?
        }
        None => 0,
    };
    // The log is in commit order, so what is older than `before` comes before its first
    // event that is not: found by walking the old ones, as an index on the time would.
    let end: Option<i64> = sqlx::query::<D>("SELECT seq FROM events WHERE created_at >= $1 ORDER BY seq LIMIT 1")
        .arg(before)
        .maybe_scalar(&mut **tx)
        .await?;
    // What an enabled endpoint has not read yet stays.
    let unread: Option<i64> =
        sqlx::query::<D>("SELECT min(log_cursor) + 1 FROM webhook_endpoints WHERE enabled").scalar(&mut **tx).await?;
    let n = sqlx::query::<D>(
        "DELETE FROM events WHERE seq IN (SELECT seq FROM events e WHERE seq < $1 AND created_at < $2 \
         AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w JOIN webhook_deliveries d ON d.endpoint_id = w.id AND d.seq = e.seq) \
         AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w JOIN webhook_leases l ON l.endpoint_id = w.id AND l.seq = e.seq) \
         ORDER BY seq LIMIT $3)",
    )
    .arg(end.unwrap_or(i64::MAX).min(unread.unwrap_or(i64::MAX)))
    .arg(before)
    .arg(limit as i64)
    .run(&mut **tx).await?;
    tx.commit().await?;
    Ok(n + unnumbered)
}

#[cfg(test)]
mod tests {
    use dialer_domain::events::EventType;

    use super::*;

    #[test]
    fn a_transactions_events_unpack_as_they_were_appended_byte_for_byte() {
        let (campaign, call) = (Uuid::now_v7(), Uuid::now_v7());
        let data = [r#"{"attempt":1,"note":"a \"quoted\" word, é"}"#, "not JSON at all"];
        let events: Vec<NewEvent> = data
            .iter()
            .enumerate()
            .map(|(k, d)| NewEvent {
                id: Uuid::now_v7(),
                kind: EventType::CallQueued,
                campaign_id: campaign,
                stream_id: call,
                stream_seq: k as u32 + 1,
                created_at: Utc::now(),
                data: d.to_string(),
            })
            .collect();
        let packed = pack(&events).expect("packs");
        let back = unpack(7, &packed).expect("unpacks");
        assert_eq!(back.len(), 2);
        for (e, b) in events.iter().zip(&back) {
            assert_eq!(
                (b.c, b.s, b.q, b.k.as_ref(), b.t, b.e),
                (campaign, call, e.stream_seq, "call.queued", e.created_at, Some(e.id))
            );
            assert_eq!(b.b, e.data, "the data, byte for byte");
        }
    }

    #[test]
    fn an_event_waiting_before_the_inbox_was_packed_reads_as_its_migration_wrote_it() {
        // SQLite's migration keeps the time as stored (a space, not a `T`); PostgreSQL's writes
        // an offset; an event from before the envelope columns has no id.
        for t in ["2026-12-07 22:20:12.618150998+00:00", "2026-12-07T22:20:12.618151+00:00"] {
            let row = format!(
                r#"[{{"c":"0190a0b0-0000-7000-8000-000000000001","s":"0190a0b0-0000-7000-8000-000000000002","q":2,"k":"call.started","t":"{t}","e":null,"b":"waiting"}}]"#
            );
            let e = unpack(1, &row).expect("unpacks");
            assert_eq!((e[0].q, e[0].b.as_ref(), e[0].e), (2, "waiting", None));
            let expected: DateTime<Utc> = "2026-12-07T22:20:12.618Z".parse().expect("a time");
            assert_eq!(e[0].t.timestamp_millis(), expected.timestamp_millis(), "{t}");
        }
        assert!(matches!(unpack(9, "[{"), Err(StoreError::Corrupt(_))), "a broken row names itself");
    }

    #[test]
    fn a_numbering_takes_the_first_row_whatever_its_size_then_rows_while_they_fit() {
        assert_eq!(within(&[], 10), Vec::<i64>::new());
        assert_eq!(within(&[(4, 50), (5, 1)], 10), [4], "one row over the limit still goes alone");
        assert_eq!(within(&[(4, 3), (5, 7), (6, 1)], 10), [4, 5]);
        assert_eq!(within(&[(4, 3), (5, 8), (6, 1)], 10), [4], "in order: never a later row before an earlier one");
    }
}
