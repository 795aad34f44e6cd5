//! Issuers beside the current intermediate: intermediates retired by
//! `hallmark ca rotate` and CAs brought in by `hallmark import openssl`.
//! Each keeps its certificate and key in the data directory,
//!
//! ```text
//!   ca/retired/<id>.crt.pem   a rotated intermediate (int-…)
//!   ca/retired/<id>.key.pem   its key, PKCS#8, 0600
//!   ca/imported/<id>.crt.pem  an imported CA (imp-…)
//!   ca/imported/<id>.key.pem  its key, PKCS#8, 0600
//! ```
//!
//! and signs CRLs and OCSP answers for what it issued until the last of
//! those certificates expires; only the current intermediate issues.

use std::fs;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use crate::config::Config;
use crate::datadir::{self, DataDirError, Layout};
use crate::pki::{ca, CaCertificate, Issuer, Serial};
use crate::workflow::Retirement;

/// The directory of rotated intermediates.
pub fn retired_dir(layout: &Layout) -> PathBuf {
    layout.ca_dir().join("retired")
}

/// The directory of imported CAs.
pub fn imported_dir(layout: &Layout) -> PathBuf {
    layout.ca_dir().join("imported")
}

/// The id an imported CA gets in URLs: `imp-` and the first four bytes of
/// its key identifier.
pub fn imported_id(key_id: &[u8]) -> String {
    format!("imp-{}", hex::encode(&key_id[..key_id.len().min(4)]))
}

/// Every retired and imported issuer in the data directory, with its key
/// (the issuers' URLs are those of this configuration).
pub fn load_retired(
    layout: &Layout,
    config: &Config,
) -> Result<Vec<(Issuer, Retirement)>, DataDirError> {
    let mut out = Vec::new();
    for (dir, kind) in [
        (retired_dir(layout), Retirement::Rotated),
        (imported_dir(layout), Retirement::Imported),
    ] {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(DataDirError::Io {
                    path: dir,
                    reason: e.to_string(),
                })
            }
        };
        let mut ids: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".crt.pem"))
                    .map(str::to_owned)
            })
            .collect();
        ids.sort();
        for id in ids {
            let cert_path = dir.join(format!("{id}.crt.pem"));
            let der = datadir::read_cert(&cert_path)?;
            let cert = CaCertificate::from_der(id.clone(), der)?;
            let key = datadir::read_key(&dir.join(format!("{id}.key.pem")), None)?.into_signer();
            let issuer = Issuer::new(
                cert,
                key,
                datadir::issuer_urls(&config.public_http_url, &id, true),
            )?;
            out.push((issuer, kind));
        }
    }
    Ok(out)
}

/// What `hallmark ca rotate` did.
#[derive(Debug)]
pub struct Rotated {
    /// The intermediate that no longer issues.
    pub old: CaCertificate,
    /// The one that issues from now on.
    pub new: CaCertificate,
}

fn staged(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Completes a rotation a crash interrupted: the new key and certificate
/// are written in full (as `*.new`) before either is renamed into place,
/// so renaming what is left is always right.
pub fn finish_rotation(layout: &Layout) -> Result<(), DataDirError> {
    put_staged_in_place(layout, true)
}

fn put_staged_in_place(layout: &Layout, interrupted: bool) -> Result<(), DataDirError> {
    for path in [layout.issuing_key(), layout.issuing_cert()] {
        let new = staged(&path);
        if new.exists() {
            fs::rename(&new, &path).map_err(|e| DataDirError::Io {
                path: new.clone(),
                reason: e.to_string(),
            })?;
            if interrupted {
                tracing::warn!(file = %path.display(), "completed an interrupted `hallmark ca rotate`");
            }
        }
    }
    Ok(())
}

/// Makes a new issuing intermediate, signed by the root (which needs the
/// passphrase), with this configuration's names and name constraints; the
/// current one moves to `ca/retired/` with its key, and keeps publishing
/// CRLs and answering OCSP for its certificates once `serve` restarts.
pub fn rotate(
    config: &Config,
    passphrase: &[u8],
    now: OffsetDateTime,
) -> Result<Rotated, DataDirError> {
    let layout = Layout::new(&config.data_dir);
    finish_rotation(&layout)?;
    if config.ca.pkcs11_module.is_some() {
        return Err(DataDirError::Install(
            "the issuing key is in a PKCS#11 token: `ca rotate` makes key files only; rotate with `hallmark init --intermediate-csr` in a new data directory instead (docs/OPERATIONS.md)".into(),
        ));
    }
    // Both must open before anything is written: the passphrase is right
    // and the current intermediate is whole.
    let root = datadir::load_root_issuer(&layout, config, passphrase)?;
    let old = datadir::load_issuer(&layout, config)?;
    let old_cert = old.certificate().clone();
    let key = datadir::generate_key(config, "new intermediate key")?;
    let key_pem = key.to_pkcs8_pem().map_err(|source| DataDirError::Key {
        path: layout.issuing_key(),
        source,
    })?;
    let signer = key.into_signer();
    let issued = root.issue_intermediate(
        signer.public_key_spki(),
        &datadir::ca_names(config),
        config.intermediate_constraints().as_ref(),
        now,
        Serial::random(&mut rand::rngs::OsRng),
    )?;
    let id = ca::intermediate_id(issued.key_id());
    if id == old_cert.id() {
        return Err(DataDirError::Install(format!(
            "the new key's identifier begins as the current one's ({id}); run `hallmark ca rotate` again"
        )));
    }
    let new = CaCertificate::from_der(id, issued.der().to_vec())?;

    // 1. The current intermediate, with its key, into ca/retired/.
    let dir = retired_dir(&layout);
    datadir::create_private_dir(&dir)?;
    let old_key_pem = fs::read(layout.issuing_key()).map_err(|e| DataDirError::Io {
        path: layout.issuing_key(),
        reason: e.to_string(),
    })?;
    let old_key_pem = zeroize::Zeroizing::new(old_key_pem);
    for (name, contents, mode) in [
        (
            format!("{}.key.pem", old_cert.id()),
            &old_key_pem[..],
            0o600,
        ),
        (
            format!("{}.crt.pem", old_cert.id()),
            old_cert.pem().as_bytes(),
            0o644,
        ),
    ] {
        let path = dir.join(name);
        if path.exists() {
            continue; // an earlier, interrupted rotation wrote it
        }
        datadir::write_new(&path, contents, mode)?;
    }
    // 2. The new key and certificate, staged in full, then renamed.
    let cert_pem = new.pem();
    for (path, contents, mode) in [
        (layout.issuing_key(), key_pem.as_bytes(), 0o600),
        (layout.issuing_cert(), cert_pem.as_bytes(), 0o644),
    ] {
        let tmp = staged(&path);
        let _ = fs::remove_file(&tmp);
        datadir::write_new(&tmp, contents, mode)?;
    }
    put_staged_in_place(&layout, false)?;
    datadir::log_signed_intermediate(&layout, &new, now)?;
    Ok(Rotated { old: old_cert, new })
}
