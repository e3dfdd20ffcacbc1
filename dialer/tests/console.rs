//! The operator console in a real browser: `dialer/tests/console/console.mjs` (Playwright,
//! npm `playwright-core`, driving Debian's `chromium` headless) against a real `dialer up` with an
//! API key, short mock calls and fast webhook retries. It logs in (a wrong key refused), adds a
//! webhook endpoint that fails, creates a campaign from a CSV list with bad rows and reads the
//! report, starts, pauses and resumes it and watches its progress bar reach 100 %, completes
//! another after confirming, uploads, finds and removes do-not-call numbers, replays the dead
//! letters, and fails on any console error or failed request. `./scripts/test.sh` installs
//! chromium and playwright-core; `DIALER_CONSOLE_SCREENSHOTS=DIR` keeps the pages' pictures.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

mod procs;
use procs::spawn;

const KEY: &str = "console-test-key-0123456789";

fn node_modules() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/dialer/node/node_modules")
}

#[test]
fn the_console_runs_a_campaign_from_a_csv_list_to_completion_in_a_real_browser() {
    let modules = node_modules();
    assert!(
        modules.join("playwright-core").is_dir() && std::path::Path::new("/usr/bin/chromium").exists(),
        "the console test needs chromium and playwright-core: apt-get install -y chromium nodejs npm && \
         npm install --prefix ~/.cache/dialer/node playwright-core@1 (./scripts/test.sh does both)"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("dialer.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nkeys = [\"{KEY}\"]\n[provider]\nmin_call_ms = 150\nmax_call_ms = 400\nmax_ring_ms = 50\n\
             [scheduler]\ninterval_ms = 100\n[events]\npoll_ms = 50\nlive_stats_every_ms = 500\n\
             [webhooks]\ntimeout_ms = 400\nretry_base_ms = 50\nretry_max_ms = 200\nretry_window_sec = 2\npoll_ms = 50\n"
        ),
    )
    .expect("config");
    let port = dialer_testkit::free_port();
    let args = [
        "--config".to_string(),
        config.display().to_string(),
        "up".into(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
    ];
    let _up = spawn(dir.path(), "up", &args);
    assert!(dialer_testkit::wait_for_port(port, Duration::from_secs(60)), "dialer up did not listen");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console/console.mjs");
    let out = Command::new("node")
        .arg(&script)
        .env("NODE_MODULES", &modules)
        .env("BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("API_KEY", KEY)
        .env("SCREENSHOTS", std::env::var("DIALER_CONSOLE_SCREENSHOTS").unwrap_or_default())
        .output()
        .expect("node runs (apt-get install -y nodejs)");
    let log = std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "the browser run failed:\n{}\n{}\n--- dialer up's log (last 4000 bytes) ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        &log[log.len().saturating_sub(4000)..]
    );
}
