//! The `tc` attach mode end to end (issue 15.3), in network namespaces these tests create: the TC
//! ingress program (tcx) on a veth answers a real ARP and Neighbor Solicitation client and the
//! client kernel's own resolution while the VIP is held, and drops ARP, NS and traffic for the VIP
//! while it is fenced, with the address configured. `auto` picks it on veth; a new loader adopts
//! it; `detach` takes it off. Subnets 10.77.191.0/24 and 2001:db8:77:191::/64.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use vip_agent::{
    clock::monotonic_ns,
    dataplane::{self, AttachMode, Fenced, Origin},
};
use vip_tests::{
    NetNs, PinRoot, arp::ArpSocket, ndp::NdpSocket, open_dataplane as open, require_privileges,
};

const NET: u8 = 191;

/// client <-veth-> node: 10.77.191.1 and .9, 2001:db8:77:191::1 and ::9, VIPs .100 and ::100.
struct Pair {
    node: NetNs,
    client: NetNs,
    node_if: String,
    client_if: String,
    client_ip: Ipv4Addr,
    client6: Ipv6Addr,
    vip: Ipv4Addr,
    vip6: Ipv6Addr,
}

impl Pair {
    fn new() -> Self {
        let node = NetNs::new("node");
        let client = NetNs::new("cli");
        let (node_if, client_if) = vip_tests::veth_pair(&node, &client);
        node.add_addr(&node_if, &format!("10.77.{NET}.1/24"));
        client.add_addr(&client_if, &format!("10.77.{NET}.9/24"));
        node.ip(&[
            "addr",
            "add",
            &format!("2001:db8:77:{NET}::1/64"),
            "dev",
            &node_if,
            "nodad",
        ]);
        client.ip(&[
            "addr",
            "add",
            &format!("2001:db8:77:{NET}::9/64"),
            "dev",
            &client_if,
            "nodad",
        ]);
        Self {
            node,
            client,
            node_if,
            client_if,
            client_ip: Ipv4Addr::new(10, 77, NET, 9),
            client6: format!("2001:db8:77:{NET}::9").parse().expect("address"),
            vip: Ipv4Addr::new(10, 77, NET, 100),
            vip6: format!("2001:db8:77:{NET}::100").parse().expect("address"),
        }
    }

    fn node_mac(&self) -> [u8; 6] {
        self.node.mac(&self.node_if)
    }

    /// The MACs that answered one ARP probe for the VIP.
    fn arp_probe(&self) -> Vec<[u8; 6]> {
        let (ifname, src, vip) = (&self.client_if, self.client_ip, self.vip);
        self.client.run_in(|| {
            ArpSocket::open(ifname)
                .expect("ARP socket")
                .probe(src, vip, Duration::from_millis(300))
                .expect("ARP probe")
                .iter()
                .map(|r| r.arp.sha)
                .collect()
        })
    }

    /// The link-layer addresses advertised in answer to one Neighbor Solicitation for the VIP.
    fn ns_probe(&self) -> Vec<[u8; 6]> {
        let (ifname, src, vip) = (&self.client_if, self.client6, self.vip6);
        self.client.run_in(|| {
            NdpSocket::open(ifname)
                .expect("NDP socket")
                .probe(src, vip, Duration::from_millis(300))
                .expect("NS probe")
                .iter()
                .map(|s| s.eth_src)
                .collect()
        })
    }

    /// Both VIPs on the node's interface, as a stale or current primary would have them.
    fn configure_vips(&self) {
        let v4 = format!("{}/24", self.vip);
        let v6 = format!("{}/64", self.vip6);
        self.node.ip(&["addr", "add", &v4, "dev", &self.node_if]);
        self.node
            .ip(&["addr", "add", &v6, "dev", &self.node_if, "nodad"]);
    }
}

#[test]
fn tc_mode_answers_arp_and_ns_then_fenced_drops_them_and_vip_traffic() {
    if !require_privileges("tc_mode_answers_arp_and_ns_then_fenced_drops_them_and_vip_traffic") {
        return;
    }
    let p = Pair::new();
    let pins = PinRoot::new();
    // `auto` on a veth: the TC ingress program, not generic XDP.
    let mut dp = open(&p.node, &p.node_if, AttachMode::Auto, &pins.0);
    assert_eq!(dp.attachment().to_string(), "tc");
    assert_eq!(dp.origin(), Origin::Attached);
    let tc_id = p
        .node
        .tcx_ingress_prog_id(&p.node_if)
        .expect("a program in the tcx ingress chain");
    let (vip, vip6) = (IpAddr::V4(p.vip), IpAddr::V6(p.vip6));
    for v in [vip, vip6] {
        dp.register(v).expect("register");
        dp.answer_until(v, monotonic_ns() + 120_000_000_000)
            .expect("answer");
    }
    p.configure_vips();

    // Answering: exactly one answer each (ours: the kernel never sees the request), and the
    // client's kernel resolves both VIPs through them.
    assert_eq!(p.arp_probe(), vec![p.node_mac()], "one ARP reply, ours");
    assert_eq!(p.ns_probe(), vec![p.node_mac()], "one NA, ours");
    p.client.flush_neighbours(&p.client_if);
    assert_eq!(p.client.ping(&p.vip.to_string(), 2), 2);
    assert_eq!(p.client.ping(&p.vip6.to_string(), 2), 2);
    assert_eq!(
        p.client.neighbour(&p.client_if, &p.vip.to_string()),
        Some(p.node_mac())
    );
    let s4 = dp.stats(vip).expect("stats");
    let s6 = dp.stats(vip6).expect("stats");
    assert!(s4.replied >= 2, "prober + client kernel: {s4:?}");
    assert!(s6.replied >= 2, "prober + client kernel: {s6:?}");
    assert_eq!(
        s4.requests_dropped + s4.ip_dropped + s6.requests_dropped + s6.ip_dropped,
        0
    );

    // Fenced, addresses still configured: nothing answers, and traffic to the VIPs dies at the
    // program.
    for v in [vip, vip6] {
        assert_eq!(dp.fence(v).expect("fence"), Fenced::Written);
    }
    for _ in 0..3 {
        assert!(p.arp_probe().is_empty(), "a fenced node answers no ARP");
        assert!(p.ns_probe().is_empty(), "a fenced node answers no NS");
    }
    let mac = p.node_mac();
    p.client
        .static_neighbour(&p.client_if, &p.vip.to_string(), &mac);
    p.client
        .static_neighbour(&p.client_if, &p.vip6.to_string(), &mac);
    assert_eq!(p.client.ping(&p.vip.to_string(), 4), 0, "no echo reply");
    assert_eq!(p.client.ping(&p.vip6.to_string(), 4), 0, "no echo reply");
    let f4 = dp.stats(vip).expect("stats");
    let f6 = dp.stats(vip6).expect("stats");
    assert_eq!((f4.requests_dropped, f4.ip_dropped), (3, 4), "{f4:?}");
    assert_eq!((f6.requests_dropped, f6.ip_dropped), (3, 4), "{f6:?}");
    assert_eq!((f4.replied, f6.replied), (s4.replied, s6.replied));
    drop(dp);

    // A new loader adopts the tcx link (no second attach); detach takes it off, and the kernel
    // answers for the configured address again.
    let mut dp = open(&p.node, &p.node_if, AttachMode::Auto, &pins.0);
    assert_eq!(dp.origin(), Origin::Adopted);
    assert_eq!(dp.attachment().to_string(), "tc");
    assert_eq!(p.node.tcx_ingress_prog_id(&p.node_if), Some(tc_id));
    assert_eq!(
        dp.state(vip)
            .expect("lookup")
            .expect("registered")
            .deadline_ns,
        0
    );
    dp.answer_until(vip, monotonic_ns() + 120_000_000_000)
        .expect("answer");
    assert_eq!(
        p.arp_probe(),
        vec![p.node_mac()],
        "the adopted program answers"
    );
    drop(dp);
    assert!(dataplane::detach(&pins.0, &p.node_if).expect("detach"));
    assert_eq!(p.node.tcx_ingress_prog_id(&p.node_if), None, "detached");
    assert_eq!(
        p.arp_probe(),
        vec![p.node_mac()],
        "the kernel answers again"
    );
}
