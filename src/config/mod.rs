//! Configuration: built-in defaults < the TOML file < `HALLMARK_SECTION__KEY`
//! environment variables (< `DATABASE_URL` for the database). The file type
//! is checked strictly (unknown keys are errors) and turned into a validated
//! [`Config`] at start-up; a bad value fails with a sentence naming the key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use crate::pki::net::IpNet;
use crate::pki::profile::{EXTENDED_KEY_USAGES, KEY_USAGES};
use crate::pki::{Identifier, KeyType, NameConstraints, Profile, Shape};
use crate::policy::{AllowedKey, Policy, ProfileSpec};

/// The default data directory.
pub const DEFAULT_DATA_DIR: &str = "hallmark-data";
/// The config file's name inside the data directory.
pub const CONFIG_FILE_NAME: &str = "hallmark.toml";

/// The longest `acme.challenge_wait_ms` accepted: a challenge POST holds
/// its connection at most this long.
pub const MAX_CHALLENGE_WAIT_MS: u64 = 10_000;

/// A configuration problem, as one sentence naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file named by `--config` does not exist or cannot be read.
    #[error("cannot read the configuration file {path}: {reason}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TOML does not parse or has unknown keys or wrong types.
    #[error("invalid configuration ({source_name}): {reason}")]
    Parse {
        /// File or environment variable.
        source_name: String,
        /// The parser's message.
        reason: String,
    },
    /// A value parses but is not acceptable.
    #[error("invalid configuration: {key} {reason}")]
    Invalid {
        /// `section.key`.
        key: &'static str,
        /// Why.
        reason: String,
    },
}

mod file;

pub use file::*;

/// How the HTTPS listener gets its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// hallmark issues its own from the intermediate.
    SelfIssued,
    /// From files.
    Files {
        /// PEM chain.
        cert: PathBuf,
        /// PEM key.
        key: PathBuf,
    },
    /// Plain HTTP (behind a TLS-terminating proxy).
    Off,
}

/// The validated configuration.
#[derive(Clone)]
pub struct Config {
    /// Data directory (keys, certificates, SQLite database).
    pub data_dir: PathBuf,
    /// HTTPS listener address.
    pub https_listen: SocketAddr,
    /// HTTP listener address.
    pub http_listen: SocketAddr,
    /// Public HTTPS base URL, without a trailing slash.
    pub public_https_url: String,
    /// Public HTTP base URL, without a trailing slash.
    pub public_http_url: String,
    /// TLS mode.
    pub tls: TlsMode,
    /// Connection limits of both listeners.
    pub connections: crate::http::server::ConnectionLimits,
    /// Where the first administrator's password goes instead of stdout.
    pub initial_password_file: Option<PathBuf>,
    /// Database URL.
    pub database_url: String,
    /// `database.single_instance`: `serve` has its PostgreSQL database to
    /// itself (an advisory lock keeps other instances out).
    pub database_single_instance: bool,
    /// Issuance policy.
    pub policy: Policy,
    /// DV validation settings.
    pub validation: ValidationSection,
    /// Order workflow settings.
    pub orders: OrdersSection,
    /// CRL settings.
    pub crl: CrlSection,
    /// OCSP settings.
    pub ocsp: OcspSection,
    /// CA creation settings.
    pub ca_key_type: KeyType,
    /// CA names.
    pub ca: CaSection,
    /// ACME settings.
    pub acme: AcmeSection,
    /// Per-address limits.
    pub limits: LimitsSection,
    /// Test-only ACME faults; always `None` from [`Config::load`].
    pub danger_acme_chaos: Option<DangerAcmeChaos>,
    /// `[[webhooks]]`.
    pub webhooks: Vec<Webhook>,
    /// `[smtp]`, when mail is on.
    pub smtp: Option<crate::smtp::SmtpSettings>,
    /// The PKCS#11 PIN when it was typed at a prompt (never from a file
    /// or the environment; `None` from [`Config::load`]).
    pub pkcs11_pin: Option<zeroize::Zeroizing<String>>,
}

impl std::fmt::Debug for Config {
    /// Like a derived `Debug`, but the database URL's password is redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("https_listen", &self.https_listen)
            .field("http_listen", &self.http_listen)
            .field("public_https_url", &self.public_https_url)
            .field("public_http_url", &self.public_http_url)
            .field("tls", &self.tls)
            .field("connections", &self.connections)
            .field("initial_password_file", &self.initial_password_file)
            .field(
                "database_url",
                &crate::store::redact_url(&self.database_url),
            )
            .field("database_single_instance", &self.database_single_instance)
            .field("policy", &self.policy)
            .field("validation", &self.validation)
            .field("orders", &self.orders)
            .field("crl", &self.crl)
            .field("ocsp", &self.ocsp)
            .field("ca_key_type", &self.ca_key_type)
            .field("ca", &self.ca)
            .field("acme", &self.acme)
            .field("limits", &self.limits)
            .field("danger_acme_chaos", &self.danger_acme_chaos)
            .field("webhooks", &self.webhooks)
            .field("smtp", &self.smtp)
            .finish()
    }
}

impl Config {
    /// The names the HTTPS certificate covers: localhost, the loopback
    /// addresses, the host of `public_https_url` and a specific listen address.
    pub fn service_identifiers(&self) -> Vec<Identifier> {
        let mut ids = vec![
            Identifier::Dns("localhost".into()),
            Identifier::Ip("127.0.0.1".parse().expect("literal address")),
            Identifier::Ip("::1".parse().expect("literal address")),
        ];
        let after_scheme = self.public_https_url.split("://").nth(1).unwrap_or("");
        let authority = after_scheme.split('/').next().unwrap_or("");
        let host = if let Some(rest) = authority.strip_prefix('[') {
            rest.split(']').next().unwrap_or("")
        } else {
            authority.split(':').next().unwrap_or("")
        };
        let extra = match host.parse::<IpAddr>() {
            Ok(ip) => Some(Identifier::Ip(ip)),
            Err(_) if !host.is_empty() => Some(Identifier::Dns(host.to_ascii_lowercase())),
            Err(_) => None,
        };
        let listen = self.https_listen.ip();
        let listen = (!listen.is_unspecified()).then_some(Identifier::Ip(listen));
        for id in [extra, listen].into_iter().flatten() {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids
    }

    /// The names the issuing CA must be able to certify beside policy: the
    /// service's own, when it issues its HTTPS certificate itself.
    pub fn own_names(&self) -> Vec<Identifier> {
        if self.tls == TlsMode::SelfIssued {
            self.service_identifiers()
        } else {
            Vec::new()
        }
    }

    /// What this configuration lets hallmark certify that the issuing CA's
    /// name constraints `c` do not permit, as `(setting, value)`; `None`
    /// when they cover it all.
    pub fn outside_constraints(&self, c: &NameConstraints) -> Option<(&'static str, String)> {
        if let Some(s) = self
            .policy
            .allowed_suffixes
            .iter()
            .find(|s| !c.permits_below(s))
        {
            return Some(("policy.allowed_suffixes", s.clone()));
        }
        if self.policy.allow_ip {
            if let Some(n) = self
                .policy
                .allowed_ip_ranges
                .iter()
                .find(|n| !c.permits_net(n))
            {
                return Some(("policy.allowed_ip_ranges", n.to_string()));
            }
        }
        self.own_names()
            .into_iter()
            .find(|id| !c.permits(id))
            .map(|id| ("server.public_https_url", id.value()))
    }

    /// The nameConstraints a new issuing intermediate gets (`None` with
    /// `ca.name_constraints = false`): every allowed suffix and, when IP
    /// identifiers are allowed, every allowed IP range; then the names of
    /// the service's own HTTPS certificate that these do not cover yet
    /// (`localhost`, the loopback addresses, the public host) when hallmark
    /// issues that certificate itself (`server.tls = "self"`).
    pub fn intermediate_constraints(&self) -> Option<NameConstraints> {
        if !self.ca.name_constraints {
            return None;
        }
        let mut c = NameConstraints {
            dns: self.policy.allowed_suffixes.clone(),
            ip: if self.policy.allow_ip {
                self.policy.allowed_ip_ranges.clone()
            } else {
                Vec::new()
            },
            ..NameConstraints::default()
        };
        for id in self.own_names() {
            if !c.permits(&id) || matches!(id, Identifier::Ip(_)) && c.ip.is_empty() {
                match id {
                    Identifier::Dns(name) => c.dns.push(name),
                    Identifier::Ip(ip) => c.ip.push(IpNet::host(ip)),
                }
            }
        }
        Some(c)
    }

    /// Loads the configuration: `config_path` if given (it must exist), else
    /// `<data_dir>/hallmark.toml` if it exists, else defaults; then applies
    /// `HALLMARK_SECTION__KEY` and `DATABASE_URL` from `env`.
    pub fn load(
        config_path: Option<&Path>,
        data_dir: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (path, required) = match config_path {
            Some(p) => (p.to_path_buf(), true),
            None => (data_dir.join(CONFIG_FILE_NAME), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(ConfigError::Read {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            source_name: path.display().to_string(),
            reason: e.message().to_owned(),
        })?;
        let mut database_url = None;
        for (name, value) in env {
            if name == "DATABASE_URL" && !value.is_empty() {
                database_url = Some(value);
                continue;
            }
            let Some(rest) = name.strip_prefix("HALLMARK_") else {
                continue;
            };
            let Some((section, key)) = rest.split_once("__") else {
                continue;
            };
            let section = section.to_ascii_lowercase();
            let key = key.to_ascii_lowercase();
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                return Err(ConfigError::Parse {
                    source_name: name,
                    reason: format!("{section} is not a section"),
                });
            };
            section_table.insert(key, env_value(&value));
        }
        // Through serde_path_to_error, so a wrong value names its key
        // ("policy.max_validity_days: invalid type …").
        let file: FileConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e: serde_path_to_error::Error<toml::de::Error>| {
                let key = e.path().to_string();
                let message = e.inner().message().to_owned();
                ConfigError::Parse {
                    source_name: format!("{} and HALLMARK_* variables", path.display()),
                    reason: if key == "." || key.is_empty() {
                        message
                    } else {
                        format!("{key}: {message}")
                    },
                }
            })?;
        Self::validate(file, data_dir, database_url)
    }

    fn validate(
        file: FileConfig,
        data_dir: &Path,
        database_url: Option<String>,
    ) -> Result<Config, ConfigError> {
        let addr = |key: &'static str, v: &str| {
            v.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
                key,
                reason: format!("must be an address like 127.0.0.1:8443, not {v:?}"),
            })
        };
        let https_listen = addr("server.https_listen", &file.server.https_listen)?;
        let http_listen = addr("server.http_listen", &file.server.http_listen)?;
        let url = |key: &'static str, v: Option<String>, scheme: &str, port: u16| {
            let v = v.unwrap_or_else(|| format!("{scheme}://localhost:{port}"));
            if !(v.starts_with("http://") || v.starts_with("https://"))
                || v.contains(char::is_whitespace)
            {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("must be an http:// or https:// URL, not {v:?}"),
                });
            }
            Ok(v.trim_end_matches('/').to_owned())
        };
        let tls = match file.server.tls.as_str() {
            "self" => TlsMode::SelfIssued,
            "off" => TlsMode::Off,
            "files" => match (file.server.tls_cert, file.server.tls_key) {
                (Some(cert), Some(key)) => TlsMode::Files { cert, key },
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "server.tls",
                        reason: "= \"files\" needs server.tls_cert and server.tls_key".into(),
                    })
                }
            },
            other => {
                return Err(ConfigError::Invalid {
                    key: "server.tls",
                    reason: format!("must be \"self\", \"files\" or \"off\", not {other:?}"),
                })
            }
        };
        let public_https_url = url(
            "server.public_https_url",
            file.server.public_https_url,
            if tls == TlsMode::Off { "http" } else { "https" },
            https_listen.port(),
        )?;
        // The default names the loopback address rather than `localhost`:
        // RFC 5280 linters (pkilint) refuse dotless host names in URIs, and
        // this URL goes into every certificate.
        let public_http_url = file
            .server
            .public_http_url
            .unwrap_or_else(|| format!("http://127.0.0.1:{}", http_listen.port()));
        let public_http_url = url("server.public_http_url", Some(public_http_url), "http", 0)?;
        for (key, list) in [
            ("validation.deny_networks", &file.validation.deny_networks),
            ("validation.allow_networks", &file.validation.allow_networks),
        ] {
            for net in list {
                net.parse::<IpNet>()
                    .map_err(|reason| ConfigError::Invalid { key, reason })?;
            }
        }
        if file.validation.max_per_account == 0 {
            return Err(ConfigError::Invalid {
                key: "validation.max_per_account",
                reason: "must be at least 1".into(),
            });
        }
        let database_url = database_url
            .or(file.database.url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("hallmark.db").display()));

        let p = file.policy;
        let key_types = p
            .key_types
            .iter()
            .map(|k| k.parse::<AllowedKey>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| ConfigError::Invalid {
                key: "policy.key_types",
                reason,
            })?;
        if p.max_validity_days == 0
            || p.default_validity_days == 0
            || p.default_validity_days > p.max_validity_days
        {
            return Err(ConfigError::Invalid {
                key: "policy.default_validity_days",
                reason: format!(
                    "({}) must be between 1 and policy.max_validity_days ({})",
                    p.default_validity_days, p.max_validity_days
                ),
            });
        }
        for suffix in &p.allowed_suffixes {
            if suffix.is_empty()
                || suffix.starts_with('.')
                || suffix.bytes().any(|b| b.is_ascii_uppercase())
            {
                return Err(ConfigError::Invalid {
                    key: "policy.allowed_suffixes",
                    reason: format!(
                        "entries are lower-case domains without a leading dot, not {suffix:?}"
                    ),
                });
            }
        }
        let allowed_ip_ranges = p
            .allowed_ip_ranges
            .iter()
            .map(|n| n.parse::<IpNet>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|reason| ConfigError::Invalid {
                key: "policy.allowed_ip_ranges",
                reason,
            })?;
        let mut profiles: Vec<ProfileSpec> =
            Profile::ALL.into_iter().map(ProfileSpec::builtin).collect();
        for (name, section) in &file.profiles {
            // The key names the profile (`profiles.device`); the string
            // lives for the process, and is only made on this error path.
            let invalid = |reason: String| ConfigError::Invalid {
                key: Box::leak(format!("profiles.{name}").into_boxed_str()),
                reason,
            };
            if name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                return Err(invalid("names are 1 to 32 of a-z, 0-9 and '-'".into()));
            }
            if profiles.iter().any(|p| &p.name == name) {
                return Err(invalid("a built-in profile cannot be redefined".into()));
            }
            let base = section
                .base
                .as_deref()
                .unwrap_or("server")
                .parse::<Profile>()
                .map_err(|e| invalid(format!("base: {e}")))?;
            let shape = profile_shape(base.shape(), section).map_err(invalid)?;
            if section.max_validity_days == Some(0) {
                return Err(invalid("max_validity_days must be at least 1".into()));
            }
            if let (Some(short), Some(days)) =
                (shape.max_validity_days(), section.max_validity_days)
            {
                if days > short {
                    return Err(invalid(format!(
                        "max_validity_days is {days}, but a certificate without revocation information lives at most {short} days (RFC 9608)"
                    )));
                }
            }
            let own_key_types = match &section.key_types {
                None => None,
                Some(list) => {
                    let mut parsed = Vec::with_capacity(list.len());
                    for name in list {
                        let k = name
                            .parse::<AllowedKey>()
                            .map_err(|e| invalid(format!("key_types: {e}")))?;
                        if !key_types.contains(&k) {
                            return Err(invalid(format!(
                                "key_types: {name} is not in policy.key_types"
                            )));
                        }
                        parsed.push(k);
                    }
                    Some(parsed)
                }
            };
            profiles.push(ProfileSpec {
                name: name.clone(),
                shape,
                max_validity_days: section.max_validity_days,
                key_types: own_key_types,
                description: section
                    .description
                    .clone()
                    .unwrap_or_else(|| format!("{name}: {}", shape.summary())),
            });
        }
        let webhooks = webhooks(&file.webhooks)?;
        let smtp = smtp(&file.smtp)?;
        let policy = Policy {
            allowed_suffixes: p.allowed_suffixes,
            allow_ip: p.allow_ip,
            allowed_ip_ranges,
            allow_wildcard: p.allow_wildcard,
            default_validity_days: p.default_validity_days,
            max_validity_days: p.max_validity_days,
            key_types,
            profiles,
            issuer_constraints: None,
        };
        let ca_key_type =
            file.ca
                .key_type
                .parse::<KeyType>()
                .map_err(|e| ConfigError::Invalid {
                    key: "ca.key_type",
                    reason: e.to_string(),
                })?;
        if file.ca.pkcs11_module.is_some() != file.ca.pkcs11_token.is_some() {
            return Err(ConfigError::Invalid {
                key: "ca.pkcs11_token",
                reason: "and ca.pkcs11_module go together: set both to keep the issuing key in a PKCS#11 token, or neither".into(),
            });
        }
        if file.ca.pkcs11_root_key_label.is_some() && file.ca.pkcs11_module.is_none() {
            return Err(ConfigError::Invalid {
                key: "ca.pkcs11_root_key_label",
                reason:
                    "needs ca.pkcs11_module and ca.pkcs11_token: the root key is in the same token"
                        .into(),
            });
        }
        if file.ca.pkcs11_root_key_label.as_ref() == Some(&file.ca.pkcs11_key_label) {
            return Err(ConfigError::Invalid {
                key: "ca.pkcs11_root_key_label",
                reason: "must differ from ca.pkcs11_key_label: the root and the issuing CA need their own keys".into(),
            });
        }
        if file.ca.pkcs11_key_label.is_empty() || file.ca.pkcs11_key_label.len() > 64 {
            return Err(ConfigError::Invalid {
                key: "ca.pkcs11_key_label",
                reason: "must be 1 to 64 characters".into(),
            });
        }
        if file.crl.validity_hours == 0
            || file.crl.regenerate_every_hours >= file.crl.validity_hours
        {
            return Err(ConfigError::Invalid {
                key: "crl.regenerate_every_hours",
                reason: "must be less than crl.validity_hours, so a new CRL is out before the old one expires".into(),
            });
        }
        if file.crl.partitions > 1000 {
            return Err(ConfigError::Invalid {
                key: "crl.partitions",
                reason: "must be at most 1000".into(),
            });
        }
        if file.crl.delta && !file.crl.complete_with_partitions {
            return Err(ConfigError::Invalid {
                key: "crl.delta",
                reason: "needs crl.complete_with_partitions = true (a delta CRL extends the complete CRL)".into(),
            });
        }
        if file.crl.root_validity_days == 0 || file.crl.delta_every_minutes == 0 {
            return Err(ConfigError::Invalid {
                key: "crl.root_validity_days",
                reason: "crl.root_validity_days and crl.delta_every_minutes must be at least 1"
                    .into(),
            });
        }
        if !matches!(file.ocsp.signer.as_str(), "delegated" | "issuer") {
            return Err(ConfigError::Invalid {
                key: "ocsp.signer",
                reason: "must be \"delegated\" or \"issuer\"".into(),
            });
        }
        if file.ocsp.validity_minutes == 0 || file.ocsp.responder_validity_days == 0 {
            return Err(ConfigError::Invalid {
                key: "ocsp.validity_minutes",
                reason: "ocsp.validity_minutes and ocsp.responder_validity_days must be at least 1"
                    .into(),
            });
        }
        for url in std::iter::once(&file.acme.terms_of_service).chain([&file.acme.website]) {
            if !(url.is_empty() || url.starts_with("https://") || url.starts_with("http://")) {
                return Err(ConfigError::Invalid {
                    key: "acme.terms_of_service",
                    reason: format!(
                        "acme.terms_of_service and acme.website must be http(s) URLs, not {url:?}"
                    ),
                });
            }
        }
        if file.acme.challenge_wait_ms > MAX_CHALLENGE_WAIT_MS {
            return Err(ConfigError::Invalid {
                key: "acme.challenge_wait_ms",
                reason: format!(
                    "must be at most {MAX_CHALLENGE_WAIT_MS} (a request is held that long at most), not {}",
                    file.acme.challenge_wait_ms
                ),
            });
        }
        if file.orders.lifetime_hours == 0 {
            return Err(ConfigError::Invalid {
                key: "orders.lifetime_hours",
                reason: "must be at least 1".into(),
            });
        }
        if file.server.max_connections < 16 || file.server.idle_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "server.max_connections",
                reason: "must be at least 16, and server.idle_timeout_secs at least 1".into(),
            });
        }
        if file.limits.password_checks == 0 {
            return Err(ConfigError::Invalid {
                key: "limits.password_checks",
                reason: "must be at least 1".into(),
            });
        }
        let connections = crate::http::server::ConnectionLimits {
            max_connections: file.server.max_connections,
            idle_timeout: std::time::Duration::from_secs(file.server.idle_timeout_secs),
        };
        Ok(Config {
            data_dir: data_dir.to_path_buf(),
            https_listen,
            http_listen,
            public_https_url,
            public_http_url,
            tls,
            connections,
            initial_password_file: file.server.initial_password_file,
            database_url,
            database_single_instance: file.database.single_instance,
            policy,
            validation: file.validation,
            orders: file.orders,
            crl: file.crl,
            ocsp: file.ocsp,
            ca_key_type,
            pkcs11_pin: None,
            ca: file.ca,
            acme: file.acme,
            limits: file.limits,
            danger_acme_chaos: None,
            webhooks,
            smtp,
        })
    }
}

/// `[smtp]` checked: a host makes mail on, and then a sender is needed; a
/// password is read from its file; every address is plausible.
fn smtp(s: &file::SmtpSection) -> Result<Option<crate::smtp::SmtpSettings>, ConfigError> {
    use crate::smtp::{plausible_address, SmtpTls};
    let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
    let Some(host) = s.host.clone().filter(|h| !h.is_empty()) else {
        return Ok(None);
    };
    let tls = match s.tls.as_deref() {
        None => SmtpTls::StartTls,
        Some(t) => SmtpTls::parse(t).ok_or_else(|| {
            invalid(
                "smtp.tls",
                format!("{t:?} is not one of starttls, tls, none"),
            )
        })?,
    };
    let from = s
        .from
        .clone()
        .ok_or_else(|| invalid("smtp.from", "is required when smtp.host is set".into()))?;
    if !plausible_address(&from) {
        return Err(invalid(
            "smtp.from",
            format!("{from:?} is not an address like ca@corp.internal"),
        ));
    }
    for a in &s.also_to {
        if !plausible_address(a) {
            return Err(invalid(
                "smtp.also_to",
                format!("{a:?} is not an address like pki@corp.internal"),
            ));
        }
    }
    let password = match (&s.username, &s.password_file) {
        (Some(_), Some(path)) => Some(zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| invalid("smtp.password_file", format!("{}: {e}", path.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        )),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "smtp.username",
                "give both smtp.username and smtp.password_file, or neither".into(),
            ))
        }
    };
    Ok(Some(crate::smtp::SmtpSettings {
        port: s
            .port
            .unwrap_or(if tls == SmtpTls::Tls { 465 } else { 587 }),
        host,
        tls,
        from,
        username: s.username.clone(),
        password,
        also_to: s.also_to.clone(),
    }))
}

/// An environment value as TOML if it parses as a TOML value (`true`, `80`,
/// `["a", "b"]`), else as a plain string (`127.0.0.1:8443`).
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// The commented configuration written into a new data directory.
pub const EXAMPLE_CONFIG: &str = include_str!("../../hallmark.example.toml");

/// A webhook endpoint: where, with which key, for which events.
#[derive(Clone)]
pub struct Webhook {
    /// Where to POST.
    pub url: String,
    /// The HMAC-SHA256 key.
    pub secret: zeroize::Zeroizing<Vec<u8>>,
    /// The events it gets (`certificate.issued`, …).
    pub events: Vec<&'static str>,
}

impl std::fmt::Debug for Webhook {
    /// Without the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

/// `[[webhooks]]` checked: a URL, one key of at least 16 bytes, known
/// events, no URL twice.
fn webhooks(sections: &[file::WebhookSection]) -> Result<Vec<Webhook>, ConfigError> {
    use crate::workflow::webhooks::EVENTS;
    let invalid = |reason: String| ConfigError::Invalid {
        key: "webhooks",
        reason,
    };
    let mut out: Vec<Webhook> = Vec::with_capacity(sections.len());
    for s in sections {
        match reqwest::Url::parse(&s.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => {
                return Err(invalid(format!(
                    "url {:?} is not an http or https URL",
                    s.url
                )))
            }
        }
        if out.iter().any(|w| w.url == s.url) {
            return Err(invalid(format!("url {:?} appears twice", s.url)));
        }
        let secret = match (&s.secret, &s.secret_file) {
            (Some(secret), None) => secret.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| invalid(format!("secret_file {}: {e}", path.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_owned(),
            _ => {
                return Err(invalid(format!(
                    "{}: give exactly one of secret and secret_file",
                    s.url
                )))
            }
        };
        if secret.len() < 16 {
            return Err(invalid(format!(
                "{}: the secret must be at least 16 characters",
                s.url
            )));
        }
        let events = match &s.events {
            None => EVENTS.iter().map(|(_, e)| *e).collect(),
            Some(names) => {
                let mut events = Vec::with_capacity(names.len());
                for name in names {
                    let known = EVENTS.iter().find(|(_, e)| e == name).ok_or_else(|| {
                        invalid(format!(
                            "{}: unknown event {name:?}; known: {}",
                            s.url,
                            EVENTS
                                .iter()
                                .map(|(_, e)| *e)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })?;
                    events.push(known.1);
                }
                events
            }
        };
        out.push(Webhook {
            url: s.url.clone(),
            secret: zeroize::Zeroizing::new(secret.into_bytes()),
            events,
        });
    }
    Ok(out)
}

/// A configured profile's shape: its base's, with the usages and
/// revocation information the section sets. The error is the reason.
fn profile_shape(base: Shape, section: &file::ProfileSection) -> Result<Shape, String> {
    let mut shape = base;
    if let Some(ekus) = &section.extended_key_usages {
        if ekus.is_empty() {
            return Err("extended_key_usages needs serverAuth, clientAuth or both".into());
        }
        shape.server_auth = false;
        shape.client_auth = false;
        for eku in ekus {
            let flag = match eku.as_str() {
                "serverAuth" => &mut shape.server_auth,
                "clientAuth" => &mut shape.client_auth,
                other => {
                    return Err(format!(
                        "extended_key_usages: {other:?} is not one of {} (hallmark certifies validated names for TLS)",
                        EXTENDED_KEY_USAGES.join(", ")
                    ))
                }
            };
            if std::mem::replace(flag, true) {
                return Err(format!("extended_key_usages names {eku} twice"));
            }
        }
    }
    if let Some(usages) = &section.key_usages {
        if !usages.iter().any(|u| u == "digitalSignature") {
            return Err(
                "key_usages must include digitalSignature (a TLS key signs its handshake)".into(),
            );
        }
        shape.key_encipherment = false;
        shape.key_agreement = false;
        let mut seen = std::collections::BTreeSet::new();
        for usage in usages {
            match usage.as_str() {
                "digitalSignature" => {}
                "keyEncipherment" => shape.key_encipherment = true,
                "keyAgreement" => shape.key_agreement = true,
                other => {
                    return Err(format!(
                        "key_usages: {other:?} is not one of {}",
                        KEY_USAGES.join(", ")
                    ))
                }
            }
            if !seen.insert(usage) {
                return Err(format!("key_usages names {usage} twice"));
            }
        }
    }
    if let Some(revocation_info) = section.revocation_info {
        shape.revocation_info = revocation_info;
    }
    Ok(shape)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_need_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(None, dir.path(), env(&[])).unwrap();
        assert_eq!(c.https_listen.to_string(), "127.0.0.1:8443");
        assert_eq!(c.public_http_url, "http://127.0.0.1:8080");
        assert_eq!(c.tls, TlsMode::SelfIssued);
        assert!(c.database_url.starts_with("sqlite://"));
        assert_eq!(c.policy, Policy::default());
    }

    #[test]
    fn example_config_parses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        std::fs::write(&path, EXAMPLE_CONFIG).unwrap();
        Config::load(Some(&path), dir.path(), env(&[])).unwrap();
    }

    #[test]
    fn environment_overrides_file_and_database_url_wins() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "[policy]\nallow_ip = true\n[database]\nurl = \"sqlite://x.db\"\n",
        )
        .unwrap();
        let c = Config::load(
            None,
            dir.path(),
            env(&[
                ("HALLMARK_POLICY__ALLOW_IP", "false"),
                ("HALLMARK_POLICY__ALLOWED_SUFFIXES", "[\"corp\"]"),
                ("HALLMARK_SERVER__HTTP_LISTEN", "127.0.0.1:9090"),
                ("DATABASE_URL", "postgres://db/x"),
            ]),
        )
        .unwrap();
        assert!(!c.policy.allow_ip);
        assert_eq!(c.policy.allowed_suffixes, vec!["corp".to_string()]);
        assert_eq!(c.http_listen.port(), 9090);
        assert_eq!(c.public_http_url, "http://127.0.0.1:9090");
        assert_eq!(c.database_url, "postgres://db/x");
    }

    #[test]
    fn profiles_are_built_from_a_base_within_policy() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "[profiles.device]\nbase = \"server-client\"\nmax_validity_days = 30\nkey_types = [\"p256\"]\n",
        )
        .unwrap();
        let c = Config::load(None, dir.path(), env(&[])).unwrap();
        let names: Vec<&str> = c.policy.profiles.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["server", "server-client", "shortlived", "device"]);
        let device = c.policy.profile("device").unwrap();
        assert_eq!(device.shape, Profile::ServerClient.shape());
        assert_eq!(device.cap(), Some(30));
        let shortlived = c.policy.profile("shortlived").unwrap();
        assert_eq!(shortlived.cap(), Some(7));
        assert!(c
            .policy
            .profile("nope")
            .unwrap_err()
            .to_string()
            .contains("this CA offers server, server-client, shortlived, device"));
        for (table, says) in [
            ("[profiles.server]\nbase = \"server\"\n", "cannot be redefined"),
            ("[profiles.Bad]\nbase = \"server\"\n", "names are 1 to 32"),
            ("[profiles.x]\nbase = \"client\"\n", "base: unknown certificate profile"),
            (
                "[policy]\nkey_types = [\"p256\"]\n[profiles.x]\nbase = \"server\"\nkey_types = [\"rsa2048\"]\n",
                "rsa2048 is not in policy.key_types",
            ),
            ("[profiles.x]\nbase = \"server\"\nmax_validity_days = 0\n", "at least 1"),
            ("[profiles.x]\nextended_key_usages = []\n", "serverAuth, clientAuth or both"),
            (
                "[profiles.x]\nextended_key_usages = [\"codeSigning\"]\n",
                "\"codeSigning\" is not one of serverAuth, clientAuth",
            ),
            (
                "[profiles.x]\nextended_key_usages = [\"clientAuth\", \"clientAuth\"]\n",
                "names clientAuth twice",
            ),
            (
                "[profiles.x]\nkey_usages = [\"keyEncipherment\"]\n",
                "must include digitalSignature",
            ),
            (
                "[profiles.x]\nkey_usages = [\"digitalSignature\", \"keyCertSign\"]\n",
                "\"keyCertSign\" is not one of",
            ),
            (
                "[profiles.x]\nrevocation_info = false\nmax_validity_days = 30\n",
                "max_validity_days is 30, but a certificate without revocation information lives at most 7 days",
            ),
            (
                "[profiles.x]\nextended_key_usage = [\"clientAuth\"]\n",
                "profiles.x.extended_key_usage: unknown field `extended_key_usage`, expected one of `base`, `extended_key_usages`",
            ),
        ] {
            std::fs::write(dir.path().join(CONFIG_FILE_NAME), table).unwrap();
            let err = Config::load(None, dir.path(), env(&[])).unwrap_err().to_string();
            assert!(
                err.contains("profiles.x") || err.contains("profiles.server") || err.contains("profiles.Bad"),
                "the key is named: {err}"
            );
            assert!(err.contains(says), "{table}: {err}");
        }
    }

    /// The keys serde accepts at `path` (a section, or the top level), read
    /// from its unknown-field error: the configuration type itself.
    fn keys_of(path: &[&str]) -> Vec<String> {
        let mut value = toml::Value::Table(
            [("zz_not_a_key".to_owned(), toml::Value::Integer(1))]
                .into_iter()
                .collect(),
        );
        for part in path.iter().rev() {
            value = match *part {
                // An array of tables: one element.
                "[]" => toml::Value::Array(vec![value]),
                _ => toml::Value::Table([((*part).to_owned(), value)].into_iter().collect()),
            };
        }
        let err = value
            .try_into::<file::FileConfig>()
            .unwrap_err()
            .to_string();
        // "expected one of `a`, `b`, `c`", for two fields "expected `a`
        // or `b`", for one "expected `a`".
        let list = err
            .split("expected one of ")
            .nth(1)
            .or_else(|| err.split("expected ").nth(1))
            .unwrap_or_else(|| panic!("{path:?}: {err}"));
        let list = list.lines().next().unwrap_or_default();
        list.split(", ")
            .flat_map(|k| k.split(" or "))
            .map(|k| k.trim().trim_matches('`').to_owned())
            .collect()
    }

    #[test]
    fn smtp_settings_are_checked_with_their_key_named() {
        let err = |pairs: &[(&str, &str)]| {
            Config::load(
                None,
                std::path::Path::new("/nonexistent"),
                pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .unwrap_err()
            .to_string()
        };
        let host = ("HALLMARK_SMTP__HOST", "mail.internal");
        assert!(err(&[host]).contains("smtp.from"));
        assert!(err(&[host, ("HALLMARK_SMTP__FROM", "nobody")]).contains("smtp.from"));
        assert!(err(&[
            host,
            ("HALLMARK_SMTP__FROM", "ca@x.internal"),
            ("HALLMARK_SMTP__TLS", "ssl")
        ])
        .contains("smtp.tls"));
        assert!(err(&[
            host,
            ("HALLMARK_SMTP__FROM", "ca@x.internal"),
            ("HALLMARK_SMTP__USERNAME", "u")
        ])
        .contains("smtp.username"));
        assert!(err(&[
            host,
            ("HALLMARK_SMTP__FROM", "ca@x.internal"),
            ("HALLMARK_SMTP__ALSO_TO", "[\"a b\"]")
        ])
        .contains("smtp.also_to"));
        let ok = Config::load(
            None,
            std::path::Path::new("/nonexistent"),
            [
                ("HALLMARK_SMTP__HOST".to_owned(), "mail.internal".to_owned()),
                ("HALLMARK_SMTP__FROM".to_owned(), "ca@x.internal".to_owned()),
                ("HALLMARK_SMTP__TLS".to_owned(), "tls".to_owned()),
            ],
        )
        .unwrap();
        let smtp = ok.smtp.unwrap();
        assert_eq!(smtp.port, 465, "implicit TLS defaults to 465");
        assert!(
            Config::load(None, std::path::Path::new("/nonexistent"), Vec::new())
                .unwrap()
                .smtp
                .is_none()
        );
    }

    #[test]
    fn the_example_file_and_the_readme_document_exactly_the_keys_of_the_type() {
        let sections = keys_of(&[]);
        assert!(sections.contains(&"server".to_owned()), "{sections:?}");
        let mut by_section = std::collections::BTreeMap::new();
        for section in &sections {
            let path: Vec<&str> = match section.as_str() {
                "profiles" => vec!["profiles", "x"],
                "webhooks" => vec!["webhooks", "[]"],
                other => vec![other],
            };
            by_section.insert(section.clone(), keys_of(&path));
        }

        // hallmark.example.toml: every key of every section, set or
        // commented out, and nothing else.
        let mut documented: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        let mut current = String::new();
        for line in EXAMPLE_CONFIG.lines() {
            let bare = line.trim_start_matches('#').trim();
            if bare.starts_with('[') {
                // `[crl]`, `[profiles.device]`, `[[webhooks]]`
                let header = bare.trim_start_matches('[').split(']').next().unwrap();
                current = header.split('.').next().unwrap().to_owned();
                continue;
            }
            let Some((key, _)) = bare.split_once('=') else {
                continue;
            };
            let key = key.trim();
            if !current.is_empty()
                && !key.is_empty()
                && key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                documented
                    .entry(current.clone())
                    .or_default()
                    .push(key.to_owned());
            }
        }
        for (section, keys) in &by_section {
            let mut want = keys.clone();
            want.sort();
            let mut got = documented.get(section).cloned().unwrap_or_default();
            got.sort();
            got.dedup();
            assert_eq!(got, want, "hallmark.example.toml [{section}]");
        }

        // README: every key its configuration table names exists.
        let readme = include_str!("../../README.md");
        let table = readme
            .split("| key | default | meaning |")
            .nth(1)
            .expect("the README's configuration table");
        let mut named = 0;
        for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
            let first = row.split('|').nth(1).unwrap();
            let mut section = String::new();
            for (i, token) in first.split('`').enumerate() {
                if i % 2 == 0 || token.is_empty() {
                    continue;
                }
                let key = match token.split_once('.') {
                    Some((s, k)) => {
                        section = s.to_owned();
                        k.to_owned()
                    }
                    None => token.to_owned(),
                };
                if section == "profiles" {
                    continue; // `profiles.NAME`
                }
                let known = by_section.get(&section).is_some_and(|ks| ks.contains(&key));
                assert!(known, "README names {section}.{key}, which is not a key");
                named += 1;
            }
        }
        assert!(named > 40, "{named}");
    }

    #[test]
    fn a_profile_chooses_its_own_usages_and_revocation_information() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            "[profiles.mtls]\nextended_key_usages = [\"clientAuth\"]\nkey_usages = [\"digitalSignature\", \"keyAgreement\"]\nrevocation_info = false\n\n[profiles.plain]\n",
        )
        .unwrap();
        let c = Config::load(None, dir.path(), env(&[])).unwrap();
        let mtls = c.policy.profile("mtls").unwrap();
        assert_eq!(
            mtls.shape,
            Shape {
                server_auth: false,
                client_auth: true,
                key_encipherment: false,
                key_agreement: true,
                revocation_info: false,
            }
        );
        assert_eq!(mtls.cap(), Some(7), "no revocation information: 7 days");
        assert_eq!(
            mtls.description,
            "mtls: clientAuth; keyAgreement for EC keys; no revocation information (RFC 9608 noRevAvail), at most 7 days"
        );
        // No base: the server profile's shape.
        let plain = c.policy.profile("plain").unwrap();
        assert_eq!(plain.shape, Profile::Server.shape());
        assert_eq!(plain.cap(), None);
    }

    #[test]
    fn webhooks_need_a_url_one_secret_and_known_events_and_never_show_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "from-a-file-0123456789\n").unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE_NAME),
            format!(
                "[[webhooks]]\nurl = \"https://hooks.internal/a\"\nsecret = \"0123456789abcdef\"\n\n\
                 [[webhooks]]\nurl = \"http://127.0.0.1:9/b\"\nsecret_file = \"{}\"\nevents = [\"certificate.revoked\"]\n",
                dir.path().join("secret").display()
            ),
        )
        .unwrap();
        let c = Config::load(None, dir.path(), env(&[])).unwrap();
        assert_eq!(c.webhooks.len(), 2);
        assert_eq!(c.webhooks[0].events.len(), 6, "all events by default");
        assert_eq!(&c.webhooks[1].secret[..], b"from-a-file-0123456789");
        assert_eq!(c.webhooks[1].events, ["certificate.revoked"]);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("0123456789abcdef") && !shown.contains("from-a-file"),
            "{shown}"
        );
        for (body, says) in [
            ("url = \"ftp://x/\"\nsecret = \"0123456789abcdef\"", "is not an http or https URL"),
            ("url = \"https://x/\"", "exactly one of secret and secret_file"),
            ("url = \"https://x/\"\nsecret = \"short\"", "at least 16 characters"),
            (
                "url = \"https://x/\"\nsecret = \"0123456789abcdef\"\nevents = [\"certificate.expired\"]",
                "unknown event \"certificate.expired\"",
            ),
        ] {
            std::fs::write(dir.path().join(CONFIG_FILE_NAME), format!("[[webhooks]]\n{body}\n")).unwrap();
            let err = Config::load(None, dir.path(), env(&[])).unwrap_err().to_string();
            assert!(err.contains("webhooks") && err.contains(says), "{body}: {err}");
        }
    }

    #[test]
    fn debug_output_hides_the_database_password() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(
            None,
            dir.path(),
            env(&[("DATABASE_URL", "postgres://u:hunter2@db/x")]),
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter2") && text.contains("postgres://u:***@db/x"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let err = |pairs: &[(&str, &str)]| {
            Config::load(None, dir.path(), env(pairs))
                .unwrap_err()
                .to_string()
        };
        assert!(err(&[("HALLMARK_SERVER__TLS", "maybe")]).contains("server.tls"));
        assert!(err(&[("HALLMARK_POLICY__KEY_TYPES", "[\"dsa\"]")]).contains("policy.key_types"));
        assert!(
            err(&[("HALLMARK_VALIDATION__DENY_NETWORKS", "[\"10.0.0.0/40\"]")])
                .contains("validation.deny_networks")
        );
        assert!(err(&[("HALLMARK_VALIDATION__ALLOW_NETWORKS", "[\"x\"]")])
            .contains("validation.allow_networks"));
        assert!(err(&[("HALLMARK_POLICY__NO_SUCH_KEY", "1")]).contains("no_such_key"));
        assert!(
            err(&[("HALLMARK_SERVER__HTTPS_LISTEN", "localhost")]).contains("server.https_listen")
        );
        let missing = Config::load(Some(&dir.path().join("nope.toml")), dir.path(), env(&[]));
        assert!(matches!(missing, Err(ConfigError::Read { .. })));
        assert!(err(&[("HALLMARK_ACME__TERMS_OF_SERVICE", "terms.html")])
            .contains("acme.terms_of_service"));
        assert!(err(&[("HALLMARK_ACME__CHALLENGE_WAIT_MS", "10001")])
            .contains("acme.challenge_wait_ms"));
        assert!(err(&[
            ("HALLMARK_CRL__DELTA", "true"),
            ("HALLMARK_CRL__COMPLETE_WITH_PARTITIONS", "false")
        ])
        .contains("crl.delta"));
    }

    #[test]
    fn acme_settings_load_and_the_danger_switch_is_out_of_reach() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load(
            None,
            dir.path(),
            env(&[
                ("HALLMARK_ACME__EAB_REQUIRED", "true"),
                ("HALLMARK_ACME__CAA_IDENTITIES", "[\"ca.internal\"]"),
            ]),
        )
        .unwrap();
        assert!(c.acme.eab_required);
        assert_eq!(c.acme.caa_identities, ["ca.internal"]);
        assert_eq!(c.danger_acme_chaos, None);
        // Neither a section, a key nor a variable reaches the test switch.
        for pairs in [
            [("HALLMARK_DANGER_ACME_CHAOS__REJECT_EVERY_NTH_NONCE", "3")],
            [("HALLMARK_ACME__DANGER_ACME_CHAOS", "true")],
            [("HALLMARK_ACME__REJECT_EVERY_NTH_NONCE", "3")],
        ] {
            assert!(
                Config::load(None, dir.path(), env(&pairs)).is_err(),
                "{pairs:?}"
            );
        }
        let path = dir.path().join("x.toml");
        std::fs::write(
            &path,
            "danger_acme_chaos = { reject_every_nth_nonce = 3 }\n",
        )
        .unwrap();
        assert!(Config::load(Some(&path), dir.path(), env(&[])).is_err());
    }
}
