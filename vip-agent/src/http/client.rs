//! The HTTP/1.1 client: hyper's `client::conn::http1` over one byte stream (a TCP connection, a
//! tokio-rustls stream over one, or an in-memory pipe in tests).
//!
//! * [`Connection`]: one connection, kept alive between requests while the server allows it
//!   ([`Connection::is_open`]); its driving task is spawned at the handshake and ended when the
//!   `Connection` is dropped. Each [`Connection::request`] is bounded twice: the whole exchange
//!   (request, response head and body) by a timeout, the body by a byte limit.
//! * [`get`]: one `GET` over a fresh plain TCP connection, connect included in the timeout, and
//!   [`get_blocking`] for a caller without a runtime (a CLI command).

use std::{error::Error as StdError, fmt::Write as _, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, LengthLimitError, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    task::JoinHandle,
};

/// Why a request got no complete response. Each names the operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("connect {addr}: {source}")]
    Connect {
        /// The address asked.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// hyper refused the connection (before any byte was exchanged).
    #[error("HTTP handshake: {}", chain(.0))]
    Handshake(hyper::Error),
    /// The request could not be built (a path or header that is not valid HTTP).
    #[error("build the request: {0}")]
    Request(http::Error),
    /// Sending the request or reading the response head failed: the connection closed, or the
    /// bytes that came back are not an HTTP/1.x response.
    #[error("send the request, read the response head: {}", chain(.0))]
    Send(hyper::Error),
    /// Reading the response body failed (the connection closed inside it, bad chunked encoding).
    #[error("read the response body: {}", chain(&**.0))]
    ReadBody(Box<dyn StdError + Send + Sync>),
    /// The body is longer than the caller's limit.
    #[error("read the response body: larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// No complete response (head and body) within the timeout.
    #[error("no complete response within {0:?} (timeout)")]
    Timeout(Duration),
    /// No runtime could be built for [`get_blocking`].
    #[error("build a runtime for the request: {0}")]
    Runtime(std::io::Error),
}

impl ClientError {
    /// Whether the TCP connection was refused (nothing listens there).
    #[must_use]
    pub fn is_refused(&self) -> bool {
        matches!(self, Self::Connect { source, .. }
            if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }
}

/// An error and its sources, `: `-separated (hyper's own message names only the outer one).
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        let _ = write!(text, ": {e}");
        next = e.source();
    }
    text
}

/// One HTTP/1.1 connection over a byte stream.
#[derive(Debug)]
pub struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    /// Drives the connection (hyper's `Connection` future); aborted on drop.
    task: JoinHandle<()>,
    /// The `Host` header of every request.
    host: HeaderValue,
    /// An exchange failed or was cut short: the connection's state is unknown, it is not reused.
    broken: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Connection {
    /// Start HTTP/1.1 over `stream` (already connected, TLS already negotiated). `host`: the
    /// `Host` header of its requests (`name[:port]`). Needs a tokio runtime (the connection's task
    /// is spawned on it).
    ///
    /// # Errors
    /// [`ClientError::Handshake`] (hyper does no I/O here), [`ClientError::Request`] for a `host`
    /// that is not a header value.
    pub async fn handshake<S>(stream: S, host: &str) -> Result<Self, ClientError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let host = HeaderValue::from_str(host).map_err(|e| ClientError::Request(e.into()))?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ClientError::Handshake)?;
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %chain(&e), "HTTP client connection ended");
            }
        });
        Ok(Self {
            sender,
            task,
            host,
            broken: false,
        })
    }

    /// Whether another request may be sent: no exchange failed, and neither side has closed the
    /// connection (a server that answered HTTP/1.0 or `Connection: close` has).
    #[must_use]
    pub fn is_open(&self) -> bool {
        !self.broken && !self.sender.is_closed() && !self.task.is_finished()
    }

    /// One exchange: `method path_and_query` with `headers` (`Host` and `User-Agent` are added
    /// unless given), no request body. The whole exchange is bounded by `timeout`, the response
    /// body by `body_limit` bytes. After an error the connection is not [`Connection::is_open`].
    ///
    /// # Errors
    /// Which step failed: [`ClientError::Request`], [`ClientError::Send`],
    /// [`ClientError::ReadBody`], [`ClientError::BodyTooLarge`], [`ClientError::Timeout`].
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body_limit: usize,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .body(Empty::<Bytes>::new())
            .map_err(ClientError::Request)?;
        *request.headers_mut() = headers;
        let defaults = [
            (header::HOST, self.host.clone()),
            (
                header::USER_AGENT,
                HeaderValue::from_static(concat!("vip-agent/", env!("CARGO_PKG_VERSION"))),
            ),
        ];
        for (name, value) in defaults {
            request.headers_mut().entry(name).or_insert(value);
        }
        // Marked broken until the exchange completes: an error, or a caller's own timeout that
        // drops this future halfway, leaves it so.
        self.broken = true;
        let sender = &mut self.sender;
        let exchange = async move {
            let response = sender
                .send_request(request)
                .await
                .map_err(ClientError::Send)?;
            let status = response.status();
            let body = Limited::new(response.into_body(), body_limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<LengthLimitError>().is_some() {
                        ClientError::BodyTooLarge { limit: body_limit }
                    } else {
                        ClientError::ReadBody(e)
                    }
                })?
                .to_bytes();
            Ok((status, body))
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout(timeout))??;
        self.broken = false;
        Ok(answer)
    }
}

/// `GET path_and_query` from `addr` over a new plain TCP connection (closed afterwards): status
/// and body. `timeout` bounds everything from the connect to the end of the body, `limit` the body.
///
/// # Errors
/// [`ClientError::Connect`], and those of [`Connection::request`].
pub async fn get(
    addr: SocketAddr,
    path_and_query: &str,
    timeout: Duration,
    limit: usize,
) -> Result<(StatusCode, Bytes), ClientError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection::handshake(stream, &addr.to_string()).await?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        connection
            .request(Method::GET, path_and_query, HeaderMap::new(), limit, left)
            .await
    };
    tokio::time::timeout_at(deadline, exchange)
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
}

/// [`get`] for a caller without a tokio runtime (it builds a current-thread one). Not to be called
/// from inside a runtime (tokio refuses to block there).
///
/// # Errors
/// Those of [`get`], and [`ClientError::Runtime`].
pub fn get_blocking(
    addr: SocketAddr,
    path_and_query: &str,
    timeout: Duration,
    limit: usize,
) -> Result<(StatusCode, Bytes), ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClientError::Runtime)?
        .block_on(get(addr, path_and_query, timeout, limit))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, DuplexStream};

    use super::*;

    const LIMIT: usize = 64 * 1024;
    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Read one request head from the server end; its text.
    async fn read_request(server: &mut DuplexStream) -> String {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = server.read(&mut byte).await.expect("read the request");
            assert_ne!(n, 0, "closed before the request ended: {buf:?}");
            buf.push(byte[0]);
        }
        String::from_utf8(buf).expect("a text request")
    }

    /// A connection whose server end answers one request with `raw`, then closes when `close`.
    async fn answered(
        raw: &'static [u8],
        close: bool,
    ) -> (Connection, tokio::task::JoinHandle<String>) {
        let (client, mut server) = tokio::io::duplex(LIMIT);
        let connection = Connection::handshake(client, "db1:8008")
            .await
            .expect("handshake");
        let server = tokio::spawn(async move {
            let request = read_request(&mut server).await;
            server.write_all(raw).await.expect("write the response");
            if close {
                drop(server);
            } else {
                // Keep the server end open until the test ends.
                std::future::pending::<()>().await;
            }
            request
        });
        (connection, server)
    }

    async fn one(raw: &'static [u8], limit: usize) -> Result<(StatusCode, Bytes), ClientError> {
        let (mut connection, _server) = answered(raw, true).await;
        connection
            .request(Method::GET, "/primary", HeaderMap::new(), limit, TIMEOUT)
            .await
    }

    #[tokio::test]
    async fn content_length_and_the_request_sent() {
        let (mut c, server) =
            answered(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", true).await;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic eDp5"),
        );
        let (status, body) = c
            .request(Method::GET, "/primary?x=1", headers, LIMIT, TIMEOUT)
            .await
            .expect("a response");
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"{}"[..]));
        let request = server.await.expect("server");
        assert!(
            request.starts_with("GET /primary?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        let lower = request.to_ascii_lowercase();
        for h in [
            "host: db1:8008\r\n",
            "authorization: basic edp5\r\n",
            "user-agent: vip-agent/",
        ] {
            assert!(lower.contains(h), "{h} in {request}");
        }
    }

    #[tokio::test]
    async fn chunked() {
        let r = one(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            LIMIT,
        )
        .await
        .expect("a response");
        assert_eq!(
            (r.0, &r.1[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"abcde"[..])
        );
    }

    /// Patroni's `BaseHTTPRequestHandler`: HTTP/1.0, no length, the body ends with the connection,
    /// which is then not reused.
    #[tokio::test]
    async fn http_1_0_body_to_the_end_of_the_connection() {
        let (mut c, _server) = answered(
            b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"role\": \"master\"}",
            true,
        )
        .await;
        let (status, body) = c
            .request(Method::GET, "/primary", HeaderMap::new(), LIMIT, TIMEOUT)
            .await
            .expect("a response");
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"{\"role\": \"master\"}"[..])
        );
        tokio::time::timeout(TIMEOUT, async {
            while c.is_open() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("closed after an HTTP/1.0 response");
        let e = c
            .request(Method::GET, "/primary", HeaderMap::new(), LIMIT, TIMEOUT)
            .await
            .expect_err("closed");
        assert!(matches!(e, ClientError::Send(_)), "{e}");
    }

    #[tokio::test]
    async fn kept_alive_for_a_second_request() {
        let (client, mut server) = tokio::io::duplex(LIMIT);
        let mut c = Connection::handshake(client, "db1:8008")
            .await
            .expect("handshake");
        let _server = tokio::spawn(async move {
            for body in ["one", "two"] {
                read_request(&mut server).await;
                let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n{body}");
                server.write_all(raw.as_bytes()).await.expect("write");
            }
            std::future::pending::<()>().await;
        });
        for want in ["one", "two"] {
            assert!(c.is_open());
            let (_, body) = c
                .request(Method::GET, "/", HeaderMap::new(), LIMIT, TIMEOUT)
                .await
                .expect("a response");
            assert_eq!(&body[..], want.as_bytes());
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nhello world",
        ] {
            let e = one(raw, 10).await.expect_err("too large");
            assert!(matches!(e, ClientError::BodyTooLarge { limit: 10 }), "{e}");
        }
        let (_, body) = one(b"HTTP/1.0 200 OK\r\n\r\nhello worl", 10)
            .await
            .expect("at the limit");
        assert_eq!(body.len(), 10);
    }

    /// The old hand-written parser had to guard `size + 2` against wrapping; hyper refuses it.
    #[tokio::test]
    async fn a_huge_chunk_size_is_an_error_not_a_panic() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10001\r\nab",
        ] {
            let e = one(raw, LIMIT).await.expect_err("refused");
            assert!(
                matches!(
                    e,
                    ClientError::ReadBody(_) | ClientError::BodyTooLarge { .. }
                ),
                "{e}"
            );
        }
    }

    #[tokio::test]
    async fn malformed_responses() {
        for raw in [
            &b""[..],
            b"SSH-2.0-OpenSSH_9.2\r\n",
            b"\x16\x03\x01\x00\xa5garbage",
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        ] {
            let e = one(raw, LIMIT).await.expect_err("malformed");
            assert!(matches!(e, ClientError::Send(_)), "{raw:?}: {e}");
        }
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
        ] {
            let e = one(raw, LIMIT).await.expect_err("malformed body");
            assert!(matches!(e, ClientError::ReadBody(_)), "{raw:?}: {e}");
        }
    }

    #[tokio::test]
    async fn the_whole_exchange_is_under_the_timeout() {
        let short = Duration::from_millis(100);
        // Nothing comes back; then a head and part of the body, and nothing more.
        for raw in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        ] {
            let (mut c, _server) = answered(raw, false).await;
            let e = c
                .request(Method::GET, "/", HeaderMap::new(), LIMIT, short)
                .await
                .expect_err("timeout");
            assert!(matches!(e, ClientError::Timeout(d) if d == short), "{e}");
            assert!(!c.is_open(), "not reused after a timeout");
        }
    }

    #[tokio::test]
    async fn get_over_loopback_tcp() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let mut seen = Vec::new();
            while !seen.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).await.expect("read");
                assert_ne!(n, 0);
                seen.extend_from_slice(&buf[..n]);
            }
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"state\": 1}\n")
                .await
                .expect("write");
            String::from_utf8(seen).expect("text")
        });
        let (status, body) = get(addr, "/status", TIMEOUT, LIMIT).await.expect("get");
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"{\"state\": 1}\n"[..])
        );
        let request = server.await.expect("server");
        assert!(request.starts_with("GET /status HTTP/1.1\r\n"), "{request}");
        assert!(
            request
                .to_ascii_lowercase()
                .contains(&format!("host: {addr}\r\n"))
        );
    }

    #[test]
    fn get_blocking_without_a_runtime() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let e = get_blocking(addr, "/status", TIMEOUT, LIMIT).expect_err("nothing listens");
        assert!(e.is_refused(), "{e}");
        assert!(
            e.to_string().starts_with(&format!("connect {addr}: ")),
            "{e}"
        );
    }
}
