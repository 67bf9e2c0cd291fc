//! The validity period of PEM certificates, so that an expired (or not yet valid) etcd or Patroni
//! certificate is named as such instead of surfacing as a closed connection.
//!
//! With TLS 1.3 a server that refuses our client certificate does so after the handshake has
//! completed on our side: all the client sees is "connection closed". Reading the certificate's
//! `notAfter` ourselves turns that into "client certificate /etc/etcd/client.crt expired at
//! 2026-11-30 21:35:52 UTC". Only the validity dates are read (a minimal DER walk of the
//! `TBSCertificate` prefix); the signatures are the TLS library's business.

use std::fmt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, pem::PemObject};

/// Why a certificate file is unusable at a given moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValidityProblem {
    /// `notAfter` has passed.
    Expired { not_after: UnixTime },
    /// `notBefore` lies ahead (or this host's clock is behind).
    NotYetValid { not_before: UnixTime },
}

impl fmt::Display for ValidityProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Expired { not_after } => write!(f, "expired at {not_after}"),
            Self::NotYetValid { not_before } => write!(
                f,
                "is not valid before {not_before} (is this host's clock behind?)"
            ),
        }
    }
}

/// Seconds since the Unix epoch, shown as `YYYY-MM-DD HH:MM:SS UTC`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixTime(pub i64);

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400);
        let secs = self.0.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            secs / 3600,
            secs / 60 % 60,
            secs % 60
        )
    }
}

/// The problem of the first certificate in `path` (the leaf) at `now`, if it has one. Files that
/// cannot be read or parsed give `None`: other checks report those.
#[must_use]
pub fn file_problem(path: &Path, now: SystemTime) -> Option<ValidityProblem> {
    let pem = std::fs::read(path).ok()?;
    pem_problem(&pem, now)
}

/// [`file_problem`] for PEM bytes.
#[must_use]
pub fn pem_problem(pem: &[u8], now: SystemTime) -> Option<ValidityProblem> {
    let der = CertificateDer::pem_slice_iter(pem).next()?.ok()?;
    let (not_before, not_after) = validity(&der)?;
    let now = UnixTime(
        now.duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
    );
    if now > not_after {
        Some(ValidityProblem::Expired { not_after })
    } else if now < not_before {
        Some(ValidityProblem::NotYetValid { not_before })
    } else {
        None
    }
}

/// `(notBefore, notAfter)` of a DER certificate.
fn validity(der: &[u8]) -> Option<(UnixTime, UnixTime)> {
    let (cert, _) = tlv(der, 0x30)?;
    let (tbs, _) = tlv(cert, 0x30)?;
    let mut rest = tbs;
    // version [0] EXPLICIT, optional
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest, 0xa0)?.1;
    }
    rest = tlv(rest, 0x02)?.1; // serialNumber
    rest = tlv(rest, 0x30)?.1; // signature AlgorithmIdentifier
    rest = tlv(rest, 0x30)?.1; // issuer Name
    let (validity, _) = tlv(rest, 0x30)?;
    let (not_before, rest) = time(validity)?;
    let (not_after, _) = time(rest)?;
    Some((not_before, not_after))
}

/// One DER element with tag `tag` at the start of `input`: `(contents, rest)`.
fn tlv(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, input) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let (bytes, rest) = input.split_at(n);
        input = rest;
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
    };
    (input.len() >= len).then(|| input.split_at(len))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950-2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`).
fn time(input: &[u8]) -> Option<(UnixTime, &[u8])> {
    let (year, digits, rest) = match input.first()? {
        0x17 => {
            let (v, rest) = tlv(input, 0x17)?;
            let yy = number(v.get(..2)?)?;
            (
                if yy >= 50 { 1900 + yy } else { 2000 + yy },
                v.get(2..)?,
                rest,
            )
        }
        0x18 => {
            let (v, rest) = tlv(input, 0x18)?;
            (number(v.get(..4)?)?, v.get(4..)?, rest)
        }
        _ => return None,
    };
    if digits.len() != 11 || digits[10] != b'Z' {
        return None;
    }
    let field = |i: usize| number(&digits[i..i + 2]);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // A leap second (60) is allowed by the encoding; it counts as the next second.
    if second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((
        UnixTime(days * 86_400 + hour * 3600 + minute * 60 + second),
        rest,
    ))
}

fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `openssl req -x509 -days 3650`: notBefore 2026-12-01 21:51:13, notAfter 2036-11-28
    /// 21:51:13 (UTCTime).
    const UTC_TIME: &str = "-----BEGIN CERTIFICATE-----
MIIBbTCCAROgAwIBAgIUZkn7rCGzjM3E7b4/LdprU9Y/UiswCgYIKoZIzj0EAwIw
DDEKMAgGA1UEAwwBdDAeFw0yNjEyMDEyMTUxMTNaFw0zNjExMjgyMTUxMTNaMAwx
CjAIBgNVBAMMAXQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQychjWkJBblNQi
xWLLMtVQbzYRniEl05Y+5+nAtZO/8kq8o8to2cbbVQ4e+mFOqq4y2//GOvWJgKJN
ULPuNW/Do1MwUTAdBgNVHQ4EFgQUmrA3266sjXNw0246qC6CfG68KsYwHwYDVR0j
BBgwFoAUmrA3266sjXNw0246qC6CfG68KsYwDwYDVR0TAQH/BAUwAwEB/zAKBggq
hkjOPQQDAgNIADBFAiA79Etn7sFvJQIoIWfcOZlwg1jcT0KpkpUCnKegXTK2ygIh
AIJeDY10koAdhFrARZA1B4jZ3QrxcBzh+c/JN0AmqT4w
-----END CERTIFICATE-----
";

    /// `-days 40000`: notAfter 2136-06-07 21:51:16 (GeneralizedTime).
    const GENERALIZED_TIME: &str = "-----BEGIN CERTIFICATE-----
MIIBbzCCARWgAwIBAgIUfWpqAoj0QpnQSO6i901Pimg6tCQwCgYIKoZIzj0EAwIw
DDEKMAgGA1UEAwwBZzAgFw0yNjEyMDEyMTUxMTZaGA8yMTM2MDYwNzIxNTExNlow
DDEKMAgGA1UEAwwBZzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABINTosDgyp9r
GisZ5lcpAMCER9o1e4WFnbvIm0E5exXSs6lOy8td/8IHM7auVjPFCKXwSLTgLaLH
DlIJRSLiPSqjUzBRMB0GA1UdDgQWBBR/oUGAlb54+wNGsuyYYT+Hdu2dsTAfBgNV
HSMEGDAWgBR/oUGAlb54+wNGsuyYYT+Hdu2dsTAPBgNVHRMBAf8EBTADAQH/MAoG
CCqGSM49BAMCA0gAMEUCIQCom82NjOsFIs/7HwIXveXeo08kd5AWrCtPFBqdR/pt
BgIgcVf4urlUgU7Ciu7bmbbd5fHHkZHVDhhUG7JdmVhC0bw=
-----END CERTIFICATE-----
";

    fn at(unix: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix)
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        // Expected values from `date -d "<openssl x509 -dates>" +%s`.
        assert_eq!(
            validity(&der(UTC_TIME)),
            Some((UnixTime(1_796_161_873), UnixTime(2_111_521_873)))
        );
        assert_eq!(
            validity(&der(GENERALIZED_TIME)).unwrap().1,
            UnixTime(5_252_161_876)
        );
    }

    #[test]
    fn problems_at_each_side_of_the_period() {
        let pem = UTC_TIME.as_bytes();
        assert_eq!(pem_problem(pem, at(1_796_161_873)), None);
        assert_eq!(pem_problem(pem, at(2_111_521_873)), None);
        let expired = pem_problem(pem, at(2_111_521_874)).unwrap();
        assert_eq!(
            expired.to_string(),
            "expired at 2036-11-28 21:51:13 UTC",
            "{expired:?}"
        );
        let early = pem_problem(pem, at(1_796_161_872)).unwrap();
        assert!(
            early
                .to_string()
                .starts_with("is not valid before 2026-12-01 21:51:13 UTC"),
            "{early}"
        );
    }

    #[test]
    fn garbage_is_no_verdict() {
        assert_eq!(pem_problem(b"not pem", at(0)), None);
        let mut d = der(UTC_TIME);
        for cut in 0..d.len() {
            // Truncated DER never panics.
            let _ = validity(&d[..cut]);
        }
        d[1] = 0xff;
        assert_eq!(validity(&d), None);
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-719_468, -1, 0, 1, 10_957, 20_000, 60_000, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(UnixTime(951_782_400).to_string(), "2000-02-29 00:00:00 UTC");
    }
}
