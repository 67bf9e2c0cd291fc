//! repmgr as the leader source (`dcs-type: repmgr`): this node's role from repmgr's event
//! notifications and repmgr's metadata, confirmed by the local PostgreSQL, published as a
//! [`Leadership`] (a [`crate::leadership::Source`] plug-in, of kind [`KIND`]).
//!
//! # Events in
//!
//! repmgr runs `event_notification_command` on the node where an event happens; the command is
//! `vip-agent event %n %e %s "%t" "%d"` ([`client::send`]), which hands the event to the agent over
//! a Unix stream socket ([`protocol`]: one line each way, one request per connection, bounded in
//! size and time). The socket is root-only (0600 in a 0700 directory), or 0660 for
//! `repmgr-socket-group`; each peer's `SO_PEERCRED` is checked as well ([`peer_allowed`]). The
//! table of what each event does is [`events::EVENTS`].
//!
//! # repmgr's word, per postmaster
//!
//! The VIP answers only while repmgr made this node the primary for the postmaster that runs now
//! ([`tracker`]): a promoting event bound to the postmaster the first check after it finds, or a
//! round of repmgr's metadata ([`metadata`], judged by [`view`]) in which a majority of repmgr's
//! nodes names this node. A new postmaster start time, an agent restart or
//! `child_nodes_disconnect_command` lose that word; a newer primary seen in a round fences at once.
//!
//! # Deadline
//!
//! Every `repmgr-check-interval`, and at once when the kept connection ends: `t_sent = now`, then
//! one status query ([`crate::pg::RecoveryProbe::status`]). The bound postmaster not in recovery
//! gives `t_sent + validity` (3 intervals, capped by `fence-timeout`), provided a round within
//! `repmgr-quorum-hold` before found a majority of repmgr's nodes reachable. Shut down, shutting
//! down, starting up, in recovery or restarted fences at once; no usable answer renews nothing, so
//! the data plane goes silent by itself. An answer sent before the last role change is ignored.
//!
//! The state file records the last accepted role for diagnosis; it never makes a node answer.
//! Limits and the safety argument: `docs/repmgr.md`.
//!
//! [`Leadership`]: crate::leadership::Leadership

pub mod client;
pub mod events;
pub mod metadata;
pub mod protocol;
mod source;
pub mod tracker;
pub mod view;

pub use events::{EVENTS, EventClass, classify};
pub use protocol::{EventRequest, Reply};
pub use source::{
    EVENT_OUTCOMES, EventHook, KIND, Peer, READ_TIMEOUT, RepmgrError, RepmgrSettings, RepmgrSource,
    load_state, peer_allowed, resolve_group, save_state,
};
pub use tracker::Role;
