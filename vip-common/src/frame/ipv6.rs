//! IPv6 VIPs: Neighbor Discovery (RFC 4861) is IPv6's ARP, and gets the same treatment.
//!
//! * Neighbor Solicitation whose target is a VIP:
//!   * fenced -> [`Outcome::DroppedRequest`], whatever its form, so a stale address on a fenced node
//!     cannot answer;
//!   * answering, and the solicitation has the form every resolver sends (32 bytes of ICMPv6: the
//!     NS and one 8-byte option, hop limit 255, code 0, checksum right, a source link-layer
//!     address option from a unicast MAC, or no such option when the source is `::` as in
//!     duplicate address detection) -> rewritten in place into our Neighbor Advertisement
//!     ([`Outcome::Replied`], XDP_TX): from the VIP, to the solicitation's source (to `ff02::1`
//!     when that is `::`), Override set, Solicited set unless the source was `::`, and our MAC in
//!     a target link-layer address option. The frame keeps its length, so no tail adjustment is
//!     needed and the verifier sees constant offsets only;
//!   * answering, any other form (more or other options, extension headers) -> passed: the
//!     kernel, which holds the address while we answer, validates and answers it.
//!   * behind IPv6 extension headers (Hop-by-Hop, Destination Options, Routing, Fragment; up to
//!     [`MAX_EXTENSION_HEADERS`] of them in [`MAX_EXTENSION_BYTES`]): fenced ->
//!     [`Outcome::DroppedRequest`], since the kernel would answer it for an address it still has;
//!     answering -> passed to the kernel as above. A chain the walk cannot follow (longer, a later
//!     fragment, another header such as ESP, truncated) is judged by its destination like any
//!     IPv6 packet: to the solicited-node group it passes.
//! * Neighbor Advertisement for a VIP we answer, or a Neighbor Solicitation *from* it, from another
//!   MAC: [`Outcome::Conflict`] (pass).
//! * Any other IPv6 packet to a VIP while fenced: [`Outcome::DroppedIp`].
//! * Everything else passes untouched. In particular an IPv4-mapped destination or target
//!   (`::ffff:a.b.c.d`) is never looked up: it is the key of the IPv4 VIP `a.b.c.d`
//!   ([`VipKey::v4`]), but it is never a node's IPv6 address on the wire (RFC 4291 2.5.5.2), so an
//!   IPv6 packet about it is no business of that IPv4 VIP (no answer, no drop, no count).

use super::{Outcome, Packet, Verdict, VipKey, VipLookup, part, part_mut};
use crate::maps::V4_MAPPED_PREFIX;

/// The fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// ICMPv6 Neighbor Solicitation without options: type, code, checksum, reserved, target.
pub const NS_MIN_LEN: usize = 24;
/// An IPv6 header and a Neighbor Solicitation or Advertisement with one 8-byte option: the form
/// we answer, and the form of our answer.
pub const ND_LEN: usize = IPV6_HEADER_LEN + NS_MIN_LEN + 8;
/// Ethernet header + the fixed IPv6 header.
pub const IPV6_FRAME_LEN: usize = super::ETH_LEN + IPV6_HEADER_LEN;
/// Ethernet header + IPv6 header + an option-less Neighbor Solicitation.
pub const NS_MIN_FRAME_LEN: usize = IPV6_FRAME_LEN + NS_MIN_LEN;
/// Ethernet header + [`ND_LEN`]: 86 bytes.
pub const ND_FRAME_LEN: usize = super::ETH_LEN + ND_LEN;
/// 802.1Q-tagged Ethernet header + the fixed IPv6 header.
pub const VLAN_IPV6_FRAME_LEN: usize = super::VLAN_ETH_LEN + IPV6_HEADER_LEN;
/// 802.1Q-tagged Ethernet header + IPv6 header + an option-less Neighbor Solicitation.
pub const VLAN_NS_MIN_FRAME_LEN: usize = VLAN_IPV6_FRAME_LEN + NS_MIN_LEN;
/// 802.1Q-tagged Ethernet header + [`ND_LEN`].
pub const VLAN_ND_FRAME_LEN: usize = super::VLAN_ETH_LEN + ND_LEN;

const IPPROTO_ICMPV6: u8 = 58;
/// The extension headers walked in front of a Neighbor Solicitation (RFC 8200 4).
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;
/// How many extension headers the walk follows: RFC 8200 4.1's order has at most Hop-by-Hop,
/// Destination Options, Routing and Fragment in front of an upper-layer header.
pub const MAX_EXTENSION_HEADERS: usize = 4;
/// How many bytes of extension headers the walk follows (a Hop-by-Hop header is 8 bytes unless it
/// carries large options).
pub const MAX_EXTENSION_BYTES: usize = 256;
/// The highest offset of an upper-layer header the walk reads: after an 802.1Q-tagged Ethernet
/// header, the IPv6 header and [`MAX_EXTENSION_BYTES`].
pub(super) const MAX_UPPER_LAYER_OFFSET: usize =
    super::VLAN_ETH_LEN + IPV6_HEADER_LEN + MAX_EXTENSION_BYTES;
pub const ICMPV6_NS: u8 = 135;
pub const ICMPV6_NA: u8 = 136;
/// Neighbor Advertisement flags (first byte after the checksum).
pub const NA_FLAG_ROUTER: u8 = 0x80;
pub const NA_FLAG_SOLICITED: u8 = 0x40;
pub const NA_FLAG_OVERRIDE: u8 = 0x20;
/// ND option types.
const OPT_SOURCE_LL: u8 = 1;
const OPT_TARGET_LL: u8 = 2;
/// Hop limit of every ND message: anything else did not originate on this link (RFC 4861 7.1.1).
const ND_HOP_LIMIT: u8 = 255;
/// `ff02::1`, all nodes on the link, and its MAC.
const ALL_NODES: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// IPv6 at offset `L3`. `HDR`, `NS` and `ND` are `L3` plus the IPv6 header, plus an option-less
/// NS, plus a one-option NS (separate constants because stable Rust cannot add to a const
/// parameter).
#[inline(always)]
pub(super) fn process_ipv6<
    P: Packet + ?Sized,
    L: VipLookup,
    const HDR: usize,
    const NS: usize,
    const ND: usize,
    const L3: usize,
>(
    pkt: &mut P,
    table: &L,
) -> Verdict {
    const {
        assert!(
            HDR == L3 + IPV6_HEADER_LEN && NS == HDR + NS_MIN_LEN && ND == L3 + ND_LEN && L3 >= 12
        );
    };
    let Some(ip) = pkt.head::<HDR>().and_then(part::<HDR, L3, IPV6_HEADER_LEN>) else {
        return Verdict::PASS;
    };
    if ip[0] >> 4 != 6 {
        return Verdict::PASS;
    }
    let Some(dst) = part::<IPV6_HEADER_LEN, 24, 16>(ip) else {
        return Verdict::PASS;
    };
    let dst = VipKey::v6(*dst);
    let next_header = ip[6];
    if next_header == IPPROTO_ICMPV6
        && let Some(verdict) = neighbour_discovery::<P, L, NS, ND, L3>(pkt, table)
    {
        return verdict;
    }
    if is_extension(next_header)
        && let Some(verdict) = fenced_solicitation_behind_extensions(pkt, table, next_header, HDR)
    {
        return verdict;
    }
    if is_v4_mapped(&dst.addr) {
        return Verdict::PASS;
    }
    match table.state(&dst) {
        Some(state) if !state.answering_at(table.now_ns()) => Verdict::new(Outcome::DroppedIp, dst),
        _ => Verdict::PASS,
    }
}

/// A Neighbor Solicitation or Advertisement about a VIP: its verdict. `None`: not about a VIP (the
/// caller goes on to the destination check).
#[inline(always)]
fn neighbour_discovery<
    P: Packet + ?Sized,
    L: VipLookup,
    const NS: usize,
    const ND: usize,
    const L3: usize,
>(
    pkt: &mut P,
    table: &L,
) -> Option<Verdict> {
    let f = pkt.head::<NS>()?;
    let eth_src = *part::<NS, 6, 6>(f)?;
    let nd = part::<NS, L3, { IPV6_HEADER_LEN + NS_MIN_LEN }>(f)?;
    let icmp_type = nd[40];
    if icmp_type != ICMPV6_NS && icmp_type != ICMPV6_NA {
        return None;
    }
    if icmp_type == ICMPV6_NS {
        // Another MAC soliciting *from* a VIP we hold uses it as its own address: someone else
        // holds it too (the IPv6 counterpart of ARP's sender check). Pass, and count it.
        let src = VipKey::v6(*part::<{ IPV6_HEADER_LEN + NS_MIN_LEN }, 8, 16>(nd)?);
        if src.addr != [0; 16]
            && !is_v4_mapped(&src.addr)
            && let Some(state) = table.state(&src)
            && eth_src != state.mac
            && state.answering_at(table.now_ns())
        {
            return Some(Verdict::new(Outcome::Conflict, src));
        }
    }
    let vip = VipKey::v6(*part::<{ IPV6_HEADER_LEN + NS_MIN_LEN }, 48, 16>(nd)?);
    if is_v4_mapped(&vip.addr) {
        return None;
    }
    let state = table.state(&vip)?;
    let answering = state.answering_at(table.now_ns());
    if icmp_type == ICMPV6_NA {
        // Someone else advertising a VIP we hold; any other advertisement is judged by its
        // destination like all IPv6.
        return (answering && eth_src != state.mac).then_some(Verdict::new(Outcome::Conflict, vip));
    }
    if !answering {
        return Some(Verdict::new(Outcome::DroppedRequest, vip));
    }
    let Some(ns) = pkt
        .head::<ND>()
        .and_then(part::<ND, L3, ND_LEN>)
        .and_then(NdView::parse_packet)
        .filter(NdView::is_answerable_solicitation)
    else {
        // Answering, but not the one form we rewrite: the kernel holds the address and decides.
        return Some(Verdict::PASS);
    };
    let (eth_dst, ip_dst, flags) = if ns.src == [0; 16] {
        (ALL_NODES_MAC, ALL_NODES, NA_FLAG_OVERRIDE)
    } else {
        (ns.option_mac, ns.src, NA_FLAG_OVERRIDE | NA_FLAG_SOLICITED)
    };
    // A plain function, not a closure: LLVM may outline a closure for one of the programs, and a
    // BPF subprogram's stack adds to its caller's (the TC ingress program went past 512 bytes).
    let written = match pkt.head_mut::<ND>() {
        Some(f) => write_na_frame::<ND, L3>(f, &eth_dst, &state.mac, &vip.addr, &ip_dst, flags),
        None => None,
    };
    Some(match written {
        Some(()) => Verdict::new(Outcome::Replied, vip),
        // Unreachable (the same prefix was readable above), but never transmit what we did not
        // write.
        None => Verdict::new(Outcome::DroppedRequest, vip),
    })
}

/// Whether `next_header` is one of the extension headers the walk follows.
#[inline(always)]
fn is_extension(next_header: u8) -> bool {
    next_header == IPPROTO_HOPOPTS
        || next_header == IPPROTO_ROUTING
        || next_header == IPPROTO_FRAGMENT
        || next_header == IPPROTO_DSTOPTS
}

/// Follow the extension headers starting at `offset` (the first one's type: `next_header`) to an
/// ICMPv6 message: its offset, or `None` when the chain ends in anything else, is longer than
/// [`MAX_EXTENSION_HEADERS`] headers or [`MAX_EXTENSION_BYTES`] bytes, is truncated, or holds a
/// Fragment header of a later fragment (which carries no ICMPv6 header).
///
/// One bounded loop with one variable-offset read per header ([`Packet::at`]); every offset it
/// reads is checked against [`MAX_UPPER_LAYER_OFFSET`] first, so the verifier sees a bounded one.
#[inline(always)]
pub(super) fn icmpv6_behind_extensions<P: Packet + ?Sized>(
    pkt: &P,
    mut next_header: u8,
    mut offset: usize,
) -> Option<usize> {
    let limit = offset + MAX_EXTENSION_BYTES;
    for _ in 0..MAX_EXTENSION_HEADERS {
        if !is_extension(next_header) {
            break;
        }
        if offset > MAX_UPPER_LAYER_OFFSET {
            return None;
        }
        // Next header, length (8-byte units beyond the first 8; the Fragment header has none),
        // and the Fragment header's offset and flags.
        let h = pkt.at::<4>(offset)?;
        let len = if next_header == IPPROTO_FRAGMENT {
            if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                return None;
            }
            8
        } else {
            (usize::from(h[1]) + 1) * 8
        };
        next_header = h[0];
        offset += len;
        if offset > limit {
            return None;
        }
    }
    (next_header == IPPROTO_ICMPV6 && offset <= MAX_UPPER_LAYER_OFFSET).then_some(offset)
}

/// A Neighbor Solicitation behind extension headers (the IPv6 header ends at `offset`) for a VIP
/// the map knows and fences: [`Outcome::DroppedRequest`]. `None` for anything else, which the
/// caller judges by its destination (answering, the kernel answers such a solicitation).
#[inline(always)]
fn fenced_solicitation_behind_extensions<P: Packet + ?Sized, L: VipLookup>(
    pkt: &P,
    table: &L,
    next_header: u8,
    offset: usize,
) -> Option<Verdict> {
    let at = icmpv6_behind_extensions(pkt, next_header, offset)?;
    let icmp = pkt.at::<NS_MIN_LEN>(at)?;
    if icmp[0] != ICMPV6_NS {
        return None;
    }
    let vip = VipKey::v6(*part::<NS_MIN_LEN, 8, 16>(icmp)?);
    if is_v4_mapped(&vip.addr) {
        return None;
    }
    let state = table.state(&vip)?;
    (!state.answering_at(table.now_ns())).then_some(Verdict::new(Outcome::DroppedRequest, vip))
}

/// Rewrite the solicitation frame `f` (IPv6 at `L3`) into our advertisement.
#[inline(always)]
fn write_na_frame<const ND: usize, const L3: usize>(
    f: &mut [u8; ND],
    eth_dst: &[u8; 6],
    mac: &[u8; 6],
    vip: &[u8; 16],
    ip_dst: &[u8; 16],
    flags: u8,
) -> Option<()> {
    let macs = part_mut::<ND, 0, 12>(f)?;
    macs[0..6].copy_from_slice(eth_dst);
    macs[6..12].copy_from_slice(mac);
    let packet = part_mut::<ND, L3, ND_LEN>(f)?;
    write_na_packet(packet, mac, vip, ip_dst, flags);
    Some(())
}

/// The fields of an IPv6 packet carrying a Neighbor Solicitation or Advertisement with one 8-byte
/// option (the [`ND_LEN`] form).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdView {
    pub payload_len: u16,
    pub next_header: u8,
    pub hop_limit: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub icmp_type: u8,
    pub code: u8,
    /// The byte after the checksum: R, S, O flags of an advertisement.
    pub flags: u8,
    pub target: [u8; 16],
    pub option_type: u8,
    /// Option length in units of 8 bytes.
    pub option_len: u8,
    pub option_mac: [u8; 6],
    /// Whether the ICMPv6 checksum (over the pseudo-header and the 32 bytes) is right.
    pub checksum_ok: bool,
}

impl NdView {
    /// Parse the [`ND_LEN`] bytes after the Ethernet header (and any tag); `None` unless IPv6.
    #[inline(always)]
    #[must_use]
    pub fn parse_packet(p: &[u8; ND_LEN]) -> Option<Self> {
        if p[0] >> 4 != 6 {
            return None;
        }
        let src = *part::<ND_LEN, 8, 16>(p)?;
        let dst = *part::<ND_LEN, 24, 16>(p)?;
        let icmp = part::<ND_LEN, IPV6_HEADER_LEN, 32>(p)?;
        let payload_len = u16::from_be_bytes([p[4], p[5]]);
        let checksum_ok =
            fold(pseudo_header_sum(&src, &dst, 32, IPPROTO_ICMPV6) + sum_words(icmp)) == 0xffff;
        Some(Self {
            payload_len,
            next_header: p[6],
            hop_limit: p[7],
            src,
            dst,
            icmp_type: icmp[0],
            code: icmp[1],
            flags: icmp[4],
            target: *part::<32, 8, 16>(icmp)?,
            option_type: icmp[24],
            option_len: icmp[25],
            option_mac: *part::<32, 26, 6>(icmp)?,
            checksum_ok,
        })
    }

    /// Parse an untagged Ethernet frame of [`ND_FRAME_LEN`] bytes.
    #[must_use]
    pub fn parse(f: &[u8; ND_FRAME_LEN]) -> Option<Self> {
        part::<ND_FRAME_LEN, { super::ETH_LEN }, ND_LEN>(f).and_then(Self::parse_packet)
    }

    /// A solicitation in the one form we answer in XDP (see the module documentation).
    #[inline(always)]
    #[must_use]
    pub fn is_answerable_solicitation(&self) -> bool {
        if self.payload_len != 32
            || self.next_header != IPPROTO_ICMPV6
            || self.hop_limit != ND_HOP_LIMIT
            || self.icmp_type != ICMPV6_NS
            || self.code != 0
            || !self.checksum_ok
            || self.option_len != 1
            || self.src[0] == 0xff
        {
            return false;
        }
        if self.src == [0; 16] {
            // Duplicate address detection: sent to the target's solicited-node group, and it must
            // not carry a source link-layer address (RFC 4861 7.1.1). A nonce option (RFC 7527) is
            // the usual 8 bytes.
            self.dst == solicited_node(&self.target) && self.option_type != OPT_SOURCE_LL
        } else {
            self.option_type == OPT_SOURCE_LL && super::is_unicast(&self.option_mac)
        }
    }
}

/// Rewrite the [`ND_LEN`] bytes of a validated solicitation in place into our advertisement: from
/// `vip` to `dst`, hop limit 255, `flags`, target `vip`, target link-layer address `our_mac`, and
/// the checksum over it all.
#[inline(always)]
pub fn write_na_packet(
    p: &mut [u8; ND_LEN],
    our_mac: &[u8; 6],
    vip: &[u8; 16],
    dst: &[u8; 16],
    flags: u8,
) {
    // Version 6, traffic class 0, flow label 0, as the kernel's own advertisements.
    p[0] = 0x60;
    p[1] = 0;
    p[2] = 0;
    p[3] = 0;
    p[4] = 0;
    p[5] = 32;
    p[6] = IPPROTO_ICMPV6;
    p[7] = ND_HOP_LIMIT;
    p[8..24].copy_from_slice(vip);
    p[24..40].copy_from_slice(dst);
    p[40] = ICMPV6_NA;
    p[41] = 0;
    p[42] = 0;
    p[43] = 0;
    p[44] = flags;
    p[45] = 0;
    p[46] = 0;
    p[47] = 0;
    p[48..64].copy_from_slice(vip);
    p[64] = OPT_TARGET_LL;
    p[65] = 1;
    p[66..72].copy_from_slice(our_mac);
    let checksum =
        part::<ND_LEN, IPV6_HEADER_LEN, 32>(p).map_or(0, |m| icmpv6_checksum(vip, dst, m));
    p[42..44].copy_from_slice(&checksum.to_be_bytes());
}

/// The ICMPv6 checksum of a 32-byte message (checksum field zero) from `src` to `dst`.
#[inline(always)]
#[must_use]
pub fn icmpv6_checksum(src: &[u8; 16], dst: &[u8; 16], message: &[u8; 32]) -> u16 {
    !fold(pseudo_header_sum(src, dst, 32, IPPROTO_ICMPV6) + sum_words(message))
}

/// Whether `addr` is IPv4-mapped (`::ffff:a.b.c.d`), the form of an IPv4 VIP's key.
#[inline(always)]
pub(super) fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    part::<16, 0, 12>(addr).is_some_and(|prefix| *prefix == V4_MAPPED_PREFIX)
}

/// The solicited-node multicast address of `target`: `ff02::1:ff` + its last 24 bits.
#[inline(always)]
#[must_use]
pub fn solicited_node(target: &[u8; 16]) -> [u8; 16] {
    [
        0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, target[13], target[14], target[15],
    ]
}

/// One's-complement partial sum of the pseudo-header (RFC 8200 8.1).
#[inline(always)]
fn pseudo_header_sum(src: &[u8; 16], dst: &[u8; 16], len: u32, next_header: u8) -> u32 {
    let [l0, l1, l2, l3] = len.to_be_bytes();
    sum_words(src) + sum_words(dst) + sum_words(&[l0, l1, l2, l3, 0, 0, 0, next_header])
}

/// Sum of big-endian 16-bit words (even `N`; small `N`, so no overflow of `u32`).
#[inline(always)]
fn sum_words<const N: usize>(bytes: &[u8; N]) -> u32 {
    let (words, _) = bytes.as_chunks::<2>();
    let mut sum = 0u32;
    for w in words {
        sum += u32::from(u16::from_be_bytes(*w));
    }
    sum
}

/// Fold a partial sum into 16 bits with end-around carry.
#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "two end-around folds leave 16 bits of any u32"
    )]
    let folded = sum as u16;
    folded
}

/// Build a Neighbor Solicitation frame (for tests): from `eth_src`/`src` to `dst` (`eth_dst`),
/// target `target`, one 8-byte option of `option_type` carrying `option_mac`, checksum right.
#[must_use]
pub fn build_ns(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    target: [u8; 16],
    option_type: u8,
    option_mac: [u8; 6],
) -> [u8; ND_FRAME_LEN] {
    let mut f = nd_frame(eth_dst, eth_src, &src, &dst);
    if let Some(icmp) = f.last_chunk_mut::<32>() {
        icmp[0] = ICMPV6_NS;
        icmp[8..24].copy_from_slice(&target);
        icmp[24] = option_type;
        icmp[25] = 1;
        icmp[26..32].copy_from_slice(&option_mac);
        let checksum = icmpv6_checksum(&src, &dst, icmp);
        icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    f
}

/// Build a Neighbor Advertisement frame: from `our_mac`/`vip` to `eth_dst`/`dst` with `flags`, and
/// our MAC as the target link-layer address. With `ALL_NODES` and `NA_FLAG_OVERRIDE` this is the
/// unsolicited advertisement the agent sends on promotion (RFC 4861 7.2.6), IPv6's gratuitous ARP.
#[must_use]
pub fn build_na(
    eth_dst: [u8; 6],
    our_mac: [u8; 6],
    vip: [u8; 16],
    dst: [u8; 16],
    flags: u8,
) -> [u8; ND_FRAME_LEN] {
    let mut f = nd_frame(eth_dst, our_mac, &vip, &dst);
    if let Some(p) = f.last_chunk_mut::<ND_LEN>() {
        write_na_packet(p, &our_mac, &vip, &dst, flags);
    }
    f
}

/// `ff02::1` and `33:33:00:00:00:01`, for unsolicited advertisements.
#[must_use]
pub const fn all_nodes() -> ([u8; 16], [u8; 6]) {
    (ALL_NODES, ALL_NODES_MAC)
}

fn nd_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: &[u8; 16],
    dst: &[u8; 16],
) -> [u8; ND_FRAME_LEN] {
    let mut f = [0u8; ND_FRAME_LEN];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&eth_src);
    f[12..14].copy_from_slice(&super::ETH_P_IPV6);
    f[14] = 0x60;
    f[19] = 32;
    f[20] = IPPROTO_ICMPV6;
    f[21] = ND_HOP_LIMIT;
    f[22..38].copy_from_slice(src);
    f[38..54].copy_from_slice(dst);
    f
}
