//! vip-agent: command line. Parses arguments, sets up logging, and hands over to the library.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vip_agent::{
    config::{self, ConfigArgs},
    dataplane::{self, DEFAULT_PIN_ROOT},
};

/// Floating-IP failover for Patroni clusters: follows the leader key in etcd and answers ARP for
/// the VIP in XDP only while this node provably holds the leadership.
///
/// Without a subcommand it runs the daemon, like vip-manager: `vip-agent --config FILE`.
#[derive(Parser)]
#[command(name = "vip-agent", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run(ConfigArgs),
    /// Validate the configuration against this host and print it, secrets redacted.
    Check(ConfigArgs),
    /// Show what the pinned data plane of an interface says, per VIP (works without the daemon).
    Status {
        /// Interface whose pinned maps to read.
        #[arg(long)]
        interface: String,
        /// bpffs directory of the pins.
        #[arg(long, default_value = DEFAULT_PIN_ROOT)]
        pin_path: PathBuf,
        /// Print a JSON array, one object per VIP (`[]` when nothing is pinned).
        #[arg(long)]
        json: bool,
    },
    /// Remove the XDP program and its pins from an interface.
    Detach {
        /// Interface to clean up.
        #[arg(long)]
        interface: String,
        /// bpffs directory of the pins.
        #[arg(long, default_value = DEFAULT_PIN_ROOT)]
        pin_path: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(&cli.config),
        Some(Command::Run(args)) => run(&args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Status {
            interface,
            pin_path,
            json,
        }) => status(&interface, &pin_path, json),
        Some(Command::Detach {
            interface,
            pin_path,
        }) => detach(&interface, &pin_path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vip-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VIP_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        // Plain text in files and the journal; colours only on a terminal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
}

fn run(args: &ConfigArgs) -> Result<()> {
    let config = config::load(args)?;
    init_logging(config.verbose);
    validate(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(supervise(args, config))
}

fn validate(config: &config::Config) -> Result<()> {
    config.log_notices();
    for notice in config.validate_host()? {
        notice.log();
    }
    Ok(())
}

/// Run the agent; SIGTERM/SIGINT stop it (fence, remove the address, exit 0); SIGHUP re-reads the
/// configuration and, when it changed, restarts the agent with it (a bad new configuration is
/// logged and the running one kept).
async fn supervise(args: &ConfigArgs, mut config: config::Config) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    loop {
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(vip_agent::agent::run(config.clone(), shutdown.clone()));
        tokio::pin!(agent);
        let next = loop {
            tokio::select! {
                result = &mut agent => {
                    // The agent only returns by itself when it could not start.
                    return result.context("the agent task panicked")?.map_err(anyhow::Error::from);
                }
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                _ = hup.recv() => match config::load(args).map_err(anyhow::Error::from).and_then(|c| validate(&c).map(|()| c)) {
                    Err(e) => error!(error = %format!("{e:#}"), "SIGHUP: the new configuration is invalid; keeping the running one"),
                    Ok(new) if new.same_effect(&config) => info!("SIGHUP: configuration unchanged"),
                    Ok(new) => break Some(new),
                },
            }
        };
        match &next {
            None => {
                info!("shutdown requested");
                notify_stopping();
            }
            Some(_) => {
                info!("SIGHUP: configuration changed; restarting the agent (VIPs fenced meanwhile)")
            }
        }
        shutdown.cancel();
        agent.await.context("the agent task panicked")??;
        match next {
            None => return Ok(()),
            Some(new) => config = new,
        }
    }
}

/// `STOPPING=1` to systemd (`Type=notify`): only for a real shutdown, never for a SIGHUP restart,
/// which systemd would take for the service stopping by itself.
fn notify_stopping() {
    let sent = vip_agent::notify::Notifier::from_env()
        .and_then(|n| n.stopping("stopping: fencing every VIP, removing addresses"));
    if let Err(e) = sent {
        warn!(error = %e, "cannot notify systemd");
    }
}

fn check(args: &ConfigArgs) -> Result<()> {
    let config = config::load(args)?;
    for notice in &config.notices {
        eprintln!("{notice}");
    }
    let host = config.validate_host()?;
    for notice in &host {
        eprintln!("{notice}");
    }
    print!("{}", config.render_redacted());
    Ok(())
}

fn status(interface: &str, pin_path: &std::path::Path, json: bool) -> Result<()> {
    let Some(vips) = dataplane::inspect(pin_path, interface)? else {
        let message = format!(
            "{interface}: no vip-agent data plane pinned under {}",
            pin_path.display()
        );
        if json {
            // stdout stays parseable; the reason goes to the human.
            eprintln!("{message}");
            println!("[]");
        } else {
            println!("{message}");
        }
        return Ok(());
    };
    let now = vip_agent::clock::monotonic_ns();
    let statuses: Vec<VipStatus> = vips
        .iter()
        .map(|s| VipStatus::at(interface, s, now))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&statuses).context("render the status as JSON")?
        );
    } else {
        for s in &statuses {
            println!("{}", s.text());
        }
    }
    Ok(())
}

/// What `vip-agent status` says about one VIP at one instant.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
struct VipStatus {
    interface: String,
    vip: std::net::Ipv4Addr,
    /// The data plane answers ARP for the VIP now (its deadline lies ahead).
    answering: bool,
    /// Until the deadline; 0 when fenced or expired.
    deadline_in_ms: u64,
    arp_replied: u64,
    arp_dropped: u64,
    ipv4_dropped: u64,
    conflicts: u64,
    /// Since the last ARP reply; `None` (JSON `null`) when the program never replied.
    last_reply_ago_ms: Option<u64>,
}

impl VipStatus {
    /// The snapshot as seen at kernel monotonic time `now_ns`.
    fn at(interface: &str, s: &dataplane::VipSnapshot, now_ns: u64) -> Self {
        Self {
            interface: interface.to_owned(),
            vip: s.vip,
            answering: s.state.answering_at(now_ns),
            deadline_in_ms: s.state.deadline_ns.saturating_sub(now_ns) / 1_000_000,
            arp_replied: s.stats.arp_replied,
            arp_dropped: s.stats.arp_dropped,
            ipv4_dropped: s.stats.ipv4_dropped,
            conflicts: s.stats.conflicts,
            last_reply_ago_ms: (s.stats.last_reply_ns != 0)
                .then(|| now_ns.saturating_sub(s.stats.last_reply_ns) / 1_000_000),
        }
    }

    /// The one-line text form.
    fn text(&self) -> String {
        format!(
            "{} {} {} deadline_in_ms={} arp_replied={} arp_dropped={} ipv4_dropped={} conflicts={} last_reply_ago_ms={}",
            self.interface,
            self.vip,
            if self.answering {
                "answering"
            } else {
                "fenced"
            },
            self.deadline_in_ms,
            self.arp_replied,
            self.arp_dropped,
            self.ipv4_dropped,
            self.conflicts,
            self.last_reply_ago_ms
                .map_or_else(|| "never".to_owned(), |ms| ms.to_string()),
        )
    }
}

fn detach(interface: &str, pin_path: &std::path::Path) -> Result<()> {
    if dataplane::detach(pin_path, interface)? {
        println!("{interface}: XDP program detached, pins removed");
    } else {
        println!("{interface}: nothing pinned under {}", pin_path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use vip_agent::dataplane::VipSnapshot;
    use vip_common::{VipState, VipStats};

    use super::VipStatus;

    const MS: u64 = 1_000_000;
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn snapshot(state: VipState, stats: VipStats) -> VipSnapshot {
        VipSnapshot {
            vip: Ipv4Addr::new(10, 0, 0, 10),
            state,
            stats,
        }
    }

    #[test]
    fn status_json_answering_vip() {
        let now = 1_000 * MS;
        let s = snapshot(
            VipState::answering_until(MAC, now + 2_500 * MS),
            VipStats {
                arp_replied: 7,
                arp_dropped: 1,
                ipv4_dropped: 2,
                conflicts: 3,
                last_reply_ns: now - 40 * MS,
            },
        );
        let json = serde_json::to_value(vec![VipStatus::at("eth1", &s, now)]).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{
                "interface": "eth1",
                "vip": "10.0.0.10",
                "answering": true,
                "deadline_in_ms": 2_500,
                "arp_replied": 7,
                "arp_dropped": 1,
                "ipv4_dropped": 2,
                "conflicts": 3,
                "last_reply_ago_ms": 40,
            }])
        );
    }

    #[test]
    fn status_json_fenced_vip_that_never_replied() {
        let now = 1_000 * MS;
        let s = snapshot(VipState::fenced(MAC), VipStats::default());
        let json = serde_json::to_value(VipStatus::at("eth1", &s, now)).unwrap();
        assert_eq!(json["answering"], false);
        assert_eq!(json["deadline_in_ms"], 0);
        assert!(json["last_reply_ago_ms"].is_null(), "{json}");
    }

    #[test]
    fn status_expired_deadline_is_fenced_with_zero_remaining() {
        let now = 1_000 * MS;
        let s = snapshot(
            VipState::answering_until(MAC, now - MS),
            VipStats::default(),
        );
        let status = VipStatus::at("eth1", &s, now);
        assert!(!status.answering);
        assert_eq!(status.deadline_in_ms, 0);
    }

    #[test]
    fn status_text_is_unchanged() {
        let now = 1_000 * MS;
        let answering = snapshot(
            VipState::answering_until(MAC, now + 2_500 * MS),
            VipStats {
                arp_replied: 7,
                arp_dropped: 1,
                ipv4_dropped: 2,
                conflicts: 3,
                last_reply_ns: now - 40 * MS,
            },
        );
        assert_eq!(
            VipStatus::at("eth1", &answering, now).text(),
            "eth1 10.0.0.10 answering deadline_in_ms=2500 arp_replied=7 arp_dropped=1 \
             ipv4_dropped=2 conflicts=3 last_reply_ago_ms=40"
        );
        let fenced = snapshot(VipState::fenced(MAC), VipStats::default());
        assert_eq!(
            VipStatus::at("eth1", &fenced, now).text(),
            "eth1 10.0.0.10 fenced deadline_in_ms=0 arp_replied=0 arp_dropped=0 \
             ipv4_dropped=0 conflicts=0 last_reply_ago_ms=never"
        );
    }
}
