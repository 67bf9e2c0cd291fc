//! The metrics registry: what the agent reports, rendered as the Prometheus text exposition for
//! `/metrics` ([`crate::http::server`] serves it): per VIP role, deadline remaining, transitions,
//! last event -> data plane latency, whether the leader source is reached and its progress (named
//! by its [`SourceKind`]), and the XDP per-CPU counters summed.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use vip_common::{EgressStats, VipState, VipStats};

use crate::{
    clock::monotonic_ns,
    gate::{GateState, GateStatus, Outcome},
    hooks::{HookEvent, HookOutcome, HookReport},
    leadership::SourceKind,
};

/// What the agent knows about one VIP, for the metrics page.
#[derive(Clone, Debug, Default)]
pub struct VipReport {
    pub vip: Option<IpAddr>,
    pub interface: String,
    pub trigger_key: String,
    /// The data plane's current entry.
    pub state: Option<VipState>,
    pub stats: VipStats,
    /// The TC egress program's counters.
    pub egress: EgressStats,
    /// Promotions + demotions seen by the agent.
    pub transitions: u64,
    /// Last watch event -> map write, in microseconds.
    pub last_event_to_dataplane_us: u64,
    /// The promotion gate in front of this VIP.
    pub gate: GateStatus,
    /// `on-promote` / `on-demote` runs.
    pub hooks: HookStats,
}

/// Finished hook runs of one VIP, indexed by [`HookEvent::index`] and [`HookOutcome::index`].
#[derive(Clone, Copy, Debug, Default)]
pub struct HookStats {
    pub runs: [[u64; HookOutcome::ALL.len()]; HookEvent::ALL.len()],
    pub attempts: [u64; HookEvent::ALL.len()],
    pub last_duration: [Duration; HookEvent::ALL.len()],
    pub last_outcome: [Option<HookOutcome>; HookEvent::ALL.len()],
}

/// Reads the data plane's current entries at scrape time: `(vip, state, summed counters, summed
/// egress counters)`.
pub type SnapshotFn =
    Arc<dyn Fn() -> Vec<(IpAddr, Option<VipState>, VipStats, EgressStats)> + Send + Sync>;

/// Shared registry the agent updates and the HTTP server reads.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    vips: Vec<VipReport>,
    /// The leader source's kind (one per agent), once known.
    source: Option<&'static SourceKind>,
    /// Per trigger key: whether its source's latest state was an answer.
    connected: BTreeMap<String, bool>,
    /// The highest [`crate::leadership::Leadership::detail`] reported.
    detail: i64,
    snapshot: Option<SnapshotFn>,
    /// `dcs-type: repmgr`: requests on the event socket by outcome (applied, ignored, rejected);
    /// `None` (not rendered) until the first one.
    repmgr_events: Option<BTreeMap<&'static str, u64>>,
}

impl Inner {
    /// Every key's source is reached (and there is at least one).
    fn all_connected(&self) -> bool {
        !self.connected.is_empty() && self.connected.values().all(|c| *c)
    }
}

impl Registry {
    /// Announce a VIP (once, at startup).
    pub fn register(&self, vip: IpAddr, interface: &str, trigger_key: &str) {
        let mut inner = self.lock();
        inner
            .connected
            .entry(trigger_key.to_owned())
            .or_insert(false);
        inner.vips.push(VipReport {
            vip: Some(vip),
            interface: interface.to_owned(),
            trigger_key: trigger_key.to_owned(),
            ..VipReport::default()
        });
    }

    /// Where fresh map entries come from at scrape time.
    pub fn set_snapshot(&self, snapshot: SnapshotFn) {
        self.lock().snapshot = Some(snapshot);
    }

    /// A data-plane write for `vip`: whether it changed the role, and its event -> map latency.
    pub fn record_write(&self, vip: IpAddr, transition: bool, latency_us: u64) {
        let mut inner = self.lock();
        if let Some(r) = inner.vips.iter_mut().find(|r| r.vip == Some(vip)) {
            r.transitions += u64::from(transition);
            r.last_event_to_dataplane_us = latency_us;
        }
    }

    /// A finished `on-promote` / `on-demote` run of `vip`.
    pub fn record_hook(&self, vip: IpAddr, event: HookEvent, report: &HookReport) {
        let mut inner = self.lock();
        if let Some(r) = inner.vips.iter_mut().find(|r| r.vip == Some(vip)) {
            let e = event.index();
            r.hooks.runs[e][report.outcome.index()] += 1;
            r.hooks.attempts[e] += u64::from(report.attempts);
            r.hooks.last_duration[e] = report.duration;
            r.hooks.last_outcome[e] = Some(report.outcome);
        }
    }

    /// The promotion gate status of `vip`.
    pub fn set_gate(&self, vip: IpAddr, status: &GateStatus) {
        let mut inner = self.lock();
        if let Some(r) = inner.vips.iter_mut().find(|r| r.vip == Some(vip)) {
            r.gate.clone_from(status);
        }
    }

    /// Replace the per-VIP reports (tests).
    pub fn set_vips(&self, vips: Vec<VipReport>) {
        self.lock().vips = vips;
    }

    /// The kind of leader source this agent follows (names its metrics and health message).
    pub fn set_source_kind(&self, kind: &'static SourceKind) {
        self.lock().source = Some(kind);
    }

    /// Record whether the source of `trigger_key` (of `kind`) was reached, and its progress.
    pub fn set_source(
        &self,
        trigger_key: &str,
        kind: &'static SourceKind,
        connected: bool,
        detail: i64,
    ) {
        let mut inner = self.lock();
        inner.source = Some(kind);
        inner.connected.insert(trigger_key.to_owned(), connected);
        inner.detail = inner.detail.max(detail);
    }

    /// Why `/health` is 503 (`None`: healthy): the leader source of some key is not reached.
    #[must_use]
    pub fn unhealthy(&self) -> Option<String> {
        let inner = self.lock();
        if inner.all_connected() {
            return None;
        }
        let what = inner.source.map_or("leader source", |k| k.what);
        Some(format!("{what} unreachable\n"))
    }

    /// Whether `vip` is one of this agent's VIPs (any, and at least one, when `None`).
    #[must_use]
    pub fn serves(&self, vip: Option<IpAddr>) -> bool {
        self.lock()
            .vips
            .iter()
            .any(|r| vip.is_none() || r.vip == vip)
    }

    /// A request on the repmgr event socket: `applied`, `ignored` or `rejected`.
    pub fn record_repmgr_event(&self, outcome: &'static str) {
        let mut inner = self.lock();
        let counts = inner.repmgr_events.get_or_insert_with(|| {
            ["applied", "ignored", "rejected"]
                .into_iter()
                .map(|o| (o, 0))
                .collect()
        });
        *counts.entry(outcome).or_default() += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pull fresh map entries into the reports.
    fn refresh(&self) {
        let snapshot = self.lock().snapshot.clone();
        let Some(snapshot) = snapshot else {
            return;
        };
        let fresh = snapshot();
        let mut inner = self.lock();
        for (vip, state, stats, egress) in fresh {
            if let Some(r) = inner.vips.iter_mut().find(|r| r.vip == Some(vip)) {
                r.state = state;
                r.stats = stats;
                r.egress = egress;
            }
        }
    }

    /// Whether this node answers for `vip` (or for any VIP when `None`) at this moment.
    #[must_use]
    pub fn answering(&self, vip: Option<IpAddr>) -> bool {
        self.refresh();
        let now = monotonic_ns();
        self.lock()
            .vips
            .iter()
            .filter(|r| vip.is_none() || r.vip == vip)
            .any(|r| r.state.is_some_and(|s| s.answering_at(now)))
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        self.refresh();
        let now = monotonic_ns();
        let inner = self.lock();
        let mut out = String::new();
        let mut family =
            |name: &str,
             kind: &str,
             help: &str,
             rows: &mut dyn Iterator<Item = (String, String)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (labels, value) in rows {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            };
        let labels = |r: &VipReport| {
            format!(
                "vip=\"{}\",interface=\"{}\",key=\"{}\"",
                r.vip.map_or_else(String::new, |v| v.to_string()),
                escape(&r.interface),
                escape(&r.trigger_key)
            )
        };
        let per_vip = |f: &dyn Fn(&VipReport) -> String| -> Vec<(String, String)> {
            inner.vips.iter().map(|r| (labels(r), f(r))).collect()
        };
        // One series per VIP and value of `label` (Prometheus' enum pattern).
        let per_vip_and = |label: &str,
                           values: &[&str],
                           f: &dyn Fn(&VipReport, usize) -> String|
         -> Vec<(String, String)> {
            inner
                .vips
                .iter()
                .flat_map(|r| {
                    values
                        .iter()
                        .enumerate()
                        .map(move |(i, v)| (format!("{},{label}=\"{v}\"", labels(r)), f(r, i)))
                })
                .collect()
        };
        family(
            "vip_agent_answering",
            "gauge",
            "1 while this node's XDP program answers for the VIP, 0 while it fences it.",
            &mut per_vip(&|r| u8::from(r.state.is_some_and(|s| s.answering_at(now))).to_string())
                .into_iter(),
        );
        family(
            "vip_agent_deadline_remaining_seconds",
            "gauge",
            "Time until the data plane stops answering unless leadership is confirmed again.",
            &mut per_vip(&|r| {
                let ns = r.state.map_or(0, |s| s.deadline_ns.saturating_sub(now));
                format!("{:.3}", ns as f64 / 1e9)
            })
            .into_iter(),
        );
        family(
            "vip_agent_transitions_total",
            "counter",
            "Promotions and demotions of the VIP on this node.",
            &mut per_vip(&|r| r.transitions.to_string()).into_iter(),
        );
        family(
            "vip_agent_event_to_dataplane_microseconds",
            "gauge",
            "Last leader source answer -> BPF map write latency.",
            &mut per_vip(&|r| r.last_event_to_dataplane_us.to_string()).into_iter(),
        );
        for (name, help, get) in [
            (
                "vip_agent_xdp_arp_replied_total",
                "ARP requests (IPv6: Neighbor Solicitations) for the VIP answered by the data plane.",
                (|s: &VipStats| s.replied) as fn(&VipStats) -> u64,
            ),
            (
                "vip_agent_xdp_arp_dropped_total",
                "ARP requests (IPv6: Neighbor Solicitations) for the VIP dropped by the data plane.",
                |s| s.requests_dropped,
            ),
            (
                "vip_agent_xdp_ipv4_dropped_total",
                "IP packets (IPv4, or IPv6 for an IPv6 VIP) to the VIP dropped by the data plane while fenced.",
                |s| s.ip_dropped,
            ),
            (
                "vip_agent_xdp_conflicts_total",
                "ARP frames (IPv6: Neighbor Advertisements, Solicitations from it) claiming the VIP from another MAC while answering.",
                |s| s.conflicts,
            ),
        ] {
            family(
                name,
                "counter",
                help,
                &mut per_vip(&|r| get(&r.stats).to_string()).into_iter(),
            );
        }
        for (name, help, get) in [
            (
                "vip_agent_egress_ip_dropped_total",
                "Packets from the VIP this node tried to send while fenced, dropped by the TC egress program.",
                (|s: &EgressStats| s.ip_dropped) as fn(&EgressStats) -> u64,
            ),
            (
                "vip_agent_egress_arp_dropped_total",
                "ARP (IPv6: Neighbor Discovery) from the VIP this node tried to send while fenced, dropped by the TC egress program.",
                |s| s.neighbour_dropped,
            ),
        ] {
            family(
                name,
                "counter",
                help,
                &mut per_vip(&|r| get(&r.egress).to_string()).into_iter(),
            );
        }
        let states: Vec<&str> = GateState::ALL.iter().map(|s| s.as_str()).collect();
        family(
            "vip_agent_promotion_gate_state",
            "gauge",
            "1 for the promotion gate's current state (off, idle, waiting, open).",
            &mut per_vip_and("state", &states, &|r, i| {
                u8::from(r.gate.state == GateState::ALL[i]).to_string()
            })
            .into_iter(),
        );
        family(
            "vip_agent_promotion_gate_waiting_seconds",
            "gauge",
            "How long the promotion gate has been waiting for the database to take writes (0 unless waiting).",
            &mut per_vip(&|r| {
                let ns = if r.gate.state == GateState::Waiting && r.gate.waiting_since_ns != 0 {
                    now.saturating_sub(r.gate.waiting_since_ns)
                } else {
                    0
                };
                format!("{:.3}", ns as f64 / 1e9)
            })
            .into_iter(),
        );
        // Wall-clock time of the start of the current wait (Prometheus' timestamp convention).
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        family(
            "vip_agent_promotion_gate_waiting_since_timestamp_seconds",
            "gauge",
            "Unix time at which the current promotion gate wait began (0 unless waiting).",
            &mut per_vip(&|r| {
                if r.gate.state == GateState::Waiting && r.gate.waiting_since_ns != 0 {
                    let waited = now.saturating_sub(r.gate.waiting_since_ns) as f64 / 1e9;
                    format!("{:.3}", (wall_now - waited).max(0.0))
                } else {
                    "0".to_owned()
                }
            })
            .into_iter(),
        );
        family(
            "vip_agent_promotion_gate_last_wait_seconds",
            "gauge",
            "How long the last finished promotion gate waited.",
            &mut per_vip(&|r| format!("{:.6}", r.gate.last_wait_ns as f64 / 1e9)).into_iter(),
        );
        let outcomes: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        family(
            "vip_agent_promotion_gate_outcomes_total",
            "counter",
            "Finished promotion gates by outcome (primary, standby_leader, no_patroni, timeout, cancelled).",
            &mut per_vip_and("outcome", &outcomes, &|r, i| r.gate.outcomes[i].to_string())
                .into_iter(),
        );
        family(
            "vip_agent_promotion_gate_last_outcome",
            "gauge",
            "1 for the outcome of the last finished promotion gate.",
            &mut per_vip_and("outcome", &outcomes, &|r, i| {
                u8::from(r.gate.last_outcome == Some(Outcome::ALL[i])).to_string()
            })
            .into_iter(),
        );
        family(
            "vip_agent_promotion_gate_last_probe_info",
            "gauge",
            "Why the promotion gate is (or last was) waiting: the last probe result, in the probe label.",
            &mut inner
                .vips
                .iter()
                .filter(|r| !r.gate.last_probe.is_empty())
                .map(|r| {
                    (
                        format!(
                            "{},probe=\"{}\"",
                            labels(r),
                            escape(&clip(&r.gate.last_probe))
                        ),
                        "1".to_owned(),
                    )
                }),
        );
        family(
            "vip_agent_promotion_gate_demotions_total",
            "counter",
            "Fences because the database stopped being a read-write primary while the VIP answered (Patroni's status or member key, a PostgreSQL restart, pg_is_in_recovery(), or no answer while the leader source is unreachable).",
            &mut per_vip(&|r| r.gate.demotions.to_string()).into_iter(),
        );
        family(
            "vip_agent_patroni_url_info",
            "gauge",
            "The Patroni REST API the promotion gate asks, and where that URL came from (patroni-url, member-key, default).",
            &mut inner
                .vips
                .iter()
                .filter_map(|r| Some((r, r.gate.patroni_url_source?)))
                .map(|(r, source)| {
                    (
                        format!(
                            "{},url=\"{}\",source=\"{}\"",
                            labels(r),
                            escape(&r.gate.patroni_url),
                            source.as_str()
                        ),
                        "1".to_owned(),
                    )
                }),
        );
        family(
            "vip_agent_failsafe_holding",
            "gauge",
            "1 while the VIP is answered past its lease deadline because Patroni reports this member primary in failsafe mode (patroni-failsafe).",
            &mut per_vip(&|r| u8::from(r.gate.failsafe.holding_at(now)).to_string()).into_iter(),
        );
        family(
            "vip_agent_failsafe_probing",
            "gauge",
            "1 while the leader source is unreachable and the database is asked every 50 ms whether it is still a (failsafe) primary.",
            &mut per_vip(&|r| u8::from(r.gate.failsafe.probing).to_string()).into_iter(),
        );
        family(
            "vip_agent_failsafe_extensions_total",
            "counter",
            "Patroni failsafe confirmations that moved the deadline past the lease deadline.",
            &mut per_vip(&|r| r.gate.failsafe.extensions.to_string()).into_iter(),
        );
        family(
            "vip_agent_failsafe_fences_total",
            "counter",
            "Fences because Patroni stopped confirming failsafe mode after the lease deadline.",
            &mut per_vip(&|r| r.gate.failsafe.fences.to_string()).into_iter(),
        );
        let hook_outcomes: Vec<String> = HookEvent::ALL
            .iter()
            .flat_map(|e| {
                HookOutcome::ALL
                    .iter()
                    .map(move |o| format!("event=\"{}\",outcome=\"{}\"", e.as_str(), o.as_str()))
            })
            .collect();
        let hook_outcomes: Vec<&str> = hook_outcomes.iter().map(String::as_str).collect();
        let per_hook_outcome = |f: &dyn Fn(&VipReport, HookEvent, HookOutcome) -> String| {
            inner
                .vips
                .iter()
                .flat_map(|r| {
                    hook_outcomes.iter().enumerate().map(move |(i, l)| {
                        let e = HookEvent::ALL[i / HookOutcome::ALL.len()];
                        let o = HookOutcome::ALL[i % HookOutcome::ALL.len()];
                        (format!("{},{l}", labels(r)), f(r, e, o))
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            "vip_agent_hook_runs_total",
            "counter",
            "Finished on-promote / on-demote runs (with their retries) by outcome (success, failure, timeout, cancelled).",
            &mut per_hook_outcome(&|r, e, o| r.hooks.runs[e.index()][o.index()].to_string())
                .into_iter(),
        );
        family(
            "vip_agent_hook_last_outcome",
            "gauge",
            "1 for the outcome of the last finished run of each hook.",
            &mut per_hook_outcome(&|r, e, o| {
                u8::from(r.hooks.last_outcome[e.index()] == Some(o)).to_string()
            })
            .into_iter(),
        );
        let events: Vec<&str> = HookEvent::ALL.iter().map(|e| e.as_str()).collect();
        family(
            "vip_agent_hook_attempts_total",
            "counter",
            "Hook attempts started (a run retries a failed attempt hook-retries times).",
            &mut per_vip_and("event", &events, &|r, i| r.hooks.attempts[i].to_string()).into_iter(),
        );
        family(
            "vip_agent_hook_last_duration_seconds",
            "gauge",
            "Duration of the last finished run of each hook, retries included.",
            &mut per_vip_and("event", &events, &|r, i| {
                format!("{:.3}", r.hooks.last_duration[i].as_secs_f64())
            })
            .into_iter(),
        );
        if let Some(kind) = inner.source {
            let (name, what) = (kind.name, kind.what);
            family(
                &format!("vip_agent_{name}_key_connected"),
                "gauge",
                &format!("1 while the leader source of this trigger key reaches {what}."),
                &mut inner
                    .connected
                    .iter()
                    .map(|(key, c)| (format!("key=\"{}\"", escape(key)), u8::from(*c).to_string())),
            );
            let _ = writeln!(
                out,
                "# HELP vip_agent_{name}_connected 1 while the leader source of every key reaches {what}.\n# TYPE vip_agent_{name}_connected gauge\nvip_agent_{name}_connected {}",
                u8::from(inner.all_connected())
            );
            let (series, help) = kind.detail;
            let _ = writeln!(
                out,
                "# HELP {series} {help}\n# TYPE {series} gauge\n{series} {}",
                inner.detail
            );
        }
        if let Some(counts) = &inner.repmgr_events {
            let _ = writeln!(
                out,
                "# HELP vip_agent_repmgr_events_total Requests on the repmgr event socket, by outcome.\n# TYPE vip_agent_repmgr_events_total counter"
            );
            for (outcome, n) in counts {
                let _ = writeln!(
                    out,
                    "vip_agent_repmgr_events_total{{outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out
    }
}

/// A label value of bounded length (probe results are short, but come from outside).
fn clip(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn registry(deadline_ns: u64) -> Registry {
        let r = Registry::default();
        r.set_vips(vec![VipReport {
            vip: Some(IpAddr::from([10, 0, 0, 5])),
            interface: "eth0".into(),
            trigger_key: "/service/pg/leader".into(),
            state: Some(VipState::answering_until([2, 0, 0, 0, 0, 1], deadline_ns)),
            stats: VipStats {
                replied: 7,
                ..VipStats::default()
            },
            egress: EgressStats {
                ip_dropped: 3,
                neighbour_dropped: 1,
            },
            transitions: 2,
            last_event_to_dataplane_us: 40,
            gate: GateStatus {
                state: GateState::Open,
                last_wait_ns: 1_500_000,
                last_outcome: Some(Outcome::Timeout),
                outcomes: [3, 0, 0, 1, 0],
                ..GateStatus::default()
            },
            hooks: HookStats::default(),
        }]);
        r
    }

    #[test]
    fn health_follows_etcd() {
        let r = registry(0);
        assert!(r.unhealthy().is_some());
        r.set_source("/service/pg/leader", &crate::leader::KIND, true, 42);
        assert_eq!(r.unhealthy(), None);
        let page = r.render();
        assert!(page.contains("vip_agent_watch_revision 42"), "{page}");
        assert!(page.contains("\nvip_agent_etcd_connected 1\n"), "{page}");
    }

    #[test]
    fn etcd_connected_is_per_key_and_all_of_them_unlabeled() {
        let r = Registry::default();
        r.register(IpAddr::from([10, 0, 0, 5]), "eth0", "/service/a/leader");
        r.register(IpAddr::from([10, 0, 0, 6]), "eth0", "/service/b/leader");
        r.register(IpAddr::from([10, 0, 0, 7]), "eth1", "/service/b/leader");
        r.set_source_kind(&crate::leader::KIND);
        let sample = |page: &str, series: &str| -> String {
            page.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
                .to_owned()
        };
        let page = r.render();
        assert_eq!(
            sample(&page, "vip_agent_etcd_connected"),
            "0",
            "nothing read yet"
        );
        // Key a's follower reaches etcd, b's does not yet: not connected overall.
        r.set_source("/service/a/leader", &crate::leader::KIND, true, 10);
        let page = r.render();
        assert_eq!(
            sample(
                &page,
                "vip_agent_etcd_key_connected{key=\"/service/a/leader\"}"
            ),
            "1"
        );
        assert_eq!(
            sample(
                &page,
                "vip_agent_etcd_key_connected{key=\"/service/b/leader\"}"
            ),
            "0"
        );
        assert_eq!(sample(&page, "vip_agent_etcd_connected"), "0");
        assert!(r.unhealthy().is_some());
        r.set_source("/service/b/leader", &crate::leader::KIND, true, 11);
        assert_eq!(sample(&r.render(), "vip_agent_etcd_connected"), "1");
        assert_eq!(r.unhealthy(), None);
        // Whichever published last, a's outage shows (it used to be hidden by b's publish).
        r.set_source("/service/a/leader", &crate::leader::KIND, false, 12);
        r.set_source("/service/b/leader", &crate::leader::KIND, true, 12);
        let page = r.render();
        assert_eq!(sample(&page, "vip_agent_etcd_connected"), "0");
        assert_eq!(
            sample(
                &page,
                "vip_agent_etcd_key_connected{key=\"/service/a/leader\"}"
            ),
            "0"
        );
        assert!(r.unhealthy().is_some());
        assert_eq!(
            page.matches("vip_agent_etcd_key_connected{").count(),
            2,
            "one series per key, not per VIP:\n{page}"
        );
    }

    #[test]
    fn gate_wait_reason_and_failsafe_are_on_the_page() {
        let r = registry(0);
        let labels = "vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"";
        let now = monotonic_ns();
        r.set_gate(
            IpAddr::from([10, 0, 0, 5]),
            &GateStatus {
                state: GateState::Waiting,
                waiting_since_ns: now.saturating_sub(2_000_000_000),
                last_probe: "200 but role replica, state running: \"quoted\"".to_owned(),
                failsafe: crate::gate::FailsafeStatus {
                    enabled: true,
                    probing: true,
                    until_ns: now + 60_000_000_000,
                    lease_until_ns: now.saturating_sub(1),
                    extensions: 4,
                    fences: 1,
                    last_probe: String::new(),
                },
                demotions: 2,
                patroni_url: "http://10.0.0.11:8008".to_owned(),
                patroni_url_source: Some(crate::gate::UrlSource::MemberKey),
                ..GateStatus::default()
            },
        );
        let page = r.render();
        assert!(
            page.contains(&format!(
                "vip_agent_patroni_url_info{{{labels},url=\"http://10.0.0.11:8008\",source=\"member-key\"}} 1\n"
            )),
            "{page}"
        );
        let value = |series: &str| -> f64 {
            page.lines()
                .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
                .parse()
                .expect("a number")
        };
        let waited = value(&format!(
            "vip_agent_promotion_gate_waiting_seconds{{{labels}}}"
        ));
        assert!(waited >= 2.0, "{waited}");
        let since = value(&format!(
            "vip_agent_promotion_gate_waiting_since_timestamp_seconds{{{labels}}}"
        ));
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(since > 0.0 && since <= wall - 1.9, "{since} vs {wall}");
        assert!(page.contains(&format!(
            "vip_agent_promotion_gate_last_probe_info{{{labels},probe=\"200 but role replica, state running: \\\"quoted\\\"\"}} 1"
        )), "{page}");
        assert_eq!(
            value(&format!("vip_agent_failsafe_holding{{{labels}}}")),
            1.0
        );
        assert_eq!(
            value(&format!("vip_agent_failsafe_probing{{{labels}}}")),
            1.0
        );
        assert_eq!(
            value(&format!("vip_agent_failsafe_extensions_total{{{labels}}}")),
            4.0
        );
        assert_eq!(
            value(&format!("vip_agent_failsafe_fences_total{{{labels}}}")),
            1.0
        );
        assert_eq!(
            value(&format!(
                "vip_agent_promotion_gate_demotions_total{{{labels}}}"
            )),
            2.0
        );
        // Not waiting: no start time, and no failsafe hold once it lapsed.
        r.set_gate(IpAddr::from([10, 0, 0, 5]), &GateStatus::default());
        let page = r.render();
        assert!(
            page.contains(&format!(
                "vip_agent_promotion_gate_waiting_since_timestamp_seconds{{{labels}}} 0\n"
            )),
            "{page}"
        );
        assert!(page.contains(&format!("vip_agent_failsafe_holding{{{labels}}} 0\n")));
        assert!(
            !page.contains("vip_agent_promotion_gate_last_probe_info{"),
            "{page}"
        );
        assert!(
            !page.contains("vip_agent_patroni_url_info{"),
            "no URL before the gate needed one: {page}"
        );
    }

    #[test]
    fn hook_runs_are_counted_by_event_and_outcome() {
        let r = registry(0);
        let vip = IpAddr::from([10, 0, 0, 5]);
        for (event, outcome, attempts) in [
            (HookEvent::Promote, HookOutcome::Failure, 3),
            (HookEvent::Promote, HookOutcome::Success, 2),
            (HookEvent::Demote, HookOutcome::Timeout, 1),
        ] {
            let report = HookReport {
                outcome,
                attempts,
                duration: Duration::from_millis(1250),
            };
            r.record_hook(vip, event, &report);
        }
        let page = r.render();
        let labels = "vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"";
        for want in [
            "vip_agent_hook_runs_total{L,event=\"promote\",outcome=\"failure\"} 1\n",
            "vip_agent_hook_runs_total{L,event=\"promote\",outcome=\"success\"} 1\n",
            "vip_agent_hook_runs_total{L,event=\"demote\",outcome=\"timeout\"} 1\n",
            "vip_agent_hook_runs_total{L,event=\"demote\",outcome=\"success\"} 0\n",
            "vip_agent_hook_last_outcome{L,event=\"promote\",outcome=\"success\"} 1\n",
            "vip_agent_hook_last_outcome{L,event=\"promote\",outcome=\"failure\"} 0\n",
            "vip_agent_hook_attempts_total{L,event=\"promote\"} 5\n",
            "vip_agent_hook_attempts_total{L,event=\"demote\"} 1\n",
            "vip_agent_hook_last_duration_seconds{L,event=\"demote\"} 1.250\n",
        ] {
            let want = want.replace('L', labels);
            assert!(page.contains(&want), "{want} missing in:\n{page}");
        }
    }

    #[test]
    fn metrics_page_carries_role_and_counters() {
        let page = registry(monotonic_ns() + 60_000_000_000).render();
        assert!(page.contains(
            "vip_agent_answering{vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"} 1"
        ));
        assert!(page.contains("vip_agent_xdp_arp_replied_total{vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"} 7"));
        assert!(page.contains("vip_agent_egress_ip_dropped_total{vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"} 3"));
        assert!(page.contains("vip_agent_egress_arp_dropped_total{vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"} 1"));
        assert!(page.contains("vip_agent_transitions_total{"));
        let labels = "vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"";
        for (line, value) in [
            ("vip_agent_promotion_gate_state", "state=\"open\"} 1"),
            ("vip_agent_promotion_gate_state", "state=\"waiting\"} 0"),
            (
                "vip_agent_promotion_gate_outcomes_total",
                "outcome=\"primary\"} 3",
            ),
            (
                "vip_agent_promotion_gate_outcomes_total",
                "outcome=\"timeout\"} 1",
            ),
            (
                "vip_agent_promotion_gate_last_outcome",
                "outcome=\"timeout\"} 1",
            ),
            (
                "vip_agent_promotion_gate_last_outcome",
                "outcome=\"primary\"} 0",
            ),
        ] {
            let want = format!("{line}{{{labels},{value}");
            assert!(page.contains(&want), "{want} missing in:\n{page}");
        }
        assert!(page.contains(&format!(
            "vip_agent_promotion_gate_last_wait_seconds{{{labels}}} 0.001500"
        )));
        assert!(page.contains(&format!(
            "vip_agent_promotion_gate_waiting_seconds{{{labels}}} 0.000"
        )));
    }
}
