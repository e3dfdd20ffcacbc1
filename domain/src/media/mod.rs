//! Media on answered calls, as pure functions: G.711 ([`g711`]), prompts from WAV files
//! ([`wav`]), RTP packets and RFC 4733 keys ([`rtp`]), answering-machine detection ([`amd`]),
//! the voicemail beep ([`tone`]), and a campaign's media block ([`plan`]). The data plane's
//! SIP provider drives them over its sockets.

pub mod amd;
pub mod g711;
pub mod plan;
pub mod rtp;
pub mod script;
pub mod tone;
pub mod wav;

pub use amd::{AmdParams, AnsweredBy};
pub use plan::{KeyAction, MediaPlan, OptOutList};
pub use script::{MediaResult, Play, Script, Step};
