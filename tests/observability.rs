//! The observability stack in `deploy/observability/` stays valid: Prometheus' own `promtool`
//! accepts the scrape config and the alert rules and passes the rules' unit tests, every
//! dashboard query is valid PromQL, the dashboard only uses the data sources Grafana is
//! provisioned with, and every metric the dashboard and the alerts query is one the daemons
//! export.
//!
//! Needs `promtool` (Debian package `prometheus`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use fusestream_tests::{FuseStream, Options, http_get, random_file, tool, try_http_get};
use serde_json::Value;

/// Both daemons, serving metrics, after a file was staged and read (so every family
/// has seen use).
fn daemons_serving_metrics() -> FuseStream {
    let metrics = || vec!["--metrics-listen".to_string(), "127.0.0.1:0".to_string()];
    let fs = FuseStream::start_with(Options {
        mountd_args: metrics(),
        control_args: metrics(),
        ..Options::default()
    });
    let input = fs.input("scraped.bin");
    let data = random_file(&input, 1 << 20);
    fs.ctl_ok(["stage", input.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(fs.mountpoint.join("scraped.bin")).unwrap(),
        data
    );
    fs
}

/// The metric names both daemons export now (histograms by family name).
fn exported_names(fs: &FuseStream) -> BTreeSet<String> {
    let (control, mount) = fs.metrics_addrs();
    let mut names = BTreeSet::new();
    for addr in [control, mount] {
        let addr = addr.expect("status shows the metrics address");
        names.extend(exposition_names(&http_get(&addr, "/metrics")));
    }
    names
}

fn observability(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/observability")
        .join(file)
}

fn read(file: &str) -> String {
    let path = observability(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `promtool ARGS...` and fails the test with everything it said unless it succeeds.
fn promtool(args: &[&std::ffi::OsStr]) {
    let out = Command::new(tool("promtool"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{}{}",
        args.iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_config_the_rules_and_the_rule_tests() {
    let config = observability("prometheus.yml");
    let rules = observability("alerts.yml");
    let tests = observability("alerts.test.yml");
    // rule_files in both are relative to the file that names them.
    promtool(&["check".as_ref(), "config".as_ref(), config.as_os_str()]);
    promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()]);
    promtool(&["test".as_ref(), "rules".as_ref(), tests.as_os_str()]);
}

#[test]
fn dashboard_queries_are_valid_promql() {
    let exprs = dashboard_exprs();
    // promtool parses the queries as recording rules, with Grafana's variables filled in.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__interval", "15s")
            .replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            yaml_quote(&expr)
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, rules).unwrap();
    promtool(&["check".as_ref(), "rules".as_ref(), path.as_os_str()]);
}

#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let dashboard = dashboard_exprs();
    let alerts = rule_exprs(&read("alerts.yml"));
    let alert_count = read("alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    assert_eq!(
        alerts.len(),
        alert_count,
        "one expr per alert in alerts.yml"
    );
    assert!(alert_count > 0 && !dashboard.is_empty());

    let fs = daemons_serving_metrics();
    let mut exported = exported_names(&fs);
    // Made by Prometheus for every target, not by the daemons.
    exported.insert("up".to_string());

    for (file, exprs) in [
        ("grafana/dashboards/fusestream.json", &dashboard),
        ("alerts.yml", &alerts),
    ] {
        let referenced = referenced_metrics(exprs.iter().map(String::as_str));
        assert!(!referenced.is_empty(), "{file}: no metrics found");
        let unknown: Vec<_> = referenced.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} queries metrics the daemons do not export: {unknown:?}"
        );
    }
}

/// A real Prometheus on a temp dir, killed when dropped.
struct Prometheus {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (job, address) every second.
    fn start(targets: &[(&str, &str)]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, addr) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n"
            ));
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        // A free port (Prometheus does not report an ephemeral one).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = Command::new(tool("prometheus"))
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("prometheus: {e}"));
        Prometheus {
            child,
            addr,
            _dir: dir,
        }
    }

    /// The result vector of instant query `query`, or None while Prometheus is not up.
    fn query(&self, query: &str) -> Option<Vec<Value>> {
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let (status, body) = try_http_get(&self.addr, &path).ok()?;
        assert_eq!(status, 200, "{query}: {body}");
        let reply: Value = serde_json::from_str(&body).ok()?;
        reply["data"]["result"].as_array().cloned()
    }

    /// Waits (bounded: a liveness check) until `query` returns a series for which
    /// `condition` holds on (labels, value).
    fn wait_for(&self, query: &str, condition: impl Fn(&Value, f64) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let found = self.query(query).unwrap_or_default().iter().any(|series| {
                let value = series["value"][1].as_str().and_then(|v| v.parse().ok());
                value.is_some_and(|v| condition(&series["metric"], v))
            });
            if found {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "Prometheus never answered {query:?} as expected; last: {:?}",
                self.query(query)
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

#[test]
fn a_real_prometheus_scrapes_both_daemons() {
    let fs = daemons_serving_metrics();
    let (control, mount) = fs.metrics_addrs();
    let (control, mount) = (control.unwrap(), mount.unwrap());
    let prometheus = Prometheus::start(&[
        ("fusestream-mountd", &mount),
        ("fusestream-control", &control),
    ]);
    for job in ["fusestream-mountd", "fusestream-control"] {
        prometheus.wait_for(&format!("up{{job=\"{job}\"}}"), |_, v| v == 1.0);
    }
    // What was just read is there, by op, and so is what the dashboard's panels use.
    prometheus.wait_for("fusestream_fuse_op_duration_seconds_count", |labels, v| {
        labels["op"] == "read" && v > 0.0
    });
    prometheus.wait_for("fusestream_entries", |_, v| v == 1.0);
    prometheus.wait_for("fusestream_log_lines_dropped_total", |labels, _| {
        labels["job"] == "fusestream-control"
    });
}

#[test]
fn dashboard_uses_the_provisioned_datasources() {
    let provisioned: BTreeSet<String> = read("grafana/provisioning/datasources/fusestream.yaml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("uid:"))
        .map(|uid| uid.trim().trim_matches(['"', '\'']).to_string())
        .collect();
    assert!(
        provisioned.contains("fusestream-prometheus"),
        "{provisioned:?}"
    );
    let dashboard = dashboard();
    let mut uids = BTreeSet::new();
    collect_datasource_uids(&dashboard, &mut uids);
    // Grafana's built-in annotation source needs no provisioning.
    uids.remove("-- Grafana --");
    assert!(!uids.is_empty(), "the dashboard names no datasource uid");
    let unknown: Vec<_> = uids.difference(&provisioned).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard uses datasource uids that are not provisioned: {unknown:?}"
    );
}

#[test]
fn referenced_metrics_reads_promql() {
    let found = referenced_metrics([
        r#"histogram_quantile(0.99, sum by (op, le) (rate(fusestream_fuse_op_duration_seconds_bucket{op!="forget"}[$__rate_interval])))"#,
        "sum(rate(fusestream_a_sum[5m])) / sum(rate(fusestream_a_count[5m]))",
        r#"up{job=~"fusestream-mountd|fusestream_not_a_metric"} == 0 # fusestream_comment"#,
        "fusestream_cache_bytes / (fusestream_cache_budget_bytes > 0) > 0.95",
        "label_replace(fusestream_b, 'x', 'fusestream_in_string', 'op', `fusestream_raw`)",
    ]);
    let expected: BTreeSet<String> = [
        "fusestream_fuse_op_duration_seconds",
        "fusestream_a",
        "up",
        "fusestream_cache_bytes",
        "fusestream_cache_budget_bytes",
        "fusestream_b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(found, expected);
}

#[test]
fn exposition_names_reads_the_text_format() {
    let text = "\
# HELP fusestream_fuse_op_duration_seconds Time from request arrival to reply.
# TYPE fusestream_fuse_op_duration_seconds histogram
fusestream_fuse_op_duration_seconds_bucket{op=\"read\",le=\"0.001\"} 3
fusestream_fuse_op_duration_seconds_sum{op=\"read\"} 0.002
fusestream_fuse_op_duration_seconds_count{op=\"read\"} 3
# TYPE fusestream_fetch_bytes counter
fusestream_fetch_bytes_total 42
# TYPE fusestream_entries gauge
fusestream_entries 2
untyped_sample 1 1700000000000
# EOF
";
    let names = exposition_names(text);
    for name in [
        "fusestream_fuse_op_duration_seconds",
        "fusestream_fetch_bytes_total",
        "fusestream_entries",
        "untyped_sample",
    ] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    assert!(!names.contains("EOF"));
}

/// Metric names that PromQL `exprs` query: identifiers starting with `fusestream_`
/// (a histogram's `_bucket`, `_sum` and `_count` series as the histogram's name) and `up`.
/// String literals and comments are skipped, so label values never count.
pub fn referenced_metrics<'a>(exprs: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for expr in exprs {
        let mut chars = expr.char_indices().peekable();
        while let Some((start, c)) = chars.next() {
            match c {
                '"' | '\'' | '`' => {
                    let mut escaped = false;
                    for (_, d) in chars.by_ref() {
                        if escaped {
                            escaped = false;
                        } else if d == '\\' && c != '`' {
                            escaped = true;
                        } else if d == c {
                            break;
                        }
                    }
                }
                '#' => {
                    for (_, d) in chars.by_ref() {
                        if d == '\n' {
                            break;
                        }
                    }
                }
                c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                    let mut end = start + c.len_utf8();
                    while let Some(&(i, d)) = chars.peek() {
                        if !(d.is_ascii_alphanumeric() || d == '_' || d == ':') {
                            break;
                        }
                        end = i + d.len_utf8();
                        chars.next();
                    }
                    let word = &expr[start..end];
                    if word.starts_with("fusestream_") {
                        let family = ["_bucket", "_sum", "_count"]
                            .iter()
                            .find_map(|suffix| word.strip_suffix(suffix))
                            .unwrap_or(word);
                        names.insert(family.to_string());
                    } else if word == "up" {
                        names.insert(word.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    names
}

/// Metric names in a Prometheus text exposition (or OpenMetrics): every `# TYPE` family
/// (a counter family also as `NAME_total`, as OpenMetrics names it without the suffix) and
/// every sample's name.
pub fn exposition_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                names.insert(name.to_string());
                if kind == "counter" && !name.ends_with("_total") {
                    names.insert(format!("{name}_total"));
                }
            }
        } else if !line.is_empty() && !line.starts_with('#') {
            let end = line
                .find(|c: char| c == '{' || c.is_whitespace())
                .unwrap_or(line.len());
            names.insert(line[..end].to_string());
        }
    }
    names
}

/// The PromQL of every `expr:` in a rules file: plain, quoted or block (`|`, `>`) scalars.
fn rule_exprs(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        i += 1;
        let Some(rest) = trimmed.strip_prefix("expr:") else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block = Vec::new();
            while let Some(next) = lines.get(i) {
                let text = next.trim_start();
                if !text.is_empty() && next.len() - text.len() <= indent {
                    break;
                }
                block.push(text);
                i += 1;
            }
            exprs.push(block.join("\n"));
        } else if let Some(quoted) = rest
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .or_else(|| rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        {
            exprs.push(quoted.to_string());
        } else {
            // A plain scalar ends at a YAML comment.
            let plain = rest.split(" #").next().unwrap_or(rest);
            exprs.push(plain.to_string());
        }
    }
    exprs
}

/// `s` as a YAML double-quoted scalar (JSON string syntax, which YAML accepts).
fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn dashboard() -> Value {
    let file = "grafana/dashboards/fusestream.json";
    serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Every string under key `key`, anywhere in `value`.
fn collect(value: &Value, key: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(members) => {
            for (k, v) in members {
                if let (true, Value::String(text)) = (k == key, v) {
                    out.push(text.clone());
                }
                collect(v, key, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect(item, key, out)),
        _ => {}
    }
}

/// Every `expr` (a Prometheus target's query) in the dashboard.
fn dashboard_exprs() -> Vec<String> {
    let mut exprs = Vec::new();
    collect(&dashboard(), "expr", &mut exprs);
    exprs
}

/// The `uid` of every `"datasource": {...}` object.
fn collect_datasource_uids(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(members) => {
            if let Some(Value::String(uid)) = members.get("datasource").and_then(|d| d.get("uid")) {
                out.insert(uid.clone());
            }
            members
                .values()
                .for_each(|v| collect_datasource_uids(v, out));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_datasource_uids(item, out)),
        _ => {}
    }
}
