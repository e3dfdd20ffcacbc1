//! Prompts: audio answered calls play. Uploaded as a WAV file (8 kHz mono, 16-bit PCM or
//! G.711), stored as 16-bit PCM, read back by data planes (`GET …/audio`) and cached there by
//! id; never changed once written, and not deleted while a live campaign plays them.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dialer_api::views::{Prompt, PromptList};
use dialer_domain::FieldError;
use dialer_domain::media::wav;
use dialer_domain::settings::Telephony;
use sha2::Digest;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::handlers::path_id;

/// The longest prompt name.
const NAME_MAX: usize = 200;

/// Upload a prompt: the body is a WAV file (`audio/wav`), 8 kHz mono, 16-bit PCM, A-law or
/// µ-law, at most 300 s; anything else is refused (422, `field` = `audio`) with what to send.
#[utoipa::path(post, path = "/api/v1/prompts", tag = "prompts",
    params(("name" = Option<String>, Query, description = "What the prompt says, for people (at most 200 characters)")),
    request_body(content = Vec<u8>, content_type = "audio/wav", description = "The WAV file"),
    responses(
        (status = 201, body = Prompt),
        (status = 415, description = "Not sent as audio/wav", body = ErrorBody),
        (status = 422, description = "Not usable audio (`field`: audio) or a bad name", body = ErrorBody),
    ))]
pub async fn create_prompt(
    State(st): State<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ct = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if !matches!(mime.as_str(), "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the WAV file as the body with Content-Type: audio/wav",
        ));
    }
    let name = q.get("name").map_or("prompt", |n| n.trim());
    if name.is_empty() || name.chars().count() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(FieldError::new("name", format!("must be 1 to {NAME_MAX} printable characters")).into());
    }
    let audio = wav::parse(&body).map_err(|e| FieldError::new("audio", e.to_string()))?;
    let stored = audio.to_wav();
    let sha = hex(&sha2::Sha256::digest(&stored));
    let p = st.store.create_prompt(name, audio.duration_ms(), &sha, stored).await?;
    metrics::counter!("dialer_prompts_created_total").increment(1);
    let location = format!("/api/v1/prompts/{}", p.id);
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(p)).into_response())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every prompt, oldest first.
#[utoipa::path(get, path = "/api/v1/prompts", tag = "prompts", responses((status = 200, body = PromptList)))]
pub async fn list_prompts(State(st): State<AppState>) -> Result<Json<PromptList>, ApiError> {
    Ok(Json(PromptList { prompts: st.store.list_prompts().await? }))
}

/// One prompt.
#[utoipa::path(get, path = "/api/v1/prompts/{id}", tag = "prompts",
    params(("id" = Uuid, Path, description = "Prompt id")),
    responses((status = 200, body = Prompt), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_prompt(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<Prompt>, ApiError> {
    Ok(Json(st.store.get_prompt(path_id(&id)?).await?))
}

/// The prompt's audio, as stored: a WAV file, 8 kHz mono 16-bit PCM (what data planes fetch).
#[utoipa::path(get, path = "/api/v1/prompts/{id}/audio", tag = "prompts",
    params(("id" = Uuid, Path, description = "Prompt id")),
    responses((status = 200, content_type = "audio/wav", body = Vec<u8>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn prompt_audio(State(st): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let wav = st.store.prompt_audio(path_id(&id)?).await?;
    // Never changed once written: caches may keep it.
    let headers = [(header::CONTENT_TYPE, "audio/wav"), (header::CACHE_CONTROL, "public, max-age=31536000, immutable")];
    Ok((headers, wav).into_response())
}

/// Delete a prompt no live campaign plays (409 names the campaign that does).
#[utoipa::path(delete, path = "/api/v1/prompts/{id}", tag = "prompts",
    params(("id" = Uuid, Path, description = "Prompt id")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_prompt(State(st): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    match st.store.delete_prompt(path_id(&id)?).await? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(ApiError::not_found("prompt")),
    }
}

/// A campaign's `telephony.media` names prompts that exist (422 naming the field otherwise).
pub(super) async fn check_prompts(st: &AppState, telephony: Option<&Telephony>) -> Result<(), ApiError> {
    let Some(plan) = telephony.and_then(|t| t.media.as_ref()) else { return Ok(()) };
    let named: Vec<(&str, Uuid)> = [("prompt", plan.prompt), ("voicemail_prompt", plan.voicemail_prompt)]
        .into_iter()
        .filter_map(|(f, id)| Some((f, id?)))
        .collect();
    let ids: Vec<Uuid> = named.iter().map(|(_, id)| *id).collect();
    let missing = st.store.missing_prompts(&ids).await?;
    match named.iter().find(|(_, id)| missing.contains(id)) {
        Some((field, id)) => Err(FieldError::new(
            format!("telephony.media.{field}"),
            format!("no prompt {id}: upload it first (POST /api/v1/prompts)"),
        )
        .into()),
        None => Ok(()),
    }
}
