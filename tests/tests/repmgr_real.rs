//! A real repmgr 5.3.3 cluster (Debian's repmgr and repmgrd) moves the VIP: three PostgreSQL 15
//! nodes in network namespaces, repmgrd with `failover=automatic` and short timers, sshd on every
//! node for the switchover, and vip-agent on each node in repmgr mode as `docs/repmgr.md`
//! prescribes, with its default intervals. A client writes through the VIP 15 times a second
//! (a new connection each time), watches every node's role on its own address, and probes ARP
//! for the VIP every 20 ms. Harness: `vip_tests::repmgr`. Subnet 140.
//!
//! Scenarios, in order, on one cluster: agents started on the running cluster (bootstrap from
//! repmgr's metadata); the primary's agent restarted; the primary's PostgreSQL restarted (no
//! failover: repmgr's metadata confirms it again); `repmgr standby switchover`; the primary's postmaster SIGKILLed (repmgrd
//! promotes a standby); that crashed old primary started again with `pg_ctl start` (it must stay
//! fenced), then rejoined; the primary cut off from the other database nodes (nft), then healed
//! and rejoined.
//!
//! Asserted over the whole run: no connection through the VIP reaches a server in recovery, no
//! write commits on a node after another node was seen primary on a newer timeline, no ARP probe
//! is answered by two MACs; after each trigger the VIP takes writes on the new primary within
//! the bounds below (generous: repmgrd itself needs 5 × 3 s to give up on a primary).
//!
//! Needs root, postgresql-15, postgresql-15-repmgr, openssh-server and nftables (`cargo xtask
//! setup`); skips loudly otherwise and fails under CI.

use std::time::{Duration, Instant};

use vip_agent::clock::monotonic_ns;
use vip_tests::repmgr::{ClientRun, Outcome, RepmgrCluster, require_repmgr};

const SUBNET: u8 = 140;
/// Agents started on a running cluster: the primary answers within this.
const BOOTSTRAP_LIMIT: Duration = Duration::from_secs(20);
/// `repmgr standby switchover` started: the new primary takes writes within this.
const SWITCHOVER_LIMIT: Duration = Duration::from_secs(20);
/// Primary killed or cut off: repmgrd gives up after 5 × 3 s (+ connect timeouts), promotes, and
/// the VIP takes writes on the new primary within this.
const FAILOVER_LIMIT: Duration = Duration::from_secs(60);
/// How long a scenario is watched after its VIP moved.
const SETTLE: Duration = Duration::from_secs(3);

fn name(i: usize) -> String {
    format!("node{}", i + 1)
}

/// Wait until a write through the VIP committed on `node` after `after_ns`.
fn wait_read_write(
    client: &ClientRun,
    c: &RepmgrCluster,
    node: usize,
    after_ns: u64,
    limit: Duration,
) {
    let deadline = Instant::now() + limit;
    let want = name(node);
    loop {
        let view = client.snapshot();
        if view.attempts.iter().any(|a| {
            a.at_ns >= after_ns && a.committed.is_some() && a.node.as_deref() == Some(&want)
        }) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no write committed on {want} through the VIP within {limit:?}{}",
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The node other than `except` that becomes the only primary within `limit`.
fn wait_new_primary(c: &RepmgrCluster, except: usize, limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    loop {
        let p: Vec<usize> = c
            .primaries()
            .into_iter()
            .map(|(i, _)| i)
            .filter(|i| *i != except)
            .collect();
        if let [one] = p.as_slice() {
            return *one;
        }
        assert!(
            Instant::now() < deadline,
            "no new primary besides {} within {limit:?}{}",
            name(except),
            c.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Report {
    lines: Vec<String>,
    outcomes: Vec<(String, Outcome)>,
    marks: Vec<usize>,
}

impl Report {
    /// Start a scenario: the trigger time, and where the agents' logs end.
    fn start(&mut self, c: &RepmgrCluster) -> u64 {
        self.marks = c.log_marks();
        monotonic_ns()
    }

    fn scenario(
        &mut self,
        c: &RepmgrCluster,
        client: &ClientRun,
        label: &str,
        from: u64,
        expect: Option<usize>,
    ) {
        let view = client.snapshot();
        let expect_name = expect.map(name);
        let outcome = view.outcome(from, monotonic_ns(), expect_name.as_deref());
        let line = outcome.line(label);
        eprintln!("{line}");
        self.lines.push(line);
        for (on, line) in c.events_since(&self.marks) {
            let short: String = line
                .split_whitespace()
                .filter(|w| {
                    w.starts_with("event=")
                        || w.starts_with("node=")
                        || w.starts_with("node_id=")
                        || w.starts_with("success=")
                })
                .collect::<Vec<_>>()
                .join(" ");
            let verdict = if line.contains("event applied") {
                "applied"
            } else {
                "ignored"
            };
            let l = format!("    [agent {on}] {verdict} {short}");
            eprintln!("{l}");
            self.lines.push(l);
        }
        self.outcomes.push((label.to_owned(), outcome));
    }
}

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
    let mut report = Report {
        lines: Vec::new(),
        outcomes: Vec::new(),
        marks: Vec::new(),
    };

    // 1. Agents started on a running cluster: the primary answers from repmgr's metadata alone.
    let t = report.start(&c);
    for i in 0..c.nodes.len() {
        c.start_agent(i);
    }
    c.wait_agents_running();
    wait_read_write(&client, &c, 0, t, BOOTSTRAP_LIMIT);
    std::thread::sleep(SETTLE);
    report.scenario(&c, &client, "bootstrap", t, Some(0));

    // The primary's agent restarted: fenced at its SIGTERM, back once repmgr's metadata confirms.
    let t = report.start(&c);
    c.restart_agent(0);
    wait_read_write(&client, &c, 0, t, BOOTSTRAP_LIMIT);
    std::thread::sleep(SETTLE);
    report.scenario(&c, &client, "the primary's agent restarted", t, Some(0));

    // The primary's PostgreSQL restarted (a configuration change): fenced at the shutdown, and a
    // new postmaster answers only once repmgr's metadata confirms it (well before repmgrd would
    // fail over).
    let t = report.start(&c);
    c.pg_stop(0);
    c.pg_start(0);
    wait_read_write(&client, &c, 0, t, BOOTSTRAP_LIMIT);
    c.wait_healthy(0, Duration::from_secs(60));
    std::thread::sleep(SETTLE);
    report.scenario(
        &c,
        &client,
        "the primary's PostgreSQL restarted",
        t,
        Some(0),
    );

    // 2. Switchover to node2.
    let t = report.start(&c);
    c.switchover(1);
    wait_read_write(&client, &c, 1, t, SWITCHOVER_LIMIT);
    c.wait_primary(1, Duration::from_secs(30));
    c.wait_healthy(1, Duration::from_secs(60));
    std::thread::sleep(SETTLE);
    report.scenario(&c, &client, "switchover node1 -> node2", t, Some(1));

    // 3. node2's postmaster SIGKILLed: repmgrd promotes one of the others.
    let t = report.start(&c);
    c.pg_kill(1);
    let promoted = wait_new_primary(&c, 1, FAILOVER_LIMIT);
    wait_read_write(&client, &c, promoted, t, FAILOVER_LIMIT);
    std::thread::sleep(SETTLE);
    report.scenario(
        &c,
        &client,
        &format!(
            "kill node2's postmaster (repmgrd promotes {})",
            name(promoted)
        ),
        t,
        Some(promoted),
    );

    // 4. The crashed old primary started again as a user or systemd would: it is a primary on an
    // old timeline and must never answer; then repmgr's rejoin makes it a standby.
    let t = report.start(&c);
    c.pg_start(1);
    std::thread::sleep(Duration::from_secs(15));
    report.scenario(
        &c,
        &client,
        "restart of the crashed node2 (pg_ctl start)",
        t,
        Some(promoted),
    );
    c.rejoin(1, promoted);
    c.wait_primary(promoted, Duration::from_secs(30));
    c.wait_healthy(promoted, Duration::from_secs(60));

    // 5. The primary cut off from the other database nodes; the client still reaches it.
    let old = promoted;
    let t = report.start(&c);
    c.partition(old);
    let promoted = wait_new_primary(&c, old, FAILOVER_LIMIT);
    wait_read_write(&client, &c, promoted, t, FAILOVER_LIMIT);
    std::thread::sleep(SETTLE);
    report.scenario(
        &c,
        &client,
        &format!(
            "{} cut off from the other nodes ({} promoted)",
            name(old),
            name(promoted)
        ),
        t,
        Some(promoted),
    );
    c.heal(old);
    c.rejoin(old, promoted);
    c.wait_primary(promoted, Duration::from_secs(30));
    c.wait_healthy(promoted, Duration::from_secs(60));

    let view = client.finish();
    let whole = view.outcome(0, u64::MAX, None);
    let summary = whole.line("whole run");
    eprintln!("{summary}\nreal-repmgr test took {:.0?}", started.elapsed());
    let diagnostics = c.diagnostics();
    drop(c);
    assert!(
        whole.in_recovery == 0 && whole.stale_writes == 0 && whole.double_probes == 0,
        "{summary}\n{}\n{diagnostics}",
        report.lines.join("\n")
    );
}
