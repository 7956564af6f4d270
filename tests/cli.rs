//! The binary's front door: the default start, configuration errors, the
//! subcommands `--help` lists.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::time::Duration;

use common::kiln;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_arguments_kiln_starts_on_sqlite_and_answers_healthz() {
    let cwd = tempfile::tempdir().unwrap();
    let mut k = kiln(&[]).cwd(cwd.path()).spawn();
    k.wait_http(k.http, "/healthz").await;
    let ready: serde_json::Value = reqwest::get(format!("http://{}/readyz", k.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["database"], "sqlite");
    assert!(cwd.path().join("data/kiln.db").exists());
    let metrics = reqwest::get(format!("http://{}/metrics", k.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.is_empty() || metrics.contains("kiln_"), "{metrics}");
    k.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(k.wait_exit(Duration::from_secs(30)).await.success());
}

async fn refused(k: &mut common::Kiln) -> String {
    let status = k.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(2),
        "bad setting was not refused: {}",
        k.log_text()
    );
    k.log_text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_setting_stops_kiln_with_a_message_naming_it() {
    let mut k = kiln(&["work"])
        .env("KILN_WORKER_CONCURRENCY", "lots")
        .spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("worker.concurrency"), "{log}");

    let mut k = kiln(&["work"]).env("KILN_WORKER_CONCURRENCY", "0").spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("worker.concurrency"), "{log}");

    let mut k = kiln(&[]).database("mysql://localhost/kiln").spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("database.url"), "{log}");

    let mut k = kiln(&[]).env("KILN_HTTP_ADDR", "not-an-address").spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("http.addr") || log.contains("http"), "{log}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.toml");
    std::fs::write(&file, "[worker]\nconcurency = 4\n").unwrap();
    let mut k = kiln(&["--config", file.to_str().unwrap()]).spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("concurency"), "{log}");

    let mut k = kiln(&[])
        .env("KILN_SCHEDULER_RETENTION_PURGE_CRON", "every tuesday")
        .spawn();
    let log = refused(&mut k).await;
    assert!(log.contains("scheduler.retention_purge_cron"), "{log}");
}

/// The privacy policy's periods are limits: a retention setting that
/// would keep data longer (deleted accounts) or shorter (logs, decisions,
/// payments) than it promises stops kiln before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_setting_beyond_the_policy_stops_kiln_naming_it() {
    for (var, value, setting) in [
        (
            "KILN_RETENTION_DELETED_ACCOUNT_DAYS",
            "31",
            "retention.deleted_account_days",
        ),
        (
            "KILN_RETENTION_ACCESS_LOG_DAYS",
            "179",
            "retention.access_log_days",
        ),
        (
            "KILN_RETENTION_MODERATION_DAYS",
            "90",
            "retention.moderation_days",
        ),
        (
            "KILN_RETENTION_PAYMENT_YEARS",
            "4",
            "retention.payment_years",
        ),
    ] {
        let mut k = kiln(&["work"]).env(var, value).spawn();
        let log = refused(&mut k).await;
        assert!(log.contains(setting), "{var}={value}: {log}");
        assert!(log.contains("privacy policy"), "{var}={value}: {log}");
    }
    // The policy's own periods, and longer logs, start.
    let ok = kiln(&[])
        .env("KILN_RETENTION_DELETED_ACCOUNT_DAYS", "30")
        .env("KILN_RETENTION_ACCESS_LOG_DAYS", "365")
        .spawn();
    ok.wait_http(ok.http, "/healthz").await;
}

#[test]
fn schedule_list_prints_each_plan_and_its_next_fire_times() {
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["schedule", "--list"])
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_SCHEDULER_RETENTION_PURGE_CRON", "0 30 4 * * *")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each plan's line, then its next five fire times, indented.
    let mut plans: Vec<(&str, Vec<&str>)> = Vec::new();
    for line in stdout.lines() {
        if line.starts_with(char::is_whitespace) {
            plans.last_mut().unwrap().1.push(line);
        } else {
            plans.push((line, Vec::new()));
        }
    }
    let names: Vec<&str> = plans
        .iter()
        .map(|(p, _)| p.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(
        names,
        ["retention_purge", "accounting_export", "access_log_archive"],
        "{stdout}"
    );
    let (plan, next) = &plans[0];
    assert!(plan.contains("scheduler.retention_purge_cron"), "{stdout}");
    assert!(plan.contains("last slot: never"), "{stdout}");
    assert_eq!(next.len(), 5, "{stdout}");
    for line in next {
        let at = line.trim().strip_prefix("next ").unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
        assert_eq!(at.format("%H:%M:%S").to_string(), "04:30:00", "{stdout}");
    }
    // The monthly export fires on the first of each month.
    let (plan, next) = &plans[1];
    assert!(
        plan.contains("scheduler.accounting_export_cron"),
        "{stdout}"
    );
    for line in next {
        let at = line.trim().strip_prefix("next ").unwrap();
        let at = chrono::DateTime::parse_from_rfc3339(at).unwrap();
        assert_eq!(
            at.format("%d %H:%M:%S").to_string(),
            "01 04:00:00",
            "{stdout}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_includes_the_redis_of_shared_rate_limits() {
    let ready = kiln(&[])
        .env("KILN_RATE_LIMITS_REDIS_URL", "redis://127.0.0.1:6379")
        .spawn();
    ready.wait_http(ready.http, "/readyz").await;
    let body: serde_json::Value = reqwest::get(ready.url("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["dependencies"], serde_json::json!(["redis"]));

    // Nothing listens on port 1: live, but not ready.
    let unready = kiln(&[])
        .env("KILN_RATE_LIMITS_REDIS_URL", "redis://127.0.0.1:1")
        .spawn();
    unready.wait_http(unready.http, "/healthz").await;
    let r = reqwest::get(unready.url("/readyz")).await.unwrap();
    assert_eq!(r.status(), 503);
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "not_ready");
    assert_eq!(problem["detail"], "redis does not answer");
}

fn run_kiln(args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(args)
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap()
}

#[test]
fn help_lists_the_subcommands_of_this_build() {
    let out = run_kiln(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["all", "serve", "work", "schedule", "migrate", "user"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from --help:\n{help}"
        );
    }
    let lists_bench = help.lines().any(|l| l.trim_start().starts_with("bench"));
    assert_eq!(lists_bench, cfg!(feature = "bench"), "{help}");
}

/// Without the `bench` feature the bench is not in the binary, and asking
/// for it says how to build it instead of starting anything.
#[cfg(not(feature = "bench"))]
#[test]
fn bench_without_the_feature_says_how_to_get_it() {
    for args in [&["bench"][..], &["bench", "--jobs", "10"]] {
        let out = run_kiln(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("built without the bench feature")
                && err.contains("cargo run --release --features bench -- bench"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// `kiln user` against a database, as an operator runs it.
fn kiln_user(url: &str, args: &[&str]) -> std::process::Output {
    let cwd = tempfile::tempdir().unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("user")
        .args(args)
        .current_dir(cwd.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KILN_DATABASE_URL", url)
        .env("KILN_LOG_LEVEL", "warn")
        .env(
            "KILN_ENCRYPTION_KEYS",
            format!("{{k1=\"{}\"}}", kiln_store::testing::TEST_PII_KEY),
        )
        .env(
            "KILN_ENCRYPTION_INDEX_KEY",
            kiln_store::testing::TEST_INDEX_KEY,
        )
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_role_is_granted_and_revoked_from_the_command_line_and_logged() {
    use kiln_store::{
        access_log::AccessEvent,
        accounts::{Identifier, NewUser},
        testing::TestDatabase,
    };
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let ada = store
        .create_user(NewUser {
            identifier: Identifier::Email("ada@example.com".into()),
            password_hash: "$2b$04$hash".into(),
            birth_date: chrono::NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(),
            referral_code: "ADA".into(),
            referred_by_code: None,
            locale: Default::default(),
        })
        .await
        .unwrap()
        .id()
        .unwrap();
    assert!(!store.is_operator(ada).await.unwrap());

    // Spelled as a person might type it: normalised as sign-up does.
    let out = kiln_user(&db.url, &["grant-operator", " ADA@Example.com"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("granted the operator role"));
    assert!(store.is_operator(ada).await.unwrap());

    let out = kiln_user(&db.url, &["revoke-operator", "ada@example.com"]);
    assert!(out.status.success());
    assert!(!store.is_operator(ada).await.unwrap());
    let log = store.access_log(ada, None, 10).await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.event).collect::<Vec<_>>(),
        [AccessEvent::OperatorRevoked, AccessEvent::OperatorGranted]
    );
    assert!(
        log[0]
            .user_agent
            .as_deref()
            .unwrap()
            .contains("command line")
    );

    for (address, says) in [
        ("nobody@example.com", "no account has the address"),
        ("not an address", "is not an email or phone number"),
    ] {
        let out = kiln_user(&db.url, &["grant-operator", address]);
        assert_eq!(out.status.code(), Some(1), "{address}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{address}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_are_counted_by_route_template_never_by_id() {
    let k = kiln(&[]).spawn();
    k.wait_healthy().await;
    let id = uuid::Uuid::now_v7();
    let r = reqwest::get(k.url(&format!("/v1/jobs/{id}")))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = reqwest::get(k.url("/v1/policy")).await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = reqwest::get(format!("http://{}/metrics", k.metrics))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"kiln_http_requests_total{method="GET",route="/v1/jobs/{id}",status="401"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"kiln_http_requests_total{method="GET",route="/v1/policy",status="200"} 1"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"kiln_http_request_duration_seconds_count{method="GET",route="/v1/policy"} 1"#
        ),
        "{metrics}"
    );
    assert!(!metrics.contains(&id.to_string()), "an id became a label");
}
