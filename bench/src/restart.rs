//! `bench restart`: how fast the real `dialer up` gets back to work after it was killed. A
//! campaign (the seed's call lengths, a binding cap) runs; the process is stopped with SIGKILL
//! (or SIGTERM) mid-campaign and started again on the same data directory. From the provider's
//! ledgers (every call placed, start and planned end, both runs): the time from the restart to
//! the first dial, to the new run's full concurrency (its cap), and to completion; per (call,
//! attempt), that nothing was placed twice nor rung while its previous call was up; and, both
//! runs together as the carrier sees them, that the cap held.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hyper::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::chaos::{Placed, Proc};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 600)]
    targets: usize,
    #[arg(long, default_value_t = 60)]
    campaign_cap: u32,
    /// Mock call length range in ms (the seed's: 1–5 s).
    #[arg(long, default_value = "1000-5000")]
    call_ms: String,
    /// When the first run is stopped, after the campaign starts.
    #[arg(long, default_value = "6s", value_parser = dialer_domain::duration::parse)]
    stop_after: Duration,
    /// KILL or TERM.
    #[arg(long, default_value = "KILL")]
    signal: String,
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    /// The `dialer` binary (default: next to this one).
    #[arg(long)]
    dialer: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub async fn run(a: Args) -> Result<()> {
    let bin = crate::chaos::dialer_bin(a.dialer.as_ref())?;
    let (min_ms, max_ms) = a.call_ms.split_once('-').context("--call-ms is MIN-MAX")?;
    let work = tempfile::Builder::new().prefix("dialer-restart-").tempdir()?;
    let w = work.path();
    let port = dialer_testkit::free_port();
    let config = w.join("dialer.toml");
    std::fs::write(
        &config,
        format!("[api]\nlisten = \"127.0.0.1:{port}\"\n[provider]\nmin_call_ms = {min_ms}\nmax_call_ms = {max_ms}\n"),
    )?;
    let up = |run: u32| Proc {
        name: format!("up-{run}"),
        cmd: ["--config", &config.display().to_string(), "up", "--data-dir", &w.join("data").display().to_string()]
            .map(String::from)
            .to_vec(),
        env: vec![("DIALER_PROVIDER_LEDGER".into(), w.join(format!("ledger-{run}")).display().to_string())],
        log: w.join(format!("up-{run}.log")),
        child: None,
    };
    let mut first = up(1);
    first.spawn(&bin)?;
    if !dialer_testkit::wait_for_port(port, Duration::from_secs(60)) {
        bail!("dialer up did not listen; logs in {}", w.display());
    }
    let id = create(&a, port).await?;
    tokio::time::sleep(a.stop_after).await;
    match a.signal.as_str() {
        "KILL" => first.kill9(),
        "TERM" => first.stop(),
        other => bail!("--signal is KILL or TERM, not {other:?}"),
    }
    let restart_us = now_us();
    let t0 = Instant::now();
    let mut second = up(2);
    second.spawn(&bin)?;
    if !dialer_testkit::wait_for_port(port, Duration::from_secs(60)) {
        bail!("dialer up did not come back; logs in {}", w.display());
    }
    let listening_s = t0.elapsed().as_secs_f64();
    let completed = wait_completed(port, id, Duration::from_secs(a.timeout_s)).await?;
    let completed_s = t0.elapsed().as_secs_f64();
    let stats = get(port, &format!("/api/v1/campaigns/{id}/stats")).await?;
    second.stop();
    let placed = crate::chaos::read_ledgers(w)?;
    let r = Recovery::new(&placed, restart_us, a.campaign_cap);
    let out = json!({
        "scenario": "restart",
        "settings": {"targets": a.targets, "campaign_cap": a.campaign_cap, "call_ms": a.call_ms,
                     "stop_after_s": a.stop_after.as_secs_f64(), "signal": a.signal},
        "cores": crate::cores(),
        "completed": completed,
        "listening_after_restart_s": listening_s,
        "first_dial_after_restart_s": r.first_dial_s,
        "full_concurrency_after_restart_s": r.full_s,
        "completed_after_restart_s": completed_s,
        "dials": placed.len(),
        "attempts_placed_twice": r.placed_twice,
        "rung_while_previous_call_up": r.overlaps,
        "carrier_peak_both_runs": r.peak,
        "cap_violations_both_runs": r.violations,
        "stats": stats,
    });
    for (k, v) in out.as_object().into_iter().flatten().filter(|(k, _)| *k != "settings") {
        println!("{k:<34} {v}");
    }
    crate::write_json(a.json.as_deref(), &out)?;
    let open = ["pending_calls", "queued_calls", "in_progress_calls"].iter().map(|k| stats[k].as_i64().unwrap_or(-1));
    if !completed || r.placed_twice + r.overlaps + r.violations > 0 || open.into_iter().any(|n| n != 0) {
        bail!("a guarantee failed (logs and ledgers kept in {})", work.keep().display());
    }
    Ok(())
}

async fn create(a: &Args, port: u16) -> Result<Uuid> {
    let mut conn = crate::api::Conn::open(&format!("127.0.0.1:{port}"), None).await?;
    let targets: Vec<_> = (0..a.targets).map(|k| json!({"phone_number": format!("+1202{k:07}")})).collect();
    let body = json!({
        "name": format!("restart-{}", std::process::id()), "max_concurrent_calls": a.campaign_cap,
        "retry_policy": {"max_attempts": 3, "base_delay": "1s", "max_delay": "10s"}, "targets": targets
    });
    let (s, b) = conn.send(Method::POST, "/api/v1/campaigns", Some(body.to_string())).await?;
    if s != StatusCode::CREATED {
        bail!("creating the campaign: {s} {}", String::from_utf8_lossy(&b));
    }
    let id: Uuid = serde_json::from_slice::<serde_json::Value>(&b)?["id"].as_str().context("campaign id")?.parse()?;
    let (s, b) = conn.send(Method::POST, &format!("/api/v1/campaigns/{id}/start"), None).await?;
    if !s.is_success() {
        bail!("starting the campaign: {s} {}", String::from_utf8_lossy(&b));
    }
    Ok(id)
}

async fn get(port: u16, path: &str) -> Result<serde_json::Value> {
    let mut conn = crate::api::Conn::open(&format!("127.0.0.1:{port}"), None).await?;
    let (_, b) = conn.send(Method::GET, path, None).await?;
    Ok(serde_json::from_slice(&b)?)
}

async fn wait_completed(port: u16, id: Uuid, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if get(port, &format!("/api/v1/campaigns/{id}")).await?["status"] == "completed" {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
}

/// The second run, from the ledgers of both.
struct Recovery {
    first_dial_s: f64,
    /// Until the new run's own calls up reach the campaign's cap.
    full_s: f64,
    placed_twice: u64,
    overlaps: u64,
    /// Starts over the cap and the highest concurrency, both runs together.
    violations: u64,
    peak: i64,
}

impl Recovery {
    fn new(placed: &[Placed], restart_us: u64, cap: u32) -> Recovery {
        let secs = |us: u64| us.saturating_sub(restart_us) as f64 / 1e6;
        let after: Vec<&Placed> = placed.iter().filter(|p| p.start_us >= restart_us).collect();
        let first_dial_s = after.iter().map(|p| p.start_us).min().map_or(f64::NAN, secs);
        // The new run's own calls reaching the cap: its full dial rate again.
        let mut edges: Vec<(u64, i8)> = after.iter().flat_map(|p| [(p.start_us, 1), (p.end_us, -1)]).collect();
        edges.sort_unstable();
        let (mut up, mut full_s) = (0i64, f64::NAN);
        for (t, d) in edges {
            up += i64::from(d);
            if d > 0 && up >= i64::from(cap) {
                full_s = secs(t);
                break;
            }
        }
        // The carrier's view, both runs: the killed run's calls stay up to their planned end.
        let campaign = placed.first().map(|p| p.campaign).unwrap_or_default();
        let caps = HashMap::from([(campaign, cap)]);
        let sweep = crate::chaos::sweep(placed, u32::MAX, &caps);
        let mut by_call: HashMap<Uuid, Vec<(u32, u64, u64)>> = HashMap::new();
        for p in placed {
            by_call.entry(p.call).or_default().push((p.attempt, p.start_us, p.end_us));
        }
        let (mut placed_twice, mut overlaps) = (0, 0);
        for spans in by_call.values_mut() {
            spans.sort_unstable_by_key(|s| s.1);
            let mut attempts: Vec<u32> = spans.iter().map(|s| s.0).collect();
            attempts.sort_unstable();
            let n = attempts.len();
            attempts.dedup();
            placed_twice += (n - attempts.len()) as u64;
            overlaps += spans.windows(2).filter(|w| w[1].1 < w[0].2).count() as u64;
        }
        Recovery { first_dial_s, full_s, placed_twice, overlaps, violations: sweep.violations, peak: sweep.max_global }
    }
}
