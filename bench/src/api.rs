//! `bench api`: the control-plane REST API under concurrent load over real HTTP/1.1 keep-alive
//! connections on loopback. Phases: `GET /api/v1/campaigns/{id}` and `POST /api/v1/calls` (each
//! a new call of a registered target, spread over several campaigns). Closed loop (`--rate 0`:
//! every connection sends its next request when the last one is answered) or open loop at a
//! fixed total rate, where latency is measured from each request's *intended* send time, so a
//! stall is charged to every request it delays (no coordinated omission). The warm-up is not
//! counted. The server is this process's own (the real router over the harness's PostgreSQL, or
//! `--url`), or any running control plane with `--target`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use dialer_control_plane::ApiSettings;
use dialer_store::{Store, StoreSettings};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::net::TcpStream;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Phases to run, in order: get (GET a campaign), post (POST /calls).
    #[arg(long, value_delimiter = ',', default_value = "get,post")]
    phases: Vec<String>,
    /// Open HTTP connections (each sends one request at a time).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time per phase.
    #[arg(long, default_value = "10s", value_parser = dialer_domain::duration::parse)]
    duration: Duration,
    /// Warm-up per phase, not counted.
    #[arg(long, default_value = "2s", value_parser = dialer_domain::duration::parse)]
    warmup: Duration,
    /// Requests per second in all (open loop); 0 = closed loop, as fast as answered.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Campaigns the registered targets are spread over.
    #[arg(long, default_value_t = 16)]
    campaigns: usize,
    /// Registered targets in all (each POST /calls uses a new one while they last).
    #[arg(long, default_value_t = 100_000)]
    targets: usize,
    /// postgres or sqlite (a temp file), for the in-process server.
    #[arg(long, default_value = "postgres")]
    store: String,
    /// Database URL instead of a harness-started PostgreSQL.
    #[arg(long)]
    url: Option<String>,
    /// PostgreSQL without fsync, synchronous commit and full-page writes: faster, not what
    /// operators run.
    #[arg(long)]
    fast_postgres: bool,
    /// Base URL of a running control plane (e.g. http://127.0.0.1:8080) instead of our own.
    #[arg(long)]
    target: Option<String>,
    /// API key for --target (sent as `Authorization: Bearer`).
    #[arg(long, env = "DIALER_API_KEY")]
    api_key: Option<String>,
    #[arg(long)]
    json: Option<PathBuf>,
    /// Latency plot (SVG); default: next to --json.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    auth: Option<String>,
}

impl Conn {
    pub(crate) async fn open(addr: &str, auth: Option<String>) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Conn { sender, host: addr.to_string(), auth })
    }

    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, Bytes)> {
        let mut b = Request::builder().method(method).uri(path).header(hyper::header::HOST, &self.host);
        if let Some(a) = &self.auth {
            b = b.header(hyper::header::AUTHORIZATION, a);
        }
        let req = match body {
            Some(s) => b.header(hyper::header::CONTENT_TYPE, "application/json").body(Full::new(Bytes::from(s)))?,
            None => b.body(Full::new(Bytes::new()))?,
        };
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

/// What one phase measured.
struct Phase {
    name: &'static str,
    hist: Histogram<u64>,
    ok: u64,
    created: u64,
    rejected_429: u64,
    errors: u64,
    seconds: f64,
}

impl Phase {
    fn rps(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
}

fn number(i: usize) -> String {
    format!("+1{:010}", 3_000_000_000 + i)
}

pub async fn run(a: Args) -> Result<()> {
    if a.connections == 0 || a.campaigns == 0 || a.targets < a.campaigns {
        bail!("--connections and --campaigns must be at least 1, --targets at least --campaigns");
    }
    for p in &a.phases {
        if !matches!(p.as_str(), "get" | "post") {
            bail!("--phases: {p:?} is not a phase (get, post)");
        }
    }
    let (addr, own_store, _tmp) = server(&a).await?;
    let auth = a.api_key.as_ref().map(|k| format!("Bearer {k}"));
    let (campaigns, per) = create_campaigns(&a, &addr, &auth).await?;
    // Creating a campaign opens a call per target; end them (as the recorder would) so each
    // POST /calls creates a new call. Only possible on our own store.
    if let Some(store) = &own_store {
        crate::targets::finish_all(store).await?;
    }
    let mut phases = Vec::new();
    for p in &a.phases {
        let phase = match p.as_str() {
            "get" => run_phase(&a, &addr, &auth, "get_campaign", &campaigns, per).await?,
            _ => run_phase(&a, &addr, &auth, "post_calls", &campaigns, per).await?,
        };
        phases.push(phase);
    }
    print_phases(&a, &phases);
    crate::write_json(a.json.as_deref(), &phases_json(&a, &phases))?;
    if let Some(p) = crate::plot::path_for(a.plot.as_deref(), a.json.as_deref()) {
        let series: Vec<(&str, &Histogram<u64>)> = phases.iter().map(|p| (p.name, &p.hist)).collect();
        crate::plot::percentiles(&p, &format!("bench api, {} connections, {}", a.connections, mode(a.rate)), &series)?;
    }
    if phases.iter().any(|p| p.errors > 0) {
        bail!("some requests failed (see the errors column)");
    }
    Ok(())
}

/// The server: ours on a loopback port (with its store), or the given one.
async fn server(a: &Args) -> Result<(String, Option<dialer_control_plane::Store>, Option<tempfile::TempDir>)> {
    if let Some(t) = &a.target {
        return Ok((t.trim_start_matches("http://").trim_end_matches('/').to_string(), None, None));
    }
    let (url, tmp) = crate::store_url(&a.store, a.url.as_ref(), a.fast_postgres)?;
    let api = ApiSettings { max_body_bytes: 1 << 30, max_targets_per_request: a.targets, ..Default::default() };
    let mut limits = dialer_limiter::LimitSettings::default();
    limits.max_concurrent_calls = limits.max_concurrent_calls.max(a.connections as u32 * 2);
    let mut db = StoreSettings::default();
    db.max_connections = db.max_connections.max(32);
    let store = Store::open(&url, &db).await.context("opening the store")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let router = dialer_control_plane::app_with_guard(&api, store.clone(), limits.api_guard());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((addr, Some(store), tmp))
}

/// Campaigns with their registered targets (`--targets` split evenly); their ids and the
/// targets of each.
async fn create_campaigns(a: &Args, addr: &str, auth: &Option<String>) -> Result<(Vec<String>, usize)> {
    let mut setup = Conn::open(addr, auth.clone()).await?;
    let per = a.targets / a.campaigns;
    let mut campaigns = Vec::new();
    let pb = ProgressBar::new(a.campaigns as u64).with_style(
        ProgressStyle::with_template("setup {bar:40} {pos}/{len} campaigns")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    for c in 0..a.campaigns {
        let targets: Vec<Value> = (c * per..(c + 1) * per).map(|i| json!({"phone_number": number(i)})).collect();
        let body = json!({"name": format!("bench-api-{}-{c}", std::process::id()), "targets": targets}).to_string();
        let (s, b) = setup.send(Method::POST, "/api/v1/campaigns", Some(body)).await?;
        if s != StatusCode::CREATED {
            bail!("creating a campaign answered {s}: {}", String::from_utf8_lossy(&b));
        }
        let v: Value = serde_json::from_slice(&b)?;
        campaigns.push(v["id"].as_str().context("campaign without id")?.to_string());
        pb.inc(1);
    }
    pb.finish_and_clear();
    Ok((campaigns, per))
}

fn print_phases(a: &Args, phases: &[Phase]) {
    println!(
        "{:<14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "phase", "req/s", "p50 µs", "p90 µs", "p99 µs", "p99.9 µs", "max µs", "429s", "errors"
    );
    for ph in phases {
        let h = &ph.hist;
        println!(
            "{:<14} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
            ph.name,
            ph.rps(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            ph.rejected_429,
            ph.errors
        );
    }
    println!("cores (nproc) {}, connections {}, {}", crate::cores(), a.connections, mode(a.rate));
}

fn phases_json(a: &Args, phases: &[Phase]) -> Value {
    let mut out = json!({
        "scenario": "api",
        "settings": {"connections": a.connections, "rate": a.rate, "campaigns": a.campaigns, "targets": a.targets,
                     "warmup_s": a.warmup.as_secs_f64(), "store": if a.target.is_some() { "external".to_string() } else { a.store.clone() },
                     "server": if a.target.is_some() { "external" } else { "in-process, loopback HTTP" }},
        "duration_s": phases.iter().map(|p| p.seconds).sum::<f64>(),
        "cores": crate::cores(),
    });
    for ph in phases {
        let h = &ph.hist;
        let o = out.as_object_mut().expect("object");
        o.insert(format!("{}_rps", ph.name), json!(ph.rps()));
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            o.insert(format!("{}_{k}_us", ph.name), json!(h.value_at_quantile(q)));
        }
        o.insert(format!("{}_max_us", ph.name), json!(h.max()));
        o.insert(format!("{}_429", ph.name), json!(ph.rejected_429));
        o.insert(format!("{}_errors", ph.name), json!(ph.errors));
        if ph.name == "post_calls" {
            o.insert("post_calls_created".into(), json!(ph.created));
        }
    }
    // The figures every scenario has, from the first phase.
    if let Some(ph) = phases.first() {
        let o = out.as_object_mut().expect("object");
        o.insert("ops_per_sec".into(), json!(ph.rps()));
        for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
            o.insert(format!("{k}_us"), json!(ph.hist.value_at_quantile(q)));
        }
        o.insert("max_us".into(), json!(ph.hist.max()));
    }
    out
}

fn mode(rate: u64) -> String {
    if rate == 0 { "closed loop".into() } else { format!("open loop at {rate} req/s") }
}

/// When one connection sends: from `start` (counted from `count_from`) until `end`, every
/// `interval` after its `offset` (open loop) or back to back (closed loop).
struct Plan {
    start: Instant,
    count_from: Instant,
    end: Instant,
    interval: Option<Duration>,
    offset: Duration,
    name: &'static str,
    per: usize,
}

/// One connection's requests; its latency histogram (from the intended send time), successes,
/// calls created, 429s and errors.
async fn connection(
    mut conn: Conn,
    plan: Plan,
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    campaigns: std::sync::Arc<Vec<String>>,
) -> (Histogram<u64>, u64, u64, u64, u64) {
    let Plan { start, count_from, end, interval, offset, name, per } = plan;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let (mut ok, mut created, mut r429, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut k: u32 = 0;
    loop {
        let intended = match interval {
            Some(iv) => start + offset + iv * k,
            None => Instant::now().max(start),
        };
        if intended >= end {
            break;
        }
        let now = Instant::now();
        if intended > now {
            tokio::time::sleep_until(intended.into()).await;
        }
        k += 1;
        let j = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let r = if name == "get_campaign" {
            let id = &campaigns[j % campaigns.len()];
            conn.send(Method::GET, &format!("/api/v1/campaigns/{id}"), None).await
        } else {
            // Consecutive requests go to different campaigns, as independent clients'
            // would (one campaign's calls share its stats row).
            let c = j % campaigns.len();
            let t = c * per + (j / campaigns.len()) % per;
            let body = json!({"campaign_id": campaigns[c], "phone_number": number(t)}).to_string();
            conn.send(Method::POST, "/api/v1/calls", Some(body)).await
        };
        let done = Instant::now();
        let counted = intended >= count_from;
        match r {
            Ok((s, _)) if s.is_success() => {
                if counted {
                    ok += 1;
                    created += u64::from(s == StatusCode::CREATED);
                    let _ = hist.record((done - intended).as_micros().max(1) as u64);
                }
            }
            Ok((s, _)) if s == StatusCode::TOO_MANY_REQUESTS => r429 += u64::from(counted),
            Ok((s, b)) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("{name}: {s}: {}", String::from_utf8_lossy(&b));
                }
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("{name}: {e:#}");
                }
                break;
            }
        }
    }
    (hist, ok, created, r429, errors)
}

async fn run_phase(
    a: &Args,
    addr: &str,
    auth: &Option<String>,
    name: &'static str,
    campaigns: &[String],
    per: usize,
) -> Result<Phase> {
    let n = a.connections;
    let start = Instant::now() + Duration::from_millis(50);
    let count_from = start + a.warmup;
    let end = count_from + a.duration;
    // Each POST uses the next registered number (shared counter), GETs cycle over campaigns.
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let campaigns = std::sync::Arc::new(campaigns.to_vec());
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let conn = Conn::open(addr, auth.clone()).await?;
        let (next, campaigns) = (next.clone(), campaigns.clone());
        // Open loop: connection i sends at start + i/rate + k·n/rate.
        let interval = (a.rate > 0).then(|| Duration::from_secs_f64(n as f64 / a.rate as f64));
        let offset = interval.map_or(Duration::ZERO, |iv| iv.mul_f64(i as f64 / n as f64));
        let plan = Plan { start, count_from, end, interval, offset, name, per };
        tasks.push(tokio::spawn(connection(conn, plan, next, campaigns)));
    }
    let pb = ProgressBar::new((a.warmup + a.duration).as_secs().max(1)).with_style(
        ProgressStyle::with_template(&format!(
            "{name} {{bar:40}} {{pos}}/{{len}} s (first {} s warm-up)",
            a.warmup.as_secs()
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pb.set_position(Instant::now().saturating_duration_since(start).as_secs());
    }
    let mut phase = Phase {
        name,
        hist: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        ok: 0,
        created: 0,
        rejected_429: 0,
        errors: 0,
        seconds: a.duration.as_secs_f64(),
    };
    for t in tasks {
        let (h, ok, created, r429, errors) = t.await?;
        phase.hist.add(&h)?;
        phase.ok += ok;
        phase.created += created;
        phase.rejected_429 += r429;
        phase.errors += errors;
    }
    pb.finish_and_clear();
    Ok(phase)
}
