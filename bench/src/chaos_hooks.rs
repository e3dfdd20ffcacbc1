//! `bench chaos --webhooks`: one webhook endpoint of every event, on a receiver of the bench's
//! own that fails a share of requests throughout (500s, hangs, dropped connections) and, at each
//! `webhook` fault, answers 503 to everything for a while. The audit reads the receiver's log,
//! not the product's: every event of every call and campaign arrived (by stream and sequence,
//! 1 to the row's `event_seq`), and no event was sent before its stream's previous one.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use dialer_api::webhooks::CreateWebhookRequest;
use dialer_testkit::receiver::{Mode, Received, Receiver};
use indicatif::{ProgressBar, ProgressStyle};
use uuid::Uuid;

/// How the receiver answers when it is up: most requests, not all.
pub fn up_mode() -> Mode {
    Mode::Flaky { share: 0.05, hang: Duration::from_millis(300) }
}

/// The `[webhooks]` section of the control planes' configuration: deliveries to the bench's
/// loopback receiver allowed, short timeouts and retries (an outage of seconds, not hours).
pub const CONFIG: &str = "[webhooks]\nallow_private_targets = true\ntimeout_ms = 2000\nretry_base_ms = 200\n\
                          retry_max_ms = 2000\npoll_ms = 100\n";

/// Registers an endpoint of every event at `rx` (before the campaigns start: its cursor is
/// the log's head then), 128 requests in flight: a receiver made for the run's ~2,000 events a
/// second (at 32 the deliveries, bound by their claims' and answers' commits, not by CPU, fell
/// behind by ~1,000 a second).
pub async fn register(db: &str, rx: &Receiver) -> Result<Uuid> {
    let store = dialer_testkit::fixtures::open(db).await;
    let req = CreateWebhookRequest {
        url: rx.url("/chaos"),
        max_concurrency: Some(128),
        rate_per_sec: Some(10_000),
        ..Default::default()
    };
    let settings = req.validate().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let w = store.create_webhook(&settings, "chaos-signing-secret-0123456789").await?;
    store.close().await;
    Ok(w.id)
}

/// What the receiver's log says of the run's events.
#[derive(Debug, Default)]
pub struct Audit {
    pub requests: usize,
    /// Distinct events (stream, sequence) received.
    pub events: usize,
    /// Events the rows say exist that never arrived.
    pub missing: u64,
    /// Requests that carried an event before its stream's previous one had been sent.
    pub out_of_order: u64,
    /// Requests the receiver failed (anything but a 200).
    pub failed_answers: usize,
}

/// Each stream (call or campaign) and how many events it logged (its row's `event_seq`).
async fn expected(db: &str, campaigns: &[Uuid]) -> Result<HashMap<Uuid, u64>> {
    let pool = sqlx::PgPool::connect(db).await.context("the audit's connection")?;
    let calls: Vec<(Uuid, i32)> = sqlx::query_as("SELECT id, event_seq FROM calls WHERE campaign_id = ANY($1)")
        .bind(campaigns)
        .fetch_all(&pool)
        .await?;
    let own: Vec<(Uuid, i32)> = sqlx::query_as("SELECT id, event_seq FROM campaigns WHERE id = ANY($1)")
        .bind(campaigns)
        .fetch_all(&pool)
        .await?;
    pool.close().await;
    Ok(calls.into_iter().chain(own).map(|(id, n)| (id, n.max(0) as u64)).collect())
}

/// A request's event: its stream and its sequence (`None`: not an event of ours).
fn stream_event(r: &Received) -> Option<(Uuid, u64)> {
    let v: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    let stream = v.get("call_id").unwrap_or(&v["campaign_id"]).as_str()?.parse().ok()?;
    Some((stream, v["sequence"].as_u64()?))
}

/// The receiver's log read so far against the rows: fed each new stretch of the log as it
/// grows (a long run's millions of requests are read once, not at every look).
struct Tally<'a> {
    want: &'a HashMap<Uuid, u64>,
    sent: HashSet<(Uuid, u64)>,
    /// Distinct events sent that the rows count (the rest of `sent` is not the run's).
    wanted_sent: u64,
    a: Audit,
}

impl<'a> Tally<'a> {
    fn new(want: &'a HashMap<Uuid, u64>) -> Tally<'a> {
        Tally { want, sent: HashSet::new(), wanted_sent: 0, a: Audit::default() }
    }

    fn add(&mut self, log: &[Received]) {
        self.a.requests += log.len();
        for r in log {
            self.a.failed_answers += usize::from(r.answered != dialer_testkit::receiver::Answered::Status(200));
            let Some((stream, k)) = stream_event(r) else { continue };
            self.a.out_of_order += u64::from(k > 1 && !self.sent.contains(&(stream, k - 1)));
            if self.sent.insert((stream, k)) && self.want.get(&stream).is_some_and(|&n| k <= n) {
                self.wanted_sent += 1;
            }
        }
        self.a.events = self.sent.len();
        self.a.missing = self.want.values().sum::<u64>() - self.wanted_sent;
    }
}

/// The receiver's log against the rows: what arrived, what is missing, what came out of order.
#[cfg(test)]
fn audit(log: &[Received], want: &HashMap<Uuid, u64>) -> Audit {
    let mut t = Tally::new(want);
    t.add(log);
    t.a
}

/// Waits (up to `timeout`) until every event the rows count has arrived, then audits.
pub async fn wait_and_audit(db: &str, campaigns: &[Uuid], rx: &Receiver, timeout: Duration) -> Result<Audit> {
    let want = expected(db, campaigns).await?;
    let total: u64 = want.values().sum();
    let pb = ProgressBar::new(total).with_style(
        ProgressStyle::with_template("webhooks {bar:40} {pos}/{len} events at the receiver")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let end = Instant::now() + timeout;
    let mut tally = Tally::new(&want);
    loop {
        let new = rx.received_from(tally.a.requests);
        tally.add(&new);
        pb.set_position(total - tally.a.missing);
        if tally.a.missing == 0 || Instant::now() >= end {
            pb.finish_and_clear();
            return Ok(tally.a);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialer_testkit::receiver::Answered;

    fn req(stream: Uuid, k: u64, answered: Answered) -> Received {
        let body = serde_json::json!({"campaign_id": Uuid::nil(), "call_id": stream, "sequence": k}).to_string();
        Received { at: Instant::now(), headers: HashMap::new(), body: body.into_bytes(), answered }
    }

    #[test]
    fn the_audit_counts_what_is_missing_and_what_came_before_its_predecessor() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let ok = Answered::Status(200);
        // a: 1 failed then retried, 2, 3; b: 2 before 1 (out of order), 3 never.
        let log = [
            req(a, 1, Answered::Status(503)),
            req(a, 1, ok),
            req(a, 2, ok),
            req(b, 2, ok),
            req(a, 3, ok),
            req(b, 1, ok),
        ];
        let want = HashMap::from([(a, 3), (b, 3)]);
        let got = audit(&log, &want);
        assert_eq!((got.requests, got.events, got.missing, got.out_of_order, got.failed_answers), (6, 5, 1, 1, 1));
    }
}
