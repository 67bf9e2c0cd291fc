//! An IPv6 VIP end to end: the real vip-agent binary on two nodes, real etcd, and a client that
//! resolves the VIP with Neighbor Discovery, both through a raw-socket prober and through its own
//! kernel (ping, neighbour table). Subnet 45; the VIP is `fd77:45::100/64`.

use std::{
    net::{IpAddr, Ipv6Addr},
    time::{Duration, Instant},
};

use vip_common::frame::{NA_FLAG_OVERRIDE, NA_FLAG_ROUTER, NA_FLAG_SOLICITED};
use vip_tests::{
    cluster::{self, Cluster},
    eventually,
    ndp::{NaSeen, NdpSocket},
    require_privileges,
};

const KEY: &str = "/service/demo/leader";
const SUBNET: u8 = 45;
const PROBE: Duration = Duration::from_millis(150);

fn vip() -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, u16::from(SUBNET), 0, 0, 0, 0, 0, 0x100)
}

fn client_ip() -> Ipv6Addr {
    Ipv6Addr::new(0xfd77, u16::from(SUBNET), 0, 0, 0, 0, 0, 9)
}

/// The cluster with every node's agent configured for the IPv6 VIP instead of the IPv4 one, and
/// IPv6 addresses of the segment's prefix on the nodes and the client.
fn cluster() -> Cluster {
    let mut c = Cluster::new(SUBNET, 2, &vip_tests::agent_binary(), "");
    for (i, node) in c.nodes.iter().enumerate() {
        let config = std::fs::read_to_string(&node.config).expect("read agent config");
        let v4 = format!("ip: {}\nnetmask: 24\n", c.vip);
        assert!(config.contains(&v4), "config layout: {config}");
        std::fs::write(
            &node.config,
            config.replace(&v4, &format!("ip: \"{}\"\nnetmask: 64\n", vip())),
        )
        .expect("write agent config");
        let own = Ipv6Addr::new(0xfd77, u16::from(SUBNET), 0, 0, 0, 0, 0, 0x11 + i as u16);
        node.host.ns.ip(&[
            "addr",
            "add",
            &format!("{own}/64"),
            "dev",
            &node.host.ifname,
            "nodad",
        ]);
    }
    c.client.ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", client_ip()),
        "dev",
        &c.client.ifname,
        "nodad",
    ]);
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    c
}

/// The advertisements that answer one solicitation for the VIP from the client.
fn solicit(c: &Cluster) -> Vec<NaSeen> {
    let ifname = &c.client.ifname;
    c.client.ns.run_in(|| {
        NdpSocket::open(ifname)
            .expect("NDP socket")
            .probe(client_ip(), vip(), PROBE)
            .expect("probe")
    })
}

fn answering(c: &Cluster) -> Vec<[u8; 6]> {
    solicit(c).iter().map(|s| s.eth_src).collect()
}

fn has_vip_address(c: &Cluster, i: usize) -> bool {
    let node = &c.nodes[i].host;
    node.ns
        .ip(&["-6", "-o", "addr", "show", "dev", &node.ifname])
        .contains(&format!(" {}/64 ", vip()))
}

/// Node `i`'s counters for the IPv6 VIP, from the pinned maps.
fn xdp_stats(c: &Cluster, i: usize) -> vip_common::VipStats {
    vip_agent::dataplane::inspect(&c.pins, &c.nodes[i].host.ifname)
        .expect("read pinned maps")
        .expect("pinned")
        .into_iter()
        .find(|s| s.vip == IpAddr::V6(vip()))
        .expect("the IPv6 VIP is registered")
        .stats
}

fn acquire(c: &Cluster, name: &str) {
    let lease = c.etcd(async |e| e.lease_grant(30, None).await.expect("lease").id());
    let revision = c.etcd(async |e| cluster::acquire(e, KEY, name, lease).await);
    assert!(revision.is_some(), "{name} could not acquire the key");
}

fn release(c: &Cluster, name: &str) {
    c.etcd(async |e| cluster::release(e, KEY, name).await);
}

#[test]
fn ipv6_vip_is_answered_by_the_key_holder_only_and_moves_with_an_unsolicited_advertisement() {
    if !require_privileges(
        "ipv6_vip_is_answered_by_the_key_holder_only_and_moves_with_an_unsolicited_advertisement",
    ) {
        return;
    }
    let c = cluster();
    let (mac1, mac2) = (c.nodes[0].host.mac, c.nodes[1].host.mac);
    assert!(
        answering(&c).is_empty(),
        "fenced until the key names a node"
    );

    acquire(&c, "node1");
    eventually(
        Duration::from_secs(5),
        "node1 answers solicitations",
        || answering(&c) == vec![mac1],
    );
    // The advertisement itself, field by field, as the client received it.
    let na = solicit(&c);
    assert_eq!(na.len(), 1, "{na:?}");
    let na = na[0];
    assert_eq!(na.eth_dst, c.client.mac, "unicast back to the solicitor");
    assert_eq!(na.na.src, vip().octets());
    assert_eq!(na.na.dst, client_ip().octets());
    assert_eq!(na.na.hop_limit, 255);
    assert!(na.na.checksum_ok, "checksum");
    assert_eq!(
        na.na.flags & (NA_FLAG_ROUTER | NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE),
        NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE
    );
    assert_eq!((na.na.option_type, na.na.option_mac), (2, mac1));
    eventually(Duration::from_secs(5), "node1 carries the address", || {
        has_vip_address(&c, 0)
    });
    assert!(!has_vip_address(&c, 1), "the standby has no VIP address");
    // It was the XDP program that answered (XDP_TX), not node1's kernel: the solicitations are
    // counted in the VIP's entry and never reached the kernel.
    let replied = xdp_stats(&c, 0).replied;
    assert!(replied >= 2, "XDP answered the solicitations: {replied}");
    // The client's own kernel resolves the VIP through our advertisement and reaches node1.
    assert!(
        c.client.ns.ping(&vip().to_string(), 2) >= 1,
        "ping6 to the VIP"
    );
    assert_eq!(
        c.client.ns.neighbour(&c.client.ifname, &vip().to_string()),
        Some(mac1)
    );

    // Switchover. Listen on the client for node2's unsolicited advertisement while it happens.
    let ifname = c.client.ifname.clone();
    let listener = {
        let sock = c
            .client
            .ns
            .run_in(|| NdpSocket::open(&ifname).expect("NDP socket"));
        std::thread::spawn(move || {
            sock.recv_advertisements_until(Instant::now() + Duration::from_secs(4))
                .expect("capture")
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    release(&c, "node1");
    acquire(&c, "node2");
    eventually(
        Duration::from_secs(5),
        "node2 answers, node1 is silent",
        || answering(&c) == vec![mac2],
    );
    let captured = listener.join().expect("listener");
    let unsolicited: Vec<&NaSeen> = captured
        .iter()
        .filter(|s| {
            s.eth_src == mac2
                && s.eth_dst == [0x33, 0x33, 0, 0, 0, 1]
                && s.na.dst == "ff02::1".parse::<Ipv6Addr>().expect("ff02::1").octets()
                && s.na.target == vip().octets()
        })
        .collect();
    assert!(
        !unsolicited.is_empty(),
        "node2 announced itself to all nodes: {captured:?}"
    );
    for s in &unsolicited {
        assert_eq!(s.na.flags, NA_FLAG_OVERRIDE, "unsolicited, override");
        assert_eq!((s.na.option_type, s.na.option_mac), (2, mac2));
        assert!(s.na.checksum_ok);
    }
    assert!(
        captured
            .iter()
            .all(|s| s.eth_src != mac1 || s.na.target != vip().octets()),
        "node1 advertised the VIP after losing the key: {captured:?}"
    );
    // The client's kernel took the override: its neighbour entry moved without a new solicitation
    // having to fail first.
    eventually(
        Duration::from_secs(5),
        "the client's neighbour entry moves to node2",
        || c.client.ns.neighbour(&c.client.ifname, &vip().to_string()) == Some(mac2),
    );
    assert!(
        c.client.ns.ping(&vip().to_string(), 2) >= 1,
        "ping6 after the switchover"
    );
    eventually(Duration::from_secs(5), "node1 dropped the address", || {
        !has_vip_address(&c, 0)
    });

    // The VIP added by hand on the fenced node: still silent there, and the agent removes it.
    let node1 = &c.nodes[0].host;
    node1.ns.ip(&[
        "addr",
        "add",
        &format!("{}/64", vip()),
        "dev",
        &node1.ifname,
        "nodad",
    ]);
    assert_eq!(
        answering(&c),
        vec![mac2],
        "a stale address on node1 must not answer"
    );
    eventually(
        Duration::from_secs(5),
        "node1's agent removes the stray address",
        || !has_vip_address(&c, 0),
    );

    // Nobody holds the key: nobody answers, and IPv6 to the VIP reaches no one.
    release(&c, "node2");
    eventually(Duration::from_secs(5), "silence after the delete", || {
        answering(&c).is_empty()
    });
}
