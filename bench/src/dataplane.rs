//! `bench dataplane`: dispatch → dial → status through the data plane, on the in-process bus or
//! through Apache Kafka (the harness starts one unless `--brokers`), with the in-process or the
//! Redis limiter. Open loop at `--rate` (latency measured from each message's *intended* send
//! time, so a stalled system is not flattered: no coordinated omission) or closed loop (`--rate
//! 0`: as fast as the bus accepts). The first second is warm-up and not counted.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dialer_bus::{BusSettings, MemoryBus};
use dialer_dataplane::{BusChoice, Dataplane, DataplaneOptions, LimiterChoice, ProviderSettings, Tracker, Tuning};
use dialer_domain::messages::{DispatchMessage, EventKind, StatusEvent};
use dialer_limiter::LocalBackend;
use dialer_testkit::fixtures::Dispatch;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// memory (in-process bus) or kafka.
    #[arg(long, default_value = "memory")]
    pub bus: String,
    /// local (in-process) or redis.
    #[arg(long, default_value = "local")]
    pub limiter: String,
    /// Shards (cores); default: every CPU.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Dispatch messages per second (0 = closed loop, as fast as accepted).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    #[arg(long, default_value = "10s", value_parser = dialer_domain::duration::parse)]
    pub duration: Duration,
    /// Mock call length range in ms, e.g. 1-5 (throughput) or 1000-5000 (the seed's).
    #[arg(long, default_value = "1-5")]
    pub call_ms: String,
    #[arg(long, default_value_t = 100)]
    pub campaigns: u32,
    /// Every campaign's cap. The defaults make caps bind, as operators run: 100 campaigns of cap
    /// 20 (2,000) under a global cap of 1,000.
    #[arg(long, default_value_t = 20)]
    pub campaign_cap: u32,
    #[arg(long, default_value_t = 1_000)]
    pub global_cap: u32,
    /// Lease batch per campaign and core (the product's default).
    #[arg(long, default_value_t = 64)]
    pub lease_batch: u32,
    /// Data planes (each with its own lease holders and limiter connections; static partition
    /// split), sharing one limiter and one tracker: `--shards` are divided among them.
    #[arg(long, default_value_t = 1)]
    pub dataplanes: usize,
    /// Closed loop: each campaign keeps at most this many messages outstanding (its demand, as
    /// the scheduler's per-campaign budget makes it). Default: `--window` ÷ `--campaigns`.
    #[arg(long)]
    pub campaign_window: Option<u64>,
    /// The first N campaigns are hot: their window is `--hot-factor` times `--campaign-window`.
    #[arg(long, default_value_t = 0)]
    pub hot_campaigns: u32,
    #[arg(long, default_value_t = 10)]
    pub hot_factor: u64,
    /// Fairness is judged over windows this long.
    #[arg(long, default_value = "10s", value_parser = dialer_domain::duration::parse)]
    pub fairness_window: Duration,
    /// A data-plane tuning file (`tuning/*.toml`) to measure; `--shards`, `--lease-batch` and
    /// this bench's buffer sizes still apply on top.
    #[arg(long)]
    pub tuning: Option<std::path::PathBuf>,
    #[arg(long)]
    pub brokers: Option<String>,
    #[arg(long)]
    pub redis: Option<String>,
    /// Runs without the attempt journal (a labelled variant: production runs with it).
    #[arg(long)]
    pub no_journal: bool,
    /// Closed loop: most messages published and not yet finished (keeps queues realistic).
    #[arg(long, default_value_t = 20_000)]
    pub window: u64,
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Latency plot (SVG); default: next to --json.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

fn call_range(s: &str) -> Result<(u64, u64)> {
    let (a, b) = s.split_once('-').context("--call-ms is MIN-MAX, e.g. 1-5")?;
    let (a, b): (u64, u64) = (a.trim().parse()?, b.trim().parse()?);
    if b < a {
        bail!("--call-ms: MAX below MIN");
    }
    Ok((a, b))
}

/// CPU seconds used so far by this process's shard threads (`dialer-shard-*`), from
/// `/proc/self/task/*/stat` (utime + stime, in USER_HZ = 100 ticks per second on Linux).
/// Dials per shard CPU second show how a shard's work scales when the machine has fewer
/// cores than shards plus load generator.
fn shard_cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    let ticks: u64 = tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter_map(|stat| stat_ticks(&stat).filter(|(name, _)| name.starts_with("dialer-shard-")).map(|(_, n)| n))
        .sum();
    ticks as f64 / 100.0
}

/// A thread's name and its user + system CPU ticks, from its `/proc/…/stat` line (the name is in
/// parentheses and may hold spaces or parentheses itself).
fn stat_ticks(stat: &str) -> Option<(&str, u64)> {
    let (open, close) = (stat.find('(')?, stat.rfind(')')?);
    // After the name: state is field 3, utime 14 and stime 15.
    let f: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let (utime, stime) = (f.get(11)?.parse::<u64>().ok()?, f.get(12)?.parse::<u64>().ok()?);
    Some((stat.get(open + 1..close)?, utime + stime))
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .map_or(0, |pages| pages * 4096)
}

/// Counts from the status stream, per (call, attempt): a duplicate cannot hide a loss.
struct Tally {
    hist: Histogram<u64>,
    started: u64,
    outcomes: u64,
    /// Status events of any kind read while counting.
    events: u64,
    /// Attempts dialled twice (a second `started`) and attempts finished twice.
    dup_started: u64,
    dup_outcomes: u64,
    started_seen: HashSet<(Uuid, u32)>,
    outcome_seen: HashSet<(Uuid, u32)>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: Histogram::new_with_bounds(1, 120_000_000, 3).expect("histogram bounds"),
            started: 0,
            outcomes: 0,
            events: 0,
            dup_started: 0,
            dup_outcomes: 0,
            started_seen: HashSet::new(),
            outcome_seen: HashSet::new(),
        }
    }

    fn add(&mut self, e: &StatusEvent, counting: bool) {
        if counting {
            self.events += 1;
        }
        let key = (e.call_id, e.attempt);
        match e.kind {
            EventKind::Started => {
                if !self.started_seen.insert(key) {
                    self.dup_started += 1;
                }
                if counting {
                    self.started += 1;
                    if let Some(us) = e.dispatch_latency_us {
                        let _ = self.hist.record(us.max(1));
                    }
                }
            }
            _ => {
                self.outcomes += 1;
                if !self.outcome_seen.insert(key) {
                    self.dup_outcomes += 1;
                }
            }
        }
    }

    /// Adds another reader's tally (an attempt seen by both is a duplicate).
    fn merge(&mut self, other: Tally) -> Result<()> {
        self.hist.add(&other.hist)?;
        self.started += other.started;
        self.outcomes += other.outcomes;
        self.events += other.events;
        self.dup_started += other.dup_started;
        self.dup_outcomes += other.dup_outcomes;
        for k in other.started_seen {
            if !self.started_seen.insert(k) {
                self.dup_started += 1;
            }
        }
        for k in other.outcome_seen {
            if !self.outcome_seen.insert(k) {
                self.dup_outcomes += 1;
            }
        }
        Ok(())
    }

    /// Attempts published (the first `total` of the run, attempt 1 each) with no outcome.
    fn lost(&self, total: u64) -> u64 {
        (0..total).filter(|i| !self.outcome_seen.contains(&(call_id(*i), 1))).count() as u64
    }
}

/// The call id of the `i`-th message: mixed (a bijection of i), as the product's random UUIDv7
/// ids are, so partitions and shards get each campaign's calls evenly.
fn call_id(i: u64) -> Uuid {
    Uuid::from_u128((u128::from(std::process::id()) << 64) | u128::from(splitmix64(i)))
}

/// Reads the status topic with one thread per core (partitions split statically, plain
/// `poll`): the bench's reader must not be what bounds the run, and an async per-message
/// reader costs more per event than the shards spend per dial.
fn kafka_readers(
    brokers: &str,
    topic: &str,
    partitions: i32,
    counting: &Arc<AtomicBool>,
    stop: &Arc<AtomicBool>,
    outcomes_seen: &Arc<AtomicU64>,
    by_campaign: &Arc<Vec<AtomicU64>>,
) -> Result<Vec<std::thread::JoinHandle<Tally>>> {
    let mut readers = Vec::new();
    for consumer in crate::broker::split_readers(brokers, topic, partitions)? {
        let (counting, stop, outcomes_seen) = (counting.clone(), stop.clone(), outcomes_seen.clone());
        let by_campaign = by_campaign.clone();
        readers.push(std::thread::spawn(move || {
            let mut t = Tally::new();
            while !stop.load(Ordering::Relaxed) {
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) else { continue };
                let Ok(e) = StatusEvent::decode(m.payload().unwrap_or_default()) else { continue };
                t.add(&e, counting.load(Ordering::Relaxed));
                if e.kind.is_outcome() {
                    outcomes_seen.fetch_add(1, Ordering::Relaxed);
                    count_campaign(&by_campaign, e.campaign_id);
                }
            }
            t
        }));
    }
    Ok(readers)
}

enum Publisher {
    Memory(Arc<MemoryBus>),
    Kafka(FutureProducer, String),
}

impl Publisher {
    async fn send(&self, m: DispatchMessage) -> Result<()> {
        match self {
            Publisher::Memory(bus) => bus.publish(m).await.map_err(|_| anyhow::anyhow!("bus closed")),
            Publisher::Kafka(p, topic) => {
                let payload = m.encode();
                let key = m.call_id.as_bytes().to_vec();
                loop {
                    match p.send_result(FutureRecord::to(topic).key(&key).payload(&payload)) {
                        Ok(_) => return Ok(()),
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                            _,
                        )) => tokio::time::sleep(Duration::from_micros(200)).await,
                        Err((e, _)) => return Err(e.into()),
                    }
                }
            }
        }
    }
}

pub async fn run(a: Args) -> Result<()> {
    let shards = a.shards.unwrap_or_else(crate::cores);
    let (min_ms, max_ms) = call_range(&a.call_ms)?;
    let (tuning, _journal_dir) = bench_tuning(&a, shards)?;
    let (journal_on, partitions) = (!tuning.journal.dir.is_empty(), tuning.shards.partitions);
    let (limiter, _redis_server) = limiter_choice(&a)?;
    let redis_url = match &limiter {
        LimiterChoice::Redis { url, .. } => Some(url.clone()),
        LimiterChoice::Local(_) => None,
    };
    let tracker = Tracker::new(a.global_cap);
    let demand = campaign_demand(&a);
    let campaigns: Vec<Uuid> = (0..a.campaigns).map(|i| Uuid::from_u128(CAMPAIGN_BASE + u128::from(i))).collect();
    for c in &campaigns {
        tracker.set_campaign_cap(*c, a.campaign_cap);
    }
    let mock = ProviderSettings {
        min_call: Duration::from_millis(min_ms),
        max_call: Duration::from_millis(max_ms),
        max_ring: Duration::ZERO,
        ..ProviderSettings::default()
    };
    let buses = bus_choice(&a, shards, partitions, campaigns[0]).await?;
    let rss0 = rss_bytes();
    let dps = start_dataplanes(&a, tuning, buses.bus, limiter, mock, &tracker)?;
    let redis_before = redis_count(redis_url.as_deref()).await?;
    let counters = Counters::new(campaigns.len());
    let readers = spawn_readers(buses.events_rx, buses.kafka_status, partitions, &counters)?;
    let publisher = spawn_publisher(&a, buses.publisher, &demand, &campaigns, &counters);
    let window = measure(&a, &tracker, &campaigns, &counters, rss0).await?;
    let redis_after = redis_count(redis_url.as_deref()).await?;
    counters.stop_pub.store(true, Ordering::SeqCst);
    let _publisher = publisher.await??;
    let total = counters.published.load(Ordering::SeqCst);
    drain(&counters, total, max_ms).await;
    stop_dataplanes(dps).await?;
    let mut tally = Tally::new();
    for r in readers {
        tally.merge(r.await.context("event reader")??)?;
    }
    let redis_cmds = redis_before.zip(redis_after).map(|(b, a)| a.saturating_sub(b));
    let caps =
        CapsReport::new(&a, &demand, &window.occupancy, &tracker, &campaigns, dials_per_sec_of(&tally, window.secs));
    let r = Report {
        a: &a,
        shards,
        journal_on,
        tally: &tally,
        window: &window,
        caps: &caps,
        tracker: &tracker,
        total,
        redis_cmds,
        broker_ceiling: buses.broker_ceiling.as_ref(),
        rss0,
    };
    r.print();
    r.plot_and_json()?;
    // A run that lost or duplicated an attempt, or broke a cap, printed what it saw and fails.
    let (lost, twice, violations) = (tally.lost(total), tally.dup_started + tally.dup_outcomes, tracker.violations());
    if lost + twice + violations > 0 {
        bail!("{lost} attempts lost, {twice} dialled or finished twice, {violations} cap violations");
    }
    Ok(())
}

/// The tuning the bench runs with (its file, or the defaults, sized for the bench), and the
/// journal's directory: on, as in production, unless `--no-journal`.
fn bench_tuning(a: &Args, shards: usize) -> Result<(Tuning, Option<tempfile::TempDir>)> {
    let mut tuning = match &a.tuning {
        Some(p) => dialer::config::tuning::load(p, Duration::from_secs(600))?,
        None => Tuning::default(),
    };
    tuning.shards.count = shards;
    if tuning.shards.cpus.len() != tuning.shards.count {
        tuning.shards.cpus.clear(); // the file pins another shard count
    }
    tuning.shards.partitions = (shards as i32).max(8);
    tuning.lease.batch = a.lease_batch;
    tuning.lease.low_water = a.lease_batch / 4;
    tuning.buffers.max_queued_per_shard = 200_000;
    tuning.buffers.pause_partition_at = 100_000;
    tuning.buffers.resume_partition_at = 50_000;
    let journal_dir = match (a.no_journal, tuning.journal.dir.is_empty()) {
        (true, _) => {
            tuning.journal.dir.clear();
            None
        }
        (false, true) => {
            let d = tempfile::Builder::new().prefix("dialer-bench-journal-").tempdir()?;
            tuning.journal.dir = d.path().display().to_string();
            Some(d)
        }
        (false, false) => None,
    };
    dialer::config::tuning::validate(&tuning, Duration::from_secs(600)).context("bench tuning")?;
    Ok((tuning, journal_dir))
}

/// The limiter the shards lease from; a Redis server of the bench's own when none is given.
fn limiter_choice(a: &Args) -> Result<(LimiterChoice, Option<dialer_testkit::RedisServer>)> {
    match a.limiter.as_str() {
        "local" => Ok((LimiterChoice::Local(Arc::new(LocalBackend::default())), None)),
        "redis" => {
            let (url, guard) = crate::redis_or(a.redis.as_ref())?;
            Ok((LimiterChoice::Redis { url, prefix: format!("{{bench{}}}:", std::process::id()) }, guard))
        }
        other => bail!("--limiter must be local or redis, not {other:?}"),
    }
}

/// The bus between the bench and the data planes, and what reads and feeds it.
struct Buses {
    bus: BusChoice,
    publisher: Publisher,
    events_rx: Option<tokio::sync::mpsc::Receiver<StatusEvent>>,
    kafka_status: Option<(String, String)>,
    broker_ceiling: Option<crate::broker::Ceiling>,
    _kafka: Option<dialer_testkit::Kafka>,
}

async fn bus_choice(a: &Args, shards: usize, partitions: i32, sample_campaign: Uuid) -> Result<Buses> {
    match a.bus.as_str() {
        "memory" => {
            let ends = MemoryBus::open(shards, partitions, 65_536, 1 << 20);
            let bus = ends.dispatch.0.clone();
            Ok(Buses {
                bus: BusChoice::Memory { sources: ends.shard_sources, status: ends.status_sink },
                publisher: Publisher::Memory(bus),
                events_rx: Some(ends.status_source.0),
                kafka_status: None,
                broker_ceiling: None,
                _kafka: None,
            })
        }
        "kafka" => kafka_buses(a, partitions, sample_campaign).await,
        other => bail!("--bus must be memory or kafka, not {other:?}"),
    }
}

/// Topics of the bench's own on the broker (a Kafka of its own when none is given), and the
/// broker's own produce+consume ceiling measured first.
async fn kafka_buses(a: &Args, partitions: i32, sample_campaign: Uuid) -> Result<Buses> {
    let (brokers, kafka) = crate::kafka_or(a.brokers.as_ref()).await?;
    let run = std::process::id();
    let topics = BusSettings {
        brokers: brokers.clone(),
        dispatch_topic: format!("bench.dispatch.{run}"),
        status_topic: format!("bench.status.{run}"),
        group_id: format!("bench-dp-{run}"),
        dead_letter_topic: format!("bench.dead_letter.{run}"),
        ..BusSettings::default()
    };
    dialer_bus::kafka::ensure_topics(
        &brokers,
        &[(&topics.dispatch_topic, partitions), (&topics.status_topic, partitions)],
    )
    .await?;
    let sample = sample_message(sample_campaign, a.campaign_cap).encode().len();
    println!("measuring the broker's own produce+consume ceiling with {sample}-byte messages…");
    let ceiling = crate::broker::ceiling(&brokers, sample, 200_000).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("socket.nagle.disable", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let status = (brokers.clone(), topics.status_topic.clone());
    let dispatch_topic = topics.dispatch_topic.clone();
    Ok(Buses {
        bus: BusChoice::Kafka(topics),
        publisher: Publisher::Kafka(producer, dispatch_topic),
        events_rx: None,
        kafka_status: Some(status),
        broker_ceiling: Some(ceiling),
        _kafka: kafka,
    })
}

/// What the bench's tasks share: the measuring window, stop flags, what was published and
/// what came back.
#[derive(Clone)]
struct Counters {
    counting: Arc<AtomicBool>,
    stop_reader: Arc<AtomicBool>,
    outcomes_seen: Arc<AtomicU64>,
    by_campaign: Arc<Vec<AtomicU64>>,
    published: Arc<AtomicU64>,
    stop_pub: Arc<AtomicBool>,
}

impl Counters {
    fn new(campaigns: usize) -> Counters {
        Counters {
            counting: Arc::default(),
            stop_reader: Arc::default(),
            outcomes_seen: Arc::default(),
            by_campaign: Arc::new((0..campaigns).map(|_| AtomicU64::new(0)).collect()),
            published: Arc::default(),
            stop_pub: Arc::default(),
        }
    }
}

/// Event readers: counts, latencies, duplicates.
fn spawn_readers(
    events_rx: Option<tokio::sync::mpsc::Receiver<StatusEvent>>,
    kafka_status: Option<(String, String)>,
    partitions: i32,
    c: &Counters,
) -> Result<Vec<tokio::task::JoinHandle<Result<Tally>>>> {
    match (events_rx, kafka_status) {
        (Some(mut rx), _) => {
            let c = c.clone();
            Ok(vec![tokio::spawn(async move {
                let mut t = Tally::new();
                while !c.stop_reader.load(Ordering::Relaxed) {
                    let e = match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                        Ok(Some(e)) => e,
                        Ok(None) => break,
                        Err(_) => continue,
                    };
                    t.add(&e, c.counting.load(Ordering::Relaxed));
                    if e.kind.is_outcome() {
                        c.outcomes_seen.fetch_add(1, Ordering::Relaxed);
                        count_campaign(&c.by_campaign, e.campaign_id);
                    }
                }
                Ok(t)
            })])
        }
        (None, Some((brokers, topic))) => Ok(kafka_readers(
            &brokers,
            &topic,
            partitions,
            &c.counting,
            &c.stop_reader,
            &c.outcomes_seen,
            &c.by_campaign,
        )?
        .into_iter()
        .map(|h| tokio::task::spawn_blocking(move || h.join().map_err(|_| anyhow::anyhow!("an event reader panicked"))))
        .collect()),
        (None, None) => bail!("no event source"),
    }
}

/// The publisher: closed loop (as fast as the campaigns' windows allow) or open loop at `--rate`.
fn spawn_publisher(
    a: &Args,
    publisher: Publisher,
    demand: &[u64],
    campaigns: &[Uuid],
    c: &Counters,
) -> tokio::task::JoinHandle<Result<Publisher>> {
    let c = c.clone();
    let campaigns = campaigns.to_vec();
    let (rate, cap) = (a.rate, a.campaign_cap);
    let mut pick = CampaignPicker::new(demand.to_vec(), rate == 0, c.by_campaign.clone());
    tokio::spawn(async move {
        let start = Instant::now();
        let epoch_us = dialer_bus::time::now_us();
        let mut i: u64 = 0;
        while !c.stop_pub.load(Ordering::Relaxed) {
            let Some(k) = pick.next() else {
                tokio::time::sleep(Duration::from_micros(200)).await;
                continue;
            };
            let mut m = sample_message(campaigns[k], cap);
            m.call_id = call_id(i);
            m.enqueued_at_us = match i.saturating_mul(1_000_000_000).checked_div(rate) {
                Some(due_ns) => {
                    let due = Duration::from_nanos(due_ns);
                    if let Some(ahead) = due.checked_sub(start.elapsed()) {
                        tokio::time::sleep(ahead).await;
                    }
                    epoch_us + due.as_micros() as u64
                }
                None => dialer_bus::time::now_us(),
            };
            publisher.send(m).await?;
            c.published.fetch_add(1, Ordering::Relaxed);
            i += 1;
            if i.is_multiple_of(256) {
                tokio::task::yield_now().await;
            }
        }
        anyhow::Ok(publisher)
    })
}

/// The measured window: its length, the shards' CPU time in it, peaks, the cap occupancy.
struct Window {
    secs: f64,
    shard_cpu: f64,
    peak_inflight: i64,
    peak_rss: u64,
    occupancy: crate::occupancy::Occupancy,
}

/// Waits a second of warm-up, then measures `--duration`, with a progress bar.
async fn measure(a: &Args, tracker: &Arc<Tracker>, campaigns: &[Uuid], c: &Counters, rss0: u64) -> Result<Window> {
    tokio::time::sleep(Duration::from_secs(1)).await; // warm-up
    c.counting.store(true, Ordering::SeqCst);
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler =
        crate::occupancy::sample(tracker.clone(), campaigns.to_vec(), a.fairness_window, stop_sampler.clone());
    let cpu0 = shard_cpu_seconds();
    let t0 = Instant::now();
    let pb = ProgressBar::new(a.duration.as_secs().max(1));
    pb.set_style(
        ProgressStyle::with_template("dataplane {bar:40} {pos}/{len} s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let (mut peak_inflight, mut peak_rss) = (0i64, rss0);
    while t0.elapsed() < a.duration {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak_inflight = peak_inflight.max(tracker.global().current());
        peak_rss = peak_rss.max(rss_bytes());
        pb.set_position(t0.elapsed().as_secs());
        let published = c.published.load(Ordering::Relaxed);
        pb.set_message(format!("{published} published, {} in flight", tracker.global().current()));
    }
    c.counting.store(false, Ordering::SeqCst);
    stop_sampler.store(true, Ordering::SeqCst);
    let (secs, shard_cpu) = (t0.elapsed().as_secs_f64(), shard_cpu_seconds() - cpu0);
    pb.finish_and_clear();
    let occupancy = sampler.join().map_err(|_| anyhow::anyhow!("the occupancy sampler panicked"))?;
    Ok(Window { secs, shard_cpu, peak_inflight, peak_rss, occupancy })
}

async fn redis_count(url: Option<&str>) -> Result<Option<u64>> {
    match url {
        Some(u) => Ok(Some(redis_calls(u).await?)),
        None => Ok(None),
    }
}

/// Waits until every published message has its outcome (or the calls' longest could not
/// explain the wait any more), then stops the readers.
async fn drain(c: &Counters, total: u64, max_ms: u64) {
    let deadline = Instant::now() + Duration::from_millis(max_ms * 2 + 30_000);
    while c.outcomes_seen.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.stop_reader.store(true, Ordering::SeqCst);
}

async fn stop_dataplanes(dps: Vec<Dataplane>) -> Result<()> {
    for dp in &dps {
        dp.shutdown();
    }
    tokio::task::spawn_blocking(move || dps.into_iter().map(Dataplane::join).collect::<Vec<_>>())
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok(())
}

/// What a run measured, printed and written.
struct Report<'a> {
    a: &'a Args,
    shards: usize,
    journal_on: bool,
    tally: &'a Tally,
    window: &'a Window,
    caps: &'a CapsReport,
    tracker: &'a Tracker,
    total: u64,
    redis_cmds: Option<u64>,
    broker_ceiling: Option<&'a crate::broker::Ceiling>,
    rss0: u64,
}

impl Report<'_> {
    fn dials_per_sec(&self) -> f64 {
        dials_per_sec_of(self.tally, self.window.secs)
    }

    /// Each dial moves its dispatch message and its status events through the broker (each
    /// produced once and consumed once), like one message of the broker's pipeline ceiling.
    fn msgs_per_dial(&self) -> f64 {
        1.0 + self.tally.events as f64 / self.tally.started.max(1) as f64
    }

    fn redis_per_dial(&self) -> f64 {
        self.redis_cmds.map_or(0.0, |c| c as f64 / (self.tally.started.max(1)) as f64)
    }

    fn mem_per_call(&self) -> Option<f64> {
        let w = self.window;
        (w.peak_inflight > 1000).then(|| (w.peak_rss.saturating_sub(self.rss0)) as f64 / w.peak_inflight as f64)
    }

    fn print(&self) {
        let (a, t, h) = (self.a, self.tally, &self.tally.hist);
        let (dials, shard_cpu) = (self.dials_per_sec(), self.window.shard_cpu);
        println!("{:<34} {:>14}", "figure", "value");
        println!("{:<34} {:>14}", "bus / limiter", format!("{} / {}", a.bus, a.limiter));
        println!("{:<34} {:>14}", "shards", self.shards);
        println!("{:<34} {:>14.0}", "dials/s", dials);
        println!("{:<34} {:>14.0}", "dials/s per shard", dials / self.shards as f64);
        println!("{:<34} {:>14.2}", "shard CPU seconds per second", shard_cpu / self.window.secs);
        println!("{:<34} {:>14.0}", "dials per shard CPU second", t.started as f64 / shard_cpu.max(0.01));
        for (name, q) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)] {
            println!("{:<34} {:>14}", format!("dispatch→dial {name} µs"), h.value_at_quantile(q / 100.0));
        }
        println!("{:<34} {:>14}", "dispatch→dial max µs", h.max());
        println!("{:<34} {:>14.4}", "redis commands per dial", self.redis_per_dial());
        println!("{:<34} {:>14}", "cap violations (tracker)", self.tracker.violations());
        println!("{:<34} {:>14}", "journal", if self.journal_on { "on" } else { "off" });
        println!("{:<34} {:>14}", "attempts lost (no outcome)", t.lost(self.total));
        println!("{:<34} {:>14}", "attempts dialled twice", t.dup_started);
        println!("{:<34} {:>14}", "attempts finished twice", t.dup_outcomes);
        println!("{:<34} {:>14}", "peak calls in flight", self.window.peak_inflight);
        self.caps.print();
        if let Some(m) = self.mem_per_call() {
            println!("{:<34} {:>14.0}", "memory per in-flight call, bytes", m);
        }
        if let Some(c) = self.broker_ceiling {
            let run_msgs_per_sec = dials * self.msgs_per_dial();
            println!("{:<34} {:>14.0}", "broker produce msgs/s (alone)", c.produce);
            println!("{:<34} {:>14.0}", "broker consume msgs/s (alone)", c.consume);
            println!("{:<34} {:>14.0}", "broker pipeline msgs/s (ceiling)", c.pipeline);
            println!("{:<34} {:>14.2}", "broker messages per dial", self.msgs_per_dial());
            println!("{:<34} {:>14.0}", "broker msgs/s in this run", run_msgs_per_sec);
            println!("{:<34} {:>13.0}%", "share of the broker's ceiling", 100.0 * run_msgs_per_sec / c.pipeline);
        }
        println!("{:<34} {:>14}", "cores (nproc)", crate::cores());
    }

    fn plot_and_json(&self) -> Result<()> {
        let (a, h) = (self.a, &self.tally.hist);
        if let Some(p) = crate::plot::path_for(a.plot.as_deref(), a.json.as_deref()) {
            let title = format!(
                "bench dataplane, {} bus, {} limiter, {} shards, {}",
                a.bus,
                a.limiter,
                self.shards,
                match a.rate {
                    0 => "closed loop".to_string(),
                    r => format!("open loop at {r}/s"),
                }
            );
            crate::plot::percentiles(&p, &title, &[("dispatch→dial", h)])?;
        }
        crate::write_json(a.json.as_deref(), &self.json())
    }

    fn json(&self) -> serde_json::Value {
        let (a, t, h, w) = (self.a, self.tally, &self.tally.hist, self.window);
        let (dials, ceiling) = (self.dials_per_sec(), self.broker_ceiling);
        let run_msgs_per_sec = dials * self.msgs_per_dial();
        json!({
            "scenario": "dataplane",
            "settings": {"bus": a.bus, "limiter": a.limiter, "rate": a.rate, "call_ms": a.call_ms,
                         "campaigns": a.campaigns, "campaign_cap": a.campaign_cap, "global_cap": a.global_cap,
                         "lease_batch": a.lease_batch, "dataplanes": a.dataplanes,
                         "campaign_window": a.campaign_window, "hot_campaigns": a.hot_campaigns,
                         "hot_factor": a.hot_factor},
            "duration_s": w.secs,
            "shards": self.shards,
            "cores": crate::cores(),
            "dials_per_sec": dials,
            "dials_per_sec_per_shard": dials / self.shards as f64,
            "shard_cpu_s": w.shard_cpu,
            "dials_per_shard_cpu_s": t.started as f64 / w.shard_cpu.max(0.01),
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "redis_commands_per_dial": self.redis_per_dial(),
            "cap_violations": self.tracker.violations(),
            "journal": self.journal_on,
            "lost_attempts": t.lost(self.total),
            "attempts_dialled_twice": t.dup_started,
            "attempts_finished_twice": t.dup_outcomes,
            "published": self.total,
            "peak_in_flight": w.peak_inflight,
            "caps": self.caps.json(),
            "memory_per_inflight_call_bytes": self.mem_per_call(),
            "broker_produce_msgs_per_sec": ceiling.map(|c| c.produce),
            "broker_consume_msgs_per_sec": ceiling.map(|c| c.consume),
            "broker_pipeline_msgs_per_sec": ceiling.map(|c| c.pipeline),
            "broker_msgs_per_dial": ceiling.map(|_| self.msgs_per_dial()),
            "broker_msgs_per_sec": ceiling.map(|_| run_msgs_per_sec),
            "broker_ceiling_share": ceiling.map(|c| run_msgs_per_sec / c.pipeline),
        })
    }
}

/// A bijection of u64 that scatters consecutive numbers (the SplitMix64 finalizer).
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn dials_per_sec_of(t: &Tally, secs: f64) -> f64 {
    t.started as f64 / secs
}

fn count_campaign(by_campaign: &[AtomicU64], campaign: Uuid) {
    let k = campaign.as_u128().wrapping_sub(CAMPAIGN_BASE) as usize;
    if let Some(n) = by_campaign.get(k) {
        n.fetch_add(1, Ordering::Relaxed);
    }
}

/// Each campaign's demand: the messages it keeps outstanding (in progress or waiting).
fn campaign_demand(a: &Args) -> Vec<u64> {
    (0..a.campaigns)
        .map(|i| match a.campaign_window {
            Some(w) if i < a.hot_campaigns => w * a.hot_factor,
            Some(w) => w,
            None => a.window / u64::from(a.campaigns.max(1)),
        })
        .collect()
}

/// Which campaign is published for next: round robin; in the closed loop, skipping campaigns
/// with their window of messages outstanding.
struct CampaignPicker {
    windows: Vec<u64>,
    per_campaign: bool,
    published: Vec<u64>,
    finished: Arc<Vec<AtomicU64>>,
    next: usize,
}

impl CampaignPicker {
    fn new(windows: Vec<u64>, per_campaign: bool, finished: Arc<Vec<AtomicU64>>) -> CampaignPicker {
        let published = vec![0; windows.len()];
        CampaignPicker { windows, per_campaign, published, finished, next: 0 }
    }

    fn next(&mut self) -> Option<usize> {
        let n = self.windows.len();
        for _ in 0..n {
            let k = self.next;
            self.next = (self.next + 1) % n;
            let outstanding = self.published[k].saturating_sub(self.finished[k].load(Ordering::Relaxed));
            if !self.per_campaign || outstanding < self.windows[k] {
                self.published[k] += 1;
                return Some(k);
            }
        }
        None
    }
}

/// Whether the caps were used as operators configure them: time-averaged calls in progress
/// against the global cap and the fair shares, dials against Little's law, peaks against caps.
struct CapsReport {
    /// Σ fair shares: what the caps allow with the demand offered.
    ceiling: f64,
    mean_in_progress: f64,
    littles_law_dials: f64,
    dials: f64,
    worst_fairness: f64,
    outside: usize,
    /// (campaign, window) pairs judged.
    windows: usize,
    campaign_peak_over_cap: i64,
    campaigns_at_cap: usize,
}

impl CapsReport {
    fn new(
        a: &Args,
        demand: &[u64],
        occ: &crate::occupancy::Occupancy,
        tracker: &Tracker,
        campaigns: &[Uuid],
        dials: f64,
    ) -> CapsReport {
        let shares = crate::occupancy::fair_shares(a.global_cap, demand, a.campaign_cap);
        let ceiling: f64 = shares.iter().sum();
        let (min_ms, max_ms) = call_range(&a.call_ms).unwrap_or((1, 5));
        let mean_call_s = (min_ms + max_ms) as f64 / 2000.0;
        let (worst_fairness, outside) = crate::occupancy::fairness(&occ.windows, &shares, 0.10);
        let peaks: Vec<i64> = campaigns.iter().map(|c| tracker.campaign_max(*c)).collect();
        CapsReport {
            ceiling,
            mean_in_progress: occ.global,
            littles_law_dials: ceiling / mean_call_s,
            dials,
            worst_fairness,
            outside,
            windows: occ.windows.len() * campaigns.len(),
            campaign_peak_over_cap: peaks.iter().map(|p| p - i64::from(a.campaign_cap)).max().unwrap_or(0),
            campaigns_at_cap: peaks.iter().filter(|p| **p >= i64::from(a.campaign_cap)).count(),
        }
    }

    fn print(&self) {
        println!("{:<34} {:>14.0}", "caps allow (Σ fair shares)", self.ceiling);
        println!("{:<34} {:>14.1}", "calls in progress, time-averaged", self.mean_in_progress);
        println!("{:<34} {:>13.1}%", "… of what the caps allow", 100.0 * self.mean_in_progress / self.ceiling);
        println!("{:<34} {:>14.0}", "Little's law dials/s (caps)", self.littles_law_dials);
        println!("{:<34} {:>13.1}%", "dials/s of Little's law", 100.0 * self.dials / self.littles_law_dials);
        println!("{:<34} {:>13.1}%", "worst campaign vs fair share", 100.0 * self.worst_fairness);
        println!("{:<34} {:>14}", "campaign-windows off by > 10 %", format!("{} of {}", self.outside, self.windows));
        println!("{:<34} {:>14}", "campaign peak − cap (max)", self.campaign_peak_over_cap);
        println!("{:<34} {:>14}", "campaigns that reached their cap", self.campaigns_at_cap);
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "caps_allow": self.ceiling,
            "mean_in_progress": self.mean_in_progress,
            "in_progress_share_of_caps": self.mean_in_progress / self.ceiling,
            "littles_law_dials_per_sec": self.littles_law_dials,
            "dials_share_of_littles_law": self.dials / self.littles_law_dials,
            "worst_campaign_fairness_deviation": self.worst_fairness,
            "campaign_windows_outside_10pct": self.outside,
            "fairness_windows": self.windows,
            "campaign_peak_minus_cap": self.campaign_peak_over_cap,
            "campaigns_at_cap": self.campaigns_at_cap,
        })
    }
}

/// Campaign ids are `CAMPAIGN_BASE + index`.
const CAMPAIGN_BASE: u128 = 0xC000_0000;

/// Starts `--dataplanes` data planes over the shards, each its own lease holders.
fn start_dataplanes(
    a: &Args,
    tuning: Tuning,
    bus: BusChoice,
    limiter: LimiterChoice,
    mock: ProviderSettings,
    tracker: &Arc<Tracker>,
) -> Result<Vec<Dataplane>> {
    let n = a.dataplanes.max(1);
    let shards = tuning.shards.count;
    if !shards.is_multiple_of(n) {
        bail!("--shards ({shards}) must be a multiple of --dataplanes ({n})");
    }
    let per = shards / n;
    let (mut sources, status, kafka) = match bus {
        BusChoice::Memory { sources, status } => (sources, Some(status), None),
        BusChoice::Kafka(t) => (Vec::new(), None, Some(t)),
    };
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        let mut t = tuning.clone();
        t.shards.count = per;
        t.shards.cpus.clear();
        t.shards.instance = k;
        t.shards.instances = n;
        let bus = match (&status, &kafka) {
            (Some(status), _) => BusChoice::Memory { sources: sources.drain(..per).collect(), status: status.clone() },
            (None, Some(topics)) => BusChoice::Kafka(topics.clone()),
            (None, None) => bail!("no bus"),
        };
        out.push(Dataplane::start(DataplaneOptions {
            tuning: t,
            bus,
            limiter: limiter.clone(),
            global_cap: a.global_cap,
            per_campaign_ceiling: a.campaign_cap,
            provider: mock.clone(),
            tracker: tracker.clone(),
            instance: format!("bench-{}-dp{k}", std::process::id()),
            left_up: 0,
        })?);
    }
    Ok(out)
}

fn sample_message(campaign: Uuid, cap: u32) -> DispatchMessage {
    Dispatch::call(0).campaign(campaign).cap(cap).number("+15555550123").build()
}

/// Client commands Redis has executed (EVALSHA and friends), from INFO commandstats.
async fn redis_calls(url: &str) -> Result<u64> {
    use fred::interfaces::ClientLike;
    let client = fred::clients::Client::new(fred::types::config::Config::from_url(url)?, None, None, None);
    client.init().await?;
    let info: String = client.info(Some(fred::types::InfoKind::CommandStats)).await?;
    let mut n = 0;
    for line in info.lines() {
        if let Some((name, rest)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':'))
            && matches!(name, "evalsha" | "eval")
        {
            n += rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let _ = client.quit().await;
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn thread_cpu_ticks_from_proc_stat() {
        let line = "4242 (dialer-shard-1) R 4200 4200 99 0 -1 4194368 12 0 0 0 1234 56 0 0 20 0 9 0 77 0 0";
        assert_eq!(super::stat_ticks(line), Some(("dialer-shard-1", 1290)));
        let odd = "7 (a) b (c)) S 1 1 1 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 1 0 0";
        assert_eq!(super::stat_ticks(odd), Some(("a) b (c)", 11)));
        assert_eq!(super::stat_ticks("garbage"), None);
    }
}
