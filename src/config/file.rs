//! The configuration file as written: one struct per `[section]`, each
//! key with its built-in default. `super` turns these into the validated
//! [`super::Config`].

use std::path::PathBuf;

use serde::Deserialize;

use crate::pki::KeyType;
use crate::policy::Policy;

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Listener for the API, ACME and dashboard (default `127.0.0.1:8443`).
    pub https_listen: String,
    /// Plain-HTTP listener for CA certificates, CRLs, OCSP and health
    /// (default `127.0.0.1:8080`).
    pub http_listen: String,
    /// Public base URL of the HTTPS listener (default `https://localhost:<port>`).
    pub public_https_url: Option<String>,
    /// Public base URL of the HTTP listener, put into certificates (default
    /// `http://127.0.0.1:<port>`).
    pub public_http_url: Option<String>,
    /// `self` (hallmark issues its own TLS certificate), `files`, or `off`
    /// (plain HTTP on `https_listen`, behind a TLS-terminating proxy).
    pub tls: String,
    /// With `tls = "files"`: PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// With `tls = "files"`: PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Open connections per listener (default 1024). At the cap, the
    /// connection idle longest is closed for the new one; if none is idle,
    /// the new one is refused.
    pub max_connections: usize,
    /// A connection that has sent nothing for this long with no request in
    /// progress is closed (default 30 s); the first request must begin
    /// within 10 s of connecting.
    pub idle_timeout_secs: u64,
    /// Write the first administrator's one-time password to this file
    /// (created 0600, never overwritten) instead of printing it, so it
    /// stays out of container logs.
    pub initial_password_file: Option<PathBuf>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            https_listen: "127.0.0.1:8443".into(),
            http_listen: "127.0.0.1:8080".into(),
            public_https_url: None,
            public_http_url: None,
            tls: "self".into(),
            tls_cert: None,
            tls_key: None,
            max_connections: 1024,
            idle_timeout_secs: 30,
            initial_password_file: None,
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSection {
    /// `sqlite://PATH` or `postgres://…`; default `sqlite://<data dir>/hallmark.db`.
    /// `DATABASE_URL` wins over this.
    pub url: Option<String>,
    /// PostgreSQL only: `serve` is the database's one instance, and keeps
    /// orders and used ACME nonces in memory as on SQLite (default false:
    /// several instances may serve behind a load balancer). Enforced with
    /// an advisory lock: an instance of the other kind refuses to start.
    pub single_instance: bool,
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicySection {
    /// Name suffixes that may be certified (default `["internal", "test"]`).
    pub allowed_suffixes: Vec<String>,
    /// Whether IP SANs may be certified (default true).
    pub allow_ip: bool,
    /// CIDR blocks IP SANs must fall in (default: the private and loopback
    /// ranges, 10/8, 172.16/12, 192.168/16, 100.64/10, 127/8, ::1, fc00::/7).
    pub allowed_ip_ranges: Vec<String>,
    /// Whether wildcards may be certified (default true; they need dns-01).
    pub allow_wildcard: bool,
    /// Validity when a request names none (default 90).
    pub default_validity_days: u32,
    /// Longest validity (default 397).
    pub max_validity_days: u32,
    /// Subject key types accepted (default all five; `ed25519` may be added).
    pub key_types: Vec<String>,
}

impl Default for PolicySection {
    fn default() -> Self {
        let p = Policy::default();
        PolicySection {
            allowed_suffixes: p.allowed_suffixes,
            allow_ip: p.allow_ip,
            allowed_ip_ranges: p.allowed_ip_ranges.iter().map(|n| n.to_string()).collect(),
            allow_wildcard: p.allow_wildcard,
            default_validity_days: p.default_validity_days,
            max_validity_days: p.max_validity_days,
            key_types: KeyType::ALL.iter().map(|k| k.as_str().to_owned()).collect(),
        }
    }
}

/// `[validation]` (used by the DV validators).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationSection {
    /// DNS resolver `host:port`, or empty for the system's.
    pub dns_resolver: String,
    /// Port http-01 fetches from (default 80).
    pub http_port: u16,
    /// Port tls-alpn-01 connects to (default 443).
    pub tls_alpn_port: u16,
    /// Per-validation timeout (default 10 s).
    pub timeout_secs: u64,
    /// CIDR blocks validators never connect to, beside the defaults
    /// (link-local, metadata, non-unicast; see `validation::network`).
    pub deny_networks: Vec<String>,
    /// CIDR blocks validators may connect to even where a default or a
    /// wider `deny_networks` block refuses them (most specific wins).
    pub allow_networks: Vec<String>,
    /// Validations one account may have running at once, per instance
    /// (default 8); more wait, so one account cannot fill every slot.
    pub max_per_account: u32,
}

impl Default for ValidationSection {
    fn default() -> Self {
        ValidationSection {
            dns_resolver: String::new(),
            http_port: 80,
            tls_alpn_port: 443,
            timeout_secs: 10,
            deny_networks: Vec::new(),
            allow_networks: Vec::new(),
            max_per_account: 8,
        }
    }
}

/// `[crl]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrlSection {
    /// nextUpdate − thisUpdate (default 168 h).
    pub validity_hours: u32,
    /// Regular regeneration interval (default 24 h).
    pub regenerate_every_hours: u32,
    /// A CRL missing a revocation is republished at once, but at most once
    /// per this many seconds, so a burst makes one CRL (default 2 s).
    pub debounce_secs: u32,
    /// Spread new certificates over this many partitioned CRLs, each
    /// named by its certificates' CDP (default 0: one CRL per issuer).
    pub partitions: u32,
    /// With `partitions`: whether the issuer's CRL (`/crl/<issuer>.crl`)
    /// still lists every revoked certificate (default true), or only
    /// those outside any partition, scoped to them by an
    /// issuingDistributionPoint — so past millions of revocations no
    /// revocation rebuilds a CRL of all of them.
    pub complete_with_partitions: bool,
    /// Publish delta CRLs (RFC 5280 §5.2.4) announced by freshestCRL in
    /// the complete CRL (default false).
    pub delta: bool,
    /// With `delta`: how often the delta CRL is regenerated even without
    /// revocations, and how long it is valid for twice that (default 60).
    pub delta_every_minutes: u32,
    /// nextUpdate of the root's CRL, which only `hallmark crl generate
    /// --root` signs (default 365 days).
    pub root_validity_days: u32,
    /// `Cache-Control: max-age` of a served CRL, never past its nextUpdate
    /// (default 300 s).
    pub max_age_secs: u32,
}

impl Default for CrlSection {
    fn default() -> Self {
        CrlSection {
            validity_hours: 168,
            regenerate_every_hours: 24,
            debounce_secs: 2,
            partitions: 0,
            complete_with_partitions: true,
            delta: false,
            delta_every_minutes: 60,
            root_validity_days: 365,
            max_age_secs: 300,
        }
    }
}

/// `[ocsp]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OcspSection {
    /// nextUpdate − thisUpdate of each answer (default 60 minutes).
    pub validity_minutes: u32,
    /// `delegated` (a short-lived OCSP-signing certificate hallmark issues
    /// and rotates) or `issuer` (the intermediate's key signs).
    pub signer: String,
    /// Lifetime of the delegated responder certificate (default 7 days);
    /// a new one is issued when half of it has passed.
    pub responder_validity_days: u32,
    /// Answers without a nonce are reused for this long (default 60 s);
    /// a revocation through this instance clears them at once.
    pub cache_secs: u32,
}

impl Default for OcspSection {
    fn default() -> Self {
        OcspSection {
            validity_minutes: 60,
            signer: "delegated".into(),
            responder_validity_days: 7,
            cache_secs: 60,
        }
    }
}

/// `[orders]`: the order workflow.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrdersSection {
    /// An identifier the same account proved control of within this many
    /// days needs no new challenge (default 30; 0 = always validate).
    pub reuse_days: u32,
    /// An order not finished within this many hours becomes invalid
    /// (default 168).
    pub lifetime_hours: u32,
    /// New orders per account per minute, per instance (default 1000;
    /// 0 = no limit). Bursts up to the same number are allowed.
    pub rate_per_minute: u32,
    /// Unfinished (`pending`, unexpired) authorizations one account may
    /// hold (default 1000; 0 = no limit); beyond, new names are refused
    /// with 429 until some are answered or expire.
    pub max_pending_authorizations: u32,
}

impl Default for OrdersSection {
    fn default() -> Self {
        OrdersSection {
            reuse_days: 30,
            lifetime_hours: 168,
            rate_per_minute: 1000,
            max_pending_authorizations: 1000,
        }
    }
}

/// `[acme]`: the ACME server (RFC 8555).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AcmeSection {
    /// newAccount needs an external account binding (RFC 8555 §7.3.4): an
    /// HMAC key an administrator issued for a hallmark account, so every
    /// ACME certificate belongs to an account someone created.
    pub eab_required: bool,
    /// URL of the terms of service clients are asked to agree to; empty:
    /// none (the directory then omits `termsOfService`).
    pub terms_of_service: String,
    /// The directory's `website`; empty: the public HTTPS URL.
    pub website: String,
    /// CAA issuer domains that name this CA (the directory's
    /// `caaIdentities`); when set, CAA records are checked after every
    /// successful challenge. Empty: left out, and CAA is not checked.
    pub caa_identities: Vec<String>,
    /// How long the answer to a challenge POST waits for its validation
    /// to finish (default 1,000 ms; 0: answer `processing` at once). A
    /// validation done within it is answered `valid` or `invalid`, so a
    /// client's first poll finds its order `ready`; a slower one is
    /// answered `processing` and goes on in the background.
    pub challenge_wait_ms: u64,
}

impl Default for AcmeSection {
    fn default() -> Self {
        AcmeSection {
            eab_required: false,
            terms_of_service: String::new(),
            website: String::new(),
            caa_identities: Vec::new(),
            challenge_wait_ms: 1_000,
        }
    }
}

/// Test-only faults for the ACME server, as Let's Encrypt's test server
/// (Pebble) injects them. Not part of [`FileConfig`]: no TOML key or
/// `HALLMARK_*` variable reaches it; only code that builds a [`Config`]
/// (the integration tests) can set [`Config::danger_acme_chaos`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DangerAcmeChaos {
    /// Every Nth valid nonce (counted per instance) is refused with
    /// `badNonce`; 0: none. Every Nth rather than a random share, so a
    /// client that retries once, as RFC 8555 §6.5 asks, always gets
    /// through and the tests that prove it cannot flake.
    pub reject_every_nth_nonce: u32,
    /// Each validation first sleeps a random time up to this many ms.
    pub max_validation_delay_ms: u64,
}

/// `[ca]`: used by `hallmark init` (and first-start `serve`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaSection {
    /// Key type for the root and intermediate (default `p256`).
    pub key_type: String,
    /// O in the CA subjects (default `hallmark`).
    pub organization: String,
    /// Root CN (default `hallmark Root CA`).
    pub root_common_name: String,
    /// Intermediate CN (default `hallmark Issuing CA`).
    pub intermediate_common_name: String,
    /// Whether a new issuing intermediate carries a critical nameConstraints
    /// extension permitting only the policy's suffixes and IP ranges and the
    /// service's own names (default true).
    pub name_constraints: bool,
    /// The PKCS#11 module holding the issuing key (unset: a key file).
    pub pkcs11_module: Option<PathBuf>,
    /// The label of the token in that module.
    pub pkcs11_token: Option<String>,
    /// A file whose first line is the token's user PIN (unset: a prompt).
    pub pkcs11_pin_file: Option<PathBuf>,
    /// The label of the issuing key in the token (default `hallmark-issuing`).
    pub pkcs11_key_label: String,
    /// The root key's label in the same token (unset: the root key is an
    /// encrypted file).
    pub pkcs11_root_key_label: Option<String>,
}

impl Default for CaSection {
    fn default() -> Self {
        CaSection {
            key_type: "p256".into(),
            organization: "hallmark".into(),
            root_common_name: "hallmark Root CA".into(),
            intermediate_common_name: "hallmark Issuing CA".into(),
            name_constraints: true,
            pkcs11_module: None,
            pkcs11_token: None,
            pkcs11_pin_file: None,
            pkcs11_key_label: "hallmark-issuing".into(),
            pkcs11_root_key_label: None,
        }
    }
}

/// `[limits]`: per client address, per instance, per minute (0: none).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Dashboard sign-in attempts (default 20).
    pub sign_in_per_minute: u32,
    /// ACME newAccount requests (default 30).
    pub new_accounts_per_minute: u32,
    /// ACME newNonce requests (default 600).
    pub new_nonces_per_minute: u32,
    /// ACME revokeCert requests signed with a certificate's own key, the
    /// one revocation that needs no account (default 60).
    pub key_revocations_per_minute: u32,
    /// Password checks (argon2id, 19 MiB each) running at once (default 2).
    pub password_checks: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            sign_in_per_minute: 20,
            new_accounts_per_minute: 30,
            new_nonces_per_minute: 600,
            key_revocations_per_minute: 60,
            password_checks: 2,
        }
    }
}

/// The configuration file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// `[server]`
    pub server: ServerSection,
    /// `[database]`
    pub database: DatabaseSection,
    /// `[policy]`
    pub policy: PolicySection,
    /// `[validation]`
    pub validation: ValidationSection,
    /// `[orders]`
    pub orders: OrdersSection,
    /// `[crl]`
    pub crl: CrlSection,
    /// `[ocsp]`
    pub ocsp: OcspSection,
    /// `[acme]`
    pub acme: AcmeSection,
    /// `[ca]`
    pub ca: CaSection,
    /// `[limits]`
    pub limits: LimitsSection,
    /// `[profiles.NAME]`: certificate profiles beside the built-in ones.
    pub profiles: std::collections::BTreeMap<String, ProfileSection>,
    /// `[[webhooks]]`: HTTP endpoints told of issuances, revocations and
    /// approvals.
    pub webhooks: Vec<WebhookSection>,
    /// `[smtp]`: expiry mail to the certificate's account.
    pub smtp: SmtpSection,
}

/// `[smtp]`: where expiry notices are mailed from (off unless `host` is
/// set).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    /// The submission server.
    pub host: Option<String>,
    /// Its port (default 587; 465 with `tls = "tls"`).
    pub port: Option<u16>,
    /// `starttls` (default), `tls` or `none`.
    pub tls: Option<String>,
    /// The sender address (required with `host`).
    pub from: Option<String>,
    /// AUTH PLAIN user, if the server wants one.
    pub username: Option<String>,
    /// A file whose first line is its password.
    pub password_file: Option<PathBuf>,
    /// Addresses that get every notice too.
    pub also_to: Vec<String>,
}

/// `[[webhooks]]`: one endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Where to POST (http or https).
    pub url: String,
    /// The HMAC-SHA256 key (at least 16 characters); or `secret_file`.
    pub secret: Option<String>,
    /// A file whose first line is the key (kept out of the configuration).
    pub secret_file: Option<PathBuf>,
    /// The events to send; all of them if absent.
    pub events: Option<Vec<String>>,
}

/// `[profiles.NAME]`: a profile made from a built-in one, with its own
/// usages, revocation information and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSection {
    /// The built-in profile it starts from: `server` (the default),
    /// `server-client` (adds clientAuth) or `shortlived` (no revocation
    /// information, at most 7 days).
    pub base: Option<String>,
    /// Its extended key usages: `serverAuth`, `clientAuth` or both
    /// (replacing the base's).
    pub extended_key_usages: Option<Vec<String>>,
    /// Its key usages: `digitalSignature` (required), `keyEncipherment`
    /// (set on RSA keys only), `keyAgreement` (set on EC keys only).
    pub key_usages: Option<Vec<String>>,
    /// Whether its certificates point to a CRL and OCSP; `false` makes
    /// RFC 9608 short-lived certificates (noRevAvail, at most 7 days).
    pub revocation_info: Option<bool>,
    /// Its longest validity (within `policy.max_validity_days`).
    pub max_validity_days: Option<u32>,
    /// The subject key types it accepts (within `policy.key_types`).
    pub key_types: Option<Vec<String>>,
    /// One sentence for the ACME directory.
    pub description: Option<String>,
}
