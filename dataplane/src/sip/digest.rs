//! HTTP digest authentication as SIP uses it (RFC 3261 §22.4, RFC 2617: MD5, `qop=auth` or
//! none). Pure: the client nonce is passed in.

use md5::{Digest, Md5};

/// A parsed `WWW-Authenticate`/`Proxy-Authenticate` challenge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Option<String>,
    /// The challenge offers `qop=auth`.
    pub qop_auth: bool,
}

impl Challenge {
    /// Parses `Digest realm="…", nonce="…", …`; `None` for another scheme or no nonce.
    pub fn parse(v: &str) -> Option<Challenge> {
        let rest = v.trim().strip_prefix("Digest")?.trim_start();
        let mut c = Challenge::default();
        for (k, val) in params(rest) {
            match k.to_ascii_lowercase().as_str() {
                "realm" => c.realm = val,
                "nonce" => c.nonce = val,
                "opaque" => c.opaque = Some(val),
                "algorithm" => c.algorithm = Some(val),
                "qop" => c.qop_auth = val.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")),
                _ => {}
            }
        }
        let md5 = c.algorithm.as_deref().is_none_or(|a| a.eq_ignore_ascii_case("MD5"));
        (!c.nonce.is_empty() && md5).then_some(c)
    }

    /// The `Authorization`/`Proxy-Authorization` value for `method uri` with these credentials;
    /// `cnonce` is any fresh string (used only with `qop=auth`, nonce count 1).
    pub fn answer(&self, user: &str, password: &str, method: &str, uri: &str, cnonce: &str) -> String {
        let ha1 = hex(&format!("{user}:{}:{password}", self.realm));
        let ha2 = hex(&format!("{method}:{uri}"));
        let mut v =
            format!("Digest username=\"{user}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\"", self.realm, self.nonce);
        let response = if self.qop_auth {
            v.push_str(&format!(", qop=auth, nc=00000001, cnonce=\"{cnonce}\""));
            hex(&format!("{ha1}:{}:00000001:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            hex(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        v.push_str(&format!(", response=\"{response}\", algorithm=MD5"));
        if let Some(o) = &self.opaque {
            v.push_str(&format!(", opaque=\"{o}\""));
        }
        v
    }
}

fn hex(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `k=v` and `k="v, w"` pairs separated by commas.
fn params(s: &str) -> Vec<(String, String)> {
    let (mut out, mut rest) = (Vec::new(), s);
    while let Some((k, after)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_string();
        let after = after.trim_start();
        let (val, next) = match after.strip_prefix('"') {
            Some(q) => q.split_once('"').map_or((q, ""), |(v, n)| (v, n)),
            None => after.split_once(',').map_or((after, ""), |(v, n)| (v, n)),
        };
        out.push((k, val.trim().to_string()));
        rest = next.trim_start().trim_start_matches(',');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_example() {
        // RFC 2617 §3.5 (method GET, which digest treats like any other).
        let c = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .expect("parses");
        assert!(c.qop_auth);
        let a = c.answer("Mufasa", "Circle Of Life", "GET", "/dir/index.html", "0a4f113b");
        assert!(a.contains("response=\"6629fae49393a05397450978507c4ef1\""), "{a}");
        assert!(a.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""));
    }

    #[test]
    fn without_qop_and_other_schemes() {
        let c = Challenge::parse("Digest nonce=\"n\",realm=\"r\",algorithm=MD5").expect("parses");
        assert!(!c.qop_auth);
        let expected = hex(&format!("{}:n:{}", hex("u:r:p"), hex("INVITE:sip:1@r")));
        assert!(c.answer("u", "p", "INVITE", "sip:1@r", "x").contains(&expected));
        assert_eq!(Challenge::parse("Basic realm=\"r\""), None);
        assert_eq!(Challenge::parse("Digest realm=\"r\""), None, "no nonce");
        assert_eq!(Challenge::parse("Digest nonce=\"n\", algorithm=SHA-256"), None);
    }
}
