//! IP address blocks (CIDR): the validators' address policy, the IP ranges
//! policy allows, and the iPAddress subtrees of name constraints.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 CIDR block (`10.0.0.0/8`, `fd00::/8`; a bare address is
/// a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    network: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// An IPv4 block.
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
        IpNet {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    /// An IPv6 block.
    pub const fn v6(segments: [u16; 8], prefix: u8) -> IpNet {
        let [a, b, c, d, e, f, g, h] = segments;
        IpNet {
            network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The block's first address.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The block of one address (/32 or /128).
    pub fn host(ip: IpAddr) -> IpNet {
        let ip = canonical(ip);
        IpNet {
            network: ip,
            prefix: if ip.is_ipv4() { 32 } else { 128 },
        }
    }

    /// A block from an address and its prefix length; host bits are
    /// cleared. `None` when the prefix is longer than the address.
    pub fn new(ip: IpAddr, prefix: u8) -> Option<IpNet> {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        (prefix <= max).then(|| {
            let network = match ip {
                IpAddr::V4(v4) => {
                    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                    IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
                }
                IpAddr::V6(v6) => {
                    let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
                }
            };
            IpNet { network, prefix }
        })
    }

    /// Whether every address of `other` is inside this block.
    pub fn covers(&self, other: &IpNet) -> bool {
        self.prefix <= other.prefix
            && self.network.is_ipv4() == other.network.is_ipv4()
            && self.contains(other.network)
    }

    /// Whether `ip` is inside this block (IPv4-mapped IPv6 addresses count
    /// as their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an IP network like 10.0.0.0/8 or fd00::/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        // Host bits are cleared so the block prints as it matches.
        IpNet::new(network, prefix).ok_or_else(bad)
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The ranges `policy.allowed_ip_ranges` holds by default: the private,
/// shared (carrier-grade NAT) and loopback blocks of IPv4 (RFC 1918, 6598,
/// 1122) and the loopback and unique-local blocks of IPv6 (RFC 4291, 4193).
/// Public addresses are left out: a private CA that could vouch for them
/// would be a risk to every client that trusts its root.
pub const PRIVATE_RANGES: [IpNet; 7] = [
    IpNet::v4(10, 0, 0, 0, 8),
    IpNet::v4(172, 16, 0, 0, 12),
    IpNet::v4(192, 168, 0, 0, 16),
    IpNet::v4(100, 64, 0, 0, 10),
    IpNet::v4(127, 0, 0, 0, 8),
    IpNet::v6([0, 0, 0, 0, 0, 0, 0, 1], 128),
    IpNet::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
];

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) as the IPv4 address it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_cover_blocks_of_their_own_family_only() {
        assert!(net("10.0.0.0/8").covers(&net("10.2.0.0/16")));
        assert!(net("10.0.0.0/8").covers(&net("10.0.0.0/8")));
        assert!(!net("10.2.0.0/16").covers(&net("10.0.0.0/8")));
        assert!(!net("10.0.0.0/8").covers(&net("11.0.0.0/16")));
        assert!(!net("0.0.0.0/0").covers(&net("::1/128")));
        assert!(net("fc00::/7").covers(&net("fd12:3456::/48")));
        assert_eq!(
            IpNet::host("::ffff:10.1.2.3".parse().unwrap()),
            net("10.1.2.3/32")
        );
        assert_eq!(
            IpNet::new("10.9.9.9".parse().unwrap(), 8),
            Some(net("10.0.0.0/8"))
        );
        assert_eq!(IpNet::new("10.9.9.9".parse().unwrap(), 33), None);
    }

    #[test]
    fn the_default_ranges_are_private() {
        for ip in [
            "10.1.2.3",
            "172.31.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "::1",
            "fd00::1",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(PRIVATE_RANGES.iter().any(|n| n.contains(ip)), "{ip}");
        }
        for ip in ["8.8.8.8", "172.32.0.1", "2001:db8::1", "169.254.169.254"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert!(!PRIVATE_RANGES.iter().any(|n| n.contains(ip)), "{ip}");
        }
    }
}
