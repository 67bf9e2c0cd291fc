//! vip-agent: command line. Parses arguments ([`vip_agent::cli`]), sets up logging, and hands over
//! to the library.

use std::{io::Write as _, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use vip_agent::{
    cli::{Cli, Command, Generate, VersionInfo},
    config::{self, ConfigArgs},
    dataplane,
};

fn main() -> ExitCode {
    // The daemon holds SIGTERM, SIGINT and SIGHUP until its handlers exist (see `run`): from the
    // first instruction of ours, so that only the loader's and std's start-up remain before it.
    // The other commands let them in again at once; `run` reports a failure to hold them.
    let held = shutdown_signals().thread_block();
    let cli = Cli::parse();
    if !matches!(cli.command, None | Some(Command::Run(_))) {
        let _ = shutdown_signals().thread_unblock();
    }
    let result = match cli.command {
        None => run(&cli.config, cli.log_format, held),
        Some(Command::Run(args)) => run(&args, cli.log_format, held),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Status(args)) => status(
            &args.interface,
            &args.pin_path,
            args.json,
            args.metrics_address,
        ),
        Some(Command::Detach(args)) => detach(&args.interface, &args.pin_path),
        Some(Command::Version(args)) => version(args.json),
        Some(Command::Generate(args)) => generate(args.what),
        Some(Command::Event(args)) => event(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vip-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `held`: whether `main` could hold SIGTERM, SIGINT and SIGHUP. A SIGTERM that arrives while the
/// agent starts (before `supervise` has its handlers) must not kill it with the default action:
/// held pending until then. Threads inherit the mask; child processes (hooks) get an empty one
/// from std.
fn run(
    args: &ConfigArgs,
    log_format: vip_agent::logging::LogFormat,
    held: nix::Result<()>,
) -> Result<()> {
    held.context("hold SIGTERM, SIGINT and SIGHUP during startup")?;
    let config = config::load(args)?;
    vip_agent::logging::init(config.verbose, log_format);
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
    vip_agent::clock::check_shared_with_bpf()?;
    for notice in config.validate_host()? {
        notice.log();
    }
    Ok(())
}

/// Run the agent; SIGTERM/SIGINT stop it (fence, remove the address, exit 0); SIGHUP re-reads the
/// configuration and, when it changed, restarts the agent with it. A bad new configuration is
/// logged and the running one kept; a new configuration the agent cannot start with (a metrics
/// port taken, an interface that cannot be attached) is logged and the agent restarted on the
/// previous one.
async fn supervise(args: &ConfigArgs, mut config: config::Config) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("install the SIGHUP handler")?;
    // The handlers are in place: let the signals held since startup in (on this thread, the one
    // `block_on` drives; a signal pending since then is delivered now).
    shutdown_signals()
        .thread_unblock()
        .context("release SIGTERM, SIGINT and SIGHUP")?;
    vip_agent::notify::spawn_watchdog();
    // The configuration that ran before the last SIGHUP restart, while the new one is unproven.
    let mut previous: Option<config::Config> = None;
    loop {
        let shutdown = CancellationToken::new();
        let agent = tokio::spawn(vip_agent::agent::run(config.clone(), shutdown.clone()));
        tokio::pin!(agent);
        // Set when the agent returned by itself (it could not start with a new configuration).
        let mut exited = false;
        let next = loop {
            tokio::select! {
                result = &mut agent => {
                    // The agent returns by itself when it could not start, or when its interface
                    // was deleted: then exit, and let the supervisor start it afresh.
                    let result = result.context("the agent task panicked")?;
                    if let Err(e @ vip_agent::agent::AgentError::InterfaceRemoved { .. }) = result {
                        return Err(e.into());
                    }
                    let failed = result.map_err(anyhow::Error::from);
                    match (failed, previous.take()) {
                        (Err(e), Some(before)) => {
                            error!(error = %format!("{e:#}"),
                                "SIGHUP: the agent cannot start with the new configuration; \
                                 restarting it on the previous one");
                            exited = true;
                            break Some(before);
                        }
                        (failed, _) => return failed,
                    }
                }
                _ = term.recv() => break None,
                _ = int.recv() => break None,
                _ = hup.recv() => { let reload = vip_agent::notify::Reload::begin(); match config::load(args).map_err(anyhow::Error::from).and_then(|c| validate(&c).map(|()| c)) {
                    Err(e) => error!(error = %format!("{e:#}"), "SIGHUP: the new configuration is invalid; keeping the running one"),
                    Ok(new) if new.same_effect(&config) => info!("SIGHUP: configuration unchanged"),
                    Ok(new) => { reload.restarting(); break Some(new) }
                } },
            }
        };
        if exited {
            // The new configuration could not start: back to the previous one, no new fallback.
            config = next.unwrap_or(config);
            continue;
        }
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
            Some(new) => previous = Some(std::mem::replace(&mut config, new)),
        }
    }
}

/// The signals `supervise` handles.
fn shutdown_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    set
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
    for note in config.patroni_url_notes() {
        eprintln!("{note}");
    }
    print!("{}", config.render_redacted());
    Ok(())
}

fn status(
    interface: &str,
    pin_path: &std::path::Path,
    json: bool,
    metrics_address: Option<std::net::SocketAddr>,
) -> Result<()> {
    let snapshots = dataplane::inspect(pin_path, interface)?;
    let now = vip_agent::clock::monotonic_ns();
    // Optional and best effort: the gate lives in the daemon, not in the pinned maps.
    let gates = metrics_address.map(|address| {
        vip_agent::status::fetch_status(address, std::time::Duration::from_secs(2))
            .map(|status| vip_agent::status::gate_views(&status))
            .map_err(|why| format!("--metrics-address {address}: {why}"))
    });
    let report = vip_agent::status::report_with_gates(
        interface,
        pin_path,
        snapshots.as_deref(),
        now,
        json,
        gates.as_ref(),
    )
    .context("render the status as JSON")?;
    eprint!("{}", report.stderr);
    print!("{}", report.stdout);
    Ok(())
}

fn detach(interface: &str, pin_path: &std::path::Path) -> Result<()> {
    if dataplane::detach(pin_path, interface)? {
        println!("{interface}: XDP and TC egress programs detached, pins removed");
    } else {
        println!("{interface}: nothing pinned under {}", pin_path.display());
    }
    Ok(())
}

/// `vip-agent event`: check the words, send them, print the agent's verdict (one line).
fn event(args: &vip_agent::cli::EventArgs) -> Result<()> {
    use vip_agent::repmgr::{EventRequest, client};
    let request = EventRequest::from_args(
        &args.node_id,
        &args.event,
        &args.success,
        args.timestamp.as_deref(),
        Some(&args.details.join(" ")),
    )
    .map_err(|why| anyhow::anyhow!("event: {why}"))?;
    refuse_choices_under_sudo(args)?;
    let socket = match (&args.socket, &args.config) {
        (Some(socket), _) => socket.clone(),
        (None, Some(file)) => {
            let config = config::load(&ConfigArgs {
                config: Some(file.clone()),
                ..ConfigArgs::default()
            })
            .context("event: read the socket path from the configuration")?;
            match config.repmgr {
                Some(r) => r.socket,
                None => anyhow::bail!(
                    "event: {} does not set dcs-type: repmgr, so no agent listens for events",
                    file.display()
                ),
            }
        }
        (None, None) => std::path::PathBuf::from(config::DEFAULT_REPMGR_SOCKET),
    };
    let reply = client::send(&socket, &request).map_err(|e| anyhow::anyhow!("event: {e}"))?;
    println!("{reply}");
    Ok(())
}

/// Under sudo (the documented rule lets the postgres user run `vip-agent event *` as root), the
/// caller must not choose what root reads (`--config`) or connects to (`--socket`,
/// `VIP_REPMGR_SOCKET`): only the default socket is used. sudo sets `SUDO_UID` itself, so the
/// caller cannot hide it; a deployment with another socket path uses `repmgr-socket-group`
/// instead of sudo (docs/repmgr.md).
fn refuse_choices_under_sudo(args: &vip_agent::cli::EventArgs) -> Result<()> {
    let Some(uid) = std::env::var_os("SUDO_UID") else {
        return Ok(());
    };
    let chosen = if args.config.is_some() {
        Some("--config")
    } else if args.socket.is_some() {
        Some(if std::env::var_os("VIP_REPMGR_SOCKET").is_some() {
            "--socket or VIP_REPMGR_SOCKET"
        } else {
            "--socket"
        })
    } else {
        None
    };
    match chosen {
        None => Ok(()),
        Some(what) => anyhow::bail!(
            "event: run through sudo (SUDO_UID={}), {what} is refused: the caller may not choose \
             what root reads or connects to; the default socket {} is used under sudo, or give \
             repmgr's user access with repmgr-socket-group and drop sudo (docs/repmgr.md)",
            uid.to_string_lossy(),
            config::DEFAULT_REPMGR_SOCKET
        ),
    }
}

fn version(json: bool) -> Result<()> {
    let info = VersionInfo::current();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).context("render the version as JSON")?
        );
    } else {
        print!("{}", info.text());
    }
    Ok(())
}

fn generate(what: Generate) -> Result<()> {
    match what {
        Generate::Man { out: Some(dir) } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("create the directory {}", dir.display()))?;
            for page in vip_agent::cli::write_man_pages(&dir)? {
                println!("{}", page.display());
            }
        }
        Generate::Man { out: None } => {
            let mut stdout = std::io::stdout().lock();
            vip_agent::cli::write_man_page(&mut stdout).context("write the man page to stdout")?;
            stdout.flush().context("write the man page to stdout")?;
        }
        Generate::Completions { shell } => {
            let mut stdout = std::io::stdout().lock();
            vip_agent::cli::write_completions(shell, &mut stdout);
            stdout.flush().context("write the completions to stdout")?;
        }
    }
    Ok(())
}
