//! Prompts as a shard gets them: fetched once from the control plane's API
//! (`GET {prompts_url}/api/v1/prompts/{id}/audio`, a WAV file) and kept in the shard's own cache,
//! so no call waits on a fetch once a campaign's first call has loaded them. A prompt never
//! changes (a new recording is a new prompt, with its own id), so the cache holds no stale
//! audio; it keeps at most [`CACHE_MAX`] prompts, the oldest fetched going first.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use dialer_domain::media::g711::Law;
use dialer_domain::media::wav;
use uuid::Uuid;

/// Prompts one shard keeps.
pub const CACHE_MAX: usize = 256;

/// Why a prompt could not be had: the call is not dialled (reported failed, retryable).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("provider.prompts_url is not set: the data plane cannot fetch the campaign's prompts")]
    NoSource,
    #[error("prompt {id}: {detail}; check provider.prompts_url and that the control plane runs")]
    Fetch { id: Uuid, detail: String },
    #[error("prompt {0} does not exist (deleted?)")]
    NotFound(Uuid),
    #[error("prompt {id} is not usable audio: {error}")]
    Audio { id: Uuid, error: wav::WavError },
}

/// A prompt as calls play it: encoded once in each G.711 law, shared by the calls playing it
/// (a packet is then a copy, not 160 encodings).
#[derive(Clone, Debug)]
pub struct Prompt {
    ulaw: Arc<[u8]>,
    alaw: Arc<[u8]>,
}

impl Prompt {
    pub fn new(samples: &[i16]) -> Prompt {
        let enc = |law: Law| samples.iter().map(|s| law.encode(*s)).collect::<Arc<[u8]>>();
        Prompt { ulaw: enc(Law::Ulaw), alaw: enc(Law::Alaw) }
    }

    pub fn encoded(&self, law: Law) -> &Arc<[u8]> {
        match law {
            Law::Ulaw => &self.ulaw,
            Law::Alaw => &self.alaw,
        }
    }
}

/// The shard's prompts: fetched on first use, then kept.
#[derive(Debug)]
pub struct Prompts {
    source: Option<(reqwest::Client, String, Option<String>)>,
    cache: RefCell<HashMap<Uuid, Rc<tokio::sync::OnceCell<Prompt>>>>,
    order: RefCell<VecDeque<Uuid>>,
}

impl Prompts {
    /// Fetches from `url` (the control plane's base URL; empty = none) with `api_key` if set.
    pub fn new(url: &str, api_key: Option<String>) -> Prompts {
        let source = (!url.is_empty()).then(|| {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
            (client, url.trim_end_matches('/').to_string(), api_key)
        });
        Prompts { source, cache: RefCell::default(), order: RefCell::default() }
    }

    /// The prompt's samples: from the cache, or fetched now (once, however many calls ask at
    /// the same time). A failed fetch is not kept: the next call tries again.
    pub async fn get(&self, id: Uuid) -> Result<Prompt, PromptError> {
        let cell = self.cell(id);
        let got = cell.get_or_try_init(|| self.fetch(id)).await.cloned();
        if got.is_err() {
            self.cache.borrow_mut().remove(&id);
        }
        got
    }

    fn cell(&self, id: Uuid) -> Rc<tokio::sync::OnceCell<Prompt>> {
        let mut cache = self.cache.borrow_mut();
        if let Some(c) = cache.get(&id) {
            return c.clone();
        }
        let mut order = self.order.borrow_mut();
        order.retain(|o| cache.contains_key(o));
        while order.len() >= CACHE_MAX {
            if let Some(old) = order.pop_front() {
                cache.remove(&old);
            }
        }
        order.push_back(id);
        cache.entry(id).or_default().clone()
    }

    async fn fetch(&self, id: Uuid) -> Result<Prompt, PromptError> {
        let (client, base, key) = self.source.as_ref().ok_or(PromptError::NoSource)?;
        let mut req = client.get(format!("{base}/api/v1/prompts/{id}/audio"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let fetch_err = |e: reqwest::Error| PromptError::Fetch { id, detail: e.to_string() };
        let resp = req.send().await.map_err(fetch_err)?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Err(PromptError::NotFound(id)),
            code => return Err(PromptError::Fetch { id, detail: format!("the API answered {code}") }),
        }
        let bytes = resp.bytes().await.map_err(fetch_err)?;
        let audio = wav::parse(&bytes).map_err(|error| PromptError::Audio { id, error })?;
        metrics::counter!("dialer_prompt_fetches_total").increment(1);
        Ok(Prompt::new(&audio.samples))
    }
}
