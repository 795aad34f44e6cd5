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

/// The account label of dns-account-01 (draft-ietf-acme-dns-account-label):
/// `_` and the first 10 bytes of SHA-256(account URL) in lower-case base32.
pub fn account_label(account_url: &str) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let digest = Sha256::digest(account_url.as_bytes());
    let mut bits: u32 = 0;
    let mut have = 0;
    let mut out = String::from("_");
    for byte in &digest[..10] {
        bits = (bits << 8) | u32::from(*byte);
        have += 8;
        while have >= 5 {
            have -= 5;
            out.push(ALPHABET[((bits >> have) & 31) as usize] as char);
        }
    }
    out
}

/// The name dns-account-01's TXT record goes at for `name` and the account
/// (`*.a.internal` → `_<label>._acme-challenge.a.internal`).
pub fn account_record_name(name: &str, account_url: &str) -> String {
    format!("{}.{}", account_label(account_url), record_name(name))
}

/// Where dns-persist-01's standing record lives for `name` (a wildcard's
/// at its base name).
pub fn persist_record_name(name: &str) -> String {
    format!(
        "_validation-persist.{}",
        name.strip_prefix("*.").unwrap_or(name)
    )
}

/// The dns-persist-01 record value that authorises `account_url` through
/// `issuer` (`; policy=wildcard` for wildcards and names below).
pub fn persist_value(issuer: &str, account_url: &str, wildcard: bool) -> String {
    let mut v = format!("{issuer}; accounturi={account_url}");
    if wildcard {
        v.push_str("; policy=wildcard");
    }
    v
}

/// Whether one dns-persist-01 TXT value authorises this CA (one of
/// `issuers`) for `account_url` at `now` (Unix seconds); `Err` says why
/// not. Syntax as CAA's issue value (RFC 8659 §4.2): the issuer domain,
/// then `;`-separated `key=value` parameters; `accounturi` is required,
/// `policy=wildcard` is needed for a wildcard, an expired `persistUntil`
/// (Unix seconds) ends the authorisation, unknown parameters are ignored.
pub fn persist_matches(
    value: &str,
    issuers: &[String],
    account_url: &str,
    wildcard: bool,
    now: i64,
) -> Result<(), String> {
    let mut parts = value.split(';');
    let issuer = parts.next().unwrap_or("").trim().trim_end_matches('.');
    if !issuers.iter().any(|i| i.eq_ignore_ascii_case(issuer)) {
        return Err(format!("it names {issuer:?}, not this CA"));
    }
    let (mut account, mut policy_wildcard, mut until) = (None, false, None);
    for p in parts.map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = p.split_once('=') else {
            return Err(format!("it has a malformed parameter {p:?}"));
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "accounturi" => account = Some(v.trim()),
            "policy" => policy_wildcard = v.trim().eq_ignore_ascii_case("wildcard"),
            "persistuntil" => {
                until =
                    Some(v.trim().parse::<i64>().map_err(|_| {
                        format!("its persistUntil {:?} is not Unix seconds", v.trim())
                    })?)
            }
            _ => {}
        }
    }
    match account {
        None => return Err("it has no accounturi".into()),
        Some(a) if a != account_url => return Err(format!("it names the account {a}")),
        Some(_) => {}
    }
    if wildcard && !policy_wildcard {
        return Err("a wildcard needs policy=wildcard".into());
    }
    if let Some(t) = until.filter(|t| *t < now) {
        return Err(format!("its persistUntil {t} has passed"));
    }
    Ok(())
}

/// dns-persist-01: a TXT record at `_validation-persist.<name>` that
/// authorises this CA for the account.
pub async fn validate_persist(
    resolver: &TokioResolver,
    name: &str,
    issuers: &[String],
    account_url: &str,
) -> Result<(), ValidationError> {
    let record = persist_record_name(name);
    let found = txt_records(resolver, &record).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let wildcard = name.starts_with("*.");
    let mut reasons = Vec::new();
    for value in &found {
        match persist_matches(value, issuers, account_url, wildcard, now) {
            Ok(()) => return Ok(()),
            Err(why) => reasons.push(why),
        }
    }
    if found.is_empty() {
        return Err(ValidationError::DnsNoTxtRecord { name: record });
    }
    Err(ValidationError::DnsPersist {
        name: record,
        reason: reasons.join("; "),
    })
}

/// The TXT values at `record` (each record's strings joined), looked up
/// fully qualified so no search domain is appended.
async fn txt_records(
    resolver: &TokioResolver,
    record: &str,
) -> Result<Vec<String>, ValidationError> {
    let lookup = resolver
        .txt_lookup(format!("{record}."))
        .await
        .map_err(|e| {
            if e.is_nx_domain() {
                ValidationError::DnsNameNotFound {
                    name: record.to_owned(),
                }
            } else if e.is_no_records_found() {
                ValidationError::DnsNoTxtRecord {
                    name: record.to_owned(),
                }
            } else {
                ValidationError::Dns {
                    name: record.to_owned(),
                    reason: e.to_string(),
                }
            }
        })?;
    Ok(lookup
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
        .collect())
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
    validate_at(resolver, record_name(name), key_authorization).await
}

/// dns-account-01: the same TXT value at the account-labelled name.
pub async fn validate_account(
    resolver: &TokioResolver,
    name: &str,
    account_url: &str,
    key_authorization: &str,
) -> Result<(), ValidationError> {
    validate_at(
        resolver,
        account_record_name(name, account_url),
        key_authorization,
    )
    .await
}

async fn validate_at(
    resolver: &TokioResolver,
    record: String,
    key_authorization: &str,
) -> Result<(), ValidationError> {
    let expected = txt_value(key_authorization);
    let found = txt_records(resolver, &record).await?;
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
    fn account_labels_are_the_drafts_base32_of_the_account_url() {
        // The same construction as Boulder's: 10 bytes of SHA-256 in
        // lower-case base32 (16 characters), after an underscore.
        let label = account_label("https://example.com/acme/acct/ExampleAccount");
        assert_eq!(label.len(), 17);
        assert!(label.starts_with('_'));
        assert!(label[1..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b)));
        // Checked against an independent base32 (Python's base64.b32encode).
        assert_eq!(account_label("abc"), "_xj4bnp4pahh6uqkb");
        assert_eq!(
            account_record_name("*.a.internal", "abc"),
            "_xj4bnp4pahh6uqkb._acme-challenge.a.internal"
        );
    }

    #[test]
    fn persist_records_name_this_ca_and_the_account() {
        let ca = ["ca.internal".to_string()];
        let acct = "https://ca.internal/acme/account/a1";
        let ok = |v: &str, wild: bool| persist_matches(v, &ca, acct, wild, 1_000);
        assert!(ok(&persist_value("ca.internal", acct, false), false).is_ok());
        assert!(ok(&persist_value("ca.internal", acct, true), true).is_ok());
        assert!(ok(&persist_value("ca.internal", acct, false), true)
            .unwrap_err()
            .contains("policy=wildcard"));
        assert!(ok("other.example; accounturi=x", false).is_err());
        assert!(ok("ca.internal", false)
            .unwrap_err()
            .contains("no accounturi"));
        assert!(ok(
            "ca.internal; accounturi=https://ca.internal/acme/account/a2",
            false
        )
        .is_err());
        let until = |t: i64| format!("ca.internal; accounturi={acct}; persistUntil={t}");
        assert!(ok(&until(2_000), false).is_ok());
        assert!(ok(&until(500), false).unwrap_err().contains("has passed"));
        assert_eq!(
            persist_record_name("*.a.internal"),
            "_validation-persist.a.internal"
        );
    }

    #[test]
    fn wildcards_use_the_base_name() {
        assert_eq!(record_name("*.a.internal"), "_acme-challenge.a.internal");
        assert_eq!(record_name("a.internal"), "_acme-challenge.a.internal");
    }
}
