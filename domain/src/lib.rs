//! Pure domain model of the dialer: the wire contract between the planes (`messages`, `outcome`)
//! and the rules both sides apply: campaigns and their state machine, business-hour windows in
//! the campaign's time zone, the retry policy with decorrelated-jitter backoff, what a status
//! event does to a call (`lifecycle`), the recipient's calling rules and do-not-call entries,
//! customer events, and the validated values the API hands the store (`settings`). The API's
//! request and response types are `dialer-api`'s.
//!
//! Nothing in this crate performs I/O or reads a clock: every function takes the instant or the
//! random sample it needs, so all of it is unit-tested with fixed inputs.

pub mod campaign;
pub mod dnc;
pub mod duration;
pub mod events;
mod field;
pub mod hours;
pub mod lifecycle;
pub mod media;
pub mod messages;
pub mod outcome;
pub mod phone;
pub mod recipient;
pub mod retry;
pub mod rules;
pub mod settings;
pub mod wait;

pub use campaign::{CallStatus, CampaignAction, CampaignStatus, TransitionError};
pub use field::FieldError;
pub use hours::{BusinessHours, Window};
pub use retry::RetryPolicy;
pub use settings::{CampaignSettings, NewCampaign, NewTarget, Telephony};
