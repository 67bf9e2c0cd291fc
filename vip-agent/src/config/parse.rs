//! From sources to a [`Config`]: the file layer, the flag/variable layer on top, then one pass
//! that interprets every key and collects all errors and notices.

use std::collections::BTreeMap;

use serde_norway::{Mapping, Value};

use super::{
    Config, ConfigArgs, ConfigError, DEFAULT_ETCD_ENDPOINT, DEFAULT_METRICS_ADDRESS,
    DEFAULT_PIN_PATH, EtcdConfig, GarpConfig, GateConfig, GateMode, HookConfig, Location, Notice,
    NoticeLevel, PatroniUrl, Provenance, Secret, VipConfig, XdpModeSetting,
    schema::{self, Given},
    values,
};

mod agent;
mod compat;
mod etcd;
mod gate;
mod hooks;
mod position;
pub(super) mod repmgr;
mod vips;

/// A YAML document and the name it goes by in messages.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) name: &'a str,
    pub(super) yaml: &'a str,
}

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

    /// A warning about `key` at the place it was set; nothing when it is not set.
    fn warn_if_set(&self, diag: &mut Diag, key: &str, message: String) {
        if let Some(entry) = self.map.get(key) {
            let location = entry.location.clone();
            diag.warn(&location, &self.full_key(key), message);
        }
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
    let patroni_interval = compat::prepare_patroni(&mut map, &mut diag);
    let top = Fields {
        prefix: String::new(),
        map,
        file: file.map(|f| f.name.to_owned()),
    };
    let mut hostname = Hostname {
        lookup: hostname,
        cached: None,
    };

    compat::compat_keys(&top, &mut diag);
    let top_gate = gate::gate(&top, &GateConfig::default(), &mut diag);
    let top_hooks = hooks::hooks(&top, &HookConfig::default(), &mut diag);
    let vips = vips::vips(
        &top,
        file.map(|f| f.yaml),
        (&top_gate, &top_hooks),
        &mut diag,
        &mut hostname,
    );
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
        etcd::etcd(&top, &mut diag)
    };
    let repmgr = if repmgr_mode {
        repmgr::parse(&top, &top_gate, &mut diag)
    } else {
        None
    };
    let garp = agent::garp(&top, &mut diag);
    let fence_timeout = agent::fence_timeout(&top, &mut diag);
    let handshake = agent::handshake(&top, repmgr_mode || patroni_interval.is_some(), &mut diag);
    let xdp_mode = agent::xdp_mode(&top, &mut diag);
    let metrics_address = agent::metrics_address(&top, &mut diag);
    let pin_path = agent::pin_path(&top, &mut diag);
    let verbose = top
        .read(&mut diag, "verbose", values::boolean)
        .is_some_and(|(v, _)| v);

    repmgr::check_fence_timeout(repmgr.as_ref(), fence_timeout, &top, &mut diag);
    compat::check_patroni(patroni_interval, fence_timeout, &top, &mut diag);
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
        patroni_interval,
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
        if schema::key(&key).is_some() {
            map.insert(
                key,
                Entry {
                    value,
                    location: location.clone(),
                },
            );
        } else if let Some(&(_, replacement)) = LEGACY_KEYS.iter().find(|(k, _)| *k == key) {
            match replacement {
                "manager-type" => compat::hosting_type_notice(&key, &value, &location, diag),
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
            let candidates: Vec<&str> = schema::accepted(true)
                .filter(|k| *k != "hosting-type")
                .collect();
            let line = || position::key_line(source.yaml, &[position::Step::Key(&key)]);
            unknown_key(diag, &location, key.clone(), &key, &candidates, line);
        }
    }
    Ok(())
}

/// A key nobody knows. Close to a known key it is an error with that key as the suggestion: a typo
/// would otherwise change nothing, silently. Far from every known key it is a warning naming the
/// line: vip-manager ignores keys it does not know, and a newer vip-manager release or Pigsty
/// template may add one, which must not keep the agent (and so the VIP) down.
fn unknown_key(
    diag: &mut Diag,
    location: &Location,
    shown: String,
    key: &str,
    candidates: &[&str],
    line: impl FnOnce() -> Option<usize>,
) {
    match values::closest(key, candidates) {
        Some(suggestion) => diag.errors.push(ConfigError::UnknownKey {
            location: location.clone(),
            key: shown,
            suggestion: Some(suggestion.to_owned()),
        }),
        None => {
            let at = line().map(|l| format!(" at line {l}")).unwrap_or_default();
            diag.warn(
                location,
                &shown,
                format!(
                    "unknown key{at}, ignored (as vip-manager ignores keys it does not know); \
                     remove it if it is not meant for a newer vip-agent"
                ),
            );
        }
    }
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
    for (key, given) in args.given() {
        let value = match given {
            Given::One(value) => match value.as_deref().filter(|v| !v.trim().is_empty()) {
                Some(v) => Value::String(v.to_owned()),
                None => continue,
            },
            Given::List(items) if items.iter().any(|e| !e.trim().is_empty()) => {
                Value::Sequence(items.iter().map(|e| Value::String(e.clone())).collect())
            }
            Given::List(_) => continue,
        };
        let location = Location::args(key);
        map.insert(key.to_owned(), Entry { value, location });
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
