//! The real `dialer up` killed mid-campaign (SIGKILL, and SIGTERM) and started again on the same
//! data directory finishes the campaign: every call terminal, the stats equal the rows, no
//! attempt placed twice, no number rung while its previous call may still be up, and the cap
//! never exceeded at the carrier across both runs (from the provider's ledger, per call and
//! attempt). A SIGTERM loses no outcome: the calls in progress
//! when it came are recorded before the process exits.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod procs;
use procs::http_json as http;

const TARGETS: usize = 600;

struct Up {
    child: Child,
    port: u16,
}

fn start(dir: &Path, run: u32) -> Up {
    let port = dialer_testkit::free_port();
    let config = dir.join("dialer.toml");
    std::fs::write(
        &config,
        "[provider]\nmin_call_ms = 300\nmax_call_ms = 1500\nmax_ring_ms = 100\n\
         [scheduler]\ninterval_ms = 200\nreap_every_ms = 1000\n",
    )
    .expect("config");
    let log = std::fs::File::create(dir.join(format!("up-{run}.log"))).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_dialer"))
        .args(["--config", &config.display().to_string(), "up", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("DIALER_PROVIDER_LEDGER", dir.join(format!("ledger-{run}")))
        .env("RUST_LOG", "info")
        // Test numbers (+1555…) map to no zone: recipient windows would hold them by time of day.
        .env("DIALER_CALLING_RULES_ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("dialer up starts");
    assert!(dialer_testkit::wait_for_port(port, Duration::from_secs(30)), "dialer up did not listen");
    Up { child, port }
}

fn create_campaign(port: u16) -> String {
    let targets: Vec<Value> = (0..TARGETS).map(|i| json!({"phone_number": format!("+1202555{i:04}")})).collect();
    let (s, c) = http(
        port,
        "POST",
        "/api/v1/campaigns",
        Some(&json!({
            "name": "restart", "max_concurrent_calls": 60, "targets": targets,
            "retry_policy": {"max_attempts": 3, "base_delay": "200ms", "max_delay": "1s"}
        })),
    );
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(http(port, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
    id
}

/// A call placed, from both runs' ledgers: (call, attempt, start µs, end µs).
fn ledger(dir: &Path) -> Vec<(String, u32, u64, u64)> {
    (1..=2).flat_map(|run| procs::ledger(&dir.join(format!("ledger-{run}")))).collect()
}

fn wait_completed(port: u16, id: &str, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (_, c) = http(port, "GET", &format!("/api/v1/campaigns/{id}"), None);
        if c["status"] == "completed" {
            return t0.elapsed();
        }
        let (_, st) = http(port, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
        assert!(t0.elapsed() < timeout, "campaign still {} after {timeout:?}: {st}", c["status"]);
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn check_finished(port: u16, id: &str, dir: &Path) {
    let (_, page) = http(port, "GET", &format!("/api/v1/campaigns/{id}/calls?limit=1000"), None);
    let calls = page["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), TARGETS);
    let mut by_status: HashMap<String, i64> = HashMap::new();
    let mut attempts: HashMap<String, u64> = HashMap::new();
    for c in calls {
        let status = c["status"].as_str().expect("status").to_string();
        assert!(status == "completed" || status == "failed", "a call is not terminal: {c}");
        *by_status.entry(status).or_default() += 1;
        attempts.insert(c["id"].as_str().expect("id").into(), c["attempt_count"].as_u64().expect("attempts"));
    }
    let (_, st) = http(port, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
    assert_eq!(st["completed_calls"], by_status.get("completed").copied().unwrap_or(0), "stats vs rows: {st}");
    assert_eq!(st["failed_calls"], by_status.get("failed").copied().unwrap_or(0), "stats vs rows: {st}");
    assert_eq!(
        (st["pending_calls"].as_i64(), st["queued_calls"].as_i64(), st["in_progress_calls"].as_i64()),
        (Some(0), Some(0), Some(0))
    );
    let placed = ledger(dir);
    // The carrier's view, both runs together: the killed run's calls stay up to their planned
    // end, so the new run must count them against the campaign's cap of 60.
    let mut edges: Vec<(u64, i64)> = placed.iter().flat_map(|(_, _, s, e)| [(*s, 1), (*e, -1)]).collect();
    edges.sort_unstable_by_key(|(t, d)| (*t, *d));
    let (mut up, mut peak) = (0i64, 0i64);
    for (_, d) in edges {
        up += d;
        peak = peak.max(up);
    }
    assert!(peak <= 60, "{peak} calls up at once at the carrier, over the campaign's cap of 60");
    let mut seen = HashSet::new();
    let mut per_call: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    for (call, attempt, start, end) in &placed {
        assert!(seen.insert((call.as_str(), *attempt)), "attempt {attempt} of call {call} placed twice");
        per_call.entry(call).or_default().push((*start, *end));
    }
    for (call, mut spans) in per_call {
        let counted = attempts.get(call).copied().unwrap_or(0);
        assert!(spans.len() as u64 <= counted, "call {call}: {} placed, {counted} attempts counted", spans.len());
        assert!(spans.len() <= 3, "call {call} placed {} times with at most 3 attempts", spans.len());
        spans.sort_unstable();
        for w in spans.windows(2) {
            assert!(w[1].0 >= w[0].1, "call {call} rung again while its previous call was up: {w:?}");
        }
    }
}

fn terminate(up: &mut Up) {
    let pid = up.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let status = up.child.wait().expect("wait");
    assert!(status.success(), "dialer up did not stop cleanly on SIGTERM: {status}");
}

fn stopped_mid_campaign(signal: &str) -> PathBuf {
    let dir = tempfile::Builder::new().prefix("dialer-restart-").tempdir().expect("tmp").keep();
    let mut up = start(&dir, 1);
    let id = create_campaign(up.port);
    std::thread::sleep(Duration::from_millis(2500));
    if signal == "KILL" {
        up.child.kill().expect("SIGKILL");
        up.child.wait().expect("reaped");
    } else {
        terminate(&mut up);
    }
    let mut again = start(&dir, 2);
    let took = wait_completed(again.port, &id, Duration::from_secs(120));
    eprintln!("SIG{signal}: the campaign completed {took:?} after the restart");
    check_finished(again.port, &id, &dir);
    terminate(&mut again);
    dir
}

#[test]
fn sigkill_mid_campaign_then_restart_finishes_every_call() {
    let dir = stopped_mid_campaign("KILL");
    let log = std::fs::read_to_string(dir.join("up-2.log")).expect("log");
    assert!(log.contains("recovered the previous run's calls"), "the restart resolved the killed run's calls:\n{log}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_records_every_outcome_then_restart_finishes_every_call() {
    let dir = stopped_mid_campaign("TERM");
    let log = std::fs::read_to_string(dir.join("up-1.log")).expect("log");
    assert!(!log.contains("grace period over"), "calls were cut off at shutdown:\n{log}");
    // Shut down in order, nothing stays in progress: the second run found none.
    let second = std::fs::read_to_string(dir.join("up-2.log")).expect("log");
    let recovered = second.lines().find(|l| l.contains("recovered the previous run's calls"));
    if let Some(line) = recovered {
        assert!(line.contains("unknown_outcome=0"), "a SIGTERM left calls with no outcome: {line}");
    }
    let _ = std::fs::remove_dir_all(dir);
}
