use super::*;
use crate::repmgr::view::{Contradiction, View};

const S: u64 = 1_000_000_000;
const PM: Postmaster = Postmaster(1_000);
const RESTARTED: Postmaster = Postmaster(2_000);

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
    Tracker::new(2, Duration::from_secs(3), Duration::from_secs(5), 10 * S)
}

fn primary(pm: Postmaster) -> Status {
    Status::Primary {
        postmaster: pm,
        timeline: 3,
    }
}

fn view(votes: usize, reachable: usize, contradiction: Option<Contradiction>) -> View {
    View {
        nodes: 3,
        reachable,
        votes,
        contradiction,
        unreachable: Vec::new(),
    }
}

fn confirming() -> Result<View, String> {
    Ok(view(3, 2, None))
}

/// A tracker answering as node 2's primary since `at` (promoted, first check bound `PM`).
fn answering(at: u64) -> Tracker {
    let mut t = tracker();
    t.event(&ev(2, "standby_promote", true), at);
    t.status(at + 1, &primary(PM), at + 2);
    assert!(t.state().is_safe_at(at + 3));
    t
}

#[test]
fn a_promotion_answers_only_after_a_check_and_for_the_validity() {
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
    assert!(
        t.state().primary && !t.state().is_safe_at(11 * S),
        "no answer before a check"
    );
    // A check sent before the event is stale, whatever it says.
    let stale = t.status(10 * S, &primary(PM), 11 * S + 1);
    assert!(stale.stale && !stale.publish);
    let e = t.status(12 * S, &primary(PM), 12 * S + 5);
    assert!(e.publish);
    assert_eq!(e.persist, Some(Role::Primary));
    assert_eq!(
        t.standing(),
        Standing::Confirmed(PM),
        "bound to that postmaster"
    );
    assert_eq!(t.state().safe_until_ns, 15 * S, "t_sent + validity");
    assert!(t.state().is_safe_at(15 * S - 1) && !t.state().is_safe_at(15 * S));
    assert!(t.wants_rounds());
}

/// Issue 19: a switchover's old primary kept answering until the deadline of its last check
/// although its PostgreSQL was shutting down. A definitive "not serving" fences at once.
#[test]
fn postgres_shutting_down_fences_at_once() {
    let mut t = answering(11 * S);
    let e = t.status(
        12 * S,
        &Status::Down("the database system is shutting down (57P03)".to_owned()),
        12 * S + 1,
    );
    assert!(e.publish);
    assert!(
        !t.state().is_safe_at(12 * S + 2),
        "fenced before the deadline"
    );
    assert!(
        e.notes
            .iter()
            .any(|n| n.level == Level::Warn && n.message.contains("shutting down"))
    );
    assert!(!t.wants_rounds());
}

/// Issue 19: the crashed old primary, started again, took the VIP back with its first check
/// (`pg_is_in_recovery() = false`) and answered next to the new primary for 19 s. A new
/// postmaster start time drops repmgr's word: fenced until repmgr's nodes confirm it.
#[test]
fn a_restarted_postgres_stays_fenced_until_repmgr_confirms_it() {
    let mut t = answering(11 * S);
    t.status(
        12 * S,
        &Status::Down("connection refused".to_owned()),
        12 * S + 1,
    );
    let e = t.status(30 * S, &primary(RESTARTED), 30 * S + 1);
    assert_eq!(t.standing(), Standing::Unconfirmed);
    assert!(!t.state().is_safe_at(30 * S + 2));
    assert!(
        e.notes.iter().any(|n| n.message.contains("restarted")),
        "{e:?}"
    );
    for i in 31..40 {
        t.status(i * S, &primary(RESTARTED), i * S + 1);
        assert!(
            !t.state().is_safe_at(i * S + 2),
            "a check alone never brings it back"
        );
    }
    // Another node is the primary on a newer timeline: not the primary, said so.
    let newer = Contradiction::NewerPrimary {
        node: 1,
        timeline: 4,
        ours: Some(3),
    };
    let e = t.view(40 * S, &Ok(view(1, 1, Some(newer))), 40 * S + 1);
    assert_eq!(t.standing(), Standing::NotPrimary);
    assert!(
        e.notes
            .iter()
            .any(|n| n.message.contains("node 1 is a primary on timeline 4"))
    );
    t.status(41 * S, &primary(RESTARTED), 41 * S + 1);
    assert!(!t.state().is_safe_at(41 * S + 2));
    // A restart of the real primary is confirmed by its standbys, and answers again.
    let mut t = answering(11 * S);
    t.status(20 * S, &primary(RESTARTED), 20 * S + 1);
    let e = t.view(21 * S, &confirming(), 21 * S + 1);
    assert!(e.check_now && e.persist == Some(Role::Primary), "{e:?}");
    assert_eq!(t.standing(), Standing::Confirmed(RESTARTED));
    t.status(21 * S + 2, &primary(RESTARTED), 21 * S + 3);
    assert!(t.state().is_safe_at(22 * S));
}

#[test]
fn an_agent_started_on_a_running_cluster_answers_once_repmgr_confirms() {
    let mut t = tracker();
    assert_eq!(t.state().cause, Cause::Startup);
    let e = t.status(11 * S, &primary(PM), 11 * S + 1);
    assert!(e.publish, "the first answer ends the startup state");
    assert!(
        !t.state().is_safe_at(11 * S + 2),
        "PostgreSQL alone is not repmgr's word"
    );
    assert!(t.wants_rounds());
    // Not enough nodes reachable: nothing.
    let e = t.view(12 * S, &Ok(view(1, 0, None)), 12 * S + 1);
    assert!(!e.check_now && !t.state().is_safe_at(12 * S + 2));
    assert!(
        e.notes.iter().any(|n| n.message.contains("staying fenced")),
        "{e:?}"
    );
    let e = t.view(13 * S, &Ok(view(1, 0, None)), 13 * S + 1);
    assert!(e.notes.is_empty(), "the same refusal is logged once: {e:?}");
    // A majority names it.
    let e = t.view(14 * S, &confirming(), 14 * S + 1);
    assert!(e.check_now);
    t.status(14 * S + 2, &primary(PM), 14 * S + 3);
    assert!(t.state().is_safe_at(15 * S));
    // A standby stays fenced whatever a round would say: it asks for none.
    let mut s = tracker();
    let e = s.status(11 * S, &Status::Standby { postmaster: PM }, 11 * S + 1);
    assert!(e.publish && !s.wants_rounds());
    assert_eq!(s.standing(), Standing::NotPrimary);
}

#[test]
fn a_check_without_an_answer_renews_nothing_and_recovery_fences() {
    let mut t = answering(11 * S);
    let deadline = t.state().safe_until_ns;
    let e = t.status(
        12 * S,
        &Status::Unknown("no answer within 1000 ms".to_owned()),
        13 * S,
    );
    assert!(e.publish, "the first failure is published");
    assert_eq!(t.state().safe_until_ns, deadline, "not renewed, not cut");
    assert_eq!(t.state().cause, Cause::Unreachable);
    let e = t.status(13 * S, &Status::Unknown("again".to_owned()), 14 * S);
    assert!(!e.publish, "once per outage");
    assert!(t.expired(deadline).is_some_and(|w| w.contains("again")));
    // Back, same postmaster: renewed.
    t.status(15 * S, &primary(PM), 15 * S);
    assert!(t.state().is_safe_at(17 * S));
    assert_eq!(t.expired(15 * S), None);
    let e = t.status(16 * S, &Status::Standby { postmaster: PM }, 16 * S);
    assert!(e.publish && e.persist == Some(Role::NotPrimary));
    assert!(!t.state().primary && t.state().safe_until_ns == 0);
    // Out of recovery again without repmgr: fenced until repmgr says so.
    t.status(17 * S, &primary(PM), 17 * S);
    assert!(!t.state().is_safe_at(17 * S + 1));
}

/// Cut off from the other nodes, a primary renews only within the hold of its last quorum.
#[test]
fn without_a_majority_the_primary_stops_renewing_after_the_hold() {
    let mut t = answering(10 * S); // bound at 10 s + 1 ns: the hold runs from there
    for i in 11..=15 {
        t.view(i * S, &Ok(view(1, 0, None)), i * S + 1);
        t.status(i * S, &primary(PM), i * S + 1);
        assert!(t.state().is_safe_at(i * S + 2), "within the hold at {i} s");
    }
    let e = t.status(16 * S, &primary(PM), 16 * S + 1);
    assert!(
        e.notes
            .iter()
            .any(|n| n.level == Level::Warn && n.message.contains("not renewing")),
        "{e:?}"
    );
    assert_eq!(
        t.state().safe_until_ns,
        18 * S,
        "the 15 s check's deadline is the last one"
    );
    assert!(!t.state().is_safe_at(18 * S));
    assert!(t.expired(18 * S).is_some_and(|w| w.contains("no majority")));
    // A majority again: renewed by the next check.
    let e = t.view(19 * S, &Ok(view(1, 1, None)), 19 * S + 1);
    assert!(
        e.notes
            .iter()
            .any(|n| n.message.contains("reachable again"))
    );
    t.status(19 * S, &primary(PM), 19 * S + 1);
    assert!(t.state().is_safe_at(20 * S));
}

#[test]
fn a_newer_primary_found_by_a_round_fences_at_once() {
    let mut t = answering(11 * S);
    let newer = Contradiction::NewerPrimary {
        node: 3,
        timeline: 5,
        ours: Some(3),
    };
    let e = t.view(12 * S, &Ok(view(1, 1, Some(newer))), 12 * S + 1);
    assert!(e.publish && e.persist == Some(Role::NotPrimary));
    assert!(!t.state().is_safe_at(12 * S + 2));
    // Another node merely registered in a standby's copy (a switchover in progress) does not
    // fence a confirmed primary.
    let mut t = answering(11 * S);
    let other = Contradiction::OtherRegistered { by: 3, names: 1 };
    let e = t.view(12 * S, &Ok(view(1, 1, Some(other))), 12 * S + 1);
    assert!(!e.publish);
    t.status(12 * S, &primary(PM), 12 * S + 1);
    assert!(t.state().is_safe_at(13 * S));
}

#[test]
fn child_nodes_disconnect_command_fences_until_repmgr_confirms_again() {
    let mut t = answering(11 * S);
    // repmgr reports it with %s = 0 when its command failed: the loss was seen all the same.
    let d = t.event(&ev(2, "child_nodes_disconnect_command", false), 12 * S);
    assert!(matches!(
        d,
        Decision::Applied {
            class: EventClass::Recheck,
            publish: true,
            ..
        }
    ));
    assert!(!t.state().is_safe_at(12 * S + 1));
    t.status(13 * S, &primary(PM), 13 * S + 1);
    assert!(
        !t.state().is_safe_at(13 * S + 2),
        "the same postmaster is not enough"
    );
    t.view(14 * S, &confirming(), 14 * S + 1);
    t.status(14 * S + 2, &primary(PM), 14 * S + 3);
    assert!(t.state().is_safe_at(15 * S));
    // While fenced anyway, it changes nothing.
    let mut f = tracker();
    assert_eq!(
        f.event(&ev(2, "child_nodes_disconnect_command", true), 12 * S),
        Decision::Ignored(Ignored::AlreadyFenced)
    );
}

/// `repmgr standby switchover` on the promoted node, in repmgr's order (repmgr's
/// `do_standby_switchover`): its internal promotion reports `standby_promote`, then the node
/// reports `standby_switchover` with `%s` = 0 when only the former primary's `node rejoin`
/// failed. The promoted node is the primary either way and keeps answering.
#[test]
fn a_switchover_whose_rejoin_failed_keeps_the_promoted_node_answering() {
    let mut t = answering(11 * S);
    assert_eq!(
        t.event(&ev(2, "standby_switchover", false), 13 * S),
        Decision::Ignored(Ignored::Failed)
    );
    assert!(t.state().primary && t.state().is_safe_at(13 * S));
    // The successful form changes nothing either: already primary, the deadline stays.
    let deadline = t.state().safe_until_ns;
    let d = t.event(&ev(2, "standby_switchover", true), 13 * S);
    assert!(matches!(
        d,
        Decision::Applied {
            class: EventClass::Primary,
            publish: false,
            ..
        }
    ));
    assert_eq!(t.state().safe_until_ns, deadline);
    assert_eq!(t.standing(), Standing::Confirmed(PM));
}

#[test]
fn demotion_fences_at_once_and_other_events_change_nothing() {
    let mut t = answering(11 * S);
    for (e, why) in [
        (ev(3, "standby_follow", true), Ignored::OtherNode(3)),
        (ev(2, "standby_follow", false), Ignored::Failed),
        (ev(2, "repmgrd_upstream_disconnect", true), Ignored::Neutral),
        (ev(2, "repmgrd_local_disconnect", true), Ignored::Neutral),
        (ev(2, "child_node_disconnect", true), Ignored::Neutral),
        (ev(2, "bdr_failover", true), Ignored::Unknown),
    ] {
        assert_eq!(t.event(&e, 11 * S + 5), Decision::Ignored(why), "{e:?}");
        assert!(t.state().is_safe_at(11 * S + 6), "{e:?} moved the VIP");
    }
    let d = t.event(&ev(2, "repmgrd_standby_reconnect", true), 12 * S);
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
    let e = t.status(11 * S + 9, &primary(PM), 12 * S + 1);
    assert!(e.stale);
    assert!(!t.state().is_safe_at(12 * S + 2));
    assert_eq!(t.state().detail, 2);
}

#[test]
fn a_repeated_promotion_keeps_the_binding_and_the_deadline() {
    let mut t = answering(11 * S);
    let deadline = t.state().safe_until_ns;
    let d = t.event(&ev(2, "primary_register", true), 12 * S);
    assert!(matches!(
        d,
        Decision::Applied {
            publish: false,
            check: true,
            ..
        }
    ));
    assert_eq!(t.state().safe_until_ns, deadline);
    assert_eq!(t.standing(), Standing::Confirmed(PM));
}

/// A standby promoted while its agent was away (the promoting event lost): repmgr's metadata
/// names it, so a round confirms it without waiting for an event.
#[test]
fn a_lost_promoting_event_is_made_up_for_by_the_metadata() {
    let mut t = tracker();
    t.status(11 * S, &Status::Standby { postmaster: PM }, 11 * S + 1);
    t.status(12 * S, &primary(PM), 12 * S + 1);
    assert!(t.wants_rounds() && !t.state().is_safe_at(12 * S + 2));
    assert!(t.view(13 * S, &confirming(), 13 * S + 1).check_now);
    t.status(13 * S + 2, &primary(PM), 13 * S + 3);
    assert!(t.state().is_safe_at(14 * S));
    let e = t.view(10 * S, &confirming(), 14 * S);
    assert!(e.stale, "a round sent before the last change is dropped");
}
