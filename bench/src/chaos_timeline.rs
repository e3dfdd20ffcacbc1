//! `bench chaos --cassandra`: the control planes keep the attempt timeline on Apache Cassandra (a
//! node of the run's own), and the audit reads it back: every attempt the providers' ledgers say
//! was dialled has its row, with its outcome (not left `started`).

use std::collections::HashSet;

use anyhow::Result;
use dialer_store::timeline::CqlTimeline;
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

/// The keyspace of the run's timeline.
pub const KEYSPACE: &str = "chaos";

/// The `[timeline]` section of the control planes' configuration.
pub fn config(node: &str) -> String {
    format!("[timeline]\ncql_nodes = [\"{node}\"]\nkeyspace = \"{KEYSPACE}\"\n")
}

/// What the timeline holds of the dialled attempts.
#[derive(Debug, Default)]
pub struct Audit {
    /// Attempts dialled (the ledgers) without a row.
    pub missing: u64,
    /// Rows whose outcome is still `started` (the outcome never written).
    pub unresolved: u64,
    pub rows: u64,
}

/// Reads every dialled call's attempts back from the timeline.
pub async fn audit(node: &str, dialled: &[(Uuid, u32)]) -> Result<Audit> {
    let t = CqlTimeline::connect(&[node.to_string()], KEYSPACE, 1).await?;
    let calls: HashSet<Uuid> = dialled.iter().map(|(c, _)| *c).collect();
    let pb = ProgressBar::new(calls.len() as u64).with_style(
        ProgressStyle::with_template("timeline {bar:40} {pos}/{len} calls read back")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut rows: HashSet<(Uuid, u32)> = HashSet::new();
    let mut a = Audit::default();
    for call in calls {
        for r in t.attempts(call).await? {
            a.rows += 1;
            a.unresolved += u64::from(r.outcome == "started");
            rows.insert((call, r.attempt));
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    a.missing = dialled.iter().filter(|k| !rows.contains(k)).count() as u64;
    Ok(a)
}
