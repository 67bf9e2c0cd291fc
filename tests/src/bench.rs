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
    let mut stream =
        TcpStream::connect_timeout(&etcd, Duration::from_secs(2)).expect("connect to etcd v2");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {etcd}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("v2 request");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Run `trials` switchovers (alternating direction, after one warm-up) on a fresh cluster.
///
/// # Panics
/// When the cluster cannot be built or a holder never takes over.
#[must_use]
pub fn switchovers(system: System, subnet: u8, trials: usize, agent_bin: &Path) -> Vec<Trial> {
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
    let keys = Keys::new(&cluster, system);
    keys.switch("", "node1", 0);
    wait_for_holder(&cluster, 0);

    let mut results = Vec::new();
    // Trial 0 is a warm-up and is discarded.
    for n in 0..=trials {
        let (from, to) = if n % 2 == 0 { (0, 1) } else { (1, 0) };
        let trial = one_switchover(&cluster, &keys, from, to);
        wait_for_holder(&cluster, to);
        if n > 0 {
            results.push(trial);
        }
    }
    results
}

fn one_switchover(cluster: &Cluster, keys: &Keys<'_>, from: usize, to: usize) -> Trial {
    let (old_mac, new_mac) = (cluster.nodes[from].host.mac, cluster.nodes[to].host.mac);
    let probing = AtomicBool::new(true);
    let (ifname, ip, vip) = (
        cluster.client.ifname.clone(),
        cluster.client.ip,
        cluster.vip,
    );
    let (times, probes) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            cluster.client.ns.run_in(|| {
                ArpSocket::open(&ifname)
                    .and_then(|sock| {
                        sock.probe_loop(ip, vip, Duration::from_millis(1), &probing, 20_000)
                    })
                    .expect("ARP prober")
            })
        });
        std::thread::sleep(Duration::from_millis(50));
        let times = keys.switch(&cluster.nodes[from].name, &cluster.nodes[to].name, to);
        std::thread::sleep(keys.system.window());
        probing.store(false, Ordering::Relaxed);
        (times, prober.join().expect("prober thread"))
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

/// p50 / p90 / p99 / max of `values` (nearest rank), `None` when empty.
#[must_use]
pub fn percentiles(values: &[u64]) -> Option<[u64; 4]> {
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
        assert_eq!(percentiles(&[]), None);
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
