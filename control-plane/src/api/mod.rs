//! The REST API (axum): campaigns, targets, calls, stats, health and the OpenAPI document.

pub mod audit;
pub mod auth;
mod error;
pub(crate) mod handlers;
pub(crate) mod lists;
pub(crate) mod prompts;
pub(crate) mod rules;
mod settings;
pub(crate) mod waits;
pub(crate) mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use utoipa::OpenApi;

pub use error::{ApiError, ApiJson, ErrorBody, ErrorDetail, parse_json};

use dialer_store::Store;
pub use settings::{ApiKey, ApiSettings};

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    /// `POST /api/v1/calls` goes through it (group commit on PostgreSQL).
    pub calls: dialer_store::CallBatcher,
    pub api: Arc<ApiSettings>,
    /// `[calling_rules]`: the rules of campaigns without their own (the preview).
    pub calling_rules: Arc<dialer_domain::rules::CallingRules>,
    /// `MAX_CONCURRENT_CALLS` and the daily usage cap on `POST /api/v1/calls`.
    pub guard: Arc<dialer_limiter::ApiGuard>,
    /// The CQL timeline, when configured: `GET /api/v1/calls/{id}` reads attempts from it.
    pub timeline: Option<dialer_store::timeline::CqlTimeline>,
    /// What `/readyz` checks besides the store (Redis, the broker, the shards of `dialer up`).
    pub checks: Arc<[crate::observability::ReadyCheck]>,
    /// Campaigns recently read, for `GET /api/v1/campaigns/{id}` (`api.campaign_cache_ms`).
    pub campaigns: Arc<CampaignCache>,
    /// The live stream's hub (`None`: the event log is off, or this process runs no pipeline).
    pub live: Option<Arc<crate::live::LiveHub>>,
    /// The webhooks' figures for `/metrics/summary`.
    pub summary: Arc<crate::webhooks::Summary>,
    /// Where endpoints may point (checked when one is registered or its URL changed).
    pub webhook_targets: crate::targets::TargetPolicy,
    /// Seals webhook secrets before they are stored.
    pub secrets: Arc<crate::secrets::Sealer>,
    /// Who changed what, when.
    pub audit: audit::AuditLog,
    /// `TELEPHONY_GLOBAL_MAX_CONCURRENCY` (0: none): a call may wait for it (`global_cap`).
    pub global_cap: u32,
    /// The API keys and the console's sessions.
    pub auth: Arc<auth::Auth>,
}

/// Campaigns read within the last `ttl`. Bounded: when full, it starts over empty.
#[derive(Debug)]
pub struct CampaignCache {
    ttl: std::time::Duration,
    entries:
        std::sync::RwLock<std::collections::HashMap<uuid::Uuid, (std::time::Instant, dialer_api::views::Campaign)>>,
    /// Bumped by every write: a read that overlapped a write is not kept.
    writes: std::sync::atomic::AtomicU64,
}

/// Most campaigns the cache holds.
const CAMPAIGN_CACHE_ENTRIES: usize = 10_000;

impl CampaignCache {
    pub fn new(ttl: std::time::Duration) -> CampaignCache {
        CampaignCache { ttl, entries: Default::default(), writes: Default::default() }
    }

    /// The write count to pass to [`CampaignCache::put`], taken before reading the store.
    fn before_read(&self) -> (std::time::Instant, u64) {
        (std::time::Instant::now(), self.writes.load(std::sync::atomic::Ordering::Acquire))
    }

    fn get(&self, id: uuid::Uuid) -> Option<dialer_api::views::Campaign> {
        if self.ttl.is_zero() {
            return None;
        }
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.get(&id).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, c)| c.clone())
    }

    /// Keeps a campaign read after [`CampaignCache::before_read`], unless a write through this
    /// process happened meanwhile (the read may predate it).
    fn put(&self, (read_at, writes): (std::time::Instant, u64), c: &dialer_api::views::Campaign) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if self.writes.load(std::sync::atomic::Ordering::Acquire) != writes {
            return;
        }
        if entries.len() >= CAMPAIGN_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(c.id, (read_at, c.clone()));
    }

    /// Drops a campaign written through this process; call it once the write is done. A read
    /// that started before and ends after it is not kept (the write count moved), and one kept
    /// before it is removed here.
    fn forget(&self, id: uuid::Uuid) {
        if !self.ttl.is_zero() {
            let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
            self.writes.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            entries.remove(&id);
        }
    }
}

/// The OpenAPI 3 document, generated from the handlers and schemas.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "dialer control-plane API",
        description = "Campaigns, targets, calls and stats of the outbound dialer."
    ),
    paths(
        handlers::healthz,
        handlers::readyz,
        handlers::create_campaign,
        handlers::list_campaigns,
        handlers::get_campaign,
        handlers::update_campaign,
        handlers::start_campaign,
        handlers::pause_campaign,
        handlers::complete_campaign,
        handlers::campaign_stats,
        handlers::queue_targets,
        handlers::list_calls,
        handlers::create_call,
        handlers::get_call,
        rules::add_global,
        rules::get_global,
        rules::remove_global,
        rules::add_campaign,
        rules::get_campaign,
        rules::remove_campaign,
        rules::preview,
        webhooks::create_webhook,
        webhooks::list_webhooks,
        webhooks::get_webhook,
        webhooks::update_webhook,
        webhooks::delete_webhook,
        webhooks::rotate_secret,
        webhooks::dead_letters,
        webhooks::replay,
        webhooks::all_events,
        webhooks::campaign_events,
        prompts::create_prompt,
        prompts::list_prompts,
        prompts::get_prompt,
        prompts::prompt_audio,
        prompts::delete_prompt,
        audit::list,
    ),
    components(schemas(ErrorBody, ErrorDetail, handlers::Health, lists::CampaignUpload, lists::CampaignImported, lists::TargetsImported, lists::ImportRejected)),
    modifiers(&Security)
)]
pub struct ApiDoc;

/// Adds the bearer-key scheme, requires it on every `/api/v1` operation, and documents the
/// 401 (no or unknown key) and 429 (`key_rate_limited`) answers those operations may give.
struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
        use utoipa::openapi::{Ref, RefOr, ResponseBuilder, content::ContentBuilder};
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "api_key",
                SecurityScheme::Http(Http::builder().scheme(HttpAuthScheme::Bearer).description(Some(
                    "An API key from api.keys / DIALER_API_KEYS. Without configured keys (loopback only) none is needed.",
                )).build()),
            );
        }
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                    )
                    .build(),
            )
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/api/v1/") {
                continue;
            }
            for op in
                [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
            {
                op.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
                op.responses.responses.entry("401".into()).or_insert_with(|| error("No API key, or an unknown one"));
                op.responses
                    .responses
                    .entry("429".into())
                    .or_insert_with(|| error("Over the key's request rate (key_rate_limited); see Retry-After"));
            }
        }
    }
}

/// The whole API as a router.
pub fn router(state: AppState) -> Router {
    let max_body = state.api.max_body_bytes;
    Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/api/v1/openapi.json", get(handlers::openapi))
        .route("/metrics", get(crate::observability::metrics))
        .route("/api/v1/campaigns", post(lists::create_campaign).get(handlers::list_campaigns))
        .route("/api/v1/campaigns/{id}", get(handlers::get_campaign).put(handlers::update_campaign))
        .route("/api/v1/campaigns/{id}/start", post(handlers::start_campaign))
        .route("/api/v1/campaigns/{id}/pause", post(handlers::pause_campaign))
        .route("/api/v1/campaigns/{id}/complete", post(handlers::complete_campaign))
        .route("/api/v1/campaigns/{id}/stats", get(handlers::campaign_stats))
        .route("/api/v1/campaigns/{id}/targets", post(lists::queue_targets))
        .route("/api/v1/campaigns/{id}/calls", get(handlers::list_calls))
        .route("/api/v1/calls", post(handlers::create_call))
        .route("/api/v1/calls/{id}", get(handlers::get_call))
        .route("/api/v1/dnc", post(rules::add_global))
        .route("/api/v1/dnc/{phone_number}", get(rules::get_global).delete(rules::remove_global))
        .route("/api/v1/campaigns/{id}/dnc", post(rules::add_campaign))
        .route("/api/v1/campaigns/{id}/dnc/{phone_number}", get(rules::get_campaign).delete(rules::remove_campaign))
        .route("/api/v1/campaigns/{id}/preview", get(rules::preview))
        .route("/api/v1/campaigns/{id}/events", get(webhooks::campaign_events))
        .route("/api/v1/events", get(webhooks::all_events))
        .route("/api/v1/prompts", post(prompts::create_prompt).get(prompts::list_prompts))
        .route("/api/v1/prompts/{id}", get(prompts::get_prompt).delete(prompts::delete_prompt))
        .route("/api/v1/prompts/{id}/audio", get(prompts::prompt_audio))
        .route("/api/v1/webhooks", post(webhooks::create_webhook).get(webhooks::list_webhooks))
        .route(
            "/api/v1/webhooks/{id}",
            get(webhooks::get_webhook).patch(webhooks::update_webhook).delete(webhooks::delete_webhook),
        )
        .route("/api/v1/webhooks/{id}/rotate-secret", post(webhooks::rotate_secret))
        .route("/api/v1/webhooks/{id}/dead-letters", get(webhooks::dead_letters))
        .route("/api/v1/webhooks/{id}/dead-letters/replay", post(webhooks::replay))
        .route("/metrics/summary", get(webhooks::summary))
        .route("/api/v1/audit", get(audit::list))
        .merge(
            crate::console::routes()
                .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::console::guard)),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; see /api/v1/openapi.json")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /api/v1/openapi.json",
            )
        })
        .layer(DefaultBodyLimit::max(max_body))
        // Inside the key check: it knows the caller's key.
        .layer(axum::middleware::from_fn_with_state(state.clone(), audit::record))
        .layer(axum::middleware::from_fn_with_state(state.auth.clone(), auth::require_key))
        .layer(axum::middleware::from_fn(crate::observability::track_http))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the server log",
            ))
        }))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
