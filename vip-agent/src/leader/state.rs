//! The published leadership state and the pure state machine that computes it.
//!
//! Everything here is synchronous and free of I/O so that the ordering and deadline rules can be
//! unit-tested; [`super::follower`] feeds it etcd responses.

use std::time::Duration;

use crate::leadership::{Cause, Leadership, SourceKind};

/// The etcd leader key as a leader source.
pub static KIND: SourceKind = SourceKind {
    name: "etcd",
    what: "etcd",
    failsafe_applies: true,
    detail: (
        "vip_agent_watch_revision",
        "etcd revision the leader watch has reached.",
    ),
};

/// Where an observation of the key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The linearizable read at (re)connection or after a compacted watch.
    Read,
    /// A watch event.
    Watch,
    /// The periodic linearizable confirmation read (it saw a change the watch had not delivered
    /// yet, or that the watch missed).
    Confirmation,
}

/// Why the state was published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// Nothing read yet: fenced until the first successful read.
    Startup,
    /// The key holds this node's value. The deadline follows with [`Reason::Confirmed`] unless it
    /// is carried over from the same lease.
    Ours {
        /// Source of the observation.
        via: Via,
    },
    /// The key holds another value (another member leads, or bytes that are not ours).
    OtherValue {
        /// Source of the observation.
        via: Via,
    },
    /// The key does not exist (deleted, lease expired, never created).
    Deleted {
        /// Source of the observation.
        via: Via,
    },
    /// A lease TTL query (or, for a key without lease, a linearizable read) renewed the deadline.
    Confirmed,
    /// The key still names this node but its lease has run out (the DELETE is on its way): fenced.
    LeaseExpired,
    /// etcd cannot be reached. `primary` and `safe_until_ns` are the last known ones; the deadline
    /// expires on its own.
    EtcdUnreachable,
}

/// What the follower knows about the leader key: the etcd view behind the [`Leadership`] it
/// publishes ([`KeyState::leadership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyState {
    /// The key exists and its value is exactly the trigger value (as of [`Self::revision`]).
    pub primary: bool,
    /// `CLOCK_MONOTONIC` ns ([`crate::clock::monotonic_ns`]) until which this node may act as
    /// primary: no other node can hold the key before then without a write the watch would have
    /// reported. 0 when not primary, not yet confirmed, or fenced.
    pub safe_until_ns: u64,
    /// etcd revision this knowledge is valid at (0 before the first read).
    pub revision: i64,
    /// The lease attached to the key while it is ours (0: none or not primary).
    pub lease_id: i64,
    /// Which incarnation of the leadership this state is about: etcd's `create_revision` of the
    /// key as last seen (this node's tenure while `primary`, the other holder's otherwise; 0 when
    /// the key is absent or not read yet). A key deleted and created again is a new term; a key
    /// rewritten in place (a new lease) is not. The fence handshake compares terms.
    pub term: i64,
    /// Why this state was published.
    pub reason: Reason,
    /// `CLOCK_MONOTONIC` ns at which the response behind this state was received.
    pub observed_at_ns: u64,
}

impl KeyState {
    /// The state before anything was read: not primary, fenced.
    #[must_use]
    pub fn startup(now_ns: u64) -> Self {
        Self {
            primary: false,
            safe_until_ns: 0,
            revision: 0,
            lease_id: 0,
            term: 0,
            reason: Reason::Startup,
            observed_at_ns: now_ns,
        }
    }

    /// The source-neutral state handed downstream (the revision is its detail).
    #[must_use]
    pub const fn leadership(&self) -> Leadership {
        Leadership {
            primary: self.primary,
            safe_until_ns: self.safe_until_ns,
            term: self.term,
            cause: match self.reason {
                Reason::Startup => Cause::Startup,
                Reason::Ours { .. } => Cause::Ours,
                Reason::Confirmed => Cause::Confirmed,
                Reason::OtherValue { .. } | Reason::Deleted { .. } => Cause::Lost,
                Reason::LeaseExpired => Cause::Expired,
                Reason::EtcdUnreachable => Cause::Unreachable,
            },
            observed_at_ns: self.observed_at_ns,
            detail: self.revision,
        }
    }

    /// Whether this node may act as primary at `now_ns` (primary and before the deadline).
    #[must_use]
    pub fn is_safe_at(&self, now_ns: u64) -> bool {
        self.primary && now_ns < self.safe_until_ns
    }
}

/// The key as one response showed it.
#[derive(Debug, Clone, Copy)]
pub(super) enum KeySeen<'a> {
    Absent,
    /// `created`: the key's `create_revision`.
    Present {
        value: &'a [u8],
        lease: i64,
        created: i64,
    },
}

/// Whether a lease-derived deadline is wanted after an observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Need {
    Nothing,
    /// Query the TTL of this lease.
    LeaseTtl(i64),
    /// The key has no lease: a fresh linearizable read gives the deadline.
    Read,
}

/// Outcome of feeding one response to the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Applied {
    /// The published state changed and must be handed to the data plane.
    pub(super) publish: bool,
    /// The response was older than what is already known and was ignored.
    pub(super) stale: bool,
    pub(super) need: Need,
}

/// Deadline rules.
#[derive(Debug, Clone, Copy)]
pub(super) struct DeadlinePolicy {
    pub(super) margin: Duration,
    pub(super) fence_timeout: Option<Duration>,
    pub(super) no_lease_validity: Duration,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl DeadlinePolicy {
    /// Deadline from a lease TTL answered to a request sent at `t_sent_ns`: etcd cannot give the
    /// key to anyone else before the lease expires, which is at least `ttl_s` whole seconds after
    /// the request was sent (etcd rounds the remaining time down, leases are only ever extended).
    /// A remaining TTL above the granted one (`granted_ttl_s`) is no information: a lessor that
    /// is not (yet) primary answers "forever", and a lease just taken over by a new etcd leader is
    /// extended by an election timeout the agent cannot bound. Such an answer gives 0 (the
    /// deadline is not moved by it); the next confirmation decides.
    pub(super) fn lease_deadline(&self, t_sent_ns: u64, ttl_s: i64, granted_ttl_s: i64) -> u64 {
        if granted_ttl_s > 0 && ttl_s > granted_ttl_s {
            return 0;
        }
        let Ok(ttl_s) = u64::try_from(ttl_s) else {
            return 0;
        };
        if ttl_s == 0 {
            return 0;
        }
        let by_lease = t_sent_ns
            .saturating_add(ttl_s.saturating_mul(1_000_000_000))
            .saturating_sub(ns(self.margin));
        let deadline = match self.fence_timeout {
            Some(f) => by_lease.min(t_sent_ns.saturating_add(ns(f))),
            None => by_lease,
        };
        if deadline <= t_sent_ns { 0 } else { deadline }
    }

    /// Deadline of a key without a lease confirmed by a read sent at `t_sent_ns`.
    pub(super) fn no_lease_deadline(&self, t_sent_ns: u64) -> u64 {
        let v = match self.fence_timeout {
            Some(f) => self.no_lease_validity.min(f),
            None => self.no_lease_validity,
        };
        t_sent_ns.saturating_add(ns(v))
    }
}

/// The state machine: revision ordering between the watch and concurrent reads, deadlines.
#[derive(Debug)]
pub(super) struct Tracker {
    value: Vec<u8>,
    policy: DeadlinePolicy,
    state: KeyState,
    /// Highest revision the state reflects. Watch events at or below it are already known; reads
    /// below it are stale.
    known_rev: i64,
    /// While primary: the key's lease (`Some(0)` for a key without lease). `None` otherwise.
    lease: Option<i64>,
}

impl Tracker {
    pub(super) fn new(value: Vec<u8>, policy: DeadlinePolicy, now_ns: u64) -> Self {
        Self {
            value,
            policy,
            state: KeyState::startup(now_ns),
            known_rev: 0,
            lease: None,
        }
    }

    pub(super) fn state(&self) -> &KeyState {
        &self.state
    }

    /// True while the key is ours but no deadline is established for its current lease.
    pub(super) fn need(&self) -> Need {
        match self.lease {
            Some(_) if self.state.safe_until_ns != 0 => Need::Nothing,
            Some(0) => Need::Read,
            Some(lease) => Need::LeaseTtl(lease),
            None => Need::Nothing,
        }
    }

    /// Start of a new session: its first linearizable read is authoritative whatever revision it
    /// carries (etcd may have been restored from a backup with lower revisions).
    pub(super) fn reset_revision(&mut self) {
        self.known_rev = 0;
    }

    /// A watch event for the key at `rev` (the event's `mod_revision`).
    pub(super) fn event(&mut self, rev: i64, seen: KeySeen<'_>, observed_at_ns: u64) -> Applied {
        if rev <= self.known_rev {
            return Applied {
                publish: false,
                stale: true,
                need: Need::Nothing,
            };
        }
        // Every event newer than the state is handed over, changed or not (an event that a
        // concurrent linearizable read already reflected was skipped above).
        self.observe(rev, seen, Via::Watch, observed_at_ns, true)
    }

    /// A linearizable read answered at header revision `rev` and sent at `t_sent_ns`.
    pub(super) fn read(
        &mut self,
        rev: i64,
        seen: KeySeen<'_>,
        via: Via,
        t_sent_ns: u64,
        observed_at_ns: u64,
    ) -> Applied {
        if rev < self.known_rev {
            return Applied {
                publish: false,
                stale: true,
                need: Need::Nothing,
            };
        }
        let always = via == Via::Read;
        let mut applied = self.observe(rev, seen, via, observed_at_ns, always);
        if self.lease == Some(0) {
            // No lease: the read itself confirms the key until the no-lease validity runs out.
            let d = self.policy.no_lease_deadline(t_sent_ns);
            if d > self.state.safe_until_ns {
                self.state.safe_until_ns = d;
                if !applied.publish {
                    self.state.reason = Reason::Confirmed;
                }
                self.state.observed_at_ns = observed_at_ns;
                applied.publish = true;
            }
            applied.need = Need::Nothing;
        }
        applied
    }

    fn observe(
        &mut self,
        rev: i64,
        seen: KeySeen<'_>,
        via: Via,
        observed_at_ns: u64,
        always_publish: bool,
    ) -> Applied {
        let was_reachable = !matches!(self.state.reason, Reason::EtcdUnreachable | Reason::Startup);
        self.known_rev = rev;
        self.state.revision = rev;
        let before = (self.state.primary, self.state.safe_until_ns, self.lease);
        let before_term = self.state.term;
        let reason = match seen {
            KeySeen::Present {
                value,
                lease,
                created,
            } if value == self.value.as_slice() => {
                self.state.term = created;
                if self.lease != Some(lease) {
                    // A new lease (or newly ours): the old deadline proves nothing about it.
                    self.state.safe_until_ns = 0;
                    self.lease = Some(lease);
                }
                self.state.primary = true;
                Reason::Ours { via }
            }
            KeySeen::Present { created, .. } => {
                self.fence();
                self.state.term = created;
                Reason::OtherValue { via }
            }
            KeySeen::Absent => {
                self.fence();
                self.state.term = 0;
                Reason::Deleted { via }
            }
        };
        self.state.lease_id = self.lease.unwrap_or(0);
        let changed = before != (self.state.primary, self.state.safe_until_ns, self.lease)
            || before_term != self.state.term;
        let publish = changed || always_publish || !was_reachable;
        if publish {
            self.state.reason = reason;
            self.state.observed_at_ns = observed_at_ns;
        }
        Applied {
            publish,
            stale: false,
            need: self.need(),
        }
    }

    fn fence(&mut self) {
        self.state.primary = false;
        self.state.safe_until_ns = 0;
        self.lease = None;
    }

    /// A `LeaseTimeToLive` answer for `lease`, requested at `t_sent_ns`. Ignored unless the key
    /// is still ours with that lease. Several answers for the same lease keep the latest deadline
    /// (each is a valid lower bound of the same expiry).
    pub(super) fn lease_ttl(
        &mut self,
        lease: i64,
        ttl_s: i64,
        granted_ttl_s: i64,
        t_sent_ns: u64,
        observed_at_ns: u64,
    ) -> Applied {
        let mut applied = Applied {
            publish: false,
            stale: false,
            need: Need::Nothing,
        };
        if !self.state.primary || self.lease != Some(lease) {
            applied.stale = true;
            return applied;
        }
        if ttl_s <= 0 {
            // Expired (or already revoked): the DELETE is on its way; stop now.
            applied.publish =
                self.state.safe_until_ns != 0 || self.state.reason != Reason::LeaseExpired;
            self.state.safe_until_ns = 0;
            self.state.reason = Reason::LeaseExpired;
            self.state.observed_at_ns = observed_at_ns;
            return applied;
        }
        let d = self.policy.lease_deadline(t_sent_ns, ttl_s, granted_ttl_s);
        if d > self.state.safe_until_ns {
            self.state.safe_until_ns = d;
            self.state.reason = Reason::Confirmed;
            self.state.observed_at_ns = observed_at_ns;
            applied.publish = true;
        }
        applied
    }

    /// etcd could not be reached. Keeps `primary` and the deadline; returns whether to publish
    /// (only on the first failure of an outage).
    pub(super) fn unreachable(&mut self, now_ns: u64) -> bool {
        if self.state.reason == Reason::EtcdUnreachable {
            return false;
        }
        self.state.reason = Reason::EtcdUnreachable;
        self.state.observed_at_ns = now_ns;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn policy() -> DeadlinePolicy {
        DeadlinePolicy {
            margin: Duration::from_millis(500),
            fence_timeout: None,
            no_lease_validity: Duration::from_secs(3),
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(b"pg1".to_vec(), policy(), 1)
    }

    fn ours(lease: i64) -> KeySeen<'static> {
        KeySeen::Present {
            value: b"pg1",
            lease,
            created: 5,
        }
    }

    #[test]
    fn lease_deadline_math() {
        let p = policy();
        assert_eq!(p.lease_deadline(100 * S, 30, 30), 130 * S - S / 2);
        // Remaining above granted: no information (it used to be capped at granted).
        assert_eq!(p.lease_deadline(100 * S, 9_223_372_036, 30), 0);
        assert_eq!(p.lease_deadline(100 * S, 31, 30), 0);
        assert_eq!(p.lease_deadline(100 * S, 30, 30), 130 * S - S / 2);
        assert_eq!(p.lease_deadline(100 * S, 0, 30), 0);
        assert_eq!(p.lease_deadline(100 * S, -1, 30), 0);
        let fenced = DeadlinePolicy {
            fence_timeout: Some(Duration::from_secs(5)),
            ..p
        };
        assert_eq!(fenced.lease_deadline(100 * S, 30, 30), 105 * S);
        let big_margin = DeadlinePolicy {
            margin: Duration::from_secs(10),
            ..p
        };
        assert_eq!(big_margin.lease_deadline(100 * S, 5, 5), 0);
        assert_eq!(p.no_lease_deadline(100 * S), 103 * S);
    }

    #[test]
    fn the_term_is_the_keys_create_revision_ours_or_the_other_holders() {
        let mut t = tracker();
        t.read(10, ours(7), Via::Read, S, S);
        assert_eq!((t.state().primary, t.state().term), (true, 5));
        // Another holder's incarnation.
        let a = t.event(
            12,
            KeySeen::Present {
                value: b"pg2",
                lease: 9,
                created: 12,
            },
            2 * S,
        );
        assert!(a.publish);
        assert_eq!((t.state().primary, t.state().term), (false, 12));
        // The same holder rewriting its key (a new lease) is the same term, and still published.
        let a = t.event(
            13,
            KeySeen::Present {
                value: b"pg2",
                lease: 10,
                created: 12,
            },
            3 * S,
        );
        assert!(a.publish);
        assert_eq!(t.state().term, 12);
        t.event(14, KeySeen::Absent, 4 * S);
        assert_eq!(t.state().term, 0, "no key, no term");
    }

    #[test]
    fn startup_is_fenced() {
        let t = tracker();
        assert!(!t.state().primary);
        assert_eq!(t.state().safe_until_ns, 0);
        assert_eq!(t.state().reason, Reason::Startup);
        assert!(!t.state().is_safe_at(2));
    }

    #[test]
    fn read_then_ttl_gives_deadline() {
        let mut t = tracker();
        let a = t.read(10, ours(7), Via::Read, 5 * S, 5 * S + 1);
        assert!(a.publish);
        assert_eq!(a.need, Need::LeaseTtl(7));
        assert!(t.state().primary);
        assert_eq!(t.state().safe_until_ns, 0);
        let a = t.lease_ttl(7, 29, 30, 6 * S, 6 * S + 1);
        assert!(a.publish);
        assert_eq!(t.state().safe_until_ns, 35 * S - S / 2);
        assert_eq!(t.state().reason, Reason::Confirmed);
        assert!(t.state().is_safe_at(34 * S));
        assert!(!t.state().is_safe_at(35 * S));
        // A later answer rounding down to a smaller deadline keeps the larger one.
        let a = t.lease_ttl(7, 28, 30, 6 * S + 1000, 6 * S + 2000);
        assert!(!a.publish);
        assert_eq!(t.state().safe_until_ns, 35 * S - S / 2);
        // Wrong lease: ignored.
        assert!(t.lease_ttl(8, 30, 30, 7 * S, 7 * S).stale);
    }

    #[test]
    fn other_value_and_delete_fence_immediately() {
        let mut t = tracker();
        t.read(10, ours(7), Via::Read, S, S);
        t.lease_ttl(7, 30, 30, S, S);
        let a = t.event(
            11,
            KeySeen::Present {
                value: b"pg2",
                lease: 9,
                created: 11,
            },
            2 * S,
        );
        assert!(a.publish);
        assert!(!t.state().primary);
        assert_eq!(t.state().safe_until_ns, 0);
        assert_eq!(t.state().lease_id, 0);
        assert_eq!(t.state().reason, Reason::OtherValue { via: Via::Watch });
        t.event(12, ours(7), 3 * S);
        assert!(t.state().primary);
        assert_eq!(
            t.state().safe_until_ns,
            0,
            "re-acquired: needs a new confirmation"
        );
        t.event(13, KeySeen::Absent, 4 * S);
        assert_eq!(t.state().reason, Reason::Deleted { via: Via::Watch });
        assert!(!t.state().primary);
        // Prefix or longer value is not ours.
        t.event(
            14,
            KeySeen::Present {
                value: b"pg1 ",
                lease: 7,
                created: 11,
            },
            5 * S,
        );
        assert!(!t.state().primary);
        t.event(
            15,
            KeySeen::Present {
                value: &[0xff, 0xfe],
                lease: 7,
                created: 11,
            },
            5 * S,
        );
        assert!(!t.state().primary);
    }

    #[test]
    fn same_lease_keeps_deadline_new_lease_resets_it() {
        let mut t = tracker();
        t.read(10, ours(7), Via::Read, S, S);
        t.lease_ttl(7, 30, 30, S, S);
        let d = t.state().safe_until_ns;
        assert!(
            t.event(11, ours(7), 2 * S).publish,
            "every event is published"
        );
        assert_eq!(t.state().safe_until_ns, d);
        assert_eq!(t.state().reason, Reason::Ours { via: Via::Watch });
        let a = t.event(12, ours(8), 3 * S);
        assert!(a.publish);
        assert_eq!(a.need, Need::LeaseTtl(8));
        assert_eq!(t.state().safe_until_ns, 0);
        assert_eq!(t.state().lease_id, 8);
    }

    #[test]
    fn stale_reads_and_events_are_ignored() {
        let mut t = tracker();
        t.read(10, ours(7), Via::Read, S, S);
        t.event(12, KeySeen::Absent, 2 * S);
        // A confirmation read answered at 11 arrives after the event at 12: stale.
        let a = t.read(11, ours(7), Via::Confirmation, S, 3 * S);
        assert!(a.stale);
        assert!(!t.state().primary);
        // A read at 14 that is newer than anything the watch delivered wins.
        let a = t.read(14, ours(7), Via::Confirmation, 4 * S, 4 * S);
        assert!(a.publish && t.state().primary);
        // Then the watch delivers the put at 13 that the read already reflected: ignored.
        assert!(t.event(13, ours(7), 5 * S).stale);
        // And the delete at 14 too (same revision as the read).
        assert!(t.event(14, KeySeen::Absent, 5 * S).stale);
        assert!(t.state().primary);
        // A TTL answer for a lease after the key went away is ignored.
        t.event(15, KeySeen::Absent, 6 * S);
        assert!(t.lease_ttl(7, 30, 30, 6 * S, 6 * S).stale);
        assert_eq!(t.state().safe_until_ns, 0);
    }

    #[test]
    fn new_session_read_is_authoritative() {
        let mut t = tracker();
        t.read(100, ours(7), Via::Read, S, S);
        t.reset_revision();
        // etcd restored from an older snapshot: revision went backwards.
        let a = t.read(5, KeySeen::Absent, Via::Read, 2 * S, 2 * S);
        assert!(!a.stale && a.publish);
        assert!(!t.state().primary);
        assert_eq!(t.state().revision, 5);
    }

    #[test]
    fn unreachable_keeps_state_and_deadline() {
        let mut t = tracker();
        t.read(10, ours(7), Via::Read, S, S);
        t.lease_ttl(7, 30, 30, S, S);
        let before = *t.state();
        assert!(t.unreachable(2 * S));
        assert!(!t.unreachable(3 * S), "published once per outage");
        assert_eq!(t.state().primary, before.primary);
        assert_eq!(t.state().safe_until_ns, before.safe_until_ns);
        assert_eq!(t.state().reason, Reason::EtcdUnreachable);
        // Back: the first read publishes even without a change.
        let a = t.read(10, ours(7), Via::Read, 4 * S, 4 * S);
        assert!(a.publish);
        assert_eq!(t.state().safe_until_ns, before.safe_until_ns);
    }

    #[test]
    fn expired_lease_fences() {
        let mut t = tracker();
        t.read(10, ours(7), Via::Read, S, S);
        t.lease_ttl(7, 30, 30, S, S);
        let a = t.lease_ttl(7, -1, 0, 2 * S, 2 * S);
        assert!(a.publish);
        assert!(t.state().primary);
        assert_eq!(t.state().safe_until_ns, 0);
        assert_eq!(t.state().reason, Reason::LeaseExpired);
    }

    #[test]
    fn key_without_lease_is_confirmed_by_reads() {
        let mut t = tracker();
        let a = t.read(10, ours(0), Via::Read, 10 * S, 10 * S);
        assert!(a.publish);
        assert_eq!(a.need, Need::Nothing);
        assert_eq!(t.state().safe_until_ns, 13 * S);
        let a = t.read(10, ours(0), Via::Confirmation, 11 * S, 11 * S);
        assert!(a.publish);
        assert_eq!(t.state().safe_until_ns, 14 * S);
        assert_eq!(t.state().reason, Reason::Confirmed);
        // A watch PUT without lease after a delete needs a read.
        t.event(11, KeySeen::Absent, 12 * S);
        let a = t.event(12, ours(0), 12 * S);
        assert_eq!(a.need, Need::Read);
    }
}
