//! Interface facts from rtnetlink: index, MAC, kind, state and which XDP program is attached.
//!
//! Everything goes through a netlink socket opened by the calling thread, so the answers belong to
//! that thread's network namespace (sysfs would show the namespace it was mounted in instead).

use futures::{StreamExt as _, TryStreamExt as _, channel::mpsc::UnboundedReceiver};
use rtnetlink::{
    MulticastGroup,
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        RouteNetlinkMessage,
        link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    },
    sys::SocketAddr,
};

/// Errors of netlink queries, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("open a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("netlink {operation}")]
    Request {
        operation: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

/// How an XDP program is attached to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpAttachment {
    /// Native (driver) mode.
    Driver,
    /// Generic (skb) mode.
    Generic,
    /// Offloaded to the NIC.
    Hardware,
    /// Several programs in several modes.
    Multiple,
}

impl std::fmt::Display for XdpAttachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Driver => "native",
            Self::Generic => "generic",
            Self::Hardware => "offload",
            Self::Multiple => "multiple",
        })
    }
}

/// What we need to know about one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFacts {
    pub index: u32,
    pub name: String,
    /// Hardware address, when it is a 6-byte (Ethernet) one.
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND` ("veth", "bridge", ...); `None` for plain hardware NICs.
    pub kind: Option<String>,
    pub up: bool,
    pub loopback: bool,
    /// The attached XDP program's id and mode, if any.
    pub xdp: Option<(u32, XdpAttachment)>,
}

impl LinkFacts {
    /// Whether the interface is a veth, where native XDP_TX needs XDP on the peer.
    #[must_use]
    pub fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }

    fn from_message(msg: LinkMessage) -> Self {
        let mut facts = Self {
            index: msg.header.index,
            name: String::new(),
            mac: None,
            kind: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            loopback: msg.header.flags.contains(LinkFlags::Loopback),
            xdp: None,
        };
        let mut prog_id = 0;
        let mut mode = None;
        for attr in msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => facts.name = name,
                LinkAttribute::Address(bytes) => facts.mac = <[u8; 6]>::try_from(bytes).ok(),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        if let LinkInfo::Kind(kind) = info {
                            facts.kind = Some(kind_name(&kind));
                        }
                    }
                }
                LinkAttribute::Xdp(xdp) => {
                    for x in xdp {
                        match x {
                            LinkXdp::ProgId(id) => prog_id = id,
                            LinkXdp::Attached(a) => {
                                mode = match a {
                                    XdpAttached::Driver => Some(XdpAttachment::Driver),
                                    XdpAttached::SocketBuffer => Some(XdpAttachment::Generic),
                                    XdpAttached::Hardware => Some(XdpAttachment::Hardware),
                                    XdpAttached::Multiple => Some(XdpAttachment::Multiple),
                                    _ => None,
                                };
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(mode) = mode {
            facts.xdp = Some((prog_id, mode));
        }
        facts
    }
}

fn kind_name(kind: &InfoKind) -> String {
    match kind {
        InfoKind::Veth => "veth".to_owned(),
        InfoKind::Bridge => "bridge".to_owned(),
        InfoKind::Vlan => "vlan".to_owned(),
        InfoKind::Dummy => "dummy".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// Look an interface up by name in the calling thread's network namespace.
///
/// # Errors
/// When netlink cannot be opened or the request fails for another reason than "no such device".
pub async fn link_by_name(name: &str) -> Result<Option<LinkFacts>, NetlinkError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    let task = tokio::spawn(connection);
    let result = handle
        .link()
        .get()
        .match_name(name.to_owned())
        .execute()
        .try_next()
        .await;
    task.abort();
    match result {
        Ok(Some(msg)) => Ok(Some(LinkFacts::from_message(msg))),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(source) => Err(NetlinkError::Request {
            operation: "get link",
            source,
        }),
    }
}

/// Whether an interface can carry traffic: administratively up with a carrier (`IFF_UP` and
/// `IFF_LOWER_UP`).
fn carrier(msg: &LinkMessage) -> bool {
    msg.header.flags.contains(LinkFlags::Up) && msg.header.flags.contains(LinkFlags::LowerUp)
}

/// The kernel's link notifications (`RTNLGRP_LINK`) for the calling thread's namespace, reduced to
/// "interface `index` can / cannot carry traffic now".
pub struct LinkEvents {
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>,
    ended: bool,
}

impl LinkEvents {
    /// Subscribe. Events are queued from this call on.
    ///
    /// # Errors
    /// When the netlink socket cannot be opened or bound to the group.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let (connection, _handle, messages) =
            rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
                .map_err(NetlinkError::Connect)?;
        tokio::spawn(connection);
        Ok(Self {
            messages,
            ended: false,
        })
    }

    /// The next link notification as `(ifindex, carrier)`; `None` once when the connection ended,
    /// then never ready again (so a `select!` loop does not spin on it). The kernel sends a
    /// notification for many reasons (statistics, XDP, MTU): a caller compares with the state it
    /// knew.
    pub async fn next(&mut self) -> Option<(u32, bool)> {
        self.next_change()
            .await
            .map(|(index, carrier, _)| (index, carrier))
    }

    /// The next link notification as `(ifindex, carrier, removed)`, as [`Self::next`].
    async fn next_change(&mut self) -> Option<(u32, bool, bool)> {
        if self.ended {
            return std::future::pending().await;
        }
        while let Some((msg, _)) = self.messages.next().await {
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    return Some((m.header.index, carrier(&m), false));
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(m)) => {
                    return Some((m.header.index, false, true));
                }
                _ => {}
            }
        }
        self.ended = true;
        None
    }

    /// Wait until one of `interfaces` (name, index) is deleted; returns its name. An interface
    /// re-created under the same name gets a new index, and the program and pins of the old one
    /// are gone with it. Never returns if the notifications end (logged by the VIP tasks).
    pub async fn removed(&mut self, interfaces: &[(String, u32)]) -> String {
        loop {
            match self.next_change().await {
                Some((index, _, true)) => {
                    if let Some((name, _)) = interfaces.iter().find(|(_, i)| *i == index) {
                        return name.clone();
                    }
                }
                Some(_) => {}
                None => return std::future::pending().await,
            }
        }
    }
}
