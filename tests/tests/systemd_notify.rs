//! What the real agent tells systemd (`Type=notify`, `WatchdogSec=`), read from a notify socket
//! this test binds, as systemd's own: `READY=1` once the leader key was read; `WATCHDOG=1` while it
//! runs; around each SIGHUP `RELOADING=1` with `MONOTONIC_USEC` (CLOCK_MONOTONIC at the reload)
//! then `READY=1`, both when the configuration is unchanged and when the agent restarts with a new
//! one; `STOPPING=1` on SIGTERM.
//!
//! One node with real etcd in namespaces (subnet 10.77.200.0/24). Needs root; skips loudly
//! without it (fails under CI).

use std::{
    os::unix::net::UnixDatagram,
    time::{Duration, Instant},
};

use vip_agent::clock::monotonic_ns;
use vip_tests::{cluster::Cluster, require_privileges};

/// One notification: its `KEY=VALUE` lines.
type Message = Vec<(String, String)>;

fn parse(datagram: &[u8]) -> Message {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn get<'a>(m: &'a Message, key: &str) -> Option<&'a str> {
    m.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The systemd side: every datagram received, with the watchdog pings counted apart.
struct Systemd {
    socket: UnixDatagram,
    watchdog_pings: usize,
}

impl Systemd {
    /// The next notification that is not a bare `WATCHDOG=1`, within `within`.
    fn next(&mut self, within: Duration) -> Message {
        let deadline = Instant::now() + within;
        let mut buf = [0_u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no notification within {within:?}");
            self.socket
                .set_read_timeout(Some(left))
                .expect("set the read timeout");
            let n = self
                .socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no notification within {within:?}: {e}"));
            let m = parse(&buf[..n]);
            if m.len() == 1 && get(&m, "WATCHDOG") == Some("1") {
                self.watchdog_pings += 1;
                continue;
            }
            return m;
        }
    }
}

fn sighup(c: &mut Cluster) {
    let pid = nix::unistd::Pid::from_raw(c.agent(0).pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP the agent");
}

/// `RELOADING=1` with a `MONOTONIC_USEC` taken between `before` and now, then `READY=1`.
fn assert_reload(systemd: &mut Systemd, before_ns: u64) {
    let reloading = systemd.next(Duration::from_secs(10));
    assert_eq!(get(&reloading, "RELOADING"), Some("1"), "{reloading:?}");
    let usec: u64 = get(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("MONOTONIC_USEC in {reloading:?}"));
    let after_ns = monotonic_ns();
    assert!(
        (before_ns / 1_000..=after_ns / 1_000).contains(&usec),
        "MONOTONIC_USEC {usec} is CLOCK_MONOTONIC at the reload ({before_ns}..{after_ns} ns)"
    );
    let ready = systemd.next(Duration::from_secs(30));
    assert_eq!(
        get(&ready, "READY"),
        Some("1"),
        "after RELOADING: {ready:?}"
    );
}

#[test]
fn agent_notifies_ready_watchdog_reload_and_stopping() {
    if !require_privileges("agent_notifies_ready_watchdog_reload_and_stopping") {
        return;
    }
    let mut c = Cluster::new(200, 1, &vip_tests::agent_binary(), "");
    let path = c.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let mut systemd = Systemd {
        socket,
        watchdog_pings: 0,
    };
    // As systemd starts a Type=notify service with WatchdogSec=2s (WATCHDOG_PID is unset: the
    // variables are for whichever process reads them; env execs the agent in its own PID).
    let notify = format!("NOTIFY_SOCKET={}", path.display());
    c.start_agent_with(0, &["env", &notify, "WATCHDOG_USEC=2000000"]);

    let ready = systemd.next(Duration::from_secs(30));
    assert_eq!(get(&ready, "READY"), Some("1"), "{ready:?}");
    assert!(
        get(&ready, "STATUS").is_some_and(|s| s.starts_with("running")),
        "{ready:?}"
    );

    // SIGHUP, configuration unchanged: reloading, then ready again.
    let before = monotonic_ns();
    sighup(&mut c);
    assert_reload(&mut systemd, before);
    assert!(
        c.log(0).contains("SIGHUP: configuration unchanged"),
        "{}",
        c.log(0)
    );

    // SIGHUP with a changed configuration: the agent restarts, and its start sends READY=1.
    let config = std::fs::read_to_string(&c.nodes[0].config).expect("read the config");
    std::fs::write(&c.nodes[0].config, format!("{config}\ngarp-count: 5\n"))
        .expect("change the config");
    let before = monotonic_ns();
    sighup(&mut c);
    assert_reload(&mut systemd, before);
    assert!(
        c.log(0).contains("SIGHUP: configuration changed"),
        "{}",
        c.log(0)
    );

    // The watchdog pings keep coming (a quarter of WatchdogSec: 500 ms): wait for two more.
    let pings = systemd.watchdog_pings;
    let mut buf = [0_u8; 4096];
    systemd
        .socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set the read timeout");
    while systemd.watchdog_pings < pings + 2 {
        let n = systemd.socket.recv(&mut buf).expect("a watchdog ping");
        let m = parse(&buf[..n]);
        assert_eq!(
            m,
            [("WATCHDOG".to_owned(), "1".to_owned())],
            "only pings now"
        );
        systemd.watchdog_pings += 1;
    }

    let status = c.terminate_agent(0).expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}: {}", c.log(0));
    let stopping = systemd.next(Duration::from_secs(5));
    assert_eq!(get(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    eprintln!("watchdog pings seen: {}", systemd.watchdog_pings);
}
