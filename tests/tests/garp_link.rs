//! The agent's gratuitous-ARP sender across an interface going down and up: the kernel leaves
//! ENETDOWN pending on a bound packet socket when its interface goes down, and the first send after
//! the link is back returns that stale error without sending. The sender must still put the
//! announcement on the wire once the link is up (found by the fault suite's interface down/up
//! fault: the first promotion after a link bounce sent no gratuitous ARP at all).

use std::time::{Duration, Instant};

use vip_agent::garp::GarpSender;
use vip_tests::{NetNs, arp::ArpSocket, require_privileges, veth_pair};

#[test]
fn garp_is_sent_after_the_interface_comes_back_up() {
    if !require_privileges("garp_is_sent_after_the_interface_comes_back_up") {
        return;
    }
    let (node, peer) = (NetNs::new("gnode"), NetNs::new("gpeer"));
    let (ifname, peer_if) = veth_pair(&node, &peer);
    let mac = node.mac(&ifname);
    let vip = std::net::Ipv4Addr::new(10, 79, 3, 100);
    let links: serde_json::Value =
        serde_json::from_str(&node.ip(&["-j", "link", "show", "dev", &ifname]))
            .expect("ip -j link output is JSON");
    let ifindex = links[0]["ifindex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .expect("an interface index");

    // The sender is opened (and bound) while the link is up, as the agent does at startup.
    let sender = node.run_in(|| GarpSender::open(ifindex).expect("open the GARP sender"));
    sender
        .announce(mac, vip)
        .expect("announce with the link up");

    node.ip(&["link", "set", "dev", &ifname, "down"]);
    assert!(
        sender.announce(mac, vip).is_err(),
        "an announcement on a down interface fails"
    );
    node.ip(&["link", "set", "dev", &ifname, "up"]);

    let heard = peer.run_in(|| {
        let sock = ArpSocket::open(&peer_if).expect("ARP socket on the peer");
        // Drain whatever arrived before.
        let _ = sock.recv_until(Instant::now() + Duration::from_millis(50));
        sender
            .announce(mac, vip)
            .expect("the first announcement after the link came back up");
        sock.recv_until(Instant::now() + Duration::from_millis(500))
            .expect("receive on the peer")
    });
    let garps = heard
        .iter()
        .filter(|f| f.eth_src == mac && f.arp.spa == vip.octets() && f.arp.tpa == vip.octets())
        .count();
    assert_eq!(garps, 2, "request and reply forms on the wire: {heard:?}");
}
