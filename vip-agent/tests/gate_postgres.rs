//! The promotion gate (`promotion-gate: postgres`) against a real PostgreSQL: a primary and a
//! streaming standby (pg_basebackup), both on unix sockets in a temporary directory, run as the
//! `postgres` user. The key names this node while the standby is in recovery: the gate must not
//! answer; then the standby is promoted, and the gate's answering write must come after the last
//! moment the test itself saw `pg_is_in_recovery()` = true.
//!
//! Needs root (to run PostgreSQL as `postgres`) and Debian's postgresql-15 (`cargo xtask setup`);
//! without them it skips loudly, and under `CI=true` a skip is a failure. Every process it starts
//! is stopped by PID, and the directory is removed.

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
    config::{GateConfig, GateMode, Secret},
    gate::{Gate, GateState, Outcome},
    leader::{LeaderState, Reason},
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_postgres_never_answers_before_the_standby_leaves_recovery() {
    let Some((user, bin)) =
        can_run("gate_postgres_never_answers_before_the_standby_leaves_recovery")
    else {
        return;
    };
    let dir = TempDir(std::env::temp_dir().join(format!("vip-gate-pg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temp dir");
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    chown(&dir.0, Some(user.uid), Some(user.gid)).expect("chown");
    let pg = Pg {
        bin,
        user,
        dir: dir.0.clone(),
    };
    let base = 20_000 + u16::try_from(std::process::id() % 20_000).expect("port");
    let (primary_port, standby_port) = (base, base + 1);
    let primary_data = dir.0.join("primary");
    let standby_data = dir.0.join("standby");

    pg.run(
        "initdb",
        &[
            "-D",
            primary_data.to_str().expect("utf-8"),
            "-U",
            "postgres",
            "--auth=trust",
            "-N",
        ],
    );
    let _primary = pg.start(&primary_data, primary_port);
    let primary = connect(&pg.dsn(primary_port)).await;
    assert!(!in_recovery(&primary).await);
    pg.run(
        "pg_basebackup",
        &[
            "-h",
            dir.0.to_str().expect("utf-8"),
            "-p",
            &primary_port.to_string(),
            "-U",
            "postgres",
            "-D",
            standby_data.to_str().expect("utf-8"),
            "-X",
            "stream",
            "-R",
        ],
    );
    let _standby = pg.start(&standby_data, standby_port);
    let observer = connect(&pg.dsn(standby_port)).await;
    assert!(
        in_recovery(&observer).await,
        "the standby starts in recovery"
    );

    // The gate, writing into a recorder instead of the BPF map: (state, time of the write).
    let writes: Arc<Mutex<Vec<(LeaderState, u64)>>> = Arc::default();
    let w = Arc::clone(&writes);
    let gate = Gate::new(
        "pg",
        GateConfig {
            mode: GateMode::Postgres,
            postgres_dsn: Some(Secret::new(pg.dsn(standby_port))),
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(120),
            ..GateConfig::default()
        },
        Box::new(move |s: &LeaderState| {
            w.lock().expect("writes").push((*s, monotonic_ns()));
        }),
    );
    let status = Arc::new(Mutex::new(gate.status()));
    let st = Arc::clone(&status);
    gate.on_status(Box::new(move |s| *st.lock().expect("status") = s.clone()));
    let hook = gate.hook();
    let stop = CancellationToken::new();
    let task = tokio::spawn(gate.run(stop.clone()));
    let answered_at = || {
        writes
            .lock()
            .expect("writes")
            .iter()
            .find(|(s, _)| s.primary || s.safe_until_ns != 0)
            .map(|(_, t)| *t)
    };

    // The key names this node, confirmed for a minute: the gate waits on the standby.
    let now = monotonic_ns();
    hook.apply(&LeaderState {
        primary: true,
        safe_until_ns: now + 60_000_000_000,
        revision: 5,
        lease_id: 9,
        reason: Reason::Confirmed,
        observed_at_ns: now,
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !status
        .lock()
        .expect("status")
        .last_probe
        .contains("pg_is_in_recovery() is true")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gate never saw the standby in recovery: {:?}",
            status.lock().expect("status")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        answered_at(),
        None,
        "no answer while the standby is in recovery"
    );
    assert_eq!(status.lock().expect("status").state, GateState::Waiting);

    // Promote, and watch recovery end from our own connection: the last "true" we saw was
    // asked at `last_true_sent`; the gate's answering write must come after that.
    pg.run(
        "pg_ctl",
        &["promote", "-W", "-D", standby_data.to_str().expect("utf-8")],
    );
    let mut last_true_sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent = monotonic_ns();
        if !in_recovery(&observer).await {
            break;
        }
        last_true_sent = sent;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby never left recovery"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let opened = loop {
        if let Some(t) = answered_at() {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gate did not open after the promotion: {:?}",
            status.lock().expect("status")
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        opened > last_true_sent,
        "the gate answered at {opened} ns, before pg_is_in_recovery() was last seen true (asked at \
         {last_true_sent} ns)"
    );
    let final_status = status.lock().expect("status").clone();
    assert_eq!(final_status.last_outcome, Some(Outcome::Primary));
    assert_eq!(final_status.state, GateState::Open);

    stop.cancel();
    task.await.expect("gate task");
    drop(observer);
    drop(primary);
}
