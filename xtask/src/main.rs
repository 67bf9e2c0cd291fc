//! `cargo xtask`: the project's own tasks.
//!
//! * `setup`: install everything a fresh Debian 12 machine needs (idempotent, quick when done);
//! * `build-ebpf`: build the XDP object (the recipe lives in vip-agent/build.rs) and show it;
//! * `test`: setup if needed, build, run every test (CI runs exactly this);
//! * `package`: a Debian package (`target/debian/vip-agent_<version>_<arch>.deb`).

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod package;
mod setup;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "vip-agent project tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
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
    /// Failover benchmark against vip-manager in the same run; writes BENCHMARKS.md and bench/.
    Bench {
        /// Switchovers per system (the method asks for at least 200).
        #[arg(long, default_value_t = 200)]
        trials: usize,
        /// Lease expiries per system (each waits for a 3 s lease to run out).
        #[arg(long, default_value_t = 20)]
        expiry_trials: usize,
        /// Seconds of the idle CPU/memory measurement (0 skips it).
        #[arg(long, default_value_t = 60)]
        idle_secs: u64,
    },
    /// Build target/debian/vip-agent_<version>_<arch>.deb: binary, systemd units, example config,
    /// man pages, completions (dpkg-deb; prints the path of the package on stdout).
    Package,
    /// Run setup if needed, build, then run every test (unit, integration, privileged netns).
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
            trials,
            expiry_trials,
            idle_secs,
        } => bench(trials, expiry_trials, idle_secs),
        Task::Test { args } => test(&args),
        Task::Package => package::run().map(|_| ()),
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
    run_cmd(Command::new(demo).arg(agent))
}

fn bench(trials: usize, expiry_trials: usize, idle_secs: u64) -> Result<()> {
    let (bench, agent) = release_build("vip-bench")?;
    run_cmd(
        Command::new(bench)
            .arg("--agent")
            .arg(agent)
            .args(["--trials", &trials.to_string()])
            .args(["--expiry-trials", &expiry_trials.to_string()])
            .args(["--idle-secs", &idle_secs.to_string(), "--out"])
            .arg(workspace()),
    )?;
    eprintln!("xtask: wrote BENCHMARKS.md, bench/results.json and bench/timeline.svg");
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    let started = std::time::Instant::now();
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
    eprintln!("xtask: all tests passed in {:.0?}", started.elapsed());
    Ok(())
}
