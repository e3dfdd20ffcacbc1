//! The events each change of a call or campaign logs, built without I/O: the writers
//! in `sql.rs` pass what they changed and append what this returns in the same transaction. Each
//! builder takes the stream's last sequence number and advances it; the writer stores it back on
//! the row it changed. The bodies' fields are documented in `docs/webhooks.md`.

use chrono::{DateTime, Utc};
use dialer_domain::campaign::CallStatus;
use dialer_domain::events::{EventType, NewEvent, time};
use dialer_domain::lifecycle::Change;
use dialer_domain::messages::{EventKind, StatusEvent};
use dialer_domain::outcome::Outcome;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::model::ClaimedCall;
use crate::record::CANCELLED;

/// A call's stream as a writer holds it: its campaign, number and last sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CallStream {
    pub campaign: Uuid,
    pub call: Uuid,
    pub phone_number: String,
    pub seq: u32,
}

impl CallStream {
    fn push(&mut self, out: &mut Vec<NewEvent>, kind: EventType, at: DateTime<Utc>, mut data: Value) {
        self.seq += 1;
        data["phone_number"] = json!(self.phone_number);
        out.push(NewEvent::new(kind, self.campaign, self.call, self.seq, at, data));
    }
}

/// What a status event did to its call, as customers see it: `started`; `answered` then
/// `completed`; `failed` (final or not); `expired` (never dialled, due again).
pub(crate) fn status_events(
    s: &mut CallStream,
    e: &StatusEvent,
    change: &Change,
    at: DateTime<Utc>,
    out: &mut Vec<NewEvent>,
) {
    let attempt = e.attempt;
    match e.kind {
        EventKind::Started => s.push(
            out,
            EventType::CallStarted,
            at,
            json!({"attempt": attempt, "started_at": e.started_at_ms.map(time)}),
        ),
        EventKind::Completed if change.status == CallStatus::Completed => {
            if let Some(answered) = e.answered_at_ms {
                s.push(out, EventType::CallAnswered, at, json!({"attempt": attempt, "answered_at": time(answered)}));
            }
            let mut data = ended(e, "answered");
            data["final"] = json!(true);
            s.push(out, EventType::CallCompleted, at, data);
        }
        EventKind::Expired if change.status == CallStatus::Pending => {
            let data =
                json!({"attempt": attempt, "reason": e.reason, "next_attempt_at": change.next_attempt_at_ms.map(time)});
            s.push(out, EventType::CallExpired, at, data);
        }
        _ => {
            let outcome = outcome_of(change.last_error.as_deref().or(e.reason.as_deref()));
            let mut data = ended(e, outcome);
            data["reason"] = json!(change.last_error.as_deref().or(e.reason.as_deref()));
            data["final"] = json!(change.status != CallStatus::Pending);
            data["next_attempt_at"] =
                json!(change.next_attempt_at_ms.filter(|_| change.status == CallStatus::Pending).map(time));
            s.push(out, EventType::CallFailed, at, data);
        }
    }
}

/// An attempt's end: its times, duration, the SIP answer behind it and what its media came
/// to (who answered, the key, the voicemail; absent without a media plan).
fn ended(e: &StatusEvent, outcome: &str) -> Value {
    let mut data = json!({
        "attempt": e.attempt,
        "outcome": outcome,
        "started_at": e.started_at_ms.map(time),
        "answered_at": e.answered_at_ms.map(time),
        "ended_at": time(e.at_ms),
        "duration_ms": e.duration_ms,
        "sip_code": e.sip.as_ref().and_then(|s| s.code),
        "sip_reason": e.sip.as_ref().map(|s| s.phrase.as_str()),
    });
    if let Some(m) = &e.media {
        data["answered_by"] = json!(m.answered_by);
        data["media"] = json!(m);
    }
    data
}

/// The outcome named by a reason, `cancelled` for a completion's cancellation, else `failed`.
fn outcome_of(reason: Option<&str>) -> &'static str {
    match reason {
        Some(CANCELLED) => "cancelled",
        Some(r) => Outcome::parse(r).map(Outcome::as_str).unwrap_or("failed"),
        None => "failed",
    }
}

/// A claim's calls: `queued` for the dialled ones, `skipped` for the others. Each claimed call's
/// `event_seq` is already its new last number (the claim advanced it).
pub(crate) fn claimed(
    campaign: Uuid,
    dial: &[ClaimedCall],
    skipped: &[(ClaimedCall, &str)],
    at: DateTime<Utc>,
) -> Vec<NewEvent> {
    let mut out = Vec::with_capacity(dial.len() + skipped.len());
    let stream = |c: &ClaimedCall| CallStream {
        campaign,
        call: c.id,
        phone_number: c.phone_number.clone(),
        seq: c.event_seq - 1,
    };
    for c in dial {
        stream(c).push(&mut out, EventType::CallQueued, at, json!({"attempt": c.attempt, "queued_at": at}));
    }
    for (c, reason) in skipped {
        stream(c).push(&mut out, EventType::CallSkipped, at, json!({"reason": reason, "final": true}));
    }
    out
}

/// Calls a completion cancelled (they were waiting, never placed again): `failed`, final.
pub(crate) fn cancelled(mut s: CallStream, attempt: u32, at: DateTime<Utc>, out: &mut Vec<NewEvent>) {
    s.seq -= 1;
    s.push(
        out,
        EventType::CallFailed,
        at,
        json!({"attempt": attempt, "outcome": "cancelled", "reason": CANCELLED, "final": true}),
    );
}

/// A campaign's status change (`action`: start, pause, complete); `seq` is the campaign's new
/// last number, and a completion logs `campaign.completed` with the final stats after it.
pub(crate) fn campaign_changed(
    campaign: Uuid,
    seq: u32,
    action: &str,
    status: &str,
    detail: Value,
    stats: Option<Value>,
    at: DateTime<Utc>,
) -> Vec<NewEvent> {
    let first = seq - u32::from(stats.is_some());
    let mut out = vec![NewEvent::new(
        EventType::CampaignStatusChanged,
        campaign,
        campaign,
        first,
        at,
        json!({"action": action, "status": status, "detail": detail}),
    )];
    if let Some(stats) = stats {
        out.push(NewEvent::new(
            EventType::CampaignCompleted,
            campaign,
            campaign,
            seq,
            at,
            json!({"detail": detail, "stats": stats}),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use dialer_domain::messages::SCHEMA_VERSION;

    use super::*;

    fn ev(kind: EventKind, reason: Option<&str>) -> StatusEvent {
        StatusEvent {
            media: None,
            v: SCHEMA_VERSION,
            call_id: Uuid::from_u128(2),
            attempt: 1,
            campaign_id: Uuid::from_u128(1),
            kind,
            at_ms: 10_000,
            started_at_ms: Some(5_000),
            answered_at_ms: (kind == EventKind::Completed).then_some(6_000),
            duration_ms: Some(4_000),
            reason: reason.map(str::to_string),
            retryable: None,
            shard: 0,
            dispatch_latency_us: None,
            sip: None,
        }
    }

    fn change(status: CallStatus, next: Option<u64>, err: Option<&str>) -> Change {
        Change {
            status,
            attempt_count: 1,
            next_attempt_at_ms: next,
            retry_delay_ms: None,
            last_error: err.map(str::to_string),
            dead_letter: None,
        }
    }

    fn body(e: &NewEvent) -> Value {
        serde_json::from_str(&e.body()).expect("JSON")
    }

    #[test]
    fn an_answered_call_logs_answered_then_completed_numbered_on() {
        let mut s = CallStream {
            campaign: Uuid::from_u128(1),
            call: Uuid::from_u128(2),
            phone_number: "+15551230000".into(),
            seq: 2,
        };
        let mut out = vec![];
        status_events(
            &mut s,
            &ev(EventKind::Completed, None),
            &change(CallStatus::Completed, None, None),
            Utc::now(),
            &mut out,
        );
        let kinds: Vec<_> = out.iter().map(|e| (e.kind, e.stream_seq)).collect();
        assert_eq!(kinds, vec![(EventType::CallAnswered, 3), (EventType::CallCompleted, 4)]);
        assert_eq!(s.seq, 4);
        let b = body(&out[1]);
        assert_eq!((b["data"]["outcome"].as_str(), b["data"]["duration_ms"].as_u64()), (Some("answered"), Some(4000)));
        assert_eq!(b["data"]["phone_number"], "+15551230000");
        assert!(b["data"].get("answered_by").is_none(), "no media plan, no media");
        let mut with_media = ev(EventKind::Completed, None);
        with_media.media = Some(Box::new(dialer_domain::media::MediaResult {
            answered_by: Some(dialer_domain::media::AnsweredBy::Human),
            dtmf: Some("9".into()),
            opted_out: true,
            ..Default::default()
        }));
        let mut out = vec![];
        status_events(&mut s, &with_media, &change(CallStatus::Completed, None, None), Utc::now(), &mut out);
        let d = &body(&out[1])["data"];
        assert_eq!(
            (d["answered_by"].as_str(), d["media"]["dtmf"].as_str(), d["media"]["opted_out"].as_bool()),
            (Some("human"), Some("9"), Some(true))
        );
    }

    #[test]
    fn a_failure_says_whether_it_is_final_and_when_the_retry_is() {
        let mut s =
            CallStream { campaign: Uuid::from_u128(1), call: Uuid::from_u128(2), phone_number: "+1".into(), seq: 0 };
        let mut out = vec![];
        let retry = change(CallStatus::Pending, Some(60_000), Some("busy"));
        status_events(&mut s, &ev(EventKind::Failed, Some("busy")), &retry, Utc::now(), &mut out);
        let last = change(CallStatus::Failed, None, Some("no_answer"));
        status_events(&mut s, &ev(EventKind::Failed, Some("no_answer")), &last, Utc::now(), &mut out);
        let (a, b) = (body(&out[0]), body(&out[1]));
        assert_eq!(
            (a["type"].as_str(), a["data"]["final"].as_bool(), a["data"]["outcome"].as_str()),
            (Some("call.failed"), Some(false), Some("busy"))
        );
        assert_eq!(a["data"]["next_attempt_at"], time(60_000));
        assert_eq!((b["data"]["final"].as_bool(), b["sequence"].as_u64()), (Some(true), Some(2)));
        let cancelled = change(CallStatus::Failed, None, Some(CANCELLED));
        status_events(&mut s, &ev(EventKind::Expired, Some("deadline")), &cancelled, Utc::now(), &mut out);
        assert_eq!(body(&out[2])["data"]["outcome"], "cancelled", "an expiry in a completed campaign ends the call");
    }

    #[test]
    fn a_claim_logs_queued_and_skipped_with_the_claims_numbers() {
        let c = |id: u128, seq| ClaimedCall {
            id: Uuid::from_u128(id),
            phone_number: "+1".into(),
            attempt: 2,
            zone: String::new(),
            event_seq: seq,
            deadline: Utc::now(),
        };
        let out = claimed(Uuid::from_u128(1), &[c(5, 4)], &[(c(6, 1), "dnc")], Utc::now());
        assert_eq!((out[0].kind, out[0].stream_seq, out[0].stream_id), (EventType::CallQueued, 4, Uuid::from_u128(5)));
        assert_eq!((out[1].kind, out[1].stream_seq), (EventType::CallSkipped, 1));
        assert_eq!(body(&out[1])["data"]["reason"], "dnc");
    }

    #[test]
    fn a_completion_logs_the_status_then_the_final_stats() {
        let out = campaign_changed(
            Uuid::from_u128(1),
            5,
            "complete",
            "completed",
            json!({}),
            Some(json!({"total_calls": 3})),
            Utc::now(),
        );
        assert_eq!(
            out.iter().map(|e| (e.kind, e.stream_seq)).collect::<Vec<_>>(),
            vec![(EventType::CampaignStatusChanged, 4), (EventType::CampaignCompleted, 5)]
        );
        assert_eq!(body(&out[1])["data"]["stats"]["total_calls"], 3);
    }
}
