//! A raw-socket IPv6 Neighbor Discovery prober, the IPv6 counterpart of [`crate::arp`]: send
//! Neighbor Solicitations, collect the Neighbor Advertisements that arrive.
//!
//! Open it on a thread inside the namespace ([`crate::NetNs::run_in`]).

use std::{
    io,
    net::Ipv6Addr,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use vip_common::frame::{ICMPV6_NA, ND_FRAME_LEN, NdView, build_ns, solicited_node};

use crate::arp::{interface_mac, packet_socket, recv_each};

const ETH_P_IPV6: u16 = 0x86dd;
const OPT_SOURCE_LL: u8 = 1;

/// A Neighbor Advertisement seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NaSeen {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub na: NdView,
    /// Kernel `CLOCK_MONOTONIC` ns when it was read.
    pub at_ns: u64,
}

/// An `AF_PACKET` socket bound to one interface for IPv6.
#[derive(Debug)]
pub struct NdpSocket {
    fd: OwnedFd,
    mac: [u8; 6],
}

impl NdpSocket {
    /// Open a socket on `ifname` (in the calling thread's namespace).
    ///
    /// # Errors
    /// When the interface does not exist or the socket cannot be created.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let (fd, _) = packet_socket(ifname, ETH_P_IPV6)?;
        let mac = interface_mac(&fd, ifname)?;
        Ok(Self { fd, mac })
    }

    /// The interface's MAC.
    #[must_use]
    pub const fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Multicast "who has `target`?" from `src` (this interface's MAC as the source link-layer
    /// address) to `target`'s solicited-node group, as a resolving host does.
    ///
    /// # Errors
    /// When sending fails.
    pub fn send_solicitation(&self, src: Ipv6Addr, target: Ipv6Addr) -> io::Result<()> {
        let group = solicited_node(&target.octets());
        let eth_dst = [0x33, 0x33, group[12], group[13], group[14], group[15]];
        let frame = build_ns(
            eth_dst,
            self.mac,
            src.octets(),
            group,
            target.octets(),
            OPT_SOURCE_LL,
            self.mac,
        );
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Collect every Neighbor Advertisement (of the 86-byte one-option form) until `deadline`.
    ///
    /// # Errors
    /// When receiving fails.
    pub fn recv_advertisements_until(&self, deadline: Instant) -> io::Result<Vec<NaSeen>> {
        let mut seen = Vec::new();
        recv_each(&self.fd, deadline, |frame, at_ns, _| {
            if let Some(f) = frame.first_chunk::<ND_FRAME_LEN>()
                && let Some(na) = NdView::parse(f)
                && na.icmp_type == ICMPV6_NA
            {
                let mut eth_dst = [0; 6];
                let mut eth_src = [0; 6];
                eth_dst.copy_from_slice(&f[0..6]);
                eth_src.copy_from_slice(&f[6..12]);
                seen.push(NaSeen {
                    eth_dst,
                    eth_src,
                    na,
                    at_ns,
                });
            }
        })?;
        Ok(seen)
    }

    /// Solicit `target` from `src` and return the advertisements for it addressed to `src` within
    /// `timeout`.
    ///
    /// # Errors
    /// When sending or receiving fails.
    pub fn probe(
        &self,
        src: Ipv6Addr,
        target: Ipv6Addr,
        timeout: Duration,
    ) -> io::Result<Vec<NaSeen>> {
        self.send_solicitation(src, target)?;
        Ok(self
            .recv_advertisements_until(Instant::now() + timeout)?
            .into_iter()
            .filter(|s| s.na.target == target.octets() && s.na.dst == src.octets())
            .collect())
    }
}
