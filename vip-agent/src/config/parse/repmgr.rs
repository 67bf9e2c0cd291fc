//! `dcs-type: repmgr`: the `repmgr-*` keys, and what that mode changes in the other keys.
//!
//! Kept in one place so the etcd path of [`super`] stays as it is: [`prepare`] runs on the raw
//! keys before anything is interpreted (it fills the per-VIP `trigger-key`/`trigger-value` with
//! a label, since every VIP follows this node's repmgr role, and turns the promotion gate off by
//! default, because the source itself waits for `pg_is_in_recovery()` = false); [`parse`] reads
//! the `repmgr-*` keys; [`ignored_etcd_keys`] warns about etcd keys that no longer matter.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde_norway::{Mapping, Value};

use super::{
    Diag, Entry, Fields, GateConfig, Location, Secret,
    schema::{self, Family},
    values,
};

/// Where the agent listens for `vip-agent event` unless configured.
pub const DEFAULT_REPMGR_SOCKET: &str = "/run/vip-agent/repmgr.sock";
/// Where the last accepted role event is kept unless configured.
pub const DEFAULT_REPMGR_STATE_FILE: &str = "/var/lib/vip-agent/repmgr.state";
/// Period of the PostgreSQL check unless configured.
pub const DEFAULT_REPMGR_CHECK_INTERVAL: Duration = Duration::from_secs(1);
const CHECK_INTERVAL_MIN: Duration = Duration::from_millis(100);
const CHECK_INTERVAL_MAX: Duration = Duration::from_secs(10);
/// One successful check keeps the VIP answering this many intervals (capped by `fence-timeout`).
pub const REPMGR_VALIDITY_INTERVALS: u32 = 3;
/// How long a primary keeps renewing without a majority of repmgr's nodes reachable, unless
/// configured. With the default interval the VIP is silent at most 8 s after the last quorum:
/// repmgr's defaults (`reconnect_attempts` 6 × `reconnect_interval` 10 s) give up on a primary
/// after 60 s.
pub const DEFAULT_REPMGR_QUORUM_HOLD: Duration = Duration::from_secs(5);
const QUORUM_HOLD_MIN: Duration = Duration::from_secs(1);
const QUORUM_HOLD_MAX: Duration = Duration::from_secs(300);

/// `dcs-type: repmgr`: this node's repmgr role, from event notifications, confirmed by the local
/// PostgreSQL (see `docs/repmgr.md` and [`crate::repmgr`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepmgrConfig {
    /// `repmgr-node-id`: this node's `node_id` in repmgr.conf.
    pub node_id: u32,
    /// `repmgr-socket`.
    pub socket: PathBuf,
    /// `repmgr-socket-group`: a group name or number whose members may send events (socket mode
    /// 0660). `None`: root only (0600).
    pub socket_group: Option<String>,
    /// `repmgr-check-interval`: period of `SELECT pg_is_in_recovery()`.
    pub check_interval: Duration,
    /// `repmgr-state-file`.
    pub state_file: PathBuf,
    /// The top-level `postgres-dsn`.
    pub postgres_dsn: Secret,
    /// `repmgr-quorum-hold`: how long a primary keeps renewing its deadline without a majority
    /// of repmgr's nodes reachable.
    pub quorum_hold: Duration,
    /// `repmgr-passfile`: passwords (libpq's `.pgpass` format) for the other nodes' `conninfo`.
    pub passfile: Option<PathBuf>,
}

impl RepmgrConfig {
    /// How long one successful check keeps the VIP answering: [`REPMGR_VALIDITY_INTERVALS`]
    /// intervals, capped by `fence_timeout`.
    #[must_use]
    pub fn validity(&self, fence_timeout: Option<Duration>) -> Duration {
        let v = self
            .check_interval
            .saturating_mul(REPMGR_VALIDITY_INTERVALS);
        fence_timeout.map_or(v, |f| v.min(f))
    }
}

/// The label every VIP gets as its `trigger-key` in repmgr mode (metrics, logs, hooks).
const TRIGGER_KEY_LABEL: &str = "repmgr";

/// Whether `dcs-type` says repmgr, from the raw keys.
fn is_repmgr(map: &BTreeMap<String, Entry>) -> bool {
    map.get("dcs-type")
        .and_then(|e| values::text(&e.value).ok())
        .is_some_and(|t| t.trim() == "repmgr")
}

/// Before interpretation: in repmgr mode, give every VIP the label `trigger-key` and the node id
/// as `trigger-value` (warning about ones that were set), and default `promotion-gate` to `off`.
/// Returns whether repmgr mode is on.
pub(super) fn prepare(map: &mut BTreeMap<String, Entry>, diag: &mut Diag) -> bool {
    if !is_repmgr(map) {
        for key in schema::family(Family::Repmgr) {
            if let Some(entry) = map.get(key) {
                let location = entry.location.clone();
                diag.warn(
                    &location,
                    key,
                    "ignored: only used with `dcs-type: repmgr`".to_owned(),
                );
            }
        }
        return false;
    }
    // The label is the node id as a number ("04" and "4" are the same node), so a rendered
    // configuration loads back to the same labels; text that is no node id stays as written and
    // is refused below.
    let node = map
        .get("repmgr-node-id")
        .and_then(|e| values::text(&e.value).ok())
        .map_or_else(
            || "?".to_owned(),
            |t| {
                values::repmgr_node_id(&t).map_or_else(|_| t.trim().to_owned(), |id| id.to_string())
            },
        );
    let label = |key: &str| {
        Value::String(match key {
            "trigger-key" => TRIGGER_KEY_LABEL.to_owned(),
            _ => node.clone(),
        })
    };
    for key in ["trigger-key", "trigger-value"] {
        if let Some(entry) = map.get(key) {
            let location = entry.location.clone();
            diag.warn(
                &location,
                key,
                "ignored with `dcs-type: repmgr`: every VIP follows this node's repmgr role"
                    .to_owned(),
            );
        }
    }
    if let Some(list) = map.get_mut("vips") {
        if let Value::Sequence(items) = &mut list.value {
            for item in items {
                if let Value::Mapping(m) = item {
                    set_labels(m, &label, &list.location, diag);
                }
            }
        }
    } else {
        for key in ["trigger-key", "trigger-value"] {
            map.insert(
                key.to_owned(),
                Entry {
                    value: label(key),
                    location: Location::Default,
                },
            );
        }
    }
    map.entry("promotion-gate".to_owned()).or_insert(Entry {
        value: Value::String("off".to_owned()),
        location: Location::Default,
    });
    true
}

fn set_labels(
    m: &mut Mapping,
    label: &dyn Fn(&str) -> Value,
    location: &Location,
    diag: &mut Diag,
) {
    for key in ["trigger-key", "trigger-value"] {
        let k = Value::String(key.to_owned());
        if m.get(&k).is_some_and(|v| !super::is_unset(v)) {
            diag.warn(
                location,
                &format!("vips[].{key}"),
                "ignored with `dcs-type: repmgr`: every VIP follows this node's repmgr role"
                    .to_owned(),
            );
        }
        m.insert(k, label(key));
    }
}

/// Notices about the labels [`prepare`] made up are noise: drop them.
pub(super) fn drop_label_notices(diag: &mut Diag) {
    diag.notices.retain(|n| {
        !(n.location == Location::Default
            && (n.key.ends_with("trigger-key") || n.key.ends_with("trigger-value")))
    });
}

/// etcd keys set in repmgr mode: warned about, not used.
pub(super) fn ignored_etcd_keys(top: &Fields, diag: &mut Diag) {
    for key in schema::family(Family::Etcd).chain(["patroni-failsafe"]) {
        top.warn_if_set(
            diag,
            key,
            "ignored with `dcs-type: repmgr` (etcd is not used)".to_owned(),
        );
    }
}

/// The `repmgr-*` keys and the top-level `postgres-dsn` (already checked by the gate's reader,
/// whose result is `top_gate`).
pub(super) fn parse(top: &Fields, top_gate: &GateConfig, diag: &mut Diag) -> Option<RepmgrConfig> {
    let node_id = match top.text(diag, "repmgr-node-id") {
        Some((text, location)) => match values::repmgr_node_id(&text) {
            Ok(n) => Some(n),
            Err(reason) => {
                diag.invalid(&location, "repmgr-node-id", reason);
                None
            }
        },
        None => {
            if !top.map.contains_key("repmgr-node-id") {
                let mut error = top.missing("repmgr-node-id");
                if let super::ConfigError::Missing { hint, .. } = &mut error {
                    hint.push_str(
                        " (`dcs-type: repmgr` needs this node's node_id from repmgr.conf)",
                    );
                }
                diag.errors.push(error);
            }
            None
        }
    };
    let path = |key: &str, default: &str, diag: &mut Diag| match top.text(diag, key) {
        Some((text, location)) => {
            let path = PathBuf::from(text.trim());
            if !path.is_absolute() {
                diag.invalid(
                    &location,
                    key,
                    format!("{} is not an absolute path", path.display()),
                );
            }
            path
        }
        None => PathBuf::from(default),
    };
    let socket = path("repmgr-socket", DEFAULT_REPMGR_SOCKET, diag);
    let state_file = path("repmgr-state-file", DEFAULT_REPMGR_STATE_FILE, diag);
    let socket_group = top
        .text(diag, "repmgr-socket-group")
        .and_then(|(g, location)| {
            let g = g.trim().to_owned();
            let ok = !g.is_empty()
                && g.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if ok {
                Some(g)
            } else {
                diag.invalid(
                    &location,
                    "repmgr-socket-group",
                    format!("{g:?} is not a group name or number"),
                );
                None
            }
        });
    let passfile = top.text(diag, "repmgr-passfile").map(|(text, location)| {
        let path = PathBuf::from(text.trim());
        if !path.is_absolute() {
            diag.invalid(
                &location,
                "repmgr-passfile",
                format!("{} is not an absolute path", path.display()),
            );
        }
        path
    });
    let mut quorum_hold = DEFAULT_REPMGR_QUORUM_HOLD;
    if let Some(((d, _), location)) = top.read(diag, "repmgr-quorum-hold", values::duration) {
        if (QUORUM_HOLD_MIN..=QUORUM_HOLD_MAX).contains(&d) {
            quorum_hold = d;
        } else {
            diag.invalid(
                &location,
                "repmgr-quorum-hold",
                values::duration_out_of_range(d, QUORUM_HOLD_MIN, QUORUM_HOLD_MAX),
            );
        }
    }
    let mut check_interval = DEFAULT_REPMGR_CHECK_INTERVAL;
    if let Some(((d, _), location)) = top.read(diag, "repmgr-check-interval", values::duration) {
        if (CHECK_INTERVAL_MIN..=CHECK_INTERVAL_MAX).contains(&d) {
            check_interval = d;
        } else {
            diag.invalid(
                &location,
                "repmgr-check-interval",
                values::duration_out_of_range(d, CHECK_INTERVAL_MIN, CHECK_INTERVAL_MAX),
            );
        }
    }
    let postgres_dsn = match &top_gate.postgres_dsn {
        Some(dsn) => match tcp_dsn_problem(dsn.expose()) {
            Some(reason) => {
                if let Some(entry) = top.map.get("postgres-dsn") {
                    diag.invalid(&entry.location.clone(), "postgres-dsn", reason);
                }
                None
            }
            None => Some(dsn.clone()),
        },
        None => {
            if !top.map.contains_key("postgres-dsn") {
                let mut error = top.missing("postgres-dsn");
                if let super::ConfigError::Missing { hint, .. } = &mut error {
                    hint.push_str(
                        " (`dcs-type: repmgr` confirms the role with pg_is_in_recovery() on the \
                         local PostgreSQL, e.g. \"host=/var/run/postgresql user=vip_agent \
                         dbname=postgres\")",
                    );
                }
                diag.errors.push(error);
            }
            None
        }
    };
    Some(RepmgrConfig {
        node_id: node_id?,
        socket,
        socket_group,
        check_interval,
        state_file,
        postgres_dsn: postgres_dsn?,
        quorum_hold,
        passfile,
    })
}

/// Why a repmgr-mode `postgres-dsn` is refused: it reaches PostgreSQL over TCP. In repmgr mode the
/// local server's `pg_is_in_recovery() = f` alone keeps the VIP answering, and any local user can
/// listen on a loopback port PostgreSQL is not bound to (a restart, another port) and answer it;
/// the gate speaks no TLS to verify the server. A Unix socket lives in a directory only
/// PostgreSQL's user can write (checked at start-up).
fn tcp_dsn_problem(dsn: &str) -> Option<String> {
    let config = dsn.trim().parse::<tokio_postgres::Config>().ok()?;
    let tcp = !config.get_hostaddrs().is_empty()
        || config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, tokio_postgres::config::Host::Tcp(_)));
    tcp.then(|| {
        format!(
            "{:?} reaches PostgreSQL over TCP, which any local user could answer in its place; \
             dcs-type: repmgr trusts the local server's word alone, so give its unix socket \
             directory, e.g. host=/var/run/postgresql",
            super::values::redact_dsn(dsn)
        )
    })
}

/// A `fence-timeout` at or below the check interval caps the validity below the renewal period:
/// the VIP would go silent between checks. A `repmgr-quorum-hold` below two check intervals lets
/// one slow round fence the primary.
pub(super) fn check_fence_timeout(
    repmgr: Option<&RepmgrConfig>,
    fence_timeout: Option<Duration>,
    top: &Fields,
    diag: &mut Diag,
) {
    if let Some(r) = repmgr
        && r.quorum_hold < r.check_interval.saturating_mul(2)
    {
        top.warn_if_set(
            diag,
            "repmgr-quorum-hold",
            format!(
                "{} is less than two repmgr-check-interval ({}): one slow round of the other \
                 nodes' answers silences the VIP",
                values::format_duration(r.quorum_hold),
                values::format_duration(r.check_interval)
            ),
        );
    }
    if let (Some(r), Some(f)) = (repmgr, fence_timeout)
        && f <= r.check_interval
    {
        top.warn_if_set(
            diag,
            "fence-timeout",
            format!(
                "{} is not longer than repmgr-check-interval ({}): with dcs-type repmgr it caps \
                 how long one check keeps the VIP answering, so the VIP goes silent between checks",
                values::format_duration(f),
                values::format_duration(r.check_interval)
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{ConfigError, GateMode, NoticeLevel, from_yaml_str};

    const BASE: &str = "ip: 10.0.0.10\nnetmask: 24\ninterface: eth0\ndcs-type: repmgr\n\
                        repmgr-node-id: 3\npostgres-dsn: \"host=/var/run/postgresql user=vip\"\n";

    fn load(yaml: &str) -> Result<crate::config::Config, ConfigError> {
        from_yaml_str("test.yml", yaml)
    }

    fn errors(e: &ConfigError) -> Vec<String> {
        match e {
            ConfigError::Several { errors } => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }

    #[test]
    fn a_minimal_repmgr_config_needs_no_etcd_keys() {
        let c = load(BASE).expect("loads");
        let r = c.repmgr.as_ref().expect("repmgr mode");
        assert_eq!(r.node_id, 3);
        assert_eq!(r.socket, std::path::Path::new(super::DEFAULT_REPMGR_SOCKET));
        assert_eq!(
            r.state_file,
            std::path::Path::new(super::DEFAULT_REPMGR_STATE_FILE)
        );
        assert_eq!(r.check_interval, super::DEFAULT_REPMGR_CHECK_INTERVAL);
        assert_eq!(r.socket_group, None);
        assert_eq!(r.validity(None), std::time::Duration::from_secs(3));
        assert_eq!(
            r.validity(Some(std::time::Duration::from_millis(1500))),
            std::time::Duration::from_millis(1500),
            "capped by fence-timeout"
        );
        assert!(c.etcd.endpoints.is_empty());
        let [vip] = c.vips.as_slice() else {
            panic!("one VIP: {:?}", c.vips)
        };
        assert_eq!(
            (vip.trigger_key.as_str(), vip.trigger_value.as_str()),
            ("repmgr", "3")
        );
        assert_eq!(
            vip.gate.mode,
            GateMode::Off,
            "the source itself waits for PostgreSQL"
        );
        assert!(
            c.notices
                .iter()
                .all(|n| !n.key.contains("trigger") && n.key != "dcs-endpoints"),
            "{:?}",
            c.notices
        );
    }

    #[test]
    fn repmgr_errors_name_the_file_the_key_and_the_reason() {
        for (yaml, key, needle) in [
            (
                BASE.replace("repmgr-node-id: 3\n", ""),
                "repmgr-node-id",
                "required",
            ),
            (
                BASE.replace("repmgr-node-id: 3", "repmgr-node-id: abc"),
                "repmgr-node-id",
                "not a repmgr node id",
            ),
            (
                BASE.replace("repmgr-node-id: 3", "repmgr-node-id: 0"),
                "repmgr-node-id",
                "not a repmgr node id",
            ),
            (
                BASE.lines()
                    .filter(|l| !l.starts_with("postgres-dsn"))
                    .map(|l| format!("{l}\n"))
                    .collect(),
                "postgres-dsn",
                "required",
            ),
            (
                format!("{BASE}repmgr-check-interval: 20s\n"),
                "repmgr-check-interval",
                "out of range",
            ),
            (
                format!("{BASE}repmgr-check-interval: 10ms\n"),
                "repmgr-check-interval",
                "out of range",
            ),
            (
                BASE.replace("host=/var/run/postgresql", "host=127.0.0.1"),
                "postgres-dsn",
                "unix socket",
            ),
            (
                BASE.replace(
                    "host=/var/run/postgresql",
                    "host=/var/run/postgresql,localhost",
                ),
                "postgres-dsn",
                "unix socket",
            ),
            (
                BASE.replace("host=/var/run/postgresql", "host=/tmp hostaddr=127.0.0.1"),
                "postgres-dsn",
                "unix socket",
            ),
            (
                format!("{BASE}repmgr-socket: run/x.sock\n"),
                "repmgr-socket",
                "not an absolute path",
            ),
            (
                format!("{BASE}repmgr-state-file: state\n"),
                "repmgr-state-file",
                "not an absolute path",
            ),
            (
                format!("{BASE}repmgr-socket-group: \"a b\"\n"),
                "repmgr-socket-group",
                "not a group",
            ),
            (
                format!("{BASE}repmgr-socket-grup: x\n"),
                "repmgr-socket-grup",
                "repmgr-socket-group",
            ),
        ] {
            let e = load(&yaml).expect_err(key);
            let all = errors(&e);
            assert!(
                all.iter().any(|m| m.contains("test.yml")
                    && m.contains(&format!("`{key}`"))
                    && m.contains(needle)),
                "{key}: {all:?}"
            );
        }
    }

    /// Found by the `config` fuzz target: `repmgr-node-id: 04` labelled the VIP "04", while the
    /// rendered configuration says `repmgr-node-id: 4` and loaded back as "4".
    #[test]
    fn a_node_id_with_leading_zeros_labels_the_vip_by_its_number() {
        let c = load(&BASE.replace("repmgr-node-id: 3", "repmgr-node-id: 03")).expect("loads");
        assert_eq!(c.repmgr.as_ref().map(|r| r.node_id), Some(3));
        assert_eq!(c.vips[0].trigger_value, "3");
        let back = load(&c.render_redacted()).expect("the rendering loads");
        assert_eq!(back.vips[0].trigger_value, "3");
        assert!(back.same_effect(&c), "rendered and loaded back: {back:#?}");
    }

    #[test]
    fn mode_mismatches_are_warned_about() {
        let c = load(
            "ip: 10.0.0.10\nnetmask: 24\ninterface: eth0\ntrigger-key: /service/a/leader\n\
                      trigger-value: a\nrepmgr-node-id: 3\n",
        )
        .expect("etcd mode loads");
        assert!(c.repmgr.is_none());
        assert!(c.notices.iter().any(|n| n.level == NoticeLevel::Warning
            && n.key == "repmgr-node-id"
            && n.message.contains("only used with")));
        let c = load(&format!(
            "{BASE}trigger-key: /service/a/leader\ndcs-endpoints: http://10.0.0.1:2379\n"
        ))
        .expect("repmgr mode loads");
        for key in ["trigger-key", "dcs-endpoints"] {
            assert!(
                c.notices
                    .iter()
                    .any(|n| n.level == NoticeLevel::Warning && n.key == key),
                "{key}: {:?}",
                c.notices
            );
        }
        assert_eq!(c.vips[0].trigger_key, "repmgr", "the label wins");
        let c = load(&format!("{BASE}fence-timeout: 1s\n")).expect("loads");
        assert!(
            c.notices
                .iter()
                .any(|n| n.key == "fence-timeout" && n.message.contains("silent")),
            "{:?}",
            c.notices
        );
    }

    #[test]
    fn the_rendering_reads_back_with_one_vip_and_with_a_list() {
        let list = "dcs-type: repmgr\nrepmgr-node-id: 7\nrepmgr-socket-group: postgres\n\
                    repmgr-check-interval: 500ms\npostgres-dsn: host=/tmp user=vip\nvips:\n  \
                    - ip: 10.0.0.10\n    netmask: 24\n    interface: eth0\n  - ip: 10.0.0.11\n    \
                    netmask: 24\n    interface: eth1\n    trigger-key: /x/leader\n";
        for yaml in [BASE, list] {
            let c = load(yaml).expect("loads");
            let rendered = c.render_redacted();
            assert!(rendered.contains("dcs-type: repmgr"), "{rendered}");
            assert!(!rendered.contains("trigger-key"), "{rendered}");
            let back = load(&rendered).unwrap_or_else(|e| panic!("{e}\n{rendered}"));
            assert!(back.same_effect(&c), "{rendered}\n{back:?}\n{c:?}");
        }
    }
}
