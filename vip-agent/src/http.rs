//! HTTP, on the hyper 1.x that tonic already links: the daemon's metrics, health and status
//! server ([`server`]).

pub mod server;
