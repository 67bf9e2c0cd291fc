//! `dcs-type: repmgr` against a real PostgreSQL (run as the `postgres` user from a temporary
//! directory, unix socket only): the repmgr source answers only while the last role event says
//! primary *and* `pg_is_in_recovery()` is false on the local server. A promoting event with a
//! primary behind it answers; PostgreSQL stopped stops the renewals, so the deadline runs out
//! (exactly: no deadline lies past the last successful check + validity); PostgreSQL in recovery
//! fences and drops the role; a restarted source resumes from its state file after one check; a
//! demoting event fences at once.
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
    leader::{LeaderState, Reason, Via},
    repmgr::{EventRequest, Reply, RepmgrSettings, RepmgrSource, client},
};
use vip_tests::postgres::{PgDir, connect, in_recovery, require_postgres};

const CHECK: Duration = Duration::from_millis(200);
const VALIDITY: Duration = Duration::from_millis(600);

/// A running source and what it published.
struct Source {
    socket: PathBuf,
    states: Arc<Mutex<Vec<LeaderState>>>,
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
            state_file: dir.join("agent").join("repmgr.state"),
            postgres: dsn.parse().expect("dsn"),
        };
        let socket = settings.socket.clone();
        let mut source = RepmgrSource::new(settings).expect("source starts");
        let states: Arc<Mutex<Vec<LeaderState>>> = Arc::default();
        let s = Arc::clone(&states);
        source.on_change(move |st| s.lock().expect("states").push(*st));
        let stop = CancellationToken::new();
        let task = tokio::spawn(source.run(stop.clone()));
        Self {
            socket,
            states,
            stop,
            task,
        }
    }

    fn last(&self) -> Option<LeaderState> {
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
async fn repmgr_role_follows_events_and_the_local_postgres() {
    let Some(installation) = require_postgres("repmgr_role_follows_events_and_the_local_postgres")
    else {
        return;
    };
    let pg = PgDir::new(installation, "vip-repmgr-pg");
    let port = pg.port();
    let data = pg.path().join("data");
    pg.initdb(&data);
    let mut server = Some(pg.start(&data, port));
    let client = connect(&pg.dsn(port)).await;
    assert!(!in_recovery(&client).await.expect("pg_is_in_recovery"));
    drop(client);

    let source = Source::start(pg.path(), &pg.dsn(port));
    // A primary PostgreSQL alone does not make this node answer: no role event yet.
    source
        .wait_for("the first check is published", |s| s.last().is_some())
        .await;
    source
        .holds_for("no answer without a promoting event", 5 * CHECK, |s| {
            !s.answering()
        })
        .await;

    // Promoted: answering, renewed check after check.
    let reply = source.send("standby_promote").await;
    assert!(
        matches!(&reply, Reply::Ok { outcome, .. } if outcome == "applied"),
        "{reply:?}"
    );
    source
        .wait_for("answering after the promotion", Source::answering)
        .await;
    source
        .holds_for(
            "renewed while PostgreSQL is primary",
            2 * VALIDITY,
            Source::answering,
        )
        .await;

    // PostgreSQL stopped: no renewal. Every deadline was set from a check sent before the stop,
    // so none lies past stop + validity.
    drop(server.take());
    let stopped_at = monotonic_ns();
    let validity_ns = u64::try_from(VALIDITY.as_nanos()).expect("ns");
    source
        .wait_for("the outage is published", |s| {
            s.last()
                .is_some_and(|l| l.reason == Reason::EtcdUnreachable)
        })
        .await;
    while monotonic_ns() < stopped_at + validity_ns {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        source.max_deadline() <= stopped_at + validity_ns,
        "a deadline past the last possible successful check"
    );
    source
        .holds_for("fenced while PostgreSQL is down", 3 * VALIDITY, |s| {
            !s.answering()
        })
        .await;

    // Back, but in recovery (a standby): fenced, and the role is dropped.
    pg.mark_standby(&data);
    server = Some(pg.start(&data, port));
    source
        .wait_for("recovery seen", |s| {
            s.last().is_some_and(|l| {
                l.reason
                    == (Reason::OtherValue {
                        via: Via::Confirmation,
                    })
                    && !l.primary
            })
        })
        .await;
    let state_file =
        std::fs::read_to_string(pg.path().join("agent").join("repmgr.state")).expect("state");
    assert!(state_file.contains("role=not-primary"), "{state_file}");
    // Out of recovery without repmgr saying so: still fenced.
    pg.promote_and_wait(&data);
    let client = connect(&pg.dsn(port)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while in_recovery(&client).await.expect("pg_is_in_recovery") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "PostgreSQL never left recovery"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(client);
    source
        .holds_for("no answer without a new promoting event", 5 * CHECK, |s| {
            !s.answering()
        })
        .await;
    source.send("repmgrd_failover_promote").await;
    source
        .wait_for("answering after the new promotion", Source::answering)
        .await;

    // A restarted source resumes from its state file, after one successful check.
    source.stop().await;
    let source = Source::start(pg.path(), &pg.dsn(port));
    assert!(!source.answering(), "nothing before the first check");
    source
        .wait_for("answering after a restart", Source::answering)
        .await;
    assert!(
        source
            .states
            .lock()
            .expect("states")
            .iter()
            .all(|s| s.reason != (Reason::Ours { via: Via::Watch })),
        "no event was needed"
    );

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
    source
        .holds_for("fenced after the demotion", 5 * CHECK, |s| !s.answering())
        .await;
    source.stop().await;
    drop(server);
}
