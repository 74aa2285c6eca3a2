//! The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
//! nearest untrusted hop of the one header the operator named (`server.client_address_header`:
//! `X-Forwarded-For`, `Forwarded` or `X-Real-IP`), walking right to left. Headers from untrusted
//! peers, and headers of any other kind even from trusted ones, are ignored, so a client cannot
//! choose its address.
//!
//! The accept loop resolves it once per request into a [`ClientAddress`] extension: the chat's
//! per-address cap, the auth throttle and the audit lines all key on it.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap};
use ipnet::IpNet;

use crate::config::AddressHeader;

/// Who sent a request: the resolved client and the TCP peer (the same unless a trusted proxy
/// forwarded it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress {
    pub client: IpAddr,
    pub peer: IpAddr,
}

impl ClientAddress {
    /// From a request's extensions: the resolved address, else the TCP peer of `ConnectInfo`,
    /// else (served without either) the unspecified address.
    pub fn of(extensions: &Extensions) -> Self {
        if let Some(resolved) = extensions.get::<ClientAddress>() {
            return *resolved;
        }
        let peer = extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        Self { client: peer, peer }
    }

    /// The peer, when it is not the client (for log lines that show both).
    pub fn proxy(&self) -> Option<IpAddr> {
        (self.peer != self.client).then_some(self.peer)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

/// The trusted proxies and the header they set.
#[derive(Debug, Clone)]
pub struct Resolver {
    trusted: Vec<IpNet>,
    header: AddressHeader,
}

impl Resolver {
    pub fn new(trusted: Vec<IpNet>, header: AddressHeader) -> Self {
        Self { trusted, header }
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn is_trusted(&self, ip: &IpAddr) -> bool {
        trusts(&self.trusted, ip)
    }

    /// The client address of a request from `peer`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddress {
        ClientAddress {
            client: resolve(peer, headers, &self.trusted, self.header),
            peer,
        }
    }
}

/// Resolves the client address for a request from `peer`.
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    header: AddressHeader,
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusts(trusted, ip);
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = match header {
        AddressHeader::XForwardedFor => xff_hops(headers),
        AddressHeader::Forwarded => forwarded_hops(headers),
        AddressHeader::XRealIp => real_ip_hops(headers),
    };
    // Walk from the nearest hop outward; the first untrusted address is the client.
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) => {
                client = *ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // An obfuscated or unparsable hop: stop trusting the chain there.
            None => break,
        }
    }
    client
}

fn trusts(trusted: &[IpNet], ip: &IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(ip))
}

/// `X-Real-IP` holds one address; several headers (a client's own and the proxy's) make the
/// last one count, as the proxy's is appended.
fn real_ip_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-real-ip")
        .iter()
        .next_back()
        .map(|v| vec![v.to_str().ok().and_then(|v| parse_node(v.trim()))])
        .unwrap_or_default()
}

fn xff_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

fn forwarded_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim().trim_matches('"')))
            })
        })
        .collect()
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `[::1]`, `[::1]:80` or a bare IPv6 address.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':')?.0.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }
    use AddressHeader::{Forwarded, XForwardedFor, XRealIp};

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let h = headers(&[
            ("x-forwarded-for", "9.9.9.9"),
            ("forwarded", "for=8.8.8.8"),
            ("x-real-ip", "7.7.7.7"),
        ]);
        for header in [XForwardedFor, Forwarded, XRealIp] {
            assert_eq!(
                resolve(ip("1.2.3.4"), &h, &nets(&["10.0.0.0/8"]), header),
                ip("1.2.3.4")
            );
        }
    }

    #[test]
    fn a_trusted_proxy_yields_the_nearest_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), XForwardedFor),
            ip("5.5.5.5")
        );
    }

    #[test]
    fn forwarded_is_parsed_with_ports_and_ipv6() {
        let h = headers(&[
            ("x-forwarded-for", "7.7.7.7"),
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=10.0.0.3"#,
            ),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), Forwarded),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn only_the_configured_header_counts_so_a_client_cannot_choose_its_address() {
        // The proxy appends the peer it saw to X-Forwarded-For and passes the client's own
        // Forwarded and X-Real-IP through.
        let h = headers(&[
            ("forwarded", "for=198.51.100.7"),
            ("x-real-ip", "198.51.100.8"),
            ("x-forwarded-for", "203.0.113.5"),
        ]);
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XForwardedFor),
            ip("203.0.113.5")
        );
        // A proxy that sets X-Real-IP itself: the last value (its own) counts.
        let h = headers(&[("x-real-ip", "198.51.100.8"), ("x-real-ip", "203.0.113.6")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, XRealIp),
            ip("203.0.113.6")
        );
        // The configured header missing: the proxy itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &trusted, Forwarded),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn an_unparsable_hop_stops_the_walk_at_the_last_trusted_address() {
        let h = headers(&[("forwarded", "for=_hidden, for=10.0.0.3")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"]), Forwarded),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn no_headers_from_a_trusted_proxy_leaves_the_peer() {
        assert_eq!(
            resolve(
                ip("10.0.0.1"),
                &HeaderMap::new(),
                &nets(&["10.0.0.0/8"]),
                XForwardedFor
            ),
            ip("10.0.0.1")
        );
    }
}
