//! The client's address: the TCP peer, unless the peer is a trusted proxy, in which case the
//! nearest untrusted hop of `Forwarded` (RFC 7239) or, failing that, `X-Forwarded-For`.
//! Headers from untrusted peers are ignored, so clients cannot spoof their address.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// Resolves the client address for a request from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops = forwarded_hops(headers).unwrap_or_else(|| xff_hops(headers));
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

fn xff_hops(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// `None` when no `Forwarded` header carries a `for=` parameter.
fn forwarded_hops(headers: &HeaderMap) -> Option<Vec<Option<IpAddr>>> {
    let hops: Vec<_> = headers
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
        .collect();
    (!hops.is_empty()).then_some(hops)
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

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let h = headers(&[("x-forwarded-for", "9.9.9.9"), ("forwarded", "for=8.8.8.8")]);
        assert_eq!(
            resolve(ip("1.2.3.4"), &h, &nets(&["10.0.0.0/8"])),
            ip("1.2.3.4")
        );
    }

    #[test]
    fn a_trusted_proxy_yields_the_nearest_untrusted_hop() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.0.0.2")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("5.5.5.5")
        );
    }

    #[test]
    fn forwarded_is_preferred_and_parsed_with_ports_and_ipv6() {
        let h = headers(&[
            ("x-forwarded-for", "7.7.7.7"),
            (
                "forwarded",
                r#"for="[2001:db8::1]:4711";proto=https, for=10.0.0.3"#,
            ),
        ]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn an_unparsable_hop_stops_the_walk_at_the_last_trusted_address() {
        let h = headers(&[("forwarded", "for=_hidden, for=10.0.0.3")]);
        assert_eq!(
            resolve(ip("10.0.0.1"), &h, &nets(&["10.0.0.0/8"])),
            ip("10.0.0.3")
        );
    }

    #[test]
    fn no_headers_from_a_trusted_proxy_leaves_the_peer() {
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &nets(&["10.0.0.0/8"])),
            ip("10.0.0.1")
        );
    }
}
