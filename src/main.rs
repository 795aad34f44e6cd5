//! The `hallmark` command line.

use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use hallmark::config::{Config, DEFAULT_DATA_DIR};

/// mimalloc instead of glibc's malloc (docs/BENCHMARKS.md, issue 16).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use hallmark::datadir::{self, Layout};
use hallmark::pki::crl::RevocationReason;
use hallmark::service::Service;
use hallmark::workflow::crl::{CrlKind, CrlPublisher};
use hallmark::workflow::revocation::{RevokeRequest, Revoker};
use hallmark::workflow::{accounts, audit, users, SignOptions};

/// hallmark: a private certificate authority.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file [default: <data-dir>/hallmark.toml]
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Data directory (keys, certificates, SQLite database)
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Log format
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a CA: an encrypted root key and certificate, and an issuing intermediate
    Init {
        /// Key type for both CA keys (overrides [ca] key_type)
        #[arg(long, value_parser = ["p256", "p384", "rsa2048", "rsa3072", "rsa4096"])]
        key_type: Option<String>,
        /// Make only the issuing key and its CSR (ca/issuing.csr.pem), for a
        /// root kept elsewhere; finish with `hallmark ca install-intermediate`
        #[arg(long, conflicts_with = "root_only")]
        intermediate_csr: bool,
        /// Make only a root, for a machine kept offline that signs
        /// intermediates and root CRLs
        #[arg(long)]
        root_only: bool,
        /// Keep the issuing key (with --root-only: the root key) in this
        /// PKCS#11 module's token (sets ca.pkcs11_module)
        #[arg(long, value_name = "PATH", requires = "pkcs11_token")]
        pkcs11_module: Option<PathBuf>,
        /// The token's label (sets ca.pkcs11_token)
        #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
        pkcs11_token: Option<String>,
        /// A file whose first line is the token's user PIN (sets
        /// ca.pkcs11_pin_file; without it, the PIN is asked for)
        #[arg(long, value_name = "FILE", requires = "pkcs11_module")]
        pkcs11_pin_file: Option<PathBuf>,
        /// The issuing key's label in the token: used if it exists, made if
        /// not (sets ca.pkcs11_key_label)
        #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
        pkcs11_key_label: Option<String>,
        /// Keep the root key in the same token too, under this label (sets
        /// ca.pkcs11_root_key_label; no passphrase, no root.key.pem)
        #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
        pkcs11_root_key_label: Option<String>,
    },
    /// The root, where its key is kept (needs the root passphrase)
    Root {
        #[command(subcommand)]
        command: RootCommand,
    },
    /// The issuing CA
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Bring an existing CA's certificates and revocations into hallmark
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Run the service (creates the CA on first start)
    Serve,
    /// Sign a CSR as the operator: policy and profile apply, no domain validation
    Sign {
        /// The CSR (PEM or DER); "-" reads standard input
        csr_file: PathBuf,
        /// Validity in days [default: policy.default_validity_days]
        #[arg(long)]
        days: Option<u32>,
        /// Certificate profile: server, server-client, shortlived (at most 7 days, no revocation information) or one configured under [profiles.NAME]
        #[arg(long, default_value = "server")]
        profile: String,
    },
    /// Requester accounts and their API keys
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Dashboard users
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Revoke a certificate as the operator (audited); the next CRL lists it
    Revoke {
        /// The certificate's serial (lower-case hex, as the API shows it)
        serial: String,
        /// RFC 5280 reason: unspecified, keyCompromise, cACompromise,
        /// affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// CRLs
    Crl {
        #[command(subcommand)]
        command: CrlCommand,
    },
    /// The audit log
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Check a configuration file (and, if this data directory holds a CA,
    /// that its intermediate's name constraints cover it); exits non-zero
    /// with the key named
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Issuers and their expiry, certificates and orders by state, CRL
    /// freshness, the database and the audit log; exits 1 when something
    /// needs an operator
    Status {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
    /// Write a consistent backup of this CA into a new or empty directory:
    /// ca/, the configuration file, and a snapshot of the database (SQLite
    /// VACUUM INTO, or pg_dump) taken while the service runs
    Backup {
        /// Where to write it
        dir: PathBuf,
    },
    /// Write every certificate (certs/SERIAL.pem), an OpenSSL CA index.txt
    /// and index.jsonl into a new or empty directory
    Export {
        /// Where to write them
        dir: PathBuf,
    },
    /// Restore a backup into an empty data directory (--data-dir) and an
    /// empty database; CRL numbers move up to the restore time
    Restore {
        /// The backup directory (`hallmark backup DIR`)
        dir: PathBuf,
    },
    /// Get a DV certificate from a hallmark server: make a key and CSR,
    /// prove control of the names, and write key.pem, cert.pem, chain.pem
    /// and fullchain.pem
    Request(hallmark::client::RequestOptions),
    /// Renew a certificate `hallmark request` wrote, when the CA's renewal
    /// information says it is due (run it daily from a timer); keeps the
    /// key unless --rotate-key, and runs the deploy hook again
    Renew(hallmark::client::RenewOptions),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration file with the HALLMARK_* variables over it
    Check {
        /// The file [default: --config, else <data-dir>/hallmark.toml]
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Create an account; prints {"id", "api_key"} once (the key is not stored)
    Create {
        /// Account name (a team or service)
        name: String,
        /// What the account's keys may do
        #[arg(long, default_value = "requester", value_parser = ["requester", "reviewer", "admin"])]
        role: String,
        /// Where its expiry notices are mailed ([smtp])
        #[arg(long, value_name = "ADDRESS")]
        email: Option<String>,
    },
    /// Set where an account's expiry notices are mailed ([smtp])
    SetEmail {
        /// The account's id (`acct_…`)
        account_id: String,
        /// The address; leave out with --none
        #[arg(required_unless_present = "none")]
        email: Option<String>,
        /// Mail this account nothing
        #[arg(long, conflicts_with = "email")]
        none: bool,
    },
    /// Revoke one API key at once (by its key_id)
    RevokeKey {
        /// The key's id (`key_…`, printed when the key was made)
        key_id: String,
    },
    /// Revoke every key of an account and print a new one
    RotateKey {
        /// The account's id (`acct_…`)
        account_id: String,
    },
    /// Issue a single-use ACME external account binding key for an account;
    /// prints {"kid", "hmac_key"} once (certbot --eab-kid/--eab-hmac-key)
    EabKey {
        /// The account's id (`acct_…`) that ACME certificates will belong to
        account_id: String,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a dashboard user; the password is read from standard input
    Add {
        /// Sign-in name (a-z, 0-9, '.', '_', '-')
        name: String,
        /// What the user may do
        #[arg(long, value_parser = ["admin", "reviewer", "auditor"])]
        role: String,
        /// Read the password from standard input (the first line)
        #[arg(long, required = true)]
        password_stdin: bool,
        /// Make the user choose a new password at first sign-in
        #[arg(long)]
        must_change: bool,
        /// The requester account this person belongs to: they will never
        /// approve its orders (four-eyes)
        #[arg(long, value_name = "ACCOUNT_ID")]
        account: Option<String>,
    },
    /// Link a dashboard user to the requester account they belong to (or
    /// unlink with --none), so they never approve its orders
    Link {
        /// Sign-in name
        name: String,
        /// The account id (acct_…)
        #[arg(
            long,
            value_name = "ACCOUNT_ID",
            required_unless_present = "none",
            conflicts_with = "none"
        )]
        account: Option<String>,
        /// Belongs to no account
        #[arg(long)]
        none: bool,
    },
}

#[derive(Subcommand)]
enum RootCommand {
    /// Sign an issuing intermediate's CSR (from `hallmark init
    /// --intermediate-csr`) with the root, with the name constraints it asks for
    SignIntermediate {
        /// The CSR (PEM or DER)
        csr_file: PathBuf,
        /// Write the certificate here (PEM) instead of standard output
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Sign the root's CRL here, for `hallmark crl import` where hallmark serves
    Crl {
        /// Write the CRL here (DER)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Revoke an intermediate by its serial (hex, as `openssl x509
        /// -serial` prints it); listed in this and every later root CRL
        #[arg(long, value_name = "SERIAL")]
        revoke: Vec<String>,
        /// Reason for --revoke: unspecified, keyCompromise, cACompromise,
        /// affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn
        #[arg(long, default_value = "unspecified", requires = "revoke")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Install the issuing intermediate the root signed, completing
    /// `hallmark init --intermediate-csr`
    InstallIntermediate {
        /// The intermediate's certificate (PEM or DER)
        cert_file: PathBuf,
        /// The root's certificate (PEM or DER), unless ca/root.crt.pem exists
        #[arg(long, value_name = "FILE")]
        root: Option<PathBuf>,
    },
    /// Make a new issuing intermediate signed by the root (needs the
    /// passphrase); the current one retires to ca/retired/ and keeps
    /// publishing CRLs and answering OCSP until its last certificate
    /// expires. Restart `serve` (instance by instance) to issue from it
    Rotate,
}

#[derive(Subcommand)]
enum ImportCommand {
    /// An OpenSSL CA as `openssl ca` leaves it: hallmark publishes its CRL
    /// and answers OCSP for every certificate it issued (it issues no more)
    Openssl {
        /// The CA's certificate (PEM or DER)
        #[arg(long, value_name = "FILE")]
        ca_cert: PathBuf,
        /// The CA's key, PKCS#8 PEM (an encrypted one asks for its
        /// passphrase, or reads HALLMARK_IMPORT_KEY_PASSPHRASE_FILE)
        #[arg(long, value_name = "FILE")]
        ca_key: PathBuf,
        /// The CA database, `index.txt`
        #[arg(long, value_name = "FILE")]
        index: PathBuf,
        /// The directory of the certificates it issued (`newcerts/`)
        #[arg(long, value_name = "DIR")]
        certs: PathBuf,
    },
}

#[derive(Subcommand)]
enum CrlCommand {
    /// Generate and publish the issuing CA's CRLs now (complete, partitions,
    /// delta); with --root, the root's CRL (needs the root passphrase)
    Generate {
        /// Sign the root's CRL with the root key instead
        #[arg(long)]
        root: bool,
    },
    /// Publish a root CRL signed where the root key is kept (`hallmark root crl`)
    Import {
        /// The CRL (DER or PEM)
        crl_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit log's hash chain: no record edited or removed
    Verify,
}

fn main() -> ExitCode {
    take_env_passphrase();
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_sentence(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes as one line, without repeating a cause that an
/// outer message already quotes.
fn error_sentence(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    // A log that cannot be written (its disk full) is lost, never fatal:
    // tracing-subscriber would otherwise report the failure with
    // `eprintln!`, which panics when stderr itself cannot be written.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Request(options) = cli.command {
        let written = hallmark::client::request(&options, || {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading standard input")?;
            Ok(())
        })
        .await?;
        for path in written {
            println!("wrote {}", path.display());
        }
        return Ok(());
    }
    if let Command::Renew(options) = &cli.command {
        let wait = || {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading standard input")?;
            Ok(())
        };
        match hallmark::client::renew(options, wait).await? {
            hallmark::client::Renewal::NotDue { start, end } => println!(
                "{}: not due; the CA suggests renewing between {start} and {end}",
                options.out.join("cert.pem").display()
            ),
            hallmark::client::Renewal::Renewed(written) => {
                for path in written {
                    println!("wrote {}", path.display());
                }
            }
        }
        return Ok(());
    }
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "hallmark", &mut script);
        use std::io::Write;
        return match std::io::stdout().write_all(&script) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("writing the completion script"),
        };
    }
    if let Command::Config {
        command: ConfigCommand::Check { file },
    } = &cli.command
    {
        return config_check(file.as_deref().or(cli.config.as_deref()), &cli.data_dir);
    }
    if let Command::Restore { dir } = &cli.command {
        let restored = hallmark::backup::restore(
            dir,
            &cli.data_dir,
            cli.config.as_deref(),
            std::env::vars(),
            &operator(),
        )
        .await?;
        println!(
            "restored the backup of {} ({}) into {}: certificates {}; audit log verified, {} records; CRL numbers continue above {}",
            restored.manifest.created_at,
            restored.manifest.store,
            cli.data_dir.display(),
            restored.certificates,
            restored.audit_records,
            restored.crl_number_floor,
        );
        return Ok(());
    }
    let mut config = Config::load(cli.config.as_deref(), &cli.data_dir, std::env::vars())?;
    if matches!(
        cli.command,
        Command::Serve
            | Command::Sign { .. }
            | Command::Revoke { .. }
            | Command::Crl { .. }
            | Command::Ca { .. }
            | Command::Root { .. }
    ) {
        ask_pkcs11_pin(&mut config)?;
    }
    match cli.command {
        Command::Init {
            key_type,
            intermediate_csr,
            root_only,
            pkcs11_module,
            pkcs11_token,
            pkcs11_pin_file,
            pkcs11_key_label,
            pkcs11_root_key_label,
        } => {
            if let Some(k) = key_type {
                config.ca_key_type = k.parse()?;
            }
            if let Some(module) = pkcs11_module {
                config.ca.pkcs11_module = Some(module);
                config.ca.pkcs11_token = pkcs11_token;
                config.ca.pkcs11_pin_file = pkcs11_pin_file;
                if let Some(label) = pkcs11_key_label {
                    config.ca.pkcs11_key_label = label;
                }
                if pkcs11_root_key_label.is_some() {
                    config.ca.pkcs11_root_key_label = pkcs11_root_key_label;
                } else if root_only && config.ca.pkcs11_root_key_label.is_none() {
                    // A root-only machine with a token keeps the root there.
                    config.ca.pkcs11_root_key_label = Some("hallmark-root".into());
                }
                ask_pkcs11_pin(&mut config)?;
            }
            if intermediate_csr {
                init_intermediate_csr(&config)
            } else if root_only {
                init_root_only(&config)
            } else {
                let passphrase = init(&config, true)?;
                publish_first_crls(&config, &passphrase).await
            }
        }
        Command::Root { command } => root_command(&config, command),
        Command::Ca {
            command: CaCommand::InstallIntermediate { cert_file, root },
        } => install_intermediate(&config, &cert_file, root.as_deref()),
        Command::Ca {
            command: CaCommand::Rotate,
        } => rotate(&config).await,
        Command::Import {
            command:
                ImportCommand::Openssl {
                    ca_cert,
                    ca_key,
                    index,
                    certs,
                },
        } => {
            let encrypted = std::fs::read_to_string(&ca_key)
                .map(|t| t.contains("ENCRYPTED PRIVATE KEY"))
                .unwrap_or(false);
            let ca_key_passphrase = if encrypted {
                Some(import_key_passphrase()?)
            } else {
                None
            };
            let source = hallmark::import::OpensslCa {
                ca_cert,
                ca_key,
                ca_key_passphrase,
                index,
                certs,
            };
            let store = hallmark::store::connect(&config.database_url).await?;
            let done =
                hallmark::import::import_openssl(&config, store.as_ref(), &source, &operator())
                    .await?;
            drop(store);
            println!(
                "imported {} as {}: {} certificates ({} revoked, {} already expired)",
                done.ca.subject(),
                done.ca.id(),
                done.certificates,
                done.revoked,
                done.expired
            );
            for s in &done.skipped {
                println!("  left out {s}: not a certificate this CA issued");
            }
            let authority = hallmark::service::open_authority(&config).await?;
            let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
            crls.refresh().await?;
            if authority.issuer_by_id(done.ca.id()).is_some() {
                let g = crls
                    .generate_for(done.ca.id(), CrlKind::Complete, &operator())
                    .await?;
                println!(
                    "published {}/crl/{} number {} ({} entries); OCSP answers for its serials at {}/ocsp",
                    config.public_http_url,
                    CrlKind::of(&g.record).file_name(&g.record.issuer_id),
                    g.record.number,
                    g.record.entries,
                    config.public_http_url
                );
            } else {
                println!("every certificate of this CA has expired: there is no CRL to publish");
            }
            println!(
                "restart `hallmark serve` (each instance, with ca/imported/ copied) to serve them"
            );
            Ok(())
        }
        Command::Crl {
            command: CrlCommand::Import { crl_file },
        } => {
            let bytes = read_input(&crl_file)?;
            let der = match std::str::from_utf8(&bytes) {
                Ok(text) if text.contains("-----BEGIN") => {
                    hallmark::pki::pem_decode_all(text, "X509 CRL")
                        .into_iter()
                        .next()
                        .with_context(|| {
                            format!("{} holds no PEM X509 CRL block", crl_file.display())
                        })?
                }
                _ => bytes,
            };
            let authority = hallmark::service::open_authority(&config).await?;
            let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
            crls.refresh().await?;
            let g = crls.import_root(&der, &operator()).await?;
            println!(
                "published {} number {}: {} entries, next update {}",
                CrlKind::of(&g.record).file_name(&g.record.issuer_id),
                g.record.number,
                g.record.entries,
                hallmark::workflow::rfc3339(g.record.next_update),
            );
            Ok(())
        }
        Command::Serve => serve(config).await,
        Command::Sign {
            csr_file,
            days,
            profile,
        } => sign(config, csr_file, days, profile).await,
        Command::Account {
            command: AccountCommand::Create { name, role, email },
        } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            let role = role.parse::<accounts::Role>()?;
            if let Some(e) = &email {
                // Checked before the account exists, so a typo makes none.
                if !hallmark::smtp::plausible_address(e) {
                    return Err(accounts::AccountError::BadEmail(e.clone()).into());
                }
            }
            let created =
                accounts::create_account(store.as_ref(), &name, role, &operator()).await?;
            if let Some(e) = &email {
                accounts::set_email(store.as_ref(), &created.account.id, Some(e), &operator())
                    .await?;
            }
            println!(
                "{}",
                serde_json::json!({
                    "id": created.account.id,
                    "name": created.account.name,
                    "role": created.account.role,
                    "key_id": created.key_id,
                    "api_key": created.api_key.as_str(),
                })
            );
            Ok(())
        }
        Command::Account {
            command:
                AccountCommand::SetEmail {
                    account_id,
                    email,
                    none: _,
                },
        } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            accounts::set_email(store.as_ref(), &account_id, email.as_deref(), &operator()).await?;
            match email {
                Some(e) => println!("{account_id}'s expiry notices go to {e}"),
                None => println!("{account_id} gets no expiry mail"),
            }
            Ok(())
        }
        Command::Account {
            command: AccountCommand::RevokeKey { key_id },
        } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            accounts::revoke_key(store.as_ref(), &key_id, &operator()).await?;
            println!("revoked API key {key_id}");
            Ok(())
        }
        Command::Account {
            command: AccountCommand::RotateKey { account_id },
        } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            let (key_id, api_key) =
                accounts::rotate_key(store.as_ref(), &account_id, &operator()).await?;
            println!(
                "{}",
                serde_json::json!({"id": account_id, "key_id": key_id, "api_key": api_key.as_str()})
            );
            Ok(())
        }
        Command::Account {
            command: AccountCommand::EabKey { account_id },
        } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            let key = accounts::create_eab_key(store.as_ref(), &account_id, &operator()).await?;
            println!(
                "{}",
                serde_json::json!({"account_id": account_id, "kid": key.kid, "hmac_key": key.hmac_key.as_str()})
            );
            Ok(())
        }
        Command::Request { .. } => unreachable!("handled above"),
        Command::User {
            command:
                UserCommand::Add {
                    name,
                    role,
                    password_stdin: _,
                    must_change,
                    account,
                },
        } => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .take(4096)
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\n', '\r']);
            // Before the first start (to avoid the printed one-time
            // password), the data directory may not exist yet.
            if config.database_url.starts_with("sqlite:") && !config.data_dir.exists() {
                hallmark::datadir::create_private_dir(&config.data_dir)?;
            }
            let store = hallmark::store::connect(&config.database_url).await?;
            users::add_user(
                store.as_ref(),
                &name,
                role.parse()?,
                password,
                must_change,
                &operator(),
            )
            .await?;
            if let Some(account) = account.as_deref() {
                users::link_user(store.as_ref(), &name, Some(account), &operator()).await?;
                println!("added {role} {name}, belonging to account {account}");
            } else {
                println!("added {role} {name}");
            }
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Link {
                    name,
                    account,
                    none: _,
                },
        } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            users::link_user(store.as_ref(), &name, account.as_deref(), &operator()).await?;
            match account {
                Some(a) => println!("{name} now belongs to account {a}"),
                None => println!("{name} now belongs to no account"),
            }
            Ok(())
        }
        Command::Revoke { serial, reason } => {
            let reason = reason.parse::<RevocationReason>()?;
            // As hallmark prints it, or as `openssl x509 -serial` does
            // (upper case, possibly with colons).
            let serial = serial
                .replace(':', "")
                .to_ascii_lowercase()
                .parse::<hallmark::pki::Serial>()
                .map_err(|_| {
                    anyhow::anyhow!("{serial:?} is not a serial: expected lower-case hex digits (32 for hallmark's own)")
                })?;
            let authority = hallmark::service::open_authority(&config).await?;
            let operator = operator();
            let cert = authority
                .revoke(
                    Revoker::Operator(&operator),
                    &serial,
                    RevokeRequest {
                        reason,
                        invalidity_date: None,
                    },
                )
                .await?;
            println!(
                "revoked {} ({}); running services list it in their next CRL within seconds",
                cert.serial, reason
            );
            // Running services publish it within their poll; publish now
            // too, so a CA without a running `serve` is current.
            let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
            crls.refresh().await?;
            for g in crls
                .generate_after_revocation(&cert.issuer_id, cert.crl_partition, &operator)
                .await?
            {
                println!(
                    "published {} number {}",
                    CrlKind::of(&g.record).file_name(&g.record.issuer_id),
                    g.record.number
                );
            }
            Ok(())
        }
        Command::Crl {
            command: CrlCommand::Generate { root },
        } => {
            let authority = hallmark::service::open_authority(&config).await?;
            let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
            crls.refresh().await?;
            let mut done = Vec::new();
            if root {
                need_root_key(&config)?;
                let passphrase = root_secret(&config, false)?;
                let root_issuer = datadir::load_root_issuer(
                    &Layout::new(&config.data_dir),
                    &config,
                    passphrase.as_bytes(),
                )?;
                done.push(
                    crls.generate_root(root_issuer.key().as_ref(), &operator())
                        .await?,
                );
            } else {
                done = crls.generate_every_by(&operator()).await?;
            }
            for g in done {
                let r = &g.record;
                println!(
                    "{} number {}: {} entries, next update {}, {} ms{}",
                    CrlKind::of(r).file_name(&r.issuer_id),
                    r.number,
                    r.entries,
                    hallmark::workflow::rfc3339(r.next_update),
                    g.elapsed.as_millis(),
                    if g.published {
                        ""
                    } else {
                        " (a fresher one was already published)"
                    }
                );
            }
            Ok(())
        }
        Command::Backup { dir } => {
            let config_file = cli
                .config
                .clone()
                .unwrap_or_else(|| cli.data_dir.join(hallmark::config::CONFIG_FILE_NAME));
            let manifest = hallmark::backup::backup(&config, &config_file, &dir).await?;
            println!(
                "backed up {} files ({} database) into {} at {}",
                manifest.files.len(),
                manifest.store,
                dir.display(),
                manifest.created_at
            );
            Ok(())
        }
        Command::Export { dir } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            let terminal = std::io::stderr().is_terminal();
            let done = hallmark::backup::export(store.as_ref(), &dir, |n| {
                if terminal {
                    eprint!("\rexported {n} certificates");
                }
            })
            .await?;
            if terminal {
                eprintln!();
            }
            println!(
                "exported {} certificates ({} revoked) into {}: certs/, index.txt, index.jsonl",
                done.certificates,
                done.revoked,
                dir.display()
            );
            Ok(())
        }
        Command::Status { json } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            let now = OffsetDateTime::now_utc().unix_timestamp();
            let status = hallmark::status::gather(&config, store.as_ref(), now).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.text());
            }
            if status.problems.is_empty() {
                Ok(())
            } else {
                bail!(
                    "{} problem{} (listed above)",
                    status.problems.len(),
                    if status.problems.len() == 1 { "" } else { "s" }
                )
            }
        }
        Command::Restore { .. }
        | Command::Completions { .. }
        | Command::Config { .. }
        | Command::Renew(_) => {
            unreachable!("handled above")
        }
        Command::Audit {
            command: AuditCommand::Verify,
        } => {
            let store = hallmark::store::connect(&config.database_url).await?;
            let summary = audit::verify(store.as_ref()).await?;
            println!(
                "audit log verified: {} records, head {}",
                summary.records, summary.head
            );
            Ok(())
        }
    }
}

/// `hallmark config check`: the file with the environment over it, as
/// `serve` would read it, and the CA's name constraints if there is one.
fn config_check(file: Option<&std::path::Path>, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let shown = file.map_or_else(
        || data_dir.join(hallmark::config::CONFIG_FILE_NAME),
        std::path::Path::to_path_buf,
    );
    if file.is_some_and(|f| !f.is_file()) {
        bail!("{} does not exist", shown.display());
    }
    let config = Config::load(file, data_dir, std::env::vars())?;
    let layout = Layout::new(data_dir);
    let constraints = match datadir::load_issuing_cert(&layout)? {
        Some(cert) => match cert.name_constraints() {
            Some(c) => {
                if let Some((setting, value)) = config.outside_constraints(c) {
                    bail!(
                        "{setting} includes {value}, which the issuing intermediate {} does not permit (it permits {}); hallmark serve would refuse to start",
                        cert.id(),
                        c.describe()
                    );
                }
                format!("within the name constraints of {}", cert.id())
            }
            None => format!("{} has no name constraints", cert.id()),
        },
        None => "no CA in this data directory yet".into(),
    };
    let profiles: Vec<&str> = config
        .policy
        .profiles
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    println!(
        "{}: valid; database {}; profiles {}; {constraints}",
        if shown.is_file() {
            shown.display().to_string()
        } else {
            format!(
                "{} (absent: defaults and HALLMARK_* variables)",
                shown.display()
            )
        },
        hallmark::store::redact_url(&config.database_url),
        profiles.join(", "),
    );
    Ok(())
}

/// The audit actor for a CLI command: the operator's login name.
fn operator() -> String {
    format!(
        "operator:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// `HALLMARK_ROOT_PASSPHRASE`, taken out of the process environment at
/// start (so no child process inherits it) and kept only here.
static ENV_PASSPHRASE: std::sync::OnceLock<Option<Zeroizing<String>>> = std::sync::OnceLock::new();

/// Moves `HALLMARK_ROOT_PASSPHRASE` out of the environment. Called first
/// thing in `main`, while the process has one thread.
fn take_env_passphrase() {
    let value = std::env::var("HALLMARK_ROOT_PASSPHRASE")
        .ok()
        .map(Zeroizing::new);
    std::env::remove_var("HALLMARK_ROOT_PASSPHRASE");
    let _ = ENV_PASSPHRASE.set(value);
}

/// What opens the root key: its passphrase, or nothing when the root key
/// is in the PKCS#11 token (the PIN opens it).
fn root_secret(config: &Config, confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if datadir::root_in_token(config) {
        // The token's PIN opens it; there is no passphrase.
        return Ok(Zeroizing::new(String::new()));
    }
    root_passphrase(confirm)
}

/// The root passphrase: the first line of the file named by
/// `HALLMARK_ROOT_PASSPHRASE_FILE` (a Docker or systemd secret), else
/// `HALLMARK_ROOT_PASSPHRASE`, else a prompt.
fn root_passphrase(confirm: bool) -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = std::env::var_os("HALLMARK_ROOT_PASSPHRASE_FILE") {
        let path = std::path::PathBuf::from(path);
        let text = Zeroizing::new(std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read the root passphrase from {} (HALLMARK_ROOT_PASSPHRASE_FILE)",
                path.display()
            )
        })?);
        let line = Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
        if line.is_empty() {
            bail!(
                "{} (HALLMARK_ROOT_PASSPHRASE_FILE) is empty; its first line must be the root passphrase",
                path.display()
            );
        }
        return Ok(line);
    }
    if let Some(Some(p)) = ENV_PASSPHRASE.get() {
        return Ok(p.clone());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "the root key passphrase is needed: set HALLMARK_ROOT_PASSPHRASE_FILE (or HALLMARK_ROOT_PASSPHRASE) or run in a terminal"
        );
    }
    let first = Zeroizing::new(rpassword::prompt_password("Root key passphrase: ")?);
    if confirm {
        let second = Zeroizing::new(rpassword::prompt_password("Repeat the passphrase: ")?);
        if first != second {
            bail!("the passphrases do not match");
        }
    }
    Ok(first)
}

/// Creates the CA; returns the root passphrase, for the first root CRL.
fn init(config: &Config, explicit: bool) -> anyhow::Result<Zeroizing<String>> {
    let layout = Layout::new(&config.data_dir);
    if layout.has_ca() && explicit {
        return Err(datadir::DataDirError::AlreadyInitialised(config.data_dir.clone()).into());
    }
    let passphrase = root_secret(config, true)?;
    let outcome = datadir::init_ca(config, passphrase.as_bytes(), OffsetDateTime::now_utc())?;
    println!("Created a CA in {}:", config.data_dir.display());
    println!(
        "  root          {} (until {})",
        outcome.root.subject(),
        outcome.root.not_after().date()
    );
    println!(
        "  issuing CA    {} (until {})",
        outcome.intermediate.subject(),
        outcome.intermediate.not_after().date()
    );
    print_root_key(config, &layout);
    println!("  root SHA-256  {}", outcome.root.fingerprint_sha256());
    if let (Some(module), Some(token)) = (&config.ca.pkcs11_module, &config.ca.pkcs11_token) {
        println!(
            "  issuing key   in the PKCS#11 token {token:?} ({}), label {:?}; it never leaves the token",
            module.display(),
            config.ca.pkcs11_key_label
        );
        let saved = Config::load(
            None,
            &config.data_dir,
            std::iter::empty::<(String, String)>(),
        )
        .map(|c| c.ca.pkcs11_module.is_some())
        .unwrap_or(false);
        if !saved {
            println!(
                "  add to [ca] in {} so serve finds it:",
                config
                    .data_dir
                    .join(hallmark::config::CONFIG_FILE_NAME)
                    .display()
            );
            println!("    pkcs11_module = {:?}", module.display().to_string());
            println!("    pkcs11_token = {token:?}");
            println!("    pkcs11_key_label = {:?}", config.ca.pkcs11_key_label);
            if let Some(pin) = &config.ca.pkcs11_pin_file {
                println!("    pkcs11_pin_file = {:?}", pin.display().to_string());
            }
        }
    } else {
        println!("  issuing key   {} (0600)", layout.issuing_key().display());
    }
    Ok(passphrase)
}

/// Publishes the root's first CRL (a year long, `crl.root_validity_days`)
/// and the issuing CA's, right after `init`, so the CRL the intermediate's
/// distribution point names exists from the start.
async fn publish_first_crls(config: &Config, passphrase: &str) -> anyhow::Result<()> {
    let authority = hallmark::service::open_authority(config).await?;
    let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
    crls.refresh().await?;
    let root_issuer = datadir::load_root_issuer(
        &Layout::new(&config.data_dir),
        config,
        passphrase.as_bytes(),
    )?;
    let mut done = vec![
        crls.generate_root(root_issuer.key().as_ref(), "system")
            .await?,
    ];
    done.extend(crls.generate_every_by("system").await?);
    for g in done {
        println!(
            "  published     {} (next update {})",
            CrlKind::of(&g.record).file_name(&g.record.issuer_id),
            hallmark::workflow::rfc3339(g.record.next_update)
        );
    }
    Ok(())
}

/// With the issuing key in a token and no `ca.pkcs11_pin_file`, asks for
/// the PIN at the terminal (never from the command line or environment).
fn ask_pkcs11_pin(config: &mut Config) -> anyhow::Result<()> {
    if config.ca.pkcs11_module.is_none() || config.ca.pkcs11_pin_file.is_some() {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("the PKCS#11 PIN is needed: set ca.pkcs11_pin_file (or --pkcs11-pin-file), or run in a terminal to be asked");
    }
    let pin = Zeroizing::new(rpassword::prompt_password("PKCS#11 user PIN: ")?);
    config.pkcs11_pin = Some(pin);
    Ok(())
}

/// Reads a file named on the command line (at most 1 MiB).
fn read_input(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(1 << 20)
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(bytes)
}

fn init_intermediate_csr(config: &Config) -> anyhow::Result<()> {
    let csr = datadir::init_intermediate_csr(config)?;
    println!(
        "Created the issuing key and its CSR in {}:",
        config.data_dir.display()
    );
    println!("  CSR           {}", csr.display());
    match config.intermediate_constraints() {
        Some(c) => println!(
            "  asks for      name constraints permitting {}",
            c.describe()
        ),
        None => println!("  asks for      no name constraints (ca.name_constraints = false)"),
    }
    println!("Next: on the root's machine, `hallmark root sign-intermediate issuing.csr.pem --out issuing.crt.pem`;");
    println!("then here, `hallmark ca install-intermediate issuing.crt.pem --root root.crt.pem`.");
    Ok(())
}

/// Where `init` put the root key.
fn print_root_key(config: &Config, layout: &Layout) {
    if datadir::root_in_token(config) {
        println!(
            "  root key      in the PKCS#11 token, label {:?}",
            config.ca.pkcs11_root_key_label.as_deref().unwrap_or("")
        );
    } else {
        println!(
            "  root key      {} (encrypted; keep the passphrase safe)",
            layout.root_key().display()
        );
    }
}

fn init_root_only(config: &Config) -> anyhow::Result<()> {
    if Layout::new(&config.data_dir).has_ca() {
        return Err(datadir::DataDirError::AlreadyInitialised(config.data_dir.clone()).into());
    }
    let passphrase = root_secret(config, true)?;
    let root = datadir::init_root_only(config, passphrase.as_bytes(), OffsetDateTime::now_utc())?;
    let layout = Layout::new(&config.data_dir);
    println!("Created a root in {}:", config.data_dir.display());
    println!(
        "  root          {} (until {})",
        root.subject(),
        root.not_after().date()
    );
    println!("  certificate   {}", layout.root_cert().display());
    print_root_key(config, &layout);
    println!("  root SHA-256  {}", root.fingerprint_sha256());
    println!(
        "Intermediates it signs point to {}/crl/root.crl and {}/ca/root.crt (server.public_http_url of the serving side).",
        config.public_http_url, config.public_http_url
    );
    Ok(())
}

/// Refuses, before asking for the passphrase, where the root key is not.
fn need_root_key(config: &Config) -> anyhow::Result<()> {
    let layout = Layout::new(&config.data_dir);
    if !layout.has_ca() {
        return Err(datadir::DataDirError::NotInitialised(config.data_dir.clone()).into());
    }
    if !layout.root_key().exists() && !datadir::root_in_token(config) {
        return Err(datadir::DataDirError::NoRootKey(config.data_dir.clone()).into());
    }
    Ok(())
}

fn root_command(config: &Config, command: RootCommand) -> anyhow::Result<()> {
    need_root_key(config)?;
    match command {
        RootCommand::SignIntermediate { csr_file, out } => {
            let csr = read_input(&csr_file)?;
            let passphrase = root_secret(config, false)?;
            let signed = datadir::sign_intermediate(
                config,
                passphrase.as_bytes(),
                &csr,
                OffsetDateTime::now_utc(),
            )?;
            let cert = &signed.certificate;
            eprintln!("Signed the issuing intermediate:");
            eprintln!("  subject       {}", cert.subject());
            eprintln!(
                "  serial        {}",
                hex::encode(datadir::certificate_serial(cert))
            );
            eprintln!(
                "  valid         {} to {}",
                cert.not_before().date(),
                cert.not_after().date()
            );
            match &signed.constraints {
                Some(c) => eprintln!(
                    "  permits       {} (from {})",
                    c.describe(),
                    signed.constraints_from
                ),
                None => eprintln!("  permits       any name (no name constraints)"),
            }
            eprintln!("  root CRL URL  {}/crl/root.crl", config.public_http_url);
            match out {
                Some(path) => {
                    datadir::write_new(&path, cert.pem().as_bytes(), 0o644)?;
                    eprintln!("wrote {}", path.display());
                }
                None => print!("{}", cert.pem()),
            }
            Ok(())
        }
        RootCommand::Crl {
            out,
            revoke,
            reason,
        } => {
            let reason = reason.parse::<RevocationReason>()?;
            let revoke = revoke
                .iter()
                .map(|s| {
                    let hex_digits: String = s.chars().filter(|c| *c != ':').collect();
                    hex::decode(&hex_digits)
                        .ok()
                        .filter(|b| !b.is_empty() && b.len() <= 20)
                        .map(|b| (b, reason))
                        .with_context(|| {
                            format!(
                                "--revoke {s:?} is not a serial number in hex (at most 20 bytes)"
                            )
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let passphrase = root_secret(config, false)?;
            let crl = datadir::sign_root_crl(
                config,
                passphrase.as_bytes(),
                &revoke,
                time::Duration::days(i64::from(config.crl.root_validity_days)),
                OffsetDateTime::now_utc(),
            )?;
            datadir::replace_file(&out, &crl.der, 0o644)?;
            println!(
                "wrote {}: root CRL number {}, {} revoked intermediates, next update {}",
                out.display(),
                crl.number,
                crl.entries,
                crl.next_update.date()
            );
            println!(
                "Publish it where hallmark serves: `hallmark crl import {}`.",
                out.display()
            );
            Ok(())
        }
    }
}

fn install_intermediate(
    config: &Config,
    cert_file: &std::path::Path,
    root: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let cert = read_input(cert_file)?;
    let root = root.map(read_input).transpose()?;
    let outcome =
        datadir::install_intermediate(config, &cert, root.as_deref(), OffsetDateTime::now_utc())?;
    println!("Installed the issuing CA in {}:", config.data_dir.display());
    println!(
        "  root          {} (until {})",
        outcome.root.subject(),
        outcome.root.not_after().date()
    );
    println!("  root SHA-256  {}", outcome.root.fingerprint_sha256());
    println!(
        "  issuing CA    {} (until {})",
        outcome.intermediate.subject(),
        outcome.intermediate.not_after().date()
    );
    match outcome.intermediate.name_constraints() {
        Some(c) => println!("  permits       {}", c.describe()),
        None => println!("  permits       any name (no name constraints)"),
    }
    println!("`hallmark serve` can start; it never needs the root key.");
    Ok(())
}

/// The passphrase of an imported CA's encrypted key: the first line of
/// `HALLMARK_IMPORT_KEY_PASSPHRASE_FILE`, else a prompt.
fn import_key_passphrase() -> anyhow::Result<Zeroizing<String>> {
    if let Some(path) = std::env::var_os("HALLMARK_IMPORT_KEY_PASSPHRASE_FILE") {
        let text = Zeroizing::new(
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", std::path::Path::new(&path).display()))?,
        );
        return Ok(Zeroizing::new(
            text.lines().next().unwrap_or_default().to_owned(),
        ));
    }
    Ok(Zeroizing::new(
        rpassword::prompt_password("Passphrase of the CA key to import: ")
            .context("reading the passphrase (or set HALLMARK_IMPORT_KEY_PASSPHRASE_FILE)")?,
    ))
}

/// `hallmark ca rotate`: the files first (the new intermediate in place,
/// the old one retired with its key), then the database learns both, the
/// audit log records it, and every CRL is published.
async fn rotate(config: &Config) -> anyhow::Result<()> {
    need_root_key(config)?;
    let passphrase = root_secret(config, false)?;
    let rotated =
        hallmark::issuers::rotate(config, passphrase.as_bytes(), OffsetDateTime::now_utc())?;
    let authority = hallmark::service::open_authority(config).await?;
    authority
        .store()
        .append_audit(hallmark::store::AuditEvent {
            at: OffsetDateTime::now_utc(),
            actor: operator(),
            action: "ca.rotate".into(),
            subject: rotated.new.id().to_owned(),
            details: serde_json::json!({
                "retired": rotated.old.id(),
                "subject": rotated.new.subject(),
                "not_after": rotated.new.not_after().unix_timestamp(),
                "sha256": rotated.new.fingerprint_sha256(),
            }),
        })
        .await?;
    let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
    crls.refresh().await?;
    let published = crls.generate_every_by(&operator()).await?;
    println!("Rotated the issuing CA in {}:", config.data_dir.display());
    println!(
        "  new issuing CA  {} ({}, until {})",
        rotated.new.subject(),
        rotated.new.id(),
        rotated.new.not_after().date()
    );
    println!("  SHA-256         {}", rotated.new.fingerprint_sha256());
    println!(
        "  retired         {} ({}): it issues no more; its CRLs and OCSP go on until its last certificate expires",
        rotated.old.subject(),
        rotated.old.id()
    );
    println!("  published {} CRLs", published.len());
    println!("Restart `hallmark serve` to issue from the new one (with several instances: copy ca/ to each and restart them one at a time).");
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    if !Layout::new(&config.data_dir).has_ca() {
        println!("No CA in {} yet; creating one.", config.data_dir.display());
        let passphrase = init(&config, false)?;
        publish_first_crls(&config, &passphrase).await?;
    }
    let https = tokio::net::TcpListener::bind(config.https_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.https_listen)",
                config.https_listen
            )
        })?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (server.http_listen)",
                config.http_listen
            )
        })?;
    // Both listeners full, plus the database pool, files and validators.
    let wanted = 2 * config.connections.max_connections as u64 + 256;
    match hallmark::http::server::raise_open_file_limit(wanted) {
        Ok(have) if have < wanted => tracing::warn!(
            have,
            wanted,
            "the open-file limit is below what server.max_connections needs; raise it (ulimit -n, LimitNOFILE=) or lower server.max_connections"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not read the open-file limit"),
    }
    if let Some(dir) = config
        .initial_password_file
        .as_deref()
        .and_then(std::path::Path::parent)
        .filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        anyhow::bail!(
            "server.initial_password_file: the directory {} does not exist",
            dir.display()
        );
    }
    let started = std::time::Instant::now();
    let mut service = Service::start(config.clone()).await?;
    tracing::info!(
        https = %config.https_listen,
        http = %config.http_listen,
        database = %hallmark::store::redact_url(&config.database_url),
        ready_in_ms = started.elapsed().as_millis() as u64,
        "hallmark is serving"
    );
    println!("hallmark is serving:");
    println!("  dashboard and API  {}/", config.public_https_url);
    println!(
        "  CA certificates    {}/ca/root.crt",
        config.public_http_url
    );
    if let Some(password) = service.take_initial_admin_password() {
        println!();
        println!("  Initial administrator: admin");
        match &config.initial_password_file {
            Some(path) => {
                write_secret_file(path, password.as_bytes()).with_context(|| {
                    format!(
                        "cannot write the initial password to {} (server.initial_password_file)",
                        path.display()
                    )
                })?;
                println!(
                    "  One-time password:     in {} (read it, then delete the file)",
                    path.display()
                );
            }
            None => println!("  One-time password:     {}", password.as_str()),
        }
        println!("  (you must change it at first sign-in)");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop.send(true);
    });
    service.run(https, http, stopped).await;
    Ok(())
}

/// Writes `content` to `path` through a new 0600 file beside it, renamed
/// into place (a stale file from an earlier database is replaced; a
/// symlink at `path` is replaced, not followed).
fn write_secret_file(path: &std::path::Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = file
        .write_all(content)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn sign(
    config: Config,
    csr_file: PathBuf,
    days: Option<u32>,
    profile: String,
) -> anyhow::Result<()> {
    // Read at most a little more than any CSR can be (PEM of the DER limit),
    // so a wrong file cannot exhaust memory.
    let limit = (hallmark::pki::csr::MAX_CSR_BYTES * 2) as u64;
    let mut csr = Vec::new();
    if csr_file.as_os_str() == "-" {
        std::io::stdin().take(limit + 1).read_to_end(&mut csr)?;
    } else {
        std::fs::File::open(&csr_file)
            .and_then(|f| f.take(limit + 1).read_to_end(&mut csr))
            .with_context(|| format!("cannot read {}", csr_file.display()))?;
    }
    if csr.len() as u64 > limit {
        bail!(
            "{} is larger than {limit} bytes; it is not a CSR",
            csr_file.display()
        );
    }
    let authority = hallmark::service::open_authority(&config).await?;

    let signed = authority
        .sign_csr(
            &csr,
            SignOptions {
                validity_days: days,
                profile: Some(profile),
                ..SignOptions::default()
            },
            &operator(),
        )
        .await?;
    eprintln!(
        "signed serial {} for {} (until {})",
        signed.certificate.serial,
        signed
            .certificate
            .identifiers
            .iter()
            .map(|i| i.value())
            .collect::<Vec<_>>()
            .join(", "),
        signed
            .certificate
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    print!("{}", signed.chain_pem());
    Ok(())
}
