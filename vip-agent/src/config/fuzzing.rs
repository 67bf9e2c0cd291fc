//! The configuration loader without the file system, exposed to the fuzz targets in `fuzz/`
//! (compiled only under `--cfg fuzzing`, which `cargo fuzz` sets; not an API).

use super::{Config, ConfigArgs, ConfigError, parse};

/// What [`super::load`] does after reading the file: the YAML text `yaml` (named `source_name` in
/// messages), then the flags and variables `args` on top, with `hostname` as the host name.
///
/// # Errors
/// As [`super::load`].
pub fn build(
    source_name: &str,
    yaml: Option<&str>,
    args: Option<&ConfigArgs>,
    hostname: &str,
) -> Result<Config, ConfigError> {
    let source = yaml.map(|yaml| parse::Source {
        name: source_name,
        yaml,
    });
    parse::build(source, args, &|| Ok(hostname.to_owned()))
}
