//! The operator page in a real browser: headless Chromium (Debian's
//! `chromium`), driven over the DevTools protocol by chromiumoxide,
//! against the real `kiln serve` and `kiln work` processes. An operator
//! signs in through the form, sees a failed job whose error holds markup
//! shown as text (no element made from it), retries it and sees it
//! succeed, pauses and resumes a queue with the buttons, all without a
//! Content-Security-Policy violation; the screenshot is saved as
//! `operator-page.png` in the target directory.
//!
//! Without a Chromium binary the test fails, saying how to install one:
//! CI installs it (`.ci/run`), and a skipped browser test would pass
//! while proving nothing.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use chromiumoxide::{
    Browser, BrowserConfig, Page,
    cdp::browser_protocol::page::AddScriptToEvaluateOnNewDocumentParams,
    handler::viewport::Viewport, page::ScreenshotParams,
};
use common::{Client, kiln, wait_job};
use futures::StreamExt;
use kiln_jobs::Probe;
use kiln_store::{
    Failure, JobState, NewJob, Store, access_log::AccessEvent, accounts::Identifier,
    testing::TestDatabase,
};
use serde_json::Value;

const PASSWORD: &str = "correct horse battery";
/// A provider error that quotes markup, as some quote a prompt: it must
/// show as text and run nothing.
const HOSTILE: &str = r#"<script>alert(1)</script><img src=x onerror="window.kilnXss=1">"#;

/// The Chromium to drive: `KILN_CHROMIUM`, or the first of the usual
/// names on `PATH`.
fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_CHROMIUM") {
        return PathBuf::from(path);
    }
    let names = ["chromium", "chromium-browser", "google-chrome", "chrome"];
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no Chromium found (looked for {names:?} on PATH and KILN_CHROMIUM): the \
                 operator page test needs one. Install Debian's: apt-get install -y chromium \
                 (.ci/run does)"
            )
        })
}

/// Evaluates `js` until it is `true`; on timeout, fails with what the page
/// shows.
async fn wait_for(page: &Page, js: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // While a navigation replaces the document, evaluation fails: not
        // yet.
        let ok = match page.evaluate(js).await {
            Ok(r) => r.into_value::<bool>().unwrap_or(false),
            Err(_) => false,
        };
        if ok {
            return;
        }
        if Instant::now() > deadline {
            let shown = text_of(page, "document.body ? document.body.innerText : ''").await;
            let url = page.url().await.ok().flatten().unwrap_or_default();
            panic!("the page never showed {what} ({js}); at {url} it shows:\n{shown}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text_of(page: &Page, js: &str) -> String {
    match page.evaluate(js).await {
        Ok(r) => r.into_value::<String>().unwrap_or_default(),
        Err(e) => format!("(cannot evaluate: {e})"),
    }
}

async fn value_of(page: &Page, js: &str) -> Value {
    page.evaluate(js)
        .await
        .unwrap_or_else(|e| panic!("evaluate {js}: {e}"))
        .into_value::<Value>()
        .unwrap_or(Value::Null)
}

/// Clicks the element `selector` finds, as a user does (the mouse, at its
/// middle). The page redraws its tables every few seconds, so a click that
/// lost its element is tried again.
async fn click(page: &Page, selector: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let clicked = match page.find_element(selector).await {
            Ok(element) => element.click().await.is_ok(),
            Err(_) => false,
        };
        if clicked {
            return;
        }
        assert!(Instant::now() < deadline, "could not click {selector}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `probe` that failed for good with the hostile message, as a worker
/// would have written it.
async fn failed_probe(store: &Store) -> uuid::Uuid {
    let id = store
        .enqueue(NewJob::of(&Probe::default()).unwrap())
        .await
        .unwrap()
        .id;
    let claimed = store
        .claim(
            "browser-test",
            &["default".to_owned()],
            1,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .remove(0);
    assert_eq!(claimed.lease.id, id);
    let failure = Failure {
        code: "probe_failure".into(),
        message: HOSTILE.into(),
        retry_in: None,
    };
    assert!(store.fail(claimed.lease, failure).await.unwrap());
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        JobState::Failed
    );
    id
}

async fn paused(store: &Store, queue: &str) -> bool {
    store
        .queue_settings()
        .await
        .unwrap()
        .iter()
        .any(|s| s.name == queue && s.paused)
}

/// Where the screenshot goes: the target directory's root.
fn screenshot_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("operator-page.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_signs_in_retries_a_failed_job_and_pauses_a_queue_in_chromium() {
    let chromium = chromium();
    let db = TestDatabase::postgres().await;
    let store = db.store().await.unwrap();
    let outbox = tempfile::tempdir().unwrap();
    let shared = |b: common::KilnBuilder| {
        b.database(&db.url)
            .env("KILN_API_CODE_KEY", "cd".repeat(32))
            .env("KILN_EMAIL_OUTBOX_DIR", outbox.path().display())
            .env("KILN_WORKER_POLL_INTERVAL_MS", 100)
    };
    let api = shared(kiln(&["serve"])).spawn();
    api.wait_http(api.http, "/readyz").await;
    // A worker sends the sign-up code, then stops cleanly.
    let mut mailer = shared(kiln(&["work"])).spawn();
    mailer.wait_healthy().await;
    Client::signed_up(&api, "olga@example.com").await;
    mailer.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(mailer.wait_exit(Duration::from_secs(60)).await.success());
    let olga_email = Identifier::Email("olga@example.com".into());
    store.set_operator(&olga_email, true).await.unwrap();
    let olga = store
        .login_record(&olga_email)
        .await
        .unwrap()
        .unwrap()
        .user_id;
    // Failed while no worker runs, so none takes it first.
    let job = failed_probe(&store).await;
    let worker = shared(kiln(&["work"])).spawn();
    worker.wait_healthy().await;

    let profile = tempfile::tempdir().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(&chromium)
        .no_sandbox()
        .user_data_dir(profile.path())
        .window_size(1400, 1100)
        .viewport(Viewport {
            width: 1400,
            height: 1100,
            ..Viewport::default()
        })
        .args(["--disable-gpu", "--disable-dev-shm-usage"])
        .build()
        .unwrap();
    let (mut browser, mut handler) = Browser::launch(config)
        .await
        .unwrap_or_else(|e| panic!("start {}: {e}", chromium.display()));
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = browser.new_page("about:blank").await.unwrap();
    // Every Content-Security-Policy violation, and any script the job's
    // error could have run, is recorded where the test can read it.
    page.evaluate_on_new_document(AddScriptToEvaluateOnNewDocumentParams::new(
        "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
         (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI)); \
         window.alert = (m) => { window.kilnXss = 'alert ' + m; };",
    ))
    .await
    .unwrap();

    // Signed out, the page sends to the form.
    page.goto(api.url("/admin")).await.unwrap();
    wait_for(
        &page,
        "location.pathname === '/admin/login' && !!document.querySelector('#account')",
        "the sign-in form",
    )
    .await;
    let account = page.find_element("#account").await.unwrap();
    account.click().await.unwrap();
    account.type_str("olga@example.com").await.unwrap();
    let password = page.find_element("#password").await.unwrap();
    password.click().await.unwrap();
    password.type_str(PASSWORD).await.unwrap();
    click(&page, "#sign-in").await;

    // The page, with the failed job in its list (failed is the default
    // filter) and the error's code.
    let row = format!("#jobs tr[data-job-id=\"{job}\"]");
    wait_for(
        &page,
        &format!("location.pathname === '/admin' && !!document.querySelector('{row}')"),
        "the failed job",
    )
    .await;
    let row_text = text_of(&page, &format!("document.querySelector('{row}').innerText")).await;
    assert!(
        row_text.contains("failed") && row_text.contains("probe_failure"),
        "{row_text}"
    );
    // The queues and workers are listed.
    wait_for(
        &page,
        "!!document.querySelector('#queues tr[data-queue=\"default\"]') && \
         [...document.querySelectorAll('#workers td[data-field=\"status\"]')].some(td => td.textContent === 'alive')",
        "the default queue and a live worker",
    )
    .await;

    // Its detail shows the error message as text: the markup is there,
    // character for character, and no element was made from it.
    click(&page, &format!("{row} button[data-action=\"open\"]")).await;
    wait_for(
        &page,
        "!!document.querySelector('#detail pre.error-message')",
        "the job's error",
    )
    .await;
    let message = text_of(
        &page,
        "document.querySelector('#detail pre.error-message').textContent",
    )
    .await;
    assert_eq!(message, HOSTILE);
    let shown = text_of(&page, "document.body.innerText").await;
    assert!(shown.contains("<script>alert(1)</script>"), "{shown}");
    let made = value_of(
        &page,
        "({scripts: [...document.scripts].map(s => s.getAttribute('src')), \
           imgs: document.querySelectorAll('img').length, \
           inDetail: document.querySelectorAll('#detail *:not(div):not(dl):not(dt):not(dd):not(h3):not(ol):not(li):not(span):not(pre):not(p):not(button)').length, \
           xss: window.kilnXss === undefined ? null : String(window.kilnXss)})",
    )
    .await;
    assert_eq!(
        made["scripts"],
        serde_json::json!(["/admin/assets/admin.js"]),
        "{made}"
    );
    assert_eq!(made["imgs"], 0, "{made}");
    assert_eq!(made["inDetail"], 0, "{made}");
    assert_eq!(made["xss"], Value::Null, "{made}");

    // Retry from the detail; the worker runs it and the page shows it
    // succeeded.
    click(&page, "#detail button[data-action=\"retry\"]").await;
    wait_for(
        &page,
        "document.querySelector('#detail dd[data-field=\"state\"]').textContent === 'succeeded'",
        "the retried job succeeded",
    )
    .await;
    let done = wait_job(&store, job, "succeeded", |j| j.state.is_final()).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempt, 2, "one failed attempt, then the retry");

    // Pause and resume the default queue with its button.
    let queue = "#queues tr[data-queue=\"default\"]";
    click(&page, &format!("{queue} button[data-action=\"pause\"]")).await;
    wait_for(
        &page,
        &format!(
            "document.querySelector('{queue} td[data-field=\"paused\"]').textContent === 'paused' && \
             !!document.querySelector('{queue} button[data-action=\"resume\"]')"
        ),
        "the queue paused",
    )
    .await;
    assert!(paused(&store, "default").await);
    click(&page, &format!("{queue} button[data-action=\"resume\"]")).await;
    wait_for(
        &page,
        &format!(
            "document.querySelector('{queue} td[data-field=\"paused\"]').textContent === 'running'"
        ),
        "the queue running again",
    )
    .await;
    assert!(!paused(&store, "default").await);

    // The chart has drawn its two lines by now.
    wait_for(
        &page,
        "document.querySelectorAll('#chart svg polyline').length === 2",
        "the chart",
    )
    .await;
    let violations = value_of(&page, "window.cspViolations").await;
    assert_eq!(violations, serde_json::json!([]), "CSP violations");

    let path = screenshot_path();
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), &path)
        .await
        .unwrap();
    let png = std::fs::read(&path).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{}",
        path.display()
    );
    println!("screenshot: {}", path.display());

    // Every action the page took is in the audit trail, with the IP.
    let log = store.access_log(olga, None, 100).await.unwrap();
    for event in [
        AccessEvent::OperatorJobRead,
        AccessEvent::OperatorJobRetried,
        AccessEvent::OperatorQueuePaused,
        AccessEvent::OperatorQueueResumed,
    ] {
        let entry = log
            .iter()
            .find(|e| e.event == event)
            .unwrap_or_else(|| panic!("no {event:?} in the log: {log:?}"));
        assert_eq!(entry.ip.as_deref(), Some("127.0.0.1"), "{event:?}");
    }
    let login = log
        .iter()
        .find(|e| e.event == AccessEvent::Login && e.detail.is_some())
        .expect("the page's sign-in");
    assert_eq!(
        login.detail,
        Some(serde_json::json!({"via": "operator_page"}))
    );

    browser.close().await.unwrap();
    let _ = browser.wait().await;
    events.abort();
    drop(worker);
}
