//! From sources to a [`Config`]: the file layer, the flag/variable layer on top, then one pass
//! that interprets every key and collects all errors and notices.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_norway::{Mapping, Value};
use vip_common::maps::MAX_VIPS;

use super::{
    Config, ConfigArgs, ConfigError, DEFAULT_ETCD_ENDPOINT, DEFAULT_METRICS_ADDRESS,
    DEFAULT_PIN_PATH, EtcdConfig, GarpConfig, GateConfig, GateMode, HookConfig, Location, Notice,
    NoticeLevel, PatroniUrl, Provenance, Secret, VipConfig, XdpModeSetting, values,
};

pub(super) mod repmgr;

/// A YAML document and the name it goes by in messages.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) name: &'a str,
    pub(super) yaml: &'a str,
}

/// Every top-level key vip-agent reads (vip-manager's, Pigsty's `hosting-type`, and ours).
const TOP_LEVEL_KEYS: [&str; 44] = [
    "ip",
    "netmask",
    "interface",
    "trigger-key",
    "trigger-value",
    "dcs-type",
    "dcs-endpoints",
    "etcd-user",
    "etcd-password",
    "etcd-ca-file",
    "etcd-cert-file",
    "etcd-key-file",
    "consul-token",
    "interval",
    "retry-after",
    "retry-num",
    "manager-type",
    "verbose",
    "hosting-type",
    "vips",
    "garp-count",
    "garp-interval",
    "fence-timeout",
    "fence-handshake",
    "fence-record-ttl",
    "fence-record-prefix",
    "xdp-mode",
    "metrics-address",
    "pin-path",
    "promotion-gate",
    "promotion-gate-interval",
    "promotion-gate-timeout",
    "patroni-url",
    "patroni-ca-file",
    "patroni-cert-file",
    "patroni-key-file",
    "patroni-user",
    "patroni-password",
    "postgres-dsn",
    "patroni-failsafe",
    "on-promote",
    "on-demote",
    "hook-timeout",
    "hook-retries",
];

/// The hook keys: top-level (every VIP) and inside `vips:` entries (that VIP).
const HOOK_KEYS: [&str; 4] = ["on-promote", "on-demote", "hook-timeout", "hook-retries"];

/// The promotion-gate keys: top-level (every VIP) and inside `vips:` entries (that VIP).
const GATE_KEYS: [&str; 11] = [
    "promotion-gate",
    "promotion-gate-interval",
    "promotion-gate-timeout",
    "patroni-url",
    "patroni-ca-file",
    "patroni-cert-file",
    "patroni-key-file",
    "patroni-user",
    "patroni-password",
    "postgres-dsn",
    "patroni-failsafe",
];

/// The keys of one VIP: top-level in vip-manager style, or inside each `vips:` entry.
const VIP_KEYS: [&str; 5] = ["ip", "netmask", "interface", "trigger-key", "trigger-value"];

/// vip-manager's pre-1.0 keys and their replacements (its `mapDeprecated`, removed in v5.0.0).
const LEGACY_KEYS: [(&str, &str); 19] = [
    ("mask", "netmask"),
    ("iface", "interface"),
    ("key", "trigger-key"),
    ("nodename", "trigger-value"),
    ("host", "trigger-value"),
    ("type", "dcs-type"),
    ("endpoint_type", "dcs-type"),
    ("endpoint", "dcs-endpoints"),
    ("endpoints", "dcs-endpoints"),
    ("etcd_user", "etcd-user"),
    ("etcd_password", "etcd-password"),
    ("etcd_ca_file", "etcd-ca-file"),
    ("etcd_cert_file", "etcd-cert-file"),
    ("etcd_key_file", "etcd-key-file"),
    ("consul_token", "consul-token"),
    ("hosting_type", "manager-type"),
    ("hostingtype", "manager-type"),
    ("retry_num", "retry-num"),
    ("retry_after", "retry-after"),
];

/// One value and where it came from.
#[derive(Clone)]
struct Entry {
    value: Value,
    location: Location,
}

/// Errors, notices and provenance gathered in one pass.
#[derive(Default)]
struct Diag {
    errors: Vec<ConfigError>,
    notices: Vec<Notice>,
    provenance: BTreeMap<String, Location>,
}

impl Diag {
    fn notice(&mut self, level: NoticeLevel, location: &Location, key: &str, message: String) {
        self.notices.push(Notice {
            level,
            location: location.clone(),
            key: key.to_owned(),
            message,
        });
    }

    fn info(&mut self, location: &Location, key: &str, message: String) {
        self.notice(NoticeLevel::Info, location, key, message);
    }

    fn warn(&mut self, location: &Location, key: &str, message: String) {
        self.notice(NoticeLevel::Warning, location, key, message);
    }

    fn invalid(&mut self, location: &Location, key: &str, reason: String) {
        self.errors.push(ConfigError::Invalid {
            location: location.clone(),
            key: key.to_owned(),
            reason,
        });
    }

    fn unsupported(&mut self, location: &Location, key: &str, reason: String) {
        self.errors.push(ConfigError::Unsupported {
            location: location.clone(),
            key: key.to_owned(),
            reason,
        });
    }

    fn conflict(&mut self, location: &Location, key: &str, reason: String) {
        self.errors.push(ConfigError::Conflict {
            location: location.clone(),
            key: key.to_owned(),
            reason,
        });
    }
}

/// A set of keys: the merged top level, or one `vips:` entry (then `prefix` is `vips[i].`).
struct Fields {
    prefix: String,
    map: BTreeMap<String, Entry>,
    /// The config file, for "required but not set" messages.
    file: Option<String>,
}

impl Fields {
    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The entry for `key`, recording where it came from.
    fn get(&self, diag: &mut Diag, key: &str) -> Option<&Entry> {
        let entry = self.map.get(key)?;
        diag.provenance
            .insert(self.full_key(key), entry.location.clone());
        Some(entry)
    }

    /// `key` read with `read`; a failure becomes an `Invalid` error (and `None`).
    fn read<T>(
        &self,
        diag: &mut Diag,
        key: &str,
        read: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<(T, Location)> {
        let entry = self.get(diag, key)?;
        match read(&entry.value) {
            Ok(v) => Some((v, entry.location.clone())),
            Err(reason) => {
                let location = entry.location.clone();
                diag.invalid(&location, &self.full_key(key), reason);
                None
            }
        }
    }

    fn text(&self, diag: &mut Diag, key: &str) -> Option<(String, Location)> {
        self.read(diag, key, values::text)
    }

    fn missing(&self, key: &str) -> ConfigError {
        let full = self.full_key(key);
        if !self.prefix.is_empty() {
            return ConfigError::Missing {
                location: Location::File(self.file.clone().unwrap_or_default()),
                key: full,
                hint: "; every `vips:` entry needs its own".to_owned(),
            };
        }
        let flag = format!("--{key}");
        let env = format!("VIP_{}", key.to_ascii_uppercase().replace('-', "_"));
        match &self.file {
            Some(file) => ConfigError::Missing {
                location: Location::File(file.clone()),
                key: full,
                hint: format!("; set it in the file, or pass {flag} / {env}"),
            },
            None => ConfigError::Missing {
                hint: format!("; pass {flag}, set {env}, or give a config file with --config"),
                location: Location::Args { flag, env },
                key: full,
            },
        }
    }
}

/// Build the configuration from an optional YAML document and optional flags/variables.
pub(super) fn build(
    file: Option<Source<'_>>,
    args: Option<&ConfigArgs>,
    hostname: &dyn Fn() -> Result<String, String>,
) -> Result<Config, ConfigError> {
    let mut diag = Diag::default();
    let mut map = BTreeMap::new();
    if let Some(source) = file {
        read_file(source, &mut map, &mut diag)?;
    }
    if let Some(args) = args {
        add_args(args, &mut map);
    }
    let repmgr_mode = repmgr::prepare(&mut map, &mut diag);
    let top = Fields {
        prefix: String::new(),
        map,
        file: file.map(|f| f.name.to_owned()),
    };
    let mut hostname = Hostname {
        lookup: hostname,
        cached: None,
    };

    compat_keys(&top, &mut diag);
    let top_gate = gate(&top, &GateConfig::default(), &mut diag);
    let top_hooks = hooks(&top, &HookConfig::default(), &mut diag);
    let vips = vips(&top, (&top_gate, &top_hooks), &mut diag, &mut hostname);
    let etcd = if repmgr_mode {
        repmgr::ignored_etcd_keys(&top, &mut diag);
        EtcdConfig {
            endpoints: Vec::new(),
            user: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    } else {
        etcd(&top, &mut diag)
    };
    let repmgr = if repmgr_mode {
        repmgr::parse(&top, &top_gate, &mut diag)
    } else {
        None
    };
    let garp = garp(&top, &mut diag);
    let fence_timeout = fence_timeout(&top, &mut diag);
    let handshake = handshake(&top, repmgr_mode, &mut diag);
    let xdp_mode = xdp_mode(&top, &mut diag);
    let metrics_address = metrics_address(&top, &mut diag);
    let pin_path = pin_path(&top, &mut diag);
    let verbose = top
        .read(&mut diag, "verbose", values::boolean)
        .is_some_and(|(v, _)| v);

    repmgr::check_fence_timeout(repmgr.as_ref(), fence_timeout, &top, &mut diag);
    if repmgr_mode {
        repmgr::drop_label_notices(&mut diag);
    }
    if let Some(error) = ConfigError::from_list(std::mem::take(&mut diag.errors)) {
        return Err(error);
    }
    Ok(Config {
        vips,
        etcd,
        repmgr,
        garp,
        fence_timeout,
        handshake,
        xdp_mode,
        metrics_address,
        pin_path,
        verbose,
        notices: diag.notices,
        provenance: Provenance {
            file: top.file,
            keys: diag.provenance,
        },
    })
}

/// The file layer: known keys into `map`; legacy, Pigsty-only and unknown keys handled here.
fn read_file(
    source: Source<'_>,
    map: &mut BTreeMap<String, Entry>,
    diag: &mut Diag,
) -> Result<(), ConfigError> {
    let syntax = |reason: String| ConfigError::Syntax {
        source_name: source.name.to_owned(),
        reason,
    };
    let mut root: Value =
        serde_norway::from_str(source.yaml).map_err(|e| syntax(format!("not valid YAML: {e}")))?;
    root.apply_merge()
        .map_err(|e| syntax(format!("bad YAML merge key (<<): {e}")))?;
    let mapping = match root {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        other => {
            return Err(syntax(format!(
                "expected a mapping of keys to values at the top level, got {}",
                values::kind(&other)
            )));
        }
    };
    let location = Location::File(source.name.to_owned());
    for (key, value) in mapping {
        let Value::String(key) = key else {
            diag.invalid(
                &location,
                &format!("{key:?}"),
                "keys must be strings".to_owned(),
            );
            continue;
        };
        if is_unset(&value) {
            continue;
        }
        if TOP_LEVEL_KEYS.contains(&key.as_str()) || repmgr::KEYS.contains(&key.as_str()) {
            map.insert(
                key,
                Entry {
                    value,
                    location: location.clone(),
                },
            );
        } else if let Some(&(_, replacement)) = LEGACY_KEYS.iter().find(|(k, _)| *k == key) {
            match replacement {
                "manager-type" => hosting_type_notice(&key, &value, &location, diag),
                "retry-num" | "retry-after" => diag.info(
                    &location,
                    &key,
                    format!(
                        "pre-1.0 spelling of `{replacement}`, ignored (vip-manager 5 ignores it \
                         too, and vip-agent ignores `{replacement}` as well)"
                    ),
                ),
                _ => diag.errors.push(ConfigError::LegacyKey {
                    location: location.clone(),
                    key,
                    replacement,
                }),
            }
        } else {
            let candidates: Vec<&str> = TOP_LEVEL_KEYS
                .iter()
                .chain(repmgr::KEYS.iter())
                .copied()
                .filter(|k| *k != "hosting-type")
                .collect();
            diag.errors.push(ConfigError::UnknownKey {
                location: location.clone(),
                suggestion: values::closest(&key, &candidates).map(str::to_owned),
                key,
            });
        }
    }
    Ok(())
}

/// Null and blank values count as unset (as an empty flag or variable does).
fn is_unset(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

/// The flag/variable layer, over the file layer.
fn add_args(args: &ConfigArgs, map: &mut BTreeMap<String, Entry>) {
    for arg in args.string_values() {
        if let Some(value) = arg.value.as_deref().filter(|v| !v.trim().is_empty()) {
            map.insert(
                arg.key.to_owned(),
                Entry {
                    value: Value::String(value.to_owned()),
                    location: Location::Args {
                        flag: arg.flag.to_owned(),
                        env: arg.env.to_owned(),
                    },
                },
            );
        }
    }
    if args.dcs_endpoints.iter().any(|e| !e.trim().is_empty()) {
        map.insert(
            "dcs-endpoints".to_owned(),
            Entry {
                value: Value::Sequence(
                    args.dcs_endpoints
                        .iter()
                        .map(|e| Value::String(e.clone()))
                        .collect(),
                ),
                location: Location::args("dcs-endpoints"),
            },
        );
    }
}

/// `hosting-type` (and the pre-1.0 `hosting_type`/`hostingtype`): vip-manager 5 never reads it.
fn hosting_type_notice(key: &str, value: &Value, location: &Location, diag: &mut Diag) {
    let shown = values::text(value).unwrap_or_else(|_| values::kind(value).to_owned());
    let tail = if shown == "basic" {
        String::new()
    } else {
        format!(
            "; note that vip-manager ran `manager-type: basic` whatever `{key}: {shown}` said, \
             and so does vip-agent"
        )
    };
    diag.warn(
        location,
        key,
        format!(
            "ignored: vip-manager never read `{key}` (its key is `manager-type`; Pigsty writes \
             `hosting-type: basic` regardless){tail}"
        ),
    );
}

/// vip-manager keys that select something we do not do, or that we ignore.
fn compat_keys(top: &Fields, diag: &mut Diag) {
    if let Some((dcs, location)) = top.text(diag, "dcs-type") {
        match dcs.trim() {
            "etcd" | "etcd3" | "repmgr" => {}
            "consul" => diag.unsupported(
                &location,
                "dcs-type",
                "`consul` is not supported: vip-agent follows Patroni's leader key in etcd v3 only \
                 (dcs-type `etcd` or `etcd3`)"
                    .to_owned(),
            ),
            "patroni" => diag.unsupported(
                &location,
                "dcs-type",
                "`patroni` (polling Patroni's REST API) is not supported: vip-agent watches the \
                 leader key in etcd v3 (dcs-type `etcd` or `etcd3`) and uses its lease for fencing"
                    .to_owned(),
            ),
            other => diag.invalid(
                &location,
                "dcs-type",
                format!(
                    "unknown dcs-type {other:?}{}; vip-agent supports `etcd` and `etcd3` (both the \
                     etcd v3 API) and `repmgr` (repmgr event notifications)",
                    suggest(other, &["etcd", "etcd3", "consul", "patroni", "repmgr"])
                ),
            ),
        }
    }
    if let Some((manager, location)) = top.text(diag, "manager-type") {
        match manager.trim() {
            "basic" => {}
            "hetzner" => diag.unsupported(
                &location,
                "manager-type",
                "`hetzner` (Hetzner Robot failover API) is not supported: vip-agent only manages \
                 an L2 VIP on a local interface (manager-type `basic`)"
                    .to_owned(),
            ),
            other => diag.invalid(
                &location,
                "manager-type",
                format!(
                    "unknown manager-type {other:?}{} (vip-manager silently fell back to `basic`; \
                     vip-agent refuses): only `basic` is supported",
                    suggest(other, &["basic", "hetzner"])
                ),
            ),
        }
    }
    if let Some(entry) = top.get(diag, "consul-token") {
        let location = entry.location.clone();
        diag.unsupported(
            &location,
            "consul-token",
            "Consul is not supported (vip-agent follows etcd v3 only); remove `consul-token`"
                .to_owned(),
        );
    }
    for (key, why) in [
        (
            "interval",
            "vip-agent watches the leader key instead of polling, so there is no poll interval",
        ),
        (
            "retry-after",
            "vip-manager 4+ does not use it either; vip-agent retries etcd on its own schedule",
        ),
        (
            "retry-num",
            "vip-manager 4+ does not use it either; vip-agent retries etcd on its own schedule",
        ),
    ] {
        if let Some((n, location)) = top.read(diag, key, values::unsigned) {
            diag.info(
                &location,
                key,
                format!("{n} accepted for vip-manager compatibility and ignored: {why}"),
            );
        }
    }
    if let Some(entry) = top.get(diag, "hosting-type") {
        let (value, location) = (entry.value.clone(), entry.location.clone());
        hosting_type_notice("hosting-type", &value, &location, diag);
    }
}

fn suggest(value: &str, candidates: &[&str]) -> String {
    values::closest(value, candidates)
        .filter(|c| *c != value)
        .map(|c| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// The host name, looked up once and only if some VIP needs it.
struct Hostname<'a> {
    lookup: &'a dyn Fn() -> Result<String, String>,
    cached: Option<Result<String, String>>,
}

impl Hostname<'_> {
    fn get(&mut self) -> Result<String, String> {
        self.cached.get_or_insert_with(|| (self.lookup)()).clone()
    }
}

/// The VIPs: top-level vip-manager keys, or the `vips:` list.
fn vips(
    top: &Fields,
    (top_gate, top_hooks): (&GateConfig, &HookConfig),
    diag: &mut Diag,
    hostname: &mut Hostname<'_>,
) -> Vec<VipConfig> {
    let Some(list) = top.get(diag, "vips").cloned() else {
        return vip(top, (top_gate.clone(), top_hooks.clone()), diag, hostname)
            .into_iter()
            .collect();
    };
    for key in VIP_KEYS {
        if let Some(entry) = top.get(diag, key) {
            let location = entry.location.clone();
            diag.conflict(
                &location,
                key,
                format!(
                    "`vips:` is set ({}), so per-VIP keys belong into its entries; remove the \
                     top-level `{key}`",
                    list.location
                ),
            );
        }
    }
    let file = top.file.clone();
    let items = match &list.value {
        Value::Sequence(items) if !items.is_empty() => items,
        Value::Sequence(_) => {
            diag.invalid(
                &list.location,
                "vips",
                "the list is empty; give at least one VIP".to_owned(),
            );
            return Vec::new();
        }
        other => {
            diag.invalid(
                &list.location,
                "vips",
                format!(
                    "expected a list of VIPs (mappings with ip, netmask, interface, trigger-key, \
                     trigger-value), got {}",
                    values::kind(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("vips[{i}].");
        let Value::Mapping(mapping) = item else {
            diag.invalid(
                &list.location,
                &format!("vips[{i}]"),
                format!(
                    "expected a mapping with ip, netmask, interface, trigger-key, trigger-value; \
                     got {}",
                    values::kind(item)
                ),
            );
            continue;
        };
        let mut map = BTreeMap::new();
        for (key, value) in mapping {
            let Value::String(key) = key else {
                diag.invalid(
                    &list.location,
                    &format!("{prefix}{key:?}"),
                    "keys must be strings".to_owned(),
                );
                continue;
            };
            if VIP_KEYS.contains(&key.as_str())
                || GATE_KEYS.contains(&key.as_str())
                || HOOK_KEYS.contains(&key.as_str())
            {
                if !is_unset(value) {
                    map.insert(
                        key.clone(),
                        Entry {
                            value: value.clone(),
                            location: list.location.clone(),
                        },
                    );
                }
            } else if TOP_LEVEL_KEYS.contains(&key.as_str()) {
                diag.invalid(
                    &list.location,
                    &format!("{prefix}{key}"),
                    format!(
                        "`{key}` is a top-level key, not a per-VIP one; move it out of `vips:`"
                    ),
                );
            } else {
                diag.errors.push(ConfigError::UnknownKey {
                    location: list.location.clone(),
                    key: format!("{prefix}{key}"),
                    suggestion: values::closest(
                        key,
                        &[&VIP_KEYS[..], &GATE_KEYS[..], &HOOK_KEYS[..]].concat(),
                    )
                    .map(str::to_owned),
                });
            }
        }
        let fields = Fields {
            prefix,
            map,
            file: file.clone(),
        };
        let gate = gate(&fields, top_gate, diag);
        let hooks = hooks(&fields, top_hooks, diag);
        out.extend(vip(&fields, (gate, hooks), diag, hostname));
    }
    check_vip_set(&out, &list.location, diag);
    out
}

/// No VIP twice; no more per interface than the data plane's map holds.
fn check_vip_set(vips: &[VipConfig], location: &Location, diag: &mut Diag) {
    let mut seen: HashMap<std::net::IpAddr, usize> = HashMap::new();
    let mut per_interface: BTreeMap<&str, u32> = BTreeMap::new();
    for (i, v) in vips.iter().enumerate() {
        if let Some(first) = seen.insert(v.ip, i) {
            diag.conflict(
                location,
                &format!("vips[{i}].ip"),
                format!("{} is listed twice (also in vips[{first}])", v.ip),
            );
        }
        *per_interface.entry(&v.interface).or_default() += 1;
    }
    for (interface, n) in per_interface {
        if n > MAX_VIPS {
            diag.invalid(
                location,
                "vips",
                format!("{n} VIPs on {interface}; at most {MAX_VIPS} per interface"),
            );
        }
    }
}

/// One VIP from `fields`; `None` (with errors recorded) if any part is unusable.
fn vip(
    fields: &Fields,
    (gate, hooks): (GateConfig, HookConfig),
    diag: &mut Diag,
    hostname: &mut Hostname<'_>,
) -> Option<VipConfig> {
    let ip_key = fields.full_key("ip");
    let ip = match fields.text(diag, "ip") {
        None => {
            if !fields.map.contains_key("ip") {
                diag.errors.push(fields.missing("ip"));
            }
            None
        }
        Some((text, location)) => match values::ip(&text) {
            values::IpReading::Ip(ip) => Some((ip, location)),
            values::IpReading::Bad(reason) => {
                diag.invalid(&location, &ip_key, reason);
                None
            }
        },
    };
    let max_prefix = match &ip {
        Some((std::net::IpAddr::V6(_), _)) => 128,
        _ => 32,
    };
    let prefix_len = fields.read(diag, "netmask", |v| values::prefix_len(v, max_prefix));
    if prefix_len.is_none() && !fields.map.contains_key("netmask") {
        diag.errors.push(fields.missing("netmask"));
    }
    if let (Some((ip, location)), Some((prefix, _))) = (&ip, &prefix_len)
        && let Some(reason) = values::vip_address_problem(*ip, *prefix)
    {
        diag.invalid(location, &ip_key, reason);
    }

    let interface = match fields.text(diag, "interface") {
        None => {
            if !fields.map.contains_key("interface") {
                diag.errors.push(fields.missing("interface"));
            }
            None
        }
        Some((name, location)) => match values::interface_problem(&name) {
            Some(reason) => {
                diag.invalid(&location, &fields.full_key("interface"), reason);
                None
            }
            None => Some(name),
        },
    };

    let trigger_key = match fields.text(diag, "trigger-key") {
        None => {
            if !fields.map.contains_key("trigger-key") {
                diag.errors.push(fields.missing("trigger-key"));
            }
            None
        }
        Some((key, location)) => {
            if !(key.starts_with('/') && key.ends_with("/leader")) {
                diag.warn(
                    &location,
                    &fields.full_key("trigger-key"),
                    format!(
                        "{key:?} does not look like a Patroni leader key \
                         (<namespace>/<scope>/leader, e.g. /service/batman/leader or Pigsty's \
                         /pg/<cluster>/leader)"
                    ),
                );
            }
            Some(key)
        }
    };

    let trigger_value = match fields.text(diag, "trigger-value") {
        Some((value, _)) => Some(value),
        None if fields.map.contains_key("trigger-value") => None,
        None => match hostname.get() {
            Ok(name) => {
                diag.info(
                    &Location::Default,
                    &fields.full_key("trigger-value"),
                    format!(
                        "not set; using the host name {name:?} (vip-manager's default). It must \
                         equal this node's Patroni member `name`"
                    ),
                );
                Some(name)
            }
            Err(why) => {
                let mut error = fields.missing("trigger-value");
                if let ConfigError::Missing { hint, .. } = &mut error {
                    hint.push_str(&format!(" (it defaults to the host name, but {why})"));
                }
                diag.errors.push(error);
                None
            }
        },
    };

    Some(VipConfig {
        ip: ip?.0,
        prefix_len: prefix_len?.0,
        interface: interface?,
        trigger_key: trigger_key?,
        trigger_value: trigger_value?,
        gate,
        hooks,
    })
}

const HOOK_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const HOOK_TIMEOUT_MAX: Duration = Duration::from_secs(600);
const HOOK_RETRIES_MAX: u64 = 10;

/// `on-promote`, `on-demote`, `hook-timeout`, `hook-retries` over `base`.
fn hooks(fields: &Fields, base: &HookConfig, diag: &mut Diag) -> HookConfig {
    let mut hooks = base.clone();
    for (key, slot) in [
        ("on-promote", &mut hooks.on_promote),
        ("on-demote", &mut hooks.on_demote),
    ] {
        if let Some((command, location)) = fields.text(diag, key) {
            let command = command.trim();
            if command.is_empty() {
                diag.invalid(
                    &location,
                    &fields.full_key(key),
                    "the command is empty; remove the key to run nothing".to_owned(),
                );
            } else if command.contains('\0') {
                diag.invalid(
                    &location,
                    &fields.full_key(key),
                    "the command contains a NUL byte".to_owned(),
                );
            } else {
                *slot = Some(command.to_owned());
            }
        }
    }
    if let Some(((d, _), location)) = fields.read(diag, "hook-timeout", values::duration) {
        if (HOOK_TIMEOUT_MIN..=HOOK_TIMEOUT_MAX).contains(&d) {
            hooks.timeout = d;
        } else {
            diag.invalid(
                &location,
                &fields.full_key("hook-timeout"),
                values::duration_out_of_range(d, HOOK_TIMEOUT_MIN, HOOK_TIMEOUT_MAX),
            );
        }
    }
    if let Some((n, location)) = fields.read(diag, "hook-retries", values::unsigned) {
        match u32::try_from(n) {
            Ok(n) if u64::from(n) <= HOOK_RETRIES_MAX => hooks.retries = n,
            _ => diag.invalid(
                &location,
                &fields.full_key("hook-retries"),
                format!("{n} is out of range 0..={HOOK_RETRIES_MAX}"),
            ),
        }
    }
    hooks
}

/// `dcs-endpoints` and the `etcd-*` keys.
fn etcd(top: &Fields, diag: &mut Diag) -> EtcdConfig {
    let endpoints = endpoints(top, diag);

    let user = top.text(diag, "etcd-user");
    let password = top.text(diag, "etcd-password");
    match (&user, &password) {
        (None, Some((_, location))) => diag.conflict(
            location,
            "etcd-password",
            "set without `etcd-user`; etcd password authentication needs both".to_owned(),
        ),
        (Some((_, location)), None) => diag.conflict(
            location,
            "etcd-user",
            "set without `etcd-password`; etcd password authentication needs both (with \
             client-certificate authentication etcd takes the user from the certificate's CN: \
             drop `etcd-user`)"
                .to_owned(),
        ),
        _ => {}
    }

    let mut path = |key: &str| {
        let (text, location) = top.text(diag, key)?;
        let path = PathBuf::from(text.trim());
        if path.is_relative() {
            diag.warn(
                &location,
                key,
                format!(
                    "{} is relative: it is resolved against the agent's working directory, not \
                     the config file's",
                    path.display()
                ),
            );
        }
        Some((path, location))
    };
    let ca_file = path("etcd-ca-file");
    let cert_file = path("etcd-cert-file");
    let key_file = path("etcd-key-file");
    match (&cert_file, &key_file) {
        (Some((_, location)), None) => diag.conflict(
            location,
            "etcd-cert-file",
            "a client certificate needs its private key: set `etcd-key-file` too".to_owned(),
        ),
        (None, Some((_, location))) => diag.conflict(
            location,
            "etcd-key-file",
            "a private key needs its client certificate: set `etcd-cert-file` too".to_owned(),
        ),
        _ => {}
    }
    let tls_files = ca_file.as_ref().or(cert_file.as_ref());
    if let Some((_, location)) = tls_files
        && !endpoints.is_empty()
        && endpoints.iter().all(|e| e.starts_with("http://"))
    {
        let key = if ca_file.is_some() {
            "etcd-ca-file"
        } else {
            "etcd-cert-file"
        };
        diag.warn(
            location,
            key,
            "TLS files are set but every endpoint is http://, so they are not used; write \
             https:// endpoints"
                .to_owned(),
        );
    }

    if let (Some(_), Some((_, location))) = (&user, &password) {
        let tls = ca_file.is_some() || cert_file.is_some();
        let plain: Vec<&String> = endpoints
            .iter()
            .filter(|e| e.starts_with("http://") || (!e.contains("://") && !tls))
            .filter(|e| !values::is_loopback_url(e))
            .collect();
        if !plain.is_empty() {
            diag.warn(
                location,
                "etcd-password",
                format!(
                    "the etcd password goes over plain http to {}: anyone on the path can read \
                     it; use https:// endpoints",
                    plain
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    let (user, password) = match (user, password) {
        (Some((u, _)), Some((p, _))) => (Some(u), Some(Secret::new(p))),
        _ => (None, None),
    };
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some((c, _)), Some((k, _))) => (Some(c), Some(k)),
        _ => (None, None),
    };
    EtcdConfig {
        endpoints,
        user,
        password,
        ca_file: ca_file.map(|(p, _)| p),
        cert_file,
        key_file,
    }
}

fn endpoints(top: &Fields, diag: &mut Diag) -> Vec<String> {
    let Some(entry) = top.get(diag, "dcs-endpoints") else {
        diag.info(
            &Location::Default,
            "dcs-endpoints",
            format!("not set; using {DEFAULT_ETCD_ENDPOINT} (vip-manager's default)"),
        );
        return vec![DEFAULT_ETCD_ENDPOINT.to_owned()];
    };
    let location = entry.location.clone();
    let raw: Vec<String> = match &entry.value {
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        Value::Sequence(items) if items.is_empty() => {
            diag.invalid(
                &location,
                "dcs-endpoints",
                "the list is empty; give at least one etcd endpoint".to_owned(),
            );
            return Vec::new();
        }
        Value::Sequence(items) => {
            let mut raw = Vec::new();
            for item in items {
                match values::text(item) {
                    Ok(s) => raw.extend(s.split(',').map(str::to_owned)),
                    Err(reason) => {
                        diag.invalid(&location, "dcs-endpoints", format!("an entry: {reason}"));
                    }
                }
            }
            raw
        }
        other => {
            diag.invalid(
                &location,
                "dcs-endpoints",
                format!(
                    "expected a list of URLs or a comma-separated string, got {}",
                    values::kind(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out: Vec<String> = Vec::new();
    let (mut tls, mut plain) = (false, false);
    for r in &raw {
        match values::endpoint(r) {
            Ok(e) => {
                if !e.has_port {
                    diag.warn(
                        &location,
                        "dcs-endpoints",
                        format!(
                            "{} has no port, so the client uses {} rather than etcd's 2379",
                            e.url,
                            if e.tls { 443 } else { 80 }
                        ),
                    );
                }
                tls |= e.tls;
                plain |= !e.tls;
                if out.contains(&e.url) {
                    diag.warn(
                        &location,
                        "dcs-endpoints",
                        format!("{} is listed twice; using it once", e.url),
                    );
                } else {
                    out.push(e.url);
                }
            }
            Err(reason) => diag.invalid(&location, "dcs-endpoints", reason),
        }
    }
    if tls && plain {
        diag.warn(
            &location,
            "dcs-endpoints",
            "mixes http:// and https:// endpoints; members of one etcd cluster normally share one \
             scheme"
                .to_owned(),
        );
    }
    out
}

/// Upper and lower bounds of the settable numbers, with the reasons in the messages.
const GARP_COUNT_MAX: u64 = 100;
const GARP_INTERVAL_MIN: Duration = Duration::from_millis(10);
const GARP_INTERVAL_MAX: Duration = Duration::from_secs(60);

fn garp(top: &Fields, diag: &mut Diag) -> GarpConfig {
    let mut garp = GarpConfig::default();
    if let Some((n, location)) = top.read(diag, "garp-count", values::unsigned) {
        match u32::try_from(n) {
            Ok(n @ 1..) if u64::from(n) <= GARP_COUNT_MAX => garp.count = n,
            _ => diag.invalid(
                &location,
                "garp-count",
                format!(
                    "{n} is out of range 1..={GARP_COUNT_MAX}: at least one gratuitous ARP is \
                     needed (without it clients keep the old MAC for up to ~50 s), and more than \
                     {GARP_COUNT_MAX} is a broadcast storm"
                ),
            ),
        }
    }
    if let Some(((d, _), location)) = top.read(diag, "garp-interval", values::duration) {
        if (GARP_INTERVAL_MIN..=GARP_INTERVAL_MAX).contains(&d) {
            garp.interval = d;
        } else {
            diag.invalid(
                &location,
                "garp-interval",
                values::duration_out_of_range(d, GARP_INTERVAL_MIN, GARP_INTERVAL_MAX),
            );
        }
    }
    garp
}

/// Bounds of `fence-record-ttl`: etcd refuses leases under its minimum TTL (1.5 × the election
/// timeout, 2 s rounded up at etcd's defaults); a record lease longer than a minute would let a
/// dead agent hold up failovers longer than any Patroni `ttl` in use.
const RECORD_TTL_MIN: Duration = Duration::from_secs(2);
const RECORD_TTL_MAX: Duration = Duration::from_secs(60);

fn handshake(
    top: &Fields,
    repmgr_mode: bool,
    diag: &mut Diag,
) -> Option<crate::leader::HandshakeSettings> {
    let on = top
        .read(diag, "fence-handshake", values::boolean)
        .is_none_or(|(on, _)| on);
    let mut settings = crate::leader::HandshakeSettings::default();
    if let Some(((d, _), location)) = top.read(diag, "fence-record-ttl", values::duration) {
        if d < RECORD_TTL_MIN || d > RECORD_TTL_MAX {
            diag.invalid(
                &location,
                "fence-record-ttl",
                values::duration_out_of_range(d, RECORD_TTL_MIN, RECORD_TTL_MAX),
            );
        } else if d.subsec_nanos() != 0 {
            diag.invalid(
                &location,
                "fence-record-ttl",
                format!(
                    "{d:?}: etcd leases last whole seconds; write \"{}s\"",
                    d.as_secs() + 1
                ),
            );
        } else {
            settings.ttl = d;
        }
    }
    if let Some((prefix, location)) = top.text(diag, "fence-record-prefix") {
        let prefix = prefix.trim().trim_end_matches('/').to_owned();
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains("//") {
            diag.invalid(
                &location,
                "fence-record-prefix",
                format!(
                    "{prefix:?}: an etcd key prefix such as /vip-agent (absolute, not /, no empty \
                     segment)"
                ),
            );
        } else {
            settings.prefix = prefix;
        }
    }
    (on && !repmgr_mode).then_some(settings)
}

fn fence_timeout(top: &Fields, diag: &mut Diag) -> Option<Duration> {
    let ((d, bare), location) = top.read(diag, "fence-timeout", values::duration)?;
    if d.is_zero() {
        diag.invalid(
            &location,
            "fence-timeout",
            "must be longer than 0; leave it unset to fence until the leader key's lease expires"
                .to_owned(),
        );
        return None;
    }
    if bare && d < Duration::from_millis(100) {
        diag.warn(
            &location,
            "fence-timeout",
            format!(
                "{} ms: a bare number is milliseconds (as everywhere in vip-manager's config); \
                 write \"{}s\" if seconds were meant",
                d.as_millis(),
                d.as_millis()
            ),
        );
    }
    Some(d)
}

fn xdp_mode(top: &Fields, diag: &mut Diag) -> XdpModeSetting {
    let Some((text, location)) = top.text(diag, "xdp-mode") else {
        return XdpModeSetting::default();
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => XdpModeSetting::Auto,
        "native" | "driver" | "drv" => XdpModeSetting::Native,
        "generic" | "skb" => XdpModeSetting::Generic,
        "tc" | "tcx" => XdpModeSetting::Tc,
        other => {
            diag.invalid(
                &location,
                "xdp-mode",
                format!(
                    "unknown mode {other:?}{}; expected auto, native, generic or tc",
                    suggest(other, &["auto", "native", "generic", "tc"])
                ),
            );
            XdpModeSetting::default()
        }
    }
}

fn metrics_address(top: &Fields, diag: &mut Diag) -> SocketAddr {
    let Some((text, location)) = top.text(diag, "metrics-address") else {
        return DEFAULT_METRICS_ADDRESS;
    };
    let t = text.trim();
    match t.parse::<SocketAddr>() {
        Ok(addr) => {
            if !addr.ip().is_loopback() {
                diag.info(
                    &location,
                    "metrics-address",
                    format!(
                        "metrics are served on {addr}, beyond loopback, without authentication"
                    ),
                );
            }
            addr
        }
        Err(_) => {
            let hint = if t.parse::<IpAddr>().is_ok() {
                format!(" (add a port, e.g. {t}:9477 or [{t}]:9477 for IPv6)")
            } else if t.starts_with(':') {
                format!(" (write 0.0.0.0{t} for every IPv4 address)")
            } else {
                " (IP:PORT, e.g. 127.0.0.1:9477; host names are not resolved)".to_owned()
            };
            diag.invalid(
                &location,
                "metrics-address",
                format!("{t:?} is not an IP:PORT socket address{hint}"),
            );
            DEFAULT_METRICS_ADDRESS
        }
    }
}

fn pin_path(top: &Fields, diag: &mut Diag) -> PathBuf {
    let Some((text, location)) = top.text(diag, "pin-path") else {
        return PathBuf::from(DEFAULT_PIN_PATH);
    };
    let path = Path::new(text.trim());
    if !path.is_absolute() {
        diag.invalid(
            &location,
            "pin-path",
            format!(
                "{} is not an absolute path (a directory on bpffs, e.g. {DEFAULT_PIN_PATH})",
                path.display()
            ),
        );
    }
    path.to_path_buf()
}

/// Bounds of the gate's durations, with the reasons in the messages.
const GATE_INTERVAL_MIN: Duration = Duration::from_millis(1);
const GATE_INTERVAL_MAX: Duration = Duration::from_secs(1);
const GATE_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const GATE_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// The promotion-gate keys of `fields` over `base` (the defaults for the top level, the top-level
/// gate for a `vips:` entry).
fn gate(fields: &Fields, base: &GateConfig, diag: &mut Diag) -> GateConfig {
    let mut gate = base.clone();
    if let Some((text, location)) = fields.text(diag, "promotion-gate") {
        match text.trim().to_ascii_lowercase().as_str() {
            "patroni" => gate.mode = GateMode::Patroni,
            "postgres" | "postgresql" => gate.mode = GateMode::Postgres,
            "off" | "false" | "none" => gate.mode = GateMode::Off,
            other => diag.invalid(
                &location,
                &fields.full_key("promotion-gate"),
                format!(
                    "unknown gate {other:?}{}; expected patroni (wait until Patroni's REST API \
                     reports a running primary), postgres (wait until pg_is_in_recovery() is \
                     false) or off (answer as soon as the key names this node)",
                    suggest(other, &["patroni", "postgres", "off"])
                ),
            ),
        }
    }
    if let Some((text, location)) = fields.text(diag, "patroni-url") {
        match PatroniUrl::parse(&text) {
            Ok(url) => gate.patroni_url = Some(url),
            Err(reason) => diag.invalid(&location, &fields.full_key("patroni-url"), reason),
        }
    }
    let path = |key: &str, diag: &mut Diag| {
        let (text, location) = fields.text(diag, key)?;
        let path = PathBuf::from(text.trim());
        if path.is_relative() {
            diag.warn(
                &location,
                &fields.full_key(key),
                format!(
                    "{} is relative: it is resolved against the agent's working directory, not \
                     the config file's",
                    path.display()
                ),
            );
        }
        Some((path, location))
    };
    let ca = path("patroni-ca-file", diag);
    let cert = path("patroni-cert-file", diag);
    let key = path("patroni-key-file", diag);
    if let Some((p, _)) = &ca {
        gate.patroni_ca_file = Some(p.clone());
    }
    match (cert, key) {
        (Some((c, _)), Some((k, _))) => {
            gate.patroni_cert_file = Some(c);
            gate.patroni_key_file = Some(k);
        }
        (Some((_, location)), None) if base.patroni_key_file.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-cert-file"),
            "a client certificate needs its private key: set `patroni-key-file` too".to_owned(),
        ),
        (None, Some((_, location))) if base.patroni_cert_file.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-key-file"),
            "a private key needs its client certificate: set `patroni-cert-file` too".to_owned(),
        ),
        (Some((c, _)), None) => gate.patroni_cert_file = Some(c),
        (None, Some((k, _))) => gate.patroni_key_file = Some(k),
        (None, None) => {}
    }
    let user = fields.text(diag, "patroni-user");
    let password = fields.text(diag, "patroni-password");
    if let (Some(url), Some((_, location))) = (&gate.patroni_url, &password)
        && !url.tls
        && !values::is_loopback_url(&url.authority())
    {
        diag.warn(
            location,
            &fields.full_key("patroni-password"),
            format!(
                "Patroni's basic authentication goes over plain http to {url}: anyone on the \
                 path can read it; use https:// (patroni-ca-file)"
            ),
        );
    }
    match (user, password) {
        (Some((u, _)), Some((p, _))) => {
            gate.patroni_user = Some(u);
            gate.patroni_password = Some(Secret::new(p));
        }
        (None, Some((_, location))) if base.patroni_user.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-password"),
            "set without `patroni-user`; Patroni's basic authentication needs both".to_owned(),
        ),
        (Some((_, location)), None) if base.patroni_password.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-user"),
            "set without `patroni-password`; Patroni's basic authentication needs both".to_owned(),
        ),
        (Some((u, _)), None) => gate.patroni_user = Some(u),
        (None, Some((p, _))) => gate.patroni_password = Some(Secret::new(p)),
        (None, None) => {}
    }
    let mut dsn_given = false;
    if let Some((dsn, location)) = fields.text(diag, "postgres-dsn") {
        dsn_given = true;
        match dsn_problem(&dsn) {
            Some(reason) => diag.invalid(&location, &fields.full_key("postgres-dsn"), reason),
            None => gate.postgres_dsn = Some(Secret::new(dsn.trim())),
        }
    }
    if let Some(((d, _), location)) = fields.read(diag, "promotion-gate-interval", values::duration)
    {
        if (GATE_INTERVAL_MIN..=GATE_INTERVAL_MAX).contains(&d) {
            gate.interval = d;
        } else {
            diag.invalid(
                &location,
                &fields.full_key("promotion-gate-interval"),
                values::duration_out_of_range(d, GATE_INTERVAL_MIN, GATE_INTERVAL_MAX),
            );
        }
    }
    if let Some(((d, _), location)) = fields.read(diag, "promotion-gate-timeout", values::duration)
    {
        if (GATE_TIMEOUT_MIN..=GATE_TIMEOUT_MAX).contains(&d) {
            gate.timeout = d;
        } else {
            diag.invalid(
                &location,
                &fields.full_key("promotion-gate-timeout"),
                format!(
                    "{} (to answer without waiting, set `promotion-gate: off`)",
                    values::duration_out_of_range(d, GATE_TIMEOUT_MIN, GATE_TIMEOUT_MAX)
                ),
            );
        }
    }
    if let Some((on, _)) = fields.read(diag, "patroni-failsafe", values::boolean) {
        gate.failsafe = on;
    }
    if gate.mode == GateMode::Postgres && !dsn_given {
        let location = fields
            .map
            .get("promotion-gate")
            .map_or(Location::Default, |e| e.location.clone());
        diag.errors.push(ConfigError::Missing {
            location,
            key: fields.full_key("postgres-dsn"),
            hint: "; `promotion-gate: postgres` needs it (e.g. \"host=/var/run/postgresql \
                   user=vip_agent dbname=postgres\")"
                .to_owned(),
        });
    }
    let tls_files = gate.patroni_ca_file.is_some() || gate.patroni_cert_file.is_some();
    if let Some(url) = gate.patroni_url.as_ref().filter(|u| !u.tls)
        && gate.mode == GateMode::Patroni
        && tls_files
    {
        let key = if gate.patroni_ca_file.is_some() {
            "patroni-ca-file"
        } else {
            "patroni-cert-file"
        };
        if let Some(entry) = fields.map.get(key) {
            let location = entry.location.clone();
            diag.warn(
                &location,
                &fields.full_key(key),
                format!(
                    "TLS files are set but patroni-url is {url}, so they are not used; write https://",
                ),
            );
        }
    }
    gate
}

/// Why a `postgres-dsn` cannot be used, if it cannot.
fn dsn_problem(dsn: &str) -> Option<String> {
    let shown = values::redact_dsn(dsn);
    match dsn.trim().parse::<tokio_postgres::Config>() {
        // Not echoed: an unparsable string may carry a password nobody can redact.
        Err(e) => {
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            Some(format!(
                "the value is not a connection string: {why} (not shown, it may hold a password)"
            ))
        }
        Ok(c) if c.get_hosts().is_empty() && c.get_hostaddrs().is_empty() => Some(format!(
            "{shown:?} names no host; give host=/var/run/postgresql (the unix socket \
             directory) or host=127.0.0.1"
        )),
        Ok(c) if c.get_ssl_mode() == tokio_postgres::config::SslMode::Require => Some(format!(
            "{shown:?} requires TLS, which the gate does not speak; connect over the unix \
             socket or loopback (sslmode=disable or prefer)"
        )),
        Ok(_) => None,
    }
}
