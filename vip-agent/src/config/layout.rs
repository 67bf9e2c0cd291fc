//! Where things live in etcd: Patroni's keys around a leader key, and the agents' fence records
//! (issue 14's handshake). Pure functions of the configuration, shared by `check`'s rendering, the
//! plan and the etcd source.

use std::time::Duration;

/// The member key for a leader key ending in `/leader`: `<prefix>/members/<value>`; `None` for
/// any other key (not laid out by Patroni).
#[must_use]
pub fn member_key(trigger_key: &str, trigger_value: &str) -> Option<String> {
    let prefix = trigger_key.strip_suffix("/leader")?;
    (!prefix.is_empty() && !trigger_value.is_empty() && !trigger_value.contains('/'))
        .then(|| format!("{prefix}/members/{trigger_value}"))
}

/// The Patroni scope of a leader key `/<namespace>/<scope>/leader` (the last path element before
/// `/leader`); `None` for any other key.
#[must_use]
pub fn scope(trigger_key: &str) -> Option<&str> {
    let prefix = trigger_key.strip_suffix("/leader")?;
    let scope = prefix.rsplit('/').next()?;
    (!scope.is_empty()).then_some(scope)
}

/// Default [`HandshakeSettings::ttl`]: Patroni's default `ttl` (set it to the cluster's `ttl`).
/// * A node that dies whole (Patroni and agent) costs nothing more: the new leader is elected
///   when the old leader's key expires, `ttl` after its last refresh, and the old agent's record
///   expires with the same TTL.
/// * An etcd outage does not silence the VIP earlier than the leader lease did before the
///   handshake, and Patroni's failsafe confirmation (after its `retry_timeout`, 10 s by default)
///   comes before the record lease's bound, so a failsafe hold is never broken by it (measured:
///   with a 10 s record TTL, one failsafe outage in five went dark).
/// * What it bounds: a switchover while the old node's agent is dead, stopped or cut off and its
///   Patroni is not costs a blackout of at most this, instead of two nodes answering.
pub const DEFAULT_RECORD_TTL: Duration = Duration::from_secs(30);
/// Default [`HandshakeSettings::prefix`].
pub const DEFAULT_RECORD_PREFIX: &str = "/vip-agent";

/// Where the records live and how long they last.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeSettings {
    /// Prefix of every record key (`fence-record-prefix`).
    pub prefix: String,
    /// TTL of this agent's record lease (`fence-record-ttl`, whole seconds, at least 2).
    pub ttl: Duration,
}

impl Default for HandshakeSettings {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_RECORD_PREFIX.to_owned(),
            ttl: DEFAULT_RECORD_TTL,
        }
    }
}

impl HandshakeSettings {
    /// The directory of the records of one leader key (ends in `/`).
    #[must_use]
    pub fn directory(&self, trigger_key: &str) -> String {
        let key = trigger_key.trim_start_matches('/');
        format!("{}/{key}/", self.prefix.trim_end_matches('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_key_and_scope_follow_patronis_layout() {
        assert_eq!(
            member_key("/service/pg-test/leader", "pg-test-1").as_deref(),
            Some("/service/pg-test/members/pg-test-1")
        );
        assert_eq!(
            member_key("/pg/pg-meta/leader", "m1").as_deref(),
            Some("/pg/pg-meta/members/m1")
        );
        assert_eq!(scope("/service/pg-test/leader"), Some("pg-test"));
        assert_eq!(member_key("/service/pg-test/lock", "n1"), None);
        assert_eq!(member_key("/leader", "n1"), None);
        assert_eq!(
            member_key("/s/c/leader", "a/b"),
            None,
            "a value with a slash"
        );
        assert_eq!(member_key("/s/c/leader", ""), None);
        assert_eq!(scope("/leader"), None);
    }
}
