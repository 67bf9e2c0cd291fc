//! Host tests for the frame logic: real and malformed frames through [`process`], byte-exact.

extern crate std;

use std::{format, string::String, vec, vec::Vec};

use super::*;

const VIP: [u8; 4] = [10, 77, 0, 100];
const OTHER_VIP: [u8; 4] = [10, 77, 0, 101];
const NODE_IP: [u8; 4] = [10, 77, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 77, 0, 9];
const OUR_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 0x09];
const STRANGER_MAC: [u8; 6] = [0x02, 0xee, 0, 0, 0, 0x66];
const BCAST: [u8; 6] = [0xff; 6];
const NOW: u64 = 5_000_000_000;

/// A VIP table: VIP and VIP6 answering until `vip_deadline`, OTHER_VIP and OTHER_VIP6 fenced.
struct Table {
    entries: Vec<(VipKey, VipState)>,
    now: u64,
}

impl Table {
    fn new(vip_deadline: u64) -> Self {
        Self {
            entries: vec![
                (
                    VipKey::v4(VIP),
                    VipState::answering_until(OUR_MAC, vip_deadline),
                ),
                (VipKey::v4(OTHER_VIP), VipState::fenced(OUR_MAC)),
                (
                    VipKey::v6(VIP6),
                    VipState::answering_until(OUR_MAC, vip_deadline),
                ),
                (VipKey::v6(OTHER_VIP6), VipState::fenced(OUR_MAC)),
            ],
            now: NOW,
        }
    }
    fn answering() -> Self {
        Self::new(NOW + 1_000_000_000)
    }
    fn fenced() -> Self {
        Self::new(0)
    }
}

impl VipLookup for Table {
    fn state(&self, vip: &VipKey) -> Option<VipState> {
        self.entries.iter().find(|(k, _)| k == vip).map(|(_, v)| *v)
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
}

fn request(eth_dst: [u8; 6], sha: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    build_arp(eth_dst, sha, ARP_OP_REQUEST, sha, spa, [0; 6], tpa).to_vec()
}

fn ipv4(dst: [u8; 4]) -> Vec<u8> {
    build_ipv4(OUR_MAC, CLIENT_MAC, CLIENT_IP, dst, 1).to_vec()
}

/// Run `process` and return the verdict and the frame as it is afterwards.
fn run(table: &Table, mut frame: Vec<u8>) -> (Verdict, Vec<u8>) {
    let v = process(frame.as_mut_slice(), table);
    (v, frame)
}

fn assert_untouched(table: &Table, frame: Vec<u8>, expected: Verdict) {
    let (v, out) = run(table, frame.clone());
    assert_eq!(v, expected);
    assert_eq!(
        out, frame,
        "a frame we do not answer must never be modified"
    );
}

#[test]
fn broadcast_request_for_vip_becomes_exact_reply() {
    let (v, out) = run(
        &Table::answering(),
        request(BCAST, CLIENT_MAC, CLIENT_IP, VIP),
    );
    assert_eq!(v, Verdict::new(Outcome::Replied, VipKey::v4(VIP)));
    assert_eq!(v.xdp_action(), XDP_TX);
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
}

#[test]
fn unicast_request_for_vip_is_answered() {
    // Linux re-validates a REACHABLE/STALE entry with a unicast request to the cached MAC.
    let (v, out) = run(
        &Table::answering(),
        request(OUR_MAC, CLIENT_MAC, CLIENT_IP, VIP),
    );
    assert_eq!(v.xdp_action(), XDP_TX);
    assert_eq!(&out[0..6], &CLIENT_MAC);
    assert_eq!(&out[6..12], &OUR_MAC);
}

#[test]
fn probe_with_zero_sender_is_answered_to_the_prober() {
    // RFC 5227 probe: sender IP 0.0.0.0. The reply goes to the prober's MAC with target IP 0.0.0.0,
    // as the kernel defends an address.
    let (v, out) = run(&Table::answering(), request(BCAST, CLIENT_MAC, [0; 4], VIP));
    assert_eq!(v.xdp_action(), XDP_TX);
    let expected = build_arp(
        CLIENT_MAC,
        OUR_MAC,
        ARP_OP_REPLY,
        OUR_MAC,
        VIP,
        CLIENT_MAC,
        [0; 4],
    );
    assert_eq!(out, expected.to_vec());
}

#[test]
fn padded_minimum_size_frame_keeps_its_padding() {
    let mut frame = request(BCAST, CLIENT_MAC, CLIENT_IP, VIP);
    frame.resize(60, 0xab);
    let (v, out) = run(&Table::answering(), frame);
    assert_eq!(v.xdp_action(), XDP_TX);
    assert_eq!(out.len(), 60);
    assert!(out[42..].iter().all(|b| *b == 0xab));
    assert_eq!(&out[20..22], &[0, 2]);
}

#[test]
fn ieee802_hardware_type_is_answered_as_ethernet() {
    let mut frame = request(BCAST, CLIENT_MAC, CLIENT_IP, VIP);
    frame[15] = 6;
    let (v, out) = run(&Table::answering(), frame);
    assert_eq!(v.xdp_action(), XDP_TX);
    assert_eq!(&out[14..16], &[0, 1]);
}

#[test]
fn fenced_request_for_vip_is_dropped_untouched() {
    let vip = VipKey::v4(VIP);
    assert_untouched(
        &Table::fenced(),
        request(BCAST, CLIENT_MAC, CLIENT_IP, VIP),
        Verdict::new(Outcome::DroppedRequest, vip),
    );
    assert_untouched(
        &Table::answering(),
        request(BCAST, CLIENT_MAC, CLIENT_IP, OTHER_VIP),
        Verdict::new(Outcome::DroppedRequest, VipKey::v4(OTHER_VIP)),
    );
}

#[test]
fn request_after_deadline_is_dropped() {
    // The deadline is exclusive: at exactly the deadline we are already silent.
    let table = Table::new(NOW);
    let (v, _) = run(&table, request(BCAST, CLIENT_MAC, CLIENT_IP, VIP));
    assert_eq!(v.xdp_action(), XDP_DROP);
    let table = Table::new(NOW + 1);
    let (v, _) = run(&table, request(BCAST, CLIENT_MAC, CLIENT_IP, VIP));
    assert_eq!(v.xdp_action(), XDP_TX);
}

#[test]
fn request_from_non_unicast_sender_is_dropped_not_answered() {
    for bad in [BCAST, [0; 6], [0x01, 0x00, 0x5e, 0, 0, 1]] {
        let mut frame = request(BCAST, CLIENT_MAC, CLIENT_IP, VIP);
        frame[22..28].copy_from_slice(&bad);
        assert_untouched(
            &Table::answering(),
            frame,
            Verdict::new(Outcome::DroppedRequest, VipKey::v4(VIP)),
        );
    }
}

#[test]
fn request_for_other_address_passes_untouched() {
    for t in [Table::answering(), Table::fenced()] {
        assert_untouched(
            &t,
            request(BCAST, CLIENT_MAC, CLIENT_IP, NODE_IP),
            Verdict::PASS,
        );
    }
}

#[test]
fn reply_for_vip_passes() {
    // An ARP reply (op 2) from the VIP's current holder, e.g. a gratuitous reply from the new
    // primary, reaches a fenced node's kernel so its own neighbour cache learns the new MAC.
    let frame = build_arp(
        BCAST,
        STRANGER_MAC,
        ARP_OP_REPLY,
        STRANGER_MAC,
        VIP,
        BCAST,
        VIP,
    )
    .to_vec();
    assert_untouched(&Table::fenced(), frame, Verdict::PASS);
}

#[test]
fn gratuitous_arp_from_another_mac_while_answering_is_a_conflict() {
    let vip = VipKey::v4(VIP);
    let garp_request = build_arp(
        BCAST,
        STRANGER_MAC,
        ARP_OP_REQUEST,
        STRANGER_MAC,
        VIP,
        [0; 6],
        VIP,
    )
    .to_vec();
    let garp_reply = build_arp(
        BCAST,
        STRANGER_MAC,
        ARP_OP_REPLY,
        STRANGER_MAC,
        VIP,
        BCAST,
        VIP,
    )
    .to_vec();
    assert_untouched(
        &Table::answering(),
        garp_request.clone(),
        Verdict::new(Outcome::Conflict, vip),
    );
    assert_untouched(
        &Table::answering(),
        garp_reply,
        Verdict::new(Outcome::Conflict, vip),
    );
    // A fenced node holds no claim: the GARP request for the VIP is simply not answered.
    assert_untouched(
        &Table::fenced(),
        garp_request,
        Verdict::new(Outcome::DroppedRequest, vip),
    );
}

#[test]
fn our_own_mac_claiming_the_vip_is_no_conflict() {
    let frame = build_arp(BCAST, OUR_MAC, ARP_OP_REPLY, OUR_MAC, VIP, BCAST, VIP).to_vec();
    assert_untouched(&Table::answering(), frame, Verdict::PASS);
}

#[test]
fn malformed_arp_passes_untouched() {
    let base = request(BCAST, CLIENT_MAC, CLIENT_IP, VIP);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = base.clone();
    f[18] = 8;
    cases.push(("hlen 8", f));
    let mut f = base.clone();
    f[19] = 16;
    cases.push(("plen 16", f));
    let mut f = base.clone();
    f[16..18].copy_from_slice(&[0x86, 0xdd]);
    cases.push(("ptype IPv6", f));
    let mut f = base.clone();
    f[14..16].copy_from_slice(&[0, 7]);
    cases.push(("htype ARCnet", f));
    cases.push(("truncated to 41 bytes", base[..41].to_vec()));
    cases.push(("Ethernet header only", base[..14].to_vec()));
    cases.push(("13 bytes", base[..13].to_vec()));
    cases.push(("empty", Vec::new()));
    for t in [Table::answering(), Table::fenced()] {
        for (name, frame) in &cases {
            let (v, out) = run(&t, frame.clone());
            assert_eq!(v, Verdict::PASS, "{name}");
            assert_eq!(&out, frame, "{name} must not be modified");
        }
    }
}

/// `frame` with one 802.1Q tag inserted after the MAC addresses.
fn tagged(frame: &[u8], vid: u16, pcp: u8) -> Vec<u8> {
    let tci = (u16::from(pcp) << 13) | vid;
    let mut out = frame[..12].to_vec();
    out.extend_from_slice(&ETH_P_8021Q);
    out.extend_from_slice(&tci.to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

#[test]
fn tagged_request_for_vip_is_answered_keeping_the_tag() {
    // VID 0 is a priority tag: the kernel delivers it to the parent untagged, so it is answered too.
    for (vid, pcp) in [(100, 0), (4094, 7), (0, 3), (1, 1)] {
        let frame = tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), vid, pcp);
        let (v, out) = run(&Table::answering(), frame);
        assert_eq!(
            v,
            Verdict::new(Outcome::Replied, VipKey::v4(VIP)),
            "vid {vid}"
        );
        let reply = build_arp(
            CLIENT_MAC,
            OUR_MAC,
            ARP_OP_REPLY,
            OUR_MAC,
            VIP,
            CLIENT_MAC,
            CLIENT_IP,
        );
        assert_eq!(out, tagged(&reply, vid, pcp), "vid {vid} pcp {pcp}");
    }
}

#[test]
fn tagged_padded_ieee802_request_is_answered_and_keeps_padding_and_dei() {
    let mut frame = tagged(&request(OUR_MAC, CLIENT_MAC, CLIENT_IP, VIP), 7, 2);
    frame[14] |= 0x10; // DEI
    frame[19] = 6; // htype IEEE 802
    frame.resize(64, 0xab);
    let (v, out) = run(&Table::answering(), frame.clone());
    assert_eq!(v.xdp_action(), XDP_TX);
    assert_eq!(out.len(), 64);
    assert_eq!(&out[12..18], &frame[12..18], "tag and ethertype unchanged");
    assert_eq!(&out[18..20], &[0, 1], "answered as Ethernet");
    assert_eq!(&out[24..26], &[0, 2], "op reply");
    assert!(out[46..].iter().all(|b| *b == 0xab), "padding kept");
}

#[test]
fn tagged_fenced_request_and_ipv4_for_vip_are_dropped_untouched() {
    let vip = VipKey::v4(VIP);
    let arp = tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), 100, 0);
    assert_untouched(
        &Table::fenced(),
        arp,
        Verdict::new(Outcome::DroppedRequest, vip),
    );
    let ip = tagged(&ipv4(VIP), 100, 0);
    assert_untouched(
        &Table::fenced(),
        ip.clone(),
        Verdict::new(Outcome::DroppedIp, vip),
    );
    assert_untouched(&Table::answering(), ip, Verdict::PASS);
    // A non-unicast requester on a VLAN is dropped as untagged.
    let mut bad = tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), 100, 0);
    bad[26..32].copy_from_slice(&BCAST);
    assert_untouched(
        &Table::answering(),
        bad,
        Verdict::new(Outcome::DroppedRequest, vip),
    );
}

#[test]
fn tagged_conflict_is_counted_and_passed() {
    let mut garp = build_arp(
        BCAST,
        STRANGER_MAC,
        ARP_OP_REPLY,
        STRANGER_MAC,
        VIP,
        BCAST,
        VIP,
    )
    .to_vec();
    garp = tagged(&garp, 100, 0);
    assert_untouched(
        &Table::answering(),
        garp,
        Verdict::new(Outcome::Conflict, VipKey::v4(VIP)),
    );
}

#[test]
fn tagged_frames_not_about_a_vip_pass_untouched() {
    let req = request(BCAST, CLIENT_MAC, CLIENT_IP, VIP);
    let mut bad_plen = req.clone();
    bad_plen[19] = 6;
    let mut v6 = ipv4(VIP);
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    let mut bad_ihl = ipv4(VIP);
    bad_ihl[14] = 0x44;
    let full = tagged(&req, 100, 0);
    let cases = [
        (
            "other address",
            tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, NODE_IP), 100, 0),
        ),
        ("IPv4 to other address", tagged(&ipv4(NODE_IP), 100, 0)),
        ("bad plen", tagged(&bad_plen, 100, 0)),
        ("IPv6", tagged(&v6, 100, 0)),
        ("IPv4 ihl 4", tagged(&bad_ihl, 100, 0)),
        ("truncated ARP", full[..45].to_vec()),
        ("truncated IPv4", tagged(&ipv4(VIP), 100, 0)[..37].to_vec()),
        ("tag only", full[..18].to_vec()),
        ("tag cut", full[..17].to_vec()),
        ("TPID only", full[..15].to_vec()),
    ];
    for t in [Table::answering(), Table::fenced()] {
        for (name, frame) in &cases {
            let (v, out) = run(&t, frame.clone());
            assert_eq!(v, Verdict::PASS, "{name}");
            assert_eq!(&out, frame, "{name} must not be modified");
        }
    }
}

#[test]
fn qinq_and_8021ad_pass_untouched() {
    // Stacked tags: the program does not know which pair of tags a VIP belongs to.
    let inner = tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), 200, 0);
    let double = tagged(&inner, 100, 0);
    let mut s_tag = inner.clone();
    s_tag[12..14].copy_from_slice(&ETH_P_8021AD);
    let mut s_tag_only = tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), 100, 0);
    s_tag_only[12..14].copy_from_slice(&ETH_P_8021AD);
    let mut s_over_c = tagged(&inner, 100, 0);
    s_over_c[12..14].copy_from_slice(&ETH_P_8021AD);
    for t in [Table::answering(), Table::fenced()] {
        for frame in [&double, &s_tag, &s_tag_only, &s_over_c] {
            assert_untouched(&t, frame.clone(), Verdict::PASS);
        }
        assert_untouched(&t, tagged(&tagged(&ipv4(VIP), 1, 0), 2, 0), Verdict::PASS);
    }
}

#[test]
fn answering_is_not_per_vlan() {
    // The table has no VLAN dimension: a VIP is served on every VLAN of the interface and untagged,
    // like the kernel answers ARP for a local address on any interface (arp_ignore=0).
    for vid in [1, 100, 200] {
        let (v, _) = run(
            &Table::answering(),
            tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), vid, 0),
        );
        assert_eq!(v.xdp_action(), XDP_TX, "vid {vid}");
        let (v, _) = run(
            &Table::fenced(),
            tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), vid, 0),
        );
        assert_eq!(v.xdp_action(), XDP_DROP, "vid {vid}");
    }
}

#[test]
fn other_ethertypes_pass() {
    let mut f = ipv4(VIP);
    f[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_untouched(&Table::fenced(), f, Verdict::PASS);
}

#[test]
fn ipv4_to_vip_is_dropped_only_while_fenced() {
    let vip = VipKey::v4(VIP);
    assert_untouched(
        &Table::fenced(),
        ipv4(VIP),
        Verdict::new(Outcome::DroppedIp, vip),
    );
    assert_untouched(&Table::answering(), ipv4(VIP), Verdict::PASS);
    assert_eq!(Verdict::new(Outcome::DroppedIp, vip).xdp_action(), XDP_DROP);
}

#[test]
fn ipv4_to_other_address_passes() {
    for t in [Table::answering(), Table::fenced()] {
        assert_untouched(&t, ipv4(NODE_IP), Verdict::PASS);
    }
}

#[test]
fn malformed_ipv4_passes() {
    let good = ipv4(VIP);
    let mut v6 = good.clone();
    v6[14] = 0x65;
    let mut short_ihl = good.clone();
    short_ihl[14] = 0x44;
    for (name, frame) in [
        ("truncated", good[..33].to_vec()),
        ("version 6", v6),
        ("ihl 4", short_ihl),
    ] {
        let (v, out) = run(&Table::fenced(), frame.clone());
        assert_eq!(v, Verdict::PASS, "{name}");
        assert_eq!(out, frame, "{name}");
    }
}

/// A table whose clock must not be read: frames that concern no VIP are judged without it.
struct NoClock(Table);

impl VipLookup for NoClock {
    fn state(&self, vip: &VipKey) -> Option<VipState> {
        self.0.state(vip)
    }
    fn now_ns(&self) -> u64 {
        panic!("the clock must not be read for frames that concern no VIP")
    }
}

#[test]
fn time_is_read_only_for_vip_frames() {
    let t = NoClock(Table::answering());
    let mut f = ipv4(NODE_IP);
    assert_eq!(process(f.as_mut_slice(), &t), Verdict::PASS);
    let mut f = request(BCAST, CLIENT_MAC, CLIENT_IP, NODE_IP);
    assert_eq!(process(f.as_mut_slice(), &t), Verdict::PASS);
}

// ---------------------------------------------------------------------------------------------
// IPv6: Neighbor Discovery (see ipv6.rs). Every frame here, and every expected answer, is written
// field by field from RFC 4861 / RFC 8200, with its own checksum code, so a mistake shared by
// `build_ns`/`build_na`/`icmpv6_checksum` and the code under test cannot cancel out.
// ---------------------------------------------------------------------------------------------

/// 2001:db8:77::100, answering or fenced with VIP (same deadline).
const VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
/// 2001:db8:77::101, always fenced.
const OTHER_VIP6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x01,
];
/// 2001:db8:77::1, the node's own address: no VIP.
const NODE6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
/// 2001:db8:77::9 and fe80::cc:9, a client's global and link-local addresses.
const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x09,
];
const CLIENT6_LL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xcc, 0, 0x09];
const UNSPECIFIED: [u8; 16] = [0; 16];
/// ff02::1 and its MAC (RFC 2464 7: 33:33 + the last 32 bits).
const ALL_NODES6: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC6: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];
/// ff02::1:ff00:100, VIP6's solicited-node group (RFC 4291 2.7.1), and its MAC, written out.
const VIP6_SN: [u8; 16] = [
    0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0x00, 0x01, 0x00,
];
const VIP6_SN_MAC: [u8; 6] = [0x33, 0x33, 0xff, 0x00, 0x01, 0x00];
/// ND option types (RFC 4861 4.6) and the RFC 7527 nonce.
const OPT_SLLA: u8 = 1;
const OPT_TLLA: u8 = 2;
const OPT_NONCE: u8 = 14;
const NONCE: [u8; 6] = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02];
const HOP_LIMIT_ND: u8 = 255;
const NH_ICMPV6: u8 = 58;
const FLAG_S: u8 = 0x40;
const FLAG_O: u8 = 0x20;

fn key6(a: [u8; 16]) -> VipKey {
    VipKey::v6(a)
}

/// The ICMPv6 checksum (RFC 8200 8.1, RFC 4443 2.3), written independently of ipv6.rs: the
/// one's-complement sum of the pseudo-header (source, destination, 32-bit upper-layer length, 24
/// zero bits, next header 58) and `body`, folded with end-around carry. With the checksum field of
/// `body` zero this is the sum to complement; over a correct message it is 0xffff.
fn ones_sum(src: &[u8; 16], dst: &[u8; 16], length: u32, body: &[u8]) -> u16 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(src);
    bytes.extend_from_slice(dst);
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&[0, 0, 0, NH_ICMPV6]);
    bytes.extend_from_slice(body);
    if bytes.len() % 2 == 1 {
        bytes.push(0);
    }
    let mut sum: u64 = bytes
        .chunks(2)
        .map(|w| (u64::from(w[0]) << 8) | u64::from(w[1]))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).expect("folded to 16 bits")
}

/// Write the checksum of the ICMPv6 message in `f` (IPv6 header at `l3`), over `len` bytes of it
/// with `len` as the pseudo-header length (normally the payload length).
fn fix_checksum(f: &mut [u8], l3: usize, len: usize) {
    let src: [u8; 16] = f[l3 + 8..l3 + 24].try_into().expect("src");
    let dst: [u8; 16] = f[l3 + 24..l3 + 40].try_into().expect("dst");
    let icmp = l3 + 40;
    f[icmp + 2] = 0;
    f[icmp + 3] = 0;
    let len32 = u32::try_from(len).expect("small");
    let sum = !ones_sum(&src, &dst, len32, &f[icmp..icmp + len]);
    f[icmp + 2..icmp + 4].copy_from_slice(&sum.to_be_bytes());
}

/// Whether the ICMPv6 checksum of the message in `f` (IPv6 header at `l3`) is right, by the
/// payload length it declares.
fn checksum_verifies(f: &[u8], l3: usize) -> bool {
    let src: [u8; 16] = f[l3 + 8..l3 + 24].try_into().expect("src");
    let dst: [u8; 16] = f[l3 + 24..l3 + 40].try_into().expect("dst");
    let len = usize::from(u16::from_be_bytes([f[l3 + 4], f[l3 + 5]]));
    let len32 = u32::try_from(len).expect("small");
    ones_sum(&src, &dst, len32, &f[l3 + 40..l3 + 40 + len]) == 0xffff
}

/// An untagged Ethernet + IPv6 frame, field by field: version 6, traffic class and flow label 0,
/// payload length from `payload`, `next_header`, `hop_limit`.
fn ipv6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(
        &u16::try_from(payload.len())
            .expect("small payload")
            .to_be_bytes(),
    );
    f.push(next_header);
    f.push(hop_limit);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(payload);
    f
}

/// An ICMPv6 message in an untagged frame with hop limit 255 and its checksum right.
fn icmp6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    message: &[u8],
) -> Vec<u8> {
    let mut f = ipv6_frame(eth_dst, eth_src, src, dst, NH_ICMPV6, HOP_LIMIT_ND, message);
    fix_checksum(&mut f, ETH_LEN, message.len());
    f
}

/// A Neighbor Solicitation (RFC 4861 4.3): type 135, code 0, reserved, target, and `option` (type
/// and 6 bytes of data in one 8-byte option) or none.
fn ns6(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    target: [u8; 16],
    option: Option<(u8, [u8; 6])>,
) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target);
    if let Some((kind, data)) = option {
        m.push(kind);
        m.push(1);
        m.extend_from_slice(&data);
    }
    icmp6_frame(eth_dst, eth_src, src, dst, &m)
}

/// A Neighbor Advertisement (RFC 4861 4.4) from `mac`/`src` for `target` with `flags`, and `mac` as
/// the target link-layer address.
fn na6(
    eth_dst: [u8; 6],
    mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    target: [u8; 16],
    flags: u8,
) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target);
    m.extend_from_slice(&[OPT_TLLA, 1]);
    m.extend_from_slice(&mac);
    icmp6_frame(eth_dst, mac, src, dst, &m)
}

/// The solicitation every resolver sends for VIP6: to its solicited-node group, from the client,
/// with the client's MAC as source link-layer address.
fn client_ns(target: [u8; 16]) -> Vec<u8> {
    let sn = solicited_node(&target);
    let sn_mac = [0x33, 0x33, sn[12], sn[13], sn[14], sn[15]];
    ns6(
        sn_mac,
        CLIENT_MAC,
        CLIENT6,
        sn,
        target,
        Some((OPT_SLLA, CLIENT_MAC)),
    )
}

/// Duplicate address detection for VIP6 (RFC 4862 5.4.2): from `::` to the solicited-node group,
/// with the RFC 7527 nonce option Linux sends.
fn dad_ns() -> Vec<u8> {
    ns6(
        VIP6_SN_MAC,
        STRANGER_MAC,
        UNSPECIFIED,
        VIP6_SN,
        VIP6,
        Some((OPT_NONCE, NONCE)),
    )
}

/// Our answer to `client_ns(VIP6)`: to the client's MAC and address, Solicited and Override.
fn expected_na_to_client() -> Vec<u8> {
    na6(CLIENT_MAC, OUR_MAC, VIP6, CLIENT6, VIP6, FLAG_S | FLAG_O)
}

#[test]
fn reference_frames_are_the_documented_layout() {
    // The test's own builders against the crate's helpers and a hand-checked checksum, so the
    // expected answers below are known to be what RFC 4861 describes.
    let ns = client_ns(VIP6);
    assert_eq!(ns.len(), 86);
    assert_eq!(&ns[0..6], &VIP6_SN_MAC);
    assert_eq!(&ns[38..54], &VIP6_SN);
    assert_eq!(solicited_node(&VIP6), VIP6_SN);
    assert!(checksum_verifies(&ns, ETH_LEN));
    assert_eq!(
        ns,
        build_ns(
            VIP6_SN_MAC,
            CLIENT_MAC,
            CLIENT6,
            VIP6_SN,
            VIP6,
            OPT_SLLA,
            CLIENT_MAC
        )
        .to_vec()
    );
    let na = expected_na_to_client();
    assert!(checksum_verifies(&na, ETH_LEN));
    assert_eq!(
        na,
        build_na(CLIENT_MAC, OUR_MAC, VIP6, CLIENT6, FLAG_S | FLAG_O).to_vec()
    );
    assert_eq!(all_nodes(), (ALL_NODES6, ALL_NODES_MAC6));
    // A checksum worked by hand: pseudo-header ::1 -> ::2, length 4, next header 58 sums to
    // 1 + 2 + 4 + 58 = 65 (0x41); the message 0x8000 0x0000 adds 0x8000: 0x8041, complement
    // 0x7fbe.
    let mut one = [0u8; 16];
    one[15] = 1;
    let mut two = [0u8; 16];
    two[15] = 2;
    assert_eq!(!ones_sum(&one, &two, 4, &[0x80, 0, 0, 0]), 0x7fbe);
    let mut m = [0u8; 32];
    m[0] = 0x80;
    // And the crate's checksum agrees with ours on a 32-byte message.
    assert_eq!(
        icmpv6_checksum(&one, &two, &m),
        !ones_sum(&one, &two, 32, &m)
    );
}

#[test]
fn ns_from_client_becomes_exact_na() {
    let (v, out) = run(&Table::answering(), client_ns(VIP6));
    assert_eq!(v, Verdict::new(Outcome::Replied, key6(VIP6)));
    assert_eq!(v.xdp_action(), XDP_TX);
    assert_eq!(out, expected_na_to_client());
    assert!(checksum_verifies(&out, ETH_LEN), "NA checksum");
    // Field by field, the parts that matter to a resolver.
    assert_eq!(&out[0..6], &CLIENT_MAC, "Ethernet dst: the requester");
    assert_eq!(&out[6..12], &OUR_MAC, "Ethernet src: us");
    assert_eq!(out[21], 255, "hop limit");
    assert_eq!(&out[22..38], &VIP6, "from the VIP");
    assert_eq!(&out[38..54], &CLIENT6, "to the solicitation's source");
    assert_eq!((out[54], out[55]), (136, 0), "NA, code 0");
    assert_eq!(
        out[58],
        FLAG_S | FLAG_O,
        "Solicited and Override, not Router"
    );
    assert_eq!(&out[62..78], &VIP6, "target");
    assert_eq!(&out[78..86], &[2, 1, 2, 0xaa, 0, 0, 0, 1], "TLLA = our MAC");
    let view = NdView::parse(out.as_slice().try_into().expect("86 bytes")).expect("IPv6");
    assert!(view.checksum_ok);
}

#[test]
fn unicast_and_link_local_ns_are_answered_to_the_source() {
    // Neighbour unreachability detection: unicast to the VIP itself, from a link-local source.
    let ns = ns6(
        OUR_MAC,
        CLIENT_MAC,
        CLIENT6_LL,
        VIP6,
        VIP6,
        Some((OPT_SLLA, CLIENT_MAC)),
    );
    let (v, out) = run(&Table::answering(), ns);
    assert_eq!(v, Verdict::new(Outcome::Replied, key6(VIP6)));
    assert_eq!(
        out,
        na6(CLIENT_MAC, OUR_MAC, VIP6, CLIENT6_LL, VIP6, FLAG_S | FLAG_O)
    );
}

#[test]
fn na_goes_to_the_source_link_layer_address_not_the_ethernet_source() {
    // As the kernel (ndisc_recv_ns): the SLLA option is the address to answer; a proxy or bridge
    // may have rewritten the Ethernet source.
    let ns = ns6(
        VIP6_SN_MAC,
        STRANGER_MAC,
        CLIENT6,
        VIP6_SN,
        VIP6,
        Some((OPT_SLLA, CLIENT_MAC)),
    );
    let (v, out) = run(&Table::answering(), ns);
    assert_eq!(v.xdp_action(), XDP_TX);
    assert_eq!(out, expected_na_to_client());
}

#[test]
fn dad_ns_is_answered_to_all_nodes_with_solicited_clear() {
    // RFC 4861 7.2.4: a solicitation from `::` is answered to ff02::1 with S = 0.
    let (v, out) = run(&Table::answering(), dad_ns());
    assert_eq!(v, Verdict::new(Outcome::Replied, key6(VIP6)));
    let expected = na6(ALL_NODES_MAC6, OUR_MAC, VIP6, ALL_NODES6, VIP6, FLAG_O);
    assert_eq!(out, expected);
    assert_eq!(out[58] & FLAG_S, 0, "S clear");
    assert_eq!(out[58], FLAG_O, "O set");
    assert!(checksum_verifies(&out, ETH_LEN));
    // Any non-SLLA option of the one 8-byte form will do (the nonce is the common one).
    let tlla = ns6(
        VIP6_SN_MAC,
        STRANGER_MAC,
        UNSPECIFIED,
        VIP6_SN,
        VIP6,
        Some((OPT_TLLA, STRANGER_MAC)),
    );
    let (v, out) = run(&Table::answering(), tlla);
    assert_eq!(v.xdp_action(), XDP_TX);
    assert_eq!(out, expected);
}

#[test]
fn fenced_ns_for_vip_is_dropped_untouched() {
    for ns in [client_ns(VIP6), dad_ns()] {
        assert_untouched(
            &Table::fenced(),
            ns,
            Verdict::new(Outcome::DroppedRequest, key6(VIP6)),
        );
    }
    assert_untouched(
        &Table::answering(),
        client_ns(OTHER_VIP6),
        Verdict::new(Outcome::DroppedRequest, key6(OTHER_VIP6)),
    );
    assert_eq!(
        Verdict::new(Outcome::DroppedRequest, key6(VIP6)).xdp_action(),
        XDP_DROP
    );
}

#[test]
fn ns_after_deadline_is_dropped() {
    // Exclusive deadline, as for ARP.
    let (v, out) = run(&Table::new(NOW), client_ns(VIP6));
    assert_eq!(v, Verdict::new(Outcome::DroppedRequest, key6(VIP6)));
    assert_eq!(out, client_ns(VIP6));
    let (v, _) = run(&Table::new(NOW + 1), client_ns(VIP6));
    assert_eq!(v.xdp_action(), XDP_TX);
}

/// Solicitations for VIP6 that are not the one form answered in XDP, each with a right checksum
/// unless the case is about the checksum, so that each is refused for its own reason.
fn unanswerable_ns_for_vip6() -> Vec<(&'static str, Vec<u8>)> {
    let base = client_ns(VIP6);
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();

    let mut f = base.clone();
    f[21] = 254; // not in the checksum
    cases.push(("hop limit 254", f));
    let mut f = base.clone();
    f[21] = 64;
    cases.push(("hop limit 64", f));
    let mut f = base.clone();
    f[57] ^= 0x01;
    cases.push(("bad checksum", f));
    let mut f = base.clone();
    f[55] = 1;
    fix_checksum(&mut f, ETH_LEN, 32);
    cases.push(("code 1", f));
    // Payload length 40 with the checksum right over the 32 bytes with length 32: only the length
    // check refuses it.
    let mut f = base.clone();
    f[18..20].copy_from_slice(&40u16.to_be_bytes());
    fix_checksum(&mut f, ETH_LEN, 32);
    cases.push(("payload length 40, checksum as if 32", f));
    let mut f = base.clone();
    f[18..20].copy_from_slice(&31u16.to_be_bytes());
    fix_checksum(&mut f, ETH_LEN, 32);
    cases.push(("payload length 31, checksum as if 32", f));
    // No option: 24 bytes of ICMPv6 (78-byte frame), and the same padded to 86 bytes.
    let bare = ns6(VIP6_SN_MAC, CLIENT_MAC, CLIENT6, VIP6_SN, VIP6, None);
    assert_eq!(bare.len(), 78);
    let mut padded = bare.clone();
    padded.resize(86, 0);
    cases.push(("no option", bare));
    cases.push(("no option, padded to 86", padded));
    // Two options (SLLA and a nonce): 40 bytes, checksum right.
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&VIP6);
    m.extend_from_slice(&[OPT_SLLA, 1]);
    m.extend_from_slice(&CLIENT_MAC);
    m.extend_from_slice(&[OPT_NONCE, 1]);
    m.extend_from_slice(&NONCE);
    cases.push((
        "two options",
        icmp6_frame(VIP6_SN_MAC, CLIENT_MAC, CLIENT6, VIP6_SN, &m),
    ));
    // One option of 16 bytes (length 2), 40 bytes in all.
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&VIP6);
    m.extend_from_slice(&[OPT_SLLA, 2]);
    m.extend_from_slice(&CLIENT_MAC);
    m.extend_from_slice(&[0; 8]);
    cases.push((
        "option length 2",
        icmp6_frame(VIP6_SN_MAC, CLIENT_MAC, CLIENT6, VIP6_SN, &m),
    ));
    // The 86-byte form with the option length byte 0 (invalid, RFC 4861 4.6).
    let mut f = base.clone();
    f[79] = 0;
    fix_checksum(&mut f, ETH_LEN, 32);
    cases.push(("option length 0", f));
    for (name, mac) in [
        ("SLLA multicast MAC", [0x33, 0x33, 0, 0, 0, 1]),
        ("SLLA IPv4 multicast MAC", [0x01, 0x00, 0x5e, 0, 0, 1]),
        ("SLLA broadcast", BCAST),
        ("SLLA zero MAC", [0; 6]),
    ] {
        cases.push((
            name,
            ns6(
                VIP6_SN_MAC,
                CLIENT_MAC,
                CLIENT6,
                VIP6_SN,
                VIP6,
                Some((OPT_SLLA, mac)),
            ),
        ));
    }
    cases.push((
        "from a unicast source without SLLA (nonce option)",
        ns6(
            VIP6_SN_MAC,
            CLIENT_MAC,
            CLIENT6,
            VIP6_SN,
            VIP6,
            Some((OPT_NONCE, NONCE)),
        ),
    ));
    cases.push((
        "from a multicast source",
        ns6(
            VIP6_SN_MAC,
            CLIENT_MAC,
            ALL_NODES6,
            VIP6_SN,
            VIP6,
            Some((OPT_SLLA, CLIENT_MAC)),
        ),
    ));
    cases.push((
        "DAD with an SLLA option",
        ns6(
            VIP6_SN_MAC,
            STRANGER_MAC,
            UNSPECIFIED,
            VIP6_SN,
            VIP6,
            Some((OPT_SLLA, STRANGER_MAC)),
        ),
    ));
    for (name, dst) in [
        ("DAD to ff02::1", ALL_NODES6),
        ("DAD to the VIP (unicast)", VIP6),
        (
            "DAD to another solicited-node group",
            solicited_node(&NODE6),
        ),
    ] {
        cases.push((
            name,
            ns6(
                VIP6_SN_MAC,
                STRANGER_MAC,
                UNSPECIFIED,
                dst,
                VIP6,
                Some((OPT_NONCE, NONCE)),
            ),
        ));
    }
    // Truncated within the one-option form: the NS itself is there, the option is not.
    cases.push(("cut to 85 bytes", base[..85].to_vec()));
    cases.push(("cut to 78 bytes", base[..78].to_vec()));
    cases
}

#[test]
fn unanswerable_ns_passes_when_answering_and_is_dropped_when_fenced() {
    for (name, frame) in unanswerable_ns_for_vip6() {
        let (v, out) = run(&Table::answering(), frame.clone());
        assert_eq!(v, Verdict::PASS, "answering: {name}");
        assert_eq!(out, frame, "answering: {name} must not be modified");
        let (v, out) = run(&Table::fenced(), frame.clone());
        assert_eq!(
            v,
            Verdict::new(Outcome::DroppedRequest, key6(VIP6)),
            "fenced: {name}"
        );
        assert_eq!(out, frame, "fenced: {name} must not be modified");
    }
}

/// IPv6 extension header types (RFC 8200 4) and bodies: Hop-by-Hop and Destination Options with
/// padding, a Routing header with no segments left, an atomic Fragment header. Byte 0 (next
/// header) is written by [`behind`].
const HBH: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const DEST_OPTS: u8 = 60;

fn hbh() -> (u8, Vec<u8>) {
    (HBH, vec![0, 0, 1, 4, 0, 0, 0, 0])
}
fn dest_opts() -> (u8, Vec<u8>) {
    // Length 1: 16 bytes, a PadN of 12.
    (
        DEST_OPTS,
        vec![0, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    )
}
fn routing() -> (u8, Vec<u8>) {
    (ROUTING, vec![0, 0, 4, 0, 0, 0, 0, 0])
}
/// A Fragment header at `offset` (in 8-byte units) with the More flag `more`.
fn fragment(offset: u16, more: bool) -> (u8, Vec<u8>) {
    let [hi, lo] = ((offset << 3) | u16::from(more)).to_be_bytes();
    (FRAGMENT, vec![0, 0, hi, lo, 0x12, 0x34, 0x56, 0x78])
}

/// `frame` (untagged IPv6) with `headers` between the IPv6 header and its upper-layer message.
/// The ICMPv6 checksum stays right (its pseudo-header does not include extension headers).
fn behind(frame: &[u8], headers: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let l3 = ETH_LEN;
    let mut out = frame[..l3 + 40].to_vec();
    let upper = frame[l3 + 6];
    let mut chain = Vec::new();
    for (i, (_, body)) in headers.iter().enumerate() {
        let mut body = body.clone();
        body[0] = headers.get(i + 1).map_or(upper, |(kind, _)| *kind);
        chain.extend_from_slice(&body);
    }
    if let Some((first, _)) = headers.first() {
        out[l3 + 6] = *first;
    }
    out.extend_from_slice(&chain);
    out.extend_from_slice(&frame[l3 + 40..]);
    let payload = u16::try_from(out.len() - l3 - 40).expect("small");
    out[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// An extension header: its type and its bytes.
type Extension = (u8, Vec<u8>);

fn chains() -> Vec<(&'static str, Vec<Extension>)> {
    vec![
        ("Hop-by-Hop", vec![hbh()]),
        ("Destination Options", vec![dest_opts()]),
        ("Routing", vec![routing()]),
        ("atomic Fragment", vec![fragment(0, false)]),
        ("first Fragment", vec![fragment(0, true)]),
        (
            "four of them",
            vec![hbh(), dest_opts(), routing(), fragment(0, false)],
        ),
    ]
}

#[test]
fn ns_behind_extension_headers_for_a_fenced_vip_is_dropped() {
    // Issue 16, item 19: the kernel answers such an NS if it still has the address; the program
    // must not let it through while the VIP is fenced.
    for (name, headers) in chains() {
        for (what, ns) in [
            ("client NS", client_ns(VIP6)),
            ("DAD", dad_ns()),
            (
                "unicast NS",
                ns6(
                    OUR_MAC,
                    CLIENT_MAC,
                    CLIENT6,
                    VIP6,
                    VIP6,
                    Some((OPT_SLLA, CLIENT_MAC)),
                ),
            ),
        ] {
            let f = behind(&ns, &headers);
            let (v, out) = run(&Table::fenced(), f.clone());
            assert_eq!(
                v,
                Verdict::new(Outcome::DroppedRequest, key6(VIP6)),
                "{what} behind {name}"
            );
            assert_eq!(
                out, f,
                "{what} behind {name}: a dropped frame is not modified"
            );
            let (v, out) = run(&Table::fenced(), tagged(&f, 100, 0));
            assert_eq!(
                v,
                Verdict::new(Outcome::DroppedRequest, key6(VIP6)),
                "tagged {what} behind {name}"
            );
            assert_eq!(out, tagged(&f, 100, 0));
            // The same NS for a VIP that is fenced in both tables.
            let mut other = ns.clone();
            other[62..78].copy_from_slice(&OTHER_VIP6);
            let len = other.len() - ETH_LEN - 40;
            fix_checksum(&mut other, ETH_LEN, len);
            let f = behind(&other, &headers);
            let (v, _) = run(&Table::answering(), f);
            assert_eq!(
                v,
                Verdict::new(Outcome::DroppedRequest, key6(OTHER_VIP6)),
                "{what} for OTHER_VIP6 behind {name}"
            );
        }
    }
}

#[test]
fn ns_behind_extension_headers_for_an_answering_vip_is_the_kernels() {
    // Answering: passed untouched (the kernel, which holds the address, answers it), as before;
    // a unicast one to the VIP is IPv6 to an answering VIP: passed too.
    for (name, headers) in chains() {
        assert_untouched(
            &Table::answering(),
            behind(&client_ns(VIP6), &headers),
            Verdict::PASS,
        );
        assert_untouched(
            &Table::answering(),
            behind(&dad_ns(), &headers),
            Verdict::PASS,
        );
        let _ = name;
    }
    // Without extension headers, the same frames keep their behaviour: answered, dropped.
    let (v, out) = run(&Table::answering(), client_ns(VIP6));
    assert_eq!(v, Verdict::new(Outcome::Replied, key6(VIP6)));
    assert_eq!(out, expected_na_to_client());
    assert_untouched(
        &Table::fenced(),
        client_ns(VIP6),
        Verdict::new(Outcome::DroppedRequest, key6(VIP6)),
    );
}

#[test]
fn the_extension_walk_finds_the_icmpv6_header() {
    let walk = |f: &[u8]| ipv6::icmpv6_behind_extensions(f, f[ETH_LEN + 6], ETH_LEN + 40);
    let ns = client_ns(VIP6);
    assert_eq!(walk(&behind(&ns, &[hbh()])), Some(ETH_LEN + 48));
    assert_eq!(walk(&behind(&ns, &[dest_opts()])), Some(ETH_LEN + 56));
    assert_eq!(walk(&behind(&ns, &[fragment(0, true)])), Some(ETH_LEN + 48));
    assert_eq!(
        walk(&behind(
            &ns,
            &[hbh(), dest_opts(), routing(), fragment(0, false)]
        )),
        Some(ETH_LEN + 80)
    );
    assert_eq!(
        walk(&behind(&ns, &[fragment(1, true)])),
        None,
        "a later fragment"
    );
    // 256 bytes of headers are walked, 264 are not.
    let big = |units: u8| {
        let mut body = vec![0u8; (usize::from(units) + 1) * 8];
        body[1] = units;
        (DEST_OPTS, body)
    };
    assert_eq!(walk(&behind(&ns, &[big(31)])), Some(ETH_LEN + 40 + 256));
    assert_eq!(walk(&behind(&ns, &[big(31), hbh()])), None);
    assert_eq!(walk(&behind(&udp6(VIP6), &[hbh()])), None, "UDP behind it");
    assert_eq!(walk(&behind(&ns, &[hbh()])[..ETH_LEN + 43]), None);
}

#[test]
fn what_the_extension_walk_cannot_judge_passes() {
    let ns = client_ns(VIP6);
    for t in [Table::answering(), Table::fenced()] {
        // A later fragment carries no ICMPv6 header of its own.
        assert_untouched(&t, behind(&ns, &[fragment(1, false)]), Verdict::PASS);
        assert_untouched(&t, behind(&ns, &[hbh(), fragment(8, true)]), Verdict::PASS);
        // More headers than the walk follows.
        let five = vec![
            hbh(),
            dest_opts(),
            routing(),
            dest_opts(),
            fragment(0, false),
        ];
        assert_untouched(&t, behind(&ns, &five), Verdict::PASS);
        // Truncated in an extension header, or in the solicitation behind it.
        let f = behind(&ns, &[hbh(), dest_opts()]);
        for len in [ETH_LEN + 41, ETH_LEN + 48 + 15, ETH_LEN + 64 + 20] {
            assert_untouched(&t, f[..len].to_vec(), Verdict::PASS);
        }
        // Not a solicitation, or not for a VIP: MLD behind Hop-by-Hop (as every MLD report is),
        // an NS for the node's own address, an NS for an IPv4-mapped target.
        let mut mld = ns.clone();
        mld[54] = 143;
        fix_checksum(&mut mld, ETH_LEN, 32);
        assert_untouched(&t, behind(&mld, &[hbh()]), Verdict::PASS);
        assert_untouched(&t, behind(&client_ns(NODE6), &[hbh()]), Verdict::PASS);
        let mut mapped = [0u8; 16];
        mapped[10..12].copy_from_slice(&[0xff, 0xff]);
        mapped[12..].copy_from_slice(&VIP);
        assert_untouched(&t, behind(&client_ns(mapped), &[hbh()]), Verdict::PASS);
        // Behind a header that is no extension header (ESP, 50): not walked.
        let mut esp = behind(&ns, &[hbh()]);
        esp[ETH_LEN + 6] = 50;
        assert_untouched(&t, esp, Verdict::PASS);
    }
}

#[test]
fn ns_for_a_non_vip_passes_untouched() {
    for t in [Table::answering(), Table::fenced()] {
        assert_untouched(&t, client_ns(NODE6), Verdict::PASS);
        let mut dad = dad_ns();
        dad[62..78].copy_from_slice(&NODE6);
        dad[38..54].copy_from_slice(&solicited_node(&NODE6));
        fix_checksum(&mut dad, ETH_LEN, 32);
        assert_untouched(&t, dad, Verdict::PASS);
    }
}

#[test]
fn time_is_not_read_for_ipv6_frames_about_no_vip() {
    let t = NoClock(Table::answering());
    let mut f = client_ns(NODE6);
    assert_eq!(process(f.as_mut_slice(), &t), Verdict::PASS);
    let mut f = udp6(NODE6);
    assert_eq!(process(f.as_mut_slice(), &t), Verdict::PASS);
}

/// A UDP-sized IPv6 packet (next header 17, 8 zero bytes) from the client to `dst`.
fn udp6(dst: [u8; 16]) -> Vec<u8> {
    ipv6_frame(OUR_MAC, CLIENT_MAC, CLIENT6, dst, 17, 64, &[0; 8])
}

/// An ICMPv6 echo request from the client to `dst`.
fn ping6(dst: [u8; 16]) -> Vec<u8> {
    let mut f = icmp6_frame(
        OUR_MAC,
        CLIENT_MAC,
        CLIENT6,
        dst,
        &[128, 0, 0, 0, 0, 1, 0, 1],
    );
    f[21] = 64;
    f
}

#[test]
fn ipv6_to_vip_is_dropped_only_while_fenced() {
    for frame in [udp6(VIP6), ping6(VIP6)] {
        assert_untouched(
            &Table::fenced(),
            frame.clone(),
            Verdict::new(Outcome::DroppedIp, key6(VIP6)),
        );
        assert_untouched(&Table::answering(), frame, Verdict::PASS);
    }
    assert_untouched(
        &Table::answering(),
        udp6(OTHER_VIP6),
        Verdict::new(Outcome::DroppedIp, key6(OTHER_VIP6)),
    );
    // A unicast NS for a non-VIP target sent to a fenced VIP is IPv6 to the VIP.
    let mut ns = client_ns(NODE6);
    ns[38..54].copy_from_slice(&VIP6);
    fix_checksum(&mut ns, ETH_LEN, 32);
    assert_untouched(
        &Table::fenced(),
        ns,
        Verdict::new(Outcome::DroppedIp, key6(VIP6)),
    );
    for t in [Table::answering(), Table::fenced()] {
        assert_untouched(&t, udp6(NODE6), Verdict::PASS);
        assert_untouched(&t, ping6(CLIENT6), Verdict::PASS);
    }
}

#[test]
fn ipv6_with_a_wrong_version_passes() {
    let mut f = udp6(VIP6);
    f[14] = 0x40;
    assert_untouched(&Table::fenced(), f, Verdict::PASS);
    let mut ns = client_ns(VIP6);
    ns[14] = 0x40;
    for t in [Table::answering(), Table::fenced()] {
        assert_untouched(&t, ns.clone(), Verdict::PASS);
    }
}

#[test]
fn na_from_another_mac_while_answering_is_a_conflict() {
    let unsolicited = na6(ALL_NODES_MAC6, STRANGER_MAC, VIP6, ALL_NODES6, VIP6, FLAG_O);
    let solicited = na6(
        CLIENT_MAC,
        STRANGER_MAC,
        VIP6,
        CLIENT6,
        VIP6,
        FLAG_S | FLAG_O,
    );
    for na in [&unsolicited, &solicited] {
        assert_untouched(
            &Table::answering(),
            na.clone(),
            Verdict::new(Outcome::Conflict, key6(VIP6)),
        );
        // Fenced, someone else holding the VIP is the expected state: the NA reaches the kernel.
        assert_untouched(&Table::fenced(), na.clone(), Verdict::PASS);
    }
    assert_eq!(
        Verdict::new(Outcome::Conflict, key6(VIP6)).xdp_action(),
        XDP_PASS
    );
    // From our own MAC: no conflict.
    let ours = na6(ALL_NODES_MAC6, OUR_MAC, VIP6, ALL_NODES6, VIP6, FLAG_O);
    assert_untouched(&Table::answering(), ours, Verdict::PASS);
    // About a fenced VIP or no VIP: no conflict.
    let other = na6(
        ALL_NODES_MAC6,
        STRANGER_MAC,
        OTHER_VIP6,
        ALL_NODES6,
        OTHER_VIP6,
        FLAG_O,
    );
    assert_untouched(&Table::answering(), other, Verdict::PASS);
    let node = na6(
        ALL_NODES_MAC6,
        STRANGER_MAC,
        NODE6,
        ALL_NODES6,
        NODE6,
        FLAG_O,
    );
    assert_untouched(&Table::answering(), node, Verdict::PASS);
}

#[test]
fn our_own_na_looped_back_passes_untouched() {
    let (_, reply) = run(&Table::answering(), client_ns(VIP6));
    assert_untouched(&Table::answering(), reply, Verdict::PASS);
    let (_, reply) = run(&Table::answering(), dad_ns());
    assert_untouched(&Table::answering(), reply, Verdict::PASS);
}

#[test]
fn padded_ns_keeps_its_trailing_bytes() {
    let mut ns = client_ns(VIP6);
    ns.resize(100, 0xab);
    let (v, out) = run(&Table::answering(), ns);
    assert_eq!(v.xdp_action(), XDP_TX);
    let mut expected = expected_na_to_client();
    expected.resize(100, 0xab);
    assert_eq!(out, expected);
}

#[test]
fn tagged_ns_is_answered_keeping_the_tag() {
    for (vid, pcp) in [(100, 0), (4094, 7), (0, 3)] {
        let (v, out) = run(&Table::answering(), tagged(&client_ns(VIP6), vid, pcp));
        assert_eq!(v, Verdict::new(Outcome::Replied, key6(VIP6)), "vid {vid}");
        assert_eq!(out, tagged(&expected_na_to_client(), vid, pcp), "vid {vid}");
        assert!(checksum_verifies(&out, VLAN_ETH_LEN));
        let (v, out) = run(&Table::answering(), tagged(&dad_ns(), vid, pcp));
        assert_eq!(v.xdp_action(), XDP_TX, "DAD vid {vid}");
        let dad_na = na6(ALL_NODES_MAC6, OUR_MAC, VIP6, ALL_NODES6, VIP6, FLAG_O);
        assert_eq!(out, tagged(&dad_na, vid, pcp), "DAD vid {vid}");
    }
    // DEI kept.
    let mut ns = tagged(&client_ns(VIP6), 7, 2);
    ns[14] |= 0x10;
    let (_, out) = run(&Table::answering(), ns.clone());
    assert_eq!(&out[12..18], &ns[12..18], "tag and ethertype unchanged");
}

#[test]
fn tagged_ipv6_fenced_is_dropped_and_conflict_counted() {
    let fenced = Table::fenced();
    assert_untouched(
        &fenced,
        tagged(&client_ns(VIP6), 100, 0),
        Verdict::new(Outcome::DroppedRequest, key6(VIP6)),
    );
    assert_untouched(
        &fenced,
        tagged(&udp6(VIP6), 100, 0),
        Verdict::new(Outcome::DroppedIp, key6(VIP6)),
    );
    assert_untouched(
        &Table::answering(),
        tagged(&udp6(VIP6), 100, 0),
        Verdict::PASS,
    );
    let na = na6(ALL_NODES_MAC6, STRANGER_MAC, VIP6, ALL_NODES6, VIP6, FLAG_O);
    assert_untouched(
        &Table::answering(),
        tagged(&na, 100, 0),
        Verdict::new(Outcome::Conflict, key6(VIP6)),
    );
    // Every refused form is refused tagged too.
    for (name, frame) in unanswerable_ns_for_vip6() {
        let (v, out) = run(&Table::answering(), tagged(&frame, 100, 0));
        assert_eq!(v, Verdict::PASS, "tagged {name}");
        assert_eq!(out, tagged(&frame, 100, 0), "tagged {name}");
    }
    // QinQ: not parsed.
    for t in [Table::answering(), Table::fenced()] {
        assert_untouched(
            &t,
            tagged(&tagged(&client_ns(VIP6), 1, 0), 2, 0),
            Verdict::PASS,
        );
    }
}

#[test]
fn truncated_ipv6_frames_pass_untouched() {
    let ns = client_ns(VIP6);
    let udp = udp6(VIP6);
    let t_ns = tagged(&ns, 100, 0);
    let t_udp = tagged(&udp, 100, 0);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Short of the IPv6 header: nothing to judge. Short of the option-less NS (78 bytes): the
    // destination (the solicited-node group) decides, and it is no VIP.
    for n in [14, 15, 20, 53, 54, 55, 62, 70, 77] {
        cases.push((format!("NS cut to {n}"), ns[..n].to_vec()));
    }
    for n in [14, 15, 20, 53] {
        cases.push((format!("IPv6 to VIP cut to {n}"), udp[..n].to_vec()));
    }
    for n in [18, 19, 40, 57, 58, 70, 81] {
        cases.push((format!("tagged NS cut to {n}"), t_ns[..n].to_vec()));
    }
    for n in [18, 30, 57] {
        cases.push((
            format!("tagged IPv6 to VIP cut to {n}"),
            t_udp[..n].to_vec(),
        ));
    }
    for t in [Table::answering(), Table::fenced()] {
        for (name, frame) in &cases {
            let (v, out) = run(&t, frame.clone());
            assert_eq!(v, Verdict::PASS, "{name}");
            assert_eq!(&out, frame, "{name} must not be modified");
        }
    }
    // The fixed header complete: IPv6 to a fenced VIP is dropped, even with the payload cut.
    assert_untouched(
        &Table::fenced(),
        udp[..54].to_vec(),
        Verdict::new(Outcome::DroppedIp, key6(VIP6)),
    );
    assert_untouched(
        &Table::fenced(),
        t_udp[..58].to_vec(),
        Verdict::new(Outcome::DroppedIp, key6(VIP6)),
    );
    // The option-less NS complete (tagged: 82 bytes): fenced drops it, answering passes it.
    assert_untouched(
        &Table::fenced(),
        t_ns[..82].to_vec(),
        Verdict::new(Outcome::DroppedRequest, key6(VIP6)),
    );
    assert_untouched(&Table::answering(), t_ns[..89].to_vec(), Verdict::PASS);
}

/// `::ffff:a.b.c.d` (IPv4-mapped) and `::a.b.c.d` (IPv4-compatible, deprecated) for an IPv4
/// address.
fn v4_mapped(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12..].copy_from_slice(&a);
    out
}
fn v4_compatible(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[12..].copy_from_slice(&a);
    out
}

#[test]
fn ipv6_packets_never_match_an_ipv4_vip() {
    // An IPv4 VIP's key is its IPv4-mapped address (maps.rs), so an IPv6 packet to (or NS/NA
    // about) `::ffff:10.77.0.100` would find the IPv4 VIP's entry if the IPv6 path looked it up.
    // Such an address is never a node's IPv6 address on the wire (RFC 4291 2.5.5.2; Linux never
    // configures or answers it), so the IPv6 path ignores IPv4-mapped destinations and targets:
    // no NA claiming `::ffff:10.77.0.100` while answering, no drop or count on the IPv4 VIP's
    // counters while fenced, no conflict. The IPv4-compatible form `::10.77.0.100` is another key
    // altogether and matches only an IPv6 VIP configured as exactly that.
    for a in [VIP, OTHER_VIP] {
        for addr in [v4_mapped(a), v4_compatible(a)] {
            let sn = solicited_node(&addr);
            let sn_mac = [0x33, 0x33, sn[12], sn[13], sn[14], sn[15]];
            let ns = ns6(
                sn_mac,
                CLIENT_MAC,
                CLIENT6,
                sn,
                addr,
                Some((OPT_SLLA, CLIENT_MAC)),
            );
            let unicast_ns = ns6(
                OUR_MAC,
                CLIENT_MAC,
                CLIENT6,
                addr,
                addr,
                Some((OPT_SLLA, CLIENT_MAC)),
            );
            let na = na6(ALL_NODES_MAC6, STRANGER_MAC, addr, ALL_NODES6, addr, FLAG_O);
            for t in [Table::answering(), Table::fenced()] {
                for frame in [&ns, &unicast_ns, &na, &udp6(addr), &ping6(addr)] {
                    assert_untouched(&t, frame.clone(), Verdict::PASS);
                    assert_untouched(&t, tagged(frame, 100, 0), Verdict::PASS);
                }
            }
        }
    }
    // The IPv4 packet to the same VIP still matches (the key is shared on purpose).
    assert_untouched(
        &Table::fenced(),
        ipv4(VIP),
        Verdict::new(Outcome::DroppedIp, VipKey::v4(VIP)),
    );
    // An IPv6 VIP configured as the IPv4-compatible address is an ordinary IPv6 VIP.
    let compat = v4_compatible(VIP);
    let table = Table {
        entries: vec![(
            key6(compat),
            VipState::answering_until(OUR_MAC, NOW + 1_000_000_000),
        )],
        now: NOW,
    };
    let sn = solicited_node(&compat);
    let sn_mac = [0x33, 0x33, sn[12], sn[13], sn[14], sn[15]];
    let ns = ns6(
        sn_mac,
        CLIENT_MAC,
        CLIENT6,
        sn,
        compat,
        Some((OPT_SLLA, CLIENT_MAC)),
    );
    let (v, out) = run(&table, ns);
    assert_eq!(v, Verdict::new(Outcome::Replied, key6(compat)));
    assert_eq!(
        out,
        na6(
            CLIENT_MAC,
            OUR_MAC,
            compat,
            CLIENT6,
            compat,
            FLAG_S | FLAG_O
        )
    );
    // And an IPv4 packet to 10.77.0.100 does not match it.
    assert_untouched(&table, ipv4(VIP), Verdict::PASS);
}

#[test]
fn ipv4_frames_never_match_an_ipv6_vip() {
    // 10.77.0.100 as an IPv4 destination is looked up as ::ffff:10.77.0.100, never as VIP6 or the
    // IPv4-compatible form.
    let table = Table {
        entries: vec![
            (key6(v4_compatible(VIP)), VipState::fenced(OUR_MAC)),
            (key6(VIP6), VipState::fenced(OUR_MAC)),
        ],
        now: NOW,
    };
    assert_untouched(&table, ipv4(VIP), Verdict::PASS);
    assert_untouched(
        &table,
        request(BCAST, CLIENT_MAC, CLIENT_IP, VIP),
        Verdict::PASS,
    );
}

#[test]
fn nd_view_refuses_what_process_filters_before_it() {
    // `process` checks the next header and the ICMPv6 type before `NdView`; `NdView` must refuse
    // them on its own too, as the fuzz target and the agent use it directly.
    let ns: [u8; ND_FRAME_LEN] = client_ns(VIP6).try_into().expect("86 bytes");
    let view = NdView::parse(&ns).expect("IPv6");
    assert!(view.is_answerable_solicitation());
    let mut other_header = ns;
    other_header[20] = 17;
    let view = NdView::parse(&other_header).expect("IPv6");
    assert!(
        view.checksum_ok,
        "the checksum does not cover the next header field"
    );
    assert!(!view.is_answerable_solicitation(), "next header 17");
    let mut advert = ns;
    advert[54] = 136;
    fix_checksum(&mut advert, ETH_LEN, 32);
    let view = NdView::parse(&advert).expect("IPv6");
    assert!(view.checksum_ok);
    assert!(!view.is_answerable_solicitation(), "type 136");
    let mut v4 = ns;
    v4[14] = 0x45;
    assert_eq!(NdView::parse(&v4), None, "not IPv6");
}

#[test]
fn ns_from_the_vip_by_another_mac_while_answering_is_a_conflict() {
    // Another host resolving a neighbour from the VIP: it uses our address as its own.
    let from_vip = |mac: [u8; 6], target: [u8; 16]| {
        ns6(
            BCAST,
            mac,
            VIP6,
            solicited_node(&target),
            target,
            Some((1, mac)),
        )
    };
    assert_untouched(
        &Table::answering(),
        from_vip(STRANGER_MAC, CLIENT6),
        Verdict::new(Outcome::Conflict, key6(VIP6)),
    );
    // Checked before the target: a solicitation from the VIP for another VIP is the conflict too.
    assert_untouched(
        &Table::answering(),
        from_vip(STRANGER_MAC, VIP6),
        Verdict::new(Outcome::Conflict, key6(VIP6)),
    );
    // Fenced: the holder soliciting from the VIP is the expected state.
    assert_untouched(
        &Table::fenced(),
        from_vip(STRANGER_MAC, CLIENT6),
        Verdict::PASS,
    );
    // Our own MAC (a looped-back solicitation of our kernel): no conflict.
    assert_untouched(
        &Table::answering(),
        from_vip(OUR_MAC, CLIENT6),
        Verdict::PASS,
    );
}
