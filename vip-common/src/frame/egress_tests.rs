//! Host tests for [`egress`]: what a node may send from a VIP, byte-exact frames.

extern crate std;

use std::{vec, vec::Vec};

use super::*;
use crate::{
    VipState,
    frame::{
        ARP_OP_REPLY, ARP_OP_REQUEST, ETH_P_8021AD, NA_FLAG_OVERRIDE, all_nodes, build_arp,
        build_ipv4, build_na, build_ns,
    },
};

const FENCED: [u8; 4] = [10, 77, 0, 100];
const ANSWERING: [u8; 4] = [10, 77, 0, 101];
const NODE_IP: [u8; 4] = [10, 77, 0, 1];
const CLIENT_IP: [u8; 4] = [10, 77, 0, 9];
const FENCED6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x00,
];
const ANSWERING6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0x01,
];
const NODE6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
];
const CLIENT6: [u8; 16] = [
    0x20, 0x01, 0x0d, 0xb8, 0, 0x77, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x09,
];
const LINK_LOCAL: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01];
const OUR_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0xcc, 0, 0, 0, 0x09];
const BCAST: [u8; 6] = [0xff; 6];
const NOW: u64 = 5_000_000_000;

/// FENCED and FENCED6 fenced (deadline `fenced_until`, in the past by default), ANSWERING and
/// ANSWERING6 answering.
struct Table {
    fenced_until: u64,
}

impl VipLookup for Table {
    fn state(&self, vip: &VipKey) -> Option<VipState> {
        if *vip == VipKey::v4(FENCED) || *vip == VipKey::v6(FENCED6) {
            Some(VipState::answering_until(OUR_MAC, self.fenced_until))
        } else if *vip == VipKey::v4(ANSWERING) || *vip == VipKey::v6(ANSWERING6) {
            Some(VipState::answering_until(OUR_MAC, NOW + 1_000_000_000))
        } else {
            None
        }
    }
    fn now_ns(&self) -> u64 {
        NOW
    }
}

const TABLE: Table = Table { fenced_until: 0 };

fn judge(frame: &[u8]) -> Verdict {
    egress(frame, &TABLE)
}

fn dropped(outcome: Outcome, vip: VipKey) -> Verdict {
    Verdict::new(outcome, vip)
}

fn ipv4_from(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    build_ipv4(CLIENT_MAC, OUR_MAC, src, dst, 6).to_vec()
}

/// An IPv6 TCP header-sized packet from `src` to `dst` (40-byte header + 20 zero bytes).
fn ipv6_from(src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut f = vec![0u8; ETH_LEN + IPV6_HEADER_LEN + 20];
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

/// `frame` with one 802.1Q tag (VLAN 100, PCP 5) after the MAC addresses.
fn tagged(frame: &[u8], tpid: [u8; 2]) -> Vec<u8> {
    let mut f = frame[..12].to_vec();
    f.extend_from_slice(&tpid);
    f.extend_from_slice(&[0xa0, 100]);
    f.extend_from_slice(&frame[12..]);
    f
}

/// Every frame the fence must stop, with its verdict.
fn must_drop() -> Vec<(Vec<u8>, Verdict)> {
    let (all_nodes_ip, all_nodes_mac) = all_nodes();
    let mut na_from_link_local =
        build_na(all_nodes_mac, OUR_MAC, FENCED6, all_nodes_ip, 0).to_vec();
    na_from_link_local[22..38].copy_from_slice(&LINK_LOCAL);
    vec![
        // Data on a connection opened before the fence, and a retransmission of it.
        (
            ipv4_from(FENCED, CLIENT_IP),
            dropped(Outcome::DroppedSentIp, VipKey::v4(FENCED)),
        ),
        // The kernel's gratuitous ARP (arp_notify, bond failover): request and reply forms.
        (
            build_arp(
                BCAST,
                OUR_MAC,
                ARP_OP_REQUEST,
                OUR_MAC,
                FENCED,
                [0; 6],
                FENCED,
            )
            .to_vec(),
            dropped(Outcome::DroppedSentNeighbour, VipKey::v4(FENCED)),
        ),
        (
            build_arp(BCAST, OUR_MAC, ARP_OP_REPLY, OUR_MAC, FENCED, BCAST, FENCED).to_vec(),
            dropped(Outcome::DroppedSentNeighbour, VipKey::v4(FENCED)),
        ),
        // An ARP reply from the VIP to a client that asked.
        (
            build_arp(
                CLIENT_MAC,
                OUR_MAC,
                ARP_OP_REPLY,
                OUR_MAC,
                FENCED,
                CLIENT_MAC,
                CLIENT_IP,
            )
            .to_vec(),
            dropped(Outcome::DroppedSentNeighbour, VipKey::v4(FENCED)),
        ),
        // A resolution that uses the VIP as its source address (arp_announce 0).
        (
            build_arp(
                BCAST,
                OUR_MAC,
                ARP_OP_REQUEST,
                OUR_MAC,
                FENCED,
                [0; 6],
                CLIENT_IP,
            )
            .to_vec(),
            dropped(Outcome::DroppedSentNeighbour, VipKey::v4(FENCED)),
        ),
        (
            ipv6_from(FENCED6, CLIENT6),
            dropped(Outcome::DroppedSentIp, VipKey::v6(FENCED6)),
        ),
        // An unsolicited advertisement from the VIP, and one from the link-local address.
        (
            build_na(
                all_nodes_mac,
                OUR_MAC,
                FENCED6,
                all_nodes_ip,
                NA_FLAG_OVERRIDE,
            )
            .to_vec(),
            dropped(Outcome::DroppedSentNeighbour, VipKey::v6(FENCED6)),
        ),
        (
            na_from_link_local,
            dropped(Outcome::DroppedSentNeighbour, VipKey::v6(FENCED6)),
        ),
        // A solicitation from the VIP (resolving a client with the VIP as source).
        (
            build_ns(BCAST, OUR_MAC, FENCED6, CLIENT6, CLIENT6, 1, OUR_MAC).to_vec(),
            dropped(Outcome::DroppedSentNeighbour, VipKey::v6(FENCED6)),
        ),
    ]
}

/// Frames the fence must let through: from answering VIPs, from the node's own addresses, to a
/// fenced VIP, about other addresses.
fn must_pass() -> Vec<Vec<u8>> {
    let (all_nodes_ip, all_nodes_mac) = all_nodes();
    vec![
        ipv4_from(ANSWERING, CLIENT_IP),
        ipv4_from(NODE_IP, CLIENT_IP),
        // To a fenced VIP (another node holds it now): the source decides, not the destination.
        ipv4_from(NODE_IP, FENCED),
        build_arp(
            BCAST,
            OUR_MAC,
            ARP_OP_REQUEST,
            OUR_MAC,
            ANSWERING,
            [0; 6],
            ANSWERING,
        )
        .to_vec(),
        // The node asking who holds a fenced VIP now.
        build_arp(
            BCAST,
            OUR_MAC,
            ARP_OP_REQUEST,
            OUR_MAC,
            NODE_IP,
            [0; 6],
            FENCED,
        )
        .to_vec(),
        build_arp(
            CLIENT_MAC,
            OUR_MAC,
            ARP_OP_REPLY,
            OUR_MAC,
            NODE_IP,
            CLIENT_MAC,
            CLIENT_IP,
        )
        .to_vec(),
        ipv6_from(ANSWERING6, CLIENT6),
        ipv6_from(NODE6, FENCED6),
        build_na(
            all_nodes_mac,
            OUR_MAC,
            ANSWERING6,
            all_nodes_ip,
            NA_FLAG_OVERRIDE,
        )
        .to_vec(),
        // The node soliciting the VIP (it resolves the new holder), from its own address.
        build_ns(BCAST, OUR_MAC, NODE6, FENCED6, FENCED6, 1, OUR_MAC).to_vec(),
        // An IPv6 packet whose source is the IPv4 VIP's key (::ffff:a.b.c.d) is not that VIP's.
        ipv6_from(VipKey::v4(FENCED).addr, CLIENT6),
    ]
}

#[test]
fn what_leaves_from_a_fenced_vip_is_dropped_and_counted_as_ip_or_arp() {
    for (frame, verdict) in must_drop() {
        assert_eq!(judge(&frame), verdict, "{frame:02x?}");
        assert_eq!(judge(&frame).tc_action(), TC_ACT_SHOT);
    }
}

#[test]
fn what_leaves_from_an_answering_vip_or_another_address_passes() {
    for frame in must_pass() {
        assert_eq!(judge(&frame), Verdict::PASS, "{frame:02x?}");
        assert_eq!(judge(&frame).tc_action(), TC_ACT_UNSPEC);
    }
}

#[test]
fn one_8021q_tag_gets_the_same_decisions_and_8021ad_passes() {
    for (frame, verdict) in must_drop() {
        assert_eq!(judge(&tagged(&frame, ETH_P_8021Q)), verdict, "{frame:02x?}");
        assert_eq!(judge(&tagged(&frame, ETH_P_8021AD)), Verdict::PASS);
        // Two tags: not ours to judge.
        let qinq = tagged(&tagged(&frame, ETH_P_8021Q), ETH_P_8021Q);
        assert_eq!(judge(&qinq), Verdict::PASS);
    }
    for frame in must_pass() {
        assert_eq!(judge(&tagged(&frame, ETH_P_8021Q)), Verdict::PASS);
    }
}

#[test]
fn a_truncated_frame_passes_whatever_it_would_have_been() {
    for (frame, verdict) in must_drop() {
        let needed = frame.len();
        for len in 0..needed {
            let v = judge(&frame[..len]);
            // Either too short to know (pass), or the part that matters was complete already: an
            // advertisement cut after its IPv6 header still comes from the VIP (an IP drop).
            assert!(
                v == Verdict::PASS
                    || v == verdict
                    || v == dropped(Outcome::DroppedSentIp, verdict.vip),
                "prefix of {len} bytes: {v:?}"
            );
        }
        // An ARP, IPv4 or IPv6 header cut short always passes.
        assert_eq!(judge(&frame[..ETH_LEN + 8]), Verdict::PASS);
    }
}

#[test]
fn malformed_headers_pass() {
    let mut v6_in_v4 = ipv4_from(FENCED, CLIENT_IP);
    v6_in_v4[14] = 0x65;
    let mut short_ihl = ipv4_from(FENCED, CLIENT_IP);
    short_ihl[14] = 0x44;
    let mut arp_hlen = build_arp(
        BCAST,
        OUR_MAC,
        ARP_OP_REQUEST,
        OUR_MAC,
        FENCED,
        [0; 6],
        FENCED,
    )
    .to_vec();
    arp_hlen[18] = 8;
    let mut arp_ptype = build_arp(
        BCAST,
        OUR_MAC,
        ARP_OP_REQUEST,
        OUR_MAC,
        FENCED,
        [0; 6],
        FENCED,
    )
    .to_vec();
    arp_ptype[16] = 0x86;
    let mut v4_in_v6 = ipv6_from(FENCED6, CLIENT6);
    v4_in_v6[14] = 0x40;
    for frame in [v6_in_v4, short_ihl, arp_hlen, arp_ptype, v4_in_v6] {
        assert_eq!(judge(&frame), Verdict::PASS, "{frame:02x?}");
    }
}

#[test]
fn the_fence_starts_exactly_at_the_deadline() {
    let frame = ipv4_from(FENCED, CLIENT_IP);
    let until = |deadline| {
        egress(
            frame.as_slice(),
            &Table {
                fenced_until: deadline,
            },
        )
    };
    assert_eq!(
        until(NOW + 1),
        Verdict::PASS,
        "answering until the deadline"
    );
    assert_eq!(
        until(NOW),
        dropped(Outcome::DroppedSentIp, VipKey::v4(FENCED)),
        "fenced from it on"
    );
}

#[test]
fn an_address_that_is_no_vip_here_passes() {
    let frame = ipv4_from([192, 0, 2, 1], CLIENT_IP);
    assert_eq!(judge(&frame), Verdict::PASS);
    let frame = ipv6_from(CLIENT6, NODE6);
    assert_eq!(judge(&frame), Verdict::PASS);
}
