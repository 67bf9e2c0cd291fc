//! The real TC ingress program (the `tc` attach mode, issue 15.3) in the kernel, one frame at a
//! time, through BPF_PROG_TEST_RUN: frame in -> action + bytes out + counters, byte-exact. It runs
//! the XDP program's decision, so each frame also goes through the XDP program of the same object,
//! and the two must agree: a reply (`XDP_TX`) is `TC_ACT_REDIRECT` to the interface's egress with
//! the same bytes, a drop (`XDP_DROP`) `TC_ACT_SHOT`, a pass (`XDP_PASS`) `TC_ACT_UNSPEC` with the
//! frame untouched, and the counters move alike. Needs root (CAP_BPF), no network setup.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::{SchedClassifier, Xdp},
};
use vip_agent::{clock::monotonic_ns, dataplane::ebpf_object};
use vip_common::{
    VipKey, VipState, VipStats,
    frame::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV6, NA_FLAG_OVERRIDE,
        NA_FLAG_SOLICITED, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, XDP_DROP, XDP_PASS, XDP_TX,
        build_arp, build_ipv4, build_na, build_ns, solicited_node,
    },
    maps::{INGRESS_TC_PROGRAM_NAME, PROGRAM_NAME, STATE_MAP, STATS_MAP},
};
use vip_tests::require_privileges;

const VIP: [u8; 4] = [10, 77, 190, 100];
const NODE_IP: [u8; 4] = [10, 77, 190, 1];
const CLIENT_IP: [u8; 4] = [10, 77, 190, 9];
const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0x01, 0x90, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
const NODE6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0x01, 0x90, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0x01, 0x90, 0, 0, 0, 0, 0, 0, 0, 0x09,
];
const OUR_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0xbe, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0xbe, 0x09];
const STRANGER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0xbe, 0x66];
const BCAST: [u8; 6] = [0xff; 6];
const OPT_SLLA: u8 = 1;

/// One object, both ingress programs loaded on its maps (not attached); VIP and VIP6 registered
/// with zeroed counters.
struct Loaded {
    ebpf: Ebpf,
    state: HashMap<MapData, VipKey, VipState>,
    stats: PerCpuHashMap<MapData, VipKey, VipStats>,
}

impl Loaded {
    fn new() -> Self {
        let mut ebpf = Ebpf::load(ebpf_object()).expect("load the object");
        let state = HashMap::try_from(ebpf.take_map(STATE_MAP).expect("state map"))
            .expect("state map type/sizes");
        let mut stats = PerCpuHashMap::try_from(ebpf.take_map(STATS_MAP).expect("stats map"))
            .expect("stats map type/sizes");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(INGRESS_TC_PROGRAM_NAME)
            .expect("the TC ingress program is in the object")
            .try_into()
            .expect("a TC program");
        tc.load()
            .expect("the verifier accepts the TC ingress program");
        let xdp: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .expect("the XDP program is in the object")
            .try_into()
            .expect("an XDP program");
        xdp.load().expect("the verifier accepts the XDP program");
        let cpus = aya::util::nr_cpus().expect("cpus");
        for key in [VipKey::v4(VIP), VipKey::v6(VIP6)] {
            let zero = PerCpuValues::try_from(vec![VipStats::default(); cpus]).expect("values");
            stats.insert(key, zero, 0).expect("stats entry");
        }
        Self { ebpf, state, stats }
    }

    fn set(&mut self, state: VipState) {
        for key in [VipKey::v4(VIP), VipKey::v6(VIP6)] {
            self.state.insert(key, state, 0).expect("write state");
        }
    }

    fn answering(&mut self) {
        self.set(VipState::answering_until(
            OUR_MAC,
            monotonic_ns() + 60_000_000_000,
        ));
    }

    fn fenced(&mut self) {
        self.set(VipState::fenced(OUR_MAC));
    }

    /// The TC ingress program once on `frame`: the action and the frame as it left it.
    fn tc(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        vip_tests::test_run::tc(&self.ebpf, INGRESS_TC_PROGRAM_NAME, frame)
    }

    /// The XDP program once on `frame`.
    fn xdp(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        vip_tests::test_run::xdp(&self.ebpf, PROGRAM_NAME, frame)
    }

    /// Counters of `key`, without the reply time (compared separately).
    fn counts(&self, key: VipKey) -> [u64; 4] {
        let s = self
            .stats
            .get(&key, 0)
            .expect("stats")
            .iter()
            .fold(VipStats::default(), |a, s| a.merge(s));
        [s.replied, s.requests_dropped, s.ip_dropped, s.conflicts]
    }

    fn last_reply(&self, key: VipKey) -> u64 {
        self.stats
            .get(&key, 0)
            .expect("stats")
            .iter()
            .map(|s| s.last_reply_ns)
            .max()
            .unwrap_or(0)
    }
}

fn multicast_mac(group: &[u8; 16]) -> [u8; 6] {
    [0x33, 0x33, group[12], group[13], group[14], group[15]]
}

fn ns_for(target: [u8; 16], src: [u8; 16], mac: [u8; 6]) -> Vec<u8> {
    let group = solicited_node(&target);
    build_ns(
        multicast_mac(&group),
        mac,
        src,
        group,
        target,
        OPT_SLLA,
        mac,
    )
    .to_vec()
}

fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    build_arp(BCAST, sha, op, sha, spa, [0; 6], tpa).to_vec()
}

fn ipv4_to(dst: [u8; 4]) -> Vec<u8> {
    build_ipv4(OUR_MAC, CLIENT_MAC, CLIENT_IP, dst, 6).to_vec()
}

fn ipv6_to(dst: [u8; 16]) -> Vec<u8> {
    let mut f = Vec::with_capacity(62);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&ETH_P_IPV6);
    f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, 17, 64]);
    f.extend_from_slice(&CLIENT6);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&[0; 8]);
    f
}

fn tagged(frame: &[u8], tpid: [u8; 2], vid: u16) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&tpid);
    out.extend_from_slice(&vid.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

/// `frame` (untagged IPv6) with the extension header `header` of type `kind` in front of its
/// message (next header and payload length rewritten).
fn behind(frame: &[u8], kind: u8, header: &[u8]) -> Vec<u8> {
    let mut out = frame[..54].to_vec();
    let mut header = header.to_vec();
    header[0] = out[20];
    out[20] = kind;
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame[54..]);
    let payload = u16::try_from(out.len() - 54).expect("small");
    out[18..20].copy_from_slice(&payload.to_be_bytes());
    out
}

/// Every kind of frame the decision distinguishes, named.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let request = arp(ARP_OP_REQUEST, CLIENT_MAC, CLIENT_IP, VIP);
    let ns = ns_for(VIP6, CLIENT6, CLIENT_MAC);
    let mut bad_checksum = ns.clone();
    bad_checksum[56] ^= 0xff;
    let mut multicast_sender = request.clone();
    multicast_sender[22] = 0x01;
    vec![
        ("ARP request for the VIP", request.clone()),
        (
            "802.1Q ARP request for the VIP",
            tagged(&request, ETH_P_8021Q, 100),
        ),
        (
            "802.1ad ARP request for the VIP",
            tagged(&request, ETH_P_8021AD, 100),
        ),
        ("ARP request from a multicast sender", multicast_sender),
        (
            "ARP request for the node",
            arp(ARP_OP_REQUEST, CLIENT_MAC, CLIENT_IP, NODE_IP),
        ),
        (
            "gratuitous ARP for the VIP from another MAC",
            arp(ARP_OP_REQUEST, STRANGER_MAC, VIP, VIP),
        ),
        (
            "ARP reply from the VIP, another MAC",
            arp(ARP_OP_REPLY, STRANGER_MAC, VIP, CLIENT_IP),
        ),
        ("truncated ARP request", request[..30].to_vec()),
        ("IPv4 to the VIP", ipv4_to(VIP)),
        ("IPv4 to the node", ipv4_to(NODE_IP)),
        (
            "802.1Q IPv4 to the VIP",
            tagged(&ipv4_to(VIP), ETH_P_8021Q, 7),
        ),
        ("NS for the IPv6 VIP", ns.clone()),
        ("802.1Q NS for the IPv6 VIP", tagged(&ns, ETH_P_8021Q, 100)),
        ("NS for the IPv6 VIP, bad checksum", bad_checksum),
        (
            "DAD NS for the IPv6 VIP",
            ns_for(VIP6, [0; 16], STRANGER_MAC),
        ),
        ("NS for the node", ns_for(NODE6, CLIENT6, CLIENT_MAC)),
        (
            "NA for the IPv6 VIP from another MAC",
            build_na(CLIENT_MAC, STRANGER_MAC, VIP6, CLIENT6, NA_FLAG_OVERRIDE).to_vec(),
        ),
        (
            "NS for the IPv6 VIP behind Hop-by-Hop",
            behind(&ns, 0, &[0, 0, 1, 4, 0, 0, 0, 0]),
        ),
        (
            "NS for the IPv6 VIP behind a Fragment header",
            behind(&ns, 44, &[0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78]),
        ),
        ("IPv6 to the IPv6 VIP", ipv6_to(VIP6)),
        ("IPv6 to the node", ipv6_to(NODE6)),
        // (The kernel's test run refuses an IPv6 frame shorter than its header, as no driver
        // would hand one up; one cut after the header, in the solicitation, is judged.)
        ("NS for the IPv6 VIP, cut short", ns[..70].to_vec()),
        ("Ethernet header only", request[..14].to_vec()),
    ]
}

#[test]
fn tc_ingress_agrees_with_xdp_on_every_kind_of_frame_in_both_states() {
    if !require_privileges("tc_ingress_agrees_with_xdp_on_every_kind_of_frame_in_both_states") {
        return;
    }
    let mut l = Loaded::new();
    let mut actions = std::collections::BTreeSet::new();
    for answering in [true, false] {
        if answering {
            l.answering();
        } else {
            l.fenced();
        }
        for (name, frame) in corpus() {
            let before = [l.counts(VipKey::v4(VIP)), l.counts(VipKey::v6(VIP6))];
            let (xdp_action, xdp_out) = l.xdp(&frame);
            let after_xdp = [l.counts(VipKey::v4(VIP)), l.counts(VipKey::v6(VIP6))];
            let (tc_action, tc_out) = l.tc(&frame);
            let after_tc = [l.counts(VipKey::v4(VIP)), l.counts(VipKey::v6(VIP6))];
            let expected = match xdp_action {
                XDP_TX => TC_ACT_REDIRECT,
                XDP_DROP => TC_ACT_SHOT,
                XDP_PASS => TC_ACT_UNSPEC,
                other => panic!("{name}: XDP action {other}"),
            };
            assert_eq!(tc_action, expected, "{name} (answering: {answering})");
            assert_eq!(
                tc_out, xdp_out,
                "{name} (answering: {answering}): bytes out"
            );
            if xdp_action != XDP_TX {
                assert_eq!(tc_out, frame, "{name}: only a reply is rewritten");
            }
            let xdp_delta: Vec<u64> = (0..2)
                .flat_map(|k| (0..4).map(move |c| (k, c)))
                .map(|(k, c)| after_xdp[k][c] - before[k][c])
                .collect();
            let tc_delta: Vec<u64> = (0..2)
                .flat_map(|k| (0..4).map(move |c| (k, c)))
                .map(|(k, c)| after_tc[k][c] - after_xdp[k][c])
                .collect();
            assert_eq!(
                tc_delta, xdp_delta,
                "{name} (answering: {answering}): counters"
            );
            actions.insert(tc_action);
        }
    }
    // The corpus reaches every action, so the comparison above could have failed on each.
    assert_eq!(
        actions.into_iter().collect::<Vec<_>>(),
        vec![TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_REDIRECT]
    );
}

#[test]
fn tc_ingress_answers_arp_and_ns_byte_exact_and_redirects_them() {
    if !require_privileges("tc_ingress_answers_arp_and_ns_byte_exact_and_redirects_them") {
        return;
    }
    let mut l = Loaded::new();
    l.answering();
    let before = monotonic_ns();
    let (action, out) = l.tc(&arp(ARP_OP_REQUEST, CLIENT_MAC, CLIENT_IP, VIP));
    assert_eq!(action, TC_ACT_REDIRECT);
    let expected = build_arp(
        CLIENT_MAC,
        OUR_MAC,
        ARP_OP_REPLY,
        OUR_MAC,
        VIP,
        CLIENT_MAC,
        CLIENT_IP,
    );
    assert_eq!(out, expected.to_vec());
    let (action, out) = l.tc(&ns_for(VIP6, CLIENT6, CLIENT_MAC));
    assert_eq!(action, TC_ACT_REDIRECT);
    let na = build_na(
        CLIENT_MAC,
        OUR_MAC,
        VIP6,
        CLIENT6,
        NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
    );
    assert_eq!(out, na.to_vec());
    let after = monotonic_ns();
    assert_eq!(l.counts(VipKey::v4(VIP)), [1, 0, 0, 0]);
    assert_eq!(l.counts(VipKey::v6(VIP6)), [1, 0, 0, 0]);
    for key in [VipKey::v4(VIP), VipKey::v6(VIP6)] {
        let t = l.last_reply(key);
        assert!(
            (before..=after).contains(&t),
            "last reply {t} outside [{before}, {after}]"
        );
    }
}

#[test]
fn tc_ingress_fenced_drops_requests_and_traffic_for_the_vips_and_counts_them() {
    if !require_privileges(
        "tc_ingress_fenced_drops_requests_and_traffic_for_the_vips_and_counts_them",
    ) {
        return;
    }
    let mut l = Loaded::new();
    l.fenced();
    for _ in 0..2 {
        let frame = arp(ARP_OP_REQUEST, CLIENT_MAC, CLIENT_IP, VIP);
        assert_eq!(l.tc(&frame), (TC_ACT_SHOT, frame));
    }
    for _ in 0..3 {
        let frame = ipv4_to(VIP);
        assert_eq!(l.tc(&frame), (TC_ACT_SHOT, frame));
    }
    let frame = ns_for(VIP6, CLIENT6, CLIENT_MAC);
    assert_eq!(l.tc(&frame), (TC_ACT_SHOT, frame.clone()));
    // Behind an extension header too (issue 16, item 19).
    for (kind, header) in [
        (0, [0, 0, 1, 4, 0, 0, 0, 0]),
        (44, [0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78]),
    ] {
        let frame = behind(&frame, kind, &header);
        assert_eq!(l.tc(&frame), (TC_ACT_SHOT, frame));
    }
    let frame = ipv6_to(VIP6);
    assert_eq!(l.tc(&frame), (TC_ACT_SHOT, frame));
    // The node's own traffic goes on.
    let frame = ipv4_to(NODE_IP);
    assert_eq!(l.tc(&frame), (TC_ACT_UNSPEC, frame));
    assert_eq!(l.counts(VipKey::v4(VIP)), [0, 2, 3, 0]);
    assert_eq!(l.counts(VipKey::v6(VIP6)), [0, 3, 1, 0]);
    assert_eq!(l.last_reply(VipKey::v4(VIP)), 0);
    // The deadline alone fences: one in the past, no write after it.
    l.set(VipState::answering_until(OUR_MAC, monotonic_ns() - 1));
    let frame = arp(ARP_OP_REQUEST, CLIENT_MAC, CLIENT_IP, VIP);
    assert_eq!(l.tc(&frame).0, TC_ACT_SHOT);
}
