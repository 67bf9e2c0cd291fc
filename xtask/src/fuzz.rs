//! `cargo xtask fuzz`: the cargo-fuzz (libFuzzer) targets in `fuzz/`, and the bounded run of each
//! that `cargo xtask test` ends with.
//!
//! Choices, so that this runs on the project's one stable toolchain:
//! * `--sanitizer none`: with it cargo-fuzz passes no `-Z` flag, so the stable rustc builds the
//!   targets as they are (AddressSanitizer needs `-Zsanitizer`, a nightly compiler or
//!   `RUSTC_BOOTSTRAP=1`). The targets run safe Rust (the frame logic, the config parser, the
//!   leader state machine), where ASan finds little that the bounds checks do not; the properties
//!   are assertions in the targets. `--debug-assertions` keeps overflow checks on.
//! * `--codegen-units 16` (cargo-fuzz's default is 1) and fuzz/Cargo.toml's profile keep the build
//!   of vip-agent's large dependency tree to a few minutes on two cores.
//! * Build output goes to `target/fuzz`; each target's working corpus is
//!   `target/fuzz/corpus/<target>` (kept between runs), the committed seeds in
//!   `fuzz/corpus/<target>` are only read. A crash is written by libFuzzer to
//!   `fuzz/artifacts/<target>/` (git-ignored), and the error names it with the command that replays
//!   it.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::{run_cmd, target_dir, workspace};

/// Every target in fuzz/Cargo.toml, in the order they run.
pub(crate) const TARGETS: [&str; 4] = ["frame", "config", "etcd_value", "outside"];

/// Seconds per target of `cargo xtask fuzz` unless `--seconds` says otherwise.
pub(crate) const DEFAULT_SECONDS: u64 = 300;

/// Seconds per target of the bounded run inside `cargo xtask test` (four targets: four minutes).
pub(crate) const TEST_SECONDS: u64 = 60;

/// Largest input per target (libFuzzer's `-max_len`): a jumbo frame, a config file, a history.
fn max_len(target: &str) -> u32 {
    match target {
        "frame" => 1600,
        "config" => 8192,
        _ => 4096,
    }
}

/// `cargo xtask fuzz [--seconds N] [TARGET]`: build, then run each target (or the one named) for
/// `seconds`.
pub(crate) fn run(seconds: u64, target: Option<&str>) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "unknown fuzz target `{t}`; the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    crate::setup::run(false)?;
    build()?;
    for t in targets {
        fuzz_one(t, seconds)?;
    }
    Ok(())
}

/// The step of `cargo xtask test`: every target for [`TEST_SECONDS`].
pub(crate) fn bounded() -> Result<()> {
    build()?;
    for t in TARGETS {
        fuzz_one(t, TEST_SECONDS)?;
    }
    Ok(())
}

fn cargo_fuzz() -> Command {
    let mut cmd = crate::cargo();
    cmd.arg("fuzz");
    cmd
}

/// The options `build` and `run` share (they must match, or `run` rebuilds differently).
fn build_options(cmd: &mut Command) -> &mut Command {
    cmd.args([
        "--sanitizer",
        "none",
        "--debug-assertions",
        "--codegen-units",
        "16",
    ])
    .arg("--target-dir")
    .arg(fuzz_target_dir())
}

fn fuzz_target_dir() -> PathBuf {
    target_dir().join("fuzz")
}

fn build() -> Result<()> {
    eprintln!("xtask: building the fuzz targets (cargo fuzz, release, libFuzzer)");
    run_cmd(build_options(cargo_fuzz().arg("build")))
}

/// The files in `dir` (none when it does not exist).
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

/// Run one target for `seconds`; on failure, name the reproducer and how to replay it.
fn fuzz_one(target: &str, seconds: u64) -> Result<()> {
    let root = workspace();
    let seeds = root.join("fuzz/corpus").join(target);
    let corpus = fuzz_target_dir().join("corpus").join(target);
    let artifacts = root.join("fuzz/artifacts").join(target);
    let log = fuzz_target_dir().join("logs").join(format!("{target}.log"));
    for dir in [&corpus, &artifacts] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if let Some(parent) = log.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let before = files(&artifacts);

    let mut cmd = cargo_fuzz();
    cmd.args(["run", target]);
    build_options(&mut cmd)
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .args([
            format!("-max_total_time={seconds}"),
            format!("-max_len={}", max_len(target)),
            "-timeout=10".to_owned(),
            "-rss_limit_mb=2048".to_owned(),
            "-print_final_stats=1".to_owned(),
        ]);
    if target == "config" {
        cmd.arg(format!(
            "-dict={}",
            root.join("fuzz/dict/config.dict").display()
        ));
    }
    // libFuzzer reports every new coverage point: keep that in a log, print the summary.
    let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out
        .try_clone()
        .with_context(|| format!("opening {} twice", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out).stderr(err);
    eprintln!(
        "xtask: fuzzing `{target}` for {seconds} s (log: {})",
        log.display()
    );
    let started = Instant::now();
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    let summary = Summary::parse(&text);
    eprintln!(
        "xtask: fuzz `{target}`: {} runs in {:.0?} ({} exec/s), coverage {}, corpus {} ({} new), \
         peak RSS {} MB",
        summary.runs.as_deref().unwrap_or("?"),
        started.elapsed(),
        summary.exec_per_sec.as_deref().unwrap_or("?"),
        summary.cov.as_deref().unwrap_or("?"),
        files(&corpus).len(),
        summary.new_units.as_deref().unwrap_or("?"),
        summary.peak_rss.as_deref().unwrap_or("?"),
    );
    if status.success() {
        return Ok(());
    }

    let new: Vec<PathBuf> = files(&artifacts).difference(&before).cloned().collect();
    // The failed property (the panic message), else libFuzzer's report, else the end of the log.
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.contains("panicked at"))
        .or_else(|| lines.iter().position(|l| l.contains("ERROR: libFuzzer")))
        .unwrap_or(lines.len().saturating_sub(40));
    eprintln!("xtask: from {}:", log.display());
    for line in lines.iter().skip(start).take(40) {
        eprintln!("  {line}");
    }
    match new.as_slice() {
        [] => bail!(
            "fuzz target `{target}` failed with {status} and left no reproducer; see {}",
            log.display()
        ),
        found => {
            let list: Vec<String> = found.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "fuzz target `{target}` found a failing input: {}\n  replay it with: \
                 cargo fuzz run --sanitizer none --debug-assertions \
                 --codegen-units 16 --target-dir {} {target} {}",
                list.join(", "),
                fuzz_target_dir().display(),
                list[0]
            )
        }
    }
}

/// libFuzzer's final statistics (`-print_final_stats=1`) and its last status line.
#[derive(Default)]
struct Summary {
    runs: Option<String>,
    exec_per_sec: Option<String>,
    new_units: Option<String>,
    peak_rss: Option<String>,
    cov: Option<String>,
}

impl Summary {
    fn parse(log: &str) -> Self {
        let stat = |name: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim_start_matches(':').trim().to_owned())
        };
        let cov = log
            .lines()
            .rev()
            .find_map(|l| l.split_once(" cov: "))
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(str::to_owned);
        Self {
            runs: stat("stat::number_of_executed_units"),
            exec_per_sec: stat("stat::average_exec_per_sec"),
            new_units: stat("stat::new_units_added"),
            peak_rss: stat("stat::peak_rss_mb"),
            cov,
        }
    }
}
