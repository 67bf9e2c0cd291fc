//! Load: about 20 s of ARP flood from the client namespace (VIP, unowned addresses, the nodes' own
//! addresses) at the highest rate one sender thread reaches, while the VIP flips four times
//! between two nodes running the real agent (see `vip_tests::flood`). Every check of the run must
//! hold: correct answers (outside each flip's settle window only the key's node answers; nothing
//! answers an unowned address; every reply is well formed), counters that add up against what was
//! sent and read, agents that keep serving `/metrics` and follow a final switchover, and a ping to
//! node 1's own address that is answered during the flood. The measured rates and ping latency
//! (idle vs flood) are printed, not asserted.
//!
//! `VIP_KEEP_LOGS=1` keeps the agents' logs; `VIP_FLOOD_QDISC_BYPASS=0` sends through the qdisc
//! layer instead of bypassing it.

use std::time::Duration;

use vip_tests::{
    flood::{self, FloodConfig},
    require_privileges,
};

/// Flood time; with setup, the baseline ping and the final switchover the test takes about 35 s.
const FLOOD: Duration = Duration::from_secs(20);

#[test]
fn arp_flood_during_switchovers_keeps_answers_counters_and_agents_right() {
    if !require_privileges("arp_flood_during_switchovers_keeps_answers_counters_and_agents_right") {
        return;
    }
    let config = FloodConfig {
        qdisc_bypass: std::env::var("VIP_FLOOD_QDISC_BYPASS").map_or(true, |v| v != "0"),
        ..FloodConfig::new(&vip_tests::agent_binary(), 72, FLOOD)
    };
    let report = flood::run(&config);
    eprintln!("{}", report.summary());
    eprintln!("{}", report.markdown());

    assert!(
        report.violations.is_empty(),
        "violations:\n{}",
        report.summary()
    );

    // The run exercised what it claims to: otherwise zero violations would prove nothing.
    assert_eq!(report.flips.len(), config.flips, "{}", report.summary());
    assert!(
        report.frames_sent >= 100_000,
        "the flood hardly sent anything\n{}",
        report.summary()
    );
    assert!(
        report.vip_requests > 0 && report.unowned_requests > 0 && report.own_requests > 0,
        "every kind of request was sent\n{}",
        report.summary()
    );
    assert!(
        report.nodes.iter().all(|n| n.vip_replies > 0),
        "both nodes answered for the VIP during the flood\n{}",
        report.summary()
    );
    assert!(
        report.nodes.iter().all(|n| n.own_replies > 0),
        "both nodes' kernels answered for their own address\n{}",
        report.summary()
    );
    assert_eq!(
        report.periods.len(),
        config.flips + 1,
        "one stable period per holder"
    );
    assert!(
        report.periods.iter().all(|p| p.requests > 0),
        "every stable period was checked\n{}",
        report.summary()
    );
    assert!(
        report.ping_idle.received > 0,
        "the idle baseline ping was answered\n{}",
        report.summary()
    );
}
