//! The console's pages: each reads through the store (or calls the API's own handler, so a
//! change made here is checked and recorded exactly as one made through the API) and renders a
//! template.

use std::collections::HashMap;

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use chrono::{DateTime, Utc};
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_api::csv_list::ImportReport;
use dialer_api::views::{Call, CallDetail, Campaign, CampaignStats, Waiting};
use dialer_api::webhooks::Webhook;
use dialer_domain::campaign::{CallStatus, CampaignStatus};
use dialer_store::CallQuery;
use serde::Deserialize;
use uuid::Uuid;

use super::render;
use super::session::{Checked, CsrfField, CsrfToken, check_csrf};
use crate::api::{ApiError, AppState, handlers, lists, rules, waits, webhooks};

type Params = Query<HashMap<String, String>>;

/// What every page's frame shows.
pub struct Frame {
    pub csrf: String,
    /// Whether there is a session to log out of.
    pub login: bool,
    pub title: String,
}

fn frame(st: &AppState, csrf: CsrfToken, title: impl Into<String>) -> Frame {
    Frame { csrf: csrf.0, login: !st.api.keys.is_empty(), title: title.into() }
}

/// An error page: what went wrong, in words, with the API's status.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    frame: Frame,
    message: String,
}

fn error_page(st: &AppState, csrf: CsrfToken, e: ApiError) -> Response {
    let status = e.status;
    let page = ErrorPage { frame: frame(st, csrf, "Error"), message: e.message };
    (status, render(&page)).into_response()
}

/// A campaign's row on the campaigns page.
pub struct CampaignRow {
    pub c: Campaign,
    pub s: CampaignStats,
    pub done_pct: u32,
    pub live: i64,
    pub next_window: Option<DateTime<Utc>>,
}

impl CampaignRow {
    fn of(c: Campaign, s: CampaignStats, waiting: Option<&Waiting>) -> CampaignRow {
        let done = s.completed_calls + s.failed_calls + s.skipped_calls;
        let done_pct = (done * 100).checked_div(s.total_calls).unwrap_or(0).clamp(0, 100) as u32;
        let live = s.queued_calls + s.in_progress_calls;
        CampaignRow { next_window: waiting.and_then(|w| w.next_window_at), c, s, done_pct, live }
    }
}

#[derive(Template)]
#[template(path = "campaigns.html")]
struct CampaignsPage {
    frame: Frame,
    rows: Vec<CampaignRow>,
}

/// `/`: every campaign with its progress, calls in progress against its cap, outcome mix and,
/// for a running one held back, when its next window opens.
pub async fn campaigns(State(st): State<AppState>, Extension(csrf): Extension<CsrfToken>) -> Response {
    match campaign_rows(&st).await {
        Ok(rows) => render(&CampaignsPage { frame: frame(&st, csrf, "Campaigns"), rows }),
        Err(e) => error_page(&st, csrf, e),
    }
}

async fn campaign_rows(st: &AppState) -> Result<Vec<CampaignRow>, ApiError> {
    let mut rows = Vec::new();
    for c in st.store.list_campaigns(None, 500).await? {
        let s = st.store.stats(c.id).await?;
        let waiting = if c.status == CampaignStatus::InProgress { Some(waiting_of(st, &c, &s).await?.1) } else { None };
        rows.push(CampaignRow::of(c, s, waiting.as_ref()));
    }
    rows.reverse();
    Ok(rows)
}

/// Why a campaign's pending calls wait, from the campaign and stats read already; with the
/// context, for the holds of its calls.
async fn waiting_of(st: &AppState, c: &Campaign, s: &CampaignStats) -> Result<(waits::Context, Waiting), ApiError> {
    let now = Utc::now();
    let ctx = waits::Context::new(st, c, s).await?;
    let waiting = waits::waiting(&ctx, &st.store.pending_groups(c.id, now).await?, now);
    Ok((ctx, waiting))
}

#[derive(Template)]
#[template(path = "campaign.html")]
struct CampaignPage {
    frame: Frame,
    row: CampaignRow,
    waiting: Waiting,
    held: Vec<(String, u64, Option<DateTime<Utc>>)>,
    calls: Vec<Call>,
    status_filter: String,
    next_page: Option<String>,
    confirm: Option<String>,
    media: Option<super::media::MediaPanel>,
}

/// A campaign, live: its stats, why its pending calls wait, its calls a page at a time, and
/// the buttons that move it through its states.
pub async fn campaign(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Path(id): Path<String>,
    Query(q): Params,
) -> Response {
    match campaign_page(&st, &id, &q).await {
        Ok(mut page) => {
            page.frame = frame(&st, csrf, page.row.c.name.clone());
            render(&page)
        }
        Err(e) => error_page(&st, csrf, e),
    }
}

async fn campaign_page(st: &AppState, id: &str, q: &HashMap<String, String>) -> Result<CampaignPage, ApiError> {
    let id = dialer_api::campaigns::parse_id("id", id).map_err(|e| ApiError::bad_param(&e))?;
    let c = st.store.get_campaign(id).await?;
    let s = st.store.stats(id).await?;
    let (ctx, waiting) = waiting_of(st, &c, &s).await?;
    let status_filter = q.get("status").cloned().unwrap_or_default();
    let status = CallStatus::parse(&status_filter);
    let after = q.get("page_token").and_then(|t| t.parse::<Uuid>().ok());
    let mut calls = st.store.list_calls(id, &CallQuery { after, status, limit: 50 }).await?;
    waits::fill(&ctx, &mut calls, Utc::now());
    let next_page = (calls.len() == 50).then(|| calls.last().map(|c| c.id.to_string())).flatten();
    let held = waiting
        .held
        .iter()
        .filter(|(_, h)| h.calls > 0)
        .map(|(r, h)| (r.replace('_', " "), h.calls, h.until))
        .collect();
    let media = super::media::panel(&s.media);
    Ok(CampaignPage {
        frame: Frame { csrf: String::new(), login: false, title: String::new() },
        media,
        row: CampaignRow::of(c, s, Some(&waiting)),
        waiting,
        held,
        calls,
        status_filter,
        next_page,
        confirm: q.get("confirm").filter(|a| *a == "complete").cloned(),
    })
}

impl CsrfField for ActionForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

#[derive(Deserialize)]
pub struct ActionForm {
    csrf: String,
    action: String,
}

/// Start, pause, resume or complete a campaign (through the API's handlers).
pub async fn campaign_action(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Path(id): Path<String>,
    Checked(f): Checked<ActionForm>,
) -> Response {
    let done = match f.action.as_str() {
        "start" | "resume" => handlers::start_campaign(State(st.clone()), Path(id.clone())).await,
        "pause" => handlers::pause_campaign(State(st.clone()), Path(id.clone())).await,
        "complete" => handlers::complete_campaign(State(st.clone()), Path(id.clone())).await,
        _ => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_parameter", "no such action")),
    };
    match done {
        Ok(_) => Redirect::to(&format!("/console/campaigns/{id}")).into_response(),
        Err(e) => error_page(&st, csrf, e),
    }
}

#[derive(Template)]
#[template(path = "call.html")]
struct CallPage {
    frame: Frame,
    detail: CallDetail,
    /// Per attempt, what its media came to, in words ("" without media).
    media: Vec<String>,
}

/// One call with its attempts (SIP code and reason where the SIP provider placed it).
pub async fn call(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Path(id): Path<String>,
) -> Response {
    match handlers::get_call(State(st.clone()), Path(id)).await {
        Ok(Json(detail)) => {
            let title = format!("Call {}", dialer_domain::phone::mask(&detail.call.phone_number));
            let media = detail.attempts.iter().map(|a| super::media::line(a.media.as_ref())).collect();
            render(&CallPage { frame: frame(&st, csrf, title), detail, media })
        }
        Err(e) => error_page(&st, csrf, e),
    }
}

#[derive(Template)]
#[template(path = "new_campaign.html")]
struct NewCampaignPage {
    frame: Frame,
    error: Option<String>,
    report: Option<ImportReport>,
    region: String,
}

pub async fn new_campaign(State(st): State<AppState>, Extension(csrf): Extension<CsrfToken>) -> Response {
    let region = st.api.default_region.clone();
    render(&NewCampaignPage { frame: frame(&st, csrf, "New campaign"), error: None, report: None, region })
}

#[derive(Template)]
#[template(path = "imported.html")]
struct ImportedPage {
    frame: Frame,
    campaign: Campaign,
    report: ImportReport,
}

/// The form's fields, then its CSV file: a campaign from the list, and the list's report.
pub async fn create_campaign(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    headers: HeaderMap,
    form: Multipart,
) -> Response {
    let region = st.api.default_region.clone();
    let again = |error: String, report: Option<ImportReport>| {
        let page =
            NewCampaignPage { frame: frame(&st, csrf.clone(), "New campaign"), error: Some(error), report, region };
        (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response()
    };
    match read_campaign_form(&st, &headers, form).await {
        Ok(FormOutcome::Created(c)) => render(&ImportedPage {
            frame: frame(&st, csrf.clone(), format!("{} created", c.campaign.name)),
            campaign: c.campaign,
            report: c.import,
        }),
        Ok(FormOutcome::NoUsableRow(report)) => {
            again("No row of the list is usable; nothing was created.".into(), Some(report))
        }
        Ok(FormOutcome::Forbidden(r)) => r.into_response(),
        Err(e) => again(
            match &e.field {
                Some(f) => format!("{f}: {}", e.message),
                None => e.message,
            },
            None,
        ),
    }
}

enum FormOutcome {
    Created(Box<crate::api::lists::CampaignImported>),
    NoUsableRow(ImportReport),
    Forbidden(super::session::StaleForm),
}

/// The form's text fields come first (the CSRF token first of all), the file last.
async fn read_campaign_form(st: &AppState, headers: &HeaderMap, mut form: Multipart) -> Result<FormOutcome, ApiError> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut options = lists::options(&HashMap::new(), st)?;
    while let Some(field) = form.next_field().await.map_err(lists::multipart_error)? {
        let name = field.name().unwrap_or("").to_string();
        if name == "targets" {
            if let Err(r) = check_csrf(headers, fields.get("csrf").map_or("", String::as_str)) {
                return Ok(FormOutcome::Forbidden(r));
            }
            let settings = settings_from_form(&fields)?.validate_settings()?;
            return Ok(match lists::import_list(st, settings, options, field).await? {
                lists::Imported::Created(c) => FormOutcome::Created(c),
                lists::Imported::NoUsableRow(r) => FormOutcome::NoUsableRow(r),
            });
        }
        let value = field.text().await.map_err(lists::multipart_error)?;
        match name.as_str() {
            "phone_column" | "region" if !value.trim().is_empty() => lists::set_option(&mut options, &name, &value)?,
            _ => _ = fields.insert(name, value),
        }
    }
    Err(dialer_domain::FieldError::new("targets", "choose the CSV file of numbers").into())
}

/// The form's fields as the API's create request (empty fields take the defaults).
fn settings_from_form(f: &HashMap<String, String>) -> Result<CreateCampaignRequest, ApiError> {
    let req = form_json(f)?;
    serde_json::from_value(req).map_err(|e| dialer_domain::FieldError::new("campaign", e.to_string()).into())
}

/// A create or edit form's fields as the API's JSON: empty fields left out (the defaults, or
/// unchanged), business hours from their lines, the recipient's rules off when ticked.
fn form_json(f: &HashMap<String, String>) -> Result<serde_json::Value, ApiError> {
    let text = |k: &str| f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let number = |k: &str, v: &str| {
        v.parse::<i64>().map_err(|_| ApiError::from(dialer_domain::FieldError::new(k, "must be a whole number")))
    };
    let mut req = serde_json::json!({"name": text("name").unwrap_or("")});
    for k in ["description", "time_zone"] {
        if let Some(v) = text(k) {
            req[k] = v.into();
        }
    }
    for k in ["max_concurrent_calls", "weight"] {
        if let Some(v) = text(k) {
            req[k] = number(k, v)?.into();
        }
    }
    let mut retry = serde_json::Map::new();
    if let Some(v) = text("max_attempts") {
        retry.insert("max_attempts".into(), number("max_attempts", v)?.into());
    }
    for k in ["base_delay", "max_delay"] {
        if let Some(v) = text(k) {
            retry.insert(k.into(), v.into());
        }
    }
    req["retry_policy"] = retry.into();
    if let Some(h) = text("business_hours") {
        req["business_hours"] = business_hours(h)?;
    }
    if let Some(rules) = text("calling_rules") {
        req["calling_rules"] = serde_json::from_str(rules).map_err(|e| {
            let message = format!("must be the rules as JSON (see docs/calling-rules.md): {e}");
            dialer_domain::FieldError::new("calling_rules", message)
        })?;
    }
    if f.contains_key("rules_off") {
        req["calling_rules"] = serde_json::json!({"enabled": false});
    }
    let mut telephony = serde_json::Map::new();
    if let Some(v) = text("caller_id") {
        telephony.insert("caller_id".into(), v.into());
    }
    if let Some(v) = text("ring_timeout_ms") {
        telephony.insert("ring_timeout_ms".into(), number("ring_timeout_ms", v)?.into());
    }
    for k in ["media_endpoint", "refer_to"] {
        if let Some(v) = text(k) {
            telephony.insert(k.into(), v.into());
        }
    }
    if !telephony.is_empty() {
        req["telephony"] = telephony.into();
    }
    Ok(req)
}

#[derive(Template)]
#[template(path = "edit_campaign.html")]
struct EditPage {
    frame: Frame,
    c: Campaign,
    hours: String,
    rules_off: bool,
    /// The campaign's own calling rules as JSON (empty: the server's).
    rules: String,
    error: Option<String>,
}

fn rules_text(c: &Campaign) -> String {
    let own = c.calling_rules.as_ref().filter(|r| r.enabled);
    own.and_then(|r| serde_json::to_string_pretty(r).ok()).unwrap_or_default()
}

fn hours_text(c: &Campaign) -> String {
    c.business_hours.iter().map(|h| format!("{} {}-{}", h.day_of_week, h.start, h.end)).collect::<Vec<_>>().join("\n")
}

/// A campaign's settings, to change.
pub async fn edit_campaign(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Path(id): Path<String>,
) -> Response {
    match handlers::get_campaign(State(st.clone()), Path(id)).await {
        Ok(Json(c)) => {
            let rules_off = c.calling_rules.as_ref().is_some_and(|r| !r.enabled);
            let page = EditPage {
                frame: frame(&st, csrf, format!("Edit {}", c.name)),
                hours: hours_text(&c),
                rules: rules_text(&c),
                rules_off,
                c,
                error: None,
            };
            render(&page)
        }
        Err(e) => error_page(&st, csrf, e),
    }
}

/// Saves the form through the API's update (which checks it as it checks any update).
pub async fn update_campaign(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Path(id): Path<String>,
    Checked(f): Checked<HashMap<String, String>>,
) -> Response {
    let saved = async {
        let mut req = form_json(&f)?;
        req["business_hours"] = req.get("business_hours").cloned().unwrap_or_else(|| serde_json::json!([]));
        if req.get("calling_rules").is_none() {
            req["calling_rules"] =
                serde_json::to_value(dialer_domain::rules::CallingRules::default()).unwrap_or_default();
        }
        let req = serde_json::from_value(req).map_err(|e| dialer_domain::FieldError::new("campaign", e.to_string()))?;
        handlers::update_campaign(State(st.clone()), Path(id.clone()), crate::api::ApiJson(req)).await
    }
    .await;
    match saved {
        Ok(_) => Redirect::to(&format!("/console/campaigns/{id}")).into_response(),
        Err(e) => match handlers::get_campaign(State(st.clone()), Path(id)).await {
            Ok(Json(c)) => {
                let message = match &e.field {
                    Some(field) => format!("{field}: {}", e.message),
                    None => e.message,
                };
                let page = EditPage {
                    frame: frame(&st, csrf, format!("Edit {}", c.name)),
                    hours: hours_text(&c),
                    rules: f.get("calling_rules").cloned().unwrap_or_default(),
                    rules_off: f.contains_key("rules_off"),
                    c,
                    error: Some(message),
                };
                (StatusCode::UNPROCESSABLE_ENTITY, render(&page)).into_response()
            }
            Err(e) => error_page(&st, csrf, e),
        },
    }
}

/// `"1-5 09:00-18:00"` lines (days 0 = Sunday … 6) as business-hour windows.
fn business_hours(text: &str) -> Result<serde_json::Value, ApiError> {
    let bad = || {
        dialer_domain::FieldError::new(
            "business_hours",
            "write one window a line, e.g. 1-5 09:00-18:00 (days 0 = Sunday to 6)",
        )
    };
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (days, hours) = line.split_once(' ').ok_or_else(bad)?;
        let (start, end) = hours.trim().split_once('-').ok_or_else(bad)?;
        let (a, b) = days.split_once('-').unwrap_or((days, days));
        let (a, b): (u8, u8) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
        for d in a..=b.min(6) {
            out.push(serde_json::json!({"day_of_week": d, "start": start, "end": end}));
        }
    }
    Ok(out.into())
}

#[derive(Template)]
#[template(path = "dnc.html")]
struct DncPage {
    frame: Frame,
    /// The list shown: `global` or a campaign's id.
    list: String,
    /// Every list to choose from: (`global` or the id, its name).
    lists: Vec<(String, String)>,
    searched: Option<String>,
    found: Option<dialer_api::dnc::DncView>,
    message: Option<String>,
}

impl DncPage {
    async fn new(st: &AppState, csrf: CsrfToken, list: &str, message: Option<String>) -> DncPage {
        let mut lists = vec![("global".to_string(), "Global (every campaign)".to_string())];
        let campaigns = st.store.list_campaigns(None, 500).await.unwrap_or_default();
        lists.extend(campaigns.into_iter().map(|c| (c.id.to_string(), format!("Campaign {}", c.name))));
        let list = if lists.iter().any(|(id, _)| id == list) { list.to_string() } else { "global".into() };
        DncPage { frame: frame(st, csrf, "Do-not-call lists"), list, lists, searched: None, found: None, message }
    }
}

/// The do-not-call lists (the global one, or a campaign's): search a number, upload a CSV,
/// remove a number.
pub async fn dnc(State(st): State<AppState>, Extension(csrf): Extension<CsrfToken>, Query(q): Params) -> Response {
    let list = q.get("list").map_or("global", String::as_str);
    let mut page = DncPage::new(&st, csrf, list, None).await;
    page.searched = q.get("number").map(|n| n.trim().to_string()).filter(|n| !n.is_empty());
    if let Some(n) = page.searched.clone() {
        let found = match page.list.as_str() {
            "global" => rules::get_global(State(st.clone()), Path(n.clone())).await,
            id => rules::get_campaign(State(st.clone()), Path((id.to_string(), n.clone()))).await,
        };
        match found {
            Ok(Json(v)) => page.found = Some(v),
            Err(e) if e.status == StatusCode::NOT_FOUND => page.message = Some(format!("{n} is not on this list.")),
            Err(e) => page.message = Some(e.message),
        }
    }
    render(&page)
}

/// A CSV of numbers (`phone_number[,reason,source,expires_at]`) added to a list.
pub async fn dnc_upload(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Response {
    let (mut token, mut list, mut file) = (String::new(), "global".to_string(), Bytes::new());
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("csrf") => token = field.text().await.unwrap_or_default(),
            Some("list") => list = field.text().await.unwrap_or_default(),
            Some("file") => file = field.bytes().await.unwrap_or_default(),
            _ => {}
        }
    }
    if let Err(r) = check_csrf(&headers, &token) {
        return r.into_response();
    }
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
    let added = match list.as_str() {
        "global" => rules::add_global(State(st.clone()), h, file).await,
        id => rules::add_campaign(State(st.clone()), Path(id.to_string()), h, file).await,
    };
    let message = match added {
        Ok(Json(added)) => format!("{} numbers added to the list.", added.received),
        Err(e) => format!("Nothing was added: {}", e.message),
    };
    render(&DncPage::new(&st, csrf, &list, Some(message)).await)
}

#[derive(Deserialize)]
pub struct RemoveForm {
    csrf: String,
    list: String,
    number: String,
}

impl CsrfField for RemoveForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

pub async fn dnc_remove(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Checked(f): Checked<RemoveForm>,
) -> Response {
    let removed = match f.list.as_str() {
        "global" => rules::remove_global(State(st.clone()), Path(f.number.clone())).await,
        id => rules::remove_campaign(State(st.clone()), Path((id.to_string(), f.number.clone()))).await,
    };
    let message = match removed {
        Ok(_) => format!("{} removed from the list.", f.number),
        Err(e) => e.message,
    };
    render(&DncPage::new(&st, csrf, &f.list, Some(message)).await)
}

/// A webhook endpoint's row: the endpoint and its dead letters.
pub struct WebhookRow {
    pub w: Webhook,
    pub dead: usize,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    frame: Frame,
    rows: Vec<WebhookRow>,
    message: Option<String>,
}

async fn webhooks_page(st: &AppState, csrf: CsrfToken, message: Option<String>) -> Response {
    let mut rows = Vec::new();
    let listed = match st.store.list_webhooks().await {
        Ok(l) => l,
        Err(e) => return error_page(st, csrf, e.into()),
    };
    for w in listed {
        let dead = st.store.dead_letters(w.id, 0, 1000).await.map(|d| d.len()).unwrap_or(0);
        rows.push(WebhookRow { w, dead });
    }
    render(&WebhooksPage { frame: frame(st, csrf, "Webhooks"), rows, message })
}

/// Webhook endpoints: add one, pause or resume it, see and replay its dead letters.
pub async fn webhooks(State(st): State<AppState>, Extension(csrf): Extension<CsrfToken>) -> Response {
    webhooks_page(&st, csrf, None).await
}

impl CsrfField for WebhookForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

#[derive(Deserialize)]
pub struct WebhookForm {
    csrf: String,
    url: String,
    description: Option<String>,
}

pub async fn webhook_add(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Checked(f): Checked<WebhookForm>,
) -> Response {
    let body = serde_json::json!({"url": f.url.trim(), "description": f.description.unwrap_or_default()});
    let message = match webhooks::create_webhook(State(st.clone()), Bytes::from(body.to_string())).await {
        Ok(resp) => match webhook_secret(resp).await {
            Some(secret) => format!("Endpoint added. Its signing secret, shown once: {secret}"),
            None => "Endpoint added.".into(),
        },
        Err(e) => format!("Not added: {}", e.message),
    };
    webhooks_page(&st, csrf, Some(message)).await
}

async fn webhook_secret(resp: Response) -> Option<String> {
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v["secret"].as_str().map(str::to_string)
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    frame: Frame,
    w: Webhook,
    dead: Vec<dialer_store::DeadLetter>,
}

pub async fn webhook(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Path(id): Path<String>,
) -> Response {
    let page = async {
        let id = dialer_api::campaigns::parse_id("id", &id).map_err(|e| ApiError::bad_param(&e))?;
        let w = st.store.get_webhook(id).await?;
        let dead = st.store.dead_letters(id, 0, 200).await?;
        Ok::<_, ApiError>((w, dead))
    }
    .await;
    match page {
        Ok((w, dead)) => render(&WebhookPage { frame: frame(&st, csrf, "Webhook endpoint"), w, dead }),
        Err(e) => error_page(&st, csrf, e),
    }
}

/// Pause, resume, or replay the dead letters of an endpoint.
pub async fn webhook_action(
    State(st): State<AppState>,
    Extension(csrf): Extension<CsrfToken>,
    Path(id): Path<String>,
    Checked(f): Checked<ActionForm>,
) -> Response {
    let message = match f.action.as_str() {
        "pause" | "resume" => {
            let body = serde_json::json!({"enabled": f.action == "resume"}).to_string();
            match webhooks::update_webhook(State(st.clone()), Path(id), Bytes::from(body)).await {
                Ok(Json(w)) => format!("{} {}.", w.url, if w.enabled { "resumed" } else { "paused" }),
                Err(e) => e.message,
            }
        }
        "replay" => match webhooks::replay(State(st.clone()), Path(id), Bytes::new()).await {
            Ok(Json(r)) => format!("{} dead letters sent again.", r.replayed),
            Err(e) => e.message,
        },
        _ => "No such action.".into(),
    };
    webhooks_page(&st, csrf, Some(message)).await
}

/// One trunk's figures from this process's metrics (`dialer up` runs the data plane here).
#[derive(Debug, Default, serde::Serialize)]
pub struct TrunkNow {
    pub trunk: String,
    pub channels: f64,
    pub healthy: bool,
    pub attempts: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct LiveNow {
    pub calls_in_progress: u64,
    pub global_cap: u32,
    pub trunks: Vec<TrunkNow>,
}

#[derive(Template)]
#[template(path = "live.html")]
struct LivePage {
    frame: Frame,
    now: LiveNow,
}

/// The global picture: calls up against the global cap, each trunk's channels and attempts.
/// With `?format=json` for the page's own refresh.
pub async fn live(State(st): State<AppState>, Extension(csrf): Extension<CsrfToken>, Query(q): Params) -> Response {
    let now = LiveNow {
        calls_in_progress: st.store.live_calls().await.unwrap_or(0),
        global_cap: st.global_cap,
        trunks: trunks(&dialer_telemetry::render().unwrap_or_default()),
    };
    if q.get("format").is_some_and(|f| f == "json") {
        return Json(now).into_response();
    }
    render(&LivePage { frame: frame(&st, csrf, "Live"), now })
}

/// Sums each trunk's series over the shards of the Prometheus text.
fn trunks(metrics: &str) -> Vec<TrunkNow> {
    let mut by: std::collections::BTreeMap<String, TrunkNow> = Default::default();
    for line in metrics.lines().filter(|l| l.starts_with("dialer_sip_")) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some(trunk) = series.split("trunk=\"").nth(1).and_then(|r| r.split('"').next()) else { continue };
        let v: f64 = value.parse().unwrap_or(0.0);
        let t =
            by.entry(trunk.to_string()).or_insert_with(|| TrunkNow { trunk: trunk.to_string(), ..Default::default() });
        match series.split('{').next() {
            Some("dialer_sip_channels_in_use") => t.channels += v,
            Some("dialer_sip_trunk_healthy") => t.healthy |= v > 0.0,
            Some("dialer_sip_attempts_total") => t.attempts += v,
            _ => {}
        }
    }
    by.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunks_sum_their_shards() {
        let text = "dialer_sip_channels_in_use{trunk=\"a\",shard=\"0\"} 3\n\
                    dialer_sip_channels_in_use{trunk=\"a\",shard=\"1\"} 2\n\
                    dialer_sip_trunk_healthy{trunk=\"a\",shard=\"0\"} 1\n\
                    dialer_sip_attempts_total{trunk=\"a\",outcome=\"completed\"} 10\n\
                    dialer_sip_channels_in_use{trunk=\"b\",shard=\"0\"} 0\n";
        let t = trunks(text);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].trunk.as_str(), t[0].channels, t[0].healthy, t[0].attempts), ("a", 5.0, true, 10.0));
        assert!(!t[1].healthy);
    }

    #[test]
    fn a_form_becomes_the_apis_request_with_empty_fields_left_out() {
        let f: HashMap<String, String> = [
            ("name", "n"),
            ("max_concurrent_calls", "7"),
            ("weight", ""),
            ("max_attempts", "2"),
            ("base_delay", "1s"),
            ("business_hours", "1-2 09:00-10:00"),
            ("calling_rules", "{\"blackout_dates\": [\"2026-12-25\"]}"),
            ("caller_id", "+15555550100"),
            ("refer_to", "sip:agent@example.com"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into();
        let req = form_json(&f).expect("request");
        assert_eq!(req["max_concurrent_calls"], 7);
        assert!(req.get("weight").is_none(), "empty: the default");
        assert_eq!(req["retry_policy"], serde_json::json!({"max_attempts": 2, "base_delay": "1s"}));
        assert_eq!(req["business_hours"].as_array().map(Vec::len), Some(2));
        assert_eq!(req["calling_rules"]["blackout_dates"][0], "2026-12-25");
        assert_eq!(
            req["telephony"],
            serde_json::json!({"caller_id": "+15555550100", "refer_to": "sip:agent@example.com"})
        );
        assert!(settings_from_form(&f).and_then(|r| Ok(r.validate_settings()?)).is_ok());
        let mut off = f.clone();
        off.insert("rules_off".into(), "1".into());
        assert_eq!(form_json(&off).expect("request")["calling_rules"], serde_json::json!({"enabled": false}));
        let mut bad = f;
        bad.insert("calling_rules".into(), "{not json".into());
        assert_eq!(form_json(&bad).err().and_then(|e| e.field), Some("calling_rules".to_string()));
    }

    #[test]
    fn business_hours_lines_become_windows() {
        let w = business_hours("1-5 09:00-18:00\n6 10:00-14:00").expect("hours");
        assert_eq!(w.as_array().map(Vec::len), Some(6));
        assert_eq!(w[5], serde_json::json!({"day_of_week": 6, "start": "10:00", "end": "14:00"}));
        assert!(business_hours("monday 9-5").is_err());
    }
}
