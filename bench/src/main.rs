//! `bench`: the benchmark harness. Each scenario is a command that starts the servers it needs
//! through the test harness (unless addresses are given), measures, prints a table and writes
//! `--json PATH`. `bench compare A.json B.json` prints the ratio of every figure.

mod amd;
mod api;
mod broker;
mod caps;
mod chaos;
mod chaos_clock;
mod chaos_disk;
mod chaos_hooks;
mod chaos_sip;
mod chaos_timeline;
mod csv;
mod dataplane;
mod e2e;
mod journal;
mod limiter;
mod limiter_sync;
mod media;
mod occupancy;
mod plot;
mod procstat;
mod restart;
mod rules;
mod sip;
mod targets;
mod webhooks;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde_json::Value;

#[derive(Debug, Parser)]
#[command(name = "bench", about = "Benchmarks of the dialer")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bulk registration: create a campaign with N targets in one request, then re-queue them all
    /// through POST /campaigns/{id}/targets in chunks.
    Targets(targets::Args),
    /// A campaign created from a CSV list streamed to a real `dialer up` (SQLite or a durable
    /// PostgreSQL): rows/s and the server's peak RSS during the upload.
    Csv(csv::Args),
    /// Concurrency tokens: the seed's per-call Redis acquire/release against our batched leases.
    Limiter(limiter::Args),
    /// What one lease update costs Redis with many campaigns in the pool (the `sync` script's own
    /// time, from `INFO commandstats`), with the global cap fitting and binding.
    LimiterSync(limiter_sync::Args),
    /// Dispatch → dial → status through the data plane (in-process bus or Kafka).
    Dataplane(dataplane::Args),
    /// Campaigns end to end through the distributed mode (PostgreSQL, Kafka, Redis).
    E2e(e2e::Args),
    /// The product under binding caps (real `dialer up` or control plane + data planes, seed call
    /// lengths): time-averaged calls in progress and dials/s per campaign vs caps and fair shares.
    Caps(caps::Args),
    /// The real `dialer up` killed mid-campaign and started again: time to full concurrency.
    Restart(restart::Args),
    /// Faults during a distributed run (SIGKILLed data planes, Redis, broker and PostgreSQL
    /// restarts), then checks: no cap violation, no double dial, nothing lost.
    Chaos(chaos::Args),
    /// The control-plane REST API under concurrent load (GET a campaign, POST /calls).
    Api(api::Args),
    /// The Kafka broker's own produce+consume ceiling.
    Broker(broker::Args),
    /// Answering-machine detection on a labelled set of synthetic clips (espeak-ng, sox): the
    /// confusion matrix and the time to decision.
    Amd(amd::Args),
    /// One shard holding thousands of answered calls, each playing a prompt over its own RTP
    /// stream to sipp: packet send lateness and CPU per concurrent stream.
    Media(media::Args),
    /// The attempt journal's group commit: plain write + fdatasync against io_uring.
    Journal(journal::Args),
    /// The recipient's calling rules at scale: a 1M-number DNC import as CSV, and claims of a
    /// 1M-target campaign across every NANP zone beside a campaign 20 times smaller.
    Rules(rules::Args),
    /// The SIP provider of one shard against sipp on loopback, beside sipp's own UAC → UAS rate.
    Sip(sip::Args),
    /// The event log's cost to the recorder (off, on, on while delivering) and webhook deliveries
    /// per second to a local receiver.
    Webhooks(webhooks::Args),
    /// Ratio B/A of every numeric figure of two result files.
    Compare { a: PathBuf, b: PathBuf },
}

/// A Kafka broker: `given` (taken as it is), or an Apache Kafka started by the harness (kept
/// alive by the returned guard) and warmed up before anything is measured: a new broker spends
/// its first seconds compiling its hot paths (about a core, JIT), which a broker that has been
/// running does not.
pub async fn kafka_or(given: Option<&String>) -> Result<(String, Option<dialer_testkit::Kafka>)> {
    if let Some(b) = given {
        return Ok((b.clone(), None));
    }
    let t = dialer_testkit::Kafka::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    warm_up(&t.bootstrap()).await?;
    Ok((t.bootstrap(), Some(t)))
}

/// Rounds of producing and consuming (100,000 messages of 400 bytes, alone and at once) until the
/// broker's own CPU for a round is within 10 % of the round before: its compilation done (3
/// rounds at least, 12 at most).
pub(crate) async fn warm_up(brokers: &str) -> Result<()> {
    let t0 = std::time::Instant::now();
    let mut costs: Vec<f64> = Vec::new();
    for _ in 0..12 {
        let before = procstat::sample().cpu("kafka");
        broker::ceiling(brokers, 400, 100_000).await?;
        let cost = procstat::sample().cpu("kafka") - before;
        let settled = costs.len() >= 2 && costs.last().is_some_and(|last| (cost - last).abs() <= last * 0.1);
        costs.push(cost);
        if settled {
            break;
        }
    }
    let shown: Vec<String> = costs.iter().map(|c| format!("{c:.2}")).collect();
    eprintln!(
        "broker: our own, warmed up for {:.0} s (its CPU seconds per round of 400,000 messages moved: {})",
        t0.elapsed().as_secs_f64(),
        shown.join(", ")
    );
    Ok(())
}

/// A Redis: `given`, or a redis-server started by the harness (kept alive by the returned guard).
pub fn redis_or(given: Option<&String>) -> Result<(String, Option<dialer_testkit::RedisServer>)> {
    if let Some(u) = given {
        return Ok((u.clone(), None));
    }
    let r = dialer_testkit::RedisServer::start().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((r.url(), Some(r)))
}

/// Which store a bench measures (flattened into its arguments).
#[derive(Debug, clap::Args)]
pub struct StoreChoice {
    /// postgres or sqlite (a temp file).
    #[arg(long, default_value = "postgres")]
    pub store: String,
    /// Database URL to use instead of a harness-started server.
    #[arg(long)]
    pub url: Option<String>,
    /// PostgreSQL without fsync, synchronous commit and full-page writes (the tests' server):
    /// faster, not what operators run; the output says so.
    #[arg(long)]
    pub fast_postgres: bool,
}

impl StoreChoice {
    /// The database it names: `--url`, a fresh database on the bench's durable PostgreSQL
    /// (`--fast-postgres`: on the tests' server), or a SQLite file (see [`store_url`]).
    pub fn database(&self) -> Result<(String, Option<tempfile::TempDir>)> {
        store_url(&self.store, self.url.as_ref(), self.fast_postgres)
    }
}

/// The bench's own durable PostgreSQL (fsync, synchronous commit and full-page writes on, as
/// operators run it), started once per run.
fn durable_postgres() -> Result<&'static dialer_testkit::Postgres> {
    static PG: std::sync::OnceLock<Result<dialer_testkit::Postgres, String>> = std::sync::OnceLock::new();
    PG.get_or_init(|| dialer_testkit::Postgres::own().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("starting a durable PostgreSQL through the test harness: {e}"))
}

/// A new PostgreSQL database: on the bench's durable server, or with `fast` on the tests' server
/// (fsync, synchronous commit and full-page writes off); says which.
pub fn postgres_database(fast: bool) -> Result<String> {
    let pg = if fast {
        eprintln!("PostgreSQL: fast (fsync, synchronous commit and full-page writes off): not what operators run");
        dialer_testkit::Postgres::shared()
            .map_err(|e| anyhow::anyhow!("starting PostgreSQL through the test harness: {e}"))?
    } else {
        eprintln!("PostgreSQL: durable (fsync, synchronous commit and full-page writes on)");
        durable_postgres()?
    };
    pg.create_database().map_err(anyhow::Error::msg)
}

/// A database for a bench: `url`, or a fresh PostgreSQL database (durable unless `fast`), or a
/// SQLite file in a temp dir (kept alive by the returned guard), by `--store`.
pub fn store_url(store: &str, url: Option<&String>, fast: bool) -> Result<(String, Option<tempfile::TempDir>)> {
    match (url, store) {
        (Some(u), _) => Ok((u.clone(), None)),
        (None, "postgres") => postgres_database(fast).map(|u| (u, None)),
        (None, "sqlite") => {
            let d = tempfile::tempdir()?;
            Ok((format!("sqlite://{}", d.path().join("bench.db").display()), Some(d)))
        }
        (None, other) => anyhow::bail!("--store must be postgres or sqlite, not {other:?}"),
    }
}

/// Where a run's campaigns stand, from the store.
#[derive(Debug, Default)]
pub struct Progress {
    /// Calls completed or failed for good.
    pub terminal: i64,
    /// Campaigns not completed yet.
    pub open: usize,
    /// Attempts recorded.
    pub attempts: i64,
    /// Calls dispatched and not reported started yet, and calls reported started and not ended
    /// (the store's view: what the recorder has written).
    pub queued: i64,
    pub in_progress: i64,
}

pub async fn progress(store: &dialer_control_plane::Store, ids: &[uuid::Uuid]) -> Result<Progress> {
    if let dialer_store::Pool::Postgres(pool) = store.pool() {
        // One statement, whatever the number of campaigns: the bench's own reads must not
        // weigh on the scheduler's ticks it measures (1,000 campaigns were 2,000 reads a tick).
        let (terminal, attempts, queued, in_progress, open): (i64, i64, i64, i64, i64) = sqlx::query_as(
            "SELECT COALESCE(SUM(s.completed_calls + s.failed_calls), 0)::bigint, COALESCE(SUM(s.attempts_total), 0)::bigint, \
             COALESCE(SUM(s.queued_calls), 0)::bigint, COALESCE(SUM(s.in_progress_calls), 0)::bigint, \
             COUNT(*) FILTER (WHERE c.status <> 'completed') \
             FROM campaigns c JOIN campaign_stats s ON s.campaign_id = c.id WHERE c.id = ANY($1)",
        )
        .bind(ids)
        .fetch_one(pool)
        .await?;
        return Ok(Progress { terminal, open: open as usize, attempts, queued, in_progress });
    }
    let mut p = Progress::default();
    for id in ids {
        let s = store.stats(*id).await?;
        p.terminal += s.completed_calls + s.failed_calls;
        p.attempts += s.attempts_total;
        p.queued += s.queued_calls;
        p.in_progress += s.in_progress_calls;
        p.open += usize::from(store.get_campaign(*id).await?.status.as_str() != "completed");
    }
    Ok(p)
}

/// Campaigns whose stats differ from a fresh count of their call rows.
pub async fn stats_mismatches(store: &dialer_control_plane::Store, ids: &[uuid::Uuid]) -> Result<u64> {
    let mut n = 0;
    for id in ids {
        n += u64::from(store.stats(*id).await? != store.recount_stats(*id).await?);
    }
    Ok(n)
}

/// Status events persisted in the SQL timeline for `ids`, counted from its rows: a `started`
/// event sets an attempt's `started_at`, an outcome its `ended_at`.
pub async fn events_persisted(store: &dialer_control_plane::Store, ids: &[uuid::Uuid]) -> Result<i64> {
    let dialer_store::Pool::Postgres(pool) = store.pool() else {
        anyhow::bail!("events_persisted reads PostgreSQL");
    };
    let n: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM((started_at IS NOT NULL)::int + (ended_at IS NOT NULL)::int), 0)::bigint \
         FROM call_attempts WHERE campaign_id = ANY($1)",
    )
    .bind(ids)
    .fetch_one(pool)
    .await?;
    Ok(n)
}

/// Calls whose attempts placed (from the provider's ledger) differ from the attempts the rows
/// count (`1..=attempt_count`), and attempts placed twice: per (call, attempt), not by totals.
#[derive(Debug, Default)]
pub struct AttemptAudit {
    pub calls_mismatched: u64,
    pub placed_twice: u64,
}

pub async fn audit_attempts(
    store: &dialer_control_plane::Store,
    ids: &[uuid::Uuid],
    placed: &[(uuid::Uuid, u32)],
) -> Result<AttemptAudit> {
    let mut by_call: std::collections::HashMap<uuid::Uuid, Vec<u32>> = std::collections::HashMap::new();
    for (call, attempt) in placed {
        by_call.entry(*call).or_default().push(*attempt);
    }
    let mut out = AttemptAudit::default();
    for id in ids {
        let mut after = None;
        loop {
            let q = dialer_store::CallQuery { after, limit: 10_000, ..Default::default() };
            let page = store.list_calls(*id, &q).await?;
            for c in &page {
                let mut got = by_call.remove(&c.id).unwrap_or_default();
                got.sort_unstable();
                let n = got.len();
                got.dedup();
                out.placed_twice += (n - got.len()) as u64;
                out.calls_mismatched += u64::from(got != (1..=c.attempt_count).collect::<Vec<u32>>());
            }
            match page.last() {
                Some(c) if page.len() == 10_000 => after = Some(c.id),
                _ => break,
            }
        }
    }
    out.calls_mismatched += by_call.len() as u64;
    Ok(out)
}

/// Number of CPUs, as `nproc` reports it.
pub fn cores() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// Writes a result file and prints where.
pub fn write_json(path: Option<&Path>, v: &Value) -> Result<()> {
    if let Some(p) = path {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(p, serde_json::to_string_pretty(v)?).with_context(|| format!("writing {}", p.display()))?;
        println!("results written to {}", p.display());
    }
    Ok(())
}

fn compare(a: &Path, b: &Path) -> Result<()> {
    let read = |p: &Path| -> Result<Value> {
        serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("{} is not a bench result file", p.display()))
    };
    let (va, vb) = (read(a)?, read(b)?);
    println!("{:<40} {:>16} {:>16} {:>9}", "figure", "A", "B", "B/A");
    let empty = serde_json::Map::new();
    for (k, x) in va.as_object().unwrap_or(&empty) {
        if let (Some(x), Some(y)) = (x.as_f64(), vb.get(k).and_then(Value::as_f64)) {
            let ratio = if x == 0.0 { "-".to_string() } else { format!("{:.3}", y / x) };
            println!("{k:<40} {x:>16.3} {y:>16.3} {ratio:>9}");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Targets(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(targets::run(args))
        }
        Command::Csv(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(csv::run(args))
        }
        Command::Limiter(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(limiter::run(args))
        }
        Command::LimiterSync(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(limiter_sync::run(args))
        }
        Command::Dataplane(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(dataplane::run(args))
        }
        Command::E2e(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(e2e::run(args))
        }
        Command::Api(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(api::run(args))
        }
        Command::Broker(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(broker::run(args))
        }
        Command::Restart(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(restart::run(args))
        }
        Command::Caps(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(caps::run(args))
        }
        Command::Chaos(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(chaos::run(args))
        }
        Command::Rules(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(rules::run(args))
        }
        Command::Webhooks(args) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(webhooks::run(args))
        }
        Command::Journal(args) => journal::run(args),
        Command::Sip(args) => sip::run(args),
        Command::Amd(args) => amd::run(args),
        Command::Media(args) => media::run(args),
        Command::Compare { a, b } => compare(&a, &b),
    }
}
