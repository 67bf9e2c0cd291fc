//! `vip-agent status`: what the pinned data plane says about each VIP, as text or JSON.
//!
//! Pure functions of a [`VipSnapshot`] (read by [`crate::dataplane::inspect`]) and the kernel
//! monotonic time at which it is shown; the binary only reads the pins and prints.
//!
//! The promotion gate and the Patroni failsafe policy live in the daemon, not in the maps. With
//! `--metrics-address`, the binary also fetches the daemon's JSON `/status` ([`fetch_status`], the
//! [`AgentStatus`] document the daemon serves), and [`report_with_gates`] adds one `gate` line
//! (JSON: a `gate` object) per VIP it names. That part is optional and best effort: without a
//! reachable daemon, the report is the usual one plus a note on stderr.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use crate::dataplane::VipSnapshot;
pub use crate::observe::{AgentStatus, GateView};

const NS_PER_MS: u64 = 1_000_000;

/// What `vip-agent status` says about one VIP at one instant.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VipStatus {
    /// The interface whose pins were read.
    pub interface: String,
    /// The VIP.
    pub vip: IpAddr,
    /// The data plane answers ARP (IPv6: NDP) for the VIP now (its deadline lies ahead).
    pub answering: bool,
    /// Until the deadline; 0 when fenced or expired.
    pub deadline_in_ms: u64,
    /// ARP requests (IPv6: Neighbor Solicitations) for the VIP answered by the data plane. The
    /// output keys keep their first names (`arp_replied`, `arp_dropped`, `ipv4_dropped`), so that
    /// scripts reading them keep working (the metrics say `neighbor` with a `family` label).
    pub arp_replied: u64,
    /// ARP requests (IPv6: Neighbor Solicitations) for the VIP dropped (fenced, or a non-unicast
    /// sender).
    pub arp_dropped: u64,
    /// IP packets (IPv4, or IPv6 for an IPv6 VIP) to the VIP dropped while fenced.
    pub ipv4_dropped: u64,
    /// ARP frames (IPv6: Neighbor Advertisements) from another MAC claiming the VIP while this
    /// node answered.
    pub conflicts: u64,
    /// Since the last ARP reply; `None` (JSON `null`) when the program never replied.
    pub last_reply_ago_ms: Option<u64>,
    /// Packets from the VIP this node tried to send while fenced, dropped by the egress program
    /// (JSON only).
    pub sent_ip_dropped: u64,
    /// ARP (IPv6: Neighbor Discovery) from the VIP this node tried to send while fenced, dropped
    /// (JSON only).
    pub sent_arp_dropped: u64,
    /// The promotion gate as the daemon reports it (only with `--metrics-address`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateView>,
}

/// The largest `/status` document read (a few hundred bytes per VIP).
const STATUS_LIMIT: usize = 4 * 1024 * 1024;

/// `GET /status` from the daemon at `address`, within `timeout`.
///
/// # Errors
/// A sentence naming what failed (the exchange, a status other than 200, a document that is not
/// the agent's).
pub fn fetch_status(address: SocketAddr, timeout: Duration) -> Result<AgentStatus, String> {
    let (status, body) =
        crate::http::client::get_blocking(address, "/status", timeout, STATUS_LIMIT)
            .map_err(|e| format!("{e} (is the daemon running, with this metrics-address?)"))?;
    if status != http::StatusCode::OK {
        return Err(format!("the daemon answered {status} to GET /status"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("read the /status document: {e}"))
}

/// The gate of every VIP the daemon reports, by VIP.
#[must_use]
pub fn gate_views(status: &AgentStatus) -> BTreeMap<IpAddr, GateView> {
    status
        .vips
        .iter()
        .filter_map(|v| Some((v.vip, v.gate.clone()?)))
        .collect()
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
            arp_replied: s.stats.replied,
            arp_dropped: s.stats.requests_dropped,
            ipv4_dropped: s.stats.ip_dropped,
            conflicts: s.stats.conflicts,
            last_reply_ago_ms: (s.stats.last_reply_ns != 0)
                .then(|| now_ns.saturating_sub(s.stats.last_reply_ns) / NS_PER_MS),
            sent_ip_dropped: s.egress.ip_dropped,
            sent_arp_dropped: s.egress.neighbour_dropped,
            gate: None,
        }
    }

    /// The one-line text form:
    /// `eth1 10.0.0.10 answering deadline_in_ms=2500 arp_replied=7 ... last_reply_ago_ms=40`
    /// (its nine fields are a stable format; the egress counters are in the JSON form).
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
    report_with_gates(interface, pin_path, snapshots, now_ns, json, None)
}

/// [`report`], plus each VIP's gate from `gates` (`--metrics-address`): `Ok` the daemon's views
/// by VIP (text: a `gate ...` line after the VIP's line; JSON: a `gate` object), `Err` why the
/// daemon could not be asked (a note on stderr, the report as without it).
///
/// # Errors
/// When the JSON cannot be rendered.
pub fn report_with_gates(
    interface: &str,
    pin_path: &Path,
    snapshots: Option<&[VipSnapshot]>,
    now_ns: u64,
    json: bool,
    gates: Option<&Result<BTreeMap<IpAddr, GateView>, String>>,
) -> Result<Report, serde_json::Error> {
    let note = match gates {
        Some(Err(why)) => format!("note: gate not shown: {why}\n"),
        _ => String::new(),
    };
    let views = match gates {
        Some(Ok(views)) => Some(views),
        _ => None,
    };
    let mut report = report_pins(interface, pin_path, snapshots, now_ns, json, views)?;
    report.stderr.push_str(&note);
    Ok(report)
}

fn report_pins(
    interface: &str,
    pin_path: &Path,
    snapshots: Option<&[VipSnapshot]>,
    now_ns: u64,
    json: bool,
    views: Option<&BTreeMap<IpAddr, GateView>>,
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
        .map(|s| VipStatus {
            gate: views.and_then(|v| v.get(&s.vip).cloned()),
            ..VipStatus::at(interface, s, now_ns)
        })
        .collect();
    let stdout = if json {
        let mut text = serde_json::to_string_pretty(&statuses)?;
        text.push('\n');
        text
    } else {
        statuses
            .iter()
            .map(|s| match &s.gate {
                Some(g) => format!("{}\n  {}\n", s.text(), g.text()),
                None => s.text() + "\n",
            })
            .collect()
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
            vip: IpAddr::from([10, 0, 0, 10]),
            state,
            stats,
            egress: vip_common::EgressStats {
                ip_dropped: 4,
                neighbour_dropped: 5,
            },
        }
    }

    fn answering() -> VipSnapshot {
        snapshot(
            VipState::answering_until(MAC, NOW + 2_500 * MS),
            VipStats {
                replied: 7,
                requests_dropped: 1,
                ip_dropped: 2,
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
                "sent_ip_dropped": 4,
                "sent_arp_dropped": 5,
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

    /// What a daemon with two VIPs serves on `/status`: one gate open, one waiting.
    fn daemon() -> crate::metrics::Registry {
        use crate::{
            gate::{GateState, GateStatus, Outcome},
            observe::Observation,
        };
        let r = crate::metrics::Registry::default();
        for (vip, key) in [
            ([10, 0, 0, 10], "/service/pg/leader"),
            ([10, 0, 0, 11], "/service/pg2/leader"),
        ] {
            r.apply(Observation::Vip {
                vip: IpAddr::from(vip),
                interface: "eth1".to_owned(),
                key: key.to_owned(),
            });
        }
        r.apply(Observation::Source {
            key: "/service/pg/leader".to_owned(),
            kind: crate::patroni_rest::KIND.observed(),
            reached: true,
            detail: 200,
        });
        r.apply(Observation::Gate {
            vip: IpAddr::from([10, 0, 0, 10]),
            gate: GateStatus {
                state: GateState::Open,
                last_wait_ns: 12_000_000,
                last_outcome: Some(Outcome::Primary),
                outcomes: [1, 0, 0, 0, 0],
                demotions: 1,
                patroni_url: "http://10.0.0.21:8008".to_owned(),
                patroni_url_source: Some(crate::gate::UrlSource::MemberKey),
                ..GateStatus::default()
            }
            .observation(),
        });
        r.apply(Observation::Gate {
            vip: IpAddr::from([10, 0, 0, 11]),
            gate: GateStatus {
                state: GateState::Waiting,
                waiting_since_ns: crate::clock::monotonic_ns().saturating_sub(1_500_000_000),
                last_probe: "200 but role replica, state running: \"x\"".to_owned(),
                ..GateStatus::default()
            }
            .observation(),
        });
        r
    }

    /// The daemon's document, through its JSON form.
    fn daemon_status() -> AgentStatus {
        let json = serde_json::to_string(&daemon().status()).expect("serialises");
        serde_json::from_str(&json).expect("reads back")
    }

    #[test]
    fn gate_views_read_back_what_the_daemon_reports() {
        let status = daemon_status();
        assert_eq!(status.source.as_deref(), Some("patroni"));
        assert_eq!(
            status
                .vips
                .iter()
                .map(|v| (v.source.as_deref(), v.source_reached))
                .collect::<Vec<_>>(),
            [(Some("patroni"), true), (Some("patroni"), false)]
        );
        assert!(
            !status.healthy,
            "the second key's source is not reached yet"
        );
        let views = gate_views(&status);
        assert_eq!(views.len(), 2, "{views:?}");
        let open = &views[&IpAddr::from([10, 0, 0, 10])];
        assert_eq!(
            open,
            &GateView {
                state: "open".to_owned(),
                waiting_ms: 0,
                last_probe: None,
                last_outcome: Some("primary".to_owned()),
                last_wait_ms: 12,
                failsafe_holding: false,
                demotions: 1,
                patroni_url: Some("http://10.0.0.21:8008".to_owned()),
                patroni_url_source: Some("member-key".to_owned()),
                source: Some("patroni".to_owned()),
                source_reached: Some(true),
            }
        );
        assert!(
            open.text().contains(" source=patroni source_reached=true"),
            "{}",
            open.text()
        );
        let waiting = &views[&IpAddr::from([10, 0, 0, 11])];
        assert_eq!(waiting.state, "waiting");
        assert!(waiting.waiting_ms >= 1_500, "{waiting:?}");
        assert_eq!(
            waiting.last_probe.as_deref(),
            Some("200 but role replica, state running: \"x\""),
        );
        assert_eq!(waiting.last_outcome, None);
        assert_eq!(
            (waiting.source.as_deref(), waiting.source_reached),
            (Some("patroni"), Some(false)),
            "its key's source not reached yet"
        );
        assert!(gate_views(&AgentStatus::default()).is_empty());
    }

    #[test]
    fn report_with_gates_adds_a_line_per_vip_or_a_note() {
        let views = gate_views(&daemon_status());
        let r = report_with_gates(
            "eth1",
            Path::new("/pins"),
            Some(&[answering()]),
            NOW,
            false,
            Some(&Ok(views.clone())),
        )
        .expect("renders");
        let lines: Vec<&str> = r.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{}", r.stdout);
        assert!(lines[0].starts_with("eth1 10.0.0.10 answering "));
        assert_eq!(
            lines[1],
            "  gate state=open waiting_ms=0 last_outcome=primary last_wait_ms=12 failsafe_holding=false \
             demotions=1 patroni_url=http://10.0.0.21:8008 patroni_url_from=member-key \
             source=patroni source_reached=true"
        );
        let j = report_with_gates(
            "eth1",
            Path::new("/pins"),
            Some(&[answering()]),
            NOW,
            true,
            Some(&Ok(views)),
        )
        .expect("renders");
        let json: serde_json::Value = serde_json::from_str(&j.stdout).expect("JSON");
        assert_eq!(json[0]["gate"]["state"], "open", "{json}");
        assert_eq!(json[0]["gate"]["last_wait_ms"], 12, "{json}");
        // The daemon cannot be asked: the usual report, and why on stderr.
        let plain =
            report("eth1", Path::new("/pins"), Some(&[answering()]), NOW, false).expect("renders");
        let failed = report_with_gates(
            "eth1",
            Path::new("/pins"),
            Some(&[answering()]),
            NOW,
            false,
            Some(&Err(
                "--metrics-address 127.0.0.1:9: connect: refused".to_owned()
            )),
        )
        .expect("renders");
        assert_eq!(failed.stdout, plain.stdout);
        assert_eq!(
            failed.stderr,
            "note: gate not shown: --metrics-address 127.0.0.1:9: connect: refused\n"
        );
    }

    /// `vip-agent status --metrics-address` against the daemon's real server: the document
    /// round-trips, and failures are named.
    #[test]
    fn fetch_status_reads_the_daemon_and_names_failures() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let listener = runtime
            .block_on(crate::http::server::bind(
                "127.0.0.1:0".parse().expect("address"),
            ))
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let stop = tokio_util::sync::CancellationToken::new();
        let registry = daemon();
        let served = runtime.spawn(crate::http::server::serve(
            listener,
            registry.clone(),
            stop.clone(),
        ));
        let fetched = fetch_status(address, Duration::from_secs(5)).expect("the document");
        let mut expected = registry.status();
        // Waiting time moves on between the two reads.
        for (a, b) in expected.vips.iter_mut().zip(&fetched.vips) {
            if let (Some(a), Some(b)) = (&mut a.gate, &b.gate) {
                a.waiting_ms = b.waiting_ms;
            }
        }
        assert_eq!(fetched, expected);
        assert_eq!(gate_views(&fetched).len(), 2);
        stop.cancel();
        runtime.block_on(served).expect("server");
        drop(runtime);
        // Nothing listens there any more.
        let e = fetch_status(address, Duration::from_secs(5)).expect_err("refused");
        assert!(e.starts_with(&format!("connect {address}")), "{e}");
    }
}
