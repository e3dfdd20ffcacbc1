//! `bench limiter-sync`: what one lease update (the `sync` script) costs Redis when a pool holds
//! many campaigns, as in the 1,000-campaign case: every campaign registered by two holders, then
//! rounds in which each holder updates a slice of them (the campaigns a refresh finds due).
//! Redis's own time per script call comes from `INFO commandstats` (`evalsha` microseconds),
//! so the figure is the script's, not the client's or the network's. Run once with a global cap
//! the claims fit under (the usual case) and once with one that binds (every sync then divides
//! the cap over all the campaigns).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dialer_limiter::RedisBackend;
use dialer_limiter::model::SyncRequest;
use fred::interfaces::ClientLike;
use fred::types::InfoKind;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Redis to use instead of one started by the harness.
    #[arg(long)]
    redis: Option<String>,
    /// Campaigns in the pool.
    #[arg(long, default_value_t = 1000)]
    campaigns: u32,
    /// Campaigns in each update (a holder's due refreshes).
    #[arg(long, default_value_t = 430)]
    per_sync: u32,
    /// Updates measured per case (half from each holder).
    #[arg(long, default_value_t = 200)]
    syncs: u32,
    /// Each campaign's cap.
    #[arg(long, default_value_t = 20)]
    campaign_cap: u32,
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// Redis's count and microseconds of `evalsha` so far.
async fn script_time(client: &fred::clients::Client) -> Result<(u64, u64)> {
    let info: String = client.info(Some(InfoKind::CommandStats)).await?;
    let line = info.lines().find_map(|l| l.strip_prefix("cmdstat_evalsha:")).unwrap_or("");
    let field = |k: &str| line.split(',').find_map(|kv| kv.strip_prefix(k)).and_then(|v| v.parse().ok());
    Ok((field("calls=").unwrap_or(0), field("usec=").unwrap_or(0)))
}

/// One case's figures.
struct Case {
    global_cap: u32,
    syncs: u64,
    redis_us_per_sync: f64,
    client_ms_per_sync: f64,
}

/// One holder's update of `campaigns` in round `round`; demand and want move a little every round,
/// as a refresh reports them.
fn requests(campaigns: &[Uuid], round: u32, generation: &mut u64, cap: u32) -> Vec<SyncRequest> {
    let demand = 3 + round % 4;
    campaigns
        .iter()
        .map(|c| {
            *generation += 1;
            SyncRequest {
                campaign: *c,
                want: demand + 2,
                generation: *generation,
                campaign_cap: cap,
                in_use: 2,
                demand,
                weight: 1,
            }
        })
        .collect()
}

async fn case(a: &Args, url: &str, global_cap: u32, pb: &ProgressBar) -> Result<Case> {
    let prefix = format!("{{bench-sync{}-{global_cap}}}:", std::process::id());
    let backend = RedisBackend::connect(url, &prefix, Duration::from_secs(30)).await?;
    let campaigns: Vec<Uuid> = (0..a.campaigns).map(|i| Uuid::from_u128(u128::from(i) + 1)).collect();
    let ttl = Duration::from_secs(600);
    let holders = ["a", "b"];
    let mut generation = 1u64;
    let mut epochs = [0u64; 2];
    for h in 0..2 {
        let reqs = requests(&campaigns, 0, &mut generation, a.campaign_cap);
        epochs[h] = backend.sync(holders[h], ttl, global_cap, epochs[h], &reqs).await?.epoch;
    }
    let (c0, us0) = script_time(backend.client()).await?;
    let t0 = Instant::now();
    let n = a.per_sync.min(a.campaigns) as usize;
    for s in 0..a.syncs {
        let h = (s % 2) as usize;
        let start = (s as usize * n) % campaigns.len();
        let slice: Vec<Uuid> = campaigns.iter().cycle().skip(start).take(n).copied().collect();
        let reqs = requests(&slice, s + 1, &mut generation, a.campaign_cap);
        epochs[h] = backend.sync(holders[h], ttl, global_cap, epochs[h], &reqs).await?.epoch;
        pb.inc(1);
    }
    let client_s = t0.elapsed().as_secs_f64();
    let (c1, us1) = script_time(backend.client()).await?;
    let syncs = c1 - c0;
    anyhow::ensure!(syncs >= u64::from(a.syncs), "Redis counted {syncs} script calls for {} updates", a.syncs);
    Ok(Case {
        global_cap,
        syncs,
        redis_us_per_sync: (us1 - us0) as f64 / syncs as f64,
        client_ms_per_sync: 1000.0 * client_s / f64::from(a.syncs),
    })
}

pub async fn run(a: Args) -> Result<()> {
    let (url, _server) = crate::redis_or(a.redis.as_ref())?;
    println!(
        "limiter-sync: {} campaigns × cap {} on two holders, {} campaigns per update, {} updates per case, Redis {url}",
        a.campaigns, a.campaign_cap, a.per_sync, a.syncs
    );
    // Each holder wants at most 6 + 2 a campaign: twice that per campaign fits under `fits`.
    let fits = a.campaigns * 20;
    let binds = a.campaigns * 2;
    let pb = ProgressBar::new(2 * u64::from(a.syncs));
    pb.set_style(
        ProgressStyle::with_template("limiter-sync {bar:40} {pos}/{len} updates")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut cases = Vec::new();
    for gcap in [fits, binds] {
        cases.push(case(&a, &url, gcap, &pb).await.with_context(|| format!("global cap {gcap}"))?);
    }
    pb.finish_and_clear();
    println!(
        "{:<32} {:>12} {:>20} {:>22} {:>20}",
        "global cap", "updates", "Redis µs per update", "Redis µs per campaign", "client ms per update"
    );
    for (c, what) in cases.iter().zip(["the claims fit", "binding"]) {
        println!(
            "{:<32} {:>12} {:>20.0} {:>22.2} {:>20.2}",
            format!("{} ({what})", c.global_cap),
            c.syncs,
            c.redis_us_per_sync,
            c.redis_us_per_sync / f64::from(a.per_sync.min(a.campaigns)),
            c.client_ms_per_sync
        );
    }
    println!("cores (nproc): {}", crate::cores());
    let out: Vec<_> = cases
        .iter()
        .map(|c| {
            json!({"global_cap": c.global_cap, "updates": c.syncs, "redis_us_per_update": c.redis_us_per_sync,
                   "client_ms_per_update": c.client_ms_per_sync})
        })
        .collect();
    crate::write_json(
        a.json.as_deref(),
        &json!({
            "scenario": "limiter-sync",
            "settings": {"campaigns": a.campaigns, "per_sync": a.per_sync, "syncs": a.syncs, "campaign_cap": a.campaign_cap},
            "cores": crate::cores(),
            "cases": out,
        }),
    )
}
