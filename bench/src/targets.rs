//! `bench targets`: bulk target registration through the API handlers (in process, so the
//! figure is JSON parsing + validation + store, without the HTTP socket), on a durable PostgreSQL.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use dialer_control_plane::{ApiSettings, Store, app};
use dialer_store::StoreSettings;
use http_body_util::BodyExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tower::ServiceExt;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Targets to register.
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Targets per POST /targets request when re-queueing.
    #[arg(long, default_value_t = 10_000)]
    chunk: usize,
    #[command(flatten)]
    db: crate::StoreChoice,
    #[arg(long)]
    json: Option<PathBuf>,
}

async fn send(router: &axum::Router, method: Method, path: &str, body: String) -> Result<(StatusCode, Value)> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))?;
    let resp = router.clone().oneshot(req).await?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

fn number(i: usize) -> String {
    format!("+1{:010}", 2_000_000_000 + i)
}

pub async fn run(a: Args) -> Result<()> {
    if a.count == 0 || a.chunk == 0 {
        bail!("--count and --chunk must be at least 1");
    }
    let (url, _tmp) = a.db.database()?;
    let api =
        ApiSettings { max_body_bytes: 1 << 30, max_targets_per_request: a.count.max(a.chunk), ..Default::default() };
    let store = Store::open(&url, &StoreSettings::default()).await.context("opening the store")?;
    let router = app(&api, store.clone());

    let targets: Vec<Value> =
        (0..a.count).map(|i| json!({"phone_number": number(i), "metadata": {"row": i}})).collect();
    let body = json!({"name": format!("bench-targets-{}", std::process::id()), "targets": targets}).to_string();
    println!(
        "creating a campaign with {} targets in one request ({:.1} MB of JSON) on {}…",
        a.count,
        body.len() as f64 / 1e6,
        store.kind().as_str()
    );
    // What the handler does before the store (parse, validate, merge duplicates), timed alone.
    let t = Instant::now();
    let parsed: dialer_api::campaigns::CreateCampaignRequest = serde_json::from_str(&body)?;
    let validated = parsed.validate(a.count).map_err(|e| anyhow::anyhow!("{e}"))?;
    let parse_s = t.elapsed().as_secs_f64();
    drop((parsed, validated));
    let t0 = Instant::now();
    let (s, c) = send(&router, Method::POST, "/api/v1/campaigns", body).await?;
    let create_s = t0.elapsed().as_secs_f64();
    if s != StatusCode::CREATED {
        bail!("create answered {s}: {c}");
    }
    let id = c["id"].as_str().context("no id")?.to_string();

    // Finish every call (as the recorder would) so that re-queueing creates new calls.
    finish_all(&store).await?;
    let bar = ProgressBar::new(a.count as u64).with_style(
        ProgressStyle::with_template("re-queue {bar:40} {pos}/{len} targets {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let t1 = Instant::now();
    let mut queued = 0u64;
    for start in (0..a.count).step_by(a.chunk) {
        let end = (start + a.chunk).min(a.count);
        let chunk: Vec<Value> = (start..end).map(|i| json!({"phone_number": number(i)})).collect();
        let (s, v) = send(
            &router,
            Method::POST,
            &format!("/api/v1/campaigns/{id}/targets"),
            json!({"targets": chunk}).to_string(),
        )
        .await?;
        if s != StatusCode::OK {
            bail!("targets answered {s}: {v}");
        }
        queued += v["queued"].as_u64().unwrap_or(0);
        bar.inc((end - start) as u64);
    }
    bar.finish_and_clear();
    let requeue_s = t1.elapsed().as_secs_f64();
    if queued != a.count as u64 {
        bail!("re-queued {queued} of {} targets", a.count);
    }
    let stats = store.stats(id.parse()?).await?;
    let recount = store.recount_stats(id.parse()?).await?;
    if stats != recount {
        bail!("stats {stats:?} differ from the rows {recount:?}");
    }

    let out = json!({
        "scenario": "targets",
        "settings": {"count": a.count, "chunk": a.chunk, "store": store.kind().as_str()},
        "cores": crate::cores(),
        "duration_s": create_s + requeue_s,
        "create_seconds": create_s,
        "parse_validate_seconds": parse_s,
        "targets_per_sec": a.count as f64 / create_s,
        "requeue_seconds": requeue_s,
        "requeue_targets_per_sec": a.count as f64 / requeue_s,
        "total_calls": stats.total_calls,
    });
    println!("{:<34} {:>12}", "figure", "value");
    println!("{:<34} {:>12}", "targets", a.count);
    println!("{:<34} {:>12.2}", "create (one request), s", create_s);
    println!("{:<34} {:>12.2}", "  of which parse + validate, s", parse_s);
    println!("{:<34} {:>12.0}", "targets_per_sec (create)", a.count as f64 / create_s);
    println!("{:<34} {:>12.2}", format!("re-queue (chunks of {}), s", a.chunk), requeue_s);
    println!("{:<34} {:>12.0}", "targets_per_sec (re-queue)", a.count as f64 / requeue_s);
    println!("{:<34} {:>12}", "cores (nproc)", crate::cores());
    crate::write_json(a.json.as_deref(), &out)?;
    store.close().await;
    Ok(())
}

/// Ends every call (as the recorder would), so re-queueing or POST /calls creates new ones.
pub async fn finish_all(store: &Store) -> Result<()> {
    let q1 = "UPDATE calls SET status = 'completed', attempt_count = 1";
    let q2 = "UPDATE campaign_stats SET completed_calls = total_calls, pending_calls = 0, attempts_total = total_calls";
    match store.pool() {
        dialer_store::Pool::Postgres(p) => {
            sqlx::query(q1).execute(p).await?;
            sqlx::query(q2).execute(p).await?;
        }
        dialer_store::Pool::Sqlite(p) => {
            sqlx::query(q1).execute(p).await?;
            sqlx::query(q2).execute(p).await?;
        }
    }
    Ok(())
}
