//! The metrics registry: what the agent's subsystems observed ([`crate::observe`], through one
//! channel), the data plane's maps read at scrape time, and this process (`/proc/self`), rendered
//! as the Prometheus text exposition for `/metrics` and as the `/status` document
//! ([`AgentStatus`]); [`crate::http::server`] serves both.
//!
//! It sits below the domain: it imports only std, `vip_common`, the clock and the observation
//! types, and knows no gate, hook or leader source.
//!
//! Not `prometheus-client`: it exposes OpenMetrics only (`# EOF`, counters typed without their
//! `_total`), and most series here are read from the BPF maps at scrape time, not stored.

pub mod process;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use vip_common::{EgressStats, VipState, VipStats};

use crate::{
    clock::monotonic_ns,
    observe::{
        AgentStatus, GateObservation, GateView, HookRun, KeyStatus, Observation, Observations,
        SourceName, VipStatusView,
    },
};

/// The agent's version (`vip_agent_build_info`, `/status`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Upper bounds (seconds) of the `vip_agent_event_to_dataplane_seconds` buckets: a map write is
/// tens of microseconds after the source's answer; milliseconds mean a stalled agent.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 1.0,
];

/// One VIP's data-plane entry and counters, read at scrape time. A new counter of the maps is a
/// field here (filled in the agent's snapshot function) and a family in [`Registry::render`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataplaneSample {
    pub vip: Option<IpAddr>,
    /// The map's entry.
    pub state: Option<VipState>,
    /// The XDP program's counters, summed over CPUs.
    pub stats: VipStats,
    /// The TC egress program's counters, summed over CPUs.
    pub egress: EgressStats,
    /// Fence writes into the map that failed (each failed update).
    pub fence_write_failures: u64,
}

/// Reads every VIP's [`DataplaneSample`] at scrape time.
pub type SnapshotFn = Arc<dyn Fn() -> Vec<DataplaneSample> + Send + Sync>;

/// A histogram with [`LATENCY_BUCKETS`].
#[derive(Clone, Debug, Default, PartialEq)]
struct Histogram {
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += seconds;
        self.count += 1;
    }
}

/// Finished hook runs of one VIP.
#[derive(Clone, Debug, Default)]
struct HookCounts {
    runs: BTreeMap<(&'static str, &'static str), u64>,
    attempts: BTreeMap<&'static str, u64>,
    last_duration: BTreeMap<&'static str, Duration>,
    last_outcome: BTreeMap<&'static str, &'static str>,
}

/// What the registry knows about one VIP.
#[derive(Clone, Debug, Default)]
struct VipEntry {
    vip: Option<IpAddr>,
    interface: String,
    key: String,
    dataplane: DataplaneSample,
    /// Promotions + demotions seen by the agent.
    transitions: u64,
    latency: Histogram,
    /// `None` before the gate first reported.
    gate: Option<GateObservation>,
    hooks: HookCounts,
}

impl VipEntry {
    fn answering_at(&self, now: u64) -> bool {
        self.dataplane.state.is_some_and(|s| s.answering_at(now))
    }

    fn deadline_remaining_ns(&self, now: u64) -> u64 {
        self.dataplane
            .state
            .map_or(0, |s| s.deadline_ns.saturating_sub(now))
    }

    /// `arp` for an IPv4 VIP, `ndp` for an IPv6 one: which neighbour protocol its counters count.
    fn neighbor_family(&self) -> &'static str {
        match self.vip {
            Some(IpAddr::V6(_)) => "ndp",
            _ => "arp",
        }
    }
}

/// Shared registry: the observation task writes it, the HTTP server reads it.
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
    vips: Vec<VipEntry>,
    /// The leader source's kind (one per agent), once known.
    source: Option<SourceName>,
    /// Per trigger key: whether its source's latest state was an answer.
    connected: BTreeMap<String, bool>,
    /// The highest source progress reported.
    detail: i64,
    snapshot: Option<SnapshotFn>,
    /// Requests the source received, by outcome; `None` (not rendered) until the first one.
    source_events: Option<BTreeMap<&'static str, u64>>,
    /// The label values of the hook series: (events, outcomes).
    hook_labels: (&'static [&'static str], &'static [&'static str]),
}

impl Inner {
    /// Every key's source is reached (and there is at least one).
    fn all_connected(&self) -> bool {
        !self.connected.is_empty() && self.connected.values().all(|c| *c)
    }

    fn vip_mut(&mut self, vip: IpAddr) -> Option<&mut VipEntry> {
        self.vips.iter_mut().find(|r| r.vip == Some(vip))
    }

    fn apply(&mut self, observation: Observation) {
        match observation {
            Observation::Vip {
                vip,
                interface,
                key,
            } => {
                self.connected.entry(key.clone()).or_insert(false);
                self.vips.push(VipEntry {
                    vip: Some(vip),
                    interface,
                    key,
                    ..VipEntry::default()
                });
            }
            Observation::HookLabels { events, outcomes } => self.hook_labels = (events, outcomes),
            Observation::Source {
                key,
                kind,
                reached,
                detail,
            } => {
                self.source = Some(kind);
                self.connected.insert(key, reached);
                self.detail = self.detail.max(detail);
            }
            Observation::SourceEvent { outcome, outcomes } => {
                let counts = self
                    .source_events
                    .get_or_insert_with(|| outcomes.iter().map(|o| (*o, 0)).collect());
                *counts.entry(outcome).or_default() += 1;
            }
            Observation::Write {
                vip,
                transition,
                latency,
            } => {
                if let Some(r) = self.vip_mut(vip) {
                    r.transitions += u64::from(transition);
                    r.latency.observe(latency.as_secs_f64());
                }
            }
            Observation::Gate { vip, gate } => {
                if let Some(r) = self.vip_mut(vip) {
                    r.gate = Some(gate);
                }
            }
            Observation::Hook { vip, run } => {
                if let Some(r) = self.vip_mut(vip) {
                    let HookRun {
                        event,
                        outcome,
                        attempts,
                        duration,
                    } = run;
                    *r.hooks.runs.entry((event, outcome)).or_default() += 1;
                    *r.hooks.attempts.entry(event).or_default() += u64::from(attempts);
                    r.hooks.last_duration.insert(event, duration);
                    r.hooks.last_outcome.insert(event, outcome);
                }
            }
        }
    }
}

/// Seconds of `ns`, for a sample.
fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Rounded milliseconds of `ns`.
fn millis(ns: u64) -> u64 {
    ns.saturating_add(500_000) / 1_000_000
}

impl Registry {
    /// Apply one observation (the observation task does this; tests call it directly).
    pub fn apply(&self, observation: Observation) {
        self.lock().apply(observation);
    }

    /// Apply what arrives on `observations` until `stop` is cancelled or every observer is gone;
    /// then what was already sent.
    pub async fn follow(self, mut observations: Observations, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                next = observations.next() => match next {
                    Some(observation) => self.apply(observation),
                    None => return,
                },
            }
        }
        while let Some(observation) = observations.try_next() {
            self.apply(observation);
        }
    }

    /// Where fresh map entries come from at scrape time.
    pub fn set_snapshot(&self, snapshot: SnapshotFn) {
        self.lock().snapshot = Some(snapshot);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pull fresh map entries into the VIPs.
    fn refresh(&self) {
        let snapshot = self.lock().snapshot.clone();
        let Some(snapshot) = snapshot else {
            return;
        };
        let fresh = snapshot();
        let mut inner = self.lock();
        for sample in fresh {
            if let Some(r) = inner.vips.iter_mut().find(|r| r.vip == sample.vip) {
                r.dataplane = sample;
            }
        }
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

    /// Whether this node answers for `vip` (or for any VIP when `None`) at this moment.
    #[must_use]
    pub fn answering(&self, vip: Option<IpAddr>) -> bool {
        self.refresh();
        let now = monotonic_ns();
        self.lock()
            .vips
            .iter()
            .filter(|r| vip.is_none() || r.vip == vip)
            .any(|r| r.answering_at(now))
    }

    /// The `/status` document.
    #[must_use]
    pub fn status(&self) -> AgentStatus {
        self.refresh();
        let now = monotonic_ns();
        let inner = self.lock();
        let source = inner.source.map(|s| s.name.to_owned());
        AgentStatus {
            version: VERSION.to_owned(),
            healthy: inner.all_connected(),
            source: source.clone(),
            keys: inner
                .connected
                .iter()
                .map(|(key, reached)| KeyStatus {
                    key: key.clone(),
                    reached: *reached,
                })
                .collect(),
            vips: inner
                .vips
                .iter()
                .filter_map(|r| {
                    Some(VipStatusView {
                        vip: r.vip?,
                        interface: r.interface.clone(),
                        key: r.key.clone(),
                        answering: r.answering_at(now),
                        deadline_remaining_ms: r.deadline_remaining_ns(now) / 1_000_000,
                        source: source.clone(),
                        source_reached: inner.connected.get(&r.key).copied().unwrap_or(false),
                        gate: r.gate.as_ref().map(|g| GateView {
                            state: g.state.to_owned(),
                            waiting_ms: g
                                .waiting_since_ns
                                .map_or(0, |since| millis(now.saturating_sub(since))),
                            last_probe: (!g.last_probe.is_empty()).then(|| g.last_probe.clone()),
                            last_outcome: g.last_outcome.map(str::to_owned),
                            last_wait_ms: millis(g.last_wait_ns),
                            failsafe_holding: g.failsafe.holding_at(now),
                            demotions: g.demotions,
                            patroni_url: g.patroni_url.as_ref().map(|(url, _)| url.clone()),
                            patroni_url_source: g
                                .patroni_url
                                .as_ref()
                                .map(|(_, from)| (*from).to_owned()),
                            source: source.clone(),
                            source_reached: source
                                .as_ref()
                                .and_then(|_| inner.connected.get(&r.key).copied()),
                        }),
                    })
                })
                .collect(),
        }
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        self.refresh();
        let now = monotonic_ns();
        let inner = self.lock();
        let mut out = String::new();
        let labels = |r: &VipEntry| {
            format!(
                "vip=\"{}\",interface=\"{}\",key=\"{}\"",
                r.vip.map_or_else(String::new, |v| v.to_string()),
                escape(&r.interface),
                escape(&r.key)
            )
        };
        let per_vip = |f: &dyn Fn(&VipEntry) -> String| -> Vec<(String, String)> {
            inner.vips.iter().map(|r| (labels(r), f(r))).collect()
        };
        // One series per VIP and value of `label` (Prometheus' enum pattern).
        let per_vip_and = |label: &str,
                           values: &dyn Fn(&VipEntry) -> Vec<&'static str>,
                           f: &dyn Fn(&VipEntry, &str) -> String|
         -> Vec<(String, String)> {
            inner
                .vips
                .iter()
                .flat_map(|r| {
                    values(r)
                        .into_iter()
                        .map(move |v| (format!("{},{label}=\"{v}\"", labels(r)), f(r, v)))
                })
                .collect()
        };
        family(
            &mut out,
            "vip_agent_build_info",
            "gauge",
            "1, with the agent's version in the version label.",
            &mut std::iter::once((format!("version=\"{}\"", escape(VERSION)), "1".to_owned())),
        );
        family(
            &mut out,
            "vip_agent_answering",
            "gauge",
            "1 while this node's XDP program answers for the VIP, 0 while it fences it.",
            &mut per_vip(&|r| u8::from(r.answering_at(now)).to_string()).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_deadline_remaining_seconds",
            "gauge",
            "Time until the data plane stops answering unless leadership is confirmed again.",
            &mut per_vip(&|r| format!("{:.3}", seconds(r.deadline_remaining_ns(now)))).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_transitions_total",
            "counter",
            "Promotions and demotions of the VIP on this node.",
            &mut per_vip(&|r| r.transitions.to_string()).into_iter(),
        );
        // A histogram: its buckets, sum and count per VIP.
        let _ = writeln!(
            out,
            "# HELP vip_agent_event_to_dataplane_seconds Leader source answer -> BPF map write latency, per write.\n\
             # TYPE vip_agent_event_to_dataplane_seconds histogram"
        );
        for r in &inner.vips {
            let l = labels(r);
            let mut cumulative = 0;
            for (i, count) in r.latency.counts.iter().enumerate() {
                cumulative += count;
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), ToString::to_string);
                let _ = writeln!(
                    out,
                    "vip_agent_event_to_dataplane_seconds_bucket{{{l},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "vip_agent_event_to_dataplane_seconds_sum{{{l}}} {}\n\
                 vip_agent_event_to_dataplane_seconds_count{{{l}}} {}",
                r.latency.sum, r.latency.count
            );
        }
        // Neighbour resolution: ARP for an IPv4 VIP, NDP for an IPv6 one (the family label).
        let per_vip_family = |f: &dyn Fn(&VipEntry) -> u64| -> Vec<(String, String)> {
            inner
                .vips
                .iter()
                .map(|r| {
                    (
                        format!("{},family=\"{}\"", labels(r), r.neighbor_family()),
                        f(r).to_string(),
                    )
                })
                .collect()
        };
        family(
            &mut out,
            "vip_agent_xdp_neighbor_replied_total",
            "counter",
            "ARP requests (family arp) or Neighbor Solicitations (family ndp) for the VIP answered by the data plane.",
            &mut per_vip_family(&|r| r.dataplane.stats.replied).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_xdp_neighbor_dropped_total",
            "counter",
            "ARP requests (family arp) or Neighbor Solicitations (family ndp) for the VIP dropped by the data plane (fenced, or a non-unicast sender).",
            &mut per_vip_family(&|r| r.dataplane.stats.requests_dropped).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_xdp_conflicts_total",
            "counter",
            "ARP frames (family arp) or Neighbor Advertisements and Solicitations (family ndp) claiming the VIP from another MAC while answering.",
            &mut per_vip_family(&|r| r.dataplane.stats.conflicts).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_xdp_ip_dropped_total",
            "counter",
            "IP packets (IPv4 or IPv6, as the VIP) to the VIP dropped by the data plane while fenced.",
            &mut per_vip(&|r| r.dataplane.stats.ip_dropped.to_string()).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_egress_ip_dropped_total",
            "counter",
            "Packets from the VIP this node tried to send while fenced, dropped by the TC egress program.",
            &mut per_vip(&|r| r.dataplane.egress.ip_dropped.to_string()).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_egress_neighbor_dropped_total",
            "counter",
            "ARP (family arp) or Neighbor Discovery (family ndp) from the VIP this node tried to send while fenced, dropped by the TC egress program.",
            &mut per_vip_family(&|r| r.dataplane.egress.neighbour_dropped).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_fence_write_failures_total",
            "counter",
            "Fence writes into the BPF map that failed (each failed update; after the last retry the entry is deleted and the address removed).",
            &mut per_vip(&|r| r.dataplane.fence_write_failures.to_string()).into_iter(),
        );
        let gate_states =
            |r: &VipEntry| r.gate.as_ref().map_or_else(Vec::new, |g| g.states.to_vec());
        family(
            &mut out,
            "vip_agent_promotion_gate_state",
            "gauge",
            "1 for the promotion gate's current state (off, idle, waiting, open).",
            &mut per_vip_and("state", &gate_states, &|r, v| {
                u8::from(r.gate.as_ref().is_some_and(|g| g.state == v)).to_string()
            })
            .into_iter(),
        );
        let gated = |f: &dyn Fn(&GateObservation) -> String| -> Vec<(String, String)> {
            inner
                .vips
                .iter()
                .filter_map(|r| Some((labels(r), f(r.gate.as_ref()?))))
                .collect()
        };
        family(
            &mut out,
            "vip_agent_promotion_gate_waiting_seconds",
            "gauge",
            "How long the promotion gate has been waiting for the database to take writes (0 unless waiting).",
            &mut gated(&|g| {
                let ns = g
                    .waiting_since_ns
                    .map_or(0, |since| now.saturating_sub(since));
                format!("{:.3}", seconds(ns))
            })
            .into_iter(),
        );
        // Wall-clock time of the start of the current wait (Prometheus' timestamp convention).
        let wall_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        family(
            &mut out,
            "vip_agent_promotion_gate_waiting_since_timestamp_seconds",
            "gauge",
            "Unix time at which the current promotion gate wait began (0 unless waiting).",
            &mut gated(&|g| match g.waiting_since_ns {
                Some(since) => {
                    let waited = seconds(now.saturating_sub(since));
                    format!("{:.3}", (wall_now - waited).max(0.0))
                }
                None => "0".to_owned(),
            })
            .into_iter(),
        );
        family(
            &mut out,
            "vip_agent_promotion_gate_last_wait_seconds",
            "gauge",
            "How long the last finished promotion gate waited.",
            &mut gated(&|g| format!("{:.6}", seconds(g.last_wait_ns))).into_iter(),
        );
        let gate_outcomes = |r: &VipEntry| {
            r.gate
                .as_ref()
                .map_or_else(Vec::new, |g| g.outcomes.iter().map(|(o, _)| *o).collect())
        };
        family(
            &mut out,
            "vip_agent_promotion_gate_outcomes_total",
            "counter",
            "Finished promotion gates by outcome (primary, standby_leader, no_patroni, timeout, cancelled).",
            &mut per_vip_and("outcome", &gate_outcomes, &|r, v| {
                r.gate
                    .as_ref()
                    .and_then(|g| g.outcomes.iter().find(|(o, _)| *o == v))
                    .map_or(0, |(_, n)| *n)
                    .to_string()
            })
            .into_iter(),
        );
        family(
            &mut out,
            "vip_agent_promotion_gate_last_outcome",
            "gauge",
            "1 for the outcome of the last finished promotion gate.",
            &mut per_vip_and("outcome", &gate_outcomes, &|r, v| {
                u8::from(r.gate.as_ref().is_some_and(|g| g.last_outcome == Some(v))).to_string()
            })
            .into_iter(),
        );
        family(
            &mut out,
            "vip_agent_promotion_gate_demotions_total",
            "counter",
            "Fences because the database stopped being a read-write primary while the VIP answered (Patroni's status or member key, a PostgreSQL restart, pg_is_in_recovery(), or no answer while the leader source is unreachable).",
            &mut gated(&|g| g.demotions.to_string()).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_patroni_url_info",
            "gauge",
            "The Patroni REST API the promotion gate asks, and where that URL came from (patroni-url, member-key, default).",
            &mut inner
                .vips
                .iter()
                .filter_map(|r| Some((r, r.gate.as_ref()?.patroni_url.as_ref()?)))
                .map(|(r, (url, source))| {
                    (
                        format!("{},url=\"{}\",source=\"{source}\"", labels(r), escape(url)),
                        "1".to_owned(),
                    )
                }),
        );
        family(
            &mut out,
            "vip_agent_failsafe_holding",
            "gauge",
            "1 while the VIP is answered past its lease deadline because Patroni reports this member primary in failsafe mode (patroni-failsafe).",
            &mut gated(&|g| u8::from(g.failsafe.holding_at(now)).to_string()).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_failsafe_probing",
            "gauge",
            "1 while the leader source is unreachable and the database is asked every 50 ms whether it is still a (failsafe) primary.",
            &mut gated(&|g| u8::from(g.failsafe.probing).to_string()).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_failsafe_extensions_total",
            "counter",
            "Patroni failsafe confirmations that moved the deadline past the lease deadline.",
            &mut gated(&|g| g.failsafe.extensions.to_string()).into_iter(),
        );
        family(
            &mut out,
            "vip_agent_failsafe_fences_total",
            "counter",
            "Fences because Patroni stopped confirming failsafe mode after the lease deadline.",
            &mut gated(&|g| g.failsafe.fences.to_string()).into_iter(),
        );
        let (events, outcomes) = inner.hook_labels;
        let per_hook_outcome = |f: &dyn Fn(&VipEntry, &'static str, &'static str) -> String| {
            inner
                .vips
                .iter()
                .flat_map(|r| {
                    events.iter().flat_map(move |e| {
                        outcomes.iter().map(move |o| {
                            (
                                format!("{},event=\"{e}\",outcome=\"{o}\"", labels(r)),
                                f(r, e, o),
                            )
                        })
                    })
                })
                .collect::<Vec<_>>()
        };
        family(
            &mut out,
            "vip_agent_hook_runs_total",
            "counter",
            "Finished on-promote / on-demote runs (with their retries) by outcome (success, failure, timeout, cancelled).",
            &mut per_hook_outcome(&|r, e, o| {
                r.hooks.runs.get(&(e, o)).copied().unwrap_or(0).to_string()
            })
            .into_iter(),
        );
        family(
            &mut out,
            "vip_agent_hook_last_outcome",
            "gauge",
            "1 for the outcome of the last finished run of each hook.",
            &mut per_hook_outcome(&|r, e, o| {
                u8::from(r.hooks.last_outcome.get(e) == Some(&o)).to_string()
            })
            .into_iter(),
        );
        let hook_events = |_: &VipEntry| events.to_vec();
        family(
            &mut out,
            "vip_agent_hook_attempts_total",
            "counter",
            "Hook attempts started (a run retries a failed attempt hook-retries times).",
            &mut per_vip_and("event", &hook_events, &|r, e| {
                r.hooks.attempts.get(e).copied().unwrap_or(0).to_string()
            })
            .into_iter(),
        );
        family(
            &mut out,
            "vip_agent_hook_last_duration_seconds",
            "gauge",
            "Duration of the last finished run of each hook, retries included.",
            &mut per_vip_and("event", &hook_events, &|r, e| {
                let d = r.hooks.last_duration.get(e).copied().unwrap_or_default();
                format!("{:.3}", d.as_secs_f64())
            })
            .into_iter(),
        );
        if let Some(kind) = inner.source {
            let (name, what) = (kind.name, kind.what);
            family(
                &mut out,
                &format!("vip_agent_{name}_key_connected"),
                "gauge",
                &format!("1 while the leader source of this trigger key reaches {what}."),
                &mut inner
                    .connected
                    .iter()
                    .map(|(key, c)| (format!("key=\"{}\"", escape(key)), u8::from(*c).to_string())),
            );
            family(
                &mut out,
                &format!("vip_agent_{name}_connected"),
                "gauge",
                &format!("1 while the leader source of every key reaches {what}."),
                &mut std::iter::once((String::new(), u8::from(inner.all_connected()).to_string())),
            );
            let (series, help) = kind.detail;
            family(
                &mut out,
                series,
                "gauge",
                help,
                &mut std::iter::once((String::new(), inner.detail.to_string())),
            );
            if let Some(counts) = &inner.source_events {
                family(
                    &mut out,
                    &format!("vip_agent_{name}_events_total"),
                    "counter",
                    &format!("Requests received by the {name} leader source, by outcome."),
                    &mut counts
                        .iter()
                        .map(|(o, n)| (format!("outcome=\"{o}\""), n.to_string())),
                );
            }
        }
        drop(inner);
        process::ProcessSample::read().render(&mut out);
        out
    }
}

/// One family: HELP, TYPE and a sample per row (labels without braces, or "" for none).
fn family(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: &mut dyn Iterator<Item = (String, String)>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in rows {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
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
    use crate::observe::FailsafeObservation;

    // Plain observations, as the domain sends them (the registry's tests import no domain module;
    // the domain's builders are tested with it, in status.rs).
    pub(crate) const ETCD: SourceName = SourceName {
        name: "etcd",
        what: "etcd",
        detail: (
            "vip_agent_watch_revision",
            "etcd revision the leader watch has reached.",
        ),
    };
    const REPMGR: SourceName = SourceName {
        name: "repmgr",
        what: "the local PostgreSQL (repmgr mode)",
        detail: (
            "vip_agent_repmgr_role_events",
            "repmgr role events applied since the agent started.",
        ),
    };
    const HOOK_LABELS: Observation = Observation::HookLabels {
        events: &["promote", "demote"],
        outcomes: &["success", "failure", "timeout", "cancelled"],
    };
    const GATE_OUTCOMES: [&str; 5] = [
        "primary",
        "standby_leader",
        "no_patroni",
        "timeout",
        "cancelled",
    ];

    /// A gate in `state` with `counts` per outcome.
    fn gate(state: &'static str, counts: [u64; 5]) -> GateObservation {
        GateObservation {
            state,
            states: &["off", "idle", "waiting", "open"],
            outcomes: GATE_OUTCOMES.into_iter().zip(counts).collect(),
            ..GateObservation::default()
        }
    }

    const LABELS: &str = "vip=\"10.0.0.5\",interface=\"eth0\",key=\"/service/pg/leader\"";

    /// A registry with VIP 10.0.0.5, its map entry answering until `deadline_ns`, its gate open.
    pub(crate) fn registry(deadline_ns: u64) -> Registry {
        let r = Registry::default();
        let vip = IpAddr::from([10, 0, 0, 5]);
        r.apply(Observation::Vip {
            vip,
            interface: "eth0".into(),
            key: "/service/pg/leader".into(),
        });
        r.apply(HOOK_LABELS);
        r.set_snapshot(Arc::new(move || {
            vec![DataplaneSample {
                vip: Some(vip),
                state: Some(VipState::answering_until([2, 0, 0, 0, 0, 1], deadline_ns)),
                stats: VipStats {
                    replied: 7,
                    ..VipStats::default()
                },
                egress: EgressStats {
                    ip_dropped: 3,
                    neighbour_dropped: 1,
                },
                fence_write_failures: 4,
            }]
        }));
        for (transition, latency_us) in [(true, 40), (true, 700), (false, 20_000)] {
            r.apply(Observation::Write {
                vip,
                transition,
                latency: Duration::from_micros(latency_us),
            });
        }
        r.apply(Observation::Gate {
            vip,
            gate: GateObservation {
                last_wait_ns: 1_500_000,
                last_outcome: Some("timeout"),
                ..gate("open", [3, 0, 0, 1, 0])
            },
        });
        r
    }

    fn source(r: &Registry, key: &str, reached: bool, detail: i64) {
        r.apply(Observation::Source {
            key: key.to_owned(),
            kind: ETCD,
            reached,
            detail,
        });
    }

    fn sample(page: &str, series: &str) -> String {
        page.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {series} in:\n{page}"))
            .to_owned()
    }

    #[test]
    fn health_follows_the_source() {
        let r = registry(0);
        assert!(r.unhealthy().is_some());
        source(&r, "/service/pg/leader", true, 42);
        assert_eq!(r.unhealthy(), None);
        let page = r.render();
        assert!(page.contains("\nvip_agent_watch_revision 42\n"), "{page}");
        assert!(page.contains("\nvip_agent_etcd_connected 1\n"), "{page}");
    }

    #[test]
    fn etcd_connected_is_per_key_and_all_of_them_unlabeled() {
        let r = Registry::default();
        for (ip, interface, key) in [
            ([10, 0, 0, 5], "eth0", "/service/a/leader"),
            ([10, 0, 0, 6], "eth0", "/service/b/leader"),
            ([10, 0, 0, 7], "eth1", "/service/b/leader"),
        ] {
            r.apply(Observation::Vip {
                vip: IpAddr::from(ip),
                interface: interface.into(),
                key: key.into(),
            });
        }
        // Key a's follower reaches etcd, b's does not yet: not connected overall.
        source(&r, "/service/a/leader", true, 10);
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
        source(&r, "/service/b/leader", true, 11);
        assert_eq!(sample(&r.render(), "vip_agent_etcd_connected"), "1");
        assert_eq!(r.unhealthy(), None);
        // Whichever published last, a's outage shows.
        source(&r, "/service/a/leader", false, 12);
        source(&r, "/service/b/leader", true, 12);
        let page = r.render();
        assert_eq!(sample(&page, "vip_agent_etcd_connected"), "0");
        assert_eq!(r.unhealthy().as_deref(), Some("etcd unreachable\n"));
        assert_eq!(
            page.matches("vip_agent_etcd_key_connected{").count(),
            2,
            "one series per key, not per VIP:\n{page}"
        );
    }

    /// repmgr mode has its own health series and event counter, named by its source kind.
    #[test]
    fn repmgr_health_is_its_own_series() {
        let r = registry(0);
        r.apply(Observation::Source {
            key: "repmgr".to_owned(),
            kind: REPMGR,
            reached: false,
            detail: 3,
        });
        r.apply(Observation::SourceEvent {
            outcome: "applied",
            outcomes: &["applied", "ignored", "rejected"],
        });
        let page = r.render();
        assert_eq!(sample(&page, "vip_agent_repmgr_connected"), "0");
        assert_eq!(sample(&page, "vip_agent_repmgr_role_events"), "3");
        assert_eq!(
            sample(&page, "vip_agent_repmgr_events_total{outcome=\"applied\"}"),
            "1"
        );
        assert_eq!(
            sample(&page, "vip_agent_repmgr_events_total{outcome=\"rejected\"}"),
            "0"
        );
        assert!(!page.contains("etcd"), "{page}");
        assert_eq!(
            r.unhealthy().as_deref(),
            Some("the local PostgreSQL (repmgr mode) unreachable\n")
        );
    }

    #[test]
    fn gate_wait_and_failsafe_are_on_the_page_and_the_probe_text_is_not() {
        let r = registry(0);
        let vip = IpAddr::from([10, 0, 0, 5]);
        let now = monotonic_ns();
        r.apply(Observation::Gate {
            vip,
            gate: GateObservation {
                waiting_since_ns: Some(now.saturating_sub(2_000_000_000)),
                last_probe: "200 but role replica, state running: \"quoted\"".to_owned(),
                failsafe: FailsafeObservation {
                    probing: true,
                    until_ns: now + 60_000_000_000,
                    lease_until_ns: now.saturating_sub(1),
                    extensions: 4,
                    fences: 1,
                },
                demotions: 2,
                patroni_url: Some(("http://10.0.0.11:8008".to_owned(), "member-key")),
                ..gate("waiting", [0; 5])
            },
        });
        let page = r.render();
        assert!(
            page.contains(&format!(
                "vip_agent_patroni_url_info{{{LABELS},url=\"http://10.0.0.11:8008\",source=\"member-key\"}} 1\n"
            )),
            "{page}"
        );
        let value = |series: &str| -> f64 { sample(&page, series).parse().expect("a number") };
        let waited = value(&format!(
            "vip_agent_promotion_gate_waiting_seconds{{{LABELS}}}"
        ));
        assert!(waited >= 2.0, "{waited}");
        let since = value(&format!(
            "vip_agent_promotion_gate_waiting_since_timestamp_seconds{{{LABELS}}}"
        ));
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(since > 0.0 && since <= wall - 1.9, "{since} vs {wall}");
        assert!(
            !page.contains("probe=") && !page.contains("quoted"),
            "{page}"
        );
        for (series, want) in [
            ("vip_agent_failsafe_holding", 1.0),
            ("vip_agent_failsafe_probing", 1.0),
            ("vip_agent_failsafe_extensions_total", 4.0),
            ("vip_agent_failsafe_fences_total", 1.0),
            ("vip_agent_promotion_gate_demotions_total", 2.0),
        ] {
            assert_eq!(value(&format!("{series}{{{LABELS}}}")), want, "{series}");
        }
        // The probe text is in /status.
        let status = r.status();
        let view = status.vips[0].gate.as_ref().expect("a gate");
        assert_eq!(
            view.last_probe.as_deref(),
            Some("200 but role replica, state running: \"quoted\"")
        );
        assert!(
            view.failsafe_holding && view.waiting_ms >= 2_000,
            "{view:?}"
        );
        // Not waiting: no start time, and no failsafe hold once it lapsed.
        r.apply(Observation::Gate {
            vip,
            gate: gate("idle", [0; 5]),
        });
        let page = r.render();
        assert!(
            page.contains(&format!(
                "vip_agent_promotion_gate_waiting_since_timestamp_seconds{{{LABELS}}} 0\n"
            )),
            "{page}"
        );
        assert!(page.contains(&format!("vip_agent_failsafe_holding{{{LABELS}}} 0\n")));
        assert!(
            !page.contains("vip_agent_patroni_url_info{"),
            "no URL before the gate needed one: {page}"
        );
    }

    #[test]
    fn hook_runs_are_counted_by_event_and_outcome() {
        let r = registry(0);
        let vip = IpAddr::from([10, 0, 0, 5]);
        let page = r.render();
        assert!(
            page.contains(&format!(
                "vip_agent_hook_runs_total{{{LABELS},event=\"demote\",outcome=\"success\"}} 0\n"
            )),
            "every event and outcome at 0 before the first run:\n{page}"
        );
        for (event, outcome, attempts) in [
            ("promote", "failure", 3),
            ("promote", "success", 2),
            ("demote", "timeout", 1),
        ] {
            r.apply(Observation::Hook {
                vip,
                run: HookRun {
                    event,
                    outcome,
                    attempts,
                    duration: Duration::from_millis(1250),
                },
            });
        }
        let page = r.render();
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
            let want = want.replace('L', LABELS);
            assert!(page.contains(&want), "{want} missing in:\n{page}");
        }
    }

    #[test]
    fn metrics_page_carries_role_counters_and_the_family_label() {
        let page = registry(monotonic_ns() + 60_000_000_000).render();
        for want in [
            format!("vip_agent_answering{{{LABELS}}} 1\n"),
            format!("vip_agent_xdp_neighbor_replied_total{{{LABELS},family=\"arp\"}} 7\n"),
            format!("vip_agent_xdp_neighbor_dropped_total{{{LABELS},family=\"arp\"}} 0\n"),
            format!("vip_agent_xdp_conflicts_total{{{LABELS},family=\"arp\"}} 0\n"),
            format!("vip_agent_xdp_ip_dropped_total{{{LABELS}}} 0\n"),
            format!("vip_agent_egress_ip_dropped_total{{{LABELS}}} 3\n"),
            format!("vip_agent_egress_neighbor_dropped_total{{{LABELS},family=\"arp\"}} 1\n"),
            format!("vip_agent_transitions_total{{{LABELS}}} 2\n"),
            format!("vip_agent_fence_write_failures_total{{{LABELS}}} 4\n"),
            format!("vip_agent_promotion_gate_state{{{LABELS},state=\"open\"}} 1\n"),
            format!("vip_agent_promotion_gate_state{{{LABELS},state=\"waiting\"}} 0\n"),
            format!("vip_agent_promotion_gate_outcomes_total{{{LABELS},outcome=\"primary\"}} 3\n"),
            format!("vip_agent_promotion_gate_outcomes_total{{{LABELS},outcome=\"timeout\"}} 1\n"),
            format!("vip_agent_promotion_gate_last_outcome{{{LABELS},outcome=\"timeout\"}} 1\n"),
            format!("vip_agent_promotion_gate_last_outcome{{{LABELS},outcome=\"primary\"}} 0\n"),
            format!("vip_agent_promotion_gate_last_wait_seconds{{{LABELS}}} 0.001500\n"),
            format!("vip_agent_promotion_gate_waiting_seconds{{{LABELS}}} 0.000\n"),
            format!("vip_agent_build_info{{version=\"{VERSION}\"}} 1\n"),
            "\nprocess_open_fds ".to_owned(),
            "\nprocess_start_time_seconds ".to_owned(),
        ] {
            assert!(page.contains(&want), "{want} missing in:\n{page}");
        }
        for gone in ["_arp_", "ipv4", "microseconds", "probe"] {
            assert!(!page.contains(gone), "{gone} in:\n{page}");
        }
    }

    #[test]
    fn an_ipv6_vip_counts_neighbor_discovery() {
        let r = Registry::default();
        let vip: IpAddr = "fd00::5".parse().expect("address");
        r.apply(Observation::Vip {
            vip,
            interface: "eth0".into(),
            key: "/k".into(),
        });
        let page = r.render();
        let labels = "vip=\"fd00::5\",interface=\"eth0\",key=\"/k\"";
        for name in [
            "vip_agent_xdp_neighbor_replied_total",
            "vip_agent_xdp_neighbor_dropped_total",
            "vip_agent_xdp_conflicts_total",
            "vip_agent_egress_neighbor_dropped_total",
        ] {
            assert!(
                page.contains(&format!("{name}{{{labels},family=\"ndp\"}} 0\n")),
                "{name} in:\n{page}"
            );
        }
    }

    /// Buckets are cumulative with `+Inf` last, `_count` equals it, `_sum` is in seconds.
    #[test]
    fn event_to_dataplane_is_a_histogram_in_seconds() {
        let page = registry(0).render();
        assert!(page.contains("# TYPE vip_agent_event_to_dataplane_seconds histogram\n"));
        let bucket = |le: &str| {
            sample(
                &page,
                &format!("vip_agent_event_to_dataplane_seconds_bucket{{{LABELS},le=\"{le}\"}}"),
            )
        };
        // Writes of 40 us, 700 us and 20 ms.
        assert_eq!(bucket("0.000025"), "0");
        assert_eq!(bucket("0.00005"), "1");
        assert_eq!(bucket("0.0005"), "1");
        assert_eq!(bucket("0.001"), "2");
        assert_eq!(bucket("0.01"), "2");
        assert_eq!(bucket("0.025"), "3");
        assert_eq!(bucket("1"), "3");
        assert_eq!(bucket("+Inf"), "3");
        assert_eq!(
            sample(
                &page,
                &format!("vip_agent_event_to_dataplane_seconds_count{{{LABELS}}}")
            ),
            "3"
        );
        let sum: f64 = sample(
            &page,
            &format!("vip_agent_event_to_dataplane_seconds_sum{{{LABELS}}}"),
        )
        .parse()
        .expect("a number");
        assert!((sum - 0.02074).abs() < 1e-9, "{sum}");
        let buckets = page
            .lines()
            .filter(|l| l.starts_with("vip_agent_event_to_dataplane_seconds_bucket{"))
            .count();
        assert_eq!(buckets, LATENCY_BUCKETS.len() + 1);
    }

    /// Observations sent on the channel reach the registry through `follow`.
    #[tokio::test]
    async fn observations_travel_through_one_channel() {
        let r = Registry::default();
        let (observer, observations) = crate::observe::channel();
        let stop = CancellationToken::new();
        let follow = tokio::spawn(r.clone().follow(observations, stop.clone()));
        let clone = observer.clone();
        observer.observe(Observation::Vip {
            vip: IpAddr::from([10, 0, 0, 9]),
            interface: "eth0".into(),
            key: "/k".into(),
        });
        clone.observe(Observation::Write {
            vip: IpAddr::from([10, 0, 0, 9]),
            transition: true,
            latency: Duration::from_micros(30),
        });
        drop((observer, clone));
        follow.await.expect("ends once every observer is gone");
        assert!(r.render().contains(
            "vip_agent_transitions_total{vip=\"10.0.0.9\",interface=\"eth0\",key=\"/k\"} 1\n"
        ));
        assert!(r.serves(Some(IpAddr::from([10, 0, 0, 9]))));
    }
}
