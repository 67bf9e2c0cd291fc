//! A minimal blocking `GET` over hyper's client (plain TCP, one request per connection), for
//! `vip-agent status --metrics-address`. Stands in for the shared client (`http::client`, another
//! branch) until it lands.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;

/// Why a `GET` failed, naming the step.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("start a tokio runtime")]
    Runtime(#[source] std::io::Error),
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr}")]
    Exchange {
        addr: SocketAddr,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// `GET path` from `addr`: status and body (at most `limit` bytes), all within `timeout`. Builds a
/// current-thread runtime: not to be called from inside one.
///
/// # Errors
/// A [`GetError`] naming the failed step.
pub fn get_blocking(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    limit: usize,
) -> Result<(StatusCode, Bytes), GetError> {
    let exchange = async {
        let exchange_err = |source| GetError::Exchange { addr, source };
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| GetError::Connect { addr, source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| exchange_err(e.into()))?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header(header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| exchange_err(e.into()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| exchange_err(e.into()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(exchange_err)?
            .to_bytes();
        Ok((status, body))
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(GetError::Runtime)?
        .block_on(async {
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| GetError::Timeout { addr, timeout })?
        })
}
