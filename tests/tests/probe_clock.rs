//! The benchmark's prober times replies with the kernel's receive timestamp (`SO_TIMESTAMPNS`,
//! moved to `CLOCK_MONOTONIC`), not with when its thread got to read them. Checked on a real ARP
//! exchange between two namespaces: every reply carries a kernel timestamp, and that time lies
//! between sending the request and reading the reply.

use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use vip_agent::clock::monotonic_ns;
use vip_tests::{NetNs, arp::ArpSocket, require_privileges, veth_pair};

#[test]
fn arp_replies_carry_the_kernels_receive_time() {
    if !require_privileges("arp_replies_carry_the_kernels_receive_time") {
        return;
    }
    let (client, node) = (NetNs::new("tcli"), NetNs::new("tnode"));
    let (client_if, node_if) = veth_pair(&client, &node);
    let (client_ip, node_ip) = (Ipv4Addr::new(10, 79, 4, 9), Ipv4Addr::new(10, 79, 4, 11));
    client.add_addr(&client_if, &format!("{client_ip}/24"));
    node.add_addr(&node_if, &format!("{node_ip}/24"));
    let node_mac = node.mac(&node_if);

    let exchanges = client.run_in(|| {
        let sock = ArpSocket::open(&client_if).expect("ARP socket on the client");
        (0..20)
            .map(|_| {
                let sent = monotonic_ns();
                sock.send_request(client_ip, node_ip).expect("send");
                // Read late on purpose: a read-time stamp would then lie >= 20 ms after sending.
                std::thread::sleep(Duration::from_millis(20));
                let frames = sock
                    .recv_until(Instant::now() + Duration::from_millis(200))
                    .expect("receive");
                let read = monotonic_ns();
                let replies: Vec<_> = frames
                    .into_iter()
                    .filter(|f| f.eth_src == node_mac && f.arp.spa == node_ip.octets())
                    .collect();
                (sent, read, replies)
            })
            .collect::<Vec<_>>()
    });
    for (sent, read, replies) in exchanges {
        assert_eq!(
            replies.len(),
            1,
            "one reply from the node's kernel: {replies:?}"
        );
        let reply = replies[0];
        assert!(reply.kernel_stamped, "the reply carries SO_TIMESTAMPNS");
        assert!(
            sent <= reply.at_ns && reply.at_ns <= read,
            "the reply's time {} lies between sending ({sent}) and reading ({read})",
            reply.at_ns
        );
        // The node's kernel answers within microseconds; the reader slept 20 ms before reading.
        // A stamp taken at read time could not be earlier than that sleep.
        assert!(
            reply.at_ns - sent < 20_000_000,
            "the reply is timed when it arrived ({} ns after sending), not when it was read",
            reply.at_ns - sent
        );
    }
}
