//! `cargo xtask setup`: make a fresh Debian 12 machine able to build and test vip-agent.
//!
//! Idempotent: it asks dpkg, bpf-linker and the cargo subcommands (cargo-fuzz, cargo-deb,
//! cargo-generate-rpm, each pinned) what is there and installs only what is missing or of another
//! version, so a second run takes well under a second.

use std::process::Command;

use anyhow::{Result, bail};

use crate::run_cmd;

/// Debian packages, each with why we need it.
const PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "rustc 1.96 at /usr/bin/rustc, the compiler for the BPF target",
    ),
    ("cargo-web", "the cargo that goes with it"),
    (
        "libstd-rust-web-dev-bpf",
        "precompiled `core` for bpfel-unknown-none",
    ),
    (
        "llvm-22-dev",
        "LLVM 22 for building bpf-linker (rustc 1.96's LLVM)",
    ),
    (
        "libpolly-22-dev",
        "needed to link bpf-linker against LLVM 22",
    ),
    ("zlib1g-dev", "bpf-linker link dependency"),
    ("libzstd-dev", "bpf-linker link dependency"),
    (
        "protobuf-compiler",
        "protoc, for etcd-client's generated gRPC code",
    ),
    (
        "libprotobuf-dev",
        "google/protobuf/*.proto, imported by etcd-client's protos",
    ),
    (
        "etcd-server",
        "etcd 3.4 for the integration tests, demo and benchmark",
    ),
    ("etcd-client", "etcdctl"),
    (
        "vip-manager",
        "the tool we replace, benchmarked side by side",
    ),
    (
        "keepalived",
        "VRRP, benchmarked side by side (its service stays off: no /etc/keepalived/keepalived.conf)",
    ),
    (
        "iproute2",
        "ip netns / veth / bridge for the test topologies",
    ),
    ("iputils-ping", "ping in the end-to-end tests"),
    ("arping", "ARP probes in the end-to-end tests"),
    ("tcpdump", "packet captures in the benchmark"),
    ("ethtool", "NIC settings (GRO) for native-mode XDP on veth"),
    ("bpftool", "inspecting the loaded program"),
    ("openssl", "test certificates for etcd TLS"),
    ("systemd", "systemd-analyze verify for the unit-file tests"),
    ("binutils", "readelf and strip for cargo xtask package"),
    (
        "g++",
        "the C++ compiler libfuzzer-sys builds libFuzzer with (cargo xtask fuzz)",
    ),
    (
        "postgresql-15",
        "a real standby promoted under the promotion gate (gate_postgres test)",
    ),
    (
        "patroni",
        "Patroni 3.0.2, the real cluster manager of the end-to-end Patroni tests and the benchmark",
    ),
    (
        "python3-etcd",
        "Patroni's etcd (v2) DCS module, which its etcd3 module imports too",
    ),
    (
        "postgresql-15-repmgr",
        "repmgr 5.3.3 and repmgrd, the real cluster manager of the end-to-end repmgr tests",
    ),
    (
        "openssh-server",
        "sshd inside the test namespaces: repmgr's switchover reaches the other node over ssh",
    ),
    (
        "nftables",
        "silent packet drops (partitions) in the end-to-end tests",
    ),
    ("lintian", "the package test checks the .deb with it"),
    ("rpm", "rpm -qip / -qlp: the package test inspects the .rpm"),
    (
        "haproxy",
        "Debian's HAProxy, configured as Pigsty does, in front of the agents (haproxy test; its \
         service is disabled after install)",
    ),
    (
        "prometheus",
        "promtool check rules for dist/prometheus (its server is disabled after install)",
    ),
    (
        "libseccomp-dev",
        "libseccomp for vip-sandbox, which applies the unit's SystemCallFilter= in the tests",
    ),
];

/// Services that Debian starts when their package is installed and the tests only need the
/// binaries of: stopped and disabled right after this setup installs them.
const SERVICES_OFF: &[(&str, &str)] = &[
    ("haproxy", "haproxy.service"),
    ("prometheus", "prometheus.service"),
];

/// cargo subcommands, pinned, installed with `cargo install --locked`: (crate, version, the
/// subcommand that prints `<crate> <version>` with `--version`, why).
const CARGO_TOOLS: &[(&str, &str, &str, &str)] = &[
    (
        "cargo-deb",
        "3.8.0",
        "deb",
        "the .deb of `cargo xtask package`",
    ),
    (
        "cargo-generate-rpm",
        "0.21.1",
        "generate-rpm",
        "the .rpm of `cargo xtask package`",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// cargo-fuzz, for the libFuzzer targets in fuzz/ (`cargo xtask fuzz`, and the bounded run in
/// `cargo xtask test`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub(crate) fn run(check_only: bool) -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(name, _)| !dpkg_installed(name))
        .map(|(name, _)| *name)
        .collect();
    let linker_ok = bpf_linker_version().as_deref() == Some(BPF_LINKER_VERSION);
    let fuzz_ok = cargo_fuzz_version().as_deref() == Some(CARGO_FUZZ_VERSION);
    let tools_missing: Vec<&(&str, &str, &str, &str)> = CARGO_TOOLS
        .iter()
        .filter(|(name, version, sub, _)| cargo_tool_version(name, sub).as_deref() != Some(version))
        .collect();

    if missing.is_empty() && linker_ok && fuzz_ok && tools_missing.is_empty() {
        eprintln!("xtask setup: everything is installed");
        return Ok(());
    }
    if check_only {
        for name in &missing {
            let why = PACKAGES
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, w)| w);
            eprintln!("missing Debian package {name}: {why}");
        }
        if !linker_ok {
            eprintln!("missing bpf-linker {BPF_LINKER_VERSION} (LLVM 22)");
        }
        if !fuzz_ok {
            eprintln!("missing cargo-fuzz {CARGO_FUZZ_VERSION}");
        }
        for (name, version, _, why) in &tools_missing {
            eprintln!("missing {name} {version}: {why}");
        }
        bail!("setup is incomplete: run `cargo xtask setup`");
    }
    if (!missing.is_empty() || !linker_ok) && !is_root() {
        bail!(
            "setup needs root to install {} (apt-get); run it as root or with sudo",
            if missing.is_empty() {
                "bpf-linker".to_owned()
            } else {
                missing.join(", ")
            }
        );
    }
    if !missing.is_empty() {
        eprintln!(
            "xtask setup: installing Debian packages: {}",
            missing.join(" ")
        );
        run_cmd(Command::new("apt-get").arg("update").arg("-q"))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if std::path::Path::new("/run/systemd/system").is_dir() {
            for (package, service) in SERVICES_OFF {
                if missing.contains(package) {
                    run_cmd(Command::new("systemctl").args(["disable", "--now", service]))?;
                }
            }
        }
    }
    if !linker_ok {
        eprintln!(
            "xtask setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)"
        );
        run_cmd(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
        match bpf_linker_version() {
            Some(v) if v == BPF_LINKER_VERSION => {}
            other => {
                bail!("bpf-linker install finished but `bpf-linker --version` reports {other:?}")
            }
        }
    }
    if !fuzz_ok {
        eprintln!("xtask setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (a minute or two)");
        run_cmd(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ]),
        )?;
        match cargo_fuzz_version() {
            Some(v) if v == CARGO_FUZZ_VERSION => {}
            other => {
                bail!("cargo-fuzz install finished but `cargo fuzz --version` reports {other:?}")
            }
        }
    }
    for (name, version, sub, _) in tools_missing {
        eprintln!("xtask setup: installing {name} {version} (a few minutes)");
        run_cmd(
            Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())).args([
                "install",
                name,
                "--version",
                version,
                "--locked",
            ]),
        )?;
        match cargo_tool_version(name, sub) {
            Some(v) if v == *version => {}
            other => bail!("{name} install finished but `cargo {sub} --version` reports {other:?}"),
        }
    }
    eprintln!("xtask setup: done");
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
}

/// The installed bpf-linker's version, looked up on PATH and in ~/.cargo/bin.
fn bpf_linker_version() -> Option<String> {
    let home_bin = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .map(|h| h.join("bin/bpf-linker"));
    let candidates = std::iter::once(std::path::PathBuf::from("bpf-linker")).chain(home_bin);
    for bin in candidates {
        if let Ok(out) = Command::new(&bin).arg("--version").output()
            && out.status.success()
        {
            let text = String::from_utf8_lossy(&out.stdout);
            return text.split_whitespace().nth(1).map(str::to_owned);
        }
    }
    None
}

/// The installed cargo-fuzz's version (`cargo fuzz --version` prints `cargo-fuzz 0.13.2`).
fn cargo_fuzz_version() -> Option<String> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["fuzz", "--version"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .map(str::to_owned)
}

/// The version a cargo subcommand reports: `cargo <sub> --version` prints `<name> <version>` (or
/// `cargo-<sub> <version>`).
fn cargo_tool_version(name: &str, sub: &str) -> Option<String> {
    let out = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([sub, "--version"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    let first = words.next()?;
    (first == name || first == format!("cargo-{sub}"))
        .then(|| words.next().map(|v| v.trim_start_matches('v').to_owned()))
        .flatten()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
