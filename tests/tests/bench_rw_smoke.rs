//! The promotion benchmark's smoke run (`vip_tests::bench_rw`), so it cannot rot: a few Patroni-style
//! key moves with `pg_ctl promote` of a real standby in node2's namespace, with node2's promotion
//! gate off and `postgres`. It checks the behaviour only, never a timing:
//!
//! * gate `postgres`: node2 never answered for the VIP while PostgreSQL was (certainly) in
//!   recovery, no client write through the VIP was rejected as read-only, and a write through the
//!   VIP succeeded in every trial;
//! * gate off: the VIP answered no later than the first successful write, and the instrument does
//!   see node2 answering during recovery (the promotion only starts once the key is committed and
//!   nothing holds the VIP back), so the zero above is not vacuous.
//!
//! Needs root and Debian's postgresql-15 (`cargo xtask setup`); skips loudly otherwise, and under
//! CI a skip is a failure.

use vip_tests::{
    agent_binary,
    bench_rw::{GateSetting, postgres_available, run},
    require_privileges,
};

#[test]
fn the_postgres_gate_never_answers_before_the_standby_takes_writes() {
    let test = "the_postgres_gate_never_answers_before_the_standby_takes_writes";
    if !require_privileges(test) {
        return;
    }
    if !postgres_available() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
            || std::env::var(vip_tests::REQUIRE_PRIVILEGES).is_ok_and(|v| v == "1");
        assert!(!ci, "{test}: PostgreSQL is not installed; no skip under CI");
        eprintln!(
            "SKIPPED {test}: PostgreSQL is not installed (cargo xtask setup installs postgresql-15)"
        );
        return;
    }
    let report = run(2, 73, &agent_binary());
    println!("{}", report.markdown());
    for r in &report.runs {
        for t in &r.trials {
            println!("{}: {t:?}", r.gate.label());
        }
    }
    let by_gate = |gate| {
        &report
            .runs
            .iter()
            .find(|r| r.gate == gate)
            .expect("both configurations ran")
            .trials
    };

    let gated = by_gate(GateSetting::Postgres);
    assert_eq!(gated.len(), 2, "the warm-up is discarded, the rest kept");
    for t in gated {
        assert!(t.probes > 0);
        assert!(
            t.last_in_recovery_ns.is_some() && t.db_read_write_ns.is_some(),
            "the observer saw the standby in recovery, then read-write: {t:?}"
        );
        assert_eq!(
            t.answers_in_recovery, 0,
            "node2 answered for the VIP while PostgreSQL was in recovery: {t:?}"
        );
        assert_eq!(
            t.read_only_rejections, 0,
            "a client reached a read-only server through the VIP: {t:?}"
        );
        assert!(
            t.answers_ns.is_some() && t.read_write_ns.is_some(),
            "the VIP answered and took a write: {t:?}"
        );
    }

    let open = by_gate(GateSetting::Off);
    assert_eq!(open.len(), 2);
    for t in open {
        let (answers, rw) = (
            t.answers_ns.expect("node2 answered"),
            t.read_write_ns.expect("a write through the VIP succeeded"),
        );
        assert!(
            answers <= rw,
            "a write through the VIP succeeded before node2 answered ARP: {t:?}"
        );
    }
    assert!(
        open.iter().any(|t| t.answers_in_recovery > 0),
        "without the gate node2 should answer while PostgreSQL is still in recovery (the promotion \
         starts only after the key is committed); the instrument saw none: {open:?}"
    );
}
