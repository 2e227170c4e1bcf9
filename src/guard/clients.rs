//! Which client addresses may call: allow and deny lists by CIDR. Behind trusted proxies the
//! client is the nearest untrusted address their forwarding header names: `X-Forwarded-For` or
//! `Forwarded`, whichever the proxies write (a setting). The other header is never read: a
//! client could send it itself. From anyone else both are ignored, so a client cannot choose
//! its own address.

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use std::net::IpAddr;

#[derive(Debug, Clone, Default)]
pub struct ClientPolicy {
    /// Empty: every address not denied.
    pub allow: Vec<IpNet>,
    pub deny: Vec<IpNet>,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Send the client's address upstream as `X-Forwarded-For`.
    pub forward_address: bool,
    /// Only its network: IPv4 /24, IPv6 /48 (`forwarded`).
    pub truncate_address: bool,
    /// The header the trusted proxies append to.
    pub forwarded_header: ForwardedHeader,
}

impl ClientPolicy {
    /// The address to send upstream for `client`, if any: whole, or only its network.
    pub fn forwarded(&self, client: IpAddr) -> Option<IpAddr> {
        if !self.forward_address {
            return None;
        }
        if !self.truncate_address {
            return Some(client);
        }
        Some(match client.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4((u32::from(v4) & 0xffff_ff00).into()),
            // 6to4 (2002::/16) carries an IPv4 address in its next 32 bits: keep its /24 only.
            IpAddr::V6(v6) if v6.segments()[0] == 0x2002 => {
                IpAddr::V6((u128::from(v6) & !((1u128 << 88) - 1)).into())
            }
            IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 80) - 1)).into()),
        })
    }
}

/// Which forwarding header trusted proxies write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=…`.
    Forwarded,
}

fn listed(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&addr))
}

impl ClientPolicy {
    pub fn permits(&self, addr: IpAddr) -> bool {
        !listed(&self.deny, addr) && (self.allow.is_empty() || listed(&self.allow, addr))
    }

    /// The client's address, from the peer's and, if the peer is a trusted proxy, from the
    /// values of `forwarded_header` in `headers`, in header order.
    pub fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !listed(&self.trusted_proxies, peer) {
            return peer;
        }
        let elements = |name| {
            headers
                .get_all(name)
                .into_iter()
                .flat_map(|v: &HeaderValue| v.as_bytes().split(|b| *b == b','))
        };
        let hops: Vec<Option<IpAddr>> = match self.forwarded_header {
            ForwardedHeader::XForwardedFor => elements("x-forwarded-for")
                .map(|item| parse_hop(trim(item)))
                .collect(),
            ForwardedHeader::Forwarded => elements("forwarded")
                .filter_map(forwarded_for_param)
                .map(parse_hop)
                .collect(),
        };
        // Walk from the nearest hop outwards; stop at the first address we cannot vouch for.
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(addr) = hop else { break };
            client = addr;
            if !listed(&self.trusted_proxies, addr) {
                break;
            }
        }
        client
    }
}

/// The key of per-address state: the address, or its /64 for IPv6, where one host holds many.
pub fn address_key(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
    }
}

fn trim(s: &[u8]) -> &[u8] {
    s.trim_ascii()
}

/// An address as forwarding headers write it: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]:80`, possibly quoted.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim_matches('"');
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Some(addr.to_canonical());
    }
    if let Ok(sock) = text.parse::<std::net::SocketAddr>() {
        return Some(sock.ip().to_canonical());
    }
    let inner = text.strip_prefix('[')?.split(']').next()?;
    inner.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

/// The `for=` parameter of one `Forwarded` element (RFC 7239).
fn forwarded_for_param(element: &[u8]) -> Option<&[u8]> {
    element.split(|b| *b == b';').find_map(|pair| {
        let pair = trim(pair);
        let (name, value) = pair.split_at(pair.iter().position(|b| *b == b'=')?);
        name.eq_ignore_ascii_case(b"for").then(|| trim(&value[1..]))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(trusted: &[&str]) -> ClientPolicy {
        ClientPolicy {
            trusted_proxies: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            ..ClientPolicy::default()
        }
    }

    fn addr(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn client(p: &ClientPolicy, peer: &str, xff: &[&str], fwd: &[&str]) -> IpAddr {
        let mut headers = HeaderMap::new();
        for v in xff {
            headers.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        for v in fwd {
            headers.append("forwarded", HeaderValue::from_str(v).unwrap());
        }
        p.client_address(addr(peer), &headers)
    }

    #[test]
    fn forwarding_headers_from_strangers_are_ignored() {
        let p = policy(&["10.0.0.0/8"]);
        assert_eq!(
            client(&p, "203.0.113.9", &["1.1.1.1"], &[]),
            addr("203.0.113.9")
        );
    }

    #[test]
    fn the_nearest_untrusted_hop_is_the_client() {
        let p = policy(&["10.0.0.0/8"]);
        // The client wrote a fake first entry; the proxies appended the real one.
        let got = client(&p, "10.0.0.2", &["6.6.6.6, 198.51.100.7", "10.0.0.1"], &[]);
        assert_eq!(got, addr("198.51.100.7"));
        assert_eq!(client(&p, "10.0.0.2", &[], &[]), addr("10.0.0.2"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_trusted_hop() {
        let p = policy(&["10.0.0.0/8"]);
        assert_eq!(
            client(&p, "10.0.0.2", &["1.2.3.4, nonsense"], &[]),
            addr("10.0.0.2")
        );
    }

    #[test]
    fn only_the_configured_header_is_read() {
        let mut p = policy(&["10.0.0.0/8"]);
        // The balancer writes X-Forwarded-For: a client's own Forwarded is ignored.
        assert_eq!(
            client(&p, "10.0.0.2", &[], &["for=6.6.6.6"]),
            addr("10.0.0.2")
        );
        p.forwarded_header = ForwardedHeader::Forwarded;
        // The balancer writes Forwarded: a client's own X-Forwarded-For is ignored.
        assert_eq!(
            client(&p, "10.0.0.2", &["6.6.6.6"], &["for=198.51.100.7"]),
            addr("198.51.100.7")
        );
        assert_eq!(client(&p, "10.0.0.2", &["6.6.6.6"], &[]), addr("10.0.0.2"));
    }

    #[test]
    fn a_forwarded_address_is_whole_or_its_network_and_never_sent_unasked() {
        let mut p = ClientPolicy::default();
        assert_eq!(p.forwarded(addr("192.0.2.61")), None);
        p.forward_address = true;
        assert_eq!(p.forwarded(addr("192.0.2.61")), Some(addr("192.0.2.61")));
        p.truncate_address = true;
        assert_eq!(p.forwarded(addr("192.0.2.61")), Some(addr("192.0.2.0")));
        assert_eq!(
            p.forwarded(addr("2001:db8:cafe:17:1:2:3:4")),
            Some(addr("2001:db8:cafe::"))
        );
        // 6to4 of 192.0.2.61 keeps 192.0.2 only; a mapped IPv4 address is cut as IPv4.
        assert_eq!(
            p.forwarded(addr("2002:c000:23d:1::5")),
            Some(addr("2002:c000:200::"))
        );
        assert_eq!(
            p.forwarded(addr("::ffff:192.0.2.61")),
            Some(addr("192.0.2.0"))
        );
    }

    #[test]
    fn forwarded_elements_name_the_hops() {
        let p = ClientPolicy {
            forwarded_header: ForwardedHeader::Forwarded,
            ..policy(&["10.0.0.0/8", "::1/128"])
        };
        let fwd = [r#"for=192.0.2.60;proto=https, For="[2001:db8:cafe::17]:4711""#];
        assert_eq!(client(&p, "::1", &[], &fwd), addr("2001:db8:cafe::17"));
        assert_eq!(
            client(&p, "10.1.1.1", &[], &["for=192.0.2.61:8080"]),
            addr("192.0.2.61")
        );
    }

    #[test]
    fn mapped_v4_addresses_match_v4_lists() {
        let p = ClientPolicy {
            deny: vec!["192.0.2.0/24".parse().unwrap()],
            ..ClientPolicy::default()
        };
        let mapped = client(&p, "::ffff:192.0.2.1", &[], &[]);
        assert!(!p.permits(mapped));
        assert!(p.permits(addr("198.51.100.1")));
    }

    #[test]
    fn allow_lists_admit_only_their_members_and_deny_wins() {
        let p = ClientPolicy {
            allow: vec!["127.0.0.0/8".parse().unwrap()],
            deny: vec!["127.0.0.2/32".parse().unwrap()],
            ..ClientPolicy::default()
        };
        assert!(p.permits(addr("127.0.0.1")));
        assert!(!p.permits(addr("127.0.0.2")));
        assert!(!p.permits(addr("192.0.2.1")));
    }

    #[test]
    fn v6_keys_cover_a_slash_64() {
        assert_eq!(address_key(addr("2001:db8::1:2")), addr("2001:db8::"));
        assert_eq!(address_key(addr("192.0.2.1")), addr("192.0.2.1"));
    }
}
