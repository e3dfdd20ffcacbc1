//! Handlers of the recipient's calling rules: do-not-call lists (global and per campaign; JSON or
//! CSV bodies) and the preview of what the rules would do to a campaign's calls now.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dialer_api::dnc::{DncAdded, DncRequest, DncView};
use dialer_domain::FieldError;
use dialer_domain::dnc::{self, DncEntry, GLOBAL_LIST};
use uuid::Uuid;

use super::{ApiError, AppState, ErrorBody, parse_json};
use dialer_store::Preview;

/// Requests adding at most this many numbers are announced to the data plane (queued calls to
/// them are not dialled); larger imports apply at each call's next claim.
pub const ANNOUNCE_MAX: usize = 1000;

fn path_number(raw: &str) -> Result<String, ApiError> {
    dialer_domain::phone::check_e164(raw).map_err(|m| {
        ApiError::bad_param(&FieldError::new("phone_number", format!("{m} (in the path, + may be written %2B)")))
    })?;
    Ok(raw.to_string())
}

fn path_campaign(raw: &str) -> Result<Uuid, ApiError> {
    dialer_api::campaigns::parse_id("id", raw).map_err(|e| ApiError::bad_param(&e))
}

/// Reads the body as CSV (`text/csv`) or JSON (anything else JSON-like).
fn entries(headers: &HeaderMap, body: &Bytes, max: usize) -> Result<Vec<DncEntry>, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let list = match mime.as_str() {
        "text/csv" => dialer_api::dnc::parse_csv(body, max)?,
        "application/json" => parse_json::<DncRequest>(body)?.check(max)?,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send Content-Type: application/json or text/csv",
            ));
        }
    };
    Ok(dnc::dedup_last(list))
}

async fn add(st: &AppState, list: Uuid, headers: &HeaderMap, body: &Bytes) -> Result<Json<DncAdded>, ApiError> {
    let list_entries = entries(headers, body, st.api.max_targets_per_request)?;
    let announce = list_entries.len() <= ANNOUNCE_MAX;
    st.store.dnc_add(list, &list_entries, announce).await?;
    metrics::counter!("dialer_dnc_entries_added_total").increment(list_entries.len() as u64);
    Ok(Json(DncAdded { list: dnc::list_name(list), received: list_entries.len() as u64, announced: announce }))
}

/// Add numbers to the global do-not-call list (opt-outs): JSON (one entry, or
/// `{"entries": [...]}`) or CSV (`phone_number[,reason,source,expires_at]`). Pending calls to
/// them anywhere are skipped (`dnc`) at their next claim; for up to 1,000 numbers the data plane
/// is told within a scheduler tick, so calls already queued are not dialled either.
#[utoipa::path(post, path = "/api/v1/dnc", tag = "dnc",
    request_body(content(
        (DncRequest = "application/json"),
        (String = "text/csv", example = "phone_number,reason,source,expires_at\n+15555550001,opt_out,ivr,\n"),
    )),
    responses(
        (status = 200, body = DncAdded),
        (status = 400, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 422, description = "An entry is invalid; `field` names it (`entries[3].phone_number`, `line 12.expires_at`)", body = ErrorBody),
    ))]
pub async fn add_global(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DncAdded>, ApiError> {
    add(&st, GLOBAL_LIST, &headers, &body).await
}

/// Add numbers to a campaign's own do-not-call list (JSON or CSV, as for the global list).
#[utoipa::path(post, path = "/api/v1/campaigns/{id}/dnc", tag = "dnc",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    request_body(content(
        (DncRequest = "application/json"),
        (String = "text/csv", example = "+15555550001,asked_not_to_call\n"),
    )),
    responses(
        (status = 200, body = DncAdded),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
    ))]
pub async fn add_campaign(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<DncAdded>, ApiError> {
    let id = path_campaign(&id)?;
    add(&st, id, &headers, &body).await
}

async fn get(st: &AppState, list: Uuid, number: &str) -> Result<Json<DncView>, ApiError> {
    let n = path_number(number)?;
    st.store.dnc_get(list, &n).await?.map(Json).ok_or_else(|| ApiError::not_found("do-not-call entry"))
}

async fn remove(st: &AppState, list: Uuid, number: &str) -> Result<Response, ApiError> {
    let n = path_number(number)?;
    if st.store.dnc_remove(list, &n).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("do-not-call entry"))
    }
}

/// A number's entry on the global list.
#[utoipa::path(get, path = "/api/v1/dnc/{phone_number}", tag = "dnc",
    params(("phone_number" = String, Path, description = "E.164 number")),
    responses((status = 200, body = DncView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_global(State(st): State<AppState>, Path(n): Path<String>) -> Result<Json<DncView>, ApiError> {
    get(&st, GLOBAL_LIST, &n).await
}

/// Remove a number from the global list.
#[utoipa::path(delete, path = "/api/v1/dnc/{phone_number}", tag = "dnc",
    params(("phone_number" = String, Path, description = "E.164 number")),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_global(State(st): State<AppState>, Path(n): Path<String>) -> Result<Response, ApiError> {
    remove(&st, GLOBAL_LIST, &n).await
}

/// A number's entry on a campaign's list.
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/dnc/{phone_number}", tag = "dnc",
    params(("id" = uuid::Uuid, Path, description = "Campaign id"), ("phone_number" = String, Path, description = "E.164 number")),
    responses((status = 200, body = DncView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_campaign(
    State(st): State<AppState>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Json<DncView>, ApiError> {
    get(&st, path_campaign(&id)?, &n).await
}

/// Remove a number from a campaign's list.
#[utoipa::path(delete, path = "/api/v1/campaigns/{id}/dnc/{phone_number}", tag = "dnc",
    params(("id" = uuid::Uuid, Path, description = "Campaign id"), ("phone_number" = String, Path, description = "E.164 number")),
    responses((status = 204, description = "Removed"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn remove_campaign(
    State(st): State<AppState>,
    Path((id, n)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    remove(&st, path_campaign(&id)?, &n).await
}

/// What the recipient's calling rules would do to the campaign's pending calls now: how many
/// would be dialled, skipped (on a do-not-call list, no zone) or held back (outside the
/// recipient's window, a blackout date, an attempt limit).
#[utoipa::path(get, path = "/api/v1/campaigns/{id}/preview", tag = "campaigns",
    params(("id" = uuid::Uuid, Path, description = "Campaign id")),
    responses((status = 200, body = Preview), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn preview(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Preview>, ApiError> {
    let id = path_campaign(&id)?;
    let campaign = st.store.get_campaign(id).await?;
    let rules = campaign.calling_rules.as_ref().unwrap_or(&st.calling_rules);
    let compiled = rules
        .compile("calling_rules")
        .map_err(|source| dialer_store::StoreError::from(dialer_store::Corrupt::Rules { campaign: id, source }))?;
    Ok(Json(st.store.preview(id, &compiled, chrono::Utc::now()).await?))
}
