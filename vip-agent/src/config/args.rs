//! Command-line flags and `VIP_*` environment variables, as clap arguments built from the key table
//! ([`super::schema::KEYS`]).
//!
//! clap merges the two: a flag wins over its environment variable, and an unset flag falls back to
//! the variable. Values stay strings here; [`super::load`] interprets them with the same rules and
//! error messages as the YAML file, and the file fills whatever neither flag nor variable set.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Command, FromArgMatches};

use super::schema::{ConfigArgs, KEYS, Key, Kind};

/// The id of `--config`.
const CONFIG: &str = "config";

impl ConfigArgs {
    /// The clap arguments: `--config`, then one per key of the table that has a flag.
    fn arguments() -> impl Iterator<Item = Arg> {
        let config = Arg::new(CONFIG)
            .long(CONFIG)
            .env("VIP_CONFIG")
            .value_name("FILE")
            .value_parser(clap::value_parser!(PathBuf))
            .help("YAML configuration file (vip-manager's format, plus vip-agent's keys)");
        std::iter::once(config).chain(KEYS.iter().filter_map(flag))
    }
}

/// The clap argument of `key`, if it has a flag.
fn flag(key: &'static Key) -> Option<Arg> {
    let f = key.flag?;
    // As clap's derive writes a doc comment: no final period, the default after the text.
    let text = key.help.strip_suffix('.').unwrap_or(key.help);
    let help = match key.default {
        Some(default) => format!("{text} [default: {default}]"),
        None => text.to_owned(),
    };
    let arg = Arg::new(key.name)
        .long(key.name)
        .env(f.env)
        .value_name(f.value_name)
        .help(help);
    Some(match f.kind {
        Kind::Text => arg,
        Kind::Secret => arg.hide_env_values(true),
        // A string, not a bool, so that an empty VIP_VERBOSE counts as unset like every other
        // variable.
        Kind::Switch => arg
            .num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true"),
        Kind::List => arg.action(ArgAction::Append).value_delimiter(','),
    })
}

impl FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut args = Self::default();
        args.update_from_arg_matches(matches)?;
        Ok(args)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        if let Ok(Some(config)) = matches.try_get_one::<PathBuf>(CONFIG) {
            self.config = Some(config.clone());
        }
        self.update_from(matches);
        Ok(())
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(cmd: Command) -> Command {
        cmd.args(Self::arguments())
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        cmd.args(Self::arguments())
    }
}
