//! The Grafana dashboard and the alert rules use only metrics the running processes export: a
//! real control plane and a real data plane (`dialer control-plane`, `dialer dataplane`) over
//! Apache Kafka, Redis and PostgreSQL dial a campaign, and their `/metrics` are scraped while
//! it runs. Every metric name in `dashboards/dialer.json` and `dashboards/alerts.yml` must be in
//! what they served; a metric renamed in code, or a panel about a metric nothing records, fails
//! here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod procs;
use procs::{http, spawn};

/// Metric family names in a Prometheus exposition (histogram series folded into their family).
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| ["_bucket", "_sum", "_count"].iter().fold(n, |n, s| n.strip_suffix(s).unwrap_or(n)).to_string())
        .collect()
}

/// Metric names a dashboard or rule file refers to (`dialer_…`, histogram suffixes folded).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("dialer_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end].is_ascii_digit() || bytes[end] == b'_')
        {
            end += 1;
        }
        let before_ok = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let name = &text[start..end];
        // `dialer_.*` (a regex over every metric) is not a name.
        if before_ok && !name.ends_with('_') {
            let base = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
            out.insert(base.to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn dashboards() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

/// The configuration of both processes: unique topics, group, key prefix and database; the
/// webhook receiver listens on loopback, which a control plane refuses unless told.
fn write_config(dir: &Path, api: u16) -> (String, String) {
    let db = dialer_testkit::postgres_database();
    let redis = dialer_testkit::redis();
    let brokers = dialer_testkit::kafka().bootstrap();
    let name = dialer_testkit::unique_name("telemetry");
    let config = dir.join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nlisten = \"127.0.0.1:{api}\"\n[store]\nurl = \"{db}\"\n\
             [limits]\nglobal_max_concurrency = 20\nper_campaign_max_concurrency = 10\n\
             redis_url = \"{r}\"\nredis_key_prefix = \"{p}\"\n\
             [bus]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ndispatch_topic = \"{name}.dispatch\"\n\
             status_topic = \"{name}.status\"\ndead_letter_topic = \"{name}.dlq\"\ngroup_id = \"{name}\"\n\
             dispatch_partitions = 2\nstatus_partitions = 2\n\
             [provider]\nmin_call_ms = 20\nmax_call_ms = 200\nmax_ring_ms = 10\nanswer_rate = 0.5\n\
             [scheduler]\ninterval_ms = 200\n\
             [webhooks]\nallow_private_targets = true\n",
            r = redis.url(),
            p = dialer_testkit::redis_prefix(),
        ),
    )
    .expect("config");
    let tuning = dir.join("tuning.toml");
    std::fs::write(&tuning, "[shards]\ncount = 1\nassignment = \"static\"\npartitions = 2\n").expect("tuning");
    (config.display().to_string(), tuning.display().to_string())
}

/// A campaign with a message (the mock draws who answered through the media script): the
/// per-campaign abandoned ratio has a series once a person answered.
fn start_campaign(api: u16) {
    let wav = dialer_domain::media::wav::Audio { samples: vec![1000; 8000] }.to_wav();
    let (s, prompt) = procs::post_bytes(api, "/api/v1/prompts?name=telemetry", "audio/wav", &wav);
    assert_eq!(s, 201, "{prompt}");
    let targets: Vec<Value> = (0..300).map(|i| json!({"phone_number": format!("+1202555{i:04}")})).collect();
    let body = json!({
        "name": "telemetry", "max_concurrent_calls": 10, "targets": targets,
        "retry_policy": {"max_attempts": 2, "base_delay": "100ms", "max_delay": "200ms"},
        "telephony": {"media": {"prompt": prompt["id"], "amd": {}, "keys": {"9": "opt_out"}}}
    });
    let (s, created) = http(api, "POST", "/api/v1/campaigns", Some(&body));
    assert_eq!(s, 201, "{created}");
    let id = serde_json::from_str::<Value>(&created).expect("json")["id"].as_str().expect("id").to_string();
    assert_eq!(http(api, "POST", &format!("/api/v1/campaigns/{id}/start"), None).0, 200);
}

#[test]
fn the_dashboard_and_alerts_use_only_metrics_the_running_processes_export() {
    let dash_text = std::fs::read_to_string(dashboards().join("dialer.json")).expect("dashboards/dialer.json");
    let alerts = std::fs::read_to_string(dashboards().join("alerts.yml")).expect("dashboards/alerts.yml");
    let dash: Value = serde_json::from_str(&dash_text).expect("the dashboard is JSON");
    let panels = dash["panels"].as_array().expect("panels");
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in
        ["requests/s", "5xx", "heatmap", "429", "Dials/s", "vs caps", "Redis", "lag", "Dead letters", "Webhook"]
    {
        assert!(titles.iter().any(|t| t.contains(wanted)), "no panel about {wanted}: {titles:?}");
    }
    assert!(panels.iter().all(|p| !p["targets"].as_array().expect("targets").is_empty()));
    let mut wanted = referenced(&dash_text);
    wanted.extend(referenced(&alerts));
    assert!(wanted.len() > 10, "the dashboard and rules refer to metrics: {wanted:?}");

    let dir = tempfile::tempdir().expect("tmp");
    let (api, admin) = (dialer_testkit::free_port(), dialer_testkit::free_port());
    let (config, tuning) = write_config(dir.path(), api);
    let _cp = spawn(dir.path(), "control-plane", &["--config".into(), config.clone(), "control-plane".into()]);
    assert!(dialer_testkit::wait_for_port(api, Duration::from_secs(60)), "the control plane did not listen");
    let journal = dir.path().join("journal").display().to_string();
    let dp_args = ["--config", &config, "dataplane", "--tuning", &tuning, "--admin", &format!("127.0.0.1:{admin}")];
    let mut dp_args: Vec<String> = dp_args.iter().map(|a| a.to_string()).collect();
    dp_args.extend(["--journal-dir".into(), journal]);
    let _dp = spawn(dir.path(), "dataplane", &dp_args);
    assert!(dialer_testkit::wait_for_port(admin, Duration::from_secs(60)), "the data plane did not listen");
    // A webhook receiver: the delivery families are exported once events are delivered.
    let receiver = dialer_testkit::receiver::Receiver::start(dialer_testkit::receiver::Mode::Ok, 1);
    let (s, w) = http(api, "POST", "/api/v1/webhooks", Some(&json!({"url": receiver.url("/hook")})));
    assert_eq!(s, 201, "{w}");
    start_campaign(api);

    // Scrape both while the campaign runs (the top-N campaign families exist only then; lag
    // comes with librdkafka's statistics, every 5 s), until everything wanted was served.
    let mut served = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !wanted.is_subset(&served) && Instant::now() < deadline {
        for port in [api, admin] {
            let (s, text) = http(port, "GET", "/metrics", None);
            assert_eq!(s, 200, "/metrics on port {port}");
            served.extend(exported(&text));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let missing: Vec<&String> = wanted.difference(&served).collect();
    assert!(
        missing.is_empty(),
        "the dashboard or alert rules use metrics no running process exported: {missing:?}\nexported: {served:?}\nlogs in {}",
        dir.keep().display()
    );
}
