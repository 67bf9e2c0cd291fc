//! `dcs-type: repmgr` end to end: the real vip-agent binary on two nodes of one L2 segment, real
//! XDP, a raw-socket ARP prober on the client, a real PostgreSQL primary (run as `postgres` from a
//! temporary directory, unix socket only, which both agents reach from their namespaces), and
//! repmgr's events handed over by `vip-agent event`, as `event_notification_command` runs it.
//!
//! Nothing answers before a promoting event; the promoted node answers; a switchover (a demoting
//! event on the old primary, the new one's `standby_switchover`) moves the VIP; a connection-loss
//! event changes nothing; PostgreSQL stopped silences the primary at once. Subnet 43.
//!
//! Needs root and Debian's postgresql (`cargo xtask setup`); skips loudly otherwise, fails under
//! CI. Every process is stopped by PID, the namespaces and directories removed.

use std::{
    process::{Command, Output},
    time::Duration,
};

use vip_tests::{
    cluster::Cluster,
    eventually,
    postgres::{PgDir, require_postgres},
    require_privileges,
};

const SUBNET: u8 = 43;
const PROBE: Duration = Duration::from_millis(150);

/// `vip-agent event` for node `i`'s agent (its socket), as repmgr would run it.
fn event(c: &Cluster, i: usize, node_id: u32, name: &str) -> Output {
    let socket = c.dir.join(format!("repmgr{i}.sock"));
    let out = Command::new(c.agent_bin())
        .args(["event", "--socket", socket.to_str().expect("utf-8")])
        .args([
            &node_id.to_string(),
            name,
            "1",
            "2026-12-02 00:00:00+00",
            "test",
        ])
        .output()
        .expect("run vip-agent event");
    assert!(
        out.status.success(),
        "event {name} to node {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn repmgr_events_move_the_vip_and_postgres_confirms_it() {
    let test = "repmgr_events_move_the_vip_and_postgres_confirms_it";
    if !require_privileges(test) {
        return;
    }
    let Some(installation) = require_postgres(test) else {
        return;
    };
    let pg = PgDir::new(installation, "vip-repmgr-e2e");
    // Traversable by the agents (root) and owned by postgres.
    pg.allow_traversal();
    let port = pg.port();
    let data = pg.path().join("data");
    pg.initdb(&data);
    let mut postmaster = Some(pg.start(&data, port));
    pg.wait_ready(port);
    let dsn = pg.dsn(port);

    let mut c = Cluster::new(SUBNET, 2, &vip_tests::agent_binary(), "");
    for i in 0..2 {
        let node = &c.nodes[i];
        // Both agents ask the same PostgreSQL: what is tested is that only the events decide
        // which node answers, and that PostgreSQL's state can still silence it. That server has
        // no repmgr metadata, so no round ever confirms a node or finds a quorum: the hold is
        // set long enough for the test (repmgr_real.rs runs the real thing).
        let config = format!(
            "ip: {}\nnetmask: 24\ninterface: {}\ndcs-type: repmgr\nrepmgr-node-id: {}\n\
             postgres-dsn: \"{dsn}\"\nrepmgr-check-interval: 250ms\nrepmgr-socket: {}\n\
             repmgr-quorum-hold: 300s\n\
             repmgr-state-file: {}\npin-path: {}\n",
            c.vip,
            node.host.ifname,
            i + 1,
            c.dir.join(format!("repmgr{i}.sock")).display(),
            c.dir.join(format!("repmgr{i}.state")).display(),
            c.pins.display(),
        );
        std::fs::write(&node.config, config).expect("write config");
    }
    c.start_agent(0);
    c.start_agent(1);
    c.wait_running();
    let (mac0, mac1) = (c.nodes[0].host.mac, c.nodes[1].host.mac);

    // A primary PostgreSQL alone is not a role: nobody answers.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.probe(PROBE),
        Vec::<[u8; 6]>::new(),
        "answer before any event"
    );

    // Node 1 promoted: it answers, alone.
    event(&c, 0, 1, "standby_promote");
    eventually(Duration::from_secs(10), "node 1 answers", || {
        c.probe(PROBE) == [mac0]
    });
    // Connection-loss events and other nodes' events change nothing.
    event(&c, 0, 1, "repmgrd_upstream_disconnect");
    event(&c, 1, 1, "standby_promote");
    for _ in 0..5 {
        assert_eq!(c.probe(PROBE), [mac0], "only node 1 answers");
    }

    // Switchover: the old primary rejoins as a standby, the new one reports the switchover.
    event(&c, 0, 1, "node_rejoin");
    assert_eq!(
        c.probe(PROBE),
        Vec::<[u8; 6]>::new(),
        "node 1 fenced at once"
    );
    event(&c, 1, 2, "standby_switchover");
    eventually(Duration::from_secs(10), "node 2 answers", || {
        c.probe(PROBE) == [mac1]
    });

    // PostgreSQL stopped: node 2 is fenced at once (its connection is terminated, and a new one is
    // refused with "shutting down"), not at the deadline of its last check.
    drop(postmaster.take());
    eventually(Duration::from_secs(10), "node 2 goes silent", || {
        c.probe(PROBE).is_empty()
    });
    for _ in 0..5 {
        assert!(c.probe(PROBE).is_empty(), "answer without PostgreSQL");
    }
    assert!(
        c.log(1).contains("fenced: PostgreSQL is not serving"),
        "{}",
        c.log(1)
    );

    let status = c.terminate_agent(1).expect("agent 2 exits");
    assert!(status.success(), "{status:?}");
    assert!(
        !c.dir.join("repmgr1.sock").exists(),
        "the socket is removed at shutdown"
    );
}
