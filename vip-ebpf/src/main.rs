//! vip-ebpf: the XDP half of vip-agent.
//!
//! While this node holds a VIP it answers ARP requests (IPv6: Neighbor Solicitations) for it itself
//! (XDP_TX); while it does not, it drops them and every packet addressed to the VIP, so a stale old
//! primary can never respond even if the address is still configured. "Holds" is a deadline in a map, not a flag:
//! when the agent stops renewing it (killed, hung, cut off from etcd) the node goes silent by itself.
//!
//! A TC egress program on the same interface, sharing the maps, is the other half of the fence:
//! while a VIP is fenced, nothing this node sends from it leaves (`vip_common::frame::egress`).
//!
//! Where XDP would run in generic mode (no native XDP: veth without a program on the peer,
//! virtio-net with guest offloads), a TC ingress program (tcx) takes its place: the same decision
//! on the same maps, a reply sent back out of the interface it came in on (`bpf_redirect` to its
//! egress). It is cheaper than generic XDP, which copies every non-linear skb into one buffer.
//!
//! The decisions are `vip_common::frame::process` and `vip_common::frame::egress`, shared with the
//! host tests; this file only binds them to packet memory, the maps and the clock. Anything unparsed
//! passes: a parse failure is never XDP_ABORTED and never a drop.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_PASS,
    helpers::{bpf_ktime_get_ns, bpf_redirect},
    macros::{classifier, map, xdp},
    maps::{HashMap, PerCpuHashMap},
    programs::{TcContext, XdpContext},
};
use vip_common::{
    EgressStats, Outcome, Packet, Verdict, VipKey, VipLookup, VipState, VipStats,
    frame::{IPV6_FRAME_LEN, MAX_VARIABLE_OFFSET, TC_PULL_LEN},
    maps::{BPF_F_NO_PREALLOC, MAX_VIPS},
};

// ---- Maps (names are the contract in vip_common::maps) ----

/// VIP -> answer-until deadline and our MAC. Written only by the agent; no-prealloc so that every
/// update swaps in a complete element (see `vip_common::maps::BPF_F_NO_PREALLOC`).
#[map]
static VIP_STATE: HashMap<VipKey, VipState> =
    HashMap::with_max_entries(MAX_VIPS, BPF_F_NO_PREALLOC);

/// VIP -> per-CPU counters. The agent creates the zeroed entry; only this program increments it.
#[map]
static VIP_STATS: PerCpuHashMap<VipKey, VipStats> = PerCpuHashMap::with_max_entries(MAX_VIPS, 0);

/// VIP -> per-CPU counters of the egress program. The agent creates the zeroed entry; only the
/// egress program increments it.
#[map]
static VIP_EGRESS: PerCpuHashMap<VipKey, EgressStats> =
    PerCpuHashMap::with_max_entries(MAX_VIPS, 0);

// ---- Program ----

#[xdp]
fn vip_xdp(ctx: XdpContext) -> u32 {
    try_vip_xdp(&ctx).unwrap_or(XDP_PASS)
}

#[inline(always)]
fn try_vip_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let mut frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        writable: true,
    };
    let verdict = vip_common::process(&mut frame, &Maps);
    count(&verdict);
    Ok(verdict.xdp_action())
}

/// TC ingress: the XDP program's decision for an interface without native XDP. A reply is
/// redirected to the egress of the interface it came in on (`TC_ACT_REDIRECT`), a drop is
/// `TC_ACT_SHOT`, anything else `TC_ACT_UNSPEC` ("not mine": the next tcx program, then the stack).
///
/// The program reads the linear part of the skb. A small frame (every ARP request and Neighbor
/// Solicitation is) whose bytes are not all there, or a frame whose first IPv6-header's worth is
/// not, is pulled first (`bpf_skb_pull_data`), so that a request for a fenced VIP cannot reach the
/// kernel unjudged. A big frame whose headers are linear, as the stack's are, is never pulled.
#[classifier]
fn vip_tc_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let linear = ctx.data_end() - ctx.data();
    if (linear as u64) < u64::from(len) && (len <= TC_PULL_LEN || linear < IPV6_FRAME_LEN) {
        // A failed pull leaves the frame as it was: judged on what is linear (a parse failure
        // passes), as it would have been without the pull.
        let _ = ctx.pull_data(len.min(TC_PULL_LEN));
    }
    let mut frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        writable: true,
    };
    let verdict = vip_common::process(&mut frame, &Maps);
    count(&verdict);
    if verdict.outcome == Outcome::Replied {
        // SAFETY: plain helper call; the skb pointer is the program's context.
        let ifindex = unsafe { (*ctx.skb.skb).ifindex };
        // SAFETY: plain helper call. Returns TC_ACT_REDIRECT (flags 0: to the egress).
        return unsafe { bpf_redirect(ifindex, 0) } as i32;
    }
    verdict.tc_action()
}

/// TC egress: drop what leaves from a fenced VIP; everything else is "not mine"
/// (`TC_ACT_UNSPEC`, which lets the programs after this one run). Reads the linear part of the
/// skb only, and never writes: a header that is not there passes.
#[classifier]
fn vip_tc_egress(ctx: TcContext) -> i32 {
    let frame = Frame {
        start: ctx.data(),
        end: ctx.data_end(),
        writable: false,
    };
    let verdict = vip_common::egress(&frame, &Maps);
    count(&verdict);
    verdict.tc_action()
}

/// Packet memory as a [`Packet`]: one bounds check against the end per prefix.
struct Frame {
    start: usize,
    end: usize,
    /// XDP and TC ingress packet memory may be written; the egress program never writes.
    writable: bool,
}

/// The single bounds-checked access to packet memory: a pointer to `T` at `offset` from `start`,
/// or `Err` when `offset + size_of::<T>()` runs past `end`. The check is written the way the
/// verifier tracks it.
#[inline(always)]
fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Result<*mut T, ()> {
    if start + offset + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + offset) as *mut T)
}

impl Packet for Frame {
    #[inline(always)]
    fn head<const N: usize>(&self) -> Option<&[u8; N]> {
        let p = ptr_at::<[u8; N]>(self.start, self.end, 0).ok()?;
        // SAFETY: `ptr_at` checked that N bytes from `start` lie inside the packet; u8 has no alignment.
        Some(unsafe { &*p })
    }

    #[inline(always)]
    fn head_mut<const N: usize>(&mut self) -> Option<&mut [u8; N]> {
        if !self.writable {
            return None;
        }
        let p = ptr_at::<[u8; N]>(self.start, self.end, 0).ok()?;
        // SAFETY: as above; XDP packet memory is writable and `&mut self` makes this the only view.
        Some(unsafe { &mut *p })
    }

    #[inline(always)]
    fn at<const N: usize>(&self, offset: usize) -> Option<&[u8; N]> {
        // The callers never ask for more; checked here too, next to the access, so the verifier
        // sees the variable offset bounded.
        if offset > MAX_VARIABLE_OFFSET {
            return None;
        }
        let p = ptr_at::<[u8; N]>(self.start, self.end, offset).ok()?;
        // SAFETY: `ptr_at` checked that N bytes from `start + offset` lie inside the packet.
        Some(unsafe { &*p })
    }
}

/// The VIP table and the clock.
struct Maps;

impl VipLookup for Maps {
    #[inline(always)]
    fn state(&self, vip: &VipKey) -> Option<VipState> {
        let p = VIP_STATE.get_ptr(vip)?;
        // SAFETY: a no-prealloc hash element is never written after it is published and is freed only
        // after an RCU grace period, which cannot end while this program runs: the copy is consistent.
        Some(unsafe { *p })
    }

    #[inline(always)]
    fn now_ns(&self) -> u64 {
        // SAFETY: plain helper call, no arguments.
        unsafe { bpf_ktime_get_ns() }
    }
}

/// Bump the VIP's counter for this verdict (from either program). A VIP without a counters entry
/// is simply not counted.
#[inline(always)]
fn count(verdict: &Verdict) {
    match verdict.outcome {
        Outcome::Pass => {}
        Outcome::DroppedSentIp | Outcome::DroppedSentNeighbour => {
            let Some(p) = VIP_EGRESS.get_ptr_mut(verdict.vip) else {
                return;
            };
            // SAFETY: as for `VIP_STATS` below.
            let stats = unsafe { &mut *p };
            if verdict.outcome == Outcome::DroppedSentIp {
                stats.ip_dropped += 1;
            } else {
                stats.neighbour_dropped += 1;
            }
        }
        Outcome::Replied | Outcome::DroppedRequest | Outcome::DroppedIp | Outcome::Conflict => {
            let Some(p) = VIP_STATS.get_ptr_mut(verdict.vip) else {
                return;
            };
            // SAFETY: per-CPU element of this CPU. Both programs run with bottom halves off (XDP
            // in the receive softirq, TC egress under `rcu_read_lock_bh` in `dev_queue_xmit`), so
            // on one CPU neither can interrupt the other, and nothing else writes this element
            // meanwhile.
            let stats = unsafe { &mut *p };
            match verdict.outcome {
                Outcome::Replied => {
                    stats.replied += 1;
                    // SAFETY: plain helper call.
                    stats.last_reply_ns = unsafe { bpf_ktime_get_ns() };
                }
                Outcome::DroppedRequest => stats.requests_dropped += 1,
                Outcome::DroppedIp => stats.ip_dropped += 1,
                _ => stats.conflicts += 1,
            }
        }
    }
}

// ---- Runtime glue ----

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never reached at run time.
    loop {}
}

/// GPL-compatible so GPL-only helpers stay available; we use none today.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
