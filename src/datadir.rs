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
use crate::pki::ca::{self, CaError, CaNames};
use crate::pki::key::KeyError;
use crate::pki::profile::IssuerUrls;
use crate::pki::{pem_decode_all, CaCertificate, Issuer, KeySigner, PrivateKey, Serial};

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

    fn ca_dir(&self) -> PathBuf {
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

/// Creates a CA (root + issuing intermediate) in `config.data_dir`, and a
/// commented `hallmark.toml` if there is none. Refuses if a CA exists.
pub fn init_ca(
    config: &Config,
    passphrase: &[u8],
    now: OffsetDateTime,
) -> Result<InitOutcome, DataDirError> {
    let layout = Layout::new(&config.data_dir);
    if layout.has_ca() {
        return Err(DataDirError::AlreadyInitialised(config.data_dir.clone()));
    }
    if passphrase.len() < MIN_PASSPHRASE_LEN {
        return Err(DataDirError::WeakPassphrase);
    }
    create_private_dir(&config.data_dir)?;
    let names = CaNames {
        organization: config.ca.organization.clone(),
        root_common_name: config.ca.root_common_name.clone(),
        intermediate_common_name: config.ca.intermediate_common_name.clone(),
    };
    let mut rng = rand::rngs::OsRng;
    let gen = |path: &str| {
        PrivateKey::generate(config.ca_key_type).map_err(|source| DataDirError::Key {
            path: PathBuf::from(path),
            source,
        })
    };
    let root_key = gen("root key")?;
    let root_pem = root_key
        .to_encrypted_pkcs8_pem(passphrase)
        .map_err(|source| DataDirError::Key {
            path: layout.root_key(),
            source,
        })?;
    let root_key: Arc<dyn KeySigner> = root_key.into_signer();
    let root = ca::create_root(&root_key, &names, now, Serial::random(&mut rng))?;
    let root_issuer = Issuer::new(
        root.clone(),
        root_key,
        issuer_urls(&config.public_http_url, "root", false),
    )?;
    let int_key = gen("intermediate key")?;
    let int_pem = int_key.to_pkcs8_pem().map_err(|source| DataDirError::Key {
        path: layout.issuing_key(),
        source,
    })?;
    let intermediate = root_issuer.issue_intermediate(
        int_key.public_key_spki(),
        &names,
        config.intermediate_constraints().as_ref(),
        now,
        Serial::random(&mut rng),
    )?;

    // Write everything into a fresh temporary directory, then rename it into
    // place: all or nothing.
    let staging = config
        .data_dir
        .join(format!(".ca-{}", hex::encode(rand::random::<[u8; 6]>())));
    create_private_dir(&staging)?;
    let result = (|| {
        write_new(&staging.join("root.crt.pem"), root.pem().as_bytes(), 0o644)?;
        write_new(&staging.join("root.key.pem"), root_pem.as_bytes(), 0o600)?;
        write_new(
            &staging.join("issuing.crt.pem"),
            intermediate.pem().as_bytes(),
            0o644,
        )?;
        write_new(&staging.join("issuing.key.pem"), int_pem.as_bytes(), 0o600)?;
        fs::rename(&staging, layout.ca_dir()).map_err(io_err(&layout.ca_dir()))
    })();
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    let config_file = config.data_dir.join(CONFIG_FILE_NAME);
    if !config_file.exists() {
        write_new(&config_file, EXAMPLE_CONFIG.as_bytes(), 0o644)?;
    }
    Ok(InitOutcome { root, intermediate })
}

/// Reads the root certificate.
pub fn load_root_cert(layout: &Layout) -> Result<CaCertificate, DataDirError> {
    let der = read_cert(&layout.root_cert())?;
    Ok(CaCertificate::from_der("root", der)?)
}

/// Reads the issuing intermediate and its key.
pub fn load_issuer(layout: &Layout, public_http_url: &str) -> Result<Issuer, DataDirError> {
    if !layout.has_ca() {
        return Err(DataDirError::NotInitialised(layout.root.clone()));
    }
    let der = read_cert(&layout.issuing_cert())?;
    let cert = CaCertificate::from_der("", der)?;
    let id = ca::intermediate_id(cert.key_id());
    let cert = CaCertificate::from_der(id.clone(), cert.der().to_vec())?;
    let key = read_key(&layout.issuing_key(), None)?;
    Ok(Issuer::new(
        cert,
        key.into_signer(),
        issuer_urls(public_http_url, &id, true),
    )?)
}

/// Reads the root with its key (needs the passphrase).
pub fn load_root_issuer(
    layout: &Layout,
    public_http_url: &str,
    passphrase: &[u8],
) -> Result<Issuer, DataDirError> {
    let cert = load_root_cert(layout)?;
    let key = read_key(&layout.root_key(), Some(passphrase))?;
    Ok(Issuer::new(
        cert,
        key.into_signer(),
        issuer_urls(public_http_url, "root", false),
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

fn read_cert(path: &Path) -> Result<Vec<u8>, DataDirError> {
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
    if let Some(parent) = path.parent() {
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
