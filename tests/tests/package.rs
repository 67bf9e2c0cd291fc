//! `cargo xtask package` builds a Debian package (cargo-deb) and an RPM (cargo-generate-rpm) that
//! have what they say: lintian finds no error or warning in the .deb (overrides only with a written
//! reason), `rpm -qip`/`-qlp` show the RPM's fields, files, config files and scriptlets, and the
//! .deb installs into a throwaway root and runs there.
//!
//! Slow on a cold target directory: it runs `cargo xtask package`, which makes a release build of
//! vip-agent (minutes on a 2-core machine; seconds when `cargo xtask demo`, `bench` or an earlier
//! run built it). The build, contents and maintainer-script checks need no privileges; running
//! `vip-agent check` on the shipped example configuration needs a network namespace (root), and
//! skips loudly without one (fails under CI).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use vip_tests::{NetNs, require_privileges};

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vip-tests-package-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        drop(fs::remove_dir_all(&self.0));
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `cargo xtask package`, with the cargo that runs this test; returns the `.deb` and the `.rpm` it
/// printed.
fn build_packages() -> (PathBuf, PathBuf) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(WORKSPACE).args(["xtask", "package"]);
    let out = run(&mut cmd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cargo xtask package failed ({}):\n{stderr}",
        out.status
    );
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    // The lines on stdout are the packages' paths; progress went to stderr.
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("xtask package: generating the man pages"),
        "the long steps say what they do:\n{stderr}"
    );
    (PathBuf::from(lines[0]), PathBuf::from(lines[1]))
}

/// Writes `script` with every `(from, to)` replacement applied (each must occur) and mode 0755.
fn rewritten(dir: &Path, name: &str, script: &str, replacements: &[(&str, &str)]) -> PathBuf {
    let mut text = script.to_owned();
    for (from, to) in replacements {
        assert!(text.contains(from), "{name} should contain {from:?}");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    fs::write(&path, text).expect("write the rewritten script");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

/// A fake command at `dir/name` that appends its arguments, one call a line, to `dir/name.log`.
fn fake(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(
        &path,
        format!("#!/bin/sh\necho \"$*\" >> '{}.log'\n", path.display()),
    )
    .expect("write the fake command");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn calls(fake: &Path) -> Vec<String> {
    fs::read_to_string(format!("{}.log", fake.display()))
        .map(|log| log.lines().map(str::to_owned).collect())
        .unwrap_or_default()
}

#[test]
fn package_builds_installs_and_runs() {
    let (deb, rpm) = build_packages();
    let arch = run_ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb.file_name().and_then(|n| n.to_str()),
        Some(format!("vip-agent_{VERSION}-1_{}.deb", arch.trim()).as_str())
    );
    assert!(
        deb.parent().is_some_and(|d| d.ends_with("target/debian")),
        "{}",
        deb.display()
    );

    // Control fields.
    let field = |name: &str| -> String {
        run_ok(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_owned()
    };
    assert_eq!(field("Package"), "vip-agent");
    assert_eq!(field("Version"), format!("{VERSION}-1"));
    assert_eq!(field("Architecture"), arch.trim());
    let depends = field("Depends");
    assert!(depends.starts_with("libc6 (>= 2."), "Depends: {depends}");
    assert!(field("Suggests").contains("etcd"), "Suggests");
    assert_eq!(field("Conflicts"), "", "vip-manager may stay installed");
    assert!(!field("Description").is_empty());

    // Contents, with owners and modes.
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let entry = |path: &str| -> String {
        listing
            .lines()
            .find(|l| l.ends_with(&format!(" ./{path}")))
            .unwrap_or_else(|| panic!("{path} is not in the package:\n{listing}"))
            .to_owned()
    };
    for (path, mode) in [
        ("usr/bin/vip-agent", "-rwxr-xr-x"),
        ("usr/lib/systemd/system/vip-agent.service", "-rw-r--r--"),
        ("usr/lib/systemd/system/vip-agent@.service", "-rw-r--r--"),
        ("etc/vip-agent/vip-agent.yml", "-rw-r-----"),
        ("usr/share/man/man8/vip-agent.8.gz", "-rw-r--r--"),
        ("usr/share/man/man8/vip-agent-status.8.gz", "-rw-r--r--"),
        (
            "usr/share/bash-completion/completions/vip-agent",
            "-rw-r--r--",
        ),
        ("usr/share/zsh/vendor-completions/_vip-agent", "-rw-r--r--"),
        (
            "usr/share/fish/vendor_completions.d/vip-agent.fish",
            "-rw-r--r--",
        ),
        ("usr/share/doc/vip-agent/copyright", "-rw-r--r--"),
        ("usr/share/doc/vip-agent/changelog.Debian.gz", "-rw-r--r--"),
        ("usr/share/doc/vip-agent/README.md", "-rw-r--r--"),
        (
            "usr/share/doc/vip-agent/examples/vip-manager.service.d/vip-agent.conf",
            "-rw-r--r--",
        ),
        (
            "usr/share/doc/vip-agent/examples/grafana/vip-agent.json",
            "-rw-r--r--",
        ),
        (
            "usr/share/doc/vip-agent/examples/prometheus/vip-agent.rules.yml",
            "-rw-r--r--",
        ),
        (
            "usr/share/doc/vip-agent/examples/pigsty-vip-manager.yml",
            "-rw-r--r--",
        ),
    ] {
        let line = entry(path);
        assert!(line.starts_with(mode), "{path}: {line}");
        // Owned by root: names (dpkg-deb --root-owner-group) or numbers (cargo-deb).
        assert!(
            line.contains(" root/root ") || line.contains(" 0/0 "),
            "{path}: {line}"
        );
    }
    assert!(
        !listing.contains("vip-agent-help.8") && !listing.contains("generate"),
        "{listing}"
    );

    // Install into a throwaway root.
    let root = TempDir::new("root");
    run_ok(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(root.path()),
    );
    let installed = |path: &str| root.path().join(path);
    let ws = Path::new(WORKSPACE);
    for (shipped, source) in [
        (
            "usr/lib/systemd/system/vip-agent.service",
            "dist/systemd/vip-agent.service",
        ),
        (
            "usr/lib/systemd/system/vip-agent@.service",
            "dist/systemd/vip-agent@.service",
        ),
        (
            "usr/share/doc/vip-agent/examples/vip-manager.service.d/vip-agent.conf",
            "dist/systemd/vip-manager.service.d/vip-agent.conf",
        ),
        ("etc/vip-agent/vip-agent.yml", "dist/vip-agent.yml"),
        ("usr/share/doc/vip-agent/README.md", "README.md"),
        (
            "usr/share/doc/vip-agent/examples/pigsty-vip-manager.yml",
            "examples/pigsty-vip-manager.yml",
        ),
    ] {
        assert_eq!(
            read(&installed(shipped)),
            read(&ws.join(source)),
            "{shipped} differs from {source}"
        );
    }

    // The installed binary runs and carries the same XDP object as this build.
    let agent = installed("usr/bin/vip-agent");
    let version = run_ok(Command::new(&agent).arg("version"));
    assert_eq!(
        version.lines().next(),
        Some(format!("vip-agent {VERSION}").as_str()),
        "{version}"
    );
    let expected = vip_agent::cli::VersionInfo::new(vip_agent::dataplane::ebpf_object(), None);
    assert!(
        version.contains(&format!("sha256 {}", expected.xdp_object_sha256)),
        "the packaged binary embeds another XDP object than this build:\n{version}"
    );

    let page = run_ok(
        Command::new("gzip")
            .arg("-dc")
            .arg(installed("usr/share/man/man8/vip-agent.8.gz")),
    );
    assert!(page.contains(".TH vip-agent 8"), "{page}");
    assert!(page.contains("\n.SH NAME\nvip\\-agent \\- "), "{page}");
    assert!(page.contains("\n.SH FILES\n"), "{page}");
    let bash = installed("usr/share/bash-completion/completions/vip-agent");
    run_ok(Command::new("bash").arg("-n").arg(&bash));
    assert!(
        read(&bash).contains("complete -F _vip__agent"),
        "bash completion"
    );

    let changelog = run_ok(
        Command::new("gzip")
            .arg("-dc")
            .arg(installed("usr/share/doc/vip-agent/changelog.Debian.gz")),
    );
    assert!(
        changelog.starts_with(&format!("vip-agent ({VERSION}-1) ")),
        "the changelog's first entry is this version: {changelog}"
    );

    lintian_is_clean(&deb);
    maintainer_scripts(&deb);
    rpm_inspects(&rpm);
    example_config_checks(&agent, &installed("etc/vip-agent/vip-agent.yml"));
}

/// lintian: no error and no warning. Overrides live in the package
/// (/usr/share/lintian/overrides/vip-agent), each under a comment that gives its reason.
fn lintian_is_clean(deb: &Path) {
    let out = run(Command::new("lintian")
        .args(["--fail-on", "error,warning", "--display-info"])
        .arg(deb));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("lintian {}:\n{report}", deb.display());
    assert!(out.status.success(), "lintian fails the .deb:\n{report}");
    for line in report.lines() {
        assert!(
            !line.starts_with("E: ") && !line.starts_with("W: "),
            "lintian: {line}"
        );
    }
    // Every override has a written reason: a comment line right above it.
    let overrides = TempDir::new("overrides");
    run_ok(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(deb)
            .arg(overrides.path()),
    );
    let file = overrides
        .path()
        .join("usr/share/lintian/overrides/vip-agent");
    if let Ok(text) = fs::read_to_string(&file) {
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            assert!(
                i > 0 && lines[i - 1].starts_with("# ") && lines[i - 1].len() > 20,
                "lintian override without a reason above it: {line}"
            );
        }
    }
}

/// The RPM, inspected with Debian's rpm: its header, files, config files and scriptlets.
fn rpm_inspects(rpm: &Path) {
    let arch = std::env::consts::ARCH;
    assert_eq!(
        rpm.file_name().and_then(|n| n.to_str()),
        Some(format!("vip-agent-{VERSION}-1.{arch}.rpm").as_str())
    );
    let rpm_q = |args: &[&str]| run_ok(Command::new("rpm").args(args).arg(rpm));
    let info = rpm_q(&["-qip"]);
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("no {name} in rpm -qip:\n{info}"))
    };
    assert_eq!(field("Name"), "vip-agent", "{info}");
    assert_eq!(field("Version"), VERSION, "{info}");
    assert_eq!(field("Release"), "1", "{info}");
    assert_eq!(field("Architecture"), arch, "{info}");
    assert_eq!(field("License"), "MIT OR Apache-2.0", "{info}");
    assert!(field("Summary").contains("XDP"), "{info}");

    let files = rpm_q(&["-qlp"]);
    for path in [
        "/usr/bin/vip-agent",
        "/usr/lib/systemd/system/vip-agent.service",
        "/usr/lib/systemd/system/vip-agent@.service",
        "/etc/vip-agent/vip-agent.yml",
        "/usr/share/man/man8/vip-agent.8.gz",
        "/usr/share/man/man8/vip-agent-status.8.gz",
        "/usr/share/bash-completion/completions/vip-agent",
        "/usr/share/zsh/site-functions/_vip-agent",
        "/usr/share/fish/vendor_completions.d/vip-agent.fish",
        "/usr/share/licenses/vip-agent/copyright",
        "/usr/share/doc/vip-agent/README.md",
        "/usr/share/doc/vip-agent/examples/vip-manager.service.d/vip-agent.conf",
    ] {
        assert!(
            files.lines().any(|l| l == path),
            "{path} not in the RPM:\n{files}"
        );
    }
    // Modes and owners (rpm -qlvp: ls -l style).
    let long = rpm_q(&["-qlvp"]);
    let mode = |path: &str| -> String {
        long.lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} in rpm -qlvp:\n{long}"))
            .to_owned()
    };
    assert!(
        mode("/usr/bin/vip-agent").starts_with("-rwxr-xr-x"),
        "{long}"
    );
    let config = mode("/etc/vip-agent/vip-agent.yml");
    assert!(config.starts_with("-rw-r-----"), "{config}");
    assert!(config.contains(" root "), "{config}");
    // The configuration is %config(noreplace); the units are not configuration.
    let configs = rpm_q(&["-qcp"]);
    assert_eq!(configs.trim(), "/etc/vip-agent/vip-agent.yml", "{configs}");
    let docs = rpm_q(&["-qdp"]);
    assert!(
        docs.contains("/usr/share/man/man8/vip-agent.8.gz"),
        "{docs}"
    );

    // Scriptlets: daemon-reload after install; on removal ($1 = 0) stop and detach, as the .deb.
    let scripts = rpm_q(&["-qp", "--scripts"]);
    assert!(scripts.contains("postinstall scriptlet"), "{scripts}");
    assert!(scripts.contains("daemon-reload"), "{scripts}");
    assert!(scripts.contains("preuninstall scriptlet"), "{scripts}");
    assert!(
        scripts.contains("/usr/bin/vip-agent detach --interface"),
        "{scripts}"
    );
    assert!(scripts.contains("rm -rf /var/lib/vip-agent"), "{scripts}");
    for verb in ["enable", "start ", "restart"] {
        assert!(
            !scripts.contains(&format!("systemctl {verb}")),
            "nothing is enabled or started: {scripts}"
        );
    }
    let requires = rpm_q(&["-qp", "--requires"]);
    assert!(requires.contains("libc.so.6"), "{requires}");
}

/// DEBIAN/: the conffile, and what the maintainer scripts run, with systemctl, deb-systemd-helper,
/// deb-systemd-invoke and vip-agent replaced by fakes that log their calls and the paths they test
/// pointed at temp dirs.
fn maintainer_scripts(deb: &Path) {
    let control = TempDir::new("control");
    run_ok(
        Command::new("dpkg-deb")
            .arg("-e")
            .arg(deb)
            .arg(control.path()),
    );
    assert_eq!(
        read(&control.path().join("conffiles")),
        "/etc/vip-agent/vip-agent.yml\n"
    );

    let work = TempDir::new("scripts");
    let bin = work.path().join("bin");
    fs::create_dir_all(&bin).expect("fake bin dir");
    let systemctl = fake(&bin, "systemctl");
    // deb-systemd-helper on a fresh install: the unit was never installed nor enabled before.
    let helper = fake(&bin, "deb-systemd-helper");
    let log = format!("{}.log", helper.display());
    fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{log}'\n\
             case \"$*\" in *debian-installed*|*was-enabled*) exit 1;; esac\n"
        ),
    )
    .expect("write the fake deb-systemd-helper");
    let invoke = fake(&bin, "deb-systemd-invoke");
    let agent = fake(&bin, "vip-agent");
    let booted = work.path().join("run-systemd-system");
    fs::create_dir_all(&booted).expect("fake /run/systemd/system");
    let pins = work.path().join("pins");
    for iface in ["eth0", "eth1"] {
        fs::create_dir_all(pins.join(iface)).expect("fake pin dir");
    }
    let state = work.path().join("var-lib-vip-agent");
    fs::create_dir_all(&state).expect("fake /var/lib/vip-agent");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let script = |name: &str| read(&control.path().join(name));
    let run_script = |path_to_script: &Path, arg: &str| {
        run_ok(
            Command::new("sh")
                .arg(path_to_script)
                .arg(arg)
                .env("PATH", &path),
        );
    };

    for name in ["postinst", "prerm", "postrm"] {
        run_ok(Command::new("sh").arg("-n").arg(control.path().join(name)));
        assert!(
            !script(name).contains("#DEBHELPER#"),
            "{name}: the token is replaced"
        );
        // Never enable, start or restart anything: systemctl only reloads; starting and stopping
        // go through deb-systemd-invoke (policy-rc.d), which only stops.
        for line in script(name).lines() {
            let code = line.split('#').next().unwrap_or_default();
            let verb = |tool: &str| code.split_whitespace().skip_while(|w| *w != tool).nth(1);
            assert!(
                verb("systemctl").is_none_or(|v| v == "daemon-reload" || v == "--system"),
                "{name}: {line}"
            );
            assert!(
                verb("deb-systemd-invoke").is_none_or(|v| v == "stop"),
                "{name}: {line}"
            );
        }
    }

    let booted_s = booted.display().to_string();
    let pins_s = pins.display().to_string();
    let agent_s = agent.display().to_string();
    let state_s = state.display().to_string();

    // postinst: daemon-reload on configure; the debhelper fragment records the unit for purge
    // and enables nothing that was not enabled before.
    let postinst = rewritten(
        work.path(),
        "postinst",
        &script("postinst"),
        &[("/run/systemd/system", &booted_s)],
    );
    run_script(&postinst, "configure");
    assert_eq!(calls(&systemctl), ["daemon-reload"]);
    assert!(
        calls(&helper).iter().all(|c| !c.starts_with("enable")),
        "{:?}",
        calls(&helper)
    );
    assert!(calls(&invoke).is_empty(), "postinst starts nothing");

    // prerm: an upgrade stops nothing; a removal stops every agent (vip-agent.service through the
    // debhelper fragment, the template's instances by glob) and detaches every pinned interface.
    let prerm = rewritten(
        work.path(),
        "prerm",
        &script("prerm"),
        &[
            ("/run/systemd/system", &booted_s),
            (
                "PIN_ROOT=/sys/fs/bpf/vip-agent",
                &format!("PIN_ROOT={pins_s}"),
            ),
            ("/usr/bin/vip-agent", &agent_s),
        ],
    );
    run_script(&prerm, "upgrade");
    assert!(calls(&invoke).is_empty(), "upgrade stops nothing");
    assert!(calls(&agent).is_empty(), "upgrade detaches nothing");
    run_script(&prerm, "remove");
    assert_eq!(
        calls(&invoke),
        ["stop vip-agent.service", "stop vip-agent@*.service"]
    );
    assert_eq!(
        calls(&agent),
        [
            format!("detach --interface eth0 --pin-path {pins_s}"),
            format!("detach --interface eth1 --pin-path {pins_s}"),
        ]
    );

    // postrm: remove keeps the state; purge removes /var/lib/vip-agent.
    let postrm = rewritten(
        work.path(),
        "postrm",
        &script("postrm"),
        &[
            ("/run/systemd/system", &booted_s),
            ("rm -rf /var/lib/vip-agent", &format!("rm -rf {state_s}")),
            // The fragment tests for the real helper by path: never let it touch this host.
            ("/usr/bin/deb-systemd-helper", &helper.display().to_string()),
        ],
    );
    run_script(&postrm, "remove");
    assert!(state.is_dir(), "remove keeps /var/lib/vip-agent");
    run_script(&postrm, "purge");
    assert!(!state.exists(), "purge removes /var/lib/vip-agent");
    let helped = calls(&helper);
    assert!(
        helped.iter().any(|c| c.starts_with("purge ")),
        "purge forgets the unit's enablement state: {helped:?}"
    );
}

/// The shipped example configuration passes `vip-agent check`, run by the installed binary in a
/// network namespace that has the interface it names (and fails, naming it, before that).
fn example_config_checks(agent: &Path, config: &Path) {
    const TEST: &str = "package_builds_installs_and_runs (vip-agent check of the example)";
    if !require_privileges(TEST) {
        return;
    }
    let ns = NetNs::new("pkg");
    let check = || {
        let mut cmd = ns.command(agent.to_str().expect("UTF-8 path"));
        cmd.arg("check").arg("--config").arg(config);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("VIP_") {
                cmd.env_remove(key);
            }
        }
        run(&mut cmd)
    };
    let missing = check();
    assert_eq!(
        missing.status.code(),
        Some(1),
        "check passes without the interface: {}",
        String::from_utf8_lossy(&missing.stdout)
    );
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("\"eth0\" does not exist"), "{err}");

    // The example's interface, in the example's (documentation) subnet, inside the namespace.
    // A veth pair inside the namespace (the dummy driver is not in every kernel).
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer",
    ]);
    ns.add_addr("eth0", "192.0.2.11/24");
    let out = check();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "vip-agent check of the example failed: {}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "ip: 192.0.2.10",
        "netmask: 24",
        "interface: eth0",
        "trigger-key: /service/pg-main/leader",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no {line:?} in:\n{stdout}"
        );
    }
}
