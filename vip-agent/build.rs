//! Builds the `vip-ebpf` XDP object and hands it to the agent, which embeds it.
//!
//! This is the project's one BPF build recipe (`cargo xtask build-ebpf` runs it through
//! `cargo build -p vip-agent`). It encodes the toolchain that works on our Debian 12 machines, which
//! differs from aya-build's rustup/nightly assumptions:
//! * Debian's `rustc-web` (rustc 1.96, /usr/bin/rustc) ships a precompiled `core` for
//!   `bpfel-unknown-none` (package `libstd-rust-web-dev-bpf`), so no `-Z build-std`;
//! * `RUSTC_BOOTSTRAP=1` because aya-ebpf enables `asm_experimental_arch` on the BPF target;
//! * bpf-linker 0.13 built against LLVM 22 (rustc 1.96's LLVM).
//!
//! `cargo xtask setup` installs all of it. When any piece is missing this script fails with one line
//! that says so.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
const EBPF_PACKAGE: &str = "vip-ebpf";

fn main() {
    if let Err(message) = build() {
        // One line, first, so it is what a user sees.
        println!("cargo::error={message}");
        std::process::exit(1);
    }
}

fn build() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or("vip-agent must live inside the workspace")?
        .to_path_buf();
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);

    for dir in ["vip-ebpf", "vip-common"] {
        println!("cargo::rerun-if-changed={}", workspace.join(dir).display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    for var in ["VIP_EBPF_RUSTC", "VIP_EBPF_CARGO", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }

    let toolchain = Toolchain::find()?;
    println!("cargo::rerun-if-changed={}", toolchain.linker.display());

    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace.join("target"), PathBuf::from)
        .join("bpf");
    let object = toolchain.build(&workspace, &target_dir)?;
    let embedded = out_dir.join(EBPF_PACKAGE);
    std::fs::copy(&object, &embedded)
        .map_err(|e| format!("copy {} to {}: {e}", object.display(), embedded.display()))?;
    println!("cargo::rustc-env=VIP_EBPF_OBJECT_PATH={}", object.display());
    Ok(())
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("{name} is not set (is this run by cargo?)"))
}

/// The BPF toolchain: a rustc with `core` for the BPF target, its cargo, and bpf-linker.
struct Toolchain {
    rustc: PathBuf,
    cargo: PathBuf,
    linker: PathBuf,
}

const SETUP_HINT: &str =
    "run `cargo xtask setup` (it installs the BPF toolchain), then build again";

impl Toolchain {
    fn find() -> Result<Self, String> {
        let rustc =
            env::var_os("VIP_EBPF_RUSTC").map_or_else(|| "/usr/bin/rustc".into(), PathBuf::from);
        let cargo =
            env::var_os("VIP_EBPF_CARGO").map_or_else(|| "/usr/bin/cargo".into(), PathBuf::from);
        for (what, path) in [("rustc", &rustc), ("cargo", &cargo)] {
            if !path.is_file() {
                return Err(format!(
                    "vip-ebpf toolchain missing: no BPF-capable {what} at {}; {SETUP_HINT}",
                    path.display()
                ));
            }
        }
        let libdir = Command::new(&rustc)
            .args(["--print", "target-libdir", "--target", TARGET])
            .output()
            .map_err(|e| {
                format!(
                    "vip-ebpf toolchain: running {} failed: {e}; {SETUP_HINT}",
                    rustc.display()
                )
            })?;
        let libdir = PathBuf::from(String::from_utf8_lossy(&libdir.stdout).trim());
        let has_core = std::fs::read_dir(&libdir).is_ok_and(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        });
        if !has_core {
            return Err(format!(
                "vip-ebpf toolchain missing: {} has no `core` for {TARGET} (package libstd-rust-web-dev-bpf); {SETUP_HINT}",
                rustc.display()
            ));
        }
        let linker = find_in_path("bpf-linker").ok_or_else(|| {
            format!("vip-ebpf toolchain missing: bpf-linker is not on PATH or in ~/.cargo/bin; {SETUP_HINT}")
        })?;
        Ok(Self {
            rustc,
            cargo,
            linker,
        })
    }

    /// Build the object and return its path.
    fn build(&self, workspace: &Path, target_dir: &Path) -> Result<PathBuf, String> {
        let mut cmd = Command::new(&self.cargo);
        cmd.current_dir(workspace)
            .args([
                "build",
                "--release",
                "--locked",
                "--target",
                TARGET,
                "--package",
                EBPF_PACKAGE,
            ])
            .arg("--target-dir")
            .arg(target_dir);
        // The outer cargo's settings are for the host build (clippy wrappers, host rustflags, its own
        // rustc): none of them may leak into the BPF build.
        for (key, _) in env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_MAKEFLAGS"
                || key.starts_with("RUSTC")
                || key == "RUSTFLAGS"
                || key == "RUSTDOCFLAGS"
            {
                cmd.env_remove(key.as_ref());
            }
        }
        let rustflags = [
            "--cfg=bpf_target_arch=\"x86_64\"",
            "-Cdebuginfo=2",
            "-Clink-arg=--btf",
        ]
        .join("\u{1f}");
        cmd.env("RUSTC", &self.rustc)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env("PATH", path_with_linker(&self.linker));
        let output = cmd
            .output()
            .map_err(|e| format!("running {} failed: {e}; {SETUP_HINT}", self.cargo.display()))?;
        if !output.status.success() {
            // Show cargo's own diagnostics, then the one-line summary.
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            return Err(format!(
                "building {EBPF_PACKAGE} for {TARGET} failed (see the compiler output above); if the toolchain is incomplete, {SETUP_HINT}"
            ));
        }
        let object = target_dir.join(TARGET).join("release").join(EBPF_PACKAGE);
        if !object.is_file() {
            return Err(format!(
                "{EBPF_PACKAGE} built but {} is missing",
                object.display()
            ));
        }
        Ok(object)
    }
}

fn cargo_home_bin() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|h| h.join("bin"))
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(cargo_home_bin())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn path_with_linker(linker: &Path) -> OsString {
    let mut dirs: Vec<PathBuf> = linker.parent().map(Path::to_path_buf).into_iter().collect();
    if let Some(path) = env::var_os("PATH") {
        dirs.extend(env::split_paths(&path));
    }
    env::join_paths(dirs).unwrap_or_default()
}
