//! Failover benchmark: vip-agent against vip-manager in the same run, on netns clusters.
//!
//! Each system gets its own [`Cluster`] (own subnet and bridge, so ARP traffic never mixes). A trial
//! replays a Patroni switchover on the leader key (release: delete if the value is the old leader's;
//! acquire: create for the new leader with a lease) while the client sends an ARP request for the VIP
//! every millisecond, and records, from the release being sent (t0):
//! * when the old holder's MAC answered last and the new holder's first;
//! * the blackout between them, and how many probes both MACs answered (overlap);
//! * for vip-agent, when each node's data plane changed (the agents' own `dataplane_at_ns`).
//!
//! vip-agent's key is the etcd v3 key; Debian's vip-manager 1.0.2 reads the etcd v2 API only, so its
//! key is written through v2 (etcd runs with `--enable-v2`), with the same delete-then-create order.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use vip_agent::clock::monotonic_ns;

use crate::{
    arp::{ArpSocket, Probe},
    cluster::{self, Cluster},
};

/// A system under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum System {
    VipAgent,
    /// vip-manager 1.0.2 polling every `interval_ms`.
    VipManager {
        interval_ms: u32,
    },
}

impl System {
    #[must_use]
    pub fn label(&self) -> String {
        match self {
            Self::VipAgent => "vip-agent".to_owned(),
            Self::VipManager { interval_ms } => format!("vip-manager 1.0.2 ({interval_ms} ms)"),
        }
    }

    /// How long after t0 a trial keeps probing: long enough for the slowest expected takeover.
    fn window(&self) -> Duration {
        match self {
            Self::VipAgent => Duration::from_millis(300),
            Self::VipManager { interval_ms } => {
                Duration::from_millis(u64::from(*interval_ms) * 2 + 800)
            }
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

/// The key operations for one system.
struct Keys<'a> {
    cluster: &'a Cluster,
    system: System,
    leases: [i64; 2],
}

const LEASE_TTL: i64 = 3600;
const V2_TTL: u32 = 3600;

impl<'a> Keys<'a> {
    fn new(cluster: &'a Cluster, system: System) -> Self {
        let leases = match system {
            System::VipAgent => cluster.etcd(async |c| {
                let a = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
                let b = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
                [a, b]
            }),
            System::VipManager { .. } => [0, 0],
        };
        Self {
            cluster,
            system,
            leases,
        }
    }

    /// Release for `from`, then acquire for `to`; returns (t0, release acked, acquire acked).
    fn switch(&self, from: &str, to: &str, to_index: usize) -> (u64, u64, u64) {
        let key = self.cluster.key.as_str();
        match self.system {
            System::VipAgent => {
                let lease = self.leases[to_index];
                self.cluster.etcd(async |c| {
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
                let etcd = SocketAddr::from((self.cluster.etcd_host.ip, 2379));
                self.cluster.client.ns.run_in(|| {
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
    let mut stream =
        TcpStream::connect_timeout(&etcd, Duration::from_secs(2)).expect("connect to etcd v2");
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {etcd}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("v2 request");
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
    (status, json)
}

/// Run `trials` switchovers (alternating direction, after one warm-up) on a fresh cluster.
///
/// # Panics
/// When the cluster cannot be built or a holder never takes over.
#[must_use]
pub fn switchovers(system: System, subnet: u8, trials: usize, agent_bin: &Path) -> Vec<Trial> {
    let cluster = start(system, subnet, agent_bin);
    switchovers_on(&cluster, system, trials)
}

/// A two-node cluster running `system`, with the key held by node 0.
fn start(system: System, subnet: u8, agent_bin: &Path) -> Cluster {
    let mut cluster = Cluster::new(subnet, 2, agent_bin, "");
    for i in 0..2 {
        match system {
            System::VipAgent => cluster.start_agent(i),
            System::VipManager { interval_ms } => cluster.start_vip_manager(i, interval_ms),
        }
    }
    if system == System::VipAgent {
        cluster.wait_running();
    }
    Keys::new(&cluster, system).switch("", "node1", 0);
    wait_for_holder(&cluster, 0);
    cluster
}

/// `trials` switchovers after one discarded warm-up, starting from whichever node holds the key.
fn switchovers_on(cluster: &Cluster, system: System, trials: usize) -> Vec<Trial> {
    let keys = Keys::new(cluster, system);
    let first = current_holder(cluster);
    let mut results = Vec::new();
    for n in 0..=trials {
        let from = if n % 2 == 0 { first } else { 1 - first };
        let to = 1 - from;
        let trial = one_switchover(cluster, &keys, from, to);
        wait_for_holder(cluster, to);
        if n > 0 {
            results.push(trial);
        }
    }
    results
}

fn one_switchover(cluster: &Cluster, keys: &Keys<'_>, from: usize, to: usize) -> Trial {
    let (old_mac, new_mac) = (cluster.nodes[from].host.mac, cluster.nodes[to].host.mac);
    let (times, probes) = while_probing(cluster, keys.system, || {
        std::thread::sleep(Duration::from_millis(50));
        keys.switch(&cluster.nodes[from].name, &cluster.nodes[to].name, to)
    });
    let (t0, released, acquired) = times;
    let rel = |t: u64| t.saturating_sub(t0);
    let replies = |mac: [u8; 6]| {
        probes
            .iter()
            .flat_map(|p: &Probe| p.answers.iter())
            .filter(move |(t, m)| *m == mac && *t >= t0)
            .map(|(t, _)| *t)
    };
    let answered_by = |p: &Probe, mac: [u8; 6]| p.answers.iter().any(|(_, m)| *m == mac);
    let agent = keys.system == System::VipAgent;
    Trial {
        from,
        to,
        release_acked_ns: rel(released),
        acquire_acked_ns: rel(acquired),
        last_old_ns: replies(old_mac).max().map(rel),
        first_new_ns: replies(new_mac).min().map(rel),
        overlap: probes
            .iter()
            .filter(|p| answered_by(p, old_mac) && answered_by(p, new_mac))
            .count(),
        probes: probes.len(),
        old_dataplane_ns: agent
            .then(|| cluster.log_event_after(from, "data plane fenced", t0))
            .flatten()
            .map(rel),
        new_dataplane_ns: agent
            .then(|| cluster.log_event_after(to, "data plane answering", t0))
            .flatten()
            .map(rel),
    }
}

/// Run `change` while the client sends an ARP request for the VIP every millisecond, and keep
/// probing for the system's window after it; returns its result and the probes.
fn while_probing<R: Send>(
    cluster: &Cluster,
    system: System,
    change: impl FnOnce() -> R + Send,
) -> (R, Vec<Probe>) {
    let probing = AtomicBool::new(true);
    let (ifname, ip, vip) = (&cluster.client.ifname, cluster.client.ip, cluster.vip);
    std::thread::scope(|s| {
        let prober = s.spawn(|| {
            cluster.client.ns.run_in(|| {
                ArpSocket::open(ifname)
                    .and_then(|sock| {
                        sock.probe_loop(ip, vip, Duration::from_millis(1), &probing, 20_000)
                    })
                    .expect("ARP prober")
            })
        });
        let result = change();
        std::thread::sleep(system.window());
        probing.store(false, Ordering::Relaxed);
        (result, prober.join().expect("prober thread"))
    })
}

/// Wait (up to 10 s) until exactly node `i` answers.
fn wait_for_holder(cluster: &Cluster, i: usize) {
    let mac = cluster.nodes[i].host.mac;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.probe(Duration::from_millis(20)) != vec![mac] {
        assert!(
            std::time::Instant::now() < deadline,
            "node{} never became the only holder",
            i + 1
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// TTL of the lease a holder "crashes" with in the expiry scenario (Patroni's default is 30 s; etcd
/// refuses less than ~2 s with its default election timeout).
pub const EXPIRY_TTL_S: i64 = 3;

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

/// Run `trials` lease expiries (alternating direction) on `cluster`, whose agents or vip-managers
/// are running and whose key is held by node 0.
///
/// # Panics
/// When etcd fails or a holder never takes over.
pub fn lease_expiries(cluster: &Cluster, system: System, trials: usize) -> Vec<Expiry> {
    let keys = Keys::new(cluster, system);
    let mut holder = current_holder(cluster);
    (0..trials)
        .map(|_| {
            // The holder crashes; the other node takes over; next time the other way round.
            let trial = one_expiry(cluster, &keys, holder);
            wait_for_holder(cluster, trial.to);
            holder = trial.to;
            trial
        })
        .collect()
}

/// The node that answers for the VIP now (waits up to 10 s for exactly one).
fn current_holder(cluster: &Cluster) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let macs = cluster.probe(Duration::from_millis(20));
        if let [mac] = macs.as_slice()
            && let Some(i) = cluster.nodes.iter().position(|n| n.host.mac == *mac)
        {
            return i;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no single holder: {macs:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn one_expiry(cluster: &Cluster, keys: &Keys<'_>, from: usize) -> Expiry {
    let to = 1 - from;
    let (from_name, to_name) = (&cluster.nodes[from].name, &cluster.nodes[to].name);
    // `from` (re)takes the key with a short lease that nobody keeps alive: its Patroni is gone.
    let watch_from = keys.hold_with_short_lease(from_name);
    wait_for_holder(cluster, from);
    let (old_mac, new_mac) = (cluster.nodes[from].host.mac, cluster.nodes[to].host.mac);
    let ((t0, acquired), probes) = while_probing(cluster, keys.system, || {
        keys.take_over_after_expiry(watch_from, to_name, to)
    });
    let signed = |t: u64| {
        i64::try_from(t)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(t0).unwrap_or(i64::MAX))
    };
    let old_replies = || {
        probes
            .iter()
            .flat_map(|p: &Probe| p.answers.iter())
            .filter(|(_, m)| *m == old_mac)
            .map(|(t, _)| *t)
    };
    let answered_by = |p: &Probe, mac: [u8; 6]| p.answers.iter().any(|(_, m)| *m == mac);
    Expiry {
        from,
        to,
        last_old_ns: old_replies().max().map(signed),
        old_answers_after_expiry: probes
            .iter()
            .filter(|p| p.answers.iter().any(|(t, m)| *m == old_mac && *t >= t0))
            .count(),
        acquire_acked_ns: acquired.saturating_sub(t0),
        first_new_ns: probes
            .iter()
            .flat_map(|p| p.answers.iter())
            .filter(|(t, m)| *m == new_mac && *t >= t0)
            .map(|(t, _)| t.saturating_sub(t0))
            .min(),
        overlap: probes
            .iter()
            .filter(|p| answered_by(p, old_mac) && answered_by(p, new_mac))
            .count(),
        probes: probes.len(),
    }
}

impl Keys<'_> {
    /// Release the key held by `name` and take it again with a fresh lease of [`EXPIRY_TTL_S`]
    /// that is never renewed. Returns where a watch for its expiry starts: the etcd revision (v3)
    /// or the v2 index after the write.
    fn hold_with_short_lease(&self, name: &str) -> i64 {
        let key = self.cluster.key.as_str();
        match self.system {
            System::VipAgent => self.cluster.etcd(async |c| {
                cluster::release(c, key, name).await;
                let lease = c.lease_grant(EXPIRY_TTL_S, None).await.expect("lease").id();
                cluster::acquire(c, key, name, lease)
                    .await
                    .expect("the key was free")
                    + 1
            }),
            System::VipManager { .. } => {
                let etcd = SocketAddr::from((self.cluster.etcd_host.ip, 2379));
                self.cluster.client.ns.run_in(|| {
                    v2(
                        etcd,
                        "DELETE",
                        &format!("/v2/keys{key}?prevValue={name}"),
                        "",
                    );
                    let (status, body) = v2_full(
                        etcd,
                        "PUT",
                        &format!("/v2/keys{key}?prevExist=false"),
                        &format!("value={name}&ttl={EXPIRY_TTL_S}"),
                        Duration::from_secs(5),
                    );
                    assert_eq!(status, 201, "v2 create: {body}");
                    body["node"]["modifiedIndex"]
                        .as_i64()
                        .expect("v2 modifiedIndex")
                        + 1
                })
            }
        }
    }

    /// Wait (from `watch_from`) until etcd expires the key, then create it for `name` (node
    /// `index`) with its long lease, as the surviving Patroni member does. Returns (t0 = expiry
    /// seen, acquire acknowledged).
    fn take_over_after_expiry(&self, watch_from: i64, name: &str, index: usize) -> (u64, u64) {
        let key = self.cluster.key.as_str();
        let limit = Duration::from_secs(u64::try_from(EXPIRY_TTL_S).unwrap_or(3) + 10);
        match self.system {
            System::VipAgent => {
                let lease = self.leases[index];
                self.cluster.etcd(async |c| {
                    let options = etcd_client::WatchOptions::new().with_start_revision(watch_from);
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
                let etcd = SocketAddr::from((self.cluster.etcd_host.ip, 2379));
                self.cluster.client.ns.run_in(|| {
                    let (status, body) = v2_full(
                        etcd,
                        "GET",
                        &format!("/v2/keys{key}?wait=true&waitIndex={watch_from}"),
                        "",
                        limit,
                    );
                    let t0 = monotonic_ns();
                    assert_eq!(
                        (status, body["action"].as_str()),
                        (200, Some("expire")),
                        "v2 watch: {body}"
                    );
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
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let started = std::time::Instant::now();
    std::thread::sleep(window);
    let window_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&h| h > 0)
        .unwrap_or(100);
    pids.iter()
        .zip(before)
        .map(|(&pid, b)| Usage {
            cpu_ms: (cpu_ticks(pid) - b) * 1000 / hz,
            window_ms,
            rss_kib: rss_kib(pid),
        })
        .collect()
}

/// utime + stime of `pid`, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/<pid>/stat");
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> u64 { fields.get(n - 3).and_then(|f| f.parse().ok()).unwrap_or(0) };
    field(14) + field(15)
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("read /proc/<pid>/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Everything measured on one system's cluster.
#[derive(Debug, Default)]
pub struct SystemRun {
    pub switchovers: Vec<Trial>,
    pub expiries: Vec<Expiry>,
    pub idle: Vec<Usage>,
}

/// What to run on each system.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub switchovers: usize,
    pub expiries: usize,
    pub idle: Duration,
}

/// Build one cluster for `system` and run the plan on it: switchovers, lease expiries, then an idle
/// window (skipped when zero).
///
/// # Panics
/// When the cluster cannot be built or a holder never takes over.
#[must_use]
pub fn run_system(system: System, subnet: u8, plan: Plan, agent_bin: &Path) -> SystemRun {
    let mut cluster = start(system, subnet, agent_bin);
    let switchovers = switchovers_on(&cluster, system, plan.switchovers);
    let expiries = lease_expiries(&cluster, system, plan.expiries);
    let idle = if plan.idle.is_zero() {
        Vec::new()
    } else {
        idle_usage(&mut cluster, plan.idle)
    };
    SystemRun {
        switchovers,
        expiries,
        idle,
    }
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
                    replies.first().map(|r| r.at_ns.saturating_sub(sent))
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
}
