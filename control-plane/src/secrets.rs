//! Webhook signing secrets at rest. With a key from the environment (`DIALER_SECRETS_KEY`, 32
//! bytes as 64 hex digits), a secret is stored sealed (AES-256-GCM, a random nonce each:
//! `sealed:v1:` and hex of nonce, ciphertext and tag), so a copy of the database alone does not
//! reveal it; the API seals what it writes, the deliverer opens what it claims. Without a key
//! secrets are stored as given. At start, [`prepare`] seals the secrets stored before the key was
//! set and refuses to go on when a sealed secret does not open (no key, or another one).

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

const PREFIX: &str = "sealed:v1:";
/// Binds a sealed value to its use: a sealed secret of another kind does not open here.
const AAD: &[u8] = b"dialer webhook signing secret";

/// The key secrets are sealed with. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey([u8; 32]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(redacted)")
    }
}

/// Why secrets cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("DIALER_SECRETS_KEY must be 64 hexadecimal digits (32 bytes), e.g. from `openssl rand -hex 32`")]
    BadKey,
    #[error(
        "webhook secrets in the store are sealed, and DIALER_SECRETS_KEY is not set: set the key they were sealed with"
    )]
    NoKey,
    #[error("a webhook secret in the store does not open with DIALER_SECRETS_KEY: set the key it was sealed with")]
    WrongKey,
    #[error("reading or writing webhook secrets: {0}")]
    Store(#[from] dialer_store::StoreError),
    #[error("the system's random source failed; a secret cannot be sealed")]
    Random,
}

impl SecretsKey {
    pub fn from_hex(text: &str) -> Result<SecretsKey, SecretsError> {
        let text = text.trim();
        let bytes = unhex(text).ok_or(SecretsError::BadKey)?;
        <[u8; 32]>::try_from(bytes.as_slice()).map(SecretsKey).map_err(|_| SecretsError::BadKey)
    }
}

/// Lower-case hex of `bytes` (keys' ids and digests, sealed secrets).
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` read as hex (`None`: an odd length or a character that is not a hex digit).
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Seals and opens secrets (without a key: stores them as given).
pub struct Sealer {
    key: Option<LessSafeKey>,
    rng: SystemRandom,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("sealing", &self.key.is_some()).finish()
    }
}

impl Default for Sealer {
    fn default() -> Self {
        Sealer::new(None)
    }
}

impl Sealer {
    pub fn new(key: Option<&SecretsKey>) -> Sealer {
        let key = key.and_then(|k| UnboundKey::new(&AES_256_GCM, &k.0).ok()).map(LessSafeKey::new);
        Sealer { key, rng: SystemRandom::new() }
    }

    pub fn sealing(&self) -> bool {
        self.key.is_some()
    }

    /// What to store for `plain`.
    pub fn seal(&self, plain: &str) -> Result<String, SecretsError> {
        let Some(key) = &self.key else { return Ok(plain.to_string()) };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretsError::Random)?;
        let mut data = plain.as_bytes().to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(AAD), &mut data)
            .map_err(|_| SecretsError::Random)?;
        Ok(format!("{PREFIX}{}{}", hex(&nonce), hex(&data)))
    }

    /// The secret a stored value holds.
    pub fn open(&self, stored: &str) -> Result<String, SecretsError> {
        let Some(sealed) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_string()) };
        let key = self.key.as_ref().ok_or(SecretsError::NoKey)?;
        let bytes = unhex(sealed).ok_or(SecretsError::WrongKey)?;
        let (nonce, data) = bytes.split_at_checked(NONCE_LEN).ok_or(SecretsError::WrongKey)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretsError::WrongKey)?;
        let mut data = data.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(AAD), &mut data).map_err(|_| SecretsError::WrongKey)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretsError::WrongKey)
    }

    /// A stored value as it should be stored now: sealed when a key is set (`None`: as it is).
    fn reseal(&self, stored: &str) -> Result<Option<String>, SecretsError> {
        let plain = self.open(stored)?;
        if !self.sealing() || stored.starts_with(PREFIX) {
            return Ok(None);
        }
        self.seal(&plain).map(Some)
    }
}

/// At start: every stored secret opens with this process's key, and those stored before the
/// key was set are sealed now.
pub async fn prepare(store: &crate::Store, sealer: &Sealer) -> Result<usize, SecretsError> {
    let rows = store.webhook_secrets().await?;
    let mut sealed = 0;
    for (id, secret, previous) in rows {
        let new_secret = sealer.reseal(&secret)?;
        let new_previous = previous.as_deref().map(|p| sealer.reseal(p)).transpose()?.flatten();
        if new_secret.is_some() || new_previous.is_some() {
            let secret = new_secret.unwrap_or(secret);
            let previous = new_previous.or(previous);
            store.set_webhook_secrets(id, &secret, previous.as_deref()).await?;
            sealed += 1;
        }
    }
    Ok(sealed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretsKey {
        SecretsKey::from_hex(&hex(&[b; 32])).expect("a key")
    }

    #[test]
    fn a_sealed_secret_opens_with_its_key_only() {
        let (a, b) = (Sealer::new(Some(&key(1))), Sealer::new(Some(&key(2))));
        let stored = a.seal("whsec_0123456789abcdef").expect("sealed");
        assert!(stored.starts_with("sealed:v1:") && !stored.contains("0123456789abcdef"), "{stored}");
        assert_ne!(Some(stored.clone()), a.seal("whsec_0123456789abcdef").ok(), "a fresh nonce each time");
        assert_eq!(a.open(&stored).ok().as_deref(), Some("whsec_0123456789abcdef"));
        assert!(matches!(b.open(&stored), Err(SecretsError::WrongKey)));
        assert!(matches!(Sealer::new(None).open(&stored), Err(SecretsError::NoKey)));
        let mut tampered = stored.clone();
        tampered.replace_range(stored.len() - 2.., "00");
        assert!(matches!(a.open(&tampered), Err(SecretsError::WrongKey)));
    }

    #[test]
    fn without_a_key_secrets_stay_as_given_and_plain_ones_still_open() {
        let none = Sealer::new(None);
        assert_eq!(none.seal("plain-secret-0123456").ok().as_deref(), Some("plain-secret-0123456"));
        assert_eq!(none.reseal("plain-secret-0123456").ok(), Some(None));
        let a = Sealer::new(Some(&key(1)));
        assert_eq!(
            a.open("plain-secret-0123456").ok().as_deref(),
            Some("plain-secret-0123456"),
            "stored before the key"
        );
        let resealed = a.reseal("plain-secret-0123456").expect("reseal").expect("sealed now");
        assert_eq!(a.open(&resealed).ok().as_deref(), Some("plain-secret-0123456"));
        assert_eq!(a.reseal(&resealed).ok(), Some(None), "sealed already");
    }

    #[test]
    fn a_key_is_64_hex_digits_and_never_printed() {
        assert!(matches!(SecretsKey::from_hex("abc"), Err(SecretsError::BadKey)));
        assert!(matches!(SecretsKey::from_hex(&"zz".repeat(32)), Err(SecretsError::BadKey)));
        assert!(matches!(SecretsKey::from_hex(&"ab".repeat(31)), Err(SecretsError::BadKey)));
        assert_eq!(format!("{:?}", key(7)), "SecretsKey(redacted)");
    }
}
