//! TLS (CA, client certificates) and etcd authentication.

pub mod common;

use std::time::Duration;

use common::certs::Pki;
use common::etcd::{ClientTls, Etcd, ServerTls};
use common::{Running, init_tracing, safe_now, settings};
use etcd_client::{Permission, PutOptions};
use vip_agent::leader::{LeaderError, LeaderFollower, Reason, check_connection};

const KEY: &str = "/service/pgcluster/leader";
const WAIT: Duration = Duration::from_secs(10);

fn tls_etcd(pki: &Pki, client_cert_auth: bool) -> Etcd {
    Etcd::start_with(
        Some(ServerTls {
            cert: pki.server_cert.clone(),
            key: pki.server_key.clone(),
            client_ca: client_cert_auth.then(|| pki.ca.clone()),
        }),
        Some(ClientTls {
            ca: pki.ca.clone(),
            cert: pki.client_cert.clone(),
            key: pki.client_key.clone(),
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificate_works() {
    init_tracing();
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true);
    let mut admin = etcd.client().await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let mut s = settings(vec![etcd.endpoint()], KEY);
    s.ca_file = Some(pki.ca.clone());
    s.cert_file = Some(pki.client_cert.clone());
    s.key_file = Some(pki.client_key.clone());
    check_connection(&s).await.unwrap();
    let mut f = Running::start(s);
    let st = f.wait("primary", WAIT, safe_now).await;
    assert_eq!(st.lease_id, lease);
    admin.delete(KEY, None).await.unwrap();
    f.wait("deleted", WAIT, |s| !s.primary).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_wrong_ca_fails_clearly() {
    init_tracing();
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, false);
    let mut s = settings(vec![etcd.endpoint()], KEY);
    s.ca_file = Some(pki.other_ca.clone());
    let e = check_connection(&s).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("wrong CA: {msg}");
    assert!(msg.contains(&etcd.endpoint()), "{msg}");
    assert!(
        msg.contains("certificate") || msg.contains("UnknownIssuer"),
        "{msg}"
    );

    // The follower never becomes primary and keeps retrying.
    let mut admin = etcd.client().await;
    admin.put(KEY, "pg1", None).await.unwrap();
    let f = Running::start(s);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(f.published().iter().all(|s| !s.primary));
    f.stop().await;
}

/// An expired certificate on either side fails the connection with an error that names the
/// endpoint and says the certificate expired, and the follower never reports a primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_expired_certificates_fail_clearly() {
    init_tracing();
    let pki = Pki::generate();

    // The server presents an expired certificate: rustls refuses it.
    let etcd = Etcd::start_with(
        Some(ServerTls {
            cert: pki.expired_server_cert.clone(),
            key: pki.expired_server_key.clone(),
            client_ca: None,
        }),
        None,
    );
    let mut s = settings(vec![etcd.endpoint()], KEY);
    s.ca_file = Some(pki.ca.clone());
    assert_fails_as_expired("server", &etcd, &s).await;
    drop(etcd);

    // Our client certificate expired: etcd refuses the handshake. The key names us, yet the
    // follower never reports a primary.
    let etcd = tls_etcd(&pki, true);
    let mut admin = etcd.client().await;
    admin.put(KEY, "pg1", None).await.unwrap();
    let mut s = settings(vec![etcd.endpoint()], KEY);
    s.ca_file = Some(pki.ca.clone());
    s.cert_file = Some(pki.expired_client_cert.clone());
    s.key_file = Some(pki.expired_client_key.clone());
    assert_fails_as_expired("client", &etcd, &s).await;
    let f = Running::start(s);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(f.published().iter().all(|s| !s.primary));
    f.stop().await;
}

/// `check_connection` fails naming the endpoint and saying the (`side`'s) certificate expired.
async fn assert_fails_as_expired(side: &str, etcd: &Etcd, s: &vip_agent::leader::LeaderSettings) {
    let msg = check_connection(s)
        .await
        .expect_err("an expired certificate cannot connect")
        .to_string();
    eprintln!("expired {side} certificate: {msg}");
    assert!(msg.contains(&etcd.endpoint()), "{msg}");
    assert!(msg.to_ascii_lowercase().contains("expired"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_ca_file_uses_the_system_bundle() {
    init_tracing();
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, false);
    // https without a CA file: the system bundle does not know our test CA.
    let s = settings(vec![etcd.endpoint()], KEY);
    let e = check_connection(&s).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("no CA file: {msg}");
    assert!(
        matches!(e, LeaderError::NoSystemRoots { .. })
            || msg.contains("UnknownIssuer")
            || msg.contains("certificate"),
        "{msg}"
    );
    // A client certificate without a CA file is valid configuration (the server is verified
    // against the system bundle); the bundle does not know this private CA, so it fails the
    // same way.
    let mut s = settings(vec![etcd.endpoint()], KEY);
    s.cert_file = Some(pki.client_cert.clone());
    s.key_file = Some(pki.client_key.clone());
    match LeaderFollower::new(s.clone()) {
        Ok(_) => assert!(check_connection(&s).await.is_err()),
        Err(e) => assert!(matches!(e, LeaderError::NoSystemRoots { .. }), "{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_requires_a_client_certificate() {
    init_tracing();
    let pki = Pki::generate();
    let etcd = tls_etcd(&pki, true);
    let mut s = settings(vec![etcd.endpoint()], KEY);
    s.ca_file = Some(pki.ca.clone());
    let e = check_connection(&s).await.unwrap_err();
    eprintln!("no client certificate: {e}");
    assert!(e.to_string().contains(&etcd.endpoint()));
}

#[test]
fn missing_or_bad_tls_files_are_named() {
    let pki = Pki::generate();
    let mut s = settings(vec!["https://127.0.0.1:1".into()], KEY);
    s.ca_file = Some(pki.dir.path().join("nope.crt"));
    let e = LeaderFollower::new(s.clone()).unwrap_err();
    assert!(matches!(e, LeaderError::ReadCaFile { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.crt"), "{e}");

    s.ca_file = Some(pki.ca.clone());
    s.cert_file = Some(pki.client_cert.clone());
    s.key_file = Some(pki.dir.path().join("missing.key"));
    let e = LeaderFollower::new(s.clone()).unwrap_err();
    assert!(matches!(e, LeaderError::ReadKeyFile { .. }), "{e:?}");
    assert!(e.to_string().contains("missing.key"), "{e}");

    // A key where the certificate should be.
    s.cert_file = Some(pki.client_key.clone());
    s.key_file = Some(pki.client_key.clone());
    let e = LeaderFollower::new(s).unwrap_err();
    assert!(matches!(e, LeaderError::NotPem { .. }), "{e:?}");
    assert!(e.to_string().contains("client.key"), "{e}");
}

async fn enable_auth(etcd: &Etcd) {
    let mut admin = etcd.client().await;
    admin
        .user_add("root", "rootpw", None)
        .await
        .expect("add root");
    admin.role_add("root").await.expect("add root role");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("enable auth");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_wrong_password_fails_clearly_right_one_works() {
    init_tracing();
    let etcd = Etcd::start();
    enable_auth(&etcd).await;
    let mut admin = etcd.client_as("root", "rootpw").await;
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();

    let mut wrong = settings(vec![etcd.endpoint()], KEY);
    wrong.user = Some("root".into());
    wrong.password = Some("wrong".into());
    let e = check_connection(&wrong).await.unwrap_err();
    let msg = e.to_string();
    eprintln!("wrong password: {msg}");
    assert!(matches!(e, LeaderError::Authenticate { .. }), "{e:?}");
    assert!(e.is_auth_failure());
    assert!(msg.contains("authentication failed"), "{msg}");
    assert!(
        !msg.contains("wrong"),
        "the password must not be logged: {msg}"
    );

    // No credentials at all against an auth-enabled etcd.
    let anonymous = settings(vec![etcd.endpoint()], KEY);
    let e = check_connection(&anonymous).await.unwrap_err();
    eprintln!("no user: {e}");
    assert!(matches!(e, LeaderError::Get { .. }), "{e:?}");

    let f = Running::start(wrong);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(f.published().iter().all(|s| !s.primary));
    assert_eq!(f.now().reason, Reason::EtcdUnreachable);
    f.stop().await;

    let mut right = settings(vec![etcd.endpoint()], KEY);
    right.user = Some("root".into());
    right.password = Some("rootpw".into());
    check_connection(&right).await.unwrap();
    let mut f = Running::start(right);
    f.wait("primary", WAIT, safe_now).await;
    admin.put(KEY, "pg2", None).await.unwrap();
    f.wait("not primary", WAIT, |s| !s.primary).await;
    f.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_read_only_user_on_the_cluster_prefix() {
    init_tracing();
    let etcd = Etcd::start();
    enable_auth(&etcd).await;
    let mut admin = etcd.client_as("root", "rootpw").await;
    // Patroni attaches its member key to the same lease as the leader key.
    let lease = admin.lease_grant(30, None).await.unwrap().id();
    admin
        .put(KEY, "pg1", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    admin
        .put(
            "/service/pgcluster/members/pg1",
            "{}",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    admin.user_add("vip", "vippw", None).await.unwrap();
    admin.role_add("vip-key").await.unwrap();
    admin
        .role_grant_permission("vip-key", Permission::read(KEY))
        .await
        .unwrap();
    admin.user_grant_role("vip", "vip-key").await.unwrap();
    admin.user_add("vip-prefix", "vippw", None).await.unwrap();
    admin.role_add("vip-prefix").await.unwrap();
    admin
        .role_grant_permission(
            "vip-prefix",
            Permission::read("/service/pgcluster/").with_prefix(),
        )
        .await
        .unwrap();
    admin
        .user_grant_role("vip-prefix", "vip-prefix")
        .await
        .unwrap();

    let mut key_only = settings(vec![etcd.endpoint()], KEY);
    key_only.user = Some("vip".into());
    key_only.password = Some("vippw".into());
    let key_only_result = check_connection(&key_only).await;
    eprintln!("read on the leader key only: {key_only_result:?}");

    let mut prefix = settings(vec![etcd.endpoint()], KEY);
    prefix.user = Some("vip-prefix".into());
    prefix.password = Some("vippw".into());
    check_connection(&prefix).await.unwrap();
    let mut f = Running::start(prefix);
    f.wait("primary", WAIT, safe_now).await;
    f.stop().await;
}
