//! `bench limiter`: the seed platform's design (one Redis script call to acquire and one DECR
//! to release, per call) against ours (tokens leased in batches per core, handed out locally),
//! side by side against the same redis-server, with the same campaigns, caps and call mix.
//! Redis commands are counted by Redis itself (`INFO commandstats`); cap violations by one
//! tracker every caller and core shares ([`Holding`]), for both designs.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dialer_limiter::{Backend, LeaseDriver, LeaseSettings, RedisBackend};
use fred::interfaces::{ClientLike, KeysInterface, LuaInterface};
use fred::types::InfoKind;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long each design runs (after a 1 s warm-up that is not counted), e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = humantime_secs)]
    duration: Duration,
    /// Redis to use instead of one started by the harness.
    #[arg(long)]
    redis: Option<String>,
    /// Campaigns in the mix.
    #[arg(long, default_value_t = 50)]
    campaigns: u32,
    /// Each campaign's cap.
    #[arg(long, default_value_t = 100)]
    campaign_cap: u32,
    /// The global cap.
    #[arg(long, default_value_t = 10_000)]
    global_cap: u32,
    /// Longest simulated call, in microseconds (uniform 0..=this).
    #[arg(long, default_value_t = 2000)]
    hold_us: u64,
    /// Cores (shards) for the leased design.
    #[arg(long, default_value_t = 2)]
    cores: usize,
    /// Concurrent callers for the per-call design.
    #[arg(long, default_value_t = 256)]
    callers: usize,
    /// Lease batch (tokens asked for beyond those in use).
    #[arg(long, default_value_t = 64)]
    batch: u32,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn humantime_secs(s: &str) -> Result<Duration, dialer_domain::duration::DurationError> {
    dialer_domain::duration::parse(s)
}

/// Client commands and all commands (inner script commands included) Redis has executed.
async fn command_counts(client: &fred::clients::Client) -> Result<(u64, u64)> {
    let info: String = client.info(Some(InfoKind::CommandStats)).await?;
    let (mut client_cmds, mut all) = (0, 0);
    for line in info.lines() {
        let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
        let calls: u64 =
            rest.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|v| v.parse().ok()).unwrap_or(0);
        if name == "info" {
            continue;
        }
        all += calls;
        // Commands a client sends; the others ran inside scripts.
        if matches!(name, "eval" | "evalsha" | "decr" | "script|load" | "script") {
            client_cmds += calls;
        }
    }
    Ok((client_cmds, all))
}

fn bar(label: &str, d: Duration) -> ProgressBar {
    let pb = ProgressBar::new(d.as_secs().max(1));
    pb.set_style(
        ProgressStyle::with_template(&format!("{label:<10} {{bar:40}} {{pos}}/{{len}} s {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    pb
}

struct Phase {
    tokens: u64,
    secs: f64,
    client_cmds: u64,
    all_cmds: u64,
    /// Grants that took a campaign over its cap / everything over the global cap.
    campaign_violations: u64,
    global_violations: u64,
}

/// Calls in progress per campaign and in all, counted by every caller and core together (one
/// tracker, so two cores over a cap together are seen): a token counts once it is granted and
/// stops counting before it is given back, so a count over a cap is a real violation.
struct Holding {
    campaigns: Vec<AtomicI64>,
    global: AtomicI64,
    cap: i64,
    global_cap: i64,
    campaign_violations: AtomicU64,
    global_violations: AtomicU64,
}

impl Holding {
    fn new(a: &Args) -> Arc<Holding> {
        Arc::new(Holding {
            campaigns: (0..a.campaigns).map(|_| AtomicI64::new(0)).collect(),
            global: AtomicI64::new(0),
            cap: i64::from(a.campaign_cap),
            global_cap: i64::from(a.global_cap),
            campaign_violations: AtomicU64::new(0),
            global_violations: AtomicU64::new(0),
        })
    }

    fn take(&self, campaign: usize) {
        if self.campaigns[campaign].fetch_add(1, Ordering::AcqRel) + 1 > self.cap {
            self.campaign_violations.fetch_add(1, Ordering::Relaxed);
        }
        if self.global.fetch_add(1, Ordering::AcqRel) + 1 > self.global_cap {
            self.global_violations.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn give(&self, campaign: usize) {
        self.campaigns[campaign].fetch_sub(1, Ordering::AcqRel);
        self.global.fetch_sub(1, Ordering::AcqRel);
    }

    fn counted(&self, p: Phase) -> Phase {
        Phase {
            campaign_violations: self.campaign_violations.load(Ordering::SeqCst),
            global_violations: self.global_violations.load(Ordering::SeqCst),
            ..p
        }
    }
}

const SEED_ACQUIRE: &str = "local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1";

async fn per_call(a: &Args, url: &str) -> Result<Phase> {
    let client = fred::clients::Client::new(fred::types::config::Config::from_url(url)?, None, None, None);
    client.init().await?;
    let sha: String = client.script_load(SEED_ACQUIRE).await?;
    let prefix = format!("bench:{}:", std::process::id());
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(AtomicU64::new(0));
    let holding = Holding::new(a);
    let mut tasks = Vec::new();
    for i in 0..a.callers {
        let (client, sha, prefix, counting, stop, tokens, holding) = (
            client.clone(),
            sha.clone(),
            prefix.clone(),
            counting.clone(),
            stop.clone(),
            tokens.clone(),
            holding.clone(),
        );
        let (campaigns, cap, hold) = (a.campaigns, a.campaign_cap, a.hold_us);
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(i as u64);
            while !stop.load(Ordering::Relaxed) {
                let c = rng.random_range(0..campaigns) as usize;
                let key = format!("{prefix}sem:campaign:{c}:concurrency");
                let got: i64 = client.evalsha(&sha, vec![key.clone()], vec![cap.to_string(), "600000".into()]).await?;
                if got == 0 {
                    tokio::task::yield_now().await;
                    continue;
                }
                holding.take(c);
                if counting.load(Ordering::Relaxed) {
                    tokens.fetch_add(1, Ordering::Relaxed);
                }
                let h = rng.random_range(0..=hold);
                if h >= 1000 {
                    tokio::time::sleep(Duration::from_micros(h)).await;
                }
                holding.give(c);
                let _: i64 = client.decr(key).await?;
            }
            anyhow::Ok(())
        }));
    }
    let r = measure("per-call", a.duration, &client, &counting, &stop, &tokens).await?;
    for t in tasks {
        t.await??;
    }
    Ok(holding.counted(r))
}

async fn measure(
    label: &str,
    d: Duration,
    client: &fred::clients::Client,
    counting: &AtomicBool,
    stop: &AtomicBool,
    tokens: &AtomicU64,
) -> Result<Phase> {
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    let (c0, a0) = command_counts(client).await?;
    let t0 = Instant::now();
    counting.store(true, Ordering::SeqCst);
    let pb = bar(label, d);
    while t0.elapsed() < d {
        tokio::time::sleep(Duration::from_millis(250)).await;
        pb.set_position(t0.elapsed().as_secs());
        pb.set_message(format!("{:.0} tokens/s", tokens.load(Ordering::Relaxed) as f64 / t0.elapsed().as_secs_f64()));
    }
    counting.store(false, Ordering::SeqCst);
    let secs = t0.elapsed().as_secs_f64();
    let (c1, a1) = command_counts(client).await?;
    stop.store(true, Ordering::SeqCst);
    pb.finish_and_clear();
    Ok(Phase {
        tokens: tokens.load(Ordering::SeqCst),
        secs,
        client_cmds: c1 - c0,
        all_cmds: a1 - a0,
        campaign_violations: 0,
        global_violations: 0,
    })
}

async fn leased(a: &Args, url: &str) -> Result<Phase> {
    let backend =
        RedisBackend::connect(url, &format!("{{bench{}}}:", std::process::id()), Duration::from_secs(1)).await?;
    let client = backend.client().clone();
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let tokens = Arc::new(AtomicU64::new(0));
    let holding = Holding::new(a);
    let campaigns: Vec<Uuid> = (0..a.campaigns).map(|i| Uuid::from_u128(u128::from(i) + 1)).collect();
    let settings = LeaseSettings { batch: a.batch, low_water: a.batch / 4, ..LeaseSettings::default() };
    let mut cores = Vec::new();
    for core in 0..a.cores {
        let (backend, counting, stop, tokens, holding, campaigns, settings) = (
            Backend::Redis(backend.clone()),
            counting.clone(),
            stop.clone(),
            tokens.clone(),
            holding.clone(),
            campaigns.clone(),
            settings.clone(),
        );
        let (cap, gcap, hold) = (a.campaign_cap, a.global_cap, a.hold_us);
        cores.push(std::thread::spawn(move || -> Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let (driver, h) =
                    LeaseDriver::new(backend, format!("bench-{}-{core}", std::process::id()), settings, gcap);
                let s = stop.clone();
                let drv = tokio::task::spawn_local(driver.run(async move {
                    while !s.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }));
                let mut rng = StdRng::seed_from_u64(core as u64);
                let mut ends: BinaryHeap<Reverse<(Instant, usize)>> = BinaryHeap::new();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let now = Instant::now();
                    while ends.peek().is_some_and(|Reverse((t, _))| *t <= now) {
                        let Some(Reverse((_, i))) = ends.pop() else { break };
                        holding.give(i);
                        h.release(campaigns[i]);
                    }
                    let mut refused = 0;
                    for _ in 0..64 {
                        let i = rng.random_range(0..campaigns.len());
                        if h.try_acquire(campaigns[i], dialer_limiter::Ask { cap, weight: 1, queued: 1 }) {
                            holding.take(i);
                            n += 1;
                            ends.push(Reverse((now + Duration::from_micros(rng.random_range(0..=hold)), i)));
                        } else {
                            refused += 1;
                        }
                    }
                    if counting.load(Ordering::Relaxed) {
                        tokens.fetch_add(n, Ordering::Relaxed);
                    }
                    n = 0;
                    if refused == 64 {
                        tokio::task::yield_now().await;
                    }
                    if ends.len() > 100_000 || refused > 0 {
                        tokio::task::yield_now().await;
                    }
                }
                for Reverse((_, i)) in ends.drain() {
                    holding.give(i);
                    h.release(campaigns[i]);
                }
                drv.await?;
                anyhow::Ok(())
            })
        }));
    }
    let r = measure("leased", a.duration, &client, &counting, &stop, &tokens).await?;
    for c in cores {
        c.join().map_err(|_| anyhow::anyhow!("core thread panicked"))??;
    }
    Ok(holding.counted(r))
}

pub async fn run(a: Args) -> Result<()> {
    let (url, _server) = crate::redis_or(a.redis.as_ref())?;
    println!(
        "limiter: {} campaigns × cap {}, global cap {}, calls 0–{} µs, {} s per design, Redis {url}",
        a.campaigns,
        a.campaign_cap,
        a.global_cap,
        a.hold_us,
        a.duration.as_secs()
    );
    let seed = per_call(&a, &url).await.context("per-call design")?;
    let ours = leased(&a, &url).await.context("leased design")?;
    let row = |name: &str, p: &Phase| {
        let per = |x: u64| if p.tokens == 0 { f64::NAN } else { x as f64 / p.tokens as f64 };
        println!(
            "{name:<28} {:>14.0} {:>16.4} {:>22.4} {:>14} {:>12}",
            p.tokens as f64 / p.secs,
            per(p.client_cmds),
            per(p.all_cmds),
            p.campaign_violations,
            p.global_violations
        );
    };
    println!(
        "{:<28} {:>14} {:>16} {:>22} {:>14} {:>12}",
        "design", "tokens/s", "redis cmds/token", "incl. script-inner/tok", "campaign viol.", "global viol."
    );
    row("per-call (seed)", &seed);
    row("leased (ours)", &ours);
    println!("cores (nproc): {}", crate::cores());
    let per = |x: u64, t: u64| if t == 0 { 0.0 } else { x as f64 / t as f64 };
    crate::write_json(
        a.json.as_deref(),
        &json!({
            "scenario": "limiter",
            "settings": {"campaigns": a.campaigns, "campaign_cap": a.campaign_cap, "global_cap": a.global_cap,
                         "hold_us_max": a.hold_us, "cores": a.cores, "callers": a.callers, "batch": a.batch},
            "duration_s": a.duration.as_secs_f64(),
            "cores": crate::cores(),
            "leased_tokens_per_sec": ours.tokens as f64 / ours.secs,
            "leased_redis_commands_per_token": per(ours.client_cmds, ours.tokens),
            "leased_redis_commands_incl_script_inner_per_token": per(ours.all_cmds, ours.tokens),
            "per_call_tokens_per_sec": seed.tokens as f64 / seed.secs,
            "per_call_redis_commands_per_token": per(seed.client_cmds, seed.tokens),
            "per_call_redis_commands_incl_script_inner_per_token": per(seed.all_cmds, seed.tokens),
            "leased_campaign_cap_violations": ours.campaign_violations,
            "leased_global_cap_violations": ours.global_violations,
            "per_call_campaign_cap_violations": seed.campaign_violations,
            "per_call_global_cap_violations": seed.global_violations,
        }),
    )
}
