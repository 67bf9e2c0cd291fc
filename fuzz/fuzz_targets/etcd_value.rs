//! The leader-state machine (`vip-agent/src/leader/state.rs`) on arbitrary etcd responses: values,
//! revisions, lease ids, TTLs, clocks, in any order, as the watch and the confirmations deliver
//! them.
//!
//! Properties checked after every step, against a small model kept here:
//! * `primary` is true exactly when the last response that was not stale showed the key with a
//!   value equal, byte for byte, to the trigger value: a prefix, a suffix, another case or any other
//!   bytes never make this node primary;
//! * a stale response (a watch event at or below the known revision, a read below it, a TTL answer
//!   for a lease that is not the key's) changes nothing;
//! * not primary means deadline 0 and lease 0; primary means the lease of the last observation;
//! * the deadline never exceeds what the confirmations since the key became ours (with this lease)
//!   prove: `t_sent + min(ttl, granted) s - margin`, capped by `fence-timeout`, or
//!   `t_sent + no-lease validity` for a key without lease; an expired lease (TTL <= 0) fences;
//! * etcd unreachable keeps `primary` and the deadline, and is published once per outage;
//! * the revision only moves forward within a session, and `need` asks for the lease's TTL
//!   whenever the key is ours with a lease and no deadline.
//!
//! Input: the trigger value (this node's member name), a 0 byte, then the policy and up to 64
//! operations decoded with `arbitrary`. The seeds in `fuzz/corpus/etcd_value/` carry real member
//! names (Patroni, Pigsty) and short histories: acquire, confirm, switchover, garbage values.
#![no_main]

use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use vip_agent::leader::{
    Reason, Via,
    fuzzing::{KeySeen, Need, Policy, Tracker},
};

#[derive(Arbitrary, Debug)]
enum Value {
    Absent,
    /// The trigger value itself.
    Trigger,
    /// The trigger value with bytes appended.
    WithSuffix(Vec<u8>),
    /// A strict prefix of the trigger value.
    Prefix(u8),
    /// The trigger value with one byte changed (flipped bits at an index).
    Flipped(u8, u8),
    /// Anything.
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ReadVia {
    Read,
    Confirmation,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Event {
        rev: i64,
        value: Value,
        lease: i64,
        at: u64,
    },
    Read {
        rev: i64,
        value: Value,
        lease: i64,
        via: ReadVia,
        t_sent: u64,
        at: u64,
    },
    LeaseTtl {
        /// Use the key's current lease (else `lease`).
        current: bool,
        lease: i64,
        ttl: i64,
        granted: i64,
        t_sent: u64,
        at: u64,
    },
    Unreachable {
        at: u64,
    },
    NewSession,
}

#[derive(Arbitrary, Debug)]
struct Params {
    margin_ms: u16,
    fence_timeout_ms: Option<u32>,
    no_lease_ms: u32,
}

fn value_bytes(trigger: &[u8], v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::Absent => None,
        Value::Trigger => Some(trigger.to_vec()),
        Value::WithSuffix(s) => Some([trigger, s].concat()),
        Value::Prefix(n) => Some(trigger[..usize::from(*n) % (trigger.len() + 1)].to_vec()),
        Value::Flipped(i, x) => {
            let mut t = trigger.to_vec();
            if let Some(b) = t.get_mut(usize::from(*i) % trigger.len().max(1)) {
                *b ^= *x;
            }
            Some(t)
        }
        Value::Bytes(b) => Some(b.clone()),
    }
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the tests below know independently of the tracker.
struct Model {
    /// Highest revision a non-stale response carried (0 after a new session).
    known_rev: i64,
    /// `Some(lease)` while the key is ours.
    lease: Option<i64>,
    /// The largest deadline the confirmations since the key became ours with this lease prove.
    bound: u64,
}

fuzz_target!(|data: &[u8]| {
    let (trigger, rest) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut u = Unstructured::new(rest);
    let Ok(params) = Params::arbitrary(&mut u) else {
        return;
    };
    let policy = Policy {
        margin: Duration::from_millis(u64::from(params.margin_ms)),
        fence_timeout: params
            .fence_timeout_ms
            .map(|ms| Duration::from_millis(u64::from(ms))),
        no_lease_validity: Duration::from_millis(u64::from(params.no_lease_ms)),
    };
    let mut tracker = Tracker::new(trigger.to_vec(), policy, 1);
    let mut model = Model {
        known_rev: 0,
        lease: None,
        bound: 0,
    };
    assert!(!tracker.state().primary, "primary before anything was read");

    for _ in 0..64 {
        if u.is_empty() {
            break;
        }
        let Ok(op) = Op::arbitrary(&mut u) else {
            break;
        };
        let op = &op;
        let before = tracker.state();
        match op {
            Op::Event {
                rev,
                value,
                lease,
                at,
            }
            | Op::Read {
                rev,
                value,
                lease,
                t_sent: _,
                via: _,
                at,
            } => {
                let bytes = value_bytes(trigger, value);
                let seen = match &bytes {
                    None => KeySeen::Absent,
                    Some(v) => KeySeen::Present {
                        value: v,
                        lease: *lease,
                        created: *rev,
                    },
                };
                let (applied, stale) = match op {
                    Op::Read { via, t_sent, .. } => {
                        let via = match via {
                            ReadVia::Read => Via::Read,
                            ReadVia::Confirmation => Via::Confirmation,
                        };
                        (
                            tracker.read(*rev, seen, via, *t_sent, *at),
                            *rev < model.known_rev,
                        )
                    }
                    _ => (tracker.event(*rev, seen, *at), *rev <= model.known_rev),
                };
                assert_eq!(
                    applied.stale, stale,
                    "stale at rev {rev} (known {})",
                    model.known_rev
                );
                if stale {
                    assert_eq!(
                        tracker.state(),
                        before,
                        "a stale response changed the state"
                    );
                    assert!(!applied.publish, "a stale response was published");
                    continue;
                }
                model.known_rev = *rev;
                let ours = bytes.as_deref() == Some(trigger);
                let state = tracker.state();
                assert_eq!(
                    state.primary, ours,
                    "value {bytes:?} vs trigger {trigger:?}: primary must mean byte-for-byte equal"
                );
                assert_eq!(state.revision, *rev);
                if ours {
                    if model.lease != Some(*lease) {
                        model.lease = Some(*lease);
                        model.bound = 0;
                    }
                    if *lease == 0
                        && let Op::Read { t_sent, .. } = op
                    {
                        let validity = match policy.fence_timeout {
                            Some(f) => policy.no_lease_validity.min(f),
                            None => policy.no_lease_validity,
                        };
                        model.bound = model.bound.max(t_sent.saturating_add(ns(validity)));
                    }
                } else {
                    model.lease = None;
                    model.bound = 0;
                }
                let expected_reason = match (op, ours, bytes.is_some()) {
                    (Op::Event { .. }, true, _) => Some(Reason::Ours { via: Via::Watch }),
                    (Op::Event { .. }, false, true) => Some(Reason::OtherValue { via: Via::Watch }),
                    (Op::Event { .. }, false, false) => Some(Reason::Deleted { via: Via::Watch }),
                    _ => None,
                };
                if let Some(reason) = expected_reason {
                    assert!(applied.publish, "every new watch event is published");
                    assert_eq!(state.reason, reason);
                }
                if !ours {
                    assert!(
                        applied.publish || !before.primary,
                        "losing the key was not published"
                    );
                }
            }
            Op::LeaseTtl {
                current,
                lease,
                ttl,
                granted,
                t_sent,
                at,
            } => {
                let lease = match (current, model.lease) {
                    (true, Some(l)) => l,
                    _ => *lease,
                };
                let applied = tracker.lease_ttl(lease, *ttl, *granted, *t_sent, *at);
                let applies = model.lease == Some(lease);
                assert_eq!(
                    applied.stale, !applies,
                    "TTL for lease {lease}, key's {:?}",
                    model.lease
                );
                if !applies {
                    assert_eq!(
                        tracker.state(),
                        before,
                        "a TTL for another lease changed the state"
                    );
                    continue;
                }
                let state = tracker.state();
                if *ttl <= 0 {
                    assert_eq!(state.safe_until_ns, 0, "an expired lease must fence");
                    assert_eq!(state.reason, Reason::LeaseExpired);
                    model.bound = 0;
                } else {
                    let ttl = if *granted > 0 {
                        (*ttl).min(*granted)
                    } else {
                        *ttl
                    };
                    let ttl_ns = u64::try_from(ttl)
                        .unwrap_or(0)
                        .saturating_mul(1_000_000_000);
                    let mut d = t_sent
                        .saturating_add(ttl_ns)
                        .saturating_sub(ns(policy.margin));
                    if let Some(f) = policy.fence_timeout {
                        d = d.min(t_sent.saturating_add(ns(f)));
                    }
                    model.bound = model.bound.max(d);
                    assert!(
                        state.safe_until_ns >= before.safe_until_ns,
                        "a valid TTL answer shortened the deadline"
                    );
                }
            }
            Op::Unreachable { at } => {
                let published = tracker.unreachable(*at);
                assert_eq!(
                    published,
                    before.reason != Reason::EtcdUnreachable,
                    "published once per outage"
                );
                let state = tracker.state();
                assert_eq!(state.primary, before.primary);
                assert_eq!(state.safe_until_ns, before.safe_until_ns);
                assert_eq!(state.reason, Reason::EtcdUnreachable);
            }
            Op::NewSession => {
                tracker.reset_revision();
                model.known_rev = 0;
                assert_eq!(
                    tracker.state(),
                    before,
                    "a new session alone changes nothing"
                );
            }
        }

        // Invariants of every state.
        let state = tracker.state();
        assert_eq!(state.primary, model.lease.is_some(), "primary vs model");
        if state.primary {
            assert_eq!(Some(state.lease_id), model.lease, "lease of the key");
        } else {
            assert_eq!(state.safe_until_ns, 0, "not primary but a deadline");
            assert_eq!(state.lease_id, 0, "not primary but a lease");
        }
        assert!(
            state.safe_until_ns <= model.bound,
            "deadline {} beyond what the confirmations prove ({})",
            state.safe_until_ns,
            model.bound
        );
        let expected_need = match model.lease {
            Some(_) if state.safe_until_ns != 0 => Need::Nothing,
            Some(0) => Need::Read,
            Some(l) => Need::LeaseTtl(l),
            None => Need::Nothing,
        };
        assert_eq!(tracker.need(), expected_need);
    }
});
