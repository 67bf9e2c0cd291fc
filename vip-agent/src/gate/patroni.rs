//! The Patroni probe: `GET <patroni-url>/primary` (or, for the Patroni REST leader source
//! ([`crate::patroni_rest`]), any path and only its status code) over the HTTP client of
//! [`crate::http::client`] (hyper), plain or over TLS (tokio-rustls, ring), with optional basic
//! authentication and client certificate.
//!
//! # What counts as "read-write"
//!
//! Patroni answers `/primary` with 200 as soon as it holds the leader lock (`ha.is_leader()`), which
//! is *before* PostgreSQL has left recovery: the status code alone is exactly the race the gate
//! exists for. The JSON body carries `role`, computed from `pg_is_in_recovery()` by the same request
//! (`replica` while in recovery; `master` in Patroni 3.0, `primary` from 3.1/4.0 on), and `state`
//! (`running` when that query succeeded; when it fails Patroni falls back to its own idea of the
//! role, which says `master` the moment it asked for the promotion, with `state: unknown`). So the
//! gate opens on 200 **and** `role` ∈ {`master`, `primary`} **and** `state` = `running`, nothing
//! less. A standby cluster's leader (`role: standby_leader`, `state: running`, 503 on `/primary`)
//! never becomes read-write: the gate opens for it at once ([`Outcome::StandbyLeader`]).
//!
//! # Failsafe mode
//!
//! Patroni (3.0+, `failsafe_mode: true` in its DCS configuration) keeps a primary that cannot
//! reach etcd running when every member accepts its `POST /failsafe`: its HA loop then calls
//! `set_is_leader(True)` (so `/primary` keeps answering 200) and `Failsafe.set_is_active(now)`,
//! and the status document of every health-check endpoint carries `"failsafe_mode_is_active":
//! true` (`api.py`, `get_postgresql_status`: the key is present only while `ha.failsafe_is_active()`
//! holds). When a member does not accept, Patroni resets failsafe (`set_is_active(0)`, the key
//! disappears) and demotes. [`judge_status`] therefore reports failsafe mode for exactly: 200,
//! `role` `master`/`primary`, `state` `running` and `failsafe_mode_is_active` `true`.
//!
//! # Connections
//!
//! Each probe keeps one connection to its target and reuses it for the next exchange while the
//! server keeps it open; it is re-established after any error, and when the server closed it.
//! Patroni's REST API (a `BaseHTTPRequestHandler` speaking HTTP/1.0, `protocol_version` never
//! raised, 3.0.2 to 4.x) closes after each response, so against Patroni itself each probe is one
//! TCP connect to the member's own address (tens of microseconds) and one request; a proxy in front
//! of it may keep the connection. A request on a kept connection that the server closed meanwhile
//! (hyper had not seen the close yet) is sent again once on a new connection (a `GET`).
//!
//! The failsafe peer check ([`peer::check_local_listener`]) reads the owner of the server end of a
//! connection while it is open, so it is made when the connection is established and kept with it:
//! an answer is verified by the check of the connection it came over. A kept connection made
//! without the check is not reused for an exchange that needs it.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{Failsafe, GateError, Outcome, Status, Verdict, peer};
use crate::{
    config::{GateConfig, PatroniUrl},
    http::client::{ClientError, Connection},
};

/// Response bodies larger than this are refused (Patroni's status document is about 1 KiB).
pub(super) const MAX_RESPONSE: usize = 64 * 1024;

/// One Patroni REST API endpoint, ready to be asked.
pub(crate) struct PatroniProbe {
    url: PatroniUrl,
    path: String,
    /// The request's headers (`Accept`, and `Authorization` with credentials).
    headers: HeaderMap,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The Patroni scope the answers must come from (from the leader key), when known.
    scope: Option<String>,
    /// The member the answers must come from (the trigger value), when known.
    member: Option<String>,
    /// https with `patroni-ca-file`: the server proved a certificate of the configured CA.
    ca_verified: bool,
    /// The connection kept for the next exchange (taken out during one, so that an exchange cut
    /// short by a caller's timeout leaves none behind).
    kept: Mutex<Option<Kept>>,
}

/// A kept-alive connection and the peer check made when it was established.
struct Kept {
    connection: Connection,
    /// [`peer::check_local_listener`] of this connection's server end, when it was asked for.
    listener: Option<Result<(), String>>,
}

impl PatroniProbe {
    /// Build the probe; TLS files are read here (once per gate episode, so rotated certificates
    /// are picked up at the next promotion).
    pub(super) fn new(
        config: &GateConfig,
        url: &PatroniUrl,
        scope: Option<String>,
        member: Option<String>,
    ) -> Result<Self, GateError> {
        Self::for_path(config, url, "/primary", scope, member)
    }

    /// The probe of `path` (from the root of `url`), with the TLS files and credentials of
    /// `config`.
    pub(crate) fn for_path(
        config: &GateConfig,
        url: &PatroniUrl,
        path: &str,
        scope: Option<String>,
        member: Option<String>,
    ) -> Result<Self, GateError> {
        let url = url.clone();
        let tls = if url.tls {
            let connector = TlsConnector::from(Arc::new(tls_config(config)?));
            let name = ServerName::try_from(url.host.clone()).map_err(|e| GateError::Tls {
                what: format!("server name {:?}", url.host),
                reason: e.to_string(),
            })?;
            Some((connector, name))
        } else {
            None
        };
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let (Some(user), Some(password)) = (&config.patroni_user, &config.patroni_password) {
            let credentials = base64::engine::general_purpose::STANDARD
                .encode(format!("{user}:{}", password.expose()));
            let mut value = HeaderValue::from_str(&format!("Basic {credentials}"))
                .map_err(|e| GateError::Credentials(e.to_string()))?;
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
        let slash = if path.starts_with('/') { "" } else { "/" };
        Ok(Self {
            path: format!("{}{slash}{path}", url.base),
            url,
            headers,
            ca_verified: tls.is_some() && config.patroni_ca_file.is_some(),
            tls,
            scope,
            member,
            kept: Mutex::new(None),
        })
    }

    /// The URL it asks.
    pub(crate) const fn url(&self) -> &PatroniUrl {
        &self.url
    }

    /// Ask once; only the status code counts (`dcs-type: patroni`, vip-manager's rule). `Err`:
    /// no HTTP answer, and why.
    pub(crate) async fn status_code(&self) -> Result<u16, String> {
        self.get(false)
            .await
            .map(|((status, _), _)| status.as_u16())
            .map_err(|e| e.to_string())
    }

    /// Ask once. `refused_means_absent`: a refused connection means "no Patroni here"
    /// ([`Outcome::NoPatroni`]) rather than "not yet".
    pub(super) async fn probe(&self, refused_means_absent: bool) -> Verdict {
        match self.get(false).await {
            Ok(((status, body), _)) => judge(status.as_u16(), &body, self.who()),
            Err(Fetch::Refused(_)) if refused_means_absent => Verdict::Ready(Outcome::NoPatroni),
            Err(e) => Verdict::Wait(e.to_string()),
        }
    }

    /// Ask once what Patroni says about this member's PostgreSQL (the hold check).
    /// With `verify_peer`, a claimed failsafe mode is [`Failsafe::Verified`] only from a peer
    /// [`peer`] accepts (https with the configured CA, or a local listener of a trusted user,
    /// looked up while the connection the answer came over was established).
    pub(super) async fn status(&self, verify_peer: bool) -> Status {
        let verify = verify_peer && !self.ca_verified;
        match self.get(verify).await {
            Ok(((status, body), listener)) => {
                match judge_status(status.as_u16(), &body, self.who()) {
                    Status::Primary {
                        failsafe: Failsafe::Verified,
                        started,
                    } if verify || !verify_peer => {
                        let failsafe = match listener {
                            Some(Err(why)) => Failsafe::Unverified(why),
                            Some(Ok(())) | None => Failsafe::Verified,
                        };
                        Status::Primary { failsafe, started }
                    }
                    other => other,
                }
            }
            Err(e) => Status::Unknown(e.to_string()),
        }
    }

    fn who(&self) -> Who<'_> {
        Who {
            scope: self.scope.as_deref(),
            member: self.member.as_deref(),
        }
    }

    /// One exchange, on the kept connection when there is one that fits. With `verify_listener`,
    /// also whether the socket that accepted the connection it came over is a trusted local
    /// listener ([`peer::check_local_listener`], checked when that connection was established).
    async fn get(
        &self,
        verify_listener: bool,
    ) -> Result<((StatusCode, Bytes), Option<Result<(), String>>), Fetch> {
        let reusable = self
            .kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .filter(|k| k.connection.is_open() && (!verify_listener || k.listener.is_some()));
        let (answer, kept) = match reusable {
            Some(kept) => match self.exchange(kept).await {
                // Closed by the server since the last exchange: once more on a new connection.
                Err(ClientError::Send(_)) => self.exchange(self.open(verify_listener).await?).await,
                other => other,
            },
            None => self.exchange(self.open(verify_listener).await?).await,
        }
        .map_err(|e| Fetch::Http(e, self.tls.is_some()))?;
        let listener = if verify_listener {
            kept.listener.clone()
        } else {
            None
        };
        if kept.connection.is_open() {
            *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(kept);
        }
        Ok((answer, listener))
    }

    /// One request on `kept`; the connection back when it succeeded (dropped otherwise).
    async fn exchange(&self, mut kept: Kept) -> Result<((StatusCode, Bytes), Kept), ClientError> {
        let answer = kept
            .connection
            .request(
                Method::GET,
                &self.path,
                self.headers.clone(),
                MAX_RESPONSE,
                PROBE_TIMEOUT,
            )
            .await?;
        Ok((answer, kept))
    }

    /// A new connection (TCP, TLS when https), with its peer check when `verify_listener`.
    async fn open(&self, verify_listener: bool) -> Result<Kept, Fetch> {
        let stream = self.connect().await?;
        // Checked now, while the connection is certainly open (Patroni closes it after the
        // response).
        let listener = if verify_listener {
            let local = stream.local_addr().map_err(Fetch::Addresses)?;
            let remote = stream.peer_addr().map_err(Fetch::Addresses)?;
            Some(peer::check_local_listener(local, remote))
        } else {
            None
        };
        let host = self.url.authority();
        let connection = match &self.tls {
            None => Connection::handshake(stream, &host).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| Fetch::Tls(e.to_string()))?;
                Connection::handshake(CloseNotifyOptional(tls), &host).await
            }
        }
        .map_err(|e| Fetch::Http(e, self.tls.is_some()))?;
        Ok(Kept {
            connection,
            listener,
        })
    }

    async fn connect(&self) -> Result<TcpStream, Fetch> {
        let addrs: Vec<SocketAddr> =
            tokio::net::lookup_host((self.url.host.as_str(), self.url.port))
                .await
                .map_err(|e| Fetch::Resolve(e.to_string()))?
                .collect();
        let mut refused = None;
        let mut other = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => refused = Some(addr),
                // A loopback address that is unreachable means `lo` is down in this network
                // namespace (common in hand-made namespaces): nothing here can answer on it, the
                // same as a refusal.
                Err(e)
                    if addr.ip().is_loopback()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NetworkUnreachable
                                | io::ErrorKind::HostUnreachable
                                | io::ErrorKind::AddrNotAvailable
                        ) =>
                {
                    refused = Some(addr);
                }
                Err(e) => other = Some(format!("connect {addr}: {e}")),
            }
        }
        // Refused only when every address refused: an address that timed out or is unreachable
        // may still have Patroni behind it.
        match (other, refused) {
            (Some(e), _) => Err(Fetch::Connect(e)),
            (None, Some(addr)) => Err(Fetch::Refused(addr)),
            (None, None) => Err(Fetch::Resolve(format!(
                "{} resolves to no address",
                self.url.host
            ))),
        }
    }
}

/// Why a request got no usable response.
#[derive(Debug, thiserror::Error)]
enum Fetch {
    #[error("resolve: {0}")]
    Resolve(String),
    #[error("connect {0}: connection refused (or loopback down)")]
    Refused(SocketAddr),
    #[error("{0}")]
    Connect(String),
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("the connection's addresses: {0}")]
    Addresses(io::Error),
    /// The HTTP exchange failed; `.1`: over TLS.
    #[error("{}", http_reason(.0, *.1))]
    Http(ClientError, bool),
}

/// A failed exchange in the operator's terms.
fn http_reason(error: &ClientError, tls: bool) -> String {
    match error {
        ClientError::Send(e) if e.is_parse() => format!("not an HTTP response: {error}"),
        ClientError::Send(e) if e.is_incomplete_message() && !tls => {
            format!("{error} (an https REST API asked over http?)")
        }
        _ => error.to_string(),
    }
}

/// A TLS stream whose peer may close without `close_notify`: Python's `ssl` (Patroni's REST API)
/// does, and its HTTP/1.0 body ends with the connection. rustls reports that end as
/// `UnexpectedEof`; here it is the end of the stream. A body with a length or chunks that ends
/// early is still refused by hyper.
struct CloseNotifyOptional<S>(S);

impl<S: AsyncRead + Unpin> AsyncRead for CloseNotifyOptional<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.0).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CloseNotifyOptional<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

fn preview(buf: &[u8]) -> String {
    String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned()
}

/// Whom the answers must come from, when known.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Who<'a> {
    /// The Patroni scope (from the leader key).
    pub(super) scope: Option<&'a str>,
    /// The member name (the trigger value); Patroni 3.1+ reports it as `patroni.name`.
    pub(super) member: Option<&'a str>,
}

/// A status document: a JSON object with Patroni's `role` and `state`, from the right cluster.
struct Document {
    role: Option<String>,
    state: Option<String>,
    failsafe: bool,
    started: Option<String>,
}

impl Document {
    /// `Ok(None)`: not a JSON object (garbage, an HTML error page); `Err`: a status document of
    /// another Patroni cluster than `scope`.
    fn parse(body: &[u8], who: Who<'_>) -> Result<Option<Self>, String> {
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(None);
        };
        if !doc.is_object() {
            return Ok(None);
        }
        let text = |v: &serde_json::Value, name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let patroni = doc.get("patroni");
        if let (Some(want), Some(got)) = (who.scope, patroni.and_then(|p| text(p, "scope")))
            && want != got
        {
            return Err(format!(
                "the answer comes from Patroni of scope {got:?}, not {want:?} (the leader key's)"
            ));
        }
        if let (Some(want), Some(got)) = (who.member, patroni.and_then(|p| text(p, "name")))
            && want != got
        {
            return Err(format!(
                "the answer comes from Patroni member {got:?}, not {want:?} (the trigger value)"
            ));
        }
        Ok(Some(Self {
            role: text(&doc, "role"),
            state: text(&doc, "state"),
            failsafe: doc
                .get("failsafe_mode_is_active")
                .and_then(serde_json::Value::as_bool)
                == Some(true),
            started: text(&doc, "postmaster_start_time"),
        }))
    }

    fn running_primary(&self) -> bool {
        matches!(self.role.as_deref(), Some("master" | "primary"))
            && self.state.as_deref() == Some("running")
    }

    /// Whether it says anything about the database (`role` or `state` present).
    fn says_something(&self) -> bool {
        self.role.is_some() || self.state.is_some()
    }

    fn seen(&self) -> String {
        format!(
            "role {}, state {}",
            self.role.as_deref().unwrap_or("-"),
            self.state.as_deref().unwrap_or("-")
        )
    }
}

/// What a `/primary` response means for the gate (see the module documentation). `scope`: the
/// Patroni scope the answer must come from, when known.
pub(super) fn judge(status: u16, body: &[u8], who: Who<'_>) -> Verdict {
    let doc = match Document::parse(body, who) {
        Ok(doc) => doc,
        Err(why) => return Verdict::Wait(why),
    };
    let Some(doc) = doc.filter(Document::says_something) else {
        return match status {
            401 | 403 => Verdict::Wait(format!(
                "{status}: Patroni refused the request; check patroni-user/patroni-password and \
                 the client certificate"
            )),
            _ => Verdict::Wait(format!(
                "{status} without a JSON status document (first bytes: {:?})",
                preview(body)
            )),
        };
    };
    let seen = doc.seen();
    match status {
        200 if doc.running_primary() => Verdict::Ready(Outcome::Primary),
        200 => Verdict::NotYet(format!(
            "200 but {seen}: Patroni holds the leader lock, PostgreSQL is not read-write yet"
        )),
        _ if doc.role.as_deref() == Some("standby_leader")
            && doc.state.as_deref() == Some("running") =>
        {
            Verdict::Ready(Outcome::StandbyLeader)
        }
        _ => Verdict::NotYet(format!("{status}, {seen}")),
    }
}

/// What a `/primary` response says about this member's PostgreSQL while its VIP answers.
/// A claimed failsafe mode comes back as [`Failsafe::Verified`]; [`PatroniProbe::status`] checks
/// the peer.
pub(super) fn judge_status(status: u16, body: &[u8], who: Who<'_>) -> Status {
    let doc = match Document::parse(body, who) {
        Ok(Some(doc)) if doc.says_something() => doc,
        Ok(_) => {
            return Status::Unknown(format!(
                "{status} without a JSON status document (first bytes: {:?})",
                preview(body)
            ));
        }
        Err(why) => return Status::Unknown(why),
    };
    match status {
        200 if doc.running_primary() => Status::Primary {
            failsafe: if doc.failsafe {
                Failsafe::Verified
            } else {
                Failsafe::Off
            },
            started: doc.started,
        },
        200 => Status::NotPrimary(format!("Patroni reports {}", doc.seen())),
        // 503 with a document: Patroni does not hold the leader lock (or PostgreSQL is not a
        // running primary), whatever the role says.
        _ => Status::NotPrimary(format!(
            "Patroni answers {status} on /primary ({})",
            doc.seen()
        )),
    }
}

fn tls_config(config: &GateConfig) -> Result<ClientConfig, GateError> {
    let err = |what: &str, path: &Path, reason: String| GateError::Tls {
        what: format!("{what} {}", path.display()),
        reason,
    };
    let mut roots = RootCertStore::empty();
    match &config.patroni_ca_file {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| err("patroni-ca-file", path, e.to_string()))?
            {
                let cert = cert.map_err(|e| err("patroni-ca-file", path, e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| err("patroni-ca-file", path, e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err(
                    "patroni-ca-file",
                    path,
                    "holds no certificate".to_owned(),
                ));
            }
        }
        None => {
            for bundle in crate::leader::SYSTEM_CA_BUNDLES {
                if let Ok(iter) = CertificateDer::pem_file_iter(bundle) {
                    roots.add_parsable_certificates(iter.flatten());
                    break;
                }
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| GateError::Tls {
                what: "protocol versions".to_owned(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots);
    match (&config.patroni_cert_file, &config.patroni_key_file) {
        (Some(cert), Some(key)) => {
            let certs = CertificateDer::pem_file_iter(cert)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| err("patroni-cert-file", cert, e.to_string()))?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err("patroni-key-file", key, e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key_der)
                .map_err(|e| err("patroni-cert-file", cert, e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// How long one probe may take before it counts as "no answer" (and the next one starts).
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    const PRIMARY: &str = r#"{"state": "running", "role": "primary", "failsafe_mode_is_active": true, "patroni": {"version": "4.0.0", "scope": "demo", "name": "pg1"}}"#;

    /// How the test server answers.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// HTTP/1.1 with a length, kept alive.
        KeepAlive,
        /// Patroni's HTTP/1.0, closing after each response.
        Http10,
        /// HTTP/1.1 with a length, then a close that the response did not announce, a little later.
        SilentClose,
        /// Kept alive, but the second request on a connection gets no answer.
        HangSecond,
    }

    /// A REST API on loopback answering every request with [`PRIMARY`] as `mode` says. Counts the
    /// connections and requests.
    struct Server {
        url: PatroniUrl,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Server {
        async fn start(mode: Mode) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(AtomicUsize::new(0));
            let (c, r) = (connections.clone(), requests.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        return;
                    };
                    c.fetch_add(1, Ordering::SeqCst);
                    let r = r.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        for n in 1.. {
                            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                                match stream.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                            buf.clear();
                            r.fetch_add(1, Ordering::SeqCst);
                            if mode == Mode::HangSecond && n == 2 {
                                std::future::pending::<()>().await;
                            }
                            let response = if mode == Mode::Http10 {
                                format!("HTTP/1.0 200 OK\r\n\r\n{PRIMARY}")
                            } else {
                                format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{PRIMARY}",
                                    PRIMARY.len()
                                )
                            };
                            if stream.write_all(response.as_bytes()).await.is_err()
                                || mode == Mode::Http10
                            {
                                return;
                            }
                            if mode == Mode::SilentClose {
                                // After the client's next request is on its way.
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                return;
                            }
                        }
                    });
                }
            });
            Self {
                url: PatroniUrl::parse(&format!("http://{addr}")).expect("url"),
                connections,
                requests,
                task,
            }
        }

        fn counts(&self) -> (usize, usize) {
            (
                self.connections.load(Ordering::SeqCst),
                self.requests.load(Ordering::SeqCst),
            )
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn probe(url: &PatroniUrl) -> PatroniProbe {
        PatroniProbe::new(
            &GateConfig::default(),
            url,
            Some("demo".to_owned()),
            Some("pg1".to_owned()),
        )
        .expect("probe")
    }

    fn verified(status: &Status) -> bool {
        matches!(
            status,
            Status::Primary {
                failsafe: Failsafe::Verified,
                ..
            }
        )
    }

    #[tokio::test]
    async fn a_kept_alive_connection_is_reused_between_probes() {
        let server = Server::start(Mode::KeepAlive).await;
        let p = probe(&server.url);
        for _ in 0..3 {
            assert_eq!(p.probe(false).await, Verdict::Ready(Outcome::Primary));
        }
        assert_eq!(server.counts(), (1, 3), "one connection, three requests");
        // The peer check is made on a new connection (this one was made without it), then kept
        // with it: the answers over it are verified by it.
        for _ in 0..2 {
            let s = p.status(true).await;
            assert!(verified(&s), "{s:?}");
        }
        assert_eq!(server.counts(), (2, 5));
        // A probe without the check reuses the checked connection.
        assert_eq!(p.probe(false).await, Verdict::Ready(Outcome::Primary));
        assert_eq!(server.counts(), (2, 6));
    }

    /// Patroni closes after each response: each probe connects again, and a probe on a connection
    /// closed since the last one is not an error.
    #[tokio::test]
    async fn a_connection_the_server_closed_is_made_again() {
        let server = Server::start(Mode::Http10).await;
        let p = probe(&server.url);
        for i in 1..=3 {
            assert_eq!(p.probe(false).await, Verdict::Ready(Outcome::Primary));
            let s = p.status(true).await;
            assert!(verified(&s), "{s:?}");
            assert_eq!(server.counts(), (2 * i, 2 * i));
        }
    }

    /// A close the response did not announce: hyper may not have seen it when the next probe
    /// starts; that probe is sent again on a new connection, not failed.
    #[tokio::test]
    async fn an_unannounced_close_is_not_a_failed_probe() {
        let server = Server::start(Mode::SilentClose).await;
        let p = probe(&server.url);
        for i in 1..=5 {
            assert_eq!(
                p.probe(false).await,
                Verdict::Ready(Outcome::Primary),
                "{i}"
            );
            assert_eq!(server.counts(), (i, i));
        }
    }

    /// An exchange that fails, or that the caller's timeout cuts short, leaves no connection
    /// behind: the next probe makes a new one.
    #[tokio::test]
    async fn a_connection_is_made_again_after_an_exchange_cut_short() {
        let server = Server::start(Mode::HangSecond).await;
        let p = probe(&server.url);
        assert_eq!(p.probe(false).await, Verdict::Ready(Outcome::Primary));
        tokio::time::timeout(Duration::from_millis(100), p.probe(false))
            .await
            .expect_err("the second request on the connection hangs");
        assert_eq!(p.probe(false).await, Verdict::Ready(Outcome::Primary));
        assert_eq!(server.counts(), (2, 3));
    }

    /// Python's `ssl` closes without `close_notify`; rustls says `UnexpectedEof`, which ends the
    /// stream here.
    #[tokio::test]
    async fn a_tls_end_without_close_notify_ends_the_stream() {
        struct Truncated(bool);
        impl AsyncRead for Truncated {
            fn poll_read(
                mut self: Pin<&mut Self>,
                _: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                if std::mem::replace(&mut self.0, true) {
                    Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()))
                } else {
                    buf.put_slice(b"{}");
                    Poll::Ready(Ok(()))
                }
            }
        }
        let mut read = Vec::new();
        CloseNotifyOptional(Truncated(false))
            .read_to_end(&mut read)
            .await
            .expect("the end of the stream");
        assert_eq!(read, b"{}");
        let mut read = Vec::new();
        let e = Truncated(false)
            .read_to_end(&mut read)
            .await
            .expect_err("unwrapped");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn the_hold_check_reads_primary_demoted_and_unknown() {
        let body = |role: &str, state: &str, extra: &str| {
            format!(
                r#"{{"state": "{state}", "role": "{role}", "postmaster_start_time": "2026-12-06 10:00:00.1+00", "patroni": {{"version": "3.0.2", "scope": "pg-test"}}{extra}}}"#
            )
        };
        let scope = Who {
            scope: Some("pg-test"),
            member: None,
        };
        for role in ["master", "primary"] {
            assert_eq!(
                judge_status(200, body(role, "running", "").as_bytes(), scope),
                Status::Primary {
                    failsafe: Failsafe::Off,
                    started: Some("2026-12-06 10:00:00.1+00".to_owned())
                },
                "{role}"
            );
            let failsafe = body(role, "running", r#", "failsafe_mode_is_active": true"#);
            assert!(matches!(
                judge_status(200, failsafe.as_bytes(), scope),
                Status::Primary {
                    failsafe: Failsafe::Verified,
                    ..
                }
            ));
            // The string "true" is not Patroni's boolean.
            let stringly = body(role, "running", r#", "failsafe_mode_is_active": "true""#);
            assert!(matches!(
                judge_status(200, stringly.as_bytes(), scope),
                Status::Primary {
                    failsafe: Failsafe::Off,
                    ..
                }
            ));
        }
        // Demoted, stopping, a failed status query (a crash Patroni has not seen yet), or the
        // lock lost: Patroni's own word that this is no longer a running primary.
        for (status, role, state) in [
            (503, "replica", "running"),
            (200, "replica", "running"),
            (503, "demoted", "stopping"),
            (503, "master", "stopped"),
            (200, "master", "unknown"),
            (503, "master", "running"),
            (503, "replica", "starting"),
        ] {
            let s = judge_status(status, body(role, state, "").as_bytes(), scope);
            assert!(
                matches!(&s, Status::NotPrimary(w) if w.contains(role) && w.contains(state)),
                "{status} {role} {state}: {s:?}"
            );
        }
        for (status, raw) in [
            (200, ""),
            (200, "<html>ok</html>"),
            (401, "no auth header received"),
            (500, "[]"),
            (200, r#"{"patroni": {"scope": "pg-test"}}"#),
        ] {
            assert!(
                matches!(
                    judge_status(status, raw.as_bytes(), scope),
                    Status::Unknown(_)
                ),
                "{status} {raw}"
            );
        }
        // Another cluster's Patroni on this address proves nothing about ours.
        let other = Who {
            scope: Some("other"),
            member: None,
        };
        let s = judge_status(200, body("master", "running", "").as_bytes(), other);
        assert!(
            matches!(&s, Status::Unknown(w) if w.contains("scope")),
            "{s:?}"
        );
        // Without a known scope (a key not laid out by Patroni) the scope is not checked.
        assert!(matches!(
            judge_status(
                200,
                body("master", "running", "").as_bytes(),
                Who::default()
            ),
            Status::Primary { .. }
        ));
        // Patroni 3.1+ names the member: another member's answer proves nothing about this one.
        let named = |name: &str| {
            format!(
                r#"{{"state": "running", "role": "master", "patroni": {{"version": "3.3.0", "scope": "pg-test", "name": "{name}"}}, "failsafe_mode_is_active": true}}"#
            )
        };
        let this = Who {
            scope: Some("pg-test"),
            member: Some("pg-1"),
        };
        let s = judge_status(200, named("pg-2").as_bytes(), this);
        assert!(
            matches!(&s, Status::Unknown(w) if w.contains("member \"pg-2\"")),
            "{s:?}"
        );
        assert!(matches!(
            judge_status(200, named("pg-1").as_bytes(), this),
            Status::Primary {
                failsafe: Failsafe::Verified,
                ..
            }
        ));
        assert!(matches!(
            judge(200, named("pg-2").as_bytes(), this),
            Verdict::Wait(_)
        ));
    }

    #[test]
    fn only_a_running_primary_with_200_opens() {
        let ready = |status, body: &str| {
            judge(
                status,
                body.as_bytes(),
                Who {
                    scope: Some("pg-test"),
                    member: None,
                },
            )
        };
        for role in ["master", "primary"] {
            let body = format!(r#"{{"state": "running", "role": "{role}", "timeline": 2}}"#);
            assert_eq!(
                ready(200, &body),
                Verdict::Ready(Outcome::Primary),
                "{role}"
            );
        }
        // The leader lock is held but PostgreSQL is still in recovery: Patroni's /primary says 200.
        // Patroni's own word: definitive, so the timeout does not open the gate on it.
        let v = ready(200, r#"{"state": "running", "role": "replica"}"#);
        assert!(
            matches!(&v, Verdict::NotYet(w) if w.contains("role replica")),
            "{v:?}"
        );
        // The status query failed; Patroni reports its own wish ("master") with state unknown.
        let v = ready(200, r#"{"state": "unknown", "role": "master"}"#);
        assert!(
            matches!(&v, Verdict::NotYet(w) if w.contains("state unknown")),
            "{v:?}"
        );
        assert!(matches!(ready(200, ""), Verdict::Wait(_)));
        assert!(matches!(ready(200, "<html>ok</html>"), Verdict::Wait(_)));
        assert!(matches!(
            ready(503, r#"{"state": "running", "role": "master"}"#),
            Verdict::NotYet(_)
        ));
        // Another cluster's Patroni: not an answer about this member.
        let v = ready(
            200,
            r#"{"state": "running", "role": "master", "patroni": {"scope": "other"}}"#,
        );
        assert!(
            matches!(&v, Verdict::Wait(w) if w.contains("scope")),
            "{v:?}"
        );
        let v = ready(401, "no auth header received");
        assert!(
            matches!(&v, Verdict::Wait(w) if w.contains("patroni-password")),
            "{v:?}"
        );
        assert_eq!(
            ready(503, r#"{"state": "running", "role": "standby_leader"}"#),
            Verdict::Ready(Outcome::StandbyLeader)
        );
        assert!(matches!(
            ready(503, r#"{"state": "starting", "role": "standby_leader"}"#),
            Verdict::NotYet(_)
        ));
    }
}
