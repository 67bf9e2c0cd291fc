//! The Pigsty-generated vip-manager.yml (`examples/pigsty-vip-manager.yml`) works unchanged:
//! it loads as is, and with its certificate paths pointed at files that exist it passes the host
//! checks on a host whose eth1 carries the node's own address.

use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use vip_agent::config::{
    ConfigArgs, HostFacts, InterfaceFacts, NoticeLevel, Secret, XdpModeSetting, load,
};

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/pigsty-vip-manager.yml"
);

fn load_file(path: &Path) -> vip_agent::config::Config {
    load(&ConfigArgs {
        config: Some(path.to_owned()),
        ..ConfigArgs::default()
    })
    .unwrap_or_else(|e| panic!("{} should load: {e}", path.display()))
}

#[test]
fn config_pigsty_file_loads_as_is() {
    let config = load_file(Path::new(EXAMPLE));
    let vip = &config.vips[0];
    assert_eq!(config.vips.len(), 1);
    assert_eq!(vip.ip, Ipv4Addr::new(10, 10, 10, 3));
    assert_eq!(vip.prefix_len, 24);
    assert_eq!(vip.interface, "eth1");
    assert_eq!(vip.trigger_key, "/pg/pg-test/leader");
    assert_eq!(vip.trigger_value, "pg-test-1");
    assert_eq!(config.etcd.endpoints, ["https://10.10.10.10:2379"]);
    assert_eq!(config.etcd.user.as_deref(), Some("pg-test"));
    assert_eq!(
        config.etcd.password.as_ref().map(Secret::expose),
        Some("pg-test")
    );
    assert_eq!(
        config.etcd.ca_file.as_deref(),
        Some(Path::new("/pg/cert/ca.crt"))
    );
    assert_eq!(
        config.etcd.cert_file.as_deref(),
        Some(Path::new("/pg/cert/server.crt"))
    );
    assert_eq!(
        config.etcd.key_file.as_deref(),
        Some(Path::new("/pg/cert/server.key"))
    );
    assert_eq!(config.xdp_mode, XdpModeSetting::Auto);
    assert_eq!(config.fence_timeout, None);
    assert!(!config.verbose);
    let keys = |level| {
        config
            .notices
            .iter()
            .filter(|n| n.level == level)
            .map(|n| n.key.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(NoticeLevel::Info),
        ["interval", "retry-after", "retry-num"]
    );
    // hosting-type, plus the world-readable-password warning if the checkout made it 0644.
    assert!(keys(NoticeLevel::Warning).contains(&"hosting-type"));
}

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn config_pigsty_file_passes_host_checks_with_real_certificate_files() {
    let dir = TempDir(
        std::env::temp_dir().join(format!("vip-agent-config-pigsty-{}", std::process::id())),
    );
    fs::create_dir_all(&dir.0).expect("temp dir");
    let write = |name: &str, content: &str, mode: u32| {
        let path = dir.0.join(name);
        fs::write(&path, content).expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    };
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let ca = write("ca.crt", pem, 0o644);
    let cert = write("server.crt", pem, 0o644);
    let key = write(
        "server.key",
        "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n",
        0o600,
    );

    // Only the three path values change; everything else stays byte for byte.
    let original = fs::read_to_string(EXAMPLE).expect("example");
    let rewritten = original
        .replace("/pg/cert/ca.crt", &ca.display().to_string())
        .replace("/pg/cert/server.crt", &cert.display().to_string())
        .replace("/pg/cert/server.key", &key.display().to_string());
    assert_eq!(original.lines().count(), rewritten.lines().count());
    let file = write("vip-manager.yml", &rewritten, 0o600); // Pigsty's mode

    let config = load_file(&file);
    assert_eq!(config.etcd.ca_file.as_deref(), Some(ca.as_path()));
    assert!(
        config.notices.iter().all(|n| n.key != "etcd-password"),
        "0600 file: no permission warning: {:#?}",
        config.notices
    );

    // eth1 as on a Pigsty node: the inventory address first; on the primary also the VIP.
    let own = (Ipv4Addr::new(10, 10, 10, 11), 24);
    let vip = (Ipv4Addr::new(10, 10, 10, 3), 24);
    for ipv4 in [vec![own], vec![own, vip]] {
        let facts = HostFacts {
            interfaces: [
                (
                    "lo".to_owned(),
                    InterfaceFacts {
                        up: true,
                        loopback: true,
                        ipv4: vec![(Ipv4Addr::LOCALHOST, 8)],
                        ipv6: Vec::new(),
                    },
                ),
                (
                    "eth1".to_owned(),
                    InterfaceFacts {
                        up: true,
                        loopback: false,
                        ipv4,
                        ipv6: Vec::new(),
                    },
                ),
            ]
            .into(),
        };
        let notices = config
            .validate_host_with(&facts)
            .unwrap_or_else(|e| panic!("host checks: {e}"));
        assert!(
            notices.iter().all(|n| n.level == NoticeLevel::Info),
            "{notices:#?}"
        );
    }

    // `vip-agent check` output: effective values, password redacted.
    let rendered = config.render_redacted();
    assert!(rendered.contains("etcd-password: <redacted>"), "{rendered}");
    assert!(!rendered.contains("etcd-password: pg-test"), "{rendered}");
    assert!(
        rendered.contains("trigger-key: /pg/pg-test/leader"),
        "{rendered}"
    );
}
