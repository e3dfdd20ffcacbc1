//! The console's access rules through the real router (the pages themselves are driven in a
//! browser by `dialer/tests/console.rs`): open without API keys; with keys, a page needs a
//! login, a wrong key is refused, a session reads the API but changes nothing through it, and a
//! form without the CSRF token is refused.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use dialer_control_plane::{ApiKey, ApiSettings, app};
use dialer_testkit::fixtures::Backend;
use http_body_util::BodyExt;
use tower::ServiceExt;

const KEY: &str = "console-access-key-0123456789";

async fn router(keys: bool) -> (Router, Option<tempfile::TempDir>) {
    let (store, dir) = dialer_testkit::fixtures::store(Backend::Sqlite).await;
    let api = ApiSettings { keys: if keys { vec![ApiKey(KEY.into())] } else { vec![] }, ..ApiSettings::default() };
    (app(&api, store), dir)
}

/// (status, the response's headers, its body as text).
async fn send(
    r: &Router,
    method: Method,
    path: &str,
    cookie: &str,
    form: Option<&str>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let mut b = Request::builder().method(method).uri(path);
    if !cookie.is_empty() {
        b = b.header(header::COOKIE, cookie);
    }
    let req = match form {
        Some(f) => b.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded").body(Body::from(f.to_string())),
        None => b.body(Body::empty()),
    };
    let resp = r.clone().oneshot(req.expect("request")).await.expect("answer");
    let (parts, body) = resp.into_parts();
    let text = String::from_utf8_lossy(&body.collect().await.expect("body").to_bytes()).to_string();
    (parts.status, parts.headers, text)
}

/// The `name=value` of each cookie the answer sets.
fn cookies(h: &axum::http::HeaderMap) -> Vec<String> {
    h.get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_the_console_opens_and_its_forms_still_need_the_csrf_token() {
    let (r, _dir) = router(false).await;
    let (s, h, body) = send(&r, Method::GET, "/", "", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(body.contains("<h1>Campaigns</h1>"), "{body}");
    let set = h.get_all(header::SET_COOKIE).iter().map(|v| v.to_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert!(
        set.iter().any(|c| c.starts_with("dialer_csrf=") && c.contains("HttpOnly") && c.contains("SameSite=Strict")),
        "{set:?}"
    );
    let csrf = cookies(&h).into_iter().find(|c| c.starts_with("dialer_csrf=")).expect("csrf cookie");
    let token = csrf.trim_start_matches("dialer_csrf=");
    assert!(body.contains(token) || !body.contains("name=\"csrf\""), "the page's forms carry the token");
    let (s, _, _) =
        send(&r, Method::POST, "/console/dnc/remove", &csrf, Some("csrf=wrong&list=global&number=%2B12125550100"))
            .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "a form without the cookie's token");
    let (s, _, body) = send(
        &r,
        Method::POST,
        "/console/dnc/remove",
        &csrf,
        Some(&format!("csrf={token}&list=global&number=%2B12125550100")),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_a_session_from_the_login_reads_the_api_and_changes_nothing_through_it() {
    let (r, _dir) = router(true).await;
    let (s, h, _) = send(&r, Method::GET, "/", "", None).await;
    assert_eq!(
        (s, h.get(header::LOCATION).and_then(|v| v.to_str().ok())),
        (StatusCode::SEE_OTHER, Some("/console/login"))
    );
    let (s, h, body) = send(&r, Method::GET, "/console/login", "", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(!body.contains(KEY));
    let csrf = cookies(&h).into_iter().find(|c| c.starts_with("dialer_csrf=")).expect("csrf cookie");
    let token = csrf.trim_start_matches("dialer_csrf=").to_string();

    let (s, h, body) =
        send(&r, Method::POST, "/console/login", &csrf, Some(&format!("csrf={token}&key=wrong-key-0123456789"))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{body}");
    assert!(cookies(&h).iter().all(|c| !c.starts_with("dialer_session=")));
    let (s, _, _) = send(&r, Method::POST, "/console/login", &csrf, Some(&format!("csrf=other&key={KEY}"))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the login form needs its token too");

    let (s, h, _) = send(&r, Method::POST, "/console/login", &csrf, Some(&format!("csrf={token}&key={KEY}"))).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    let raw = h
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("dialer_session="))
        .expect("session")
        .to_string();
    assert!(raw.contains("HttpOnly") && raw.contains("Secure") && raw.contains("SameSite=Strict"), "{raw}");
    let session = raw.split(';').next().unwrap_or("").to_string();
    assert!(!session.contains(KEY), "the cookie holds a session id, not the key");
    let both = format!("{session}; {csrf}");

    assert_eq!(send(&r, Method::GET, "/", &both, None).await.0, StatusCode::OK, "a page with the session");
    assert_eq!(
        send(&r, Method::GET, "/api/v1/campaigns", &both, None).await.0,
        StatusCode::OK,
        "the API reads with it"
    );
    assert_eq!(send(&r, Method::GET, "/api/v1/campaigns", "", None).await.0, StatusCode::UNAUTHORIZED);
    let (s, _, _) = send(&r, Method::POST, "/api/v1/dnc", &both, Some("phone_number=%2B12125550100")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "nothing changes through the API with a cookie");

    let (s, _, _) = send(&r, Method::POST, "/console/logout", &both, Some(&format!("csrf={token}"))).await;
    assert_eq!(s, StatusCode::SEE_OTHER);
    assert_eq!(send(&r, Method::GET, "/", &both, None).await.0, StatusCode::SEE_OTHER, "logged out");
    assert_eq!(send(&r, Method::GET, "/api/v1/campaigns", &both, None).await.0, StatusCode::UNAUTHORIZED);
}
