//! The Patroni probe: `GET <patroni-url>/primary` (or, for the Patroni REST leader source
//! ([`crate::patroni_rest`]), any path and only its status code) over a hand-written HTTP/1.1 client (one request
//! per connection, as Patroni's `BaseHTTPRequestHandler` closes after each response), plain or over
//! TLS (tokio-rustls, ring), with optional basic authentication and client certificate.
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
//! Patroni's REST API is a `BaseHTTPRequestHandler` speaking HTTP/1.0: it closes the connection
//! after each response (`protocol_version` is never raised, 3.0.2 to 4.x), so there is no
//! connection to keep alive. Each probe is one TCP connect to the member's own address (tens of
//! microseconds) and one request.

use std::{io, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use base64::Engine as _;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

use super::{Failsafe, GateError, Outcome, Status, Verdict, peer};
use crate::config::{GateConfig, PatroniUrl};

/// Responses larger than this are refused (Patroni's status document is about 1 KiB).
const MAX_RESPONSE: usize = 64 * 1024;

/// One Patroni REST API endpoint, ready to be asked.
pub(crate) struct PatroniProbe {
    url: PatroniUrl,
    path: String,
    authorization: Option<String>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The Patroni scope the answers must come from (from the leader key), when known.
    scope: Option<String>,
    /// The member the answers must come from (the trigger value), when known.
    member: Option<String>,
    /// https with `patroni-ca-file`: the server proved a certificate of the configured CA.
    ca_verified: bool,
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
        let authorization = match (&config.patroni_user, &config.patroni_password) {
            (Some(user), Some(password)) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose()))
            )),
            _ => None,
        };
        let slash = if path.starts_with('/') { "" } else { "/" };
        Ok(Self {
            path: format!("{}{slash}{path}", url.base),
            url,
            authorization,
            ca_verified: tls.is_some() && config.patroni_ca_file.is_some(),
            tls,
            scope,
            member,
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
            .map(|(r, _)| r.status)
            .map_err(|e| e.to_string())
    }

    /// Ask once. `refused_means_absent`: a refused connection means "no Patroni here"
    /// ([`Outcome::NoPatroni`]) rather than "not yet".
    pub(super) async fn probe(&self, refused_means_absent: bool) -> Verdict {
        match self.get(false).await {
            Ok((response, _)) => judge(response.status, &response.body, self.who()),
            Err(Fetch::Refused(_)) if refused_means_absent => Verdict::Ready(Outcome::NoPatroni),
            Err(e) => Verdict::Wait(e.to_string()),
        }
    }

    /// Ask once what Patroni says about this member's PostgreSQL (the hold check).
    /// With `verify_peer`, a claimed failsafe mode is [`Failsafe::Verified`] only from a peer
    /// [`peer`] accepts (https with the configured CA, or a local listener of a trusted user,
    /// looked up while the connection is established: Patroni closes it after the response).
    pub(super) async fn status(&self, verify_peer: bool) -> Status {
        let verify = verify_peer && !self.ca_verified;
        match self.get(verify).await {
            Ok((response, listener)) => {
                match judge_status(response.status, &response.body, self.who()) {
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

    /// One exchange. With `verify_listener`, also whether the socket that accepted the connection
    /// is a trusted local listener ([`peer::check_local_listener`]), checked before the request.
    async fn get(
        &self,
        verify_listener: bool,
    ) -> Result<(Response, Option<Result<(), String>>), Fetch> {
        let stream = self.connect().await?;
        let listener = if verify_listener {
            let local = stream.local_addr().map_err(Fetch::Io)?;
            let remote = stream.peer_addr().map_err(Fetch::Io)?;
            Some(peer::check_local_listener(local, remote))
        } else {
            None
        };
        let request = self.request();
        let response = match &self.tls {
            None => exchange(stream, &request).await,
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| Fetch::Tls(e.to_string()))?;
                exchange(tls, &request).await
            }
        }?;
        Ok((response, listener))
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

    fn request(&self) -> String {
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: vip-agent/{}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.path,
            self.url.authority(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(auth) = &self.authorization {
            request.push_str("Authorization: ");
            request.push_str(auth);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request
    }
}

/// Why a request got no usable response.
#[derive(Debug)]
enum Fetch {
    Resolve(String),
    Refused(SocketAddr),
    Connect(String),
    Tls(String),
    Io(io::Error),
    Malformed(String),
}

impl std::fmt::Display for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Resolve(e) => write!(f, "resolve: {e}"),
            Self::Refused(addr) => {
                write!(f, "connect {addr}: connection refused (or loopback down)")
            }
            Self::Connect(e) => f.write_str(e),
            Self::Tls(e) => write!(f, "TLS handshake: {e}"),
            Self::Io(e) => write!(f, "request: {e}"),
            Self::Malformed(e) => write!(f, "not an HTTP response: {e}"),
        }
    }
}

/// A parsed response: status code and (de-chunked) body.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Response {
    pub(super) status: u16,
    pub(super) body: Vec<u8>,
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &str,
) -> Result<Response, Fetch> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(Fetch::Io)?;
    stream.flush().await.map_err(Fetch::Io)?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify (Python's ssl does) ends the response.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !buf.is_empty() => 0,
            Err(e) => return Err(Fetch::Io(e)),
        };
        if n == 0 {
            return parse_response(&buf, true)
                .map_err(Fetch::Malformed)?
                .ok_or_else(|| {
                    Fetch::Malformed(if buf.is_empty() {
                        "connection closed without a response (an https REST API asked over http?)"
                            .to_owned()
                    } else {
                        "connection closed before the response was complete".to_owned()
                    })
                });
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(Fetch::Malformed(format!(
                "response larger than {MAX_RESPONSE} bytes"
            )));
        }
        if let Some(response) = parse_response(&buf, false).map_err(Fetch::Malformed)? {
            return Ok(response);
        }
    }
}

/// Parse an HTTP/1.x response from `buf`. `Ok(None)`: incomplete so far (`eof`: the peer closed,
/// so a body without length ends here). A body is delimited by `Content-Length`, chunked
/// encoding, or the end of the connection.
pub(super) fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("{e} (first bytes: {:?})", preview(buf))),
    };
    let status = parsed.code.ok_or("no status code")?;
    let mut length = None;
    let mut chunked = false;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(h.value).map_err(|_| "bad Content-Length")?;
            length = Some(
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length {text:?}"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = std::str::from_utf8(h.value)
                .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"));
        }
    }
    let rest = &buf[head_len..];
    if chunked {
        return match dechunk(rest)? {
            Some(body) => Ok(Some(Response { status, body })),
            None if eof => Err("connection closed inside a chunked body".to_owned()),
            None => Ok(None),
        };
    }
    match length {
        Some(len) if rest.len() >= len => Ok(Some(Response {
            status,
            body: rest[..len].to_vec(),
        })),
        Some(_) if eof => Err("connection closed before Content-Length bytes".to_owned()),
        Some(_) => Ok(None),
        None if eof => Ok(Some(Response {
            status,
            body: rest.to_vec(),
        })),
        None => Ok(None),
    }
}

/// Decode a complete chunked body; `Ok(None)` while incomplete.
fn dechunk(mut data: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size line")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        // A size near usize::MAX must not wrap (it would pass the check below and panic).
        let with_crlf = size
            .checked_add(2)
            .filter(|n| *n <= MAX_RESPONSE)
            .ok_or_else(|| format!("chunk size {size_text:?} larger than {MAX_RESPONSE} bytes"))?;
        if data.len() < with_crlf {
            return Ok(None);
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
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

    fn complete(raw: &[u8]) -> Response {
        match parse_response(raw, false) {
            Ok(Some(r)) => r,
            other => panic!("expected a complete response, got {other:?}"),
        }
    }

    #[test]
    fn responses_with_length_chunks_or_eof() {
        let r = complete(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}trailing");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{}"[..]));
        let r = complete(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        );
        assert_eq!((r.status, r.body.as_slice()), (503, &b"abcde"[..]));
        // Patroni (HTTP/1.0 handler) sends no length: the body ends with the connection.
        let raw =
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"role\": \"master\"}";
        assert_eq!(parse_response(raw, false), Ok(None));
        let r = parse_response(raw, true)
            .expect("parses")
            .expect("complete at EOF");
        assert_eq!(r.body, b"{\"role\": \"master\"}");
    }

    #[test]
    fn incomplete_and_garbage_responses() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", false),
            Ok(None)
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", false),
            Ok(None)
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", true).is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH_9.2\r\n", true).is_err());
        assert!(parse_response(b"\x16\x03\x01\x00\xa5garbage", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true).is_err());
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                true
            )
            .is_err()
        );
    }

    #[test]
    fn a_huge_chunk_size_is_an_error_not_a_panic() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab";
        let e = parse_response(raw, false).expect_err("refused");
        assert!(e.contains("larger than"), "{e}");
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\nab";
        assert!(parse_response(raw, true).is_err());
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
