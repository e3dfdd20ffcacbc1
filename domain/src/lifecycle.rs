//! How a status event moves a call, pure: the recorder reads the calls of a batch, asks this
//! module what each event does, and writes the answers back in batched statements.
//!
//! Only the event of a call's *current* attempt counts; anything else (a redelivered or late
//! event of an earlier attempt, a second outcome of the same attempt) changes nothing, so the
//! recorder is idempotent by (call id, attempt).

use std::time::Duration;

use crate::campaign::CallStatus;
use crate::messages::{EventKind, StatusEvent};
use crate::retry::RetryPolicy;

/// What the recorder knows of a call before the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallState {
    pub status: CallStatus,
    pub attempt_count: u32,
    /// The delay before the current attempt, if it was a retry (drives decorrelated jitter).
    pub retry_delay_ms: Option<u64>,
}

/// The change an event makes.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub status: CallStatus,
    pub attempt_count: u32,
    /// When the next attempt may start (retries and expired attempts).
    pub next_attempt_at_ms: Option<u64>,
    pub retry_delay_ms: Option<u64>,
    pub last_error: Option<String>,
    /// The attempt failed for good: report it to the dead-letter topic with this reason.
    pub dead_letter: Option<String>,
}

/// Applies `e` to a call in `state` under `policy` at `now_ms`; `u` is a uniform sample in
/// `[0, 1)` for the backoff jitter. `None` = the event changes nothing.
pub fn apply(state: &CallState, e: &StatusEvent, policy: &RetryPolicy, now_ms: u64, u: f64) -> Option<Change> {
    if e.attempt != state.attempt_count {
        return None;
    }
    let keep = |status| Change {
        status,
        attempt_count: state.attempt_count,
        next_attempt_at_ms: None,
        retry_delay_ms: state.retry_delay_ms,
        last_error: None,
        dead_letter: None,
    };
    let live = matches!(state.status, CallStatus::Queued | CallStatus::InProgress);
    match e.kind {
        EventKind::Started if state.status == CallStatus::Queued => Some(keep(CallStatus::InProgress)),
        EventKind::Completed if live => Some(keep(CallStatus::Completed)),
        EventKind::Failed if live => {
            let reason = e.reason.clone().unwrap_or_else(|| "failed".into());
            let retryable = e.retryable.unwrap_or(false) && policy.retries(&reason);
            if policy.should_retry(e.attempt, retryable) {
                let delay = policy.next_delay(state.retry_delay_ms.map(Duration::from_millis), u);
                // The far end's Retry-After (a 503's) is honoured: the retry waits at least that.
                let retry_after = e.sip.as_ref().and_then(|s| s.retry_after_ms).unwrap_or(0);
                let ms = (delay.as_millis() as u64).max(retry_after);
                Some(Change {
                    status: CallStatus::Pending,
                    attempt_count: state.attempt_count,
                    next_attempt_at_ms: Some(now_ms + ms),
                    retry_delay_ms: Some(ms),
                    last_error: Some(reason),
                    dead_letter: None,
                })
            } else {
                let why = if retryable {
                    format!("{reason} (attempt {} of {}: no attempts left)", e.attempt, policy.max_attempts)
                } else {
                    format!("{reason} (not retryable)")
                };
                Some(Change { last_error: Some(reason), dead_letter: Some(why), ..keep(CallStatus::Failed) })
            }
        }
        // Never dialed: the attempt is given back and the call is due again at once.
        EventKind::Expired if state.status == CallStatus::Queued => Some(Change {
            status: CallStatus::Pending,
            attempt_count: state.attempt_count.saturating_sub(1),
            next_attempt_at_ms: Some(now_ms),
            retry_delay_ms: state.retry_delay_ms,
            last_error: e.reason.clone(),
            dead_letter: None,
        }),
        _ => None,
    }
}

/// The reason code of an attempt whose outcome nobody can report (the data plane died with it,
/// or its events were lost): the campaign's retry policy decides, as for any retryable failure.
pub const UNKNOWN_OUTCOME: &str = "unknown_outcome";

/// An attempt left queued or in progress that nothing will report on any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Abandoned {
    pub campaign_id: uuid::Uuid,
    pub call_id: uuid::Uuid,
    pub attempt: u32,
    /// Whether it may have been dialled. `false` only where that is known (the embedded mode's
    /// own journal says it never started): the attempt is then given back, as an expired one.
    pub may_have_dialled: bool,
}

/// The event the control plane records for an abandoned attempt at `now_ms`: `expired` (given
/// back, due at once) when it was certainly never dialled, else a retryable `failed` with reason
/// [`UNKNOWN_OUTCOME`]. The attempt number is then used up, so a late event of it changes
/// nothing ([`apply`] ignores events of an attempt that is not the call's live one).
pub fn abandoned_event(a: &Abandoned, now_ms: u64) -> StatusEvent {
    let (kind, reason) = if a.may_have_dialled {
        (EventKind::Failed, UNKNOWN_OUTCOME)
    } else {
        (EventKind::Expired, "never dialled before the dialer stopped")
    };
    StatusEvent {
        media: None,
        v: crate::messages::SCHEMA_VERSION,
        call_id: a.call_id,
        attempt: a.attempt,
        campaign_id: a.campaign_id,
        kind,
        at_ms: now_ms,
        started_at_ms: None,
        answered_at_ms: None,
        duration_ms: None,
        reason: Some(reason.into()),
        retryable: Some(true),
        shard: u16::MAX,
        dispatch_latency_us: None,
        sip: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn ev(kind: EventKind, attempt: u32) -> StatusEvent {
        StatusEvent {
            media: None,
            v: 1,
            call_id: Uuid::from_u128(1),
            attempt,
            campaign_id: Uuid::from_u128(2),
            kind,
            at_ms: 1000,
            started_at_ms: None,
            answered_at_ms: None,
            duration_ms: None,
            reason: Some("busy".into()),
            retryable: Some(true),
            shard: 0,
            dispatch_latency_us: None,
            sip: None,
        }
    }

    fn st(status: CallStatus, attempt_count: u32) -> CallState {
        CallState { status, attempt_count, retry_delay_ms: None }
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(30),
            jitter: 0.0,
            retry_on: crate::outcome::OutcomeSet::DEFAULT_RETRY_ON,
        }
    }

    #[test]
    fn happy_path() {
        let p = policy();
        let c = apply(&st(CallStatus::Queued, 1), &ev(EventKind::Started, 1), &p, 0, 0.5).expect("started");
        assert_eq!(c.status, CallStatus::InProgress);
        let c = apply(&st(CallStatus::InProgress, 1), &ev(EventKind::Completed, 1), &p, 0, 0.5).expect("completed");
        assert_eq!(c.status, CallStatus::Completed);
    }

    #[test]
    fn retryable_failures_back_off_until_attempts_run_out() {
        let p = policy();
        let c = apply(&st(CallStatus::InProgress, 1), &ev(EventKind::Failed, 1), &p, 10_000, 0.5).expect("retry");
        assert_eq!((c.status, c.next_attempt_at_ms, c.retry_delay_ms), (CallStatus::Pending, Some(12_000), Some(2000)));
        let prev = CallState { status: CallStatus::InProgress, attempt_count: 2, retry_delay_ms: Some(2000) };
        let c = apply(&prev, &ev(EventKind::Failed, 2), &p, 10_000, 0.5).expect("retry");
        assert_eq!(c.retry_delay_ms, Some(6000), "×3 without jitter");
        let c = apply(&st(CallStatus::InProgress, 3), &ev(EventKind::Failed, 3), &p, 0, 0.5).expect("final");
        assert_eq!(c.status, CallStatus::Failed);
        assert!(c.dead_letter.expect("dead letter").contains("no attempts left"));
    }

    #[test]
    fn the_campaign_says_which_outcomes_are_retried() {
        let mut p = policy();
        p.retry_on = crate::outcome::OutcomeSet::parse(&["no_answer"]).expect("names");
        let busy = ev(EventKind::Failed, 1);
        let c = apply(&st(CallStatus::InProgress, 1), &busy, &p, 0, 0.5).expect("final");
        assert_eq!(c.status, CallStatus::Failed, "busy is not in retry_on");
        let mut no_answer = ev(EventKind::Failed, 1);
        no_answer.reason = Some("no_answer".into());
        let c = apply(&st(CallStatus::InProgress, 1), &no_answer, &p, 0, 0.5).expect("retry");
        assert_eq!(c.status, CallStatus::Pending);
        no_answer.retryable = Some(false);
        let c = apply(&st(CallStatus::InProgress, 1), &no_answer, &p, 0, 0.5).expect("final");
        assert_eq!(c.status, CallStatus::Failed, "a failure the provider calls final stays final");
    }

    #[test]
    fn a_far_ends_retry_after_is_honoured() {
        let mut e = ev(EventKind::Failed, 1);
        e.reason = Some("failed".into());
        e.sip = Some(Box::new(crate::messages::SipDetail {
            code: Some(503),
            phrase: "Service Unavailable".into(),
            retry_after_ms: Some(120_000),
        }));
        let c = apply(&st(CallStatus::InProgress, 1), &e, &policy(), 10_000, 0.5).expect("retry");
        assert_eq!(c.next_attempt_at_ms, Some(130_000), "Retry-After 120 s beats the 2 s backoff");
        e.sip.as_mut().expect("sip").retry_after_ms = Some(1);
        let c = apply(&st(CallStatus::InProgress, 1), &e, &policy(), 10_000, 0.5).expect("retry");
        assert_eq!(c.next_attempt_at_ms, Some(12_000), "a shorter Retry-After does not hurry the backoff");
    }

    #[test]
    fn non_retryable_failure_is_final() {
        let mut e = ev(EventKind::Failed, 1);
        e.retryable = Some(false);
        e.reason = Some("invalid_number".into());
        let c = apply(&st(CallStatus::Queued, 1), &e, &policy(), 0, 0.5).expect("final");
        assert_eq!(c.status, CallStatus::Failed);
        assert_eq!(c.dead_letter.as_deref(), Some("invalid_number (not retryable)"));
    }

    #[test]
    fn redelivered_and_stale_events_change_nothing() {
        let p = policy();
        assert_eq!(apply(&st(CallStatus::Completed, 1), &ev(EventKind::Completed, 1), &p, 0, 0.5), None);
        assert_eq!(apply(&st(CallStatus::InProgress, 1), &ev(EventKind::Started, 1), &p, 0, 0.5), None);
        assert_eq!(apply(&st(CallStatus::Queued, 2), &ev(EventKind::Failed, 1), &p, 0, 0.5), None, "older attempt");
        assert_eq!(
            apply(&st(CallStatus::Pending, 1), &ev(EventKind::Failed, 1), &p, 0, 0.5),
            None,
            "already rescheduled"
        );
    }

    #[test]
    fn an_abandoned_attempt_that_may_have_been_dialled_uses_up_its_attempt_and_ignores_late_events() {
        let p = policy();
        let a = Abandoned {
            campaign_id: Uuid::from_u128(2),
            call_id: Uuid::from_u128(1),
            attempt: 1,
            may_have_dialled: true,
        };
        let e = abandoned_event(&a, 10_000);
        assert_eq!((e.kind, e.reason.as_deref(), e.retryable), (EventKind::Failed, Some(UNKNOWN_OUTCOME), Some(true)));
        let c = apply(&st(CallStatus::InProgress, 1), &e, &p, 10_000, 0.5).expect("resolved");
        assert_eq!((c.status, c.attempt_count), (CallStatus::Pending, 1), "retried; the attempt stays counted");
        // The real outcome arrives late: the call is pending again, or on its next attempt.
        assert_eq!(apply(&st(CallStatus::Pending, 1), &ev(EventKind::Completed, 1), &p, 0, 0.5), None);
        assert_eq!(apply(&st(CallStatus::Queued, 2), &ev(EventKind::Completed, 1), &p, 0, 0.5), None);
        // Attempts used up: failed for good, with a dead letter.
        let last = abandoned_event(&Abandoned { attempt: 3, ..a }, 0);
        let c = apply(&st(CallStatus::Queued, 3), &last, &p, 0, 0.5).expect("final");
        assert_eq!(c.status, CallStatus::Failed);
        assert!(c.dead_letter.expect("dead letter").starts_with(UNKNOWN_OUTCOME));
    }

    #[test]
    fn an_abandoned_attempt_never_dialled_is_given_back() {
        let a = Abandoned {
            campaign_id: Uuid::from_u128(2),
            call_id: Uuid::from_u128(1),
            attempt: 2,
            may_have_dialled: false,
        };
        let e = abandoned_event(&a, 7);
        let c = apply(&st(CallStatus::Queued, 2), &e, &policy(), 7, 0.5).expect("given back");
        assert_eq!((c.status, c.attempt_count, c.next_attempt_at_ms), (CallStatus::Pending, 1, Some(7)));
    }

    #[test]
    fn expired_attempt_is_given_back() {
        let c = apply(&st(CallStatus::Queued, 2), &ev(EventKind::Expired, 2), &policy(), 5, 0.5).expect("expired");
        assert_eq!((c.status, c.attempt_count, c.next_attempt_at_ms), (CallStatus::Pending, 1, Some(5)));
        assert_eq!(apply(&st(CallStatus::InProgress, 2), &ev(EventKind::Expired, 2), &policy(), 5, 0.5), None);
    }
}
