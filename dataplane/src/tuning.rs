//! Per-machine tuning of the data plane: the types of a `tuning/*.toml` file and their
//! defaults. The binary reads and validates the file (`dialer/src/config/tuning.rs`).

pub use dialer_bus::kafka::{Assignment, Assignor, Compression, KafkaTuning};
use dialer_limiter::LeaseSettings;
use serde::{Deserialize, Serialize};

/// The dispatch topic cannot feed this tuning's static split.
#[derive(Debug, thiserror::Error)]
#[error(
    "the dispatch topic has {topic} partitions but tuning shards.partitions is {tuning}: \
     set shards.partitions = {topic} (bus.dispatch_partitions creates the topic)"
)]
pub struct PartitionsDiffer {
    pub topic: i32,
    pub tuning: i32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    pub shards: ShardTuning,
    pub kafka: KafkaTuning,
    pub lease: LeaseSettings,
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
    /// appends since the last rewrite, or twice its live records if more (200,000: up to ~15 MB
    /// of file per partition, a rewrite every few seconds at full speed, so replay after a crash
    /// reads little). Live records are the attempts started and not resolved, and those resolved
    /// within `dispatch_ttl` + a minute (rate × that × ~75 bytes). Size the journal's disk for
    /// twice the sum over the host's partitions: a rewrite needs room for its new copy.
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

    /// Checks the dispatch topic's partition count against this tuning: with static assignment
    /// the shards split exactly `shards.partitions`, so the topic must have that many; with a
    /// consumer group, fewer partitions than shards leaves shards idle (the warning returned).
    pub fn check_dispatch_partitions(&self, topic_partitions: i32) -> Result<Option<String>, PartitionsDiffer> {
        let s = &self.shards;
        match s.assignment {
            Assignment::Static if topic_partitions != s.partitions => {
                Err(PartitionsDiffer { topic: topic_partitions, tuning: s.partitions })
            }
            Assignment::Group if (topic_partitions as usize) < s.count => Ok(Some(format!(
                "the dispatch topic has {topic_partitions} partitions for {} shards: some shards will idle; \
                 raise bus.dispatch_partitions (for a new topic) or add partitions to it",
                s.count
            ))),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
