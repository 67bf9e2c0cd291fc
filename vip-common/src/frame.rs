//! The per-frame decision, shared verbatim by the XDP program and host tests.
//!
//! [`process`] looks at the first bytes of an Ethernet frame and decides:
//!
//! * ARP request (Ethernet/IPv4 ARP) whose target is a VIP: answering -> the frame is rewritten in
//!   place into our reply ([`Outcome::Replied`], XDP_TX); fenced -> [`Outcome::DroppedRequest`]. A request
//!   for a VIP is never handed to the kernel, so a stale address on a fenced node cannot answer.
//! * ARP whose *sender* claims a VIP we answer for, from another MAC: [`Outcome::Conflict`] (pass).
//! * IPv4 to a VIP while fenced: [`Outcome::DroppedIp`].
//! * IPv6 VIPs get the same rules through Neighbor Discovery: see the `ipv6` submodule.
//! * What this node *sends* is judged by [`egress`] (the TC egress program): from a fenced VIP,
//!   nothing leaves. See the `egress` submodule.
//! * Everything else, including truncated or malformed frames: [`Verdict::PASS`], untouched. A frame
//!   is only rewritten after every field of it has been validated.
//!
//! The same rules apply to a frame with one 802.1Q tag (TPID 0x8100, any VLAN ID including 0, any
//! PCP/DEI): the ARP or IPv4 packet after the tag is judged as if untagged, and a reply keeps the tag
//! exactly as it came (bytes 12..18 are never written), so it goes back out on the requester's VLAN
//! with its priority. This is what a program attached to the *parent* of VLAN devices sees; a
//! program on a VLAN device (`eth0.100`) sees untagged frames and needs none of it.
//!
//! The VIP table is not per VLAN: a VIP is answered, and fenced, on every VLAN of the interface and
//! untagged. Fencing must cover every path the kernel could answer on, and by default
//! (`arp_ignore=0`, the weak host model) the kernel answers ARP for a local address arriving on any
//! interface, so a stale VIP on the parent would otherwise still be reachable through `eth0.100`.
//! Even without VLAN devices the kernel takes a priority-tagged frame (VLAN ID 0) as untagged
//! traffic of the parent and answers it. Answering follows the same default.
//!
//! 802.1ad (TPID 0x88a8) and stacked tags (QinQ, 0x8100 inside 0x8100) pass untouched: the program
//! cannot know which pair of tags a VIP belongs to. A program on the inner VLAN device sees them
//! untagged.
//!
//! Frame access goes through [`Packet`], which hands out fixed-size prefixes (`&[u8; N]`): in the
//! kernel that is one bounds check against `data_end` per prefix, which the verifier accepts, and every
//! field access after it is a constant offset.

use crate::maps::{VipKey, VipState};

mod egress;
mod ipv6;
pub use egress::{TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, TC_ACT_UNSPEC, egress};
pub use ipv6::{
    ICMPV6_NA, ICMPV6_NS, IPV6_FRAME_LEN, IPV6_HEADER_LEN, MAX_EXTENSION_BYTES,
    MAX_EXTENSION_HEADERS, NA_FLAG_OVERRIDE, NA_FLAG_ROUTER, NA_FLAG_SOLICITED, ND_FRAME_LEN,
    ND_LEN, NS_MIN_FRAME_LEN, NS_MIN_LEN, NdView, VLAN_IPV6_FRAME_LEN, VLAN_ND_FRAME_LEN,
    VLAN_NS_MIN_FRAME_LEN, all_nodes, build_na, build_ns, icmpv6_checksum, solicited_node,
    write_na_packet,
};

/// XDP action codes (`enum xdp_action` in the kernel UAPI).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;

/// The TC ingress program pulls a non-linear frame of at most this many bytes into the linear part
/// before judging it (every ARP request and every Neighbor Solicitation we answer is shorter), and
/// pulls this much of a longer one whose linear part does not hold an IPv6 header.
pub const TC_PULL_LEN: u32 = 128;

/// Ethernet header length (no VLAN tag).
pub const ETH_LEN: usize = 14;
/// One 802.1Q tag: TPID (2 bytes) + TCI (PCP, DEI, VLAN ID; 2 bytes).
pub const VLAN_TAG_LEN: usize = 4;
/// Ethernet header with one 802.1Q tag: the inner ethertype is at bytes 16..18.
pub const VLAN_ETH_LEN: usize = ETH_LEN + VLAN_TAG_LEN;
/// An Ethernet/IPv4 ARP packet (without the Ethernet header).
pub const ARP_LEN: usize = 28;
/// The fixed part of an IPv4 header.
pub const IPV4_HEADER_LEN: usize = 20;
/// Ethernet header + an Ethernet/IPv4 ARP packet.
pub const ARP_FRAME_LEN: usize = ETH_LEN + ARP_LEN;
/// Ethernet header + the fixed part of an IPv4 header.
pub const IPV4_FRAME_LEN: usize = ETH_LEN + IPV4_HEADER_LEN;
/// 802.1Q-tagged Ethernet header + an Ethernet/IPv4 ARP packet.
pub const VLAN_ARP_FRAME_LEN: usize = VLAN_ETH_LEN + ARP_LEN;
/// 802.1Q-tagged Ethernet header + the fixed part of an IPv4 header.
pub const VLAN_IPV4_FRAME_LEN: usize = VLAN_ETH_LEN + IPV4_HEADER_LEN;

pub const ETH_P_ARP: [u8; 2] = [0x08, 0x06];
pub const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];
/// 802.1Q VLAN tag (C-tag): handled.
pub const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
/// 802.1ad service tag (S-tag, QinQ outer): passed untouched.
pub const ETH_P_8021AD: [u8; 2] = [0x88, 0xa8];
pub const ARP_OP_REQUEST: u16 = 1;
pub const ARP_OP_REPLY: u16 = 2;
/// ARP hardware types the kernel accepts on Ethernet devices (`arp_process`): Ethernet and IEEE 802.
const ARPHRD_ETHER: u16 = 1;
const ARPHRD_IEEE802: u16 = 6;
const ARP_PTYPE_IPV4: u16 = 0x0800;

/// Read access to the start of a frame, in fixed-size prefixes.
pub trait Packet {
    /// The first `N` bytes, or `None` when the frame is shorter.
    fn head<const N: usize>(&self) -> Option<&[u8; N]>;
    /// The first `N` bytes, writable, or `None` when the frame is shorter.
    fn head_mut<const N: usize>(&mut self) -> Option<&mut [u8; N]>;
    /// `N` bytes at `offset`, or `None` when the frame is shorter. For the one variable-offset
    /// read, behind IPv6 extension headers: `offset` is never above [`MAX_VARIABLE_OFFSET`].
    fn at<const N: usize>(&self, offset: usize) -> Option<&[u8; N]>;
}

/// The highest offset [`Packet::at`] is asked for (the verifier must know a bound for a
/// variable offset into the packet, and it is far below the 64 KiB it accepts).
pub const MAX_VARIABLE_OFFSET: usize = ipv6::MAX_UPPER_LAYER_OFFSET;

impl Packet for [u8] {
    #[inline(always)]
    fn head<const N: usize>(&self) -> Option<&[u8; N]> {
        self.first_chunk::<N>()
    }

    #[inline(always)]
    fn head_mut<const N: usize>(&mut self) -> Option<&mut [u8; N]> {
        self.first_chunk_mut::<N>()
    }

    #[inline(always)]
    fn at<const N: usize>(&self, offset: usize) -> Option<&[u8; N]> {
        self.get(offset..)?.first_chunk::<N>()
    }
}

/// The VIP table as the program sees it.
pub trait VipLookup {
    /// The state of `vip`, or `None` when it is not a VIP on this interface.
    fn state(&self, vip: &VipKey) -> Option<VipState>;
    /// Kernel monotonic time in ns (only asked for when a frame concerns a VIP).
    fn now_ns(&self) -> u64;
}

/// What happened to a frame, as far as a VIP's counters are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// Not ours to judge: hand it to the kernel untouched.
    Pass,
    /// The frame was rewritten into our ARP reply (IPv6: Neighbor Advertisement): transmit it back.
    Replied,
    /// An ARP request (IPv6: Neighbor Solicitation) for the VIP that we must not answer (fenced, or
    /// an unusable requester).
    DroppedRequest,
    /// IPv4 (IPv6 for an IPv6 VIP) addressed to the VIP while fenced.
    DroppedIp,
    /// Someone else claims the VIP while we answer for it: pass, and count it.
    Conflict,
    /// Egress: an IPv4 (IPv6) packet from the VIP while fenced.
    DroppedSentIp,
    /// Egress: ARP from the VIP (IPv6: a Neighbor Advertisement for it, or a Neighbor Solicitation
    /// from it) while fenced.
    DroppedSentNeighbour,
}

/// What to do with a frame, and which VIP it concerned.
///
/// A plain struct rather than an enum with payloads on purpose: every field is always initialised
/// (`vip` is `::` for [`Outcome::Pass`]), so the compiled program never copies undefined payload
/// bytes, which the BPF verifier rejects as reads of uninitialised registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub vip: VipKey,
}

impl Verdict {
    /// Nothing to do with any VIP.
    pub const PASS: Self = Self {
        outcome: Outcome::Pass,
        vip: VipKey::v6([0; 16]),
    };

    #[inline(always)]
    #[must_use]
    pub const fn new(outcome: Outcome, vip: VipKey) -> Self {
        Self { outcome, vip }
    }

    /// The XDP action for this verdict.
    #[inline(always)]
    #[must_use]
    pub const fn xdp_action(&self) -> u32 {
        match self.outcome {
            Outcome::Pass | Outcome::Conflict => XDP_PASS,
            Outcome::Replied => XDP_TX,
            Outcome::DroppedRequest
            | Outcome::DroppedIp
            | Outcome::DroppedSentIp
            | Outcome::DroppedSentNeighbour => XDP_DROP,
        }
    }

    /// The TC action for this verdict: a drop is `TC_ACT_SHOT`, anything else is
    /// [`TC_ACT_UNSPEC`], "not mine", which lets the programs after ours run. The TC ingress
    /// program sends a [`Outcome::Replied`] frame back out with `bpf_redirect` instead
    /// ([`TC_ACT_REDIRECT`]); the egress program never replies.
    #[inline(always)]
    #[must_use]
    pub const fn tc_action(&self) -> i32 {
        match self.outcome {
            Outcome::DroppedRequest
            | Outcome::DroppedIp
            | Outcome::DroppedSentIp
            | Outcome::DroppedSentNeighbour => TC_ACT_SHOT,
            Outcome::Pass | Outcome::Conflict | Outcome::Replied => TC_ACT_UNSPEC,
        }
    }
}

/// Decide what to do with one frame, rewriting it in place when we answer.
#[inline(always)]
pub fn process<P: Packet + ?Sized, L: VipLookup>(pkt: &mut P, table: &L) -> Verdict {
    let Some(eth) = pkt.head::<ETH_LEN>() else {
        return Verdict::PASS;
    };
    let ether_type = [eth[12], eth[13]];
    if ether_type == ETH_P_IP {
        process_ipv4::<P, L, IPV4_FRAME_LEN, ETH_LEN>(pkt, table)
    } else if ether_type == ETH_P_ARP {
        process_arp::<P, L, ARP_FRAME_LEN, ETH_LEN>(pkt, table)
    } else if ether_type == ETH_P_IPV6 {
        ipv6::process_ipv6::<P, L, IPV6_FRAME_LEN, NS_MIN_FRAME_LEN, ND_FRAME_LEN, ETH_LEN>(
            pkt, table,
        )
    } else if ether_type == ETH_P_8021Q {
        process_tagged(pkt, table)
    } else {
        Verdict::PASS
    }
}

/// One 802.1Q tag: the same decisions on the packet after it. Two branches with constant offsets
/// (rather than one parser with a variable header length) keep every packet access at a constant
/// offset from `data` after a single bounds check, which the verifier accepts without range tracking.
#[inline(always)]
fn process_tagged<P: Packet + ?Sized, L: VipLookup>(pkt: &mut P, table: &L) -> Verdict {
    let Some(eth) = pkt.head::<VLAN_ETH_LEN>() else {
        return Verdict::PASS;
    };
    let inner_type = [eth[16], eth[17]];
    if inner_type == ETH_P_IP {
        process_ipv4::<P, L, VLAN_IPV4_FRAME_LEN, VLAN_ETH_LEN>(pkt, table)
    } else if inner_type == ETH_P_ARP {
        process_arp::<P, L, VLAN_ARP_FRAME_LEN, VLAN_ETH_LEN>(pkt, table)
    } else if inner_type == ETH_P_IPV6 {
        ipv6::process_ipv6::<
            P,
            L,
            VLAN_IPV6_FRAME_LEN,
            VLAN_NS_MIN_FRAME_LEN,
            VLAN_ND_FRAME_LEN,
            VLAN_ETH_LEN,
        >(pkt, table)
    } else {
        // Includes a second tag (QinQ): not ours to judge.
        Verdict::PASS
    }
}

/// `N` bytes at offset `AT` of a `FRAME`-byte prefix. `FRAME`, `AT` and `N` are constants of each
/// instantiation, so this compiles to a constant offset with no check left (and no panic path: an
/// impossible combination is `None`, and the callers assert at compile time that it is possible).
#[inline(always)]
fn part<const FRAME: usize, const AT: usize, const N: usize>(f: &[u8; FRAME]) -> Option<&[u8; N]> {
    f.get(AT..)?.first_chunk::<N>()
}

/// Like [`part`], writable.
#[inline(always)]
fn part_mut<const FRAME: usize, const AT: usize, const N: usize>(
    f: &mut [u8; FRAME],
) -> Option<&mut [u8; N]> {
    f.get_mut(AT..)?.first_chunk_mut::<N>()
}

/// IPv4 at offset `L3` (after the Ethernet header, tagged or not); `FRAME` = `L3` + 20.
#[inline(always)]
fn process_ipv4<P: Packet + ?Sized, L: VipLookup, const FRAME: usize, const L3: usize>(
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
    // Version 4, IHL >= 5: anything else the kernel discards by itself.
    let version_ihl = ip[0];
    if version_ihl >> 4 != 4 || version_ihl & 0x0f < 5 {
        return Verdict::PASS;
    }
    let vip = VipKey::v4([ip[16], ip[17], ip[18], ip[19]]);
    match table.state(&vip) {
        Some(state) if !state.answering_at(table.now_ns()) => Verdict::new(Outcome::DroppedIp, vip),
        _ => Verdict::PASS,
    }
}

/// The fields of a validated Ethernet/IPv4 ARP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpView {
    pub op: u16,
    pub sha: [u8; 6],
    pub spa: [u8; 4],
    pub tha: [u8; 6],
    pub tpa: [u8; 4],
}

impl ArpView {
    /// Parse the ARP part of an untagged Ethernet frame; see [`ArpView::parse_packet`].
    #[inline(always)]
    #[must_use]
    pub fn parse(f: &[u8; ARP_FRAME_LEN]) -> Option<Self> {
        part::<ARP_FRAME_LEN, ETH_LEN, ARP_LEN>(f).and_then(Self::parse_packet)
    }

    /// Parse an ARP packet (the bytes after the Ethernet header and any tag); `None` unless it is
    /// Ethernet (or IEEE 802) hardware, IPv4 protocol, hlen 6 and plen 4.
    #[inline(always)]
    #[must_use]
    pub fn parse_packet(a: &[u8; ARP_LEN]) -> Option<Self> {
        let htype = u16::from_be_bytes([a[0], a[1]]);
        let ptype = u16::from_be_bytes([a[2], a[3]]);
        if (htype != ARPHRD_ETHER && htype != ARPHRD_IEEE802)
            || ptype != ARP_PTYPE_IPV4
            || a[4] != 6
            || a[5] != 4
        {
            return None;
        }
        Some(Self {
            op: u16::from_be_bytes([a[6], a[7]]),
            sha: [a[8], a[9], a[10], a[11], a[12], a[13]],
            spa: [a[14], a[15], a[16], a[17]],
            tha: [a[18], a[19], a[20], a[21], a[22], a[23]],
            tpa: [a[24], a[25], a[26], a[27]],
        })
    }
}

/// ARP at offset `L3` (after the Ethernet header, tagged or not); `FRAME` = `L3` + 28.
#[inline(always)]
fn process_arp<P: Packet + ?Sized, L: VipLookup, const FRAME: usize, const L3: usize>(
    pkt: &mut P,
    table: &L,
) -> Verdict {
    const { assert!(FRAME == L3 + ARP_LEN && L3 >= 12) };
    let Some(arp) = pkt
        .head::<FRAME>()
        .and_then(part::<FRAME, L3, ARP_LEN>)
        .and_then(ArpView::parse_packet)
    else {
        return Verdict::PASS;
    };

    // Someone else announcing or asking from a VIP we hold: keep the evidence, let it through.
    let sender = VipKey::v4(arp.spa);
    if let Some(state) = table.state(&sender)
        && arp.sha != state.mac
        && state.answering_at(table.now_ns())
    {
        return Verdict::new(Outcome::Conflict, sender);
    }

    if arp.op != ARP_OP_REQUEST {
        return Verdict::PASS;
    }
    let vip = VipKey::v4(arp.tpa);
    let Some(state) = table.state(&vip) else {
        return Verdict::PASS;
    };
    if !state.answering_at(table.now_ns()) || !is_unicast(&arp.sha) {
        return Verdict::new(Outcome::DroppedRequest, vip);
    }
    // Rewrite the MAC addresses and the ARP packet; the ethertype, and a VLAN tag between them,
    // stay as they came.
    let written = pkt.head_mut::<FRAME>().and_then(|f| {
        let macs = part_mut::<FRAME, 0, 12>(f)?;
        macs[0..6].copy_from_slice(&arp.sha);
        macs[6..12].copy_from_slice(&state.mac);
        let packet = part_mut::<FRAME, L3, ARP_LEN>(f)?;
        write_arp_reply_packet(packet, &state.mac, &arp.tpa, &arp.sha, &arp.spa);
        Some(())
    });
    match written {
        Some(()) => Verdict::new(Outcome::Replied, vip),
        // Unreachable (the same prefix was readable above, and the parts are constant offsets in
        // it), but never transmit what we did not write.
        None => Verdict::new(Outcome::DroppedRequest, vip),
    }
}

/// A MAC we may send a unicast reply to: not multicast or broadcast, not all zeroes.
#[inline(always)]
#[must_use]
pub fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && *mac != [0; 6]
}

/// Rewrite a validated ARP request in place into our reply (RFC 826): Ethernet to the requester from
/// us; op 2; sender = (our MAC, VIP); target = (requester MAC, requester IP). Length and any padding
/// stay as they are; ARP has no checksum.
#[inline(always)]
pub fn write_arp_reply(
    f: &mut [u8; ARP_FRAME_LEN],
    our_mac: &[u8; 6],
    vip: &[u8; 4],
    requester_mac: &[u8; 6],
    requester_ip: &[u8; 4],
) {
    f[0..6].copy_from_slice(requester_mac);
    f[6..12].copy_from_slice(our_mac);
    if let Some(packet) = part_mut::<ARP_FRAME_LEN, ETH_LEN, ARP_LEN>(f) {
        write_arp_reply_packet(packet, our_mac, vip, requester_mac, requester_ip);
    }
}

/// The ARP packet part of [`write_arp_reply`] (the bytes after the Ethernet header and any tag).
#[inline(always)]
pub fn write_arp_reply_packet(
    a: &mut [u8; ARP_LEN],
    our_mac: &[u8; 6],
    vip: &[u8; 4],
    requester_mac: &[u8; 6],
    requester_ip: &[u8; 4],
) {
    // htype Ethernet (an IEEE 802 request is answered as Ethernet, like the kernel does).
    a[0] = 0;
    a[1] = 1;
    let [op_hi, op_lo] = ARP_OP_REPLY.to_be_bytes();
    a[6] = op_hi;
    a[7] = op_lo;
    a[8..14].copy_from_slice(our_mac);
    a[14..18].copy_from_slice(vip);
    a[18..24].copy_from_slice(requester_mac);
    a[24..28].copy_from_slice(requester_ip);
}

/// Build a complete ARP frame (used by the agent for gratuitous ARP and by tests).
#[must_use]
pub fn build_arp(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
) -> [u8; ARP_FRAME_LEN] {
    let mut f = [0u8; ARP_FRAME_LEN];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&eth_src);
    f[12..14].copy_from_slice(&ETH_P_ARP);
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes());
    f[16..18].copy_from_slice(&ARP_PTYPE_IPV4.to_be_bytes());
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa);
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa);
    f
}

/// Build an Ethernet + IPv4 header (20 bytes, no options, TTL 64, `total_length` 28 as for an ICMP
/// echo without payload, checksum left 0), followed by 8 zero bytes of L4 header: 42 bytes in all.
/// For tests and benchmarks; the program never builds IPv4.
#[must_use]
pub fn build_ipv4(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    protocol: u8,
) -> [u8; IPV4_FRAME_LEN + 8] {
    let mut f = [0u8; IPV4_FRAME_LEN + 8];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&eth_src);
    f[12..14].copy_from_slice(&ETH_P_IP);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&28u16.to_be_bytes());
    f[22] = 64;
    f[23] = protocol;
    f[26..30].copy_from_slice(&src);
    f[30..34].copy_from_slice(&dst);
    f
}

#[cfg(test)]
mod tests;
