//! Tier 2: the data plane end to end, in network namespaces these tests create: real veth, real
//! XDP (generic and native), real ARP from a raw-socket prober and from the kernel, real ping.

use std::{net::Ipv4Addr, time::Duration};

use vip_agent::{
    clock::monotonic_ns,
    dataplane::{self, AttachMode, AttachOptions, Dataplane, Origin},
};
use vip_tests::{
    Bridge, NetNs, PinRoot, arp::ArpSocket, open_dataplane as open, require_privileges, unique_name,
};

/// Probe `vip` from `ifname` in `ns` once; return the MACs that answered.
fn probe(ns: &NetNs, ifname: &str, src: Ipv4Addr, vip: Ipv4Addr) -> Vec<[u8; 6]> {
    ns.run_in(|| {
        let sock = ArpSocket::open(ifname).expect("ARP socket");
        let replies = sock
            .probe(src, vip, Duration::from_millis(300))
            .expect("probe");
        replies.iter().map(|r| r.arp.sha).collect()
    })
}

/// client <-veth-> node, node has 10.77.<net>.1/24, client .9/24.
struct Pair {
    node: NetNs,
    client: NetNs,
    node_if: String,
    client_if: String,
    node_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
    vip: Ipv4Addr,
}

impl Pair {
    fn new(net: u8) -> Self {
        let node = NetNs::new("node");
        let client = NetNs::new("cli");
        let (node_if, client_if) = vip_tests::veth_pair(&node, &client);
        node.add_addr(&node_if, &format!("10.77.{net}.1/24"));
        client.add_addr(&client_if, &format!("10.77.{net}.9/24"));
        Self {
            node,
            client,
            node_if,
            client_if,
            node_ip: Ipv4Addr::new(10, 77, net, 1),
            client_ip: Ipv4Addr::new(10, 77, net, 9),
            vip: Ipv4Addr::new(10, 77, net, 100),
        }
    }

    fn node_mac(&self) -> [u8; 6] {
        self.node.mac(&self.node_if)
    }

    fn probe_vip(&self) -> Vec<[u8; 6]> {
        probe(&self.client, &self.client_if, self.client_ip, self.vip)
    }

    /// Configure the VIP on the node's interface, as a stale or current primary would have it.
    fn configure_vip(&self) {
        self.node.ip(&[
            "addr",
            "add",
            &format!("{}/24", self.vip),
            "dev",
            &self.node_if,
        ]);
    }
}

fn far_deadline() -> u64 {
    monotonic_ns() + 120_000_000_000
}

#[test]
fn answering_node_replies_and_client_learns_its_mac() {
    if !require_privileges("answering_node_replies_and_client_learns_its_mac") {
        return;
    }
    let p = Pair::new(11);
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &p.node_if, AttachMode::Generic, &pins.0);
    dp.register(p.vip).expect("register");
    dp.answer_until(p.vip, far_deadline()).expect("answer");
    p.configure_vip();

    let replies = p.probe_vip();
    assert_eq!(
        replies,
        vec![p.node_mac()],
        "exactly one reply, from the node's MAC"
    );

    // The client's kernel resolves the VIP through our reply, and ping reaches the node.
    p.client.flush_neighbours(&p.client_if);
    assert_eq!(p.client.ping(&p.vip.to_string(), 3), 3);
    assert_eq!(
        p.client.neighbour(&p.client_if, &p.vip.to_string()),
        Some(p.node_mac())
    );
    let stats = dp.stats(p.vip).expect("stats");
    assert!(stats.arp_replied >= 2, "prober + client kernel: {stats:?}");
    assert_eq!(stats.arp_dropped + stats.ipv4_dropped, 0, "{stats:?}");
}

#[test]
fn fenced_node_is_silent_even_with_the_vip_configured() {
    if !require_privileges("fenced_node_is_silent_even_with_the_vip_configured") {
        return;
    }
    let p = Pair::new(12);
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &p.node_if, AttachMode::Generic, &pins.0);
    dp.register(p.vip).expect("register");
    dp.fence(p.vip).expect("fence");
    // Without the program the kernel would answer ARP and ping for this address.
    p.configure_vip();

    for _ in 0..4 {
        assert!(
            p.probe_vip().is_empty(),
            "a fenced node must not answer ARP for the VIP"
        );
    }
    // Point the client straight at the node's MAC: the echo requests reach the node, and die there.
    p.client
        .static_neighbour(&p.client_if, &p.vip.to_string(), &p.node_mac());
    assert_eq!(
        p.client.ping(&p.vip.to_string(), 5),
        0,
        "no echo reply from a fenced VIP"
    );

    let stats = dp.stats(p.vip).expect("stats");
    assert_eq!(stats.arp_dropped, 4, "one drop per probe: {stats:?}");
    assert_eq!(
        stats.ipv4_dropped, 5,
        "one drop per echo request: {stats:?}"
    );
    assert_eq!(stats.arp_replied, 0);
}

#[test]
fn deadline_silences_the_node_without_any_action() {
    if !require_privileges("deadline_silences_the_node_without_any_action") {
        return;
    }
    let p = Pair::new(13);
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &p.node_if, AttachMode::Generic, &pins.0);
    dp.register(p.vip).expect("register");
    dp.answer_until(p.vip, monotonic_ns() + 200_000_000)
        .expect("answer");
    assert_eq!(
        p.probe_vip(),
        vec![p.node_mac()],
        "answering before the deadline"
    );
    // The probe waits 300 ms for replies, so the deadline has passed now; nobody touches the map.
    std::thread::sleep(Duration::from_millis(50));
    assert!(p.probe_vip().is_empty(), "silent after the deadline");
    assert_eq!(dp.stats(p.vip).expect("stats").arp_dropped, 1);
}

#[test]
fn traffic_for_the_node_itself_is_unaffected() {
    if !require_privileges("traffic_for_the_node_itself_is_unaffected") {
        return;
    }
    let p = Pair::new(14);
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &p.node_if, AttachMode::Generic, &pins.0);
    dp.register(p.vip).expect("register");
    for answering in [true, false] {
        if answering {
            dp.answer_until(p.vip, far_deadline()).expect("answer");
        } else {
            dp.fence(p.vip).expect("fence");
        }
        let replies = probe(&p.client, &p.client_if, p.client_ip, p.node_ip);
        assert_eq!(
            replies,
            vec![p.node_mac()],
            "the kernel answers ARP for the node's own address"
        );
        p.client.flush_neighbours(&p.client_if);
        assert_eq!(
            p.client.ping(&p.node_ip.to_string(), 3),
            3,
            "ping to the node's own address"
        );
        assert_eq!(
            p.node.ping(&p.client_ip.to_string(), 2),
            2,
            "the node reaches the client"
        );
    }
    let stats = dp.stats(p.vip).expect("stats");
    assert_eq!(
        stats.arp_dropped + stats.ipv4_dropped + stats.arp_replied,
        0,
        "{stats:?}"
    );
}

#[test]
fn native_mode_answers_when_the_peer_runs_xdp() {
    if !require_privileges("native_mode_answers_when_the_peer_runs_xdp") {
        return;
    }
    let p = Pair::new(15);
    let pins = PinRoot::new();
    // veth delivers native XDP_TX frames only when the peer has an XDP program: give the client
    // side one (our own program with no VIPs, which passes everything).
    let peer = open(&p.client, &p.client_if, AttachMode::Native, &pins.0);
    let mut dp = open(&p.node, &p.node_if, AttachMode::Native, &pins.0);
    assert_eq!(dp.attachment().to_string(), "native");
    assert_eq!(peer.attachment().to_string(), "native");
    dp.register(p.vip).expect("register");
    dp.answer_until(p.vip, far_deadline()).expect("answer");
    assert_eq!(p.probe_vip(), vec![p.node_mac()]);
    dp.fence(p.vip).expect("fence");
    assert!(p.probe_vip().is_empty());
    // Non-VIP traffic through two native programs still flows.
    assert_eq!(p.client.ping(&p.node_ip.to_string(), 2), 2);
}

#[test]
fn pinned_program_outlives_a_killed_agent_and_is_adopted_then_detached() {
    if !require_privileges("pinned_program_outlives_a_killed_agent_and_is_adopted_then_detached") {
        return;
    }
    let p = Pair::new(16);
    let pins = PinRoot::new();
    let dir = std::env::temp_dir().join(unique_name("vipt"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("vip.yml");
    // The real agent, with an etcd that does not exist: it attaches, registers the VIP fenced, and
    // keeps retrying etcd, never answering.
    std::fs::write(
        &config,
        format!(
            "ip: {}\nnetmask: 24\ninterface: {}\ntrigger-key: /service/t/leader\ntrigger-value: n1\n\
             dcs-endpoints: http://127.0.0.1:9\npin-path: {}\n",
            p.vip,
            p.node_if,
            pins.0.display()
        ),
    )
    .expect("write config");
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    let agent_bin = vip_tests::agent_binary();
    let mut agent = p.node.spawn(
        agent_bin.to_str().expect("utf-8 path"),
        &["--config", config.to_str().expect("utf-8")],
        Some(&log),
    );
    let pin_dir = pins.0.join(&p.node_if);
    wait_for(|| pin_dir.join("link").exists(), "the agent pins its link");
    p.configure_vip();

    agent.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(
        agent.wait_timeout(Duration::from_secs(5)).is_some(),
        "agent gone"
    );
    assert!(
        p.node.xdp_prog_id(&p.node_if).is_some(),
        "program still attached after SIGKILL"
    );
    assert!(p.probe_vip().is_empty(), "still fenced with no agent alive");

    // A new loader adopts the program (no second attach) and sees the dead agent's state.
    let mut dp = open(&p.node, &p.node_if, AttachMode::Auto, &pins.0);
    assert_eq!(dp.origin(), Origin::Adopted);
    let state = dp
        .state(p.vip)
        .expect("lookup")
        .expect("VIP registered by the agent");
    assert_eq!(state.deadline_ns, 0, "fenced");
    assert_eq!(
        dp.stats(p.vip).expect("stats").arp_dropped,
        1,
        "the probe above was counted"
    );
    dp.answer_until(p.vip, far_deadline()).expect("answer");
    assert_eq!(p.probe_vip(), vec![p.node_mac()]);
    drop(dp);

    assert!(dataplane::detach(&pins.0, &p.node_if).expect("detach"));
    assert_eq!(p.node.xdp_prog_id(&p.node_if), None, "detached");
    assert!(!pin_dir.exists(), "pins removed");
    // With the program gone the kernel answers for the configured address again.
    assert_eq!(p.probe_vip(), vec![p.node_mac()]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn foreign_xdp_program_is_refused_not_replaced() {
    if !require_privileges("foreign_xdp_program_is_refused_not_replaced") {
        return;
    }
    let p = Pair::new(17);
    let (pins_a, pins_b) = (PinRoot::new(), PinRoot::new());
    let _first = open(&p.node, &p.node_if, AttachMode::Generic, &pins_a.0);
    let id = p.node.xdp_prog_id(&p.node_if).expect("attached");
    let opts = AttachOptions {
        interface: p.node_if.clone(),
        mode: AttachMode::Generic,
        pin_root: pins_b.0.clone(),
    };
    let err = p.node.run_in(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(Dataplane::open(&opts))
            .expect_err("a second loader with other pins must not take the interface")
    });
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("program id {id}")) && msg.contains("refusing to replace"),
        "{msg}"
    );
    assert_eq!(
        p.node.xdp_prog_id(&p.node_if),
        Some(id),
        "the first program is untouched"
    );
}

#[test]
fn two_nodes_on_a_bridge_never_both_answer_and_conflicts_are_counted() {
    if !require_privileges("two_nodes_on_a_bridge_never_both_answer_and_conflicts_are_counted") {
        return;
    }
    let switch = NetNs::new("sw");
    let bridge = Bridge::new(&switch);
    let (n1, n2, client, stranger) = (
        NetNs::new("n1"),
        NetNs::new("n2"),
        NetNs::new("cli"),
        NetNs::new("x"),
    );
    let if1 = bridge.plug(&switch, &n1);
    let if2 = bridge.plug(&switch, &n2);
    let ifc = bridge.plug(&switch, &client);
    let ifx = bridge.plug(&switch, &stranger);
    n1.add_addr(&if1, "10.77.18.1/24");
    n2.add_addr(&if2, "10.77.18.2/24");
    client.add_addr(&ifc, "10.77.18.9/24");
    stranger.add_addr(&ifx, "10.77.18.66/24");
    let vip = Ipv4Addr::new(10, 77, 18, 100);
    let client_ip = Ipv4Addr::new(10, 77, 18, 9);
    // Both nodes carry the address: only the data plane decides who answers.
    for (ns, ifname) in [(&n1, &if1), (&n2, &if2)] {
        ns.ip(&["addr", "add", "10.77.18.100/24", "dev", ifname]);
    }
    let pins = PinRoot::new();
    let mut dp1 = open(&n1, &if1, AttachMode::Generic, &pins.0);
    let mut dp2 = open(&n2, &if2, AttachMode::Generic, &pins.0);
    for dp in [&mut dp1, &mut dp2] {
        dp.register(vip).expect("register");
    }
    let (mac1, mac2) = (n1.mac(&if1), n2.mac(&if2));

    let mut both = 0;
    for round in 0..6 {
        let (on, off, expect) = if round % 2 == 0 {
            (&mut dp1, &mut dp2, mac1)
        } else {
            (&mut dp2, &mut dp1, mac2)
        };
        off.fence(vip).expect("fence");
        on.answer_until(vip, far_deadline()).expect("answer");
        let replies = probe(&client, &ifc, client_ip, vip);
        both += usize::from(replies.len() > 1);
        assert_eq!(
            replies,
            vec![expect],
            "round {round}: exactly the holder answers"
        );
    }
    assert_eq!(both, 0, "probes answered by both nodes");

    // A third host claims the VIP with gratuitous ARP (request + reply): the holder counts both.
    dp2.fence(vip).expect("fence");
    dp1.answer_until(vip, far_deadline()).expect("answer");
    let stranger_mac = stranger.mac(&ifx);
    stranger.run_in(|| {
        let sock = ArpSocket::open(&ifx).expect("socket");
        for frame in vip_agent::garp::announcement(stranger_mac, vip) {
            sock.send_frame(&frame).expect("send");
        }
    });
    wait_for(
        || dp1.stats(vip).is_ok_and(|s| s.conflicts == 2),
        "two conflict frames counted on the holder",
    );
    assert_eq!(
        dp2.stats(vip).expect("stats").conflicts,
        0,
        "a fenced node holds no claim"
    );
}

/// Poll `cond` every 10 ms for up to 10 s.
fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn gratuitous_arp_needs_no_ipv4_address_on_the_interface() {
    if !require_privileges("gratuitous_arp_needs_no_ipv4_address_on_the_interface") {
        return;
    }
    let node = NetNs::new("node");
    let client = NetNs::new("cli");
    let (node_if, client_if) = vip_tests::veth_pair(&node, &client);
    // No address at all on the node's interface.
    let vip = Ipv4Addr::new(10, 77, 19, 100);
    let node_mac = node.mac(&node_if);
    let seen = std::thread::scope(|s| {
        let capture = s.spawn(|| {
            client.run_in(|| {
                let sock = ArpSocket::open(&client_if).expect("socket");
                sock.recv_until(std::time::Instant::now() + Duration::from_millis(500))
                    .expect("capture")
            })
        });
        std::thread::sleep(Duration::from_millis(100));
        node.run_in(|| {
            let index = nix::net::if_::if_nametoindex(node_if.as_str()).expect("ifindex");
            let sender = vip_agent::garp::GarpSender::open(index).expect("raw socket");
            sender.announce(node_mac, vip).expect("announce");
        });
        capture.join().expect("capture")
    });
    let ops: Vec<u16> = seen
        .iter()
        .filter(|f| f.arp.spa == vip.octets() && f.arp.sha == node_mac)
        .map(|f| f.arp.op)
        .collect();
    assert_eq!(ops, vec![1, 2], "a request and a reply announcing the VIP");
}
