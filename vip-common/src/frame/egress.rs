//! The other half of the fence: what this node sends (the TC egress program).
//!
//! XDP sees only what arrives. A fenced node whose kernel still has the VIP address (between the
//! fence and the address's removal, after a crash until the address expires, an address added by
//! hand) can still send from it: data and retransmissions on connections opened before the fence,
//! the kernel's own gratuitous ARP on link events (`arp_notify`, `NETDEV_NOTIFY_PEERS` on bond
//! failover), unsolicited Neighbor Advertisements. [`egress`] drops, while the VIP is fenced:
//!
//! * an IPv4 packet whose source is the VIP, an IPv6 packet whose source is an IPv6 VIP
//!   ([`Outcome::DroppedSentIp`]);
//! * an ARP packet (request, reply, gratuitous) whose sender address is the VIP, a Neighbor
//!   Advertisement whose target is an IPv6 VIP (whatever its source: unsolicited ones may come from
//!   the link-local address), a Neighbor Solicitation whose source is one
//!   ([`Outcome::DroppedSentNeighbour`]).
//!
//! Everything else, a VIP that is answering included, passes untouched, and so does anything that
//! does not parse (truncated, malformed, 802.1ad, two tags). Nothing is ever written. One 802.1Q
//! tag gets the same decisions; a tag the driver carries out of band (VLAN offload) is not in the
//! frame, which then reads as untagged.

use super::{
    ARP_FRAME_LEN, ARP_LEN, ETH_LEN, ETH_P_8021Q, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPV4_FRAME_LEN,
    IPV4_HEADER_LEN, Outcome, Packet, VLAN_ARP_FRAME_LEN, VLAN_ETH_LEN, VLAN_IPV4_FRAME_LEN,
    Verdict, VipKey, VipLookup,
    ipv6::{
        ICMPV6_NA, ICMPV6_NS, IPV6_FRAME_LEN, IPV6_HEADER_LEN, NS_MIN_FRAME_LEN, NS_MIN_LEN,
        VLAN_IPV6_FRAME_LEN, VLAN_NS_MIN_FRAME_LEN, is_v4_mapped,
    },
    part,
};
use crate::frame::ArpView;

/// TC action codes (`TC_ACT_*` in the kernel UAPI).
/// "Not mine": with tcx (`TCX_NEXT`) the next program runs, or the packet goes on when this is the
/// last one; with a classic `cls_bpf` filter the next filter runs. Unlike `TC_ACT_OK` (`TCX_PASS`),
/// it does not end the chain for the programs after ours.
pub const TC_ACT_UNSPEC: i32 = -1;
pub const TC_ACT_OK: i32 = 0;
pub const TC_ACT_SHOT: i32 = 2;
/// What `bpf_redirect` returns: the TC ingress program's reply leaves through the interface's
/// egress.
pub const TC_ACT_REDIRECT: i32 = 7;

const IPPROTO_ICMPV6: u8 = 58;

/// Whether `vip` is a VIP of this interface that is fenced now.
#[inline(always)]
fn fenced<L: VipLookup>(table: &L, vip: &VipKey) -> bool {
    matches!(table.state(vip), Some(state) if !state.answering_at(table.now_ns()))
}

/// Decide what to do with one frame this node is about to send. Never writes.
#[inline(always)]
pub fn egress<P: Packet + ?Sized, L: VipLookup>(pkt: &P, table: &L) -> Verdict {
    let Some(eth) = pkt.head::<ETH_LEN>() else {
        return Verdict::PASS;
    };
    let ether_type = [eth[12], eth[13]];
    if ether_type == ETH_P_IP {
        sent_ipv4::<P, L, IPV4_FRAME_LEN, ETH_LEN>(pkt, table)
    } else if ether_type == ETH_P_ARP {
        sent_arp::<P, L, ARP_FRAME_LEN, ETH_LEN>(pkt, table)
    } else if ether_type == ETH_P_IPV6 {
        sent_ipv6::<P, L, IPV6_FRAME_LEN, NS_MIN_FRAME_LEN, ETH_LEN>(pkt, table)
    } else if ether_type == ETH_P_8021Q {
        sent_tagged(pkt, table)
    } else {
        Verdict::PASS
    }
}

/// One 802.1Q tag: the same decisions at constant offsets 4 bytes further (see `process_tagged`).
#[inline(always)]
fn sent_tagged<P: Packet + ?Sized, L: VipLookup>(pkt: &P, table: &L) -> Verdict {
    let Some(eth) = pkt.head::<VLAN_ETH_LEN>() else {
        return Verdict::PASS;
    };
    let inner_type = [eth[16], eth[17]];
    if inner_type == ETH_P_IP {
        sent_ipv4::<P, L, VLAN_IPV4_FRAME_LEN, VLAN_ETH_LEN>(pkt, table)
    } else if inner_type == ETH_P_ARP {
        sent_arp::<P, L, VLAN_ARP_FRAME_LEN, VLAN_ETH_LEN>(pkt, table)
    } else if inner_type == ETH_P_IPV6 {
        sent_ipv6::<P, L, VLAN_IPV6_FRAME_LEN, VLAN_NS_MIN_FRAME_LEN, VLAN_ETH_LEN>(pkt, table)
    } else {
        Verdict::PASS
    }
}

/// IPv4 at offset `L3`; `FRAME` = `L3` + 20.
#[inline(always)]
fn sent_ipv4<P: Packet + ?Sized, L: VipLookup, const FRAME: usize, const L3: usize>(
    pkt: &P,
    table: &L,
) -> Verdict {
    const { assert!(FRAME == L3 + IPV4_HEADER_LEN) };
    let Some(ip) = pkt
        .head::<FRAME>()
        .and_then(part::<FRAME, L3, IPV4_HEADER_LEN>)
    else {
        return Verdict::PASS;
    };
    let version_ihl = ip[0];
    if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
        return Verdict::PASS;
    }
    let src = VipKey::v4([ip[12], ip[13], ip[14], ip[15]]);
    if fenced(table, &src) {
        Verdict::new(Outcome::DroppedSentIp, src)
    } else {
        Verdict::PASS
    }
}

/// ARP at offset `L3`; `FRAME` = `L3` + 28.
#[inline(always)]
fn sent_arp<P: Packet + ?Sized, L: VipLookup, const FRAME: usize, const L3: usize>(
    pkt: &P,
    table: &L,
) -> Verdict {
    const { assert!(FRAME == L3 + ARP_LEN) };
    let Some(arp) = pkt
        .head::<FRAME>()
        .and_then(part::<FRAME, L3, ARP_LEN>)
        .and_then(ArpView::parse_packet)
    else {
        return Verdict::PASS;
    };
    let sender = VipKey::v4(arp.spa);
    if fenced(table, &sender) {
        Verdict::new(Outcome::DroppedSentNeighbour, sender)
    } else {
        Verdict::PASS
    }
}

/// IPv6 at offset `L3`; `HDR` = `L3` + 40, `NS` = `HDR` + 24 (room for an ND message's target).
#[inline(always)]
fn sent_ipv6<
    P: Packet + ?Sized,
    L: VipLookup,
    const HDR: usize,
    const NS: usize,
    const L3: usize,
>(
    pkt: &P,
    table: &L,
) -> Verdict {
    const { assert!(HDR == L3 + IPV6_HEADER_LEN && NS == HDR + NS_MIN_LEN) };
    let Some(ip) = pkt.head::<HDR>().and_then(part::<HDR, L3, IPV6_HEADER_LEN>) else {
        return Verdict::PASS;
    };
    if ip[0] >> 4 != 6 {
        return Verdict::PASS;
    }
    let Some(src) = part::<IPV6_HEADER_LEN, 8, 16>(ip) else {
        return Verdict::PASS;
    };
    let src = VipKey::v6(*src);
    // Neighbor Discovery first, so that it is counted as what it is (the IPv6 ARP).
    if ip[6] == IPPROTO_ICMPV6
        && let Some(nd) = pkt
            .head::<NS>()
            .and_then(part::<NS, L3, { IPV6_HEADER_LEN + NS_MIN_LEN }>)
    {
        let icmp_type = nd[40];
        if icmp_type == ICMPV6_NA
            && let Some(target) = part::<{ IPV6_HEADER_LEN + NS_MIN_LEN }, 48, 16>(nd)
        {
            let target = VipKey::v6(*target);
            if !is_v4_mapped(&target.addr) && fenced(table, &target) {
                return Verdict::new(Outcome::DroppedSentNeighbour, target);
            }
        }
        if icmp_type == ICMPV6_NS && !is_v4_mapped(&src.addr) && fenced(table, &src) {
            return Verdict::new(Outcome::DroppedSentNeighbour, src);
        }
    }
    if !is_v4_mapped(&src.addr) && fenced(table, &src) {
        Verdict::new(Outcome::DroppedSentIp, src)
    } else {
        Verdict::PASS
    }
}

#[cfg(test)]
#[path = "egress_tests.rs"]
mod tests;
