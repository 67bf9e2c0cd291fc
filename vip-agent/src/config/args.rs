//! Command-line flags and `VIP_*` environment variables, as clap arguments.
//!
//! clap merges the two: a flag wins over its environment variable, and an unset flag falls back to
//! the variable. Values stay strings here; [`super::load`] interprets them with the same rules and
//! error messages as the YAML file, and the file fills whatever neither flag nor variable set.

use std::path::PathBuf;

/// The options shared by `vip-agent run` and `vip-agent check`: vip-manager's flags (same names,
/// same `VIP_*` variables) plus vip-agent's own. Flatten it into a subcommand:
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
/// Every field is optional: an empty value (`VIP_IP=`) counts as unset, as in vip-manager (viper
/// ignores empty variables), so the config file then provides it.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct ConfigArgs {
    /// YAML configuration file (vip-manager's format, plus vip-agent's keys).
    #[arg(long, env = "VIP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Virtual IP address to manage (IPv4 or IPv6).
    #[arg(long, env = "VIP_IP", value_name = "ADDR")]
    pub ip: Option<String>,
    /// Prefix length of the VIP (1..=32 for IPv4, 1..=128 for IPv6), e.g. 24.
    #[arg(long, env = "VIP_NETMASK", value_name = "PREFIX")]
    pub netmask: Option<String>,
    /// Network interface that carries the VIP.
    #[arg(long, env = "VIP_INTERFACE", value_name = "IFACE")]
    pub interface: Option<String>,
    /// Patroni leader key in etcd, e.g. /service/batman/leader.
    #[arg(long, env = "VIP_TRIGGER_KEY", value_name = "KEY")]
    pub trigger_key: Option<String>,
    /// Value of the leader key that means "this node" (Patroni's member name) [default: host name].
    #[arg(long, env = "VIP_TRIGGER_VALUE", value_name = "VALUE")]
    pub trigger_value: Option<String>,

    /// DCS type: etcd or etcd3 (both mean the etcd v3 API), or repmgr (this node's repmgr role,
    /// from repmgr's event notifications and metadata; see docs/repmgr.md).
    #[arg(long, env = "VIP_DCS_TYPE", value_name = "TYPE")]
    pub dcs_type: Option<String>,
    /// etcd endpoints, comma separated, each with http:// or https://
    /// [default: http://127.0.0.1:2379].
    #[arg(
        long,
        env = "VIP_DCS_ENDPOINTS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub dcs_endpoints: Vec<String>,
    /// etcd user name (password authentication).
    #[arg(long, env = "VIP_ETCD_USER", value_name = "USER")]
    pub etcd_user: Option<String>,
    /// etcd password. Prefer the config file (mode 0600) or the variable: flags show up in `ps`.
    #[arg(
        long,
        env = "VIP_ETCD_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
    /// CA certificate (PEM) that verifies the etcd servers.
    #[arg(long, env = "VIP_ETCD_CA_FILE", value_name = "FILE")]
    pub etcd_ca_file: Option<String>,
    /// Client certificate (PEM) for etcd; needs --etcd-key-file.
    #[arg(long, env = "VIP_ETCD_CERT_FILE", value_name = "FILE")]
    pub etcd_cert_file: Option<String>,
    /// Private key (PEM) of the client certificate; needs --etcd-cert-file.
    #[arg(long, env = "VIP_ETCD_KEY_FILE", value_name = "FILE")]
    pub etcd_key_file: Option<String>,

    /// Accepted for vip-manager compatibility and ignored: vip-agent watches, it does not poll.
    #[arg(long, env = "VIP_INTERVAL", value_name = "MS")]
    pub interval: Option<String>,
    /// Accepted for vip-manager compatibility and ignored.
    #[arg(long, env = "VIP_RETRY_AFTER", value_name = "MS")]
    pub retry_after: Option<String>,
    /// Accepted for vip-manager compatibility and ignored.
    #[arg(long, env = "VIP_RETRY_NUM", value_name = "N")]
    pub retry_num: Option<String>,
    /// Only `basic` (local address, ARP answered in XDP) is supported.
    #[arg(long, env = "VIP_MANAGER_TYPE", value_name = "TYPE")]
    pub manager_type: Option<String>,
    /// Debug logging: `--verbose`, `--verbose=false`, VIP_VERBOSE=true (also yes/no, on/off, 1/0).
    /// A string so that an empty VIP_VERBOSE counts as unset, like every other variable.
    #[arg(
        long,
        env = "VIP_VERBOSE",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub verbose: Option<String>,

    /// Gratuitous ARPs sent when this node takes the VIP over [default: 3].
    #[arg(long, env = "VIP_GARP_COUNT", value_name = "N")]
    pub garp_count: Option<String>,
    /// Spacing of the gratuitous ARPs after the first two, e.g. 1s or 1000 (ms) [default: 1s].
    #[arg(long, env = "VIP_GARP_INTERVAL", value_name = "DURATION")]
    pub garp_interval: Option<String>,
    /// How long a node that lost (or cannot confirm) leadership keeps fencing, e.g. 2s
    /// [default: until the observed leader-key lease expires].
    #[arg(long, env = "VIP_FENCE_TIMEOUT", value_name = "DURATION")]
    pub fence_timeout: Option<String>,
    /// Answer only once every other agent of the key has recorded in etcd that it fenced:
    /// true or false [default: true].
    #[arg(long, env = "VIP_FENCE_HANDSHAKE", value_name = "BOOL")]
    pub fence_handshake: Option<String>,
    /// TTL of this agent's fence record in etcd, whole seconds, 2s..60s; Patroni's `ttl` is a
    /// good value [default: 30s].
    #[arg(long, env = "VIP_FENCE_RECORD_TTL", value_name = "DURATION")]
    pub fence_record_ttl: Option<String>,
    /// etcd prefix of the fence records [default: /vip-agent].
    #[arg(long, env = "VIP_FENCE_RECORD_PREFIX", value_name = "PREFIX")]
    pub fence_record_prefix: Option<String>,
    /// XDP attach mode: auto, native or generic [default: auto].
    #[arg(long, env = "VIP_XDP_MODE", value_name = "MODE")]
    pub xdp_mode: Option<String>,
    /// Address of the Prometheus metrics endpoint [default: 127.0.0.1:9477].
    #[arg(long, env = "VIP_METRICS_ADDRESS", value_name = "IP:PORT")]
    pub metrics_address: Option<String>,
    /// bpffs directory for the pinned XDP program and maps [default: /sys/fs/bpf/vip-agent].
    #[arg(long, env = "VIP_PIN_PATH", value_name = "DIR")]
    pub pin_path: Option<String>,

    /// What must hold before a new primary answers: patroni, postgres or off [default: patroni].
    #[arg(long, env = "VIP_PROMOTION_GATE", value_name = "GATE")]
    pub promotion_gate: Option<String>,
    /// Poll period while the promotion gate waits, e.g. 5ms [default: 5ms].
    #[arg(long, env = "VIP_PROMOTION_GATE_INTERVAL", value_name = "DURATION")]
    pub promotion_gate_interval: Option<String>,
    /// Answer anyway after the promotion gate waited this long, e.g. 10s [default: 10s].
    #[arg(long, env = "VIP_PROMOTION_GATE_TIMEOUT", value_name = "DURATION")]
    pub promotion_gate_timeout: Option<String>,
    /// Patroni's REST API on this node [default: http://127.0.0.1:8008].
    #[arg(long, env = "VIP_PATRONI_URL", value_name = "URL")]
    pub patroni_url: Option<String>,
    /// CA certificate (PEM) that verifies Patroni's REST API certificate (https).
    #[arg(long, env = "VIP_PATRONI_CA_FILE", value_name = "FILE")]
    pub patroni_ca_file: Option<String>,
    /// Client certificate (PEM) for Patroni's REST API; needs --patroni-key-file.
    #[arg(long, env = "VIP_PATRONI_CERT_FILE", value_name = "FILE")]
    pub patroni_cert_file: Option<String>,
    /// Private key (PEM) of the Patroni client certificate; needs --patroni-cert-file.
    #[arg(long, env = "VIP_PATRONI_KEY_FILE", value_name = "FILE")]
    pub patroni_key_file: Option<String>,
    /// User of Patroni's REST API basic authentication (restapi.authentication.username).
    #[arg(long, env = "VIP_PATRONI_USER", value_name = "USER")]
    pub patroni_user: Option<String>,
    /// Password of Patroni's REST API basic authentication. Prefer the file or the variable.
    #[arg(
        long,
        env = "VIP_PATRONI_PASSWORD",
        value_name = "PASSWORD",
        hide_env_values = true
    )]
    pub patroni_password: Option<String>,
    /// Connection string of the local PostgreSQL for `--promotion-gate postgres`.
    #[arg(
        long,
        env = "VIP_POSTGRES_DSN",
        value_name = "DSN",
        hide_env_values = true
    )]
    pub postgres_dsn: Option<String>,
    /// While etcd is unreachable, keep answering past the lease deadline as long as Patroni's
    /// REST API reports this member a running primary in failsafe mode: true or false
    /// [default: false].
    #[arg(long, env = "VIP_PATRONI_FAILSAFE", value_name = "BOOL")]
    pub patroni_failsafe: Option<String>,

    /// Shell command run after this node started answering for the VIP (see docs/hooks.md).
    #[arg(long, env = "VIP_ON_PROMOTE", value_name = "COMMAND")]
    pub on_promote: Option<String>,
    /// Shell command run after this node stopped answering for the VIP.
    #[arg(long, env = "VIP_ON_DEMOTE", value_name = "COMMAND")]
    pub on_demote: Option<String>,
    /// Kill a hook attempt after this long, e.g. 30s [default: 30s].
    #[arg(long, env = "VIP_HOOK_TIMEOUT", value_name = "DURATION")]
    pub hook_timeout: Option<String>,
    /// Attempts after a failed hook, 1 s apart [default: 2].
    #[arg(long, env = "VIP_HOOK_RETRIES", value_name = "N")]
    pub hook_retries: Option<String>,

    /// With --dcs-type repmgr: this node's node_id in repmgr.conf (required there).
    #[arg(long, env = "VIP_REPMGR_NODE_ID", value_name = "ID")]
    pub repmgr_node_id: Option<String>,
    /// With --dcs-type repmgr: the socket `vip-agent event` talks to
    /// [default: /run/vip-agent/repmgr.sock].
    #[arg(long, env = "VIP_REPMGR_SOCKET", value_name = "PATH")]
    pub repmgr_socket: Option<String>,
    /// With --dcs-type repmgr: a group whose members may send events (socket mode 0660)
    /// [default: root only, 0600].
    #[arg(long, env = "VIP_REPMGR_SOCKET_GROUP", value_name = "GROUP")]
    pub repmgr_socket_group: Option<String>,
    /// With --dcs-type repmgr: period of the pg_is_in_recovery() check, 100ms..=10s
    /// [default: 1s].
    #[arg(long, env = "VIP_REPMGR_CHECK_INTERVAL", value_name = "DURATION")]
    pub repmgr_check_interval: Option<String>,
    /// With --dcs-type repmgr: where the last accepted role event is kept
    /// [default: /var/lib/vip-agent/repmgr.state].
    #[arg(long, env = "VIP_REPMGR_STATE_FILE", value_name = "FILE")]
    pub repmgr_state_file: Option<String>,
    /// With --dcs-type repmgr: how long a primary keeps renewing without a majority of repmgr's
    /// nodes reachable, 1s..=300s [default: 5s].
    #[arg(long, env = "VIP_REPMGR_QUORUM_HOLD", value_name = "DURATION")]
    pub repmgr_quorum_hold: Option<String>,
    /// With --dcs-type repmgr: passwords for the other nodes' conninfo, in libpq's .pgpass format.
    #[arg(long, env = "VIP_REPMGR_PASSFILE", value_name = "FILE")]
    pub repmgr_passfile: Option<String>,
}

/// One string-valued argument: the config key it sets, its flag, its variable and its value.
pub(super) struct ArgValue<'a> {
    pub(super) key: &'static str,
    pub(super) flag: &'static str,
    pub(super) env: &'static str,
    pub(super) value: &'a Option<String>,
}

impl ConfigArgs {
    /// The string-valued arguments with their config key names (all but `config` and
    /// `dcs-endpoints`, which have their own types).
    pub(super) fn string_values(&self) -> [ArgValue<'_>; 47] {
        let Self {
            config: _,
            ip,
            netmask,
            interface,
            trigger_key,
            trigger_value,
            dcs_type,
            dcs_endpoints: _,
            etcd_user,
            etcd_password,
            etcd_ca_file,
            etcd_cert_file,
            etcd_key_file,
            interval,
            retry_after,
            retry_num,
            manager_type,
            verbose,
            garp_count,
            garp_interval,
            fence_timeout,
            fence_handshake,
            fence_record_ttl,
            fence_record_prefix,
            xdp_mode,
            metrics_address,
            pin_path,
            promotion_gate,
            promotion_gate_interval,
            promotion_gate_timeout,
            patroni_url,
            patroni_ca_file,
            patroni_cert_file,
            patroni_key_file,
            patroni_user,
            patroni_password,
            postgres_dsn,
            patroni_failsafe,
            on_promote,
            on_demote,
            hook_timeout,
            hook_retries,
            repmgr_node_id,
            repmgr_socket,
            repmgr_socket_group,
            repmgr_check_interval,
            repmgr_state_file,
            repmgr_quorum_hold,
            repmgr_passfile,
        } = self;
        macro_rules! arg {
            ($key:literal, $env:literal, $value:expr) => {
                ArgValue {
                    key: $key,
                    flag: concat!("--", $key),
                    env: $env,
                    value: $value,
                }
            };
        }
        [
            arg!("ip", "VIP_IP", ip),
            arg!("netmask", "VIP_NETMASK", netmask),
            arg!("interface", "VIP_INTERFACE", interface),
            arg!("trigger-key", "VIP_TRIGGER_KEY", trigger_key),
            arg!("trigger-value", "VIP_TRIGGER_VALUE", trigger_value),
            arg!("dcs-type", "VIP_DCS_TYPE", dcs_type),
            arg!("etcd-user", "VIP_ETCD_USER", etcd_user),
            arg!("etcd-password", "VIP_ETCD_PASSWORD", etcd_password),
            arg!("etcd-ca-file", "VIP_ETCD_CA_FILE", etcd_ca_file),
            arg!("etcd-cert-file", "VIP_ETCD_CERT_FILE", etcd_cert_file),
            arg!("etcd-key-file", "VIP_ETCD_KEY_FILE", etcd_key_file),
            arg!("interval", "VIP_INTERVAL", interval),
            arg!("retry-after", "VIP_RETRY_AFTER", retry_after),
            arg!("retry-num", "VIP_RETRY_NUM", retry_num),
            arg!("manager-type", "VIP_MANAGER_TYPE", manager_type),
            arg!("verbose", "VIP_VERBOSE", verbose),
            arg!("garp-count", "VIP_GARP_COUNT", garp_count),
            arg!("garp-interval", "VIP_GARP_INTERVAL", garp_interval),
            arg!("fence-timeout", "VIP_FENCE_TIMEOUT", fence_timeout),
            arg!("fence-handshake", "VIP_FENCE_HANDSHAKE", fence_handshake),
            arg!("fence-record-ttl", "VIP_FENCE_RECORD_TTL", fence_record_ttl),
            arg!(
                "fence-record-prefix",
                "VIP_FENCE_RECORD_PREFIX",
                fence_record_prefix
            ),
            arg!("xdp-mode", "VIP_XDP_MODE", xdp_mode),
            arg!("metrics-address", "VIP_METRICS_ADDRESS", metrics_address),
            arg!("pin-path", "VIP_PIN_PATH", pin_path),
            arg!("promotion-gate", "VIP_PROMOTION_GATE", promotion_gate),
            arg!(
                "promotion-gate-interval",
                "VIP_PROMOTION_GATE_INTERVAL",
                promotion_gate_interval
            ),
            arg!(
                "promotion-gate-timeout",
                "VIP_PROMOTION_GATE_TIMEOUT",
                promotion_gate_timeout
            ),
            arg!("patroni-url", "VIP_PATRONI_URL", patroni_url),
            arg!("patroni-ca-file", "VIP_PATRONI_CA_FILE", patroni_ca_file),
            arg!(
                "patroni-cert-file",
                "VIP_PATRONI_CERT_FILE",
                patroni_cert_file
            ),
            arg!("patroni-key-file", "VIP_PATRONI_KEY_FILE", patroni_key_file),
            arg!("patroni-user", "VIP_PATRONI_USER", patroni_user),
            arg!("patroni-password", "VIP_PATRONI_PASSWORD", patroni_password),
            arg!("postgres-dsn", "VIP_POSTGRES_DSN", postgres_dsn),
            arg!("patroni-failsafe", "VIP_PATRONI_FAILSAFE", patroni_failsafe),
            arg!("on-promote", "VIP_ON_PROMOTE", on_promote),
            arg!("on-demote", "VIP_ON_DEMOTE", on_demote),
            arg!("hook-timeout", "VIP_HOOK_TIMEOUT", hook_timeout),
            arg!("hook-retries", "VIP_HOOK_RETRIES", hook_retries),
            arg!("repmgr-node-id", "VIP_REPMGR_NODE_ID", repmgr_node_id),
            arg!("repmgr-socket", "VIP_REPMGR_SOCKET", repmgr_socket),
            arg!(
                "repmgr-socket-group",
                "VIP_REPMGR_SOCKET_GROUP",
                repmgr_socket_group
            ),
            arg!(
                "repmgr-check-interval",
                "VIP_REPMGR_CHECK_INTERVAL",
                repmgr_check_interval
            ),
            arg!(
                "repmgr-state-file",
                "VIP_REPMGR_STATE_FILE",
                repmgr_state_file
            ),
            arg!(
                "repmgr-quorum-hold",
                "VIP_REPMGR_QUORUM_HOLD",
                repmgr_quorum_hold
            ),
            arg!("repmgr-passfile", "VIP_REPMGR_PASSFILE", repmgr_passfile),
        ]
    }
}
