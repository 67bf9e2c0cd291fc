//! The promotion gate: a VIP answers only while its database takes writes.
//!
//! Patroni takes the leader key *before* PostgreSQL has finished promoting, and it can demote
//! PostgreSQL (cut off from etcd, a crash it restarts read-only) while the key and its lease are
//! still in place. An agent that follows only the key would route clients to a server in recovery
//! in both cases. The gate sits between the leader source and the data plane writer:
//!
//! * **Promotion.** A state that makes this node primary (key = trigger value, confirmed
//!   deadline) while the data plane is fenced starts a gate **episode**: the data plane stays
//!   fenced and the gate task polls every `promotion-gate-interval` (one probe in flight, each
//!   bounded by one second):
//!   * `patroni`: `GET <patroni>/primary` must return 200 with `role` `master`/`primary` and
//!     `state` `running` in its JSON body: Patroni answers 200 as soon as it holds the leader
//!     lock, while PostgreSQL may still be in recovery (`role: replica`), so the status code alone
//!     proves nothing;
//!   * `postgres`: `SELECT pg_is_in_recovery()` must return false.
//!
//!   When the probe says so, the gate writes the source's **current** state (its latest
//!   deadline) to the data plane and publishes it to the VIP tasks (address, gratuitous ARP).
//!   After `promotion-gate-timeout` it opens anyway, with a warning naming the last probe result,
//!   **unless** that result is the database's own word that it is not read-write
//!   ([`Verdict::NotYet`]: Patroni's status document, or `pg_is_in_recovery()` true): a broken
//!   gate (wrong password, https spoken as http) costs at most the timeout, a replica is never
//!   answered for.
//! * **Where Patroni is** ([`PatroniTarget`]): `patroni-url` when configured; otherwise the
//!   `api_url` Patroni wrote into this member's key next to the leader key
//!   ([`crate::leader::MemberWatcher`]); the loopback default only where there is no member key.
//!   A refused connection means "no Patroni here" (the gate opens at once, logged once) only where
//!   etcd shows no member registered for this node; for a key not laid out by Patroni, only on the
//!   first probe of an episode, as before. A registered member always runs its REST API, so a
//!   refusal there is a restart in progress and keeps gating.
//! * **Hold check** (while answering, after the gate opened on the database's word): the database
//!   is asked again every [`CHECK_INTERVAL`] ([`CHECK_INTERVAL_UNREACHABLE`] while the leader
//!   source is unreachable). The VIP is fenced at once, under the same lock as every other write,
//!   when:
//!   * Patroni's status document says anything but a running primary holding the lock (demoted,
//!     stopping, `state: unknown` after a crash it has not handled yet, 503), or
//!     `pg_is_in_recovery()` is true;
//!   * `postmaster_start_time` changed (PostgreSQL restarted: Patroni restarts a crashed leader
//!     read-only before it promotes it again);
//!   * Patroni wrote a role or state other than a running primary into the member key;
//!   * there is no usable answer (refused, timeout, garbage) **while the leader source is
//!     unreachable**: Patroni demotes exactly then, and nothing else would tell. While the source
//!     confirms the key, an unknown answer changes nothing: Patroni itself keeps the lease alive,
//!     and the lease deadline stays the outer bound.
//!
//!   A fence from the hold check starts a new gate episode at once when the key is still ours, so
//!   the VIP comes back only when the database takes writes again.
//! * Everything else passes straight through, under the same lock: renewals while answering, and
//!   every fence (key lost, deadline lost). A key lost while gating cancels the episode.
//!
//! The source hook and the gate task share one mutex around the data plane writer, so a fence can
//! never be overtaken by a late "answering" from the gate task, and the gate task ends before the
//! agent's shutdown fence.
//!
//! # Patroni `failsafe_mode`
//!
//! With `patroni-failsafe` at its default (follow Patroni), for a leader source that is Patroni's
//! DCS ([`SourceKind::failsafe_applies`]), while it reports itself unreachable
//! ([`Cause::Unreachable`]) and the VIP answers, each hold check that proves
//! Patroni keeps this member primary in failsafe mode (200, `role` `master`/`primary`, `state`
//! `running`, `failsafe_mode_is_active: true`, which Patroni reports only with `failsafe_mode` on
//! and only after **every** member accepted its `POST /failsafe`) moves the deadline to the
//! check's send time + [`FAILSAFE_HOLD`], which can lie past the lease deadline. Any other answer
//! withdraws the extension at once: back to the lease deadline while that still lies ahead, fenced
//! otherwise. Only an unbroken hold is extended: once the VIP went silent, only the source brings
//! it back. Anything the source says (lost, expired) fences as before; the extension survives only
//! a state that shows the leadership still ours, until its deadline is confirmed.
//! `patroni-failsafe: false`, or a source that is not Patroni's DCS (repmgr, Patroni's REST API),
//! never extends.

#[cfg(fuzzing)]
pub mod fuzzing;
pub(crate) mod patroni;
mod peer;
mod postgres;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    clock::monotonic_ns,
    config::{GateConfig, GateMode, PatroniUrl},
    leader::MemberView,
    leadership::{Cause, Leadership, SourceKind},
};

/// Hold check period while the VIP answers and the leader source confirms the key. A PostgreSQL
/// crash on the leader is seen before Patroni can bring it back read-only: Patroni notices the
/// crash only at its next HA cycle and then needs a whole PostgreSQL start (hundreds of ms), so a
/// 100 ms check falls into the outage (and `postmaster_start_time` catches a restart it missed).
/// One request per 100 ms is one light status query for Patroni.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// Hold check period while the leader source is unreachable: Patroni demotes exactly then (when
/// it cannot update the leader key and failsafe mode does not keep it), so the VIP must go silent
/// within one probe interval of that.
pub const CHECK_INTERVAL_UNREACHABLE: Duration = Duration::from_millis(50);
/// A hold check without an answer within this long is an unknown answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// Failsafe policy: how far past a confirming check's send time the deadline is moved. Longer than
/// [`CHECK_TIMEOUT`] plus [`CHECK_INTERVAL_UNREACHABLE`], so that a healthy hold never lapses
/// between two checks; an unknown answer withdraws it at once anyway.
pub const FAILSAFE_HOLD: Duration = Duration::from_secs(1);
/// Failsafe policy: the longest the VIP is held past its lease deadline on Patroni's failsafe word,
/// however long the etcd outage lasts. It bounds what a failsafe word that should not have been
/// taken can cost; an outage longer than this goes dark (Patroni's own failsafe has no bound).
pub const FAILSAFE_MAX_HOLD: Duration = Duration::from_secs(600);

/// Errors building a probe (the gate then keeps waiting with this as the reason).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("Patroni REST API TLS setup, {what}: {reason}")]
    Tls { what: String, reason: String },
    #[error("postgres-dsn: {0}")]
    Dsn(String),
    #[error("patroni-user/patroni-password: {0}")]
    Credentials(String),
}

/// How a gate episode ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// The database reported read-write (Patroni: running primary; PostgreSQL: not in recovery).
    Primary,
    /// Patroni reports a running standby leader (standby cluster): it never becomes read-write.
    StandbyLeader,
    /// Nothing listens at `patroni-url` (first probe refused): not gated.
    NoPatroni,
    /// `promotion-gate-timeout` passed: answering anyway.
    Timeout,
    /// The key stopped naming this node while gating: never answered.
    Cancelled,
}

impl Outcome {
    /// Every outcome, in metric order.
    pub const ALL: [Self; 5] = [
        Self::Primary,
        Self::StandbyLeader,
        Self::NoPatroni,
        Self::Timeout,
        Self::Cancelled,
    ];

    /// The metric label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::StandbyLeader => "standby_leader",
            Self::NoPatroni => "no_patroni",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Where the gate is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateState {
    /// `promotion-gate: off`: states pass through.
    Off,
    /// Not primary: nothing to gate.
    #[default]
    Idle,
    /// Primary per the leader source, fenced until the database takes writes.
    Waiting,
    /// Answering (the gate opened for the current term).
    Open,
}

impl GateState {
    /// Every state, in metric order.
    pub const ALL: [Self; 4] = [Self::Off, Self::Idle, Self::Waiting, Self::Open];

    /// The metric label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Idle => "idle",
            Self::Waiting => "waiting",
            Self::Open => "open",
        }
    }
}

/// What the gate reports (metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GateStatus {
    pub state: GateState,
    /// `CLOCK_MONOTONIC` ns when the current wait began (0 unless waiting).
    pub waiting_since_ns: u64,
    /// How long the last finished episode waited, in ns.
    pub last_wait_ns: u64,
    pub last_outcome: Option<Outcome>,
    /// Episodes per outcome, indexed like [`Outcome::ALL`].
    pub outcomes: [u64; 5],
    /// The last probe result while waiting ("" when none yet).
    pub last_probe: String,
    /// The Patroni REST API the gate asks ("" before it first needed one).
    pub patroni_url: String,
    /// Where [`Self::patroni_url`] came from.
    pub patroni_url_source: Option<UrlSource>,
    /// Fences by the hold check: the database stopped being a read-write primary while the VIP
    /// answered.
    pub demotions: u64,
    /// The last hold check result that was not a running primary ("" when none yet).
    pub last_check: String,
    /// The failsafe policy (`patroni-failsafe`).
    pub failsafe: FailsafeStatus,
}

impl GateStatus {
    /// The metrics registry's view of this status (plain values, [`crate::observe`]).
    #[must_use]
    pub fn observation(&self) -> crate::observe::GateObservation {
        const STATES: [&str; GateState::ALL.len()] = {
            let mut names = [""; GateState::ALL.len()];
            let mut i = 0;
            while i < names.len() {
                names[i] = GateState::ALL[i].as_str();
                i += 1;
            }
            names
        };
        crate::observe::GateObservation {
            state: self.state.as_str(),
            states: &STATES,
            waiting_since_ns: (self.state == GateState::Waiting && self.waiting_since_ns != 0)
                .then_some(self.waiting_since_ns),
            last_wait_ns: self.last_wait_ns,
            last_outcome: self.last_outcome.map(Outcome::as_str),
            outcomes: Outcome::ALL
                .iter()
                .zip(self.outcomes)
                .map(|(o, n)| (o.as_str(), n))
                .collect(),
            last_probe: self.last_probe.clone(),
            patroni_url: self
                .patroni_url_source
                .map(|source| (self.patroni_url.clone(), source.as_str())),
            demotions: self.demotions,
            failsafe: crate::observe::FailsafeObservation {
                probing: self.failsafe.probing,
                lease_until_ns: self.failsafe.lease_until_ns,
                until_ns: self.failsafe.until_ns,
                extensions: self.failsafe.extensions,
                fences: self.failsafe.fences,
            },
        }
    }
}

/// Where the gate's Patroni URL came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlSource {
    /// `patroni-url`.
    Configured,
    /// `api_url` in this member's key in etcd.
    MemberKey,
    /// The loopback default (no `patroni-url`, no usable member key).
    Default,
}

impl UrlSource {
    /// For logs, metrics and `status`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Configured => "patroni-url",
            Self::MemberKey => "member-key",
            Self::Default => "default",
        }
    }
}

/// What the failsafe policy reports (metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailsafeStatus {
    /// `patroni-failsafe` follows Patroni (the default); false: never extend.
    pub enabled: bool,
    /// Patroni is being asked (the leader source unreachable while answering).
    pub probing: bool,
    /// `CLOCK_MONOTONIC` ns until which the last failsafe confirmation holds the VIP (0: none).
    pub until_ns: u64,
    /// The lease deadline at that time: the hold is past the lease while `until_ns` lies beyond it.
    pub lease_until_ns: u64,
    /// Confirmations that moved the deadline past the lease deadline.
    pub extensions: u64,
    /// Fences because Patroni stopped confirming failsafe mode past the lease deadline.
    pub fences: u64,
    /// The last failsafe probe result ("" when none yet).
    pub last_probe: String,
}

impl FailsafeStatus {
    /// Whether the VIP is held past its lease deadline on Patroni's failsafe confirmation at
    /// `now_ns`.
    #[must_use]
    pub fn holding_at(&self, now_ns: u64) -> bool {
        now_ns < self.until_ns && now_ns >= self.lease_until_ns
    }
}

/// A probe's answer while gating.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Open the gate.
    Ready(Outcome),
    /// The database's own word that it is not read-write yet (Patroni's status document,
    /// `pg_is_in_recovery()` true): keep waiting, past the timeout too.
    NotYet(String),
    /// No usable answer: keep waiting until the timeout.
    Wait(String),
}

impl Verdict {
    fn why(&self) -> Option<&str> {
        match self {
            Self::Ready(_) => None,
            Self::NotYet(why) | Self::Wait(why) => Some(why),
        }
    }
}

/// What the database says while its VIP answers (the hold check).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Status {
    /// A running read-write primary.
    Primary {
        /// Whether Patroni keeps it primary in failsafe mode, and whether that word can be taken.
        failsafe: Failsafe,
        /// `postmaster_start_time`, when reported: a change means PostgreSQL restarted.
        started: Option<String>,
    },
    /// The database's own word that it is not (or no longer) a running read-write primary.
    NotPrimary(String),
    /// No usable answer (refused, timeout, garbage, an error status without a document, another
    /// cluster's Patroni).
    Unknown(String),
}

/// Patroni's failsafe word in a hold check's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Failsafe {
    /// No `failsafe_mode_is_active: true` (or not Patroni).
    Off,
    /// `failsafe_mode_is_active: true` from a verified peer ([`peer`]): it may hold the VIP past
    /// its lease.
    Verified,
    /// `failsafe_mode_is_active: true` from a peer that could be somebody else: not taken.
    Unverified(String),
}

/// Where the gate finds Patroni (see the module documentation).
#[derive(Clone, Debug, Default)]
pub struct PatroniTarget {
    /// `patroni-url`, when configured.
    pub configured: Option<PatroniUrl>,
    /// This member's key in etcd, when the leader key is laid out by Patroni.
    pub member: Option<watch::Receiver<MemberView>>,
    /// The Patroni scope answers must come from (from the leader key), when known.
    pub scope: Option<String>,
    /// This member's name (the trigger value): an answer naming another member proves nothing.
    pub member_name: Option<String>,
}

impl PatroniTarget {
    /// The URL to ask now, and where it came from.
    #[must_use]
    pub fn current(&self) -> (PatroniUrl, UrlSource) {
        if let Some(url) = &self.configured {
            return (url.clone(), UrlSource::Configured);
        }
        if let Some(url) = self.member.as_ref().and_then(|m| m.borrow().api.clone()) {
            return (url, UrlSource::MemberKey);
        }
        (PatroniUrl::local_default(), UrlSource::Default)
    }

    /// Whether a refused connection means "no Patroni here": only where etcd shows no member
    /// registered for this node (for a key not laid out by Patroni: on the first probe of an
    /// episode).
    fn refused_means_absent(&self, first: bool) -> bool {
        match &self.member {
            None => first,
            Some(m) => {
                // Never registered as far as this agent knows: a member key that expired still
                // names where Patroni runs.
                let v = m.borrow();
                v.known && !v.registered && v.api.is_none()
            }
        }
    }
}

/// Receives every effective state (the data plane writer), under the gate's lock.
pub type Sink = Box<dyn FnMut(&Leadership) + Send>;
/// Receives every gate status change (metrics).
pub type StatusSink = Box<dyn FnMut(&GateStatus) + Send>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Waiting {
        episode: u64,
        since_ns: u64,
        /// The probe opened the gate while the deadline was not (yet) confirmed: open on the next
        /// safe state without asking again (a refused first probe cannot be repeated).
        ready: Option<Outcome>,
    },
    Open {
        until_ns: u64,
        /// Opened on the database's word (or at the timeout): the hold check runs.
        checked: bool,
    },
}

struct Core {
    name: String,
    mode: GateMode,
    latest: Leadership,
    phase: Phase,
    episodes: u64,
    sink: Sink,
    effective: watch::Sender<Leadership>,
    /// The episode the gate task should work on (0: none).
    wake: watch::Sender<u64>,
    status: GateStatus,
    on_status: Option<StatusSink>,
    warned_no_patroni: bool,
    /// The deadline of the last effective state while it answers (0: fenced).
    answering_until: u64,
    /// `patroni-failsafe` follows Patroni.
    failsafe: bool,
    hold_episodes: u64,
    /// The hold episode the hold task should work on (0: none).
    hold_wake: watch::Sender<u64>,
    /// The deadline the last failsafe confirmation granted (0: none in effect).
    failsafe_until: u64,
    /// When the VIP began to be held past its lease deadline on failsafe confirmations (0: not
    /// held past it).
    failsafe_since: u64,
    /// The longest a VIP is held past its lease on Patroni's failsafe word.
    failsafe_max_hold: Duration,
}

impl Core {
    fn emit(&mut self, state: &Leadership) {
        let now = monotonic_ns();
        self.answering_until = if state.is_safe_at(now) {
            state.safe_until_ns
        } else {
            0
        };
        (self.sink)(state);
        self.effective.send_replace(*state);
    }

    fn report(&mut self) {
        if let Some(f) = &mut self.on_status {
            f(&self.status);
        }
    }

    fn set_state(&mut self, state: GateState) {
        if self.status.state != state {
            self.status.state = state;
            if state != GateState::Waiting {
                self.status.waiting_since_ns = 0;
            }
            self.report();
        }
    }

    fn set_url(&mut self, url: &PatroniUrl, source: UrlSource) {
        let url = url.to_string();
        if self.status.patroni_url != url || self.status.patroni_url_source != Some(source) {
            info!(gate = %self.name, patroni_url = %url, source = source.as_str(),
                "promotion gate asks Patroni here");
            self.status.patroni_url = url;
            self.status.patroni_url_source = Some(source);
            self.report();
        }
    }

    /// Whether the leader source reports itself unreachable while the key was ours.
    fn source_unreachable(&self) -> bool {
        self.latest.primary && self.latest.cause == Cause::Unreachable
    }

    fn finish(&mut self, outcome: Outcome, since_ns: u64, now: u64) {
        let waited = now.saturating_sub(since_ns);
        self.status.last_wait_ns = waited;
        self.status.last_outcome = Some(outcome);
        if let Some(i) = Outcome::ALL.iter().position(|o| *o == outcome) {
            self.status.outcomes[i] += 1;
        }
        self.wake.send_replace(0);
        let waited_ms = waited as f64 / 1e6;
        match outcome {
            Outcome::Primary => info!(gate = %self.name, waited_ms,
                "promotion gate open: the database takes writes"),
            Outcome::StandbyLeader => info!(gate = %self.name, waited_ms,
                "promotion gate open: Patroni reports a standby leader (standby cluster)"),
            Outcome::NoPatroni if !self.warned_no_patroni => {
                self.warned_no_patroni = true;
                warn!(gate = %self.name, patroni_url = %self.status.patroni_url,
                    "no Patroni REST API at this address (connection refused) and no Patroni \
                     member registered for this node; not gating (logged once; set patroni-url, \
                     or promotion-gate: off)");
            }
            Outcome::NoPatroni => debug!(gate = %self.name, "no Patroni REST API; not gating"),
            Outcome::Timeout => warn!(gate = %self.name, waited_ms,
                last_probe = %self.status.last_probe,
                "promotion gate timed out: answering although the database was not confirmed read-write"),
            Outcome::Cancelled => info!(gate = %self.name, waited_ms,
                last_probe = %self.status.last_probe,
                "promotion gate cancelled: the key no longer names this node"),
        }
        self.report();
    }

    /// Open for the latest state (which must be safe now) after `outcome`.
    fn open(&mut self, outcome: Outcome) {
        self.phase = Phase::Open {
            until_ns: self.latest.safe_until_ns,
            checked: matches!(outcome, Outcome::Primary | Outcome::Timeout),
        };
        let latest = self.latest;
        self.emit(&latest);
        self.set_state(GateState::Open);
        self.hold_follow();
    }

    /// Start a gate episode for `state` (primary, safe now): fenced until the database answers.
    fn begin_wait(&mut self, state: &Leadership, now: u64) {
        self.episodes += 1;
        self.phase = Phase::Waiting {
            episode: self.episodes,
            since_ns: now,
            ready: None,
        };
        self.status.waiting_since_ns = now;
        self.status.last_probe.clear();
        self.wake.send_replace(self.episodes);
        self.emit(&fenced(state));
        self.set_state(GateState::Waiting);
        debug!(gate = %self.name, mode = %self.mode, "promotion gate waiting");
    }

    /// A published leader state (the source's hook).
    fn apply(&mut self, state: &Leadership) {
        self.latest = *state;
        let now = monotonic_ns();
        let viewed = self.failsafe_view(state, now);
        let state = &viewed;
        self.apply_effective(state, now);
        self.hold_follow();
    }

    /// `state` with a failsafe extension still in effect applied: it survives only states in which
    /// the source did not take the leadership away (unreachable, or read back as ours before the lease is
    /// confirmed) and only while the VIP still answers.
    fn failsafe_view(&mut self, state: &Leadership, now: u64) -> Leadership {
        let keeps = self.failsafe_until > now
            && now < self.answering_until
            && state.primary
            && matches!(state.cause, Cause::Unreachable | Cause::Ours);
        if !keeps {
            if !(state.primary && state.cause == Cause::Unreachable) {
                // etcd answered again (or the key is gone): a later outage counts afresh.
                self.failsafe_since = 0;
            }
            if self.failsafe_until != 0 {
                self.failsafe_until = 0;
                self.status.failsafe.until_ns = 0;
                self.report();
            }
            return *state;
        }
        self.status.failsafe.lease_until_ns = state.safe_until_ns;
        if self.failsafe_until > state.safe_until_ns {
            Leadership {
                safe_until_ns: self.failsafe_until,
                ..*state
            }
        } else {
            *state
        }
    }

    /// Start or stop the hold check after a change: it runs while the VIP answers and either the
    /// gate opened on the database's word, or Patroni's failsafe confirmation may be needed.
    fn hold_follow(&mut self) {
        let now = monotonic_ns();
        let checked = matches!(self.phase, Phase::Open { checked: true, .. });
        let failsafe = self.failsafe && self.source_unreachable();
        let want = now < self.answering_until && (checked || failsafe);
        let running = *self.hold_wake.borrow() != 0;
        if want && !running {
            self.hold_episodes += 1;
            self.hold_wake.send_replace(self.hold_episodes);
        } else if !want && running {
            self.hold_wake.send_replace(0);
        }
        let probing = want && self.source_unreachable();
        if probing != self.status.failsafe.probing {
            self.status.failsafe.probing = probing;
            if probing {
                self.status.failsafe.last_probe.clear();
                info!(gate = %self.name,
                    "leader source unreachable while answering: asking the database every {} ms \
                     whether it is still a read-write primary{}",
                    CHECK_INTERVAL_UNREACHABLE.as_millis(),
                    if self.failsafe { " (and whether Patroni keeps it in failsafe mode)" } else { "" });
            }
            self.report();
        }
    }

    fn hold_stop(&mut self) {
        self.hold_wake.send_replace(0);
        if self.status.failsafe.probing {
            self.status.failsafe.probing = false;
            self.report();
        }
    }

    /// A hold check result for `episode`, sent at `t_sent_ns`. Returns false when the episode is
    /// over.
    fn hold_verdict(&mut self, episode: u64, t_sent_ns: u64, status: Status) -> bool {
        if *self.hold_wake.borrow() != episode {
            return false;
        }
        let now = monotonic_ns();
        if now >= self.answering_until {
            self.hold_stop();
            return false;
        }
        let checked = matches!(self.phase, Phase::Open { checked: true, .. });
        let unreachable = self.source_unreachable();
        let text = match &status {
            Status::Primary {
                failsafe: Failsafe::Verified,
                ..
            } => "failsafe primary".to_owned(),
            Status::Primary {
                failsafe: Failsafe::Unverified(why),
                ..
            } => format!("failsafe primary, but its word is not taken: {why}"),
            Status::Primary { .. } => "running primary, failsafe_mode_is_active false".to_owned(),
            Status::NotPrimary(why) | Status::Unknown(why) => why.clone(),
        };
        if unreachable && text != self.status.failsafe.last_probe {
            debug!(gate = %self.name, check = %text, "hold check while the source is unreachable");
            self.status.failsafe.last_probe.clone_from(&text);
            self.report();
        }
        match status {
            Status::NotPrimary(why) if checked => {
                self.demote(&why, now);
                false
            }
            Status::Unknown(why) if checked && unreachable => {
                self.demote(
                    &format!("{why}, while the leader source is unreachable"),
                    now,
                );
                false
            }
            Status::Primary {
                failsafe: Failsafe::Verified,
                ..
            } if unreachable && self.failsafe => self.failsafe_confirmed(t_sent_ns, now),
            _ if unreachable && self.failsafe => self.failsafe_withdrawn(&text, now),
            Status::Unknown(_) if checked => {
                if text != self.status.last_check {
                    debug!(gate = %self.name, check = %text,
                        "hold check: no usable answer; the lease deadline bounds the VIP");
                    self.status.last_check = text;
                    self.report();
                }
                true
            }
            _ => checked,
        }
    }

    /// The hold check found the database no longer a read-write primary: fence at once, and gate
    /// again while the key is still ours.
    fn demote(&mut self, why: &str, now: u64) {
        warn!(gate = %self.name, check = %why,
            "the database is not a read-write primary: fenced (answering again only once it is)");
        self.status.demotions += 1;
        self.status.last_check = why.to_owned();
        self.failsafe_until = 0;
        self.status.failsafe.until_ns = 0;
        self.hold_stop();
        let latest = self.latest;
        if latest.is_safe_at(now) {
            self.begin_wait(&latest, now);
        } else {
            self.phase = Phase::Idle;
            self.emit(&fenced(&latest));
            self.set_state(GateState::Idle);
        }
        self.report();
    }

    /// Patroni confirmed failsafe mode (check sent at `t_sent_ns`): extend the deadline.
    fn failsafe_confirmed(&mut self, t_sent_ns: u64, now: u64) -> bool {
        let latest = self.latest;
        if self.failsafe_since == 0 || latest.safe_until_ns > now {
            // The hold past the lease starts counting when the lease deadline has passed.
            self.failsafe_since = if latest.safe_until_ns > now { 0 } else { now };
        }
        if self.failsafe_since != 0
            && now.saturating_sub(self.failsafe_since) >= ns(self.failsafe_max_hold)
        {
            let why = format!(
                "the VIP was held {} s past its lease on Patroni's failsafe word, the most it \
                 may be (FAILSAFE_MAX_HOLD)",
                self.failsafe_max_hold.as_secs()
            );
            return self.failsafe_withdrawn(&why, now);
        }
        let until = t_sent_ns.saturating_add(ns(FAILSAFE_HOLD));
        if until > self.answering_until {
            let past_lease = until > latest.safe_until_ns;
            if past_lease && self.answering_until <= latest.safe_until_ns {
                info!(gate = %self.name,
                    lease_deadline_in_ms = latest.safe_until_ns.saturating_sub(now) / 1_000_000,
                    "Patroni runs this member as primary in failsafe mode: answering past \
                     the lease deadline while it keeps saying so");
            }
            self.failsafe_until = until;
            if let Phase::Open { checked, .. } = self.phase {
                self.phase = Phase::Open {
                    until_ns: until,
                    checked,
                };
            }
            let extended = Leadership {
                safe_until_ns: until,
                ..latest
            };
            self.emit(&extended);
            self.status.failsafe.until_ns = until;
            self.status.failsafe.lease_until_ns = latest.safe_until_ns;
            if past_lease {
                self.status.failsafe.extensions += 1;
            }
            self.report();
        }
        true
    }

    /// Patroni did not confirm failsafe mode: withdraw an extension at once (back to the lease
    /// deadline while it lies ahead, fenced otherwise). Returns whether checking goes on.
    fn failsafe_withdrawn(&mut self, why: &str, now: u64) -> bool {
        let latest = self.latest;
        self.failsafe_until = 0;
        if latest.safe_until_ns > now {
            self.failsafe_since = 0;
        }
        self.status.failsafe.until_ns = 0;
        if self.answering_until > latest.safe_until_ns {
            if latest.is_safe_at(now) {
                if let Phase::Open { checked, .. } = self.phase {
                    self.phase = Phase::Open {
                        until_ns: latest.safe_until_ns,
                        checked,
                    };
                }
                self.emit(&latest);
            } else {
                warn!(gate = %self.name, check = %why,
                    "Patroni no longer confirms failsafe mode and the lease deadline has \
                     passed: fenced");
                self.emit(&fenced(&latest));
                if self.mode != GateMode::Off {
                    self.phase = Phase::Idle;
                    self.set_state(GateState::Idle);
                }
                self.status.failsafe.fences += 1;
                self.hold_stop();
                self.report();
                return false;
            }
        }
        self.report();
        // Keep asking while the lease still covers: Patroni may enter failsafe mode before it
        // runs out.
        if latest.is_safe_at(now) {
            true
        } else {
            self.hold_stop();
            false
        }
    }

    /// The promotion gate proper, on the (failsafe-extended) state.
    fn apply_effective(&mut self, state: &Leadership, now: u64) {
        if self.mode == GateMode::Off {
            self.emit(state);
            return;
        }
        if !state.primary {
            if let Phase::Waiting { since_ns, .. } = self.phase {
                self.finish(Outcome::Cancelled, since_ns, now);
            }
            self.phase = Phase::Idle;
            self.emit(state);
            self.set_state(GateState::Idle);
            return;
        }
        match self.phase {
            Phase::Open { until_ns, checked } if now < until_ns => {
                // Already answering: renewals are never gated; a lost deadline fences at once.
                if state.is_safe_at(now) {
                    self.phase = Phase::Open {
                        until_ns: state.safe_until_ns,
                        checked,
                    };
                } else {
                    self.phase = Phase::Idle;
                    self.set_state(GateState::Idle);
                }
                self.emit(state);
            }
            Phase::Waiting {
                ready: Some(outcome),
                ..
            } if state.is_safe_at(now) => self.open(outcome),
            Phase::Waiting { .. } => self.emit(&fenced(state)),
            Phase::Idle | Phase::Open { .. } => {
                if state.is_safe_at(now) {
                    self.begin_wait(state, now);
                } else {
                    self.phase = Phase::Idle;
                    self.emit(state);
                    self.set_state(GateState::Idle);
                }
            }
        }
    }

    /// A probe result for `episode`. `timed_out`: `promotion-gate-timeout` has passed; `heard`:
    /// the database has answered for itself in this episode ([`Verdict::NotYet`]), so the gate
    /// is not broken and the timeout does not open it. Returns false when the episode is over.
    fn verdict(&mut self, episode: u64, verdict: Verdict, timed_out: bool, heard: bool) -> bool {
        let Phase::Waiting {
            episode: current,
            since_ns,
            ready: None,
        } = self.phase
        else {
            return false;
        };
        if current != episode {
            return false;
        }
        let now = monotonic_ns();
        if let Some(why) = verdict.why()
            && why != self.status.last_probe
            && self.status.last_probe.strip_prefix(PAST_TIMEOUT) != Some(why)
        {
            debug!(gate = %self.name, probe = %why, "promotion gate still waiting");
            self.status.last_probe = why.to_owned();
            self.report();
        }
        let outcome = match verdict {
            Verdict::Ready(outcome) => outcome,
            Verdict::Wait(_) if timed_out && !heard => Outcome::Timeout,
            Verdict::NotYet(why) | Verdict::Wait(why) => {
                if timed_out && !self.status.last_probe.starts_with(PAST_TIMEOUT) {
                    // The timeout is for gates that get no usable answer; this database said
                    // for itself that it is not read-write. Warn once per episode.
                    warn!(gate = %self.name, probe = %why,
                        "promotion gate timeout passed, still waiting: the database reported \
                         that it is not read-write");
                    self.status.last_probe = format!("{PAST_TIMEOUT}{why}");
                    self.report();
                }
                return true;
            }
        };
        self.finish(outcome, since_ns, now);
        if self.latest.primary && self.latest.is_safe_at(now) {
            self.open(outcome);
        } else {
            self.phase = Phase::Waiting {
                episode,
                since_ns,
                ready: Some(outcome),
            };
        }
        false
    }
}

/// Marks `last_probe` once the timeout passed without opening.
const PAST_TIMEOUT: &str = "(past the timeout) ";

/// The state with "answering" taken away (what the data plane sees while gating).
fn fenced(state: &Leadership) -> Leadership {
    state.fenced()
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The source side of a gate: call [`GateHook::apply`] with every published leader state.
#[derive(Clone)]
pub struct GateHook {
    core: Arc<Mutex<Core>>,
}

impl GateHook {
    /// Feed one published leader state (synchronously, in the source's task).
    pub fn apply(&self, state: &Leadership) {
        lock(&self.core).apply(state);
    }
}

/// One promotion gate in front of one data plane writer.
pub struct Gate {
    core: Arc<Mutex<Core>>,
    wake: watch::Receiver<u64>,
    hold_wake: watch::Receiver<u64>,
    config: GateConfig,
    target: PatroniTarget,
    name: String,
}

impl Gate {
    /// A gate named `name` (for logs: the key and VIPs) with `config`, in front of a leader source
    /// of kind `source`, writing effective states to `sink`. Starts idle, with the fenced startup
    /// state published. Patroni is found at `patroni-url`, or the loopback default; see
    /// [`Gate::with_target`]. `patroni-failsafe` acts only for a source that is Patroni's DCS.
    pub fn new(
        name: impl Into<String>,
        mut config: GateConfig,
        source: &'static SourceKind,
        sink: Sink,
    ) -> Self {
        let name = name.into();
        config.failsafe &= source.failsafe_applies;
        let failsafe = config.failsafe;
        let startup = Leadership::startup(monotonic_ns());
        let (effective, _) = watch::channel(startup);
        let (wake_tx, wake) = watch::channel(0);
        let (hold_wake_tx, hold_wake) = watch::channel(0);
        let status = GateStatus {
            state: if config.mode == GateMode::Off {
                GateState::Off
            } else {
                GateState::Idle
            },
            failsafe: FailsafeStatus {
                enabled: failsafe,
                ..FailsafeStatus::default()
            },
            ..GateStatus::default()
        };
        let target = PatroniTarget {
            configured: config.patroni_url.clone(),
            ..PatroniTarget::default()
        };
        Self {
            core: Arc::new(Mutex::new(Core {
                name: name.clone(),
                mode: config.mode,
                latest: startup,
                phase: Phase::Idle,
                episodes: 0,
                sink,
                effective,
                wake: wake_tx,
                status,
                on_status: None,
                warned_no_patroni: false,
                answering_until: 0,
                failsafe,
                hold_episodes: 0,
                hold_wake: hold_wake_tx,
                failsafe_until: 0,
                failsafe_since: 0,
                failsafe_max_hold: FAILSAFE_MAX_HOLD,
            })),
            wake,
            hold_wake,
            config,
            target,
            name,
        }
    }

    /// Find Patroni through this member's key and check answers against `scope` (see
    /// [`PatroniTarget`]); a configured `patroni-url` still wins.
    #[must_use]
    pub fn with_target(
        mut self,
        member: Option<watch::Receiver<MemberView>>,
        scope: Option<String>,
    ) -> Self {
        self.target.member = member;
        self.target.scope = scope;
        self
    }

    /// Answers must come from this member (Patroni 3.1+ names it in `patroni.name`).
    #[must_use]
    pub fn with_member_name(mut self, name: Option<String>) -> Self {
        self.target.member_name = name;
        self
    }

    /// Bound the hold past the lease on Patroni's failsafe word ([`FAILSAFE_MAX_HOLD`] unless
    /// set).
    #[must_use]
    pub fn with_failsafe_max_hold(self, max: Duration) -> Self {
        lock(&self.core).failsafe_max_hold = max;
        self
    }

    /// Report every status change to `f` (called at once with the current status).
    pub fn on_status(&self, f: StatusSink) {
        let mut core = lock(&self.core);
        core.on_status = Some(f);
        core.report();
    }

    /// The effective states (fenced while gating), for the VIP tasks.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Leadership> {
        lock(&self.core).effective.subscribe()
    }

    /// The source side.
    #[must_use]
    pub fn hook(&self) -> GateHook {
        GateHook {
            core: Arc::clone(&self.core),
        }
    }

    /// The current status.
    #[must_use]
    pub fn status(&self) -> GateStatus {
        lock(&self.core).status.clone()
    }

    /// Probe during gate episodes and hold checks until `cancel`; returns at once for
    /// `promotion-gate: off` with `patroni-failsafe: false`. Run it on the same tracker as the
    /// sources: it must end before the shutdown fence.
    pub async fn run(self, cancel: CancellationToken) {
        let Self {
            core,
            mut wake,
            mut hold_wake,
            config,
            target,
            name: _,
        } = self;
        tokio::join!(
            promotion_loop(&core, &mut wake, &config, &target, &cancel),
            hold_loop(&core, &mut hold_wake, &config, &target, &cancel),
        );
    }
}

/// Wait until `wake` announces an episode (non-zero); `None` on cancel or when the gate is gone.
async fn next_episode(wake: &mut watch::Receiver<u64>, cancel: &CancellationToken) -> Option<u64> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => None,
        e = wake.wait_for(|e| *e != 0) => e.ok().map(|e| *e),
    }
}

/// After `episode` ended: wait until `wake` moves on from it (the finished one reset it to 0).
async fn episode_done(
    wake: &mut watch::Receiver<u64>,
    episode: u64,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        r = wake.wait_for(|e| *e != episode) => r.is_ok(),
    }
}

async fn promotion_loop(
    core: &Mutex<Core>,
    wake: &mut watch::Receiver<u64>,
    config: &GateConfig,
    target: &PatroniTarget,
    cancel: &CancellationToken,
) {
    if config.mode == GateMode::Off {
        return;
    }
    while let Some(episode) = next_episode(wake, cancel).await {
        promotion_episode(core, wake, config, target, episode, cancel).await;
        if !episode_done(wake, episode, cancel).await {
            return;
        }
    }
}

async fn promotion_episode(
    core: &Mutex<Core>,
    wake: &mut watch::Receiver<u64>,
    config: &GateConfig,
    target: &PatroniTarget,
    episode: u64,
    cancel: &CancellationToken,
) {
    let since_ns = match lock(core).phase {
        Phase::Waiting {
            episode: e,
            since_ns,
            ready: None,
        } if e == episode => since_ns,
        _ => return,
    };
    let waited = Duration::from_nanos(monotonic_ns().saturating_sub(since_ns));
    let deadline = Instant::now() + config.timeout.saturating_sub(waited);
    let mut prober = Prober::new(config, target, core);
    let mut first = true;
    // The database answered for itself in this episode: the gate is not broken, so the timeout
    // no longer opens it (see `Core::verdict`).
    let mut heard = false;
    loop {
        prober.follow(config, target, core);
        let started = Instant::now();
        let limit = if started < deadline {
            (started + patroni::PROBE_TIMEOUT).min(deadline)
        } else {
            started + patroni::PROBE_TIMEOUT
        };
        let absent = target.refused_means_absent(first);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = wake.wait_for(|e| *e != episode) => return,
            r = tokio::time::timeout_at(limit, prober.probe(absent)) => r,
        };
        let verdict = result.unwrap_or_else(|_| {
            prober.reset();
            Verdict::Wait(format!(
                "no answer within {} ms",
                Instant::now().duration_since(started).as_millis()
            ))
        });
        first = false;
        heard |= matches!(verdict, Verdict::NotYet(_));
        let timed_out = Instant::now() >= deadline;
        if !lock(core).verdict(episode, verdict, timed_out, heard) {
            return;
        }
        let next = if timed_out {
            started + config.interval
        } else {
            (started + config.interval).min(deadline)
        };
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = wake.wait_for(|e| *e != episode) => return,
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

async fn hold_loop(
    core: &Mutex<Core>,
    wake: &mut watch::Receiver<u64>,
    config: &GateConfig,
    target: &PatroniTarget,
    cancel: &CancellationToken,
) {
    if config.mode == GateMode::Off && !config.failsafe {
        return;
    }
    while let Some(episode) = next_episode(wake, cancel).await {
        hold_episode(core, wake, config, target, episode, cancel).await;
        if !episode_done(wake, episode, cancel).await {
            return;
        }
    }
}

/// Ask the database every [`CHECK_INTERVAL`] ([`CHECK_INTERVAL_UNREACHABLE`] while the source is
/// unreachable) whether it is still a read-write primary, until the episode ends.
async fn hold_episode(
    core: &Mutex<Core>,
    wake: &mut watch::Receiver<u64>,
    config: &GateConfig,
    target: &PatroniTarget,
    episode: u64,
    cancel: &CancellationToken,
) {
    let mut prober = Prober::new(config, target, core);
    let mut member = target.member.clone();
    // Only what Patroni writes into the member key after the VIP started answering counts.
    let baseline = member
        .as_mut()
        .map_or(0, |m| m.borrow_and_update().mod_revision);
    let mut started: Option<String> = None;
    loop {
        prober.follow(config, target, core);
        let (unreachable, failsafe) = {
            let core = lock(core);
            (core.source_unreachable(), core.failsafe)
        };
        let interval = if unreachable {
            CHECK_INTERVAL_UNREACHABLE
        } else {
            CHECK_INTERVAL
        };
        // Who answers matters only where the answer may hold the VIP past its lease.
        let verify_peer = unreachable && failsafe;
        let begun = Instant::now();
        let t_sent = monotonic_ns();
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = wake.wait_for(|e| *e != episode) => return,
            r = tokio::time::timeout(CHECK_TIMEOUT, prober.status(verify_peer)) => r,
        };
        let mut status = result.unwrap_or_else(|_| {
            prober.reset();
            Status::Unknown(format!("no answer within {} ms", CHECK_TIMEOUT.as_millis()))
        });
        if let Status::Primary {
            started: Some(now), ..
        } = &status
        {
            match &started {
                None => started = Some(now.clone()),
                Some(before) if before != now => {
                    status = Status::NotPrimary(format!(
                        "PostgreSQL restarted (postmaster start time {before} -> {now})"
                    ));
                }
                Some(_) => {}
            }
        }
        if !lock(core).hold_verdict(episode, t_sent, status) {
            return;
        }
        // Sleep until the next check, or until Patroni writes a demotion into the member key.
        let next = begun + interval;
        loop {
            let changed = async {
                match member.as_mut() {
                    Some(m) => m.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = wake.wait_for(|e| *e != episode) => return,
                alive = changed => {
                    if !alive {
                        member = None;
                        continue;
                    }
                    let view = member.as_mut().map(|m| m.borrow_and_update().clone());
                    if let Some(view) = view
                        && view.registered
                        && view.mod_revision > baseline
                        && member_says_demoted(&view)
                    {
                        let why = format!(
                            "Patroni wrote role {}, state {} into the member key",
                            view.role.as_deref().unwrap_or("-"),
                            view.state.as_deref().unwrap_or("-")
                        );
                        if !lock(core).hold_verdict(episode, monotonic_ns(), Status::NotPrimary(why)) {
                            return;
                        }
                    }
                }
                () = tokio::time::sleep_until(next) => break,
            }
        }
    }
}

/// Whether the member key says this member is not (or no longer) a running primary. `promoted`
/// is Patroni's role between `pg_ctl promote` and the end of the promotion: on the way up.
fn member_says_demoted(view: &MemberView) -> bool {
    let role_up = view
        .role
        .as_deref()
        .is_none_or(|r| matches!(r, "master" | "primary" | "promoted"));
    let state_up = view.state.as_deref().is_none_or(|s| s == "running");
    !(role_up && state_up)
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("name", &self.name)
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

/// The probe of one episode: Patroni (rebuilt when its URL moves), or PostgreSQL.
enum Prober {
    Patroni(Result<Box<patroni::PatroniProbe>, String>),
    Postgres(Box<postgres::PostgresProbe>),
    /// The probe could not be built (DSN): wait with this reason until the timeout.
    Broken(String),
}

impl Prober {
    fn new(config: &GateConfig, target: &PatroniTarget, core: &Mutex<Core>) -> Self {
        match config.mode {
            GateMode::Postgres => {
                let dsn = config.postgres_dsn.as_ref().map(|d| d.expose().to_owned());
                match dsn.as_deref().map(str::parse::<tokio_postgres::Config>) {
                    Some(Ok(c)) => Self::Postgres(Box::new(postgres::PostgresProbe::new(c))),
                    Some(Err(e)) => Self::Broken(GateError::Dsn(e.to_string()).to_string()),
                    None => Self::Broken(GateError::Dsn("not set".to_owned()).to_string()),
                }
            }
            GateMode::Patroni | GateMode::Off => {
                let (url, source) = target.current();
                lock(core).set_url(&url, source);
                Self::Patroni(
                    patroni::PatroniProbe::new(
                        config,
                        &url,
                        target.scope.clone(),
                        target.member_name.clone(),
                    )
                    .map(Box::new)
                    .map_err(|e| e.to_string()),
                )
            }
        }
    }

    /// Rebuild a Patroni probe whose URL is no longer the one to ask (the member key moved).
    fn follow(&mut self, config: &GateConfig, target: &PatroniTarget, core: &Mutex<Core>) {
        if let Self::Patroni(probe) = self {
            let (url, _) = target.current();
            if probe.as_ref().map_or(true, |p| *p.url() != url) {
                *self = Self::new(config, target, core);
            }
        }
    }

    async fn probe(&mut self, refused_means_absent: bool) -> Verdict {
        match self {
            Self::Patroni(Ok(p)) => p.probe(refused_means_absent).await,
            Self::Postgres(p) => p.probe().await,
            Self::Patroni(Err(why)) | Self::Broken(why) => Verdict::Wait(why.clone()),
        }
    }

    async fn status(&mut self, verify_peer: bool) -> Status {
        match self {
            Self::Patroni(Ok(p)) => p.status(verify_peer).await,
            Self::Postgres(p) => p.status().await,
            Self::Patroni(Err(why)) | Self::Broken(why) => Status::Unknown(why.clone()),
        }
    }

    fn reset(&mut self) {
        if let Self::Postgres(p) = self {
            p.reset();
        }
    }
}
