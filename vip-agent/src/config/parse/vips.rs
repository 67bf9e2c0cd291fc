//! The VIPs: vip-manager's top-level `ip`, `netmask`, `interface`, `trigger-key`, `trigger-value`,
//! or the `vips:` list of them.

use std::collections::{BTreeMap, HashMap};

use serde_norway::Value;
use vip_common::maps::MAX_VIPS;

use super::{
    ConfigError, Diag, Entry, Fields, GateConfig, HookConfig, Hostname, Location, VipConfig,
    is_unset, position, schema, schema::Scope, unknown_key, values,
};

/// The VIPs: top-level vip-manager keys, or the `vips:` list.
pub(super) fn vips(
    top: &Fields,
    yaml: Option<&str>,
    (top_gate, top_hooks): (&GateConfig, &HookConfig),
    diag: &mut Diag,
    hostname: &mut Hostname<'_>,
) -> Vec<VipConfig> {
    let Some(list) = top.get(diag, "vips").cloned() else {
        return vip(top, (top_gate.clone(), top_hooks.clone()), diag, hostname)
            .into_iter()
            .collect();
    };
    for key in schema::KEYS.iter().filter(|k| k.scope == Scope::Vip) {
        let key = key.name;
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
            let scope = schema::key(key).map(|k| k.scope);
            if matches!(scope, Some(Scope::Vip | Scope::Both)) {
                if !is_unset(value) {
                    map.insert(
                        key.clone(),
                        Entry {
                            value: value.clone(),
                            location: list.location.clone(),
                        },
                    );
                }
            } else if scope == Some(Scope::Top) {
                diag.invalid(
                    &list.location,
                    &format!("{prefix}{key}"),
                    format!(
                        "`{key}` is a top-level key, not a per-VIP one; move it out of `vips:`"
                    ),
                );
            } else {
                let line = || {
                    use position::Step;
                    let path = [Step::Key("vips"), Step::Index(i), Step::Key(key)];
                    yaml.and_then(|yaml| position::key_line(yaml, &path))
                };
                unknown_key(
                    diag,
                    &list.location,
                    format!("{prefix}{key}"),
                    key,
                    &schema::accepted(false).collect::<Vec<_>>(),
                    line,
                );
            }
        }
        let fields = Fields {
            prefix,
            map,
            file: file.clone(),
        };
        let gate = super::gate::gate(&fields, top_gate, diag);
        let hooks = super::hooks::hooks(&fields, top_hooks, diag);
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
