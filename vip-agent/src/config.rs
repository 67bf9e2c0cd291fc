//! vip-manager compatible configuration: a YAML file, `--flags` and `VIP_*` environment variables.
//!
//! # Sources and precedence
//!
//! As in vip-manager: a flag beats its environment variable (`--ip` over `VIP_IP`; clap does this
//! in [`ConfigArgs`]), which beats the YAML file named by `--config`/`VIP_CONFIG`, which beats the
//! defaults. Variables are named `VIP_` + the key in upper case with `-` → `_`
//! (`VIP_TRIGGER_KEY`); `VIP_DCS_ENDPOINTS`/`--dcs-endpoints` take a comma list. An empty flag or
//! variable counts as unset. A Pigsty-generated `/etc/default/vip-manager.yml` loads unchanged
//! (`examples/pigsty-vip-manager.yml`).
//!
//! # Keys
//!
//! vip-manager's: `ip`, `netmask` (prefix length 1..=32, IPv6 1..=128), `interface`, `trigger-key`,
//! `trigger-value` (default: the host name), `dcs-type` (`etcd`/`etcd3`, both the v3 API),
//! `dcs-endpoints` (YAML list or comma string, each `http://` or `https://`; default
//! `http://127.0.0.1:2379`), `etcd-user`, `etcd-password`, `etcd-ca-file`, `etcd-cert-file`,
//! `etcd-key-file`, `manager-type` (`basic`), `verbose`. Accepted and ignored with an info notice:
//! `interval`, `retry-after`, `retry-num` (vip-agent watches, it does not poll). Accepted with a
//! warning: `hosting-type` (Pigsty writes it; vip-manager never read it). Refused with a clear
//! error: `dcs-type: consul|patroni`, `manager-type: hetzner`, `consul-token`, pre-1.0
//! keys (`iface`, `mask`, `key`, `nodename`, ...), and an unknown key close to a known one (with
//! that key as the suggestion). An unknown key far from every known key is a warning naming its
//! line, and ignored, as vip-manager ignores it: a key that a newer vip-manager or Pigsty template
//! adds must not keep the agent down. `consul-token` is refused as a key, a flag and a variable.
//!
//! vip-agent's own: `vips` (several VIPs, see [`VipConfig`]), `garp-count` and `garp-interval`
//! (see [`GarpConfig`]), `fence-timeout`, `xdp-mode`, `metrics-address`, `pin-path`, and the
//! promotion gate (see [`GateConfig`]; also allowed inside `vips:` entries): `promotion-gate`,
//! `promotion-gate-interval`, `promotion-gate-timeout`, `patroni-url`, `patroni-ca-file`,
//! `patroni-cert-file`, `patroni-key-file`, `patroni-user`, `patroni-password`, `postgres-dsn`,
//! `patroni-failsafe`.
//!
//! `dcs-type: repmgr` follows this node's repmgr role instead of an etcd key: `repmgr-node-id`
//! (required), `repmgr-socket`, `repmgr-socket-group`, `repmgr-check-interval`,
//! `repmgr-state-file`, `repmgr-quorum-hold`, `repmgr-passfile`, and the top-level `postgres-dsn`
//! (required); see [`RepmgrConfig`] and `docs/repmgr.md`.
//!
//! # The key table
//!
//! Every key is declared once, in `config/schema.rs` ([`ConfigArgs`]' fields are generated from
//! the same table): its name, flag and variable, where it may be set (top level, per VIP, or both),
//! its default and help text for `--help`, the parser family that reads it (`config/parse/*.rs`),
//! and how `check` renders it. The key lists, the clap arguments, the flag layer and `check`'s
//! rendering all come from it. Adding a key is one table entry, its field in [`Config`] and its
//! reader.
//!
//! # Phases
//!
//! [`load`]/[`from_yaml_str`] parse and check everything that does not depend on the machine
//! (addresses, prefixes, names, endpoints, combinations), so they are unit-testable and `vip-agent
//! check` can run anywhere. [`Config::validate_host`] then checks this host: interfaces, their
//! addresses, and the certificate files. Warnings and informational notes are returned as
//! [`Notice`]s (in [`Config::notices`] and from `validate_host`); [`Notice::log`] emits one through
//! `tracing`.

mod args;
mod error;
#[cfg(fuzzing)]
pub mod fuzzing;
mod host;
mod layout;
mod parse;
mod render;
mod schema;
#[cfg(test)]
mod tests;
mod values;

use std::{
    collections::BTreeMap,
    fmt, fs,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    time::Duration,
};

pub use error::ConfigError;
pub use host::{HostFacts, InterfaceFacts};
pub use layout::{DEFAULT_RECORD_PREFIX, DEFAULT_RECORD_TTL, HandshakeSettings, member_key, scope};
pub use parse::repmgr::{
    DEFAULT_REPMGR_CHECK_INTERVAL, DEFAULT_REPMGR_QUORUM_HOLD, DEFAULT_REPMGR_SOCKET,
    DEFAULT_REPMGR_STATE_FILE, REPMGR_VALIDITY_INTERVALS, RepmgrConfig,
};
pub use schema::ConfigArgs;
pub use values::repmgr_node_id;

/// etcd endpoint used when none is configured (vip-manager's default).
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// Where the Prometheus metrics are served unless configured: loopback only, because the endpoint
/// has no authentication (expose it deliberately with `metrics-address`). The port is this
/// project's choice, clear of the exporters a Patroni node usually runs (node 9100, postgres 9187,
/// Patroni 8008, etcd 2379/2381); set `metrics-address` if it collides.
pub const DEFAULT_METRICS_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9477));
/// bpffs directory for pins unless configured (the data plane's default).
pub const DEFAULT_PIN_PATH: &str = crate::dataplane::DEFAULT_PIN_ROOT;
/// Gratuitous ARPs per takeover unless configured; see [`GarpConfig`].
pub const DEFAULT_GARP_COUNT: u32 = 3;
/// Spacing of gratuitous ARPs after the quick repeat unless configured; see [`GarpConfig`].
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_secs(1);
/// Delay of the second gratuitous ARP (or `garp-interval`, if shorter); see [`GarpConfig`].
pub const GARP_QUICK_REPEAT: Duration = Duration::from_millis(100);

/// The effective configuration of one agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The VIPs this agent manages (one for vip-manager style files; `vips:` gives several).
    pub vips: Vec<VipConfig>,
    /// How to reach etcd (one client for all VIPs); unused (no endpoints) with `dcs-type: repmgr`.
    pub etcd: EtcdConfig,
    /// `dcs-type: repmgr`: every VIP follows this node's repmgr role instead of an etcd key
    /// (see [`RepmgrConfig`]; each VIP's `trigger-key` is then the label `repmgr` and its
    /// `trigger-value` the node id).
    pub repmgr: Option<RepmgrConfig>,
    /// `dcs-type: patroni`: the poll period (`interval`) of Patroni's REST API at
    /// `etcd.endpoints`; each VIP answers while `GET <endpoint><trigger-key>` returns the status
    /// `trigger-value` (vip-manager's semantics). `None` in other modes.
    pub patroni_interval: Option<Duration>,
    /// Gratuitous ARPs on takeover.
    pub garp: GarpConfig,
    /// How long a node that lost leadership, or cannot confirm it, keeps fencing the VIP. `None`
    /// (the default): exactly until the observed expiry of the leader key's lease.
    pub fence_timeout: Option<Duration>,
    /// The fence handshake between the agents of one key (`fence-handshake`, `fence-record-ttl`,
    /// `fence-record-prefix`); `None` when off (`fence-handshake: false`, or repmgr mode, which
    /// has no etcd). See [`crate::leader::Handshake`].
    pub handshake: Option<HandshakeSettings>,
    /// How to attach the XDP program.
    pub xdp_mode: XdpModeSetting,
    /// Prometheus metrics endpoint.
    pub metrics_address: SocketAddr,
    /// bpffs directory under which the data plane pins `<ifname>/...`.
    pub pin_path: PathBuf,
    /// Debug logging.
    pub verbose: bool,
    /// Warnings and informational notes found while loading; log them with [`Notice::log`].
    pub notices: Vec<Notice>,
    /// Where each value came from (for messages of later checks).
    pub provenance: Provenance,
}

/// One VIP: an IPv4 or IPv6 address with its prefix on an interface, held while `trigger-key` has the
/// value `trigger-value`.
///
/// In a file, either the top-level keys `ip`, `netmask`, `interface`, `trigger-key`,
/// `trigger-value` (vip-manager style, one VIP) or a `vips:` list of mappings with those keys, one
/// per VIP; not both. Each `trigger-value` defaults to the host name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VipConfig {
    pub ip: IpAddr,
    /// 1..=32 (IPv6: 1..=128), as vip-manager's `netmask`.
    pub prefix_len: u8,
    pub interface: String,
    /// The Patroni leader key, e.g. `/service/batman/leader` or Pigsty's `/pg/<cluster>/leader`.
    pub trigger_key: String,
    /// The key's value that means "this node" (Patroni's member `name`).
    pub trigger_value: String,
    /// When to start answering after the key names this node (the top-level `promotion-gate`
    /// keys, overridden by the VIP's own in a `vips:` entry).
    pub gate: GateConfig,
    /// Commands run after this node started or stopped answering (top-level `on-promote` etc.,
    /// overridden by the VIP's own).
    pub hooks: HookConfig,
}

/// Time a hook may run unless configured.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);
/// Further attempts after a hook failed unless configured.
pub const DEFAULT_HOOK_RETRIES: u32 = 2;

/// `on-promote` / `on-demote`: shell commands run after the data plane changed, for what the data
/// plane cannot do itself (a cloud VIP that is a secondary private IP reassigned through the
/// provider's API, a load balancer to tell, a page to send). See `docs/hooks.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookConfig {
    /// Run (`/bin/sh -c`) once this node answers for the VIP and its address is up.
    pub on_promote: Option<String>,
    /// Run once this node stopped answering for the VIP and its address is gone.
    pub on_demote: Option<String>,
    /// One attempt is killed (its whole process group) after this long.
    pub timeout: Duration,
    /// Attempts after a failed one (non-zero exit, signal, timeout), 1 s apart.
    pub retries: u32,
}

impl Default for HookConfig {
    fn default() -> Self {
        Self {
            on_promote: None,
            on_demote: None,
            timeout: DEFAULT_HOOK_TIMEOUT,
            retries: DEFAULT_HOOK_RETRIES,
        }
    }
}

/// Patroni's REST API address unless configured: its usual `restapi.listen` port on loopback.
pub const DEFAULT_PATRONI_URL: &str = "http://127.0.0.1:8008";
/// `dcs-type: patroni`: Patroni's REST API is asked this often unless `interval` says otherwise.
pub const DEFAULT_PATRONI_INTERVAL: Duration = Duration::from_secs(1);
/// Poll period of the promotion gate unless configured.
pub const DEFAULT_GATE_INTERVAL: Duration = Duration::from_millis(5);
/// Upper bound of the promotion gate unless configured: answer anyway after this long.
pub const DEFAULT_GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// `promotion-gate`: what must hold, besides the leader key, before this node answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GateMode {
    /// The local Patroni REST API reports this member as a running primary (`GET /primary`).
    #[default]
    Patroni,
    /// `SELECT pg_is_in_recovery()` on the local PostgreSQL returns false.
    Postgres,
    /// Answer as soon as the key names this node (vip-manager's behaviour).
    Off,
}

impl GateMode {
    /// The canonical config value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Patroni => "patroni",
            Self::Postgres => "postgres",
            Self::Off => "off",
        }
    }
}

impl fmt::Display for GateMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed `patroni-url`: `http[s]://host[:port][/base]`; the gate asks `<base>/primary`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatroniUrl {
    /// `https` rather than `http`.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// The port (80/443 when the URL has none).
    pub port: u16,
    /// Path prefix without a trailing `/` (usually empty).
    pub base: String,
}

impl PatroniUrl {
    /// Parse `http[s]://host[:port][/path]`.
    ///
    /// # Errors
    /// A message naming what is wrong (scheme, host, port, user info, query).
    pub fn parse(raw: &str) -> Result<Self, String> {
        values::patroni_url(raw)
    }

    /// [`DEFAULT_PATRONI_URL`]: where Patroni listens when nothing else says so.
    #[must_use]
    pub fn local_default() -> Self {
        Self {
            tls: false,
            host: "127.0.0.1".to_owned(),
            port: 8008,
            base: String::new(),
        }
    }

    /// The `Host:` header value and the URL authority (`[v6]:port` for IPv6).
    #[must_use]
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for PatroniUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.base)
    }
}

/// The promotion gate of a VIP: see `docs/patroni-gate.md` and [`crate::gate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateConfig {
    pub mode: GateMode,
    /// Patroni's REST API (mode `patroni`), when configured. `None`: this member's `api_url`
    /// from its key in etcd, else [`PatroniUrl::local_default`] (see [`crate::gate`]).
    pub patroni_url: Option<PatroniUrl>,
    /// CA that verifies Patroni's certificate (`https` only; system roots when unset).
    pub patroni_ca_file: Option<PathBuf>,
    /// Client certificate for Patroni's `restapi.verify_client`; set exactly when `key_file` is.
    pub patroni_cert_file: Option<PathBuf>,
    pub patroni_key_file: Option<PathBuf>,
    /// Basic authentication (Patroni's `restapi.authentication`); set exactly when the password is.
    pub patroni_user: Option<String>,
    pub patroni_password: Option<Secret>,
    /// libpq-style connection string of the local PostgreSQL (mode `postgres`; required there).
    pub postgres_dsn: Option<Secret>,
    /// Poll period while gating.
    pub interval: Duration,
    /// After this long the VIP answers anyway (logged with the last probe result).
    pub timeout: Duration,
    /// `patroni-failsafe`: follow Patroni's own `failsafe_mode` (the default, true): while etcd
    /// is unreachable, keep answering past the lease deadline as long as Patroni's REST API
    /// reports this member a running primary in failsafe mode, which it does only with
    /// `failsafe_mode` on (see [`crate::gate`]). false: never past the lease deadline.
    pub failsafe: bool,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            mode: GateMode::default(),
            patroni_url: None,
            patroni_ca_file: None,
            patroni_cert_file: None,
            patroni_key_file: None,
            patroni_user: None,
            patroni_password: None,
            postgres_dsn: None,
            interval: DEFAULT_GATE_INTERVAL,
            timeout: DEFAULT_GATE_TIMEOUT,
            failsafe: true,
        }
    }
}

/// A connection string with its password (`password=...` or the URL's `user:password@`) replaced
/// by [`Secret::REDACTED`], for `vip-agent check` and logs.
#[must_use]
pub fn redact_dsn(dsn: &str) -> String {
    values::redact_dsn(dsn)
}

/// How to reach etcd (v3 API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port` URLs (scheme lower-cased, no trailing `/`).
    pub endpoints: Vec<String>,
    /// User for password authentication; set exactly when `password` is.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// CA that verifies the servers. Optional even with a client certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate; set exactly when `key_file` is.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// Gratuitous ARPs (reply and request, the data plane's business) sent when this node takes a VIP
/// over: `count` of them at offsets 0, [`GARP_QUICK_REPEAT`] (100 ms, or `interval` if shorter),
/// then every `interval`: with the defaults (3, 1 s) at 0, 100 ms and 1.1 s (see
/// [`GarpConfig::schedule`]).
///
/// Why not keepalived's 5 + 5 after 5 s, or vip-manager's single frame: since Linux 4.13 a
/// gratuitous ARP always overrides an existing neighbour entry, so one delivered frame moves a
/// client; the quick repeat covers a single lost frame within 100 ms; the third, 1.1 s after the
/// first, covers older kernels that ignore updates within `locktime` (1 s) of the last one (why
/// MetalLB spaces them 1.1 s) and switches still learning the port. More frames add broadcast noise
/// per VIP without covering another failure mode. Both keys are settable (`garp-count` 1..=100,
/// `garp-interval` 10 ms..=60 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GarpConfig {
    pub count: u32,
    pub interval: Duration,
}

impl Default for GarpConfig {
    fn default() -> Self {
        Self {
            count: DEFAULT_GARP_COUNT,
            interval: DEFAULT_GARP_INTERVAL,
        }
    }
}

impl GarpConfig {
    /// When to send each gratuitous ARP, as offsets from the takeover (`count` items, ascending).
    pub fn schedule(&self) -> impl Iterator<Item = Duration> + use<> {
        let quick = GARP_QUICK_REPEAT.min(self.interval);
        let interval = self.interval;
        (0..self.count).map(move |i| match i {
            0 => Duration::ZERO,
            n => quick.saturating_add(interval.saturating_mul(n - 1)),
        })
    }
}

/// `xdp-mode`: how to attach the XDP program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpModeSetting {
    /// Native where the driver supports it, else the TC ingress program (tcx), else generic
    /// (never native on veth).
    #[default]
    Auto,
    /// Native (driver) mode only; also accepted as `driver`/`drv`.
    Native,
    /// Generic (skb) mode only; also accepted as `skb`.
    Generic,
    /// The TC ingress program only (tcx, Linux 6.6+); also accepted as `tcx`.
    Tc,
}

impl XdpModeSetting {
    /// The canonical config value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
            Self::Tc => "tc",
        }
    }
}

impl fmt::Display for XdpModeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<XdpModeSetting> for crate::dataplane::AttachMode {
    fn from(mode: XdpModeSetting) -> Self {
        match mode {
            XdpModeSetting::Auto => Self::Auto,
            XdpModeSetting::Native => Self::Native,
            XdpModeSetting::Generic => Self::Generic,
            XdpModeSetting::Tc => Self::Tc,
        }
    }
}

/// A secret (the etcd password): `Debug` and `Display` print `<redacted>`; the value is only
/// reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// What `Debug`, `Display` and the effective configuration print instead of the value.
    pub const REDACTED: &'static str = "<redacted>";

    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the etcd client only.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(Self::REDACTED)
    }
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// The config file (its path, or the source name given to [`from_yaml_str`]).
    File(String),
    /// A flag or its environment variable (clap merged them before we saw the value).
    Args { flag: String, env: String },
    /// A built-in default, or a fact of this host (the host name).
    Default,
}

impl Location {
    /// The location of a flag/variable pair for `key` (`--ip` / `VIP_IP`).
    fn args(key: &str) -> Self {
        Self::Args {
            flag: format!("--{key}"),
            env: format!("VIP_{}", key.to_ascii_uppercase().replace('-', "_")),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(name) => write!(f, "config file {name}"),
            Self::Args { flag, env } => write!(f, "{flag} / {env}"),
            Self::Default => f.write_str("default"),
        }
    }
}

/// Which source set which key: kept in the [`Config`] so later checks name the right place.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Provenance {
    file: Option<String>,
    keys: BTreeMap<String, Location>,
}

impl Provenance {
    /// The config file, if one was read.
    #[must_use]
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// Where `key` (e.g. `interface`, `vips[1].interface`, `etcd-ca-file`) came from;
    /// [`Location::Default`] for defaulted keys.
    #[must_use]
    pub fn location(&self, key: &str) -> Location {
        self.keys.get(key).cloned().unwrap_or(Location::Default)
    }
}

/// Severity of a [`Notice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NoticeLevel {
    /// Worth knowing (an ignored vip-manager key, a default that was applied).
    Info,
    /// Probably a mistake or a risk, but not fatal.
    Warning,
}

impl fmt::Display for NoticeLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::Warning => "warning",
        })
    }
}

/// A non-fatal finding about the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub level: NoticeLevel,
    pub location: Location,
    pub key: String,
    pub message: String,
}

impl Notice {
    /// Emit through `tracing` at the matching level.
    pub fn log(&self) {
        match self.level {
            NoticeLevel::Info => {
                tracing::info!(location = %self.location, key = %self.key, "{}", self.message)
            }
            NoticeLevel::Warning => {
                tracing::warn!(location = %self.location, key = %self.key, "{}", self.message)
            }
        }
    }
}

impl fmt::Display for Notice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: `{}`: {}",
            self.level, self.location, self.key, self.message
        )
    }
}

impl Config {
    /// Whether `other` would run the same agent (notices and provenance aside): SIGHUP restarts
    /// the agent only when this is false.
    #[must_use]
    pub fn same_effect(&self, other: &Self) -> bool {
        let Self {
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
            notices: _,
            provenance: _,
        } = self;
        *vips == other.vips
            && *etcd == other.etcd
            && *repmgr == other.repmgr
            && *patroni_interval == other.patroni_interval
            && *garp == other.garp
            && *fence_timeout == other.fence_timeout
            && *handshake == other.handshake
            && *xdp_mode == other.xdp_mode
            && *metrics_address == other.metrics_address
            && *pin_path == other.pin_path
            && *verbose == other.verbose
    }

    /// Where each Patroni-gated VIP finds Patroni, one line per VIP (for `vip-agent check`): the
    /// configured `patroni-url`, or the member key the agent reads it from at run time.
    #[must_use]
    pub fn patroni_url_notes(&self) -> Vec<String> {
        self.vips
            .iter()
            .filter(|v| v.gate.mode == GateMode::Patroni && self.repmgr.is_none())
            .map(|v| match (&v.gate.patroni_url, member_key(&v.trigger_key, &v.trigger_value)) {
                (Some(url), _) => format!("note: VIP {}: the promotion gate asks Patroni at {url} (patroni-url)", v.ip),
                (None, _) if self.patroni_interval.is_some() => format!(
                    "note: VIP {}: the promotion gate asks the Patroni the leader source asks, {} (dcs-endpoints)",
                    v.ip, self.etcd.endpoints.first().map_or("", String::as_str)
                ),
                (None, Some(key)) => format!(
                    "note: VIP {}: the promotion gate asks Patroni at the api_url Patroni writes to {key} (read at run time; {DEFAULT_PATRONI_URL} only where that key has none)",
                    v.ip
                ),
                (None, None) => format!(
                    "note: VIP {}: the promotion gate asks Patroni at {DEFAULT_PATRONI_URL} (trigger-key does not end in /leader, so there is no member key to read it from; set patroni-url)",
                    v.ip
                ),
            })
            .collect()
    }

    /// Log every notice gathered while loading.
    pub fn log_notices(&self) {
        for notice in &self.notices {
            notice.log();
        }
    }
}

/// The largest configuration file read. vip-manager's and Pigsty's files are a few hundred bytes;
/// the cap keeps `--config /dev/zero`-like mistakes (or a caller's malice) from growing memory.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Read a configuration file: a regular file (checked on the open descriptor, which is opened
/// non-blocking so that a FIFO cannot hang the read) of at most [`MAX_CONFIG_BYTES`]. Returns the
/// text and the file's mode.
fn read_config_file(path: &std::path::Path) -> std::io::Result<(String, u32)> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a directory, device, FIFO or socket)",
        ));
    }
    let mut text = String::new();
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_BYTES} bytes"),
        ));
    }
    Ok((text, meta.permissions().mode()))
}

/// Load the configuration: flags and `VIP_*` variables (already merged by clap into `args`) over
/// the YAML file named by `args.config`, over the defaults. Host checks are separate
/// ([`Config::validate_host`]).
///
/// Besides the parse notices this warns when the file holds the etcd password and is readable by
/// everyone, and when the password came as a command-line flag (visible in `ps`).
///
/// # Errors
/// [`ConfigError`] naming the file or flag, the key, and the reason; all problems found in one
/// pass come together as [`ConfigError::Several`].
pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
    let path = args.config.as_deref().filter(|p| !p.as_os_str().is_empty());
    let file = match path {
        Some(path) => {
            let read_error = |source| ConfigError::ReadFile {
                path: path.to_owned(),
                source,
            };
            let (text, mode) = read_config_file(path).map_err(read_error)?;
            Some((path.display().to_string(), text, mode))
        }
        None => None,
    };
    let source = file.as_ref().map(|(name, text, _)| parse::Source {
        name: name.as_str(),
        yaml: text.as_str(),
    });
    let mut config = parse::build(source, Some(args), &system_hostname)?;

    if let Some((name, _, mode)) = &file
        && mode & 0o004 != 0
        && matches!(
            config.provenance.location("etcd-password"),
            Location::File(_)
        )
    {
        config.notices.push(Notice {
            level: NoticeLevel::Warning,
            location: Location::File(name.clone()),
            key: "etcd-password".to_owned(),
            message: format!(
                "the file holds the etcd password and is readable by every local user \
                 (mode {:04o}); chmod 0600 it (Pigsty installs it 0600)",
                mode & 0o7777
            ),
        });
    }
    if let Some((name, _, mode)) = &file
        && mode & 0o004 != 0
        && matches!(
            config.provenance.location("patroni-password"),
            Location::File(_)
        )
    {
        config.notices.push(Notice {
            level: NoticeLevel::Warning,
            location: Location::File(name.clone()),
            key: "patroni-password".to_owned(),
            message: format!(
                "the file holds the Patroni REST API password and is readable by every local \
                 user (mode {:04o}); chmod 0600 it",
                mode & 0o7777
            ),
        });
    }
    if args.etcd_password.as_deref().is_some_and(|p| !p.is_empty())
        && std::env::var_os("VIP_ETCD_PASSWORD").is_none_or(|v| v.is_empty())
    {
        config.notices.push(Notice {
            level: NoticeLevel::Warning,
            location: Location::args("etcd-password"),
            key: "etcd-password".to_owned(),
            message: "the etcd password was given as a command-line flag, which every local user \
                      can read in `ps`; use the config file (mode 0600) or VIP_ETCD_PASSWORD"
                .to_owned(),
        });
    }
    Ok(config)
}

/// Parse a YAML document alone (no flags, no variables): for tests and `check` of a given text.
/// `source_name` names the document in messages.
///
/// # Errors
/// As [`load`].
pub fn from_yaml_str(source_name: &str, yaml: &str) -> Result<Config, ConfigError> {
    parse::build(
        Some(parse::Source {
            name: source_name,
            yaml,
        }),
        None,
        &system_hostname,
    )
}

/// The host name, as vip-manager's default `trigger-value` (Go's `os.Hostname` reads the same file).
fn system_hostname() -> Result<String, String> {
    match fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(name) if !name.trim().is_empty() => Ok(name.trim().to_owned()),
        Ok(_) => Err("the host name is empty".to_owned()),
        Err(e) => Err(format!("cannot read /proc/sys/kernel/hostname: {e}")),
    }
}
