//! A real repmgr 5.3.3 cluster (Debian's repmgr and repmgrd) moves the VIP: three PostgreSQL 15
//! nodes in network namespaces, repmgrd with `failover=automatic` and short timers, sshd on every
//! node for the switchover, and vip-agent on each node in repmgr mode as `docs/repmgr.md`
//! prescribes, with its default intervals. A client writes through the VIP 15 times a second
//! (a new connection each time), watches every node's role on its own address, and probes ARP
//! for the VIP every 20 ms. Harness and scenarios: `vip_tests::repmgr`. Subnet 140.
//!
//! Scenarios, in order, on one cluster: agents started on the running cluster (bootstrap from
//! repmgr's metadata); then one pass ([`RepmgrCluster::pass`]): the primary's agent restarted;
//! the primary's PostgreSQL restarted (no failover: repmgr's metadata confirms it again);
//! `repmgr standby switchover`; the new primary's postmaster SIGKILLed (repmgrd promotes a
//! standby); that crashed old primary started again with `pg_ctl start` (it must stay fenced),
//! then rejoined; the primary cut off from the other database nodes (nft), then healed and
//! rejoined.
//!
//! Asserted over the whole run: no connection through the VIP reaches a server in recovery, no
//! write commits on a node after another node was seen primary on a newer timeline, no ARP probe
//! is answered by two MACs; after each trigger the VIP takes writes on the right node within the
//! harness's bounds (20 s for a start or switchover, 60 s for a failover: repmgrd itself needs
//! 5 × 3 s to give up on a primary).
//!
//! Needs root, postgresql-15, postgresql-15-repmgr, openssh-server and nftables (`cargo xtask
//! setup`); skips loudly otherwise and fails under CI.

use std::time::Instant;

use vip_tests::repmgr::{RepmgrCluster, require_repmgr};

const SUBNET: u8 = 140;

#[test]
fn a_real_repmgr_cluster_moves_the_vip_with_one_answering_node() {
    let test = "a_real_repmgr_cluster_moves_the_vip_with_one_answering_node";
    let Some(installation) = require_repmgr(test) else {
        return;
    };
    let started = Instant::now();
    let mut c = RepmgrCluster::new(installation, SUBNET, 3, &vip_tests::agent_binary());
    eprintln!("cluster built in {:.1?}", started.elapsed());
    let client = c.start_client();
    let mut results = vec![c.bootstrap(&client)];
    results.extend(c.pass(&client));
    let view = client.finish();
    let whole = view.outcome(0, u64::MAX, None);
    let summary = whole.line("whole run");
    eprintln!("{summary}\nreal-repmgr test took {:.0?}", started.elapsed());
    let diagnostics = c.diagnostics();
    drop(c);
    let lines: Vec<String> = results.iter().flat_map(|r| r.lines()).collect();
    assert!(
        whole.in_recovery == 0 && whole.stale_writes == 0 && whole.double_probes == 0,
        "{summary}\n{}\n{diagnostics}",
        lines.join("\n")
    );
}

/// The benchmark's repmgr section (`vip-bench --repmgr-passes N` writes it into BENCHMARKS.md):
/// `VIP_REPMGR_PASSES` passes (default 3) on subnet 141, printed as markdown.
#[test]
#[ignore = "several minutes; run it for the BENCHMARKS.md section: cargo test --test repmgr_real -- --ignored"]
fn repmgr_bench_section() {
    let Some(installation) = require_repmgr("repmgr_bench_section") else {
        return;
    };
    let passes = std::env::var("VIP_REPMGR_PASSES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let bench = vip_tests::repmgr::bench(installation, passes, 141, &vip_tests::agent_binary());
    println!("{}", bench.markdown());
}
