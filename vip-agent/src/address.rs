//! The VIP as a kernel address, through rtnetlink (no `ip` subprocess).
//!
//! Adding is idempotent (an existing address is success); matching is exact on address and prefix
//! length, never textual. [`AddressEvents`] follows the kernel's IPv4 and IPv6 address notifications
//! so that an address removed by hand on the primary is put back at once, not on a timer.
//!
//! An IPv6 VIP is added with `IFA_F_NODAD`: it is usable at once instead of after a second of
//! duplicate address detection, and our own data plane, not the kernel's DAD, decides who answers
//! for it (the fenced nodes drop every solicitation for it).
//!
//! ## The address expires by itself
//!
//! Every add is an `RTM_NEWADDR` with `NLM_F_CREATE | NLM_F_REPLACE` and a lifetime
//! (`IFA_CACHEINFO`, valid = preferred, whole seconds) derived from the data plane's deadline D, and
//! it is repeated whenever D moves ([`Lifetime::until`]). Replacing an existing address only
//! rewrites its lifetime: no delete, no notification other than `RTM_NEWADDR`, nothing a client
//! sees. So an agent that dies leaves an address that the kernel removes by itself, even where the
//! XDP program died with the agent (a bpffs of its own in a private mount namespace).
//!
//! When the kernel removes it (`net/ipv4/devinet.c` `check_lifetime`, `net/ipv6/addrconf.c`
//! `addrconf_verify_rtnl`): both run as delayed work that deletes an address once
//! `(jiffies - tstamp + HZ/50) / HZ >= valid_lft`, so never more than 20 ms early. The next run is
//! set for the earliest lifetime end, rounded up to a whole second when that costs less than
//! `HZ/4`, but never sooner than `HZ` (1 s) after the current run, and every address added or
//! replaced in the namespace triggers a run at once. An address therefore goes up to about 1 s late
//! (a run just before its end pushes the next one 1 s on), plus the latency of the workqueue (a
//! deferrable one: per network namespace since Linux 6.13 for IPv4, one for every namespace
//! before; IPv6's is per namespace and deferrable too). Measured on Linux 6.18
//! (`tests/tests/address_lifetime.rs`): never early by more than 11 ms, up to 0.31 s late for an
//! address alone, up to 1.05 s late among others, and once 2.07 s late in a CI run while other
//! tests created and deleted network namespaces (the removal takes RTNL, which a namespace's
//! teardown holds for long). [`EXPIRY_MARGIN_NS`] is that bound with room for latency.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage, CacheInfo},
    },
    sys::SocketAddr,
};

/// Errors of address operations, naming the operation and the address.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("{operation} {address}/{prefix_len} on interface index {ifindex}")]
    Request {
        operation: &'static str,
        address: IpAddr,
        prefix_len: u8,
        ifindex: u32,
        #[source]
        source: rtnetlink::Error,
    },
    #[error(
        "{operation} {address}/{prefix_len} on interface index {ifindex}: no answer from the kernel \
         within {after:?}"
    )]
    Timeout {
        operation: &'static str,
        address: IpAddr,
        prefix_len: u8,
        ifindex: u32,
        after: std::time::Duration,
    },
    #[error("{operation} {address}/{prefix_len} on interface index {ifindex}")]
    Io {
        operation: &'static str,
        address: IpAddr,
        prefix_len: u8,
        ifindex: u32,
        #[source]
        source: std::io::Error,
    },
}

/// How long [`add_blocking`] waits for the kernel's answer. It runs in the follower's task on
/// the promotion path; a kernel that takes longer (RTNL held elsewhere) costs only the race the
/// early add wins: the VIP's task adds the address too, and keeps it.
pub const ADD_BLOCKING_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a request of [`Addresses`] (a VIP task's add, remove or check) waits for the kernel.
/// A VIP task whose request gets no answer logs the timeout and goes on; an address it could not
/// remove still expires with its lifetime.
pub const ADDRESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How late the kernel may remove an address after its lifetime ran out, at most: its lifetime
/// check runs at most `HZ` (1 s) after the lifetime's end (see the module documentation), plus 2 s
/// for the (deferrable) workqueue, RTNL held by others, the jiffies tick and the time between
/// reading the clock and the kernel stamping the address. The most measured here is 2.07 s, on a
/// loaded 2-core VM with network namespaces torn down beside it (it was 2 s until that run).
pub const EXPIRY_MARGIN_NS: u64 = 3_000_000_000;

/// How far past the deadline the address may live where the XDP program outlives the agent
/// ([`ProgramLifetime::Pinned`]): the program fences at the deadline by itself (ARP, NDP and every
/// packet to the VIP dropped, the egress fence on what leaves), so the address need not end before
/// it. It must not end *before* it either: the data plane answers ARP until the deadline, and a
/// client whose ARP is answered must find the address (a Patroni failsafe hold moves the deadline
/// 1 s ahead every 50 ms; renewals come every 500 ms of movement). 2 s outlasts that.
pub const PINNED_GRACE_S: u32 = 2;

/// Whether the XDP program (and so the fence at the deadline) outlives the agent process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgramLifetime {
    /// Pinned on a bpffs that stays when the agent dies: the program fences at the deadline by
    /// itself, whatever the address does. The address lifetime is a second line.
    Pinned,
    /// Pinned on a bpffs the agent mounted itself in a mount namespace of its own: the pins, the
    /// bpf_link and the program end with the process. The address lifetime is then what keeps the
    /// kernel from answering past the deadline, so it must end before it.
    EndsWithAgent,
}

/// The lifetime of a VIP address: valid and preferred lifetime in whole seconds, at least 1 (the
/// kernel refuses 0) and below `u32::MAX` (which means forever).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lifetime(u32);

impl Lifetime {
    /// `secs` as a lifetime: `None` for 0 or `u32::MAX` (forever).
    #[must_use]
    pub const fn from_secs(secs: u32) -> Option<Self> {
        if secs == 0 || secs == u32::MAX {
            None
        } else {
            Some(Self(secs))
        }
    }

    /// The lifetime in seconds.
    #[must_use]
    pub const fn secs(self) -> u32 {
        self.0
    }

    /// The lifetime to give the address now (`now_ns`, kernel monotonic) for a data plane that
    /// answers until `deadline_ns`:
    ///
    /// * the longest whole number of seconds after which the kernel has removed the address before
    ///   the deadline, its lateness included: `floor((deadline - now - EXPIRY_MARGIN_NS) / 1 s)`;
    /// * with [`ProgramLifetime::EndsWithAgent`], `None` when that is under 1 s: no lifetime the
    ///   kernel accepts ends before the deadline, so the address must not be there;
    /// * with [`ProgramLifetime::Pinned`], the whole seconds to the deadline rounded up, plus
    ///   [`PINNED_GRACE_S`]: the program fences at the deadline itself, and the address must be
    ///   there while it answers (the agent removes it at the deadline).
    ///
    /// `None` once the deadline has passed.
    #[must_use]
    pub fn until(deadline_ns: u64, now_ns: u64, program: ProgramLifetime) -> Option<Self> {
        let left = deadline_ns.checked_sub(now_ns).filter(|left| *left > 0)?;
        let strict = left.saturating_sub(EXPIRY_MARGIN_NS) / 1_000_000_000;
        let strict = u32::try_from(strict)
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1);
        match program {
            ProgramLifetime::EndsWithAgent => Self::from_secs(strict),
            ProgramLifetime::Pinned => {
                let up = u32::try_from(left.div_ceil(1_000_000_000)).unwrap_or(u32::MAX - 1);
                Self::from_secs(up.saturating_add(PINNED_GRACE_S).min(u32::MAX - 1))
            }
        }
    }
}

impl std::fmt::Display for Lifetime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} s", self.0)
    }
}

/// What an idempotent operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The kernel state changed.
    Changed,
    /// It already was as asked.
    Unchanged,
}

/// One IPv4 or IPv6 address on one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Vip {
    pub ifindex: u32,
    pub address: IpAddr,
    pub prefix_len: u8,
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// A netlink handle for address changes. Create it on the thread (network namespace) it should act in.
#[derive(Clone, Debug)]
pub struct Addresses {
    handle: Handle,
}

impl Addresses {
    /// Open a netlink connection (driven by a task on the current tokio runtime).
    ///
    /// # Errors
    /// When the netlink socket cannot be opened.
    pub fn new() -> Result<Self, AddressError> {
        let (connection, handle, _) = rtnetlink::new_connection().map_err(AddressError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Add `vip` (exact address and prefix) with `lifetime`, or give the existing address that
    /// lifetime (`NLM_F_REPLACE`: its lifetime is rewritten in place, the address stays).
    ///
    /// # Errors
    /// When the kernel refuses, or does not answer within [`ADDRESS_TIMEOUT`].
    pub async fn add(&self, vip: Vip, lifetime: Lifetime) -> Result<(), AddressError> {
        let mut request = self
            .handle
            .address()
            .add(vip.ifindex, vip.address, vip.prefix_len)
            .replace();
        *request.message_mut() = new_address_message(vip, lifetime);
        bounded("add", vip, async {
            request
                .execute()
                .await
                .map_err(|source| request_error("add", vip, source))
        })
        .await
    }

    /// Remove every address equal to `vip.address` on the interface, whatever its prefix length (a VIP
    /// added by hand with another prefix is still the VIP).
    ///
    /// # Errors
    /// When listing or deleting fails, or the whole does not end within [`ADDRESS_TIMEOUT`].
    pub async fn remove(&self, vip: Vip) -> Result<Change, AddressError> {
        bounded("remove", vip, self.remove_unbounded(vip)).await
    }

    async fn remove_unbounded(&self, vip: Vip) -> Result<Change, AddressError> {
        let mut change = Change::Unchanged;
        for msg in self.matching(vip, false).await? {
            match self.handle.address().del(msg).execute().await {
                Ok(()) => change = Change::Changed,
                // Removed meanwhile by someone else: the goal is reached.
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.raw_code() == -libc::EADDRNOTAVAIL || e.raw_code() == -libc::ENOENT => {}
                Err(source) => return Err(request_error("remove", vip, source)),
            }
        }
        Ok(change)
    }

    /// Whether exactly `vip` (address and prefix length) is configured on its interface.
    ///
    /// # Errors
    /// When listing fails, or does not end within [`ADDRESS_TIMEOUT`].
    pub async fn contains(&self, vip: Vip) -> Result<bool, AddressError> {
        let found = bounded("list addresses for", vip, self.matching(vip, true)).await?;
        Ok(!found.is_empty())
    }

    async fn matching(
        &self,
        vip: Vip,
        exact_prefix: bool,
    ) -> Result<Vec<AddressMessage>, AddressError> {
        let mut stream = self
            .handle
            .address()
            .get()
            .set_link_index_filter(vip.ifindex)
            .execute();
        let mut found = Vec::new();
        while let Some(msg) = stream
            .try_next()
            .await
            .map_err(|source| request_error("list addresses for", vip, source))?
        {
            if msg.header.index == vip.ifindex
                && (!exact_prefix || msg.header.prefix_len == vip.prefix_len)
                && address_of(&msg) == Some(vip.address)
            {
                found.push(msg);
            }
        }
        Ok(found)
    }
}

/// `request` bounded by [`ADDRESS_TIMEOUT`] ([`AddressError::Timeout`] naming `operation`).
async fn bounded<T>(
    operation: &'static str,
    vip: Vip,
    request: impl Future<Output = Result<T, AddressError>>,
) -> Result<T, AddressError> {
    tokio::time::timeout(ADDRESS_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err(timeout_error(operation, vip, ADDRESS_TIMEOUT)))
}

fn timeout_error(operation: &'static str, vip: Vip, after: std::time::Duration) -> AddressError {
    AddressError::Timeout {
        operation,
        address: vip.address,
        prefix_len: vip.prefix_len,
        ifindex: vip.ifindex,
        after,
    }
}

fn request_error(operation: &'static str, vip: Vip, source: rtnetlink::Error) -> AddressError {
    AddressError::Request {
        operation,
        address: vip.address,
        prefix_len: vip.prefix_len,
        ifindex: vip.ifindex,
        source,
    }
}

/// Add `vip` with `lifetime` now, on the calling thread: one `RTM_NEWADDR` on a fresh netlink
/// socket and its acknowledgement, tens of microseconds. For the promotion path, which must have
/// the address in place before the data plane answers ARP for it: a client that learns the MAC
/// from our first reply sends its SYN at once, and a SYN to an address the kernel does not have yet
/// is dropped and retransmitted only after a second. An existing address gets the new lifetime
/// (as [`Addresses::add`]). The exchange is bounded by [`ADD_BLOCKING_TIMEOUT`] (the kernel
/// waits for RTNL, which anything else may hold), and the caller must not hold the data plane's
/// lock across it.
///
/// # Errors
/// When the socket cannot be used, the kernel refuses, or does not answer in time
/// ([`AddressError::Timeout`]).
pub fn add_blocking(vip: Vip, lifetime: Lifetime) -> Result<(), AddressError> {
    use rtnetlink::sys::{Socket, protocols::NETLINK_ROUTE};
    let io = |source| io_error(vip, source);
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    add_on(&socket, vip, lifetime, ADD_BLOCKING_TIMEOUT)
}

fn io_error(vip: Vip, source: std::io::Error) -> AddressError {
    AddressError::Io {
        operation: "add",
        address: vip.address,
        prefix_len: vip.prefix_len,
        ifindex: vip.ifindex,
        source,
    }
}

/// The exchange of [`add_blocking`] on a connected `socket` (a netlink socket; in tests, any
/// datagram socket), bounded by `timeout` in all: [`AddressError::Timeout`] when the answer has
/// not come by then.
fn add_on(
    socket: &impl std::os::fd::AsFd,
    vip: Vip,
    lifetime: Lifetime,
    timeout: std::time::Duration,
) -> Result<(), AddressError> {
    use std::os::fd::AsRawFd as _;

    use nix::{
        errno::Errno,
        sys::{
            socket::{
                MsgFlags, recv, send, setsockopt,
                sockopt::{ReceiveTimeout, SendTimeout},
            },
            time::TimeVal,
        },
    };
    use rtnetlink::packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
    let io = |source| io_error(vip, source);
    let timed_out = || timeout_error("add", vip, timeout);
    let until = std::time::Instant::now() + timeout;
    // The socket's timeouts bound each call; `until` bounds them all (replies to other requests
    // are skipped). A timeout of zero would mean "block forever": at least 1 µs.
    let bound = |socket: std::os::fd::BorrowedFd<'_>| -> Result<(), AddressError> {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(timed_out());
        }
        let left = TimeVal::from(libc::timeval {
            tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_usec: libc::suseconds_t::from(left.subsec_micros().max(1)),
        });
        setsockopt(&socket, ReceiveTimeout, &left)
            .and_then(|()| setsockopt(&socket, SendTimeout, &left))
            .map_err(|e| io(e.into()))
    };
    let fd = socket.as_fd().as_raw_fd();
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(new_address_message(
        vip, lifetime,
    )));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    let gone = |e: Errno| match e {
        Errno::EAGAIN | Errno::EINPROGRESS => timed_out(),
        e => io(e.into()),
    };
    bound(socket.as_fd())?;
    send(fd, &buf, MsgFlags::empty()).map_err(gone)?;
    // An acknowledgement echoes the request: a few hundred bytes.
    let mut reply = vec![0; 64 * 1024];
    loop {
        bound(socket.as_fd())?;
        let n = match recv(fd, &mut reply, MsgFlags::empty()) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(gone(e)),
        };
        let Some(received) = reply.get(..n) else {
            continue;
        };
        let message =
            NetlinkMessage::<RouteNetlinkMessage>::deserialize(received).map_err(|e| {
                io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("undecodable netlink reply: {e}"),
                ))
            })?;
        if message.header.sequence_number != 1 {
            continue;
        }
        return match message.payload {
            NetlinkPayload::Error(e) if e.code.is_none() => Ok(()),
            NetlinkPayload::Error(e) => {
                Err(request_error("add", vip, rtnetlink::Error::NetlinkError(e)))
            }
            _ => continue,
        };
    }
}

/// The `RTM_NEWADDR` message for `vip` with `lifetime` as its valid and preferred lifetime; IPv6
/// with `IFA_F_NODAD` (see the module documentation).
///
/// The preferred lifetime must be finite too: the IPv4 check schedules its next run from the
/// preferred lifetime only, so an address with a finite valid and an infinite preferred lifetime
/// would wait for the 120 s periodic check.
fn new_address_message(vip: Vip, lifetime: Lifetime) -> AddressMessage {
    let mut message = address_message(vip);
    let mut cache_info = CacheInfo::default();
    cache_info.ifa_valid = lifetime.secs();
    cache_info.ifa_preferred = lifetime.secs();
    message
        .attributes
        .push(AddressAttribute::CacheInfo(cache_info));
    message
}

fn address_message(vip: Vip) -> AddressMessage {
    use rtnetlink::{
        AddressMessageBuilder,
        packet_route::address::{AddressFlags, AddressHeaderFlags},
    };
    match vip.address {
        IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
            .index(vip.ifindex)
            .address(a, vip.prefix_len)
            .build(),
        IpAddr::V6(a) => {
            let mut message = AddressMessageBuilder::<Ipv6Addr>::new()
                .index(vip.ifindex)
                .address(a, vip.prefix_len)
                .build();
            message.header.flags = AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            message
        }
    }
}

/// The local address of an address message (`IFA_LOCAL`, else `IFA_ADDRESS`; an IPv6 message
/// carries only `IFA_ADDRESS` for a local address).
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => address = Some(*a),
            _ => {}
        }
    }
    address
}

/// The remaining valid lifetime an address message reports: `None` for an address without one
/// (permanent), `Some(0)` for one whose lifetime has run out.
fn valid_lifetime_left(msg: &AddressMessage) -> Option<u32> {
    msg.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::CacheInfo(ci) if ci.ifa_valid != u32::MAX => Some(ci.ifa_valid),
        _ => None,
    })
}

/// A kernel notification about an IPv4 or IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressEvent {
    /// Added, or its lifetime replaced.
    Added(Vip),
    /// Removed by someone (a person, a tool, the interface going away).
    Removed(Vip),
    /// Removed with at most 1 s of its lifetime left: the kernel's own expiry, which reports 0 s
    /// left, or 1 s when its check ran in the 20 ms it may run early (or, rarely, a removal by
    /// someone in the last second of the lifetime).
    Expired(Vip),
}

impl AddressEvent {
    /// The event an `RTM_NEWADDR` (`added`) or `RTM_DELADDR` message stands for.
    fn from_message(msg: &AddressMessage, added: bool) -> Option<Self> {
        let vip = Vip {
            ifindex: msg.header.index,
            address: address_of(msg)?,
            prefix_len: msg.header.prefix_len,
        };
        Some(if added {
            Self::Added(vip)
        } else if valid_lifetime_left(msg).is_some_and(|left| left <= 1) {
            Self::Expired(vip)
        } else {
            Self::Removed(vip)
        })
    }
}

/// The kernel's address notifications (`RTNLGRP_IPV4_IFADDR`, `RTNLGRP_IPV6_IFADDR`) for the calling
/// thread's namespace.
pub struct AddressEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    ended: bool,
}

impl AddressEvents {
    /// Subscribe. Events are queued from this call on.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or bound to the group.
    pub fn subscribe() -> Result<Self, AddressError> {
        let (connection, _handle, messages) = rtnetlink::new_multicast_connection(&[
            MulticastGroup::Ipv4Ifaddr,
            MulticastGroup::Ipv6Ifaddr,
        ])
        .map_err(AddressError::Connect)?;
        tokio::spawn(connection);
        Ok(Self {
            messages,
            ended: false,
        })
    }

    /// The next address event; `None` once when the netlink connection ended, then never ready
    /// again (so a `select!` loop does not spin on it).
    pub async fn next(&mut self) -> Option<AddressEvent> {
        if self.ended {
            return std::future::pending().await;
        }
        while let Some((msg, _)) = self.messages.next().await {
            let (added, msg) = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => (true, m),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelAddress(m)) => (false, m),
                _ => continue,
            };
            if let Some(event) = AddressEvent::from_message(&msg, added) {
                return Some(event);
            }
        }
        self.ended = true;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;
    const NOW: u64 = 1_000 * S;

    fn secs(deadline_ns: u64, program: ProgramLifetime) -> Option<u32> {
        Lifetime::until(deadline_ns, NOW, program).map(Lifetime::secs)
    }

    /// Issue 16, item 18: a kernel that never answers must not hold the follower's task.
    #[test]
    fn an_add_that_gets_no_answer_times_out() {
        let (ours, _silent_peer) = std::os::unix::net::UnixDatagram::pair().expect("a socket pair");
        let vip = Vip {
            ifindex: 1,
            address: IpAddr::from([10, 0, 0, 5]),
            prefix_len: 32,
        };
        let lifetime = Lifetime::from_secs(5).expect("a lifetime");
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(add_on(&ours, vip, lifetime, ADD_BLOCKING_TIMEOUT));
        });
        let result = rx
            .recv_timeout(ADD_BLOCKING_TIMEOUT + std::time::Duration::from_secs(2))
            .expect("the add returns within its bound");
        assert!(
            matches!(result, Err(AddressError::Timeout { after, .. }) if after == ADD_BLOCKING_TIMEOUT),
            "{result:?}"
        );
        assert!(started.elapsed() >= ADD_BLOCKING_TIMEOUT);
    }

    /// A kernel that never answers (RTNL held elsewhere) must not hang a VIP's task: every
    /// request of [`Addresses`] ends with [`AddressError::Timeout`] after [`ADDRESS_TIMEOUT`]. The
    /// handle's connection exists but is never driven, so no request is ever answered.
    #[tokio::test]
    async fn the_async_requests_end_when_the_kernel_never_answers() {
        let (_undriven, handle, _) = rtnetlink::new_connection().expect("a netlink socket");
        let addresses = Addresses { handle };
        let vip = Vip {
            ifindex: 1,
            address: IpAddr::from([10, 0, 0, 5]),
            prefix_len: 32,
        };
        let lifetime = Lifetime::from_secs(5).expect("a lifetime");
        let bound = ADDRESS_TIMEOUT * 2;
        // The operation a request timed out in, if it ended with its own timeout within `bound`.
        fn timed_out<T: std::fmt::Debug>(
            r: &Result<Result<T, AddressError>, tokio::time::error::Elapsed>,
        ) -> Option<&'static str> {
            match r {
                Ok(Err(AddressError::Timeout { operation, .. })) => Some(operation),
                _ => None,
            }
        }
        let add = tokio::time::timeout(bound, addresses.add(vip, lifetime)).await;
        assert_eq!(timed_out(&add), Some("add"), "{add:?}");
        let remove = tokio::time::timeout(bound, addresses.remove(vip)).await;
        assert_eq!(timed_out(&remove), Some("remove"), "{remove:?}");
        let contains = tokio::time::timeout(bound, addresses.contains(vip)).await;
        assert!(timed_out(&contains).is_some(), "{contains:?}");
    }

    #[test]
    fn the_lifetime_ends_before_the_deadline_with_the_kernels_lateness_included() {
        use ProgramLifetime::{EndsWithAgent, Pinned};
        // A Patroni lease (ttl 30, loop_wait 10): about 17 s ahead.
        assert_eq!(secs(NOW + 17 * S, EndsWithAgent), Some(14));
        assert_eq!(secs(NOW + 17 * S, Pinned), Some(19));
        // The margin is 3 s, and whole seconds round down.
        assert_eq!(secs(NOW + 4 * S, EndsWithAgent), Some(1));
        assert_eq!(secs(NOW + 4_999_999_999, EndsWithAgent), Some(1));
        assert_eq!(secs(NOW + 5 * S, EndsWithAgent), Some(2));
        // No lifetime the kernel accepts (>= 1 s) ends in time: no address.
        assert_eq!(secs(NOW + 3_999_999_999, EndsWithAgent), None);
        assert_eq!(secs(NOW + 1, EndsWithAgent), None);
        // Where the program outlives the agent and fences at the deadline itself: the address
        // lives while the program answers, and a little past it.
        assert_eq!(secs(NOW + 2_999_999_999, Pinned), Some(5));
        assert_eq!(secs(NOW + 1, Pinned), Some(3));
        assert_eq!(secs(NOW + 5 * S, Pinned), Some(7));
        // A deadline that has passed (or a fenced one: 0) gets no address, whatever the program.
        for program in [EndsWithAgent, Pinned] {
            assert_eq!(secs(NOW, program), None);
            assert_eq!(secs(NOW - 1, program), None);
            assert_eq!(secs(0, program), None);
        }
        // Never "forever".
        assert_eq!(secs(u64::MAX, EndsWithAgent), Some(u32::MAX - 1));
    }

    #[test]
    fn a_private_lifetime_always_ends_before_the_deadline_even_when_the_kernel_is_late() {
        let mut rng = fastrand::Rng::with_seed(15);
        for _ in 0..100_000 {
            let now = rng.u64(..u64::MAX / 2);
            let deadline = now.saturating_add(rng.u64(..120 * S));
            if let Some(l) = Lifetime::until(deadline, now, ProgramLifetime::EndsWithAgent) {
                let gone_by = now + u64::from(l.secs()) * S + EXPIRY_MARGIN_NS;
                assert!(gone_by <= deadline, "{now} {deadline} {l}");
                assert!(l.secs() >= 1);
            }
        }
    }

    #[test]
    fn a_pinned_lifetime_never_ends_before_the_deadline() {
        // The data plane answers ARP until the deadline: the address must still be there, or
        // clients reach a node without it (the failsafe-mode etcd outage of patroni_e2e: the
        // address expired 2 s before a deadline that Patroni's confirmations then moved on).
        let mut rng = fastrand::Rng::with_seed(16);
        for _ in 0..100_000 {
            let now = rng.u64(..u64::MAX / 2);
            let deadline = now.saturating_add(rng.u64(1..120 * S));
            let l = Lifetime::until(deadline, now, ProgramLifetime::Pinned).expect("a lifetime");
            // The kernel removes it at most 20 ms early (see the module documentation).
            let earliest_gone = now + u64::from(l.secs()) * S - 20_000_000;
            assert!(earliest_gone > deadline, "{now} {deadline} {l}");
        }
    }

    #[test]
    fn lifetimes_the_kernel_would_take_as_zero_or_forever_do_not_exist() {
        assert_eq!(Lifetime::from_secs(0), None);
        assert_eq!(Lifetime::from_secs(u32::MAX), None);
        assert_eq!(Lifetime::from_secs(1).map(Lifetime::secs), Some(1));
    }

    fn cache_info(message: &AddressMessage) -> Option<(u32, u32)> {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::CacheInfo(ci) => Some((ci.ifa_valid, ci.ifa_preferred)),
            _ => None,
        })
    }

    #[test]
    fn the_add_message_carries_the_lifetime_as_valid_and_preferred() {
        let lifetime = Lifetime::from_secs(7).expect("7 s");
        for address in [
            IpAddr::V4(Ipv4Addr::new(10, 77, 160, 100)),
            IpAddr::V6("2001:db8::100".parse().expect("v6")),
        ] {
            let vip = Vip {
                ifindex: 3,
                address,
                prefix_len: 24,
            };
            let message = new_address_message(vip, lifetime);
            assert_eq!(cache_info(&message), Some((7, 7)), "{address}");
            assert_eq!(address_of(&message), Some(address));
            assert_eq!(message.header.index, 3);
        }
    }

    #[test]
    fn a_removal_by_the_kernel_at_the_end_of_the_lifetime_is_told_apart() {
        let vip = Vip {
            ifindex: 3,
            address: IpAddr::V4(Ipv4Addr::new(10, 77, 160, 100)),
            prefix_len: 24,
        };
        let with_left = |valid: u32| {
            let mut m = address_message(vip);
            let mut ci = CacheInfo::default();
            ci.ifa_valid = valid;
            ci.ifa_preferred = valid;
            m.attributes.push(AddressAttribute::CacheInfo(ci));
            m
        };
        assert_eq!(
            AddressEvent::from_message(&with_left(0), false),
            Some(AddressEvent::Expired(vip))
        );
        assert_eq!(
            AddressEvent::from_message(&with_left(1), false),
            Some(AddressEvent::Expired(vip)),
            "the kernel's check may run 20 ms early, and then reports 1 s left"
        );
        assert_eq!(
            AddressEvent::from_message(&with_left(2), false),
            Some(AddressEvent::Removed(vip))
        );
        assert_eq!(
            AddressEvent::from_message(&with_left(u32::MAX), false),
            Some(AddressEvent::Removed(vip)),
            "a permanent address"
        );
        assert_eq!(
            AddressEvent::from_message(&address_message(vip), false),
            Some(AddressEvent::Removed(vip)),
            "no cache info at all"
        );
        assert_eq!(
            AddressEvent::from_message(&with_left(0), true),
            Some(AddressEvent::Added(vip))
        );
        let mut nameless = address_message(vip);
        nameless.attributes.clear();
        assert_eq!(AddressEvent::from_message(&nameless, false), None);
    }
}
