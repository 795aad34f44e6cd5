//! A small SMTP client (RFC 5321) for hallmark's notices: STARTTLS (RFC
//! 3207) or implicit TLS (RFC 8314), AUTH PLAIN (RFC 4954), one plain-text
//! message per connection. Every step has a timeout; TLS is verified
//! against the system's roots and this CA's root; credentials are never
//! sent over an unencrypted connection except to a loopback server.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// How long connecting, and each command's answer, may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest reply line read from the server.
const MAX_LINE: usize = 4096;

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587); refused if the
    /// server does not offer it.
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No TLS: only for a relay on the same host or network segment.
    None,
}

impl SmtpTls {
    /// From the `smtp.tls` setting.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "starttls" => Some(SmtpTls::StartTls),
            "tls" => Some(SmtpTls::Tls),
            "none" => Some(SmtpTls::None),
            _ => None,
        }
    }
}

/// Where and how to send mail (`[smtp]`).
#[derive(Clone)]
pub struct SmtpSettings {
    /// The server's host name (also the TLS server name).
    pub host: String,
    /// Its port.
    pub port: u16,
    /// Connection protection.
    pub tls: SmtpTls,
    /// The envelope and header sender.
    pub from: String,
    /// AUTH PLAIN user name, if the server wants one.
    pub username: Option<String>,
    /// Its password.
    pub password: Option<zeroize::Zeroizing<String>>,
    /// Addresses that get every notice too (the PKI team).
    pub also_to: Vec<String>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from)
            .field("username", &self.username)
            .field("also_to", &self.also_to)
            .finish_non_exhaustive()
    }
}

/// One message.
#[derive(Debug, Clone)]
pub struct Mail {
    /// Recipients.
    pub to: Vec<String>,
    /// The subject (ASCII).
    pub subject: String,
    /// Plain text.
    pub body: String,
    /// A unique Message-ID, without the angle brackets.
    pub message_id: String,
}

/// Why a message was not sent.
#[derive(Debug, thiserror::Error)]
pub enum SmtpError {
    /// Connecting or the connection failed.
    #[error("{0}")]
    Io(String),
    /// The server answered something other than what was needed.
    #[error("the server answered {code} to {step}: {text}")]
    Refused {
        /// What was asked.
        step: &'static str,
        /// Its reply code.
        code: u16,
        /// Its reply text.
        text: String,
    },
    /// The server lacks what the settings require.
    #[error("{0}")]
    Unsupported(String),
}

fn io(e: impl std::fmt::Display) -> SmtpError {
    SmtpError::Io(e.to_string())
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Conn {
    stream: BufStream<Box<dyn Io>>,
}

impl Conn {
    /// Reads one reply (every line of a multi-line one): its code and
    /// lines of text.
    async fn reply(&mut self) -> Result<(u16, Vec<String>), SmtpError> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(STEP_TIMEOUT, async {
                let mut limited = (&mut self.stream).take(MAX_LINE as u64);
                limited.read_line(&mut line).await
            })
            .await
            .map_err(|_| SmtpError::Io("the server did not answer within 30 s".into()))?
            .map_err(io)?;
            if read == 0 {
                return Err(SmtpError::Io("the server closed the connection".into()));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code: u16 = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| SmtpError::Io(format!("not an SMTP reply: {line:?}")))?;
            lines.push(line.get(4..).unwrap_or_default().to_owned());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok((code, lines));
            }
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), SmtpError> {
        self.stream.write_all(line.as_bytes()).await.map_err(io)?;
        self.stream.write_all(b"\r\n").await.map_err(io)?;
        self.stream.flush().await.map_err(io)
    }

    /// Sends a command and expects a reply code in `ok`.
    async fn command(
        &mut self,
        step: &'static str,
        line: &str,
        ok: &[u16],
    ) -> Result<Vec<String>, SmtpError> {
        self.send(line).await?;
        self.expect(step, ok).await
    }

    async fn expect(&mut self, step: &'static str, ok: &[u16]) -> Result<Vec<String>, SmtpError> {
        let (code, text) = self.reply().await?;
        if ok.contains(&code) {
            Ok(text)
        } else {
            Err(SmtpError::Refused {
                step,
                code,
                text: text.join(" "),
            })
        }
    }
}

/// A TLS client configuration trusting the system's roots and `extra`
/// (this CA's root, DER).
pub fn tls_config(extra: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let _ = roots.add(rustls::pki_types::CertificateDer::from(extra.to_vec()));
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

async fn wrap_tls(
    plain: Box<dyn Io>,
    host: &str,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<Box<dyn Io>, SmtpError> {
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|_| SmtpError::Io(format!("{host:?} is not a TLS server name")))?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    let stream = tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, plain))
        .await
        .map_err(|_| SmtpError::Io("the TLS handshake took over 30 s".into()))?
        .map_err(|e| SmtpError::Io(format!("TLS with {host}: {e}")))?;
    Ok(Box::new(stream))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The message as sent: headers and body, CRLF line endings, lines
/// starting with a dot doubled (RFC 5321 §4.5.2).
pub fn render(settings: &SmtpSettings, mail: &Mail, date: time::OffsetDateTime) -> String {
    const RFC5322: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] +0000"
    );
    let ascii = mail.body.is_ascii();
    let mut out = String::new();
    for (name, value) in [
        ("From", format!("hallmark <{}>", settings.from)),
        ("To", mail.to.join(", ")),
        ("Subject", mail.subject.replace(['\r', '\n'], " ")),
        ("Date", date.format(RFC5322).unwrap_or_default()),
        ("Message-ID", format!("<{}>", mail.message_id)),
        ("MIME-Version", "1.0".into()),
        ("Content-Type", "text/plain; charset=utf-8".into()),
        (
            "Content-Transfer-Encoding",
            if ascii { "7bit" } else { "8bit" }.into(),
        ),
        ("Auto-Submitted", "auto-generated".into()),
    ] {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    for line in mail.body.lines() {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out
}

/// Sends `mail` through the server `settings` names.
pub async fn send(
    settings: &SmtpSettings,
    tls: &Arc<rustls::ClientConfig>,
    helo: &str,
    mail: &Mail,
) -> Result<(), SmtpError> {
    if mail.to.is_empty() {
        return Err(SmtpError::Unsupported(
            "the message has no recipient".into(),
        ));
    }
    let tcp = tokio::time::timeout(
        STEP_TIMEOUT,
        TcpStream::connect((settings.host.as_str(), settings.port)),
    )
    .await
    .map_err(|_| {
        SmtpError::Io(format!(
            "connecting to {}:{} took over 30 s",
            settings.host, settings.port
        ))
    })?
    .map_err(|e| {
        SmtpError::Io(format!(
            "connecting to {}:{}: {e}",
            settings.host, settings.port
        ))
    })?;
    let mut stream: Box<dyn Io> = Box::new(tcp);
    let mut encrypted = false;
    if settings.tls == SmtpTls::Tls {
        stream = wrap_tls(stream, &settings.host, tls).await?;
        encrypted = true;
    }
    let mut conn = Conn {
        stream: BufStream::new(stream),
    };
    conn.expect("the greeting", &[220]).await?;
    let mut extensions = conn
        .command("EHLO", &format!("EHLO {helo}"), &[250])
        .await?;
    if settings.tls == SmtpTls::StartTls {
        if !extensions
            .iter()
            .any(|e| e.eq_ignore_ascii_case("STARTTLS"))
        {
            return Err(SmtpError::Unsupported(format!(
                "{} does not offer STARTTLS; set smtp.tls = \"tls\" for port 465, or \"none\" for a local relay",
                settings.host
            )));
        }
        conn.command("STARTTLS", "STARTTLS", &[220]).await?;
        let plain = conn.stream.into_inner();
        conn = Conn {
            stream: BufStream::new(wrap_tls(plain, &settings.host, tls).await?),
        };
        encrypted = true;
        extensions = conn
            .command("EHLO", &format!("EHLO {helo}"), &[250])
            .await?;
    }
    if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
        if !encrypted && !is_loopback(&settings.host) {
            return Err(SmtpError::Unsupported(
                "refusing to send the SMTP password over an unencrypted connection".into(),
            ));
        }
        let offers_plain = extensions.iter().any(|e| {
            let mut words = e.split_whitespace();
            words.next().is_some_and(|w| w.eq_ignore_ascii_case("AUTH"))
                && words.any(|w| w.eq_ignore_ascii_case("PLAIN"))
        });
        if !offers_plain {
            return Err(SmtpError::Unsupported(format!(
                "{} does not offer AUTH PLAIN",
                settings.host
            )));
        }
        let token = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .encode(format!("\0{user}\0{}", password.as_str())),
        );
        conn.command("AUTH", &format!("AUTH PLAIN {}", token.as_str()), &[235])
            .await?;
    }
    conn.command(
        "MAIL FROM",
        &format!("MAIL FROM:<{}>", settings.from),
        &[250],
    )
    .await?;
    // A recipient the server refuses for good (a stale contact) does not
    // keep the others from their notice; a temporary refusal (4xx) fails
    // the attempt, which is retried.
    let mut accepted = 0;
    let mut refused = Vec::new();
    for to in &mail.to {
        conn.send(&format!("RCPT TO:<{to}>")).await?;
        let (code, text) = conn.reply().await?;
        match code {
            250 | 251 => accepted += 1,
            500..=599 => {
                tracing::warn!(recipient = %to, code, reply = %text.join(" "), "the mail server refused a recipient");
                refused.push(format!("{to} ({code})"));
            }
            _ => {
                return Err(SmtpError::Refused {
                    step: "RCPT TO",
                    code,
                    text: text.join(" "),
                })
            }
        }
    }
    if accepted == 0 {
        return Err(SmtpError::Unsupported(format!(
            "the server refused every recipient: {}",
            refused.join(", ")
        )));
    }
    conn.command("DATA", "DATA", &[354]).await?;
    let text = render(settings, mail, time::OffsetDateTime::now_utc());
    conn.stream.write_all(text.as_bytes()).await.map_err(io)?;
    conn.command("the message", ".", &[250]).await?;
    let _ = conn.send("QUIT").await;
    Ok(())
}

/// Whether `s` looks like an address hallmark may put in an envelope:
/// `local@domain`, printable ASCII, no spaces or angle brackets.
pub fn plausible_address(s: &str) -> bool {
    let Some((local, domain)) = s.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && (domain.contains('.') || domain == "localhost")
        && s.len() <= 254
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b',' | b'"' | b'\\'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_dot_stuffed_with_crlf_and_headers_cannot_be_injected() {
        let settings = SmtpSettings {
            host: "mail.internal".into(),
            port: 587,
            tls: SmtpTls::StartTls,
            from: "ca@corp.internal".into(),
            username: None,
            password: None,
            also_to: Vec::new(),
        };
        let mail = Mail {
            to: vec!["a@corp.internal".into()],
            subject: "evil\r\nBcc: x@evil.example".into(),
            body: "line\n.starts with a dot\n..two".into(),
            message_id: "1.x@hallmark".into(),
        };
        let text = render(
            &settings,
            &mail,
            time::macros::datetime!(2026-12-03 10:00 UTC),
        );
        assert!(
            text.contains("Subject: evil  Bcc: x@evil.example\r\n"),
            "{text}"
        );
        assert!(!text.contains("\r\nBcc:"));
        assert!(text.contains("Date: Thu, 03 Dec 2026 10:00:00 +0000\r\n"));
        assert!(
            text.ends_with("\r\n\r\nline\r\n..starts with a dot\r\n...two\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Transfer-Encoding: 7bit"));
        assert!(plausible_address("ops@corp.internal"));
        for bad in [
            "",
            "no-at",
            "@x.y",
            "a b@c.d",
            "a@nodot",
            "<a@b.c>",
            "a@b.c,d@e.f",
        ] {
            assert!(!plausible_address(bad), "{bad}");
        }
    }
}
