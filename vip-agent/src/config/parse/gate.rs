//! The promotion gate's keys: top-level, or per `vips:` entry.

use std::{path::PathBuf, time::Duration};

use super::{
    ConfigError, Diag, Fields, GateConfig, GateMode, Location, PatroniUrl, Secret, suggest, values,
};

/// Bounds of the gate's durations, with the reasons in the messages.
const GATE_INTERVAL_MIN: Duration = Duration::from_millis(1);
const GATE_INTERVAL_MAX: Duration = Duration::from_secs(1);
const GATE_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const GATE_TIMEOUT_MAX: Duration = Duration::from_secs(600);

/// The promotion-gate keys of `fields` over `base` (the defaults for the top level, the top-level
/// gate for a `vips:` entry).
pub(super) fn gate(fields: &Fields, base: &GateConfig, diag: &mut Diag) -> GateConfig {
    let mut gate = base.clone();
    if let Some((text, location)) = fields.text(diag, "promotion-gate") {
        match text.trim().to_ascii_lowercase().as_str() {
            "patroni" => gate.mode = GateMode::Patroni,
            "postgres" | "postgresql" => gate.mode = GateMode::Postgres,
            "off" | "false" | "none" => gate.mode = GateMode::Off,
            other => diag.invalid(
                &location,
                &fields.full_key("promotion-gate"),
                format!(
                    "unknown gate {other:?}{}; expected patroni (wait until Patroni's REST API \
                     reports a running primary), postgres (wait until pg_is_in_recovery() is \
                     false) or off (answer as soon as the key names this node)",
                    suggest(other, &["patroni", "postgres", "off"])
                ),
            ),
        }
    }
    if let Some((text, location)) = fields.text(diag, "patroni-url") {
        match PatroniUrl::parse(&text) {
            Ok(url) => gate.patroni_url = Some(url),
            Err(reason) => diag.invalid(&location, &fields.full_key("patroni-url"), reason),
        }
    }
    let path = |key: &str, diag: &mut Diag| {
        let (text, location) = fields.text(diag, key)?;
        let path = PathBuf::from(text.trim());
        if path.is_relative() {
            diag.warn(
                &location,
                &fields.full_key(key),
                format!(
                    "{} is relative: it is resolved against the agent's working directory, not \
                     the config file's",
                    path.display()
                ),
            );
        }
        Some((path, location))
    };
    let ca = path("patroni-ca-file", diag);
    let cert = path("patroni-cert-file", diag);
    let key = path("patroni-key-file", diag);
    if let Some((p, _)) = &ca {
        gate.patroni_ca_file = Some(p.clone());
    }
    match (cert, key) {
        (Some((c, _)), Some((k, _))) => {
            gate.patroni_cert_file = Some(c);
            gate.patroni_key_file = Some(k);
        }
        (Some((_, location)), None) if base.patroni_key_file.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-cert-file"),
            "a client certificate needs its private key: set `patroni-key-file` too".to_owned(),
        ),
        (None, Some((_, location))) if base.patroni_cert_file.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-key-file"),
            "a private key needs its client certificate: set `patroni-cert-file` too".to_owned(),
        ),
        (Some((c, _)), None) => gate.patroni_cert_file = Some(c),
        (None, Some((k, _))) => gate.patroni_key_file = Some(k),
        (None, None) => {}
    }
    let user = fields.text(diag, "patroni-user");
    let password = fields.text(diag, "patroni-password");
    if let (Some(url), Some((_, location))) = (&gate.patroni_url, &password)
        && !url.tls
        && !values::is_loopback_url(&url.authority())
    {
        diag.warn(
            location,
            &fields.full_key("patroni-password"),
            format!(
                "Patroni's basic authentication goes over plain http to {url}: anyone on the \
                 path can read it; use https:// (patroni-ca-file)"
            ),
        );
    }
    match (user, password) {
        (Some((u, _)), Some((p, _))) => {
            gate.patroni_user = Some(u);
            gate.patroni_password = Some(Secret::new(p));
        }
        (None, Some((_, location))) if base.patroni_user.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-password"),
            "set without `patroni-user`; Patroni's basic authentication needs both".to_owned(),
        ),
        (Some((_, location)), None) if base.patroni_password.is_none() => diag.conflict(
            &location,
            &fields.full_key("patroni-user"),
            "set without `patroni-password`; Patroni's basic authentication needs both".to_owned(),
        ),
        (Some((u, _)), None) => gate.patroni_user = Some(u),
        (None, Some((p, _))) => gate.patroni_password = Some(Secret::new(p)),
        (None, None) => {}
    }
    let mut dsn_given = false;
    if let Some((dsn, location)) = fields.text(diag, "postgres-dsn") {
        dsn_given = true;
        match dsn_problem(&dsn) {
            Some(reason) => diag.invalid(&location, &fields.full_key("postgres-dsn"), reason),
            None => gate.postgres_dsn = Some(Secret::new(dsn.trim())),
        }
    }
    if let Some(((d, _), location)) = fields.read(diag, "promotion-gate-interval", values::duration)
    {
        if (GATE_INTERVAL_MIN..=GATE_INTERVAL_MAX).contains(&d) {
            gate.interval = d;
        } else {
            diag.invalid(
                &location,
                &fields.full_key("promotion-gate-interval"),
                values::duration_out_of_range(d, GATE_INTERVAL_MIN, GATE_INTERVAL_MAX),
            );
        }
    }
    if let Some(((d, _), location)) = fields.read(diag, "promotion-gate-timeout", values::duration)
    {
        if (GATE_TIMEOUT_MIN..=GATE_TIMEOUT_MAX).contains(&d) {
            gate.timeout = d;
        } else {
            diag.invalid(
                &location,
                &fields.full_key("promotion-gate-timeout"),
                format!(
                    "{} (to answer without waiting, set `promotion-gate: off`)",
                    values::duration_out_of_range(d, GATE_TIMEOUT_MIN, GATE_TIMEOUT_MAX)
                ),
            );
        }
    }
    if let Some((on, _)) = fields.read(diag, "patroni-failsafe", values::boolean) {
        gate.failsafe = on;
    }
    if gate.mode == GateMode::Postgres && !dsn_given {
        let location = fields
            .map
            .get("promotion-gate")
            .map_or(Location::Default, |e| e.location.clone());
        diag.errors.push(ConfigError::Missing {
            location,
            key: fields.full_key("postgres-dsn"),
            hint: "; `promotion-gate: postgres` needs it (e.g. \"host=/var/run/postgresql \
                   user=vip_agent dbname=postgres\")"
                .to_owned(),
        });
    }
    let tls_files = gate.patroni_ca_file.is_some() || gate.patroni_cert_file.is_some();
    if let Some(url) = gate.patroni_url.as_ref().filter(|u| !u.tls)
        && gate.mode == GateMode::Patroni
        && tls_files
    {
        let key = if gate.patroni_ca_file.is_some() {
            "patroni-ca-file"
        } else {
            "patroni-cert-file"
        };
        fields.warn_if_set(
            diag,
            key,
            format!(
                "TLS files are set but patroni-url is {url}, so they are not used; write https://"
            ),
        );
    }
    gate
}

/// Why a `postgres-dsn` cannot be used, if it cannot.
fn dsn_problem(dsn: &str) -> Option<String> {
    let shown = values::redact_dsn(dsn);
    match dsn.trim().parse::<tokio_postgres::Config>() {
        // Not echoed: an unparsable string may carry a password nobody can redact.
        Err(e) => {
            let mut why = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why = format!("{why}: {c}");
                cause = c.source();
            }
            Some(format!(
                "the value is not a connection string: {why} (not shown, it may hold a password)"
            ))
        }
        Ok(c) if c.get_hosts().is_empty() && c.get_hostaddrs().is_empty() => Some(format!(
            "{shown:?} names no host; give host=/var/run/postgresql (the unix socket \
             directory) or host=127.0.0.1"
        )),
        Ok(c) if c.get_ssl_mode() == tokio_postgres::config::SslMode::Require => Some(format!(
            "{shown:?} requires TLS, which the gate does not speak; connect over the unix \
             socket or loopback (sslmode=disable or prefer)"
        )),
        Ok(_) => None,
    }
}
