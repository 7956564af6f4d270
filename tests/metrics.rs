//! `/metrics` of a fresh `kiln work` process, scraped before any job has
//! run, already has every kind and every queue at 0 and the build info;
//! no series is labelled with the process's own id. Its maintenance loop
//! then counts itself alive. A `kiln serve` process has the per-kind
//! series too, but none of the database-wide gauges it never refreshes.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::kiln;
use kiln_jobs::catalogue::{KINDS, queues};
use kiln_store::testing::TestDatabase;

/// Series (name and labels as exposed) to value.
fn series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn labelled(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_scrape_shows_every_kind_and_queue_at_zero_and_the_build() {
    let db = TestDatabase::postgres().await;
    let worker = kiln(&["work"]).database(&db.url).spawn();
    worker.wait_healthy().await;
    let text = scrape(worker.metrics).await;
    let all = series(&text);
    let at_zero = |name: String| {
        assert_eq!(
            all.get(&name),
            Some(&0.0),
            "{name} missing or not 0 in:\n{text}"
        );
    };
    for kind in KINDS.iter().map(|k| k.kind) {
        for name in [
            "kiln_jobs_enqueued_total",
            "kiln_jobs_started_total",
            "kiln_job_retries_total",
            "kiln_leases_rescued_total",
            "kiln_job_run_seconds_count",
            "kiln_job_queue_wait_seconds_count",
        ] {
            at_zero(labelled(name, &[("kind", kind)]));
        }
        for outcome in kiln_store::metrics::OUTCOMES {
            at_zero(labelled(
                "kiln_jobs_finished_total",
                &[("kind", kind), ("outcome", outcome)],
            ));
        }
    }
    for queue in queues() {
        for state in ["scheduled", "available", "running", "retryable", "failed"] {
            at_zero(labelled(
                "kiln_queue_depth",
                &[("queue", queue), ("state", state)],
            ));
        }
        at_zero(labelled(
            "kiln_queue_oldest_due_seconds",
            &[("queue", queue)],
        ));
    }
    at_zero("kiln_worker_jobs_running".to_owned());
    let build = labelled("kiln_build_info", &[("version", env!("CARGO_PKG_VERSION"))]);
    assert_eq!(all.get(&build), Some(&1.0), "{text}");
    // Labels are bounded: nothing names this process (its id holds the pid).
    let pid = format!("-{}-", worker.pid());
    assert!(
        !text.contains(&pid),
        "a series is labelled with the worker's id:\n{text}"
    );

    // The first maintenance tick reads the registry: this process.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(worker.metrics).await;
        if series(&text).get("kiln_workers_alive") == Some(&1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "never one worker alive:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let api = kiln(&["serve"]).database(&db.url).spawn();
    api.wait_healthy().await;
    let text = scrape(api.metrics).await;
    let all = series(&text);
    assert_eq!(
        all.get(&labelled("kiln_jobs_enqueued_total", &[("kind", "probe")])),
        Some(&0.0)
    );
    assert_eq!(all.get(&build), Some(&1.0));
    for gauge in [
        "kiln_queue_depth",
        "kiln_queue_oldest_due_seconds",
        "kiln_workers_alive",
    ] {
        assert!(
            !all.keys().any(|k| k.starts_with(gauge)),
            "{gauge} from a process that never refreshes it:\n{text}"
        );
    }
}
