//! The daemon's HTTP endpoints (loopback by default), on hyper's HTTP/1.1 server:
//!
//! * `/metrics`: the Prometheus text exposition ([`Registry::render`]);
//! * `/health`: 200 while the agent runs and the leader source of every key is reached, 503
//!   otherwise;
//! * `/primary`: 200 only while this node answers for at least one VIP (or for `?vip=ADDR`), 503
//!   otherwise, so HAProxy or a load balancer can check it;
//! * `/replica`: Patroni's counterpart of `/primary`: 200 while this node answers for none of its
//!   VIPs (with `?vip=ADDR`: that VIP is one of this agent's and this node does not answer for it)
//!   **and** `/health` is 200; 503 otherwise. A node that cannot reach its leader source is not a
//!   good replica target either: it may be cut off from the cluster;
//! * `/status`: the agent's state as JSON ([`crate::observe::AgentStatus`]), which `vip-agent
//!   status --metrics-address` reads.
//!
//! GET, HEAD and OPTIONS get the same status (HAProxy checks Patroni-style endpoints with `OPTIONS
//! /primary`); HEAD and OPTIONS carry no body; other methods get 405. `?vip=` takes an IPv4 or an
//! IPv6 address (400 otherwise).
//!
//! One request per connection, at most [`MAX_CONNECTIONS`] at once (a connection beyond them is
//! closed at once), headers within [`HEADER_TIMEOUT`] and the whole exchange within
//! [`EXCHANGE_TIMEOUT`]: it serves scrapes and health checks, nothing else.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Registry;

/// Open exchanges at most; a connection beyond them is closed at once. Prometheus, HAProxy and
/// `vip-agent status` need a handful.
pub const MAX_CONNECTIONS: usize = 64;

/// The request head must arrive within this.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole exchange (request and response) within this: a client that never reads cannot hold
/// its slot.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Prometheus text format's content type.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";
const JSON_TYPE: &str = "application/json";

/// Errors of the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("bind the metrics address {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Bind the metrics address (at startup, so a taken port is a startup error).
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind { address, source })
}

/// Serve the endpoints on `listener` until `stop` is cancelled. At most [`MAX_CONNECTIONS`]
/// exchanges at once.
pub async fn serve(listener: TcpListener, registry: Registry, stop: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut refused: u64 = 0;
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                        // Dropping the stream closes it: idle clients cannot take every
                        // descriptor the agent needs for etcd, Patroni, hooks and netlink.
                        refused += 1;
                        if refused.is_power_of_two() {
                            warn!(%peer, refused, limit = MAX_CONNECTIONS,
                                "metrics server: too many open connections, closing new ones");
                        }
                        continue;
                    };
                    let registry = registry.clone();
                    tokio::spawn(async move {
                        exchange(stream, registry, peer).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// One connection: one request, one response, within [`EXCHANGE_TIMEOUT`].
async fn exchange(stream: TcpStream, registry: Registry, peer: SocketAddr) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(
            request.method(),
            request.uri().path(),
            request.uri().query(),
            &registry,
        );
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(EXCHANGE_TIMEOUT, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!(%peer, error = %e, "metrics request failed"),
        Err(_) => debug!(%peer, "metrics exchange timed out"),
    }
}

/// The status, content type and body of `path` (without the method rules).
fn route(
    path: &str,
    query: Option<&str>,
    registry: &Registry,
) -> (StatusCode, &'static str, String) {
    let text = |status, body: &str| (status, TEXT_TYPE, body.to_owned());
    match path {
        "/metrics" => (StatusCode::OK, METRICS_TYPE, registry.render()),
        "/health" => match registry.unhealthy() {
            None => text(StatusCode::OK, "ok\n"),
            Some(why) => text(StatusCode::SERVICE_UNAVAILABLE, &why),
        },
        "/primary" | "/replica" => {
            let vip = match vip_query(query) {
                Ok(vip) => vip,
                Err(why) => return text(StatusCode::BAD_REQUEST, why),
            };
            let answering = registry.answering(vip);
            if path == "/primary" {
                if answering {
                    text(StatusCode::OK, "primary\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not primary\n")
                }
            } else if answering {
                text(StatusCode::SERVICE_UNAVAILABLE, "primary, not a replica\n")
            } else if !registry.serves(vip) {
                text(StatusCode::SERVICE_UNAVAILABLE, "no such VIP here\n")
            } else if let Some(why) = registry.unhealthy() {
                text(StatusCode::SERVICE_UNAVAILABLE, &why)
            } else {
                text(StatusCode::OK, "replica\n")
            }
        }
        "/status" => match serde_json::to_string_pretty(&registry.status()) {
            Ok(mut json) => {
                json.push('\n');
                (StatusCode::OK, JSON_TYPE, json)
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("render the status as JSON: {e}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /health, /primary, /replica or /status\n",
        ),
    }
}

/// `vip=ADDR` of the query string: `Ok(None)` without one.
fn vip_query(query: Option<&str>) -> Result<Option<IpAddr>, &'static str> {
    let Some(query) = query else {
        return Ok(None);
    };
    match query.split('&').find_map(|pair| pair.strip_prefix("vip=")) {
        None => Ok(None),
        // An IPv6 address's colons may come percent-encoded.
        Some(value) => value
            .replace("%3A", ":")
            .replace("%3a", ":")
            .parse()
            .map(Some)
            .map_err(|_| "vip= must be an IPv4 or IPv6 address\n"),
    }
}

/// The whole response to `method` on `path?query`. GET, HEAD and OPTIONS get the same status;
/// HEAD keeps the GET's `Content-Length` without its body, OPTIONS has neither.
fn respond(
    method: &Method,
    path: &str,
    query: Option<&str>,
    registry: &Registry,
) -> Response<Full<Bytes>> {
    const ALLOW: HeaderValue = HeaderValue::from_static("GET, HEAD, OPTIONS");
    let (status, content_type, body) =
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            route(path, query, registry)
        } else {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT_TYPE,
                "only GET, HEAD and OPTIONS\n".to_owned(),
            )
        };
    let length = if *method == Method::OPTIONS {
        0
    } else {
        body.len()
    };
    let body = if matches!(*method, Method::HEAD | Method::OPTIONS) {
        Bytes::new()
    } else {
        Bytes::from(body)
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ALLOW, ALLOW);
    response
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::{clock::monotonic_ns, metrics::tests::registry};

    const ENDPOINTS: [&str; 5] = ["/metrics", "/health", "/primary", "/replica", "/status"];

    /// (status, headers, body) of `method` on `target`.
    fn call(method: &str, target: &str, registry: &Registry) -> (u16, http::HeaderMap, String) {
        let method = Method::from_bytes(method.as_bytes()).expect("a method");
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let response = respond(&method, path, query, registry);
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = futures::executor::block_on(response.into_body().collect())
            .expect("a full body")
            .to_bytes();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    fn status(method: &str, target: &str, registry: &Registry) -> u16 {
        call(method, target, registry).0
    }

    fn healthy(registry: &Registry) -> &Registry {
        registry.apply(crate::observe::Observation::Source {
            key: "/service/pg/leader".to_owned(),
            kind: crate::metrics::tests::ETCD,
            reached: true,
            detail: 1,
        });
        registry
    }

    #[test]
    fn get_head_and_options_get_the_same_status_on_every_endpoint() {
        for r in [registry(monotonic_ns() + 60_000_000_000), registry(0)] {
            for healthy_now in [false, true] {
                if healthy_now {
                    healthy(&r);
                }
                for path in ENDPOINTS {
                    let (get, get_headers, body) = call("GET", path, &r);
                    let (head, head_headers, head_body) = call("HEAD", path, &r);
                    let (options, options_headers, options_body) = call("OPTIONS", path, &r);
                    assert_eq!((get, head, options), (get, get, get), "{path}");
                    assert!(!body.is_empty(), "{path}");
                    assert_eq!(head_body, "", "HEAD {path} has no body");
                    assert_eq!(options_body, "", "OPTIONS {path} has no body");
                    assert_eq!(
                        head_headers[header::CONTENT_LENGTH],
                        get_headers[header::CONTENT_LENGTH],
                        "HEAD {path}: the GET's length"
                    );
                    assert_eq!(options_headers[header::CONTENT_LENGTH], "0", "{path}");
                    assert_eq!(options_headers[header::ALLOW], "GET, HEAD, OPTIONS");
                    for method in ["POST", "PUT", "DELETE", "PATCH"] {
                        assert_eq!(status(method, path, &r), 405, "{method} {path}");
                    }
                }
            }
        }
        assert_eq!(status("GET", "/nope", &registry(0)), 404);
        let (_, headers, _) = call("GET", "/metrics", &registry(0));
        assert_eq!(headers[header::CONTENT_TYPE], METRICS_TYPE);
        let (code, headers, body) = call("GET", "/status", &registry(0));
        assert_eq!(
            (code, headers[header::CONTENT_TYPE].to_str().ok()),
            (200, Some(JSON_TYPE))
        );
        let status: crate::observe::AgentStatus = serde_json::from_str(&body).expect("JSON");
        assert_eq!(status.vips.len(), 1, "{body}");
        assert_eq!(
            status.vips[0].gate.as_ref().map(|g| g.state.as_str()),
            Some("open")
        );
    }

    #[test]
    fn primary_follows_the_deadline_and_takes_ipv4_and_ipv6() {
        let answering = registry(monotonic_ns() + 60_000_000_000);
        assert_eq!(status("GET", "/primary", &answering), 200);
        assert_eq!(status("OPTIONS", "/primary", &answering), 200);
        assert_eq!(status("GET", "/primary?vip=10.0.0.5", &answering), 200);
        assert_eq!(status("GET", "/primary?vip=10.0.0.6", &answering), 503);
        assert_eq!(
            status("GET", "/primary?vip=fd00::5", &answering),
            503,
            "an IPv6 VIP is a VIP (not this one)"
        );
        assert_eq!(status("GET", "/primary?vip=nonsense", &answering), 400);
        assert_eq!(status("GET", "/primary?x=1&vip=10.0.0.5", &answering), 200);
        assert_eq!(status("GET", "/primary?vip=fd00%3A%3A5", &answering), 503);
        assert_eq!(status("GET", "/primary?vip=fd00%3A%3Az", &answering), 400);
        let expired = registry(monotonic_ns().saturating_sub(1));
        assert_eq!(status("GET", "/primary", &expired), 503);
        assert_eq!(status("OPTIONS", "/primary", &expired), 503);
    }

    #[test]
    fn replica_is_healthy_and_not_answering_for_a_vip_of_ours() {
        let fenced = registry(0);
        assert_eq!(
            status("GET", "/replica", &fenced),
            503,
            "source not reached"
        );
        healthy(&fenced);
        assert_eq!(status("GET", "/replica", &fenced), 200);
        assert_eq!(status("OPTIONS", "/replica", &fenced), 200);
        assert_eq!(status("GET", "/replica?vip=10.0.0.5", &fenced), 200);
        assert_eq!(
            status("GET", "/replica?vip=10.0.0.6", &fenced),
            503,
            "not a VIP of this agent"
        );
        assert_eq!(status("GET", "/replica?vip=fd00::5", &fenced), 503);
        assert_eq!(status("GET", "/replica?vip=x", &fenced), 400);
        let answering = registry(monotonic_ns() + 60_000_000_000);
        healthy(&answering);
        assert_eq!(status("GET", "/replica", &answering), 503);
        assert_eq!(status("GET", "/replica?vip=10.0.0.5", &answering), 503);
    }

    #[test]
    fn health_follows_the_source() {
        let r = registry(0);
        let (code, _, body) = call("GET", "/health", &r);
        assert_eq!((code, body.as_str()), (503, "leader source unreachable\n"));
        healthy(&r);
        assert_eq!(status("GET", "/health", &r), 200);
    }

    /// The server on an ephemeral loopback port: its address, its stop token, its task.
    async fn start(
        registry: Registry,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let listener = bind("127.0.0.1:0".parse().expect("address"))
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = CancellationToken::new();
        let server = tokio::spawn(serve(listener, registry, stop.clone()));
        (address, stop, server)
    }

    /// Exchanges over a real socket: hyper answers HEAD without a body, OPTIONS with 200, and
    /// closes the connection after one exchange.
    #[tokio::test]
    async fn a_real_exchange_per_method() {
        let (address, stop, server) = start(registry(monotonic_ns() + 60_000_000_000)).await;
        for (method, tail) in [
            ("GET", "\r\n\r\nprimary\n"),
            ("HEAD", "\r\n\r\n"),
            ("OPTIONS", "\r\n\r\n"),
        ] {
            let mut stream = TcpStream::connect(address).await.expect("connect");
            stream
                .write_all(format!("{method} /primary HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .expect("send");
            let mut answer = String::new();
            tokio::time::timeout(Duration::from_secs(2), stream.read_to_string(&mut answer))
                .await
                .expect("answered and closed within 2 s")
                .expect("read");
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
            assert!(answer.ends_with(tail), "{method}: {answer:?}");
            let length = if method == "OPTIONS" { "0" } else { "8" };
            assert!(
                answer
                    .to_ascii_lowercase()
                    .contains(&format!("content-length: {length}\r\n")),
                "{method}: {answer:?}"
            );
        }
        stop.cancel();
        server.await.expect("server");
    }

    /// Idle clients cannot take every descriptor: beyond [`MAX_CONNECTIONS`] open exchanges a new
    /// connection is closed at once, and a scrape is served again as soon as one slot frees
    /// (issue 16, item 8).
    #[tokio::test]
    async fn idle_clients_beyond_the_cap_are_closed_and_scrapes_resume() {
        let (address, stop, server) = start(registry(0)).await;
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(address).await.expect("connect"));
        }
        // Let the server accept them all (each holds a slot while it waits for a request).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut over = TcpStream::connect(address).await.expect("connect");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), over.read_to_end(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "a connection beyond the cap was not closed at once: {read:?}"
        );
        drop(idle.pop());
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut scrape = TcpStream::connect(address).await.expect("connect");
        scrape
            .write_all(b"GET /health HTTP/1.1\r\n\r\n")
            .await
            .expect("send");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), scrape.read_to_end(&mut answer))
            .await
            .expect("answered within 2 s")
            .expect("read");
        assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
        stop.cancel();
        server.await.expect("server");
    }

    /// A client that sends half a request head is cut off by the header timeout, not held.
    #[tokio::test]
    async fn a_slow_request_head_is_cut_off() {
        let (address, stop, server) = start(registry(0)).await;
        let mut stream = TcpStream::connect(address).await.expect("connect");
        stream.write_all(b"GET /metr").await.expect("send");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(
            HEADER_TIMEOUT + Duration::from_secs(2),
            stream.read_to_end(&mut buf),
        )
        .await;
        assert!(
            read.is_ok(),
            "the connection was held past the header timeout"
        );
        stop.cancel();
        server.await.expect("server");
    }
}
