//! Benchmark on a real Patroni (issue 13, item 4): vip-agent and vip-manager 1.0.2 in the same run,
//! each in front of its own Patroni 3.0.2 + PostgreSQL 15 cluster on etcd 3.4
//! ([`crate::patroni`]), measured by what a database client sees through the VIP.
//!
//! * vip-agent runs with vip-manager's keys only; its cluster runs Patroni's `etcd3:` DCS.
//! * vip-manager 1.0.2 (Debian) reads only etcd's v2 API; its cluster runs Patroni's `etcd:` (v2)
//!   DCS against the same kind of etcd (`--enable-v2=true`).
//!
//! The client connects through the VIP 50 times a second (a new connection each), reads
//! `pg_is_in_recovery()` and the server's name and inserts a row numbered by the attempt. Each
//! scenario ([`Scenario`]) runs a few times per system, in rounds (every scenario once per round,
//! so a change of the machine's load spreads over all of them). Per trial:
//! * **first read-write connection**: from the trigger (for an etcd outage: from etcd's return) to
//!   the acknowledgement of the first `INSERT` through the VIP committed on the leader, among the
//!   connections started at or after the leader key last changed (at or after the trigger when it
//!   did not change);
//! * **in recovery**: connections through the VIP that reached a server in recovery;
//! * **no-write window**: the longest stretch without an acknowledged `INSERT` through the VIP,
//!   from 1 s before the trigger until 1 s after the healed cluster's first read-write connection;
//! * **writes lost**: acknowledged `INSERT`s missing from the leader's table once the cluster is
//!   healthy again, and of them those acknowledged by a node while the leader key named another.
//!
//! Also the hold check's cost to Patroni ([`HoldCost`]): the CPU time of each node's Patroni and
//! PostgreSQL with the agents running (the leader's answering and asking Patroni every
//! [`vip_agent::gate::CHECK_INTERVAL`]) against no agent, with no client.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use crate::{
    bench::{clock_ticks_per_second, cpu_ticks, percentiles},
    cluster::process_tree,
    patroni::{
        Attempt, Expect, LOOP_WAIT, Manager, Observers, Options, Outcome, PatroniCluster, TTL,
        check_window, require_patroni,
    },
};

/// How long etcd stays unreachable in the outage scenarios: longer than Patroni's `ttl`.
pub const OUTAGE: Duration = Duration::from_secs(TTL + 10);
/// Bound on the cluster's healing after a scenario (rewind or re-clone of the old leader).
const HEAL: Duration = Duration::from_secs(120);
/// Bound on the wait for a committed write through the VIP on the leader after its key.
const RW_AGAIN: Duration = Duration::from_secs(30);
/// Observation before the trigger, and after the healed cluster's first read-write connection.
const MARGIN: Duration = Duration::from_secs(1);
/// Trials per scenario and system by default.
pub const DEFAULT_TRIALS: usize = 5;
/// Default length of each of the four windows of the hold check's cost (two with the agents, two
/// without, in the order with, without, without, with).
pub const DEFAULT_COST_WINDOW: Duration = Duration::from_secs(30);

/// One scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// `patronictl switchover` to the other member.
    Switchover,
    /// SIGKILL of the leader's postmaster; Patroni restarts PostgreSQL and keeps the key.
    PostgresCrash,
    /// SIGKILL of the leader's Patroni and all of its PostgreSQL processes; the other member takes
    /// over after the lease; the killed node's Patroni is then started again and rejoins.
    Kill,
    /// A blackhole route to etcd on the leader until the other member holds the key, 3 s more,
    /// then removed.
    CutOff,
    /// etcd unreachable from both nodes for [`OUTAGE`], `failsafe_mode: true`.
    OutageFailsafeOn,
    /// The same with `failsafe_mode: false`.
    OutageFailsafeOff,
}

/// Every scenario, in the order of a round.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario::Switchover,
    Scenario::PostgresCrash,
    Scenario::Kill,
    Scenario::CutOff,
    Scenario::OutageFailsafeOn,
    Scenario::OutageFailsafeOff,
];

impl Scenario {
    /// The name used in tables.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Switchover => "switchover",
            Self::PostgresCrash => "PostgreSQL crash on the leader",
            Self::Kill => "Patroni + PostgreSQL SIGKILLed on the leader",
            Self::CutOff => "leader cut off from etcd (blackhole route)",
            Self::OutageFailsafeOn => "etcd outage, failsafe_mode on",
            Self::OutageFailsafeOff => "etcd outage, failsafe_mode off",
        }
    }

    /// A short name for the raw data.
    #[must_use]
    pub fn key(self) -> &'static str {
        match self {
            Self::Switchover => "switchover",
            Self::PostgresCrash => "postgres_crash",
            Self::Kill => "kill",
            Self::CutOff => "cut_off",
            Self::OutageFailsafeOn => "outage_failsafe_on",
            Self::OutageFailsafeOff => "outage_failsafe_off",
        }
    }

    /// The scenario called `key` (see [`Self::key`]).
    #[must_use]
    pub fn from_key(key: &str) -> Option<Self> {
        SCENARIOS.into_iter().find(|s| s.key() == key)
    }

    /// Whether this is an etcd outage (measured from etcd's return).
    #[must_use]
    pub fn outage(self) -> bool {
        matches!(self, Self::OutageFailsafeOn | Self::OutageFailsafeOff)
    }
}

/// One trial of one scenario on one system.
#[derive(Clone, Debug)]
pub struct PatroniTrial {
    pub scenario: Scenario,
    pub manager: Manager,
    /// Reference (trigger, or etcd's return) to the first read-write connection's commit.
    pub first_rw: Option<Duration>,
    pub in_recovery: usize,
    /// The longest stretch without an acknowledged write through the VIP.
    pub no_write: Duration,
    pub attempts: usize,
    pub committed: usize,
    /// Acknowledged writes missing from the leader's table after the cluster healed.
    pub lost: usize,
    /// Acknowledged by a node while the leader key named another.
    pub late: usize,
    /// Of the lost writes, those acknowledged after the key named another node.
    pub lost_late: usize,
    pub leader_before: String,
    pub leader_after: String,
    /// For an etcd outage: whether Patroni kept the leader a running primary throughout (its REST
    /// answers, polled 10 times a second from the client).
    pub kept_primary: Option<bool>,
    /// What issue 13's checks (those of `tests/tests/patroni_e2e.rs`, [`check_window`]) found
    /// wrong in this trial: empty when it passed them. vip-manager is expected to fail some (it
    /// drops the VIP during a failsafe outage).
    pub check_failures: Vec<String>,
    /// Wall-clock time of the trial, healing included.
    pub took: Duration,
}

/// CPU used over one window on one node.
#[derive(Clone, Debug)]
pub struct CostSample {
    pub node: String,
    /// Whether this node held the leader key (its agent answered and ran the hold check).
    pub leader: bool,
    pub with_agent: bool,
    pub window: Duration,
    /// Patroni's process tree (PostgreSQL excluded: its postmaster is not Patroni's child).
    pub patroni_ms: u64,
    /// The postmaster and its processes (Patroni's own connection's backend among them).
    pub postgres_ms: u64,
    /// The agent's own CPU, when it ran.
    pub agent_ms: Option<u64>,
}

/// The hold check's cost to Patroni.
#[derive(Clone, Debug, Default)]
pub struct HoldCost {
    pub samples: Vec<CostSample>,
    /// PostgreSQL crashes on the leader: (agents running, SIGKILL of the postmaster -> PostgreSQL
    /// read-write again on its unix socket; `None`: not within a minute).
    pub recoveries: Vec<(bool, Option<Duration>)>,
}

/// What to run.
#[derive(Clone, Debug)]
pub struct PatroniPlan {
    /// Trials per scenario and system.
    pub trials: usize,
    /// Each of the hold-cost windows (zero: skip the measurement).
    pub cost_window: Duration,
    /// The systems, in the order they run.
    pub systems: Vec<Manager>,
    /// `10.77.<subnet + k>.0/24` for the k-th system (see [`crate::patroni::Options::subnet`]).
    pub subnet: u8,
    /// The scenarios of a round (all of [`SCENARIOS`] by default).
    pub scenarios: Vec<Scenario>,
}

/// The 1, 5 and 15 minute load averages (`/proc/loadavg`).
#[must_use]
pub fn loadavg() -> [f64; 3] {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|f| f.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// One system's part.
#[derive(Clone, Debug)]
pub struct SystemPart {
    pub manager: Manager,
    pub trials: Vec<PatroniTrial>,
    pub cost: Option<HoldCost>,
    /// (phase, wall-clock time).
    pub took: Vec<(String, Duration)>,
    pub load_start: [f64; 3],
    pub load_end: [f64; 3],
    /// Why the part stopped early (a panic's message), if it did.
    pub aborted: Option<String>,
}

/// Everything measured.
#[derive(Clone, Debug)]
pub struct PatroniReport {
    pub parts: Vec<SystemPart>,
    pub trials_per_scenario: usize,
    pub cost_window: Duration,
    pub took: Duration,
}

/// Run the plan: one Patroni cluster per system, one after the other. `None` when Patroni, PostgreSQL
/// or etcd is missing (after a loud `SKIPPED`). A system whose part fails (a cluster that does not
/// heal in time) is reported as aborted with what it measured so far; the other still runs.
#[must_use]
pub fn run(plan: &PatroniPlan, agent_bin: &Path) -> Option<PatroniReport> {
    let installation = require_patroni("vip-bench (real Patroni)")?;
    let started = Instant::now();
    let mut parts = Vec::new();
    for (k, &manager) in plan.systems.iter().enumerate() {
        let subnet = plan.subnet + u8::try_from(k).expect("few systems");
        let part = std::sync::Arc::new(std::sync::Mutex::new(SystemPart {
            manager,
            trials: Vec::new(),
            cost: None,
            took: Vec::new(),
            load_start: loadavg(),
            load_end: [0.0; 3],
            aborted: None,
        }));
        let shared = std::sync::Arc::clone(&part);
        let installation = installation.clone();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_system(installation, manager, subnet, plan, agent_bin, &shared);
        }));
        let mut part = part
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".to_owned());
            eprintln!("vip-bench: {} aborted: {message}", manager.label());
            part.aborted = Some(message.lines().next().unwrap_or_default().to_owned());
        }
        part.load_end = loadavg();
        parts.push(part);
    }
    Some(PatroniReport {
        parts,
        trials_per_scenario: plan.trials,
        cost_window: plan.cost_window,
        took: started.elapsed(),
    })
}

fn run_system(
    installation: crate::postgres::Installation,
    manager: Manager,
    subnet: u8,
    plan: &PatroniPlan,
    agent_bin: &Path,
    part: &std::sync::Mutex<SystemPart>,
) {
    let record = |f: &dyn Fn(&mut SystemPart)| {
        f(&mut part
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner));
    };
    let label = manager.label();
    eprintln!("vip-bench: {label}: building the Patroni cluster ...");
    let clock = Instant::now();
    let mut c = PatroniCluster::with_manager(
        installation,
        Options {
            subnet,
            failsafe_mode: false,
            rest_tls: false,
        },
        manager,
        agent_bin,
    );
    let took = clock.elapsed();
    record(&|p| p.took.push(("setup".to_owned(), took)));
    if manager == Manager::VipAgent && !plan.cost_window.is_zero() {
        eprintln!(
            "vip-bench: {label}: the hold check's cost to Patroni, 4 x {} s ...",
            plan.cost_window.as_secs()
        );
        let clock = Instant::now();
        let cost = hold_cost(&mut c, plan.cost_window, plan.trials);
        let took = clock.elapsed();
        record(&|p| {
            p.cost = Some(cost.clone());
            p.took.push(("hold check cost".to_owned(), took));
        });
    }
    let obs = c.observe();
    let mut bed = Bed { obs, c };
    let leader = bed.c.leader().expect("a leader after bootstrap");
    assert!(
        bed.obs
            .wait_commit(bed.obs.now(), &leader, Duration::from_secs(60)),
        "no committed write through the VIP on {leader} after bootstrap\n{}",
        bed.c.logs_tail(40)
    );
    for round in 0..plan.trials {
        for &scenario in &plan.scenarios {
            eprintln!(
                "vip-bench: {label}: round {} of {}: {} ...",
                round + 1,
                plan.trials,
                scenario.label()
            );
            let trial = bed.trial(scenario);
            eprintln!(
                "vip-bench: {label}: {}: first read-write connection {}, in recovery {}, \
                 no-write window {:.2} s, lost {} ({} after the key moved), took {:.0} s",
                scenario.label(),
                trial.first_rw.map_or_else(
                    || "never".to_owned(),
                    |d| format!("{:.2} s", d.as_secs_f64())
                ),
                trial.in_recovery,
                trial.no_write.as_secs_f64(),
                trial.lost,
                trial.lost_late,
                trial.took.as_secs_f64()
            );
            record(&|p| {
                let name = scenario.label().to_owned();
                match p.took.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, d)) => *d += trial.took,
                    None => p.took.push((name, trial.took)),
                }
                p.trials.push(trial.clone());
            });
        }
    }
}

/// The observers and the cluster. Field order is drop order: the observers stop first.
struct Bed {
    obs: Observers,
    c: PatroniCluster,
}

/// The moments of one trial.
struct Window {
    from: Duration,
    trigger: Duration,
    /// What the first read-write connection counts from (the trigger, or etcd's return).
    reference: Duration,
    leader_before: String,
    kept_primary: Option<bool>,
}

impl Bed {
    /// (leader index, other index) from the leader key.
    fn roles(&self) -> (usize, usize) {
        let leader = self.c.leader().expect("a leader key");
        let l = self.c.index_of(&leader);
        (l, 1 - l)
    }

    /// Observe [`MARGIN`] before the trigger: (from, trigger).
    fn lead_in(&self) -> (Duration, Duration) {
        let from = self.obs.now();
        std::thread::sleep(MARGIN);
        (from, self.obs.now())
    }

    fn trial(&mut self, scenario: Scenario) -> PatroniTrial {
        let started = Instant::now();
        let window = match scenario {
            Scenario::Switchover => self.switchover(),
            Scenario::PostgresCrash => self.postgres_crash(),
            Scenario::Kill => self.kill_leader(),
            Scenario::CutOff => self.cut_leader(),
            Scenario::OutageFailsafeOn => self.etcd_outage(true),
            Scenario::OutageFailsafeOff => self.etcd_outage(false),
        };
        let mut trial = self.close(scenario, &window);
        trial.took = started.elapsed();
        trial
    }

    fn switchover(&mut self) -> Window {
        let (l, o) = self.roles();
        let (leader, candidate) = (
            self.c.members[l].name.clone(),
            self.c.members[o].name.clone(),
        );
        let (from, trigger) = self.lead_in();
        let _ = self.c.patronictl(&[
            "switchover",
            "--leader",
            &leader,
            "--candidate",
            &candidate,
            "--force",
        ]);
        self.c.wait_for(
            Duration::from_secs(60),
            "the leader key names the candidate",
            |c| c.leader().as_deref() == Some(candidate.as_str()),
        );
        Window {
            from,
            trigger,
            reference: trigger,
            leader_before: leader,
            kept_primary: None,
        }
    }

    fn postgres_crash(&mut self) -> Window {
        let (l, _) = self.roles();
        let (from, trigger) = self.lead_in();
        let old = self.c.crash_postgres(l);
        self.c.wait_for(
            Duration::from_secs(60),
            "Patroni restarted PostgreSQL",
            |c| c.postmaster_pid(l).is_some_and(|p| p != old),
        );
        Window {
            from,
            trigger,
            reference: trigger,
            leader_before: self.c.members[l].name.clone(),
            kept_primary: None,
        }
    }

    fn kill_leader(&mut self) -> Window {
        let (l, o) = self.roles();
        let candidate = self.c.members[o].name.clone();
        let (from, trigger) = self.lead_in();
        self.c.kill_patroni(l);
        self.c.kill_postgres(l);
        self.c.wait_for(
            Duration::from_secs(TTL + 40),
            "the other member takes the leader key",
            |c| c.leader().as_deref() == Some(candidate.as_str()),
        );
        self.c.start_patroni(l);
        Window {
            from,
            trigger,
            reference: trigger,
            leader_before: self.c.members[l].name.clone(),
            kept_primary: None,
        }
    }

    fn cut_leader(&mut self) -> Window {
        let (l, o) = self.roles();
        let candidate = self.c.members[o].name.clone();
        let (from, trigger) = self.lead_in();
        self.c.net.partition(l);
        let took_over = self.c.poll_until(Duration::from_secs(TTL + 40), |c| {
            c.leader().as_deref() == Some(candidate.as_str())
        });
        // Leave the old leader cut off a little longer, as a real partition would be.
        std::thread::sleep(Duration::from_secs(3));
        self.c.net.heal(l);
        assert!(
            took_over,
            "the other member did not take the leader key\n{}",
            self.c.logs_tail(40)
        );
        Window {
            from,
            trigger,
            reference: trigger,
            leader_before: self.c.members[l].name.clone(),
            kept_primary: None,
        }
    }

    /// Set Patroni's `failsafe_mode` (dynamic configuration) and wait until both members use it.
    fn set_failsafe(&self, on: bool) {
        let _ = self.c.patronictl(&[
            "edit-config",
            "--force",
            "--quiet",
            "--set",
            &format!("failsafe_mode={on}"),
        ]);
        self.c.wait_for(
            Duration::from_secs(30),
            "the configuration key carries the failsafe_mode",
            |_| {
                self.obs.key_value("config").is_some_and(|v| {
                    serde_json::from_str::<serde_json::Value>(&v)
                        .is_ok_and(|j| j["failsafe_mode"].as_bool() == Some(on))
                })
            },
        );
        if on {
            // The leader writes `/failsafe` (every member's REST URL) once it runs with it.
            let names: Vec<String> = self.c.members.iter().map(|m| m.name.clone()).collect();
            self.c.wait_for(
                Duration::from_secs(30),
                "Patroni wrote the /failsafe key with every member",
                |_| {
                    self.obs
                        .key_value("failsafe")
                        .is_some_and(|v| names.iter().all(|n| v.contains(n.as_str())))
                },
            );
        }
        // Each member picks the configuration up in its next HA loop.
        std::thread::sleep(Duration::from_secs(2 * LOOP_WAIT + 1));
    }

    fn etcd_outage(&mut self, failsafe: bool) -> Window {
        self.set_failsafe(failsafe);
        let (l, _) = self.roles();
        let leader = self.c.members[l].name.clone();
        let (from, trigger) = self.lead_in();
        self.c.etcd_outage();
        std::thread::sleep(OUTAGE);
        let end = self.obs.now();
        self.c.end_etcd_outage();
        let samples: Vec<_> = self
            .obs
            .rest()
            .into_iter()
            .filter(|s| s.node == l)
            .collect();
        let at_trigger = samples.iter().rev().find(|s| s.at <= trigger);
        let kept = samples
            .iter()
            .filter(|s| s.at > trigger && s.at < end)
            .chain(at_trigger)
            .all(|s| s.status.as_ref().is_ok_and(|st| st.is_running_primary()));
        Window {
            from,
            trigger,
            reference: end,
            leader_before: leader,
            kept_primary: Some(kept),
        }
    }

    /// Wait for the cluster to heal and for a committed write through the VIP on the leader, then
    /// measure the window.
    fn close(&mut self, scenario: Scenario, w: &Window) -> PatroniTrial {
        self.c.wait_healthy(HEAL);
        let leader = self.c.leader().expect("a leader key");
        let l = self.c.index_of(&leader);
        let since = last_leader_change(&self.obs, w.trigger, self.obs.now())
            .map_or(w.trigger, |(at, _)| at)
            .max(w.reference);
        let remaining = (since + RW_AGAIN).saturating_sub(self.obs.now());
        let _ = self.obs.wait_commit(since, &leader, remaining);
        std::thread::sleep(MARGIN);
        let to = self.obs.now();
        let attempts: Vec<Attempt> = self
            .obs
            .attempts()
            .into_iter()
            .filter(|a| a.start >= w.from && a.start < to)
            .collect();
        let committed: Vec<(u64, &str, Duration)> = attempts
            .iter()
            .filter_map(|a| a.committed().map(|(n, acked)| (a.seq, n, acked)))
            .collect();
        // The leader key's value as last seen before each acknowledgement.
        let keys = self.obs.keys();
        let leader_events: Vec<_> = keys.iter().filter(|e| e.key == "leader").collect();
        let named_at = |t: Duration| {
            leader_events
                .iter()
                .rev()
                .find(|e| e.at < t && e.value.is_some())
                .and_then(|e| e.value.as_deref())
        };
        let is_late = |node: &str, acked: Duration| named_at(acked).is_some_and(|n| n != node);
        let late = committed
            .iter()
            .filter(|(_, n, acked)| is_late(n, *acked))
            .count();
        // What the leader has, once healthy.
        let present = match (
            committed.iter().map(|c| c.0).min(),
            committed.iter().map(|c| c.0).max(),
        ) {
            (Some(lo), Some(hi)) => self
                .c
                .psql(
                    l,
                    &format!(
                        "SELECT seq FROM {} WHERE seq BETWEEN {lo} AND {hi}",
                        crate::patroni::TABLE
                    ),
                )
                .lines()
                .filter_map(|s| s.trim().parse().ok())
                .collect::<std::collections::HashSet<u64>>(),
            _ => std::collections::HashSet::new(),
        };
        let lost: Vec<&(u64, &str, Duration)> = committed
            .iter()
            .filter(|(seq, _, _)| !present.contains(seq))
            .collect();
        let lost_late = lost
            .iter()
            .filter(|(_, n, acked)| is_late(n, *acked))
            .count();
        let first_rw = attempts
            .iter()
            .filter(|a| a.start >= since)
            .filter_map(|a| a.committed().filter(|(n, _)| *n == leader).map(|(_, t)| t))
            .min()
            .map(|t| t.saturating_sub(w.reference));
        // Issue 13's checks, as the end-to-end tests make them; the timeline goes to stderr (the
        // run's log) when they fail, a connection reached a server in recovery or a write was
        // lost, or always with VIP_BENCH_TIMELINES=1.
        let members: Vec<String> = self.c.members.iter().map(|m| m.name.clone()).collect();
        let expect = Expect {
            reachable_rw: (scenario == Scenario::OutageFailsafeOn)
                .then(|| (w.trigger, w.reference, w.leader_before.clone())),
            rw_again_within: RW_AGAIN,
        };
        let verdict = check_window(
            &format!("{} ({})", scenario.label(), self.c.manager.label()),
            &self.obs,
            &members,
            (w.from, w.trigger, to),
            &expect,
        );
        let in_recovery = attempts
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::InRecovery { .. }))
            .count();
        if !verdict.failures.is_empty()
            || in_recovery > 0
            || !lost.is_empty()
            || std::env::var_os("VIP_BENCH_TIMELINES").is_some()
        {
            let failures: String = verdict
                .failures
                .iter()
                .map(|f| format!("\n  - {f}"))
                .collect();
            eprintln!("{}{failures}\n{}", verdict.summary, verdict.timeline);
        }
        let mut acks: Vec<Duration> = committed.iter().map(|c| c.2).collect();
        acks.sort();
        let mut no_write = Duration::ZERO;
        let mut last = w.from;
        for t in acks.iter().copied().chain(std::iter::once(to)) {
            no_write = no_write.max(t.saturating_sub(last));
            last = last.max(t);
        }
        PatroniTrial {
            scenario,
            manager: self.c.manager,
            first_rw,
            in_recovery,
            no_write,
            attempts: attempts.len(),
            committed: committed.len(),
            lost: lost.len(),
            late,
            lost_late,
            leader_before: w.leader_before.clone(),
            leader_after: leader,
            kept_primary: w.kept_primary,
            check_failures: verdict.failures,
            took: Duration::ZERO,
        }
    }
}

/// The last change of the leader key's value to a member's name (not a refresh: Patroni's v2 DCS
/// rewrites the key with the same value on every loop to renew its TTL) seen in `[after, before)`:
/// its watch time and value.
fn last_leader_change(
    obs: &Observers,
    after: Duration,
    before: Duration,
) -> Option<(Duration, String)> {
    let mut previous: Option<Option<String>> = None;
    let mut last = None;
    for e in obs.keys().into_iter().filter(|e| e.key == "leader") {
        let changed = previous.as_ref() != Some(&e.value);
        if changed
            && e.at >= after
            && e.at < before
            && let Some(v) = &e.value
        {
            last = Some((e.at, v.clone()));
        }
        previous = Some(e.value);
    }
    last
}

/// CPU of each node's Patroni and PostgreSQL over four windows of `window`: agents running,
/// stopped, stopped, running (so a linear drift of the machine's load cancels out), with no
/// client and no observer asking Patroni. After each window, half of `crashes` PostgreSQL
/// crashes on the leader (so `crashes` per condition), each timed until PostgreSQL takes writes
/// again: Patroni's REST API shares its PostgreSQL connection with Patroni's HA loop, and the agent
/// asks it every [`vip_agent::config::DEFAULT_GATE_INTERVAL`] while it waits for the database.
fn hold_cost(c: &mut PatroniCluster, window: Duration, crashes: usize) -> HoldCost {
    let leader = c.leader().expect("a leader after bootstrap");
    let l = c.index_of(&leader);
    let wait_answering = |c: &PatroniCluster| {
        let mac = c.net.nodes[l].host.mac;
        c.wait_for(
            Duration::from_secs(60),
            "the leader's agent answers for the VIP",
            |c| c.net.probe(Duration::from_millis(200)).contains(&mac),
        );
        // Past the gate's first checks into the steady hold check.
        std::thread::sleep(Duration::from_secs(2));
    };
    wait_answering(c);
    let mut cost = HoldCost::default();
    for (k, with_agent) in [true, false, false, true].into_iter().enumerate() {
        if k == 1 {
            for i in 0..c.members.len() {
                c.stop_manager(i);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        if k == 3 {
            for i in 0..c.members.len() {
                c.start_manager(i);
            }
            wait_answering(c);
        }
        cost.samples.extend(cpu_window(c, l, with_agent, window));
        // Phases 0 and 1 take the larger half, 2 and 3 the rest.
        let n = if k < 2 {
            crashes.div_ceil(2)
        } else {
            crashes / 2
        };
        for _ in 0..n {
            cost.recoveries.push((with_agent, crash_recovery(c, l)));
            if with_agent {
                wait_answering(c);
            }
        }
    }
    cost
}

/// SIGKILL of node `l`'s postmaster once the cluster is healthy (after a random pause of up to
/// Patroni's `loop_wait`, so the crash falls anywhere in its HA loop): the time until a new
/// postmaster answers `pg_is_in_recovery()` false on its unix socket (asked every 20 ms).
fn crash_recovery(c: &PatroniCluster, l: usize) -> Option<Duration> {
    c.wait_healthy(HEAL);
    std::thread::sleep(Duration::from_millis(fastrand::u64(0..LOOP_WAIT * 1000)));
    let old = c.crash_postgres(l);
    let crashed = Instant::now();
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(c.socket_dir(l))
        .port(crate::patroni::PG_PORT)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_millis(200));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    while crashed.elapsed() < Duration::from_secs(60) {
        let restarted = c.postmaster_pid(l).is_some_and(|p| p != old);
        let read_write = restarted
            && rt.block_on(async {
                let Ok(Ok((client, connection))) =
                    tokio::time::timeout(Duration::from_millis(500), config.connect(tokio_postgres::NoTls))
                        .await
                else {
                    return false;
                };
                let conn = tokio::spawn(connection);
                let rw = client
                    .simple_query("SELECT pg_is_in_recovery()")
                    .await
                    .is_ok_and(|m| {
                        m.iter().any(|m| {
                            matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("f"))
                        })
                    });
                drop(client);
                let _ = conn.await;
                rw
            });
        if read_write {
            return Some(crashed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// One window of [`hold_cost`].
fn cpu_window(
    c: &mut PatroniCluster,
    l: usize,
    with_agent: bool,
    window: Duration,
) -> Vec<CostSample> {
    let n = c.members.len();
    let postgres: Vec<Vec<i32>> = (0..n)
        .map(|i| c.postmaster_pid(i).map(process_tree).unwrap_or_default())
        .collect();
    let patroni: Vec<Vec<i32>> = (0..n)
        .map(|i| {
            c.patroni_pid(i)
                .map(process_tree)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| !postgres[i].contains(p))
                .collect()
        })
        .collect();
    let agents: Vec<Option<i32>> = (0..n)
        .map(|i| with_agent.then(|| c.net.agent(i).pid()))
        .collect();
    let ticks = |pids: &[i32]| pids.iter().map(|&p| cpu_ticks(p)).sum::<u64>();
    let before: Vec<(u64, u64, u64)> = (0..n)
        .map(|i| {
            (
                ticks(&patroni[i]),
                ticks(&postgres[i]),
                agents[i].map_or(0, cpu_ticks),
            )
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(window);
    let elapsed = started.elapsed();
    let hz = clock_ticks_per_second();
    let ms = |after: u64, before: u64| after.saturating_sub(before) * 1000 / hz;
    (0..n)
        .map(|i| CostSample {
            node: c.members[i].name.clone(),
            leader: i == l,
            with_agent,
            window: elapsed,
            patroni_ms: ms(ticks(&patroni[i]), before[i].0),
            postgres_ms: ms(ticks(&postgres[i]), before[i].1),
            agent_ms: agents[i].map(|p| ms(cpu_ticks(p), before[i].2)),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Report

/// Seconds with two decimals.
fn secs(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

/// `p50 / max` in seconds, with how many trials had no value.
fn p50_max(values: &[Option<Duration>]) -> String {
    let got: Vec<Duration> = values.iter().flatten().copied().collect();
    let missing = values.len() - got.len();
    let mut s = percentiles(&got).map_or_else(
        || "-".to_owned(),
        |[p50, _, _, max]| format!("{} / {}", secs(p50), secs(max)),
    );
    if missing > 0 {
        let _ = write!(s, " ({missing} never)");
    }
    s
}

fn p50(values: &[Duration]) -> Option<Duration> {
    percentiles(values).map(|p| p[0])
}

impl PatroniReport {
    fn trials(&self, manager: Manager, scenario: Scenario) -> Vec<&PatroniTrial> {
        self.parts
            .iter()
            .filter(|p| p.manager == manager)
            .flat_map(|p| p.trials.iter())
            .filter(|t| t.scenario == scenario)
            .collect()
    }

    /// The section for BENCHMARKS.md (its heading is [`SECTION_HEADING`]); `alone` says that only
    /// this section was regenerated.
    #[must_use]
    pub fn markdown(&self, seed: u64, alone: bool) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "{SECTION_HEADING}\n");
        let systems: Vec<String> = self.parts.iter().map(|p| p.manager.label()).collect();
        let loads: Vec<String> = self
            .parts
            .iter()
            .map(|p| {
                format!(
                    "{}: {:.2} at its start, {:.2} at its end",
                    p.manager.label(),
                    p.load_start[0],
                    p.load_end[0]
                )
            })
            .collect();
        let _ = writeln!(
            md,
            "Generated by `cargo xtask bench{}` on {}: {}. Both systems ran in the same run, one \
             after the other in a random order ({}; `--seed {seed}` repeats the order), each in \
             front of its own new cluster; processes not pinned to CPUs. The machine is shared: \
             other work (compilers) ran beside it, so the timings are noisy. Load average (1 min): \
             {}. {} trials per scenario and system, in rounds (each scenario once per round); the \
             Patroni part took {:.0} s.{}\n",
            if alone { " --patroni" } else { "" },
            utc_now(),
            machine(),
            systems.join(", "),
            loads.join("; "),
            self.trials_per_scenario,
            self.took.as_secs_f64(),
            if alone {
                " Only this section was regenerated (`--patroni`): a whole run takes hours, so \
                 the sections above come from the full run dated at the top."
            } else {
                ""
            }
        );
        md.push_str(BED_TEXT);
        md.push('\n');
        for part in &self.parts {
            if let Some(why) = &part.aborted {
                let _ = writeln!(
                    md,
                    "**{} stopped early** after {} trials: {why}\n",
                    part.manager.label(),
                    part.trials.len()
                );
            }
        }
        let _ = writeln!(
            md,
            "| scenario | system | trials | first read-write connection (s from the trigger; \
             outages: from etcd's return), p50 / max | \
             connections that reached a server in recovery (total; trials with any) | no-write \
             window, p50 / max (s) | acknowledged writes lost (total; of them acknowledged after \
             the key moved) | writes acknowledged by a node the key no longer named |\n\
             |---|---|---|---|---|---|---|---|"
        );
        let managers: Vec<Manager> = self.parts.iter().map(|p| p.manager).collect();
        let mut ordered = managers.clone();
        ordered.sort_by_key(|m| !matches!(m, Manager::VipAgent));
        for scenario in SCENARIOS {
            for &m in &ordered {
                let t = self.trials(m, scenario);
                if t.is_empty() {
                    continue;
                }
                let first: Vec<Option<Duration>> = t.iter().map(|x| x.first_rw).collect();
                let gaps: Vec<Option<Duration>> = t.iter().map(|x| Some(x.no_write)).collect();
                let in_recovery: usize = t.iter().map(|x| x.in_recovery).sum();
                let with = t.iter().filter(|x| x.in_recovery > 0).count();
                let lost: usize = t.iter().map(|x| x.lost).sum();
                let lost_late: usize = t.iter().map(|x| x.lost_late).sum();
                let late: usize = t.iter().map(|x| x.late).sum();
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {in_recovery}; {with} | {} | {lost}; {lost_late} | {late} |",
                    scenario.label(),
                    m.label(),
                    t.len(),
                    p50_max(&first),
                    p50_max(&gaps),
                );
            }
        }
        md.push('\n');
        self.ratios(&mut md, &ordered);
        self.outage_check(&mut md, &ordered);
        self.checks(&mut md, &ordered);
        self.cost_section(&mut md);
        self.runtime(&mut md);
        md
    }

    /// vip-manager's p50 over vip-agent's, per scenario.
    fn ratios(&self, md: &mut String, ordered: &[Manager]) {
        let agent = Manager::VipAgent;
        let others: Vec<Manager> = ordered.iter().copied().filter(|m| *m != agent).collect();
        if others.is_empty() || !ordered.contains(&agent) {
            return;
        }
        let _ = writeln!(
            md,
            "Ratios (p50 of the other system / p50 of vip-agent, same run; `-` where a p50 is \
             missing or vip-agent's is 0):\n"
        );
        let mut header = "| scenario |".to_owned();
        let mut rule = "|---|".to_owned();
        for m in &others {
            let _ = write!(
                header,
                " first read-write connection, {0} | no-write window, {0} |",
                m.label()
            );
            rule.push_str("---|---|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        for scenario in SCENARIOS {
            let pick = |m: Manager, f: fn(&PatroniTrial) -> Option<Duration>| {
                p50(&self
                    .trials(m, scenario)
                    .into_iter()
                    .filter_map(f)
                    .collect::<Vec<_>>())
            };
            let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
                (Some(a), Some(b)) if !b.is_zero() => {
                    format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64())
                }
                _ => "-".to_owned(),
            };
            let mut line = format!("| {} |", scenario.label());
            for &m in &others {
                let _ = write!(
                    line,
                    " {} | {} |",
                    ratio(pick(m, |t| t.first_rw), pick(agent, |t| t.first_rw)),
                    ratio(
                        pick(m, |t| Some(t.no_write)),
                        pick(agent, |t| Some(t.no_write))
                    )
                );
            }
            let _ = writeln!(md, "{line}");
        }
        md.push('\n');
    }

    /// What Patroni did with the leader during the outages (is the test bed what it claims?).
    fn outage_check(&self, md: &mut String, ordered: &[Manager]) {
        let mut parts = Vec::new();
        for &m in ordered {
            for (scenario, want, what) in [
                (
                    Scenario::OutageFailsafeOn,
                    true,
                    "kept the leader a running primary",
                ),
                (Scenario::OutageFailsafeOff, false, "demoted the leader"),
            ] {
                let t = self.trials(m, scenario);
                if t.is_empty() {
                    continue;
                }
                let ok = t.iter().filter(|x| x.kept_primary == Some(want)).count();
                parts.push(format!(
                    "{}, {}: Patroni {what} in {ok} of {} trials",
                    m.label(),
                    scenario.label(),
                    t.len()
                ));
            }
        }
        if !parts.is_empty() {
            let _ = writeln!(
                md,
                "During the etcd outages (Patroni's REST API on the leader, polled 10 times a \
                 second from the client): {}.\n",
                parts.join("; ")
            );
        }
    }

    /// How many trials passed issue 13's checks, and what failed.
    fn checks(&self, md: &mut String, ordered: &[Manager]) {
        let mut parts = Vec::new();
        for &m in ordered {
            let t: Vec<&PatroniTrial> = self
                .parts
                .iter()
                .filter(|p| p.manager == m)
                .flat_map(|p| p.trials.iter())
                .collect();
            if t.is_empty() {
                continue;
            }
            let passed = t.iter().filter(|x| x.check_failures.is_empty()).count();
            let mut failed: Vec<String> = Vec::new();
            for scenario in SCENARIOS {
                let n = t
                    .iter()
                    .filter(|x| x.scenario == scenario && !x.check_failures.is_empty())
                    .count();
                if n > 0 {
                    let first = t
                        .iter()
                        .find(|x| x.scenario == scenario && !x.check_failures.is_empty())
                        .and_then(|x| x.check_failures.first())
                        .map_or("", String::as_str);
                    failed.push(format!("{}: {n}, e.g. \"{first}\"", scenario.label()));
                }
            }
            parts.push(format!(
                "{}: {passed} of {} trials passed{}",
                m.label(),
                t.len(),
                if failed.is_empty() {
                    String::new()
                } else {
                    format!(" (failed: {})", failed.join("; "))
                }
            ));
        }
        if !parts.is_empty() {
            let _ = writeln!(
                md,
                "Issue 13's checks, as `tests/tests/patroni_e2e.rs` makes them, applied to every \
                 trial (no connection in recovery; no write acknowledged by a node after the key \
                 named another; a committed write on the leader within 30 s of its key; with \
                 failsafe_mode on, every connection during the outage commits on the primary): \
                 {}.\n",
                parts.join("; ")
            );
        }
    }

    fn cost_section(&self, md: &mut String) {
        let Some(cost) = self.parts.iter().find_map(|p| p.cost.as_ref()) else {
            return;
        };
        let interval = vip_agent::gate::CHECK_INTERVAL.as_millis();
        let _ = writeln!(
            md,
            "### The hold check's cost to Patroni\n\nWhile its VIP answers, vip-agent asks Patroni's \
             REST API every {interval} ms whether PostgreSQL is still a running primary (every {} ms \
             while etcd is unreachable). CPU time (user + system, `/proc/<pid>/stat`, reaped \
             children included) of each node's Patroni process tree (without PostgreSQL, whose \
             postmaster is not Patroni's child) and of its PostgreSQL (the postmaster and all its \
             processes, among them the backend of Patroni's own connection, which runs the status \
             query of each request), on the vip-agent cluster with no client and no observer: \
             four windows of {} s, with the agents running (the leader's answering), stopped, \
             stopped, running, so that a linear drift of the machine's load cancels out. Per \
             condition, the two windows are added up.\n",
            vip_agent::gate::CHECK_INTERVAL_UNREACHABLE.as_millis(),
            self.cost_window.as_secs()
        );
        let _ = writeln!(
            md,
            "| node | agents | window (s) | Patroni CPU (ms; % of one core) | PostgreSQL CPU (ms; % \
             of one core) | the node's agent (ms; % of one core) |\n|---|---|---|---|---|---|"
        );
        let mut nodes: Vec<(String, bool)> = cost
            .samples
            .iter()
            .map(|s| (s.node.clone(), s.leader))
            .collect();
        nodes.dedup();
        nodes.sort_by_key(|(_, leader)| !leader);
        nodes.dedup();
        let pct = |ms: u64, window: Duration| {
            let w = window.as_secs_f64() * 1000.0;
            if w > 0.0 {
                format!("{ms}; {:.2}", ms as f64 / w * 100.0)
            } else {
                format!("{ms}; -")
            }
        };
        let mut deltas = Vec::new();
        for (node, leader) in &nodes {
            let mut per = Vec::new();
            for with in [true, false] {
                let s: Vec<&CostSample> = cost
                    .samples
                    .iter()
                    .filter(|s| &s.node == node && s.with_agent == with)
                    .collect();
                let window: Duration = s.iter().map(|x| x.window).sum();
                let patroni: u64 = s.iter().map(|x| x.patroni_ms).sum();
                let postgres: u64 = s.iter().map(|x| x.postgres_ms).sum();
                let agent: Option<u64> = with.then(|| s.iter().filter_map(|x| x.agent_ms).sum());
                let _ = writeln!(
                    md,
                    "| {node} ({}) | {} | {:.0} | {} | {} | {} |",
                    if *leader { "leader" } else { "replica" },
                    if with { "running" } else { "stopped" },
                    window.as_secs_f64(),
                    pct(patroni, window),
                    pct(postgres, window),
                    agent.map_or_else(|| "-".to_owned(), |a| pct(a, window))
                );
                per.push((patroni, postgres, window));
            }
            if let [(pa, ga, wa), (pb, gb, wb)] = per[..] {
                let rate = |ms: u64, w: Duration| ms as f64 / w.as_secs_f64().max(1e-9);
                deltas.push(format!(
                    "{node}: Patroni {:+.1} ms/s, PostgreSQL {:+.1} ms/s",
                    rate(pa, wa) - rate(pb, wb),
                    rate(ga, wa) - rate(gb, wb)
                ));
            }
        }
        let _ = writeln!(
            md,
            "\nWith the agents minus without, CPU ms per second of wall-clock time (1 ms/s = 0.1% \
             of one core): {}. The clock's resolution is {} ms per process (`_SC_CLK_TCK`), and \
             the other work on the machine changes what a process costs from one window to the \
             next, so a difference of a few ms/s is within the noise.\n",
            deltas.join("; "),
            1000 / clock_ticks_per_second()
        );
        if cost.recoveries.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "Patroni's REST API runs each status request on the same PostgreSQL connection as \
             Patroni's HA loop, and after a PostgreSQL crash the leader's agent asks it every {} ms \
             (`promotion-gate-interval`) until the database takes writes again. So, on the same \
             cluster and in the same four phases (after each CPU window), PostgreSQL crashes on the \
             leader (its postmaster SIGKILLed after a random pause of up to `loop_wait`, the \
             cluster healthy), timed until a new postmaster answers `pg_is_in_recovery()` false \
             on its unix socket (asked every 20 ms, not through the VIP):\n",
            vip_agent::config::DEFAULT_GATE_INTERVAL.as_millis()
        );
        let _ = writeln!(
            md,
            "| agents | crashes | crash -> PostgreSQL read-write again, p50 / max (s) |\n|---|---|---|"
        );
        for with in [true, false] {
            let r: Vec<Option<Duration>> = cost
                .recoveries
                .iter()
                .filter(|(w, _)| *w == with)
                .map(|(_, d)| *d)
                .collect();
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                if with { "running" } else { "stopped" },
                r.len(),
                p50_max(&r)
            );
        }
        md.push('\n');
    }

    fn runtime(&self, md: &mut String) {
        let _ = writeln!(
            md,
            "Wall-clock seconds per phase and system (setup: namespaces, etcd, bootstrap of both \
             members, the VIP manager; a scenario: all its trials, with the healing of the \
             cluster after each); total {:.0} s.\n",
            self.took.as_secs_f64()
        );
        let mut header = "| phase |".to_owned();
        let mut rule = "|---|".to_owned();
        for p in &self.parts {
            let _ = write!(header, " {} |", p.manager.label());
            rule.push_str("---|");
        }
        let _ = writeln!(md, "{header}\n{rule}");
        let mut phases: Vec<&str> = Vec::new();
        for p in &self.parts {
            for (name, _) in &p.took {
                if !phases.contains(&name.as_str()) {
                    phases.push(name);
                }
            }
        }
        for phase in phases {
            let mut line = format!("| {phase} |");
            for p in &self.parts {
                match p.took.iter().find(|(n, _)| n == phase) {
                    Some((_, d)) => {
                        let _ = write!(line, " {:.0} |", d.as_secs_f64());
                    }
                    None => line.push_str(" - |"),
                }
            }
            let _ = writeln!(md, "{line}");
        }
        md.push('\n');
    }

    /// The raw data (bench/patroni.json).
    #[must_use]
    pub fn json(&self, seed: u64) -> String {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let doc = serde_json::json!({
            "seed": seed,
            "trials_per_scenario": self.trials_per_scenario,
            "took_s": self.took.as_secs_f64(),
            "machine": machine(),
            "systems": self.parts.iter().map(|p| serde_json::json!({
                "system": p.manager.label(),
                "load_start": p.load_start,
                "load_end": p.load_end,
                "aborted": p.aborted,
                "took_s": p.took.iter().map(|(n, d)| (n.clone(), d.as_secs_f64())).collect::<std::collections::BTreeMap<_, _>>(),
                "trials": p.trials.iter().map(|t| serde_json::json!({
                    "scenario": t.scenario.key(),
                    "first_rw_ms": t.first_rw.map(ms),
                    "in_recovery": t.in_recovery,
                    "no_write_ms": ms(t.no_write),
                    "attempts": t.attempts,
                    "committed": t.committed,
                    "lost": t.lost,
                    "lost_after_key_moved": t.lost_late,
                    "acknowledged_after_key_moved": t.late,
                    "leader_before": t.leader_before,
                    "leader_after": t.leader_after,
                    "kept_primary": t.kept_primary,
                    "check_failures": t.check_failures,
                    "took_ms": ms(t.took),
                })).collect::<Vec<_>>(),
                "hold_cost": p.cost.as_ref().map(|c| c.samples.iter().map(|s| serde_json::json!({
                    "node": s.node,
                    "leader": s.leader,
                    "with_agent": s.with_agent,
                    "window_ms": ms(s.window),
                    "patroni_cpu_ms": s.patroni_ms,
                    "postgres_cpu_ms": s.postgres_ms,
                    "agent_cpu_ms": s.agent_ms,
                })).collect::<Vec<_>>()),
                "crash_recoveries": p.cost.as_ref().map(|c| c.recoveries.iter().map(|(with, d)| serde_json::json!({
                    "with_agent": with,
                    "read_write_ms": d.map(ms),
                })).collect::<Vec<_>>()),
            })).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}

/// The heading of this benchmark's section in BENCHMARKS.md (a level-2 heading; its subsections
/// are level 3, so the section ends at the next level-2 heading).
pub const SECTION_HEADING: &str = "## Real Patroni: vip-agent and vip-manager 1.0.2";

/// `text` (a whole BENCHMARKS.md) with the section under [`SECTION_HEADING`] replaced by
/// `section`, or `section` appended when there is none.
#[must_use]
pub fn splice_section(text: &str, section: &str) -> String {
    splice_section_at(text, SECTION_HEADING, section)
}

/// `text` (a whole BENCHMARKS.md) with the section under `heading` (a `## ` line, up to the next
/// one) replaced by `section`, or with `section` appended when there is none.
#[must_use]
pub fn splice_section_at(text: &str, heading: &str, section: &str) -> String {
    let Some(start) = text
        .match_indices(heading)
        .map(|(i, _)| i)
        .find(|&i| i == 0 || text[..i].ends_with('\n'))
    else {
        let mut out = text.trim_end().to_owned();
        out.push_str("\n\n");
        out.push_str(section);
        return out;
    };
    let rest = &text[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(text.len(), |i| start + heading.len() + i + 1);
    let mut out = text[..start].to_owned();
    out.push_str(section.trim_end());
    out.push('\n');
    if end < text.len() {
        out.push('\n');
        out.push_str(&text[end..]);
    }
    out
}

/// The section under [`SECTION_HEADING`] in `text`, if any (kept by a full run that skips it).
#[must_use]
pub fn existing_section(text: &str) -> Option<String> {
    section_at(text, SECTION_HEADING)
}

/// The section under `heading` in `text` (up to the next `## ` line), if any.
#[must_use]
pub fn section_at(text: &str, heading: &str) -> Option<String> {
    let start = text.find(heading)?;
    let rest = &text[start + heading.len()..];
    let end = rest
        .find("\n## ")
        .map_or(text.len(), |i| start + heading.len() + i + 1);
    Some(text[start..end].trim_end().to_owned() + "\n")
}

/// Kernel, CPU model and count.
#[must_use]
pub fn machine() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    format!("Linux {}, {cpu}, {cpus} CPUs", kernel.trim())
}

/// The current date and time, `YYYY-MM-DD HH:MM UTC`.
#[must_use]
pub fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// What the bed is and what is measured.
const BED_TEXT: &str = "Each system runs in front of its own two-node cluster of Debian's Patroni \
3.0.2 with PostgreSQL 15 on etcd 3.4 (one member, data on tmpfs; `cargo xtask setup` installs \
them), in network namespaces on one bridge: Patroni's REST API listens on the node's own address \
only, `ttl: 20`, `loop_wait: 2`, `retry_timeout: 5` (Patroni's defaults scaled down, `loop_wait + \
2 x retry_timeout <= ttl`), asynchronous streaming replication, `use_pg_rewind`. vip-agent (release \
build) runs on each node with vip-manager's keys only (`ip`, `netmask`, `interface`, `trigger-key`, \
`trigger-value`, `dcs-type`, `dcs-endpoints`), its cluster on Patroni's `etcd3:` DCS. vip-manager \
1.0.2 (Debian's `/usr/bin/vip-manager`, the same keys as flags, its default `interval` of 1000 ms) \
reads only etcd's v2 API, so its cluster runs Patroni's `etcd:` (v2) DCS against etcd started with \
`--enable-v2=true`. A client connects through the VIP 50 times a second (a new connection each, \
TCP connect bounded by 200 ms, the whole attempt by 2 s), reads `pg_is_in_recovery()` and the \
server's name, and inserts a row numbered by the attempt.

Scenarios: a switchover (`patronictl switchover --force` to the replica; the trigger is \
patronictl's start, so its own start-up, a Python program's, counts too); a PostgreSQL crash on \
the leader (its postmaster SIGKILLed; Patroni starts it again, read-only first, and promotes it \
with the key unchanged); Patroni and every PostgreSQL process SIGKILLed on the leader (the replica \
takes the key when its lease runs out, then the killed node's Patroni starts again and rejoins); \
the leader cut off from etcd by a blackhole route (removed 3 s after the replica took the key; the \
nodes still reach each other and the client); etcd unreachable from both nodes for 30 s (ttl + \
10 s: etcd's host drops their packets; the client still reaches it) with Patroni's \
`failsafe_mode` on, and off (set with `patronictl edit-config` before each). After each trial \
the cluster heals (the old leader rewound or re-cloned) before the next one starts.

Per trial, from the client's attempts between 1 s before the trigger and 1 s after the healed \
cluster's first read-write connection:
- **first read-write connection**: from the trigger (for the etcd outages: from the moment etcd \
is reachable again) to the acknowledgement of the first `INSERT` through the VIP committed on the \
leader, among the connections started after the leader key last changed (after the trigger when \
it did not change);
- **in recovery**: connections through the VIP that reached a server with `pg_is_in_recovery()` \
true, or whose `INSERT` was refused as read-only;
- **no-write window**: the longest stretch without an acknowledged `INSERT` through the VIP on any \
node (resolution: the client's 20 ms period);
- **writes lost**: acknowledged `INSERT`s missing from the leader's table once the cluster is \
healthy again (rewound away with the old primary's timeline, or never replicated), and of them \
those acknowledged by a node while the leader key (as the client's own etcd watch saw it) named \
another; the last column counts every write acknowledged that way, lost or not.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_is_replaced_in_place_or_appended() {
        let section = format!("{SECTION_HEADING}\n\nnew\n\n### sub\n\nx\n");
        let doc = "# B\n\n## One\n\na\n";
        let appended = splice_section(doc, &section);
        assert_eq!(appended, format!("# B\n\n## One\n\na\n\n{section}"));
        let old = format!(
            "# B\n\n## One\n\na\n\n{SECTION_HEADING}\n\nold\n\n### sub\n\ny\n\n## Two\n\nb\n"
        );
        let replaced = splice_section(&old, &section);
        assert_eq!(
            replaced,
            format!("# B\n\n## One\n\na\n\n{section}\n## Two\n\nb\n")
        );
        assert_eq!(
            existing_section(&replaced).as_deref(),
            Some(section.as_str())
        );
        let at_end = format!("# B\n\n{SECTION_HEADING}\n\nold\n");
        assert_eq!(
            splice_section(&at_end, &section),
            format!("# B\n\n{section}")
        );
    }
}
