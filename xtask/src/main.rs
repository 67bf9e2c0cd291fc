//! `cargo xtask`: the project's own tasks.
//!
//! * `setup`: install everything a fresh Debian 12 machine needs (idempotent, quick when done);
//! * `build-ebpf`: build the XDP object (the recipe lives in vip-agent/build.rs) and show it;
//! * `test`: setup if needed, build, run every test, then each fuzz target briefly (CI runs exactly
//!   this);
//! * `fuzz`: the cargo-fuzz targets in fuzz/, for longer (see fuzz.rs);
//! * `soak`: the fault suite for longer, writing RELIABILITY.md;
//! * `package`: a Debian package and an RPM (`target/debian/`, `target/generate-rpm/`).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod disk;
mod fuzz;
mod package;
mod setup;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "vip-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once from the command line; boxing the bench options would only obscure clap's derive"
)]
enum Task {
    /// Install the Debian packages and bpf-linker this project needs (idempotent).
    Setup {
        /// Only report what is missing; install nothing.
        #[arg(long)]
        check: bool,
    },
    /// Build the vip-ebpf XDP object and print where it is.
    BuildEbpf,
    /// A two-node cluster in network namespaces with real etcd: failovers shown with their timing.
    Demo,
    /// Failover benchmark of vip-agent against vip-manager and keepalived in the same run; writes
    /// BENCHMARKS.md and bench/. Every scenario runs 200 trials per system unless told otherwise
    /// (hours: the slow scenarios wait seconds per trial); `--quick` runs a handful of each slow
    /// scenario (about an hour in all). It ends with the real-Patroni part, which `--patroni` runs
    /// alone.
    Bench {
        /// Keep the 200 switchovers, run 20 lease expiries, 10 partitions, 5 agent kills, 3 etcd
        /// outages per shape and 20 promotions per gate setting; the flags below override.
        #[arg(long)]
        quick: bool,
        /// Switchovers per system (default 200).
        #[arg(long)]
        trials: Option<usize>,
        /// Lease expiries per system (each waits for a 3 s lease to run out; default 200).
        #[arg(long)]
        expiry_trials: Option<usize>,
        /// Seconds of the idle CPU/memory measurement (0 skips it).
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
        /// Holder cut off from etcd per system (each waits for a 5 s lease to run out; 0 skips;
        /// default 200).
        #[arg(long)]
        partition_trials: Option<usize>,
        /// SIGKILLs of the holder's agent per system, each with two restarts (about 10 s each;
        /// default 200).
        #[arg(long)]
        kill_trials: Option<usize>,
        /// etcd outages per system and shape (3 s and 6 s down; 0 skips; default 200).
        #[arg(long)]
        etcd_trials: Option<usize>,
        /// Promotions of a real PostgreSQL standby per gate setting (off, postgres): "commit ->
        /// answers" against "commit -> answers and read-write" (0 skips; default 200).
        #[arg(long)]
        rw_trials: Option<usize>,
        /// Passes of the real-repmgr scenarios on one cluster (about 90 s each: bootstrap once,
        /// then agent and PostgreSQL restart, switchover, kill, restart of the crashed primary,
        /// partition; 0 skips; default 20, 3 with --quick).
        #[arg(long)]
        repmgr_passes: Option<usize>,
        /// Systems to run, comma-separated: vip-agent, vip-manager (1000 ms), vip-manager-100ms,
        /// keepalived (default: all, in a random order).
        #[arg(long)]
        systems: Option<String>,
        /// Seed of the random system order and pauses (default: the time).
        #[arg(long)]
        seed: Option<u64>,
        /// Only the real-Patroni part (vip-agent and vip-manager 1.0.2, each in front of its own
        /// Patroni 3.0.2 + PostgreSQL 15 cluster; about half an hour): replaces its section in
        /// the existing BENCHMARKS.md and writes bench/patroni.json. A whole run ends with it.
        #[arg(long)]
        patroni: bool,
        /// Only what the data plane costs the node's own traffic (TCP throughput and latency
        /// with no program and each attach mode, and the program's marginal cost in
        /// BPF_PROG_TEST_RUN; a few minutes): replaces its section in the existing BENCHMARKS.md.
        #[arg(long)]
        dataplane: bool,
        /// Real-Patroni trials per scenario and system (default 5; 0 skips the part in a whole
        /// run and keeps its section).
        #[arg(long)]
        patroni_trials: Option<usize>,
        /// Seconds of each of the four windows measuring the hold check's cost to Patroni
        /// (default 30; 0 skips it).
        #[arg(long)]
        patroni_cost_secs: Option<u64>,
        /// Real-Patroni scenarios, comma-separated: switchover, postgres_crash, kill, cut_off,
        /// outage_failsafe_on, outage_failsafe_off (default: all). `--systems` picks its systems
        /// too (vip-agent, vip-manager).
        #[arg(long)]
        patroni_scenarios: Option<String>,
        /// Only the at-most-one-answer part (issue 14: switchovers plain and with the old agent
        /// SIGSTOPped, SIGKILLed or cut off from etcd, for vip-agent with and without its fence
        /// handshake, vip-manager 1.0.2 and keepalived; about half an hour): replaces its section
        /// in the existing BENCHMARKS.md and writes bench/answer.json.
        #[arg(long)]
        answer: bool,
        /// `--answer`: plain switchovers of vip-agent with the handshake (default 1000).
        #[arg(long)]
        answer_switchovers: Option<usize>,
        /// `--answer`: plain switchovers of vip-agent without the handshake (default 200).
        #[arg(long)]
        answer_cost_trials: Option<usize>,
        /// `--answer`: plain switchovers of vip-manager and keepalived (default 20).
        #[arg(long)]
        answer_other_switchovers: Option<usize>,
        /// `--answer`: trials of each fault per system (default 8).
        #[arg(long)]
        answer_fault_trials: Option<usize>,
        /// Where BENCHMARKS.md and bench/ go (default: the workspace root, the committed report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Build target/debian/vip-agent_<version>-1_<arch>.deb (cargo-deb) and
    /// target/generate-rpm/vip-agent-<version>-1.<arch>.rpm (cargo-generate-rpm): binary, systemd
    /// units, example config, man pages, completions, changelog; prints both paths on stdout.
    Package,
    /// The fault suite (tests/src/chaos.rs) for longer than `test` runs it; writes RELIABILITY.md
    /// (fails when any invariant was violated).
    Soak {
        /// Minutes of fault injection.
        #[arg(long, default_value_t = 10.0)]
        minutes: f64,
        /// RNG seed, to replay a run (default: random, printed).
        #[arg(long)]
        seed: Option<u64>,
        /// Nodes with an agent (2 to 7).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Where RELIABILITY.md goes (default: the workspace root, the committed report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run the cargo-fuzz targets in fuzz/ (libFuzzer): each for --seconds, or only TARGET.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u64,
        /// One of frame, config, etcd_value (default: all, one after the other).
        target: Option<String>,
    },
    /// Run setup if needed, build, then run every test (unit, integration, privileged netns), then
    /// a bounded run of each fuzz target.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Task::Setup { check } => setup::run(check),
        Task::BuildEbpf => build_ebpf().map(|_| ()),
        Task::Demo => demo(),
        Task::Bench {
            quick,
            trials,
            expiry_trials,
            idle_secs,
            partition_trials,
            kill_trials,
            etcd_trials,
            rw_trials,
            repmgr_passes,
            systems,
            seed,
            patroni,
            dataplane,
            patroni_trials,
            patroni_cost_secs,
            patroni_scenarios,
            answer,
            answer_switchovers,
            answer_cost_trials,
            answer_other_switchovers,
            answer_fault_trials,
            out,
        } => {
            let mut args: Vec<String> = Vec::new();
            if quick {
                args.push("--quick".to_owned());
            }
            if answer {
                args.push("--answer".to_owned());
            }
            if patroni {
                args.push("--patroni".to_owned());
            }
            if dataplane {
                args.push("--dataplane".to_owned());
            }
            if let Some(n) = patroni_trials {
                args.extend(["--patroni-trials".to_owned(), n.to_string()]);
            }
            if let Some(s) = patroni_cost_secs {
                args.extend(["--patroni-cost-secs".to_owned(), s.to_string()]);
            }
            if let Some(list) = patroni_scenarios {
                args.extend(["--patroni-scenarios".to_owned(), list]);
            }
            let counts = [
                ("--trials", trials),
                ("--expiry-trials", expiry_trials),
                ("--partition-trials", partition_trials),
                ("--kill-trials", kill_trials),
                ("--etcd-trials", etcd_trials),
                ("--rw-trials", rw_trials),
                ("--repmgr-passes", repmgr_passes),
                ("--answer-switchovers", answer_switchovers),
                ("--answer-cost-trials", answer_cost_trials),
                ("--answer-other-switchovers", answer_other_switchovers),
                ("--answer-fault-trials", answer_fault_trials),
            ];
            for (flag, n) in counts {
                if let Some(n) = n {
                    args.extend([flag.to_owned(), n.to_string()]);
                }
            }
            if let Some(seed) = seed {
                args.extend(["--seed".to_owned(), seed.to_string()]);
            }
            if let Some(systems) = systems {
                args.extend(["--systems".to_owned(), systems]);
            }
            args.extend(["--idle-secs".to_owned(), idle_secs.to_string()]);
            bench(&args, out)
        }
        Task::Test { args } => test(&args),
        Task::Package => package::run(),
        Task::Fuzz { seconds, target } => fuzz::run(seconds, target.as_deref()),
        Task::Soak {
            minutes,
            seed,
            nodes,
            out,
        } => soak(minutes, seed, nodes, out),
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace());
    cmd
}

/// Run a long-lived tool of ours (demo, bench, soak) that cleans up after itself on Ctrl-C:
/// the terminal sends SIGINT to the whole foreground group, and xtask waits for the tool's
/// clean-up instead of returning the prompt while the tool still removes its namespaces.
fn run_interruptible(cmd: &mut Command) -> Result<()> {
    extern "C" fn ignore(_: libc::c_int) {}
    // A handler, not SIG_IGN: handlers are reset by exec, so the tool still sees the signal.
    // SAFETY: `ignore` is async-signal-safe (it does nothing) and lives for the whole program.
    unsafe {
        libc::signal(libc::SIGINT, ignore as *const () as libc::sighandler_t);
    }
    let result = run_cmd(cmd);
    // SAFETY: restoring the default disposition.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
    result
}

/// Run `cmd`, echoing it first; fail naming the command.
fn run_cmd(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn build_ebpf() -> Result<PathBuf> {
    eprintln!("xtask: building the XDP object through vip-agent's build script");
    run_cmd(cargo().args(["build", "--package", "vip-agent"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let object = target.join("bpf/bpfel-unknown-none/release/vip-ebpf");
    let size = std::fs::metadata(&object)
        .with_context(|| format!("the build finished but {} is missing", object.display()))?
        .len();
    println!("{} ({size} bytes)", object.display());
    Ok(object)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace().join("target"), PathBuf::from)
}

/// Setup, then a release build of vip-agent and the `vip-tests` binary `bin`; returns
/// `(path of bin, path of vip-agent)`.
fn release_build(bin: &str) -> Result<(PathBuf, PathBuf)> {
    setup::run(false)?;
    eprintln!("xtask: building vip-agent and {bin} (release)");
    run_cmd(
        cargo()
            .args([
                "build",
                "--release",
                "--package",
                "vip-agent",
                "--package",
                "vip-tests",
            ])
            .args(["--bin", "vip-agent", "--bin", bin]),
    )?;
    let release = target_dir().join("release");
    Ok((release.join(bin), release.join("vip-agent")))
}

fn demo() -> Result<()> {
    let (demo, agent) = release_build("vip-demo")?;
    run_interruptible(Command::new(demo).arg(agent))
}

fn bench(args: &[String], out: Option<PathBuf>) -> Result<()> {
    let (bench, agent) = release_build("vip-bench")?;
    let out = out.unwrap_or_else(workspace);
    let mut cmd = Command::new(bench);
    cmd.arg("--agent").arg(agent).args(args);
    run_interruptible(cmd.arg("--out").arg(&out))?;
    eprintln!(
        "xtask: wrote BENCHMARKS.md and its data in bench/ ({})",
        out.display()
    );
    Ok(())
}

fn soak(minutes: f64, seed: Option<u64>, nodes: usize, out: Option<PathBuf>) -> Result<()> {
    let (soak, agent) = release_build("vip-soak")?;
    let out = out.unwrap_or_else(workspace);
    let mut cmd = Command::new(soak);
    cmd.arg("--agent")
        .arg(agent)
        .args(["--minutes", &minutes.to_string()])
        .args(["--nodes", &nodes.to_string()])
        .arg("--out")
        .arg(&out);
    if let Some(seed) = seed {
        cmd.args(["--seed", &seed.to_string()]);
    }
    run_interruptible(&mut cmd)?;
    eprintln!("xtask: wrote {}", out.join("RELIABILITY.md").display());
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
    disk::ensure_room(&target_dir(), disk::TEST_RUN_BYTES, "`cargo xtask test`")?;
    setup::run(false)?;
    build_ebpf()?;
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--locked"]);
    if !extra.is_empty() {
        cmd.arg("--").args(extra);
    }
    if ci {
        // Privileged tests must run, not skip (vip_tests::require_privileges reads this).
        cmd.env("VIP_TESTS_REQUIRE_PRIVILEGES", "1");
    }
    run_cmd(&mut cmd)?;
    // A test-name filter selects tests: the fuzz step belongs to the whole run only.
    if extra.is_empty() {
        fuzz::bounded()?;
    }
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}
