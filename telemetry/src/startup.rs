//! Start-up against servers that may be down: a process started (or restarted by its
//! supervisor) while Redis, PostgreSQL or the CQL store is restarting waits for it, saying what
//! it waits for, instead of exiting at once; a setting that is wrong (not a server that is not
//! answering) still stops it at once.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long a process waits at start for a server that does not answer (longer than a
/// server's restart, Cassandra's included); then it exits with the server's error.
pub const STARTUP_WAIT: Duration = Duration::from_secs(180);

/// Runs `connect` until it succeeds, fails with an error `transient` does not accept, or `wait`
/// has passed since the first try (then the last error). Retries back off from 250 ms to 5 s,
/// each logged with `what` and the error.
pub async fn until_up<T, E, F, Fut>(
    what: &str,
    wait: Duration,
    transient: impl Fn(&E) -> bool,
    mut connect: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut pause = Duration::from_millis(250);
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) if transient(&e) && started.elapsed() + pause <= wait => {
                tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "{what} is not answering yet; waiting for it");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[tokio::test(start_paused = true)]
    async fn waits_for_a_server_that_comes_back() {
        let tries = Cell::new(0);
        let got = until_up(
            "x",
            Duration::from_secs(60),
            |_: &&str| true,
            || {
                tries.set(tries.get() + 1);
                let n = tries.get();
                async move { if n < 4 { Err("refused") } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(got, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wrong_setting_stops_at_once() {
        let tries = Cell::new(0);
        let got: Result<(), &str> = until_up(
            "x",
            Duration::from_secs(60),
            |e: &&str| *e != "bad url",
            || {
                tries.set(tries.get() + 1);
                async { Err("bad url") }
            },
        )
        .await;
        assert_eq!((got, tries.get()), (Err("bad url"), 1));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_wait_with_the_last_error() {
        let t0 = tokio::time::Instant::now();
        let got: Result<(), &str> =
            until_up("x", Duration::from_secs(20), |_: &&str| true, || async { Err("refused") }).await;
        assert_eq!(got, Err("refused"));
        assert!(t0.elapsed() <= Duration::from_secs(20), "waited {:?}", t0.elapsed());
        assert!(t0.elapsed() >= Duration::from_secs(10), "gave up early: {:?}", t0.elapsed());
    }
}
