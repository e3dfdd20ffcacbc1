//! The data plane's per-machine tuning file (`tuning/*.toml`): read, and refused with the key
//! and the reason where a value is impossible (on this machine, or against the caps' settings).

use std::path::Path;
use std::time::Duration;

use dialer_bus::kafka::KafkaTuning;
use dialer_dataplane::Tuning;
use dialer_dataplane::tuning::Assignment;
use dialer_limiter::{LeaseSettings, MIN_REFRESH};

/// A refused tuning file.
#[derive(Debug, thiserror::Error)]
pub enum TuningError {
    #[error("cannot read tuning file {path}: {source}; check the path given with --tuning")]
    Read { path: String, source: std::io::Error },
    #[error("tuning file {path}: {source}")]
    Parse { path: String, source: toml::de::Error },
    #[error("tuning key {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> TuningError {
    TuningError::Invalid { key: key.into(), reason: reason.into() }
}

type Checked = Result<(), TuningError>;

/// Reads and validates a tuning file; `semaphore_ttl` is `limits.semaphore_ttl_sec` (no lease
/// outlives the reclamation window).
pub fn load(path: &Path, semaphore_ttl: Duration) -> Result<Tuning, TuningError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| TuningError::Read { path: path.display().to_string(), source })?;
    let t = from_toml(&text).map_err(|source| TuningError::Parse { path: path.display().to_string(), source })?;
    validate(&t, semaphore_ttl)?;
    Ok(t)
}

/// Parses tuning TOML, refusing unknown keys.
pub fn from_toml(text: &str) -> Result<Tuning, toml::de::Error> {
    toml::from_str(text)
}

/// Refuses impossible values, naming the key.
pub fn validate(t: &Tuning, semaphore_ttl: Duration) -> Checked {
    shards(t)?;
    kafka(&t.kafka)?;
    buffers(t)?;
    timings(t)?;
    if t.journal.compact_after < 1_000 {
        return Err(invalid("journal.compact_after", "must be at least 1000 (a rewrite per few records is all I/O)"));
    }
    lease(&t.lease, semaphore_ttl)
}

fn shards(t: &Tuning) -> Checked {
    let s = &t.shards;
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    if s.count == 0 || s.count > 1024 {
        return Err(invalid("shards.count", "must be between 1 and 1024"));
    }
    if !s.cpus.is_empty() {
        if s.cpus.len() != s.count {
            return Err(invalid(
                "shards.cpus",
                format!("lists {} CPUs for {} shards: give one per shard, or none to not pin", s.cpus.len(), s.count),
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

fn kafka(k: &KafkaTuning) -> Checked {
    if k.batch_num_messages == 0 {
        return Err(invalid("kafka.batch_num_messages", "must be at least 1"));
    }
    if k.message_timeout_ms < 1000 {
        return Err(invalid("kafka.message_timeout_ms", "must be at least 1000"));
    }
    if k.session_timeout_ms < 1_000 {
        return Err(invalid(
            "kafka.session_timeout_ms",
            "must be at least 1000 (the broker refuses less than its group.min.session.timeout.ms, 6000 by default)",
        ));
    }
    if k.commit_every_ms == 0 {
        return Err(invalid("kafka.commit_every_ms", "must be at least 1"));
    }
    Ok(())
}

fn buffers(t: &Tuning) -> Checked {
    let b = &t.buffers;
    if b.max_queued_per_shard == 0 {
        return Err(invalid("buffers.max_queued_per_shard", "must be at least 1"));
    }
    if b.resume_partition_at >= b.pause_partition_at {
        return Err(invalid("buffers.resume_partition_at", "must be below buffers.pause_partition_at"));
    }
    if b.pause_partition_at > b.max_queued_per_shard {
        return Err(invalid("buffers.pause_partition_at", "must not exceed buffers.max_queued_per_shard"));
    }
    for (key, v) in [
        ("buffers.quantum", b.quantum),
        ("buffers.fetch_batch", b.fetch_batch),
        ("buffers.max_reproduce", b.max_reproduce),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    Ok(())
}

fn timings(t: &Tuning) -> Checked {
    let tm = &t.timings;
    if tm.fetch_retry_ms == 0 {
        return Err(invalid("timings.fetch_retry_ms", "must be at least 1 (0 spins while the broker is away)"));
    }
    if tm.reproduce_first_ms == 0 || tm.reproduce_first_ms > tm.reproduce_max_ms {
        return Err(invalid("timings.reproduce_first_ms", "must be between 1 and timings.reproduce_max_ms"));
    }
    if tm.heartbeat_ms == 0 || tm.heartbeat_ms > 2_500 {
        return Err(invalid(
            "timings.heartbeat_ms",
            "must be between 1 and 2500 (/readyz calls a shard stuck after 5 s without a heartbeat)",
        ));
    }
    if tm.lease_tick_ms == 0 || Duration::from_millis(tm.lease_tick_ms) > t.lease.refresh_every {
        return Err(invalid("timings.lease_tick_ms", "must be between 1 and lease.refresh_every_ms"));
    }
    Ok(())
}

/// The lease settings against each other and the reclamation window.
fn lease(l: &LeaseSettings, semaphore_ttl: Duration) -> Checked {
    if l.batch == 0 {
        return Err(invalid("lease.batch", "must be at least 1"));
    }
    if l.low_water > l.batch {
        return Err(invalid("lease.low_water", "must not exceed lease.batch"));
    }
    if l.ttl < Duration::from_secs(1) {
        return Err(invalid("lease.ttl_ms", "must be at least 1000"));
    }
    if l.ttl > semaphore_ttl {
        return Err(invalid("lease.ttl_ms", "must not exceed TELEPHONY_SEMAPHORE_TTL_SEC (the reclamation window)"));
    }
    if l.renew_every.is_zero() || l.renew_every * 2 > l.ttl {
        return Err(invalid(
            "lease.renew_every_ms",
            "must be above 0 and at most half of lease.ttl_ms, so a lease is renewed well before it expires",
        ));
    }
    if l.refresh_every < MIN_REFRESH || l.refresh_every > l.renew_every {
        return Err(invalid(
            "lease.refresh_every_ms",
            "must be at least 20 (each refresh is a backend call per core) and at most lease.renew_every_ms",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(600);

    #[test]
    fn shipped_tuning_files_are_valid() {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tuning");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).expect("tuning/") {
            let p = e.expect("entry").path();
            if p.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&p).expect("read");
                let t = from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                // CPU lists of bigger machines are checked for shape only here.
                let mut shape = t.clone();
                shape.shards.cpus.clear();
                validate(&shape, TTL).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                assert!(t.shards.cpus.is_empty() || t.shards.cpus.len() == t.shards.count, "{}", p.display());
                n += 1;
            }
        }
        assert!(n >= 3, "laptop, 16-core and 64-core files");
    }

    #[test]
    fn refuses_unknown_keys_and_impossible_values() {
        assert!(from_toml("[shards]\ncuont = 2\n").unwrap_err().to_string().contains("cuont"));
        assert!(from_toml("[shard]\ncount = 2\n").unwrap_err().to_string().contains("shard"));
        let zstd = from_toml("[kafka]\ncompression = \"zstd\"\n").unwrap_err().to_string();
        assert!(zstd.contains("compression") && zstd.contains("lz4"), "names the key and what it takes: {zstd}");
        let lz4 = from_toml("[kafka]\ncompression = \"lz4\"\n").expect("lz4");
        assert_eq!(lz4.kafka.compression.as_str(), "lz4");
        let cases: Vec<(&str, &str)> = vec![
            ("[shards]\ncount = 0\n", "shards.count"),
            ("[shards]\ncount = 2\ncpus = [0]\n", "shards.cpus"),
            ("[shards]\ncount = 1\ncpus = [4096]\n", "shards.cpus"),
            ("[shards]\ncount = 4\npartitions = 2\n", "shards.partitions"),
            ("[buffers]\npause_partition_at = 10\nresume_partition_at = 10\n", "buffers.resume_partition_at"),
            ("[buffers]\nquantum = 0\n", "buffers.quantum"),
            ("[lease]\nbatch = 4\nlow_water = 8\n", "lease.low_water"),
            ("[lease]\nttl_ms = 700000\n", "lease.ttl"),
            ("[lease]\nrenew_every_ms = 30000\n", "lease.renew_every_ms"),
            ("[lease]\nrefresh_every_ms = 1\n", "lease.refresh_every_ms"),
            ("[kafka]\ncommit_every_ms = 0\n", "kafka.commit_every_ms"),
            ("[timings]\nfetch_retry_ms = 0\n", "timings.fetch_retry_ms"),
            ("[timings]\nreproduce_first_ms = 9000\n", "timings.reproduce_first_ms"),
            ("[timings]\nheartbeat_ms = 6000\n", "timings.heartbeat_ms"),
            ("[timings]\nlease_tick_ms = 1000\n", "timings.lease_tick_ms"),
            ("[buffers]\nmax_reproduce = 0\n", "buffers.max_reproduce"),
            ("[journal]\ncompact_after = 10\n", "journal.compact_after"),
        ];
        for (text, key) in cases {
            let t = from_toml(text).expect("parses");
            let e = validate(&t, TTL).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        assert!(validate(&Tuning::default(), TTL).is_ok(), "the defaults are valid");
    }
}
