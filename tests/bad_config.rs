//! A setting kiln does not know, in the file or as a `KILN_*` variable,
//! stops the real binary with exit code 2, naming it and the nearest known
//! setting; never passes silently. Variables kiln reads that are not
//! settings (`KILN_CONFIG`, the test kit's and benchmarks') are accepted.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::{KilnBuilder, kiln};

/// Runs `builder` to its exit, which must be code 2; its stderr.
async fn refused(builder: KilnBuilder) -> String {
    let mut k = builder.spawn();
    let status = k.wait_exit(Duration::from_secs(30)).await;
    let log = k.log_text();
    assert_eq!(status.code(), Some(2), "not refused: {log}");
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mistyped_variable_stops_kiln_naming_the_nearest_setting() {
    for (var, nearest) in [
        // A letter dropped from the key.
        ("KILN_WORKER_CONCURENCY", "KILN_WORKER_CONCURRENCY"),
        // From the section: figment alone would ignore it.
        ("KILN_WORKR_CONCURRENCY", "KILN_WORKER_CONCURRENCY"),
        // The section left out.
        ("KILN_BODY_LIMIT_BYTES", "KILN_API_BODY_LIMIT_BYTES"),
        (
            "KILN_HTTP_HEADER_TIMEOUT_MS",
            "KILN_HTTP_HEADER_READ_TIMEOUT_MS",
        ),
    ] {
        let log = refused(kiln(&["work"]).env(var, "4")).await;
        assert!(
            log.contains(&format!("unknown setting {var}")),
            "{var}: {log}"
        );
        assert!(
            log.contains(&format!("did you mean {nearest}")),
            "{var}: {log}"
        );
    }
    // Nothing near: pointed to the list.
    let log = refused(kiln(&["work"]).env("KILN_XYZZY", "1")).await;
    assert!(log.contains("unknown setting KILN_XYZZY"), "{log}");
    assert!(log.contains("kiln --help"), "{log}");
    // A section alone names its settings.
    let log = refused(kiln(&["work"]).env("KILN_LOG", "debug")).await;
    assert!(log.contains("KILN_LOG_LEVEL"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_value_of_an_unknown_variable_is_never_shown() {
    let secret = "sk-live-do-not-print-me";
    let log = refused(kiln(&["work"]).env("KILN_IMAGES_APIKEY", secret)).await;
    assert!(log.contains("did you mean KILN_IMAGES_API_KEY"), "{log}");
    assert!(!log.contains(secret), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_in_the_settings_file_stops_kiln_naming_the_nearest() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, unknown, nearest) in [
        (
            "[worker]\nconcurency = 4\n",
            "worker.concurency",
            "worker.concurrency",
        ),
        ("[workr]\nconcurrency = 4\n", "workr", "worker"),
        (
            "[http]\nmax_connections_per_address = 4\n",
            "http.max_connections_per_address",
            "http.max_connections_per_ip",
        ),
        // Too far from anything to guess: the list instead.
        ("[http]\nfoo = 1\n", "http.foo", ""),
    ] {
        let file = dir.path().join("kiln.toml");
        std::fs::write(&file, toml).unwrap();
        let log = refused(kiln(&["--config", file.to_str().unwrap(), "work"])).await;
        assert!(
            log.contains(&format!("unknown setting {unknown} in ")),
            "{toml}: {log}"
        );
        if nearest.is_empty() {
            assert!(log.contains("kiln --help"), "{toml}: {log}");
        } else {
            assert!(
                log.contains(&format!("did you mean {nearest}?")),
                "{toml}: {log}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_kiln_reads_that_are_not_settings_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.toml");
    std::fs::write(&file, "[worker]\nconcurrency = 2\n").unwrap();
    let k = kiln(&[])
        .env("KILN_CONFIG", file.to_str().unwrap())
        .env("KILN_TEST_POSTGRES_URL", "postgres://nowhere/")
        .env("KILN_BENCH_IMAGES", "10")
        .env("KILN_BENCH_POSTGRES_URL", "postgres://nowhere/")
        // Any case, as figment reads them.
        .env("kiln_worker_batch_size", "5")
        .spawn();
    k.wait_http(k.http, "/healthz").await;
}
