//! The benchmark's own smoke run, so `cargo xtask bench` cannot rot: a few switchovers of each kind
//! of system through the same code, checked for structure and for vip-agent's one hard property
//! (never two MACs answering). Timings are reported by the benchmark, never asserted here.

use vip_tests::{
    agent_binary,
    bench::{System, switchovers},
    require_privileges,
};

#[test]
fn vip_agent_switchovers_are_measured_and_never_overlap() {
    if !require_privileges("vip_agent_switchovers_are_measured_and_never_overlap") {
        return;
    }
    let trials = switchovers(System::VipAgent, 51, 2, &agent_binary());
    assert_eq!(trials.len(), 2, "the warm-up is discarded, the rest kept");
    for t in &trials {
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
}

#[test]
fn vip_manager_switchovers_are_measured() {
    if !require_privileges("vip_manager_switchovers_are_measured") {
        return;
    }
    let trials = switchovers(
        System::VipManager { interval_ms: 100 },
        52,
        2,
        &agent_binary(),
    );
    assert_eq!(trials.len(), 2);
    for t in &trials {
        assert!(t.probes > 0);
        assert!(
            t.first_new_ns.is_some(),
            "vip-manager's new holder answered within the window: {t:?}"
        );
    }
}
