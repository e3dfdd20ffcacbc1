//! Every endpoint, on both stores: the seed's smoke sequence, validation errors, paging,
//! state-machine conflicts, target registration rules, and stats against the call rows.
//! PostgreSQL comes from the shared harness (a fresh database per test); SQLite is a temp file.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use dialer_control_plane::{ApiKey, ApiSettings, Store, app};
use dialer_testkit::fixtures::Backend;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

async fn test_app_with(backend: Backend, api: ApiSettings) -> TestApp {
    let (store, dir) = dialer_testkit::fixtures::store(backend).await;
    TestApp { router: app(&api, store.clone()), store, _dir: dir }
}

async fn test_app(backend: Backend) -> TestApp {
    test_app_with(backend, ApiSettings::default()).await
}

impl TestApp {
    async fn raw(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = self.router.clone().oneshot(req).await.expect("router answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{status}: non-JSON body {:?}", String::from_utf8_lossy(&bytes)))
        };
        (status, v)
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let b = Request::builder().method(method).uri(path);
        let req = match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        };
        self.raw(req.expect("request")).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.req(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::POST, path, Some(body)).await
    }

    async fn create(&self, body: Value) -> Value {
        let (s, v) = self.post("/api/v1/campaigns", body).await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        v
    }

    /// Stats from the API must equal a fresh count of the call rows.
    async fn assert_stats_match_rows(&self, id: &str) -> Value {
        let (s, stats) = self.get(&format!("/api/v1/campaigns/{id}/stats")).await;
        assert_eq!(s, StatusCode::OK, "{stats}");
        let recount = self.store.recount_stats(id.parse().expect("uuid")).await.expect("recount");
        let mut counts = stats.clone();
        counts.as_object_mut().expect("object").remove("waiting");
        assert_eq!(counts, serde_json::to_value(&recount).expect("json"), "stats differ from the call rows");
        stats
    }
}

fn seed_campaign(name: &str) -> Value {
    json!({
        "name": name,
        "description": "Sample outbound campaign",
        "time_zone": "America/New_York",
        "max_concurrent_calls": 10,
        "retry_policy": {"max_attempts": 3, "base_delay": "2s", "max_delay": "30s", "jitter": 0.2},
        "business_hours": [{"day_of_week": 1, "start": "09:00", "end": "18:00"}],
        "targets": [{"phone_number": "+15555550001"}, {"phone_number": "+15555550002", "metadata": {"tier": "gold"}}]
    })
}

fn assert_error(status: StatusCode, body: &Value, want: StatusCode, code: &str) {
    assert_eq!(status, want, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

async fn smoke_sequence(t: TestApp) {
    let (s, h) = t.get("/healthz").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h["status"], "ok");
    assert_eq!(h["dependencies"]["store"]["status"], "up");

    // 1. create
    let c = t.create(seed_campaign("test-campaign")).await;
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(c["status"], "pending");
    assert_eq!(c["max_concurrent_calls"], 10);
    assert_eq!(c["weight"], 1, "default weight");
    assert_eq!(c["time_zone"], "America/New_York");
    let retry_on = json!(["busy", "no_answer", "failed", "unknown_outcome"]);
    assert_eq!(
        c["retry_policy"],
        json!({"max_attempts": 3, "base_delay": "2s", "max_delay": "30s", "jitter": 0.2, "retry_on": retry_on})
    );
    assert_eq!(c["telephony"], json!({}), "no SIP settings of its own: the provider's");
    assert_eq!(c["business_hours"], json!([{"day_of_week": 1, "start": "09:00", "end": "18:00"}]));
    assert_eq!(c["target_count"], 2);
    assert!(c["created_at"].is_string() && c["started_at"].is_null());

    // 2. update
    let (s, u) = t
        .req(
            Method::PUT,
            &format!("/api/v1/campaigns/{id}"),
            Some(json!({
                "description": "Evening calling window",
                "max_concurrent_calls": 25,
                "weight": 3,
                "business_hours": [
                    {"day_of_week": 1, "start": "13:00", "end": "21:00"},
                    {"day_of_week": 2, "start": "13:00", "end": "21:00"}
                ],
                "retry_policy": {"max_attempts": 4, "base_delay": "3s", "max_delay": "45s", "jitter": 0.3}
            })),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["description"], "Evening calling window");
    assert_eq!(u["max_concurrent_calls"], 25);
    assert_eq!(u["weight"], 3);
    assert_eq!(u["business_hours"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        u["retry_policy"],
        json!({"max_attempts": 4, "base_delay": "3s", "max_delay": "45s", "jitter": 0.3, "retry_on": retry_on})
    );
    assert_eq!(u["name"], "test-campaign", "untouched fields are kept");

    // 3. start, 4. pause
    let (s, v) = t.post(&format!("/api/v1/campaigns/{id}/start"), json!(null)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("in_progress")), "{v}");
    assert!(v["started_at"].is_string());
    let (s, v) = t.req(Method::POST, &format!("/api/v1/campaigns/{id}/pause"), None).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("paused")));

    // 5. inspect
    let (s, v) = t.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "paused");
    assert_eq!(v["description"], "Evening calling window");

    // 6. trigger a call: the number already has its pending call, which is returned, not doubled.
    let (s, call) = t
        .post(
            "/api/v1/calls",
            json!({"campaign_id": id, "phone_number": "+15555550001", "metadata": {"priority": "high"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{call}");
    assert_eq!(call["status"], "pending");
    assert_eq!(call["campaign_id"], id.as_str());

    // 7. stats
    let stats = t.assert_stats_match_rows(&id).await;
    assert_eq!(stats["total_calls"], 2);
    assert_eq!(stats["pending_calls"], 2);
    assert_eq!(stats["completed_calls"], 0);
    assert_eq!(stats["retries_attempted"], 0);

    // 8. list calls, 9. get call
    let (s, list) = t.get(&format!("/api/v1/campaigns/{id}/calls")).await;
    assert_eq!(s, StatusCode::OK);
    let calls = list["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2);
    assert!(list["next_page_token"].is_null());
    let gold = calls.iter().find(|c| c["phone_number"] == "+15555550002").expect("second target");
    assert_eq!(gold["metadata"], json!({"tier": "gold"}), "a call carries its target's metadata");
    let call_id = calls[0]["id"].as_str().expect("id");
    let (s, detail) = t.get(&format!("/api/v1/calls/{call_id}")).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(detail["id"], call_id);
    assert_eq!(detail["attempts"], json!([]));

    // 10. complete
    let (s, v) = t.post(&format!("/api/v1/campaigns/{id}/complete"), json!(null)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("completed")));
    assert!(v["completed_at"].is_string());
}

async fn create_validation(t: TestApp) {
    let cases: Vec<(Value, &str)> = vec![
        (json!({"targets": [{"phone_number": "+15555550001"}]}), "name"),
        (json!({"name": "", "targets": [{"phone_number": "+15555550001"}]}), "name"),
        (json!({"name": "a", "time_zone": "Mars/Base", "targets": [{"phone_number": "+15555550001"}]}), "time_zone"),
        (
            json!({"name": "a", "max_concurrent_calls": 0, "targets": [{"phone_number": "+15555550001"}]}),
            "max_concurrent_calls",
        ),
        (
            json!({"name": "a", "max_concurrent_calls": "ten", "targets": [{"phone_number": "+15555550001"}]}),
            "max_concurrent_calls",
        ),
        (
            json!({"name": "a", "retry_policy": {"jitter": 1.5}, "targets": [{"phone_number": "+15555550001"}]}),
            "retry_policy.jitter",
        ),
        (
            json!({"name": "a", "retry_policy": {"base_delay": "2 fortnights"}, "targets": [{"phone_number": "+15555550001"}]}),
            "retry_policy.base_delay",
        ),
        (
            json!({"name": "a", "retry_policy": {"max_attempts": 0}, "targets": [{"phone_number": "+15555550001"}]}),
            "retry_policy.max_attempts",
        ),
        (
            json!({"name": "a", "business_hours": [{"day_of_week": 7, "start": "09:00", "end": "10:00"}], "targets": [{"phone_number": "+15555550001"}]}),
            "business_hours[0].day_of_week",
        ),
        (
            json!({"name": "a", "business_hours": [{"day_of_week": 1, "start": "9am", "end": "10:00"}], "targets": [{"phone_number": "+15555550001"}]}),
            "business_hours[0].start",
        ),
        (json!({"name": "a", "targets": []}), "targets"),
        (json!({"name": "a"}), "targets"),
        (
            json!({"name": "a", "targets": [{"phone_number": "+15555550001"}, {"phone_number": "5555550002"}]}),
            "targets[1].phone_number",
        ),
        (json!({"name": "a", "targets": [{"phone_number": "+15555550001", "metadata": "x"}]}), "targets[0].metadata"),
        (json!({"name": "a", "colour": "blue", "targets": [{"phone_number": "+15555550001"}]}), "colour"),
        (json!({"name": "a", "telephony": [null, null], "targets": [{"phone_number": "+15555550001"}]}), "telephony"),
        (json!({"name": "a", "retry_policy": [3], "targets": [{"phone_number": "+15555550001"}]}), "retry_policy"),
        (
            json!({"name": "a", "retry_policy": {"jitter": "x"}, "targets": [{"phone_number": "+15555550001"}]}),
            "retry_policy.jitter",
        ),
        (
            json!({"name": "a", "telephony": {"ring": 5}, "targets": [{"phone_number": "+15555550001"}]}),
            "telephony.ring",
        ),
        (
            json!({"name": "a", "telephony": {"media_endpoint": "x"}, "targets": [{"phone_number": "+15555550001"}]}),
            "telephony.media_endpoint",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = t.post("/api/v1/campaigns", body.clone()).await;
        assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(v["error"]["field"], field, "{body} → {v}");
    }
    // Malformed JSON and wrong content types.
    let bad_json = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/campaigns")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\": "))
        .expect("request");
    let (s, v) = t.raw(bad_json).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "malformed_json");
    let text = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/campaigns")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(seed_campaign("x").to_string()))
        .expect("request");
    let (s, v) = t.raw(text).await;
    assert_error(s, &v, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    // Nothing of a refused request was written.
    let (_, list) = t.get("/api/v1/campaigns").await;
    assert_eq!(list["campaigns"], json!([]));
}

async fn names_are_unique_ignoring_case(t: TestApp) {
    t.create(seed_campaign("Spring Promo")).await;
    let (s, v) = t.post("/api/v1/campaigns", seed_campaign("spring promo")).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    let other = t.create(seed_campaign("Autumn")).await;
    let (s, v) = t
        .req(
            Method::PUT,
            &format!("/api/v1/campaigns/{}", other["id"].as_str().expect("id")),
            Some(json!({"name": "SPRING PROMO"})),
        )
        .await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
    let (_, list) = t.get("/api/v1/campaigns").await;
    assert_eq!(list["campaigns"].as_array().map(Vec::len), Some(2));
}

async fn list_paging(t: TestApp) {
    let mut ids = vec![];
    for i in 0..5 {
        ids.push(t.create(seed_campaign(&format!("c{i}"))).await["id"].as_str().expect("id").to_string());
    }
    let mut seen = vec![];
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/api/v1/campaigns?limit=2&after_id={a}"),
            None => "/api/v1/campaigns?limit=2".to_string(),
        };
        let (s, page) = t.get(&path).await;
        assert_eq!(s, StatusCode::OK);
        let got: Vec<String> = page["campaigns"]
            .as_array()
            .expect("array")
            .iter()
            .map(|c| c["id"].as_str().expect("id").to_string())
            .collect();
        assert!(got.len() <= 2);
        seen.extend(got);
        match page["next_after_id"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "pages return every campaign once, in creation order");
    for bad in ["limit=0", "limit=abc", "limit=1000000", "after_id=xyz"] {
        let (s, v) = t.get(&format!("/api/v1/campaigns?{bad}")).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_parameter");
    }
}

async fn ids_and_routes(t: TestApp) {
    let unknown = "0192f0c1-7a5e-7c3b-9a61-1f2e3d4c5b6a";
    for path in [
        format!("/api/v1/campaigns/{unknown}"),
        format!("/api/v1/campaigns/{unknown}/stats"),
        format!("/api/v1/campaigns/{unknown}/calls"),
        format!("/api/v1/calls/{unknown}"),
    ] {
        let (s, v) = t.get(&path).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    for action in ["start", "pause", "complete"] {
        let (s, v) = t.post(&format!("/api/v1/campaigns/{unknown}/{action}"), json!(null)).await;
        assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    }
    let (s, v) = t.req(Method::PUT, &format!("/api/v1/campaigns/{unknown}"), Some(json!({"description": "x"}))).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = t
        .post(&format!("/api/v1/campaigns/{unknown}/targets"), json!({"targets": [{"phone_number": "+15555550001"}]}))
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    for path in ["/api/v1/campaigns/not-a-uuid", "/api/v1/calls/42", "/api/v1/campaigns/zz/stats"] {
        let (s, v) = t.get(path).await;
        assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_parameter");
        assert_eq!(v["error"]["field"], "id");
    }
    let (s, v) = t.get("/api/v1/nowhere").await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = t.req(Method::DELETE, "/api/v1/campaigns", None).await;
    assert_error(s, &v, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let (s, doc) = t.get("/api/v1/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    for p in [
        "/api/v1/campaigns",
        "/api/v1/campaigns/{id}/start",
        "/api/v1/campaigns/{id}/targets",
        "/api/v1/calls/{id}",
        "/healthz",
    ] {
        assert!(doc["paths"].get(p).is_some(), "OpenAPI lacks {p}");
    }
}

async fn update_rules(t: TestApp) {
    let c = t.create(seed_campaign("u")).await;
    let path = format!("/api/v1/campaigns/{}", c["id"].as_str().expect("id"));
    let (s, v) = t.req(Method::PUT, &path, Some(json!({"retry_policy": {"jitter": 0.9}}))).await;
    assert_eq!(s, StatusCode::OK);
    let retry_on = json!(["busy", "no_answer", "failed", "unknown_outcome"]);
    assert_eq!(
        v["retry_policy"],
        json!({"max_attempts": 3, "base_delay": "2s", "max_delay": "30s", "jitter": 0.9, "retry_on": retry_on}),
        "partial retry policy merges"
    );
    let (s, v) = t.req(Method::PUT, &path, Some(json!({"business_hours": []}))).await;
    assert_eq!((s, v["business_hours"].clone()), (StatusCode::OK, json!([])), "[] means 24x7");
    let (s, v) = t.req(Method::PUT, &path, Some(json!({"retry_policy": {"retry_on": ["busy"]}}))).await;
    assert_eq!(
        (s, v["retry_policy"]["retry_on"].clone(), v["retry_policy"]["jitter"].clone()),
        (StatusCode::OK, json!(["busy"]), json!(0.9))
    );
    let telephony = json!({"caller_id": "+15005550006", "ring_timeout_ms": 25000, "refer_to": "sip:q@ivr.example.com"});
    let (s, v) = t.req(Method::PUT, &path, Some(json!({"telephony": telephony}))).await;
    assert_eq!((s, v["telephony"].clone()), (StatusCode::OK, telephony), "the campaign's SIP settings kept");
    let (s, v) = t.req(Method::PUT, &path, Some(json!({"telephony": {"caller_id": "12"}}))).await;
    assert_eq!((s, v["error"]["field"].clone()), (StatusCode::UNPROCESSABLE_ENTITY, json!("telephony.caller_id")));
    let (s, v) = t
        .req(
            Method::PUT,
            &path,
            Some(json!({"business_hours": [{"day_of_week": 5, "start": "22:00", "end": "02:00"}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "crossing midnight is allowed: {v}");
    for (body, field) in [
        (json!({"max_concurrent_calls": -1}), "max_concurrent_calls"),
        (json!({"weight": 0}), "weight"),
        (json!({"weight": 1001}), "weight"),
        (json!({"time_zone": "Nope"}), "time_zone"),
        (json!({"retry_policy": {"max_delay": "1s"}}), "retry_policy.max_delay"),
        (json!({"targets": []}), "targets"),
    ] {
        let (s, v) = t.req(Method::PUT, &path, Some(body)).await;
        assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(v["error"]["field"], field);
    }
    let (_, after) = t.get(&path).await;
    assert_eq!(after["max_concurrent_calls"], 10, "refused updates change nothing");
    assert_eq!(after["retry_policy"]["jitter"], 0.9);
}

async fn state_machine(t: TestApp) {
    let c = t.create(seed_campaign("sm")).await;
    let id = c["id"].as_str().expect("id");
    let go = |action: &'static str| {
        let t = &t;
        let path = format!("/api/v1/campaigns/{id}/{action}");
        async move { t.post(&path, json!(null)).await }
    };
    let (s, v) = go("pause").await;
    assert_error(s, &v, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(v["error"]["current_status"], "pending");
    assert_eq!(go("start").await.0, StatusCode::OK);
    let (s, v) = go("start").await;
    assert_error(s, &v, StatusCode::CONFLICT, "invalid_transition");
    assert_eq!(v["error"]["current_status"], "in_progress");
    assert_eq!(go("pause").await.0, StatusCode::OK);
    let (s, v) = go("pause").await;
    assert_eq!((s, v["error"]["current_status"].as_str()), (StatusCode::CONFLICT, Some("paused")));
    assert_eq!(go("start").await.1["status"], "in_progress", "resume");
    assert_eq!(go("complete").await.0, StatusCode::OK);
    for action in ["start", "pause", "complete"] {
        let (s, v) = go(action).await;
        assert_error(s, &v, StatusCode::CONFLICT, "invalid_transition");
        assert_eq!(v["error"]["current_status"], "completed");
    }
    // A pending campaign can be completed (cancelled) directly.
    let p = t.create(seed_campaign("sm2")).await;
    let (s, v) = t.post(&format!("/api/v1/campaigns/{}/complete", p["id"].as_str().expect("id")), json!(null)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("completed")));
}

async fn targets_only_registered(t: TestApp) {
    let c = t.create(seed_campaign("tg")).await;
    let id = c["id"].as_str().expect("id");
    let path = format!("/api/v1/campaigns/{id}/targets");
    // Both registered numbers still have their first pending call: nothing new is queued.
    let (s, v) =
        t.post(&path, json!({"targets": [{"phone_number": "+15555550001"}, {"phone_number": "+15555550002"}]})).await;
    assert_eq!((s, v.clone()), (StatusCode::OK, json!({"queued": 0, "already_queued": 2, "duplicates_merged": 0})));
    // An unregistered number refuses the whole request, naming it; nothing is written.
    let before = t.assert_stats_match_rows(id).await;
    let (s, v) =
        t.post(&path, json!({"targets": [{"phone_number": "+15555550001"}, {"phone_number": "+15555550099"}]})).await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(v["error"]["field"], "targets[1].phone_number");
    assert!(v["error"]["message"].as_str().expect("msg").contains("+15555550099"));
    assert_eq!(t.assert_stats_match_rows(id).await, before);
    for (body, field) in [
        (json!({"targets": []}), "targets"),
        (json!({"targets": [{"phone_number": "12"}]}), "targets[0].phone_number"),
        (json!({"numbers": []}), "numbers"),
    ] {
        let (s, v) = t.post(&path, body).await;
        assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
        assert_eq!(v["error"]["field"], field);
    }
    // Once its call ends, a number can be queued again. Mark one call terminal as the recorder will.
    match t.store.pool() {
        dialer_store::Pool::Postgres(p) => {
            sqlx::query("UPDATE calls SET status = 'failed' WHERE phone_number = '+15555550001'")
                .execute(p)
                .await
                .expect("update");
            sqlx::query("UPDATE campaign_stats SET pending_calls = pending_calls - 1, failed_calls = failed_calls + 1")
                .execute(p)
                .await
                .expect("update");
        }
        dialer_store::Pool::Sqlite(p) => {
            sqlx::query("UPDATE calls SET status = 'failed' WHERE phone_number = '+15555550001'")
                .execute(p)
                .await
                .expect("update");
            sqlx::query("UPDATE campaign_stats SET pending_calls = pending_calls - 1, failed_calls = failed_calls + 1")
                .execute(p)
                .await
                .expect("update");
        }
    }
    let (s, v) = t.post(&path, json!({"targets": [{"phone_number": "+15555550001", "metadata": {"again": true}}, {"phone_number": "+15555550002"}]})).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"queued": 1, "already_queued": 1, "duplicates_merged": 0})));
    let stats = t.assert_stats_match_rows(id).await;
    assert_eq!(
        (stats["total_calls"].as_i64(), stats["pending_calls"].as_i64(), stats["failed_calls"].as_i64()),
        (Some(3), Some(2), Some(1))
    );
    let (_, pending) = t.get(&format!("/api/v1/campaigns/{id}/calls?status=pending")).await;
    let requeued = pending["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .find(|c| c["phone_number"] == "+15555550001")
        .expect("requeued call");
    assert_eq!(requeued["metadata"], json!({"again": true}));
    // A completed campaign takes no new calls.
    t.post(&format!("/api/v1/campaigns/{id}/complete"), json!(null)).await;
    let (s, v) = t.post(&path, json!({"targets": [{"phone_number": "+15555550001"}]})).await;
    assert_error(s, &v, StatusCode::CONFLICT, "conflict");
}

async fn calls_endpoints(t: TestApp) {
    let targets: Vec<Value> = (0..7).map(|i| json!({"phone_number": format!("+1555000{i:04}")})).collect();
    let mut body = seed_campaign("calls");
    body["targets"] = Value::Array(targets);
    let c = t.create(body).await;
    let id = c["id"].as_str().expect("id");
    for (body, want, code, field) in [
        (
            json!({"campaign_id": "0192f0c1-7a5e-7c3b-9a61-1f2e3d4c5b6a", "phone_number": "+15550000001"}),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            json!({"campaign_id": "nope", "phone_number": "+15550000001"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("campaign_id"),
        ),
        (
            json!({"campaign_id": id, "phone_number": "+15559999999"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("phone_number"),
        ),
        (
            json!({"campaign_id": id, "phone_number": "call me"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("phone_number"),
        ),
        (
            json!({"campaign_id": id, "phone_number": "+15550000001", "metadata": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            Some("metadata"),
        ),
        (json!({"campaign_id": id}), StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", Some("phone_number")),
    ] {
        let (s, v) = t.post("/api/v1/calls", body).await;
        assert_error(s, &v, want, code);
        if let Some(f) = field {
            assert_eq!(v["error"]["field"], f);
        }
    }
    // Paging through calls with page_token.
    let mut seen = std::collections::HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(tk) => format!("/api/v1/campaigns/{id}/calls?limit=3&page_token={tk}"),
            None => format!("/api/v1/campaigns/{id}/calls?limit=3"),
        };
        let (s, page) = t.get(&path).await;
        assert_eq!(s, StatusCode::OK);
        for call in page["calls"].as_array().expect("calls") {
            assert!(seen.insert(call["id"].as_str().expect("id").to_string()), "a call appears on two pages");
        }
        match page["next_page_token"].as_str() {
            Some(tk) => token = Some(tk.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    let (s, v) = t.get(&format!("/api/v1/campaigns/{id}/calls?status=ringing")).await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_parameter");
    let (_, done) = t.get(&format!("/api/v1/campaigns/{id}/calls?status=completed")).await;
    assert_eq!(done["calls"], json!([]));
    t.assert_stats_match_rows(id).await;
}

async fn bulk_targets(t: TestApp) {
    let n = 20_000;
    let targets: Vec<Value> =
        (0..n).map(|i| json!({"phone_number": format!("+1444{i:07}"), "metadata": {"row": i}})).collect();
    let mut body = seed_campaign("bulk");
    body["targets"] = Value::Array(targets.clone());
    let c = t.create(body).await;
    assert_eq!(c["target_count"], n);
    let id = c["id"].as_str().expect("id");
    let stats = t.assert_stats_match_rows(id).await;
    assert_eq!((stats["total_calls"].as_i64(), stats["pending_calls"].as_i64()), (Some(n), Some(n)));
    let (s, v) = t.post(&format!("/api/v1/campaigns/{id}/targets"), json!({"targets": targets})).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"queued": 0, "already_queued": n, "duplicates_merged": 0})));
}

/// The seed's load-test script lists a number more than once: each is merged into its first
/// listing (one target, one call, the first listing's metadata), and the answer counts them.
async fn duplicate_numbers_are_merged(t: TestApp) {
    let mut body = seed_campaign("dups");
    body["targets"] = json!([
        {"phone_number": "+15555550001", "metadata": {"first": true}},
        {"phone_number": "+15555550002"},
        {"phone_number": "+15555550001", "metadata": {"first": false}},
        {"phone_number": "+15555550002"},
        {"phone_number": "+15555550003"},
    ]);
    let c = t.create(body).await;
    assert_eq!((c["target_count"].as_i64(), c["duplicates_merged"].as_i64()), (Some(3), Some(2)), "{c}");
    let id = c["id"].as_str().expect("id");
    let stats = t.assert_stats_match_rows(id).await;
    assert_eq!(stats["total_calls"], 3, "one call per number");
    let (_, calls) = t.get(&format!("/api/v1/campaigns/{id}/calls")).await;
    let first = calls["calls"].as_array().expect("calls").iter().find(|k| k["phone_number"] == "+15555550001").cloned();
    assert_eq!(first.expect("the merged number's call")["metadata"], json!({"first": true}));
    let (_, got) = t.get(&format!("/api/v1/campaigns/{id}")).await;
    assert!(got.get("duplicates_merged").is_none(), "only the create answer carries it: {got}");
    let twice = json!({"targets": [{"phone_number": "+15555550003"}, {"phone_number": "+15555550003"}]});
    let (s, v) = t.post(&format!("/api/v1/campaigns/{id}/targets"), twice).await;
    assert_eq!((s, v), (StatusCode::OK, json!({"queued": 0, "already_queued": 1, "duplicates_merged": 1})));
}

async fn body_limit(backend: Backend) {
    let t = test_app_with(backend, ApiSettings { max_body_bytes: 2048, ..Default::default() }).await;
    let targets: Vec<Value> = (0..200).map(|i| json!({"phone_number": format!("+1444{i:07}")})).collect();
    let mut body = seed_campaign("big");
    body["targets"] = Value::Array(targets);
    let (s, v) = t.post("/api/v1/campaigns", body).await;
    assert_error(s, &v, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
}

async fn health_reports_store_down(t: TestApp) {
    t.store.close().await;
    let (s, v) = t.get("/healthz").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["status"], "unavailable");
    assert_eq!(v["dependencies"]["store"]["status"], "down");
    let (s, v) = t.get("/api/v1/campaigns").await;
    assert_error(s, &v, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
}

/// POST /calls for a number whose last call ended creates a new call (201, Location), counted
/// in the stats; the same request again returns that open call (200), not a second one.
async fn post_call_creates_after_the_last_ended(t: TestApp) {
    let c = t.create(seed_campaign("recall")).await;
    let id = c["id"].as_str().expect("id").to_string();
    end_all_calls(&t.store).await;
    let before = t.assert_stats_match_rows(&id).await;
    let body = json!({"campaign_id": id, "phone_number": "+15555550002"});
    let (s, call) = t.post("/api/v1/calls", body.clone()).await;
    assert_eq!(s, StatusCode::CREATED, "{call}");
    assert_eq!((call["status"].as_str(), call["attempt_count"].as_u64()), (Some("pending"), Some(0)));
    assert_eq!(call["metadata"], json!({"tier": "gold"}), "the target's registered metadata");
    let (s, again) = t.post("/api/v1/calls", body).await;
    assert_eq!(s, StatusCode::OK, "{again}");
    assert_eq!(again["id"], call["id"], "the open call, not a second one");
    let after = t.assert_stats_match_rows(&id).await;
    assert_eq!(after["total_calls"].as_i64(), before["total_calls"].as_i64().map(|n| n + 1));
    assert_eq!(after["pending_calls"], 1);
}

/// Ends every pending call of the store as answered on its first attempt, as the recorder
/// would, so the numbers take new calls.
async fn end_all_calls(store: &Store) {
    let q1 = "UPDATE calls SET status = 'completed', attempt_count = 1 WHERE status = 'pending'";
    let q2 = "UPDATE campaign_stats SET completed_calls = completed_calls + pending_calls, \
              attempts_total = attempts_total + pending_calls, pending_calls = 0";
    match store.pool() {
        dialer_store::Pool::Postgres(p) => {
            sqlx::query(q1).execute(p).await.expect("end calls");
            sqlx::query(q2).execute(p).await.expect("end stats");
        }
        dialer_store::Pool::Sqlite(p) => {
            sqlx::query(q1).execute(p).await.expect("end calls");
            sqlx::query(q2).execute(p).await.expect("end stats");
        }
    }
}

/// Many `POST /calls` at once (on PostgreSQL they are created in batches): each request gets
/// its own answer, each number exactly one new call however often it is asked for, bad items
/// fail alone, and the stats equal the rows. Then one mixed batch straight through the store.
async fn post_calls_concurrently_and_in_batches(t: TestApp) {
    let numbers = |base: u32| -> Vec<Value> {
        (0..30).map(|i| json!({"phone_number": format!("+1555{:07}", base + i)})).collect()
    };
    let mut ids = Vec::new();
    for (name, base) in [("batch-a", 1000), ("batch-b", 2000), ("batch-done", 3000)] {
        let mut body = seed_campaign(name);
        body["targets"] = Value::Array(numbers(base));
        ids.push(t.create(body).await["id"].as_str().expect("id").to_string());
    }
    let (a, b, done) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    let (s, v) = t.post(&format!("/api/v1/campaigns/{done}/complete"), json!(null)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    end_all_calls(&t.store).await;
    let before_a = t.assert_stats_match_rows(&a).await;

    // Every number of a and b three times (the first with metadata of its own), interleaved,
    // plus requests that must fail alone: 189 in all, under the default MAX_CONCURRENT_CALLS (200).
    let mut reqs = Vec::new();
    for round in 0..3 {
        for i in 0..30u32 {
            for (cid, base) in [(&a, 1000u32), (&b, 2000)] {
                let mut body = json!({"campaign_id": cid, "phone_number": format!("+1555{:07}", base + i)});
                if round == 0 {
                    body["metadata"] = json!({"round": 0, "i": i});
                }
                reqs.push((body, None));
            }
        }
        reqs.push((json!({"campaign_id": done, "phone_number": "+15550003000"}), Some(StatusCode::CONFLICT)));
        reqs.push((json!({"campaign_id": a, "phone_number": "+15559999999"}), Some(StatusCode::UNPROCESSABLE_ENTITY)));
        reqs.push((
            json!({"campaign_id": "0192f0c1-7a5e-7c3b-9a61-1f2e3d4c5b6a", "phone_number": "+15550001000"}),
            Some(StatusCode::NOT_FOUND),
        ));
    }
    let answers = futures::future::join_all(reqs.iter().map(|(body, _)| t.post("/api/v1/calls", body.clone()))).await;
    let mut calls: std::collections::HashMap<(String, String), (usize, Vec<String>)> = Default::default();
    for ((body, want), (s, v)) in reqs.iter().zip(answers) {
        match want {
            Some(w) => {
                assert_eq!(s, *w, "{body} → {v}");
                if *w == StatusCode::UNPROCESSABLE_ENTITY {
                    assert_eq!(v["error"]["field"], "phone_number");
                }
            }
            None => {
                assert!(s == StatusCode::CREATED || s == StatusCode::OK, "{body} → {s} {v}");
                assert_eq!(v["status"], "pending", "{v}");
                let key = (
                    body["campaign_id"].as_str().unwrap().to_string(),
                    v["phone_number"].as_str().unwrap().to_string(),
                );
                let e = calls.entry(key).or_default();
                e.0 += usize::from(s == StatusCode::CREATED);
                e.1.push(v["id"].as_str().expect("call id").to_string());
            }
        }
    }
    assert_eq!(calls.len(), 60);
    for (key, (created, ids)) in &calls {
        assert_eq!(*created, 1, "{key:?}: one request creates the call");
        assert!(ids.iter().all(|id| id == &ids[0]), "{key:?}: every answer is that one call: {ids:?}");
    }
    let after_a = t.assert_stats_match_rows(&a).await;
    assert_eq!(after_a["total_calls"].as_i64(), before_a["total_calls"].as_i64().map(|n| n + 30));
    assert_eq!(after_a["pending_calls"], 30);
    t.assert_stats_match_rows(&b).await;
    t.assert_stats_match_rows(&done).await;

    // One batch straight through the store: a new call keeping the registered metadata, one with
    // its own, a number with a live call (not created), an unregistered number, a completed and
    // an unknown campaign. Each gets its own answer; the batch writes only what it should.
    end_all_calls(&t.store).await;
    let (a_id, done_id) = (a.parse().expect("uuid"), done.parse().expect("uuid"));
    let new = |cid: uuid::Uuid, n: &str, m: Option<Value>| dialer_store::NewCall {
        campaign_id: cid,
        phone_number: n.into(),
        metadata: m,
    };
    let (live, _) = t.store.create_call(a_id, "+15550001002", None).await.expect("a live call");
    let batch = [
        new(a_id, "+15550001000", None),
        new(a_id, "+15550001001", Some(json!({"own": true}))),
        new(a_id, "+15550001002", None),
        new(a_id, "+15559999999", None),
        new(done_id, "+15550003000", None),
        new(uuid::Uuid::now_v7(), "+15550001000", None),
    ];
    let before = t.assert_stats_match_rows(&a).await;
    let out = t.store.create_calls(&batch).await.expect("the batch runs");
    assert_eq!(out.len(), batch.len());
    let mut out = out.into_iter();
    let (first, created) = out.next().unwrap().expect("new call");
    assert!(created);
    assert_eq!((first.phone_number.as_str(), &first.metadata), ("+15550001000", &json!({})));
    let (own, created) = out.next().unwrap().expect("new call");
    assert!(created);
    assert_eq!(own.metadata, json!({"own": true}));
    let (again, created) = out.next().unwrap().expect("the live call");
    assert!(!created);
    assert_eq!(again.id, live.id);
    use dialer_store::StoreError;
    assert!(matches!(out.next().unwrap(), Err(StoreError::Invalid(f)) if f.field == "phone_number"));
    assert!(matches!(out.next().unwrap(), Err(StoreError::Conflict(_))));
    assert!(matches!(out.next().unwrap(), Err(StoreError::NotFound("campaign"))));
    let after = t.assert_stats_match_rows(&a).await;
    assert_eq!(after["total_calls"].as_i64(), before["total_calls"].as_i64().map(|n| n + 2));
    t.assert_stats_match_rows(&done).await;
}

/// Do-not-call lists over the API: JSON (one, many) and CSV, get and delete, the campaign's own
/// list, errors naming the field or line, POST /calls refused naming the list, and the preview
/// counting what the rules would do now.
async fn dnc_lists_and_preview(t: TestApp) {
    let c = t.create(seed_campaign("dnc")).await;
    let id = c["id"].as_str().expect("id").to_string();
    let (s, v) =
        t.post("/api/v1/dnc", json!({"phone_number": "+15555550001", "reason": "opt_out", "source": "ivr"})).await;
    assert_eq!((s, v["received"].as_u64(), v["announced"].as_bool()), (StatusCode::OK, Some(1), Some(true)), "{v}");
    let (s, v) = t.get("/api/v1/dnc/+15555550001").await;
    assert_eq!((s, v["list"].as_str(), v["reason"].as_str()), (StatusCode::OK, Some("global"), Some("opt_out")), "{v}");
    // POST /calls refuses the number, naming the list.
    let (s, v) = t.post("/api/v1/calls", json!({"campaign_id": id, "phone_number": "+15555550001"})).await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(v["error"]["field"], "phone_number");
    assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains("global do-not-call list")), "{v}");
    // The campaign's own list, as CSV.
    let csv = "phone_number,reason,source,expires_at\n+15555550002,asked,agent,2099-01-01T00:00:00Z\n";
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/v1/campaigns/{id}/dnc"))
        .header(header::CONTENT_TYPE, "text/csv")
        .body(Body::from(csv))
        .expect("request");
    let (s, v) = t.raw(req).await;
    assert_eq!((s, v["list"].as_str()), (StatusCode::OK, Some(id.as_str())), "{v}");
    let (s, v) = t.get(&format!("/api/v1/campaigns/{id}/dnc/+15555550002")).await;
    assert_eq!((s, v["expires_at"].as_str()), (StatusCode::OK, Some("2099-01-01T00:00:00Z")), "{v}");
    // The preview: both numbers skipped (dnc), nothing to dial.
    let (s, v) = t.get(&format!("/api/v1/campaigns/{id}/preview")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["pending_calls"].as_u64(), v["skipped_dnc"].as_u64(), v["dial_now"].as_u64()),
        (Some(2), Some(2), Some(0)),
        "{v}"
    );
    // Errors name the field or the line; never a 5xx.
    let (s, v) =
        t.post("/api/v1/dnc", json!({"entries": [{"phone_number": "+15555550003"}, {"phone_number": "555"}]})).await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(v["error"]["field"], "entries[1].phone_number");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/dnc")
        .header(header::CONTENT_TYPE, "text/csv")
        .body(Body::from("+15555550003\n5555,x,y,soon\n"))
        .expect("request");
    let (s, v) = t.raw(req).await;
    assert_error(s, &v, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(v["error"]["field"], "line 2.phone_number");
    let (s, v) = t.get("/api/v1/dnc/12345").await;
    assert_error(s, &v, StatusCode::BAD_REQUEST, "invalid_parameter");
    let (s, v) = t
        .post("/api/v1/campaigns/00000000-0000-7000-8000-000000000000/dnc", json!({"phone_number": "+15555550003"}))
        .await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    // Removed: the number may be called again.
    let (s, _) = t.req(Method::DELETE, "/api/v1/dnc/+15555550001", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = t.req(Method::DELETE, "/api/v1/dnc/+15555550001", None).await;
    assert_error(s, &v, StatusCode::NOT_FOUND, "not_found");
    let (s, v) = t.post("/api/v1/calls", json!({"campaign_id": id, "phone_number": "+15555550001"})).await;
    assert!(s == StatusCode::OK || s == StatusCode::CREATED, "{s}: {v}");
}

/// Runs each named `async fn(TestApp)` against the API on PostgreSQL and on SQLite (and the body
/// limit on both).
/// Every pending call says why it is not dialled and until when; the stats count them by reason.
/// (The reasons' order and each one's end are unit-tested in `dialer_domain::wait`; here, the
/// API shows them from the store's rows, whatever the hour: rules closed by blackout dates
/// around today, business hours on another day.)
async fn pending_calls_say_why_they_wait_and_until_when(t: TestApp) {
    use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
    let today = Utc::now().date_naive();
    let at = |tz: chrono_tz::Tz, days: i64, hour: u32| -> DateTime<Utc> {
        let d = today + Duration::days(days);
        tz.with_ymd_and_hms(d.year(), d.month(), d.day(), hour, 0, 0).single().expect("instant").with_timezone(&Utc)
    };
    let until = |v: &Value| v.as_str().map(|s| DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc));
    let blackout: Vec<String> = (-1..=1).map(|d| (today + Duration::days(d)).to_string()).collect();
    let c = t
        .create(json!({"name": "holds", "calling_rules": {"blackout_dates": blackout},
            "targets": [{"phone_number": "+12125550100"}, {"phone_number": "+13125550100"}]}))
        .await;
    let id = c["id"].as_str().expect("id");
    let calls = |page: &Value| page["calls"].as_array().expect("calls").clone();
    let (_, page) = t.get(&format!("/api/v1/campaigns/{id}/calls")).await;
    for call in calls(&page) {
        assert_eq!(call["hold"], json!({"reason": "campaign_not_running", "until": null}), "{call}");
    }
    let stats = t.assert_stats_match_rows(id).await;
    assert_eq!(stats["waiting"]["held"]["campaign_not_running"]["calls"], 2, "{stats}");
    assert_eq!(stats["waiting"]["due"], 0);

    assert_eq!(t.post(&format!("/api/v1/campaigns/{id}/start"), json!({})).await.0, StatusCode::OK);
    let (ny, chicago) = (at(chrono_tz::America::New_York, 2, 8), at(chrono_tz::America::Chicago, 2, 8));
    let (_, page) = t.get(&format!("/api/v1/campaigns/{id}/calls")).await;
    for call in calls(&page) {
        let want = if call["phone_number"] == "+12125550100" { ny } else { chicago };
        assert_eq!(call["hold"]["reason"], "blackout", "{call}");
        assert_eq!(until(&call["hold"]["until"]), Some(want), "the first window after the blackout days: {call}");
        let (_, one) = t.get(&format!("/api/v1/calls/{}", call["id"].as_str().expect("id"))).await;
        assert_eq!(one["hold"], call["hold"], "a call read alone says the same");
    }
    let stats = t.assert_stats_match_rows(id).await;
    let w = &stats["waiting"];
    assert_eq!((w["held"]["blackout"]["calls"].as_u64(), w["due"].as_u64()), (Some(2), Some(0)), "{w}");
    assert_eq!(until(&w["held"]["blackout"]["until"]), Some(ny));
    assert_eq!(until(&w["next_window_at"]), Some(ny));

    // Recipient rules off; business hours one hour a week, three days from now.
    let day = (today + Duration::days(3)).weekday().num_days_from_sunday();
    let c = t
        .create(json!({"name": "holds-hours", "calling_rules": {"enabled": false},
            "business_hours": [{"day_of_week": day, "start": "10:00", "end": "11:00"}],
            "time_zone": "UTC", "targets": [{"phone_number": "+15555550001"}]}))
        .await;
    let id = c["id"].as_str().expect("id");
    assert_eq!(t.post(&format!("/api/v1/campaigns/{id}/start"), json!({})).await.0, StatusCode::OK);
    let (_, page) = t.get(&format!("/api/v1/campaigns/{id}/calls")).await;
    let hold = &calls(&page)[0]["hold"];
    assert_eq!(hold["reason"], "business_hours", "{hold}");
    assert_eq!(until(&hold["until"]), Some(at(chrono_tz::UTC, 3, 10)));

    // Rules off, 24×7, running, under its cap: due, no hold.
    let c = t
        .create(json!({"name": "holds-due", "calling_rules": {"enabled": false}, "targets": [{"phone_number": "+15555550002"}]}))
        .await;
    let id = c["id"].as_str().expect("id");
    assert_eq!(t.post(&format!("/api/v1/campaigns/{id}/start"), json!({})).await.0, StatusCode::OK);
    let (_, page) = t.get(&format!("/api/v1/campaigns/{id}/calls")).await;
    assert!(calls(&page)[0].get("hold").is_none(), "{page}");
    let stats = t.assert_stats_match_rows(id).await;
    assert_eq!(stats["waiting"]["due"], 1, "{stats}");
}

macro_rules! both_apps {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(test_app(Backend::Postgres).await).await } )*
            #[tokio::test] async fn body_limit() { super::body_limit(Backend::Postgres).await }
        }
        mod sqlite {
            use super::*;
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(test_app(Backend::Sqlite).await).await } )*
            #[tokio::test] async fn body_limit() { super::body_limit(Backend::Sqlite).await }
        }
    };
}

both_apps!(
    smoke_sequence,
    pending_calls_say_why_they_wait_and_until_when,
    create_validation,
    names_are_unique_ignoring_case,
    list_paging,
    ids_and_routes,
    update_rules,
    state_machine,
    targets_only_registered,
    calls_endpoints,
    bulk_targets,
    health_reports_store_down,
    post_call_creates_after_the_last_ended,
    post_calls_concurrently_and_in_batches,
    duplicate_numbers_are_merged,
    dnc_lists_and_preview,
);

/// `MAX_CONCURRENT_CALLS` requests in flight: the next one is 429 `rate_limit_exceeded`,
/// with Retry-After; the daily usage cap answers 429 `usage_cap_exceeded`. Never a 5xx.
#[tokio::test]
async fn call_guard_answers_429() {
    let limits = dialer_limiter::LimitSettings { max_concurrent_calls: 1, daily_usage_cap: 2, ..Default::default() };
    let t = test_app(Backend::Sqlite).await;
    let guard = limits.api_guard();
    let router = dialer_control_plane::app_with_guard(&ApiSettings::default(), t.store.clone(), guard.clone());
    let c = t.create(seed_campaign("guard")).await;
    let body = json!({"campaign_id": c["id"], "phone_number": "+15555550001"}).to_string();
    let send = || {
        let router = router.clone();
        let body = body.clone();
        async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/api/v1/calls")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .expect("request");
            let resp = router.oneshot(req).await.expect("answer");
            let status = resp.status();
            let retry = resp.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_string);
            let bytes = resp.into_body().collect().await.expect("body").to_bytes();
            (status, retry, serde_json::from_slice::<Value>(&bytes).expect("json"))
        }
    };
    // One request in flight (held here): the next is refused.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let held = guard.try_enter(now).expect("permit");
    let (s, retry, v) = send().await;
    assert_error(s, &v, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded");
    assert_eq!(retry.as_deref(), Some("1"));
    drop(held);
    // The daily cap (2, one already used by the permit above).
    let (s, _, v) = send().await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, retry, v) = send().await;
    assert_error(s, &v, StatusCode::TOO_MANY_REQUESTS, "usage_cap_exceeded");
    assert!(retry.and_then(|r| r.parse::<u64>().ok()).is_some_and(|r| r > 0 && r <= 86_400));
}

/// Roles: a read key reads (and follows streams) and changes nothing; an operator key, given
/// to the server as its SHA-256 only, changes things.
#[tokio::test]
async fn a_read_key_reads_and_changes_nothing_and_a_hashed_operator_key_changes() {
    use sha2::Digest;
    let (reader, operator) = ("reader-key-0123456789abcdef", "operator-key-0123456789abcdef");
    let hashed: String = sha2::Sha256::digest(operator.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let api = ApiSettings {
        keys: vec![ApiKey(format!("read:{reader}")), ApiKey(format!("operator:sha256:{hashed}"))],
        ..Default::default()
    };
    let t = test_app_with(Backend::Sqlite, api).await;
    let req = |key: &str, method: Method, path: &str, body: Option<Value>| {
        let b = Request::builder().method(method).uri(path).header(header::AUTHORIZATION, format!("Bearer {key}"));
        match body {
            Some(v) => b.header(header::CONTENT_TYPE, "application/json").body(Body::from(v.to_string())),
            None => b.body(Body::empty()),
        }
        .expect("request")
    };
    let campaign = json!({"name": "roles", "targets": [{"phone_number": "+15555550100"}]});
    let (s, v) = t.raw(req(reader, Method::POST, "/api/v1/campaigns", Some(campaign.clone()))).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    assert_eq!(v["error"]["field"], "Authorization");
    let message = v["error"]["message"].as_str().expect("message");
    assert!(message.contains("read-only") && !message.contains(reader), "the key's id, never the key: {message}");
    let (s, v) = t.raw(req(reader, Method::GET, "/api/v1/campaigns", None)).await;
    assert_eq!((s, v["campaigns"].clone()), (StatusCode::OK, json!([])), "it reads; the POST wrote nothing");
    let (s, v) = t.raw(req(operator, Method::POST, "/api/v1/campaigns", Some(campaign))).await;
    assert_eq!(s, StatusCode::CREATED, "the operator key, known by its hash: {v}");
    let id = v["id"].as_str().expect("id");
    let (s, v) = t.raw(req(reader, Method::POST, &format!("/api/v1/campaigns/{id}/start"), None)).await;
    assert_error(s, &v, StatusCode::FORBIDDEN, "forbidden");
    let (s, v) = t.raw(req(reader, Method::GET, &format!("/api/v1/campaigns/{id}"), None)).await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("pending")), "{v}");
    // The audit log: the operator's changes under its key's id, a settings change with its
    // before and after; the refused requests changed nothing and are not there.
    let (s, v) =
        t.raw(req(operator, Method::PUT, &format!("/api/v1/campaigns/{id}"), Some(json!({"weight": 7})))).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let operator_id = &hashed[..12];
    let mut entries = Vec::new();
    for _ in 0..50 {
        let (s, v) = t.raw(req(reader, Method::GET, "/api/v1/audit", None)).await;
        assert_eq!(s, StatusCode::OK, "the reader reads the log: {v}");
        entries = v["entries"].as_array().cloned().unwrap_or_default();
        if entries.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let what: Vec<(String, String, u64)> = entries
        .iter()
        .map(|e| {
            (
                e["key_id"].as_str().unwrap_or("").into(),
                format!("{} {}", e["method"].as_str().unwrap_or(""), e["path"].as_str().unwrap_or("")),
                e["status"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        what,
        [
            (operator_id.to_string(), "POST /api/v1/campaigns".to_string(), 201),
            (operator_id.to_string(), format!("PUT /api/v1/campaigns/{id}"), 200)
        ],
        "{entries:?}"
    );
    assert_eq!((entries[1]["before"]["weight"].as_u64(), entries[1]["after"]["weight"].as_u64()), (Some(1), Some(7)));
    let text = serde_json::to_string(&entries).expect("json");
    assert!(!text.contains(operator) && !text.contains(reader), "no key in the log");
}

#[tokio::test]
async fn api_keys_guard_the_api_and_each_key_has_a_rate() {
    let key = "test-key-0123456789abcdef";
    let other = "second-key-0123456789abcdef";
    let api = ApiSettings {
        keys: vec![ApiKey(key.into()), ApiKey(other.into())],
        rate_limit_per_key: 5, // burst 10
        ..Default::default()
    };
    let t = test_app_with(Backend::Sqlite, api).await;
    let with = |auth: Option<&str>, path: &str| {
        let mut b = Request::builder().method(Method::GET).uri(path);
        if let Some(a) = auth {
            b = b.header(header::AUTHORIZATION, a);
        }
        b.body(Body::empty()).expect("request")
    };
    // No key, a wrong key, a wrong scheme: 401 naming the header, nothing served.
    for auth in [None, Some("Bearer not-a-key-0123456789abcdef"), Some(&format!("Basic {key}")[..])] {
        let resp = t.router.clone().oneshot(with(auth, "/api/v1/campaigns")).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer realm=\"dialer\"");
        let v: Value =
            serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes()).expect("json");
        assert_eq!(v["error"]["code"], "unauthorized");
        assert_eq!(v["error"]["field"], "Authorization");
    }
    // A POST without a key creates nothing.
    let (s, _) =
        t.post("/api/v1/campaigns", json!({"name": "nokey", "targets": [{"phone_number": "+15555550100"}]})).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Probes, scrapers and the spec stay open.
    for path in ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"] {
        let resp = t.router.clone().oneshot(with(None, path)).await.expect("answer");
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
    // The right key (scheme case-insensitive) is served until its bucket is empty: then 429 with
    // Retry-After, while the other key is still served.
    let (s, v) = t.raw(with(Some(&format!("bearer {key}")), "/api/v1/campaigns")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["campaigns"], json!([]), "the unauthenticated POST created nothing");
    let mut limited = None;
    for _ in 0..20 {
        let resp =
            t.router.clone().oneshot(with(Some(&format!("Bearer {key}")), "/api/v1/campaigns")).await.expect("a");
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::OK);
    }
    let resp = limited.expect("the key's rate is enforced");
    assert!(resp.headers().contains_key(header::RETRY_AFTER));
    let v: Value = serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes()).expect("json");
    assert_eq!(v["error"]["code"], "key_rate_limited");
    let (s, _) = t.raw(with(Some(&format!("Bearer {other}")), "/api/v1/campaigns")).await;
    assert_eq!(s, StatusCode::OK, "another key has its own bucket");
    // The spec documents the scheme and the 401.
    let (_, spec) = t.get("/api/v1/openapi.json").await;
    assert_eq!(spec["components"]["securitySchemes"]["api_key"]["scheme"], "bearer");
    assert!(spec["paths"]["/api/v1/campaigns"]["get"]["responses"]["401"].is_object());
    assert!(spec["paths"]["/healthz"]["get"]["security"].is_null());
}

/// `api.campaign_cache_ms`: GET a campaign is served from memory within the delay (a change
/// made behind the API's back shows only after it), and a write through the API is seen at once.
#[tokio::test]
async fn campaign_reads_are_cached_and_writes_through_the_api_are_seen_at_once() {
    let api = ApiSettings { campaign_cache: std::time::Duration::from_secs(60), ..Default::default() };
    let t = test_app_with(Backend::Sqlite, api).await;
    let c = t.create(seed_campaign("cached")).await;
    let id = c["id"].as_str().expect("id").to_string();
    let (s, v) = t.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!((s, v["description"].as_str()), (StatusCode::OK, Some("Sample outbound campaign")));
    // Another process changes the row: the cached read stands (within the delay).
    let dialer_store::Pool::Sqlite(p) = t.store.pool() else { unreachable!() };
    sqlx::query("UPDATE campaigns SET description = 'changed elsewhere'").execute(p).await.expect("update");
    let (_, v) = t.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(v["description"], "Sample outbound campaign", "served from memory");
    // A write through this API drops the entry: the next read is fresh.
    let (s, _) = t.req(Method::PUT, &format!("/api/v1/campaigns/{id}"), Some(json!({"max_concurrent_calls": 7}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!((v["description"].as_str(), v["max_concurrent_calls"].as_u64()), (Some("changed elsewhere"), Some(7)));
    let (s, _) = t.post(&format!("/api/v1/campaigns/{id}/start"), json!(null)).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = t.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(v["status"], "in_progress");
    // Off: every read goes to the store.
    let api = ApiSettings { campaign_cache: std::time::Duration::ZERO, ..Default::default() };
    let t2 = TestApp { router: app(&api, t.store.clone()), store: t.store.clone(), _dir: None };
    sqlx::query("UPDATE campaigns SET description = 'again'").execute(p).await.expect("update");
    let (_, v) = t2.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(v["description"], "again");
}
