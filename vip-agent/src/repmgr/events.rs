//! Which repmgr events move the VIP: the one table, shared by the code and `docs/repmgr.md`.

/// What an event (about this node; `success = 1` unless said otherwise) says about its role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventClass {
    /// This node is the primary now: answer once the local PostgreSQL confirms it takes writes.
    Primary,
    /// This node is not (or no longer) the primary: fence at once.
    NotPrimary,
    /// repmgrd on this primary lost its standbys (`child_nodes_disconnect_command`, reported
    /// whatever `%s` says): fence at once, until repmgr's metadata confirms this node again.
    Recheck,
    /// Connection loss, reconnection, daemon life cycle, other nodes' business: never moves the
    /// VIP (logged at info).
    Neutral,
}

impl EventClass {
    /// The word used in logs, replies and the docs.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::NotPrimary => "not-primary",
            Self::Recheck => "recheck",
            Self::Neutral => "neutral",
        }
    }
}

/// Every repmgr event name vip-agent knows (repmgr 4 and 5, plus the pre-4 `master_*` spellings),
/// with its class. An event not listed is ignored with a log line.
///
/// Why these: repmgr runs `event_notification_command` on the node where the event happened, and
/// `%n` is the node the event is about. A promotion (manual, by repmgrd, or the promoted side of
/// a switchover) and registering as primary are only ever emitted for a node that is a primary.
/// Following a new upstream, (re)joining or registering as a standby, cloning, unregistering,
/// and repmgrd finding its former primary back as a standby (`repmgrd_standby_reconnect`, which
/// is what the old primary of a switchover reports: repmgr 5.3 runs `node rejoin --no-wait`
/// there, which reports `node_rejoin` only when it fails) mean this node is not the primary.
/// `child_nodes_disconnect_command` is repmgrd on a primary giving up on its standbys: the node
/// is fenced until repmgr's metadata confirms it again. Other connection events
/// (`repmgrd_*_disconnect`, `*_reconnect`, `child_node_*`) only report what repmgrd saw: a
/// standby losing its upstream does not make it primary, a primary losing one child does not make
/// it a standby, and a local reconnection after a restart is caught by the postmaster start time.
pub const EVENTS: &[(&str, EventClass)] = &[
    ("standby_promote", EventClass::Primary),
    ("repmgrd_failover_promote", EventClass::Primary),
    ("standby_switchover", EventClass::Primary),
    ("primary_register", EventClass::Primary),
    ("master_register", EventClass::Primary),
    ("standby_follow", EventClass::NotPrimary),
    ("repmgrd_failover_follow", EventClass::NotPrimary),
    ("repmgrd_standby_reconnect", EventClass::NotPrimary),
    ("standby_register", EventClass::NotPrimary),
    ("standby_register_sync", EventClass::NotPrimary),
    ("standby_unregister", EventClass::NotPrimary),
    ("standby_clone", EventClass::NotPrimary),
    ("primary_unregister", EventClass::NotPrimary),
    ("master_unregister", EventClass::NotPrimary),
    ("node_rejoin", EventClass::NotPrimary),
    ("witness_register", EventClass::NotPrimary),
    ("witness_unregister", EventClass::NotPrimary),
    ("child_nodes_disconnect_command", EventClass::Recheck),
    ("repmgrd_upstream_disconnect", EventClass::Neutral),
    ("repmgrd_upstream_reconnect", EventClass::Neutral),
    ("repmgrd_local_disconnect", EventClass::Neutral),
    ("repmgrd_local_reconnect", EventClass::Neutral),
    ("child_node_disconnect", EventClass::Neutral),
    ("child_node_reconnect", EventClass::Neutral),
    ("child_node_new_connect", EventClass::Neutral),
    ("repmgrd_start", EventClass::Neutral),
    ("repmgrd_shutdown", EventClass::Neutral),
    ("repmgrd_reload", EventClass::Neutral),
    ("repmgrd_failover_aborted", EventClass::Neutral),
    ("repmgrd_promote_error", EventClass::Neutral),
    ("standby_failure", EventClass::Neutral),
    ("standby_recovery", EventClass::Neutral),
    ("standby_disconnect_manual", EventClass::Neutral),
    ("cluster_created", EventClass::Neutral),
    ("cluster_cleanup", EventClass::Neutral),
];

/// The class of `event`, `None` for an event vip-agent does not know.
#[must_use]
pub fn classify(event: &str) -> Option<EventClass> {
    EVENTS
        .iter()
        .find(|(name, _)| *name == event)
        .map(|(_, class)| *class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promotions_demotions_and_connection_events_are_classified() {
        for e in [
            "standby_promote",
            "repmgrd_failover_promote",
            "standby_switchover",
            "primary_register",
        ] {
            assert_eq!(classify(e), Some(EventClass::Primary), "{e}");
        }
        for e in [
            "standby_follow",
            "primary_unregister",
            "standby_register",
            "repmgrd_failover_follow",
            "node_rejoin",
            "standby_unregister",
        ] {
            assert_eq!(classify(e), Some(EventClass::NotPrimary), "{e}");
        }
        for e in [
            "repmgrd_upstream_disconnect",
            "repmgrd_local_disconnect",
            "repmgrd_upstream_reconnect",
            "repmgrd_local_reconnect",
            "child_node_disconnect",
            "child_node_reconnect",
            "child_node_new_connect",
        ] {
            assert_eq!(classify(e), Some(EventClass::Neutral), "{e}");
        }
        assert_eq!(classify("standby_promoted"), None);
        assert_eq!(classify("STANDBY_PROMOTE"), None, "names are exact");
        assert_eq!(classify(""), None);
    }

    #[test]
    fn the_docs_table_is_this_table() {
        let doc = include_str!("../../../docs/repmgr.md");
        let section = doc
            .split("\n## ")
            .find(|s| s.starts_with("What each event does"))
            .expect("docs/repmgr.md has the section");
        let rows: Vec<(String, String)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                match cells.as_slice() {
                    ["", event, class, _, ""] if event.starts_with('`') => {
                        Some((event.trim_matches('`').to_owned(), (*class).to_owned()))
                    }
                    _ => None,
                }
            })
            .collect();
        let code: Vec<(String, String)> = EVENTS
            .iter()
            .map(|(e, c)| ((*e).to_owned(), c.as_str().to_owned()))
            .collect();
        assert_eq!(rows, code, "docs/repmgr.md and EVENTS differ");
    }

    #[test]
    fn the_table_has_no_duplicates_and_only_plain_names() {
        for (i, (name, _)) in EVENTS.iter().enumerate() {
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(
                EVENTS[i + 1..].iter().all(|(other, _)| other != name),
                "{name} is listed twice"
            );
        }
    }
}
