//! What a batch of status events changes, decided without I/O: each event applied in arrival
//! order to its call's state under its campaign's retry policy ([`lifecycle::apply`]), with the
//! store's rules on top (a retry never before the abandoned attempt may still be up; a
//! completed campaign places no further attempt). Both SQL backends write what this decides.

use std::collections::{BTreeMap, HashMap, HashSet};

use dialer_domain::campaign::CallStatus;
use dialer_domain::lifecycle::{self, CallState, Change};
use dialer_domain::messages::{EventKind, StatusEvent};
use dialer_domain::outcome::Outcome;
use dialer_domain::retry::RetryPolicy;
use uuid::Uuid;

use crate::model::RecordReport;
use crate::outbox::{self, CallStream};
use dialer_domain::events::NewEvent;

/// Why a call of a completed campaign ends without its retry.
pub(crate) const CANCELLED: &str = "cancelled: the campaign was completed before this call was placed";

/// How one campaign's stats row moves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta {
    pub pending: i64,
    pub queued: i64,
    pub in_progress: i64,
    pub completed: i64,
    pub failed: i64,
    pub attempts: i64,
    pub retries: i64,
    /// Calls that ended failed, by their last outcome ([`Outcome::failures`] order); a failed
    /// call whose last error is none of them (cancelled by a completion, an old producer's
    /// reason) is counted in `failed` only.
    pub failed_by: [i64; 6],
    /// Answered attempts' media: human, machine, unknown, voicemail left, opted out, abandoned.
    pub media: [i64; 6],
}

/// What an outcome's media adds to the counts: answered by a person, a machine, unknown;
/// voicemail left; opted out; abandoned.
fn media_counts(m: &dialer_domain::media::MediaResult) -> [i64; 6] {
    use dialer_domain::media::AnsweredBy;
    let by = |who| i64::from(m.answered_by == Some(who));
    [
        by(AnsweredBy::Human),
        by(AnsweredBy::Machine),
        by(AnsweredBy::Unknown),
        i64::from(m.voicemail_left),
        i64::from(m.opted_out),
        i64::from(m.abandoned),
    ]
}

impl Delta {
    /// A call ended failed with `last_error`.
    fn failed_with(&mut self, last_error: Option<&str>) {
        let outcome = last_error.and_then(Outcome::parse);
        if let Some(i) = Outcome::failures().iter().position(|o| Some(*o) == outcome) {
            self.failed_by[i] += 1;
        }
    }

    /// A call moved from `from` to `to`.
    fn moved(&mut self, from: CallStatus, to: CallStatus) {
        for (status, sign) in [(from, -1), (to, 1)] {
            match status {
                CallStatus::Pending => self.pending += sign,
                CallStatus::Queued => self.queued += sign,
                CallStatus::InProgress => self.in_progress += sign,
                CallStatus::Completed => self.completed += sign,
                CallStatus::Failed => self.failed += sign,
                // Only a claim skips a call (`store/rules.rs`); no event moves one.
                CallStatus::Skipped => {}
            }
        }
    }
}

/// An attempt's timeline row: its campaign, the event that says most about it, its outcome.
pub(crate) type TimelineEntry<'a> = (Uuid, &'a StatusEvent, &'static str);

/// What a batch changes.
#[derive(Debug, Default)]
pub(crate) struct Decided<'a> {
    pub report: RecordReport,
    /// The stats rows, ordered by campaign id: two recorders lock them in one order.
    pub deltas: BTreeMap<Uuid, Delta>,
    /// Each changed call's campaign and new state.
    pub changed: HashMap<Uuid, (Uuid, Change)>,
    /// One row per attempt: its outcome event wins over its `started` event.
    pub timeline: HashMap<(Uuid, u32), TimelineEntry<'a>>,
    /// The events customers see, and each changed call's last event number.
    pub events: Vec<NewEvent>,
    pub event_seqs: HashMap<Uuid, u32>,
}

/// What the store knows before the batch: each call's campaign and state, each campaign's
/// policy, the completed campaigns.
#[derive(Debug, Default)]
pub(crate) struct Known {
    pub calls: HashMap<Uuid, (Uuid, CallState)>,
    pub policies: HashMap<Uuid, RetryPolicy>,
    pub completed: HashSet<Uuid>,
    /// Each call's number and last event number.
    pub streams: HashMap<Uuid, (String, u32)>,
}

/// Applies `events` in arrival order to `known.calls` (updated as they go); `samples` gives a
/// uniform sample per applied event for the backoff jitter.
pub(crate) fn decide<'a>(
    events: &'a [StatusEvent],
    known: &mut Known,
    now_ms: u64,
    retry_not_before_ms: u64,
    samples: &mut (dyn FnMut() -> f64 + Send),
) -> Decided<'a> {
    let mut d = Decided::default();
    for e in events {
        let Some((campaign, state)) = known.calls.get_mut(&e.call_id) else {
            d.report.unknown += 1;
            continue;
        };
        let policy = known.policies.get(campaign).copied().unwrap_or_default();
        let Some(mut change) = lifecycle::apply(state, e, &policy, now_ms, samples()) else {
            d.report.ignored += 1;
            continue;
        };
        store_rules(&mut change, e, known.completed.contains(campaign), retry_not_before_ms);
        d.report.applied += 1;
        let delta = d.deltas.entry(*campaign).or_default();
        delta.moved(state.status, change.status);
        if change.status == CallStatus::Failed {
            delta.failed_with(change.last_error.as_deref());
        }
        if let Some(m) = &e.media {
            for (i, n) in media_counts(m).into_iter().enumerate() {
                delta.media[i] += n;
                d.report.media[i] += n as u64;
            }
        }
        if change.attempt_count < state.attempt_count {
            delta.attempts -= 1;
            delta.retries -= i64::from(state.attempt_count > 1);
        }
        if change.status == CallStatus::Pending && change.next_attempt_at_ms.is_some() && e.kind == EventKind::Failed {
            d.report.retries_scheduled += 1;
        }
        if let Some(why) = &change.dead_letter {
            d.report.dead_letters.push((e.clone(), why.clone()));
        }
        note_timeline(&mut d.timeline, *campaign, e);
        if let Some((phone_number, seq)) = known.streams.get_mut(&e.call_id) {
            let mut s =
                CallStream { campaign: *campaign, call: e.call_id, phone_number: phone_number.clone(), seq: *seq };
            outbox::status_events(&mut s, e, &change, event_time(now_ms), &mut d.events);
            *seq = s.seq;
            d.event_seqs.insert(e.call_id, s.seq);
        }
        state.status = change.status;
        state.attempt_count = change.attempt_count;
        state.retry_delay_ms = change.retry_delay_ms;
        d.changed.insert(e.call_id, (*campaign, change));
    }
    d
}

fn event_time(ms: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms as i64).unwrap_or_default()
}

/// A retry never starts before the abandoned attempt may still be up; a completed campaign
/// places no further attempt.
fn store_rules(change: &mut Change, e: &StatusEvent, campaign_completed: bool, retry_not_before_ms: u64) {
    if change.status == CallStatus::Pending
        && e.kind == EventKind::Failed
        && let Some(at) = change.next_attempt_at_ms.as_mut()
    {
        *at = (*at).max(retry_not_before_ms);
    }
    if change.status == CallStatus::Pending && campaign_completed {
        change.status = CallStatus::Failed;
        change.next_attempt_at_ms = None;
        change.last_error = Some(CANCELLED.into());
    }
}

fn note_timeline<'a>(timeline: &mut HashMap<(Uuid, u32), TimelineEntry<'a>>, campaign: Uuid, e: &'a StatusEvent) {
    let outcome = match e.kind {
        EventKind::Started => "started",
        EventKind::Completed => "completed",
        EventKind::Failed => "failed",
        // An expired attempt was never dialled: no timeline row.
        EventKind::Expired => return,
    };
    let slot = timeline.entry((e.call_id, e.attempt)).or_insert((campaign, e, outcome));
    if e.kind != EventKind::Started {
        *slot = (campaign, e, outcome);
    }
}

#[cfg(test)]
mod tests {
    use dialer_domain::messages::SCHEMA_VERSION;

    use super::*;

    fn ev(call: u128, attempt: u32, kind: EventKind, retryable: bool) -> StatusEvent {
        StatusEvent {
            media: None,
            v: SCHEMA_VERSION,
            call_id: Uuid::from_u128(call),
            attempt,
            campaign_id: Uuid::from_u128(1),
            kind,
            at_ms: 10,
            started_at_ms: Some(5),
            answered_at_ms: None,
            duration_ms: Some(5),
            reason: (kind == EventKind::Failed).then(|| "busy".into()),
            retryable: Some(retryable),
            shard: 0,
            dispatch_latency_us: None,
            sip: None,
        }
    }

    fn known(calls: &[u128], completed: bool) -> Known {
        let campaign = Uuid::from_u128(1);
        let state = CallState { status: CallStatus::Queued, attempt_count: 1, retry_delay_ms: None };
        Known {
            calls: calls.iter().map(|c| (Uuid::from_u128(*c), (campaign, state.clone()))).collect(),
            policies: HashMap::from([(campaign, RetryPolicy { max_attempts: 3, ..RetryPolicy::default() })]),
            completed: if completed { HashSet::from([campaign]) } else { HashSet::new() },
            streams: calls.iter().map(|c| (Uuid::from_u128(*c), ("+15550000000".to_string(), 1))).collect(),
        }
    }

    #[test]
    fn a_batch_moves_each_call_once_per_event_and_the_stats_follow() {
        let events = [
            ev(1, 1, EventKind::Started, false),
            ev(1, 1, EventKind::Completed, false),
            ev(2, 1, EventKind::Failed, true),
            ev(9, 1, EventKind::Completed, false),
        ];
        let mut k = known(&[1, 2], false);
        let d = decide(&events, &mut k, 1_000, 50_000, &mut || 0.5);
        assert_eq!((d.report.applied, d.report.unknown, d.report.retries_scheduled), (3, 1, 1));
        let delta = &d.deltas[&Uuid::from_u128(1)];
        assert_eq!((delta.queued, delta.completed, delta.pending, delta.in_progress), (-2, 1, 1, 0));
        let (_, retry) = &d.changed[&Uuid::from_u128(2)];
        assert!(retry.next_attempt_at_ms.expect("a retry") >= 50_000, "not before the old attempt may be up");
        assert_eq!(d.timeline[&(Uuid::from_u128(1), 1)].2, "completed", "the outcome wins over the start");
        let logged: Vec<(u128, u32, &str)> =
            d.events.iter().map(|e| (e.stream_id.as_u128(), e.stream_seq, e.kind.as_str())).collect();
        assert_eq!(
            logged,
            vec![(1, 2, "call.started"), (1, 3, "call.completed"), (2, 2, "call.failed")],
            "applied events only, numbered after the call's last"
        );
        assert_eq!((d.event_seqs[&Uuid::from_u128(1)], d.event_seqs[&Uuid::from_u128(2)]), (3, 2));
    }

    #[test]
    fn a_completed_campaign_places_no_further_attempt() {
        let events = [ev(2, 1, EventKind::Failed, true)];
        let mut k = known(&[2], true);
        let d = decide(&events, &mut k, 1_000, 0, &mut || 0.5);
        let (_, c) = &d.changed[&Uuid::from_u128(2)];
        assert_eq!(
            (c.status, c.next_attempt_at_ms, c.last_error.as_deref()),
            (CallStatus::Failed, None, Some(CANCELLED))
        );
        assert_eq!(d.report.retries_scheduled, 0);
    }
}
