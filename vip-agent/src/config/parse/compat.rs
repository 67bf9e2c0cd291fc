//! vip-manager's selectors (`dcs-type`, `manager-type`) and the keys vip-agent refuses or
//! accepts and ignores (`consul-token`, `interval`, `retry-*`, `hosting-type`).

use serde_norway::Value;

use std::{collections::BTreeMap, time::Duration};

use super::{Diag, Entry, Fields, Location, suggest, values};

/// `hosting-type` (and the pre-1.0 `hosting_type`/`hostingtype`): vip-manager 5 never reads it.
pub(super) fn hosting_type_notice(key: &str, value: &Value, location: &Location, diag: &mut Diag) {
    let shown = values::text(value).unwrap_or_else(|_| values::kind(value).to_owned());
    let tail = if shown == "basic" {
        String::new()
    } else {
        format!(
            "; note that vip-manager ran `manager-type: basic` whatever `{key}: {shown}` said, \
             and so does vip-agent"
        )
    };
    diag.warn(
        location,
        key,
        format!(
            "ignored: vip-manager never read `{key}` (its key is `manager-type`; Pigsty writes \
             `hosting-type: basic` regardless){tail}"
        ),
    );
}

/// `dcs-type: patroni`: vip-manager's defaults (`trigger-key` `/leader`, `trigger-value` `200`,
/// `dcs-endpoints` Patroni's local REST API) where unset; `interval` (1 s) is the poll period.
/// `None` in any other mode.
pub(super) fn prepare_patroni(
    map: &mut BTreeMap<String, Entry>,
    diag: &mut Diag,
) -> Option<Duration> {
    let dcs = map
        .get("dcs-type")
        .and_then(|e| values::text(&e.value).ok());
    if dcs.is_none_or(|t| t.trim() != "patroni") {
        return None;
    }
    for (key, default) in [
        ("trigger-key", "/leader"),
        ("trigger-value", "200"),
        ("dcs-endpoints", crate::config::DEFAULT_PATRONI_URL),
    ] {
        map.entry(key.to_owned()).or_insert(Entry {
            value: Value::String(default.to_owned()),
            location: Location::Default,
        });
    }
    let Some(entry) = map.remove("interval") else {
        return Some(crate::config::DEFAULT_PATRONI_INTERVAL);
    };
    let (min, max) = (Duration::from_millis(10), Duration::from_secs(10));
    match values::duration(&entry.value) {
        Ok((d, _)) if (min..=max).contains(&d) => return Some(d),
        Ok((d, _)) => diag.invalid(
            &entry.location,
            "interval",
            values::duration_out_of_range(d, min, max),
        ),
        Err(reason) => diag.invalid(&entry.location, "interval", reason),
    }
    Some(crate::config::DEFAULT_PATRONI_INTERVAL)
}

/// `dcs-type: patroni` (`interval` is `Some`): what does nothing there is said, with the key's
/// location. etcd's credentials are not sent to Patroni (its are `patroni-user` /
/// `patroni-password`); `patroni-failsafe` extends an etcd lease, and there is none; a
/// `fence-timeout` at or below `interval` lets the deadline pass between two polls.
pub(super) fn check_patroni(
    interval: Option<Duration>,
    fence_timeout: Option<Duration>,
    top: &Fields,
    diag: &mut Diag,
) {
    let Some(interval) = interval else {
        return;
    };
    for (key, why) in [
        (
            "etcd-user",
            "Patroni's REST API is asked, not etcd; its credentials are patroni-user and \
             patroni-password",
        ),
        (
            "etcd-password",
            "Patroni's REST API is asked, not etcd; its credentials are patroni-user and \
             patroni-password",
        ),
        (
            "patroni-failsafe",
            "it holds the VIP past an etcd lease, and there is none: the VIP stays at most \
             fence-timeout (or three intervals) after Patroni's last answer",
        ),
    ] {
        top.warn_if_set(
            diag,
            key,
            format!("ignored with `dcs-type: patroni`: {why}"),
        );
    }
    if let Some(f) = fence_timeout
        && f <= interval
    {
        top.warn_if_set(
            diag,
            "fence-timeout",
            format!(
                "{} is not more than interval ({}): with `dcs-type: patroni` the deadline passes \
                 between two polls of Patroni and the VIP goes silent while this node leads",
                values::format_duration(f),
                values::format_duration(interval)
            ),
        );
    }
}

/// vip-manager keys that select something we do not do, or that we ignore.
pub(super) fn compat_keys(top: &Fields, diag: &mut Diag) {
    if let Some((dcs, location)) = top.text(diag, "dcs-type") {
        match dcs.trim() {
            "etcd" | "etcd3" | "repmgr" | "patroni" => {}
            "consul" => diag.unsupported(
                &location,
                "dcs-type",
                "`consul` is not supported: vip-agent follows Patroni's leader key in etcd v3 \
                 (dcs-type `etcd` or `etcd3`), Patroni's REST API (`patroni`) or repmgr \
                 (`repmgr`)"
                    .to_owned(),
            ),
            other => diag.invalid(
                &location,
                "dcs-type",
                format!(
                    "unknown dcs-type {other:?}{}; vip-agent supports `etcd` and `etcd3` (both the \
                     etcd v3 API), `repmgr` (repmgr event notifications) and `patroni` (Patroni's \
                     REST API)",
                    suggest(other, &["etcd", "etcd3", "consul", "patroni", "repmgr"])
                ),
            ),
        }
    }
    if let Some((manager, location)) = top.text(diag, "manager-type") {
        match manager.trim() {
            "basic" => {}
            "hetzner" => diag.unsupported(
                &location,
                "manager-type",
                "`hetzner` (Hetzner Robot failover API) is not built in: keep `manager-type: \
                 basic` and route the failover IP to this server from an `on-promote` hook \
                 (the recipe: \"Hetzner failover IP\" in docs/hooks.md)"
                    .to_owned(),
            ),
            other => diag.invalid(
                &location,
                "manager-type",
                format!(
                    "unknown manager-type {other:?}{} (vip-manager silently fell back to `basic`; \
                     vip-agent refuses): only `basic` is supported",
                    suggest(other, &["basic", "hetzner"])
                ),
            ),
        }
    }
    if let Some(entry) = top.get(diag, "consul-token") {
        let location = entry.location.clone();
        diag.unsupported(
            &location,
            "consul-token",
            "Consul is not supported (vip-agent follows etcd v3 only); remove `consul-token`"
                .to_owned(),
        );
    }
    for (key, why) in [
        (
            "interval",
            "vip-agent watches the leader key instead of polling, so there is no poll interval",
        ),
        (
            "retry-after",
            "vip-manager 4+ does not use it either; vip-agent retries etcd on its own schedule",
        ),
        (
            "retry-num",
            "vip-manager 4+ does not use it either; vip-agent retries etcd on its own schedule",
        ),
    ] {
        if let Some((n, location)) = top.read(diag, key, values::unsigned) {
            diag.info(
                &location,
                key,
                format!("{n} accepted for vip-manager compatibility and ignored: {why}"),
            );
        }
    }
    if let Some(entry) = top.get(diag, "hosting-type") {
        let (value, location) = (entry.value.clone(), entry.location.clone());
        hosting_type_notice("hosting-type", &value, &location, diag);
    }
}
