//! The fault suite, short run: three nodes running the real agent on a netns cluster with a real
//! three-member etcd cluster, a client probing the VIP every millisecond, and about 90 s of seeded
//! chaos (key flips, deletes, SIGKILL / SIGSTOP / SIGTERM of agents, partitions from etcd, a node's
//! interface down and up, one etcd member killed and restarted, the whole etcd cluster killed and
//! restarted, addresses changed by hand, a foreign GARP), then every probe checked against the
//! invariants of `vip_tests::chaos`. Any violation fails the test. `cargo xtask soak` runs the same
//! for longer and writes RELIABILITY.md.
//!
//! Replay a run with `VIP_CHAOS_SEED=<seed printed below>`; `VIP_KEEP_LOGS=1` keeps the agents' logs.

use std::time::Duration;

use vip_tests::{
    chaos::{self, Action, ChaosConfig},
    require_privileges,
};

/// Fault injection time; with setup, the recovery phase (about 11 s) and the checks the test takes
/// about two minutes.
const CHAOS: Duration = Duration::from_secs(90);

#[test]
fn no_invariant_breaks_under_faults() {
    if !require_privileges("no_invariant_breaks_under_faults") {
        return;
    }
    let seed = chaos::seed_from_env();
    eprintln!(
        "fault suite: seed {seed} (replay with {}={seed})",
        chaos::SEED_ENV
    );
    let config = ChaosConfig {
        verbose: std::env::var_os("VIP_CHAOS_VERBOSE").is_some(),
        // Three members, so that one can be lost (`Action::EtcdMemberLoss`) without the quorum.
        etcd_members: 3,
        ..ChaosConfig::new(&vip_tests::agent_binary(), 70, 3, CHAOS, seed)
    };
    let report = chaos::run(&config);
    eprintln!("{}", report.summary());

    assert_eq!(
        report.total_violations(),
        0,
        "invariant violations (seed {seed}):\n{}\n{}",
        report.summary(),
        report.explain()
    );

    // The run exercised what it claims to: otherwise zero violations would prove nothing.
    let missing: Vec<&str> = Action::ALL
        .into_iter()
        .filter(|a| report.actions.get(a).copied().unwrap_or(0) == 0)
        .map(Action::label)
        .collect();
    assert!(
        missing.is_empty(),
        "actions never injected: {missing:?}\n{}",
        report.summary()
    );
    assert!(report.flips >= 10, "too few flips\n{}", report.summary());
    assert!(
        report.probes >= 20_000,
        "too few probes\n{}",
        report.summary()
    );
    assert!(
        report.answered >= report.probes / 5,
        "the VIP was hardly ever answered\n{}",
        report.summary()
    );
    assert!(
        report.answers_by_node.iter().filter(|n| **n > 0).count() >= 2,
        "the VIP never moved between nodes\n{}",
        report.summary()
    );
    assert!(
        report.holder_checks > 0 && report.deadline_checks > 0 && report.map_samples > 0,
        "the checks saw nothing\n{}",
        report.summary()
    );
    assert!(
        report.conflicts_counted + report.addresses_restored + report.addresses_removed > 0,
        "no drift or conflict was ever confirmed\n{}",
        report.summary()
    );
    assert!(
        report.links_intact > 0,
        "no interface came back up with its XDP program checked\n{}",
        report.summary()
    );
}
