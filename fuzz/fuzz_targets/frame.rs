//! `vip_common::frame::process`, the function the XDP program runs on every frame, on arbitrary
//! bytes against a small VIP table.
//!
//! Input: one selector byte (which VIPs answer, the clock), then the frame. The committed seeds in
//! `fuzz/corpus/frame/` are real frames (ARP requests, replies, probes, gratuitous ARP, IPv4, 802.1Q
//! tagged, QinQ and 802.1ad, truncated; IPv6 Neighbor Solicitations, DAD, advertisements, IPv6 to
//! a VIP) for the VIPs below, so the fuzzer starts next to every branch.
//!
//! Properties checked on every input (independently of `frame.rs` and `ipv6.rs`, from the frame
//! layout). A frame is untagged (ethertype at 12) or carries exactly one 802.1Q tag (TPID 0x8100
//! at 12, TCI at 14, ethertype at 16); 802.1ad (0x88a8) and a second tag are neither ARP, IPv4 nor
//! IPv6 here, so they pass.
//! * XDP_TX only for a well-formed Ethernet/IPv4 ARP request (op 1, htype 1 or 6, ptype 0x0800,
//!   hlen 6, plen 4) whose target IP is a configured VIP that answers now, from a unicast sender
//!   MAC, and that is not a conflict; and then the frame is exactly our reply: Ethernet dst = the
//!   requester's MAC, src = the VIP's MAC, the tag (TPID and TCI) and ethertype unchanged, op 2,
//!   htype 1, sender = (VIP MAC, VIP), target = (requester MAC, requester IP), length and trailing
//!   bytes unchanged;
//! * any other verdict leaves every byte unchanged;
//! * a fenced VIP (deadline 0, or a deadline not after now) is never answered; every drop is for a
//!   configured VIP that is fenced (or, for ARP, a non-unicast requester);
//! * our own reply, looped back, is passed untouched (never answered, never a conflict);
//! * the verdict's XDP action and VIP are consistent with its outcome;
//! * the egress decision on the same bytes drops only for a configured VIP that is fenced now.
//!
//! IPv6 (RFC 4861), for the IPv6 VIPs of the table (an IPv4-mapped address `::ffff:a.b.c.d` is the
//! key of the IPv4 VIP `a.b.c.d` and never matches an IPv6 packet):
//! * XDP_TX only for a Neighbor Solicitation (ICMPv6 right after the IPv6 header) whose target is
//!   an IPv6 VIP that answers now, in the one form answered in XDP: payload length 32, hop limit
//!   255, code 0, checksum right, one 8-byte option, a non-multicast source, and either a source
//!   link-layer address option with a unicast MAC or, from `::`, a non-SLLA option and the
//!   target's solicited-node group as destination. The frame is then a well-formed Neighbor
//!   Advertisement (checksum right by our own sum and by `NdView`, type 136, code 0, hop limit 255,
//!   src = target = the VIP, TLLA option with the entry's MAC, O set, R clear, S set unless the
//!   solicitation came from `::`) to the SLLA MAC and source (or `ff02::1`), from the entry's MAC,
//!   with the tag, length and trailing bytes unchanged;
//! * a solicitation from an answering IPv6 VIP (not `::`) by another MAC is a conflict (before
//!   anything else about it), a solicitation for a fenced IPv6 VIP is dropped, whatever its form, an
//!   advertisement for an answering VIP from another MAC is a conflict, other IPv6 to a fenced VIP is dropped, and
//!   nothing else about IPv6 is ever rewritten, dropped or counted;
//! * a Neighbor Solicitation behind extension headers (Hop-by-Hop 0, Routing 43, Fragment 44 with
//!   fragment offset 0, Destination Options 60; at most 4 of them, at most 256 bytes, ending at
//!   most 314 bytes into the frame, which is an 802.1Q header, the IPv6 header and 256) whose
//!   target is a fenced IPv6 VIP is dropped, whatever its destination; answering, it is judged by
//!   its destination like any other IPv6 packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vip_common::{
    VipKey, VipLookup, VipState,
    frame::{ND_LEN, NdView, Outcome, Verdict, XDP_DROP, XDP_PASS, XDP_TX, process},
};

/// The VIPs of the table: two in one subnet, one elsewhere, and the two edge addresses.
const VIP_A: [u8; 4] = [10, 77, 0, 100];
const VIP_B: [u8; 4] = [10, 77, 0, 101];
const VIP_C: [u8; 4] = [192, 168, 56, 10];
const VIP_ZERO: [u8; 4] = [0, 0, 0, 0];
const VIP_BCAST: [u8; 4] = [255, 255, 255, 255];
/// IPv6 VIPs, following VIP_A/B/C's state: 2001:db8:77::100; fd00:99::100, in the same
/// solicited-node group (ff02::1:ff00:100) as the first; and fe80::aa:100, link-local. The edge
/// ones (with bit 5): `::` and the IPv4-compatible form of VIP_A, `::10.77.0.100`.
const VIP6_A: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
const VIP6_B: [u8; 16] = [0xfd, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00];
const VIP6_C: [u8; 16] = [
    0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0x01, 0x00,
];
const VIP6_ZERO: [u8; 16] = [0; 16];
const VIP6_V4_COMPATIBLE: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 77, 0, 100];
/// The interface's MAC (what every VIP entry carries).
const OUR_MAC: [u8; 6] = [0x02, 0xaa, 0x00, 0x00, 0x00, 0x01];
/// Another unicast MAC some entries carry instead (two agents' tables never mix, but the program
/// must use the entry's MAC, not a constant).
const ALT_MAC: [u8; 6] = [0x0a, 0xbb, 0x00, 0x00, 0x00, 0x02];
const NOW: u64 = 5_000_000_000;

struct Table {
    entries: Vec<(VipKey, VipState)>,
    now: u64,
}

impl VipLookup for Table {
    fn state(&self, vip: &VipKey) -> Option<VipState> {
        self.entries.iter().find(|(k, _)| k == vip).map(|(_, v)| *v)
    }
    fn now_ns(&self) -> u64 {
        self.now
    }
}

impl Table {
    /// Bits of `sel`: 0/1/2 VIP_A/B/C and VIP6_A/B/C answering (else fenced); 3: VIP_C's and
    /// VIP6_C's deadline is exactly now (fenced: the program answers while now < deadline); 4:
    /// clock at 0 instead of NOW; 5: the edge VIPs 0.0.0.0, 255.255.255.255, `::` and
    /// `::10.77.0.100` exist (answering); 6: VIP_B and VIP6_B carry ALT_MAC; 7: empty table.
    fn from_selector(sel: u8) -> Self {
        let bit = |n: u8| sel & (1 << n) != 0;
        let now = if bit(4) { 0 } else { NOW };
        let state = |answering: bool, mac: [u8; 6]| {
            if answering {
                VipState::answering_until(mac, now.saturating_add(1_000_000_000))
            } else {
                VipState::fenced(mac)
            }
        };
        let mut entries = Vec::new();
        if !bit(7) {
            let b_mac = if bit(6) { ALT_MAC } else { OUR_MAC };
            let c = if bit(3) {
                VipState::answering_until(OUR_MAC, now)
            } else {
                state(bit(2), OUR_MAC)
            };
            entries.push((VipKey::v4(VIP_A), state(bit(0), OUR_MAC)));
            entries.push((VipKey::v4(VIP_B), state(bit(1), b_mac)));
            entries.push((VipKey::v4(VIP_C), c));
            entries.push((VipKey::v6(VIP6_A), state(bit(0), OUR_MAC)));
            entries.push((VipKey::v6(VIP6_B), state(bit(1), b_mac)));
            entries.push((VipKey::v6(VIP6_C), c));
            if bit(5) {
                entries.push((VipKey::v4(VIP_ZERO), state(true, OUR_MAC)));
                entries.push((VipKey::v4(VIP_BCAST), state(true, OUR_MAC)));
                entries.push((VipKey::v6(VIP6_ZERO), state(true, OUR_MAC)));
                entries.push((VipKey::v6(VIP6_V4_COMPATIBLE), state(true, OUR_MAC)));
            }
        }
        Self { entries, now }
    }

    fn answering(&self, ip: [u8; 4]) -> Option<VipState> {
        self.answering_key(&VipKey::v4(ip))
    }

    fn answering_key(&self, key: &VipKey) -> Option<VipState> {
        self.state(key).filter(|s| self.now < s.deadline_ns)
    }

    /// The entry an IPv6 address in a packet may match: none for an IPv4-mapped address, which is
    /// an IPv4 VIP's key and never an IPv6 address on the wire.
    fn state6(&self, addr: &[u8; 16]) -> Option<VipState> {
        if addr[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] {
            return None;
        }
        self.state(&VipKey::v6(*addr))
    }

    fn answering6(&self, addr: &[u8; 16]) -> Option<VipState> {
        self.state6(addr).filter(|s| self.now < s.deadline_ns)
    }
}

fn arr<const N: usize>(f: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&f[at..at + N]);
    out
}

/// The fields of an Ethernet/IPv4 ARP packet, read straight from the layout (RFC 826), and where
/// the packet starts (14 untagged, 18 after one 802.1Q tag).
#[derive(Clone, Copy)]
struct Arp {
    at: usize,
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tpa: [u8; 4],
}

/// The offset of the packet after the Ethernet header and its ethertype: untagged (14), or after
/// exactly one 802.1Q tag (18). `None` when the header is cut short.
fn l3(f: &[u8]) -> Option<(usize, [u8; 2])> {
    let outer = f.get(12..14)?;
    if outer == [0x81, 0x00] {
        Some((18, arr(f.get(..18)?, 16)))
    } else {
        Some((14, arr(f, 12)))
    }
}

/// `Some` for a frame that carries a well-formed Ethernet/IPv4 ARP packet.
fn parse_arp(f: &[u8]) -> Option<Arp> {
    let (at, ether_type) = l3(f)?;
    if ether_type != [0x08, 0x06] || f.len() < at + 28 {
        return None;
    }
    let a = &f[at..];
    let htype = u16::from_be_bytes([a[0], a[1]]);
    let ptype = u16::from_be_bytes([a[2], a[3]]);
    if !(htype == 1 || htype == 6) || ptype != 0x0800 || a[4] != 6 || a[5] != 4 {
        return None;
    }
    Some(Arp {
        at,
        op: u16::from_be_bytes([a[6], a[7]]),
        sha: arr(a, 8),
        spa: arr(a, 14),
        tpa: arr(a, 24),
    })
}

fn unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// Whether the frame is an IPv4 packet (version 4, IHL >= 5, the fixed header present), tagged or
/// not: its destination.
fn ipv4_dst(f: &[u8]) -> Option<[u8; 4]> {
    let (at, ether_type) = l3(f)?;
    (ether_type == [0x08, 0x00] && f.len() >= at + 20 && f[at] >> 4 == 4 && f[at] & 0x0f >= 5)
        .then(|| arr(f, at + 16))
}

/// An IPv6 packet (version 6, the fixed header present), tagged or not: where it starts and its
/// header fields.
struct Ipv6 {
    at: usize,
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    src: [u8; 16],
    dst: [u8; 16],
}

fn parse_ipv6(f: &[u8]) -> Option<Ipv6> {
    let (at, ether_type) = l3(f)?;
    if ether_type != [0x86, 0xdd] || f.len() < at + 40 || f[at] >> 4 != 6 {
        return None;
    }
    Some(Ipv6 {
        at,
        payload_len: u16::from_be_bytes([f[at + 4], f[at + 5]]),
        next_header: f[at + 6],
        hop_limit: f[at + 7],
        src: arr(f, at + 8),
        dst: arr(f, at + 24),
    })
}

const ICMPV6: u8 = 58;
const NS: u8 = 135;
const NA: u8 = 136;
const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// A Neighbor Solicitation or Advertisement right after the IPv6 header, at least as long as one
/// without options (24 bytes): its type and target.
fn nd_message(f: &[u8], ip: &Ipv6) -> Option<(u8, [u8; 16])> {
    if ip.next_header != ICMPV6 || f.len() < ip.at + 64 {
        return None;
    }
    let kind = f[ip.at + 40];
    (kind == NS || kind == NA).then(|| (kind, arr(f, ip.at + 48)))
}

/// The target of a Neighbor Solicitation behind extension headers (see the module
/// documentation), followed here from the frame's bytes, independently of `ipv6.rs`.
fn solicitation_behind_extensions(f: &[u8], ip: &Ipv6) -> Option<[u8; 16]> {
    const EXTENSIONS: [u8; 4] = [0, 43, 44, 60];
    const FRAGMENT: u8 = 44;
    const MAX_OFFSET: usize = 18 + 40 + 256;
    if !EXTENSIONS.contains(&ip.next_header) {
        return None;
    }
    let start = ip.at + 40;
    let (mut next, mut at) = (ip.next_header, start);
    for _ in 0..4 {
        if !EXTENSIONS.contains(&next) {
            break;
        }
        if at > MAX_OFFSET || f.len() < at + 4 {
            return None;
        }
        let len = if next == FRAGMENT {
            if u16::from_be_bytes([f[at + 2], f[at + 3]]) >> 3 != 0 {
                return None;
            }
            8
        } else {
            (usize::from(f[at + 1]) + 1) * 8
        };
        next = f[at];
        at += len;
        if at > start + 256 {
            return None;
        }
    }
    if next != ICMPV6 || at > MAX_OFFSET || f.len() < at + 24 || f[at] != NS {
        return None;
    }
    Some(arr(f, at + 8))
}

/// The one's-complement sum (RFC 1071) of the ICMPv6 pseudo-header (RFC 8200 8.1) and `body`,
/// folded: 0xffff over a message whose checksum is right.
fn ones_sum(src: &[u8; 16], dst: &[u8; 16], len: u32, body: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut add = |bytes: &[u8]| {
        for w in bytes.chunks(2) {
            sum += (u64::from(w[0]) << 8) | u64::from(w.get(1).copied().unwrap_or(0));
        }
    };
    add(src);
    add(dst);
    add(&len.to_be_bytes());
    add(&[0, 0, 0, ICMPV6]);
    add(body);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    u16::try_from(sum).expect("folded")
}

/// The solicited-node group of `target` (RFC 4291 2.7.1).
fn solicited_node(target: &[u8; 16]) -> [u8; 16] {
    let mut g = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    g[13..].copy_from_slice(&target[13..]);
    g
}

/// Whether a solicitation has the one form answered in XDP (see the module documentation).
fn answerable(f: &[u8], ip: &Ipv6) -> bool {
    let at = ip.at;
    if f.len() < at + 72 {
        return false;
    }
    let icmp = &f[at + 40..at + 72];
    let target: [u8; 16] = arr(icmp, 8);
    let (option_type, option_len, option_mac) = (icmp[24], icmp[25], arr::<6>(icmp, 26));
    let form = ip.payload_len == 32
        && ip.next_header == ICMPV6
        && ip.hop_limit == 255
        && icmp[0] == NS
        && icmp[1] == 0
        && ones_sum(&ip.src, &ip.dst, 32, icmp) == 0xffff
        && option_len == 1
        && ip.src[0] != 0xff;
    form && if ip.src == [0; 16] {
        ip.dst == solicited_node(&target) && option_type != 1
    } else {
        option_type == 1 && unicast(&option_mac)
    }
}

/// The IPv6 properties (module documentation) of one verdict.
fn check_ipv6(table: &Table, verdict: Verdict, original: &[u8], buf: &[u8], ip: &Ipv6) {
    let eth_src: [u8; 6] = arr(original, 6);
    let expected = match nd_message(original, ip) {
        Some((NS, _))
            if ip.src != [0; 16]
                && table
                    .answering6(&ip.src)
                    .is_some_and(|s| s.mac != eth_src) =>
        {
            Verdict::new(Outcome::Conflict, VipKey::v6(ip.src))
        }
        Some((NS, target)) if table.state6(&target).is_some() => {
            let vip = VipKey::v6(target);
            if table.answering6(&target).is_none() {
                Verdict::new(Outcome::DroppedRequest, vip)
            } else if answerable(original, ip) {
                Verdict::new(Outcome::Replied, vip)
            } else {
                Verdict::PASS
            }
        }
        Some((NA, target)) if table.answering6(&target).is_some_and(|s| s.mac != eth_src) => {
            Verdict::new(Outcome::Conflict, VipKey::v6(target))
        }
        _ if solicitation_behind_extensions(original, ip)
            .is_some_and(|t| table.state6(&t).is_some() && table.answering6(&t).is_none()) =>
        {
            let target = solicitation_behind_extensions(original, ip).unwrap_or_default();
            Verdict::new(Outcome::DroppedRequest, VipKey::v6(target))
        }
        _ if table.state6(&ip.dst).is_some() && table.answering6(&ip.dst).is_none() => {
            Verdict::new(Outcome::DroppedIp, VipKey::v6(ip.dst))
        }
        _ => Verdict::PASS,
    };
    assert_eq!(verdict, expected, "IPv6 from {:?} to {:?}", ip.src, ip.dst);
    if verdict.outcome != Outcome::Replied {
        assert_eq!(
            buf, original,
            "{verdict:?}: an IPv6 frame we do not answer was modified"
        );
        return;
    }

    // Our advertisement, field by field; `at` is where the IPv6 header starts (after any tag).
    let at = ip.at;
    let vip = verdict.vip.addr;
    let state = table
        .answering6(&vip)
        .expect("XDP_TX for an IPv6 VIP that is fenced or not configured");
    let from_unspecified = ip.src == [0; 16];
    let (eth_dst, ip_dst) = if from_unspecified {
        (ALL_NODES_MAC, ALL_NODES)
    } else {
        (arr::<6>(original, at + 66), ip.src)
    };
    assert_eq!(buf.len(), original.len(), "length changed");
    assert_eq!(&buf[0..6], &eth_dst, "Ethernet dst");
    assert_eq!(
        &buf[6..12],
        &state.mac,
        "Ethernet src is not the entry's MAC"
    );
    assert_eq!(
        &buf[12..at],
        &original[12..at],
        "VLAN tag or ethertype changed"
    );
    assert_eq!(
        &buf[at..at + 4],
        &[0x60, 0, 0, 0],
        "version, class, flow label"
    );
    let packet: &[u8; ND_LEN] = buf[at..at + ND_LEN].try_into().expect("72 bytes");
    let na = NdView::parse_packet(packet).expect("our NA does not parse as IPv6");
    assert!(na.checksum_ok, "NdView: NA checksum wrong");
    assert_eq!(
        ones_sum(&vip, &ip_dst, 32, &buf[at + 40..at + 72]),
        0xffff,
        "NA checksum wrong by our own sum"
    );
    assert_eq!(na.payload_len, 32);
    assert_eq!(na.next_header, ICMPV6);
    assert_eq!(na.hop_limit, 255);
    assert_eq!(na.icmp_type, NA);
    assert_eq!(na.code, 0);
    assert_eq!(na.src, vip, "NA not from the VIP");
    assert_eq!(na.target, vip, "NA target is not the VIP");
    assert_eq!(na.dst, ip_dst, "NA destination");
    assert_eq!(na.flags & 0x20, 0x20, "Override clear");
    assert_eq!(na.flags & 0x80, 0, "Router set");
    assert_eq!(
        na.flags & 0x40 != 0,
        !from_unspecified,
        "Solicited must be set exactly when the source was not ::"
    );
    assert_eq!(na.flags & 0x1f, 0, "reserved flag bits");
    assert_eq!(&buf[at + 45..at + 48], &[0, 0, 0], "reserved bytes");
    assert_eq!(
        (na.option_type, na.option_len),
        (2, 1),
        "not one TLLA option"
    );
    assert_eq!(na.option_mac, state.mac, "TLLA is not the entry's MAC");
    assert_eq!(
        &buf[at + 72..],
        &original[at + 72..],
        "trailing bytes changed"
    );

    // Our advertisement looped back: never answered, never a conflict, never rewritten (dropped
    // only when its destination is a fenced VIP of ours).
    let mut again = buf.to_vec();
    let v2 = process(again.as_mut_slice(), table);
    assert!(
        matches!(v2.outcome, Outcome::Pass | Outcome::DroppedIp),
        "our own NA looped back: {v2:?}"
    );
    assert_eq!(again, buf, "our own NA was modified");
}

/// `vip_common::frame::egress` (the TC egress program) on the same bytes: it drops only for a
/// configured VIP that is fenced now, as an IP or an ARP/ND drop, and its TC action follows.
fn check_egress(table: &Table, frame: &[u8]) {
    let verdict = vip_common::egress(frame, table);
    match verdict.outcome {
        Outcome::Pass => {
            assert_eq!(verdict, Verdict::PASS, "a pass names no VIP");
            assert_eq!(verdict.tc_action(), vip_common::frame::TC_ACT_UNSPEC);
        }
        Outcome::DroppedSentIp | Outcome::DroppedSentNeighbour => {
            let state = table
                .state(&verdict.vip)
                .expect("egress dropped for an address that is not a configured VIP");
            assert!(
                !state.answering_at(table.now_ns()),
                "egress dropped for a VIP that answers: {verdict:?}"
            );
            assert_eq!(verdict.tc_action(), vip_common::frame::TC_ACT_SHOT);
        }
        other => panic!("egress gave an ingress outcome {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    let table = Table::from_selector(sel);
    let original = frame.to_vec();
    let mut buf = frame.to_vec();
    let verdict = process(buf.as_mut_slice(), &table);

    // Action and VIP follow from the outcome.
    let expected_action = match verdict.outcome {
        Outcome::Pass | Outcome::Conflict => XDP_PASS,
        Outcome::Replied => XDP_TX,
        Outcome::DroppedRequest | Outcome::DroppedIp => XDP_DROP,
        Outcome::DroppedSentIp | Outcome::DroppedSentNeighbour => {
            panic!("the ingress decision judged a frame as sent: {verdict:?}")
        }
    };
    check_egress(&table, &original);
    assert_eq!(verdict.xdp_action(), expected_action, "{verdict:?}");
    if verdict.outcome == Outcome::Pass {
        assert_eq!(verdict, Verdict::PASS, "a pass names no VIP");
    } else {
        assert!(
            table.state(&verdict.vip).is_some(),
            "{verdict:?} names an address that is not a configured VIP"
        );
    }

    if let Some(ip) = parse_ipv6(&original) {
        check_ipv6(&table, verdict, &original, &buf, &ip);
        return;
    }

    let arp = parse_arp(&original);
    match verdict.outcome {
        Outcome::Replied => {
            let arp = arp.expect("XDP_TX for a frame that is not a well-formed ARP packet");
            assert_eq!(arp.op, 1, "XDP_TX for ARP op {} (not a request)", arp.op);
            assert_eq!(
                verdict.vip,
                VipKey::v4(arp.tpa),
                "answered for another VIP than asked"
            );
            let state = table
                .answering(arp.tpa)
                .expect("XDP_TX for a VIP that is fenced or not configured");
            assert!(unicast(&arp.sha), "answered a non-unicast requester");
            if let Some(sender) = table.answering(arp.spa) {
                assert_eq!(
                    sender.mac, arp.sha,
                    "answered a request whose sender claims one of our answering VIPs"
                );
            }
            // The reply, byte for byte; `a` is where the ARP packet starts (after any tag).
            let a = arp.at;
            assert_eq!(buf.len(), original.len(), "length changed");
            assert_eq!(&buf[0..6], &arp.sha, "Ethernet dst is not the requester");
            assert_eq!(&buf[6..12], &state.mac, "Ethernet src is not our MAC");
            assert_eq!(
                &buf[12..a],
                &original[12..a],
                "VLAN tag or ethertype changed"
            );
            assert_eq!(&buf[a - 2..a], &[0x08, 0x06], "not ARP");
            assert_eq!(&buf[a..a + 2], &[0x00, 0x01], "htype is not Ethernet");
            assert_eq!(
                &buf[a + 2..a + 6],
                &original[a + 2..a + 6],
                "ptype/hlen/plen changed"
            );
            assert_eq!(&buf[a + 6..a + 8], &[0x00, 0x02], "op is not reply");
            assert_eq!(&buf[a + 8..a + 14], &state.mac, "sender MAC is not ours");
            assert_eq!(&buf[a + 14..a + 18], &arp.tpa, "sender IP is not the VIP");
            assert_eq!(
                &buf[a + 18..a + 24],
                &arp.sha,
                "target MAC is not the requester's"
            );
            assert_eq!(
                &buf[a + 24..a + 28],
                &arp.spa,
                "target IP is not the requester's"
            );
            assert_eq!(&buf[a + 28..], &original[a + 28..], "padding changed");

            // Our reply looped back: not a request, and from our own MAC: pass untouched.
            let mut again = buf.clone();
            let v2 = process(again.as_mut_slice(), &table);
            assert_eq!(v2, Verdict::PASS, "our own reply was not passed");
            assert_eq!(again, buf, "our own reply was modified");
        }
        other => {
            assert_eq!(
                buf, original,
                "{other:?}: a frame we do not answer was modified"
            );
            match other {
                Outcome::DroppedRequest => {
                    let arp = arp.expect("ARP drop of a frame that is not well-formed ARP");
                    assert_eq!(arp.op, 1, "ARP drop of a non-request");
                    assert_eq!(verdict.vip, VipKey::v4(arp.tpa));
                    assert!(
                        table.answering(arp.tpa).is_none() || !unicast(&arp.sha),
                        "dropped a request we should have answered"
                    );
                }
                Outcome::DroppedIp => {
                    let dst = ipv4_dst(&original).expect("IPv4 drop of a frame that is not IPv4");
                    assert_eq!(verdict.vip, VipKey::v4(dst));
                    assert!(
                        table.answering(dst).is_none(),
                        "dropped IPv4 to an answering VIP"
                    );
                }
                Outcome::Conflict => {
                    let arp = arp.expect("conflict on a frame that is not well-formed ARP");
                    assert_eq!(verdict.vip, VipKey::v4(arp.spa));
                    let state = table
                        .answering(arp.spa)
                        .expect("conflict for a VIP we do not answer");
                    assert_ne!(state.mac, arp.sha, "our own MAC counted as a conflict");
                }
                Outcome::Pass | Outcome::Replied => {}
                Outcome::DroppedSentIp | Outcome::DroppedSentNeighbour => {
                    unreachable!("the ingress decision judged a frame as sent (checked above)")
                }
            }
        }
    }

    // Completeness: a frame for a VIP is never silently passed when the contract says otherwise.
    if let Some(arp) = &arp {
        let conflict = table.answering(arp.spa).is_some_and(|s| s.mac != arp.sha);
        if conflict {
            assert_eq!(verdict.outcome, Outcome::Conflict);
        } else if arp.op == 1 && table.state(&VipKey::v4(arp.tpa)).is_some() {
            let expected = if table.answering(arp.tpa).is_some() && unicast(&arp.sha) {
                Outcome::Replied
            } else {
                Outcome::DroppedRequest
            };
            assert_eq!(verdict.outcome, expected, "ARP request for a VIP");
        } else {
            assert_eq!(verdict.outcome, Outcome::Pass);
        }
    } else if let Some(dst) = ipv4_dst(&original) {
        let fenced_vip = table.state(&VipKey::v4(dst)).is_some() && table.answering(dst).is_none();
        let expected = if fenced_vip {
            Outcome::DroppedIp
        } else {
            Outcome::Pass
        };
        assert_eq!(verdict.outcome, expected, "IPv4 to {dst:?}");
    } else {
        assert_eq!(verdict.outcome, Outcome::Pass, "neither ARP nor IPv4");
    }
});
