//! The fence handshake: a node starts answering only when no other node can still be answering.
//!
//! The lease deadline D (see [`super`]) stops a node that *cannot see* the key change, but only at
//! the old holder's lease expiry, while the new holder answers as soon as it sees the key: a dead,
//! stopped or cut-off old agent can leave two nodes answering for up to a lease TTL. The handshake
//! closes that window through etcd itself:
//!
//! * Every agent keeps one **record** per leader key, `<prefix><trigger-key>/<trigger-value>`,
//!   under a lease of its own ([`HandshakeSettings::ttl`], kept alive every third of it). The
//!   record says `answering` or `fenced`, and for which **term** of the key (its
//!   `create_revision`, [`Leadership::term`]).
//! * **Down**: a node that stops answering writes its map first (synchronously, in the leader
//!   source's hook, as before), then records `fenced` for the term it saw the key in.
//! * **Up**: a node whose key became its own records `answering` for its term *before* it lets
//!   the state through, and lets it through only once every other record under the key says
//!   `fenced` for a term at or after its own, or has disappeared with its lease.
//! * **Bound**: a node's deadline never exceeds the proven expiry of its own record's lease
//!   (request send time + granted TTL − the safety margin), on top of the leader lease bound. So
//!   a node that cannot renew its record (dead, stopped, cut off) is silent before the record
//!   disappears, and the new holder waits at most the record's TTL for it.
//!
//! A node's own `answering` record is what makes others wait for it; a node that answers without
//! one is impossible (its state is held back until the record is written). Records of agents
//! without the handshake (older versions) do not exist: such an agent counts as absent, which is
//! today's behaviour for it and never blocks a failover (the mixed case).
//!
//! The handshake needs write access to the prefix. Without it the node never answers, and says so
//! loudly: `fence-handshake: false` is the explicit way back to the old rule.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions};
use futures::StreamExt as _;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::error::{LeaderError, Operation};
use super::follower::{Backoff, connect, timeout};
use super::settings::LeaderSettings;
use crate::clock::monotonic_ns;
use crate::config::HandshakeSettings;
use crate::leadership::{Cause, Hook, Leadership};

/// Whether a record's agent may be answering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordState {
    /// It may answer, for `term`.
    Answering,
    /// It has fenced, having seen the key in `term`.
    Fenced,
}

/// One agent's record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    pub state: RecordState,
    pub term: i64,
}

impl Record {
    /// Parse a record value; `None` for anything else (treated as "may be answering").
    #[must_use]
    pub fn parse(value: &[u8]) -> Option<Self> {
        serde_json::from_slice(value).ok()
    }

    fn encode(self) -> String {
        serde_json::to_string(&self).unwrap_or_default()
    }
}

/// The pure part: what to publish, what to record.
#[derive(Debug)]
pub struct Decision {
    /// The latest state from the leader source.
    latest: Leadership,
    /// Every other agent's record under this key (`None`: unreadable, may be answering).
    others: BTreeMap<String, Option<Record>>,
    /// The first read of the other records succeeded.
    others_known: bool,
    /// What this agent's record says now (`None`: nothing written under the current lease).
    written: Option<Record>,
    /// `CLOCK_MONOTONIC` ns before which this agent's record lease provably exists (0: none).
    own_until_ns: u64,
    /// The agent is stopping: nothing answers any more.
    stopping: bool,
    /// The term for which every other agent was seen fenced (or gone). Once cleared, a term stays
    /// cleared: another agent can only answer again for a later term, which needs this node's own
    /// `fenced` record first, so a record that regresses (an agent restarting) must not black out
    /// the holder.
    cleared: Option<i64>,
}

impl Decision {
    /// Nothing known: fenced.
    #[must_use]
    pub fn new(now_ns: u64) -> Self {
        Self {
            latest: Leadership::startup(now_ns),
            others: BTreeMap::new(),
            others_known: false,
            written: None,
            own_until_ns: 0,
            stopping: false,
            cleared: None,
        }
    }

    /// Take a new state from the leader source.
    pub fn set_latest(&mut self, state: Leadership) {
        if !state.primary || state.term != self.latest.term {
            self.cleared = None;
        }
        self.latest = state;
    }

    /// What this agent's record should say; `None` before the leader source has read the key (a
    /// restarting agent must not claim a term it has not seen).
    #[must_use]
    pub fn desired(&self) -> Option<Record> {
        if self.latest.cause == Cause::Startup && !self.stopping {
            return None;
        }
        Some(if self.latest.primary && !self.stopping {
            Record {
                state: RecordState::Answering,
                term: self.latest.term,
            }
        } else {
            Record {
                state: RecordState::Fenced,
                term: self.latest.term,
            }
        })
    }

    /// Why this node may not answer for its term yet (`None`: it may).
    #[must_use]
    pub fn blocked_by(&self, now_ns: u64) -> Option<String> {
        let term = self.latest.term;
        if self.stopping {
            return Some("stopping".to_owned());
        }
        if self.written
            != Some(Record {
                state: RecordState::Answering,
                term,
            })
        {
            return Some("this agent's record does not say answering yet".to_owned());
        }
        if now_ns >= self.own_until_ns {
            return Some("this agent's record lease is not confirmed".to_owned());
        }
        if self.cleared == Some(term) {
            return None;
        }
        if !self.others_known {
            return Some("the other agents' records are not read yet".to_owned());
        }
        self.others.iter().find_map(|(name, record)| match record {
            Some(Record {
                state: RecordState::Fenced,
                term: seen,
            }) if *seen >= term => None,
            Some(r) => Some(format!(
                "{name} has not fenced for term {term} (its record: {:?} in term {})",
                r.state, r.term
            )),
            None => Some(format!("{name}'s record is unreadable")),
        })
    }

    /// The state to hand on: the latest one, held back (no deadline) while blocked, and never
    /// past the record lease's proven expiry.
    #[must_use]
    pub fn effective(&self, now_ns: u64) -> Leadership {
        let s = self.latest;
        if !s.primary && !self.stopping {
            return s;
        }
        if !s.primary || self.blocked_by(now_ns).is_some() {
            return Leadership {
                primary: s.primary && !self.stopping,
                safe_until_ns: 0,
                ..s
            };
        }
        Leadership {
            safe_until_ns: s.safe_until_ns.min(self.own_until_ns),
            ..s
        }
    }
}

/// A handshake in front of the gates of one leader key: install [`Handshake::hook`] as the leader
/// source's hook, drive [`Handshake::run`] on the same tracker.
pub struct Handshake {
    shared: Arc<Shared>,
    settings: LeaderSettings,
    handshake: HandshakeSettings,
}

struct Shared {
    core: Mutex<Core>,
    /// Wakes the task when the desired record may have changed.
    wake: Notify,
    /// The record's lease (0: none), for [`Release`].
    lease: Mutex<i64>,
}

struct Core {
    decision: Decision,
    downstream: Hook,
    /// The last state handed on (to skip identical renewals).
    last: Option<Leadership>,
    /// The last reason logged for holding back (to log changes only).
    blocked: Option<String>,
    key: String,
}

impl Core {
    /// Hand on the effective state (under the lock, so fences and renewals keep their order).
    /// Once stopping, only fences pass: the agent fences every VIP itself at shutdown, and a
    /// demotion made up here would run the VIP's demote hook twice.
    fn publish(&mut self, force: bool) {
        if self.decision.stopping {
            if !self.decision.latest.primary {
                let latest = self.decision.latest;
                (self.downstream)(&latest);
            }
            return;
        }
        let now = monotonic_ns();
        let effective = self.decision.effective(now);
        let blocked = if self.decision.latest.primary {
            self.decision.blocked_by(now)
        } else {
            None
        };
        if self.decision.latest.primary && blocked.is_none() {
            self.decision.cleared = Some(self.decision.latest.term);
        }
        if blocked != self.blocked {
            match &blocked {
                Some(why) => tracing::info!(key = %self.key, reason = %why,
                    "fence handshake: holding this node back until no other node can be answering"),
                None if self.decision.latest.primary => tracing::info!(key = %self.key,
                    term = self.decision.latest.term,
                    "fence handshake: every other agent has fenced; this node may answer"),
                None => {}
            }
            self.blocked = blocked;
        }
        if force || self.last != Some(effective) {
            self.last = Some(effective);
            (self.downstream)(&effective);
        }
    }
}

fn lock(m: &Mutex<Core>) -> MutexGuard<'_, Core> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The follower side of a handshake.
pub struct HandshakeHook {
    shared: Arc<Shared>,
}

impl HandshakeHook {
    /// A state from the leader source: handed on at once (a fence is never delayed), and the
    /// record task woken.
    pub fn apply(&self, state: &Leadership) {
        {
            let mut core = lock(&self.shared.core);
            core.decision.set_latest(*state);
            core.publish(true);
        }
        self.shared.wake.notify_one();
    }
}

/// Removes this agent's record at shutdown, after every VIP was fenced, so that the others need
/// not wait for its lease to run out.
pub struct Release {
    shared: Arc<Shared>,
    settings: LeaderSettings,
}

impl Release {
    /// Revoke the record's lease (best effort, within a second; it expires by itself otherwise).
    /// Call only once the data plane is fenced.
    pub async fn release(self) {
        lock(&self.shared.core).decision.stopping = true;
        let lease = *self
            .shared
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if lease == 0 {
            return;
        }
        let endpoints = self.settings.normalized_endpoints();
        let settings = &self.settings;
        let revoke = async {
            for endpoint in &endpoints {
                if let Ok(client) = connect(settings, endpoint).await
                    && client.lease_client().revoke(lease).await.is_ok()
                {
                    return true;
                }
            }
            false
        };
        let key = &self.settings.trigger_key;
        match tokio::time::timeout(Duration::from_secs(1), revoke).await {
            Ok(true) => tracing::info!(%key, "fence handshake: this agent's record removed"),
            _ => tracing::warn!(%key,
                "fence handshake: could not remove this agent's record; it expires with its lease"),
        }
    }
}

impl Handshake {
    /// A handshake for the key of `settings`, handing effective states to `downstream`.
    #[must_use]
    pub fn new(settings: LeaderSettings, handshake: HandshakeSettings, downstream: Hook) -> Self {
        let key = settings.trigger_key.clone();
        Self {
            shared: Arc::new(Shared {
                core: Mutex::new(Core {
                    decision: Decision::new(monotonic_ns()),
                    downstream,
                    last: None,
                    blocked: None,
                    key,
                }),
                wake: Notify::new(),
                lease: Mutex::new(0),
            }),
            settings,
            handshake,
        }
    }

    /// The hook to install in the leader source.
    #[must_use]
    pub fn hook(&self) -> HandshakeHook {
        HandshakeHook {
            shared: Arc::clone(&self.shared),
        }
    }

    /// This agent's record key.
    #[must_use]
    pub fn record_key(&self) -> String {
        format!(
            "{}{}",
            self.handshake.directory(&self.settings.trigger_key),
            self.settings.trigger_value
        )
    }

    /// What removes the record once the agent has fenced at shutdown ([`Release::release`]).
    #[must_use]
    pub fn releaser(&self) -> Release {
        Release {
            shared: Arc::clone(&self.shared),
            settings: self.settings.clone(),
        }
    }

    /// Keep the record and its lease, follow the others, until `cancel`. Then nothing but fences
    /// passes any more; the record stays until [`Release::release`] (after the agent fenced every
    /// VIP) or its lease runs out.
    pub async fn run(self, cancel: CancellationToken) {
        let endpoints = self.settings.normalized_endpoints();
        let mut backoff = Backoff::new(self.settings.backoff_min, self.settings.backoff_max);
        let mut index = 0_usize;
        let mut lease = 0_i64;
        let mut failing = false;
        loop {
            let endpoint = endpoints
                .get(index % endpoints.len().max(1))
                .cloned()
                .unwrap_or_default();
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                r = self.session(&endpoint, &mut lease, &mut backoff) => r,
            };
            let Err(error) = result;
            // What is known of the others stays: a record that said "fenced for term T" stays
            // true until that agent answers for a later term, which this node's follower would
            // see, and this node's own answering stays bounded by its record lease.
            if error.is_auth_failure() {
                tracing::error!(key = %self.record_key(), %endpoint, %error,
                    "fence handshake: etcd refuses this agent's record; the node stays fenced \
                     (grant write access to the record prefix, or set fence-handshake: false)");
            } else if !failing {
                tracing::warn!(key = %self.record_key(), %endpoint, %error,
                    "fence handshake: cannot keep the record; retrying (the node answers at most \
                     until its record lease runs out)");
            }
            failing = true;
            index = index.wrapping_add(1);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
        lock(&self.shared.core).decision.stopping = true;
        *self
            .shared
            .lease
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = lease;
    }

    async fn session(
        &self,
        endpoint: &str,
        lease: &mut i64,
        backoff: &mut Backoff,
    ) -> Result<Infallible, LeaderError> {
        let client = connect(&self.settings, endpoint).await?;
        let mut kv = client.kv_client();
        let mut leases = client.lease_client();
        let mut watches = client.watch_client();
        let limit = self.settings.request_timeout;
        let ttl_s = i64::try_from(self.handshake.ttl.as_secs()).unwrap_or(i64::MAX);
        let margin = ns(self.settings.safety_margin);
        let own = self.record_key();
        let directory = self.handshake.directory(&self.settings.trigger_key);
        let record_err = |operation: &'static str| {
            let key = own.clone();
            move |cause| LeaderError::Record {
                operation,
                endpoint: endpoint.to_owned(),
                key,
                cause,
            }
        };
        let err_get = |cause| LeaderError::Get {
            endpoint: endpoint.to_owned(),
            key: directory.clone(),
            cause,
        };

        // The lease: the one of the last session if etcd still has it, else a new one (whose
        // record must then be written again).
        let (mut keeper, mut responses) = {
            let t_sent = monotonic_ns();
            let alive = if *lease == 0 {
                None
            } else {
                tokio::time::timeout(limit, leases.time_to_live(*lease, None))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .filter(|r| r.ttl() > 0)
                    .map(|r| r.ttl())
            };
            let ttl = match alive {
                Some(ttl) => ttl,
                None => {
                    let granted = tokio::time::timeout(limit, leases.grant(ttl_s, None))
                        .await
                        .map_err(|_| timeout(Operation::Record, endpoint, limit))?
                        .map_err(record_err("grant a lease for"))?;
                    *lease = granted.id();
                    let mut core = lock(&self.shared.core);
                    core.decision.written = None;
                    granted.ttl()
                }
            };
            {
                let mut core = lock(&self.shared.core);
                core.decision.own_until_ns = deadline(t_sent, ttl, margin);
                core.publish(false);
            }
            tokio::time::timeout(limit, leases.keep_alive(*lease))
                .await
                .map_err(|_| timeout(Operation::Record, endpoint, limit))?
                .map_err(record_err("keep alive the lease of"))?
        };

        // The other records, then a watch from the revision after the read.
        let read = tokio::time::timeout(
            limit,
            kv.get(directory.clone(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| timeout(Operation::Get, endpoint, limit))?
        .map_err(err_get)?;
        let rev = read.header().map_or(0, |h| h.revision());
        {
            let mut core = lock(&self.shared.core);
            core.decision.others = read
                .kvs()
                .iter()
                .filter(|kv| kv.key() != own.as_bytes())
                .map(|kv| (name(kv.key(), &directory), Record::parse(kv.value())))
                .collect();
            core.decision.others_known = true;
            core.publish(false);
        }
        let (_watch, mut events) = tokio::time::timeout(
            limit,
            watches.watch(
                directory.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev.saturating_add(1)),
                ),
            ),
        )
        .await
        .map_err(|_| timeout(Operation::Watch, endpoint, limit))?
        .map_err(|cause| LeaderError::Watch {
            endpoint: endpoint.to_owned(),
            key: directory.clone(),
            cause,
        })?
        .split();
        backoff.reset();

        let period = self.handshake.ttl / 3;
        let mut ticker = tokio::time::interval_at(Instant::now(), period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sent: VecDeque<u64> = VecDeque::new();
        loop {
            // Write this agent's record whenever it should say something else.
            let (desired, written) = {
                let core = lock(&self.shared.core);
                (core.decision.desired(), core.decision.written)
            };
            if let Some(desired) = desired
                && written != Some(desired)
            {
                tokio::time::timeout(
                    limit,
                    kv.put(
                        own.clone(),
                        desired.encode(),
                        Some(PutOptions::new().with_lease(*lease)),
                    ),
                )
                .await
                .map_err(|_| timeout(Operation::Record, endpoint, limit))?
                .map_err(record_err("write"))?;
                let mut core = lock(&self.shared.core);
                core.decision.written = Some(desired);
                core.publish(false);
                continue;
            }
            tokio::select! {
                () = self.shared.wake.notified() => {}
                _ = ticker.tick() => {
                    // A stream that stopped answering keepalives ends the session.
                    if sent.len() > 2 {
                        return Err(timeout(Operation::Record, endpoint, period * 2));
                    }
                    sent.push_back(monotonic_ns());
                    keeper.keep_alive().await.map_err(record_err("keep alive the lease of"))?;
                }
                answer = responses.message() => {
                    let answer = answer.map_err(record_err("keep alive the lease of"))?.ok_or_else(|| LeaderError::WatchEnded {
                        endpoint: endpoint.to_owned(),
                        key: own.clone(),
                    })?;
                    let t_sent = sent.pop_front().unwrap_or(0);
                    let mut core = lock(&self.shared.core);
                    if answer.ttl() <= 0 {
                        // The lease is gone (expired while this agent could not renew it):
                        // whatever the record said went with it.
                        core.decision.own_until_ns = 0;
                        core.decision.written = None;
                        core.publish(false);
                        drop(core);
                        *lease = 0;
                        return Err(LeaderError::WatchEnded {
                            endpoint: endpoint.to_owned(),
                            key: own.clone(),
                        });
                    }
                    let until = deadline(t_sent, answer.ttl(), margin);
                    if until > core.decision.own_until_ns {
                        core.decision.own_until_ns = until;
                        core.publish(false);
                    }
                }
                message = events.next() => {
                    let response = match message {
                        Some(Ok(r)) => r,
                        Some(Err(cause)) => return Err(LeaderError::Watch {
                            endpoint: endpoint.to_owned(),
                            key: directory.clone(),
                            cause,
                        }),
                        None => return Err(LeaderError::WatchEnded {
                            endpoint: endpoint.to_owned(),
                            key: directory.clone(),
                        }),
                    };
                    if response.canceled() {
                        return Err(LeaderError::WatchCanceled {
                            endpoint: endpoint.to_owned(),
                            key: directory.clone(),
                            reason: response.cancel_reason().to_owned(),
                        });
                    }
                    let mut core = lock(&self.shared.core);
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        if kv.key() == own.as_bytes() {
                            continue;
                        }
                        let who = name(kv.key(), &directory);
                        match event.event_type() {
                            EventType::Put => {
                                core.decision.others.insert(who, Record::parse(kv.value()));
                            }
                            EventType::Delete => {
                                core.decision.others.remove(&who);
                            }
                        }
                    }
                    core.publish(false);
                }
            }
        }
    }
}

/// The record's name below the directory (the other agent's trigger value).
fn name(key: &[u8], directory: &str) -> String {
    let key = String::from_utf8_lossy(key);
    key.strip_prefix(directory).unwrap_or(&key).to_owned()
}

/// Lease-derived deadline: `t_sent + ttl s − margin`, 0 when nothing is left.
fn deadline(t_sent_ns: u64, ttl_s: i64, margin_ns: u64) -> u64 {
    let Ok(ttl) = u64::try_from(ttl_s) else {
        return 0;
    };
    if t_sent_ns == 0 || ttl == 0 {
        return 0;
    }
    let d = t_sent_ns
        .saturating_add(ttl.saturating_mul(1_000_000_000))
        .saturating_sub(margin_ns);
    if d <= t_sent_ns { 0 } else { d }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn primary(term: i64, until: u64) -> Leadership {
        Leadership {
            primary: true,
            safe_until_ns: until,
            term,
            cause: Cause::Confirmed,
            observed_at_ns: S,
            detail: term,
        }
    }

    fn replica(term: i64) -> Leadership {
        Leadership {
            primary: false,
            safe_until_ns: 0,
            term,
            cause: Cause::Lost,
            observed_at_ns: S,
            detail: term,
        }
    }

    fn fenced(term: i64) -> Option<Record> {
        Some(Record {
            state: RecordState::Fenced,
            term,
        })
    }

    fn answering(term: i64) -> Option<Record> {
        Some(Record {
            state: RecordState::Answering,
            term,
        })
    }

    /// A decision for a node that became primary in `term` with its record written and its
    /// record lease confirmed until 20 s.
    fn ready(term: i64) -> Decision {
        let mut d = Decision::new(S);
        d.latest = primary(term, 30 * S);
        d.written = answering(term);
        d.own_until_ns = 20 * S;
        d.others_known = true;
        d
    }

    #[test]
    fn a_new_holder_answers_only_once_every_other_record_has_fenced_for_its_term() {
        let mut d = ready(50);
        d.others.insert("pg1".into(), answering(10));
        assert!(d.blocked_by(2 * S).is_some_and(|w| w.contains("pg1")));
        let e = d.effective(2 * S);
        assert!(e.primary && e.safe_until_ns == 0, "held back: {e:?}");
        // Fenced, but for an older term (it saw the delete, not yet the new key): still waits.
        d.others.insert("pg1".into(), fenced(40));
        assert!(d.blocked_by(2 * S).is_some());
        d.others.insert("pg1".into(), fenced(50));
        assert_eq!(d.blocked_by(2 * S), None);
        assert_eq!(
            d.effective(2 * S).safe_until_ns,
            20 * S,
            "never past the record lease"
        );
        // A later term is as good.
        d.others.insert("pg1".into(), fenced(51));
        assert_eq!(d.blocked_by(2 * S), None);
        // An unreadable record may be answering.
        d.others.insert("pg3".into(), None);
        assert!(
            d.blocked_by(2 * S)
                .is_some_and(|w| w.contains("unreadable"))
        );
        // Gone with its lease (or never there: an older agent): absent counts as fenced.
        d.others.remove("pg3");
        assert_eq!(d.blocked_by(2 * S), None);
    }

    #[test]
    fn nothing_answers_without_its_own_record_and_a_live_record_lease() {
        let mut d = ready(50);
        d.written = None;
        assert!(d.blocked_by(2 * S).is_some());
        d.written = fenced(50);
        assert!(d.blocked_by(2 * S).is_some());
        d.written = answering(49);
        assert!(d.blocked_by(2 * S).is_some(), "a record for another term");
        d.written = answering(50);
        assert_eq!(d.blocked_by(2 * S), None);
        assert!(d.blocked_by(20 * S).is_some(), "the record lease ran out");
        d.others_known = false;
        assert!(d.blocked_by(2 * S).is_some(), "the others are not read yet");
    }

    #[test]
    fn the_deadline_is_the_smaller_of_the_leader_lease_and_the_record_lease() {
        let mut d = ready(50);
        d.latest = primary(50, 5 * S);
        assert_eq!(d.effective(2 * S).safe_until_ns, 5 * S);
        d.latest = primary(50, 60 * S);
        assert_eq!(d.effective(2 * S).safe_until_ns, 20 * S);
    }

    #[test]
    fn a_fence_passes_at_once_and_the_record_follows_the_key() {
        let mut d = ready(50);
        d.latest = replica(60);
        assert_eq!(d.effective(2 * S), replica(60), "not held back in any way");
        assert_eq!(d.desired(), fenced(60));
        d.latest = primary(70, 30 * S);
        assert_eq!(d.desired(), answering(70));
        d.stopping = true;
        assert_eq!(d.desired(), fenced(70));
        d.stopping = false;
        d.latest = Leadership::startup(S);
        assert_eq!(d.desired(), None, "nothing claimed before the key is read");
        let e = d.effective(2 * S);
        assert!(!e.primary && e.safe_until_ns == 0, "stopping: {e:?}");
    }

    #[test]
    fn a_cleared_term_stays_cleared_when_another_record_regresses() {
        let mut d = ready(50);
        d.others.insert("pg1".into(), fenced(50));
        assert_eq!(d.blocked_by(2 * S), None);
        d.cleared = Some(50);
        // pg1's agent restarts and writes a record for an older term before it reads the key.
        d.others.insert("pg1".into(), fenced(0));
        assert_eq!(d.blocked_by(2 * S), None, "the holder keeps answering");
        // A new term needs the others again.
        d.set_latest(primary(60, 30 * S));
        d.written = answering(60);
        assert!(d.blocked_by(2 * S).is_some());
        // Losing the key forgets the clearance too.
        d.set_latest(primary(60, 30 * S));
        d.cleared = Some(60);
        d.set_latest(replica(61));
        assert_eq!(d.cleared, None);
    }

    #[test]
    fn records_round_trip_and_garbage_is_none() {
        let r = Record {
            state: RecordState::Fenced,
            term: 12,
        };
        assert_eq!(r.encode(), r#"{"state":"fenced","term":12}"#);
        assert_eq!(Record::parse(r.encode().as_bytes()), Some(r));
        for bad in [&b""[..], b"{}", b"answering", br#"{"state":"up","term":1}"#] {
            assert_eq!(Record::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            HandshakeSettings::default().directory("/service/pg/leader"),
            "/vip-agent/service/pg/leader/"
        );
        assert_eq!(
            name(
                b"/vip-agent/service/pg/leader/pg2",
                "/vip-agent/service/pg/leader/"
            ),
            "pg2"
        );
        assert_eq!(deadline(10 * S, 10, S / 2), 20 * S - S / 2);
        assert_eq!(deadline(10 * S, 0, S / 2), 0);
        assert_eq!(deadline(0, 10, S / 2), 0);
    }
}
