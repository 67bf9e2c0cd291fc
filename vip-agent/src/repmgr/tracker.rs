//! The pure state machine of the repmgr leader source: role events, checks of the local
//! PostgreSQL and rounds of repmgr's view in, [`Leadership`]s and log notes out. No I/O, so the
//! rules are unit-tested.
//!
//! The VIP answers only while all of these hold:
//!
//! 1. repmgr's word makes this node the primary *for the postmaster that runs now*: a promoting
//!    event, bound to the postmaster the first check after it finds ([`Standing::Promoted`] →
//!    [`Standing::Confirmed`]), or a round of repmgr's metadata that confirms it
//!    ([`super::view::View::confirms`]). A new postmaster start time (PostgreSQL restarted), a
//!    `child_nodes_disconnect_command`, or an agent restart lose that word: fenced until a round
//!    (or a promoting event) gives it again.
//! 2. Each renewal comes from a check that found that postmaster not in recovery: the deadline is
//!    the check's send time + `validity`. PostgreSQL shut down, shutting down, starting up, in
//!    recovery, or restarted fences at once; a check without a usable answer renews nothing.
//! 3. A majority of repmgr's nodes was reachable ([`super::view::View::quorum`]) within `hold`
//!    before the check was sent; a round that finds another primary on a timeline at least as
//!    new fences at once.

use std::time::Duration;

use super::{
    events::{EventClass, classify},
    protocol::EventRequest,
    view::View,
};
use crate::{
    leadership::{Cause, Leadership},
    pg::{Postmaster, Status},
};

/// This node's role as the last accepted event (or check) left it: the state file's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Nothing known yet.
    Unknown,
    /// A promoting event, or repmgr's metadata, made this node the primary.
    Primary,
    /// A demoting event, PostgreSQL in recovery, or a newer primary elsewhere.
    NotPrimary,
}

impl Role {
    /// The word in the state file and in logs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Primary => "primary",
            Self::NotPrimary => "not-primary",
        }
    }

    /// Read back [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unknown" => Some(Self::Unknown),
            "primary" => Some(Self::Primary),
            "not-primary" => Some(Self::NotPrimary),
            _ => None,
        }
    }
}

/// Where this node stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// repmgr's word is missing or lost (startup, PostgreSQL restarted, child nodes lost): fenced
    /// until a round of repmgr's metadata confirms this node, or a promoting event.
    Unconfirmed,
    /// Not the primary: a demoting event, PostgreSQL in recovery, a newer primary elsewhere.
    /// Fenced; a round can still confirm it if its PostgreSQL leaves recovery under repmgr.
    NotPrimary,
    /// A promoting event: the first check sent after it binds the postmaster it finds.
    Promoted,
    /// The primary, for this postmaster.
    Confirmed(Postmaster),
}

/// Why an event changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// `%n` is another node: its events are its own agent's business.
    OtherNode(u32),
    /// `%s = 0`: the action failed, so it says nothing about the role (logged at warn).
    Failed,
    /// A connection-loss, reconnection or life-cycle event: never moves the VIP.
    Neutral,
    /// Not in [`super::events::EVENTS`].
    Unknown,
    /// A `recheck` event while this node was not answering anyway.
    AlreadyFenced,
}

impl Ignored {
    /// One sentence for the log and the reply.
    #[must_use]
    pub fn describe(&self, event: &str, own: u32) -> String {
        match self {
            Self::OtherNode(n) => {
                format!("{event} is about node {n}, this agent follows node {own}")
            }
            Self::Failed => {
                format!("{event} reports a failure (success = 0); the role is unchanged")
            }
            Self::Neutral => format!("{event} never moves the VIP"),
            Self::Unknown => {
                format!("{event} is not an event vip-agent knows; the role is unchanged")
            }
            Self::AlreadyFenced => {
                format!("{event}: node {own} is not answering for the VIP anyway")
            }
        }
    }
}

/// What an event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An event about this node, applied. `publish`: the state changed and must be handed out;
    /// `check`: ask PostgreSQL now (a promotion waits for its confirmation).
    Applied {
        class: EventClass,
        role: Role,
        publish: bool,
        check: bool,
    },
    /// Nothing changed.
    Ignored(Ignored),
}

/// How loud a [`Note`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// A log line in repmgr's terms, for the source to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub level: Level,
    pub message: String,
}

/// What a check or a round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    /// Hand the state out.
    pub publish: bool,
    /// The role changed: persist it.
    pub persist: Option<Role>,
    /// Check PostgreSQL now (a round confirmed this node: renew at once).
    pub check_now: bool,
    /// The answer was sent before the last role change and was dropped.
    pub stale: bool,
    pub notes: Vec<Note>,
}

impl Effect {
    fn note(&mut self, level: Level, message: impl Into<String>) {
        self.notes.push(Note {
            level,
            message: message.into(),
        });
    }
}

/// The local PostgreSQL as the last check found it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Local {
    NotYet,
    Primary {
        postmaster: Postmaster,
        timeline: u32,
    },
    Standby,
    Down,
    Unknown,
}

/// The state machine.
#[derive(Debug)]
pub struct Tracker {
    node_id: u32,
    validity: Duration,
    hold: Duration,
    standing: Standing,
    /// `CLOCK_MONOTONIC` ns of the last change of standing: an answer sent before it is stale.
    changed_at_ns: u64,
    /// Role events applied (the published [`Leadership::detail`]).
    events: i64,
    state: Leadership,
    local: Local,
    /// Send time of the last round with a quorum (or of the check that bound a promotion).
    last_quorum_ns: u64,
    /// Whether the missing quorum was logged (once per loss).
    quorum_lost: bool,
    /// The last reason a round did not confirm this node (logged when it changes).
    last_refusal: Option<String>,
    /// Why the deadline was not renewed, for the line logged when it passes.
    not_renewed: Option<String>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Tracker {
    /// `validity`: how long one successful check keeps the VIP answering (from the moment the
    /// check was sent); `hold`: how long a primary keeps renewing without a quorum. Every run
    /// starts [`Standing::Unconfirmed`]: a role persisted by an earlier run is no proof.
    #[must_use]
    pub fn new(node_id: u32, validity: Duration, hold: Duration, now_ns: u64) -> Self {
        Self {
            node_id,
            validity,
            hold,
            standing: Standing::Unconfirmed,
            changed_at_ns: now_ns,
            events: 0,
            state: Leadership::startup(now_ns),
            local: Local::NotYet,
            last_quorum_ns: 0,
            quorum_lost: false,
            last_refusal: None,
            not_renewed: None,
        }
    }

    #[must_use]
    pub fn state(&self) -> &Leadership {
        &self.state
    }

    #[must_use]
    pub const fn standing(&self) -> Standing {
        self.standing
    }

    /// The role word for logs and the state file.
    #[must_use]
    pub const fn role(&self) -> Role {
        match self.standing {
            Standing::Unconfirmed => Role::Unknown,
            Standing::NotPrimary => Role::NotPrimary,
            Standing::Promoted | Standing::Confirmed(_) => Role::Primary,
        }
    }

    /// Whether rounds of repmgr's view are needed: the local PostgreSQL takes writes (to confirm
    /// it, to keep the quorum, and to find a newer primary).
    #[must_use]
    pub const fn wants_rounds(&self) -> bool {
        matches!(self.local, Local::Primary { .. })
    }

    /// The local primary's timeline, when the last check found one.
    #[must_use]
    pub const fn timeline(&self) -> Option<u32> {
        match self.local {
            Local::Primary { timeline, .. } => Some(timeline),
            _ => None,
        }
    }

    /// Why the published deadline, now past, was not renewed (for the line logged at the
    /// deadline); `None` while answering or fenced explicitly.
    #[must_use]
    pub fn expired(&self, now_ns: u64) -> Option<String> {
        (self.state.primary && self.state.safe_until_ns != 0 && self.state.safe_until_ns <= now_ns)
            .then(|| {
                self.not_renewed
                    .clone()
                    .unwrap_or_else(|| "no check confirmed PostgreSQL in time".to_owned())
            })
    }

    fn set_standing(&mut self, standing: Standing, now_ns: u64) {
        if standing != self.standing {
            self.standing = standing;
            self.changed_at_ns = now_ns;
        }
    }

    /// Fenced now: not primary in the published state, deadline 0.
    fn fence(&mut self, cause: Cause, now_ns: u64) -> bool {
        let was = self.state;
        self.state = Leadership {
            primary: false,
            safe_until_ns: 0,
            detail: self.events,
            term: 0,
            cause,
            observed_at_ns: now_ns,
        };
        was.primary || was.safe_until_ns != 0 || was.cause == Cause::Startup
    }

    /// Apply one event received at `now_ns`.
    pub fn event(&mut self, request: &EventRequest, now_ns: u64) -> Decision {
        if request.node_id != self.node_id {
            return Decision::Ignored(Ignored::OtherNode(request.node_id));
        }
        let class = match classify(&request.event) {
            None => return Decision::Ignored(Ignored::Unknown),
            Some(EventClass::Neutral) => return Decision::Ignored(Ignored::Neutral),
            Some(class) => class,
        };
        // A recheck event reports what repmgrd saw, whether or not its command succeeded.
        if !request.success && class != EventClass::Recheck {
            return Decision::Ignored(Ignored::Failed);
        }
        match class {
            EventClass::Primary => {
                self.events += 1;
                if matches!(self.standing, Standing::Confirmed(_)) && self.state.primary {
                    // Already the primary (e.g. `primary register --force`): the binding and the
                    // deadline stay; ask at once all the same.
                    self.state.detail = self.events;
                    return Decision::Applied {
                        class,
                        role: Role::Primary,
                        publish: false,
                        check: true,
                    };
                }
                self.set_standing(Standing::Promoted, now_ns);
                self.changed_at_ns = now_ns;
                self.state = Leadership {
                    primary: true,
                    // Not before PostgreSQL says it takes writes.
                    safe_until_ns: 0,
                    detail: self.events,
                    term: 0,
                    cause: Cause::Ours,
                    observed_at_ns: now_ns,
                };
                Decision::Applied {
                    class,
                    role: Role::Primary,
                    publish: true,
                    check: true,
                }
            }
            EventClass::NotPrimary => {
                self.events += 1;
                self.set_standing(Standing::NotPrimary, now_ns);
                self.changed_at_ns = now_ns;
                let publish = self.fence(Cause::Lost, now_ns);
                Decision::Applied {
                    class,
                    role: Role::NotPrimary,
                    publish,
                    check: false,
                }
            }
            EventClass::Recheck => {
                if !matches!(self.standing, Standing::Promoted | Standing::Confirmed(_)) {
                    return Decision::Ignored(Ignored::AlreadyFenced);
                }
                self.events += 1;
                self.set_standing(Standing::Unconfirmed, now_ns);
                self.changed_at_ns = now_ns;
                let publish = self.fence(Cause::Lost, now_ns);
                Decision::Applied {
                    class,
                    role: Role::Unknown,
                    publish,
                    check: true,
                }
            }
            EventClass::Neutral => Decision::Ignored(Ignored::Neutral),
        }
    }

    /// Apply the local PostgreSQL's status from a check sent at `t_sent_ns`, received at
    /// `now_ns`.
    pub fn status(&mut self, t_sent_ns: u64, status: &Status, now_ns: u64) -> Effect {
        let mut effect = Effect::default();
        if t_sent_ns < self.changed_at_ns {
            effect.stale = true;
            return effect;
        }
        let startup = self.state.cause == Cause::Startup;
        match status {
            Status::Down(why) => {
                self.local = Local::Down;
                if self.fence(Cause::Lost, now_ns) {
                    effect.publish = true;
                    if !startup {
                        effect.note(
                            Level::Warn,
                            format!("fenced: PostgreSQL is not serving ({why})"),
                        );
                    }
                }
            }
            Status::Unknown(why) => {
                let first = self.local != Local::Unknown;
                self.local = Local::Unknown;
                self.not_renewed = Some(format!("the last PostgreSQL check failed: {why}"));
                // Not renewed: the deadline runs out in the data plane by itself. Published once
                // per outage, for the metrics and the startup notification.
                if first || self.state.cause == Cause::Startup {
                    self.state.cause = Cause::Unreachable;
                    self.state.observed_at_ns = now_ns;
                    effect.publish = true;
                    if self.state.primary {
                        effect.note(
                            Level::Warn,
                            format!("PostgreSQL check failed: the deadline is not renewed ({why})"),
                        );
                    }
                }
            }
            Status::Standby { .. } => {
                self.local = Local::Standby;
                if self.standing != Standing::NotPrimary {
                    let was = self.standing;
                    self.set_standing(Standing::NotPrimary, now_ns);
                    effect.persist = Some(Role::NotPrimary);
                    if matches!(was, Standing::Promoted | Standing::Confirmed(_)) {
                        effect.note(
                            Level::Warn,
                            "fenced: PostgreSQL is in recovery (a standby) although repmgr made \
                             this node the primary",
                        );
                    }
                }
                effect.publish = self.fence(Cause::Lost, now_ns);
            }
            Status::Primary {
                postmaster,
                timeline,
            } => {
                self.local = Local::Primary {
                    postmaster: *postmaster,
                    timeline: *timeline,
                };
                match self.standing {
                    Standing::Promoted => {
                        self.set_standing(Standing::Confirmed(*postmaster), now_ns);
                        self.last_quorum_ns = t_sent_ns;
                        self.renew(t_sent_ns, now_ns, &mut effect);
                    }
                    Standing::Confirmed(bound) if bound == *postmaster => {
                        self.renew(t_sent_ns, now_ns, &mut effect);
                    }
                    Standing::Confirmed(_) => {
                        self.set_standing(Standing::Unconfirmed, now_ns);
                        effect.persist = Some(Role::Unknown);
                        effect.publish = self.fence(Cause::Lost, now_ns);
                        effect.note(
                            Level::Warn,
                            "fenced: PostgreSQL was restarted (a new postmaster start time) since \
                             repmgr made this node the primary; waiting until repmgr's nodes \
                             confirm it is still the primary",
                        );
                    }
                    Standing::Unconfirmed | Standing::NotPrimary => {
                        effect.publish = self.fence(Cause::Lost, now_ns) && startup;
                    }
                }
            }
        }
        effect
    }

    /// A check confirmed the bound postmaster: renew, unless the quorum is older than the hold.
    fn renew(&mut self, t_sent_ns: u64, now_ns: u64, effect: &mut Effect) {
        let without_quorum = t_sent_ns.saturating_sub(self.last_quorum_ns);
        if without_quorum > ns(self.hold) {
            let why = format!(
                "no majority of repmgr's nodes reachable for {} ms (repmgr-quorum-hold {} ms)",
                without_quorum / 1_000_000,
                self.hold.as_millis()
            );
            if !self.quorum_lost {
                self.quorum_lost = true;
                effect.note(
                    Level::Warn,
                    format!("{why}: not renewing; the VIP goes silent at the deadline"),
                );
            }
            self.not_renewed = Some(why);
            return;
        }
        let was_answering = self.state.primary && self.state.cause == Cause::Confirmed;
        self.not_renewed = None;
        self.state = Leadership {
            primary: true,
            safe_until_ns: t_sent_ns.saturating_add(ns(self.validity)),
            detail: self.events,
            term: 0,
            cause: Cause::Confirmed,
            observed_at_ns: now_ns,
        };
        effect.publish = true;
        if !was_answering {
            effect.persist = Some(Role::Primary);
        }
    }

    /// Apply a round of repmgr's view sent at `t_sent_ns` (or why there was none).
    pub fn view(&mut self, t_sent_ns: u64, view: &Result<View, String>, now_ns: u64) -> Effect {
        let mut effect = Effect::default();
        if t_sent_ns < self.changed_at_ns {
            effect.stale = true;
            return effect;
        }
        let view = match view {
            Ok(v) => v,
            Err(why) => {
                self.refusal(&mut effect, format!("repmgr's view is unavailable: {why}"));
                return effect;
            }
        };
        if view.newer_primary() {
            let why = view
                .contradiction
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default();
            if self.standing != Standing::NotPrimary {
                let was = self.standing;
                self.set_standing(Standing::NotPrimary, now_ns);
                effect.persist = Some(Role::NotPrimary);
                effect.note(
                    if matches!(was, Standing::Confirmed(_) | Standing::Promoted) {
                        Level::Warn
                    } else {
                        Level::Info
                    },
                    format!("fenced, not the primary: {why}"),
                );
            }
            effect.publish = self.fence(Cause::Lost, now_ns);
            self.last_refusal = Some(why);
            return effect;
        }
        if matches!(self.standing, Standing::Confirmed(_)) {
            self.last_refusal = None;
        }
        if view.quorum() {
            self.last_quorum_ns = self.last_quorum_ns.max(t_sent_ns);
            if self.quorum_lost {
                self.quorum_lost = false;
                effect.note(
                    Level::Info,
                    format!(
                        "a majority of repmgr's nodes is reachable again: {}",
                        view.summary()
                    ),
                );
            }
        }
        if let (Standing::Unconfirmed | Standing::NotPrimary, Local::Primary { postmaster, .. }) =
            (self.standing, &self.local)
        {
            if view.confirms() {
                let postmaster = *postmaster;
                self.set_standing(Standing::Confirmed(postmaster), now_ns);
                self.last_quorum_ns = t_sent_ns;
                self.last_refusal = None;
                effect.check_now = true;
                effect.persist = Some(Role::Primary);
                effect.note(
                    Level::Info,
                    format!(
                        "repmgr's metadata confirms this node is the primary ({}); answering \
                         after the next PostgreSQL check",
                        view.summary()
                    ),
                );
            } else {
                self.refusal(&mut effect, view.summary());
            }
        }
        effect
    }

    /// Log why a round did not confirm this node (or failed), when the reason changed: at warn
    /// while answering (the hold runs out without rounds), else at info.
    fn refusal(&mut self, effect: &mut Effect, why: String) {
        if !matches!(self.local, Local::Primary { .. }) || self.last_refusal.as_ref() == Some(&why)
        {
            return;
        }
        if matches!(self.standing, Standing::Confirmed(_) | Standing::Promoted) {
            effect.note(
                Level::Warn,
                format!(
                    "{why}; the primary keeps answering only within repmgr-quorum-hold of the \
                     last majority"
                ),
            );
        } else {
            effect.note(
                Level::Info,
                format!(
                    "PostgreSQL takes writes here, but repmgr does not confirm this node as the \
                     primary: {why}; staying fenced"
                ),
            );
        }
        self.last_refusal = Some(why);
    }
}

#[cfg(test)]
mod tests;
