//! The configuration's keys, declared once.
//!
//! [`KEYS`] is the one table of every key: its name, its flag and `VIP_*` variable (when it has
//! them), how the flag takes its value, where the key may be set, its default (for `--help`), its
//! help text, the parser family that reads it, and how `vip-agent check` renders it from a
//! [`Config`]. The same macro call builds [`ConfigArgs`]' fields from the table, so from it come:
//!
//! * the keys the file layer accepts, top-level and inside `vips:` entries ([`accepted`]), and the
//!   suggestions for unknown keys;
//! * the clap arguments ([`ConfigArgs`]' `clap::Args`, see `args.rs`) and their variables;
//! * the flag/variable layer's values ([`ConfigArgs::given`]);
//! * `check`'s rendering (`render.rs` walks the table).
//!
//! Adding a key: one entry here, its field in [`Config`] (or a part of it), and its reader in the
//! `parse/` module of its [`Family`].

use std::path::PathBuf;

use serde_norway::Value;

use super::{Config, Secret, VipConfig, redact_dsn, render, values::format_duration};

/// Where a key may be set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::config) enum Scope {
    /// The top level only.
    Top,
    /// One VIP: top-level in vip-manager style (one VIP), else in each `vips:` entry.
    Vip,
    /// Top-level for every VIP, and in a `vips:` entry for that VIP (overriding the top level).
    Both,
}

/// The `parse/` module that reads a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::config) enum Family {
    /// `parse/vips.rs`: the VIP itself and the `vips:` list.
    Vips,
    /// `parse/compat.rs`: vip-manager's selectors and the keys accepted and ignored.
    Compat,
    /// `parse/etcd.rs`: how to reach etcd.
    Etcd,
    /// `parse/agent.rs`: the agent's own settings (gratuitous ARP, fencing, XDP, metrics, logs).
    Agent,
    /// `parse/gate.rs`: the promotion gate.
    Gate,
    /// `parse/hooks.rs`: `on-promote` and `on-demote`.
    Hooks,
    /// `parse/repmgr.rs`: `dcs-type: repmgr`.
    Repmgr,
}

/// How a flag takes its value (all are strings, interpreted by the same readers as the file's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::config) enum Kind {
    /// `--key VALUE`.
    Text,
    /// `--key VALUE`; the variable's value is hidden from `--help`.
    Secret,
    /// `--key`, `--key=false`: a boolean that may stand alone (`verbose`).
    Switch,
    /// `--key A,B`: a comma-separated list.
    List,
}

/// A key's flag and variable.
#[derive(Clone, Copy, Debug)]
pub(in crate::config) struct Flag {
    /// `VIP_` + the key in upper case, `-` → `_` (checked by a test).
    pub(in crate::config) env: &'static str,
    pub(in crate::config) value_name: &'static str,
    pub(in crate::config) kind: Kind,
}

/// How `check` renders a key: the top level (`None`) or one VIP; `None` leaves the key out.
pub(in crate::config) type Render = fn(&Config, Option<&VipConfig>) -> Option<Value>;

/// One key of the table.
#[derive(Clone, Copy, Debug)]
pub(in crate::config) struct Key {
    pub(in crate::config) name: &'static str,
    /// `--<name>` and its variable; `None` for keys only a file sets.
    pub(in crate::config) flag: Option<Flag>,
    pub(in crate::config) scope: Scope,
    pub(in crate::config) family: Family,
    /// The default as `--help` shows it, when there is one worth showing.
    pub(in crate::config) default: Option<&'static str>,
    pub(in crate::config) help: &'static str,
    pub(in crate::config) render: Render,
}

/// The key named `name`.
pub(in crate::config) fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

/// The names of the keys a file accepts at the top level (`Top` is false) or in `vips:` entries.
pub(in crate::config) fn accepted(top: bool) -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .filter(move |k| top || k.scope != Scope::Top)
        .map(|k| k.name)
}

/// The names of one family's keys.
pub(in crate::config) fn family(family: Family) -> impl Iterator<Item = &'static str> {
    KEYS.iter()
        .filter(move |k| k.family == family)
        .map(|k| k.name)
}

/// A value given as a flag or variable.
pub(in crate::config) enum Given<'a> {
    One(&'a Option<String>),
    List(&'a [String]),
}

fn text(s: impl Into<String>) -> Value {
    Value::String(s.into())
}

fn number(n: impl Into<u64>) -> Value {
    Value::Number(n.into().into())
}

fn duration(d: std::time::Duration) -> Value {
    text(format_duration(d))
}

fn path(p: Option<&PathBuf>) -> Option<Value> {
    p.map(|p| text(p.display().to_string()))
}

fn redacted<T>(secret: Option<&T>) -> Option<Value> {
    secret.map(|_| text(Secret::REDACTED))
}

/// The field type of a flag of `kind` in [`ConfigArgs`].
macro_rules! field_type {
    (List) => { Vec<String> };
    ($kind:ident) => { Option<String> };
}

/// A [`Given`] of a field of `kind`.
macro_rules! given {
    (List, $field:expr) => {
        Given::List($field)
    };
    ($kind:ident, $field:expr) => {
        Given::One($field)
    };
}

/// The value of a field of `kind` from one string (the fuzz target's flags).
macro_rules! from_text {
    (List, $value:expr) => {
        $value.split(',').map(str::to_owned).collect()
    };
    ($kind:ident, $value:expr) => {
        Some($value.to_owned())
    };
}

/// Set a field of `kind` from clap's matches, when clap has a value for it (flag or variable).
macro_rules! update {
    (List, $matches:expr, $name:expr, $slot:expr) => {
        if let Ok(Some(values)) = $matches.try_get_many::<String>($name) {
            $slot = values.cloned().collect();
        }
    };
    ($kind:ident, $matches:expr, $name:expr, $slot:expr) => {
        if let Ok(Some(value)) = $matches.try_get_one::<String>($name) {
            $slot = Some(value.clone());
        }
    };
}

macro_rules! opt {
    () => {
        None
    };
    ($e:expr) => {
        Some($e)
    };
}

/// The table: `"name" => field(ENV, VALUE_NAME, Kind)` for keys with a flag, then scope, family,
/// default, help and rendering.
macro_rules! schema {
    ($(
        $name:literal $( => $field:ident ($env:literal, $value_name:literal, $kind:ident) )?:
        $scope:ident, $family:ident, $default:expr, $help:literal,
        $render:expr;
    )*) => {
        /// Every key vip-agent reads, in the order of `--help` and of `check`'s rendering.
        pub(in crate::config) const KEYS: &[Key] = &[$(
            Key {
                name: $name,
                flag: opt!($( Flag { env: $env, value_name: $value_name, kind: Kind::$kind } )?),
                scope: Scope::$scope,
                family: Family::$family,
                default: $default,
                help: $help,
                render: $render,
            },
        )*];

        /// The options shared by `vip-agent run` and `vip-agent check`: vip-manager's flags (same
        /// names, same `VIP_*` variables) plus vip-agent's own, one per key of the table in
        /// `config/schema.rs` that has a flag. Flatten it into a subcommand:
        ///
        /// ```
        /// #[derive(clap::Args)]
        /// struct Run {
        ///     #[command(flatten)]
        ///     config: vip_agent::config::ConfigArgs,
        /// }
        /// # let _ = std::marker::PhantomData::<Run>;
        /// ```
        ///
        /// Every field is optional: an empty value (`VIP_IP=`) counts as unset, as in vip-manager
        /// (viper ignores empty variables), so the config file then provides it.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct ConfigArgs {
            /// `--config` / `VIP_CONFIG`: the YAML configuration file.
            pub config: Option<PathBuf>,
            $($(
                #[doc = $help]
                pub $field: field_type!($kind),
            )?)*
        }

        impl ConfigArgs {
            /// Every flag's value with its key.
            pub(in crate::config) fn given(&self) -> Vec<(&'static str, Given<'_>)> {
                vec![$($( ($name, given!($kind, &self.$field)), )?)*]
            }

            /// Set the flag of `key` from `clap`'s matches (the strings clap merged from the flag
            /// and its variable).
            pub(in crate::config) fn update_from(&mut self, matches: &clap::ArgMatches) {
                $($(
                    update!($kind, matches, $name, self.$field);
                )?)*
            }

            /// Set the flag of `key` to `value` (a list: comma separated); false for a key without
            /// a flag. For the fuzz target, which drives the loader with arbitrary flags.
            pub fn set(&mut self, key: &str, value: &str) -> bool {
                match key {
                    $($( $name => self.$field = from_text!($kind, value), )?)*
                    _ => return false,
                }
                true
            }
        }
    };
}

schema! {
    "ip" => ip("VIP_IP", "ADDR", Text): Vip, Vips, None,
        "Virtual IP address to manage (IPv4 or IPv6).",
        |_, v| v.map(|v| text(v.ip.to_string()));
    "netmask" => netmask("VIP_NETMASK", "PREFIX", Text): Vip, Vips, None,
        "Prefix length of the VIP (1..=32, IPv6 1..=128), e.g. 24.",
        |_, v| v.map(|v| number(v.prefix_len));
    "interface" => interface("VIP_INTERFACE", "IFACE", Text): Vip, Vips, None,
        "Network interface that carries the VIP.",
        |_, v| v.map(|v| text(v.interface.as_str()));
    "trigger-key" => trigger_key("VIP_TRIGGER_KEY", "KEY", Text): Vip, Vips, None,
        "Patroni leader key in etcd, e.g. /service/batman/leader (dcs-type: patroni: the REST \
         path asked, default /leader).",
        // A label made up by the parser in repmgr mode: left out.
        |c, v| v.filter(|_| c.repmgr.is_none()).map(|v| text(v.trigger_key.as_str()));
    "trigger-value" => trigger_value("VIP_TRIGGER_VALUE", "VALUE", Text): Vip, Vips,
        Some("host name"),
        "Value of the leader key that means \"this node\" (Patroni's member name).",
        |c, v| v.filter(|_| c.repmgr.is_none()).map(|v| text(v.trigger_value.as_str()));
    "vips": Top, Vips, None,
        "Several VIPs, each a mapping of the per-VIP keys (a file only).",
        |c, v| (v.is_none() && c.vips.len() != 1).then(|| {
            Value::Sequence(
                c.vips
                    .iter()
                    .map(|vip| Value::Mapping(render::vip(c, vip)))
                    .collect(),
            )
        });
    "dcs-type" => dcs_type("VIP_DCS_TYPE", "TYPE", Text): Top, Compat, Some("etcd"),
        "DCS type: etcd or etcd3 (both mean the etcd v3 API), patroni (Patroni's REST API at \
         dcs-endpoints: this node leads while GET <endpoint><trigger-key> answers the status \
         trigger-value, defaults /leader and 200), or repmgr (this node's repmgr role, from \
         repmgr's event notifications and metadata; see docs/repmgr.md).",
        |c, v| v.is_none().then(|| text(match (&c.repmgr, c.patroni_interval) {
            (Some(_), _) => "repmgr",
            (None, Some(_)) => "patroni",
            (None, None) => "etcd",
        }));
    "dcs-endpoints" => dcs_endpoints("VIP_DCS_ENDPOINTS", "URLS", List): Top, Etcd,
        Some("http://127.0.0.1:2379"),
        "etcd endpoints (dcs-type: patroni: Patroni REST API URLs), comma separated, each with \
         http:// or https://.",
        |c, v| (v.is_none() && !c.etcd.endpoints.is_empty()).then(|| {
            Value::Sequence(c.etcd.endpoints.iter().map(|e| text(e.as_str())).collect())
        });
    "etcd-user" => etcd_user("VIP_ETCD_USER", "USER", Text): Top, Etcd, None,
        "etcd user name (password authentication).",
        |c, v| v.is_none().then_some(c.etcd.user.as_deref()).flatten().map(text);
    "etcd-password" => etcd_password("VIP_ETCD_PASSWORD", "PASSWORD", Secret): Top, Etcd,
        None,
        "etcd password. Prefer the config file (mode 0600) or the variable: flags show up in \
         `ps`.",
        |c, v| v.is_none().then(|| redacted(c.etcd.password.as_ref())).flatten();
    "etcd-ca-file" => etcd_ca_file("VIP_ETCD_CA_FILE", "FILE", Text): Top, Etcd, None,
        "CA certificate (PEM) that verifies the etcd servers.",
        |c, v| v.is_none().then(|| path(c.etcd.ca_file.as_ref())).flatten();
    "etcd-cert-file" => etcd_cert_file("VIP_ETCD_CERT_FILE", "FILE", Text): Top, Etcd, None,
        "Client certificate (PEM) for etcd; needs --etcd-key-file.",
        |c, v| v.is_none().then(|| path(c.etcd.cert_file.as_ref())).flatten();
    "etcd-key-file" => etcd_key_file("VIP_ETCD_KEY_FILE", "FILE", Text): Top, Etcd, None,
        "Private key (PEM) of the client certificate; needs --etcd-cert-file.",
        |c, v| v.is_none().then(|| path(c.etcd.key_file.as_ref())).flatten();
    "consul-token" => consul_token("VIP_CONSUL_TOKEN", "TOKEN", Secret): Top, Compat, None,
        "vip-manager's Consul ACL token: refused with a message (Consul is not supported).",
        |_, _| None;
    "interval" => interval("VIP_INTERVAL", "MS", Text): Top, Compat, None,
        "With --dcs-type patroni: how often Patroni's REST API is asked (default 1s). \
         Otherwise accepted for vip-manager compatibility and ignored: vip-agent watches.",
        |c, v| v.is_none().then_some(c.patroni_interval).flatten().map(duration);
    "retry-after" => retry_after("VIP_RETRY_AFTER", "MS", Text): Top, Compat, None,
        "Accepted for vip-manager compatibility and ignored.",
        |_, _| None;
    "retry-num" => retry_num("VIP_RETRY_NUM", "N", Text): Top, Compat, None,
        "Accepted for vip-manager compatibility and ignored.",
        |_, _| None;
    "manager-type" => manager_type("VIP_MANAGER_TYPE", "TYPE", Text): Top, Compat, None,
        "Only `basic` (local address, ARP answered in XDP) is supported.",
        |_, _| None;
    "hosting-type": Top, Compat, None,
        "Written by Pigsty, never read by vip-manager: accepted with a warning (a file only).",
        |_, _| None;
    "verbose" => verbose("VIP_VERBOSE", "BOOL", Switch): Top, Agent, None,
        "Debug logging: `--verbose`, `--verbose=false`, VIP_VERBOSE=true (also yes/no, \
         on/off, 1/0).",
        |c, v| v.is_none().then_some(Value::Bool(c.verbose));
    "garp-count" => garp_count("VIP_GARP_COUNT", "N", Text): Top, Agent, Some("3"),
        "Gratuitous ARPs sent when this node takes the VIP over.",
        |c, v| v.is_none().then(|| number(c.garp.count));
    "garp-interval" => garp_interval("VIP_GARP_INTERVAL", "DURATION", Text): Top, Agent,
        Some("1s"),
        "Spacing of the gratuitous ARPs after the first two, e.g. 1s or 1000 (ms).",
        |c, v| v.is_none().then(|| duration(c.garp.interval));
    "fence-timeout" => fence_timeout("VIP_FENCE_TIMEOUT", "DURATION", Text): Top, Agent,
        Some("until the observed leader-key lease expires"),
        "How long a node that lost (or cannot confirm) leadership keeps fencing, e.g. 2s.",
        |c, v| v.is_none().then_some(c.fence_timeout).flatten().map(duration);
    "fence-handshake" => fence_handshake("VIP_FENCE_HANDSHAKE", "BOOL", Text): Top, Agent,
        Some("true"),
        "Answer only once every other agent of the key has recorded in etcd that it fenced: \
         true or false.",
        // Not rendered in repmgr mode, where it does not apply.
        |c, v| (v.is_none() && c.repmgr.is_none() && c.patroni_interval.is_none())
            .then(|| Value::Bool(c.handshake.is_some()));
    "fence-record-ttl" => fence_record_ttl("VIP_FENCE_RECORD_TTL", "DURATION", Text): Top,
        Agent, Some("30s"),
        "TTL of this agent's fence record in etcd, whole seconds, 2s..60s; Patroni's `ttl` is \
         a good value.",
        |c, v| v.is_none().then_some(c.handshake.as_ref()).flatten().map(|h| duration(h.ttl));
    "fence-record-prefix" => fence_record_prefix("VIP_FENCE_RECORD_PREFIX", "PREFIX", Text):
        Top, Agent, Some("/vip-agent"),
        "etcd prefix of the fence records.",
        |c, v| {
            v.is_none()
                .then_some(c.handshake.as_ref())
                .flatten()
                .map(|h| text(h.prefix.as_str()))
        };
    "xdp-mode" => xdp_mode("VIP_XDP_MODE", "MODE", Text): Top, Agent, Some("auto"),
        "Attach mode of the ingress program: auto, native, generic or tc (tcx, Linux 6.6+).",
        |c, v| v.is_none().then(|| text(c.xdp_mode.as_str()));
    "metrics-address" => metrics_address("VIP_METRICS_ADDRESS", "IP:PORT", Text): Top, Agent,
        Some("127.0.0.1:9477"),
        "Address of the Prometheus metrics endpoint.",
        |c, v| v.is_none().then(|| text(c.metrics_address.to_string()));
    "pin-path" => pin_path("VIP_PIN_PATH", "DIR", Text): Top, Agent,
        Some("/sys/fs/bpf/vip-agent"),
        "bpffs directory for the pinned XDP program and maps.",
        |c, v| v.is_none().then(|| text(c.pin_path.display().to_string()));
    "promotion-gate" => promotion_gate("VIP_PROMOTION_GATE", "GATE", Text): Both, Gate,
        Some("patroni"),
        "What must hold before a new primary answers: patroni, postgres or off.",
        |_, v| v.map(|v| text(v.gate.mode.as_str()));
    "promotion-gate-interval" => promotion_gate_interval(
        "VIP_PROMOTION_GATE_INTERVAL", "DURATION", Text): Both, Gate, Some("5ms"),
        "Poll period while the promotion gate waits, e.g. 5ms.",
        |_, v| v.map(|v| duration(v.gate.interval));
    "promotion-gate-timeout" => promotion_gate_timeout(
        "VIP_PROMOTION_GATE_TIMEOUT", "DURATION", Text): Both, Gate, Some("10s"),
        "Answer anyway after the promotion gate waited this long, e.g. 10s.",
        |_, v| v.map(|v| duration(v.gate.timeout));
    "patroni-url" => patroni_url("VIP_PATRONI_URL", "URL", Text): Both, Gate,
        Some("the api_url in this member's key, else http://127.0.0.1:8008"),
        "Patroni's REST API on this node.",
        |_, v| v.and_then(|v| v.gate.patroni_url.as_ref()).map(|u| text(u.to_string()));
    "patroni-ca-file" => patroni_ca_file("VIP_PATRONI_CA_FILE", "FILE", Text): Both, Gate,
        None,
        "CA certificate (PEM) that verifies Patroni's REST API certificate (https).",
        |_, v| v.and_then(|v| path(v.gate.patroni_ca_file.as_ref()));
    "patroni-cert-file" => patroni_cert_file("VIP_PATRONI_CERT_FILE", "FILE", Text): Both,
        Gate, None,
        "Client certificate (PEM) for Patroni's REST API; needs --patroni-key-file.",
        |_, v| v.and_then(|v| path(v.gate.patroni_cert_file.as_ref()));
    "patroni-key-file" => patroni_key_file("VIP_PATRONI_KEY_FILE", "FILE", Text): Both, Gate,
        None,
        "Private key (PEM) of the Patroni client certificate; needs --patroni-cert-file.",
        |_, v| v.and_then(|v| path(v.gate.patroni_key_file.as_ref()));
    "patroni-user" => patroni_user("VIP_PATRONI_USER", "USER", Text): Both, Gate, None,
        "User of Patroni's REST API basic authentication (restapi.authentication.username).",
        |_, v| v.and_then(|v| v.gate.patroni_user.as_deref()).map(text);
    "patroni-password" => patroni_password("VIP_PATRONI_PASSWORD", "PASSWORD", Secret): Both,
        Gate, None,
        "Password of Patroni's REST API basic authentication. Prefer the file or the variable.",
        |_, v| v.and_then(|v| redacted(v.gate.patroni_password.as_ref()));
    "postgres-dsn" => postgres_dsn("VIP_POSTGRES_DSN", "DSN", Secret): Both, Gate, None,
        "Connection string of the local PostgreSQL, for --promotion-gate postgres and \
         --dcs-type repmgr.",
        // repmgr mode reads the top-level one: with a `vips:` list it is rendered there too.
        |c, v| match v {
            Some(v) => v.gate.postgres_dsn.as_ref().map(|d| text(redact_dsn(d.expose()))),
            None => c
                .repmgr
                .as_ref()
                .filter(|_| c.vips.len() != 1)
                .map(|r| text(redact_dsn(r.postgres_dsn.expose()))),
        };
    "patroni-failsafe" => patroni_failsafe("VIP_PATRONI_FAILSAFE", "BOOL", Text): Both, Gate,
        Some("true"),
        "While etcd is unreachable, keep answering past the lease deadline as long as \
         Patroni's REST API reports this member a running primary in failsafe mode: true or \
         false.",
        // Only etcd has a lease to hold past: not rendered in the other modes.
        |c, v| v
            .filter(|_| c.repmgr.is_none() && c.patroni_interval.is_none())
            .map(|v| Value::Bool(v.gate.failsafe));
    "on-promote" => on_promote("VIP_ON_PROMOTE", "COMMAND", Text): Both, Hooks, None,
        "Shell command run after this node started answering for the VIP (see \
         docs/hooks.md).",
        |_, v| v.and_then(|v| v.hooks.on_promote.as_deref()).map(text);
    "on-demote" => on_demote("VIP_ON_DEMOTE", "COMMAND", Text): Both, Hooks, None,
        "Shell command run after this node stopped answering for the VIP.",
        |_, v| v.and_then(|v| v.hooks.on_demote.as_deref()).map(text);
    "hook-timeout" => hook_timeout("VIP_HOOK_TIMEOUT", "DURATION", Text): Both, Hooks,
        Some("30s"),
        "Kill a hook attempt after this long, e.g. 30s.",
        |_, v| v.map(|v| duration(v.hooks.timeout));
    "hook-retries" => hook_retries("VIP_HOOK_RETRIES", "N", Text): Both, Hooks, Some("2"),
        "Attempts after a failed hook, 1 s apart.",
        |_, v| v.map(|v| number(v.hooks.retries));
    "repmgr-node-id" => repmgr_node_id("VIP_REPMGR_NODE_ID", "ID", Text): Top, Repmgr, None,
        "With --dcs-type repmgr: this node's node_id in repmgr.conf (required there).",
        |c, v| v.is_none().then_some(c.repmgr.as_ref()).flatten().map(|r| number(r.node_id));
    "repmgr-socket" => repmgr_socket("VIP_REPMGR_SOCKET", "PATH", Text): Top, Repmgr,
        Some("/run/vip-agent/repmgr.sock"),
        "With --dcs-type repmgr: the socket `vip-agent event` talks to.",
        |c, v| {
            v.is_none()
                .then_some(c.repmgr.as_ref())
                .flatten()
                .and_then(|r| path(Some(&r.socket)))
        };
    "repmgr-socket-group" => repmgr_socket_group("VIP_REPMGR_SOCKET_GROUP", "GROUP", Text):
        Top, Repmgr, Some("root only, 0600"),
        "With --dcs-type repmgr: a group whose members may send events (socket mode 0660).",
        |c, v| {
            v.is_none()
                .then_some(c.repmgr.as_ref())
                .flatten()
                .and_then(|r| r.socket_group.as_deref())
                .map(text)
        };
    "repmgr-check-interval" => repmgr_check_interval(
        "VIP_REPMGR_CHECK_INTERVAL", "DURATION", Text): Top, Repmgr, Some("1s"),
        "With --dcs-type repmgr: period of the pg_is_in_recovery() check, 100ms..=10s.",
        |c, v| {
            v.is_none()
                .then_some(c.repmgr.as_ref())
                .flatten()
                .map(|r| duration(r.check_interval))
        };
    "repmgr-state-file" => repmgr_state_file("VIP_REPMGR_STATE_FILE", "FILE", Text): Top,
        Repmgr, Some("/var/lib/vip-agent/repmgr.state"),
        "With --dcs-type repmgr: where the last accepted role event is kept.",
        |c, v| {
            v.is_none()
                .then_some(c.repmgr.as_ref())
                .flatten()
                .and_then(|r| path(Some(&r.state_file)))
        };
    "repmgr-quorum-hold" => repmgr_quorum_hold("VIP_REPMGR_QUORUM_HOLD", "DURATION", Text):
        Top, Repmgr, Some("5s"),
        "With --dcs-type repmgr: how long a primary keeps renewing without a majority of \
         repmgr's nodes reachable, 1s..=300s.",
        |c, v| {
            v.is_none()
                .then_some(c.repmgr.as_ref())
                .flatten()
                .map(|r| duration(r.quorum_hold))
        };
    "repmgr-passfile" => repmgr_passfile("VIP_REPMGR_PASSFILE", "FILE", Text): Top, Repmgr,
        None,
        "With --dcs-type repmgr: passwords for the other nodes' conninfo, in libpq's .pgpass \
         format.",
        |c, v| {
            v.is_none()
                .then_some(c.repmgr.as_ref())
                .flatten()
                .and_then(|r| path(r.passfile.as_ref()))
        };
}

#[cfg(test)]
mod tests {
    use clap::{Args as _, Command, FromArgMatches as _};
    use serde_norway::Value;

    use super::{ConfigArgs, Family, Given, KEYS, Kind, Scope};
    use crate::config::from_yaml_str;

    #[test]
    fn keys_are_unique_and_variables_are_named_after_them() {
        for (i, key) in KEYS.iter().enumerate() {
            assert!(
                KEYS[..i].iter().all(|k| k.name != key.name),
                "{} twice",
                key.name
            );
            assert!(
                !key.help.is_empty() && !key.help.contains("[default"),
                "{}",
                key.name
            );
            if let Some(flag) = key.flag {
                let env = format!("VIP_{}", key.name.to_ascii_uppercase().replace('-', "_"));
                assert_eq!(flag.env, env, "{}", key.name);
                assert!(!flag.value_name.is_empty(), "{}", key.name);
            }
        }
    }

    fn command() -> Command {
        ConfigArgs::augment_args(Command::new("vip-agent"))
    }

    #[test]
    fn the_flags_are_a_valid_clap_command_and_each_sets_its_key() {
        command().debug_assert();
        for key in KEYS {
            let Some(flag) = key.flag else { continue };
            let long = format!("--{}=x", key.name);
            let matches = command()
                .try_get_matches_from(["vip-agent", long.as_str()])
                .unwrap_or_else(|e| panic!("{}: {e}", key.name));
            let args = ConfigArgs::from_arg_matches(&matches)
                .unwrap_or_else(|e| panic!("{}: {e}", key.name));
            let given: Vec<_> = args
                .given()
                .into_iter()
                .filter_map(|(name, given)| match given {
                    Given::One(Some(v)) => Some((name, v.clone())),
                    Given::List(v) if !v.is_empty() => Some((name, v.join(","))),
                    Given::One(None) | Given::List(_) => None,
                })
                .collect();
            assert_eq!(given, [(key.name, "x".to_owned())], "{:?}", flag.kind);
            let mut set = ConfigArgs::default();
            assert!(set.set(key.name, "x"), "{}", key.name);
            assert_eq!(set, args, "{}", key.name);
        }
    }

    /// What `check` prints as a value, for comparison with a default in `--help`.
    fn shown(value: &Value) -> String {
        match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Sequence(items) => items.iter().map(shown).collect::<Vec<_>>().join(","),
            other => format!("{other:?}"),
        }
    }

    /// A default `--help` shows is the value `check` renders when the key is not set (defaults
    /// that describe rather than name a value render nothing in these configurations).
    #[test]
    fn the_help_defaults_are_what_check_renders() {
        let etcd = "ip: 10.0.0.10\nnetmask: 24\ninterface: eth0\ntrigger-key: /s/a/leader\n\
                    trigger-value: a\n";
        let repmgr = "ip: 10.0.0.10\nnetmask: 24\ninterface: eth0\ndcs-type: repmgr\n\
                      repmgr-node-id: 3\npostgres-dsn: \"host=/run user=vip\"\n";
        let mut compared = 0;
        for (yaml, family_wanted) in [(etcd, None), (repmgr, Some(Family::Repmgr))] {
            let config = from_yaml_str("test.yml", yaml).unwrap_or_else(|e| panic!("{e}"));
            for key in KEYS {
                let Some(default) = key.default else { continue };
                if family_wanted.is_some_and(|f| f != key.family)
                    || yaml.contains(&format!("{}:", key.name))
                {
                    continue;
                }
                let vip = (key.scope != Scope::Top).then(|| &config.vips[0]);
                if let Some(value) = (key.render)(&config, vip) {
                    assert_eq!(shown(&value), default, "{}", key.name);
                    compared += 1;
                }
            }
        }
        assert!(compared >= 20, "only {compared} defaults compared");
        assert!(
            KEYS.iter()
                .any(|k| k.flag.is_some_and(|f| f.kind == Kind::List)),
            "dcs-endpoints is a list"
        );
    }
}
