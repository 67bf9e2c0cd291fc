//! The repmgr event socket for real: a [`RepmgrSource`] listening in a temporary directory, fed by
//! the built `vip-agent event` binary (as repmgr's `event_notification_command` runs it) and by
//! raw connections with malformed requests. No PostgreSQL here (its checks find no server, so a
//! promotion is fenced again at once and nothing ever answers): this is about which events change the published role, which are refused, and who may
//! talk to the socket (an unprivileged uid, through the file mode and through `SO_PEERCRED`).
//!
//! The peer tests need root (to run a client as `nobody`); without root they skip loudly, and under
//! `CI=true` a skip is a failure.

use std::{
    io::{Read as _, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vip_agent::{
    leadership::{Cause, Leadership},
    repmgr::{RepmgrError, RepmgrSettings, RepmgrSource},
};

const AGENT: &str = env!("CARGO_BIN_EXE_vip-agent");

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("vip-repmgr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Traversable by an unprivileged client; the socket's own mode is what is tested.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn settings(dir: &Path, node_id: u32) -> RepmgrSettings {
    RepmgrSettings {
        node_id,
        socket: dir.join("run").join("repmgr.sock"),
        socket_group: None,
        check_interval: Duration::from_millis(100),
        validity: Duration::from_millis(300),
        quorum_hold: Duration::from_secs(5),
        state_file: dir.join("state"),
        // Nothing listens there: every check fails, nothing is ever confirmed.
        postgres: format!("host={} port=1 user=nobody dbname=none", dir.display())
            .parse()
            .expect("dsn"),
        passfile: None,
    }
}

/// A running source: its published states, its request outcomes, and how to stop it.
struct Running {
    socket: PathBuf,
    states: watch::Receiver<Leadership>,
    hooked: Arc<Mutex<Vec<Leadership>>>,
    outcomes: Arc<Mutex<Vec<&'static str>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(settings: RepmgrSettings) -> Self {
        let socket = settings.socket.clone();
        let mut source = RepmgrSource::new(settings).expect("source starts");
        let hooked: Arc<Mutex<Vec<Leadership>>> = Arc::default();
        let h = Arc::clone(&hooked);
        source.on_change(move |s| h.lock().expect("states").push(*s));
        let outcomes: Arc<Mutex<Vec<&'static str>>> = Arc::default();
        let o = Arc::clone(&outcomes);
        source.on_event(move |outcome| o.lock().expect("outcomes").push(outcome));
        let states = source.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn(source.run(stop.clone()));
        Self {
            socket,
            states,
            hooked,
            outcomes,
            stop,
            task,
        }
    }

    fn state(&self) -> Leadership {
        *self.states.borrow()
    }

    /// Role-bearing states published so far (the check failures' `Unreachable` left out).
    fn roles(&self) -> Vec<(bool, Cause)> {
        self.hooked
            .lock()
            .expect("states")
            .iter()
            .filter(|s| s.cause != Cause::Unreachable)
            .map(|s| (s.primary, s.cause))
            .collect()
    }

    /// Whether a promoting event was published (the failed checks fence it again at once: no
    /// PostgreSQL listens here).
    fn promoted(&self) -> bool {
        self.hooked
            .lock()
            .expect("states")
            .iter()
            .any(|s| s.primary && s.cause == Cause::Ours)
    }

    fn outcomes(&self) -> Vec<&'static str> {
        self.outcomes.lock().expect("outcomes").clone()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("source task");
    }
}

/// `vip-agent event ARGS` as `uid` (root when `None`), off the async runtime.
async fn event(uid: Option<u32>, args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(AGENT);
        cmd.arg("event").args(&args).env_remove("VIP_REPMGR_SOCKET");
        if let Some(uid) = uid {
            cmd.uid(uid).gid(uid);
        }
        cmd.output().expect("run vip-agent event")
    })
    .await
    .expect("join")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One raw request (bytes as given), the raw reply.
async fn raw(socket: &Path, request: Vec<u8>, close_write: bool) -> String {
    let socket = socket.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut s = UnixStream::connect(&socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        // The agent may answer and close before reading everything: a failed write is fine.
        let _ = s.write_all(&request);
        if close_write {
            let _ = s.shutdown(std::net::Shutdown::Write);
        }
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    })
    .await
    .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_move_the_role_and_everything_else_changes_nothing() {
    let dir = TempDir::new("events");
    let run = Running::start(settings(&dir.0, 2));
    let sock = run.socket.to_str().expect("utf-8").to_owned();
    let mode = std::fs::metadata(&run.socket)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "root only by default");
    let dir_mode = std::fs::metadata(dir.0.join("run"))
        .expect("dir")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);

    // Ignored, each with exit status 0 and the reason on stdout; the role does not move.
    for (args, needle) in [
        (
            ["3", "standby_promote", "1", "t", "other node"],
            "about node 3",
        ),
        (["2", "standby_promote", "0", "t", "failed"], "success = 0"),
        (
            ["2", "repmgrd_upstream_disconnect", "1", "t", "lost"],
            "never moves",
        ),
        (
            ["2", "repmgrd_local_disconnect", "1", "t", "lost"],
            "never moves",
        ),
        (
            ["2", "child_node_disconnect", "1", "t", "child"],
            "never moves",
        ),
        (
            ["2", "bdr_failover", "1", "t", "?"],
            "not an event vip-agent knows",
        ),
    ] {
        let mut all = vec!["--socket", &sock];
        all.extend(args);
        let out = event(None, &all).await;
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(
            stdout(&out).starts_with("ignored: ") && stdout(&out).contains(needle),
            "{args:?}: {}",
            stdout(&out)
        );
    }
    assert!(run.roles().iter().all(|(p, _)| !p), "{:?}", run.roles());
    assert!(!run.state().primary);

    // Malformed requests: an error reply naming the problem, nothing changes.
    for (request, close, needle) in [
        (b"hello\n".to_vec(), false, "does not start with"),
        (
            b"vip-agent-event/1\tx\tstandby_promote\t1\t\t\n".to_vec(),
            false,
            "node id",
        ),
        (
            b"vip-agent-event/1\t2\tstandby_promote\tyes\t\t\n".to_vec(),
            false,
            "success",
        ),
        (
            b"vip-agent-event/1\t2\tstandby_promote\t1\t\t".to_vec(),
            true,
            "does not end with a newline",
        ),
        (vec![b'a'; 20_000], false, "longer than"),
    ] {
        let reply = raw(&run.socket, request, close).await;
        assert!(
            reply.starts_with("error\t") && reply.contains(needle),
            "{needle}: {reply:?}"
        );
    }
    // A client that sends nothing is dropped after the read timeout, with a reply.
    let reply = raw(&run.socket, Vec::new(), false).await;
    assert!(reply.contains("no complete request"), "{reply:?}");
    assert!(!run.state().primary, "malformed requests changed the role");

    // The CLI refuses malformed words itself, with one line and status 1.
    for (args, needle) in [
        (["abc", "standby_promote", "1"], "node id \"abc\""),
        (["2", "standby_promote", "yes"], "success \"yes\""),
        (["2", "Standby-Promote", "1"], "event \"Standby-Promote\""),
    ] {
        let mut all = vec!["--socket", &sock];
        all.extend(args);
        let out = event(None, &all).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = stderr(&out);
        assert!(
            err.contains(needle) && err.trim().lines().count() == 1,
            "{err}"
        );
    }

    // A promotion: primary, but never answering without PostgreSQL's confirmation.
    let out = event(
        None,
        &[
            "--socket",
            &sock,
            "2",
            "standby_promote",
            "1",
            "ts",
            "promoted",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("applied: "), "{}", stdout(&out));
    assert!(run.promoted());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        run.state().safe_until_ns,
        0,
        "no deadline without PostgreSQL"
    );
    assert_eq!(
        std::fs::read_to_string(dir.0.join("state"))
            .expect("state file")
            .lines()
            .find(|l| l.starts_with("role=")),
        Some("role=primary")
    );

    // A demotion: not primary at once.
    let out = event(None, &["--socket", &sock, "2", "node_rejoin", "1"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!run.state().primary);
    assert_eq!(
        run.roles().into_iter().filter(|(p, _)| *p).count(),
        1,
        "exactly one primary state, from the promotion: {:?}",
        run.roles()
    );
    let outcomes = run.outcomes();
    let count = |o| outcomes.iter().filter(|x| **x == o).count();
    assert_eq!((count("applied"), count("ignored")), (2, 6), "{outcomes:?}");
    assert_eq!(count("rejected"), 6, "{outcomes:?}");

    let socket = run.socket.clone();
    run.stop().await;
    assert!(!socket.exists(), "the socket is removed at shutdown");
    let out = event(
        None,
        &[
            "--socket",
            socket.to_str().expect("utf-8"),
            "2",
            "standby_follow",
            "1",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no agent listens"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let dir = TempDir::new("stale");
    let s = settings(&dir.0, 1);
    std::fs::create_dir_all(s.socket.parent().expect("dir")).expect("dir");
    // A socket file nobody listens on (a crashed agent's).
    drop(std::os::unix::net::UnixListener::bind(&s.socket).expect("stale socket"));
    assert!(s.socket.exists());
    let run = Running::start(s.clone());
    let err = RepmgrSource::new(s.clone()).expect_err("a second agent on the same socket");
    assert!(
        matches!(err, RepmgrError::SocketInUse { .. }) && err.to_string().contains("listens"),
        "{err}"
    );
    run.stop().await;
    std::fs::write(&s.socket, "not a socket").expect("file");
    let err = RepmgrSource::new(s).expect_err("a regular file is not replaced");
    assert!(err.to_string().contains("not a socket"), "{err}");
}

/// Root, or a loud skip (a failure under CI).
fn root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var("VIP_TESTS_REQUIRE_PRIVILEGES").is_ok_and(|v| v == "1");
    assert!(
        !ci,
        "{test}: needs root; privileged tests may not skip under CI"
    );
    eprintln!("SKIPPED {test}: needs root to run a client as nobody");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unprivileged_peer_is_refused_by_mode_and_by_credentials() {
    if !root("an_unprivileged_peer_is_refused_by_mode_and_by_credentials") {
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = TempDir::new("peer");
    let s = settings(&dir.0, 2);
    // The directory made traversable beforehand (the source keeps an existing directory's mode).
    let run_dir = s.socket.parent().expect("dir").to_owned();
    std::fs::create_dir_all(&run_dir).expect("dir");
    std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let run = Running::start(s);
    let sock = run.socket.to_str().expect("utf-8").to_owned();
    let promote = ["--socket", sock.as_str(), "2", "standby_promote", "1"];

    // Mode 0600: the kernel refuses the connection.
    let out = event(Some(NOBODY), &promote).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    assert!(!run.state().primary);

    // Mode loosened by hand: SO_PEERCRED still refuses, with a reply naming the uid.
    std::fs::set_permissions(&run.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let out = event(Some(NOBODY), &promote).await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("refused") && err.contains("uid 65534"),
        "{err}"
    );
    assert!(!run.state().primary, "a refused peer changed the role");
    assert_eq!(run.outcomes(), ["rejected"]);

    // Root is accepted.
    let out = event(None, &promote).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.promoted());
    run.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_group_may_send_events() {
    if !root("the_socket_group_may_send_events") {
        return;
    }
    const NOBODY: u32 = 65534;
    let dir = TempDir::new("group");
    let mut s = settings(&dir.0, 2);
    s.socket_group = Some(NOBODY);
    let run = Running::start(s);
    let meta = std::fs::metadata(&run.socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(std::os::unix::fs::MetadataExt::gid(&meta), NOBODY);
    let dir_meta = std::fs::metadata(run.socket.parent().expect("dir")).expect("dir");
    assert_eq!(dir_meta.permissions().mode() & 0o777, 0o750);
    let sock = run.socket.to_str().expect("utf-8").to_owned();
    let out = event(
        Some(NOBODY),
        &["--socket", &sock, "2", "standby_promote", "1"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(run.promoted());
    run.stop().await;
}
