//! Typed readings of single values (YAML scalars or flag strings), each failing with a reason
//! that the caller wraps with the source and key.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde_norway::Value;

/// What kind of YAML value this is, for messages ("expected a string, got a list").
pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A scalar as text: strings as they are, numbers and booleans as written (`trigger-value: 1`).
pub(super) fn text(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        other => Err(format!("expected a string, got {}", kind(other))),
    }
}

/// A non-negative integer, from a YAML number or a decimal string.
pub(super) fn unsigned(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("expected a non-negative whole number, got {n}")),
        Value::String(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("expected a non-negative whole number, got {s:?}")),
        other => Err(format!("expected a whole number, got {}", kind(other))),
    }
}

/// A boolean: YAML `true`/`false`, or the strings vip-manager's flags and variables accept.
pub(super) fn boolean(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" | "t" | "y" => Ok(true),
            "false" | "no" | "off" | "0" | "f" | "n" => Ok(false),
            _ => Err(format!("expected true or false, got {s:?}")),
        },
        Value::Number(n) => match n.as_u64() {
            Some(0) => Ok(false),
            Some(1) => Ok(true),
            _ => Err(format!("expected true or false, got {n}")),
        },
        other => Err(format!("expected true or false, got {}", kind(other))),
    }
}

/// A duration: a whole number of milliseconds (vip-manager's convention) or a string such as
/// `"500ms"`, `"2s"`, `"1.5s"`, `"1m30s"`. The flag says whether it was a bare number (ms).
pub(super) fn duration(value: &Value) -> Result<(Duration, bool), String> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .map(|ms| (Duration::from_millis(ms), true))
            .ok_or_else(|| {
                format!("expected milliseconds (a whole number) or a string like \"2s\", got {n}")
            }),
        Value::String(s) => {
            let bare = !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit());
            parse_duration(s).map(|d| (d, bare))
        }
        other => Err(format!(
            "expected a duration (milliseconds, or a string like \"2s\"), got {}",
            kind(other)
        )),
    }
}

const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("min", 60_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parse `"250"` (ms), `"250ms"`, `"2s"`, `"1.5s"`, `"1m30s"`, `"1h"`; units ns, us, ms, s, m (or
/// min), h; spaces between parts are allowed.
pub(super) fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    let bad = |why: &str| {
        format!(
            "{input:?} is not a duration ({why}); write milliseconds (\"1500\") or number+unit \
             (\"1.5s\", \"250ms\", \"1m30s\"; units ns, us, ms, s, m, h)"
        )
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| bad("too large"));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits_end);
        if number.is_empty() {
            return Err(bad("expected a number"));
        }
        let after = after.trim_start();
        let unit_end = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                bad("a number without a unit")
            } else {
                bad(&format!("unknown unit {unit:?}"))
            });
        };
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(bad("malformed number"));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("too large"))?
        };
        let mut part = whole.checked_mul(scale).ok_or_else(|| bad("too large"))?;
        let mut place = scale;
        for digit in frac.bytes() {
            place /= 10;
            part += u128::from(digit - b'0') * place;
        }
        total = total.checked_add(part).ok_or_else(|| bad("too large"))?;
        rest = after.trim_start();
    }
    let secs = u64::try_from(total / 1_000_000_000).map_err(|_| bad("too large"))?;
    let nanos = u32::try_from(total % 1_000_000_000).map_err(|_| bad("too large"))?;
    Ok(Duration::new(secs, nanos))
}

/// "`d` is out of range `min..=max`", the durations written as in the configuration.
pub(super) fn duration_out_of_range(d: Duration, min: Duration, max: Duration) -> String {
    format!(
        "{} is out of range {}..={}",
        format_duration(d),
        format_duration(min),
        format_duration(max)
    )
}

/// Format a duration so that [`parse_duration`] reads it back exactly, in the largest unit that
/// divides it.
pub(super) fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, scale) in [
        ("h", 3_600_000_000_000_u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns != 0 && ns.is_multiple_of(scale) {
            return format!("{}{unit}", ns / scale);
        }
    }
    if ns == 0 {
        "0s".to_owned()
    } else {
        format!("{ns}ns")
    }
}

/// The parsed VIP, or why not.
pub(super) enum IpReading {
    Ip(IpAddr),
    Bad(String),
}

/// Read `ip`: an IPv4 or IPv6 address; `address/nn` gets a hint to put the prefix into `netmask`.
pub(super) fn ip(text: &str) -> IpReading {
    let t = text.trim();
    match t.parse::<IpAddr>() {
        Ok(ip) => IpReading::Ip(ip),
        Err(_) => match t.split_once('/') {
            Some((addr, prefix)) if addr.parse::<IpAddr>().is_ok() => IpReading::Bad(format!(
                "{t:?} is an address with a prefix: write `ip: {addr}` and `netmask: {prefix}` \
                 (vip-manager keeps them apart)"
            )),
            _ => IpReading::Bad(format!("{t:?} is not an IPv4 or IPv6 address")),
        },
    }
}

/// Why an address cannot be a VIP with this prefix, if it cannot.
pub(super) fn vip_address_problem(ip: IpAddr, prefix_len: u8) -> Option<String> {
    let reason = match ip {
        IpAddr::V4(v4) => ipv4_problem(v4, prefix_len)?,
        IpAddr::V6(v6) => ipv6_problem(v6, prefix_len)?,
    };
    Some(format!("{ip}/{prefix_len} {reason}"))
}

fn ipv4_problem(ip: Ipv4Addr, prefix_len: u8) -> Option<&'static str> {
    let o = ip.octets();
    Some(if ip.is_unspecified() || o[0] == 0 {
        "is in 0.0.0.0/8 (\"this network\"), not a usable address"
    } else if ip.is_loopback() {
        "is a loopback address: it never leaves the host, so it cannot float between nodes"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ip.is_broadcast() {
        "is the limited broadcast address"
    } else if o[0] >= 240 {
        "is in 240.0.0.0/4 (reserved)"
    } else if prefix_len <= 30 {
        let host_mask = u32::MAX >> prefix_len;
        let host = ip.to_bits() & host_mask;
        if host == 0 {
            "is the network address of its subnet"
        } else if host == host_mask {
            "is the broadcast address of its subnet"
        } else {
            return None;
        }
    } else {
        return None;
    })
}

fn ipv6_problem(ip: Ipv6Addr, prefix_len: u8) -> Option<&'static str> {
    let bits = ip.to_bits();
    Some(if ip.is_unspecified() {
        "is the unspecified address"
    } else if ip.is_loopback() {
        "is the loopback address: it never leaves the host, so it cannot float between nodes"
    } else if ip.is_multicast() {
        "is a multicast address"
    } else if ip.to_ipv4_mapped().is_some() {
        "is an IPv4-mapped address: write the IPv4 address itself"
    } else if bits >> 118 == 0x3fa {
        "is link-local (fe80::/10): such an address belongs to one link's own scope and needs a \
         zone; use a global or unique-local (fd00::/8) address"
    } else if prefix_len <= 126 && bits & (u128::MAX >> prefix_len) == 0 {
        "is the subnet-router anycast address of its prefix (RFC 4291 2.6.1)"
    } else {
        return None;
    })
}

/// Read `netmask`: a prefix length, 1..=32 for an IPv4 VIP and 1..=128 for an IPv6 one
/// (`max`). A dotted mask gets a hint with its prefix length.
pub(super) fn prefix_len(value: &Value, max: u8) -> Result<u8, String> {
    let n = match value {
        Value::String(s) if s.contains('.') => {
            let hint = match s.trim().parse::<Ipv4Addr>() {
                Ok(mask) if mask.to_bits().leading_ones() == mask.to_bits().count_ones() => {
                    format!(" ({s} is {})", mask.to_bits().count_ones())
                }
                _ => String::new(),
            };
            return Err(format!(
                "{s:?} is a dotted mask; `netmask` takes a prefix length as in vip-manager, \
                 e.g. 24{hint}"
            ));
        }
        other => unsigned(other).map_err(|e| format!("{e}; expected a prefix length 1..={max}"))?,
    };
    match u8::try_from(n) {
        Ok(p) if (1..=max).contains(&p) => Ok(p),
        _ if max == 32 => Err(format!(
            "prefix length {n} is out of range 1..=32 (vip-manager silently used the classful \
             default mask instead; vip-agent refuses)"
        )),
        _ => Err(format!(
            "prefix length {n} is out of range 1..={max} for an IPv6 VIP"
        )),
    }
}

/// Check an interface name the way the kernel would (`dev_valid_name`), plus the alias trap.
pub(super) fn interface_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".to_owned())
    } else if name.len() > 15 {
        Some(format!("{name:?} is longer than 15 bytes (IFNAMSIZ)"))
    } else if name == "."
        || name == ".."
        || name.contains('/')
        || name.contains(char::is_whitespace)
    {
        Some(format!("{name:?} is not a valid interface name"))
    } else if let Some((base, _)) = name.split_once(':') {
        Some(format!(
            "{name:?} is an address label (alias), not an interface: use {base:?}"
        ))
    } else {
        None
    }
}

/// A checked etcd endpoint.
pub(super) struct Endpoint {
    /// The URL as it will be used: scheme in lower case, trailing `/` removed.
    pub(super) url: String,
    pub(super) tls: bool,
    pub(super) has_port: bool,
}

/// Check one etcd endpoint: `http://` or `https://`, a host, an optional non-zero port, no path,
/// no user info.
pub(super) fn endpoint(raw: &str) -> Result<Endpoint, String> {
    let s = raw.trim();
    if s.is_empty() {
        return Err("an endpoint is empty (stray comma?)".to_owned());
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "{s:?} has no scheme: write http://{s} or https://{s} (vip-manager failed silently \
             on scheme-less endpoints, issue #157)"
        ));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "{s:?} has scheme {other:?}; etcd endpoints are http:// or https://"
            ));
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{s:?} has a path or query; an etcd endpoint is scheme://host:port only"
        ));
    }
    if rest.contains('@') {
        return Err(format!(
            "{s:?} carries user info; put credentials into etcd-user/etcd-password"
        ));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(format!("{s:?}: unterminated [IPv6] host"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: [{addr}] is not an IPv6 address"));
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return Err(format!("{s:?}: unexpected {p:?} after the IPv6 host")),
            },
        }
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if !rest.starts_with('[') && host.contains(':') {
        return Err(format!(
            "{s:?}: host {host:?} has a ':'; write an IPv6 address in brackets, [addr]:port"
        ));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(1..) => {}
            _ => return Err(format!("{s:?}: port {p:?} is not a port number 1..=65535")),
        }
    }
    Ok(Endpoint {
        url: format!("{}://{rest}", if tls { "https" } else { "http" }),
        tls,
        has_port: port.is_some(),
    })
}

/// Levenshtein distance over bytes (keys are ASCII).
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.bytes().enumerate() {
        cur[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `key` (case and `_`/`-` folded), if it is close enough to be a typo.
pub(super) fn closest<'a>(key: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let folded = key.to_ascii_lowercase().replace('_', "-");
    let (best, distance) = candidates
        .iter()
        .map(|c| (*c, edit_distance(&folded, c)))
        .min_by_key(|&(_, d)| d)?;
    let limit = (best.len().max(folded.len()) / 3).max(2);
    (distance <= limit).then_some(best)
}

/// Check a `patroni-url`: `http://` or `https://`, a host, an optional non-zero port (default
/// 80/443), an optional path prefix; no user info (use `patroni-user`), query or fragment.
pub(super) fn patroni_url(raw: &str) -> Result<super::PatroniUrl, String> {
    let s = raw.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "{s:?} has no scheme: write http://{s} or https://{s} (Patroni's restapi)"
        ));
    };
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "http" => false,
        "https" => true,
        other => {
            return Err(format!(
                "{s:?} has scheme {other:?}; Patroni's REST API is http:// or https://"
            ));
        }
    };
    if rest.contains('?') || rest.contains('#') {
        return Err(format!(
            "{s:?} has a query or fragment; write scheme://host:port (the gate asks /primary)"
        ));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return Err(format!(
            "{s:?} carries user info; put credentials into patroni-user/patroni-password"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(format!("{s:?}: unterminated [IPv6] host"));
        };
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("{s:?}: [{addr}] is not an IPv6 address"));
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(port) => (addr, Some(port)),
                None => return Err(format!("{s:?}: unexpected {p:?} after the IPv6 host")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    if !authority.starts_with('[') && host.contains(':') {
        return Err(format!(
            "{s:?}: host {host:?} has a ':'; write an IPv6 address in brackets, [addr]:port"
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?}: the host contains white space"));
    }
    let port = match port {
        Some(p) => match p.parse::<u16>() {
            Ok(port @ 1..) => port,
            _ => return Err(format!("{s:?}: port {p:?} is not a port number 1..=65535")),
        },
        None if tls => 443,
        None => 80,
    };
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{s:?}: the path contains white space"));
    }
    Ok(super::PatroniUrl {
        tls,
        host: host.to_owned(),
        port,
        base: path.trim_end_matches('/').to_owned(),
    })
}

/// A libpq connection string (`key=value ...` or a `postgres[ql]://` URL) as tokio-postgres
/// understood it, in `key=value` form with the password shown as `<redacted>`.
///
/// Rendered from the parsed configuration rather than by editing the text: the text may hide a
/// password where a hand-written redactor does not look (a tail the parser ignores, a URL with
/// several `@`), while the parsed form holds exactly what the gate will use. A string that does
/// not parse is not shown at all: whatever it contains may be a password.
pub(super) fn redact_dsn(dsn: &str) -> String {
    use tokio_postgres::config::{
        ChannelBinding, Host, LoadBalanceHosts, SslMode, SslNegotiation, TargetSessionAttrs,
    };

    let Ok(c) = dsn.trim().parse::<tokio_postgres::Config>() else {
        return "<not a connection string>".to_owned();
    };
    let defaults = tokio_postgres::Config::new();
    let mut out = Vec::<String>::new();
    let mut put = |key: &str, value: &str| out.push(format!("{key}={}", dsn_value(value)));
    let join = |items: Vec<String>| items.join(",");

    if !c.get_hosts().is_empty() {
        put(
            "host",
            &join(
                c.get_hosts()
                    .iter()
                    .map(|h| match h {
                        Host::Tcp(name) => name.clone(),
                        Host::Unix(path) => path.to_string_lossy().into_owned(),
                    })
                    .collect(),
            ),
        );
    }
    if !c.get_hostaddrs().is_empty() {
        put(
            "hostaddr",
            &join(c.get_hostaddrs().iter().map(ToString::to_string).collect()),
        );
    }
    if !c.get_ports().is_empty() {
        put(
            "port",
            &join(c.get_ports().iter().map(ToString::to_string).collect()),
        );
    }
    for (key, value) in [
        ("user", c.get_user()),
        ("dbname", c.get_dbname()),
        ("options", c.get_options()),
        ("application_name", c.get_application_name()),
    ] {
        if let Some(v) = value {
            put(key, v);
        }
    }
    if c.get_password().is_some() {
        put("password", super::Secret::REDACTED);
    }
    if c.get_ssl_mode() != defaults.get_ssl_mode() {
        put(
            "sslmode",
            match c.get_ssl_mode() {
                SslMode::Disable => "disable",
                SslMode::Require => "require",
                _ => "prefer",
            },
        );
    }
    if c.get_ssl_negotiation() != defaults.get_ssl_negotiation() {
        put(
            "sslnegotiation",
            match c.get_ssl_negotiation() {
                SslNegotiation::Direct => "direct",
                _ => "postgres",
            },
        );
    }
    let secs = |d: &std::time::Duration| d.as_secs().to_string();
    if let Some(d) = c.get_connect_timeout() {
        put("connect_timeout", &secs(d));
    }
    if let Some(d) = c.get_tcp_user_timeout() {
        put("tcp_user_timeout", &secs(d));
    }
    if c.get_keepalives() != defaults.get_keepalives() {
        put("keepalives", if c.get_keepalives() { "1" } else { "0" });
    }
    if c.get_keepalives_idle() != defaults.get_keepalives_idle() {
        put("keepalives_idle", &secs(&c.get_keepalives_idle()));
    }
    if let Some(d) = c.get_keepalives_interval() {
        put("keepalives_interval", &secs(&d));
    }
    if let Some(n) = c.get_keepalives_retries() {
        put("keepalives_retries", &n.to_string());
    }
    if c.get_target_session_attrs() != defaults.get_target_session_attrs() {
        put(
            "target_session_attrs",
            match c.get_target_session_attrs() {
                TargetSessionAttrs::ReadWrite => "read-write",
                TargetSessionAttrs::ReadOnly => "read-only",
                _ => "any",
            },
        );
    }
    if c.get_channel_binding() != defaults.get_channel_binding() {
        put(
            "channel_binding",
            match c.get_channel_binding() {
                ChannelBinding::Disable => "disable",
                ChannelBinding::Require => "require",
                _ => "prefer",
            },
        );
    }
    if c.get_load_balance_hosts() != defaults.get_load_balance_hosts() {
        put(
            "load_balance_hosts",
            match c.get_load_balance_hosts() {
                LoadBalanceHosts::Random => "random",
                _ => "disable",
            },
        );
    }
    out.join(" ")
}

/// A `key=value` value as libpq reads it back: bare when it is plain, else `'...'` with `\'` and
/// `\\` escaped.
fn dsn_value(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:,@<>+".contains(c));
    if plain {
        return value.to_owned();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('\'');
    quoted
}

/// Whether an endpoint URL (`scheme://host:port` or `host:port`) names a loopback host
/// (`localhost`, 127.0.0.0/8, `::1`): traffic to it never leaves the machine.
pub(super) fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A repmgr node id: a positive integer (repmgr's are 1..=2^31-1), as `repmgr-node-id` and as
/// `vip-agent event`'s `%n`.
///
/// # Errors
/// A one-line reason naming the value.
pub fn repmgr_node_id(raw: &str) -> Result<u32, String> {
    match raw.trim().parse::<u32>() {
        Ok(n) if (1..=i32::MAX.unsigned_abs()).contains(&n) => Ok(n),
        _ => Err(format!(
            "node id {raw:?} is not a repmgr node id (an integer 1..={})",
            i32::MAX
        )),
    }
}
