//! Revocation at scale (DESIGN §6): CRL generation time and peak memory for
//! 10k, 100k and 1M revoked certificates on one issuer (entries streamed
//! from the database into the encoder), then CRL GETs and OCSP answers per
//! second from the real service over loopback, measured with `wrk` beside
//! nginx serving the same CRL file.
//!
//! Run: `cargo bench --bench revocation` (options after `--`:
//! `--sizes 10000,100000,1000000 --backends sqlite,postgres --no-http`).
//! Partitioned: `-- --partitioned 10000000 --partitions 64` (with
//! `--complete-with-partitions` the issuer CRL lists every revocation).
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
    /// `--partitioned N --partitions P`: N revoked over P partitioned CRLs.
    partitioned: Option<u64>,
    partitions: u32,
    /// `crl.complete_with_partitions` for the partitioned case.
    complete_with_partitions: bool,
    /// Run one partitioned case (backend, N, P) in this process.
    partition_case: Option<(String, u64, u32)>,
}

fn args() -> Args {
    let mut a = Args {
        sizes: vec![10_000, 100_000, 1_000_000],
        backends: vec!["sqlite".into(), "postgres".into()],
        http: true,
        case: None,
        partitioned: None,
        partitions: 64,
        complete_with_partitions: false,
        partition_case: None,
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
            "--partitioned" => a.partitioned = Some(common::value(&mut it, "--partitioned")),
            "--partitions" => a.partitions = common::value(&mut it, "--partitions"),
            "--complete-with-partitions" => a.complete_with_partitions = true,
            "--partition-case" => {
                let backend = common::value(&mut it, "--partition-case");
                let n = common::value(&mut it, "--partition-case");
                let p = common::value(&mut it, "--partition-case");
                a.partition_case = Some((backend, n, p));
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
async fn fill(url: &str, backend: &str, issuer: &str, n: u64, partitions: u64) {
    use sqlx::Connection;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    // Partition k of 1..=partitions, or 0 without partitions.
    let partition = if partitions > 0 {
        format!("1 + n % {partitions}")
    } else {
        "0".into()
    };
    let sql = match backend {
        "sqlite" => format!(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {n}) \
             INSERT INTO certificates (serial, issuer_id, subject, identifiers, profile, \
             requested_by, not_before, not_after, der, created_at, revoked_at, revocation_reason, \
             crl_partition) \
             SELECT printf('41%030x', n), '{issuer}', 'CN=x.internal', '[\"x.internal\"]', \
             'server', 'bench', {now}, {now} + 7776000, x'3000', {now}, {now} - (n % 86400), \
             n % 6, {partition} FROM s"
        ),
        _ => format!(
            "INSERT INTO certificates (serial, issuer_id, subject, identifiers, profile, \
             requested_by, not_before, not_after, der, created_at, revoked_at, revocation_reason, \
             crl_partition) \
             SELECT '41' || lpad(to_hex(n), 30, '0'), '{issuer}', 'CN=x.internal', \
             '[\"x.internal\"]', 'server', 'bench', {now}, {now} + 7776000, '\\x3000'::bytea, \
             {now}, {now} - (n % 86400), n % 6, {partition} FROM generate_series(1, {n}) AS n"
        ),
    };
    if backend == "sqlite" {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(&sql).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(&sql).execute(&mut c).await.unwrap();
        // What autovacuum does to a table soon after a bulk insert: sets
        // the visibility map, without which an index-only scan visits the
        // table row by row (0.9 s instead of 0.15 s for 156k of 10 M).
        sqlx::query("VACUUM (ANALYZE) certificates")
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
    if let Some((backend, n, p)) = &args.partition_case {
        runtime.block_on(partition_case(
            backend,
            *n,
            *p,
            args.complete_with_partitions,
        ));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    if let Some(n) = args.partitioned {
        println!("| store | revoked entries | partitions | issuer CRL lists | fill s | partition CRL s: min / median / max | peak RSS of the process (MiB) | RSS before (MiB) | a revocation to its partition's CRL s |");
        println!("|---|---:|---:|---|---:|---|---:|---:|---:|");
        for backend in &args.backends {
            let mut cmd = Command::new(&exe);
            cmd.args([
                "--partition-case",
                backend,
                &n.to_string(),
                &args.partitions.to_string(),
            ]);
            if args.complete_with_partitions {
                cmd.arg("--complete-with-partitions");
            }
            let out = cmd.output().unwrap();
            print!("{}", String::from_utf8_lossy(&out.stdout));
            if !out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        return;
    }
    println!("| store | revoked entries | CRL bytes | generation s | peak RSS of the process (MiB) | RSS before generating (MiB) |");
    println!("|---|---:|---:|---:|---:|---:|");
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
    fill(&url, backend, &issuer, n, 0).await;
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

/// `n` revoked certificates spread over `partitions` partitioned CRLs:
/// every partition generated once, then each again, timed; then one more
/// revocation and the publisher poll that a revocation through the
/// service triggers at once, timed until it returns with the
/// revocation's partition republished.
async fn partition_case(backend: &str, n: u64, partitions: u32, complete_with_partitions: bool) {
    use hallmark::store::{AuditEvent, Revocation};
    let dir = tempfile::tempdir().unwrap();
    let Some((url, pg)) = common::database_url(backend, dir.path(), "crlp").await else {
        eprintln!("{backend}: not reachable, skipped");
        return;
    };
    let (config, authority) = common::made_ca_with(
        dir.path(),
        &url,
        &[
            ("HALLMARK_CRL__PARTITIONS", partitions.to_string()),
            ("HALLMARK_CRL__DEBOUNCE_SECS", "0".into()),
            (
                "HALLMARK_CRL__COMPLETE_WITH_PARTITIONS",
                complete_with_partitions.to_string(),
            ),
        ],
    )
    .await;
    let issuer = authority.issuer().certificate().id().to_owned();
    let started = Instant::now();
    fill(&url, backend, &issuer, n, u64::from(partitions)).await;
    let fill_secs = started.elapsed().as_secs_f64();
    let crls = CrlPublisher::new(authority.clone(), config.crl.clone());
    for p in 1..=partitions {
        drop(crls.generate(CrlKind::Partition(p)).await.unwrap());
    }
    let before = rss_mib();
    reset_peak();
    let mut times = Vec::new();
    let mut entries = 0;
    for p in 1..=partitions {
        let started = Instant::now();
        let g = crls.generate(CrlKind::Partition(p)).await.unwrap();
        times.push(started.elapsed().as_secs_f64());
        entries += g.record.entries as u64;
    }
    let peak = peak_rss_mib();
    assert_eq!(entries, n);
    times.sort_by(f64::total_cmp);

    // One more certificate in partition 1, revoked through the store.
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let serial = "42000000000000000000000000000001";
    let insert = format!(
        "INSERT INTO certificates (serial, issuer_id, subject, identifiers, profile, \
         requested_by, not_before, not_after, der, created_at, crl_partition) VALUES \
         ('{serial}', '{issuer}', 'CN=x.internal', '[\"x.internal\"]', 'server', 'bench', \
         {now}, {now} + 7776000, {}, {now}, 1)",
        if backend == "sqlite" {
            "x'3000'"
        } else {
            "'\\x3000'::bytea"
        }
    );
    sql(&url, backend, &insert).await;
    let file = CrlKind::Partition(1).file_name(&issuer);
    let listed = crls.served(&file).unwrap().entries;
    let revocation = Revocation {
        serial: serial.parse().unwrap(),
        at: now,
        reason: 1,
        invalidity_date: None,
        blocked_key: None,
    };
    let event = AuditEvent {
        at: time::OffsetDateTime::now_utc(),
        actor: "bench".into(),
        action: "certificate.revoke".into(),
        subject: serial.into(),
        details: serde_json::json!({}),
    };
    let started = Instant::now();
    authority
        .store()
        .revoke_certificate(&revocation, event)
        .await
        .unwrap();
    crls.poll_once().await.unwrap();
    let reach = started.elapsed().as_secs_f64();
    assert_eq!(crls.served(&file).unwrap().entries, listed + 1);
    println!(
        "| {backend} | {n} | {partitions} | {} | {fill_secs:.0} | {:.2} / {:.2} / {:.2} | {peak:.0} | {before:.0} | {reach:.2} |",
        if complete_with_partitions {
            "every revocation"
        } else {
            "unpartitioned only"
        },
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
    );
    drop(crls);
    drop(authority);
    common::drop_database(pg).await;
}

/// Runs one statement on its own connection.
async fn sql(url: &str, backend: &str, statement: &str) {
    use sqlx::Connection;
    if backend == "sqlite" {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query(statement).execute(&mut c).await.unwrap();
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query(statement).execute(&mut c).await.unwrap();
    }
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
