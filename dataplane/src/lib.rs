//! The data plane of the dialer: thread-per-core shards that dial.
//!
//! [`Dataplane::start`] starts one shard per configured core, each on its own thread with its own
//! single-threaded tokio runtime (optionally pinned to a CPU), its own lease cache and limiter
//! connection, its own consumer of a disjoint set of dispatch partitions and its own status
//! producer. Shards share nothing mutable on the hot path; they meet only in the limiter (by
//! batched lease updates) and in the provider's independent tracker (a test instrument).
//!
//! Modules: [`tuning`] (per-machine settings), [`ProviderSettings`] (`[provider]`),
//! [`provider`] (the telephony boundary, mock provider, tracker), [`shard`] (the dial loop), [`journal`] (no double dial across crashes),
//! [`health`] and [`admin`] (`/readyz`, `/metrics`), [`metrics`] (this crate's metric
//! catalogue). A shard's two topic ends (its dispatch source and status sink, over Kafka or the
//! in-process bus) are `dialer_bus`'s, shared with the control plane.

pub mod admin;
pub mod health;
pub mod journal;
pub mod metrics;
pub mod mock_media;
pub mod provider;
mod settings;
pub mod shard;
pub mod sip;
pub mod tuning;

use std::sync::Arc;
use std::thread::JoinHandle;

use dialer_bus::BusSettings;
use dialer_bus::dispatch::{KafkaDispatchSource, MemoryDispatchSource};
use dialer_bus::kafka::ClientSettings;
use dialer_bus::status::{KafkaStatusSink, MemoryStatusSink};
use dialer_limiter::{Backend, LeaseDriver, LocalBackend, RedisBackend};
use tokio::sync::watch;

pub use health::{Health, ShardStatus};
pub use provider::{MockProvider, Provider, Tracker};
pub use settings::{ProviderKind, ProviderSettings, UnknownProvider};
pub use shard::{Shard, ShardConfig, ShardReport};
pub use tuning::{Assignment, Assignor, Tuning};

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("shard {shard}: {source}")]
    Shard { shard: usize, source: ShardError },
    #[error("the in-process bus has {have} shard receivers for {want} shards")]
    Receivers { have: usize, want: usize },
    #[error("provider: {0}")]
    Sip(#[from] sip::SipError),
}

/// Why a shard stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("cannot start its thread or runtime: {0}")]
    Thread(std::io::Error),
    #[error("panicked; see the log above for where")]
    Panicked,
    #[error("cannot connect to the limiter's Redis: {0}; check limits.redis_url and that Redis runs")]
    Limiter(#[from] dialer_limiter::LimiterError),
    #[error("cannot create its Kafka {what}: {source}; check bus.brokers")]
    Kafka { what: &'static str, source: dialer_bus::kafka::BrokerError },
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("its in-process receiver was taken twice (a bug)")]
    ReceiverTaken,
    #[error(transparent)]
    Sip(#[from] sip::SipError),
}

/// Which limiter the shards lease from.
#[derive(Clone, Debug)]
pub enum LimiterChoice {
    /// In-process (embedded mode, benches).
    Local(Arc<LocalBackend>),
    /// Redis: each shard opens its own connection.
    Redis { url: String, prefix: String },
}

/// Which bus the shards read and write.
#[derive(Debug)]
pub enum BusChoice {
    /// In-process: one dispatch source per shard, and the status sink (cloned per shard).
    Memory { sources: Vec<MemoryDispatchSource>, status: MemoryStatusSink },
    /// Kafka: each shard builds its own consumer and producer on its thread.
    Kafka(BusSettings),
}

/// Everything the data plane runs with.
#[derive(Debug)]
pub struct DataplaneOptions {
    pub tuning: Tuning,
    pub bus: BusChoice,
    pub limiter: LimiterChoice,
    /// `TELEPHONY_GLOBAL_MAX_CONCURRENCY`.
    pub global_cap: u32,
    /// `TELEPHONY_PER_CAMPAIGN_MAX_CONCURRENCY`.
    pub per_campaign_ceiling: u32,
    /// `[provider]`: the mock, or SIP trunks (`kind = "sip"`).
    pub provider: ProviderSettings,
    pub tracker: Arc<Tracker>,
    /// Distinguishes this process's lease holders from others' (e.g. host + pid + start time).
    pub instance: String,
    /// Calls a previous run on this host may have left up that its journal no longer shows
    /// (`dialer up` resolves them at start and retires the journal): held on the SIP trunks
    /// like the journal's own ([`orphan_channels`]).
    pub left_up: usize,
}

/// A running data plane.
#[derive(Debug)]
pub struct Dataplane {
    shards: Vec<JoinHandle<Result<ShardReport, ShardError>>>,
    shutdown: watch::Sender<bool>,
    health: Arc<Health>,
}

impl Dataplane {
    pub fn start(opts: DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        let n = opts.tuning.shards.count;
        let (shutdown, shutdown_rx) = watch::channel(false);
        if opts.provider.kind == ProviderKind::Sip {
            // Refused here, at start, rather than by every shard after the process is up.
            sip::check(&opts.provider, opts.tuning.global_shard(0).1)?;
        }
        if !opts.tuning.journal.dir.is_empty() {
            // Fail at start, not in a shard, when the journal directory is unusable.
            let j = journal::Journal::open_with(
                std::path::Path::new(&opts.tuning.journal.dir),
                !opts.tuning.journal.no_sync,
                opts.tuning.journal.io,
            )
            .map_err(|e| DataplaneError::Shard { shard: 0, source: e.into() })?;
            tracing::info!(dir = %opts.tuning.journal.dir, io = j.io_name(), "attempt journal");
        }
        let orphans = orphan_channels(&opts)?;
        let orphans_until = std::time::Instant::now() + opts.provider.longest_call();
        if opts.provider.longest_call() > opts.tuning.lease.ttl {
            tracing::info!(
                ttl_ms = opts.provider.longest_call().as_millis() as u64,
                "lease.ttl_ms raised to the longest call: a killed data plane's calls stay counted against the caps until they are over"
            );
        }
        let health = Arc::new(Health::new(n));
        ::metrics::gauge!("dialer_limiter_global_cap").set(f64::from(opts.global_cap));
        let mut memory: Option<MemoryEnds> = None;
        let mut kafka: Option<BusSettings> = None;
        match opts.bus {
            BusChoice::Memory { sources, status } => {
                if sources.len() != n {
                    return Err(DataplaneError::Receivers { have: sources.len(), want: n });
                }
                memory = Some((sources.into_iter().map(Some).collect(), status));
            }
            BusChoice::Kafka(t) => kafka = Some(t),
        }
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let tuning = opts.tuning.clone();
            let limiter = opts.limiter.clone();
            let provider = opts.provider.clone();
            let tracker = opts.tracker.clone();
            let holder = format!("{}-shard{i}", opts.instance);
            let (global_cap, ceiling) = (opts.global_cap, opts.per_campaign_ceiling);
            let shutdown_rx = shutdown_rx.clone();
            let cpu = tuning.shards.cpus.get(i).copied();
            let health = health.clone();
            let failed = health.clone();
            let orphans = orphans.iter().map(|per_shard| per_shard[i]).collect(); // per trunk
            let io = match (&mut memory, &kafka) {
                (Some((rxs, tx)), _) => ShardIo::Memory(rxs[i].take(), tx.clone()),
                (None, Some(t)) => ShardIo::Kafka(t.clone()),
                (None, None) => unreachable!("one bus is chosen"),
            };
            let handle = std::thread::Builder::new()
                .name(format!("dialer-shard-{i}"))
                .spawn(move || {
                    let start = ShardStart {
                        i,
                        cpu,
                        tuning,
                        limiter,
                        io,
                        provider,
                        tracker,
                        holder,
                        global_cap,
                        ceiling,
                        shutdown_rx,
                        health,
                        orphans,
                        orphans_until,
                    };
                    let r = run_shard_thread(start);
                    if let Err(e) = &r {
                        tracing::error!(shard = i, error = %e, "shard stopped: it dials nothing more; /healthz fails until the process is restarted");
                        failed.shard(i).failed(e.to_string());
                    }
                    r
                })
                .map_err(|e| DataplaneError::Shard { shard: i, source: ShardError::Thread(e) })?;
            shards.push(handle);
        }
        Ok(Dataplane { shards, shutdown, health })
    }

    /// The shards' health (for `/readyz`).
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// Asks every shard to stop taking messages and finish its calls.
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits for every shard to stop; their reports, or why one failed.
    pub fn join(self) -> Result<Vec<ShardReport>, DataplaneError> {
        self.shards
            .into_iter()
            .enumerate()
            .map(|(i, h)| {
                h.join()
                    .map_err(|_| DataplaneError::Shard { shard: i, source: ShardError::Panicked })?
                    .map_err(|source| DataplaneError::Shard { shard: i, source })
            })
            .collect()
    }
}

type MemoryEnds = (Vec<Option<MemoryDispatchSource>>, MemoryStatusSink);

/// A shard's ends of the two topics, or what it builds them from on its own thread.
enum ShardIo {
    Memory(Option<MemoryDispatchSource>, MemoryStatusSink),
    Kafka(BusSettings),
}

/// Everything one shard thread starts with.
struct ShardStart {
    i: usize,
    cpu: Option<usize>,
    tuning: Tuning,
    limiter: LimiterChoice,
    io: ShardIo,
    provider: ProviderSettings,
    tracker: Arc<Tracker>,
    holder: String,
    global_cap: u32,
    ceiling: u32,
    shutdown_rx: watch::Receiver<bool>,
    health: Arc<Health>,
    /// Channels of each trunk held until `orphans_until` ([`orphan_channels`]).
    orphans: Vec<u32>,
    orphans_until: std::time::Instant,
}

/// The body of one shard's thread: pin, build the runtime, run the shard.
fn run_shard_thread(start: ShardStart) -> Result<ShardReport, ShardError> {
    if let Some(cpu) = start.cpu
        && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
    {
        tracing::warn!(shard = start.i, cpu, "could not pin shard to CPU");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ShardError::Thread)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run_shard(start))
}

/// Connects the shard's limiter, bus and journal, runs the shard with its lease driver beside
/// it, and stops the driver once the shard is done.
async fn run_shard(start: ShardStart) -> Result<ShardReport, ShardError> {
    let (i, global_cap, ceiling, orphans_until) = (start.i, start.global_cap, start.ceiling, start.orphans_until);
    let ShardStart { tuning, limiter, io, provider, tracker, holder, shutdown_rx, health, orphans, .. } = start;
    let backend = match limiter {
        LimiterChoice::Local(l) => Backend::Local(l),
        LimiterChoice::Redis { url, prefix } => {
            // A shard started while Redis restarts waits for it (its lease would refuse every
            // dial until then anyway).
            let transient = dialer_limiter::LimiterError::is_unavailable;
            let connect = || RedisBackend::connect(&url, &prefix, std::time::Duration::from_secs(1));
            let wait = dialer_telemetry::startup::STARTUP_WAIT;
            Backend::Redis(dialer_telemetry::startup::until_up("the limiter's Redis", wait, transient, connect).await?)
        }
    };
    let lease_settings = lease_covering(&tuning.lease, provider.longest_call());
    let (driver, lease) = LeaseDriver::new(backend, holder, lease_settings, global_cap);
    let driver = driver.with_tick(std::time::Duration::from_millis(tuning.timings.lease_tick_ms));
    let (stop_driver, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::task::spawn_local(driver.run(async move {
        let _ = stop_rx.await;
    }));
    let provider = match provider.kind {
        ProviderKind::Mock => AnyProvider::Mock(MockProvider::new(provider, tracker, i)),
        ProviderKind::Sip => {
            let (shard, shards) = tuning.global_shard(i);
            let sip = sip::SipProvider::start(provider, shard, shards).await?;
            sip.hold_orphans(&orphans, tokio::time::Instant::from_std(orphans_until));
            AnyProvider::Sip(sip)
        }
    };
    let journal = open_journal(&tuning)?;
    let cfg = ShardConfig { index: i as u16, tuning, per_campaign_ceiling: ceiling, health };
    let report = match io {
        ShardIo::Memory(source, sink) => {
            let source = source.ok_or(ShardError::ReceiverTaken)?;
            Shard::new(cfg, source, sink, lease, provider, journal).run(shutdown_rx).await
        }
        ShardIo::Kafka(bus) => {
            let (source, sink) = kafka_ends(&bus, &cfg.tuning, i)?;
            Shard::new(cfg, source, sink, lease, provider, journal).run(shutdown_rx).await
        }
    };
    let _ = stop_driver.send(());
    let _ = driver.await;
    Ok(report)
}

/// Per trunk, per shard of this process: the channels held at start for the calls a killed
/// data plane may have left up on the trunks (SIP, with the journal on): the journal's
/// unresolved attempts in partitions no running shard holds. Which trunk each call went out on
/// is not journaled, so each trunk holds them all, within this process's shares of it.
fn orphan_channels(opts: &DataplaneOptions) -> Result<Vec<Vec<u32>>, DataplaneError> {
    let n = opts.tuning.shards.count;
    if opts.provider.kind != ProviderKind::Sip {
        return Ok(Vec::new());
    }
    let in_journal = if opts.tuning.journal.dir.is_empty() {
        0
    } else {
        journal::orphans(std::path::Path::new(&opts.tuning.journal.dir))
            .map_err(|e| DataplaneError::Shard { shard: 0, source: e.into() })?
    };
    let orphans = u32::try_from(in_journal + opts.left_up).unwrap_or(u32::MAX);
    let places: Vec<(usize, usize)> = (0..n).map(|i| opts.tuning.global_shard(i)).collect();
    Ok(opts.provider.trunks.iter().map(|t| sip::trunk::orphan_holds(orphans, t.max_channels, &places)).collect())
}

/// The lease as a shard holds it: one that is not renewed (its process was killed) expires no
/// sooner than the longest call, because nobody hangs up the calls it held and the carrier may
/// keep them up that long: they stay counted against the global and campaign caps meanwhile.
/// The cost is the killed holder's spare tokens, idle as long.
fn lease_covering(
    l: &dialer_limiter::LeaseSettings,
    longest_call: std::time::Duration,
) -> dialer_limiter::LeaseSettings {
    dialer_limiter::LeaseSettings { ttl: l.ttl.max(longest_call), ..l.clone() }
}

/// Shard `i`'s consumer of the dispatch topic and producer of the status topic.
fn kafka_ends(
    bus: &BusSettings,
    tuning: &Tuning,
    i: usize,
) -> Result<(KafkaDispatchSource, KafkaStatusSink), ShardError> {
    let kafka = |what| move |source| ShardError::Kafka { what, source };
    let clients = ClientSettings { brokers: bus.brokers.clone(), tuning: tuning.kafka.clone() };
    let s = &tuning.shards;
    let source = KafkaDispatchSource::new(
        &clients,
        &bus.dispatch_topic,
        &bus.group_id,
        s.assignment,
        s.partitions,
        tuning.global_shard(i),
    )
    .map_err(kafka("consumer"))?;
    let sink =
        KafkaStatusSink::new(&clients, &bus.status_topic, &bus.dead_letter_topic, i).map_err(kafka("producer"))?;
    Ok((source, sink))
}

/// The provider a shard places its calls with (one `match` per call, no trait object). Built
/// once per shard and never moved on the dial path, so the mock's size is no cost.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum AnyProvider {
    Mock(MockProvider),
    Sip(sip::SipProvider),
}

impl Provider for AnyProvider {
    fn place_call(&self, msg: &dialer_domain::messages::DispatchMessage) -> provider::CallFuture {
        match self {
            AnyProvider::Mock(p) => p.place_call(msg),
            AnyProvider::Sip(p) => p.place_call(msg),
        }
    }

    fn place(&self, msg: &dialer_domain::messages::DispatchMessage) -> provider::Placed {
        match self {
            AnyProvider::Mock(p) => p.place(msg),
            AnyProvider::Sip(p) => p.place(msg),
        }
    }
}

/// The attempt journal, when `journal.dir` is set. One directory per host, shared by its
/// shards: each partition has its own file, so whichever shard owns a partition after a
/// restart finds its history.
fn open_journal(tuning: &Tuning) -> Result<Option<journal::Journal>, ShardError> {
    if tuning.journal.dir.is_empty() {
        return Ok(None);
    }
    let dir = std::path::Path::new(&tuning.journal.dir);
    let j = journal::Journal::open_with(dir, !tuning.journal.no_sync, tuning.journal.io)?;
    Ok(Some(j.compact_after(tuning.journal.compact_after)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn a_lease_outlives_the_longest_call_and_keeps_the_rest_of_its_tuning() {
        let tuned = dialer_limiter::LeaseSettings { ttl: Duration::from_secs(5), ..Default::default() };
        let held = super::lease_covering(&tuned, Duration::from_secs(17));
        assert_eq!(held.ttl, Duration::from_secs(17));
        assert_eq!(held.renew_every, tuned.renew_every);
        assert_eq!(
            super::lease_covering(&tuned, Duration::from_secs(1)).ttl,
            Duration::from_secs(5),
            "never shortened"
        );
    }
}
