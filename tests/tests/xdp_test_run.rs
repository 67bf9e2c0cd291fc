//! Tier 1: the real XDP object in the kernel, one frame at a time, through BPF_PROG_TEST_RUN.
//! Frame in -> action + bytes out + counters, byte-exact. Needs root (CAP_BPF), no network setup.

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuHashMap, PerCpuValues},
    programs::{TestRun as _, TestRunOptions, Xdp},
};
use vip_agent::{clock::monotonic_ns, dataplane::ebpf_object};
use vip_common::{
    VipKey, VipState, VipStats,
    frame::{ARP_OP_REPLY, ARP_OP_REQUEST, XDP_DROP, XDP_PASS, XDP_TX, build_arp, build_ipv4},
    maps::{MAP_NAMES, PROGRAM_NAME, STATE_MAP, STATS_MAP},
};

const VIP: [u8; 4] = [10, 77, 1, 100];
const NODE_IP: [u8; 4] = [10, 77, 1, 1];
const CLIENT_IP: [u8; 4] = [10, 77, 1, 9];
const OUR_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 1, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 1, 0x09];
const STRANGER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 1, 0x66];
const BCAST: [u8; 6] = [0xff; 6];

/// The object loaded (not attached), with typed map handles.
struct Loaded {
    ebpf: Ebpf,
    state: HashMap<MapData, VipKey, VipState>,
    stats: PerCpuHashMap<MapData, VipKey, VipStats>,
}

impl Loaded {
    fn new() -> Self {
        let mut ebpf = Ebpf::load(ebpf_object()).expect("load the embedded object");
        let state = HashMap::try_from(ebpf.take_map(STATE_MAP).expect("state map"))
            .expect("state map type/sizes");
        let stats = PerCpuHashMap::try_from(ebpf.take_map(STATS_MAP).expect("stats map"))
            .expect("stats map type/sizes");
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .expect("program")
            .try_into()
            .expect("an XDP program");
        program.load().expect("the verifier accepts the program");
        let mut loaded = Self { ebpf, state, stats };
        let zero = PerCpuValues::try_from(vec![
            VipStats::default();
            aya::util::nr_cpus().expect("cpus")
        ])
        .expect("values");
        loaded
            .stats
            .insert(VipKey::new(VIP), zero, 0)
            .expect("stats entry");
        loaded
    }

    fn set(&mut self, state: VipState) {
        self.state
            .insert(VipKey::new(VIP), state, 0)
            .expect("write state");
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

    /// Run the program once on `frame`; return the action and the frame as the program left it.
    fn run(&self, frame: &[u8]) -> (u32, Vec<u8>) {
        let program: &Xdp = self
            .ebpf
            .program(PROGRAM_NAME)
            .expect("program")
            .try_into()
            .expect("xdp");
        let mut out = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let result = program.test_run(opts).expect("BPF_PROG_TEST_RUN");
        let len = usize::try_from(result.data_size_out).expect("size");
        out.truncate(len);
        (result.return_value, out)
    }

    fn stats(&self) -> VipStats {
        self.stats
            .get(&VipKey::new(VIP), 0)
            .expect("stats")
            .iter()
            .fold(VipStats::default(), |a, s| a.merge(s))
    }
}

fn arp_request(tpa: [u8; 4]) -> Vec<u8> {
    build_arp(
        BCAST,
        CLIENT_MAC,
        ARP_OP_REQUEST,
        CLIENT_MAC,
        CLIENT_IP,
        [0; 6],
        tpa,
    )
    .to_vec()
}

fn icmp_to(dst: [u8; 4]) -> Vec<u8> {
    build_ipv4(OUR_MAC, CLIENT_MAC, CLIENT_IP, dst, 1).to_vec()
}

fn privileged(name: &str) -> bool {
    vip_tests::require_privileges(name)
}

#[test]
fn object_matches_the_contract() {
    if !privileged("object_matches_the_contract") {
        return;
    }
    let ebpf = Ebpf::load(ebpf_object()).expect("load");
    for name in MAP_NAMES {
        assert!(
            ebpf.map(name).is_some(),
            "map {name} missing from the object"
        );
    }
    assert!(
        ebpf.program(PROGRAM_NAME).is_some(),
        "program {PROGRAM_NAME} missing"
    );
    // Loading with typed handles checks key and value sizes against vip-common.
    let loaded = Loaded::new();
    let program: &Xdp = loaded
        .ebpf
        .program(PROGRAM_NAME)
        .expect("program")
        .try_into()
        .expect("xdp");
    let info = program.info().expect("program info");
    // Kernels >= 5.16 report how many instructions the verifier walked: keep the program far from
    // the 1M complexity limit (a state explosion would show here first).
    if let Some(verified) = info.verified_instruction_count() {
        eprintln!(
            "vip_xdp: {} bytes translated, {} bytes JITed, {verified} instructions verified",
            info.size_translated().unwrap_or(0),
            info.size_jitted()
        );
        assert!(
            (1..20_000).contains(&verified),
            "verifier walked {verified} instructions"
        );
    }
}

#[test]
fn answers_arp_request_for_vip_byte_exact() {
    if !privileged("answers_arp_request_for_vip_byte_exact") {
        return;
    }
    let mut l = Loaded::new();
    l.answering();
    let before = monotonic_ns();
    let (action, out) = l.run(&arp_request(VIP));
    let after = monotonic_ns();
    assert_eq!(action, XDP_TX);
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
    let s = l.stats();
    assert_eq!(s.arp_replied, 1);
    assert_eq!(s.arp_dropped, 0);
    assert!(
        (before..=after).contains(&s.last_reply_ns),
        "last reply time {} outside [{before}, {after}]",
        s.last_reply_ns
    );
}

#[test]
fn fenced_drops_arp_and_ipv4_for_vip_and_counts_them() {
    if !privileged("fenced_drops_arp_and_ipv4_for_vip_and_counts_them") {
        return;
    }
    let mut l = Loaded::new();
    l.fenced();
    for _ in 0..3 {
        let frame = arp_request(VIP);
        let (action, out) = l.run(&frame);
        assert_eq!(action, XDP_DROP);
        assert_eq!(out, frame, "a dropped frame is not rewritten");
    }
    for _ in 0..5 {
        let (action, _) = l.run(&icmp_to(VIP));
        assert_eq!(action, XDP_DROP);
    }
    let s = l.stats();
    assert_eq!((s.arp_replied, s.arp_dropped, s.ipv4_dropped), (0, 3, 5));
    assert_eq!(s.last_reply_ns, 0);
}

#[test]
fn deadline_in_the_past_fences() {
    if !privileged("deadline_in_the_past_fences") {
        return;
    }
    let mut l = Loaded::new();
    l.set(VipState::answering_until(OUR_MAC, monotonic_ns() - 1));
    assert_eq!(l.run(&arp_request(VIP)).0, XDP_DROP);
    assert_eq!(l.run(&icmp_to(VIP)).0, XDP_DROP);
    l.set(VipState::answering_until(
        OUR_MAC,
        monotonic_ns() + 10_000_000_000,
    ));
    assert_eq!(l.run(&arp_request(VIP)).0, XDP_TX);
    assert_eq!(l.run(&icmp_to(VIP)).0, XDP_PASS);
}

#[test]
fn deadline_expires_without_any_map_write() {
    if !privileged("deadline_expires_without_any_map_write") {
        return;
    }
    let mut l = Loaded::new();
    l.set(VipState::answering_until(
        OUR_MAC,
        monotonic_ns() + 200_000_000,
    ));
    assert_eq!(l.run(&arp_request(VIP)).0, XDP_TX);
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(l.run(&arp_request(VIP)).0, XDP_DROP);
}

#[test]
fn everything_else_passes_untouched_in_both_states() {
    if !privileged("everything_else_passes_untouched_in_both_states") {
        return;
    }
    let mut l = Loaded::new();
    let mut bad_hlen = arp_request(VIP);
    bad_hlen[18] = 8;
    let mut vlan = arp_request(VIP)[..12].to_vec();
    vlan.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
    vlan.extend_from_slice(&arp_request(VIP)[12..]);
    let mut ipv6 = icmp_to(VIP);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ARP for the node's own address", arp_request(NODE_IP)),
        ("IPv4 to the node's own address", icmp_to(NODE_IP)),
        ("ARP with hlen 8", bad_hlen),
        ("VLAN-tagged ARP", vlan),
        ("IPv6 ethertype", ipv6),
        ("truncated ARP", arp_request(VIP)[..41].to_vec()),
        ("truncated IPv4", icmp_to(VIP)[..33].to_vec()),
        ("runt frame", arp_request(VIP)[..14].to_vec()),
    ];
    for set_state in [Loaded::answering as fn(&mut Loaded), Loaded::fenced] {
        set_state(&mut l);
        for (name, frame) in &cases {
            let (action, out) = l.run(frame);
            assert_eq!(action, XDP_PASS, "{name}");
            assert_eq!(&out, frame, "{name} must pass unmodified");
        }
    }
    let s = l.stats();
    assert_eq!(
        s,
        VipStats::default(),
        "no VIP counter moves for traffic that is not about the VIP"
    );
}

#[test]
fn gratuitous_arp_from_another_mac_counts_a_conflict() {
    if !privileged("gratuitous_arp_from_another_mac_counts_a_conflict") {
        return;
    }
    let mut l = Loaded::new();
    l.answering();
    let garp = build_arp(
        BCAST,
        STRANGER_MAC,
        ARP_OP_REPLY,
        STRANGER_MAC,
        VIP,
        BCAST,
        VIP,
    )
    .to_vec();
    let (action, out) = l.run(&garp);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, garp);
    assert_eq!(l.stats().conflicts, 1);
    // Fenced, the same frame is no conflict of ours.
    l.fenced();
    assert_eq!(l.run(&garp).0, XDP_PASS);
    assert_eq!(l.stats().conflicts, 1);
}

#[test]
fn unregistered_vip_is_just_another_address() {
    if !privileged("unregistered_vip_is_just_another_address") {
        return;
    }
    let l = Loaded::new();
    // No state entry for VIP at all: nothing to fence, nothing to answer.
    assert_eq!(l.run(&arp_request(VIP)).0, XDP_PASS);
    assert_eq!(l.run(&icmp_to(VIP)).0, XDP_PASS);
}
