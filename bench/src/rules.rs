//! `bench rules`: what the recipient's calling rules cost at scale. A campaign of N targets spread
//! over every NANP area code (so over every US/Canadian zone) is claimed at an instant when only
//! some zones are open, with the lawful defaults and a do-not-call list of M numbers imported as
//! CSV through the API handlers (in process: CSV parsing + checks + store, without the socket).
//! Reported: the import rate, the skip scan of the campaign's zones, and each claim's latency
//! (zones + claim + screening) beside the same claims on a campaign 20 times smaller: a claim
//! that costs what it takes, not what the campaign holds, takes the same time on both.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_control_plane::{ApiSettings, Store, app};
use dialer_domain::campaign::CampaignAction;
use dialer_domain::rules::CallingRules;
use dialer_store::StoreSettings;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const AREA_CODES: &str = include_str!("../../domain/data/nanp_regions.txt");

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Targets of the large campaign (the small one has 5 % of them).
    #[arg(long, default_value_t = 1_000_000)]
    targets: usize,
    /// Numbers on the global do-not-call list (every 10th target among them).
    #[arg(long, default_value_t = 1_000_000)]
    dnc: usize,
    /// Calls per claim (the scheduler's batch).
    #[arg(long, default_value_t = 1000)]
    claim: usize,
    /// Claims measured per campaign.
    #[arg(long, default_value_t = 10)]
    claims: usize,
    /// The instant of the claims (RFC 3339): by default 14:30Z on a Monday in November, when
    /// Eastern and Central are open and Mountain, Pacific, Alaska and Hawaii are not.
    #[arg(long, default_value = "2026-11-23T14:30:00Z")]
    at: String,
    #[command(flatten)]
    db: crate::StoreChoice,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// The `i`-th number: area codes in turn, so every zone gets its share.
fn number(i: usize) -> String {
    static CODES: std::sync::LazyLock<Vec<&str>> =
        std::sync::LazyLock::new(|| AREA_CODES.lines().filter_map(|l| l.split('|').next()).collect());
    let codes = &*CODES;
    let area = codes[i % codes.len()];
    let rest = i / codes.len();
    format!("+1{area}{:03}{:04}", 200 + rest / 10_000 % 800, rest % 10_000)
}

async fn campaign(store: &Store, name: &str, n: usize) -> Result<(Uuid, Duration)> {
    let t = Instant::now();
    let targets: Vec<Value> = (0..n).map(|i| json!({"phone_number": number(i)})).collect();
    let req: CreateCampaignRequest =
        serde_json::from_value(json!({"name": name, "max_concurrent_calls": 100, "targets": targets}))?;
    let c = store.create_campaign(&req.validate(n).map_err(|e| anyhow::anyhow!("{e}"))?).await?;
    store.transition(c.id, CampaignAction::Start).await?;
    Ok((c.id, t.elapsed()))
}

/// Imports `n` numbers (every 10th number of the targets' sequence: 10 % of the campaign's, the
/// rest beyond it) as one CSV request; the time and the rate in numbers/s.
async fn import(router: &axum::Router, n: usize) -> Result<(Duration, f64)> {
    let mut csv = String::with_capacity(n * 32);
    csv.push_str("phone_number,reason,source\n");
    for i in 0..n {
        csv.push_str(&number(i * 10));
        csv.push_str(",opt_out,bench\n");
    }
    let t = Instant::now();
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/dnc")
        .header(header::CONTENT_TYPE, "text/csv")
        .body(Body::from(csv))?;
    let resp = router.clone().oneshot(req).await?;
    let took = t.elapsed();
    if resp.status() != StatusCode::OK {
        bail!("the import answered {}", resp.status());
    }
    Ok((took, n as f64 / took.as_secs_f64()))
}

/// What the scheduler does per claim: the skip scan, the plan, the claim with its screening.
async fn claims(
    store: &Store,
    id: Uuid,
    a: &Args,
    at: DateTime<Utc>,
) -> Result<(Histogram<u64>, Duration, usize, u64)> {
    let rules = CallingRules::default().compile("calling_rules").map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut h = Histogram::<u64>::new(3)?;
    let (mut scan, mut zones_open, mut claimed) = (Duration::ZERO, 0, 0u64);
    for _ in 0..a.claims {
        let t = Instant::now();
        let zones = store.pending_zones(id).await?;
        scan += t.elapsed();
        let plan = dialer_control_plane::calling_rules::plan(&rules, &zones, at);
        zones_open = zones_open.max(plan.claim.len());
        let zones = plan.claims(at, std::time::Duration::from_secs(300), None);
        let s = store.claim_calls(id, a.claim, at, &zones, &rules).await?;
        claimed += (s.dial.len() + s.skipped.len()) as u64;
        h.record(t.elapsed().as_micros() as u64)?;
    }
    Ok((h, scan / a.claims.max(1) as u32, zones_open, claimed))
}

pub async fn run(a: Args) -> Result<()> {
    if a.targets < 100 || a.claim == 0 || a.claims == 0 {
        bail!("--targets must be at least 100, --claim and --claims at least 1");
    }
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(&a.at).context("--at is RFC 3339")?.with_timezone(&Utc);
    let (url, _tmp) = crate::store_url(&a.db.store, a.db.url.as_ref(), a.db.fast_postgres)?;
    let api =
        ApiSettings { max_body_bytes: 1 << 30, max_targets_per_request: a.dnc.max(a.targets), ..Default::default() };
    let store = Store::open(&url, &StoreSettings::default()).await.context("opening the store")?;
    let router = app(&api, store.clone());
    println!("creating campaigns of {} and {} targets over every NANP area code…", a.targets, a.targets / 20);
    let (big, big_took) = campaign(&store, "rules-big", a.targets).await?;
    let (small, _) = campaign(&store, "rules-small", a.targets / 20).await?;
    println!("importing {} do-not-call numbers as CSV…", a.dnc);
    let (dnc_took, dnc_rate) = import(&router, a.dnc).await?;
    let zones = store.pending_zones(big).await?.len();
    let (hb, scan_b, open_b, claimed_b) = claims(&store, big, &a, at).await?;
    let (hs, scan_s, open_s, claimed_s) = claims(&store, small, &a, at).await?;
    let row = |name: &str, h: &Histogram<u64>, scan: Duration, open: usize, claimed: u64| {
        println!(
            "{name:>14} | zones open {open:>4} | skip scan {:>7.2} ms | claim p50 {:>7.2} ms  p99 {:>7.2} ms | {:>6.1} µs per call taken",
            scan.as_secs_f64() * 1e3,
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.mean() * a.claims as f64 / claimed.max(1) as f64,
        );
    };
    println!("\nstore {} · {} zone keys · claims of {} at {}", a.db.store, zones, a.claim, a.at);
    println!(
        "created {} targets in {:.1} s; imported {} DNC numbers in {:.2} s ({:.0}/s)",
        a.targets,
        big_took.as_secs_f64(),
        a.dnc,
        dnc_took.as_secs_f64(),
        dnc_rate
    );
    row(&format!("{} targets", a.targets), &hb, scan_b, open_b, claimed_b);
    row(&format!("{} targets", a.targets / 20), &hs, scan_s, open_s, claimed_s);
    let v = json!({
        "store": a.db.store, "targets": a.targets, "zone_keys": zones, "claim": a.claim, "at": a.at,
        "dnc_numbers": a.dnc, "dnc_import_s": dnc_took.as_secs_f64(), "dnc_import_per_s": dnc_rate,
        "big": {"claim_p50_ms": hb.value_at_quantile(0.5) as f64 / 1e3, "claim_p99_ms": hb.value_at_quantile(0.99) as f64 / 1e3,
                "skip_scan_ms": scan_b.as_secs_f64() * 1e3, "zones_open": open_b, "calls_taken": claimed_b},
        "small": {"claim_p50_ms": hs.value_at_quantile(0.5) as f64 / 1e3, "claim_p99_ms": hs.value_at_quantile(0.99) as f64 / 1e3,
                  "skip_scan_ms": scan_s.as_secs_f64() * 1e3, "zones_open": open_s, "calls_taken": claimed_s},
    });
    crate::write_json(a.json.as_deref(), &v)
}
