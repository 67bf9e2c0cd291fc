//! Following the Patroni leader key in etcd v3, with a provable deadline.
//!
//! Patroni keeps `/<namespace>/<scope>/leader` = member name, attached to a lease of TTL `ttl`.
//! A healthy leader only renews the lease (no key write, no watch event); a switchover deletes
//! the key and the new leader creates it; a crash lets the lease expire (a DELETE).
//!
//! # What is published
//!
//! A [`Leadership`](crate::leadership::Leadership) (the etcd view behind it: [`KeyState`]):
//! `primary` (the key exists and its value is byte-for-byte the trigger value)
//! and `safe_until_ns`, a `CLOCK_MONOTONIC` deadline before which no other node can hold the key
//! without a write this follower would have seen. It is handed over through a
//! `tokio::sync::watch` channel ([`LeaderFollower::subscribe`]) and, without any task switch,
//! through an optional synchronous hook ([`LeaderFollower::on_change`]) meant for the BPF map
//! write.
//!
//! # Algorithm
//!
//! One *session* = one client connected to one endpoint:
//! 1. linearizable GET of the key → publish (the first read of a session is authoritative);
//! 2. watch from the GET's revision + 1, so no change is ever missed; events are applied in
//!    revision order and each watch response with a new revision is published at once, changed
//!    or not (not-ours → `safe_until_ns = 0` immediately, ours → `safe_until_ns` kept only for the
//!    same lease);
//! 3. every [`LeaderSettings::confirm_interval`]: `t_sent = monotonic_ns()`, then a linearizable
//!    GET and, when the key is ours, `LeaseTimeToLive` of its lease; `safe_until = t_sent + ttl −
//!    margin` (capped by `fence_timeout`, `ttl` capped by the granted TTL). A watch PUT that makes
//!    the key ours triggers an immediate `LeaseTimeToLive` of the event's lease;
//! 4. a watch progress request rides along each confirmation; a watch that has answered one
//!    before and then answers nothing for `max(3 × interval, 2 × request_timeout)` is declared
//!    dead (etcd before 3.4 ignores progress requests: there the confirmation alone covers a
//!    silently dead watch, with up to one interval of delay).
//!
//! A compacted watch re-reads and re-watches on the same connection. Any other failure (watch
//! error, cancel, end of stream, a confirmation error or timeout) ends the session: the client
//! is dropped (a half-open connection cannot linger), and the next session starts on the next
//! endpoint after an exponential backoff with jitter ([`LeaderSettings::backoff_min`] ..
//! [`LeaderSettings::backoff_max`]). This never stops (unlike vip-manager #431).
//!
//! Responses from the watch and from concurrent confirmations are ordered by revision: an event at
//! or below the revision already known is ignored, a read below it is stale.
//!
//! # etcd unreachable
//!
//! The follower does **not** publish "not primary" because etcd is unreachable: it publishes the
//! last state, with its deadline, once with [`Reason::EtcdUnreachable`]. The deadline then runs
//! out by itself in the data plane, before the lease can expire and the key go to another node.
//! The one thing a deadline cannot cover is an explicit release of the key (switchover) while
//! this node cannot see etcd; [`LeaderSettings::fence_timeout`] bounds that case.
//!
//! A key without a lease (`etcdctl put` by hand) is confirmed by each linearizable read for
//! [`LeaderSettings::no_lease_validity`] (3 confirmation intervals).
//!
//! # One follower per key
//!
//! A follower follows one key with its own client (one HTTP/2 connection). VIPs that share a
//! key share a follower (clone its receiver); different keys get one follower each. An agent
//! follows one or a few keys, so the cost is a connection and two reads per second per key,
//! and in exchange each key's session fails, reconnects and backs off on its own (a key whose
//! ACL is wrong cannot disturb another), and tearing the client down on failure, the tool that
//! gets rid of half-open connections, stays local.
//!
//! # Endpoints
//!
//! One endpoint per session, next one after each failure, rather than etcd-client's balanced
//! channel: tonic's balancer keeps a refused endpoint "ready" with its connect error, so requests
//! randomly fail on it, and a watch and its confirmations should talk to the same member.
//!
//! # TLS and auth
//!
//! `https` endpoints use the CA file, or the system CA bundle when no CA file is given; a client
//! certificate works with either. TLS files are re-read at every reconnect. With a user, the
//! client authenticates when connecting (a wrong password is [`LeaderError::Authenticate`]) and
//! refreshes an expired token by itself. Note that etcd refuses authentication when auth is not
//! enabled on the server, so a user must not be configured for such a cluster.

mod error;
mod follower;
#[cfg(fuzzing)]
pub mod fuzzing;
mod handshake;
mod member;
mod settings;
mod state;

pub use error::{LeaderError, Operation};
pub use follower::{KeyHook, LeaderFollower, check_connection, spawn};
pub use handshake::{Decision, Handshake, HandshakeHook, Record, RecordState, Release};
pub use member::{MemberView, MemberWatcher};
pub use settings::{
    DEFAULT_BACKOFF_MAX, DEFAULT_BACKOFF_MIN, DEFAULT_CONFIRM_INTERVAL, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_KEEPALIVE_INTERVAL, DEFAULT_KEEPALIVE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SAFETY_MARGIN, LeaderSettings, NO_LEASE_CONFIRM_FACTOR, SYSTEM_CA_BUNDLES,
};
pub use state::{KIND, KeyState, Reason, Via};
