//! The daemon: wire leader followers, the data plane, addresses and gratuitous ARP together.
//!
//! Order of effects, per VIP:
//! * **promotion**: the promotion gate first ([`crate::gate`]: fenced until the local database takes
//!   writes, or at once with `promotion-gate: off` or when no Patroni listens), then the data plane
//!   (answering until the follower's current confirmed deadline), then the kernel address
//!   (rtnetlink, idempotent), then a gratuitous-ARP burst;
//! * **demotion**: data plane first (fenced, in the follower's synchronous hook within microseconds
//!   of the etcd event; never gated), then the address is removed;
//! * **deadline passed** without a fresh confirmation: the program has already gone silent by itself;
//!   the agent fences explicitly and removes the address;
//! * **address drift**: an address removed by hand while we hold the VIP is put back at once (kernel
//!   notification, not a timer); one added by hand while we do not is removed (the program keeps it
//!   fenced either way).
//! * **link back up** while we hold the VIP: another gratuitous-ARP (IPv6: unsolicited NA) burst,
//!   since neighbours and switches may have forgotten us while it was down.
//! * **shutdown** (SIGTERM/SIGINT): fence, remove the address, leave the pinned program fenced.
//!
//! The agent starts fenced: nothing answers before the first successful read of the key.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, error, info, warn};

mod plan;

pub use plan::{Plan, SourceChoice, SourcePlan, WriterPlan, plan};

use crate::{
    address::{
        AddressError, AddressEvent, AddressEvents, Addresses, Lifetime, ProgramLifetime, Vip,
    },
    clock::monotonic_ns,
    config::{Config, GarpConfig, HookConfig, RepmgrConfig, VipConfig},
    dataplane::{AttachOptions, Dataplane, DataplaneError, DataplaneReader, Fenced},
    garp::{GarpError, GarpSender},
    gate::{Gate, GateHook},
    hooks::{self, HookContext, HookEvent},
    http::server::{self, ServerError},
    leader::{Handshake, LeaderError, LeaderFollower, MemberWatcher, Release},
    leadership::{Cause, Hook, Leadership, Source},
    logging::Chain,
    metrics::{self, DataplaneSample, Registry},
    netlink::LinkEvents,
    notify::Notifier,
    observe::{self, Observation, Observer},
    patroni_rest::{PatroniRestSource, RestError},
    repmgr::{RepmgrError, RepmgrSettings, RepmgrSource, resolve_group},
};

/// Errors that stop the agent from starting. Once running, failures are logged and retried.
///
/// Like every error of this crate, each message names the failed operation only; the cause is its
/// [`std::error::Error::source`], printed after it by `{:#}` (anyhow) or [`Chain`](crate::logging::Chain).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Capabilities(#[from] crate::caps::CapsError),
    #[error(
        "interface {interface} is already served by another vip-agent in this network namespace \
         (two agents on one interface would delete each other's VIPs); stop it first"
    )]
    InterfaceTaken { interface: String },
    #[error("lock interface {interface} for this agent")]
    InterfaceLock {
        interface: String,
        #[source]
        source: std::io::Error,
    },
    #[error("remove the address of {vip}, no longer configured, from {interface}")]
    StaleAddress {
        interface: String,
        vip: IpAddr,
        #[source]
        source: Box<AddressError>,
    },
    #[error("data plane on {interface}")]
    Dataplane {
        interface: String,
        #[source]
        source: Box<DataplaneError>,
    },
    #[error("leader key {key}")]
    Leader {
        key: String,
        #[source]
        source: LeaderError,
    },
    #[error("repmgr leader source")]
    Repmgr(#[from] RepmgrError),
    #[error(transparent)]
    PatroniRest(#[from] RestError),
    #[error("VIP addresses")]
    Address(#[from] AddressError),
    #[error("subscribe to link notifications")]
    LinkEvents(#[source] crate::netlink::NetlinkError),
    /// The interface was deleted (perhaps re-created): its program, pins and addresses went with
    /// it. The agent fenced everything and exits, so that its supervisor (systemd's `Restart=`)
    /// starts it again on the interface that exists now.
    #[error(
        "interface {interface} was deleted while the agent ran; every VIP fenced, exiting so that \
         the agent is restarted (systemd: Restart=) and attaches to the interface that exists now"
    )]
    InterfaceRemoved { interface: String },
    #[error(transparent)]
    Metrics(#[from] ServerError),
    #[error("gratuitous ARP on {interface}")]
    Garp {
        interface: String,
        #[source]
        source: GarpError,
    },
}

/// A data plane shared by the VIPs of one interface. Map writes are single syscalls: a plain mutex.
type SharedDataplane = Arc<Mutex<Dataplane>>;

/// Run the agent until `shutdown` is cancelled; then fence every VIP and remove its address.
///
/// The [`plan`] decides what runs; this starts it in three steps: the data planes, every VIP
/// registered and fenced ([`open_dataplanes`]); everything fallible built ([`Running::start`]);
/// then the tasks, until shutdown or a deleted interface ([`Running::stop`]).
///
/// # Errors
/// When startup fails (interface, privileges, foreign XDP program, bad TLS files, ...). Nothing is
/// left answering: VIPs registered before the failure stay fenced.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    let plan = plan::plan(&config)?;
    // Before anything: without these the agent would fail part-way (see `caps`).
    crate::caps::check()?;
    let addresses = Addresses::new()?;
    let (dataplanes, interface_locks) = open_dataplanes(&plan, &config, &addresses).await?;
    let mut running = Running::start(plan, &config, &dataplanes, &addresses).await?;
    info!(
        vips = config.vips.len(),
        interfaces = dataplanes.len(),
        "vip-agent running"
    );
    let removed = running.until_stopped(&shutdown, &dataplanes).await;
    running.stop(&config, &dataplanes).await;
    drop(interface_locks);
    if let Some(interface) = removed {
        return Err(AgentError::InterfaceRemoved { interface });
    }
    info!(
        "stopped: every VIP fenced and its address removed; the XDP program stays attached, fenced"
    );
    Ok(())
}

/// One data plane per interface of the plan, every VIP registered and fenced before anything
/// else happens. Each interface is locked first: a second agent on it would adopt the same pins
/// and forget the first one's VIPs as "no longer configured". The locks are held until dropped.
async fn open_dataplanes(
    plan: &Plan,
    config: &Config,
    addresses: &Addresses,
) -> Result<
    (
        BTreeMap<String, SharedDataplane>,
        Vec<std::os::unix::net::UnixListener>,
    ),
    AgentError,
> {
    let mut dataplanes: BTreeMap<String, SharedDataplane> = BTreeMap::new();
    let mut interface_locks = Vec::new();
    for interface in &plan.interfaces {
        interface_locks.push(lock_interface(interface)?);
        let opts = AttachOptions {
            interface: interface.clone(),
            mode: config.xdp_mode.into(),
            pin_root: config.pin_path.clone(),
        };
        let dp = Dataplane::open(&opts)
            .await
            .map_err(|source| AgentError::Dataplane {
                interface: interface.clone(),
                source: Box::new(source),
            })?;
        dataplanes.insert(interface.clone(), Arc::new(Mutex::new(dp)));
    }
    for (interface, dp) in &dataplanes {
        prepare_dataplane(interface, dp, &config.vips, addresses).await?;
    }
    Ok((dataplanes, interface_locks))
}

/// The started agent: its tasks and how to stop them in order.
struct Running {
    /// VIP tasks, the metrics server and the readiness notice.
    tasks: TaskTracker,
    /// Followers, gates, member watchers and handshakes: on their own tracker so shutdown can
    /// wait for them; no hook and no gate may write "answering" after the final fence.
    follower_tasks: TaskTracker,
    followers_stop: CancellationToken,
    vip_stop: CancellationToken,
    metrics_stop: CancellationToken,
    releases: Vec<Release>,
    links: LinkEvents,
}

impl Running {
    /// Build everything fallible, then spawn it all: nothing runs if any part fails.
    async fn start(
        plan: Plan,
        config: &Config,
        dataplanes: &BTreeMap<String, SharedDataplane>,
        addresses: &Addresses,
    ) -> Result<Self, AgentError> {
        // The VIPs and the hook label values are declared before anything runs; from then on
        // every subsystem reports through one observation channel, which the registry applies in
        // its own task (spawned below, with the server).
        let registry = Registry::default();
        let (observer, observations) = observe::channel();
        for vip in &config.vips {
            registry.apply(Observation::Vip {
                vip: vip.ip,
                interface: vip.interface.clone(),
                key: vip.trigger_key.clone(),
            });
        }
        registry.apply(hooks::observation_labels());
        // The metrics page reads the maps on descriptors of its own: a scrape never takes the
        // writer's lock (issue 16, item 8).
        let mut readers = BTreeMap::new();
        for (interface, dp) in dataplanes {
            let reader = dp
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reader()
                .map_err(|source| AgentError::Dataplane {
                    interface: interface.clone(),
                    source: Box::new(source),
                })?;
            readers.insert(interface.clone(), Arc::new(reader));
        }
        registry.set_snapshot(snapshot_fn(&config.vips, &readers));
        // Bound before any task starts: a taken port is a startup error with nothing running.
        let listener = server::bind(config.metrics_address).await?;

        let mut wiring = Wiring::default();
        for source in plan.sources {
            wiring.add(source, &config.vips, dataplanes, &observer)?;
        }
        let Wiring {
            followers,
            receivers,
            vip_receivers,
            members,
            handshakes,
            releases,
            gates,
        } = wiring;
        let mut vip_tasks = Vec::new();
        for vip in &config.vips {
            let (Some(dp), Some(rx)) = (dataplanes.get(&vip.interface), vip_receivers.get(&vip.ip))
            else {
                continue;
            };
            vip_tasks.push(VipTask::new(
                vip.clone(),
                Arc::clone(dp),
                addresses.clone(),
                rx.clone(),
                &config.garp,
                observer.clone(),
            )?);
        }
        // An interface deleted (and maybe re-created) takes the program, the pins and the
        // addresses with it: nothing the agent holds follows the new one.
        let links = LinkEvents::subscribe().map_err(AgentError::LinkEvents)?;

        let running = Self {
            tasks: TaskTracker::new(),
            follower_tasks: TaskTracker::new(),
            followers_stop: CancellationToken::new(),
            vip_stop: CancellationToken::new(),
            metrics_stop: CancellationToken::new(),
            releases,
            links,
        };
        for task in vip_tasks {
            running.tasks.spawn(task.run(running.vip_stop.clone()));
        }
        let stop = &running.followers_stop;
        for follower in followers {
            running.follower_tasks.spawn(follower.run(stop.clone()));
        }
        for gate in gates {
            running.follower_tasks.spawn(gate.run(stop.clone()));
        }
        for member in members {
            running.follower_tasks.spawn(member.run(stop.clone()));
        }
        for handshake in handshakes {
            running.follower_tasks.spawn(handshake.run(stop.clone()));
        }
        running.follower_tasks.close();
        drop(observer);
        running.tasks.spawn(
            registry
                .clone()
                .follow(observations, running.metrics_stop.clone()),
        );
        running.tasks.spawn(server::serve(
            listener,
            registry,
            running.metrics_stop.clone(),
        ));
        running
            .tasks
            .spawn(notify_ready(receivers, config.vips.len()));
        running.tasks.close();
        Ok(running)
    }

    /// Until `shutdown`, or until an interface of the agent is deleted (`Some` its name).
    async fn until_stopped(
        &mut self,
        shutdown: &CancellationToken,
        dataplanes: &BTreeMap<String, SharedDataplane>,
    ) -> Option<String> {
        let watched: Vec<(String, u32)> = dataplanes
            .iter()
            .map(|(name, dp)| {
                let index = dp.lock().unwrap_or_else(PoisonError::into_inner).ifindex();
                (name.clone(), index)
            })
            .collect();
        let removed = tokio::select! {
            () = shutdown.cancelled() => None,
            interface = self.links.removed(&watched) => Some(interface),
        };
        match &removed {
            None => info!("shutting down: fencing every VIP"),
            Some(interface) => error!(interface = %interface,
                "the interface was deleted: fencing every VIP and exiting (a restart attaches anew)"),
        }
        removed
    }

    /// Stop following and wait for it, fence every VIP, release the fence records, then stop the
    /// VIP tasks (which remove the addresses) and the metrics server.
    async fn stop(self, config: &Config, dataplanes: &BTreeMap<String, SharedDataplane>) {
        self.followers_stop.cancel();
        self.follower_tasks.wait().await;
        for (interface, dp) in dataplanes {
            let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
            for vip in config.vips.iter().filter(|v| &v.interface == interface) {
                if let Err(e) = dp.fence(vip.ip) {
                    error!(vip = %vip.ip, error = %Chain(&e), "fence at shutdown failed");
                }
            }
        }
        // Fenced: now the other agents need not wait for this one's fence records to expire.
        for release in self.releases {
            release.release().await;
        }
        self.vip_stop.cancel();
        self.metrics_stop.cancel();
        self.tasks.wait().await;
    }
}

/// Tell systemd (`Type=notify`) that the agent is ready: the data plane is attached (the caller
/// spawns this after that) and every follower has published its first state from etcd, a read or
/// the failure of its first attempt. An agent that cannot reach etcd is running, fenced, and
/// retrying: it must neither hold back units ordered after it nor be killed by `TimeoutStartSec`.
/// Ends without notifying when the followers stop first (shutdown during startup). After a SIGHUP
/// restart it notifies again, which systemd ignores for a running service.
async fn notify_ready(mut leaders: Vec<watch::Receiver<Leadership>>, vips: usize) {
    let notifier = match Notifier::from_env() {
        Ok(n) if n.is_enabled() => n,
        Ok(_) => return,
        Err(e) => {
            warn!(error = %e, "cannot notify systemd");
            return;
        }
    };
    for leader in &mut leaders {
        if leader
            .wait_for(|s| s.cause != Cause::Startup)
            .await
            .is_err()
        {
            return;
        }
    }
    // Static on purpose: nothing keeps STATUS= up to date, so it names no state that changes.
    let status = format!(
        "running: {vips} VIP(s), following {} leader key(s)",
        leaders.len()
    );
    match notifier.ready(&status) {
        Ok(()) => info!(status, "systemd notified: ready"),
        Err(e) => warn!(error = %e, "cannot notify systemd"),
    }
}

/// Reads every VIP's map entry and counters (for the metrics page, at scrape time), through the
/// data planes' readers: never the writer's lock.
fn snapshot_fn(
    vips: &[VipConfig],
    readers: &BTreeMap<String, Arc<DataplaneReader>>,
) -> metrics::SnapshotFn {
    let targets: Vec<(IpAddr, Arc<DataplaneReader>)> = vips
        .iter()
        .filter_map(|v| readers.get(&v.interface).map(|r| (v.ip, Arc::clone(r))))
        .collect();
    Arc::new(move || {
        targets
            .iter()
            .map(|(vip, reader)| DataplaneSample {
                vip: Some(*vip),
                state: reader.state(*vip).ok().flatten(),
                stats: reader.stats(*vip).unwrap_or_default(),
                egress: reader.egress_stats(*vip).unwrap_or_default(),
                fence_write_failures: reader.fence_write_failures(*vip),
            })
            .collect()
    })
}

/// Hold the per-interface lock of this network namespace until the returned socket is dropped:
/// an abstract Unix socket named after the interface. Abstract names live in the network
/// namespace, like the interface itself, and vanish with the process, so a crashed agent leaves
/// no stale lock behind (a lock file would, and a private mount namespace would not share it).
fn lock_interface(interface: &str) -> Result<std::os::unix::net::UnixListener, AgentError> {
    use std::os::linux::net::SocketAddrExt as _;
    let name = format!("vip-agent/interface/{interface}");
    let addr =
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(|source| {
            AgentError::InterfaceLock {
                interface: interface.to_owned(),
                source,
            }
        })?;
    std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AddrInUse {
            AgentError::InterfaceTaken {
                interface: interface.to_owned(),
            }
        } else {
            AgentError::InterfaceLock {
                interface: interface.to_owned(),
                source,
            }
        }
    })
}

/// Register and fence this interface's VIPs. A VIP left in adopted maps by an older
/// configuration is fenced, its kernel address removed, and only then forgotten: an unknown VIP
/// passes to the kernel, which would answer for a leftover address forever.
async fn prepare_dataplane(
    interface: &str,
    dp: &SharedDataplane,
    vips: &[VipConfig],
    addresses: &Addresses,
) -> Result<(), AgentError> {
    let err = |source| AgentError::Dataplane {
        interface: interface.to_owned(),
        source: Box::new(source),
    };
    let ours: Vec<IpAddr> = vips
        .iter()
        .filter(|v| v.interface == interface)
        .map(|v| v.ip)
        .collect();
    let stale: Vec<IpAddr> = {
        let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
        let stale: Vec<IpAddr> = dp
            .snapshot()
            .map_err(err)?
            .into_iter()
            .map(|s| s.vip)
            .filter(|vip| !ours.contains(vip))
            .collect();
        for vip in &stale {
            // Either way its address is removed next, before it is forgotten.
            let _: Fenced = dp.fence(*vip).map_err(err)?;
        }
        stale
    };
    if !stale.is_empty() {
        let ifindex =
            nix::net::if_::if_nametoindex(interface).map_err(|e| AgentError::InterfaceLock {
                interface: interface.to_owned(),
                source: e.into(),
            })?;
        for vip in stale {
            warn!(interface, %vip,
                "VIP in the pinned maps is no longer configured: removing its address, then forgetting it");
            let address = Vip {
                ifindex,
                address: vip,
                prefix_len: if vip.is_ipv4() { 32 } else { 128 },
            };
            addresses
                .remove(address)
                .await
                .map_err(|source| AgentError::StaleAddress {
                    interface: interface.to_owned(),
                    vip,
                    source: Box::new(source),
                })?;
            let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
            dp.unregister(vip).map_err(err)?;
        }
    }
    let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
    for vip in ours {
        dp.register(vip).map_err(err)?;
        // Fenced or deleted, the VIP's task removes any address it has before anything else.
        let _: Fenced = dp.fence(vip).map_err(err)?;
    }
    Ok(())
}

/// The running parts built from the plan's sources, before any task starts.
#[derive(Default)]
struct Wiring {
    followers: Vec<Box<dyn Source>>,
    /// Each source's published states (for `READY=1`).
    receivers: Vec<watch::Receiver<Leadership>>,
    /// Each VIP's effective states (its gate's).
    vip_receivers: BTreeMap<IpAddr, watch::Receiver<Leadership>>,
    members: Vec<MemberWatcher>,
    handshakes: Vec<Handshake>,
    releases: Vec<Release>,
    gates: Vec<Gate>,
}

impl Wiring {
    /// Build one source and what hangs behind it: (etcd) the member watcher and the fence
    /// handshake, then a gate and data plane writer per writer of the plan.
    fn add(
        &mut self,
        plan: SourcePlan,
        vips: &[VipConfig],
        dataplanes: &BTreeMap<String, SharedDataplane>,
        observer: &Observer,
    ) -> Result<(), AgentError> {
        let kind = plan.source.kind();
        let member = plan.member.as_ref().and_then(|key| match &plan.source {
            SourceChoice::Etcd(settings) => {
                let watcher = MemberWatcher::new((**settings).clone(), key.clone());
                let rx = watcher.subscribe();
                self.members.push(watcher);
                Some(rx)
            }
            _ => None,
        });
        let mut hooks: Vec<GateHook> = Vec::new();
        for w in plan.writers {
            let targets: Vec<(IpAddr, u8, SharedDataplane)> = vips
                .iter()
                .filter(|v| w.vips.contains(&v.ip))
                .filter_map(|v| {
                    dataplanes
                        .get(&v.interface)
                        .map(|dp| (v.ip, v.prefix_len, Arc::clone(dp)))
                })
                .collect();
            let mut writer = DataplaneWriter::new(plan.key.clone(), targets, observer.clone());
            let gate = Gate::new(
                w.name,
                w.gate,
                kind,
                Box::new(move |state: &Leadership| writer.apply(state)),
            )
            .with_target(member.clone(), plan.scope.clone())
            .with_member_name(plan.scope.is_some().then(|| plan.value.clone()));
            let gate_observer = observer.clone();
            let ips = w.vips;
            for ip in &ips {
                self.vip_receivers.insert(*ip, gate.subscribe());
            }
            gate.on_status(Box::new(move |status| {
                let gate = status.observation();
                for ip in &ips {
                    gate_observer.observe(Observation::Gate {
                        vip: *ip,
                        gate: gate.clone(),
                    });
                }
            }));
            hooks.push(gate.hook());
            self.gates.push(gate);
        }
        let to_gates: Hook = Box::new(move |state: &Leadership| {
            for hook in &hooks {
                hook.apply(state);
            }
        });
        // etcd: the fence handshake sits between the follower and the gates.
        let mut to_gates = match (&plan.source, plan.handshake) {
            (SourceChoice::Etcd(settings), Some(handshake)) => {
                let handshake = Handshake::new((**settings).clone(), handshake, to_gates);
                let hook = handshake.hook();
                self.releases.push(handshake.releaser());
                self.handshakes.push(handshake);
                Box::new(move |state: &Leadership| hook.apply(state))
            }
            _ => to_gates,
        };
        let mut source: Box<dyn Source> = match plan.source {
            SourceChoice::Etcd(settings) => Box::new(LeaderFollower::new(*settings).map_err(
                |source| AgentError::Leader {
                    key: plan.key.clone(),
                    source,
                },
            )?),
            SourceChoice::Repmgr {
                config,
                fence_timeout,
            } => {
                let mut source = RepmgrSource::new(repmgr_settings(&config, fence_timeout)?)?;
                let events = observer.clone();
                source.on_event(move |outcome| {
                    events.observe(Observation::SourceEvent {
                        outcome,
                        outcomes: &crate::repmgr::EVENT_OUTCOMES,
                    });
                });
                Box::new(source)
            }
            SourceChoice::PatroniRest(settings) => Box::new(PatroniRestSource::new(*settings)?),
        };
        // Named from the start (its series and health message), not reached before its first
        // answer; ahead of every state of the source on the same channel.
        observer.observe(Observation::Source {
            key: plan.key.clone(),
            kind: kind.observed(),
            reached: false,
            detail: 0,
        });
        let source_observer = observer.clone();
        let key = plan.key;
        source.on_change(Box::new(move |state: &Leadership| {
            to_gates(state);
            source_observer.observe(Observation::Source {
                key: key.clone(),
                kind: kind.observed(),
                reached: state.reached(),
                detail: state.detail,
            });
        }));
        self.receivers.push(source.subscribe());
        self.followers.push(source);
        Ok(())
    }
}

/// Resolve `dcs-type: repmgr`'s configuration: the socket group's id, the connection string, the
/// validity (3 check intervals, capped by `fence_timeout`).
fn repmgr_settings(
    config: &RepmgrConfig,
    fence_timeout: Option<std::time::Duration>,
) -> Result<RepmgrSettings, RepmgrError> {
    let socket_group = match &config.socket_group {
        None => None,
        Some(g) => Some(resolve_group(g)?),
    };
    let postgres = config
        .postgres_dsn
        .expose()
        .parse::<tokio_postgres::Config>()
        .map_err(RepmgrError::Dsn)?;
    Ok(RepmgrSettings {
        node_id: config.node_id,
        socket: config.socket.clone(),
        socket_group,
        check_interval: config.check_interval,
        validity: config.validity(fence_timeout),
        quorum_hold: config.quorum_hold,
        state_file: config.state_file.clone(),
        postgres,
        passfile: config.passfile.clone(),
    })
}

/// What [`DataplaneWriter`] needs of a data plane: [`Dataplane`], or a fake in tests.
trait MapWriter: Send {
    fn ifindex(&self) -> u32;
    fn program_lifetime(&self) -> ProgramLifetime;
    fn answer_until(&mut self, vip: IpAddr, deadline_ns: u64) -> Result<(), DataplaneError>;
    fn fence(&mut self, vip: IpAddr) -> Result<Fenced, DataplaneError>;
    fn set_promoting(&mut self, vip: IpAddr, promoting: bool);
}

impl MapWriter for Dataplane {
    fn set_promoting(&mut self, vip: IpAddr, promoting: bool) {
        Self::set_promoting(self, vip, promoting);
    }

    fn ifindex(&self) -> u32 {
        Self::ifindex(self)
    }

    fn program_lifetime(&self) -> ProgramLifetime {
        Self::program_lifetime(self)
    }

    fn answer_until(&mut self, vip: IpAddr, deadline_ns: u64) -> Result<(), DataplaneError> {
        Self::answer_until(self, vip, deadline_ns)
    }

    fn fence(&mut self, vip: IpAddr) -> Result<Fenced, DataplaneError> {
        Self::fence(self, vip)
    }
}

/// How the writer adds a VIP's address before answering: [`crate::address::add_blocking`].
type AddAddress = Box<dyn Fn(Vip, Lifetime) -> Result<(), AddressError> + Send>;

/// Writes every effective state into the maps, before anyone else hears of it: in the follower's
/// task (through the gate's hook) for everything but an opening gate, in the gate's task for that.
struct DataplaneWriter<D: MapWriter = Dataplane> {
    key: String,
    /// VIP, prefix length, data plane.
    targets: Vec<(IpAddr, u8, Arc<Mutex<D>>)>,
    observer: Observer,
    /// The deadline of the last write (0: fenced). The data plane answers while it lies ahead, so
    /// a deadline that ran out counts as fenced and the next confirmation logs a transition.
    answering_until: u64,
    add_address: AddAddress,
}

impl<D: MapWriter> DataplaneWriter<D> {
    fn new(key: String, targets: Vec<(IpAddr, u8, Arc<Mutex<D>>)>, observer: Observer) -> Self {
        Self {
            key,
            targets,
            observer,
            answering_until: 0,
            add_address: Box::new(crate::address::add_blocking),
        }
    }

    fn apply(&mut self, state: &Leadership) {
        let now = monotonic_ns();
        let answer = state.is_safe_at(now);
        let promoting = answer && now >= self.answering_until;
        for (vip, prefix_len, dp) in &self.targets {
            if promoting {
                // The kernel address first, then the ARP answers: a client that learns our MAC
                // sends its SYN at once, and the kernel drops a SYN to an address it does not
                // have yet (the client retries after a second). Fenced, the address is harmless:
                // the program drops ARP and IPv4 for the VIP. The VIP's task adds it too (and
                // keeps it), so a failure here only costs that race. It expires by itself before
                // the deadline (`Lifetime::until`); where no lifetime can, it is not added here,
                // and the VIP's task says so and adds it once one can.
                //
                // Not under the data plane's lock: the netlink exchange may take up to
                // `ADD_BLOCKING_TIMEOUT`, and fences of other VIPs, the VIP tasks and the metrics
                // must not wait for it. The promotion is marked instead, so that the VIP's task
                // takes the address it sees appear as ours (`on_address_event`).
                let (ifindex, program) = {
                    let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
                    dp.set_promoting(*vip, true);
                    (dp.ifindex(), dp.program_lifetime())
                };
                let address = Vip {
                    ifindex,
                    address: *vip,
                    prefix_len: *prefix_len,
                };
                let lifetime = Lifetime::until(state.safe_until_ns, monotonic_ns(), program);
                if let Some(lifetime) = lifetime
                    && let Err(e) = (self.add_address)(address, lifetime)
                {
                    warn!(vip = %vip, error = %Chain(&e), "adding the address before answering failed");
                }
            }
            let mut dp = dp.lock().unwrap_or_else(PoisonError::into_inner);
            let result = if answer {
                dp.answer_until(*vip, state.safe_until_ns)
            } else {
                // Written or deleted: the VIP's task removes the address on this demotion.
                dp.fence(*vip).map(|_| ())
            };
            dp.set_promoting(*vip, false);
            if let Err(e) = result {
                error!(vip = %vip, error = %Chain(&e), "data plane write failed");
            }
        }
        let done = monotonic_ns();
        let latency_ns = done.saturating_sub(state.observed_at_ns);
        let latency_us = latency_ns / 1_000;
        let transition = answer != (now < self.answering_until);
        self.answering_until = if answer { state.safe_until_ns } else { 0 };
        for (vip, _, _) in &self.targets {
            self.observer.observe(Observation::Write {
                vip: *vip,
                transition,
                latency: std::time::Duration::from_nanos(latency_ns),
            });
        }
        if transition {
            info!(
                key = %self.key,
                role = if answer { "primary" } else { "fenced" },
                cause = ?state.cause,
                detail = state.detail,
                deadline_in_ms = state.safe_until_ns.saturating_sub(now) / 1_000_000,
                event_to_dataplane_us = latency_us,
                dataplane_at_ns = done,
                "data plane {}", if answer { "answering" } else { "fenced" }
            );
        } else {
            debug!(key = %self.key, cause = ?state.cause, detail = state.detail,
                deadline_in_ms = state.safe_until_ns.saturating_sub(now) / 1_000_000,
                event_to_dataplane_us = latency_us, "data plane updated");
        }
    }
}

/// The slow effects of one VIP: its kernel address and gratuitous ARP.
struct VipTask {
    config: VipConfig,
    vip: Vip,
    dataplane: SharedDataplane,
    mac: [u8; 6],
    addresses: Addresses,
    events: AddressEvents,
    /// Link notifications: a primary announces the VIP again when its interface comes back.
    links: LinkEvents,
    /// Whether the interface could carry traffic at the last link notification.
    carrier: bool,
    leader: watch::Receiver<Leadership>,
    garp: Arc<GarpSender>,
    garp_config: GarpConfig,
    observer: Observer,
    /// Stops the hook of the previous transition (the latest transition wins).
    hook_stop: CancellationToken,
    tasks: TaskTracker,
    /// Whether the XDP program outlives the agent: how the address lifetime rounds.
    program: ProgramLifetime,
    /// The deadline the address (and its lifetime) was last written for; 0: not since the last
    /// demotion.
    address_for: u64,
    /// The "deadline too close for an address" warning was logged in this episode.
    too_close_logged: bool,
}

impl VipTask {
    fn new(
        config: VipConfig,
        dataplane: SharedDataplane,
        addresses: Addresses,
        leader: watch::Receiver<Leadership>,
        garp_config: &GarpConfig,
        observer: Observer,
    ) -> Result<Self, AgentError> {
        let (ifindex, mac, program) = {
            let dp = dataplane.lock().unwrap_or_else(PoisonError::into_inner);
            (dp.ifindex(), dp.mac(), dp.program_lifetime())
        };
        let garp = GarpSender::open(ifindex).map_err(|source| AgentError::Garp {
            interface: config.interface.clone(),
            source,
        })?;
        Ok(Self {
            vip: Vip {
                ifindex,
                address: config.ip,
                prefix_len: config.prefix_len,
            },
            config,
            dataplane,
            mac,
            addresses,
            events: AddressEvents::subscribe()?,
            links: LinkEvents::subscribe().map_err(AgentError::LinkEvents)?,
            carrier: true,
            leader,
            garp: Arc::new(garp),
            garp_config: *garp_config,
            observer,
            hook_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            program,
            address_for: 0,
            too_close_logged: false,
        })
    }

    async fn run(mut self, stop: CancellationToken) {
        let mut holding = false;
        let mut garp_stop = CancellationToken::new();
        // Whatever a previous run left: not ours until a read says so.
        self.remove_address().await;
        loop {
            let state = *self.leader.borrow_and_update();
            let now = monotonic_ns();
            let want = state.is_safe_at(now);
            if want != holding {
                holding = want;
                if want {
                    info!(vip = %self.vip, interface = %self.config.interface, "promoted: adding address, announcing");
                    self.put_address(state.safe_until_ns).await;
                    garp_stop = CancellationToken::new();
                    self.spawn_garp(garp_stop.clone());
                    self.spawn_hook(HookEvent::Promote);
                } else {
                    if state.primary && state.safe_until_ns <= now {
                        if !self.fence_expired() {
                            // Renewed since this task read the state: the writer's map entry wins
                            // (no black hole, no demote/promote hooks); its state follows on the
                            // channel within microseconds.
                            holding = true;
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_millis(10),
                                self.leader.changed(),
                            )
                            .await;
                            continue;
                        }
                        warn!(vip = %self.vip, cause = ?state.cause,
                            "leadership not confirmed before the deadline: fenced by the data plane");
                    }
                    garp_stop.cancel();
                    info!(vip = %self.vip, interface = %self.config.interface, "demoted: removing address");
                    self.remove_address().await;
                    self.spawn_hook(HookEvent::Demote);
                }
            } else if holding && self.address_due(state.safe_until_ns) {
                // The deadline moved: the address's lifetime follows it, replaced in place.
                self.put_address(state.safe_until_ns).await;
            }
            let deadline = holding.then_some(state.safe_until_ns);
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        // The follower ended (shutdown): hold nothing we cannot confirm.
                        stop.cancelled().await;
                        break;
                    }
                }
                () = sleep_until_ns(deadline) => {}
                event = self.events.next() => self.on_address_event(event, deadline).await,
                link = self.links.next() => {
                    if self.on_link_event(link) && holding {
                        info!(vip = %self.vip, interface = %self.config.interface,
                            "interface came back up while primary: announcing the VIP again");
                        garp_stop.cancel();
                        garp_stop = CancellationToken::new();
                        self.spawn_garp(garp_stop.clone());
                    }
                }
            }
        }
        garp_stop.cancel();
        self.fence();
        self.remove_address().await;
        if holding {
            // Giving the VIP up at shutdown is a demotion: its hook runs once (no retries), within
            // its timeout, before the agent exits.
            self.hook_stop.cancel();
            let config = HookConfig {
                retries: 0,
                timeout: self.config.hooks.timeout.min(hooks::SHUTDOWN_LIMIT),
                ..self.config.hooks.clone()
            };
            let context = self.hook_context();
            if let Some(report) = hooks::run(
                &config,
                HookEvent::Demote,
                &context,
                &CancellationToken::new(),
            )
            .await
            {
                self.observer.observe(Observation::Hook {
                    vip: self.vip.address,
                    run: report.observation(HookEvent::Demote),
                });
            }
        }
        self.hook_stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn hook_context(&self) -> HookContext {
        HookContext {
            vip: self.vip.address,
            prefix_len: self.vip.prefix_len,
            interface: self.config.interface.clone(),
            trigger_key: self.config.trigger_key.clone(),
            trigger_value: self.config.trigger_value.clone(),
        }
    }

    /// Start the hook of `event` (if configured), killing the previous transition's hook.
    fn spawn_hook(&mut self, event: HookEvent) {
        self.hook_stop.cancel();
        self.hook_stop = CancellationToken::new();
        let hooks = match event {
            HookEvent::Promote => &self.config.hooks.on_promote,
            HookEvent::Demote => &self.config.hooks.on_demote,
        };
        if hooks.is_none() {
            return;
        }
        let (config, context, stop) = (
            self.config.hooks.clone(),
            self.hook_context(),
            self.hook_stop.clone(),
        );
        let observer = self.observer.clone();
        self.tasks.spawn(async move {
            if let Some(report) = hooks::run(&config, event, &context, &stop).await {
                observer.observe(Observation::Hook {
                    vip: context.vip,
                    run: report.observation(event),
                });
            }
        });
    }

    /// Whether the data plane answers for this VIP right now, or the writer is promoting it (read
    /// under its lock).
    fn answering_now(&self) -> bool {
        let dp = self
            .dataplane
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        dp.promoting(self.vip.address)
            || matches!(dp.state(self.vip.address), Ok(Some(s)) if s.answering_at(monotonic_ns()))
    }

    /// The deadline passed without a renewal in this task's view: fence, unless the map's entry
    /// says otherwise. Checked and written under the data-plane lock, which the writer holds for
    /// its renewals, so a renewal written microseconds ago is not overwritten (issue 16, item 5).
    /// Returns whether it fenced.
    fn fence_expired(&self) -> bool {
        let mut dp = self
            .dataplane
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match dp.fence_if_expired(self.vip.address, monotonic_ns()) {
            Ok(None) => false,
            // Written or deleted: the caller removes the address next.
            Ok(Some(_)) => true,
            Err(e) => {
                error!(vip = %self.vip, error = %Chain(&e), "fence failed");
                true
            }
        }
    }

    fn fence(&self) {
        let mut dp = self
            .dataplane
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = dp.fence(self.vip.address) {
            error!(vip = %self.vip, error = %Chain(&e), "fence failed");
        }
    }

    fn spawn_garp(&self, stop: CancellationToken) {
        let garp = Arc::clone(&self.garp);
        let (mac, vip) = (self.mac, self.vip);
        let schedule: Vec<_> = self.garp_config.schedule().collect();
        self.tasks.spawn(async move {
            match garp.burst(mac, vip.address, schedule, &stop).await {
                Ok(n) => debug!(vip = %vip, announcements = n, "gratuitous ARP burst done"),
                Err(e) => warn!(vip = %vip, error = %Chain(&e), "gratuitous ARP failed"),
            }
        });
    }

    /// Track this interface's carrier; `true` when it just came back (down -> up). Neighbours and
    /// switches may have forgotten us while it was down (a cable pulled, a switch port reset), so a
    /// primary announces again, as on promotion.
    fn on_link_event(&mut self, event: Option<(u32, bool)>) -> bool {
        match event {
            Some((ifindex, carrier)) if ifindex == self.vip.ifindex => {
                let came_back = carrier && !self.carrier;
                if carrier != self.carrier {
                    info!(vip = %self.vip, interface = %self.config.interface, carrier,
                        "interface {}", if carrier { "up" } else { "down" });
                }
                self.carrier = carrier;
                came_back
            }
            Some(_) => false,
            None => {
                error!(vip = %self.vip, "link notifications ended; no re-announcement after a link bounce");
                false
            }
        }
    }

    /// Follow an address notification. `holding_until`: the deadline while this VIP is held.
    async fn on_address_event(&mut self, event: Option<AddressEvent>, holding_until: Option<u64>) {
        let ours = |v: &Vip| v.ifindex == self.vip.ifindex && v.address == self.vip.address;
        match (event, holding_until) {
            (Some(AddressEvent::Removed(v)), Some(deadline)) if ours(&v) => {
                warn!(vip = %self.vip, "VIP address removed from the interface while primary: putting it back");
                self.put_address(deadline).await;
            }
            (Some(AddressEvent::Expired(v)), Some(_)) if ours(&v) => {
                // The kernel ended it because its lifetime ran out, which only happens close to
                // the deadline (or when renewals stall): never put back, so the agent does not
                // fight an expiry meant to beat the deadline. A deadline moved on renews it.
                info!(vip = %self.vip,
                    "VIP address expired (its lifetime ends before the deadline); it comes back when a confirmation moves the deadline");
            }
            (Some(AddressEvent::Added(v)), None) if ours(&v) => {
                // A promotion adds the address just before the map write, marked as promoting
                // under the data plane's lock from before the add until the map write
                // (`DataplaneWriter::apply`); its state change may reach this task after the
                // address event. Under the same lock, that mark or an answering map entry means
                // the address is ours.
                if self.answering_now() {
                    debug!(vip = %self.vip, "address added by the promotion in progress");
                    return;
                }
                warn!(vip = %self.vip, "VIP address added to the interface while not primary: removing it (the data plane keeps it fenced)");
                self.remove_address().await;
            }
            (Some(_), _) => {}
            (None, _) => {
                // Only the drift correction stops: the leader and the deadline go on being
                // followed (`AddressEvents::next` is never ready again).
                error!(vip = %self.vip, "address notifications ended; drift is no longer corrected");
            }
        }
    }

    /// Whether the address's lifetime should be written again for `deadline`: it moved back (a
    /// shorter deadline shortens the lifetime), or on by 500 ms or more (whole-second lifetimes;
    /// this keeps a Patroni failsafe hold, which moves the deadline every 50 ms, from renewing at
    /// that rate).
    fn address_due(&self, deadline: u64) -> bool {
        deadline < self.address_for || deadline - self.address_for >= 500_000_000
    }

    /// Add the address, or renew its lifetime, for a data plane answering until `deadline`; with no
    /// lifetime that ends in time ([`Lifetime::until`]), leave it away.
    async fn put_address(&mut self, deadline: u64) {
        self.address_for = deadline;
        let now = monotonic_ns();
        let Some(lifetime) = Lifetime::until(deadline, now, self.program) else {
            if !self.too_close_logged && deadline > now {
                self.too_close_logged = true;
                warn!(vip = %self.vip, deadline_in_ms = (deadline - now) / 1_000_000,
                    "answering without the VIP address: the XDP program ends with this agent (a bpffs of its own), so the \
                     address may only have a lifetime that ends before the deadline, and the deadline is too close for one \
                     (1 s and the kernel's 3 s margin); it is added once a confirmation moves the deadline further \
                     (a lease with 5 s or more left at each confirmation always does)");
            }
            return;
        };
        match self.addresses.add(self.vip, lifetime).await {
            Ok(()) => debug!(vip = %self.vip, %lifetime, "address present"),
            Err(e) => error!(vip = %self.vip, error = %Chain(&e), "address change failed"),
        }
    }

    async fn remove_address(&mut self) {
        self.address_for = 0;
        self.too_close_logged = false;
        match self.addresses.remove(self.vip).await {
            Ok(change) => debug!(vip = %self.vip, ?change, "address absent"),
            Err(e) => error!(vip = %self.vip, error = %Chain(&e), "address change failed"),
        }
    }
}

/// Sleep until kernel monotonic time `deadline_ns`; forever when `None`.
async fn sleep_until_ns(deadline_ns: Option<u64>) {
    match deadline_ns {
        Some(deadline) => {
            let now = monotonic_ns();
            tokio::time::sleep(std::time::Duration::from_nanos(
                deadline.saturating_sub(now),
            ))
            .await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::IpAddr,
        sync::{
            Arc, Mutex,
            atomic::{AtomicBool, Ordering},
        },
    };

    use super::{DataplaneWriter, MapWriter};
    use crate::{
        address::{AddressError, ProgramLifetime},
        clock::monotonic_ns,
        dataplane::{DataplaneError, Fenced},
        leadership::{Cause, Leadership},
    };

    /// A data plane that records what is written.
    #[derive(Default)]
    struct Recorded {
        /// VIP and deadline (`None`: fenced).
        writes: Vec<(IpAddr, Option<u64>)>,
    }

    impl MapWriter for Recorded {
        fn ifindex(&self) -> u32 {
            7
        }

        fn program_lifetime(&self) -> ProgramLifetime {
            ProgramLifetime::Pinned
        }

        fn answer_until(&mut self, vip: IpAddr, deadline_ns: u64) -> Result<(), DataplaneError> {
            self.writes.push((vip, Some(deadline_ns)));
            Ok(())
        }

        fn fence(&mut self, vip: IpAddr) -> Result<Fenced, DataplaneError> {
            self.writes.push((vip, None));
            Ok(Fenced::Written)
        }

        fn set_promoting(&mut self, _: IpAddr, _: bool) {}
    }

    /// Issue 16, item 18: the address add on promotion runs without the data-plane lock (another
    /// thread takes it while the add is pending), and an add that times out does not keep the
    /// data plane from answering.
    #[test]
    fn the_promotion_adds_the_address_without_the_dataplane_lock() {
        let vip = IpAddr::from([10, 0, 0, 5]);
        let dp = Arc::new(Mutex::new(Recorded::default()));
        let mut writer = DataplaneWriter::new(
            "/k".into(),
            vec![(vip, 32, Arc::clone(&dp))],
            crate::observe::channel().0,
        );
        let lock_free = Arc::new(AtomicBool::new(false));
        let (seen, free) = (Arc::clone(&dp), Arc::clone(&lock_free));
        writer.add_address = Box::new(move |address, _| {
            let dp = Arc::clone(&seen);
            let took = std::thread::spawn(move || dp.try_lock().is_ok())
                .join()
                .unwrap_or(false);
            free.store(took, Ordering::SeqCst);
            Err(AddressError::Timeout {
                operation: "add",
                address: address.address,
                prefix_len: address.prefix_len,
                ifindex: address.ifindex,
                after: crate::address::ADD_BLOCKING_TIMEOUT,
            })
        });
        let now = monotonic_ns();
        let deadline = now + 30_000_000_000;
        writer.apply(&Leadership {
            primary: true,
            safe_until_ns: deadline,
            term: 1,
            cause: Cause::Confirmed,
            observed_at_ns: now,
            detail: 0,
        });
        assert!(
            lock_free.load(Ordering::SeqCst),
            "the data-plane lock was held across the address add"
        );
        let writes = &dp.lock().expect("not poisoned").writes;
        assert_eq!(
            writes,
            &[(vip, Some(deadline))],
            "answering despite the timeout"
        );
    }
}
