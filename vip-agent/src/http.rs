//! HTTP, in both directions, on the hyper that tonic already links.
//!
//! * [`client`]: HTTP/1.1 requests over one connection (plain TCP, TLS, or any byte stream), with
//!   the whole exchange under a timeout and the body bounded;
//! * [`server`]: the daemon's `/metrics`, `/health`, `/primary`, `/replica` and `/status`.

pub mod client;
pub mod server;
