//! The configuration loader on arbitrary YAML, with arbitrary flags/variables on top: the same
//! code as `vip-agent --config FILE` and `vip-agent check` after the file is read (the host checks,
//! interfaces and certificate files, are left out: they depend on the machine).
//!
//! Input: UTF-8 text. Everything before a line `#--args--` is the YAML file (`fuzz.yml`); each
//! line after it is `key=value`, a flag or `VIP_*` variable (`ip=10.0.0.5`, `dcs-endpoints=a,b`,
//! `etcd-password=...`). The pseudo key `postgres-dsn-password` adds a password to the
//! `postgres-dsn` flag in its password position (`password='...'`, or `user:...@` in a URL). The
//! committed seeds are the repository's example (Pigsty's file), vip-manager style files, `vips:`
//! lists, the promotion-gate keys and broken files.
//!
//! Properties:
//! * no panic;
//! * every error names its key (or, for a YAML syntax error, the file) and where the value came
//!   from (the file's name, or the flag);
//! * secrets do not leak: the same input with other secrets (etcd and Patroni passwords, the DSN's
//!   password; given as flags) loads to the same result, byte for byte in every error, notice and
//!   in `check`'s rendering, and the rendered password keys read `<redacted>`;
//! * a successful load renders (as `vip-agent check` prints it) to YAML that loads back to the same
//!   configuration, secrets replaced by `<redacted>`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vip_agent::config::{
    Config, ConfigArgs, ConfigError, Location, Secret, fuzzing::build, redact_dsn,
};

const SOURCE: &str = "fuzz.yml";
const HOST: &str = "fuzzhost";
const OTHER_SECRET: &str = "0therSecretValue";

/// The flags of the input, and the DSN password to splice in, if any.
fn parse_args(text: &str) -> (ConfigArgs, Option<String>) {
    let mut args = ConfigArgs::default();
    let mut dsn_password = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key == "postgres-dsn-password" {
            dsn_password = Some(value.to_owned());
        } else {
            // A key without a flag (`vips`, a typo) is not a flag: left out.
            args.set(key, value);
        }
    }
    (args, dsn_password)
}

/// `dsn` with `password` in its password position, when `dsn` is a connection string that
/// tokio-postgres (the gate's client) accepts, that has no password yet, and from which
/// tokio-postgres then reads exactly `password`; `None` otherwise.
fn with_dsn_password(dsn: &str, password: &str) -> Option<String> {
    let spliced = splice_dsn_password(dsn, password)?;
    let config: tokio_postgres::Config = spliced.trim().parse().ok()?;
    (config.get_password() == Some(password.as_bytes())).then_some(spliced)
}

fn splice_dsn_password(dsn: &str, password: &str) -> Option<String> {
    let config: tokio_postgres::Config = dsn.trim().parse().ok()?;
    if config.get_password().is_some() || password.is_empty() {
        return None;
    }
    let trimmed = dsn.trim();
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = trimmed.strip_prefix(scheme) {
            // URL form: user info needs a user and an unreserved password.
            if !password.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return None;
            }
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            let (user, hosts) = rest[..authority_end].split_once('@')?;
            if user.is_empty() || user.contains(':') {
                return None;
            }
            return Some(format!(
                "{scheme}{user}:{password}@{hosts}{}",
                &rest[authority_end..]
            ));
        }
    }
    let escaped = password.replace('\\', "\\\\").replace('\'', "\\'");
    Some(format!("{trimmed} password='{escaped}'"))
}

fn location(e: &ConfigError) -> Option<&Location> {
    match e {
        ConfigError::UnknownKey { location, .. }
        | ConfigError::LegacyKey { location, .. }
        | ConfigError::Missing { location, .. }
        | ConfigError::Invalid { location, .. }
        | ConfigError::Unsupported { location, .. }
        | ConfigError::Conflict { location, .. }
        | ConfigError::Host { location, .. } => Some(location),
        _ => None,
    }
}

fn check_error(err: &ConfigError) {
    for e in err.errors() {
        let msg = e.to_string();
        match e.key() {
            Some(key) => {
                // A key can be empty (`"": 1`, or a `!!binary` key that decodes to nothing):
                // then the file must be named.
                assert!(
                    !key.is_empty() || msg.contains(SOURCE),
                    "an error about an empty key names no file: {msg}"
                );
                assert!(
                    msg.contains(&format!("`{key}`")),
                    "error does not name its key: {msg}"
                );
            }
            None => assert!(
                matches!(e, ConfigError::Syntax { .. }) && msg.contains(SOURCE),
                "error names neither a key nor the file: {msg}"
            ),
        }
        match location(e) {
            Some(Location::File(name)) => {
                assert_eq!(name, SOURCE, "{msg}");
                assert!(msg.contains(SOURCE), "error does not name the file: {msg}");
            }
            Some(Location::Args { flag, env }) => {
                assert!(
                    msg.contains(flag.as_str()) && msg.contains(env.as_str()),
                    "error does not name its flag and variable: {msg}"
                );
            }
            // A default (e.g. a `vips:` entry's gate inherited from the top level) has no source
            // to name; the key says where to look.
            Some(Location::Default) | None => {}
        }
    }
}

/// Everything the outside world sees of a load: `check`'s output and notices, or the errors.
fn visible(result: &Result<Config, ConfigError>) -> String {
    match result {
        Ok(c) => {
            let mut out = c.render_redacted();
            for n in &c.notices {
                out.push_str(&format!("\n{n}"));
            }
            out
        }
        Err(e) => format!("error: {e}"),
    }
}

/// `config` as it reads back from its rendering: secrets replaced by `<redacted>`.
fn redacted(config: &Config) -> Config {
    let mut c = config.clone();
    let hide = |s: &mut Option<Secret>| {
        if s.is_some() {
            *s = Some(Secret::new(Secret::REDACTED));
        }
    };
    hide(&mut c.etcd.password);
    for vip in &mut c.vips {
        hide(&mut vip.gate.patroni_password);
        if let Some(dsn) = &vip.gate.postgres_dsn {
            vip.gate.postgres_dsn = Some(Secret::new(redact_dsn(dsn.expose()).trim()));
        }
    }
    if let Some(repmgr) = &mut c.repmgr {
        repmgr.postgres_dsn = Secret::new(redact_dsn(repmgr.postgres_dsn.expose()).trim());
    }
    c
}

fn check_rendering(config: &Config) {
    let rendered = config.render_redacted();
    let doc: serde_norway::Value = serde_norway::from_str(&rendered)
        .unwrap_or_else(|e| panic!("check's output is not YAML ({e}):\n{rendered}"));
    let mut maps = vec![&doc];
    if let Some(serde_norway::Value::Sequence(vips)) = doc.get("vips") {
        maps.extend(vips);
    }
    for map in maps {
        for key in ["etcd-password", "patroni-password"] {
            if let Some(v) = map.get(key) {
                assert_eq!(
                    v.as_str(),
                    Some(Secret::REDACTED),
                    "`{key}` is not redacted:\n{rendered}"
                );
            }
        }
    }
    match build("rendered.yml", Some(&rendered), None, HOST) {
        Ok(back) => assert!(
            back.same_effect(&redacted(config)),
            "the rendering does not load back to the same configuration:\n{rendered}\n\
             loaded: {back:#?}\nexpected: {:#?}",
            redacted(config)
        ),
        Err(e) => panic!("the rendering does not load back: {e}\n{rendered}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (yaml, arg_text) = match text.split_once("#--args--\n") {
        Some((yaml, rest)) => (yaml, Some(rest)),
        None => (text, None),
    };
    let (mut args, dsn_password) = arg_text.map(parse_args).unzip();
    let dsn_password = dsn_password.flatten();
    if let (Some(args), Some(pw)) = (args.as_mut(), &dsn_password) {
        args.postgres_dsn = args
            .postgres_dsn
            .as_deref()
            .and_then(|dsn| with_dsn_password(dsn, pw));
    }

    let result = build(SOURCE, Some(yaml), args.as_ref(), HOST);
    match &result {
        Ok(config) => check_rendering(config),
        Err(e) => check_error(e),
    }

    // The same input with other secrets: nothing visible may change.
    let Some(args) = args else {
        return;
    };
    let mut other = args.clone();
    let mut replaced = false;
    for slot in [&mut other.etcd_password, &mut other.patroni_password] {
        if slot
            .as_deref()
            .is_some_and(|p| !p.trim().is_empty() && p != OTHER_SECRET)
        {
            *slot = Some(OTHER_SECRET.to_owned());
            replaced = true;
        }
    }
    if let (Some(pw), Some(dsn)) = (&dsn_password, &args.postgres_dsn)
        && pw != OTHER_SECRET
    {
        // Undo the splice and redo it with the other password.
        let original = arg_text.map(parse_args).and_then(|(a, _)| a.postgres_dsn);
        if let Some(original) = original {
            other.postgres_dsn = with_dsn_password(&original, OTHER_SECRET);
            replaced |= other.postgres_dsn.as_deref() != Some(dsn.as_str());
        }
    }
    if !replaced {
        return;
    }
    let other_result = build(SOURCE, Some(yaml), Some(&other), HOST);
    assert_eq!(
        visible(&result),
        visible(&other_result),
        "a secret changed what the loader shows"
    );
});
