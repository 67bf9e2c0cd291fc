//! The pure state machine of the repmgr leader source: role events and PostgreSQL checks in,
//! [`LeaderState`]s out. No I/O, so the rules are unit-tested.

use std::time::Duration;

use super::events::{EventClass, classify};
use super::protocol::EventRequest;
use crate::leader::{LeaderState, Reason, Via};

/// This node's role as the last accepted role event (or the last check) left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// No role event yet, and nothing persisted: fenced.
    Unknown,
    /// A promoting event: answer while the local PostgreSQL confirms it is not in recovery.
    Primary,
    /// A demoting event, or PostgreSQL seen in recovery: fenced.
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
        }
    }
}

/// What an event did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A role event about this node, applied. `publish`: the state changed and must be handed
    /// out; `check`: ask PostgreSQL now (a promotion waits for its confirmation).
    Applied {
        class: EventClass,
        role: Role,
        publish: bool,
        check: bool,
    },
    /// Nothing changed.
    Ignored(Ignored),
}

/// One answer of `SELECT pg_is_in_recovery()` (or why there was none, including no answer within
/// the check timeout).
pub use crate::pg::Recovery as Check;

/// What a check did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckEffect {
    /// Hand the state out.
    pub publish: bool,
    /// The role changed (PostgreSQL in recovery): persist it.
    pub persist: bool,
    /// The answer was older than the last role event and was dropped.
    pub stale: bool,
}

/// The state machine.
#[derive(Debug)]
pub struct Tracker {
    node_id: u32,
    validity: Duration,
    role: Role,
    /// `CLOCK_MONOTONIC` ns of the last role change: a check sent before it is stale.
    role_changed_at_ns: u64,
    /// Role events applied (the published `revision`).
    events: i64,
    state: LeaderState,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Tracker {
    /// `validity`: how long one successful check keeps the VIP answering (from the moment the
    /// check was sent). `restored`: the role persisted by a previous run, if any; a restored
    /// primary still waits for its first successful check.
    #[must_use]
    pub fn new(node_id: u32, validity: Duration, restored: Option<Role>, now_ns: u64) -> Self {
        Self {
            node_id,
            validity,
            role: restored.unwrap_or(Role::Unknown),
            role_changed_at_ns: now_ns,
            events: 0,
            state: LeaderState::startup(now_ns),
        }
    }

    #[must_use]
    pub fn state(&self) -> &LeaderState {
        &self.state
    }

    #[must_use]
    pub fn role(&self) -> Role {
        self.role
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
        if !request.success {
            return Decision::Ignored(Ignored::Failed);
        }
        self.events += 1;
        match class {
            EventClass::Primary => {
                let was_primary = self.role == Role::Primary;
                self.role = Role::Primary;
                if was_primary && self.state.primary {
                    // Already following as primary (e.g. `primary_register --force`): the
                    // deadline of the last check stays; nothing to hand out.
                    self.state.revision = self.events;
                    return Decision::Applied {
                        class,
                        role: self.role,
                        publish: false,
                        check: true,
                    };
                }
                self.role_changed_at_ns = now_ns;
                self.state = LeaderState {
                    primary: true,
                    // Not before PostgreSQL says it takes writes.
                    safe_until_ns: 0,
                    revision: self.events,
                    lease_id: 0,
                    term: 0,
                    reason: Reason::Ours { via: Via::Watch },
                    observed_at_ns: now_ns,
                };
            }
            EventClass::NotPrimary | EventClass::Neutral => {
                self.role = Role::NotPrimary;
                self.role_changed_at_ns = now_ns;
                self.state = LeaderState {
                    primary: false,
                    safe_until_ns: 0,
                    revision: self.events,
                    lease_id: 0,
                    term: 0,
                    reason: Reason::OtherValue { via: Via::Watch },
                    observed_at_ns: now_ns,
                };
            }
        }
        Decision::Applied {
            class,
            role: self.role,
            publish: true,
            check: self.role == Role::Primary,
        }
    }

    /// Apply the answer to a check sent at `t_sent_ns` and received at `now_ns`.
    pub fn check(&mut self, t_sent_ns: u64, check: &Check, now_ns: u64) -> CheckEffect {
        if t_sent_ns < self.role_changed_at_ns {
            return CheckEffect {
                stale: true,
                ..CheckEffect::default()
            };
        }
        let startup = self.state.reason == Reason::Startup;
        match (self.role, check) {
            (Role::Primary, Check::NotInRecovery) => {
                self.state = LeaderState {
                    primary: true,
                    safe_until_ns: t_sent_ns.saturating_add(ns(self.validity)),
                    revision: self.events,
                    lease_id: 0,
                    term: 0,
                    reason: Reason::Confirmed,
                    observed_at_ns: now_ns,
                };
                CheckEffect {
                    publish: true,
                    ..CheckEffect::default()
                }
            }
            (Role::Primary, Check::InRecovery) => {
                self.role = Role::NotPrimary;
                self.role_changed_at_ns = now_ns;
                self.state = LeaderState {
                    primary: false,
                    safe_until_ns: 0,
                    revision: self.events,
                    lease_id: 0,
                    term: 0,
                    reason: Reason::OtherValue {
                        via: Via::Confirmation,
                    },
                    observed_at_ns: now_ns,
                };
                CheckEffect {
                    publish: true,
                    persist: true,
                    stale: false,
                }
            }
            (_, Check::Failed(_)) => {
                // No renewal: the deadline runs out by itself in the data plane. Published once
                // per outage, for the metrics and the startup notification.
                let first = self.state.reason != Reason::EtcdUnreachable;
                self.state.reason = Reason::EtcdUnreachable;
                self.state.observed_at_ns = now_ns;
                CheckEffect {
                    publish: first,
                    ..CheckEffect::default()
                }
            }
            (Role::Unknown | Role::NotPrimary, _) => {
                // Not primary, and PostgreSQL answers: say so once after startup or an outage.
                let publish = startup || self.state.reason == Reason::EtcdUnreachable;
                if publish {
                    self.state = LeaderState {
                        primary: false,
                        safe_until_ns: 0,
                        revision: self.events,
                        lease_id: 0,
                        term: 0,
                        reason: Reason::OtherValue { via: Via::Read },
                        observed_at_ns: now_ns,
                    };
                }
                CheckEffect {
                    publish,
                    ..CheckEffect::default()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ev(node: u32, event: &str, success: bool) -> EventRequest {
        EventRequest {
            node_id: node,
            event: event.to_owned(),
            success,
            timestamp: String::new(),
            details: String::new(),
        }
    }

    fn tracker() -> Tracker {
        Tracker::new(2, Duration::from_secs(3), None, 10 * S)
    }

    #[test]
    fn promotion_answers_only_after_a_check_and_for_the_validity() {
        let mut t = tracker();
        let d = t.event(&ev(2, "standby_promote", true), 11 * S);
        assert!(matches!(
            d,
            Decision::Applied {
                class: EventClass::Primary,
                publish: true,
                check: true,
                ..
            }
        ));
        assert!(t.state().primary);
        assert!(!t.state().is_safe_at(11 * S), "no answer before a check");
        // A check sent before the event is stale, whatever it says.
        let stale = t.check(10 * S, &Check::NotInRecovery, 11 * S + 1);
        assert!(stale.stale && !stale.publish);
        assert!(!t.state().is_safe_at(11 * S + 2));
        let e = t.check(12 * S, &Check::NotInRecovery, 12 * S + 5);
        assert!(e.publish && !e.persist);
        assert_eq!(t.state().safe_until_ns, 15 * S, "t_sent + validity");
        assert!(t.state().is_safe_at(15 * S - 1));
        assert!(!t.state().is_safe_at(15 * S));
    }

    #[test]
    fn failed_checks_do_not_renew_and_recovery_fences_at_once() {
        let mut t = tracker();
        t.event(&ev(2, "repmgrd_failover_promote", true), 11 * S);
        t.check(12 * S, &Check::NotInRecovery, 12 * S);
        let e = t.check(13 * S, &Check::Failed("timeout".to_owned()), 14 * S);
        assert!(e.publish, "the first failure is published");
        assert_eq!(t.state().safe_until_ns, 15 * S, "not renewed, not cut");
        assert_eq!(t.state().reason, Reason::EtcdUnreachable);
        let e = t.check(14 * S, &Check::Failed("timeout".to_owned()), 14 * S);
        assert!(!e.publish, "once per outage");
        assert!(!t.state().is_safe_at(15 * S));
        // Back, still primary: renewed again.
        t.check(16 * S, &Check::NotInRecovery, 16 * S);
        assert!(t.state().is_safe_at(18 * S));
        let e = t.check(17 * S, &Check::InRecovery, 17 * S);
        assert!(e.publish && e.persist);
        assert!(!t.state().primary && t.state().safe_until_ns == 0);
        assert_eq!(t.role(), Role::NotPrimary);
        // Recovery ended by someone else: no answer without a new promoting event.
        t.check(18 * S, &Check::NotInRecovery, 18 * S);
        assert!(!t.state().is_safe_at(18 * S + 1));
    }

    /// `repmgr standby switchover` on the promoted node, in repmgr's order (repmgr's
    /// `do_standby_switchover`): its internal promotion reports `standby_promote`, then the node
    /// reports `standby_switchover` with `%s` = 0 when only the former primary's `node rejoin`
    /// failed. The promoted node is the primary either way and keeps answering.
    #[test]
    fn a_switchover_whose_rejoin_failed_keeps_the_promoted_node_answering() {
        let mut t = tracker();
        t.event(&ev(2, "standby_promote", true), 11 * S);
        t.check(12 * S, &Check::NotInRecovery, 12 * S);
        assert!(t.state().is_safe_at(13 * S));
        assert_eq!(
            t.event(&ev(2, "standby_switchover", false), 13 * S),
            Decision::Ignored(Ignored::Failed)
        );
        assert!(t.state().primary && t.state().is_safe_at(13 * S));
        // The successful form changes nothing either: already primary, the deadline stays.
        let d = t.event(&ev(2, "standby_switchover", true), 13 * S);
        assert!(matches!(
            d,
            Decision::Applied {
                class: EventClass::Primary,
                publish: false,
                ..
            }
        ));
        assert_eq!(t.state().safe_until_ns, 15 * S);
    }

    #[test]
    fn demotion_fences_at_once_and_other_events_change_nothing() {
        let mut t = tracker();
        t.event(&ev(2, "standby_switchover", true), 11 * S);
        t.check(12 * S, &Check::NotInRecovery, 12 * S);
        assert!(t.state().is_safe_at(13 * S));
        for (e, why) in [
            (ev(3, "standby_follow", true), Ignored::OtherNode(3)),
            (ev(2, "standby_follow", false), Ignored::Failed),
            (ev(2, "repmgrd_upstream_disconnect", true), Ignored::Neutral),
            (ev(2, "repmgrd_local_disconnect", true), Ignored::Neutral),
            (ev(2, "child_node_disconnect", true), Ignored::Neutral),
            (ev(2, "bdr_failover", true), Ignored::Unknown),
        ] {
            assert_eq!(t.event(&e, 13 * S), Decision::Ignored(why), "{e:?}");
            assert!(t.state().is_safe_at(13 * S), "{e:?} moved the VIP");
        }
        let d = t.event(&ev(2, "node_rejoin", true), 13 * S);
        assert!(matches!(
            d,
            Decision::Applied {
                class: EventClass::NotPrimary,
                role: Role::NotPrimary,
                publish: true,
                check: false
            }
        ));
        assert!(!t.state().primary && t.state().safe_until_ns == 0);
        // A check in flight during the demotion cannot bring it back.
        t.check(12 * S + 1, &Check::NotInRecovery, 13 * S + 1);
        assert!(!t.state().is_safe_at(13 * S + 2));
        assert_eq!(t.state().revision, 2);
    }

    #[test]
    fn a_repeated_promotion_keeps_the_deadline_and_a_restored_primary_waits_for_a_check() {
        let mut t = tracker();
        t.event(&ev(2, "standby_promote", true), 11 * S);
        t.check(12 * S, &Check::NotInRecovery, 12 * S);
        let d = t.event(&ev(2, "primary_register", true), 13 * S);
        assert!(matches!(d, Decision::Applied { publish: false, .. }));
        assert!(t.state().is_safe_at(14 * S));

        let mut r = Tracker::new(2, Duration::from_secs(3), Some(Role::Primary), 10 * S);
        assert!(!r.state().is_safe_at(10 * S));
        assert_eq!(r.state().reason, Reason::Startup);
        assert!(r.check(11 * S, &Check::NotInRecovery, 11 * S).publish);
        assert!(r.state().is_safe_at(12 * S));

        let mut n = Tracker::new(2, Duration::from_secs(3), None, 10 * S);
        let e = n.check(11 * S, &Check::NotInRecovery, 11 * S);
        assert!(e.publish, "the first answer ends the startup state");
        assert!(!n.state().primary);
        assert_ne!(n.state().reason, Reason::Startup);
        assert!(!n.check(12 * S, &Check::NotInRecovery, 12 * S).publish);
    }
}
