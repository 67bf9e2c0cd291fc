//! HTTP, on the hyper 1.x that tonic already links:
//!
//! * [`server`]: the daemon's metrics, health and status endpoints;
//! * [`get`]: a blocking `GET` for `vip-agent status`.

pub mod get;
pub mod server;
