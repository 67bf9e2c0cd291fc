//! The standard `process_*` metrics of this process, read from `/proc/self` at scrape time (the
//! names and meanings of the Prometheus client libraries' process collectors).

use std::fmt::Write as _;

/// What `/proc` says about this process; a field it could not read is `None` (not rendered).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub max_fds: Option<u64>,
    pub start_time_seconds: Option<f64>,
}

impl ProcessSample {
    /// Read it now.
    #[must_use]
    pub fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let stat = stat.as_deref().and_then(parse_stat);
        // SAFETY: sysconf has no memory effects.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0);
        let page = u64::try_from(page).ok();
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `limit` is a valid, writable rlimit.
        let max_fds = (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0)
            .then_some(limit.rlim_cur);
        Self {
            cpu_seconds: stat
                .zip(ticks)
                .map(|(s, t)| (s.utime + s.stime) as f64 / t as f64),
            resident_bytes: stat.zip(page).map(|(s, p)| s.rss_pages.saturating_mul(p)),
            open_fds,
            max_fds,
            start_time_seconds: stat
                .zip(ticks)
                .zip(boot)
                .map(|((s, t), b)| b as f64 + s.start_ticks as f64 / t as f64),
        }
    }

    /// The text exposition of these families.
    pub fn render(&self, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str, value: Option<String>| {
            if let Some(value) = value {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
                );
            }
        };
        family(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            self.cpu_seconds.map(|v| format!("{v:.2}")),
        );
        family(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            self.resident_bytes.map(|v| v.to_string()),
        );
        family(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            self.open_fds.map(|v| v.to_string()),
        );
        family(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            self.max_fds.map(|v| v.to_string()),
        );
        family(
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            self.start_time_seconds.map(|v| format!("{v:.2}")),
        );
    }
}

/// The fields of `/proc/self/stat` used here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stat {
    utime: u64,
    stime: u64,
    start_ticks: u64,
    rss_pages: u64,
}

/// `/proc/<pid>/stat`: fields after the command name (which may hold spaces and parentheses, so
/// everything after its last `)`): state is field 3, utime 14, stime 15, starttime 22, rss 24.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3.
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_command_name_with_spaces_and_parentheses() {
        let line = "1234 (vip (a) b) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 \
                    777 123456789 4096 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                utime: 250,
                stime: 50,
                start_ticks: 777,
                rss_pages: 4096,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_is_read() {
        let sample = ProcessSample::read();
        assert!(sample.cpu_seconds.is_some(), "{sample:?}");
        assert!(sample.resident_bytes.is_some_and(|b| b > 0), "{sample:?}");
        assert!(sample.open_fds.is_some_and(|n| n >= 3), "{sample:?}");
        assert!(sample.max_fds.is_some(), "{sample:?}");
        let start = sample.start_time_seconds.expect("a start time");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0 * 365.0,
            "{start} vs {now}"
        );
        let mut page = String::new();
        sample.render(&mut page);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(page.contains(&format!("\n{name} ")), "{name} in {page}");
        }
    }
}
