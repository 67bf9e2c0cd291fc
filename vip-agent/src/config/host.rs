//! Checks of a parsed [`Config`] against this host: interfaces, their addresses, certificate
//! files, the pin directory.
//!
//! # The VIP and the interface's own addresses
//!
//! A VIP that is already configured on its interface is normal: the node that held it last (or
//! vip-manager before the migration) left it there, and the data plane fences it. What must not
//! happen is a VIP that *is* the node's own address: fencing it would cut the node off (SSH,
//! Patroni, etcd), and a node address can never move anyway. The kernel keeps an interface's IPv4
//! addresses in order, primaries first: the node's own address is configured at boot, before any
//! VIP, and `ip addr add` of a VIP in the same subnet makes it a secondary behind it (a /32 VIP is
//! a primary inserted after the existing ones). So the rules are:
//!
//! * the VIP is the interface's **only** IPv4 address → error: it is the node's address (on an
//!   interface that carries nothing but the VIP, start the agent when the VIP is not there);
//! * the VIP is the interface's **first** IPv4 address and others follow → error: it was there
//!   before the node's own addresses, so it is one of them (deleting a primary also deletes its
//!   secondaries unless `promote_secondaries` is set);
//! * the VIP is present with another prefix than `netmask` → warning (vip-manager and vip-agent add
//!   exactly `ip/netmask`; remove the stale one);
//! * the VIP is present on **another** interface → error (a stale address there would answer ARP
//!   outside the data plane's control);
//! * no other address of the interface shares a subnet with the VIP → warning (clients on the
//!   segment may not consider it on-link);
//! * the interface is missing or loopback → error; administratively down → warning.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use nix::{net::if_::InterfaceFlags, sys::statfs};

use super::{Config, ConfigError, Location, Notice, NoticeLevel, VipConfig, values};

/// What the host checks need to know about this host's interfaces (in the caller's network
/// namespace). Build it with [`HostFacts::probe`], or by hand in tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostFacts {
    pub interfaces: BTreeMap<String, InterfaceFacts>,
}

/// One interface.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceFacts {
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    pub loopback: bool,
    /// IPv4 addresses with prefix lengths, in the kernel's order (primaries first).
    pub ipv4: Vec<(Ipv4Addr, u8)>,
    /// IPv6 addresses with prefix lengths.
    pub ipv6: Vec<(Ipv6Addr, u8)>,
}

impl HostFacts {
    /// Read the interfaces and their IPv4 addresses with `getifaddrs` (netlink, so the calling
    /// thread's network namespace).
    ///
    /// # Errors
    /// When the interfaces cannot be listed.
    pub fn probe() -> Result<Self, ConfigError> {
        let addrs = nix::ifaddrs::getifaddrs().map_err(|e| ConfigError::Host {
            location: Location::Default,
            key: "interface".to_owned(),
            reason: format!("cannot list this host's interfaces (getifaddrs): {e}"),
        })?;
        let mut interfaces: BTreeMap<String, InterfaceFacts> = BTreeMap::new();
        for ifa in addrs {
            let facts = interfaces.entry(ifa.interface_name.clone()).or_default();
            facts.up |= ifa.flags.contains(InterfaceFlags::IFF_UP);
            facts.loopback |= ifa.flags.contains(InterfaceFlags::IFF_LOOPBACK);
            if let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                let prefix = ifa
                    .netmask
                    .as_ref()
                    .and_then(|m| m.as_sockaddr_in())
                    .and_then(|m| u8::try_from(m.ip().to_bits().count_ones()).ok())
                    .unwrap_or(32);
                facts.ipv4.push((addr.ip(), prefix));
            }
            if let Some(addr) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in6()) {
                let prefix = ifa
                    .netmask
                    .as_ref()
                    .and_then(|m| m.as_sockaddr_in6())
                    .and_then(|m| u8::try_from(m.ip().to_bits().count_ones()).ok())
                    .unwrap_or(128);
                facts.ipv6.push((addr.ip(), prefix));
            }
        }
        Ok(Self { interfaces })
    }
}

/// `BPF_FS_MAGIC` from `statfs(2)`.
const BPF_FS_MAGIC: statfs::FsType = statfs::BPF_FS_MAGIC;
/// The one place where the data plane mounts bpffs itself.
const BPFFS_MOUNT: &str = "/sys/fs/bpf";

impl Config {
    /// Check the configuration against this host ([`HostFacts::probe`], then
    /// [`Config::validate_host_with`]).
    ///
    /// # Errors
    /// All failed checks, each naming the source, key and reason.
    pub fn validate_host(&self) -> Result<Vec<Notice>, ConfigError> {
        self.validate_host_with(&HostFacts::probe()?)
    }

    /// Check the configuration against the given interface facts and the file system: every
    /// interface exists and is not loopback, no VIP is the node's own address (rules in the
    /// module documentation), the CA/certificate/key files are readable PEM, the pin path can be
    /// on bpffs. Returns the warnings and notes.
    ///
    /// # Errors
    /// All failed checks, each naming the source, key and reason.
    pub fn validate_host_with(&self, facts: &HostFacts) -> Result<Vec<Notice>, ConfigError> {
        let mut check = HostCheck {
            config: self,
            errors: Vec::new(),
            notices: Vec::new(),
        };
        let mut seen_interfaces = BTreeSet::new();
        for (i, vip) in self.vips.iter().enumerate() {
            check.vip(i, vip, facts, &mut seen_interfaces);
        }
        let etcd = &self.etcd;
        for (key, path) in [
            ("etcd-ca-file", etcd.ca_file.as_deref()),
            ("etcd-cert-file", etcd.cert_file.as_deref()),
            ("etcd-key-file", etcd.key_file.as_deref()),
        ] {
            if let Some(path) = path {
                check.pem_file(key, path);
            }
        }
        // The promotion gate's TLS files, once per file (per-VIP keys name their entry).
        let mut seen_files = BTreeSet::new();
        for (i, vip) in self.vips.iter().enumerate() {
            let gate = &vip.gate;
            // Without patroni-url, the member key may name an https API: check the files too.
            if gate.mode != super::GateMode::Patroni
                || gate.patroni_url.as_ref().is_some_and(|u| !u.tls)
            {
                continue;
            }
            for (key, path) in [
                ("patroni-ca-file", gate.patroni_ca_file.as_deref()),
                ("patroni-cert-file", gate.patroni_cert_file.as_deref()),
                ("patroni-key-file", gate.patroni_key_file.as_deref()),
            ] {
                if let Some(path) = path
                    && seen_files.insert(path.to_path_buf())
                {
                    let key = check.vip_key(i, key);
                    check.pem_file(&key, path);
                }
            }
        }
        check.pin_path();
        if let Some(repmgr) = &self.repmgr {
            check.postgres_socket_dirs(repmgr.postgres_dsn.expose());
        }
        if let Some(group) = self.repmgr.as_ref().and_then(|r| r.socket_group.as_deref())
            && group.parse::<u32>().is_err()
            && !matches!(nix::unistd::Group::from_name(group), Ok(Some(_)))
        {
            check.error(
                "repmgr-socket-group",
                format!("there is no group {group:?} on this host"),
            );
        }
        match ConfigError::from_list(check.errors) {
            Some(error) => Err(error),
            None => Ok(check.notices),
        }
    }
}

struct HostCheck<'a> {
    config: &'a Config,
    errors: Vec<ConfigError>,
    notices: Vec<Notice>,
}

impl HostCheck<'_> {
    /// `key` of VIP `i` as the user wrote it (`interface` or `vips[i].interface`).
    fn vip_key(&self, i: usize, key: &str) -> String {
        let listed = format!("vips[{i}].{key}");
        if self.config.provenance.keys.contains_key(&listed) {
            listed
        } else {
            key.to_owned()
        }
    }

    fn error(&mut self, key: &str, reason: String) {
        self.errors.push(ConfigError::Host {
            location: self.config.provenance.location(key),
            key: key.to_owned(),
            reason,
        });
    }

    fn notice(&mut self, level: NoticeLevel, key: &str, message: String) {
        self.notices.push(Notice {
            level,
            location: self.config.provenance.location(key),
            key: key.to_owned(),
            message,
        });
    }

    fn vip(
        &mut self,
        i: usize,
        vip: &VipConfig,
        facts: &HostFacts,
        seen_interfaces: &mut BTreeSet<String>,
    ) {
        let if_key = self.vip_key(i, "interface");
        let ip_key = self.vip_key(i, "ip");
        let first_time = seen_interfaces.insert(vip.interface.clone());
        let Some(iface) = facts.interfaces.get(&vip.interface) else {
            if first_time {
                let names: Vec<&str> = facts.interfaces.keys().map(String::as_str).collect();
                let hint = values::closest(&vip.interface, &names)
                    .map(|c| format!("; did you mean {c:?}?"))
                    .unwrap_or_default();
                self.error(
                    &if_key,
                    format!(
                        "interface {:?} does not exist on this host (it has: {}){hint}",
                        vip.interface,
                        names.join(", ")
                    ),
                );
            }
            return;
        };
        if iface.loopback {
            if first_time {
                self.error(
                    &if_key,
                    format!(
                        "{:?} is a loopback interface: a VIP must be on the interface facing \
                         the clients' L2 segment",
                        vip.interface
                    ),
                );
            }
            return;
        }
        if !iface.up && first_time {
            self.notice(
                NoticeLevel::Warning,
                &if_key,
                format!(
                    "{:?} is administratively down: the VIP is unreachable until it is up",
                    vip.interface
                ),
            );
        }

        let vip4 = match vip.ip {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(v6) => {
                self.vip_ipv6(&ip_key, vip, v6, iface, facts);
                return;
            }
        };
        for (name, other) in &facts.interfaces {
            if *name != vip.interface && other.ipv4.iter().any(|(a, _)| *a == vip4) {
                self.error(
                    &ip_key,
                    format!(
                        "{} is configured on {name}, not on {}: either it is {name}'s own \
                         address, or a stale VIP that would answer ARP outside vip-agent's \
                         control; remove it (`ip addr del {}/.. dev {name}`) or fix `interface`",
                        vip4, vip.interface, vip4
                    ),
                );
            }
        }

        let position = iface.ipv4.iter().position(|(a, _)| *a == vip4);
        let others: Vec<(Ipv4Addr, u8)> = iface
            .ipv4
            .iter()
            .copied()
            .filter(|(a, _)| *a != vip4)
            .collect();
        if let Some(position) = position {
            let (_, present_prefix) = iface.ipv4[position];
            if others.is_empty() {
                self.error(
                    &ip_key,
                    format!(
                        "{} is the only IPv4 address of {}: that makes it the node's own \
                         address, which can neither move nor be fenced without cutting the node \
                         off. A VIP must be an extra address (if {} only ever carries the VIP, \
                         start vip-agent while the VIP is not configured)",
                        vip4, vip.interface, vip.interface
                    ),
                );
                return;
            }
            if position == 0 {
                self.error(
                    &ip_key,
                    format!(
                        "{} is the first (primary) IPv4 address of {}, ahead of {}: the node's \
                         own address comes first, a VIP is added after it. Use a free address \
                         as the VIP (if this is a stale VIP left over from before the node's \
                         address was re-added, remove it with `ip addr del {}/{} dev {}`)",
                        vip4,
                        vip.interface,
                        list(&others),
                        vip4,
                        present_prefix,
                        vip.interface
                    ),
                );
                return;
            }
            if present_prefix != vip.prefix_len {
                self.notice(
                    NoticeLevel::Warning,
                    &ip_key,
                    format!(
                        "{}/{present_prefix} is configured on {}, but netmask is {}: not the \
                         address vip-agent adds; remove the stale one",
                        vip4, vip.interface, vip.prefix_len
                    ),
                );
            } else {
                self.notice(
                    NoticeLevel::Info,
                    &ip_key,
                    format!(
                        "{}/{} is currently configured on {} (this node held it last)",
                        vip4, vip.prefix_len, vip.interface
                    ),
                );
            }
        }

        let on_link = others
            .iter()
            .any(|&(a, p)| same_subnet(a, vip4, p) || same_subnet(a, vip4, vip.prefix_len));
        if !on_link {
            let have = if others.is_empty() {
                "no other IPv4 address".to_owned()
            } else {
                list(&others)
            };
            self.notice(
                NoticeLevel::Warning,
                &ip_key,
                format!(
                    "{}/{} shares no subnet with {}'s addresses ({have}): clients on that segment \
                     only ARP for it if they route it there",
                    vip4, vip.prefix_len, vip.interface
                ),
            );
        }
    }

    /// The address checks of an IPv6 VIP. The IPv4 heuristics about the node's own (first, only)
    /// address do not apply: every IPv6 interface has several addresses, and the kernel picks
    /// source addresses by scope and prefix, not by order.
    fn vip_ipv6(
        &mut self,
        ip_key: &str,
        vip: &VipConfig,
        ip: Ipv6Addr,
        iface: &InterfaceFacts,
        facts: &HostFacts,
    ) {
        for (name, other) in &facts.interfaces {
            if *name != vip.interface && other.ipv6.iter().any(|(a, _)| *a == ip) {
                self.error(
                    ip_key,
                    format!(
                        "{ip} is configured on {name}, not on {}: either it is {name}'s own \
                         address, or a stale VIP that would answer neighbour solicitations \
                         outside vip-agent's control; remove it (`ip addr del {ip}/.. dev \
                         {name}`) or fix `interface`",
                        vip.interface
                    ),
                );
            }
        }
        if let Some((_, present)) = iface.ipv6.iter().find(|(a, _)| *a == ip) {
            self.notice(
                if *present == vip.prefix_len {
                    NoticeLevel::Info
                } else {
                    NoticeLevel::Warning
                },
                ip_key,
                if *present == vip.prefix_len {
                    format!(
                        "{ip}/{present} is currently configured on {} (this node held it last)",
                        vip.interface
                    )
                } else {
                    format!(
                        "{ip}/{present} is configured on {}, but netmask is {}: not the address \
                         vip-agent adds; remove the stale one",
                        vip.interface, vip.prefix_len
                    )
                },
            );
        }
        // Link-local addresses say nothing about the segment's prefixes.
        let others: Vec<(Ipv6Addr, u8)> = iface
            .ipv6
            .iter()
            .copied()
            .filter(|(a, _)| *a != ip && !a.is_unicast_link_local())
            .collect();
        let on_link = others
            .iter()
            .any(|&(a, p)| same_prefix6(a, ip, p) || same_prefix6(a, ip, vip.prefix_len));
        if !on_link {
            let have = if others.is_empty() {
                "no other global or unique-local IPv6 address".to_owned()
            } else {
                others
                    .iter()
                    .map(|(a, p)| format!("{a}/{p}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            self.notice(
                NoticeLevel::Warning,
                ip_key,
                format!(
                    "{ip}/{} shares no prefix with {}'s IPv6 addresses ({have}): clients on that \
                     segment only solicit it if they route it there",
                    vip.prefix_len, vip.interface
                ),
            );
        }
    }

    /// A CA/certificate/key file: readable, PEM; a world-readable key and a certificate outside its
    /// validity period are warnings.
    fn pem_file(&mut self, key: &str, path: &Path) {
        let content = match fs::read(path) {
            Ok(content) => content,
            Err(e) => {
                self.error(key, format!("cannot read {}: {e}", path.display()));
                return;
            }
        };
        if !content.windows(11).any(|w| w == b"-----BEGIN ") {
            self.error(
                key,
                format!(
                    "{} is not PEM (no \"-----BEGIN \" line); PEM certificates and keys are needed",
                    path.display()
                ),
            );
            return;
        }
        if (key.ends_with("cert-file") || key.ends_with("ca-file"))
            && let Some(problem) = crate::cert::pem_problem(&content, std::time::SystemTime::now())
        {
            self.notice(
                NoticeLevel::Warning,
                key,
                format!(
                    "the certificate {} {problem}; TLS connections that check it will fail",
                    path.display()
                ),
            );
        }
        if key.ends_with("key-file")
            && let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o004 != 0
        {
            self.notice(
                NoticeLevel::Warning,
                key,
                format!(
                    "the private key {} is readable by every local user (mode {:04o})",
                    path.display(),
                    meta.permissions().mode() & 0o7777
                ),
            );
        }
    }

    /// The unix socket directories of repmgr mode's `postgres-dsn`: not writable by every local
    /// user, who could otherwise put a socket there in PostgreSQL's place and answer
    /// `pg_is_in_recovery() = f` (TCP is refused when parsing).
    fn postgres_socket_dirs(&mut self, dsn: &str) {
        let Ok(parsed) = dsn.trim().parse::<tokio_postgres::Config>() else {
            return;
        };
        for host in parsed.get_hosts() {
            if let tokio_postgres::config::Host::Unix(dir) = host
                && let Ok(meta) = fs::metadata(dir)
                && meta.permissions().mode() & 0o002 != 0
            {
                self.error(
                    "postgres-dsn",
                    format!(
                        "the socket directory {} is writable by every local user (mode {:04o}), \
                         who could put a socket there in PostgreSQL's place; use PostgreSQL's \
                         own directory, e.g. /var/run/postgresql",
                        dir.display(),
                        meta.permissions().mode() & 0o7777
                    ),
                );
            }
        }
    }

    /// A directory root later opens maps and programs in: not a symbolic link, owned by root
    /// (or this user), and not writable by other users, who could otherwise choose what is
    /// opened. `what` names it in the error.
    fn owned_directory(&mut self, path: &Path, what: &str) -> bool {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return true;
        };
        let problem = if meta.file_type().is_symlink() {
            Some("is a symbolic link; give the real path".to_owned())
        } else if !meta.is_dir() {
            Some("exists and is not a directory".to_owned())
        } else if meta.uid() != 0 && meta.uid() != nix::unistd::geteuid().as_raw() {
            Some(format!("is owned by uid {}, not root", meta.uid()))
        } else if meta.permissions().mode() & 0o022 != 0
            // A sticky root directory (bpffs's own root is 1777): others cannot replace what
            // root puts there, and the interface directories are checked one by one.
            && !(meta.permissions().mode() & 0o1000 != 0 && meta.uid() == 0)
        {
            Some(format!(
                "is writable by other users (mode {:04o}); chmod go-w it",
                meta.permissions().mode() & 0o7777
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.error("pin-path", format!("{what} {} {problem}", path.display()));
                false
            }
            None => true,
        }
    }

    /// The pin directory: a directory if it exists; on bpffs unless it is under /sys/fs/bpf,
    /// where the data plane mounts bpffs itself. It and each interface's directory in it are
    /// [`Self::owned_directory`].
    fn pin_path(&mut self) {
        let path = self.config.pin_path.clone();
        if !self.owned_directory(&path, "the pin directory") {
            return;
        }
        let interfaces: BTreeSet<String> = self
            .config
            .vips
            .iter()
            .map(|v| v.interface.clone())
            .collect();
        for interface in interfaces {
            if !self.owned_directory(&path.join(&interface), "the interface's pin directory") {
                return;
            }
        }
        if let Ok(meta) = fs::metadata(&path)
            && !meta.is_dir()
        {
            self.error(
                "pin-path",
                format!("{} exists and is not a directory", path.display()),
            );
            return;
        }
        if path.starts_with(BPFFS_MOUNT) {
            return;
        }
        let Some(existing) = path.ancestors().find(|p| p.exists()) else {
            return;
        };
        if !on_bpffs(existing) {
            self.error(
                "pin-path",
                format!(
                    "{} is not on a bpf file system ({} is not bpffs); vip-agent mounts bpffs \
                     only at {BPFFS_MOUNT}",
                    path.display(),
                    existing.display()
                ),
            );
        }
    }
}

fn on_bpffs(path: &Path) -> bool {
    statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len.min(32)))
        .unwrap_or(0);
    a.to_bits() & mask == b.to_bits() & mask
}

fn same_prefix6(a: Ipv6Addr, b: Ipv6Addr, prefix_len: u8) -> bool {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix_len.min(128)))
        .unwrap_or(0);
    a.to_bits() & mask == b.to_bits() & mask
}

fn list(addrs: &[(Ipv4Addr, u8)]) -> String {
    addrs
        .iter()
        .map(|(a, p)| format!("{a}/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}
