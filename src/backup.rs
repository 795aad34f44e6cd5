//! `hallmark backup` and `hallmark restore`: a consistent copy of a CA —
//! its `ca/` directory, its configuration file and a snapshot of its
//! database taken while it runs — and the way back into an empty data
//! directory.
//!
//! The snapshot is SQLite's `VACUUM INTO` (one read transaction, so one
//! point in time, while the service keeps writing) or `pg_dump` (one
//! repeatable-read snapshot). `manifest.json` is written last, with the
//! SHA-256 of every file: a backup without it is incomplete, and a file
//! that does not match it is refused at restore.
//!
//! A restore moves every CRL number up to the restore time in seconds, so
//! a number the old instance may have published after the backup is never
//! used again for different content (RFC 5280 §5.2.3: numbers only rise).

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Config, CONFIG_FILE_NAME};
use crate::store::AuditEvent;

/// The manifest's name in a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// The SQLite snapshot's name.
const SQLITE_FILE: &str = "hallmark.db";
/// The PostgreSQL dump's name (`pg_dump --format=custom`).
const PG_FILE: &str = "hallmark.pgdump";

/// What a backup holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest format (1).
    pub format: u32,
    /// The hallmark version that wrote it.
    pub hallmark_version: String,
    /// When it was taken (RFC 3339).
    pub created_at: String,
    /// `sqlite` or `postgres`.
    pub store: String,
    /// Every file, by its path in the backup, with its SHA-256 (hex).
    pub files: BTreeMap<String, String>,
}

/// Which database a URL names.
fn store_kind(url: &str) -> anyhow::Result<&'static str> {
    if url.starts_with("sqlite:") {
        Ok("sqlite")
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok("postgres")
    } else {
        bail!(
            "database.url {} is neither sqlite: nor postgres://",
            crate::store::redact_url(url)
        )
    }
}

/// The file a `sqlite:` URL names.
fn sqlite_file(url: &str) -> anyhow::Result<PathBuf> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .with_context(|| format!("database.url {url}"))?;
    Ok(options.get_filename().to_path_buf())
}

/// Creates `dir` (0700) if it does not exist; refuses one that holds
/// anything.
fn empty_dir(dir: &Path, what: &str) -> anyhow::Result<()> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty; {what} goes into a new or empty directory",
                    dir.display()
                );
            }
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .with_context(|| format!("securing {}", dir.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display())),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Copies one file, keeping it private (0600) whatever the umask.
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let bytes = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
    write_private(to, &bytes)
}

fn write_private(to: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("creating {}", to.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", to.display()))
}

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Takes a backup of the CA `config` describes into `out` (new or empty),
/// with the configuration file at `config_file` if it exists. The service
/// may keep running.
pub async fn backup(config: &Config, config_file: &Path, out: &Path) -> anyhow::Result<Manifest> {
    let store = store_kind(&config.database_url)?;
    let ca_dir = config.data_dir.join("ca");
    if !ca_dir.is_dir() {
        bail!(
            "{} holds no CA (no ca/ directory); nothing to back up",
            config.data_dir.display()
        );
    }
    empty_dir(out, "a backup")?;
    let mut names = Vec::new();
    // ca/ and its directories of retired and imported issuers (keys too).
    let mut dirs = vec![("ca".to_owned(), ca_dir.clone())];
    while let Some((prefix, dir)) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let entry = entry?;
            let name = format!("{prefix}/{}", entry.file_name().to_string_lossy());
            let kind = entry.file_type()?;
            if kind.is_file() {
                copy_private(&entry.path(), &out.join(&name))?;
                names.push(name);
            } else if kind.is_dir() && !entry.file_name().to_string_lossy().starts_with('.') {
                dirs.push((name, entry.path()));
            }
        }
    }
    if config_file.is_file() {
        copy_private(config_file, &out.join(CONFIG_FILE_NAME))?;
        names.push(CONFIG_FILE_NAME.to_owned());
    }
    tracing::info!(files = names.len(), "copied ca/ and the configuration");
    let started = std::time::Instant::now();
    tracing::info!(store, "snapshotting the database");
    match store {
        "sqlite" => {
            let target = out.join(SQLITE_FILE);
            vacuum_into(&config.database_url, &target).await?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
            names.push(SQLITE_FILE.to_owned());
        }
        _ => {
            let target = out.join(PG_FILE);
            run_tool(
                "pg_dump",
                &[
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    "--file",
                    &target.to_string_lossy(),
                    "--dbname",
                    &config.database_url,
                ],
            )?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600))?;
            names.push(PG_FILE.to_owned());
        }
    }
    tracing::info!(
        ms = started.elapsed().as_millis() as u64,
        "snapshot taken; writing checksums"
    );
    let mut files = BTreeMap::new();
    for name in names {
        let digest = sha256_file(&out.join(&name))?;
        files.insert(name, digest);
    }
    let manifest = Manifest {
        format: 1,
        hallmark_version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at: crate::workflow::rfc3339(time::OffsetDateTime::now_utc().unix_timestamp()),
        store: store.to_owned(),
        files,
    };
    // Written last, under a temporary name and then renamed: its presence
    // says the backup is whole.
    let tmp = out.join(format!("{MANIFEST}.tmp"));
    write_private(&tmp, &serde_json::to_vec_pretty(&manifest)?)?;
    std::fs::rename(&tmp, out.join(MANIFEST))?;
    sync_dir(out)?;
    Ok(manifest)
}

/// `VACUUM INTO`: a compact copy of the database as one read transaction
/// saw it, taken on a read-only connection beside the service's.
async fn vacuum_into(url: &str, target: &Path) -> anyhow::Result<()> {
    use sqlx::ConnectOptions;
    let source = sqlite_file(url)?;
    if !source.is_file() {
        bail!("the database {} does not exist", source.display());
    }
    let mut conn = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
        .read_only(true)
        .busy_timeout(std::time::Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("opening {}", source.display()))?;
    sqlx::query("VACUUM INTO $1")
        .bind(target.to_string_lossy().into_owned())
        .execute(&mut conn)
        .await
        .with_context(|| {
            format!(
                "snapshotting {} into {}",
                source.display(),
                target.display()
            )
        })?;
    Ok(())
}

fn run_tool(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => anyhow::anyhow!(
                "{program} is not installed; install the PostgreSQL client tools (Debian: apt install postgresql-client) of the server's major version"
            ),
            _ => anyhow::anyhow!("cannot run {program}: {e}"),
        })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        bail!(
            "{program} failed: {}",
            crate::store::redact_url(stderr.trim())
        );
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Reads and checks a backup: its manifest, and every file against its
/// checksum.
pub fn read_backup(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => anyhow::anyhow!(
            "{} has no {MANIFEST}: it is not a hallmark backup, or the backup did not finish",
            dir.display()
        ),
        _ => anyhow::anyhow!("reading {}: {e}", path.display()),
    })?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a hallmark backup manifest", path.display()))?;
    if manifest.format != 1 {
        bail!(
            "{} is format {}; this hallmark reads format 1",
            path.display(),
            manifest.format
        );
    }
    for (name, want) in &manifest.files {
        if name.contains("..") || name.starts_with('/') {
            bail!(
                "{} names a file outside the backup: {name:?}",
                path.display()
            );
        }
        let got = sha256_file(&dir.join(name))?;
        if &got != want {
            bail!("the backup is damaged: {name} does not match its SHA-256 in {MANIFEST}");
        }
    }
    Ok(manifest)
}

/// What a restore did.
#[derive(Debug)]
pub struct Restored {
    /// The backup's manifest.
    pub manifest: Manifest,
    /// The configuration the restored CA runs with.
    pub config: Config,
    /// Certificates in the restored database.
    pub certificates: i64,
    /// Audit records, verified.
    pub audit_records: i64,
    /// The floor the CRL numbers were moved to.
    pub crl_number_floor: i64,
}

/// Restores the backup in `from` into the empty (or new) `data_dir`. The
/// configuration is the backup's file, read with `config_file` (when given)
/// and the `env` overrides, as `hallmark serve` would read it; its
/// database must be empty.
pub async fn restore(
    from: &Path,
    data_dir: &Path,
    config_file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    actor: &str,
) -> anyhow::Result<Restored> {
    let manifest = read_backup(from)?;
    if std::fs::read_dir(data_dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{} is not empty; a restore goes into a new or empty directory",
            data_dir.display()
        );
    }
    // Everything is checked before anything is written: the configuration
    // as `serve` will read it (the backup's file unless --config names
    // another, the target data directory, the environment), the store's
    // kind, and that the target directory and database are empty.
    let backed_up_config = manifest
        .files
        .contains_key(CONFIG_FILE_NAME)
        .then(|| from.join(CONFIG_FILE_NAME));
    let config = Config::load(config_file.or(backed_up_config.as_deref()), data_dir, env)?;
    let target = store_kind(&config.database_url)?;
    if target != manifest.store {
        bail!(
            "this backup holds a {} database but database.url is {}; restore into the same kind of store",
            manifest.store,
            crate::store::redact_url(&config.database_url)
        );
    }
    let sqlite_target = match target {
        "sqlite" => {
            let file = sqlite_file(&config.database_url)?;
            if file.exists() {
                bail!(
                    "{} already exists; a restore does not overwrite a database",
                    file.display()
                );
            }
            Some(file)
        }
        _ => {
            postgres_is_empty(&config.database_url).await?;
            None
        }
    };
    let written = write_restore(from, data_dir, &manifest, sqlite_target.as_deref(), &config).await;
    if let Err(e) = written {
        // Nothing half-done: what this restore wrote goes again.
        if let Some(file) = &sqlite_target {
            let _ = std::fs::remove_file(file);
        }
        if let Ok(entries) = std::fs::read_dir(data_dir) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_dir_all(entry.path())
                    .or_else(|_| std::fs::remove_file(entry.path()));
            }
        }
        return Err(e);
    }
    tracing::info!("database restored; migrating and verifying the audit chain");
    // Opening the store applies any newer migrations (a backup from an
    // older hallmark is upgraded here).
    let store = crate::store::connect(&config.database_url).await?;
    let floor = time::OffsetDateTime::now_utc().unix_timestamp();
    store
        .raise_crl_numbers(
            floor,
            AuditEvent {
                at: time::OffsetDateTime::now_utc(),
                actor: actor.to_owned(),
                action: "ca.restore".into(),
                subject: from.display().to_string(),
                details: serde_json::json!({
                    "backup_created_at": manifest.created_at,
                    "crl_number_floor": floor,
                }),
            },
        )
        .await?;
    let summary = crate::workflow::audit::verify(store.as_ref()).await?;
    let certificates = store.count_certificates().await?;
    Ok(Restored {
        manifest,
        config,
        certificates,
        audit_records: summary.records,
        crl_number_floor: floor,
    })
}

/// The writing half of a restore: the files, then the database.
async fn write_restore(
    from: &Path,
    data_dir: &Path,
    manifest: &Manifest,
    sqlite_target: Option<&Path>,
    config: &Config,
) -> anyhow::Result<()> {
    empty_dir(data_dir, "a restore")?;
    for name in manifest.files.keys() {
        if name.starts_with("ca/") || name == CONFIG_FILE_NAME {
            copy_private(&from.join(name), &data_dir.join(name))?;
        }
    }
    match sqlite_target {
        Some(file) => copy_private(&from.join(SQLITE_FILE), file),
        None => run_tool(
            "pg_restore",
            &[
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                "--dbname",
                &config.database_url,
                &from.join(PG_FILE).to_string_lossy(),
            ],
        ),
    }
}

/// Refuses a PostgreSQL database that already holds hallmark's tables.
async fn postgres_is_empty(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .with_context(|| format!("connecting to {}", crate::store::redact_url(url)))?;
    let (tables,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_one(&mut conn)
    .await?;
    if tables > 0 {
        bail!(
            "the database {} is not empty ({tables} tables); a restore goes into an empty database",
            crate::store::redact_url(url)
        );
    }
    Ok(())
}

/// What `hallmark export` wrote.
#[derive(Debug)]
pub struct Exported {
    /// Certificates written.
    pub certificates: u64,
    /// Of them, revoked.
    pub revoked: u64,
}

/// Writes every certificate on record into `out` (new or empty):
/// `certs/<SERIAL>.pem`, an OpenSSL CA `index.txt` (the format `openssl ca`
/// keeps, so other tools read it) and `index.jsonl` (one JSON object per
/// certificate, with names, profile, account and revocation). Pages through
/// the store newest first; `progress` is told the running count.
pub async fn export(
    store: &dyn crate::store::Store,
    out: &Path,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<Exported> {
    use crate::pki::crl::RevocationReason;
    use crate::store::CertificateQuery;
    use std::io::Write;

    empty_dir(out, "an export")?;
    let certs_dir = out.join("certs");
    std::fs::create_dir(&certs_dir).with_context(|| format!("creating {}", certs_dir.display()))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut index = Vec::new();
    let mut jsonl = std::io::BufWriter::new(
        std::fs::File::create(out.join("index.jsonl")).context("creating index.jsonl")?,
    );
    let mut done = Exported {
        certificates: 0,
        revoked: 0,
    };
    let mut before = None;
    loop {
        let page = store
            .certificates(&CertificateQuery {
                before: before.clone(),
                limit: 1000,
                now,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        before = Some((last.created_at, last.serial.to_hex()));
        for cert in &page {
            let serial = cert.serial.to_hex().to_uppercase();
            std::fs::write(
                certs_dir.join(format!("{serial}.pem")),
                crate::pki::pem_encode("CERTIFICATE", &cert.der),
            )
            .with_context(|| format!("writing certs/{serial}.pem"))?;
            let reason = cert
                .revocation_reason
                .and_then(RevocationReason::from_code)
                .map(RevocationReason::as_str);
            let (flag, revoked) = match cert.revoked_at {
                Some(at) => {
                    done.revoked += 1;
                    let reason = reason.map(|r| format!(",{r}")).unwrap_or_default();
                    ("R", format!("{}{reason}", openssl_time(at)))
                }
                None if cert.not_after < now => ("E", String::new()),
                None => ("V", String::new()),
            };
            let subject = if cert.subject.is_empty() {
                String::new()
            } else {
                format!("/{}", cert.subject.replace(", ", "/"))
            };
            index.push((
                cert.created_at,
                format!(
                    "{flag}\t{}\t{revoked}\t{serial}\tunknown\t{subject}\n",
                    openssl_time(cert.not_after)
                ),
            ));
            serde_json::to_writer(
                &mut jsonl,
                &serde_json::json!({
                    "serial": cert.serial.to_hex(),
                    "issuer": cert.issuer_id,
                    "subject": cert.subject,
                    "names": cert.identifiers,
                    "profile": cert.profile,
                    "account": cert.account_id,
                    "order": cert.order_id,
                    "requested_by": cert.requested_by,
                    "not_before": crate::workflow::rfc3339(cert.not_before),
                    "not_after": crate::workflow::rfc3339(cert.not_after),
                    "revoked_at": cert.revoked_at.map(crate::workflow::rfc3339),
                    "revocation_reason": reason,
                }),
            )?;
            jsonl.write_all(b"\n")?;
            done.certificates += 1;
        }
        progress(done.certificates);
    }
    jsonl.flush()?;
    // index.txt oldest first, as `openssl ca` appends.
    index.sort_by_key(|(at, _)| *at);
    let text: String = index.into_iter().map(|(_, line)| line).collect();
    std::fs::write(out.join("index.txt"), text).context("writing index.txt")?;
    Ok(done)
}

/// A time as `openssl ca` writes it in index.txt: an RFC 5280 Time's text.
fn openssl_time(unix: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    crate::pki::der::time_text(t).0
}
