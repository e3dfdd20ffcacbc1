//! `bench sip`: the SIP provider of one data-plane shard placing calls open loop at `--rate`
//! against sipp (the tests' UAS scenario on loopback), measured against sipp's own UAC → UAS
//! rate on this machine in the same run. Reports calls per second as the far end counted them,
//! INVITE → 200 and INVITE → final latency percentiles, the shard's CPU per call, and the most
//! calls up at once (sipp's "Peak was").

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dialer_dataplane::Provider;
use dialer_dataplane::ProviderSettings;
use dialer_dataplane::provider::CallOutcome;
use dialer_dataplane::sip::{SipProvider, TrunkSettings};
use dialer_domain::messages::DispatchMessage;
use dialer_testkit::fixtures::Dispatch;
use dialer_testkit::sip::{Sipp, SippReport, free_udp_port};
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Calls placed per second (open loop: a late call does not delay the next).
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// How long calls are placed.
    #[arg(long, default_value = "10s", value_parser = dialer_domain::duration::parse)]
    duration: Duration,
    /// Talk time of an answered call; the dialer hangs up (BYE) after it.
    #[arg(long, default_value = "1s", value_parser = dialer_domain::duration::parse)]
    hold: Duration,
    /// Share of calls the far end answers busy (486), for INVITE → final of a refused call.
    #[arg(long, default_value_t = 0.2)]
    busy_share: f64,
    /// Skip sipp's own UAC → UAS reference run.
    #[arg(long)]
    no_reference: bool,
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One side's figures: INVITEs as the far end logged them, calls that ended as the scenario
/// says (answered and hung up, or refused busy) as the caller counted them.
#[derive(Debug)]
struct FarEnd {
    calls: u64,
    /// Calls that ended well per second, over the span of INVITEs sipp received.
    cps: f64,
    /// sipp's "Peak was", known only when sipp ended by itself (not when it lost calls and was
    /// stopped).
    peak: Option<u64>,
    failed: u64,
}

fn far_end(r: &SippReport, good: u64, failed: u64) -> FarEnd {
    let (first, last) = (r.invites_ms.iter().min().copied(), r.invites_ms.iter().max().copied());
    let span = match (first, last) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1000.0,
        _ => 1.0,
    };
    FarEnd { calls: r.invites_ms.len() as u64, cps: good as f64 / span, peak: (r.peak > 0).then_some(r.peak), failed }
}

/// sipp's own UAC placing the same answered calls (INVITE, ACK, BYE after `hold`) at `rate`.
fn reference(a: &Args, calls: u64) -> Result<FarEnd> {
    let uas = Sipp::uas(calls, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let p = |n: u16| n.to_string();
    let status = Command::new("sipp")
        .arg(uas.addr().to_string())
        .args(["-sn", "uac", "-s", "+15550000201", "-i", "127.0.0.1", "-p", &p(free_udp_port())])
        .args(["-mp", &p(free_udp_port()), "-ci", "127.0.0.1", "-cp", &p(free_udp_port()), "-nostdin"])
        .args(["-m", &calls.to_string(), "-r", &a.rate.to_string(), "-d", &a.hold.as_millis().to_string()])
        .args(["-max_socket", "60000", "-trace_screen", "-screen_file", "uac.log"])
        .current_dir(uas.dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running sipp's UAC (apt-get install -y sip-tester)")?;
    if !status.success() {
        note(&format!("sipp's UAC exited with {status}: some of its calls failed (sipp overloaded)"));
    }
    let r = uas.stop(Duration::from_secs(10));
    let uac = SippReport::from_screen(&uas.dir().join("uac.log")).map_err(|e| anyhow::anyhow!(e))?;
    // The UAC's own screen counts its calls (the UAS never learns of calls it lost).
    Ok(FarEnd { peak: Some(r.peak.max(uac.peak)), ..far_end(&r, uac.successful, uac.failed) })
}

fn note(s: &str) {
    eprintln!("note: {s}");
}

fn msg(i: u64, busy: bool) -> DispatchMessage {
    let number = format!("+1555{:06}{}", i % 1_000_000, if busy { "486" } else { "201" });
    Dispatch::call(0).id(Uuid::now_v7()).campaign(Uuid::from_u128(1)).cap(u32::MAX).number(&number).build()
}

/// The shard's own figures.
struct Shard {
    answered: Histogram<u64>,
    refused: Histogram<u64>,
    failed_other: u64,
    cpu_s: f64,
    wall_s: f64,
    peak_up: u64,
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let f: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, r)| r).split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The bench's trunk: sipp, no channel or CPS limit (the far end's own rate is measured).
fn bench_settings(a: &Args, far: std::net::SocketAddr) -> ProviderSettings {
    let trunk = TrunkSettings {
        name: "sipp".into(),
        proxy: far.to_string(),
        domain: "bench.test".into(),
        from_domain: "bench.test".into(),
        max_channels: u32::MAX,
        max_cps: 0,
        ..TrunkSettings::default()
    };
    let sip = dialer_dataplane::ProviderKind::Sip;
    ProviderSettings { kind: sip, trunks: vec![trunk], max_call: a.hold, ..ProviderSettings::default() }
}

impl Shard {
    fn new() -> Result<Shard> {
        Ok(Shard {
            answered: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            refused: Histogram::new_with_bounds(1, 120_000_000, 3)?,
            failed_other: 0,
            cpu_s: 0.0,
            wall_s: 0.0,
            peak_up: 0,
        })
    }

    fn ended(&mut self, o: CallOutcome) -> Result<()> {
        match o {
            CallOutcome::Completed { answered_after, .. } => self.answered.record(answered_after.as_micros() as u64)?,
            CallOutcome::Failed { reason: "busy", after, .. } => self.refused.record(after.as_micros() as u64)?,
            CallOutcome::Failed { .. } => self.failed_other += 1,
        }
        Ok(())
    }
}

/// Places `calls` calls open loop on one shard (a current-thread runtime and `LocalSet`).
fn dialer_run(a: &Args, calls: u64, far: std::net::SocketAddr) -> Result<Shard> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&rt, async {
        let p = SipProvider::start(bench_settings(a, far), 0, 1).await?;
        let pb = ProgressBar::new(calls).with_style(
            ProgressStyle::with_template("dialer    {bar:40} {pos}/{len} calls ended")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut s = Shard::new()?;
        let interval = Duration::from_secs(1) / a.rate.max(1);
        let every = (1.0 / a.busy_share.clamp(0.0, 1.0)).round().max(1.0) as u64;
        let mut live = futures::stream::FuturesUnordered::new();
        let (cpu0, t0) = (cpu_seconds(), Instant::now());
        let mut issued = 0u64;
        while issued < calls || !live.is_empty() {
            let next = tokio::time::Instant::from_std(t0 + interval * issued as u32);
            tokio::select! {
                _ = tokio::time::sleep_until(next), if issued < calls => {
                    // Open loop: every call that is due now goes out, late or not.
                    while issued < calls && t0 + interval * issued as u32 <= Instant::now() {
                        let busy = a.busy_share > 0.0 && issued.is_multiple_of(every);
                        live.push(p.place_call(&msg(issued, busy)));
                        issued += 1;
                    }
                    s.peak_up = s.peak_up.max(live.len() as u64);
                }
                Some(o) = live.next() => {
                    pb.inc(1);
                    s.ended(o)?;
                }
            }
        }
        pb.finish_and_clear();
        s.cpu_s = cpu_seconds() - cpu0;
        s.wall_s = t0.elapsed().as_secs_f64();
        Ok(s)
    })
}

fn shown(peak: Option<u64>) -> String {
    peak.map_or_else(|| "n/a (sipp stopped)".into(), |p| p.to_string())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub fn run(a: Args) -> Result<()> {
    if a.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let calls = (u64::from(a.rate) * a.duration.as_millis() as u64 / 1000).max(1);
    let reference = if a.no_reference { None } else { Some(reference(&a, calls)?) };
    let uas = Sipp::uas(calls, 0).map_err(|e| anyhow::anyhow!("{e}"))?;
    let s = dialer_run(&a, calls, uas.addr())?;
    let r = uas.stop(Duration::from_secs(10));
    let d = far_end(&r, s.answered.len() + s.refused.len(), s.failed_other);
    let ended = s.answered.len() + s.refused.len();
    let cpu_us = s.cpu_s * 1e6 / calls as f64;
    println!(
        "bench sip: {} calls offered at {}/s, hold {:?}, {:.0} % busy",
        calls,
        a.rate,
        a.hold,
        a.busy_share * 100.0
    );
    println!("| | INVITEs at the far end | calls ended well per second | peak calls up (sipp) | failed calls |");
    println!("|---|---|---|---|---|");
    if let Some(x) = &reference {
        println!("| sipp UAC → sipp UAS (reference) | {} | {:.0} | {} | {} |", x.calls, x.cps, shown(x.peak), x.failed);
    }
    println!("| dialer shard → sipp UAS | {} | {:.0} | {} | {} |", d.calls, d.cps, shown(d.peak), d.failed);
    if let Some(x) = &reference {
        println!("dialer / sipp: {:.0} %", 100.0 * d.cps / x.cps.max(1e-9));
    }
    println!(
        "INVITE → 200: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} answered)",
        ms(&s.answered, 0.5),
        ms(&s.answered, 0.99),
        s.answered.max() as f64 / 1000.0,
        s.answered.len()
    );
    println!(
        "INVITE → final (486): p50 {:.1} ms, p99 {:.1} ms ({} refused); other failures {}",
        ms(&s.refused, 0.5),
        ms(&s.refused, 0.99),
        s.refused.len(),
        s.failed_other
    );
    println!(
        "shard CPU: {:.2} s for {} calls = {:.0} µs per call; {} calls up at once on the shard at most; wall {:.1} s",
        s.cpu_s, ended, cpu_us, s.peak_up, s.wall_s
    );
    if let Some(path) = &a.json {
        let v = json!({
            "rate": a.rate, "calls": calls, "hold_ms": a.hold.as_millis() as u64,
            "dialer_cps": d.cps, "dialer_peak": d.peak, "dialer_failed": d.failed,
            "reference_cps": reference.as_ref().map(|x| x.cps), "reference_peak": reference.as_ref().map(|x| x.peak),
            "invite_200_p50_ms": ms(&s.answered, 0.5), "invite_200_p99_ms": ms(&s.answered, 0.99),
            "invite_final_p50_ms": ms(&s.refused, 0.5), "invite_final_p99_ms": ms(&s.refused, 0.99),
            "cpu_us_per_call": cpu_us, "shard_peak_up": s.peak_up, "other_failures": s.failed_other,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
