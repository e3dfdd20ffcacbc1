//! The REST API's contract: request bodies and their validation into domain values, response
//! bodies, the webhook signature, each with its OpenAPI schema. Pure: no I/O, no handlers (those
//! are the control plane's, `dialer_control_plane::api`).
//!
//! The store returns the response types it reads ([`views`], [`dnc::DncView`],
//! [`webhooks::Webhook`]) and takes the patches it applies under its row locks
//! ([`campaigns::UpdateCampaignRequest`], [`webhooks::UpdateWebhookRequest`]).

pub mod campaigns;
pub mod csv_list;
pub mod dnc;
pub mod signature;
pub mod views;
pub mod webhooks;
