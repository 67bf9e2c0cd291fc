//! The leadership contract between a leader source and everything downstream of it (fence
//! handshake, promotion gate, data plane writer, VIP tasks, metrics).
//!
//! A source is a plug-in ([`Source`]): the etcd follower ([`crate::leader`]), the repmgr tracker
//! ([`crate::repmgr`]) and Patroni's REST API ([`crate::patroni_rest`]). Each turns what it
//! observes into a [`Leadership`]: whether this node holds the leadership, and a
//! `CLOCK_MONOTONIC` deadline before which the source proves that no other node can. Nothing here
//! names a source: a source describes itself with a [`SourceKind`] and keeps its own diagnostics
//! (etcd revision and lease, repmgr event number, HTTP status) to itself, handing downstream one
//! opaque number ([`Leadership::detail`]) that its kind names.

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Why a [`Leadership`] was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Nothing observed yet: fenced until the source's first answer.
    Startup,
    /// The source names this node. The deadline is the one already proven for this tenure, or 0
    /// until [`Cause::Confirmed`] proves one.
    Ours,
    /// A fresh proof moved the deadline forward.
    Confirmed,
    /// Another node, or none, holds the leadership: fenced at once.
    Lost,
    /// The source still names this node, but its own proof ran out (an expired lease): fenced.
    Expired,
    /// The source cannot be asked. `primary` and the deadline are the last known ones; the
    /// deadline runs out by itself.
    Unreachable,
}

/// What a source knows about this node's leadership, as published downstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// The source names this node the leader.
    pub primary: bool,
    /// `CLOCK_MONOTONIC` ns ([`crate::clock::monotonic_ns`]) until which this node may act as
    /// primary. 0 when not primary, not yet confirmed, or fenced.
    pub safe_until_ns: u64,
    /// Which incarnation of the leadership this is about, when the source can tell (etcd: the key's
    /// `create_revision`); 0 otherwise. A new term is a new tenure: the fence handshake compares
    /// terms.
    pub term: i64,
    /// Why this state was published.
    pub cause: Cause,
    /// `CLOCK_MONOTONIC` ns at which the answer behind this state was received.
    pub observed_at_ns: u64,
    /// The source's own progress number, for diagnostics only ([`SourceKind::detail`] names it).
    pub detail: i64,
}

impl Leadership {
    /// The state before anything was observed: not primary, fenced.
    #[must_use]
    pub const fn startup(now_ns: u64) -> Self {
        Self {
            primary: false,
            safe_until_ns: 0,
            term: 0,
            cause: Cause::Startup,
            observed_at_ns: now_ns,
            detail: 0,
        }
    }

    /// Whether this node may act as primary at `now_ns` (primary and before the deadline).
    #[must_use]
    pub const fn is_safe_at(&self, now_ns: u64) -> bool {
        self.primary && now_ns < self.safe_until_ns
    }

    /// Whether the source answered (neither starting nor unreachable).
    #[must_use]
    pub const fn reached(&self) -> bool {
        !matches!(self.cause, Cause::Startup | Cause::Unreachable)
    }

    /// The same state with "answering" taken away.
    #[must_use]
    pub const fn fenced(&self) -> Self {
        Self {
            primary: false,
            safe_until_ns: 0,
            ..*self
        }
    }
}

/// How a source describes itself to health, metrics, `status` and the gate.
#[derive(Debug, PartialEq, Eq)]
pub struct SourceKind {
    /// Short name: metric names and labels (`vip_agent_<name>_connected`), `dcs-type`.
    pub name: &'static str,
    /// What is asked, for messages ("<what> unreachable").
    pub what: &'static str,
    /// Whether Patroni's `failsafe_mode` can keep this node primary while this source is
    /// unreachable: only when the source is Patroni's own DCS. Elsewhere `patroni-failsafe` never
    /// acts.
    pub failsafe_applies: bool,
    /// The metric name and help of [`Leadership::detail`].
    pub detail: (&'static str, &'static str),
}

impl SourceKind {
    /// How the metrics registry names this source (plain values, [`crate::observe`]).
    #[must_use]
    pub const fn observed(&self) -> crate::observe::SourceName {
        crate::observe::SourceName {
            name: self.name,
            what: self.what,
            detail: self.detail,
        }
    }
}

/// Called synchronously in the source's task with every published state, before the watch
/// channel: the data plane writes its map without a task switch.
pub type Hook = Box<dyn FnMut(&Leadership) + Send>;

/// The publishing end every source uses: a hook, then a watch channel.
pub struct Publisher {
    tx: watch::Sender<Leadership>,
    hook: Option<Hook>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("latest", &*self.tx.borrow())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts at [`Leadership::startup`].
    #[must_use]
    pub fn new(now_ns: u64) -> Self {
        Self {
            tx: watch::channel(Leadership::startup(now_ns)).0,
            hook: None,
        }
    }

    /// A receiver of the latest published state.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        self.tx.subscribe()
    }

    /// Install the synchronous hook (replacing any earlier one).
    pub fn on_change(&mut self, hook: Hook) {
        self.hook = Some(hook);
    }

    /// Hand `state` to the hook, then to the channel.
    pub fn publish(&mut self, state: &Leadership) {
        if let Some(hook) = &mut self.hook {
            hook(state);
        }
        self.tx.send_replace(*state);
    }
}

/// A leader source, as the agent drives it.
pub trait Source: Send {
    /// What kind of source this is.
    fn kind(&self) -> &'static SourceKind;
    /// The published states (starting at [`Cause::Startup`]).
    fn subscribe(&self) -> watch::Receiver<Leadership>;
    /// Install the synchronous hook called with every published state.
    fn on_change(&mut self, hook: Hook);
    /// Follow until `cancel`.
    fn run(self: Box<Self>, cancel: CancellationToken) -> BoxFuture<'static, ()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_calls_the_hook_before_the_channel_and_startup_is_fenced() {
        let mut p = Publisher::new(5);
        let rx = p.subscribe();
        assert_eq!(rx.borrow().cause, Cause::Startup);
        assert!(!rx.borrow().is_safe_at(6) && !rx.borrow().reached());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let (s, rx2) = (std::sync::Arc::clone(&seen), p.subscribe());
        p.on_change(Box::new(move |l| {
            // The channel still holds the previous state while the hook runs.
            *s.lock().expect("seen") = Some((*l, rx2.borrow().cause));
        }));
        let ours = Leadership {
            primary: true,
            safe_until_ns: 100,
            term: 3,
            cause: Cause::Confirmed,
            observed_at_ns: 10,
            detail: 7,
        };
        p.publish(&ours);
        assert_eq!(*seen.lock().expect("seen"), Some((ours, Cause::Startup)));
        assert_eq!(*rx.borrow(), ours);
        assert!(ours.is_safe_at(99) && !ours.is_safe_at(100) && ours.reached());
        assert!(!ours.fenced().is_safe_at(11));
        assert_eq!(ours.fenced().term, 3);
    }
}
