//! The promotion gate against a fake Patroni REST API on loopback: it answers only after a 200 from
//! a running primary, times out on a hanging API, keeps gating on garbage, opens at once when
//! nothing listens (the "no Patroni here" rule, first probe only), and never answers when the key
//! is lost while gating. The gate is driven through the library with a recording sink in place of
//! the BPF map writer.

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
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use vip_agent::{
    clock::monotonic_ns,
    config::{GateConfig, GateMode, PatroniUrl},
    gate::{Gate, GateHook, GateState, Outcome},
    leader::{LeaderState, Reason, Via},
};

/// What the fake Patroni answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// 503, PostgreSQL still a replica.
    Replica,
    /// 200 (leader lock held) but PostgreSQL still in recovery: what Patroni says mid-promotion.
    LockedInRecovery,
    /// 200, running primary (Patroni 3.0 says `master`).
    Primary,
    /// Accept, read the request, never answer.
    Hang,
    /// Bytes that are not HTTP, then close.
    Garbage,
}

struct FakePatroni {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl FakePatroni {
    async fn start(mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
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

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn url(&self) -> PatroniUrl {
        PatroniUrl::parse(&format!("http://{}", self.addr)).expect("url")
    }

    /// Stop listening: later connections are refused.
    async fn stop(self) {
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
        Mode::Primary => (
            "200 OK",
            r#"{"state": "running", "role": "master", "timeline": 2}"#,
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

/// The states the gate wrote to its sink (in place of the data plane).
#[derive(Clone, Default)]
struct Writes(Arc<Mutex<Vec<LeaderState>>>);

impl Writes {
    fn answering(&self) -> bool {
        self.0
            .lock()
            .expect("writes")
            .last()
            .is_some_and(|s| s.is_safe_at(monotonic_ns()))
    }

    fn ever_answered(&self) -> bool {
        self.0
            .lock()
            .expect("writes")
            .iter()
            .any(|s| s.primary || s.safe_until_ns != 0)
    }

    fn last(&self) -> LeaderState {
        *self.0.lock().expect("writes").last().expect("a write")
    }
}

struct Harness {
    gate_status: Arc<Mutex<vip_agent::gate::GateStatus>>,
    hook: GateHook,
    writes: Writes,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Harness {
    fn start(config: GateConfig) -> Self {
        let writes = Writes::default();
        let w = writes.clone();
        let gate = Gate::new(
            "test",
            config,
            Box::new(move |s: &LeaderState| w.0.lock().expect("writes").push(*s)),
        );
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

    fn status(&self) -> vip_agent::gate::GateStatus {
        self.gate_status.lock().expect("status").clone()
    }

    async fn finish(self) {
        self.stop.cancel();
        self.task.await.expect("gate task");
    }
}

fn config(url: PatroniUrl, timeout: Duration) -> GateConfig {
    GateConfig {
        mode: GateMode::Patroni,
        patroni_url: url,
        interval: Duration::from_millis(5),
        timeout,
        ..GateConfig::default()
    }
}

/// The key is ours, confirmed until `ttl` from now.
fn ours(ttl: Duration, revision: i64) -> LeaderState {
    let now = monotonic_ns();
    LeaderState {
        primary: true,
        safe_until_ns: now + u64::try_from(ttl.as_nanos()).expect("ttl"),
        revision,
        lease_id: 7,
        reason: Reason::Confirmed,
        observed_at_ns: now,
    }
}

fn lost(revision: i64) -> LeaderState {
    LeaderState {
        primary: false,
        safe_until_ns: 0,
        revision,
        lease_id: 0,
        reason: Reason::Deleted { via: Via::Watch },
        observed_at_ns: monotonic_ns(),
    }
}

/// Poll `cond` every 2 ms; panic with `what` after 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn gate_patroni_opens_only_after_a_running_primary_and_then_passes_everything_through() {
    let patroni = FakePatroni::start(Mode::Replica).await;
    let h = Harness::start(config(patroni.url(), Duration::from_secs(60)));

    h.hook.apply(&ours(Duration::from_secs(30), 10));
    assert!(!h.writes.answering(), "fenced while gating");
    assert_eq!(h.status().state, GateState::Waiting);
    eventually("a few 503 probes", || patroni.requests() >= 3).await;
    assert!(!h.writes.ever_answered(), "a 503 must not open the gate");

    // Mid-promotion Patroni already says 200 for /primary, but its body says replica.
    patroni.set(Mode::LockedInRecovery);
    let seen = patroni.requests();
    eventually("a few 200-but-replica probes", || {
        patroni.requests() >= seen + 3
    })
    .await;
    assert!(
        !h.writes.ever_answered(),
        "200 with role replica must not open the gate"
    );
    assert!(
        h.status().last_probe.contains("role replica"),
        "{:?}",
        h.status()
    );

    // A confirmation with a later deadline arrives while gating: the gate must use it.
    let renewed = ours(Duration::from_secs(45), 11);
    h.hook.apply(&renewed);
    assert!(!h.writes.answering());

    patroni.set(Mode::Primary);
    eventually("the gate opens", || h.writes.answering()).await;
    assert_eq!(h.writes.last(), renewed, "opened with the current deadline");
    let status = h.status();
    assert_eq!(status.state, GateState::Open);
    assert_eq!(status.last_outcome, Some(Outcome::Primary));
    assert_eq!(status.outcomes[0], 1);

    // Renewals while answering are not gated: written synchronously by the hook.
    let probes = patroni.requests();
    let later = ours(Duration::from_secs(50), 12);
    h.hook.apply(&later);
    assert_eq!(h.writes.last(), later);
    // Demotion is immediate: written before apply returns.
    h.hook.apply(&lost(13));
    assert!(!h.writes.answering(), "fenced at once");
    assert_eq!(h.status().state, GateState::Idle);
    assert_eq!(
        patroni.requests(),
        probes,
        "neither renewal nor demotion probes"
    );
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn gate_patroni_hanging_api_times_out_and_answers_with_the_reason() {
    let patroni = FakePatroni::start(Mode::Hang).await;
    let h = Harness::start(config(patroni.url(), Duration::from_millis(300)));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("the gate times out and opens", || h.writes.answering()).await;
    let status = h.status();
    assert_eq!(status.last_outcome, Some(Outcome::Timeout), "{status:?}");
    assert!(
        status.last_probe.contains("no answer within"),
        "the reason names the hang: {status:?}"
    );
    assert!(patroni.requests() >= 1);
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn gate_patroni_garbage_keeps_gating() {
    let patroni = FakePatroni::start(Mode::Garbage).await;
    let h = Harness::start(config(patroni.url(), Duration::from_secs(60)));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("many garbage answers", || patroni.requests() >= 20).await;
    assert!(!h.writes.ever_answered(), "garbage must not open the gate");
    let status = h.status();
    assert_eq!(status.state, GateState::Waiting);
    assert!(
        status.last_probe.contains("not an HTTP response"),
        "{status:?}"
    );
    // And a good answer after the garbage still opens it.
    patroni.set(Mode::Primary);
    eventually("the gate opens", || h.writes.answering()).await;
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn gate_patroni_refused_first_probe_opens_at_once_but_a_later_refusal_keeps_gating() {
    // Nothing listens: a vip-manager style node without Patroni.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let url = PatroniUrl::parse(&format!("http://{port}")).expect("url");
    let h = Harness::start(config(url, Duration::from_secs(60)));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("the gate opens", || h.writes.answering()).await;
    assert_eq!(h.status().last_outcome, Some(Outcome::NoPatroni));
    h.finish().await;

    // Patroni answers 503 first, then its REST API goes away: that is not "no Patroni here".
    let patroni = FakePatroni::start(Mode::Replica).await;
    let h = Harness::start(config(patroni.url(), Duration::from_secs(60)));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("a 503 probe", || patroni.requests() >= 1).await;
    patroni.stop().await;
    eventually("refused probes recorded", || {
        h.status().last_probe.contains("connection refused")
    })
    .await;
    assert!(!h.writes.ever_answered(), "a later refusal keeps gating");
    assert_eq!(h.status().state, GateState::Waiting);
    h.finish().await;
}

#[tokio::test]
async fn gate_patroni_key_lost_while_gating_never_answers() {
    let patroni = FakePatroni::start(Mode::Replica).await;
    let h = Harness::start(config(patroni.url(), Duration::from_millis(400)));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("gating", || patroni.requests() >= 2).await;
    h.hook.apply(&lost(11));
    let status = h.status();
    assert_eq!(status.state, GateState::Idle);
    assert_eq!(status.last_outcome, Some(Outcome::Cancelled));
    // Patroni now says primary and the timeout passes: neither may open a cancelled gate.
    patroni.set(Mode::Primary);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !h.writes.ever_answered(),
        "never answered after the key was lost"
    );
    assert_eq!(h.status().last_outcome, Some(Outcome::Cancelled));

    // The next term gates again and opens on the primary answer.
    h.hook.apply(&ours(Duration::from_secs(30), 12));
    eventually("the next term opens", || h.writes.answering()).await;
    assert_eq!(h.status().last_outcome, Some(Outcome::Primary));
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn gate_off_passes_states_through_without_probing() {
    let patroni = FakePatroni::start(Mode::Replica).await;
    let mut c = config(patroni.url(), Duration::from_secs(60));
    c.mode = GateMode::Off;
    let h = Harness::start(c);
    let state = ours(Duration::from_secs(30), 10);
    h.hook.apply(&state);
    assert_eq!(h.writes.last(), state, "answering at once");
    assert_eq!(h.status().state, GateState::Off);
    h.hook.apply(&lost(11));
    assert!(!h.writes.answering());
    assert_eq!(patroni.requests(), 0);
    h.finish().await;
    patroni.stop().await;
}

/// In a network namespace whose `lo` is down (a fresh one: hand-made namespaces often leave it so),
/// connecting to 127.0.0.1 fails with "network unreachable", not "refused": still nothing can
/// answer there, so the first probe opens the gate instead of waiting for the timeout.
#[test]
fn gate_patroni_loopback_down_counts_as_no_patroni() {
    if !nix::unistd::Uid::effective().is_root() {
        let reason = "gate_patroni_loopback_down_counts_as_no_patroni: SKIPPED, needs root \
                      (a network namespace of its own)";
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
                && std::env::var_os("VIP_TESTS_REQUIRE_PRIVILEGES").is_none(),
            "{reason}; under CI a skip is a failure"
        );
        eprintln!("{reason}");
        return;
    }
    // unshare() moves only this thread into the new namespace; the runtime lives on it.
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let url = PatroniUrl::parse("http://127.0.0.1:8008").expect("url");
                let h = Harness::start(config(url, Duration::from_secs(60)));
                h.hook.apply(&ours(Duration::from_secs(30), 10));
                eventually("the gate opens", || h.writes.answering()).await;
                assert_eq!(h.status().last_outcome, Some(Outcome::NoPatroni));
                h.finish().await;
            });
    })
    .join()
    .expect("the test thread");
}
