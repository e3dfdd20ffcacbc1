//! Handlers of webhook endpoints, their dead letters, the live event stream (SSE) and the
//! webhooks' `/metrics/summary`.

use std::collections::HashMap;
use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use dialer_api::webhooks::{CreateWebhookRequest, ReplayRequest, RotateSecretRequest, UpdateWebhookRequest, Webhook};
use dialer_domain::FieldError;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::auth::Caller;
use super::handlers::path_id;
use super::{ApiError, AppState, ErrorBody, parse_json};
use dialer_store::DeadLetter;

type Params = Query<HashMap<String, String>>;

/// A fresh signing secret: 32 random bytes, hex.
fn new_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("whsec_{hex}")
}

/// Endpoints, in creation order.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<Webhook>,
}

/// Register an endpoint. Events are POSTed to it as JSON, signed (`Dialer-Signature`), at least
/// once, each call's events in order. The answer is the only one that shows the secret.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = CreateWebhookRequest,
    responses(
        (status = 201, body = Webhook),
        (status = 400, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 409, description = "There are api.max_webhooks endpoints already", body = ErrorBody),
        (status = 422, description = "A field is invalid (`url`: not a URL, or an address deliveries may not go to; `event_types[2]`; `campaign_id`: no such campaign)", body = ErrorBody),
    ))]
pub async fn create_webhook(State(st): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: CreateWebhookRequest = parse_json(&body)?;
    let settings = req.validate()?;
    st.webhook_targets.check_url(&settings.url).await?;
    let max = st.api.max_webhooks;
    if st.store.list_webhooks().await?.len() >= max {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_webhooks",
            format!("there are {max} webhook endpoints already (api.max_webhooks); delete one first"),
        ));
    }
    let secret = req.secret.clone().unwrap_or_else(new_secret);
    let mut w = st.store.create_webhook(&settings, &sealed(&st, &secret)?).await?;
    w.secret = Some(secret);
    Ok((StatusCode::CREATED, Json(w)).into_response())
}

/// List endpoints (secrets are not shown).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", responses((status = 200, body = WebhookList)))]
pub async fn list_webhooks(State(st): State<AppState>) -> Result<Json<WebhookList>, ApiError> {
    Ok(Json(WebhookList { webhooks: st.store.list_webhooks().await? }))
}

/// One endpoint.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Webhook), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_webhook(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Webhook>, ApiError> {
    Ok(Json(st.store.get_webhook(path_id(&id)?).await?))
}

/// Change an endpoint; omitted fields keep their value. `enabled: true` resumes one a 410
/// disabled (replay its dead letters afterwards).
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", request_body = UpdateWebhookRequest,
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Webhook), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn update_webhook(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Webhook>, ApiError> {
    let id = path_id(&id)?;
    let patch: UpdateWebhookRequest = parse_json(&body)?;
    if let Some(url) = &patch.url {
        dialer_api::webhooks::check_url(url)?;
        st.webhook_targets.check_url(url).await?;
    }
    Ok(Json(st.store.update_webhook(id, &patch).await?))
}

/// Delete an endpoint with its undelivered events and dead letters.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",
    params(("id" = Uuid, Path)),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(State(st): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if st.store.delete_webhook(path_id(&id)?).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("webhook"))
    }
}

/// A new signing secret. The old one keeps signing for `previous_valid_for_sec` (a day by
/// default): deliveries carry a `v1=` signature under each, so receivers switch at leisure.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks", request_body = RotateSecretRequest,
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Webhook), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn rotate_secret(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Webhook>, ApiError> {
    let id = path_id(&id)?;
    let req: RotateSecretRequest = if body.is_empty() { RotateSecretRequest::default() } else { parse_json(&body)? };
    let (secret, keep) = req.validate()?;
    let until = chrono::Utc::now() + keep;
    let secret = secret.unwrap_or_else(new_secret);
    let mut w = st.store.rotate_webhook_secret(id, &sealed(&st, &secret)?, until).await?;
    w.secret = Some(secret);
    Ok(Json(w))
}

/// A secret as it is stored: sealed when `DIALER_SECRETS_KEY` is set.
fn sealed(st: &AppState, secret: &str) -> Result<String, ApiError> {
    st.secrets
        .seal(secret)
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "secrets_unavailable", e.to_string()))
}

/// A page of dead letters.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after_seq` for the next page; absent on the last.
    pub next_after_seq: Option<i64>,
}

fn after_seq(params: &Params) -> Result<i64, ApiError> {
    match params.get("after_seq") {
        None => Ok(0),
        Some(s) => {
            s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_param(&FieldError::new("after_seq", "must be a whole number of at least 0"))
            })
        }
    }
}

/// The events an endpoint never took (retry window over, 410, or behind one of those in its
/// call's order), oldest first.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/dead-letters", tag = "webhooks",
    params(("id" = Uuid, Path), ("after_seq" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = DeadLetterList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn dead_letters(
    State(st): State<AppState>,
    Path(id): Path<String>,
    params: Result<Params, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeadLetterList>, ApiError> {
    let id = path_id(&id)?;
    let params = super::handlers::query(params)?;
    let limit = super::handlers::page_limit(&params, &st)?;
    st.store.get_webhook(id).await?;
    let dead_letters = st.store.dead_letters(id, after_seq(&params)?, limit).await?;
    let next_after_seq = if dead_letters.len() == limit as usize { dead_letters.last().map(|d| d.seq) } else { None };
    Ok(Json(DeadLetterList { dead_letters, next_after_seq }))
}

/// How many dead letters went back to the queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub replayed: u64,
}

/// Send dead letters again, with a fresh retry window: all of them, or those of the calls (and
/// campaigns) of the given `seqs` (a call's dead letters go back together, in order).
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/dead-letters/replay", tag = "webhooks", request_body = ReplayRequest,
    params(("id" = Uuid, Path)),
    responses(
        (status = 200, body = Replayed), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The endpoint is disabled: enable it first", body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn replay(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Replayed>, ApiError> {
    let id = path_id(&id)?;
    let req: ReplayRequest = if body.is_empty() { ReplayRequest::default() } else { parse_json(&body)? };
    if req.seqs.as_ref().is_some_and(|s| s.len() > 1000) {
        return Err(FieldError::new("seqs", "at most 1,000 per request").into());
    }
    let replayed = st.store.replay_dead_letters(id, req.seqs.as_deref()).await?;
    Ok(Json(Replayed { replayed }))
}

/// The position to resume after: `Last-Event-ID` (what browsers send on reconnect), else the
/// `last_event_id` parameter; `None` = from now.
fn resume_after(headers: &HeaderMap, params: &Params) -> Result<Option<i64>, ApiError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| params.get("last_event_id").cloned());
    raw.filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<i64>().ok().filter(|n| *n >= 0))
        .map(|n| {
            n.ok_or_else(|| {
                ApiError::bad_param(&FieldError::new("Last-Event-ID", "must be a whole number: an event's id"))
            })
        })
        .transpose()
}

async fn stream(
    st: AppState,
    campaign: Option<Uuid>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    params: Result<Params, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let params = super::handlers::query(params)?;
    let after = resume_after(&headers, &params)?;
    let Some(hub) = st.live.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "events_disabled",
            "the event log is off: set events.enabled = true",
        ));
    };
    if let Some(id) = campaign {
        st.store.get_campaign(id).await?;
    }
    let Some(permit) = st.auth.open_stream(caller.map(|c| c.0)) else {
        let max = st.api.max_streams_per_key;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!("this API key has {max} live streams open (api.max_streams_per_key); close one first"),
        ));
    };
    let client = crate::live::Client::start(hub, st.store.clone(), campaign, after).await?;
    // The permit lives as long as the stream.
    let events = futures::stream::unfold((client, permit), |(mut c, p)| async move {
        c.next().await.map(|e| (Ok::<_, Infallible>(e), (c, p)))
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(std::time::Duration::from_secs(15))).into_response())
}

/// Every campaign's events as Server-Sent Events (`id`: the log position, `event`: the type,
/// `data`: the body webhooks get), plus `stats` snapshots (no id). Resume with `Last-Event-ID`
/// within `events.keep_hours`; an older id first gets a `gap` message. A client that falls
/// behind gets `dropped` and is disconnected: reconnect with the last id.
#[utoipa::path(get, path = "/api/v1/events", tag = "events",
    params(("Last-Event-ID" = Option<i64>, Header), ("last_event_id" = Option<i64>, Query)),
    responses(
        (status = 200, description = "An SSE stream", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 409, description = "events.enabled is off", body = ErrorBody),
        (status = 429, description = "The key holds api.max_streams_per_key streams open", body = ErrorBody),
    ))]
pub async fn all_events(
    State(st): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    params: Result<Params, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    stream(st, None, caller, headers, params).await
}

/// One campaign's events as Server-Sent Events (as `/api/v1/events`), with its stats snapshots.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/events", tag = "events",
    params(("id" = Uuid, Path), ("Last-Event-ID" = Option<i64>, Header), ("last_event_id" = Option<i64>, Query)),
    responses(
        (status = 200, description = "An SSE stream", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "events.enabled is off", body = ErrorBody),
        (status = 429, description = "The key holds api.max_streams_per_key streams open", body = ErrorBody),
    ))]
pub async fn campaign_events(
    State(st): State<AppState>,
    Path(id): Path<String>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    params: Result<Params, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = path_id(&id)?;
    stream(st, Some(id), caller, headers, params).await
}

/// The webhooks' figures as JSON: queue depth, dead letters, deliveries by result, delivery
/// latency percentiles (since this process started), live-stream clients.
pub async fn summary(State(st): State<AppState>) -> Json<serde_json::Value> {
    let mut v = st.summary.json();
    v["live_clients"] = serde_json::json!(st.live.as_ref().map_or(0, |h| h.clients()));
    v["endpoints"] = match st.store.list_webhooks().await {
        Ok(list) => {
            serde_json::json!({"enabled": list.iter().filter(|w| w.enabled).count(), "disabled": list.iter().filter(|w| !w.enabled).count()})
        }
        Err(_) => serde_json::Value::Null,
    };
    Json(v)
}
