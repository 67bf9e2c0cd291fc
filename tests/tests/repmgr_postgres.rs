//! `dcs-type: repmgr` against a real PostgreSQL (run as the `postgres` user from a temporary
//! directory, unix socket only): the repmgr source answers only while repmgr's word (a promoting
//! event, or `repmgr.nodes` naming this node) holds for the postmaster that runs now *and*
//! `pg_is_in_recovery()` is false on it.
//!
//! No metadata and no event: no answer. `repmgr.nodes` naming this node (a one-node cluster):
//! answers without an event (an agent started on a running cluster). PostgreSQL stopped: fenced
//! at once, not at the deadline. Back in recovery: fenced, the role dropped. Promoted by hand
//! while `repmgr.nodes` still names it: the metadata confirms it. Restarted while `repmgr.nodes`
//! no longer names it: fenced, and a check alone never brings it back; a promoting event does. A
//! restarted source answers only once repmgr's metadata confirms it, never from its state file.
//! A demoting event fences at once.
//!
//! Needs root and Debian's postgresql-15, as `gate_postgres.rs` (both use `vip_tests::postgres`);
//! without them it skips loudly, and under `CI=true` a skip is a failure. Every process it starts
//! is stopped by PID, and the directory is removed.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use vip_agent::{
    clock::monotonic_ns,
    leadership::Leadership,
    repmgr::{EventRequest, Reply, RepmgrSettings, RepmgrSource, client},
};
use vip_tests::postgres::{PgDir, connect, in_recovery, require_postgres};

const CHECK: Duration = Duration::from_millis(200);
const VALIDITY: Duration = Duration::from_millis(600);

/// repmgr 5.3's `repmgr.nodes`, as `CREATE EXTENSION repmgr` makes it, with one row: node 1,
/// registered as `kind`, reached over `dsn`.
fn nodes_sql(kind: &str, dsn: &str) -> String {
    format!(
        "CREATE SCHEMA IF NOT EXISTS repmgr; \
         CREATE TABLE IF NOT EXISTS repmgr.nodes (node_id INTEGER PRIMARY KEY, \
           upstream_node_id INTEGER NULL, active BOOLEAN NOT NULL DEFAULT TRUE, \
           node_name TEXT NOT NULL, type TEXT NOT NULL, location TEXT NOT NULL DEFAULT 'default', \
           priority INT NOT NULL DEFAULT 100, conninfo TEXT NOT NULL, \
           repluser VARCHAR(63) NOT NULL, slot_name TEXT NULL, config_file TEXT NOT NULL); \
         DELETE FROM repmgr.nodes; \
         INSERT INTO repmgr.nodes (node_id, node_name, type, conninfo, repluser, config_file) \
           VALUES (1, 'node1', '{kind}', '{dsn}', 'postgres', '/dev/null')"
    )
}

/// A running source and what it published.
struct Source {
    dir: PathBuf,
    socket: PathBuf,
    states: Arc<Mutex<Vec<Leadership>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Source {
    fn start(dir: &Path, dsn: &str) -> Self {
        let settings = RepmgrSettings {
            node_id: 1,
            socket: dir.join("agent").join("repmgr.sock"),
            socket_group: None,
            check_interval: CHECK,
            validity: VALIDITY,
            quorum_hold: Duration::from_secs(5),
            state_file: dir.join("agent").join("repmgr.state"),
            postgres: dsn.parse().expect("dsn"),
            passfile: None,
        };
        let socket = settings.socket.clone();
        let mut source = RepmgrSource::new(settings).expect("source starts");
        let states: Arc<Mutex<Vec<Leadership>>> = Arc::default();
        let s = Arc::clone(&states);
        source.on_change(move |st| s.lock().expect("states").push(*st));
        let stop = CancellationToken::new();
        let task = tokio::spawn(source.run(stop.clone()));
        Self {
            dir: dir.to_path_buf(),
            socket,
            states,
            stop,
            task,
        }
    }

    fn last(&self) -> Option<Leadership> {
        self.states.lock().expect("states").last().copied()
    }

    fn answering(&self) -> bool {
        self.last().is_some_and(|s| s.is_safe_at(monotonic_ns()))
    }

    /// The latest deadline ever published.
    fn max_deadline(&self) -> u64 {
        self.states
            .lock()
            .expect("states")
            .iter()
            .map(|s| s.safe_until_ns)
            .max()
            .unwrap_or(0)
    }

    async fn send(&self, event: &str) -> Reply {
        let socket = self.socket.clone();
        let request =
            EventRequest::from_args("1", event, "1", Some("now"), Some("test")).expect("request");
        tokio::task::spawn_blocking(move || client::send(&socket, &request))
            .await
            .expect("join")
            .expect("the agent accepts the event")
    }

    async fn wait_for(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !f(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: never happened; last state {:?}",
                self.last()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `f` holds at every sample over `period`.
    async fn holds_for(&self, what: &str, period: Duration, f: impl Fn(&Self) -> bool) {
        let end = tokio::time::Instant::now() + period;
        while tokio::time::Instant::now() < end {
            assert!(f(self), "{what}: violated; last state {:?}", self.last());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("source task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repmgr_role_follows_repmgrs_word_and_the_local_postgres() {
    let Some(installation) =
        require_postgres("repmgr_role_follows_repmgrs_word_and_the_local_postgres")
    else {
        return;
    };
    let pg = PgDir::new(installation, "vip-repmgr-pg");
    let port = pg.port();
    let data = pg.path().join("data");
    pg.initdb(&data);
    let mut server = Some(pg.start(&data, port));
    let dsn = pg.dsn(port);
    let client = connect(&dsn).await;
    assert!(!in_recovery(&client).await.expect("pg_is_in_recovery"));

    // A primary PostgreSQL without repmgr's metadata and without an event: nobody says it is
    // the primary.
    let source = Source::start(pg.path(), &dsn);
    source
        .wait_for("the first check is published", |s| s.last().is_some())
        .await;
    source
        .holds_for("no answer without repmgr's word", 5 * CHECK, |s| {
            !s.answering()
        })
        .await;

    // repmgr.nodes names it (a one-node cluster): the metadata alone is repmgr's word.
    client
        .batch_execute(&nodes_sql("primary", &dsn))
        .await
        .expect("create repmgr.nodes");
    source
        .wait_for("answering from the metadata", Source::answering)
        .await;
    source
        .holds_for(
            "renewed while PostgreSQL is primary",
            2 * VALIDITY,
            Source::answering,
        )
        .await;
    drop(client);

    // PostgreSQL stopped (fast shutdown): fenced explicitly (deadline 0) at once, not left to
    // run out at the deadline of the last check.
    drop(server.take());
    let stopped_at = monotonic_ns();
    let validity_ns = u64::try_from(VALIDITY.as_nanos()).expect("ns");
    source
        .wait_for("fenced after the stop", |s| {
            s.last().is_some_and(|l| l.safe_until_ns == 0)
        })
        .await;
    let fenced_after = monotonic_ns() - stopped_at;
    assert!(
        fenced_after < validity_ns / 2,
        "fenced {fenced_after} ns after the stop returned, not at once"
    );
    assert!(
        source.max_deadline() <= stopped_at + validity_ns,
        "a deadline past the last possible successful check"
    );

    // Back, but in recovery (a standby): fenced, and the role is dropped.
    pg.mark_standby(&data);
    server = Some(pg.start(&data, port));
    source
        .wait_for("recovery seen", |s| {
            s.last().is_some_and(|l| !l.primary && l.safe_until_ns == 0)
                && std::fs::read_to_string(s.dir.join("agent").join("repmgr.state"))
                    .is_ok_and(|f| f.contains("role=not-primary"))
        })
        .await;
    source
        .holds_for("fenced while in recovery", 5 * CHECK, |s| !s.answering())
        .await;

    // Promoted by hand while repmgr.nodes still names it (a lost promoting event): the metadata
    // confirms it.
    pg.promote_and_wait(&data);
    source
        .wait_for("answering again from the metadata", Source::answering)
        .await;

    // repmgr no longer names it, and PostgreSQL restarts: a new postmaster is fenced, and stays
    // so however often it says it takes writes.
    let client = connect(&dsn).await;
    client
        .batch_execute("UPDATE repmgr.nodes SET type = 'standby'")
        .await
        .expect("update repmgr.nodes");
    drop(client);
    drop(server.take());
    server = Some(pg.start(&data, port));
    let client = connect(&dsn).await;
    assert!(!in_recovery(&client).await.expect("pg_is_in_recovery"));
    drop(client);
    source
        .holds_for(
            "a restarted PostgreSQL alone is not repmgr's word",
            10 * CHECK,
            |s| !s.answering(),
        )
        .await;
    // A promoting event binds the new postmaster.
    source.send("repmgrd_failover_promote").await;
    source
        .wait_for("answering after the promotion", Source::answering)
        .await;

    // A restarted source answers only once repmgr's metadata confirms this node, whatever its
    // state file says.
    source.stop().await;
    let state =
        std::fs::read_to_string(pg.path().join("agent").join("repmgr.state")).expect("state");
    assert!(state.contains("role=primary"), "{state}");
    let source = Source::start(pg.path(), &dsn);
    source
        .holds_for("no answer from the state file", 10 * CHECK, |s| {
            !s.answering()
        })
        .await;
    let client = connect(&dsn).await;
    client
        .batch_execute("UPDATE repmgr.nodes SET type = 'primary'")
        .await
        .expect("update repmgr.nodes");
    drop(client);
    source
        .wait_for("answering once the metadata names it", Source::answering)
        .await;

    // Connection-loss events change nothing; a demoting event fences at once.
    let reply = source.send("repmgrd_upstream_disconnect").await;
    assert!(
        matches!(&reply, Reply::Ok { outcome, .. } if outcome == "ignored"),
        "{reply:?}"
    );
    assert!(source.answering());
    source.send("standby_follow").await;
    let last = source.last().expect("state");
    assert!(!last.primary && last.safe_until_ns == 0, "{last:?}");
    source.stop().await;
    drop(server);
}
