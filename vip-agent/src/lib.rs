//! vip-agent: floating-IP failover for Patroni clusters.
//!
//! One module per effect:
//! * [`dataplane`]: the XDP program and its maps (load, attach, pin, adopt, fence/answer, detach);
//! * [`config`]: vip-manager compatible configuration (YAML, flags, environment);
//! * [`leadership`]: the source-neutral leadership contract every leader source publishes;
//! * [`leader`]: the etcd v3 watch on the Patroni leader key and leadership confirmation;
//! * [`clock`]: the kernel monotonic clock shared with the XDP program.

/// The binary's name, as installed (`/usr/bin/vip-agent`): clap, man pages, completions and the journal's syslog identifier.
pub const BIN_NAME: &str = "vip-agent";

pub mod address;
pub mod agent;
pub mod caps;
pub mod cert;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dataplane;
pub mod garp;
pub mod gate;
pub mod hooks;
pub mod http;
pub mod leader;
pub mod leadership;
pub mod logging;
pub mod metrics;
pub mod netlink;
pub mod notify;
pub mod observe;
pub mod patroni_rest;
pub mod pg;
pub mod repmgr;
pub mod status;
