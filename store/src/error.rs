//! What can go wrong in the store, in terms the API maps to status codes and an operator can act on.

use dialer_domain::FieldError;
use dialer_domain::campaign::TransitionError;

use crate::timeline::TimelineError;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error(transparent)]
    Conflict(#[from] Conflict),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Invalid(#[from] FieldError),
    #[error("the store is unavailable: {0}; check that the database is running and reachable")]
    Unavailable(#[source] sqlx::Error),
    #[error("the database holds what this version cannot read: {0}")]
    Corrupt(#[from] Corrupt),
    #[error("applying migrations failed: {0}; never edit an applied migration, add a new one")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the CQL timeline store failed: {0}")]
    Timeline(#[from] TimelineError),
    #[error("bad database URL {url:?}: {source}")]
    BadUrl { url: String, source: sqlx::Error },
    #[error(
        "database URL {url:?} names no database the store knows: use postgres://USER@HOST:PORT/DB or sqlite://PATH"
    )]
    UnknownUrl { url: String },
}

/// A change the store refused because of what it holds now (409).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Conflict {
    #[error("the campaign is completed; it takes no new calls")]
    CampaignCompleted,
    #[error("a campaign named {0:?} already exists (names are unique, ignoring case)")]
    NameTaken(String),
    #[error("the campaign changed while this request ran; send it again")]
    CampaignChanged,
    #[error("the number's open call changed meanwhile; retry the request")]
    OpenCallChanged,
    #[error("the endpoint is disabled; PATCH it with enabled=true, then replay")]
    EndpointDisabled,
    #[error("recovery at start could not resolve {0} calls still queued or in progress")]
    Unresolved(usize),
    #[error("loading the targets took over {0} minutes and was abandoned; send the request again")]
    LoadAbandoned(u64),
    #[error("campaign {0} plays this prompt; change its telephony.media (or let it complete) first")]
    PromptInUse(uuid::Uuid),
}

/// What the database holds that this version cannot read, or an answer that breaks the store's
/// own invariants.
#[derive(Debug, thiserror::Error)]
pub enum Corrupt {
    #[error("{0}")]
    Column(#[source] sqlx::Error),
    #[error("{what} {value:?}")]
    Value { what: &'static str, value: String },
    #[error("{what}: {source}")]
    Json { what: &'static str, source: serde_json::Error },
    #[error("campaign {campaign}'s calling rules: {source}")]
    Rules { campaign: uuid::Uuid, source: FieldError },
    #[error("{0}")]
    Broken(&'static str),
    #[error("the batch of new calls returned no row for item {0}")]
    NoRow(usize),
    #[error("{found} of {claimed} claimed deliveries have their event")]
    Claimed { found: usize, claimed: usize },
    #[error("event {0} has no body")]
    NoBody(i64),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                StoreError::Corrupt(Corrupt::Column(e))
            }
            _ => StoreError::Unavailable(e),
        }
    }
}

impl StoreError {
    /// Whether the database refused the statement for what it holds (a value it cannot store, a
    /// violated constraint), as opposed to being unreachable or busy: retrying the same data
    /// cannot succeed. Serialization failures, deadlocks and lock timeouts are not refusals.
    pub fn is_refusal(&self) -> bool {
        let StoreError::Unavailable(sqlx::Error::Database(d)) = self else {
            return false;
        };
        // PostgreSQL: 40001 serialization, 40P01 deadlock, 55P03 lock not available, 57014
        // cancelled; SQLite: 5 busy, 6 locked (and their extended codes).
        let transient = ["40001", "40P01", "55P03", "57014"];
        match d.code() {
            // A PostgreSQL SQLSTATE has five characters; SQLite's codes are shorter numbers.
            Some(code) if code.len() == 5 => !transient.contains(&code.as_ref()),
            Some(code) => !code.parse::<u32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
            None => false,
        }
    }
}
