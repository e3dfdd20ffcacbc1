//! Campaign and call life cycles.

use serde::{Deserialize, Serialize};

/// Where a campaign is in its life cycle: `pending → in_progress ⇄ paused → completed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CampaignStatus {
    Pending,
    InProgress,
    Paused,
    Completed,
}

/// An operator's request to move a campaign.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CampaignAction {
    Start,
    Pause,
    Complete,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {action} a campaign that is {current}")]
pub struct TransitionError {
    pub action: &'static str,
    pub current: CampaignStatus,
}

impl CampaignStatus {
    pub const ALL: [CampaignStatus; 4] =
        [CampaignStatus::Pending, CampaignStatus::InProgress, CampaignStatus::Paused, CampaignStatus::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            CampaignStatus::Pending => "pending",
            CampaignStatus::InProgress => "in_progress",
            CampaignStatus::Paused => "paused",
            CampaignStatus::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<CampaignStatus> {
        CampaignStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The state `action` leads to from `self`. Start works from pending and paused (resume);
    /// pause only from in_progress; complete from any state but completed.
    pub fn apply(self, action: CampaignAction) -> Result<CampaignStatus, TransitionError> {
        use CampaignStatus::*;
        let next = match (action, self) {
            (CampaignAction::Start, Pending | Paused) => InProgress,
            (CampaignAction::Pause, InProgress) => Paused,
            (CampaignAction::Complete, Pending | InProgress | Paused) => Completed,
            _ => {
                return Err(TransitionError { action: action.as_str(), current: self });
            }
        };
        Ok(next)
    }

    /// The states from which `action` is allowed (for conditional updates in SQL).
    pub fn sources(action: CampaignAction) -> Vec<CampaignStatus> {
        CampaignStatus::ALL.into_iter().filter(|s| s.apply(action).is_ok()).collect()
    }
}

impl std::fmt::Display for CampaignStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CampaignAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignAction::Start => "start",
            CampaignAction::Pause => "pause",
            CampaignAction::Complete => "complete",
        }
    }
}

/// Where one call is: waiting to be dispatched (`pending`, also while a retry waits), handed to
/// the data plane (`queued`), being dialed (`in_progress`), or terminal (`completed`, `failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Pending,
    Queued,
    InProgress,
    Completed,
    Failed,
    /// Ended without a dial by the recipient's calling rules (`last_error` says why: `dnc`,
    /// `no_zone`).
    Skipped,
}

impl CallStatus {
    pub const ALL: [CallStatus; 6] = [
        CallStatus::Pending,
        CallStatus::Queued,
        CallStatus::InProgress,
        CallStatus::Completed,
        CallStatus::Failed,
        CallStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Pending => "pending",
            CallStatus::Queued => "queued",
            CallStatus::InProgress => "in_progress",
            CallStatus::Completed => "completed",
            CallStatus::Failed => "failed",
            CallStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<CallStatus> {
        CallStatus::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, CallStatus::Completed | CallStatus::Failed | CallStatus::Skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CampaignAction::*;
    use CampaignStatus::*;

    #[test]
    fn state_machine() {
        assert_eq!(Pending.apply(Start), Ok(InProgress));
        assert_eq!(InProgress.apply(Pause), Ok(Paused));
        assert_eq!(Paused.apply(Start), Ok(InProgress));
        assert_eq!(Paused.apply(Complete), Ok(Completed));
        assert_eq!(InProgress.apply(Complete), Ok(Completed));
        assert_eq!(Pending.apply(Complete), Ok(Completed));
        for (from, action) in [
            (Pending, Pause),
            (Paused, Pause),
            (InProgress, Start),
            (Completed, Start),
            (Completed, Pause),
            (Completed, Complete),
        ] {
            let err = from.apply(action).unwrap_err();
            assert_eq!(err.current, from);
        }
        assert_eq!(Pending.apply(Pause).unwrap_err().to_string(), "cannot pause a campaign that is pending");
    }

    #[test]
    fn sources_match_apply() {
        assert_eq!(CampaignStatus::sources(Start), vec![Pending, Paused]);
        assert_eq!(CampaignStatus::sources(Pause), vec![InProgress]);
        assert_eq!(CampaignStatus::sources(Complete), vec![Pending, InProgress, Paused]);
    }

    #[test]
    fn status_strings_round_trip() {
        for s in CampaignStatus::ALL {
            assert_eq!(CampaignStatus::parse(s.as_str()), Some(s));
        }
        for s in CallStatus::ALL {
            assert_eq!(CallStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(CampaignStatus::parse("bogus"), None);
    }
}
