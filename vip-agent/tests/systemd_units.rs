//! The systemd units in `dist/systemd/` pass `systemd-analyze verify` (known keys and values,
//! dependencies that load, an executable `ExecStart=`), checked on copies whose `ExecStart=` runs
//! the binary this build made; and they say what the rest of the project relies on.
//!
//! Without `systemd-analyze` (Debian package `systemd`) the test skips loudly, except under CI,
//! where a skip is a failure.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/systemd");
const AGENT: &str = env!("CARGO_BIN_EXE_vip-agent");

const SERVICE_EXEC: &str = "ExecStart=/usr/bin/vip-agent --config /etc/default/vip-manager.yml";
const TEMPLATE_EXEC: &str = "ExecStart=/usr/bin/vip-agent --config /etc/vip-agent/%i.yml";

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vip-agent-units-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        drop(fs::remove_dir_all(&self.0));
    }
}

fn unit(name: &str) -> String {
    let path = Path::new(DIST).join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `systemd-analyze` on `PATH`, or `None` after a loud skip (a panic under CI).
fn systemd_analyze(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|dir| dir.join("systemd-analyze"))
        .find(|p| p.is_file());
    if found.is_some() {
        return found;
    }
    let reason = "systemd-analyze is not installed (Debian package `systemd`; `cargo xtask setup`)";
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("VIP_TESTS_REQUIRE_PRIVILEGES").is_ok_and(|v| v == "1");
    assert!(!ci, "{test}: {reason}; tests may not skip under CI");
    eprintln!("SKIPPED {test}: {reason}.");
    None
}

/// Writes `text` as `dir/file_name` with its `ExecStart=` (`exec`, which must be there exactly
/// once) running the binary of this build instead of /usr/bin/vip-agent.
fn install(dir: &Path, file_name: &str, text: &str, exec: &str) {
    assert_eq!(
        text.lines().filter(|l| *l == exec).count(),
        1,
        "{file_name} should contain the line {exec:?} once"
    );
    let ours = exec.replacen("/usr/bin/vip-agent", AGENT, 1);
    let rewritten: String = text
        .lines()
        .map(|l| if l == exec { ours.as_str() } else { l })
        .flat_map(|l| [l, "\n"])
        .collect();
    let path = dir.join(file_name);
    fs::write(&path, rewritten).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Runs `systemd-analyze verify` on `unit`: an error on a non-zero exit or on any diagnostic that
/// names one of our units (a warning such as an unknown key does not change the exit status).
/// `Documentation=man:vip-agent(8)` is checked too (systemd-analyze runs `man`): the pages this
/// build generates (`vip-agent generate man`, what the packages ship) go to `dir/man`, the only
/// MANPATH the check sees.
fn verify(analyze: &Path, dir: &Path, unit: &str) -> Result<(), String> {
    let man = dir.join("man");
    let man8 = man.join("man8");
    if !man8.is_dir() {
        fs::create_dir_all(&man8).unwrap_or_else(|e| panic!("{}: {e}", man8.display()));
        let out = Command::new(AGENT)
            .args(["generate", "man", "--out"])
            .arg(&man8)
            .output()
            .unwrap_or_else(|e| panic!("run {AGENT} generate man: {e}"));
        assert!(out.status.success(), "vip-agent generate man: {out:?}");
    }
    let output = Command::new(analyze)
        .arg("verify")
        .arg(dir.join(unit))
        .env("MANPATH", &man)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", analyze.display()));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let ours: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("vip-agent") || l.contains(&*dir.to_string_lossy()))
        .collect();
    if !output.status.success() || !ours.is_empty() {
        return Err(format!(
            "systemd-analyze verify {unit}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        ));
    }
    if !stderr.trim().is_empty() {
        // About other units on this host (dependencies systemd loaded), not ours.
        eprintln!("systemd-analyze verify {unit}, notes about other units:\n{stderr}");
    }
    Ok(())
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze("systemd_units_pass_systemd_analyze_verify") else {
        return;
    };
    let dir = TempDir::new();
    install(
        &dir.0,
        "vip-agent.service",
        &unit("vip-agent.service"),
        SERVICE_EXEC,
    );
    install(
        &dir.0,
        "vip-agent@.service",
        &unit("vip-agent@.service"),
        TEMPLATE_EXEC,
    );
    for unit in ["vip-agent.service", "vip-agent@pg-test.service"] {
        if let Err(e) = verify(&analyze, &dir.0, unit) {
            panic!("{e}");
        }
    }
}

#[test]
fn systemd_verify_reports_a_broken_unit() {
    // The check above must be able to fail: an unknown key is only a warning for systemd.
    let Some(analyze) = systemd_analyze("systemd_verify_reports_a_broken_unit") else {
        return;
    };
    let dir = TempDir::new();
    let broken =
        unit("vip-agent.service").replacen("\n[Service]\n", "\n[Service]\nNoSuchKey=yes\n", 1);
    install(&dir.0, "vip-agent.service", &broken, SERVICE_EXEC);
    let e = verify(&analyze, &dir.0, "vip-agent.service").unwrap_err();
    assert!(e.contains("NoSuchKey"), "{e}");
}

/// `Key=value` lines of a unit (comments and section headers left out).
fn settings(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .collect()
}

fn values<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    settings(text)
        .into_iter()
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn systemd_units_say_what_the_agent_relies_on() {
    for name in ["vip-agent.service", "vip-agent@.service"] {
        let text = unit(name);
        // The agent sends READY=1/STOPPING=1 (notify.rs) and fences on SIGTERM.
        assert_eq!(values(&text, "Type"), ["notify"], "{name}");
        assert_eq!(values(&text, "KillSignal"), ["SIGTERM"], "{name}");
        assert_eq!(values(&text, "Restart"), ["always"], "{name}");
        assert_eq!(
            values(&text, "ExecReload"),
            ["/bin/kill -HUP $MAINPID"],
            "{name}"
        );
        // Pins must stay writable: ProtectKernelTunables=yes makes /sys/fs/bpf read-only
        // (systemd 252), whatever ReadWritePaths= says.
        assert!(values(&text, "ProtectKernelTunables").is_empty(), "{name}");
        assert_eq!(values(&text, "ReadWritePaths"), ["/sys/fs/bpf"], "{name}");
        assert_eq!(
            values(&text, "AssertPathIsMountPoint"),
            ["/sys/fs/bpf"],
            "{name}"
        );
    }
    assert!(unit("vip-agent.service").lines().any(|l| l == SERVICE_EXEC));
    assert!(
        unit("vip-agent@.service")
            .lines()
            .any(|l| l == TEMPLATE_EXEC)
    );
}

#[test]
fn systemd_template_has_the_same_service_settings() {
    // Every [Service] setting but ExecStart= is the same in both units: hardening cannot drift.
    let service_section = |text: &str| -> Vec<String> {
        // The section header on a line of its own (the comments show a drop-in's "#     [Service]").
        let start = text.find("\n[Service]\n").unwrap();
        let end = text[start..].find("\n[").map_or(text.len(), |e| start + e);
        settings(&text[start..end])
            .into_iter()
            .filter(|(k, _)| *k != "ExecStart")
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    };
    assert_eq!(
        service_section(&unit("vip-agent.service")),
        service_section(&unit("vip-agent@.service"))
    );
}

/// Pigsty's `roles/pgsql/templates/vip-manager.svc`, which its playbooks render to
/// /etc/systemd/system/vip-manager.service (no template variables in it).
const PIGSTY_UNIT: &str = "\
[Unit]
Description=Manages Virtual IP for Patroni
Documentation=https://github.com/cybertec-postgresql/vip-manager
After=network-online.target
Before=patroni.service

[Service]
Type=simple
ExecStart=/usr/bin/vip-manager --config=/etc/default/vip-manager.yml
Restart=on-failure
RestartSec=5s
CPUQuota=10%

[Install]
WantedBy=multi-user.target";

const DROP_IN: &str = "vip-manager.service.d/vip-agent.conf";

/// Pigsty's unit (ExecStart= pointed at an executable that exists) and `drop_in` as its drop-in.
fn install_pigsty(dir: &Path, drop_in: &str) {
    let unit = PIGSTY_UNIT.replace("/usr/bin/vip-manager", "/bin/true");
    fs::write(dir.join("vip-manager.service"), unit).expect("write Pigsty's unit");
    fs::create_dir_all(dir.join("vip-manager.service.d")).expect("drop-in directory");
    install(
        &dir.join("vip-manager.service.d"),
        "vip-agent.conf",
        drop_in,
        SERVICE_EXEC,
    );
}

#[test]
fn pigsty_drop_in_passes_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze("pigsty_drop_in_passes_systemd_analyze_verify") else {
        return;
    };
    let dir = TempDir::new();
    install_pigsty(&dir.0, &unit(DROP_IN));
    if let Err(e) = verify(&analyze, &dir.0, "vip-manager.service") {
        panic!("{e}");
    }
    // The drop-in is read: a broken one fails the same check.
    let dir = TempDir::new();
    let broken = unit(DROP_IN).replacen("\n[Service]\n", "\n[Service]\nNoSuchKey=yes\n", 1);
    install_pigsty(&dir.0, &broken);
    let e = verify(&analyze, &dir.0, "vip-manager.service").unwrap_err();
    assert!(e.contains("NoSuchKey"), "{e}");
}

#[test]
fn pigsty_drop_in_makes_vip_manager_service_the_agent() {
    let drop_in = unit(DROP_IN);
    // Pigsty's ExecStart=, Restart= and CPUQuota= are replaced or reset; the agent's command.
    assert_eq!(
        values(&drop_in, "ExecStart"),
        ["", &SERVICE_EXEC["ExecStart=".len()..]]
    );
    assert_eq!(values(&drop_in, "CPUQuota"), [""]);
    assert_eq!(values(&drop_in, "Documentation")[0], "");
    assert_eq!(values(&drop_in, "Conflicts"), ["vip-agent.service"]);
    // Every other [Service] setting is vip-agent.service's: the hardening cannot drift.
    let service = |text: &str| -> Vec<String> {
        let start = text.find("\n[Service]\n").expect("a [Service] section");
        let end = text[start + 1..]
            .find("\n[")
            .map_or(text.len(), |e| start + 1 + e);
        settings(&text[start..end])
            .into_iter()
            .filter(|(k, _)| !["ExecStart", "CPUQuota"].contains(k))
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    };
    assert_eq!(service(&drop_in), service(&unit("vip-agent.service")));
    for key in ["StartLimitIntervalSec", "AssertPathIsMountPoint"] {
        assert_eq!(
            values(&drop_in, key),
            values(&unit("vip-agent.service"), key),
            "{key}"
        );
    }
}
