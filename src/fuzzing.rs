//! Entry points for the `cargo fuzz` targets in `fuzz/` (not an API):
//! each feeds arbitrary bytes to a parser that sees untrusted input, with
//! the checks that follow it before any database access. A target passes
//! when nothing panics, nothing hangs and no allocation exceeds the
//! stated limits (docs/SECURITY.md).

/// CSR intake: PEM or DER, then the self-signature and the key checks.
pub fn csr(data: &[u8]) {
    if let Ok(unverified) = crate::pki::csr::UnverifiedCsr::parse(data) {
        let _ = unverified.verify();
    }
}

/// The ACME JWS parser and verifier: the flattened JSON, the protected
/// header, the key (from `jwk`), the signature, the payload as JSON; and
/// an external account binding read from the payload.
pub fn jws(data: &[u8]) {
    use crate::http::acme::jws::{thumbprint, ExternalBinding, Jws};
    let Ok(jws) = Jws::parse(data) else {
        return;
    };
    if let Some(jwk) = &jws.protected.jwk {
        let _ = thumbprint(jwk);
        let _ = jws.verify(jwk);
    }
    if let Ok(payload) = jws.json() {
        if let Some(eab) = payload.get("externalAccountBinding") {
            if let Ok(binding) = ExternalBinding::parse(eab) {
                let _ = binding.verify(b"0123456789abcdef0123456789abcdef");
            }
        }
    }
}

/// The OCSP request parser (RFC 6960 §4.1).
pub fn ocsp_request(data: &[u8]) {
    let _ = crate::pki::ocsp::OcspRequest::parse(data);
}

/// The DER reader, walked to the bottom of every constructed element.
pub fn der(data: &[u8]) {
    fn walk(data: &[u8], depth: usize) {
        let mut reader = crate::pki::der::Reader::new(data);
        while !reader.is_empty() {
            match reader.read() {
                // Constructed (bit 6 of the tag): read its content too.
                Ok(e) if e.tag & 0x20 != 0 && depth < 32 => walk(e.content, depth + 1),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
    walk(data, 0);
}

/// The REST JSON bodies (orders, approval, rejection, revocation).
pub fn rest_bodies(data: &[u8]) {
    crate::http::api::fuzz_bodies(data);
}
