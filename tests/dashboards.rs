//! The Grafana dashboard and the Prometheus alert rules in `dashboards/`
//! use exactly the metrics `store/src/metrics.rs` defines: no name that
//! does not exist, no defined metric without a panel. When `promtool` is on
//! PATH, the rules must also pass `promtool check rules`.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The string literals passed as the first argument of each `call`
/// (`counter(`, `Opts::new(`, …) in Rust source. A call whose first argument
/// is not a literal (`Opts::new(name, help)` inside a helper) is skipped.
fn first_literal_args(source: &str, call: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = source;
    while let Some(at) = rest.find(call) {
        let preceded_by_ident = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_');
        rest = &rest[at + call.len()..];
        if preceded_by_ident && !call.starts_with(char::is_uppercase) {
            continue; // e.g. `my_counter(` is not `counter(`
        }
        let arg = rest.trim_start();
        if let Some(literal) = arg.strip_prefix('"') {
            let end = literal.find('"').unwrap();
            found.insert(literal[..end].to_owned());
        }
    }
    found
}

/// Every metric name defined in `store/src/metrics.rs`, and which of them
/// are histograms (the only ones with `_bucket`, `_sum`, `_count` series).
fn defined_metrics() -> (BTreeSet<String>, BTreeSet<String>) {
    let source = read("store/src/metrics.rs");
    let mut all = BTreeSet::new();
    let mut histograms = BTreeSet::new();
    for call in ["counter(", "Opts::new("] {
        all.extend(first_literal_args(&source, call));
    }
    for call in ["histogram(", "HistogramOpts::new("] {
        histograms.extend(first_literal_args(&source, call));
    }
    all.extend(histograms.iter().cloned());
    assert!(
        all.len() >= 5 && all.contains("kiln_queue_depth") && !histograms.is_empty(),
        "the scan of store/src/metrics.rs found too little; has its shape changed? {all:?}"
    );
    for name in &all {
        assert!(
            name.starts_with("kiln_"),
            "metric {name} lacks the kiln_ prefix"
        );
    }
    (all, histograms)
}

/// Every `kiln_[a-z0-9_]+` word in `text` (not part of a longer identifier).
fn kiln_names(text: &str) -> BTreeSet<String> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut i = 0;
    while let Some(offset) = text[i..].find("kiln_") {
        let start = i + offset;
        let mut end = start + "kiln_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if (start == 0 || !is_word(bytes[start - 1])) && end > start + "kiln_".len() {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// The defined metric a series name belongs to, if any.
fn base_metric(
    series: &str,
    defined: &BTreeSet<String>,
    histograms: &BTreeSet<String>,
) -> Option<String> {
    if defined.contains(series) {
        return Some(series.to_owned());
    }
    HISTOGRAM_SUFFIXES
        .iter()
        .filter_map(|suffix| series.strip_suffix(suffix))
        .find(|base| histograms.contains(*base))
        .map(str::to_owned)
}

fn undefined_names(
    text: &str,
    defined: &BTreeSet<String>,
    histograms: &BTreeSet<String>,
) -> Vec<String> {
    kiln_names(text)
        .into_iter()
        .filter(|name| base_metric(name, defined, histograms).is_none())
        .collect()
}

/// Every panel, including those nested in collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in list.as_array().into_iter().flatten() {
            out.push(panel);
            if let Some(nested) = panel.get("panels") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn the_dashboard_is_grafana_json_over_exactly_the_defined_metrics() {
    let (defined, histograms) = defined_metrics();
    let text = read("dashboards/kiln-queues.json");
    let dashboard: Value = serde_json::from_str(&text).expect("kiln-queues.json is JSON");

    assert_eq!(dashboard["schemaVersion"], 39);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["queue", "kind"] {
        let definition = variable(name)["definition"].as_str().unwrap();
        assert!(
            definition.starts_with("label_values(") && definition.ends_with(&format!(", {name})")),
            "variable {name}: {definition}"
        );
    }

    let undefined = undefined_names(&text, &defined, &histograms);
    assert!(
        undefined.is_empty(),
        "kiln-queues.json names metrics store/src/metrics.rs does not define: {undefined:?}"
    );

    let mut used = BTreeSet::new();
    let mut exprs = 0;
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {:?} has a target without expr", panel["title"]));
            exprs += 1;
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "panel {:?}",
                panel["title"]
            );
            used.extend(
                kiln_names(expr)
                    .iter()
                    .filter_map(|name| base_metric(name, &defined, &histograms)),
            );
        }
    }
    assert!(exprs > 0, "the dashboard has no queries");
    let unused: Vec<_> = defined.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "metrics defined in store/src/metrics.rs with no dashboard panel: {unused:?}"
    );
}

#[test]
fn the_alert_rules_use_only_defined_metrics() {
    let (defined, histograms) = defined_metrics();
    let text = read("dashboards/alerts.yml");
    assert!(
        text.contains("groups:") && text.contains("- alert:"),
        "alerts.yml is not in groups/rules format"
    );
    let names = kiln_names(&text);
    assert!(!names.is_empty(), "alerts.yml uses no kiln metric");
    let undefined = undefined_names(&text, &defined, &histograms);
    assert!(
        undefined.is_empty(),
        "alerts.yml names metrics store/src/metrics.rs does not define: {undefined:?}"
    );
}

fn on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

#[test]
fn promtool_accepts_the_alert_rules() {
    let Some(promtool) = on_path("promtool") else {
        eprintln!(
            "note: promtool is not on PATH; skipping `promtool check rules dashboards/alerts.yml` \
             (CI installs it)"
        );
        return;
    };
    let output = Command::new(&promtool)
        .args(["check", "rules", "dashboards/alerts.yml"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} check rules dashboards/alerts.yml failed ({}):\n{}\n{}",
        promtool.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn the_scanners_find_what_they_should() {
    let source = r#"
        let counter = |name: &str| Opts::new(name, "help");
        a: counter("kiln_a_total", "help", &["kind"])?,
        b: histogram(
            "kiln_b_seconds",
            "help",
        )?,
        c: IntGaugeVec::new(Opts::new("kiln_c", "help"), &["queue"])?,
        d: my_counter("not_a_metric"),
    "#;
    let literals = |call| {
        first_literal_args(source, call)
            .into_iter()
            .collect::<Vec<_>>()
    };
    assert_eq!(literals("counter("), ["kiln_a_total"]);
    assert_eq!(literals("histogram("), ["kiln_b_seconds"]);
    assert_eq!(literals("Opts::new("), ["kiln_c"]);

    let names = kiln_names("rate(kiln_x_total[5m]) / x_kiln_y + kiln_z_bucket{le} kiln_ kiln-q");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["kiln_x_total", "kiln_z_bucket"]
    );

    let defined = BTreeSet::from(["kiln_h".to_owned(), "kiln_c_total".to_owned()]);
    let histograms = BTreeSet::from(["kiln_h".to_owned()]);
    assert_eq!(
        base_metric("kiln_h_bucket", &defined, &histograms).as_deref(),
        Some("kiln_h")
    );
    assert_eq!(base_metric("kiln_c_total_sum", &defined, &histograms), None);
    assert_eq!(base_metric("kiln_nope", &defined, &histograms), None);
}

#[test]
fn promtool_accepts_the_example_scrape_configuration() {
    let Some(promtool) = on_path("promtool") else {
        eprintln!("note: promtool is not on PATH; skipping the scrape configuration check");
        return;
    };
    let output = Command::new(&promtool)
        .args(["check", "config", "dashboards/prometheus.yml"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool check config dashboards/prometheus.yml failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Rules are found beside it: no path outside the repository.
    let config = read("dashboards/prometheus.yml");
    assert!(!config.contains("../"), "{config}");
}
