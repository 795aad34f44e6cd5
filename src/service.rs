//! Starting the service: open the store, load the CA, register issuers,
//! create the initial admin, provide the HTTPS certificate, then serve both
//! listeners until shutdown.

use std::net::IpAddr;
use std::sync::Arc;

use time::{Duration, OffsetDateTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::config::{Config, TlsMode};
use crate::datadir::{self, DataDirError, Layout};
use crate::http::{self, public::CaFiles, AppState};
use crate::pki::{pem_decode_all, CaCertificate, Identifier, KeySigner, KeyType, PrivateKey};
use crate::store::{self, IssuerKind, IssuerRecord, StoreError};
use crate::validation::caa::CaaSettings;
use crate::validation::{AccountUrls, Validators};
use crate::workflow::crl::CrlPublisher;
use crate::workflow::nonces::Nonces;
use crate::workflow::ocsp::OcspResponder;
use crate::workflow::orders::Orders;
use crate::workflow::{users, Authority, WorkflowError};

/// Validity of the HTTPS listener's own certificate.
const SERVICE_CERT_DAYS: u32 = 90;
/// Renew the HTTPS certificate when less than this is left.
const SERVICE_CERT_RENEW_BEFORE: Duration = Duration::days(30);

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Keys or certificates in the data directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Issuing the HTTPS certificate.
    #[error("issuing the HTTPS certificate failed: {0}")]
    Workflow(#[from] WorkflowError),
    /// The TLS configuration.
    #[error("TLS set-up failed: {0}")]
    Tls(String),
    /// Loading CRLs or starting the OCSP responder.
    #[error("setting up CRLs and OCSP failed: {0}")]
    Revocation(WorkflowError),
    /// The `[validation]` settings.
    #[error("the validators could not be set up: {0}")]
    Validation(String),
    /// The configuration lets hallmark certify a name its issuing CA's
    /// name constraints do not permit.
    #[error("{setting} includes {value}, which the issuing intermediate's name constraints do not permit (they permit {permitted}); narrow the setting, or certify the wider policy with a new intermediate (docs/SECURITY.md, \"Name constraints\")")]
    OutsideNameConstraints {
        /// The setting.
        setting: &'static str,
        /// The value outside.
        value: String,
        /// What the constraints permit.
        permitted: String,
    },
}

/// How often the HTTPS certificate is checked (renewed when it has less
/// than 30 days left, reloaded when `tls = "files"` changed on disk).
const TLS_REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(3600);

/// A started (not yet serving) hallmark instance.
pub struct Service {
    config: Config,
    authority: Arc<Authority>,
    orders: Arc<Orders>,
    crls: Arc<CrlPublisher>,
    ocsp: Arc<OcspResponder>,
    tls: Option<(Arc<rustls::ServerConfig>, Arc<CertificateSlot>)>,
    initial_admin_password: Option<Zeroizing<String>>,
    acme_nonces: Arc<Nonces>,
    password_gate: Arc<users::PasswordGate>,
}

impl Service {
    /// Opens everything the service needs. The CA must exist.
    pub async fn start(config: Config) -> Result<Service, StartError> {
        let layout = Layout::new(&config.data_dir);
        let authority = open_authority(&config).await?;
        let validators = Validators::new(
            &config.validation,
            &[config.https_listen, config.http_listen],
        )
        .map_err(StartError::Validation)?
        .with_accounts(AccountUrls::new(&config.public_https_url))
        .with_caa(CaaSettings {
            identities: config.acme.caa_identities.clone(),
        });
        let orders = Orders::new(
            authority.clone(),
            Arc::new(validators),
            config.orders.clone(),
            std::time::Duration::from_secs(config.validation.timeout_secs.max(1)),
            config
                .danger_acme_chaos
                .map_or(0, |c| c.max_validation_delay_ms),
        );
        let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
        crls.refresh().await.map_err(StartError::Revocation)?;
        warn_about_root_crl(&crls, authority.root().id());
        let ocsp = OcspResponder::new(authority.clone(), config.ocsp.clone())
            .await
            .map_err(StartError::Revocation)?;
        let tls = match current_tls_material(&config, &layout, &authority).await? {
            None => None,
            Some((chain, key)) => {
                let slot = Arc::new(CertificateSlot::new(certified_key(&chain, &key)?));
                let root = authority.root().der().to_vec();
                Some((tls_config_with(slot.clone(), Some(&root))?, slot))
            }
        };
        let acme_nonces = Arc::new(Nonces::for_store(authority.store()).await?);
        // Last, so a start that fails earlier cannot swallow the one-time
        // password.
        let initial_admin_password =
            users::ensure_initial_admin(authority.store().as_ref()).await?;
        let password_gate = Arc::new(users::PasswordGate::new(config.limits.password_checks));
        Ok(Service {
            config,
            authority,
            orders,
            crls,
            ocsp,
            tls,
            initial_admin_password,
            acme_nonces,
            password_gate,
        })
    }

    /// The CRL publisher.
    pub fn crls(&self) -> &Arc<CrlPublisher> {
        &self.crls
    }

    /// The OCSP responder.
    pub fn ocsp(&self) -> &Arc<OcspResponder> {
        &self.ocsp
    }

    /// The CA.
    pub fn authority(&self) -> &Arc<Authority> {
        &self.authority
    }

    /// The bound on concurrent password checks of this service.
    pub fn password_gate(&self) -> &Arc<users::PasswordGate> {
        &self.password_gate
    }

    /// The order engine.
    pub fn orders(&self) -> &Arc<Orders> {
        &self.orders
    }

    /// The one-time password of the initial `admin`, if this start created it.
    pub fn take_initial_admin_password(&mut self) -> Option<Zeroizing<String>> {
        self.initial_admin_password.take()
    }

    /// A handle that renews or reloads the HTTPS certificate on demand (the
    /// service also does so every hour while it runs).
    pub fn tls_refresher(&self) -> Option<TlsRefresher> {
        self.tls.as_ref().map(|(_, slot)| TlsRefresher {
            config: self.config.clone(),
            authority: self.authority.clone(),
            slot: slot.clone(),
        })
    }

    /// Serves the HTTPS and HTTP listeners until `shutdown` turns true.
    pub async fn run(self, https: TcpListener, http: TcpListener, shutdown: watch::Receiver<bool>) {
        let issuing = self.authority.issuer().certificate().clone();
        let state = Arc::new(AppState {
            ca_files: CaFiles::new(
                self.authority.root(),
                &issuing,
                &self
                    .authority
                    .retired()
                    .iter()
                    .map(|r| r.issuer.certificate())
                    .collect::<Vec<_>>(),
            ),
            authority: self.authority.clone(),
            orders: self.orders.clone(),
            crls: self.crls.clone(),
            ocsp: self.ocsp.clone(),
            public_https_url: self.config.public_https_url.clone(),
            public_http_url: self.config.public_http_url.clone(),
            acme: self.config.acme.clone(),
            danger_acme_chaos: self.config.danger_acme_chaos,
            acme_nonces: self.acme_nonces.clone(),
            acme_nonce_uses: Default::default(),
            limits: crate::workflow::limits::AddressLimits::new(&self.config.limits),
            password_gate: self.password_gate.clone(),
            webhooks: self.config.webhooks.clone(),
        });
        if let Some(refresher) = self.tls_refresher() {
            let mut stop = shutdown.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(TLS_REFRESH_INTERVAL);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => break,
                    }
                    if let Err(e) = refresher.refresh().await {
                        tracing::warn!(error = %e, "refreshing the HTTPS certificate failed; keeping the current one");
                    }
                }
            });
        }
        tokio::spawn(self.orders.clone().run_worker(shutdown.clone()));
        tokio::spawn(self.crls.clone().run(shutdown.clone()));
        if !self.config.webhooks.is_empty() || self.config.smtp.is_some() {
            // A hook seen for the first time starts here, before the
            // listeners take a request and before the expiry notices are
            // looked for: nothing recorded after the start is missed (the
            // notices were once looked for first, and a notice written
            // before the head was read was never delivered).
            let start = match self.authority.reads().audit_head().await {
                Ok((seq, _)) => seq,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks cannot start: the audit head is unreadable");
                    i64::MAX
                }
            };
            tokio::spawn(crate::workflow::webhooks::run_expiry_notices(
                self.authority.store().clone(),
                shutdown.clone(),
            ));
            match crate::workflow::webhooks::WebhookDispatcher::new(
                self.authority.store().clone(),
                self.authority.root().der(),
            ) {
                Ok(dispatcher) => {
                    use crate::workflow::webhooks::{Mailer, Target};
                    let mut targets: Vec<Target> = self
                        .config
                        .webhooks
                        .iter()
                        .cloned()
                        .map(Target::Hook)
                        .collect();
                    if let Some(settings) = &self.config.smtp {
                        let helo = reqwest::Url::parse(&self.config.public_https_url)
                            .ok()
                            .and_then(|u| u.host_str().map(str::to_owned))
                            // Address literals as RFC 5321 §4.1.3 writes them.
                            .map(|h| match h.strip_prefix('[') {
                                Some(v6) => format!("[IPv6:{v6}"),
                                None if h.parse::<std::net::Ipv4Addr>().is_ok() => {
                                    format!("[{h}]")
                                }
                                None => h,
                            })
                            .unwrap_or_else(|| "localhost".into());
                        targets.push(Target::Mail(Arc::new(Mailer {
                            settings: settings.clone(),
                            tls: crate::smtp::tls_config(self.authority.root().der()),
                            helo,
                            public_url: self.config.public_https_url.clone(),
                        })));
                    }
                    if start != i64::MAX {
                        tokio::spawn(dispatcher.run(targets, start, shutdown.clone()));
                    }
                }
                Err(e) => tracing::error!(error = %e, "webhooks cannot start"),
            }
        }
        tokio::spawn(self.ocsp.clone().run(shutdown.clone()));
        let https_task = http::server::serve(
            https,
            http::https_router(state.clone()),
            self.tls.as_ref().map(|(config, _)| config.clone()),
            self.config.connections,
            shutdown.clone(),
        );
        let http_task = http::server::serve(
            http,
            http::http_router(state),
            None,
            self.config.connections,
            shutdown,
        );
        tokio::join!(https_task, http_task);
    }
}

/// Renews (`tls = "self"`) or reloads (`tls = "files"`) the HTTPS
/// certificate while serving; new handshakes get the new certificate.
#[derive(Clone)]
pub struct TlsRefresher {
    config: Config,
    authority: Arc<Authority>,
    slot: Arc<CertificateSlot>,
}

impl TlsRefresher {
    /// Checks the certificate now; returns whether it changed.
    pub async fn refresh(&self) -> Result<bool, StartError> {
        let layout = Layout::new(&self.config.data_dir);
        let Some((chain, key)) =
            current_tls_material(&self.config, &layout, &self.authority).await?
        else {
            return Ok(false);
        };
        let fresh = certified_key(&chain, &key)?;
        let changed = self.slot.current().cert != fresh.cert;
        if changed {
            self.slot.replace(fresh);
            tracing::info!("the HTTPS listener now uses a new certificate");
        }
        Ok(changed)
    }
}

/// The chain and key PEM the HTTPS listener should use now, if any.
async fn current_tls_material(
    config: &Config,
    layout: &Layout,
    authority: &Authority,
) -> Result<Option<(String, Zeroizing<String>)>, StartError> {
    match &config.tls {
        TlsMode::Off => Ok(None),
        TlsMode::SelfIssued => Ok(Some(
            ensure_service_certificate(config, layout, authority).await?,
        )),
        TlsMode::Files { cert, key } => {
            let read = |p: &std::path::Path| {
                std::fs::read_to_string(p)
                    .map_err(|e| StartError::Tls(format!("{}: {e}", p.display())))
            };
            Ok(Some((read(cert)?, Zeroizing::new(read(key)?))))
        }
    }
}

/// The HTTPS listener's certificate, replaceable while serving.
#[derive(Debug)]
pub struct CertificateSlot(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl CertificateSlot {
    fn new(key: rustls::sign::CertifiedKey) -> Self {
        CertificateSlot(std::sync::RwLock::new(Arc::new(key)))
    }

    fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        match self.0.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn replace(&self, key: rustls::sign::CertifiedKey) {
        match self.0.write() {
            Ok(mut guard) => *guard = Arc::new(key),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
    }
}

impl rustls::server::ResolvesServerCert for CertificateSlot {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

/// Loads the CA from the data directory, opens (and migrates) the store and
/// registers the CA certificates in it.
pub async fn open_authority(config: &Config) -> Result<Arc<Authority>, StartError> {
    let layout = Layout::new(&config.data_dir);
    let issuer = datadir::load_issuer(&layout, config)?;
    let root = datadir::load_root_cert(&layout)?;
    let mut policy = config.policy.clone();
    match issuer.certificate().name_constraints() {
        Some(c) => {
            if let Some((setting, value)) = config.outside_constraints(c) {
                return Err(StartError::OutsideNameConstraints {
                    setting,
                    value,
                    permitted: c.describe(),
                });
            }
            policy.issuer_constraints = Some(c.clone());
        }
        None if config.ca.name_constraints => tracing::warn!(
            issuer = issuer.certificate().id(),
            "the issuing intermediate has no name constraints, so clients trusting the root accept any name it certifies; intermediates made by this version carry them"
        ),
        None => {}
    }
    let store =
        store::connect_serving(&config.database_url, config.database_single_instance).await?;
    for (cert, kind, active) in [
        (&root, IssuerKind::Root, false),
        (issuer.certificate(), IssuerKind::Intermediate, true),
    ] {
        store
            .upsert_issuer(&issuer_record(cert, kind, active))
            .await?;
    }
    // Retired and imported issuers answer for their certificates until
    // the last one expires.
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut retired = Vec::new();
    for (old, kind) in crate::issuers::load_retired(&layout, config)? {
        let id = old.certificate().id().to_owned();
        store
            .upsert_issuer(&issuer_record(
                old.certificate(),
                IssuerKind::Intermediate,
                false,
            ))
            .await?;
        let serves_until = store.issuer_last_expiry(&id).await?.unwrap_or(0);
        if serves_until < now {
            tracing::info!(
                issuer = %id,
                "every certificate of this retired issuer has expired; its CRLs and OCSP are no longer published"
            );
            continue;
        }
        retired.push(crate::workflow::RetiredIssuer {
            issuer: old,
            kind,
            serves_until,
        });
    }
    Ok(Arc::new(
        Authority::new(store, policy, issuer, root)
            .with_crl_partitions(config.crl.partitions)
            .with_retired(retired),
    ))
}

/// The root's CRL is signed only when the operator runs `hallmark crl
/// generate --root`; say so when it is missing or about to expire.
fn warn_about_root_crl(crls: &CrlPublisher, root_id: &str) {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    match crls.served(&format!("{root_id}.crl")) {
        None => tracing::warn!(
            "there is no root CRL yet; run `hallmark crl generate --root` (or, with the root offline, `hallmark root crl` there and `hallmark crl import` here) so /crl/{root_id}.crl (named in the intermediate's CRL distribution point) exists"
        ),
        Some(c) if c.next_update - now < 30 * 86_400 => tracing::warn!(
            next_update = c.next_update,
            "the root CRL expires within 30 days; run `hallmark crl generate --root` (or, with the root offline, `hallmark root crl` there and `hallmark crl import` here)"
        ),
        Some(_) => {}
    }
}

fn issuer_record(cert: &CaCertificate, kind: IssuerKind, active: bool) -> IssuerRecord {
    IssuerRecord {
        active,
        id: cert.id().to_owned(),
        kind,
        subject: cert.subject().to_owned(),
        cert_der: cert.der().to_vec(),
        key_id: cert.key_id().to_vec(),
        not_before: cert.not_before().unix_timestamp(),
        not_after: cert.not_after().unix_timestamp(),
    }
}

/// Returns the HTTPS chain and key PEM, issuing a new certificate when there
/// is none, it expires within 30 days, its issuer changed or its names do
/// not cover the configured ones.
async fn ensure_service_certificate(
    config: &Config,
    layout: &Layout,
    authority: &Authority,
) -> Result<(String, Zeroizing<String>), StartError> {
    let wanted = config.service_identifiers();
    let issuer_pem = authority.issuer().certificate().pem();
    if let (Ok(chain), Ok(key)) = (
        std::fs::read_to_string(layout.tls_cert()),
        std::fs::read_to_string(layout.tls_key()),
    ) {
        // The key file is written before the certificate, so a crash in
        // between leaves a pair that does not match: reissue then.
        let key = Zeroizing::new(key);
        if service_certificate_is_current(&chain, &issuer_pem, &wanted)
            && certified_key(&chain, &key).is_ok()
        {
            return Ok((chain, key));
        }
    }
    let key = PrivateKey::generate(KeyType::P256).map_err(|e| StartError::Tls(e.to_string()))?;
    let signed = authority
        .issue_service_certificate(key.public_key_spki(), &wanted, SERVICE_CERT_DAYS)
        .await?;
    let key_pem = key
        .to_pkcs8_pem()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    datadir::replace_file(&layout.tls_key(), key_pem.as_bytes(), 0o600)?;
    let chain_pem = signed.chain_pem();
    datadir::replace_file(&layout.tls_cert(), chain_pem.as_bytes(), 0o644)?;
    tracing::info!(serial = %signed.certificate.serial, "issued a new HTTPS certificate");
    Ok((chain_pem, key_pem))
}

fn service_certificate_is_current(chain: &str, issuer_pem: &str, wanted: &[Identifier]) -> bool {
    let blocks = pem_decode_all(chain, "CERTIFICATE");
    let issuer = pem_decode_all(issuer_pem, "CERTIFICATE");
    let (Some(leaf), Some(chain_issuer)) = (blocks.first(), blocks.get(1)) else {
        return false;
    };
    if issuer.first() != Some(chain_issuer) {
        return false;
    }
    let Ok((_, cert)) = x509_parser::certificate::X509Certificate::from_der(leaf) else {
        return false;
    };
    let not_after = cert.validity().not_after.to_datetime();
    if not_after - OffsetDateTime::now_utc() < SERVICE_CERT_RENEW_BEFORE {
        return false;
    }
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    let have: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => (*d).to_owned(),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .map(|a| IpAddr::from(a).to_string())
                    .unwrap_or_default(),
                16 => <[u8; 16]>::try_from(*b)
                    .map(|a| IpAddr::from(a).to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            },
            _ => String::new(),
        })
        .collect();
    wanted.iter().all(|id| have.contains(&id.value()))
}

/// A certificate chain and key, parsed for rustls.
pub fn certified_key(
    chain_pem: &str,
    key_pem: &str,
) -> Result<rustls::sign::CertifiedKey, StartError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| StartError::Tls(format!("certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(StartError::Tls(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| StartError::Tls(format!("private key: {e}")))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| StartError::Tls(format!("private key: {e}")))?;
    let certified = rustls::sign::CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| StartError::Tls(format!("the key does not match the certificate: {e}")))?;
    Ok(certified)
}

/// A rustls server configuration (TLS 1.2 and 1.3, h2 and http/1.1) for a
/// fixed chain and key.
pub fn tls_config(chain_pem: &str, key_pem: &str) -> Result<Arc<rustls::ServerConfig>, StartError> {
    tls_config_with(
        Arc::new(CertificateSlot::new(certified_key(chain_pem, key_pem)?)),
        None,
    )
}

/// With `client_root`, clients may (never must) authenticate with a
/// certificate chaining to it — EST re-enrolment does; everyone else
/// sends none and is served as before.
fn tls_config_with(
    slot: Arc<CertificateSlot>,
    client_root: Option<&[u8]>,
) -> Result<Arc<rustls::ServerConfig>, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls(e.to_string()))?;
    let builder = match client_root {
        None => builder.with_no_client_auth(),
        Some(root) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(rustls::pki_types::CertificateDer::from(root.to_vec()))
                .map_err(|e| StartError::Tls(e.to_string()))?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| StartError::Tls(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(slot);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
