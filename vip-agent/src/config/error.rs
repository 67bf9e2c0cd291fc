//! Configuration errors: each names where the value came from, the key, and why it is wrong.

use std::{fmt, io, path::PathBuf};

use super::Location;

/// Why a configuration cannot be used. Every message names the source (config file path, or the
/// flag and environment variable), the key, and the reason.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file given with `--config`/`VIP_CONFIG` cannot be read.
    #[error("config file {}: cannot read it", path.display())]
    ReadFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The config file is not YAML, or not a mapping of keys to values.
    #[error("config file {source_name}: {reason}")]
    Syntax { source_name: String, reason: String },
    /// A key nobody knows; `suggestion` is the closest known key, if one is close.
    #[error("{location}: unknown key `{key}`{}", DidYouMean(suggestion.as_deref()))]
    UnknownKey {
        location: Location,
        key: String,
        suggestion: Option<String>,
    },
    /// A pre-1.0 vip-manager key: vip-manager 5 ignores these silently, vip-agent refuses them.
    #[error(
        "{location}: `{key}` is a pre-1.0 vip-manager key (vip-manager 5 silently ignores it): \
         rename it to `{replacement}`"
    )]
    LegacyKey {
        location: Location,
        key: String,
        replacement: &'static str,
    },
    /// A required key is set nowhere.
    #[error("{location}: `{key}` is required but not set{hint}")]
    Missing {
        location: Location,
        key: String,
        /// Where it could be set, starting with "; " (or empty).
        hint: String,
    },
    /// A value that cannot be used (bad address, prefix, path, duration, endpoint...).
    #[error("{location}: `{key}`: {reason}")]
    Invalid {
        location: Location,
        key: String,
        reason: String,
    },
    /// A vip-manager feature vip-agent does not implement (consul, patroni, hetzner, IPv6...).
    #[error("{location}: `{key}`: {reason}")]
    Unsupported {
        location: Location,
        key: String,
        reason: String,
    },
    /// Keys that cannot be combined (or one that needs another).
    #[error("{location}: `{key}`: {reason}")]
    Conflict {
        location: Location,
        key: String,
        reason: String,
    },
    /// A check against this host failed (interface, addresses, certificate files).
    #[error("{location}: `{key}`: {reason}")]
    Host {
        location: Location,
        key: String,
        reason: String,
    },
    /// Several of the above, all found in one pass.
    #[error("{} configuration errors:{}", errors.len(), List(errors))]
    Several { errors: Vec<ConfigError> },
}

impl ConfigError {
    /// The key the error is about, if it is about one key.
    #[must_use]
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::UnknownKey { key, .. }
            | Self::LegacyKey { key, .. }
            | Self::Missing { key, .. }
            | Self::Invalid { key, .. }
            | Self::Unsupported { key, .. }
            | Self::Conflict { key, .. }
            | Self::Host { key, .. } => Some(key),
            Self::ReadFile { .. } | Self::Syntax { .. } | Self::Several { .. } => None,
        }
    }

    /// The individual errors: the members of [`ConfigError::Several`], or just this one.
    #[must_use]
    pub fn errors(&self) -> Vec<&Self> {
        match self {
            Self::Several { errors } => errors.iter().flat_map(Self::errors).collect(),
            other => vec![other],
        }
    }

    /// One error as is, several as [`ConfigError::Several`]; `None` when there is none.
    pub(super) fn from_list(mut errors: Vec<Self>) -> Option<Self> {
        match errors.len() {
            0 => None,
            1 => errors.pop(),
            _ => Some(Self::Several { errors }),
        }
    }
}

struct DidYouMean<'a>(Option<&'a str>);

impl fmt::Display for DidYouMean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(s) => write!(f, "; did you mean `{s}`?"),
            None => Ok(()),
        }
    }
}

struct List<'a>(&'a [ConfigError]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            write!(f, "\n  {}. {e}", i + 1)?;
        }
        Ok(())
    }
}
