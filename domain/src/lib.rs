//! Pure domain model of the dialer, shared by the control plane, the data plane and the bench:
//! campaigns and their state machine, business-hour windows evaluated in the campaign's time
//! zone, the retry policy with decorrelated-jitter backoff, phone-number and duration validation,
//! and the API request/response schemas. Nothing in this crate performs I/O or reads a clock:
//! every function takes the instant or the random sample it needs, so all of it is unit-tested
//! with fixed inputs.

pub mod campaign;
pub mod dnc;
pub mod duration;
pub mod events;
pub mod hours;
pub mod lifecycle;
pub mod messages;
pub mod outcome;
pub mod phone;
pub mod recipient;
pub mod retry;
pub mod rules;
pub mod validate;
pub mod webhooks;

pub use campaign::{CallStatus, CampaignAction, CampaignStatus, TransitionError};
pub use hours::{BusinessHours, Window};
pub use retry::RetryPolicy;
pub use validate::FieldError;
