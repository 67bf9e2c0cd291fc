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
    leader::LeaderState,
};

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
}

impl Core {
    fn emit(&mut self, state: &LeaderState) {
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
    }

    /// A published leader state (the follower's hook).
    fn apply(&mut self, state: &LeaderState) {
        self.latest = *state;
        let now = monotonic_ns();
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
        let status = GateStatus {
            state: if config.mode == GateMode::Off {
                GateState::Off
            } else {
                GateState::Idle
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
            })),
            wake,
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

    /// Probe during gate episodes until `cancel`; returns at once for `promotion-gate: off`. Run it
    /// on the same tracker as the followers: it must end before the shutdown fence.
    pub async fn run(mut self, cancel: CancellationToken) {
        if self.config.mode == GateMode::Off {
            return;
        }
        loop {
            let episode = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                e = self.wake.wait_for(|e| *e != 0) => match e {
                    Ok(e) => *e,
                    Err(_) => return,
                },
            };
            self.episode(episode, &cancel).await;
            // Wait for the next episode (the finished one reset the wake value to 0).
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                r = self.wake.wait_for(|e| *e != episode) => if r.is_err() { return },
            }
        }
    }

    async fn episode(&mut self, episode: u64, cancel: &CancellationToken) {
        let since_ns = match lock(&self.core).phase {
            Phase::Waiting {
                episode: e,
                since_ns,
                ready: None,
            } if e == episode => since_ns,
            _ => return,
        };
        let waited = Duration::from_nanos(monotonic_ns().saturating_sub(since_ns));
        let deadline = Instant::now() + self.config.timeout.saturating_sub(waited);
        let mut prober = Prober::new(&self.config);
        let mut first = true;
        loop {
            let started = Instant::now();
            let limit = (started + patroni::PROBE_TIMEOUT).min(deadline);
            let result = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = self.wake.wait_for(|e| *e != episode) => return,
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
            if !lock(&self.core).verdict(episode, verdict, timed_out) {
                return;
            }
            let next = (started + self.config.interval).min(deadline);
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                _ = self.wake.wait_for(|e| *e != episode) => return,
                () = tokio::time::sleep_until(next) => {}
            }
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
