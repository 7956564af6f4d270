//! A real Prometheus (Debian's `prometheus`) scrapes a running kiln under
//! load; then every Grafana panel expression and every alert expression
//! of `dashboards/` goes to its query API: each must parse, name only
//! series kiln exports, and each panel must return data. And the series
//! kiln exports stay bounded however many users and jobs pass through.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{Client, free_addr, kiln};
use kiln_jobs::{Probe, UserId};
use kiln_store::{NewJob, testing::TestDatabase};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| candidate.is_file())
}

/// A Prometheus server scraping `target` every second, with kiln's alert
/// rules loaded; killed on drop.
struct Prometheus {
    child: Child,
    api: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Option<Prometheus> {
        let Some(binary) = on_path("prometheus") else {
            assert!(
                std::env::var_os("CI").is_none(),
                "prometheus is not on PATH; CI installs Debian's `prometheus`"
            );
            eprintln!("note: prometheus is not on PATH; skipping (CI installs it)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            root().join("dashboards/alerts.yml"),
            dir.path().join("alerts.yml"),
        )
        .unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - alerts.yml\n\
             scrape_configs:\n  - job_name: kiln\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let listen = free_addr();
        let child = Command::new(binary)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        Some(Prometheus {
            child,
            api: format!("http://{listen}/api/v1"),
            _dir: dir,
        })
    }

    async fn try_query(&self, expr: &str) -> Result<Value, reqwest::Error> {
        reqwest::Client::new()
            .get(format!("{}/query", self.api))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await
    }

    async fn query(&self, expr: &str) -> Value {
        self.try_query(expr).await.unwrap()
    }

    /// Every metric name Prometheus holds series of.
    async fn names(&self) -> BTreeSet<String> {
        let r: Value = reqwest::get(format!("{}/label/__name__/values", self.api))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits until `expr` has a sample above `at_least`.
    async fn wait_for(&self, expr: &str, at_least: f64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // Refused until the server listens.
            if let Ok(Ok(answer)) =
                tokio::time::timeout(Duration::from_secs(5), self.try_query(expr)).await
            {
                let above = answer["data"]["result"].as_array().is_some_and(|r| {
                    r.iter().any(|s| {
                        s["value"][1]
                            .as_str()
                            .and_then(|v| v.parse::<f64>().ok())
                            .is_some_and(|v| v >= at_least)
                    })
                });
                if above {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{expr} never reached {at_least}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `kiln_…` word in `text`.
fn kiln_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (i, _) in text.match_indices("kiln_") {
        let before = text[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// A panel expression as Grafana would send it: its variables filled in
/// (every queue and kind, a one-minute rate window).
fn as_sent(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$queue", ".*")
        .replace("$kind", ".*")
}

fn panel_exprs() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("dashboards/kiln-queues.json")).unwrap(),
    )
    .unwrap();
    fn walk(list: &Value, out: &mut Vec<(String, String)>) {
        for panel in list.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    out.push((
                        panel["title"].as_str().unwrap_or("").to_owned(),
                        expr.to_owned(),
                    ));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join("dashboards/alerts.yml")).unwrap();
    let mut out = Vec::new();
    let mut alert = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = trimmed.strip_prefix("expr:") {
            let mut expr = expr.trim().to_owned();
            if expr == "|" || expr == ">" || expr == "|-" || expr == ">-" {
                // A block: the more-indented lines that follow.
                let indent = line.len() - trimmed.len();
                expr.clear();
                while let Some(next) = lines.peek() {
                    let next_indent = next.len() - next.trim_start().len();
                    if next.trim().is_empty() || next_indent <= indent {
                        break;
                    }
                    expr.push_str(next.trim());
                    expr.push(' ');
                    lines.next();
                }
            }
            out.push((alert.clone(), expr.trim().to_owned()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_expression_runs_on_a_real_prometheus() {
    let db = TestDatabase::postgres().await;
    let kiln = kiln(&[]).database(&db.url).spawn();
    kiln.wait_healthy().await;
    let Some(prometheus) = Prometheus::start(kiln.metrics) else {
        return;
    };
    prometheus.wait_for("up{job=\"kiln\"}", 1.0).await;

    // Load: generations (one blocked), an upscale, a cancelled job, probes
    // that fail and retry, API errors.
    let ada = Client::signed_up(&kiln, "ada.prometheus@example.com").await;
    let mut jobs = Vec::new();
    for prompt in ["a fox", "a heron", "a lighthouse", "gore"] {
        let r = ada
            .post(
                "/v1/generations",
                json!({"prompt": prompt, "size": "256x256"}),
            )
            .await;
        assert_eq!(r.status(), 202);
        jobs.push(
            r.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for id in &jobs {
        ada.wait_final(id).await;
    }
    let done: Value = ada
        .get(&format!("/v1/jobs/{}", jobs[0]))
        .await
        .json()
        .await
        .unwrap();
    let image = done["result"]["images"][0]["id"].as_str().unwrap();
    let r = ada.post("/v1/upscales", json!({"image_id": image})).await;
    assert_eq!(r.status(), 202);
    assert_eq!(ada.get("/v1/jobs/not-a-job").await.status(), 404);
    let store = db.store().await.unwrap();
    let failing = NewJob::of(&Probe {
        fail: Some(kiln_jobs::ProbeFailure::Transient),
        ..Probe::default()
    })
    .unwrap();
    store.enqueue(failing).await.unwrap();
    prometheus
        .wait_for("sum(kiln_jobs_finished_total{kind=\"probe\"})", 1.0)
        .await;
    prometheus
        .wait_for("sum(kiln_jobs_finished_total{kind=\"upscale_image\"})", 1.0)
        .await;
    // A few more scrapes, so every rate has two samples in its window.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let exported = prometheus.names().await;
    assert!(exported.contains("kiln_build_info"), "{exported:?}");
    let mut problems = Vec::new();
    for (title, expr) in panel_exprs() {
        let sent = as_sent(&expr);
        let answer = prometheus.query(&sent).await;
        if answer["status"] != "success" {
            problems.push(format!("panel {title:?}: {sent} does not run: {answer}"));
            continue;
        }
        for name in kiln_names(&expr) {
            if !exported.contains(&name) {
                problems.push(format!("panel {title:?}: {name} is not exported"));
            }
        }
        if answer["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            problems.push(format!("panel {title:?}: {sent} returned no data"));
        }
    }
    let alerts = alert_exprs();
    assert!(alerts.len() >= 6, "{alerts:?}");
    for (alert, expr) in alerts {
        let answer = prometheus.query(&expr).await;
        if answer["status"] != "success" {
            problems.push(format!("alert {alert}: {expr} does not run: {answer}"));
        }
        for name in kiln_names(&expr) {
            if !exported.contains(&name) {
                problems.push(format!("alert {alert}: {name} is not exported"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The samples of one scrape, without comments.
async fn series(metrics: std::net::SocketAddr) -> Vec<String> {
    let text = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_stay_bounded_after_ten_thousand_jobs_from_a_thousand_users() {
    let db = TestDatabase::postgres().await;
    let kiln = kiln(&[]).database(&db.url).spawn();
    kiln.wait_healthy().await;
    let store = db.store().await.unwrap();

    // Ten jobs of each user (one failing), and a request with a token
    // nobody has (401), for `users`: returns the jobs' ids once all ran.
    let work = |users: Vec<UserId>| {
        let store = store.clone();
        let kiln = &kiln;
        async move {
            let mut ids = Vec::new();
            for chunk in users.chunks(100) {
                let jobs: Vec<NewJob> = chunk
                    .iter()
                    .flat_map(|user| {
                        (0..10).map(move |i| {
                            NewJob::of(&Probe {
                                fail: (i == 0).then_some(kiln_jobs::ProbeFailure::Permanent),
                                ..Probe::default()
                            })
                            .unwrap()
                            .owner(*user)
                        })
                    })
                    .collect();
                ids.extend(store.enqueue_many(jobs).await.unwrap());
            }
            let deadline = Instant::now() + Duration::from_secs(240);
            loop {
                let pending: i64 = store
                    .queue_stats()
                    .await
                    .unwrap()
                    .iter()
                    .filter(|s| !s.state.is_final())
                    .map(|s| s.count)
                    .sum();
                if pending == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{pending} jobs still pending");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let client = reqwest::Client::new();
            for user in users.iter().take(200) {
                let r = client
                    .get(kiln.url(&format!("/v1/jobs/{}", user.0)))
                    .bearer_auth(user.0.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 401);
            }
            ids
        }
    };
    // One user first: the series any traffic makes.
    work(vec![UserId(uuid::Uuid::now_v7())]).await;
    let before = series(kiln.metrics).await;

    let users: Vec<UserId> = (0..1000).map(|_| UserId(uuid::Uuid::now_v7())).collect();
    let ids = work(users.clone()).await;
    assert_eq!(ids.len(), 10_000);

    let after = series(kiln.metrics).await;
    let text = after.join("\n");
    for user in &users {
        assert!(!text.contains(&user.0.to_string()), "a user id is a label");
    }
    for id in ids.iter().take(1000) {
        assert!(!text.contains(&id.to_string()), "a job id is a label");
    }
    // The bound: what kiln exports does not grow with users or jobs. A
    // label per user or job would add thousands.
    const BOUND: usize = 2_000;
    let new: Vec<&String> = after.iter().filter(|s| !before.contains(s)).collect();
    assert!(
        after.len() <= BOUND && new.is_empty(),
        "{} series after one user, {} after 1,000 more: new {new:?}",
        before.len(),
        after.len()
    );
    eprintln!(
        "series: {} after one user's 10 jobs, {} after 10,000 jobs of 1,000 users",
        before.len(),
        after.len()
    );
}
