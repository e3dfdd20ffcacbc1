//! Two real `dialer dataplane` processes share the dispatch partitions as members of one
//! consumer group (eager and cooperative-sticky assignors), under a real control plane, on
//! Apache Kafka, Redis and PostgreSQL from the harness. One member is SIGKILLed mid-campaign:
//! the group gives its partitions to the other once its session times out, the survivor's
//! journal (the same host's directory) shows the attempts the dead one started, and the campaign
//! completes with every call terminal, no attempt placed twice and the cap held at the carrier
//! at every instant (from both members' ledgers).
//!
//! Another member is frozen (SIGSTOP) past its session timeout, then thawed: the group gives its
//! partitions to the other while it still holds them and still has their messages waiting (a
//! member cut off from the broker, say, but not from Redis). The journal's partition locks keep
//! the new owner from dialling them until the frozen one lets go.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod procs;
use procs::{http, spawn, spawn_with_env};

const TARGETS: usize = 400;
const CAP: u32 = 30;

/// `lease_ttl_ms`: how long a member's tokens stay its own without renewal.
fn write_config(dir: &Path, api: u16, assignor: &str, lease_ttl_ms: u64) -> (String, String) {
    let name = dialer_testkit::unique_name("group");
    let config = dir.join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\n[store]\nurl = \"{db}\"\n\
             [limits]\nglobal_max_concurrency = {CAP}\nper_campaign_max_concurrency = {CAP}\n\
             redis_url = \"{r}\"\nredis_key_prefix = \"{p}\"\n\
             [bus]\nkind = \"kafka\"\nbrokers = \"{b}\"\ndispatch_topic = \"{name}.dispatch\"\n\
             status_topic = \"{name}.status\"\ndead_letter_topic = \"{name}.dlq\"\ngroup_id = \"{name}\"\n\
             dispatch_partitions = 4\nstatus_partitions = 2\n\
             [provider]\nmin_call_ms = 200\nmax_call_ms = 600\nmax_ring_ms = 50\n\
             [scheduler]\ninterval_ms = 200\nreap_every_ms = 1000\ndispatch_ttl_sec = 600\n",
            db = dialer_testkit::postgres_database(),
            r = dialer_testkit::redis().url(),
            p = dialer_testkit::redis_prefix(),
            b = dialer_testkit::kafka().bootstrap(),
        ),
    )
    .expect("config");
    let tuning = dir.join("tuning.toml");
    std::fs::write(
        &tuning,
        format!(
            "[shards]\ncount = 1\nassignment = \"group\"\npartitions = 4\n\
             [kafka]\ncommit_every_ms = 100\nassignor = \"{assignor}\"\nsession_timeout_ms = 6000\n\
             [lease]\nbatch = 8\nlow_water = 2\nttl_ms = {lease_ttl_ms}\nrenew_every_ms = 1000\nidle_give_back_ms = 1000\n"
        ),
    )
    .expect("tuning");
    (config.display().to_string(), tuning.display().to_string())
}

/// A call placed, from both members' ledgers: (call, attempt, start µs, planned end µs).
fn ledgers(dir: &Path) -> Vec<(String, u32, u64, u64)> {
    ["a", "b"].iter().flat_map(|m| procs::ledger(&dir.join(format!("ledger-{m}")))).collect()
}

/// The most calls up at once at the carrier, from the ledgers' start and planned end.
fn peak(placed: &[(String, u32, u64, u64)]) -> i64 {
    let mut edges: Vec<(u64, i64)> = placed.iter().flat_map(|(_, _, s, e)| [(*s, 1), (*e, -1)]).collect();
    edges.sort_unstable(); // an end before a start at the same instant
    let (mut up, mut max) = (0i64, 0i64);
    for (_, d) in edges {
        up += d;
        max = max.max(up);
    }
    max
}

fn start_campaign(api: u16) -> String {
    let targets: Vec<Value> = (0..TARGETS).map(|i| json!({"phone_number": format!("+1202555{i:04}")})).collect();
    let body = json!({
        "name": "group", "max_concurrent_calls": CAP, "targets": targets,
        "retry_policy": {"max_attempts": 3, "base_delay": "200ms", "max_delay": "1s"}
    });
    let (s, created) = http(api, "POST", "/api/v1/campaigns", Some(&body));
    assert_eq!(s, 201, "{created}");
    let id = serde_json::from_str::<Value>(&created).expect("json")["id"].as_str().expect("id").to_string();
    assert_eq!(http(api, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
    id
}

fn member(dir: &Path, config: &str, tuning: &str, m: &str) -> procs::Proc {
    let admin = format!("127.0.0.1:{}", dialer_testkit::free_port());
    let journal = dir.join("journal").display().to_string();
    let args: Vec<String> =
        ["--config", config, "dataplane", "--tuning", tuning, "--admin", &admin, "--journal-dir", &journal]
            .iter()
            .map(|a| a.to_string())
            .collect();
    spawn_with_env(
        dir,
        &format!("dataplane-{m}"),
        &args,
        &[("DIALER_PROVIDER_LEDGER", dir.join(format!("ledger-{m}")).display().to_string())],
    )
}

/// How many calls member `m` placed so far.
fn dialled(dir: &Path, m: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("ledger-{m}"))).unwrap_or_default().lines().count()
}

/// Waits for the campaign to complete; past `timeout`, keeps `dir` (the members' logs and
/// ledgers) and names the calls still open.
fn wait_completed(api: u16, id: &str, timeout: Duration, dir: tempfile::TempDir) -> tempfile::TempDir {
    let t0 = Instant::now();
    loop {
        let (_, c) = http(api, "GET", &format!("/api/v1/campaigns/{id}"), None);
        if serde_json::from_str::<Value>(&c).expect("json")["status"] == "completed" {
            return dir;
        }
        if t0.elapsed() >= timeout {
            let (_, page) = http(api, "GET", &format!("/api/v1/campaigns/{id}/calls?limit=1000"), None);
            let page: Value = serde_json::from_str(&page).expect("json");
            let open: Vec<String> = page["calls"]
                .as_array()
                .expect("calls")
                .iter()
                .filter(|c| c["status"] != "completed" && c["status"] != "failed")
                .map(|c| format!("{} {} attempt {}", c["id"], c["status"], c["attempt_count"]))
                .collect();
            panic!(
                "campaign not completed after {timeout:?}: {c}\nopen calls: {open:#?}\nlogs in {}",
                dir.keep().display()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What happens to member b mid-campaign.
#[derive(Clone, Copy, PartialEq)]
enum Fault {
    Kill,
    /// Frozen for longer than the session timeout, then thawed.
    Freeze,
}

fn a_member_fault_loses_nothing_and_dials_nothing_twice(assignor: &str, fault: Fault) {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let api = dialer_testkit::free_port();
    // Frozen, b keeps its tokens (the production lease lasts 30 s): thawed, it dials what it
    // had waiting at once, before it hears from the group that its partitions moved.
    let lease_ttl_ms = if fault == Fault::Freeze { 30_000 } else { 5_000 };
    let (config, tuning) = write_config(d, api, assignor, lease_ttl_ms);
    let _cp = spawn(d, "control-plane", &["--config".into(), config.clone(), "control-plane".into()]);
    assert!(dialer_testkit::wait_for_port(api, Duration::from_secs(60)), "the control plane did not listen");
    let _a = member(d, &config, &tuning, "a");
    let mut b = member(d, &config, &tuning, "b");
    let id = start_campaign(api);
    // Both members dial (the second joins the group a few seconds after the first took every
    // partition), then one dies mid-campaign.
    let t0 = Instant::now();
    while dialled(d, "a") == 0 || dialled(d, "b") < 20 || ledgers(d).len() < 120 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "the members are not dialling; logs in {}",
            dir.keep().display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    match fault {
        Fault::Kill => b.kill9(),
        Fault::Freeze => {
            b.signal("STOP");
            std::thread::sleep(Duration::from_secs(14));
            b.signal("CONT");
        }
    }
    // The dispatch TTL (600 s) outlasts this wait: only the group giving the dead member's
    // partitions to the survivor can finish their messages in time (not the reaper).
    let dir = wait_completed(api, &id, Duration::from_secs(240), dir);
    let d = dir.path();

    let placed = ledgers(d);
    let mut per_attempt: HashMap<(String, u32), usize> = HashMap::new();
    for (call, attempt, _, _) in &placed {
        *per_attempt.entry((call.clone(), *attempt)).or_default() += 1;
    }
    let twice: Vec<_> = per_attempt.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "attempts placed twice across the fault: {twice:?}");
    if fault == Fault::Freeze {
        let a_log = std::fs::read_to_string(d.join("dataplane-a.log")).expect("log");
        assert!(
            a_log.contains("held by another shard"),
            "the group gave the frozen member's partitions to a while it held them: a waited for it"
        );
    }
    assert!(dialled(d, "a") > 0 && dialled(d, "b") > 0, "both members dialled");
    assert!(peak(&placed) <= i64::from(CAP), "the cap at the carrier: peak {}", peak(&placed));
    let (_, page) = http(api, "GET", &format!("/api/v1/campaigns/{id}/calls?limit=1000"), None);
    let page: Value = serde_json::from_str(&page).expect("json");
    let calls = page["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), TARGETS);
    let mut last_placed: HashMap<&str, u32> = HashMap::new();
    for (call, attempt) in per_attempt.keys() {
        let last = last_placed.entry(call.as_str()).or_default();
        *last = (*last).max(*attempt);
    }
    for c in calls {
        let status = c["status"].as_str().expect("status");
        assert!(status == "completed" || status == "failed", "call {} is {status}", c["id"]);
        let counted = c["attempt_count"].as_u64().expect("attempts") as u32;
        let placed = last_placed.get(c["id"].as_str().expect("id")).copied().unwrap_or(0);
        assert!(placed <= counted, "call {}: attempt {placed} placed beyond the {counted} counted", c["id"]);
    }
}

#[test]
fn a_sigkilled_member_of_an_eager_group_loses_nothing_and_dials_nothing_twice() {
    a_member_fault_loses_nothing_and_dials_nothing_twice("eager", Fault::Kill);
}

#[test]
fn a_sigkilled_member_of_a_cooperative_sticky_group_loses_nothing_and_dials_nothing_twice() {
    a_member_fault_loses_nothing_and_dials_nothing_twice("cooperative_sticky", Fault::Kill);
}

#[test]
fn a_member_frozen_past_its_session_keeps_its_partitions_from_the_new_owner_until_it_lets_go() {
    a_member_fault_loses_nothing_and_dials_nothing_twice("cooperative_sticky", Fault::Freeze);
}
