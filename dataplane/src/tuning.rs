//! Per-machine tuning of the data plane, from a TOML file in `tuning/`. Unknown keys and
//! impossible values are refused with the key and the reason.

use std::time::Duration;

use dialer_limiter::LeaseSettings;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("cannot read tuning file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("tuning file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("tuning key {key}: {reason}")]
    Invalid { key: String, reason: String },
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
}

/// The attempt journal (no double dial across crashes): see [`crate::journal`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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

/// How the dispatch topic's partitions reach the shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Assignment {
    /// Each shard is a member of the consumer group; the broker spreads partitions.
    Group,
    /// Shard `i` of `n` reads the partitions `p` with `p % n == i` (of `shards.partitions`),
    /// committing to the group's offsets without joining it.
    Static,
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
pub struct KafkaTuning {
    pub fetch_min_bytes: u32,
    pub fetch_wait_max_ms: u32,
    pub linger_ms: u32,
    pub batch_num_messages: u32,
    /// librdkafka's per-consumer prefetch bound.
    pub queued_max_messages_kbytes: u32,
    /// Offsets are committed at most this often.
    pub commit_every_ms: u64,
    /// How long the producer tries to deliver a status event before reporting it failed
    /// (librdkafka `message.timeout.ms`); the shard then produces it again, with back-off.
    pub message_timeout_ms: u32,
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

impl Default for KafkaTuning {
    fn default() -> Self {
        KafkaTuning {
            fetch_min_bytes: 1,
            fetch_wait_max_ms: 5,
            linger_ms: 5,
            batch_num_messages: 10_000,
            queued_max_messages_kbytes: 65_536,
            commit_every_ms: 200,
            message_timeout_ms: 30_000,
        }
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

    pub fn from_toml(text: &str) -> Result<Tuning, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and validates a tuning file.
    pub fn load(path: &std::path::Path, semaphore_ttl: Duration) -> Result<Tuning, TuningError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TuningError::Read { path: path.display().to_string(), source })?;
        let t = Tuning::from_toml(&text)
            .map_err(|message| TuningError::Parse { path: path.display().to_string(), message })?;
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

    /// Refuses impossible values, naming the key.
    /// Checks the dispatch topic's partition count against this tuning: with static assignment
    /// the shards split exactly `shards.partitions`, so the topic must have that many; with a
    /// consumer group, fewer partitions than shards leaves shards idle (the warning returned).
    pub fn check_dispatch_partitions(&self, topic_partitions: i32) -> Result<Option<String>, String> {
        let s = &self.shards;
        match s.assignment {
            Assignment::Static if topic_partitions != s.partitions => Err(format!(
                "the dispatch topic has {topic_partitions} partitions but tuning shards.partitions is {}: \
                 set shards.partitions = {topic_partitions} (bus.dispatch_partitions creates the topic)",
                s.partitions
            )),
            Assignment::Group if (topic_partitions as usize) < s.count => Ok(Some(format!(
                "the dispatch topic has {topic_partitions} partitions for {} shards: some shards will idle; \
                 raise bus.dispatch_partitions (for a new topic) or add partitions to it",
                s.count
            ))),
            _ => Ok(None),
        }
    }

    pub fn validate(&self, semaphore_ttl: Duration) -> Result<(), TuningError> {
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
        let k = &self.kafka;
        if k.batch_num_messages == 0 {
            return Err(invalid("kafka.batch_num_messages", "must be at least 1"));
        }
        if k.message_timeout_ms < 1000 {
            return Err(invalid("kafka.message_timeout_ms", "must be at least 1000"));
        }
        if k.commit_every_ms == 0 {
            return Err(invalid("kafka.commit_every_ms", "must be at least 1"));
        }
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
        self.lease_settings().check(semaphore_ttl).map_err(|e| match e {
            dialer_limiter::LimiterError::Config { key, reason } => {
                invalid(&format!("lease.{}", key.trim_start_matches("lease_")), reason)
            }
            other => invalid("lease", other.to_string()),
        })
    }
}

/// The shard that owns `partition` under static assignment (`partition % shards`).
pub fn shard_of_partition(partition: i32, shards: usize) -> usize {
    (partition.rem_euclid(shards as i32)) as usize
}

/// The partitions shard `shard` of `shards` owns under static assignment.
pub fn partitions_of_shard(shard: usize, shards: usize, partitions: i32) -> Vec<i32> {
    (0..partitions).filter(|p| shard_of_partition(*p, shards) == shard).collect()
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
        assert_eq!(t.check_dispatch_partitions(48), Ok(None));
        let e = t.check_dispatch_partitions(8).expect_err("8 partitions split as 48");
        assert!(e.contains("shards.partitions") && e.contains("48"), "{e}");
        t.shards.assignment = Assignment::Group;
        assert!(t.check_dispatch_partitions(8).expect("runs").is_some_and(|w| w.contains("idle")));
        assert_eq!(t.check_dispatch_partitions(48), Ok(None));
    }

    #[test]
    fn partitions_split_disjointly_and_completely() {
        for shards in 1..9 {
            for partitions in [shards as i32, 8, 48, 97] {
                let mut seen = vec![0; partitions as usize];
                for s in 0..shards {
                    for p in partitions_of_shard(s, shards, partitions) {
                        assert_eq!(shard_of_partition(p, shards), s);
                        seen[p as usize] += 1;
                    }
                }
                assert!(seen.iter().all(|n| *n == 1), "{shards} shards, {partitions} partitions");
            }
        }
        assert_eq!(partitions_of_shard(1, 2, 8), vec![1, 3, 5, 7]);
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
        assert!(Tuning::from_toml("[shards]\ncuont = 2\n").unwrap_err().contains("cuont"));
        assert!(Tuning::from_toml("[shard]\ncount = 2\n").unwrap_err().contains("shard"));
        let cases: Vec<(&str, &str)> = vec![
            ("[shards]\ncount = 0\n", "shards.count"),
            ("[shards]\ncount = 2\ncpus = [0]\n", "shards.cpus"),
            ("[shards]\ncount = 1\ncpus = [4096]\n", "shards.cpus"),
            ("[shards]\ncount = 4\npartitions = 2\n", "shards.partitions"),
            ("[buffers]\npause_partition_at = 10\nresume_partition_at = 10\n", "buffers.resume_partition_at"),
            ("[lease]\nbatch = 4\nlow_water = 8\n", "lease.low_water"),
            ("[lease]\nttl_ms = 700000\n", "lease.ttl"),
            ("[kafka]\ncommit_every_ms = 0\n", "kafka.commit_every_ms"),
        ];
        for (text, key) in cases {
            let t = Tuning::from_toml(text).expect("parses");
            let e = t.validate(TTL).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
    }
}
