//! Telemetry plumbing shared by every process: the one place that installs the Prometheus
//! exporter (`metrics` facade → `metrics-exporter-prometheus`) and renders `/metrics`, and the
//! readiness checks `/readyz` runs.
//!
//! Each crate keeps its own metric catalogue next to the code that records the metrics (a
//! `metrics::describe` function: `dialer_bus`, `dialer_limiter`, `dialer_dataplane`,
//! `dialer_control_plane`); a process passes the catalogues of the crates it runs to
//! [`install`].

pub mod startup;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::PrometheusBuilder;
pub use metrics_exporter_prometheus::PrometheusHandle as Handle;

/// A crate's metric catalogue: describes (names, units, help texts) its metrics.
pub type Catalogue = fn();

/// Histogram buckets, in seconds (every histogram here is a duration but the batch size, which
/// uses the same boundaries as counts).
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0,
    1000.0, 5000.0,
];

static HANDLE: OnceLock<Option<Handle>> = OnceLock::new();

/// Installs the process-wide recorder (the first call does) and describes `catalogues`; `None`
/// when another recorder was installed first. Later calls only add their catalogues.
pub fn install(catalogues: &[Catalogue]) -> Option<Handle> {
    let handle = HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(BUCKETS).ok()?;
            builder
                .install_recorder()
                .inspect_err(|e| tracing::warn!(error = %e, "metrics recorder not installed"))
                .ok()
        })
        .clone();
    if handle.is_some() {
        for describe in catalogues {
            describe();
        }
    }
    handle
}

/// The Prometheus text exposition of this process, `None` before [`install`].
pub fn render() -> Option<String> {
    HANDLE.get().cloned().flatten().map(|h| h.render())
}

/// The `/metrics` answer for `text` (from [`render`], perhaps with more families appended);
/// 503 when the recorder is not installed.
pub fn exposition(text: Option<String>) -> Response {
    match text {
        Some(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        None => (axum::http::StatusCode::SERVICE_UNAVAILABLE, "metrics recorder not installed").into_response(),
    }
}

/// `GET /metrics`: this process's exposition.
pub async fn metrics() -> Response {
    exposition(render())
}

/// Why a dependency is not ready, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no answer within {0:?}: check that it runs and is reachable from this host")]
    Timeout(Duration),
    #[error("{what} unreachable: {source}; {hint}")]
    Unreachable {
        what: &'static str,
        /// What to check.
        hint: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{}", .0.join(" | "))]
    NotReady(Vec<String>),
}

/// The future of one readiness check.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), CheckError>> + Send>>;

/// How long one readiness check may take before it counts as down.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One dependency `/readyz` checks besides the store.
#[derive(Clone)]
pub struct ReadyCheck {
    pub name: &'static str,
    /// Also a liveness check: `/healthz` runs it too (a failure the process cannot recover
    /// from, such as a stopped shard).
    pub live: bool,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadyCheck").field("name", &self.name).finish_non_exhaustive()
    }
}

impl ReadyCheck {
    pub fn new(name: &'static str, check: impl Fn() -> CheckFuture + Send + Sync + 'static) -> ReadyCheck {
        ReadyCheck { name, live: false, check: Arc::new(check) }
    }

    /// A check `/healthz` runs as well as `/readyz`.
    pub fn liveness(name: &'static str, check: impl Fn() -> CheckFuture + Send + Sync + 'static) -> ReadyCheck {
        ReadyCheck { name, live: true, check: Arc::new(check) }
    }

    /// Runs the check, counting no answer within [`CHECK_TIMEOUT`] as down.
    pub async fn run(&self) -> Result<(), CheckError> {
        match tokio::time::timeout(CHECK_TIMEOUT, (self.check)()).await {
            Ok(r) => r,
            Err(_) => Err(CheckError::Timeout(CHECK_TIMEOUT)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_does_not_answer_is_down_with_a_reason() {
        let slow = ReadyCheck::new("slow", || Box::pin(std::future::pending()));
        tokio::time::pause();
        assert!(matches!(slow.run().await, Err(CheckError::Timeout(CHECK_TIMEOUT))));
        let bad =
            ReadyCheck::new("bad", || Box::pin(async { Err(CheckError::NotReady(vec!["a".into(), "b".into()])) }));
        assert_eq!(bad.run().await.expect_err("down").to_string(), "a | b");
    }
}
