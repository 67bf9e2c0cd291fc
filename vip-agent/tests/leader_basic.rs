//! Leader following against a real etcd: values, deletes, leases, ordering, endpoints.

pub mod common;

use std::time::Duration;

use common::etcd::{Etcd, free_port};
use common::proxy::Proxy;
use common::{Running, SEC, init_tracing, safe_now, settings};
use etcd_client::PutOptions;
use vip_agent::clock::monotonic_ns;
use vip_agent::leader::{Reason, Via};

const KEY: &str = "/service/pgcluster/leader";
const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_with_our_value_gives_primary_with_lease_deadline() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    let s = f
        .wait("first read", WAIT, |s| s.reason != Reason::Startup)
        .await;
    assert_eq!(s.reason, Reason::Deleted { via: Via::Read });
    assert!(!s.primary);

    let t_grant_sent = monotonic_ns();
    let lease = admin.lease_grant(10, None).await.unwrap().id();
    let t_grant_done = monotonic_ns();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let s = f
        .wait("confirmed primary", WAIT, |s| {
            s.primary && s.safe_until_ns > 0
        })
        .await;
    assert_eq!(s.lease_id, lease);
    // The lease expires at grant + 10 s (no keepalive): the deadline can never be later than
    // that, and is at most 1 s (TTL rounding) + 0.5 s (margin) + request time earlier.
    assert!(
        s.safe_until_ns <= t_grant_done + 10 * SEC,
        "deadline {} beyond the lease expiry bound {}",
        s.safe_until_ns,
        t_grant_done + 10 * SEC
    );
    assert!(
        s.safe_until_ns >= t_grant_sent + 8 * SEC,
        "deadline {} ms after the grant",
        (s.safe_until_ns - t_grant_sent) / 1_000_000
    );
    assert!(safe_now(&s));
    // The states went: not primary → ours (no deadline yet) → confirmed.
    let log = f.published();
    let ours = log
        .iter()
        .position(|s| matches!(s.reason, Reason::Ours { via } if via != Via::Read))
        .expect("the watch (or, rarely, a confirmation read that beat it) reported our value");
    assert_eq!(
        log[ours].safe_until_ns, 0,
        "no deadline before the lease is confirmed"
    );
    assert!(log[ours..].iter().any(|s| s.reason == Reason::Confirmed));

    // Renewed by the periodic confirmation: never past the lease expiry.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let later = f.now();
    assert!(later.primary && later.safe_until_ns >= s.safe_until_ns);
    assert!(later.safe_until_ns <= t_grant_done + 10 * SEC);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_value_and_delete_fence_immediately() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    let s = f.wait("primary", WAIT, safe_now).await;
    assert_eq!(s.lease_id, lease);

    // Switch to another member: not primary at once, from the watch event.
    let t_put = monotonic_ns();
    let rev = admin
        .put(KEY, "pg2", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let t_put_done = monotonic_ns();
    let s = f
        .wait("other value", Duration::from_secs(5), |s| !s.primary)
        .await;
    // Normally from the watch; a confirmation read answered in the same instant may beat it.
    assert!(
        matches!(s.reason, Reason::OtherValue { via } if via != Via::Read),
        "{s:?}"
    );
    assert_eq!(s.safe_until_ns, 0);
    assert_eq!(s.revision, rev);
    eprintln!(
        "put→event: put took {} µs, event observed {} µs after the put was sent",
        (t_put_done - t_put) / 1000,
        s.observed_at_ns.saturating_sub(t_put) / 1000
    );

    // Back to us, then delete.
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    f.wait("primary again", WAIT, safe_now).await;
    let rev = admin
        .delete(KEY, None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let s = f
        .wait("deleted", Duration::from_secs(5), |s| !s.primary)
        .await;
    assert!(
        matches!(s.reason, Reason::Deleted { via } if via != Via::Read),
        "{s:?}"
    );
    assert_eq!(s.safe_until_ns, 0);
    assert_eq!(s.revision, rev);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_or_garbage_bytes_are_not_primary() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    f.wait("first read", WAIT, |s| s.reason != Reason::Startup)
        .await;
    let values: [&[u8]; 8] = [
        b"pg2",
        b"pg1\n",
        b" pg1",
        b"PG1",
        b"pg",
        b"pg10",
        b"",
        &[0xff, 0xfe, 0x00, b'p', b'g', b'1'],
    ];
    let mut last = 0;
    for v in values {
        last = admin
            .put(KEY, v, None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    f.wait("all garbage seen", WAIT, |s| s.revision >= last)
        .await;
    assert!(
        f.published().iter().all(|s| !s.primary),
        "{:?}",
        f.published()
    );
    // Sanity: the exact value is ours.
    admin.put(KEY, "pg1", None).await.unwrap();
    let s = f.wait("primary", WAIT, |s| s.primary).await;
    assert_eq!(s.lease_id, 0);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_of_200_flips_ends_in_the_last_write() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    f.wait("first read", WAIT, |s| s.reason != Reason::Startup)
        .await;
    for round in 0..2 {
        let mut last = 0;
        for i in 0..200 {
            // Round 0 ends with ours (i = 199 odd), round 1 with another member.
            let ours = (i % 2 == 1) == (round == 0);
            let v = if ours { "pg1" } else { "pg2" };
            last = admin
                .put(KEY, v, Some(PutOptions::new().with_lease(lease)))
                .await
                .unwrap()
                .header()
                .unwrap()
                .revision();
        }
        let s = f
            .wait("last write seen", WAIT, |s| s.revision >= last)
            .await;
        assert_eq!(s.revision, last);
        assert_eq!(s.primary, round == 0, "round {round}: {s:?}");
        if round == 0 {
            f.wait("confirmed", WAIT, safe_now).await;
        }
    }
    // Published states never go back in revision.
    let log = f.published();
    assert!(
        log.windows(2).all(|w| w[0].revision <= w[1].revision),
        "revisions out of order"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_ends_primary() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(2, None).await.unwrap().id();
    let t_grant_done = monotonic_ns();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    let s = f.wait("primary", WAIT, |s| s.primary).await;
    assert!(s.safe_until_ns <= t_grant_done + 2 * SEC);
    let s = f.wait("expired", WAIT, |s| !s.primary).await;
    assert!(
        matches!(s.reason, Reason::Deleted { via } if via != Via::Read),
        "{s:?}"
    );
    let max_deadline = f.published().iter().map(|s| s.safe_until_ns).max().unwrap();
    assert!(
        max_deadline <= t_grant_done + 2 * SEC,
        "a deadline went past the lease expiry"
    );
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_key_is_primary_from_the_first_read() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(20, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    f.wait("primary", WAIT, safe_now).await;
    let log = f.published();
    assert_eq!(log[0].reason, Reason::Ours { via: Via::Read });
    assert_eq!(log[1].reason, Reason::Confirmed);
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_without_lease_is_renewed_by_confirmations() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    f.wait("first read", WAIT, |s| s.reason != Reason::Startup)
        .await;
    let t = monotonic_ns();
    admin.put(KEY, "pg1", None).await.unwrap();
    let s = f.wait("primary", WAIT, safe_now).await;
    assert_eq!(s.lease_id, 0);
    // 3 confirmation intervals after a read sent after the put.
    assert!(s.safe_until_ns > t + 3 * SEC && s.safe_until_ns < monotonic_ns() + 3 * SEC + 1);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let later = f.now();
    assert!(later.safe_until_ns >= s.safe_until_ns + SEC, "renewed");
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_first_still_work() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    // A refused port, then a black hole (connects, never answers), then the real one.
    let black_hole = Proxy::start(format!("127.0.0.1:{}", etcd.client_port).parse().unwrap()).await;
    black_hole.partition();
    let refused = format!("http://127.0.0.1:{}", free_port());
    let mut f = Running::start(settings(
        vec![refused, black_hole.endpoint(), etcd.endpoint()],
        KEY,
    ));
    let s = f.wait("primary", Duration::from_secs(20), safe_now).await;
    assert_eq!(s.lease_id, lease);
    // Still followed after the failed endpoints: a change shows up.
    admin.put(KEY, "pg2", None).await.unwrap();
    f.wait("not primary", Duration::from_secs(5), |s| !s.primary)
        .await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_keys_each_with_a_follower() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let mut a = Running::start(settings(vec![etcd.endpoint()], "/service/a/leader"));
    let mut b = Running::start(settings(vec![etcd.endpoint()], "/service/b/leader"));
    admin.put("/service/a/leader", "pg1", None).await.unwrap();
    admin.put("/service/b/leader", "pg2", None).await.unwrap();
    a.wait("a primary", WAIT, safe_now).await;
    let rev = admin
        .put("/service/b/leader", "pg1", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    b.wait("b primary", WAIT, |s| s.revision >= rev && safe_now(s))
        .await;
    admin.delete("/service/a/leader", None).await.unwrap();
    a.wait("a deleted", WAIT, |s| !s.primary).await;
    assert!(b.now().primary);
    a.stop().await;
    b.stop().await;
}

/// Not a performance claim: prints put → event latencies on loopback for the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_latency_on_loopback() {
    init_tracing();
    let etcd = Etcd::start();
    let mut admin = etcd.client().await;
    let mut f = Running::start(settings(vec![etcd.endpoint()], KEY));
    f.wait("first read", WAIT, |s| s.reason != Reason::Startup)
        .await;
    let mut sent = Vec::new();
    for i in 0..300 {
        let v = if i % 2 == 0 { "pg1" } else { "pg2" };
        let t0 = monotonic_ns();
        let rev = admin
            .put(KEY, v, None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        let t1 = monotonic_ns();
        sent.push((rev, t0, t1));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let last = sent.last().unwrap().0;
    f.wait("all events", WAIT, |s| s.revision >= last).await;
    let log = f.published();
    let mut from_send = Vec::new();
    let mut from_ack = Vec::new();
    for (rev, t0, t1) in sent {
        // The first state reflecting the put: usually its watch event; rarely a confirmation read
        // that was answered at or after that revision before the event arrived (the event is
        // then already known and skipped).
        let s = log
            .iter()
            .find(|s| s.revision >= rev)
            .expect("every put is reflected");
        from_send.push(s.observed_at_ns.saturating_sub(t0));
        from_ack.push(i128::from(s.observed_at_ns) - i128::from(t1));
    }
    from_send.sort_unstable();
    from_ack.sort_unstable();
    let p = |v: &[u64], q: f64| v[((v.len() - 1) as f64 * q) as usize] / 1000;
    let pa = |v: &[i128], q: f64| v[((v.len() - 1) as f64 * q) as usize] / 1000;
    eprintln!(
        "put sent → event published (µs): p50 {} p90 {} p99 {} max {}",
        p(&from_send, 0.5),
        p(&from_send, 0.9),
        p(&from_send, 0.99),
        p(&from_send, 1.0)
    );
    eprintln!(
        "put acknowledged → event published (µs, negative = event first): p50 {} p90 {} p99 {} max {}",
        pa(&from_ack, 0.5),
        pa(&from_ack, 0.9),
        pa(&from_ack, 0.99),
        pa(&from_ack, 1.0)
    );
    f.stop().await;
}
