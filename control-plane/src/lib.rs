//! The control plane of the dialer: the REST API for campaigns, targets, calls and stats
//! (axum, OpenAPI from utoipa), its persistence on PostgreSQL or SQLite (sqlx) behind one
//! [`store::Store`], and the configuration shared by every `dialer` command. Later the
//! scheduler and recorder live here too. It never places calls itself: the data plane does.

pub mod api;
pub mod calling_rules;
pub mod config;
pub mod live;
pub mod observability;
pub mod reaper;
pub mod recorder;
pub mod scheduler;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use dialer_store::{Store, StoreError, StoreOptions};

/// Connects to the configured store and applies migrations.
pub async fn open_store(cfg: &Config, url: &str) -> Result<Store, StoreError> {
    let store = Store::connect(
        url,
        &StoreOptions {
            max_connections: cfg.store.max_connections,
            acquire_timeout: Duration::from_secs(cfg.store.acquire_timeout_sec),
        },
    )
    .await?;
    store.migrate().await?;
    Ok(store)
}

/// The API-level guard configured by `limits.max_concurrent_calls` and `limits.daily_usage_cap`.
pub fn api_guard(cfg: &Config) -> Arc<dialer_limiter::ApiGuard> {
    Arc::new(dialer_limiter::ApiGuard::new(cfg.limits.max_concurrent_calls, cfg.limits.daily_usage_cap))
}

/// The API router over `store`.
pub fn app(cfg: &Config, store: Store) -> axum::Router {
    app_with_guard(cfg, store, api_guard(cfg))
}

/// The API router with a given guard (tests hold on to it).
pub fn app_with_guard(cfg: &Config, store: Store, guard: Arc<dialer_limiter::ApiGuard>) -> axum::Router {
    app_with(cfg, store, guard, None)
}

/// The API router with every part given.
pub fn app_with(
    cfg: &Config,
    store: Store,
    guard: Arc<dialer_limiter::ApiGuard>,
    timeline: Option<dialer_store::timeline::CqlTimeline>,
) -> axum::Router {
    app_checked(cfg, store, guard, timeline, Vec::new())
}

/// The API router with readiness checks beyond the store.
pub fn app_checked(
    cfg: &Config,
    store: Store,
    guard: Arc<dialer_limiter::ApiGuard>,
    timeline: Option<dialer_store::timeline::CqlTimeline>,
    checks: Vec<observability::ReadyCheck>,
) -> axum::Router {
    app_serving(cfg, store, guard, timeline, checks, EventPipeline::default())
}

/// What a process's event pipeline gives the API: the live stream's hub (when the log is on and
/// the pipeline runs) and the webhooks' figures.
#[derive(Clone, Debug, Default)]
pub struct EventPipeline {
    pub live: Option<Arc<live::LiveHub>>,
    pub summary: Arc<webhooks::Summary>,
}

/// Starts the event pipeline (issue 20) on `store`: the sequencer, the live stream's tail, the
/// upkeep and, with `webhooks.enabled`, the deliverer; each stops when its `shutdown()` resolves.
/// Nothing starts with `events.enabled` off.
pub fn spawn_events<F>(cfg: &Config, store: &Store, shutdown: impl Fn() -> F) -> Result<EventPipeline, reqwest::Error>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    dialer_store::set_events_enabled(cfg.events.enabled);
    let summary = Arc::new(webhooks::Summary::default());
    if !cfg.events.enabled {
        return Ok(EventPipeline { live: None, summary });
    }
    let e = &cfg.events;
    let poll = Duration::from_millis(e.poll_ms);
    let hub = live::LiveHub::new(store.clone(), e.live_buffer, Duration::from_millis(e.live_stats_every_ms));
    let wake = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(hub.clone().run(poll.max(Duration::from_millis(250)), shutdown()));
    let seq =
        webhooks::run_sequencer(store.clone(), poll, wake.clone(), Some(hub.clone()), summary.clone(), shutdown());
    tokio::spawn(seq);
    let keep = Duration::from_secs(e.keep_hours * 3600);
    tokio::spawn(webhooks::run_upkeep(store.clone(), keep, summary.clone(), shutdown()));
    if cfg.webhooks.enabled {
        let settings = cfg.webhooks.delivery();
        let client = webhooks::Deliverer::client(&settings)?;
        let d = webhooks::Deliverer { store: store.clone(), settings, client, summary: summary.clone() };
        tokio::spawn(d.run(wake, shutdown()));
    }
    Ok(EventPipeline { live: Some(hub), summary })
}

/// The API router with every part, the event pipeline's included.
pub fn app_serving(
    cfg: &Config,
    store: Store,
    guard: Arc<dialer_limiter::ApiGuard>,
    timeline: Option<dialer_store::timeline::CqlTimeline>,
    checks: Vec<observability::ReadyCheck>,
    events: EventPipeline,
) -> axum::Router {
    // `/metrics` answers in any process serving the API (the binary installs first, with the
    // catalogues of everything it runs; this adds nothing then).
    observability::install();
    api::router(api::AppState {
        calls: dialer_store::CallBatcher::new(store.clone()),
        store,
        api: Arc::new(cfg.api.clone()),
        calling_rules: Arc::new(cfg.calling_rules.clone()),
        guard,
        timeline,
        checks: checks.into(),
        campaigns: Arc::new(api::CampaignCache::new(Duration::from_millis(cfg.api.campaign_cache_ms))),
        live: events.live,
        summary: events.summary,
    })
}

/// Connects the CQL timeline when `timeline.cql_nodes` is set.
pub async fn open_timeline(
    cfg: &Config,
) -> Result<Option<dialer_store::timeline::CqlTimeline>, dialer_store::timeline::TimelineError> {
    if cfg.timeline.cql_nodes.is_empty() {
        return Ok(None);
    }
    let t = &cfg.timeline;
    let ttl = Duration::from_secs(u64::from(t.ttl_days) * 86_400);
    dialer_store::timeline::CqlTimeline::connect(&t.cql_nodes, &t.keyspace, t.replication_factor)
        .await
        .map(|c| Some(c.with_ttl(ttl)))
}

/// Reconciles the limiter's counters with its leases every `every`, logging and counting drift,
/// until `shutdown` resolves.
pub async fn run_reconciler(
    backend: dialer_limiter::Backend,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = backend.reconcile().await {
            tracing::warn!(error = %e, "limiter reconciliation failed; will retry");
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
