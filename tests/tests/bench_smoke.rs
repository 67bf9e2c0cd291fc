//! The benchmark's own smoke run, so `cargo xtask bench` cannot rot: a few switchovers and lease
//! expiries of each kind of system and a short idle window, through the same code, checked for
//! structure and for vip-agent's hard properties (never two MACs answering; an old holder is silent
//! once its lease has expired). Timings are reported by the benchmark, never asserted here.

use std::time::Duration;

use vip_tests::{
    agent_binary,
    bench::{Plan, System, arp_rtts, run_system},
    require_privileges,
};

const PLAN: Plan = Plan {
    switchovers: 2,
    expiries: 2,
    idle: Duration::from_secs(1),
};

#[test]
fn vip_agent_failovers_are_measured_and_never_overlap() {
    if !require_privileges("vip_agent_failovers_are_measured_and_never_overlap") {
        return;
    }
    let run = run_system(System::VipAgent, 51, PLAN, &agent_binary());
    let trials = &run.switchovers;
    assert_eq!(trials.len(), 2, "the warm-up is discarded, the rest kept");
    for t in trials {
        assert!(t.probes > 0);
        assert!(
            t.first_new_ns.is_some(),
            "the new holder answered within the window: {t:?}"
        );
        assert!(
            t.new_dataplane_ns.is_some() && t.old_dataplane_ns.is_some(),
            "data plane times from the agents' logs: {t:?}"
        );
        assert_eq!(t.overlap, 0, "probes answered by both nodes: {t:?}");
        assert_ne!(t.from, t.to);
    }
    assert_ne!(trials[0].to, trials[1].to, "directions alternate");

    assert_eq!(run.expiries.len(), 2);
    for e in &run.expiries {
        assert!(e.probes > 0);
        assert_eq!(
            e.old_answers_after_expiry, 0,
            "the old holder's deadline ends before its lease: {e:?}"
        );
        assert!(
            e.last_old_ns.is_some_and(|t| t < 0),
            "the old holder answered before the expiry and went silent before it: {e:?}"
        );
        assert!(e.first_new_ns.is_some(), "the new holder answered: {e:?}");
        assert_eq!(e.overlap, 0, "{e:?}");
    }
    assert_ne!(
        run.expiries[0].to, run.expiries[1].to,
        "directions alternate"
    );

    assert_eq!(run.idle.len(), 2, "one measurement per node");
    for u in &run.idle {
        assert!(u.window_ms >= 1000, "{u:?}");
        assert!(u.rss_kib > 0, "{u:?}");
    }
}

#[test]
fn vip_manager_failovers_are_measured() {
    if !require_privileges("vip_manager_failovers_are_measured") {
        return;
    }
    let run = run_system(
        System::VipManager { interval_ms: 100 },
        52,
        PLAN,
        &agent_binary(),
    );
    assert_eq!(run.switchovers.len(), 2);
    for t in &run.switchovers {
        assert!(t.probes > 0);
        assert!(
            t.first_new_ns.is_some(),
            "vip-manager's new holder answered within the window: {t:?}"
        );
    }
    assert_eq!(run.expiries.len(), 2);
    for e in &run.expiries {
        assert!(
            e.first_new_ns.is_some(),
            "vip-manager's new holder answered after the expiry: {e:?}"
        );
    }
    assert_eq!(run.idle.len(), 2);
}

#[test]
fn arp_round_trips_are_measured_for_kernel_and_xdp() {
    if !require_privileges("arp_round_trips_are_measured_for_kernel_and_xdp") {
        return;
    }
    let rtts = arp_rtts(53, 5);
    let labels: Vec<&str> = rtts.iter().map(|r| r.label).collect();
    assert_eq!(labels.len(), 5, "{labels:?}");
    for r in &rtts {
        // Every probe answered: the kernel with our program passing, and XDP_TX in both modes.
        assert_eq!(r.rtt_ns.len(), r.probes, "{}: {r:?}", r.label);
        assert!(r.rtt_ns.iter().all(|&t| t > 0), "{r:?}");
    }
}
