//! Shared fixtures of the `leader_*` integration tests: a real etcd 3.4 per test, a TCP proxy
//! that can partition or delay the follower's connection, test certificates, small waiting
//! helpers.

pub mod certs;
pub mod etcd;
pub mod patroni;
pub mod proxy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use vip_agent::clock::monotonic_ns;
use vip_agent::leader::{KeyState, LeaderFollower, LeaderSettings};

/// Logs of the code under test go to the test's captured output (`RUST_LOG` overrides).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("vip_agent=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Settings for tests: the trigger value is `pg1`; retries are quick.
pub fn settings(endpoints: Vec<String>, key: &str) -> LeaderSettings {
    let mut s = LeaderSettings::new(endpoints, key, "pg1");
    s.backoff_max = Duration::from_millis(500);
    s
}

/// A running follower: its receiver, every state it published (in order), its cancel token.
pub struct Running {
    pub rx: watch::Receiver<KeyState>,
    pub log: Arc<Mutex<Vec<KeyState>>>,
    pub cancel: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(settings: LeaderSettings) -> Self {
        let mut follower = LeaderFollower::new(settings).expect("valid settings");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        follower.on_key(move |s| sink.lock().expect("log lock").push(*s));
        let rx = follower.subscribe_key();
        let cancel = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(follower.run(cancel.clone()));
        Self {
            rx,
            log,
            cancel,
            task,
        }
    }

    pub fn now(&self) -> KeyState {
        *self.rx.borrow()
    }

    /// Waits until the published state satisfies `pred`; panics with the last state after `limit`.
    pub async fn wait(
        &mut self,
        what: &str,
        limit: Duration,
        mut pred: impl FnMut(&KeyState) -> bool,
    ) -> KeyState {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let s = *self.rx.borrow_and_update();
            if pred(&s) {
                return s;
            }
            match tokio::time::timeout_at(deadline, self.rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("follower ended while waiting for {what}; last {s:?}"),
                Err(_) => panic!("timed out after {limit:?} waiting for {what}; last {s:?}"),
            }
        }
    }

    pub fn published(&self) -> Vec<KeyState> {
        self.log.lock().expect("log lock").clone()
    }

    pub async fn stop(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(2), self.task)
            .await
            .expect("follower exits promptly when cancelled")
            .expect("follower task does not panic");
    }
}

/// Primary with a deadline in the future.
pub fn safe_now(s: &KeyState) -> bool {
    s.is_safe_at(monotonic_ns())
}

pub const SEC: u64 = 1_000_000_000;
