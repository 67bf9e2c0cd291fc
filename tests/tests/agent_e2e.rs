//! The real vip-agent binary end to end: two nodes and a client on one L2 segment, real etcd 3.4,
//! Patroni's key operations, a raw-socket ARP prober. Every test builds its own cluster (its own
//! subnet) and removes it.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use etcd_client::PutOptions;
use nix::sys::signal::Signal;
use vip_tests::{
    arp::ArpSeen,
    cluster::{self, Cluster},
    eventually, require_privileges,
};

const KEY: &str = "/service/demo/leader";
const PROBE: Duration = Duration::from_millis(150);

fn cluster(subnet: u8, extra: &str) -> Cluster {
    let mut c = Cluster::new(subnet, 2, &vip_tests::agent_binary(), extra);
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    c
}

fn grant(c: &Cluster, ttl: i64) -> i64 {
    c.etcd(async |e| e.lease_grant(ttl, None).await.expect("lease").id())
}

/// Patroni's acquire for `name`, which must succeed.
fn acquire(c: &Cluster, name: &str, lease: i64) {
    let revision = c.etcd(async |e| cluster::acquire(e, KEY, name, lease).await);
    assert!(revision.is_some(), "{name} could not acquire the key");
}

/// Patroni's release for `name`.
fn release(c: &Cluster, name: &str) {
    c.etcd(async |e| cluster::release(e, KEY, name).await);
}

fn put(c: &Cluster, value: &[u8]) {
    let value = value.to_vec();
    c.etcd(async move |e| {
        e.put(KEY, value, None).await.expect("put");
    });
}

fn answering(c: &Cluster) -> Vec<[u8; 6]> {
    c.probe(PROBE)
}

fn mac(c: &Cluster, i: usize) -> [u8; 6] {
    c.nodes[i].host.mac
}

fn has_vip_address(c: &Cluster, i: usize) -> bool {
    let node = &c.nodes[i].host;
    node.ns
        .ip(&["-4", "-o", "addr", "show", "dev", &node.ifname])
        .contains(&format!(" {}/24 ", c.vip))
}

/// Every ARP frame the client sees in 900 ms while `during` runs (100 ms in), and among them the
/// gratuitous ARPs for the VIP (sender = target = VIP, to the Ethernet broadcast).
fn capture_garps(c: &Cluster, during: impl FnOnce()) -> (Vec<ArpSeen>, Vec<ArpSeen>) {
    let (ifname, vip) = (c.client.ifname.clone(), c.vip.octets());
    let frames = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            c.client.ns.run_in(|| {
                let sock = vip_tests::arp::ArpSocket::open(&ifname).expect("socket");
                sock.recv_until(Instant::now() + Duration::from_millis(900))
                    .expect("capture")
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        during();
        capture.join().expect("capture thread")
    });
    let garps = frames
        .iter()
        .filter(|f| f.arp.spa == vip && f.arp.tpa == vip && f.eth_dst == [0xff; 6])
        .copied()
        .collect();
    (frames, garps)
}

#[test]
fn follows_the_key_through_flips_deletes_and_foreign_values() {
    if !require_privileges("follows_the_key_through_flips_deletes_and_foreign_values") {
        return;
    }
    let c = cluster(31, "");
    assert!(
        answering(&c).is_empty(),
        "fenced until the key names a node"
    );
    let (l1, l2) = (grant(&c, 30), grant(&c, 30));

    acquire(&c, "node1", l1);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    eventually(Duration::from_secs(5), "node1 carries the address", || {
        has_vip_address(&c, 0)
    });
    assert!(!has_vip_address(&c, 1));

    release(&c, "node1");
    eventually(
        Duration::from_secs(5),
        "nobody answers after the delete",
        || answering(&c).is_empty(),
    );
    eventually(Duration::from_secs(5), "node1 drops the address", || {
        !has_vip_address(&c, 0)
    });

    acquire(&c, "node2", l2);
    eventually(Duration::from_secs(5), "node2 answers", || {
        answering(&c) == vec![mac(&c, 1)]
    });

    for foreign in [&b"node3"[..], b"", b"NODE2", b"node2 ", b"\xff\xfe\x00"] {
        put(&c, foreign);
        eventually(
            Duration::from_secs(5),
            "a foreign value fences everyone",
            || answering(&c).is_empty(),
        );
    }
    put(&c, b"node1");
    eventually(Duration::from_secs(5), "node1 answers again", || {
        answering(&c) == vec![mac(&c, 0)]
    });
}

#[test]
fn rapid_churn_keeps_order_and_never_two_answering_nodes() {
    if !require_privileges("rapid_churn_keeps_order_and_never_two_answering_nodes") {
        return;
    }
    let c = cluster(32, "");
    let leases = [grant(&c, 30), grant(&c, 30)];
    // 100 writes as fast as etcd takes them, ending on node2: every node ends where the last write says.
    c.etcd(async |e| {
        for i in 0..100 {
            let name = if i % 2 == 0 { "node1" } else { "node2" };
            e.put(KEY, name, Some(PutOptions::new().with_lease(leases[i % 2])))
                .await
                .expect("put");
        }
    });
    eventually(Duration::from_secs(5), "the last write wins", || {
        answering(&c) == vec![mac(&c, 1)]
    });

    // Then switchovers with the client probing: once both nodes have seen a flip, never two answers.
    let mut both = 0;
    for round in 0..10 {
        let (from, to) = if round % 2 == 0 {
            ("node2", "node1")
        } else {
            ("node1", "node2")
        };
        release(&c, from);
        acquire(&c, to, leases[usize::from(to == "node2")]);
        let holder = mac(&c, usize::from(to == "node2"));
        eventually(Duration::from_secs(5), "the new holder answers", || {
            answering(&c).contains(&holder)
        });
        for _ in 0..5 {
            let r = answering(&c);
            both += usize::from(r.len() > 1);
            assert_eq!(r, vec![holder], "round {round}");
        }
    }
    assert_eq!(both, 0, "probes answered by two nodes");
}

#[test]
fn primary_cut_off_from_etcd_goes_silent_before_its_lease_could_expire_and_resumes() {
    if !require_privileges(
        "primary_cut_off_from_etcd_goes_silent_before_its_lease_could_expire_and_resumes",
    ) {
        return;
    }
    let c = cluster(33, "");
    let ttl = 4;
    let lease = grant(&c, ttl);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });

    // Patroni on node1 stays alive and keeps its lease (it reaches etcd; only the agent does not).
    let keeping = AtomicBool::new(true);
    std::thread::scope(|s| {
        s.spawn(|| {
            while keeping.load(Ordering::Relaxed) {
                c.etcd(async |e| {
                    let (mut k, _) = e.lease_keep_alive(lease).await.expect("keepalive");
                    k.keep_alive().await.expect("keepalive");
                });
                std::thread::sleep(Duration::from_millis(500));
            }
        });
        c.partition(0);
        let cut = Instant::now();
        // The last confirmation was at most ~1 s before the cut and its deadline is
        // t_sent + remaining TTL - 0.5 s: silent within the TTL, with no etcd event at all.
        eventually(
            Duration::from_secs(u64::try_from(ttl).expect("ttl")),
            "node1 goes silent",
            || answering(&c).is_empty(),
        );
        assert!(cut.elapsed() < Duration::from_secs(u64::try_from(ttl).expect("ttl")));
        assert!(
            c.log(0).contains("EtcdUnreachable") || c.log(0).contains("not confirmed"),
            "{}",
            c.log(0)
        );
        // Still silent a while later (nothing renews without etcd).
        std::thread::sleep(Duration::from_secs(1));
        assert!(answering(&c).is_empty());

        c.heal(0);
        eventually(
            Duration::from_secs(15),
            "node1 answers again after the partition heals",
            || answering(&c) == vec![mac(&c, 0)],
        );
        keeping.store(false, Ordering::Relaxed);
    });
}

#[test]
fn killed_or_stopped_agent_goes_silent_by_its_deadline() {
    if !require_privileges("killed_or_stopped_agent_goes_silent_by_its_deadline") {
        return;
    }
    for (subnet, signal) in [(34, Signal::SIGKILL), (35, Signal::SIGSTOP)] {
        let mut c = cluster(subnet, "");
        let ttl = 3;
        let lease = grant(&c, ttl);
        acquire(&c, "node1", lease);
        eventually(Duration::from_secs(5), "node1 answers", || {
            answering(&c) == vec![mac(&c, 0)]
        });
        c.agent(0).signal(signal);
        let t = Instant::now();
        // The pinned program keeps answering on its own until the deadline, then stops, with no agent.
        eventually(
            Duration::from_secs(u64::try_from(ttl).expect("ttl")),
            "silence by the deadline",
            || answering(&c).is_empty(),
        );
        assert!(
            t.elapsed() <= Duration::from_secs(u64::try_from(ttl).expect("ttl")),
            "{signal}: silent within the lease TTL"
        );
        assert!(
            c.nodes[0]
                .host
                .ns
                .xdp_prog_id(&c.nodes[0].host.ifname)
                .is_some(),
            "the program is still there, fencing"
        );
        if signal == Signal::SIGSTOP {
            c.agent(0).signal(Signal::SIGCONT);
        }
    }
}

#[test]
fn sigterm_fences_removes_the_address_and_exits_zero() {
    if !require_privileges("sigterm_fences_removes_the_address_and_exits_zero") {
        return;
    }
    let mut c = cluster(36, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(
        Duration::from_secs(5),
        "node1 answers with the address",
        || answering(&c) == vec![mac(&c, 0)] && has_vip_address(&c, 0),
    );
    let status = c.terminate_agent(0).expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        answering(&c).is_empty(),
        "nobody answers after the holder's agent stopped"
    );
    assert!(
        !has_vip_address(&c, 0),
        "the address is gone (vip-manager leaves it behind)"
    );
    let node = &c.nodes[0].host;
    assert!(
        node.ns.xdp_prog_id(&node.ifname).is_some(),
        "the pinned program stays, fenced"
    );

    // A SIGTERM while the agent is still starting (the fault suite's restart-then-stop) is held
    // until its handlers are in place: a clean stop, not death by the default action. The delays
    // count from the exec of the agent (before it, under load, a SIGTERM would find `nsenter`;
    // right after it, a process still in the loader, which the default action ends before it has
    // done anything: docs/safety.md).
    for delay_ms in [10, 30, 60] {
        c.start_agent(0);
        c.wait_agent_exec(0);
        std::thread::sleep(Duration::from_millis(delay_ms));
        let status = c
            .terminate_agent(0)
            .expect("the agent exits on an early SIGTERM");
        assert!(
            status.success(),
            "SIGTERM {delay_ms} ms after start: {status:?}"
        );
    }
}

#[test]
fn address_drift_is_corrected_at_once() {
    if !require_privileges("address_drift_is_corrected_at_once") {
        return;
    }
    let c = cluster(37, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 holds the address", || {
        has_vip_address(&c, 0)
    });
    let n1 = &c.nodes[0].host;
    n1.ns
        .ip(&["addr", "del", &format!("{}/24", c.vip), "dev", &n1.ifname]);
    eventually(
        Duration::from_secs(2),
        "the address comes back on the primary",
        || has_vip_address(&c, 0),
    );
    let n2 = &c.nodes[1].host;
    n2.ns
        .ip(&["addr", "add", &format!("{}/24", c.vip), "dev", &n2.ifname]);
    eventually(
        Duration::from_secs(2),
        "a hand-added address on the standby is removed",
        || !has_vip_address(&c, 1),
    );
    assert_eq!(answering(&c), vec![mac(&c, 0)], "still exactly one answer");
}

#[test]
fn etcd_restart_is_survived_and_changes_after_it_are_followed() {
    if !require_privileges("etcd_restart_is_survived_and_changes_after_it_are_followed") {
        return;
    }
    let mut c = cluster(38, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    c.stop_etcd();
    std::thread::sleep(Duration::from_secs(2));
    // Deadline = lease expiry as last observed: a 2 s etcd restart does not drop the VIP.
    assert_eq!(
        answering(&c),
        vec![mac(&c, 0)],
        "the VIP survives a short etcd outage"
    );
    c.start_etcd();
    let l2 = grant(&c, 30);
    release(&c, "node1");
    acquire(&c, "node2", l2);
    eventually(
        Duration::from_secs(15),
        "both agents follow changes after the restart",
        || answering(&c) == vec![mac(&c, 1)],
    );
}

#[test]
fn promotion_announces_the_vip_with_gratuitous_arp() {
    if !require_privileges("promotion_announces_the_vip_with_gratuitous_arp") {
        return;
    }
    let c = cluster(39, "");
    let lease = grant(&c, 30);
    let (_, garps) = capture_garps(&c, || acquire(&c, "node1", lease));
    assert!(
        garps
            .iter()
            .all(|f| f.arp.sha == mac(&c, 0) && f.eth_src == mac(&c, 0)),
        "{garps:?}"
    );
    let requests = garps.iter().filter(|f| f.arp.op == 1).count();
    let replies = garps.iter().filter(|f| f.arp.op == 2).count();
    // Default schedule: announcements at 0 and 100 ms (then 1.1 s, outside this window), each a
    // request and a reply.
    assert!(
        requests >= 2 && replies >= 2,
        "requests {requests}, replies {replies}"
    );
}

#[test]
fn primary_announces_the_vip_again_when_its_interface_comes_back_up() {
    if !require_privileges("primary_announces_the_vip_again_when_its_interface_comes_back_up") {
        return;
    }
    let c = cluster(46, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    // Past the promotion's own burst (announcements at 0, 100 ms and 1.1 s by default).
    std::thread::sleep(Duration::from_millis(1500));
    c.set_link(0, false);
    std::thread::sleep(Duration::from_millis(300));
    let (frames, garps) = capture_garps(&c, || c.set_link(0, true));
    assert!(
        garps
            .iter()
            .all(|f| f.arp.sha == mac(&c, 0) && f.eth_src == mac(&c, 0)),
        "only node1 announces: {garps:?}"
    );
    assert!(
        garps.iter().any(|f| f.arp.op == 1) && garps.iter().any(|f| f.arp.op == 2),
        "node1 announced the VIP again after its link came back: {frames:?}"
    );
    assert!(
        c.log(0).contains("came back up while primary"),
        "the re-announcement is logged"
    );
    assert_eq!(answering(&c), vec![mac(&c, 0)], "and it still answers");
}

#[test]
fn sighup_reloads_a_changed_config_and_keeps_running_on_a_bad_one() {
    if !require_privileges("sighup_reloads_a_changed_config_and_keeps_running_on_a_bad_one") {
        return;
    }
    let mut c = cluster(40, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    let config = c.nodes[0].config.clone();
    let original = std::fs::read_to_string(&config).expect("config");

    c.agent(0).signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(5),
        "an unchanged config is noticed",
        || c.log(0).contains("configuration unchanged"),
    );

    std::fs::write(&config, format!("{original}garp-count: 1\n")).expect("write");
    c.agent(0).signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(5),
        "a changed config restarts the agent",
        || c.log(0).contains("configuration changed"),
    );
    eventually(
        Duration::from_secs(5),
        "node1 answers again under the new config",
        || answering(&c) == vec![mac(&c, 0)],
    );

    // A near miss of a known key is an error (a far unknown key is only a warning, as
    // vip-manager ignores keys it does not know).
    std::fs::write(&config, format!("{original}garp-cont: 1\n")).expect("write");
    c.agent(0).signal(Signal::SIGHUP);
    eventually(Duration::from_secs(5), "a bad config is refused", || {
        c.log(0).contains("keeping the running one")
    });
    assert!(c.log(0).contains("garp-cont"), "the error names the key");
    assert_eq!(answering(&c), vec![mac(&c, 0)], "still serving");

    // Valid, but the agent cannot start with it: the metrics address is not on this host. The
    // process must not exit; it goes back to the configuration that ran.
    std::fs::write(
        &config,
        format!("{original}metrics-address: 192.0.2.1:9477\n"),
    )
    .expect("write");
    c.agent(0).signal(Signal::SIGHUP);
    eventually(
        Duration::from_secs(10),
        "the agent restarts on the previous configuration",
        || c.log(0).contains("restarting it on the previous one"),
    );
    eventually(
        Duration::from_secs(5),
        "node1 answers again under the previous config",
        || answering(&c) == vec![mac(&c, 0)],
    );
    assert!(
        c.agent(0).running_pid().is_some(),
        "the process is still running"
    );
}

/// `on-promote` / `on-demote` run after the data plane changed: the promote hook finds the address
/// already on the interface, the demote hook finds it gone; a holder's SIGTERM runs `on-demote`
/// before the agent exits; a failing hook is retried and never holds up the data plane.
#[test]
fn hooks_run_after_each_transition_and_at_shutdown() {
    if !require_privileges("hooks_run_after_each_transition_and_at_shutdown") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("vip-agent-e2e-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("hook log dir");
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Remove(dir.clone());
    // Each line: event, VIP, and how many times the VIP is on the interface at that moment.
    let line = |event: &str| {
        format!(
            "echo \"{event} $VIP_AGENT_VIP $(ip -4 -o addr show dev \"$VIP_AGENT_INTERFACE\" | \
             grep -c \" $VIP_AGENT_VIP/\")\" >> {}/\"$VIP_AGENT_TRIGGER_VALUE\".log",
            dir.display()
        )
    };
    // The demote hook also fails on its first attempt (hook-retries: 1 gives it a second one).
    let extra = format!(
        "on-promote: '{}'\non-demote: '{}; test -e {d}/\"$VIP_AGENT_TRIGGER_VALUE\".failed || \
         {{ touch {d}/\"$VIP_AGENT_TRIGGER_VALUE\".failed; exit 7; }}'\nhook-retries: 1\n\
         hook-timeout: 10s\n",
        line("promote"),
        line("demote"),
        d = dir.display()
    );
    let mut c = cluster(41, &extra);
    let vip = c.vip;
    let log =
        |name: &str| std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();

    let (l1, l2) = (grant(&c, 30), grant(&c, 30));
    acquire(&c, "node1", l1);
    eventually(Duration::from_secs(5), "node1's on-promote ran", || {
        !log("node1").is_empty()
    });
    assert_eq!(
        log("node1"),
        format!("promote {vip} 1\n"),
        "the address was up"
    );
    assert!(answering(&c) == vec![mac(&c, 0)]);

    release(&c, "node1");
    acquire(&c, "node2", l2);
    eventually(Duration::from_secs(5), "node2's on-promote ran", || {
        !log("node2").is_empty()
    });
    // node1's demote hook failed once, then ran again a second later.
    eventually(
        Duration::from_secs(5),
        "node1's on-demote ran twice",
        || {
            log("node1")
                .lines()
                .filter(|l| l.starts_with("demote"))
                .count()
                == 2
        },
    );
    assert_eq!(
        log("node1"),
        format!("promote {vip} 1\ndemote {vip} 0\ndemote {vip} 0\n"),
        "the address was gone when on-demote ran"
    );
    assert_eq!(log("node2"), format!("promote {vip} 1\n"));
    assert!(answering(&c) == vec![mac(&c, 1)]);

    // Giving the VIP up at shutdown is a demotion too; it runs before the agent exits.
    let status = c.terminate_agent(1).expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert_eq!(
        log("node2"),
        format!("promote {vip} 1\ndemote {vip} 0\n"),
        "on-demote ran at shutdown (once: the first attempt of node2's demote hook fails, and a \
         shutdown does not retry)"
    );
}

/// A client that connects to the VIP while it moves reaches the new primary without a SYN
/// retransmission: the new primary's kernel has the address before its XDP program answers the
/// client's ARP (checked directly too: when the new primary's map entry turns answering, the
/// address is already on its interface). (The other order loses the client's first SYN, sent the moment the ARP reply
/// arrives, and costs it the 1 s initial retransmission timeout.) ARP requests for the VIP leave
/// the client every 100 µs, so its SYN follows the first answer within about that.
#[test]
fn clients_connecting_during_a_switchover_lose_no_syn() {
    if !require_privileges("clients_connecting_during_a_switchover_lose_no_syn") {
        return;
    }
    const PORT: u16 = 15432;
    const TRIALS: usize = 12;
    let c = cluster(42, "promotion-gate: off\n");
    let client_if = c.client.ifname.clone();
    for (knob, value) in [("retrans_time_ms", "10"), ("mcast_solicit", "255")] {
        c.client.ns.exec_ok(
            "sysctl",
            &["-qw", &format!("net.ipv4.neigh.{client_if}.{knob}={value}")],
        );
    }
    // Each node answers a connection with its name.
    let listeners: Vec<std::net::TcpListener> = (0..2)
        .map(|i| {
            c.nodes[i].host.ns.run_in(|| {
                std::net::TcpListener::bind(("0.0.0.0", PORT)).expect("listen on the node")
            })
        })
        .collect();
    let running = AtomicBool::new(true);
    std::thread::scope(|scope| {
        // Also when an assertion below fails: the listeners end and the scope can unwind.
        let _stop = ClearOnDrop(&running);
        for (i, listener) in listeners.iter().enumerate() {
            let (name, running) = (c.nodes[i].name.clone(), &running);
            listener
                .set_nonblocking(true)
                .expect("non-blocking listener");
            scope.spawn(move || {
                while running.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut conn, _)) => {
                            use std::io::Write as _;
                            let _ = conn.write_all(name.as_bytes());
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            });
        }

        let leases = [grant(&c, 60), grant(&c, 60)];
        acquire(&c, "node1", leases[0]);
        eventually(Duration::from_secs(5), "node1 answers", || {
            answering(&c) == vec![mac(&c, 0)]
        });
        let mut retransmitted = Vec::new();
        for trial in 0..TRIALS {
            let (from, to) = if trial % 2 == 0 { (0, 1) } else { (1, 0) };
            release(&c, &c.nodes[from].name);
            eventually(
                Duration::from_secs(5),
                "nobody answers after the release",
                || answering(&c).is_empty(),
            );
            c.client
                .ns
                .exec_ok("ip", &["neigh", "flush", "dev", &client_if]);
            let vip = c.vip;
            let resolving = AtomicBool::new(true);
            let (answered_by, retrans, address_first) = std::thread::scope(|inner| {
                // On the new primary: the moment its map entry turns answering, is the address
                // already there? (Map reads cost microseconds; the address check follows at once.)
                let order = inner.spawn(|| {
                    let (host, pins) = (&c.nodes[to].host, &c.pins);
                    host.ns.run_in(move || {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        loop {
                            assert!(Instant::now() < deadline, "the new primary never answered");
                            let answering = vip_agent::dataplane::inspect(pins, &host.ifname)
                                .ok()
                                .flatten()
                                .and_then(|s| s.into_iter().find(|s| s.vip == vip))
                                .map(|s| s.state)
                                .is_some_and(|s| s.answering_at(vip_agent::clock::monotonic_ns()));
                            if answering {
                                return nix::ifaddrs::getifaddrs().expect("getifaddrs").any(|a| {
                                    a.interface_name == host.ifname
                                        && a.address
                                            .as_ref()
                                            .and_then(|a| a.as_sockaddr_in())
                                            .is_some_and(|a| a.ip() == vip)
                                });
                            }
                        }
                    })
                });
                // ARP requests for the VIP every 100 µs from the client's address: the client's
                // kernel takes the first reply for its unresolved entry and sends the SYN at once.
                inner.spawn(|| {
                    let (ifname, ip, resolving) = (&client_if, c.client.ip, &resolving);
                    c.client.ns.run_in(move || {
                        let sock = vip_tests::arp::ArpSocket::open(ifname).expect("ARP socket");
                        while resolving.load(Ordering::Relaxed) {
                            let _ = sock.send_request(ip, vip);
                            std::thread::sleep(Duration::from_micros(100));
                        }
                    });
                });
                let connect = inner.spawn(|| {
                    // However this thread ends, the ARP requests stop with it.
                    let _stop = ClearOnDrop(&resolving);
                    c.client.ns.run_in(move || {
                        let deadline = Instant::now() + Duration::from_secs(10);
                        loop {
                            assert!(Instant::now() < deadline, "no connection to the VIP");
                            let Ok(mut s) = std::net::TcpStream::connect_timeout(
                                &(vip, PORT).into(),
                                Duration::from_secs(3),
                            ) else {
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            };
                            let retrans = tcp_total_retrans(&s);
                            let mut name = String::new();
                            use std::io::Read as _;
                            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                            let _ = s.read_to_string(&mut name);
                            return (name, retrans);
                        }
                    })
                });
                // The client is already resolving the VIP (nobody answers) when the key moves.
                std::thread::sleep(Duration::from_millis(30));
                acquire(&c, &c.nodes[to].name, leases[to]);
                let (name, retrans) = connect.join().expect("the connecting thread");
                (name, retrans, order.join().expect("the watching thread"))
            });
            assert_eq!(answered_by, c.nodes[to].name, "trial {trial}");
            assert!(
                address_first,
                "trial {trial}: {} answered before its kernel had the address",
                c.nodes[to].name
            );
            retransmitted.push(retrans);
            eventually(Duration::from_secs(5), "the new holder answers", || {
                answering(&c) == vec![mac(&c, to)]
            });
        }
        assert!(
            retransmitted.iter().all(|r| *r == 0),
            "SYNs retransmitted per connection to the new primary: {retransmitted:?}"
        );
    });
}

/// Clears its flag when dropped, also while unwinding from a failed assertion.
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// `tcpi_total_retrans` of a connected socket: segments (here: SYNs) sent again.
fn tcp_total_retrans(stream: &std::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd as _;
    // SAFETY: tcp_info is plain data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>())
        .expect("tcp_info fits a socklen_t");
    // SAFETY: a valid socket, and `info`/`len` describe a writable buffer of that size.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &raw mut len,
        )
    };
    assert_eq!(rc, 0, "getsockopt(TCP_INFO)");
    info.tcpi_total_retrans
}

/// A second agent on an interface already served in this network namespace refuses to start (it
/// would adopt the same pins and forget the first one's VIPs), and the first keeps answering.
#[test]
fn a_second_agent_on_the_same_interface_refuses_to_start() {
    if !require_privileges("a_second_agent_on_the_same_interface_refuses_to_start") {
        return;
    }
    let c = cluster(47, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    let config = c.nodes[0].config.to_str().expect("utf-8").to_owned();
    let bin = vip_tests::agent_binary();
    let out = c.nodes[0]
        .host
        .ns
        .exec(bin.to_str().expect("utf-8"), &["--config", &config]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already served by another vip-agent"),
        "the error names the problem: {err}"
    );
    assert_eq!(answering(&c), vec![mac(&c, 0)], "the first still answers");
    assert!(has_vip_address(&c, 0), "and keeps its address");
}

/// A VIP removed from the configuration while its agent was down (SIGKILL left its address on the
/// interface): the restarted agent removes the address before it forgets the VIP, so the kernel
/// does not answer for it forever.
#[test]
fn a_vip_removed_from_the_config_while_the_agent_was_down_loses_its_address() {
    if !require_privileges(
        "a_vip_removed_from_the_config_while_the_agent_was_down_loses_its_address",
    ) {
        return;
    }
    let mut c = cluster(48, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    assert!(has_vip_address(&c, 0));
    c.kill_agent(0);
    assert!(has_vip_address(&c, 0), "SIGKILL leaves the address");
    let config = c.nodes[0].config.clone();
    let old = c.vip.to_string();
    let moved = {
        let mut o = c.vip.octets();
        o[3] = 101;
        std::net::Ipv4Addr::from(o).to_string()
    };
    let text = std::fs::read_to_string(&config).expect("config");
    assert!(text.contains(&format!("ip: {old}\n")), "{text}");
    std::fs::write(
        &config,
        text.replace(&format!("ip: {old}\n"), &format!("ip: {moved}\n")),
    )
    .expect("write");
    c.start_agent(0);
    eventually(
        Duration::from_secs(10),
        "the old VIP's address is removed",
        || !has_vip_address(&c, 0),
    );
    assert!(
        c.log(0)
            .contains("no longer configured: removing its address"),
        "{}",
        c.log(0)
    );
    // Nobody answers for the old VIP: its entry is gone and the kernel has no address for it.
    assert_eq!(answering(&c), Vec::<[u8; 6]>::new());
}

/// The distinct MACs among `answers` (one ARP probe can see the same node twice).
fn distinct(answers: &[[u8; 6]]) -> Vec<[u8; 6]> {
    let mut macs = answers.to_vec();
    macs.sort_unstable();
    macs.dedup();
    macs
}

/// Probe until `until` holds or `limit` passes; every probe must see at most one node. Returns
/// the elapsed time at which `until` held.
fn never_two_until(
    c: &Cluster,
    limit: Duration,
    what: &str,
    until: impl Fn(&[[u8; 6]]) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut probes = 0;
    loop {
        let answers = distinct(&answering(c));
        probes += 1;
        assert!(
            answers.len() <= 1,
            "probe {probes} ({:?} after the change): two nodes answer {answers:?}",
            start.elapsed()
        );
        if until(&answers) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
    }
}

/// Issue 14: the holder's agent dies (SIGKILL: its pinned program keeps answering until its
/// deadline) and the key moves on. The new holder waits for the dead agent's fence record to
/// expire; its own deadline was bounded by that record's lease, so no probe is ever answered by
/// both, and the blackout is bounded by the record TTL.
#[test]
fn a_dead_old_agent_costs_a_bounded_blackout_never_a_double_answer() {
    if !require_privileges("a_dead_old_agent_costs_a_bounded_blackout_never_a_double_answer") {
        return;
    }
    for (subnet, signal) in [(49, Signal::SIGKILL), (50, Signal::SIGSTOP)] {
        let mut c = cluster(subnet, "fence-record-ttl: 3s\n");
        let lease = grant(&c, 30);
        acquire(&c, "node1", lease);
        eventually(Duration::from_secs(5), "node1 answers", || {
            answering(&c) == vec![mac(&c, 0)]
        });
        if signal == Signal::SIGKILL {
            c.kill_agent(0);
        } else {
            c.agent(0).signal(Signal::SIGSTOP);
        }
        // Patroni's switchover on behalf of the other node (the old agent cannot see it).
        release(&c, "node1");
        let l2 = grant(&c, 30);
        acquire(&c, "node2", l2);
        let took = never_two_until(&c, Duration::from_secs(15), "node2 answers", |a| {
            a == [mac(&c, 1)]
        });
        // The record TTL (3 s) plus the old lease's last keepalive period and a probe: a
        // documented bound, not a measurement.
        assert!(
            took < Duration::from_secs(8),
            "{signal:?}: node2 waited {took:?}"
        );
        assert!(
            c.log(1).contains("every other agent has fenced"),
            "{}",
            c.log(1)
        );
        if signal == Signal::SIGSTOP {
            c.agent(0).signal(Signal::SIGCONT);
            // Woken, the old agent sees the key moved and stays silent.
            let woken = Instant::now();
            while woken.elapsed() < Duration::from_secs(2) {
                assert_eq!(distinct(&answering(&c)), vec![mac(&c, 1)], "after SIGCONT");
            }
        }
    }
}

/// A plain switchover: the old holder fences and records it, and the new one answers after that,
/// never together.
#[test]
fn a_switchover_waits_for_the_old_holders_fence_record() {
    if !require_privileges("a_switchover_waits_for_the_old_holders_fence_record") {
        return;
    }
    let c = cluster(51, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    for round in 0..3 {
        let (from, to, i) = if round % 2 == 0 {
            ("node1", "node2", 1)
        } else {
            ("node2", "node1", 0)
        };
        release(&c, from);
        let l = grant(&c, 30);
        acquire(&c, to, l);
        never_two_until(&c, Duration::from_secs(5), "the new holder answers", |a| {
            a == [mac(&c, i)]
        });
    }
}

/// The mixed case of a rolling upgrade: an agent without the handshake writes no record, so the
/// new agent never waits for it, and failovers work both ways.
#[test]
fn an_agent_without_the_handshake_never_blocks_a_failover() {
    if !require_privileges("an_agent_without_the_handshake_never_blocks_a_failover") {
        return;
    }
    let mut c = Cluster::new(52, 2, &vip_tests::agent_binary(), "");
    let config = c.nodes[0].config.clone();
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, format!("{text}fence-handshake: false\n")).expect("write");
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    for (from, to, i) in [
        (None, "node1", 0),
        (Some("node1"), "node2", 1),
        (Some("node2"), "node1", 0),
    ] {
        if let Some(from) = from {
            release(&c, from);
        }
        let l = grant(&c, 30);
        acquire(&c, to, l);
        eventually(Duration::from_secs(5), "the new holder answers", || {
            answering(&c) == vec![mac(&c, i)]
        });
    }
    let records = c.etcd(async |e| {
        e.get(
            "/vip-agent/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get")
        .kvs()
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect::<Vec<_>>()
    });
    assert_eq!(
        records,
        vec![format!("/vip-agent{KEY}/node2")],
        "only the new agent keeps a record"
    );
}

/// An interface deleted under the agent takes its program, pins and addresses with it: the agent
/// fences, says why and exits non-zero, so that systemd's `Restart=` attaches it to the interface
/// that exists then (issue 16, item 7). Before, it kept running and `/primary` kept saying 200.
#[test]
fn a_deleted_interface_ends_the_agent_with_an_error() {
    if !require_privileges("a_deleted_interface_ends_the_agent_with_an_error") {
        return;
    }
    let mut c = cluster(205, "");
    let lease = grant(&c, 30);
    acquire(&c, "node1", lease);
    eventually(Duration::from_secs(5), "node1 answers", || {
        answering(&c) == vec![mac(&c, 0)]
    });
    let ifname = c.nodes[0].host.ifname.clone();
    c.nodes[0].host.ns.ip(&["link", "del", &ifname]);
    let status = c
        .agent(0)
        .wait_timeout(Duration::from_secs(10))
        .expect("the agent exits after its interface is deleted");
    assert!(!status.success(), "exited with {status}");
    let log = c.log(0);
    assert!(
        log.contains(&format!("interface {ifname} was deleted")),
        "{log}"
    );
}
