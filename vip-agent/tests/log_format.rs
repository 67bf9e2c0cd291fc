//! `--log-format json` writes the daemon's log lines as JSON objects on stdout (a log shipper reads
//! them), and the default stays text. The configuration's notices are logged after the subscriber
//! is set up and before the host checks, so a configuration whose interface does not exist shows
//! both without privileges: one notice line, then the exit with the error on stderr.

use std::{path::PathBuf, process::Command};

const AGENT: &str = env!("CARGO_BIN_EXE_vip-agent");

/// A configuration file of its own for each test (`tag`): they run in parallel.
fn config(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "vip-agent-log-format-{}-{tag}.yml",
        std::process::id()
    ));
    std::fs::write(
        &path,
        "ip: 10.0.0.30\nnetmask: 24\ninterface: nonexistent0\ntrigger-key: /service/demo/leader\n\
         trigger-value: node1\ndcs-type: etcd\ndcs-endpoints: http://127.0.0.1:2379\nretry-num: 2\n",
    )
    .expect("write the configuration");
    path
}

fn run(tag: &str, args: &[&str]) -> (String, String) {
    let config = config(tag);
    let out = Command::new(AGENT)
        .args(args)
        .arg("--config")
        .arg(&config)
        // Not under systemd: the text format must not switch to the journal here.
        .env_remove("JOURNAL_STREAM")
        .env_remove("VIP_AGENT_LOG_FORMAT")
        .output()
        .expect("run vip-agent");
    drop(std::fs::remove_file(&config));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    (
        String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    )
}

#[test]
fn log_format_json_writes_one_object_a_line() {
    let (stdout, stderr) = run("json", &["--log-format", "json"]);
    assert!(stderr.contains("nonexistent0"), "{stderr}");
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let notice = lines
        .iter()
        .find(|l| l["fields"]["key"] == "retry-num")
        .unwrap_or_else(|| panic!("the retry-num notice in {stdout}"));
    assert_eq!(notice["level"], "INFO", "{notice}");
    assert!(notice["fields"]["message"].is_string(), "{notice}");
}

#[test]
fn log_format_text_is_the_default() {
    let (stdout, _) = run("text", &[]);
    assert!(stdout.contains("retry-num"), "{stdout}");
    assert!(!stdout.trim_start().starts_with('{'), "{stdout}");
}
