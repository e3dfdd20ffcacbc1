//! Per-machine tuning of the data plane, from a TOML file in `tuning/`. Unknown keys and
//! impossible values are refused with the key and the reason.

use std::time::Duration;

pub use dialer_bus::kafka::{Assignment, Assignor, Compression, KafkaTuning};
use dialer_limiter::LeaseSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("cannot read tuning file {path}: {source}; check the path given with --tuning")]
    Read { path: String, source: std::io::Error },
    #[error("tuning file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("tuning key {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error(
        "the dispatch topic has {topic} partitions but tuning shards.partitions is {tuning}: \
         set shards.partitions = {topic} (bus.dispatch_partitions creates the topic)"
    )]
    PartitionsDiffer { topic: i32, tuning: i32 },
}

fn invalid(key: &str, reason: impl Into<String>) -> TuningError {
    TuningError::Invalid { key: key.into(), reason: reason.into() }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    pub shards: ShardTuning,
    pub kafka: KafkaTuning,
    pub lease: LeaseTuning,
    pub buffers: BufferTuning,
    pub shutdown: ShutdownTuning,
    pub journal: JournalTuning,
    pub timings: TimingTuning,
}

/// The shard's and lease driver's waits, each with the reason for its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimingTuning {
    /// After a failed dispatch fetch, wait this long before fetching again: the broker is away,
    /// and fetching at once would spin (100 ms: a broker back within that loses nothing).
    pub fetch_retry_ms: u64,
    /// Status events the broker refused are produced again after this back-off, doubling while
    /// produces keep failing… (100 ms: a leader change takes about that long)
    pub reproduce_first_ms: u64,
    /// …up to this (5 s: a broker down for minutes gets a try every few seconds, not a flood).
    pub reproduce_max_ms: u64,
    /// How often a shard beats its health heartbeat and updates its gauges (1 s: `/readyz`
    /// calls a shard stuck after 5 s without one).
    pub heartbeat_ms: u64,
    /// The lease driver's tick: a core's due lease updates go out at most this late, and fair
    /// shares refresh at most this often (20 ms: a fraction of the shortest calls operators run,
    /// one backend call per core per tick at most).
    pub lease_tick_ms: u64,
}

impl Default for TimingTuning {
    fn default() -> Self {
        TimingTuning {
            fetch_retry_ms: 100,
            reproduce_first_ms: 100,
            reproduce_max_ms: 5_000,
            heartbeat_ms: 1_000,
            lease_tick_ms: dialer_limiter::MIN_REFRESH.as_millis() as u64,
        }
    }
}

/// The attempt journal (no double dial across crashes): see [`crate::journal`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalTuning {
    /// Directory of the per-partition journal files; empty = no journal (a crash may then
    /// redial the calls that were in progress). Keep it on local disk that survives restarts.
    pub dir: String,
    /// `fdatasync` each group commit (default true). False only measures the write path.
    pub no_sync: bool,
    /// How a group commit reaches the disk: `auto` (io_uring where the kernel allows it, else
    /// plain system calls), `io_uring`, or `std` (a write and an fdatasync per touched file).
    pub io: JournalIo,
    /// A partition's journal file is rewritten (only its live records kept) after this many
    /// appends since the last rewrite (200,000: a few MB of file, a rewrite every few seconds at
    /// full speed, so replay after a crash reads little).
    pub compact_after: usize,
}

impl Default for JournalTuning {
    fn default() -> Self {
        JournalTuning { dir: String::new(), no_sync: false, io: JournalIo::default(), compact_after: 200_000 }
    }
}

/// See [`JournalTuning::io`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalIo {
    #[default]
    Auto,
    IoUring,
    Std,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardTuning {
    /// Shards (one thread with its own runtime each); normally one per core.
    pub count: usize,
    /// CPU of each shard when pinning (`cpus[i]` for shard i); empty = no pinning.
    pub cpus: Vec<usize>,
    pub assignment: Assignment,
    /// Partitions of the dispatch topic (static assignment, and topic creation).
    pub partitions: i32,
    /// Static assignment over several data-plane processes: this process is `instance` of
    /// `instances`, and its shard `i` reads the partitions of global shard
    /// `instance × count + i` of `instances × count` (`dialer dataplane --instance K --instances N`).
    pub instance: usize,
    pub instances: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseTuning {
    pub batch: u32,
    pub low_water: u32,
    pub ttl_ms: u64,
    pub renew_every_ms: u64,
    /// How often a core reports its demand and learns its fair share (see `dialer_limiter::fair`):
    /// shares converge within about this long. One backend call per core per refresh.
    pub refresh_every_ms: u64,
    pub idle_give_back_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferTuning {
    /// Dispatch messages waiting in a shard (all campaigns) before it stops taking more.
    pub max_queued_per_shard: usize,
    /// A partition is paused when this many of its messages wait in the shard…
    pub pause_partition_at: usize,
    /// …and resumed when they drop to this.
    pub resume_partition_at: usize,
    /// Calls a campaign may start in one turn before the next campaign's turn (fairness).
    pub quantum: usize,
    /// Most dispatch messages taken in one fetch (the shard then dials before fetching again).
    pub fetch_batch: usize,
    /// Status events waiting to be produced again (the broker refused them) before the shard
    /// stops taking messages: memory stays bounded while the broker is away.
    pub max_reproduce: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownTuning {
    /// How long a graceful stop waits for calls in progress.
    pub grace_ms: u64,
}

impl Default for ShardTuning {
    fn default() -> Self {
        ShardTuning { count: 2, cpus: vec![], assignment: Assignment::Static, partitions: 8, instance: 0, instances: 1 }
    }
}

impl Default for LeaseTuning {
    fn default() -> Self {
        let d = LeaseSettings::default();
        LeaseTuning {
            batch: d.batch,
            low_water: d.low_water,
            ttl_ms: d.ttl.as_millis() as u64,
            renew_every_ms: d.renew_every.as_millis() as u64,
            refresh_every_ms: d.refresh_every.as_millis() as u64,
            idle_give_back_ms: d.idle_give_back.as_millis() as u64,
        }
    }
}

impl Default for BufferTuning {
    fn default() -> Self {
        BufferTuning {
            max_queued_per_shard: 50_000,
            pause_partition_at: 20_000,
            resume_partition_at: 10_000,
            quantum: 64,
            fetch_batch: 1024,
            max_reproduce: 10_000,
        }
    }
}

impl Default for ShutdownTuning {
    fn default() -> Self {
        ShutdownTuning { grace_ms: 10_000 }
    }
}

impl Tuning {
    /// The global index of shard `i` of this process and the number of shards of all
    /// processes, for static assignment.
    pub fn global_shard(&self, i: usize) -> (usize, usize) {
        (self.shards.instance * self.shards.count + i, self.shards.instances * self.shards.count)
    }

    pub fn from_toml(text: &str) -> Result<Tuning, toml::de::Error> {
        toml::from_str(text)
    }

    /// Reads and validates a tuning file.
    pub fn load(path: &std::path::Path, semaphore_ttl: Duration) -> Result<Tuning, TuningError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TuningError::Read { path: path.display().to_string(), source })?;
        let t = Tuning::from_toml(&text)
            .map_err(|source| TuningError::Parse { path: path.display().to_string(), source })?;
        t.validate(semaphore_ttl)?;
        Ok(t)
    }

    pub fn lease_settings(&self) -> LeaseSettings {
        LeaseSettings {
            batch: self.lease.batch,
            low_water: self.lease.low_water,
            ttl: Duration::from_millis(self.lease.ttl_ms),
            renew_every: Duration::from_millis(self.lease.renew_every_ms),
            refresh_every: Duration::from_millis(self.lease.refresh_every_ms),
            idle_give_back: Duration::from_millis(self.lease.idle_give_back_ms),
            retry_after: Duration::from_millis(200),
        }
    }

    /// Checks the dispatch topic's partition count against this tuning: with static assignment
    /// the shards split exactly `shards.partitions`, so the topic must have that many; with a
    /// consumer group, fewer partitions than shards leaves shards idle (the warning returned).
    pub fn check_dispatch_partitions(&self, topic_partitions: i32) -> Result<Option<String>, TuningError> {
        let s = &self.shards;
        match s.assignment {
            Assignment::Static if topic_partitions != s.partitions => {
                Err(TuningError::PartitionsDiffer { topic: topic_partitions, tuning: s.partitions })
            }
            Assignment::Group if (topic_partitions as usize) < s.count => Ok(Some(format!(
                "the dispatch topic has {topic_partitions} partitions for {} shards: some shards will idle; \
                 raise bus.dispatch_partitions (for a new topic) or add partitions to it",
                s.count
            ))),
            _ => Ok(None),
        }
    }

    /// Refuses impossible values, naming the key.
    pub fn validate(&self, semaphore_ttl: Duration) -> Result<(), TuningError> {
        self.validate_shards()?;
        self.validate_kafka_and_buffers()?;
        self.validate_timings()?;
        if self.journal.compact_after < 1_000 {
            return Err(invalid(
                "journal.compact_after",
                "must be at least 1000 (a rewrite per few records is all I/O)",
            ));
        }
        self.lease_settings().check(semaphore_ttl).map_err(|e| match e {
            dialer_limiter::LimiterError::Config { key, reason } => {
                invalid(&format!("lease.{}", key.trim_start_matches("lease_")), reason)
            }
            other => invalid("lease", other.to_string()),
        })
    }

    fn validate_timings(&self) -> Result<(), TuningError> {
        let t = &self.timings;
        if t.fetch_retry_ms == 0 {
            return Err(invalid("timings.fetch_retry_ms", "must be at least 1 (0 spins while the broker is away)"));
        }
        if t.reproduce_first_ms == 0 || t.reproduce_first_ms > t.reproduce_max_ms {
            return Err(invalid("timings.reproduce_first_ms", "must be between 1 and timings.reproduce_max_ms"));
        }
        if t.heartbeat_ms == 0 || t.heartbeat_ms > 2_500 {
            return Err(invalid(
                "timings.heartbeat_ms",
                "must be between 1 and 2500 (/readyz calls a shard stuck after 5 s without a heartbeat)",
            ));
        }
        if t.lease_tick_ms == 0 || t.lease_tick_ms > self.lease.refresh_every_ms {
            return Err(invalid("timings.lease_tick_ms", "must be between 1 and lease.refresh_every_ms"));
        }
        Ok(())
    }

    fn validate_shards(&self) -> Result<(), TuningError> {
        let s = &self.shards;
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
        if s.count == 0 || s.count > 1024 {
            return Err(invalid("shards.count", "must be between 1 and 1024"));
        }
        if !s.cpus.is_empty() {
            if s.cpus.len() != s.count {
                return Err(invalid(
                    "shards.cpus",
                    format!(
                        "lists {} CPUs for {} shards: give one per shard, or none to not pin",
                        s.cpus.len(),
                        s.count
                    ),
                ));
            }
            if let Some(c) = s.cpus.iter().find(|c| **c >= cores) {
                return Err(invalid("shards.cpus", format!("CPU {c} does not exist on this machine ({cores} CPUs)")));
            }
        }
        if s.partitions < 1 {
            return Err(invalid("shards.partitions", "must be at least 1"));
        }
        if s.instances == 0 || s.instance >= s.instances {
            return Err(invalid("shards.instance", format!("must be below shards.instances ({})", s.instances)));
        }
        if s.assignment == Assignment::Static && (s.partitions as usize) < s.count * s.instances {
            return Err(invalid(
                "shards.partitions",
                format!(
                    "{} partitions cannot feed {} shards × {} instances: some shards would idle",
                    s.partitions, s.count, s.instances
                ),
            ));
        }
        Ok(())
    }

    fn validate_kafka_and_buffers(&self) -> Result<(), TuningError> {
        self.kafka.check().map_err(|(key, reason)| invalid(&format!("kafka.{key}"), reason))?;
        let b = &self.buffers;
        if b.max_queued_per_shard == 0 {
            return Err(invalid("buffers.max_queued_per_shard", "must be at least 1"));
        }
        if b.resume_partition_at >= b.pause_partition_at {
            return Err(invalid("buffers.resume_partition_at", "must be below buffers.pause_partition_at"));
        }
        if b.pause_partition_at > b.max_queued_per_shard {
            return Err(invalid("buffers.pause_partition_at", "must not exceed buffers.max_queued_per_shard"));
        }
        if b.quantum == 0 {
            return Err(invalid("buffers.quantum", "must be at least 1"));
        }
        if b.fetch_batch == 0 {
            return Err(invalid("buffers.fetch_batch", "must be at least 1"));
        }
        if b.max_reproduce == 0 {
            return Err(invalid("buffers.max_reproduce", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn the_dispatch_topic_must_match_a_static_split_and_feed_every_shard() {
        let mut t = Tuning::default();
        t.shards.count = 16;
        t.shards.partitions = 48;
        t.shards.assignment = Assignment::Static;
        assert!(t.check_dispatch_partitions(48).expect("fits").is_none());
        let e = t.check_dispatch_partitions(8).expect_err("8 partitions split as 48").to_string();
        assert!(e.contains("shards.partitions") && e.contains("48"), "{e}");
        t.shards.assignment = Assignment::Group;
        assert!(t.check_dispatch_partitions(8).expect("runs").is_some_and(|w| w.contains("idle")));
        assert!(t.check_dispatch_partitions(48).expect("fits").is_none());
    }

    #[test]
    fn shipped_tuning_files_are_valid() {
        let dir = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../tuning");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("tuning/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&p).expect("read");
                let t = Tuning::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                // CPU lists of bigger machines are checked for shape only here.
                let mut shape = t.clone();
                shape.shards.cpus.clear();
                shape.validate(TTL).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(t.shards.cpus.is_empty() || t.shards.cpus.len() == t.shards.count, "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 3, "laptop, 16-core and 64-core files");
    }

    #[test]
    fn refuses_unknown_keys_and_impossible_values() {
        assert!(Tuning::from_toml("[shards]\ncuont = 2\n").unwrap_err().to_string().contains("cuont"));
        assert!(Tuning::from_toml("[shard]\ncount = 2\n").unwrap_err().to_string().contains("shard"));
        let zstd = Tuning::from_toml("[kafka]\ncompression = \"zstd\"\n").unwrap_err().to_string();
        assert!(zstd.contains("compression") && zstd.contains("lz4"), "names the key and what it takes: {zstd}");
        let lz4 = Tuning::from_toml("[kafka]\ncompression = \"lz4\"\n").expect("lz4");
        assert_eq!(lz4.kafka.compression.as_str(), "lz4");
        let cases: Vec<(&str, &str)> = vec![
            ("[shards]\ncount = 0\n", "shards.count"),
            ("[shards]\ncount = 2\ncpus = [0]\n", "shards.cpus"),
            ("[shards]\ncount = 1\ncpus = [4096]\n", "shards.cpus"),
            ("[shards]\ncount = 4\npartitions = 2\n", "shards.partitions"),
            ("[buffers]\npause_partition_at = 10\nresume_partition_at = 10\n", "buffers.resume_partition_at"),
            ("[lease]\nbatch = 4\nlow_water = 8\n", "lease.low_water"),
            ("[lease]\nttl_ms = 700000\n", "lease.ttl"),
            ("[kafka]\ncommit_every_ms = 0\n", "kafka.commit_every_ms"),
            ("[timings]\nfetch_retry_ms = 0\n", "timings.fetch_retry_ms"),
            ("[timings]\nreproduce_first_ms = 9000\n", "timings.reproduce_first_ms"),
            ("[timings]\nheartbeat_ms = 6000\n", "timings.heartbeat_ms"),
            ("[timings]\nlease_tick_ms = 1000\n", "timings.lease_tick_ms"),
            ("[buffers]\nmax_reproduce = 0\n", "buffers.max_reproduce"),
            ("[journal]\ncompact_after = 10\n", "journal.compact_after"),
        ];
        for (text, key) in cases {
            let t = Tuning::from_toml(text).expect("parses");
            let e = t.validate(TTL).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
