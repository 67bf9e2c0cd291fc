//! The Patroni REST client's response handling without a socket, exposed to the fuzz targets in
//! `fuzz/` (compiled only under `--cfg fuzzing`, which `cargo fuzz` sets; not an API).

use http::{HeaderMap, Method};
use tokio::io::{AsyncWriteExt as _, DuplexStream};

use super::{Outcome, Status, Verdict, patroni};
use crate::http::client::Connection;

/// The probe's HTTP client ([`crate::http::client`], hyper) asking a server that answers with
/// `raw` and then closes: `Ok((status, body))` for a complete response (body within
/// [`patroni::MAX_RESPONSE`]). On a current-thread runtime, over an in-memory pipe.
///
/// # Errors
/// Why the client got no complete response.
pub fn exchange(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("build a runtime: {e}"))?;
    runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, raw.to_vec()));
        let mut connection = Connection::handshake(client, "demo:8008")
            .await
            .map_err(|e| e.to_string())?;
        connection
            .request(
                Method::GET,
                "/primary",
                HeaderMap::new(),
                patroni::MAX_RESPONSE,
                patroni::PROBE_TIMEOUT,
            )
            .await
            .map(|(status, body)| (status.as_u16(), body.to_vec()))
            .map_err(|e| e.to_string())
    })
}

/// The server end: `raw`, the end of its side of the stream, then whatever the client sends.
async fn serve(mut server: DuplexStream, raw: Vec<u8>) {
    if server.write_all(&raw).await.is_ok() && server.shutdown().await.is_ok() {
        let _ = tokio::io::copy(&mut server, &mut tokio::io::sink()).await;
    }
}

/// Whether the promotion gate opens on this `/primary` answer as a primary (scope `demo`).
#[must_use]
pub fn opens(status: u16, body: &[u8]) -> bool {
    patroni::judge(status, body, who()) == Verdict::Ready(Outcome::Primary)
}

/// Whether the hold check keeps the VIP on this answer (a running primary, scope `demo`), and
/// whether it claims failsafe mode.
#[must_use]
pub fn holds(status: u16, body: &[u8]) -> Option<bool> {
    match patroni::judge_status(status, body, who()) {
        Status::Primary { failsafe, .. } => Some(failsafe != super::Failsafe::Off),
        Status::NotPrimary(_) | Status::Unknown(_) => None,
    }
}

const fn who() -> patroni::Who<'static> {
    patroni::Who {
        scope: Some("demo"),
        member: Some("pg1"),
    }
}
