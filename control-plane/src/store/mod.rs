//! Persistence of campaigns, targets, calls, attempts, aggregates and events.
//!
//! One [`Store`] interface over two sqlx backends: PostgreSQL (production) and SQLite (embedded
//! default). Both run the same SQL, generated once by the `sql_store!` macro in [`sql`] for each
//! backend, so behaviour cannot drift between them; the few dialect differences are macro
//! arguments. Every write that changes call rows updates `campaign_stats` in the same
//! transaction, so the aggregates always equal the rows ([`Store::recount_stats`] proves it).

mod batch;
mod events;
mod outbox;
mod record;
mod rules;
mod sql;

pub use batch::CallBatcher;
pub use events::{
    ActiveEndpoint, Claim, ClaimedDelivery, DeadLetter, Finished, LoggedEvent, QueueCounts, Sequenced,
    set_enabled as set_events_enabled,
};

use std::str::FromStr;
use std::time::Duration;

use dialer_domain::campaign::{CampaignAction, TransitionError};
use dialer_domain::validate::{
    Call, CallDetail, Campaign, CampaignStats, FieldError, NewCampaign, QueueTargetsResponse, UpdateCampaignRequest,
};
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use uuid::Uuid;

/// What went wrong in the store, in terms the API maps to status codes.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("the store is unavailable: {0}; check that the database is running and reachable")]
    Unavailable(#[source] sqlx::Error),
    #[error("the database holds a value this version cannot read: {0}")]
    Corrupt(String),
    #[error("applying migrations failed: {0}; never edit an applied migration, add a new one")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the CQL timeline store failed: {0}")]
    Timeline(#[from] crate::timeline::TimelineError),
    #[error("bad database URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                StoreError::Corrupt(e.to_string())
            }
            _ => StoreError::Unavailable(e),
        }
    }
}

impl StoreError {
    /// Whether the database refused the statement for what it holds (a value it cannot store, a
    /// violated constraint), as opposed to being unreachable or busy: retrying the same data
    /// cannot succeed. Serialization failures, deadlocks and lock timeouts are not refusals.
    pub fn is_refusal(&self) -> bool {
        let StoreError::Unavailable(sqlx::Error::Database(d)) = self else {
            return false;
        };
        // PostgreSQL: 40001 serialization, 40P01 deadlock, 55P03 lock not available, 57014
        // cancelled; SQLite: 5 busy, 6 locked (and their extended codes).
        let transient = ["40001", "40P01", "55P03", "57014"];
        match d.code() {
            // A PostgreSQL SQLSTATE has five characters; SQLite's codes are shorter numbers.
            Some(code) if code.len() == 5 => !transient.contains(&code.as_ref()),
            Some(code) => !code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
            None => false,
        }
    }
}

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Postgres,
    Sqlite,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Postgres => "postgres",
            StoreKind::Sqlite => "sqlite",
        }
    }
}

/// Options for [`Store::connect`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 16, acquire_timeout: Duration::from_secs(5) }
    }
}

/// Call filters and paging for [`Store::list_calls`].
#[derive(Clone, Debug, Default)]
pub struct CallQuery {
    pub after: Option<Uuid>,
    pub status: Option<dialer_domain::CallStatus>,
    pub limit: u32,
}

/// An in-progress campaign as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct ActiveCampaign {
    pub id: Uuid,
    pub time_zone: String,
    pub business_hours: Vec<dialer_domain::Window>,
    pub max_concurrent_calls: u32,
    /// Weight in the fair division of a binding global cap.
    pub weight: u32,
    /// The campaign's SIP settings, carried on every dispatch message.
    pub telephony: dialer_domain::validate::Telephony,
    /// The campaign's own calling rules (`None`: the process's).
    pub calling_rules: Option<dialer_domain::rules::CallingRules>,
    pub pending: i64,
    pub queued: i64,
    pub in_progress: i64,
}

/// A call moved to queued for dispatch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedCall {
    pub id: Uuid,
    pub phone_number: String,
    /// The attempt number this dispatch is.
    pub attempt: u32,
    /// The number's zone key ([`dialer_domain::recipient`]).
    pub zone: String,
    /// The call's last event number, this claim's included (issue 20).
    pub event_seq: u32,
}

/// A claim screened by the recipient's rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Screened {
    /// Queued: publish these.
    pub dial: Vec<ClaimedCall>,
    /// Ended without a dial.
    pub skipped: Vec<(ClaimedCall, dialer_domain::rules::SkipReason)>,
    /// Back to pending until then.
    pub held: Vec<(ClaimedCall, chrono::DateTime<chrono::Utc>, dialer_domain::rules::HoldRule)>,
}

/// A do-not-call entry to announce to the data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    /// Nil: the global list.
    pub list: Uuid,
    pub phone_number: String,
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the recipient's calling rules would do now to a campaign's pending calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub campaign_id: Uuid,
    pub at: chrono::DateTime<chrono::Utc>,
    pub pending_calls: u64,
    /// Would be dialled now (capacity permitting).
    pub dial_now: u64,
    /// Would end without a dial: on a do-not-call list.
    pub skipped_dnc: u64,
    /// Would end without a dial: no zone, and no fallback.
    pub skipped_no_zone: u64,
    /// Wait: outside the recipient's window now.
    pub held_outside_window: u64,
    /// Wait: a blackout date in the recipient's zone.
    pub held_blackout: u64,
    /// Wait: the number reached an attempt limit.
    pub held_attempt_limit: u64,
    /// Distinct zone keys among the pending calls.
    pub zones: u64,
}

impl Preview {
    /// Counts one call by what the rules decide.
    pub fn count(&mut self, v: dialer_domain::rules::Verdict) {
        use dialer_domain::rules::{HoldRule, SkipReason, Verdict};
        self.pending_calls += 1;
        let slot = match v {
            Verdict::Dial => &mut self.dial_now,
            Verdict::Skip(SkipReason::Dnc) => &mut self.skipped_dnc,
            Verdict::Skip(SkipReason::NoZone) => &mut self.skipped_no_zone,
            Verdict::Hold { rule: HoldRule::Window, .. } => &mut self.held_outside_window,
            Verdict::Hold { rule: HoldRule::Blackout, .. } => &mut self.held_blackout,
            Verdict::Hold { rule: HoldRule::AttemptLimit, .. } => &mut self.held_attempt_limit,
        };
        *slot += 1;
    }
}

/// A call whose current attempt is queued or in progress, as the reaper sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveCall {
    pub campaign_id: Uuid,
    pub id: Uuid,
    /// In progress (the data plane reported it started), else queued.
    pub started: bool,
    pub attempt: u32,
}

/// The answer to one `POST /calls` request: the call, and whether it was created (`false`: the
/// number's live call, returned).
pub type CallAnswer = Result<(Call, bool), StoreError>;

/// One `POST /calls` request, for [`Store::create_calls`].
#[derive(Clone, Debug, PartialEq)]
pub struct NewCall {
    pub campaign_id: Uuid,
    pub phone_number: String,
    /// `None` keeps the registered target's metadata.
    pub metadata: Option<Value>,
}

/// What a recorded batch did.
#[derive(Clone, Debug, Default)]
pub struct RecordReport {
    pub applied: u64,
    /// Duplicates, late or stale events: no change.
    pub ignored: u64,
    /// Events of calls this store does not know.
    pub unknown: u64,
    pub retries_scheduled: u64,
    /// Final failures and why, for the dead-letter topic.
    pub dead_letters: Vec<(dialer_domain::messages::StatusEvent, String)>,
}

/// The control plane's persistence.
#[derive(Clone, Debug)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Calls the same function of the backend module the store uses.
macro_rules! dispatch {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Postgres(p) => sql::pg::$f(p, $($arg),*).await,
            Store::Sqlite(p) => sql::lite::$f(p, $($arg),*).await,
        }
    };
}

/// Calls the same function of the backend's calling-rules module.
macro_rules! events_dispatch {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Postgres(p) => events::pg::$f(p, $($arg),*).await,
            Store::Sqlite(p) => events::lite::$f(p, $($arg),*).await,
        }
    };
}

macro_rules! rules_dispatch {
    ($self:ident . $f:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Postgres(p) => rules::pg::$f(p, $($arg),*).await,
            Store::Sqlite(p) => rules::lite::$f(p, $($arg),*).await,
        }
    };
}

/// Pooled PostgreSQL connections idle at least this long are pinged before use.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://PATH`, created if missing).
    pub async fn connect(url: &str, opts: &StoreOptions) -> Result<Store, StoreError> {
        let bad = |reason: String| StoreError::BadUrl { url: redact(url), reason };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let o = PgConnectOptions::from_str(url).map_err(|e| bad(e.to_string()))?;
            let pool = PgPoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(opts.acquire_timeout)
                // A connection idle for a while is checked before use (the server may have
                // restarted meanwhile); a busy one is not: a ping per acquire would add a round
                // trip to every request (a failed query closes its connection anyway).
                .test_before_acquire(false)
                .before_acquire(|conn, meta| {
                    Box::pin(async move {
                        if meta.idle_for >= IDLE_CHECK_AFTER {
                            sqlx::Connection::ping(conn).await?;
                        }
                        Ok(true)
                    })
                })
                .connect_with(o)
                .await
                .map_err(StoreError::Unavailable)?;
            Ok(Store::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let o = SqliteConnectOptions::from_str(url)
                .map_err(|e| bad(e.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                // The recorder's batched `UPDATE calls … FROM (VALUES …)`: with automatic
                // indexes SQLite 3.46 scans every call of the table and probes an index it builds
                // on the batch, so each batch cost grew with the table (107 ms per batch at 200k
                // calls, 85 % of `dialer up`'s drain time); without, it reads the batch and finds
                // each call by its key (`bench/up_scale.sh`, ARCHITECTURE "SQLite at scale").
                .pragma("automatic_index", "off")
                .pragma("temp_store", "memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(opts.max_connections)
                .acquire_timeout(opts.acquire_timeout)
                .connect_with(o)
                .await
                .map_err(StoreError::Unavailable)?;
            Ok(Store::Sqlite(pool))
        } else {
            Err(bad("use postgres://USER@HOST:PORT/DB or sqlite://PATH".into()))
        }
    }

    pub fn kind(&self) -> StoreKind {
        match self {
            Store::Postgres(_) => StoreKind::Postgres,
            Store::Sqlite(_) => StoreKind::Sqlite,
        }
    }

    /// Applies the migrations under `migrations/<backend>` that are not applied yet.
    #[tracing::instrument(name = "store.migrate", level = "debug", skip_all)]
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(p) => sqlx::migrate!("../migrations/postgres").run(p).await?,
            Store::Sqlite(p) => sqlx::migrate!("../migrations/sqlite").run(p).await?,
        }
        Ok(())
    }

    /// Whether every migration this build knows is applied.
    #[tracing::instrument(name = "store.migrations_applied", level = "debug", skip_all)]
    pub async fn migrations_applied(&self) -> Result<bool, StoreError> {
        let (known, applied): (usize, i64) = match self {
            Store::Postgres(p) => (
                sqlx::migrate!("../migrations/postgres").iter().count(),
                sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(p).await?,
            ),
            Store::Sqlite(p) => (
                sqlx::migrate!("../migrations/sqlite").iter().count(),
                sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success").fetch_one(p).await?,
            ),
        };
        Ok(applied as usize >= known)
    }

    /// A round trip to the database.
    #[tracing::instrument(name = "store.ping", level = "debug", skip_all)]
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop)?,
            Store::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop)?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Store::Postgres(p) => p.close().await,
            Store::Sqlite(p) => p.close().await,
        }
    }

    /// Creates a campaign with its targets, one pending call per target, its stats row and a
    /// `created` event, in one transaction.
    #[tracing::instrument(name = "store.create_campaign", level = "debug", skip_all)]
    pub async fn create_campaign(&self, c: &NewCampaign) -> Result<Campaign, StoreError> {
        dispatch!(self.create_campaign(c))
    }

    #[tracing::instrument(name = "store.get_campaign", level = "debug", skip_all, fields(id = %id))]
    pub async fn get_campaign(&self, id: Uuid) -> Result<Campaign, StoreError> {
        dispatch!(self.get_campaign(id))
    }

    /// Campaigns in creation order, after `after`.
    #[tracing::instrument(name = "store.list_campaigns", level = "debug", skip_all)]
    pub async fn list_campaigns(&self, after: Option<Uuid>, limit: u32) -> Result<Vec<Campaign>, StoreError> {
        dispatch!(self.list_campaigns(after, limit))
    }

    /// Applies a partial update.
    #[tracing::instrument(name = "store.update_campaign", level = "debug", skip_all, fields(id = %id))]
    pub async fn update_campaign(&self, id: Uuid, patch: &UpdateCampaignRequest) -> Result<Campaign, StoreError> {
        dispatch!(self.update_campaign(id, patch))
    }

    /// Moves the campaign through its state machine atomically.
    #[tracing::instrument(name = "store.transition", level = "debug", skip_all, fields(id = %id))]
    pub async fn transition(&self, id: Uuid, action: CampaignAction) -> Result<Campaign, StoreError> {
        dispatch!(self.transition(id, action))
    }

    /// The aggregates kept with the call rows.
    #[tracing::instrument(name = "store.stats", level = "debug", skip_all, fields(id = %id))]
    pub async fn stats(&self, id: Uuid) -> Result<CampaignStats, StoreError> {
        dispatch!(self.stats(id))
    }

    /// The same figures as [`Store::stats`], counted afresh from the call rows.
    #[tracing::instrument(name = "store.recount_stats", level = "debug", skip_all, fields(id = %id))]
    pub async fn recount_stats(&self, id: Uuid) -> Result<CampaignStats, StoreError> {
        dispatch!(self.recount_stats(id))
    }

    /// Queues new calls for registered numbers (`(number, metadata)`; metadata `None` keeps the
    /// registered target's). A number that is not registered fails the whole request, naming
    /// its index; numbers with a live call already are counted, not queued twice.
    #[tracing::instrument(name = "store.queue_targets", level = "debug", skip_all)]
    pub async fn queue_targets(
        &self,
        campaign_id: Uuid,
        targets: &[(String, Option<Value>)],
    ) -> Result<QueueTargetsResponse, StoreError> {
        dispatch!(self.queue_targets(campaign_id, targets))
    }

    /// Creates a call for one registered number, or returns the live call it already has
    /// (`false` = not created).
    #[tracing::instrument(name = "store.create_call", level = "debug", skip_all)]
    pub async fn create_call(
        &self,
        campaign_id: Uuid,
        phone_number: &str,
        metadata: Option<&Value>,
    ) -> Result<(Call, bool), StoreError> {
        dispatch!(self.create_call(campaign_id, phone_number, metadata))
    }

    /// [`Store::create_call`] for many requests in one transaction, each with its own answer;
    /// the (campaign, number) pairs must be distinct. `Err`: the batch failed as a whole and
    /// wrote nothing (do the requests one by one). SQLite does them one by one.
    #[tracing::instrument(name = "store.create_calls", level = "debug", skip_all, fields(n = reqs.len()))]
    pub async fn create_calls(&self, reqs: &[NewCall]) -> Result<Vec<CallAnswer>, StoreError> {
        dispatch!(self.create_calls(reqs))
    }

    #[tracing::instrument(name = "store.list_calls", level = "debug", skip_all, fields(campaign = %campaign_id))]
    pub async fn list_calls(&self, campaign_id: Uuid, q: &CallQuery) -> Result<Vec<Call>, StoreError> {
        dispatch!(self.list_calls(campaign_id, q))
    }

    /// In-progress campaigns with schedule, cap and live counts (the scheduler's view).
    #[tracing::instrument(name = "store.active_campaigns", level = "debug", skip_all)]
    pub async fn active_campaigns(&self) -> Result<Vec<ActiveCampaign>, StoreError> {
        dispatch!(self.active_campaigns())
    }

    /// Claims up to `n` due calls of a campaign for dispatch (pending → queued, attempt + 1),
    /// retries and new calls side by side. Concurrent claimers never get the same call.
    #[tracing::instrument(name = "store.claim_calls", level = "debug", skip_all)]
    pub async fn claim_calls(
        &self,
        campaign_id: Uuid,
        n: usize,
        at: chrono::DateTime<chrono::Utc>,
        zones: &[String],
        rules: &dialer_domain::rules::Rules,
    ) -> Result<Screened, StoreError> {
        dispatch!(self.claim_calls(campaign_id, n, at, zones, rules))
    }

    /// [`Store::claim_calls`] from every zone with recipient windows off (do-not-call lists
    /// still apply): for tools and tests that claim by hand.
    pub async fn claim_due(
        &self,
        campaign_id: Uuid,
        n: usize,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ClaimedCall>, StoreError> {
        let rules = dialer_domain::rules::CallingRules::off().compile("calling_rules")?;
        let zones = self.pending_zones(campaign_id).await?;
        Ok(self.claim_calls(campaign_id, n, at, &zones, &rules).await?.dial)
    }

    /// The distinct zone keys of a campaign's pending calls (a skip scan of the index).
    #[tracing::instrument(name = "store.pending_zones", level = "debug", skip_all)]
    pub async fn pending_zones(&self, campaign_id: Uuid) -> Result<Vec<String>, StoreError> {
        rules_dispatch!(self.pending_zones(campaign_id))
    }

    /// Gives up to `limit` pending calls without a zone key theirs.
    #[tracing::instrument(name = "store.locate_unzoned", level = "debug", skip_all)]
    pub async fn locate_unzoned(&self, limit: usize) -> Result<u64, StoreError> {
        rules_dispatch!(self.locate_unzoned(limit))
    }

    /// Adds or replaces do-not-call entries of a list (`dnc::GLOBAL_LIST` or a campaign id).
    #[tracing::instrument(name = "store.dnc_add", level = "debug", skip_all, fields(n = entries.len()))]
    pub async fn dnc_add(
        &self,
        list: Uuid,
        entries: &[dialer_domain::dnc::DncEntry],
        announce: bool,
    ) -> Result<u64, StoreError> {
        rules_dispatch!(self.dnc_add(list, entries, announce))
    }

    #[tracing::instrument(name = "store.dnc_remove", level = "debug", skip_all)]
    pub async fn dnc_remove(&self, list: Uuid, number: &str) -> Result<bool, StoreError> {
        rules_dispatch!(self.dnc_remove(list, number))
    }

    #[tracing::instrument(name = "store.dnc_get", level = "debug", skip_all)]
    pub async fn dnc_get(&self, list: Uuid, number: &str) -> Result<Option<dialer_domain::dnc::DncView>, StoreError> {
        rules_dispatch!(self.dnc_get(list, number))
    }

    /// The list (global first) that suppresses `number` for `campaign_id` now, if any.
    #[tracing::instrument(name = "store.dnc_check", level = "debug", skip_all)]
    pub async fn dnc_check(&self, campaign_id: Uuid, number: &str) -> Result<Option<Uuid>, StoreError> {
        rules_dispatch!(self.dnc_check(campaign_id, number))
    }

    /// Do-not-call entries the data plane has not been told of, oldest first.
    #[tracing::instrument(name = "store.unannounced", level = "debug", skip_all)]
    pub async fn unannounced(&self, limit: usize) -> Result<Vec<Suppression>, StoreError> {
        rules_dispatch!(self.unannounced(limit))
    }

    #[tracing::instrument(name = "store.mark_announced", level = "debug", skip_all)]
    pub async fn mark_announced(&self, done: &[Suppression]) -> Result<(), StoreError> {
        rules_dispatch!(self.mark_announced(done))
    }

    /// Forgets up to `limit` per-number attempts older than any limit looks back.
    #[tracing::instrument(name = "store.prune_attempts", level = "debug", skip_all)]
    pub async fn prune_attempts(&self, at: chrono::DateTime<chrono::Utc>, limit: usize) -> Result<u64, StoreError> {
        rules_dispatch!(self.prune_attempts(at, limit))
    }

    /// What the rules would do now to the campaign's pending calls.
    #[tracing::instrument(name = "store.preview", level = "debug", skip_all)]
    pub async fn preview(
        &self,
        campaign_id: Uuid,
        rules: &dialer_domain::rules::Rules,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<Preview, StoreError> {
        rules_dispatch!(self.preview(campaign_id, rules, at))
    }

    /// Undoes a claim whose dispatch failed.
    #[tracing::instrument(name = "store.unclaim_calls", level = "debug", skip_all, fields(campaign = %campaign_id))]
    pub async fn unclaim_calls(&self, campaign_id: Uuid, calls: &[ClaimedCall]) -> Result<(), StoreError> {
        dispatch!(self.unclaim_calls(campaign_id, calls))
    }

    /// Completes in-progress campaigns whose every call is terminal.
    #[tracing::instrument(name = "store.complete_finished", level = "debug", skip_all)]
    pub async fn complete_finished(&self) -> Result<Vec<Uuid>, StoreError> {
        dispatch!(self.complete_finished())
    }

    /// Applies a batch of status events (idempotent by call id + attempt). `samples` gives
    /// uniform draws in [0, 1) for backoff jitter.
    #[tracing::instrument(name = "store.record_events", level = "debug", skip_all)]
    pub async fn record_events(
        &self,
        events: &[dialer_domain::messages::StatusEvent],
        samples: &mut (dyn FnMut() -> f64 + Send),
        timeline: Option<&crate::timeline::CqlTimeline>,
    ) -> Result<RecordReport, StoreError> {
        dispatch!(self.record_events(events, samples, timeline, 0))
    }

    /// [`Store::record_events`] for outcomes the control plane decides itself (the reaper, the
    /// embedded mode's recovery at start): a retry they schedule is due no earlier than
    /// `retry_not_before_ms`, when the abandoned attempt cannot be up any more.
    #[tracing::instrument(name = "store.resolve_abandoned", level = "debug", skip_all, fields(n = events.len()))]
    pub async fn resolve_abandoned(
        &self,
        events: &[dialer_domain::messages::StatusEvent],
        samples: &mut (dyn FnMut() -> f64 + Send),
        timeline: Option<&crate::timeline::CqlTimeline>,
        retry_not_before_ms: u64,
    ) -> Result<RecordReport, StoreError> {
        dispatch!(self.record_events(events, samples, timeline, retry_not_before_ms))
    }

    /// Calls queued (not reported started) and dispatched before `queued_before`, or reported
    /// started before `started_before`: up to `limit`, oldest dispatch first.
    #[tracing::instrument(name = "store.stale_calls", level = "debug", skip_all)]
    pub async fn stale_calls(
        &self,
        queued_before: chrono::DateTime<chrono::Utc>,
        started_before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<LiveCall>, StoreError> {
        dispatch!(self.stale_calls(queued_before, started_before, limit))
    }

    /// A call and its attempts from the SQL timeline.
    #[tracing::instrument(name = "store.get_call", level = "debug", skip_all, fields(id = %id))]
    pub async fn get_call(&self, id: Uuid) -> Result<CallDetail, StoreError> {
        dispatch!(self.get_call(id))
    }
}

/// The event log and webhooks (issue 20; `store/events.rs`).
impl Store {
    /// Numbers up to `limit` committed events (the endpoints' claims read them from the log).
    #[tracing::instrument(name = "store.sequence_events", level = "debug", skip_all)]
    pub async fn sequence_events(&self, limit: usize) -> Result<Sequenced, StoreError> {
        events_dispatch!(self.sequence(limit))
    }

    /// Numbered events after position `after`, of one campaign or all, in log order.
    pub async fn read_events(
        &self,
        after: i64,
        campaign: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<LoggedEvent>, StoreError> {
        events_dispatch!(self.read_events(after, campaign, limit))
    }

    /// The first and last positions the log holds.
    pub async fn log_bounds(&self) -> Result<(i64, i64), StoreError> {
        events_dispatch!(self.log_bounds())
    }

    /// Whether an enabled webhook endpoint exists.
    pub async fn any_webhook_enabled(&self) -> Result<bool, StoreError> {
        events_dispatch!(self.any_endpoint())
    }

    /// Forgets up to `limit` events older than `before` that no delivery needs.
    pub async fn prune_events(&self, before: chrono::DateTime<chrono::Utc>, limit: usize) -> Result<u64, StoreError> {
        events_dispatch!(self.prune_events(before, limit))
    }

    pub async fn create_webhook(
        &self,
        s: &dialer_domain::webhooks::EndpointSettings,
        secret: &str,
    ) -> Result<dialer_domain::webhooks::Webhook, StoreError> {
        events_dispatch!(self.create_endpoint(s, secret))
    }

    pub async fn get_webhook(&self, id: Uuid) -> Result<dialer_domain::webhooks::Webhook, StoreError> {
        events_dispatch!(self.get_endpoint(id))
    }

    pub async fn list_webhooks(&self) -> Result<Vec<dialer_domain::webhooks::Webhook>, StoreError> {
        events_dispatch!(self.list_endpoints())
    }

    pub async fn update_webhook(
        &self,
        id: Uuid,
        patch: &dialer_domain::webhooks::UpdateWebhookRequest,
    ) -> Result<dialer_domain::webhooks::Webhook, StoreError> {
        events_dispatch!(self.update_endpoint(id, patch))
    }

    /// `false`: no such endpoint.
    pub async fn delete_webhook(&self, id: Uuid) -> Result<bool, StoreError> {
        events_dispatch!(self.delete_endpoint(id))
    }

    pub async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        secret: &str,
        keep_old_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<dialer_domain::webhooks::Webhook, StoreError> {
        events_dispatch!(self.rotate_secret(id, secret, keep_old_until))
    }

    pub async fn active_endpoints(&self) -> Result<Vec<ActiveEndpoint>, StoreError> {
        events_dispatch!(self.active_endpoints())
    }

    /// Claims up to `max` due deliveries of an endpoint within its concurrency and rate.
    #[tracing::instrument(name = "store.claim_deliveries", level = "debug", skip_all)]
    pub async fn claim_deliveries(
        &self,
        endpoint: Uuid,
        max: usize,
        lease_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<Claim, StoreError> {
        events_dispatch!(self.claim_deliveries(endpoint, max, lease_until))
    }

    /// Records finished attempts.
    #[tracing::instrument(name = "store.finish_deliveries", level = "debug", skip_all, fields(n = done.len()))]
    pub async fn finish_deliveries(&self, done: &[Finished]) -> Result<(), StoreError> {
        events_dispatch!(self.finish_deliveries(done))
    }

    pub async fn reclaim_expired_deliveries(&self) -> Result<u64, StoreError> {
        events_dispatch!(self.reclaim_expired())
    }

    pub async fn dead_letters(&self, endpoint: Uuid, after: i64, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        events_dispatch!(self.dead_letters(endpoint, after, limit))
    }

    /// Replays an endpoint's dead letters (all, or the streams of `seqs`).
    pub async fn replay_dead_letters(&self, endpoint: Uuid, seqs: Option<&[i64]>) -> Result<u64, StoreError> {
        events_dispatch!(self.replay(endpoint, seqs))
    }

    pub async fn delivery_counts(&self) -> Result<QueueCounts, StoreError> {
        events_dispatch!(self.queue_counts())
    }
}

/// Hides a password in a database URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_passwords() {
        assert_eq!(super::redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(super::redact("sqlite://./data/x.db"), "sqlite://./data/x.db");
    }
}
