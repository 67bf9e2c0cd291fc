//! `vip-agent status`: what the pinned data plane says about each VIP, as text or JSON.
//!
//! Pure functions of a [`VipSnapshot`] (read by [`crate::dataplane::inspect`]) and the kernel
//! monotonic time at which it is shown; the binary only reads the pins and prints.

use std::{net::Ipv4Addr, path::Path};

use crate::dataplane::VipSnapshot;

const NS_PER_MS: u64 = 1_000_000;

/// What `vip-agent status` says about one VIP at one instant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VipStatus {
    /// The interface whose pins were read.
    pub interface: String,
    /// The VIP.
    pub vip: Ipv4Addr,
    /// The data plane answers ARP for the VIP now (its deadline lies ahead).
    pub answering: bool,
    /// Until the deadline; 0 when fenced or expired.
    pub deadline_in_ms: u64,
    /// ARP requests for the VIP answered by the XDP program.
    pub arp_replied: u64,
    /// ARP requests for the VIP dropped (fenced, or a non-unicast sender).
    pub arp_dropped: u64,
    /// IPv4 packets to the VIP dropped while fenced.
    pub ipv4_dropped: u64,
    /// ARP frames from another MAC claiming the VIP while this node answered.
    pub conflicts: u64,
    /// Since the last ARP reply; `None` (JSON `null`) when the program never replied.
    pub last_reply_ago_ms: Option<u64>,
}

impl VipStatus {
    /// The snapshot `s` of `interface` as seen at kernel monotonic time `now_ns`.
    #[must_use]
    pub fn at(interface: &str, s: &VipSnapshot, now_ns: u64) -> Self {
        Self {
            interface: interface.to_owned(),
            vip: s.vip,
            answering: s.state.answering_at(now_ns),
            deadline_in_ms: s.state.deadline_ns.saturating_sub(now_ns) / NS_PER_MS,
            arp_replied: s.stats.arp_replied,
            arp_dropped: s.stats.arp_dropped,
            ipv4_dropped: s.stats.ipv4_dropped,
            conflicts: s.stats.conflicts,
            last_reply_ago_ms: (s.stats.last_reply_ns != 0)
                .then(|| now_ns.saturating_sub(s.stats.last_reply_ns) / NS_PER_MS),
        }
    }

    /// The one-line text form:
    /// `eth1 10.0.0.10 answering deadline_in_ms=2500 arp_replied=7 ... last_reply_ago_ms=40`.
    #[must_use]
    pub fn text(&self) -> String {
        format!(
            "{} {} {} deadline_in_ms={} arp_replied={} arp_dropped={} ipv4_dropped={} conflicts={} last_reply_ago_ms={}",
            self.interface,
            self.vip,
            if self.answering {
                "answering"
            } else {
                "fenced"
            },
            self.deadline_in_ms,
            self.arp_replied,
            self.arp_dropped,
            self.ipv4_dropped,
            self.conflicts,
            self.last_reply_ago_ms
                .map_or_else(|| "never".to_owned(), |ms| ms.to_string()),
        )
    }
}

/// What `vip-agent status` prints: `stdout` (the report), and `stderr` for a human when stdout
/// must stay machine-readable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// For stdout, with its final newline.
    pub stdout: String,
    /// For stderr (with its final newline), or empty.
    pub stderr: String,
}

/// The report for `interface` whose pins under `pin_path` held `snapshots` (`None`: nothing
/// pinned) at kernel monotonic time `now_ns`: one text line per VIP, or a pretty JSON array of
/// [`VipStatus`] objects (`[]` when nothing is pinned, the reason on stderr).
///
/// # Errors
/// When the JSON cannot be rendered.
pub fn report(
    interface: &str,
    pin_path: &Path,
    snapshots: Option<&[VipSnapshot]>,
    now_ns: u64,
    json: bool,
) -> Result<Report, serde_json::Error> {
    let Some(snapshots) = snapshots else {
        let message = format!(
            "{interface}: no vip-agent data plane pinned under {}\n",
            pin_path.display()
        );
        return Ok(if json {
            Report {
                stdout: "[]\n".to_owned(),
                stderr: message,
            }
        } else {
            Report {
                stdout: message,
                stderr: String::new(),
            }
        });
    };
    let statuses: Vec<VipStatus> = snapshots
        .iter()
        .map(|s| VipStatus::at(interface, s, now_ns))
        .collect();
    let stdout = if json {
        let mut text = serde_json::to_string_pretty(&statuses)?;
        text.push('\n');
        text
    } else {
        statuses.iter().map(|s| s.text() + "\n").collect()
    };
    Ok(Report {
        stdout,
        stderr: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use vip_common::{VipState, VipStats};

    use super::*;

    const MS: u64 = 1_000_000;
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const NOW: u64 = 1_000 * MS;

    fn snapshot(state: VipState, stats: VipStats) -> VipSnapshot {
        VipSnapshot {
            vip: Ipv4Addr::new(10, 0, 0, 10),
            state,
            stats,
        }
    }

    fn answering() -> VipSnapshot {
        snapshot(
            VipState::answering_until(MAC, NOW + 2_500 * MS),
            VipStats {
                arp_replied: 7,
                arp_dropped: 1,
                ipv4_dropped: 2,
                conflicts: 3,
                last_reply_ns: NOW - 40 * MS,
            },
        )
    }

    #[test]
    fn status_json_answering_vip() {
        let json = serde_json::to_value(vec![VipStatus::at("eth1", &answering(), NOW)])
            .expect("serialises");
        assert_eq!(
            json,
            serde_json::json!([{
                "interface": "eth1",
                "vip": "10.0.0.10",
                "answering": true,
                "deadline_in_ms": 2_500,
                "arp_replied": 7,
                "arp_dropped": 1,
                "ipv4_dropped": 2,
                "conflicts": 3,
                "last_reply_ago_ms": 40,
            }])
        );
    }

    #[test]
    fn status_json_fenced_vip_that_never_replied() {
        let s = snapshot(VipState::fenced(MAC), VipStats::default());
        let json = serde_json::to_value(VipStatus::at("eth1", &s, NOW)).expect("serialises");
        assert_eq!(json["answering"], false);
        assert_eq!(json["deadline_in_ms"], 0);
        assert!(json["last_reply_ago_ms"].is_null(), "{json}");
    }

    #[test]
    fn status_expired_deadline_is_fenced_with_zero_remaining() {
        let s = snapshot(
            VipState::answering_until(MAC, NOW - MS),
            VipStats::default(),
        );
        let status = VipStatus::at("eth1", &s, NOW);
        assert!(!status.answering);
        assert_eq!(status.deadline_in_ms, 0);
    }

    #[test]
    fn status_text_is_unchanged() {
        assert_eq!(
            VipStatus::at("eth1", &answering(), NOW).text(),
            "eth1 10.0.0.10 answering deadline_in_ms=2500 arp_replied=7 arp_dropped=1 \
             ipv4_dropped=2 conflicts=3 last_reply_ago_ms=40"
        );
        let fenced = snapshot(VipState::fenced(MAC), VipStats::default());
        assert_eq!(
            VipStatus::at("eth1", &fenced, NOW).text(),
            "eth1 10.0.0.10 fenced deadline_in_ms=0 arp_replied=0 arp_dropped=0 \
             ipv4_dropped=0 conflicts=0 last_reply_ago_ms=never"
        );
    }

    #[test]
    fn report_text_one_line_per_vip() {
        let fenced = snapshot(VipState::fenced(MAC), VipStats::default());
        let r = report(
            "eth1",
            Path::new("/sys/fs/bpf/vip-agent"),
            Some(&[answering(), fenced]),
            NOW,
            false,
        )
        .expect("renders");
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{}", r.stdout);
        assert!(
            lines[0].starts_with("eth1 10.0.0.10 answering "),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("eth1 10.0.0.10 fenced "), "{lines:?}");
        assert!(r.stdout.ends_with('\n'));
        assert_eq!(r.stderr, "");
    }

    #[test]
    fn report_json_is_an_array() {
        let r =
            report("eth1", Path::new("/pins"), Some(&[answering()]), NOW, true).expect("renders");
        let json: serde_json::Value = serde_json::from_str(&r.stdout).expect("valid JSON");
        assert_eq!(json[0]["deadline_in_ms"], 2_500, "{json}");
        assert_eq!(json.as_array().map(Vec::len), Some(1));
        assert_eq!(r.stderr, "");
    }

    #[test]
    fn report_nothing_pinned() {
        let text = report("eth9", Path::new("/pins"), None, NOW, false).expect("renders");
        assert_eq!(
            text,
            Report {
                stdout: "eth9: no vip-agent data plane pinned under /pins\n".to_owned(),
                stderr: String::new(),
            }
        );
        // JSON keeps stdout parseable; the reason goes to the human.
        let json = report("eth9", Path::new("/pins"), None, NOW, true).expect("renders");
        assert_eq!(json.stdout, "[]\n");
        assert_eq!(json.stderr, text.stdout);
        // An empty pinned map is an empty array too, without the message.
        let empty = report("eth9", Path::new("/pins"), Some(&[]), NOW, true).expect("renders");
        assert_eq!(empty.stdout, "[]\n");
        assert_eq!(empty.stderr, "");
    }
}
