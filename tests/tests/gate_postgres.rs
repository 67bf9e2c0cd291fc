//! The promotion gate (`promotion-gate: postgres`) against a real PostgreSQL: a primary and a
//! streaming standby (pg_basebackup), both on unix sockets in a temporary directory, run as the
//! `postgres` user. The key names this node while the standby is in recovery: the gate must not
//! answer; then the standby is promoted, and the gate's answering write must come after the last
//! moment the test itself saw `pg_is_in_recovery()` = true.
//!
//! Needs root (to run PostgreSQL as `postgres`) and Debian's postgresql-15 (`cargo xtask setup`);
//! without them it skips loudly, and under `CI=true` a skip is a failure. Every process it starts
//! is stopped by PID, and the directory is removed (`vip_tests::postgres`).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::sync::CancellationToken;
use vip_agent::{
    clock::monotonic_ns,
    config::{GateConfig, GateMode, Secret},
    gate::{Gate, GateState, Outcome},
    leader,
    leadership::{Cause, Leadership},
};
use vip_tests::postgres::{PgDir, connect, in_recovery, require_postgres};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_postgres_never_answers_before_the_standby_leaves_recovery() {
    let Some(installation) =
        require_postgres("gate_postgres_never_answers_before_the_standby_leaves_recovery")
    else {
        return;
    };
    let pg = PgDir::new(installation, "vip-gate-pg");
    let (primary_port, standby_port) = (pg.port(), pg.port());
    let primary_data = pg.path().join("primary");
    let standby_data = pg.path().join("standby");

    pg.initdb(&primary_data);
    let _primary = pg.start(&primary_data, primary_port);
    let primary = connect(&pg.dsn(primary_port)).await;
    assert!(!in_recovery(&primary).await.expect("pg_is_in_recovery"));
    pg.basebackup(primary_port, &standby_data);
    let _standby = pg.start(&standby_data, standby_port);
    let observer = connect(&pg.dsn(standby_port)).await;
    assert!(
        in_recovery(&observer).await.expect("pg_is_in_recovery"),
        "the standby starts in recovery"
    );

    // The gate, writing into a recorder instead of the BPF map: (state, time of the write).
    let writes: Arc<Mutex<Vec<(Leadership, u64)>>> = Arc::default();
    let w = Arc::clone(&writes);
    let gate = Gate::new(
        "pg",
        GateConfig {
            mode: GateMode::Postgres,
            postgres_dsn: Some(Secret::new(pg.dsn(standby_port))),
            interval: Duration::from_millis(5),
            timeout: Duration::from_secs(120),
            ..GateConfig::default()
        },
        &leader::KIND,
        Box::new(move |s: &Leadership| {
            w.lock().expect("writes").push((*s, monotonic_ns()));
        }),
    );
    let status = Arc::new(Mutex::new(gate.status()));
    let st = Arc::clone(&status);
    gate.on_status(Box::new(move |s| *st.lock().expect("status") = s.clone()));
    let hook = gate.hook();
    let stop = CancellationToken::new();
    let task = tokio::spawn(gate.run(stop.clone()));
    let answered_at = || {
        writes
            .lock()
            .expect("writes")
            .iter()
            .find(|(s, _)| s.primary || s.safe_until_ns != 0)
            .map(|(_, t)| *t)
    };

    // The key names this node, confirmed for a minute: the gate waits on the standby.
    let now = monotonic_ns();
    hook.apply(&Leadership {
        primary: true,
        safe_until_ns: now + 60_000_000_000,
        term: 5,
        cause: Cause::Confirmed,
        observed_at_ns: now,
        detail: 5,
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !status
        .lock()
        .expect("status")
        .last_probe
        .contains("pg_is_in_recovery() is true")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gate never saw the standby in recovery: {:?}",
            status.lock().expect("status")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        answered_at(),
        None,
        "no answer while the standby is in recovery"
    );
    assert_eq!(status.lock().expect("status").state, GateState::Waiting);

    // Promote, and watch recovery end from our own connection: the last "true" we saw was
    // asked at `last_true_sent`; the gate's answering write must come after that.
    pg.promote(&standby_data);
    let mut last_true_sent = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let sent = monotonic_ns();
        if !in_recovery(&observer).await.expect("pg_is_in_recovery") {
            break;
        }
        last_true_sent = sent;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the standby never left recovery"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let opened = loop {
        if let Some(t) = answered_at() {
            break t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gate did not open after the promotion: {:?}",
            status.lock().expect("status")
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    assert!(
        opened > last_true_sent,
        "the gate answered at {opened} ns, before pg_is_in_recovery() was last seen true (asked at \
         {last_true_sent} ns)"
    );
    let final_status = status.lock().expect("status").clone();
    assert_eq!(final_status.last_outcome, Some(Outcome::Primary));
    assert_eq!(final_status.state, GateState::Open);

    stop.cancel();
    task.await.expect("gate task");
    drop(observer);
    drop(primary);
}
