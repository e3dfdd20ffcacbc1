//! The control plane of the dialer: the REST API for campaigns, targets, calls and stats
//! (axum, OpenAPI from utoipa), the scheduler (due calls to the dispatch topic within the caps
//! and the recipient's windows), the recorders (status events to the store), the reaper (calls
//! whose dispatch or outcome was lost) and the event pipeline (webhooks, the live stream). Its
//! state is in [`dialer_store`]; it never places calls itself: the data plane does. It owns the
//! settings of what it runs ([`ApiSettings`], [`SchedulerSettings`], [`EventsSettings`],
//! [`WebhookSettings`]); the binary reads them and hands them over.

pub mod api;
pub mod calling_rules;
pub mod console;
pub mod live;
pub mod observability;
pub mod reaper;
pub mod recorder;
pub mod scheduler;
pub mod secrets;
pub mod targets;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use dialer_domain::rules::CallingRules;
use dialer_limiter::{ApiGuard, LimitSettings};

pub use api::{ApiKey, ApiSettings};
pub use dialer_store::{Store, StoreError};
pub use scheduler::SchedulerSettings;
pub use webhooks::{EventsSettings, WebhookSettings};

/// The API router over `store`: `api`'s settings, the lawful default calling rules and the
/// default limits' guard (tools and tests; the binary serves [`app_serving`]).
pub fn app(api: &ApiSettings, store: Store) -> axum::Router {
    app_with_guard(api, store, LimitSettings::default().api_guard())
}

/// [`app`] with a given guard (tests hold on to it).
pub fn app_with_guard(api: &ApiSettings, store: Store, guard: Arc<ApiGuard>) -> axum::Router {
    app_serving(
        store,
        Serving {
            api: api.clone(),
            calling_rules: CallingRules::default(),
            guard,
            timeline: None,
            checks: Vec::new(),
            events: EventPipeline::default(),
            global_cap: LimitSettings::default().global_max_concurrency,
        },
    )
}

/// What the API serves with besides its store.
#[derive(Debug)]
pub struct Serving {
    /// `[api]`.
    pub api: ApiSettings,
    /// `[calling_rules]`: the rules of campaigns without their own (the preview).
    pub calling_rules: CallingRules,
    /// `[limits]`' guard of `POST /calls` (`MAX_CONCURRENT_CALLS`, `DAILY_USAGE_CAP`).
    pub guard: Arc<ApiGuard>,
    /// The CQL timeline, when `[timeline]` names nodes (else the SQL table).
    pub timeline: Option<dialer_store::CqlTimeline>,
    /// Readiness checks beyond the store.
    pub checks: Vec<observability::ReadyCheck>,
    /// The event pipeline's parts the API shows.
    pub events: EventPipeline,
    /// `[limits]`' global cap (0: none), for the calls that wait on it.
    pub global_cap: u32,
}

/// What a process's event pipeline gives the API: the live stream's hub (when the log is on and
/// the pipeline runs) and the webhooks' figures.
#[derive(Clone, Debug, Default)]
pub struct EventPipeline {
    pub live: Option<Arc<live::LiveHub>>,
    pub summary: Arc<webhooks::Summary>,
    /// Where endpoints may point (`webhooks.allow_private_targets`), checked at registration.
    pub targets: targets::TargetPolicy,
    /// Seals the secrets the API writes (`DIALER_SECRETS_KEY`).
    pub secrets: Arc<secrets::Sealer>,
}

/// Starts the event pipeline on `store`: the sequencer, the live stream's tail, the
/// upkeep and, with `webhooks.enabled`, the deliverer; each stops when its `shutdown()` resolves.
/// Nothing starts with `events.enabled` off.
pub fn spawn_events<F>(
    events: &EventsSettings,
    webhooks: &WebhookSettings,
    store: &Store,
    shutdown: impl Fn() -> F,
) -> Result<EventPipeline, reqwest::Error>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    dialer_store::set_events_enabled(events.enabled);
    let summary = Arc::new(webhooks::Summary::default());
    let targets = webhooks.targets();
    let secrets = Arc::new(secrets::Sealer::new(webhooks.secrets_key.as_ref()));
    if !events.enabled {
        return Ok(EventPipeline { live: None, summary, targets, secrets });
    }
    let hub = live::LiveHub::new(store.clone(), events.live_buffer, events.live_stats_every);
    let wake = Arc::new(tokio::sync::Notify::new());
    tokio::spawn(hub.clone().run(events.poll.max(Duration::from_millis(250)), shutdown()));
    let seq = webhooks::run_sequencer(
        store.clone(),
        events.poll,
        wake.clone(),
        Some(hub.clone()),
        summary.clone(),
        shutdown(),
    );
    tokio::spawn(seq);
    let keep = Duration::from_secs(events.keep_hours * 3600);
    tokio::spawn(webhooks::run_upkeep(store.clone(), keep, summary.clone(), shutdown()));
    if webhooks.enabled {
        let client = webhooks::Deliverer::client(webhooks)?;
        let d = webhooks::Deliverer {
            store: store.clone(),
            settings: webhooks.clone(),
            client,
            summary: summary.clone(),
            secrets: secrets.clone(),
        };
        tokio::spawn(d.run(wake, shutdown()));
    }
    Ok(EventPipeline { live: Some(hub), summary, targets, secrets })
}

/// The API router over `store` with every part.
pub fn app_serving(store: Store, s: Serving) -> axum::Router {
    // `/metrics` answers in any process serving the API (the binary installs first, with the
    // catalogues of everything it runs; this adds nothing then).
    observability::install();
    let Serving { api, calling_rules, guard, timeline, checks, events, global_cap } = s;
    api::router(api::AppState {
        auth: api::auth::Auth::new(&api),
        calls: dialer_store::CallBatcher::new(store.clone()),
        audit: api::audit::AuditLog::spawn(store.clone()),
        store,
        campaigns: Arc::new(api::CampaignCache::new(api.campaign_cache)),
        api: Arc::new(api),
        calling_rules: Arc::new(calling_rules),
        guard,
        timeline,
        checks: checks.into(),
        live: events.live,
        summary: events.summary,
        webhook_targets: events.targets,
        secrets: events.secrets,
        global_cap,
    })
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
