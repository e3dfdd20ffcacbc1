//! The console's sessions (a random id in a cookie, for a logged-in key) and its CSRF tokens
//! (double submit: a cookie, and the same token in every form).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Form;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::render;
use crate::api::AppState;
use crate::api::auth::{KeyEntry, Role};

const SESSION_COOKIE: &str = "dialer_session";
const CSRF_COOKIE: &str = "dialer_csrf";
/// How long a login lasts.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most sessions kept; past it, the oldest expiring goes.
const SESSIONS_MAX: usize = 10_000;

/// Logged-in sessions, by the digest of their id.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Per session (its token's digest): until when, and the id of the key that opened it.
    live: Mutex<HashMap<[u8; 32], (Instant, String)>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

fn random_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Sessions {
    fn open(&self, key_id: String) -> String {
        let id = random_token();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        live.retain(|_, (until, _)| *until > now);
        if live.len() >= SESSIONS_MAX
            && let Some(oldest) = live.iter().min_by_key(|(_, (until, _))| *until).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(digest(&id), (now + SESSION_TTL, key_id));
        id
    }

    /// The id of the key that opened the request's live session.
    pub fn key_id(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, SESSION_COOKIE)?;
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.get(&digest(id)).filter(|(until, _)| *until > Instant::now()).map(|(_, key)| key.clone())
    }

    /// Whether the request carries a live session.
    pub fn valid(&self, headers: &HeaderMap) -> bool {
        self.key_id(headers).is_some()
    }

    fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, SESSION_COOKIE) {
            self.live.lock().unwrap_or_else(|p| p.into_inner()).remove(&digest(id));
        }
    }
}

/// A cookie's value.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The CSRF token the page's forms carry (the request's cookie, or a new one).
#[derive(Clone, Debug)]
pub struct CsrfToken(pub String);

/// A form without the cookie's token (forged on another site, or stale): 403.
#[derive(Debug)]
pub struct StaleForm;

impl IntoResponse for StaleForm {
    fn into_response(self) -> Response {
        let message = "this form is stale or came from another site: reload the page and send it again";
        (StatusCode::FORBIDDEN, message).into_response()
    }
}

/// A form that carries the CSRF token.
pub trait CsrfField {
    fn csrf(&self) -> &str;
}

impl CsrfField for HashMap<String, String> {
    fn csrf(&self) -> &str {
        self.get("csrf").map_or("", String::as_str)
    }
}

/// A URL-encoded form whose token matched the cookie (else 403, [`StaleForm`]).
#[derive(Debug)]
pub struct Checked<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + CsrfField> axum::extract::FromRequest<S> for Checked<T> {
    type Rejection = Response;

    /// The token is checked before the form's fields are: a forged form is refused whatever
    /// else it holds.
    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let headers = req.headers().clone();
        let Form(fields) =
            Form::<HashMap<String, String>>::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        check_csrf(&headers, fields.csrf()).map_err(IntoResponse::into_response)?;
        let value = serde_json::to_value(&fields).unwrap_or_default();
        let f = serde_json::from_value(value).map_err(|e| {
            (StatusCode::UNPROCESSABLE_ENTITY, format!("this form is missing a field: {e}")).into_response()
        })?;
        Ok(Checked(f))
    }
}

/// Checks a form's token against the cookie.
pub fn check_csrf(headers: &HeaderMap, form_token: &str) -> Result<(), StaleForm> {
    let ok = cookie(headers, CSRF_COOKIE).is_some_and(|c| bool::from(c.as_bytes().ct_eq(form_token.as_bytes())));
    if ok { Ok(()) } else { Err(StaleForm) }
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> HeaderValue {
    let v = format!("{name}={value}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}");
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The console's access: with keys configured, a page needs a session (else the login page);
/// every page gets a CSRF token for its forms.
pub async fn guard(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let open = path == "/console/login" || path.starts_with("/console/assets/");
    if !open && !st.api.keys.is_empty() && !st.auth.sessions.valid(req.headers()) {
        return Redirect::to("/console/login").into_response();
    }
    let existing = cookie(req.headers(), CSRF_COOKIE).filter(|t| t.len() == 64).map(str::to_string);
    let token = existing.clone().unwrap_or_else(random_token);
    req.extensions_mut().insert(CsrfToken(token.clone()));
    let mut resp = next.run(req).await;
    if existing.is_none() {
        resp.headers_mut().append(header::SET_COOKIE, set_cookie(CSRF_COOKIE, &token, 86_400));
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    error: Option<String>,
}

pub async fn login_form(axum::Extension(csrf): axum::Extension<CsrfToken>) -> Response {
    render(&LoginPage { csrf: csrf.0, error: None })
}

#[derive(Deserialize)]
pub struct LoginForm {
    key: String,
    csrf: String,
}

impl CsrfField for LoginForm {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// A key that matches opens a session; a wrong one is refused (401, the form again).
pub async fn login(
    State(st): State<AppState>,
    axum::Extension(csrf): axum::Extension<CsrfToken>,
    Checked(f): Checked<LoginForm>,
) -> Response {
    let key = f.key.trim().as_bytes();
    let entry = st.auth.entry(key);
    let refused = match entry.map(|e| e.role) {
        None => Some((StatusCode::UNAUTHORIZED, "That is not an API key of this server.")),
        // The console's forms change campaigns, lists and endpoints.
        Some(Role::Read) => Some((StatusCode::FORBIDDEN, "That key is read-only; the console needs an operator key.")),
        Some(Role::Operator) => None,
    };
    if let Some((status, why)) = refused {
        let page = LoginPage { csrf: csrf.0, error: Some(why.into()) };
        return (status, render(&page)).into_response();
    }
    let id = st.auth.sessions.open(entry.map(KeyEntry::id).unwrap_or_default());
    let mut resp = Redirect::to("/").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, &id, SESSION_TTL.as_secs()));
    resp
}

pub async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Checked(_): Checked<HashMap<String, String>>,
) -> Response {
    st.auth.sessions.close(&headers);
    let mut resp = Redirect::to("/console/login").into_response();
    resp.headers_mut().append(header::SET_COOKIE, set_cookie(SESSION_COOKIE, "", 0));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(v).expect("header"));
        h
    }

    #[test]
    fn a_session_is_valid_until_closed_and_only_by_its_id() {
        let s = Sessions::default();
        let id = s.open("0123456789ab".into());
        assert_eq!(id.len(), 64);
        let h = with_cookie(&format!("a=b; {SESSION_COOKIE}={id}"));
        assert!(s.valid(&h));
        assert_eq!(s.key_id(&h).as_deref(), Some("0123456789ab"), "the key that opened it");
        assert!(!s.valid(&with_cookie(&format!("{SESSION_COOKIE}={}", random_token()))));
        assert!(!s.valid(&HeaderMap::new()));
        s.close(&h);
        assert!(!s.valid(&h));
    }

    #[test]
    fn a_form_needs_the_cookies_token() {
        let h = with_cookie(&format!("{CSRF_COOKIE}=abc"));
        assert!(check_csrf(&h, "abc").is_ok());
        assert!(check_csrf(&h, "abd").is_err());
        assert!(check_csrf(&HeaderMap::new(), "").is_err());
    }
}
