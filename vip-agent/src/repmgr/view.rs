//! repmgr's view of who the primary is, judged from one round of answers: this node's copy of
//! `repmgr.nodes` (who the nodes are, how to reach them) and each other node's own answer (in
//! recovery or not, its timeline, the primary its `repmgr.nodes` names). Pure, so the rules are
//! unit-tested; [`super::metadata`] asks the questions.
//!
//! Two judgements come out of a [`View`]:
//!
//! * [`View::confirms`]: a majority of repmgr's active nodes (this one included) name this node
//!   the primary, and no node that answered says otherwise. A node that is not (or may no longer
//!   be) the primary by repmgr's word needs this before it answers: after a restart of its
//!   PostgreSQL, a restart of the agent, a lost promoting event, `child_nodes_disconnect_command`.
//! * [`View::quorum`]: a majority of repmgr's active nodes is reachable from here as standbys or
//!   witnesses, and no reachable node is a primary on a timeline at least as new as this one's.
//!   A primary keeps renewing its deadline only within `repmgr-quorum-hold` of the last quorum:
//!   cut off from the other nodes, it goes silent before repmgrd can promote one of them.
//!
//! [`View::newer_primary`] (another node is a primary on a timeline not older than this node's)
//! fences at once: repmgr promoted it after this node.

use std::fmt;

/// A node's `type` in `repmgr.nodes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeType {
    Primary,
    Standby,
    Witness,
    /// `bdr` or anything newer: never asked.
    Other,
}

impl NodeType {
    /// `repmgr.nodes.type`.
    #[must_use]
    pub fn parse(s: &str) -> Self {
        match s {
            "primary" => Self::Primary,
            "standby" => Self::Standby,
            "witness" => Self::Witness,
            _ => Self::Other,
        }
    }
}

/// One row of this node's `repmgr.nodes`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub node_id: u32,
    pub node_type: NodeType,
    pub active: bool,
    /// repmgr's `conninfo` for the node: how the agent reaches it.
    pub conninfo: String,
}

/// What another node said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerAnswer {
    /// No answer within the round's timeout, or an error.
    Unreachable(String),
    Answered {
        in_recovery: bool,
        /// Its timeline when it is not in recovery; when it is, the timeline its WAL receiver
        /// streams (`pg_stat_wal_receiver.received_tli`), if it streams.
        timeline: Option<u32>,
        /// The active primaries its own `repmgr.nodes` lists.
        registered_primaries: Vec<u32>,
    },
}

/// Why repmgr's view does not confirm this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contradiction {
    /// Another node is a primary on a timeline not older than this node's: repmgr promoted it
    /// after this node. Fences at once.
    NewerPrimary {
        node: u32,
        timeline: u32,
        ours: Option<u32>,
    },
    /// A standby streams a timeline newer than this node's: some other node was promoted after
    /// this one and the standby follows it. Fences at once.
    NewerTimeline { node: u32, timeline: u32, ours: u32 },
    /// A node's `repmgr.nodes` names another node the primary.
    OtherRegistered { by: u32, names: u32 },
    /// This node's own `repmgr.nodes` does not name it the primary.
    NotRegistered { names: Vec<u32> },
}

impl fmt::Display for Contradiction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NewerPrimary {
                node,
                timeline,
                ours,
            } => match ours {
                Some(ours) => write!(
                    f,
                    "node {node} is a primary on timeline {timeline} (this node: timeline {ours})"
                ),
                None => write!(f, "node {node} is a primary on timeline {timeline}"),
            },
            Self::NewerTimeline {
                node,
                timeline,
                ours,
            } => write!(
                f,
                "node {node} streams timeline {timeline} (this node: timeline {ours}): another \
                 node was promoted after this one"
            ),
            Self::OtherRegistered { by, names } => {
                write!(f, "node {by}'s repmgr.nodes names node {names} the primary")
            }
            Self::NotRegistered { names } if names.is_empty() => {
                write!(f, "this node's repmgr.nodes names no active primary")
            }
            Self::NotRegistered { names } => write!(
                f,
                "this node's repmgr.nodes names node {} the primary",
                names
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

/// One round, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// repmgr's active nodes, this one included.
    pub nodes: usize,
    /// Other nodes that answered as standbys or witnesses.
    pub reachable: usize,
    /// Nodes whose `repmgr.nodes` names this node the primary (this node's own copy included).
    pub votes: usize,
    /// The first reason not to confirm this node, if any (a newer primary first).
    pub contradiction: Option<Contradiction>,
    /// Active nodes that did not answer, and why (for the log).
    pub unreachable: Vec<(u32, String)>,
}

impl View {
    /// More than half of [`Self::nodes`].
    #[must_use]
    pub const fn majority(&self) -> usize {
        self.nodes / 2 + 1
    }

    /// A node that answered is a primary on a timeline not older than this node's, or a standby
    /// streams a newer timeline: another node was promoted after this one.
    #[must_use]
    pub const fn newer_primary(&self) -> bool {
        matches!(
            self.contradiction,
            Some(Contradiction::NewerPrimary { .. } | Contradiction::NewerTimeline { .. })
        )
    }

    /// A majority is reachable (this node counts itself) and no newer primary answered.
    #[must_use]
    pub const fn quorum(&self) -> bool {
        !self.newer_primary() && self.reachable + 1 >= self.majority()
    }

    /// A majority names this node the primary and nobody that answered contradicts it.
    #[must_use]
    pub const fn confirms(&self) -> bool {
        self.contradiction.is_none() && self.votes >= self.majority()
    }

    /// One line for the log.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} nodes name this node the primary, {} other node(s) reachable (majority {})",
            self.votes,
            self.nodes,
            self.reachable,
            self.majority()
        );
        if let Some(c) = &self.contradiction {
            s.push_str("; ");
            s.push_str(&c.to_string());
        }
        for (node, why) in &self.unreachable {
            s.push_str(&format!("; node {node} unreachable: {why}"));
        }
        s
    }
}

/// Judge one round: this node (`own`, on `timeline` when known), its `repmgr.nodes`, and the
/// answers of the other nodes (by node id; nodes without an answer count as unreachable).
///
/// Rules: only active nodes count (repmgr marks a failed primary inactive). A witness never
/// competes (it is not in recovery, but it is no primary). A node that is not in recovery on a
/// timeline *older* than this node's is a stale former primary: it is ignored, neither support
/// nor contradiction. Any other node that is not in recovery is a newer primary, and so is the
/// upstream of a standby that streams a timeline newer than this node's.
#[must_use]
pub fn judge(
    own: u32,
    timeline: Option<u32>,
    records: &[NodeRecord],
    answers: &[(u32, PeerAnswer)],
) -> View {
    let active: Vec<&NodeRecord> = records.iter().filter(|r| r.active).collect();
    let nodes = active.len() + usize::from(!active.iter().any(|r| r.node_id == own));
    let own_names: Vec<u32> = active
        .iter()
        .filter(|r| r.node_type == NodeType::Primary)
        .map(|r| r.node_id)
        .collect();
    let mut votes = usize::from(own_names == [own]);
    let mut newer = None;
    let mut other = None;
    let mut reachable = 0;
    let mut unreachable = Vec::new();
    for record in active.iter().filter(|r| r.node_id != own) {
        let (in_recovery, theirs, registered_primaries) =
            match answers.iter().find(|(id, _)| *id == record.node_id) {
                Some((
                    _,
                    PeerAnswer::Answered {
                        in_recovery,
                        timeline,
                        registered_primaries,
                    },
                )) => (in_recovery, timeline, registered_primaries),
                Some((_, PeerAnswer::Unreachable(why))) => {
                    unreachable.push((record.node_id, why.clone()));
                    continue;
                }
                None => {
                    unreachable.push((record.node_id, "not asked".to_owned()));
                    continue;
                }
            };
        if !in_recovery && record.node_type != NodeType::Witness {
            let stale = matches!((theirs, timeline), (Some(t), Some(o)) if t < &o);
            if !stale && newer.is_none() {
                newer = Some(Contradiction::NewerPrimary {
                    node: record.node_id,
                    timeline: theirs.unwrap_or(0),
                    ours: timeline,
                });
            }
            continue;
        }
        if let (true, Some(theirs), Some(ours)) = (in_recovery, theirs, timeline)
            && theirs > &ours
            && newer.is_none()
        {
            newer = Some(Contradiction::NewerTimeline {
                node: record.node_id,
                timeline: *theirs,
                ours,
            });
            continue;
        }
        reachable += 1;
        match registered_primaries.as_slice() {
            [one] if *one == own => votes += 1,
            [] => {}
            names => {
                if other.is_none()
                    && let Some(&names) = names.iter().find(|n| **n != own)
                {
                    other = Some(Contradiction::OtherRegistered {
                        by: record.node_id,
                        names,
                    });
                }
            }
        }
    }
    let not_registered = (own_names != [own]).then(|| Contradiction::NotRegistered {
        names: own_names.clone(),
    });
    View {
        nodes,
        reachable,
        votes,
        contradiction: newer.or(other).or(not_registered),
        unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u32, t: NodeType, active: bool) -> NodeRecord {
        NodeRecord {
            node_id: id,
            node_type: t,
            active,
            conninfo: format!("host=10.0.0.{id}"),
        }
    }

    fn standby(names: &[u32]) -> PeerAnswer {
        PeerAnswer::Answered {
            in_recovery: true,
            timeline: None,
            registered_primaries: names.to_vec(),
        }
    }

    fn primary(tl: u32, names: &[u32]) -> PeerAnswer {
        PeerAnswer::Answered {
            in_recovery: false,
            timeline: Some(tl),
            registered_primaries: names.to_vec(),
        }
    }

    use NodeType::{Primary as P, Standby as S, Witness as W};

    #[test]
    fn a_primary_named_by_its_standbys_is_confirmed() {
        let records = [rec(1, P, true), rec(2, S, true), rec(3, S, true)];
        let v = judge(
            1,
            Some(1),
            &records,
            &[(2, standby(&[1])), (3, standby(&[1]))],
        );
        assert_eq!((v.nodes, v.reachable, v.votes), (3, 2, 3));
        assert!(v.confirms() && v.quorum() && !v.newer_primary(), "{v:?}");
        // One standby away: still a majority (2 of 3).
        let v = judge(
            1,
            Some(1),
            &records,
            &[
                (2, standby(&[1])),
                (3, PeerAnswer::Unreachable("timeout".into())),
            ],
        );
        assert!(v.confirms() && v.quorum(), "{v:?}");
        // Both away: this node alone is no majority, and the log says why.
        let v = judge(
            1,
            Some(1),
            &records,
            &[(
                2,
                PeerAnswer::Unreachable("connect: password authentication failed".into()),
            )],
        );
        assert!(!v.confirms() && !v.quorum(), "{v:?}");
        let summary = v.summary();
        assert!(
            summary.contains("1 of 3")
                && summary.contains("node 2 unreachable: connect: password authentication failed")
                && summary.contains("node 3 unreachable: not asked"),
            "{summary}"
        );
    }

    /// The crashed old primary restarted after repmgrd promoted another node (issue 19): its own
    /// copy of repmgr.nodes still names it, the new primary is on a newer timeline.
    #[test]
    fn a_restarted_old_primary_sees_the_newer_one_and_its_standbys_disagree() {
        let stale_records = [rec(1, S, true), rec(2, P, true), rec(3, S, true)];
        let v = judge(
            2,
            Some(2),
            &stale_records,
            &[(1, primary(3, &[1])), (3, standby(&[1]))],
        );
        assert!(v.newer_primary() && !v.confirms() && !v.quorum(), "{v:?}");
        assert_eq!(
            v.contradiction.as_ref().map(ToString::to_string).as_deref(),
            Some("node 1 is a primary on timeline 3 (this node: timeline 2)")
        );
        // The new primary itself unreachable: the standby that follows it still disagrees.
        let v = judge(2, Some(2), &stale_records, &[(3, standby(&[1]))]);
        assert!(!v.newer_primary() && !v.confirms(), "{v:?}");
        assert_eq!(
            v.contradiction,
            Some(Contradiction::OtherRegistered { by: 3, names: 1 })
        );
        assert!(v.quorum(), "reachable, just not the primary: {v:?}");
    }

    #[test]
    fn the_new_primary_ignores_a_stale_one_and_inactive_records() {
        // After the failover node 2 is inactive in the new primary's metadata; it came back as a
        // primary on an older timeline.
        let records = [rec(1, P, true), rec(2, P, false), rec(3, S, true)];
        let v = judge(
            1,
            Some(3),
            &records,
            &[(2, primary(2, &[2])), (3, standby(&[1]))],
        );
        assert_eq!((v.nodes, v.reachable, v.votes), (2, 1, 2));
        assert!(v.confirms() && v.quorum(), "{v:?}");
        // Listed as active, the stale one is still neither support nor contradiction.
        let records = [rec(1, P, true), rec(2, S, true), rec(3, S, true)];
        let v = judge(
            1,
            Some(3),
            &records,
            &[(2, primary(2, &[2])), (3, standby(&[1]))],
        );
        assert!(v.confirms() && v.quorum() && v.reachable == 1, "{v:?}");
        // The same timeline is no older: two primaries on one timeline fence each other.
        let v = judge(1, Some(2), &records, &[(2, primary(2, &[2]))]);
        assert!(v.newer_primary(), "{v:?}");
    }

    /// The old primary still reaches a standby, but not the node repmgrd promoted: the standby
    /// streams the new timeline, which is proof enough.
    #[test]
    fn a_standby_on_a_newer_timeline_fences() {
        let records = [rec(1, P, true), rec(2, S, true), rec(3, S, true)];
        let following_new = PeerAnswer::Answered {
            in_recovery: true,
            timeline: Some(5),
            registered_primaries: vec![2],
        };
        let v = judge(1, Some(4), &records, &[(3, following_new)]);
        assert!(v.newer_primary() && !v.quorum() && !v.confirms(), "{v:?}");
        assert_eq!(
            v.contradiction.as_ref().map(ToString::to_string).as_deref(),
            Some(
                "node 3 streams timeline 5 (this node: timeline 4): another node was promoted \
                 after this one"
            )
        );
        // Streaming this node's timeline (or an older one, before it follows) is support.
        for tl in [4, 3] {
            let a = PeerAnswer::Answered {
                in_recovery: true,
                timeline: Some(tl),
                registered_primaries: vec![1],
            };
            let v = judge(1, Some(4), &records, &[(3, a)]);
            assert!(v.confirms() && v.quorum(), "{tl}: {v:?}");
        }
    }

    #[test]
    fn a_witness_counts_and_votes_but_never_competes() {
        let records = [rec(1, P, true), rec(2, S, true), rec(9, W, true)];
        let v = judge(
            1,
            Some(4),
            &records,
            &[
                (9, primary(1, &[1])),
                (2, PeerAnswer::Unreachable("x".into())),
            ],
        );
        assert_eq!((v.reachable, v.votes), (1, 2));
        assert!(v.confirms() && v.quorum(), "{v:?}");
    }

    #[test]
    fn this_nodes_own_records_must_name_it() {
        let records = [rec(1, S, true), rec(2, P, true)];
        let v = judge(1, Some(1), &records, &[(2, standby(&[1]))]);
        assert!(!v.confirms(), "{v:?}");
        assert_eq!(
            v.contradiction,
            Some(Contradiction::NotRegistered { names: vec![2] })
        );
        // Two nodes: the standby is needed for a majority.
        let records = [rec(1, P, true), rec(2, S, true)];
        assert!(judge(1, Some(1), &records, &[(2, standby(&[1]))]).confirms());
        assert!(!judge(1, Some(1), &records, &[]).confirms());
        // A single registered node is its own majority.
        assert!(judge(1, Some(1), &[rec(1, P, true)], &[]).confirms());
        // Not registered at all: counted, never confirmed.
        let v = judge(7, Some(1), &[rec(1, P, true)], &[(1, standby(&[1]))]);
        assert_eq!(v.nodes, 2);
        assert!(!v.confirms(), "{v:?}");
    }

    #[test]
    fn an_unknown_own_timeline_treats_every_primary_as_newer() {
        let records = [rec(1, P, true), rec(2, S, true)];
        let v = judge(1, None, &records, &[(2, primary(1, &[2]))]);
        assert!(v.newer_primary(), "{v:?}");
    }
}
