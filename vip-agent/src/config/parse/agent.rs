//! The agent's own settings: gratuitous ARP, fencing and its handshake, XDP, metrics, pins.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    DEFAULT_METRICS_ADDRESS, DEFAULT_PIN_PATH, Diag, Fields, GarpConfig, XdpModeSetting, suggest,
    values,
};

/// Upper and lower bounds of the settable numbers, with the reasons in the messages.
const GARP_COUNT_MAX: u64 = 100;
const GARP_INTERVAL_MIN: Duration = Duration::from_millis(10);
const GARP_INTERVAL_MAX: Duration = Duration::from_secs(60);

pub(super) fn garp(top: &Fields, diag: &mut Diag) -> GarpConfig {
    let mut garp = GarpConfig::default();
    if let Some((n, location)) = top.read(diag, "garp-count", values::unsigned) {
        match u32::try_from(n) {
            Ok(n @ 1..) if u64::from(n) <= GARP_COUNT_MAX => garp.count = n,
            _ => diag.invalid(
                &location,
                "garp-count",
                format!(
                    "{n} is out of range 1..={GARP_COUNT_MAX}: at least one gratuitous ARP is \
                     needed (without it clients keep the old MAC for up to ~50 s), and more than \
                     {GARP_COUNT_MAX} is a broadcast storm"
                ),
            ),
        }
    }
    if let Some(((d, _), location)) = top.read(diag, "garp-interval", values::duration) {
        if (GARP_INTERVAL_MIN..=GARP_INTERVAL_MAX).contains(&d) {
            garp.interval = d;
        } else {
            diag.invalid(
                &location,
                "garp-interval",
                values::duration_out_of_range(d, GARP_INTERVAL_MIN, GARP_INTERVAL_MAX),
            );
        }
    }
    garp
}

/// Bounds of `fence-record-ttl`: etcd refuses leases under its minimum TTL (1.5 × the election
/// timeout, 2 s rounded up at etcd's defaults); a record lease longer than a minute would let a
/// dead agent hold up failovers longer than any Patroni `ttl` in use.
const RECORD_TTL_MIN: Duration = Duration::from_secs(2);
const RECORD_TTL_MAX: Duration = Duration::from_secs(60);

pub(super) fn handshake(
    top: &Fields,
    repmgr_mode: bool,
    diag: &mut Diag,
) -> Option<crate::config::HandshakeSettings> {
    let on = top
        .read(diag, "fence-handshake", values::boolean)
        .is_none_or(|(on, _)| on);
    let mut settings = crate::config::HandshakeSettings::default();
    if let Some(((d, _), location)) = top.read(diag, "fence-record-ttl", values::duration) {
        if d < RECORD_TTL_MIN || d > RECORD_TTL_MAX {
            diag.invalid(
                &location,
                "fence-record-ttl",
                values::duration_out_of_range(d, RECORD_TTL_MIN, RECORD_TTL_MAX),
            );
        } else if d.subsec_nanos() != 0 {
            diag.invalid(
                &location,
                "fence-record-ttl",
                format!(
                    "{d:?}: etcd leases last whole seconds; write \"{}s\"",
                    d.as_secs() + 1
                ),
            );
        } else {
            settings.ttl = d;
        }
    }
    if let Some((prefix, location)) = top.text(diag, "fence-record-prefix") {
        let prefix = prefix.trim().trim_end_matches('/').to_owned();
        if !prefix.starts_with('/') || prefix.len() < 2 || prefix.contains("//") {
            diag.invalid(
                &location,
                "fence-record-prefix",
                format!(
                    "{prefix:?}: an etcd key prefix such as /vip-agent (absolute, not /, no empty \
                     segment)"
                ),
            );
        } else {
            settings.prefix = prefix;
        }
    }
    (on && !repmgr_mode).then_some(settings)
}

pub(super) fn fence_timeout(top: &Fields, diag: &mut Diag) -> Option<Duration> {
    let ((d, bare), location) = top.read(diag, "fence-timeout", values::duration)?;
    if d.is_zero() {
        diag.invalid(
            &location,
            "fence-timeout",
            "must be longer than 0; leave it unset to fence until the leader key's lease expires"
                .to_owned(),
        );
        return None;
    }
    if bare && d < Duration::from_millis(100) {
        diag.warn(
            &location,
            "fence-timeout",
            format!(
                "{} ms: a bare number is milliseconds (as everywhere in vip-manager's config); \
                 write \"{}s\" if seconds were meant",
                d.as_millis(),
                d.as_millis()
            ),
        );
    }
    Some(d)
}

pub(super) fn xdp_mode(top: &Fields, diag: &mut Diag) -> XdpModeSetting {
    let Some((text, location)) = top.text(diag, "xdp-mode") else {
        return XdpModeSetting::default();
    };
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => XdpModeSetting::Auto,
        "native" | "driver" | "drv" => XdpModeSetting::Native,
        "generic" | "skb" => XdpModeSetting::Generic,
        "tc" | "tcx" => XdpModeSetting::Tc,
        other => {
            diag.invalid(
                &location,
                "xdp-mode",
                format!(
                    "unknown mode {other:?}{}; expected auto, native, generic or tc",
                    suggest(other, &["auto", "native", "generic", "tc"])
                ),
            );
            XdpModeSetting::default()
        }
    }
}

pub(super) fn metrics_address(top: &Fields, diag: &mut Diag) -> SocketAddr {
    let Some((text, location)) = top.text(diag, "metrics-address") else {
        return DEFAULT_METRICS_ADDRESS;
    };
    let t = text.trim();
    match t.parse::<SocketAddr>() {
        Ok(addr) => {
            if !addr.ip().is_loopback() {
                diag.info(
                    &location,
                    "metrics-address",
                    format!(
                        "metrics are served on {addr}, beyond loopback, without authentication"
                    ),
                );
            }
            addr
        }
        Err(_) => {
            let hint = if t.parse::<IpAddr>().is_ok() {
                format!(" (add a port, e.g. {t}:9477 or [{t}]:9477 for IPv6)")
            } else if t.starts_with(':') {
                format!(" (write 0.0.0.0{t} for every IPv4 address)")
            } else {
                " (IP:PORT, e.g. 127.0.0.1:9477; host names are not resolved)".to_owned()
            };
            diag.invalid(
                &location,
                "metrics-address",
                format!("{t:?} is not an IP:PORT socket address{hint}"),
            );
            DEFAULT_METRICS_ADDRESS
        }
    }
}

pub(super) fn pin_path(top: &Fields, diag: &mut Diag) -> PathBuf {
    let Some((text, location)) = top.text(diag, "pin-path") else {
        return PathBuf::from(DEFAULT_PIN_PATH);
    };
    let path = Path::new(text.trim());
    if !path.is_absolute() {
        diag.invalid(
            &location,
            "pin-path",
            format!(
                "{} is not an absolute path (a directory on bpffs, e.g. {DEFAULT_PIN_PATH})",
                path.display()
            ),
        );
    }
    path.to_path_buf()
}
