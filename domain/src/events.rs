//! Customer-facing events, pure: what happened to a call or a campaign, as the JSON
//! body every webhook delivery and live-stream message carries; which endpoint wants which event;
//! how the log orders a batch; what a delivery's answer means and when it is tried again. (The
//! signature a delivery carries is the API's contract with receivers: `dialer_api::signature`.)
//!
//! Each event belongs to a **stream**: a call's events (its id) or a campaign's own events (the
//! campaign's id). `sequence` counts a stream's events from 1 with no gap, in the order the rows
//! changed, so a receiver can order and detect a missing event; `id` is unique per event and
//! stable across redeliveries, for de-duplication.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use uuid::Uuid;

/// Every event type, as receivers see it (`type` of the body).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The scheduler dispatched an attempt.
    CallQueued,
    /// The data plane began dialling it.
    CallStarted,
    /// The far end answered.
    CallAnswered,
    /// An answered call ended normally.
    CallCompleted,
    /// An attempt failed; `final` says whether the call is over.
    CallFailed,
    /// An attempt was never dialled (its deadline passed or its number was opted out while it
    /// waited); the call waits for its next attempt.
    CallExpired,
    /// The call ended without a dial (the recipient's rules: `dnc`, `no_zone`).
    CallSkipped,
    /// A campaign was started, paused, resumed or completed.
    CampaignStatusChanged,
    /// A campaign ended, with its final stats.
    CampaignCompleted,
}

impl EventType {
    pub const ALL: [EventType; 9] = [
        EventType::CallQueued,
        EventType::CallStarted,
        EventType::CallAnswered,
        EventType::CallCompleted,
        EventType::CallFailed,
        EventType::CallExpired,
        EventType::CallSkipped,
        EventType::CampaignStatusChanged,
        EventType::CampaignCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::CallQueued => "call.queued",
            EventType::CallStarted => "call.started",
            EventType::CallAnswered => "call.answered",
            EventType::CallCompleted => "call.completed",
            EventType::CallFailed => "call.failed",
            EventType::CallExpired => "call.expired",
            EventType::CallSkipped => "call.skipped",
            EventType::CampaignStatusChanged => "campaign.status_changed",
            EventType::CampaignCompleted => "campaign.completed",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        EventType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// An event to append to the log: written in the transaction that changed its rows.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub kind: EventType,
    pub campaign_id: Uuid,
    /// The call's id, or the campaign's for a campaign's own event.
    pub stream_id: Uuid,
    /// 1, 2, … within the stream.
    pub stream_seq: u32,
    pub created_at: DateTime<Utc>,
    /// The event's `data` as JSON: what is stored besides the columns above; the body sent to
    /// receivers wraps it in the envelope those columns make ([`envelope`], [`NewEvent::body`]).
    pub data: String,
}

impl NewEvent {
    /// An event of `stream` (a call, or `campaign` itself) with its `data`.
    pub fn new(
        kind: EventType,
        campaign: Uuid,
        stream: Uuid,
        stream_seq: u32,
        at: DateTime<Utc>,
        mut data: Value,
    ) -> NewEvent {
        // Absent fields are left out, not sent as null: every event is stored and sent.
        if let Value::Object(m) = &mut data {
            m.retain(|_, v| !v.is_null());
        }
        let id = Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            at.timestamp().max(0) as u64,
            at.timestamp_subsec_nanos(),
        ));
        NewEvent {
            id,
            kind,
            campaign_id: campaign,
            stream_id: stream,
            stream_seq,
            created_at: at,
            data: data.to_string(),
        }
    }

    /// The whole body sent to receivers.
    pub fn body(&self) -> String {
        envelope(
            self.id,
            self.kind.as_str(),
            self.stream_seq,
            self.created_at,
            (self.campaign_id, self.stream_id),
            &self.data,
        )
    }
}

/// An event's body from what the log stores of it: `{"call_id", "campaign_id", "created_at",
/// "data", "id", "sequence", "type"}` (no `call_id` for a campaign's own event, `stream` being
/// the campaign), keys in that order, no spaces: the bytes `serde_json` writes for that object.
pub fn envelope(
    id: Uuid,
    kind: &str,
    stream_seq: u32,
    at: DateTime<Utc>,
    (campaign, stream): (Uuid, Uuid),
    data: &str,
) -> String {
    let call = if stream == campaign { String::new() } else { format!("\"call_id\":\"{stream}\",") };
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let kind = serde_json::to_string(kind).unwrap_or_else(|_| "\"\"".into());
    format!(
        "{{{call}\"campaign_id\":\"{campaign}\",\"created_at\":\"{at}\",\"data\":{data},\"id\":\"{id}\",\"sequence\":{stream_seq},\"type\":{kind}}}"
    )
}

/// Unix milliseconds as RFC 3339 (the bodies' time format).
pub fn time(ms: u64) -> String {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Which events an endpoint takes: types (empty = all) and one campaign (`None` = all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    pub types: Vec<EventType>,
    pub campaign: Option<Uuid>,
}

impl Subscription {
    pub fn wants(&self, kind: EventType, campaign: Uuid) -> bool {
        (self.types.is_empty() || self.types.contains(&kind)) && self.campaign.is_none_or(|c| c == campaign)
    }
}

/// An endpoint's settings, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSettings {
    pub url: String,
    pub description: String,
    pub subscription: Subscription,
    pub max_concurrency: u32,
    pub rate_per_sec: u32,
}

/// An event of a batch being sequenced: where it is in the batch's arrival order and its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsequenced {
    pub stream: Uuid,
    pub stream_seq: u32,
}

/// The order in which to number a batch given in arrival order (`created_at`, then id): the
/// arrival order, except that each stream's events take the places its events hold in stream
/// order. Returns indexes into `batch`. Events of a stream are committed in stream order (each
/// write locks the stream's row), so across batches the order holds already; within one batch
/// two events of a stream may arrive with equal or skewed clocks.
pub fn log_order(batch: &[Unsequenced]) -> Vec<usize> {
    let mut by_stream: std::collections::HashMap<Uuid, Vec<usize>> = std::collections::HashMap::new();
    for (i, e) in batch.iter().enumerate() {
        by_stream.entry(e.stream).or_default().push(i);
    }
    let mut order: Vec<usize> = (0..batch.len()).collect();
    for places in by_stream.values() {
        let mut members = places.clone();
        members.sort_by_key(|&i| batch[i].stream_seq);
        for (place, member) in places.iter().zip(members) {
            order[*place] = member;
        }
    }
    order
}

/// An event of the log after an endpoint's cursor, as a claim reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unread {
    pub seq: i64,
    pub stream: Uuid,
    /// Whether the endpoint's subscription takes it.
    pub wanted: bool,
}

/// What a claim does with the log after an endpoint's cursor ([`take_from_log`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FromLog {
    /// Sent now: leased straight from the log, with no delivery row.
    pub leased: Vec<i64>,
    /// Waiting behind an earlier event of their stream: written as pending delivery rows.
    pub queued: Vec<i64>,
    /// Behind a dead letter of their stream: written to the dead-letter store.
    pub buried: Vec<i64>,
    /// The endpoint's new cursor: the last event handled (`None`: none was).
    pub cursor: Option<i64>,
}

/// Lazy fan-out: takes the events after an endpoint's cursor, in log order, until `capacity`
/// are leased. An event its subscription does not take is passed over. One whose stream has a
/// dead letter on the endpoint is buried with it. One whose stream is `busy` (a pending delivery
/// row, a lease, or an earlier event of this batch) waits in a delivery row, so a call's events
/// still go one at a time in order. Any other is leased. The cursor stops before the first event
/// that would need a lease beyond `capacity`.
pub fn take_from_log(
    unread: &[Unread],
    busy: &std::collections::HashSet<Uuid>,
    dead: &std::collections::HashSet<Uuid>,
    capacity: usize,
) -> FromLog {
    let mut out = FromLog::default();
    let mut taken: std::collections::HashSet<Uuid> = std::collections::HashSet::new();
    for e in unread {
        if e.wanted {
            if dead.contains(&e.stream) {
                out.buried.push(e.seq);
            } else if busy.contains(&e.stream) || taken.contains(&e.stream) {
                out.queued.push(e.seq);
            } else if out.leased.len() < capacity {
                out.leased.push(e.seq);
                taken.insert(e.stream);
            } else {
                break;
            }
        }
        out.cursor = Some(e.seq);
    }
    out
}

/// What one delivery attempt got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// An HTTP status code.
    Status(u16),
    /// No answer within the timeout.
    Timeout,
    /// The connection failed or was reset.
    Connection(String),
}

impl Answer {
    /// The label of `dialer_webhook_deliveries_total{code}`: the status code, `timeout` or
    /// `connection` (bounded).
    pub fn label(&self) -> String {
        match self {
            Answer::Status(c) => c.to_string(),
            Answer::Timeout => "timeout".into(),
            Answer::Connection(_) => "connection".into(),
        }
    }

    pub fn code(&self) -> Option<u16> {
        match self {
            Answer::Status(c) => Some(*c),
            _ => None,
        }
    }

    pub fn error(&self) -> Option<String> {
        match self {
            Answer::Status(c) if (200..300).contains(c) => None,
            Answer::Status(c) => Some(format!("HTTP {c}")),
            Answer::Timeout => Some("timeout".into()),
            Answer::Connection(e) => Some(format!("connection: {e}")),
        }
    }
}

/// How deliveries are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The first retry's delay before jitter.
    pub base: Duration,
    /// The longest delay.
    pub max: Duration,
    /// How long after its first attempt an event is still tried; then it is dead-lettered.
    pub window: Duration,
}

/// What to do with a delivery after an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// 2xx: done.
    Delivered,
    /// Try again at this instant.
    Retry(DateTime<Utc>),
    /// The retry window is over: to the dead-letter store.
    Dead,
    /// 410 Gone: the endpoint is disabled, its undelivered events dead-lettered.
    Gone,
}

impl RetrySchedule {
    /// The delay before retry `n` (1 = after the first attempt): exponential, capped, with
    /// "equal jitter" (half fixed, half uniform from `u` in [0, 1)) so receivers that failed
    /// together are not retried together.
    pub fn delay(&self, n: u32) -> Duration {
        self.delay_with(n, 0.5)
    }

    fn delay_with(&self, n: u32, u: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << n.saturating_sub(1).min(30)).min(self.max);
        exp / 2 + exp.mul_f64(u.clamp(0.0, 1.0) / 2.0)
    }

    /// After attempt `attempts` got `answer` at `now`, for an event first tried at `first`.
    pub fn next(&self, answer: &Answer, attempts: u32, first: DateTime<Utc>, now: DateTime<Utc>, u: f64) -> Next {
        match answer {
            Answer::Status(c) if (200..300).contains(c) => return Next::Delivered,
            Answer::Status(410) => return Next::Gone,
            _ => {}
        }
        let at = now + self.delay_with(attempts, u);
        let window_end = first + self.window;
        if now >= window_end {
            Next::Dead
        } else {
            // The last try lands at the window's end, not beyond it.
            Next::Retry(at.min(window_end))
        }
    }
}

#[cfg(test)]
mod tests;
