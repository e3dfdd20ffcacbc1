//! Request handlers: parse and validate, call the store, shape the answer.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dialer_api::campaigns;
use dialer_api::campaigns::{CreateCallRequest, CreateCampaignRequest, QueueTargetsRequest, UpdateCampaignRequest};
use dialer_api::views::{CallDetail, CallList, Campaign, CampaignList, CampaignStatsView, QueueTargetsResponse};
use dialer_domain::FieldError;
use dialer_domain::campaign::{CallStatus, CampaignAction};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use super::{ApiDoc, ApiError, ApiJson, AppState, ErrorBody};
use dialer_limiter::GuardRejection;
use dialer_store::{CallQuery, NewCall};

type Params = Query<HashMap<String, String>>;

/// A path's `{id}`: a UUID, else 400 naming `id`.
pub(super) fn path_id(raw: &str) -> Result<Uuid, ApiError> {
    campaigns::parse_id("id", raw).map_err(|e| ApiError::bad_param(&e))
}

fn param_id(params: &Params, name: &str) -> Result<Option<Uuid>, ApiError> {
    params.get(name).map(|s| campaigns::parse_id(name, s)).transpose().map_err(|e| ApiError::bad_param(&e))
}

pub(super) fn page_limit(params: &Params, st: &AppState) -> Result<u32, ApiError> {
    match params.get("limit") {
        None => Ok(st.api.default_page_size),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=st.api.max_page_size).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_param(&FieldError::new(
                "limit",
                format!("must be a whole number between 1 and {}", st.api.max_page_size),
            ))),
        },
    }
}

pub(super) fn query(params: Result<Params, axum::extract::rejection::QueryRejection>) -> Result<Params, ApiError> {
    params.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", e.body_text()))
}

/// Health of the process and its dependencies.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: String,
    pub version: String,
    /// Each dependency: `{"kind": …, "status": "up"|"down", "error"?: …}`.
    #[schema(value_type = Object)]
    pub dependencies: serde_json::Value,
}

async fn health(st: &AppState, check_migrations: bool) -> Response {
    let store = match st.store.ping().await {
        Ok(()) if check_migrations => match st.store.migrations_applied().await {
            Ok(true) => Ok(()),
            Ok(false) => Err("migrations not applied; run `dialer migrate`".to_string()),
            Err(e) => Err(e.to_string()),
        },
        Ok(()) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let mut up = store.is_ok();
    let mut dep = serde_json::json!({"kind": st.store.kind().as_str(), "status": if up { "up" } else { "down" }});
    if let Err(e) = store {
        dep["error"] = e.into();
    }
    let mut deps = serde_json::json!({ "store": dep });
    for c in st.checks.iter().filter(|c| check_migrations || c.live) {
        {
            let r = c.run().await;
            up &= r.is_ok();
            deps[c.name] = match r {
                Ok(()) => serde_json::json!({"status": "up"}),
                Err(e) => serde_json::json!({"status": "down", "error": e.to_string()}),
            };
        }
    }
    let body = Health {
        status: if up { "ok" } else { "unavailable" }.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        dependencies: deps,
    };
    (if up { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body)).into_response()
}

/// Liveness, with the store's state; 503 when the store is down or a part of the process
/// stopped for good (a data plane shard of `dialer up`).
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn healthz(State(st): State<AppState>) -> Response {
    health(&st, false).await
}

/// Readiness: the store is reachable, every migration is applied, and the process's other
/// dependencies answer (Redis, the broker, the data plane's shards and leases, as configured).
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(st): State<AppState>) -> Response {
    health(&st, true).await
}

/// The OpenAPI document, with the page-size bounds of this server's configuration.
pub async fn openapi(State(st): State<AppState>) -> Json<serde_json::Value> {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for op in paths.values_mut().filter_map(|p| p.as_object_mut()).flat_map(|p| p.values_mut()) {
            for param in op.get_mut("parameters").and_then(|p| p.as_array_mut()).into_iter().flatten() {
                if param["name"] == "limit" {
                    param["schema"]["maximum"] = st.api.max_page_size.into();
                }
            }
        }
    }
    Json(doc)
}

/// Create a campaign with its registered targets: listed in a JSON body, or as a CSV list
/// (`multipart/form-data`: a `campaign` part with the JSON body's other fields, then a
/// `targets` file part; numbers normalised to E.164 with `region`, the other columns each
/// target's metadata; rejected rows reported by line, nothing written if none is usable).
#[utoipa::path(post, path = "/api/v1/campaigns", tag = "campaigns",
    request_body(content(
        (CreateCampaignRequest = "application/json"),
        (super::lists::CampaignUpload = "multipart/form-data"),
    )),
    params(
        ("phone_column" = Option<String>, Query, description = "CSV list: the column holding the numbers (default: the first of phone_number, phone, number, msisdn, mobile, telephone, tel)"),
        ("region" = Option<String>, Query, description = "CSV list: region of numbers without a country code (default api.default_region, US)"),
    ),
    responses(
        (status = 201, description = "Created; `status` is `pending` (from a CSV list, the campaign has `import` too: CampaignImported)", body = Campaign),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "A campaign with that name (ignoring case) exists", body = ErrorBody),
        (status = 413, description = "Body over api.max_body_bytes", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    ))]
pub(super) async fn create_campaign(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CreateCampaignRequest>,
) -> Result<Response, ApiError> {
    let new = req.validate(st.api.max_targets_per_request)?;
    super::prompts::check_prompts(&st, Some(&new.settings.telephony)).await?;
    let mut c = st.store.create_campaign(&new).await?;
    c.duplicates_merged = Some(new.duplicates_merged);
    let location = format!("/api/v1/campaigns/{}", c.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(c)).into_response())
}

/// List campaigns in creation order, a page at a time.
#[utoipa::path(get, path = "/api/v1/campaigns", tag = "campaigns",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default api.default_page_size, at most api.max_page_size)"),
        ("after_id" = Option<uuid::Uuid>, Query, description = "Return campaigns created after this id (the previous page's `next_after_id`)"),
    ),
    responses((status = 200, body = CampaignList), (status = 400, body = ErrorBody)))]
pub async fn list_campaigns(
    State(st): State<AppState>,
    params: Result<Params, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CampaignList>, ApiError> {
    let params = query(params)?;
    let limit = page_limit(&params, &st)?;
    let after = param_id(&params, "after_id")?;
    let campaigns = st.store.list_campaigns(after, limit).await?;
    let next_after_id = if campaigns.len() == limit as usize { campaigns.last().map(|c| c.id) } else { None };
    Ok(Json(CampaignList { campaigns, next_after_id }))
}

/// One campaign.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses((status = 200, body = Campaign), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_campaign(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Campaign>, ApiError> {
    let id = path_id(&id)?;
    if let Some(c) = st.campaigns.get(id) {
        return Ok(Json(c));
    }
    let before = st.campaigns.before_read();
    let c = st.store.get_campaign(id).await?;
    st.campaigns.put(before, &c);
    Ok(Json(c))
}

/// Partially update a campaign's settings.
#[utoipa::path(put, path = "/api/v1/campaigns/{id}", tag = "campaigns", request_body = UpdateCampaignRequest,
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, body = Campaign),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The new name is taken", body = ErrorBody),
        (status = 422, body = ErrorBody),
    ))]
pub async fn update_campaign(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateCampaignRequest>,
) -> Result<Json<Campaign>, ApiError> {
    let id = path_id(&id)?;
    super::prompts::check_prompts(&st, req.telephony.as_ref()).await?;
    let c = st.store.update_campaign(id, &req).await;
    st.campaigns.forget(id);
    Ok(Json(c?))
}

async fn transition(st: &AppState, id: &str, action: CampaignAction) -> Result<Json<Campaign>, ApiError> {
    let id = path_id(id)?;
    let c = st.store.transition(id, action).await;
    st.campaigns.forget(id);
    Ok(Json(c?))
}

/// Start a pending campaign, or resume a paused one.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/start", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "Now `in_progress`", body = Campaign),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not pending or paused; `current_status` says what it is", body = ErrorBody),
    ))]
pub async fn start_campaign(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Campaign>, ApiError> {
    transition(&st, &id, CampaignAction::Start).await
}

/// Pause an in-progress campaign: no new dials; calls already dialing finish.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/pause", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "Now `paused`", body = Campaign),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not in progress; `current_status` says what it is", body = ErrorBody),
    ))]
pub async fn pause_campaign(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Campaign>, ApiError> {
    transition(&st, &id, CampaignAction::Pause).await
}

/// Complete a campaign: it dials nothing more.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/complete", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses(
        (status = 200, description = "Now `completed`", body = Campaign),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Already completed", body = ErrorBody),
    ))]
pub async fn complete_campaign(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Campaign>, ApiError> {
    transition(&st, &id, CampaignAction::Complete).await
}

/// Counts of the campaign's calls by state, and why its pending calls wait (`waiting`: by
/// reason, with the soonest each may go, and when the next closed window opens).
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/stats", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses((status = 200, body = CampaignStatsView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn campaign_stats(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignStatsView>, ApiError> {
    let id = path_id(&id)?;
    let now = chrono::Utc::now();
    let campaign = st.store.get_campaign(id).await?;
    let stats = st.store.stats(id).await?;
    let ctx = super::waits::Context::new(&st, &campaign, &stats).await?;
    let groups = st.store.pending_groups(id, now).await?;
    Ok(Json(CampaignStatsView { stats, waiting: super::waits::waiting(&ctx, &groups, now) }))
}

/// Queue registered numbers for calling again. As JSON, any unregistered number refuses the
/// whole request (nothing is written). As a CSV list (`text/csv`), a row whose number is bad or
/// not registered is rejected by its line and the others are queued (a row with no other
/// columns keeps its registered metadata). Numbers that already have a live call are not
/// queued twice.
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/targets", tag = "campaigns",
    request_body(content(
        (QueueTargetsRequest = "application/json"),
        (String = "text/csv", example = "phone_number\n+15555550001\n"),
    )),
    params(
        ("id" = uuid::Uuid, Path, description = "Campaign id"),
        ("phone_column" = Option<String>, Query, description = "CSV list: the column holding the numbers"),
        ("region" = Option<String>, Query, description = "CSV list: region of numbers without a country code (default api.default_region)"),
    ),
    responses(
        (status = 200, description = "Queued (a CSV list answers TargetsImported)", body = QueueTargetsResponse),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The campaign is completed", body = ErrorBody),
        (status = 422, description = "A number is invalid or not registered; `field` names it", body = ErrorBody),
    ))]
pub async fn queue_targets(
    State(st): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<QueueTargetsRequest>,
) -> Result<Json<QueueTargetsResponse>, ApiError> {
    let id = path_id(&id)?;
    if req.targets.is_empty() {
        return Err(FieldError::new("targets", "must list at least one target").into());
    }
    if req.targets.len() > st.api.max_targets_per_request {
        return Err(FieldError::new(
            "targets",
            format!("at most {} targets per request", st.api.max_targets_per_request),
        )
        .into());
    }
    // A number listed twice is merged into its first listing (one call), and counted.
    let mut seen = std::collections::HashSet::with_capacity(req.targets.len());
    let mut targets = Vec::with_capacity(req.targets.len());
    for (i, t) in req.targets.iter().enumerate() {
        let checked = campaigns::check_target(&format!("targets[{i}]"), t)?;
        if seen.insert(checked.phone_number.clone()) {
            targets.push((checked.phone_number, t.metadata.as_ref().map(|_| checked.metadata)));
        }
    }
    let mut answer = st.store.queue_targets(id, &targets).await?;
    answer.duplicates_merged = (req.targets.len() - targets.len()) as u64;
    Ok(Json(answer))
}

/// The campaign's calls in creation order, a page at a time.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/calls", tag = "calls",
    params(
        ("id" = uuid::Uuid, Path, description = "Campaign id"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default api.default_page_size, at most api.max_page_size)"),
        ("page_token" = Option<String>, Query, description = "The previous page's `next_page_token`"),
        ("status" = Option<CallStatus>, Query, description = "Only calls in this state"),
    ),
    responses((status = 200, body = CallList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_calls(
    State(st): State<AppState>,
    Path(id): Path<String>,
    params: Result<Params, axum::extract::rejection::QueryRejection>,
) -> Result<Json<CallList>, ApiError> {
    let id = path_id(&id)?;
    let params = query(params)?;
    let limit = page_limit(&params, &st)?;
    let after = param_id(&params, "page_token")?;
    let status = match params.get("status") {
        None => None,
        Some(s) => Some(CallStatus::parse(s).ok_or_else(|| {
            ApiError::bad_param(&FieldError::new(
                "status",
                "must be one of pending, queued, in_progress, completed, failed, skipped",
            ))
        })?),
    };
    let mut calls = st.store.list_calls(id, &CallQuery { after, status, limit }).await?;
    if calls.iter().any(|c| c.status == CallStatus::Pending) {
        let ctx = super::waits::Context::of(&st, id).await?;
        super::waits::fill(&ctx, &mut calls, chrono::Utc::now());
    }
    let next_page_token = if calls.len() == limit as usize { calls.last().map(|c| c.id.to_string()) } else { None };
    Ok(Json(CallList { calls, next_page_token }))
}

/// Trigger a call to a number registered with the campaign. When the number already has a
/// call waiting or in progress, that call is returned (200) instead of creating a second one.
#[utoipa::path(post, path = "/api/v1/calls", tag = "calls", request_body = CreateCallRequest,
    responses(
        (status = 201, description = "Call created", body = dialer_api::views::Call),
        (status = 200, description = "The number already had a live call; it is returned", body = dialer_api::views::Call),
        (status = 400, body = ErrorBody),
        (status = 404, description = "Unknown campaign", body = ErrorBody),
        (status = 409, description = "The campaign is completed", body = ErrorBody),
        (status = 422, description = "Invalid, unregistered or do-not-call number (the message names the list), or malformed campaign_id", body = ErrorBody),
        (status = 429, description = "`rate_limit_exceeded` (MAX_CONCURRENT_CALLS in flight) or `usage_cap_exceeded` (daily cap); see Retry-After", body = ErrorBody),
    ))]
pub async fn create_call(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<CreateCallRequest>,
) -> Result<Response, ApiError> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let _permit = st.guard.try_enter(now).map_err(|r| match r {
        GuardRejection::RateLimit => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "too many call requests in flight (MAX_CONCURRENT_CALLS); retry after the Retry-After delay",
        )
        .retry_after(1),
        GuardRejection::UsageCap { retry_after_secs } => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "usage_cap_exceeded",
            "the daily usage cap (DAILY_USAGE_CAP) is reached; calls are accepted again after UTC midnight",
        )
        .retry_after(retry_after_secs),
    })?;
    let campaign_id = campaigns::parse_id("campaign_id", &req.campaign_id)?;
    dialer_domain::phone::check_e164(&req.phone_number).map_err(|e| FieldError::new("phone_number", e.to_string()))?;
    let metadata = match &req.metadata {
        None => None,
        Some(m) => Some(campaigns::check_metadata("metadata", Some(m))?),
    };
    if let Some(list) = st.store.dnc_check(campaign_id, &req.phone_number).await? {
        return Err(FieldError::new(
            "phone_number",
            format!(
                "{} is on the {} do-not-call list; remove it there (DELETE …/dnc/{{phone_number}}) before calling",
                req.phone_number,
                if list == dialer_domain::dnc::GLOBAL_LIST { "global".to_string() } else { format!("campaign {list}") }
            ),
        )
        .into());
    }
    let (call, created) =
        st.calls.create_call(NewCall { campaign_id, phone_number: req.phone_number, metadata }).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    let location = format!("/api/v1/calls/{}", call.id);
    Ok((status, [(header::LOCATION, location)], Json(call)).into_response())
}

/// One call with its attempts.
#[utoipa::path(get, path = "/api/v1/calls/{id}", tag = "calls",
    params(("id" = uuid::Uuid, Path, description = "Call id")),
    responses((status = 200, body = CallDetail), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_call(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<CallDetail>, ApiError> {
    let mut detail = st.store.get_call(path_id(&id)?).await?;
    if detail.call.status == CallStatus::Pending {
        let ctx = super::waits::Context::of(&st, detail.call.campaign_id).await?;
        super::waits::fill(&ctx, std::slice::from_mut(&mut detail.call), chrono::Utc::now());
    }
    if let Some(t) = &st.timeline {
        // Skips are decided by the claim, in the SQL transaction: their rows stay in SQL.
        let skipped: Vec<_> = detail.attempts.drain(..).filter(|a| a.outcome == "skipped").collect();
        detail.attempts = t.attempts(detail.call.id).await.map_err(dialer_store::StoreError::Timeline)?;
        detail.attempts.extend(skipped);
    }
    Ok(Json(detail))
}
