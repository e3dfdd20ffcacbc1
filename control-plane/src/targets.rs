//! Where webhook deliveries may go. By default only to public addresses: not loopback,
//! link-local (169.254.169.254, the cloud metadata address), private, shared, multicast or
//! unspecified ones (`dialer_api::webhooks::not_public`), so whoever may register an endpoint
//! cannot make the control plane post into the network it runs in. Checked when an endpoint
//! is registered or its URL changed (an address, or a name that resolves only to such
//! addresses, is refused with a 422), and again on every resolution of every delivery (a
//! name may be re-pointed after registration: DNS rebinding); redirects are not followed.
//! `webhooks.allow_private_targets` allows them (`dialer up` does by default: one host,
//! whose API listens on loopback).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dialer_api::webhooks::{Host, host_port, not_public};
use dialer_domain::FieldError;

/// The rule deliveries follow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    pub allow_private: bool,
}

/// How long registration waits for a name to resolve (an unresolvable name is accepted: it may
/// be registered before its DNS exists; deliveries check again).
const LOOKUP: Duration = Duration::from_secs(2);

const HOW_TO_ALLOW: &str = "deliveries go to public addresses only; set webhooks.allow_private_targets = true (DIALER_WEBHOOKS_ALLOW_PRIVATE_TARGETS) to allow it";

impl TargetPolicy {
    /// Why a delivery may not go to `ip` (`None`: it may).
    pub fn refuse(&self, ip: IpAddr) -> Option<Refused> {
        let class = not_public(ip).filter(|_| !self.allow_private)?;
        Some(Refused::Address { ip, class })
    }

    /// The addresses a delivery may use of those a name resolved to, or why none.
    pub fn keep(&self, name: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let (ok, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
            addrs.into_iter().partition(|a| self.refuse(a.ip()).is_none());
        match (ok.is_empty(), refused.first()) {
            (true, Some(r)) => {
                let class = not_public(r.ip()).unwrap_or_default();
                Err(Refused::Name { name: name.to_string(), ip: r.ip(), class })
            }
            _ => Ok(ok),
        }
    }

    /// At registration: an address in the URL, or every address its name resolves to, must be
    /// allowed.
    pub async fn check_url(&self, url: &str) -> Result<(), FieldError> {
        if self.allow_private {
            return Ok(());
        }
        let Some((host, port)) = host_port(url) else { return Ok(()) };
        let refused = match host {
            Host::Ipv4(ip) => self.refuse(IpAddr::V4(ip)),
            Host::Ipv6(ip) => self.refuse(IpAddr::V6(ip)),
            Host::Domain(name) => {
                match tokio::time::timeout(LOOKUP, tokio::net::lookup_host((name.as_str(), port))).await {
                    Ok(Ok(addrs)) => self.keep(&name, addrs.collect()).err(),
                    _ => None,
                }
            }
        };
        refused.map_or(Ok(()), |why| Err(FieldError::new("url", why.to_string())))
    }

    /// Before a delivery to a URL whose host is an address (names go through [`Resolver`]).
    pub fn check_literal(&self, url: &str) -> Result<(), Refused> {
        match host_port(url).map(|(h, _)| h) {
            Some(Host::Ipv4(ip)) => self.refuse(IpAddr::V4(ip)).map_or(Ok(()), Err),
            Some(Host::Ipv6(ip)) => self.refuse(IpAddr::V6(ip)).map_or(Ok(()), Err),
            _ => Ok(()),
        }
    }
}

/// The HTTP client's resolver: the system's, less the addresses the policy refuses.
#[derive(Debug)]
pub struct Resolver(pub TargetPolicy);

/// Why a delivery may not go where its URL points.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    /// The URL's host is such an address.
    #[error("{ip} is a {class} address; {HOW_TO_ALLOW}")]
    Address { ip: IpAddr, class: &'static str },
    /// The URL's name resolved only to such addresses (the first one named).
    #[error("{name} resolves to {ip}, a {class} address; {HOW_TO_ALLOW}")]
    Name { name: String, ip: IpAddr, class: &'static str },
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0;
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = policy.keep(&host, addrs)?;
            Ok(Box::new(kept.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn registration_refuses_the_metadata_address_and_a_name_of_loopback_unless_allowed() {
        let deny = TargetPolicy::default();
        let e = deny.check_url("http://169.254.169.254/latest/meta-data").await.expect_err("metadata");
        assert_eq!(e.field, "url");
        assert!(e.message.contains("link-local") && e.message.contains("allow_private_targets"), "{}", e.message);
        let e = deny.check_url("http://localhost:8080/hook").await.expect_err("a name of loopback");
        assert!(e.message.starts_with("localhost resolves to ") && e.message.contains("loopback"), "{}", e.message);
        assert!(deny.check_url("http://[::ffff:10.0.0.1]/h").await.is_err());
        assert!(deny.check_url("https://93.184.216.34/hook").await.is_ok(), "a public address");
        assert!(deny.check_url("https://no-such-name.invalid/hook").await.is_ok(), "unresolvable: checked on delivery");
        let allow = TargetPolicy { allow_private: true };
        assert!(allow.check_url("http://127.0.0.1:9/hook").await.is_ok());
    }

    #[test]
    fn a_name_keeps_its_public_addresses_and_fails_with_none() {
        let deny = TargetPolicy::default();
        let a = |s: &str| s.parse::<SocketAddr>().expect("addr");
        assert_eq!(deny.keep("mixed", vec![a("10.0.0.1:80"), a("93.184.216.34:80")]), Ok(vec![a("93.184.216.34:80")]));
        let e = deny.keep("rebound", vec![a("127.0.0.1:80")]).expect_err("only loopback");
        assert!(e.to_string().starts_with("rebound resolves to 127.0.0.1, a loopback address;"), "{e}");
        let e = deny.check_literal("http://[::1]:8080/h").expect_err("loopback");
        assert_eq!(e, Refused::Address { ip: "::1".parse().expect("ip"), class: "loopback" });
        assert!(deny.check_literal("http://example.com/h").is_ok());
    }
}
