//! Which addresses a routed preview may reach by name: the IANA
//! special-purpose address registries (RFC 6890 and its updates) read as
//! "not globally reachable", and the networks an app opted into. Pure
//! functions, no IO; the machine's own interface addresses come from
//! `upstream.rs`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::answer::error::ConfigError;

/// An IP network: `10.0.0.0/8`, `fd00::/8`, or one address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `x::y/n`, or a bare address (the whole address).
    pub(crate) fn parse(s: &str) -> Option<Cidr> {
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, prefix)) => (ip.parse::<IpAddr>().ok()?, Some(prefix.parse::<u8>().ok()?)),
            None => (s.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return None;
        }
        Some(match ip {
            IpAddr::V6(v6) => v4_network(v6, prefix).unwrap_or(Cidr { network: mask(ip, prefix), prefix }),
            IpAddr::V4(_) => Cidr { network: mask(ip, prefix), prefix },
        })
    }

    /// Whether `ip`, as given or in the IPv4 form it stands for, is in this network.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let matches = |ip: IpAddr| ip.is_ipv4() == self.network.is_ipv4() && mask(ip, self.prefix) == self.network;
        matches(ip) || matches(canonical(ip))
    }
}

/// An IPv6 network made only of the IPv6 forms of an IPv4 network (IPv4-mapped,
/// NAT64 or IPv4-compatible ones at /96 and longer, 6to4 ones from /16 to /48),
/// as that IPv4 network: addresses are compared in their IPv4 form.
fn v4_network(v6: Ipv6Addr, prefix: u8) -> Option<Cidr> {
    let bits = u128::from(v6);
    let v4 = |address: u32, prefix: u8| Cidr { network: mask(IpAddr::V4(Ipv4Addr::from(address)), prefix), prefix };
    let low_32 = [0xffff_u128 << 32, 0x0064_ff9b_u128 << 96, 0];
    if prefix >= 96 && low_32.iter().any(|&network| in_v6(v6, network, 96)) {
        return Some(v4(bits as u32, prefix - 96));
    }
    if (16..=48).contains(&prefix) && in_v6(v6, 0x2002 << 112, 16) {
        return Some(v4((bits >> 80) as u32, prefix - 16));
    }
    None
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// The IPv4 address an IPv6 address stands for, in any form a connect may
/// reach it by (IPv4-mapped, NAT64, 6to4, and the deprecated IPv4-compatible
/// `::a.b.c.d`); else the address itself. Used to compare with the machine's
/// own addresses and the networks an app opted into.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).or_else(|| ipv4_compatible(v6)).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `::a.b.c.d` (but `::` and `::1`, which are IPv6's own).
fn ipv4_compatible(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    (bits >> 32 == 0 && bits > 1).then(|| Ipv4Addr::from(bits as u32))
}

fn in_v4(ip: Ipv4Addr, network: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(network)) & mask
}

fn in_v6(ip: Ipv6Addr, network: u128, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == network & mask
}

/// IPv4 networks the IANA registry marks not globally reachable (and the
/// deprecated 6to4 relay anycast prefix).
const NOT_GLOBAL_V4: [([u8; 4], u32); 16] = [
    ([0, 0, 0, 0], 8),       // "this network" (RFC 791)
    ([10, 0, 0, 0], 8),      // private (RFC 1918)
    ([100, 64, 0, 0], 10),   // shared address space, CGNAT and VPNs such as Tailscale (RFC 6598)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments (RFC 6890)
    ([192, 0, 2, 0], 24),    // documentation (TEST-NET-1)
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated, RFC 7526)
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking (RFC 2544)
    ([198, 51, 100, 0], 24), // documentation (TEST-NET-2)
    ([203, 0, 113, 0], 24),  // documentation (TEST-NET-3)
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, and the limited broadcast 255.255.255.255
    ([255, 255, 255, 255], 32),
];

/// IPv6 networks the IANA registry marks not globally reachable. The
/// IPv4-mapped, NAT64 and 6to4 forms are judged by the IPv4 address inside.
const NOT_GLOBAL_V6: [(u128, u32); 11] = [
    (0, 96),                      // unspecified, loopback and IPv4-compatible (deprecated)
    (0x0064_ff9b_0001 << 80, 48), // local-use NAT64 (RFC 8215)
    (0x0100 << 112, 64),          // discard-only (RFC 6666)
    (0x2001_0db8 << 96, 32),      // documentation
    (0x3fff << 112, 20),          // documentation (RFC 9637)
    (0x5f00 << 112, 16),          // segment routing SIDs (RFC 9602)
    (0xfc00 << 112, 7),           // unique local, fc00::/7 (RFC 4193)
    (0xfe80 << 112, 10),          // link-local
    (0xfec0 << 112, 10),          // site-local (deprecated)
    (0xff00 << 112, 8),           // multicast
    (0x2001 << 112, 23),          // IETF protocol assignments, but for the exceptions below
];

/// The globally reachable exceptions inside 2001::/23.
const GLOBAL_IN_2001_23: [(u128, u32); 6] = [
    ((0x2001_0001 << 96) | 1, 128), // PCP anycast
    ((0x2001_0001 << 96) | 2, 128), // TURN anycast
    (0x2001_0003 << 96, 32),        // AMT
    (0x2001_0004_0112 << 80, 48),   // AS112-v6
    (0x2001_0020 << 96, 28),        // ORCHIDv2
    (0x2001_0030 << 96, 28),        // drone remote ID
];

/// Whether `ip` is globally reachable: not in any special-purpose network
/// that the IANA registries mark otherwise.
pub(crate) fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !NOT_GLOBAL_V4.iter().any(|&(network, prefix)| in_v4(v4, network, prefix)),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_global(IpAddr::V4(v4));
            }
            let special = NOT_GLOBAL_V6.iter().any(|&(network, prefix)| in_v6(v6, network, prefix));
            !special || GLOBAL_IN_2001_23.iter().any(|&(network, prefix)| in_v6(v6, network, prefix))
        }
    }
}

/// The IPv4 address an IPv6 address stands for: IPv4-mapped (`::ffff:a.b.c.d`),
/// the well-known NAT64 prefix (`64:ff9b::a.b.c.d`) and 6to4 (`2002:AABB:CCDD::`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(v6);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    if in_v6(v6, 0x0064_ff9b << 96, 96) {
        return Some(Ipv4Addr::from(bits as u32));
    }
    if in_v6(v6, 0x2002 << 112, 16) {
        return Some(Ipv4Addr::from((bits >> 80) as u32));
    }
    None
}

/// Whether `ip` is this machine or its link by its range alone: loopback,
/// unspecified (which connects to loopback) and link-local (where cloud
/// metadata services live), in any of their forms.
pub(crate) fn is_machine_or_link(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified() || v4.is_link_local(),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_machine_or_link(IpAddr::V4(v4)),
            None => v6.is_loopback() || v6.is_unspecified() || in_v6(v6, 0xfe80 << 112, 10),
        },
    }
}

/// The non-global networks an app lets routed previews reach (a corporate API
/// over a VPN): all of them, or some. Never the machine itself or its link.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct PrivateNetworks {
    pub(crate) all: bool,
    pub(crate) listed: Arc<[Cidr]>,
}

impl PrivateNetworks {
    pub(crate) fn permits(&self, ip: IpAddr) -> bool {
        self.all || self.listed.iter().any(|cidr| cidr.contains(ip))
    }

    /// What both allow: a route's own opt-in on top of the server's.
    pub(crate) fn union(&self, other: &PrivateNetworks) -> PrivateNetworks {
        PrivateNetworks {
            all: self.all || other.all,
            listed: self.listed.iter().chain(other.listed.iter()).copied().collect(),
        }
    }

    /// Parses `allowedNetworks`; the error names the entry.
    pub(crate) fn parse(all: bool, listed: &[String]) -> Result<PrivateNetworks, ConfigError> {
        let listed = listed
            .iter()
            .map(|s| {
                Cidr::parse(s).ok_or_else(|| {
                    ConfigError::new(
                        "allowedNetworks",
                        format!("{s:?} is not an IP network such as 10.0.0.0/8 or fd00::/8"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PrivateNetworks { all, listed: listed.into() })
    }
}

/// Why a routed preview may not connect to an address it resolved.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Loopback, unspecified, link-local, or one of the machine's own interface addresses.
    ThisMachine,
    /// A private or other special-purpose network the app did not opt into.
    PrivateNetwork,
}

/// The verdict for one resolved address of a routed preview's request.
pub(crate) fn check(ip: IpAddr, own_addresses: &[IpAddr], allowed: &PrivateNetworks) -> Result<(), Refusal> {
    let plain = canonical(ip);
    if is_machine_or_link(plain) || own_addresses.iter().any(|own| canonical(*own) == plain) {
        return Err(Refusal::ThisMachine);
    }
    // Globality is judged on the address as given: `::8.8.8.8` is no global address.
    if !is_global(ip) && !allowed.permits(plain) {
        return Err(Refusal::PrivateNetwork);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_purpose_addresses_are_not_global() {
        for s in [
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "169.254.1.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.1.2.3",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::10.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:192.168.1.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::7f00:1",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:db8::1",
            "2002:0a00:0001::1",
            "2002:c0a8:0101::",
            "3fff::1",
            "5f00::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(!is_global(ip(s)), "{s}");
        }
    }

    #[test]
    fn public_addresses_are_global() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
            "2001:3::1",
            "2001:1::1",
            "2001:20::1",
        ] {
            assert!(is_global(ip(s)), "{s}");
        }
    }

    #[test]
    fn networks_parse_and_contain() {
        let net = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(net.contains(ip("10.1.2.3")) && net.contains(ip("::ffff:10.1.2.3")) && !net.contains(ip("10.2.0.1")));
        assert_eq!(Cidr::parse("10.1.2.3/16").unwrap().to_string(), "10.1.0.0/16");
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(!Cidr::parse("fd00::/8").unwrap().contains(ip("10.0.0.1")));
        assert!(Cidr::parse("192.168.1.5").unwrap().contains(ip("192.168.1.5")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        // An IPv4 network written in an IPv6 form is that network, in every form.
        let mapped = Cidr::parse("::ffff:10.1.0.0/112").unwrap();
        assert_eq!(mapped.to_string(), "10.1.0.0/16");
        assert!(mapped.contains(ip("10.1.2.3")) && mapped.contains(ip("64:ff9b::a01:203")));
        assert_eq!(Cidr::parse("64:ff9b::a00:0/104").unwrap().to_string(), "10.0.0.0/8");
        let six_to_four = Cidr::parse("2002:a00::/24").unwrap();
        assert_eq!(six_to_four.to_string(), "10.0.0.0/8");
        assert!(six_to_four.contains(ip("2002:a01:203::1")) && six_to_four.contains(ip("10.9.9.9")));
        assert_eq!(Cidr::parse("2002:a00:1::/112").unwrap().to_string(), "2002:a00:1::/112");
        // `::/96` is every IPv4 address in its IPv4-compatible form: all of IPv4 (`::` and `::1`, IPv6's own, are
        // this machine whatever a network says).
        assert_eq!(Cidr::parse("::/96").unwrap().to_string(), "0.0.0.0/0");
        // Other IPv6 networks stay IPv6, and still hold their own addresses.
        assert!(Cidr::parse("2002::/15").unwrap().contains(ip("2002:a00:1::1")));
        for bad in ["10.0.0.0/33", "fd00::/129", "nope", "10.0.0.0/", "/8", ""] {
            assert_eq!(Cidr::parse(bad), None, "{bad}");
        }
        let error = PrivateNetworks::parse(false, &["10.0.0.0/8".into(), "x".into()]).unwrap_err();
        assert_eq!(error.field, "allowedNetworks");
        assert!(error.reason.contains("\"x\""), "{error}");
    }

    #[test]
    fn routed_previews_reach_public_addresses_and_opted_in_networks_only() {
        let none = PrivateNetworks::default();
        let own = [ip("192.168.1.20"), ip("fd7a:115c:a1e0::1")];
        assert_eq!(check(ip("8.8.8.8"), &own, &none), Ok(()));
        assert_eq!(check(ip("10.0.0.5"), &own, &none), Err(Refusal::PrivateNetwork));
        assert_eq!(check(ip("100.100.1.1"), &own, &none), Err(Refusal::PrivateNetwork));
        assert_eq!(check(ip("127.0.0.1"), &own, &none), Err(Refusal::ThisMachine));
        assert_eq!(check(ip("::ffff:127.0.0.1"), &own, &none), Err(Refusal::ThisMachine));
        assert_eq!(check(ip("0.0.0.0"), &own, &none), Err(Refusal::ThisMachine));
        assert_eq!(check(ip("192.168.1.20"), &own, &none), Err(Refusal::ThisMachine));
        assert_eq!(check(ip("::ffff:192.168.1.20"), &own, &none), Err(Refusal::ThisMachine));
        // An own address that is public is still this machine.
        assert_eq!(check(ip("203.0.114.1"), &[ip("203.0.114.1")], &none), Err(Refusal::ThisMachine));

        let vpn = PrivateNetworks::parse(false, &["10.0.0.0/8".into()]).unwrap();
        assert_eq!(check(ip("10.0.0.5"), &own, &vpn), Ok(()));
        assert_eq!(check(ip("172.16.0.1"), &own, &vpn), Err(Refusal::PrivateNetwork));
        let all = PrivateNetworks { all: true, ..Default::default() };
        assert_eq!(check(ip("172.16.0.1"), &own, &all), Ok(()));
        assert_eq!(check(ip("fd00::1"), &own, &all), Ok(()));
        // The machine stays out of reach whatever the opt-in.
        assert_eq!(check(ip("127.0.0.1"), &own, &all), Err(Refusal::ThisMachine));
        assert_eq!(check(ip("192.168.1.20"), &own, &all), Err(Refusal::ThisMachine));
        assert_eq!(check(ip("169.254.169.254"), &own, &all), Err(Refusal::ThisMachine));
        assert_eq!(check(ip("fe80::1"), &own, &all), Err(Refusal::ThisMachine));
        let everything = PrivateNetworks::parse(false, &["0.0.0.0/0".into()]).unwrap();
        assert_eq!(check(ip("127.0.0.1"), &own, &everything), Err(Refusal::ThisMachine));
        // The machine in every IPv6 form of its IPv4 addresses, whatever the opt-in.
        for form in ["::127.0.0.1", "::169.254.169.254", "64:ff9b::c0a8:114", "2002:c0a8:114::1", "::192.168.1.20"] {
            assert_eq!(check(ip(form), &own, &all), Err(Refusal::ThisMachine), "{form}");
        }
        // An opted-in IPv4 network in its IPv6 forms; the IPv4-compatible form of a public address is not public.
        assert_eq!(check(ip("64:ff9b::a00:5"), &own, &vpn), Ok(()));
        assert_eq!(check(ip("::ffff:10.0.0.5"), &own, &vpn), Ok(()));
        assert_eq!(check(ip("::8.8.8.8"), &own, &none), Err(Refusal::PrivateNetwork));
        assert_eq!(vpn.union(&all), PrivateNetworks { all: true, listed: vpn.listed.clone() });
    }
}
