//! The data plane of the dialer: thread-per-core shards that dial.
//!
//! [`Dataplane::start`] starts one shard per configured core, each on its own thread with its own
//! single-threaded tokio runtime (optionally pinned to a CPU), its own lease cache and limiter
//! connection, its own consumer of a disjoint set of dispatch partitions and its own status
//! producer. Shards share nothing mutable on the hot path; they meet only in the limiter (by
//! batched lease updates) and in the provider's independent tracker (a test instrument).
//!
//! Modules: [`tuning`] (per-machine settings, partition→shard mapping), [`provider`] (the
//! telephony boundary, mock provider, tracker), [`shard`] (the dial loop), [`bus`] (in-process
//! bus), [`kafka`] (rdkafka consumer/producer), [`offsets`] (commit points).

pub mod bus;
pub mod health;
pub mod journal;
pub mod kafka;
pub mod offsets;
pub mod provider;
pub mod shard;
pub mod tuning;

use std::sync::Arc;
use std::thread::JoinHandle;

use dialer_domain::messages::StatusEvent;
use dialer_limiter::{Backend, LeaseDriver, LocalBackend, RedisBackend};
use tokio::sync::{mpsc, watch};

pub use bus::{Delivery, Malformed, MemoryBus, MemoryBusEnds};
pub use health::{Health, ShardStatus};
pub use kafka::KafkaTopics;
pub use provider::{MockProvider, MockSettings, Provider, Tracker};
pub use shard::{ShardConfig, ShardReport};
pub use tuning::{Assignment, Tuning};

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Tuning(#[from] tuning::TuningError),
    #[error("shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
    #[error("the in-process bus has {have} shard receivers for {want} shards")]
    Receivers { have: usize, want: usize },
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
    /// In-process: one receiver per shard, and the status channel's sender.
    Memory {
        receivers: Vec<mpsc::Receiver<Delivery>>,
        events: mpsc::Sender<StatusEvent>,
    },
    Kafka(KafkaTopics),
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
    pub mock: MockSettings,
    pub tracker: Arc<Tracker>,
    /// Distinguishes this process's lease holders from others' (e.g. host + pid + start time).
    pub instance: String,
}

/// A running data plane.
#[derive(Debug)]
pub struct Dataplane {
    shards: Vec<JoinHandle<Result<ShardReport, String>>>,
    shutdown: watch::Sender<bool>,
    health: Arc<Health>,
}

impl Dataplane {
    pub fn start(opts: DataplaneOptions) -> Result<Dataplane, DataplaneError> {
        let n = opts.tuning.shards.count;
        let (shutdown, shutdown_rx) = watch::channel(false);
        if !opts.tuning.journal.dir.is_empty() {
            // Fail at start, not in a shard, when the journal directory is unusable.
            let j = journal::Journal::open_with(
                std::path::Path::new(&opts.tuning.journal.dir),
                !opts.tuning.journal.no_sync,
                opts.tuning.journal.io,
            )
            .map_err(|e| DataplaneError::Shard { shard: 0, reason: e.to_string() })?;
            tracing::info!(dir = %opts.tuning.journal.dir, io = j.io_name(), "attempt journal");
        }
        let health = Arc::new(Health::new(n));
        metrics::gauge!("dialer_limiter_global_cap").set(f64::from(opts.global_cap));
        let mut memory: Option<MemoryEnds> = None;
        let mut kafka: Option<KafkaTopics> = None;
        match opts.bus {
            BusChoice::Memory { receivers, events } => {
                if receivers.len() != n {
                    return Err(DataplaneError::Receivers { have: receivers.len(), want: n });
                }
                memory = Some((receivers.into_iter().map(Some).collect(), events));
            }
            BusChoice::Kafka(t) => kafka = Some(t),
        }
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let tuning = opts.tuning.clone();
            let limiter = opts.limiter.clone();
            let mock = opts.mock.clone();
            let tracker = opts.tracker.clone();
            let holder = format!("{}-shard{i}", opts.instance);
            let (global_cap, ceiling) = (opts.global_cap, opts.per_campaign_ceiling);
            let shutdown_rx = shutdown_rx.clone();
            let cpu = tuning.shards.cpus.get(i).copied();
            let health = health.clone();
            let failed = health.clone();
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
                        mock,
                        tracker,
                        holder,
                        global_cap,
                        ceiling,
                        shutdown_rx,
                        health,
                    };
                    let r = run_shard_thread(start);
                    if r.is_err() {
                        failed.shard(i).stopped();
                    }
                    r
                })
                .map_err(|e| DataplaneError::Shard { shard: i, reason: e.to_string() })?;
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
                    .map_err(|_| DataplaneError::Shard { shard: i, reason: "panicked".into() })?
                    .map_err(|reason| DataplaneError::Shard { shard: i, reason })
            })
            .collect()
    }
}

type MemoryEnds = (Vec<Option<mpsc::Receiver<Delivery>>>, mpsc::Sender<StatusEvent>);

enum ShardIo {
    Memory(Option<mpsc::Receiver<Delivery>>, mpsc::Sender<StatusEvent>),
    Kafka(KafkaTopics),
}

/// Everything one shard thread starts with.
struct ShardStart {
    i: usize,
    cpu: Option<usize>,
    tuning: Tuning,
    limiter: LimiterChoice,
    io: ShardIo,
    mock: MockSettings,
    tracker: Arc<Tracker>,
    holder: String,
    global_cap: u32,
    ceiling: u32,
    shutdown_rx: watch::Receiver<bool>,
    health: Arc<Health>,
}

/// The body of one shard's thread: pin, build the runtime, connect, run the shard loop.
fn run_shard_thread(start: ShardStart) -> Result<ShardReport, String> {
    let ShardStart { i, cpu, tuning, limiter, io, mock, tracker, holder, global_cap, ceiling, shutdown_rx, health } =
        start;
    if let Some(cpu) = cpu
        && !core_affinity::set_for_current(core_affinity::CoreId { id: cpu })
    {
        tracing::warn!(shard = i, cpu, "could not pin shard to CPU");
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let backend = match limiter {
            LimiterChoice::Local(l) => Backend::Local(l),
            LimiterChoice::Redis { url, prefix } => Backend::Redis(
                RedisBackend::connect(&url, &prefix, std::time::Duration::from_secs(1))
                    .await
                    .map_err(|e| e.to_string())?,
            ),
        };
        let (driver, lease) = LeaseDriver::new(backend, holder, tuning.lease_settings(), global_cap);
        let (stop_driver, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driver = tokio::task::spawn_local(driver.run(async move {
            let _ = stop_rx.await;
        }));
        let (source, sink) = match io {
            ShardIo::Memory(rx, tx) => {
                (shard::Source::Memory(rx.ok_or("receiver taken twice")?), shard::Sink::Memory(tx))
            }
            ShardIo::Kafka(t) => (
                shard::Source::Kafka(Box::new(
                    kafka::KafkaSource::new(
                        &t,
                        &tuning.kafka,
                        tuning.shards.assignment,
                        tuning.shards.partitions,
                        tuning.global_shard(i).0,
                        tuning.global_shard(i).1,
                    )
                    .map_err(|e| format!("consumer: {e}"))?,
                )),
                shard::Sink::Kafka(kafka::KafkaSink::new(&t, &tuning.kafka, i).map_err(|e| format!("producer: {e}"))?),
            ),
        };
        let provider = MockProvider::new(mock, tracker, i);
        let journal = if tuning.journal.dir.is_empty() {
            None
        } else {
            // One directory per host, shared by its shards: each partition has its own file, so
            // whichever shard owns a partition after a restart finds its history.
            let dir = std::path::Path::new(&tuning.journal.dir);
            Some(
                journal::Journal::open_with(dir, !tuning.journal.no_sync, tuning.journal.io)
                    .map_err(|e| e.to_string())?,
            )
        };
        let cfg = ShardConfig { index: i as u16, tuning, per_campaign_ceiling: ceiling, health };
        let report = shard::run_shard(cfg, source, sink, lease, provider, journal, shutdown_rx).await;
        let _ = stop_driver.send(());
        let _ = driver.await;
        Ok(report)
    })
}
