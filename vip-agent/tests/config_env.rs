//! Precedence through clap with real environment variables: flag > `VIP_*` variable > file.
//!
//! The only test in this binary, so no other test reads the environment while it is changed.

use std::{fs, os::unix::fs::PermissionsExt as _};

use clap::{CommandFactory as _, Parser as _};
use vip_agent::config::{ConfigArgs, Location, load};

#[derive(clap::Parser, Debug)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
}

#[test]
fn config_flag_beats_variable_beats_file() {
    let dir = std::env::temp_dir().join(format!("vip-agent-config-env-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("vip-manager.yml");
    fs::write(
        &file,
        "ip: 10.0.0.1\nnetmask: 16\ninterface: eth0\ntrigger-key: /service/batman/leader\n\
         trigger-value: file-node\nverbose: false\n",
    )
    .expect("write config");
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");

    let vars = [
        ("VIP_CONFIG", file.to_str().expect("utf-8 path")),
        ("VIP_IP", "10.0.0.2"),
        ("VIP_NETMASK", "20"),
        ("VIP_INTERFACE", ""),
        ("VIP_DCS_ENDPOINTS", "https://e1:2379,https://e2:2379"),
        ("VIP_VERBOSE", "true"),
        ("VIP_ETCD_USER", "batman"),
        ("VIP_ETCD_PASSWORD", "env-secret-value"),
    ];
    for (name, value) in vars {
        // SAFETY: this is the only test of this binary, and it runs before any other thread of
        // the test reads the environment (clap reads it below, on this thread).
        unsafe { std::env::set_var(name, value) };
    }

    let cli = Cli::try_parse_from([
        "vip-agent",
        "--netmask",
        "24",
        "--trigger-value",
        "flag-node",
    ])
    .expect("arguments parse");
    let config = load(&cli.config).expect("config loads");
    let vip = &config.vips[0];
    assert_eq!(vip.ip.to_string(), "10.0.0.2", "variable beats file");
    assert_eq!(vip.prefix_len, 24, "flag beats variable");
    assert_eq!(vip.trigger_value, "flag-node", "flag beats file");
    assert_eq!(
        vip.interface, "eth0",
        "an empty variable leaves the file's value"
    );
    assert_eq!(
        vip.trigger_key, "/service/batman/leader",
        "file fills the rest"
    );
    assert_eq!(
        config.etcd.endpoints,
        ["https://e1:2379", "https://e2:2379"]
    );
    assert!(config.verbose, "VIP_VERBOSE=true beats verbose: false");
    assert_eq!(config.etcd.user.as_deref(), Some("batman"));
    assert_eq!(
        config.etcd.password.as_ref().map(|p| p.expose()),
        Some("env-secret-value")
    );
    // From the variable, so no "password on the command line" warning.
    assert!(
        config.notices.iter().all(|n| n.key != "etcd-password"),
        "{:#?}",
        config.notices
    );
    assert!(matches!(
        config.provenance.location("ip"),
        Location::Args { ref env, .. } if env == "VIP_IP"
    ));
    assert_eq!(
        config.provenance.location("trigger-key"),
        Location::File(file.display().to_string())
    );

    // `--help` shows which variables exist but never the password's value.
    let help = Cli::command().render_long_help().to_string();
    assert!(help.contains("VIP_ETCD_PASSWORD"), "{help}");
    assert!(!help.contains("env-secret-value"), "{help}");

    let _ = fs::remove_dir_all(&dir);
}
