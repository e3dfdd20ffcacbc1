//! What the console shows of media on answered calls: a campaign's panel (who answered,
//! voicemail, opt-outs, the abandoned share against its 3 % limit) and one line per attempt.
//! Pure: the pages hand in the API's views.

use dialer_api::views::MediaStats;
use dialer_domain::media::MediaResult;

/// The abandoned share above which a campaign breaks 47 CFR 64.1200(a)(7).
const ABANDONED_LIMIT: f64 = 0.03;

/// A campaign's media figures, for its page.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaPanel {
    pub human: i64,
    pub machine: i64,
    pub unknown: i64,
    pub voicemail_left: i64,
    pub opted_out: i64,
    pub abandoned: i64,
    /// Abandoned calls per call a person answered, in percent with one decimal.
    pub abandoned_pct: String,
    pub over_limit: bool,
}

/// The panel, once an answered call's media has been recorded (`None` before, or without
/// media).
pub fn panel(m: &MediaStats) -> Option<MediaPanel> {
    let answered = m.answered_human + m.answered_machine + m.answered_unknown;
    (answered > 0).then(|| MediaPanel {
        human: m.answered_human,
        machine: m.answered_machine,
        unknown: m.answered_unknown,
        voicemail_left: m.voicemail_left,
        opted_out: m.opted_out,
        abandoned: m.abandoned,
        abandoned_pct: format!("{:.1}", 100.0 * m.abandoned_share()),
        over_limit: m.abandoned_share() > ABANDONED_LIMIT,
    })
}

fn seconds(ms: u32) -> String {
    format!("{:.1} s", f64::from(ms) / 1000.0)
}

/// One attempt's media in words ("" without media), e.g. `answered by a human (human, decided
/// at 1.6 s) · message at 1.6 s · key 9: opted out`.
pub fn line(r: Option<&MediaResult>) -> String {
    let Some(r) = r else { return String::new() };
    let mut parts = Vec::new();
    if let Some(by) = r.answered_by {
        let how = match (&r.amd_reason, r.amd_ms) {
            (Some(reason), Some(ms)) => format!(" ({reason}, decided at {})", seconds(ms)),
            _ => String::new(),
        };
        parts.push(format!("answered by: {}{how}", by.as_str()));
    }
    if let Some(ms) = r.message_started_ms {
        parts.push(format!("message at {}", seconds(ms)));
    }
    if r.voicemail_left {
        let after = r.voicemail_after.as_deref().map(|a| format!(" after the {a}")).unwrap_or_default();
        parts.push(format!("voicemail left{after}"));
    }
    match (&r.dtmf, r.opted_out) {
        (Some(k), true) => parts.push(format!("key {k}: opted out")),
        (Some(k), false) => parts.push(format!("key {k}")),
        (None, _) => {}
    }
    if r.abandoned {
        parts.push("abandoned (no message within 2 s of the greeting)".into());
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialer_domain::media::AnsweredBy;

    #[test]
    fn the_panel_waits_for_an_answer_and_flags_a_share_over_three_percent() {
        assert_eq!(panel(&MediaStats::default()), None);
        let m = MediaStats { answered_human: 90, answered_machine: 10, abandoned: 3, ..MediaStats::default() };
        let p = panel(&m).expect("answered calls");
        assert_eq!((p.abandoned_pct.as_str(), p.over_limit), ("3.3", true));
        let m = MediaStats { answered_human: 100, abandoned: 3, ..MediaStats::default() };
        assert_eq!(panel(&m).map(|p| (p.abandoned_pct, p.over_limit)), Some(("3.0".into(), false)));
    }

    #[test]
    fn an_attempt_reads_as_who_answered_what_played_and_what_was_pressed() {
        assert_eq!(line(None), "");
        let person = MediaResult {
            answered_by: Some(AnsweredBy::Human),
            amd_reason: Some("human".into()),
            amd_ms: Some(1600),
            message_started_ms: Some(1620),
            dtmf: Some("9".into()),
            opted_out: true,
            ..MediaResult::default()
        };
        assert_eq!(
            line(Some(&person)),
            "answered by: human (human, decided at 1.6 s) · message at 1.6 s · key 9: opted out"
        );
        let machine = MediaResult {
            answered_by: Some(AnsweredBy::Machine),
            voicemail_left: true,
            voicemail_after: Some("beep".into()),
            ..MediaResult::default()
        };
        assert_eq!(line(Some(&machine)), "answered by: machine · voicemail left after the beep");
        let abandoned = MediaResult { answered_by: Some(AnsweredBy::Human), abandoned: true, ..MediaResult::default() };
        assert!(line(Some(&abandoned)).ends_with("abandoned (no message within 2 s of the greeting)"));
    }
}
