//! The Linux capabilities the agent needs, checked once before it touches anything.
//!
//! Without them the agent fails part-way, and not always safely: an agent restarted without
//! `CAP_NET_ADMIN` adopts its pinned program (no new BPF load needed), marks the VIP answering and
//! then cannot add the address, so the node answers ARP for an address it does not carry. Refusing
//! to start, naming every missing capability, is the safe and the clear outcome.
//!
//! The set (measured on Linux 6.18 by `tests/tests/agent_ops.rs`, which runs the agent under
//! `setpriv` with exactly it): `CAP_BPF` (maps, program), `CAP_PERFMON` (without it the verifier
//! refuses the program's packet pointer comparisons), `CAP_NET_ADMIN` (XDP attach, addresses),
//! `CAP_NET_RAW` (gratuitous ARP). Before Linux 5.8 `CAP_SYS_ADMIN` stands for the first two.

use std::io;

/// Capability numbers (`linux/capability.h`).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Why the agent will not start.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("reading the effective capabilities (/proc/self/status)")]
    Read(#[source] io::Error),
    #[error("reading the effective capabilities: /proc/self/status has no valid CapEff line")]
    Parse,
    #[error(
        "missing capabilities: {}. vip-agent needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN), \
         CAP_NET_ADMIN and CAP_NET_RAW: run it as root, or grant them (AmbientCapabilities= in the \
         unit, as dist/systemd/vip-agent.service bounds them)",
        missing.join(", ")
    )]
    Missing { missing: Vec<&'static str> },
}

/// The capabilities missing from the effective set `effective` (a `CapEff` bit mask), by name.
#[must_use]
pub fn missing(effective: u64) -> Vec<&'static str> {
    let has = |cap: u32| effective & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        if !has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    missing
}

/// The `CapEff` mask of a `/proc/<pid>/status` text.
fn effective(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Check this process's effective capabilities.
///
/// # Errors
/// [`CapsError::Missing`] naming every missing capability; or when they cannot be read.
pub fn check() -> Result<(), CapsError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(CapsError::Read)?;
    let missing = missing(effective(&status).ok_or(CapsError::Parse)?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CapsError::Missing { missing })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIT: fn(u32) -> u64 = |cap| 1u64 << cap;

    #[test]
    fn root_and_the_minimal_set_pass() {
        assert!(missing(0x0000_01ff_ffff_ffff).is_empty(), "root on 6.x");
        let minimal = BIT(CAP_BPF) | BIT(CAP_PERFMON) | BIT(CAP_NET_ADMIN) | BIT(CAP_NET_RAW);
        assert!(missing(minimal).is_empty());
        // Before 5.8 there is no CAP_BPF/CAP_PERFMON: CAP_SYS_ADMIN covers them.
        let old = BIT(CAP_SYS_ADMIN) | BIT(CAP_NET_ADMIN) | BIT(CAP_NET_RAW);
        assert!(missing(old).is_empty());
    }

    #[test]
    fn every_missing_capability_is_named() {
        assert_eq!(
            missing(0),
            ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_RAW"]
        );
        let no_net_admin = BIT(CAP_BPF) | BIT(CAP_PERFMON) | BIT(CAP_NET_RAW);
        assert_eq!(missing(no_net_admin), ["CAP_NET_ADMIN"]);
        let no_perfmon = BIT(CAP_BPF) | BIT(CAP_NET_ADMIN) | BIT(CAP_NET_RAW);
        assert_eq!(missing(no_perfmon), ["CAP_PERFMON"]);
    }

    #[test]
    fn cap_eff_is_parsed_from_proc_status() {
        let status = "Name:\tvip-agent\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t0000008000003000\nCapBnd:\t000001ffffffffff\n";
        assert_eq!(
            effective(status),
            Some(BIT(CAP_BPF) | BIT(CAP_NET_ADMIN) | BIT(CAP_NET_RAW))
        );
        assert_eq!(effective("Name:\tx\n"), None);
        assert_eq!(effective("CapEff:\tnothex\n"), None);
    }

    #[test]
    fn this_process_can_be_checked() {
        // Whatever this test runs with, the check reads and parses it.
        match check() {
            Ok(()) | Err(CapsError::Missing { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
}
