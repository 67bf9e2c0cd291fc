//! The Patroni REST client's response handling without a socket, exposed to the fuzz targets in
//! `fuzz/` (compiled only under `--cfg fuzzing`, which `cargo fuzz` sets; not an API).

use super::{Outcome, Status, Verdict, patroni};

/// [`patroni::parse_response`]: `Ok(Some((status, body)))` for a complete response.
///
/// # Errors
/// As the parser: why the bytes are not an HTTP response.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, String> {
    patroni::parse_response(buf, eof).map(|r| r.map(|r| (r.status, r.body)))
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
