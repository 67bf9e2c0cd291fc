//! The leader-state machine, exposed to the fuzz targets in `fuzz/` (compiled only under
//! `--cfg fuzzing`, which `cargo fuzz` sets; not an API).
//!
//! A thin wrapper: every call goes straight to the [`super::state::Tracker`] the follower feeds,
//! so the fuzzer exercises exactly the code that decides whether this node is primary.

use std::time::Duration;

use super::state::{self, DeadlinePolicy, KeyState, Via};

/// The key as one etcd response showed it.
#[derive(Debug, Clone, Copy)]
pub enum KeySeen<'a> {
    /// The key does not exist.
    Absent,
    /// The key exists with this value and lease (0: no lease).
    Present {
        /// The value, as etcd returned it.
        value: &'a [u8],
        /// The key's lease id.
        lease: i64,
        /// The key's `create_revision`.
        created: i64,
    },
}

impl<'a> From<KeySeen<'a>> for state::KeySeen<'a> {
    fn from(seen: KeySeen<'a>) -> Self {
        match seen {
            KeySeen::Absent => Self::Absent,
            KeySeen::Present {
                value,
                lease,
                created,
            } => Self::Present {
                value,
                lease,
                created,
            },
        }
    }
}

/// What the follower would do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing.
    Nothing,
    /// Query the TTL of this lease.
    LeaseTtl(i64),
    /// A linearizable read (the key has no lease).
    Read,
}

/// The outcome of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The published state changed and would be handed to the data plane.
    pub publish: bool,
    /// The response was older than what is known and was ignored.
    pub stale: bool,
    /// What the follower would ask for next.
    pub need: Need,
}

impl From<state::Applied> for Applied {
    fn from(a: state::Applied) -> Self {
        Self {
            publish: a.publish,
            stale: a.stale,
            need: a.need.into(),
        }
    }
}

impl From<state::Need> for Need {
    fn from(n: state::Need) -> Self {
        match n {
            state::Need::Nothing => Self::Nothing,
            state::Need::LeaseTtl(lease) => Self::LeaseTtl(lease),
            state::Need::Read => Self::Read,
        }
    }
}

/// The deadline rules (as [`super::LeaderSettings`] derives them).
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Subtracted from every lease-derived deadline.
    pub margin: Duration,
    /// Upper bound of a deadline after its confirmation.
    pub fence_timeout: Option<Duration>,
    /// How long a read confirms a key without lease.
    pub no_lease_validity: Duration,
}

/// The follower's state machine for one key.
#[derive(Debug)]
pub struct Tracker(state::Tracker);

impl Tracker {
    /// A tracker for a key whose value `value` means "this node".
    #[must_use]
    pub fn new(value: Vec<u8>, policy: Policy, now_ns: u64) -> Self {
        let policy = DeadlinePolicy {
            margin: policy.margin,
            fence_timeout: policy.fence_timeout,
            no_lease_validity: policy.no_lease_validity,
        };
        Self(state::Tracker::new(value, policy, now_ns))
    }

    /// The published state.
    #[must_use]
    pub fn state(&self) -> KeyState {
        *self.0.state()
    }

    /// What the follower would ask for next.
    #[must_use]
    pub fn need(&self) -> Need {
        self.0.need().into()
    }

    /// A new session: its first read is authoritative.
    pub fn reset_revision(&mut self) {
        self.0.reset_revision();
    }

    /// A watch event at `rev`.
    pub fn event(&mut self, rev: i64, seen: KeySeen<'_>, observed_at_ns: u64) -> Applied {
        self.0.event(rev, seen.into(), observed_at_ns).into()
    }

    /// A linearizable read answered at `rev`, sent at `t_sent_ns`.
    pub fn read(
        &mut self,
        rev: i64,
        seen: KeySeen<'_>,
        via: Via,
        t_sent_ns: u64,
        observed_at_ns: u64,
    ) -> Applied {
        self.0
            .read(rev, seen.into(), via, t_sent_ns, observed_at_ns)
            .into()
    }

    /// A `LeaseTimeToLive` answer.
    pub fn lease_ttl(
        &mut self,
        lease: i64,
        ttl_s: i64,
        granted_ttl_s: i64,
        t_sent_ns: u64,
        observed_at_ns: u64,
    ) -> Applied {
        self.0
            .lease_ttl(lease, ttl_s, granted_ttl_s, t_sent_ns, observed_at_ns)
            .into()
    }

    /// etcd could not be reached; whether that is published.
    pub fn unreachable(&mut self, now_ns: u64) -> bool {
        self.0.unreachable(now_ns)
    }
}
