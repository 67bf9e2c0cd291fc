//! A fake Patroni REST API on loopback and a promotion gate driven through the library with a
//! recording sink in place of the BPF map writer (shared by `gate_patroni` and `failsafe_*`).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use vip_agent::{
    clock::monotonic_ns,
    config::{GateConfig, GateMode, PatroniUrl},
    gate::{Gate, GateHook, GateStatus},
    leader::{self, MemberView},
    leadership::{Cause, Leadership, SourceKind},
};

/// What the fake Patroni answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 503, PostgreSQL still a replica.
    Replica,
    /// 200 (leader lock held) but PostgreSQL still in recovery: what Patroni says mid-promotion.
    LockedInRecovery,
    /// 200, running primary (Patroni 3.0 says `master`), DCS reachable: no failsafe key.
    Primary,
    /// [`Mode::Primary`] after a PostgreSQL restart: another `postmaster_start_time`.
    Restarted,
    /// 503 while Patroni demotes: PostgreSQL stopping.
    Demoting,
    /// 200, a running primary of another Patroni cluster (scope `other`).
    OtherScope,
    /// 200, running primary kept by failsafe mode: etcd unreachable, every member accepted
    /// `POST /failsafe` (`failsafe_mode_is_active: true`, `cluster_unlocked: true`).
    FailsafePrimary,
    /// Accept, read the request, never answer.
    Hang,
    /// Bytes that are not HTTP, then close.
    Garbage,
}

pub struct FakePatroni {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakePatroni {
    pub async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve_on(listener, mode)
    }

    fn serve_on(listener: TcpListener, mode: Mode) -> Self {
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(Mutex::new(mode));
        let requests = Arc::new(AtomicUsize::new(0));
        let (m, r) = (Arc::clone(&mode), Arc::clone(&requests));
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let mode = *m.lock().expect("mode");
                r.fetch_add(1, Ordering::SeqCst);
                held.push(tokio::spawn(serve(stream, mode)));
            }
        });
        Self {
            addr,
            mode,
            requests,
            task,
        }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn url(&self) -> PatroniUrl {
        PatroniUrl::parse(&format!("http://{}", self.addr)).expect("url")
    }

    /// Stop listening: later connections are refused.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn serve(mut stream: TcpStream, mode: Mode) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(
        buf.starts_with(b"GET /primary HTTP/1.1\r\n"),
        "unexpected request {:?}",
        String::from_utf8_lossy(&buf)
    );
    // Patroni's handler speaks HTTP/1.0 without Content-Length: the body ends with the connection.
    let (status, body) = match mode {
        Mode::Replica => (
            "503 Service Unavailable",
            r#"{"state": "running", "role": "replica"}"#,
        ),
        Mode::LockedInRecovery => ("200 OK", r#"{"state": "running", "role": "replica"}"#),
        // Patroni 3.0.2's document (api.py, get_postgresql_status and _write_status_response).
        Mode::Primary => (
            "200 OK",
            r#"{"state": "running", "postmaster_start_time": "2026-12-06 10:00:00.000000+00:00", "role": "master", "server_version": 150018, "xlog": {"location": 50331968}, "timeline": 2, "dcs_last_seen": 1765015200, "database_system_identifier": "7447000000000000000", "patroni": {"version": "3.0.2", "scope": "demo"}}"#,
        ),
        Mode::Restarted => (
            "200 OK",
            r#"{"state": "running", "postmaster_start_time": "2026-12-06 10:05:00.000000+00:00", "role": "master", "timeline": 2, "patroni": {"version": "3.0.2", "scope": "demo"}}"#,
        ),
        Mode::Demoting => (
            "503 Service Unavailable",
            r#"{"state": "stopping", "role": "demoted", "patroni": {"version": "3.0.2", "scope": "demo"}}"#,
        ),
        Mode::OtherScope => (
            "200 OK",
            r#"{"state": "running", "role": "master", "timeline": 1, "patroni": {"version": "3.0.2", "scope": "other"}}"#,
        ),
        // The shape of Patroni 4.0's document in failsafe mode (docs/rest_api.rst).
        Mode::FailsafePrimary => (
            "200 OK",
            r#"{"state": "running", "role": "primary", "timeline": 2, "cluster_unlocked": true, "failsafe_mode_is_active": true, "dcs_last_seen": 1692356928, "patroni": {"version": "4.0.0", "scope": "demo", "name": "pg1"}}"#,
        ),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return;
        }
        Mode::Garbage => {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.2p1\r\n").await;
            return;
        }
    };
    let response = format!(
        "HTTP/1.0 {status}\r\nServer: BaseHTTP/0.6 Python/3.11\r\nContent-Type: application/json\r\n\r\n{body}"
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

/// A Patroni impostor: a plain-http listener on loopback whose sockets belong to `uid` (the
/// kernel records the file-system uid of the thread that creates a socket, and of the one that
/// accepts it; this thread's alone is changed, for its whole life). It answers every request with
/// Patroni's failsafe-primary document, for the rest of the test process. Returns its URL.
pub fn impostor_owned_by(uid: u32) -> PatroniUrl {
    use std::io::{Read as _, Write as _};
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: setfsuid changes this thread's file-system uid only (the raw syscall).
        unsafe { libc::setfsuid(uid) };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        tx.send(listener.local_addr().expect("addr"))
            .expect("send the address");
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = stream.write_all(
                b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"state\": \"running\", \"role\": \"primary\", \"cluster_unlocked\": true, \"failsafe_mode_is_active\": true, \"patroni\": {\"version\": \"4.0.0\", \"scope\": \"demo\"}}",
            );
        }
    });
    let addr = rx.recv().expect("the impostor's address");
    PatroniUrl::parse(&format!("http://{addr}")).expect("url")
}

/// The states the gate wrote to its sink (in place of the data plane).
#[derive(Clone, Default)]
pub struct Writes(pub Arc<Mutex<Vec<Leadership>>>);

impl Writes {
    /// The data plane (the last write) answers now.
    pub fn answering(&self) -> bool {
        self.0
            .lock()
            .expect("writes")
            .last()
            .is_some_and(|s| s.is_safe_at(monotonic_ns()))
    }

    pub fn ever_answered(&self) -> bool {
        self.0
            .lock()
            .expect("writes")
            .iter()
            .any(|s| s.primary || s.safe_until_ns != 0)
    }

    pub fn last(&self) -> Leadership {
        *self.0.lock().expect("writes").last().expect("a write")
    }

    pub fn all(&self) -> Vec<Leadership> {
        self.0.lock().expect("writes").clone()
    }
}

/// A running gate: its follower-side hook, what it wrote, its status.
pub struct Harness {
    pub gate_status: Arc<Mutex<GateStatus>>,
    pub hook: GateHook,
    pub writes: Writes,
    pub stop: CancellationToken,
    pub task: JoinHandle<()>,
}

impl Harness {
    pub fn start(config: GateConfig) -> Self {
        Self::start_with(config, None, Some("demo".to_owned()))
    }

    /// A gate that finds Patroni through `member` (a member key's views) and checks `scope`.
    pub fn start_with(
        config: GateConfig,
        member: Option<watch::Receiver<MemberView>>,
        scope: Option<String>,
    ) -> Self {
        Self::start_gate_for(config, &leader::KIND, |gate| {
            gate.with_target(member, scope)
        })
    }

    /// A gate in front of a leader source of kind `source`.
    pub fn start_for(
        config: GateConfig,
        member: Option<watch::Receiver<MemberView>>,
        scope: Option<String>,
        source: &'static SourceKind,
    ) -> Self {
        Self::start_gate_for(config, source, |gate| gate.with_target(member, scope))
    }

    /// A gate built by `build` from the plain one (scope and member, bounds).
    pub fn start_gate(config: GateConfig, build: impl FnOnce(Gate) -> Gate) -> Self {
        Self::start_gate_for(config, &leader::KIND, build)
    }

    /// [`Self::start_gate`] in front of a leader source of kind `source`.
    pub fn start_gate_for(
        config: GateConfig,
        source: &'static SourceKind,
        build: impl FnOnce(Gate) -> Gate,
    ) -> Self {
        let writes = Writes::default();
        let w = writes.clone();
        let gate = build(Gate::new(
            "test",
            config,
            source,
            Box::new(move |s: &Leadership| w.0.lock().expect("writes").push(*s)),
        ));
        let gate_status = Arc::new(Mutex::new(gate.status()));
        let gs = Arc::clone(&gate_status);
        gate.on_status(Box::new(move |s| *gs.lock().expect("status") = s.clone()));
        let hook = gate.hook();
        let stop = CancellationToken::new();
        let task = tokio::spawn(gate.run(stop.clone()));
        Self {
            gate_status,
            hook,
            writes,
            stop,
            task,
        }
    }

    pub fn status(&self) -> GateStatus {
        self.gate_status.lock().expect("status").clone()
    }

    pub async fn finish(self) {
        self.stop.cancel();
        self.task.await.expect("gate task");
    }
}

/// A `patroni` gate against `url`, polling every 5 ms, answering anyway after `timeout`.
pub fn config(url: PatroniUrl, timeout: Duration) -> GateConfig {
    GateConfig {
        mode: GateMode::Patroni,
        patroni_url: Some(url),
        interval: Duration::from_millis(5),
        timeout,
        ..GateConfig::default()
    }
}

/// The key is ours, confirmed until `ttl` from now.
pub fn ours(ttl: Duration, revision: i64) -> Leadership {
    let now = monotonic_ns();
    Leadership {
        primary: true,
        safe_until_ns: now + u64::try_from(ttl.as_nanos()).expect("ttl"),
        term: revision,
        cause: Cause::Confirmed,
        observed_at_ns: now,
        detail: revision,
    }
}

/// The key was deleted (a watch event).
pub fn lost(revision: i64) -> Leadership {
    Leadership {
        primary: false,
        safe_until_ns: 0,
        term: 0,
        cause: Cause::Lost,
        observed_at_ns: monotonic_ns(),
        detail: revision,
    }
}

/// Poll `cond` every 2 ms; panic with `what` after `limit`.
pub async fn eventually_within(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Poll `cond` every 2 ms; panic with `what` after 10 s.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(Duration::from_secs(10), what, cond).await;
}
