//! The effective configuration as YAML, secrets redacted (`vip-agent check`).

use serde::Serialize;

use super::{Config, GateConfig, HookConfig, Secret, VipConfig, values::format_duration};

#[derive(Serialize)]
struct Effective<'a> {
    #[serde(flatten)]
    single: Option<Vip<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vips: Option<Vec<Vip<'a>>>,
    #[serde(rename = "dcs-type")]
    dcs_type: &'static str,
    #[serde(rename = "dcs-endpoints", skip_serializing_if = "<[String]>::is_empty")]
    dcs_endpoints: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    repmgr: Option<Repmgr<'a>>,
    #[serde(rename = "etcd-user", skip_serializing_if = "Option::is_none")]
    etcd_user: Option<&'a str>,
    #[serde(rename = "etcd-password", skip_serializing_if = "Option::is_none")]
    etcd_password: Option<&'static str>,
    #[serde(rename = "etcd-ca-file", skip_serializing_if = "Option::is_none")]
    etcd_ca_file: Option<String>,
    #[serde(rename = "etcd-cert-file", skip_serializing_if = "Option::is_none")]
    etcd_cert_file: Option<String>,
    #[serde(rename = "etcd-key-file", skip_serializing_if = "Option::is_none")]
    etcd_key_file: Option<String>,
    #[serde(rename = "garp-count")]
    garp_count: u32,
    #[serde(rename = "garp-interval")]
    garp_interval: String,
    #[serde(rename = "fence-timeout", skip_serializing_if = "Option::is_none")]
    fence_timeout: Option<String>,
    #[serde(rename = "fence-handshake", skip_serializing_if = "Option::is_none")]
    fence_handshake: Option<bool>,
    #[serde(rename = "fence-record-ttl", skip_serializing_if = "Option::is_none")]
    fence_record_ttl: Option<String>,
    #[serde(
        rename = "fence-record-prefix",
        skip_serializing_if = "Option::is_none"
    )]
    fence_record_prefix: Option<&'a str>,
    #[serde(rename = "xdp-mode")]
    xdp_mode: &'static str,
    #[serde(rename = "metrics-address")]
    metrics_address: String,
    #[serde(rename = "pin-path")]
    pin_path: String,
    verbose: bool,
}

/// `dcs-type: repmgr`'s keys. `postgres-dsn` is the VIPs' (flattened with a single VIP); with a
/// `vips:` list it is written at the top level too, where repmgr mode reads it.
#[derive(Serialize)]
struct Repmgr<'a> {
    #[serde(rename = "repmgr-node-id")]
    node_id: u32,
    #[serde(rename = "repmgr-socket")]
    socket: String,
    #[serde(
        rename = "repmgr-socket-group",
        skip_serializing_if = "Option::is_none"
    )]
    socket_group: Option<&'a str>,
    #[serde(rename = "repmgr-check-interval")]
    check_interval: String,
    #[serde(rename = "repmgr-state-file")]
    state_file: String,
    #[serde(rename = "repmgr-quorum-hold")]
    quorum_hold: String,
    #[serde(rename = "repmgr-passfile", skip_serializing_if = "Option::is_none")]
    passfile: Option<String>,
    #[serde(rename = "postgres-dsn", skip_serializing_if = "Option::is_none")]
    postgres_dsn: Option<String>,
}

#[derive(Serialize)]
struct Vip<'a> {
    ip: String,
    netmask: u8,
    interface: &'a str,
    /// Left out with `dcs-type: repmgr`, where they are labels made up by the parser.
    #[serde(rename = "trigger-key", skip_serializing_if = "Option::is_none")]
    trigger_key: Option<&'a str>,
    #[serde(rename = "trigger-value", skip_serializing_if = "Option::is_none")]
    trigger_value: Option<&'a str>,
    #[serde(flatten)]
    gate: Gate<'a>,
    #[serde(flatten)]
    hooks: Hooks<'a>,
}

#[derive(Serialize)]
struct Hooks<'a> {
    #[serde(rename = "on-promote", skip_serializing_if = "Option::is_none")]
    on_promote: Option<&'a str>,
    #[serde(rename = "on-demote", skip_serializing_if = "Option::is_none")]
    on_demote: Option<&'a str>,
    #[serde(rename = "hook-timeout")]
    timeout: String,
    #[serde(rename = "hook-retries")]
    retries: u32,
}

impl<'a> From<&'a HookConfig> for Hooks<'a> {
    fn from(h: &'a HookConfig) -> Self {
        Self {
            on_promote: h.on_promote.as_deref(),
            on_demote: h.on_demote.as_deref(),
            timeout: format_duration(h.timeout),
            retries: h.retries,
        }
    }
}

#[derive(Serialize)]
struct Gate<'a> {
    #[serde(rename = "promotion-gate")]
    mode: &'static str,
    #[serde(rename = "promotion-gate-interval")]
    interval: String,
    #[serde(rename = "promotion-gate-timeout")]
    timeout: String,
    #[serde(rename = "patroni-url", skip_serializing_if = "Option::is_none")]
    patroni_url: Option<String>,
    #[serde(rename = "patroni-ca-file", skip_serializing_if = "Option::is_none")]
    patroni_ca_file: Option<String>,
    #[serde(rename = "patroni-cert-file", skip_serializing_if = "Option::is_none")]
    patroni_cert_file: Option<String>,
    #[serde(rename = "patroni-key-file", skip_serializing_if = "Option::is_none")]
    patroni_key_file: Option<String>,
    #[serde(rename = "patroni-user", skip_serializing_if = "Option::is_none")]
    patroni_user: Option<&'a str>,
    #[serde(rename = "patroni-password", skip_serializing_if = "Option::is_none")]
    patroni_password: Option<&'static str>,
    #[serde(rename = "postgres-dsn", skip_serializing_if = "Option::is_none")]
    postgres_dsn: Option<String>,
    #[serde(rename = "patroni-failsafe")]
    failsafe: bool,
}

impl<'a> From<&'a GateConfig> for Gate<'a> {
    fn from(g: &'a GateConfig) -> Self {
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
        Self {
            mode: g.mode.as_str(),
            interval: format_duration(g.interval),
            timeout: format_duration(g.timeout),
            patroni_url: g.patroni_url.as_ref().map(ToString::to_string),
            patroni_ca_file: path(&g.patroni_ca_file),
            patroni_cert_file: path(&g.patroni_cert_file),
            patroni_key_file: path(&g.patroni_key_file),
            patroni_user: g.patroni_user.as_deref(),
            patroni_password: g.patroni_password.as_ref().map(|_| Secret::REDACTED),
            postgres_dsn: g
                .postgres_dsn
                .as_ref()
                .map(|d| super::redact_dsn(d.expose())),
            failsafe: g.failsafe,
        }
    }
}

impl<'a> From<&'a VipConfig> for Vip<'a> {
    fn from(v: &'a VipConfig) -> Self {
        Self {
            ip: v.ip.to_string(),
            netmask: v.prefix_len,
            interface: &v.interface,
            trigger_key: Some(&v.trigger_key),
            trigger_value: Some(&v.trigger_value),
            gate: Gate::from(&v.gate),
            hooks: Hooks::from(&v.hooks),
        }
    }
}

impl Config {
    /// The effective configuration as YAML that [`super::from_yaml_str`] reads back (defaults
    /// filled in, one VIP as top-level keys, several as `vips:`, each with its promotion gate), with
    /// the etcd and Patroni passwords shown as `<redacted>` and the password of `postgres-dsn`
    /// replaced by it. A header comment names the source file.
    #[must_use]
    pub fn render_redacted(&self) -> String {
        let vip = |v| {
            let mut out = Vip::from(v);
            if self.repmgr.is_some() {
                out.trigger_key = None;
                out.trigger_value = None;
            }
            out
        };
        let (single, vips) = match self.vips.as_slice() {
            [one] => (Some(vip(one)), None),
            many => (None, Some(many.iter().map(vip).collect())),
        };
        let repmgr = self.repmgr.as_ref().map(|r| Repmgr {
            node_id: r.node_id,
            socket: r.socket.display().to_string(),
            socket_group: r.socket_group.as_deref(),
            check_interval: format_duration(r.check_interval),
            state_file: r.state_file.display().to_string(),
            quorum_hold: format_duration(r.quorum_hold),
            passfile: r.passfile.as_ref().map(|p| p.display().to_string()),
            postgres_dsn: vips
                .is_some()
                .then(|| super::redact_dsn(r.postgres_dsn.expose())),
        });
        let path = |p: &Option<std::path::PathBuf>| p.as_ref().map(|p| p.display().to_string());
        let effective = Effective {
            single,
            vips,
            dcs_type: match (&self.repmgr, self.patroni_interval) {
                (Some(_), _) => "repmgr",
                (None, Some(_)) => "patroni",
                (None, None) => "etcd",
            },
            interval: self.patroni_interval.map(format_duration),
            dcs_endpoints: &self.etcd.endpoints,
            repmgr,
            etcd_user: self.etcd.user.as_deref(),
            etcd_password: self.etcd.password.as_ref().map(|_| Secret::REDACTED),
            etcd_ca_file: path(&self.etcd.ca_file),
            etcd_cert_file: path(&self.etcd.cert_file),
            etcd_key_file: path(&self.etcd.key_file),
            garp_count: self.garp.count,
            garp_interval: format_duration(self.garp.interval),
            fence_timeout: self.fence_timeout.map(format_duration),
            // Not rendered in repmgr mode, where it does not apply.
            fence_handshake: (self.repmgr.is_none() && self.patroni_interval.is_none())
                .then_some(self.handshake.is_some()),
            fence_record_ttl: self.handshake.as_ref().map(|h| format_duration(h.ttl)),
            fence_record_prefix: self.handshake.as_ref().map(|h| h.prefix.as_str()),
            xdp_mode: self.xdp_mode.as_str(),
            metrics_address: self.metrics_address.to_string(),
            pin_path: self.pin_path.display().to_string(),
            verbose: self.verbose,
        };
        let source = self.provenance.file().map_or_else(
            || "no config file".to_owned(),
            |f| format!("config file {f}"),
        );
        let body = serde_norway::to_string(&effective).unwrap_or_else(|e| {
            // Serialising plain strings and numbers cannot fail; say so rather than panic.
            format!("# cannot render the configuration: {e}\n")
        });
        format!("# vip-agent effective configuration ({source}; secrets redacted)\n{body}")
    }
}
