//! The dialer's persistence: campaigns, registered targets, calls and their attempts, aggregates,
//! the recipient's calling rules, the customer-event log and webhook deliveries, on PostgreSQL
//! (production) or SQLite (the embedded default), and the call timeline on a CQL store.
//!
//! Every operation is a plain generic function over a [`Dialect`] (what differs between the two
//! databases), written once, in a module per aggregate: [`campaigns`], [`stats`], [`calls`],
//! [`claims`], [`recording`], [`rules`], [`events`] (log, endpoints, deliveries). [`Store`] is the
//! handle the rest of the product holds; it derefs to [`Ops`], the operations, implemented once for
//! any dialect's pool. Pure decisions are beside them and tested without a database: what a batch
//! of status events changes ([`record`]), what events a change logs ([`outbox`]).
//!
//! Every write that changes call rows updates `campaign_stats` in the same transaction, so the
//! aggregates always equal the rows ([`Ops::recount_stats`] proves it).

pub mod batch;
pub mod calls;
pub mod campaigns;
pub mod claims;
pub mod dialect;
mod error;
pub mod events;
pub mod model;
mod outbox;
pub mod prompts;
mod record;
pub mod recording;
pub mod rules;
mod settings;
pub mod stats;
pub mod timeline;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dialer_api::campaigns::UpdateCampaignRequest;
use dialer_api::dnc::DncView;
use dialer_api::views::{Call, CallDetail, Campaign, CampaignStats, QueueTargetsResponse};
use dialer_api::webhooks::{UpdateWebhookRequest, Webhook};
use dialer_domain::campaign::CampaignAction;
use dialer_domain::dnc::DncEntry;
use dialer_domain::events::EndpointSettings;
use dialer_domain::messages::StatusEvent;
use dialer_domain::rules::Rules;
use dialer_domain::settings::{CampaignSettings, NewCampaign};
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use uuid::Uuid;

pub use batch::CallBatcher;
pub use campaigns::ImportBatch;
pub use claims::ClaimJob;
pub use dialect::Dialect;
pub use error::{Conflict, Corrupt, StoreError};
pub use events::{
    ActiveEndpoint, Claim, ClaimedDelivery, DeadLetter, Finished, LoggedEvent, QueueCounts, Sequenced,
    set_enabled as set_events_enabled,
};
pub use model::{
    ActiveCampaign, CallAnswer, CallQuery, ClaimedCall, LiveCall, NewCall, Preview, RecordReport, Screened,
    Suppression, UnconfirmedClaim,
};
pub use settings::{StoreSettings, TimelineSettings};
pub use timeline::{CqlTimeline, TimelineError};

/// Rows per multi-row INSERT: under both backends' bind-parameter limits (PostgreSQL 65535,
/// SQLite 32766) with up to 10 columns.
pub(crate) const CHUNK_ROWS: usize = 2000;
/// Numbers per `IN (…)` look-up.
pub(crate) const LOOKUP_CHUNK: usize = 1000;

/// Now, as both backends keep it (microseconds): what a later read returns.
pub(crate) fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// The distinct ids, sorted (rows are locked in id order: no deadlock between writers).
pub(crate) fn sorted_unique(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut v: Vec<Uuid> = ids.collect();
    v.sort_unstable();
    v.dedup();
    v
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

/// A store's connection pool, for tools and tests that run their own SQL.
#[derive(Clone, Debug)]
pub enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// The product's persistence: a pool of either database. It derefs to [`Ops`], so
/// `store.get_campaign(id)` runs the generic operation on the store's database.
#[derive(Clone, Debug)]
pub struct Store(Pool);

/// Pooled PostgreSQL connections idle at least this long are pinged before use.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(1);

impl Store {
    /// Connects to `url` and applies the migrations not applied yet.
    pub async fn open(url: &str, settings: &StoreSettings) -> Result<Store, StoreError> {
        let store = Store::connect(url, settings).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects to `url` (`postgres://…` or `sqlite://PATH`, created if missing).
    pub async fn connect(url: &str, settings: &StoreSettings) -> Result<Store, StoreError> {
        let acquire_timeout = Duration::from_secs(settings.acquire_timeout_sec);
        let bad = |source: sqlx::Error| StoreError::BadUrl { url: redact(url), source };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let o = PgConnectOptions::from_str(url).map_err(bad)?;
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(acquire_timeout)
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
            Ok(Store(Pool::Postgres(pool)))
        } else if url.starts_with("sqlite:") {
            let o = SqliteConnectOptions::from_str(url)
                .map_err(bad)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                // The recorder's batched `UPDATE calls … FROM (VALUES …)`: with automatic
                // indexes SQLite 3.46 scans every call of the table and probes an index it builds
                // on the batch, so each batch cost grew with the table; without, it reads the
                // batch and finds each call by its key (ARCHITECTURE "SQLite at scale").
                .pragma("automatic_index", "off")
                .pragma("temp_store", "memory");
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(acquire_timeout)
                .connect_with(o)
                .await
                .map_err(StoreError::Unavailable)?;
            Ok(Store(Pool::Sqlite(pool)))
        } else {
            Err(StoreError::UnknownUrl { url: redact(url) })
        }
    }

    pub fn kind(&self) -> StoreKind {
        match &self.0 {
            Pool::Postgres(_) => StoreKind::Postgres,
            Pool::Sqlite(_) => StoreKind::Sqlite,
        }
    }

    /// The connection pool, for tools and tests that run their own SQL.
    pub fn pool(&self) -> &Pool {
        &self.0
    }

    /// Applies the migrations under `migrations/<backend>` that are not applied yet.
    #[tracing::instrument(name = "store.migrate", level = "debug", skip_all)]
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.0 {
            Pool::Postgres(p) => sqlx::migrate!("../migrations/postgres").run(p).await?,
            Pool::Sqlite(p) => sqlx::migrate!("../migrations/sqlite").run(p).await?,
        }
        Ok(())
    }

    /// Whether every migration this build knows is applied.
    #[tracing::instrument(name = "store.migrations_applied", level = "debug", skip_all)]
    pub async fn migrations_applied(&self) -> Result<bool, StoreError> {
        const APPLIED: &str = "SELECT count(*) FROM _sqlx_migrations WHERE success";
        let (known, applied): (usize, i64) = match &self.0 {
            Pool::Postgres(p) => (
                sqlx::migrate!("../migrations/postgres").iter().count(),
                sqlx::query_scalar(APPLIED).fetch_one(p).await?,
            ),
            Pool::Sqlite(p) => {
                (sqlx::migrate!("../migrations/sqlite").iter().count(), sqlx::query_scalar(APPLIED).fetch_one(p).await?)
            }
        };
        Ok(applied as usize >= known)
    }

    /// A round trip to the database.
    #[tracing::instrument(name = "store.ping", level = "debug", skip_all)]
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.0 {
            Pool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop)?,
            Pool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop)?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        match &self.0 {
            Pool::Postgres(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }

    /// [`Ops::claim_calls`] from every zone with recipient windows off (do-not-call lists
    /// still apply): for tools and tests that claim by hand.
    pub async fn claim_due(
        &self,
        campaign_id: Uuid,
        n: usize,
        at: DateTime<Utc>,
    ) -> Result<Vec<ClaimedCall>, StoreError> {
        let rules = dialer_domain::rules::CallingRules::off().compile("calling_rules")?;
        let deadline = at + std::time::Duration::from_secs(300);
        let zones: Vec<(String, DateTime<Utc>)> =
            self.pending_zones(campaign_id).await?.into_iter().map(|z| (z, deadline)).collect();
        Ok(self.claim_calls(campaign_id, n, at, &zones, &rules).await?.dial)
    }
}

impl std::ops::Deref for Store {
    type Target = dyn Ops;

    fn deref(&self) -> &(dyn Ops + 'static) {
        match &self.0 {
            Pool::Postgres(p) => p,
            Pool::Sqlite(p) => p,
        }
    }
}

/// A boxed operation of the store (one allocation per call, beside a database round trip).
pub type Op<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Every operation of the store, on either database ([`Store`] derefs to it): one trait per
/// aggregate, each method one generic function of the module named in its documentation, run
/// for the store's dialect. Calling a method through a `Store` needs no import of these traits.
pub trait Ops: CampaignOps + CallOps + RuleOps + EventOps + PromptOps {}

impl<T: CampaignOps + CallOps + RuleOps + EventOps + PromptOps> Ops for T {}

/// Prompts: the audio answered calls play ([`prompts`]).
pub trait PromptOps: Send + Sync {
    /// Stores a prompt's audio (8 kHz mono 16-bit PCM WAV) and its hash.
    fn create_prompt<'a>(
        &'a self,
        name: &'a str,
        duration_ms: u64,
        sha256: &'a str,
        wav: Vec<u8>,
    ) -> Op<'a, dialer_api::views::Prompt>;
    fn get_prompt(&self, id: Uuid) -> Op<'_, dialer_api::views::Prompt>;
    fn list_prompts(&self) -> Op<'_, Vec<dialer_api::views::Prompt>>;
    fn prompt_audio(&self, id: Uuid) -> Op<'_, Vec<u8>>;
    /// Which of `ids` name no prompt.
    fn missing_prompts<'a>(&'a self, ids: &'a [Uuid]) -> Op<'a, Vec<Uuid>>;
    /// `false`: no such prompt; a prompt a live campaign plays is refused (409).
    fn delete_prompt(&self, id: Uuid) -> Op<'_, bool>;
}

impl<D: Dialect> PromptOps for sqlx::Pool<D> {
    fn create_prompt<'a>(
        &'a self,
        name: &'a str,
        duration_ms: u64,
        sha256: &'a str,
        wav: Vec<u8>,
    ) -> Op<'a, dialer_api::views::Prompt> {
        Box::pin(prompts::create_prompt(self, name, duration_ms, sha256, wav))
    }
    fn get_prompt(&self, id: Uuid) -> Op<'_, dialer_api::views::Prompt> {
        Box::pin(prompts::get_prompt(self, id))
    }
    fn list_prompts(&self) -> Op<'_, Vec<dialer_api::views::Prompt>> {
        Box::pin(prompts::list_prompts(self))
    }
    fn prompt_audio(&self, id: Uuid) -> Op<'_, Vec<u8>> {
        Box::pin(prompts::prompt_audio(self, id))
    }
    fn missing_prompts<'a>(&'a self, ids: &'a [Uuid]) -> Op<'a, Vec<Uuid>> {
        Box::pin(prompts::missing_prompts(self, ids))
    }
    fn delete_prompt(&self, id: Uuid) -> Op<'_, bool> {
        Box::pin(prompts::delete_prompt(self, id))
    }
}

/// Campaigns and their aggregates.
pub trait CampaignOps: Send + Sync {
    // --- campaigns ([`campaigns`], [`stats`]) ------------------------------------------------------

    /// Creates a campaign with its targets, one pending call per target, its stats row and a
    /// `created` event, all or nothing: one transaction, or for a large list on PostgreSQL one
    /// per batch with the campaign's row last ([`campaigns::create_campaign_in_parts`]).
    fn create_campaign<'a>(&'a self, c: &'a NewCampaign) -> Op<'a, Campaign>;
    /// Creates a campaign whose targets arrive in batches, all or nothing
    /// ([`campaigns::import_campaign`]).
    fn import_campaign<'a>(
        &'a self,
        settings: &'a CampaignSettings,
        batches: tokio::sync::mpsc::Receiver<ImportBatch>,
    ) -> Op<'a, Campaign>;
    fn get_campaign(&self, id: Uuid) -> Op<'_, Campaign>;
    /// Campaigns in creation order, after `after`.
    fn list_campaigns(&self, after: Option<Uuid>, limit: u32) -> Op<'_, Vec<Campaign>>;
    /// Applies a partial update.
    fn update_campaign<'a>(&'a self, id: Uuid, patch: &'a UpdateCampaignRequest) -> Op<'a, Campaign>;
    /// Moves the campaign through its state machine atomically.
    fn transition(&self, id: Uuid, action: CampaignAction) -> Op<'_, Campaign>;
    /// In-progress campaigns with schedule, cap and live counts (the scheduler's view).
    fn active_campaigns(&self) -> Op<'_, Vec<ActiveCampaign>>;
    /// Completes in-progress campaigns whose every call is terminal.
    fn complete_finished(&self) -> Op<'_, Vec<Uuid>>;
    /// The aggregates kept with the call rows.
    fn stats(&self, id: Uuid) -> Op<'_, CampaignStats>;
    /// The same figures as [`Ops::stats`], counted afresh from the call rows.
    fn recount_stats(&self, id: Uuid) -> Op<'_, CampaignStats>;
    /// The campaign's pending calls grouped by why they may wait ([`stats::PendingGroup`]).
    fn pending_groups(&self, id: Uuid, at: DateTime<Utc>) -> Op<'_, Vec<stats::PendingGroup>>;
    /// Calls queued or in progress in every campaign.
    fn live_calls(&self) -> Op<'_, u64>;
    /// Deletes the rows of campaign loads begun before `before` that never finished
    /// ([`campaigns::discard_abandoned_loads`]); returns how many.
    fn discard_abandoned_loads(&self, before: DateTime<Utc>) -> Op<'_, u64>;
}

impl<D: Dialect> CampaignOps for sqlx::Pool<D> {
    fn create_campaign<'a>(&'a self, c: &'a NewCampaign) -> Op<'a, Campaign> {
        Box::pin(campaigns::create_campaign(self, c))
    }
    fn import_campaign<'a>(
        &'a self,
        settings: &'a CampaignSettings,
        batches: tokio::sync::mpsc::Receiver<ImportBatch>,
    ) -> Op<'a, Campaign> {
        Box::pin(campaigns::import_campaign(self, settings, batches))
    }
    fn get_campaign(&self, id: Uuid) -> Op<'_, Campaign> {
        Box::pin(campaigns::get_campaign(self, id))
    }
    fn list_campaigns(&self, after: Option<Uuid>, limit: u32) -> Op<'_, Vec<Campaign>> {
        Box::pin(campaigns::list_campaigns(self, after, limit))
    }
    fn update_campaign<'a>(&'a self, id: Uuid, patch: &'a UpdateCampaignRequest) -> Op<'a, Campaign> {
        Box::pin(campaigns::update_campaign(self, id, patch))
    }
    fn transition(&self, id: Uuid, action: CampaignAction) -> Op<'_, Campaign> {
        Box::pin(campaigns::transition(self, id, action))
    }
    fn active_campaigns(&self) -> Op<'_, Vec<ActiveCampaign>> {
        Box::pin(campaigns::active_campaigns(self))
    }
    fn complete_finished(&self) -> Op<'_, Vec<Uuid>> {
        Box::pin(campaigns::complete_finished(self))
    }
    fn stats(&self, id: Uuid) -> Op<'_, CampaignStats> {
        Box::pin(stats::stats(self, id))
    }
    fn recount_stats(&self, id: Uuid) -> Op<'_, CampaignStats> {
        Box::pin(stats::recount_stats(self, id))
    }
    fn pending_groups(&self, id: Uuid, at: DateTime<Utc>) -> Op<'_, Vec<stats::PendingGroup>> {
        Box::pin(stats::pending_groups(self, id, at))
    }
    fn live_calls(&self) -> Op<'_, u64> {
        Box::pin(stats::live_calls(self))
    }
    fn discard_abandoned_loads(&self, before: DateTime<Utc>) -> Op<'_, u64> {
        Box::pin(campaigns::discard_abandoned_loads(self, before))
    }
}

/// Calls: queued by the API, claimed by the scheduler, recorded from status events.
pub trait CallOps: Send + Sync {
    // --- calls ([`calls`]) -------------------------------------------------------------------------

    /// Queues new calls for registered numbers (`(number, metadata)`; metadata `None` keeps the
    /// registered target's). A number that is not registered fails the whole request, naming
    /// its index; numbers with a live call already are counted, not queued twice.
    fn queue_targets<'a>(
        &'a self,
        campaign_id: Uuid,
        targets: &'a [(String, Option<Value>)],
    ) -> Op<'a, QueueTargetsResponse>;
    /// Which of `numbers` are registered with the campaign.
    fn registered_numbers<'a>(
        &'a self,
        campaign_id: Uuid,
        numbers: &'a [&'a str],
    ) -> Op<'a, std::collections::HashSet<String>>;
    /// Creates a call for one registered number, or returns the live call it already has
    /// (`false` = not created).
    fn create_call<'a>(
        &'a self,
        campaign_id: Uuid,
        number: &'a str,
        metadata: Option<&'a Value>,
    ) -> Op<'a, (Call, bool)>;
    /// [`Ops::create_call`] for many requests in one transaction, each with its own answer;
    /// the (campaign, number) pairs must be distinct. `Err`: the batch failed as a whole and
    /// wrote nothing (do the requests one by one). SQLite does them one by one.
    fn create_calls<'a>(&'a self, reqs: &'a [NewCall]) -> Op<'a, Vec<CallAnswer>>;
    fn list_calls<'a>(&'a self, campaign_id: Uuid, q: &'a CallQuery) -> Op<'a, Vec<Call>>;
    /// A call and its attempts from the SQL timeline.
    fn get_call(&self, id: Uuid) -> Op<'_, CallDetail>;
    /// Calls queued (not reported started) and dispatched before `queued_before`, or reported
    /// started before `started_before`: up to `limit`, oldest dispatch first.
    fn stale_calls(
        &self,
        queued_before: DateTime<Utc>,
        started_before: DateTime<Utc>,
        limit: usize,
    ) -> Op<'_, Vec<LiveCall>>;

    // --- claims ([`claims`]) -----------------------------------------------------------------------

    /// Claims up to `n` due calls of a campaign's open `zones` for dispatch (pending → queued,
    /// attempt + 1), retries and new calls side by side, screened by `rules`; each zone comes
    /// with its calls' message deadline. Concurrent claimers never get the same call.
    fn claim_calls<'a>(
        &'a self,
        campaign_id: Uuid,
        n: usize,
        at: DateTime<Utc>,
        zones: &'a [(String, DateTime<Utc>)],
        rules: &'a Rules,
    ) -> Op<'a, Screened>;
    /// [`Ops::claim_calls`] for several campaigns (distinct) in one transaction and a few
    /// statements whatever their number; the results in the jobs' order.
    fn claim_many<'a>(&'a self, jobs: &'a [ClaimJob<'a>], at: DateTime<Utc>) -> Op<'a, Vec<Screened>>;
    /// Queued calls claimed in `claimed`, deadline still ahead, not taken since `now`; marked
    /// not to be taken again before `again_at`.
    fn unconfirmed_claims(
        &self,
        claimed: std::ops::Range<DateTime<Utc>>,
        now: DateTime<Utc>,
        again_at: DateTime<Utc>,
        limit: usize,
    ) -> Op<'_, Vec<UnconfirmedClaim>>;
    /// Calls published again whose message the broker acknowledged: not taken by
    /// [`Ops::unconfirmed_claims`] any more.
    fn confirm_claims<'a>(&'a self, calls: &'a [Uuid]) -> Op<'a, ()>;
    /// Undoes a claim whose dispatch failed.
    fn unclaim_calls<'a>(&'a self, campaign_id: Uuid, calls: &'a [ClaimedCall]) -> Op<'a, ()>;

    // --- recording ([`recording`]) -----------------------------------------------------------------

    /// Applies a batch of status events (idempotent by call id + attempt). `samples` gives
    /// uniform draws in [0, 1) for backoff jitter.
    fn record_events<'a>(
        &'a self,
        events: &'a [StatusEvent],
        samples: &'a mut (dyn FnMut() -> f64 + Send),
        timeline: Option<&'a CqlTimeline>,
    ) -> Op<'a, RecordReport>;
    /// [`Ops::record_events`] for outcomes the control plane decides itself (the reaper, the
    /// embedded mode's recovery at start): a retry they schedule is due no earlier than
    /// `retry_not_before_ms`, when the abandoned attempt cannot be up any more.
    fn resolve_abandoned<'a>(
        &'a self,
        events: &'a [StatusEvent],
        samples: &'a mut (dyn FnMut() -> f64 + Send),
        timeline: Option<&'a CqlTimeline>,
        retry_not_before_ms: u64,
    ) -> Op<'a, RecordReport>;
}

impl<D: Dialect> CallOps for sqlx::Pool<D> {
    fn queue_targets<'a>(
        &'a self,
        campaign_id: Uuid,
        targets: &'a [(String, Option<Value>)],
    ) -> Op<'a, QueueTargetsResponse> {
        Box::pin(calls::queue_targets(self, campaign_id, targets))
    }
    fn registered_numbers<'a>(
        &'a self,
        campaign_id: Uuid,
        numbers: &'a [&'a str],
    ) -> Op<'a, std::collections::HashSet<String>> {
        Box::pin(calls::registered_numbers(self, campaign_id, numbers))
    }
    fn create_call<'a>(
        &'a self,
        campaign_id: Uuid,
        number: &'a str,
        metadata: Option<&'a Value>,
    ) -> Op<'a, (Call, bool)> {
        Box::pin(calls::create_call(self, campaign_id, number, metadata))
    }
    fn create_calls<'a>(&'a self, reqs: &'a [NewCall]) -> Op<'a, Vec<CallAnswer>> {
        Box::pin(calls::create_calls(self, reqs))
    }
    fn list_calls<'a>(&'a self, campaign_id: Uuid, q: &'a CallQuery) -> Op<'a, Vec<Call>> {
        Box::pin(calls::list_calls(self, campaign_id, q))
    }
    fn get_call(&self, id: Uuid) -> Op<'_, CallDetail> {
        Box::pin(calls::get_call(self, id))
    }
    fn stale_calls(
        &self,
        queued_before: DateTime<Utc>,
        started_before: DateTime<Utc>,
        limit: usize,
    ) -> Op<'_, Vec<LiveCall>> {
        Box::pin(calls::stale_calls(self, queued_before, started_before, limit))
    }
    fn claim_calls<'a>(
        &'a self,
        campaign_id: Uuid,
        n: usize,
        at: DateTime<Utc>,
        zones: &'a [(String, DateTime<Utc>)],
        rules: &'a Rules,
    ) -> Op<'a, Screened> {
        Box::pin(claims::claim_calls(self, campaign_id, n, at, zones, rules))
    }
    fn claim_many<'a>(&'a self, jobs: &'a [ClaimJob<'a>], at: DateTime<Utc>) -> Op<'a, Vec<Screened>> {
        Box::pin(claims::claim_many(self, jobs, at))
    }
    fn unconfirmed_claims(
        &self,
        claimed: std::ops::Range<DateTime<Utc>>,
        now: DateTime<Utc>,
        again_at: DateTime<Utc>,
        limit: usize,
    ) -> Op<'_, Vec<UnconfirmedClaim>> {
        Box::pin(claims::unconfirmed_claims(self, claimed, now, again_at, limit))
    }
    fn confirm_claims<'a>(&'a self, calls: &'a [Uuid]) -> Op<'a, ()> {
        Box::pin(claims::confirm_claims(self, calls))
    }
    fn unclaim_calls<'a>(&'a self, campaign_id: Uuid, calls: &'a [ClaimedCall]) -> Op<'a, ()> {
        Box::pin(claims::unclaim_calls(self, campaign_id, calls))
    }
    fn record_events<'a>(
        &'a self,
        events: &'a [StatusEvent],
        samples: &'a mut (dyn FnMut() -> f64 + Send),
        timeline: Option<&'a CqlTimeline>,
    ) -> Op<'a, RecordReport> {
        Box::pin(recording::record_events(self, events, samples, timeline, 0))
    }
    fn resolve_abandoned<'a>(
        &'a self,
        events: &'a [StatusEvent],
        samples: &'a mut (dyn FnMut() -> f64 + Send),
        timeline: Option<&'a CqlTimeline>,
        retry_not_before_ms: u64,
    ) -> Op<'a, RecordReport> {
        Box::pin(recording::record_events(self, events, samples, timeline, retry_not_before_ms))
    }
}

/// The recipient's calling rules: zones, do-not-call lists, per-number attempts, the preview.
pub trait RuleOps: Send + Sync {
    // --- the recipient's calling rules ([`rules`]) -------------------------------------------------

    /// The distinct zone keys of a campaign's pending calls (a skip scan of the index).
    fn pending_zones(&self, campaign_id: Uuid) -> Op<'_, Vec<String>>;
    /// [`RuleOps::pending_zones`] of each campaign, in one statement.
    fn pending_zones_of<'a>(&'a self, campaigns: &'a [Uuid]) -> Op<'a, Vec<Vec<String>>>;
    /// Gives up to `limit` pending calls without a zone key theirs.
    fn locate_unzoned(&self, limit: usize) -> Op<'_, u64>;
    /// Adds or replaces do-not-call entries of a list (`dnc::GLOBAL_LIST` or a campaign id).
    fn dnc_add<'a>(&'a self, list: Uuid, entries: &'a [DncEntry], announce: bool) -> Op<'a, u64>;
    fn dnc_remove<'a>(&'a self, list: Uuid, number: &'a str) -> Op<'a, bool>;
    fn dnc_get<'a>(&'a self, list: Uuid, number: &'a str) -> Op<'a, Option<DncView>>;
    /// The list (global first) that suppresses `number` for `campaign_id` now, if any.
    fn dnc_check<'a>(&'a self, campaign_id: Uuid, number: &'a str) -> Op<'a, Option<Uuid>>;
    /// Do-not-call entries the data plane has not been told of, oldest first.
    fn unannounced(&self, limit: usize) -> Op<'_, Vec<Suppression>>;
    fn mark_announced<'a>(&'a self, done: &'a [Suppression]) -> Op<'a, ()>;
    /// Forgets up to `limit` per-number attempts older than any limit looks back.
    fn prune_attempts(&self, at: DateTime<Utc>, limit: usize) -> Op<'_, u64>;
    /// What the rules would do now to the campaign's pending calls.
    fn preview<'a>(&'a self, campaign_id: Uuid, rules: &'a Rules, at: DateTime<Utc>) -> Op<'a, Preview>;
}

impl<D: Dialect> RuleOps for sqlx::Pool<D> {
    fn pending_zones(&self, campaign_id: Uuid) -> Op<'_, Vec<String>> {
        Box::pin(async move { Ok(rules::pending_zones(self, &[campaign_id]).await?.pop().unwrap_or_default()) })
    }
    fn pending_zones_of<'a>(&'a self, campaigns: &'a [Uuid]) -> Op<'a, Vec<Vec<String>>> {
        Box::pin(rules::pending_zones(self, campaigns))
    }
    fn locate_unzoned(&self, limit: usize) -> Op<'_, u64> {
        Box::pin(rules::locate_unzoned(self, limit))
    }
    fn dnc_add<'a>(&'a self, list: Uuid, entries: &'a [DncEntry], announce: bool) -> Op<'a, u64> {
        Box::pin(rules::dnc_add(self, list, entries, announce))
    }
    fn dnc_remove<'a>(&'a self, list: Uuid, number: &'a str) -> Op<'a, bool> {
        Box::pin(rules::dnc_remove(self, list, number))
    }
    fn dnc_get<'a>(&'a self, list: Uuid, number: &'a str) -> Op<'a, Option<DncView>> {
        Box::pin(rules::dnc_get(self, list, number))
    }
    fn dnc_check<'a>(&'a self, campaign_id: Uuid, number: &'a str) -> Op<'a, Option<Uuid>> {
        Box::pin(rules::dnc_check(self, campaign_id, number))
    }
    fn unannounced(&self, limit: usize) -> Op<'_, Vec<Suppression>> {
        Box::pin(rules::unannounced(self, limit))
    }
    fn mark_announced<'a>(&'a self, done: &'a [Suppression]) -> Op<'a, ()> {
        Box::pin(rules::mark_announced(self, done))
    }
    fn prune_attempts(&self, at: DateTime<Utc>, limit: usize) -> Op<'_, u64> {
        Box::pin(rules::prune_attempts(self, at, limit))
    }
    fn preview<'a>(&'a self, campaign_id: Uuid, rules: &'a Rules, at: DateTime<Utc>) -> Op<'a, Preview> {
        Box::pin(rules::preview(self, campaign_id, rules, at))
    }
}

/// The event log and webhook delivery.
pub trait EventOps: Send + Sync {
    // --- the event log and webhooks ([`events`]) ---------------------------------------------------

    /// Numbers up to `limit` committed events (the endpoints' claims read them from the log).
    fn sequence_events(&self, limit: usize) -> Op<'_, Sequenced>;
    /// Numbered events after position `after`, of one campaign or all, in log order.
    fn read_events(&self, after: i64, campaign: Option<Uuid>, limit: usize) -> Op<'_, Vec<LoggedEvent>>;
    /// The first and last positions the log holds.
    fn log_bounds(&self) -> Op<'_, (i64, i64)>;
    /// Whether an enabled webhook endpoint exists.
    fn any_webhook_enabled(&self) -> Op<'_, bool>;
    /// Forgets up to `limit` events older than `before` that no delivery needs.
    fn prune_events(&self, before: DateTime<Utc>, limit: usize) -> Op<'_, u64>;
    fn create_webhook<'a>(&'a self, s: &'a EndpointSettings, secret: &'a str) -> Op<'a, Webhook>;
    fn get_webhook(&self, id: Uuid) -> Op<'_, Webhook>;
    fn list_webhooks(&self) -> Op<'_, Vec<Webhook>>;
    fn update_webhook<'a>(&'a self, id: Uuid, patch: &'a UpdateWebhookRequest) -> Op<'a, Webhook>;
    /// `false`: no such endpoint.
    fn delete_webhook(&self, id: Uuid) -> Op<'_, bool>;
    fn rotate_webhook_secret<'a>(&'a self, id: Uuid, secret: &'a str, keep_old_until: DateTime<Utc>)
    -> Op<'a, Webhook>;
    fn active_endpoints(&self) -> Op<'_, Vec<ActiveEndpoint>>;
    /// Every endpoint's stored secret and previous secret (to seal those stored unsealed).
    fn webhook_secrets(&self) -> Op<'_, Vec<(Uuid, String, Option<String>)>>;
    fn set_webhook_secrets<'a>(&'a self, id: Uuid, secret: &'a str, previous: Option<&'a str>) -> Op<'a, ()>;
    /// Appends entries to the audit log (their `id` is given by the store).
    fn append_audit<'a>(&'a self, entries: &'a [dialer_api::views::AuditEntry]) -> Op<'a, ()>;
    /// Audit entries after `after`, oldest first.
    fn read_audit(&self, after: i64, limit: u32) -> Op<'_, Vec<dialer_api::views::AuditEntry>>;
    /// Claims up to `max` due deliveries of an endpoint within its concurrency and rate.
    fn claim_deliveries(&self, endpoint: Uuid, max: usize, lease_until: DateTime<Utc>) -> Op<'_, Claim>;
    /// Records finished attempts.
    fn finish_deliveries<'a>(&'a self, done: &'a [Finished]) -> Op<'a, ()>;
    fn reclaim_expired_deliveries(&self) -> Op<'_, u64>;
    fn dead_letters(&self, endpoint: Uuid, after: i64, limit: u32) -> Op<'_, Vec<DeadLetter>>;
    /// Replays an endpoint's dead letters (all, or the streams of `seqs`).
    fn replay_dead_letters<'a>(&'a self, endpoint: Uuid, seqs: Option<&'a [i64]>) -> Op<'a, u64>;
    fn delivery_counts(&self) -> Op<'_, QueueCounts>;
}

impl<D: Dialect> EventOps for sqlx::Pool<D> {
    fn sequence_events(&self, limit: usize) -> Op<'_, Sequenced> {
        Box::pin(events::log::sequence(self, limit))
    }
    fn read_events(&self, after: i64, campaign: Option<Uuid>, limit: usize) -> Op<'_, Vec<LoggedEvent>> {
        Box::pin(events::log::read_events(self, after, campaign, limit))
    }
    fn log_bounds(&self) -> Op<'_, (i64, i64)> {
        Box::pin(events::log::log_bounds(self))
    }
    fn any_webhook_enabled(&self) -> Op<'_, bool> {
        Box::pin(events::endpoints::any_endpoint(self))
    }
    fn prune_events(&self, before: DateTime<Utc>, limit: usize) -> Op<'_, u64> {
        Box::pin(events::log::prune_events(self, before, limit))
    }
    fn create_webhook<'a>(&'a self, s: &'a EndpointSettings, secret: &'a str) -> Op<'a, Webhook> {
        Box::pin(events::endpoints::create_endpoint(self, s, secret))
    }
    fn get_webhook(&self, id: Uuid) -> Op<'_, Webhook> {
        Box::pin(events::endpoints::get_endpoint(self, id))
    }
    fn list_webhooks(&self) -> Op<'_, Vec<Webhook>> {
        Box::pin(events::endpoints::list_endpoints(self))
    }
    fn update_webhook<'a>(&'a self, id: Uuid, patch: &'a UpdateWebhookRequest) -> Op<'a, Webhook> {
        Box::pin(events::endpoints::update_endpoint(self, id, patch))
    }
    fn delete_webhook(&self, id: Uuid) -> Op<'_, bool> {
        Box::pin(events::endpoints::delete_endpoint(self, id))
    }
    fn rotate_webhook_secret<'a>(
        &'a self,
        id: Uuid,
        secret: &'a str,
        keep_old_until: DateTime<Utc>,
    ) -> Op<'a, Webhook> {
        Box::pin(events::endpoints::rotate_secret(self, id, secret, keep_old_until))
    }
    fn active_endpoints(&self) -> Op<'_, Vec<ActiveEndpoint>> {
        Box::pin(events::endpoints::active_endpoints(self))
    }
    fn webhook_secrets(&self) -> Op<'_, Vec<(Uuid, String, Option<String>)>> {
        Box::pin(events::endpoints::secrets(self))
    }
    fn set_webhook_secrets<'a>(&'a self, id: Uuid, secret: &'a str, previous: Option<&'a str>) -> Op<'a, ()> {
        Box::pin(events::endpoints::set_secrets(self, id, secret, previous))
    }
    fn append_audit<'a>(&'a self, entries: &'a [dialer_api::views::AuditEntry]) -> Op<'a, ()> {
        Box::pin(events::audit::append(self, entries))
    }
    fn read_audit(&self, after: i64, limit: u32) -> Op<'_, Vec<dialer_api::views::AuditEntry>> {
        Box::pin(events::audit::read(self, after, limit))
    }
    fn claim_deliveries(&self, endpoint: Uuid, max: usize, lease_until: DateTime<Utc>) -> Op<'_, Claim> {
        Box::pin(events::deliveries::claim_deliveries(self, endpoint, max, lease_until))
    }
    fn finish_deliveries<'a>(&'a self, done: &'a [Finished]) -> Op<'a, ()> {
        Box::pin(events::deliveries::finish_deliveries(self, done))
    }
    fn reclaim_expired_deliveries(&self) -> Op<'_, u64> {
        Box::pin(events::deliveries::reclaim_expired(self))
    }
    fn dead_letters(&self, endpoint: Uuid, after: i64, limit: u32) -> Op<'_, Vec<DeadLetter>> {
        Box::pin(events::deliveries::dead_letters(self, endpoint, after, limit))
    }
    fn replay_dead_letters<'a>(&'a self, endpoint: Uuid, seqs: Option<&'a [i64]>) -> Op<'a, u64> {
        Box::pin(events::deliveries::replay(self, endpoint, seqs))
    }
    fn delivery_counts(&self) -> Op<'_, QueueCounts> {
        Box::pin(events::deliveries::queue_counts(self))
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
