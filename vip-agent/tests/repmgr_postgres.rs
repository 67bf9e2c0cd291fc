//! `dcs-type: repmgr` against a real PostgreSQL (run as the `postgres` user from a temporary
//! directory, unix socket only): the repmgr source answers only while the last role event says
//! primary *and* `pg_is_in_recovery()` is false on the local server. A promoting event with a
//! primary behind it answers; PostgreSQL stopped stops the renewals, so the deadline runs out
//! (exactly: no deadline lies past the last successful check + validity); PostgreSQL in recovery
//! fences and drops the role; a restarted source resumes from its state file after one check; a
//! demoting event fences at once.
//!
//! Needs root and Debian's postgresql-15, as `gate_postgres.rs` (whose helpers are copied here:
//! integration tests are separate crates); without them it skips loudly, and under `CI=true` a
//! skip is a failure. Every process it starts is stopped by PID, and the directory is removed.

use std::{
    os::unix::{fs::PermissionsExt as _, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, User, chown},
};
use tokio_util::sync::CancellationToken;
use vip_agent::{
    clock::monotonic_ns,
    leader::{LeaderState, Reason, Via},
    repmgr::{EventRequest, Reply, RepmgrSettings, RepmgrSource, client},
};

/// Whether this test can run; a loud skip otherwise (a failure under CI).
fn can_run(test: &str) -> Option<(User, PathBuf)> {
    let reason = if !nix::unistd::geteuid().is_root() {
        Some("needs root to run PostgreSQL as the postgres user".to_owned())
    } else {
        match (User::from_name("postgres"), postgres_bin()) {
            (Ok(Some(user)), Some(bin)) => return Some((user, bin)),
            _ => Some(
                "PostgreSQL is not installed (cargo xtask setup installs postgresql-15)".to_owned(),
            ),
        }
    };
    let reason = reason.unwrap_or_default();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("VIP_TESTS_REQUIRE_PRIVILEGES").is_ok_and(|v| v == "1");
    assert!(
        !ci,
        "{test}: {reason}; privileged tests may not skip under CI"
    );
    eprintln!("SKIPPED {test}: {reason}");
    None
}

/// The newest `/usr/lib/postgresql/<major>/bin`.
fn postgres_bin() -> Option<PathBuf> {
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((major, bin))
        })
        .collect();
    majors.sort();
    majors.pop().map(|(_, bin)| bin)
}

/// A temporary directory owned by postgres, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A postmaster started by this test: fast shutdown (SIGINT) by PID on drop, SIGKILL if it lingers.
struct Postmaster(Child);

impl Drop for Postmaster {
    fn drop(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.0.id()).expect("pid"));
        let _ = kill(pid, Signal::SIGINT);
        for _ in 0..500 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Pg {
    bin: PathBuf,
    user: User,
    dir: PathBuf,
}

impl Pg {
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        cmd.uid(self.user.uid.as_raw())
            .gid(self.user.gid.as_raw())
            .current_dir(&self.dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self, data: &Path, port: u16) -> Postmaster {
        let log = std::fs::File::create(self.dir.join(format!("{port}.log"))).expect("log");
        let err = log.try_clone().expect("log");
        let child = self
            .command("postgres")
            .args(["-D", data.to_str().expect("utf-8"), "-p", &port.to_string()])
            .args(["-k", self.dir.to_str().expect("utf-8")])
            .args(["-c", "listen_addresses=", "-c", "fsync=off"])
            .stdout(log)
            .stderr(err)
            .spawn()
            .expect("start postgres");
        Postmaster(child)
    }

    fn dsn(&self, port: u16) -> String {
        format!(
            "host={} port={port} user=postgres dbname=postgres",
            self.dir.display()
        )
    }
}

/// Connect (retrying while the server starts) and return the client.
async fn connect(dsn: &str) -> tokio_postgres::Client {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match tokio_postgres::connect(dsn, tokio_postgres::NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return client;
            }
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "PostgreSQL at {dsn} did not come up: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn in_recovery(client: &tokio_postgres::Client) -> bool {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery")
        .get(0)
}

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
    let Some((user, bin)) = can_run("repmgr_role_follows_events_and_the_local_postgres") else {
        return;
    };
    let dir = TempDir(std::env::temp_dir().join(format!("vip-repmgr-pg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    chown(&dir.0, Some(user.uid), Some(user.gid)).expect("chown");
    let pg = Pg {
        bin,
        user,
        dir: dir.0.clone(),
    };
    let port = 20_000 + u16::try_from(std::process::id() % 20_000).expect("port") + 7;
    let data = dir.0.join("data");
    pg.run(
        "initdb",
        &[
            "-D",
            data.to_str().expect("utf-8"),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ],
    );
    let mut server = Some(pg.start(&data, port));
    let client = connect(&pg.dsn(port)).await;
    assert!(!in_recovery(&client).await);
    drop(client);

    let source = Source::start(&dir.0, &pg.dsn(port));
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
    std::fs::write(data.join("standby.signal"), "").expect("standby.signal");
    chown(
        &data.join("standby.signal"),
        Some(pg.user.uid),
        Some(pg.user.gid),
    )
    .expect("chown");
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
        std::fs::read_to_string(dir.0.join("agent").join("repmgr.state")).expect("state");
    assert!(state_file.contains("role=not-primary"), "{state_file}");
    // Out of recovery without repmgr saying so: still fenced.
    pg.run(
        "pg_ctl",
        &["promote", "-w", "-D", data.to_str().expect("utf-8")],
    );
    let client = connect(&pg.dsn(port)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while in_recovery(&client).await {
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
    let source = Source::start(&dir.0, &pg.dsn(port));
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
