//! The built `vip-agent` binary's command line: help, version, the generated man page and
//! completions, usage errors; and the example configuration shipped in the package
//! (`dist/vip-agent.yml`) against a host that has its interface.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    process::{Command, Output},
};

use vip_agent::config::{self, HostFacts, InterfaceFacts};

const AGENT: &str = env!("CARGO_BIN_EXE_vip-agent");
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/vip-agent.yml");

/// Run the agent with `args`, no `VIP_*` variables inherited.
fn agent(args: &[&str]) -> Output {
    let mut cmd = Command::new(AGENT);
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VIP_") {
            cmd.env_remove(key);
        }
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {AGENT}: {e}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("stderr is UTF-8")
}

#[track_caller]
fn success(args: &[&str]) -> String {
    let out = agent(args);
    assert!(
        out.status.success(),
        "vip-agent {args:?} failed ({}): {}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

#[test]
fn help_lists_the_subcommands_and_reads_like_a_man_page() {
    let help = success(&["--help"]);
    for command in ["run", "check", "status", "detach", "version"] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "--help does not list `{command}`:\n{help}"
        );
    }
    for needle in [
        "Safety:",
        "Examples:",
        "Files:",
        "/etc/default/vip-manager.yml",
        "/sys/fs/bpf/vip-agent",
        "Signals:",
        "SIGTERM",
        "SIGHUP",
        // vip-manager's flags, with their variables.
        "--trigger-key",
        "VIP_TRIGGER_KEY",
        "--dcs-endpoints",
        "--interval",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    assert!(
        !help.contains("generate"),
        "the generate subcommand is hidden:\n{help}"
    );
    // -h is the summary: no sections, a pointer to them.
    let short = success(&["-h"]);
    assert!(!short.contains("Signals:"), "-h has the sections:\n{short}");
    assert!(short.contains("vip-agent --help"), "{short}");
    // Subcommands have their own help.
    let status = success(&["status", "--help"]);
    assert!(
        status.contains("--interface") && status.contains("--json"),
        "{status}"
    );
}

#[test]
fn version_prints_the_version_and_the_embedded_object() {
    let text = success(&["version"]);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("vip-agent {}", env!("CARGO_PKG_VERSION")).as_str()),
        "{text}"
    );
    let object = vip_agent::dataplane::ebpf_object();
    assert!(!object.is_empty());
    let expected = vip_agent::cli::VersionInfo::new(object, None);
    assert!(
        text.contains(&format!(
            "xdp object:   {} bytes, sha256 {}",
            object.len(),
            expected.xdp_object_sha256
        )),
        "{text}"
    );
    assert!(text.contains("kernel floor: Linux 5.10"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&success(&["version", "--json"])).expect("version --json is JSON");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["xdp_object_bytes"], object.len());
    assert_eq!(json["xdp_object_sha256"], expected.xdp_object_sha256);
    assert_eq!(json["kernel_floor"], "5.10");

    // --version stays clap's one line, the same as the first line of `version`.
    assert_eq!(
        success(&["--version"]).trim_end(),
        text.lines().next().unwrap_or_default()
    );
}

#[test]
fn generate_man_is_roff_with_the_sections() {
    let page = success(&["generate", "man"]);
    assert!(
        page.contains(&format!(
            ".TH vip-agent 8  \"vip-agent {}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{page}"
    );
    for section in [
        "NAME", "SYNOPSIS", "OPTIONS", "EXAMPLES", "FILES", "SIGNALS",
    ] {
        assert!(
            page.contains(&format!("\n.SH {section}\n")),
            "no .SH {section}:\n{page}"
        );
    }
    let name = page
        .split("\n.SH NAME\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("a line after .SH NAME");
    assert!(name.starts_with("vip\\-agent \\- "), "{name}");
    assert!(
        page.contains("\\fB\\-\\-trigger\\-key\\fR"),
        "options are listed"
    );
    assert!(!page.contains("generate"), "hidden subcommand in the page");
}

#[test]
fn generate_man_out_writes_one_page_per_subcommand() {
    let dir = std::env::temp_dir().join(format!("vip-agent-cli-man-{}", std::process::id()));
    let out = agent(&[
        "generate",
        "man",
        "--out",
        dir.to_str().expect("UTF-8 temp dir"),
    ]);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let detach = std::fs::read_to_string(dir.join("vip-agent-detach.8")).unwrap_or_default();
    drop(std::fs::remove_dir_all(&dir));
    assert!(out.status.success(), "{}", stderr(&out));
    files.sort();
    assert_eq!(
        files,
        [
            "vip-agent-check.8",
            "vip-agent-detach.8",
            "vip-agent-event.8",
            "vip-agent-run.8",
            "vip-agent-status.8",
            "vip-agent-version.8",
            "vip-agent.8",
        ]
    );
    // stdout lists what was written, main page first.
    assert!(
        stdout(&out)
            .lines()
            .next()
            .is_some_and(|l| l.ends_with("/vip-agent.8")),
        "{}",
        stdout(&out)
    );
    assert!(
        detach.contains(".SH NAME\nvip\\-agent\\-detach"),
        "{detach}"
    );
}

#[test]
fn bash_completions_offer_the_subcommands_and_flags() {
    let script = success(&["generate", "completions", "bash"]);
    assert!(
        script
            .lines()
            .any(|l| l.trim_start().starts_with("complete -F ") && l.ends_with(" vip-agent")),
        "no `complete -F ... vip-agent` line:\n{script}"
    );
    let top = script
        .lines()
        .find(|l| l.contains("opts=\"") && l.contains("--trigger-key"))
        .expect("the top-level word list");
    for word in [
        "run",
        "check",
        "status",
        "detach",
        "version",
        "--dcs-endpoints",
        "--config",
    ] {
        assert!(
            top.split(['"', ' ']).any(|w| w == word),
            "bash completion does not offer {word}: {top}"
        );
    }
    let checked = Command::new("bash")
        .args(["-n", "-c", &script])
        .output()
        .expect("run bash -n");
    assert!(
        checked.status.success(),
        "bash rejects the script: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    for shell in ["zsh", "fish"] {
        assert!(
            success(&["generate", "completions", shell]).contains("vip-agent"),
            "{shell}"
        );
    }
}

#[test]
fn invalid_command_lines_are_usage_errors() {
    let cases: [(&[&str], &str); 5] = [
        (&["--no-such-flag"], "unexpected argument '--no-such-flag'"),
        (&["status"], "--interface <IFACE>"),
        (&["frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (&["generate", "completions", "tcsh"], "invalid value 'tcsh'"),
        // vip-manager flags belong before a subcommand-less run, not with `status`.
        (
            &["--ip", "10.0.0.1", "status"],
            "the subcommand 'status' cannot be used with '--ip <ADDR>'",
        ),
    ];
    for (args, expected) in cases {
        let out = agent(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "vip-agent {args:?}: {}",
            stderr(&out)
        );
        let err = stderr(&out);
        assert!(err.starts_with("error: "), "vip-agent {args:?}: {err}");
        assert!(err.contains(expected), "vip-agent {args:?}: {err}");
        assert!(
            stdout(&out).is_empty(),
            "vip-agent {args:?}: usage errors go to stderr"
        );
    }
}

#[test]
fn a_bad_value_names_the_flag_and_exits_1() {
    let out = agent(&[
        "check",
        "--ip",
        "10.0.0.1",
        "--netmask",
        "33",
        "--interface",
        "eth0",
        "--trigger-key",
        "/service/x/leader",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--netmask"), "{err}");
    assert!(err.contains("33"), "{err}");
}

#[test]
fn example_config_passes_the_checks_on_a_host_with_its_interface() {
    let text = std::fs::read_to_string(EXAMPLE_CONFIG).expect("read dist/vip-agent.yml");
    let config = config::from_yaml_str(EXAMPLE_CONFIG, &text).expect("the example parses");
    assert_eq!(config.vips.len(), 1);
    let vip = &config.vips[0];
    assert_eq!(vip.ip, Ipv4Addr::new(192, 0, 2, 10));
    assert_eq!((vip.interface.as_str(), vip.prefix_len), ("eth0", 24));
    assert_eq!(vip.trigger_key, "/service/pg-main/leader");
    // No warnings about unknown or ignored keys; only the note that trigger-value (commented out)
    // defaults to the host name.
    assert!(
        config.notices.iter().all(|n| n.key == "trigger-value"),
        "the example draws notices: {:?}",
        config.notices
    );

    let host = |ipv4: Vec<(Ipv4Addr, u8)>| HostFacts {
        interfaces: BTreeMap::from([(
            "eth0".to_owned(),
            InterfaceFacts {
                up: true,
                loopback: false,
                ipv4,
                ipv6: Vec::new(),
            },
        )]),
    };
    let notices = config
        .validate_host_with(&host(vec![(Ipv4Addr::new(192, 0, 2, 11), 24)]))
        .expect("passes on a host with eth0 in 192.0.2.0/24");
    assert!(notices.is_empty(), "{notices:?}");
    // And the checks are real: without the interface it fails, naming it.
    let err = config
        .validate_host_with(&HostFacts::default())
        .expect_err("no eth0 on this host");
    assert!(err.to_string().contains("eth0"), "{err}");
}

/// `--consul-token` (vip-manager's flag) is refused like the `consul-token` key, not with a clap
/// usage error, and the token is not echoed.
#[test]
fn consul_token_is_refused_like_the_key() {
    let out = agent(&[
        "check",
        "--ip",
        "10.0.0.1",
        "--netmask",
        "24",
        "--interface",
        "eth0",
        "--trigger-key",
        "/service/x/leader",
        "--consul-token",
        "s3cr3t-token",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--consul-token / VIP_CONSUL_TOKEN: `consul-token`: Consul is not supported"),
        "{err}"
    );
    assert!(!err.contains("s3cr3t-token"), "{err}");
}

/// A key far from every known key (one a newer vip-manager or Pigsty template might add) is a
/// warning on `check`'s stderr, naming the file and the line; the configuration still loads.
#[test]
fn check_warns_about_a_far_unknown_key_with_its_line() {
    let dir = std::env::temp_dir().join(format!("vip-agent-cli-unknown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("vip-manager.yml");
    std::fs::write(
        &file,
        "ip: 10.0.0.1\nnetmask: 24\ninterface: eth0\ntrigger-key: /service/x/leader\n\
         trigger-value: a\nsome-future-setting: 5\n",
    )
    .expect("write the config");
    let out = agent(&["check", "--config", file.to_str().expect("UTF-8 path")]);
    drop(std::fs::remove_dir_all(&dir));
    let err = stderr(&out);
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning: ") && l.contains("`some-future-setting`"))
        .unwrap_or_else(|| panic!("no warning about the key:\n{err}"));
    assert!(
        warning.contains(file.to_str().expect("UTF-8 path")) && warning.contains("line 6"),
        "{warning}"
    );
    assert!(!err.contains("unknown key `some-future-setting`"), "{err}");
}

/// Run the agent with `args` and extra environment variables, no `VIP_*` variables inherited, and
/// kill it if it has not finished after `limit` (a read that blocks forever must fail the test,
/// not hang it).
fn agent_bounded(args: &[&str], env: &[(&str, &str)], limit: std::time::Duration) -> Output {
    let mut cmd = Command::new(AGENT);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VIP_") || key.to_string_lossy().starts_with("SUDO_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {AGENT}: {e}"));
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait for vip-agent").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child
                .wait_with_output()
                .expect("collect vip-agent's output");
            panic!(
                "vip-agent {args:?} still ran after {limit:?}: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
        .wait_with_output()
        .expect("collect vip-agent's output")
}

#[test]
fn a_config_that_is_not_a_regular_file_is_refused_without_reading_it() {
    let dir = TempDir::new();
    let fifo = dir.path().join("config.fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    for path in [fifo.to_str().expect("UTF-8 path"), "/dev/zero", "/"] {
        let out = agent_bounded(
            &["check", "--config", path],
            &[],
            std::time::Duration::from_secs(20),
        );
        assert!(!out.status.success(), "check --config {path} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains(path) && err.contains("not a regular file"),
            "check --config {path}: {err}"
        );
    }
}

#[test]
fn a_config_file_larger_than_the_cap_is_refused() {
    let dir = TempDir::new();
    let big = dir.path().join("big.yml");
    // Valid YAML all the way (comments), so only the size can make it fail.
    let line = format!("# {}\n", "x".repeat(1021));
    std::fs::write(&big, line.repeat(2048)).expect("write a 2 MiB config");
    let path = big.to_str().expect("UTF-8 path");
    let out = agent_bounded(
        &["check", "--config", path],
        &[],
        std::time::Duration::from_secs(20),
    );
    assert!(!out.status.success(), "a 2 MiB config was accepted");
    let err = stderr(&out);
    assert!(err.contains(path) && err.contains("larger than"), "{err}");
}

/// Under the documented sudoers rule (`postgres ALL=(root) NOPASSWD: /usr/bin/vip-agent event *`),
/// the caller must not choose what root reads or connects to (issue 16, item 9).
#[test]
fn event_under_sudo_refuses_config_and_socket_choices() {
    let dir = TempDir::new();
    let socket = dir.path().join("other.sock");
    let socket = socket.to_str().expect("UTF-8 path");
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (
            &[
                "event",
                "--config",
                "/etc/shadow",
                "1",
                "standby_promote",
                "1",
            ],
            &[],
            "--config",
        ),
        (
            &["event", "--socket", socket, "1", "standby_promote", "1"],
            &[],
            "--socket",
        ),
        (
            &["event", "1", "standby_promote", "1"],
            &[("VIP_REPMGR_SOCKET", socket)],
            "VIP_REPMGR_SOCKET",
        ),
    ];
    for (args, env, named) in cases {
        let mut env = env.to_vec();
        env.extend([("SUDO_UID", "999"), ("SUDO_USER", "postgres")]);
        let out = agent_bounded(args, &env, std::time::Duration::from_secs(20));
        assert!(!out.status.success(), "{args:?} under sudo succeeded");
        let err = stderr(&out);
        assert!(
            err.contains(named) && err.contains("sudo"),
            "{args:?} under sudo: {err}"
        );
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vip-agent-cli-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        Self(dir)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// In a time namespace, CLOCK_MONOTONIC carries an offset bpf_ktime_get_ns() does not: every
/// deadline would be off by it, so the agent refuses to run (issue 16, item 16).
#[test]
fn the_daemon_refuses_a_time_namespace_with_a_monotonic_offset() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true: this test needs root (a time namespace)"
        );
        eprintln!("SKIPPED: creating a time namespace needs root");
        return;
    }
    // An interface that does not exist, in an empty network namespace: without the clock check
    // the agent stops at the host checks, and it can never touch the host's network.
    let dir = TempDir::new();
    let config = dir.path().join("vip.yml");
    std::fs::write(
        &config,
        "ip: 10.0.0.10\nnetmask: 24\ninterface: vipnone0\ntrigger-key: /service/pg/leader\n\
         trigger-value: node-a\ndcs-endpoints: http://127.0.0.1:2379\n",
    )
    .expect("write the config");
    let out = Command::new("unshare")
        .args([
            "--net",
            "--time",
            "--monotonic",
            "3600",
            "--fork",
            "--",
            AGENT,
        ])
        .args(["run", "--config", config.to_str().expect("UTF-8 path")])
        .env_remove("VIP_AGENT_LOG")
        .output()
        .expect("run unshare");
    assert!(!out.status.success(), "ran with an offset clock");
    let err = stderr(&out);
    assert!(
        err.contains("time namespace") && err.contains("3600 s"),
        "{err}"
    );
}
