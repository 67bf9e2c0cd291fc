//! Failover benchmark: vip-agent against vip-manager in the same run, on netns clusters.
//!
//! Each system gets its own [`Bed`]: a [`Cluster`] (own subnet and bridge, so ARP traffic never
//! mixes) plus an application client whose kernel sends UDP to the VIP. The client host sends an
//! ARP request for the VIP every millisecond through every scenario and records who answered.
//!
//! Scenarios, each replaying what Patroni (or a failure) does to the leader key:
//! * **switchover**: release (delete if the value is the old leader's), then acquire (create for the
//!   new leader with a lease); from the release being sent (t0): the old holder's last reply, the
//!   new holder's first, blackout, overlap, each node's data-plane write (vip-agent's own
//!   `dataplane_at_ns`), the new holder's first gratuitous ARP and when the application client's
//!   kernel neighbour entry for the VIP switched MAC;
//! * **lease expiry**: the holder's Patroni dies, its key expires with the lease, the other node
//!   takes it;
//! * **partition**: the holder is cut off from etcd (its Patroni too, so its lease runs out);
//! * **agent killed**: SIGKILL of the holder's agent (or vip-manager) while its Patroni keeps the
//!   key; then restarts, after the VIP went dark and 1 s after a crash;
//! * **etcd outage**: etcd stopped and restarted with no leadership change;
//! * [`answer`] (`--answer`, run alone): switchovers plain and with the old agent stopped, killed
//!   or cut off, for the fence handshake's promise and cost.
//!
//! vip-agent's key is the etcd v3 key; Debian's vip-manager 1.0.2 reads the etcd v2 API only, so its
//! key is written through v2 (etcd runs with `--enable-v2`), in the same order.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use vip_agent::clock::monotonic_ns;
use vip_common::frame::ARP_OP_REPLY;

pub mod answer;

use crate::{
    arp::{ArpSocket, Probe},
    cluster::{self, Cluster, Host, process_tree},
};

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    VipAgent,
    /// vip-manager 1.0.2 polling every `interval_ms`.
    VipManager {
        interval_ms: u32,
    },
    /// keepalived 2.2 (VRRP) whose `vrrp_script` checks the leader key every `interval_s` seconds
    /// (see [`Cluster::start_keepalived`]).
    Keepalived {
        interval_s: u32,
    },
}

impl System {
    /// The name used in tables.
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Self::VipAgent => "vip-agent".to_owned(),
            Self::VipManager { interval_ms } => format!("vip-manager 1.0.2 ({interval_ms} ms)"),
            Self::Keepalived { interval_s } => {
                format!("keepalived 2.2.7 (check every {interval_s} s)")
            }
        }
    }

    /// Whether this system follows the etcd v3 key (vip-agent, keepalived's `etcdctl` check) rather
    /// than the v2 key (Debian's vip-manager 1.0.2).
    #[must_use]
    pub const fn v3(self) -> bool {
        !matches!(self, Self::VipManager { .. })
    }

    /// How long after t0 a trial keeps probing: long enough for the slowest expected takeover.
    fn window(&self) -> Duration {
        match self {
            Self::VipAgent => Duration::from_millis(300),
            Self::VipManager { interval_ms } => {
                Duration::from_millis(u64::from(*interval_ms) * 2 + 800)
            }
            // One check interval until the new holder's check passes, then VRRP's master-down
            // interval (3 x advert_int + skew, 3.6 s at advert_int 1 s) when no advertisement
            // of priority 0 came, plus slack.
            Self::Keepalived { interval_s } => {
                Duration::from_millis(u64::from(*interval_s) * 1000 + 4400)
            }
        }
    }

    /// Start this system's process on node `i`.
    fn start_on(self, cluster: &mut Cluster, i: usize) {
        match self {
            Self::VipAgent => cluster.start_agent(i),
            Self::VipManager { interval_ms } => cluster.start_vip_manager(i, interval_ms),
            Self::Keepalived { interval_s } => cluster.start_keepalived(i, interval_s),
        }
    }
}

/// One switchover, times in ns from t0 (the release being sent).
#[derive(Clone, Debug, Default)]
pub struct Trial {
    pub from: usize,
    pub to: usize,
    pub release_acked_ns: u64,
    pub acquire_acked_ns: u64,
    /// Last reply from the old holder's MAC after t0 (0 when it had stopped before t0).
    pub last_old_ns: Option<u64>,
    pub first_new_ns: Option<u64>,
    /// Probes answered by both MACs.
    pub overlap: usize,
    pub probes: usize,
    /// vip-agent only: each node's data-plane write.
    pub old_dataplane_ns: Option<u64>,
    pub new_dataplane_ns: Option<u64>,
    /// The first gratuitous ARP (sender IP = target IP = VIP) from the new holder's MAC on the wire.
    pub first_garp_ns: Option<u64>,
    /// When the application client's kernel neighbour entry for the VIP took the new holder's MAC
    /// (`None` when it did not within the window, or already held it before t0).
    pub client_switch_ns: Option<u64>,
    /// The client's entry held the old holder's MAC before t0 (the trial started from a clean state).
    pub client_had_old_mac: bool,
    /// The application client's echo (ICMP echo request to the VIP every millisecond, sent by its
    /// kernel to the MAC its neighbour entry holds): the last reply from the old holder's MAC
    /// after t0 (`None`: it had stopped before t0) ...
    pub echo_last_old_ns: Option<u64>,
    /// ... the first reply from the new holder's MAC ...
    pub echo_first_new_ns: Option<u64>,
    /// ... and the echo requests sent from t0 to the end of the window that nobody answered,
    /// of `echo_sent`.
    pub echo_lost: usize,
    pub echo_sent: usize,
}

impl Trial {
    /// No holder answering: from the old holder's last reply to the new holder's first.
    #[must_use]
    pub fn blackout_ns(&self) -> Option<u64> {
        Some(
            self.first_new_ns?
                .saturating_sub(self.last_old_ns.unwrap_or(0)),
        )
    }
}

/// TTL of the lease a holder "crashes" with in the expiry scenario (Patroni's default is 30 s; etcd
/// refuses less than ~2 s with its default election timeout).
pub const EXPIRY_TTL_S: i64 = 3;

/// TTL of the lease a live Patroni keeps in the partition and agent-kill scenarios, renewed every
/// [`RENEW_INTERVAL`]: Patroni's defaults (ttl 30 s, loop_wait 10 s) scaled down so a trial takes
/// seconds. The agent's deadline is then 2.5 to 4.5 s ahead of any moment.
pub const HELD_TTL_S: i64 = 5;

/// How often a live Patroni renews its lease in these scenarios (its `loop_wait`, scaled down).
pub const RENEW_INTERVAL: Duration = Duration::from_secs(1);

/// systemd's `RestartSec=` in dist/systemd/vip-agent.service: how soon a crashed agent is back.
pub const SYSTEMD_RESTART: Duration = Duration::from_secs(1);

/// A stretch without replies from the holder longer than this is a blackout (probes go every ms;
/// shorter gaps are the prober's own jitter on this 2-CPU machine).
pub const BLACKOUT_MIN_NS: u64 = 50_000_000;

/// One etcd outage shape: the holder's lease TTL (vip-agent; vip-manager's v2 key does not expire)
/// and how long etcd stays down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutageShape {
    pub lease_ttl_s: i64,
    pub down: Duration,
}

/// The outages measured: an etcd restart or rolling upgrade under Patroni's default 30 s lease, and
/// an outage longer than the 5 s lease the agent last saw (its deadline runs out before etcd is back).
pub const OUTAGES: [OutageShape; 2] = [
    OutageShape {
        lease_ttl_s: 30,
        down: Duration::from_secs(3),
    },
    OutageShape {
        lease_ttl_s: HELD_TTL_S,
        down: Duration::from_secs(6),
    },
];

const LEASE_TTL: i64 = 3600;
const V2_TTL: i64 = 3600;
/// The prober's period, and its bound in probes (about a minute).
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
const MAX_PROBES: usize = 60_000;
/// Probing before the change, so the trial shows the state before it.
const LEAD_IN: Duration = Duration::from_millis(50);
/// Upper bound of the random pause added to [`LEAD_IN`] before a switchover (uniform, ms).
pub const JITTER_MS: u64 = 100;
/// After the holder is in place: lets its agent confirm against a renewed lease.
const SETTLE: Duration = Duration::from_secs(1);
/// Probing after the awaited reply.
const TAIL: Duration = Duration::from_millis(300);
/// Bound on any wait for a node to answer again.
const ANSWER_LIMIT: Duration = Duration::from_secs(15);

/// The key operations for one system (v3 for vip-agent, v2 for vip-manager).
struct Keys {
    system: System,
    /// One long lease per node for its acquisitions in switchovers and takeovers (v3).
    leases: [i64; 2],
}

/// A key held by a member, as [`Keys::hold`] left it.
#[derive(Clone, Copy, Debug)]
struct Held {
    /// The v3 lease (0 for v2).
    lease: i64,
    ttl_s: i64,
    /// Where a watch for its expiry starts: the etcd revision (v3) or the v2 index after the write.
    watch_from: i64,
}

/// What a thread needs to reach etcd from the client host, owned so it can run while the
/// scenario restarts processes or etcd itself.
#[derive(Clone, Debug)]
struct EtcdAccess {
    ns: PathBuf,
    endpoint: String,
    addr: SocketAddr,
    key: String,
}

impl EtcdAccess {
    fn of(cluster: &Cluster) -> Self {
        Self {
            ns: cluster.client.ns.path(),
            endpoint: cluster.endpoint.clone(),
            addr: SocketAddr::from((cluster.etcd_host.ip, 2379)),
            key: cluster.key.clone(),
        }
    }
}

impl Keys {
    fn new(cluster: &Cluster, system: System) -> Self {
        let leases = match system {
            System::VipAgent | System::Keepalived { .. } => cluster.etcd(async |c| {
                let a = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
                let b = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
                [a, b]
            }),
            System::VipManager { .. } => [0, 0],
        };
        Self { system, leases }
    }

    /// Release for `from`, then acquire for `to`; returns (t0, release acked, acquire acked).
    fn switch(&self, cluster: &Cluster, from: &str, to: &str, to_index: usize) -> (u64, u64, u64) {
        let key = cluster.key.as_str();
        match self.system {
            System::VipAgent | System::Keepalived { .. } => {
                let lease = self.leases[to_index];
                cluster.etcd(async |c| {
                    let t0 = monotonic_ns();
                    if !from.is_empty() {
                        cluster::release(c, key, from).await;
                    }
                    let released = monotonic_ns();
                    cluster::acquire(c, key, to, lease)
                        .await
                        .expect("the key was free");
                    (t0, released, monotonic_ns())
                })
            }
            System::VipManager { .. } => {
                let etcd = SocketAddr::from((cluster.etcd_host.ip, 2379));
                cluster.client.ns.run_in(|| {
                    let t0 = monotonic_ns();
                    if !from.is_empty() {
                        v2(
                            etcd,
                            "DELETE",
                            &format!("/v2/keys{key}?prevValue={from}"),
                            "",
                        );
                    }
                    let released = monotonic_ns();
                    let status = v2(
                        etcd,
                        "PUT",
                        &format!("/v2/keys{key}?prevExist=false"),
                        &format!("value={to}&ttl={V2_TTL}"),
                    );
                    assert!(
                        status == 201 || status == 200,
                        "v2 create answered {status}"
                    );
                    (t0, released, monotonic_ns())
                })
            }
        }
    }

    /// `current` releases the key and `name` takes it with a fresh lease of `ttl_s` (v3) or a v2
    /// TTL of `ttl_s`, which nobody renews unless [`Self::renew_while`] runs.
    fn hold(&self, cluster: &Cluster, current: &str, name: &str, ttl_s: i64) -> Held {
        let key = cluster.key.as_str();
        match self.system {
            System::VipAgent | System::Keepalived { .. } => cluster.etcd(async |c| {
                cluster::release(c, key, current).await;
                let lease = c.lease_grant(ttl_s, None).await.expect("lease").id();
                let revision = cluster::acquire(c, key, name, lease)
                    .await
                    .expect("the key was free");
                Held {
                    lease,
                    ttl_s,
                    watch_from: revision + 1,
                }
            }),
            System::VipManager { .. } => {
                let etcd = SocketAddr::from((cluster.etcd_host.ip, 2379));
                cluster.client.ns.run_in(|| {
                    v2(
                        etcd,
                        "DELETE",
                        &format!("/v2/keys{key}?prevValue={current}"),
                        "",
                    );
                    let (status, body) = v2_full(
                        etcd,
                        "PUT",
                        &format!("/v2/keys{key}?prevExist=false"),
                        &format!("value={name}&ttl={ttl_s}"),
                        Duration::from_secs(5),
                    );
                    assert_eq!(status, 201, "v2 create: {body}");
                    Held {
                        lease: 0,
                        ttl_s,
                        watch_from: body["node"]["modifiedIndex"]
                            .as_i64()
                            .expect("v2 modifiedIndex")
                            + 1,
                    }
                })
            }
        }
    }

    /// Patroni's loop on the holder `name`: renew `held` every [`RENEW_INTERVAL`] until `renewing`
    /// turns false. Failures (etcd down) are retried on the next round, as Patroni does. Runs on
    /// the calling thread, which it moves into the client's namespace.
    fn renew_while(&self, access: &EtcdAccess, name: &str, held: Held, renewing: &AtomicBool) {
        enter(&access.ns);
        let pause = || {
            let until = Instant::now() + RENEW_INTERVAL;
            while renewing.load(Ordering::Relaxed) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        };
        match self.system {
            System::VipAgent | System::Keepalived { .. } => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let mut client: Option<etcd_client::Client> = None;
                while renewing.load(Ordering::Relaxed) {
                    runtime.block_on(async {
                        if client.is_none() {
                            let options = etcd_client::ConnectOptions::new()
                                .with_connect_timeout(Duration::from_millis(500))
                                .with_timeout(Duration::from_secs(1));
                            client = tokio::time::timeout(
                                Duration::from_secs(1),
                                etcd_client::Client::connect(
                                    [access.endpoint.as_str()],
                                    Some(options),
                                ),
                            )
                            .await
                            .ok()
                            .and_then(Result::ok);
                        }
                        if let Some(c) = client.as_mut() {
                            let renewed = tokio::time::timeout(Duration::from_secs(1), async {
                                let (mut keeper, mut stream) =
                                    c.lease_keep_alive(held.lease).await?;
                                keeper.keep_alive().await?;
                                stream.message().await
                            })
                            .await;
                            if !matches!(renewed, Ok(Ok(Some(_)))) {
                                client = None;
                            }
                        }
                    });
                    pause();
                }
            }
            System::VipManager { .. } => {
                let key = &access.key;
                while renewing.load(Ordering::Relaxed) {
                    // A v2 refresh: the TTL is reset without a watch notification.
                    let _ = v2_try(
                        access.addr,
                        "PUT",
                        &format!("/v2/keys{key}?prevValue={name}&prevExist=true"),
                        &format!("ttl={}&refresh=true", held.ttl_s),
                        Duration::from_secs(1),
                    );
                    pause();
                }
            }
        }
    }

    /// Wait (from `watch_from`) until etcd expires the key, then create it for `name` (node
    /// `index`) with its long lease, as the surviving Patroni member does. Returns (t0 = expiry
    /// seen, acquire acknowledged).
    fn take_over_after_expiry(
        &self,
        cluster: &Cluster,
        held: Held,
        name: &str,
        index: usize,
    ) -> (u64, u64) {
        let key = cluster.key.as_str();
        let limit = Duration::from_secs(u64::try_from(held.ttl_s).unwrap_or(3) + 10);
        match self.system {
            System::VipAgent | System::Keepalived { .. } => {
                let lease = self.leases[index];
                cluster.etcd(async |c| {
                    let options =
                        etcd_client::WatchOptions::new().with_start_revision(held.watch_from);
                    let mut stream = c.watch(key, Some(options)).await.expect("watch the key");
                    let t0 = tokio::time::timeout(limit, async {
                        loop {
                            let resp = stream
                                .message()
                                .await
                                .expect("watch stream")
                                .expect("watch open");
                            if resp
                                .events()
                                .iter()
                                .any(|e| e.event_type() == etcd_client::EventType::Delete)
                            {
                                return monotonic_ns();
                            }
                        }
                    })
                    .await
                    .expect("the lease expired in time");
                    cluster::acquire(c, key, name, lease)
                        .await
                        .expect("the key was free");
                    (t0, monotonic_ns())
                })
            }
            System::VipManager { .. } => {
                let etcd = SocketAddr::from((cluster.etcd_host.ip, 2379));
                cluster.client.ns.run_in(|| {
                    let until = Instant::now() + limit;
                    let mut from = held.watch_from;
                    // Refreshes are in the v2 event history too: skip them up to the expiry.
                    let t0 = loop {
                        let (status, body) = v2_full(
                            etcd,
                            "GET",
                            &format!("/v2/keys{key}?wait=true&waitIndex={from}"),
                            "",
                            until.saturating_duration_since(Instant::now()),
                        );
                        let t = monotonic_ns();
                        assert_eq!(status, 200, "v2 watch: {body}");
                        if body["action"].as_str() == Some("expire") {
                            break t;
                        }
                        from = body["node"]["modifiedIndex"]
                            .as_i64()
                            .expect("v2 modifiedIndex")
                            + 1;
                        assert!(Instant::now() < until, "the v2 key did not expire: {body}");
                    };
                    let status = v2(
                        etcd,
                        "PUT",
                        &format!("/v2/keys{key}?prevExist=false"),
                        &format!("value={name}&ttl={V2_TTL}"),
                    );
                    assert_eq!(status, 201, "v2 create after the expiry");
                    (t0, monotonic_ns())
                })
            }
        }
    }
}

/// One etcd v2 HTTP request; returns the status code.
fn v2(etcd: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    v2_full(etcd, method, path, body, Duration::from_secs(5)).0
}

/// One etcd v2 HTTP request, waiting up to `timeout` for the answer: (status, JSON body or `Null`).
fn v2_full(
    etcd: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> (u16, serde_json::Value) {
    v2_try(etcd, method, path, body, timeout)
        .unwrap_or_else(|e| panic!("etcd v2 {method} {path}: {e}"))
}

/// [`v2_full`] that reports a connection failure instead of panicking.
fn v2_try(
    etcd: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    timeout: Duration,
) -> std::io::Result<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect_timeout(&etcd, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))?;
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {etcd}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    // An HTTP/1.0 request gets an unchunked answer delimited by the close: the body follows the
    // headers as is.
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| body.find('{').map(|i| &body[i..]))
        .and_then(|body| serde_json::Deserializer::from_str(body).into_iter().next())
        .and_then(Result::ok)
        .unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// One system's test bed: its two-node cluster and an application client.
#[derive(Debug)]
pub struct Bed {
    /// A host whose kernel sends UDP to the VIP: its neighbour entry for the VIP is what a real
    /// client of the database sees. Dropped before the cluster.
    pub app: Host,
    pub cluster: Cluster,
    pub system: System,
}

/// Address of the application client on each segment (the cluster leaves `.8` free).
const APP_HOST: u8 = 8;

/// A two-node cluster running `system`, with the key held by node 0, and an application client.
///
/// # Panics
/// When a step fails.
#[must_use]
pub fn start(system: System, subnet: u8, agent_bin: &Path) -> Bed {
    // The fence handshake's record TTL set to the scenarios' longest lease (the partition's 5 s),
    // as docs/safety.md advises (Patroni's `ttl`): a node cut off from etcd then holds the new
    // holder back no longer than its lease would. Only vip-agent reads it.
    start_with(system, subnet, agent_bin, "fence-record-ttl: 5s\n")
}

/// [`start`] with `extra_config` appended to every agent's configuration (only vip-agent reads it).
///
/// # Panics
/// When a step fails.
#[must_use]
pub fn start_with(system: System, subnet: u8, agent_bin: &Path, extra_config: &str) -> Bed {
    let mut cluster = Cluster::new(subnet, 2, agent_bin, extra_config);
    for i in 0..2 {
        system.start_on(&mut cluster, i);
    }
    if system == System::VipAgent {
        cluster.wait_running();
    }
    Keys::new(&cluster, system).switch(&cluster, "", "node1", 0);
    wait_for_holder(&cluster, 0);
    let app = cluster.add_host("app", APP_HOST);
    Bed {
        app,
        cluster,
        system,
    }
}

/// Move the calling thread into the network namespace at `path`.
fn enter(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("setns {}: {e}", path.display()));
}

/// Sets the flag to false when dropped (also on a panic), so scoped threads that poll it end.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// Where the prober runs, owned so a scenario may restart processes (`&mut Cluster`) meanwhile.
#[derive(Clone, Debug)]
struct ProbeTarget {
    ns: PathBuf,
    ifname: String,
    ip: Ipv4Addr,
    vip: Ipv4Addr,
    macs: [[u8; 6]; 2],
}

impl ProbeTarget {
    fn of(cluster: &Cluster) -> Self {
        Self {
            ns: cluster.client.ns.path(),
            ifname: cluster.client.ifname.clone(),
            ip: cluster.client.ip,
            vip: cluster.vip,
            macs: [cluster.nodes[0].host.mac, cluster.nodes[1].host.mac],
        }
    }
}

/// The latest reply per node, readable while the prober runs.
struct Live {
    macs: [[u8; 6]; 2],
    last: [AtomicU64; 2],
}

impl Live {
    fn record(&self, mac: [u8; 6], at_ns: u64) {
        if let Some(i) = self.macs.iter().position(|m| *m == mac) {
            self.last[i].fetch_max(at_ns, Ordering::Relaxed);
        }
    }

    /// Wait until node `i` answers a probe at or after `after_ns` (up to `limit`); whether it did.
    fn wait_reply(&self, i: usize, after_ns: u64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if self.last[i].load(Ordering::Relaxed) >= after_ns {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }
}

/// Run `change` while the client sends an ARP request for the VIP every millisecond; probing stops
/// when it returns (or after [`MAX_PROBES`]). Returns its result and the probes.
fn probing<R>(target: &ProbeTarget, change: impl FnOnce(&Live) -> R) -> (R, Vec<Probe>) {
    let live = Live {
        macs: target.macs,
        last: [AtomicU64::new(0), AtomicU64::new(0)],
    };
    let running = AtomicBool::new(true);
    std::thread::scope(|s| {
        let prober = s.spawn(|| {
            enter(&target.ns);
            probe_loop(target, &live, &running)
        });
        let result = {
            let _stop = StopOnDrop(&running);
            change(&live)
        };
        (result, prober.join().expect("prober thread"))
    })
}

/// An ARP request for the VIP every [`PROBE_INTERVAL`] while `running`, with the replies to each.
fn probe_loop(target: &ProbeTarget, live: &Live, running: &AtomicBool) -> Vec<Probe> {
    let sock = ArpSocket::open(&target.ifname).expect("ARP prober socket");
    let vip = target.vip.octets();
    let mut probes = Vec::new();
    while running.load(Ordering::Relaxed) && probes.len() < MAX_PROBES {
        let sent_ns = monotonic_ns();
        sock.send_request(target.ip, target.vip)
            .expect("send an ARP probe");
        let frames = sock
            .recv_until(Instant::now() + PROBE_INTERVAL)
            .expect("receive ARP");
        let answers: Vec<(u64, [u8; 6])> = frames
            .iter()
            .filter(|f| f.arp.op == ARP_OP_REPLY && f.arp.spa == vip && f.eth_dst == sock.mac())
            .map(|f| (f.at_ns, f.arp.sha))
            .collect();
        for &(at, mac) in &answers {
            live.record(mac, at);
        }
        probes.push(Probe { sent_ns, answers });
    }
    probes
}

/// Reply times from `mac` at or after `from_ns`, in order.
fn replies_from(probes: &[Probe], mac: [u8; 6], from_ns: u64) -> Vec<u64> {
    let mut times: Vec<u64> = probes
        .iter()
        .flat_map(|p| p.answers.iter())
        .filter(|(t, m)| *m == mac && *t >= from_ns)
        .map(|(t, _)| *t)
        .collect();
    times.sort_unstable();
    times
}

/// Probes that `mac` answered.
fn answered_by(probes: &[Probe], mac: [u8; 6]) -> usize {
    probes
        .iter()
        .filter(|p| p.answers.iter().any(|(_, m)| *m == mac))
        .count()
}

/// The longest stretch in `[from_ns, to_ns]` without a time in `times` (sorted): (length, start,
/// end). With no time in range, the whole interval.
#[must_use]
pub fn longest_gap(times: &[u64], from_ns: u64, to_ns: u64) -> (u64, u64, u64) {
    let inside = times
        .iter()
        .copied()
        .filter(|t| (from_ns..=to_ns).contains(t));
    let mut marks = std::iter::once(from_ns)
        .chain(inside)
        .chain(std::iter::once(to_ns.max(from_ns)));
    let mut prev = marks.next().unwrap_or(from_ns);
    let mut best = (0, from_ns, from_ns);
    for t in marks {
        if t - prev > best.0 {
            best = (t - prev, prev, t);
        }
        prev = t;
    }
    best
}

/// The data-plane deadline in node `i`'s pinned map for the VIP (kernel monotonic ns), if any.
fn map_deadline(cluster: &Cluster, i: usize) -> Option<u64> {
    vip_agent::dataplane::inspect(&cluster.pins, &cluster.nodes[i].host.ifname)
        .ok()
        .flatten()?
        .iter()
        .find(|s| s.vip == cluster.vip)
        .map(|s| s.state.deadline_ns)
}

/// Wait (up to 10 s) until exactly node `i` answers.
fn wait_for_holder(cluster: &Cluster, i: usize) {
    let mac = cluster.nodes[i].host.mac;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.probe(Duration::from_millis(20)) != vec![mac] {
        assert!(
            Instant::now() < deadline,
            "node{} never became the only holder",
            i + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The node that answers for the VIP now (waits up to 10 s for exactly one).
fn current_holder(cluster: &Cluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let macs = cluster.probe(Duration::from_millis(20));
        if let [mac] = macs.as_slice()
            && let Some(i) = cluster.nodes.iter().position(|n| n.host.mac == *mac)
        {
            return i;
        }
        assert!(Instant::now() < deadline, "no single holder: {macs:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- The application client: its kernel's neighbour entry for the VIP, and GARPs on the wire ----

/// What the application client saw: (kernel monotonic ns, MAC) per neighbour update for the VIP
/// (netlink `RTM_NEWNEIGH` with a link-layer address) and per gratuitous ARP for the VIP.
#[derive(Debug, Default)]
struct Seen {
    neighbour: Vec<(u64, [u8; 6])>,
    garps: Vec<(u64, [u8; 6])>,
    /// Echo requests the client sent: (time, sequence number).
    echo_sent: Vec<(u64, u16)>,
    /// Echo replies from the VIP on the client's interface: (kernel receive time, source MAC,
    /// sequence number).
    echo_replies: Vec<(u64, [u8; 6], u16)>,
}

/// Watches the application client while `running`.
struct Observer {
    seen: Mutex<Seen>,
    running: AtomicBool,
}

/// How long an echo reply may take before its request counts as lost (see [`Trial::echo_lost`]).
const ECHO_GRACE_NS: u64 = 20_000_000;

/// The identifier of the client's ICMP echo requests.
const ECHO_ID: u16 = 0x7669;

impl Observer {
    fn new() -> Self {
        Self {
            seen: Mutex::new(Seen::default()),
            running: AtomicBool::new(true),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The client's kernel sends an ICMP echo request to the VIP every millisecond, with a
    /// sequence number (so it keeps a neighbour entry for it and its packets go where a database
    /// client's would), while this thread records every neighbour update for the VIP from
    /// netlink. The replies are captured by [`Self::capture_echo_replies`].
    fn watch_neighbours(&self, app_ns: &Path, vip: Ipv4Addr) {
        enter(app_ns);
        let netlink = neighbour_socket().expect("netlink socket for neighbour events");
        let icmp = echo_socket().expect("raw ICMP socket");
        let dst = sockaddr_in(vip);
        let mut buf = vec![0u8; 1 << 16];
        let mut next_send = Instant::now();
        let mut seq: u16 = 0;
        while self.running.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= next_send {
                seq = seq.wrapping_add(1);
                let request = echo_request(ECHO_ID, seq);
                let sent = monotonic_ns();
                // SAFETY: buffer and sockaddr_in valid for their lengths.
                let rc = unsafe {
                    libc::sendto(
                        icmp.as_raw_fd(),
                        request.as_ptr().cast(),
                        request.len(),
                        libc::MSG_DONTWAIT,
                        (&raw const dst).cast(),
                        size_of::<libc::sockaddr_in>() as u32,
                    )
                };
                // A failed send (no neighbour yet) is not a request on the wire.
                if rc >= 0 {
                    self.seen().echo_sent.push((sent, seq));
                }
                next_send = (next_send + PROBE_INTERVAL).max(now);
            }
            let wait = next_send.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: netlink.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout = i32::try_from(wait.as_millis().max(1)).unwrap_or(1);
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&raw mut pfd, 1, timeout) };
            if rc <= 0 {
                continue;
            }
            loop {
                // SAFETY: buffer valid for its length.
                let n = unsafe {
                    libc::recv(
                        netlink.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                let Ok(len) = usize::try_from(n) else { break };
                if len == 0 {
                    break;
                }
                let at = monotonic_ns();
                let macs = neighbour_updates(&buf[..len], vip);
                self.seen()
                    .neighbour
                    .extend(macs.into_iter().map(|m| (at, m)));
            }
        }
    }

    /// Record every gratuitous ARP for the VIP (sender IP = target IP = VIP) the client's
    /// interface sees.
    fn capture_garps(&self, app_ns: &Path, ifname: &str, vip: Ipv4Addr) {
        enter(app_ns);
        let sock = ArpSocket::open(ifname).expect("ARP capture socket");
        let vip = vip.octets();
        while self.running.load(Ordering::Relaxed) {
            let frames = sock
                .recv_until(Instant::now() + Duration::from_millis(5))
                .expect("capture ARP");
            let garps: Vec<_> = frames
                .iter()
                .filter(|f| f.arp.spa == vip && f.arp.tpa == vip)
                .map(|f| (f.at_ns, f.arp.sha))
                .collect();
            if !garps.is_empty() {
                self.seen().garps.extend(garps);
            }
        }
    }

    /// Record every ICMP echo reply from the VIP to [`ECHO_ID`] on the client's interface, with
    /// the kernel's receive time and the MAC that sent it.
    fn capture_echo_replies(&self, app_ns: &Path, ifname: &str, vip: Ipv4Addr) {
        enter(app_ns);
        let (fd, _) = crate::arp::packet_socket(ifname, ETH_P_IP).expect("IPv4 capture socket");
        while self.running.load(Ordering::Relaxed) {
            let mut replies = Vec::new();
            crate::arp::recv_each(
                &fd,
                Instant::now() + Duration::from_millis(5),
                |frame, at, _| {
                    if let Some((mac, seq)) = echo_reply(frame, vip, ECHO_ID) {
                        replies.push((at, mac, seq));
                    }
                },
            )
            .expect("capture echo replies");
            if !replies.is_empty() {
                self.seen().echo_replies.extend(replies);
            }
        }
    }

    /// Wait (up to 5 s) until the client's kernel has an entry for the VIP.
    fn wait_for_entry(&self) {
        let until = Instant::now() + Duration::from_secs(5);
        while self.seen().neighbour.is_empty() {
            assert!(
                Instant::now() < until,
                "the application client never resolved the VIP"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

const ETH_P_IP: u16 = 0x0800;

/// A raw ICMP socket (the kernel builds the IPv4 header) that receives nothing: replies are read
/// from the wire with their source MAC instead.
fn echo_socket() -> std::io::Result<OwnedFd> {
    // ICMP_FILTER (linux/icmp.h): a set bit drops that ICMP type; drop all of them.
    const ICMP_FILTER: libc::c_int = 1;
    let fd = crate::sock::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    crate::sock::set_option(&fd, libc::SOL_RAW, ICMP_FILTER, u32::MAX)?;
    Ok(fd)
}

fn sockaddr_in(ip: Ipv4Addr) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// An ICMP echo request (type 8) with `id` and `seq` and 8 bytes of payload.
#[must_use]
pub fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut msg = [0u8; 16];
    msg[0] = 8;
    msg[4..6].copy_from_slice(&id.to_be_bytes());
    msg[6..8].copy_from_slice(&seq.to_be_bytes());
    msg[8..].copy_from_slice(b"vipbench");
    let sum = internet_checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    msg
}

/// The Internet checksum (RFC 1071) of `data`.
#[must_use]
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0)
}

/// The source MAC and sequence number of `frame` when it is an ICMP echo reply (type 0) from
/// `vip` with identifier `id` (Ethernet II, IPv4 with any header length, no VLAN tag).
#[must_use]
pub fn echo_reply(frame: &[u8], vip: Ipv4Addr, id: u16) -> Option<([u8; 6], u16)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if ethertype != ETH_P_IP || ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 1 {
        return None;
    }
    if ip.get(12..16)? != vip.octets() {
        return None;
    }
    let icmp = ip.get(ihl..ihl + 8)?;
    if icmp[0] != 0 || icmp[1] != 0 || u16::from_be_bytes([icmp[4], icmp[5]]) != id {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&frame[6..12]);
    Some((mac, u16::from_be_bytes([icmp[6], icmp[7]])))
}

/// A netlink socket subscribed to neighbour-table changes, in the calling thread's namespace.
fn neighbour_socket() -> std::io::Result<OwnedFd> {
    let fd = crate::sock::socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    // SAFETY: all-zero sockaddr_nl is valid; fields set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = libc::RTMGRP_NEIGH as u32;
    // SAFETY: addr is a valid sockaddr_nl of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// The link-layer addresses that `RTM_NEWNEIGH` messages in `buf` (one netlink read) give for
/// `ip`, in order. Messages for other addresses, without a link-layer address, or truncated are
/// skipped.
#[must_use]
pub fn neighbour_updates(buf: &[u8], ip: Ipv4Addr) -> Vec<[u8; 6]> {
    const NLMSG_HDR: usize = 16;
    const NDMSG: usize = 12;
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|s| u16::from_ne_bytes([s[0], s[1]]));
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
    };
    let align = |n: usize| (n + 3) & !3;
    let mut out = Vec::new();
    let mut off = 0;
    while let Some(len) = u32_at(buf, off).and_then(|l| usize::try_from(l).ok()) {
        if len < NLMSG_HDR || off + len > buf.len() {
            break;
        }
        let msg = &buf[off..off + len];
        if u16_at(msg, 4) == Some(libc::RTM_NEWNEIGH) && msg.len() >= NLMSG_HDR + NDMSG {
            let mut dst = None;
            let mut lladdr = None;
            let mut a = NLMSG_HDR + NDMSG;
            while let (Some(alen), Some(atype)) = (u16_at(msg, a), u16_at(msg, a + 2)) {
                let alen = usize::from(alen);
                if alen < 4 || a + alen > msg.len() {
                    break;
                }
                let payload = &msg[a + 4..a + alen];
                match atype {
                    libc::NDA_DST => dst = <[u8; 4]>::try_from(payload).ok(),
                    libc::NDA_LLADDR => lladdr = <[u8; 6]>::try_from(payload).ok(),
                    _ => {}
                }
                a += align(alen);
            }
            if dst == Some(ip.octets())
                && let Some(mac) = lladdr
            {
                out.push(mac);
            }
        }
        off += align(len);
    }
    out
}

// ---- Switchovers ----

/// Run `trials` switchovers (alternating direction, after one warm-up) on a fresh bed.
///
/// # Panics
/// When the cluster cannot be built or a holder never takes over.
#[must_use]
pub fn switchovers(system: System, subnet: u8, trials: usize, agent_bin: &Path) -> Vec<Trial> {
    let bed = start(system, subnet, agent_bin);
    switchovers_on(&bed, trials)
}

/// `trials` switchovers after one discarded warm-up, starting from whichever node holds the key,
/// while the application client keeps its kernel's neighbour entry for the VIP in use.
fn switchovers_on(bed: &Bed, trials: usize) -> Vec<Trial> {
    let cluster = &bed.cluster;
    let keys = Keys::new(cluster, bed.system);
    let first = current_holder(cluster);
    let observer = Observer::new();
    let app_ns = bed.app.ns.path();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&observer.running);
        s.spawn(|| observer.watch_neighbours(&app_ns, cluster.vip));
        s.spawn(|| observer.capture_garps(&app_ns, &bed.app.ifname, cluster.vip));
        s.spawn(|| observer.capture_echo_replies(&app_ns, &bed.app.ifname, cluster.vip));
        observer.wait_for_entry();
        let mut results = Vec::new();
        for n in 0..=trials {
            let from = if n % 2 == 0 { first } else { 1 - first };
            let to = 1 - from;
            let trial = one_switchover(bed, &keys, from, to, &observer);
            wait_for_holder(cluster, to);
            if n > 0 {
                results.push(trial);
            }
        }
        results
    })
}

fn one_switchover(bed: &Bed, keys: &Keys, from: usize, to: usize, observer: &Observer) -> Trial {
    let cluster = &bed.cluster;
    let (old_mac, new_mac) = (cluster.nodes[from].host.mac, cluster.nodes[to].host.mac);
    let window = bed.system.window();
    let (times, probes) = probing(&ProbeTarget::of(cluster), |_| {
        // A random extra pause, so t0 takes no fixed phase against a poller's timer (vip-manager
        // polls every interval, keepalived checks every second).
        std::thread::sleep(LEAD_IN + Duration::from_millis(fastrand::u64(0..=JITTER_MS)));
        let times = keys.switch(
            cluster,
            &cluster.nodes[from].name,
            &cluster.nodes[to].name,
            to,
        );
        std::thread::sleep(window);
        times
    });
    let (t0, released, acquired) = times;
    let rel = |t: u64| t.saturating_sub(t0);
    let both = |p: &Probe| {
        p.answers.iter().any(|(_, m)| *m == old_mac) && p.answers.iter().any(|(_, m)| *m == new_mac)
    };
    let agent = bed.system == System::VipAgent;
    let seen = observer.seen();
    let first_from_new = |events: &[(u64, [u8; 6])]| {
        events
            .iter()
            .filter(|(t, m)| *t >= t0 && *m == new_mac)
            .map(|(t, _)| rel(*t))
            .min()
    };
    // Echo requests sent from t0 until the window closed (the last few milliseconds excluded, so a
    // reply still in flight at the end does not count as lost), and those nobody answered.
    let window_end = t0 + u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    let sent_in_window: Vec<u16> = seen
        .echo_sent
        .iter()
        .filter(|(t, _)| *t >= t0 && *t + ECHO_GRACE_NS <= window_end)
        .map(|(_, q)| *q)
        .collect();
    let answered: std::collections::HashSet<u16> = seen
        .echo_replies
        .iter()
        .filter(|(t, _, _)| *t >= t0)
        .map(|(_, _, q)| *q)
        .collect();
    let echo_lost = sent_in_window
        .iter()
        .filter(|q| !answered.contains(q))
        .count();
    // The MAC the client's entry held before t0: a switch counts only from another MAC.
    let before = seen
        .neighbour
        .iter()
        .rev()
        .find(|(t, _)| *t < t0)
        .map(|(_, m)| *m);
    Trial {
        from,
        to,
        release_acked_ns: rel(released),
        acquire_acked_ns: rel(acquired),
        last_old_ns: replies_from(&probes, old_mac, t0).last().map(|t| rel(*t)),
        first_new_ns: replies_from(&probes, new_mac, t0).first().map(|t| rel(*t)),
        overlap: probes.iter().filter(|p| both(p)).count(),
        probes: probes.len(),
        old_dataplane_ns: agent
            .then(|| cluster.log_event_after(from, "data plane fenced", t0))
            .flatten()
            .map(rel),
        new_dataplane_ns: agent
            .then(|| cluster.log_event_after(to, "data plane answering", t0))
            .flatten()
            .map(rel),
        first_garp_ns: first_from_new(&seen.garps),
        client_switch_ns: (before != Some(new_mac))
            .then(|| first_from_new(&seen.neighbour))
            .flatten(),
        client_had_old_mac: before == Some(old_mac),
        echo_last_old_ns: seen
            .echo_replies
            .iter()
            .filter(|(t, m, _)| *t >= t0 && *m == old_mac)
            .map(|(t, _, _)| rel(*t))
            .max(),
        echo_first_new_ns: seen
            .echo_replies
            .iter()
            .filter(|(t, m, _)| *t >= t0 && *m == new_mac)
            .map(|(t, _, _)| rel(*t))
            .min(),
        echo_lost,
        echo_sent: sent_in_window.len(),
    }
}

// ---- Lease expiry ----

/// One lease expiry: the holder's Patroni died, its leader key expires with its lease, and the
/// other member takes the key as soon as it sees it gone. Times in ns from t0 = the expiry seen by
/// a watcher on the client host; the old holder's last reply may come before it (negative).
#[derive(Clone, Debug, Default)]
pub struct Expiry {
    pub from: usize,
    pub to: usize,
    /// Last reply from the old holder, relative to t0 (negative: it went silent before the expiry).
    pub last_old_ns: Option<i64>,
    /// Probes after t0 that the old holder still answered.
    pub old_answers_after_expiry: usize,
    pub acquire_acked_ns: u64,
    pub first_new_ns: Option<u64>,
    /// Probes answered by both MACs.
    pub overlap: usize,
    pub probes: usize,
}

/// `b - a` as a signed number of ns.
fn signed_diff(b: u64, a: u64) -> i64 {
    i64::try_from(b)
        .unwrap_or(i64::MAX)
        .saturating_sub(i64::try_from(a).unwrap_or(i64::MAX))
}

/// Probes answered by `mac` with a reply at or after `from_ns`.
fn answered_after(probes: &[Probe], mac: [u8; 6], from_ns: u64) -> usize {
    probes
        .iter()
        .filter(|p| p.answers.iter().any(|(t, m)| *m == mac && *t >= from_ns))
        .count()
}

/// Probes answered by both MACs.
fn overlap(probes: &[Probe], a: [u8; 6], b: [u8; 6]) -> usize {
    probes
        .iter()
        .filter(|p| {
            p.answers.iter().any(|(_, m)| *m == a) && p.answers.iter().any(|(_, m)| *m == b)
        })
        .count()
}

/// Run `trials` lease expiries (alternating direction) on `bed`, whose agents or vip-managers are
/// running.
///
/// # Panics
/// When etcd fails or a holder never takes over.
pub fn lease_expiries(bed: &Bed, trials: usize) -> Vec<Expiry> {
    let cluster = &bed.cluster;
    let keys = Keys::new(cluster, bed.system);
    let mut holder = current_holder(cluster);
    (0..trials)
        .map(|_| {
            // The holder crashes; the other node takes over; next time the other way round.
            let trial = one_expiry(bed, &keys, holder);
            wait_for_holder(cluster, trial.to);
            holder = trial.to;
            trial
        })
        .collect()
}

fn one_expiry(bed: &Bed, keys: &Keys, from: usize) -> Expiry {
    let cluster = &bed.cluster;
    let to = 1 - from;
    let (from_name, to_name) = (&cluster.nodes[from].name, &cluster.nodes[to].name);
    // `from` (re)takes the key with a short lease that nobody keeps alive: its Patroni is gone.
    let held = keys.hold(cluster, from_name, from_name, EXPIRY_TTL_S);
    wait_for_holder(cluster, from);
    let (old_mac, new_mac) = (cluster.nodes[from].host.mac, cluster.nodes[to].host.mac);
    let window = bed.system.window();
    let ((t0, acquired), probes) = probing(&ProbeTarget::of(cluster), |_| {
        let times = keys.take_over_after_expiry(cluster, held, to_name, to);
        std::thread::sleep(window);
        times
    });
    Expiry {
        from,
        to,
        last_old_ns: replies_from(&probes, old_mac, 0)
            .last()
            .map(|t| signed_diff(*t, t0)),
        old_answers_after_expiry: answered_after(&probes, old_mac, t0),
        acquire_acked_ns: acquired.saturating_sub(t0),
        first_new_ns: replies_from(&probes, new_mac, t0).first().map(|t| t - t0),
        overlap: overlap(&probes, old_mac, new_mac),
        probes: probes.len(),
    }
}

// ---- Partition: the holder cut off from etcd, its Patroni too ----

/// The holder loses etcd (a blackhole route on its node) together with its Patroni, whose lease
/// therefore runs out; the other member takes the key. Times in ns.
#[derive(Clone, Debug, Default)]
pub struct Partition {
    pub from: usize,
    pub to: usize,
    /// When etcd expired the key (seen by a watcher on the client host), after the cut.
    pub expiry_after_cut_ns: u64,
    /// The old holder's last reply after the cut, from the cut (`None`: none after the cut).
    pub last_old_after_cut_ns: Option<u64>,
    /// The old holder's last reply relative to the expiry (negative: silent before it).
    pub last_old_ns: Option<i64>,
    /// Probes the old holder answered after the expiry.
    pub old_answers_after_expiry: usize,
    pub acquire_acked_ns: u64,
    /// The new holder's first reply, from the expiry.
    pub first_new_ns: Option<u64>,
    /// Probes answered by both MACs.
    pub overlap: usize,
    /// The old holder still answered in the last 100 ms before the partition healed.
    pub old_answering_at_end: bool,
    pub probes: usize,
}

/// Run `trials` partitions (alternating direction) on `bed`.
///
/// # Panics
/// When etcd fails or a holder never takes over.
pub fn partitions(bed: &Bed, trials: usize) -> Vec<Partition> {
    let cluster = &bed.cluster;
    let keys = Keys::new(cluster, bed.system);
    let mut holder = current_holder(cluster);
    (0..trials)
        .map(|_| {
            let trial = one_partition(bed, &keys, holder);
            wait_for_holder(cluster, trial.to);
            holder = trial.to;
            trial
        })
        .collect()
}

fn one_partition(bed: &Bed, keys: &Keys, from: usize) -> Partition {
    let cluster = &bed.cluster;
    let to = 1 - from;
    let (from_name, to_name) = (&cluster.nodes[from].name, &cluster.nodes[to].name);
    let (old_mac, new_mac) = (cluster.nodes[from].host.mac, cluster.nodes[to].host.mac);
    let held = keys.hold(cluster, from_name, from_name, HELD_TTL_S);
    let access = EtcdAccess::of(cluster);
    let renewing = AtomicBool::new(true);
    let window = bed.system.window();
    let ((cut, t0, acquired), probes) = std::thread::scope(|s| {
        let _stop = StopOnDrop(&renewing);
        s.spawn(|| keys.renew_while(&access, from_name, held, &renewing));
        wait_for_holder(cluster, from);
        std::thread::sleep(SETTLE);
        let result = probing(&ProbeTarget::of(cluster), |live| {
            std::thread::sleep(LEAD_IN);
            // Its Patroni loses etcd too: no more renewals from the moment of the cut.
            renewing.store(false, Ordering::Relaxed);
            let cut = monotonic_ns();
            cluster.partition(from);
            let (t0, acquired) = keys.take_over_after_expiry(cluster, held, to_name, to);
            live.wait_reply(to, t0, ANSWER_LIMIT);
            std::thread::sleep(window);
            (cut, t0, acquired)
        });
        cluster.heal(from);
        result
    });
    let end = probes.last().map_or(t0, |p| p.sent_ns);
    let old = replies_from(&probes, old_mac, 0);
    Partition {
        from,
        to,
        expiry_after_cut_ns: t0.saturating_sub(cut),
        last_old_after_cut_ns: old.last().filter(|t| **t >= cut).map(|t| t - cut),
        last_old_ns: old.last().map(|t| signed_diff(*t, t0)),
        old_answers_after_expiry: answered_after(&probes, old_mac, t0),
        acquire_acked_ns: acquired.saturating_sub(t0),
        first_new_ns: replies_from(&probes, new_mac, t0).first().map(|t| t - t0),
        overlap: overlap(&probes, old_mac, new_mac),
        old_answering_at_end: old.last().is_some_and(|t| *t + 100_000_000 >= end),
        probes: probes.len(),
    }
}

// ---- The holder's agent killed while its Patroni is fine ----

/// SIGKILL of the holder's agent (or vip-manager) while its Patroni keeps the key, then two
/// restarts. Times in ns.
#[derive(Clone, Debug, Default)]
pub struct Kill {
    pub node: usize,
    /// vip-agent: the deadline the dead agent left in the pinned map, after the kill.
    pub deadline_after_kill_ns: Option<u64>,
    /// The holder's last reply after the kill, from the kill, within a window of [`HELD_TTL_S`].
    pub last_reply_ns: Option<u64>,
    /// Probes sent at or after the map's deadline that the holder answered (vip-agent).
    pub answered_after_deadline: usize,
    /// The holder still answered in the last 100 ms of that window.
    pub answering_at_end: bool,
    /// Restarted after the window: from the start of the process to its node's first reply.
    pub restart_answer_ns: Option<u64>,
    /// vip-agent: the restarted agent kept the pinned XDP program (same program id).
    pub adopted: Option<bool>,
    /// Killed again and restarted after [`SYSTEMD_RESTART`]: the longest stretch without a reply
    /// from the holder, from that kill to the end of the window.
    pub quick_gap_ns: u64,
    /// ... its start, from the second restart (negative: before it).
    pub quick_gap_start_ns: i64,
    /// Probes the other node answered, in all phases (the key never moved: should be 0).
    pub other_answers: usize,
    pub probes: usize,
}

/// Run `trials` agent kills on `bed` (the holder alternates).
///
/// # Panics
/// When etcd fails or a holder never answers again.
pub fn kills(bed: &mut Bed, trials: usize) -> Vec<Kill> {
    let keys = Keys::new(&bed.cluster, bed.system);
    let mut holder = current_holder(&bed.cluster);
    (0..trials)
        .map(|n| {
            let node = if n % 2 == 0 { holder } else { 1 - holder };
            let trial = one_kill(bed, &keys, holder, node);
            wait_for_holder(&bed.cluster, node);
            holder = node;
            trial
        })
        .collect()
}

fn one_kill(bed: &mut Bed, keys: &Keys, current: usize, node: usize) -> Kill {
    let system = bed.system;
    let ttl = match system {
        System::VipAgent | System::Keepalived { .. } => HELD_TTL_S,
        System::VipManager { .. } => V2_TTL,
    };
    let name = bed.cluster.nodes[node].name.clone();
    let current_name = bed.cluster.nodes[current].name.clone();
    let held = keys.hold(&bed.cluster, &current_name, &name, ttl);
    let access = EtcdAccess::of(&bed.cluster);
    let target = ProbeTarget::of(&bed.cluster);
    let (mac, other_mac) = (target.macs[node], target.macs[1 - node]);
    let renewing = AtomicBool::new(true);
    let window = Duration::from_secs(u64::try_from(HELD_TTL_S).unwrap_or(5));
    let restart_window = match system {
        System::VipAgent => Duration::from_secs(1),
        System::VipManager { .. } | System::Keepalived { .. } => {
            system.window() + Duration::from_millis(200)
        }
    };
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&renewing);
        s.spawn(|| keys.renew_while(&access, &name, held, &renewing));
        wait_for_holder(&bed.cluster, node);
        std::thread::sleep(SETTLE);
        let host = &bed.cluster.nodes[node].host;
        let prog_before = host.ns.xdp_prog_id(&host.ifname);
        let cluster = &mut bed.cluster;
        // The agent dies; nothing restarts it. Its deadline lies before kill + TTL - 0.5 s.
        let ((killed, deadline), dead) = probing(&target, |_| {
            std::thread::sleep(LEAD_IN);
            let killed = monotonic_ns();
            cluster.kill_agent(node);
            let deadline = map_deadline(cluster, node);
            std::thread::sleep(window);
            (killed, deadline)
        });
        // Restarted once the window is over (vip-agent: the VIP went dark at its deadline).
        let (restarted, back) = probing(&target, |live| {
            std::thread::sleep(LEAD_IN);
            let restarted = monotonic_ns();
            system.start_on(cluster, node);
            live.wait_reply(node, restarted, ANSWER_LIMIT);
            std::thread::sleep(TAIL);
            restarted
        });
        let host = &cluster.nodes[node].host;
        let prog_after = host.ns.xdp_prog_id(&host.ifname);
        // A crash and systemd's restart a second later, within the deadline.
        let ((killed2, restarted2), quick) = probing(&target, |_| {
            std::thread::sleep(LEAD_IN);
            let killed = monotonic_ns();
            cluster.kill_agent(node);
            std::thread::sleep(SYSTEMD_RESTART);
            let restarted = monotonic_ns();
            system.start_on(cluster, node);
            std::thread::sleep(restart_window);
            (killed, restarted)
        });
        let after_kill = replies_from(&dead, mac, killed);
        let dead_end = dead.last().map_or(killed, |p| p.sent_ns);
        let quick_end = quick.last().map_or(killed2, |p| p.sent_ns);
        let (quick_gap_ns, gap_start, _) =
            longest_gap(&replies_from(&quick, mac, killed2), killed2, quick_end);
        Kill {
            node,
            deadline_after_kill_ns: deadline.map(|d| d.saturating_sub(killed)),
            last_reply_ns: after_kill.last().map(|t| t - killed),
            answered_after_deadline: deadline.map_or(0, |d| {
                dead.iter()
                    .filter(|p| p.sent_ns >= d && p.answers.iter().any(|(_, m)| *m == mac))
                    .count()
            }),
            answering_at_end: after_kill
                .last()
                .is_some_and(|t| *t + 100_000_000 >= dead_end),
            restart_answer_ns: replies_from(&back, mac, restarted)
                .first()
                .map(|t| t - restarted),
            adopted: (system == System::VipAgent)
                .then(|| prog_before.is_some() && prog_before == prog_after),
            quick_gap_ns,
            quick_gap_start_ns: signed_diff(gap_start, restarted2),
            other_answers: [&dead, &back, &quick]
                .iter()
                .map(|p| answered_by(p, other_mac))
                .sum(),
            probes: dead.len() + back.len() + quick.len(),
        }
    })
}

// ---- etcd stopped and restarted, leadership unchanged ----

/// etcd stopped for a while and started again; the holder's Patroni keeps its key (no leadership
/// change). Times in ns.
#[derive(Clone, Debug)]
pub struct EtcdOutage {
    pub node: usize,
    pub shape: OutageShape,
    /// From the stop until etcd served again.
    pub down_ns: u64,
    /// vip-agent: the deadline in the holder's map while etcd was down, after the stop.
    pub deadline_after_stop_ns: Option<u64>,
    /// Probes sent after that deadline and before etcd served again that the holder answered.
    pub answered_after_deadline: usize,
    /// The longest stretch without a reply from the holder, from the stop to the end.
    pub gap_ns: u64,
    /// ... its start, from the stop.
    pub gap_start_ns: u64,
    /// ... its end, from etcd serving again (negative: before).
    pub gap_end_after_up_ns: i64,
    /// The holder answered in the last 100 ms of the window.
    pub answering_at_end: bool,
    /// Probes the other node answered (the key never moved: should be 0).
    pub other_answers: usize,
    pub probes: usize,
}

impl EtcdOutage {
    /// A stretch without replies longer than [`BLACKOUT_MIN_NS`].
    #[must_use]
    pub fn blackout(&self) -> bool {
        self.gap_ns > BLACKOUT_MIN_NS
    }
}

/// Run `trials` outages of each shape in [`OUTAGES`] on `bed` (the holder alternates).
///
/// # Panics
/// When etcd fails to come back or the holder never answers again.
pub fn etcd_outages(bed: &mut Bed, trials: usize) -> Vec<EtcdOutage> {
    let keys = Keys::new(&bed.cluster, bed.system);
    let mut holder = current_holder(&bed.cluster);
    let mut out = Vec::new();
    for n in 0..trials {
        for shape in OUTAGES {
            let node = if n % 2 == 0 { holder } else { 1 - holder };
            out.push(one_etcd_outage(bed, &keys, holder, node, shape));
            wait_for_holder(&bed.cluster, node);
            holder = node;
        }
    }
    out
}

fn one_etcd_outage(
    bed: &mut Bed,
    keys: &Keys,
    current: usize,
    node: usize,
    shape: OutageShape,
) -> EtcdOutage {
    let system = bed.system;
    let ttl = match system {
        System::VipAgent | System::Keepalived { .. } => shape.lease_ttl_s,
        System::VipManager { .. } => V2_TTL,
    };
    let name = bed.cluster.nodes[node].name.clone();
    let current_name = bed.cluster.nodes[current].name.clone();
    let held = keys.hold(&bed.cluster, &current_name, &name, ttl);
    let access = EtcdAccess::of(&bed.cluster);
    let target = ProbeTarget::of(&bed.cluster);
    let (mac, other_mac) = (target.macs[node], target.macs[1 - node]);
    let renewing = AtomicBool::new(true);
    let tail = system.window();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&renewing);
        s.spawn(|| keys.renew_while(&access, &name, held, &renewing));
        wait_for_holder(&bed.cluster, node);
        std::thread::sleep(SETTLE);
        let cluster = &mut bed.cluster;
        let ((stopped, deadline, up), probes) = probing(&target, |live| {
            std::thread::sleep(LEAD_IN);
            let stopped = monotonic_ns();
            cluster.stop_etcd();
            // Nothing can renew the deadline now; read it once the last response was handled.
            std::thread::sleep(Duration::from_millis(100));
            let deadline = map_deadline(cluster, node);
            std::thread::sleep(shape.down.saturating_sub(Duration::from_millis(100)));
            cluster.start_etcd();
            let up = monotonic_ns();
            live.wait_reply(node, up, ANSWER_LIMIT);
            std::thread::sleep(tail);
            (stopped, deadline, up)
        });
        let end = probes.last().map_or(up, |p| p.sent_ns);
        let replies = replies_from(&probes, mac, stopped);
        let (gap_ns, gap_start, gap_end) = longest_gap(&replies, stopped, end);
        EtcdOutage {
            node,
            shape,
            down_ns: up.saturating_sub(stopped),
            deadline_after_stop_ns: deadline.map(|d| d.saturating_sub(stopped)),
            answered_after_deadline: deadline.map_or(0, |d| {
                probes
                    .iter()
                    .filter(|p| {
                        p.sent_ns >= d && p.sent_ns < up && p.answers.iter().any(|(_, m)| *m == mac)
                    })
                    .count()
            }),
            gap_ns,
            gap_start_ns: gap_start - stopped,
            gap_end_after_up_ns: signed_diff(gap_end, up),
            answering_at_end: replies.last().is_some_and(|t| *t + 100_000_000 >= end),
            other_answers: answered_by(&probes, other_mac),
            probes: probes.len(),
        }
    })
}

// ---- Idle cost ----

/// CPU and memory of one node's process over an idle window.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    /// user + system CPU time used during the window.
    pub cpu_ms: u64,
    pub window_ms: u64,
    /// Resident set size at the end of the window.
    pub rss_kib: u64,
}

/// Measure every node's agent (or vip-manager) over `window` in which nothing changes.
///
/// # Panics
/// When a process's /proc entry cannot be read.
pub fn idle_usage(cluster: &mut Cluster, window: Duration) -> Vec<Usage> {
    let pids: Vec<i32> = (0..cluster.nodes.len())
        .map(|i| cluster.agent(i).pid())
        .collect();
    let before: Vec<u64> = pids.iter().map(|&p| tree_cpu_ticks(p)).collect();
    let started = std::time::Instant::now();
    std::thread::sleep(window);
    let window_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let hz = clock_ticks_per_second();
    pids.iter()
        .zip(before)
        .map(|(&pid, b)| Usage {
            cpu_ms: tree_cpu_ticks(pid).saturating_sub(b) * 1000 / hz,
            window_ms,
            rss_kib: tree_rss_kib(pid),
        })
        .collect()
}

/// The kernel's clock ticks per second (`_SC_CLK_TCK`, the unit of `/proc/<pid>/stat` times).
#[must_use]
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)
        .unwrap_or(100)
}

/// CPU time of `pid`'s process tree in clock ticks: each process's utime + stime + the times of
/// its reaped children (`/proc/<pid>/stat` fields 14 to 17), so the check scripts keepalived runs
/// and reaps count too.
#[must_use]
pub fn tree_cpu_ticks(pid: i32) -> u64 {
    process_tree(pid).into_iter().map(cpu_ticks).sum()
}

/// `VmRSS` of `pid`'s process tree in KiB.
fn tree_rss_kib(pid: i32) -> u64 {
    process_tree(pid).into_iter().map(rss_kib).sum()
}

/// utime + stime + cutime + cstime of `pid`, in clock ticks (`/proc/<pid>/stat` fields 14 to 17;
/// 0 once it is gone).
#[must_use]
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
    field(14) + field(15) + field(16) + field(17)
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Everything measured on one system's bed, with each scenario's wall-clock time.
#[derive(Debug, Default)]
pub struct SystemRun {
    pub switchovers: Vec<Trial>,
    pub expiries: Vec<Expiry>,
    pub idle: Vec<Usage>,
    pub partitions: Vec<Partition>,
    pub kills: Vec<Kill>,
    pub etcd_outages: Vec<EtcdOutage>,
    /// (scenario, how long it ran), in the order run; the first is building the bed.
    pub took: Vec<(&'static str, Duration)>,
}

/// What to run on each system (a zero count or window skips the scenario).
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub switchovers: usize,
    pub expiries: usize,
    pub idle: Duration,
    pub partitions: usize,
    pub kills: usize,
    /// Trials of each shape in [`OUTAGES`].
    pub etcd_outages: usize,
}

/// Build one bed for `system` and run the plan on it: switchovers, lease expiries, the idle window,
/// partitions, agent kills, then etcd outages.
///
/// # Panics
/// When the cluster cannot be built or a holder never takes over.
#[must_use]
pub fn run_system(system: System, subnet: u8, plan: Plan, agent_bin: &Path) -> SystemRun {
    let mut run = SystemRun::default();
    let mut clock = Instant::now();
    let mut lap = |run: &mut SystemRun, scenario: &'static str| {
        run.took.push((scenario, clock.elapsed()));
        clock = Instant::now();
    };
    let mut bed = start(system, subnet, agent_bin);
    lap(&mut run, "setup");
    run.switchovers = switchovers_on(&bed, plan.switchovers);
    lap(&mut run, "switchovers");
    if plan.expiries > 0 {
        run.expiries = lease_expiries(&bed, plan.expiries);
        lap(&mut run, "lease expiry");
    }
    if !plan.idle.is_zero() {
        run.idle = idle_usage(&mut bed.cluster, plan.idle);
        lap(&mut run, "idle");
    }
    if plan.partitions > 0 {
        run.partitions = partitions(&bed, plan.partitions);
        lap(&mut run, "partition");
    }
    if plan.kills > 0 {
        run.kills = kills(&mut bed, plan.kills);
        lap(&mut run, "agent killed");
    }
    if plan.etcd_outages > 0 {
        run.etcd_outages = etcd_outages(&mut bed, plan.etcd_outages);
        lap(&mut run, "etcd outage");
    }
    run
}

/// ARP round trips from a client to one node over a veth pair, for one way of answering.
#[derive(Clone, Debug)]
pub struct ArpRtt {
    pub label: &'static str,
    /// Request sent -> reply read by the prober (both in userspace, so the same overhead in every
    /// case), one per answered probe.
    pub rtt_ns: Vec<u64>,
    pub probes: usize,
}

/// Answering ARP in the kernel against answering it in XDP: the node's own address (kernel) and a
/// VIP (our program) with no program, the program in generic mode and in native mode (veth needs a
/// program on the peer too for native XDP_TX, so the client gets our program, holding no VIP).
///
/// # Panics
/// When the topology or the data plane cannot be set up.
#[must_use]
pub fn arp_rtts(subnet: u8, probes: usize) -> Vec<ArpRtt> {
    use vip_agent::dataplane::AttachMode;
    let node = crate::NetNs::new("rttn");
    let client = crate::NetNs::new("rttc");
    let (node_if, client_if) = crate::veth_pair(&node, &client);
    let ip = |last| std::net::Ipv4Addr::new(10, 77, subnet, last);
    let (node_ip, client_ip, vip) = (ip(1), ip(9), ip(100));
    node.add_addr(&node_if, &format!("{node_ip}/24"));
    client.add_addr(&client_if, &format!("{client_ip}/24"));
    let pins = crate::PinRoot::new();
    let measure = |label, target| {
        let rtt_ns = client.run_in(|| {
            let sock = ArpSocket::open(&client_if).expect("ARP socket");
            (0..probes)
                .filter_map(|_| {
                    let sent = monotonic_ns();
                    let replies = sock
                        .probe(client_ip, target, Duration::from_millis(5))
                        .expect("ARP probe");
                    // A reply already queued before this request (the socket sees every ARP
                    // frame on the link) is not this request's answer.
                    replies
                        .iter()
                        .find(|r| r.at_ns > sent)
                        .map(|r| r.at_ns - sent)
                })
                .collect()
        });
        ArpRtt {
            label,
            rtt_ns,
            probes,
        }
    };
    let mut out = vec![measure("kernel, no XDP program", node_ip)];
    {
        let mut dp = crate::open_dataplane(&node, &node_if, AttachMode::Generic, &pins.0);
        dp.register(vip).expect("register the VIP");
        dp.answer_until(vip, monotonic_ns() + 3_600_000_000_000)
            .expect("answer");
        out.push(measure("kernel, generic XDP program passing", node_ip));
        out.push(measure("XDP generic (XDP_TX)", vip));
    }
    pins.detach(&node_if);
    {
        let _peer = crate::open_dataplane(&client, &client_if, AttachMode::Native, &pins.0);
        let mut dp = crate::open_dataplane(&node, &node_if, AttachMode::Native, &pins.0);
        dp.register(vip).expect("register the VIP");
        dp.answer_until(vip, monotonic_ns() + 3_600_000_000_000)
            .expect("answer");
        out.push(measure("kernel, native XDP programs passing", node_ip));
        out.push(measure("XDP native (XDP_TX)", vip));
    }
    out
}

/// p50 / p90 / p99 / max of `values` (nearest rank), `None` when empty.
#[must_use]
pub fn percentiles<T: Ord + Copy>(values: &[T]) -> Option<[T; 4]> {
    let mut v = values.to_vec();
    v.sort_unstable();
    let last = v.len().checked_sub(1)?;
    let rank = |p: usize| v[(p * last + 50) / 100];
    Some([rank(50), rank(90), rank(99), v[last]])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        assert_eq!(percentiles::<u64>(&[]), None);
        assert_eq!(percentiles(&[7]), Some([7, 7, 7, 7]));
        let v: Vec<u64> = (1..=101).collect();
        assert_eq!(percentiles(&v), Some([51, 91, 100, 101]));
    }

    #[test]
    fn blackout_is_first_new_minus_last_old() {
        let t = Trial {
            last_old_ns: Some(1_000),
            first_new_ns: Some(4_000),
            ..Trial::default()
        };
        assert_eq!(t.blackout_ns(), Some(3_000));
        let never = Trial::default();
        assert_eq!(never.blackout_ns(), None);
    }

    #[test]
    fn longest_gap_counts_the_edges_of_the_interval() {
        // Replies at 10, 12, 30 in [5, 40]: the gap 12 -> 30 is the longest.
        assert_eq!(longest_gap(&[1, 10, 12, 30, 50], 5, 40), (18, 12, 30));
        // Silent after 10 until the end.
        assert_eq!(longest_gap(&[10], 0, 100), (90, 10, 100));
        // No reply at all: the whole interval.
        assert_eq!(longest_gap(&[], 20, 70), (50, 20, 70));
        // Silent from the start until the first reply.
        assert_eq!(longest_gap(&[60, 61], 0, 62), (60, 0, 60));
    }

    /// One netlink message: header, ndmsg, then (type, payload) attributes.
    fn neigh_msg(kind: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = vec![0u8; 12]; // ndmsg: family, pads, ifindex, state, flags, type
        body[0] = 2;
        for (t, payload) in attrs {
            let len = u16::try_from(4 + payload.len()).expect("small");
            body.extend_from_slice(&len.to_ne_bytes());
            body.extend_from_slice(&t.to_ne_bytes());
            body.extend_from_slice(payload);
            while !body.len().is_multiple_of(4) {
                body.push(0);
            }
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&u32::try_from(16 + body.len()).expect("small").to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]); // flags, seq, pid
        msg.extend_from_slice(&body);
        msg
    }

    /// An Ethernet frame carrying an IPv4 ICMP message from `src` (20-byte header, no options).
    fn icmp_frame(mac: [u8; 6], src: Ipv4Addr, icmp: &[u8]) -> Vec<u8> {
        let mut f = vec![0xaa; 6];
        f.extend(mac);
        f.extend([0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0]);
        f.extend(src.octets());
        f.extend([10, 77, 1, 8]);
        f.extend(icmp);
        f
    }

    #[test]
    fn echo_request_checksum_verifies() {
        let msg = echo_request(0x7669, 513);
        assert_eq!(&msg[..2], &[8, 0], "echo request, code 0");
        assert_eq!(
            &msg[4..8],
            &[0x76, 0x69, 2, 1],
            "id and sequence, big endian"
        );
        // Summing a message with its checksum in place gives 0xffff, so its complement is 0.
        assert_eq!(internet_checksum(&msg), 0);
        // RFC 1071's example: 0001 f203 f4f5 f6f7 sums to ddf2, checksum 220d.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0x220d
        );
    }

    #[test]
    fn echo_replies_are_matched_by_source_type_and_id() {
        let vip = Ipv4Addr::new(10, 77, 1, 100);
        let mac = [2, 0, 0, 0, 0, 11];
        let mut reply = echo_request(0x7669, 7);
        reply[0] = 0;
        let frame = icmp_frame(mac, vip, &reply);
        assert_eq!(echo_reply(&frame, vip, 0x7669), Some((mac, 7)));
        assert_eq!(echo_reply(&frame, vip, 0x1234), None, "another id");
        assert_eq!(
            echo_reply(&frame, Ipv4Addr::new(10, 77, 1, 11), 0x7669),
            None,
            "from another address"
        );
        let request = icmp_frame(mac, vip, &echo_request(0x7669, 7));
        assert_eq!(echo_reply(&request, vip, 0x7669), None, "a request");
        assert_eq!(
            echo_reply(&frame[..frame.len() - 9], vip, 0x7669),
            None,
            "truncated"
        );
        let mut udp = frame.clone();
        udp[14 + 9] = 17;
        assert_eq!(echo_reply(&udp, vip, 0x7669), None, "not ICMP");
        // IPv4 options move the ICMP header.
        let mut with_options = frame[..34].to_vec();
        with_options[14] = 0x46;
        with_options.extend([1, 1, 1, 0]);
        with_options.extend(&reply);
        assert_eq!(echo_reply(&with_options, vip, 0x7669), Some((mac, 7)));
    }

    #[test]
    fn neighbour_updates_pick_the_vip_entries_with_an_address() {
        let vip = Ipv4Addr::new(10, 77, 1, 100);
        let (a, b) = ([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]);
        let mut buf = neigh_msg(
            libc::RTM_NEWNEIGH,
            &[(libc::NDA_DST, &vip.octets()), (libc::NDA_LLADDR, &a)],
        );
        // Another address, an entry without a link-layer address (INCOMPLETE), a deletion.
        buf.extend(neigh_msg(
            libc::RTM_NEWNEIGH,
            &[(libc::NDA_DST, &[10, 77, 1, 9]), (libc::NDA_LLADDR, &b)],
        ));
        buf.extend(neigh_msg(
            libc::RTM_NEWNEIGH,
            &[(libc::NDA_DST, &vip.octets())],
        ));
        buf.extend(neigh_msg(
            libc::RTM_DELNEIGH,
            &[(libc::NDA_DST, &vip.octets()), (libc::NDA_LLADDR, &a)],
        ));
        buf.extend(neigh_msg(
            libc::RTM_NEWNEIGH,
            &[(libc::NDA_LLADDR, &b), (libc::NDA_DST, &vip.octets())],
        ));
        assert_eq!(neighbour_updates(&buf, vip), vec![a, b]);
        // A truncated read yields what is complete and nothing past it.
        let cut = buf.len() - 3;
        assert_eq!(neighbour_updates(&buf[..cut], vip), vec![a]);
        assert!(neighbour_updates(&[], vip).is_empty());
    }
}
