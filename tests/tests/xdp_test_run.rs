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
    frame::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV6,
        NA_FLAG_OVERRIDE, NA_FLAG_SOLICITED, NdView, XDP_DROP, XDP_PASS, XDP_TX, all_nodes,
        build_arp, build_ipv4, build_na, build_ns, solicited_node,
    },
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
        Self::with_object(ebpf_object())
    }

    fn with_object(object: &[u8]) -> Self {
        let mut ebpf = Ebpf::load(object).expect("load the object");
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
            .insert(VipKey::v4(VIP), zero, 0)
            .expect("stats entry");
        loaded
    }

    fn set(&mut self, state: VipState) {
        self.state
            .insert(VipKey::v4(VIP), state, 0)
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
        vip_tests::test_run::xdp(&self.ebpf, PROGRAM_NAME, frame)
    }

    fn stats(&self) -> VipStats {
        self.stats_of(VipKey::v4(VIP))
    }

    fn stats_of(&self, key: VipKey) -> VipStats {
        self.stats
            .get(&key, 0)
            .expect("stats")
            .iter()
            .fold(VipStats::default(), |a, s| a.merge(s))
    }

    /// Register VIP6 as well (zeroed counters), in `state`.
    fn with_vip6(mut self, state: VipState) -> Self {
        let zero = PerCpuValues::try_from(vec![
            VipStats::default();
            aya::util::nr_cpus().expect("cpus")
        ])
        .expect("values");
        self.stats
            .insert(VipKey::v6(VIP6), zero, 0)
            .expect("stats entry");
        self.set6(state);
        self
    }

    fn set6(&mut self, state: VipState) {
        self.state
            .insert(VipKey::v6(VIP6), state, 0)
            .expect("write state");
    }

    fn stats6(&self) -> VipStats {
        self.stats_of(VipKey::v6(VIP6))
    }
}

/// 2001:db8:77:1::100, the IPv6 VIP; the node's and a client's addresses in the same /64.
const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
const NODE6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x09,
];
/// ND option types: source link-layer address, and the RFC 7527 nonce of a DAD probe.
const OPT_SLLA: u8 = 1;
const OPT_NONCE: u8 = 14;

fn answering_state() -> VipState {
    VipState::answering_until(OUR_MAC, monotonic_ns() + 60_000_000_000)
}

/// The MAC of an IPv6 multicast group (RFC 2464 7).
fn multicast_mac(group: &[u8; 16]) -> [u8; 6] {
    [0x33, 0x33, group[12], group[13], group[14], group[15]]
}

/// A client's Neighbor Solicitation for `target`, to its solicited-node group.
fn ns_for(target: [u8; 16]) -> Vec<u8> {
    let group = solicited_node(&target);
    build_ns(
        multicast_mac(&group),
        CLIENT_MAC,
        CLIENT6,
        group,
        target,
        OPT_SLLA,
        CLIENT_MAC,
    )
    .to_vec()
}

/// Duplicate address detection for VIP6 from another node: from `::`, with a nonce.
fn dad_ns() -> Vec<u8> {
    let group = solicited_node(&VIP6);
    build_ns(
        multicast_mac(&group),
        STRANGER_MAC,
        [0; 16],
        group,
        VIP6,
        OPT_NONCE,
        [1, 2, 3, 4, 5, 6],
    )
    .to_vec()
}

/// Our answer to `ns_for(VIP6)`.
fn na_to_client() -> Vec<u8> {
    build_na(
        CLIENT_MAC,
        OUR_MAC,
        VIP6,
        CLIENT6,
        NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE,
    )
    .to_vec()
}

/// An IPv6 packet (next header UDP, 8 zero bytes) from the client to `dst`.
fn udp6_to(dst: [u8; 16]) -> Vec<u8> {
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

/// `frame` with one 802.1Q tag (VLAN `vid`, priority `pcp`) after the MAC addresses.
fn tagged(frame: &[u8], vid: u16, pcp: u8) -> Vec<u8> {
    let tci = (u16::from(pcp) << 13) | vid;
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&ETH_P_8021Q);
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
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
    assert_eq!(s.replied, 1);
    assert_eq!(s.requests_dropped, 0);
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
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (0, 3, 5));
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
    // Two tags (QinQ) and an 802.1ad S-tag: not parsed, whatever is inside.
    let qinq = tagged(&tagged(&arp_request(VIP), 200, 0), 100, 0);
    let mut s_tag = tagged(&arp_request(VIP), 100, 0);
    s_tag[12..14].copy_from_slice(&ETH_P_8021AD);
    let mut s_tag_ipv4 = tagged(&icmp_to(VIP), 100, 0);
    s_tag_ipv4[12..14].copy_from_slice(&ETH_P_8021AD);
    let mut ipv6 = icmp_to(VIP);
    ipv6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("ARP for the node's own address", arp_request(NODE_IP)),
        ("IPv4 to the node's own address", icmp_to(NODE_IP)),
        ("ARP with hlen 8", bad_hlen),
        ("QinQ ARP (two 802.1Q tags)", qinq),
        ("802.1ad-tagged ARP", s_tag),
        ("802.1ad-tagged IPv4", s_tag_ipv4),
        (
            "tagged ARP for the node's own address",
            tagged(&arp_request(NODE_IP), 100, 0),
        ),
        (
            "tagged IPv4 to the node's own address",
            tagged(&icmp_to(NODE_IP), 100, 0),
        ),
        (
            "truncated tagged ARP",
            tagged(&arp_request(VIP), 100, 0)[..45].to_vec(),
        ),
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
fn tagged_arp_request_is_answered_keeping_the_tag_byte_exact() {
    if !privileged("tagged_arp_request_is_answered_keeping_the_tag_byte_exact") {
        return;
    }
    let mut l = Loaded::new();
    l.answering();
    let reply = build_arp(
        CLIENT_MAC,
        OUR_MAC,
        ARP_OP_REPLY,
        OUR_MAC,
        VIP,
        CLIENT_MAC,
        CLIENT_IP,
    );
    // VID 0 (priority tag), a common VID with priority, the highest VID with DEI set.
    let mut runs = 0;
    for (vid, pcp, dei) in [(100u16, 0u8, false), (0, 5, false), (4094, 7, true)] {
        let mut request = tagged(&arp_request(VIP), vid, pcp);
        let mut expected = tagged(&reply, vid, pcp);
        if dei {
            request[14] |= 0x10;
            expected[14] |= 0x10;
        }
        // Padded to the 64-byte minimum (60 without FCS) as a switch would deliver it.
        request.resize(60, 0x5a);
        expected.resize(60, 0x5a);
        let (action, out) = l.run(&request);
        runs += 1;
        assert_eq!(action, XDP_TX, "vid {vid}");
        assert_eq!(out, expected, "vid {vid} pcp {pcp} dei {dei}");
    }
    let s = l.stats();
    assert_eq!((s.replied, s.requests_dropped), (runs, 0));
}

#[test]
fn tagged_fenced_drops_arp_and_ipv4_and_answering_passes_ipv4() {
    if !privileged("tagged_fenced_drops_arp_and_ipv4_and_answering_passes_ipv4") {
        return;
    }
    let mut l = Loaded::new();
    l.fenced();
    let arp = tagged(&arp_request(VIP), 100, 0);
    let ipv4 = tagged(&icmp_to(VIP), 100, 3);
    for frame in [&arp, &ipv4] {
        let (action, out) = l.run(frame);
        assert_eq!(action, XDP_DROP);
        assert_eq!(&out, frame, "a dropped frame is not rewritten");
    }
    let s = l.stats();
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (0, 1, 1));
    l.answering();
    let (action, out) = l.run(&ipv4);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, ipv4);
    assert_eq!(l.stats().ip_dropped, 1, "no count for a pass");
}

#[test]
fn tagged_gratuitous_arp_from_another_mac_counts_a_conflict() {
    if !privileged("tagged_gratuitous_arp_from_another_mac_counts_a_conflict") {
        return;
    }
    let mut l = Loaded::new();
    l.answering();
    let garp = tagged(
        &build_arp(
            BCAST,
            STRANGER_MAC,
            ARP_OP_REPLY,
            STRANGER_MAC,
            VIP,
            BCAST,
            VIP,
        ),
        100,
        0,
    );
    let (action, out) = l.run(&garp);
    assert_eq!(action, XDP_PASS);
    assert_eq!(out, garp);
    assert_eq!(l.stats().conflicts, 1);
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

/// Not a check: the program's cost per frame through BPF_PROG_TEST_RUN, printed for comparison
/// (untagged vs 802.1Q-tagged, ARP vs IPv6 NS). `cargo test -p vip-tests --test xdp_test_run -- --ignored --nocapture`.
#[test]
#[ignore = "measurement only; prints ns per run"]
fn cost_per_frame() {
    if !privileged("cost_per_frame") {
        return;
    }
    // VIP_BASELINE_OBJECT=<path of another build of vip-ebpf> measures that object too, interleaved.
    let baseline = std::env::var_os("VIP_BASELINE_OBJECT")
        .map(|path| std::fs::read(path).expect("read the baseline object"));
    let mut objects = vec![("this build", ebpf_object())];
    if let Some(b) = &baseline {
        objects.push(("baseline", b.as_slice()));
    }
    for round in 0..6 {
        for (object_name, object) in &objects {
            let mut l = Loaded::with_object(object).with_vip6(answering_state());
            l.answering();
            measure(&l, object_name, round);
        }
    }
}

/// Print ns per run for a reply (single runs, averaged) and a pass (repeated in the kernel).
fn measure(l: &Loaded, object_name: &str, round: u32) {
    let program: &Xdp = l
        .ebpf
        .program(PROGRAM_NAME)
        .expect("program")
        .try_into()
        .expect("xdp");
    let run = |frame: &[u8], repeat: u32, expect: u32| -> f64 {
        let mut out = vec![0u8; 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = program.test_run(opts).expect("test run");
        assert_eq!(r.return_value, expect);
        r.duration.as_nanos() as f64
    };
    let n = 20_000u32;
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("untagged", arp_request(VIP), icmp_to(NODE_IP)),
        (
            "802.1Q",
            tagged(&arp_request(VIP), 100, 0),
            tagged(&icmp_to(NODE_IP), 100, 0),
        ),
        ("IPv6 NS", ns_for(VIP6), udp6_to(NODE6)),
        (
            "802.1Q IPv6 NS",
            tagged(&ns_for(VIP6), 100, 0),
            tagged(&udp6_to(NODE6), 100, 0),
        ),
    ];
    for (name, request, pass) in &cases {
        let passed = run(pass, 1_000_000, XDP_PASS);
        // A baseline from before 802.1Q (or IPv6) support passes those requests: no reply to time.
        let reply = if object_name == "baseline" && *name != "untagged" {
            f64::NAN
        } else {
            (0..n).map(|_| run(request, 1, XDP_TX)).sum::<f64>() / f64::from(n)
        };
        eprintln!("{object_name}, {name}, round {round}: reply {reply:.1} ns, pass {passed:.1} ns");
    }
}

#[test]
fn answers_ns_for_ipv6_vip_byte_exact() {
    if !privileged("answers_ns_for_ipv6_vip_byte_exact") {
        return;
    }
    let mut l = Loaded::new().with_vip6(answering_state());
    // The IPv4 VIP fenced on the same interface: no effect on the IPv6 one.
    l.fenced();
    let before = monotonic_ns();
    let (action, out) = l.run(&ns_for(VIP6));
    assert_eq!(action, XDP_TX);
    assert_eq!(out, na_to_client());
    let view = NdView::parse(out.as_slice().try_into().expect("86 bytes")).expect("IPv6");
    assert!(view.checksum_ok, "the NA's checksum as the kernel wrote it");
    // Duplicate address detection from another node is defended: to all nodes, S clear.
    let (action, out) = l.run(&dad_ns());
    assert_eq!(action, XDP_TX);
    let (all_nodes_ip, all_nodes_mac) = all_nodes();
    let expected = build_na(all_nodes_mac, OUR_MAC, VIP6, all_nodes_ip, NA_FLAG_OVERRIDE);
    assert_eq!(out, expected.to_vec());
    let after = monotonic_ns();
    let s = l.stats6();
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (2, 0, 0));
    assert!(
        (before..=after).contains(&s.last_reply_ns),
        "last reply time {} outside [{before}, {after}]",
        s.last_reply_ns
    );
    assert_eq!(
        l.stats(),
        VipStats::default(),
        "the IPv4 VIP counted nothing"
    );
}

#[test]
fn fenced_drops_ns_and_ipv6_for_ipv6_vip_and_counts_them() {
    if !privileged("fenced_drops_ns_and_ipv6_for_ipv6_vip_and_counts_them") {
        return;
    }
    let mut l = Loaded::new().with_vip6(VipState::fenced(OUR_MAC));
    l.answering();
    let mut hop_limit_64 = ns_for(VIP6);
    hop_limit_64[21] = 64;
    let solicitations = [ns_for(VIP6), dad_ns(), hop_limit_64];
    for frame in &solicitations {
        let (action, out) = l.run(frame);
        assert_eq!(action, XDP_DROP);
        assert_eq!(&out, frame, "a dropped frame is not rewritten");
    }
    for _ in 0..5 {
        let frame = udp6_to(VIP6);
        let (action, out) = l.run(&frame);
        assert_eq!(action, XDP_DROP);
        assert_eq!(out, frame);
    }
    let s = l.stats6();
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (0, 3, 5));
    assert_eq!(s.last_reply_ns, 0);
    // A deadline in the past is fenced too; a future one answers, and IPv6 to the VIP passes.
    l.set6(VipState::answering_until(OUR_MAC, monotonic_ns() - 1));
    assert_eq!(l.run(&ns_for(VIP6)).0, XDP_DROP);
    l.set6(answering_state());
    assert_eq!(l.run(&ns_for(VIP6)).0, XDP_TX);
    let frame = udp6_to(VIP6);
    assert_eq!(l.run(&frame), (XDP_PASS, frame));
    // Answering, a solicitation of another form is the kernel's to judge: passed untouched.
    let mut bad_checksum = ns_for(VIP6);
    bad_checksum[57] ^= 1;
    for frame in [&solicitations[2], &bad_checksum] {
        assert_eq!(l.run(frame), (XDP_PASS, frame.clone()));
    }
    let s = l.stats6();
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (1, 4, 5));
    assert_eq!(
        l.stats(),
        VipStats::default(),
        "the IPv4 VIP counted nothing"
    );
}

#[test]
fn other_ipv6_passes_untouched_in_both_states() {
    if !privileged("other_ipv6_passes_untouched_in_both_states") {
        return;
    }
    let mut l = Loaded::new().with_vip6(VipState::fenced(OUR_MAC));
    let (all_nodes_ip, all_nodes_mac) = all_nodes();
    let mut mapped = [0u8; 16];
    mapped[10..12].copy_from_slice(&[0xff, 0xff]);
    mapped[12..].copy_from_slice(&VIP);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("NS for the node's own address", ns_for(NODE6)),
        ("IPv6 to the node's own address", udp6_to(NODE6)),
        (
            "our own NA looped back",
            build_na(all_nodes_mac, OUR_MAC, VIP6, all_nodes_ip, NA_FLAG_OVERRIDE).to_vec(),
        ),
        ("NS for ::ffff:<IPv4 VIP>", ns_for(mapped)),
        ("IPv6 to ::ffff:<IPv4 VIP>", udp6_to(mapped)),
        ("truncated NS (77 bytes)", ns_for(VIP6)[..77].to_vec()),
        ("truncated IPv6 header", udp6_to(VIP6)[..53].to_vec()),
        ("Ethernet header only", ns_for(VIP6)[..ETH_LEN].to_vec()),
        (
            "tagged NS for the node's own address",
            tagged(&ns_for(NODE6), 100, 0),
        ),
        (
            "truncated tagged NS",
            tagged(&ns_for(VIP6), 100, 0)[..81].to_vec(),
        ),
        (
            "QinQ NS for the VIP",
            tagged(&tagged(&ns_for(VIP6), 200, 0), 100, 0),
        ),
    ];
    for (state, set_ipv4) in [
        (answering_state(), Loaded::answering as fn(&mut Loaded)),
        (VipState::fenced(OUR_MAC), Loaded::fenced),
    ] {
        l.set6(state);
        set_ipv4(&mut l);
        for (name, frame) in &cases {
            let (action, out) = l.run(frame);
            assert_eq!(action, XDP_PASS, "{name}");
            assert_eq!(&out, frame, "{name} must pass unmodified");
        }
    }
    assert_eq!(l.stats6(), VipStats::default(), "no IPv6 VIP counter moved");
    assert_eq!(l.stats(), VipStats::default(), "no IPv4 VIP counter moved");
}

#[test]
fn tagged_ns_for_ipv6_vip_is_answered_keeping_the_tag() {
    if !privileged("tagged_ns_for_ipv6_vip_is_answered_keeping_the_tag") {
        return;
    }
    let mut l = Loaded::new().with_vip6(answering_state());
    let mut runs = 0;
    for (vid, pcp, dei) in [(100u16, 0u8, false), (0, 5, false), (4094, 7, true)] {
        let mut request = tagged(&ns_for(VIP6), vid, pcp);
        let mut expected = tagged(&na_to_client(), vid, pcp);
        if dei {
            request[14] |= 0x10;
            expected[14] |= 0x10;
        }
        let (action, out) = l.run(&request);
        runs += 1;
        assert_eq!(action, XDP_TX, "vid {vid}");
        assert_eq!(out, expected, "vid {vid} pcp {pcp} dei {dei}");
    }
    let s = l.stats6();
    assert_eq!((s.replied, s.requests_dropped), (runs, 0));
    // Fenced, tagged: the NS and IPv6 to the VIP are dropped.
    l.set6(VipState::fenced(OUR_MAC));
    for frame in [
        tagged(&ns_for(VIP6), 100, 0),
        tagged(&udp6_to(VIP6), 100, 3),
    ] {
        let (action, out) = l.run(&frame);
        assert_eq!(action, XDP_DROP);
        assert_eq!(out, frame);
    }
    let s = l.stats6();
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (runs, 1, 1));
}

#[test]
fn na_from_another_mac_counts_a_conflict_for_ipv6_vip() {
    if !privileged("na_from_another_mac_counts_a_conflict_for_ipv6_vip") {
        return;
    }
    let mut l = Loaded::new().with_vip6(answering_state());
    let (all_nodes_ip, all_nodes_mac) = all_nodes();
    let na = build_na(
        all_nodes_mac,
        STRANGER_MAC,
        VIP6,
        all_nodes_ip,
        NA_FLAG_OVERRIDE,
    )
    .to_vec();
    assert_eq!(l.run(&na), (XDP_PASS, na.clone()));
    let tagged_na = tagged(&na, 100, 0);
    assert_eq!(l.run(&tagged_na), (XDP_PASS, tagged_na));
    assert_eq!(l.stats6().conflicts, 2);
    // Fenced, the new holder's advertisement is expected: no conflict.
    l.set6(VipState::fenced(OUR_MAC));
    assert_eq!(l.run(&na), (XDP_PASS, na));
    assert_eq!(l.stats6().conflicts, 2);
}

/// `frame` (untagged IPv6) with the extension header `header` of type `kind` between the IPv6
/// header and its message (next header and payload length rewritten; the ICMPv6 checksum does not
/// cover extension headers).
fn behind(frame: &[u8], kind: u8, header: &[u8]) -> Vec<u8> {
    let l3 = ETH_LEN;
    let mut out = frame[..l3 + 40].to_vec();
    let mut header = header.to_vec();
    header[0] = out[l3 + 6];
    out[l3 + 6] = kind;
    out.extend_from_slice(&header);
    out.extend_from_slice(&frame[l3 + 40..]);
    let payload = u16::try_from(out.len() - l3 - 40).expect("small");
    out[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// A Hop-by-Hop Options header (a PadN) and the Fragment header of a first fragment.
const HBH: (u8, [u8; 8]) = (0, [0, 0, 1, 4, 0, 0, 0, 0]);
const FIRST_FRAGMENT: (u8, [u8; 8]) = (44, [0, 0, 0, 1, 0x12, 0x34, 0x56, 0x78]);

/// Issue 16, item 19: an NS behind an extension header is dropped for a fenced VIP (the kernel
/// would answer it for an address it still has), and passed to the kernel for an answering one;
/// the same NS without one keeps its behaviour.
#[test]
fn fenced_drops_ns_behind_extension_headers() {
    if !privileged("fenced_drops_ns_behind_extension_headers") {
        return;
    }
    let mut l = Loaded::new().with_vip6(VipState::fenced(OUR_MAC));
    let frames: Vec<Vec<u8>> = [HBH, FIRST_FRAGMENT]
        .iter()
        .flat_map(|(kind, header)| {
            [
                behind(&ns_for(VIP6), *kind, header),
                behind(&dad_ns(), *kind, header),
            ]
        })
        .collect();
    for frame in &frames {
        assert_eq!(l.run(frame), (XDP_DROP, frame.clone()), "{frame:02x?}");
    }
    assert_eq!(l.run(&ns_for(VIP6)), (XDP_DROP, ns_for(VIP6)));
    let s = l.stats6();
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (0, 5, 0));
    // Answering: behind an extension header it is the kernel's, untouched; without, answered.
    l.set6(answering_state());
    for frame in &frames {
        assert_eq!(l.run(frame), (XDP_PASS, frame.clone()), "{frame:02x?}");
    }
    assert_eq!(l.run(&ns_for(VIP6)), (XDP_TX, na_to_client()));
    let s = l.stats6();
    assert_eq!((s.replied, s.requests_dropped, s.ip_dropped), (1, 5, 0));
}
