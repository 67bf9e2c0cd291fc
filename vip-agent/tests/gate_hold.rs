//! The gate follows the database down as well as up, and finds Patroni where Patroni says it is.
//!
//! Against a fake Patroni on loopback (the real one is in `tests/tests/patroni_e2e.rs`):
//! * while answering, the hold check fences the moment Patroni says the database is not a running
//!   primary (demoted, restarted), and the VIP answers again only through the promotion gate;
//! * an unknown answer keeps the VIP while the leader source confirms the key, and fences it while
//!   the source is unreachable;
//! * the promotion-gate timeout never opens on the database's own word that it is a replica;
//! * without `patroni-url`, the member key's `api_url` is asked, and a refused connection means
//!   "no Patroni here" only where no member is registered;
//! * a demotion Patroni writes into the member key fences even when its REST API hangs;
//! * another cluster's Patroni at the URL never opens the gate by itself.

pub mod common;

use std::time::Duration;

use common::patroni::{
    FakePatroni, Harness, Mode, config, eventually, eventually_within, impostor_owned_by, ours,
};
use tokio::sync::watch;
use vip_agent::{
    clock::monotonic_ns,
    config::PatroniUrl,
    gate::{CHECK_INTERVAL, GateState, Outcome, UrlSource},
    leader::MemberView,
    leadership::{Cause, Leadership},
};

fn fenced(s: &Leadership) -> bool {
    !s.primary && s.safe_until_ns == 0
}

fn unreachable(last: &Leadership) -> Leadership {
    Leadership {
        cause: Cause::Unreachable,
        observed_at_ns: monotonic_ns(),
        ..*last
    }
}

fn member(api: Option<PatroniUrl>, role: &str, revision: i64) -> MemberView {
    MemberView {
        known: true,
        registered: true,
        api,
        api_problem: String::new(),
        role: Some(role.to_owned()),
        state: Some("running".to_owned()),
        mod_revision: revision,
    }
}

/// Open the gate on a running primary for a 30 s lease; returns that state.
async fn open(h: &Harness) -> Leadership {
    let confirmed = ours(Duration::from_secs(30), 10);
    h.hook.apply(&confirmed);
    eventually("the gate opens", || h.writes.answering()).await;
    confirmed
}

#[tokio::test]
async fn hold_fences_a_demotion_while_etcd_confirms_and_answers_again_only_once_primary() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = Harness::start(config(patroni.url(), Duration::from_secs(60)));
    open(&h).await;
    // Still answering across several checks of a healthy primary.
    let seen = patroni.requests();
    eventually("a few hold checks", || patroni.requests() >= seen + 3).await;
    assert!(h.writes.answering());

    for demoted in [Mode::LockedInRecovery, Mode::Demoting, Mode::Replica] {
        patroni.set(demoted);
        eventually(&format!("fenced on {demoted:?}"), || {
            fenced(&h.writes.last())
        })
        .await;
        let status = h.status();
        assert_eq!(status.state, GateState::Waiting, "{demoted:?}: {status:?}");
        // The key is still ours: the gate waits, and never opens on a replica.
        tokio::time::sleep(CHECK_INTERVAL * 3).await;
        assert!(!h.writes.answering(), "{demoted:?}");
        patroni.set(Mode::Primary);
        eventually("answering again once primary", || h.writes.answering()).await;
    }
    assert_eq!(h.status().demotions, 3, "{:?}", h.status());
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn hold_fences_a_postgres_restart_it_did_not_see_go_down() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = Harness::start(config(patroni.url(), Duration::from_secs(60)));
    open(&h).await;
    let seen = patroni.requests();
    eventually("a hold check", || patroni.requests() > seen).await;
    // Patroni restarted PostgreSQL between two checks; it is primary again, but it was not.
    patroni.set(Mode::Restarted);
    eventually("fenced on the new postmaster start time", || {
        h.status().demotions == 1
    })
    .await;
    // The fence was written (the gate may have opened again right after: a running primary).
    let writes = h.writes.all();
    let opened = writes.iter().position(|w| w.primary).expect("opened");
    assert!(
        writes[opened..].iter().any(fenced),
        "a fence after the restart: {writes:?}"
    );
    let status = h.status();
    assert!(
        status.last_check.contains("PostgreSQL restarted"),
        "{status:?}"
    );
    // The promotion gate opens again on the running primary, and the new start time is the new
    // baseline: no more fences.
    eventually("answering again", || h.writes.answering()).await;
    let seen = patroni.requests();
    eventually("more hold checks", || patroni.requests() >= seen + 3).await;
    assert!(h.writes.answering());
    assert_eq!(h.status().demotions, 1);
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn hold_unknown_answers_keep_the_vip_while_etcd_confirms_and_fence_it_while_unreachable() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let mut c = config(patroni.url(), Duration::from_secs(60));
    c.failsafe = false;
    let h = Harness::start(c);
    let confirmed = open(&h).await;
    patroni.set(Mode::Hang);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        h.writes.answering(),
        "a hanging API while etcd confirms: the lease bounds the VIP"
    );
    patroni.set(Mode::Garbage);
    tokio::time::sleep(CHECK_INTERVAL * 5).await;
    assert!(h.writes.answering(), "garbage while etcd confirms");
    assert_eq!(h.status().demotions, 0);

    // etcd becomes unreachable: Patroni may be demoting right now, and nothing says otherwise.
    h.hook.apply(&unreachable(&confirmed));
    eventually_within(Duration::from_secs(2), "fenced", || {
        fenced(&h.writes.last())
    })
    .await;
    let status = h.status();
    assert_eq!(status.demotions, 1, "{status:?}");
    assert!(
        status.last_check.contains("leader source is unreachable"),
        "{status:?}"
    );
    // A running primary again within the lease: answering again, through the gate.
    patroni.set(Mode::Primary);
    eventually("answering again", || h.writes.answering()).await;
    assert!(h.writes.last().safe_until_ns <= confirmed.safe_until_ns);
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn gate_timeout_never_opens_on_a_replica_that_says_so() {
    let patroni = FakePatroni::start(Mode::LockedInRecovery).await;
    let h = Harness::start(config(patroni.url(), Duration::from_millis(300)));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!h.writes.ever_answered(), "{:?}", h.writes.all());
    let status = h.status();
    assert_eq!(status.state, GateState::Waiting);
    assert!(
        status.last_probe.starts_with("(past the timeout)")
            && status.last_probe.contains("replica"),
        "{status:?}"
    );
    // An unknown answer after Patroni has spoken does not open it either.
    patroni.set(Mode::Garbage);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!h.writes.ever_answered());
    patroni.set(Mode::Primary);
    eventually("opens on a running primary", || h.writes.answering()).await;
    assert_eq!(h.status().last_outcome, Some(Outcome::Primary));
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn gate_finds_patroni_in_the_member_key_and_follows_it() {
    let patroni = FakePatroni::start(Mode::LockedInRecovery).await;
    let mut c = config(patroni.url(), Duration::from_secs(60));
    c.patroni_url = None;
    let (tx, rx) = watch::channel(member(Some(patroni.url()), "replica", 3));
    let h = Harness::start_with(c, Some(rx), Some("demo".to_owned()));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("asked at the member key's api_url", || {
        patroni.requests() >= 2
    })
    .await;
    let status = h.status();
    assert_eq!(status.patroni_url, patroni.url().to_string());
    assert_eq!(status.patroni_url_source, Some(UrlSource::MemberKey));
    assert!(!h.writes.ever_answered());

    // Patroni moved its API (restapi.connect_address changed): the gate follows the key.
    let moved = FakePatroni::start(Mode::Primary).await;
    tx.send_replace(member(Some(moved.url()), "master", 4));
    eventually("opens at the new address", || h.writes.answering()).await;
    assert_eq!(h.status().patroni_url, moved.url().to_string());
    h.finish().await;
    patroni.stop().await;
    moved.stop().await;
}

#[tokio::test]
async fn a_refusal_means_no_patroni_only_where_no_member_is_registered() {
    // A port where nothing listens.
    let gone = FakePatroni::start(Mode::Primary).await;
    let url = gone.url();
    gone.stop().await;

    // Registered: Patroni runs here and is restarting its API; keep gating until the timeout.
    let mut c = config(url.clone(), Duration::from_millis(400));
    c.patroni_url = None;
    let (_tx, rx) = watch::channel(member(Some(url.clone()), "master", 3));
    let h = Harness::start_with(c.clone(), Some(rx), Some("demo".to_owned()));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !h.writes.ever_answered(),
        "a registered member's refusal gates"
    );
    eventually("opens at the timeout", || h.writes.answering()).await;
    assert_eq!(h.status().last_outcome, Some(Outcome::Timeout));
    h.finish().await;

    // Not yet read from etcd: not known to be absent either.
    let (tx, rx) = watch::channel(MemberView::default());
    let h = Harness::start_with(c.clone(), Some(rx), Some("demo".to_owned()));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.writes.ever_answered(), "an unread member key gates");
    // etcd says no member is registered: nothing here will ever answer.
    tx.send_replace(MemberView {
        known: true,
        ..MemberView::default()
    });
    eventually("opens at once", || h.writes.answering()).await;
    assert_eq!(h.status().last_outcome, Some(Outcome::NoPatroni));
    assert_eq!(h.status().patroni_url_source, Some(UrlSource::Default));
    h.finish().await;
}

#[tokio::test]
async fn a_demotion_written_into_the_member_key_fences_while_the_api_hangs() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let mut c = config(patroni.url(), Duration::from_secs(60));
    c.patroni_url = None;
    let (tx, rx) = watch::channel(member(Some(patroni.url()), "master", 7));
    let h = Harness::start_with(c, Some(rx), Some("demo".to_owned()));
    open(&h).await;
    patroni.set(Mode::Hang);
    // Patroni's own rewrite of the same role changes nothing.
    tx.send_replace(member(Some(patroni.url()), "master", 8));
    tokio::time::sleep(CHECK_INTERVAL * 3).await;
    assert!(h.writes.answering());
    tx.send_replace(member(Some(patroni.url()), "demoted", 9));
    eventually("fenced on the member key", || fenced(&h.writes.last())).await;
    assert!(
        h.status().last_check.contains("member key"),
        "{:?}",
        h.status()
    );
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn another_clusters_patroni_never_opens_the_gate_by_itself() {
    let patroni = FakePatroni::start(Mode::OtherScope).await;
    let h = Harness::start(config(patroni.url(), Duration::from_secs(60)));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("a few probes", || patroni.requests() >= 5).await;
    assert!(!h.writes.ever_answered());
    assert!(h.status().last_probe.contains("scope"), "{:?}", h.status());
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn an_expired_member_key_keeps_its_api_url_and_a_refusal_there_keeps_gating() {
    let gone = FakePatroni::start(Mode::Primary).await;
    let url = gone.url();
    gone.stop().await;
    let mut c = config(url.clone(), Duration::from_millis(400));
    c.patroni_url = None;
    // The member key expired (an etcd outage): not registered, but its api_url is remembered.
    let (_tx, rx) = watch::channel(MemberView {
        known: true,
        api: Some(url.clone()),
        ..MemberView::default()
    });
    let h = Harness::start_with(c, Some(rx), Some("demo".to_owned()));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(
        !h.writes.ever_answered(),
        "a refusal at the remembered API gates"
    );
    assert_eq!(h.status().patroni_url, url.to_string());
    assert_eq!(h.status().patroni_url_source, Some(UrlSource::MemberKey));
    h.finish().await;
}

/// Open the gate on a failsafe-confirming Patroni with a `lease`, then lose etcd: returns the
/// unreachable state published.
async fn open_then_lose_etcd(h: &Harness, lease: Duration) -> Leadership {
    let confirmed = ours(lease, 10);
    h.hook.apply(&confirmed);
    eventually("the gate opens", || h.writes.answering()).await;
    let cut = unreachable(&confirmed);
    h.hook.apply(&cut);
    cut
}

/// Patroni's failsafe word holds the VIP past its lease only from a verified peer: a plain-http
/// listener on this host that belongs to neither root nor Patroni's user (a local user who bound
/// the port) is not Patroni, and the VIP goes silent at the lease deadline (issue 16, item 1).
#[tokio::test]
async fn failsafe_word_from_another_users_listener_is_not_taken() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true: this test needs root (a socket owned by another uid)"
        );
        eprintln!("SKIPPED: a listener owned by another uid needs root");
        return;
    }
    let nobody = 65534;
    let h = Harness::start(config(impostor_owned_by(nobody), Duration::from_secs(60)));
    let cut = open_then_lose_etcd(&h, Duration::from_millis(1500)).await;
    // Patroni keeps claiming failsafe mode: a taken word would move the deadline past the lease.
    eventually("the impostor's word refused", || {
        h.status().failsafe.last_probe.contains("not taken")
    })
    .await;
    eventually("the lease deadline passes", || {
        monotonic_ns() > cut.safe_until_ns
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!h.writes.answering(), "answering past the lease");
    assert!(
        h.writes
            .all()
            .iter()
            .all(|s| s.safe_until_ns <= cut.safe_until_ns),
        "a deadline past the lease was written"
    );
    let status = h.status();
    assert_eq!(status.failsafe.extensions, 0, "{status:?}");
    assert!(
        status.failsafe.last_probe.contains("not taken")
            && status
                .failsafe
                .last_probe
                .contains(&format!("uid {nobody}")),
        "{status:?}"
    );
    h.finish().await;
}

/// However long Patroni keeps confirming, the VIP is held past its lease on that word for at most
/// the failsafe bound (`FAILSAFE_MAX_HOLD`, shortened here), then silent.
#[tokio::test]
async fn failsafe_hold_past_the_lease_is_bounded() {
    let patroni = FakePatroni::start(Mode::FailsafePrimary).await;
    let bound = Duration::from_secs(2);
    let h = Harness::start_gate(config(patroni.url(), Duration::from_secs(60)), |gate| {
        gate.with_target(None, Some("demo".to_owned()))
            .with_failsafe_max_hold(bound)
    });
    let cut = open_then_lose_etcd(&h, Duration::from_millis(500)).await;
    eventually("held past the lease", || {
        h.writes.last().safe_until_ns > cut.safe_until_ns
    })
    .await;
    eventually_within(Duration::from_secs(10), "fenced at the bound", || {
        fenced(&h.writes.last())
    })
    .await;
    let held = monotonic_ns().saturating_sub(cut.safe_until_ns);
    assert!(
        held >= u64::try_from(bound.as_nanos()).expect("ns"),
        "fenced {held} ns past the lease, before the bound"
    );
    // Patroni still says failsafe: the VIP stays silent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fenced(&h.writes.last()), "answering again after the bound");
    assert!(h.status().failsafe.fences >= 1, "{:?}", h.status());
    h.finish().await;
}
