//! The promotion gate: a new primary answers for its VIP only once its database takes writes.
//!
//! Patroni takes the leader key *before* PostgreSQL has finished promoting; an agent that follows
//! the key within a millisecond would route clients to a server still in recovery. The gate sits
//! between the leader follower and the data plane writer:
//!
//! * a state that makes this node primary (key = trigger value, confirmed deadline) while the data
//!   plane is fenced starts a gate **episode**: the data plane stays fenced and the gate task polls
//!   every `promotion-gate-interval` (one probe in flight, each bounded by one second):
//!   * `patroni`: `GET <patroni-url>/primary` must return 200 with `role` `master`/`primary` and
//!     `state` `running` in its JSON body: Patroni answers 200 as soon as it holds the leader lock,
//!     while PostgreSQL may still be in recovery (`role: replica`), so the status code alone proves
//!     nothing;
//!   * `postgres`: `SELECT pg_is_in_recovery()` must return false;
//! * when the probe says so, the gate writes the follower's **current** state (its latest deadline)
//!   to the data plane and publishes it to the VIP tasks (address, gratuitous ARP);
//! * after `promotion-gate-timeout` it opens anyway, with a warning naming the last probe result;
//! * **no Patroni here**: in `patroni` mode, when the first probe of an episode finds the REST
//!   address actively refusing connections (ECONNREFUSED on every resolved address), the gate opens
//!   at once with a warning (logged once per gate). A Patroni member that holds the leader key
//!   always runs its REST API, so a refused connection means nothing there will ever answer (a
//!   vip-manager style setup, or a wrong `patroni-url`); waiting would only add the timeout to
//!   every failover. A timeout, an error status or garbage is *not* that case and keeps gating;
//! * everything that is not a promotion passes straight through, under the same lock: renewals
//!   while answering, and every fence (key lost, deadline lost). A key lost while gating cancels
//!   the episode; nothing answers.
//!
//! The follower hook and the gate task share one mutex around the data plane writer, so a fence
//! can never be overtaken by a late "answering" from the gate task, and the gate task ends before
//! the agent's shutdown fence.
//!
//! # Patroni `failsafe_mode` (opt-in: `patroni-failsafe: true`)
//!
//! When the follower reports etcd unreachable ([`Reason::EtcdUnreachable`]) while this VIP is
//! answering, the gate task asks `GET <patroni-url>/primary` every [`FAILSAFE_INTERVAL`]. An
//! answer that proves Patroni keeps this member primary in failsafe mode (200, `role`
//! `master`/`primary`, `state` `running` and `failsafe_mode_is_active: true`; Patroni sets that
//! field only after **every** member accepted its `POST /failsafe`) moves the deadline to the
//! probe's send time + [`FAILSAFE_HOLD`], which can lie past the lease deadline. Any other answer
//! (another status, not failsafe, garbage, no answer within [`FAILSAFE_PROBE_TIMEOUT`]) withdraws
//! the extension at once: back to the lease deadline while that still lies ahead, fenced
//! otherwise. Only an unbroken hold is extended: once the VIP went silent, only etcd brings it
//! back. Anything etcd says (key deleted, another value, lease expired) fences as before; the
//! extension survives only a read that shows the key still ours, until the lease is confirmed.

mod patroni;
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
    config::{GateConfig, GateMode},
    leader::{LeaderState, Reason},
};

/// Failsafe policy: how often Patroni is asked while etcd is unreachable and the VIP answers.
pub const FAILSAFE_INTERVAL: Duration = Duration::from_millis(500);
/// Failsafe policy: how far past a confirming probe's send time the deadline is moved.
pub const FAILSAFE_HOLD: Duration = Duration::from_secs(2);
/// Failsafe policy: a probe without an answer within this counts as "not confirmed".
pub const FAILSAFE_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors building a probe (the gate then keeps waiting with this as the reason).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("Patroni REST API TLS setup, {what}: {reason}")]
    Tls { what: String, reason: String },
    #[error("postgres-dsn: {0}")]
    Dsn(String),
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
    /// Primary per etcd, fenced until the database takes writes.
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
    /// The failsafe policy (`patroni-failsafe`).
    pub failsafe: FailsafeStatus,
}

/// What the failsafe policy reports (metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FailsafeStatus {
    /// `patroni-failsafe: true`.
    pub enabled: bool,
    /// Patroni is being asked (etcd unreachable while answering).
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

/// A probe's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Open the gate.
    Ready(Outcome),
    /// Keep waiting, and why.
    Wait(String),
}

/// Receives every effective state (the data plane writer), under the gate's lock.
pub type Sink = Box<dyn FnMut(&LeaderState) + Send>;
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
    },
}

struct Core {
    name: String,
    mode: GateMode,
    latest: LeaderState,
    phase: Phase,
    episodes: u64,
    sink: Sink,
    effective: watch::Sender<LeaderState>,
    /// The episode the gate task should work on (0: none).
    wake: watch::Sender<u64>,
    status: GateStatus,
    on_status: Option<StatusSink>,
    warned_no_patroni: bool,
    /// The deadline of the last effective state while it answers (0: fenced).
    answering_until: u64,
    /// `patroni-failsafe`.
    failsafe: bool,
    failsafe_episodes: u64,
    /// The failsafe episode the gate task should work on (0: none).
    failsafe_wake: watch::Sender<u64>,
    /// The deadline the last failsafe confirmation granted (0: none in effect).
    failsafe_until: u64,
}

impl Core {
    fn emit(&mut self, state: &LeaderState) {
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
                warn!(gate = %self.name,
                    "no Patroni REST API at this address (connection refused); not gating \
                     (logged once; set patroni-url, or promotion-gate: off)");
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

    /// Open for the latest state (which must be safe now).
    fn open(&mut self) {
        self.phase = Phase::Open {
            until_ns: self.latest.safe_until_ns,
        };
        let latest = self.latest;
        self.emit(&latest);
        self.set_state(GateState::Open);
        // Opened while etcd is unreachable (it went away during the wait): failsafe applies too.
        self.failsafe_follow();
    }

    /// A published leader state (the follower's hook).
    fn apply(&mut self, state: &LeaderState) {
        self.latest = *state;
        let now = monotonic_ns();
        let viewed = self.failsafe_view(state, now);
        let state = &viewed;
        self.apply_effective(state, now);
        self.failsafe_follow();
    }

    /// `state` with a failsafe extension still in effect applied: it survives only states in which
    /// etcd did not take the key away (unreachable, or read back as ours before the lease is
    /// confirmed) and only while the VIP still answers.
    fn failsafe_view(&mut self, state: &LeaderState, now: u64) -> LeaderState {
        let keeps = self.failsafe_until > now
            && now < self.answering_until
            && state.primary
            && matches!(state.reason, Reason::EtcdUnreachable | Reason::Ours { .. });
        if !keeps {
            if self.failsafe_until != 0 {
                self.failsafe_until = 0;
                self.status.failsafe.until_ns = 0;
                self.report();
            }
            return *state;
        }
        self.status.failsafe.lease_until_ns = state.safe_until_ns;
        if self.failsafe_until > state.safe_until_ns {
            LeaderState {
                safe_until_ns: self.failsafe_until,
                ..*state
            }
        } else {
            *state
        }
    }

    /// Start or stop asking Patroni about failsafe mode after a published state.
    fn failsafe_follow(&mut self) {
        if !self.failsafe {
            return;
        }
        let now = monotonic_ns();
        let want = self.latest.primary
            && self.latest.reason == Reason::EtcdUnreachable
            && now < self.answering_until;
        let running = *self.failsafe_wake.borrow() != 0;
        if want && !running {
            self.failsafe_episodes += 1;
            self.failsafe_wake.send_replace(self.failsafe_episodes);
            self.status.failsafe.probing = true;
            self.status.failsafe.last_probe.clear();
            self.report();
            info!(gate = %self.name,
                "etcd unreachable while answering: asking Patroni whether it keeps this member \
                 primary in failsafe mode");
        } else if !want && running {
            self.failsafe_stop();
        }
    }

    fn failsafe_stop(&mut self) {
        self.failsafe_wake.send_replace(0);
        if self.status.failsafe.probing {
            self.status.failsafe.probing = false;
            self.report();
        }
    }

    /// A failsafe probe result for `episode`, sent at `t_sent_ns`. Returns false when the episode
    /// is over.
    fn failsafe_verdict(
        &mut self,
        episode: u64,
        t_sent_ns: u64,
        verdict: Result<(), String>,
    ) -> bool {
        if *self.failsafe_wake.borrow() != episode {
            return false;
        }
        let now = monotonic_ns();
        let latest = self.latest;
        if !(latest.primary && latest.reason == Reason::EtcdUnreachable) {
            self.failsafe_stop();
            return false;
        }
        let probe = match &verdict {
            Ok(()) => "failsafe primary".to_owned(),
            Err(why) => why.clone(),
        };
        if probe != self.status.failsafe.last_probe {
            debug!(gate = %self.name, probe = %probe, "failsafe probe");
            self.status.failsafe.last_probe = probe;
            self.report();
        }
        match verdict {
            Ok(()) => {
                if now >= self.answering_until {
                    // Silent before Patroni confirmed: only etcd brings the VIP back.
                    info!(gate = %self.name,
                        "the lease deadline passed before Patroni confirmed failsafe mode: fenced \
                         until etcd confirms the key again");
                    self.failsafe_stop();
                    return false;
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
                    if let Phase::Open { .. } = self.phase {
                        self.phase = Phase::Open { until_ns: until };
                    }
                    let extended = LeaderState {
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
            Err(why) => {
                self.failsafe_until = 0;
                self.status.failsafe.until_ns = 0;
                if self.answering_until > latest.safe_until_ns {
                    // An extension was granted (in effect, or lapsed a moment ago): withdraw it.
                    if latest.is_safe_at(now) {
                        if let Phase::Open { .. } = self.phase {
                            self.phase = Phase::Open {
                                until_ns: latest.safe_until_ns,
                            };
                        }
                        self.emit(&latest);
                    } else {
                        warn!(gate = %self.name, probe = %why,
                            "Patroni no longer confirms failsafe mode and the lease deadline has \
                             passed: fenced");
                        self.emit(&fenced(&latest));
                        if self.mode != GateMode::Off {
                            self.phase = Phase::Idle;
                            self.set_state(GateState::Idle);
                        }
                        self.status.failsafe.fences += 1;
                        self.failsafe_stop();
                        self.report();
                        return false;
                    }
                }
                self.report();
                // Keep asking while the lease still covers: Patroni may enter failsafe mode
                // before it runs out.
                if latest.is_safe_at(now) {
                    true
                } else {
                    self.failsafe_stop();
                    false
                }
            }
        }
    }

    /// The promotion gate proper, on the (failsafe-extended) state.
    fn apply_effective(&mut self, state: &LeaderState, now: u64) {
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
            Phase::Open { until_ns } if now < until_ns => {
                // Already answering: renewals are never gated; a lost deadline fences at once.
                if state.is_safe_at(now) {
                    self.phase = Phase::Open {
                        until_ns: state.safe_until_ns,
                    };
                } else {
                    self.phase = Phase::Idle;
                    self.set_state(GateState::Idle);
                }
                self.emit(state);
            }
            Phase::Waiting { ready: Some(_), .. } if state.is_safe_at(now) => self.open(),
            Phase::Waiting { .. } => self.emit(&fenced(state)),
            Phase::Idle | Phase::Open { .. } => {
                if state.is_safe_at(now) {
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
                } else {
                    self.phase = Phase::Idle;
                    self.emit(state);
                    self.set_state(GateState::Idle);
                }
            }
        }
    }

    /// A probe result for `episode`. Returns false when the episode is over.
    fn verdict(&mut self, episode: u64, verdict: Verdict, timed_out: bool) -> bool {
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
        let outcome = match verdict {
            Verdict::Ready(outcome) => outcome,
            Verdict::Wait(why) => {
                if why != self.status.last_probe {
                    debug!(gate = %self.name, probe = %why, "promotion gate still waiting");
                    self.status.last_probe = why;
                    self.report();
                }
                if !timed_out {
                    return true;
                }
                Outcome::Timeout
            }
        };
        self.finish(outcome, since_ns, now);
        if self.latest.primary && self.latest.is_safe_at(now) {
            self.open();
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

/// The state with "answering" taken away (what the data plane sees while gating).
fn fenced(state: &LeaderState) -> LeaderState {
    LeaderState {
        primary: false,
        safe_until_ns: 0,
        ..*state
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn lock(core: &Mutex<Core>) -> MutexGuard<'_, Core> {
    core.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The follower side of a gate: call [`GateHook::apply`] with every published leader state.
#[derive(Clone)]
pub struct GateHook {
    core: Arc<Mutex<Core>>,
}

impl GateHook {
    /// Feed one published leader state (synchronously, in the follower's task).
    pub fn apply(&self, state: &LeaderState) {
        lock(&self.core).apply(state);
    }
}

/// One promotion gate in front of one data plane writer.
pub struct Gate {
    core: Arc<Mutex<Core>>,
    wake: watch::Receiver<u64>,
    failsafe_wake: watch::Receiver<u64>,
    config: GateConfig,
    name: String,
}

impl Gate {
    /// A gate named `name` (for logs: the key and VIPs) with `config`, writing effective states to
    /// `sink`. Starts idle, with the fenced startup state published.
    pub fn new(name: impl Into<String>, config: GateConfig, sink: Sink) -> Self {
        let name = name.into();
        let startup = LeaderState::startup(monotonic_ns());
        let (effective, _) = watch::channel(startup);
        let (wake_tx, wake) = watch::channel(0);
        let (failsafe_wake_tx, failsafe_wake) = watch::channel(0);
        let status = GateStatus {
            state: if config.mode == GateMode::Off {
                GateState::Off
            } else {
                GateState::Idle
            },
            failsafe: FailsafeStatus {
                enabled: config.failsafe,
                ..FailsafeStatus::default()
            },
            ..GateStatus::default()
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
                failsafe: config.failsafe,
                failsafe_episodes: 0,
                failsafe_wake: failsafe_wake_tx,
                failsafe_until: 0,
            })),
            wake,
            failsafe_wake,
            config,
            name,
        }
    }

    /// Report every status change to `f` (called at once with the current status).
    pub fn on_status(&self, f: StatusSink) {
        let mut core = lock(&self.core);
        core.on_status = Some(f);
        core.report();
    }

    /// The effective states (fenced while gating), for the VIP tasks.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<LeaderState> {
        lock(&self.core).effective.subscribe()
    }

    /// The follower side.
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

    /// Probe during gate episodes (and failsafe episodes) until `cancel`; returns at once for
    /// `promotion-gate: off` without `patroni-failsafe`. Run it on the same tracker as the
    /// followers: it must end before the shutdown fence.
    pub async fn run(self, cancel: CancellationToken) {
        let Self {
            core,
            mut wake,
            mut failsafe_wake,
            config,
            name: _,
        } = self;
        tokio::join!(
            promotion_loop(&core, &mut wake, &config, &cancel),
            failsafe_loop(&core, &mut failsafe_wake, &config, &cancel),
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
    cancel: &CancellationToken,
) {
    if config.mode == GateMode::Off {
        return;
    }
    while let Some(episode) = next_episode(wake, cancel).await {
        promotion_episode(core, wake, config, episode, cancel).await;
        if !episode_done(wake, episode, cancel).await {
            return;
        }
    }
}

async fn promotion_episode(
    core: &Mutex<Core>,
    wake: &mut watch::Receiver<u64>,
    config: &GateConfig,
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
    let mut prober = Prober::new(config);
    let mut first = true;
    loop {
        let started = Instant::now();
        let limit = (started + patroni::PROBE_TIMEOUT).min(deadline);
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = wake.wait_for(|e| *e != episode) => return,
            r = tokio::time::timeout_at(limit, prober.probe(first)) => r,
        };
        let verdict = result.unwrap_or_else(|_| {
            prober.reset();
            Verdict::Wait(format!(
                "no answer within {} ms",
                Instant::now().duration_since(started).as_millis()
            ))
        });
        first = false;
        let timed_out = Instant::now() >= deadline;
        if !lock(core).verdict(episode, verdict, timed_out) {
            return;
        }
        let next = (started + config.interval).min(deadline);
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = wake.wait_for(|e| *e != episode) => return,
            () = tokio::time::sleep_until(next) => {}
        }
    }
}

async fn failsafe_loop(
    core: &Mutex<Core>,
    wake: &mut watch::Receiver<u64>,
    config: &GateConfig,
    cancel: &CancellationToken,
) {
    if !config.failsafe {
        return;
    }
    while let Some(episode) = next_episode(wake, cancel).await {
        failsafe_episode(core, wake, config, episode, cancel).await;
        if !episode_done(wake, episode, cancel).await {
            return;
        }
    }
}

/// Ask Patroni every [`FAILSAFE_INTERVAL`] whether it keeps this member primary in failsafe mode,
/// until the episode ends (etcd back, key lost, fenced).
async fn failsafe_episode(
    core: &Mutex<Core>,
    wake: &mut watch::Receiver<u64>,
    config: &GateConfig,
    episode: u64,
    cancel: &CancellationToken,
) {
    // TLS files are read once per episode, as for the promotion gate.
    let probe = patroni::PatroniProbe::new(config).map_err(|e| e.to_string());
    loop {
        let started = Instant::now();
        let t_sent = monotonic_ns();
        let ask = async {
            match &probe {
                Ok(p) => p.failsafe().await,
                Err(why) => Err(why.clone()),
            }
        };
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = wake.wait_for(|e| *e != episode) => return,
            r = tokio::time::timeout(FAILSAFE_PROBE_TIMEOUT, ask) => r,
        };
        let verdict = result.unwrap_or_else(|_| {
            Err(format!(
                "no answer within {} ms",
                FAILSAFE_PROBE_TIMEOUT.as_millis()
            ))
        });
        if !lock(core).failsafe_verdict(episode, t_sent, verdict) {
            return;
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = wake.wait_for(|e| *e != episode) => return,
            () = tokio::time::sleep_until(started + FAILSAFE_INTERVAL) => {}
        }
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("name", &self.name)
            .field("mode", &self.config.mode)
            .finish_non_exhaustive()
    }
}

/// The probe of one episode.
enum Prober {
    Patroni(patroni::PatroniProbe),
    Postgres(Box<postgres::PostgresProbe>),
    /// The probe could not be built (TLS files, DSN): wait with this reason until the timeout.
    Broken(String),
}

impl Prober {
    fn new(config: &GateConfig) -> Self {
        match config.mode {
            GateMode::Postgres => {
                let dsn = config.postgres_dsn.as_ref().map(|d| d.expose().to_owned());
                match dsn.as_deref().map(str::parse::<tokio_postgres::Config>) {
                    Some(Ok(c)) => Self::Postgres(Box::new(postgres::PostgresProbe::new(c))),
                    Some(Err(e)) => Self::Broken(GateError::Dsn(e.to_string()).to_string()),
                    None => Self::Broken(GateError::Dsn("not set".to_owned()).to_string()),
                }
            }
            GateMode::Patroni | GateMode::Off => match patroni::PatroniProbe::new(config) {
                Ok(p) => Self::Patroni(p),
                Err(e) => Self::Broken(e.to_string()),
            },
        }
    }

    async fn probe(&mut self, first: bool) -> Verdict {
        match self {
            Self::Patroni(p) => p.probe(first).await,
            Self::Postgres(p) => p.probe().await,
            Self::Broken(why) => Verdict::Wait(why.clone()),
        }
    }

    fn reset(&mut self) {
        if let Self::Postgres(p) = self {
            p.reset();
        }
    }
}
