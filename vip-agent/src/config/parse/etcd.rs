//! How to reach etcd: `dcs-endpoints` and the `etcd-*` keys.

use std::path::PathBuf;

use serde_norway::Value;

use super::{DEFAULT_ETCD_ENDPOINT, Diag, EtcdConfig, Fields, Location, Secret, values};

/// `dcs-endpoints` and the `etcd-*` keys.
pub(super) fn etcd(top: &Fields, diag: &mut Diag) -> EtcdConfig {
    let endpoints = endpoints(top, diag);

    let user = top.text(diag, "etcd-user");
    let password = top.text(diag, "etcd-password");
    match (&user, &password) {
        (None, Some((_, location))) => diag.conflict(
            location,
            "etcd-password",
            "set without `etcd-user`; etcd password authentication needs both".to_owned(),
        ),
        (Some((_, location)), None) => diag.conflict(
            location,
            "etcd-user",
            "set without `etcd-password`; etcd password authentication needs both (with \
             client-certificate authentication etcd takes the user from the certificate's CN: \
             drop `etcd-user`)"
                .to_owned(),
        ),
        _ => {}
    }

    let mut path = |key: &str| {
        let (text, location) = top.text(diag, key)?;
        let path = PathBuf::from(text.trim());
        if path.is_relative() {
            diag.warn(
                &location,
                key,
                format!(
                    "{} is relative: it is resolved against the agent's working directory, not \
                     the config file's",
                    path.display()
                ),
            );
        }
        Some((path, location))
    };
    let ca_file = path("etcd-ca-file");
    let cert_file = path("etcd-cert-file");
    let key_file = path("etcd-key-file");
    match (&cert_file, &key_file) {
        (Some((_, location)), None) => diag.conflict(
            location,
            "etcd-cert-file",
            "a client certificate needs its private key: set `etcd-key-file` too".to_owned(),
        ),
        (None, Some((_, location))) => diag.conflict(
            location,
            "etcd-key-file",
            "a private key needs its client certificate: set `etcd-cert-file` too".to_owned(),
        ),
        _ => {}
    }
    let tls_files = ca_file.as_ref().or(cert_file.as_ref());
    if let Some((_, location)) = tls_files
        && !endpoints.is_empty()
        && endpoints.iter().all(|e| e.starts_with("http://"))
    {
        let key = if ca_file.is_some() {
            "etcd-ca-file"
        } else {
            "etcd-cert-file"
        };
        diag.warn(
            location,
            key,
            "TLS files are set but every endpoint is http://, so they are not used; write \
             https:// endpoints"
                .to_owned(),
        );
    }

    if let (Some(_), Some((_, location))) = (&user, &password) {
        let tls = ca_file.is_some() || cert_file.is_some();
        let plain: Vec<&String> = endpoints
            .iter()
            .filter(|e| e.starts_with("http://") || (!e.contains("://") && !tls))
            .filter(|e| !values::is_loopback_url(e))
            .collect();
        if !plain.is_empty() {
            diag.warn(
                location,
                "etcd-password",
                format!(
                    "the etcd password goes over plain http to {}: anyone on the path can read \
                     it; use https:// endpoints",
                    plain
                        .iter()
                        .map(|e| e.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
    }
    let (user, password) = match (user, password) {
        (Some((u, _)), Some((p, _))) => (Some(u), Some(Secret::new(p))),
        _ => (None, None),
    };
    let (cert_file, key_file) = match (cert_file, key_file) {
        (Some((c, _)), Some((k, _))) => (Some(c), Some(k)),
        _ => (None, None),
    };
    EtcdConfig {
        endpoints,
        user,
        password,
        ca_file: ca_file.map(|(p, _)| p),
        cert_file,
        key_file,
    }
}

fn endpoints(top: &Fields, diag: &mut Diag) -> Vec<String> {
    let Some(entry) = top.get(diag, "dcs-endpoints") else {
        diag.info(
            &Location::Default,
            "dcs-endpoints",
            format!("not set; using {DEFAULT_ETCD_ENDPOINT} (vip-manager's default)"),
        );
        return vec![DEFAULT_ETCD_ENDPOINT.to_owned()];
    };
    let location = entry.location.clone();
    let raw: Vec<String> = match &entry.value {
        Value::String(s) => s.split(',').map(str::to_owned).collect(),
        Value::Sequence(items) if items.is_empty() => {
            diag.invalid(
                &location,
                "dcs-endpoints",
                "the list is empty; give at least one etcd endpoint".to_owned(),
            );
            return Vec::new();
        }
        Value::Sequence(items) => {
            let mut raw = Vec::new();
            for item in items {
                match values::text(item) {
                    Ok(s) => raw.extend(s.split(',').map(str::to_owned)),
                    Err(reason) => {
                        diag.invalid(&location, "dcs-endpoints", format!("an entry: {reason}"));
                    }
                }
            }
            raw
        }
        other => {
            diag.invalid(
                &location,
                "dcs-endpoints",
                format!(
                    "expected a list of URLs or a comma-separated string, got {}",
                    values::kind(other)
                ),
            );
            return Vec::new();
        }
    };
    let mut out: Vec<String> = Vec::new();
    let (mut tls, mut plain) = (false, false);
    for r in &raw {
        match values::endpoint(r) {
            Ok(e) => {
                if !e.has_port {
                    diag.warn(
                        &location,
                        "dcs-endpoints",
                        format!(
                            "{} has no port, so the client uses {} rather than etcd's 2379",
                            e.url,
                            if e.tls { 443 } else { 80 }
                        ),
                    );
                }
                tls |= e.tls;
                plain |= !e.tls;
                if out.contains(&e.url) {
                    diag.warn(
                        &location,
                        "dcs-endpoints",
                        format!("{} is listed twice; using it once", e.url),
                    );
                } else {
                    out.push(e.url);
                }
            }
            Err(reason) => diag.invalid(&location, "dcs-endpoints", reason),
        }
    }
    if tls && plain {
        diag.warn(
            &location,
            "dcs-endpoints",
            "mixes http:// and https:// endpoints; members of one etcd cluster normally share one \
             scheme"
                .to_owned(),
        );
    }
    out
}
