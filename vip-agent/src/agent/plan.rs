//! What the agent runs, decided from the configuration alone: no I/O, so every choice is
//! unit-tested. [`super::run`] starts what the plan says.

use std::{net::IpAddr, time::Duration};

use crate::{
    config::{
        Config, GateConfig, GateMode, HandshakeSettings, PatroniUrl, RepmgrConfig, VipConfig,
        member_key, scope,
    },
    leader::{self, LeaderSettings},
    leadership::SourceKind,
    patroni_rest::{self, RestError, RestSettings},
    repmgr,
};

/// Everything the agent starts.
#[derive(Debug)]
pub struct Plan {
    /// The interfaces that carry a VIP, in configuration order: one data plane each.
    pub interfaces: Vec<String>,
    /// One leader source per (`trigger-key`, `trigger-value`), in configuration order.
    pub sources: Vec<SourcePlan>,
}

/// One leader source and what hangs behind it.
#[derive(Debug)]
pub struct SourcePlan {
    /// `trigger-key` (a label in repmgr mode, the REST path in Patroni REST mode).
    pub key: String,
    /// `trigger-value` (etcd: this member's name).
    pub value: String,
    pub source: SourceChoice,
    /// etcd, when a VIP on this key asks Patroni: Patroni's member key next to the leader key.
    pub member: Option<String>,
    /// The Patroni scope the gate checks answers against (from the leader key), when known.
    pub scope: Option<String>,
    /// etcd: the fence handshake between the source and the gates.
    pub handshake: Option<HandshakeSettings>,
    /// One promotion gate and data plane writer per distinct gate configuration of its VIPs.
    pub writers: Vec<WriterPlan>,
}

/// Which source, with its settings.
#[derive(Debug)]
pub enum SourceChoice {
    Etcd(Box<LeaderSettings>),
    /// Resolved at start (group lookup, connection string).
    Repmgr {
        config: Box<RepmgrConfig>,
        fence_timeout: Option<Duration>,
    },
    PatroniRest(Box<RestSettings>),
}

impl SourceChoice {
    /// The kind of source this becomes.
    #[must_use]
    pub fn kind(&self) -> &'static SourceKind {
        match self {
            Self::Etcd(_) => &leader::KIND,
            Self::Repmgr { .. } => &repmgr::KIND,
            Self::PatroniRest(_) => &patroni_rest::KIND,
        }
    }
}

/// One gate and the data plane writer behind it.
#[derive(Debug, PartialEq, Eq)]
pub struct WriterPlan {
    /// For logs: the key and the VIPs.
    pub name: String,
    pub gate: GateConfig,
    /// The VIPs it writes.
    pub vips: Vec<IpAddr>,
}

/// Decide what `config` runs.
///
/// # Errors
/// A `dcs-type: patroni` endpoint that is no Patroni URL.
pub fn plan(config: &Config) -> Result<Plan, RestError> {
    let mut interfaces: Vec<String> = Vec::new();
    for vip in &config.vips {
        if !interfaces.contains(&vip.interface) {
            interfaces.push(vip.interface.clone());
        }
    }
    let mut sources: Vec<SourcePlan> = Vec::new();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for vip in &config.vips {
        let id = (vip.trigger_key.as_str(), vip.trigger_value.as_str());
        if seen.contains(&id) {
            continue;
        }
        seen.push(id);
        let source = source_choice(config, vip)?;
        let etcd = matches!(source, SourceChoice::Etcd(_));
        let same: Vec<&VipConfig> = config
            .vips
            .iter()
            .filter(|v| v.trigger_key == vip.trigger_key && v.trigger_value == vip.trigger_value)
            .collect();
        let asks_patroni = same.iter().any(|v| v.gate.mode == GateMode::Patroni);
        let mut writers: Vec<WriterPlan> = Vec::new();
        for v in same {
            let gate = gate_for(config, v);
            match writers.iter_mut().find(|w| w.gate == gate) {
                Some(w) => w.vips.push(v.ip),
                None => writers.push(WriterPlan {
                    name: String::new(),
                    gate,
                    vips: vec![v.ip],
                }),
            }
        }
        for w in &mut writers {
            let ips: Vec<String> = w.vips.iter().map(ToString::to_string).collect();
            w.name = format!("{} ({})", vip.trigger_key, ips.join(", "));
        }
        sources.push(SourcePlan {
            key: vip.trigger_key.clone(),
            value: vip.trigger_value.clone(),
            member: member_key(&vip.trigger_key, &vip.trigger_value)
                .filter(|_| etcd && asks_patroni),
            scope: scope(&vip.trigger_key).map(str::to_owned),
            handshake: config.handshake.clone().filter(|_| etcd),
            source,
            writers,
        });
    }
    Ok(Plan {
        interfaces,
        sources,
    })
}

fn source_choice(config: &Config, vip: &VipConfig) -> Result<SourceChoice, RestError> {
    if let Some(r) = &config.repmgr {
        return Ok(SourceChoice::Repmgr {
            config: Box::new(r.clone()),
            fence_timeout: config.fence_timeout,
        });
    }
    if let Some(interval) = config.patroni_interval {
        return Ok(SourceChoice::PatroniRest(Box::new(rest_settings(
            config, vip, interval,
        )?)));
    }
    Ok(SourceChoice::Etcd(Box::new(leader_settings(config, vip))))
}

/// `dcs-type: patroni` without `patroni-url`: the promotion gate asks the Patroni the source asks
/// (there is no member key to find it in).
fn gate_for(config: &Config, vip: &VipConfig) -> GateConfig {
    let mut gate = vip.gate.clone();
    if config.patroni_interval.is_some()
        && gate.patroni_url.is_none()
        && let Some(url) = config
            .etcd
            .endpoints
            .first()
            .and_then(|e| PatroniUrl::parse(e).ok())
    {
        gate.patroni_url = Some(url);
    }
    gate
}

/// The etcd follower's settings for the key of `vip`.
#[must_use]
fn leader_settings(config: &Config, vip: &VipConfig) -> LeaderSettings {
    let mut s = LeaderSettings::new(
        config.etcd.endpoints.clone(),
        &vip.trigger_key,
        &vip.trigger_value,
    );
    s.user.clone_from(&config.etcd.user);
    s.password = config.etcd.password.as_ref().map(|p| p.expose().to_owned());
    s.ca_file.clone_from(&config.etcd.ca_file);
    s.cert_file.clone_from(&config.etcd.cert_file);
    s.key_file.clone_from(&config.etcd.key_file);
    s.fence_timeout = config.fence_timeout;
    s
}

/// `dcs-type: patroni`: `dcs-endpoints` are Patroni's REST API, `trigger-key` the path,
/// `trigger-value` the status; the TLS files are `patroni-*`, else `etcd-*` (vip-manager reuses
/// those).
fn rest_settings(
    config: &Config,
    vip: &VipConfig,
    interval: Duration,
) -> Result<RestSettings, RestError> {
    let endpoints = config
        .etcd
        .endpoints
        .iter()
        .map(|e| {
            PatroniUrl::parse(e).map_err(|reason| RestError::Endpoint {
                endpoint: e.clone(),
                reason,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut client = vip.gate.clone();
    if client.patroni_ca_file.is_none() {
        client.patroni_ca_file.clone_from(&config.etcd.ca_file);
    }
    if client.patroni_cert_file.is_none() && client.patroni_key_file.is_none() {
        client.patroni_cert_file.clone_from(&config.etcd.cert_file);
        client.patroni_key_file.clone_from(&config.etcd.key_file);
    }
    Ok(RestSettings {
        endpoints,
        path: vip.trigger_key.clone(),
        expected: vip.trigger_value.clone(),
        interval,
        validity: RestSettings::validity(interval, config.fence_timeout),
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> Config {
        crate::config::from_yaml_str("test", yaml).expect("valid configuration")
    }

    const TWO_KEYS: &str = "\
vips:
  - {ip: 10.0.0.10, netmask: 24, interface: eth0, trigger-key: /service/a/leader, trigger-value: pg1}
  - {ip: 10.0.0.11, netmask: 24, interface: eth1, trigger-key: /service/a/leader, trigger-value: pg1,
     promotion-gate: off}
  - {ip: 10.0.0.12, netmask: 24, interface: eth0, trigger-key: /service/a/leader, trigger-value: pg1}
  - {ip: 10.0.1.10, netmask: 24, interface: eth1, trigger-key: /service/b/leader, trigger-value: pg1,
     promotion-gate: postgres, postgres-dsn: 'host=/run/postgresql'}
";

    #[test]
    fn one_data_plane_per_interface_and_one_source_per_key_with_a_writer_per_gate() {
        let p = plan(&config(TWO_KEYS)).expect("plan");
        assert_eq!(p.interfaces, ["eth0", "eth1"]);
        assert_eq!(p.sources.len(), 2);
        let a = &p.sources[0];
        assert_eq!(a.key, "/service/a/leader");
        assert!(matches!(a.source, SourceChoice::Etcd(_)));
        assert_eq!(a.source.kind().name, "etcd");
        let vips: Vec<Vec<IpAddr>> = a.writers.iter().map(|w| w.vips.clone()).collect();
        assert_eq!(
            vips,
            [
                vec![IpAddr::from([10, 0, 0, 10]), IpAddr::from([10, 0, 0, 12])],
                vec![IpAddr::from([10, 0, 0, 11])]
            ]
        );
        assert_eq!(
            a.writers[0].name,
            "/service/a/leader (10.0.0.10, 10.0.0.12)"
        );
        assert_eq!(a.writers[1].gate.mode, GateMode::Off);
        assert_eq!(a.member.as_deref(), Some("/service/a/members/pg1"));
        assert_eq!(a.scope.as_deref(), Some("a"));
        assert!(
            a.handshake.is_some(),
            "the fence handshake is on by default"
        );
        let b = &p.sources[1];
        assert_eq!(b.member, None, "no VIP on this key asks Patroni");
        assert_eq!(b.writers.len(), 1);
    }

    #[test]
    fn the_same_key_with_another_value_is_another_source() {
        let p = plan(&config(
            "vips:\n  - {ip: 10.0.0.10, netmask: 24, interface: eth0, trigger-key: /service/a/leader, trigger-value: pg1}\n  - {ip: 10.0.0.11, netmask: 24, interface: eth0, trigger-key: /service/a/leader, trigger-value: pg2}\n",
        ))
        .expect("plan");
        assert_eq!(p.sources.len(), 2);
        assert_eq!(p.interfaces, ["eth0"]);
    }

    #[test]
    fn repmgr_mode_is_one_source_without_handshake_or_member_key() {
        let p = plan(&config(
            "ip: 10.0.0.10\nnetmask: 24\ninterface: eth0\ndcs-type: repmgr\nrepmgr-node-id: 2\npostgres-dsn: host=/run/postgresql\n",
        ))
        .expect("plan");
        assert_eq!(p.sources.len(), 1);
        let s = &p.sources[0];
        assert!(matches!(s.source, SourceChoice::Repmgr { .. }));
        assert!(!s.source.kind().failsafe_applies);
        assert!(s.handshake.is_none() && s.member.is_none());
    }

    #[test]
    fn patroni_rest_mode_asks_the_endpoint_and_its_gate_asks_the_same_patroni() {
        let p = plan(&config(
            "ip: 10.0.0.10\nnetmask: 24\ninterface: eth0\ndcs-type: patroni\ndcs-endpoints: http://10.0.0.5:8008\ninterval: 500ms\nfence-timeout: 1s\n",
        ))
        .expect("plan");
        let s = &p.sources[0];
        let SourceChoice::PatroniRest(rest) = &s.source else {
            panic!("{:?}", s.source);
        };
        assert_eq!(rest.path, "/leader");
        assert_eq!(rest.expected, "200");
        assert_eq!(rest.interval, Duration::from_millis(500));
        assert_eq!(
            rest.validity,
            Duration::from_secs(1),
            "capped by fence-timeout"
        );
        assert_eq!(rest.endpoints[0].to_string(), "http://10.0.0.5:8008");
        assert_eq!(
            s.writers[0]
                .gate
                .patroni_url
                .as_ref()
                .map(ToString::to_string),
            Some("http://10.0.0.5:8008".to_owned())
        );
        assert!(s.handshake.is_none() && s.member.is_none());
        assert!(!s.source.kind().failsafe_applies);
    }
}
