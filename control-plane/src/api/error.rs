//! The one error shape of the API, `{"error":{"code","message","field"}}`, and the extractors
//! that turn malformed requests into it instead of axum's plain-text rejections.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dialer_domain::{CampaignStatus, FieldError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use dialer_store::StoreError;

/// Body of every error response.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `validation_failed`, `not_found`, `invalid_transition`.
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// The offending request field, e.g. `targets[3].phone_number`, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The campaign's current status, on `invalid_transition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_status: Option<CampaignStatus>,
}

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub current_status: Option<CampaignStatus>,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), field: None, current_status: None, retry_after: None }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn retry_after(mut self, secs: u64) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }

    /// A malformed path id or query parameter.
    pub fn bad_param(field: &FieldError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", field.message.clone()).field(field.field.clone())
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", e.message).field(e.field)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m.to_string()),
            StoreError::Transition(t) => {
                let mut e = ApiError::new(StatusCode::CONFLICT, "invalid_transition", format!("{t}"));
                e.current_status = Some(t.current);
                e
            }
            StoreError::Invalid(f) => f.into(),
            StoreError::Unavailable(_) | StoreError::Timeline(_) => {
                tracing::warn!(error = %e, "store unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the database is unavailable; retry shortly",
                )
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; see the server log")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                field: self.field,
                current_status: self.current_status,
            },
        };
        let retry_after = self.retry_after.or((self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(1));
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            metrics::counter!("dialer_http_rejections_total", "code" => self.code).increment(1);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        resp
    }
}

/// A JSON body parsed strictly: 415 for a non-JSON content type, 413 over the size limit,
/// 400 for malformed JSON, 422 naming the field for a well-formed body of the wrong shape.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let ct = ct.to_str().unwrap_or("");
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if !(mime == "application/json" || mime.ends_with("+json")) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("send the body as JSON with Content-Type: application/json (got {ct:?})"),
                ));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is over the limit (api.max_body_bytes); send fewer targets per request",
                )
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", r.body_text())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses `bytes` as `T`, naming the offending field on a shape error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "the request body is empty; send a JSON object",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let msg = inner.to_string();
                // Unknown or missing fields are reported at their parent; name the field itself.
                let named = ["unknown field `", "missing field `"]
                    .iter()
                    .find_map(|p| msg.strip_prefix(p).and_then(|r| r.split('`').next()));
                let field = match (named, path.as_str()) {
                    (Some(n), ".") => n.to_string(),
                    (Some(n), p) if p != n && !p.ends_with(&format!(".{n}")) => format!("{p}.{n}"),
                    (_, p) => p.to_string(),
                };
                let e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", msg);
                if field == "." { e } else { e.field(field) }
            }
            _ => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {inner}"))
            }
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("unexpected data after the JSON value: {e}"))
    })?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialer_api::campaigns::CreateCampaignRequest;

    #[test]
    fn shape_errors_name_the_field() {
        let e = parse_json::<CreateCampaignRequest>(br#"{"name":"x","max_concurrent_calls":"ten"}"#).unwrap_err();
        assert_eq!((e.status, e.field.as_deref()), (StatusCode::UNPROCESSABLE_ENTITY, Some("max_concurrent_calls")));
        let e = parse_json::<CreateCampaignRequest>(br#"{"name":"x","retry_policy":{"jitterr":1}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("retry_policy.jitterr"));
        let e = parse_json::<CreateCampaignRequest>(br#"{"bogus":1}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("bogus"));
        let e = parse_json::<CreateCampaignRequest>(br#"{"business_hours":[{"day_of_week":1,"start":"09:00"}]}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("business_hours[0].end"));
    }

    #[test]
    fn syntax_errors_are_400() {
        for body in [&b"{"[..], b"not json", b"", b"{} trailing", b"{\"name\":}"] {
            let e = parse_json::<CreateCampaignRequest>(body).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{:?}", String::from_utf8_lossy(body));
        }
    }
}
