//! Test topologies for vip-agent, shared by the privileged tests, `cargo xtask demo` and the benchmark.
//!
//! * [`require_privileges`]: skip loudly when not root, fail under CI (a skip is not a pass there);
//! * [`NetNs`]: a network namespace with a unique name, removed on drop; processes started in it
//!   ([`NetNs::spawn`]) are killed by PID on drop; [`NetNs::run_in`] runs Rust code inside it;
//! * [`veth_pair`], [`Bridge`]: links between namespaces, with unique interface names;
//! * [`interrupt`]: what an interrupted `vip-bench` or `vip-soak` removes (its namespaces, its
//!   processes by PID, its directories and pins), since a signal runs no `Drop`;
//! * [`arp::ArpSocket`]: a raw-socket ARP prober;
//! * [`chaos`]: the fault suite (chaos driver and invariant checks) behind `tests/tests/fault_suite.rs`
//!   and `cargo xtask soak`.
//!
//! Processes enter a namespace with `nsenter --net` only (not `ip netns exec`), so they keep the
//! host's mount namespace and bpffs: pins made there outlive the process, as in production.
//!
//! Network rule: every address used lives inside namespaces created here (10.77.0.0/16).

pub mod arp;
pub mod bench;
pub mod bench_dataplane;
pub mod bench_patroni;
pub mod bench_rw;
pub mod chaos;
pub mod cluster;
pub mod flood;
pub mod interrupt;
pub mod ndp;
mod netns;
pub mod patroni;
mod pins;
pub mod postgres;
pub mod repmgr;
pub mod sock;
pub mod test_run;

pub use netns::{Bridge, ChildGuard, NetNs, unique_name, veth_pair};
pub use pins::{PinRoot, open_dataplane};

/// Poll `cond` every 20 ms until it holds; panic with `what` after `limit`. The bound is a
/// generous limit for a documented behaviour, not a measurement.
///
/// # Panics
/// When `cond` does not hold within `limit`.
pub fn eventually(limit: std::time::Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Environment variable that turns a privilege skip into a failure (set by `cargo xtask test` in CI).
pub const REQUIRE_PRIVILEGES: &str = "VIP_TESTS_REQUIRE_PRIVILEGES";

/// Whether the privileged test `test` can run: root, and network namespaces can be created.
///
/// Otherwise it prints a loud `SKIPPED` line and returns `false`, unless `CI=true` or
/// [`REQUIRE_PRIVILEGES`]`=1`, where it panics: under CI a skipped privileged test is a failure.
///
/// # Panics
/// Under CI, when the privileges are missing.
#[must_use]
pub fn require_privileges(test: &str) -> bool {
    let reason = if nix::unistd::geteuid().is_root() {
        if std::path::Path::new("/proc/self/ns/net").exists() {
            None
        } else {
            Some("network namespaces are not available")
        }
    } else {
        Some("needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for network namespaces)")
    };
    let Some(reason) = reason else {
        return true;
    };
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var(REQUIRE_PRIVILEGES).is_ok_and(|v| v == "1");
    assert!(
        !ci,
        "{test}: {reason}; privileged tests may not skip under CI"
    );
    eprintln!("SKIPPED {test}: {reason}. Run as root (cargo xtask test) to run it.");
    false
}

/// The `vip-agent` binary built beside the running test binary (`target/<profile>/vip-agent`).
///
/// # Panics
/// When it has not been built (`cargo xtask test` builds it; so does `cargo build -p vip-agent`).
#[must_use]
pub fn agent_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let bin = exe
        .parent()
        .and_then(std::path::Path::parent)
        .map(|dir| dir.join("vip-agent"))
        .expect("target dir");
    assert!(
        bin.is_file(),
        "{} missing: build it with `cargo build -p vip-agent`",
        bin.display()
    );
    bin
}

/// Parse `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Format a MAC as `aa:bb:cc:dd:ee:ff`.
#[must_use]
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = [0x02, 0xab, 0, 1, 0xfe, 0xff];
        assert_eq!(parse_mac(&format_mac(&mac)), Some(mac));
        assert_eq!(parse_mac("02:ab:00:01:fe"), None);
        assert_eq!(parse_mac("02:ab:00:01:fe:ff:00"), None);
        assert_eq!(parse_mac("zz:ab:00:01:fe:ff"), None);
    }
}
