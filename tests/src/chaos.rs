//! The fault suite: a netns [`Cluster`] whose nodes run the real agent, a client that sends an ARP
//! request for the VIP every millisecond and records which MAC answers each one, and a seeded chaos
//! driver that mixes Patroni's key operations with faults. Every probe is checked afterwards against
//! the recorded timeline; [`ChaosReport`] counts each invariant's violations (the goal is 0).
//!
//! Used by `tests/tests/fault_suite.rs` (a short run in `cargo xtask test`) and by the `vip-soak`
//! binary (`cargo xtask soak`, the long run that writes RELIABILITY.md).
//!
//! # The model
//!
//! * **Patroni** is simulated from the client host, one member per node (`node1`, `node2`, ...),
//!   each with its own lease of [`ChaosConfig::lease_ttl_s`] seconds, kept alive every third of
//!   it like Patroni's `loop_wait` (10 s of a 30 s `ttl` by default; 1 s here). A switchover is Patroni's release (delete if the value is still mine)
//!   followed by the target's acquire (create if absent, with its lease); a failover is an acquire
//!   once the key is gone. A member whose node is partitioned from etcd cannot reach etcd either:
//!   no keepalive, no writes. A "Patroni death" stops the holder's keepalives until the lease
//!   expires and etcd deletes the key.
//! * **etcd** is a cluster of [`ChaosConfig::etcd_members`] members (three by default), each in its
//!   own namespace; the agents list every member in `dcs-endpoints` and the simulated Patroni, like
//!   Patroni, talks to one member at a time and moves to the next one when a request fails.
//! * **Faults** ([`Action`]): an operator's delete, another member's value, SIGKILL, SIGSTOP then
//!   SIGCONT, SIGTERM then restart, a node cut off from etcd (blackhole routes), a node's
//!   interface set down then up, one etcd member killed and restarted (quorum kept), the whole
//!   etcd cluster killed and restarted, the VIP address removed by hand on the holder or added by
//!   hand on a standby, and a gratuitous ARP for the VIP from the client. Storms, in which all of
//!   them may happen and overlap on different nodes, alternate with calms, in which agents, links
//!   and etcd are left alone ([`STORM`], [`CALM`]).
//! * **Timestamps** are kernel `CLOCK_MONOTONIC` ns, the clock of the XDP program's deadline. Every
//!   change is recorded with the time just before it was made and the time it was complete, so each
//!   check can take whichever of the two makes it lenient; a violation is only counted when it is
//!   certain. Each probe carries a 16-bit sequence number in its sender IP field (the program copies
//!   it into the reply), so every reply is matched to the exact request it answers.
//!
//! # The invariants (see [`Invariant`])
//!
//! * **At most one MAC** answers a probe, always: no settle window after a change, and no
//!   exemption while a node could not see it (agent stopped, killed or cut off from etcd, its
//!   interface down, reconnecting); the fence handshake makes that hold. A node the key does not
//!   name does not answer once it has seen the change (connected for
//!   [`Bounds::answer_after_reconnect`]) and [`Bounds::settle`] has passed since it; and an old
//!   holder in touch through a change fences its data plane (the time its log gives) within
//!   [`Bounds::settle`] of it: fence latency is measured and bounded.
//!
//!   A node is *connected* while its agent runs, its interface is up, no blackhole route cuts it
//!   off and etcd serves. The kill of one etcd member counts as a reconnection of every node for
//!   the liveness checks (the agents whose member died move to the next endpoint with backoff, and
//!   if it was the raft leader no member serves linearizable reads until a new one is elected), but
//!   not for the deadline checks: etcd as a whole kept serving, so a confirmation could still have
//!   been made, which only makes the deadline bound later (more lenient), never tighter.
//! * **No node answers after its deadline**: a probe sent at `t` may be answered by node `i` only
//!   if `t < min(C, K) + TTL − 500 ms`, where `C` is the last moment at or before `t` at which node
//!   `i`'s agent was running, reachable from etcd, and the key named it, and `K` the end of the
//!   last grant or keepalive of member `i`'s lease sent by `C` (or an etcd election's lease
//!   extension, [`ELECTION_EXTENSION`] after it was observed): the agent's confirmation is sent by
//!   `C`, and etcd answers at most the TTL left since `K`, so no deadline it can prove lies later
//!   (docs/safety.md §2). With keepalives every TTL/3, dropping the 500 ms margin or counting the
//!   granted instead of the remaining TTL gives deadlines beyond it. The pinned map's deadline,
//!   sampled at every step, is held to the same bound. And after etcd deleted the key because its lease
//!   expired, the node it named does not answer a probe sent later than 500 ms before that
//!   deletion was observed.
//! * **The holder answers**: while the key names node `i`, its agent runs and reaches etcd and its
//!   Patroni keeps the lease alive, node `i` answers within [`Bounds::answer_after_change`] of the
//!   change (or [`Bounds::answer_after_reconnect`] of its agent's return: restart, SIGCONT,
//!   partition healed, interface up, etcd back, an etcd member killed), and is then never silent
//!   for [`Bounds::holder_gap`].
//! * **The agent never panics and never exits on its own**; SIGTERM ends it with status 0.
//! * The address removed by hand on the holder comes back, the one added by hand on a standby goes
//!   away (and the standby stays silent), and a GARP for the VIP from another host is counted as a
//!   conflict by the node that answers.
//! * An interface set down and up keeps the agent's XDP program attached (same program id), and
//!   a node whose data plane answers once the link is back has the VIP address (IPv4 addresses
//!   survive a link down; the agent does not have to re-add it).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::Signal;
use vip_agent::clock::monotonic_ns;
use vip_common::frame::{ARP_OP_REPLY, ARP_OP_REQUEST, build_arp};

use crate::{arp::ArpSocket, cluster::Cluster};

const MS: u64 = 1_000_000;
/// One ARP request per millisecond.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
/// Sequence numbers carried in the probes' sender IP: 255 × 256 values (one /24 of 10.77.0.0/16,
/// the cluster's own, is skipped).
const TAGS: u32 = 255 * 256;
/// The trigger value of a member that runs no agent ("another member's value").
const FOREIGN_MEMBER: &str = "node9";
/// `Answer::who` of a MAC that belongs to no node.
const FOREIGN_MAC: u8 = u8::MAX;
/// Patroni's `loop_wait` is a third of its `ttl` (10 s of 30 s by default): the simulated members
/// keep their leases alive at that rhythm, every [`ChaosConfig::lease_ttl_s`] / 3.
const KEEPALIVES_PER_TTL: u32 = 3;
/// After etcd elects a leader, it extends every lease by an election timeout (etcd's `Promote`;
/// 1 s at etcd's defaults, which the cluster keeps): a lease may then outlive its last keepalive
/// by more than its TTL. An election observed by the simulated Patroni (a new raft term with a
/// leader) counts as a keepalive this long after the observation: the extension plus slack for
/// the new leader's promotion after the term was visible.
const ELECTION_EXTENSION: Duration = Duration::from_secs(3);
/// An election may have happened this long before the simulated Patroni observed it (it polls
/// every [`POLL_EVERY`], but cannot while its member is down or etcd is restarting): elections
/// observed up to this long after `C` count for the bound at `C`.
const ELECTION_OBSERVED_WITHIN: Duration = Duration::from_secs(5);
/// How often the simulated Patroni reads the key (to notice deletions by lease expiry).
const POLL_EVERY: Duration = Duration::from_millis(100);

/// The driver alternates storms, in which every action may happen (agents, links and etcd
/// faults overlapping on different nodes), with calms, in which the agents and etcd are left alone
/// (flips, deletes, other values, Patroni deaths, drift and GARPs only), so that after the
/// reconnect bound every node has seen every change and the strictest checks apply.
const STORM: Duration = Duration::from_secs(12);
/// See [`STORM`].
const CALM: Duration = Duration::from_secs(18);

/// The environment variable that replays a run: `VIP_CHAOS_SEED=<seed>`.
pub const SEED_ENV: &str = "VIP_CHAOS_SEED";

/// The agents' `fence-record-ttl` in the fault suite: short, like its 3 s leases, so that a node
/// out of touch holds a new holder back for seconds, not ten.
pub const RECORD_TTL: Duration = Duration::from_secs(3);

/// The seed from [`SEED_ENV`], or a fresh random one.
///
/// # Panics
/// When [`SEED_ENV`] is set but is not a number.
#[must_use]
pub fn seed_from_env() -> u64 {
    std::env::var(SEED_ENV).map_or_else(
        |_| fastrand::u64(..),
        |s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_ENV}={s:?} is not a number"))
        },
    )
}

/// The bounds the invariants are checked with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// The fence bound: a node the key no longer names, having seen the change, stops answering
    /// within this long of it, and an old holder in touch through a change fences its data plane
    /// (its log's time) within it (the agents' logs show milliseconds). Two answers are never
    /// excused by it.
    pub settle: Duration,
    /// The key's node answers within this long of the key naming it (its agent connected, having
    /// seen the change: the agents' logs show milliseconds).
    pub answer_after_change: Duration,
    /// Once it has answered, the key's node is never silent for this long while it holds the key:
    /// with 3 s leases its deadline runs 1.5 s ahead of each 1 s confirmation.
    pub holder_gap: Duration,
    /// ... or within this long of its agent's return (restart, SIGCONT, partition healed, etcd back):
    /// the agent's reconnect backoff is at most 1 s (`backoff_max`), plus startup, a read and
    /// the fence handshake's wait for the other records.
    pub answer_after_reconnect: Duration,
    /// The agent's promise: its deadline lies at least this far before the lease could expire
    /// (`safety_margin`, 500 ms).
    pub safety_margin: Duration,
    /// How long the agent may take to put back (or take away) an address changed by hand, and the
    /// data plane to count a conflict.
    pub drift: Duration,
    /// The agents' `fence-record-ttl` (the fence handshake): a new holder may wait this long after
    /// another node lost touch (its agent killed, stopped, cut off) for that node's record to
    /// expire, plus its last keepalive period (a third of it).
    pub record_ttl: Duration,
}

impl Default for Bounds {
    fn default() -> Self {
        Self {
            settle: Duration::from_secs(1),
            answer_after_change: Duration::from_secs(1),
            holder_gap: Duration::from_secs(2),
            answer_after_reconnect: Duration::from_secs(8),
            safety_margin: Duration::from_millis(500),
            drift: Duration::from_secs(3),
            record_ttl: RECORD_TTL,
        }
    }
}

/// What one chaos run does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// The vip-agent binary the nodes run.
    pub agent_bin: PathBuf,
    /// The cluster's subnet (`10.77.<subnet>.0/24`).
    pub subnet: u8,
    /// Nodes with an agent (2 to 7).
    pub nodes: usize,
    /// How long faults are injected; a recovery phase of [`Bounds::answer_after_reconnect`] plus
    /// a few seconds follows.
    pub duration: Duration,
    /// The RNG seed (printed; [`SEED_ENV`] replays it).
    pub seed: u64,
    /// TTL of every Patroni lease, in seconds.
    pub lease_ttl_s: i64,
    /// Members of the etcd cluster (1 to 5). With fewer than 3, [`Action::EtcdMemberLoss`] is
    /// never applicable (one member down would take the quorum with it).
    pub etcd_members: usize,
    /// The bounds of the checks.
    pub bounds: Bounds,
    /// Print every action to stderr as it happens.
    pub verbose: bool,
}

impl ChaosConfig {
    /// A run of `duration` on `nodes` nodes with 3 s leases, a three-member etcd cluster and the
    /// default bounds.
    #[must_use]
    pub fn new(agent_bin: &Path, subnet: u8, nodes: usize, duration: Duration, seed: u64) -> Self {
        Self {
            agent_bin: agent_bin.to_path_buf(),
            subnet,
            nodes,
            duration,
            seed,
            lease_ttl_s: 3,
            etcd_members: 3,
            bounds: Bounds::default(),
            verbose: false,
        }
    }
}

/// What the driver does; each is counted in [`ChaosReport::actions`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Patroni switchover: the holder releases, another member acquires.
    Switchover,
    /// An operator deletes the key (`etcdctl del`).
    Delete,
    /// The key is written with another member's value (a member without an agent), with a lease
    /// nobody keeps alive.
    ForeignValue,
    /// The holder's Patroni stops refreshing its lease for 1.5-6 s (hung or dead): the key expires.
    PatroniDeath,
    /// SIGKILL an agent; restarted 0.3-3 s later.
    Kill,
    /// SIGSTOP an agent; SIGCONT 0.3-4 s later.
    Stop,
    /// SIGTERM an agent (must exit 0) and start it again at once.
    Restart,
    /// Cut a node (agent and Patroni) off from etcd with blackhole routes for 0.3-5 s.
    Partition,
    /// Set a node's interface down for 0.3-3 s, then up: the node can neither answer nor reach
    /// etcd meanwhile (its Patroni neither).
    LinkDown,
    /// SIGKILL one etcd member (the quorum stays); restarted 0.3-5 s later with its data.
    EtcdMemberLoss,
    /// SIGKILL every etcd member (etcd is down); restarted 0.3-3 s later with their data.
    EtcdRestart,
    /// Remove the VIP address by hand on the answering holder: the agent puts it back.
    AddressRemoved,
    /// Add the VIP address by hand on a standby: it stays silent and the agent removes it.
    AddressAdded,
    /// The client sends a gratuitous ARP (request and reply) for the VIP: the answering node counts
    /// a conflict.
    ForeignGarp,
}

impl Action {
    /// Every action.
    pub const ALL: [Self; 14] = [
        Self::Switchover,
        Self::Delete,
        Self::ForeignValue,
        Self::PatroniDeath,
        Self::Kill,
        Self::Stop,
        Self::Restart,
        Self::Partition,
        Self::LinkDown,
        Self::EtcdMemberLoss,
        Self::EtcdRestart,
        Self::AddressRemoved,
        Self::AddressAdded,
        Self::ForeignGarp,
    ];

    /// A short name.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Switchover => "switchover",
            Self::Delete => "key deleted",
            Self::ForeignValue => "another member's value",
            Self::PatroniDeath => "Patroni dies (lease expires)",
            Self::Kill => "agent SIGKILL + restart",
            Self::Stop => "agent SIGSTOP + SIGCONT",
            Self::Restart => "agent SIGTERM + restart",
            Self::Partition => "node cut off from etcd",
            Self::LinkDown => "interface down + up",
            Self::EtcdMemberLoss => "one etcd member killed + restarted",
            Self::EtcdRestart => "etcd killed + restarted (every member)",
            Self::AddressRemoved => "address removed on holder",
            Self::AddressAdded => "address added on standby",
            Self::ForeignGarp => "GARP for the VIP from another host",
        }
    }

    /// What it does, for the report.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::Switchover => {
                "Patroni's release (delete if the value is the holder's) then the target's acquire (create if absent, with its lease)"
            }
            Self::Delete => "an operator deletes the key (`etcdctl del`)",
            Self::ForeignValue => {
                "the key is written with the value of a member that runs no agent, with a lease nobody keeps alive (it expires)"
            }
            Self::PatroniDeath => {
                "the holder's Patroni stops refreshing its lease for 1.5-6 s; with a 3 s TTL etcd usually expires the key"
            }
            Self::Kill => {
                "SIGKILL of an agent, restarted 0.3-3 s later (it adopts the pinned program)"
            }
            Self::Stop => "SIGSTOP of an agent, SIGCONT 0.3-4 s later",
            Self::Restart => "SIGTERM of an agent (it must exit 0), started again at once",
            Self::Partition => {
                "a node (its agent and its Patroni) cut off from etcd by blackhole routes for 0.3-5 s"
            }
            Self::LinkDown => {
                "a node's interface set down (`ip link set dev X down`) for 0.3-3 s, then up: no answers and no etcd meanwhile; its XDP program must stay attached and its address stay"
            }
            Self::EtcdMemberLoss => {
                "one member of the etcd cluster SIGKILLed (the quorum stays), restarted 0.3-5 s later with its data; the agents move to another endpoint"
            }
            Self::EtcdRestart => {
                "every etcd member SIGKILLed (etcd down), restarted 0.3-3 s later with their data"
            }
            Self::AddressRemoved => {
                "the VIP address removed by hand on the answering holder: the agent must put it back"
            }
            Self::AddressAdded => {
                "the VIP address added by hand on a standby: no ARP answer from it, and the agent must remove it"
            }
            Self::ForeignGarp => {
                "the client sends a gratuitous ARP request and reply for the VIP: the answering node's conflicts counter must rise"
            }
        }
    }

    const fn weight(self) -> u32 {
        match self {
            Self::Switchover => 6,
            Self::Kill | Self::Stop | Self::Partition | Self::PatroniDeath => 2,
            _ => 1,
        }
    }

    /// Faults of agents, links or etcd: only during storms.
    const fn node_fault(self) -> bool {
        matches!(
            self,
            Self::Kill
                | Self::Stop
                | Self::Restart
                | Self::Partition
                | Self::LinkDown
                | Self::EtcdMemberLoss
                | Self::EtcdRestart
        )
    }
}

/// The invariants; each is counted in [`ChaosReport::violations`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Invariant {
    /// Two MACs answered one probe after both nodes had seen the last change.
    TwoAnswers,
    /// A node the key does not name answered after it had seen the change.
    StaleAnswer,
    /// The old holder, in touch through a change, fenced its data plane (its log's time) later
    /// than [`Bounds::settle`] after the change.
    SlowFence,
    /// A node answered a probe sent after `C + TTL − 500 ms` (see the module documentation).
    PastDeadline,
    /// A pinned map's deadline lay beyond `C + TTL − 500 ms` when sampled.
    MapPastDeadline,
    /// A node answered after etcd deleted its key on lease expiry (less the 500 ms margin).
    PastLeaseExpiry,
    /// The key's node, connected, did not answer within the bound.
    HolderSilent,
    /// A MAC that belongs to no node answered.
    ForeignAnswer,
    /// The address removed by hand on the holder did not come back.
    AddressNotRestored,
    /// The address added by hand on a standby was not removed.
    AddressNotRemoved,
    /// A GARP from another host while a node answered was not counted as a conflict.
    ConflictNotCounted,
    /// An interface came back up without the XDP program it had before it went down.
    XdpDetached,
    /// An agent exited without being told to.
    AgentExited,
    /// SIGTERM did not end an agent with status 0 within 10 s.
    UncleanStop,
    /// An agent's log says it panicked.
    AgentPanicked,
}

impl Invariant {
    /// Every invariant, in report order.
    pub const ALL: [Self; 15] = [
        Self::TwoAnswers,
        Self::StaleAnswer,
        Self::SlowFence,
        Self::PastDeadline,
        Self::MapPastDeadline,
        Self::PastLeaseExpiry,
        Self::HolderSilent,
        Self::ForeignAnswer,
        Self::AddressNotRestored,
        Self::AddressNotRemoved,
        Self::ConflictNotCounted,
        Self::XdpDetached,
        Self::AgentExited,
        Self::UncleanStop,
        Self::AgentPanicked,
    ];

    /// What it says, for the report.
    #[must_use]
    pub const fn describe(self) -> &'static str {
        match self {
            Self::TwoAnswers => {
                "probes answered by two MACs (no exemption: whether or not both nodes had seen the change)"
            }
            Self::StaleAnswer => {
                "probes answered by a node the key does not name, after it had seen the change (later than the fence bound after it)"
            }
            Self::SlowFence => {
                "changes the old holder saw (in touch throughout) whose fence reached its data plane (its log) later than the fence bound"
            }
            Self::PastDeadline => {
                "probes answered by a node after its deadline: sent later than min(C, K) + TTL - 500 ms (C = last moment its agent ran, reached etcd and the key named it; K = end of the last keepalive its Patroni sent by C, or an etcd election's lease extension)"
            }
            Self::MapPastDeadline => {
                "pinned-map deadlines (sampled every step) later than min(C, K) + TTL - 500 ms"
            }
            Self::PastLeaseExpiry => {
                "probes answered by the old holder after etcd deleted its key on lease expiry (less 500 ms)"
            }
            Self::HolderSilent => {
                "probes sent after the key's node (connected) was due to answer but before it did, or after it had been silent for the gap bound while holding the key"
            }
            Self::ForeignAnswer => "probes answered by a MAC of no node",
            Self::AddressNotRestored => {
                "hand-removed addresses the holder's agent did not put back, and answering nodes without the address after their interface came back up"
            }
            Self::AddressNotRemoved => "hand-added addresses a standby's agent did not remove",
            Self::ConflictNotCounted => "GARPs from another host not counted as a conflict",
            Self::XdpDetached => {
                "interfaces set down and up that came back without the XDP program they had"
            }
            Self::AgentExited => "agents that exited on their own",
            Self::UncleanStop => "SIGTERMs after which the agent did not exit 0",
            Self::AgentPanicked => "agent log lines saying `panicked`",
        }
    }
}

/// Counts of one percentile summary, in ms.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// How many were measured.
    pub n: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

impl Latency {
    fn of(mut values: Vec<u64>) -> Self {
        values.sort_unstable();
        let at = |q: f64| {
            let i = ((values.len().saturating_sub(1)) as f64 * q).round() as usize;
            values.get(i).map_or(0.0, |v| ns_to_ms(*v))
        };
        Self {
            n: values.len(),
            p50_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: values.last().map_or(0.0, |v| ns_to_ms(*v)),
        }
    }
}

/// What a run did and found.
#[derive(Clone, Debug, Default)]
pub struct ChaosReport {
    /// The seed ([`SEED_ENV`] replays it).
    pub seed: u64,
    /// Nodes with an agent.
    pub nodes: usize,
    /// Members of the etcd cluster.
    pub etcd_members: usize,
    /// Lease TTL, seconds.
    pub lease_ttl_s: i64,
    /// The bounds used.
    pub bounds: Bounds,
    /// Fault injection time, plus the recovery phase.
    pub chaos: Duration,
    /// Wall time of the whole run, setup and analysis included.
    pub took: Duration,
    /// Times the key was made to name a node (switchovers and failovers).
    pub flips: u64,
    /// Every change of the key, whatever made it.
    pub key_changes: u64,
    /// Key deletions by lease expiry (Patroni deaths, partitions, other members' values).
    pub expiries: u64,
    /// Actions performed, by kind.
    pub actions: BTreeMap<Action, u64>,
    /// ARP probes sent.
    pub probes: u64,
    /// Probes with at least one answer.
    pub answered: u64,
    /// Answers per node.
    pub answers_by_node: Vec<u64>,
    /// Probes answered by two MACs: in all.
    pub two_answers: u64,
    /// ... of which while a node had not been able to see the change (bounded by its deadline).
    pub two_answers_unseen: u64,
    /// ... of which, the nodes caught up, within the settle window of a change.
    pub two_answers_settling: u64,
    /// Answers checked against a deadline bound.
    pub deadline_checks: u64,
    /// Map deadlines sampled.
    pub map_samples: u64,
    /// Probes at which a holder was required to have answered.
    pub holder_checks: u64,
    /// Holds (the key naming a connected node for longer than its bound) checked for a first answer.
    pub holds_checked: u64,
    /// Address removals restored by the agent.
    pub addresses_restored: u64,
    /// Hand-added addresses removed by the agent.
    pub addresses_removed: u64,
    /// Conflicts counted after a GARP.
    pub conflicts_counted: u64,
    /// GARPs whose check was inconclusive (the node stopped answering meanwhile).
    pub conflicts_inconclusive: u64,
    /// Interfaces back up with the same XDP program attached.
    pub links_intact: u64,
    /// Change of the key → old holder's `data plane fenced` (agent log), when it was connected.
    pub fence_latency: Latency,
    /// Change of the key → new holder's `data plane answering` (agent log), when it was connected.
    pub answer_latency: Latency,
    /// The longest silence of an answering holder in the lease TTL after an etcd member kill, or
    /// until its hold ended (the key naming it, its agent, link and Patroni fine; at least the
    /// settle window): what riding through a member loss took.
    pub member_loss_silence: Latency,
    /// Violations by invariant (every invariant present, 0 when none).
    pub violations: BTreeMap<Invariant, u64>,
    /// The first few violations of each invariant, with their context.
    pub examples: Vec<String>,
    /// The driver's action log (ms since the start: action).
    pub timeline: Vec<String>,
}

impl ChaosReport {
    /// All violations together.
    #[must_use]
    pub fn total_violations(&self) -> u64 {
        self.violations.values().sum()
    }

    /// A short plain-text summary.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "seed {} ({SEED_ENV}={} replays it), {} nodes, {} etcd members, {} s leases, {:.0} s of faults and recovery, {:.0} s in all",
            self.seed,
            self.seed,
            self.nodes,
            self.etcd_members,
            self.lease_ttl_s,
            self.chaos.as_secs_f64(),
            self.took.as_secs_f64()
        );
        let _ = writeln!(
            s,
            "flips {}, key changes {}, lease expiries {}, probes {} (answered {}, by node {:?})",
            self.flips,
            self.key_changes,
            self.expiries,
            self.probes,
            self.answered,
            self.answers_by_node
        );
        let actions: Vec<String> = self
            .actions
            .iter()
            .map(|(a, n)| format!("{}: {n}", a.label()))
            .collect();
        let _ = writeln!(s, "actions: {}", actions.join(", "));
        let _ = writeln!(
            s,
            "two answers {} (settling {}, unseen change {}); deadline checks {}, map samples {}, holds checked {}, holder probes {}",
            self.two_answers,
            self.two_answers_settling,
            self.two_answers_unseen,
            self.deadline_checks,
            self.map_samples,
            self.holds_checked,
            self.holder_checks
        );
        let _ = writeln!(
            s,
            "addresses restored {}, removed {}; conflicts counted {} (inconclusive {}); interfaces back up with XDP attached {}",
            self.addresses_restored,
            self.addresses_removed,
            self.conflicts_counted,
            self.conflicts_inconclusive,
            self.links_intact
        );
        let _ = writeln!(
            s,
            "change -> fenced (agent logs): {}; change -> answering: {}",
            latency_text(&self.fence_latency),
            latency_text(&self.answer_latency)
        );
        let _ = writeln!(
            s,
            "holder's longest silence in the TTL after an etcd member kill: {}",
            latency_text(&self.member_loss_silence)
        );
        let violations: Vec<String> = self
            .violations
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| format!("{i:?}: {n}"))
            .collect();
        let _ = writeln!(
            s,
            "violations: {}",
            if violations.is_empty() {
                "none".to_owned()
            } else {
                violations.join(", ")
            }
        );
        s
    }

    /// The violation examples and the action log around them (for a failing run).
    #[must_use]
    pub fn explain(&self) -> String {
        let mut s = String::new();
        for e in &self.examples {
            let _ = writeln!(s, "  {e}");
        }
        let _ = writeln!(s, "action log (s since start):");
        for line in &self.timeline {
            let _ = writeln!(s, "  {line}");
        }
        s
    }

    /// The results as Markdown tables (the body of RELIABILITY.md).
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## Invariants\n");
        let _ = writeln!(md, "| invariant | violations |\n|---|---:|");
        for inv in Invariant::ALL {
            let _ = writeln!(
                md,
                "| {} | {} |",
                inv.describe(),
                self.violations.get(&inv).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            md,
            "\nChecked: {} probes ({} answered; by node: {}), {} answers against a deadline bound, \
             {} pinned-map deadlines, {} holds checked for a first answer within the bound and {} \
             probes at which the key's node had to have answered.\n",
            self.probes,
            self.answered,
            self.answers_by_node
                .iter()
                .enumerate()
                .map(|(i, n)| format!("node{} {n}", i + 1))
                .collect::<Vec<_>>()
                .join(", "),
            self.deadline_checks,
            self.map_samples,
            self.holds_checked,
            self.holder_checks
        );
        let _ = writeln!(
            md,
            "Probes answered by two MACs: {} in all ({} within the fence bound of a change, {} \
             while one of the nodes could not see the change: its agent stopped, killed or cut off \
             from etcd, or reconnecting), every one a violation: {} violations. No window and no \
             exemption: a new holder answers only once every other agent's fence record says \
             fenced or has expired (docs/safety.md §7).\n",
            self.two_answers,
            self.two_answers_settling,
            self.two_answers_unseen,
            self.violations
                .get(&Invariant::TwoAnswers)
                .copied()
                .unwrap_or(0)
        );
        let _ = writeln!(md, "## Faults and flips\n");
        let _ = writeln!(md, "| action | what it does | times |\n|---|---|---:|");
        for a in Action::ALL {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                a.label(),
                a.describe(),
                self.actions.get(&a).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            md,
            "\nFlips (the key made to name a node, by switchover or failover): {}. Changes of the \
             key in all: {}, of which {} deletions by lease expiry. Addresses put back by the \
             agent: {}; hand-added addresses removed: {}. Conflicts counted after a GARP: {} ({} \
             inconclusive: the node stopped answering meanwhile). Interfaces back up with their XDP \
             program still attached: {}. etcd ran as a cluster of {} member(s); after a member \
             was killed, the holder's longest silence within the lease TTL or until its hold \
             ended (when it had been answering and nothing else happened to it): {}.\n",
            self.flips,
            self.key_changes,
            self.expiries,
            self.addresses_restored,
            self.addresses_removed,
            self.conflicts_counted,
            self.conflicts_inconclusive,
            self.links_intact,
            self.etcd_members,
            latency_text(&self.member_loss_silence)
        );
        let _ = writeln!(md, "## Bounds\n");
        let b = &self.bounds;
        let _ = writeln!(
            md,
            "| bound | value | why |\n|---|---:|---|\n\
             | lease TTL | {} s | every Patroni lease; kept alive every TTL / 3 (Patroni's `loop_wait`) |\n\
             | deadline bound | min(C, K) + TTL - {} ms | the agent's deadline is `t_sent + remaining TTL - 500 ms` from a confirmation sent at or before C; etcd's remaining TTL runs from the last keepalive K (or an election's extension) |\n\
             | fence bound | {} ms | after each change, for a node that saw it (no exemption for two answers); the agents' logs show the change reaching the data plane in {} (fence) and {} (answer, the fence handshake included) |\n\
             | holder answers | {} ms after the change, {} ms after its agent returns (restart, SIGCONT, partition healed, interface up, etcd back, an etcd member killed); with the fence handshake, or once every other node's fence record says fenced or has expired (record TTL {} s, plus a third of it) | the agents' logs show milliseconds; the reconnect backoff tops out at 1 s |\n\
             | holder gap | {} ms | while holding, never silent this long: 3 s leases keep the deadline 1.5 s ahead of each 1 s confirmation |\n\
             | drift and conflicts | {} ms | for the agent to restore or remove an address, and for the conflicts counter |\n",
            self.lease_ttl_s,
            b.safety_margin.as_millis(),
            b.settle.as_millis(),
            latency_text(&self.fence_latency),
            latency_text(&self.answer_latency),
            b.answer_after_change.as_millis(),
            b.answer_after_reconnect.as_millis(),
            b.record_ttl.as_secs(),
            b.holder_gap.as_millis(),
            b.drift.as_millis()
        );
        if !self.examples.is_empty() {
            let _ = writeln!(md, "## Violations found\n\n```");
            for e in &self.examples {
                let _ = writeln!(md, "{e}");
            }
            let _ = writeln!(md, "```\n");
        }
        md
    }
}

fn latency_text(l: &Latency) -> String {
    if l.n == 0 {
        "n/a".to_owned()
    } else {
        format!(
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
            l.p50_ms, l.p99_ms, l.max_ms, l.n
        )
    }
}

fn ns_to_ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Run the suite: build the cluster, inject faults for `config.duration`, recover, check.
///
/// # Panics
/// When the cluster cannot be built or a harness step fails (not on invariant violations: those
/// are counted in the report).
#[must_use]
pub fn run(config: &ChaosConfig) -> ChaosReport {
    assert!(
        (2..=7).contains(&config.nodes),
        "the fault suite runs 2 to 7 nodes"
    );
    let started = Instant::now();
    let mut cluster = Cluster::with_etcd_members(
        config.subnet,
        config.nodes,
        &config.agent_bin,
        &format!(
            "fence-record-ttl: {}s\n",
            config.bounds.record_ttl.as_secs()
        ),
        config.etcd_members,
    );
    let t_start = monotonic_ns();
    for i in 0..config.nodes {
        cluster.start_agent(i);
    }
    cluster.wait_running();
    let t_running = monotonic_ns();

    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let macs: Vec<[u8; 6]> = cluster.nodes.iter().map(|n| n.host.mac).collect();
    let shared = Arc::new(Mutex::new(Shared::new(&names)));
    let (tx, rx) = mpsc::channel();
    let running = AtomicBool::new(true);
    let probe_env = ProbeEnv {
        ns: cluster.client.ns.path(),
        ifname: cluster.client.ifname.clone(),
        subnet: config.subnet,
        vip: cluster.vip,
        macs: macs.clone(),
        limit: config.duration + config.bounds.answer_after_reconnect + Duration::from_secs(120),
    };
    let patroni_env = PatroniEnv {
        keepalive_every: Duration::from_secs(config.lease_ttl_s.unsigned_abs())
            / KEEPALIVES_PER_TTL,
        ns: cluster.client.ns.path(),
        endpoints: cluster.endpoints.clone(),
        key: cluster.key.clone(),
        ttl: config.lease_ttl_s,
    };
    let patroni_shared = Arc::clone(&shared);

    let (probes, recorded) = std::thread::scope(|s| {
        let stop = StopOnDrop(&running);
        let prober = s.spawn(|| probe_loop(&probe_env, &running));
        let patroni = s.spawn(move || patroni_thread(&patroni_env, &patroni_shared, &rx));
        let mut driver = Driver::new(&mut cluster, config, PatroniHandle { shared, tx }, t_start);
        for i in 0..config.nodes {
            driver.flag(Flag::Agent(i), true, t_start, t_running);
            driver.flag(Flag::Reach(i), true, t_start, t_start);
            driver.flag(Flag::Link(i), true, t_start, t_start);
            driver.flag(Flag::Patroni(i), true, t_start, t_start);
        }
        driver.flag(Flag::Etcd, true, t_start, t_start);
        driver.flag(Flag::Members, true, t_start, t_start);
        let chaos_started = Instant::now();
        driver.run(config.duration);
        driver.wind_down();
        let chaos = chaos_started.elapsed();
        let recorded = driver.finish(chaos);
        drop(stop);
        let probes = prober.join().expect("prober thread");
        patroni.join().expect("Patroni thread");
        (probes, recorded)
    });
    let logs: Vec<String> = (0..config.nodes).map(|i| cluster.log(i)).collect();
    let mut report = analyse(config, &recorded, &probes, &logs);
    drop(cluster);
    report.took = started.elapsed();
    report
}

/// Sets the flag to false when dropped (also when the driver panics, so the prober ends).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

fn enter_netns(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    setns(&file, CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// The prober

struct ProbeEnv {
    ns: PathBuf,
    ifname: String,
    subnet: u8,
    vip: Ipv4Addr,
    macs: Vec<[u8; 6]>,
    limit: Duration,
}

/// One reply: which probe it answers, and which node (or [`FOREIGN_MAC`]) sent it.
#[derive(Clone, Copy, Debug)]
struct Answer {
    seq: u32,
    who: u8,
}

#[derive(Debug, Default)]
struct ProbeLog {
    /// Send time of probe `seq` (index).
    sent: Vec<u64>,
    answers: Vec<Answer>,
}

/// The sender IP carrying sequence number `seq`: 10.77.x.y, never in the cluster's own /24.
fn tag_ip(subnet: u8, seq: u32) -> [u8; 4] {
    let tag = seq % TAGS;
    let hi = u8::try_from(tag / 256).expect("tag below 255 * 256");
    let lo = u8::try_from(tag % 256).expect("a byte");
    let hi = if hi >= subnet { hi + 1 } else { hi };
    [10, 77, hi, lo]
}

/// The sequence number (modulo [`TAGS`]) carried by `ip`, if it is a probe's sender IP.
fn untag(subnet: u8, ip: [u8; 4]) -> Option<u32> {
    let [10, 77, hi, lo] = ip else { return None };
    if hi == subnet {
        return None;
    }
    let hi = if hi > subnet { hi - 1 } else { hi };
    Some(u32::from(hi) * 256 + u32::from(lo))
}

fn probe_loop(env: &ProbeEnv, running: &AtomicBool) -> ProbeLog {
    enter_netns(&env.ns);
    let sock = ArpSocket::open(&env.ifname).expect("ARP socket on the client");
    let mac = sock.mac();
    let vip = env.vip.octets();
    let mut log = ProbeLog::default();
    let started = Instant::now();
    while running.load(Ordering::Relaxed) && started.elapsed() < env.limit {
        let seq = u32::try_from(log.sent.len()).expect("fewer than 2^32 probes");
        let frame = build_arp(
            [0xff; 6],
            mac,
            ARP_OP_REQUEST,
            mac,
            tag_ip(env.subnet, seq),
            [0; 6],
            vip,
        );
        let sent = monotonic_ns();
        if sock.send_frame(&frame).is_err() {
            // Not a probe (ENOBUFS and the like); try again shortly.
            std::thread::sleep(PROBE_INTERVAL);
            continue;
        }
        log.sent.push(sent);
        let frames = sock
            .recv_until(Instant::now() + PROBE_INTERVAL)
            .expect("receive ARP on the client");
        for f in frames {
            if f.arp.op != ARP_OP_REPLY || f.arp.spa != vip || f.eth_dst != mac {
                continue;
            }
            let Some(tag) = untag(env.subnet, f.arp.tpa) else {
                continue;
            };
            let back = (seq % TAGS + TAGS - tag) % TAGS;
            let Some(of) = seq.checked_sub(back) else {
                continue;
            };
            let who = env
                .macs
                .iter()
                .position(|m| *m == f.arp.sha)
                .and_then(|i| u8::try_from(i).ok())
                .unwrap_or(FOREIGN_MAC);
            log.answers.push(Answer { seq: of, who });
        }
    }
    log
}

// ---------------------------------------------------------------------------------------------
// Patroni, simulated from the client host

/// Who the key names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Absent,
    Node(usize),
    Foreign,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Absent => f.write_str("absent"),
            Self::Node(i) => write!(f, "node{}", i + 1),
            Self::Foreign => f.write_str(FOREIGN_MEMBER),
        }
    }
}

/// One change of the key: made between `begin` and `end` (kernel monotonic ns).
#[derive(Clone, Copy, Debug)]
struct KeyChange {
    begin: u64,
    end: u64,
    holder: Holder,
    /// etcd revision of the write (0 when unknown: noticed by a read).
    revision: i64,
    /// A deletion by lease expiry.
    expiry: bool,
}

struct Member {
    name: String,
    lease: Option<i64>,
    /// Patroni runs and refreshes its lease.
    alive: bool,
    /// Its node reaches etcd.
    reachable: bool,
}

struct Shared {
    members: Vec<Member>,
    etcd_up: bool,
    holder: Holder,
    changes: Vec<KeyChange>,
    /// Per member: (begin, end) of every lease grant and keepalive it sent (whatever the answer:
    /// etcd may have applied one whose answer was lost). etcd cannot expire the member's lease
    /// later than TTL after the end of the last one sent, but for an election meanwhile.
    refreshes: Vec<Vec<(u64, u64)>>,
    /// When a new raft term with a leader was first seen (the end of the status request).
    elections: Vec<u64>,
    /// The last (raft term, leader id) seen.
    term: Option<(u64, u64)>,
    /// Send time of the last read that saw the key as `holder` says.
    last_poll: u64,
}

impl Shared {
    fn new(names: &[String]) -> Self {
        Self {
            members: names
                .iter()
                .map(|n| Member {
                    name: n.clone(),
                    lease: None,
                    alive: true,
                    reachable: true,
                })
                .collect(),
            etcd_up: true,
            holder: Holder::Absent,
            changes: Vec::new(),
            refreshes: vec![Vec::new(); names.len()],
            elections: Vec::new(),
            term: None,
            last_poll: 0,
        }
    }

    fn record(&mut self, begin: u64, end: u64, holder: Holder, revision: i64, expiry: bool) {
        let begin = self.changes.last().map_or(begin, |c| begin.max(c.end));
        self.changes.push(KeyChange {
            begin,
            end,
            holder,
            revision,
            expiry,
        });
        self.holder = holder;
    }

    fn holder_of(&self, value: &[u8]) -> Holder {
        self.members
            .iter()
            .position(|m| m.name.as_bytes() == value)
            .map_or(Holder::Foreign, Holder::Node)
    }
}

enum Cmd {
    Acquire(usize),
    Release(usize),
    Delete,
    Foreign,
    Read,
}

type Reply = mpsc::Sender<Result<bool, String>>;

struct PatroniEnv {
    /// Patroni's `loop_wait`: a third of the lease TTL.
    keepalive_every: Duration,
    ns: PathBuf,
    /// Every etcd member's client URL: like Patroni, the simulator uses one at a time and moves
    /// to the next after a failed request.
    endpoints: Vec<String>,
    key: String,
    ttl: i64,
}

struct PatroniHandle {
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::Sender<(Cmd, Reply)>,
}

impl PatroniHandle {
    fn call(&self, cmd: Cmd) -> Result<bool, String> {
        let (tx, rx) = mpsc::channel();
        self.tx
            .send((cmd, tx))
            .map_err(|_| "the Patroni thread ended".to_owned())?;
        rx.recv_timeout(Duration::from_secs(20))
            .map_err(|_| "no answer from the Patroni thread".to_owned())?
    }

    fn with<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.shared.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

const OP_TIMEOUT: Duration = Duration::from_secs(2);

async fn timed<T, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Err(_) => Err(format!("{what}: timed out")),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Ok(Ok(v)) => Ok(v),
    }
}

struct Patroni<'a> {
    env: &'a PatroniEnv,
    shared: &'a Mutex<Shared>,
    client: Option<Client>,
    /// Index (modulo the count) of the endpoint the next connection uses.
    endpoint: usize,
}

impl Patroni<'_> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn client(&mut self) -> Result<Client, String> {
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(1))
            .with_timeout(OP_TIMEOUT);
        let endpoint = self
            .env
            .endpoints
            .get(self.endpoint % self.env.endpoints.len().max(1))
            .cloned()
            .unwrap_or_default();
        let c = match timed("connect", Client::connect([endpoint], Some(opts))).await {
            Ok(c) => c,
            Err(e) => {
                self.drop_client();
                return Err(e);
            }
        };
        self.client = Some(c.clone());
        Ok(c)
    }

    /// Forget the connection after a failure; the next one goes to the next member.
    fn drop_client(&mut self) {
        self.client = None;
        self.endpoint = self.endpoint.wrapping_add(1);
    }

    async fn handle(&mut self, cmd: Cmd) -> Result<bool, String> {
        let result = self.handle_inner(cmd).await;
        if result.is_err() {
            self.drop_client();
        }
        result
    }

    async fn grant(&mut self, client: &mut Client) -> Result<i64, String> {
        Ok(timed("lease grant", client.lease_grant(self.env.ttl, None))
            .await?
            .id())
    }

    async fn handle_inner(&mut self, cmd: Cmd) -> Result<bool, String> {
        let mut client = self.client().await?;
        let key = self.env.key.clone();
        match cmd {
            Cmd::Acquire(i) => {
                let (name, lease) = {
                    let s = self.lock();
                    (s.members[i].name.clone(), s.members[i].lease)
                };
                // A lease that expired unnoticed makes the put fail: then once more with a new one.
                for attempt in 0..2 {
                    let lease = match lease {
                        Some(l) if attempt == 0 => l,
                        _ => {
                            let begin = monotonic_ns();
                            let granted = self.grant(&mut client).await;
                            let end = monotonic_ns();
                            let mut s = self.lock();
                            s.refreshes[i].push((begin, end));
                            let l = granted?;
                            s.members[i].lease = Some(l);
                            l
                        }
                    };
                    let txn = Txn::new()
                        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            key.as_str(),
                            name.as_str(),
                            Some(PutOptions::new().with_lease(lease)),
                        )]);
                    let begin = monotonic_ns();
                    match timed("acquire txn", client.txn(txn)).await {
                        Ok(resp) => {
                            let end = monotonic_ns();
                            if resp.succeeded() {
                                let rev = resp.header().map_or(0, |h| h.revision());
                                self.lock().record(begin, end, Holder::Node(i), rev, false);
                            }
                            return Ok(resp.succeeded());
                        }
                        Err(e) if attempt == 1 => return Err(e),
                        Err(_) => {}
                    }
                }
                Ok(false)
            }
            Cmd::Release(i) => {
                let name = self.lock().members[i].name.clone();
                let txn = Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, name)])
                    .and_then([TxnOp::delete(key.as_str(), None)]);
                let begin = monotonic_ns();
                let resp = timed("release txn", client.txn(txn)).await?;
                let end = monotonic_ns();
                if resp.succeeded() {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    self.lock().record(begin, end, Holder::Absent, rev, false);
                }
                Ok(resp.succeeded())
            }
            Cmd::Delete => {
                let begin = monotonic_ns();
                let resp = timed("delete", client.delete(key.as_str(), None)).await?;
                let end = monotonic_ns();
                if resp.deleted() > 0 {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    self.lock().record(begin, end, Holder::Absent, rev, false);
                }
                Ok(resp.deleted() > 0)
            }
            Cmd::Foreign => {
                let lease = self.grant(&mut client).await?;
                let begin = monotonic_ns();
                let resp = timed(
                    "put",
                    client.put(
                        key.as_str(),
                        FOREIGN_MEMBER,
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                )
                .await?;
                let end = monotonic_ns();
                let rev = resp.header().map_or(0, |h| h.revision());
                self.lock().record(begin, end, Holder::Foreign, rev, false);
                Ok(true)
            }
            Cmd::Read => {
                self.poll(&mut client).await?;
                Ok(true)
            }
        }
    }

    /// Read the key; a change nobody here made is a deletion by lease expiry.
    async fn poll(&mut self, client: &mut Client) -> Result<(), String> {
        let sent = monotonic_ns();
        let resp = timed("get", client.get(self.env.key.as_str(), None)).await?;
        let end = monotonic_ns();
        let mut s = self.lock();
        let seen = resp
            .kvs()
            .first()
            .map_or(Holder::Absent, |kv| s.holder_of(kv.value()));
        if seen != s.holder {
            let begin = s.last_poll;
            s.record(begin, end, seen, 0, seen == Holder::Absent);
        }
        s.last_poll = sent;
        Ok(())
    }

    async fn tick(&mut self, keepalive: bool) {
        if !self.lock().etcd_up {
            return;
        }
        let Ok(mut client) = self.client().await else {
            return;
        };
        if self.poll(&mut client).await.is_err() {
            self.drop_client();
            return;
        }
        // Elections: each extends every lease (see ELECTION_EXTENSION).
        if let Ok(status) = timed("status", client.status()).await {
            let end = monotonic_ns();
            let seen = (status.raft_term(), status.leader());
            let mut s = self.lock();
            if seen.1 != 0 && s.term.is_none_or(|t| t != seen && seen.0 >= t.0) {
                if s.term.is_some() {
                    s.elections.push(end);
                }
                s.term = Some(seen);
            }
        }
        if !keepalive {
            return;
        }
        let leases: Vec<(usize, i64)> = self
            .lock()
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.alive && m.reachable)
            .filter_map(|(i, m)| m.lease.map(|l| (i, l)))
            .collect();
        for (i, lease) in leases {
            let begin = monotonic_ns();
            let result = tokio::time::timeout(OP_TIMEOUT, async {
                let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            let end = monotonic_ns();
            self.lock().refreshes[i].push((begin, end));
            if let Ok(Ok(Some(resp))) = result
                && resp.ttl() <= 0
            {
                // Expired: this member gets a new lease when it next acquires.
                let mut s = self.lock();
                if s.members[i].lease == Some(lease) {
                    s.members[i].lease = None;
                }
            }
        }
    }
}

fn patroni_thread(env: &PatroniEnv, shared: &Mutex<Shared>, rx: &mpsc::Receiver<(Cmd, Reply)>) {
    enter_netns(&env.ns);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut patroni = Patroni {
        env,
        shared,
        client: None,
        endpoint: 0,
    };
    let mut next_poll = Instant::now();
    let mut next_keepalive = Instant::now();
    loop {
        match rx.recv_timeout(next_poll.saturating_duration_since(Instant::now())) {
            Ok((cmd, reply)) => {
                let result = rt.block_on(patroni.handle(cmd));
                let _ = reply.send(result);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let keepalive = Instant::now() >= next_keepalive;
                if keepalive {
                    next_keepalive = Instant::now() + env.keepalive_every;
                }
                rt.block_on(patroni.tick(keepalive));
                next_poll = Instant::now() + POLL_EVERY;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The driver

/// A condition of a node (or of etcd) that the checks follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flag {
    /// The agent process runs (not killed, not stopped).
    Agent(usize),
    /// The node reaches etcd (no blackhole route).
    Reach(usize),
    /// The node's interface is up (while it is down the node neither answers nor reaches etcd).
    Link(usize),
    /// The member's Patroni refreshes its lease.
    Patroni(usize),
    /// etcd runs (enough members for a quorum: only [`Action::EtcdRestart`] takes it down).
    Etcd,
    /// No etcd member is being killed. Around each [`Action::EtcdMemberLoss`] it goes down when
    /// the kill starts and up again once the member is gone: the liveness checks (narrow view)
    /// treat that moment as a reconnection of every agent, since an agent whose member died must
    /// move to another endpoint (with backoff) and, when the raft leader died, no member serves
    /// until a new one is elected. The deadline checks ignore it: etcd as a whole kept serving.
    Members,
}

/// A flag went up or down: the change was started at `begin` and complete at `end`.
#[derive(Clone, Copy, Debug)]
struct FlagChange {
    flag: Flag,
    up: bool,
    begin: u64,
    end: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgentRt {
    Running,
    Stopped { until: Instant },
    Dead { until: Instant },
}

struct NodeRt {
    agent: AgentRt,
    partitioned_until: Option<Instant>,
    /// The interface is down until then; the XDP program id it had before.
    link_down: Option<(Instant, Option<u64>)>,
    patroni_back: Option<Instant>,
}

/// A violation found while driving (addresses, conflicts, exits).
#[derive(Clone, Debug)]
struct Finding {
    invariant: Invariant,
    text: String,
}

/// Everything the driver recorded.
struct Recorded {
    t0: u64,
    chaos: Duration,
    flags: Vec<FlagChange>,
    changes: Vec<KeyChange>,
    /// (time, node, deadline) of the pinned maps.
    samples: Vec<(u64, usize, u64)>,
    /// Per member: its lease grants and keepalives, (begin, end), in order.
    refreshes: Vec<Vec<(u64, u64)>>,
    /// Elections seen by the simulated Patroni (end of the status request that saw the new term).
    elections: Vec<u64>,
    actions: BTreeMap<Action, u64>,
    flips: u64,
    findings: Vec<Finding>,
    addresses_restored: u64,
    addresses_removed: u64,
    conflicts_counted: u64,
    conflicts_inconclusive: u64,
    links_intact: u64,
    /// (kernel ns, line) of every action.
    timeline: Vec<(u64, String)>,
}

struct Driver<'c> {
    c: &'c mut Cluster,
    config: ChaosConfig,
    rng: fastrand::Rng,
    patroni: PatroniHandle,
    nodes: Vec<NodeRt>,
    etcd_back: Option<Instant>,
    /// The etcd member that is down, and when it comes back.
    member_back: Option<(usize, Instant)>,
    rec: Recorded,
}

impl<'c> Driver<'c> {
    fn new(c: &'c mut Cluster, config: &ChaosConfig, patroni: PatroniHandle, t0: u64) -> Self {
        let nodes = (0..config.nodes)
            .map(|_| NodeRt {
                agent: AgentRt::Running,
                partitioned_until: None,
                link_down: None,
                patroni_back: None,
            })
            .collect();
        Self {
            c,
            config: config.clone(),
            rng: fastrand::Rng::with_seed(config.seed),
            patroni,
            nodes,
            etcd_back: None,
            member_back: None,
            rec: Recorded {
                t0,
                chaos: Duration::ZERO,
                flags: Vec::new(),
                changes: Vec::new(),
                samples: Vec::new(),
                refreshes: Vec::new(),
                elections: Vec::new(),
                actions: BTreeMap::new(),
                flips: 0,
                findings: Vec::new(),
                addresses_restored: 0,
                addresses_removed: 0,
                conflicts_counted: 0,
                conflicts_inconclusive: 0,
                links_intact: 0,
                timeline: Vec::new(),
            },
        }
    }

    fn flag(&mut self, flag: Flag, up: bool, begin: u64, end: u64) {
        self.rec.flags.push(FlagChange {
            flag,
            up,
            begin,
            end,
        });
    }

    fn note(&mut self, text: String) {
        let line = format!(
            "{:9.3} {text}",
            ns_to_ms(monotonic_ns().saturating_sub(self.rec.t0)) / 1e3
        );
        if self.config.verbose {
            eprintln!("chaos: {line}");
        }
        self.rec.timeline.push((monotonic_ns(), line));
    }

    fn find(&mut self, invariant: Invariant, text: String) {
        self.note(format!("VIOLATION {invariant:?}: {text}"));
        self.rec.findings.push(Finding { invariant, text });
    }

    fn count(&mut self, action: Action) {
        *self.rec.actions.entry(action).or_default() += 1;
    }

    fn name(&self, i: usize) -> String {
        self.c.nodes[i].name.clone()
    }

    fn etcd_up(&self) -> bool {
        self.etcd_back.is_none()
    }

    fn holder(&self) -> Holder {
        self.patroni.with(|s| s.holder)
    }

    /// The member's Patroni can write to etcd.
    fn patroni_ok(&self, i: usize) -> bool {
        self.etcd_up()
            && self.nodes[i].partitioned_until.is_none()
            && self.nodes[i].link_down.is_none()
            && self.nodes[i].patroni_back.is_none()
    }

    /// The node's pinned map says it answers now.
    fn answering(&self, i: usize) -> bool {
        self.c
            .dataplane_snapshot(i)
            .is_some_and(|s| s.state.answering_at(monotonic_ns()))
    }

    fn faulted(&self, i: usize) -> bool {
        self.nodes[i].agent != AgentRt::Running
            || self.nodes[i].partitioned_until.is_some()
            || self.nodes[i].link_down.is_some()
    }

    fn pick_node(&mut self, ok: impl Fn(&Self, usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.nodes.len()).filter(|i| ok(self, *i)).collect();
        (!candidates.is_empty()).then(|| candidates[self.rng.usize(..candidates.len())])
    }

    /// Storms and calms in turn until `duration` is over: see [`STORM`] and [`CALM`].
    fn run(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        while Instant::now() < until {
            self.note(format!("storm for {STORM:?}: every action"));
            self.steps((Instant::now() + STORM).min(until), true);
            if Instant::now() >= until {
                break;
            }
            self.recover(true);
            self.note(format!(
                "calm for {CALM:?}: flips, deletes, other values, Patroni deaths, drift, GARPs"
            ));
            self.steps((Instant::now() + CALM).min(until), false);
        }
    }

    fn steps(&mut self, until: Instant, storm: bool) {
        while Instant::now() < until {
            self.housekeeping();
            self.failover();
            // A third of the steps leave the cluster alone.
            if self.rng.u8(..3) != 0
                && let Some(action) = self.pick(storm)
            {
                self.inject(action);
            }
            let pause = if storm {
                self.random_ms(200, 800)
            } else {
                self.random_ms(300, 1200)
            };
            self.pause(pause);
        }
    }

    /// Sleep, doing the due recoveries meanwhile.
    fn pause(&mut self, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20).min(until - Instant::now()));
            self.recover(false);
        }
    }

    fn housekeeping(&mut self) {
        self.check_exits();
        self.recover(false);
        self.sample_maps();
    }

    /// Recover everything, let Patroni elect a holder, and watch the cluster settle.
    fn wind_down(&mut self) {
        self.note("recovery: every fault undone".to_owned());
        self.recover(true);
        let settle = self.config.bounds.answer_after_reconnect + Duration::from_secs(3);
        let until = Instant::now() + settle;
        while Instant::now() < until {
            self.housekeeping();
            self.failover();
            self.pause(Duration::from_millis(200));
        }
        self.housekeeping();
    }

    fn finish(mut self, chaos: Duration) -> Recorded {
        self.rec.chaos = chaos;
        (self.rec.changes, self.rec.refreshes, self.rec.elections) = self
            .patroni
            .with(|s| (s.changes.clone(), s.refreshes.clone(), s.elections.clone()));
        self.rec
    }

    fn sample_maps(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(s) = self.c.dataplane_snapshot(i) {
                let at = monotonic_ns();
                self.rec.samples.push((at, i, s.state.deadline_ns));
            }
        }
    }

    fn check_exits(&mut self) {
        for i in 0..self.nodes.len() {
            if matches!(self.nodes[i].agent, AgentRt::Dead { .. }) {
                continue;
            }
            if let Some(status) = self.c.agent_exited(i) {
                let now = monotonic_ns();
                let tail: Vec<String> = self
                    .c
                    .log(i)
                    .lines()
                    .rev()
                    .take(5)
                    .map(str::to_owned)
                    .collect();
                let name = self.name(i);
                self.find(
                    Invariant::AgentExited,
                    format!("{name}'s agent exited on its own ({status}); last lines: {tail:?}"),
                );
                self.flag(Flag::Agent(i), false, now, now);
                let begin = monotonic_ns();
                self.c.start_agent(i);
                self.c.wait_agent_handles_sigterm(i);
                self.flag(Flag::Agent(i), true, begin, monotonic_ns());
                self.nodes[i].agent = AgentRt::Running;
            }
        }
    }

    /// Undo the faults whose time has come (all of them with `force`).
    fn recover(&mut self, force: bool) {
        let now = Instant::now();
        for i in 0..self.nodes.len() {
            match self.nodes[i].agent {
                AgentRt::Dead { until } if force || until <= now => {
                    let begin = monotonic_ns();
                    self.c.start_agent(i);
                    self.c.wait_agent_handles_sigterm(i);
                    self.flag(Flag::Agent(i), true, begin, monotonic_ns());
                    self.nodes[i].agent = AgentRt::Running;
                    let name = self.name(i);
                    self.note(format!("{name}: agent started again"));
                }
                AgentRt::Stopped { until } if force || until <= now => {
                    let begin = monotonic_ns();
                    self.c.agent(i).signal(Signal::SIGCONT);
                    self.flag(Flag::Agent(i), true, begin, monotonic_ns());
                    self.nodes[i].agent = AgentRt::Running;
                    let name = self.name(i);
                    self.note(format!("{name}: SIGCONT"));
                }
                _ => {}
            }
            if let Some(until) = self.nodes[i].partitioned_until
                && (force || until <= now)
            {
                let begin = monotonic_ns();
                self.c.heal(i);
                self.flag(Flag::Reach(i), true, begin, monotonic_ns());
                self.nodes[i].partitioned_until = None;
                self.patroni.with(|s| s.members[i].reachable = true);
                let name = self.name(i);
                self.note(format!("{name}: reaches etcd again"));
            }
            if let Some((until, xdp_before)) = self.nodes[i].link_down
                && (force || until <= now)
            {
                self.link_up(i, xdp_before);
            }
            if let Some(until) = self.nodes[i].patroni_back
                && (force || until <= now)
            {
                let begin = monotonic_ns();
                self.patroni.with(|s| s.members[i].alive = true);
                self.flag(Flag::Patroni(i), true, begin, monotonic_ns());
                self.nodes[i].patroni_back = None;
                let name = self.name(i);
                self.note(format!("{name}: Patroni refreshes its lease again"));
            }
        }
        if let Some((k, until)) = self.member_back
            && (force || until <= now)
        {
            self.c.start_etcd_member(k);
            self.member_back = None;
            self.note(format!(
                "etcd member {} ({}) started again with its data",
                k + 1,
                self.c.etcd_member_ip(k)
            ));
        }
        if let Some(until) = self.etcd_back
            && (force || until <= now)
        {
            let begin = monotonic_ns();
            self.c.start_etcd();
            // Serving once a linearizable read succeeds (a leader is elected).
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match self.patroni.call(Cmd::Read) {
                    Ok(_) => break,
                    Err(e) => {
                        assert!(
                            Instant::now() < deadline,
                            "etcd does not serve after its restart: {e}"
                        );
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
            self.patroni.with(|s| s.etcd_up = true);
            self.flag(Flag::Etcd, true, begin, monotonic_ns());
            self.etcd_back = None;
            self.note("etcd serves again".to_owned());
        }
    }

    /// Patroni's failover: once the key is gone, a healthy member takes it (most of the time right
    /// away, as members race within `loop_wait`).
    fn failover(&mut self) {
        if !self.etcd_up() || self.holder() != Holder::Absent || self.rng.f32() > 0.85 {
            return;
        }
        if let Some(j) = self.pick_node(|d, i| d.patroni_ok(i)) {
            let name = self.name(j);
            match self.patroni.call(Cmd::Acquire(j)) {
                Ok(true) => {
                    self.rec.flips += 1;
                    self.note(format!("failover: {name} acquires the key"));
                }
                Ok(false) => {}
                Err(e) => self.note(format!("failover acquire by {name} failed: {e}")),
            }
        }
    }

    fn applicable(&self, a: Action, storm: bool) -> bool {
        if !storm && a.node_fault() {
            return false;
        }
        let n = self.nodes.len();
        let faulted = (0..n).filter(|i| self.faulted(*i)).count();
        let holder = self.holder();
        match a {
            Action::Switchover => {
                matches!(holder, Holder::Node(h) if self.patroni_ok(h)
                    && (0..n).any(|j| j != h && self.patroni_ok(j)))
            }
            // Another member's value is left to expire.
            Action::Delete => self.etcd_up() && matches!(holder, Holder::Node(_)),
            Action::ForeignValue => self.etcd_up() && holder != Holder::Foreign,
            Action::PatroniDeath => {
                matches!(holder, Holder::Node(h) if self.patroni_ok(h))
            }
            Action::Kill | Action::Stop | Action::Partition | Action::LinkDown => {
                faulted + 1 < n && (0..n).any(|i| !self.faulted(i))
            }
            Action::Restart => (0..n).any(|i| self.nodes[i].agent == AgentRt::Running),
            // One etcd fault at a time: a member down, or all of them.
            Action::EtcdMemberLoss => {
                self.c.etcd_members() >= 3 && self.etcd_up() && self.member_back.is_none()
            }
            Action::EtcdRestart => self.etcd_up() && self.member_back.is_none(),
            Action::AddressRemoved => {
                (0..n).any(|i| self.nodes[i].agent == AgentRt::Running && self.answering(i))
            }
            // A node whose interface is down cannot hear the GARP.
            Action::ForeignGarp => (0..n).any(|i| {
                self.nodes[i].agent == AgentRt::Running
                    && self.nodes[i].link_down.is_none()
                    && self.answering(i)
            }),
            Action::AddressAdded => (0..n).any(|i| {
                self.nodes[i].agent == AgentRt::Running
                    && holder != Holder::Node(i)
                    && !self.answering(i)
            }),
        }
    }

    /// An applicable action never done yet; otherwise, a quarter of the time, the applicable action
    /// done least often (relative to its weight), and a weighted random one the rest of the time:
    /// every kind gets its turn, in a seeded order.
    fn pick(&mut self, storm: bool) -> Option<Action> {
        let ok: Vec<Action> = Action::ALL
            .into_iter()
            .filter(|a| self.applicable(*a, storm))
            .collect();
        if ok.is_empty() {
            return None;
        }
        let never: Vec<Action> = ok
            .iter()
            .copied()
            .filter(|a| !self.rec.actions.contains_key(a))
            .collect();
        if !never.is_empty() {
            return Some(never[self.rng.usize(..never.len())]);
        }
        if self.rng.u8(..4) == 0 {
            let score = |a: &Action| {
                self.rec.actions.get(a).copied().unwrap_or(0) * 1000 / u64::from(a.weight())
            };
            let best = ok.iter().map(score).min()?;
            let least: Vec<Action> = ok.iter().copied().filter(|a| score(a) == best).collect();
            return Some(least[self.rng.usize(..least.len())]);
        }
        let total: u32 = ok.iter().map(|a| a.weight()).sum();
        let mut r = self.rng.u32(..total);
        for a in ok {
            if r < a.weight() {
                return Some(a);
            }
            r -= a.weight();
        }
        None
    }

    fn random_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.rng.u64(lo..=hi))
    }

    fn inject(&mut self, action: Action) {
        match action {
            Action::Switchover => {
                let Holder::Node(h) = self.holder() else {
                    return;
                };
                let Some(j) = self.pick_node(|d, j| j != h && d.patroni_ok(j)) else {
                    return;
                };
                let (from, to) = (self.name(h), self.name(j));
                self.count(action);
                match self.patroni.call(Cmd::Release(h)) {
                    Ok(true) => {}
                    other => {
                        self.note(format!("switchover {from} -> {to}: release: {other:?}"));
                        return;
                    }
                }
                match self.patroni.call(Cmd::Acquire(j)) {
                    Ok(true) => {
                        self.rec.flips += 1;
                        self.note(format!("switchover {from} -> {to}"));
                    }
                    other => self.note(format!(
                        "switchover {from} -> {to}: released, acquire: {other:?}"
                    )),
                }
            }
            Action::Delete => {
                self.count(action);
                let r = self.patroni.call(Cmd::Delete);
                self.note(format!("operator deletes the key: {r:?}"));
            }
            Action::ForeignValue => {
                self.count(action);
                let r = self.patroni.call(Cmd::Foreign);
                self.note(format!("key written with {FOREIGN_MEMBER}: {r:?}"));
            }
            Action::PatroniDeath => {
                let Holder::Node(h) = self.holder() else {
                    return;
                };
                self.count(action);
                let back = self.random_ms(1500, 6000);
                let begin = monotonic_ns();
                self.patroni.with(|s| s.members[h].alive = false);
                self.flag(Flag::Patroni(h), false, begin, monotonic_ns());
                self.nodes[h].patroni_back = Some(Instant::now() + back);
                let name = self.name(h);
                self.note(format!(
                    "{name}: Patroni stops refreshing its lease for {back:?}"
                ));
            }
            Action::Kill | Action::Stop | Action::Partition | Action::LinkDown => {
                let Some(i) = self.pick_node(|d, i| !d.faulted(i)) else {
                    return;
                };
                self.count(action);
                let name = self.name(i);
                match action {
                    Action::Kill => {
                        let down = self.random_ms(300, 3000);
                        let begin = monotonic_ns();
                        self.c.kill_agent(i);
                        self.flag(Flag::Agent(i), false, begin, monotonic_ns());
                        self.nodes[i].agent = AgentRt::Dead {
                            until: Instant::now() + down,
                        };
                        self.note(format!("{name}: agent SIGKILLed for {down:?}"));
                    }
                    Action::Stop => {
                        let down = self.random_ms(300, 4000);
                        let begin = monotonic_ns();
                        let pid = self.c.agent(i).pid();
                        self.c.agent(i).signal(Signal::SIGSTOP);
                        let limit = Instant::now() + Duration::from_secs(5);
                        while !is_stopped(pid) {
                            assert!(Instant::now() < limit, "{name}'s agent does not stop");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        self.flag(Flag::Agent(i), false, begin, monotonic_ns());
                        self.nodes[i].agent = AgentRt::Stopped {
                            until: Instant::now() + down,
                        };
                        self.note(format!("{name}: agent SIGSTOPped for {down:?}"));
                    }
                    Action::LinkDown => {
                        let down = self.random_ms(300, 3000);
                        let xdp = self.c.xdp_prog_id(i);
                        let begin = monotonic_ns();
                        // Patroni runs on the node too: it loses etcd with the link.
                        self.patroni.with(|s| s.members[i].reachable = false);
                        self.c.set_link(i, false);
                        self.flag(Flag::Link(i), false, begin, monotonic_ns());
                        self.nodes[i].link_down = Some((Instant::now() + down, xdp));
                        self.note(format!(
                            "{name}: interface down for {down:?} (XDP program {xdp:?})"
                        ));
                    }
                    _ => {
                        let down = self.random_ms(300, 5000);
                        let begin = monotonic_ns();
                        self.patroni.with(|s| s.members[i].reachable = false);
                        self.c.partition(i);
                        self.flag(Flag::Reach(i), false, begin, monotonic_ns());
                        self.nodes[i].partitioned_until = Some(Instant::now() + down);
                        self.note(format!("{name}: cut off from etcd for {down:?}"));
                    }
                }
            }
            Action::Restart => {
                let Some(i) = self.pick_node(|d, i| d.nodes[i].agent == AgentRt::Running) else {
                    return;
                };
                self.count(action);
                let name = self.name(i);
                let begin = monotonic_ns();
                let status = self.c.terminate_agent(i);
                self.flag(Flag::Agent(i), false, begin, monotonic_ns());
                if !status.is_some_and(|s| s.success()) {
                    self.find(
                        Invariant::UncleanStop,
                        format!("{name}'s agent after SIGTERM: {status:?}"),
                    );
                    self.c.kill_agent(i);
                }
                let begin = monotonic_ns();
                self.c.start_agent(i);
                // A later SIGTERM must find the agent able to stop cleanly (UncleanStop), not a
                // process still in nsenter's exec.
                self.c.wait_agent_handles_sigterm(i);
                self.flag(Flag::Agent(i), true, begin, monotonic_ns());
                self.note(format!("{name}: agent SIGTERMed ({status:?}) and started"));
            }
            Action::EtcdMemberLoss => {
                let k = self.rng.usize(..self.c.etcd_members());
                self.count(action);
                let down = self.random_ms(300, 5000);
                let begin = monotonic_ns();
                self.c.stop_etcd_member(k);
                let end = monotonic_ns();
                self.flag(Flag::Members, false, begin, end);
                self.flag(Flag::Members, true, end, end);
                self.member_back = Some((k, Instant::now() + down));
                self.note(format!(
                    "etcd member {} ({}) SIGKILLed for {down:?}; the quorum stays",
                    k + 1,
                    self.c.etcd_member_ip(k)
                ));
            }
            Action::EtcdRestart => {
                self.count(action);
                let down = self.random_ms(300, 3000);
                let begin = monotonic_ns();
                self.patroni.with(|s| s.etcd_up = false);
                self.c.stop_etcd();
                self.flag(Flag::Etcd, false, begin, monotonic_ns());
                self.etcd_back = Some(Instant::now() + down);
                self.note(format!("etcd (every member) killed for {down:?}"));
            }
            Action::AddressRemoved => {
                let Some(h) = self.pick_node(|d, i| {
                    d.nodes[i].agent == AgentRt::Running && d.answering(i) && d.c.has_vip_address(i)
                }) else {
                    return;
                };
                self.count(action);
                let name = self.name(h);
                if !self.c.remove_vip_address(h) {
                    self.note(format!("{name}: the address was already gone"));
                    return;
                }
                self.note(format!("{name}: VIP address removed by hand"));
                let limit = Instant::now() + self.config.bounds.drift;
                while Instant::now() < limit && !self.c.has_vip_address(h) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if self.c.has_vip_address(h) {
                    self.rec.addresses_restored += 1;
                } else if self.nodes[h].agent == AgentRt::Running && self.answering(h) {
                    self.find(
                        Invariant::AddressNotRestored,
                        format!(
                            "{name} answers but its agent did not put the address back within {:?}",
                            self.config.bounds.drift
                        ),
                    );
                }
            }
            Action::AddressAdded => {
                let Some(k) = self.pick_node(|d, i| {
                    d.nodes[i].agent == AgentRt::Running
                        && d.holder() != Holder::Node(i)
                        && !d.answering(i)
                        && !d.c.has_vip_address(i)
                }) else {
                    return;
                };
                self.count(action);
                let name = self.name(k);
                if !self.c.add_vip_address(k) {
                    self.note(format!("{name}: could not add the address"));
                    return;
                }
                self.note(format!("{name}: VIP address added by hand on a standby"));
                let limit = Instant::now() + self.config.bounds.drift;
                while Instant::now() < limit && self.c.has_vip_address(k) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !self.c.has_vip_address(k) {
                    self.rec.addresses_removed += 1;
                } else if self.nodes[k].agent == AgentRt::Running
                    && !self.answering(k)
                    && self.holder() != Holder::Node(k)
                {
                    self.find(
                        Invariant::AddressNotRemoved,
                        format!(
                            "{name} is a standby but its agent did not remove the hand-added address within {:?}",
                            self.config.bounds.drift
                        ),
                    );
                    // Leave no stray address behind for the next steps.
                    let _ = self.c.remove_vip_address(k);
                }
            }
            Action::ForeignGarp => {
                let Some(h) = self.pick_node(|d, i| {
                    d.nodes[i].agent == AgentRt::Running
                        && d.nodes[i].link_down.is_none()
                        && d.answering(i)
                }) else {
                    return;
                };
                self.count(action);
                let name = self.name(h);
                let before = self.c.dataplane_snapshot(h);
                self.send_foreign_garp();
                let after = self.c.dataplane_snapshot(h);
                let answering = |s: &Option<vip_agent::dataplane::VipSnapshot>| {
                    s.is_some_and(|s| s.state.answering_at(monotonic_ns()))
                };
                let was = before.map_or(0, |s| s.stats.conflicts);
                let conclusive = answering(&before) && answering(&after);
                let limit = Instant::now() + self.config.bounds.drift;
                let mut counted = false;
                while Instant::now() < limit {
                    if self
                        .c
                        .dataplane_snapshot(h)
                        .is_some_and(|s| s.stats.conflicts > was)
                    {
                        counted = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                if counted {
                    self.rec.conflicts_counted += 1;
                    self.note(format!("GARP from the client: {name} counted a conflict"));
                } else if conclusive {
                    self.find(
                        Invariant::ConflictNotCounted,
                        format!(
                            "{name} answered before and after the GARP but counted no conflict"
                        ),
                    );
                } else {
                    self.rec.conflicts_inconclusive += 1;
                    self.note(format!(
                        "GARP from the client: {name} stopped answering meanwhile"
                    ));
                }
            }
        }
    }

    /// Bring node `i`'s interface back up and check what the link down left: the same XDP program
    /// attached as before (a bpf_link survives down/up), and, if the data plane answers, the VIP
    /// address on the interface (IPv4 addresses survive a link down; the agent has until the drift
    /// bound to put it back if it went anyway).
    fn link_up(&mut self, i: usize, xdp_before: Option<u64>) {
        let begin = monotonic_ns();
        self.c.set_link(i, true);
        self.patroni.with(|s| s.members[i].reachable = true);
        self.flag(Flag::Link(i), true, begin, monotonic_ns());
        self.nodes[i].link_down = None;
        let name = self.name(i);
        let xdp_after = self.c.xdp_prog_id(i);
        self.note(format!("{name}: interface up (XDP program {xdp_after:?})"));
        if xdp_before.is_some() {
            if xdp_after == xdp_before {
                self.rec.links_intact += 1;
            } else {
                self.find(
                    Invariant::XdpDetached,
                    format!(
                        "{name}: XDP program {xdp_before:?} before the interface went down, {xdp_after:?} once it was up"
                    ),
                );
            }
        }
        let limit = Instant::now() + self.config.bounds.drift;
        let missing = loop {
            let missing = self.nodes[i].agent == AgentRt::Running
                && self.answering(i)
                && !self.c.has_vip_address(i);
            if !missing || Instant::now() >= limit {
                break missing;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if missing {
            self.find(
                Invariant::AddressNotRestored,
                format!(
                    "{name}: its data plane answers but the VIP address is not on the interface {:?} after it came back up",
                    self.config.bounds.drift
                ),
            );
        }
    }

    /// A gratuitous ARP request and reply for the VIP from the client's MAC (another host claiming it).
    fn send_foreign_garp(&self) {
        let (ifname, vip) = (self.c.client.ifname.clone(), self.c.vip.octets());
        self.c.client.ns.run_in(|| {
            let sock = ArpSocket::open(&ifname).expect("ARP socket on the client");
            let mac = sock.mac();
            for op in [ARP_OP_REQUEST, ARP_OP_REPLY] {
                let frame = build_arp([0xff; 6], mac, op, mac, vip, [0xff; 6], vip);
                sock.send_frame(&frame).expect("send a GARP");
            }
        });
    }
}

/// Whether every thread of `pid` is stopped (state `T` or `t` in /proc).
fn is_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        if !matches!(state, Some("T" | "t")) {
            return false;
        }
        any = true;
    }
    any
}

// ---------------------------------------------------------------------------------------------
// The checks

/// Half-open spans `[start, end)` of kernel monotonic ns, sorted and disjoint.
type Spans = Vec<(u64, u64)>;

/// Which of a change's two timestamps to use: `Wide` makes a condition start as early and end as
/// late as it possibly can (for bounds that must not be too tight), `Narrow` the opposite.
#[derive(Clone, Copy, PartialEq, Eq)]
enum View {
    Wide,
    Narrow,
}

fn flag_spans(flags: &[FlagChange], flag: Flag, view: View) -> Spans {
    let mut spans = Vec::new();
    let mut open: Option<u64> = None;
    for f in flags.iter().filter(|f| f.flag == flag) {
        let (up_at, down_at) = match view {
            View::Wide => (f.begin, f.end),
            View::Narrow => (f.end, f.begin),
        };
        if f.up {
            open.get_or_insert(up_at);
        } else if let Some(start) = open.take()
            && down_at > start
        {
            spans.push((start, down_at));
        }
    }
    if let Some(start) = open {
        spans.push((start, u64::MAX));
    }
    spans
}

fn names_spans(changes: &[KeyChange], node: usize, view: View) -> Spans {
    let mut spans = Vec::new();
    let mut open: Option<u64> = None;
    for c in changes {
        let (start_at, stop_at) = match view {
            View::Wide => (c.begin, c.end),
            View::Narrow => (c.end, c.begin),
        };
        if c.holder == Holder::Node(node) {
            open.get_or_insert(start_at);
        } else if let Some(start) = open.take()
            && stop_at > start
        {
            spans.push((start, stop_at));
        }
    }
    if let Some(start) = open {
        spans.push((start, u64::MAX));
    }
    spans
}

fn intersect(a: &Spans, b: &Spans) -> Spans {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() && j < b.len() {
        let start = a[i].0.max(b[j].0);
        let end = a[i].1.min(b[j].1);
        if start < end {
            out.push((start, end));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// The span containing `t`, if any.
fn containing(spans: &Spans, t: u64) -> Option<(u64, u64)> {
    let idx = spans.partition_point(|s| s.0 <= t);
    idx.checked_sub(1).map(|i| spans[i]).filter(|s| t < s.1)
}

/// The last instant at or before `t` covered by `spans`.
fn last_covered(spans: &Spans, t: u64) -> Option<u64> {
    let idx = spans.partition_point(|s| s.0 <= t);
    idx.checked_sub(1).map(|i| spans[i].1.min(t))
}

/// Counts and keeps the first few examples of each invariant.
struct Tally {
    counts: BTreeMap<Invariant, u64>,
    examples: Vec<String>,
    per_kind: BTreeMap<Invariant, usize>,
}

impl Tally {
    fn new() -> Self {
        Self {
            counts: Invariant::ALL.into_iter().map(|i| (i, 0)).collect(),
            examples: Vec::new(),
            per_kind: BTreeMap::new(),
        }
    }

    fn add(&mut self, inv: Invariant, example: impl FnOnce() -> String) {
        *self.counts.entry(inv).or_default() += 1;
        let shown = self.per_kind.entry(inv).or_default();
        if *shown < 5 {
            *shown += 1;
            self.examples.push(format!("{inv:?}: {}", example()));
        }
    }
}

/// The driver's action log, with the deletions by lease expiry (which etcd made) merged in.
fn timeline(rec: &Recorded) -> Vec<String> {
    let mut lines = rec.timeline.clone();
    for (k, c) in rec.changes.iter().enumerate().filter(|(_, c)| c.expiry) {
        let prev = k
            .checked_sub(1)
            .map_or(Holder::Absent, |p| rec.changes[p].holder);
        lines.push((
            c.end,
            format!(
                "{:9.3} etcd deleted the key of {prev} on lease expiry (seen between {:.3} and {:.3})",
                ns_to_ms(c.end.saturating_sub(rec.t0)) / 1e3,
                ns_to_ms(c.begin.saturating_sub(rec.t0)) / 1e3,
                ns_to_ms(c.end.saturating_sub(rec.t0)) / 1e3,
            ),
        ));
    }
    lines.sort_by_key(|(t, _)| *t);
    lines.into_iter().map(|(_, l)| l).collect()
}

/// The `data plane fenced` / `data plane answering` lines of one agent log:
/// (answering, revision, `dataplane_at_ns`).
fn transitions(log: &str) -> Vec<(bool, i64, u64)> {
    log.lines()
        .filter_map(|l| {
            let answering = if l.contains("data plane answering") {
                true
            } else if l.contains("data plane fenced") {
                false
            } else {
                return None;
            };
            let field = |name: &str| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .map(|v| v.trim_matches('"'))
            };
            Some((
                answering,
                field("revision=")?.parse().ok()?,
                field("dataplane_at_ns=")?.parse().ok()?,
            ))
        })
        .collect()
}

fn analyse(
    config: &ChaosConfig,
    rec: &Recorded,
    probes: &ProbeLog,
    logs: &[String],
) -> ChaosReport {
    let n = config.nodes;
    let b = config.bounds;
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let ttl = ns(Duration::from_secs(config.lease_ttl_s.unsigned_abs()));
    let margin = ns(b.safety_margin);
    let settle = ns(b.settle);
    let reconnect = ns(b.answer_after_reconnect);
    let change_bound = ns(b.answer_after_change);
    let record_wait = ns(b.record_ttl + b.record_ttl / 3 + b.answer_after_change);
    let rel = |t: u64| ns_to_ms(t.saturating_sub(rec.t0)) / 1e3;
    let extension = ns(ELECTION_EXTENSION);
    let observed_within = ns(ELECTION_OBSERVED_WITHIN);
    // The latest deadline node i's agent can have proven by a confirmation sent at or before `c`
    // (the last moment it held the key and was connected): etcd answered the remaining TTL of
    // member i's lease, at most TTL after the end of the last grant or keepalive sent by `c` (or
    // after an election's extension), less the margin; and its request was sent by `c`, so never
    // beyond `c + TTL - margin` either.
    let bound_at = |i: usize, c: u64| -> (u64, u64) {
        let refreshed = rec.refreshes.get(i).map_or(&[][..], Vec::as_slice);
        let kept = refreshed
            .iter()
            .filter(|r| r.0 <= c)
            .map(|r| r.1)
            .max()
            .unwrap_or(c);
        let elected = rec
            .elections
            .iter()
            .filter(|&&e| e <= c.saturating_add(observed_within))
            .map(|e| e.saturating_add(extension))
            .max()
            .unwrap_or(0);
        let k = kept.max(elected);
        (k.min(c).saturating_add(ttl).saturating_sub(margin), k)
    };
    let mut tally = Tally::new();
    for f in &rec.findings {
        let text = f.text.clone();
        tally.add(f.invariant, || text);
    }

    // Per node: connected (agent ∧ reach ∧ link ∧ etcd), the key names it, Patroni alive. The
    // narrow view (must answer, has caught up) also starts afresh after each etcd member kill.
    let etcd_w = flag_spans(&rec.flags, Flag::Etcd, View::Wide);
    let members_n = flag_spans(&rec.flags, Flag::Members, View::Narrow);
    let mut conn_narrow = Vec::new();
    // Connected (narrow) regardless of etcd member kills: for the member-loss silence statistic.
    let mut conn_through_kills = Vec::new();
    let mut held = Vec::new(); // names ∧ connected, wide: where a confirmation could be made
    let mut healthy = Vec::new(); // names ∧ connected ∧ Patroni, narrow: must answer
    let mut names_narrow = Vec::new();
    let mut patroni_narrow = Vec::new();
    for i in 0..n {
        let cw = intersect(
            &intersect(
                &intersect(
                    &flag_spans(&rec.flags, Flag::Agent(i), View::Wide),
                    &flag_spans(&rec.flags, Flag::Reach(i), View::Wide),
                ),
                &flag_spans(&rec.flags, Flag::Link(i), View::Wide),
            ),
            &etcd_w,
        );
        let cn_through = intersect(
            &intersect(
                &intersect(
                    &flag_spans(&rec.flags, Flag::Agent(i), View::Narrow),
                    &flag_spans(&rec.flags, Flag::Reach(i), View::Narrow),
                ),
                &flag_spans(&rec.flags, Flag::Link(i), View::Narrow),
            ),
            &flag_spans(&rec.flags, Flag::Etcd, View::Narrow),
        );
        let cn = intersect(&cn_through, &members_n);
        let nw = names_spans(&rec.changes, i, View::Wide);
        let nn = names_spans(&rec.changes, i, View::Narrow);
        let pn = flag_spans(&rec.flags, Flag::Patroni(i), View::Narrow);
        held.push(intersect(&nw, &cw));
        healthy.push(intersect(&intersect(&nn, &cn), &pn));
        conn_narrow.push(cn);
        conn_through_kills.push(cn_through);
        names_narrow.push(nn);
        patroni_narrow.push(pn);
    }
    // A node has seen the changes once it has been connected for the reconnect bound.
    let caught_up = |i: usize, t: u64| {
        containing(&conn_narrow[i], t).is_some_and(|s| t >= s.0.saturating_add(reconnect))
    };
    // Settling: within [begin, end + settle] of the last change begun at or before t.
    let change_at = |t: u64| {
        let idx = rec.changes.partition_point(|c| c.begin <= t);
        idx.checked_sub(1).map(|k| &rec.changes[k])
    };
    let settling = |t: u64| change_at(t).is_some_and(|c| t <= c.end.saturating_add(settle));
    let holder_at = |t: u64| change_at(t).map_or(Holder::Absent, |c| c.holder);
    // After a deletion by expiry of the key naming h: h silent from `end - margin` until the key
    // names h again.
    let mut expired: Vec<Spans> = vec![Vec::new(); n];
    for (k, c) in rec.changes.iter().enumerate() {
        if !c.expiry {
            continue;
        }
        let Some(prev) = k.checked_sub(1).map(|p| rec.changes[p]) else {
            continue;
        };
        let Holder::Node(h) = prev.holder else {
            continue;
        };
        let until = rec.changes[k + 1..]
            .iter()
            .find(|x| x.holder == Holder::Node(h))
            .map_or(u64::MAX, |x| x.begin);
        let from = c.end.saturating_sub(margin);
        if from < until {
            expired[h].push((from, until));
        }
    }

    // Answers per probe: a bit per node, bit 7 for a foreign MAC.
    let mut masks = vec![0u8; probes.sent.len()];
    for a in &probes.answers {
        if let Some(m) = masks.get_mut(a.seq as usize) {
            *m |= if a.who == FOREIGN_MAC {
                0x80
            } else {
                1 << a.who
            };
        }
    }
    let mut report = ChaosReport {
        seed: config.seed,
        nodes: n,
        etcd_members: config.etcd_members,
        lease_ttl_s: config.lease_ttl_s,
        bounds: b,
        chaos: rec.chaos,
        flips: rec.flips,
        key_changes: rec.changes.len() as u64,
        expiries: rec.changes.iter().filter(|c| c.expiry).count() as u64,
        actions: rec.actions.clone(),
        probes: probes.sent.len() as u64,
        answers_by_node: vec![0; n],
        map_samples: rec.samples.len() as u64,
        addresses_restored: rec.addresses_restored,
        addresses_removed: rec.addresses_removed,
        conflicts_counted: rec.conflicts_counted,
        conflicts_inconclusive: rec.conflicts_inconclusive,
        links_intact: rec.links_intact,
        timeline: timeline(rec),
        ..ChaosReport::default()
    };

    for (seq, (&t, &mask)) in probes.sent.iter().zip(&masks).enumerate() {
        if mask == 0 {
            continue;
        }
        report.answered += 1;
        if mask & 0x80 != 0 {
            tally.add(Invariant::ForeignAnswer, || {
                format!(
                    "probe {seq} at {:.3} s answered by a MAC of no node",
                    rel(t)
                )
            });
        }
        let who: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
        for &i in &who {
            report.answers_by_node[i] += 1;
            report.deadline_checks += 1;
            let c = last_covered(&held[i], t);
            let (bound, kept) = c.map_or((0, 0), |c| bound_at(i, c));
            if t >= bound {
                tally.add(Invariant::PastDeadline, || {
                    format!(
                        "node{} answered probe {seq} sent at {:.3} s; bound {:.3} s (last held and connected at {}, lease last kept alive at {:.3} s)",
                        i + 1,
                        rel(t),
                        rel(bound),
                        c.map_or_else(|| "never".to_owned(), |c| format!("{:.3} s", rel(c))),
                        rel(kept)
                    )
                });
            }
            if containing(&expired[i], t).is_some() {
                tally.add(Invariant::PastLeaseExpiry, || {
                    format!(
                        "node{} answered probe {seq} sent at {:.3} s, after etcd expired its key",
                        i + 1,
                        rel(t)
                    )
                });
            }
            if holder_at(t) != Holder::Node(i) && !settling(t) && caught_up(i, t) {
                tally.add(Invariant::StaleAnswer, || {
                    format!(
                        "node{} answered probe {seq} sent at {:.3} s; the key says {}",
                        i + 1,
                        rel(t),
                        holder_at(t)
                    )
                });
            }
        }
        if who.len() > 1 {
            // Never two answering nodes: no settle window and no "could not see the change"
            // exemption (the fence handshake makes that hold); the classification only explains.
            report.two_answers += 1;
            let unseen = who.iter().any(|&i| !caught_up(i, t));
            if unseen {
                report.two_answers_unseen += 1;
            } else if settling(t) {
                report.two_answers_settling += 1;
            }
            tally.add(Invariant::TwoAnswers, || {
                let c = change_at(t);
                format!(
                    "probe {seq} sent at {:.3} s answered by {}; the key says {} (last change between {:.3} and {:.3} s{})",
                    rel(t),
                    who.iter()
                        .map(|&i| format!(
                            "node{}{}",
                            i + 1,
                            if caught_up(i, t) { "" } else { " (out of touch)" }
                        ))
                        .collect::<Vec<_>>()
                        .join(" and "),
                    holder_at(t),
                    c.map_or(0.0, |c| rel(c.begin)),
                    c.map_or(0.0, |c| rel(c.end)),
                    if c.is_some_and(|c| c.expiry) { ", lease expiry" } else { "" }
                )
            });
        }
    }

    for &(t, i, deadline) in &rec.samples {
        if deadline == 0 {
            continue;
        }
        let c = last_covered(&held[i], t);
        let (bound, kept) = c.map_or((0, 0), |c| bound_at(i, c));
        if deadline > bound {
            tally.add(Invariant::MapPastDeadline, || {
                format!(
                    "node{}'s map at {:.3} s: deadline {:.3} s beyond the bound {:.3} s (lease last kept alive at {:.3} s)",
                    i + 1,
                    rel(t),
                    rel(deadline),
                    rel(bound),
                    rel(kept)
                )
            });
        }
    }

    // The holder answers: first within its bound, then never silent for `holder_gap`.
    let gap = ns(b.holder_gap);
    let min_probes = usize::try_from(gap / MS / 4).unwrap_or(usize::MAX).max(1);
    for i in 0..n {
        let bit = 1u8 << i;
        let mut prefix = Vec::with_capacity(masks.len() + 1);
        prefix.push(0u32);
        let mut acc = 0u32;
        for m in &masks {
            acc += u32::from(m & bit != 0);
            prefix.push(acc);
        }
        for &(a, end) in &healthy[i] {
            let start_of = |spans: &Spans| containing(spans, a).map_or(a, |s| s.0);
            let mut due = (start_of(&names_narrow[i]).saturating_add(change_bound))
                .max(start_of(&conn_narrow[i]).saturating_add(reconnect))
                // Patroni back: its next keepalive and the agent's next confirmation.
                .max(start_of(&patroni_narrow[i]).saturating_add(gap));
            // The fence handshake: every other node must have recorded its fence (it does so
            // once connected and caught up) or its record must have expired (within the record
            // TTL, plus a keepalive period, of losing touch). Whichever comes first.
            for (j, conn) in conn_narrow.iter().enumerate() {
                if j == i {
                    continue;
                }
                // In touch at the change and long enough after it to record its fence: caught
                // up by `reconnect` after its span began. Otherwise: its record expires
                // `record_wait` after it lost touch, or it records its fence once back.
                let ready = match containing(conn, a) {
                    Some(s) if s.1 >= a.saturating_add(change_bound) => {
                        s.0.saturating_add(reconnect)
                    }
                    span => {
                        let lost = span.map_or_else(|| last_covered(conn, a).unwrap_or(0), |s| s.1);
                        let back = conn
                            .iter()
                            .find(|s| s.0 > a)
                            .map_or(u64::MAX, |s| s.0.saturating_add(reconnect));
                        lost.saturating_add(record_wait).min(back)
                    }
                };
                due = due.max(ready);
            }
            if due >= end {
                continue;
            }
            report.holds_checked += 1;
            let from = probes.sent.partition_point(|&s| s < a);
            let due_at = probes.sent.partition_point(|&s| s < due);
            let last = probes.sent.partition_point(|&s| s < end);
            let first_answer = (from..last).find(|&p| masks[p] & bit != 0).unwrap_or(last);
            for p in due_at..first_answer {
                report.holder_checks += 1;
                tally.add(Invariant::HolderSilent, || {
                    format!(
                        "node{} holds the key and is connected (since {:.3} s, due by {:.3} s) but had not answered probe {p} sent at {:.3} s",
                        i + 1,
                        rel(a),
                        rel(due),
                        rel(probes.sent[p])
                    )
                });
            }
            // From then on, every `gap` long window holds an answer.
            let gap_from = probes
                .sent
                .partition_point(|&s| s < due.max(a.saturating_add(gap)))
                .max(first_answer);
            let mut silent_since: Option<u64> = None;
            for p in gap_from..last {
                let t = probes.sent[p];
                let lo = probes.sent.partition_point(|&s| s < t.saturating_sub(gap));
                report.holder_checks += 1;
                let sent = p + 1 - lo;
                let answered = prefix[p + 1] - prefix[lo];
                if answered == 0 && sent >= min_probes {
                    let since = *silent_since.get_or_insert(t);
                    tally.add(Invariant::HolderSilent, || {
                        format!(
                            "node{} holds the key and is connected (since {:.3} s) but answered none of the {sent} probes sent in the {:.1} s before {:.3} s (silent stretch from {:.3} s)",
                            i + 1,
                            rel(a),
                            ns_to_ms(gap) / 1e3,
                            rel(t),
                            rel(since)
                        )
                    });
                } else {
                    silent_since = None;
                }
            }
        }
    }

    // Change -> data plane, from the agents' own logs (when the node was caught up).
    let per_node: Vec<Vec<(bool, i64, u64)>> = logs.iter().map(|l| transitions(l)).collect();
    let mut fence = Vec::new();
    let mut answer = Vec::new();
    for (k, c) in rec.changes.iter().enumerate() {
        if c.revision <= 0 {
            continue;
        }
        let prev = k
            .checked_sub(1)
            .map_or(Holder::Absent, |p| rec.changes[p].holder);
        let measure = |node: usize, want: bool, into: &mut Vec<u64>| -> Option<u64> {
            if !caught_up(node, c.begin) {
                return None;
            }
            let &(_, _, at) = per_node[node]
                .iter()
                .find(|(answering, rev, _)| *answering == want && *rev == c.revision)?;
            let latency = at.saturating_sub(c.begin);
            into.push(latency);
            Some(latency)
        };
        if let Holder::Node(h) = prev
            && c.holder != prev
        {
            // In touch from the change until the bound: its fence is bounded, not excused.
            let in_touch = containing(&conn_narrow[h], c.begin)
                .is_some_and(|s| s.1 >= c.end.saturating_add(settle));
            if let Some(latency) = measure(h, false, &mut fence)
                && in_touch
                && latency > c.end.saturating_sub(c.begin).saturating_add(settle)
            {
                tally.add(Invariant::SlowFence, || {
                    format!(
                        "node{} fenced {:.3} ms after the change at {:.3} s (revision {})",
                        h + 1,
                        ns_to_ms(latency),
                        rel(c.begin),
                        c.revision
                    )
                });
            }
        }
        if let Holder::Node(j) = c.holder {
            let _ = measure(j, true, &mut answer);
        }
    }
    report.fence_latency = Latency::of(fence);
    report.answer_latency = Latency::of(answer);

    // How long a holder that was answering went silent around each etcd member kill (not an
    // invariant: the kill counts as a reconnection above; this shows what the agents did).
    let mut silences = Vec::new();
    let kills = rec
        .flags
        .iter()
        .filter(|f| f.flag == Flag::Members && !f.up)
        .map(|f| f.begin);
    for kill in kills {
        for i in 0..n {
            let bit = 1u8 << i;
            // Until the TTL has passed or the hold ends (a switchover, another fault), whichever
            // comes first; at least the settle window.
            let until = |spans: &Spans| containing(spans, kill).map_or(kill, |(_, end)| end);
            let window_end = kill
                .saturating_add(ttl)
                .min(until(&names_narrow[i]))
                .min(until(&conn_through_kills[i]))
                .min(until(&patroni_narrow[i]));
            if window_end < kill.saturating_add(settle) {
                continue;
            }
            let from = probes
                .sent
                .partition_point(|&s| s < kill.saturating_sub(ns(b.settle)));
            let at = probes.sent.partition_point(|&s| s < kill);
            let to = probes.sent.partition_point(|&s| s < window_end);
            // Only a holder that answered in the second before the kill.
            if !(from..at).any(|p| masks[p] & bit != 0) {
                continue;
            }
            let mut last = kill;
            let mut longest = 0;
            for (&sent, _) in probes.sent[at..to]
                .iter()
                .zip(&masks[at..to])
                .filter(|(_, m)| **m & bit != 0)
            {
                longest = longest.max(sent.saturating_sub(last));
                last = sent;
            }
            silences.push(longest.max(window_end.saturating_sub(last)));
        }
    }
    report.member_loss_silence = Latency::of(silences);

    for (i, log) in logs.iter().enumerate() {
        for line in log.lines().filter(|l| l.contains("panicked")) {
            tally.add(Invariant::AgentPanicked, || {
                format!("node{}: {line}", i + 1)
            });
        }
    }
    report.violations = tally.counts;
    report.examples = tally.examples;
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_tags_round_trip_and_avoid_the_cluster_subnet() {
        for subnet in [0u8, 70, 254, 255] {
            for seq in [
                0u32,
                1,
                255,
                256,
                70 * 256,
                TAGS - 1,
                TAGS,
                TAGS + 5,
                1_000_003,
            ] {
                let ip = tag_ip(subnet, seq);
                assert_ne!(ip[2], subnet, "subnet {subnet} seq {seq}");
                assert_eq!(untag(subnet, ip), Some(seq % TAGS));
            }
            assert_eq!(untag(subnet, [10, 77, subnet, 9]), None);
            assert_eq!(untag(subnet, [10, 78, 1, 1]), None);
        }
    }

    #[test]
    fn spans_follow_the_views_and_intersect() {
        let f = |up, begin, end| FlagChange {
            flag: Flag::Etcd,
            up,
            begin,
            end,
        };
        let flags = [f(true, 0, 10), f(false, 100, 110), f(true, 200, 210)];
        assert_eq!(
            flag_spans(&flags, Flag::Etcd, View::Wide),
            vec![(0, 110), (200, u64::MAX)]
        );
        assert_eq!(
            flag_spans(&flags, Flag::Etcd, View::Narrow),
            vec![(10, 100), (210, u64::MAX)]
        );
        assert_eq!(
            intersect(&vec![(0, 110), (200, u64::MAX)], &vec![(50, 250)]),
            vec![(50, 110), (200, 250)]
        );
        let spans = vec![(10, 20), (30, 40)];
        assert_eq!(last_covered(&spans, 5), None);
        assert_eq!(last_covered(&spans, 15), Some(15));
        assert_eq!(last_covered(&spans, 25), Some(20));
        assert_eq!(containing(&spans, 25), None);
        assert_eq!(containing(&spans, 30), Some((30, 40)));
    }

    const MS_: u64 = 1_000_000;

    /// Two nodes: node1 holds the key from 1 s, switchover to node2 at 20 s; probes every ms for
    /// 40 s; `extra` adds answers (probe ms, node) and `silent` removes node2's from a ms on.
    fn scenario(
        extra: &[(std::ops::Range<u64>, u8)],
        node2_from: u64,
        node2_silent_from: u64,
    ) -> ChaosReport {
        scenario_with(extra, node2_from, node2_silent_from, &[], |_, _| {})
    }

    /// [`scenario`] with more flag changes (ms, flag, up), each complete 1 ms after it began,
    /// and `tweak` applied to the recording (keepalives, elections, map samples).
    fn scenario_with(
        extra: &[(std::ops::Range<u64>, u8)],
        node2_from: u64,
        node2_silent_from: u64,
        more_flags: &[(u64, Flag, bool)],
        tweak: impl FnOnce(&mut Recorded, &mut Vec<String>),
    ) -> ChaosReport {
        let config = ChaosConfig::new(Path::new("/nonexistent"), 1, 2, Duration::ZERO, 7);
        let mut flags = Vec::new();
        for i in 0..2 {
            for flag in [
                Flag::Agent(i),
                Flag::Reach(i),
                Flag::Link(i),
                Flag::Patroni(i),
            ] {
                flags.push(FlagChange {
                    flag,
                    up: true,
                    begin: 0,
                    end: 0,
                });
            }
        }
        for flag in [Flag::Etcd, Flag::Members] {
            flags.push(FlagChange {
                flag,
                up: true,
                begin: 0,
                end: 0,
            });
        }
        for &(at, flag, up) in more_flags {
            flags.push(FlagChange {
                flag,
                up,
                begin: at * MS_,
                end: (at + 1) * MS_,
            });
        }
        let change = |at: u64, holder, revision| KeyChange {
            begin: at * MS_,
            end: (at + 1) * MS_,
            holder,
            revision,
            expiry: false,
        };
        let mut rec = Recorded {
            t0: 0,
            chaos: Duration::from_secs(40),
            flags,
            changes: vec![
                change(1_000, Holder::Node(0), 2),
                change(20_000, Holder::Absent, 3),
                change(20_002, Holder::Node(1), 4),
            ],
            samples: vec![(10_000 * MS_, 0, 11_500 * MS_)],
            refreshes: Vec::new(),
            elections: Vec::new(),
            actions: BTreeMap::new(),
            flips: 2,
            findings: Vec::new(),
            addresses_restored: 0,
            addresses_removed: 0,
            conflicts_counted: 0,
            conflicts_inconclusive: 0,
            links_intact: 0,
            timeline: Vec::new(),
        };
        let mut logs = vec![String::new(), String::new()];
        tweak(&mut rec, &mut logs);
        let mut probes = ProbeLog {
            sent: (0..40_000).map(|ms| ms * MS_).collect(),
            answers: Vec::new(),
        };
        let mut answer = |ms: u64, who: u8| {
            probes.answers.push(Answer {
                seq: u32::try_from(ms).expect("small"),
                who,
            });
        };
        for ms in 1_005..20_000 {
            answer(ms, 0);
        }
        for ms in node2_from..node2_silent_from.min(40_000) {
            answer(ms, 1);
        }
        for (range, who) in extra {
            for ms in range.clone() {
                answer(ms, *who);
            }
        }
        analyse(&config, &rec, &probes, &logs)
    }

    #[test]
    fn a_clean_timeline_has_no_violations() {
        let r = scenario(&[], 20_010, u64::MAX);
        assert_eq!(r.total_violations(), 0, "{:?}", r.examples);
        assert_eq!(r.answered, 18_995 + 19_990);
        // node1 from 8 s (its agent started at 0) to 20 s, node2 from 22.003 s to the end.
        assert_eq!(r.holder_checks, 12_000 + 17_997);
    }

    #[test]
    fn the_checks_catch_what_they_claim() {
        // node1 goes on answering after the switchover (past the settle window, then past its
        // deadline), node2 falls silent at 35 s, and a foreign MAC answers once.
        let r = scenario(
            &[
                (20_000..21_500, 0),
                (30_000..30_010, 0),
                (33_000..33_001, FOREIGN_MAC),
            ],
            20_010,
            35_000,
        );
        let v = |i: Invariant| r.violations[&i];
        // Every probe both nodes answered counts, the settle window after the acquire included
        // (20.010 s, node2's first answer, to 21.5 s) and 30_000..30_010: no exemption.
        assert_eq!(
            v(Invariant::TwoAnswers),
            (21_500 - 20_010) + 10,
            "{:?}",
            r.examples
        );
        // A stale answer by a node that has seen the change still has its settle window.
        assert_eq!(v(Invariant::StaleAnswer), 496 + 10);
        // node1 last held the key at 20.001 s: bound 22.501 s.
        assert_eq!(v(Invariant::PastDeadline), 10);
        assert_eq!(v(Invariant::ForeignAnswer), 1);
        // Silent from 35 s: violations from 37 s (2 s without an answer) to the end.
        assert_eq!(v(Invariant::HolderSilent), 40_000 - 37_000);
        assert_eq!(v(Invariant::MapPastDeadline), 0);
        assert_eq!(r.two_answers_settling, 21_004 - 20_010);
    }

    #[test]
    fn a_late_new_holder_is_caught() {
        // Due 1 s after the acquire completed (21.003 s); first answer at 23 s.
        let r = scenario(&[], 23_000, u64::MAX);
        assert_eq!(r.violations[&Invariant::HolderSilent], 23_000 - 21_003);
        assert_eq!(r.total_violations(), 23_000 - 21_003, "{:?}", r.examples);
    }

    #[test]
    fn a_link_down_or_an_etcd_member_kill_gives_the_holder_the_reconnect_bound() {
        // node2 holds the key and falls silent from 30 s to 34 s.
        let back = [(34_000..40_000, 1)];
        let r = scenario(&back, 20_010, 30_000);
        // Silent for the 2 s gap bound from 32 s on: probes 32_000..34_000.
        assert_eq!(r.violations[&Invariant::HolderSilent], 2_000);
        assert_eq!(r.member_loss_silence.n, 0);

        // Its interface was down from 30 s to 31 s: due 8 s after it came up, and it answered at 34 s.
        let link = [
            (30_000, Flag::Link(1), false),
            (31_000, Flag::Link(1), true),
        ];
        let r = scenario_with(&back, 20_010, 30_000, &link, |_, _| {});
        assert_eq!(r.total_violations(), 0, "{:?}", r.examples);
        // While the link is down no confirmation can be made: with it down from 30 s to 35 s,
        // answers sent from 30.001 + 3 - 0.5 s on are past the deadline.
        let long_link = [
            (30_000, Flag::Link(1), false),
            (35_000, Flag::Link(1), true),
        ];
        let r = scenario_with(
            &[(30_000..33_000, 1)],
            20_010,
            30_000,
            &long_link,
            |_, _| {},
        );
        assert_eq!(r.violations[&Invariant::PastDeadline], 33_000 - 32_501);

        // An etcd member killed at 30 s: every node reconnects, the silence is excused and measured.
        let kill = [
            (30_000, Flag::Members, false),
            (30_001, Flag::Members, true),
        ];
        let r = scenario_with(&back, 20_010, 30_000, &kill, |_, _| {});
        assert_eq!(r.total_violations(), 0, "{:?}", r.examples);
        assert_eq!(r.member_loss_silence.n, 1);
        // Silent for the whole TTL after the kill.
        assert!((r.member_loss_silence.max_ms - 3_000.0).abs() < 2.0);
    }

    /// node1's Patroni keeps its lease alive every second (Patroni's `loop_wait` = TTL / 3), each
    /// keepalive taking 1 ms; node1's agent confirms 800 ms after each (3 s leases, 500 ms margin).
    /// Its map deadlines are sampled from 2 s to 19 s, as the agent would write them: `deadline`
    /// of (confirmation sent, the keepalive's end, etcd's answer in whole seconds).
    fn deadlines(deadline: impl Fn(u64, u64) -> u64) -> ChaosReport {
        scenario_with(&[], 20_010, u64::MAX, &[], |rec, _| {
            let keepalives: Vec<(u64, u64)> = (1..40)
                .map(|s| (s * 1_000 * MS_, (s * 1_000 + 1) * MS_))
                .collect();
            rec.refreshes = vec![keepalives, Vec::new()];
            rec.samples = (2..19)
                .map(|s| {
                    let sent = (s * 1_000 + 800) * MS_;
                    (sent + MS_, 0, deadline(sent, (s * 1_000 + 1) * MS_))
                })
                .collect();
        })
    }

    #[test]
    fn the_deadline_bound_counts_from_the_last_keepalive() {
        const TTL: u64 = 3_000 * MS_;
        const MARGIN: u64 = 500 * MS_;
        // etcd answers the remaining TTL in whole seconds, rounded down.
        let remaining = |sent: u64, kept: u64| (kept + TTL - sent) / (1_000 * MS_) * 1_000 * MS_;
        // The agent: request time + remaining TTL - margin.
        let r = deadlines(|sent, kept| sent + remaining(sent, kept) - MARGIN);
        assert_eq!(r.total_violations(), 0, "{:?}", r.examples);
        // Without the margin: beyond the bound (the keepalive's end + TTL - margin) whenever
        // etcd's rounding leaves less than the margin, here every time.
        let r = deadlines(|sent, kept| sent + remaining(sent, kept));
        assert_eq!(
            r.violations[&Invariant::MapPastDeadline],
            17,
            "{:?}",
            r.examples
        );
        // The granted TTL instead of the remaining one: 800 ms too late, every time (the bound
        // from the confirmation's own time, `C + TTL - margin`, would have let it pass).
        let r = deadlines(|sent, _| sent + TTL - MARGIN);
        assert_eq!(
            r.violations[&Invariant::MapPastDeadline],
            17,
            "{:?}",
            r.examples
        );
        // An election observed at 10.2 s: etcd extended the lease by up to an election timeout,
        // so the granted-TTL deadlines around it pass (the bound is lenient there, not wrong).
        let r = scenario_with(&[], 20_010, u64::MAX, &[], |rec, _| {
            rec.refreshes = vec![
                (1..40)
                    .map(|s| (s * 1_000 * MS_, (s * 1_000 + 1) * MS_))
                    .collect(),
                Vec::new(),
            ];
            rec.elections = vec![10_200 * MS_];
            rec.samples = vec![(10_801 * MS_, 0, 10_800 * MS_ + TTL - MARGIN)];
        });
        assert_eq!(r.total_violations(), 0, "{:?}", r.examples);
    }

    #[test]
    fn a_slow_fence_is_caught() {
        // node1 held revision 2; the release (revision 3) began at 20 s and was complete at
        // 20.001 s. node1's log puts its fence 30 ms, then 1.2 s after it: the bound is 1 s.
        let fenced = |after_ms: u64| {
            move |_: &mut Recorded, logs: &mut Vec<String>| {
                logs[0] = format!(
                    "INFO vip_agent::agent: data plane fenced revision=3 dataplane_at_ns={}\n",
                    (20_000 + after_ms) * MS_
                );
            }
        };
        let r = scenario_with(&[], 20_010, u64::MAX, &[], fenced(30));
        assert_eq!(r.total_violations(), 0, "{:?}", r.examples);
        assert_eq!(r.fence_latency.n, 1);
        let r = scenario_with(&[], 20_010, u64::MAX, &[], fenced(1_200));
        assert_eq!(r.violations[&Invariant::SlowFence], 1, "{:?}", r.examples);
        // Out of touch at the change (its link down from 19.5 s): measured by nobody, excused.
        let r = scenario_with(
            &[],
            20_010,
            u64::MAX,
            &[
                (19_500, Flag::Link(0), false),
                (25_000, Flag::Link(0), true),
            ],
            fenced(1_200),
        );
        assert_eq!(r.violations[&Invariant::SlowFence], 0, "{:?}", r.examples);
    }

    #[test]
    fn transitions_are_read_from_the_agent_log() {
        let log = "2026-01-01T00:00:00Z  INFO vip_agent::agent: data plane fenced key=/k role=\"fenced\" reason=Deleted revision=12 deadline_in_ms=0 event_to_dataplane_us=20 dataplane_at_ns=555\n\
                   2026-01-01T00:00:01Z  INFO vip_agent::agent: data plane answering key=/k role=\"primary\" reason=Confirmed revision=13 deadline_in_ms=1500 event_to_dataplane_us=30 dataplane_at_ns=777\n\
                   something else revision=14 dataplane_at_ns=1\n";
        assert_eq!(transitions(log), vec![(false, 12, 555), (true, 13, 777)]);
    }
}
