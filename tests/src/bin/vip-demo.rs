//! `cargo xtask demo`: a two-node cluster in network namespaces with real etcd and the real agent,
//! a client probing the VIP with ARP every millisecond, and the leader key moved back and forth the
//! way Patroni moves it. Prints the timeline of each failover, then removes everything it made.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use vip_agent::clock::monotonic_ns;
use vip_tests::{
    arp::{ArpSocket, Probe},
    cluster::{Cluster, acquire, release},
    format_mac, require_privileges,
};

const LEASE_TTL: i64 = 10;

fn main() {
    if !require_privileges("vip-demo") {
        std::process::exit(2);
    }
    let stop = Arc::new(AtomicBool::new(false));
    install_interrupt(&stop);
    let agent_bin = std::env::args().nth(1).map_or_else(
        || {
            std::env::current_exe()
                .expect("own path")
                .with_file_name("vip-agent")
        },
        PathBuf::from,
    );
    println!(
        "vip-demo: building a cluster in network namespaces (bridge, etcd 3.4, node1, node2, client)"
    );
    let mut cluster = Cluster::new(250, 2, &agent_bin, "garp-count: 3\n");
    println!(
        "  VIP {} on the bridge; etcd {}; node1 {} ({}), node2 {} ({}); client {}",
        cluster.vip,
        cluster.endpoint,
        cluster.nodes[0].host.ip,
        format_mac(&cluster.nodes[0].host.mac),
        cluster.nodes[1].host.ip,
        format_mac(&cluster.nodes[1].host.mac),
        cluster.client.ip
    );
    cluster.start_agent(0);
    cluster.start_agent(1);
    cluster.wait_running();
    println!("  both agents running (logs: {})", cluster.dir.display());

    let leases = cluster.etcd(async |c| {
        let l1 = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
        let l2 = c.lease_grant(LEASE_TTL, None).await.expect("lease").id();
        assert!(
            acquire(c, "/service/demo/leader", "node1", l1)
                .await
                .is_some(),
            "the key was free"
        );
        (l1, l2)
    });
    println!("  node1 takes the leader key (lease TTL {LEASE_TTL}s), as Patroni does");
    std::thread::sleep(Duration::from_millis(500));

    let mut failovers = Vec::new();
    for (from, to, lease) in [(0, 1, leases.1), (1, 0, leases.0), (0, 1, leases.1)] {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        keep_alive(&cluster, leases);
        match switchover(&cluster, from, to, lease, &stop) {
            Some(t) => {
                t.print(&cluster, from, to);
                failovers.push(t);
            }
            None => break,
        }
        std::thread::sleep(Duration::from_millis(700));
    }

    if !stop.load(Ordering::Relaxed) {
        let holder = failovers.len() % 2;
        println!(
            "\nSIGTERM to node{}'s agent (the holder): it fences and removes the VIP before exiting",
            holder + 1
        );
        let status = cluster.terminate_agent(holder);
        println!(
            "  exit status: {status:?}; probe answered by: {:?}",
            macs(&cluster.probe(Duration::from_millis(200)))
        );
    }
    println!("\ncleaning up: agents, etcd, XDP programs, pins and namespaces");
    drop(cluster);
    println!("done");
}

fn keep_alive(cluster: &Cluster, leases: (i64, i64)) {
    cluster.etcd(async |c| {
        for id in [leases.0, leases.1] {
            let (mut keeper, _) = c.lease_keep_alive(id).await.expect("keepalive");
            keeper.keep_alive().await.expect("keepalive");
        }
    });
}

/// The timestamps of one switchover (kernel monotonic ns).
struct Timeline {
    delete_sent: u64,
    delete_acked: u64,
    create_acked: u64,
    revision: i64,
    old_fenced: Option<u64>,
    new_answering: Option<u64>,
    last_old_reply: Option<u64>,
    first_new_reply: Option<u64>,
    both: usize,
    probes: usize,
}

fn switchover(
    cluster: &Cluster,
    from: usize,
    to: usize,
    new_lease: i64,
    stop: &AtomicBool,
) -> Option<Timeline> {
    let old_mac = cluster.nodes[from].host.mac;
    let new_mac = cluster.nodes[to].host.mac;
    let (old_name, new_name) = (
        cluster.nodes[from].name.clone(),
        cluster.nodes[to].name.clone(),
    );

    // Probe every millisecond from 300 ms before to 700 ms after the switchover.
    let probing = AtomicBool::new(true);
    let (ifname, ip, vip) = (
        cluster.client.ifname.clone(),
        cluster.client.ip,
        cluster.vip,
    );
    let (times, replies) = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            cluster.client.ns.run_in(|| {
                ArpSocket::open(&ifname)
                    .and_then(|sock| {
                        sock.probe_loop(ip, vip, Duration::from_millis(1), &probing, 10_000)
                    })
                    .expect("ARP prober")
            })
        });
        std::thread::sleep(Duration::from_millis(300));
        let times = cluster.etcd(async |c| {
            let key = cluster.key.as_str();
            let sent = monotonic_ns();
            release(c, key, &old_name).await;
            let acked = monotonic_ns();
            let revision = acquire(c, key, &new_name, new_lease)
                .await
                .expect("the key was free");
            (sent, acked, monotonic_ns(), revision)
        });
        std::thread::sleep(Duration::from_millis(700));
        probing.store(false, Ordering::Relaxed);
        (times, prober.join().expect("prober"))
    });
    if stop.load(Ordering::Relaxed) {
        return None;
    }
    let (delete_sent, delete_acked, create_acked, revision) = times;
    let answered_by = |p: &Probe, mac: [u8; 6]| p.answers.iter().any(|(_, m)| *m == mac);
    let both = replies
        .iter()
        .filter(|p| answered_by(p, old_mac) && answered_by(p, new_mac))
        .count();
    let replies_from = |mac: [u8; 6]| {
        replies
            .iter()
            .flat_map(|p| p.answers.iter())
            .filter(move |(t, m)| *m == mac && *t >= delete_sent)
            .map(|(t, _)| *t)
    };
    Some(Timeline {
        delete_sent,
        delete_acked,
        create_acked,
        revision,
        old_fenced: cluster.log_event_after(from, "data plane fenced", delete_sent),
        new_answering: cluster.log_event_after(to, "data plane answering", delete_sent),
        last_old_reply: replies_from(old_mac).max(),
        first_new_reply: replies_from(new_mac).min(),
        both,
        probes: replies.len(),
    })
}

impl Timeline {
    fn print(&self, cluster: &Cluster, from: usize, to: usize) {
        let ms = |t: Option<u64>| {
            t.map_or_else(
                || "      -".to_owned(),
                |t| {
                    format!(
                        "{:+8.3}",
                        (i128::from(t) - i128::from(self.delete_sent)) as f64 / 1e6
                    )
                },
            )
        };
        let (old, new) = (&cluster.nodes[from], &cluster.nodes[to]);
        println!(
            "\nswitchover {} -> {} (create at revision {}), ms from the release txn:",
            old.name, new.name, self.revision
        );
        let mut rows = [
            (
                Some(self.delete_sent),
                format!("release txn sent (delete if value == {})", old.name),
            ),
            (
                Some(self.delete_acked),
                "release acknowledged by etcd".to_owned(),
            ),
            (self.old_fenced, format!("{} data plane fenced", old.name)),
            (
                self.last_old_reply,
                format!(
                    "last ARP reply from {} ({})",
                    old.name,
                    format_mac(&old.host.mac)
                ),
            ),
            (
                Some(self.create_acked),
                format!(
                    "acquire acknowledged ({} created the key with its lease)",
                    new.name
                ),
            ),
            (
                self.new_answering,
                format!(
                    "{} data plane answering (deadline from its lease)",
                    new.name
                ),
            ),
            (
                self.first_new_reply,
                format!(
                    "first ARP reply from {} ({})",
                    new.name,
                    format_mac(&new.host.mac)
                ),
            ),
        ];
        rows.sort_by_key(|(t, _)| t.unwrap_or(u64::MAX));
        for (t, what) in rows {
            println!("  {}  {what}", ms(t));
        }
        println!(
            "  probes: {} (one per ms), answered by both nodes: {}",
            self.probes, self.both
        );
    }
}

fn macs(list: &[[u8; 6]]) -> Vec<String> {
    list.iter().map(format_mac).collect()
}

/// Ctrl-C sets `stop`; the demo then winds down and cleans up instead of dying mid-way.
fn install_interrupt(stop: &Arc<AtomicBool>) {
    let stop = Arc::clone(stop);
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        eprintln!("\ninterrupted: cleaning up");
        stop.store(true, Ordering::Relaxed);
    });
}
