//! API keys and per-key rate limits.
//!
//! Every `/api/v1/…` request (but the OpenAPI document) carries `Authorization: Bearer KEY` when
//! keys are configured; `/healthz`, `/readyz` and `/metrics` stay open for probes and scrapers.
//! A key has a role ([`Role`]): `read` keys read (GET, HEAD and the live streams), `operator`
//! keys change campaigns, lists and endpoints too. A configured entry is `[ROLE:]KEY` or
//! `[ROLE:]sha256:HEX` (the key's SHA-256, so the configuration need not hold the key).
//! Keys are compared as SHA-256 digests in constant time (every configured key is compared, so
//! the time does not tell which key or how much of one matched). Each key has its own token
//! bucket (GCRA, `governor`): over it, 429 `key_rate_limited` with `Retry-After`. The console's
//! pages (their own access, [`crate::console`]) may read (`GET`) with their session cookie.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ApiError;
use super::settings::ApiSettings;

/// What a key may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// GET and HEAD requests (reads and the live streams).
    Read,
    /// Everything: campaigns, lists, endpoints, caps.
    Operator,
}

/// Why a configured key is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadKey {
    #[error("a hashed key is sha256: and 64 hex digits (e.g. `printf %s KEY | sha256sum`)")]
    Hash,
    #[error(
        "an API key must be 16–256 visible ASCII characters without commas \
         (e.g. the output of `openssl rand -hex 24`), after an optional read: or operator:"
    )]
    Plain,
}

/// One configured key: its role and its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    pub role: Role,
    pub digest: [u8; 32],
}

impl KeyEntry {
    /// `[read:|operator:]KEY` or `[read:|operator:]sha256:HEX`; the role defaults to operator.
    pub fn parse(entry: &str) -> Result<KeyEntry, BadKey> {
        let (role, rest) = match entry.split_once(':') {
            Some(("read", rest)) => (Role::Read, rest),
            Some(("operator", rest)) => (Role::Operator, rest),
            _ => (Role::Operator, entry),
        };
        if let Some(hex) = rest.strip_prefix("sha256:") {
            let digest =
                crate::secrets::unhex(hex).and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok()).ok_or(BadKey::Hash)?;
            return Ok(KeyEntry { role, digest });
        }
        if rest.len() < 16 || rest.len() > 256 || !rest.chars().all(|c| c.is_ascii_graphic() && c != ',') {
            return Err(BadKey::Plain);
        }
        Ok(KeyEntry { role, digest: digest(rest.as_bytes()) })
    }

    /// The key's id in logs and messages: the first 12 hex digits of its SHA-256 (never the key).
    pub fn id(&self) -> String {
        crate::secrets::hex(&self.digest[..6])
    }
}

/// The configured keys (as digests, with their roles), one rate limiter per key, and the live
/// streams each key holds open (the last slot: requests without a key).
pub struct Auth {
    keys: Vec<KeyEntry>,
    limits: Vec<Option<DefaultDirectRateLimiter>>,
    streams: Vec<AtomicUsize>,
    max_streams: usize,
    /// The console's logged-in sessions (their cookie also lets the console's pages read).
    pub sessions: crate::console::Sessions,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("keys", &self.keys.len()).finish_non_exhaustive()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Auth {
    pub fn new(api: &ApiSettings) -> Arc<Auth> {
        let quota = NonZeroU32::new(api.rate_limit_per_key).map(|rate| {
            let burst = NonZeroU32::new(api.rate_limit_per_key.saturating_mul(2)).unwrap_or(rate);
            Quota::per_second(rate).allow_burst(burst)
        });
        Arc::new(Auth {
            // Entries are checked when the configuration is read; one that does not parse here
            // (a test's) is a key of its own text.
            keys: api
                .keys
                .iter()
                .map(|k| {
                    KeyEntry::parse(&k.0).unwrap_or(KeyEntry { role: Role::Operator, digest: digest(k.0.as_bytes()) })
                })
                .collect(),
            limits: api.keys.iter().map(|_| quota.map(RateLimiter::direct)).collect(),
            streams: (0..=api.keys.len()).map(|_| AtomicUsize::new(0)).collect(),
            max_streams: api.max_streams_per_key,
            sessions: Default::default(),
        })
    }

    /// A live stream for `caller` (its key's index; `None`: no key), or `None` when the key
    /// holds `api.max_streams_per_key` open already.
    pub fn open_stream(self: &Arc<Self>, caller: Option<Caller>) -> Option<StreamPermit> {
        let slot = caller.map_or(self.keys.len(), |c| c.0).min(self.keys.len());
        let count = &self.streams[slot];
        count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_streams).then_some(n + 1)).ok()?;
        Some(StreamPermit { auth: self.clone(), slot })
    }

    /// The configured key `presented` is (its role and id), if it is one.
    pub fn entry(&self, presented: &[u8]) -> Option<&KeyEntry> {
        self.find(presented).map(|i| &self.keys[i])
    }

    /// The id of the key a request came with.
    pub fn caller_id(&self, caller: Caller) -> String {
        self.keys.get(caller.0).map_or_else(String::new, KeyEntry::id)
    }

    /// Which key `presented` is, comparing against every key in constant time.
    fn find(&self, presented: &[u8]) -> Option<usize> {
        let d = digest(presented);
        let mut found = None;
        for (i, k) in self.keys.iter().enumerate() {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(i);
            }
        }
        found
    }
}

/// Which key a request came with (its index), set by [`require_key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller(pub usize);

/// One open live stream of a key; given back when dropped (the stream ends).
#[derive(Debug)]
pub struct StreamPermit {
    auth: Arc<Auth>,
    slot: usize,
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        self.auth.streams[self.slot].fetch_sub(1, Ordering::AcqRel);
    }
}

fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/api/v1/openapi.json")
}

fn unauthorized(message: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).field("Authorization").into_response();
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"dialer\""));
    r
}

/// The middleware: 401 without a valid key, 429 over the key's rate.
pub async fn require_key(State(auth): State<Arc<Auth>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if auth.keys.is_empty() || open_path(path) || crate::console::is_console(path) {
        return next.run(req).await;
    }
    // The console's pages read the API with their session cookie; they change nothing through it.
    let reads = matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    if reads && req.headers().get(header::AUTHORIZATION).is_none() && auth.sessions.valid(req.headers()) {
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return unauthorized("this API needs an API key: send `Authorization: Bearer KEY`");
    };
    let token = value
        .as_bytes()
        .split_at_checked(7)
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
        .map(|(_, t)| t.trim_ascii());
    let Some(token) = token else {
        return unauthorized("the Authorization header must be `Bearer KEY`");
    };
    let Some(i) = auth.find(token) else {
        return unauthorized("unknown API key");
    };
    if auth.keys[i].role == Role::Read && !reads {
        let id = auth.keys[i].id();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("API key {id} is read-only (role read): it may only read; use an operator key to change anything"),
        )
        .field("Authorization")
        .into_response();
    }
    if let Some(limit) = &auth.limits[i]
        && let Err(not_until) = limit.check()
    {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        return ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "key_rate_limited",
            format!("this API key is over its rate (api.rate_limit_per_key); retry in {} ms", wait.as_millis()),
        )
        .retry_after(wait.as_secs().max(1))
        .into_response();
    }
    req.extensions_mut().insert(Caller(i));
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::super::settings::ApiKey;
    use super::*;

    #[test]
    fn an_entry_is_a_role_and_a_key_or_its_hash() {
        let key = "reader-0123456789abcdef";
        let read = KeyEntry::parse(&format!("read:{key}")).expect("a read key");
        assert_eq!((read.role, read.digest), (Role::Read, digest(key.as_bytes())));
        let hex = crate::secrets::hex(&digest(key.as_bytes()));
        let hashed = KeyEntry::parse(&format!("operator:sha256:{hex}")).expect("a hashed key");
        assert_eq!((hashed.role, hashed.digest), (Role::Operator, read.digest));
        assert_eq!(KeyEntry::parse(key).map(|e| e.role), Ok(Role::Operator), "no role: operator");
        assert_eq!(read.id(), hex[..12], "its id: the digest's start, never the key");
        for bad in ["read:short", "sha256:abc", "operator:sha256:zz", "with,comma-0123456789abcdef"] {
            assert!(KeyEntry::parse(bad).is_err(), "{bad}");
        }
        let api = ApiSettings { keys: vec![ApiKey(format!("read:sha256:{hex}"))], ..ApiSettings::default() };
        assert_eq!(
            Auth::new(&api).entry(key.as_bytes()).map(|e| e.role),
            Some(Role::Read),
            "a hashed key is found by the key"
        );
    }

    #[test]
    fn each_key_holds_its_own_streams_up_to_the_limit() {
        let api = ApiSettings {
            keys: vec![ApiKey("first-0123456789abcdef".into())],
            max_streams_per_key: 2,
            ..ApiSettings::default()
        };
        let auth = Auth::new(&api);
        let (a, b) = (auth.open_stream(Some(Caller(0))), auth.open_stream(Some(Caller(0))));
        assert!(a.is_some() && b.is_some());
        assert!(auth.open_stream(Some(Caller(0))).is_none(), "the key's third stream");
        assert!(auth.open_stream(None).is_some(), "requests without a key count apart");
        drop(a);
        assert!(auth.open_stream(Some(Caller(0))).is_some(), "a closed stream gives its place back");
    }

    #[test]
    fn keys_are_found_by_digest() {
        let api = ApiSettings {
            keys: vec![ApiKey("first-0123456789abcdef".into()), ApiKey("second-0123456789abcdef".into())],
            ..ApiSettings::default()
        };
        let auth = Auth::new(&api);
        assert_eq!(auth.find(b"first-0123456789abcdef"), Some(0));
        assert_eq!(auth.find(b"second-0123456789abcdef"), Some(1));
        assert_eq!(auth.find(b"second-0123456789abcdeX"), None);
        assert_eq!(auth.find(b""), None);
        assert!(!format!("{auth:?}").contains("first"));
    }
}
