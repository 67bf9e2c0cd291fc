//! The VIP as a kernel address, through rtnetlink (no `ip` subprocess).
//!
//! Adding is idempotent (an existing address is success); matching is exact on address and prefix
//! length, never textual. [`AddressEvents`] follows the kernel's IPv4 and IPv6 address notifications
//! so that an address removed by hand on the primary is put back at once, not on a timer.
//!
//! An IPv6 VIP is added with `IFA_F_NODAD`: it is usable at once instead of after a second of
//! duplicate address detection, and our own data plane, not the kernel's DAD, decides who answers
//! for it (the fenced nodes drop every solicitation for it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    Handle, MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        address::{AddressAttribute, AddressMessage},
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

    /// Add `vip` unless it is there already (exact address and prefix).
    ///
    /// # Errors
    /// When the kernel refuses for another reason than "exists".
    pub async fn add(&self, vip: Vip) -> Result<Change, AddressError> {
        let mut request = self
            .handle
            .address()
            .add(vip.ifindex, vip.address, vip.prefix_len);
        *request.message_mut() = new_address_message(vip);
        let result = request.execute().await;
        match result {
            Ok(()) => Ok(Change::Changed),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                Ok(Change::Unchanged)
            }
            Err(source) => Err(request_error("add", vip, source)),
        }
    }

    /// Remove every address equal to `vip.address` on the interface, whatever its prefix length (a VIP
    /// added by hand with another prefix is still the VIP).
    ///
    /// # Errors
    /// When listing or deleting fails.
    pub async fn remove(&self, vip: Vip) -> Result<Change, AddressError> {
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
    /// When listing fails.
    pub async fn contains(&self, vip: Vip) -> Result<bool, AddressError> {
        Ok(!self.matching(vip, true).await?.is_empty())
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

fn request_error(operation: &'static str, vip: Vip, source: rtnetlink::Error) -> AddressError {
    AddressError::Request {
        operation,
        address: vip.address,
        prefix_len: vip.prefix_len,
        ifindex: vip.ifindex,
        source,
    }
}

/// Add `vip` now, on the calling thread: one `RTM_NEWADDR` on a fresh netlink socket and its
/// acknowledgement, tens of microseconds. For the promotion path, which must have the address in
/// place before the data plane answers ARP for it: a client that learns the MAC from our first
/// reply sends its SYN at once, and a SYN to an address the kernel does not have yet is dropped
/// and retransmitted only after a second. An existing address is success.
///
/// # Errors
/// When the socket cannot be used or the kernel refuses for another reason than "exists".
pub fn add_blocking(vip: Vip) -> Result<Change, AddressError> {
    use rtnetlink::{
        packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST},
        sys::{Socket, protocols::NETLINK_ROUTE},
    };
    let io = |source: std::io::Error| AddressError::Io {
        operation: "add",
        address: vip.address,
        prefix_len: vip.prefix_len,
        ifindex: vip.ifindex,
        source,
    };
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(io)?;
    socket.bind_auto().map_err(io)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(io)?;
    let mut request =
        NetlinkMessage::from(RouteNetlinkMessage::NewAddress(new_address_message(vip)));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_EXCL | NLM_F_CREATE;
    request.header.sequence_number = 1;
    request.finalize();
    let mut buf = vec![0; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send(&buf, 0).map_err(io)?;
    loop {
        let (reply, _) = socket.recv_from_full().map_err(io)?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply).map_err(|e| {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("undecodable netlink reply: {e}"),
            ))
        })?;
        if reply.header.sequence_number != 1 {
            continue;
        }
        return match reply.payload {
            NetlinkPayload::Error(e) if e.code.is_none() => Ok(Change::Changed),
            NetlinkPayload::Error(e) if e.raw_code() == -libc::EEXIST => Ok(Change::Unchanged),
            NetlinkPayload::Error(e) => {
                Err(request_error("add", vip, rtnetlink::Error::NetlinkError(e)))
            }
            _ => continue,
        };
    }
}

/// The `RTM_NEWADDR` message for `vip`; IPv6 with `IFA_F_NODAD` (see the module documentation).
fn new_address_message(vip: Vip) -> AddressMessage {
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

/// A kernel notification about an IPv4 or IPv6 address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressEvent {
    Added(Vip),
    Removed(Vip),
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
            let Some(address) = address_of(&msg) else {
                continue;
            };
            let vip = Vip {
                ifindex: msg.header.index,
                address,
                prefix_len: msg.header.prefix_len,
            };
            return Some(if added {
                AddressEvent::Added(vip)
            } else {
                AddressEvent::Removed(vip)
            });
        }
        self.ended = true;
        None
    }
}
