//! Target lists as CSV: a campaign created from a list (`multipart/form-data`: a `campaign`
//! JSON part, then a `targets` CSV file part) and registered numbers queued again from a list
//! (`text/csv`). The JSON bodies of the same endpoints go to their handlers in
//! [`super::handlers`].
//!
//! A new campaign's list is read as it arrives and written in batches ([`dialer_store::ImportBatch`]:
//! one transaction, or on PostgreSQL one per batch, several at once, the campaign's row last):
//! memory stays bounded whatever the list's length, and a list that turns out unreadable, or
//! whose every row is bad, leaves nothing written once it is answered.

use std::collections::HashMap;

use axum::Json;
use axum::body::Bytes;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_api::csv_list::{CsvList, CsvOptions, ImportReport, Listed};
use dialer_api::views::{Campaign, QueueTargetsResponse};
use dialer_domain::FieldError;
use dialer_domain::campaign::CampaignStatus;
use dialer_domain::phone;
use dialer_domain::settings::CampaignSettings;
use dialer_store::ImportBatch;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::{ApiError, ApiJson, AppState, ErrorDetail, handlers};

type Params = Query<HashMap<String, String>>;

/// Targets handed to the store at a time.
const BATCH: usize = 10_000;

/// The form of `POST /api/v1/campaigns` as `multipart/form-data`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct CampaignUpload {
    /// The campaign's settings: the JSON body's fields, without `targets`. Comes first.
    campaign: CreateCampaignRequest,
    /// The list: a header row, then one row per number (`,` `;` or tab separated, UTF-8).
    #[schema(format = Binary, value_type = String)]
    targets: Vec<u8>,
    /// The column holding the numbers (default: the first of phone_number, phone, number,
    /// msisdn, mobile, telephone, tel). Before `targets`; the query parameter works too.
    phone_column: Option<String>,
    /// Region of numbers written without a country code (default `api.default_region`).
    region: Option<String>,
}

/// Answer of a campaign created from a list: the campaign, as a JSON create answers, and what
/// became of the list's rows.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignImported {
    #[serde(flatten)]
    pub campaign: Campaign,
    pub import: ImportReport,
}

/// Answer of numbers queued from a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetsImported {
    #[serde(flatten)]
    pub queued: QueueTargetsResponse,
    pub import: ImportReport,
}

/// Answer when no row of a list is usable (422): the error, and the rows' report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ImportRejected {
    pub error: ErrorDetail,
    pub import: ImportReport,
}

fn all_rejected(report: ImportReport) -> Response {
    let error = ErrorDetail {
        code: "validation_failed".into(),
        message: format!(
            "no row of the list is usable ({} rejected, {} read): nothing was written; see import.rejected",
            report.rejected_total, report.rows
        ),
        field: Some("targets".into()),
        current_status: None,
    };
    (StatusCode::UNPROCESSABLE_ENTITY, Json(ImportRejected { error, import: report })).into_response()
}

/// The mime type of a request, lower case.
fn mime(req: &Request) -> String {
    let ct = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

/// `phone_column` and `region` from the query, over the defaults.
pub(crate) fn options(params: &HashMap<String, String>, st: &AppState) -> Result<CsvOptions, ApiError> {
    let mut o = CsvOptions { phone_column: None, region: phone::region(&st.api.default_region) };
    for (k, v) in params {
        set_option(&mut o, k, v).map_err(|e| ApiError::bad_param(&e))?;
    }
    Ok(o)
}

pub(crate) fn set_option(o: &mut CsvOptions, key: &str, value: &str) -> Result<(), FieldError> {
    match key {
        "phone_column" if !value.trim().is_empty() => o.phone_column = Some(value.trim().to_string()),
        "phone_column" => return Err(FieldError::new(key, "must name a column")),
        "region" => {
            o.region = Some(
                phone::region(value.trim())
                    .ok_or_else(|| FieldError::new(key, "must be an ISO 3166-1 alpha-2 code such as US, GB or DE"))?,
            )
        }
        _ => return Err(FieldError::new(key, "is not a parameter of a list: use phone_column or region")),
    }
    Ok(())
}

/// `POST /api/v1/campaigns`: JSON (targets listed in the body) or a CSV list as multipart.
pub async fn create_campaign(State(st): State<AppState>, Query(params): Params, req: Request) -> Response {
    let answer = if mime(&req) == "multipart/form-data" {
        match Multipart::from_request(req, &st).await {
            Ok(form) => create_from_list(&st, &params, form).await,
            Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.body_text())),
        }
    } else {
        match ApiJson::from_request(req, &st).await {
            Ok(body) => handlers::create_campaign(State(st), body).await,
            Err(e) => Err(e),
        }
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

pub(crate) fn multipart_error(e: MultipartError) -> ApiError {
    let status = e.status();
    let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "malformed_body" };
    ApiError::new(status, code, format!("{}; an upload over api.max_body_bytes is refused", e.body_text()))
}

/// The form's parts in order: `campaign`, the options, then `targets`.
async fn create_from_list(
    st: &AppState,
    params: &HashMap<String, String>,
    mut form: Multipart,
) -> Result<Response, ApiError> {
    let mut o = options(params, st)?;
    let mut settings = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        match name.as_str() {
            "campaign" => settings = Some(campaign_part(field).await?),
            "phone_column" | "region" => {
                let v = field.text().await.map_err(multipart_error)?;
                set_option(&mut o, &name, &v)?;
            }
            "targets" => {
                let settings = settings.take().ok_or_else(|| {
                    FieldError::new("campaign", "is required, before the targets part: the campaign's settings as JSON")
                })?;
                super::prompts::check_prompts(st, Some(&settings.telephony)).await?;
                return import(st, settings, o, field).await;
            }
            other => {
                return Err(FieldError::new(
                    other,
                    "is not a part of this form: send campaign (JSON), then targets (the CSV file)",
                )
                .into());
            }
        }
    }
    Err(FieldError::new("targets", "is required: the CSV list as a file part named targets").into())
}

async fn campaign_part(field: Field<'_>) -> Result<CampaignSettings, ApiError> {
    let bytes = field.bytes().await.map_err(multipart_error)?;
    let req: CreateCampaignRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::from(FieldError::new("campaign", format!("must be the campaign's settings as JSON: {e}")))
    })?;
    if req.targets.is_some() {
        return Err(FieldError::new("campaign.targets", "give the numbers in the targets part (CSV), not here").into());
    }
    req.validate_settings().map_err(|e| FieldError::new(format!("campaign.{}", e.field), e.message).into())
}

/// What a list upload made: a campaign, or nothing because no row was usable.
#[derive(Debug)]
pub(crate) enum Imported {
    Created(Box<CampaignImported>),
    NoUsableRow(ImportReport),
}

impl IntoResponse for Imported {
    fn into_response(self) -> Response {
        match self {
            Imported::Created(c) => {
                let location = format!("/api/v1/campaigns/{}", c.campaign.id);
                (StatusCode::CREATED, [(header::LOCATION, location)], Json(c)).into_response()
            }
            Imported::NoUsableRow(report) => all_rejected(report),
        }
    }
}

async fn import(
    st: &AppState,
    settings: CampaignSettings,
    options: CsvOptions,
    field: Field<'_>,
) -> Result<Response, ApiError> {
    import_list(st, settings, options, field).await.map(IntoResponse::into_response)
}

/// Reads the list into the store as it arrives; commits if a row was usable.
pub(crate) async fn import_list(
    st: &AppState,
    settings: CampaignSettings,
    options: CsvOptions,
    mut field: Field<'_>,
) -> Result<Imported, ApiError> {
    let (tx, rx) = mpsc::channel(2);
    let store = st.store.clone();
    let writer = tokio::spawn(async move { store.import_campaign(&settings, rx).await });
    let max = st.api.max_targets_per_request as u64;
    let mut list = CsvList::new(options);
    let mut batch = Vec::with_capacity(BATCH);
    let read = async {
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            feed(&mut list, &chunk, &mut batch, ("targets", max))?;
            if batch.len() >= BATCH && !hand_over(&tx, &mut batch).await {
                return Ok(None); // the store gave up: its error is the answer
            }
        }
        let report = list.finish(&mut batch).map_err(|e| e.field_error("targets"))?;
        Ok::<_, ApiError>(Some(report))
    }
    .await;
    let report = match read {
        Ok(Some(report)) if report.accepted > 0 => report,
        Ok(None) => ImportReport::default(),
        refused => {
            // Without a commit the store undoes what it wrote (PostgreSQL may have committed
            // batches of a campaign not shown yet): answered once it has.
            drop(tx);
            let _ = writer.await;
            return refused.map(|r| Imported::NoUsableRow(r.unwrap_or_default()));
        }
    };
    if hand_over(&tx, &mut batch).await {
        let _ = tx.send(ImportBatch::Commit).await;
    }
    drop(tx);
    let campaign =
        writer.await.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Imported::Created(Box::new(CampaignImported { campaign, import: report })))
}

/// Reads the next bytes of a list held in request part or body `field`, at most `max` rows.
fn feed(list: &mut CsvList, bytes: &[u8], out: &mut Vec<Listed>, (field, max): (&str, u64)) -> Result<(), ApiError> {
    list.feed(bytes, out).map_err(|e| e.field_error(field))?;
    if list.accepted() > max {
        let message = format!("at most {max} rows per list (api.max_targets_per_request)");
        return Err(FieldError::new(field, message).into());
    }
    Ok(())
}

/// Sends the batch to the store; false if it stopped taking them.
async fn hand_over(tx: &mpsc::Sender<ImportBatch>, batch: &mut Vec<Listed>) -> bool {
    if batch.is_empty() {
        return true;
    }
    let targets = batch.drain(..).map(|l| l.target).collect();
    tx.send(ImportBatch::Targets(targets)).await.is_ok()
}

/// `POST /api/v1/campaigns/{id}/targets`: JSON, or a CSV list (`text/csv`).
pub async fn queue_targets(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Query(params): Params,
    req: Request,
) -> Response {
    let answer = match mime(&req).as_str() {
        "text/csv" => queue_from_list(&st, &id, &params, req).await,
        _ => match ApiJson::from_request(req, &st).await {
            Ok(body) => handlers::queue_targets(State(st), Path(id), body).await.map(IntoResponse::into_response),
            Err(e) => Err(e),
        },
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// Reads the whole list (at most `api.max_targets_per_request` rows), rejects the rows whose
/// number is not registered, and queues the others in one transaction. A row without other
/// columns keeps its registered metadata.
async fn queue_from_list(
    st: &AppState,
    id: &str,
    params: &HashMap<String, String>,
    req: Request,
) -> Result<Response, ApiError> {
    let id = dialer_api::campaigns::parse_id("id", id).map_err(|e| ApiError::bad_param(&e))?;
    let campaign = st.store.get_campaign(id).await?;
    if campaign.status == CampaignStatus::Completed {
        return Err(dialer_store::StoreError::from(dialer_store::Conflict::CampaignCompleted).into());
    }
    let (mut listed, mut report) = read_body(st, options(params, st)?, req).await?;
    let numbers: Vec<&str> = listed.iter().map(|l| l.target.phone_number.as_str()).collect();
    let registered = st.store.registered_numbers(id, &numbers).await?;
    let column = report.phone_column.clone();
    listed.retain(|l| {
        let known = registered.contains(&l.target.phone_number);
        if !known {
            let reason = format!("{} is not registered with this campaign", phone::mask(&l.target.phone_number));
            CsvList::reject_later(&mut report, l.line, &column, reason);
        }
        known
    });
    if listed.is_empty() {
        return Ok(all_rejected(report));
    }
    let targets: Vec<(String, Option<Value>)> = listed
        .into_iter()
        .map(|l| {
            let keep = l.target.metadata.as_object().is_some_and(|m| !m.is_empty());
            (l.target.phone_number, keep.then_some(l.target.metadata))
        })
        .collect();
    let mut queued = st.store.queue_targets(id, &targets).await?;
    queued.duplicates_merged = report.duplicates_merged;
    Ok(Json(TargetsImported { queued, import: report }).into_response())
}

/// The request body read as a list, bounded by `api.max_body_bytes` and the row limit.
async fn read_body(st: &AppState, options: CsvOptions, req: Request) -> Result<(Vec<Listed>, ImportReport), ApiError> {
    let (max_bytes, max_rows) = (st.api.max_body_bytes, st.api.max_targets_per_request as u64);
    let mut body = req.into_body().into_data_stream();
    let (mut list, mut listed, mut read) = (CsvList::new(options), Vec::new(), 0usize);
    while let Some(chunk) = body.next().await {
        let chunk: Bytes =
            chunk.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_body", e.to_string()))?;
        read += chunk.len();
        if read > max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the list is over api.max_body_bytes; send it in parts",
            ));
        }
        feed(&mut list, &chunk, &mut listed, ("body", max_rows))?;
    }
    let report = list.finish(&mut listed).map_err(|e| e.field_error("body"))?;
    Ok((listed, report))
}
