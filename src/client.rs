//! `hallmark request`: the requester's side of a DV order in one command.
//! It makes a key and CSR, opens the order, answers http-01 with its own
//! little web server (or prints the dns-01 records to create and waits),
//! polls until the order is done, and writes the key and certificates.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};

use crate::datadir::replace_file;
use crate::pki::{pem_decode_all, pem_encode, KeyType, PrivateKey};

/// What `hallmark request` was asked for: its command-line options.
#[derive(Debug, Clone, clap::Args)]
pub struct RequestOptions {
    /// The hallmark HTTPS URL, e.g. https://ca.internal:8443
    #[arg(long, env = "HALLMARK_SERVER")]
    pub server: String,
    /// The account's API key
    #[arg(long, env = "HALLMARK_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// A name or IP address to certify (repeat for more; the first is the CN)
    #[arg(long = "domain", required = true)]
    pub domains: Vec<String>,
    /// Prove control by DNS TXT records you create (prints them and waits for Enter)
    #[arg(long)]
    pub dns: bool,
    /// The CA root to trust (download it from <public_http_url>/ca/root.pem)
    #[arg(long, env = "HALLMARK_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Directory to write the key and certificates into
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Where to answer http-01 (the CA fetches http://<name>:<validation.http_port>/…)
    #[arg(long, default_value = "0.0.0.0:80")]
    pub http_listen: SocketAddr,
    /// Key type of the new key: p256, p384, rsa2048, rsa3072 or rsa4096
    #[arg(long, default_value = "p256", value_parser = key_type)]
    pub key_type: KeyType,
    /// Validity in days [default: the CA's policy.default_validity_days]
    #[arg(long)]
    pub days: Option<u32>,
    /// Seconds to wait for validation and issuance
    #[arg(long = "timeout", default_value = "300", value_parser = seconds)]
    pub timeout: Duration,
    /// A shell command to run after the files are written (e.g. `systemctl
    /// reload nginx`); it gets HALLMARK_CERT_DIR, HALLMARK_DOMAINS and
    /// HALLMARK_SERIAL. `hallmark renew` runs it again after each renewal
    #[arg(long, value_name = "CMD")]
    pub deploy_hook: Option<String>,
}

/// `hallmark renew`: renews a certificate `hallmark request` wrote, when
/// the CA's renewal information says it is due.
#[derive(Debug, Clone, clap::Args)]
pub struct RenewOptions {
    /// The directory `hallmark request --out` wrote (cert.pem, key.pem,
    /// renewal.json)
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// The account's API key
    #[arg(long, env = "HALLMARK_API_KEY", hide_env_values = true)]
    pub api_key: String,
    /// Renew now, whatever the renewal window says
    #[arg(long)]
    pub force: bool,
    /// Make a new key instead of keeping key.pem
    #[arg(long)]
    pub rotate_key: bool,
    /// Override the deploy hook recorded by `hallmark request`
    #[arg(long, value_name = "CMD")]
    pub deploy_hook: Option<String>,
    /// Where to answer http-01 [default: as recorded]
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// Seconds to wait for validation and issuance
    #[arg(long = "timeout", default_value = "300", value_parser = seconds)]
    pub timeout: Duration,
}

/// What `hallmark request` records beside the files, so `hallmark renew`
/// can do it again (no secret: the API key comes from the environment).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RenewalRecord {
    /// The hallmark HTTPS URL.
    pub server: String,
    /// The names, in order.
    pub domains: Vec<String>,
    /// The key type (for a rotated key).
    pub key_type: String,
    /// Validity asked for, if any.
    pub days: Option<u32>,
    /// The root to trust (absolute path), if one was given.
    pub ca_file: Option<PathBuf>,
    /// dns-01 (asks for records) rather than http-01.
    pub dns: bool,
    /// Where http-01 was answered.
    pub http_listen: SocketAddr,
    /// The deploy hook, if any.
    pub deploy_hook: Option<String>,
}

/// The file [`RenewalRecord`] is kept in, beside cert.pem.
pub const RENEWAL_FILE: &str = "renewal.json";

/// What `hallmark renew` did.
#[derive(Debug)]
pub enum Renewal {
    /// Not due: the window the CA suggests (RFC 3339).
    NotDue {
        /// Start of the suggested window.
        start: String,
        /// End of it.
        end: String,
    },
    /// Renewed: the files written.
    Renewed(Vec<PathBuf>),
}

fn key_type(text: &str) -> Result<KeyType, String> {
    text.parse()
        .map_err(|e: crate::pki::key::KeyError| e.to_string())
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse()
        .map(Duration::from_secs)
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))
}

/// Runs the whole request; returns the paths written.
pub async fn request(
    options: &RequestOptions,
    wait_for_dns: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    let key_pem = PrivateKey::generate(options.key_type)?.to_pkcs8_pem()?;
    obtain(options, key_pem, wait_for_dns).await
}

/// Renews the certificate in `options.out` if the CA's renewal information
/// (the ACME ARI window) says it is due, or `force`; keeps the key unless
/// `rotate_key`.
pub async fn renew(
    options: &RenewOptions,
    wait_for_dns: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Renewal> {
    let record_path = options.out.join(RENEWAL_FILE);
    let record: RenewalRecord = serde_json::from_str(&read(&record_path)?).with_context(|| {
        format!(
            "{} is not what `hallmark request` writes",
            record_path.display()
        )
    })?;
    let request = RequestOptions {
        server: record.server.clone(),
        api_key: options.api_key.clone(),
        domains: record.domains.clone(),
        dns: record.dns,
        ca_file: record.ca_file.clone(),
        out: options.out.clone(),
        http_listen: options.http_listen.unwrap_or(record.http_listen),
        key_type: record
            .key_type
            .parse()
            .map_err(|e: crate::pki::key::KeyError| anyhow!("{}: {e}", record_path.display()))?,
        days: record.days,
        timeout: options.timeout,
        deploy_hook: options.deploy_hook.clone().or(record.deploy_hook),
    };
    if !options.force {
        let cert = read(&options.out.join("cert.pem"))?;
        let api = Api::new(&request)?;
        let info = api
            .get(&format!(
                "{}/acme/renewal-info/{}",
                request.server.trim_end_matches('/'),
                renewal_id(&cert)?
            ))
            .await?;
        let window = &info["suggestedWindow"];
        let (start, end) = (string(window, "start")?, string(window, "end")?);
        let due =
            time::OffsetDateTime::parse(&start, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("the renewal window's start {start:?}"))?;
        if time::OffsetDateTime::now_utc() < due {
            return Ok(Renewal::NotDue { start, end });
        }
    }
    let key_pem = if options.rotate_key {
        PrivateKey::generate(request.key_type)?.to_pkcs8_pem()?
    } else {
        zeroize::Zeroizing::new(read(&options.out.join("key.pem"))?)
    };
    Ok(Renewal::Renewed(
        obtain(&request, key_pem, wait_for_dns).await?,
    ))
}

/// The ARI certificate id (RFC 9773): base64url of the authority key
/// identifier, ".", base64url of the serial's DER content.
pub fn renewal_id(cert_pem: &str) -> anyhow::Result<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use x509_parser::prelude::*;
    let der = pem_decode_all(cert_pem, "CERTIFICATE")
        .into_iter()
        .next()
        .context("cert.pem holds no certificate")?;
    let (_, cert) = X509Certificate::from_der(&der).context("cert.pem does not parse")?;
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        })
        .context("cert.pem has no authority key identifier")?;
    Ok(format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(aki.0),
        URL_SAFE_NO_PAD.encode(cert.raw_serial())
    ))
}

/// Orders a certificate for `key_pem`, writes the files atomically, records
/// how to renew, and runs the deploy hook.
async fn obtain(
    options: &RequestOptions,
    key_pem: zeroize::Zeroizing<String>,
    mut wait_for_dns: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    if options.domains.is_empty() {
        bail!("name at least one --domain");
    }
    let api = Api::new(options)?;
    let csr_pem = make_csr(&key_pem, &options.domains)?;

    let mut body = json!({"csr": csr_pem, "validation": "dv"});
    if let Some(days) = options.days {
        body["validity_days"] = json!(days);
    }
    let order = api.post("/api/v1/orders", &body).await?;
    let order_url = string(&order, "url")?;
    eprintln!(
        "order {} is {}",
        string(&order, "id")?,
        string(&order, "status")?
    );

    // The http-01 server must answer until validation is over: it lives
    // until the order has settled, not just until the challenges are posted.
    let mut http01_server = None;
    if order["status"] == "pending" {
        let challenges = pick_challenges(&order, options.dns)?;
        if options.dns {
            println!("Create these DNS TXT records, then press Enter:");
            for c in &challenges {
                println!(
                    "  {}. 60 IN TXT \"{}\"",
                    string(c, "dns_name")?,
                    string(c, "dns_txt")?
                );
            }
            wait_for_dns()?;
        } else {
            let answers: HashMap<String, String> = challenges
                .iter()
                .map(|c| Ok((string(c, "token")?, string(c, "http_body")?)))
                .collect::<anyhow::Result<_>>()?;
            http01_server = Some(servehttp01_server(options.http_listen, answers).await?);
        }
        for c in &challenges {
            api.post_url(&string(c, "url")?, &json!({})).await?;
        }
    }

    let order = api.wait(&order_url, options.timeout).await?;
    drop(http01_server);
    match order["status"].as_str() {
        Some("valid") => {}
        Some("invalid") => bail!(
            "the order failed: {}",
            order["error"]["detail"]
                .as_str()
                .unwrap_or("no reason was given")
        ),
        Some(other) => bail!("the order is {other}; see {order_url}"),
        None => bail!("the server answered an order without a status"),
    }
    let chain = api.chain(&string(&order, "certificate")?).await?;
    let certs = pem_decode_all(&chain, "CERTIFICATE");
    let Some((leaf, rest)) = certs.split_first() else {
        bail!("the server sent no certificate");
    };
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let issuers: String = rest.iter().map(|c| pem_encode("CERTIFICATE", c)).collect();
    let files = [
        ("key.pem", key_pem.as_bytes().to_vec(), 0o600),
        (
            "cert.pem",
            pem_encode("CERTIFICATE", leaf).into_bytes(),
            0o644,
        ),
        ("chain.pem", issuers.into_bytes(), 0o644),
        ("fullchain.pem", chain.into_bytes(), 0o644),
    ];
    let mut written = Vec::new();
    for (name, bytes, mode) in files {
        let path = options.out.join(name);
        replace_file(&path, &bytes, mode)?;
        written.push(path);
    }
    let record = RenewalRecord {
        server: options.server.clone(),
        domains: options.domains.clone(),
        key_type: options.key_type.as_str().to_owned(),
        days: options.days,
        ca_file: options
            .ca_file
            .as_ref()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        dns: options.dns,
        http_listen: options.http_listen,
        deploy_hook: options.deploy_hook.clone(),
    };
    let path = options.out.join(RENEWAL_FILE);
    replace_file(&path, &serde_json::to_vec_pretty(&record)?, 0o644)?;
    written.push(path);
    if let Some(hook) = &options.deploy_hook {
        run_deploy_hook(hook, &options.out, &options.domains, &leaf_serial(leaf))?;
    }
    Ok(written)
}

fn leaf_serial(der: &[u8]) -> String {
    use x509_parser::prelude::*;
    X509Certificate::from_der(der)
        .map(|(_, c)| hex::encode(c.raw_serial()))
        .unwrap_or_default()
}

/// Runs the deploy hook with `sh -c`, after the files are in place; a
/// failing hook is an error (the files stay: they are valid).
fn run_deploy_hook(hook: &str, dir: &Path, domains: &[String], serial: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("sh")
        .args(["-c", hook])
        .env("HALLMARK_CERT_DIR", dir)
        .env("HALLMARK_DOMAINS", domains.join(" "))
        .env("HALLMARK_SERIAL", serial)
        .status()
        .with_context(|| format!("running the deploy hook {hook:?}"))?;
    if !status.success() {
        bail!(
            "the certificate was written to {}, but the deploy hook {hook:?} failed ({status})",
            dir.display()
        );
    }
    Ok(())
}

/// A CSR for `names` signed by the PKCS#8 key; the first name is the CN.
fn make_csr(key_pem: &str, names: &[String]) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::from_pem(key_pem).context("loading the new key for the CSR")?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| anyhow!("{e}: every --domain must be a DNS name or an IP address"))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, names[0].as_str());
    params.distinguished_name = dn;
    Ok(params.serialize_request(&key)?.pem()?)
}

/// One challenge per pending authorization: http-01, or dns-01 with `dns`.
fn pick_challenges(order: &Value, dns: bool) -> anyhow::Result<Vec<Value>> {
    let kind = if dns { "dns-01" } else { "http-01" };
    let mut picked = Vec::new();
    for authz in order["authorizations"].as_array().into_iter().flatten() {
        if authz["status"] != "pending" {
            continue;
        }
        let name = authz["identifier"]["value"].as_str().unwrap_or("?");
        let challenge = authz["challenges"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == kind)
            .ok_or_else(|| {
                if dns {
                    anyhow!("{name} cannot be validated by dns-01 (IP addresses need http-01): leave out --dns")
                } else {
                    anyhow!("{name} cannot be validated by http-01 (wildcards need dns-01): use --dns")
                }
            })?;
        picked.push(challenge.clone());
    }
    Ok(picked)
}

/// Serves `/.well-known/acme-challenge/<token>` until dropped.
async fn servehttp01_server(
    listen: SocketAddr,
    answers: HashMap<String, String>,
) -> anyhow::Result<ServerGuard> {
    use axum::extract::{Path as UrlPath, State};
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("listening on {listen} for http-01 (port 80 needs root or CAP_NET_BIND_SERVICE; --http-listen picks another address)")
    })?;
    let answers = Arc::new(Mutex::new(answers));
    let app = axum::Router::new()
        .route(
            "/.well-known/acme-challenge/{token}",
            axum::routing::get(
                |State(answers): State<Arc<Mutex<HashMap<String, String>>>>,
                 UrlPath(token): UrlPath<String>| async move {
                    let found = answers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&token)
                        .cloned();
                    found.ok_or(axum::http::StatusCode::NOT_FOUND)
                },
            ),
        )
        .with_state(answers);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(ServerGuard(task))
}

/// Stops the http-01 server when dropped.
struct ServerGuard(tokio::task::JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn string(v: &Value, field: &str) -> anyhow::Result<String> {
    v[field]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("the server's answer has no \"{field}\""))
}

/// The REST API as the client sees it.
struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(options: &RequestOptions) -> anyhow::Result<Api> {
        let base = options.server.trim_end_matches('/').to_owned();
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_built_in_root_certs(false);
        match &options.ca_file {
            Some(path) => {
                for der in pem_decode_all(&read(path)?, "CERTIFICATE") {
                    builder = builder.add_root_certificate(reqwest::Certificate::from_der(&der)?);
                }
            }
            None if base.starts_with("https://") => bail!(
                "--ca-file is needed: download the root from the CA's /ca/root.pem and check its fingerprint"
            ),
            None => {}
        }
        Ok(Api {
            http: builder.build()?,
            base,
            key: options.api_key.clone(),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.post_url(&format!("{}{path}", self.base), body).await
    }

    async fn post_url(&self, url: &str, body: &Value) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        answer(response).await
    }

    async fn get(&self, url: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        answer(response).await
    }

    /// Polls the order until it is no longer in progress.
    async fn wait(&self, url: &str, timeout: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        loop {
            let order = self.get(url).await?;
            let busy = matches!(
                order["status"].as_str(),
                Some("pending" | "ready" | "processing")
            );
            if !busy || start.elapsed() > timeout {
                return Ok(order);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn chain(&self, url: &str) -> anyhow::Result<String> {
        let response = self
            .http
            .get(url)
            .bearer_auth(&self.key)
            .header("accept", "application/pem-certificate-chain")
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        if !response.status().is_success() {
            answer(response).await?;
            bail!("downloading the certificate failed");
        }
        Ok(response.text().await?)
    }
}

/// The JSON body of a success, or the problem's detail as the error.
async fn answer(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    if status.is_success() {
        return Ok(body);
    }
    match body["detail"].as_str() {
        Some(detail) => bail!("the CA refused ({status}): {detail}"),
        None => bail!("the CA answered {status}: {}", text.trim()),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}
