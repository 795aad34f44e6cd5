//! Revocation at scale (DESIGN §6): CRL generation time and peak memory for
//! 10k, 100k and 1M revoked certificates on one issuer (entries streamed
//! from the database into the encoder), then CRL GETs and OCSP answers per
//! second from the real service over loopback, measured with `wrk` beside
//! nginx serving the same CRL file.
//!
//! Run: `cargo bench --bench revocation` (options after `--`:
//! `--sizes 10000,100000,1000000 --backends sqlite,postgres --no-http`).
//! The HTTP part needs `wrk` and `nginx` (Debian: `apt-get install wrk
//! nginx-light`) and is skipped without them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use hallmark::config::Config;
use hallmark::service::Service;
use hallmark::workflow::crl::{CrlKind, CrlPublisher};

struct Args {
    sizes: Vec<u64>,
    backends: Vec<String>,
    http: bool,
    /// Run one generation case in this process (each case runs in a fresh
    /// process, so its peak memory is its own).
    case: Option<(String, u64)>,
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![10_000, 100_000, 1_000_000],
        backends: vec!["sqlite".into(), "postgres".into()],
        http: true,
        case: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--sizes" => a.sizes = common::list(&mut it, "--sizes"),
            "--backends" => a.backends = common::list(&mut it, "--backends"),
            "--no-http" => a.http = false,
            "--case" => {
                let backend = common::value(&mut it, "--case");
                let n = common::value(&mut it, "--case");
                a.case = Some((backend, n));
            }
            _ => {}
        }
    }
    a
}

/// Peak resident memory of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Current resident memory (VmRSS), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Inserts `n` revoked certificates of `issuer` in the database itself
/// (the rows, not the signing, are what CRL generation reads).
async fn fill(url: &str, backend: &str, issuer: &str, n: u64) {
    use sqlx::Connection;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let sql = match backend {
        "sqlite" => format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n}) \
             INSERT INTO certificates (serial, issuer_id, subject, identifiers, profile, \
             requested_by, not_before, not_after, der, created_at, revoked_at, revocation_reason) \
             SELECT printf('41%030x', n), '{issuer}', 'CN=x.internal', '[\"x.internal\"]', \
             'server', 'bench', {now}, {now} + 7776000, x'3000', {now}, {now} - (n % 86400), \
             n % 6 FROM s"
        ),
        _ => format!(
            "INSERT INTO certificates (serial, issuer_id, subject, identifiers, profile, \
             requested_by, not_before, not_after, der, created_at, revoked_at, revocation_reason) \
             SELECT '41' || lpad(to_hex(n), 30, '0'), '{issuer}', 'CN=x.internal', \
             '[\"x.internal\"]', 'server', 'bench', {now}, {now} + 7776000, '\\x3000'::bytea, \
             {now}, {now} - (n % 86400), n % 6 FROM generate_series(1, {n}) AS n"
        ),
    };
    if backend == "sqlite" {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(&sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(&sql).execute(&mut c).await.unwrap();
        sqlx::query("ANALYZE certificates")
            .execute(&mut c)
            .await
            .unwrap();
    }
}

fn wrk(url: &str, script: Option<&str>) -> Option<f64> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c64", "-d10s", "--latency"]);
    if let Some(s) = script {
        cmd.args(["-s", s]);
    }
    let out = cmd.arg(url).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let non2xx = text.lines().any(|l| l.contains("Non-2xx"));
    if non2xx {
        eprintln!("wrk saw errors for {url}:\n{text}");
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

fn nginx_rate(root: &std::path::Path, file: &str) -> Option<f64> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = root.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2; daemon off; pid {pid}; error_log {root}/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; sendfile on; keepalive_requests 100000;\n\
             types {{ application/pkix-crl crl; }}\n\
             server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
            pid = root.join("nginx.pid").display(),
            root = root.display(),
        ),
    )
    .ok()?;
    let mut child = Command::new("nginx")
        .args(["-c", conf.to_str()?, "-p", root.to_str()?])
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(500));
    let rate = wrk(&format!("http://127.0.0.1:{port}/{file}"), None);
    // SIGQUIT lets the master stop its workers (SIGKILL would orphan them).
    let _ = Command::new("kill")
        .args(["-QUIT", &child.id().to_string()])
        .status();
    let _ = child.wait();
    rate
}

fn main() {
    let args = args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some((backend, n)) = &args.case {
        runtime.block_on(generation_case(backend, *n, false));
        return;
    }
    println!("| store | revoked entries | CRL bytes | generation s | peak RSS of the process (MiB) | RSS before generating (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|");
    let exe = std::env::current_exe().unwrap();
    for backend in &args.backends {
        for n in &args.sizes {
            let out = Command::new(&exe)
                .args(["--case", backend, &n.to_string()])
                .output()
                .unwrap();
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
    let have_http_tools = Command::new("wrk").arg("--version").output().is_ok()
        && Command::new("nginx").arg("-v").output().is_ok();
    if args.http && have_http_tools {
        runtime.block_on(generation_case("sqlite", 10_000, true));
    } else if args.http {
        eprintln!("wrk or nginx is not installed: the HTTP figures were skipped");
    }
}

/// Fills a fresh database with `n` revoked certificates, generates the
/// complete CRL once to warm the caches, then measures one generation;
/// with `http`, serves it and measures the HTTP rates.
async fn generation_case(backend: &str, n: u64, http: bool) {
    let dir = tempfile::tempdir().unwrap();
    let Some((url, pg)) = common::database_url(backend, dir.path(), "crl").await else {
        eprintln!("{backend}: not reachable, skipped");
        return;
    };
    let (config, authority) = common::made_ca(dir.path(), &url).await;
    let issuer = authority.issuer().certificate().id().to_owned();
    fill(&url, backend, &issuer, n).await;
    let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
    if http {
        drop(crls);
        http_figures(&config, &issuer, dir.path()).await;
    } else {
        // Warm the database cache once, as a running service would be.
        drop(crls.generate(CrlKind::Complete).await.unwrap());
        let before = rss_mib();
        reset_peak();
        let started = Instant::now();
        let g = crls.generate(CrlKind::Complete).await.unwrap();
        let secs = started.elapsed().as_secs_f64();
        let peak = peak_rss_mib();
        assert_eq!(g.record.entries as u64, n);
        println!(
            "| {backend} | {n} | {} | {secs:.2} | {peak:.0} | {before:.0} |",
            g.der.len()
        );
    }
    drop(authority);
    common::drop_database(pg).await;
}

/// CRL GETs (hallmark and nginx, same file) and OCSP answers per second.
async fn http_figures(config: &Config, issuer: &str, dir: &std::path::Path) {
    let https = tokio::net::TcpListener::bind(config.https_listen)
        .await
        .unwrap();
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .unwrap();
    let service = Service::start(config.clone()).await.unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = tokio::spawn(service.run(https, http, stopped));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = config.public_http_url.clone();
    let crl_url = format!("{base}/crl/{issuer}.crl");
    let crl = reqwest::get(&crl_url).await.unwrap().bytes().await.unwrap();
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join(format!("{issuer}.crl")), &crl).unwrap();

    // An OCSP request for one of the revoked serials, without and with a
    // nonce, through openssl.
    let data = dir.join("data");
    std::fs::write(
        dir.join("issuing.pem"),
        std::fs::read_to_string(data.join("ca/issuing.crt.pem")).unwrap(),
    )
    .unwrap();
    let ocsp_req = |nonce: bool, out: &str| {
        let mut args = vec![
            "ocsp",
            "-issuer",
            "issuing.pem",
            "-serial",
            "0x41000000000000000000000000000001",
            "-reqout",
            out,
        ];
        if !nonce {
            args.push("-no_nonce");
        }
        assert!(Command::new("openssl")
            .args(&args)
            .current_dir(dir)
            .status()
            .unwrap()
            .success());
    };
    ocsp_req(false, "req.der");
    ocsp_req(true, "req-nonce.der");
    let script = |req: &str, name: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "local f = io.open(\"{}\", \"rb\")\nwrk.method = \"POST\"\nwrk.body = f:read(\"*all\")\nf:close()\nwrk.headers[\"Content-Type\"] = \"application/ocsp-request\"\n",
                dir.join(req).display()
            ),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let plain = script("req.der", "ocsp.lua");
    let nonce = script("req-nonce.der", "ocsp-nonce.lua");
    let ocsp_url = format!("{base}/ocsp");
    let figures = tokio::task::spawn_blocking(move || {
        let hallmark_crl = wrk(&crl_url, None);
        let nginx_crl = nginx_rate(&www, crl_url.rsplit('/').next().unwrap());
        let ocsp = wrk(&ocsp_url, Some(&plain));
        let ocsp_nonce = wrk(&ocsp_url, Some(&nonce));
        (hallmark_crl, nginx_crl, ocsp, ocsp_nonce)
    })
    .await
    .unwrap();
    println!();
    println!(
        "CRL of {} bytes over loopback, wrk -t2 -c64 -d10s:",
        crl.len()
    );
    println!();
    println!("| server | requests/s |");
    println!("|---|---:|");
    println!(
        "| hallmark GET /crl/{issuer}.crl | {:.0} |",
        figures.0.unwrap_or(0.0)
    );
    println!(
        "| nginx (same file, 2 workers, sendfile) | {:.0} |",
        figures.1.unwrap_or(0.0)
    );
    println!(
        "| hallmark POST /ocsp, no nonce (cached answers) | {:.0} |",
        figures.2.unwrap_or(0.0)
    );
    println!(
        "| hallmark POST /ocsp, with nonce (signed per request) | {:.0} |",
        figures.3.unwrap_or(0.0)
    );
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), handle).await;
}
