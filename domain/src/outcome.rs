//! The outcome taxonomy of an attempt, and how a SIP final response maps onto it (pure).
//!
//! Every provider reports one of these outcomes; the mock draws them, the SIP provider derives
//! them from the far end's final response with [`classify_sip`]. The reason string of a failed
//! event is the outcome's name, so stats, metrics and `retry_on` speak one vocabulary.

use std::time::Duration;

/// How an attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Answered; the call ended normally.
    Answered,
    /// The called party was busy (486, 600).
    Busy,
    /// Nobody answered (480, 408 after ringing, our CANCEL after the ring timeout).
    NoAnswer,
    /// The called party declined (603, other 6xx).
    Rejected,
    /// The number does not exist or cannot be reached as dialled (404, 410, 484, 485, 604).
    InvalidNumber,
    /// The carrier or the network failed (5xx, no response, refused by the trunk).
    Failed,
    /// Nobody can tell how the attempt ended (the dialer died with it up).
    UnknownOutcome,
}

impl Outcome {
    pub const ALL: [Outcome; 7] = [
        Outcome::Answered,
        Outcome::Busy,
        Outcome::NoAnswer,
        Outcome::Rejected,
        Outcome::InvalidNumber,
        Outcome::Failed,
        Outcome::UnknownOutcome,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Answered => "answered",
            Outcome::Busy => "busy",
            Outcome::NoAnswer => "no_answer",
            Outcome::Rejected => "rejected",
            Outcome::InvalidNumber => "invalid_number",
            Outcome::Failed => "failed",
            Outcome::UnknownOutcome => "unknown_outcome",
        }
    }

    /// The outcome named `s` (as [`Outcome::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// The outcomes of a failed attempt: every one but `answered`, in taxonomy order.
    pub fn failures() -> &'static [Outcome] {
        &Outcome::ALL[1..]
    }
}

/// A set of outcomes (a campaign's `retry_on`), as bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OutcomeSet(u8);

impl OutcomeSet {
    /// What a campaign retries unless told otherwise: busy, no_answer, failed, unknown_outcome.
    pub const DEFAULT_RETRY_ON: OutcomeSet = OutcomeSet(
        1 << Outcome::Busy as u8
            | 1 << Outcome::NoAnswer as u8
            | 1 << Outcome::Failed as u8
            | 1 << Outcome::UnknownOutcome as u8,
    );
    pub const EMPTY: OutcomeSet = OutcomeSet(0);

    pub fn contains(self, o: Outcome) -> bool {
        self.0 & (1 << o as u8) != 0
    }

    pub fn with(self, o: Outcome) -> OutcomeSet {
        OutcomeSet(self.0 | 1 << o as u8)
    }

    /// The outcomes' names, in taxonomy order.
    pub fn names(self) -> Vec<&'static str> {
        Outcome::ALL.into_iter().filter(|o| self.contains(*o)).map(Outcome::as_str).collect()
    }

    /// Parses names; `Err(i)` names the first one that is not an outcome a retry can follow.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<OutcomeSet, usize> {
        names.iter().enumerate().try_fold(OutcomeSet::EMPTY, |set, (i, n)| match Outcome::parse(n.as_ref().trim()) {
            Some(o) if o != Outcome::Answered => Ok(set.with(o)),
            _ => Err(i),
        })
    }

    /// Comma-separated names (how the store keeps it).
    pub fn to_csv(self) -> String {
        self.names().join(",")
    }

    /// Reads [`OutcomeSet::to_csv`]; unknown names are skipped (a newer build's outcomes).
    pub fn from_csv(s: &str) -> OutcomeSet {
        s.split(',').filter_map(|n| Outcome::parse(n.trim())).fold(OutcomeSet::EMPTY, OutcomeSet::with)
    }
}

impl Default for OutcomeSet {
    fn default() -> Self {
        OutcomeSet::DEFAULT_RETRY_ON
    }
}

/// What the UAC knew when the final response came.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SipContext {
    /// A provisional response (1xx) had come before it.
    pub provisional: bool,
    /// We had sent a CANCEL (ring timeout).
    pub cancelled: bool,
    /// We had already answered a challenge with credentials.
    pub authenticated: bool,
}

/// What a final response means for the attempt, the number and the trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SipVerdict {
    /// A 2xx: the call is up.
    Answered,
    /// Answer the 401/407 challenge with credentials (new CSeq, same Call-ID and From tag).
    Authenticate,
    /// The attempt ended with `outcome`.
    Ended {
        outcome: Outcome,
        /// The attempt may be retried (the campaign's `retry_on` still decides).
        retryable: bool,
        /// The trunk is at fault (credentials, codecs, refusal): take it out of rotation; the
        /// lead is not to blame.
        trunk_fault: bool,
        /// The far end's `Retry-After`, to honour before the next attempt.
        retry_after: Option<Duration>,
    },
}

/// Maps a final response `code` (None: no final response at all, Timer B) to a verdict.
pub fn classify_sip(code: Option<u16>, ctx: SipContext, retry_after: Option<Duration>) -> SipVerdict {
    let ended = |outcome, retryable, trunk_fault| SipVerdict::Ended { outcome, retryable, trunk_fault, retry_after };
    let Some(code) = code else {
        return if ctx.cancelled { ended(Outcome::NoAnswer, true, false) } else { ended(Outcome::Failed, true, false) };
    };
    match code {
        200..=299 => SipVerdict::Answered,
        401 | 407 if !ctx.authenticated => SipVerdict::Authenticate,
        401 | 403 | 407 | 488 | 606 => ended(Outcome::Failed, false, true),
        486 | 600 => ended(Outcome::Busy, true, false),
        480 => ended(Outcome::NoAnswer, true, false),
        408 if ctx.provisional || ctx.cancelled => ended(Outcome::NoAnswer, true, false),
        487 if ctx.cancelled => ended(Outcome::NoAnswer, true, false),
        603 => ended(Outcome::Rejected, false, false),
        404 | 410 | 484 | 485 | 604 => ended(Outcome::InvalidNumber, false, false),
        408 | 487 | 500..=599 => ended(Outcome::Failed, true, false),
        600..=699 => ended(Outcome::Rejected, false, false),
        // Other 3xx-4xx: the request itself was refused; another attempt would be refused too.
        _ => ended(Outcome::Failed, false, false),
    }
}

/// Parses a `Retry-After` header value (seconds, optionally followed by a comment or params).
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let digits: &str = v.trim().split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ended(code: Option<u16>, ctx: SipContext) -> (Outcome, bool, bool) {
        match classify_sip(code, ctx, None) {
            SipVerdict::Ended { outcome, retryable, trunk_fault, .. } => (outcome, retryable, trunk_fault),
            v => panic!("{code:?} gave {v:?}"),
        }
    }

    #[test]
    fn maps_the_codes_the_issue_lists() {
        let plain = SipContext::default();
        let rang = SipContext { provisional: true, ..plain };
        let cancelled = SipContext { provisional: true, cancelled: true, ..plain };
        let authed = SipContext { authenticated: true, ..plain };
        assert_eq!(classify_sip(Some(200), plain, None), SipVerdict::Answered);
        assert_eq!(classify_sip(Some(401), plain, None), SipVerdict::Authenticate);
        assert_eq!(classify_sip(Some(407), plain, None), SipVerdict::Authenticate);
        for c in [486, 600] {
            assert_eq!(ended(Some(c), plain), (Outcome::Busy, true, false), "{c}");
        }
        assert_eq!(ended(Some(480), plain), (Outcome::NoAnswer, true, false));
        assert_eq!(ended(Some(408), rang), (Outcome::NoAnswer, true, false));
        assert_eq!(ended(Some(487), cancelled), (Outcome::NoAnswer, true, false));
        assert_eq!(ended(None, cancelled), (Outcome::NoAnswer, true, false), "CANCEL never answered");
        assert_eq!(ended(Some(603), plain), (Outcome::Rejected, false, false));
        for c in [404, 410, 484, 485, 604] {
            assert_eq!(ended(Some(c), plain), (Outcome::InvalidNumber, false, false), "{c}");
        }
        for c in [401, 407] {
            assert_eq!(ended(Some(c), authed), (Outcome::Failed, false, true), "{c} after one try");
        }
        for c in [403, 488, 606] {
            assert_eq!(ended(Some(c), plain), (Outcome::Failed, false, true), "{c}");
        }
        for c in [500, 502, 503, 504] {
            assert_eq!(ended(Some(c), plain), (Outcome::Failed, true, false), "{c}");
        }
        assert_eq!(ended(None, plain), (Outcome::Failed, true, false), "Timer B");
        assert_eq!(ended(Some(408), plain), (Outcome::Failed, true, false), "408 before any ringing");
        assert_eq!(ended(Some(487), plain), (Outcome::Failed, true, false), "487 we did not ask for");
        assert_eq!(ended(Some(415), plain), (Outcome::Failed, false, false));
    }

    #[test]
    fn keeps_retry_after() {
        let v = classify_sip(Some(503), SipContext::default(), parse_retry_after(" 120 ;duration=3600"));
        assert!(matches!(v, SipVerdict::Ended { retry_after: Some(d), .. } if d == Duration::from_secs(120)));
        assert_eq!(parse_retry_after("18000 (in a meeting)"), Some(Duration::from_secs(18000)));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn outcome_sets_parse_and_store() {
        let set = OutcomeSet::parse(&["busy", " no_answer"]).expect("names");
        assert!(set.contains(Outcome::Busy) && set.contains(Outcome::NoAnswer) && !set.contains(Outcome::Failed));
        assert_eq!(OutcomeSet::from_csv(&set.to_csv()), set);
        assert_eq!(OutcomeSet::parse(&["busy", "answered"]), Err(1), "an answered call is never retried");
        assert_eq!(OutcomeSet::parse(&["busy", "network_error"]), Err(1));
        assert_eq!(OutcomeSet::default().names(), ["busy", "no_answer", "failed", "unknown_outcome"]);
        assert_eq!(OutcomeSet::from_csv(""), OutcomeSet::EMPTY);
    }

    #[test]
    fn names_round_trip_and_defaults() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(o));
        }
        assert_eq!(Outcome::parse("network_error"), None);
        assert!(!Outcome::failures().contains(&Outcome::Answered) && Outcome::failures().len() == 6);
    }
}
