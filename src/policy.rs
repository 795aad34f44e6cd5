//! What may be issued: allowed names, IP addresses, wildcards, key types and
//! validity. Plain functions over pki types; the workflow calls
//! [`Policy::check_csr`] before anything is written.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::pki::net::{IpNet, PRIVATE_RANGES};
use crate::pki::weak::Weakness;
use crate::pki::{
    Csr, Identifier, KeyType, NameConstraints, Profile, PublicKeyKind, Shape, UnverifiedCsr,
};

/// At most this many names in one certificate.
pub const MAX_NAMES: usize = 100;
/// Longest DNS name (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label.
const MAX_LABEL_LEN: usize = 63;

/// A key algorithm the policy may allow in CSRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowedKey {
    /// One of the generatable key types.
    Key(KeyType),
    /// Ed25519 subject keys (hallmark never issues *from* Ed25519).
    Ed25519,
}

impl std::str::FromStr for AllowedKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "ed25519" {
            return Ok(AllowedKey::Ed25519);
        }
        s.parse::<KeyType>().map(AllowedKey::Key).map_err(|_| {
            format!(
                "unknown key type {s:?}; expected p256, p384, rsa2048, rsa3072, rsa4096 or ed25519"
            )
        })
    }
}

/// The issuance policy (the `[policy]` configuration section, validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// DNS suffixes names must fall under (`internal` allows `a.internal`).
    pub allowed_suffixes: Vec<String>,
    /// Whether IP address identifiers may be certified.
    pub allow_ip: bool,
    /// The blocks IP identifiers must fall in (default: the private and
    /// loopback ranges, [`PRIVATE_RANGES`]).
    pub allowed_ip_ranges: Vec<IpNet>,
    /// Whether wildcard names may be certified.
    pub allow_wildcard: bool,
    /// Validity when a request names none.
    pub default_validity_days: u32,
    /// The longest validity allowed.
    pub max_validity_days: u32,
    /// Subject key algorithms accepted.
    pub key_types: Vec<AllowedKey>,
    /// The certificate profiles offered: the built-in ones, then the
    /// `[profiles.NAME]` of the configuration.
    pub profiles: Vec<ProfileSpec>,
    /// The issuing CA's name constraints, when it has them: a name inside
    /// policy but outside these (an excluded subtree of an intermediate
    /// signed elsewhere) is refused rather than issued into a certificate
    /// clients would reject. Set from the CA certificate, not configured.
    pub issuer_constraints: Option<NameConstraints>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allowed_suffixes: vec!["internal".into(), "test".into()],
            allow_ip: true,
            allowed_ip_ranges: PRIVATE_RANGES.to_vec(),
            allow_wildcard: true,
            default_validity_days: 90,
            max_validity_days: 397,
            key_types: KeyType::ALL.into_iter().map(AllowedKey::Key).collect(),
            profiles: Profile::ALL.into_iter().map(ProfileSpec::builtin).collect(),
            issuer_constraints: None,
        }
    }
}

/// A certificate profile as policy offers it: a shape (its extended key
/// usages, key usages and whether it points to revocation data) with its
/// own limits on validity and key types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileSpec {
    /// Its name (in REST orders, ACME newOrder, `hallmark sign`).
    pub name: String,
    /// The shape the certificate takes.
    pub shape: Shape,
    /// Its own longest validity (below the policy's and the base's).
    pub max_validity_days: Option<u32>,
    /// The subject key types it accepts (within `policy.key_types`); `None`:
    /// the policy's.
    pub key_types: Option<Vec<AllowedKey>>,
    /// One sentence (the ACME directory's `meta.profiles` value).
    pub description: String,
}

impl ProfileSpec {
    /// A built-in profile as it is.
    pub fn builtin(base: Profile) -> ProfileSpec {
        ProfileSpec {
            name: base.as_str().to_owned(),
            shape: base.shape(),
            max_validity_days: None,
            key_types: None,
            description: base.description().to_owned(),
        }
    }

    /// The longest validity it allows, below the policy's.
    pub fn cap(&self) -> Option<u32> {
        match (self.shape.max_validity_days(), self.max_validity_days) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Why a request breaks policy. Each is its own kind with its own sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// RSA key shorter than the smallest allowed size.
    #[error("the RSA key is {bits} bits; the smallest allowed is {min}")]
    WeakRsaKey {
        /// Size given.
        bits: usize,
        /// Smallest allowed.
        min: usize,
    },
    /// RSA with a bad public exponent.
    #[error("the RSA public exponent must be odd and at least 3")]
    BadRsaExponent,
    /// An RSA modulus known to be factorable.
    #[error("the RSA key is known to be weak: {0}; make a new key")]
    WeakRsaModulus(String),
    /// A key algorithm or size the policy does not allow.
    #[error("{0} keys are not allowed; allowed key types are {1}")]
    KeyTypeNotAllowed(String, String),
    /// More than [`MAX_NAMES`] names.
    #[error("the request names {0} identifiers; at most 100 are allowed")]
    TooManyNames(usize),
    /// Upper-case letters in a DNS name.
    #[error("{0:?} contains upper-case letters; DNS names must be lower-case")]
    NotLowerCase(String),
    /// Not a syntactically valid DNS name (or a U-label).
    #[error("{0:?} is not a valid DNS name: {1}")]
    InvalidDnsName(String, &'static str),
    /// Outside every allowed suffix.
    #[error("{name:?} is not under an allowed domain ({allowed})")]
    SuffixNotAllowed {
        /// The name.
        name: String,
        /// The allowed suffixes, comma-separated.
        allowed: String,
    },
    /// Wildcards are off.
    #[error("wildcard names such as {0:?} are not allowed by policy")]
    WildcardNotAllowed(String),
    /// A malformed wildcard.
    #[error("{0:?} is not a valid wildcard: only the whole left-most label may be \"*\", below an allowed domain")]
    BadWildcard(String),
    /// IP identifiers are off.
    #[error("IP address {0} cannot be certified: IP addresses are not allowed by policy")]
    IpNotAllowed(IpAddr),
    /// An IP address that is never a host (unspecified, multicast, broadcast).
    #[error("IP address {0} is not a unicast host address")]
    IpNotUnicast(IpAddr),
    /// An IP address outside `allowed_ip_ranges`.
    #[error("IP address {ip} is outside the ranges this CA may certify ({allowed})")]
    IpOutsideRanges {
        /// The address.
        ip: IpAddr,
        /// The allowed ranges, comma-separated.
        allowed: String,
    },
    /// Inside policy, but outside the issuing CA's name constraints.
    #[error("{name:?} is outside the issuing CA's name constraints ({permitted}), so clients would reject a certificate for it")]
    OutsideNameConstraints {
        /// The identifier.
        name: String,
        /// What the constraints permit.
        permitted: String,
    },
    /// A profile this CA does not offer.
    #[error("unknown certificate profile {name:?}; this CA offers {known}")]
    UnknownProfile {
        /// The name asked for.
        name: String,
        /// The offered names, comma-separated.
        known: String,
    },
    /// Validity out of range.
    #[error("a validity of {requested} days is not allowed; choose 1 to {max} days")]
    ValidityNotAllowed {
        /// Requested days.
        requested: u32,
        /// Policy maximum.
        max: u32,
    },
}

impl PolicyError {
    /// The ACME error type (RFC 8555 §6.7) this refusal is reported as.
    pub fn acme_code(&self) -> crate::acme_error::AcmeError {
        use crate::acme_error::AcmeError;
        match self {
            PolicyError::WeakRsaKey { .. }
            | PolicyError::BadRsaExponent
            | PolicyError::WeakRsaModulus(_)
            | PolicyError::KeyTypeNotAllowed(..) => AcmeError::BadPublicKey,
            PolicyError::ValidityNotAllowed { .. } => AcmeError::Malformed,
            PolicyError::UnknownProfile { .. } => AcmeError::InvalidProfile,
            _ => AcmeError::RejectedIdentifier,
        }
    }
}

impl Policy {
    /// Checks the key and every name of a CSR; returns the identifiers,
    /// de-duplicated, in CSR order.
    pub fn check_csr(&self, csr: &Csr) -> Result<Vec<Identifier>, PolicyError> {
        self.check_key(csr.key())?;
        self.check_identifiers(csr.identifiers())
    }

    /// Checks the key of a CSR before its signature is verified, so a weak
    /// key is refused as weak (and no verification is spent on it).
    pub fn check_unverified(&self, csr: &UnverifiedCsr) -> Result<(), PolicyError> {
        self.check_key(csr.key())
    }

    /// Checks a subject public key against `key_types`.
    pub fn check_key(&self, key: &PublicKeyKind) -> Result<(), PolicyError> {
        let allowed = |k: AllowedKey| self.key_types.contains(&k);
        let ok = match key {
            PublicKeyKind::EcP256 => allowed(AllowedKey::Key(KeyType::P256)),
            PublicKeyKind::EcP384 => allowed(AllowedKey::Key(KeyType::P384)),
            PublicKeyKind::Ed25519 => allowed(AllowedKey::Ed25519),
            PublicKeyKind::Rsa {
                bits,
                exponent_ok,
                weak,
            } => {
                let sizes: Vec<usize> = self
                    .key_types
                    .iter()
                    .filter_map(|k| match k {
                        AllowedKey::Key(t) => t.rsa_bits(),
                        AllowedKey::Ed25519 => None,
                    })
                    .collect();
                if let Some(min) = sizes.iter().min() {
                    if bits < min {
                        return Err(PolicyError::WeakRsaKey {
                            bits: *bits,
                            min: *min,
                        });
                    }
                }
                if !exponent_ok {
                    return Err(PolicyError::BadRsaExponent);
                }
                match weak {
                    Some(Weakness::SmallFactor(p)) => {
                        return Err(PolicyError::WeakRsaModulus(format!(
                            "its modulus is divisible by {p}"
                        )))
                    }
                    Some(Weakness::Roca) => {
                        return Err(PolicyError::WeakRsaModulus(
                            "it has the ROCA fingerprint (CVE-2017-15361)".into(),
                        ))
                    }
                    None => {}
                }
                sizes.contains(bits)
            }
            PublicKeyKind::EcOther(_) | PublicKeyKind::Other(_) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(PolicyError::KeyTypeNotAllowed(
                key.describe(),
                self.key_types_list(),
            ))
        }
    }

    fn key_types_list(&self) -> String {
        self.key_types
            .iter()
            .map(|k| match k {
                AllowedKey::Key(t) => t.as_str(),
                AllowedKey::Ed25519 => "ed25519",
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Checks names against policy; de-duplicates them, keeping order.
    pub fn check_identifiers(
        &self,
        identifiers: &[Identifier],
    ) -> Result<Vec<Identifier>, PolicyError> {
        let mut seen = BTreeSet::new();
        let unique: Vec<Identifier> = identifiers
            .iter()
            .filter(|i| seen.insert((*i).clone()))
            .cloned()
            .collect();
        if unique.len() > MAX_NAMES {
            return Err(PolicyError::TooManyNames(unique.len()));
        }
        for id in &unique {
            match id {
                Identifier::Dns(name) => self.check_dns_name(name)?,
                Identifier::Ip(ip) => self.check_ip(*ip)?,
            }
            self.check_constraints(id)?;
        }
        Ok(unique)
    }

    fn check_ip(&self, ip: IpAddr) -> Result<(), PolicyError> {
        if !self.allow_ip {
            return Err(PolicyError::IpNotAllowed(ip));
        }
        let not_host = match ip {
            IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
        };
        if not_host {
            return Err(PolicyError::IpNotUnicast(ip));
        }
        if !self.allowed_ip_ranges.iter().any(|n| n.contains(ip)) {
            return Err(PolicyError::IpOutsideRanges {
                ip,
                allowed: self
                    .allowed_ip_ranges
                    .iter()
                    .map(IpNet::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(())
    }

    /// Refuses a name the issuing CA's name constraints do not permit.
    fn check_constraints(&self, id: &Identifier) -> Result<(), PolicyError> {
        match &self.issuer_constraints {
            Some(c) if !c.permits(id) => Err(PolicyError::OutsideNameConstraints {
                name: id.value(),
                permitted: c.describe(),
            }),
            _ => Ok(()),
        }
    }

    fn check_dns_name(&self, name: &str) -> Result<(), PolicyError> {
        let invalid = |why| Err(PolicyError::InvalidDnsName(name.to_owned(), why));
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(PolicyError::NotLowerCase(name.to_owned()));
        }
        if !name.is_ascii() {
            return invalid(
                "it is not ASCII; use the xn-- A-label form of internationalised names",
            );
        }
        if name.is_empty() || name.len() > MAX_NAME_LEN {
            return invalid("it must be 1 to 253 characters long");
        }
        if name.ends_with('.') {
            return invalid("it must not end with a dot");
        }
        let (wildcard, base) = match name.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, name),
        };
        if base.contains('*') {
            return Err(PolicyError::BadWildcard(name.to_owned()));
        }
        for label in base.split('.') {
            if label.is_empty() {
                return invalid("it has an empty label");
            }
            if label.len() > MAX_LABEL_LEN {
                return invalid("a label is longer than 63 characters");
            }
            if !label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return invalid("labels may hold only a-z, 0-9 and hyphens");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return invalid("a label starts or ends with a hyphen");
            }
            if label.len() >= 4 && &label[2..4] == "--" && !label.starts_with("xn--") {
                return invalid(
                    "only xn-- labels may have hyphens in the third and fourth positions",
                );
            }
        }
        // The name must be strictly below an allowed suffix; a wildcard's base
        // must be too, so `*.internal` is refused.
        let under = |suffix: &str| {
            base.len() > suffix.len()
                && base.ends_with(suffix)
                && base.as_bytes()[base.len() - suffix.len() - 1] == b'.'
        };
        let base_ok = self.allowed_suffixes.iter().any(|s| under(s));
        if wildcard {
            if !self.allow_wildcard {
                return Err(PolicyError::WildcardNotAllowed(name.to_owned()));
            }
            if !base_ok {
                return Err(PolicyError::BadWildcard(name.to_owned()));
            }
        } else if !base_ok {
            return Err(PolicyError::SuffixNotAllowed {
                name: name.to_owned(),
                allowed: self.allowed_suffixes.join(", "),
            });
        }
        Ok(())
    }

    /// The profile called `name`.
    pub fn profile(&self, name: &str) -> Result<&ProfileSpec, PolicyError> {
        self.profiles
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| PolicyError::UnknownProfile {
                name: name.to_owned(),
                known: self
                    .profiles
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Checks a subject key against a profile's own key types (the
    /// policy's were checked at intake).
    pub fn check_profile_key(
        &self,
        profile: &ProfileSpec,
        key: &PublicKeyKind,
    ) -> Result<(), PolicyError> {
        match &profile.key_types {
            None => Ok(()),
            Some(types) => Policy {
                key_types: types.clone(),
                ..self.clone()
            }
            .check_key(key),
        }
    }

    /// The validity to issue with, given what was asked for, under both
    /// the policy maximum and a profile's own (`cap`).
    pub fn validity_days_within(
        &self,
        requested: Option<u32>,
        cap: Option<u32>,
    ) -> Result<u32, PolicyError> {
        let max = cap.map_or(self.max_validity_days, |c| c.min(self.max_validity_days));
        match requested {
            None => Ok(self.default_validity_days.min(max)),
            Some(days) if days >= 1 && days <= max => Ok(days),
            Some(days) => Err(PolicyError::ValidityNotAllowed {
                requested: days,
                max,
            }),
        }
    }

    /// The validity to issue with, given what was asked for.
    pub fn validity_days(&self, requested: Option<u32>) -> Result<u32, PolicyError> {
        match requested {
            None => Ok(self.default_validity_days),
            Some(days) if days >= 1 && days <= self.max_validity_days => Ok(days),
            Some(days) => Err(PolicyError::ValidityNotAllowed {
                requested: days,
                max: self.max_validity_days,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns(n: &str) -> Identifier {
        Identifier::Dns(n.into())
    }

    #[test]
    fn names_under_allowed_suffixes_pass() {
        let p = Policy::default();
        let ok = p
            .check_identifiers(&[
                dns("a.internal"),
                dns("b.c.test"),
                dns("*.x.internal"),
                dns("a.internal"),
            ])
            .unwrap();
        assert_eq!(ok.len(), 3, "duplicates are removed");
        assert!(p
            .check_identifiers(&[dns("xn--bcher-kva.internal")])
            .is_ok());
    }

    #[test]
    fn each_bad_name_has_its_own_error() {
        let p = Policy::default();
        let err = |n: &str| p.check_identifiers(&[dns(n)]).unwrap_err();
        assert!(matches!(err("A.internal"), PolicyError::NotLowerCase(_)));
        assert!(matches!(
            err("example.com"),
            PolicyError::SuffixNotAllowed { .. }
        ));
        assert!(matches!(
            err("internal"),
            PolicyError::SuffixNotAllowed { .. }
        ));
        assert!(matches!(
            err("evilinternal"),
            PolicyError::SuffixNotAllowed { .. }
        ));
        assert!(matches!(err("*.internal"), PolicyError::BadWildcard(_)));
        assert!(matches!(err("a.*.internal"), PolicyError::BadWildcard(_)));
        assert!(matches!(
            err("a_b.internal"),
            PolicyError::InvalidDnsName(..)
        ));
        assert!(matches!(
            err("-a.internal"),
            PolicyError::InvalidDnsName(..)
        ));
        assert!(matches!(
            err("bücher.internal"),
            PolicyError::InvalidDnsName(..)
        ));
        assert!(matches!(
            err("a..internal"),
            PolicyError::InvalidDnsName(..)
        ));
        let many: Vec<_> = (0..101).map(|i| dns(&format!("h{i}.internal"))).collect();
        assert_eq!(
            p.check_identifiers(&many).unwrap_err(),
            PolicyError::TooManyNames(101)
        );
    }

    #[test]
    fn wildcards_and_ips_follow_their_switches() {
        let p = Policy {
            allow_ip: false,
            allow_wildcard: false,
            ..Policy::default()
        };
        assert!(matches!(
            p.check_identifiers(&[dns("*.a.internal")]).unwrap_err(),
            PolicyError::WildcardNotAllowed(_)
        ));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            p.check_identifiers(&[Identifier::Ip(ip)]).unwrap_err(),
            PolicyError::IpNotAllowed(ip)
        );
        let open = Policy::default();
        assert!(open.check_identifiers(&[Identifier::Ip(ip)]).is_ok());
        let multicast: IpAddr = "224.0.0.1".parse().unwrap();
        assert!(matches!(
            open.check_identifiers(&[Identifier::Ip(multicast)])
                .unwrap_err(),
            PolicyError::IpNotUnicast(_)
        ));
    }

    #[test]
    fn ips_must_be_in_an_allowed_range_and_names_inside_the_issuers_constraints() {
        let ip = |s: &str| Identifier::Ip(s.parse().unwrap());
        let p = Policy::default();
        assert!(p
            .check_identifiers(&[ip("10.1.2.3"), ip("fd00::1")])
            .is_ok());
        assert_eq!(
            p.check_identifiers(&[ip("8.8.8.8")]).unwrap_err().to_string(),
            "IP address 8.8.8.8 is outside the ranges this CA may certify (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10, 127.0.0.0/8, ::1/128, fc00::/7)"
        );
        let narrow = Policy {
            allowed_ip_ranges: vec!["10.9.0.0/16".parse().unwrap()],
            issuer_constraints: Some(NameConstraints {
                dns: vec!["internal".into()],
                excluded_dns: vec!["secret.internal".into()],
                ..NameConstraints::default()
            }),
            ..Policy::default()
        };
        assert!(narrow.check_identifiers(&[ip("10.9.0.1")]).is_ok());
        assert!(narrow.check_identifiers(&[ip("10.1.0.1")]).is_err());
        assert!(narrow.check_identifiers(&[dns("a.internal")]).is_ok());
        assert!(matches!(
            narrow
                .check_identifiers(&[dns("a.secret.internal")])
                .unwrap_err(),
            PolicyError::OutsideNameConstraints { .. }
        ));
    }

    #[test]
    fn keys_are_checked_against_key_types() {
        let p = Policy::default();
        assert!(p.check_key(&PublicKeyKind::EcP256).is_ok());
        assert!(p
            .check_key(&PublicKeyKind::Rsa {
                bits: 3072,
                exponent_ok: true,
                weak: None
            })
            .is_ok());
        assert_eq!(
            p.check_key(&PublicKeyKind::Rsa {
                bits: 1024,
                exponent_ok: true,
                weak: None
            })
            .unwrap_err(),
            PolicyError::WeakRsaKey {
                bits: 1024,
                min: 2048
            }
        );
        assert_eq!(
            p.check_key(&PublicKeyKind::Rsa {
                bits: 2048,
                exponent_ok: false,
                weak: None
            })
            .unwrap_err(),
            PolicyError::BadRsaExponent
        );
        assert_eq!(
            p.check_key(&PublicKeyKind::Rsa {
                bits: 2048,
                exponent_ok: true,
                weak: Some(Weakness::Roca)
            })
            .unwrap_err()
            .to_string(),
            "the RSA key is known to be weak: it has the ROCA fingerprint (CVE-2017-15361); make a new key"
        );
        assert!(matches!(
            p.check_key(&PublicKeyKind::Ed25519),
            Err(PolicyError::KeyTypeNotAllowed(..))
        ));
        assert!(matches!(
            p.check_key(&PublicKeyKind::EcOther("1.3.132.0.35".into())),
            Err(PolicyError::KeyTypeNotAllowed(..))
        ));
        let with_ed = Policy {
            key_types: vec![AllowedKey::Ed25519],
            ..Policy::default()
        };
        assert!(with_ed.check_key(&PublicKeyKind::Ed25519).is_ok());
    }

    #[test]
    fn validity_is_bounded() {
        let p = Policy::default();
        assert_eq!(p.validity_days(None).unwrap(), 90);
        assert_eq!(p.validity_days(Some(397)).unwrap(), 397);
        assert!(p.validity_days(Some(398)).is_err());
        assert!(p.validity_days(Some(0)).is_err());
    }
}
