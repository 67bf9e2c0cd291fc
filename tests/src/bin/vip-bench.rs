//! `cargo xtask bench`: failover of vip-agent against vip-manager in the same run, plus the data
//! plane's own costs. Writes BENCHMARKS.md and bench/results.json.
//!
//! Usage: vip-bench --agent PATH [--trials N] [--expiry-trials N] [--partition-trials N]
//! [--kill-trials N] [--etcd-trials N] [--rw-trials N] [--idle-secs S]
//! [--systems vip-agent,vip-manager,vip-manager-100ms,keepalived] [--seed N] [--quick]
//! [--patroni] [--patroni-trials N] [--patroni-cost-secs S] [--patroni-scenarios LIST]
//! [--answer] [--answer-switchovers N] [--answer-cost-trials N] [--answer-other-switchovers N]
//! [--answer-fault-trials N] [--dataplane] [--out DIR]
//!
//! `--dataplane` runs only the data plane's cost to the node's own traffic
//! (`vip_tests::bench_dataplane`, a few minutes) and replaces its section in BENCHMARKS.md; a full
//! run keeps that section.
//!
//! Every scenario runs 200 trials per system by default (hours); `--quick` keeps the 200
//! switchovers and runs a handful of each slow scenario.
//!
//! The real-Patroni part (`vip_tests::bench_patroni`: vip-agent and vip-manager 1.0.2, each in
//! front of its own Patroni 3.0.2 + PostgreSQL 15 cluster) runs at the end of a whole run with
//! `--patroni-trials` trials per scenario and system (default 5; 0 skips it and keeps the section
//! already in BENCHMARKS.md). `--patroni` runs that part alone (about half an hour on 2 cores)
//! and replaces only its section in the existing BENCHMARKS.md (appends it when there is none),
//! writing its raw data to bench/patroni.json. `--patroni-cost-secs` is the length of each of the
//! four windows of the hold check's cost (default 30; 0 skips it). `--patroni-scenarios` picks
//! scenarios (`switchover`, `postgres_crash`, `kill`, `cut_off`, `outage_failsafe_on`,
//! `outage_failsafe_off`; default all) and `--systems` the systems (`vip-agent`, `vip-manager`).
//!
//! `--answer` runs only the at-most-one-answer part (`vip_tests::bench::answer`, issue 14): 1,000
//! switchovers of vip-agent counted for probes answered by both nodes, 200 with
//! `fence-handshake: false` for the handshake's cost, and switchovers plain and with the old agent
//! SIGSTOPped, SIGKILLed or cut off from etcd for both, vip-manager 1.0.2 and keepalived (20 plain,
//! 8 per fault; the `--answer-*` flags set them). It replaces only its section of BENCHMARKS.md and
//! writes bench/answer.json; a whole run keeps that section.

use std::{fmt::Write as _, path::PathBuf, time::Duration};

use aya::{
    Ebpf,
    maps::{HashMap, MapData},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use vip_agent::{clock::monotonic_ns, dataplane::ebpf_object};
use vip_common::{
    VipKey, VipState,
    frame::{ARP_OP_REQUEST, XDP_DROP, XDP_PASS, XDP_TX, build_arp, build_ipv4},
    maps::{PROGRAM_NAME, STATE_MAP},
};
use vip_tests::{
    bench::{
        ArpRtt, BLACKOUT_MIN_NS, EXPIRY_TTL_S, EtcdOutage, Expiry, HELD_TTL_S, JITTER_MS, Kill,
        OUTAGES, OutageShape, Partition, Plan, RENEW_INTERVAL, SYSTEMD_RESTART, System, SystemRun,
        Trial, Usage, answer, arp_rtts, percentiles, run_system,
    },
    bench_patroni,
    patroni::Manager,
    require_privileges,
};

struct Args {
    agent: PathBuf,
    trials: usize,
    expiry_trials: usize,
    partition_trials: usize,
    kill_trials: usize,
    etcd_trials: usize,
    /// Promotions with a real PostgreSQL standby, per gate setting (0: skip).
    rw_trials: usize,
    /// Passes of the real-repmgr scenarios (0: skip).
    repmgr_passes: usize,
    idle_secs: u64,
    /// The systems to run (in a random order drawn from `seed`).
    systems: Vec<System>,
    /// Seeds the order of the systems and the pauses before switchovers.
    seed: u64,
    out: PathBuf,
    /// Only the real-Patroni part, spliced into the existing BENCHMARKS.md.
    patroni_only: bool,
    /// `--dataplane`: only the data plane's cost to the node's own traffic (its section).
    dataplane_only: bool,
    /// Trials per scenario and system of the real-Patroni part (0: skip it).
    patroni_trials: usize,
    /// Each window of the hold check's cost (0: skip it).
    patroni_cost: Duration,
    /// The real-Patroni scenarios to run (default: all).
    patroni_scenarios: Vec<bench_patroni::Scenario>,
    /// Only the at-most-one-answer part, spliced into the existing BENCHMARKS.md.
    answer_only: bool,
    /// That part's trials: plain switchovers of vip-agent with the handshake, without it, of
    /// the other systems, and each fault per system.
    answer_trials: [usize; 4],
}

/// Default `--answer-switchovers`, `--answer-cost-trials`, `--answer-other-switchovers`,
/// `--answer-fault-trials`: 1,000 switchovers for the overlap count, 200 without the handshake for
/// its cost, and as many of the slow ones as fit in about half an hour on 2 CPUs.
const ANSWER_TRIALS: [usize; 4] = [1000, 200, 20, 8];

/// `10.77.<subnet>.0/24` to `+3`: the at-most-one-answer beds (issue 14's range, 170 to 179).
const ANSWER_SUBNET: u8 = 170;

/// Trials per scenario and system (per gate setting for the promotion, per shape for the etcd
/// outage) in a full run: what the method asks for. A full run of every system takes hours: each
/// lease-expiry, partition, agent-kill or etcd-outage trial waits seconds for a lease, a deadline
/// or etcd.
const FULL_TRIALS: usize = 200;

/// `--quick`: lease expiries, partitions, agent kills, etcd outages (per shape), promotions (per
/// gate setting).
const QUICK_TRIALS: [usize; 5] = [20, 10, 5, 3, 20];

/// Passes of the real-repmgr scenarios (about 90 s each): in a full run, and with `--quick`.
const REPMGR_PASSES: [usize; 2] = [20, 3];

/// Every system, by its `--systems` name.
const SYSTEMS: [(&str, System); 4] = [
    ("vip-agent", System::VipAgent),
    ("vip-manager", System::VipManager { interval_ms: 1000 }),
    ("vip-manager-100ms", System::VipManager { interval_ms: 100 }),
    ("keepalived", System::Keepalived { interval_s: 1 }),
];

fn parse_args() -> Args {
    let mut args = Args {
        agent: PathBuf::from("target/release/vip-agent"),
        trials: FULL_TRIALS,
        expiry_trials: FULL_TRIALS,
        partition_trials: FULL_TRIALS,
        kill_trials: FULL_TRIALS,
        etcd_trials: FULL_TRIALS,
        rw_trials: FULL_TRIALS,
        repmgr_passes: REPMGR_PASSES[0],
        idle_secs: 60,
        systems: SYSTEMS.iter().map(|(_, s)| *s).collect(),
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
        out: PathBuf::from("."),
        patroni_only: false,
        dataplane_only: false,
        patroni_trials: bench_patroni::DEFAULT_TRIALS,
        patroni_cost: bench_patroni::DEFAULT_COST_WINDOW,
        patroni_scenarios: bench_patroni::SCENARIOS.to_vec(),
        answer_only: false,
        answer_trials: ANSWER_TRIALS,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--patroni" {
            args.patroni_only = true;
            continue;
        }
        if a == "--dataplane" {
            args.dataplane_only = true;
            continue;
        }
        if a == "--answer" {
            args.answer_only = true;
            continue;
        }
        if a == "--quick" {
            // Switchovers stay at 200 (they are quick); the scenarios that wait for a lease, a
            // deadline or etcd get a handful each. Flags after it override these.
            let [expiry, partition, kill, etcd, rw] = QUICK_TRIALS;
            args.expiry_trials = expiry;
            args.partition_trials = partition;
            args.kill_trials = kill;
            args.etcd_trials = etcd;
            args.rw_trials = rw;
            args.repmgr_passes = REPMGR_PASSES[1];
            continue;
        }
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{a} needs a value")));
        match a.as_str() {
            "--agent" => args.agent = PathBuf::from(value),
            "--trials" => {
                args.trials = value
                    .parse()
                    .unwrap_or_else(|_| usage("--trials takes a number"))
            }
            "--expiry-trials" => {
                args.expiry_trials = value
                    .parse()
                    .unwrap_or_else(|_| usage("--expiry-trials takes a number"))
            }
            "--partition-trials" => {
                args.partition_trials = value
                    .parse()
                    .unwrap_or_else(|_| usage("--partition-trials takes a number"))
            }
            "--kill-trials" => {
                args.kill_trials = value
                    .parse()
                    .unwrap_or_else(|_| usage("--kill-trials takes a number"))
            }
            "--rw-trials" => {
                args.rw_trials = value
                    .parse()
                    .unwrap_or_else(|_| usage("--rw-trials takes a number"));
            }
            "--repmgr-passes" => {
                args.repmgr_passes = value
                    .parse()
                    .unwrap_or_else(|_| usage("--repmgr-passes takes a number"));
            }
            "--etcd-trials" => {
                args.etcd_trials = value
                    .parse()
                    .unwrap_or_else(|_| usage("--etcd-trials takes a number"))
            }
            "--idle-secs" => {
                args.idle_secs = value
                    .parse()
                    .unwrap_or_else(|_| usage("--idle-secs takes a number of seconds"))
            }
            "--systems" => {
                args.systems = value
                    .split(',')
                    .map(|name| {
                        SYSTEMS
                            .iter()
                            .find(|(n, _)| *n == name.trim())
                            .map(|(_, s)| *s)
                            .unwrap_or_else(|| usage(&format!("--systems: unknown system {name}")))
                    })
                    .collect();
                if let Some(twice) = args
                    .systems
                    .iter()
                    .enumerate()
                    .find_map(|(i, s)| args.systems[..i].contains(s).then_some(s))
                {
                    usage(&format!("--systems names {} twice", twice.label()));
                }
            }
            "--seed" => {
                args.seed = value
                    .parse()
                    .unwrap_or_else(|_| usage("--seed takes a number"))
            }
            "--out" => args.out = PathBuf::from(value),
            "--answer-switchovers"
            | "--answer-cost-trials"
            | "--answer-other-switchovers"
            | "--answer-fault-trials" => {
                let k = [
                    "--answer-switchovers",
                    "--answer-cost-trials",
                    "--answer-other-switchovers",
                    "--answer-fault-trials",
                ]
                .iter()
                .position(|f| *f == a)
                .unwrap_or(0);
                args.answer_trials[k] = value
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("{a} takes a number")));
            }
            "--patroni-trials" => {
                args.patroni_trials = value
                    .parse()
                    .unwrap_or_else(|_| usage("--patroni-trials takes a number"));
            }
            "--patroni-scenarios" => {
                args.patroni_scenarios = value
                    .split(',')
                    .map(|k| {
                        bench_patroni::Scenario::from_key(k.trim()).unwrap_or_else(|| {
                            usage(&format!("--patroni-scenarios: unknown scenario {k}"))
                        })
                    })
                    .collect();
            }
            "--patroni-cost-secs" => {
                args.patroni_cost =
                    Duration::from_secs(value.parse().unwrap_or_else(|_| {
                        usage("--patroni-cost-secs takes a number of seconds")
                    }));
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    args
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "vip-bench: {problem}\nusage: vip-bench --agent PATH [--trials N] [--expiry-trials N] [--partition-trials N] \
         [--kill-trials N] [--etcd-trials N] [--rw-trials N] [--repmgr-passes N] [--idle-secs S] \
         [--systems vip-agent,vip-manager,vip-manager-100ms,keepalived] [--seed N] [--quick] \
         [--patroni] [--patroni-trials N] [--patroni-cost-secs S] [--patroni-scenarios LIST] \
         [--answer] [--answer-switchovers N] [--answer-cost-trials N] [--answer-other-switchovers N] \
         [--answer-fault-trials N] [--out DIR]"
    );
    std::process::exit(2)
}

/// One number of a switchover trial, when it was measured.
type TrialMetric = fn(&Trial) -> Option<u64>;

/// Results of one system.
struct Row {
    system: System,
    trials: Vec<Trial>,
    expiries: Vec<Expiry>,
    idle: Vec<Usage>,
    partitions: Vec<Partition>,
    kills: Vec<Kill>,
    etcd_outages: Vec<EtcdOutage>,
    took: Vec<(&'static str, Duration)>,
}

fn main() {
    if !require_privileges("vip-bench") {
        std::process::exit(2);
    }
    // Ctrl-C or SIGTERM: end this run's processes and remove its namespaces, not just die.
    vip_tests::interrupt::clean_up_on_signal();
    let mut args = parse_args();
    let started = std::time::Instant::now();
    fastrand::seed(args.seed);
    if args.patroni_only {
        patroni_only(&args);
        return;
    }
    if args.dataplane_only {
        let path = args.out.join("BENCHMARKS.md");
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        let section = vip_tests::bench_dataplane::run(vip_tests::bench_dataplane::Plan::default());
        let text = vip_tests::bench_dataplane::splice_section(&previous, &section);
        std::fs::write(&path, &text).expect("write BENCHMARKS.md");
        println!("{section}");
        return;
    }
    if args.answer_only {
        answer_only(&args);
        return;
    }
    fastrand::shuffle(&mut args.systems);
    eprintln!(
        "vip-bench: seed {}: {}",
        args.seed,
        args.systems
            .iter()
            .map(System::label)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut rows = Vec::new();
    for system in args.systems.iter().copied() {
        let n = SYSTEMS
            .iter()
            .position(|(_, s)| *s == system)
            .expect("a known system");
        // The idle minute for every system but vip-manager at 100 ms (its default is measured).
        let idle = if system == (System::VipManager { interval_ms: 100 }) {
            Duration::ZERO
        } else {
            Duration::from_secs(args.idle_secs)
        };
        eprintln!(
            "vip-bench: {}: {} switchovers, {} lease expiries ({EXPIRY_TTL_S} s leases), {} s idle, \
             {} partitions, {} agent kills, {} x {} etcd outages ...",
            system.label(),
            args.trials,
            args.expiry_trials,
            idle.as_secs(),
            args.partition_trials,
            args.kill_trials,
            args.etcd_trials,
            OUTAGES.len()
        );
        let subnet = 240 + u8::try_from(n).expect("few systems");
        let plan = Plan {
            switchovers: args.trials,
            expiries: args.expiry_trials,
            idle,
            partitions: args.partition_trials,
            kills: args.kill_trials,
            etcd_outages: args.etcd_trials,
        };
        let SystemRun {
            switchovers,
            expiries,
            idle,
            partitions,
            kills,
            etcd_outages,
            took,
        } = run_system(system, subnet, plan, &args.agent);
        rows.push(Row {
            system,
            trials: switchovers,
            expiries,
            idle,
            partitions,
            kills,
            etcd_outages,
            took,
        });
    }
    eprintln!("vip-bench: XDP program and map costs ...");
    let t = std::time::Instant::now();
    let mut micro = micro();
    micro.took.push(("XDP and map costs", t.elapsed()));
    eprintln!("vip-bench: ARP round trips, kernel against XDP ...");
    let t = std::time::Instant::now();
    micro.rtts = arp_rtts(237, 1000);
    micro.took.push(("ARP round trips", t.elapsed()));
    eprintln!(
        "vip-bench: promotion with a real PostgreSQL standby, {} trials per gate setting ...",
        args.rw_trials
    );
    let rw = (args.rw_trials > 0 && vip_tests::bench_rw::postgres_available())
        .then(|| vip_tests::bench_rw::run(args.rw_trials, 236, &args.agent));
    // Tables list the systems in a fixed order; the header gives the order they ran in.
    rows.sort_by_key(|r| SYSTEMS.iter().position(|(_, s)| *s == r.system));
    let mut report = render(&rows, &micro, &args, started.elapsed());
    match &rw {
        Some(rw) => {
            report.push_str(PROMOTION_INTRO);
            report.push_str(&rw.markdown());
        }
        None => report.push_str(
            "\n## Promotion: answers vs answers and read-write\n\nNot measured in this run \
             (`--rw-trials 0`, or no PostgreSQL 15 binaries; `cargo xtask setup` installs them).\n",
        ),
    }
    let repmgr = vip_tests::repmgr::repmgr_available().filter(|_| args.repmgr_passes > 0);
    match repmgr {
        Some(installation) => {
            eprintln!(
                "vip-bench: a real repmgr cluster, {} pass(es) of its scenarios ...",
                args.repmgr_passes
            );
            let bench =
                vip_tests::repmgr::bench(installation, args.repmgr_passes, 141, &args.agent);
            report.push_str(&bench.markdown());
        }
        None => report.push_str(
            "\n## repmgr 5.3.3: a real cluster\n\nNot measured in this run (`--repmgr-passes 0`, \
             or no repmgr, sshd or nft; `cargo xtask setup` installs them).\n",
        ),
    }
    let previous = std::fs::read_to_string(args.out.join("BENCHMARKS.md")).unwrap_or_default();
    std::fs::create_dir_all(args.out.join("bench")).expect("output dir");
    if args.patroni_trials > 0 {
        if let Some(section) = run_patroni(&args, false) {
            report.push('\n');
            report.push_str(&section);
        }
    } else if let Some(section) = bench_patroni::existing_section(&previous) {
        // Skipped in this run: the section of the run that made it stays.
        report.push('\n');
        report.push_str(&section);
    }
    // The data plane's cost to the node's traffic is its own run (`--dataplane`): kept.
    if let Some(section) = vip_tests::bench_dataplane::existing_section(&previous) {
        report.push('\n');
        report.push_str(&section);
    }
    // The at-most-one-answer part runs only with `--answer`: its section stays.
    if let Some(section) = bench_patroni::section_at(&previous, answer::SECTION_HEADING) {
        report.push('\n');
        report.push_str(&section);
    }
    std::fs::write(args.out.join("bench/timeline.svg"), svg(&rows)).expect("write timeline.svg");
    std::fs::write(args.out.join("BENCHMARKS.md"), &report).expect("write BENCHMARKS.md");
    std::fs::write(args.out.join("bench/results.json"), json(&rows, &micro))
        .expect("write results.json");
    println!("{report}");
}

/// The real-Patroni part: both systems in a random order drawn from the seed; writes
/// bench/patroni.json and returns the section for BENCHMARKS.md (`None`: Patroni is missing).
fn run_patroni(args: &Args, alone: bool) -> Option<String> {
    // The systems of `--systems` that the real-Patroni part knows (vip-manager at its default).
    let mut systems: Vec<Manager> = [
        (System::VipAgent, Manager::VipAgent),
        (
            System::VipManager { interval_ms: 1000 },
            Manager::VipManager { interval_ms: 1000 },
        ),
    ]
    .into_iter()
    .filter(|(s, _)| args.systems.contains(s))
    .map(|(_, m)| m)
    .collect();
    fastrand::shuffle(&mut systems);
    eprintln!(
        "vip-bench: real Patroni, {} trials per scenario and system: {} ...",
        args.patroni_trials,
        systems
            .iter()
            .map(|m| m.label())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let plan = bench_patroni::PatroniPlan {
        trials: args.patroni_trials,
        cost_window: args.patroni_cost,
        systems,
        subnet: PATRONI_SUBNET,
        scenarios: args.patroni_scenarios.clone(),
    };
    let report = bench_patroni::run(&plan, &args.agent)?;
    std::fs::create_dir_all(args.out.join("bench")).expect("output dir");
    std::fs::write(args.out.join("bench/patroni.json"), report.json(args.seed))
        .expect("write patroni.json");
    Some(report.markdown(args.seed, alone))
}

/// `--patroni`: the real-Patroni part alone, its section spliced into the existing BENCHMARKS.md.
fn patroni_only(args: &Args) {
    let path = args.out.join("BENCHMARKS.md");
    let previous = std::fs::read_to_string(&path).unwrap_or_default();
    let Some(section) = run_patroni(args, true) else {
        std::process::exit(2);
    };
    let text = bench_patroni::splice_section(&previous, &section);
    std::fs::write(&path, &text).expect("write BENCHMARKS.md");
    println!("{section}");
}

/// `--answer`: the at-most-one-answer part alone (issue 14), every contender on its own bed in a
/// random order drawn from the seed; its section spliced into the existing BENCHMARKS.md and its
/// raw numbers written to bench/answer.json.
fn answer_only(args: &Args) {
    let [switchovers, cost, other, faults] = args.answer_trials;
    let mut contenders = answer::Contender::ALL.to_vec();
    fastrand::shuffle(&mut contenders);
    let started = std::time::Instant::now();
    let mut runs = Vec::new();
    for c in contenders {
        let plain = match (c.system, c.handshake) {
            (System::VipAgent, true) => switchovers,
            (System::VipAgent, false) => cost,
            _ => other,
        };
        let slot = answer::Contender::ALL
            .iter()
            .position(|x| *x == c)
            .unwrap_or(0);
        let subnet = ANSWER_SUBNET + u8::try_from(slot).unwrap_or(0);
        let plan = answer::Plan {
            trials: [plain, faults, faults, faults],
        };
        runs.push(answer::run(c, subnet, plan, &args.agent));
    }
    let section = answer::markdown(&runs, args.seed, started.elapsed());
    let path = args.out.join("BENCHMARKS.md");
    let previous = std::fs::read_to_string(&path).unwrap_or_default();
    let text = bench_patroni::splice_section_at(&previous, answer::SECTION_HEADING, &section);
    std::fs::create_dir_all(args.out.join("bench")).expect("output dir");
    std::fs::write(
        args.out.join("bench/answer.json"),
        answer::json(&runs, args.seed),
    )
    .expect("write answer.json");
    std::fs::write(&path, &text).expect("write BENCHMARKS.md");
    println!("{section}");
}

/// `10.77.<subnet>.0/24` and the next one: the real-Patroni clusters (inside issue 13's range,
/// apart from the end-to-end tests' 120 to 123).
const PATRONI_SUBNET: u8 = 130;

/// Data-plane costs (ns per operation).
struct Micro {
    arp_reply_ns: f64,
    vip_drop_ns: f64,
    pass_ns: f64,
    map_write_ns: f64,
    rtts: Vec<ArpRtt>,
    /// (measurement, how long it ran).
    took: Vec<(&'static str, Duration)>,
}

fn micro() -> Micro {
    let mut ebpf = Ebpf::load(ebpf_object()).expect("load the object");
    let mut state: HashMap<MapData, VipKey, VipState> =
        HashMap::try_from(ebpf.take_map(STATE_MAP).expect("map")).expect("map type");
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_NAME)
        .expect("program")
        .try_into()
        .expect("xdp");
    program.load().expect("verifier");
    let (vip, fenced_vip) = ([10, 77, 239, 100], [10, 77, 239, 101]);
    let mac = [2, 0, 0, 0, 0, 1];
    let far = monotonic_ns() + 3_600_000_000_000;
    state
        .insert(VipKey::v4(vip), VipState::answering_until(mac, far), 0)
        .expect("insert");
    state
        .insert(VipKey::v4(fenced_vip), VipState::fenced(mac), 0)
        .expect("insert");
    let client = [2, 0, 0, 0, 0, 9];
    let request = |tpa| {
        build_arp(
            [0xff; 6],
            client,
            ARP_OP_REQUEST,
            client,
            [10, 77, 239, 9],
            [0; 6],
            tpa,
        )
    };
    let ipv4 = build_ipv4(mac, client, [10, 77, 239, 9], [10, 77, 239, 1], 1);

    let run = |frame: &[u8], repeat: u32, expect: u32| -> f64 {
        let mut out = vec![0u8; 128];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = program.test_run(opts).expect("test run");
        assert_eq!(r.return_value, expect);
        r.duration.as_nanos() as f64
    };
    // The reply rewrites the frame in place, and repeated runs would see the reply: one run per call,
    // averaged (the kernel times the program run, not the syscall).
    let n = 20_000;
    let reply_total: f64 = (0..n).map(|_| run(&request(vip), 1, XDP_TX)).sum();
    let arp_reply_ns = reply_total / f64::from(n);
    // Drops and passes leave the frame alone: the kernel repeats them and reports ns per run.
    let vip_drop_ns = run(&request(fenced_vip), 1_000_000, XDP_DROP);
    let pass_ns = run(&ipv4, 1_000_000, XDP_PASS);

    let writes = 100_000u32;
    let t = std::time::Instant::now();
    for i in 0..writes {
        state
            .insert(
                VipKey::v4(vip),
                VipState::answering_until(mac, far + u64::from(i)),
                0,
            )
            .expect("write");
    }
    let map_write_ns = t.elapsed().as_nanos() as f64 / f64::from(writes);
    Micro {
        arp_reply_ns,
        vip_drop_ns,
        pass_ns,
        map_write_ns,
        rtts: Vec::new(),
        took: Vec::new(),
    }
}

fn ms(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

fn stats_row(label: &str, values: &[u64]) -> String {
    match percentiles(values) {
        Some([p50, p90, p99, max]) => format!(
            "| {label} | {} | {} | {} | {} | {} |\n",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max),
            values.len()
        ),
        None => format!("| {label} | - | - | - | - | 0 |\n"),
    }
}

fn render(rows: &[Row], micro: &Micro, args: &Args, took: Duration) -> String {
    let trials = args.trials;
    let mut md = String::new();
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
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `cargo xtask bench` on {date}: Linux {}, {cpu}, {cpus} CPUs; veth + bridge in \
         network namespaces, XDP in generic mode (veth), etcd 3.4 single member with its data on \
         tmpfs, release build. {trials} switchovers per system after one warm-up{}. The systems ran one \
         after the other in a random order ({}; `--seed {}` repeats it), each on its own bed, with a \
         random pause of 0 to {JITTER_MS} ms before each switchover so no trial keeps a fixed phase \
         against a poller's timer; processes not pinned to CPUs; the run took {:.0} s. Raw data: \
         [bench/results.json](bench/results.json).\n",
        kernel.trim(),
        if trials < 200 {
            " (the method asks for at least 200)"
        } else {
            ""
        },
        args.systems
            .iter()
            .map(System::label)
            .collect::<Vec<_>>()
            .join(", "),
        args.seed,
        took.as_secs_f64()
    );
    let _ = writeln!(
        md,
        "A trial replays Patroni's switchover on the leader key: t0 = the release (delete if the value \
         is the old leader's) is sent, then the new leader creates the key. vip-agent follows the v3 \
         key; vip-manager 1.0.2 (Debian) reads only the v2 API, so its key is written through v2 in \
         the same order. keepalived 2.2.7 (Debian) runs one VRRP instance at its defaults \
         (advertisement every 1 s, equal priorities) with a `vrrp_script` that runs every second and \
         succeeds while `etcdctl get` shows the v3 key holding this node's name (a Patroni + keepalived \
         setup checks Patroni's REST API on the same schedule); a failing check puts the instance in \
         FAULT, which holds no address, so a node that is not the leader can never take the VIP \
         (with a check `weight` instead, equal priorities would be decided by address, and a \
         non-leader could win). The client sends an ARP request for the VIP every millisecond; reply \
         times are the kernel's receive timestamps (`SO_TIMESTAMPNS`) on the client's interface, \
         so they have the probes' ~1 ms resolution but no scheduling delay of the prober. All times \
         in ms from t0.\n"
    );
    let _ = writeln!(
        md,
        "![Per-trial timeline: last reply from the old holder and first from the new one, per \
         switchover](bench/timeline.svg)\n"
    );
    for row in rows {
        let t = &row.trials;
        let pick = |f: fn(&Trial) -> Option<u64>| t.iter().filter_map(f).collect::<Vec<_>>();
        let overlap: usize = t.iter().map(|x| x.overlap).sum();
        let trials_with_overlap = t.iter().filter(|x| x.overlap > 0).count();
        let missing = t.iter().filter(|x| x.first_new_ns.is_none()).count();
        let _ = writeln!(md, "## {}\n", row.system.label());
        let _ = writeln!(
            md,
            "| metric (ms from t0) | p50 | p90 | p99 | max | n |\n|---|---|---|---|---|---|"
        );
        md.push_str(&stats_row(
            "release acknowledged by etcd",
            &pick(|x| Some(x.release_acked_ns)),
        ));
        md.push_str(&stats_row(
            "acquire acknowledged by etcd",
            &pick(|x| Some(x.acquire_acked_ns)),
        ));
        if row.system == System::VipAgent {
            md.push_str(&stats_row(
                "old node's data plane fenced",
                &pick(|x| x.old_dataplane_ns),
            ));
            md.push_str(&stats_row(
                "new node's data plane answering",
                &pick(|x| x.new_dataplane_ns),
            ));
        }
        md.push_str(&stats_row(
            "last ARP reply from the old holder",
            &pick(|x| x.last_old_ns),
        ));
        md.push_str(&stats_row(
            "first ARP reply from the new holder",
            &pick(|x| x.first_new_ns),
        ));
        md.push_str(&stats_row(
            "blackout (no holder answering)",
            &pick(Trial::blackout_ns),
        ));
        let _ = writeln!(
            md,
            "\nOverlap (probes answered by both MACs): {overlap} in total, in {trials_with_overlap} of {} trials. \
             Trials where the new holder never answered within the window: {missing}.\n",
            t.len()
        );
    }
    if let Some(agent) = rows.iter().find(|r| r.system == System::VipAgent) {
        let p50 = |r: &Row, f: TrialMetric| {
            percentiles(&r.trials.iter().filter_map(f).collect::<Vec<_>>()).map(|p| p[0] as f64)
        };
        let ratio = |other: &Row, f: TrialMetric| match (p50(other, f), p50(agent, f)) {
            (Some(m), Some(a)) if a > 0.0 => format!("{:.0}x", m / a),
            _ => "-".to_owned(),
        };
        let others: Vec<&Row> = rows
            .iter()
            .filter(|r| {
                matches!(
                    r.system,
                    System::VipManager { interval_ms: 1000 } | System::Keepalived { .. }
                )
            })
            .collect();
        if !others.is_empty() {
            let _ = writeln!(
                md,
                "## Ratios to vip-agent at the defaults (p50 of the other system / p50 of vip-agent, same run)\n"
            );
            let _ = writeln!(
                md,
                "| metric | {} |\n|---|{}",
                others
                    .iter()
                    .map(|r| r.system.label())
                    .collect::<Vec<_>>()
                    .join(" | "),
                "---|".repeat(others.len())
            );
            let metrics: [(&str, TrialMetric); 4] = [
                ("first ARP reply from the new holder", |x| x.first_new_ns),
                ("last ARP reply from the old holder", |x| x.last_old_ns),
                ("first echo reply from the new holder", |x| {
                    x.echo_first_new_ns
                }),
                ("client's entry on the new MAC", |x| x.client_switch_ns),
            ];
            for (name, f) in metrics {
                let _ = writeln!(
                    md,
                    "| {name} | {} |",
                    others
                        .iter()
                        .map(|r| ratio(r, f))
                        .collect::<Vec<_>>()
                        .join(" | ")
                );
            }
            md.push('\n');
        }
    }
    goals(&mut md, rows, micro);
    let _ = writeln!(md, "## Data plane costs\n");
    let _ = writeln!(md, "| operation | ns |\n|---|---|");
    let _ = writeln!(
        md,
        "| XDP: ARP request for a VIP answered (rewrite + XDP_TX), BPF_PROG_TEST_RUN, mean of 20,000 single runs | {:.1} |",
        micro.arp_reply_ns
    );
    let _ = writeln!(
        md,
        "| XDP: ARP request for a fenced VIP dropped, repeat 1,000,000 | {:.1} |",
        micro.vip_drop_ns
    );
    let _ = writeln!(
        md,
        "| XDP: IPv4 to a non-VIP address passed, repeat 1,000,000 | {:.1} |",
        micro.pass_ns
    );
    let _ = writeln!(
        md,
        "| map write (`bpf(BPF_MAP_UPDATE_ELEM)` from userspace, as the agent does), mean of 100,000 | {:.1} |\n",
        micro.map_write_ns
    );
    rtt_section(&mut md, &micro.rtts);
    client_section(&mut md, rows);
    expiry_section(&mut md, rows);
    partition_section(&mut md, rows);
    kill_section(&mut md, rows);
    etcd_section(&mut md, rows);
    idle_section(&mut md, rows, args.idle_secs);
    runtime_section(&mut md, rows, micro, took);
    md
}

/// ARP round trips: the kernel answering against our XDP program answering.
fn rtt_section(md: &mut String, rtts: &[ArpRtt]) {
    if rtts.is_empty() {
        return;
    }
    let _ = writeln!(md, "## ARP round trip: kernel against XDP\n");
    let _ = writeln!(
        md,
        "A client and a node on one veth pair; the client's raw socket sends an ARP request and reads \
         the reply (sent: read in userspace before the send; received: the kernel's receive \
         timestamp; every row carries the same overhead). The \
         kernel answers the node's own address; our program answers the VIP. Native mode on veth \
         needs a program on the peer too, so the client runs ours (holding no VIP) in that case.\n"
    );
    let _ = writeln!(
        md,
        "| answered by | p50 (µs) | p90 | p99 | max | answered |\n|---|---|---|---|---|---|"
    );
    for r in rtts {
        let us = |ns: u64| format!("{:.1}", ns as f64 / 1e3);
        match percentiles(&r.rtt_ns) {
            Some([p50, p90, p99, max]) => {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} of {} |",
                    r.label,
                    us(p50),
                    us(p90),
                    us(p99),
                    us(max),
                    r.rtt_ns.len(),
                    r.probes
                );
            }
            None => {
                let _ = writeln!(md, "| {} | - | - | - | - | 0 of {} |", r.label, r.probes);
            }
        }
    }
    md.push('\n');
}

/// Lease expiry: the holder's Patroni is gone and its key expires with the lease.
fn expiry_section(md: &mut String, rows: &[Row]) {
    let Some(n) = rows
        .iter()
        .map(|r| r.expiries.len())
        .max()
        .filter(|&n| n > 0)
    else {
        return;
    };
    let _ = writeln!(md, "## Lease expiry (the holder's Patroni dies)\n");
    let _ = writeln!(
        md,
        "The holder takes the key with a {EXPIRY_TTL_S} s lease that nobody renews; t0 = a watcher on \
         the client host sees etcd expire the key; the other node then creates the key at once (as \
         the surviving Patroni member does on its next loop). {n} trials per system{}. The old \
         holder's last reply is relative to t0: negative means it had gone silent before etcd gave \
         up its key. vip-agent stops at its deadline, `LeaseTimeToLive` - 500 ms after its last \
         confirmation; vip-manager answers until its next poll sees the key gone, keepalived until \
         its next check fails.\n",
        fewer(
            n,
            "each trial waits for a lease to run out",
            "--expiry-trials"
        )
    );
    let _ = writeln!(
        md,
        "| system | old holder's last reply, p50 / p99 / max (ms from t0) | trials where the old holder \
         answered after t0 | new holder's first reply, p50 / p99 / max | overlap (probes, trials) |\n\
         |---|---|---|---|---|"
    );
    for row in rows.iter().filter(|r| !r.expiries.is_empty()) {
        let e = &row.expiries;
        let last: Vec<i64> = e.iter().filter_map(|x| x.last_old_ns).collect();
        let first: Vec<u64> = e.iter().filter_map(|x| x.first_new_ns).collect();
        let (last, first) = (spread_signed(&last), spread(&first));
        let late = e.iter().filter(|x| x.old_answers_after_expiry > 0).count();
        let late_probes: usize = e.iter().map(|x| x.old_answers_after_expiry).sum();
        let overlap: usize = e.iter().map(|x| x.overlap).sum();
        let overlapping = e.iter().filter(|x| x.overlap > 0).count();
        let _ = writeln!(
            md,
            "| {} | {last} | {late} of {} ({late_probes} probes) | {first} | {overlap}, {overlapping} |",
            row.system.label(),
            e.len()
        );
    }
    md.push('\n');
}

/// CPU and memory while nothing happens: vip-agent watches, vip-manager polls.
fn idle_section(md: &mut String, rows: &[Row], idle_secs: u64) {
    if rows.iter().all(|r| r.idle.is_empty()) {
        return;
    }
    let _ = writeln!(md, "## Idle cost ({idle_secs} s, key unchanged)\n");
    let _ = writeln!(
        md,
        "CPU time (user + system, from `/proc/<pid>/stat`) each node's processes used while the key \
         did not change, and their resident memory at the end: the process and its descendants with \
         the children they reaped (keepalived's VRRP process and the `etcdctl` checks it runs every \
         second; vip-agent and vip-manager are one process each). Release build of vip-agent.\n"
    );
    let _ = writeln!(
        md,
        "| system | node | CPU (ms) | CPU (% of one core) | RSS (MiB) |\n|---|---|---|---|---|"
    );
    for row in rows {
        for (i, u) in row.idle.iter().enumerate() {
            let _ = writeln!(
                md,
                "| {} | node{} | {} | {:.3} | {:.1} |",
                row.system.label(),
                i + 1,
                u.cpu_ms,
                u.cpu_ms as f64 * 100.0 / u.window_ms.max(1) as f64,
                u.rss_kib as f64 / 1024.0
            );
        }
    }
    md.push('\n');
}

/// One SVG panel per system: per switchover, the last reply from the old holder (red) and the
/// first from the new one (green) on a log time axis, joined by the blackout; overlaps in orange.
fn svg(rows: &[Row]) -> String {
    const WIDTH: f64 = 900.0;
    const LEFT: f64 = 190.0;
    const RIGHT: f64 = 20.0;
    const ROW_H: f64 = 1.5;
    const GAP: f64 = 50.0;
    let (lo, hi) = (0.1_f64.log10(), 10_000.0_f64.log10());
    let x = |ns: u64| {
        let ms = (ns as f64 / 1e6).clamp(0.1, 10_000.0);
        LEFT + (ms.log10() - lo) / (hi - lo) * (WIDTH - LEFT - RIGHT)
    };
    let height: f64 = rows
        .iter()
        .map(|r| r.trials.len() as f64 * ROW_H + GAP)
        .sum::<f64>()
        + 40.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" fill="white"/><text x="4" y="14">switchover trials (rows), ms from the release sent (log scale): red = last reply from the old holder, green = first from the new holder, orange = a probe answered by both</text>"#
    );
    let mut top = 30.0;
    for row in rows {
        let h = row.trials.len() as f64 * ROW_H;
        let _ = writeln!(
            out,
            r##"<text x="4" y="{:.1}">{}</text><rect x="{LEFT}" y="{top:.1}" width="{:.1}" height="{h:.1}" fill="none" stroke="#bbb"/>"##,
            top + h / 2.0,
            row.system.label(),
            WIDTH - LEFT - RIGHT
        );
        for ms in [0.1, 1.0, 10.0, 100.0, 1000.0, 10_000.0] {
            let tx = x((ms * 1e6) as u64);
            let _ = writeln!(
                out,
                r##"<line x1="{tx:.1}" y1="{top:.1}" x2="{tx:.1}" y2="{:.1}" stroke="#eee"/><text x="{tx:.1}" y="{:.1}" text-anchor="middle" fill="#666">{ms}</text>"##,
                top + h,
                top + h + 12.0
            );
        }
        for (i, t) in row.trials.iter().enumerate() {
            let y = top + i as f64 * ROW_H + ROW_H / 2.0;
            let old = t.last_old_ns.unwrap_or(0);
            if let Some(new) = t.first_new_ns {
                let _ = writeln!(
                    out,
                    r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="1"/>"##,
                    x(old),
                    x(new),
                    if t.overlap > 0 { "#f80" } else { "#ccc" }
                );
                let _ = writeln!(
                    out,
                    r##"<circle cx="{:.1}" cy="{y:.1}" r="1.2" fill="#2a2"/>"##,
                    x(new)
                );
            }
            if t.last_old_ns.is_some() {
                let _ = writeln!(
                    out,
                    r##"<circle cx="{:.1}" cy="{y:.1}" r="1.2" fill="#d22"/>"##,
                    x(old)
                );
            }
        }
        top += h + GAP;
    }
    out.push_str("</svg>\n");
    out
}

/// The issue's goals (reported, never asserted), each with the measured value and met / missed.
fn goals(md: &mut String, rows: &[Row], micro: &Micro) {
    let Some(agent) = rows.iter().find(|r| r.system == System::VipAgent) else {
        return;
    };
    let p = |f: fn(&Trial) -> Option<u64>| {
        percentiles(&agent.trials.iter().filter_map(f).collect::<Vec<_>>())
    };
    let verdict = |ok: bool| if ok { "met" } else { "missed" };
    let _ = writeln!(md, "## Goals (reported, not asserted)\n");
    let _ = writeln!(md, "| goal | measured | |\n|---|---|---|");
    if let Some([p50, _, p99, _]) = p(|t| t.last_old_ns) {
        let _ = writeln!(
            md,
            "| old holder silent: p50 <= 1 ms, p99 <= 5 ms (last reply, from t0) | {} / {} ms | {} |",
            ms(p50),
            ms(p99),
            verdict(p50 <= 1_000_000 && p99 <= 5_000_000)
        );
    }
    if let Some([p50, _, p99, _]) = p(|t| t.first_new_ns) {
        let _ = writeln!(
            md,
            "| new holder answers: p50 <= 2 ms, p99 <= 10 ms (first reply, from t0) | {} / {} ms | {} |",
            ms(p50),
            ms(p99),
            verdict(p50 <= 2_000_000 && p99 <= 10_000_000)
        );
    }
    let overlapping: Vec<&Trial> = agent.trials.iter().filter(|t| t.overlap > 0).collect();
    let _ = writeln!(
        md,
        "| overlap 0 in every trial | {} probes in {} of {} trials | {} |",
        overlapping.iter().map(|t| t.overlap).sum::<usize>(),
        overlapping.len(),
        agent.trials.len(),
        verdict(overlapping.is_empty())
    );
    let _ = writeln!(
        md,
        "| XDP ARP reply <= 100 ns, non-VIP pass <= 20 ns (test_run) | {:.0} / {:.0} ns | {} |\n",
        micro.arp_reply_ns,
        micro.pass_ns,
        verdict(micro.arp_reply_ns <= 100.0 && micro.pass_ns <= 20.0)
    );
    if let (Some(rel), Some(acq), Some(fenced), Some(answering)) = (
        p(|t| Some(t.release_acked_ns)),
        p(|t| Some(t.acquire_acked_ns)),
        p(|t| t.old_dataplane_ns),
        p(|t| t.new_dataplane_ns),
    ) {
        let _ = writeln!(
            md,
            "Latency: the old node fences when etcd's watch delivers the delete, the new one answers \
             when it delivers the create. Its data-plane writes came at p50 {} / p99 {} ms (fenced) and \
             p50 {} / p99 {} ms (answering) after t0, while etcd acknowledged the delete to the writer \
             at p50 {} / p99 {} ms and the create at p50 {} / p99 {} ms: the agent's own step from the \
             watch event to the map write is tens of microseconds (`event_to_dataplane_us` in its log). \
             The new holder also waits for one `LeaseTimeToLive` round trip after the create's watch \
             event, so the deadline it writes is proven by etcd before it answers. The rest is etcd's \
             commit and watch delivery on this shared 2-vCPU VM (etcd, both agents, the prober and \
             the client run on it), which an agent cannot shorten. A reply reaches the prober up to \
             one probe interval (1 ms) after the data plane changed.\n",
            ms(fenced[0]),
            ms(fenced[2]),
            ms(answering[0]),
            ms(answering[2]),
            ms(rel[0]),
            ms(rel[2]),
            ms(acq[0]),
            ms(acq[2]),
        );
    }
    let early = overlapping
        .iter()
        .filter(|t| matches!((t.new_dataplane_ns, t.old_dataplane_ns), (Some(n), Some(o)) if n < o))
        .count();
    if !overlapping.is_empty() {
        let _ = writeln!(
            md,
            "Overlap: in {early} of the {} overlapping trials the new node's data plane started answering \
             before the old node's was fenced: the two agents see etcd's events at different times (here \
             one VM with 2 vCPUs runs both agents, etcd and the prober), and nothing yet makes the new \
             holder wait for the old one. Once both have seen the change at most one answers (the \
             end-to-end tests assert that); closing the window needs a cross-node step, for example the \
             new holder waiting for the old holder's fence acknowledgement in etcd, bounded by the old \
             holder's deadline.\n",
            overlapping.len()
        );
    }
    let _ = writeln!(
        md,
        "XDP costs are BPF_PROG_TEST_RUN times in generic mode on this VM; the reply is the mean of \
         single runs (a repeated run would see the already rewritten frame), which includes the \
         kernel's per-run timing overhead. The reply path does two hash lookups (sender and target \
         address) and reads the clock twice.\n"
    );
}

fn json(rows: &[Row], micro: &Micro) -> String {
    let systems: Vec<_> = rows
        .iter()
        .map(|row| {
            let trials: Vec<_> = row
                .trials
                .iter()
                .map(|t| {
                    serde_json::json!({
                        "from": format!("node{}", t.from + 1),
                        "to": format!("node{}", t.to + 1),
                        "release_acked_ns": t.release_acked_ns,
                        "acquire_acked_ns": t.acquire_acked_ns,
                        "last_old_ns": t.last_old_ns,
                        "first_new_ns": t.first_new_ns,
                        "old_dataplane_ns": t.old_dataplane_ns,
                        "new_dataplane_ns": t.new_dataplane_ns,
                        "overlap": t.overlap,
                        "probes": t.probes,
                        "first_garp_ns": t.first_garp_ns,
                        "client_switch_ns": t.client_switch_ns,
                        "client_had_old_mac": t.client_had_old_mac,
                        "echo_last_old_ns": t.echo_last_old_ns,
                        "echo_first_new_ns": t.echo_first_new_ns,
                        "echo_lost": t.echo_lost,
                        "echo_sent": t.echo_sent,
                    })
                })
                .collect();
            let expiries: Vec<_> = row
                .expiries
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "from": format!("node{}", e.from + 1),
                        "to": format!("node{}", e.to + 1),
                        "last_old_ns": e.last_old_ns,
                        "old_answers_after_expiry": e.old_answers_after_expiry,
                        "acquire_acked_ns": e.acquire_acked_ns,
                        "first_new_ns": e.first_new_ns,
                        "overlap": e.overlap,
                        "probes": e.probes,
                    })
                })
                .collect();
            let idle: Vec<_> = row
                .idle
                .iter()
                .map(|u| {
                    serde_json::json!({
                        "cpu_ms": u.cpu_ms,
                        "window_ms": u.window_ms,
                        "rss_kib": u.rss_kib,
                    })
                })
                .collect();
            let partitions: Vec<_> = row
                .partitions
                .iter()
                .map(|p| {
                    serde_json::json!({
                        "from": format!("node{}", p.from + 1),
                        "to": format!("node{}", p.to + 1),
                        "expiry_after_cut_ns": p.expiry_after_cut_ns,
                        "last_old_after_cut_ns": p.last_old_after_cut_ns,
                        "last_old_ns": p.last_old_ns,
                        "old_answers_after_expiry": p.old_answers_after_expiry,
                        "acquire_acked_ns": p.acquire_acked_ns,
                        "first_new_ns": p.first_new_ns,
                        "overlap": p.overlap,
                        "old_answering_at_end": p.old_answering_at_end,
                        "probes": p.probes,
                    })
                })
                .collect();
            let kills: Vec<_> = row
                .kills
                .iter()
                .map(|k| {
                    serde_json::json!({
                        "node": format!("node{}", k.node + 1),
                        "deadline_after_kill_ns": k.deadline_after_kill_ns,
                        "last_reply_ns": k.last_reply_ns,
                        "answered_after_deadline": k.answered_after_deadline,
                        "answering_at_end": k.answering_at_end,
                        "restart_answer_ns": k.restart_answer_ns,
                        "adopted": k.adopted,
                        "quick_restart_gap_ns": k.quick_gap_ns,
                        "quick_restart_gap_start_ns": k.quick_gap_start_ns,
                        "other_answers": k.other_answers,
                        "probes": k.probes,
                    })
                })
                .collect();
            let outages: Vec<_> = row
                .etcd_outages
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "node": format!("node{}", e.node + 1),
                        "lease_ttl_s": e.shape.lease_ttl_s,
                        "planned_down_ms": e.shape.down.as_millis(),
                        "down_ns": e.down_ns,
                        "deadline_after_stop_ns": e.deadline_after_stop_ns,
                        "answered_after_deadline": e.answered_after_deadline,
                        "gap_ns": e.gap_ns,
                        "gap_start_ns": e.gap_start_ns,
                        "gap_end_after_up_ns": e.gap_end_after_up_ns,
                        "answering_at_end": e.answering_at_end,
                        "other_answers": e.other_answers,
                        "probes": e.probes,
                    })
                })
                .collect();
            let took: serde_json::Map<String, serde_json::Value> = row
                .took
                .iter()
                .map(|(name, d)| ((*name).to_owned(), serde_json::json!(d.as_secs_f64())))
                .collect();
            serde_json::json!({
                "system": row.system.label(),
                "trials": trials,
                "lease_expiries": expiries,
                "idle": idle,
                "partitions": partitions,
                "agent_kills": kills,
                "etcd_outages": outages,
                "took_s": took,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "systems": systems,
        "micro_ns": {
            "arp_reply": micro.arp_reply_ns,
            "vip_drop": micro.vip_drop_ns,
            "pass": micro.pass_ns,
            "map_write": micro.map_write_ns,
        },
        "arp_rtt_ns": micro
            .rtts
            .iter()
            .map(|r| serde_json::json!({ "answered_by": r.label, "probes": r.probes, "rtt_ns": r.rtt_ns }))
            .collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

/// `p50 / p99 / max` in ms with one decimal, or `-`.
fn spread(values: &[u64]) -> String {
    spread_as(values, |v| v as f64)
}

/// [`spread`] for signed values.
fn spread_signed(values: &[i64]) -> String {
    spread_as(values, |v| v as f64)
}

fn spread_as<T: Ord + Copy>(values: &[T], ns: impl Fn(T) -> f64) -> String {
    percentiles(values).map_or("-".to_owned(), |[p50, _, p99, max]| {
        format!(
            "{:.1} / {:.1} / {:.1}",
            ns(p50) / 1e6,
            ns(p99) / 1e6,
            ns(max) / 1e6
        )
    })
}

/// Why a scenario has fewer trials than the switchovers' 200.
fn fewer(n: usize, why: &str, flag: &str) -> String {
    if n < FULL_TRIALS {
        format!(
            " (a `--quick` run: fewer than the method's {FULL_TRIALS}, since {why}; `{flag}` sets it, \
             and a run without `--quick` does {FULL_TRIALS})"
        )
    } else {
        String::new()
    }
}

/// The client's view of the switchovers: the new holder's first gratuitous ARP, and when the
/// application client's kernel moved its neighbour entry for the VIP to the new MAC.
fn client_section(md: &mut String, rows: &[Row]) {
    if rows.iter().all(|r| r.trials.is_empty()) {
        return;
    }
    let _ = writeln!(md, "## Client switch (during the switchovers)\n");
    let _ = writeln!(
        md,
        "What a database client sees. An application host on the same segment sends an ICMP echo \
         request (sequenced) to the VIP every millisecond from its kernel, so it keeps a neighbour \
         (ARP cache) entry for the VIP as a client with an open connection does. Its packets go to \
         whatever MAC that entry holds: until the entry changes they reach the old node, where they are \
         lost once that node no longer holds the VIP. Measured in the switchover trials above, from the \
         same t0 (release sent): the first gratuitous ARP from the new holder on the wire (sender IP = \
         target IP = VIP), when the client's entry took the new holder's MAC (netlink `RTM_NEWNEIGH`), \
         the last echo reply from the old holder's MAC and the first from the new one (kernel receive \
         timestamps on the client's interface), and how many echo requests got no reply (sent from t0 \
         to 20 ms before the window closed). The client itself never asks: since Linux 4.13 a \
         gratuitous ARP overrides an existing entry at once, otherwise the entry only changes when it \
         goes stale and is probed again (tens of seconds). Within the trial's window (vip-agent \
         300 ms, vip-manager 2 x interval + 800 ms, keepalived 5.4 s).\n"
    );
    let _ = writeln!(
        md,
        "| system | first GARP from the new holder, p50 / p99 / max (ms from t0) | client's entry on the \
         new MAC, p50 / p99 / max | trials without a GARP | entry did not switch (of the trials starting \
         from the old MAC) | trials starting from the old MAC |\n|---|---|---|---|---|---|"
    );
    for row in rows.iter().filter(|r| !r.trials.is_empty()) {
        let t = &row.trials;
        let garp: Vec<u64> = t.iter().filter_map(|x| x.first_garp_ns).collect();
        let from_old: Vec<&Trial> = t.iter().filter(|x| x.client_had_old_mac).collect();
        let switched: Vec<u64> = from_old.iter().filter_map(|x| x.client_switch_ns).collect();
        let n = t.len();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} of {n} | {} of {} | {} of {n} |",
            row.system.label(),
            spread(&garp),
            spread(&switched),
            n - garp.len(),
            from_old.len() - switched.len(),
            from_old.len(),
            from_old.len(),
        );
    }
    let _ = writeln!(
        md,
        "\n| system | last echo reply from the old holder, p50 / p99 / max (ms from t0) | first echo \
         reply from the new holder, p50 / p99 / max | echo requests lost per trial, p50 / p99 / max \
         (1 per ms) | trials where the new holder never answered an echo | echo requests sent |\n\
         |---|---|---|---|---|---|"
    );
    for row in rows.iter().filter(|r| !r.trials.is_empty()) {
        let t = &row.trials;
        let last_old: Vec<u64> = t.iter().filter_map(|x| x.echo_last_old_ns).collect();
        let first_new: Vec<u64> = t.iter().filter_map(|x| x.echo_first_new_ns).collect();
        let lost: Vec<u64> = t.iter().map(|x| x.echo_lost as u64 * 1_000_000).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} of {} | {} |",
            row.system.label(),
            spread(&last_old),
            spread(&first_new),
            spread(&lost),
            t.len() - first_new.len(),
            t.len(),
            t.iter().map(|x| x.echo_sent).sum::<usize>(),
        );
    }
    md.push('\n');
}

/// The holder cut off from etcd together with its Patroni.
fn partition_section(md: &mut String, rows: &[Row]) {
    let Some(n) = rows
        .iter()
        .map(|r| r.partitions.len())
        .max()
        .filter(|&n| n > 0)
    else {
        return;
    };
    let _ = writeln!(md, "## Holder cut off from etcd (its Patroni too)\n");
    let _ = writeln!(
        md,
        "The holder keeps a {HELD_TTL_S} s lease that its Patroni renews every {} s (Patroni's ttl 30 s \
         and loop_wait 10 s, scaled down). At the cut, a blackhole route on the holder's node drops \
         everything to etcd, and its Patroni stops renewing (it lost etcd too); the client still \
         reaches the node. etcd expires the key when the lease runs out; t0 = a watcher on the client \
         host sees that, and the other member takes the key at once. What matters: does the old node \
         go silent by itself before etcd can give the key away, or does it keep answering beside the \
         new primary until the network heals? The partition heals at the end of the window \
         (vip-agent 300 ms after the new holder's first reply, vip-manager 2 x interval + 800 ms, \
         keepalived 5.4 s). keepalived's check (`etcdctl`, 1 s timeouts) fails when etcd cannot be \
         reached, so a cut-off keepalived gives up the VIP within about two seconds. \
         {n} trials per system{}.\n",
        RENEW_INTERVAL.as_secs(),
        fewer(
            n,
            "each trial waits for a lease to run out",
            "--partition-trials"
        )
    );
    let _ = writeln!(
        md,
        "| system | key expired (ms after the cut), p50 | old holder's last reply, p50 / p99 / max (ms \
         after the cut) | same, from t0 (negative: before the expiry) | trials where the old holder \
         answered after t0 | new holder's first reply, p50 / p99 / max (ms from t0) | overlap \
         (probes, trials) | old holder still answering when the partition healed |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for row in rows.iter().filter(|r| !r.partitions.is_empty()) {
        let p = &row.partitions;
        let expiry: Vec<u64> = p.iter().map(|x| x.expiry_after_cut_ns).collect();
        let after_cut: Vec<u64> = p.iter().filter_map(|x| x.last_old_after_cut_ns).collect();
        let from_t0: Vec<i64> = p.iter().filter_map(|x| x.last_old_ns).collect();
        let first: Vec<u64> = p.iter().filter_map(|x| x.first_new_ns).collect();
        let late = p.iter().filter(|x| x.old_answers_after_expiry > 0).count();
        let late_probes: usize = p.iter().map(|x| x.old_answers_after_expiry).sum();
        let overlap: usize = p.iter().map(|x| x.overlap).sum();
        let overlapping = p.iter().filter(|x| x.overlap > 0).count();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {late} of {n} ({late_probes} probes) | {} | {overlap}, {overlapping} | {} of {n} |",
            row.system.label(),
            percentiles(&expiry).map_or("-".to_owned(), |q| format!("{:.0}", q[0] as f64 / 1e6)),
            spread(&after_cut),
            spread_signed(&from_t0),
            spread(&first),
            p.iter().filter(|x| x.old_answering_at_end).count(),
            n = p.len()
        );
    }
    md.push('\n');
}

/// SIGKILL of the holder's agent while its Patroni keeps the key, and the restarts.
fn kill_section(md: &mut String, rows: &[Row]) {
    let Some(n) = rows.iter().map(|r| r.kills.len()).max().filter(|&n| n > 0) else {
        return;
    };
    let _ = writeln!(
        md,
        "## The holder's agent killed (SIGKILL) while Patroni is fine\n"
    );
    let _ = writeln!(
        md,
        "The holder's Patroni keeps renewing its {HELD_TTL_S} s lease every {} s; its agent (or \
         vip-manager) gets SIGKILL, a crash or an OOM kill, and nothing restarts it for {HELD_TTL_S} s. \
         The key never moves: this is not a failover but the question of what the clients of a \
         healthy primary see when the VIP's manager dies. vip-agent's pinned XDP program keeps \
         answering by itself until the deadline the dead agent last wrote (read from the pinned map \
         after the kill), then drops ARP for the VIP and traffic to it: the VIP goes dark although \
         PostgreSQL is fine, until an agent runs again. With Patroni's defaults (ttl 30 s renewed every \
         10 s) that deadline lies about 18.5 to 29.5 s after a kill (here, with {HELD_TTL_S} s renewed \
         every second, 2.5 to 4.5 s): that is how long a dead agent keeps the VIP up. vip-manager \
         leaves the address on the interface, so the kernel answers for as long as the node runs, \
         also after the key moves to another node while nothing follows it; so does keepalived \
         (its VRRP process is killed with it), and a restarted keepalived first removes the address, \
         starts in BACKUP and takes the VIP again only after VRRP's master-down interval (about \
         3.6 s). {n} trials per system{}.\n",
        RENEW_INTERVAL.as_secs(),
        fewer(
            n,
            "each trial waits for the dead agent's deadline",
            "--kill-trials"
        )
    );
    let _ = writeln!(
        md,
        "| system | deadline left by the dead agent, p50 / p99 / max (ms after the kill) | holder's last \
         reply, p50 / p99 / max (ms after the kill) | still answering {HELD_TTL_S} s after the kill | \
         probes answered after the deadline | other node answered (probes) |\n|---|---|---|---|---|---|"
    );
    for row in rows.iter().filter(|r| !r.kills.is_empty()) {
        let k = &row.kills;
        let deadline: Vec<u64> = k.iter().filter_map(|x| x.deadline_after_kill_ns).collect();
        let last: Vec<u64> = k.iter().filter_map(|x| x.last_reply_ns).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} of {n} | {} | {} |",
            row.system.label(),
            spread(&deadline),
            spread(&last),
            k.iter().filter(|x| x.answering_at_end).count(),
            k.iter().map(|x| x.answered_after_deadline).sum::<usize>(),
            k.iter().map(|x| x.other_answers).sum::<usize>(),
            n = k.len()
        );
    }
    let _ = writeln!(
        md,
        "\nThen the same node's process is started again: once after that window (for vip-agent the \
         VIP is dark by then: how soon a restarted agent brings it back, adopting the pinned program \
         instead of attaching a new one), and once more after a second SIGKILL, {} s later, as \
         systemd's `RestartSec=1s` in dist/systemd/vip-agent.service does, while the dead agent's \
         deadline still runs: the longest stretch without a reply from the holder shows whether a \
         crash and restart interrupts the VIP (a blackout: more than {} ms). A restarted vip-agent \
         starts fenced and answers again after its first confirmation (the first restart column), so \
         that stretch includes this restart gap.\n",
        SYSTEMD_RESTART.as_secs(),
        BLACKOUT_MIN_NS / 1_000_000
    );
    let _ = writeln!(
        md,
        "| system | restart after the window: first reply, p50 / p99 / max (ms from the start) | pinned \
         program adopted | restart {} s after a crash: longest stretch without a reply, p50 / p99 / max \
         (ms) | blackout starts, p50 (ms from the restart) | trials with a blackout |\n|---|---|---|---|---|---|",
        SYSTEMD_RESTART.as_secs()
    );
    for row in rows.iter().filter(|r| !r.kills.is_empty()) {
        let k = &row.kills;
        let back: Vec<u64> = k.iter().filter_map(|x| x.restart_answer_ns).collect();
        let gaps: Vec<u64> = k.iter().map(|x| x.quick_gap_ns).collect();
        let starts: Vec<i64> = k
            .iter()
            .filter(|x| x.quick_gap_ns > BLACKOUT_MIN_NS)
            .map(|x| x.quick_gap_start_ns)
            .collect();
        let adopted = if row.system == System::VipAgent {
            format!(
                "{} of {}",
                k.iter().filter(|x| x.adopted == Some(true)).count(),
                k.len()
            )
        } else {
            "no XDP program".to_owned()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {adopted} | {} | {} | {} of {} |",
            row.system.label(),
            spread(&back),
            spread(&gaps),
            percentiles(&starts).map_or("-".to_owned(), |q| format!("{:.1}", q[0] as f64 / 1e6)),
            k.iter()
                .filter(|x| x.quick_gap_ns > BLACKOUT_MIN_NS)
                .count(),
            k.len()
        );
    }
    md.push('\n');
}

/// etcd stopped and restarted with no leadership change.
fn etcd_section(md: &mut String, rows: &[Row]) {
    let Some(n) = rows
        .iter()
        .map(|r| r.etcd_outages.len())
        .max()
        .filter(|&n| n > 0)
    else {
        return;
    };
    let per_shape = n / OUTAGES.len().max(1);
    let _ = writeln!(md, "## etcd stopped and restarted, leadership unchanged\n");
    let _ = writeln!(
        md,
        "etcd (the only member) gets SIGKILL and is started again on the same data; the holder's \
         Patroni keeps its key and renews it again every {} s once etcd is back. This is an etcd \
         restart, a rolling upgrade or a certificate rotation: nothing can move leadership while etcd \
         is down, so ideally clients notice nothing. vip-agent keeps answering until the deadline it \
         could prove before the outage (read from its pinned map 100 ms after the stop) and answers \
         again once it reaches etcd and the key is still its own (its retry backoff doubles from \
         100 ms up to 1 s). vip-manager 1.0.2 polls etcd's v2 API and treats a failed poll as \"not \
         the leader\"; keepalived's check fails likewise, which puts its instance in FAULT. Two shapes: a 3 s outage under Patroni's default 30 s lease (the deadline is \
         about 28 s ahead), and a 6 s outage under a {HELD_TTL_S} s lease, longer than the deadline. \
         (Patroni itself demotes the primary after ttl without etcd unless `failsafe_mode` is on; \
         neither Patroni nor PostgreSQL runs here.) A blackout is a stretch of more than {} ms without \
         a reply from the holder (probes go every ms). {per_shape} trials per shape and system{}.\n",
        RENEW_INTERVAL.as_secs(),
        BLACKOUT_MIN_NS / 1_000_000,
        fewer(
            per_shape,
            "each trial keeps etcd down for seconds",
            "--etcd-trials"
        )
    );
    let _ = writeln!(
        md,
        "| system | outage | etcd serving again (ms after the stop), p50 | trials with a blackout | \
         longest stretch without a reply, p50 / p99 / max (ms) | blackout starts (ms after the stop), \
         p50 | answering again (ms after etcd serves again), p50 / p99 / max | deadline at the stop \
         (ms ahead), p50 | probes answered after the deadline | other node answered (probes) |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for row in rows.iter().filter(|r| !r.etcd_outages.is_empty()) {
        for shape in OUTAGES {
            let e: Vec<&EtcdOutage> = row
                .etcd_outages
                .iter()
                .filter(|x| x.shape == shape)
                .collect();
            if e.is_empty() {
                continue;
            }
            let OutageShape { lease_ttl_s, down } = shape;
            let lease = if row.system.v3() {
                format!("{lease_ttl_s} s lease")
            } else {
                "v2 key".to_owned()
            };
            let p50 = |v: &[u64]| {
                percentiles(v).map_or("-".to_owned(), |q| format!("{:.0}", q[0] as f64 / 1e6))
            };
            let dark: Vec<&&EtcdOutage> = e.iter().filter(|x| x.blackout()).collect();
            let up: Vec<u64> = e.iter().map(|x| x.down_ns).collect();
            let gaps: Vec<u64> = e.iter().map(|x| x.gap_ns).collect();
            let starts: Vec<u64> = dark.iter().map(|x| x.gap_start_ns).collect();
            let back: Vec<i64> = dark.iter().map(|x| x.gap_end_after_up_ns).collect();
            let deadline: Vec<u64> = e.iter().filter_map(|x| x.deadline_after_stop_ns).collect();
            let _ = writeln!(
                md,
                "| {} | {} s ({lease}) | {} | {} of {} | {} | {} | {} | {} | {} | {} |",
                row.system.label(),
                down.as_secs(),
                p50(&up),
                dark.len(),
                e.len(),
                spread(&gaps),
                p50(&starts),
                spread_signed(&back),
                p50(&deadline),
                e.iter().map(|x| x.answered_after_deadline).sum::<usize>(),
                e.iter().map(|x| x.other_answers).sum::<usize>()
            );
        }
    }
    md.push('\n');
}

/// How long each scenario took, per system.
fn runtime_section(md: &mut String, rows: &[Row], micro: &Micro, total: Duration) {
    let _ = writeln!(md, "## Run time\n");
    let _ = writeln!(
        md,
        "Wall-clock seconds per scenario and system (setup = building the namespaces, etcd and the \
         two nodes); total {:.0} s.\n",
        total.as_secs_f64()
    );
    let mut header = "| scenario |".to_owned();
    let mut rule = "|---|".to_owned();
    for row in rows {
        let _ = write!(header, " {} |", row.system.label());
        rule.push_str("---|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    let mut scenarios: Vec<&str> = Vec::new();
    for row in rows {
        for (name, _) in &row.took {
            if !scenarios.contains(name) {
                scenarios.push(name);
            }
        }
    }
    for name in scenarios {
        let mut line = format!("| {name} |");
        for row in rows {
            match row.took.iter().find(|(n, _)| *n == name) {
                Some((_, d)) => {
                    let _ = write!(line, " {:.0} |", d.as_secs_f64());
                }
                None => line.push_str(" - |"),
            }
        }
        let _ = writeln!(md, "{line}");
    }
    for (name, d) in &micro.took {
        let _ = writeln!(
            md,
            "| {name} (once) | {:.0} |{}",
            d.as_secs_f64(),
            " |".repeat(rows.len().saturating_sub(1))
        );
    }
    md.push('\n');
}

/// The heading and explanation of the promotion scenario in BENCHMARKS.md.
const PROMOTION_INTRO: &str = "\n## Promotion: answers vs answers and read-write\n\nPatroni takes the leader key before PostgreSQL has finished promoting. Here a real PostgreSQL 15 standby on node2 (streaming from a primary outside the cluster) is promoted with `pg_ctl promote` right after the key moves to node2, as Patroni does, and a client writes through the VIP. Each trial starts from a fresh copy of the standby; node1 runs no PostgreSQL and its agent runs with the gate off. \"answers\" is the first ARP reply from node2, \"answers and read-write\" the first `INSERT` through the VIP that succeeds. With the gate off, node2 answers while PostgreSQL is still in recovery and clients get a read-only server; with `promotion-gate: postgres` (or the default `patroni`, which waits for Patroni's `/primary` to say the same) the VIP stays fenced until the database takes writes, and is then answered within a poll interval (5 ms). Since the client cannot write before promotion ends either way, the gate costs nothing on the time to the first successful write (the two columns differ by run-to-run noise of PostgreSQL's promotion).\n\n";
