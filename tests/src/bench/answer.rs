//! Who answers while the key moves (issue 14): a switchover of the leader key, plainly and with the
//! old holder's agent SIGSTOPped, SIGKILLed or cut off from etcd just before it, for vip-agent
//! (with its fence handshake, and with `fence-handshake: false`), vip-manager 1.0.2 and keepalived
//! 2.2.7 on the beds of [`super::start_with`]. `cargo xtask bench --answer` runs it alone and
//! replaces its section of BENCHMARKS.md.
//!
//! A trial: the old holder answers (after [`super::SETTLE`] of fresh confirmations when a fault
//! follows); the client probes the VIP every millisecond; the fault is applied to the old node's
//! process (none, SIGSTOP of its process tree, SIGKILL, a blackhole route to etcd); t0 = the
//! release of the key is sent (Patroni's switchover from a host that still reaches etcd), then the
//! new holder takes it. Probing goes on until the new holder has answered for [`super::TAIL`] and
//! at least the system's window has passed since t0. Then the fault is undone (SIGCONT, a restart,
//! the route removed) and the trial waits until only the new holder answers.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use vip_agent::clock::monotonic_ns;

use super::{
    ANSWER_LIMIT, Bed, JITTER_MS, Keys, LEAD_IN, ProbeTarget, SETTLE, System, TAIL, probing,
    replies_from, signed_diff, start_with, wait_for_holder,
};
use crate::{arp::Probe, cluster::process_tree};

/// What happens to the old holder's agent just before the switchover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Nothing: a plain switchover.
    None,
    /// SIGSTOP of its process tree (SIGCONT after the trial).
    Stopped,
    /// SIGKILL (restarted after the trial).
    Killed,
    /// A blackhole route to etcd on its node (removed after the trial).
    CutOff,
}

impl Fault {
    /// Every fault, in table order.
    pub const ALL: [Self; 4] = [Self::None, Self::Stopped, Self::Killed, Self::CutOff];

    /// The name used in tables and on the command line.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::None => "switchover",
            Self::Stopped => "old agent SIGSTOPped",
            Self::Killed => "old agent SIGKILLed",
            Self::CutOff => "old node cut off from etcd",
        }
    }
}

/// A system as this part runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contender {
    pub system: System,
    /// vip-agent's `fence-handshake` (the others ignore it).
    pub handshake: bool,
}

impl Contender {
    /// Every contender, in table order.
    pub const ALL: [Self; 4] = [
        Self {
            system: System::VipAgent,
            handshake: true,
        },
        Self {
            system: System::VipAgent,
            handshake: false,
        },
        Self {
            system: System::VipManager { interval_ms: 1000 },
            handshake: true,
        },
        Self {
            system: System::Keepalived { interval_s: 1 },
            handshake: true,
        },
    ];

    /// The name used in tables.
    #[must_use]
    pub fn label(&self) -> String {
        if self.system == System::VipAgent && !self.handshake {
            "vip-agent (`fence-handshake: false`)".to_owned()
        } else {
            self.system.label()
        }
    }

    /// The agents' extra configuration: the record TTL of the other scenarios (5 s, their longest
    /// lease), and the handshake switch.
    fn extra_config(&self) -> String {
        format!(
            "fence-record-ttl: 5s\nfence-handshake: {}\n",
            self.handshake
        )
    }
}

/// One trial; times in ns from t0 (the release being sent).
#[derive(Clone, Debug)]
pub struct Outcome {
    pub fault: Fault,
    pub from: usize,
    pub to: usize,
    pub acquire_acked_ns: u64,
    /// The new holder's first reply.
    pub first_new_ns: Option<u64>,
    /// The old holder's last reply (negative: before t0).
    pub last_old_ns: Option<i64>,
    /// Nobody answering before the new holder's first reply: from the old holder's last reply
    /// before it (or t0, if that came earlier) to it.
    pub blackout_ns: Option<u64>,
    /// Probes answered by both MACs.
    pub overlap: usize,
    /// The old holder still answered in the last 100 ms of the window.
    pub old_at_end: bool,
    /// vip-agent: the new node's data plane answering (its log).
    pub new_dataplane_ns: Option<u64>,
    /// Only the new holder answered within 20 s of the fault being undone.
    pub settled: bool,
    pub probes: usize,
}

/// Trials of each fault on one contender.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Per fault, in [`Fault::ALL`] order.
    pub trials: [usize; 4],
}

/// Everything measured on one contender.
#[derive(Debug)]
pub struct Run {
    pub contender: Contender,
    pub outcomes: Vec<Outcome>,
    /// Wall-clock time of the bed and its trials.
    pub took: Duration,
    /// 1-minute load average at the start and at the end (`/proc/loadavg`).
    pub load: [f64; 2],
}

/// Build a bed for `contender` on `10.77.<subnet>.0/24` and run `plan` on it: each fault's trials
/// in turn, the direction alternating.
///
/// # Panics
/// When the bed cannot be built or the key cannot be moved.
#[must_use]
pub fn run(contender: Contender, subnet: u8, plan: Plan, agent_bin: &Path) -> Run {
    let load_start = crate::bench_patroni::loadavg()[0];
    let started = Instant::now();
    let mut bed = start_with(
        contender.system,
        subnet,
        agent_bin,
        &contender.extra_config(),
    );
    let keys = Keys::new(&bed.cluster, contender.system);
    let mut outcomes = Vec::new();
    for (fault, &n) in Fault::ALL.iter().zip(&plan.trials) {
        eprintln!(
            "vip-bench --answer: {}: {n} x {}",
            contender.label(),
            fault.label()
        );
        // One discarded warm-up per fault.
        for k in 0..=n {
            let from = super::current_holder(&bed.cluster);
            let outcome = one(&mut bed, &keys, *fault, from);
            if k > 0 {
                outcomes.push(outcome);
            }
        }
    }
    Run {
        contender,
        outcomes,
        took: started.elapsed(),
        load: [load_start, crate::bench_patroni::loadavg()[0]],
    }
}

/// Send `signal` to every process of node `i`'s system (keepalived's VRRP child too).
fn signal_tree(bed: &mut Bed, i: usize, signal: Signal) {
    let Some(pid) = bed.cluster.agent(i).running_pid() else {
        return;
    };
    for p in process_tree(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), signal);
    }
}

fn one(bed: &mut Bed, keys: &Keys, fault: Fault, from: usize) -> Outcome {
    let to = 1 - from;
    let system = bed.system;
    wait_for_holder(&bed.cluster, from);
    if fault != Fault::None {
        // Fresh confirmations on both nodes before the fault.
        std::thread::sleep(SETTLE);
    }
    let target = ProbeTarget::of(&bed.cluster);
    let (old_mac, new_mac) = (target.macs[from], target.macs[to]);
    let names = [
        bed.cluster.nodes[from].name.clone(),
        bed.cluster.nodes[to].name.clone(),
    ];
    let window = system.window();
    let log_from = [0, 1].map(|i| bed.cluster.log(i).len());
    let ((t0, acquired), probes) = probing(&target, |live| {
        std::thread::sleep(LEAD_IN + Duration::from_millis(fastrand::u64(0..=JITTER_MS)));
        match fault {
            Fault::None => {}
            Fault::Stopped => signal_tree(bed, from, Signal::SIGSTOP),
            Fault::Killed => bed.cluster.kill_agent(from),
            Fault::CutOff => bed.cluster.partition(from),
        }
        let (t0, _, acquired) = keys.switch(&bed.cluster, &names[0], &names[1], to);
        live.wait_reply(to, t0, ANSWER_LIMIT);
        let window_end = Instant::now() + TAIL;
        let at_least = Duration::from_nanos(t0) + window;
        let now = Duration::from_nanos(monotonic_ns());
        std::thread::sleep(
            at_least
                .saturating_sub(now)
                .max(window_end.saturating_duration_since(Instant::now())),
        );
        (t0, acquired)
    });
    match fault {
        Fault::None => {}
        Fault::Stopped => signal_tree(bed, from, Signal::SIGCONT),
        Fault::Killed => system.start_on(&mut bed.cluster, from),
        Fault::CutOff => bed.cluster.heal(from),
    }
    let settled = settle(bed, to);
    let outcome = measure(
        &probes,
        Measured {
            fault,
            from,
            to,
            t0,
            acquired,
            old_mac,
            new_mac,
            settled,
            new_dataplane: (system == System::VipAgent)
                .then(|| bed.cluster.log_event_after(to, "data plane answering", t0))
                .flatten(),
        },
    );
    if system == System::VipAgent
        && fault == Fault::None
        && outcome.first_new_ns.is_none_or(|f| f > SLOW_TRIAL_NS)
    {
        // A slow plain switchover is a tail worth explaining: what both nodes said during it.
        eprintln!(
            "vip-bench --answer: slow switchover ({:?} ms to the first reply); the nodes' logs \
             during the trial:",
            outcome.first_new_ns.map(|f| f / 1_000_000)
        );
        for (i, from) in log_from.iter().enumerate() {
            let log = bed.cluster.log(i);
            for line in log.get(*from..).unwrap_or_default().lines() {
                eprintln!("  [{}] {line}", bed.cluster.nodes[i].name);
            }
        }
    }
    outcome
}

/// A plain switchover whose first reply comes later than this prints the agents' logs.
const SLOW_TRIAL_NS: u64 = 300_000_000;

/// Wait (20 s) until only node `to` answers; otherwise take the address off the other node by
/// hand (a vip-manager or keepalived that kept it) so the next trial starts clean.
fn settle(bed: &Bed, to: usize) -> bool {
    let mac = bed.cluster.nodes[to].host.mac;
    let until = Instant::now() + Duration::from_secs(20);
    while Instant::now() < until {
        if bed.cluster.probe(Duration::from_millis(20)) == vec![mac] {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = bed.cluster.remove_vip_address(1 - to);
    false
}

/// What one trial recorded besides its probes.
struct Measured {
    fault: Fault,
    from: usize,
    to: usize,
    t0: u64,
    acquired: u64,
    old_mac: [u8; 6],
    new_mac: [u8; 6],
    settled: bool,
    new_dataplane: Option<u64>,
}

fn measure(probes: &[Probe], m: Measured) -> Outcome {
    let old = replies_from(probes, m.old_mac, 0);
    let first_new = replies_from(probes, m.new_mac, m.t0).first().copied();
    let end = probes.last().map_or(m.t0, |p| p.sent_ns);
    let blackout = first_new.map(|f| {
        let before = old.iter().copied().filter(|t| *t < f).max().unwrap_or(0);
        f.saturating_sub(before.max(m.t0))
    });
    Outcome {
        fault: m.fault,
        from: m.from,
        to: m.to,
        acquire_acked_ns: m.acquired.saturating_sub(m.t0),
        first_new_ns: first_new.map(|f| f - m.t0),
        last_old_ns: old.last().map(|t| signed_diff(*t, m.t0)),
        blackout_ns: blackout,
        overlap: probes
            .iter()
            .filter(|p| {
                p.answers.iter().any(|(_, mac)| *mac == m.old_mac)
                    && p.answers.iter().any(|(_, mac)| *mac == m.new_mac)
            })
            .count(),
        old_at_end: old.last().is_some_and(|t| *t + 100_000_000 >= end),
        new_dataplane_ns: m.new_dataplane.map(|t| t.saturating_sub(m.t0)),
        settled: m.settled,
        probes: probes.len(),
    }
}

/// One number of a trial, when it was measured.
type Metric = fn(&Outcome) -> Option<u64>;

/// The heading of this part's section in BENCHMARKS.md.
pub const SECTION_HEADING: &str =
    "## At most one answer: switchovers with the old agent out of touch";

fn ms(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e6)
}

/// `p50 / p90 / max` in ms, `-` when empty.
fn spread(values: &[u64]) -> String {
    super::percentiles(values).map_or_else(
        || "-".to_owned(),
        |[p50, p90, _, max]| format!("{} / {} / {}", ms(p50), ms(p90), ms(max)),
    )
}

/// `p50 / p90 / p99 / max` in ms.
fn spread4(values: &[u64]) -> String {
    super::percentiles(values).map_or_else(
        || "-".to_owned(),
        |[p50, p90, p99, max]| format!("{} / {} / {} / {}", ms(p50), ms(p90), ms(p99), ms(max)),
    )
}

fn p50(values: &[u64]) -> Option<u64> {
    super::percentiles(values).map(|[p, ..]| p)
}

/// The outcomes of `fault` in `run`.
fn of(run: &Run, fault: Fault) -> Vec<&Outcome> {
    run.outcomes.iter().filter(|o| o.fault == fault).collect()
}

/// The section for BENCHMARKS.md. `order` is the order the contenders ran in; `took` the part's
/// wall-clock time.
#[must_use]
pub fn markdown(runs: &[Run], seed: u64, took: Duration) -> String {
    use std::fmt::Write as _;
    let mut md = String::new();
    let _ = writeln!(md, "{SECTION_HEADING}\n");
    let trials = |c: Contender, f: Fault| {
        runs.iter()
            .find(|r| r.contender == c)
            .map_or(0, |r| of(r, f).len())
    };
    let loads = runs
        .iter()
        .map(|r| {
            format!(
                "{}: {:.2} at its start, {:.2} at its end",
                r.contender.label(),
                r.load[0],
                r.load[1]
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench --answer` on {}: {}; veth + bridge in network namespaces, \
         XDP in generic mode (veth), etcd 3.4 single member with its data on tmpfs, release build. \
         The systems ran in the same run, one after the other in a random order ({}; `--seed {seed}` \
         repeats it), each on its own two-node bed; processes not pinned to CPUs; the part took {} s. \
         The machine is shared (2 CPUs, other engineers' builds and tests ran beside it), so the \
         timings are noisy. Load average (1 min): {loads}. Only this section was regenerated \
         (`--answer`); the sections above come from the runs dated in them.\n",
        crate::bench_patroni::utc_now(),
        crate::bench_patroni::machine(),
        runs.iter()
            .map(|r| r.contender.label())
            .collect::<Vec<_>>()
            .join(", "),
        took.as_secs()
    );
    let _ = writeln!(
        md,
        "A trial is a switchover of the leader key as in the switchover section (t0 = the release \
         is sent, then the new holder creates the key, from a host that still reaches etcd, as \
         Patroni's switchover would), either plain or right after a fault of the old holder's agent \
         (vip-manager, keepalived): its process tree SIGSTOPped, SIGKILLed, or its node cut off from \
         etcd by a blackhole route (the client still reaches it), 50 to 150 ms before t0 and after \
         1 s of fresh confirmations. The client sends an ARP request for the VIP every millisecond \
         until the new holder has answered for 300 ms and at least the system's window has passed \
         (vip-agent 300 ms, vip-manager 2.8 s, keepalived 5.4 s); then the fault is undone (SIGCONT, a \
         restart, the route removed) and the next trial waits until only the new holder answers. \
         **Blackout**: from the old holder's last reply before the new holder's first (or t0, if \
         later) to that first reply. **Overlap**: probes answered by both MACs. vip-agent runs with \
         `fence-record-ttl: 5s` (the other scenarios' longest lease; the default is Patroni's 30 s \
         ttl) and its keys' leases are the switchover section's 3600 s ones, so without the \
         handshake an agent that cannot see the change answers until that lease's deadline (with \
         Patroni's 30 s ttl: up to 29.5 s), and with it until its own fence record's lease runs out \
         (at most 5 s, less the 500 ms margin), after which the new holder, which waited for that \
         record, answers. vip-manager 1.0.2 and keepalived keep the address configured while \
         stopped or killed, so the kernel of the old node answers ARP for it.\n"
    );
    md.push_str(
        "| system | scenario | trials | blackout, p50 / p90 / max (ms) | new holder's first reply, p50 / p90 / max (ms from t0) | overlap: probes (trials with any) | old holder answering at the window's end | not settled 20 s after the fault was undone |\n|---|---|---|---|---|---|---|---|\n",
    );
    for fault in Fault::ALL {
        for run in runs {
            let o = of(run, fault);
            if o.is_empty() {
                continue;
            }
            let blackout: Vec<u64> = o.iter().filter_map(|o| o.blackout_ns).collect();
            let first: Vec<u64> = o.iter().filter_map(|o| o.first_new_ns).collect();
            let never = o.len() - first.len();
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {}{} | {} ({}) | {} | {} |",
                run.contender.label(),
                fault.label(),
                o.len(),
                spread(&blackout),
                spread(&first),
                if never > 0 {
                    format!(" ({never} never)")
                } else {
                    String::new()
                },
                o.iter().map(|o| o.overlap).sum::<usize>(),
                o.iter().filter(|o| o.overlap > 0).count(),
                o.iter().filter(|o| o.old_at_end).count(),
                o.iter().filter(|o| !o.settled).count(),
            );
        }
    }
    let agent = Contender::ALL[0];
    if let Some(run) = runs.iter().find(|r| r.contender == agent) {
        let o = of(run, Fault::None);
        let _ = writeln!(
            md,
            "\nOverlap in plain switchovers (vip-agent, handshake on): {} probes answered by both \
             MACs in {} switchovers ({} probes sent).",
            o.iter().map(|o| o.overlap).sum::<usize>(),
            o.len(),
            o.iter().map(|o| o.probes).sum::<usize>()
        );
    }
    // Ratios of blackout p50 to vip-agent's, per scenario.
    md.push_str(
        "\nRatios (blackout p50 of the system / blackout p50 of vip-agent with the handshake, same run; \
         a blackout of about 0 with overlap means the old holder never went silent):\n\n\
         | scenario | vip-agent (`fence-handshake: false`) | vip-manager 1.0.2 (1000 ms) | keepalived 2.2.7 (check every 1 s) |\n|---|---|---|---|\n",
    );
    for fault in Fault::ALL {
        let p = |c: Contender| {
            runs.iter().find(|r| r.contender == c).and_then(|r| {
                p50(&of(r, fault)
                    .iter()
                    .filter_map(|o| o.blackout_ns)
                    .collect::<Vec<_>>())
            })
        };
        let Some(base) = p(agent).filter(|b| *b > 0) else {
            continue;
        };
        let cell = |c: Contender| {
            p(c).map_or_else(
                || "-".to_owned(),
                |v| format!("{:.2}x", v as f64 / base as f64),
            )
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            fault.label(),
            cell(Contender::ALL[1]),
            cell(Contender::ALL[2]),
            cell(Contender::ALL[3])
        );
    }
    // The handshake's cost in a plain switchover.
    let off = Contender::ALL[1];
    let series = |c: Contender, f: Metric| -> Vec<u64> {
        runs.iter()
            .find(|r| r.contender == c)
            .map(|r| of(r, Fault::None).into_iter().filter_map(f).collect())
            .unwrap_or_default()
    };
    let _ = writeln!(
        md,
        "\n### The handshake's cost in a plain switchover\n\n\
         vip-agent with its default `fence-handshake: true` ({} switchovers) against the same build \
         with `fence-handshake: false` ({} switchovers), same run. With the handshake the new holder \
         answers once the old holder's record says fenced for the change's revision (the old agent \
         writes it after its data plane fenced; the new one reads it, or its watch delivers it).\n\n\
         | ms from t0, p50 / p90 / p99 / max | handshake on | handshake off | p50 difference |\n|---|---|---|---|",
        trials(agent, Fault::None),
        trials(off, Fault::None)
    );
    let metrics: [(&str, Metric); 3] = [
        ("acquire acknowledged by etcd", |o| Some(o.acquire_acked_ns)),
        ("new node's data plane answering (its log)", |o| {
            o.new_dataplane_ns
        }),
        ("first ARP reply from the new holder", |o| o.first_new_ns),
    ];
    for (label, f) in metrics {
        let (on, offv) = (series(agent, f), series(off, f));
        let diff = match (p50(&on), p50(&offv)) {
            (Some(a), Some(b)) => format!("{:+.1} ms", (a as f64 - b as f64) / 1e6),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            md,
            "| {label} | {} | {} | {diff} |",
            spread4(&on),
            spread4(&offv)
        );
    }
    md
}

/// The raw numbers, for bench/answer.json.
#[must_use]
pub fn json(runs: &[Run], seed: u64) -> String {
    let ms = |ns: u64| ns as f64 / 1e6;
    let doc = serde_json::json!({
        "seed": seed,
        "machine": crate::bench_patroni::machine(),
        "systems": runs.iter().map(|r| serde_json::json!({
            "system": r.contender.label(),
            "load_start": r.load[0],
            "load_end": r.load[1],
            "took_s": r.took.as_secs_f64(),
            "trials": r.outcomes.iter().map(|o| serde_json::json!({
                "scenario": o.fault.label(),
                "from": o.from,
                "to": o.to,
                "acquire_acked_ms": ms(o.acquire_acked_ns),
                "first_new_ms": o.first_new_ns.map(ms),
                "last_old_ms": o.last_old_ns.map(|t| t as f64 / 1e6),
                "blackout_ms": o.blackout_ns.map(ms),
                "overlap": o.overlap,
                "old_at_end": o.old_at_end,
                "new_dataplane_ms": o.new_dataplane_ns.map(ms),
                "settled": o.settled,
                "probes": o.probes,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(sent_ns: u64, answers: &[(u64, [u8; 6])]) -> Probe {
        Probe {
            sent_ns,
            answers: answers.to_vec(),
        }
    }

    #[test]
    fn blackout_runs_from_the_old_holders_last_reply_before_the_new_ones_first() {
        let (a, b) = ([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let probes = [
            probe(90, &[(91, a)]),
            probe(100, &[(101, a)]),
            probe(200, &[]),
            probe(300, &[(301, b)]),
            probe(400, &[(401, a), (402, b)]),
        ];
        let o = measure(
            &probes,
            Measured {
                fault: Fault::Stopped,
                from: 0,
                to: 1,
                t0: 95,
                acquired: 150,
                old_mac: a,
                new_mac: b,
                settled: true,
                new_dataplane: None,
            },
        );
        assert_eq!(o.first_new_ns, Some(301 - 95));
        assert_eq!(o.blackout_ns, Some(301 - 101));
        assert_eq!(o.last_old_ns, Some(401 - 95));
        assert_eq!(o.overlap, 1);
        assert!(o.old_at_end);
        // An old holder silent before t0: the blackout counts from t0.
        let o = measure(
            &probes[2..4],
            Measured {
                t0: 150,
                ..Measured {
                    fault: Fault::None,
                    from: 0,
                    to: 1,
                    t0: 0,
                    acquired: 0,
                    old_mac: a,
                    new_mac: b,
                    settled: true,
                    new_dataplane: None,
                }
            },
        );
        assert_eq!(o.blackout_ns, Some(301 - 150));
        assert_eq!(o.overlap, 0);
    }
}
