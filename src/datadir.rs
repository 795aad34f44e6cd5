//! The data directory on disk: the CA's keys and certificates and the TLS
//! certificate of the HTTPS listener.
//!
//! ```text
//! hallmark-data/
//!   hallmark.toml            configuration (written on first init)
//!   hallmark.db              SQLite database (the default store)
//!   ca/root.crt.pem          self-signed root
//!   ca/root.key.pem          root key, encrypted PKCS#8 (PBES2), 0600
//!   ca/issuing.crt.pem       issuing intermediate
//!   ca/issuing.key.pem       intermediate key, PKCS#8, 0600
//!   ca/retired/int-….*.pem   intermediates `ca rotate` replaced, with keys
//!   ca/imported/imp-….*.pem  CAs `import openssl` brought in, with keys
//!   ca/issuing.csr.pem       its CSR, when the root is elsewhere
//!                            (`init --intermediate-csr`)
//!   ca/signed-intermediates.log  on a root: every intermediate it signed
//!   ca/root-crl.json         on an offline root: the intermediates it
//!                            revoked and its last CRL number
//!   tls/server.crt.pem       the HTTPS listener's chain (tls = "self")
//!   tls/server.key.pem       its key, 0600
//! ```
//!
//! A new CA is written into a temporary directory and renamed into place,
//! so a failed init leaves nothing behind and a CA is never overwritten.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::config::{Config, CONFIG_FILE_NAME, EXAMPLE_CONFIG};
use crate::pkcs11::{TokenError, TokenKey, TokenSettings};
use crate::pki::ca::{self, CaError, CaNames};
use crate::pki::crl::{CrlBuilder, CrlEntry, CrlScope, CrlSpec, RevocationReason};
use crate::pki::intermediate::{self, IntermediateRequest};
use crate::pki::key::KeyError;
use crate::pki::profile::IssuerUrls;
use crate::pki::{
    pem_decode_all, CaCertificate, Issuer, KeySigner, NameConstraints, PrivateKey, Serial,
};

/// Shortest root passphrase accepted.
pub const MIN_PASSPHRASE_LEN: usize = 12;

/// Why the data directory could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `init` on a directory that already holds a CA.
    #[error("a CA already exists in {0}; refusing to overwrite it (move the directory away to start afresh)")]
    AlreadyInitialised(PathBuf),
    /// No CA in the directory.
    #[error("no CA in {0}; run `hallmark init` first")]
    NotInitialised(PathBuf),
    /// The issuing key waits for its certificate from a root elsewhere.
    #[error("the issuing CA in {0} is waiting for its certificate: have the root sign ca/issuing.csr.pem (`hallmark root sign-intermediate`), then run `hallmark ca install-intermediate CERT --root ROOT_CERT`")]
    AwaitingIntermediate(PathBuf),
    /// A root-only directory (an offline root) cannot serve or issue.
    #[error("{0} holds only a root (made by `hallmark init --root-only`): it signs intermediates (`hallmark root sign-intermediate`) and root CRLs (`hallmark root crl`), and does not serve")]
    RootOnly(PathBuf),
    /// The root key is kept elsewhere.
    #[error("the root key is not in {0} (it is kept elsewhere): sign there with `hallmark root sign-intermediate` or `hallmark root crl`, and publish a root CRL here with `hallmark crl import`")]
    NoRootKey(PathBuf),
    /// `install-intermediate` where there is nothing waiting for it.
    #[error("{0}")]
    Install(String),
    /// The passphrase is too short.
    #[error("the root key passphrase must be at least {MIN_PASSPHRASE_LEN} characters")]
    WeakPassphrase,
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key file is unusable.
    #[error("{path}: {source}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: KeyError,
    },
    /// A CA certificate is unusable.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The PKCS#11 token holding the issuing key.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The PKCS#11 PIN could not be had.
    #[error("{0}")]
    Pin(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |e| DataDirError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Paths inside a data directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout of `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Layout {
            root: data_dir.to_path_buf(),
        }
    }

    /// The CA directory.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }
    /// Root certificate file.
    pub fn root_cert(&self) -> PathBuf {
        self.ca_dir().join("root.crt.pem")
    }
    /// Encrypted root key file.
    pub fn root_key(&self) -> PathBuf {
        self.ca_dir().join("root.key.pem")
    }
    /// Intermediate certificate file.
    pub fn issuing_cert(&self) -> PathBuf {
        self.ca_dir().join("issuing.crt.pem")
    }
    /// Intermediate key file.
    pub fn issuing_key(&self) -> PathBuf {
        self.ca_dir().join("issuing.key.pem")
    }
    /// The intermediate's CSR (root elsewhere).
    pub fn issuing_csr(&self) -> PathBuf {
        self.ca_dir().join("issuing.csr.pem")
    }
    /// On a root: the log of intermediates it signed.
    pub fn signed_log(&self) -> PathBuf {
        self.ca_dir().join("signed-intermediates.log")
    }
    /// On an offline root: its CRL state.
    pub fn root_crl_state(&self) -> PathBuf {
        self.ca_dir().join("root-crl.json")
    }
    /// TLS certificate chain of the HTTPS listener.
    pub fn tls_cert(&self) -> PathBuf {
        self.root.join("tls").join("server.crt.pem")
    }
    /// TLS key of the HTTPS listener.
    pub fn tls_key(&self) -> PathBuf {
        self.root.join("tls").join("server.key.pem")
    }

    /// Whether a CA exists here.
    pub fn has_ca(&self) -> bool {
        self.ca_dir().exists()
    }
}

/// The URLs a CA's certificates point to, from `public_http_url`.
pub fn issuer_urls(public_http_url: &str, issuer_id: &str, with_ocsp: bool) -> IssuerUrls {
    IssuerUrls {
        crl: format!("{public_http_url}/crl/{issuer_id}.crl"),
        ocsp: with_ocsp.then(|| format!("{public_http_url}/ocsp")),
        ca_issuers: format!("{public_http_url}/ca/{issuer_id}.crt"),
    }
}

/// What `init` created.
#[derive(Debug)]
pub struct InitOutcome {
    /// The root.
    pub root: CaCertificate,
    /// The issuing intermediate.
    pub intermediate: CaCertificate,
}

/// Checks a new CA may be made in `config.data_dir` (none there, a long
/// enough passphrase unless the root key goes into the token) and makes
/// the directory.
fn begin_new_ca(config: &Config, passphrase: &[u8]) -> Result<(), DataDirError> {
    if Layout::new(&config.data_dir).has_ca() {
        return Err(DataDirError::AlreadyInitialised(config.data_dir.clone()));
    }
    if passphrase.len() < MIN_PASSPHRASE_LEN && !root_in_token(config) {
        return Err(DataDirError::WeakPassphrase);
    }
    create_private_dir(&config.data_dir)
}

/// Creates a CA (root + issuing intermediate) in `config.data_dir`, and a
/// commented `hallmark.toml` if there is none. Refuses if a CA exists.
pub fn init_ca(
    config: &Config,
    passphrase: &[u8],
    now: OffsetDateTime,
) -> Result<InitOutcome, DataDirError> {
    begin_new_ca(config, passphrase)?;
    let names = ca_names(config);
    let mut rng = rand::rngs::OsRng;
    let (root_key, root_pem) = new_root_key(config, passphrase)?;
    let root = ca::create_root(&root_key, &names, now, Serial::random(&mut rng))?;
    let root_issuer = Issuer::new(
        root.clone(),
        root_key,
        issuer_urls(&config.public_http_url, "root", false),
    )?;
    let (int_key, int_pem) = new_issuing_key(config)?;
    let intermediate = root_issuer.issue_intermediate(
        int_key.public_key_spki(),
        &names,
        config.intermediate_constraints().as_ref(),
        now,
        Serial::random(&mut rng),
    )?;

    let root_cert_pem = root.pem();
    let int_cert_pem = intermediate.pem();
    let mut files: Vec<(&str, &[u8], u32)> =
        vec![("root.crt.pem", root_cert_pem.as_bytes(), 0o644)];
    if let Some(pem) = &root_pem {
        files.push(("root.key.pem", pem.as_bytes(), 0o600));
    }
    files.push(("issuing.crt.pem", int_cert_pem.as_bytes(), 0o644));
    if let Some(pem) = &int_pem {
        files.push(("issuing.key.pem", pem.as_bytes(), 0o600));
    }
    write_ca_dir(config, &files)?;
    Ok(InitOutcome { root, intermediate })
}

/// Writes the CA files into a fresh temporary directory, renames it into
/// place as `ca/` (all or nothing), then writes a commented
/// `hallmark.toml` if there is none.
fn write_ca_dir(config: &Config, files: &[(&str, &[u8], u32)]) -> Result<(), DataDirError> {
    let layout = Layout::new(&config.data_dir);
    let staging = config
        .data_dir
        .join(format!(".ca-{}", hex::encode(rand::random::<[u8; 6]>())));
    create_private_dir(&staging)?;
    let result = (|| {
        for (name, contents, mode) in files {
            write_new(&staging.join(name), contents, *mode)?;
        }
        fs::rename(&staging, layout.ca_dir()).map_err(io_err(&layout.ca_dir()))
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let config_file = config.data_dir.join(CONFIG_FILE_NAME);
    if !config_file.exists() {
        write_new(&config_file, example_config(config).as_bytes(), 0o644)?;
    }
    Ok(())
}

/// The commented configuration a new data directory gets, with the
/// PKCS#11 settings `init` was given filled in (so `serve` finds the key).
fn example_config(config: &Config) -> String {
    let Some(module) = &config.ca.pkcs11_module else {
        return EXAMPLE_CONFIG.to_owned();
    };
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let mut lines = vec![
        format!("pkcs11_module = {}", quote(&module.to_string_lossy())),
        format!(
            "pkcs11_token = {}",
            quote(config.ca.pkcs11_token.as_deref().unwrap_or(""))
        ),
        format!("pkcs11_key_label = {}", quote(&config.ca.pkcs11_key_label)),
    ];
    if let Some(label) = &config.ca.pkcs11_root_key_label {
        lines.push(format!("pkcs11_root_key_label = {}", quote(label)));
    }
    if let Some(pin) = &config.ca.pkcs11_pin_file {
        lines.push(format!(
            "pkcs11_pin_file = {}",
            quote(&pin.to_string_lossy())
        ));
    }
    EXAMPLE_CONFIG.replacen(
        "[ca]                               # used when the CA is created\n",
        &format!(
            "[ca]                               # used when the CA is created\n{}\n",
            lines.join("\n")
        ),
        1,
    )
}

/// The CA names of this configuration.
pub fn ca_names(config: &Config) -> CaNames {
    CaNames {
        organization: config.ca.organization.clone(),
        root_common_name: config.ca.root_common_name.clone(),
        intermediate_common_name: config.ca.intermediate_common_name.clone(),
    }
}

/// A new CA key of `ca_key_type`, its progress logged.
pub fn generate_key(config: &Config, what: &str) -> Result<PrivateKey, DataDirError> {
    // RSA keys of 3072 and 4096 bits take seconds: say what is happening.
    let started = std::time::Instant::now();
    tracing::info!(
        key_type = config.ca_key_type.as_str(),
        "generating the {what}"
    );
    let key = PrivateKey::generate(config.ca_key_type).map_err(|source| DataDirError::Key {
        path: PathBuf::from(what),
        source,
    })?;
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "generated the {what}"
    );
    Ok(key)
}

/// The PKCS#11 settings of `[ca]` with the PIN read (from
/// `ca.pkcs11_pin_file`, else what was typed at a prompt); `None` when the
/// issuing key is a file.
pub fn token_settings(config: &Config) -> Result<Option<TokenSettings>, DataDirError> {
    let (Some(module), Some(token)) = (&config.ca.pkcs11_module, &config.ca.pkcs11_token) else {
        return Ok(None);
    };
    let pin = match (&config.ca.pkcs11_pin_file, &config.pkcs11_pin) {
        (Some(path), _) => {
            if let Ok(meta) = fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(
                        file = %path.display(),
                        "the PKCS#11 PIN file can be read by other users; make it 0600 (chmod 600)"
                    );
                }
            }
            let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| {
                DataDirError::Pin(format!(
                    "cannot read the PKCS#11 PIN from {} (ca.pkcs11_pin_file): {e}",
                    path.display()
                ))
            })?);
            let line = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
            if line.is_empty() {
                return Err(DataDirError::Pin(format!(
                    "{} (ca.pkcs11_pin_file) is empty; its first line must be the PIN",
                    path.display()
                )));
            }
            line
        }
        (None, Some(typed)) => typed.clone(),
        (None, None) => {
            return Err(DataDirError::Pin(
                "the PKCS#11 PIN is needed: set ca.pkcs11_pin_file, or run the command in a terminal to be asked".into(),
            ))
        }
    };
    Ok(Some(TokenSettings {
        module: module.clone(),
        token: token.clone(),
        pin,
        key_label: config.ca.pkcs11_key_label.clone(),
    }))
}

/// Whether this data directory's issuing key exists: a key file, or (with
/// `[ca]` PKCS#11 settings) a key in the token.
fn has_issuing_key(layout: &Layout, config: &Config) -> bool {
    layout.issuing_key().exists() || config.ca.pkcs11_module.is_some()
}

/// The issuing key: from its file, or from the token.
pub fn issuing_signer(
    layout: &Layout,
    config: &Config,
) -> Result<Arc<dyn KeySigner>, DataDirError> {
    match token_settings(config)? {
        Some(settings) => Ok(TokenKey::open(&settings)?.into_signer()),
        None if !layout.issuing_key().exists() => Err(DataDirError::Io {
            path: layout.issuing_key(),
            reason: "there is no such file; if the issuing key is in a PKCS#11 token, set ca.pkcs11_module and ca.pkcs11_token".into(),
        }),
        None => Ok(read_key(&layout.issuing_key(), None)?.into_signer()),
    }
}

/// A new issuing key and, for a key file, its PKCS#8 PEM.
type NewKey = (Arc<dyn KeySigner>, Option<Zeroizing<String>>);

/// A new issuing key: in the token (or the one already there under the
/// label) with PKCS#11 settings, else in memory with its PKCS#8 PEM for
/// `ca/issuing.key.pem`.
fn new_issuing_key(config: &Config) -> Result<NewKey, DataDirError> {
    match token_settings(config)? {
        Some(settings) => {
            let (key, made) = TokenKey::open_or_generate(&settings, Some(config.ca_key_type))?;
            if !made {
                tracing::info!(
                    token = %settings.token,
                    label = %settings.key_label,
                    "using the key already in the token"
                );
            }
            Ok((key.into_signer(), None))
        }
        None => {
            let key = generate_key(config, "intermediate key")?;
            let pem = key.to_pkcs8_pem().map_err(|source| DataDirError::Key {
                path: Layout::new(&config.data_dir).issuing_key(),
                source,
            })?;
            Ok((key.into_signer(), Some(pem)))
        }
    }
}

/// Whether the root key is in the PKCS#11 token (`ca.pkcs11_root_key_label`).
pub fn root_in_token(config: &Config) -> bool {
    config.ca.pkcs11_root_key_label.is_some() && config.ca.pkcs11_module.is_some()
}

/// The token settings for the root key: the issuing key's, with the root's
/// label.
fn root_token_settings(config: &Config) -> Result<Option<TokenSettings>, DataDirError> {
    let Some(label) = config.ca.pkcs11_root_key_label.as_ref() else {
        return Ok(None);
    };
    Ok(token_settings(config)?.map(|s| TokenSettings {
        key_label: label.clone(),
        ..s
    }))
}

/// A new root key: in the token with `ca.pkcs11_root_key_label` (nothing
/// to write), else in memory with its encrypted PKCS#8 PEM
/// ([`begin_new_ca`] checked the passphrase).
fn new_root_key(config: &Config, passphrase: &[u8]) -> Result<NewKey, DataDirError> {
    if let Some(settings) = root_token_settings(config)? {
        let (key, _) = TokenKey::open_or_generate(&settings, Some(config.ca_key_type))?;
        return Ok((key.into_signer(), None));
    }
    let key = generate_key(config, "root key")?;
    let pem = key
        .to_encrypted_pkcs8_pem(passphrase)
        .map_err(|source| DataDirError::Key {
            path: Layout::new(&config.data_dir).root_key(),
            source,
        })?;
    Ok((key.into_signer(), Some(pem)))
}

/// Creates only a root (for a machine kept offline that signs
/// intermediates and root CRLs). Refuses if a CA exists.
pub fn init_root_only(
    config: &Config,
    passphrase: &[u8],
    now: OffsetDateTime,
) -> Result<CaCertificate, DataDirError> {
    begin_new_ca(config, passphrase)?;
    let (key, key_pem) = new_root_key(config, passphrase)?;
    let root = ca::create_root(
        &key,
        &ca_names(config),
        now,
        Serial::random(&mut rand::rngs::OsRng),
    )?;
    let root_pem = root.pem();
    let mut files: Vec<(&str, &[u8], u32)> = vec![("root.crt.pem", root_pem.as_bytes(), 0o644)];
    if let Some(pem) = &key_pem {
        files.push(("root.key.pem", pem.as_bytes(), 0o600));
    }
    write_ca_dir(config, &files)?;
    Ok(root)
}

/// Creates the issuing key and its CSR (asking for the configuration's
/// name constraints) for a root kept elsewhere; returns the CSR's path.
/// Refuses if a CA exists.
pub fn init_intermediate_csr(config: &Config) -> Result<PathBuf, DataDirError> {
    let layout = Layout::new(&config.data_dir);
    if layout.has_ca() {
        return Err(DataDirError::AlreadyInitialised(config.data_dir.clone()));
    }
    create_private_dir(&config.data_dir)?;
    let (key, key_pem) = new_issuing_key(config)?;
    let csr = intermediate::intermediate_csr(
        &key,
        &ca_names(config),
        config.intermediate_constraints().as_ref(),
    )?;
    let mut files: Vec<(&str, &[u8], u32)> = vec![("issuing.csr.pem", csr.as_bytes(), 0o644)];
    if let Some(pem) = &key_pem {
        files.push(("issuing.key.pem", pem.as_bytes(), 0o600));
    }
    write_ca_dir(config, &files)?;
    Ok(layout.issuing_csr())
}

/// What `root sign-intermediate` made.
#[derive(Debug)]
pub struct SignedIntermediate {
    /// The new intermediate.
    pub certificate: CaCertificate,
    /// Its name constraints (`None`: unconstrained).
    pub constraints: Option<NameConstraints>,
    /// Where they came from: `"the CSR"` or `"this configuration"`.
    pub constraints_from: &'static str,
}

/// Signs an intermediate's CSR with the root (needs the passphrase): the
/// subject O and CN and the name constraints the CSR asks for, or, when it
/// asks for none, this configuration's (unless `ca.name_constraints` is
/// off). Appends it to `ca/signed-intermediates.log`.
pub fn sign_intermediate(
    config: &Config,
    passphrase: &[u8],
    csr: &[u8],
    now: OffsetDateTime,
) -> Result<SignedIntermediate, DataDirError> {
    let layout = Layout::new(&config.data_dir);
    let root = load_root_issuer(&layout, config, passphrase)?;
    let request = IntermediateRequest::parse(csr)?;
    if request.spki_der == root.certificate().spki() {
        return Err(CaError::BadRequest("is for the root's own key".into()).into());
    }
    let (constraints, constraints_from) = match request.constraints.clone() {
        Some(c) => (Some(c), "the CSR"),
        None => (config.intermediate_constraints(), "this configuration"),
    };
    let fallback = ca_names(config);
    let names = CaNames {
        organization: request
            .organization
            .clone()
            .unwrap_or(fallback.organization),
        root_common_name: fallback.root_common_name,
        intermediate_common_name: request
            .common_name
            .clone()
            .unwrap_or(fallback.intermediate_common_name),
    };
    let certificate = root.issue_intermediate(
        &request.spki_der,
        &names,
        constraints.as_ref(),
        now,
        Serial::random(&mut rand::rngs::OsRng),
    )?;
    log_signed_intermediate(&layout, &certificate, now)?;
    Ok(SignedIntermediate {
        certificate,
        constraints,
        constraints_from,
    })
}

/// Appends an intermediate the root signed to `ca/signed-intermediates.log`.
pub fn log_signed_intermediate(
    layout: &Layout,
    certificate: &CaCertificate,
    now: OffsetDateTime,
) -> Result<(), DataDirError> {
    let line = format!(
        "{} serial={} subject=\"{}\" not_after={} sha256={}\n",
        now.unix_timestamp(),
        hex::encode(certificate_serial(certificate)),
        certificate.subject(),
        certificate.not_after().unix_timestamp(),
        certificate.fingerprint_sha256(),
    );
    let path = layout.signed_log();
    let mut log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&path)
        .map_err(io_err(&path))?;
    log.write_all(line.as_bytes())
        .and_then(|()| log.sync_all())
        .map_err(io_err(&path))
}

/// The serial number bytes of a certificate.
pub fn certificate_serial(cert: &CaCertificate) -> Vec<u8> {
    x509_parser::parse_x509_certificate(cert.der())
        .map(|(_, c)| c.tbs_certificate.raw_serial().to_vec())
        .unwrap_or_default()
}

/// Puts a signed intermediate in place of `ca/issuing.csr.pem`, after
/// checking that it is a CA certificate for the waiting key, signed by
/// `root` (or the root already in `ca/`), valid now, and constrained to
/// cover this configuration. Writes the root too when given.
pub fn install_intermediate(
    config: &Config,
    cert: &[u8],
    root: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<InitOutcome, DataDirError> {
    let layout = Layout::new(&config.data_dir);
    let refuse = |why: String| Err(DataDirError::Install(why));
    if !has_issuing_key(&layout, config) || !layout.issuing_csr().exists() {
        return refuse(format!(
            "there is no issuing key waiting in {}; make it with `hallmark init --intermediate-csr`",
            config.data_dir.display()
        ));
    }
    if layout.issuing_cert().exists() {
        return refuse(format!(
            "{} already has an issuing intermediate; install-intermediate only completes `hallmark init --intermediate-csr`",
            config.data_dir.display()
        ));
    }
    let one_cert = |bytes: &[u8], what: &str| -> Result<Vec<u8>, DataDirError> {
        if bytes.first() == Some(&0x30) {
            return Ok(bytes.to_vec());
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| DataDirError::Install(format!("the {what} is neither PEM nor DER")))?;
        let mut blocks = pem_decode_all(text, "CERTIFICATE");
        if blocks.is_empty() {
            return Err(DataDirError::Install(format!(
                "the {what} file holds no PEM CERTIFICATE block"
            )));
        }
        Ok(blocks.remove(0))
    };
    let root_der = match root {
        Some(bytes) => {
            if layout.root_cert().exists() {
                return refuse(format!(
                    "{} already holds a root certificate; leave out --root",
                    config.data_dir.display()
                ));
            }
            one_cert(bytes, "root certificate")?
        }
        None if layout.root_cert().exists() => read_cert(&layout.root_cert())?,
        None => return refuse("give the root's certificate with --root ROOT_CERT".into()),
    };
    let root_cert = CaCertificate::from_der("root", root_der)?;
    let der = one_cert(cert, "intermediate certificate")?;
    let parsed = CaCertificate::from_der("", der.clone())?;
    let key = issuing_signer(&layout, config)?;
    if parsed.spki() != key.public_key_spki() {
        return refuse(
            "the certificate is not for the waiting issuing key (ca/issuing.key.pem)".into(),
        );
    }
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    if !x509.is_ca() {
        return refuse("the certificate is not a CA certificate (basicConstraints CA:TRUE)".into());
    }
    let (_, root_x509) = x509_parser::parse_x509_certificate(root_cert.der())
        .map_err(|e| CaError::BadCertificate(e.to_string()))?;
    if x509.issuer().as_raw() != root_x509.subject().as_raw()
        || x509.verify_signature(Some(root_x509.public_key())).is_err()
    {
        return refuse(format!(
            "the certificate is not signed by the root {}",
            root_cert.subject()
        ));
    }
    if now < parsed.not_before() || now > parsed.not_after() {
        return refuse(format!(
            "the certificate is valid from {} to {}, not now",
            parsed.not_before(),
            parsed.not_after()
        ));
    }
    if let Some(c) = parsed.name_constraints() {
        if let Some((setting, value)) = config.outside_constraints(c) {
            return refuse(format!(
                "{setting} includes {value}, which the certificate's name constraints do not permit (they permit {})",
                c.describe()
            ));
        }
    }
    let id = ca::intermediate_id(parsed.key_id());
    let intermediate = CaCertificate::from_der(id, der)?;
    if root.is_some() {
        write_new(&layout.root_cert(), root_cert.pem().as_bytes(), 0o644)?;
    }
    write_new(&layout.issuing_cert(), intermediate.pem().as_bytes(), 0o644)?;
    Ok(InitOutcome {
        root: root_cert,
        intermediate,
    })
}

/// An offline root's CRL state (`ca/root-crl.json`): the intermediates it
/// revoked, kept so every later CRL lists them, and its last CRL number.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct RootCrlState {
    last_number: u64,
    revoked: Vec<RootRevocation>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct RootRevocation {
    serial: String,
    reason: u8,
    at: i64,
}

/// A root CRL signed offline.
#[derive(Debug)]
pub struct RootCrl {
    /// The CRL, DER.
    pub der: Vec<u8>,
    /// Its number.
    pub number: u64,
    /// How many intermediates it lists.
    pub entries: usize,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
}

/// Signs the root's CRL on the machine that holds the root key (needs the
/// passphrase), for `hallmark crl import` on the serving side. `revoke`
/// adds intermediates (by serial) to the list kept in `ca/root-crl.json`;
/// every CRL lists all of them. The number is the larger of the last one
/// plus one and the current Unix time, so it stays above the numbers the
/// serving side gave its own root CRLs and keeps rising if the state file
/// is lost.
pub fn sign_root_crl(
    config: &Config,
    passphrase: &[u8],
    revoke: &[(Vec<u8>, RevocationReason)],
    validity: time::Duration,
    now: OffsetDateTime,
) -> Result<RootCrl, DataDirError> {
    let layout = Layout::new(&config.data_dir);
    let root = load_root_issuer(&layout, config, passphrase)?;
    let path = layout.root_crl_state();
    let mut state: RootCrlState = match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DataDirError::Io {
            path: path.clone(),
            reason: format!("not a root CRL state file: {e}"),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RootCrlState::default(),
        Err(e) => return Err(io_err(&path)(e)),
    };
    for (serial, reason) in revoke {
        let serial = hex::encode(serial);
        if !state.revoked.iter().any(|r| r.serial == serial) {
            state.revoked.push(RootRevocation {
                serial,
                reason: reason.code(),
                at: now.unix_timestamp(),
            });
        }
    }
    let number = (state.last_number + 1).max(now.unix_timestamp().max(0) as u64);
    let next_update = (now + validity).min(root.certificate().not_after());
    let spec = CrlSpec {
        issuer: root.certificate(),
        this_update: now,
        next_update,
        scope: CrlScope::Complete { delta_url: None },
    };
    let mut builder = CrlBuilder::new(&spec, root.key().as_ref());
    for r in &state.revoked {
        let serial = hex::decode(&r.serial).map_err(|_| DataDirError::Io {
            path: path.clone(),
            reason: format!("the serial {:?} is not hex", r.serial),
        })?;
        builder.push(&CrlEntry {
            serial: &serial,
            revoked_at: OffsetDateTime::from_unix_timestamp(r.at).unwrap_or(now),
            reason: RevocationReason::from_code(i64::from(r.reason))
                .unwrap_or(RevocationReason::Unspecified),
            invalidity_date: None,
        });
    }
    let der = builder
        .finish(number, root.key().as_ref())
        .map_err(|source| DataDirError::Key {
            path: layout.root_key(),
            source,
        })?;
    state.last_number = number;
    let json = serde_json::to_vec_pretty(&state).expect("the state serialises");
    replace_file(&path, &json, 0o644)?;
    Ok(RootCrl {
        der,
        number,
        entries: state.revoked.len(),
        next_update,
    })
}

/// Reads the root certificate.
pub fn load_root_cert(layout: &Layout) -> Result<CaCertificate, DataDirError> {
    let der = read_cert(&layout.root_cert())?;
    Ok(CaCertificate::from_der("root", der)?)
}

/// Reads the issuing intermediate's certificate alone (no key), if the
/// data directory has one.
pub fn load_issuing_cert(layout: &Layout) -> Result<Option<CaCertificate>, DataDirError> {
    if !layout.issuing_cert().exists() {
        return Ok(None);
    }
    let der = read_cert(&layout.issuing_cert())?;
    let cert = CaCertificate::from_der("", der)?;
    let id = ca::intermediate_id(cert.key_id());
    Ok(Some(CaCertificate::from_der(id, cert.der().to_vec())?))
}

/// Reads the issuing intermediate and opens its key (file or token).
pub fn load_issuer(layout: &Layout, config: &Config) -> Result<Issuer, DataDirError> {
    let public_http_url = config.public_http_url.as_str();
    if !layout.has_ca() {
        return Err(DataDirError::NotInitialised(layout.root.clone()));
    }
    crate::issuers::finish_rotation(layout)?;
    if !layout.issuing_cert().exists() {
        if layout.issuing_csr().exists() {
            return Err(DataDirError::AwaitingIntermediate(layout.root.clone()));
        }
        if !layout.issuing_key().exists() && layout.root_cert().exists() {
            return Err(DataDirError::RootOnly(layout.root.clone()));
        }
    }
    let der = read_cert(&layout.issuing_cert())?;
    let cert = CaCertificate::from_der("", der)?;
    let id = ca::intermediate_id(cert.key_id());
    let cert = CaCertificate::from_der(id.clone(), cert.der().to_vec())?;
    let key = issuing_signer(layout, config)?;
    Ok(Issuer::new(
        cert,
        key,
        issuer_urls(public_http_url, &id, true),
    )?)
}

/// Reads the root with its key (needs the passphrase).
pub fn load_root_issuer(
    layout: &Layout,
    config: &Config,
    passphrase: &[u8],
) -> Result<Issuer, DataDirError> {
    let cert = load_root_cert(layout)?;
    let key = match root_token_settings(config)? {
        Some(settings) => TokenKey::open(&settings)?.into_signer(),
        None if !layout.root_key().exists() && layout.has_ca() => {
            return Err(DataDirError::NoRootKey(layout.root.clone()))
        }
        None => read_key(&layout.root_key(), Some(passphrase))?.into_signer(),
    };
    Ok(Issuer::new(
        cert,
        key,
        issuer_urls(&config.public_http_url, "root", false),
    )?)
}

/// Reads a PKCS#8 key file.
pub fn read_key(path: &Path, passphrase: Option<&[u8]>) -> Result<PrivateKey, DataDirError> {
    let pem = Zeroizing::new(fs::read_to_string(path).map_err(io_err(path))?);
    PrivateKey::from_pkcs8_pem(&pem, passphrase).map_err(|source| DataDirError::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// The first PEM certificate of a file, DER.
pub fn read_cert(path: &Path) -> Result<Vec<u8>, DataDirError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    pem_decode_all(&text, "CERTIFICATE")
        .into_iter()
        .next()
        .ok_or_else(|| DataDirError::Io {
            path: path.to_path_buf(),
            reason: "no PEM certificate in the file".into(),
        })
}

/// Creates a directory (and parents) readable only by its owner.
pub fn create_private_dir(path: &Path) -> Result<(), DataDirError> {
    fs::create_dir_all(path).map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err(path))
}

/// Writes a file that must not exist yet, with `mode` from creation on (a
/// key is never readable by others, not even briefly).
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(contents).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))
}

/// Replaces a file atomically (write a temporary file with `mode`, rename).
pub fn replace_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DataDirError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_private_dir(parent)?;
    }
    let tmp = path.with_extension(format!("tmp-{}", hex::encode(rand::random::<[u8; 4]>())));
    write_new(&tmp, contents, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        DataDirError::Io {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
}
