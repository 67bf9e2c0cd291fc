//! What to follow and how to reach etcd.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::error::LeaderError;

/// Default [`LeaderSettings::confirm_interval`].
pub const DEFAULT_CONFIRM_INTERVAL: Duration = Duration::from_secs(1);
/// Default [`LeaderSettings::safety_margin`].
pub const DEFAULT_SAFETY_MARGIN: Duration = Duration::from_millis(500);
/// Default [`LeaderSettings::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`LeaderSettings::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default [`LeaderSettings::keepalive_interval`].
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Default [`LeaderSettings::keepalive_timeout`].
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Default [`LeaderSettings::backoff_min`].
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Default [`LeaderSettings::backoff_max`]. Small on purpose: while etcd is unreachable the
/// VIP goes dark at its deadline, and every second of backoff after etcd is back is a second more
/// of blackout. One attempt per second per agent is nothing to etcd (vip-manager polls at 1 s).
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// A key without a lease stays confirmed for this many confirmation intervals (see
/// [`LeaderSettings::no_lease_validity`]).
pub const NO_LEASE_CONFIRM_FACTOR: u32 = 3;

/// System CA bundles tried, in order, for `https` endpoints without a CA file (after
/// `$SSL_CERT_FILE`): Debian/Ubuntu, RHEL/Fedora, openSUSE, Alpine/BSD.
pub const SYSTEM_CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Settings of one leader follower: one trigger key, one trigger value.
///
/// Several VIPs on the same key share one follower (clone its receiver); different keys get one
/// follower each (see the module documentation for why).
#[derive(Clone)]
pub struct LeaderSettings {
    /// etcd client URLs, `http://host:port` or `https://host:port`, all with the same scheme. A
    /// bare `host:port` means `http://`, or `https://` when a CA, certificate or key file is set.
    /// The follower uses one endpoint at a time and moves to the next one after a failure.
    pub endpoints: Vec<String>,
    /// etcd user (etcd auth). `None`: no authentication.
    pub user: Option<String>,
    /// Password of [`Self::user`] (empty when `None`).
    pub password: Option<String>,
    /// PEM file with the CA certificate(s) that signed the etcd server certificates. With `https`
    /// endpoints and no CA file the system CA bundle is used ($SSL_CERT_FILE, then
    /// [`SYSTEM_CA_BUNDLES`]); etcd clusters with a private CA therefore need this.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (etcd `--client-cert-auth`); needs [`Self::key_file`].
    pub cert_file: Option<PathBuf>,
    /// PEM private key of [`Self::cert_file`].
    pub key_file: Option<PathBuf>,
    /// The key to follow, e.g. `/service/pgcluster/leader`.
    pub trigger_key: String,
    /// This node's value in the key (the Patroni member name). Compared byte for byte.
    pub trigger_value: String,
    /// Period of the linearizable confirmation (GET + `LeaseTimeToLive`). It bounds how stale the
    /// deadline can be when etcd becomes unreachable and how long a silently broken watch goes
    /// unnoticed. Default 1 s: Patroni's lease keeps ≥ `ttl − loop_wait` ≥ 2·`retry_timeout` ≥ 6 s,
    /// so 1 s confirmations keep the deadline at least ~4 s ahead of "now" on a healthy node
    /// (well under ⅓ of any valid Patroni TTL) at a cost of two cheap reads per second.
    pub confirm_interval: Duration,
    /// Subtracted from every lease-derived deadline. Covers clock-rate differences between this
    /// host and the etcd leader (NTP slews ≤ 500 ppm each: 30 ms over a 30 s TTL) and the request
    /// path. The TTL etcd reports is already rounded down to whole seconds, so the real expiry is
    /// a further 0–1 s later. Default 500 ms.
    pub safety_margin: Duration,
    /// Optional cap: a confirmation never makes the node safe for longer than this after the
    /// request was sent, whatever the lease says. Use it to bound how long a node that cannot see
    /// etcd keeps the VIP even when the key could be released by an explicit write (switchover
    /// from another node while this one is partitioned from etcd). `None`: the lease alone.
    pub fence_timeout: Option<Duration>,
    /// Limit for each unary request (GET, `LeaseTimeToLive`, watch creation). A confirmation that
    /// exceeds it ends the session: reconnect, next endpoint.
    pub request_timeout: Duration,
    /// TCP + TLS connect timeout (and authentication, which adds one request).
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval, sent only while there are open streams. etcd's server
    /// refuses pings more often than `--grpc-keepalive-min-time` (default 5 s) with a GOAWAY, so
    /// this must stay above that; the confirmation detects dead connections sooner anyway.
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    pub keepalive_timeout: Duration,
    /// First retry delay after a failure (doubled per failure, with jitter).
    pub backoff_min: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
}

impl fmt::Debug for LeaderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderSettings")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .field("trigger_key", &self.trigger_key)
            .field("trigger_value", &self.trigger_value)
            .field("confirm_interval", &self.confirm_interval)
            .field("safety_margin", &self.safety_margin)
            .field("fence_timeout", &self.fence_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("keepalive_timeout", &self.keepalive_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

impl LeaderSettings {
    /// Settings with every default, no auth, no TLS.
    #[must_use]
    pub fn new(
        endpoints: Vec<String>,
        trigger_key: impl Into<String>,
        trigger_value: impl Into<String>,
    ) -> Self {
        Self {
            endpoints,
            user: None,
            password: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
            trigger_key: trigger_key.into(),
            trigger_value: trigger_value.into(),
            confirm_interval: DEFAULT_CONFIRM_INTERVAL,
            safety_margin: DEFAULT_SAFETY_MARGIN,
            fence_timeout: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            backoff_min: DEFAULT_BACKOFF_MIN,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }

    /// How long a confirmed key *without* a lease (a manual `etcdctl put`, never Patroni) counts as
    /// safe after the confirming request was sent: [`NO_LEASE_CONFIRM_FACTOR`] confirmation
    /// intervals, capped by [`Self::fence_timeout`]. Such a key only changes by a write, which the
    /// watch reports at once while etcd is reachable; when it is not, the node fences itself after
    /// this long, like a lease running out.
    #[must_use]
    pub fn no_lease_validity(&self) -> Duration {
        let v = self
            .confirm_interval
            .saturating_mul(NO_LEASE_CONFIRM_FACTOR);
        self.fence_timeout.map_or(v, |f| v.min(f))
    }

    fn uses_tls_files(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The endpoints with an explicit scheme.
    pub(super) fn normalized_endpoints(&self) -> Vec<String> {
        let default_scheme = if self.uses_tls_files() {
            "https://"
        } else {
            "http://"
        };
        self.endpoints
            .iter()
            .map(|e| {
                let e = e.trim();
                if e.starts_with("http://") || e.starts_with("https://") {
                    e.to_owned()
                } else {
                    format!("{default_scheme}{e}")
                }
            })
            .collect()
    }

    /// Checks everything that does not need the network. [`super::LeaderFollower::new`] and
    /// [`super::check_connection`] call it (and also read the TLS files once).
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |m: String| Err(LeaderError::InvalidSettings(m));
        if self.endpoints.is_empty() {
            return bad("no etcd endpoints".into());
        }
        let endpoints = self.normalized_endpoints();
        for e in &endpoints {
            let rest = e
                .strip_prefix("https://")
                .or_else(|| e.strip_prefix("http://"))
                .unwrap_or(e);
            let host_port = rest.split('/').next().unwrap_or("");
            if host_port.is_empty() || host_port.contains(char::is_whitespace) {
                return bad(format!("etcd endpoint {e:?} has no host"));
            }
        }
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != endpoints.len() {
            return bad(format!("etcd endpoints mix http and https: {endpoints:?}"));
        }
        if https == 0 && self.uses_tls_files() {
            return bad(format!(
                "a CA, client certificate or key file is set but the endpoints use http: {endpoints:?}"
            ));
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("a client certificate needs its key file and vice versa".into());
        }
        if self.password.is_some() && self.user.is_none() {
            return bad("an etcd password is set without a user".into());
        }
        if self.trigger_key.is_empty() {
            return bad("the trigger key is empty".into());
        }
        if self.trigger_value.is_empty() {
            return bad("the trigger value is empty".into());
        }
        if self.confirm_interval < Duration::from_millis(50) {
            return bad(format!(
                "confirm interval {:?} is below 50 ms",
                self.confirm_interval
            ));
        }
        for (name, d) in [
            ("request timeout", self.request_timeout),
            ("connect timeout", self.connect_timeout),
            ("keepalive timeout", self.keepalive_timeout),
            ("backoff minimum", self.backoff_min),
        ] {
            if d.is_zero() {
                return bad(format!("{name} is zero"));
            }
        }
        if self.keepalive_interval <= Duration::from_secs(5) {
            return bad(format!(
                "keepalive interval {:?} must exceed etcd's --grpc-keepalive-min-time (5 s), \
                 or etcd closes the connection with GOAWAY too_many_pings",
                self.keepalive_interval
            ));
        }
        if self.backoff_max < self.backoff_min {
            return bad("backoff maximum is below the minimum".into());
        }
        if self.fence_timeout.is_some_and(|f| f.is_zero()) {
            return bad("fence timeout is zero".into());
        }
        Ok(())
    }

    /// Client options for one session. Reads the TLS files every time, so renewed certificates
    /// are picked up at the next reconnect.
    pub(super) fn connect_options(&self) -> Result<ConnectOptions, LeaderError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive(self.keepalive_interval, self.keepalive_timeout)
            // etcd counts pings without open streams as abuse (PermitWithoutStream=false).
            .with_keep_alive_while_idle(false)
            // A member without a raft leader fails requests and cancels the watch instead of
            // serving stale data or hanging until the request times out.
            .with_require_leader(true);
        if let Some(user) = &self.user {
            opts = opts
                .with_user(user.clone(), self.password.clone().unwrap_or_default())
                .with_auto_token_refresh(true);
        }
        if self
            .normalized_endpoints()
            .iter()
            .any(|e| e.starts_with("https://"))
        {
            opts = opts.with_tls(self.tls_options()?);
        }
        Ok(opts)
    }

    /// `error` with the client certificate's validity problem attached, when a network operation
    /// failed while the certificate is expired or not yet valid. The connection is still tried
    /// with such a certificate: an etcd without `--client-cert-auth` never looks at it.
    pub(super) fn explain(&self, error: LeaderError) -> LeaderError {
        let network = matches!(
            error,
            LeaderError::Connect { .. }
                | LeaderError::Get { .. }
                | LeaderError::Watch { .. }
                | LeaderError::WatchEnded { .. }
                | LeaderError::LeaseTimeToLive { .. }
                | LeaderError::Timeout { .. }
        );
        let Some(path) = self.cert_file.as_ref().filter(|_| network) else {
            return error;
        };
        match crate::cert::file_problem(path, std::time::SystemTime::now()) {
            Some(problem) => LeaderError::ClientCertificate {
                cause: Box::new(error),
                path: path.clone(),
                problem,
            },
            None => error,
        }
    }

    fn tls_options(&self) -> Result<TlsOptions, LeaderError> {
        let mut tls = TlsOptions::new()
            .assume_http2(true)
            .timeout(self.connect_timeout);
        let ca = match &self.ca_file {
            Some(path) => read_pem(path, "CA", "CERTIFICATE", |cause| LeaderError::ReadCaFile {
                path: path.clone(),
                cause,
            })?,
            None => system_roots()?,
        };
        tls = tls.ca_certificate(Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            let cert_pem = read_pem(cert, "client certificate", "CERTIFICATE", |cause| {
                LeaderError::ReadCertFile {
                    path: cert.clone(),
                    cause,
                }
            })?;
            let key_pem = read_pem(key, "client key", "PRIVATE KEY", |cause| {
                LeaderError::ReadKeyFile {
                    path: key.clone(),
                    cause,
                }
            })?;
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        Ok(tls)
    }
}

fn read_pem(
    path: &Path,
    what: &'static str,
    expected: &'static str,
    on_err: impl FnOnce(std::io::Error) -> LeaderError,
) -> Result<Vec<u8>, LeaderError> {
    let bytes = std::fs::read(path).map_err(on_err)?;
    // Any "-----BEGIN <...>EXPECTED-----" line: "CERTIFICATE", "EC PRIVATE KEY", "PRIVATE KEY"...
    let has_block = String::from_utf8_lossy(&bytes).lines().any(|line| {
        line.trim()
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(expected))
    });
    if !has_block {
        return Err(LeaderError::NotPem {
            what,
            path: path.to_path_buf(),
            expected,
        });
    }
    Ok(bytes)
}

fn system_roots() -> Result<Vec<u8>, LeaderError> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    for path in env
        .into_iter()
        .chain(SYSTEM_CA_BUNDLES.iter().map(PathBuf::from))
    {
        if let Ok(bytes) = std::fs::read(&path)
            && !bytes.is_empty()
        {
            tracing::debug!(
                path = %path.display(),
                "etcd TLS: no CA file configured, using the system CA bundle"
            );
            return Ok(bytes);
        }
    }
    Err(LeaderError::NoSystemRoots {
        tried: SYSTEM_CA_BUNDLES.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaderSettings {
        LeaderSettings::new(
            vec!["http://127.0.0.1:2379".into()],
            "/service/pg/leader",
            "pg1",
        )
    }

    #[test]
    fn defaults_validate() {
        settings().validate().unwrap();
    }

    #[test]
    fn rejects_bad_settings() {
        let mut s = settings();
        s.endpoints.clear();
        assert!(s.validate().is_err());

        let mut s = settings();
        s.endpoints.push("https://127.0.0.2:2379".into());
        assert!(s.validate().unwrap_err().to_string().contains("mix"));

        let mut s = settings();
        s.ca_file = Some("/nonexistent".into());
        assert!(s.validate().unwrap_err().to_string().contains("http"));

        let mut s = settings();
        s.endpoints = vec!["127.0.0.1:2379".into()];
        s.cert_file = Some("/c".into());
        assert!(s.validate().unwrap_err().to_string().contains("key"));

        let mut s = settings();
        s.trigger_value.clear();
        assert!(s.validate().is_err());

        let mut s = settings();
        s.keepalive_interval = Duration::from_secs(1);
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("too_many_pings")
        );

        let mut s = settings();
        s.password = Some("x".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn bare_endpoints_get_a_scheme() {
        let mut s = settings();
        s.endpoints = vec!["10.0.0.1:2379".into(), " http://a:1 ".into()];
        assert_eq!(
            s.normalized_endpoints(),
            ["http://10.0.0.1:2379", "http://a:1"]
        );
        s.ca_file = Some("/ca.pem".into());
        s.endpoints = vec!["10.0.0.1:2379".into()];
        assert_eq!(s.normalized_endpoints(), ["https://10.0.0.1:2379"]);
    }

    #[test]
    fn no_lease_validity_is_capped_by_fence_timeout() {
        let mut s = settings();
        assert_eq!(s.no_lease_validity(), Duration::from_secs(3));
        s.fence_timeout = Some(Duration::from_secs(2));
        assert_eq!(s.no_lease_validity(), Duration::from_secs(2));
    }

    #[test]
    fn debug_redacts_password() {
        let mut s = settings();
        s.user = Some("u".into());
        s.password = Some("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn pem_detection() {
        let dir = std::env::temp_dir().join(format!("vip-agent-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("k.pem");
        std::fs::write(
            &p,
            "-----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(read_pem(&p, "client key", "PRIVATE KEY", |_| unreachable!()).is_ok());
        std::fs::write(&p, "-----BEGIN PRIVATE KEY-----\nabc\n").unwrap();
        assert!(read_pem(&p, "client key", "PRIVATE KEY", |_| unreachable!()).is_ok());
        std::fs::write(&p, "not a pem").unwrap();
        let e = read_pem(&p, "CA", "CERTIFICATE", |_| unreachable!()).unwrap_err();
        assert!(e.to_string().contains("k.pem"), "{e}");
        let e = read_pem(&dir.join("missing"), "CA", "CERTIFICATE", |cause| {
            LeaderError::ReadCaFile {
                path: dir.join("missing"),
                cause,
            }
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("CA file") && e.to_string().contains("missing"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
