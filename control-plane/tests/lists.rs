//! Target lists as CSV through the API, on both stores: a campaign created from a list
//! (multipart), numbers queued again from a list (`text/csv`), each rejected row reported by its
//! line, and a list that is unreadable or has no usable row writing nothing.

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use dialer_control_plane::{ApiSettings, Store, app};
use dialer_testkit::fixtures::Backend;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

struct TestApp {
    router: Router,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

const BOUNDARY: &str = "list-boundary-7d1f";

impl TestApp {
    async fn new(backend: Backend) -> TestApp {
        let (store, dir) = dialer_testkit::fixtures::store(backend).await;
        TestApp { router: app(&ApiSettings::default(), store.clone()), store, _dir: dir }
    }

    async fn send(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(if body.is_empty() { Method::GET } else { Method::POST })
            .uri(path)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("request");
        let resp = self.router.clone().oneshot(req).await.expect("router answers");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{status}: {bytes:?}")))
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.send(path, "application/json", Vec::new()).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// `POST /api/v1/campaigns` as a form: the parts in order, each `(name, file?, bytes)`.
    async fn upload(&self, query: &str, parts: &[(&str, bool, &[u8])]) -> (StatusCode, Value) {
        let mut body = Vec::new();
        for (name, file, bytes) in parts {
            let filename = if *file { "; filename=\"list.csv\"\r\nContent-Type: text/csv" } else { "" };
            body.extend(
                format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"{filename}\r\n\r\n").bytes(),
            );
            body.extend_from_slice(bytes);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{BOUNDARY}--\r\n").bytes());
        self.send(&format!("/api/v1/campaigns{query}"), &format!("multipart/form-data; boundary={BOUNDARY}"), body)
            .await
    }

    /// The campaign's calls: number → metadata.
    async fn calls(&self, id: &str) -> std::collections::BTreeMap<String, Value> {
        let page = self.get(&format!("/api/v1/campaigns/{id}/calls?limit=1000")).await;
        let calls = page["calls"].as_array().expect("calls");
        calls.iter().map(|c| (c["phone_number"].as_str().expect("number").to_string(), c["metadata"].clone())).collect()
    }

    /// Rows in `table`, on either store.
    async fn rows(&self, table: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        let n = match self.store.pool() {
            dialer_store::Pool::Postgres(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
            dialer_store::Pool::Sqlite(p) => sqlx::query_scalar(&sql).fetch_one(p).await,
        };
        n.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    async fn campaign_named(&self, name: &str) -> Option<Value> {
        let list = self.get("/api/v1/campaigns?limit=1000").await;
        list["campaigns"].as_array().expect("campaigns").iter().find(|c| c["name"] == name).cloned()
    }
}

fn settings(name: &str) -> Vec<u8> {
    json!({"name": name, "max_concurrent_calls": 5, "retry_policy": {"max_attempts": 2}}).to_string().into_bytes()
}

async fn a_campaign_is_created_from_a_spreadsheet_export_and_each_bad_row_is_reported(t: TestApp) {
    // A spreadsheet's export: BOM, CRLF, semicolons, a quoted field holding the separator and
    // a line break, national numbers, a repeat, and rows that cannot be numbers.
    let list = "\u{feff}Name;Mobile;Postal Code;Notes\r\n\
                Ann;(415) 555-0101;94103;\"VIP; call after 5\r\nask for Ann\"\r\n\
                Bob;1-212-555-0102;10001;\r\n\
                Cat;call me;;\r\n\
                Dan;415.555.0101;;duplicate of Ann\r\n\
                Eve;+44 20 7183 8750;;\r\n\
                Fay;555 0103;;\r\n";
    let (s, v) = t.upload("", &[("campaign", false, &settings("from-csv")), ("targets", true, list.as_bytes())]).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let import = &v["import"];
    assert_eq!(import["delimiter"], ";");
    assert_eq!(import["phone_column"], "Mobile");
    assert_eq!((import["rows"].as_u64(), import["accepted"].as_u64()), (Some(6), Some(3)), "{import}");
    assert_eq!((import["duplicates_merged"].as_u64(), import["rejected_total"].as_u64()), (Some(1), Some(2)));
    let rejected: Vec<(u64, &str)> = import["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| (r["line"].as_u64().expect("line"), r["column"].as_str().expect("column")))
        .collect();
    assert_eq!(rejected, [(5, "Mobile"), (8, "Mobile")], "line 2's record spans two lines: {import}");
    let id = v["id"].as_str().expect("id");
    assert_eq!(v["target_count"], 3);
    assert_eq!(v["status"], "pending");
    let calls = t.calls(id).await;
    assert_eq!(calls.keys().collect::<Vec<_>>(), ["+12125550102", "+14155550101", "+442071838750"]);
    assert_eq!(
        calls["+14155550101"],
        json!({"Name": "Ann", "Postal Code": "94103", "Notes": "VIP; call after 5\r\nask for Ann"}),
        "the first listing's columns, not the duplicate's"
    );
    assert_eq!(calls["+442071838750"], json!({"Name": "Eve"}));
    let mut stats = t.get(&format!("/api/v1/campaigns/{id}/stats")).await;
    stats.as_object_mut().expect("object").remove("waiting");
    let recount = t.store.recount_stats(id.parse().expect("uuid")).await.expect("recount");
    assert_eq!(stats, serde_json::to_value(&recount).expect("json"));
    assert_eq!(stats["pending_calls"], 3, "{stats}");
}

async fn a_list_longer_than_a_batch_lands_whole_with_the_named_column_and_region(t: TestApp) {
    let mut list = String::from("id,cell,postal_code\n");
    for i in 0..25_001u32 {
        list.push_str(&format!("{i},020 7{:03} {:04},SW1A\n", i / 10_000, i % 10_000));
    }
    let parts = [
        ("campaign", false, &settings("long-list")[..]),
        ("region", false, &b"GB"[..]),
        ("targets", true, list.as_bytes()),
    ];
    let (s, v) = t.upload("?phone_column=CELL", &parts).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["import"]["accepted"], 25_001, "{}", v["import"]);
    assert_eq!(v["target_count"], 25_001);
    let id = v["id"].as_str().expect("id");
    let stats = t.get(&format!("/api/v1/campaigns/{id}/stats")).await;
    assert_eq!(stats["pending_calls"], 25_001, "{stats}");
    let (mut numbers, mut token) = (std::collections::HashMap::new(), String::new());
    loop {
        let page = t.get(&format!("/api/v1/campaigns/{id}/calls?limit=1000{token}")).await;
        for c in page["calls"].as_array().expect("calls") {
            numbers.insert(c["phone_number"].as_str().expect("number").to_string(), c["metadata"].clone());
        }
        match page["next_page_token"].as_str() {
            Some(next) => token = format!("&page_token={next}"),
            None => break,
        }
    }
    assert_eq!(numbers.len(), 25_001);
    let last = &numbers["+442070025000"];
    assert_eq!(last, &json!({"id": "25000", "postal_code": "SW1A"}), "the last batch's last row");
}

async fn a_list_with_no_usable_row_or_unreadable_writes_nothing(t: TestApp) {
    let bad = b"phone\nnope\n12\n";
    let (s, v) = t.upload("", &[("campaign", false, &settings("all-bad")), ("targets", true, bad)]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "targets");
    assert_eq!(v["import"]["rejected_total"], 2);
    assert_eq!(v["import"]["rejected"][1]["line"], 3);
    assert!(t.campaign_named("all-bad").await.is_none(), "nothing written");

    // Latin-1 after good rows (past a batch, so some were handed to the store): refused, named.
    let mut latin1 = b"phone,name\n".to_vec();
    for i in 0..12_000 {
        latin1.extend(format!("+1415{:07},x\n", 2_000_000 + i).bytes());
    }
    latin1.extend(b"+14155559999,Jos\xe9\n");
    let (s, v) = t.upload("", &[("campaign", false, &settings("latin1")), ("targets", true, &latin1)]).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "targets");
    assert!(v["error"]["message"].as_str().expect("message").contains("line 12002 is not UTF-8"), "{v}");
    assert!(t.campaign_named("latin1").await.is_none(), "the batches written are rolled back");
    // PostgreSQL loads each batch in a transaction of its own (the campaign's row last): the
    // batches committed before the bad line are deleted again.
    assert_eq!(t.rows("campaign_targets").await + t.rows("calls").await + t.rows("target_loads").await, 0);

    for (parts, field) in [
        (vec![("targets", true, &b"phone\n+14155550101\n"[..])], "campaign"),
        (vec![("campaign", false, &settings("no-list")[..])], "targets"),
        (
            vec![
                ("campaign", false, &b"{\"name\": \"x\", \"max_concurrent_calls\": 0}"[..]),
                ("targets", true, b"phone\n"),
            ],
            "campaign.max_concurrent_calls",
        ),
        (
            vec![("campaign", false, &b"{\"name\": \"x\", \"targets\": []}"[..]), ("targets", true, b"phone\n")],
            "campaign.targets",
        ),
        (vec![("campaign", false, &settings("x")[..]), ("targets", true, b"name,email\na,b\n")], "phone_column"),
        (vec![("campaign", false, &settings("x")[..]), ("extra", false, b"1")], "extra"),
    ] {
        let (s, v) = t.upload("", &parts).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (s, v) = t.upload("?region=ZZ", &[("campaign", false, &settings("x")), ("targets", true, b"phone\n")]).await;
    assert_eq!((s, &v["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("region")), "{v}");
    assert!(t.campaign_named("x").await.is_none());
}

async fn registered_numbers_are_queued_again_from_a_list_and_others_rejected_by_line(t: TestApp) {
    let (s, v) = t
        .upload(
            "",
            &[
                ("campaign", false, &settings("requeue")),
                ("targets", true, b"phone,tier\n+14155550101,gold\n+14155550102,\n"),
            ],
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    let path = format!("/api/v1/campaigns/{id}/targets");
    let list = b"phone,tier\n(415) 555-0101,\n415 555 0199,silver\nnope,\n415-555-0102,bronze\n";
    let (s, v) = t.send(&path, "text/csv", list.to_vec()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!((v["queued"].as_u64(), v["already_queued"].as_u64()), (Some(0), Some(2)), "both still pending: {v}");
    let rejected: Vec<u64> = v["import"]["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| r["line"].as_u64().expect("line"))
        .collect();
    assert_eq!(rejected, [3, 4], "{v}");
    let reason = v["import"]["rejected"][0]["reason"].as_str().expect("reason");
    assert!(reason.contains("not registered") && !reason.contains("5550199"), "masked: {reason}");
    assert_eq!(v["import"]["accepted"], 2);

    let (s, v) = t.send(&path, "text/csv", b"phone\n+14155550199\n".to_vec()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["import"]["rejected_total"], 1);
    let (s, v) = t
        .send(
            "/api/v1/campaigns/00000000-0000-7000-8000-000000000000/targets",
            "text/csv",
            b"phone\n+14155550101\n".to_vec(),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::TestApp::new(super::Backend::Postgres).await).await } )*
        }
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $name() { super::$name(super::TestApp::new(super::Backend::Sqlite).await).await } )*
        }
    };
}

both_stores!(
    a_campaign_is_created_from_a_spreadsheet_export_and_each_bad_row_is_reported,
    a_list_longer_than_a_batch_lands_whole_with_the_named_column_and_region,
    a_list_with_no_usable_row_or_unreadable_writes_nothing,
    registered_numbers_are_queued_again_from_a_list_and_others_rejected_by_line,
);
