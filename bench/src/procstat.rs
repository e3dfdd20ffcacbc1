//! What a bench run cost, per component, from /proc: CPU seconds per process kind (PostgreSQL
//! backends, the Kafka broker, Redis, the dialer's shard threads, the rest of the dialer and the
//! bench in this process, the distributed product's control planes and data planes) and the machine's busy share over a window, and PostgreSQL's own
//! counts (commits, rows written, WAL bytes) from its statistics views. Processes that exit
//! within the window are not counted (the harness's servers and the pools' connections live
//! through it).

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{Value, json};

/// Clock ticks a second of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds per kind and the machine's busy and total ticks, at an instant.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    cpu: BTreeMap<&'static str, f64>,
    machine: (f64, f64),
}

/// utime + stime of a `/proc/…/stat` line, in seconds.
fn cpu_of(stat: &str) -> Option<f64> {
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / TICKS)
}

/// The kind of another process, by its name and command line (`None`: not a component).
fn kind_of(comm: &str, cmdline: &str) -> Option<&'static str> {
    match comm {
        "postgres" => Some("postgres"),
        "redis-server" => Some("redis"),
        "java" if cmdline.contains("kafka") => Some("kafka"),
        "java" if cmdline.contains("cassandra") => Some("cassandra"),
        // The distributed product's roles, by their subcommand (`dialer control-plane …`).
        "dialer" if cmdline.split('\0').any(|w| w == "control-plane") => Some("dialer control planes"),
        "dialer" if cmdline.split('\0').any(|w| w == "dataplane") => Some("dialer data planes"),
        "dialer" => Some("dialer processes"),
        _ => None,
    }
}

/// This process's threads: the data plane's shards, and the rest (scheduler, recorder, bench).
fn own_threads(cpu: &mut BTreeMap<&'static str, f64>) {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let Some(s) = std::fs::read_to_string(t.path().join("stat")).ok().and_then(|s| cpu_of(&s)) else { continue };
        let kind = if comm.starts_with("dialer-shard") { "dialer shards" } else { "dialer control + bench" };
        *cpu.entry(kind).or_default() += s;
    }
}

/// The machine's busy and total ticks (`/proc/stat`'s first line; idle and iowait are not busy).
fn machine() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> =
        text.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle, total)
}

impl Sample {
    /// CPU seconds of the processes of `kind` (e.g. `"kafka"`) at this sample.
    pub fn cpu(&self, kind: &str) -> f64 {
        self.cpu.get(kind).copied().unwrap_or(0.0)
    }
}

/// Now.
pub fn sample() -> Sample {
    let mut cpu = BTreeMap::new();
    let me = std::process::id().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let cmdline = std::fs::read_to_string(e.path().join("cmdline")).unwrap_or_default();
        let Some(kind) = kind_of(comm.trim(), &cmdline) else { continue };
        if let Some(s) = std::fs::read_to_string(e.path().join("stat")).ok().and_then(|s| cpu_of(&s)) {
            *cpu.entry(kind).or_default() += s;
        }
    }
    own_threads(&mut cpu);
    Sample { at: Instant::now(), cpu, machine: machine() }
}

/// From `a` to `b`: per kind, CPU seconds and µs per dial; all together; the machine's busy share.
pub fn per_dial(a: &Sample, b: &Sample, dials: i64) -> Value {
    let dials = dials.max(1) as f64;
    let mut kinds = serde_json::Map::new();
    let mut all = 0.0;
    for (kind, end) in &b.cpu {
        let s = (end - a.cpu.get(kind).copied().unwrap_or(0.0)).max(0.0);
        all += s;
        kinds.insert((*kind).into(), json!({"cpu_s": s, "us_per_dial": s * 1e6 / dials}));
    }
    let (busy, total) = (b.machine.0 - a.machine.0, (b.machine.1 - a.machine.1).max(1.0));
    json!({
        "window_s": b.at.duration_since(a.at).as_secs_f64(),
        "kinds": kinds,
        "all_us_per_dial": all * 1e6 / dials,
        "machine_busy_share": busy / total,
    })
}

/// PostgreSQL's own counts for the database at `url` (commits, rows inserted/updated/deleted)
/// and the server's WAL bytes; `None` off PostgreSQL or when the views cannot be read.
pub async fn pg_counts(url: &str) -> Option<[i64; 5]> {
    if !url.starts_with("postgres") {
        return None;
    }
    let pool = sqlx::PgPool::connect(url).await.ok()?;
    let db: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .ok()?;
    let wal: i64 = sqlx::query_scalar("SELECT wal_bytes::bigint FROM pg_stat_wal").fetch_one(&pool).await.unwrap_or(0);
    pool.close().await;
    Some([db.0, db.1, db.2, db.3, wal])
}

/// PostgreSQL's counts from `a` to `b`, per dial (the statistics lag by up to a second).
pub fn pg_per_dial(a: Option<[i64; 5]>, b: Option<[i64; 5]>, dials: i64) -> Value {
    let (Some(a), Some(b)) = (a, b) else { return Value::Null };
    let d = dials.max(1) as f64;
    let per = |i: usize| (b[i] - a[i]) as f64 / d;
    json!({"commits": per(0), "rows_inserted": per(1), "rows_updated": per(2), "rows_deleted": per(3), "wal_bytes": per(4)})
}

/// Commands the Redis server at `url` (`redis://host:port…`) has processed since it started
/// (`INFO stats`' `total_commands_processed`); `None` when it cannot be asked.
pub fn redis_commands(url: &str) -> Option<i64> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("redis://")?;
    let addr = rest.split(['/', '?']).next()?.rsplit('@').next()?;
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(2))).ok()?;
    conn.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n").ok()?;
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.contains("total_commands_processed:") || !text.ends_with("\r\n") {
        let n = conn.read(&mut buf).ok().filter(|n| *n > 0)?;
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    stat_of(&text, "total_commands_processed")
}

/// A `name:value` line of Redis's `INFO` text.
fn stat_of(info: &str, name: &str) -> Option<i64> {
    info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_user_and_system_seconds() {
        let line = "42 (postgres: x) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0";
        assert_eq!(cpu_of(line), Some(4.0));
        assert_eq!(kind_of("java", "java -cp …kafka.Kafka server.properties"), Some("kafka"));
        assert_eq!(kind_of("bash", ""), None);
        assert_eq!(
            stat_of(
                "# Stats\r\ntotal_connections_received:3\r\ntotal_commands_processed:1234\r\n",
                "total_commands_processed"
            ),
            Some(1234)
        );
        assert_eq!(kind_of("dialer", "/x/dialer\0control-plane\0"), Some("dialer control planes"));
        assert_eq!(kind_of("dialer", "/x/dialer\0dataplane\0--instance\0\x30"), Some("dialer data planes"));
        assert_eq!(kind_of("dialer", "/x/dialer\0up\0"), Some("dialer processes"));
        let a = Sample { at: Instant::now(), cpu: [("postgres", 1.0)].into(), machine: (100.0, 400.0) };
        let b = Sample { at: a.at, cpu: [("postgres", 3.0), ("redis", 0.5)].into(), machine: (300.0, 600.0) };
        let v = per_dial(&a, &b, 1000);
        assert_eq!(v["kinds"]["postgres"]["us_per_dial"], 2000.0);
        assert_eq!(v["all_us_per_dial"], 2500.0);
        assert_eq!(v["machine_busy_share"], 1.0);
    }
}
