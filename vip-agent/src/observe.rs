//! What the agent's subsystems report, and the channel that carries it to the metrics registry.
//!
//! The domain (gate, hooks, leader sources, the data plane writer) turns its own events into
//! [`Observation`]s, next to its own types, and sends them through one [`Observer`]: a cloneable
//! handle over one unbounded channel whose other end ([`Observations`]) the registry
//! ([`crate::metrics::Registry::follow`]) applies. Observations carry only plain values (names,
//! numbers, text), so this module and the registry import nothing above them.
//!
//! The same module defines the `/status` document ([`AgentStatus`]), which the daemon serves and
//! `vip-agent status --metrics-address` reads: one set of serde types for both ends.

use std::{net::IpAddr, time::Duration};

use tokio::sync::mpsc;

/// One report of a subsystem.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A VIP this agent serves (once, at startup).
    Vip {
        vip: IpAddr,
        interface: String,
        key: String,
    },
    /// The label values of the hook series (rendered at 0 until counted).
    HookLabels {
        events: &'static [&'static str],
        outcomes: &'static [&'static str],
    },
    /// The latest state of the leader source of `key`.
    Source {
        key: String,
        kind: SourceName,
        reached: bool,
        /// The source's progress (etcd revision, repmgr events applied, HTTP status).
        detail: i64,
    },
    /// A request the source received and judged (repmgr's event socket: `applied`, `ignored`,
    /// `rejected`).
    SourceEvent {
        outcome: &'static str,
        /// Every outcome (rendered at 0 until counted).
        outcomes: &'static [&'static str],
    },
    /// A data-plane write for `vip`: whether it changed the role, and the time from the source's
    /// answer to the completed write.
    Write {
        vip: IpAddr,
        transition: bool,
        latency: Duration,
    },
    /// The promotion gate in front of `vip`.
    Gate { vip: IpAddr, gate: GateObservation },
    /// A finished `on-promote` / `on-demote` run of `vip`.
    Hook { vip: IpAddr, run: HookRun },
}

/// How a leader source names itself (a copy of the domain's source kind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceName {
    /// `etcd`, `repmgr`, `patroni`: metric names (`vip_agent_<name>_connected`) and `/status`.
    pub name: &'static str,
    /// What is asked, for messages (`<what> unreachable`).
    pub what: &'static str,
    /// The metric name and help of the source's progress.
    pub detail: (&'static str, &'static str),
}

/// A promotion gate's status in plain values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateObservation {
    /// The current state, one of `states`.
    pub state: &'static str,
    /// Every state (the enum series).
    pub states: &'static [&'static str],
    /// `CLOCK_MONOTONIC` ns when the current wait began; `None` unless waiting.
    pub waiting_since_ns: Option<u64>,
    /// How long the last finished episode waited, in ns.
    pub last_wait_ns: u64,
    /// How the last episode ended, one of `outcomes`' names.
    pub last_outcome: Option<&'static str>,
    /// Finished episodes per outcome, every outcome listed.
    pub outcomes: Vec<(&'static str, u64)>,
    /// The last probe result ("" when none yet): `/status` only, never a label.
    pub last_probe: String,
    /// The Patroni REST API the gate asks and where that URL came from.
    pub patroni_url: Option<(String, &'static str)>,
    /// Fences because the database stopped being a read-write primary while answering.
    pub demotions: u64,
    /// The failsafe policy.
    pub failsafe: FailsafeObservation,
}

/// The failsafe policy's status in plain values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailsafeObservation {
    /// Patroni is being asked (the leader source unreachable while answering).
    pub probing: bool,
    /// The VIP is held past its lease deadline from `lease_until_ns` to `until_ns`.
    pub lease_until_ns: u64,
    pub until_ns: u64,
    pub extensions: u64,
    pub fences: u64,
}

impl FailsafeObservation {
    /// Whether the VIP is held past its lease deadline at `now_ns`.
    #[must_use]
    pub fn holding_at(&self, now_ns: u64) -> bool {
        now_ns < self.until_ns && now_ns >= self.lease_until_ns
    }
}

/// A finished hook run in plain values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookRun {
    pub event: &'static str,
    pub outcome: &'static str,
    pub attempts: u32,
    pub duration: Duration,
}

/// The sending end: cloned into every subsystem that reports.
#[derive(Clone, Debug)]
pub struct Observer {
    tx: mpsc::UnboundedSender<Observation>,
}

impl Observer {
    /// Report `observation`; never blocks (called from the data plane writer's hot path). Lost
    /// once the registry stopped, at shutdown.
    pub fn observe(&self, observation: Observation) {
        let _ = self.tx.send(observation);
    }
}

/// The receiving end, for the registry.
#[derive(Debug)]
pub struct Observations {
    rx: mpsc::UnboundedReceiver<Observation>,
}

impl Observations {
    /// The next observation; `None` once every [`Observer`] is gone.
    pub async fn next(&mut self) -> Option<Observation> {
        self.rx.recv().await
    }

    /// An observation already sent, without waiting.
    pub fn try_next(&mut self) -> Option<Observation> {
        self.rx.try_recv().ok()
    }
}

/// The one observation channel.
#[must_use]
pub fn channel() -> (Observer, Observations) {
    let (tx, rx) = mpsc::unbounded_channel();
    (Observer { tx }, Observations { rx })
}

// ---------------------------------------------------------------------------------------------
// The `/status` document

/// `GET /status`: the agent as it sees itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentStatus {
    /// The agent's version.
    pub version: String,
    /// What `/health` says: the leader source of every key is reached.
    pub healthy: bool,
    /// The kind of leader source (`etcd`, `repmgr`, `patroni`), once known.
    pub source: Option<String>,
    /// Per trigger key: whether its source was reached at its last attempt.
    pub keys: Vec<KeyStatus>,
    pub vips: Vec<VipStatusView>,
}

/// One trigger key's source.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyStatus {
    pub key: String,
    pub reached: bool,
}

/// One VIP, as the daemon sees it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VipStatusView {
    pub vip: IpAddr,
    pub interface: String,
    pub key: String,
    /// The data plane answers for the VIP now.
    pub answering: bool,
    /// Until the data plane's deadline; 0 when fenced or expired.
    pub deadline_remaining_ms: u64,
    /// The kind of leader source of the VIP's key (`etcd`, `repmgr`, `patroni`), once known.
    pub source: Option<String>,
    /// Whether that source was reached at its last attempt.
    pub source_reached: bool,
    /// The promotion gate and failsafe policy; `None` before the gate first reported.
    pub gate: Option<GateView>,
}

/// One VIP's promotion gate and failsafe policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GateView {
    /// `off`, `idle`, `waiting` or `open`.
    pub state: String,
    /// How long the current wait has lasted (0 unless waiting).
    pub waiting_ms: u64,
    /// The last probe result: why it waits (or last waited).
    pub last_probe: Option<String>,
    /// How the last wait ended: `primary`, `standby_leader`, `no_patroni`, `timeout`, `cancelled`.
    pub last_outcome: Option<String>,
    /// How long the last finished wait took.
    pub last_wait_ms: u64,
    /// Held past the lease deadline on Patroni's failsafe confirmation right now.
    pub failsafe_holding: bool,
    /// Fences because the database stopped being a read-write primary while answering.
    pub demotions: u64,
    /// The Patroni REST API the gate asks, and where that came from (`patroni-url`,
    /// `member-key`, `default`).
    pub patroni_url: Option<String>,
    pub patroni_url_source: Option<String>,
    /// The kind of leader source of the VIP's key (`etcd`, `repmgr`, `patroni`), and whether it
    /// was reached at its last attempt.
    pub source: Option<String>,
    pub source_reached: Option<bool>,
}

impl GateView {
    /// The text form: `gate state=open waiting_ms=0 last_outcome=primary last_wait_ms=12
    /// failsafe_holding=false demotions=0 ... last_probe="..."`.
    #[must_use]
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut line = format!(
            "gate state={} waiting_ms={} last_outcome={} last_wait_ms={} failsafe_holding={} demotions={}",
            self.state,
            self.waiting_ms,
            self.last_outcome.as_deref().unwrap_or("none"),
            self.last_wait_ms,
            self.failsafe_holding,
            self.demotions
        );
        if let (Some(url), Some(source)) = (&self.patroni_url, &self.patroni_url_source) {
            let _ = write!(line, " patroni_url={url} patroni_url_from={source}");
        }
        if let (Some(source), Some(reached)) = (&self.source, self.source_reached) {
            let _ = write!(line, " source={source} source_reached={reached}");
        }
        if let Some(probe) = &self.last_probe {
            let _ = write!(line, " last_probe={probe:?}");
        }
        line
    }
}
