//! Who changed what, when. Every request that may change something (not GET or HEAD) under
//! `/api/v1/` or the console's forms is recorded with the id of the key behind it (never the
//! key; `open` without keys; `console:ID` through a console session), its method and path and
//! the answer's status; a settings change (a campaign's `PUT`, an endpoint's `PATCH`) also with
//! the settings before and after. Entries go through a bounded queue to one writer that appends
//! them in batches (a request waits only when the queue is full); `GET /api/v1/audit` reads
//! them.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use dialer_api::views::{AuditEntry, AuditList};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::auth::Caller;
use super::{ApiError, AppState, ErrorBody};

/// Entries waiting for the writer at most.
const QUEUE: usize = 10_000;

/// Entries in one write at most.
const BATCH: usize = 500;

/// How long the writer waits for a batch to fill once an entry came: one write of many entries
/// costs PostgreSQL far less than many writes of a few (at 10k changes a second, writes of what
/// happened to be queued cost a fifth of the API's throughput). An entry is readable this much
/// later at most.
const LINGER: std::time::Duration = std::time::Duration::from_millis(100);

/// The audit log's queue (cheap to clone).
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: mpsc::Sender<AuditEntry>,
}

impl AuditLog {
    /// Starts the writer on `store`; it ends when every queue handle is dropped.
    pub fn spawn(store: crate::Store) -> AuditLog {
        let (tx, mut rx) = mpsc::channel::<AuditEntry>(QUEUE);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                fill(&mut rx, &mut batch).await;
                let mut wait = std::time::Duration::from_millis(100);
                while let Err(e) = store.append_audit(&batch).await {
                    tracing::warn!(error = %e, n = batch.len(), "writing the audit log failed; will retry");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(5));
                }
                batch.clear();
            }
        });
        AuditLog { tx }
    }

    async fn record(&self, e: AuditEntry) {
        if self.tx.send(e).await.is_err() {
            tracing::error!("the audit log's writer is gone; an entry is lost");
        }
    }
}

/// Adds to `batch` what comes within [`LINGER`], up to [`BATCH`] entries.
async fn fill(rx: &mut mpsc::Receiver<AuditEntry>, batch: &mut Vec<AuditEntry>) {
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < BATCH {
        let room = BATCH - batch.len();
        match tokio::time::timeout_at(deadline, rx.recv_many(batch, room)).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
    }
}

/// A settings resource whose before and after an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settings {
    Campaign(Uuid),
    Webhook(Uuid),
}

/// Which settings a request changes, if it is a settings change.
fn settings_of(method: &Method, path: &str) -> Option<Settings> {
    let id = |rest: &str| Uuid::parse_str(rest).ok();
    match (method, path.split_once("/api/v1/").map(|(_, r)| r)?.split_once('/')?) {
        (&Method::PUT, ("campaigns", rest)) => id(rest).map(Settings::Campaign),
        (&Method::PATCH, ("webhooks", rest)) => id(rest).map(Settings::Webhook),
        _ => None,
    }
}

/// Whether a request is recorded: it may change something, through the API or the console's
/// forms (not the console's login and logout).
fn recorded(method: &Method, path: &str) -> bool {
    let changes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    let console = path.starts_with("/console/") && !matches!(path, "/console/login" | "/console/logout");
    changes && (path.starts_with("/api/v1/") || console)
}

async fn snapshot(st: &AppState, s: Option<Settings>) -> Option<serde_json::Value> {
    match s? {
        Settings::Campaign(id) => st.store.get_campaign(id).await.ok().and_then(|c| serde_json::to_value(c).ok()),
        Settings::Webhook(id) => st.store.get_webhook(id).await.ok().and_then(|w| serde_json::to_value(w).ok()),
    }
}

/// The middleware (inside the key check, which sets [`Caller`]).
pub async fn record(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    if !recorded(&method, &path) {
        return next.run(req).await;
    }
    let key_id = match req.extensions().get::<Caller>() {
        Some(c) => st.auth.caller_id(*c),
        None if path.starts_with("/console/") => {
            format!("console:{}", st.auth.sessions.key_id(req.headers()).unwrap_or_else(|| "open".into()))
        }
        None => "open".into(),
    };
    let settings = settings_of(&method, &path);
    let before = snapshot(&st, settings).await;
    let resp = next.run(req).await;
    let status = resp.status().as_u16();
    let after = if resp.status().is_success() { snapshot(&st, settings).await } else { None };
    let entry = AuditEntry { id: 0, at: Utc::now(), key_id, method: method.to_string(), path, status, before, after };
    st.audit.record(entry).await;
    resp
}

type Params = Query<HashMap<String, String>>;

/// The audit log, oldest first: who changed what, when (`after`: an entry's id; `limit`).
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(("after" = Option<i64>, Query), ("limit" = Option<u32>, Query)),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    params: Result<Params, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let params = super::handlers::query(params)?;
    let limit = super::handlers::page_limit(&params, &st)?;
    let after = match params.get("after") {
        None => 0,
        Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_param(&dialer_domain::FieldError::new("after", "must be a whole number: an entry's id"))
        })?,
    };
    let entries = st.store.read_audit(after, limit).await?;
    let next_after = (entries.len() == limit as usize).then(|| entries.last().map(|e| e.id)).flatten();
    Ok(Json(AuditList { entries, next_after }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_are_recorded_and_settings_changes_carry_their_resource() {
        let id = Uuid::now_v7();
        assert!(recorded(&Method::POST, "/api/v1/campaigns"));
        assert!(recorded(&Method::DELETE, "/api/v1/dnc/+15555550100"));
        assert!(recorded(&Method::POST, "/console/campaigns/x/action"));
        assert!(!recorded(&Method::GET, "/api/v1/campaigns"));
        assert!(!recorded(&Method::POST, "/console/login"));
        assert!(!recorded(&Method::POST, "/metrics"));
        assert_eq!(settings_of(&Method::PUT, &format!("/api/v1/campaigns/{id}")), Some(Settings::Campaign(id)));
        assert_eq!(settings_of(&Method::PATCH, &format!("/api/v1/webhooks/{id}")), Some(Settings::Webhook(id)));
        assert_eq!(settings_of(&Method::POST, &format!("/api/v1/campaigns/{id}/start")), None);
        assert_eq!(settings_of(&Method::PUT, "/api/v1/campaigns/not-an-id"), None);
    }
}
