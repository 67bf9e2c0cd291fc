//! The monitoring shipped in `dist/`: the Prometheus alerting rules pass `promtool check rules` and
//! their unit tests (`promtool test rules`), and every `vip_agent_*` metric that the rules, their
//! tests and the Grafana dashboard name is one a running agent exports (read from its /metrics, so
//! a renamed metric fails here instead of silently emptying a panel or an alert).
//!
//! promtool is Debian's `prometheus` package (`cargo xtask setup`); without it the promtool test
//! skips loudly, except under CI. The metric-name check runs a real agent (one node, real etcd,
//! subnet 10.77.202.0/24): root, or a loud skip (a failure under CI).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use vip_tests::{cluster::Cluster, require_privileges};

const DIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist");
const RULES: &str = "prometheus/vip-agent.rules.yml";
const RULE_TESTS: &str = "prometheus/vip-agent.rules.test.yml";
const DASHBOARD: &str = "grafana/vip-agent.json";
const METRICS_PORT: u16 = 9477;

fn dist(file: &str) -> PathBuf {
    Path::new(DIST).join(file)
}

fn read(file: &str) -> String {
    let path = dist(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
        || std::env::var(vip_tests::REQUIRE_PRIVILEGES).is_ok_and(|v| v == "1")
}

/// `promtool` on PATH, or `None` after a loud skip (a panic under CI).
fn promtool(test: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file());
    if found.is_none() {
        let reason = "promtool is not installed (Debian package `prometheus`; `cargo xtask setup`)";
        assert!(!ci(), "{test}: {reason}; tests may not skip under CI");
        eprintln!("SKIPPED {test}: {reason}.");
    }
    found
}

#[test]
fn prometheus_rules_pass_promtool_check_and_their_tests() {
    let Some(promtool) = promtool("prometheus_rules_pass_promtool_check_and_their_tests") else {
        return;
    };
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(DIST)
            .output()
            .unwrap_or_else(|e| panic!("run promtool: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        assert!(text.contains("SUCCESS"), "promtool {args:?}:\n{text}");
        eprintln!("promtool {}: {}", args.join(" "), text.trim());
    }
    // The rules cover what the dashboard and the documentation promise.
    let rules = read(RULES);
    for alert in [
        "VipAgentVipHeldByNoNode",
        "VipAgentVipHeldByTwoNodes",
        "VipAgentDataplaneLatencyHigh",
        "VipAgentPromotionGateWaiting",
        "VipAgentArpConflict",
        "VipAgentRestarted",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
    }
}

/// Every `vip_agent_<name>` token in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("vip_agent_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        // Not a suffix of a longer identifier (e.g. `my_vip_agent_x`).
        let standalone = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        // `vip_agent_*` in prose is no name.
        if standalone && end > "vip_agent_".len() {
            names.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The series names a Prometheus scrape of `exposition` yields: each `# TYPE` family, with the
/// `_bucket`/`_sum`/`_count` series of histograms and summaries.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        let suffixes: &[&str] = match kind {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["_sum", "_count"],
            _ => &[],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

fn scrape(c: &Cluster) -> String {
    let addr = SocketAddr::from((c.nodes[0].host.ip, METRICS_PORT));
    c.nodes[0].host.ns.run_in(|| {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .expect("read the response");
        response
    })
}

#[test]
fn dashboard_and_rules_name_only_metrics_the_agent_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(
        panels.iter().all(|p| p["targets"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["expr"].is_string()))),
        "every panel queries Prometheus"
    );
    let used: BTreeSet<String> = [DASHBOARD, RULES, RULE_TESTS]
        .iter()
        .flat_map(|f| metric_names(&read(f)))
        .collect();
    assert!(used.contains("vip_agent_answering"), "{used:?}");

    if !require_privileges("dashboard_and_rules_name_only_metrics_the_agent_exports") {
        return;
    }
    let mut c = Cluster::new(
        202,
        1,
        &vip_tests::agent_binary(),
        &format!("metrics-address: 0.0.0.0:{METRICS_PORT}\n"),
    );
    c.start_agent(0);
    c.wait_running();
    let response = scrape(&c);
    let exported = exported(&response);
    assert!(
        exported.len() > 10,
        "a /metrics page with families: {response}"
    );
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "dist/ names metrics the agent does not export: {unknown:?}\nexported: {exported:?}"
    );
    eprintln!(
        "{} metrics used by dist/, all among the {} exported",
        used.len(),
        exported.len()
    );
    // The page itself passes promtool's exposition lint (names, suffixes, histograms).
    if let Some(promtool) = promtool("dashboard_and_rules_name_only_metrics_the_agent_exports") {
        let body = response
            .split_once("\r\n\r\n")
            .map_or(response.as_str(), |(_, body)| body);
        let mut child = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("run promtool: {e}"));
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(body.as_bytes())
            .expect("write the page to promtool");
        let out = child.wait_with_output().expect("promtool check metrics");
        assert!(
            out.status.success(),
            "promtool check metrics:\n{}{}\npage:\n{body}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = c.terminate_agent(0).expect("the agent exits on SIGTERM");
    assert!(status.success(), "{status:?}: {}", c.log(0));
}

#[test]
fn metric_name_extraction() {
    assert_eq!(
        metric_names(
            "sum(vip_agent_answering{a=\"b\"}) + rate(vip_agent_x_total[5m]) my_vip_agent_no vip_agent_*"
        ),
        ["vip_agent_answering", "vip_agent_x_total"]
            .map(str::to_owned)
            .into()
    );
    let page = "# HELP vip_agent_a x\n# TYPE vip_agent_a gauge\nvip_agent_a 1\n\
                # TYPE vip_agent_h_seconds histogram\n";
    assert_eq!(
        exported(page),
        [
            "vip_agent_a",
            "vip_agent_h_seconds",
            "vip_agent_h_seconds_bucket",
            "vip_agent_h_seconds_count",
            "vip_agent_h_seconds_sum"
        ]
        .map(str::to_owned)
        .into()
    );
}
