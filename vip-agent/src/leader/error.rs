//! Errors of the leader follower, each naming the operation and the etcd endpoint that failed.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The etcd operation a [`LeaderError::Timeout`] refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Opening the client (and authenticating, when a user is configured).
    Connect,
    /// Linearizable range read of the trigger key.
    Get,
    /// Creating the watch, or waiting for the server to confirm it.
    Watch,
    /// `LeaseTimeToLive` of the lease attached to the trigger key.
    LeaseTimeToLive,
    /// Keeping the fence handshake's record and its lease (grant, put, keepalive).
    Record,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connect",
            Self::Get => "get",
            Self::Watch => "watch",
            Self::LeaseTimeToLive => "lease_time_to_live",
            Self::Record => "fence record",
        })
    }
}

/// Why following the leader key failed.
///
/// The follower itself never gives up: it logs these and retries. They are returned as values by
/// [`LeaderFollower::new`](super::LeaderFollower::new) (settings and TLS files) and by
/// [`check_connection`](super::check_connection).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderError {
    /// The settings cannot work (empty endpoint list, mixed schemes, half a key pair, ...).
    #[error("invalid etcd settings: {0}")]
    InvalidSettings(String),
    /// The CA file could not be read.
    #[error("cannot read etcd CA file {}: {cause}", path.display())]
    ReadCaFile {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The client certificate file could not be read.
    #[error("cannot read etcd client certificate file {}: {cause}", path.display())]
    ReadCertFile {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// The client key file could not be read.
    #[error("cannot read etcd client key file {}: {cause}", path.display())]
    ReadKeyFile {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        cause: std::io::Error,
    },
    /// A TLS file was read but holds no PEM block of the expected kind.
    #[error("etcd {what} file {} holds no PEM {expected}", path.display())]
    NotPem {
        /// "CA", "client certificate" or "client key".
        what: &'static str,
        /// The configured path.
        path: PathBuf,
        /// What was looked for, e.g. "CERTIFICATE".
        expected: &'static str,
    },
    /// `https` endpoints, no CA file, and no system CA bundle on this host.
    #[error(
        "https etcd endpoints without a CA file need the system CA bundle, but none was found \
         (looked at $SSL_CERT_FILE and {tried})"
    )]
    NoSystemRoots {
        /// The paths that were tried.
        tried: String,
    },
    /// Building the client failed (bad URL, TLS material rustls refuses, ...).
    #[error("connect to etcd at {endpoint}: {}", describe(cause))]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The client error.
        cause: etcd_client::Error,
    },
    /// etcd refused the user name or password.
    #[error(
        "authenticate to etcd at {endpoint} as user {user:?}: {}",
        describe(cause)
    )]
    Authenticate {
        /// The endpoint.
        endpoint: String,
        /// The configured user.
        user: String,
        /// The client error (etcd says "authentication failed, invalid user ID or password").
        cause: etcd_client::Error,
    },
    /// The linearizable read of the trigger key failed.
    #[error("get {key:?} from etcd at {endpoint}: {}", describe(cause))]
    Get {
        /// The endpoint.
        endpoint: String,
        /// The trigger key.
        key: String,
        /// The client error.
        cause: etcd_client::Error,
    },
    /// Keeping the fence handshake's record failed (lease grant or keepalive, put).
    #[error(
        "{operation} the fence record {key:?} on etcd at {endpoint}: {}",
        describe(cause)
    )]
    Record {
        /// What was done: "grant a lease for", "keep alive the lease of", "write".
        operation: &'static str,
        /// The endpoint.
        endpoint: String,
        /// The record key.
        key: String,
        /// The client error.
        cause: etcd_client::Error,
    },
    /// Creating or reading the watch failed.
    #[error("watch {key:?} on etcd at {endpoint}: {}", describe(cause))]
    Watch {
        /// The endpoint.
        endpoint: String,
        /// The trigger key.
        key: String,
        /// The client error.
        cause: etcd_client::Error,
    },
    /// The server canceled the watch for another reason than compaction.
    #[error("etcd at {endpoint} canceled the watch on {key:?}: {reason}")]
    WatchCanceled {
        /// The endpoint.
        endpoint: String,
        /// The trigger key.
        key: String,
        /// The server's cancel reason (may be empty).
        reason: String,
    },
    /// The server closed the watch stream.
    #[error("etcd at {endpoint} closed the watch stream on {key:?}")]
    WatchEnded {
        /// The endpoint.
        endpoint: String,
        /// The trigger key.
        key: String,
    },
    /// The watch stream answered nothing (not even progress requests) for too long.
    #[error("watch on {key:?} at etcd {endpoint} silent for {silent:?} despite progress requests")]
    WatchStalled {
        /// The endpoint.
        endpoint: String,
        /// The trigger key.
        key: String,
        /// How long nothing arrived.
        silent: Duration,
    },
    /// `LeaseTimeToLive` failed.
    #[error(
        "lease_time_to_live({lease:#x}) at etcd {endpoint}: {}",
        describe(cause)
    )]
    LeaseTimeToLive {
        /// The endpoint.
        endpoint: String,
        /// The lease attached to the trigger key.
        lease: i64,
        /// The client error.
        cause: etcd_client::Error,
    },
    /// An operation did not finish in time.
    #[error("{op} at etcd {endpoint} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        op: Operation,
        /// The endpoint.
        endpoint: String,
        /// The limit.
        after: Duration,
    },
    /// A network error while our client certificate is outside its validity period: the likely
    /// cause, which TLS 1.3 reports to the client only as a closed connection.
    #[error("{cause}; the etcd client certificate {} {problem}", path.display())]
    ClientCertificate {
        /// The failed operation.
        cause: Box<LeaderError>,
        /// `etcd-cert-file`.
        path: PathBuf,
        /// Expired or not yet valid, with the date.
        problem: crate::cert::ValidityProblem,
    },
}

impl LeaderError {
    /// True when etcd rejected the credentials or their permissions (wrong password, unknown
    /// user, no user while auth is enabled, no read permission on the key).
    #[must_use]
    pub fn is_auth_failure(&self) -> bool {
        match self {
            Self::Authenticate { .. } => true,
            Self::Get { cause, .. }
            | Self::Watch { cause, .. }
            | Self::Record { cause, .. }
            | Self::LeaseTimeToLive { cause, .. } => match cause {
                etcd_client::Error::GRpcStatus(status) => match i32::from(status.code()) {
                    GRPC_UNAUTHENTICATED | GRPC_PERMISSION_DENIED => true,
                    // "etcdserver: user name is empty", "invalid auth token", ...
                    GRPC_INVALID_ARGUMENT => {
                        status.message().contains("user") || status.message().contains("auth")
                    }
                    _ => false,
                },
                _ => false,
            },
            _ => false,
        }
    }
}

pub(super) const GRPC_INVALID_ARGUMENT: i32 = 3;
pub(super) const GRPC_NOT_FOUND: i32 = 5;
pub(super) const GRPC_PERMISSION_DENIED: i32 = 7;
pub(super) const GRPC_FAILED_PRECONDITION: i32 = 9;
pub(super) const GRPC_UNAUTHENTICATED: i32 = 16;

/// The gRPC status code of a client error, if it is a status.
pub(super) fn grpc_code(e: &etcd_client::Error) -> Option<i32> {
    match e {
        etcd_client::Error::GRpcStatus(status) => Some(i32::from(status.code())),
        _ => None,
    }
}

/// One line with everything an operator needs: for a gRPC status the code and etcd's message, for a
/// transport error the whole chain of causes (tonic's own `Display` says only "transport error").
pub(super) fn describe(e: &etcd_client::Error) -> String {
    let mut out = match e {
        etcd_client::Error::GRpcStatus(status) => {
            let msg = status.message();
            if msg.is_empty() {
                format!(
                    "{} ({})",
                    status.code().description(),
                    i32::from(status.code())
                )
            } else {
                format!("{msg} (grpc {:?})", status.code())
            }
        }
        other => other.to_string(),
    };
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(status) => std::error::Error::source(status),
        etcd_client::Error::TransportError(t) => std::error::Error::source(t),
        etcd_client::Error::IoError(io) => std::error::Error::source(io),
        _ => None,
    };
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
