//! Domain validation: checkers that fetch a challenge answer from the
//! network and report whether it matches. They never change an order; the
//! workflow records what they report (RFC 8555 §8).

pub mod caa;
pub mod dns01;
pub mod http01;
pub mod network;
pub mod tls_alpn01;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::ValidationSection;
use crate::pki::Identifier;
use caa::CaaSettings;
use network::{IpNet, NetworkPolicy};

/// Largest challenge response read (RFC 8555 §8.3 answers are ~90 bytes).
pub const MAX_BODY_BYTES: usize = 8 * 1024;
/// Most redirects an http-01 fetch follows.
pub const MAX_REDIRECTS: usize = 10;

/// Validations running at once in one process; more wait their turn.
pub const MAX_CONCURRENT_VALIDATIONS: usize = 64;

/// How validators reach the requester's servers (the `[validation]` section).
#[derive(Debug, Clone)]
pub struct ValidationConfig {
    /// Port http-01 fetches from (80; 5002 in tests).
    pub http_port: u16,
    /// Port tls-alpn-01 connects to (443).
    pub tls_alpn_port: u16,
    /// Longest a validation may take, end to end.
    pub timeout: Duration,
    /// Which addresses may be connected to.
    pub network: Arc<NetworkPolicy>,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            http_port: 80,
            tls_alpn_port: 443,
            timeout: Duration::from_secs(10),
            network: Arc::default(),
        }
    }
}

/// What kind of wrong answer an http-01 body was (never its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongContentKind {
    /// A key authorization for this token, made with another account key.
    OtherAccountKey,
    /// Empty.
    Empty,
    /// Anything else.
    Other,
}

impl std::fmt::Display for WrongContentKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WrongContentKind::OtherAccountKey => {
                "the key authorization of this token for another account key"
            }
            WrongContentKind::Empty => "empty",
            WrongContentKind::Other => "not a key authorization of this token",
        })
    }
}

/// Why a challenge failed; shown to the requester, one sentence each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// No TCP or TLS connection could be made.
    #[error("could not connect to {url}: {reason}")]
    Connection {
        /// What was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// The whole validation took longer than the configured timeout.
    #[error("fetching {url} timed out after {seconds} s")]
    Timeout {
        /// What was fetched.
        url: String,
        /// The limit.
        seconds: u64,
    },
    /// The server answered with a status other than 200.
    #[error("{url} answered HTTP {status}; the challenge needs 200 with the key authorization")]
    BadStatus {
        /// What was fetched.
        url: String,
        /// The status.
        status: u16,
    },
    /// The body is larger than [`MAX_BODY_BYTES`].
    #[error("the response from {url} is larger than 8192 bytes")]
    BodyTooLarge {
        /// What was fetched.
        url: String,
    },
    /// The body is not the key authorization. What came back is never
    /// repeated (the validator must not become a way to read internal
    /// services): only its length and what kind of wrong it is.
    #[error("the response from {url} is not the key authorization ({length} bytes: {kind})")]
    WrongContent {
        /// What was fetched.
        url: String,
        /// How long the body was.
        length: usize,
        /// What kind of wrong answer it was.
        kind: WrongContentKind,
    },
    /// A redirect to another host, or to a scheme or port other than
    /// http(s) on 80/443.
    #[error("refused to follow the redirect to {to}: only http and https on ports 80 and 443 of the same host are followed")]
    ForbiddenRedirect {
        /// Where the redirect pointed.
        to: String,
    },
    /// The address a name resolved to (or an IP identifier) is one
    /// validators must not connect to (see [`network`]).
    #[error("refused to connect to {address}: {reason}")]
    RefusedAddress {
        /// The identifier and address.
        address: String,
        /// Why, one clause.
        reason: String,
    },
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("more than 10 redirects")]
    TooManyRedirects,
    /// The tls-alpn-01 handshake or certificate is not what RFC 8737 asks.
    #[error("tls-alpn-01 at {url}: {reason}")]
    TlsAlpn {
        /// Where.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// The challenge name does not exist (NXDOMAIN).
    #[error("{name} does not exist in DNS (NXDOMAIN)")]
    DnsNameNotFound {
        /// The queried name.
        name: String,
    },
    /// The name exists but has no TXT record.
    #[error("{name} has no TXT record")]
    DnsNoTxtRecord {
        /// The queried name.
        name: String,
    },
    /// TXT records exist but none is the expected value. The values are
    /// not repeated, only how many there were.
    #[error("none of the {count} TXT records at {name} is the expected value")]
    DnsWrongValue {
        /// The queried name.
        name: String,
        /// How many TXT records there were.
        count: usize,
    },
    /// No dns-persist-01 record authorises this CA for the account.
    #[error("no TXT record at {name} authorises this CA for the account: {reason}")]
    DnsPersist {
        /// The queried name.
        name: String,
        /// Why each record did not.
        reason: String,
    },
    /// CAA records do not let this CA issue for the name.
    #[error("CAA forbids issuance for {name}: {reason}")]
    Caa {
        /// The name.
        name: String,
        /// Why, one clause.
        reason: String,
    },
    /// The lookup failed (timeout, SERVFAIL, refused).
    #[error("the DNS lookup of {name} failed: {reason}")]
    Dns {
        /// The queried name.
        name: String,
        /// Why.
        reason: String,
    },
}

impl ValidationError {
    /// The ACME error type (RFC 8555 §6.7) to report this as.
    pub fn acme_type(&self) -> crate::acme_error::AcmeError {
        use crate::acme_error::AcmeError;
        match self {
            ValidationError::Connection { .. }
            | ValidationError::Timeout { .. }
            | ValidationError::RefusedAddress { .. } => AcmeError::Connection,
            ValidationError::BadStatus { .. }
            | ValidationError::BodyTooLarge { .. }
            | ValidationError::ForbiddenRedirect { .. }
            | ValidationError::TooManyRedirects
            | ValidationError::TlsAlpn { .. } => AcmeError::Unauthorized,
            ValidationError::WrongContent { .. } | ValidationError::DnsWrongValue { .. } => {
                AcmeError::IncorrectResponse
            }
            ValidationError::DnsNameNotFound { .. }
            | ValidationError::DnsNoTxtRecord { .. }
            | ValidationError::Dns { .. } => AcmeError::Dns,
            ValidationError::Caa { .. } => AcmeError::Caa,
            ValidationError::DnsPersist { .. } => AcmeError::Unauthorized,
        }
    }
}

pub use crate::store::ChallengeKind;

/// The key authorization (RFC 8555 §8.1): `token || '.' || thumbprint`.
pub fn key_authorization(token: &str, thumbprint: &str) -> String {
    format!("{token}.{thumbprint}")
}

/// Who an order is for: the account whose URL dns-account-01's label and
/// CAA's `accounturi` are made from.
#[derive(Debug, Clone, Copy)]
pub enum RequesterAccount<'a> {
    /// An ACME account id.
    Acme(&'a str),
    /// A hallmark (REST) account id.
    Rest(&'a str),
}

impl RequesterAccount<'_> {
    /// The id (validation slots are per this account).
    pub fn id(&self) -> &str {
        match self {
            RequesterAccount::Acme(id) | RequesterAccount::Rest(id) => id,
        }
    }
}

/// How account URLs are spelled: `<public_https_url>/acme/account/<id>`
/// (the ACME account URL clients know) and, for REST orders,
/// `<public_https_url>/api/v1/accounts/<id>`.
#[derive(Debug, Clone, Default)]
pub struct AccountUrls {
    /// The prefix of ACME account URLs.
    pub acme_prefix: String,
    /// The prefix of REST account URLs.
    pub rest_prefix: String,
}

impl AccountUrls {
    /// From the public HTTPS URL.
    pub fn new(public_https_url: &str) -> AccountUrls {
        AccountUrls {
            acme_prefix: format!("{public_https_url}/acme/account/"),
            rest_prefix: format!("{public_https_url}/api/v1/accounts/"),
        }
    }

    /// The URL of `account`.
    pub fn url(&self, account: RequesterAccount<'_>) -> String {
        match account {
            RequesterAccount::Acme(id) => format!("{}{id}", self.acme_prefix),
            RequesterAccount::Rest(id) => format!("{}{id}", self.rest_prefix),
        }
    }
}

/// The validators with their shared clients, built once from `[validation]`.
pub struct Validators {
    config: ValidationConfig,
    resolver: hickory_resolver::TokioResolver,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
    permits: Semaphore,
    per_account: Mutex<HashMap<String, Arc<Semaphore>>>,
    max_per_account: usize,
    caa: CaaSettings,
    accounts: AccountUrls,
}

impl Validators {
    /// Builds the validators; fails with a sentence naming the bad setting.
    /// `listeners` are the CA's own listen addresses, which validators
    /// never connect to.
    pub fn new(
        section: &ValidationSection,
        listeners: &[SocketAddr],
    ) -> Result<Validators, String> {
        let nets = |key: &str, list: &[String]| {
            list.iter()
                .map(|n| n.parse::<IpNet>().map_err(|e| format!("{key}: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        let network = NetworkPolicy::new(
            nets("validation.deny_networks", &section.deny_networks)?,
            nets("validation.allow_networks", &section.allow_networks)?,
            listeners.to_vec(),
        );
        let config = ValidationConfig {
            http_port: section.http_port,
            tls_alpn_port: section.tls_alpn_port,
            timeout: Duration::from_secs(section.timeout_secs.max(1)),
            network: Arc::new(network),
        };
        let resolver = dns01::resolver(&section.dns_resolver, config.timeout)?;
        let http = http01::client(&config, resolver.clone())
            .map_err(|e| format!("the http-01 client: {e}"))?;
        let tls =
            tls_alpn01::client_config().map_err(|e| format!("the tls-alpn-01 client: {e}"))?;
        Ok(Validators {
            config,
            resolver,
            http,
            tls,
            permits: Semaphore::new(MAX_CONCURRENT_VALIDATIONS),
            per_account: Mutex::default(),
            max_per_account: (section.max_per_account.max(1) as usize)
                .min(MAX_CONCURRENT_VALIDATIONS),
            caa: CaaSettings::default(),
            accounts: AccountUrls::default(),
        })
    }

    /// The issuer domain names that mean this CA (`acme.caa_identities`):
    /// what CAA and dns-persist-01 records name. Empty: neither is used.
    pub fn issuer_domains(&self) -> &[String] {
        &self.caa.identities
    }

    /// How account URLs are spelled (for dns-account-01 and CAA).
    pub fn with_accounts(self, accounts: AccountUrls) -> Validators {
        Validators { accounts, ..self }
    }

    /// Checks CAA after each successful challenge (on when
    /// `settings.identities` is not empty).
    pub fn with_caa(self, settings: CaaSettings) -> Validators {
        Validators {
            caa: settings,
            ..self
        }
    }

    /// After a successful challenge: whether the name's CAA records let
    /// this CA issue for it, for `account` by `kind`. IP addresses have no
    /// CAA (RFC 8738 §7); with no identities configured nothing is checked.
    pub async fn check_caa(
        &self,
        identifier: &Identifier,
        account: RequesterAccount<'_>,
        kind: ChallengeKind,
    ) -> Result<(), ValidationError> {
        let Identifier::Dns(name) = identifier else {
            return Ok(());
        };
        if self.caa.identities.is_empty() {
            return Ok(());
        }
        let limit = self.limit();
        tokio::time::timeout(
            limit,
            caa::check(
                &self.resolver,
                &self.caa,
                name,
                &self.accounts.url(account),
                kind.as_str(),
            ),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ValidationError::Caa {
                name: name.clone(),
                reason: format!("the CAA lookup took longer than {} s", limit.as_secs()),
            })
        })
    }

    /// Runs one challenge check for `account`. It waits first for one of
    /// the account's own slots (`validation.max_per_account`), then for one
    /// of the process's; the time limit starts only once it runs, so an
    /// account whose challenges point at black holes delays only itself.
    pub async fn check(
        &self,
        account: &str,
        kind: ChallengeKind,
        identifier: &Identifier,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), ValidationError> {
        self.check_for(
            RequesterAccount::Rest(account),
            kind,
            identifier,
            token,
            key_authorization,
        )
        .await
    }

    /// [`Validators::check`] for an ACME or REST account (whose URL
    /// dns-account-01's record name is made from).
    pub async fn check_for(
        &self,
        requester: RequesterAccount<'_>,
        kind: ChallengeKind,
        identifier: &Identifier,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), ValidationError> {
        let account = requester.id();
        let closed = || ValidationError::Connection {
            url: identifier.to_string(),
            reason: "the validator is shutting down".into(),
        };
        let account_slots = self.account_slots(account);
        let _account_permit = account_slots.acquire().await.map_err(|_| closed())?;
        let _permit = self.permits.acquire().await.map_err(|_| closed())?;
        // Each network step is bounded by the timeout; this bounds the
        // whole (a DNS lookup, then a connection and a read).
        let limit = self.limit();
        let run = self.run(requester, kind, identifier, token, key_authorization);
        tokio::time::timeout(limit, run).await.unwrap_or_else(|_| {
            Err(ValidationError::Timeout {
                url: identifier.to_string(),
                seconds: limit.as_secs(),
            })
        })
    }

    /// The bound on one whole check: each network step is bounded by the
    /// timeout, and a check makes at most two (a lookup, then a connection
    /// and a read).
    fn limit(&self) -> Duration {
        self.config.timeout * 2 + Duration::from_secs(1)
    }

    /// The semaphore bounding `account`'s concurrent validations.
    fn account_slots(&self, account: &str) -> Arc<Semaphore> {
        let mut slots = self.per_account.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() > 4096 {
            // Forget idle accounts (only the map holds them, all permits free).
            let max = self.max_per_account;
            slots.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < max);
        }
        slots
            .entry(account.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_account)))
            .clone()
    }

    async fn run(
        &self,
        requester: RequesterAccount<'_>,
        kind: ChallengeKind,
        identifier: &Identifier,
        token: &str,
        key_authorization: &str,
    ) -> Result<(), ValidationError> {
        match (kind, identifier) {
            (ChallengeKind::Http01, _) => {
                http01::validate(
                    &self.http,
                    &self.config,
                    identifier,
                    token,
                    key_authorization,
                )
                .await
            }
            (ChallengeKind::Dns01, Identifier::Dns(name)) => {
                dns01::validate(&self.resolver, name, key_authorization).await
            }
            (ChallengeKind::DnsAccount01, Identifier::Dns(name)) => {
                let url = self.accounts.url(requester);
                dns01::validate_account(&self.resolver, name, &url, key_authorization).await
            }
            (ChallengeKind::DnsPersist01, Identifier::Dns(name)) => {
                let url = self.accounts.url(requester);
                dns01::validate_persist(&self.resolver, name, &self.caa.identities, &url).await
            }
            (
                ChallengeKind::Dns01 | ChallengeKind::DnsAccount01 | ChallengeKind::DnsPersist01,
                Identifier::Ip(ip),
            ) => Err(ValidationError::Dns {
                name: ip.to_string(),
                reason: format!("IP addresses cannot be validated by {kind}"),
            }),
            (ChallengeKind::TlsAlpn01, _) => {
                let address = self.address_of(identifier).await?;
                tls_alpn01::validate(
                    self.tls.clone(),
                    &self.config,
                    address,
                    identifier,
                    key_authorization,
                )
                .await
            }
        }
    }

    /// The address tls-alpn-01 connects to: the first the network policy
    /// allows (the one checked is the one connected to).
    async fn address_of(&self, identifier: &Identifier) -> Result<IpAddr, ValidationError> {
        let port = self.config.tls_alpn_port;
        let refused = |ip: IpAddr, why: network::Refusal| ValidationError::RefusedAddress {
            address: format!("{identifier} ({})", SocketAddr::new(ip, port)),
            reason: why.to_string(),
        };
        match identifier {
            Identifier::Ip(ip) => {
                self.config
                    .network
                    .check(*ip, &[port])
                    .map_err(|why| refused(*ip, why))?;
                Ok(*ip)
            }
            Identifier::Dns(name) => {
                let lookup = self
                    .resolver
                    .lookup_ip(format!("{name}."))
                    .await
                    .map_err(|e| {
                        if e.is_nx_domain() {
                            ValidationError::DnsNameNotFound { name: name.clone() }
                        } else {
                            ValidationError::Dns {
                                name: name.clone(),
                                reason: e.to_string(),
                            }
                        }
                    })?;
                let mut first_refusal = None;
                for ip in lookup.iter() {
                    match self.config.network.check(ip, &[port]) {
                        Ok(()) => return Ok(ip),
                        Err(why) => {
                            first_refusal.get_or_insert((ip, why));
                        }
                    }
                }
                Err(match first_refusal {
                    Some((ip, why)) => refused(ip, why),
                    None => ValidationError::Dns {
                        name: name.clone(),
                        reason: "no A or AAAA record".into(),
                    },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_offered_follow_the_identifier() {
        let wildcard = Identifier::Dns("*.a.internal".into());
        assert_eq!(
            ChallengeKind::offered_for(&wildcard),
            &[
                ChallengeKind::Dns01,
                ChallengeKind::DnsAccount01,
                ChallengeKind::DnsPersist01
            ]
        );
        let ip = Identifier::Ip("10.0.0.1".parse().unwrap());
        assert!(!ChallengeKind::offered_for(&ip).contains(&ChallengeKind::Dns01));
        assert!(!ChallengeKind::offered_for(&ip).contains(&ChallengeKind::DnsAccount01));
        assert!(!ChallengeKind::offered_for(&ip).contains(&ChallengeKind::DnsPersist01));
        for k in [
            ChallengeKind::Http01,
            ChallengeKind::Dns01,
            ChallengeKind::TlsAlpn01,
            ChallengeKind::DnsAccount01,
            ChallengeKind::DnsPersist01,
        ] {
            assert_eq!(k.as_str().parse::<ChallengeKind>().unwrap(), k);
        }
        assert_eq!(key_authorization("t", "p"), "t.p");
    }
}
