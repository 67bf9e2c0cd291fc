//! Host tests for the frame logic: real and malformed frames through [`process`], byte-exact.

extern crate std;

use std::{vec, vec::Vec};

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

/// A VIP table: VIP answering until NOW+1s, OTHER_VIP fenced.
struct Table {
    entries: Vec<(VipKey, VipState)>,
    now: u64,
}

impl Table {
    fn new(vip_deadline: u64) -> Self {
        Self {
            entries: vec![
                (
                    VipKey::new(VIP),
                    VipState::answering_until(OUR_MAC, vip_deadline),
                ),
                (VipKey::new(OTHER_VIP), VipState::fenced(OUR_MAC)),
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
    assert_eq!(v, Verdict::new(Outcome::Replied, VipKey::new(VIP)));
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
    let vip = VipKey::new(VIP);
    assert_untouched(
        &Table::fenced(),
        request(BCAST, CLIENT_MAC, CLIENT_IP, VIP),
        Verdict::new(Outcome::DroppedArp, vip),
    );
    assert_untouched(
        &Table::answering(),
        request(BCAST, CLIENT_MAC, CLIENT_IP, OTHER_VIP),
        Verdict::new(Outcome::DroppedArp, VipKey::new(OTHER_VIP)),
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
            Verdict::new(Outcome::DroppedArp, VipKey::new(VIP)),
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
    let vip = VipKey::new(VIP);
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
        Verdict::new(Outcome::DroppedArp, vip),
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
            Verdict::new(Outcome::Replied, VipKey::new(VIP)),
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
    let vip = VipKey::new(VIP);
    let arp = tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), 100, 0);
    assert_untouched(
        &Table::fenced(),
        arp,
        Verdict::new(Outcome::DroppedArp, vip),
    );
    let ip = tagged(&ipv4(VIP), 100, 0);
    assert_untouched(
        &Table::fenced(),
        ip.clone(),
        Verdict::new(Outcome::DroppedIpv4, vip),
    );
    assert_untouched(&Table::answering(), ip, Verdict::PASS);
    // A non-unicast requester on a VLAN is dropped as untagged.
    let mut bad = tagged(&request(BCAST, CLIENT_MAC, CLIENT_IP, VIP), 100, 0);
    bad[26..32].copy_from_slice(&BCAST);
    assert_untouched(
        &Table::answering(),
        bad,
        Verdict::new(Outcome::DroppedArp, vip),
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
        Verdict::new(Outcome::Conflict, VipKey::new(VIP)),
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
    let vip = VipKey::new(VIP);
    assert_untouched(
        &Table::fenced(),
        ipv4(VIP),
        Verdict::new(Outcome::DroppedIpv4, vip),
    );
    assert_untouched(&Table::answering(), ipv4(VIP), Verdict::PASS);
    assert_eq!(
        Verdict::new(Outcome::DroppedIpv4, vip).xdp_action(),
        XDP_DROP
    );
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

#[test]
fn time_is_read_only_for_vip_frames() {
    struct NoClock(Table);
    impl VipLookup for NoClock {
        fn state(&self, vip: &VipKey) -> Option<VipState> {
            self.0.state(vip)
        }
        fn now_ns(&self) -> u64 {
            panic!("the clock must not be read for frames that concern no VIP")
        }
    }
    let t = NoClock(Table::answering());
    let mut f = ipv4(NODE_IP);
    assert_eq!(process(f.as_mut_slice(), &t), Verdict::PASS);
    let mut f = request(BCAST, CLIENT_MAC, CLIENT_IP, NODE_IP);
    assert_eq!(process(f.as_mut_slice(), &t), Verdict::PASS);
}
