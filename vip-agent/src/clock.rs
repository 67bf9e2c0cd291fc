//! The one clock the agent and the XDP program share.
//!
//! `bpf_ktime_get_ns()` is the kernel's `CLOCK_MONOTONIC` in nanoseconds, and deadlines in the data
//! plane are written in that clock. Everything that computes a deadline reads it from here, never from
//! `Instant` arithmetic or wall time, so there is nothing to convert.

/// Kernel `CLOCK_MONOTONIC` now, in nanoseconds (the clock of `bpf_ktime_get_ns`).
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// Where a process's time-namespace offsets are listed (Linux 5.6; absent before: no offsets).
const TIMENS_OFFSETS: &str = "/proc/self/timens_offsets";

/// Why the agent's clock is not the XDP program's.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// Inside a time namespace, `CLOCK_MONOTONIC` includes an offset that `bpf_ktime_get_ns()`
    /// does not see: every deadline written to the map would be off by it.
    #[error(
        "this process runs in a time namespace whose CLOCK_MONOTONIC is offset by {secs} s \
         {nanos} ns from the kernel's; the XDP program's clock (bpf_ktime_get_ns) has no offset, \
         so every deadline would be wrong by that much: run vip-agent outside the time namespace \
         (or with a zero monotonic offset)"
    )]
    MonotonicOffset { secs: i64, nanos: i64 },
    /// `/proc/self/timens_offsets` exists but cannot be read or understood.
    #[error("read {TIMENS_OFFSETS}: {reason}")]
    Read { reason: String },
}

/// The `monotonic` line of a `timens_offsets` text: `(seconds, nanoseconds)`.
fn monotonic_offset(text: &str) -> Result<(i64, i64), ClockError> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some("monotonic"))
        .ok_or_else(|| ClockError::Read {
            reason: "no monotonic line".to_owned(),
        })?;
    let mut words = line.split_whitespace().skip(1);
    let mut number = |what| {
        words
            .next()
            .and_then(|w| w.parse::<i64>().ok())
            .ok_or_else(|| ClockError::Read {
                reason: format!("the monotonic {what} are not a number: {line:?}"),
            })
    };
    Ok((number("seconds")?, number("nanoseconds")?))
}

/// Check that [`monotonic_ns`] is the clock the XDP program reads: no time-namespace offset.
///
/// # Errors
/// [`ClockError::MonotonicOffset`] inside a time namespace with a non-zero monotonic offset.
pub fn check_shared_with_bpf() -> Result<(), ClockError> {
    let text = match std::fs::read_to_string(TIMENS_OFFSETS) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(ClockError::Read {
                reason: e.to_string(),
            });
        }
    };
    match monotonic_offset(&text)? {
        (0, 0) => Ok(()),
        (secs, nanos) => Err(ClockError::MonotonicOffset { secs, nanos }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_monotonic_offset_is_read_from_timens_offsets() {
        let zero = "monotonic           0         0\nboottime            0         0\n";
        assert_eq!(monotonic_offset(zero).expect("parses"), (0, 0));
        let shifted = "monotonic        3600       250\nboottime            0         0\n";
        assert_eq!(monotonic_offset(shifted).expect("parses"), (3600, 250));
        assert!(monotonic_offset("boottime 0 0\n").is_err());
        assert!(monotonic_offset("monotonic x 0\n").is_err());
    }

    #[test]
    fn this_process_shares_the_bpf_clock() {
        check_shared_with_bpf().expect("tests run outside a time namespace");
    }

    #[test]
    fn monotonic_ns_moves_forward_with_sleep() {
        let a = monotonic_ns();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let b = monotonic_ns();
        assert!(b >= a + 5_000_000, "{a} -> {b}");
    }
}
