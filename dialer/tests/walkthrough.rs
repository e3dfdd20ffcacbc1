//! The README's distributed walkthrough, as a newcomer runs it: `scripts/stack.sh up` starts
//! Redis, a durable PostgreSQL and Apache Kafka; a control plane and two data planes (static
//! assignment over the two processes) run with `config/production.toml` and the environment the
//! script prints; a campaign is created, started and completes; `scripts/stack.sh down` stops
//! the servers. Differences from the README, for a test beside others: free ports for the API
//! and the admin endpoints, the stack's state in the test's directory, a ledger per data plane.

mod procs;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use procs::http_key;
use serde_json::{Value, json};

const TARGETS: usize = 40;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `scripts/stack.sh ARGS` with its state in `dir`; its standard output.
fn stack(dir: &Path, args: &[&str]) -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_dialer")).with_file_name("stack");
    assert!(bin.exists(), "{} is missing: build it with cargo build -p dialer-testkit --bins", bin.display());
    let out = Command::new(root().join("scripts/stack.sh"))
        .args(args)
        .env("DIALER_STACK_DIR", dir)
        .env("DIALER_STACK_BIN", &bin)
        .output()
        .expect("scripts/stack.sh runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/stack.sh {args:?} failed: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `export NAME=VALUE` lines as pairs.
fn exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export ")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `dialer ARGS` from the repository root (where the README's commands run), with `env`.
fn dialer(dir: &Path, name: &str, args: &[&str], env: &[(String, String)]) -> procs::Proc {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.splice(0..0, ["--config".to_string(), root().join("config/production.toml").display().to_string()]);
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    procs::spawn_with_env(dir, name, &args, &env)
}

fn data_plane(dir: &Path, i: usize, env: &[(String, String)]) -> procs::Proc {
    let admin = format!("127.0.0.1:{}", dialer_testkit::free_port());
    let journal = dir.join(format!("journal-{i}")).display().to_string();
    let tuning = root().join("tuning/laptop.toml").display().to_string();
    let mut env = env.to_vec();
    env.push(("DIALER_PROVIDER_LEDGER".into(), dir.join(format!("ledger-{i}")).display().to_string()));
    let args = ["dataplane", "--tuning", &tuning, "--instance", &i.to_string(), "--instances", "2"];
    dialer(dir, &format!("dataplane-{i}"), &[&args[..], &["--admin", &admin, "--journal-dir", &journal]].concat(), &env)
}

fn wait_completed(api: u16, key: &str, id: &str, dir: &Path) {
    let t0 = Instant::now();
    loop {
        let (_, c) = http_key(api, key, "GET", &format!("/api/v1/campaigns/{id}"), None);
        if c["status"] == "completed" {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "not completed after 180 s: {c}; logs in {}", dir.display());
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn the_readme_distributed_walkthrough_runs_a_campaign_to_completion_on_two_data_planes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path();
    let mut env = exports(&stack(dir, &["up"]));
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS", "DIALER_BUS_KIND"]);
    assert_eq!(exports(&stack(dir, &["env"])), env, "env prints what up printed");
    let (api, key) = (dialer_testkit::free_port(), "walkthrough-key-0123456789abcdef".to_string());
    env.push(("DIALER_API_KEYS".into(), key.clone()));
    env.push(("DIALER_API_LISTEN".into(), format!("127.0.0.1:{api}")));
    let cp = dialer(dir, "control-plane", &["control-plane"], &env);
    assert!(dialer_testkit::wait_for_port(api, Duration::from_secs(60)), "the control plane did not listen");
    let planes = [data_plane(dir, 0, &env), data_plane(dir, 1, &env)];
    let targets: Vec<Value> = (0..TARGETS).map(|i| json!({"phone_number": format!("+1555010{i:04}")})).collect();
    let body =
        json!({"name": "hello", "max_concurrent_calls": 10, "retry_policy": {"max_attempts": 1}, "targets": targets});
    let (s, created) = http_key(api, &key, "POST", "/api/v1/campaigns", Some(&body));
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert_eq!(http_key(api, &key, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
    wait_completed(api, &key, &id, dir);

    let (_, stats) = http_key(api, &key, "GET", &format!("/api/v1/campaigns/{id}/stats"), None);
    let ended = stats["completed_calls"].as_i64().unwrap_or(0) + stats["failed_calls"].as_i64().unwrap_or(0);
    assert_eq!((ended, stats["attempts_total"].as_i64()), (TARGETS as i64, Some(TARGETS as i64)), "{stats}");
    // Per attempt, from the data planes' own ledgers: each target dialled once, by one of them,
    // and both took part (the static assignment split the partitions).
    let placed: Vec<Vec<(String, u32, u64, u64)>> =
        (0..2).map(|i| procs::ledger(&dir.join(format!("ledger-{i}")))).collect();
    let mut calls: Vec<&String> = placed.iter().flatten().map(|(c, ..)| c).collect();
    assert!(
        placed.iter().all(|p| !p.is_empty()),
        "a data plane dialled nothing: {:?}",
        placed.iter().map(Vec::len).collect::<Vec<_>>()
    );
    calls.sort();
    calls.dedup();
    assert_eq!((calls.len(), placed.iter().map(Vec::len).sum::<usize>()), (TARGETS, TARGETS), "each call once");

    drop(planes);
    drop(cp);
    let pid: u32 = std::fs::read_to_string(dir.join("pid")).expect("the stack's pid").trim().parse().expect("pid");
    stack(dir, &["down"]);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "the stack's holder is gone");
    let gone = |url: &str| {
        let port = url.rsplit(':').next().and_then(|p| p.split('/').next()).and_then(|p| p.parse::<u16>().ok());
        port.is_some_and(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_err())
    };
    for (k, v) in env.iter().filter(|(k, _)| ["DATABASE_URL", "REDIS_URL", "KAFKA_BROKERS"].contains(&k.as_str())) {
        assert!(gone(v), "{k} ({v}) still answers after scripts/stack.sh down");
    }
}
