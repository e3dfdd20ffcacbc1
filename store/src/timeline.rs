//! The call-attempt timeline on a CQL store (ScyllaDB or Cassandra, `scylla` driver), used when
//! `timeline.cql_nodes` is set; otherwise the timeline is the `call_attempts` SQL table. Schema:
//! `migrations/scylla`. The recorder writes a batch's rows here *before* committing the batch's
//! SQL transaction, so a failed write retries the whole batch and the two stores cannot drift.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use dialer_api::views::CallAttempt;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use uuid::Uuid;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/scylla/0001_timeline.cql"),
    include_str!("../../migrations/scylla/0002_sip.cql"),
    include_str!("../../migrations/scylla/0003_media.cql"),
];

#[derive(Debug, thiserror::Error)]
pub enum TimelineError {
    #[error("CQL store unreachable at {nodes}: {source}; check timeline.cql_nodes (SCYLLA_HOST/SCYLLA_PORT)")]
    Connect { nodes: String, source: Box<scylla::errors::NewSessionError> },
    #[error("CQL statement failed: {0}; check the CQL store's health and timeline.cql_nodes")]
    Query(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("bad timeline setting {key}: {reason}")]
    Config { key: &'static str, reason: String },
}

fn q(e: impl std::error::Error + Send + Sync + 'static) -> TimelineError {
    TimelineError::Query(Box::new(e))
}

/// One attempt's row as the recorder writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimelineRow {
    pub campaign_id: Uuid,
    pub call_id: Uuid,
    pub attempt: u32,
    pub outcome: String,
    pub started_at_ms: Option<u64>,
    pub answered_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub reason: Option<String>,
    pub retryable: Option<bool>,
    /// The SIP final response (SIP provider).
    pub sip_code: Option<u16>,
    pub sip_reason: Option<String>,
    /// What its media came to (JSON of [`dialer_domain::media::MediaResult`]).
    pub media: Option<String>,
}

/// The timeline on a CQL store.
#[derive(Clone)]
pub struct CqlTimeline {
    session: Arc<Session>,
    insert: PreparedStatement,
    select: PreparedStatement,
    select_from: PreparedStatement,
    /// Seconds a row lives (`timeline.ttl_days`); 0 = for ever.
    ttl_secs: i32,
}

/// Rows per page when a call's attempts are read (a call retried for years reads in pages).
const PAGE_ROWS: i32 = 1000;

type AttemptRow = (
    i32,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<bool>,
    Option<i32>,
    Option<String>,
    Option<String>,
);

fn attempt_of(
    (attempt, outcome, started, answered, ended, duration_ms, reason, retryable, sip_code, sip_reason, media): AttemptRow,
) -> CallAttempt {
    CallAttempt {
        attempt: attempt.max(0) as u32,
        outcome,
        started_at: time(started),
        answered_at: time(answered),
        ended_at: time(ended),
        duration_ms,
        reason,
        retryable,
        sip_code: sip_code.map(|c| c.clamp(0, 999) as u16),
        sip_reason,
        media: media.as_deref().and_then(|m| serde_json::from_str(m).ok()),
    }
}

impl std::fmt::Debug for CqlTimeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CqlTimeline")
    }
}

fn ms(v: Option<u64>) -> Option<i64> {
    v.map(|x| x as i64)
}

fn time(v: Option<i64>) -> Option<DateTime<Utc>> {
    v.and_then(DateTime::<Utc>::from_timestamp_millis)
}

impl CqlTimeline {
    /// The timeline of `[timeline]`: `None` without CQL nodes (the SQL table serves), else
    /// connected, migrated and keeping rows `ttl_days`.
    pub async fn open(s: &crate::TimelineSettings) -> Result<Option<CqlTimeline>, TimelineError> {
        if s.cql_nodes.is_empty() {
            return Ok(None);
        }
        let ttl = std::time::Duration::from_secs(u64::from(s.ttl_days) * 86_400);
        Ok(Some(CqlTimeline::connect(&s.cql_nodes, &s.keyspace, s.replication_factor).await?.with_ttl(ttl)))
    }

    /// Connects, creates the keyspace (replication factor `rf`) and applies `migrations/scylla`.
    pub async fn connect(nodes: &[String], keyspace: &str, rf: u32) -> Result<CqlTimeline, TimelineError> {
        if keyspace.is_empty() || !keyspace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(TimelineError::Config {
                key: "timeline.keyspace",
                reason: "letters, digits and '_' only".into(),
            });
        }
        let session = SessionBuilder::new()
            .known_nodes(nodes)
            .auto_await_schema_agreement(false)
            .build()
            .await
            .map_err(|e| TimelineError::Connect { nodes: nodes.join(","), source: Box::new(e) })?;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH REPLICATION = {{'class': 'SimpleStrategy', 'replication_factor': {rf}}}"
                ),
                &[],
            )
            .await
            .map_err(q)?;
        for m in MIGRATIONS {
            let text: String = m.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
            for stmt in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                if let Err(e) = session.query_unpaged(stmt.replace("{keyspace}", keyspace), &[]).await {
                    // `ALTER TABLE … ADD` has no IF NOT EXISTS on every server: a column that is
                    // already there means the migration ran before.
                    let msg = e.to_string();
                    let done = stmt.contains(" ADD ")
                        && (msg.contains("conflicts with an existing column") || msg.contains("already exist"));
                    if !done {
                        return Err(q(e));
                    }
                }
            }
        }
        let insert = session
            .prepare(format!(
                "INSERT INTO {keyspace}.call_attempts (call_id, attempt, campaign_id, outcome, started_at, answered_at, \
                 ended_at, duration_ms, reason, retryable, sip_code, sip_reason, media) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await
            .map_err(q)?;
        let columns = "attempt, outcome, started_at, answered_at, ended_at, duration_ms, reason, retryable, sip_code, sip_reason, media";
        let mut select = session
            .prepare(format!("SELECT {columns} FROM {keyspace}.call_attempts WHERE call_id = ?"))
            .await
            .map_err(q)?;
        select.set_page_size(PAGE_ROWS);
        let select_from = session
            .prepare(format!(
                "SELECT {columns} FROM {keyspace}.call_attempts WHERE call_id = ? AND attempt >= ? LIMIT ?"
            ))
            .await
            .map_err(q)?;
        Ok(CqlTimeline { session: Arc::new(session), insert, select, select_from, ttl_secs: 0 })
    }

    /// Rows written from now on expire after `ttl` (whole seconds; zero: never). Cassandra and
    /// ScyllaDB drop expired rows themselves: the retention of the timeline.
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> CqlTimeline {
        self.ttl_secs = i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX);
        self
    }

    /// Writes rows (upserts by call and attempt), concurrently in chunks.
    pub async fn write(&self, rows: &[TimelineRow]) -> Result<(), TimelineError> {
        let t = std::time::Instant::now();
        for chunk in rows.chunks(256) {
            let writes = chunk.iter().map(|r| {
                self.session.execute_unpaged(
                    &self.insert,
                    (
                        r.call_id,
                        r.attempt as i32,
                        r.campaign_id,
                        r.outcome.as_str(),
                        ms(r.started_at_ms),
                        ms(r.answered_at_ms),
                        ms(r.ended_at_ms),
                        ms(r.duration_ms),
                        r.reason.as_deref(),
                        r.retryable,
                        r.sip_code.map(i32::from),
                        r.sip_reason.as_deref(),
                        r.media.as_deref(),
                        self.ttl_secs,
                    ),
                )
            });
            for res in futures::future::join_all(writes).await {
                res.map_err(q)?;
            }
        }
        metrics::histogram!("dialer_timeline_write_seconds").record(t.elapsed().as_secs_f64());
        Ok(())
    }

    /// The attempts of a call, in attempt order (the partition's clustering order), read a
    /// page at a time however many there are.
    pub async fn attempts(&self, call_id: Uuid) -> Result<Vec<CallAttempt>, TimelineError> {
        use futures::TryStreamExt;
        let pages = self.session.execute_iter(self.select.clone(), (call_id,)).await.map_err(q)?;
        let rows = pages.rows_stream::<AttemptRow>().map_err(q)?;
        rows.map_ok(attempt_of).try_collect().await.map_err(q)
    }

    /// At most `limit` attempts of a call from attempt `first` on, in attempt order: a range read
    /// on the clustering key (a page of a long history).
    pub async fn attempts_from(
        &self,
        call_id: Uuid,
        first: u32,
        limit: u32,
    ) -> Result<Vec<CallAttempt>, TimelineError> {
        let first = i32::try_from(first).unwrap_or(i32::MAX);
        let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
        let res = self.session.execute_unpaged(&self.select_from, (call_id, first, limit)).await.map_err(q)?;
        let rows = res.into_rows_result().map_err(q)?;
        rows.rows::<AttemptRow>().map_err(q)?.map(|r| r.map(attempt_of)).collect::<Result<_, _>>().map_err(q)
    }
}
