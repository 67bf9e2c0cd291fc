//! Gratuitous ARP on promotion, from a raw `AF_PACKET` socket.
//!
//! The frames are built here, so the interface needs no IPv4 address of its own (vip-manager's old
//! ARP client refused to send without one). Each announcement is sent in both forms that neighbours
//! act on: an ARP request (RFC 5227 announcement: sender = target = VIP) and an ARP reply (sender =
//! VIP, target = broadcast), both to the Ethernet broadcast address.
//!
//! An IPv6 VIP is announced the IPv6 way (RFC 4861 7.2.6): an unsolicited Neighbor Advertisement to
//! all nodes (`ff02::1`), Override set so that neighbours replace a cached MAC, our MAC as the target
//! link-layer address.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use vip_common::frame::{
    ARP_FRAME_LEN, ARP_OP_REPLY, ARP_OP_REQUEST, NA_FLAG_OVERRIDE, ND_FRAME_LEN, all_nodes,
    build_arp, build_na,
};

const ETH_P_ARP: u16 = 0x0806;
const BROADCAST: [u8; 6] = [0xff; 6];

/// Errors of the GARP sender, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum GarpError {
    #[error("{operation} (AF_PACKET on interface index {ifindex})")]
    Socket {
        operation: &'static str,
        ifindex: u32,
        #[source]
        source: io::Error,
    },
}

/// The two frames of one announcement of `vip` from `mac`.
#[must_use]
pub fn announcement(mac: [u8; 6], vip: Ipv4Addr) -> [[u8; ARP_FRAME_LEN]; 2] {
    let ip = vip.octets();
    [
        build_arp(BROADCAST, mac, ARP_OP_REQUEST, mac, ip, [0; 6], ip),
        build_arp(BROADCAST, mac, ARP_OP_REPLY, mac, ip, BROADCAST, ip),
    ]
}

/// The unsolicited Neighbor Advertisement announcing IPv6 `vip` at `mac`.
#[must_use]
pub fn na_announcement(mac: [u8; 6], vip: Ipv6Addr) -> [u8; ND_FRAME_LEN] {
    let (all_nodes_ip, all_nodes_mac) = all_nodes();
    build_na(
        all_nodes_mac,
        mac,
        vip.octets(),
        all_nodes_ip,
        NA_FLAG_OVERRIDE,
    )
}

/// A raw socket bound to one interface for sending ARP (and IPv6 Neighbor Discovery) frames.
#[derive(Debug)]
pub struct GarpSender {
    fd: OwnedFd,
    ifindex: u32,
}

impl GarpSender {
    /// Open and bind the socket (needs `CAP_NET_RAW`). Acts in the calling thread's namespace.
    ///
    /// # Errors
    /// When the socket cannot be created or bound.
    pub fn open(ifindex: u32) -> Result<Self, GarpError> {
        let err = |operation| {
            move |source| GarpError::Socket {
                operation,
                ifindex,
                source,
            }
        };
        let protocol = i32::from(ETH_P_ARP.to_be());
        // SAFETY: plain socket(2) call; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(err("socket")(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or_default();
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = i32::try_from(ifindex).map_err(|_| {
            err("bind")(io::Error::new(
                io::ErrorKind::InvalidInput,
                "interface index out of range",
            ))
        })?;
        let len = u32::try_from(size_of::<libc::sockaddr_ll>()).unwrap_or_default();
        // SAFETY: `addr` is a valid sockaddr_ll of `len` bytes for the duration of the call.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) };
        if rc < 0 {
            return Err(err("bind")(io::Error::last_os_error()));
        }
        // We only send: do not queue the interface's ARP traffic in our receive buffer.
        let zero: libc::c_int = 0;
        // SAFETY: valid fd, option value points to a c_int of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const zero).cast(),
                u32::try_from(size_of::<libc::c_int>()).unwrap_or_default(),
            );
        }
        Ok(Self { fd, ifindex })
    }

    /// Send one frame.
    ///
    /// # Errors
    /// When the kernel refuses the frame (interface down, no buffer space, ...).
    pub fn send(&self, frame: &[u8]) -> Result<(), GarpError> {
        let mut result = self.send_once(frame);
        // When the interface goes down, the kernel leaves ENETDOWN pending on a bound packet
        // socket; the first send after the link is back up returns (and clears) it, and the frame
        // is not sent. Once more: a link that is still down fails again, a stale error does not.
        if matches!(&result, Err(e) if e.raw_os_error() == Some(libc::ENETDOWN)) {
            result = self.send_once(frame);
        }
        result.map_err(|source| GarpError::Socket {
            operation: "send",
            ifindex: self.ifindex,
            source,
        })
    }

    fn send_once(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: the buffer is valid for `frame.len()` bytes; the socket is bound to the interface.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Send one announcement (IPv4: request and reply forms; IPv6: an unsolicited advertisement).
    ///
    /// # Errors
    /// When a send fails.
    pub fn announce(&self, mac: [u8; 6], vip: impl Into<IpAddr>) -> Result<(), GarpError> {
        match vip.into() {
            IpAddr::V4(v4) => {
                for frame in announcement(mac, v4) {
                    self.send(&frame)?;
                }
            }
            IpAddr::V6(v6) => self.send(&na_announcement(mac, v6))?,
        }
        Ok(())
    }

    /// Send one announcement at each offset of `schedule` (from now; ascending, see
    /// [`crate::config::GarpConfig::schedule`]); stops early when `stop` is cancelled (demotion or
    /// shutdown). Returns how many announcements went out.
    ///
    /// # Errors
    /// When a send fails (the burst stops there).
    pub async fn burst(
        &self,
        mac: [u8; 6],
        vip: impl Into<IpAddr>,
        schedule: impl IntoIterator<Item = Duration>,
        stop: &CancellationToken,
    ) -> Result<u32, GarpError> {
        let vip = vip.into();
        let start = tokio::time::Instant::now();
        let mut sent = 0;
        for offset in schedule {
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(sent),
                () = tokio::time::sleep_until(start + offset) => {}
            }
            self.announce(mac, vip)?;
            sent += 1;
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use vip_common::frame::{ArpView, ICMPV6_NA, NdView};

    use super::*;

    #[test]
    fn announcement_is_a_request_and_a_reply_claiming_the_vip() {
        let mac = [2, 0, 0, 0, 0, 7];
        let vip = Ipv4Addr::new(10, 77, 0, 100);
        let [req, rep] = announcement(mac, vip);
        for (frame, op) in [(req, ARP_OP_REQUEST), (rep, ARP_OP_REPLY)] {
            assert_eq!(&frame[0..6], &BROADCAST, "Ethernet broadcast");
            assert_eq!(&frame[6..12], &mac);
            let arp = ArpView::parse(&frame).expect("a well-formed Ethernet/IPv4 ARP frame");
            assert_eq!(arp.op, op);
            assert_eq!(arp.sha, mac);
            assert_eq!(arp.spa, vip.octets());
            assert_eq!(arp.tpa, vip.octets());
        }
        assert_eq!(ArpView::parse(&req).map(|a| a.tha), Some([0; 6]));
        assert_eq!(ArpView::parse(&rep).map(|a| a.tha), Some(BROADCAST));
    }

    #[test]
    fn ipv6_announcement_is_an_unsolicited_override_advertisement_to_all_nodes() {
        let mac = [2, 0, 0, 0, 0, 7];
        let vip: Ipv6Addr = "fd00:77::100".parse().expect("address");
        let frame = na_announcement(mac, vip);
        assert_eq!(
            &frame[0..6],
            &[0x33, 0x33, 0, 0, 0, 1],
            "all-nodes multicast MAC"
        );
        assert_eq!(&frame[6..12], &mac);
        assert_eq!(&frame[12..14], &[0x86, 0xdd]);
        let na = NdView::parse(&frame).expect("IPv6");
        assert_eq!(na.icmp_type, ICMPV6_NA);
        assert_eq!(na.hop_limit, 255);
        assert_eq!(na.src, vip.octets());
        assert_eq!(
            na.dst,
            "ff02::1".parse::<Ipv6Addr>().expect("ff02::1").octets()
        );
        assert_eq!(na.target, vip.octets());
        assert_eq!(
            na.flags, NA_FLAG_OVERRIDE,
            "Override, not Solicited, not Router"
        );
        assert_eq!((na.option_type, na.option_len, na.option_mac), (2, 1, mac));
        assert!(na.checksum_ok);
    }
}
