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
        }) => status(&interface, &pin_path),
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
            None => info!("shutdown requested"),
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

fn status(interface: &str, pin_path: &std::path::Path) -> Result<()> {
    let Some(vips) = dataplane::inspect(pin_path, interface)? else {
        warn!(interface, "nothing pinned");
        println!(
            "{interface}: no vip-agent data plane pinned under {}",
            pin_path.display()
        );
        return Ok(());
    };
    let now = vip_agent::clock::monotonic_ns();
    for s in vips {
        let answering = s.state.answering_at(now);
        let remaining_ms = s.state.deadline_ns.saturating_sub(now) / 1_000_000;
        println!(
            "{interface} {} {} deadline_in_ms={} arp_replied={} arp_dropped={} ipv4_dropped={} conflicts={} last_reply_ago_ms={}",
            s.vip,
            if answering { "answering" } else { "fenced" },
            remaining_ms,
            s.stats.arp_replied,
            s.stats.arp_dropped,
            s.stats.ipv4_dropped,
            s.stats.conflicts,
            if s.stats.last_reply_ns == 0 {
                "never".to_owned()
            } else {
                (now.saturating_sub(s.stats.last_reply_ns) / 1_000_000).to_string()
            },
        );
    }
    Ok(())
}

fn detach(interface: &str, pin_path: &std::path::Path) -> Result<()> {
    if dataplane::detach(pin_path, interface)? {
        println!("{interface}: XDP program detached, pins removed");
    } else {
        println!("{interface}: nothing pinned under {}", pin_path.display());
    }
    Ok(())
}
