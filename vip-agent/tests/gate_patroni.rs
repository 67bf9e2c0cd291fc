//! The promotion gate against a fake Patroni REST API on loopback: it answers only after a 200 from
//! a running primary, times out on a hanging API, keeps gating on garbage, opens at once when
//! nothing listens (the "no Patroni here" rule, first probe only), and never answers when the key
//! is lost while gating. The gate is driven through the library with a recording sink in place of
//! the BPF map writer.
//!
//! With `patroni-failsafe`, the same fake Patroni stands for a primary kept by failsafe mode: the
//! gate keeps answering past the lease deadline while Patroni says so, and fences the moment it
//! does not (another answer, garbage, a hang), never when disabled.

pub mod common;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use common::{
    certs::Pki,
    patroni::{FakePatroni, Harness, Mode, config, eventually, lost, ours},
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use vip_agent::{
    clock::monotonic_ns,
    config::{GateMode, PatroniUrl, Secret},
    gate::{FAILSAFE_HOLD, GateState, Outcome},
    leadership::{Cause, Leadership},
};

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

/// Patroni's REST API over https (`restapi.certfile`) with basic authentication: Python's `ssl`
/// ends each HTTP/1.0 answer by closing the TCP connection without a TLS `close_notify`, and the
/// body is read up to there. Wrong credentials give 401, which names them.
async fn tls_patroni(pki: &Pki) -> SocketAddr {
    let certs = CertificateDer::pem_file_iter(&pki.server_cert)
        .expect("server cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("server cert");
    let key = PrivateKeyDer::from_pem_file(&pki.server_key).expect("server key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut chunk = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                // "patroni:secret"
                let authorized = String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("\r\nauthorization: basic cgf0cm9uatpzzwnyzxq=\r\n");
                let response = if authorized {
                    "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"state\": \"running\", \"role\": \"master\", \"patroni\": {\"version\": \"3.0.2\", \"scope\": \"demo\"}}"
                } else {
                    "HTTP/1.0 401 Unauthorized\r\nContent-Type: text/html\r\n\r\nno auth header received"
                };
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.flush().await;
                // Dropped without shutdown: the TCP connection closes, no close_notify.
            });
        }
    });
    addr
}

#[tokio::test]
async fn gate_patroni_over_https_with_basic_auth() {
    let pki = Pki::generate();
    let addr = tls_patroni(&pki).await;
    let url = PatroniUrl::parse(&format!("https://{addr}")).expect("url");
    let with = |password: &str| {
        let mut c = config(url.clone(), Duration::from_secs(60));
        c.patroni_ca_file = Some(pki.ca.clone());
        c.patroni_user = Some("patroni".to_owned());
        c.patroni_password = Some(Secret::new(password));
        c
    };

    let h = Harness::start(with("wrong"));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("a 401 probe", || {
        h.status().last_probe.contains("patroni-password")
    })
    .await;
    assert!(!h.writes.ever_answered(), "a 401 must not open the gate");
    h.finish().await;

    let h = Harness::start(with("secret"));
    h.hook.apply(&ours(Duration::from_secs(30), 10));
    eventually("the gate opens", || h.writes.answering()).await;
    assert_eq!(h.status().last_outcome, Some(Outcome::Primary));
    h.finish().await;
}

// ---------------------------------------------------------------------------------------------
// Patroni failsafe_mode (patroni-failsafe)

fn failsafe_config(patroni: &FakePatroni, on: bool) -> vip_agent::config::GateConfig {
    let mut c = config(patroni.url(), Duration::from_secs(60));
    c.failsafe = on;
    c
}

/// What the follower publishes when etcd becomes unreachable: the last state, its deadline.
fn unreachable(last: &Leadership) -> Leadership {
    Leadership {
        cause: Cause::Unreachable,
        observed_at_ns: monotonic_ns(),
        ..*last
    }
}

/// Open the gate on a running primary for a lease confirmed until `lease` from now, then report
/// etcd unreachable while Patroni answers as `outage`. Returns the lease deadline.
async fn answering_then_etcd_unreachable(
    h: &Harness,
    patroni: &FakePatroni,
    lease: Duration,
    outage: Mode,
) -> u64 {
    let confirmed = ours(lease, 10);
    h.hook.apply(&confirmed);
    eventually("the gate opens", || h.writes.answering()).await;
    assert_eq!(h.status().last_outcome, Some(Outcome::Primary));
    patroni.set(outage);
    h.hook.apply(&unreachable(&confirmed));
    confirmed.safe_until_ns
}

/// Sleep until kernel monotonic time `t_ns`.
async fn sleep_until_ns(t_ns: u64) {
    tokio::time::sleep(Duration::from_nanos(t_ns.saturating_sub(monotonic_ns()))).await;
}

fn fenced(s: &Leadership) -> bool {
    !s.primary && s.safe_until_ns == 0
}

#[tokio::test]
async fn failsafe_keeps_answering_past_the_lease_while_patroni_says_so_then_fences() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = Harness::start(failsafe_config(&patroni, true));
    let lease_deadline = answering_then_etcd_unreachable(
        &h,
        &patroni,
        Duration::from_millis(800),
        Mode::FailsafePrimary,
    )
    .await;

    // Well past the lease deadline (by more than one hold): still answering, on Patroni's word.
    sleep_until_ns(lease_deadline + 2 * u64::try_from(FAILSAFE_HOLD.as_nanos()).expect("fits"))
        .await;
    assert!(
        h.writes.answering(),
        "answering past the lease: {:?}",
        h.writes.last()
    );
    let last = h.writes.last();
    assert!(
        last.safe_until_ns > lease_deadline && last.cause == Cause::Unreachable,
        "{last:?}"
    );
    let status = h.status();
    assert!(
        status.failsafe.probing && status.failsafe.extensions >= 2,
        "{status:?}"
    );
    assert!(status.failsafe.holding_at(monotonic_ns()), "{status:?}");
    assert_eq!(status.state, GateState::Open);
    let writes = h.writes.all();
    let opened = writes.iter().position(|s| s.primary).expect("opened");
    assert!(
        writes[opened..].iter().all(|s| !fenced(s)),
        "never fenced while Patroni confirmed: {writes:?}"
    );

    // Patroni demotes (a member did not accept its POST /failsafe): fenced by the next probe,
    // written explicitly rather than left to the hold running out.
    patroni.set(Mode::Replica);
    eventually("fenced after Patroni stopped confirming", || {
        fenced(&h.writes.last())
    })
    .await;
    // Patroni's own word that it is no longer primary: a demotion fence by the hold check.
    let status = h.status();
    assert_eq!(
        (status.demotions, status.failsafe.fences, status.state),
        (1, 0, GateState::Idle),
        "{status:?}"
    );
    assert!(status.failsafe.last_probe.contains("503"), "{status:?}");
    assert!(!status.failsafe.probing);
    // And it stays fenced: only etcd brings the VIP back, not Patroni saying failsafe again.
    patroni.set(Mode::FailsafePrimary);
    let probes = patroni.requests();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(fenced(&h.writes.last()), "{:?}", h.writes.last());
    assert_eq!(
        patroni.requests(),
        probes,
        "no more failsafe probes after the fence"
    );
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn failsafe_garbage_or_a_hang_fences_past_the_lease() {
    for bad in [Mode::Garbage, Mode::Hang, Mode::Primary] {
        let patroni = FakePatroni::start(Mode::Primary).await;
        let h = Harness::start(failsafe_config(&patroni, true));
        let lease_deadline = answering_then_etcd_unreachable(
            &h,
            &patroni,
            Duration::from_millis(1000),
            Mode::FailsafePrimary,
        )
        .await;
        eventually("held past the lease deadline", || {
            h.status().failsafe.holding_at(monotonic_ns())
        })
        .await;
        assert!(monotonic_ns() >= lease_deadline);
        patroni.set(bad);
        eventually(&format!("fenced after {bad:?}"), || {
            fenced(&h.writes.last())
        })
        .await;
        let status = h.status();
        // No usable answer while etcd is unreachable fences as a demotion (the hold check); a
        // running primary that is not in failsafe mode withdraws the extension past the lease.
        let expected = match bad {
            Mode::Garbage | Mode::Hang => (1, 0),
            _ => (0, 1),
        };
        assert_eq!(
            (status.demotions, status.failsafe.fences),
            expected,
            "{bad:?}: {status:?}"
        );
        let why = &status.failsafe.last_probe;
        match bad {
            Mode::Garbage => assert!(why.contains("not an HTTP response"), "{why}"),
            Mode::Hang => assert!(why.contains("no answer within"), "{why}"),
            // A running primary without failsafe_mode_is_active is not a failsafe confirmation.
            _ => assert!(why.contains("failsafe_mode_is_active false"), "{why}"),
        }
        h.finish().await;
        patroni.stop().await;
    }
}

#[tokio::test]
async fn failsafe_key_lost_fences_at_once_whatever_patroni_says() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = Harness::start(failsafe_config(&patroni, true));
    answering_then_etcd_unreachable(
        &h,
        &patroni,
        Duration::from_millis(1000),
        Mode::FailsafePrimary,
    )
    .await;
    eventually("held past the lease deadline", || {
        h.status().failsafe.holding_at(monotonic_ns())
    })
    .await;
    // etcd is back and says the key is gone: fenced synchronously, in the follower's hook.
    h.hook.apply(&lost(11));
    assert!(fenced(&h.writes.last()), "{:?}", h.writes.last());
    assert!(!h.writes.answering());
    // Patroni still claims failsafe: nothing re-opens.
    let writes = h.writes.all().len();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.writes.all().len(), writes, "{:?}", h.writes.all());
    assert!(!h.status().failsafe.holding_at(monotonic_ns()));
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn failsafe_hold_survives_the_key_read_back_as_ours_until_the_lease_is_confirmed() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = Harness::start(failsafe_config(&patroni, true));
    answering_then_etcd_unreachable(
        &h,
        &patroni,
        Duration::from_millis(1000),
        Mode::FailsafePrimary,
    )
    .await;
    eventually("held past the lease deadline", || {
        h.status().failsafe.holding_at(monotonic_ns())
    })
    .await;
    // etcd answers again: the key is still ours (same lease, its old deadline long gone).
    let mut read = ours(Duration::ZERO, 12);
    read.safe_until_ns = monotonic_ns().saturating_sub(1);
    read.cause = Cause::Ours;
    h.hook.apply(&read);
    assert!(
        h.writes.answering(),
        "no gap while the lease is confirmed: {:?}",
        h.writes.last()
    );
    let confirmed = ours(Duration::from_secs(30), 12);
    h.hook.apply(&confirmed);
    assert_eq!(h.writes.last(), confirmed, "back on the lease");
    assert!(
        !h.status().failsafe.probing,
        "etcd is back: Patroni is no longer asked"
    );
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn failsafe_needs_the_confirmation_before_the_lease_runs_out() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = Harness::start(failsafe_config(&patroni, true));
    // Patroni has not entered failsafe mode (yet): the lease alone holds the VIP.
    let lease_deadline =
        answering_then_etcd_unreachable(&h, &patroni, Duration::from_millis(1000), Mode::Primary)
            .await;
    sleep_until_ns(lease_deadline + 200_000_000).await;
    eventually("silent at the lease deadline", || !h.writes.answering()).await;
    // Failsafe confirmed only after the VIP went silent: it stays silent until etcd confirms.
    patroni.set(Mode::FailsafePrimary);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(!h.writes.answering(), "{:?}", h.writes.last());
    assert!(
        h.writes
            .all()
            .iter()
            .all(|s| s.safe_until_ns <= lease_deadline),
        "never past the lease: {:?}",
        h.writes.all()
    );
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn failsafe_disabled_fences_at_the_lease_deadline_whatever_patroni_says() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = Harness::start(failsafe_config(&patroni, false));
    let lease_deadline = answering_then_etcd_unreachable(
        &h,
        &patroni,
        Duration::from_millis(1000),
        Mode::FailsafePrimary,
    )
    .await;
    sleep_until_ns(lease_deadline + 1_000_000_000).await;
    assert!(!h.writes.answering(), "{:?}", h.writes.last());
    assert!(
        h.writes
            .all()
            .iter()
            .all(|s| s.safe_until_ns <= lease_deadline),
        "{:?}",
        h.writes.all()
    );
    assert!(!h.status().failsafe.enabled && h.status().failsafe.extensions == 0);
    h.finish().await;
    patroni.stop().await;
}

/// repmgr's unreachable (its PostgreSQL check failing) is not Patroni's DCS unreachable:
/// `patroni-failsafe`, on by default, must not hold the VIP past repmgr's deadline, even when a
/// Patroni on this node claims failsafe mode. It used to, through the shared "etcd unreachable".
#[tokio::test]
async fn failsafe_never_acts_on_a_repmgr_source_being_unreachable() {
    let patroni = FakePatroni::start(Mode::Primary).await;
    let h = common::patroni::Harness::start_for(
        failsafe_config(&patroni, true),
        None,
        Some("demo".to_owned()),
        &vip_agent::repmgr::KIND,
    );
    let lease_deadline = answering_then_etcd_unreachable(
        &h,
        &patroni,
        Duration::from_millis(1000),
        Mode::FailsafePrimary,
    )
    .await;
    sleep_until_ns(lease_deadline + 2 * u64::try_from(FAILSAFE_HOLD.as_nanos()).expect("fits"))
        .await;
    assert!(!h.writes.answering(), "{:?}", h.writes.last());
    assert!(
        h.writes
            .all()
            .iter()
            .all(|s| s.safe_until_ns <= lease_deadline),
        "never past repmgr's deadline: {:?}",
        h.writes.all()
    );
    let status = h.status();
    assert!(
        !status.failsafe.enabled && status.failsafe.extensions == 0,
        "{status:?}"
    );
    h.finish().await;
    patroni.stop().await;
}

#[tokio::test]
async fn failsafe_works_without_the_promotion_gate() {
    let patroni = FakePatroni::start(Mode::FailsafePrimary).await;
    let mut c = failsafe_config(&patroni, true);
    c.mode = GateMode::Off;
    let h = Harness::start(c);
    let confirmed = ours(Duration::from_millis(1000), 10);
    h.hook.apply(&confirmed);
    assert_eq!(h.writes.last(), confirmed, "off: answering at once");
    h.hook.apply(&unreachable(&confirmed));
    sleep_until_ns(confirmed.safe_until_ns + 1_000_000_000).await;
    assert!(h.writes.answering(), "{:?}", h.writes.last());
    patroni.set(Mode::Replica);
    eventually("fenced", || fenced(&h.writes.last())).await;
    assert_eq!(h.status().state, GateState::Off);
    h.finish().await;
    patroni.stop().await;
}
