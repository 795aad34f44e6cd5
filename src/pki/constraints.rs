//! Name constraints (RFC 5280 §4.2.1.10) on the issuing intermediate: the
//! DNS subtrees and IP blocks it may vouch for. A relying party (OpenSSL,
//! browsers, Go, rustls/webpki) refuses any certificate below it that names
//! something else, so a stolen or misused intermediate cannot make a
//! certificate for a public name that clients trusting the root accept.
//!
//! The extension is critical. Each name form is constrained only when the
//! permitted subtrees hold an entry of that form, so hallmark always writes
//! both forms: DNS subtrees and IP blocks.

use std::net::IpAddr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, GeneralSubtree, ParsedExtension};

use super::der;
use super::net::IpNet;
use super::Identifier;

/// The subtrees an issuing CA may certify names in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameConstraints {
    /// Permitted DNS subtrees: `internal` permits `internal` and every name
    /// below it; `.internal` only the names below it.
    pub dns: Vec<String>,
    /// Permitted IP blocks.
    pub ip: Vec<IpNet>,
    /// Excluded DNS subtrees (only in intermediates signed elsewhere).
    pub excluded_dns: Vec<String>,
    /// Excluded IP blocks (only in intermediates signed elsewhere).
    pub excluded_ip: Vec<IpNet>,
}

/// Whether the DNS subtree `constraint` holds `name` (RFC 5280: a name
/// formed by adding zero or more labels to the left; with a leading dot,
/// one or more).
fn dns_holds(constraint: &str, name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let constraint = constraint.to_ascii_lowercase();
    if constraint.is_empty() {
        return true;
    }
    match constraint.strip_prefix('.') {
        Some(_) => name.ends_with(&constraint),
        None => name == constraint || name.ends_with(&format!(".{constraint}")),
    }
}

/// Whether the DNS subtree `constraint` holds every name strictly below
/// `suffix` (what `policy.allowed_suffixes` lets hallmark certify).
fn dns_holds_below(constraint: &str, suffix: &str) -> bool {
    let bare = constraint.strip_prefix('.').unwrap_or(constraint);
    bare.is_empty() || dns_holds(bare, suffix)
}

impl NameConstraints {
    /// Whether a certificate may name `identifier` under these constraints.
    pub fn permits(&self, identifier: &Identifier) -> bool {
        match identifier {
            Identifier::Dns(name) => {
                (self.dns.is_empty() || self.dns.iter().any(|c| dns_holds(c, name)))
                    && !self.excluded_dns.iter().any(|c| dns_holds(c, name))
            }
            Identifier::Ip(ip) => self.permits_ip(*ip),
        }
    }

    fn permits_ip(&self, ip: IpAddr) -> bool {
        (self.ip.is_empty() || self.ip.iter().any(|n| n.contains(ip)))
            && !self.excluded_ip.iter().any(|n| n.contains(ip))
    }

    /// Whether every name strictly below `suffix` is in a permitted subtree.
    /// (Excluded subtrees narrow what may be issued; they are checked name
    /// by name.)
    pub fn permits_below(&self, suffix: &str) -> bool {
        self.dns.is_empty() || self.dns.iter().any(|c| dns_holds_below(c, suffix))
    }

    /// Whether every address of `net` is in a permitted block.
    pub fn permits_net(&self, net: &IpNet) -> bool {
        self.ip.is_empty() || self.ip.iter().any(|n| n.covers(net))
    }

    /// The permitted subtrees as text, for messages.
    pub fn describe(&self) -> String {
        let all: Vec<String> = self
            .dns
            .iter()
            .cloned()
            .chain(self.ip.iter().map(IpNet::to_string))
            .collect();
        if all.is_empty() {
            "no permitted subtrees".into()
        } else {
            all.join(", ")
        }
    }

    /// The constraints of a CA certificate: `Ok(None)` when it has none.
    /// Subtrees of other forms (directoryName, email, URI) do not concern
    /// what hallmark issues and are ignored.
    pub fn of(cert: &X509Certificate<'_>) -> Result<Option<NameConstraints>, String> {
        cert.tbs_certificate
            .extensions()
            .iter()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::NameConstraints(nc) => Some(nc),
                _ => None,
            })
            .map(Self::from_parsed)
            .transpose()
    }

    /// The constraints of a parsed extension (a certificate's, or one a
    /// CSR requests).
    pub fn from_parsed(
        nc: &x509_parser::extensions::NameConstraints<'_>,
    ) -> Result<NameConstraints, String> {
        let mut out = NameConstraints::default();
        let read = |subtrees: &Option<Vec<GeneralSubtree<'_>>>,
                    dns: &mut Vec<String>,
                    ip: &mut Vec<IpNet>|
         -> Result<(), String> {
            for subtree in subtrees.iter().flatten() {
                match &subtree.base {
                    GeneralName::DNSName(name) => dns.push(name.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => ip.push(ip_subtree(bytes)?),
                    _ => {}
                }
            }
            Ok(())
        };
        read(&nc.permitted_subtrees, &mut out.dns, &mut out.ip)?;
        read(
            &nc.excluded_subtrees,
            &mut out.excluded_dns,
            &mut out.excluded_ip,
        )?;
        Ok(out)
    }

    /// The DER extnValue of the extension (RFC 5280 §4.2.1.10), for a CSR's
    /// extensionRequest, where rcgen writes no name constraints.
    pub fn to_der_value(&self) -> Vec<u8> {
        fn subtrees(out: &mut Vec<u8>, tag: u8, dns: &[String], ip: &[IpNet]) {
            if dns.is_empty() && ip.is_empty() {
                return;
            }
            der::nested(out, tag, |out| {
                for d in dns {
                    der::nested(out, 0x30, |out| der::tlv(out, 0x82, d.as_bytes()));
                }
                for n in ip {
                    let (addr, mask) = match n.network() {
                        IpAddr::V4(a) => (
                            a.octets().to_vec(),
                            (u32::MAX
                                .checked_shl(32 - u32::from(n.prefix()))
                                .unwrap_or(0))
                            .to_be_bytes()
                            .to_vec(),
                        ),
                        IpAddr::V6(a) => (
                            a.octets().to_vec(),
                            (u128::MAX
                                .checked_shl(128 - u32::from(n.prefix()))
                                .unwrap_or(0))
                            .to_be_bytes()
                            .to_vec(),
                        ),
                    };
                    der::nested(out, 0x30, |out| {
                        der::tlv(out, 0x87, &[addr, mask].concat());
                    });
                }
            });
        }
        let mut out = Vec::new();
        der::nested(&mut out, 0x30, |out| {
            subtrees(out, 0xa0, &self.dns, &self.ip);
            subtrees(out, 0xa1, &self.excluded_dns, &self.excluded_ip);
        });
        out
    }

    /// The extension as rcgen writes it (critical).
    pub fn to_rcgen(&self) -> rcgen::NameConstraints {
        let subtrees = |dns: &[String], ip: &[IpNet]| {
            dns.iter()
                .map(|d| rcgen::GeneralSubtree::DnsName(d.clone()))
                .chain(ip.iter().map(|n| {
                    rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::from_addr_prefix(
                        n.network(),
                        n.prefix(),
                    ))
                }))
                .collect()
        };
        rcgen::NameConstraints {
            permitted_subtrees: subtrees(&self.dns, &self.ip),
            excluded_subtrees: subtrees(&self.excluded_dns, &self.excluded_ip),
        }
    }
}

/// An iPAddress subtree: address then mask, 8 bytes for IPv4, 32 for IPv6.
fn ip_subtree(bytes: &[u8]) -> Result<IpNet, String> {
    let (addr, mask): (IpAddr, &[u8]) = match bytes.len() {
        8 => {
            let a: [u8; 4] = bytes[..4].try_into().expect("length checked");
            (IpAddr::from(a), &bytes[4..])
        }
        32 => {
            let a: [u8; 16] = bytes[..16].try_into().expect("length checked");
            (IpAddr::from(a), &bytes[16..])
        }
        n => return Err(format!("an iPAddress subtree of {n} bytes")),
    };
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let contiguous = mask
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b >> i & 1))
        .skip(ones as usize)
        .all(|bit| bit == 0);
    if !contiguous {
        return Err("an iPAddress subtree with a non-contiguous mask".into());
    }
    IpNet::new(addr, ones as u8).ok_or_else(|| "an iPAddress subtree out of range".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(s: &str) -> Identifier {
        Identifier::Dns(s.into())
    }
    fn ip(s: &str) -> Identifier {
        Identifier::Ip(s.parse().unwrap())
    }

    fn ours() -> NameConstraints {
        NameConstraints {
            dns: vec!["internal".into(), ".corp".into(), "localhost".into()],
            ip: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            ..Default::default()
        }
    }

    #[test]
    fn dns_subtrees_hold_the_name_and_names_below_it() {
        let c = ours();
        assert!(c.permits(&dns("a.internal")));
        assert!(c.permits(&dns("*.a.internal")));
        assert!(c.permits(&dns("internal")));
        assert!(!c.permits(&dns("ainternal")));
        assert!(!c.permits(&dns("internal.example.com")));
        assert!(c.permits(&dns("x.corp")));
        assert!(!c.permits(&dns("corp")));
        assert!(c.permits(&dns("localhost")));
        assert!(!c.permits(&dns("example.com")));
        assert!(c.permits_below("internal"));
        assert!(c.permits_below("svc.internal"));
        assert!(c.permits_below("corp"));
        assert!(!c.permits_below("example"));
    }

    #[test]
    fn ip_blocks_and_exclusions() {
        let mut c = ours();
        assert!(c.permits(&ip("10.1.2.3")));
        assert!(c.permits(&ip("::1")));
        assert!(!c.permits(&ip("8.8.8.8")));
        assert!(c.permits_net(&"10.9.0.0/16".parse().unwrap()));
        assert!(!c.permits_net(&"192.168.0.0/16".parse().unwrap()));
        c.excluded_dns.push("secret.internal".into());
        c.excluded_ip.push("10.9.0.0/16".parse().unwrap());
        assert!(!c.permits(&dns("a.secret.internal")));
        assert!(c.permits(&dns("public.internal")));
        assert!(!c.permits(&ip("10.9.1.1")));
    }

    #[test]
    fn the_extension_reads_back_as_written() {
        let mut c = ours();
        c.excluded_dns.push("x.internal".into());
        c.excluded_ip.push("10.9.0.0/16".parse().unwrap());
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.name_constraints = Some(c.to_rcgen());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der()).unwrap();
        assert_eq!(NameConstraints::of(&parsed).unwrap(), Some(c.clone()));
        // The hand-written extnValue (for CSRs) is the same DER rcgen writes.
        let written = parsed
            .tbs_certificate
            .extensions()
            .iter()
            .find(|e| matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_)))
            .unwrap()
            .value;
        assert_eq!(c.to_der_value(), written);
        let critical = parsed
            .tbs_certificate
            .extensions()
            .iter()
            .find(|e| matches!(e.parsed_extension(), ParsedExtension::NameConstraints(_)))
            .unwrap()
            .critical;
        assert!(critical);
    }

    #[test]
    fn masks_must_be_contiguous() {
        assert_eq!(
            ip_subtree(&[10, 0, 0, 0, 255, 0, 0, 0]),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert!(ip_subtree(&[10, 0, 0, 0, 255, 0, 255, 0]).is_err());
        assert!(ip_subtree(&[10, 0, 0]).is_err());
    }
}
