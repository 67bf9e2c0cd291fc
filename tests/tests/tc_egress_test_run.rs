//! The real TC egress program in the kernel, one frame at a time, through BPF_PROG_TEST_RUN (issue
//! 15): frame in -> action + bytes out + counters, byte-exact. While a VIP is fenced, what the node
//! sends from it is dropped (`TC_ACT_SHOT`) and counted; everything else goes on untouched
//! (`TC_ACT_UNSPEC`: "not mine", the next tcx program or the stack). Needs root (CAP_BPF), no
//! network setup.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::SchedClassifier,
};
use vip_agent::{clock::monotonic_ns, dataplane::ebpf_object};
use vip_common::{
    EgressStats, VipKey, VipState, VipStats,
    frame::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV6, NA_FLAG_OVERRIDE,
        TC_ACT_SHOT, TC_ACT_UNSPEC, all_nodes, build_arp, build_ipv4, build_na, build_ns,
    },
    maps::{EGRESS_PROGRAM_NAME, EGRESS_STATS_MAP, STATE_MAP, STATS_MAP},
};
use vip_tests::require_privileges;

const VIP: [u8; 4] = [10, 77, 164, 100];
const NODE_IP: [u8; 4] = [10, 77, 164, 11];
const CLIENT_IP: [u8; 4] = [10, 77, 164, 9];
const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0x01, 0x64, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
const NODE6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0x01, 0x64, 0, 0, 0, 0, 0, 0, 0, 0x11,
];
const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0x01, 0x64, 0, 0, 0, 0, 0, 0, 0, 0x09,
];
const LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const OUR_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0xa4, 0x11];
const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0xa4, 0x09];
const BCAST: [u8; 6] = [0xff; 6];

/// The object loaded (the egress program only, not attached), with typed map handles; VIP and
/// VIP6 registered with zeroed counters in both counter maps.
struct Loaded {
    ebpf: Ebpf,
    state: HashMap<MapData, VipKey, VipState>,
    stats: PerCpuHashMap<MapData, VipKey, VipStats>,
    egress: PerCpuHashMap<MapData, VipKey, EgressStats>,
}

impl Loaded {
    fn new() -> Self {
        let mut ebpf = Ebpf::load(ebpf_object()).expect("load the object");
        let state = HashMap::try_from(ebpf.take_map(STATE_MAP).expect("state map"))
            .expect("state map type/sizes");
        let mut stats = PerCpuHashMap::try_from(ebpf.take_map(STATS_MAP).expect("stats map"))
            .expect("stats map type/sizes");
        let mut egress =
            PerCpuHashMap::try_from(ebpf.take_map(EGRESS_STATS_MAP).expect("egress stats map"))
                .expect("egress stats map type/sizes");
        let program: &mut SchedClassifier = ebpf
            .program_mut(EGRESS_PROGRAM_NAME)
            .expect("the egress program is in the object")
            .try_into()
            .expect("a TC program");
        program.load().expect("the verifier accepts the program");
        let cpus = aya::util::nr_cpus().expect("cpus");
        for key in [VipKey::v4(VIP), VipKey::v6(VIP6)] {
            let zero = PerCpuValues::try_from(vec![VipStats::default(); cpus]).expect("values");
            stats.insert(key, zero, 0).expect("stats entry");
            let zero = PerCpuValues::try_from(vec![EgressStats::default(); cpus]).expect("values");
            egress.insert(key, zero, 0).expect("egress stats entry");
        }
        Self {
            ebpf,
            state,
            stats,
            egress,
        }
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

    /// Run the program once on `frame`; the action and the frame as the program left it.
    fn run(&self, frame: &[u8]) -> (i32, Vec<u8>) {
        vip_tests::test_run::tc(&self.ebpf, EGRESS_PROGRAM_NAME, frame)
    }

    fn stats(&self, key: VipKey) -> VipStats {
        self.stats
            .get(&key, 0)
            .expect("stats")
            .iter()
            .fold(VipStats::default(), |a, s| a.merge(s))
    }

    fn egress(&self, key: VipKey) -> EgressStats {
        self.egress
            .get(&key, 0)
            .expect("egress stats")
            .iter()
            .fold(EgressStats::default(), |a, s| a.merge(s))
    }
}

fn ipv4_from(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    build_ipv4(CLIENT_MAC, OUR_MAC, src, dst, 6).to_vec()
}

fn ipv6_from(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut f = vec![0u8; 14 + 40 + 20];
    f[0..6].copy_from_slice(&CLIENT_MAC);
    f[6..12].copy_from_slice(&OUR_MAC);
    f[12..14].copy_from_slice(&ETH_P_IPV6);
    f[14] = 0x60;
    f[19] = 20;
    f[20] = 6;
    f[21] = 64;
    f[22..38].copy_from_slice(&src);
    f[38..54].copy_from_slice(&dst);
    f
}

fn tagged(frame: &[u8], tpid: [u8; 2]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid);
    f.extend_from_slice(&[0xa0, 100]);
    f.extend_from_slice(&frame[12..]);
    f
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Counted {
    Ip,
    Arp,
}

/// What a fenced VIP must not send: (name, frame, VIP, counter).
fn must_drop() -> Vec<(&'static str, Vec<u8>, VipKey, Counted)> {
    let (all_nodes_ip, all_nodes_mac) = all_nodes();
    let mut na_link_local = build_na(all_nodes_mac, OUR_MAC, VIP6, all_nodes_ip, 0).to_vec();
    na_link_local[22..38].copy_from_slice(&LINK_LOCAL);
    let (v4, v6) = (VipKey::v4(VIP), VipKey::v6(VIP6));
    vec![
        (
            "TCP data from the VIP",
            ipv4_from(VIP, CLIENT_IP),
            v4,
            Counted::Ip,
        ),
        (
            "gratuitous ARP request",
            build_arp(BCAST, OUR_MAC, ARP_OP_REQUEST, OUR_MAC, VIP, [0; 6], VIP).to_vec(),
            v4,
            Counted::Arp,
        ),
        (
            "gratuitous ARP reply",
            build_arp(BCAST, OUR_MAC, ARP_OP_REPLY, OUR_MAC, VIP, BCAST, VIP).to_vec(),
            v4,
            Counted::Arp,
        ),
        (
            "ARP reply from the VIP",
            build_arp(
                CLIENT_MAC,
                OUR_MAC,
                ARP_OP_REPLY,
                OUR_MAC,
                VIP,
                CLIENT_MAC,
                CLIENT_IP,
            )
            .to_vec(),
            v4,
            Counted::Arp,
        ),
        (
            "IPv6 from the VIP",
            ipv6_from(VIP6, CLIENT6),
            v6,
            Counted::Ip,
        ),
        (
            "unsolicited NA from the VIP",
            build_na(all_nodes_mac, OUR_MAC, VIP6, all_nodes_ip, NA_FLAG_OVERRIDE).to_vec(),
            v6,
            Counted::Arp,
        ),
        (
            "NA for the VIP from the link-local address",
            na_link_local,
            v6,
            Counted::Arp,
        ),
        (
            "NS from the VIP",
            build_ns(BCAST, OUR_MAC, VIP6, CLIENT6, CLIENT6, 1, OUR_MAC).to_vec(),
            v6,
            Counted::Arp,
        ),
    ]
}

/// What always leaves: the node's own addresses, traffic to the VIP (another node holds it).
fn always_pass() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("from the node", ipv4_from(NODE_IP, CLIENT_IP)),
        ("to the VIP", ipv4_from(NODE_IP, VIP)),
        (
            "the node resolving the VIP",
            build_arp(
                BCAST,
                OUR_MAC,
                ARP_OP_REQUEST,
                OUR_MAC,
                NODE_IP,
                [0; 6],
                VIP,
            )
            .to_vec(),
        ),
        ("IPv6 from the node", ipv6_from(NODE6, CLIENT6)),
        (
            "the node soliciting the VIP",
            build_ns(BCAST, OUR_MAC, NODE6, VIP6, VIP6, 1, OUR_MAC).to_vec(),
        ),
        (
            "IPv6 from the IPv4 VIP's mapped address",
            ipv6_from(VipKey::v4(VIP).addr, CLIENT6),
        ),
        // The kernel's test run refuses IP frames shorter than their header; ARP it takes.
        (
            "truncated gratuitous ARP from the VIP",
            build_arp(BCAST, OUR_MAC, ARP_OP_REQUEST, OUR_MAC, VIP, [0; 6], VIP)[..31].to_vec(),
        ),
    ]
}

#[test]
fn a_fenced_vip_sends_nothing_and_each_drop_is_counted() {
    if !require_privileges("a_fenced_vip_sends_nothing_and_each_drop_is_counted") {
        return;
    }
    let mut l = Loaded::new();
    l.fenced();
    let mut expected = [(0u64, 0u64); 2];
    for (name, frame, vip, counted) in must_drop() {
        for frame in [frame.clone(), tagged(&frame, ETH_P_8021Q)] {
            let (action, out) = l.run(&frame);
            assert_eq!(action, TC_ACT_SHOT, "{name}: {frame:02x?}");
            assert_eq!(out, frame, "{name}: never written");
            let slot = &mut expected[usize::from(vip == VipKey::v6(VIP6))];
            match counted {
                Counted::Ip => slot.0 += 1,
                Counted::Arp => slot.1 += 1,
            }
        }
    }
    for (i, key) in [VipKey::v4(VIP), VipKey::v6(VIP6)].into_iter().enumerate() {
        let e = l.egress(key);
        assert_eq!((e.ip_dropped, e.neighbour_dropped), expected[i], "{key:?}");
        let s = l.stats(key);
        assert_eq!(
            (s.replied, s.requests_dropped, s.ip_dropped, s.conflicts),
            (0, 0, 0, 0),
            "the ingress counters are the XDP program's"
        );
    }
}

#[test]
fn an_answering_vip_and_everything_else_go_on_untouched() {
    if !require_privileges("an_answering_vip_and_everything_else_go_on_untouched") {
        return;
    }
    let mut l = Loaded::new();
    l.answering();
    for (name, frame, _, _) in must_drop() {
        let (action, out) = l.run(&frame);
        assert_eq!(action, TC_ACT_UNSPEC, "{name}");
        assert_eq!(out, frame, "{name}");
    }
    l.fenced();
    for (name, frame) in always_pass() {
        let (action, out) = l.run(&frame);
        assert_eq!(action, TC_ACT_UNSPEC, "{name}");
        assert_eq!(out, frame, "{name}");
    }
    for (name, frame, _, _) in must_drop() {
        // 802.1ad and two tags: not ours to judge.
        let ad = tagged(&frame, ETH_P_8021AD);
        assert_eq!(l.run(&ad), (TC_ACT_UNSPEC, ad.clone()), "{name} (802.1ad)");
        let qinq = tagged(&tagged(&frame, ETH_P_8021Q), ETH_P_8021Q);
        assert_eq!(l.run(&qinq), (TC_ACT_UNSPEC, qinq.clone()), "{name} (QinQ)");
    }
    for key in [VipKey::v4(VIP), VipKey::v6(VIP6)] {
        let e = l.egress(key);
        assert_eq!(
            (e.ip_dropped, e.neighbour_dropped),
            (0, 0),
            "no count for a pass"
        );
    }
}

#[test]
fn the_egress_fence_starts_at_the_deadline_in_the_kernels_clock() {
    if !require_privileges("the_egress_fence_starts_at_the_deadline_in_the_kernels_clock") {
        return;
    }
    let mut l = Loaded::new();
    let frame = ipv4_from(VIP, CLIENT_IP);
    l.set(VipState::answering_until(
        OUR_MAC,
        monotonic_ns() + 200_000_000,
    ));
    assert_eq!(l.run(&frame).0, TC_ACT_UNSPEC, "before the deadline");
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(l.run(&frame).0, TC_ACT_SHOT, "after it, with no map write");
    assert_eq!(l.egress(VipKey::v4(VIP)).ip_dropped, 1);
}
