//! Signing with the issuing key in a PKCS#11 token (SoftHSM2) beside the
//! same key type in a file, one and two threads, P-256 and RSA-2048: what
//! `ca.pkcs11_*` costs per signature.
//!
//! `cargo bench --bench pkcs11 [-- --signatures N]` (needs `softhsm2`).

use std::sync::Arc;
use std::time::Instant;

use hallmark::pkcs11::{TokenKey, TokenSettings};
use hallmark::pki::{KeySigner, KeyType, PrivateKey};
use zeroize::Zeroizing;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

fn rate(key: &Arc<dyn KeySigner>, threads: usize, signatures: usize) -> f64 {
    let message = vec![0x5a_u8; 600]; // about a to-be-signed certificate
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let key = key.clone();
            let message = message.clone();
            s.spawn(move || {
                for _ in 0..signatures / threads {
                    key.sign(&message).expect("signs");
                }
            });
        }
    });
    signatures as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let mut signatures = 4000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--signatures" {
            signatures = args.next().and_then(|v| v.parse().ok()).expect("a number");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir_all(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!("directories.tokendir = {}\n", tokens.display()),
    )
    .unwrap();
    // SoftHSM2 reads its configuration when the module initialises, which
    // happens below, after this single-threaded start.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let init = std::process::Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .output()
        .expect("softhsm2-util is installed (apt-get install softhsm2)");
    assert!(init.status.success(), "{init:?}");

    println!("| key | where | 1 thread | 2 threads |");
    println!("|---|---|---:|---:|");
    for (name, key_type) in [("P-256", KeyType::P256), ("RSA-2048", KeyType::Rsa2048)] {
        let settings = TokenSettings {
            module: MODULE.into(),
            token: "bench".into(),
            pin: Zeroizing::new("1234".into()),
            key_label: format!("bench-{name}"),
        };
        let (token, _) = TokenKey::open_or_generate(&settings, Some(key_type)).unwrap();
        let token = token.into_signer();
        let file = PrivateKey::generate(key_type).unwrap().into_signer();
        let n = if key_type == KeyType::P256 {
            signatures
        } else {
            signatures / 4
        };
        for (place, key) in [("SoftHSM2 token", &token), ("file (ring)", &file)] {
            rate(key, 1, n / 10); // warm up
            println!(
                "| {name} | {place} | {:.0}/s | {:.0}/s |",
                rate(key, 1, n),
                rate(key, 2, n)
            );
        }
    }
}
