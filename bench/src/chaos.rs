//! `bench chaos`: the distributed mode as real processes on loopback — `--control-planes` ×
//! `dialer control-plane` (API, scheduler, recorder, reaper) on one PostgreSQL and
//! `--dataplanes` × `dialer dataplane` (static assignment or one consumer group, one shard each,
//! attempt journal on) over harness-owned durable PostgreSQL, Redis and Apache Kafka — with faults
//! injected while campaigns run: a data plane SIGKILLed and restarted every `--kill-every-s`, a
//! control plane every `--cp-kill-every-s`, a process (data planes and control planes in turn)
//! frozen with SIGSTOP for `--freeze-s`, past its leases, then thawed, redis-server restarted (its
//! data lost), the broker restarted, PostgreSQL restarted (immediate shutdown), the timeline's
//! Cassandra node SIGKILLed and started again (fault `cassandra`). After the faults
//! stop and every campaign completes, it checks the guarantees:
//!
//! - **no cap violation**, from the provider's ledger (the carrier's view: every call placed,
//!   with its planned end, written with `O_APPEND` so a killed process loses nothing): the
//!   global and each campaign's simultaneous calls never exceed their caps;
//! - **no double dial**: no (call, attempt) twice in the ledger, nor two `started` events of one
//!   attempt on the status topic;
//! - **nothing lost**: every target terminal, stats equal to the rows.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dialer_api::campaigns::CreateCampaignRequest;
use dialer_domain::campaign::CampaignAction;
use dialer_domain::messages::{EventKind, StatusEvent};
use dialer_testkit::fixtures::open as open_store;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long faults are injected, in seconds (then the campaigns drain without faults).
    #[arg(long, default_value_t = 120)]
    fault_seconds: u64,
    #[arg(long, default_value_t = 6)]
    campaigns: usize,
    /// Targets per campaign.
    #[arg(long, default_value_t = 2000)]
    targets: usize,
    /// Campaign caps are spread between `--min-campaign-cap` and this.
    #[arg(long, default_value_t = 30)]
    campaign_cap: u32,
    #[arg(long, default_value_t = 5)]
    min_campaign_cap: u32,
    /// TELEPHONY_GLOBAL_MAX_CONCURRENCY (below the sum of the campaign caps, so it binds).
    #[arg(long, default_value_t = 80)]
    global_cap: u32,
    #[arg(long, default_value_t = 2)]
    dataplanes: usize,
    /// Control-plane replicas on the one PostgreSQL (each API, scheduler, recorder, reaper).
    #[arg(long, default_value_t = 2)]
    control_planes: usize,
    /// A control plane is SIGKILLed (and restarted a second later) this often (fault `cp-kill`).
    #[arg(long, default_value_t = 15)]
    cp_kill_every_s: u64,
    /// A process is frozen (SIGSTOP, then SIGCONT `--freeze-s` later) this often, data planes
    /// and control planes in turn (fault `freeze`).
    #[arg(long, default_value_t = 20)]
    freeze_every_s: u64,
    /// How long a frozen process stays stopped: longer than the data planes' 5 s lease and the
    /// group's 6 s session, so the others take over what it held.
    #[arg(long, default_value_t = 8)]
    freeze_s: u64,
    /// A data plane is SIGKILLed (and restarted a second later) this often.
    #[arg(long, default_value_t = 10)]
    kill_every_s: u64,
    /// Mock call length range in ms.
    #[arg(long, default_value = "200-1000")]
    call_ms: String,
    /// Longest mock ring before answer, ms.
    #[arg(long, default_value_t = 50)]
    ring_ms: u64,
    /// Redis, the broker, PostgreSQL and Cassandra are each restarted this often (staggered)
    /// while faults last; 0: once each, at a quarter, half, 60 % and three quarters of
    /// `--fault-seconds`.
    #[arg(long, default_value_t = 0)]
    restart_every_s: u64,
    /// Which faults to inject (comma-separated): kill (a data plane), cp-kill (a control plane),
    /// freeze (SIGSTOP/SIGCONT), redis, broker, postgres, cassandra (SIGKILLed, with
    /// `--cassandra`), webhook (with `--webhooks`), clock
    /// (libfaketime, `apt-get install -y faketime`), disk (the journal's file system full; root);
    /// `none` for a run that only measures (its broker warmed up first, as a running one is; its
    /// `cpu_per_dial` then counts every process: none is killed).
    #[arg(long, default_value = "kill,cp-kill,freeze,redis,broker,postgres", value_delimiter = ',')]
    faults: Vec<String>,
    /// A webhook endpoint of every event on a receiver of the bench's own (failing 5 % of
    /// requests throughout), audited at the end: every event arrived, none before its stream's
    /// previous one. Fault `webhook` takes the receiver down (503 to everything) for
    /// `--webhook-down-s` every `--webhook-down-every-s`.
    #[arg(long)]
    webhooks: bool,
    /// The attempt timeline on Apache Cassandra (a node of the run's own), audited at the end:
    /// every dialled attempt has its row, with its outcome.
    #[arg(long)]
    cassandra: bool,
    #[arg(long, default_value_t = 25)]
    webhook_down_every_s: u64,
    #[arg(long, default_value_t = 8)]
    webhook_down_s: u64,
    /// Fault `clock`: the first control plane runs under libfaketime (its wall clock only: the
    /// monotonic clock runs on, as under an NTP step), and every `--clock-step-every-s` its
    /// clock steps to `--clock-step-s` ahead of the others, then as far behind, in turn.
    #[arg(long, default_value_t = 20)]
    clock_step_every_s: u64,
    #[arg(long, default_value_t = 3)]
    clock_step_s: u64,
    /// Fault `disk`: the data planes' journal on a 16 MiB tmpfs of its own (root), filled to
    /// the last byte for `--disk-full-s` every `--disk-full-every-s`.
    #[arg(long, default_value_t = 30)]
    disk_full_every_s: u64,
    #[arg(long, default_value_t = 6)]
    disk_full_s: u64,
    /// How long the campaigns may take to finish after the faults stop.
    #[arg(long, default_value_t = 600)]
    settle_timeout_s: u64,
    /// How the data planes share the dispatch partitions: `static` (instance K of N reads its
    /// own; a killed one's partitions wait for its restart) or `group` (one consumer group: a
    /// killed member's partitions go to the others once its session times out, 6 s).
    #[arg(long, default_value = "static")]
    assignment: String,
    /// With `--assignment group`: `eager` or `cooperative_sticky`.
    #[arg(long, default_value = "eager")]
    assignor: String,
    #[command(flatten)]
    sip: crate::chaos_sip::SipArgs,
    /// The `dialer` binary (default: next to this one; build it with `cargo build --release -p dialer`).
    #[arg(long)]
    dialer: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

pub(crate) fn dialer_bin(given: Option<&PathBuf>) -> Result<PathBuf> {
    let p = match given {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("dialer"),
    };
    if !p.exists() {
        bail!(
            "{} not found: build it first with `cargo build -p dialer` (same profile as bench) or pass --dialer",
            p.display()
        );
    }
    Ok(p)
}

/// A `dialer` process of the run, restartable.
pub(crate) struct Proc {
    pub(crate) name: String,
    pub(crate) cmd: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
}

impl Proc {
    pub(crate) fn spawn(&mut self, bin: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut c = Command::new(bin);
        c.args(&self.cmd).stdin(Stdio::null()).stdout(Stdio::from(log.try_clone()?)).stderr(Stdio::from(log));
        // The benches' numbers (+1555…) map to no zone: recipient windows would hold them by the
        // time of day. `bench rules` measures the rules themselves.
        c.env("DIALER_CALLING_RULES_ENABLED", "false");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        let child = c.spawn().with_context(|| format!("starting {}", self.name))?;
        dialer_testkit::end_with_this_process(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// The running process's id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One call placed, from a ledger line.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Placed {
    pub(crate) call: Uuid,
    pub(crate) attempt: u32,
    pub(crate) campaign: Uuid,
    pub(crate) start_us: u64,
    pub(crate) end_us: u64,
}

pub(crate) fn read_ledgers(dir: &Path) -> Result<Vec<Placed>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ledger-")) {
            continue;
        }
        for line in std::fs::read_to_string(&p)?.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if let [call, attempt, campaign, start, end] = f[..] {
                out.push(Placed {
                    call: call.parse()?,
                    attempt: attempt.parse()?,
                    campaign: campaign.parse()?,
                    start_us: start.parse()?,
                    end_us: end.parse()?,
                });
            }
        }
    }
    Ok(out)
}

/// Starts that found their cap full (global or campaign), sweeping the calls' intervals; and the
/// highest global concurrency seen.
pub(crate) fn cap_violations(calls: &[Placed], global_cap: u32, caps: &HashMap<Uuid, u32>) -> (u64, i64) {
    let s = sweep(calls, global_cap, caps);
    (s.violations, s.max_global)
}

/// What a sweep over the calls' intervals found.
pub(crate) struct Sweep {
    pub violations: u64,
    pub max_global: i64,
    /// Each campaign's highest concurrency.
    pub peaks: HashMap<Uuid, i64>,
}

pub(crate) fn sweep(calls: &[Placed], global_cap: u32, caps: &HashMap<Uuid, u32>) -> Sweep {
    let mut edges: Vec<(u64, i8, Uuid)> = Vec::with_capacity(calls.len() * 2);
    for c in calls {
        edges.push((c.start_us, 1, c.campaign));
        edges.push((c.end_us, -1, c.campaign));
    }
    // Ends before starts at the same instant.
    edges.sort_by_key(|(t, d, _)| (*t, *d));
    let (mut global, mut max, mut violations) = (0i64, 0i64, 0u64);
    let mut per: HashMap<Uuid, i64> = HashMap::new();
    let mut peaks: HashMap<Uuid, i64> = HashMap::new();
    for (_, d, c) in edges {
        global += i64::from(d);
        let n = per.entry(c).or_default();
        *n += i64::from(d);
        if d > 0 {
            max = max.max(global);
            let peak = peaks.entry(c).or_default();
            *peak = (*peak).max(*n);
            let cap = caps.get(&c).copied().unwrap_or(u32::MAX);
            if global > i64::from(global_cap) || *n > i64::from(cap) {
                violations += 1;
            }
        }
    }
    Sweep { violations, max_global: max, peaks }
}

/// What the status topic holds, read from the start by a reader of its own.
struct Audit {
    /// Second `started` events of an attempt (a second dial).
    started_duplicates: u64,
    events: u64,
    /// Attempts with an outcome event.
    outcomes: std::collections::HashSet<(Uuid, u32)>,
    /// Attempts not dialled because the journal could not record them (fault `disk`).
    journal_unavailable: u64,
    /// Each call's campaign, as its events name it.
    campaigns: HashMap<Uuid, Uuid>,
}

async fn audit_status_topic(brokers: &str, topic: &str) -> Result<Audit> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("chaos-audit-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    c.subscribe(&[topic])?;
    let mut started: HashMap<(Uuid, u32), u32> = HashMap::new();
    let mut outcomes = std::collections::HashSet::new();
    let mut events = 0u64;
    let mut journal_unavailable = 0u64;
    let mut campaigns = HashMap::new();
    let mut quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(5) {
        if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
            quiet = Instant::now();
            events += 1;
            let Ok(e) = StatusEvent::decode(m.payload().unwrap_or_default()) else { continue };
            campaigns.insert(e.call_id, e.campaign_id);
            if e.kind == EventKind::Started {
                *started.entry((e.call_id, e.attempt)).or_default() += 1;
            } else {
                outcomes.insert((e.call_id, e.attempt));
                journal_unavailable += u64::from(e.reason.as_deref() == Some("journal_unavailable"));
            }
        }
    }
    let started_duplicates = started.values().map(|n| u64::from(n.saturating_sub(1))).sum();
    Ok(Audit { started_duplicates, events, outcomes, journal_unavailable, campaigns })
}

/// The servers and processes of a chaos run, and where their logs and ledgers go.
struct Cluster {
    bin: PathBuf,
    pg: dialer_testkit::Postgres,
    /// The webhook receiver (`--webhooks`).
    hooks: Option<dialer_testkit::receiver::Receiver>,
    db: String,
    redis: dialer_testkit::RedisServer,
    kafka: dialer_testkit::Kafka,
    /// The timeline's node (`--cassandra`), its commit log synced before a write is acknowledged
    /// (a SIGKILL loses nothing acknowledged, as with a replica elsewhere).
    cassandra: Option<Arc<dialer_testkit::Cassandra>>,
    /// A Cassandra restart under way (it takes tens of seconds: the other faults go on meanwhile).
    cassandra_restart: Option<tokio::task::JoinHandle<Result<(), dialer_testkit::HarnessError>>>,
    /// The journal's own file system (fault `disk`), unmounted before `work` is removed.
    journal_fs: Option<crate::chaos_disk::Tmpfs>,
    /// The SIP trunks' far ends (`--sip`).
    sip: Option<crate::chaos_sip::Trunks>,
    work: tempfile::TempDir,
    cps: Vec<Proc>,
    dps: Vec<Proc>,
}

const FAULTS: [&str; 12] = [
    "kill",
    "cp-kill",
    "freeze",
    "redis",
    "broker",
    "postgres",
    "cassandra",
    "webhook",
    "clock",
    "disk",
    "sip-kill",
    "sip-503",
];

pub async fn run(a: Args) -> Result<()> {
    if a.min_campaign_cap == 0 || a.min_campaign_cap > a.campaign_cap {
        bail!("--min-campaign-cap must be between 1 and --campaign-cap ({})", a.campaign_cap);
    }
    for f in a.faults.iter().filter(|f| *f != "none") {
        if !FAULTS.contains(&f.as_str()) {
            bail!("--faults: unknown fault {f:?}; pick from {}", FAULTS.join(", "));
        }
    }
    if a.faults.iter().any(|f| f == "webhook") && !a.webhooks {
        bail!("--faults webhook needs --webhooks (the endpoint whose receiver goes down)");
    }
    if a.faults.iter().any(|f| f.starts_with("sip-")) && !a.sip.sip {
        bail!("--faults sip-kill and sip-503 need --sip (the trunks whose far ends fail)");
    }
    if a.faults.iter().any(|f| f == "cassandra") && !a.cassandra {
        bail!("--faults cassandra needs --cassandra (the timeline's node that is killed)");
    }
    let mut cluster = start_cluster(&a).await?;
    if let Some(rx) = &cluster.hooks {
        crate::chaos_hooks::register(&cluster.db, rx).await?;
    }
    let (ids, caps) = create_campaigns(&a, &cluster.db).await?;
    let t0 = Instant::now();
    let redis0 = crate::procstat::redis_commands(&cluster.redis.url());
    let cost0 = (crate::procstat::sample(), crate::procstat::pg_counts(&cluster.db).await);
    let faults = inject_faults(&a, &mut cluster, t0).await?;
    let completed = settle(&a, &mut cluster, &ids).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let hooks = match &cluster.hooks {
        Some(rx) => {
            rx.set_mode(crate::chaos_hooks::up_mode());
            let wait = Duration::from_secs(a.settle_timeout_s);
            Some(crate::chaos_hooks::wait_and_audit(&cluster.db, &ids, rx, wait).await?)
        }
        None => None,
    };
    // What the run cost (processes killed in it are not counted: run with no faults to size).
    let end = (crate::procstat::sample(), crate::procstat::pg_counts(&cluster.db).await);
    let redis = redis0.zip(crate::procstat::redis_commands(&cluster.redis.url())).map(|(a, b)| b - a);
    let cost = Cost { start: cost0, end, redis };
    for p in cluster.dps.iter_mut().chain(cluster.cps.iter_mut()) {
        p.stop();
    }
    let run = Run { faults, completed, elapsed, cost, hooks };
    check_guarantees(&a, cluster, &ids, &caps, &run).await
}

/// Starts the servers (of the run's own), the control plane and the data planes.
async fn start_cluster(a: &Args) -> Result<Cluster> {
    let bin = dialer_bin(a.dialer.as_ref())?;
    let (min_ms, max_ms) = a.call_ms.split_once('-').context("--call-ms is MIN-MAX")?;
    let (min_ms, max_ms): (u64, u64) = (min_ms.parse()?, max_ms.parse()?);
    let err = |e: dialer_testkit::HarnessError| anyhow::anyhow!("{e}");
    let pg = dialer_testkit::Postgres::own().map_err(err)?;
    let db = pg.create_database().map_err(anyhow::Error::msg)?;
    let redis = dialer_testkit::RedisServer::start().map_err(err)?;
    let kafka = dialer_testkit::Kafka::start().map_err(err)?;
    if a.faults.iter().all(|f| f == "none") {
        // A run that only measures measures a broker past its JIT, as operators run it.
        crate::warm_up(&kafka.bootstrap()).await?;
    }
    let cassandra = a.cassandra.then(dialer_testkit::Cassandra::start_durable).transpose().map_err(err)?.map(Arc::new);
    let work = tempfile::Builder::new().prefix("dialer-chaos-").tempdir()?;
    let w = work.path();
    let api_ports: Vec<u16> = (0..a.control_planes.max(1)).map(|_| dialer_testkit::free_port()).collect();
    let sip = a
        .sip
        .sip
        .then(|| crate::chaos_sip::Trunks::start(&a.sip, a.global_cap, (min_ms, max_ms), a.ring_ms))
        .transpose()?;
    let provider = match &sip {
        Some(trunks) => trunks.provider_config(),
        None => format!("[provider]\nmin_call_ms = {min_ms}\nmax_call_ms = {max_ms}\nmax_ring_ms = {}\n", a.ring_ms),
    };
    let partitions = (a.dataplanes * 4).max(8);
    std::fs::write(
        w.join("dialer.toml"),
        format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\n\
             [store]\nurl = \"{db}\"\nmax_connections = 16\n\
             [limits]\nglobal_max_concurrency = {g}\nper_campaign_max_concurrency = {cc}\nsemaphore_ttl_sec = 30\n\
             redis_url = \"{r}\"\nreconcile_every_sec = 5\n\
             [bus]\nkind = \"kafka\"\nbrokers = \"{b}\"\ndispatch_partitions = {partitions}\n\
             {provider}\
             [scheduler]\ninterval_ms = 200\ndispatch_ttl_sec = 60\n{hooks}{timeline}",
            hooks = if a.webhooks { crate::chaos_hooks::CONFIG } else { "" },
            timeline = cassandra.as_ref().map(|c| crate::chaos_timeline::config(&c.node())).unwrap_or_default(),
            api = api_ports[0],
            g = a.global_cap,
            cc = a.campaign_cap,
            r = redis.url(),
            b = kafka.bootstrap(),
        ),
    )?;
    write_tuning(a, w, partitions)?;
    let config = w.join("dialer.toml").display().to_string();
    let clock =
        a.faults.iter().any(|f| f == "clock").then(|| crate::chaos_clock::SteppedClock::prepare(w)).transpose()?;
    let mut cps = control_plane_procs(w, &config, &api_ports, clock.as_ref());
    for (cp, port) in cps.iter_mut().zip(&api_ports) {
        cp.spawn(&bin)?;
        if !dialer_testkit::wait_for_port(*port, Duration::from_secs(60)) {
            bail!("{} did not start; its log:\n{}", cp.name, std::fs::read_to_string(&cp.log).unwrap_or_default());
        }
    }
    let disk = a.faults.iter().any(|f| f == "disk");
    // Room for every partition's file at its largest (journal.compact_after appends, plus the
    // attempts kept until their deadline) and its compacted copy: what the data planes need
    // between faults; the fault fills the rest.
    let journal_fs = disk.then(|| crate::chaos_disk::Tmpfs::mount(&w.join("journal"), 64)).transpose()?;
    let mut dps = dataplane_procs(a, w, &config);
    for d in &mut dps {
        d.spawn(&bin)?;
    }
    let hooks = a.webhooks.then(|| dialer_testkit::receiver::Receiver::start(crate::chaos_hooks::up_mode(), 11));
    Ok(Cluster {
        bin,
        pg,
        hooks,
        db,
        redis,
        kafka,
        cassandra,
        cassandra_restart: None,
        journal_fs,
        sip,
        work,
        cps,
        dps,
    })
}

/// The data planes' tuning: one shard each, the assignment chosen, small leases (faults
/// reclaim them fast), journal files rewritten every 20,000 appends (a data plane that is not
/// killed otherwise grows each file to 200,000 records, ~15 MB, before its first rewrite).
fn write_tuning(a: &Args, w: &Path, partitions: usize) -> Result<()> {
    let assignment = match (a.assignment.as_str(), a.assignor.as_str()) {
        ("static", _) => "assignment = \"static\"\n[kafka]\ncommit_every_ms = 100\n".to_string(),
        ("group", assignor @ ("eager" | "cooperative_sticky")) => format!(
            "assignment = \"group\"\n[kafka]\ncommit_every_ms = 100\nassignor = \"{assignor}\"\nsession_timeout_ms = 6000\n"
        ),
        (x, y) => bail!("--assignment static|group and --assignor eager|cooperative_sticky, not {x:?} / {y:?}"),
    };
    std::fs::write(
        w.join("tuning.toml"),
        format!(
            "[shards]\ncount = 1\npartitions = {partitions}\n{assignment}\
             [lease]\nbatch = 8\nlow_water = 2\nttl_ms = 5000\nrenew_every_ms = 1000\nidle_give_back_ms = 1000\n\
             [shutdown]\ngrace_ms = 5000\n[journal]\ncompact_after = 20000\n"
        ),
    )?;
    Ok(())
}

/// The control-plane replicas (not started), one per API port; with `clock` (fault `clock`),
/// the first on a wall clock offset by what that file says (libfaketime reads it at most once a
/// second; the monotonic clock is left alone).
fn control_plane_procs(
    w: &Path,
    config: &str,
    ports: &[u16],
    clock: Option<&crate::chaos_clock::SteppedClock>,
) -> Vec<Proc> {
    ports
        .iter()
        .enumerate()
        .map(|(k, port)| {
            // A stable name per replica, as a StatefulSet gives: its recorders are static
            // members of their group and take their partitions back at once after a kill.
            let mut env = vec![
                ("DIALER_API_LISTEN".into(), format!("127.0.0.1:{port}")),
                ("DIALER_BUS_INSTANCE_ID".into(), format!("control-plane-{k}")),
            ];
            if let Some(clock) = clock.filter(|_| k == 0) {
                env.extend(clock.env());
            }
            Proc {
                name: format!("control-plane-{k}"),
                cmd: vec!["--config".into(), config.to_string(), "control-plane".into()],
                env,
                log: w.join(format!("control-plane-{k}.log")),
                child: None,
            }
        })
        .collect()
}

/// The data-plane processes (not started): static instances K of N, or members of one group;
/// one journal directory (one host), a ledger each.
fn dataplane_procs(a: &Args, w: &Path, config: &str) -> Vec<Proc> {
    (0..a.dataplanes)
        .map(|k| {
            let mut cmd = vec![
                "--config".into(),
                config.to_string(),
                "dataplane".into(),
                "--tuning".into(),
                w.join("tuning.toml").display().to_string(),
                "--admin".into(),
                format!("127.0.0.1:{}", dialer_testkit::free_port()),
                "--journal-dir".into(),
                w.join("journal").display().to_string(),
            ];
            if a.assignment == "static" {
                cmd.extend(["--instance".into(), k.to_string(), "--instances".into(), a.dataplanes.to_string()]);
            }
            Proc {
                name: format!("dataplane-{k}"),
                cmd,
                env: vec![("DIALER_PROVIDER_LEDGER".into(), w.join(format!("ledger-{k}")).display().to_string())],
                log: w.join(format!("dataplane-{k}.log")),
                child: None,
            }
        })
        .collect()
}

/// The campaigns, created and started through the store (the API is not under test here), with
/// caps spread between `--min-campaign-cap` and `--campaign-cap`.
async fn create_campaigns(a: &Args, db: &str) -> Result<(Vec<Uuid>, HashMap<Uuid, u32>)> {
    let store = open_store(db).await;
    let mut caps: HashMap<Uuid, u32> = HashMap::new();
    let mut ids = Vec::new();
    for i in 0..a.campaigns {
        let cap = a.min_campaign_cap + (i as u32 * 7) % (a.campaign_cap - a.min_campaign_cap + 1);
        let targets: Vec<_> =
            (0..a.targets).map(|k| json!({"phone_number": format!("+1{:03}{:07}", 200 + i, k)})).collect();
        let req: CreateCampaignRequest = serde_json::from_value(json!({
            "name": format!("chaos-{i}"), "max_concurrent_calls": cap,
            "retry_policy": {"max_attempts": 3, "base_delay": "200ms", "max_delay": "2s"},
            "targets": targets
        }))?;
        let c = store.create_campaign(&req.validate(1_000_000).map_err(|e| anyhow::anyhow!("{e:?}"))?).await?;
        store.transition(c.id, CampaignAction::Start).await?;
        caps.insert(c.id, cap);
        ids.push(c.id);
    }
    store.close().await;
    Ok((ids, caps))
}

/// Faults injected during the run.
#[derive(Debug, Default)]
struct Faults {
    kills: u64,
    cp_kills: u64,
    freezes: u64,
    redis_restarts: u64,
    broker_restarts: u64,
    pg_restarts: u64,
    cassandra_restarts: u64,
    webhook_outages: u64,
    clock_steps: u64,
    disk_fulls: u64,
}

/// When each server restart comes: a quarter, half, 60 % and three quarters in, or every
/// `--restart-every-s` (the kinds staggered).
fn restart_schedule(a: &Args, t0: Instant) -> Vec<(Instant, &'static str)> {
    let fault_end = t0 + Duration::from_secs(a.fault_seconds);
    let at = |f: f64| t0 + Duration::from_secs_f64(a.fault_seconds as f64 * f);
    let mut scheduled: Vec<(Instant, &'static str)> = if a.restart_every_s == 0 {
        vec![(at(0.25), "redis"), (at(0.5), "postgres"), (at(0.6), "cassandra"), (at(0.75), "broker")]
    } else {
        let every = Duration::from_secs(a.restart_every_s);
        let mut v = vec![];
        for (k, f) in ["redis", "broker", "postgres", "cassandra"].into_iter().enumerate() {
            let mut t = t0 + every * (k as u32 + 1) / 4;
            while t < fault_end {
                v.push((t, f));
                t += every;
            }
        }
        v.sort_by_key(|(t, _)| *t);
        v
    };
    scheduled.retain(|(_, f)| a.faults.iter().any(|x| x == f));
    scheduled
}

/// When the next fault of each periodic kind comes, and the frozen process to thaw.
struct Clock {
    kill: Instant,
    cp_kill: Instant,
    freeze: Instant,
    /// When to send SIGCONT, to which process, and its name.
    thaw: Option<(Instant, u32, String)>,
    /// The webhook receiver's next outage, and when the one under way ends.
    hook_down: Instant,
    hook_up: Option<Instant>,
    /// The next clock step of the first control plane.
    step: Instant,
    /// The journal's disk: when it next fills, and when the fill under way is freed.
    disk_full: Instant,
    disk_free: Option<Instant>,
}

/// Sends `signal` (`STOP`, `CONT`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).stderr(Stdio::null()).status();
}

/// SIGKILLs the process whose `turn` it is and starts it again a second later; its name.
async fn kill_and_restart(procs: &mut [Proc], turn: u64, bin: &Path) -> Result<String> {
    let k = turn as usize % procs.len();
    procs[k].kill9();
    tokio::time::sleep(Duration::from_secs(1)).await;
    procs[k].spawn(bin)?;
    Ok(procs[k].name.clone())
}

/// The periodic faults due now: a data plane or a control plane SIGKILLed and restarted, a
/// process frozen (data planes and control planes in turn) or thawed.
async fn periodic_faults(a: &Args, c: &mut Cluster, f: &mut Faults, clock: &mut Clock) -> Result<Option<String>> {
    let on = |x: &str| a.faults.iter().any(|y| y == x);
    let now = Instant::now();
    if let Some((at, pid, name)) = clock.thaw.take() {
        if now < at {
            clock.thaw = Some((at, pid, name));
        } else {
            signal(pid, "CONT");
            return Ok(Some(format!("SIGCONT {name}")));
        }
    }
    if let Some(what) = webhook_outage(a, c, f, clock, now) {
        return Ok(Some(what));
    }
    if let Some(what) = clock_step(a, c, f, clock, now)? {
        return Ok(Some(what));
    }
    if let Some(what) = disk_full(a, c, f, clock, now)? {
        return Ok(Some(what));
    }
    if let Some(trunks) = c.sip.as_mut()
        && let Some(what) = trunks.fault(on("sip-kill"), on("sip-503"), now)?
    {
        return Ok(Some(what));
    }
    if on("kill") && now >= clock.kill {
        clock.kill += Duration::from_secs(a.kill_every_s);
        f.kills += 1;
        let name = kill_and_restart(&mut c.dps, f.kills - 1, &c.bin).await?;
        return Ok(Some(format!("SIGKILL {name} (data-plane kills {})", f.kills)));
    }
    if on("cp-kill") && now >= clock.cp_kill {
        clock.cp_kill += Duration::from_secs(a.cp_kill_every_s);
        f.cp_kills += 1;
        let name = kill_and_restart(&mut c.cps, f.cp_kills - 1, &c.bin).await?;
        return Ok(Some(format!("SIGKILL {name} (control-plane kills {})", f.cp_kills)));
    }
    if on("freeze") && now >= clock.freeze && clock.thaw.is_none() {
        clock.freeze += Duration::from_secs(a.freeze_every_s);
        let k = f.freezes as usize / 2;
        let p = if f.freezes.is_multiple_of(2) { &c.dps[k % c.dps.len()] } else { &c.cps[k % c.cps.len()] };
        f.freezes += 1;
        if let Some(pid) = p.pid() {
            signal(pid, "STOP");
            clock.thaw = Some((now + Duration::from_secs(a.freeze_s), pid, p.name.clone()));
            return Ok(Some(format!("SIGSTOP {} for {} s", p.name, a.freeze_s)));
        }
    }
    Ok(None)
}

/// The webhook receiver taken down (503 to everything) when its outage is due, and up again
/// when it has lasted `--webhook-down-s` (fault `webhook`).
fn webhook_outage(a: &Args, c: &Cluster, f: &mut Faults, clock: &mut Clock, now: Instant) -> Option<String> {
    let rx = c.hooks.as_ref().filter(|_| a.faults.iter().any(|x| x == "webhook"))?;
    if let Some(up) = clock.hook_up {
        if now < up {
            return None;
        }
        clock.hook_up = None;
        rx.set_mode(crate::chaos_hooks::up_mode());
        return Some("webhook receiver up".into());
    }
    if now < clock.hook_down {
        return None;
    }
    clock.hook_down += Duration::from_secs(a.webhook_down_every_s);
    clock.hook_up = Some(now + Duration::from_secs(a.webhook_down_s));
    f.webhook_outages += 1;
    rx.set_mode(dialer_testkit::receiver::Mode::Always(503));
    Some(format!("webhook receiver down for {} s", a.webhook_down_s))
}

/// The first control plane's wall clock stepped when due (fault `clock`): `--clock-step-s`
/// ahead of the others, then as far behind, in turn.
fn clock_step(a: &Args, c: &Cluster, f: &mut Faults, clock: &mut Clock, now: Instant) -> Result<Option<String>> {
    if !a.faults.iter().any(|x| x == "clock") || now < clock.step {
        return Ok(None);
    }
    clock.step += Duration::from_secs(a.clock_step_every_s);
    let sign = if f.clock_steps.is_multiple_of(2) { '+' } else { '-' };
    f.clock_steps += 1;
    std::fs::write(c.work.path().join("faketime"), format!("{sign}{}", a.clock_step_s))?;
    Ok(Some(format!("{}'s clock now {sign}{} s", c.cps[0].name, a.clock_step_s)))
}

/// The journal's file system filled when due (fault `disk`), and freed `--disk-full-s` later.
fn disk_full(a: &Args, c: &Cluster, f: &mut Faults, clock: &mut Clock, now: Instant) -> Result<Option<String>> {
    let Some(fs) = &c.journal_fs else { return Ok(None) };
    if let Some(free) = clock.disk_free {
        if now < free {
            return Ok(None);
        }
        clock.disk_free = None;
        fs.empty()?;
        return Ok(Some("journal disk freed".into()));
    }
    if now < clock.disk_full {
        return Ok(None);
    }
    clock.disk_full += Duration::from_secs(a.disk_full_every_s);
    clock.disk_free = Some(now + Duration::from_secs(a.disk_full_s));
    f.disk_fulls += 1;
    let took = fs.fill()?;
    Ok(Some(format!("journal disk full ({} KiB taken) for {} s", took / 1024, a.disk_full_s)))
}

/// Restarts the server whose turn it is; what it restarted.
async fn restart_server(c: &mut Cluster, f: &mut Faults, what: &str) -> Result<()> {
    let err = |e: dialer_testkit::HarnessError| anyhow::anyhow!("{e}");
    match what {
        "redis" => {
            c.redis.restart().map_err(err)?;
            f.redis_restarts += 1;
        }
        "cassandra" => {
            let Some(node) = c.cassandra.clone() else { return Ok(()) };
            if c.cassandra_restart.as_ref().is_some_and(|h| !h.is_finished()) {
                return Ok(()); // the last one is still starting
            }
            settle_cassandra_restart(c).await?;
            node.kill();
            c.cassandra_restart = Some(tokio::task::spawn_blocking(move || {
                std::thread::sleep(Duration::from_secs(2));
                node.restart()
            }));
            f.cassandra_restarts += 1;
        }
        "broker" => {
            c.kafka.kill();
            tokio::time::sleep(Duration::from_secs(2)).await;
            c.kafka.restart().map_err(err)?;
            f.broker_restarts += 1;
        }
        _ => {
            c.pg.restart().map_err(err)?;
            f.pg_restarts += 1;
        }
    }
    Ok(())
}

/// Waits for a Cassandra restart under way to finish; its error, if it did not start again.
async fn settle_cassandra_restart(c: &mut Cluster) -> Result<()> {
    if let Some(h) = c.cassandra_restart.take() {
        h.await?.map_err(|e| anyhow::anyhow!("Cassandra did not start again: {e}"))?;
    }
    Ok(())
}

/// Injects the faults chosen for `--fault-seconds`: SIGKILLs of data planes and control planes,
/// freezes, and the servers' restarts on schedule. A process still frozen at the end is thawed.
async fn inject_faults(a: &Args, c: &mut Cluster, t0: Instant) -> Result<Faults> {
    let pb = ProgressBar::new(a.fault_seconds);
    pb.set_style(
        ProgressStyle::with_template("chaos {bar:40} {pos}/{len} s of faults  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let fault_end = t0 + Duration::from_secs(a.fault_seconds);
    let mut f = Faults::default();
    let after = |s: u64| t0 + Duration::from_secs(s);
    let mut clock = Clock {
        kill: after(a.kill_every_s),
        cp_kill: after(a.cp_kill_every_s),
        freeze: after(a.freeze_every_s),
        thaw: None,
        hook_down: after(a.webhook_down_every_s),
        hook_up: None,
        step: after(a.clock_step_every_s),
        disk_full: after(a.disk_full_every_s),
        disk_free: None,
    };
    let mut scheduled = restart_schedule(a, t0);
    while Instant::now() < fault_end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pb.set_position(t0.elapsed().as_secs());
        if let Some(what) = periodic_faults(a, c, &mut f, &mut clock).await? {
            pb.set_message(what);
        }
        if let Some(pos) = scheduled.iter().position(|(t, _)| Instant::now() >= *t) {
            let (_, what) = scheduled.remove(pos);
            pb.set_message(format!("restarting {what}"));
            restart_server(c, &mut f, what).await?;
        }
    }
    if let Some((_, pid, _)) = clock.thaw.take() {
        signal(pid, "CONT");
    }
    settle_cassandra_restart(c).await?;
    // What is still down comes back for the drain: the journal's disk, the webhook receiver.
    if let Some(fs) = &c.journal_fs {
        fs.empty()?;
    }
    if let Some(rx) = &c.hooks {
        rx.set_mode(crate::chaos_hooks::up_mode());
    }
    if let Some(trunks) = &mut c.sip {
        trunks.end_faults()?;
    }
    pb.finish_and_clear();
    println!(
        "faults over after {:.0} s: {} data-plane kills, {} control-plane kills, {} freezes, {} Redis, {} broker, \
         {} PostgreSQL, {} Cassandra restarts; waiting for the campaigns to finish",
        t0.elapsed().as_secs_f64(),
        f.kills,
        f.cp_kills,
        f.freezes,
        f.redis_restarts,
        f.broker_restarts,
        f.pg_restarts,
        f.cassandra_restarts
    );
    Ok(f)
}

/// Waits until every campaign completes by itself (or `--settle-timeout-s`); whether they did.
/// The first product process that has exited by itself (none is killed once the faults stop).
fn exited(procs: &mut [Proc]) -> Option<String> {
    procs.iter_mut().find_map(|p| {
        let status = p.child.as_mut()?.try_wait().ok()??;
        Some(format!("{} exited by itself ({status}); its log: {}", p.name, p.log.display()))
    })
}

async fn settle(a: &Args, c: &mut Cluster, ids: &[Uuid]) -> Result<bool> {
    let db = &c.db;
    let total = (a.campaigns * a.targets) as i64;
    let store = open_store(db).await;
    let settle = Instant::now() + Duration::from_secs(a.settle_timeout_s);
    let spin = ProgressBar::new(total as u64);
    spin.set_style(
        ProgressStyle::with_template("settle {bar:40} {pos}/{len} terminal calls")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut completed = false;
    while Instant::now() < settle {
        let crate::Progress { terminal, open, .. } = crate::progress(&store, ids).await?;
        spin.set_position(terminal as u64);
        if open == 0 {
            completed = true;
            break;
        }
        if let Some(why) = exited(&mut c.cps).or_else(|| exited(&mut c.dps)) {
            bail!("{why}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    spin.finish_and_clear();
    store.close().await;
    Ok(completed)
}

/// What the run did and measured, for the audit.
struct Run {
    faults: Faults,
    completed: bool,
    elapsed: f64,
    cost: Cost,
    hooks: Option<crate::chaos_hooks::Audit>,
}

/// /proc's and PostgreSQL's counts at the start of the run and once every call is terminal.
struct Cost {
    start: (crate::procstat::Sample, Option<[i64; 5]>),
    end: (crate::procstat::Sample, Option<[i64; 5]>),
    /// Commands Redis processed in between.
    redis: Option<i64>,
}

/// The guarantees, from the store, the providers' ledgers and the status topic: every call
/// terminal, no attempt placed twice, no cap exceeded at any instant, every attempt resolved.
async fn check_guarantees(
    a: &Args,
    cluster: Cluster,
    ids: &[Uuid],
    caps: &HashMap<Uuid, u32>,
    run: &Run,
) -> Result<()> {
    let Run { faults: f, completed, elapsed, hooks, .. } = run;
    let (completed, elapsed) = (*completed, *elapsed);
    let total = (a.campaigns * a.targets) as i64;
    let store = open_store(&cluster.db).await;
    let w = cluster.work.path();
    let crate::Progress { terminal, attempts, .. } = crate::progress(&store, ids).await?;
    let mismatched = crate::stats_mismatches(&store, ids).await?;
    let audit = audit_status_topic(&cluster.kafka.bootstrap(), "dialer.status").await?;
    let (placed, sip) = placed_calls(&cluster, &audit)?;
    let timeline = match &cluster.cassandra {
        Some(c) => {
            let dialled: Vec<(Uuid, u32)> = placed.iter().map(|p| (p.call, p.attempt)).collect();
            Some(crate::chaos_timeline::audit(&c.node(), &dialled).await?)
        }
        None => None,
    };
    let mut seen: HashMap<(Uuid, u32), u32> = HashMap::new();
    for p in &placed {
        *seen.entry((p.call, p.attempt)).or_default() += 1;
    }
    let ledger_duplicates: u64 = seen.values().map(|n| u64::from(n.saturating_sub(1))).sum();
    let Sweep { violations, max_global, peaks } = sweep(&placed, a.global_cap, caps);
    let (topic_duplicates, status_events) = (audit.started_duplicates, audit.events);
    // Every attempt placed ends with an outcome on the topic (its own, or unknown_outcome after a
    // kill): one the reader did not see means the audit itself missed events.
    let unread = placed.iter().filter(|p| !audit.outcomes.contains(&(p.call, p.attempt))).count();
    let per_campaign: Vec<_> = ids
        .iter()
        .map(|id| json!({"campaign": id, "cap": caps[id], "peak": peaks.get(id).copied().unwrap_or(0)}))
        .collect();
    let lost = total - terminal + mismatched as i64;
    let mut out = json!({
        "scenario": "chaos",
        "settings": {"fault_seconds": a.fault_seconds, "campaigns": a.campaigns, "targets": a.targets,
            "campaign_cap": a.campaign_cap, "global_cap": a.global_cap, "dataplanes": a.dataplanes,
            "kill_every_s": a.kill_every_s, "call_ms": a.call_ms, "ring_ms": a.ring_ms, "faults": a.faults,
            "min_campaign_cap": a.min_campaign_cap, "restart_every_s": a.restart_every_s,
            "assignment": a.assignment, "assignor": a.assignor},
        "cores": crate::cores(),
        "duration_s": elapsed,
        "completed": completed,
        "dials": placed.len(),
        "dials_per_sec": placed.len() as f64 / elapsed,
        "attempts_recorded": attempts,
        "status_events": status_events,
        "cap_violations": violations,
        "max_global_concurrency": max_global,
        "global_cap_bound": max_global >= i64::from(a.global_cap),
        "campaign_peaks": per_campaign,
        "placed_attempts_without_outcome_read": unread,
        "lost": lost,
        "stats_mismatches": mismatched,
        "duplicates": ledger_duplicates + topic_duplicates,
        "ledger_duplicates": ledger_duplicates,
        "status_topic_duplicates": topic_duplicates,
        "control_planes": a.control_planes,
        "dataplane_kills": f.kills,
        "control_plane_kills": f.cp_kills,
        "freezes": f.freezes,
        "redis_restarts": f.redis_restarts,
        "broker_restarts": f.broker_restarts,
        "postgres_restarts": f.pg_restarts,
        "cassandra_restarts": f.cassandra_restarts,
    });
    let more = newer_figures(run, &cluster, placed.len(), (timeline.as_ref(), sip.as_ref()), audit.journal_unavailable);
    if let (Some(o), Some(m)) = (out.as_object_mut(), more.as_object()) {
        o.extend(m.clone());
    }
    for (k, v) in out.as_object().into_iter().flatten().filter(|(k, _)| *k != "settings") {
        println!("{k:<28} {v}");
    }
    crate::write_json(a.json.as_deref(), &out)?;
    let hooks_bad = hooks.as_ref().is_some_and(|h| h.missing != 0 || h.out_of_order != 0)
        || timeline.as_ref().is_some_and(|t| t.missing != 0 || t.unresolved != 0)
        || sip.as_ref().is_some_and(|s| !s.clean());
    if !completed
        || lost != 0
        || violations != 0
        || ledger_duplicates + topic_duplicates != 0
        || unread != 0
        || hooks_bad
    {
        if let Some(t) = &cluster.sip {
            t.keep_logs(w);
        }
        let keep = cluster.work.keep();
        bail!("a guarantee failed (logs and ledgers kept in {})", keep.display());
    }
    Ok(())
}

/// The calls placed, from the far ends' ledgers: the mock provider's, or (`--sip`) the attempts
/// the trunks answered (on the far ends' clock, each in its campaign as its events name it),
/// with the trunks' own audit.
fn placed_calls(cluster: &Cluster, audit: &Audit) -> Result<(Vec<Placed>, Option<crate::chaos_sip::SipAudit>)> {
    let Some(trunks) = &cluster.sip else { return Ok((read_ledgers(cluster.work.path())?, None)) };
    let legs = trunks.legs()?;
    let placed = legs
        .iter()
        .filter(|l| l.answered)
        .map(|l| Placed {
            call: l.call,
            attempt: l.attempt,
            campaign: audit.campaigns.get(&l.call).copied().unwrap_or_default(),
            start_us: l.invite_us,
            end_us: l.end_us,
        })
        .collect();
    Ok((placed, Some(trunks.audit(&legs))))
}

/// The newer faults' counts, their audits and the run's cost, in an object of their own (one
/// `json!` of every figure passes the macro's recursion limit).
fn newer_figures(
    run: &Run,
    cluster: &Cluster,
    dials: usize,
    (timeline, sip): (Option<&crate::chaos_timeline::Audit>, Option<&crate::chaos_sip::SipAudit>),
    journal_unavailable: u64,
) -> serde_json::Value {
    let Run { faults: f, cost, hooks, .. } = run;
    let sip = sip.zip(cluster.sip.as_ref()).map(|(s, t)| {
        json!({"trunks": s.trunks, "over_channels": s.over_channels, "over_cps": s.over_cps,
            "far_end_kills": t.kills, "trunk_503_outages": t.refusals})
    });
    let per = |n: f64| n / dials.max(1) as f64;
    json!({
        "cpu_per_dial": crate::procstat::per_dial(&cost.start.0, &cost.end.0, dials as i64),
        "postgres_per_dial": crate::procstat::pg_per_dial(cost.start.1, cost.end.1, dials as i64),
        "redis_commands_per_dial": cost.redis.map(|n| per(n as f64)),
        // The product's topics, as the broker stores them (the dispatch and status messages).
        "kafka_bytes_per_dial": per(cluster.kafka.log_bytes("dialer.") as f64),
        "webhook_outages": f.webhook_outages,
        "clock_steps": f.clock_steps,
        "timeline_rows": timeline.map(|t| t.rows),
        "timeline_missing": timeline.map(|t| t.missing),
        "timeline_unresolved": timeline.map(|t| t.unresolved),
        "journal_disk_fulls": f.disk_fulls,
        "attempts_not_dialled_journal_full": journal_unavailable,
        "webhook_requests": hooks.as_ref().map(|h| h.requests),
        "webhook_failed_answers": hooks.as_ref().map(|h| h.failed_answers),
        "webhook_events_delivered": hooks.as_ref().map(|h| h.events),
        "webhook_events_missing": hooks.as_ref().map(|h| h.missing),
        "webhook_out_of_order": hooks.as_ref().map(|h| h.out_of_order),
        "sip": sip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(campaign: u128, start: u64, end: u64) -> Placed {
        Placed {
            call: Uuid::from_u128(start as u128),
            attempt: 1,
            campaign: Uuid::from_u128(campaign),
            start_us: start,
            end_us: end,
        }
    }

    #[test]
    fn the_sweep_finds_over_cap_starts_and_lets_back_to_back_calls_pass() {
        let caps = HashMap::from([(Uuid::from_u128(1), 2), (Uuid::from_u128(2), 5)]);
        // Back to back (one ends when the next starts): never two at once.
        let calls = [p(1, 0, 10), p(1, 10, 20), p(1, 20, 30)];
        assert_eq!(cap_violations(&calls, 10, &caps), (0, 1));
        // Three of campaign 1 overlap: its cap of 2 is exceeded once.
        let calls = [p(1, 0, 10), p(1, 1, 10), p(1, 2, 10), p(2, 3, 10)];
        assert_eq!(cap_violations(&calls, 10, &caps), (1, 4));
        // The global cap binds across campaigns.
        let calls = [p(1, 0, 10), p(2, 1, 10), p(2, 2, 10)];
        assert_eq!(cap_violations(&calls, 2, &caps).0, 1);
    }
}
