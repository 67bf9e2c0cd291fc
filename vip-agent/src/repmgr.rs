//! repmgr as the leader source (`dcs-type: repmgr`): this node's role from repmgr's event
//! notifications, confirmed by the local PostgreSQL, published as the same [`LeaderState`] the
//! etcd follower publishes, so the data plane, gate, hooks and metrics do not know the difference.
//!
//! # Events in
//!
//! repmgr runs `event_notification_command` on the node where an event happens; the command is
//! `vip-agent event %n %e %s "%t" "%d"` ([`client::send`]), which hands the event to the agent over
//! a Unix stream socket ([`protocol`]: one line each way, one request per connection, bounded in
//! size and time). The socket is root-only (0600 in a 0700 directory), or 0660 for
//! `repmgr-socket-group`; each peer's `SO_PEERCRED` is checked as well ([`peer_allowed`]).
//!
//! An event moves the role only when it is about this node (`%n` = `repmgr-node-id`), succeeded
//! (`%s` = 1) and is a role event of the table in [`events::EVENTS`]; everything else is logged and
//! ignored. Malformed requests get an error reply and never change anything.
//!
//! # Deadline
//!
//! As the etcd follower, the source publishes `primary` and a `CLOCK_MONOTONIC` deadline. After a
//! promoting event the deadline is set only by a check, every `repmgr-check-interval`: `t_sent =
//! now`, `SELECT pg_is_in_recovery()` answering false within the interval gives
//! `t_sent + validity` (3 intervals, capped by `fence-timeout`). An unreachable, failing or hanging
//! PostgreSQL renews nothing, so the data plane goes silent by itself; PostgreSQL in recovery
//! fences at once and drops the role (a new promoting event is needed). A demoting event fences at
//! once. A check sent before the last role change is ignored.
//!
//! # Restart
//!
//! The last accepted role is kept in `repmgr-state-file` (written atomically): an agent restarted
//! on the primary resumes answering after its first successful check. The limits (a partitioned
//! old primary is fenced only by its own PostgreSQL check) are in `docs/repmgr.md`.
//!
//! [`LeaderState`]: crate::leader::LeaderState

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
    EventHook, Peer, READ_TIMEOUT, RepmgrError, RepmgrSettings, RepmgrSource, StateHook,
    load_state, peer_allowed, save_state,
};
pub use tracker::Role;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::leader::{LeaderFollower, LeaderState};

/// Where the agent's leadership comes from: the etcd follower, or repmgr. The agent drives either
/// the same way.
#[derive(Debug)]
pub enum LeaderSource {
    Etcd(LeaderFollower),
    Repmgr(RepmgrSource),
}

impl LeaderSource {
    /// See [`LeaderFollower::subscribe`].
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        match self {
            Self::Etcd(f) => f.subscribe(),
            Self::Repmgr(r) => r.subscribe(),
        }
    }

    /// See [`LeaderFollower::on_change`].
    pub fn on_change(&mut self, hook: impl FnMut(&LeaderState) + Send + 'static) {
        match self {
            Self::Etcd(f) => f.on_change(hook),
            Self::Repmgr(r) => r.on_change(hook),
        }
    }

    /// Follow until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        match self {
            Self::Etcd(f) => f.run(cancel).await,
            Self::Repmgr(r) => r.run(cancel).await,
        }
    }
}
