//! `bench journal`: the attempt journal's group commit, plain system calls (a write and an
//! `fdatasync` per touched partition file, one after the other) against io_uring (every file's
//! write linked to its sync, all in one submission, the syncs running in parallel). Each commit
//! carries `--records` attempts for each of `--partitions` files, as a shard's loop turn does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dialer_dataplane::journal::{Journal, Msg};
use dialer_dataplane::tuning::JournalIo;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Partition files touched by each commit (a shard's partitions).
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// Attempts per partition per commit.
    #[arg(long, default_value_t = 32)]
    records: u32,
    /// Measured time per mode.
    #[arg(long, default_value = "5s", value_parser = dialer_domain::duration::parse)]
    duration: Duration,
    /// Skip fdatasync (measures the write path only).
    #[arg(long)]
    no_sync: bool,
    /// Where the journal files go (a disk, not tmpfs, for honest syncs); default: ./bench-journal.
    #[arg(long, default_value = "bench-journal")]
    dir: PathBuf,
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Run {
    commits: u64,
    seconds: f64,
    hist: Histogram<u64>,
}

fn run_mode(a: &Args, io: JournalIo, name: &str) -> Result<Run> {
    let dir = a.dir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut j = Journal::open_with(&dir, !a.no_sync, io).with_context(|| format!("opening a journal with {name}"))?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let pb = ProgressBar::new(a.duration.as_secs().max(1)).with_style(
        ProgressStyle::with_template(&format!("{name:<9} {{bar:40}} {{pos}}/{{len}} s"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    // Warm-up: open every file first.
    for p in 0..a.partitions {
        j.started(p, (Uuid::from_u128(u128::MAX - p as u128), 1), Msg::new(0, 0))?;
    }
    j.commit()?;
    let t0 = Instant::now();
    let mut n: u64 = 0;
    let mut commits = 0;
    while t0.elapsed() < a.duration {
        for p in 0..a.partitions {
            for _ in 0..a.records {
                n += 1;
                j.started(p, (Uuid::from_u128(u128::from(n)), 1), Msg::new(n as i64, 0))?;
            }
        }
        let t = Instant::now();
        j.commit()?;
        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
        commits += 1;
        if commits % 64 == 0 {
            pb.set_position(t0.elapsed().as_secs());
        }
    }
    pb.finish_and_clear();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run { commits, seconds: t0.elapsed().as_secs_f64(), hist })
}

pub fn run(a: Args) -> Result<()> {
    let std_run = run_mode(&a, JournalIo::Std, "std")?;
    let uring = run_mode(&a, JournalIo::IoUring, "io_uring")?;
    let per_commit = f64::from(a.records) * f64::from(a.partitions);
    println!(
        "{:<10} {:>10} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "io", "commits/s", "records/s", "p50 µs", "p99 µs", "p99.9 µs", "max µs"
    );
    for (name, r) in [("std", &std_run), ("io_uring", &uring)] {
        let h = &r.hist;
        println!(
            "{:<10} {:>10.0} {:>12.0} {:>9} {:>9} {:>9} {:>9}",
            name,
            r.commits as f64 / r.seconds,
            r.commits as f64 * per_commit / r.seconds,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
    let ratio = (uring.commits as f64 / uring.seconds) / (std_run.commits as f64 / std_run.seconds);
    println!(
        "io_uring / std: {ratio:.2}× commits/s ({} partitions × {} records per commit, sync {}, cores {})",
        a.partitions,
        a.records,
        !a.no_sync,
        crate::cores()
    );
    let h = &uring.hist;
    crate::write_json(
        a.json.as_deref(),
        &json!({
            "scenario": "journal",
            "settings": {"partitions": a.partitions, "records": a.records, "sync": !a.no_sync, "dir": a.dir},
            "duration_s": std_run.seconds + uring.seconds,
            "cores": crate::cores(),
            "ops_per_sec": uring.commits as f64 / uring.seconds,
            "p50_us": h.value_at_quantile(0.5),
            "p90_us": h.value_at_quantile(0.9),
            "p99_us": h.value_at_quantile(0.99),
            "p999_us": h.value_at_quantile(0.999),
            "max_us": h.max(),
            "io_uring_commits_per_sec": uring.commits as f64 / uring.seconds,
            "std_commits_per_sec": std_run.commits as f64 / std_run.seconds,
            "io_uring_records_per_sec": uring.commits as f64 * per_commit / uring.seconds,
            "std_records_per_sec": std_run.commits as f64 * per_commit / std_run.seconds,
            "std_p50_us": std_run.hist.value_at_quantile(0.5),
            "std_p99_us": std_run.hist.value_at_quantile(0.99),
            "io_uring_over_std": ratio,
        }),
    )
}
