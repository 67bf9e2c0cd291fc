//! BPF map layout shared by the kernel program and the agent.
//!
//! Rules for every type here: `#[repr(C)]`, only integers and byte arrays, explicit `_pad` fields so
//! there is no implicit padding (an `aya::Pod` with padding would leak uninitialised bytes), and a size
//! assert next to it. Addresses stay in network byte order as byte arrays, so the data path never
//! converts endianness.

/// Name of the hash map VIP -> [`VipState`]. Written only by the agent.
pub const STATE_MAP: &str = "VIP_STATE";
/// Name of the per-CPU hash map VIP -> [`VipStats`]. Written only by the program (the agent creates
/// the zeroed entry when it registers a VIP).
pub const STATS_MAP: &str = "VIP_STATS";
/// Name of the XDP program inside the object.
pub const PROGRAM_NAME: &str = "vip_xdp";
/// Name of the TC ingress program inside the object: the XDP program's decision where XDP would
/// run in generic mode (the `tc` attach mode).
pub const INGRESS_TC_PROGRAM_NAME: &str = "vip_tc_ingress";
/// Name of the TC egress program inside the object (the same maps; see `frame::egress`).
pub const EGRESS_PROGRAM_NAME: &str = "vip_tc_egress";
/// Name of the per-CPU hash map VIP -> [`EgressStats`]: the TC egress program's counters, in a
/// map of their own so that `VIP_STATS` keeps its layout (and an installation from before the
/// egress program is adopted, not replaced). The agent creates the zeroed entry with the VIP's.
pub const EGRESS_STATS_MAP: &str = "VIP_EGRESS";
/// Every map name, for tests that check the object against this contract.
pub const MAP_NAMES: [&str; 3] = [STATE_MAP, STATS_MAP, EGRESS_STATS_MAP];

/// How many VIPs one interface's maps hold.
pub const MAX_VIPS: u32 = 256;

/// `BPF_F_NO_PREALLOC`: hash map elements are allocated on update, so an update swaps in a fully
/// written element. Since Linux 6.1 a replaced element goes to a per-CPU free list (`bpf_mem_alloc`)
/// and the next update may reuse it at once, as the preallocated map always did: a program holding
/// it then copies that update's value (docs/safety.md, "The map write cannot be torn").
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Key of both maps: a VIP in network byte order, IPv6 or IPv4. An IPv4 VIP is stored as its
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 2.5.5.2), so one table and one lookup serve
/// both families and the two can never collide.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<VipKey>() == 16);

/// `::ffff:0:0/96`: the prefix of an IPv4-mapped IPv6 address, which the key of an IPv4 VIP
/// carries (the one definition; the frame logic and the agent use it from here).
pub const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

impl VipKey {
    /// The key of an IPv4 VIP.
    #[inline(always)]
    #[must_use]
    pub const fn v4(addr: [u8; 4]) -> Self {
        let [a, b, c, d] = addr;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
        }
    }

    /// The key of an IPv6 VIP.
    #[inline(always)]
    #[must_use]
    pub const fn v6(addr: [u8; 16]) -> Self {
        Self { addr }
    }

    /// The IPv4 address, when this is an IPv4 VIP's key.
    #[must_use]
    pub fn as_v4(&self) -> Option<[u8; 4]> {
        let (prefix, v4) = self.addr.split_first_chunk::<12>()?;
        if *prefix == V4_MAPPED_PREFIX {
            v4.first_chunk::<4>().copied()
        } else {
            None
        }
    }
}

/// The map key of a VIP: IPv4 as its IPv4-mapped IPv6 address.
impl From<core::net::IpAddr> for VipKey {
    fn from(vip: core::net::IpAddr) -> Self {
        match vip {
            core::net::IpAddr::V4(v4) => Self::v4(v4.octets()),
            core::net::IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

/// The VIP of a map key (the inverse of `From<IpAddr>`): an IPv4-mapped key is the IPv4 VIP.
impl From<VipKey> for core::net::IpAddr {
    fn from(key: VipKey) -> Self {
        match key.as_v4() {
            Some(v4) => Self::V4(core::net::Ipv4Addr::from(v4)),
            None => Self::V6(core::net::Ipv6Addr::from(key.addr)),
        }
    }
}

/// What the program needs to know about one VIP on this interface.
///
/// `deadline_ns` is the whole answer to "do we answer for this VIP now": the program answers while
/// `bpf_ktime_get_ns() < deadline_ns` (kernel `CLOCK_MONOTONIC`), and fences otherwise. `0` means
/// fenced. It is one naturally aligned `u64`, read once per packet into a local, so a flag and a
/// deadline can never be seen out of step; the agent only extends it from a fresh confirmation of
/// leadership, so an agent that dies or is cut off goes silent on its own.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipState {
    /// Answer until this kernel monotonic time (ns); 0 = fenced.
    pub deadline_ns: u64,
    /// The interface's MAC: the sender hardware address of our replies.
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<VipState>() == 16);
const _: () = assert!(align_of::<VipState>() == 8);

impl VipState {
    /// A fenced entry: the program drops ARP requests and IPv4 for the VIP.
    #[must_use]
    pub const fn fenced(mac: [u8; 6]) -> Self {
        Self {
            deadline_ns: 0,
            mac,
            _pad: [0; 2],
        }
    }

    /// An entry that answers until `deadline_ns` (kernel monotonic ns).
    #[must_use]
    pub const fn answering_until(mac: [u8; 6], deadline_ns: u64) -> Self {
        Self {
            deadline_ns,
            mac,
            _pad: [0; 2],
        }
    }

    /// Whether the program answers for this VIP at kernel time `now_ns`.
    #[inline(always)]
    #[must_use]
    pub const fn answering_at(&self, now_ns: u64) -> bool {
        now_ns < self.deadline_ns
    }
}

/// Per-CPU counters for one VIP. The agent sums them over CPUs (and takes the max of
/// `last_reply_ns`).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipStats {
    /// ARP requests (IPv6 VIP: Neighbor Solicitations) for the VIP answered with XDP_TX.
    pub replied: u64,
    /// ARP requests (IPv6: Neighbor Solicitations) for the VIP dropped (fenced, or a requester with
    /// a non-unicast hardware address).
    pub requests_dropped: u64,
    /// IP packets (IPv4, or IPv6 for an IPv6 VIP) to the VIP dropped because we were fenced.
    pub ip_dropped: u64,
    /// ARP frames (IPv6: Neighbor Advertisements) claiming the VIP from another MAC while we were
    /// answering.
    pub conflicts: u64,
    /// Kernel monotonic time (ns) of the last reply sent from this CPU; 0 = never.
    pub last_reply_ns: u64,
}
const _: () = assert!(size_of::<VipStats>() == 40);

impl VipStats {
    /// Fold another CPU's counters into this one.
    #[must_use]
    pub const fn merge(self, other: &Self) -> Self {
        Self {
            replied: self.replied.wrapping_add(other.replied),
            requests_dropped: self.requests_dropped.wrapping_add(other.requests_dropped),
            ip_dropped: self.ip_dropped.wrapping_add(other.ip_dropped),
            conflicts: self.conflicts.wrapping_add(other.conflicts),
            last_reply_ns: if other.last_reply_ns > self.last_reply_ns {
                other.last_reply_ns
            } else {
                self.last_reply_ns
            },
        }
    }
}

/// Per-CPU counters of the TC egress program for one VIP: what this node tried to send from the VIP
/// while it was fenced, and the program dropped. The agent sums them over CPUs.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EgressStats {
    /// IP packets (IPv4, or IPv6 for an IPv6 VIP) from the VIP.
    pub ip_dropped: u64,
    /// Neighbour resolution from the VIP: ARP from it (IPv6: Neighbor Advertisements for it,
    /// Solicitations from it).
    pub neighbour_dropped: u64,
}
const _: () = assert!(size_of::<EgressStats>() == 16);

impl EgressStats {
    /// Fold another CPU's counters into this one.
    #[must_use]
    pub const fn merge(self, other: &Self) -> Self {
        Self {
            ip_dropped: self.ip_dropped.wrapping_add(other.ip_dropped),
            neighbour_dropped: self.neighbour_dropped.wrapping_add(other.neighbour_dropped),
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::{EgressStats, VipKey, VipState, VipStats};

    // SAFETY: `#[repr(C)]`, integers and byte arrays only, no implicit padding (size asserts above).
    unsafe impl aya::Pod for VipKey {}
    // SAFETY: as above; `_pad` makes the two trailing bytes explicit.
    unsafe impl aya::Pod for VipState {}
    // SAFETY: as above; five u64.
    unsafe impl aya::Pod for VipStats {}
    // SAFETY: as above; two u64.
    unsafe impl aya::Pod for EgressStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_keys_are_v4_mapped_and_never_collide_with_ipv6() {
        let k = VipKey::v4([10, 0, 0, 1]);
        assert_eq!(k.as_v4(), Some([10, 0, 0, 1]));
        assert_eq!(&k.addr[..12], &V4_MAPPED_PREFIX);
        // The IPv4-compatible (deprecated) form is an IPv6 key, not the IPv4 one.
        let mut compat = [0u8; 16];
        compat[12..].copy_from_slice(&[10, 0, 0, 1]);
        assert_ne!(VipKey::v6(compat), k);
        assert_eq!(VipKey::v6(compat).as_v4(), None);
        let six = VipKey::v6([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(six.as_v4(), None);
    }

    #[test]
    fn deadline_zero_is_fenced_at_any_time() {
        let s = VipState::fenced([2, 0, 0, 0, 0, 1]);
        assert!(!s.answering_at(0));
        assert!(!s.answering_at(u64::MAX));
    }

    #[test]
    fn answering_stops_at_the_deadline() {
        let s = VipState::answering_until([2, 0, 0, 0, 0, 1], 1_000);
        assert!(s.answering_at(999));
        assert!(!s.answering_at(1_000));
        assert!(!s.answering_at(1_001));
    }

    #[test]
    fn ip_addresses_and_keys_convert_both_ways() {
        use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(VipKey::from(v4), VipKey::v4([10, 0, 0, 1]));
        assert_eq!(IpAddr::from(VipKey::from(v4)), v4);
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        assert_eq!(IpAddr::from(VipKey::from(v6)), v6);
        // An IPv4-mapped IPv6 address is the IPv4 VIP's key: it converts back as IPv4.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert_eq!(VipKey::from(mapped), VipKey::from(v4));
        assert_eq!(IpAddr::from(VipKey::from(mapped)), v4);
    }

    #[test]
    fn merge_sums_counters_and_keeps_latest_reply() {
        let a = VipStats {
            replied: 1,
            requests_dropped: 2,
            ip_dropped: 3,
            conflicts: 4,
            last_reply_ns: 50,
        };
        let b = VipStats {
            replied: 10,
            requests_dropped: 20,
            ip_dropped: 30,
            conflicts: 40,
            last_reply_ns: 20,
        };
        let m = a.merge(&b);
        assert_eq!(
            m,
            VipStats {
                replied: 11,
                requests_dropped: 22,
                ip_dropped: 33,
                conflicts: 44,
                last_reply_ns: 50
            }
        );
    }
}
