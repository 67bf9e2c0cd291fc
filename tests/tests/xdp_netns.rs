//! Tier 2: the data plane end to end, in network namespaces these tests create: real veth, real
//! XDP (generic and native), real ARP from a raw-socket prober and from the kernel, real ping.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use vip_agent::{
    clock::monotonic_ns,
    dataplane::{self, AttachMode, AttachOptions, Dataplane, Fenced, Origin},
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
    assert!(stats.replied >= 2, "prober + client kernel: {stats:?}");
    assert_eq!(stats.requests_dropped + stats.ip_dropped, 0, "{stats:?}");
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
    assert_eq!(dp.fence(p.vip).expect("fence"), Fenced::Written);
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
    assert_eq!(stats.requests_dropped, 4, "one drop per probe: {stats:?}");
    assert_eq!(stats.ip_dropped, 5, "one drop per echo request: {stats:?}");
    assert_eq!(stats.replied, 0);
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
    assert_eq!(dp.stats(p.vip).expect("stats").requests_dropped, 1);
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
            assert_eq!(dp.fence(p.vip).expect("fence"), Fenced::Written);
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
        stats.requests_dropped + stats.ip_dropped + stats.replied,
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
    assert_eq!(dp.fence(p.vip).expect("fence"), Fenced::Written);
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

    agent.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(
        agent.wait_timeout(Duration::from_secs(5)).is_some(),
        "agent gone"
    );
    // Configured by hand once the agent is gone (a running agent removes a VIP added on a node
    // that does not hold it): the kernel would answer for it but for the program.
    p.configure_vip();
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
        dp.stats(p.vip).expect("stats").requests_dropped,
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
        assert_eq!(off.fence(vip).expect("fence"), Fenced::Written);
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
    assert_eq!(dp2.fence(vip).expect("fence"), Fenced::Written);
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

// ---- 802.1Q ----
//
// A program on the parent of VLAN devices sees tagged frames; one on a VLAN device sees them
// untagged. The parent cases send the tags in band from a raw socket on the client's veth, so they
// need no VLAN support in the kernel (CONFIG_VLAN_8021Q; this test VM has none) and the tag is
// certainly in the bytes the program reads: a VLAN device on a veth hands its tag over as offload
// metadata (veth offloads tag insertion), and generic XDP shows the program only the bytes. The
// receiving kernel moves a tag into metadata before packet sockets see the frame, so replies are read
// back with their tag through PACKET_AUXDATA.

const VLAN_ID: u16 = 100;

/// `struct tpacket_auxdata` (linux/if_packet.h).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct TpacketAuxdata {
    tp_status: u32,
    tp_len: u32,
    tp_snaplen: u32,
    tp_mac: u16,
    tp_net: u16,
    tp_vlan_tci: u16,
    tp_vlan_tpid: u16,
}
const PACKET_AUXDATA: libc::c_int = 8;
const TP_STATUS_VLAN_VALID: u32 = 1 << 4;
const PACKET_OUTGOING: u8 = 4;

/// A frame that arrived, with the 802.1Q tag (TCI) it carried on the wire, if any.
#[derive(Debug)]
struct Received {
    frame: Vec<u8>,
    tci: Option<u16>,
}

/// An `AF_PACKET` socket for every ethertype on one interface: sends frames exactly as given, reads
/// incoming frames with their VLAN tag.
struct TagSocket {
    fd: std::os::fd::OwnedFd,
}

impl TagSocket {
    /// Open on `ifname` in `ns`.
    fn open(ns: &NetNs, ifname: &str) -> Self {
        use std::os::fd::AsRawFd as _;
        ns.run_in(|| {
            let index = nix::net::if_::if_nametoindex(ifname).expect("ifindex");
            let all = (libc::ETH_P_ALL as u16).to_be();
            let fd = vip_tests::sock::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(all))
                .expect("packet socket");
            // SAFETY: all-zero sockaddr_ll is valid; fields set below.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = all;
            addr.sll_ifindex = i32::try_from(index).expect("ifindex fits");
            // SAFETY: addr is a valid sockaddr_ll of the given size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&raw const addr).cast(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            vip_tests::sock::set_option(&fd, libc::SOL_PACKET, PACKET_AUXDATA, 1 as libc::c_int)
                .expect("PACKET_AUXDATA");
            Self { fd }
        })
    }

    fn send(&self, frame: &[u8]) {
        use std::os::fd::AsRawFd as _;
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            usize::try_from(n).ok(),
            Some(frame.len()),
            "send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Every incoming frame (not our own outgoing ones) for `wait`.
    fn recv_for(&self, wait: Duration) -> Vec<Received> {
        use std::os::fd::AsRawFd as _;
        let deadline = std::time::Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let now = std::time::Instant::now();
            if now >= deadline {
                return seen;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let timeout = i32::try_from((deadline - now).as_millis().max(1)).unwrap_or(i32::MAX);
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&raw mut pfd, 1, timeout) } <= 0 {
                continue;
            }
            let mut buf = [0u8; 2048];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // u64 elements keep the control buffer aligned for cmsghdr.
            let mut control = [0u64; 16];
            // SAFETY: all-zero sockaddr_ll and msghdr are valid; pointers set below.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_name = (&raw mut from).cast();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = size_of_val(&control);
            // SAFETY: msg points at live buffers of the stated sizes.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
            let Ok(len) = usize::try_from(n) else {
                continue;
            };
            if from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            let mut tci = None;
            // SAFETY: walking the control messages the kernel just wrote into `control`.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_PACKET && (*cmsg).cmsg_type == PACKET_AUXDATA
                    {
                        let aux: TpacketAuxdata =
                            std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                        if aux.tp_status & TP_STATUS_VLAN_VALID != 0 {
                            tci = Some(aux.tp_vlan_tci);
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&raw const msg, cmsg);
                }
            }
            seen.push(Received {
                frame: buf[..len].to_vec(),
                tci,
            });
        }
    }
}

/// `frame` with one 802.1Q tag (TCI = `pcp` << 13 | `vid`) after the MAC addresses.
fn tagged(frame: &[u8], vid: u16, pcp: u8) -> Vec<u8> {
    let tci = (u16::from(pcp) << 13) | vid;
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&[0x81, 0x00]);
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// A broadcast ARP request for `target` from `mac`/`ip`.
fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    vip_common::frame::build_arp(
        [0xff; 6],
        mac,
        vip_common::frame::ARP_OP_REQUEST,
        mac,
        ip.octets(),
        [0; 6],
        target.octets(),
    )
    .to_vec()
}

/// An ARP reply as the client received it.
#[derive(Debug, PartialEq, Eq)]
struct TaggedReply {
    eth_dst: [u8; 6],
    sha: [u8; 6],
    tpa: [u8; 4],
    /// The 802.1Q TCI it carried on the wire.
    tci: Option<u16>,
}

/// The ARP replies (op 2) from `sender` IP among `seen`.
fn arp_replies(seen: &[Received], sender: Ipv4Addr) -> Vec<TaggedReply> {
    seen.iter()
        .filter_map(|r| {
            let f = r
                .frame
                .first_chunk::<{ vip_common::frame::ARP_FRAME_LEN }>()?;
            (f[12..14] == [0x08, 0x06]).then_some(())?;
            let arp = vip_common::frame::ArpView::parse(f)?;
            (arp.op == 2 && arp.spa == sender.octets()).then(|| TaggedReply {
                eth_dst: [f[0], f[1], f[2], f[3], f[4], f[5]],
                sha: arp.sha,
                tpa: arp.tpa,
                tci: r.tci,
            })
        })
        .collect()
}

/// The Internet checksum (RFC 1071) of `data`, in network byte order.
fn inet_checksum(data: &[u8]) -> [u8; 2] {
    vip_tests::bench::internet_checksum(data).to_be_bytes()
}

/// An ICMP echo request `src` -> `dst` with identifier `id`, valid checksums, untagged.
fn echo_request(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
) -> Vec<u8> {
    let mut f =
        vip_common::frame::build_ipv4(eth_dst, eth_src, src.octets(), dst.octets(), 1).to_vec();
    let ip_sum = inet_checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ip_sum);
    f[34] = 8; // echo request
    f[38..40].copy_from_slice(&id.to_be_bytes());
    f[40..42].copy_from_slice(&1u16.to_be_bytes());
    let icmp_sum = inet_checksum(&f[34..42]);
    f[36..38].copy_from_slice(&icmp_sum);
    f
}

/// Echo replies (IPv4, ICMP type 0) from `src` with identifier `id` among `seen`.
fn echo_replies(seen: &[Received], src: Ipv4Addr, id: u16) -> usize {
    seen.iter()
        .filter(|r| {
            let f = &r.frame;
            f.len() >= 42
                && f[12..14] == [0x08, 0x00]
                && f[23] == 1
                && f[26..30] == src.octets()
                && f[34] == 0
                && f[38..40] == id.to_be_bytes()
        })
        .count()
}

#[test]
fn parent_answers_tagged_arp_keeping_vlan_and_priority() {
    if !require_privileges("parent_answers_tagged_arp_keeping_vlan_and_priority") {
        return;
    }
    let p = Pair::new(21);
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &p.node_if, AttachMode::Generic, &pins.0);
    dp.register(p.vip).expect("register");
    dp.answer_until(p.vip, far_deadline()).expect("answer");
    let client_mac = p.client.mac(&p.client_if);
    let sock = TagSocket::open(&p.client, &p.client_if);
    let request = arp_request(client_mac, p.client_ip, p.vip);

    // VLAN 100 with priority 5, and a priority tag (VLAN 0) with priority 3.
    for (vid, pcp) in [(VLAN_ID, 5u8), (0, 3)] {
        sock.send(&tagged(&request, vid, pcp));
        let replies = arp_replies(&sock.recv_for(Duration::from_millis(300)), p.vip);
        assert_eq!(
            replies,
            vec![TaggedReply {
                eth_dst: client_mac,
                sha: p.node_mac(),
                tpa: p.client_ip.octets(),
                tci: Some((u16::from(pcp) << 13) | vid),
            }],
            "one reply from the node's MAC, on VLAN {vid} with priority {pcp}"
        );
    }
    // Two tags (QinQ): not ours, and the node's kernel (no VLAN 100 device) ignores it too.
    sock.send(&tagged(&tagged(&request, 200, 0), VLAN_ID, 0));
    assert_eq!(
        arp_replies(&sock.recv_for(Duration::from_millis(300)), p.vip),
        vec![],
        "a double-tagged request passes to the kernel, which does not answer it"
    );
    let stats = dp.stats(p.vip).expect("stats");
    assert_eq!((stats.replied, stats.requests_dropped), (2, 0), "{stats:?}");
}

#[test]
fn fenced_parent_drops_priority_tagged_arp_and_ipv4_the_kernel_would_answer() {
    if !require_privileges(
        "fenced_parent_drops_priority_tagged_arp_and_ipv4_the_kernel_would_answer",
    ) {
        return;
    }
    let p = Pair::new(22);
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &p.node_if, AttachMode::Generic, &pins.0);
    dp.register(p.vip).expect("register");
    assert_eq!(dp.fence(p.vip).expect("fence"), Fenced::Written);
    p.configure_vip();
    let client_mac = p.client.mac(&p.client_if);
    let sock = TagSocket::open(&p.client, &p.client_if);

    // A priority-tagged (VLAN 0) frame is the parent's own traffic to the kernel: it answers a
    // request for its own address...
    sock.send(&tagged(
        &arp_request(client_mac, p.client_ip, p.node_ip),
        0,
        3,
    ));
    assert_eq!(
        arp_replies(&sock.recv_for(Duration::from_millis(300)), p.node_ip).len(),
        1,
        "the kernel answers a priority-tagged request for the node's own address"
    );
    // ... and would answer the same for the configured VIP: the program drops it.
    sock.send(&tagged(&arp_request(client_mac, p.client_ip, p.vip), 0, 3));
    assert_eq!(
        arp_replies(&sock.recv_for(Duration::from_millis(300)), p.vip),
        vec![],
        "a fenced node answers no tagged ARP for the VIP"
    );
    let echo = tagged(
        &echo_request(p.node_mac(), client_mac, p.client_ip, p.vip, 0x7701),
        0,
        0,
    );
    sock.send(&echo);
    assert_eq!(
        echo_replies(&sock.recv_for(Duration::from_millis(300)), p.vip, 0x7701),
        0,
        "no echo reply from a fenced VIP"
    );
    let stats = dp.stats(p.vip).expect("stats");
    assert_eq!(
        (stats.requests_dropped, stats.ip_dropped, stats.replied),
        (1, 1, 0),
        "{stats:?}"
    );

    // Answering, the tagged echo request reaches the kernel, which replies.
    dp.answer_until(p.vip, far_deadline()).expect("answer");
    sock.send(&echo);
    assert_eq!(
        echo_replies(&sock.recv_for(Duration::from_millis(500)), p.vip, 0x7701),
        1,
        "the kernel answers a tagged echo request to an answering VIP"
    );
    assert_eq!(dp.stats(p.vip).expect("stats").ip_dropped, 1);
}

/// Ignored by default: it needs a kernel with 802.1Q devices (`CONFIG_VLAN_8021Q`), which the
/// kernel of our CI machines lacks. Run it with `cargo test -p vip-tests --test xdp_netns --
/// --ignored program_on_a_vlan_device` where `ip link add ... type vlan` works; there it fails
/// (rather than skips) when the VLAN device cannot be created.
#[test]
#[ignore = "needs CONFIG_VLAN_8021Q (VLAN devices), which the CI kernel lacks"]
fn program_on_a_vlan_device_answers_and_fences_its_untagged_view() {
    if !require_privileges("program_on_a_vlan_device_answers_and_fences_its_untagged_view") {
        return;
    }
    let p = Pair::new(23);
    let (node_vlan, client_vlan) = (unique_name("vl"), unique_name("vl"));
    let added = p.node.exec(
        "ip",
        &[
            "link", "add", "link", &p.node_if, "name", &node_vlan, "type", "vlan", "id", "100",
        ],
    );
    assert!(
        added.status.success(),
        "cannot create a VLAN device (a kernel without CONFIG_VLAN_8021Q?): {}",
        String::from_utf8_lossy(&added.stderr).trim()
    );
    p.client.ip(&[
        "link",
        "add",
        "link",
        &p.client_if,
        "name",
        &client_vlan,
        "type",
        "vlan",
        "id",
        "100",
    ]);
    // VLAN 100 is its own subnet (10.77.24.0/24); the parents keep 10.77.23.0/24 untagged.
    let vip = Ipv4Addr::new(10, 77, 24, 100);
    let client_ip = Ipv4Addr::new(10, 77, 24, 9);
    p.node.add_addr(&node_vlan, "10.77.24.1/24");
    p.client.add_addr(&client_vlan, &format!("{client_ip}/24"));
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &node_vlan, AttachMode::Auto, &pins.0);
    // A VLAN device has no native XDP: `auto` (the configuration's default) falls back to the TC
    // ingress program (tcx).
    assert_eq!(dp.attachment().to_string(), "tc");
    dp.register(vip).expect("register");
    dp.answer_until(vip, far_deadline()).expect("answer");
    let node_mac = p.node.mac(&node_vlan);
    assert_eq!(
        probe(&p.client, &client_vlan, client_ip, vip),
        vec![node_mac],
        "the program on the VLAN device answers, back out through the device onto VLAN 100"
    );

    assert_eq!(dp.fence(vip).expect("fence"), Fenced::Written);
    p.node
        .ip(&["addr", "add", &format!("{vip}/24"), "dev", &node_vlan]);
    assert!(
        probe(&p.client, &client_vlan, client_ip, vip).is_empty(),
        "fenced: silent on the VLAN although the address is configured"
    );
    p.client
        .static_neighbour(&client_vlan, &vip.to_string(), &node_mac);
    assert_eq!(
        p.client.ping(&vip.to_string(), 3),
        0,
        "no echo reply when fenced"
    );
    let stats = dp.stats(vip).expect("stats");
    assert_eq!(
        (stats.replied, stats.requests_dropped, stats.ip_dropped),
        (1, 1, 3),
        "{stats:?}"
    );
}

/// Issue 16, item 8: the metrics page reads the maps through a reader of its own, so a scrape
/// never waits for the writer's lock, and the writer never waits for a scrape. The test holds the
/// writer's lock while a snapshot runs, and writes through it while the reader reads.
#[test]
fn the_reader_reads_the_maps_while_the_writer_holds_its_lock() {
    if !require_privileges("the_reader_reads_the_maps_while_the_writer_holds_its_lock") {
        return;
    }
    let p = Pair::new(24);
    let pins = PinRoot::new();
    let mut dp = open(&p.node, &p.node_if, AttachMode::Generic, &pins.0);
    dp.register(p.vip).expect("register");
    let reader = std::sync::Arc::new(dp.reader().expect("a reader"));
    let writer = std::sync::Mutex::new(dp);
    let mut held = writer.lock().expect("the writer's lock");
    let vip = IpAddr::V4(p.vip);
    let read = |reader: &std::sync::Arc<dataplane::DataplaneReader>| {
        let reader = std::sync::Arc::clone(reader);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((
                reader.state(vip).expect("state"),
                reader.stats(vip).expect("stats"),
                reader.egress_stats(vip).expect("egress counters"),
                reader.fence_write_failures(vip),
            ));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the snapshot completes while the writer's lock is held")
    };
    let (state, _, _, failures) = read(&reader);
    assert!(
        state.is_some_and(|s| s.deadline_ns == 0),
        "registered fenced: {state:?}"
    );
    assert_eq!(failures, 0);
    // A write under the held lock is what the reader sees next.
    let deadline = far_deadline();
    held.answer_until(p.vip, deadline).expect("answer");
    let (state, _, _, _) = read(&reader);
    assert_eq!(state.map(|s| s.deadline_ns), Some(deadline));
    assert_eq!(held.fence(p.vip).expect("fence"), Fenced::Written);
    let (state, _, _, _) = read(&reader);
    assert_eq!(state.map(|s| s.deadline_ns), Some(0));
    drop(held);
}
