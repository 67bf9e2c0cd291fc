//! The benchmark's own smoke run, so `cargo xtask bench` cannot rot: a few switchovers and lease
//! expiries of each kind of system, a short idle window, and one trial of each failure scenario
//! (partition, agent killed, etcd outage of each shape), through the same code, checked for
//! structure and for vip-agent's hard properties (never two MACs answering; an old holder is silent
//! once its lease has expired and after the deadline in its map; a restarted agent adopts its
//! pinned program; the key never moves when it should not). Timings are reported by the benchmark,
//! never asserted here. The at-most-one-answer part (`--answer`) runs once per fault for vip-agent.

use std::time::Duration;

use vip_tests::{
    agent_binary,
    bench::{OUTAGES, Plan, System, arp_rtts, run_system},
    require_privileges,
};

const PLAN: Plan = Plan {
    switchovers: 2,
    expiries: 2,
    idle: Duration::from_secs(1),
    partitions: 1,
    kills: 1,
    etcd_outages: 1,
};

#[test]
fn vip_agent_failovers_are_measured_and_never_overlap() {
    if !require_privileges("vip_agent_failovers_are_measured_and_never_overlap") {
        return;
    }
    let run = run_system(System::VipAgent, 51, PLAN, &agent_binary());
    let trials = &run.switchovers;
    assert_eq!(trials.len(), 2, "the warm-up is discarded, the rest kept");
    for t in trials {
        assert!(t.probes > 0);
        assert!(
            t.first_new_ns.is_some(),
            "the new holder answered within the window: {t:?}"
        );
        assert!(
            t.new_dataplane_ns.is_some() && t.old_dataplane_ns.is_some(),
            "data plane times from the agents' logs: {t:?}"
        );
        assert_eq!(t.overlap, 0, "probes answered by both nodes: {t:?}");
        assert_ne!(t.from, t.to);
        // The client's view: the new holder announced itself and the client's kernel followed.
        assert!(
            t.first_garp_ns.is_some(),
            "a gratuitous ARP from the new holder: {t:?}"
        );
        assert!(
            t.client_had_old_mac && t.client_switch_ns.is_some(),
            "the client's neighbour entry moved from the old MAC to the new one: {t:?}"
        );
        // The client's echo requests follow its entry: the new holder's kernel answers them.
        assert!(t.echo_sent > 0, "the client sent echo requests: {t:?}");
        assert!(
            t.echo_first_new_ns.is_some(),
            "the new holder answered the client's echo requests: {t:?}"
        );
        assert!(t.echo_lost <= t.echo_sent, "{t:?}");
    }
    assert_ne!(trials[0].to, trials[1].to, "directions alternate");

    assert_eq!(run.expiries.len(), 2);
    for e in &run.expiries {
        assert!(e.probes > 0);
        assert_eq!(
            e.old_answers_after_expiry, 0,
            "the old holder's deadline ends before its lease: {e:?}"
        );
        assert!(
            e.last_old_ns.is_some_and(|t| t < 0),
            "the old holder answered before the expiry and went silent before it: {e:?}"
        );
        assert!(e.first_new_ns.is_some(), "the new holder answered: {e:?}");
        assert_eq!(e.overlap, 0, "{e:?}");
    }
    assert_ne!(
        run.expiries[0].to, run.expiries[1].to,
        "directions alternate"
    );

    assert_eq!(run.idle.len(), 2, "one measurement per node");
    for u in &run.idle {
        assert!(u.window_ms >= 1000, "{u:?}");
        assert!(u.rss_kib > 0, "{u:?}");
    }

    assert_eq!(run.partitions.len(), 1);
    for p in &run.partitions {
        assert!(p.probes > 0);
        assert!(
            p.last_old_after_cut_ns.is_some(),
            "the deadline outlived the cut: the old holder still answered after it: {p:?}"
        );
        assert_eq!(
            p.old_answers_after_expiry, 0,
            "cut off from etcd, the old holder went silent at its deadline, before the lease expired: {p:?}"
        );
        assert!(p.last_old_ns.is_some_and(|t| t < 0), "{p:?}");
        assert!(
            !p.old_answering_at_end,
            "silent until the partition healed: {p:?}"
        );
        assert!(p.first_new_ns.is_some(), "the new holder answered: {p:?}");
        assert_eq!(p.overlap, 0, "{p:?}");
    }

    assert_eq!(run.kills.len(), 1);
    for k in &run.kills {
        assert!(k.probes > 0);
        assert!(
            k.deadline_after_kill_ns.is_some(),
            "the dead agent's deadline is in the pinned map: {k:?}"
        );
        assert_eq!(
            k.answered_after_deadline, 0,
            "no reply to a probe sent after the deadline: {k:?}"
        );
        assert!(
            !k.answering_at_end,
            "with its agent dead, the holder went dark within the lease: {k:?}"
        );
        assert!(
            k.restart_answer_ns.is_some(),
            "the restarted agent answers again: {k:?}"
        );
        assert_eq!(
            k.adopted,
            Some(true),
            "the restarted agent adopted the pinned program: {k:?}"
        );
        assert_eq!(k.other_answers, 0, "the key never moved: {k:?}");
    }

    assert_eq!(run.etcd_outages.len(), OUTAGES.len(), "one trial per shape");
    for e in &run.etcd_outages {
        assert!(e.probes > 0);
        assert_eq!(e.other_answers, 0, "the key never moved: {e:?}");
        let deadline = e
            .deadline_after_stop_ns
            .expect("the deadline is in the pinned map");
        assert_eq!(
            e.answered_after_deadline, 0,
            "nothing answered past the deadline while etcd was down: {e:?}"
        );
        assert!(
            e.answering_at_end,
            "the holder answers again once etcd is back: {e:?}"
        );
        if e.shape.lease_ttl_s * 1_000_000_000 < i64::try_from(e.down_ns).expect("ns") {
            // An outage longer than the lease the agent saw: dark from the deadline until etcd is back.
            assert!(e.blackout(), "dark past the deadline: {e:?}");
        } else {
            assert!(
                deadline > e.down_ns,
                "a {} s lease outlasts the outage: {e:?}",
                e.shape.lease_ttl_s
            );
        }
    }
}

#[test]
fn vip_manager_failovers_are_measured() {
    if !require_privileges("vip_manager_failovers_are_measured") {
        return;
    }
    let run = run_system(
        System::VipManager { interval_ms: 100 },
        52,
        PLAN,
        &agent_binary(),
    );
    assert_eq!(run.switchovers.len(), 2);
    for t in &run.switchovers {
        assert!(t.probes > 0);
        assert!(
            t.first_new_ns.is_some(),
            "vip-manager's new holder answered within the window: {t:?}"
        );
    }
    assert_eq!(run.expiries.len(), 2);
    for e in &run.expiries {
        assert!(
            e.first_new_ns.is_some(),
            "vip-manager's new holder answered after the expiry: {e:?}"
        );
    }
    assert_eq!(run.idle.len(), 2);
    assert_eq!(run.partitions.len(), 1);
    assert!(
        run.partitions[0].first_new_ns.is_some(),
        "vip-manager's new holder answered after the expiry: {:?}",
        run.partitions[0]
    );
    assert_eq!(run.kills.len(), 1);
    let k = &run.kills[0];
    assert!(k.probes > 0);
    assert!(
        k.deadline_after_kill_ns.is_none() && k.adopted.is_none(),
        "vip-manager has no data plane: {k:?}"
    );
    assert_eq!(run.etcd_outages.len(), OUTAGES.len());
    for e in &run.etcd_outages {
        assert!(e.probes > 0 && e.deadline_after_stop_ns.is_none(), "{e:?}");
        assert_eq!(e.other_answers, 0, "the key never moved: {e:?}");
    }
}

#[test]
fn arp_round_trips_are_measured_for_kernel_and_xdp() {
    if !require_privileges("arp_round_trips_are_measured_for_kernel_and_xdp") {
        return;
    }
    let rtts = arp_rtts(53, 5);
    let labels: Vec<&str> = rtts.iter().map(|r| r.label).collect();
    assert_eq!(labels.len(), 5, "{labels:?}");
    for r in &rtts {
        // Every probe answered: the kernel with our program passing, and XDP_TX in both modes.
        assert_eq!(r.rtt_ns.len(), r.probes, "{}: {r:?}", r.label);
        assert!(r.rtt_ns.iter().all(|&t| t > 0), "{r:?}");
    }
}

#[test]
fn keepalived_failovers_are_measured() {
    if !require_privileges("keepalived_failovers_are_measured") {
        return;
    }
    let run = run_system(
        System::Keepalived { interval_s: 1 },
        53,
        PLAN,
        &agent_binary(),
    );
    assert_eq!(run.switchovers.len(), 2);
    for t in &run.switchovers {
        assert!(t.probes > 0 && t.echo_sent > 0, "{t:?}");
        assert!(
            t.first_new_ns.is_some() && t.echo_first_new_ns.is_some(),
            "keepalived's new holder answered ARP and echo within the window: {t:?}"
        );
        assert!(
            t.first_garp_ns.is_some(),
            "keepalived announced the VIP with a gratuitous ARP: {t:?}"
        );
        assert!(
            t.old_dataplane_ns.is_none() && t.new_dataplane_ns.is_none(),
            "keepalived has no data plane of ours: {t:?}"
        );
    }
    assert_eq!(run.expiries.len(), 2);
    assert!(
        run.expiries.iter().all(|e| e.first_new_ns.is_some()),
        "keepalived's new holder answered after each expiry: {:?}",
        run.expiries
    );
    assert_eq!(run.idle.len(), 2);
    for u in &run.idle {
        // keepalived's own processes are nearly idle; the `etcdctl` check it runs every second
        // costs CPU, which counts because the reaped children's times are included.
        assert!(u.cpu_ms > 0 && u.rss_kib > 0, "{u:?}");
    }
    assert_eq!(run.partitions.len(), 1);
    assert!(
        run.partitions[0].first_new_ns.is_some(),
        "{:?}",
        run.partitions[0]
    );
    assert_eq!(run.kills.len(), 1);
    let k = &run.kills[0];
    assert!(
        k.probes > 0 && k.deadline_after_kill_ns.is_none() && k.adopted.is_none(),
        "keepalived has no deadline and no pinned program: {k:?}"
    );
    assert!(
        k.answering_at_end,
        "a SIGKILLed keepalived leaves the address, which the kernel keeps answering: {k:?}"
    );
    assert_eq!(run.etcd_outages.len(), OUTAGES.len());
    for e in &run.etcd_outages {
        assert!(e.probes > 0 && e.deadline_after_stop_ns.is_none(), "{e:?}");
    }
}

#[test]
fn vip_agent_answer_part_is_measured_and_never_overlaps() {
    if !require_privileges("vip_agent_answer_part_is_measured_and_never_overlaps") {
        return;
    }
    use vip_tests::bench::answer::{self, Contender, Fault};
    // `cargo xtask bench --answer` on vip-agent with its handshake: one trial of each fault
    // (after a discarded warm-up), on the part's own subnet range (10.77.170-179).
    let run = answer::run(
        Contender::ALL[0],
        174,
        answer::Plan { trials: [1; 4] },
        &agent_binary(),
    );
    assert_eq!(run.outcomes.len(), Fault::ALL.len(), "{run:?}");
    for (o, fault) in run.outcomes.iter().zip(Fault::ALL) {
        assert_eq!(o.fault, fault);
        assert!(o.probes > 0 && o.first_new_ns.is_some(), "{o:?}");
        assert!(
            o.blackout_ns.is_some() && o.new_dataplane_ns.is_some(),
            "{o:?}"
        );
        // The hard property: with the handshake, never two nodes answering, whatever happened
        // to the old holder's agent.
        assert_eq!(o.overlap, 0, "probes answered by both nodes: {o:?}");
        assert!(!o.old_at_end && o.settled, "{o:?}");
    }
    let md = answer::markdown(std::slice::from_ref(&run), 1, run.took);
    assert!(md.starts_with(answer::SECTION_HEADING), "{md}");
    assert!(answer::json(std::slice::from_ref(&run), 1).contains("\"overlap\""));
}
