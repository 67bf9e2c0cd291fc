//! A raw-socket ARP prober: send requests or arbitrary frames, collect the ARP frames that arrive.
//!
//! Open it on a thread inside the namespace ([`crate::NetNs::run_in`]): the socket belongs to the
//! namespace of the thread that creates it.

use std::{
    ffi::CString,
    io,
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use vip_agent::clock::monotonic_ns;
use vip_common::frame::{ARP_FRAME_LEN, ARP_OP_REQUEST, ArpView, build_arp};

const ETH_P_ARP: u16 = 0x0806;

/// An ARP frame seen on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpSeen {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub arp: ArpView,
    /// When it arrived: kernel `CLOCK_MONOTONIC` ns (the clock of the agent's logs and of XDP).
    pub at_ns: u64,
    /// Whether `at_ns` is the kernel's receive timestamp (else: when it was read).
    pub kernel_stamped: bool,
}

/// An `AF_PACKET` socket bound to one interface for ARP.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    mac: [u8; 6],
}

impl ArpSocket {
    /// Open a socket on `ifname` (in the calling thread's namespace).
    ///
    /// # Errors
    /// When the interface does not exist or the socket cannot be created.
    pub fn open(ifname: &str) -> io::Result<Self> {
        let (fd, _) = packet_socket(ifname, ETH_P_ARP)?;
        let mac = interface_mac(&fd, ifname)?;
        Ok(Self { fd, mac })
    }

    /// The interface's MAC.
    #[must_use]
    pub const fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Send a raw Ethernet frame.
    ///
    /// # Errors
    /// When the kernel refuses it.
    pub fn send_frame(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: buffer valid for its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Broadcast an ARP request "who has `target`? tell `src_ip`" from this interface's MAC.
    ///
    /// # Errors
    /// When sending fails.
    pub fn send_request(&self, src_ip: Ipv4Addr, target: Ipv4Addr) -> io::Result<()> {
        let frame = build_arp(
            [0xff; 6],
            self.mac,
            ARP_OP_REQUEST,
            self.mac,
            src_ip.octets(),
            [0; 6],
            target.octets(),
        );
        self.send_frame(&frame)
    }

    /// Collect every ARP frame that arrives until `deadline`.
    ///
    /// # Errors
    /// When receiving fails for another reason than the timeout.
    pub fn recv_until(&self, deadline: Instant) -> io::Result<Vec<ArpSeen>> {
        let mut seen = Vec::new();
        recv_each(&self.fd, deadline, |frame, at_ns, kernel_stamped| {
            if let Some(frame) = frame.first_chunk::<ARP_FRAME_LEN>()
                && let Some(arp) = ArpView::parse(frame)
            {
                let mut eth_dst = [0; 6];
                let mut eth_src = [0; 6];
                eth_dst.copy_from_slice(&frame[0..6]);
                eth_src.copy_from_slice(&frame[6..12]);
                seen.push(ArpSeen {
                    eth_dst,
                    eth_src,
                    arp,
                    at_ns,
                    kernel_stamped,
                });
            }
        })?;
        Ok(seen)
    }

    /// Ask who has `target` and return the replies (ARP op 2 for `target`) within `timeout`.
    ///
    /// # Errors
    /// When sending or receiving fails.
    pub fn probe(
        &self,
        src_ip: Ipv4Addr,
        target: Ipv4Addr,
        timeout: Duration,
    ) -> io::Result<Vec<ArpSeen>> {
        self.send_request(src_ip, target)?;
        let frames = self.recv_until(Instant::now() + timeout)?;
        Ok(frames
            .into_iter()
            .filter(|f| {
                f.arp.op == vip_common::frame::ARP_OP_REPLY
                    && f.arp.spa == target.octets()
                    && f.arp.tha == self.mac
            })
            .collect())
    }
}

/// One probe of [`ArpSocket::probe_loop`]: when it was sent, and who answered it (reply time, MAC).
#[derive(Clone, Debug, Default)]
pub struct Probe {
    pub sent_ns: u64,
    pub answers: Vec<(u64, [u8; 6])>,
}

impl ArpSocket {
    /// Ask who has `target` every `interval` until `running` turns false; one [`Probe`] per request.
    /// Bounded by `max` probes whatever `running` says.
    ///
    /// # Errors
    /// When sending or receiving fails.
    pub fn probe_loop(
        &self,
        src_ip: Ipv4Addr,
        target: Ipv4Addr,
        interval: Duration,
        running: &std::sync::atomic::AtomicBool,
        max: usize,
    ) -> io::Result<Vec<Probe>> {
        let mut probes = Vec::new();
        while running.load(std::sync::atomic::Ordering::Relaxed) && probes.len() < max {
            let sent_ns = monotonic_ns();
            self.send_request(src_ip, target)?;
            let frames = self.recv_until(Instant::now() + interval)?;
            let answers = frames
                .iter()
                .filter(|f| {
                    f.arp.op == vip_common::frame::ARP_OP_REPLY
                        && f.arp.spa == target.octets()
                        && f.eth_dst == self.mac
                })
                .map(|f| (f.at_ns, f.arp.sha))
                .collect();
            probes.push(Probe { sent_ns, answers });
        }
        Ok(probes)
    }
}

/// Hand every frame that arrives on `fd` until `deadline` to `each`, with the time it arrived in
/// kernel monotonic ns and whether that time is the kernel's: its receive timestamp
/// (`SO_TIMESTAMPNS`, which [`packet_socket`] turns on) moved from `CLOCK_REALTIME` to
/// `CLOCK_MONOTONIC`, or the time it was read when a frame carries no timestamp.
///
/// # Errors
/// When polling or receiving fails for another reason than a timeout or an interruption.
pub(crate) fn recv_each(
    fd: &OwnedFd,
    deadline: Instant,
    mut each: impl FnMut(&[u8], u64, bool),
) -> io::Result<()> {
    let mut buf = [0u8; 1600];
    // Room for one cmsghdr + timespec, aligned for cmsghdr.
    let mut control = [0u64; 8];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let timeout = i32::try_from((deadline - now).as_millis().max(1)).unwrap_or(i32::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&raw mut pfd, 1, timeout) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if rc == 0 {
            continue;
        }
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        // SAFETY: msg points at a buffer and a control buffer valid for their lengths.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                continue;
            }
            return Err(e);
        }
        let read_ns = monotonic_ns();
        let stamp = kernel_timestamp(&msg);
        let at_ns = stamp.map_or(read_ns, |real| realtime_to_monotonic(real, read_ns));
        let len = usize::try_from(n).unwrap_or(0);
        each(&buf[..len.min(buf.len())], at_ns, stamp.is_some());
    }
}

/// The `SCM_TIMESTAMPNS` of a received message, in `CLOCK_REALTIME` ns.
fn kernel_timestamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: msg was filled by recvmsg; the CMSG_* macros stay within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let secs = u64::try_from(ts.tv_sec).ok()?;
                let nanos = u64::try_from(ts.tv_nsec).ok()?;
                return Some(secs * 1_000_000_000 + nanos);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

/// A `CLOCK_REALTIME` time `real_ns` shortly before `mono_now_ns`, in `CLOCK_MONOTONIC` ns: the
/// offset between the clocks is read now, next to the receive, so a slewing or stepped wall clock
/// moves only that offset's reading, not the span since the frame arrived. A timestamp that would
/// lie in the future (a step between the two reads) is clamped to now.
fn realtime_to_monotonic(real_ns: u64, mono_now_ns: u64) -> u64 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(clock, &raw mut ts) };
        u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000
            + u64::try_from(ts.tv_nsec).unwrap_or(0)
    };
    // The wall clock is read between two monotonic readings, and the age is taken from the middle
    // of them: `mono_now_ns` was read earlier (at the receive), and a preemption between it and
    // this reading would otherwise push the frame's time back by the whole gap.
    let before = read(libc::CLOCK_MONOTONIC);
    let real_now = read(libc::CLOCK_REALTIME);
    let after = read(libc::CLOCK_MONOTONIC);
    let mono_at_real = before + (after.saturating_sub(before)) / 2;
    let age = real_now.saturating_sub(real_ns);
    // Never later than the read that received it.
    mono_at_real.saturating_sub(age).min(mono_now_ns)
}

pub(crate) fn interface_mac(fd: &OwnedFd, ifname: &str) -> io::Result<[u8; 6]> {
    // SAFETY: all-zero ifreq is valid; name copied below within bounds.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .zip(ifname.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR with a valid ifreq.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &raw mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled ifru_hwaddr for SIOCGIFHWADDR.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

/// An `AF_PACKET` raw socket bound to `ifname` (in the calling thread's namespace), receiving
/// `protocol` (0: nothing).
pub(crate) fn packet_socket(ifname: &str, protocol: u16) -> io::Result<(OwnedFd, i32)> {
    let cname = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    let ifindex = i32::try_from(ifindex).map_err(|_| io::Error::other("ifindex"))?;
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = crate::sock::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(protocol.to_be()))?;
    crate::sock::set_option(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_TIMESTAMPNS,
        1 as libc::c_int,
    )?;
    let addr = sockaddr_ll(ifindex, protocol);
    // SAFETY: addr is a valid sockaddr_ll of the given size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, ifindex))
}

pub(crate) fn sockaddr_ll(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: all-zero sockaddr_ll is valid; fields set below.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex;
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realtime_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut ts) };
        u64::try_from(ts.tv_sec).expect("after 1970") * 1_000_000_000
            + u64::try_from(ts.tv_nsec).expect("nanoseconds")
    }

    #[test]
    fn a_wall_clock_timestamp_keeps_its_age_on_the_monotonic_clock() {
        let age = 5_000_000;
        let stamped = realtime_ns() - age;
        let mono_now = monotonic_ns();
        let converted = realtime_to_monotonic(stamped, mono_now);
        // The two clock reads inside lie microseconds apart; the age must survive within 1 ms.
        let seen_age = mono_now - converted;
        assert!(
            (age - 1_000_000..age + 1_000_000).contains(&seen_age),
            "a frame stamped 5 ms ago converted to {seen_age} ns ago"
        );
    }

    #[test]
    fn a_timestamp_from_the_future_is_clamped_to_now() {
        let mono_now = monotonic_ns();
        assert_eq!(
            realtime_to_monotonic(realtime_ns() + 10_000_000_000, mono_now),
            mono_now
        );
    }
}
