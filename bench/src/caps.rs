//! `bench caps`: the product itself under its caps, measured from the carrier's side. It runs the
//! real `dialer` binary — `dialer up` (embedded: SQLite, in-process bus and limiter) or, with
//! `--mode distributed`, `dialer control-plane` and `--dataplanes` × `dialer dataplane` over
//! harness-owned PostgreSQL, Apache Kafka and Redis, with the product's default lease and scheduler
//! settings and the attempt journal on — creates and starts campaigns through the REST API with
//! the seed's call lengths, and reads the provider's ledger (every call placed, start and end).
//! From it, exactly: each campaign's time-averaged calls in progress over the measured window
//! against its cap and its max-min fair share of the global cap, its dials per second against
//! Little's law (share ÷ mean call length), and every cap violation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use dialer_limiter::fair::{CampaignDemand, campaign_shares};
use hyper::{Method, StatusCode};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use uuid::Uuid;

use crate::chaos::{Placed, Proc};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `up` (embedded) or `distributed` (control plane + data planes over PostgreSQL, the broker
    /// and Redis).
    #[arg(long, default_value = "up")]
    mode: String,
    /// In distributed mode, PostgreSQL without fsync, synchronous commit and full-page writes:
    /// faster, not what operators run.
    #[arg(long)]
    fast_postgres: bool,
    #[arg(long, default_value_t = 1)]
    campaigns: usize,
    /// Every campaign's max_concurrent_calls.
    #[arg(long, default_value_t = 50)]
    campaign_cap: u32,
    /// Campaign weights, comma-separated, one per campaign (default 1 each).
    #[arg(long, value_delimiter = ',')]
    weights: Vec<u32>,
    /// Targets per campaign: enough that every campaign still has due calls at the end.
    #[arg(long, default_value_t = 5000)]
    targets: usize,
    /// TELEPHONY_GLOBAL_MAX_CONCURRENCY.
    #[arg(long, default_value_t = 10_000)]
    global_cap: u32,
    /// Mock call length range in ms (the seed's: 1–5 s).
    #[arg(long, default_value = "1000-5000")]
    call_ms: String,
    /// Not measured: the campaigns ramp up.
    #[arg(long, default_value = "10s", value_parser = dialer_domain::duration::parse)]
    warmup: Duration,
    #[arg(long, default_value = "60s", value_parser = dialer_domain::duration::parse)]
    duration: Duration,
    /// Data-plane processes (distributed mode), one shard each.
    #[arg(long, default_value_t = 2)]
    dataplanes: usize,
    /// The `dialer` binary (default: next to this one).
    #[arg(long)]
    dialer: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Servers the distributed mode runs on, kept alive for the run.
#[derive(Default)]
struct Servers {
    _redis: Option<dialer_testkit::RedisServer>,
    _kafka: Option<dialer_testkit::Kafka>,
}

pub async fn run(a: Args) -> Result<()> {
    let bin = crate::chaos::dialer_bin(a.dialer.as_ref())?;
    let (min_ms, max_ms) = a.call_ms.split_once('-').context("--call-ms is MIN-MAX")?;
    let (min_ms, max_ms): (u64, u64) = (min_ms.parse()?, max_ms.parse()?);
    if !a.weights.is_empty() && a.weights.len() != a.campaigns {
        bail!("--weights lists {} weights for {} campaigns", a.weights.len(), a.campaigns);
    }
    let work = tempfile::Builder::new().prefix("dialer-caps-").tempdir()?;
    let w = work.path();
    let port = dialer_testkit::free_port();
    let mut servers = Servers::default();
    let mut procs = start(&a, &bin, w, port, (min_ms, max_ms), &mut servers)?;
    if !dialer_testkit::wait_for_port(port, Duration::from_secs(60)) {
        bail!("the API did not come up; logs in {}", w.display());
    }
    let caps = create_campaigns(&a, port).await?;
    let t0 = now_us();
    let total = a.warmup + a.duration;
    let pb = ProgressBar::new(total.as_secs());
    pb.set_style(
        ProgressStyle::with_template("caps {bar:40} {pos}/{len} s").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while now_us() < t0 + total.as_micros() as u64 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        pb.set_position((now_us() - t0) / 1_000_000);
    }
    pb.finish_and_clear();
    for p in procs.iter_mut().rev() {
        p.stop();
    }
    let placed = crate::chaos::read_ledgers(w)?;
    let from = t0 + a.warmup.as_micros() as u64;
    let report = Report::new(
        &a,
        &caps,
        &placed,
        (from, from + a.duration.as_micros() as u64),
        (min_ms + max_ms) as f64 / 2000.0,
    );
    report.print(&a);
    crate::write_json(a.json.as_deref(), &report.json(&a))
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Starts the product: `dialer up`, or a control plane and the data planes (after their servers).
fn start(a: &Args, bin: &Path, w: &Path, port: u16, call: (u64, u64), servers: &mut Servers) -> Result<Vec<Proc>> {
    let distributed = match a.mode.as_str() {
        "up" => false,
        "distributed" => true,
        other => bail!("--mode must be up or distributed, not {other:?}"),
    };
    let mut extra = String::new();
    let mut limits = String::new();
    if distributed {
        let err = |e: dialer_testkit::HarnessError| anyhow::anyhow!("{e}");
        let db = crate::postgres_database(a.fast_postgres)?;
        let redis = dialer_testkit::RedisServer::start().map_err(err)?;
        let kafka = dialer_testkit::Kafka::start().map_err(err)?;
        limits = format!("redis_url = \"{}\"\n", redis.url());
        let partitions = (a.dataplanes * 4).max(8);
        extra = format!(
            "[store]\nurl = \"{db}\"\n[bus]\nkind = \"kafka\"\nbrokers = \"{}\"\ndispatch_partitions = {partitions}\n",
            kafka.bootstrap()
        );
        servers._redis = Some(redis);
        servers._kafka = Some(kafka);
    }
    let config = w.join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [limits]\nglobal_max_concurrency = {g}\nper_campaign_max_concurrency = {c}\n{limits}\
             [provider]\nmin_call_ms = {min}\nmax_call_ms = {max}\n{extra}",
            g = a.global_cap,
            c = a.campaign_cap,
            min = call.0,
            max = call.1
        ),
    )?;
    let cfg = config.display().to_string();
    let proc = |name: &str, cmd: &[&str], ledger: Option<usize>| Proc {
        name: name.into(),
        cmd: ["--config", cfg.as_str()].iter().chain(cmd).map(|s| s.to_string()).collect(),
        env: ledger
            .map(|k| vec![("DIALER_PROVIDER_LEDGER".into(), w.join(format!("ledger-{k}")).display().to_string())])
            .unwrap_or_default(),
        log: w.join(format!("{name}.log")),
        child: None,
    };
    let mut procs = if distributed {
        let partitions = (a.dataplanes * 4).max(8);
        let tuning = w.join("tuning.toml");
        std::fs::write(&tuning, format!("[shards]\ncount = 1\nassignment = \"static\"\npartitions = {partitions}\n"))?;
        let (tuning, journal) = (tuning.display().to_string(), w.join("journal").display().to_string());
        let mut v = vec![proc("control-plane", &["control-plane"], None)];
        for k in 0..a.dataplanes {
            let (admin, instance, instances) =
                (format!("127.0.0.1:{}", dialer_testkit::free_port()), k.to_string(), a.dataplanes.to_string());
            let args = ["dataplane", "--tuning", &tuning, "--admin", &admin, "--journal-dir", &journal];
            let args: Vec<&str> =
                args.into_iter().chain(["--instance", &instance, "--instances", &instances]).collect();
            v.push(proc(&format!("dataplane-{k}"), &args, Some(k)));
        }
        v
    } else {
        let data = w.join("data").display().to_string();
        vec![proc("up", &["up", "--data-dir", &data], Some(0))]
    };
    for p in &mut procs {
        p.spawn(bin)?;
    }
    Ok(procs)
}

/// Creates and starts the campaigns through the REST API; their (id, cap, weight).
async fn create_campaigns(a: &Args, port: u16) -> Result<Vec<(Uuid, u32, u32)>> {
    let mut conn = crate::api::Conn::open(&format!("127.0.0.1:{port}"), None).await?;
    let run = std::process::id();
    let mut out = Vec::new();
    for i in 0..a.campaigns {
        let weight = a.weights.get(i).copied().unwrap_or(1);
        let targets: Vec<_> =
            (0..a.targets).map(|k| json!({"phone_number": format!("+1{:03}{:07}", 200 + i, k)})).collect();
        let body = json!({
            "name": format!("caps-{run}-{i}"), "max_concurrent_calls": a.campaign_cap, "weight": weight,
            "retry_policy": {"max_attempts": 3, "base_delay": "1s", "max_delay": "10s"}, "targets": targets
        });
        let (s, b) = conn.send(Method::POST, "/api/v1/campaigns", Some(body.to_string())).await?;
        if s != StatusCode::CREATED {
            bail!("creating campaign {i}: {s} {}", String::from_utf8_lossy(&b));
        }
        let id: Uuid =
            serde_json::from_slice::<serde_json::Value>(&b)?["id"].as_str().context("campaign id")?.parse()?;
        let (s, b) = conn.send(Method::POST, &format!("/api/v1/campaigns/{id}/start"), None).await?;
        if !s.is_success() {
            bail!("starting campaign {i}: {s} {}", String::from_utf8_lossy(&b));
        }
        out.push((id, a.campaign_cap, weight));
    }
    Ok(out)
}

/// One campaign's figures over the measured window.
struct CampaignFigures {
    cap: u32,
    weight: u32,
    share: f64,
    in_progress: f64,
    dials_per_sec: f64,
}

struct Report {
    campaigns: Vec<CampaignFigures>,
    mean_call_s: f64,
    violations: u64,
    peak_global: i64,
}

impl Report {
    fn new(a: &Args, caps: &[(Uuid, u32, u32)], placed: &[Placed], window: (u64, u64), mean_call_s: f64) -> Report {
        let demands: Vec<CampaignDemand> = caps
            .iter()
            .map(|&(_, cap, weight)| {
                let due = a.targets as f64;
                CampaignDemand { demand: due, want: due, cap: f64::from(cap), weight: f64::from(weight) }
            })
            .collect();
        let shares = campaign_shares(f64::from(a.global_cap), &demands);
        let (from, to) = window;
        let secs = (to - from) as f64 / 1e6;
        let mut busy: HashMap<Uuid, f64> = HashMap::new();
        let mut dials: HashMap<Uuid, u64> = HashMap::new();
        for p in placed {
            let overlap = p.end_us.min(to).saturating_sub(p.start_us.max(from));
            *busy.entry(p.campaign).or_default() += overlap as f64 / 1e6;
            if (from..to).contains(&p.start_us) {
                *dials.entry(p.campaign).or_default() += 1;
            }
        }
        let campaigns = caps
            .iter()
            .zip(shares)
            .map(|(&(id, cap, weight), share)| CampaignFigures {
                cap,
                weight,
                share,
                in_progress: busy.get(&id).copied().unwrap_or(0.0) / secs,
                dials_per_sec: dials.get(&id).copied().unwrap_or(0) as f64 / secs,
            })
            .collect();
        let cap_map: HashMap<Uuid, u32> = caps.iter().map(|&(id, cap, _)| (id, cap)).collect();
        let (violations, peak_global) = crate::chaos::cap_violations(placed, a.global_cap, &cap_map);
        Report { campaigns, mean_call_s, violations, peak_global }
    }

    fn totals(&self) -> (f64, f64, f64) {
        let share: f64 = self.campaigns.iter().map(|c| c.share).sum();
        let in_progress: f64 = self.campaigns.iter().map(|c| c.in_progress).sum();
        let dials: f64 = self.campaigns.iter().map(|c| c.dials_per_sec).sum();
        (share, in_progress, dials)
    }

    /// The campaign furthest from its fair share (relative), in calls in progress and in dials.
    fn worst(&self) -> (f64, f64) {
        let mut worst = (0.0f64, 0.0f64);
        for c in &self.campaigns {
            worst.0 = worst.0.max((c.in_progress / c.share - 1.0).abs());
            worst.1 = worst.1.max((c.dials_per_sec * self.mean_call_s / c.share - 1.0).abs());
        }
        worst
    }

    fn print(&self, a: &Args) {
        println!(
            "{:>4} {:>6} {:>6} {:>8} {:>12} {:>7} {:>9} {:>12} {:>7}",
            "#", "cap", "weight", "share", "in progress", "%", "dials/s", "Little dials", "%"
        );
        for (i, c) in self.campaigns.iter().enumerate().take(20) {
            let little = c.share / self.mean_call_s;
            println!(
                "{i:>4} {:>6} {:>6} {:>8.1} {:>12.1} {:>6.1}% {:>9.2} {:>12.2} {:>6.1}%",
                c.cap,
                c.weight,
                c.share,
                c.in_progress,
                100.0 * c.in_progress / c.share,
                c.dials_per_sec,
                little,
                100.0 * c.dials_per_sec / little
            );
        }
        let (share, in_progress, dials) = self.totals();
        let (worst_busy, worst_dials) = self.worst();
        println!("{:<40} {:>12}", "mode", a.mode);
        println!("{:<40} {:>12.1}", "caps allow (Σ fair shares)", share);
        println!("{:<40} {:>12.1}", "calls in progress, time-averaged", in_progress);
        println!("{:<40} {:>11.1}%", "… of what the caps allow", 100.0 * in_progress / share);
        println!("{:<40} {:>12.2}", "dials/s", dials);
        println!("{:<40} {:>12.2}", "Little's law dials/s (share ÷ mean call)", share / self.mean_call_s);
        println!("{:<40} {:>11.1}%", "… reached", 100.0 * dials * self.mean_call_s / share);
        println!("{:<40} {:>11.1}%", "worst campaign, in progress vs share", 100.0 * worst_busy);
        println!("{:<40} {:>11.1}%", "worst campaign, dials vs Little's law", 100.0 * worst_dials);
        println!("{:<40} {:>12}", "cap violations (ledger sweep)", self.violations);
        println!("{:<40} {:>12}", "peak calls in progress", self.peak_global);
        println!("{:<40} {:>12}", "cores (nproc)", crate::cores());
    }

    fn json(&self, a: &Args) -> serde_json::Value {
        let (share, in_progress, dials) = self.totals();
        let (worst_busy, worst_dials) = self.worst();
        json!({
            "scenario": "caps",
            "settings": {"mode": a.mode, "campaigns": a.campaigns, "campaign_cap": a.campaign_cap, "weights": a.weights,
                         "targets": a.targets, "global_cap": a.global_cap, "call_ms": a.call_ms,
                         "warmup_s": a.warmup.as_secs_f64(), "duration_s": a.duration.as_secs_f64(), "dataplanes": a.dataplanes},
            "cores": crate::cores(),
            "caps_allow": share,
            "mean_in_progress": in_progress,
            "in_progress_share_of_caps": in_progress / share,
            "dials_per_sec": dials,
            "littles_law_dials_per_sec": share / self.mean_call_s,
            "dials_share_of_littles_law": dials * self.mean_call_s / share,
            "worst_campaign_in_progress_deviation": worst_busy,
            "worst_campaign_dials_deviation": worst_dials,
            "cap_violations": self.violations,
            "peak_in_progress": self.peak_global,
            "campaigns": self.campaigns.iter().map(|c| json!({"cap": c.cap, "weight": c.weight, "share": c.share,
                "mean_in_progress": c.in_progress, "dials_per_sec": c.dials_per_sec})).collect::<Vec<_>>(),
        })
    }
}
