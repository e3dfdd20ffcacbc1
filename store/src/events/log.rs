//! The event log: appends in the changes' own transactions (an outbox), numbering by one
//! sequencer at a time (the `event_sequencer` row lock) moving batches from the inbox into the
//! log, reads by position, and pruning in log order.

use chrono::{DateTime, Utc};
use dialer_domain::events::{EventType, NewEvent, Unsequenced, log_order};
use sqlx::QueryBuilder;
use uuid::Uuid;

use super::{LoggedEvent, Sequenced, enabled};
use crate::StoreError;
use crate::dialect::{Bind, Dialect, PushArg, QueryExt, RowExt};

/// Appends events in the caller's transaction (nothing when `events.enabled` is off).
pub async fn append<D: Dialect>(conn: &mut D::Connection, events: &[NewEvent]) -> Result<(), StoreError> {
    if !enabled() || events.is_empty() {
        return Ok(());
    }
    D::append_events(conn, events).await
}

/// Numbers up to `limit` committed events after the last numbered one, in one
/// transaction: moves them from the inbox into the log.
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
    let rows =
        sqlx::query::<D>("SELECT n, campaign_id, stream_id, stream_seq, kind FROM event_inbox ORDER BY n LIMIT $1")
            .arg(limit as i64)
            .rows(&mut **tx)
            .await?;
    if rows.is_empty() {
        return Ok(Sequenced::default());
    }
    let batch: Vec<InboxRow> = rows.iter().map(batch_row).collect::<Result<_, _>>()?;
    let order = log_order(&batch.iter().map(|b| b.2).collect::<Vec<_>>());
    let numbered: Vec<(i64, &InboxRow)> =
        order.iter().enumerate().map(|(k, &i)| (next + k as i64, &batch[i])).collect();
    let pairs: Vec<(i64, i64)> = numbered.iter().map(|(seq, e)| (e.0, *seq)).collect();
    D::number_events(&mut **tx, &pairs).await?;
    let last_seq = next + numbered.len() as i64 - 1;
    sqlx::query::<D>("UPDATE event_sequencer SET next_seq = $1 WHERE id = 1").arg(last_seq + 1).run(&mut **tx).await?;
    tx.commit().await?;
    Ok(Sequenced { events: numbered.len() as u64, last_seq })
}

/// The sequencer's settings (PostgreSQL), set by its first statement. Its move must
/// reach the inbox by key, whatever the statistics say: an inbox that filled with
/// hundreds of thousands of events in seconds (nobody read the log) still looks empty
/// to the planner, and a move planned as a scan then runs for minutes. By key
/// (`n = ANY`, never a scan), then a hash join of the moved rows with their numbers
/// (never a nested loop over the batch): `EXPLAIN` with the statistics of an empty
/// inbox shows both.
fn sequencer_settings<D: Dialect>() -> &'static str {
    if D::IS_POSTGRES {
        "set_config('enable_seqscan', 'off', true) AS s1, set_config('enable_nestloop', 'off', true) AS s2, "
    } else {
        ""
    }
}

/// An inbox row as the sequencer reads it: its insertion number, campaign, stream and kind.
type InboxRow = (i64, Uuid, Unsequenced, Option<EventType>);

fn batch_row<R: RowExt>(r: &R) -> Result<InboxRow, StoreError> {
    let kind: String = r.col("kind")?;
    let u = Unsequenced { stream: r.col("stream_id")?, stream_seq: r.col::<i32>("stream_seq")? as u32 };
    Ok((r.col("n")?, r.col("campaign_id")?, u, EventType::parse(&kind)))
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

/// Forgets up to `limit` events older than `before` that no delivery needs: numbered
/// ones, oldest first, up to the lowest cursor of the enabled endpoints, with no
/// delivery row or lease; and unnumbered ones (nobody read the log meanwhile: no
/// endpoint, no live client) within the `limit` oldest, so each statement stays bounded.
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
            sqlx::query::<D>("DELETE FROM event_inbox WHERE n >= $1 AND n < $2 AND created_at < $3")
                .arg(first)
                .arg(first + limit as i64)
                .arg(before)
                .run(&mut **tx)
                .await?
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
