//! Messages between the planes: dispatch messages (scheduler → data plane) and status events
//! (data plane → recorder). Both are versioned JSON (`"v": 1`): readable with any Kafka tool,
//! and measured cheap enough next to the broker (see `bench dataplane`). A reader refuses a
//! version it does not know instead of guessing.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u8 = 1;

/// Everything a data-plane shard needs to place one attempt of one call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchMessage {
    pub v: u8,
    pub call_id: Uuid,
    /// 1-based attempt number; (call_id, attempt) is the unit that is dialed at most once.
    pub attempt: u32,
    pub campaign_id: Uuid,
    pub phone_number: String,
    /// The campaign's effective cap when the message was written.
    pub campaign_cap: u32,
    /// The campaign's weight in the fair division of a binding global cap (1 when absent).
    #[serde(default = "one")]
    pub campaign_weight: u32,
    /// Unix milliseconds before which the call must not be placed.
    pub not_before_ms: u64,
    /// Unix milliseconds after which the call must not be placed any more (0 = no deadline): a
    /// paused or completed campaign's queued calls expire instead of dialing.
    #[serde(default)]
    pub deadline_ms: u64,
    /// Unix microseconds when the message was (meant to be) queued; the data plane reports the
    /// wait until dialing on the `started` event (0 = unknown).
    #[serde(default)]
    pub enqueued_at_us: u64,
    /// The campaign's SIP settings (caller ID, ring timeout, media, REFER); absent = the
    /// provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telephony: Option<Box<crate::settings::Telephony>>,
    /// `suppress`: not a call but an opt-out announced to every shard: calls to `phone_number`
    /// (of `campaign_id`, or of every campaign when it is nil) must not be dialled before
    /// `deadline_ms`.
    #[serde(default, skip_serializing_if = "DispatchKind::is_dial")]
    pub kind: DispatchKind,
}

/// What a dispatch message asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DispatchKind {
    #[default]
    Dial,
    Suppress,
}

impl DispatchKind {
    pub fn is_dial(&self) -> bool {
        *self == DispatchKind::Dial
    }
}

fn one() -> u32 {
    1
}

/// What happened to an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Dialing began.
    Started,
    /// The call was answered and has ended normally (carries `answered_at_ms`, `duration_ms`).
    Completed,
    /// The attempt failed (carries `reason`, `retryable`).
    Failed,
    /// The attempt was not placed: its deadline passed while it waited (retryable).
    Expired,
}

impl EventKind {
    /// Whether this event ends the attempt (its dispatch message is then done).
    pub fn is_outcome(self) -> bool {
        !matches!(self, EventKind::Started)
    }
}

/// One status event of one attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusEvent {
    pub v: u8,
    pub call_id: Uuid,
    pub attempt: u32,
    pub campaign_id: Uuid,
    pub kind: EventKind,
    /// Unix milliseconds of the event.
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// The shard that placed the call (diagnostics).
    pub shard: u16,
    /// On `started`: microseconds from `enqueued_at_us` of the dispatch message to dialing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispatch_latency_us: Option<u64>,
    /// On an outcome placed over SIP: the far end's final response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<Box<SipDetail>>,
    /// On an answered call with a media plan: who answered, keys, voicemail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<crate::media::MediaResult>>,
}

/// The SIP final response behind an outcome, kept on the attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SipDetail {
    /// The status code; `None` when no final response came (Timer B, no trunk in service).
    pub code: Option<u16>,
    /// The reason phrase (or what the dialer saw instead).
    pub phrase: String,
    /// The far end's `Retry-After`: the next attempt waits at least this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a message of this schema: {0}")]
    Malformed(#[source] serde_json::Error),
    #[error(
        "schema version {0} is not supported by this build (it reads version {SCHEMA_VERSION}); upgrade the reader"
    )]
    Version(u8),
}

fn check_version(v: u8) -> Result<(), DecodeError> {
    if v == SCHEMA_VERSION { Ok(()) } else { Err(DecodeError::Version(v)) }
}

impl DispatchMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<DispatchMessage, DecodeError> {
        let m: DispatchMessage = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        check_version(m.v)?;
        Ok(m)
    }
}

impl StatusEvent {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<StatusEvent, DecodeError> {
        let e: StatusEvent = serde_json::from_slice(bytes).map_err(DecodeError::Malformed)?;
        check_version(e.v)?;
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> DispatchMessage {
        DispatchMessage {
            v: SCHEMA_VERSION,
            call_id: Uuid::from_u128(1),
            attempt: 2,
            campaign_id: Uuid::from_u128(3),
            phone_number: "+15555550001".into(),
            campaign_cap: 10,
            campaign_weight: 1,
            not_before_ms: 1_790_000_000_000,
            deadline_ms: 0,
            enqueued_at_us: 0,
            telephony: None,
            kind: Default::default(),
        }
    }

    #[test]
    fn dispatch_round_trips() {
        let m = msg();
        assert_eq!(DispatchMessage::decode(&m.encode()).expect("decode"), m);
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let mut m = msg();
        m.v = 2;
        assert!(matches!(DispatchMessage::decode(&m.encode()), Err(DecodeError::Version(2))));
        assert!(matches!(DispatchMessage::decode(b"{not json"), Err(DecodeError::Malformed(_))));
        assert!(matches!(DispatchMessage::decode(b"{\"v\":1}"), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn events_round_trip_and_know_outcomes() {
        let e = StatusEvent {
            media: None,
            v: 1,
            call_id: Uuid::from_u128(1),
            attempt: 1,
            campaign_id: Uuid::from_u128(2),
            kind: EventKind::Failed,
            at_ms: 5,
            started_at_ms: Some(1),
            answered_at_ms: None,
            duration_ms: None,
            reason: Some("busy".into()),
            retryable: Some(true),
            shard: 0,
            dispatch_latency_us: None,
            sip: None,
        };
        assert_eq!(StatusEvent::decode(&e.encode()).expect("decode"), e);
        assert!(EventKind::Failed.is_outcome() && EventKind::Completed.is_outcome() && EventKind::Expired.is_outcome());
        assert!(!EventKind::Started.is_outcome());
    }
}
