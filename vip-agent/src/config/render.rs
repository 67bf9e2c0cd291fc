//! The effective configuration as YAML, secrets redacted (`vip-agent check`), walking the key table
//! ([`super::schema::KEYS`]): each key renders itself from the [`Config`].

use serde_norway::{Mapping, Value};

use super::{
    Config, VipConfig,
    schema::{KEYS, Scope},
};

/// The per-VIP keys of `vip` (inside a `vips:` entry, or top-level for a single VIP).
pub(super) fn vip(config: &Config, vip: &VipConfig) -> Mapping {
    let mut out = Mapping::new();
    for key in KEYS.iter().filter(|k| k.scope != Scope::Top) {
        if let Some(value) = (key.render)(config, Some(vip)) {
            out.insert(Value::String(key.name.to_owned()), value);
        }
    }
    out
}

impl Config {
    /// The effective configuration as YAML that [`super::from_yaml_str`] reads back (defaults
    /// filled in, one VIP as top-level keys, several as `vips:`, each with its promotion gate), with
    /// the etcd and Patroni passwords shown as `<redacted>` and the password of `postgres-dsn`
    /// replaced by it. A header comment names the source file.
    #[must_use]
    pub fn render_redacted(&self) -> String {
        let mut top = match self.vips.as_slice() {
            [one] => vip(self, one),
            _ => Mapping::new(),
        };
        for key in KEYS {
            let name = Value::String(key.name.to_owned());
            if !top.contains_key(&name)
                && let Some(value) = (key.render)(self, None)
            {
                top.insert(name, value);
            }
        }
        let source = self.provenance.file().map_or_else(
            || "no config file".to_owned(),
            |f| format!("config file {f}"),
        );
        let body = serde_norway::to_string(&top).unwrap_or_else(|e| {
            // Serialising plain strings and numbers cannot fail; say so rather than panic.
            format!("# cannot render the configuration: {e}\n")
        });
        format!("# vip-agent effective configuration ({source}; secrets redacted)\n{body}")
    }
}
