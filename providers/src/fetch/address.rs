//! Which addresses the fetcher may connect to: the public-address check,
//! and the DNS resolver that applies it to every address a name resolves
//! to, so the address that is checked is the address that is connected to.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Resolves with the system resolver (or a test's fixed answers) and
/// refuses the whole name if any of its addresses is not public: a name
/// with one public and one private address must not reach the private one
/// on a retry or a second connection.
pub(super) struct GuardedResolver {
    pub(super) allow_private: bool,
    pub(super) overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_ascii_lowercase();
        let allow_private = self.allow_private;
        let overrides = Arc::clone(&self.overrides);
        Box::pin(resolve_checked(host, allow_private, overrides))
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn resolve_checked(
    host: String,
    allow_private: bool,
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
) -> Result<Addrs, BoxError> {
    // Port 0: reqwest puts the URL's (or the scheme's) port in.
    let addrs: Vec<SocketAddr> = match overrides.get(&host) {
        Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
        None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
    };
    if addrs.is_empty() {
        return Err(format!("{host} has no addresses").into());
    }
    if !allow_private && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err(Box::new(AddressRefused { host }));
    }
    Ok(Box::new(addrs.into_iter()))
}

/// The resolver's refusal, found again in reqwest's error chain to give it
/// its own code instead of a generic connection failure.
#[derive(Debug)]
pub(super) struct AddressRefused {
    host: String,
}

impl fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resolves to an address that is not allowed",
            self.host
        )
    }
}

impl std::error::Error for AddressRefused {}

/// Whether `ip` is an ordinary public internet address. Everything that
/// routes to this host, its network, a provider's internal network or
/// nowhere is refused, including IPv6 spellings that carry such an IPv4
/// address (mapped, compatible, NAT64, 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let refused = a == 0 // "this network", includes 0.0.0.0
        || a == 10 // private
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || a == 127 // loopback
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b)) // private 172.16/12
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168) // private
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // documentation TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // documentation TEST-NET-3
        || a >= 224; // multicast 224/4, reserved 240/4, broadcast
    !refused
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let seg = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));

    // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible, also :: and ::1):
    // a dual-stack socket dials the IPv4 address.
    if seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) {
        return is_public_v4(embedded_v4(seg[6], seg[7]));
    }
    // NAT64 64:ff9b::/96 reaches the embedded IPv4 address through the
    // network's translator.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded_v4(seg[6], seg[7]));
    }
    // 6to4 2002:a.b.c.d::/48 tunnels to the embedded IPv4 address.
    if seg[0] == 0x2002 {
        return is_public_v4(embedded_v4(seg[1], seg[2]));
    }
    // Only global unicast 2000::/3 is on the internet: this refuses
    // unique-local fc00::/7, link-local fe80::/10, site-local fec0::/10,
    // multicast ff00::/8, discard 100::/64, local NAT64 64:ff9b:1::/48.
    if seg[0] & 0xe000 != 0x2000 {
        return false;
    }
    let refused = match seg[0] {
        // IETF protocol assignments 2001::/23 (Teredo, benchmarking,
        // ORCHID) and documentation 2001:db8::/32.
        0x2001 => seg[1] < 0x200 || seg[1] == 0x0db8,
        // Documentation 3fff::/20.
        s => s & 0xfff0 == 0x3ff0,
    };
    !refused
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).unwrap()
    }

    #[test]
    fn public_addresses_are_allowed() {
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(is_public(ip(s)), "{s} should be public");
        }
    }

    #[test]
    fn reserved_ipv4_ranges_are_refused() {
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(!is_public(ip(s)), "{s} should be refused");
        }
    }

    #[test]
    fn reserved_ipv6_ranges_are_refused() {
        for s in [
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456:789a::1",
            "ff02::1",
            "ff0e::1",
            "100::1",
            "2001:db8::1",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "3fff::1",
            "64:ff9b:1::1",
            "4000::1",
        ] {
            assert!(!is_public(ip(s)), "{s} should be refused");
        }
    }

    #[test]
    fn ipv6_forms_of_refused_ipv4_addresses_are_refused() {
        for s in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:192.168.0.1",
            "::ffff:100.64.0.1",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:a00:1::",
            "2002:c0a8:101::1",
        ] {
            assert!(!is_public(ip(s)), "{s} should be refused");
        }
    }
}
