//! The event log, the webhook endpoints and their deliveries.
//!
//! - [`log::append`] runs inside the transactions that change calls and campaigns: an event
//!   exists exactly when its change committed (an outbox).
//! - [`log::sequence`] numbers committed events (one sequencer at a time: the `event_sequencer`
//!   row lock), moving them from the inbox into the log.
//! - Deliveries are claimed per endpoint under the endpoint's row lock (its concurrency and token
//!   bucket hold across replicas), only at the head of their stream on that endpoint (an event is
//!   never sent before its stream's earlier events are delivered), with a lease: a row of
//!   `webhook_leases` (attempt number, stream, expiry).
//! - Fan-out is lazy: each endpoint keeps a cursor in the log, and a claim leases events straight
//!   from the log after it. A delivery row (`webhook_deliveries`) is written only for an event
//!   that must wait behind its stream's event in flight or retried, that failed, or that is dead;
//!   a delivered event with none leaves nothing but its lease, inserted and deleted.

pub mod audit;
pub mod deliveries;
pub mod endpoints;
pub mod log;

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use dialer_domain::events::{Answer, Next};
use uuid::Uuid;

/// Rows per multi-row INSERT into `events` (8 columns, under SQLite's 32,766 parameters).
pub(crate) const EVENT_CHUNK: usize = 2000;
/// Ids per `IN (…)` or VALUES list.
pub(crate) const CHUNK: usize = 1000;

static ENABLED: AtomicBool = AtomicBool::new(true);

/// Whether writers append events (`events.enabled`; on by default). Off, nothing is logged, so
/// neither webhooks nor the live stream see anything: for operators who want neither, and for
/// `bench webhooks` to measure what the log costs the recorder.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub(crate) fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// An event as the inbox keeps it: a transaction's events are one inbox row, a JSON array of
/// these (short keys: the array is what the transaction writes). `b` is the event's `data` as a
/// string, byte for byte (or the whole body of an event written before the envelope columns).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InboxEvent<'a> {
    /// Campaign.
    pub c: Uuid,
    /// Stream: the call, or the campaign for its own events.
    pub s: Uuid,
    /// Position in the stream.
    pub q: u32,
    /// Type (`call.queued`, …).
    #[serde(borrow)]
    pub k: std::borrow::Cow<'a, str>,
    /// Created at.
    pub t: DateTime<Utc>,
    /// The event's id (none for an event written before the envelope columns).
    pub e: Option<Uuid>,
    #[serde(borrow)]
    pub b: std::borrow::Cow<'a, str>,
}

/// A numbered event of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedEvent {
    pub seq: i64,
    pub campaign_id: Uuid,
    pub kind: String,
    pub body: String,
}

/// What one run of the sequencer did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sequenced {
    pub events: u64,
    /// The last number given (0: none).
    pub last_seq: i64,
}

/// An enabled endpoint as the delivery worker schedules it (its URL and secrets come with each
/// claim, [`Claim`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveEndpoint {
    pub id: Uuid,
    pub max_concurrency: u32,
    pub health: dialer_api::webhooks::EndpointHealth,
}

/// A delivery claimed for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub endpoint_id: Uuid,
    pub seq: i64,
    pub stream_id: Uuid,
    pub stream_seq: i32,
    /// This attempt's number (1 = first); the result is written only if it still matches.
    pub attempts: u32,
    pub window_start: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub body: String,
}

/// Deliveries claimed for an endpoint, with its URL and signing secrets as of the claim (a
/// rotation or a new URL applies from the next claim on).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Claim {
    pub url: String,
    pub secrets: Vec<String>,
    pub deliveries: Vec<ClaimedDelivery>,
}

/// A finished attempt and what follows from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub delivery: ClaimedDelivery,
    pub answer: Answer,
    pub next: Next,
}

/// A dead letter: an event an endpoint never took.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The event's log position (replay names it).
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub attempts: u32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub first_attempt_at: Option<DateTime<Utc>>,
    pub dead_at: Option<DateTime<Utc>>,
    /// The event as it would be delivered.
    #[schema(value_type = Object)]
    pub event: serde_json::Value,
}

/// Deliveries by state, for the queue-depth and dead-letter gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QueueCounts {
    pub pending: i64,
    pub sending: i64,
    pub dead: i64,
}

/// The stored form of [`dialer_domain::events::Next`] for a write.
pub(crate) fn state_of(next: &Next) -> &'static str {
    match next {
        Next::Delivered => "delivered",
        Next::Retry(_) => "pending",
        Next::Dead | Next::Gone => "dead",
    }
}

/// An attempt that did not deliver, as its delivery row records it (`record_attempts`).
pub(crate) struct Attempt {
    endpoint: Uuid,
    seq: i64,
    /// The event's stream: a lease taken from the log has no delivery row yet, and this writes it.
    stream: Uuid,
    stream_seq: i32,
    attempt: i32,
    /// The retry window's start, kept if the row has one already.
    window_start: DateTime<Utc>,
    state: &'static str,
    /// When it is due again (pending), or when it died (dead).
    next_at: DateTime<Utc>,
    code: Option<i32>,
    error: Option<String>,
}

impl Attempt {
    pub(crate) fn answered(f: &Finished, at: DateTime<Utc>) -> Attempt {
        Attempt {
            endpoint: f.delivery.endpoint_id,
            seq: f.delivery.seq,
            stream: f.delivery.stream_id,
            stream_seq: f.delivery.stream_seq,
            attempt: f.delivery.attempts as i32,
            window_start: f.delivery.window_start,
            state: state_of(&f.next),
            next_at: if let Next::Retry(t) = f.next { t } else { at },
            code: f.answer.code().map(i32::from),
            error: f.answer.error(),
        }
    }

    /// A lease that ran out: due again now.
    pub(crate) fn expired(lease: ExpiredLease, at: DateTime<Utc>) -> Attempt {
        let (endpoint, seq, stream, stream_seq, attempt, claimed_at) = lease;
        Attempt {
            endpoint,
            seq,
            stream,
            stream_seq,
            attempt,
            window_start: claimed_at,
            state: "pending",
            next_at: at,
            code: None,
            error: Some("lease expired: the sender stopped before it recorded an answer".into()),
        }
    }
}

/// A lease that ran out, as deleted: endpoint, seq, stream, stream_seq, attempt, claimed_at.
pub(crate) type ExpiredLease = (Uuid, i64, Uuid, i32, i32, DateTime<Utc>);

/// Why an event was buried behind its stream's dead letter (`last_error`).
pub(crate) const BEHIND_DEAD: &str = "an earlier event of its call or campaign is in the dead-letter store";
/// Why an endpoint's undelivered events were buried when it answered 410.
pub(crate) const GONE: &str = "the endpoint answered 410 Gone";

/// The columns of the log (`e`) a reader selects to have an event's body ([`body_from_row`]).
pub(crate) const BODY_COLUMNS: &str =
    "e.event_id, e.campaign_id, e.stream_id, e.stream_seq, e.kind, e.body, e.created_at";

/// An event's body from its row: its `data` in the envelope its columns make, or, for a row
/// written before the log kept the id in a column (`event_id` NULL), the whole body it holds.
pub(crate) fn body_of(
    event_id: Option<Uuid>,
    kind: &str,
    stream_seq: i32,
    at: DateTime<Utc>,
    (campaign, stream): (Uuid, Uuid),
    stored: String,
) -> String {
    match event_id {
        Some(id) => dialer_domain::events::envelope(id, kind, stream_seq as u32, at, (campaign, stream), &stored),
        None => stored,
    }
}

/// [`body_of`] a row that selected [`BODY_COLUMNS`].
pub(crate) fn body_from_row<R: crate::dialect::RowExt>(r: &R) -> Result<String, crate::StoreError> {
    let kind: String = r.col("kind")?;
    let ids = (r.col("campaign_id")?, r.col("stream_id")?);
    Ok(body_of(r.col("event_id")?, &kind, r.col("stream_seq")?, r.col("created_at")?, ids, r.col("body")?))
}

/// A claimed row as the attempt it starts (its window starts now if this is the first).
pub(crate) fn claimed_delivery(endpoint: Uuid, r: crate::dialect::ClaimedRow, at: DateTime<Utc>) -> ClaimedDelivery {
    let (seq, stream_id, stream_seq, attempts, window_start, stored, created_at, event_id, campaign_id, kind) = r;
    let body = body_of(event_id, &kind, stream_seq, created_at, (campaign_id, stream_id), stored);
    ClaimedDelivery {
        endpoint_id: endpoint,
        seq,
        stream_id,
        stream_seq,
        attempts: attempts as u32 + 1,
        window_start: window_start.unwrap_or(at),
        created_at,
        body,
    }
}
