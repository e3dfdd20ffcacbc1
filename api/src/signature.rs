//! The signature every webhook delivery carries, and the check a receiver makes: part of the
//! API's contract with its customers, like the event bodies. Pure.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Dialer-Signature";

/// `Dialer-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>]`: HMAC-SHA256 of `"{t}.{body}"` under
/// each active secret (two while a rotation's previous secret is still valid).
pub fn signature_header(t: i64, body: &[u8], secrets: &[&str]) -> String {
    let mut h = format!("t={t}");
    for s in secrets {
        h.push_str(",v1=");
        h.push_str(&sign(s, t, body));
    }
    h
}

/// The hex HMAC-SHA256 of `"{t}.{body}"` under `secret`.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a signature does not verify.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the header has no t= or no v1=")]
    Malformed,
    #[error("the timestamp is {0} s from now: outside the tolerance (a replay?)")]
    Stale(i64),
    #[error("no v1 signature matches this secret")]
    Mismatch,
}

/// What a receiver does: checks `header` against `body` under `secret` at `now` (unix seconds),
/// refusing timestamps more than `tolerance_s` away. Constant-time in the signature bytes.
pub fn verify(header: &str, body: &[u8], secret: &str, now: i64, tolerance_s: i64) -> Result<(), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if (now - t).abs() > tolerance_s {
        return Err(SignatureError::Stale(now - t));
    }
    let expected = sign(secret, t, body);
    let same =
        |s: &str| s.len() == expected.len() && s.bytes().zip(expected.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0;
    if sigs.into_iter().any(same) { Ok(()) } else { Err(SignatureError::Mismatch) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_under_either_active_secret_and_nothing_else() {
        let body = br#"{"id":"e1"}"#;
        let h = signature_header(1_700_000_000, body, &["new-secret", "old-secret"]);
        assert!(h.starts_with("t=1700000000,v1="), "{h}");
        assert_eq!(verify(&h, body, "new-secret", 1_700_000_010, 300), Ok(()));
        assert_eq!(verify(&h, body, "old-secret", 1_700_000_010, 300), Ok(()), "the previous secret during a rotation");
        assert_eq!(verify(&h, body, "other", 1_700_000_010, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&h, b"{\"id\":\"e2\"}", "new-secret", 1_700_000_010, 300), Err(SignatureError::Mismatch));
        assert_eq!(verify(&h, body, "new-secret", 1_700_001_000, 300), Err(SignatureError::Stale(1000)));
        assert_eq!(verify("v1=ab", body, "new-secret", 0, 300), Err(SignatureError::Malformed));
    }

    #[test]
    fn a_known_hmac_vector_matches() {
        // echo -n '1.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(sign("key", 1, b"{}"), "1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224");
    }
}
