//! What an answered call of a campaign plays and listens for: its `telephony.media` block.
//!
//! ```json
//! "media": {
//!   "prompt": "0190…",            // to a person (and when detection is not sure)
//!   "voicemail_prompt": "0190…",  // to a machine, after its beep (absent: hang up on machines)
//!   "amd": {},                     // detect who answered (Asterisk's parameters; absent: no detection)
//!   "keys": {"9": "opt_out", "1": "end"},
//!   "repeat": 2,                   // plays of `prompt`
//!   "key_timeout_ms": 4000         // listening for a key after the last play
//! }
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::amd::AmdParams;
use crate::field::FieldError;

/// What a key does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum KeyAction {
    /// The number goes on the campaign's do-not-call list at once and the call ends
    /// (47 CFR 64.1200(b)(3)'s automated opt-out).
    OptOut,
    /// The call ends with the key recorded (`dtmf`), for the webhook and timeline.
    End,
}

/// Where a keypress opt-out puts the number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OptOutList {
    /// The campaign's own do-not-call list.
    #[default]
    Campaign,
    /// The global list: no campaign calls the number again.
    Global,
}

/// A campaign's media on answered calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MediaPlan {
    /// The prompt played to a person (`POST /api/v1/prompts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<Uuid>,
    /// The prompt left on a voicemail, after the beep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voicemail_prompt: Option<Uuid>,
    /// Answering-machine detection; absent = none (the prompt plays at answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amd: Option<AmdParams>,
    /// Keys (`0`–`9`, `*`, `#`) and what each does; others are ignored.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(example = json!({"9": "opt_out", "1": "end"})))]
    pub keys: BTreeMap<String, KeyAction>,
    /// How many times `prompt` plays (1–5).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub repeat: u8,
    /// How long a key is awaited after the last play (0–30000 ms).
    #[serde(default = "key_timeout", skip_serializing_if = "is_key_timeout")]
    pub key_timeout_ms: u32,
    /// The list an `opt_out` key puts the number on: `campaign` (default) or `global`.
    #[serde(default, skip_serializing_if = "is_campaign")]
    pub opt_out_list: OptOutList,
}

fn is_campaign(v: &OptOutList) -> bool {
    *v == OptOutList::Campaign
}

fn one() -> u8 {
    1
}
fn is_one(v: &u8) -> bool {
    *v == 1
}
fn key_timeout() -> u32 {
    3000
}
fn is_key_timeout(v: &u32) -> bool {
    *v == 3000
}

impl MediaPlan {
    /// Checks the block; the error names `telephony.media.<field>`.
    pub fn check(&self) -> Result<(), FieldError> {
        let f = |k: &str| format!("telephony.media.{k}");
        if self.prompt.is_none() && self.voicemail_prompt.is_none() {
            return Err(FieldError::new(
                f("prompt"),
                "give prompt, voicemail_prompt or both (ids from POST /api/v1/prompts)",
            ));
        }
        if self.voicemail_prompt.is_some() && self.amd.is_none() {
            return Err(FieldError::new(
                f("amd"),
                "a voicemail_prompt needs detection: add \"amd\": {} (defaults apply)",
            ));
        }
        if !(1..=5).contains(&self.repeat) {
            return Err(FieldError::new(f("repeat"), "must be between 1 and 5"));
        }
        if self.key_timeout_ms > 30_000 {
            return Err(FieldError::new(f("key_timeout_ms"), "must be between 0 and 30000"));
        }
        if let Some(a) = &self.amd {
            a.check(&f("amd"))?;
        }
        for k in self.keys.keys() {
            let ok = k.len() == 1 && k.chars().all(|c| c.is_ascii_digit() || c == '*' || c == '#');
            if !ok {
                return Err(FieldError::new(f(&format!("keys.{k}")), "keys are one of 0-9, * and #"));
            }
        }
        if self.keys.values().filter(|a| **a == KeyAction::OptOut).count() > 1 {
            return Err(FieldError::new(f("keys"), "one key opts out, not several"));
        }
        if !self.keys.is_empty() && self.prompt.is_none() {
            return Err(FieldError::new(f("keys"), "keys are heard while a prompt plays to a person: add prompt"));
        }
        Ok(())
    }

    /// What `key` does, if anything.
    pub fn action(&self, key: char) -> Option<KeyAction> {
        let mut buf = [0u8; 4];
        self.keys.get(&*key.encode_utf8(&mut buf)).copied()
    }

    /// The prompts it plays.
    pub fn prompts(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.prompt.iter().chain(self.voicemail_prompt.iter()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: serde_json::Value) -> Result<MediaPlan, String> {
        let p: MediaPlan = serde_json::from_value(json).map_err(|e| e.to_string())?;
        p.check().map_err(|e| e.field)?;
        Ok(p)
    }

    #[test]
    fn a_plan_reads_with_defaults_and_each_mistake_names_its_field() {
        let id = "01900000-0000-7000-8000-000000000001";
        let p = plan(serde_json::json!({"prompt": id, "keys": {"9": "opt_out", "1": "end"}})).expect("valid");
        assert_eq!((p.repeat, p.key_timeout_ms, p.amd), (1, 3000, None));
        assert_eq!(
            (p.action('9'), p.action('1'), p.action('5')),
            (Some(KeyAction::OptOut), Some(KeyAction::End), None)
        );
        assert_eq!(
            serde_json::to_value(&p).expect("json"),
            serde_json::json!({"prompt": id, "keys": {"1": "end", "9": "opt_out"}})
        );
        let bad = |j: serde_json::Value| plan(j).unwrap_err();
        assert_eq!(bad(serde_json::json!({})), "telephony.media.prompt");
        assert_eq!(bad(serde_json::json!({"voicemail_prompt": id})), "telephony.media.amd");
        assert_eq!(bad(serde_json::json!({"prompt": id, "repeat": 9})), "telephony.media.repeat");
        assert_eq!(bad(serde_json::json!({"prompt": id, "key_timeout_ms": 60000})), "telephony.media.key_timeout_ms");
        assert_eq!(bad(serde_json::json!({"prompt": id, "keys": {"12": "end"}})), "telephony.media.keys.12");
        assert_eq!(
            bad(serde_json::json!({"prompt": id, "keys": {"1": "opt_out", "2": "opt_out"}})),
            "telephony.media.keys"
        );
        assert_eq!(
            bad(serde_json::json!({"voicemail_prompt": id, "amd": {}, "keys": {"9": "opt_out"}})),
            "telephony.media.keys"
        );
        assert_eq!(
            bad(serde_json::json!({"prompt": id, "amd": {"greeting_ms": 1}})),
            "telephony.media.amd.greeting_ms"
        );
        assert!(bad(serde_json::json!({"prompt": id, "keys": {"9": "transfer"}})).contains("unknown variant"));
    }
}
