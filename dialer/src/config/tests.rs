//! The configuration as operators write it: defaults, files, the environment, refusals.
use std::time::Duration;

use dialer_control_plane::ApiKey;
use dialer_dataplane::ProviderKind;

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn defaults_are_the_operator_guide_s() {
    let c = Config::load(None, env(&[])).expect("defaults");
    assert_eq!(c.limits.global_max_concurrency, 10_000);
    assert_eq!(c.limits.per_campaign_max_concurrency, 100);
    assert_eq!(c.limits.semaphore_ttl, Duration::from_secs(600));
    assert_eq!(c.limits.max_concurrent_calls, 200);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:8081");
}

#[test]
fn topics_take_their_partitions_and_replication_from_configuration() {
    let c =
        Config::load(None, env(&[("DIALER_BUS_DISPATCH_PARTITIONS", "48"), ("DIALER_BUS_REPLICATION_FACTOR", "3")]))
            .expect("config");
    let t = c.bus.topics();
    assert_eq!((t[0].name.as_str(), t[0].partitions, t[0].replication), ("dialer.dispatch", 48, 3));
    assert!(t[1..].iter().all(|t| t.partitions == 8 && t.replication == 3), "{t:?}");
    let e = Config::from_toml("[bus]\ndispatch_partitions = 0\n").expect("parses").validate().expect_err("refused");
    assert!(e.to_string().contains("bus.dispatch_partitions"), "{e}");
}

#[test]
fn env_overrides_file() {
    let dir = tempfile::tempdir().expect("tmp");
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[limits]\nglobal_max_concurrency = 50\n[api]\nlisten = \"127.0.0.1:9000\"\n").expect("write");
    let c = Config::load(Some(&p), env(&[("TELEPHONY_GLOBAL_MAX_CONCURRENCY", "70"), ("MAX_CONCURRENT_CALLS", "9")]))
        .expect("valid");
    assert_eq!(c.limits.global_max_concurrency, 70);
    assert_eq!(c.limits.max_concurrent_calls, 9);
    assert_eq!(c.api.listen.to_string(), "127.0.0.1:9000");
}

#[test]
fn sip_trunks_are_checked_at_start_with_the_key_and_passwords_come_from_the_environment() {
    let trunk = |extra: &str| {
        format!(
            "[provider]\nkind = \"sip\"\n[[provider.trunks]]\nname = \"carrier\"\nproxy = \"127.0.0.1:5060\"\n\
             username = \"acme\"\npassword_env = \"TRUNK_PW\"\n{extra}"
        )
    };
    let load = |text: &str, vars: &[(&str, &str)]| {
        let f = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(f.path(), text).expect("written");
        Config::load(Some(f.path()), env(vars))
    };
    let c = load(&trunk(""), &[("TRUNK_PW", "s3cret")]).expect("a good trunk");
    assert_eq!((c.provider.kind, c.provider.trunks[0].password.as_str()), (ProviderKind::Sip, "s3cret"));
    assert!(!format!("{c:?}").contains("s3cret"), "the password stays out of Debug");
    let refused = |text: &str, vars: &[(&str, &str)], key: &str| {
        let e = load(text, vars).expect_err(key).to_string();
        assert!(e.contains(key), "{key}: {e}");
    };
    refused(&trunk(""), &[], "provider.trunks[0].password_env");
    refused("[provider]\nkind = \"sip\"\n", &[], "provider.trunks");
    refused(&trunk("max_channels = 0\n"), &[("TRUNK_PW", "x")], "provider.trunks[0].max_channels");
    refused(&trunk("caller_id = \"555\"\n"), &[("TRUNK_PW", "x")], "provider.trunks[0].caller_id");
    let bad_proxy = trunk("").replace("127.0.0.1:5060", "no port");
    refused(&bad_proxy, &[("TRUNK_PW", "x")], "provider.trunks[0].proxy");
    let twice = format!("{}[[provider.trunks]]\nname = \"carrier\"\nproxy = \"127.0.0.1:5061\"\n", trunk(""));
    refused(&twice, &[("TRUNK_PW", "x")], "provider.trunks[1].name");
    refused(&trunk(""), &[("TRUNK_PW", "x"), ("DIALER_SIP_BIND", "0.0.0.0")], "provider.sip_bind");
    let c = load(&trunk(""), &[("TRUNK_PW", "x"), ("DIALER_PROVIDER_KIND", "mock")]).expect("mock");
    assert_eq!(c.provider.kind, ProviderKind::Mock, "DIALER_PROVIDER_KIND overrides the file");
}

#[test]
fn unknown_keys_and_bad_values_are_refused_with_the_key() {
    let e = Config::from_toml("[api]\nlisten_port = 1\n").expect_err("unknown key").to_string();
    assert!(e.contains("listen_port"), "{e}");
    let e = Config::from_toml("[limits]\nglobal_max_concurrency = \"many\"\n").expect_err("bad type").to_string();
    assert!(e.contains("global_max_concurrency"), "{e}");
    let e = Config::from_toml("[bus]\nkind = \"kafak\"\n").expect_err("unknown bus").to_string();
    assert!(e.contains("kafak") && e.contains("memory") && e.contains("kafka"), "the known kinds: {e}");
    let e = Config::from_toml("[provider]\nkind = \"isdn\"\n").expect_err("unknown provider").to_string();
    assert!(e.contains("isdn") && e.contains("mock") && e.contains("sip"), "the known kinds: {e}");
    let e = Config::load(None, env(&[("DIALER_BUS_KIND", "rabbit")])).expect_err("bad env kind").to_string();
    assert!(e.contains("bus.kind") && e.contains("rabbit") && e.contains("\"kafka\""), "{e}");
    let e = Config::load(None, env(&[("TELEPHONY_SEMAPHORE_TTL_SEC", "soon")])).expect_err("bad env");
    assert!(
        e.to_string().contains("limits.semaphore_ttl_sec") && e.to_string().contains("TELEPHONY_SEMAPHORE_TTL_SEC"),
        "{e}"
    );
    // SIP's longest call by default: 30 s ringing + 5 s + 64 s of timers; past a 60 s window a
    // killed data plane's calls would stop counting against the caps while they may be up.
    let sip = "[limits]\nsemaphore_ttl_sec = 60\n[provider]\nkind = \"sip\"\n\
               [[provider.trunks]]\nname = \"a\"\nproxy = \"127.0.0.1:5060\"\n";
    let e = Config::from_toml(sip).expect("parses").validate().expect_err("a window shorter than the longest call");
    assert!(e.to_string().contains("provider.max_call_ms") && e.to_string().contains("(99 s"), "{e}");
    let fits = sip.replace("semaphore_ttl_sec = 60", "semaphore_ttl_sec = 120");
    Config::from_toml(&fits).expect("parses").validate().expect("a window as long as the longest call");
    let e = Config::load(None, env(&[("TELEPHONY_GLOBAL_MAX_CONCURRENCY", "0")])).expect_err("zero");
    assert!(e.to_string().contains("limits.global_max_concurrency"), "{e}");
    let e = Config::load(None, env(&[("DATABASE_URL", "mysql://x")])).expect_err("bad url");
    assert!(e.to_string().contains("store.url"), "{e}");
    for bad in ["500", "300000"] {
        let e = Config::load(None, env(&[("DIALER_SCHEDULER_REPUBLISH_AFTER_MS", bad)])).expect_err("out of range");
        assert!(e.to_string().contains("scheduler.republish_after_ms"), "{bad}: {e}");
    }
    let c = Config::load(None, env(&[("DIALER_SCHEDULER_REPUBLISH_AFTER_MS", "0")])).expect("never");
    assert!(c.scheduler.republish_after.is_zero());
    let e = Config::load(None, env(&[("DIALER_API_CAMPAIGN_CACHE_MS", "600000")])).expect_err("a long cache");
    assert!(e.to_string().contains("api.campaign_cache_ms"), "{e}");
    for (var, key) in [
        ("DIALER_RECORDER_WORKERS", "scheduler.recorder_workers"),
        ("DIALER_SCHEDULER_CLAIM_CONCURRENCY", "scheduler.claim_concurrency"),
    ] {
        let e = Config::load(None, env(&[(var, "0")])).expect_err("none at all").to_string();
        assert!(e.contains(key), "{e}");
        let c = Config::load(None, env(&[(var, "3")])).expect("three").scheduler;
        let set = if key.ends_with("recorder_workers") { c.recorder_workers } else { c.claim_concurrency };
        assert_eq!(set, 3, "{var} sets {key}");
    }
}

#[test]
fn example_configs_parse() {
    for f in ["embedded.toml", "production.toml"] {
        let p = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../config")
        .join(f);
        Config::load(Some(&p), env(&[])).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

#[test]
fn api_keys_are_validated_redacted_and_required_off_loopback() {
    let key = "k3y-0123456789abcdef";
    let c = Config::load(None, env(&[("DIALER_API_KEYS", &format!("{key}, other-0123456789abcdef"))])).expect("keys");
    assert_eq!(c.api.keys.len(), 2);
    assert!(!format!("{c:?}").contains(key), "Debug never shows a key");
    assert!(!toml::to_string(&c).expect("toml").contains(key), "nor does the serialized form");
    let e = Config::load(None, env(&[("DIALER_API_KEYS", "short")])).expect_err("short key");
    assert!(e.to_string().contains("api.keys[0]"), "{e}");
    let e = Config::load(None, env(&[("DIALER_API_KEYS", &format!("{key},{key}"))])).expect_err("duplicate");
    assert!(e.to_string().contains("twice"), "{e}");
    let mut open = Config::default();
    assert!(open.check_exposure().is_ok(), "no keys on loopback: the embedded default");
    open.api.listen = "0.0.0.0:8081".parse().expect("addr");
    let e = open.check_exposure().expect_err("no keys off loopback");
    assert!(e.to_string().contains("DIALER_API_KEYS"), "{e}");
    open.api.keys = vec![ApiKey(key.into())];
    assert!(open.check_exposure().is_ok());
}

#[test]
fn telemetry_settings_are_checked() {
    let c = Config::load(None, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")])).expect("otlp");
    assert_eq!(c.telemetry.otlp_endpoint, "http://127.0.0.1:4318");
    assert!(Config::default().telemetry.otlp_endpoint.is_empty(), "off by default");
    let e = Config::load(None, env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")])).expect_err("no scheme");
    assert!(e.to_string().contains("telemetry.otlp_endpoint"), "{e}");
    let e = Config::from_toml("[telemetry]\nspan_filter = \"dialer=loud\"\n")
        .map_err(|e| e.to_string())
        .and_then(|c| c.validate().map_err(|e| e.to_string()))
        .expect_err("bad level");
    assert!(e.contains("telemetry.span_filter"), "{e}");
}
