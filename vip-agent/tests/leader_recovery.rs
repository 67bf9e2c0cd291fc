//! Leader following when etcd goes away: restarts, partitions, compaction, cancellation.

pub mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::proxy::Proxy;
use common::{Running, SEC, init_tracing, safe_now, settings};
use etcd_client::{CompactionOptions, PutOptions};
use vip_agent::clock::monotonic_ns;
use vip_agent::leader::{LeaderError, Reason, Via, check_connection};

const KEY: &str = "/service/pgcluster/leader";
const WAIT: Duration = Duration::from_secs(10);

fn etcd_addr(etcd: &Etcd) -> std::net::SocketAddr {
    format!("127.0.0.1:{}", etcd.client_port)
        .parse()
        .expect("socket address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_key_keeps_one_session_and_a_moving_deadline() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    // Keep the lease alive like Patroni does: no key writes, so no watch events.
    let (mut keeper, _stream) = admin.lease_keep_alive(lease).await.unwrap();
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    let first = f.wait("primary", WAIT, safe_now).await;
    for _ in 0..7 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        keeper.keep_alive().await.unwrap();
    }
    let now = f.now();
    assert!(now.primary);
    assert!(
        now.safe_until_ns > first.safe_until_ns + 5 * SEC,
        "renewed: {first:?} → {now:?}"
    );
    // Healthy for 7 s without events (progress requests answered, confirmations fine): no
    // session was lost.
    assert!(
        f.published()
            .iter()
            .all(|s| s.reason != Reason::EtcdUnreachable),
        "{:?}",
        f.published()
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_mid_watch() {
    init_tracing();
    let mut etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    let before = f.wait("primary", WAIT, safe_now).await;

    etcd.kill();
    let s = f
        .wait("unreachable", WAIT, |s| s.reason == Reason::EtcdUnreachable)
        .await;
    // Still primary with the deadline it had: etcd being away is not a reason to drop the VIP
    // before the lease could possibly expire.
    assert!(s.primary);
    assert!(s.safe_until_ns >= before.safe_until_ns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = f.now();
    assert!(
        s.primary
            && s.safe_until_ns == f.published().iter().map(|s| s.safe_until_ns).max().unwrap()
    );

    etcd.restart();
    let mut admin = etcd.client().await;
    let rev = admin
        .put(KEY, "pg2", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let s = f
        .wait("change after restart", Duration::from_secs(15), |s| {
            s.revision >= rev
        })
        .await;
    assert!(!s.primary, "{s:?}");
    assert_eq!(s.safe_until_ns, 0);
    // And the watch works again afterwards.
    admin.put(KEY, "pg1", None).await.unwrap();
    f.wait("primary again", WAIT, safe_now).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_primary_keeps_state_but_deadline_does_not_advance() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let proxy = Proxy::start(etcd_addr(&etcd)).await;
    let lease = admin.lease_grant(6, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let (mut keeper, mut responses) = admin.lease_keep_alive(lease).await.unwrap();
    let mut f = Running::start(settings(vec![proxy.endpoint()], KEY));
    f.wait("primary", WAIT, safe_now).await;

    // Partition the follower from etcd while Patroni (the keeper here) keeps renewing.
    keeper.keep_alive().await.unwrap();
    responses.message().await.unwrap();
    let t_renewed = monotonic_ns();
    proxy.partition();
    let at_partition = f.now();
    // The lease as renewed just now expires at t_renewed + 6 s at the latest (etcd's view); the
    // deadline must not be later.
    assert!(at_partition.safe_until_ns <= t_renewed + 6 * SEC);

    let start = monotonic_ns();
    let mut saw_unreachable = false;
    while monotonic_ns() < start + 7 * SEC {
        keeper.keep_alive().await.unwrap();
        let s = f.now();
        assert!(
            s.primary,
            "etcd unreachable is not a reason to publish not-primary: {s:?}"
        );
        assert!(
            s.safe_until_ns <= at_partition.safe_until_ns,
            "deadline advanced while partitioned: {at_partition:?} → {s:?}"
        );
        saw_unreachable |= s.reason == Reason::EtcdUnreachable;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_unreachable);
    // By now the deadline has passed on its own: fenced in the data plane.
    assert!(!safe_now(&f.now()));

    proxy.heal();
    let s = f
        .wait("confirmed again", Duration::from_secs(15), safe_now)
        .await;
    assert_eq!(s.lease_id, lease);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_the_watch_is_behind_misses_nothing() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    admin.put(KEY, "pg2", None).await.unwrap();
    let proxy = Proxy::start(etcd_addr(&etcd)).await;
    // Every byte from the follower reaches etcd 1 s late: the watch creation sent right after
    // the first read arrives long after the writes and the compaction below.
    proxy.delay_to_server(Duration::from_secs(1));
    let mut s = settings(vec![proxy.endpoint()], KEY);
    s.request_timeout = Duration::from_secs(4);
    let mut f = Running::start(s);
    f.wait("first read", Duration::from_secs(15), |s| {
        s.reason != Reason::Startup
    })
    .await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    let mut last = 0;
    for v in ["pg1", "pg3", "pg1"] {
        last = admin
            .put(KEY, v, Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    admin
        .compact(last, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    let s = f
        .wait("final state", Duration::from_secs(20), |s| {
            s.revision >= last && s.primary
        })
        .await;
    assert_eq!(s.lease_id, lease);
    // It came from a re-read after the compacted watch, not from events.
    let log = f.published();
    assert!(
        log.iter()
            .any(|s| s.reason == Reason::Ours { via: Via::Read } && s.revision >= last),
        "{log:?}"
    );
    proxy.delay_to_server(Duration::ZERO);
    // The new watch works.
    admin.put(KEY, "pg3", None).await.unwrap();
    f.wait("not primary", WAIT, |s| !s.primary).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_start_then_etcd_appears() {
    init_tracing();
    let mut etcd = Etcd::prepare(None, None);
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = f.now();
    assert!(!s.primary && s.safe_until_ns == 0, "{s:?}");
    etcd.restart();
    let mut admin = etcd.client().await;
    admin.put(KEY, "pg1", None).await.unwrap();
    f.wait("primary", Duration::from_secs(15), safe_now).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_is_prompt_even_while_retrying() {
    init_tracing();
    let etcd = Etcd::prepare(None, None);
    let f = Running::start(settings(vec![etcd.endpoint()], KEY));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = std::time::Instant::now();
    f.stop().await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );

    let live = Etcd::start();
    let f = Running::start(settings(vec![live.endpoint()], KEY));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let t = std::time::Instant::now();
    f.stop().await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_connection_reports_unreachable_endpoint() {
    init_tracing();
    let etcd = Etcd::prepare(None, None);
    let e = check_connection(&settings(vec![etcd.endpoint()], KEY))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            LeaderError::Get { .. } | LeaderError::Timeout { .. } | LeaderError::Connect { .. }
        ),
        "{e:?}"
    );
    assert!(msg.contains(&etcd.endpoint()), "{msg}");
    eprintln!("unreachable: {msg}");
}
