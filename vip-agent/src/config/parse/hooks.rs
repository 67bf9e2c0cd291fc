//! `on-promote`, `on-demote`, `hook-timeout`, `hook-retries`: top-level, or per `vips:` entry.

use std::time::Duration;

use super::{Diag, Fields, HookConfig, values};

const HOOK_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const HOOK_TIMEOUT_MAX: Duration = Duration::from_secs(600);
const HOOK_RETRIES_MAX: u64 = 10;

/// `on-promote`, `on-demote`, `hook-timeout`, `hook-retries` over `base`.
pub(super) fn hooks(fields: &Fields, base: &HookConfig, diag: &mut Diag) -> HookConfig {
    let mut hooks = base.clone();
    for (key, slot) in [
        ("on-promote", &mut hooks.on_promote),
        ("on-demote", &mut hooks.on_demote),
    ] {
        if let Some((command, location)) = fields.text(diag, key) {
            let command = command.trim();
            if command.is_empty() {
                diag.invalid(
                    &location,
                    &fields.full_key(key),
                    "the command is empty; remove the key to run nothing".to_owned(),
                );
            } else if command.contains('\0') {
                diag.invalid(
                    &location,
                    &fields.full_key(key),
                    "the command contains a NUL byte".to_owned(),
                );
            } else {
                *slot = Some(command.to_owned());
            }
        }
    }
    if let Some(((d, _), location)) = fields.read(diag, "hook-timeout", values::duration) {
        if (HOOK_TIMEOUT_MIN..=HOOK_TIMEOUT_MAX).contains(&d) {
            hooks.timeout = d;
        } else {
            diag.invalid(
                &location,
                &fields.full_key("hook-timeout"),
                values::duration_out_of_range(d, HOOK_TIMEOUT_MIN, HOOK_TIMEOUT_MAX),
            );
        }
    }
    if let Some((n, location)) = fields.read(diag, "hook-retries", values::unsigned) {
        match u32::try_from(n) {
            Ok(n) if u64::from(n) <= HOOK_RETRIES_MAX => hooks.retries = n,
            _ => diag.invalid(
                &location,
                &fields.full_key("hook-retries"),
                format!("{n} is out of range 0..={HOOK_RETRIES_MAX}"),
            ),
        }
    }
    hooks
}
