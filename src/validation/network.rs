//! Which addresses validators may connect to.
//!
//! Internal names that resolve to private addresses are this CA's whole
//! purpose, so private ranges are allowed. What is refused by default is
//! what a requester could only want to reach *through* the CA:
//!
//! - link-local addresses (169.254.0.0/16, fe80::/10), where cloud
//!   metadata services live, and the other well-known metadata addresses;
//! - addresses that are not one host (unspecified, multicast, broadcast,
//!   reserved 240.0.0.0/4);
//! - the CA's own listeners: an address of this host on a port the CA
//!   listens on.
//!
//! Operators add `validation.deny_networks` and `validation.allow_networks`
//! (CIDR blocks). The most specific block that contains an address decides;
//! at equal length, deny wins; an address no block contains falls back to
//! the defaults above. The own-listener rule cannot be lifted.
//!
//! Every check is made on the address the validator then connects to:
//! http-01 resolves through a resolver that filters with this policy and
//! hands only the allowed addresses to the connection, tls-alpn-01 connects
//! to the address it checked, so DNS rebinding between check and connect
//! is impossible.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use crate::pki::net::canonical;
pub use crate::pki::net::IpNet;

/// The blocks refused unless an operator allows them, with why.
const DEFAULT_DENIED: &[(IpNet, &str)] = &[
    (IpNet::v4(0, 0, 0, 0, 8), "an unspecified address"),
    (
        IpNet::v4(169, 254, 0, 0, 16),
        "link-local, where cloud metadata services answer",
    ),
    (
        IpNet::v4(100, 100, 100, 200, 32),
        "a cloud metadata service",
    ),
    (IpNet::v4(168, 63, 129, 16, 32), "a cloud metadata service"),
    (IpNet::v4(224, 0, 0, 0, 4), "multicast"),
    (IpNet::v4(240, 0, 0, 0, 4), "reserved or broadcast"),
    (
        IpNet::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        "an unspecified address",
    ),
    (
        IpNet::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "link-local, where cloud metadata services answer",
    ),
    (
        IpNet::v6([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254], 128),
        "a cloud metadata service",
    ),
    (IpNet::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// In a block refused by default.
    Default(&'static str),
    /// In a `validation.deny_networks` block.
    Denied(IpNet),
    /// One of the CA's own listeners.
    OwnListener(SocketAddr),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Default(why) => write!(f, "it is {why}"),
            Refusal::Denied(net) => write!(f, "it is in {net}, listed in validation.deny_networks"),
            Refusal::OwnListener(listener) => {
                write!(f, "it is this CA's own listener {listener}")
            }
        }
    }
}

/// The address policy of the validators.
#[derive(Debug, Clone, Default)]
pub struct NetworkPolicy {
    deny: Vec<IpNet>,
    allow: Vec<IpNet>,
    listeners: Vec<SocketAddr>,
}

impl NetworkPolicy {
    /// A policy from the operator's lists and the CA's listen addresses.
    pub fn new(deny: Vec<IpNet>, allow: Vec<IpNet>, listeners: Vec<SocketAddr>) -> NetworkPolicy {
        NetworkPolicy {
            deny,
            allow,
            listeners,
        }
    }

    /// Whether a validator may connect to `ip`, on any of `ports`.
    pub fn check(&self, ip: IpAddr, ports: &[u16]) -> Result<(), Refusal> {
        let ip = canonical(ip);
        for listener in &self.listeners {
            if ports.contains(&listener.port()) && reaches(ip, listener.ip()) {
                return Err(Refusal::OwnListener(*listener));
            }
        }
        let deny = self
            .deny
            .iter()
            .filter(|n| n.contains(ip))
            .max_by_key(|n| n.prefix());
        let allow = self
            .allow
            .iter()
            .filter(|n| n.contains(ip))
            .max_by_key(|n| n.prefix());
        match (deny, allow) {
            (Some(d), Some(a)) if a.prefix() > d.prefix() => Ok(()),
            (Some(d), _) => Err(Refusal::Denied(*d)),
            (None, Some(_)) => Ok(()),
            (None, None) => match DEFAULT_DENIED.iter().find(|(net, _)| net.contains(ip)) {
                Some((_, why)) => Err(Refusal::Default(why)),
                None => Ok(()),
            },
        }
    }
}

/// Whether connecting to `ip` reaches a socket bound to `bound`.
fn reaches(ip: IpAddr, bound: IpAddr) -> bool {
    let bound = canonical(bound);
    if bound.is_unspecified() {
        // Bound to every address: any address of this host reaches it.
        // An address is this host's if a socket can be bound to it.
        ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
    } else {
        ip == bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let net: IpNet = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains(ip("10.200.0.1")));
        assert!(net.contains(ip("::ffff:10.0.0.1")));
        assert!(!net.contains(ip("11.0.0.1")));
        let host: IpNet = "fd00::1".parse().unwrap();
        assert_eq!(host.prefix(), 128);
        assert!(host.contains(ip("fd00::1")) && !host.contains(ip("fd00::2")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")) && !all.contains(ip("::1")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_refuse_metadata_and_link_local_not_private_ranges() {
        let policy = NetworkPolicy::default();
        for refused in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::",
        ] {
            assert!(policy.check(ip(refused), &[80]).is_err(), "{refused}");
        }
        for allowed in [
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "fd12::1",
            "127.0.0.1",
        ] {
            assert_eq!(policy.check(ip(allowed), &[80]), Ok(()), "{allowed}");
        }
    }

    #[test]
    fn the_most_specific_operator_block_decides() {
        let policy = NetworkPolicy::new(
            vec![
                "10.0.0.0/8".parse().unwrap(),
                "10.9.9.9/32".parse().unwrap(),
            ],
            vec![
                "10.9.0.0/16".parse().unwrap(),
                "169.254.10.0/24".parse().unwrap(),
            ],
            vec![],
        );
        assert!(matches!(
            policy.check(ip("10.1.1.1"), &[80]),
            Err(Refusal::Denied(_))
        ));
        assert_eq!(policy.check(ip("10.9.1.1"), &[80]), Ok(()));
        assert!(policy.check(ip("10.9.9.9"), &[80]).is_err());
        assert_eq!(policy.check(ip("169.254.10.7"), &[80]), Ok(()));
        assert!(policy.check(ip("169.254.169.254"), &[80]).is_err());
        let tie = NetworkPolicy::new(
            vec!["192.168.0.0/16".parse().unwrap()],
            vec!["192.168.0.0/16".parse().unwrap()],
            vec![],
        );
        assert!(tie.check(ip("192.168.1.1"), &[80]).is_err());
    }

    #[test]
    fn own_listeners_are_refused_on_their_ports_only() {
        let policy = NetworkPolicy::new(
            vec![],
            vec!["0.0.0.0/0".parse().unwrap()],
            vec![
                "127.0.0.1:8080".parse().unwrap(),
                "0.0.0.0:8443".parse().unwrap(),
            ],
        );
        assert_eq!(
            policy.check(ip("127.0.0.1"), &[8080]),
            Err(Refusal::OwnListener("127.0.0.1:8080".parse().unwrap()))
        );
        assert_eq!(policy.check(ip("127.0.0.1"), &[80]), Ok(()));
        assert_eq!(policy.check(ip("127.0.0.2"), &[8080]), Ok(()));
        // Bound to every address: loopback and this host's addresses.
        assert!(policy.check(ip("127.0.0.5"), &[8443]).is_err());
        assert_eq!(policy.check(ip("192.0.2.1"), &[8443]), Ok(()));
    }
}
