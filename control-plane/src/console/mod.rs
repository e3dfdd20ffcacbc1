//! The operator console: server-rendered pages (askama templates compiled into the binary, a
//! little hand-written JavaScript, charts as inline SVG, no build step, nothing from a CDN),
//! served by the control plane at `/` and `/console/…` beside the API.
//!
//! - **Access**: with API keys configured, `/console/login` takes a key and keeps a random
//!   session id in an HttpOnly, SameSite=Strict, Secure cookie (the key itself is never stored in
//!   the browser or put in a URL); without keys (the loopback-only embedded default) the console
//!   opens directly. The session also lets the console's pages read the API (`GET` only) for
//!   their live parts; every change goes through a console form.
//! - **CSRF**: every form that changes state carries a token equal to the `dialer_csrf` cookie
//!   (SameSite=Strict, HttpOnly); a form without it is refused (403).
//! - **Pages**: campaigns ([`pages::campaigns`]), a campaign live ([`pages::campaign`]), a call's
//!   attempts, a new campaign from a CSV list, do-not-call lists, webhook endpoints and the
//!   global picture.

mod media;
mod pages;
mod session;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};

pub use session::{Sessions, guard};

use crate::api::AppState;

/// The console's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(pages::campaigns))
        .route("/console/login", get(session::login_form).post(session::login))
        .route("/console/logout", post(session::logout))
        .route("/console/campaigns/new", get(pages::new_campaign).post(pages::create_campaign))
        .route("/console/campaigns/{id}", get(pages::campaign))
        .route("/console/campaigns/{id}/action", post(pages::campaign_action))
        .route("/console/campaigns/{id}/edit", get(pages::edit_campaign).post(pages::update_campaign))
        .route("/console/calls/{id}", get(pages::call))
        .route("/console/dnc", get(pages::dnc).post(pages::dnc_upload))
        .route("/console/dnc/remove", post(pages::dnc_remove))
        .route("/console/webhooks", get(pages::webhooks).post(pages::webhook_add))
        .route("/console/webhooks/{id}", get(pages::webhook))
        .route("/console/webhooks/{id}/action", post(pages::webhook_action))
        .route("/console/live", get(pages::live))
        .route("/console/assets/console.css", get(|| asset("text/css", include_str!("../../assets/console.css"))))
        .route("/console/assets/console.js", get(|| asset("text/javascript", include_str!("../../assets/console.js"))))
}

/// Whether a path is the console's (its own access rules; not the API's).
pub fn is_console(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// A page, or the error page with its status.
fn render<T: askama::Template>(t: &T) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "console template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be drawn; see the server log").into_response()
        }
    }
}
