//! The agent in a private mount namespace (issue 15): started through `ip netns exec`, which gives
//! it a mount namespace of its own with a fresh sysfs and no bpffs, as a container does. The agent
//! then mounts a bpffs of its own, and its pins, the bpf_link and so the XDP program end with the
//! process. What has to hold all the same: after a SIGKILL, nothing answers ARP for the VIP past
//! the lease-bounded deadline, neither the XDP program (gone) nor the kernel (the address expires by
//! itself before the deadline), and a restarted agent attaches again and serves.
//!
//! The harness's usual way in (`nsenter --net`, the host's mount namespace) keeps the pins on the
//! host's bpffs; the last test checks that an agent with a mount namespace of its own that still sees
//! the host's bpffs (`unshare --mount`) keeps them too, and is adopted after a SIGKILL.
//!
//! Subnets 10.77.160.0/24 to 10.77.162.0/24.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use vip_agent::clock::monotonic_ns;
use vip_tests::{
    arp::ArpSocket,
    cluster::{self, Cluster},
    eventually, require_privileges,
};

const KEY: &str = "/service/demo/leader";
const PROBE: Duration = Duration::from_millis(150);
/// The lease of the node whose agent is killed. Long enough that the address gets a lifetime that
/// ends before the deadline with the kernel's 3 s margin (the deadline lies about `TTL - 1.5 s`
/// ahead of each confirmation: a 2 s lifetime).
const TTL: i64 = 7;

fn grant(c: &Cluster, ttl: i64) -> i64 {
    c.etcd(async |e| e.lease_grant(ttl, None).await.expect("lease").id())
}

fn acquire(c: &Cluster, name: &str, lease: i64) {
    let revision = c.etcd(async |e| cluster::acquire(e, KEY, name, lease).await);
    assert!(revision.is_some(), "{name} could not acquire the key");
}

fn release(c: &Cluster, name: &str) {
    assert!(
        c.etcd(async |e| cluster::release(e, KEY, name).await),
        "{name} could not release the key"
    );
}

fn answering(c: &Cluster) -> Vec<[u8; 6]> {
    c.probe(PROBE)
}

/// Start node `i`'s agent as `ip netns exec <its namespace> vip-agent ...` does: a private mount
/// namespace with a fresh /sys, so no bpffs until the agent mounts one.
fn start_private(c: &mut Cluster, i: usize) {
    let ns = c.nodes[i].host.ns.name().to_owned();
    c.start_agent_with(i, &["ip", "netns", "exec", &ns]);
}

/// The VIP's valid lifetime on node `i` in seconds as `ip -j addr` reports it (`None`: no such
/// address; `u64::from(u32::MAX)`: forever).
fn vip_valid_lft(c: &Cluster, i: usize) -> Option<u64> {
    let node = &c.nodes[i].host;
    let json = node
        .ns
        .ip(&["-j", "-4", "addr", "show", "dev", &node.ifname]);
    let links: serde_json::Value = serde_json::from_str(&json).expect("ip -j addr is JSON");
    let vip = c.vip.to_string();
    links
        .as_array()?
        .iter()
        .filter_map(|l| l["addr_info"].as_array())
        .flatten()
        .find(|a| a["local"].as_str() == Some(vip.as_str()))
        .map(|a| a["valid_life_time"].as_u64().unwrap_or(u64::MAX))
}

/// Patroni on a node keeps its lease alive (every 500 ms) until `running` turns false.
fn keep_alive(c: &Cluster, lease: i64, running: &AtomicBool) {
    while running.load(Ordering::Relaxed) {
        c.etcd(async |e| {
            let (mut k, _) = e.lease_keep_alive(lease).await.expect("keepalive");
            k.keep_alive().await.expect("keepalive");
        });
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Times (kernel monotonic ns) of the replies from `mac` to ARP probes for the VIP sent from the
/// client every 10 ms until `running` turns false.
fn probe_replies(c: &Cluster, running: &AtomicBool) -> Vec<(u64, u64, [u8; 6])> {
    let (ifname, ip, vip) = (c.client.ifname.clone(), c.client.ip, c.vip);
    c.client.ns.run_in(|| {
        let sock = ArpSocket::open(&ifname).expect("ARP socket");
        let probes = sock
            .probe_loop(ip, vip, Duration::from_millis(10), running, 100_000)
            .expect("probe loop");
        probes
            .into_iter()
            .flat_map(|p| {
                p.answers
                    .into_iter()
                    .map(move |(at, mac)| (p.sent_ns, at, mac))
            })
            .collect()
    })
}

#[test]
fn sigkilled_agent_in_a_private_mount_namespace_leaves_nothing_answering_after_its_deadline() {
    if !require_privileges(
        "sigkilled_agent_in_a_private_mount_namespace_leaves_nothing_answering_after_its_deadline",
    ) {
        return;
    }
    // The fence handshake's record lease bounds node1's deadline too, and node2 waits for it to
    // expire after the kill: short enough for node2 to answer within the window below.
    let mut c = Cluster::new(160, 2, &vip_tests::agent_binary(), "fence-record-ttl: 5s\n");
    start_private(&mut c, 0);
    start_private(&mut c, 1);
    c.wait_running();
    let (mac1, mac2) = (c.nodes[0].host.mac, c.nodes[1].host.mac);
    assert!(
        c.dataplane_snapshot(0).is_none(),
        "the pins are in the agent's own bpffs, not visible here"
    );

    let lease1 = grant(&c, TTL);
    acquire(&c, "node1", lease1);
    eventually(
        Duration::from_secs(5),
        "node1 answers and carries the address",
        || answering(&c) == vec![mac1] && vip_valid_lft(&c, 0).is_some(),
    );

    let patroni1 = AtomicBool::new(true);
    let probing = AtomicBool::new(true);
    let ttl_ns = u64::try_from(TTL).expect("ttl") * 1_000_000_000;
    // The scoped threads below borrow the cluster; the agent is killed by PID and reaped after.
    let node1_agent = nix::unistd::Pid::from_raw(c.agent(0).pid());
    let (killed_at, replies) = std::thread::scope(|s| {
        // Patroni on node1 lives on and keeps its lease; only the agent dies.
        s.spawn(|| keep_alive(&c, lease1, &patroni1));
        let prober = s.spawn(|| probe_replies(&c, &probing));
        std::thread::sleep(Duration::from_millis(300));
        let killed_at = monotonic_ns();
        nix::sys::signal::kill(node1_agent, nix::sys::signal::Signal::SIGKILL)
            .expect("SIGKILL node1's agent");
        // A switchover the dead agent cannot see: Patroni releases node1's key, node2 takes it.
        release(&c, "node1");
        let lease2 = grant(&c, 30);
        acquire(&c, "node2", lease2);
        // Past the lease-bounded deadline, with room for the prober to see what answers then.
        std::thread::sleep(Duration::from_nanos(ttl_ns) + Duration::from_secs(2));
        probing.store(false, Ordering::Relaxed);
        patroni1.store(false, Ordering::Relaxed);
        (killed_at, prober.join().expect("prober"))
    });
    c.kill_agent(0);
    // node1's last confirmation was sent before the kill with at most TTL left on the lease, so
    // its deadline lies before `killed_at + TTL - 500 ms`. Probes sent after it: node1 must not
    // answer, from XDP or from the kernel.
    let deadline_bound = killed_at + ttl_ns - 500_000_000;
    let late: Vec<_> = replies
        .iter()
        .filter(|(sent, _, mac)| *mac == mac1 && *sent >= deadline_bound)
        .collect();
    let last_node1 = replies
        .iter()
        .filter(|(_, _, mac)| *mac == mac1)
        .map(|(sent, _, _)| sent.saturating_sub(killed_at) / 1_000_000)
        .max();
    eprintln!(
        "node1 last answered a probe sent {last_node1:?} ms after the kill (bound {} ms)",
        (deadline_bound - killed_at) / 1_000_000
    );
    assert!(
        late.is_empty(),
        "node1 answered {} probe(s) sent after its lease-bounded deadline, first {} ms after the kill:\n{}",
        late.len(),
        late.first()
            .map_or(0, |(sent, _, _)| sent.saturating_sub(killed_at) / 1_000_000),
        c.log(0)
    );
    assert!(
        replies.iter().any(|(_, _, mac)| *mac == mac2),
        "node2 answered after taking the key"
    );
    assert_eq!(
        vip_valid_lft(&c, 0),
        None,
        "the kernel removed node1's address by itself"
    );
    assert_eq!(
        c.xdp_prog_id(0),
        None,
        "the XDP program ended with the agent's mount namespace (the case this test is about)"
    );

    // The restarted agent attaches again (nothing to adopt), stays fenced, and serves once the
    // key names node1 again.
    start_private(&mut c, 0);
    eventually(Duration::from_secs(10), "node1's agent runs again", || {
        c.log(0).matches("vip-agent running").count() >= 2
    });
    assert!(c.agent_exited(0).is_none(), "{}", c.log(0));
    assert!(c.xdp_prog_id(0).is_some(), "the program is attached again");
    assert_eq!(answering(&c), vec![mac2], "only node2 answers");
    release(&c, "node2");
    let lease3 = grant(&c, 30);
    acquire(&c, "node1", lease3);
    eventually(
        Duration::from_secs(5),
        "node1 answers again, with an expiring address",
        || {
            answering(&c) == vec![mac1]
                && vip_valid_lft(&c, 0).is_some_and(|l| (1..=30).contains(&l))
        },
    );
    assert_eq!(vip_valid_lft(&c, 1), None, "node2 removed its address");
    let status = c
        .terminate_agent(0)
        .expect("node1's agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(vip_valid_lft(&c, 0), None);
}

#[test]
fn agent_restarted_at_once_after_a_sigkill_in_a_private_mount_namespace_attaches_again() {
    if !require_privileges(
        "agent_restarted_at_once_after_a_sigkill_in_a_private_mount_namespace_attaches_again",
    ) {
        return;
    }
    let mut c = Cluster::new(161, 1, &vip_tests::agent_binary(), "");
    start_private(&mut c, 0);
    c.wait_running();
    let mac1 = c.nodes[0].host.mac;
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac1] && vip_valid_lft(&c, 0).is_some()
    });
    for round in 0..3 {
        c.kill_agent(0);
        // No pause: the killed agent's mount namespace, pins and link are still being torn down.
        start_private(&mut c, 0);
        eventually(
            Duration::from_secs(10),
            "the restarted agent answers again",
            || answering(&c) == vec![mac1] && vip_valid_lft(&c, 0).is_some(),
        );
        assert!(
            c.agent_exited(0).is_none(),
            "round {round}: the restarted agent runs:\n{}",
            c.log(0)
        );
    }
}

#[test]
fn agent_in_a_mount_namespace_of_its_own_that_sees_the_hosts_bpffs_keeps_its_pins() {
    if !require_privileges(
        "agent_in_a_mount_namespace_of_its_own_that_sees_the_hosts_bpffs_keeps_its_pins",
    ) {
        return;
    }
    let mut c = Cluster::new(162, 1, &vip_tests::agent_binary(), "");
    // `unshare --mount` copies the host's mounts, /sys/fs/bpf included: the same bpffs.
    c.start_agent_with(0, &["unshare", "--mount", "--propagation", "private", "--"]);
    c.wait_running();
    assert!(
        c.dataplane_snapshot(0).is_some(),
        "the pins are on the host's bpffs"
    );
    assert!(!c.log(0).contains("mounted one of our own"), "{}", c.log(0));
    let mac1 = c.nodes[0].host.mac;
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac1]
    });
    let prog = c.xdp_prog_id(0);
    c.kill_agent(0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(c.xdp_prog_id(0), prog, "the program outlives the agent");
    assert_eq!(answering(&c), vec![mac1], "and answers until the deadline");
    c.start_agent_with(0, &["unshare", "--mount", "--propagation", "private", "--"]);
    eventually(
        Duration::from_secs(10),
        "the restarted agent adopts it",
        || c.log(0).contains("adopted the pinned XDP program"),
    );
    eventually(Duration::from_secs(5), "node1 answers again", || {
        answering(&c) == vec![mac1] && vip_valid_lft(&c, 0).is_some()
    });
}
