//! `hallmark import openssl`: brings an OpenSSL CA, as `openssl ca` leaves
//! it (the CA certificate and key, `index.txt`, and the directory of the
//! certificates it issued), into hallmark. The CA becomes an issuer that
//! does not issue but publishes its CRL and answers OCSP, signed with its
//! own key, for every certificate it issued, until the last one expires.
//!
//! Everything is read and checked before anything is written; then the
//! CA's files go to `ca/imported/` and its certificates, with their
//! revocations, into the database in one transaction.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::config::Config;
use crate::datadir::{self, DataDirError, Layout};
use crate::issuers;
use crate::pki::crl::RevocationReason;
use crate::pki::{pem_decode_all, CaCertificate, Issuer, PrivateKey, Serial};
use crate::store::{
    AuditEvent, ImportedCertificate, IssuerKind, IssuerRecord, NewCertificate, Revocation, Store,
};

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// A file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Something in the CA's files is wrong; the sentence says what.
    #[error("{0}")]
    Invalid(String),
    /// The data directory.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The database.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What to import.
#[derive(Debug, Clone)]
pub struct OpensslCa {
    /// The CA certificate (PEM or DER).
    pub ca_cert: PathBuf,
    /// Its key: PKCS#8 PEM, encrypted or not.
    pub ca_key: PathBuf,
    /// The passphrase of an encrypted key.
    pub ca_key_passphrase: Option<zeroize::Zeroizing<String>>,
    /// `index.txt`.
    pub index: PathBuf,
    /// The directory of issued certificates (`newcerts/`: `<SERIAL>.pem`).
    pub certs: PathBuf,
}

/// One line of `index.txt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// V, R or E.
    pub status: char,
    /// The serial.
    pub serial: Serial,
    /// Revocation time, reason code and invalidity date, when revoked.
    pub revoked: Option<(i64, i64, Option<i64>)>,
}

/// What an import brought in.
#[derive(Debug)]
pub struct Imported {
    /// The CA, as hallmark now knows it (`imp-…`).
    pub ca: CaCertificate,
    /// Certificates recorded.
    pub certificates: usize,
    /// Of which revoked.
    pub revoked: usize,
    /// Of which already expired.
    pub expired: usize,
    /// Files in the certificates directory that are not this CA's
    /// certificates (the CA itself, say), left out.
    pub skipped: Vec<String>,
}

/// An `openssl ca` time: `YYMMDDHHMMSSZ` (UTCTime, years 1950–2049) or
/// `YYYYMMDDHHMMSSZ`.
fn openssl_time(text: &str) -> Option<i64> {
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match digits.len() {
        12 => {
            let yy: i32 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        14 => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let n = |i: usize| rest[i..i + 2].parse::<u8>().ok();
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(n(0)?).ok()?, n(2)?).ok()?;
    let t = time::Time::from_hms(n(4)?, n(6)?, n(8)?).ok()?;
    Some(date.with_time(t).assume_utc().unix_timestamp())
}

/// The revocation field of an `index.txt` line: `time[,reason[,extra]]`,
/// as `openssl ca -revoke` writes it.
fn revocation_field(field: &str) -> Result<(i64, i64, Option<i64>), String> {
    let mut parts = field.split(',');
    let at = parts
        .next()
        .and_then(openssl_time)
        .ok_or_else(|| format!("revocation time {field:?} is not an openssl ca time"))?;
    let reason = parts.next().unwrap_or("unspecified");
    let extra = parts.next();
    let (code, invalidity) = match reason {
        "keyTime" => (1, extra.and_then(openssl_time)),
        "CAkeyTime" => (2, extra.and_then(openssl_time)),
        "certificateHold" | "holdInstruction" => (6, None),
        "removeFromCRL" => {
            return Err("reason removeFromCRL (an unheld certificate) cannot be imported; `openssl ca -revoke` it again or remove the line".into())
        }
        other => match other.parse::<RevocationReason>() {
            Ok(r) => (i64::from(r.code()), None),
            Err(_) => return Err(format!("revocation reason {other:?} is not one openssl ca writes")),
        },
    };
    Ok((at, code, invalidity))
}

/// Parses `index.txt`: tab-separated status, expiry, revocation, serial,
/// file name and subject.
pub fn parse_index(text: &str) -> Result<Vec<IndexEntry>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |why: String| format!("index line {}: {why}", n + 1);
        let fields: Vec<&str> = line.split('\t').collect();
        if fields.len() < 6 {
            return Err(at(format!(
                "has {} tab-separated fields, not 6 (status, expiry, revocation, serial, file, subject)",
                fields.len()
            )));
        }
        let status = match fields[0] {
            "V" => 'V',
            "R" => 'R',
            "E" => 'E',
            other => return Err(at(format!("status {other:?} is not V, R or E"))),
        };
        let hex = fields[3].to_ascii_lowercase();
        let bytes = hex::decode(&hex)
            .map_err(|_| at(format!("serial {:?} is not hexadecimal", fields[3])))?;
        let serial = Serial::from_magnitude(&bytes)
            .ok_or_else(|| at(format!("serial {:?} is longer than 20 bytes", fields[3])))?;
        let revoked = match (status, fields[2]) {
            ('R', "") => return Err(at("is revoked (R) but has no revocation time".into())),
            ('R', field) => Some(revocation_field(field).map_err(at)?),
            _ => None,
        };
        out.push(IndexEntry {
            status,
            serial,
            revoked,
        });
    }
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, ImportError> {
    fs::read(path).map_err(|e| ImportError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A certificate file's DER: PEM (the first CERTIFICATE block) or DER.
fn certificate_der(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.first() == Some(&0x30) {
        return Some(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).ok()?;
    pem_decode_all(text, "CERTIFICATE").into_iter().next()
}

/// Everything an import writes, read and checked.
struct Gathered {
    issuer: Issuer,
    /// The key as unencrypted PKCS#8 PEM, for `ca/imported/`.
    key_pem: zeroize::Zeroizing<String>,
    certificates: Vec<ImportedCertificate>,
    skipped: Vec<String>,
    expired: usize,
}

/// Reads and checks everything: the key opens and matches the CA
/// certificate, every index line has its certificate, signed by the CA.
fn gather(source: &OpensslCa, public_http_url: &str) -> Result<Gathered, ImportError> {
    let invalid = |s: String| ImportError::Invalid(s);
    let ca_der = certificate_der(&read(&source.ca_cert)?).ok_or_else(|| {
        invalid(format!(
            "{} holds no certificate (PEM or DER)",
            source.ca_cert.display()
        ))
    })?;
    let probe = CaCertificate::from_der("", ca_der.clone()).map_err(|e| invalid(e.to_string()))?;
    let id = issuers::imported_id(probe.key_id());
    let ca = CaCertificate::from_der(id.clone(), ca_der).map_err(|e| invalid(e.to_string()))?;
    let (_, ca_x509) = x509_parser::parse_x509_certificate(ca.der())
        .map_err(|e| invalid(format!("the CA certificate does not parse: {e}")))?;
    if !ca_x509.is_ca() {
        return Err(invalid(format!(
            "{} is not a CA certificate (basicConstraints CA:TRUE)",
            source.ca_cert.display()
        )));
    }
    let key_text = zeroize::Zeroizing::new(String::from_utf8(read(&source.ca_key)?).map_err(
        |_| {
            invalid(format!(
                "{} is not a PEM key; convert it with `openssl pkcs8 -topk8 -in KEY -out key.p8.pem`",
                source.ca_key.display()
            ))
        },
    )?);
    if key_text.contains("BEGIN RSA PRIVATE KEY") || key_text.contains("BEGIN EC PRIVATE KEY") {
        return Err(invalid(format!(
            "{} is a traditional (PKCS#1/SEC1) key; convert it to PKCS#8 with `openssl pkcs8 -topk8 -in {} -out ca.p8.pem`",
            source.ca_key.display(),
            source.ca_key.display()
        )));
    }
    let key = PrivateKey::from_pkcs8_pem(
        &key_text,
        source.ca_key_passphrase.as_ref().map(|p| p.as_bytes()),
    )
    .map_err(|e| invalid(format!("{}: {e}", source.ca_key.display())))?;
    let key_pem = key
        .to_pkcs8_pem()
        .map_err(|e| invalid(format!("{}: {e}", source.ca_key.display())))?;
    let issuer = Issuer::new(
        ca.clone(),
        key.into_signer(),
        datadir::issuer_urls(public_http_url, &id, true),
    )
    .map_err(|e| invalid(format!("{e} (the key is not the CA certificate's)")))?;

    let index_text = String::from_utf8(read(&source.index)?)
        .map_err(|_| invalid(format!("{} is not text", source.index.display())))?;
    let entries = parse_index(&index_text)
        .map_err(|e| invalid(format!("{}: {e}", source.index.display())))?;
    let mut by_serial: HashMap<Serial, &IndexEntry> = HashMap::new();
    for e in &entries {
        if by_serial.insert(e.serial, e).is_some() {
            return Err(invalid(format!(
                "{} lists serial {} twice",
                source.index.display(),
                e.serial
            )));
        }
    }

    let mut files: Vec<PathBuf> = fs::read_dir(&source.certs)
        .map_err(|e| ImportError::Read {
            path: source.certs.clone(),
            reason: e.to_string(),
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let mut found: HashMap<Serial, ImportedCertificate> = HashMap::new();
    let mut skipped = Vec::new();
    let mut expired = 0;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for (n, path) in files.iter().enumerate() {
        if n > 0 && n % 1000 == 0 {
            tracing::info!(read = n, of = files.len(), "reading certificates");
        }
        let name = path.display().to_string();
        let Some(der) = certificate_der(&read(path)?) else {
            skipped.push(name);
            continue;
        };
        let Ok((_, x509)) = x509_parser::parse_x509_certificate(&der) else {
            skipped.push(name);
            continue;
        };
        if x509.issuer().as_raw() != ca.subject_raw() || der == ca.der() {
            skipped.push(name);
            continue;
        }
        if x509.verify_signature(Some(ca_x509.public_key())).is_err() {
            return Err(invalid(format!(
                "{name} names the CA as its issuer but its signature does not verify with the CA's key"
            )));
        }
        let serial = Serial::from_magnitude(x509.tbs_certificate.raw_serial())
            .ok_or_else(|| invalid(format!("{name}: its serial is longer than 20 bytes")))?;
        let Some(entry) = by_serial.get(&serial) else {
            return Err(invalid(format!(
                "{name} (serial {serial}) is not in {}; an index and its certificates must match",
                source.index.display()
            )));
        };
        let not_before = x509.validity().not_before.to_datetime();
        let not_after = x509.validity().not_after.to_datetime();
        if not_after.unix_timestamp() < now {
            expired += 1;
        }
        let identifiers: Vec<String> = x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|g| match g {
                        GeneralName::DNSName(d) => Some((*d).to_owned()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => <[u8; 4]>::try_from(*b)
                                .ok()
                                .map(|a| std::net::IpAddr::from(a).to_string()),
                            16 => <[u8; 16]>::try_from(*b)
                                .ok()
                                .map(|a| std::net::IpAddr::from(a).to_string()),
                            _ => None,
                        },
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let revocation = entry.revoked.map(|(at, reason, invalidity_date)| {
            use sha2::Digest;
            Revocation {
                serial,
                at,
                reason,
                invalidity_date,
                blocked_key: (reason == 1)
                    .then(|| sha2::Sha256::digest(x509.tbs_certificate.subject_pki.raw).to_vec()),
            }
        });
        found.insert(
            serial,
            ImportedCertificate {
                certificate: NewCertificate {
                    serial,
                    issuer_id: id.clone(),
                    account_id: None,
                    order_id: None,
                    subject: x509.subject().to_string(),
                    identifiers,
                    profile: "imported".into(),
                    requested_by: "import".into(),
                    not_before,
                    not_after,
                    der: der.clone(),
                    crl_partition: 0,
                },
                revocation,
            },
        );
    }
    let missing: Vec<String> = entries
        .iter()
        .filter(|e| !found.contains_key(&e.serial))
        .map(|e| e.serial.to_hex())
        .collect();
    if !missing.is_empty() {
        return Err(invalid(format!(
            "{} lists {} serial(s) with no certificate in {}: {}{}",
            source.index.display(),
            missing.len(),
            source.certs.display(),
            missing[..missing.len().min(5)].join(", "),
            if missing.len() > 5 { ", …" } else { "" }
        )));
    }
    let mut certificates: Vec<ImportedCertificate> = found.into_values().collect();
    certificates.sort_by_key(|c| c.certificate.not_before);
    Ok(Gathered {
        issuer,
        key_pem,
        certificates,
        skipped,
        expired,
    })
}

/// Imports an OpenSSL CA into the data directory and database of
/// `config`, audited as `actor`.
pub async fn import_openssl(
    config: &Config,
    store: &dyn Store,
    source: &OpensslCa,
    actor: &str,
) -> Result<Imported, ImportError> {
    let layout = Layout::new(&config.data_dir);
    if !layout.has_ca() {
        return Err(DataDirError::NotInitialised(config.data_dir.clone()).into());
    }
    let Gathered {
        issuer,
        key_pem,
        certificates,
        skipped,
        expired,
    } = gather(source, &config.public_http_url)?;
    let ca = issuer.certificate().clone();
    let id = ca.id().to_owned();
    if store.issuers().await?.iter().any(|i| i.id == id) {
        return Err(ImportError::Invalid(format!(
            "this CA ({}) was imported already, as {id}",
            ca.subject()
        )));
    }
    let dir = issuers::imported_dir(&layout);
    datadir::create_private_dir(&dir)?;
    let key_path = dir.join(format!("{id}.key.pem"));
    let cert_path = dir.join(format!("{id}.crt.pem"));
    datadir::write_new(&key_path, key_pem.as_bytes(), 0o600)?;
    let written = datadir::write_new(&cert_path, ca.pem().as_bytes(), 0o644);
    let revoked = certificates
        .iter()
        .filter(|c| c.revocation.is_some())
        .count();
    let record = IssuerRecord {
        id: id.clone(),
        kind: IssuerKind::Intermediate,
        subject: ca.subject().to_owned(),
        cert_der: ca.der().to_vec(),
        key_id: ca.key_id().to_vec(),
        not_before: ca.not_before().unix_timestamp(),
        not_after: ca.not_after().unix_timestamp(),
        active: false,
    };
    let event = AuditEvent {
        at: OffsetDateTime::now_utc(),
        actor: actor.to_owned(),
        action: "ca.import".into(),
        subject: id.clone(),
        details: serde_json::json!({
            "subject": ca.subject(),
            "sha256": ca.fingerprint_sha256(),
            "certificates": certificates.len(),
            "revoked": revoked,
            "from": "openssl",
        }),
    };
    let stored = match written {
        Ok(()) => store
            .import_certificates(&record, &certificates, event)
            .await
            .map_err(ImportError::from),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = stored {
        // Nothing half-done: the files go with the failed transaction.
        let _ = fs::remove_file(&key_path);
        let _ = fs::remove_file(&cert_path);
        return Err(e);
    }
    Ok(Imported {
        ca,
        certificates: certificates.len(),
        revoked,
        expired,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lines_as_openssl_ca_writes_them() {
        let text = "V\t270101000000Z\t\t01\tunknown\t/CN=a.internal\n\
                    R\t270101000000Z\t260102030405Z,keyTime,260101000000Z\t0A\tunknown\t/CN=b.internal\n\
                    R\t20270101000000Z\t260102030405Z,superseded\t1F2E\tunknown\t/CN=c.internal\n\
                    R\t270101000000Z\t260102030405Z\t1F2F\tunknown\t/CN=d.internal\n\
                    E\t200101000000Z\t\t02\tunknown\t/CN=e.internal\n";
        let e = parse_index(text).unwrap();
        assert_eq!(e.len(), 5);
        assert_eq!(e[0].serial.to_hex(), "01");
        assert_eq!(e[0].revoked, None);
        let revoked_at = openssl_time("260102030405Z").unwrap();
        assert_eq!(revoked_at, 1_767_323_045);
        assert_eq!(
            e[1].revoked,
            Some((revoked_at, 1, openssl_time("260101000000Z")))
        );
        assert_eq!(e[2].revoked, Some((revoked_at, 4, None)));
        assert_eq!(e[3].revoked, Some((revoked_at, 0, None)));
        assert_eq!(e[4].status, 'E');
        assert_eq!(
            openssl_time("20270101000000Z"),
            openssl_time("270101000000Z")
        );
        assert_eq!(openssl_time("500101000000Z"), Some(-631_152_000));

        for (bad, says) in [
            ("X\t270101000000Z\t\t01\tunknown\t/CN=a\n", "status \"X\""),
            ("V\t270101000000Z\t\t01\n", "not 6"),
            (
                "R\t270101000000Z\t\t01\tunknown\t/CN=a\n",
                "no revocation time",
            ),
            (
                "R\t270101000000Z\tyesterday\t01\tunknown\t/CN=a\n",
                "not an openssl ca time",
            ),
            (
                "R\t270101000000Z\t260102030405Z,removeFromCRL\t01\tunknown\t/CN=a\n",
                "removeFromCRL",
            ),
            (
                "V\t270101000000Z\t\tZZ\tunknown\t/CN=a\n",
                "not hexadecimal",
            ),
        ] {
            let err = parse_index(bad).unwrap_err();
            assert!(
                err.contains(says) && err.starts_with("index line 1"),
                "{err}"
            );
        }
    }
}
