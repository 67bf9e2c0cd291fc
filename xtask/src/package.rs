//! `cargo xtask package`: a Debian package (cargo-deb) and an RPM (cargo-generate-rpm) of vip-agent,
//! both described by `[package.metadata.deb]` and `[package.metadata.generate-rpm]` in
//! `vip-agent/Cargo.toml`.
//!
//! Steps: release build of `vip-agent` (`--locked`; its build script embeds the XDP object), the
//! man pages (gzipped) and shell completions from the built binary (`vip-agent generate`, the same
//! clap definition that parses the command line) into `target/release/package-assets/`, with a
//! stripped copy of the binary for the RPM (cargo-deb strips its own), then `cargo deb --no-build`
//! and `cargo generate-rpm`. Both tools are pinned and installed by `cargo xtask setup`.
//!
//! Output: `target/debian/vip-agent_<version>-1_<arch>.deb` and
//! `target/generate-rpm/vip-agent-<version>-1.<arch>.rpm`, their paths on stdout, one a line.
//!
//! The maintainer scripts never enable or start anything (see `dist/debian/` and `dist/rpm/`).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail, ensure};

use crate::{cargo, run_cmd, target_dir, workspace};

const PACKAGE: &str = "vip-agent";

/// Completion scripts: `vip-agent generate completions <shell>` and the file name the package
/// metadata expects under `package-assets/completions/`.
const COMPLETIONS: &[(&str, &str)] = &[
    ("bash", "vip-agent.bash"),
    ("zsh", "_vip-agent"),
    ("fish", "vip-agent.fish"),
];

/// Build both packages; their paths go to stdout.
pub(crate) fn run() -> Result<()> {
    let started = std::time::Instant::now();
    for (tool, package) in [("gzip", "gzip"), ("strip", "binutils")] {
        ensure!(
            on_path(tool),
            "{tool} is not installed; install it with `apt-get install {package}` and run \
             `cargo xtask package` again"
        );
    }
    for tool in ["deb", "generate-rpm"] {
        let found = cargo()
            .args([tool, "--version"])
            .output()
            .is_ok_and(|o| o.status.success());
        ensure!(
            found,
            "cargo-{tool} is not installed; run `cargo xtask setup` (it installs the pinned version)"
        );
    }

    eprintln!("xtask package: building vip-agent (release; the XDP object is built and embedded)");
    run_cmd(cargo().args([
        "build",
        "--release",
        "--locked",
        "--package",
        PACKAGE,
        "--bin",
        PACKAGE,
    ]))
    .context(
        "the release build failed (compiler output above); if the BPF toolchain is missing, run \
         `cargo xtask setup` first",
    )?;
    let release = target_dir().join("release");
    let binary = release.join(PACKAGE);
    let assets = release.join("package-assets");
    if assets.exists() {
        fs::remove_dir_all(&assets)
            .with_context(|| format!("remove the old {}", assets.display()))?;
    }
    generate_assets(&binary, &assets)?;

    eprintln!("xtask package: cargo deb (units, conffile, man pages, completions, changelog)");
    let deb_out = output(cargo().current_dir(workspace()).args([
        "deb",
        "--package",
        PACKAGE,
        "--no-build",
        "--locked",
    ]))
    .context("cargo deb failed")?;
    let deb = last_path(&deb_out, ".deb")?;

    eprintln!("xtask package: cargo generate-rpm");
    // It prints nothing on success: the package is the one RPM of this version it wrote.
    run_cmd(
        cargo()
            .current_dir(workspace())
            .args(["generate-rpm", "--package", PACKAGE, "--target-dir"])
            .arg(target_dir()),
    )
    .context("cargo generate-rpm failed")?;
    let rpm = find_rpm(
        &target_dir().join("generate-rpm"),
        &binary_version(&binary)?,
    )?;

    let shown = |p: &Path| {
        p.strip_prefix(workspace())
            .unwrap_or(p)
            .display()
            .to_string()
    };
    eprintln!(
        "xtask package: done in {:.0?}; inspect with `dpkg-deb -I {}` and `rpm -qilp {}`",
        started.elapsed(),
        shown(&deb),
        shown(&rpm),
    );
    // The lines on stdout: the packages' paths, for scripts and tests.
    println!("{}", deb.display());
    println!("{}", rpm.display());
    Ok(())
}

/// Man pages, completions and a stripped binary under `dir`, where the package metadata
/// (`target/release/package-assets/...`) finds them.
fn generate_assets(binary: &Path, dir: &Path) -> Result<()> {
    eprintln!("xtask package: generating the man pages from the binary");
    let man_dir = dir.join("man");
    create_dir(&man_dir)?;
    let listed = output(
        Command::new(binary)
            .args(["generate", "man", "--out"])
            .arg(&man_dir),
    )?;
    let pages: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    ensure!(
        pages.iter().any(|p| p.ends_with("/vip-agent.8")),
        "`vip-agent generate man` did not write vip-agent.8 (it wrote: {pages:?})"
    );
    for page in pages {
        // -n: no name or time stamp in the header, so the package is reproducible.
        run_cmd(Command::new("gzip").args(["-9n", "--force", page]))?;
    }

    eprintln!("xtask package: generating bash, zsh and fish completions");
    let completions = dir.join("completions");
    create_dir(&completions)?;
    for (shell, name) in COMPLETIONS {
        let script = output(Command::new(binary).args(["generate", "completions", shell]))?;
        ensure!(
            script.contains("vip-agent"),
            "the {shell} completion script does not mention vip-agent"
        );
        let path = completions.join(name);
        fs::write(&path, script).with_context(|| format!("write {}", path.display()))?;
    }

    // cargo-generate-rpm packs what it is given; cargo-deb strips its own copy the same way.
    let stripped = dir.join(PACKAGE);
    fs::copy(binary, &stripped)
        .with_context(|| format!("copy {} to {}", binary.display(), stripped.display()))?;
    run_cmd(
        Command::new("strip")
            .args([
                "--remove-section=.comment",
                "--remove-section=.note",
                "--strip-unneeded",
            ])
            .arg(&stripped),
    )
}

/// The last line of `out` that names an existing `*<ext>` file.
fn last_path(out: &str, ext: &str) -> Result<PathBuf> {
    out.lines()
        .rev()
        .map(|l| PathBuf::from(l.trim()))
        .find(|p| p.extension().is_some() && p.to_string_lossy().ends_with(ext) && p.is_file())
        .with_context(|| format!("no {ext} path in the tool's output: {out:?}"))
}

/// `vip-agent-<version>-*.rpm` in `dir`.
fn find_rpm(dir: &Path, version: &str) -> Result<PathBuf> {
    let prefix = format!("{PACKAGE}-{version}-");
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("list {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".rpm") {
            found.push(path);
        }
    }
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "cargo generate-rpm wrote no {prefix}*.rpm in {}",
            dir.display()
        ),
        many => bail!("several {prefix}*.rpm in {}: {many:?}", dir.display()),
    }
}

/// `vip-agent 0.1.0` from `vip-agent --version`: the version the binary reports is the package's.
fn binary_version(binary: &Path) -> Result<String> {
    let line = output(Command::new(binary).arg("--version"))?;
    let version = line
        .trim()
        .strip_prefix("vip-agent ")
        .with_context(|| format!("unexpected `vip-agent --version` output: {line:?}"))?;
    ensure!(
        !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~".contains(c)),
        "`vip-agent --version` says {version:?}, which is not a package version"
    );
    Ok(version.to_owned())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .any(|dir| dir.join(tool).is_file())
}

/// Run `cmd` and return its stdout; fail with its stderr.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{cmd:?} printed non-UTF-8 output"))
}

fn create_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))
}
