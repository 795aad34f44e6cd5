//! dns-01 (RFC 8555 §8.4): a TXT record at `_acme-challenge.<name>` equal to
//! base64url(SHA-256(key authorization)), looked up through the configured
//! resolver (`validation.dns_resolver`, or the system's), which follows
//! CNAMEs. A wildcard's challenge lives at the base name.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::{Resolver, TokioResolver};
use sha2::{Digest, Sha256};

use super::ValidationError;

/// The TXT value that proves control: base64url(SHA-256(key authorization)).
pub fn txt_value(key_authorization: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(Sha256::digest(key_authorization.as_bytes()))
}

/// The name the TXT record goes at for `name` (`*.a.internal` → `_acme-challenge.a.internal`).
pub fn record_name(name: &str) -> String {
    format!(
        "_acme-challenge.{}",
        name.strip_prefix("*.").unwrap_or(name)
    )
}

/// A resolver for validation: `spec` is `host:port` of a nameserver, or
/// empty for the system's configuration. Answers are not cached, so a
/// record published after a failed attempt is seen at once.
pub fn resolver(spec: &str, timeout: Duration) -> Result<TokioResolver, String> {
    let mut builder = if spec.is_empty() {
        Resolver::builder_tokio()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
    } else {
        let addr: SocketAddr = spec.parse().map_err(|_| {
            format!("validation.dns_resolver must be host:port like 127.0.0.1:53, not {spec:?}")
        })?;
        let mut server = NameServerConfig::udp_and_tcp(addr.ip());
        for connection in &mut server.connections {
            connection.port = addr.port();
        }
        Resolver::builder_with_config(
            ResolverConfig::from_name_servers(vec![server]),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = timeout;
    options.attempts = 2;
    options.cache_size = 0;
    builder.build().map_err(|e| e.to_string())
}

/// Looks the TXT record up and compares it with the key authorization.
pub async fn validate(
    resolver: &TokioResolver,
    name: &str,
    key_authorization: &str,
) -> Result<(), ValidationError> {
    let record = record_name(name);
    let expected = txt_value(key_authorization);
    // Fully qualified, so no search domain is appended.
    let lookup = resolver
        .txt_lookup(format!("{record}."))
        .await
        .map_err(|e| {
            if e.is_nx_domain() {
                ValidationError::DnsNameNotFound {
                    name: record.clone(),
                }
            } else if e.is_no_records_found() {
                ValidationError::DnsNoTxtRecord {
                    name: record.clone(),
                }
            } else {
                ValidationError::Dns {
                    name: record.clone(),
                    reason: e.to_string(),
                }
            }
        })?;
    let found: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect();
    if found.iter().any(|value| value == &expected) {
        Ok(())
    } else if found.is_empty() {
        Err(ValidationError::DnsNoTxtRecord { name: record })
    } else {
        Err(ValidationError::DnsWrongValue {
            name: record,
            count: found.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txt_value_is_base64url_sha256() {
        // RFC 8555 §8.4: base64url without padding, 43 characters.
        let v = txt_value("token.thumbprint");
        assert_eq!(v.len(), 43);
        assert!(!v.contains('=') && !v.contains('+') && !v.contains('/'));
    }

    #[test]
    fn wildcards_use_the_base_name() {
        assert_eq!(record_name("*.a.internal"), "_acme-challenge.a.internal");
        assert_eq!(record_name("a.internal"), "_acme-challenge.a.internal");
    }
}
