//! http-01 (RFC 8555 §8.3): GET
//! `http://<name>:<http_port>/.well-known/acme-challenge/<token>`; the body
//! must be the key authorization (trailing whitespace ignored). At most 10
//! redirects, only to http or https on ports 80 and 443 of the same host
//! (certificates of HTTPS redirect targets are not checked, as public CAs
//! do); the body is read up to 8 KiB and never repeated in an error; the
//! whole fetch is bounded by the configured timeout. Names resolve through
//! a resolver that drops every address the network policy refuses, and the
//! connection is made only to what it returns; a fresh connection (no
//! pool) for every validation, so each one resolves anew.

use std::net::IpAddr;
use std::sync::Arc;

use super::network::NetworkPolicy;
use super::{ValidationConfig, ValidationError, WrongContentKind, MAX_BODY_BYTES, MAX_REDIRECTS};
use crate::pki::Identifier;

/// Every address a name resolved to was refused by the network policy
/// (carried through reqwest's error chain).
#[derive(Debug)]
struct AddressRefused {
    name: String,
    address: IpAddr,
    reason: String,
}

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.name, self.address, self.reason)
    }
}

impl std::error::Error for AddressRefused {}

/// A redirect refused by the policy (carried through reqwest's error chain).
#[derive(Debug)]
enum RedirectRefused {
    Forbidden(String),
    TooMany,
}

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedirectRefused::Forbidden(to) => write!(f, "redirect to {to} refused"),
            RedirectRefused::TooMany => f.write_str("too many redirects"),
        }
    }
}

impl std::error::Error for RedirectRefused {}

/// The URL http-01 fetches for `identifier` and `token`.
pub fn challenge_url(identifier: &Identifier, port: u16, token: &str) -> String {
    let host = match identifier {
        Identifier::Dns(name) => name.clone(),
        Identifier::Ip(IpAddr::V4(v4)) => v4.to_string(),
        Identifier::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
    };
    format!("http://{host}:{port}/.well-known/acme-challenge/{token}")
}

/// Resolves names for http-01 through the validation resolver
/// (`validation.dns_resolver`), not the host's, so validation sees the
/// same DNS as dns-01 does; and returns only the addresses the network
/// policy allows on any port the fetch may use (the challenge port, and
/// 80 and 443 for redirects), so the address checked is the address
/// connected to.
struct ValidationDns {
    resolver: hickory_resolver::TokioResolver,
    network: Arc<NetworkPolicy>,
    ports: [u16; 3],
}

impl reqwest::dns::Resolve for ValidationDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.resolver.clone();
        let network = self.network.clone();
        let ports = self.ports;
        let name = name.as_str().trim_end_matches('.').to_owned();
        Box::pin(async move {
            let ips = resolver.lookup_ip(format!("{name}.")).await?;
            let mut refused = None;
            let mut addrs = Vec::new();
            for ip in ips.iter() {
                match network.check(ip, &ports) {
                    Ok(()) => addrs.push(std::net::SocketAddr::new(ip, 0)),
                    Err(why) => {
                        refused.get_or_insert((ip, why));
                    }
                }
            }
            if let (true, Some((address, why))) = (addrs.is_empty(), refused) {
                return Err(Box::new(AddressRefused {
                    name,
                    address,
                    reason: why.to_string(),
                })
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client validators use: names resolved by `resolver`, no proxy,
/// the redirect policy above, no certificate checks on HTTPS redirect
/// targets.
pub fn client(
    config: &ValidationConfig,
    resolver: hickory_resolver::TokioResolver,
) -> reqwest::Result<reqwest::Client> {
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(RedirectRefused::TooMany);
        }
        let allowed = match attempt.previous().first() {
            Some(first) => redirect_allowed(first, attempt.url()),
            None => false,
        };
        if allowed {
            attempt.follow()
        } else {
            let to = attempt.url().to_string();
            attempt.error(RedirectRefused::Forbidden(to))
        }
    });
    reqwest::Client::builder()
        .dns_resolver(Arc::new(ValidationDns {
            resolver,
            network: config.network.clone(),
            ports: [config.http_port, 80, 443],
        }))
        .redirect(policy)
        .pool_max_idle_per_host(0)
        .no_proxy()
        .danger_accept_invalid_certs(true)
        .timeout(config.timeout)
        .connect_timeout(config.timeout)
        .user_agent(concat!("hallmark-validator/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether a redirect from the challenge URL `first` to `to` is followed:
/// http or https, on port 80 or 443, and the same host as the identifier
/// (so a requester cannot point the CA at another host through a
/// redirect).
fn redirect_allowed(first: &reqwest::Url, to: &reqwest::Url) -> bool {
    matches!(to.scheme(), "http" | "https")
        && matches!(to.port_or_known_default(), Some(80) | Some(443))
        && to.host_str().is_some()
        && to.host_str() == first.host_str()
}

/// Fetches the challenge and compares it with `key_authorization`.
pub async fn validate(
    client: &reqwest::Client,
    config: &ValidationConfig,
    identifier: &Identifier,
    token: &str,
    key_authorization: &str,
) -> Result<(), ValidationError> {
    let url = challenge_url(identifier, config.http_port, token);
    if let Identifier::Ip(ip) = identifier {
        // An IP literal is connected to without a lookup, redirects
        // included (they stay on the same host).
        config
            .network
            .check(*ip, &[config.http_port, 80, 443])
            .map_err(|why| ValidationError::RefusedAddress {
                address: identifier.to_string(),
                reason: why.to_string(),
            })?;
    }
    match tokio::time::timeout(config.timeout, fetch(client, &url)).await {
        Ok(Ok(body)) => {
            let text = String::from_utf8_lossy(&body);
            if text.trim_end() == key_authorization {
                Ok(())
            } else {
                let kind = if body.is_empty() {
                    WrongContentKind::Empty
                } else if text.starts_with(&format!("{token}.")) {
                    WrongContentKind::OtherAccountKey
                } else {
                    WrongContentKind::Other
                };
                Err(ValidationError::WrongContent {
                    url,
                    length: body.len(),
                    kind,
                })
            }
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ValidationError::Timeout {
            url,
            seconds: config.timeout.as_secs(),
        }),
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, ValidationError> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| request_error(url, e))?;
    let final_url = response.url().to_string();
    if response.status() != reqwest::StatusCode::OK {
        return Err(ValidationError::BadStatus {
            url: final_url,
            status: response.status().as_u16(),
        });
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| request_error(url, e))? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ValidationError::BodyTooLarge { url: final_url });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn request_error(url: &str, e: reqwest::Error) -> ValidationError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(err) = source {
        if let Some(refused) = err.downcast_ref::<AddressRefused>() {
            return ValidationError::RefusedAddress {
                address: format!("{} ({})", refused.name, refused.address),
                reason: refused.reason.clone(),
            };
        }
        if let Some(refused) = err.downcast_ref::<RedirectRefused>() {
            return match refused {
                RedirectRefused::Forbidden(to) => {
                    ValidationError::ForbiddenRedirect { to: to.clone() }
                }
                RedirectRefused::TooMany => ValidationError::TooManyRedirects,
            };
        }
        source = err.source();
    }
    if e.is_timeout() {
        return ValidationError::Timeout {
            url: url.to_owned(),
            seconds: 0,
        };
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(err) = source {
        reason = err.to_string();
        source = err.source();
    }
    ValidationError::Connection {
        url: url.to_owned(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_stay_on_the_identifier() {
        let first: reqwest::Url = "http://web.internal:80/.well-known/acme-challenge/t"
            .parse()
            .unwrap();
        for (to, ok) in [
            ("https://web.internal/.well-known/acme-challenge/t", true),
            ("http://web.internal:443/x", true),
            ("http://other.internal/.well-known/acme-challenge/t", false),
            ("http://169.254.169.254/latest/meta-data/", false),
            ("http://127.0.0.1/", false),
            ("http://web.internal:8080/x", false),
            ("ftp://web.internal/x", false),
        ] {
            assert_eq!(redirect_allowed(&first, &to.parse().unwrap()), ok, "{to}");
        }
    }

    #[test]
    fn challenge_urls_bracket_ipv6() {
        let v6 = Identifier::Ip("::1".parse().unwrap());
        assert_eq!(
            challenge_url(&v6, 80, "t"),
            "http://[::1]:80/.well-known/acme-challenge/t"
        );
        let dns = Identifier::Dns("a.internal".into());
        assert_eq!(
            challenge_url(&dns, 5002, "t"),
            "http://a.internal:5002/.well-known/acme-challenge/t"
        );
    }
}
