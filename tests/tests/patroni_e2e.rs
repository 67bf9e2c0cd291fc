//! Issue 13, end to end against a real Patroni: Debian's Patroni 3.0.2 + PostgreSQL 15 on etcd 3.4,
//! two DB nodes in network namespaces, Patroni's REST API on the node's address only, and the real
//! vip-agent on each node configured with vip-manager's keys only (`ip`, `netmask`, `interface`,
//! `trigger-key`, `trigger-value`, `dcs-type`, `dcs-endpoints`). A client connects through the VIP
//! 50 times a second, a new connection each time, reads `pg_is_in_recovery()` and the server's
//! `vip_test.node`, and inserts a row (`vip_tests::patroni`).
//!
//! Scenarios (one cluster per test; the tests take a lock, so one cluster runs at a time):
//! * `switchover_crash_and_kill`: `patronictl switchover`; PostgreSQL's postmaster SIGKILLed on the
//!   leader (Patroni restarts it); Patroni and PostgreSQL SIGKILLed on the leader (failover after
//!   the lease; the killed node's Patroni is then started again and rejoins).
//! * `leader_cut_off_from_etcd`: a blackhole route to etcd on the leader, then (after the cluster
//!   healed) a silent nft drop.
//! * `etcd_outage_failsafe_on` / `etcd_outage_failsafe_off`: etcd unreachable from both nodes for
//!   `ttl + 10 s`, with Patroni's `failsafe_mode` on and off (`bootstrap.dcs`).
//! * `rest_source_switchover_kill_and_unreachable` (issue 18): the agents follow Patroni's REST
//!   API instead of etcd (`dcs-type: patroni` with vip-manager's defaults, `dcs-endpoints` their
//!   node's Patroni): `patronictl switchover`; Patroni and PostgreSQL SIGKILLed on the leader; the
//!   leader's REST API unreachable from its agent (a silent drop) for a while, which must darken
//!   the VIP there (no proof, no answer) and nowhere else light it.
//!
//! Asserted over every scenario's whole window (trigger, failover, heal, rejoin):
//! * 0 connections through the VIP reached a server in recovery (`pg_is_in_recovery()` true, or an
//!   `INSERT` refused as read-only);
//! * 0 writes committed on a node after the leader key (as the client's etcd watch saw it) named
//!   another node;
//! * the VIP gives a committed write on the leader again within 30 s of the final leader key of
//!   the window (of the trigger when the key did not change): the agent's documented bound is
//!   `promotion-gate-timeout` (10 s) after the key, and Patroni's own promotion takes well under a
//!   second, so 30 s is a generous bound on a behaviour, not a timing;
//! * failsafe on: Patroni keeps the primary through the outage (checked: the test bed is only
//!   meaningful then), and every connection started between the cut and etcd's return commits a
//!   write on that primary. No exemption at either end: Patroni keeps PostgreSQL read-write
//!   throughout, so any failed connection is the VIP's doing;
//! * failsafe off: Patroni demotes the leader during the outage (checked), and the counts above.
//!
//! Each scenario prints one summary line (counts) and, on failure, a timeline (leader key, REST
//! answers, runs of client outcomes) and the agents' log tails. Run:
//! `cargo test -p vip-tests --test patroni_e2e -- --nocapture` as root, after
//! `cargo build -p vip-agent`. `VIP_KEEP_LOGS=1` keeps the agents' and Patroni's logs.

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use vip_tests::patroni::{
    Expect, Manager, Observers, Options, PatroniCluster, TTL, Verdict, check_window,
    require_patroni,
};

/// One Patroni cluster at a time: each is etcd, two Patroni and two PostgreSQL, on 2 cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Bound on a committed write through the VIP on the leader after its key (see the module doc).
const RW_AGAIN: Duration = Duration::from_secs(30);
/// Bound on the cluster's healing after a scenario (rewind or re-clone of the old leader).
const HEAL: Duration = Duration::from_secs(120);
/// How long etcd stays unreachable in the outage scenarios: longer than the TTL.
const OUTAGE: Duration = Duration::from_secs(TTL + 10);
/// How long the leader's REST API stays unreachable from its agent: past the deadline of its last
/// answer (3 intervals of 1 s).
const REST_OUTAGE: Duration = Duration::from_secs(8);

/// Field order is drop order: the observers stop before the cluster goes.
struct Run {
    obs: Observers,
    c: PatroniCluster,
    verdicts: Vec<Verdict>,
}

impl Run {
    fn new(test: &str, subnet: u8, failsafe_mode: bool) -> Option<Self> {
        Self::with_manager(test, subnet, failsafe_mode, Manager::VipAgent)
    }

    fn with_manager(test: &str, subnet: u8, failsafe_mode: bool, manager: Manager) -> Option<Self> {
        Self::with_options(
            test,
            Options {
                subnet,
                failsafe_mode,
                rest_tls: false,
            },
            manager,
        )
    }

    fn with_options(test: &str, options: Options, manager: Manager) -> Option<Self> {
        let installation = require_patroni(test)?;
        let c = PatroniCluster::with_manager(
            installation,
            options,
            manager,
            &vip_tests::agent_binary(),
        );
        let obs = c.observe();
        // The client sees the primary through the VIP before anything happens.
        let leader = c.leader().expect("a leader after bootstrap");
        assert!(
            obs.wait_commit(Duration::ZERO, &leader, Duration::from_secs(30)),
            "no committed write through the VIP on {leader} after bootstrap\n{}",
            c.logs_tail(40)
        );
        Some(Self {
            obs,
            c,
            verdicts: Vec::new(),
        })
    }

    fn members(&self) -> Vec<String> {
        self.c.members.iter().map(|m| m.name.clone()).collect()
    }

    /// (leader index, other index) from the leader key.
    fn roles(&self) -> (usize, usize) {
        let leader = self.c.leader().expect("a leader key");
        let l = self.c.index_of(&leader);
        (l, 1 - l)
    }

    /// Wait for the cluster to heal and for a committed write through the VIP on the leader
    /// (bounded; a missing one is the check's to report), then check the window.
    fn close(&mut self, name: &str, from: Duration, trigger: Duration, expect: &Expect) {
        self.c.wait_healthy(HEAL);
        let leader = self.c.leader().expect("a leader key");
        let since = self
            .obs
            .leader_put_after(trigger, &leader)
            .unwrap_or(trigger);
        let remaining = (since + RW_AGAIN).saturating_sub(self.obs.now());
        let _ = self.obs.wait_commit(since, &leader, remaining);
        // A little of the steady state after it.
        std::thread::sleep(Duration::from_secs(1));
        let to = self.obs.now();
        let verdict = check_window(
            name,
            &self.obs,
            &self.members(),
            (from, trigger, to),
            expect,
        );
        // Captured by the test harness: shown on failure, or with --nocapture.
        println!(
            "{}\n{name} timeline:\n{}",
            verdict.summary, verdict.timeline
        );
        self.verdicts.push(verdict);
    }

    fn expect() -> Expect {
        Expect {
            reachable_rw: None,
            rw_again_within: RW_AGAIN,
        }
    }

    /// `patronictl switchover` from the leader to the other member.
    fn switchover(&mut self) {
        let (l, o) = self.roles();
        let (leader, candidate) = (
            self.c.members[l].name.clone(),
            self.c.members[o].name.clone(),
        );
        let from = self.obs.now();
        std::thread::sleep(Duration::from_secs(1));
        let trigger = self.obs.now();
        let out = self.c.patronictl(&[
            "switchover",
            "--leader",
            &leader,
            "--candidate",
            &candidate,
            "--force",
        ]);
        println!("patronictl switchover: {}", out.trim());
        self.c.wait_for(
            Duration::from_secs(60),
            "the leader key names the candidate",
            |c| c.leader().as_deref() == Some(candidate.as_str()),
        );
        self.close("switchover", from, trigger, &Self::expect());
    }

    /// SIGKILL of the leader's postmaster; Patroni restarts PostgreSQL and keeps the key.
    fn postgres_crash(&mut self) {
        let (l, _) = self.roles();
        let from = self.obs.now();
        std::thread::sleep(Duration::from_secs(1));
        let trigger = self.obs.now();
        let old = self.c.crash_postgres(l);
        self.c.wait_for(
            Duration::from_secs(60),
            "Patroni restarted PostgreSQL",
            |c| c.postmaster_pid(l).is_some_and(|p| p != old),
        );
        self.close("postgres crash", from, trigger, &Self::expect());
    }

    /// SIGKILL of the leader's Patroni and PostgreSQL; the other member takes over after the
    /// lease; then the killed node's Patroni is started again and rejoins.
    fn kill_leader(&mut self) {
        let (l, o) = self.roles();
        let candidate = self.c.members[o].name.clone();
        let from = self.obs.now();
        std::thread::sleep(Duration::from_secs(1));
        let trigger = self.obs.now();
        self.c.kill_patroni(l);
        self.c.kill_postgres(l);
        self.c.wait_for(
            Duration::from_secs(TTL + 40),
            "the other member takes the leader key",
            |c| c.leader().as_deref() == Some(candidate.as_str()),
        );
        self.c.start_patroni(l);
        self.close("kill patroni+postgres", from, trigger, &Self::expect());
    }

    /// The leader cut off from etcd (`cut`/`heal`); the other member takes over after the lease.
    fn cut_leader(
        &mut self,
        name: &str,
        cut: fn(&PatroniCluster, usize),
        heal: fn(&PatroniCluster, usize),
    ) {
        let (l, o) = self.roles();
        let candidate = self.c.members[o].name.clone();
        let from = self.obs.now();
        std::thread::sleep(Duration::from_secs(1));
        let trigger = self.obs.now();
        cut(&self.c, l);
        let took_over = self.c.poll_until(Duration::from_secs(TTL + 40), |c| {
            c.leader().as_deref() == Some(candidate.as_str())
        });
        // Leave the old leader cut off a little longer, as a real partition would be.
        std::thread::sleep(Duration::from_secs(3));
        heal(&self.c, l);
        assert!(
            took_over,
            "{name}: the other member did not take the leader key\n{}",
            self.c.logs_tail(40)
        );
        self.close(name, from, trigger, &Self::expect());
    }

    /// `dcs-type: patroni`: the leader's agent cannot reach its Patroni's REST API for
    /// [`REST_OUTAGE`] (the key stays, Patroni keeps PostgreSQL read-write). Without an answer
    /// nothing proves the leadership: the VIP must go dark there (some attempt in the outage fails
    /// to commit), and come back once the API answers.
    fn rest_unreachable(&mut self) {
        let (l, _) = self.roles();
        let from = self.obs.now();
        std::thread::sleep(Duration::from_secs(1));
        let trigger = self.obs.now();
        self.c.block_local_rest(l);
        std::thread::sleep(REST_OUTAGE);
        let end = self.obs.now();
        self.c.unblock_local_rest(l);
        let name = "leader's REST API unreachable from its agent";
        self.close(name, from, trigger, &Self::expect());
        let dark = self
            .obs
            .attempts()
            .iter()
            .filter(|a| a.start > trigger && a.end < end)
            .any(|a| a.committed().is_none());
        let verdict = self.verdicts.last_mut().expect("the verdict just pushed");
        if !dark {
            verdict.failures.push(
                "every attempt during the REST outage committed: the VIP kept answering without \
                 a proof"
                    .to_owned(),
            );
        }
    }

    /// etcd unreachable from both nodes for [`OUTAGE`].
    fn etcd_outage(&mut self, name: &str, failsafe: bool) {
        let (l, _) = self.roles();
        let leader = self.c.members[l].name.clone();
        if failsafe {
            // Patroni's leader keeps `/failsafe` (every member's REST URL) while failsafe_mode is
            // on: without it, it would demote.
            let names = self.members();
            self.c.wait_for(
                Duration::from_secs(30),
                "Patroni wrote the /failsafe key with every member",
                |_| {
                    self.obs
                        .key_value("failsafe")
                        .is_some_and(|v| names.iter().all(|n| v.contains(n.as_str())))
                },
            );
        }
        let from = self.obs.now();
        std::thread::sleep(Duration::from_secs(1));
        let trigger = self.obs.now();
        self.c.etcd_outage();
        std::thread::sleep(OUTAGE);
        let end = self.obs.now();
        self.c.end_etcd_outage();
        // What Patroni did with the leader during the outage.
        let samples: Vec<_> = self
            .obs
            .rest()
            .into_iter()
            .filter(|s| s.node == l)
            .collect();
        let at_trigger = samples.iter().rev().find(|s| s.at <= trigger);
        let during: Vec<_> = samples
            .iter()
            .filter(|s| s.at > trigger && s.at < end)
            .chain(at_trigger)
            .collect();
        let kept_primary = during
            .iter()
            .all(|s| s.status.as_ref().is_ok_and(|st| st.is_running_primary()));
        let expect = Expect {
            reachable_rw: failsafe.then(|| (trigger, end, leader.clone())),
            rw_again_within: RW_AGAIN,
        };
        self.close(name, from, trigger, &expect);
        let verdict = self.verdicts.last_mut().expect("the verdict just pushed");
        if failsafe && !kept_primary {
            verdict.failures.push(format!(
                "test bed: Patroni did not keep {leader} a running primary through the outage \
                 in failsafe mode"
            ));
        }
        if !failsafe && kept_primary {
            verdict.failures.push(format!(
                "test bed: Patroni did not demote {leader} during the outage without failsafe mode"
            ));
        }
    }

    /// Print every summary; fail with the failures, timelines and agent logs.
    fn finish(self) {
        println!("--- summary");
        for v in &self.verdicts {
            println!("{}", v.summary);
        }
        for m in self.members() {
            let key = format!("members/{m}");
            println!(
                "{key} as last seen: {}",
                self.obs.key_value(&key).unwrap_or_default()
            );
        }
        let failed: Vec<&Verdict> = self
            .verdicts
            .iter()
            .filter(|v| !v.failures.is_empty())
            .collect();
        if failed.is_empty() {
            return;
        }
        let mut message = String::new();
        for v in &failed {
            message.push_str(&format!(
                "\n{}:\n  - {}\n",
                v.name,
                v.failures.join("\n  - ")
            ));
        }
        panic!(
            "{} of {} scenarios failed:{message}\n{}",
            failed.len(),
            self.verdicts.len(),
            self.c.agent_logs_tail(30)
        );
    }
}

#[test]
fn switchover_crash_and_kill() {
    let _serial = serial();
    let Some(mut run) = Run::new("switchover_crash_and_kill", 120, false) else {
        return;
    };
    run.switchover();
    run.postgres_crash();
    run.kill_leader();
    run.finish();
}

#[test]
fn leader_cut_off_from_etcd() {
    let _serial = serial();
    let Some(mut run) = Run::new("leader_cut_off_from_etcd", 121, false) else {
        return;
    };
    run.cut_leader(
        "leader cut off (blackhole route)",
        |c, i| c.net.partition(i),
        |c, i| c.net.heal(i),
    );
    run.cut_leader(
        "leader cut off (silent nft drop)",
        PatroniCluster::drop_etcd_traffic,
        PatroniCluster::restore_etcd_traffic,
    );
    run.finish();
}

#[test]
fn etcd_outage_failsafe_on() {
    let _serial = serial();
    let Some(mut run) = Run::new("etcd_outage_failsafe_on", 122, true) else {
        return;
    };
    run.etcd_outage("etcd outage, failsafe_mode on", true);
    run.finish();
}

/// Patroni's REST API over https (Pigsty's `patroni_ssl_enabled`), the agents given the CA as
/// `patroni-ca-file`: the gate finds the https `api_url` in the member key and opens only on a
/// verified answer, and in an etcd outage with `failsafe_mode` on the verified peer's word holds the
/// VIP on the leader (an https answer verified by the CA is the trust the failsafe hold needs).
#[test]
fn rest_api_over_https_switchover_and_failsafe() {
    let _serial = serial();
    let Some(mut run) = Run::with_options(
        "rest_api_over_https_switchover_and_failsafe",
        Options {
            subnet: 124,
            failsafe_mode: true,
            rest_tls: true,
        },
        Manager::VipAgent,
    ) else {
        return;
    };
    run.switchover();
    run.etcd_outage("etcd outage over https, failsafe_mode on", true);
    run.finish();
}

#[test]
fn etcd_outage_failsafe_off() {
    let _serial = serial();
    let Some(mut run) = Run::new("etcd_outage_failsafe_off", 123, false) else {
        return;
    };
    run.etcd_outage("etcd outage, failsafe_mode off", false);
    run.finish();
}

#[test]
fn rest_source_switchover_kill_and_unreachable() {
    let _serial = serial();
    let Some(mut run) = Run::with_manager(
        "rest_source_switchover_kill_and_unreachable",
        180,
        false,
        Manager::VipAgentRest,
    ) else {
        return;
    };
    run.switchover();
    run.rest_unreachable();
    run.kill_leader();
    run.finish();
}
