//! Liveness and readiness of the data plane's shards, read by the admin port's `/readyz`.
//!
//! Each shard writes only its own [`ShardHealth`] (relaxed atomics, about once a second and on
//! state changes); the admin thread only reads. Nothing here is on the dial path.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use serde::Serialize;

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

/// One shard's health, written by that shard.
#[derive(Debug, Default)]
pub struct ShardHealth {
    state: AtomicU8,
    /// Wall-clock ms of the shard loop's last heartbeat.
    heartbeat_ms: AtomicU64,
    /// Lease updates have failed for longer than the lease TTL (fail-closed).
    fail_closed: AtomicBool,
    /// The last fetch from the dispatch source failed.
    source_failing: AtomicBool,
    /// The last status event or offset acknowledgement failed.
    sink_failing: AtomicBool,
    /// The attempt journal could not be written.
    journal_failing: AtomicBool,
    /// Why the shard stopped on its own (an error): set once, read by probes.
    failure: std::sync::OnceLock<String>,
}

impl ShardHealth {
    pub fn running(&self, now_ms: u64) {
        self.state.store(RUNNING, Ordering::Relaxed);
        self.heartbeat_ms.store(now_ms, Ordering::Relaxed);
    }
    pub fn stopped(&self) {
        self.state.store(STOPPED, Ordering::Relaxed);
    }
    /// The shard stopped on an error (not asked to): the process is no longer alive.
    pub fn failed(&self, why: String) {
        let _ = self.failure.set(why);
        self.stopped();
    }
    pub fn set_fail_closed(&self, v: bool) {
        self.fail_closed.store(v, Ordering::Relaxed);
    }
    pub fn set_source_failing(&self, v: bool) {
        self.source_failing.store(v, Ordering::Relaxed);
    }
    pub fn set_sink_failing(&self, v: bool) {
        self.sink_failing.store(v, Ordering::Relaxed);
    }
    pub fn set_journal_failing(&self, v: bool) {
        self.journal_failing.store(v, Ordering::Relaxed);
    }
}

/// A shard's health as `/readyz` reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShardStatus {
    pub shard: usize,
    pub ready: bool,
    /// Why not, in words an operator can act on (empty when ready).
    pub problems: Vec<String>,
}

/// The shards' health, one slot per shard.
#[derive(Debug)]
pub struct Health {
    shards: Vec<ShardHealth>,
    /// A heartbeat older than this means the shard's loop is stuck.
    pub stale_after_ms: u64,
}

impl Health {
    pub fn new(shards: usize) -> Health {
        Health { shards: (0..shards).map(|_| ShardHealth::default()).collect(), stale_after_ms: 5_000 }
    }

    pub fn shard(&self, i: usize) -> &ShardHealth {
        &self.shards[i]
    }

    /// Every shard's readiness at wall-clock `now_ms`.
    pub fn status(&self, now_ms: u64) -> Vec<ShardStatus> {
        self.shards
            .iter()
            .enumerate()
            .map(|(shard, h)| {
                let mut problems = Vec::new();
                match h.state.load(Ordering::Relaxed) {
                    STARTING => problems.push("starting: connecting to the limiter and the bus".to_string()),
                    STOPPED => problems.push(match h.failure.get() {
                        Some(why) => format!("stopped: {why}"),
                        None => "stopped".to_string(),
                    }),
                    _ => {
                        let age = now_ms.saturating_sub(h.heartbeat_ms.load(Ordering::Relaxed));
                        if age > self.stale_after_ms {
                            problems.push(format!("no heartbeat for {age} ms: the shard loop is stuck"));
                        }
                    }
                }
                if h.fail_closed.load(Ordering::Relaxed) {
                    problems.push("leases expired and the limiter (Redis) does not answer: no new dials".to_string());
                }
                if h.source_failing.load(Ordering::Relaxed) {
                    problems.push("dispatch fetch failing: check the broker".to_string());
                }
                if h.journal_failing.load(Ordering::Relaxed) {
                    problems.push("the attempt journal cannot be written: no new dials; check journal.dir".to_string());
                }
                if h.sink_failing.load(Ordering::Relaxed) {
                    problems.push("status events not acknowledged: check the broker".to_string());
                }
                ShardStatus { shard, ready: problems.is_empty(), problems }
            })
            .collect()
    }

    /// The shards that stopped on an error, with why: the process is not alive (`/healthz`)
    /// while any did, since a stopped shard never dials again.
    pub fn failed(&self) -> Vec<String> {
        let failed = self.shards.iter().enumerate().filter_map(|(i, h)| Some((i, h.failure.get()?)));
        failed.map(|(i, why)| format!("shard {i} stopped: {why}")).collect()
    }

    /// True when every shard is ready.
    pub fn ready(&self, now_ms: u64) -> bool {
        self.status(now_ms).iter().all(|s| s.ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_each_shard() {
        let h = Health::new(2);
        assert!(!h.ready(1_000), "starting shards are not ready");
        h.shard(0).running(1_000);
        h.shard(1).running(1_000);
        assert!(h.ready(1_500));
        assert!(!h.ready(10_000), "stale heartbeat");
        h.shard(0).running(10_000);
        h.shard(1).running(10_000);
        h.shard(1).set_fail_closed(true);
        let s = h.status(10_000);
        assert!(s[0].ready);
        assert!(!s[1].ready);
        assert!(s[1].problems[0].contains("limiter"));
        h.shard(1).set_fail_closed(false);
        h.shard(0).set_source_failing(true);
        assert!(!h.ready(10_000));
        h.shard(0).set_source_failing(false);
        assert!(h.ready(10_000));
        h.shard(0).stopped();
        assert!(!h.ready(10_000));
        assert!(h.failed().is_empty(), "a shard asked to stop has not failed");
        h.shard(1).failed("cannot connect to the limiter's Redis".into());
        assert_eq!(h.failed(), ["shard 1 stopped: cannot connect to the limiter's Redis"]);
        assert!(h.status(10_000)[1].problems[0].contains("limiter's Redis"), "and /readyz says why");
    }
}
