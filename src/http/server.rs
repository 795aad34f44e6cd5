//! The connection loop: accepts TCP connections, optionally terminates TLS
//! (with a handshake timeout), serves HTTP/1.1 and HTTP/2, and on shutdown
//! stops accepting and lets in-flight requests finish (up to a grace period).
//!
//! Connections are bounded, so idle or slow clients cannot hold the
//! listener (and the CRLs and OCSP on it) hostage:
//! - at most [`ConnectionLimits::max_connections`] per listener; at the cap
//!   the connection idle longest is closed to make room, and only when
//!   every connection has a request in progress is the new one refused;
//! - a connection with no request in progress that has sent nothing for
//!   the idle timeout is closed — this covers clients that connect and
//!   send nothing (before protocol detection, which has no timeout of its
//!   own), idle HTTP/1.1 keep-alive and idle HTTP/2 connections;
//! - the first request must begin within [`FIRST_REQUEST_TIMEOUT`], and
//!   HTTP/1 headers must be complete within [`HEADER_READ_TIMEOUT`]
//!   (dribbled headers); request bodies are bounded by the request timeout.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio_rustls::TlsAcceptor;

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest from connecting to the first request's first bytes.
pub const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish on shutdown.
const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// Concurrent HTTP/2 streams per connection.
const MAX_CONCURRENT_STREAMS: u32 = 64;
/// Largest request head (HTTP/1 buffer, HTTP/2 header list).
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The connection bounds of one listener (`[server]`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections per listener.
    pub max_connections: usize,
    /// Close a connection without a request in progress after this long
    /// without a byte from its client.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Raises the soft open-file limit towards `wanted` (as far as the hard
/// limit allows) and returns the limit now in force, so both listeners can
/// hold `server.max_connections` each.
pub fn raise_open_file_limit(wanted: u64) -> std::io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if limit.rlim_cur >= wanted {
            return Ok(limit.rlim_cur);
        }
        limit.rlim_cur = wanted.min(limit.rlim_max);
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(limit.rlim_cur)
}

/// What the listener knows about one open connection.
struct ConnState {
    /// When the client last sent a byte (ms since the tracker started).
    last_read_ms: AtomicU64,
    /// Requests being answered.
    in_flight: AtomicUsize,
    /// Requests begun so far (0: still waiting for the first).
    requests: AtomicUsize,
    /// Told to close (evicted to make room).
    close: Notify,
}

/// The open connections of one listener.
struct Tracker {
    started: Instant,
    limits: ConnectionLimits,
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Arc<ConnState>>>,
}

impl Tracker {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Registers a new connection, closing the connection idle longest if
    /// the listener is full; `None` if it is full of busy connections.
    fn admit(&self) -> Option<(u64, Arc<ConnState>)> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.len() >= self.limits.max_connections {
            let idlest = open
                .iter()
                .filter(|(_, c)| c.in_flight.load(Ordering::Relaxed) == 0)
                .min_by_key(|(_, c)| c.last_read_ms.load(Ordering::Relaxed))
                .map(|(id, _)| *id)?;
            if let Some(evicted) = open.remove(&idlest) {
                evicted.close.notify_one();
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            last_read_ms: AtomicU64::new(self.now_ms()),
            in_flight: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            close: Notify::new(),
        });
        open.insert(id, state.clone());
        Some((id, state))
    }

    fn forget(&self, id: u64) {
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Resolves when the connection should be closed for idleness or
    /// eviction.
    async fn until_closed(&self, state: &ConnState) {
        loop {
            let idle_limit = if state.requests.load(Ordering::Relaxed) == 0 {
                FIRST_REQUEST_TIMEOUT.min(self.limits.idle_timeout)
            } else {
                self.limits.idle_timeout
            };
            let last = state.last_read_ms.load(Ordering::Relaxed);
            let deadline = last + idle_limit.as_millis() as u64;
            let now = self.now_ms();
            if now >= deadline && state.in_flight.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(250));
            tokio::select! {
                _ = state.close.notified() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// A stream that notes when its client last sent bytes.
struct Watched<S> {
    inner: S,
    state: Arc<ConnState>,
    tracker: Arc<Tracker>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let now = self.tracker.now_ms();
            self.state.last_read_ms.store(now, Ordering::Relaxed);
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The address a request came from (the TCP peer), as a request
/// extension for per-address limits. Behind a proxy this is the proxy.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<ClientAddr>()
            .copied()
            .unwrap_or(ClientAddr(std::net::Ipv4Addr::UNSPECIFIED.into())))
    }
}

/// The certificate a TLS client authenticated with (DER), as a request
/// extension; only present when the client sent one that chains to this
/// CA's root (EST re-enrolment).
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<Vec<u8>>);

/// The router as a hyper service that counts the requests in progress on
/// its connection and tells handlers the client's address.
#[derive(Clone)]
struct Counted {
    inner: TowerToHyperService<Router>,
    state: Arc<ConnState>,
    peer: std::net::IpAddr,
    client_cert: Option<Arc<Vec<u8>>>,
}

/// Decrements the in-progress count however the request ends.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Counted {
    type Response = <TowerToHyperService<Router> as hyper::service::Service<
        hyper::Request<hyper::body::Incoming>,
    >>::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, mut request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        request.extensions_mut().insert(ClientAddr(self.peer));
        if let Some(cert) = &self.client_cert {
            request
                .extensions_mut()
                .insert(ClientCertificate(cert.clone()));
        }
        self.state.in_flight.fetch_add(1, Ordering::Relaxed);
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        let guard = InFlight(self.state.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(guard);
            response
        })
    }
}

/// Serves `app` on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ConnectionLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let builder = Arc::new(builder);
    let tracker = Arc::new(Tracker {
        started: Instant::now(),
        limits,
        next_id: AtomicU64::new(0),
        open: Mutex::default(),
    });
    let local = listener.local_addr().ok();
    // The guard `wait_for` returns is not Send; drop it inside this future.
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stop);
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some((id, state)) = tracker.admit() else {
                    if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(listener = ?local, max = limits.max_connections, "every connection is busy; refusing new ones (server.max_connections)");
                        last_refusal_log = Some(Instant::now());
                    }
                    drop(tcp);
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let service = Counted {
                    inner: TowerToHyperService::new(app.clone()),
                    state: state.clone(),
                    peer: peer.ip(),
                    client_cert: None,
                };
                let stream = Watched { inner: tcp, state: state.clone(), tracker: tracker.clone() };
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tracker = tracker.clone();
                tokio::spawn(async move {
                    let serving = async {
                        match acceptor {
                            Some(acceptor) => {
                                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                    Ok(Ok(stream)) => stream,
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                };
                                let mut service = service;
                                service.client_cert = stream
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|chain| chain.first())
                                    .map(|c| Arc::new(c.to_vec()));
                                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                                let _ = watcher.watch(conn.into_owned()).await;
                            }
                            None => {
                                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                                let _ = watcher.watch(conn.into_owned()).await;
                            }
                        }
                    };
                    tokio::select! {
                        _ = serving => {}
                        _ = tracker.until_closed(&state) => {
                            tracing::debug!(%peer, "closing an idle connection");
                        }
                    }
                    tracker.forget(id);
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(GRACE_PERIOD) => {
            tracing::warn!("connections still open after the grace period; closing them");
        }
    }
}
