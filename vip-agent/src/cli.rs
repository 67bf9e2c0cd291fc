//! The command line: one clap definition for parsing, `--help`, the man pages and the shell
//! completions (`vip-agent generate`, used by `cargo xtask package`), plus the facts that
//! `vip-agent version` prints.
//!
//! The binary (`main.rs`) only parses with [`Cli`], sets up logging and dispatches.

use std::{
    fmt::Write as _,
    io::{self, Write},
    path::{Path, PathBuf},
};

use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;
use clap_mangen::{
    Man,
    roff::{Roff, bold, roman},
};

use crate::{config::ConfigArgs, dataplane::DEFAULT_PIN_ROOT};

pub use crate::BIN_NAME;

/// The oldest kernel vip-agent runs on: XDP through a pinned `bpf_link` (Linux 5.9), in the 5.10
/// LTS.
pub const KERNEL_FLOOR: (u32, u32) = (5, 10);

/// Section of the manual the pages belong to (system administration and daemons).
pub const MAN_SECTION: &str = "8";

const ABOUT: &str = "Patroni leader VIP failover with an XDP ARP fence (a vip-manager replacement)";

const LONG_ABOUT: &str = "\
vip-agent moves a PostgreSQL primary's floating IP (VIP) between the nodes of a Patroni cluster, \
like vip-manager and with vip-manager's configuration (file, flags and VIP_* variables), but a \
node that is not the primary cannot answer for the VIP, even when its agent is dead, hung or cut \
off from its leader source.

It follows the Patroni leader key in etcd with a v3 watch (dcs-type: etcd, the default), a \
repmgr cluster through its event notifications and PostgreSQL (dcs-type: repmgr), or Patroni's \
REST API (dcs-type: patroni). An XDP program on the VIP's interface \
answers ARP requests (IPv6: Neighbor Solicitations) for the VIP while this node holds leadership, \
and drops them, and every packet to the VIP, otherwise.

Safety: holding is a deadline in a BPF map, not a flag. The agent extends it only from fresh \
confirmations of leadership: with etcd, of the leader key's lease, never past the moment etcd \
could give the key to another node; without a lease (repmgr, Patroni's REST API), never more \
than fence-timeout after the last positive answer. A node whose agent stops renewing goes silent \
by itself. Losing leadership fences at once. fence-timeout also bounds the deadline after the \
last etcd confirmation, for nodes where Patroni and the agent can lose etcd separately.

Without a subcommand vip-agent runs the daemon, as vip-manager is run: vip-agent --config FILE. \
It runs as root on Linux 5.10 or newer.";

/// One entry of a help section: a term (command, path, signal, variable) and what it means.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// The command, file, signal or variable.
    pub term: &'static str,
    /// What it does or means.
    pub text: &'static str,
}

/// A section that `--help` prints after the options and the man page renders as its own `.SH`.
#[derive(Clone, Copy, Debug)]
pub struct HelpSection {
    /// Title, in capitals as in a man page.
    pub title: &'static str,
    /// The entries, in order.
    pub entries: &'static [Entry],
}

const fn entry(term: &'static str, text: &'static str) -> Entry {
    Entry { term, text }
}

/// EXAMPLES, FILES, SIGNALS, ENVIRONMENT and EXIT STATUS: the same text in `--help` and in the
/// man page.
pub const HELP_SECTIONS: &[HelpSection] = &[
    HelpSection {
        title: "EXAMPLES",
        entries: &[
            entry(
                "vip-agent --config /etc/default/vip-manager.yml",
                "Run with vip-manager's configuration file, unchanged (what vip-agent.service does).",
            ),
            entry(
                "vip-agent check --config /etc/default/vip-manager.yml",
                "Validate the configuration against this host (interface, addresses, certificate \
                 files, pin path) and print it, secrets redacted. Exit status 1 on any error.",
            ),
            entry(
                "vip-agent --ip 192.0.2.10 --netmask 24 --interface eth0 --trigger-key \
                 /service/pg/leader --trigger-value pg1 --dcs-endpoints http://192.0.2.2:2379",
                "Everything from flags, as with vip-manager; VIP_IP=... and the other VIP_* \
                 variables work the same way.",
            ),
            entry(
                "vip-agent status --interface eth0 [--json]",
                "Per VIP on eth0: answering or fenced, time left on the deadline, ARP/NDP and IP \
                 counters. Reads the pinned maps, so it works without the daemon.",
            ),
            entry(
                "vip-agent event %n %e %s \"%t\" \"%d\"",
                "repmgr's event_notification_command (dcs-type: repmgr): hand one event to the \
                 running agent over its socket. See docs/repmgr.md.",
            ),
            entry(
                "vip-agent detach --interface eth0",
                "Remove the XDP program and its pins (stop the daemon first).",
            ),
            entry(
                "systemctl reload vip-agent",
                "Re-read the configuration (SIGHUP).",
            ),
        ],
    },
    HelpSection {
        title: "FILES",
        entries: &[
            entry(
                "/etc/default/vip-manager.yml",
                "The configuration vip-agent.service reads: vip-manager's file (as Patroni and \
                 Pigsty install it), read unchanged.",
            ),
            entry(
                "/etc/vip-agent/NAME.yml",
                "The configuration of vip-agent@NAME.service, one agent per cluster; \
                 /etc/vip-agent/vip-agent.yml is a commented example.",
            ),
            entry(
                "/run/vip-agent/repmgr.sock, /var/lib/vip-agent/repmgr.state",
                "With dcs-type: repmgr, the socket vip-agent event talks to and the last accepted \
                 role event (repmgr-socket, repmgr-state-file).",
            ),
            entry(
                "/sys/fs/bpf/vip-agent/IFACE/",
                "Pins of the XDP attachment (link) and its maps (VIP_STATE, VIP_STATS). They \
                 outlive the agent, which adopts them when it starts again. The pin-path key \
                 moves them.",
            ),
        ],
    },
    HelpSection {
        title: "SIGNALS",
        entries: &[
            entry(
                "SIGTERM, SIGINT",
                "Fence every VIP, remove its address and exit 0. The pinned program stays, fenced.",
            ),
            entry(
                "SIGHUP",
                "Re-read the configuration. Unchanged: nothing happens. Changed: the agent \
                 restarts with it (VIPs fenced for the milliseconds that takes). Invalid: the \
                 error is logged and the running configuration kept.",
            ),
            entry(
                "SIGKILL, SIGSTOP",
                "No cleanup runs, and none is needed: the data plane stops answering by itself at \
                 the deadline nobody renews, before the leader source can name another node.",
            ),
        ],
    },
    HelpSection {
        title: "ENVIRONMENT",
        entries: &[
            entry(
                "VIP_*",
                "Every option has its variable (shown with the option), as in vip-manager. \
                 Precedence: flag, then variable, then file; an empty variable counts as unset.",
            ),
            entry(
                "VIP_AGENT_LOG",
                "Log filter (tracing syntax), e.g. debug or vip_agent=trace [default: info, or \
                 debug with verbose].",
            ),
            entry(
                "NOTIFY_SOCKET",
                "Set by systemd for Type=notify: READY=1 once the data plane is attached and every \
                 leader key read once; RELOADING=1 (with MONOTONIC_USEC) at SIGHUP, then READY=1; \
                 STOPPING=1 on SIGTERM.",
            ),
            entry(
                "WATCHDOG_USEC",
                "Set by systemd with WatchdogSec=: WATCHDOG=1 every quarter of it.",
            ),
            entry(
                "JOURNAL_STREAM",
                "Set by systemd when the output goes to journald: text logs then use the journal's \
                 native protocol, each level a priority (journalctl -p warning).",
            ),
        ],
    },
    HelpSection {
        title: "EXIT STATUS",
        entries: &[
            entry(
                "0",
                "Success; also a daemon stopped by SIGTERM or SIGINT after fencing.",
            ),
            entry(
                "1",
                "The configuration is invalid (the message names the file or flag, the key and \
                 why) or the agent could not start.",
            ),
            entry("2", "Invalid command line (unknown flag, missing value)."),
        ],
    },
];

/// `--help` text after the options: [`HELP_SECTIONS`] as plain text.
#[must_use]
pub fn after_long_help() -> String {
    let mut text = String::new();
    for (i, section) in HELP_SECTIONS.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let _ = writeln!(text, "{}:", title_case(section.title));
        for e in section.entries {
            let _ = writeln!(text, "  {}", e.term);
            let _ = writeln!(text, "          {}", e.text);
        }
    }
    text
}

/// `EXIT STATUS` -> `Exit status`.
fn title_case(title: &str) -> String {
    let lower = title.to_lowercase();
    let mut chars = lower.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// The `vip-agent` command line.
#[derive(Debug, Parser)]
#[command(
    name = BIN_NAME,
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = "Examples, files, signals and exit status: vip-agent --help (or man 8 vip-agent).",
    after_long_help = after_long_help(),
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// What to do; `None` runs the daemon with the top-level options.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The daemon's options when no subcommand is given (`vip-agent --config FILE`).
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The daemon's log format: text (journald priorities under systemd) or json (one object a
    /// line on stdout).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t,
        env = "VIP_AGENT_LOG_FORMAT"
    )]
    pub log_format: crate::logging::LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    #[command(
        long_about = "Run the daemon (the default: `vip-agent --config FILE` is \
                      `vip-agent run --config FILE`). It attaches the XDP program fenced, follows \
                      its leader source (etcd, repmgr or Patroni's REST API) and answers for \
                      the VIP only while this node holds leadership. SIGTERM fences and exits 0; SIGHUP reloads the configuration."
    )]
    Run(ConfigArgs),
    /// Validate the configuration against this host and print it, secrets redacted.
    #[command(
        long_about = "Validate the configuration (file, flags, VIP_* variables) against this \
                      host: every interface exists and is not loopback, no VIP is the node's own \
                      address, the CA, certificate and key files are readable PEM, the pin path \
                      can be on bpffs. Warnings and notes go to stderr, the effective \
                      configuration (secrets redacted) to stdout. Nothing is changed and no leader \
                      source is contacted."
    )]
    Check(ConfigArgs),
    /// Show what the pinned data plane of an interface says, per VIP (works without the daemon).
    Status(StatusArgs),
    /// Remove the XDP program and its pins from an interface.
    Detach(DetachArgs),
    /// Print the version and build facts: the embedded XDP object, the kernel floor.
    Version(VersionArgs),
    /// Hand a repmgr event to the running agent (repmgr's event_notification_command).
    #[command(
        long_about = "Hand one repmgr event to the running agent (dcs-type: repmgr), for \
                      repmgr.conf: event_notification_command='sudo /usr/bin/vip-agent event %n \
                      %e %s \"%t\" \"%d\"'. Exit status 0 when the agent accepted it (applied or \
                      ignored, as printed), 1 with a one-line reason otherwise: no agent on the \
                      socket, permission denied, malformed arguments. See docs/repmgr.md."
    )]
    Event(EventArgs),
    /// Write the man pages or shell completions (used by `cargo xtask package`).
    #[command(hide = true)]
    Generate(GenerateArgs),
}

/// `vip-agent status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Interface whose pinned maps to read.
    #[arg(long, value_name = "IFACE")]
    pub interface: String,
    /// bpffs directory of the pins.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_path: PathBuf,
    /// Print a JSON array, one object per VIP (`[]` when nothing is pinned).
    #[arg(long)]
    pub json: bool,
    /// Also show each VIP's promotion gate and Patroni failsafe state, asked from the running
    /// daemon's metrics endpoint at this address (alone: 127.0.0.1:9477). Best effort: without a
    /// reachable daemon, a note on stderr and the usual output.
    #[arg(
        long,
        value_name = "IP:PORT",
        num_args = 0..=1,
        default_missing_value = "127.0.0.1:9477"
    )]
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// `vip-agent detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interface to clean up.
    #[arg(long, value_name = "IFACE")]
    pub interface: String,
    /// bpffs directory of the pins.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PIN_ROOT)]
    pub pin_path: PathBuf,
}

/// `vip-agent event`. The words stay strings here so that a malformed one gets vip-agent's own
/// one-line error rather than clap's usage text.
#[derive(Debug, Args)]
pub struct EventArgs {
    /// The agent's socket [default: repmgr-socket of --config, else /run/vip-agent/repmgr.sock].
    #[arg(long, env = "VIP_REPMGR_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Read repmgr-socket from this configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// %n: the repmgr node id the event is about.
    #[arg(value_name = "NODE_ID", allow_hyphen_values = true)]
    pub node_id: String,
    /// %e: the event, e.g. standby_promote.
    #[arg(value_name = "EVENT", allow_hyphen_values = true)]
    pub event: String,
    /// %s: 1 (success) or 0 (failure).
    #[arg(value_name = "SUCCESS", allow_hyphen_values = true)]
    pub success: String,
    /// %t: repmgr's timestamp (logged only).
    #[arg(value_name = "TIMESTAMP", allow_hyphen_values = true)]
    pub timestamp: Option<String>,
    /// %d: repmgr's details (logged only). repmgr does not escape them, so a double quote inside
    /// splits them into several words: they are all taken and joined with spaces, rather than
    /// losing the event to a usage error.
    #[arg(
        value_name = "DETAILS",
        allow_hyphen_values = true,
        num_args = 0..,
        trailing_var_arg = true
    )]
    pub details: Vec<String>,
}

/// `vip-agent version`.
#[derive(Debug, Args)]
pub struct VersionArgs {
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `vip-agent generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// What to write.
    #[command(subcommand)]
    pub what: Generate,
}

/// What `vip-agent generate` writes.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// The man pages: vip-agent(8) to stdout, or with --out every page (one per subcommand too).
    Man {
        /// Directory to write vip-agent.8 and vip-agent-SUBCOMMAND.8 into.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// The completion script for a shell, to stdout.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// Shells with completions (the ones Debian has standard directories for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// bash (bash-completion).
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

impl CompletionShell {
    /// Where a Debian package installs the script, relative to the root.
    #[must_use]
    pub const fn debian_path(self) -> &'static str {
        match self {
            Self::Bash => "usr/share/bash-completion/completions/vip-agent",
            Self::Zsh => "usr/share/zsh/vendor-completions/_vip-agent",
            Self::Fish => "usr/share/fish/vendor_completions.d/vip-agent.fish",
        }
    }

    const fn shell(self) -> Shell {
        match self {
            Self::Bash => Shell::Bash,
            Self::Zsh => Shell::Zsh,
            Self::Fish => Shell::Fish,
        }
    }
}

/// A failure to write generated output.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// Writing a man page or completion script failed.
    #[error("write {what}")]
    Write {
        /// What was being written (a path, or stdout).
        what: String,
        /// The I/O error.
        source: io::Error,
    },
}

/// The clap command as the man pages show it: built (subcommands know their full names), without
/// clap's `help` subcommand (a man page is the help).
fn man_command() -> clap::Command {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Render one man page for `cmd` (the top-level command or one of its built subcommands):
/// clap_mangen's page (title, NAME, SYNOPSIS, DESCRIPTION, OPTIONS, SUBCOMMANDS, VERSION) with,
/// before VERSION, [`HELP_SECTIONS`] (top-level page only) and SEE ALSO. The sections replace
/// clap_mangen's EXTRA, which would repeat them as one block of text.
fn render_page(cmd: clap::Command, top_level: bool) -> io::Result<String> {
    let cmd = cmd.after_help(None::<&str>).after_long_help(None::<&str>);
    let mut page = Vec::new();
    Man::new(cmd)
        .section(MAN_SECTION)
        .manual("System Administration")
        .source(format!("vip-agent {}", env!("CARGO_PKG_VERSION")))
        .render(&mut page)?;
    let page =
        String::from_utf8(page).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;

    let mut roff = Roff::new();
    if top_level {
        for section in HELP_SECTIONS {
            roff.control("SH", [section.title]);
            for e in section.entries {
                roff.control("TP", []);
                roff.text([bold(e.term)]);
                roff.text([roman(e.text)]);
            }
        }
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(
            "systemctl(1), systemd.service(5), patroni(1), etcd(1), vip-manager(1); \
             /usr/share/doc/vip-agent/README.md",
        )]);
    } else {
        roff.control("SH", ["SEE ALSO"]);
        roff.text([roman(format!("{BIN_NAME}({MAN_SECTION})"))]);
    }
    // Every rendering starts with the same preamble (how to typeset apostrophes): once is enough.
    let preamble = Roff::new().render();
    let sections = roff.render();
    let sections = sections.strip_prefix(&preamble).unwrap_or(&sections);
    Ok(match page.find("\n.SH VERSION\n") {
        Some(at) => format!("{}\n{sections}{}", &page[..at], &page[at + 1..]),
        None => format!("{page}{sections}"),
    })
}

/// Write vip-agent(8) to `w`.
///
/// # Errors
/// When `w` fails.
pub fn write_man_page(w: &mut dyn Write) -> io::Result<()> {
    w.write_all(render_page(man_command(), true)?.as_bytes())
}

/// Write every man page into `dir`: `vip-agent.8` and one `vip-agent-<subcommand>.8` per visible
/// subcommand. Returns the files written, the main page first.
///
/// # Errors
/// When a file cannot be written; the error names it.
pub fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let cmd = man_command();
    let mut pages: Vec<(clap::Command, bool)> = vec![(cmd.clone(), true)];
    pages.extend(
        cmd.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| (s.clone(), false)),
    );
    let mut written = Vec::with_capacity(pages.len());
    for (page, top_level) in pages {
        let name = page.get_display_name().unwrap_or(BIN_NAME).to_owned();
        let path = dir.join(format!("{name}.{MAN_SECTION}"));
        let write =
            |path: &Path| -> io::Result<()> { std::fs::write(path, render_page(page, top_level)?) };
        write(&path).map_err(|source| GenerateError::Write {
            what: path.display().to_string(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Write the completion script for `shell` to `w`.
pub fn write_completions(shell: CompletionShell, w: &mut dyn Write) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell.shell(), &mut cmd, BIN_NAME, w);
}

/// What `vip-agent version` reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// The package version.
    pub version: String,
    /// Size of the XDP object embedded in the binary.
    pub xdp_object_bytes: usize,
    /// SHA-256 of that object, hex.
    pub xdp_object_sha256: String,
    /// The oldest supported kernel, `major.minor`.
    pub kernel_floor: String,
    /// The CPU architecture and OS the binary was built for.
    pub target: String,
    /// This host's kernel release, when it could be read.
    pub host_kernel: Option<String>,
    /// Whether this host's kernel is at least the floor; `None` when its release is unknown or
    /// does not start with `major.minor`.
    pub host_kernel_supported: Option<bool>,
}

impl VersionInfo {
    /// The facts for `object` (the embedded XDP object) on a host whose kernel release is
    /// `host_kernel`.
    #[must_use]
    pub fn new(object: &[u8], host_kernel: Option<&str>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, object);
        let sha256 = digest.as_ref().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let host_kernel = host_kernel.map(str::trim).filter(|k| !k.is_empty());
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            xdp_object_bytes: object.len(),
            xdp_object_sha256: sha256,
            kernel_floor: format!("{}.{}", KERNEL_FLOOR.0, KERNEL_FLOOR.1),
            target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
            host_kernel: host_kernel.map(str::to_owned),
            host_kernel_supported: host_kernel
                .and_then(kernel_major_minor)
                .map(|release| release >= KERNEL_FLOOR),
        }
    }

    /// The facts for this binary on this host (`/proc/sys/kernel/osrelease`).
    #[must_use]
    pub fn current() -> Self {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok();
        Self::new(crate::dataplane::ebpf_object(), release.as_deref())
    }

    /// The text form: the version line first (as `--version` prints it), then one fact a line.
    #[must_use]
    pub fn text(&self) -> String {
        let host = match (&self.host_kernel, self.host_kernel_supported) {
            (Some(k), Some(true)) => format!("{k} (supported)"),
            (Some(k), Some(false)) => {
                format!(
                    "{k} (too old: vip-agent needs {} or newer)",
                    self.kernel_floor
                )
            }
            (Some(k), None) => format!("{k} (version not recognised)"),
            (None, _) => "unknown (cannot read /proc/sys/kernel/osrelease)".to_owned(),
        };
        format!(
            "{BIN_NAME} {}\n\
             xdp object:   {} bytes, sha256 {}\n\
             kernel floor: Linux {} (XDP through a pinned bpf_link)\n\
             this kernel:  {host}\n\
             target:       {}\n",
            self.version,
            self.xdp_object_bytes,
            self.xdp_object_sha256,
            self.kernel_floor,
            self.target,
        )
    }
}

/// `6.1.0-18-amd64` -> `(6, 1)`.
fn kernel_major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn bare_flags_run_the_daemon_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["vip-agent", "--config", "/etc/x.yml", "--ip", "10.0.0.1"])
            .expect("bare flags parse");
        assert!(cli.command.is_none());
        assert_eq!(cli.config.config, Some(PathBuf::from("/etc/x.yml")));
        assert_eq!(cli.config.ip.as_deref(), Some("10.0.0.1"));

        let cli = Cli::try_parse_from(["vip-agent", "check", "--netmask", "24"]).expect("check");
        let Some(Command::Check(args)) = cli.command else {
            panic!("expected check, got {:?}", cli.command)
        };
        assert_eq!(args.netmask.as_deref(), Some("24"));

        let cli = Cli::try_parse_from(["vip-agent", "status", "--interface", "eth1", "--json"])
            .expect("status");
        let Some(Command::Status(s)) = cli.command else {
            panic!("expected status, got {:?}", cli.command)
        };
        assert_eq!(
            (s.interface.as_str(), s.pin_path.as_path(), s.json),
            ("eth1", Path::new(DEFAULT_PIN_ROOT), true)
        );

        let cli =
            Cli::try_parse_from(["vip-agent", "generate", "completions", "zsh"]).expect("generate");
        assert!(matches!(
            cli.command,
            Some(Command::Generate(GenerateArgs {
                what: Generate::Completions {
                    shell: CompletionShell::Zsh
                }
            }))
        ));
    }

    #[test]
    fn event_takes_repmgr_placeholders_verbatim() {
        let cli = Cli::try_parse_from([
            "vip-agent",
            "event",
            "--socket",
            "/tmp/s",
            "3",
            "standby_promote",
            "1",
            "2026-12-02 01:00:00+00",
            "node 3 promoted -- \"pg3\"",
        ])
        .expect("event parses");
        let Some(Command::Event(e)) = cli.command else {
            panic!("expected event, got {:?}", cli.command)
        };
        assert_eq!(e.socket, Some(PathBuf::from("/tmp/s")));
        assert_eq!(
            (e.node_id.as_str(), e.event.as_str(), e.success.as_str()),
            ("3", "standby_promote", "1")
        );
        assert_eq!(e.details, ["node 3 promoted -- \"pg3\""]);
        let cli = Cli::try_parse_from([
            "vip-agent",
            "event",
            "3",
            "standby_follow",
            "1",
            "ts",
            "node ",
            "pg1",
            " followed",
        ])
        .expect("details split by a stray quote");
        let Some(Command::Event(e)) = cli.command else {
            panic!("expected event, got {:?}", cli.command)
        };
        assert_eq!(e.details.join(" "), "node  pg1  followed");
        // Malformed words reach vip-agent's own checks (one-line errors), not clap's.
        let cli = Cli::try_parse_from(["vip-agent", "event", "x", "-e", "yes"]).expect("strings");
        assert!(matches!(cli.command, Some(Command::Event(_))));
        let err = Cli::try_parse_from(["vip-agent", "event", "3", "standby_promote"])
            .expect_err("success is required");
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn top_level_flags_and_a_subcommand_conflict() {
        let err = Cli::try_parse_from(["vip-agent", "--ip", "10.0.0.1", "status"])
            .expect_err("flags before a subcommand are refused");
        assert_eq!(err.exit_code(), 2, "{err}");
    }

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn long_help_has_every_section_and_the_visible_subcommands_only() {
        let help = Cli::command().render_long_help().to_string();
        for needle in [
            "Examples:",
            "Files:",
            "Signals:",
            "Environment:",
            "Exit status:",
            "/etc/default/vip-manager.yml",
            "/sys/fs/bpf/vip-agent",
            "SIGTERM, SIGINT",
            "SIGHUP",
            "  check ",
            "  status ",
            "  detach ",
            "  version ",
        ] {
            assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
        }
        assert!(!help.contains("  generate "), "generate is hidden:\n{help}");
        let short = Cli::command().render_help().to_string();
        assert!(
            !short.contains("SIGHUP"),
            "-h stays short; the sections are in --help:\n{short}"
        );
    }

    #[test]
    fn man_page_has_the_sections_in_roff() {
        let mut page = Vec::new();
        write_man_page(&mut page).expect("render into memory");
        let page = String::from_utf8(page).expect("roff is UTF-8");
        assert!(page.starts_with(".ie"), "{page}");
        assert!(page.contains(".TH vip-agent 8"), "{page}");
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "SUBCOMMANDS",
            "EXAMPLES",
            "FILES",
            "SIGNALS",
            "ENVIRONMENT",
            "\"EXIT STATUS\"",
            "\"SEE ALSO\"",
            "VERSION",
        ] {
            assert!(
                page.contains(&format!("\n.SH {section}\n")),
                "no .SH {section}:\n{page}"
            );
        }
        assert!(!page.contains(".SH EXTRA"), "after_help is not duplicated");
        assert!(page.contains("vip\\-agent\\-status(8)"), "{page}");
    }

    #[test]
    fn man_pages_one_per_visible_subcommand() {
        let dir = std::env::temp_dir().join(format!("vip-agent-man-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let written = write_man_pages(&dir);
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        let status = std::fs::read_to_string(dir.join("vip-agent-status.8"));
        drop(std::fs::remove_dir_all(&dir));
        let written = written.expect("pages written");
        assert_eq!(written.len(), 7, "{written:?}");
        assert!(written[0].ends_with("vip-agent.8"), "{written:?}");
        let mut names = names;
        names.sort();
        assert_eq!(
            names,
            [
                "vip-agent-check.8",
                "vip-agent-detach.8",
                "vip-agent-event.8",
                "vip-agent-run.8",
                "vip-agent-status.8",
                "vip-agent-version.8",
                "vip-agent.8"
            ]
        );
        let status = status.expect("status page");
        assert!(status.contains("\\-\\-interface"), "{status}");
        assert!(status.contains("\\-\\-json"), "{status}");
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [
            CompletionShell::Bash,
            CompletionShell::Zsh,
            CompletionShell::Fish,
        ] {
            let mut script = Vec::new();
            write_completions(shell, &mut script);
            let script = String::from_utf8(script).expect("UTF-8");
            for word in [
                "check",
                "status",
                "detach",
                "version",
                "trigger-key",
                "dcs-endpoints",
            ] {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
        }
    }

    #[test]
    fn version_facts_hash_the_object_and_compare_the_kernel() {
        let info = VersionInfo::new(b"abc", Some("6.1.0-18-amd64\n"));
        assert_eq!(info.xdp_object_bytes, 3);
        assert_eq!(
            info.xdp_object_sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(info.kernel_floor, "5.10");
        assert_eq!(info.host_kernel.as_deref(), Some("6.1.0-18-amd64"));
        assert_eq!(info.host_kernel_supported, Some(true));
        assert!(
            info.text()
                .starts_with(&format!("vip-agent {}\n", env!("CARGO_PKG_VERSION"))),
            "{}",
            info.text()
        );
        assert!(info.text().contains("6.1.0-18-amd64 (supported)"));

        assert_eq!(
            VersionInfo::new(b"", Some("5.4.0-150-generic")).host_kernel_supported,
            Some(false)
        );
        assert_eq!(
            VersionInfo::new(b"", Some("5.10.0")).host_kernel_supported,
            Some(true)
        );
        assert_eq!(
            VersionInfo::new(b"", Some("4.19.0")).host_kernel_supported,
            Some(false)
        );
        let unknown = VersionInfo::new(b"", Some("weird"));
        assert_eq!(unknown.host_kernel_supported, None);
        assert!(unknown.text().contains("weird (version not recognised)"));
        let none = VersionInfo::new(b"", None);
        assert_eq!(none.host_kernel, None);
        assert!(none.text().contains("this kernel:  unknown"));
    }
}
