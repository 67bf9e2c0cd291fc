//! Every parser of bytes that come from outside the agent and are not frames, config or etcd
//! values (those have targets of their own), on arbitrary input:
//! * an HTTP response from Patroni's REST API, as the server end of an in-memory pipe to the
//!   probe's hyper client (`http/client.rs`: status line, headers, Content-Length, chunked
//!   encoding, a body ended by the connection, the body limit), then the gate's and the hold
//!   check's reading of it (`gate/patroni.rs`);
//! * a PEM file and the DER certificate in it (`cert.rs`, which reads notBefore/notAfter by hand);
//! * a request and a reply on the repmgr event socket (`repmgr/protocol.rs`).
//!
//! Properties: nothing panics; the gate opens, and the hold check keeps the VIP, only on HTTP 200
//! with a JSON object whose `role` is `master`/`primary` and `state` is `running`; a decoded repmgr
//! request or reply encodes back to itself; a parsed response's body never exceeds the input.
//!
//! Input: one selector byte, then the bytes for that parser.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use vip_agent::{
    cert::pem_problem,
    gate::fuzzing::{exchange, holds, opens},
    repmgr::{EventRequest, Reply},
};

/// What the gate may accept: HTTP 200 and a running primary's document.
fn running_primary(status: u16, body: &[u8]) -> bool {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    status == 200
        && matches!(
            doc.get("role").and_then(serde_json::Value::as_str),
            Some("master" | "primary")
        )
        && doc.get("state").and_then(serde_json::Value::as_str) == Some("running")
}

fn http(data: &[u8]) {
    if let Ok((status, body)) = exchange(data) {
        assert!(body.len() <= data.len(), "a body longer than the response");
        if opens(status, &body) || holds(status, &body).is_some() {
            assert!(
                running_primary(status, &body),
                "accepted {status} {:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }
    // The bytes as a body, behind a valid head: the judges on arbitrary documents.
    for status in [200, 503] {
        if opens(status, data) || holds(status, data).is_some() {
            assert!(running_primary(status, data));
        }
    }
}

fn cert(data: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(1_765_000_000);
    let _ = pem_problem(data, now);
    let pem = format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        base64::engine::general_purpose::STANDARD.encode(data)
    );
    let _ = pem_problem(pem.as_bytes(), now);
}

fn repmgr(data: &[u8]) {
    if let Ok(request) = EventRequest::decode(data) {
        let again = EventRequest::decode(request.encode().as_bytes()).expect("re-decodes");
        assert_eq!(again, request);
    }
    if let Ok(reply) = Reply::decode(data) {
        let again = Reply::decode(reply.encode().as_bytes()).expect("re-decodes");
        assert_eq!(again, reply);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => http(rest),
        1 => cert(rest),
        _ => repmgr(rest),
    }
});
