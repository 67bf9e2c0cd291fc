//! Patroni `failsafe_mode` end to end on the agent's side: a real etcd, the leader follower behind
//! a proxy that can partition it from etcd, the promotion gate with `patroni-failsafe`, and a fake
//! Patroni REST API that reports (or stops reporting) a primary kept by failsafe mode. The gate
//! writes to a recording sink in place of the BPF map.
//!
//! * etcd unreachable + Patroni says failsafe primary: answering past the lease deadline;
//! * Patroni stops saying so: fenced by the next probe (an explicit fence write);
//! * etcd says the key is gone: fenced at once, whatever Patroni says;
//! * `patroni-failsafe` off: silent at the lease deadline, Patroni never asked.

pub mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::patroni::{FakePatroni, Harness, Mode, Writes, config, eventually_within};
use common::proxy::Proxy;
use common::{init_tracing, settings};
use etcd_client::PutOptions;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vip_agent::clock::monotonic_ns;
use vip_agent::gate::{FAILSAFE_HOLD, GateState};
use vip_agent::leader::{KeyState, LeaderFollower, Reason};
use vip_agent::leadership::Leadership;

const KEY: &str = "/service/failsafe/leader";
const WAIT: Duration = Duration::from_secs(15);

/// etcd, a proxy in front of it, a follower of `KEY` through the proxy feeding a gate (with
/// `patroni-failsafe` = `failsafe`) asking `patroni`.
struct Rig {
    etcd: Etcd,
    proxy: Proxy,
    patroni: FakePatroni,
    gate: Harness,
    rx: watch::Receiver<KeyState>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Rig {
    async fn start(failsafe: bool) -> Self {
        init_tracing();
        let etcd = Etcd::start();
        let addr = format!("127.0.0.1:{}", etcd.client_port)
            .parse()
            .expect("socket address");
        let proxy = Proxy::start(addr).await;
        let patroni = FakePatroni::start(Mode::Primary).await;
        let mut c = config(patroni.url(), Duration::from_secs(60));
        c.failsafe = failsafe;
        let gate = Harness::start(c);
        let mut follower =
            LeaderFollower::new(settings(vec![proxy.endpoint()], KEY)).expect("valid settings");
        let hook = gate.hook.clone();
        follower.on_change(move |s| hook.apply(s));
        let rx = follower.subscribe_key();
        let cancel = CancellationToken::new();
        let task = tokio::spawn(follower.run(cancel.clone()));
        Self {
            etcd,
            proxy,
            patroni,
            gate,
            rx,
            cancel,
            task,
        }
    }

    fn writes(&self) -> &Writes {
        &self.gate.writes
    }

    /// The key names this node with a fresh lease of `ttl` seconds (not kept alive: Patroni
    /// cannot reach etcd either in a failsafe outage); wait until the gate answers.
    async fn primary(&self, ttl: i64) {
        let mut admin = self.etcd.client().await;
        let lease = admin.lease_grant(ttl, None).await.expect("grant").id();
        admin
            .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("put");
        eventually_within(WAIT, "the gate answers", || self.writes().answering()).await;
    }

    /// Partition the follower from etcd; the lease deadline it reports once it notices.
    async fn partition(&mut self) -> u64 {
        self.proxy.partition();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = *self.rx.borrow_and_update();
            if s.reason == Reason::EtcdUnreachable {
                assert!(s.primary, "{s:?}");
                return s.safe_until_ns;
            }
            tokio::time::timeout_at(deadline, self.rx.changed())
                .await
                .expect("the follower notices the partition")
                .expect("follower alive");
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.expect("follower task");
        self.gate.finish().await;
        self.patroni.stop().await;
        drop(self.proxy);
        drop(self.etcd);
    }
}

async fn sleep_until_ns(t_ns: u64) {
    tokio::time::sleep(Duration::from_nanos(t_ns.saturating_sub(monotonic_ns()))).await;
}

fn fenced(s: &Leadership) -> bool {
    !s.primary && s.safe_until_ns == 0
}

fn hold_ns() -> u64 {
    u64::try_from(FAILSAFE_HOLD.as_nanos()).expect("fits")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_etcd_unreachable_answers_past_the_lease_while_patroni_confirms() {
    let mut rig = Rig::start(true).await;
    rig.primary(6).await;
    rig.patroni.set(Mode::FailsafePrimary);
    let lease_deadline = rig.partition().await;
    assert!(lease_deadline > 0);

    // Past the lease deadline by more than a hold: the follower cannot renew, Patroni can.
    sleep_until_ns(lease_deadline + 2 * hold_ns()).await;
    assert!(rig.writes().answering(), "{:?}", rig.writes().last());
    assert_eq!(rig.rx.borrow().reason, Reason::EtcdUnreachable);
    assert!(
        rig.rx.borrow().safe_until_ns <= lease_deadline,
        "the follower itself never renewed"
    );
    let status = rig.gate.status();
    assert!(status.failsafe.holding_at(monotonic_ns()), "{status:?}");
    assert!(status.failsafe.extensions >= 2, "{status:?}");

    // Patroni stops confirming (it demotes): fenced by the next check, explicitly, as a
    // demotion (Patroni's own word), and not gated again: the lease deadline has passed.
    rig.patroni.set(Mode::LockedInRecovery);
    eventually_within(WAIT, "fenced", || fenced(&rig.writes().last())).await;
    let status = rig.gate.status();
    assert_eq!(
        (status.demotions, status.failsafe.fences, status.state),
        (1, 0, GateState::Idle),
        "{status:?}"
    );

    // etcd comes back: the lease ran out meanwhile, the key is gone; nothing answers.
    rig.proxy.heal();
    eventually_within(WAIT, "the follower reads the key again", || {
        rig.rx.borrow().reason != Reason::EtcdUnreachable
    })
    .await;
    let s = *rig.rx.borrow();
    assert!(!s.primary, "the lease expired in etcd: {s:?}");
    assert!(!rig.writes().answering());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_etcd_says_the_key_is_gone_fences_at_once() {
    let mut rig = Rig::start(true).await;
    rig.primary(6).await;
    rig.patroni.set(Mode::FailsafePrimary);
    let lease_deadline = rig.partition().await;
    sleep_until_ns(lease_deadline + hold_ns() / 2).await;
    assert!(
        rig.writes().answering(),
        "held by failsafe: {:?}",
        rig.writes().last()
    );

    // Another node's Patroni took the key in the meantime (as after a real expiry).
    let mut admin = rig.etcd.client().await;
    let rev = admin
        .put(KEY, "pg2", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    rig.proxy.heal();
    let deadline = tokio::time::Instant::now() + WAIT;
    while rig.rx.borrow_and_update().revision < rev {
        tokio::time::timeout_at(deadline, rig.rx.changed())
            .await
            .expect("the follower reads the new value")
            .expect("follower alive");
    }
    // The hook wrote the fence before the watch channel heard of it: whatever Patroni says.
    let s = *rig.rx.borrow();
    assert!(!s.primary, "{s:?}");
    assert!(fenced(&rig.writes().last()), "{:?}", rig.writes().last());
    assert!(!rig.writes().answering());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !rig.writes().answering(),
        "nothing re-opens: {:?}",
        rig.writes().last()
    );
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_disabled_fences_at_the_lease_deadline() {
    let mut rig = Rig::start(false).await;
    rig.primary(4).await;
    rig.patroni.set(Mode::FailsafePrimary);
    let lease_deadline = rig.partition().await;
    sleep_until_ns(lease_deadline + 1_000_000_000).await;
    assert!(!rig.writes().answering(), "{:?}", rig.writes().last());
    assert!(
        rig.writes()
            .all()
            .iter()
            .all(|s| s.safe_until_ns <= lease_deadline),
        "never past the lease: {:?}",
        rig.writes().all()
    );
    // Patroni is still asked (the hold check), but its failsafe word never extends the VIP.
    let status = rig.gate.status();
    assert_eq!(status.failsafe.extensions, 0, "{status:?}");
    assert_eq!(status.failsafe.until_ns, 0, "{status:?}");
    rig.stop().await;
}
